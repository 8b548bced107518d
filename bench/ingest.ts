// Collector benchmark: durable ingest throughput, integration latency and `runguard verify` speed,
// measured in one run on this machine, side by side with the machine's own SHA-256 limit.
//
//   npm run build && node dist/bench/ingest.js
//   node dist/bench/ingest.js [--events 60000] [--agents 1,4,8] [--rate 2000] [--latency-events 10000]
//     [--profile DIR]                      V8 CPU profiles of the collector, agents and verify into DIR
//     [--shipper-batch N] [--shipper-inflight N] [--ordered-sessions]
//                                          experiments, off by default: the Shipper's batchEvents and
//                                          maxInFlight options, time-ordered session ids in the events
//     [--no-verify]                        steps 1 and 2 only
//
// 1. Ingest: a real collector (`bin/runguard collector`, a child process) with a CA and agent
//    enrolments made by caInit/enroll in a temp dir; K agents (K = 1, 4, 8) stream at once over
//    gRPC with mutual TLS. Each agent is a child process (bench/ingest-agent.ts) running the real
//    Spool and the real Shipper: it appends --events/K synthetic CONNECTION_OPEN events (process, CI
//    job, endpoints; ~0.6 KB each) as fast as it can, and the run ends when every agent's last seq
//    is acknowledged, i.e. durably committed by the collector (SQLite WAL, synchronous=FULL).
//    events/s = events acknowledged / (last ack - first append). Collector CPU comes from
//    /proc/<pid>/stat (utime+stime) over the same window, agent CPU from their process.cpuUsage().
// 2. Integration latency: one agent appends at --rate events/s on the same collector; this process
//    polls GET /checkpoint on the collector's HTTP port every 20 ms. An event's latency is the time
//    from its append on the agent to the first poll that returns a signed checkpoint covering its
//    log index (so it includes up to one poll interval). The collector signs once a second.
// 3. Verify: the collector is stopped and `bin/runguard verify --data-dir --key --json` runs on the
//    store from 1 and 2. Compared, in the same run, with the SHA-256 floor of the same leaves:
//    `openssl speed sha256` at 256 and 1024 bytes, and Node's crypto over the exact leaf bytes
//    (leaf hash + event hash per leaf, as the brief defines the floor; and with the tree's interior
//    node hashes, which verify must also recompute).
//
// Needs no root. Everything it starts is stopped by pid, and its temp dir removed, at exit, Ctrl-C
// included. The ratios are the result: on a 2-core machine the absolutes move with the neighbours.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, hash as oneShot } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { caInit, enroll } from '../collector/pki/index.js';
import { cleanupAll, lineReader, onCleanup, percentile, statFields, stopChild, table, track } from './harness.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const RUNGUARD = path.join(ROOT, 'bin/runguard');
const AGENT_JS = path.join(ROOT, 'dist/bench/ingest-agent.js');
const POLL_MS = 20;
const now = () => performance.timeOrigin + performance.now();

// ---------------------------------------------------------------------------------------------
// Cleanup: every resource registers its undo right after it exists; run once, in reverse, from the
// finally block or from a signal.




// ---------------------------------------------------------------------------------------------
// Processes

interface Opts {
  events: number; agents: number[]; rate: number; latencyEvents: number; profile?: string;
  shipperBatch?: number; shipperInflight?: number; orderedSessions: boolean; verify: boolean;
}

function parseArgs(argv: string[]): Opts {
  const opts: Opts = { events: 60_000, agents: [1, 4, 8], rate: 2000, latencyEvents: 10_000, orderedSessions: false, verify: true };
  const usage = 'usage: ingest.js [--events N] [--agents 1,4,8] [--rate R] [--latency-events N] [--profile DIR] ' +
    '[--shipper-batch N] [--shipper-inflight N] [--ordered-sessions] [--no-verify]';
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i];
    if (key === '--ordered-sessions' || key === '--no-verify') {
      if (key === '--ordered-sessions') opts.orderedSessions = true;
      else opts.verify = false;
      i--;
      continue;
    }
    const value = argv[i + 1] ?? '';
    if (key === '--agents') {
      opts.agents = value.split(',').map(Number);
      if (!opts.agents.length || opts.agents.some((k) => !Number.isInteger(k) || k < 1 || k > 32)) throw new Error(usage);
      continue;
    }
    if (key === '--profile') {
      opts.profile = path.resolve(value);
      continue;
    }
    const n = Number(value);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${usage} (got "${key} ${value}")`);
    if (key === '--events') opts.events = n;
    else if (key === '--rate') opts.rate = n;
    else if (key === '--latency-events') opts.latencyEvents = n;
    else if (key === '--shipper-batch') opts.shipperBatch = n;
    else if (key === '--shipper-inflight') opts.shipperInflight = n;
    else throw new Error(`${usage} (unknown "${key}")`);
  }
  return opts;
}

/** argv that runs a Node script, under the V8 CPU profiler when --profile DIR is given. */
let profileDir: string | undefined;
/** Experiment flags handed to every agent (empty by default: the shipper's own defaults). */
let experimentArgs: string[] = [];
function nodeArgv(script: string, args: string[]): [string, string[]] {
  return [process.execPath, [...(profileDir ? ['--cpu-prof', '--cpu-prof-dir', profileDir] : []), script, ...args]];
}

const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

/** CPU seconds (user + system) a process has used, from /proc/<pid>/stat. */
function procCpuSeconds(pid: number): number {
  const f = statFields(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  return (f[11]! + f[12]!) / CLK_TCK;
}

/** Machine-wide busy and total CPU time in ticks, from /proc/stat. */
function machineCpu(): { busy: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
  const v = line.split(/\s+/).slice(1).map(Number);
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
  return { busy: total - v[3]! - v[4]!, total };
}

// ---------------------------------------------------------------------------------------------
// The collector

interface Collector {
  proc: ChildProcess;
  grpc: string;
  httpBase: string;
  warnings(): { level: number; msg: string; reason?: string }[];
}

async function startCollector(dataDir: string, caDir: string): Promise<Collector> {
  const proc = track(spawn(...nodeArgv(RUNGUARD, [
    'collector', '--data-dir', dataDir, '--tls', caDir, '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--log-level', 'info',
  ]), { stdio: ['ignore', 'pipe', 'pipe'] }));
  onCleanup('collector', () => stopChild(proc, 5000));
  const lines = lineReader(proc, 'the collector');
  const running = await lines.wait((o) => o.msg === 'collector running', 20_000, '"collector running" log line');
  return {
    proc,
    grpc: String(running.grpc),
    httpBase: `http://${String(running.http)}`,
    warnings: () => lines.seen.filter((o) => Number(o.level) >= 40) as { level: number; msg: string; reason?: string }[],
  };
}

async function checkpointSize(httpBase: string): Promise<number> {
  const res = await fetch(`${httpBase}/checkpoint`);
  if (!res.ok) throw new Error(`GET /checkpoint: ${res.status}`);
  return Number((await res.text()).split('\n')[1]);
}

// ---------------------------------------------------------------------------------------------
// Agents

interface AgentDone {
  agentId: string; events: number; firstAppendMs: number; lastAppendMs: number; lastAckMs: number; cpuUs: number;
  batches: number;
  spool: { flushes: number; fsyncs: number; bytesWritten: number };
  shipperState: { ackedSeq: number; lastIndex: number };
  appendMs?: number[]; ackLatency?: number[];
}

interface BenchAgent {
  id: string;
  proc: ChildProcess;
  go(): void;
  done: Promise<AgentDone>;
  exit(): Promise<AgentExit>;
}

/** What an agent reports as it stops: the witness runs on until then. */
interface AgentExit {
  agentId: string; shipperStopReturned: boolean; witnessChecks: number; witnessFailures: number; reconnects: number;
  problems: Record<string, unknown>[];
}

/** Totals over every agent of the run, for the closing check line. */
const agentTotals = { agents: 0, stopStalls: 0, witnessChecks: 0, witnessFailures: 0, reconnects: 0, problems: [] as string[] };

async function startAgents(root: string, caDir: string, collector: Collector, ids: string[], events: number, rate: number): Promise<BenchAgent[]> {
  const agents: BenchAgent[] = [];
  for (const id of ids) {
    const tls = path.join(root, 'agents', id, 'tls');
    const state = path.join(root, 'agents', id, 'state');
    await enroll({ caDir, agentId: id, outDir: tls });
    const proc = track(spawn(...nodeArgv(AGENT_JS, [
      '--tls', tls, '--state', state, '--collector', collector.grpc, '--events', String(events), '--rate', String(rate),
      ...experimentArgs,
    ]), { stdio: ['pipe', 'pipe', 'pipe'] }));
    onCleanup(`agent ${id}`, () => stopChild(proc, 3000));
    const lines = lineReader(proc, `agent ${id}`);
    agents.push({
      id, proc,
      go: () => proc.stdin!.write('go\n'),
      done: lines.wait((o) => o.done === true, 600_000, 'completion').then((o) => o as unknown as AgentDone),
      exit: async () => {
        const exited = lines.wait((o) => o.exited === true, 10_000, 'exit line').catch(() => undefined);
        proc.stdin!.end('exit\n');
        const t = setTimeout(() => proc.kill('SIGKILL'), 10_000);
        if (proc.exitCode === null && proc.signalCode === null) await new Promise((r) => proc.once('exit', r));
        clearTimeout(t);
        const e = (await exited) as unknown as AgentExit | undefined;
        agentTotals.agents++;
        if (e?.shipperStopReturned !== true) agentTotals.stopStalls++;
        agentTotals.witnessChecks += e?.witnessChecks ?? 0;
        agentTotals.witnessFailures += e?.witnessFailures ?? 0;
        agentTotals.reconnects += e?.reconnects ?? 0;
        for (const p of e?.problems ?? []) {
          if (agentTotals.problems.length < 5) agentTotals.problems.push(`${id}: ${String(p.msg)} ${JSON.stringify(p.problem ?? p.err ?? p.reason ?? '')}`);
        }
        return e ?? { agentId: id, shipperStopReturned: false, witnessChecks: 0, witnessFailures: 0, reconnects: 0, problems: [] };
      },
    });
    agents.at(-1)!.done.catch(() => {}); // observed later; a failure surfaces there
    await lines.wait((o) => o.ready === true, 30_000, 'ready line');
  }
  return agents;
}

// ---------------------------------------------------------------------------------------------
// 1. Throughput

interface IngestResult {
  agents: number; events: number; seconds: number; appendSeconds: number; rate: number;
  collectorCpuUsPerEvent: number; agentCpuUsPerEvent: number; machineBusy: number; otherBusy: number; finishSpreadS: number;
  batches: number; fsyncsPerAgent: number;
}

async function runIngest(root: string, caDir: string, collector: Collector, k: number, total: number): Promise<IngestResult> {
  const per = Math.ceil(total / k);
  const agents = await startAgents(root, caDir, collector, Array.from({ length: k }, (_, i) => `k${k}-agent${i}`), per, 0);
  try {
    const cpu0 = procCpuSeconds(collector.proc.pid!);
    const m0 = machineCpu();
    for (const a of agents) a.go();
    const done = await Promise.all(agents.map((a) => a.done));
    const cpu1 = procCpuSeconds(collector.proc.pid!);
    const m1 = machineCpu();
    for (const d of done) {
      if (d.shipperState.ackedSeq !== per) throw new Error(`agent ${d.agentId} acked ${d.shipperState.ackedSeq} of ${per}`);
    }
    const start = Math.min(...done.map((d) => d.firstAppendMs));
    const end = Math.max(...done.map((d) => d.lastAckMs));
    const events = per * k;
    const seconds = (end - start) / 1000;
    return {
      agents: k, events, seconds,
      appendSeconds: (Math.max(...done.map((d) => d.lastAppendMs)) - start) / 1000,
      rate: events / seconds,
      collectorCpuUsPerEvent: ((cpu1 - cpu0) * 1e6) / events,
      agentCpuUsPerEvent: done.reduce((a, d) => a + d.cpuUs, 0) / events,
      machineBusy: (m1.busy - m0.busy) / (m1.total - m0.total),
      // CPU used by processes outside this bench in the same window (other work on a shared machine).
      otherBusy: ((m1.busy - m0.busy) / CLK_TCK - (cpu1 - cpu0) - done.reduce((a, d) => a + d.cpuUs, 0) / 1e6) /
        ((m1.total - m0.total) / CLK_TCK),
      finishSpreadS: (end - Math.min(...done.map((d) => d.lastAckMs))) / 1000,
      batches: done.reduce((a, d) => a + d.batches, 0),
      fsyncsPerAgent: done.reduce((a, d) => a + d.spool.fsyncs, 0) / k,
    };
  } finally {
    await Promise.all(agents.map((a) => a.exit()));
  }
}

// ---------------------------------------------------------------------------------------------
// 2. Integration latency

interface LatencyResult {
  rate: number; events: number; achievedRate: number;
  ackP50: number; ackP99: number; ackMax: number;
  intP50: number; intP99: number; intMax: number;
  checkpoints: number; meanCheckpointGapMs: number; indexCheck: string; batches: number; collectorCpuUsPerEvent: number; agentCpuUsPerEvent: number;
  otherBusy: number;
}

async function runLatency(root: string, caDir: string, collector: Collector, baseSize: number, rate: number, n: number): Promise<LatencyResult> {
  const [agent] = await startAgents(root, caDir, collector, ['latency-agent'], n, rate);
  const seen: { size: number; t: number }[] = [];
  let polling = true;
  const poller = (async () => {
    let last = -1;
    while (polling) {
      const t0 = now();
      const size = await checkpointSize(collector.httpBase);
      const t = now();
      if (size > last) {
        seen.push({ size, t });
        last = size;
      }
      if (size >= baseSize + n) return;
      await new Promise((r) => setTimeout(r, Math.max(0, POLL_MS - (now() - t0))));
    }
  })();
  try {
    const cpu0 = procCpuSeconds(collector.proc.pid!);
    const m0 = machineCpu();
    agent!.go();
    const done = await agent!.done;
    const collectorCpuS = procCpuSeconds(collector.proc.pid!) - cpu0;
    const m1 = machineCpu();
    const collectorCpuUsPerEvent = (collectorCpuS * 1e6) / n;
    const otherBusy = ((m1.busy - m0.busy) / CLK_TCK - collectorCpuS - done.cpuUs / 1e6) / ((m1.total - m0.total) / CLK_TCK);
    const timeout = new Promise<never>((_, rej) => setTimeout(() => rej(new Error('no checkpoint covered the last event within 10 s')), 10_000).unref());
    await Promise.race([poller, timeout]);
    const expectLast = baseSize + n - 1;
    const indexCheck = done.shipperState.lastIndex === expectLast
      ? `last event at log index ${expectLast} as expected`
      : `MISMATCH: agent's last index ${done.shipperState.lastIndex}, expected ${expectLast}`;
    const appendMs = done.appendMs!;
    const integ: number[] = [];
    let c = 0;
    for (let i = 0; i < n; i++) {
      const index = baseSize + i;
      while (seen[c]!.size <= index) c++;
      integ.push(seen[c]!.t - appendMs[i]!);
    }
    integ.sort((a, b) => a - b);
    const ack = [...done.ackLatency!].sort((a, b) => a - b);
    const grew = seen.filter((s) => s.size > baseSize);
    return {
      rate, events: n, achievedRate: n / ((done.lastAppendMs - done.firstAppendMs) / 1000),
      ackP50: percentile(ack, 0.5), ackP99: percentile(ack, 0.99), ackMax: ack.at(-1)!,
      intP50: percentile(integ, 0.5), intP99: percentile(integ, 0.99), intMax: integ.at(-1)!,
      checkpoints: grew.length,
      meanCheckpointGapMs: grew.length > 1 ? (grew.at(-1)!.t - grew[0]!.t) / (grew.length - 1) : NaN,
      indexCheck, batches: done.batches, collectorCpuUsPerEvent, agentCpuUsPerEvent: done.cpuUs / n, otherBusy,
    };
  } finally {
    polling = false;
    await poller.catch(() => {});
    await agent!.exit();
  }
}

// ---------------------------------------------------------------------------------------------
// 3. Verify and the SHA-256 floor

interface VerifyResult {
  leaves: number; bytes: number; ok: boolean; signatures: number; firstProblem?: string;
  /** verify's own CPU time (user + system), its in-process wall time, and wall time including startup. */
  cpuSeconds: number; seconds: number; wallSeconds: number;
}

// The shell waits for verify and then prints its own /proc stat, whose cutime/cstime are verify's
// CPU time: CPU time, unlike wall time, holds still when other work shares the machine.
const REPORT_CHILD_CPU = '"$@"; rc=$?; echo; cat /proc/$$/stat >&2; exit $rc';

async function runVerify(dataDir: string, caDir: string): Promise<VerifyResult> {
  const t0 = now();
  const [cmd, args] = nodeArgv(RUNGUARD, ['verify', '--data-dir', dataDir, '--key', path.join(caDir, 'checkpoint.pub'), '--json']);
  const proc = track(spawn('/bin/sh', ['-c', REPORT_CHILD_CPU, 'sh', cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'] }));
  let out = '';
  let err = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d));
  proc.stderr!.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4096)));
  const code = await new Promise<number | null>((r) => proc.once('close', (c) => r(c)));
  const wallSeconds = (now() - t0) / 1000;
  const line = out.trim().split('\n').pop() ?? '';
  if (!line.startsWith('{')) throw new Error(`runguard verify exited ${code} without a report: ${err}`);
  const r = JSON.parse(line) as { ok: boolean; leavesChecked: number; signaturesChecked: number; seconds: number; firstProblem?: { index: number; reason: string } };
  const stat = err.trim().split('\n').pop() ?? '';
  const f = statFields(stat);
  const cpuSeconds = (f[13]! + f[14]!) / CLK_TCK; // the shell's cutime + cstime: verify's
  if (!Number.isFinite(cpuSeconds)) throw new Error(`cannot read verify's CPU time from "${stat}"`);
  const db = new Database(path.join(dataDir, 'log.db'), { readonly: true });
  const bytes = (db.prepare('SELECT COALESCE(SUM(LENGTH(bytes)), 0) FROM leaves').pluck().get() as number);
  db.close();
  return {
    leaves: r.leavesChecked, bytes, cpuSeconds, seconds: r.seconds, wallSeconds, ok: r.ok && code === 0, signatures: r.signaturesChecked,
    firstProblem: r.firstProblem ? `index ${r.firstProblem.index}: ${r.firstProblem.reason}` : undefined,
  };
}

/** CPU and wall seconds of one pass. */
interface Timed { cpu: number; wall: number }

interface Floors {
  read: Timed;          // SELECT bytes FROM leaves ORDER BY idx
  createHash2: Timed;   // createHash, leaf hash + event hash per leaf
  oneShot2: Timed;      // crypto.hash, the same two hashes (as merkle/hash.ts leafHash)
  oneShot3: Timed;      // crypto.hash, two per leaf + the tree's N-1 interior nodes
}

function timed(fn: () => void): Timed {
  const c0 = process.cpuUsage();
  const t0 = now();
  fn();
  const c = process.cpuUsage(c0);
  return { cpu: (c.user + c.system) / 1e6, wall: (now() - t0) / 1000 };
}

/** Reads the leaves as verify does (from the store), then hashes exactly those bytes. */
function nodeFloors(dataDir: string): { leaves: Buffer[]; floors: Floors } {
  const db = new Database(path.join(dataDir, 'log.db'), { readonly: true });
  let leaves: Buffer[] = [];
  const read = timed(() => {
    leaves = db.prepare('SELECT bytes FROM leaves ORDER BY idx').pluck().all() as Buffer[];
  });
  db.close();
  const prefix = Buffer.of(0);
  const node = Buffer.alloc(65, 1);
  let sink = 0; // every digest feeds it, so no pass is dead code
  const createHash2 = (ls: Buffer[]) => {
    for (const l of ls) {
      sink ^= createHash('sha256').update(prefix).update(l).digest()[0]!;
      sink ^= createHash('sha256').update(l).digest()[0]!;
    }
  };
  const oneShot2 = (ls: Buffer[]) => {
    for (const l of ls) {
      const buf = Buffer.allocUnsafe(l.length + 1); // as leafHash() in collector/merkle/hash.ts
      buf[0] = 0;
      buf.set(l, 1);
      sink ^= (oneShot('sha256', buf, 'buffer') as Buffer)[0]!;
      sink ^= (oneShot('sha256', l, 'buffer') as Buffer)[0]!;
    }
  };
  const oneShot3 = (ls: Buffer[]) => {
    oneShot2(ls);
    for (let i = 1; i < ls.length; i++) sink ^= (oneShot('sha256', node, 'buffer') as Buffer)[0]!;
  };
  // Warm up the JIT on a slice, then one timed pass each.
  createHash2(leaves.slice(0, 5000));
  oneShot3(leaves.slice(0, 5000));
  const floors = { read, createHash2: timed(() => createHash2(leaves)), oneShot2: timed(() => oneShot2(leaves)), oneShot3: timed(() => oneShot3(leaves)) };
  if (sink < 0) throw new Error('unreachable');
  return { leaves, floors };
}

/** `openssl speed -seconds 2 -bytes B sha256`: bytes per second for B-byte inputs. */
function opensslSpeed(bytes: number): { bytesPerSec: number; version: string } {
  const r = spawnSync('openssl', ['speed', '-seconds', '2', '-bytes', String(bytes), 'sha256'], { encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`openssl speed failed: ${r.stderr || r.error?.message}`);
  const line = r.stdout.split('\n').find((l) => /^sha256\s+[\d.]+k\s*$/.test(l));
  if (!line) throw new Error(`cannot parse openssl speed output:\n${r.stdout}`);
  const version = r.stdout.split('\n').find((l) => l.startsWith('version:'))?.replace('version:', '').trim() ?? '';
  return { bytesPerSec: Number(/([\d.]+)k/.exec(line)![1]) * 1000, version };
}

// ---------------------------------------------------------------------------------------------
// Reporting



const f0 = (n: number) => (Number.isFinite(n) ? n.toFixed(0) : '-');
const f1 = (n: number) => (Number.isFinite(n) ? n.toFixed(1) : '-');
const f2 = (n: number) => (Number.isFinite(n) ? n.toFixed(2) : '-');
const pct = (n: number) => (Number.isFinite(n) ? `${(n * 100).toFixed(0)}%` : '-');
const fx = (n: number) => (Number.isFinite(n) ? `${n >= 10 ? n.toFixed(1) : n.toFixed(2)}x` : '-');
const mb = (bytes: number, s: number) => bytes / s / 1e6;

async function main(): Promise<number> {
  const opts = parseArgs(process.argv.slice(2));
  profileDir = opts.profile;
  if (opts.shipperBatch) experimentArgs.push('--batch-events', String(opts.shipperBatch));
  if (opts.shipperInflight) experimentArgs.push('--max-inflight', String(opts.shipperInflight));
  if (opts.orderedSessions) experimentArgs.push('--ordered-sessions', '1');
  const began = now();
  const step = (msg: string) => process.stderr.write(`bench: ${msg} (${((now() - began) / 1000).toFixed(1)} s)\n`);
  const root = mkdtempSync(path.join(os.tmpdir(), 'rg-bench-ingest-'));
  onCleanup(`temp dir ${root}`, () => rmSync(root, { recursive: true, force: true }));
  const caDir = path.join(root, 'ca');
  const dataDir = path.join(root, 'data');
  await caInit(caDir, { name: 'bench.runguard.example/log' });
  const collector = await startCollector(dataDir, caDir);
  step(`collector up: grpc ${collector.grpc}, read API ${collector.httpBase}`);

  const ingest: IngestResult[] = [];
  for (const k of opts.agents) {
    ingest.push(await runIngest(root, caDir, collector, k, opts.events));
    const r = ingest.at(-1)!;
    step(`ingest with ${k} agent(s): ${r.events} events in ${r.seconds.toFixed(2)} s`);
  }

  // Every event of step 1 must be in a signed checkpoint before step 2 measures from there.
  const baseSize = ingest.reduce((a, r) => a + r.events, 0);
  const until = now() + 5000;
  while ((await checkpointSize(collector.httpBase)) < baseSize) {
    if (now() > until) throw new Error(`no checkpoint covers the ${baseSize} acknowledged events within 5 s`);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
  const latency = await runLatency(root, caDir, collector, baseSize, opts.rate, opts.latencyEvents);
  step(`integration latency at ${opts.rate} events/s done`);
  const warnings = collector.warnings();
  const collectorCpuTotal = procCpuSeconds(collector.proc.pid!);
  await stopChild(collector.proc);
  step('collector stopped');

  const verify = opts.verify ? await runVerifyStep(dataDir, caDir, step) : undefined;

  // ---- report ----
  const out: string[] = [];
  out.push('');
  out.push(`runguard collector benchmark: ${os.cpus().length} cpus (${os.cpus()[0]?.model.trim()}), Linux ${os.release()}, node ${process.version}` +
    (verify ? `, OpenSSL ${verify.o256.version}` : ''));
  out.push(`events: synthetic CONNECTION_OPEN (process, CI job, endpoints), ${f0(await averageLeafBytes(dataDir))} bytes on average as stored`);
  out.push('collector: bin/runguard collector (SQLite WAL, synchronous=FULL, checkpoint every 1 s); agents: real Spool + Shipper, gRPC over mTLS on 127.0.0.1');
  out.push(experimentArgs.length
    ? `EXPERIMENT, not the defaults: ${[opts.shipperBatch && `shipper batchEvents=${opts.shipperBatch}`, opts.shipperInflight && `shipper maxInFlight=${opts.shipperInflight}`, opts.orderedSessions && 'time-ordered session ids'].filter(Boolean).join(', ')}`
    : 'shipper with its defaults (batchEvents 512, batchBytes 1 MiB, maxInFlight 8); session ids are random UUIDs, as the proxy makes them');
  out.push('');
  out.push('1. durable ingest: every event fsynced in the agent spool, shipped, and acknowledged after the collector\'s fsynced commit');
  out.push(table([
    ['agents', 'events', 'seconds', 'events/s', 'appended by s', 'collector CPU us/event', 'agents CPU us/event', 'machine busy', 'of it others',
      'CPU-bound ceiling/s', 'finish spread s', 'batches', 'spool fsyncs/agent'],
    ...ingest.map((r) => [String(r.agents), String(r.events), f2(r.seconds), f0(r.rate), f2(r.appendSeconds), f1(r.collectorCpuUsPerEvent),
      f1(r.agentCpuUsPerEvent), pct(r.machineBusy), pct(r.otherBusy), f0(cpuCeiling(r)), f2(r.finishSpreadS), String(r.batches), f0(r.fsyncsPerAgent)]),
  ]));
  out.push('   of it others: CPU used in the same window by processes outside this bench (the machine is shared);');
  out.push(`   CPU-bound ceiling: events/s had the bench both ${os.cpus().length} cores to itself at the CPU per event measured ` +
    '(collector + agents, the single-threaded collector capped at one core); a projection, not a measurement');
  out.push('');
  out.push(`2. integration latency: 1 agent appending at ${opts.rate}/s (achieved ${f0(latency.achievedRate)}/s), ${latency.events} events; ` +
    `GET /checkpoint polled every ${POLL_MS} ms`);
  out.push(table([
    ['from append to', 'p50 ms', 'p99 ms', 'max ms'],
    ['durable ack from the collector', f1(latency.ackP50), f1(latency.ackP99), f1(latency.ackMax)],
    ['first signed checkpoint covering it', f0(latency.intP50), f0(latency.intP99), f0(latency.intMax)],
  ]));
  out.push(`   ${latency.checkpoints} new checkpoints seen, one every ${f0(latency.meanCheckpointGapMs)} ms on average; ${latency.indexCheck}`);
  out.push(`   ${latency.batches} batches (${f1(latency.events / latency.batches)} events each); CPU per event: collector ${f1(latency.collectorCpuUsPerEvent)} us, ` +
    `agent ${f1(latency.agentCpuUsPerEvent)} us; others used ${pct(latency.otherBusy)} of the machine`);
  out.push('');
  if (verify) out.push(...verify.lines(baseSize + latency.events), '');
  const best = ingest.reduce((m, r) => (r.rate > m.rate ? r : m), ingest[0]!);
  out.push('anchors (published figures, other hardware):');
  out.push(table([
    ['system', 'entries/s', 'integration', 'runguard here / anchor'],
    ['Tessera, POSIX storage, NVMe', '~10,000', '~3 s', `${fx(best.rate / 10_000)} (ingest, ${best.agents} agents); p50 integration ${fx(latency.intP50 / 3000)} of it`],
    ['Trillian, MySQL', '400-500', '-', `${fx(best.rate / 450)} (ingest, ${best.agents} agents)`],
    ['runguard (this run)', f0(best.rate), `p50 ${f0(latency.intP50)} ms, p99 ${f0(latency.intP99)} ms`, ''],
  ]));
  out.push('');
  const { reconnects, witnessFailures, stopStalls } = agentTotals;
  const expected = baseSize + latency.events;
  out.push(`check: ${expected} events acknowledged` +
    (verify ? `, ${verify.result.leaves} verified by runguard verify (${verify.result.ok ? 'OK' : `FAILED: ${verify.result.firstProblem}`})` : '') +
    `; ${reconnects} stream reconnects; ${warnings.length} collector warnings${warnings.length ? ` (first: ${warnings[0]!.msg} ${warnings[0]!.reason ?? ''})` : ''}; ` +
    `collector used ${f1(collectorCpuTotal)} CPU s in all; bench took ${f0((now() - began) / 1000)} s`);
  // Defects of the shipper seen along the way: reported, not fatal to the measurement.
  out.push(`agents: ${agentTotals.witnessChecks} witness checks, ${witnessFailures} reported a WITNESS FAILURE; ` +
    `Shipper.stop() had not returned 1.5 s after the request in ${stopStalls} of ${agentTotals.agents} agents`);
  for (const p of agentTotals.problems) out.push(`  agent log: ${p}`);
  process.stdout.write(out.join('\n') + '\n');
  const dataOk = !verify || (verify.result.ok && verify.result.leaves === expected);
  return dataOk && reconnects === 0 && !latency.indexCheck.startsWith('MISMATCH') ? 0 : 3;
}

/** Events/s if this run's CPU per event were the only limit: all cores, the collector on at most one. */
function cpuCeiling(r: IngestResult): number {
  return Math.min((os.cpus().length * 1e6) / (r.collectorCpuUsPerEvent + r.agentCpuUsPerEvent), 1e6 / r.collectorCpuUsPerEvent);
}

async function averageLeafBytes(dataDir: string): Promise<number> {
  const db = new Database(path.join(dataDir, 'log.db'), { readonly: true });
  try {
    return db.prepare('SELECT AVG(LENGTH(bytes)) FROM leaves').pluck().get() as number;
  } finally {
    db.close();
  }
}

/** Step 3 with its floors; returns the result and the report lines. */
async function runVerifyStep(dataDir: string, caDir: string, step: (msg: string) => void) {
  const verify = await runVerify(dataDir, caDir);
  step(`verify: ${verify.leaves} leaves in ${verify.seconds.toFixed(2)} s (${verify.cpuSeconds.toFixed(2)} CPU s)`);
  const { leaves, floors } = nodeFloors(dataDir);
  step('node hashing floor measured');
  const o256 = opensslSpeed(256);
  const o1024 = opensslSpeed(1024);
  step('openssl speed done');
  // Per-hash cost from the two openssl points: t(L) = a + b*L (a: per-call overhead, b: per byte).
  const t256 = 256 / o256.bytesPerSec;
  const t1024 = 1024 / o1024.bytesPerSec;
  const b = (t1024 - t256) / (1024 - 256);
  const a = Math.max(0, t256 - 256 * b);
  const tHash = (len: number) => a + b * len;
  const n = leaves.length;
  const sslFloor2 = leaves.reduce((s, l) => s + tHash(l.length + 1) + tHash(l.length), 0);
  const sslFloor3 = sslFloor2 + (n - 1) * tHash(65);
  const lines = (expected: number): string[] => {
    // basis: CPU seconds of the one thread doing the work (openssl speed divides by user CPU time
    // too), so the ratios hold when other work shares the machine; wall seconds alongside.
    const rows: [string, number, number | undefined, string][] = [
      ['runguard verify', verify.cpuSeconds, verify.seconds, `${verify.ok ? 'OK' : `FAILED ${verify.firstProblem}`}, ${verify.signatures} batch signatures; wall incl. startup ${f2(verify.wallSeconds)} s`],
      ['read the leaves from SQLite (node)', floors.read.cpu, floors.read.wall, 'SELECT bytes ORDER BY idx'],
      ['node createHash, 2 hashes/leaf', floors.createHash2.cpu, floors.createHash2.wall, 'leaf hash + event hash'],
      ['node crypto.hash, 2 hashes/leaf', floors.oneShot2.cpu, floors.oneShot2.wall, 'one-shot, as merkle/hash.ts leafHash'],
      ['node crypto.hash, 3 hashes/leaf', floors.oneShot3.cpu, floors.oneShot3.wall, '+ N-1 interior node hashes (65 B)'],
      ['openssl floor, 2 hashes/leaf', sslFloor2, undefined, 'per-hash cost fitted from openssl speed 256/1024'],
      ['openssl floor, 3 hashes/leaf', sslFloor3, undefined, '+ N-1 interior node hashes'],
    ];
    const vRate = n / verify.cpuSeconds;
    const vMBs = mb(verify.bytes, verify.cpuSeconds);
    return [
      `3. verify: ${verify.leaves} leaves (${expected} expected), ${f1(verify.bytes / 1e6)} MB of events; one thread, like verify; rates per CPU second`,
      table([
        ['work over the same leaves', 'CPU s', 'wall s', 'leaves/s', 'MB/s', 'verify / this', 'note'],
        ...rows.map(([name, cpu, wall, note]) => [name, f2(cpu), wall === undefined ? '-' : f2(wall), f0(n / cpu), f1(mb(verify.bytes, cpu)),
          name === 'runguard verify' ? '' : fx(vRate / (n / cpu)), note]),
      ]),
      `   openssl speed -seconds 2 sha256: ${f1(o256.bytesPerSec / 1e6)} MB/s at 256 B, ${f1(o1024.bytesPerSec / 1e6)} MB/s at 1024 B; ` +
        `verify gets through event bytes at ${f1(vMBs)} MB/s, ${pct(vMBs / (o256.bytesPerSec / 1e6))} / ${pct(vMBs / (o1024.bytesPerSec / 1e6))} of those`,
    ];
  };
  return { result: verify, o256, lines };
}

let interrupted = false;
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(sig, () => {
    interrupted = true;
    process.stderr.write(`bench: ${sig}, cleaning up\n`);
    void cleanupAll('SIGKILL').finally(() => process.exit(130));
  });
}

try {
  process.exitCode = await main();
} catch (err) {
  process.stderr.write(`bench: ${(err as Error).stack ?? err}\n`);
  process.exitCode = 1;
} finally {
  if (!interrupted) await cleanupAll('SIGKILL');
}
