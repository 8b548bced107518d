// What every benchmark needs around its measurements: child processes it can always stop, a
// cleanup registry that runs once (from the finally block or a signal), and table printing.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { statFields } from '../test/helpers/proc.js';

export { statFields };

const undo: { what: string; fn: () => unknown }[] = [];
/** Children started through run() or track(): signalled first when cleaning up. */
export const children = new Set<ChildProcess>();
let cleaning: Promise<void> | undefined;

/** Registers how to undo a resource, right after it exists; undone in reverse order. */
export function onCleanup(what: string, fn: () => unknown): void {
  undo.push({ what, fn });
}

/** Signals live children, then runs every undo once; later calls get the same promise. */
export function cleanupAll(childSignal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  cleaning ??= (async () => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill(childSignal);
    for (const { what, fn } of undo.reverse()) {
      try {
        await fn();
      } catch (err) {
        process.stderr.write(`bench: cleanup of ${what} failed: ${(err as Error).message}\n`);
      }
    }
  })();
  return cleaning;
}

/** Keeps a child in `children` until it exits. */
export function track(child: ChildProcess): ChildProcess {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

/** Runs argv to completion (killed after timeoutMs), collecting its output. */
export function run(argv: string[], opts: { timeoutMs: number; env?: Record<string, string> }):
  Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const [cmd, ...args] = argv;
    const child = spawn(cmd!, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } });
    children.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d));
    child.stderr!.on('data', (d: Buffer) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      children.delete(child);
      reject(err);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      children.delete(child);
      resolve({ code, stdout, stderr });
    });
  });
}

/** A short command, synchronously: whether it succeeded and everything it said. */
export function sh(cmd: string, args: string[]): { ok: boolean; out: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 15_000 });
  return { ok: r.status === 0, out: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? r.error.message : ''}`.trim() };
}

/** Waits for a child to exit after SIGTERM, escalating to SIGKILL after `graceMs`. */
export async function stopChild(child: ChildProcess, graceMs = 15_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/** The q-quantile (0..1) of ascending values, nearest rank. */
export function percentile(sorted: ArrayLike<number>, q: number): number {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

/** A text table: the first row is the header; `align` has one 'l' or 'r' per column (default r). */
export function table(rows: string[][], align = 'l'): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  const left = (i: number) => (align[i] ?? 'r') === 'l';
  return rows.map((r, ri) => {
    const line = r.map((c, i) => (left(i) ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd();
    return ri === 0 ? `${line}\n${widths.map((w) => '-'.repeat(w)).join('  ')}` : line;
  }).join('\n');
}


/**
 * cpu seconds of a process (all its threads); withChildren adds the children it has reaped (so the
 * postmaster's count covers its exited backends, and ours the pgbench runs that exited).
 */
export function cpuSeconds(pid: number | 'self' | undefined, withChildren = false): number {
  if (!pid) return NaN;
  try {
    const f = statFields(readFileSync(`/proc/${pid}/stat`, 'utf8'));
    return (f[11]! + f[12]! + (withChildren ? f[13]! + f[14]! : 0)) / 100; // USER_HZ is 100 on Linux
  } catch {
    return NaN;
  }
}

/** Line-oriented JSON reader over a child's stdout; keeps a tail of everything for error messages. */
export function lineReader(child: ChildProcess, name: string) {
  const waiters: { test: (o: Record<string, unknown>) => boolean; resolve: (o: Record<string, unknown>) => void }[] = [];
  const seen: Record<string, unknown>[] = [];
  let buf = '';
  let tail = '';
  const onData = (d: Buffer) => {
    tail = (tail + d.toString()).slice(-8192);
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      let o: Record<string, unknown>;
      try {
        o = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      const w = waiters.findIndex((x) => x.test(o));
      if (w >= 0) waiters.splice(w, 1)[0]!.resolve(o);
      else seen.push(o);
      if (seen.length > 1000) seen.splice(0, 500);
    }
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', (d: Buffer) => (tail = (tail + d.toString()).slice(-8192)));
  return {
    seen,
    tail: () => tail,
    wait(test: (o: Record<string, unknown>) => boolean, timeoutMs: number, what: string): Promise<Record<string, unknown>> {
      const found = seen.findIndex(test);
      if (found >= 0) return Promise.resolve(seen.splice(found, 1)[0]!);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${name}: no ${what} within ${timeoutMs / 1000} s:\n${tail}`)), timeoutMs);
        const onExit = (code: number | null) => {
          clearTimeout(timer);
          reject(new Error(`${name} exited (${code}) while waiting for ${what}:\n${tail}`));
        };
        child.once('exit', onExit);
        waiters.push({
          test, resolve: (o) => {
            clearTimeout(timer);
            child.off('exit', onExit);
            resolve(o);
          },
        });
      });
    },
  };
}
