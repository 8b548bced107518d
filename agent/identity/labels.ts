// Job labels: the files `runguard hook job-started` writes to STATE_DIR/jobs/<cgroup id>.json when a
// CI runner starts a job, and the agent's cache of them.
//
// A label says "every process in this cgroup (and in any cgroup below it) belongs to this job". It
// is written by the runner's hook, which runs as root on the host before any step of the job does,
// so it is a stronger claim than the environment of a process in the job (which anything in the job
// can set): events attributed by a label carry IDENTITY_SOURCE_RUNNER_HOOK.
//
// The hook writes the label before it moves the job's first process into the cgroup, so the agent
// never sees a process in a job cgroup whose label is not there yet: a negative cache (a cgroup id
// with no label is not asked again for a second) cannot hide a label that matters.
import { mkdirSync, readFileSync, readdirSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { IdentitySource, type JobInfo } from '../../proto/index.js';
import { cgroupIdOf } from '../cgroup.js';

export const LABEL_VERSION = 1;

/** What STATE_DIR/jobs/<cgroupId>.json holds. */
export interface JobLabel {
  version: number;
  /** The job cgroup's id (the inode of its directory; what bpf_get_current_cgroup_id returns). */
  cgroupId: string;
  /** The job cgroup, relative to the cgroup v2 root, e.g. /runguard.jobs/github-9001-2-migrate-1a2b3c4d. */
  cgroup: string;
  /** The job identity from the hook's environment (jobFromEnv); undefined if it named none. */
  job?: JobInfo;
  /** The process the hook moved into the cgroup (Runner.Worker, or the job shell), with its start time. */
  workerPid: number;
  workerStartTime: string;
  workerComm: string;
  /** How the worker was chosen: runner-worker | parent | override. */
  workerFound: string;
  /** The cgroup the worker was in before (relative to the v2 root): job-completed moves it back there. */
  originCgroup: string;
  startedAt: string;
  /** Set by job-completed when processes the job left behind keep the cgroup (and this label) alive. */
  completedAt?: string;
}

export function labelsDir(stateDir: string): string {
  return path.join(stateDir, 'jobs');
}

export function labelPath(dir: string, cgroupId: string): string {
  return path.join(dir, `${cgroupId}.json`);
}

/** Atomically (temporary file + rename), mode 0644 in a 0755 directory created if missing. */
export function writeLabel(dir: string, label: JobLabel): string {
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const file = labelPath(dir, label.cgroupId);
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(label, null, 2) + '\n', { mode: 0o644 });
  renameSync(tmp, file);
  return file;
}

/** The label in `file`, or undefined if it is missing or not a label (a half-written one cannot be: rename). */
export function readLabelFile(file: string): JobLabel | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  try {
    const label = JSON.parse(text) as JobLabel;
    if (typeof label !== 'object' || label === null || typeof label.cgroupId !== 'string' || !/^\d+$/.test(label.cgroupId)) return undefined;
    if (path.basename(file) !== `${label.cgroupId}.json`) return undefined;
    return label;
  } catch {
    return undefined;
  }
}

/** Every label in `dir` (for job-completed and housekeeping), with its file. */
export function listLabels(dir: string): { file: string; label: JobLabel }[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const out: { file: string; label: JobLabel }[] = [];
  for (const name of names) {
    if (!/^\d+\.json$/.test(name)) continue;
    const file = path.join(dir, name);
    const label = readLabelFile(file);
    if (label) out.push({ file, label });
  }
  return out;
}

export function removeLabel(dir: string, cgroupId: string): void {
  try {
    unlinkSync(labelPath(dir, cgroupId));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

/**
 * The job of an event in a labelled cgroup: the label's, with source RUNNER_HOOK. The process's own
 * environment may fill in fields the label lacks, but only when it names the same job (provider,
 * repository and run); when it names another one the label stands alone: never a mix of two jobs.
 */
export function labelledJob(label: JobInfo, fromEnv: JobInfo | undefined): JobInfo {
  const job: JobInfo = {};
  const same = fromEnv !== undefined && fromEnv.source === IdentitySource.IDENTITY_SOURCE_ENVIRONMENT
    && (['provider', 'repository', 'runId'] as const).every((k) => !label[k] || !fromEnv[k] || label[k] === fromEnv[k])
    && (!label.runAttempt || !fromEnv.runAttempt || label.runAttempt === fromEnv.runAttempt);
  const fields = ['provider', 'repository', 'workflow', 'runId', 'runAttempt', 'job', 'actor', 'ref', 'sha', 'runner', 'url'] as const;
  for (const k of fields) {
    const own = typeof label[k] === 'string' ? label[k] : undefined;
    const v = own || (same ? fromEnv[k] : undefined);
    if (v) job[k] = v;
  }
  job.source = IdentitySource.IDENTITY_SOURCE_RUNNER_HOOK;
  return job;
}

// --- the agent's cache ---------------------------------------------------------------------------

export interface LabelStoreOptions {
  /** How long a "no label for this cgroup id" answer, and a positive one unchecked, stand (ms). */
  ttlMs?: number;
  /** The cgroup id of a path relative to the v2 root ('' when gone); injectable for tests. */
  idOf?: (relPath: string) => string;
  /** Only trust label files owned by this uid (default: the agent's own effective uid). */
  ownerUid?: number;
  now?: () => number;
  maxEntries?: number;
}

interface FileEntry {
  label: JobLabel | undefined;
  checkedAt: number;
  mtimeMs: number;
  ino: bigint | number;
}

/**
 * label files by cgroup id, read on a miss and cached: a cgroup id without a label is asked again
 * after ttlMs, a label's file is stat()ed again after ttlMs (so a removed or rewritten label is seen
 * within that time). Labels are only trusted from files owned by the agent's user and not writable
 * by group or others: the state directory is the agent's.
 */
export class LabelStore {
  readonly #dir: string;
  readonly #ttl: number;
  readonly #idOf: (relPath: string) => string;
  readonly #owner: number | undefined;
  readonly #now: () => number;
  readonly #max: number;
  readonly #files = new Map<string, FileEntry>();
  /** process cgroup id -> the labelled cgroup id that applies to it ('' for none), until `until`. */
  readonly #resolved = new Map<string, { labelId: string; until: number }>();

  constructor(dir: string, opts: LabelStoreOptions = {}) {
    this.#dir = dir;
    this.#ttl = opts.ttlMs ?? 1000;
    this.#idOf = opts.idOf ?? cgroupIdOf;
    this.#owner = opts.ownerUid ?? process.geteuid?.();
    this.#now = opts.now ?? Date.now;
    this.#max = opts.maxEntries ?? 4096;
  }

  /**
   * The label for a process in cgroup `cgroupId`: the cgroup's own, or the nearest ancestor's when
   * `cgroupPath` (relative to the v2 root, and of the same cgroup; or a function that finds it) is
   * known. Without a path (the process has gone) only the cgroup's own label can be found.
   */
  lookup(cgroupId: bigint | string, cgroupPath?: string | (() => string | undefined)): JobLabel | undefined {
    const id = String(cgroupId);
    if (id === '' || id === '0') return undefined;
    const now = this.#now();
    const hit = this.#resolved.get(id);
    if (hit !== undefined && hit.until > now) {
      if (hit.labelId === '') return undefined;
      const label = this.#read(hit.labelId, now);
      if (label !== undefined) return label;
    }
    const own = this.#read(id, now);
    if (own !== undefined) return this.#remember(id, id, now, own);
    // Asked for only now: most lookups end above, at the cgroup's own label or a cached answer.
    const rel = typeof cgroupPath === 'function' ? cgroupPath() : cgroupPath;
    if (rel === undefined || rel === '' || rel === '/') return undefined;
    // Walk up: a step that made its own sub-cgroup is still the job's.
    let dir = path.posix.dirname(rel);
    while (dir !== '/' && dir !== '.' && dir !== '') {
      const ancestorId = this.#idOf(dir);
      const label = ancestorId === '' ? undefined : this.#read(ancestorId, now);
      if (label !== undefined) return this.#remember(id, ancestorId, now, label);
      dir = path.posix.dirname(dir);
    }
    this.#remember(id, '', now, undefined);
    return undefined;
  }

  #remember(id: string, labelId: string, now: number, label: JobLabel | undefined): JobLabel | undefined {
    this.#resolved.delete(id);
    this.#resolved.set(id, { labelId, until: now + this.#ttl });
    while (this.#resolved.size > this.#max) this.#resolved.delete(this.#resolved.keys().next().value!);
    return label;
  }

  #read(id: string, now: number): JobLabel | undefined {
    const cached = this.#files.get(id);
    if (cached !== undefined && now - cached.checkedAt < this.#ttl) return cached.label;
    const file = labelPath(this.#dir, id);
    let st: ReturnType<typeof statSync> | undefined;
    try {
      st = statSync(file);
    } catch {
      st = undefined;
    }
    let label: JobLabel | undefined;
    if (st === undefined) label = undefined;
    else if (cached !== undefined && cached.label !== undefined && cached.mtimeMs === st.mtimeMs && cached.ino === st.ino) label = cached.label;
    else if (!st.isFile() || (this.#owner !== undefined && st.uid !== this.#owner) || (st.mode & 0o022) !== 0) label = undefined;
    else {
      label = readLabelFile(file);
      if (label !== undefined && label.cgroupId !== id) label = undefined;
    }
    this.#files.delete(id);
    this.#files.set(id, { label, checkedAt: now, mtimeMs: st?.mtimeMs ?? 0, ino: st?.ino ?? 0 });
    while (this.#files.size > this.#max) this.#files.delete(this.#files.keys().next().value!);
    return label;
  }
}
