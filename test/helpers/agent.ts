// Runs the real `bin/runguard agent` as a child process with its own state dir, pin dir, job cgroup
// and proxy port, so a test never touches the machine's own runguard (or another test's).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readSpoolDir } from '../../agent/events/read-spool-dir.js';
import { eventToJson } from '../../proto/index.js';
import { agentProxyPort } from './ports.js';
import { waitFor } from './wait.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const RUNGUARD = path.join(ROOT, 'bin/runguard');

let counter = 0;

export interface ProcResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** spawn, collected: unlike spawnSync it leaves this process's event loop (and its servers) running. */
/**
 * Runs a command to its end, or for `timeoutMs` at most: then its whole process group is killed
 * (the job under `runguard run` too, which would otherwise hold the output pipes open and hang the
 * test) and the result says so in stderr, with status null.
 */
export function runProcess(cmd: string, args: string[], env: Record<string, string> = {}, timeoutMs = 30_000): Promise<ProcResult> {
  return new Promise((resolve, reject) => {
    // Its own process group, so that a timeout reaches everything it started.
    const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let stdout = '';
    let stderr = '';
    let done = false;
    child.stdout!.on('data', (d) => (stdout += d));
    child.stderr!.on('data', (d) => (stderr += d));
    const finish = (status: number | null) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    };
    const timer = setTimeout(() => {
      stderr += `\n[test helper] ${cmd} ${args.join(' ')}: killed after ${timeoutMs} ms`;
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        child.kill('SIGKILL');
      }
      // A descendant that left the group may still hold the pipes: the result does not wait for it.
      setTimeout(() => finish(null), 2000).unref();
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      done = true;
      reject(err);
    });
    child.on('close', (status) => finish(status));
  });
}

export interface AgentFixtureOptions {
  intercept: string[];
  extraArgs?: string[];
  /** Reuse the dirs of an earlier fixture (restart). */
  reuse?: AgentFixture;
}

export class AgentFixture {
  proc?: ChildProcess;
  log = '';
  readonly stateDir: string;
  readonly pinDir: string;
  readonly jobCgroup: string;
  readonly proxyPort: number;

  constructor(readonly opts: AgentFixtureOptions) {
    const id = `${process.pid}-${++counter}`;
    this.stateDir = opts.reuse?.stateDir ?? mkdtempSync(path.join(os.tmpdir(), 'rg-agent-'));
    this.pinDir = opts.reuse?.pinDir ?? `/sys/fs/bpf/runguard-test-${id}`;
    this.jobCgroup = opts.reuse?.jobCgroup ?? `runguard-test-${id}.jobs`;
    this.proxyPort = opts.reuse?.proxyPort ?? agentProxyPort(process.pid * 7 + counter * 131);
  }

  args(): string[] {
    return [
      'agent', '--state-dir', this.stateDir, '--pin-dir', this.pinDir, '--job-cgroup', this.jobCgroup,
      '--proxy-port', String(this.proxyPort), '--agent-id', 'test-agent', '--log-level', 'debug',
      ...this.opts.intercept.flatMap((r) => ['--intercept', r]), ...(this.opts.extraArgs ?? []),
    ];
  }

  /**
   * Starts the agent and resolves once it logs that it is running. `launcher` runs it through
   * something else (a profiler hook: [node, '--import', hook, RUNGUARD]); `env` adds variables.
   */
  async start(launcher: string[] = [RUNGUARD], env: Record<string, string> = {}): Promise<this> {
    const [cmd, ...pre] = launcher;
    const proc = spawn(cmd!, [...pre, ...this.args()], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    this.proc = proc;
    const running = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`agent did not start in 20 s:\n${this.log}`)), 20_000);
      const onData = (d: Buffer) => {
        this.log += d.toString();
        if (this.log.includes('"agent running')) {
          clearTimeout(timer);
          resolve();
        }
      };
      proc.stdout!.on('data', onData);
      proc.stderr!.on('data', onData);
      proc.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`agent exited with ${code} before running:\n${this.log}`));
      });
    });
    try {
      await running;
    } catch (err) {
      // The caller never gets a fixture to clean up: what the agent pinned and created before it
      // failed (maps, the job cgroup) goes now, and the start's error is the one reported.
      await this.cleanup().catch(() => undefined);
      throw err;
    }
    return this;
  }

  /** Stops by pid with `signal` and waits for the exit code. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return proc?.exitCode ?? null;
    const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
    proc.kill(signal);
    return exited;
  }

  /** Runs CMD as a watched job through `runguard run` (async: servers in this process keep serving). */
  run(cmd: string[], env: Record<string, string> = {}): Promise<ProcResult> {
    return runProcess(RUNGUARD, ['run', '--state-dir', this.stateDir, '--', ...cmd], env);
  }

  /** Every event in the agent's spool, in the proto3 JSON mapping (read in-process: fast). */
  async events(): Promise<Record<string, any>[]> {
    const out: Record<string, any>[] = [];
    for await (const rec of readSpoolDir(path.join(this.stateDir, 'spool'))) out.push(eventToJson(rec.bytes));
    return out;
  }

  /**
   * The spooled events once every connection that opened has closed (bounded): a session's
   * statements are audited asynchronously (the native relay hands them over in batches, the spool
   * commits after a short delay), and its CONNECTION_CLOSE comes after all of them. For reading what
   * a job did right after it returned.
   */
  async settledEvents(timeoutMs = 5000): Promise<Record<string, any>[]> {
    let open = new Set<string>();
    return waitFor(() => `every session to close (still open: ${[...open].join(', ')})`, async () => {
      const events = await this.events();
      open = new Set(events.filter((e) => e.kind === 'EVENT_KIND_CONNECTION_OPEN').map((e) => e.sessionId));
      for (const e of events) if (e.kind === 'EVENT_KIND_CONNECTION_CLOSE') open.delete(e.sessionId);
      return open.size === 0 ? events : undefined;
    }, timeoutMs, 20);
  }


  /**
   * The first spooled event that `match` accepts, waiting for it (bounded): exec and exit events
   * reach the spool through the ring buffer, drained on a timer, so one may land just after the
   * job that caused it has returned.
   */
  async waitForEvent(what: string, match: (e: Record<string, any>) => boolean, timeoutMs = 5000): Promise<Record<string, any>> {
    return waitFor(`${what} in the spool`, async () => (await this.events()).find(match), timeoutMs);
  }


  /** The same through the CLI, `runguard events --json`: what an operator runs. */
  eventsViaCli(): Record<string, any>[] {
    const r = spawnSync(RUNGUARD, ['events', '--state-dir', this.stateDir, '--json'], { encoding: 'utf8', maxBuffer: 256 << 20 });
    if (r.status !== 0) throw new Error(`runguard events failed: ${r.stderr}`);
    return r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l));
  }

  /** Detaches and unpins everything and removes the state dir. */
  async cleanup(): Promise<void> {
    await this.stop();
    const r = spawnSync(RUNGUARD, ['agent', '--cleanup', '--state-dir', this.stateDir, '--pin-dir', this.pinDir, '--job-cgroup', this.jobCgroup], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`cleanup failed: ${r.stderr}`);
    if (existsSync(this.pinDir)) throw new Error(`pins left behind in ${this.pinDir}`);
    rmSync(this.stateDir, { recursive: true, force: true });
  }
}
