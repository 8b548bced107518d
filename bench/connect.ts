// Connect-path benchmark: the cost of reaching a TCP server through runguard, side by side in one run
// with the two obvious references, all to the same upstream echo server on 127.0.0.3:
//   direct    the client is in no watched cgroup: the plain kernel path;
//   runguard  the client runs as a watched job (`runguard run`): BPF connect4 redirect to the agent's
//             proxy, redirect-record lookup, identity, a durable (fsynced) CONNECTION_OPEN event, relay;
//   iptables  the classic transparent proxy: a nat OUTPUT REDIRECT rule scoped to a dedicated cgroup
//             (xt_cgroup) and a minimal Node proxy (bench/ref-proxy.ts) reading SO_ORIGINAL_DST.
// The client is one program for all three (bench/connect-client.py): connect, send 1 byte, read the
// echo, close; COUNT connections sequentially, then COUNT over CONCURRENCY parallel loops. Latency
// is connect + first-byte round trip. Paths run interleaved over ROUNDS rounds (rotating the order)
// so drift on a small shared machine hits them alike; the ratios are the result, not the absolutes.
//
//   npm run bench                          (build, then node dist/bench/connect.js)
//   node dist/bench/connect.js [--count 2000] [--rounds 2] [--concurrency 8]
//
// Needs root (BPF, cgroups, iptables). Everything it starts is undone at exit, Ctrl-C included: the
// agent is stopped by pid and `runguard agent --cleanup` unpins its hooks, the iptables rule is
// deleted, the cgroups it created are removed.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, rmdirSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from '../test/helpers/ports.js';
import { cleanupAll, onCleanup, percentile, run, sh, stopChild, table, track } from './harness.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const RUNGUARD = path.join(ROOT, 'bin/runguard');
const CLIENT = path.join(ROOT, 'bench/connect-client.py');
const REF_PROXY = path.join(ROOT, 'dist/bench/ref-proxy.js');
const TARGET = '127.0.0.3';
const WARMUP = 200;
const JOIN_CGROUP_AND_EXEC = 'echo $$ > "$0/cgroup.procs" && exec "$@"';

type PathName = 'direct' | 'runguard' | 'iptables';
const PATHS: PathName[] = ['direct', 'runguard', 'iptables'];

interface ClientResult {
  count: number;
  concurrency: number;
  elapsed_ns: number;
  errors: number;
  first_error: string | null;
  lat_ns: number[];
}

interface PathState {
  name: PathName;
  /** Set when the path cannot be measured; printed instead of numbers. */
  unavailable?: string;
  note: string;
  /** argv that runs the client on this path. */
  launch: (clientArgv: string[]) => string[];
  seq: ClientResult[];
  conc: ClientResult[];
}

// ---------------------------------------------------------------------------------------------
// Cleanup: every resource registers its undo right after it exists; run once, in reverse, from the
// finally block or from a signal.




// ---------------------------------------------------------------------------------------------
// Processes

function parseArgs(argv: string[]): { count: number; rounds: number; concurrency: number } {
  const opts = { count: 2000, rounds: 2, concurrency: 8 };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i]?.replace(/^--/, '') as keyof typeof opts;
    const value = Number(argv[++i]);
    if (!(key in opts) || !Number.isInteger(value) || value < 1) {
      throw new Error(`usage: connect.js [--count N] [--rounds N] [--concurrency N] (got "${argv[i - 1]}")`);
    }
    opts[key] = value;
  }
  return opts;
}




function cgroup2Root(): string {
  for (const line of readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
    const [, mountPoint, fsType] = line.split(' ');
    if (fsType === 'cgroup2' && mountPoint) return mountPoint.replace(/\\040/g, ' ');
  }
  throw new Error('no cgroup v2 hierarchy is mounted');
}

async function removeCgroupDir(dir: string): Promise<void> {
  for (let i = 0; i < 40; i++) {
    try {
      rmdirSync(dir);
      return;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      if (code !== 'EBUSY') throw err;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`cgroup ${dir} still has processes in it`);
}

/** The system python3 when present (readable by any uid), else whatever python3 is on PATH. */
function findPython(): string {
  if (existsSync('/usr/bin/python3')) return '/usr/bin/python3';
  const r = spawnSync('python3', ['-c', 'import sys; print(sys.executable)'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error('python3 is needed for the bench client (bench/connect-client.py)');
  return r.stdout.trim();
}

// ---------------------------------------------------------------------------------------------
// The upstream: an echo server on 127.0.0.3, in this process (idle while a client runs).

async function startEcho(): Promise<number> {
  const server = net.createServer({ noDelay: true }, (s) => {
    s.on('error', () => {});
    s.on('data', (d) => s.write(d));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: TARGET, port: 0, backlog: 1024 }, () => resolve());
  });
  onCleanup('echo server', () => new Promise<void>((r) => {
    server.close(() => r());
    setTimeout(r, 1000).unref();
  }));
  return (server.address() as net.AddressInfo).port;
}

// ---------------------------------------------------------------------------------------------
// (b) runguard

interface Agent {
  stateDir: string;
}

async function startAgent(): Promise<Agent> {
  const tag = `runguard-bench-${process.pid}`;
  const stateDir = mkdtempSync(path.join(os.tmpdir(), 'rg-bench-'));
  const pinDir = `/sys/fs/bpf/${tag}`;
  const jobCgroup = `${tag}.jobs`;
  const proxyPort = await freePort();
  const args = [
    'agent', '--state-dir', stateDir, '--pin-dir', pinDir, '--job-cgroup', jobCgroup, '--proxy-port', String(proxyPort),
    '--intercept', `${TARGET}/32`, '--agent-id', 'bench', '--log-level', 'info',
  ];
  const proc = spawn(RUNGUARD, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  track(proc);
  onCleanup('runguard agent', async () => {
    await stopChild(proc);
    const r = sh(RUNGUARD, ['agent', '--cleanup', '--state-dir', stateDir, '--pin-dir', pinDir, '--job-cgroup', jobCgroup]);
    if (!r.ok) throw new Error(`runguard agent --cleanup: ${r.out}`);
    if (existsSync(pinDir)) throw new Error(`pins left behind in ${pinDir}`);
    rmSync(stateDir, { recursive: true, force: true });
  });
  let log = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the agent did not start in 20 s:\n${log.slice(-2000)}`)), 20_000);
    const onData = (d: Buffer) => {
      log += d.toString();
      if (log.length > 1 << 20) log = log.slice(-65536); // keep draining, keep little
      const line = log.split('\n').find((l) => l.includes('"agent running'));
      if (!line) return;
      clearTimeout(timer);
      const status = (JSON.parse(line) as { bpfStatus?: string }).bpfStatus;
      if (status !== 'attached') reject(new Error(`the agent runs without its BPF hooks (bpfStatus ${status}):\n${line}`));
      else resolve();
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', onData);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the agent exited with ${code} before running:\n${log.slice(-2000)}`));
    });
  });
  return { stateDir };
}

/** CONNECTION_OPEN events in the agent's spool: one per connection that went through the proxy. */
async function sessionsAudited(agent: Agent): Promise<number> {
  const r = await run([RUNGUARD, 'events', '--state-dir', agent.stateDir, '--json', '--kind', 'CONNECTION_OPEN'], { timeoutMs: 60_000 });
  if (r.code !== 0) throw new Error(`runguard events: ${r.stderr}`);
  return r.stdout.split('\n').filter(Boolean).length;
}

// ---------------------------------------------------------------------------------------------
// (c) iptables REDIRECT + reference proxy

interface RefProxy {
  port: number;
  stats(): Promise<{ accepted: number; failed: number }>;
}

async function startRefProxy(): Promise<RefProxy> {
  const proc = spawn(process.execPath, [REF_PROXY, '--port', '0'], { stdio: ['pipe', 'pipe', 'inherit'] });
  track(proc);
  onCleanup('reference proxy', () => stopChild(proc, 3000));
  const lines: string[] = [];
  const waiters: ((line: string) => void)[] = [];
  let buf = '';
  proc.stdout!.on('data', (d: Buffer) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      const w = waiters.shift();
      if (w) w(line);
      else lines.push(line);
    }
  });
  const nextLine = () => new Promise<string>((resolve, reject) => {
    const l = lines.shift();
    if (l !== undefined) return resolve(l);
    const timer = setTimeout(() => reject(new Error('the reference proxy does not answer')), 10_000);
    waiters.push((line) => {
      clearTimeout(timer);
      resolve(line);
    });
  });
  const { port } = JSON.parse(await nextLine()) as { port: number };
  return {
    port,
    async stats() {
      proc.stdin!.write('stats\n');
      return JSON.parse(await nextLine());
    },
  };
}

/** Installs the nat REDIRECT rule, scoped as narrowly as this kernel allows; returns how. */
async function setupIptables(echoPort: number, proxyPort: number):
  Promise<{ launch: (argv: string[]) => string[]; note: string }> {
  const probe = sh('iptables', ['-t', 'nat', '-L', 'OUTPUT', '-n']);
  if (!probe.ok) throw new Error(`\`iptables -t nat -L\` fails: ${probe.out}`);
  const version = sh('iptables', ['--version']).out;
  const base = ['OUTPUT', '-p', 'tcp', '-d', `${TARGET}/32`, '--dport', String(echoPort)];
  const target = ['-j', 'REDIRECT', '--to-ports', String(proxyPort)];
  const install = (match: string[]): boolean => {
    const rule = [...base, ...match, ...target];
    const added = sh('iptables', ['-t', 'nat', '-A', ...rule]);
    if (!added.ok) return false;
    onCleanup('iptables rule', () => {
      const r = sh('iptables', ['-t', 'nat', '-D', ...rule]);
      if (!r.ok) throw new Error(`iptables -t nat -D ${rule.join(' ')}: ${r.out}`);
    });
    return true;
  };

  // 1. xt_cgroup: only processes in a dedicated cgroup are redirected, as with runguard's scoping.
  const root = cgroup2Root();
  const rel = `runguard-bench-${process.pid}.iptables`;
  const abs = path.join(root, rel);
  mkdirSync(abs);
  onCleanup(`cgroup ${abs}`, () => removeCgroupDir(abs));
  if (install(['-m', 'cgroup', '--path', rel])) {
    return {
      launch: (argv) => ['/bin/sh', '-c', JOIN_CGROUP_AND_EXEC, abs, ...argv],
      note: `${version}; rule scoped with -m cgroup --path ${rel}`,
    };
  }
  // 2. xt_owner: the client runs as nobody; the proxy (root) is not redirected.
  if (install(['-m', 'owner', '--uid-owner', '65534'])) {
    return {
      launch: (argv) => ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', ...argv],
      note: `${version}; xt_cgroup unavailable, rule scoped with -m owner --uid-owner 65534 (client runs as nobody)`,
    };
  }
  // A destination-only rule would also catch the proxy's own upstream connection (a loop), so
  // without either match there is no honest reference to measure.
  throw new Error('neither -m cgroup nor -m owner is accepted by iptables here; an unscoped rule would loop the proxy');
}

// ---------------------------------------------------------------------------------------------
// Measurement

async function runClient(p: PathState, port: number, count: number, concurrency: number): Promise<ClientResult> {
  const argv = p.launch([CLIENT, TARGET, String(port), String(count), String(concurrency)]);
  const r = await run(argv, { timeoutMs: 120_000 });
  const line = r.stdout.trim().split('\n').pop() ?? '';
  if (r.code !== 0 || !line.startsWith('{')) {
    throw new Error(`client on path ${p.name} exited with ${r.code}: ${r.stderr.trim().slice(-1500) || r.stdout.slice(-500)}`);
  }
  const res = JSON.parse(line) as ClientResult;
  if (res.errors > count / 10) throw new Error(`client on path ${p.name}: ${res.errors}/${count} connections failed (${res.first_error})`);
  return res;
}


interface Summary {
  seqRate: number;
  concRate: number;
  p50: number;
  p99: number;
  concP50: number;
  concP99: number;
  errors: number;
}

function summarize(p: PathState): Summary {
  const rate = (rs: ClientResult[]) => rs.reduce((a, r) => a + r.count - r.errors, 0) / (rs.reduce((a, r) => a + r.elapsed_ns, 0) / 1e9);
  const lat = (rs: ClientResult[]) => rs.flatMap((r) => r.lat_ns).sort((a, b) => a - b);
  const seq = lat(p.seq);
  const conc = lat(p.conc);
  return {
    seqRate: rate(p.seq), concRate: rate(p.conc),
    p50: percentile(seq, 0.5) / 1000, p99: percentile(seq, 0.99) / 1000,
    concP50: percentile(conc, 0.5) / 1000, concP99: percentile(conc, 0.99) / 1000,
    errors: [...p.seq, ...p.conc].reduce((a, r) => a + r.errors, 0),
  };
}


const f0 = (n: number) => (Number.isFinite(n) ? n.toFixed(0) : '-');
const f1 = (n: number) => (Number.isFinite(n) ? n.toFixed(1) : '-');
const fx = (n: number) => (Number.isFinite(n) ? `${n >= 10 ? n.toFixed(1) : n.toFixed(2)}x` : '-');

function ratioRow(label: string, a: Summary, b: Summary): string[] {
  return [label, fx(a.seqRate / b.seqRate), fx(a.concRate / b.concRate), fx(a.p50 / b.p50), fx(a.p99 / b.p99),
    `+${f0(a.p50 - b.p50)}`];
}

async function main(): Promise<number> {
  const opts = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) {
    process.stderr.write('bench: run as root (the agent attaches BPF programs; the iptables path adds a nat rule)\n');
    return 1;
  }
  if (!existsSync(REF_PROXY)) throw new Error(`${REF_PROXY} is missing: run \`npm run build\``);
  const python = findPython();
  const pyVersion = sh(python, ['--version']).out;
  const echoPort = await startEcho();

  const paths: Record<PathName, PathState> = {
    direct: { name: 'direct', note: 'client in the bench\'s own cgroup, not watched', launch: (a) => [python, ...a], seq: [], conc: [] },
    runguard: { name: 'runguard', note: '', launch: () => [], seq: [], conc: [] },
    iptables: { name: 'iptables', note: '', launch: () => [], seq: [], conc: [] },
  };

  let agent: Agent | undefined;
  try {
    agent = await startAgent();
    const a = agent;
    paths.runguard.launch = (argv) => [RUNGUARD, 'run', '--state-dir', a.stateDir, '--', python, ...argv];
    paths.runguard.note = 'bin/runguard run (BPF connect4 redirect -> agent proxy, generic TCP handler, fsynced audit spool)';
  } catch (err) {
    paths.runguard.unavailable = (err as Error).message;
  }

  let ref: RefProxy | undefined;
  try {
    ref = await startRefProxy();
    const how = await setupIptables(echoPort, ref.port);
    paths.iptables.launch = (argv) => how.launch([python, ...argv]);
    paths.iptables.note = `nat OUTPUT REDIRECT -> bench/ref-proxy (SO_ORIGINAL_DST via koffi); ${how.note}`;
  } catch (err) {
    paths.iptables.unavailable = (err as Error).message;
  }

  const usable = () => PATHS.filter((n) => !paths[n].unavailable);

  // Warm up each path (JIT, caches) and prove it is routed the way it claims: the runguard path
  // shows up as audited sessions, the iptables path in the reference proxy's count, direct in neither.
  const counts = async () => ({
    audited: agent && !paths.runguard.unavailable ? await sessionsAudited(agent) : 0,
    relayed: ref && !paths.iptables.unavailable ? (await ref.stats()).accepted : 0,
  });
  for (const name of usable()) {
    const p = paths[name];
    try {
      const before = await counts();
      await runClient(p, echoPort, WARMUP, 1);
      const after = await counts();
      const audited = after.audited - before.audited;
      const relayed = after.relayed - before.relayed;
      const want = { direct: [0, 0], runguard: [WARMUP, 0], iptables: [0, WARMUP] }[name];
      if (audited !== want[0] || relayed !== want[1]) {
        throw new Error(`warm-up went the wrong way: ${audited} sessions audited by runguard, ${relayed} relayed by the reference proxy for ${WARMUP} connections`);
      }
    } catch (err) {
      p.unavailable = (err as Error).message;
    }
  }

  const started = Date.now();
  for (let round = 0; round < opts.rounds; round++) {
    const order = usable();
    const rotated = [...order.slice(round % order.length), ...order.slice(0, round % order.length)];
    for (const [mode, conc] of [['seq', 1], ['conc', opts.concurrency]] as const) {
      for (const name of rotated) {
        const p = paths[name];
        if (p.unavailable) continue;
        try {
          p[mode].push(await runClient(p, echoPort, Math.ceil(opts.count / opts.rounds), conc));
        } catch (err) {
          p.unavailable = (err as Error).message;
        }
      }
    }
    process.stderr.write(`bench: round ${round + 1}/${opts.rounds} done (${((Date.now() - started) / 1000).toFixed(1)} s)\n`);
  }

  // Every measured runguard connection must have been audited, every iptables one relayed.
  const final = await counts();
  const measured = (n: PathName) => paths[n].seq.concat(paths[n].conc).reduce((a, r) => a + r.count - r.errors, 0);
  const checks: string[] = [];
  if (!paths.runguard.unavailable) checks.push(`runguard audited ${final.audited - WARMUP} sessions for ${measured('runguard')} measured connections`);
  if (!paths.iptables.unavailable) checks.push(`reference proxy relayed ${final.relayed - WARMUP} for ${measured('iptables')}`);

  // Report
  const perRun = Math.ceil(opts.count / opts.rounds);
  const out: string[] = [];
  out.push('');
  out.push(`connect path: connect + 1-byte echo + close to ${TARGET}:${echoPort} (Node echo server)`);
  out.push(`host: ${os.cpus().length} cpus, Linux ${os.release()}, node ${process.version}, ${pyVersion}; ` +
    `${opts.rounds} rounds x ${perRun} connections per path and mode, ${opts.concurrency} concurrent loops; latency = connect + first byte, sequential runs`);
  for (const n of PATHS) out.push(`  ${n.padEnd(8)} ${paths[n].unavailable ? `UNAVAILABLE: ${paths[n].unavailable}` : paths[n].note}`);
  const sums: Partial<Record<PathName, Summary>> = {};
  const rows: string[][] = [['path', 'conn/s seq', `conn/s x${opts.concurrency}`, 'p50 us', 'p99 us', `p50 us x${opts.concurrency}`, `p99 us x${opts.concurrency}`, 'errors']];
  for (const n of PATHS) {
    if (paths[n].unavailable || !paths[n].seq.length) {
      rows.push([n, 'n/a', 'n/a', 'n/a', 'n/a', 'n/a', 'n/a', '-']);
      continue;
    }
    const s = (sums[n] = summarize(paths[n]));
    rows.push([n, f0(s.seqRate), f0(s.concRate), f1(s.p50), f1(s.p99), f1(s.concP50), f1(s.concP99), String(s.errors)]);
  }
  out.push('');
  out.push(table(rows));
  const ratios: string[][] = [['ratio', 'conn/s seq', `conn/s x${opts.concurrency}`, 'p50', 'p99', 'p50 added us']];
  if (sums.direct && sums.runguard) ratios.push(ratioRow('runguard / direct', sums.runguard, sums.direct));
  if (sums.direct && sums.iptables) ratios.push(ratioRow('iptables / direct', sums.iptables, sums.direct));
  if (sums.runguard && sums.iptables) ratios.push(ratioRow('runguard / iptables', sums.runguard, sums.iptables));
  if (ratios.length > 1) {
    out.push('');
    out.push(table(ratios));
  }
  if (checks.length) out.push('', `check: ${checks.join('; ')}`);
  process.stdout.write(out.join('\n') + '\n');
  // The reference may legitimately be missing on a host (no nat table, no xt_cgroup/xt_owner);
  // runguard's own path or the baseline missing means the bench did not do its job.
  return paths.direct.unavailable || paths.runguard.unavailable ? 3 : 0;
}

let interrupted = false;
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
