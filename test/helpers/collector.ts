// A real `runguard collector` process for the integration tests, plus the bits around it: a CA and
// an enrolled agent made with the real CLI, free loopback ports, bounded waits, and `runguard verify`.
import { spawn, type ChildProcess } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { readSpoolDir } from '../../agent/events/read-spool-dir.js';
import type { VerifyReport } from '../../collector/verify.js';
import { eventToJson } from '../../proto/index.js';
import { ROOT, RUNGUARD, runProcess } from './agent.js';
import { sleep } from './wait.js';

export interface Pki {
  caDir: string;
  agentDir: string;
  /** CA_DIR/checkpoint.pub: the checkpoint verifier key. */
  pub: string;
}

/** `runguard ca init` and `runguard enroll` into root/ca and root/agent-<id>. */
export async function initPki(root: string, agentId: string): Promise<Pki> {
  const caDir = path.join(root, 'ca');
  const agentDir = path.join(root, `agent-${agentId}`);
  const init = await runProcess(RUNGUARD, ['ca', 'init', '--dir', caDir]);
  if (init.status !== 0) throw new Error(`ca init failed: ${init.stderr}${init.stdout}`);
  const enroll = await runProcess(RUNGUARD, ['enroll', '--ca', caDir, '--agent-id', agentId, '--out', agentDir]);
  if (enroll.status !== 0) throw new Error(`enroll failed: ${enroll.stderr}${enroll.stdout}`);
  return { caDir, agentDir, pub: path.join(caDir, 'checkpoint.pub') };
}

export { sleep, waitFor } from './wait.js';
export { freePort } from './ports.js';

/**
 * Sends `signal` to the process (by its pid) and waits up to `graceMs` for it to exit. If it is
 * still running then, it is killed with SIGKILL (so a test never leaves a process behind) and the
 * result says it did not stop on its own.
 */
export async function stopProcess(proc: ChildProcess | undefined, signal: NodeJS.Signals, graceMs: number): Promise<{ exited: boolean; code: number | null; signal: NodeJS.Signals | null; ms: number }> {
  const started = Date.now();
  if (!proc || proc.pid === undefined) return { exited: true, code: null, signal: null, ms: 0 };
  if (proc.exitCode !== null || proc.signalCode !== null) return { exited: true, code: proc.exitCode, signal: proc.signalCode, ms: 0 };
  const exit = new Promise<void>((r) => proc.once('exit', () => r()));
  process.kill(proc.pid, signal);
  const inTime = await Promise.race([exit.then(() => true), sleep(graceMs).then(() => false)]);
  if (!inTime) {
    process.kill(proc.pid, 'SIGKILL');
    await exit;
  }
  return { exited: inTime, code: proc.exitCode, signal: proc.signalCode, ms: Date.now() - started };
}

export interface CollectorOptions {
  dataDir: string;
  tlsDir: string;
  grpcPort: number;
  httpPort: number;
  /** More `runguard collector` flags, e.g. ['--approval-webhook', URL]. */
  extraArgs?: string[];
}

/** `bin/runguard collector` as a child process, with its log collected. */
export class CollectorProcess {
  proc?: ChildProcess;
  log = '';

  constructor(readonly opts: CollectorOptions) {}

  get url(): string { return `http://127.0.0.1:${this.opts.httpPort}`; }
  /** What the agent dials: localhost, so the TLS server name is a host name. */
  get target(): string { return `localhost:${this.opts.grpcPort}`; }
  get running(): boolean { return !!this.proc && this.proc.exitCode === null && this.proc.signalCode === null; }

  async start(): Promise<this> {
    const { dataDir, tlsDir, grpcPort, httpPort } = this.opts;
    const proc = spawn(RUNGUARD, ['collector', '--data-dir', dataDir, '--tls', tlsDir, '--listen', `127.0.0.1:${grpcPort}`, '--http', `127.0.0.1:${httpPort}`, '--log-level', 'debug', ...(this.opts.extraArgs ?? [])],
      { stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = proc;
    const mark = this.log.length;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`collector did not start in 15 s:\n${this.log.slice(mark)}`)), 15_000);
      const onData = (d: Buffer) => {
        this.log += d.toString();
        if (this.log.slice(mark).includes('"collector running"')) {
          clearTimeout(timer);
          resolve();
        }
      };
      proc.stdout!.on('data', onData);
      proc.stderr!.on('data', onData);
      proc.once('exit', (code, sig) => {
        clearTimeout(timer);
        reject(new Error(`collector exited (${code ?? sig}) before running:\n${this.log.slice(mark)}`));
      });
    });
    return this;
  }

  /** SIGKILL by pid, waiting for the exit. */
  async kill9(): Promise<void> {
    await stopProcess(this.proc, 'SIGKILL', 10_000);
  }

  stop(signal: NodeJS.Signals = 'SIGTERM', graceMs = 5000) {
    return stopProcess(this.proc, signal, graceMs);
  }

  async get(p: string): Promise<string> {
    const res = await fetch(`${this.url}${p}`);
    const text = await res.text();
    if (!res.ok) throw new Error(`GET ${p}: ${res.status} ${text}`);
    return text;
  }

  async checkpoint(): Promise<{ note: string; size: number }> {
    const note = await this.get('/checkpoint');
    return { note, size: Number(note.split('\n')[1]) };
  }
}

/** The agent shipper's persisted state (STATE_DIR/shipper.json), or zeros before the first ack. */
export function shipperState(stateDir: string): { ackedSeq: number; lastIndex: number; lastLeafHash: string } {
  const file = path.join(stateDir, 'shipper.json');
  if (!existsSync(file)) return { ackedSeq: 0, lastIndex: -1, lastLeafHash: '' };
  try {
    return JSON.parse(readFileSync(file, 'utf8'));
  } catch {
    return { ackedSeq: 0, lastIndex: -1, lastLeafHash: '' }; // mid-rename: the next poll reads it
  }
}

/** count, distinct seqs, min and max seq of an agent's leaves, read from the store (read-only). */
export function leafStats(dataDir: string, agentId: string): { n: number; distinct: number; lo: number | null; hi: number | null; size: number } {
  const db = new Database(path.join(dataDir, 'log.db'), { readonly: true, fileMustExist: true });
  try {
    const r = db.prepare('SELECT count(*) AS n, count(DISTINCT seq) AS distinct_, min(seq) AS lo, max(seq) AS hi FROM leaves WHERE agent_id = ?').get(agentId) as { n: number; distinct_: number; lo: number | null; hi: number | null };
    const size = db.prepare('SELECT count(*) FROM leaves').pluck().get() as number;
    return { n: r.n, distinct: r.distinct_, lo: r.lo, hi: r.hi, size };
  } finally {
    db.close();
  }
}

/** Copies a stopped collector's store: the database and, if present, its WAL and shared memory. */
export function copyStore(fromDir: string, toDir: string): void {
  cpSync(fromDir, toDir, { recursive: true });
}

/** What `runguard verify --json` prints: the report of collector/verify.ts plus its run time. */
export type VerifyJson = VerifyReport & { seconds: number };

/** `runguard verify ARGS --json`: the exit status and the parsed report. */
export async function verifyJson(args: string[]): Promise<{ status: number | null; report: VerifyJson; stderr: string }> {
  const r = await runProcess(RUNGUARD, ['verify', ...args, '--json']);
  let report: VerifyJson;
  try {
    report = JSON.parse(r.stdout) as VerifyJson;
  } catch {
    throw new Error(`verify printed no JSON (status ${r.status}):\n${r.stdout}\n${r.stderr}`);
  }
  return { status: r.status, report, stderr: r.stderr };
}

/** The seqs in an agent's spool, read in this process (quicker than `runguard events` for polling). */
export async function spoolSeqs(stateDir: string): Promise<number[]> {
  const seqs: number[] = [];
  for await (const rec of readSpoolDir(path.join(stateDir, 'spool'))) seqs.push(rec.seq);
  return seqs;
}

/** Keeps a process log in ROOT/test-artifacts/NAME for a look after a failed run. */
export function saveArtifact(name: string, text: string | undefined): void {
  if (text === undefined) return;
  const dir = path.join(ROOT, 'test-artifacts');
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, name), text);
}

/** The events in an agent's spool from `fromSeq` on, in the proto3 JSON mapping, read in this process. */
export async function spoolEvents(stateDir: string, fromSeq = 1): Promise<Record<string, any>[]> {
  const out: Record<string, any>[] = [];
  for await (const rec of readSpoolDir(path.join(stateDir, 'spool'), fromSeq)) out.push(eventToJson(rec.bytes));
  return out;
}
