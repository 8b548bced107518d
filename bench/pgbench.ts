// PostgreSQL benchmark: what full statement audit costs, side by side in one run with the plain
// kernel path and the usual pooler, all to the same PostgreSQL 15 on 127.0.0.2:
//   direct     pgbench is in no watched cgroup and talks to 127.0.0.2:PORT itself;
//   runguard   pgbench runs as a watched job (`runguard run`) and dials the same 127.0.0.2:PORT: the
//              BPF connect4 hook redirects it to the agent, whose PostgreSQL handler (agent config
//              `protocols: {PORT: postgres}`, `--policy examples/policy.yaml`) parses every message,
//              classifies every statement with libpg-query, decides it by policy, checks/masks every
//              DataRow and appends one STATEMENT event per statement to the fsynced spool;
//   pgbouncer  pgbench talks to a pgbouncer (Debian package) in session mode on 127.0.0.1, started
//              here with a generated ini (auth_type trust, default_pool_size 20, max_client_conn 100).
// Workloads: pgbench select-only (-S) with the simple and the prepared protocol, and the default
// TPC-B-like script with the simple protocol (select-only with the extended protocol and TPC-B-like
// with the prepared one when named in --workloads); CLIENTS clients over THREADS threads, one pgbench
// per run whose first WARMUP seconds warm its connections and whose last TIME seconds are measured
// (from its per-transaction log), every path of a workload back to back (see roundOrder). The
// pgbench database (scale SCALE) is initialised once over the unix socket, outside every proxy; the
// history table is truncated and the small tables vacuumed before each TPC-B-like run (pgbench's own
// vacuum, with its TRUNCATE, would be denied by the policy, so every run uses -n).
// tps, avg, p50 and p99 come from pgbench's per-transaction log (-l), over the transactions that
// completed in the measured window. The ratios are the result: the
// absolutes depend on the host (and a 2-cpu VM shares its cpus between pgbench, PostgreSQL and the
// proxy, so a proxy's cpu cost shows up directly as lost throughput). The STATEMENT events in the
// agent's spool are counted around every run: the runguard runs must show at least transactions x
// statements per transaction, the others none; for runguard the report also gives the share the
// native relay summarised (its sessions' CONNECTION_CLOSE relay_summarized). The cpu columns say
// where the time went, and "other cpu" (busy time no process of the bench accounts for) flags a run
// that shared the host with someone else's load: the report then warns that its ratios are not to
// be trusted.
// Exit status: 0, or 3 when the runguard path could not be measured or a check failed.
//
//   npx tsc -p . && node dist/bench/pgbench.js
//   node dist/bench/pgbench.js [--time 15] [--warmup 3] [--clients 8] [--threads 2] [--scale 10]
//                              [--workloads select-simple,select-prepared,tpcb] [--cpu-prof DIR]
//                              [--spool-commit-delay-ms N] [--relay-audit-delay-ms N] [--relay-threads N] [--rounds N] [--relay-path]
//
// --relay-path adds a fourth path, `relay`: a second agent whose only difference is that it runs the
// port through the generic TCP handler (connection events only, no PostgreSQL parsing, no statement
// events). pgbench goes through the same BPF redirect into it, so runguard vs relay is the price of
// the PostgreSQL handler and its audit, and relay vs pgbouncer that of the redirect and a Node relay.
//
// --rounds N (default 1) runs each workload's paths N times (roundOrder: runguard and pgbouncer
// always back to back, first in turn).
// --aa adds an A/A calibration: pgbouncer is measured a second time in every round (`pgbouncer-again`,
// the same pgbouncer, on the other side of the pgbouncer run from runguard), and the report gives
// pgbouncer-again/pgbouncer by round next to runguard/pgbouncer. Two runs of one and the same path
// differ only by the host's drift, so that ratio's spread is what noise alone does to a ratio of
// two back-to-back runs here: a runguard/pgbouncer round inside it says nothing about runguard.
// This host's throughput drifts by 10-30% from minute to minute (a shared virtual machine), more than
// most changes being measured, so with N > 1 every ratio is taken within a round, between runs
// minutes apart at most, and the report gives the median ratio with the range over the rounds; the
// per-path table shows each path's median run.
// --spool-commit-delay-ms N, --relay-audit-delay-ms N and --relay-threads N set the agent's
// spoolCommitDelayMs, relayAuditDelayMs and relayThreads (default: the agent's defaults). For the runguard path the report adds the
// spool's cost: fdatasyncs over the run (counted with perf, if installed), events per fdatasync, and
// the agent's cpu split between its main thread and the libuv pool threads that write and sync the
// spool.
// --cpu-prof DIR profiles the agent's main thread from the moment it runs (V8 sampling profiler via
// bench/agent-cpu-prof.ts; not `node --cpu-prof`, which makes its BPF program load fail with EAGAIN),
// writes DIR/agent-PID.cpuprofile and prints the top self-time functions at the end.
//
// Needs root (the agent attaches BPF programs), pgbench and the PostgreSQL 15 server binaries, and
// pgbouncer for the third path (`apt-get install -y pgbouncer`; without it that path is reported as
// unavailable). PostgreSQL runs with the test helper's settings (test/helpers/postgres.ts: fsync=off,
// shared_buffers=64MB, max_connections=100) but without server TLS, and every client uses
// sslmode=disable, so no path pays for TLS (the agent would otherwise terminate the job's TLS).
// Everything it starts is undone at exit, Ctrl-C included: the agent is stopped by pid and its hooks
// unpinned (AgentFixture.cleanup), pgbouncer is stopped by pid, PostgreSQL is stopped by its
// postmaster pid, and the temp dirs are removed.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AgentFixture, ROOT, RUNGUARD } from '../test/helpers/agent.js';
import { startPostgres, type PgServer } from '../test/helpers/postgres.js';
import { readSpoolDir } from '../agent/events/read-spool-dir.js';
import { DEFAULT_COMMIT_DELAY_MS } from '../agent/events/commit-delay.js';
import { DEFAULT_RELAY_AUDIT_DELAY_MS } from '../agent/config.js';
import { decodeEvent, EventKind } from '../proto/index.js';
import { cleanupAll, cpuSeconds, onCleanup, percentile, run, sh, statFields, table, track } from './harness.js';
import { startPgbouncer } from './pgbouncer.js';

const HOST = '127.0.0.2';
const POLICY = path.join(ROOT, 'examples/policy.yaml');
const PROF_HOOK = path.join(ROOT, 'dist/bench/agent-cpu-prof.js');
/** pgbench talks plaintext on every path: see the header. */
const CLIENT_ENV = { PGSSLMODE: 'disable', PGCONNECT_TIMEOUT: '10' };

type PathName = 'direct' | 'runguard' | 'pgbouncer' | 'pgbouncer-again' | 'relay';
const PATHS: PathName[] = ['direct', 'runguard', 'pgbouncer'];

interface Workload {
  name: string;
  label: string;
  args: string[];
  /** Statements the script sends per transaction: what the audit must show at least. */
  statementsPerTxn: number;
  writes: boolean;
  /** Run only when named with --workloads. */
  optional?: boolean;
}

const WORKLOADS: Workload[] = [
  { name: 'select-simple', label: 'select-only -M simple', args: ['-S', '-M', 'simple'], statementsPerTxn: 1, writes: false },
  { name: 'select-prepared', label: 'select-only -M prepared', args: ['-S', '-M', 'prepared'], statementsPerTxn: 1, writes: false },
  // Parse of the unnamed statement, Bind, Describe, Execute, Sync every time: what most drivers send.
  { name: 'select-extended', label: 'select-only -M extended', args: ['-S', '-M', 'extended'], statementsPerTxn: 1, writes: false, optional: true },
  // BEGIN; UPDATE accounts; SELECT; UPDATE tellers; UPDATE branches; INSERT history; END
  { name: 'tpcb', label: 'TPC-B-like -M simple', args: ['-M', 'simple'], statementsPerTxn: 7, writes: true },
  { name: 'tpcb-prepared', label: 'TPC-B-like -M prepared', args: ['-M', 'prepared'], statementsPerTxn: 7, writes: true, optional: true },
];

interface Options {
  time: number;
  warmup: number;
  clients: number;
  threads: number;
  scale: number;
  workloads: Workload[];
  /** Each workload's three paths are run this many times, back to back; ratios are taken per round. */
  rounds: number;
  /** Adds the `relay` path: a second agent with the generic TCP handler on the port (--relay-path). */
  relayPath: boolean;
  /** Adds the `pgbouncer-again` path: pgbouncer measured twice per round, an A/A calibration (--aa). */
  aa: boolean;
  cpuProf?: string;
  commitDelayMs?: number;
  relayAuditDelayMs?: number;
  relayThreads?: number;
}

interface RunResult {
  tps: number;
  avgMs: number;
  p50Ms: number;
  p99Ms: number;
  /** Transactions in the measured window (after the warm-up). */
  txns: number;
  /** Every transaction of the run, warm-up included: the STATEMENT events are counted for all of them. */
  allTxns: number;
  failed: number;
  /** STATEMENT events the agent recorded during the run, warm-up included (runguard), or that leaked (others). */
  statements: number;
  /** Of those, statements the native relay summarised (CONNECTION_CLOSE relay_summarized). */
  summarised: number;
  /** Of those, statements whose event the relay wrote itself (CONNECTION_CLOSE relay_encoded). */
  encoded: number;
  /** cpu seconds of the proxy process (agent or pgbouncer) per wall second. */
  proxyCpu: number;
  /** The proxy's cpu time over the run divided by the transactions (connection setup included). */
  proxyUsPerTxn: number;
  /** PostgreSQL's cpu time (postmaster and backends) per transaction, in microseconds. */
  pgUsPerTxn: number;
  /** The bench's own cpu time with its children (pgbench, and `runguard run` for runguard) per transaction. */
  clientUsPerTxn: number;
  /** Whole-host cpu busy fraction over the run (all cpus). */
  hostBusy: number;
  /** Busy fraction of all cpus not explained by the bench's own processes: outside load. */
  otherCpu: number;
  /** runguard only: the spool's cost, if it could be measured. */
  spool?: SpoolCost;
  /** Scheduler counters per transaction: where time goes on a busy host besides cpu. */
  sched: SchedCost;
}

/**
 * Per transaction: run-queue wait (us) of the thread that forwards the bytes (the agent's relay
 * thread, pgbouncer's only thread; NaN for direct) and how often it was put on a cpu
 * (/proc/PID/task/TID/schedstat); PostgreSQL's processes' run-queue wait, context switches (all,
 * and the involuntary ones), migrations (/proc/PID/schedstat and /proc/PID/sched) and minor page
 * faults (/proc/PID/stat): a backend faults on every shared buffer it touches first, and in a
 * virtual machine those faults are a large part of a young backend's cost.
 */
interface SchedCost { fwdWaitUs: number; fwdSlices: number; pgWaitUs: number; pgSwitches: number; pgInvoluntary: number; pgMigrations: number; pgFaults: number }

interface SpoolCost {
  /** Spool records (every kind) written during the run. */
  records: number;
  /** fdatasync calls by the agent during the run (perf tracepoint count); NaN without perf. */
  fsyncs: number;
  /** Agent cpu seconds over the run: main thread, libuv pool (the threads that fdatasync), the native
   * relay's thread ("runguard-relay"), the rest. */
  mainCpu: number;
  poolCpu: number;
  relayCpu: number;
  otherThreadsCpu: number;
}

// ---------------------------------------------------------------------------------------------
// Cleanup: every resource registers its undo right after it exists; run once, in reverse, from the
// finally block or from a signal.

/** Set by a signal: no new run starts, cleanup is under way. */
let interrupted = false;



// ---------------------------------------------------------------------------------------------
// Processes

function parseArgs(argv: string[]): Options {
  const opts: Options = { time: 15, warmup: 3, clients: 8, threads: 2, scale: 10, workloads: WORKLOADS.filter((w) => !w.optional), rounds: 1, relayPath: false, aa: false };
  const usage = 'usage: pgbench.js [--time S] [--warmup S] [--clients N] [--threads N] [--scale N] ' +
    `[--workloads ${WORKLOADS.map((w) => w.name).join(',')}] [--cpu-prof DIR] [--spool-commit-delay-ms N] [--relay-audit-delay-ms N] [--relay-threads N] [--rounds N] [--relay-path] [--aa]`;
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i]?.replace(/^--/, '');
    if (key === 'relay-path') {
      opts.relayPath = true;
      continue;
    }
    if (key === 'aa') {
      opts.aa = true;
      continue;
    }
    const value = argv[++i];
    if (value === undefined) throw new Error(usage);
    if (key === 'workloads') {
      opts.workloads = value.split(',').map((n) => {
        const w = WORKLOADS.find((x) => x.name === n);
        if (!w) throw new Error(`unknown workload "${n}"; ${usage}`);
        return w;
      });
    } else if (key === 'cpu-prof') {
      opts.cpuProf = path.resolve(value);
    } else if (key === 'spool-commit-delay-ms' || key === 'relay-audit-delay-ms') {
      const n = Number(value);
      if (!(n >= 0)) throw new Error(`--${key} ${value}: not a valid delay; ${usage}`);
      if (key === 'spool-commit-delay-ms') opts.commitDelayMs = n;
      else opts.relayAuditDelayMs = n;
    } else if (key === 'relay-threads') {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 0) throw new Error(`--${key} ${value}: not a valid count; ${usage}`);
      opts.relayThreads = n;
    } else if (key === 'time' || key === 'warmup' || key === 'clients' || key === 'threads' || key === 'scale' || key === 'rounds') {
      const n = Number(value);
      if (!Number.isInteger(n) || n < (key === 'warmup' ? 0 : 1)) throw new Error(`--${key} ${value}: not a valid count; ${usage}`);
      opts[key] = n;
    } else {
      throw new Error(`unknown option ${argv[i - 1]}; ${usage}`);
    }
  }
  return opts;
}




/**
 * The paths of one round, in the order they run. runguard and pgbouncer, whose ratio is the
 * result, always run back to back, so that the host's drift between them is that of one run; which
 * of the two goes first alternates from round to round (ABBA over two rounds cancels a steady
 * drift), and the other paths go before them in two rounds out of four and after them in the rest.
 * With --aa, pgbouncer-again runs on pgbouncer's other side: the A/A pair is as far apart as the
 * measured one.
 */
function roundOrder(paths: readonly PathName[], n: number): PathName[] {
  const pair: PathName[] = (['runguard', 'pgbouncer', 'pgbouncer-again'] as const).filter((p) => paths.includes(p));
  if (n % 2 === 1) pair.reverse();
  const rest = paths.filter((p) => !pair.includes(p));
  return Math.floor(n / 2) % 2 === 0 ? [...rest, ...pair] : [...pair, ...rest];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Busy cpu seconds of the whole host (all cpus), from /proc/stat; `tasks` leaves out interrupt and
 * softirq time (loopback networking runs there, charged to no process) and steal.
 */
function hostBusySeconds(): { busy: number; tasks: number } {
  const [user = 0, nice = 0, system = 0, , , ...rest] = // idle and iowait skipped
    readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
  return { busy: (user + nice + system + rest.reduce((a, b) => a + b, 0)) / 100, tasks: (user + nice + system) / 100 };
}

/**
 * Where the host's cpu goes during a run: the proxy, and whatever is not the bench's own
 * (pgbench, `runguard run`, PostgreSQL, the proxy, this process). "other" is load from outside
 * the bench: on a shared machine it is what makes one path's numbers incomparable to another's.
 */
class CpuMeter {
  private readonly t0 = process.hrtime.bigint();
  private readonly host0 = hostBusySeconds();
  private readonly proxy0: number;
  private readonly pg0: number;
  private readonly self0 = cpuSeconds('self', true);
  constructor(private readonly proxyPid: number | undefined, private readonly postmasterPid: number) {
    this.proxy0 = cpuSeconds(proxyPid);
    this.pg0 = postgresCpuSeconds(postmasterPid);
  }
  /** Fractions: proxy of one cpu; host and other of all cpus. */
  read(): { wall: number; proxy: number; pgSecs: number; clientSecs: number; host: number; other: number } {
    const wall = Number(process.hrtime.bigint() - this.t0) / 1e9;
    const now = hostBusySeconds();
    const host = now.busy - this.host0.busy;
    const tasks = now.tasks - this.host0.tasks;
    const proxy = cpuSeconds(this.proxyPid) - this.proxy0;
    const pgSecs = postgresCpuSeconds(this.postmasterPid) - this.pg0;
    const clientSecs = cpuSeconds('self', true) - this.self0;
    const ours = pgSecs + clientSecs + (Number.isFinite(proxy) ? proxy : 0);
    const cpus = os.cpus().length;
    return { wall, proxy: proxy / wall, pgSecs, clientSecs, host: host / (wall * cpus), other: Math.max(0, tasks - ours) / (wall * cpus) };
  }
}

function postmasterPid(pg: PgServer): number {
  return Number(readFileSync(path.join(pg.dir, 'data', 'postmaster.pid'), 'utf8').split('\n')[0]);
}

/**
 * cpu seconds of PostgreSQL: the postmaster with the backends it has reaped, plus its live children
 * (pgbouncer keeps its server connections open, so their backends never exit during the bench).
 */
function postgresCpuSeconds(pm: number): number {
  let total = cpuSeconds(pm, true);
  try {
    for (const child of readFileSync(`/proc/${pm}/task/${pm}/children`, 'utf8').trim().split(/\s+/).filter(Boolean)) {
      const c = cpuSeconds(Number(child));
      if (Number.isFinite(c)) total += c;
    }
  } catch {
    // no /proc/PID/task/PID/children (CONFIG_PROC_CHILDREN): reaped backends only
  }
  return total;
}

interface ThreadStat { secs: number; name: string; waitNs: number; slices: number }

/** Scheduler counters of one process: run-queue wait (ns), context switches, cpu migrations, minor page faults. */
interface Sched { waitNs: number; voluntary: number; involuntary: number; migrations: number; faults: number }
const SCHED_ZERO: Sched = { waitNs: 0, voluntary: 0, involuntary: 0, migrations: 0, faults: 0 };

function readSched(pid: number): Sched | undefined {
  try {
    const waitNs = Number(readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[1]);
    const faults = statFields(readFileSync(`/proc/${pid}/stat`, 'utf8'))[7]!; // minflt
    // /proc/PID/sched exists with CONFIG_SCHED_DEBUG; without it the switch counts read as NaN.
    let text = '';
    try {
      text = readFileSync(`/proc/${pid}/sched`, 'utf8');
    } catch {
      // no CONFIG_SCHED_DEBUG
    }
    const field = (name: string) => Number(new RegExp(`^${name.replace('.', '\\.')}\\s*:\\s*(\\d+)`, 'm').exec(text)?.[1] ?? NaN);
    return { waitNs, voluntary: field('nr_voluntary_switches'), involuntary: field('nr_involuntary_switches'), migrations: field('se.nr_migrations'), faults };
  } catch {
    return undefined; // exited meanwhile
  }
}

/** The scheduler counters of PostgreSQL's live processes (the postmaster's children), by pid. */
function postgresSched(pm: number): Map<number, Sched> {
  const out = new Map<number, Sched>();
  try {
    for (const child of readFileSync(`/proc/${pm}/task/${pm}/children`, 'utf8').trim().split(/\s+/).filter(Boolean)) {
      const c = readSched(Number(child));
      if (c) out.set(Number(child), c);
    }
  } catch {
    // no CONFIG_PROC_CHILDREN: reported as unknown
  }
  return out;
}

/**
 * PostgreSQL's scheduler counters over a run, sampled while it lasts: the backends of direct and
 * runguard connections exit with pgbench, before the run's end could read them.
 */
class PgSchedSampler {
  private readonly base: Map<number, Sched>;
  private readonly last = new Map<number, Sched>();
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly pm: number) {
    this.base = postgresSched(pm);
    this.timer = setInterval(() => this.sample(), 200);
  }

  private sample(): void {
    for (const [pid, c] of postgresSched(this.pm)) this.last.set(pid, c);
  }

  /** The counters' growth over the run, summed over processes (NaN without /proc/PID/task/PID/children). */
  stop(): Sched {
    clearInterval(this.timer);
    this.sample();
    if (!this.last.size) return { waitNs: NaN, voluntary: NaN, involuntary: NaN, migrations: NaN, faults: NaN };
    const sum = { ...SCHED_ZERO };
    for (const [pid, after] of this.last) {
      const before = this.base.get(pid) ?? SCHED_ZERO;
      for (const k of Object.keys(sum) as (keyof Sched)[]) sum[k] += after[k] - before[k];
    }
    return sum;
  }
}

/** Busy fraction of all cpus over `ms` while the bench does nothing: load from someone else. */
async function idleLoad(ms: number): Promise<number> {
  const before = hostBusySeconds().busy;
  await sleep(ms);
  return (hostBusySeconds().busy - before) / ((ms / 1000) * os.cpus().length);
}

/** cpu seconds, name, run-queue wait (ns) and timeslices of each thread of `pid`, by tid. */
/** How many relay threads the agent runs (for the report; the agent's relayThreads, resolved). */
function relayThreadsOf(pid: number): number {
  return [...threadCpu(pid).values()].filter((t) => t.name === 'runguard-relay').length;
}

function threadCpu(pid: number): Map<number, ThreadStat> {
  const out = new Map<number, ThreadStat>();
  let tids: string[] = [];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const f = statFields(stat);
      const [, waitNs, slices] = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').trim().split(' ').map(Number);
      out.set(Number(tid), { secs: (f[11]! + f[12]!) / 100, name: stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')), waitNs: waitNs!, slices: slices! });
    } catch {
      // the thread exited between readdir and read
    }
  }
  return out;
}

/**
 * Counts the agent's fdatasync calls, per thread, with `perf stat` on the syscall tracepoint (a
 * counter, no per-call tracing). Node names every thread "node"; the threads that call fdatasync are
 * the libuv pool's, which is how the cpu split tells them apart. Empty when perf is missing.
 */
function countFsyncs(pid: number): { stop: () => Promise<Map<number, number>> } {
  const child = track(spawn('perf', ['stat', '--per-thread', '-x', ',', '-e', 'syscalls:sys_enter_fdatasync', '-p', String(pid)],
    { stdio: ['ignore', 'ignore', 'pipe'] }));
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d));
  const exited = new Promise<void>((r) => {
    child.once('error', () => r());
    child.once('close', () => r());
  });
  return {
    stop: async () => {
      child.kill('SIGINT');
      await exited;
      const counts = new Map<number, number>();
      for (const line of err.split('\n')) {
        const m = /^.*-(\d+),(\d+),,syscalls:sys_enter_fdatasync/.exec(line);
        if (m) counts.set(Number(m[1]), Number(m[2]));
      }
      return counts;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// (b) runguard: the real agent with the postgres handler on PORT and the shipped policy.

const SPOOL_MAX_BYTES = 16 * 2 ** 30;

async function startAgent(pg: PgServer, work: string, opts: Options, protocol: 'postgres' | 'tcp' = 'postgres'): Promise<AgentFixture> {
  const config = path.join(work, `agent-${protocol}.yaml`);
  // No collector acks the spool here, so nothing ever frees it: at the default 1 GiB limit a full
  // run at today's rates (about 1.5 million events of 600-odd bytes) would fill it, and the agent
  // would then hold events in memory and refuse new sessions, which is not what is being measured.
  writeFileSync(config, `protocols:\n  ${pg.port}: ${protocol}\nspoolMaxBytes: ${SPOOL_MAX_BYTES}\n` +
    (opts.commitDelayMs === undefined ? '' : `spoolCommitDelayMs: ${opts.commitDelayMs}\n`) +
    (opts.relayAuditDelayMs === undefined ? '' : `relayAuditDelayMs: ${opts.relayAuditDelayMs}\n`) +
    (opts.relayThreads === undefined ? '' : `relayThreads: ${opts.relayThreads}\n`));
  const cpuProf = protocol === 'postgres' ? opts.cpuProf : undefined;
  const agent = new AgentFixture({
    intercept: [`${HOST}/32`],
    extraArgs: ['--config', config, '--policy', POLICY, '--agent-id', 'bench', '--log-level', 'info'],
  });
  onCleanup('runguard agent', () => agent.cleanup());
  if (!cpuProf) {
    await agent.start();
  } else {
    // The profiler is loaded with --import and started (SIGUSR2) only once the agent runs: see
    // bench/agent-cpu-prof.ts for why not --cpu-prof. The fixture stops the agent as usual.
    mkdirSync(cpuProf, { recursive: true });
    await agent.start([process.execPath, '--import', PROF_HOOK, RUNGUARD], { RG_BENCH_CPU_PROF_DIR: cpuProf });
    agent.proc!.kill('SIGUSR2');
  }
  const line = agent.log.split('\n').find((l) => l.includes('"agent running'));
  const status = line ? (JSON.parse(line) as { bpfStatus?: string }).bpfStatus : undefined;
  if (status !== 'attached') throw new Error(`the agent runs without its BPF hooks (bpfStatus ${status}):\n${line ?? agent.log.slice(-2000)}`);
  return agent;
}

/**
 * Counts STATEMENT events in the agent's spool past a cursor, read in-process (as agent.events()
 * does, but only the new records and only their kind), and the statements the native relay
 * summarised, from the sessions' CONNECTION_CLOSE events.
 */
interface Counted { records: number; statements: number; summarised: number; encoded: number }

class StatementCounter {
  private next = 1;
  constructor(private readonly spoolDir: string) {}

  private async drain(): Promise<Counted> {
    const c: Counted = { records: 0, statements: 0, summarised: 0, encoded: 0 };
    for await (const rec of readSpoolDir(this.spoolDir, this.next)) {
      this.next = rec.seq + 1;
      c.records++;
      const ev = decodeEvent(rec.bytes) as unknown as { kind: number; connectionClose?: { relaySummarized?: unknown; relayEncoded?: unknown } };
      if (ev.kind === EventKind.EVENT_KIND_STATEMENT) c.statements++;
      else if (ev.kind === EventKind.EVENT_KIND_CONNECTION_CLOSE) {
        c.summarised += Number(ev.connectionClose?.relaySummarized ?? 0);
        c.encoded += Number(ev.connectionClose?.relayEncoded ?? 0);
      }
    }
    return c;
  }

  /** Records, statements and summaries since the last call, once the agent has written everything it will. */
  async settle(): Promise<Counted> {
    const c: Counted = { records: 0, statements: 0, summarised: 0, encoded: 0 };
    for (let quiet = 0, i = 0; quiet < 2 && i < 50; i++) {
      await sleep(150);
      const d = await this.drain();
      c.statements += d.statements;
      c.records += d.records;
      c.summarised += d.summarised;
      c.encoded += d.encoded;
      quiet = d.records === 0 ? quiet + 1 : 0;
    }
    return c;
  }
}

// ---------------------------------------------------------------------------------------------
// pgbench

interface Target {
  /** argv prefix that runs pgbench on this path. */
  launch: (argv: string[]) => string[];
  host: string;
  port: number;
  /** The process whose cpu the path adds (agent, pgbouncer), if any. */
  proxyPid?: number;
  note: string;
  unavailable?: string;
}


/**
 * The measured window of a run from pgbench's per-transaction logs (-l: client, transaction,
 * latency in us or "failed"/"skipped", script, completion time in s and us): the transactions that
 * completed from `startMs` on, their rate up to the last one, and their latencies, sorted.
 */
function readWindow(dir: string, startMs: number, loggedTxns: number) {
  const values: number[] = [];
  let failed = 0;
  let lastMs = startMs;
  let all = 0;
  for (const file of readdirSync(dir)) {
    if (!file.startsWith('pgbench_log.')) continue;
    for (const line of readFileSync(path.join(dir, file), 'utf8').split('\n')) {
      const f = line.split(' ');
      if (f.length < 6) continue;
      all++;
      const doneMs = Number(f[4]) * 1000 + Number(f[5]) / 1000;
      if (!(doneMs >= startMs)) continue;
      lastMs = Math.max(lastMs, doneMs);
      const us = Number(f[2]);
      if (Number.isFinite(us)) values.push(us);
      else failed++;
    }
  }
  if (all < loggedTxns) throw new Error(`pgbench logged ${all} transactions, reported ${loggedTxns}`);
  const latencies = Float64Array.from(values).sort();
  const seconds = (lastMs - startMs) / 1000;
  if (!(values.length > 0 && seconds > 0)) throw new Error('no transaction completed in the measured window');
  return { latencies, txns: values.length, failed, tps: values.length / seconds, avgMs: latencies.reduce((a, b) => a + b, 0) / values.length / 1000 };
}

function pgbenchArgs(w: Workload, t: Target, opts: Options, seconds: number, logDir: string): string[] {
  return [
    'pgbench', '-n', ...w.args, '-c', String(opts.clients), '-j', String(opts.threads), '-T', String(seconds),
    '-l', `--log-prefix=${path.join(logDir, 'pgbench_log')}`,
    '-h', t.host, '-p', String(t.port), '-U', 'postgres', 'postgres',
  ];
}

/** Runs pgbench for `seconds` with its per-transaction log in `logDir`; the transactions it says it processed. */
async function pgbench(w: Workload, t: Target, opts: Options, seconds: number, logDir: string): Promise<{ txns: number }> {
  const r = await run(t.launch(pgbenchArgs(w, t, opts, seconds, logDir)), { timeoutMs: (seconds + 60) * 1000, env: CLIENT_ENV });
  const txns = Number(/^number of transactions actually processed: (\d+)/m.exec(r.stdout)?.[1]);
  if (r.code !== 0 || !(txns > 0)) {
    throw new Error(`pgbench ${w.name} exited with ${r.code}: ${(r.stderr.trim() || r.stdout.trim()).slice(-1500)}`);
  }
  return { txns };
}

async function measure(w: Workload, name: PathName, t: Target, opts: Options, work: string, pg: PgServer,
  counter: StatementCounter | undefined): Promise<RunResult> {
  if (w.writes) {
    // Same starting point for every path: empty history, vacuumed hot tables, nothing dirty.
    pg.admin('TRUNCATE pgbench_history');
    for (const table of ['pgbench_branches', 'pgbench_tellers', 'pgbench_history']) pg.admin(`VACUUM ${table}`);
    pg.admin('CHECKPOINT');
  }
  await counter?.settle(); // whatever came before is not this run's
  const logDir = mkdtempSync(path.join(work, `${w.name}-${name}-`));
  const agentPid = name === 'runguard' ? t.proxyPid : undefined;
  const fsyncs = agentPid ? countFsyncs(agentPid) : undefined;
  if (fsyncs) await sleep(200); // perf attached
  // One pgbench for warm-up and measurement: the measured seconds run on connections (and so
  // PostgreSQL backends) that are already warm. A warm-up on connections of its own warmed nothing
  // for direct and runguard, whose backends start with each connection, while pgbouncer kept its
  // pool's backends from run to run: each new backend takes page faults on every shared buffer it
  // first touches, costly in a virtual machine, and in a 3 s run that made PostgreSQL cost twice as
  // much per transaction behind runguard as behind pgbouncer.
  const running = pgbench(w, t, opts, opts.warmup + opts.time, logDir);
  // A pgbench that fails early is reported by the await below; the window then never opened.
  await Promise.race([sleep(opts.warmup * 1000), running.catch(() => undefined)]);
  const windowStartMs = Date.now();
  const threads0 = t.proxyPid ? threadCpu(t.proxyPid) : undefined;
  const pgSched = new PgSchedSampler(postmasterPid(pg));
  const meter = new CpuMeter(t.proxyPid, postmasterPid(pg));
  const whole = await running;
  const cpu = meter.read();
  const threads1 = t.proxyPid ? threadCpu(t.proxyPid) : undefined;
  const pgs = pgSched.stop();
  const fsyncCounts = fsyncs ? await fsyncs.stop() : new Map<number, number>();
  const res = readWindow(logDir, windowStartMs, whole.txns);
  const lat = res.latencies;
  rmSync(logDir, { recursive: true, force: true });
  const counted = counter ? await counter.settle() : { records: 0, statements: 0, summarised: 0, encoded: 0 };
  let spool: SpoolCost | undefined;
  if (agentPid && threads0 && threads1) {
    spool = { records: counted.records, fsyncs: fsyncCounts.size ? 0 : NaN, mainCpu: 0, poolCpu: 0, relayCpu: 0, otherThreadsCpu: 0 };
    for (const [tid, { secs, name }] of threads1) {
      const used = secs - (threads0.get(tid)?.secs ?? 0);
      const syncs = fsyncCounts.get(tid) ?? 0;
      spool.fsyncs += syncs;
      if (tid === agentPid) spool.mainCpu += used;
      else if (syncs > 0) spool.poolCpu += used;
      else if (name === 'runguard-relay') spool.relayCpu += used;
      else spool.otherThreadsCpu += used;
    }
  }
  // The forwarding thread: the agent's relay thread, or pgbouncer's one thread.
  const sched: SchedCost = { fwdWaitUs: NaN, fwdSlices: NaN, pgWaitUs: pgs.waitNs / 1e3 / res.txns, pgSwitches: (pgs.voluntary + pgs.involuntary) / res.txns,
    pgInvoluntary: pgs.involuntary / res.txns, pgMigrations: pgs.migrations / res.txns, pgFaults: pgs.faults / res.txns };
  for (const [tid, th] of threads1 ?? []) {
    const before = threads0?.get(tid);
    if (!before || !(name === 'runguard' ? th.name === 'runguard-relay' : tid === t.proxyPid)) continue;
    sched.fwdWaitUs = (th.waitNs - before.waitNs) / 1e3 / res.txns;
    sched.fwdSlices = (th.slices - before.slices) / res.txns;
  }
  return {
    tps: res.tps, avgMs: res.avgMs, txns: res.txns, failed: res.failed, allTxns: whole.txns, sched, p50Ms: percentile(lat, 0.5) / 1000, p99Ms: percentile(lat, 0.99) / 1000, statements: counted.statements, summarised: counted.summarised, encoded: counted.encoded,
    proxyCpu: cpu.proxy, proxyUsPerTxn: (cpu.proxy * cpu.wall * 1e6) / res.txns,
    pgUsPerTxn: (cpu.pgSecs * 1e6) / res.txns, clientUsPerTxn: (cpu.clientSecs * 1e6) / res.txns, hostBusy: cpu.host, otherCpu: cpu.other, spool,
  };
}

// ---------------------------------------------------------------------------------------------
// --cpu-prof: the agent's top self-time functions

function summarizeProfile(dir: string, top = 25): string[] {
  const files = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile')).map((f) => path.join(dir, f));
  if (!files.length) return [`no .cpuprofile in ${dir} (did the agent exit cleanly?)`];
  const out: string[] = [];
  for (const file of files) {
    interface Node { id: number; callFrame: { functionName: string; url: string; lineNumber: number } }
    const prof = JSON.parse(readFileSync(file, 'utf8')) as { nodes: Node[]; samples: number[]; timeDeltas: number[] };
    const byId = new Map(prof.nodes.map((n) => [n.id, n]));
    const self = new Map<string, number>();
    let total = 0;
    prof.samples.forEach((id, i) => {
      const n = byId.get(id)!;
      const dt = prof.timeDeltas[i] ?? 0;
      total += dt;
      const url = n.callFrame.url.replace(/^file:\/\//, '').replace(ROOT + '/', '').replace(/.*\/node_modules\//, '');
      const key = `${n.callFrame.functionName || '(anonymous)'} ${url ? `${url}:${n.callFrame.lineNumber + 1}` : ''}`.trim();
      self.set(key, (self.get(key) ?? 0) + dt);
    });
    const idle = self.get('(idle)') ?? 0;
    out.push(`${path.basename(file)}: ${(total / 1e6).toFixed(1)} s sampled, ${((total - idle) / 1e6).toFixed(1)} s on cpu (main thread)`);
    const rows: string[][] = [['self ms', '% busy', 'function']];
    for (const [k, us] of [...self].filter(([k]) => k !== '(idle)').sort((a, b) => b[1] - a[1]).slice(0, top)) {
      rows.push([(us / 1000).toFixed(0), `${((100 * us) / (total - idle)).toFixed(1)}%`, k]);
    }
    out.push(table(rows, 'rrl'));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Report


const f0 = (n: number) => (Number.isFinite(n) ? n.toFixed(0) : '-');
const f2 = (n: number) => (Number.isFinite(n) ? n.toFixed(2) : '-');
const f3 = (n: number) => (Number.isFinite(n) ? n.toFixed(3) : '-');
const pct = (n: number) => (Number.isFinite(n) ? `${(100 * n).toFixed(0)}%` : '-');
const fx = (n: number) => (Number.isFinite(n) ? `${n.toFixed(2)}x` : '-');
const plus = (n: number) => (Number.isFinite(n) ? `${n >= 0 ? '+' : ''}${n.toFixed(3)}` : '-');

async function main(): Promise<number> {
  const opts = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) {
    process.stderr.write('bench: run as root (the agent attaches BPF programs; PostgreSQL runs as the postgres user)\n');
    return 1;
  }
  const pgbenchVersion = sh('pgbench', ['--version']);
  if (!pgbenchVersion.ok) throw new Error(`pgbench is needed (apt-get install postgresql-client): ${pgbenchVersion.out}`);
  const started = Date.now();
  const elapsed = () => `${((Date.now() - started) / 1000).toFixed(0)} s`;
  const say = (s: string) => process.stderr.write(`bench: ${s} (${elapsed()})\n`);

  const loadBefore = await idleLoad(2000);
  const work = mkdtempSync(path.join(os.tmpdir(), 'rg-pgbench-'));
  onCleanup('work dir', () => rmSync(work, { recursive: true, force: true }));
  const pg = startPostgres({ ssl: false });
  // pg.stop() reads the postmaster's pid; a Ctrl-C may have stopped it already.
  onCleanup('postgres', () => (existsSync(path.join(pg.dir, 'data', 'postmaster.pid')) ? pg.stop() : rmSync(pg.dir, { recursive: true, force: true })));
  say(`PostgreSQL on ${HOST}:${pg.port}; pgbench -i -s ${opts.scale} over the unix socket`);
  const init = await run(['pgbench', '-i', '-s', String(opts.scale), '-q', '-h', pg.dir, '-p', String(pg.port), '-U', 'postgres', 'postgres'],
    { timeoutMs: 300_000 });
  if (init.code !== 0) throw new Error(`pgbench -i failed: ${init.stderr}`);

  const targets: Record<PathName, Target> = {
    direct: { launch: (a) => a, host: HOST, port: pg.port, note: 'pgbench in the bench\'s own cgroup, not watched' },
    runguard: { launch: (a) => a, host: HOST, port: pg.port, note: '' },
    pgbouncer: { launch: (a) => a, host: '127.0.0.1', port: 0, note: '' },
    'pgbouncer-again': { launch: (a) => a, host: '127.0.0.1', port: 0, note: '' },
    relay: { launch: (a) => a, host: HOST, port: pg.port, note: '' },
  };
  const paths: PathName[] = [...PATHS, ...(opts.aa ? ['pgbouncer-again' as const] : []), ...(opts.relayPath ? ['relay' as const] : [])];
  if (opts.relayPath) {
    try {
      const r = await startAgent(pg, work, opts, 'tcp');
      targets.relay.launch = (argv) => [RUNGUARD, 'run', '--state-dir', r.stateDir, '--', ...argv];
      targets.relay.proxyPid = r.proc?.pid;
      targets.relay.note = 'bin/runguard run: BPF redirect -> a second agent, generic TCP handler on the port (connection events only)';
    } catch (err) {
      targets.relay.unavailable = (err as Error).message;
    }
  }
  let agent: AgentFixture | undefined;
  let counter: StatementCounter | undefined;
  try {
    try {
      agent = await startAgent(pg, work, opts);
    } catch (err) {
      // A BPF program load can fail transiently (EAGAIN) while another agent loads on the host.
      say(`the agent did not start, trying once more: ${(err as Error).message.split('\n').slice(-2).join(' ')}`);
      agent = await startAgent(pg, work, opts);
    }
    const a = agent;
    counter = new StatementCounter(path.join(a.stateDir, 'spool'));
    targets.runguard.launch = (argv) => [RUNGUARD, 'run', '--state-dir', a.stateDir, '--', ...argv];
    targets.runguard.proxyPid = a.proc?.pid;
    targets.runguard.note = `bin/runguard run: BPF redirect -> agent, postgres handler, policy ${path.relative(ROOT, POLICY)}, ` +
      `one fsynced STATEMENT event per statement (state dir on ${sh('findmnt', ['-n', '-o', 'FSTYPE', '-T', a.stateDir]).out || 'an unknown filesystem'}, ` +
      `spool commit delay ${opts.commitDelayMs ?? `${DEFAULT_COMMIT_DELAY_MS} (default)`} ms, ` +
      `relay audit delay ${opts.relayAuditDelayMs ?? `${DEFAULT_RELAY_AUDIT_DELAY_MS} (default)`} ms, ` +
      `${a.proc?.pid ? relayThreadsOf(a.proc.pid) : '?'} relay threads)` +
      `${opts.cpuProf ? '; agent under the cpu profiler (slower)' : ''}`;
  } catch (err) {
    targets.runguard.unavailable = (err as Error).message;
  }
  try {
    const b = await startPgbouncer(pg, HOST);
    targets.pgbouncer.port = b.port;
    targets.pgbouncer.proxyPid = b.pid;
    targets.pgbouncer.note = `${b.version}, session mode on 127.0.0.1:${b.port}, pool 20, idle server connections closed after 1 s, run as postgres (-u)`;
  } catch (err) {
    targets.pgbouncer.unavailable = (err as Error).message;
  }
  targets['pgbouncer-again'] = { ...targets.pgbouncer, note: 'the same pgbouncer, measured again in every round (A/A calibration)' };

  // Every run, by workload and path, in round order (a failed run leaves its round's slot empty).
  const runs = new Map<string, (RunResult | undefined)[]>();
  const errors: string[] = [];
  const key = (w: Workload, n: PathName) => `${w.name}/${n}`;
  for (const [wi, w] of opts.workloads.entries()) {
    const order = paths.filter((n) => !targets[n].unavailable);
    for (let round = 0; round < opts.rounds; round++) {
      for (const name of roundOrder(order, wi + round)) {
        if (interrupted) return 130;
        const t = targets[name];
        const of = opts.rounds > 1 ? ` (round ${round + 1} of ${opts.rounds})` : '';
        say(`${w.label} via ${name}${of}: ${opts.warmup} s warm-up, ${opts.time} s measured`);
        const slot = runs.get(key(w, name)) ?? [];
        runs.set(key(w, name), slot);
        try {
          // Runs off the runguard path must not be audited (they did not go through the agent), and
          // the runguard path's must be, all of them: the count is taken around every run.
          const r = await measure(w, name, t, opts, work, pg, counter);
          slot[round] = r;
          if (name !== 'runguard' && r.statements !== 0) errors.push(`${w.name} via ${name}: ${r.statements} statements went through the agent`);
          if (name === 'runguard' && r.statements < r.allTxns * w.statementsPerTxn) {
            errors.push(`${w.name} via runguard: ${r.statements} STATEMENT events for ${r.allTxns} transactions x ${w.statementsPerTxn} statements`);
          }
        } catch (err) {
          errors.push(`${w.name} via ${name}: ${(err as Error).message}`);
        }
      }
    }
  }
  // The tables show each path's median run by tps; the ratios below are taken round by round.
  const median = (xs: number[]) => percentile([...xs].sort((a, b) => a - b), 0.5);
  const results = new Map<string, RunResult>();
  for (const [k, list] of runs) {
    const done = list.filter((r): r is RunResult => r !== undefined);
    const mid = median(done.map((r) => r.tps));
    const run = done.find((r) => r.tps === mid);
    if (run) results.set(k, run);
  }
  const roundRatios = (w: Workload, num: PathName, den: PathName): number[] => {
    const a = runs.get(key(w, num)) ?? [];
    const b = runs.get(key(w, den)) ?? [];
    const out: number[] = [];
    for (let i = 0; i < opts.rounds; i++) if (a[i] && b[i]) out.push(a[i]!.tps / b[i]!.tps);
    return out;
  };

  // Report
  const out: string[] = [''];
  out.push(`pgbench to PostgreSQL ${pg.admin('SHOW server_version').trim()} on ${HOST}:${pg.port}, scale ${opts.scale}, ` +
    `-c ${opts.clients} -j ${opts.threads}, one pgbench per run: ${opts.warmup} s warm-up then ${opts.time} s measured on the same connections, -n (vacuum by the bench, outside the proxy)`);
  out.push(`host: ${os.cpus().length} cpus (${os.cpus()[0]?.model.trim()}), Linux ${os.release()}, node ${process.version}, ${pgbenchVersion.out}`);
  out.push('server: test/helpers/postgres.ts settings (fsync=off, shared_buffers=64MB, max_connections=100), ssl=off; clients sslmode=disable');
  for (const n of paths) out.push(`  ${n.padEnd(9)} ${targets[n].unavailable ? `UNAVAILABLE: ${targets[n].unavailable}` : targets[n].note}`);
  out.push('');
  const rows: string[][] = [['workload', 'path', 'tps', 'avg ms', 'p50 ms', 'p99 ms', 'txns', 'failed', 'STATEMENT events', 'proxy cpu', 'proxy us/txn', 'pg us/txn', 'pgbench us/txn', 'host cpu', 'other cpu']];
  for (const w of opts.workloads) {
    for (const n of paths) {
      const r = results.get(key(w, n));
      if (!r) {
        rows.push([w.label, n, 'n/a', '', '', '', '', '', '', '', '', '', '', '', '']);
        continue;
      }
      rows.push([w.label, n, f0(r.tps), f3(r.avgMs), f3(r.p50Ms), f3(r.p99Ms), String(r.txns), String(r.failed),
        n === 'runguard' ? `${r.statements} (${f2(r.statements / r.allTxns)}/txn, ${pct(r.summarised / Math.max(1, r.statements))} summarised, ${pct(r.encoded / Math.max(1, r.statements))} written by the relay)` : String(r.statements),
        n === 'direct' ? '-' : pct(r.proxyCpu), n === 'direct' ? '-' : f0(r.proxyUsPerTxn), f0(r.pgUsPerTxn), f0(r.clientUsPerTxn), pct(r.hostBusy), pct(r.otherCpu)]);
    }
  }
  out.push(table(rows, 'll'));
  out.push('  STATEMENT events: for runguard also the share the native relay summarised (request + command tag, not every message)');
  out.push('  and the share whose event it wrote itself (sealed into the spool in native runs unless the handler must see it)');
  out.push('  proxy cpu: cpu time of the agent / pgbouncer process per wall second (100% = one cpu); proxy us/txn: that cpu time');
  out.push('  per transaction (a single-threaded proxy at 100% caps tps at 1e6 / us/txn); pg / pgbench us/txn: the same for');
  out.push('  PostgreSQL and for the bench\'s children (pgbench); host cpu: all cpus busy;');
  out.push('  other cpu: busy time of all cpus not spent by pgbench, PostgreSQL, the proxy or the bench (load from outside)');
  out.push(`  host load before the bench started: ${pct(loadBefore)} of all cpus busy`);
  const noisy = [...results.values()].some((r) => r.otherCpu > 0.1) || loadBefore > 0.1;
  if (noisy) out.push('  WARNING: other processes used the cpus during the bench; the ratios are not trustworthy, run again on a quiet host');

  const ratios: string[][] = [['workload', 'tps rg/direct', 'tps pgb/direct', 'tps rg/pgb', 'rg +p50 ms', 'rg +p99 ms', 'pgb +p50 ms', 'pgb +p99 ms', 'rg-pgb p50', 'rg-pgb p99',
    ...(opts.relayPath ? ['tps relay/pgb', 'tps rg/relay'] : []), ...(opts.aa ? ['A/A pgb/pgb'] : []),
    ...(opts.rounds > 1 ? ['rg/pgb by round'] : []), ...(opts.rounds > 1 && opts.aa ? ['A/A by round'] : [])]];
  for (const w of opts.workloads) {
    const d = results.get(key(w, 'direct'));
    const g = results.get(key(w, 'runguard'));
    const b = results.get(key(w, 'pgbouncer'));
    const rl = results.get(key(w, 'relay'));
    const r = (x: RunResult | undefined, y: RunResult | undefined, f: (r: RunResult) => number) => (x && y ? f(x) / f(y) : NaN);
    const dd = (x: RunResult | undefined, y: RunResult | undefined, f: (r: RunResult) => number) => (x && y ? f(x) - f(y) : NaN);
    const tpsRatio = (num: PathName, den: PathName, x: RunResult | undefined, y: RunResult | undefined) =>
      (opts.rounds > 1 ? median(roundRatios(w, num, den)) : r(x, y, (v) => v.tps));
    ratios.push([w.label, fx(tpsRatio('runguard', 'direct', g, d)), fx(tpsRatio('pgbouncer', 'direct', b, d)), fx(tpsRatio('runguard', 'pgbouncer', g, b)),
      plus(dd(g, d, (v) => v.p50Ms)), plus(dd(g, d, (v) => v.p99Ms)), plus(dd(b, d, (v) => v.p50Ms)), plus(dd(b, d, (v) => v.p99Ms)),
      plus(dd(g, b, (v) => v.p50Ms)), plus(dd(g, b, (v) => v.p99Ms)),
      ...(opts.relayPath ? [fx(tpsRatio('relay', 'pgbouncer', rl, b)), fx(tpsRatio('runguard', 'relay', g, rl))] : []),
      ...(opts.aa ? [fx(tpsRatio('pgbouncer-again', 'pgbouncer', results.get(key(w, 'pgbouncer-again')), b))] : []),
      ...(opts.rounds > 1 ? [roundRatios(w, 'runguard', 'pgbouncer').map(fx).join(' ')] : []),
      ...(opts.rounds > 1 && opts.aa ? [roundRatios(w, 'pgbouncer-again', 'pgbouncer').map(fx).join(' ')] : [])]);
  }
  const spoolRows: string[][] = [['workload', 'records', 'fdatasyncs', 'fsyncs/s', 'records/fsync', 'agent main us/txn', 'libuv pool us/txn', 'relay us/txn', 'other threads us/txn']];
  for (const w of opts.workloads) {
    const g = results.get(key(w, 'runguard'));
    const sp = g?.spool;
    if (!g || !sp) continue;
    const perTxn = (secs: number) => f0((secs * 1e6) / g.txns);
    spoolRows.push([w.label, String(sp.records), f0(sp.fsyncs), f0(sp.fsyncs / (opts.warmup + opts.time)), f2(sp.records / sp.fsyncs),
      perTxn(sp.mainCpu), perTxn(sp.poolCpu), perTxn(sp.relayCpu), perTxn(sp.otherThreadsCpu)]);
  }
  const schedRows: string[][] = [['workload', 'path', 'fwd thread run-queue wait us/txn', 'fwd slices/txn', 'pg run-queue wait us/txn',
    'pg switches/txn', 'pg involuntary/txn', 'pg migrations/txn', 'pg page faults/txn']];
  for (const w of opts.workloads) {
    for (const p of PATHS) {
      const r = results.get(key(w, p));
      if (r) schedRows.push([w.label, p, f2(r.sched.fwdWaitUs), f2(r.sched.fwdSlices), f2(r.sched.pgWaitUs), f2(r.sched.pgSwitches), f2(r.sched.pgInvoluntary), f3(r.sched.pgMigrations), f2(r.sched.pgFaults)]);
    }
  }
  out.push('');
  out.push(table(schedRows, 'llrrrrrrr'));
  out.push('  scheduler, per transaction: run-queue wait = time runnable but waiting for a cpu (schedstat); fwd = the thread that forwards');
  out.push('  (the agent\'s relay thread, pgbouncer\'s process); pg = PostgreSQL\'s processes: context switches, the involuntary ones, migrations,');
  out.push('  minor page faults');
  if (spoolRows.length > 1) {
    out.push('');
    out.push(table(spoolRows, 'l'));
    out.push('  runguard\'s spool over the whole run, warm-up included: fdatasyncs counted by perf on the syscall tracepoint (- without perf),');
    out.push('  records = every event written (statements, opens, closes); agent cpu per transaction of the measured window, split by thread:\n  main, libuv pool (threads that called fdatasync), the native relay thread, other (V8 platform threads, pool threads that did not sync)');
  }
  out.push('');
  out.push(table(ratios));
  out.push('  rg = runguard (full audit), pgb = pgbouncer (session mode); +p50/+p99: latency added over direct, in ms');
  if (opts.relayPath) out.push('  relay = the agent with the generic TCP handler on the port: redirect and Node relay, no PostgreSQL parsing or statement events');
  if (opts.aa) out.push('  A/A = pgbouncer-again over pgbouncer: one pgbouncer measured twice per round, the spread host noise alone gives a ratio of two runs');
  if (opts.rounds > 1) out.push(`  ${opts.rounds} rounds: tps ratios are the median of the per-round ratios; latencies are those of each path's median run`);
  out.push('');
  out.push('anchor (issue 4, this machine earlier): direct ~15,000-18,000 tps select-only, pgbouncer ~10,000-11,000, a bare Node');
  out.push('socket pipe ~8,500. Target: runguard >= 0.9 x pgbouncer throughput with every statement audited.');
  for (const w of opts.workloads) {
    const g = results.get(key(w, 'runguard'));
    const b = results.get(key(w, 'pgbouncer'));
    if (g && b) {
      const ratio = opts.rounds > 1 ? median(roundRatios(w, 'runguard', 'pgbouncer')) : g.tps / b.tps;
      const aa = roundRatios(w, 'pgbouncer-again', 'pgbouncer');
      out.push(`  ${w.label}: runguard/pgbouncer ${fx(ratio)} -> ${ratio >= 0.9 ? 'meets' : 'MISSES'} the 0.9x target; ` +
        `${g.statements} statements audited for ${g.allTxns} transactions` +
        (aa.length ? `; pgbouncer against itself (A/A) ${fx(median(aa))}, rounds ${fx(Math.min(...aa))} to ${fx(Math.max(...aa))}` : ''));
    }
  }
  if (errors.length) out.push('', 'errors:', ...errors.map((e) => `  ${e}`));

  if (opts.cpuProf && agent) {
    await agent.stop(); // the profile is written as the agent exits
    out.push('', `agent cpu profile (${opts.cpuProf}): top self time, main thread`, ...summarizeProfile(opts.cpuProf));
  }
  out.push('', `done in ${elapsed()}`);
  process.stdout.write(out.join('\n') + '\n');
  return targets.runguard.unavailable || errors.length ? 3 : 0;
}

for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(sig, () => {
    interrupted = true;
    process.stderr.write(`bench: ${sig}, cleaning up\n`);
    void cleanupAll().finally(() => process.exit(130));
  });
}

try {
  process.exitCode = await main();
} catch (err) {
  process.stderr.write(`bench: ${(err as Error).stack ?? err}\n`);
  process.exitCode = 1;
} finally {
  if (!interrupted) await cleanupAll();
}
