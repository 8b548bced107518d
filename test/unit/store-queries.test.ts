// The store's dashboard queries on a varied fleet log (test/helpers/synthetic-fleet.ts: many agents,
// one shipping late, skewed values with rare ones): every plan queryEvents can follow, and the plain
// one-statement query, return the page that a filter over every decoded leaf in JS finds, for
// filters alone and combined, time ranges, text, cursors in both directions; the planner's choices
// cover each of its branches; jobCounts and decisionCounts (minutes and hours) agree with counts
// made from the event bytes themselves; and a store from before the hourly counts and the run index
// is brought up to date on open.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { caInit } from '../../collector/pki/index.js';
import { SqliteStore } from '../../collector/store/sqlite.js';
import { decodeLeafFields } from '../../collector/store/leaf-fields.js';
import { jobKey } from '../../collector/store/rollups.js';
import type { EventQuery } from '../../collector/store/store.js';
import type { PlanName } from '../../collector/store/event-plan.js';
import { seedFleet, type FleetSeed } from '../helpers/synthetic-fleet.js';
import { EventKind } from '../../proto/index.js';

const DAY = 24 * 3600_000;
const PLANS: PlanName[] = ['auto', 'scan', 'session', 'job', 'agent', 'kind', 'decision', 'time'];

describe('store queries on a fleet log', () => {
  let root: string;
  let dataDir: string;
  let seed: FleetSeed;
  let store: SqliteStore;
  /** What each leaf says, decoded from its bytes: the reference for every count. */
  let leaves: { index: number; agentId: string; bytes: Buffer; f: ReturnType<typeof decodeLeafFields> }[];

  /** The page a query asks for, by reading every leaf in JS: the oracle every plan must agree with. */
  const expectedPage = (q: EventQuery): number[] => {
    const text = q.text ? Buffer.from(q.text, 'utf8') : undefined;
    const eq = (want: unknown, have: unknown) => want === undefined || want === '' || want === have;
    const hits = leaves.filter(({ index, agentId, bytes, f }) => eq(q.agentId, agentId) && eq(q.sessionId, f.sessionId) && eq(q.kind, f.kind)
      && eq(q.repository, f.repository) && eq(q.runId, f.runId) && eq(q.job, f.job) && eq(q.workflow, f.workflow) && eq(q.actor, f.actor)
      && eq(q.destination, f.destination) && eq(q.decision, f.decision) && (q.jobKey === undefined || q.jobKey === jobKey(agentId, f.repository, f.runId, f.job))
      && (!text || bytes.includes(text)) && (q.sinceMs === undefined || f.timeMs >= q.sinceMs) && (q.untilMs === undefined || f.timeMs < q.untilMs)
      && (q.afterIndex === undefined || index > q.afterIndex) && (q.beforeIndex === undefined || index < q.beforeIndex)).map((l) => l.index);
    if (q.descending) hits.reverse();
    return hits.slice(0, q.limit);
  };

  before(async () => {
    root = mkdtempSync(path.join(os.tmpdir(), 'rg-store-queries-'));
    await caInit(path.join(root, 'ca'));
    dataDir = path.join(root, 'data');
    seed = await seedFleet({ dataDir, caDir: path.join(root, 'ca'), agentsDir: path.join(root, 'agents'), events: 40_000, agents: 6, nowMs: Date.UTC(2026, 5, 30, 12, 34, 56), seed: 7 });
    store = SqliteStore.open(dataDir);
    leaves = store.leaves(0, store.size()).map((l) => ({ index: l.index, agentId: l.agentId, bytes: l.bytes, f: decodeLeafFields(l.bytes) }));
  });

  after(() => {
    store?.close();
    if (root) rmSync(root, { recursive: true, force: true });
  });

  const queries = (): EventQuery[] => {
    const p = seed.picks;
    const now = seed.nowMs;
    const size = store.size();
    const K = EventKind;
    const ranges = [
      { sinceMs: now - 4 * DAY, untilMs: now - 3 * DAY }, { sinceMs: now - 14 * DAY, untilMs: now - 7 * DAY },
      { sinceMs: now - 30 * DAY, untilMs: now + 1 }, { sinceMs: now - 3600_000 }, { untilMs: now - 20 * DAY },
      { sinceMs: now - 29 * DAY, untilMs: now - 28 * DAY - 3 * 3600_000 },
    ];
    const filters: EventQuery[] = [
      {}, { kind: K.EVENT_KIND_STATEMENT }, { kind: K.EVENT_KIND_CONNECTION_REFUSED }, { kind: K.EVENT_KIND_AGENT_START }, { kind: K.EVENT_KIND_PROCESS_EXEC },
      { decision: 'allow' }, { decision: 'mask' }, { decision: 'deny' }, { decision: 'review' }, { decision: 'refused' },
      { repository: p.repository.common }, { repository: p.repository.rare }, { workflow: p.workflow.common }, { workflow: p.workflow.rare },
      { runId: p.run.common }, { runId: p.run.rare }, { runId: p.run.common, job: 'build' }, { actor: p.actor.common }, { actor: p.actor.rare },
      { destination: p.target.common }, { destination: p.target.rare }, { agentId: p.agent.common }, { agentId: p.agent.rare },
      { jobKey: p.jobKey.common }, { jobKey: p.jobKey.rare }, { jobKey: `agent:${p.agent.common}` }, { jobKey: 'not-a-key' }, { sessionId: seed.bigSession },
      { repository: p.repository.common, kind: K.EVENT_KIND_STATEMENT }, { actor: p.actor.common, decision: 'deny' },
      { agentId: p.agent.common, kind: K.EVENT_KIND_CONNECTION_OPEN }, { repository: p.repository.common, runId: p.run.common },
      { jobKey: p.jobKey.common, kind: K.EVENT_KIND_PROCESS_EXEC }, { sessionId: seed.bigSession, decision: 'mask' },
      { text: 'invoices' }, { text: 'DROP TABLE' }, { text: 'no-such-text-anywhere' },
    ];
    const out: EventQuery[] = [];
    for (const f of filters) {
      out.push({ ...f, descending: true, limit: 100 });
      out.push({ ...f, descending: false, limit: 7, afterIndex: Math.floor(size / 3) });
      out.push({ ...f, descending: true, limit: 50, beforeIndex: Math.floor(size / 2) });
    }
    for (const r of ranges) {
      for (const f of [{}, { kind: K.EVENT_KIND_STATEMENT }, { decision: 'deny' }, { decision: 'mask' }, { agentId: p.agent.rare }, { agentId: p.agent.common },
        { repository: p.repository.common }, { actor: p.actor.common }, { text: 'invoices' }]) {
        out.push({ ...f, ...r, descending: true, limit: 100 });
        out.push({ ...f, ...r, descending: false, limit: 30 });
      }
    }
    return out;
  };

  test('every plan, and the plain query, returns the page a filter over the decoded leaves finds; the planner takes each branch', () => {
    const chosen = new Set<string>();
    let compared = 0;
    // The planner as it is, and with a small probe (more values count as common on this small log).
    const small = SqliteStore.open(dataDir, { probe: 512 });
    try {
      for (const s of [store, small]) {
        for (const q of queries()) {
          const want = expectedPage(q);
          for (const plan of ['plain', ...PLANS] as PlanName[]) {
            let got: number[];
            try {
              got = s.queryEvents(q, plan).map((r) => r.index);
            } catch (err) {
              if (/does not apply/.test((err as Error).message)) continue;
              throw err;
            }
            assert.deepEqual(got, want, `plan ${plan} for ${JSON.stringify(q)}`);
            compared++;
          }
          chosen.add(s.explainEvents(q).plan.replace(/\(\d+ entries\)/, '(n entries)'));
        }
      }
    } finally {
      small.close();
    }
    assert.ok(compared > 600, `${compared} comparisons`);
    for (const branch of ['scan', 'scan within the time range', 'time (index only)', 'kind (index only)', 'decision (in log order)', 'decision walk',
      'decision walk within the time range', 'job (in log order)', 'session (in log order)', 'job (n entries)', 'agent (n entries)', 'kind (n entries)', 'time (n entries)']) {
      assert.ok(chosen.has(branch), `no query took the "${branch}" branch: ${[...chosen].join('; ')}`);
    }
  });

  test('a page comes from an index, not a sort of the log, for the filters the dashboard offers', () => {
    const p = seed.picks;
    for (const q of [{ kind: EventKind.EVENT_KIND_STATEMENT }, { decision: 'refused' }, { repository: p.repository.common }, { agentId: p.agent.common }, { runId: p.run.rare },
      { sinceMs: seed.nowMs - 14 * DAY, untilMs: seed.nowMs - 7 * DAY }] as EventQuery[]) {
      const e = store.explainEvents({ ...q, descending: true, limit: 100 });
      // Sorting is allowed only over bare indexes from an index (a covering one), never over rows.
      for (const step of e.steps) assert.doesNotMatch(step, /^SCAN leaves USING INDEX|^SEARCH leaves USING INDEX leaves_time/, `${JSON.stringify(q)}: ${e.steps.join(' | ')}`);
      if (e.steps.some((s) => /TEMP B-TREE/.test(s))) assert.ok(e.steps.some((s) => /COVERING INDEX/.test(s)), `${JSON.stringify(q)}: ${e.steps.join(' | ')}`);
    }
  });

  test('jobCounts counts the jobs active in a range, and those with a deny, review or refusal, as the events say', () => {
    const jobs = new Map<string, { last: number; flagged: boolean }>();
    for (const { agentId, f } of leaves) {
      if (!f.sessionId) continue;
      const key = jobKey(agentId, f.repository, f.runId, f.job);
      const j = jobs.get(key) ?? { last: 0, flagged: false };
      j.last = Math.max(j.last, f.timeMs);
      j.flagged ||= ['deny', 'review', 'refused'].includes(f.decision);
      jobs.set(key, j);
    }
    assert.ok([...jobs.values()].some((j) => j.flagged) && [...jobs.values()].some((j) => !j.flagged));
    for (const since of [0, seed.nowMs - 30 * DAY, seed.nowMs - 7 * DAY, seed.nowMs - DAY, seed.nowMs - 3600_000, seed.nowMs + 1]) {
      const active = [...jobs.values()].filter((j) => j.last >= since);
      assert.deepEqual(store.jobCounts(since), { active: active.length, flagged: active.filter((j) => j.flagged).length }, `since ${since}`);
    }
  });

  const expectedBuckets = (sinceMs: number, untilMs: number, bucketMs: number) => {
    const minutes = bucketMs / 60_000;
    const m0 = Math.floor(sinceMs / 60_000);
    const m1 = Math.ceil(untilMs / 60_000);
    const buckets = new Map<number, Record<string, number>>();
    for (const { f } of leaves) {
      const m = Math.floor(f.timeMs / 60_000);
      if (!f.decision || m < m0 || m >= m1) continue;
      const b = Math.floor(m / minutes) * minutes * 60_000;
      const counts = buckets.get(b) ?? {};
      counts[f.decision] = (counts[f.decision] ?? 0) + 1;
      buckets.set(b, counts);
    }
    return [...buckets].sort((a, b) => a[0] - b[0]).map(([startMs, counts]) => ({ startMs, counts }));
  };
  const ranges = () => {
    const now = seed.nowMs;
    const out: [number, number, number][] = [];
    for (const [span, bucket] of [[3600_000, 60_000], [DAY, 3600_000], [7 * DAY, 6 * 3600_000], [30 * DAY, DAY], [2 * DAY, 300_000], [40 * DAY, DAY]] as const) {
      for (const end of [now + 60_000, now - 3 * DAY + 17_123, now - 11 * DAY - 7 * 60_000]) out.push([end - span, end, bucket]);
    }
    out.push([now - 59 * 60_000, now - 2 * 60_000, 3600_000]); // within one hour: minutes only
    return out;
  };

  test('decisionCounts, from whole hours and the minutes around them, equals the decisions in the events', () => {
    for (const [since, until, bucket] of ranges()) {
      assert.deepEqual(store.decisionCounts(since, until, bucket), expectedBuckets(since, until, bucket), `[${since}, ${until}) per ${bucket} ms`);
    }
  });

  test('a store from before the hourly counts and the run index gets them on open, with the same answers', () => {
    const oldDir = path.join(root, 'old');
    store.close();
    cpSync(dataDir, oldDir, { recursive: true });
    store = SqliteStore.open(dataDir);
    const db = new Database(path.join(oldDir, 'log.db'));
    db.exec('DROP TABLE decision_hours; DROP INDEX jobs_run');
    db.close();
    const old = SqliteStore.open(oldDir);
    try {
      assert.ok(old.db.prepare("SELECT 1 FROM sqlite_master WHERE name = 'jobs_run'").get(), 'the run index is back');
      assert.deepEqual(old.db.prepare('SELECT * FROM decision_hours ORDER BY hour, action').all(), store.db.prepare('SELECT * FROM decision_hours ORDER BY hour, action').all());
      for (const [since, until, bucket] of ranges()) assert.deepEqual(old.decisionCounts(since, until, bucket), expectedBuckets(since, until, bucket));
      // Rollups rebuilt from the bytes (an older rollup version) count the hours too.
      old.db.exec("DELETE FROM meta WHERE key = 'rollup_version'; DELETE FROM decision_hours");
      old.close();
      const rebuilt = SqliteStore.open(oldDir);
      assert.deepEqual(rebuilt.db.prepare('SELECT * FROM decision_hours ORDER BY hour, action').all(), store.db.prepare('SELECT * FROM decision_hours ORDER BY hour, action').all());
      rebuilt.close();
    } finally {
      if (old.db.open) old.close();
    }
  });
});
