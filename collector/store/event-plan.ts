// How the store finds a page of events (EventQuery) among millions without reading the log.
//
// A page is the `limit` matching leaves with the highest (or, ascending, lowest) indexes. SQLite on its
// own answers "filter = x ORDER BY idx LIMIT n" with one plan per query shape, chosen without knowing
// how many leaves x matches: it reads every matching row in full (event bytes included) and sorts
// them, seconds for a common value; or it walks the log from the newest leaf, a full read of the
// log for a rare one. So the page is found in two steps:
//
// 1. The indexes of the page only (`SELECT idx`), by a plan chosen here from cheap, bounded counts
//    of the candidate indexes (at most PROBE entries each):
//    - an index whose entries for the query's terms come in log order (a session, one job, a rare
//      decision) is walked, stopping after `limit` matches;
//    - otherwise the candidate with the fewest entries, if under PROBE: at most PROBE entries (and
//      their rows, for terms the index does not hold), sorted as bare integers;
//    - otherwise every indexed term matches many leaves, so a walk finds the page soon. A time range
//      that does not reach the end of the log the walk starts from is first turned into an index
//      range (from the time index, reading no rows) so that the walk starts where the range does,
//      or, when the time index (or kind + time) holds every term, answered from it alone;
//    - a walk follows a decision index in log order if the query has one, or else the log itself.
//    Terms on columns without an index (workflow, actor, target, text) are checked on each row the
//    plan reads; a rare value there reads much of the log (the text search is bounded by the API).
// 2. The rows of just those indexes, by primary key.
//
// Every plan applies every term, so each returns the same page: only the cost differs. The tests
// force each plan (and the plain one-statement query, `plan: 'plain'`) and compare its page with a
// filter over every decoded leaf (test/unit/store-queries.test.ts).
import type Database from 'better-sqlite3';
import type { EventQuery } from './store.js';
import { jobWhere } from './rollups.js';

/** Entries a probe counts at most; below it an index plan reads at most this many. */
export const PROBE = 4096;

/** Decisions held in the partial index leaves_flagged (the rare ones). */
export const FLAGGED_DECISIONS = ['deny', 'mask', 'review', 'refused'] as const;
const FLAGGED_IN = `decision IN (${FLAGGED_DECISIONS.map((d) => `'${d}'`).join(', ')})`;

interface Term { sql: string; args: unknown[] }

/** A way in: an index and the query's terms it can search by. */
interface Candidate {
  name: string;
  index: string;
  terms: Term[];
  /** For these terms the index lists leaves in log order: a walk stops after `limit` matches. */
  ordered: boolean;
}

export type PlanName = 'auto' | 'plain' | 'scan' | 'session' | 'job' | 'agent' | 'kind' | 'decision' | 'time';

/** What the planner chose, for tests and EXPLAIN-style debugging. */
export interface PlanChoice { plan: string; sql: string; args: unknown[] }

export interface EventPlanner {
  /** The SQL for the indexes of the page, and the plan it follows. */
  choose(q: EventQuery, force?: PlanName): PlanChoice | undefined;
}

type Prepare = (sql: string) => Database.Statement;

export function eventPlanner(prepare: Prepare, probe = PROBE): EventPlanner {
  const count = (index: string, terms: Term[]): number => {
    const { sql, args } = where(terms);
    return prepare(`SELECT count(*) FROM (SELECT 1 FROM leaves INDEXED BY ${index} ${sql} LIMIT ${probe})`).pluck().get(...args) as number;
  };

  return {
    choose(q, force = 'auto') {
      const limit = Math.min(Math.max(q.limit ?? 1000, 1), 10_000);
      const order = q.descending ? 'DESC' : 'ASC';
      const t = terms(q);
      const bounds: Term[] = [];
      if (q.afterIndex !== undefined) bounds.push({ sql: 'idx > ?', args: [q.afterIndex] });
      if (q.beforeIndex !== undefined) bounds.push({ sql: 'idx < ?', args: [q.beforeIndex] });
      const all = [...t.all, ...bounds];
      const page = (from: string, extra: Term[] = []) => {
        const w = where([...new Set([...all, ...extra])]);
        return { sql: `SELECT idx FROM leaves ${from} ${w.sql} ORDER BY idx ${order} LIMIT ${limit}`, args: w.args };
      };
      const scan = (extra: Term[] = [], why = 'scan') => ({ plan: why, ...page('NOT INDEXED', extra) });
      const via = (c: Candidate, extra: Term[] = [], why = c.name) => ({ plan: why, ...page(`INDEXED BY ${c.index}`, [...c.terms, ...extra]) });

      if (force === 'plain') return { plan: 'plain', ...page('') };
      if (force === 'scan') return scan();
      if (force !== 'auto') {
        const c = t.candidates.find((x) => x.name === force);
        return c && via(c);
      }
      if (!t.all.length) return scan();

      // A session, a job, a rare decision: walk its index in log order.
      const inOrder = t.candidates.find((c) => c.ordered && t.all.every((x) => c.terms.includes(x)));
      if (inOrder) return via(inOrder, [], `${inOrder.name} (in log order)`);

      // The fewest entries, if few.
      let best: { c: Candidate; n: number } | undefined;
      for (const c of t.candidates) {
        const n = count(c.index, [...c.terms, ...bounds]);
        if (!best || n < best.n) best = { c, n };
      }
      if (best && best.n < probe) return via(best.c, [], `${best.c.name} (${best.n} entries)`);

      // Every indexed term matches many leaves.
      const extra: Term[] = [];
      if (t.time) {
        // Leaves newer (descending) or older (ascending) than the range, that a walk would pass first.
        const outside = q.descending
          ? (q.untilMs === undefined ? 0 : count('leaves_time', [{ sql: 'time_ms >= ?', args: [q.untilMs] }, ...bounds]))
          : (q.sinceMs === undefined ? 0 : count('leaves_time', [{ sql: 'time_ms < ?', args: [q.sinceMs] }, ...bounds]));
        if (outside >= probe) {
          const timeOnly = t.candidates.find((c) => c.name === (q.kind === undefined ? 'time' : 'kind'));
          if (timeOnly && t.all.every((x) => timeOnly.terms.includes(x))) return via(timeOnly, [], `${timeOnly.name} (index only)`);
          const w = where([...t.time, ...bounds]);
          const r = prepare(`SELECT MIN(idx) AS lo, MAX(idx) AS hi FROM leaves INDEXED BY leaves_time ${w.sql}`).get(...w.args) as { lo: number | null; hi: number | null };
          if (r.lo === null || r.hi === null) return { plan: 'time (empty)', sql: 'SELECT idx FROM leaves WHERE 0', args: [] };
          extra.push({ sql: 'idx BETWEEN ? AND ?', args: [r.lo, r.hi] });
        }
      }
      const walk = t.candidates.find((c) => c.ordered);
      const span = extra.length ? ' within the time range' : '';
      return walk ? via(walk, extra, `${walk.name} walk${span}`) : scan(extra, `scan${span}`);
    },
  };
}

function where(terms: Term[]): { sql: string; args: unknown[] } {
  return terms.length ? { sql: `WHERE ${terms.map((x) => x.sql).join(' AND ')}`, args: terms.flatMap((x) => x.args) } : { sql: '', args: [] };
}

/** Every condition of the query, and the indexes that could find its leaves. */
function terms(q: EventQuery): { all: Term[]; candidates: Candidate[]; time?: Term[] } {
  const all: Term[] = [];
  const eq = (col: string, v: unknown): Term | undefined => {
    if (v === undefined || v === '') return undefined;
    const term = { sql: `${col} = ?`, args: [v] };
    all.push(term);
    return term;
  };
  let repository = eq('repository', q.repository);
  let runId = eq('run_id', q.runId);
  let job = eq('job', q.job);
  let agent = eq('agent_id', q.agentId);
  if (q.jobKey !== undefined) {
    const j = jobWhere(q.jobKey);
    if (j.args.length === 3) {
      // "<repository>|<run_id>|<job>": the leaves_job index, all three columns.
      repository = { sql: 'repository = ?', args: [j.args[0]] };
      runId = { sql: 'run_id = ?', args: [j.args[1]] };
      job = { sql: 'job = ?', args: [j.args[2]] };
      all.push(repository, runId, job);
    } else if (j.args.length === 1) {
      // "agent:<id>": the agent's leaves without any CI identity.
      repository = { sql: "repository = ''", args: [] };
      runId = { sql: "run_id = ''", args: [] };
      job = { sql: "job = ''", args: [] };
      agent = { sql: 'agent_id = ?', args: [j.args[0]] };
      all.push(repository, runId, job, agent);
    } else {
      all.push({ sql: '0', args: [] });
    }
  }
  const session = eq('session_id', q.sessionId);
  const kind = eq('kind', q.kind);
  eq('workflow', q.workflow);
  eq('actor', q.actor);
  eq('destination', q.destination);
  const decision = eq('decision', q.decision);
  if (q.text) all.push({ sql: 'instr(bytes, ?) > 0', args: [Buffer.from(q.text, 'utf8')] });
  const time: Term[] = [];
  if (q.sinceMs !== undefined) time.push({ sql: 'time_ms >= ?', args: [q.sinceMs] });
  if (q.untilMs !== undefined) time.push({ sql: 'time_ms < ?', args: [q.untilMs] });
  all.push(...time);

  const candidates: Candidate[] = [];
  if (session) candidates.push({ name: 'session', index: 'leaves_session', terms: [session], ordered: true });
  if (repository) {
    const jt = [repository, ...(runId ? [runId, ...(job ? [job] : [])] : [])];
    candidates.push({ name: 'job', index: 'leaves_job', terms: jt, ordered: jt.length === 3 });
  } else if (runId) {
    // A run id alone: the repositories that run appears in, from the jobs rollup (which counts every
    // leaf with a session) and the few leaves without one, make the job index usable.
    const r = runId.args[0];
    const inRepos = {
      sql: "repository IN (SELECT repository FROM jobs WHERE run_id = ? UNION SELECT repository FROM leaves INDEXED BY leaves_session WHERE session_id = '' AND run_id = ?)",
      args: [r, r],
    };
    candidates.push({ name: 'job', index: 'leaves_job', terms: [inRepos, runId, ...(job ? [job] : [])], ordered: false });
  }
  if (decision && (FLAGGED_DECISIONS as readonly unknown[]).includes(q.decision)) {
    // The literal IN list lets SQLite use the partial index with a bound value.
    candidates.push({ name: 'decision', index: 'leaves_flagged', terms: [decision, { sql: FLAGGED_IN, args: [] }], ordered: true });
  }
  if (agent) candidates.push({ name: 'agent', index: 'leaves_agent_seq', terms: [agent], ordered: false });
  if (kind) candidates.push({ name: 'kind', index: 'leaves_kind_time', terms: [kind, ...time], ordered: false });
  if (time.length) candidates.push({ name: 'time', index: 'leaves_time', terms: time, ordered: false });
  return { all, candidates, time: time.length ? time : undefined };
}
