// One synthetic agent for bench/ingest.ts: the real Spool (agent/events/spool.ts) and the real
// Shipper (agent/events/shipper.ts), exactly as `runguard agent` wires them (agent/agent.ts,
// createShipper), fed with synthetic CONNECTION_OPEN events instead of intercepted connections.
//
//   node dist/bench/ingest-agent.js --tls DIR --state DIR --collector HOST:PORT --events N [--rate R]
//     [--batch-events N] [--max-inflight N] [--ordered-sessions 1]
//
// The last three are experiment knobs, off by default: the Shipper's own batchEvents/maxInFlight
// options (batchBytes grows with batchEvents so the count is what binds), and time-ordered
// (UUIDv7-style) session ids instead of the proxy's random UUIDs.
//
// Protocol with the parent, one JSON object per line on stdout:
//   -> {"ready":true,...}          once the spool is open and the shipper started
//   <- "go\n" on stdin             start appending (all agents of a run start together)
//   -> {"done":true,...}           once the collector acknowledged seq N (timestamps in epoch ms)
//   <- "exit\n" or stdin closed    stop the shipper, close the spool, exit
// --rate 0 (default) appends as fast as the process can, in chunks that yield to the event loop
// so the spool's group commit and the shipper run alongside; --rate R paces appends at R events/s
// and reports each event's append time (for the integration latency in the parent).
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { pino } from 'pino';
import { EventKind, IdentitySource, type EventDraft } from '../proto/index.js';
import { Spool } from '../agent/events/spool.js';
import { Shipper } from '../agent/events/shipper.js';
import { loadAgentIdentity, loadCheckpointVerifier, tlsClientCredentials } from '../collector/pki/identity.js';

const now = () => performance.timeOrigin + performance.now();

interface AgentArgs {
  tls: string; state: string; collector: string; events: number; rate: number; chunk: number;
  batchEvents?: number; maxInFlight?: number; orderedSessions: boolean;
}

function parseArgs(argv: string[]): AgentArgs {
  const o: Record<string, string> = {};
  for (let i = 0; i < argv.length; i += 2) o[argv[i]!.replace(/^--/, '')] = argv[i + 1] ?? '';
  const need = (k: string) => {
    if (!o[k]) throw new Error(`ingest-agent: --${k} is required`);
    return o[k]!;
  };
  return {
    tls: need('tls'), state: need('state'), collector: need('collector'), events: Number(need('events')),
    rate: Number(o.rate ?? 0), chunk: Number(o.chunk ?? 256),
    batchEvents: o['batch-events'] ? Number(o['batch-events']) : undefined,
    maxInFlight: o['max-inflight'] ? Number(o['max-inflight']) : undefined,
    orderedSessions: o['ordered-sessions'] === '1',
  };
}

/** A UUIDv7-style id: 48 bits of milliseconds first, so ids sort by creation time. */
function timeOrderedUuid(): string {
  const hex = Date.now().toString(16).padStart(12, '0') + randomUUID().replace(/-/g, '').slice(12);
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-7${hex.slice(13, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

/** A CONNECTION_OPEN as the proxy emits it (agent/proxy/server.ts): process, CI job, endpoints. */
function makeDraft(agentId: string, i: number): EventDraft {
  const pid = 20_000 + (i % 5000);
  return {
    kind: EventKind.EVENT_KIND_CONNECTION_OPEN!,
    sessionId: opts.orderedSessions ? timeOrderedUuid() : randomUUID(),
    process: {
      pid, ppid: pid - 3, uid: 1001, user: 'runner', exe: '/usr/bin/curl',
      argv: ['curl', '-fsSL', '--retry', '3', `https://registry.npmjs.org/@types/node/-/node-20.${i % 50}.0.tgz`, '-o', '/tmp/pkg.tgz'],
      cwd: '/home/runner/work/webapp/webapp', cgroup: `/runguard.jobs/${agentId}-job-${i >> 12}`, cgroupId: 4242 + (i >> 12),
      comm: 'curl', tid: pid,
    },
    job: {
      provider: 'github', repository: 'acme/webapp', workflow: 'CI', runId: String(9_000_000_000 + (i >> 12)), runAttempt: '1',
      job: 'build-and-test', actor: 'octocat', ref: 'refs/heads/main', sha: '3f786850e387550fdab836ed7e6dc881de23001b',
      runner: `${agentId}-runner`, url: `https://github.com/acme/webapp/actions/runs/${9_000_000_000 + (i >> 12)}`,
      source: IdentitySource.IDENTITY_SOURCE_ENVIRONMENT!, sourcePid: pid - 40,
    },
    destination: { address: '104.16.27.34', port: 443, hostname: 'registry.npmjs.org' },
    source: { address: '10.1.0.4', port: 30_000 + (i % 30_000) },
    connectionOpen: { protocol: 'tls', ipFamily: 4, socketCookie: String(1_000_000 + i) },
  };
}

const opts = parseArgs(process.argv.slice(2));
// Warnings and errors go to stderr as usual; the first few are also handed to the parent.
const problems: Record<string, unknown>[] = [];
const log = pino({ level: 'warn', base: { component: 'bench-agent' } }, {
  write(line: string) {
    process.stderr.write(line);
    if (problems.length < 5) problems.push(JSON.parse(line) as Record<string, unknown>);
  },
});
const id = loadAgentIdentity(opts.tls);
const agentId = id.agentId;
const spool = await Spool.open({ dir: path.join(opts.state, 'spool'), agentId, maxBytes: 1 << 30, logger: log });

// The shipper calls spool.ackUpTo(lastSeq) on every acknowledged batch; observing that call gives
// exact ack times without touching the shipper (a 20 ms drain() poll would blur the last ack).
const acks: { seq: number; t: number }[] = [];
let onAllAcked: (() => void) | undefined;
const ackUpTo = spool.ackUpTo.bind(spool);
spool.ackUpTo = (seq: number) => {
  acks.push({ seq, t: now() });
  if (seq >= opts.events) onAllAcked?.();
  return ackUpTo(seq);
};

const shipper = new Shipper({
  spool, agentId, target: opts.collector, credentials: tlsClientCredentials(opts.tls), signingKey: id.signingKey,
  stateDir: opts.state, checkpointVerifier: loadCheckpointVerifier(opts.tls), log: log.child({ component: 'shipper' }),
  emit: () => {},
  batchEvents: opts.batchEvents, batchBytes: opts.batchEvents ? Math.max(1 << 20, opts.batchEvents * 2048) : undefined,
  maxInFlight: opts.maxInFlight,
});
shipper.start();

const stdinLines: string[] = [];
const stdinWaiters: ((l: string) => void)[] = [];
let stdinBuf = '';
process.stdin.on('data', (d: Buffer) => {
  stdinBuf += d;
  let i;
  while ((i = stdinBuf.indexOf('\n')) >= 0) {
    const line = stdinBuf.slice(0, i);
    stdinBuf = stdinBuf.slice(i + 1);
    const w = stdinWaiters.shift();
    if (w) w(line);
    else stdinLines.push(line);
  }
});
process.stdin.on('end', () => {
  for (const w of stdinWaiters.splice(0)) w('exit');
  stdinLines.push('exit');
});
const nextLine = () => new Promise<string>((resolve) => {
  const l = stdinLines.shift();
  if (l !== undefined) resolve(l);
  else stdinWaiters.push(resolve);
});
const say = (o: unknown) => process.stdout.write(JSON.stringify(o) + '\n');

say({ ready: true, agentId, pid: process.pid });
if ((await nextLine()) !== 'go') process.exit(0);

const allAcked = new Promise<void>((r) => (onAllAcked = r));
const cpu0 = process.cpuUsage();
const appendMs = opts.rate > 0 ? new Float64Array(opts.events + 1) : undefined;
const firstAppendMs = now();
let appended = 0;
if (opts.rate > 0) {
  // Paced: every 5 ms, append what is due by now, so the rate holds whatever the timer jitter.
  while (appended < opts.events) {
    const due = Math.min(opts.events, Math.floor(((now() - firstAppendMs) / 1000) * opts.rate) + 1);
    while (appended < due) {
      const { seq } = spool.append(makeDraft(agentId, appended));
      appendMs![seq] = now();
      appended++;
    }
    await new Promise((r) => setTimeout(r, 5));
  }
} else {
  while (appended < opts.events) {
    const end = Math.min(opts.events, appended + opts.chunk);
    for (; appended < end; appended++) spool.append(makeDraft(agentId, appended));
    await new Promise((r) => setImmediate(r));
  }
}
const lastAppendMs = now();
await allAcked;
const lastAckMs = acks.at(-1)!.t;
const cpu = process.cpuUsage(cpu0);

// Append -> durable ack latency per event (paced runs): the first ack whose lastSeq covers it.
let ackLatency: number[] | undefined;
if (appendMs) {
  ackLatency = [];
  let a = 0;
  for (let seq = 1; seq <= opts.events; seq++) {
    while (acks[a]!.seq < seq) a++;
    ackLatency.push(acks[a]!.t - appendMs[seq]!);
  }
}
const shipperState = JSON.parse(readFileSync(path.join(opts.state, 'shipper.json'), 'utf8')) as { ackedSeq: number; lastIndex: number };
say({
  done: true, agentId, events: opts.events, firstAppendMs, lastAppendMs, lastAckMs,
  cpuUs: cpu.user + cpu.system, batches: shipper.stats.batches,
  spool: spool.metrics, shipperState,
  appendMs: appendMs ? Array.from(appendMs.subarray(1)) : undefined, ackLatency,
});

await nextLine();
// Shipper.stop() once waited for the collector to hang up (fixed in 89b4e9f); it keeps a deadline
// here so that a stop that stalls again is counted by the parent rather than hanging the bench.
const stopped = await Promise.race([shipper.stop().then(() => true), new Promise<false>((r) => setTimeout(() => r(false), 1500))]);
say({
  exited: true, shipperStopReturned: stopped, witnessChecks: shipper.stats.witnessChecks, witnessFailures: shipper.stats.witnessFailures,
  reconnects: shipper.stats.reconnects, problems,
});
await spool.close();
process.exit(0);
