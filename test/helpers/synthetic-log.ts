// A realistic log without running jobs: CI jobs with a process tree, a database session and
// statements (mostly allowed, some denied, masked or reviewed), encoded as real AuditEvents, chained
// and signed by an enrolled agent's key and appended through the collector's own Ingestor, so the
// result passes `runguard verify` like a real log. For the dashboard's scale benchmark (a million
// events) and for API tests that need many jobs.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Ingestor } from '../../collector/ingest.js';
import { ed25519Raw, loadAgentIdentity } from '../../collector/pki/identity.js';
import { SqliteStore } from '../../collector/store/sqlite.js';
import { eventHash, signBatchTip } from '../../proto/batch.js';
import { encodeEvent, EventKind, IdentitySource } from '../../proto/index.js';

export interface SeedOptions {
  dataDir: string;
  agentDir: string;
  events: number;
  /** Statements per job; a job also has ~8 process and connection events. */
  statementsPerJob?: number;
  /** Events are spread evenly over [nowMs - spanMs, nowMs]. */
  spanMs?: number;
  nowMs?: number;
  onProgress?: (done: number) => void;
}

const TABLES = ['users', 'orders', 'invoices', 'payments', 'sessions', 'audit_log'];

export function seedLog(opts: SeedOptions): { jobs: number; events: number } {
  const id = loadAgentIdentity(opts.agentDir);
  const store = SqliteStore.open(opts.dataDir);
  const ingestor = new Ingestor(store);
  const peer = { agentId: id.agentId, signingKey: ed25519Raw(id.publicKey), certificate: readFileSync(path.join(opts.agentDir, 'agent.crt'), 'utf8') };
  const known = store.agent(id.agentId);
  let seq = known?.lastSeq ?? 0;
  let prev = known?.lastHash ?? Buffer.alloc(32);
  const perJob = opts.statementsPerJob ?? 40;
  const now = opts.nowMs ?? Date.now();
  const span = opts.spanMs ?? 7 * 24 * 3600_000;
  const step = span / opts.events;
  let batch: Buffer[] = [];
  let written = 0;
  let jobs = 0;

  const flush = () => {
    if (!batch.length) return;
    const firstSeq = seq - batch.length + 1;
    const ack = ingestor.handle(peer, { agentId: id.agentId, firstSeq, events: batch, tipSignature: signBatchTip(id.signingKey, id.agentId, seq, prev) });
    if (ack.error) throw new Error(`seed batch rejected: ${ack.error}`);
    written += batch.length;
    batch = [];
    opts.onProgress?.(written);
  };
  const emit = (ev: Record<string, unknown>) => {
    seq++;
    const t = now - span + (seq - 1 - (known?.lastSeq ?? 0)) * step;
    const bytes = Buffer.from(encodeEvent({ ...ev, agentId: id.agentId, seq, prevHash: prev, time: { seconds: Math.floor(t / 1000), nanos: Math.floor(t % 1000) * 1e6 } }));
    prev = eventHash(bytes);
    batch.push(bytes);
    if (batch.length === 2048) flush();
  };

  while (written + batch.length < opts.events) {
    jobs++;
    const run = 1_000_000 + jobs;
    const repo = `acme/service-${jobs % 17}`;
    const job = {
      provider: 'github', repository: repo, workflow: jobs % 3 ? 'deploy' : 'migrate', runId: String(run), runAttempt: '1',
      job: jobs % 2 ? 'db-migrate' : 'release', actor: ['dependabot', 'alice-ci', 'release-bot', 'bob'][jobs % 4], ref: 'refs/heads/main',
      sha: (run * 2654435761).toString(16).padStart(40, '0').slice(0, 40), url: `https://github.com/${repo}/actions/runs/${run}`,
      source: IdentitySource.IDENTITY_SOURCE_RUNNER_HOOK,
    };
    const shell = { pid: 10_000 + (jobs % 50_000), ppid: 1, uid: 1001, user: 'runner', exe: '/usr/bin/bash', argv: ['bash', '-e', 'migrate.sh'], cgroup: `/runguard.jobs/job-${run}`, comm: 'bash' };
    const psql = { ...shell, pid: shell.pid + 1, ppid: shell.pid, exe: '/usr/lib/postgresql/15/bin/psql', argv: ['psql', '-h', 'db.internal', '-f', 'migrate.sql'], comm: 'psql' };
    const cg = `cgroup-${run}`;
    const session = `0190${run.toString(16).padStart(8, '0')}-0000-7000-8000-${jobs.toString(16).padStart(12, '0')}`;
    const dest = { address: '127.0.0.2', port: 5432 };
    emit({ kind: EventKind.EVENT_KIND_PROCESS_EXEC, sessionId: cg, process: shell, job, exec: { filename: shell.exe } });
    emit({ kind: EventKind.EVENT_KIND_PROCESS_EXEC, sessionId: cg, process: psql, job, exec: { filename: psql.exe } });
    emit({ kind: EventKind.EVENT_KIND_CONNECTION_OPEN, sessionId: session, process: psql, job, destination: dest, connectionOpen: { protocol: 'postgres', ipFamily: 4 } });
    emit({ kind: EventKind.EVENT_KIND_DB_SESSION_START, sessionId: session, process: psql, job, destination: dest, dbSession: { protocol: 'postgres', database: 'app', user: 'migrator', application: 'psql', auth: 'scram-sha-256' } });
    for (let i = 0; i < perJob && written + batch.length < opts.events; i++) {
      const table = TABLES[(jobs + i) % TABLES.length]!;
      const r = (jobs * 31 + i * 7) % 100;
      const [type, text, action, rule] = r < 2 ? ['DROP TABLE', `DROP TABLE ${table}`, 'deny', 'no-drop-table']
        : r < 4 ? ['ALTER TABLE', `ALTER TABLE ${table} ADD COLUMN note text`, 'review', 'review-alter-table']
          : r < 12 ? ['SELECT', `SELECT id, email FROM ${table} WHERE id = $1`, 'mask', 'mask-pii']
            : r < 40 ? ['INSERT', `INSERT INTO ${table} (id, name) VALUES ($1, $2)`, 'allow', 'default']
              : ['SELECT', `SELECT count(*) FROM ${table} WHERE created_at > now() - interval '1 day'`, 'allow', 'default'];
      emit({
        kind: EventKind.EVENT_KIND_STATEMENT, sessionId: session, requestId: `${session}/${i + 1}`, process: psql, job, destination: dest,
        statement: {
          protocol: 'postgres', text, type, objects: [table], decision: { action, rule, outcome: action === 'review' ? 'approved' : '' },
          rows: action === 'deny' ? 0 : 1, commandTag: action === 'deny' ? '' : `${type.split(' ')[0]} 1`, durationUs: 150 + (i % 50),
          errorCode: action === 'deny' ? '42501' : '', error: action === 'deny' ? `runguard: denied by rule ${rule}` : '', maskedValues: action === 'mask' ? 1 : 0,
          database: 'app', user: 'migrator',
        },
      });
    }
    emit({ kind: EventKind.EVENT_KIND_CONNECTION_CLOSE, sessionId: session, process: psql, job, destination: dest, connectionClose: { protocol: 'postgres', bytesUp: 4096, bytesDown: 65536, durationMs: 900, reason: 'client_closed' } });
    emit({ kind: EventKind.EVENT_KIND_PROCESS_EXIT, sessionId: cg, process: psql, job, exit: { exitCode: 0 } });
    emit({ kind: EventKind.EVENT_KIND_PROCESS_EXIT, sessionId: cg, process: shell, job, exit: { exitCode: 0 } });
  }
  flush();
  store.close();
  return { jobs, events: written };
}
