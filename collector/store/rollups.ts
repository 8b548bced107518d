// The dashboard's rollups (jobs, decisions per minute): accumulated per batch in memory and written
// with one upsert per job and per (minute, action), inside the batch's own transaction. Also the
// schema migration that adds them to a store written before they existed.
import type Database from 'better-sqlite3';
import { decodeLeafFields } from './leaf-fields.js';
import type { JobSummary, LeafInput } from './store.js';

/** Bumped whenever what the rollups count changes: the store rebuilds them on open. */
const ROLLUP_VERSION = '2';

/** Events of a job share this key; events with no CI identity are grouped per agent. */
export function jobKey(agentId: string, repository: string, runId: string, job: string): string {
  return repository || runId || job ? `${repository}|${runId}|${job}` : `agent:${agentId}`;
}

/** The leaves of a job key, as a WHERE clause over the leaves_job index. */
export function jobWhere(key: string): { sql: string; args: string[] } {
  if (key.startsWith('agent:')) {
    return { sql: "repository = '' AND run_id = '' AND job = '' AND agent_id = ?", args: [key.slice(6)] };
  }
  // Repository names and run ids hold no "|"; a job name may, so it takes the rest.
  const a = key.indexOf('|');
  const b = a < 0 ? -1 : key.indexOf('|', a + 1);
  if (b < 0) return { sql: '0', args: [] };
  return { sql: 'repository = ? AND run_id = ? AND job = ?', args: [key.slice(0, a), key.slice(a + 1, b), key.slice(b + 1)] };
}

type Counted = Pick<LeafInput, 'timeMs' | 'kind' | 'sessionId' | 'repository' | 'workflow' | 'runId' | 'job' | 'actor' | 'decision' | 'jobMeta'>;

interface JobDelta {
  key: string; agentId: string; provider: string; repository: string; workflow: string; runId: string; job: string;
  actor: string; ref: string; sha: string; url: string; source: number; firstMs: number; lastMs: number;
  events: number; statements: number; denied: number; masked: number; reviewed: number; refused: number; lastIndex: number;
}

export class Rollups {
  private readonly jobs = new Map<string, JobDelta>();
  private readonly decisions = new Map<string, number>();

  add(agentId: string, index: number, leaf: Counted): void {
    if (leaf.decision) {
      const k = `${Math.floor(leaf.timeMs / 60_000)}\u0000${leaf.decision}`;
      this.decisions.set(k, (this.decisions.get(k) ?? 0) + 1);
    }
    // Agent lifecycle and notices belong to no job; everything a job did has a session.
    if (!leaf.sessionId) return;
    const key = jobKey(agentId, leaf.repository, leaf.runId, leaf.job);
    let d = this.jobs.get(key);
    if (!d) {
      const m = leaf.jobMeta;
      d = {
        key, agentId, provider: m?.provider ?? '', repository: leaf.repository, workflow: leaf.workflow, runId: leaf.runId, job: leaf.job,
        actor: leaf.actor, ref: m?.ref ?? '', sha: m?.sha ?? '', url: m?.url ?? '', source: m?.source ?? 0,
        firstMs: leaf.timeMs, lastMs: leaf.timeMs, events: 0, statements: 0, denied: 0, masked: 0, reviewed: 0, refused: 0, lastIndex: index,
      };
      this.jobs.set(key, d);
    }
    d.firstMs = Math.min(d.firstMs, leaf.timeMs);
    d.lastMs = Math.max(d.lastMs, leaf.timeMs);
    d.lastIndex = Math.max(d.lastIndex, index);
    d.events++;
    if (!d.workflow) d.workflow = leaf.workflow;
    if (!d.actor) d.actor = leaf.actor;
    switch (leaf.decision) {
      case 'allow': d.statements++; break;
      case 'deny': d.statements++; d.denied++; break;
      case 'mask': d.statements++; d.masked++; break;
      case 'review': d.statements++; d.reviewed++; break;
      case 'refused': d.refused++; break;
    }
  }

  /** Adds the counts to the tables (count statements take minute or hour, action, n) and starts over. */
  write(upsertJob: Database.Statement, countDecision: Database.Statement, countDecisionHour: Database.Statement): void {
    for (const d of this.jobs.values()) upsertJob.run(d);
    const hours = new Map<string, number>();
    for (const [k, n] of this.decisions) {
      const sep = k.indexOf('\u0000');
      const minute = Number(k.slice(0, sep));
      const action = k.slice(sep + 1);
      countDecision.run(minute, action, n);
      const h = `${Math.floor(minute / 60)}\u0000${action}`;
      hours.set(h, (hours.get(h) ?? 0) + n);
    }
    for (const [k, n] of hours) {
      const sep = k.indexOf('\u0000');
      countDecisionHour.run(Number(k.slice(0, sep)), k.slice(sep + 1), n);
    }
    this.jobs.clear();
    this.decisions.clear();
  }
}

export interface JobRow {
  key: string; agent_id: string; provider: string; repository: string; workflow: string; run_id: string; job: string; actor: string;
  ref: string; sha: string; url: string; source: number; first_ms: number; last_ms: number; events: number; statements: number;
  denied: number; masked: number; reviewed: number; refused: number; last_index: number;
}

export function jobFromRow(r: JobRow): JobSummary {
  return {
    key: r.key, agentId: r.agent_id, provider: r.provider, repository: r.repository, workflow: r.workflow, runId: r.run_id, job: r.job,
    actor: r.actor, ref: r.ref, sha: r.sha, url: r.url, source: r.source, firstMs: r.first_ms, lastMs: r.last_ms, events: r.events,
    statements: r.statements, denied: r.denied, masked: r.masked, reviewed: r.reviewed, refused: r.refused, lastIndex: r.last_index,
  };
}

/**
 * Brings an older store up to the current schema: the decision column, its index, and the rollups,
 * rebuilt from the stored event bytes (the only source of truth) in chunks inside one transaction.
 */
export function migrate(db: Database.Database): void {
  const cols = (db.prepare('PRAGMA table_info(leaves)').all() as { name: string }[]).map((c) => c.name);
  if (!cols.includes('decision')) db.exec("ALTER TABLE leaves ADD COLUMN decision TEXT NOT NULL DEFAULT ''");
  // Only the rare decisions are indexed: "show me what was denied" must not scan a million allows.
  db.exec("CREATE INDEX IF NOT EXISTS leaves_flagged ON leaves(decision, idx) WHERE decision IN ('deny', 'mask', 'review', 'refused')");
  const version = db.prepare("SELECT value FROM meta WHERE key = 'rollup_version'").pluck().get() as string | undefined;
  if (version === ROLLUP_VERSION) {
    // Decisions per hour came after decisions per minute: a store from before has only the minutes,
    // which hold everything the hours need (both are written in every append's transaction).
    const hours = db.prepare('SELECT 1 FROM decision_hours LIMIT 1').get();
    const minutes = db.prepare('SELECT 1 FROM decision_counts LIMIT 1').get();
    if (!hours && minutes) db.exec('INSERT INTO decision_hours (hour, action, n) SELECT minute / 60, action, SUM(n) FROM decision_counts GROUP BY 1, 2');
    return;
  }
  db.transaction(() => {
    db.exec('DELETE FROM jobs; DELETE FROM decision_counts; DELETE FROM decision_hours;');
    const page = db.prepare('SELECT idx, agent_id, bytes FROM leaves WHERE idx >= ? ORDER BY idx LIMIT 4096');
    const setDecision = db.prepare('UPDATE leaves SET decision = ? WHERE idx = ?');
    const upsertJob = db.prepare(`INSERT INTO jobs (key, agent_id, provider, repository, workflow, run_id, job, actor, ref, sha, url, source,
        first_ms, last_ms, events, statements, denied, masked, reviewed, refused, last_index)
      VALUES (@key, @agentId, @provider, @repository, @workflow, @runId, @job, @actor, @ref, @sha, @url, @source,
        @firstMs, @lastMs, @events, @statements, @denied, @masked, @reviewed, @refused, @lastIndex)`);
    const countDecision = db.prepare('INSERT INTO decision_counts (minute, action, n) VALUES (?, ?, ?)');
    const countDecisionHour = db.prepare('INSERT INTO decision_hours (hour, action, n) VALUES (?, ?, ?)');
    const rollups = new Rollups();
    for (let from = 0; ;) {
      const rows = page.all(from) as { idx: number; agent_id: string; bytes: Buffer }[];
      if (!rows.length) break;
      for (const r of rows) {
        const f = decodeLeafFields(r.bytes);
        if (f.decision) setDecision.run(f.decision, r.idx);
        rollups.add(r.agent_id, r.idx, f);
      }
      from = rows[rows.length - 1]!.idx + 1;
    }
    // One write of the whole rollup: a job spread over many pages is summed in memory first.
    rollups.write(upsertJob, countDecision, countDecisionHour);
    db.prepare("INSERT OR REPLACE INTO meta (key, value) VALUES ('rollup_version', ?)").run(ROLLUP_VERSION);
  })();
}
