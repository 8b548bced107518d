// Reloading the policy when its file changes, without a restart and without dropping sessions: the
// handlers read the current Policy for each operation, so swapping it is the whole reload. A file
// that does not load leaves the policy in force unchanged; the error is logged and handed back.
import { createHash } from 'node:crypto';
import { readFileSync, realpathSync, watch, type FSWatcher } from 'node:fs';
import path from 'node:path';
import { parsePolicy, PolicyError } from './load.js';
import type { Policy } from './policy.js';

/** The part of a pino Logger this module uses. */
export interface PolicyLogger {
  info(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface ReloadResult {
  /** The policy to use from now on: the new one, or `current` if the file is unchanged or broken. */
  policy: Policy;
  changed: boolean;
  /** Why the file did not load; `policy` is then the previous one. */
  error?: PolicyError;
}

/** Loads `file` again (for SIGHUP or a CLI command); never throws. */
export function reloadPolicy(file: string, current: Policy, log?: PolicyLogger): ReloadResult {
  const r = attempt(file, current.digest);
  if (r.error) {
    log?.error({ file, line: r.error.line, err: r.error.message }, 'policy file did not load; the previous policy stays in force');
    return { policy: current, changed: false, error: r.error };
  }
  if (!r.policy) return { policy: current, changed: false };
  log?.info({ file, rules: r.policy.rules.length, digest: r.policy.digest }, 'policy reloaded');
  return { policy: r.policy, changed: true };
}

export interface WatchOptions {
  /** The policy in force: a change event whose file has the same content is not a change. */
  current?: Policy;
  /** Quiet time after the last file event before reading the file (editors write in steps). */
  debounceMs?: number;
  logger?: PolicyLogger;
}

/**
 * Watches the policy file's directory (editors and config managers replace files by renaming a new
 * one over them, which a watch on the file itself would not follow) and, after a quiet period,
 * reads the file. New content that loads goes to onChange; content that does not goes to onError
 * (once per distinct error) and the caller keeps its policy. Returns a function that stops watching.
 */
export function watchPolicy(
  file: string,
  onChange: (policy: Policy) => void,
  onError: (err: PolicyError) => void,
  options: WatchOptions = {},
): () => void {
  const debounceMs = options.debounceMs ?? 150;
  const log = options.logger;
  let currentDigest = options.current?.digest;
  let lastError: string | undefined;
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;

  const report = (err: PolicyError) => {
    if (err.message === lastError) return;
    lastError = err.message;
    log?.error({ file, line: err.line, err: err.message }, 'policy file did not load; the previous policy stays in force');
    onError(err);
  };

  const check = () => {
    timer = undefined;
    if (stopped) return;
    const r = attempt(file, currentDigest);
    if (r.error) return report(r.error);
    if (lastError !== undefined) {
      lastError = undefined;
      if (!r.policy) log?.info({ file }, 'policy file loads again; it is the policy already in force');
    }
    if (!r.policy) return;
    currentDigest = r.policy.digest;
    log?.info({ file, rules: r.policy.rules.length, digest: r.policy.digest }, 'policy reloaded');
    onChange(r.policy);
  };

  const schedule = () => {
    if (stopped) return;
    if (timer) clearTimeout(timer);
    timer = setTimeout(check, debounceMs);
  };

  const abs = path.resolve(file);
  const dirs = new Set([path.dirname(abs)]);
  try {
    dirs.add(path.dirname(realpathSync(abs))); // a symlinked file: also where its content lives
  } catch {
    // Missing for now: the directory watch sees it appear.
  }
  const watchers: FSWatcher[] = [];
  for (const dir of dirs) {
    try {
      // Any event in the directory triggers a read; the digest comparison filters out the rest.
      // (The event's file name is unreliable: null on some platforms, "..data" for Kubernetes
      // ConfigMaps, the temporary name for some editors.)
      const w = watch(dir, () => schedule());
      w.on('error', (err) => report(new PolicyError(file, 0, `watching ${dir} failed: ${err.message}; reloads stop until restart`)));
      watchers.push(w);
    } catch (err) {
      report(new PolicyError(file, 0, `cannot watch ${dir}: ${(err as Error).message}; the policy will not reload`));
    }
  }

  return () => {
    stopped = true;
    if (timer) clearTimeout(timer);
    for (const w of watchers) w.close();
  };
}

/** Reads and compiles; `policy` is undefined when the content's digest equals `unchangedDigest`. */
function attempt(file: string, unchangedDigest: string | undefined): { policy?: Policy; error?: PolicyError } {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    return { error: new PolicyError(file, 0, `cannot read the policy file: ${(err as Error).message}`) };
  }
  if (unchangedDigest !== undefined && createHash('sha256').update(text).digest('hex') === unchangedDigest) return {};
  try {
    return { policy: parsePolicy(text, file) };
  } catch (err) {
    return { error: err instanceof PolicyError ? err : new PolicyError(file, 0, `policy did not compile: ${(err as Error).message}`) };
  }
}
