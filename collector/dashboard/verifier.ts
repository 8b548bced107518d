// The collector checks its own log in the background, as an auditor would with `runguard verify`:
// every leaf, the tree against the latest checkpoint and its signature, every agent chain and batch
// signature, agent keys against the fleet CA. It runs in a worker thread (a million leaves take a
// minute of CPU) over a read-only connection, at start, every `intervalMs`, and when an admin asks.
// The last result is kept in DATA_DIR/verify-last.json so the integrity panel survives a restart.
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import type { Problem, VerifyReport } from '../verify.js';

/** A verify report as the integrity panel shows it: counts, the first problem, when and why. */
export type VerifyRun = Omit<VerifyReport, 'problems' | 'firstProblem'> & {
  startedMs: number;
  finishedMs: number;
  trigger: string;
  firstProblem: Problem | null;
  problems: number;
  error?: string;
};

export interface Verifier {
  /** Starts a run, or queues one to start when the current run ends; false once stopped. */
  start(trigger: string): boolean;
  running(): boolean;
  last(): VerifyRun | null;
  stop(): Promise<void>;
}

export function startVerifier(opts: { dataDir: string; tlsDir: string; intervalMs: number; log: Logger }): Verifier {
  const file = path.join(opts.dataDir, 'verify-last.json');
  let last: VerifyRun | null = null;
  try {
    last = JSON.parse(readFileSync(file, 'utf8')) as VerifyRun;
  } catch {
    // none yet
  }
  let worker: Worker | undefined;
  let queued: string | undefined;
  let stopped = false;

  const start = (trigger: string): boolean => {
    if (stopped) return false;
    if (worker) {
      // The running check may have read the log before whatever prompted this one: run again after.
      queued = trigger;
      return true;
    }
    const startedMs = Date.now();
    const w = new Worker(new URL('./verify-worker.js', import.meta.url), { workerData: { dataDir: opts.dataDir, tlsDir: opts.tlsDir } });
    worker = w;
    const finish = (run: VerifyRun) => {
      worker = undefined;
      last = run;
      try {
        writeFileSync(file + '.tmp', JSON.stringify(run) + '\n');
        renameSync(file + '.tmp', file);
      } catch (err) {
        opts.log.warn({ err }, 'cannot save the verify result');
      }
      if (run.ok) opts.log.info({ size: run.size, ms: run.finishedMs - run.startedMs }, 'self-verify OK');
      else opts.log.error({ problem: run.firstProblem, error: run.error }, 'self-verify FAILED');
      const next = queued;
      queued = undefined;
      if (next) start(next);
    };
    w.once('message', (msg: { report?: VerifyReport; error?: string }) => {
      const r = msg.report;
      finish({
        startedMs, finishedMs: Date.now(), trigger, ok: Boolean(r?.ok), size: r?.size ?? 0, leavesChecked: r?.leavesChecked ?? 0,
        agents: r?.agents ?? 0, signaturesChecked: r?.signaturesChecked ?? 0, checkpointSigned: r?.checkpointSigned ?? false,
        agentCertsChecked: r?.agentCertsChecked ?? false, firstProblem: r?.firstProblem ?? null, problems: r?.problems.length ?? 0,
        error: msg.error,
      });
    });
    w.once('error', (err) => {
      if (worker === w) finish({ startedMs, finishedMs: Date.now(), trigger, ok: false, size: 0, leavesChecked: 0, agents: 0, signaturesChecked: 0, checkpointSigned: false, agentCertsChecked: false, firstProblem: null, problems: 0, error: err.message });
    });
    w.once('exit', () => {
      if (worker === w) worker = undefined;
    });
    return true;
  };

  const timer = setInterval(() => start('scheduled'), opts.intervalMs);
  timer.unref();
  return {
    start,
    running: () => worker !== undefined || queued !== undefined,
    last: () => last,
    async stop() {
      stopped = true;
      clearInterval(timer);
      await worker?.terminate();
      worker = undefined;
    },
  };
}
