// The embedded store: one SQLite database in WAL mode with synchronous=FULL, so a batch is on disk
// before its ack leaves. Each append writes the leaves and every perfect Merkle node they complete
// (the tiles are read straight from the nodes table), so proofs never recompute the tree.
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { TreeBuilder, type NodeGetter } from '../merkle/index.js';
import { leafHash } from '../merkle/hash.js';
import type { AgentStatusMsg } from '../../proto/services.js';
import type {
  ActivityPoint, AgentRecord, AppendBatch, DecisionBucket, EventQuery, JobQuery, JobSummary, LogStore, SessionSummary, StoredAgentStatus, StoredCheckpoint, StoredLeaf,
} from './store.js';
import { JobRow, jobFromRow, jobWhere, migrate, Rollups } from './rollups.js';
import { eventPlanner, type EventPlanner, type PlanChoice, type PlanName } from './event-plan.js';
import { EventKind } from '../../proto/index.js';

const STATEMENT_KIND = EventKind.EVENT_KIND_STATEMENT!;
/** Leaves fetched by one statement in queryEvents' second step (a row at a time costs three times as much). */
const FETCH_CHUNK = 128;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS leaves (
  idx INTEGER PRIMARY KEY,
  agent_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  bytes BLOB NOT NULL,
  time_ms INTEGER NOT NULL,
  kind INTEGER NOT NULL,
  session_id TEXT NOT NULL,
  repository TEXT NOT NULL,
  workflow TEXT NOT NULL,
  run_id TEXT NOT NULL,
  job TEXT NOT NULL,
  actor TEXT NOT NULL,
  destination TEXT NOT NULL,
  decision TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS leaves_agent_seq ON leaves(agent_id, seq);
CREATE INDEX IF NOT EXISTS leaves_time ON leaves(time_ms);
CREATE INDEX IF NOT EXISTS leaves_kind_time ON leaves(kind, time_ms);
CREATE INDEX IF NOT EXISTS leaves_session ON leaves(session_id);
CREATE INDEX IF NOT EXISTS leaves_job ON leaves(repository, run_id, job);
CREATE TABLE IF NOT EXISTS nodes (
  level INTEGER NOT NULL,
  idx INTEGER NOT NULL,
  hash BLOB NOT NULL,
  PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (
  agent_id TEXT NOT NULL,
  last_seq INTEGER NOT NULL,
  signature BLOB NOT NULL,
  received_ms INTEGER NOT NULL,
  PRIMARY KEY (agent_id, last_seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS agents (
  agent_id TEXT PRIMARY KEY,
  signing_key BLOB NOT NULL,
  certificate TEXT NOT NULL,
  last_seq INTEGER NOT NULL,
  last_hash BLOB NOT NULL,
  last_index INTEGER NOT NULL,
  first_seen_ms INTEGER NOT NULL,
  last_seen_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS gaps (
  agent_id TEXT NOT NULL,
  from_seq INTEGER NOT NULL,
  to_seq INTEGER NOT NULL,
  at_index INTEGER NOT NULL,
  detected_ms INTEGER NOT NULL
);
-- Rollups for the dashboard, written in the same transaction as the leaves they count, so a list of
-- jobs or a chart of decisions never scans the log (it stays quick at millions of events).
CREATE TABLE IF NOT EXISTS jobs (
  key TEXT PRIMARY KEY,
  agent_id TEXT NOT NULL,
  provider TEXT NOT NULL,
  repository TEXT NOT NULL,
  workflow TEXT NOT NULL,
  run_id TEXT NOT NULL,
  job TEXT NOT NULL,
  actor TEXT NOT NULL,
  ref TEXT NOT NULL,
  sha TEXT NOT NULL,
  url TEXT NOT NULL,
  source INTEGER NOT NULL,
  first_ms INTEGER NOT NULL,
  last_ms INTEGER NOT NULL,
  events INTEGER NOT NULL,
  statements INTEGER NOT NULL,
  denied INTEGER NOT NULL,
  masked INTEGER NOT NULL,
  reviewed INTEGER NOT NULL,
  refused INTEGER NOT NULL,
  last_index INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_last ON jobs(last_ms);
-- A run id alone (the jobs list, and the events of a run: see event-plan.ts) is found without a scan.
CREATE INDEX IF NOT EXISTS jobs_run ON jobs(run_id);
CREATE TABLE IF NOT EXISTS decision_counts (
  minute INTEGER NOT NULL,
  action TEXT NOT NULL,
  n INTEGER NOT NULL,
  PRIMARY KEY (minute, action)
) WITHOUT ROWID;
-- The same counts per hour: a month's chart sums 720 hours rather than 43,200 minutes.
CREATE TABLE IF NOT EXISTS decision_hours (
  hour INTEGER NOT NULL,
  action TEXT NOT NULL,
  n INTEGER NOT NULL,
  PRIMARY KEY (hour, action)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
  size INTEGER PRIMARY KEY,
  root BLOB NOT NULL,
  note TEXT NOT NULL,
  time_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS agent_status (
  agent_id TEXT PRIMARY KEY,
  received_ms INTEGER NOT NULL,
  status TEXT NOT NULL
);
`;

interface AgentRow {
  agent_id: string; signing_key: Buffer; certificate: string; last_seq: number; last_hash: Buffer;
  last_index: number; last_seen_ms: number;
}

function agentFromRow(r: AgentRow): AgentRecord {
  return {
    agentId: r.agent_id, signingKey: r.signing_key, certificate: r.certificate, lastSeq: r.last_seq,
    lastHash: r.last_hash, lastIndex: r.last_index, lastSeenMs: r.last_seen_ms,
  };
}

interface LeafRow { idx: number; agent_id: string; seq: number; bytes: Buffer }
const leafFromRow = (r: LeafRow): StoredLeaf => ({ index: r.idx, agentId: r.agent_id, seq: r.seq, bytes: r.bytes });

export class SqliteStore implements LogStore {
  readonly db: Database.Database;
  private tree: TreeBuilder;
  private readonly stmt;
  private readonly planner: EventPlanner;

  /** `probe`: entries the query planner counts at most (event-plan.ts; tests use a small one). */
  static open(dataDir: string, opts: { readonly?: boolean; probe?: number } = {}): SqliteStore {
    if (!opts.readonly) mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    const file = path.join(dataDir, 'log.db');
    const db = new Database(file, { readonly: opts.readonly ?? false, fileMustExist: opts.readonly ?? false });
    return new SqliteStore(db, opts.readonly ?? false, opts.probe);
  }

  private constructor(db: Database.Database, readonly: boolean, probe?: number) {
    this.db = db;
    // Reads through a memory map instead of a read() per page: a third of the time for the scans the
    // dashboard cannot avoid (a rare value of an unindexed column, text search) and for self-verify.
    // Capped by SQLite's build (2 GiB here); beyond it, pages are read as before. The price: a read
    // error on the disk becomes SIGBUS and the collector dies instead of answering an error. Nothing
    // is lost by that (agents keep every event until the collector acknowledges it, and systemd
    // restarts it), and a disk that fails reads has lost the store's trust anyway.
    db.pragma(`mmap_size = ${2 ** 31}`);
    if (!readonly) {
      db.pragma('journal_mode = WAL');
      // FULL: the WAL is fsynced at every commit, so an acknowledged batch survives power loss.
      db.pragma('synchronous = FULL');
      db.exec(SCHEMA);
      migrate(db);
    }
    this.stmt = {
      insertLeaf: db.prepare(`INSERT INTO leaves (idx, agent_id, seq, bytes, time_ms, kind, session_id, repository, workflow, run_id, job, actor, destination, decision)
        VALUES (@idx, @agentId, @seq, @bytes, @timeMs, @kind, @sessionId, @repository, @workflow, @runId, @job, @actor, @destination, @decision)`),
      upsertJob: db.prepare(`INSERT INTO jobs (key, agent_id, provider, repository, workflow, run_id, job, actor, ref, sha, url, source,
          first_ms, last_ms, events, statements, denied, masked, reviewed, refused, last_index)
        VALUES (@key, @agentId, @provider, @repository, @workflow, @runId, @job, @actor, @ref, @sha, @url, @source,
          @firstMs, @lastMs, @events, @statements, @denied, @masked, @reviewed, @refused, @lastIndex)
        ON CONFLICT (key) DO UPDATE SET
          first_ms = MIN(first_ms, excluded.first_ms), last_ms = MAX(last_ms, excluded.last_ms),
          events = events + excluded.events, statements = statements + excluded.statements,
          denied = denied + excluded.denied, masked = masked + excluded.masked,
          reviewed = reviewed + excluded.reviewed, refused = refused + excluded.refused,
          last_index = MAX(last_index, excluded.last_index),
          provider = IIF(provider = '', excluded.provider, provider), workflow = IIF(workflow = '', excluded.workflow, workflow),
          actor = IIF(actor = '', excluded.actor, actor), ref = IIF(ref = '', excluded.ref, ref),
          sha = IIF(sha = '', excluded.sha, sha), url = IIF(url = '', excluded.url, url), source = MAX(source, excluded.source)`),
      countDecision: db.prepare(`INSERT INTO decision_counts (minute, action, n) VALUES (?, ?, ?)
        ON CONFLICT (minute, action) DO UPDATE SET n = n + excluded.n`),
      countDecisionHour: db.prepare(`INSERT INTO decision_hours (hour, action, n) VALUES (?, ?, ?)
        ON CONFLICT (hour, action) DO UPDATE SET n = n + excluded.n`),
      job: db.prepare('SELECT * FROM jobs WHERE key = ?'),
      insertNode: db.prepare('INSERT INTO nodes (level, idx, hash) VALUES (?, ?, ?)'),
      getNode: db.prepare('SELECT hash FROM nodes WHERE level = ? AND idx = ?').pluck(),
      size: db.prepare('SELECT COALESCE(MAX(idx) + 1, 0) FROM leaves').pluck(),
      agent: db.prepare('SELECT * FROM agents WHERE agent_id = ?'),
      agents: db.prepare('SELECT * FROM agents ORDER BY agent_id'),
      insertAgent: db.prepare(`INSERT INTO agents (agent_id, signing_key, certificate, last_seq, last_hash, last_index, first_seen_ms, last_seen_ms)
        VALUES (?, ?, ?, 0, ?, -1, ?, ?)`),
      updateAgent: db.prepare('UPDATE agents SET last_seq = ?, last_hash = ?, last_index = ?, last_seen_ms = ? WHERE agent_id = ?'),
      insertBatch: db.prepare('INSERT OR REPLACE INTO batches (agent_id, last_seq, signature, received_ms) VALUES (?, ?, ?, ?)'),
      insertGap: db.prepare('INSERT INTO gaps (agent_id, from_seq, to_seq, at_index, detected_ms) VALUES (?, ?, ?, ?, ?)'),
      indexOf: db.prepare('SELECT idx FROM leaves WHERE agent_id = ? AND seq = ?').pluck(),
      leaf: db.prepare('SELECT idx, agent_id, seq, bytes FROM leaves WHERE idx = ?'),
      leaves: db.prepare('SELECT idx, agent_id, seq, bytes FROM leaves WHERE idx >= ? AND idx < ? ORDER BY idx'),
      leavesAt: db.prepare(`SELECT idx, agent_id, seq, bytes FROM leaves WHERE idx IN (${Array(FETCH_CHUNK).fill('?').join(', ')})`),
      batches: db.prepare('SELECT last_seq AS lastSeq, signature FROM batches WHERE agent_id = ? ORDER BY last_seq'),
      gaps: db.prepare('SELECT agent_id AS agentId, from_seq AS fromSeq, to_seq AS toSeq, at_index AS atIndex, detected_ms AS detectedMs FROM gaps ORDER BY at_index'),
      latestCheckpoint: db.prepare('SELECT size, root, note, time_ms AS timeMs FROM checkpoints ORDER BY size DESC LIMIT 1'),
      saveCheckpoint: db.prepare('INSERT OR REPLACE INTO checkpoints (size, root, note, time_ms) VALUES (?, ?, ?, ?)'),
      // A store opened read-only (verify) on a database from before this table has none to read.
      saveAgentStatus: readonly ? undefined : db.prepare(`INSERT INTO agent_status (agent_id, received_ms, status) VALUES (?, ?, ?)
        ON CONFLICT (agent_id) DO UPDATE SET received_ms = excluded.received_ms, status = excluded.status`),
      agentStatuses: hasTable(db, 'agent_status') ? db.prepare('SELECT agent_id, received_ms, status FROM agent_status ORDER BY agent_id') : undefined,
    };
    this.planner = eventPlanner((sql) => this.cached(sql), probe);
    this.tree = new TreeBuilder();
    const size = this.stmt.size.get() as number;
    if (size > 0) this.tree = TreeBuilder.fromNodesSync(size, this.getNode);
  }

  size(): number {
    return this.tree.size;
  }

  readonly getNode = (level: number, index: number): Uint8Array => {
    const h = this.stmt.getNode.get(level, index) as Buffer | undefined;
    if (!h) throw new Error(`the store has no Merkle node at level ${level}, index ${index}: the tree tables are damaged`);
    return h;
  };

  root(): Uint8Array {
    return this.tree.root();
  }

  agent(agentId: string): AgentRecord | undefined {
    const r = this.stmt.agent.get(agentId) as AgentRow | undefined;
    return r && agentFromRow(r);
  }

  agents(): AgentRecord[] {
    return (this.stmt.agents.all() as AgentRow[]).map(agentFromRow);
  }

  registerAgent(agentId: string, signingKey: Buffer, certificate: string): AgentRecord {
    const existing = this.agent(agentId);
    if (existing) return existing;
    const now = Date.now();
    this.stmt.insertAgent.run(agentId, signingKey, certificate, Buffer.alloc(32), now, now);
    return this.agent(agentId)!;
  }

  appendBatch(batch: AppendBatch): { firstIndex: number; lastIndex: number } {
    const firstIndex = this.tree.size;
    const rollups = new Rollups();
    const run = this.db.transaction(() => {
      const tree = this.tree.clone();
      if (batch.gap) {
        this.stmt.insertGap.run(batch.agentId, batch.gap.fromSeq, batch.gap.toSeq, firstIndex, Date.now());
      }
      for (const leaf of batch.leaves) {
        const idx = tree.append(leafHash(leaf.bytes), (level, index, hash) => {
          this.stmt.insertNode.run(level, index, hash);
        });
        this.stmt.insertLeaf.run({ idx, agentId: batch.agentId, ...leaf });
        rollups.add(batch.agentId, idx, leaf);
      }
      rollups.write(this.stmt.upsertJob, this.stmt.countDecision, this.stmt.countDecisionHour);
      const last = batch.leaves[batch.leaves.length - 1]!;
      this.stmt.insertBatch.run(batch.agentId, last.seq, batch.tipSignature, Date.now());
      this.stmt.updateAgent.run(last.seq, last.hash, tree.size - 1, Date.now(), batch.agentId);
      return tree;
    });
    // Only a committed transaction moves the in-memory tree forward.
    this.tree = run();
    return { firstIndex, lastIndex: this.tree.size - 1 };
  }

  indexOf(agentId: string, seq: number): number | undefined {
    return this.stmt.indexOf.get(agentId, seq) as number | undefined;
  }

  leaf(index: number): StoredLeaf | undefined {
    const r = this.stmt.leaf.get(index) as LeafRow | undefined;
    return r && leafFromRow(r);
  }

  leaves(from: number, to: number): StoredLeaf[] {
    return (this.stmt.leaves.all(from, to) as LeafRow[]).map(leafFromRow);
  }

  batchSignatures(agentId: string): { lastSeq: number; signature: Buffer }[] {
    return this.stmt.batches.all(agentId) as { lastSeq: number; signature: Buffer }[];
  }

  gaps(): { agentId: string; fromSeq: number; toSeq: number; atIndex: number; detectedMs: number }[] {
    return this.stmt.gaps.all() as ReturnType<LogStore['gaps']>;
  }

  latestCheckpoint(): StoredCheckpoint | undefined {
    return this.stmt.latestCheckpoint.get() as StoredCheckpoint | undefined;
  }

  saveCheckpoint(cp: StoredCheckpoint): void {
    this.stmt.saveCheckpoint.run(cp.size, cp.root, cp.note, cp.timeMs);
  }

  /**
   * A page of events: first the indexes of the page by the plan event-plan.ts chooses, then the rows
   * of just those. `plan` forces one plan (tests compare them all with 'plain').
   */
  queryEvents(q: EventQuery, plan: PlanName = 'auto'): StoredLeaf[] {
    const choice = this.planner.choose(q, plan);
    if (!choice) throw new Error(`plan ${plan} does not apply to this query`);
    const idxs = this.cached(choice.sql).pluck().all(...choice.args) as number[];
    return this.leavesAt(idxs);
  }

  /** The leaves at these indexes, in this order: a fixed-size IN list per chunk (one statement, padded). */
  private leavesAt(idxs: number[]): StoredLeaf[] {
    const byIdx = new Map<number, LeafRow>();
    for (let i = 0; i < idxs.length; i += FETCH_CHUNK) {
      const chunk = idxs.slice(i, i + FETCH_CHUNK);
      while (chunk.length < FETCH_CHUNK) chunk.push(-1);
      for (const r of this.stmt.leavesAt.all(...chunk) as LeafRow[]) byIdx.set(r.idx, r);
    }
    return idxs.map((i) => leafFromRow(byIdx.get(i)!));
  }

  /** The plan queryEvents follows for a query (for tests and for looking into a slow page). */
  explainEvents(q: EventQuery): PlanChoice & { steps: string[] } {
    const choice = this.planner.choose(q)!;
    const steps = (this.db.prepare(`EXPLAIN QUERY PLAN ${choice.sql}`).all(...choice.args) as { detail: string }[]).map((r) => r.detail);
    return { ...choice, steps };
  }

  jobs(q: JobQuery): JobSummary[] {
    const where: string[] = [];
    const args: unknown[] = [];
    const eq = (col: string, v: string | undefined) => {
      if (v) {
        where.push(`${col} = ?`);
        args.push(v);
      }
    };
    eq('repository', q.repository);
    eq('workflow', q.workflow);
    eq('run_id', q.runId);
    eq('actor', q.actor);
    if (q.sinceMs !== undefined) { where.push('last_ms >= ?'); args.push(q.sinceMs); }
    if (q.untilMs !== undefined) { where.push('first_ms < ?'); args.push(q.untilMs); }
    if (q.beforeMs !== undefined) { where.push('last_ms < ?'); args.push(q.beforeMs); }
    if (q.flagged) where.push('(denied + reviewed + refused) > 0');
    const limit = Math.min(Math.max(q.limit ?? 100, 1), 1000);
    const sql = `SELECT * FROM jobs ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY last_ms DESC LIMIT ${limit}`;
    return (this.cached(sql).all(...args) as JobRow[]).map(jobFromRow);
  }

  job(key: string): JobSummary | undefined {
    const r = this.stmt.job.get(key) as JobRow | undefined;
    return r && jobFromRow(r);
  }

  jobSessions(key: string, limit: number): SessionSummary[] {
    const j = jobWhere(key);
    return this.cached(`SELECT session_id AS sessionId, MIN(time_ms) AS firstMs, MAX(time_ms) AS lastMs, MIN(idx) AS firstIndex,
        COUNT(*) AS events, SUM(kind = ${STATEMENT_KIND}) AS statements, SUM(decision IN ('deny', 'review', 'refused')) AS flagged,
        MAX(destination) AS destination
      FROM leaves WHERE ${j.sql} GROUP BY session_id ORDER BY firstIndex LIMIT ?`).all(...j.args, limit) as SessionSummary[];
  }

  jobActivity(key: string, limit: number): ActivityPoint[] {
    const j = jobWhere(key);
    const rows = this.cached(`SELECT idx AS "index", time_ms AS timeMs, kind, session_id AS sessionId, decision
      FROM leaves WHERE ${j.sql} ORDER BY idx DESC LIMIT ?`).all(...j.args, limit) as ActivityPoint[];
    return rows.reverse();
  }

  decisionCounts(sinceMs: number, untilMs: number, bucketMs: number): DecisionBucket[] {
    const minutes = Math.max(1, Math.round(bucketMs / 60_000));
    const m0 = Math.floor(sinceMs / 60_000);
    const m1 = Math.ceil(untilMs / 60_000);
    // Whole hours from the hourly counts, the minutes before the first and after the last from the
    // minute counts: the same sums as all minutes. An hour never straddles buckets of whole hours.
    const h0 = Math.ceil(m0 / 60);
    const h1 = Math.floor(m1 / 60);
    // Bound JS numbers are REAL in SQLite: cast, or the division is not integral.
    const rows = (minutes % 60 === 0 && h0 < h1
      ? this.cached(`SELECT b, action, SUM(n) AS n FROM (
          SELECT minute / CAST(@minutes AS INTEGER) AS b, action, n FROM decision_counts
            WHERE (minute >= @m0 AND minute < @h0 * 60) OR (minute >= @h1 * 60 AND minute < @m1)
          UNION ALL
          SELECT hour * 60 / CAST(@minutes AS INTEGER) AS b, action, n FROM decision_hours WHERE hour >= @h0 AND hour < @h1)
        GROUP BY b, action ORDER BY b`).all({ minutes, m0, m1, h0, h1 })
      : this.cached(`SELECT minute / CAST(? AS INTEGER) AS b, action, SUM(n) AS n FROM decision_counts
          WHERE minute >= ? AND minute < ? GROUP BY b, action ORDER BY b`).all(minutes, m0, m1)) as { b: number; action: string; n: number }[];
    const buckets = new Map<number, DecisionBucket>();
    for (const r of rows) {
      let bucket = buckets.get(r.b);
      if (!bucket) buckets.set(r.b, (bucket = { startMs: r.b * minutes * 60_000, counts: {} }));
      bucket.counts[r.action] = r.n;
    }
    return [...buckets.values()];
  }

  /** Jobs active since `sinceMs` (by their last event), and how many of them have a deny, review or refusal. */
  jobCounts(sinceMs: number): { active: number; flagged: number } {
    return this.cached(`SELECT count(*) AS active, COALESCE(SUM((denied + reviewed + refused) > 0), 0) AS flagged
      FROM jobs WHERE last_ms >= ?`).get(sinceMs) as { active: number; flagged: number };
  }

  /** Prepared statements for the dynamic queries, by SQL text (filters make a handful of shapes). */
  private readonly statements = new Map<string, Database.Statement>();
  private cached(sql: string): Database.Statement {
    let st = this.statements.get(sql);
    if (!st) {
      if (this.statements.size > 256) this.statements.clear();
      this.statements.set(sql, (st = this.db.prepare(sql)));
    }
    return st;
  }

  saveAgentStatus(agentId: string, status: AgentStatusMsg, receivedMs: number): void {
    if (!this.stmt.saveAgentStatus) throw new Error('the store is open read-only: agent statuses cannot be saved');
    this.stmt.saveAgentStatus.run(agentId, receivedMs, JSON.stringify(status));
  }

  agentStatuses(): StoredAgentStatus[] {
    const rows = (this.stmt.agentStatuses?.all() ?? []) as { agent_id: string; received_ms: number; status: string }[];
    return rows.map((r) => ({ agentId: r.agent_id, receivedMs: r.received_ms, status: JSON.parse(r.status) as AgentStatusMsg }));
  }

  close(): void {
    this.db.close();
  }
}

function hasTable(db: Database.Database, name: string): boolean {
  return db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").pluck().get(name) !== undefined;
}

export type { NodeGetter };
