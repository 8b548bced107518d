// A fleet's log without running jobs: many runner hosts (each an enrolled agent with its own key and
// chain), repositories, workflows, actors and targets drawn from skewed (Zipf) distributions with a
// long tail of rare values, and per job a process tree, connections (some refused), database, SSH
// and HTTP sessions with statements decided allow / mask / deny / review (review with its approval
// request and outcome). Events are real AuditEvents, chained and batch-signed per agent and appended
// through the collector's own Ingestor, so the store passes `runguard verify`.
//
// Agents ship in batches, so the leaves of different agents interleave; one rare agent ships so
// seldom that its events land far from their time (a host that was offline), as real logs have.
// Deterministic for a given seed. For the dashboard benchmark (bench/dashboard.ts, a million events)
// and for tests that need a varied log.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { pino } from 'pino';
import { Ingestor, type AgentPeer } from '../../collector/ingest.js';
import { ApprovalRegistry } from '../../collector/approvals/registry.js';
import { enroll } from '../../collector/pki/ca.js';
import { ed25519Raw, loadAgentIdentity } from '../../collector/pki/identity.js';
import { SqliteStore } from '../../collector/store/sqlite.js';
import { eventHash, signBatchTip } from '../../proto/batch.js';
import { encodeEvent, EventKind, IdentitySource } from '../../proto/index.js';
import type { KeyObject } from 'node:crypto';

export interface FleetOptions {
  dataDir: string;
  /** A CA from `ca init` (caInit): the agents are enrolled with it under agentsDir. */
  caDir: string;
  agentsDir: string;
  events: number;
  /** Runner hosts besides the rare one; default 12. */
  agents?: number;
  /** Events span [nowMs - spanMs, nowMs]; default 30 days. */
  spanMs?: number;
  nowMs?: number;
  /** Events per shipped batch (the agent's shipper sends up to 512). */
  batchEvents?: number;
  seed?: number;
  onProgress?: (done: number) => void;
}

/** A common and a rare value of a filter, with how many events carry each. */
export interface Pick { common: string; commonEvents: number; rare: string; rareEvents: number }

export interface FleetSeed {
  events: number;
  jobs: number;
  agents: string[];
  nowMs: number;
  spanMs: number;
  picks: { repository: Pick; workflow: Pick; actor: Pick; agent: Pick; target: Pick; run: Pick; jobKey: Pick };
  /** A session with many events. */
  bigSession: string;
}

/** mulberry32: small, fast, deterministic. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Draws index i of n with weight 1/(i+1)^s. */
function zipf(n: number, s: number, rnd: () => number): () => number {
  const cum: number[] = [];
  let total = 0;
  for (let i = 0; i < n; i++) cum.push((total += 1 / (i + 1) ** s));
  return () => {
    const x = rnd() * total;
    let lo = 0;
    let hi = n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cum[mid]! < x) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
}

const WORDS = ['payments', 'billing', 'ledger', 'identity', 'search', 'catalog', 'orders', 'shipping', 'notify', 'reports', 'gateway', 'inventory',
  'pricing', 'auth', 'profile', 'metrics', 'export', 'import', 'scheduler', 'webhooks'];
const ORGS = ['acme', 'acme-infra', 'acme-data', 'platform', 'labs'];
const WORKFLOWS = ['ci', 'deploy', 'migrate', 'nightly', 'release', 'backfill', 'db-maintenance', 'security-scan', 'rotate-keys', 'incident-hotfix'];
const JOB_NAMES = ['build', 'test', 'migrate', 'deploy', 'smoke', 'seed-db', 'cleanup'];
const BOTS = ['dependabot[bot]', 'renovate[bot]', 'release-bot', 'deploy-bot'];
const TABLES = ['users', 'orders', 'invoices', 'payments', 'sessions', 'audit_log', 'accounts', 'ledger_entries', 'refunds', 'api_keys'];
const TOOLS: [string, string[]][] = [
  ['/usr/bin/git', ['git', 'fetch', '--depth=1', 'origin']], ['/usr/bin/npm', ['npm', 'ci']], ['/usr/bin/make', ['make', 'release']],
  ['/usr/local/bin/terraform', ['terraform', 'apply', '-auto-approve']], ['/usr/bin/docker', ['docker', 'build', '-t', 'app', '.']],
  ['/usr/bin/python3', ['python3', 'scripts/backfill.py', '--batch', '500']],
];

interface Target { address: string; port: number; protocol: 'postgres' | 'mysql' | 'ssh' | 'http' | 'k8s' | 'tcp' }

function targets(): Target[] {
  const out: Target[] = [];
  for (let i = 0; i < 60; i++) {
    const address = `127.0.${2 + (i >> 4)}.${2 + (i & 15)}`;
    const r = i % 10;
    const [port, protocol]: [number, Target['protocol']] = r < 4 ? [5432, 'postgres'] : r < 6 ? [3306, 'mysql'] : r === 6 ? [22, 'ssh'] : r === 7 ? [6443, 'k8s'] : r === 8 ? [443, 'http'] : [6379, 'tcp'];
    out.push({ address, port, protocol });
  }
  return out;
}

interface AgentState {
  id: string; key: KeyObject; peer: AgentPeer; seq: number; prev: Buffer; batch: Buffer[]; lastMs: number;
}

function bump(m: Map<string, number>, k: string): void {
  m.set(k, (m.get(k) ?? 0) + 1);
}

/** The most common value and a rare one (the least common of those with at least `min` events). */
function pick(m: Map<string, number>, min = 5): Pick {
  const sorted = [...m].filter(([k]) => k !== '').sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  const rare = [...sorted].reverse().find(([, n]) => n >= min) ?? sorted[sorted.length - 1]!;
  return { common: sorted[0]![0], commonEvents: sorted[0]![1], rare: rare[0], rareEvents: rare[1] };
}

export async function seedFleet(opts: FleetOptions): Promise<FleetSeed> {
  const rnd = prng(opts.seed ?? 1);
  const nAgents = opts.agents ?? 12;
  const span = opts.spanMs ?? 30 * 24 * 3600_000;
  const now = opts.nowMs ?? Date.now();
  const batchEvents = opts.batchEvents ?? 512;
  const store = SqliteStore.open(opts.dataDir);
  const ingestor = new Ingestor(store);
  const log = pino({ level: 'silent' });

  const agentIds = [...Array.from({ length: nAgents }, (_, i) => `runner-${String(i).padStart(2, '0')}`), 'runner-spare'];
  const agents: AgentState[] = [];
  for (const id of agentIds) {
    const dir = path.join(opts.agentsDir, id);
    if (!existsSync(path.join(dir, 'agent.crt'))) await enroll({ caDir: opts.caDir, agentId: id, outDir: dir });
    const ident = loadAgentIdentity(dir);
    const known = store.agent(id);
    agents.push({
      id, key: ident.signingKey, seq: known?.lastSeq ?? 0, prev: known?.lastHash ?? Buffer.alloc(32), batch: [], lastMs: 0,
      peer: { agentId: id, signingKey: ed25519Raw(ident.publicKey), certificate: readFileSync(path.join(dir, 'agent.crt'), 'utf8') },
    });
  }

  const repos = Array.from({ length: 400 }, (_, i) => `${ORGS[i % ORGS.length]}/${WORDS[i % WORDS.length]}-${Math.floor(i / WORDS.length) || 'svc'}`);
  const actors = [...BOTS, ...Array.from({ length: 150 }, (_, i) => `dev-${i.toString(36)}`)];
  const tgts = targets();
  const drawAgent = zipf(nAgents, 0.8, rnd);
  const drawRepo = zipf(repos.length, 1.1, rnd);
  const drawWorkflow = zipf(WORKFLOWS.length, 1.3, rnd);
  const drawActor = zipf(actors.length, 1.2, rnd);
  const drawTarget = zipf(tgts.length, 1.1, rnd);
  const drawTable = zipf(TABLES.length, 1, rnd);

  const counts = { repository: new Map<string, number>(), workflow: new Map<string, number>(), actor: new Map<string, number>(), agent: new Map<string, number>(), target: new Map<string, number>(), run: new Map<string, number>(), jobKey: new Map<string, number>() };
  const sessions = new Map<string, number>();
  let emitted = 0;
  let written = 0;
  let jobs = 0;
  let runNo = 0;

  const flush = (a: AgentState) => {
    if (!a.batch.length) return;
    const firstSeq = a.seq - a.batch.length + 1;
    const ack = ingestor.handle(a.peer, { agentId: a.id, firstSeq, events: a.batch, tipSignature: signBatchTip(a.key, a.id, a.seq, a.prev) });
    if (ack.error) throw new Error(`seed batch of ${a.id} rejected: ${ack.error}`);
    written += a.batch.length;
    a.batch = [];
    opts.onProgress?.(written);
  };
  const emit = (a: AgentState, ev: Record<string, unknown>) => {
    a.seq++;
    // Time runs with the fleet's output; an agent's own events never go back in time.
    const t = Math.max(a.lastMs, Math.min(now, Math.floor(now - span + (span * emitted) / opts.events)));
    a.lastMs = t;
    emitted++;
    const bytes = Buffer.from(encodeEvent({ ...ev, agentId: a.id, seq: a.seq, prevHash: a.prev, time: { seconds: Math.floor(t / 1000), nanos: (t % 1000) * 1e6 } }));
    a.prev = eventHash(bytes);
    a.batch.push(bytes);
    bump(counts.agent, a.id);
    const job = ev.job as { repository: string; workflow: string; runId: string; job: string; actor: string } | undefined;
    if (job) {
      bump(counts.repository, job.repository);
      bump(counts.workflow, job.workflow);
      bump(counts.actor, job.actor);
      bump(counts.run, job.runId);
      bump(counts.jobKey, `${job.repository}|${job.runId}|${job.job}`);
    }
    const dest = ev.destination as { address: string; port: number } | undefined;
    if (dest) bump(counts.target, `${dest.address}:${dest.port}`);
    if (ev.sessionId && ev.kind === EventKind.EVENT_KIND_STATEMENT) bump(sessions, ev.sessionId as string);
    if (a.batch.length >= batchEvents) flush(a);
  };
  const full = () => emitted >= opts.events;

  for (const a of agents) emit(a, { kind: EventKind.EVENT_KIND_AGENT_START, agent: { version: '0.1.0', bpfStatus: 'attached', watchedCgroups: ['/runguard.jobs'], failOpen: false } });

  while (!full()) {
    runNo++;
    // One job in a thousand runs on the spare host, which ships rarely.
    const a = rnd() < 0.001 ? agents[agents.length - 1]! : agents[drawAgent()]!;
    const repository = repos[drawRepo()]!;
    // Besides the long tails, a few values that almost never occur: a break-glass workflow, outside actors.
    const workflow = rnd() < 0.0005 ? 'break-glass' : WORKFLOWS[drawWorkflow()]!;
    const actor = rnd() < 0.0005 ? `contractor-${Math.floor(rnd() * 5)}` : actors[drawActor()]!;
    const runId = String(9_000_000_000 + runNo * 7);
    const r = rnd();
    const provider = r < 0.85 ? 'github' : r < 0.97 ? 'gitlab' : 'buildkite';
    const jobsInRun = 1 + Math.floor(rnd() * rnd() * 4);
    for (let j = 0; j < jobsInRun && !full(); j++) {
      jobs++;
      const jobName = JOB_NAMES[(runNo + j) % JOB_NAMES.length]!;
      const sha = (BigInt(runNo) * 0x9e3779b97f4a7c15n).toString(16).padStart(40, '0').slice(-40);
      const job = {
        provider, repository, workflow, runId, runAttempt: rnd() < 0.05 ? '2' : '1', job: jobName, actor, ref: rnd() < 0.8 ? 'refs/heads/main' : `refs/pull/${runNo % 5000}/merge`,
        sha, runner: a.id, url: `https://github.com/${repository}/actions/runs/${runId}`, source: rnd() < 0.7 ? IdentitySource.IDENTITY_SOURCE_RUNNER_HOOK : IdentitySource.IDENTITY_SOURCE_ENVIRONMENT,
      };
      const cgroup = `/runguard.jobs/${a.id}-${runId}-${j}`;
      const scope = `cg-${runId}-${j}`;
      const basePid = 20_000 + Math.floor(rnd() * 30_000);
      const shell = { pid: basePid, ppid: 1, uid: 1001, user: 'runner', exe: '/usr/bin/bash', argv: ['bash', '-e', `.ci/${jobName}.sh`], cwd: `/home/runner/work/${repository}`, cgroup, comm: 'bash' };
      const procs = [shell];
      emit(a, { kind: EventKind.EVENT_KIND_PROCESS_EXEC, sessionId: scope, process: shell, job, exec: { filename: shell.exe } });
      const tools = 1 + Math.floor(rnd() * 4);
      for (let t = 0; t < tools && !full(); t++) {
        const [exe, argv] = TOOLS[Math.floor(rnd() * TOOLS.length)]!;
        const p = { ...shell, pid: basePid + 1 + t, ppid: basePid, exe, argv, comm: path.basename(exe).slice(0, 15) };
        procs.push(p);
        emit(a, { kind: EventKind.EVENT_KIND_PROCESS_EXEC, sessionId: scope, process: p, job, exec: { filename: exe } });
      }
      const conns = 1 + Math.floor(rnd() * rnd() * 5);
      for (let c = 0; c < conns && !full(); c++) {
        const tg = tgts[drawTarget()]!;
        const client = tg.protocol === 'postgres' ? ['/usr/bin/psql', ['psql', '-h', tg.address, '-f', 'migrate.sql']]
          : tg.protocol === 'mysql' ? ['/usr/bin/mysql', ['mysql', '-h', tg.address, 'app']]
            : tg.protocol === 'ssh' ? ['/usr/bin/ssh', ['ssh', `deploy@${tg.address}`, 'systemctl restart app']]
              : tg.protocol === 'k8s' ? ['/usr/local/bin/kubectl', ['kubectl', 'rollout', 'restart', 'deploy/app']]
                : ['/usr/bin/curl', ['curl', '-fsS', `https://${tg.address}/healthz`]];
        const p = { ...shell, pid: basePid + 10 + c, ppid: basePid, exe: client[0] as string, argv: client[1] as string[], comm: path.basename(client[0] as string) };
        procs.push(p);
        emit(a, { kind: EventKind.EVENT_KIND_PROCESS_EXEC, sessionId: scope, process: p, job, exec: { filename: p.exe } });
        const session = `0190${(runNo * 16 + c).toString(16).padStart(8, '0')}-${j.toString(16).padStart(4, '0')}-7000-8000-${(jobs * 8 + c).toString(16).padStart(12, '0')}`;
        const destination = { address: tg.address, port: tg.port };
        const source = { address: '10.0.0.5', port: 40_000 + ((jobs + c) % 20_000) };
        if (rnd() < 0.003) {
          emit(a, { kind: EventKind.EVENT_KIND_CONNECTION_REFUSED, sessionId: session, process: p, job, destination, source, connectionRefused: { reason: 'policy', error: `target ${tg.address}:${tg.port} is not allowed for ${repository}` } });
          continue;
        }
        emit(a, { kind: EventKind.EVENT_KIND_CONNECTION_OPEN, sessionId: session, process: p, job, destination, source, connectionOpen: { protocol: tg.protocol, ipFamily: 4, socketCookie: jobs * 8 + c } });
        if (tg.protocol === 'postgres' || tg.protocol === 'mysql') {
          emit(a, { kind: EventKind.EVENT_KIND_DB_SESSION_START, sessionId: session, process: p, job, destination, dbSession: { protocol: tg.protocol, database: 'app', user: 'migrator', application: p.comm, auth: 'scram-sha-256' } });
        }
        // Most sessions say little; some say a lot (a migration, a backfill).
        const statements = tg.protocol === 'tcp' ? 0 : rnd() < 0.5 ? Math.floor(rnd() * 4) : Math.floor(-Math.log(1 - rnd()) * 45);
        for (let i = 0; i < statements && !full(); i++) {
          const table = TABLES[drawTable()]!;
          const x = rnd();
          const action = x < 0.015 ? 'deny' : x < 0.02 ? 'review' : x < 0.09 ? 'mask' : 'allow';
          const [type, text, rule] = operation(tg.protocol, action, table, i);
          const requestId = `${session}/${i + 1}`;
          let outcome = '';
          if (action === 'review') {
            const approvalId = `ap-${(runNo * 100 + i).toString(16)}`;
            outcome = rnd() < 0.8 ? 'approved' : 'denied';
            emit(a, { kind: EventKind.EVENT_KIND_APPROVAL_REQUESTED, sessionId: session, requestId, process: p, job, destination, approvalRequested: { approvalId, protocol: tg.protocol, operationType: type, text, objects: [table], rule, approvers: 'dba', approvals: 1, timeoutMs: 900_000 } });
            emit(a, { kind: EventKind.EVENT_KIND_APPROVAL_DECIDED, sessionId: session, requestId, process: p, job, destination, approvalDecided: { approvalId, outcome, approvers: ['dana'], reason: outcome === 'denied' ? 'not during business hours' : '', waitedMs: 30_000 + Math.floor(rnd() * 600_000), rule } });
          }
          const blocked = action === 'deny' || outcome === 'denied';
          emit(a, {
            kind: EventKind.EVENT_KIND_STATEMENT, sessionId: session, requestId, process: p, job, destination,
            statement: {
              protocol: tg.protocol, text, type, objects: [table], decision: { action, rule, outcome }, rows: blocked ? 0 : 1 + Math.floor(rnd() * 100),
              commandTag: blocked ? '' : `${type.split(' ')[0]} 1`, durationUs: 100 + Math.floor(rnd() * 5000), errorCode: blocked ? '42501' : '',
              error: blocked ? `runguard: denied by rule ${rule}` : '', maskedValues: action === 'mask' ? 1 + Math.floor(rnd() * 20) : 0, database: 'app', user: 'migrator',
            },
          });
        }
        emit(a, { kind: EventKind.EVENT_KIND_CONNECTION_CLOSE, sessionId: session, process: p, job, destination, connectionClose: { protocol: tg.protocol, bytesUp: 512 + statements * 200, bytesDown: 4096 + statements * 900, durationMs: 50 + statements * 20, reason: 'client_closed' } });
      }
      for (const p of procs.reverse()) {
        if (full()) break;
        emit(a, { kind: EventKind.EVENT_KIND_PROCESS_EXIT, sessionId: scope, process: p, job, exit: { exitCode: rnd() < 0.03 ? 1 : 0 } });
      }
    }
    // Now and then a host says something about itself (no job, no session).
    if (rnd() < 0.002 && !full()) emit(a, { kind: EventKind.EVENT_KIND_AGENT_NOTICE, notice: { level: 'warn', code: 'exec_events_lost', message: '3 exec/exit events did not fit the ring buffer' } });
  }
  for (const a of agents) flush(a);

  // Operational state the dashboard shows beside the log: heartbeats and a few pending approvals.
  for (const a of agents) {
    store.saveAgentStatus(a.id, {
      agentId: a.id, version: '0.1.0', sentMs: now, startedMs: now - span, uptimeMs: span, stopping: false,
      bpf: { state: 'attached', programs: ['connect4', 'connect6', 'sockops', 'getpeername4', 'getpeername6'], links: 5, watchedCgroups: 1, failOpen: false, execEventsLost: 0, error: '' },
      proxy: { port: 15001, activeSessions: 3, acceptedSessions: 1000, refusedConnections: 2 },
      spool: { backlogEvents: 0, backlogBytes: 0, oldestUnackedAgeMs: 0, bytes: 1 << 20, maxBytes: 1 << 30, state: 'ok', refusing: false, reason: '', lastSeq: a.seq, ackedSeq: a.seq },
      shipper: { connected: true, lastAckMs: now, lastError: '', lastErrorMs: 0, reconnects: 0, batches: Math.ceil(a.seq / batchEvents) },
      witness: { checkpointSize: written, lastCheckMs: now, lastCheckOk: true, lastProblem: '', lastFailureMs: 0, checks: 100, failures: 0 },
    }, now);
  }
  const approvals = new ApprovalRegistry(store.db, log);
  for (let i = 0; i < 5; i++) {
    const id = `ap-seed-${(opts.seed ?? 1).toString(16)}-${i}`;
    if (approvals.get(id)) continue;
    approvals.open(agents[i % nAgents]!.id, {
      requestId: id, agentId: agents[i % nAgents]!.id, sessionId: '', job: { repository: repos[i]!, workflow: 'migrate', runId: '1', job: 'migrate', actor: 'dev-1' },
      process: null, target: { address: '127.0.0.2', port: 5432, hostname: '' }, protocol: 'postgres',
      operation: { type: 'ALTER TABLE', text: 'ALTER TABLE users ADD COLUMN note text', objects: ['users'], database: 'app', user: 'migrator' },
      rule: 'review-alter-table', ruleReason: 'schema changes need a DBA', approvers: 'dba', approvals: 1, timeoutMs: 24 * 3600_000,
    });
  }
  approvals.close();
  store.close();

  const bigSession = [...sessions].sort((x, y) => y[1] - x[1])[0]?.[0] ?? '';
  return {
    events: written, jobs, agents: agentIds, nowMs: now, spanMs: span, bigSession,
    picks: {
      repository: pick(counts.repository), workflow: pick(counts.workflow, 1), actor: pick(counts.actor), agent: pick(counts.agent, 1),
      target: pick(counts.target), run: pick(counts.run), jobKey: pick(counts.jobKey),
    },
  };
}

function operation(protocol: Target['protocol'], action: string, table: string, i: number): [string, string, string] {
  if (protocol === 'ssh') {
    return action === 'deny' ? ['exec', `rm -rf /var/lib/${table}`, 'no-rm-rf'] : action === 'review' ? ['exec', `systemctl stop ${table}-worker`, 'review-service-stop']
      : ['exec', `journalctl -u ${table}-worker -n ${50 + i}`, 'default'];
  }
  if (protocol === 'k8s') {
    return action === 'deny' ? ['delete', `delete namespaces/${table}`, 'no-namespace-delete'] : action === 'review' ? ['patch', `patch deployments/${table}`, 'review-deploy-patch']
      : action === 'mask' ? ['get', `get secrets/${table}-credentials`, 'mask-secrets'] : ['get', `get pods -l app=${table}`, 'default'];
  }
  if (protocol === 'http') {
    return action === 'deny' ? ['DELETE', `DELETE /api/v1/${table}`, 'no-bulk-delete'] : action === 'review' ? ['POST', `POST /api/v1/${table}/migrate`, 'review-migrations']
      : action === 'mask' ? ['GET', `GET /api/v1/${table}/export`, 'mask-pii'] : ['GET', `GET /api/v1/${table}?page=${i}`, 'default'];
  }
  return action === 'deny' ? ['DROP TABLE', `DROP TABLE ${table}`, 'no-drop-table']
    : action === 'review' ? ['ALTER TABLE', `ALTER TABLE ${table} ADD COLUMN note_${i % 7} text`, 'review-alter-table']
      : action === 'mask' ? ['SELECT', `SELECT id, email, phone FROM ${table} WHERE id = $1`, 'mask-pii']
        : i % 3 ? ['INSERT', `INSERT INTO ${table} (id, name, created_at) VALUES ($1, $2, now())`, 'default']
          : ['SELECT', `SELECT count(*) FROM ${table} WHERE created_at > now() - interval '1 day'`, 'default'];
}
