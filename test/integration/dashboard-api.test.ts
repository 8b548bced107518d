// The dashboard's API against a real collector process over a seeded, signed log: sign-in and its
// defences (throttling, CSRF, Origin), that every list agrees with the events themselves (the
// rollups are counts of the log, not a second truth), rollups rebuilt from the bytes after they are
// lost, and the background self-verify catching a tampered leaf.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import Database from 'better-sqlite3';
import { RUNGUARD, runProcess } from '../helpers/agent.js';
import { CollectorProcess, freePort, initPki, saveArtifact, waitFor, type Pki } from '../helpers/collector.js';
import { seedLog } from '../helpers/synthetic-log.js';
import { leafHash, verifyInclusion } from '../../collector/merkle/index.js';
import { tempDir } from '../helpers/tmp.js';

const PASSWORD = 'admin-password-1';

describe('dashboard API', () => {
  let pki: Pki;
  let dataDir: string;
  let collector: CollectorProcess;
  let seeded: { jobs: number; events: number };
  let cookie = '';
  let csrf = '';

  const req = (p: string, init: RequestInit & { auth?: 'session' | 'none' | string } = {}) => {
    const headers = new Headers(init.headers);
    if (init.auth === undefined || init.auth === 'session') headers.set('cookie', cookie);
    else if (init.auth !== 'none') headers.set('authorization', `Basic ${Buffer.from(init.auth).toString('base64')}`);
    return fetch(collector.url + p, { ...init, headers });
  };
  const json = async <T>(p: string): Promise<T> => {
    const r = await req(p);
    assert.equal(r.status, 200, `${p}: ${await r.clone().text()}`);
    return (await r.json()) as T;
  };
  const login = async (user: string, password: string, headers: Record<string, string> = {}) =>
    fetch(`${collector.url}/api/login`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify({ user, password }) });

  const startCollector = async () => {
    const grpcPort = await freePort();
    let httpPort: number;
    do httpPort = await freePort(); while (httpPort === grpcPort);
    collector = await new CollectorProcess({ dataDir, tlsDir: pki.caDir, grpcPort, httpPort }).start();
  };

  before(async () => {
    const work = tempDir('rg-dash-api-');
    pki = await initPki(work, 'seed-agent');
    dataDir = path.join(work, 'data');
    seeded = seedLog({ dataDir, agentDir: pki.agentDir, events: 6000, statementsPerJob: 30, spanMs: 6 * 3600_000 });
    for (const [name, role] of [['ada', 'admin'], ['vic', 'viewer'], ['val', 'viewer']] as const) {
      const r = await runProcess(RUNGUARD, ['user', 'add', '--data-dir', dataDir, '--name', name, '--role', role], { RUNGUARD_PASSWORD: PASSWORD });
      assert.equal(r.status, 0, r.stderr);
    }
    await startCollector();
  });

  after(async () => {
    saveArtifact('dashboard-api-collector.log', collector?.log);
    await collector?.stop();
  });

  test('everything under /api needs a user; a session comes from a password and carries a CSRF token', async () => {
    assert.equal((await req('/api/jobs', { auth: 'none' })).status, 401);
    assert.equal((await req('/api/jobs', { auth: `ada:${PASSWORD}` })).status, 200, 'Basic auth for scripts');
    assert.equal((await login('ada', 'wrong')).status, 401);
    const r = await login('ada', PASSWORD);
    assert.equal(r.status, 200);
    const set = r.headers.get('set-cookie') ?? '';
    assert.match(set, /^rg_session=[A-Za-z0-9_-]{43}; Path=\/; HttpOnly; SameSite=Strict; Secure/);
    cookie = set.split(';')[0]!;
    csrf = ((await r.json()) as { csrf: string }).csrf;
    const s = await json<{ user: { name: string; roles: string[] }; csrf: string }>('/api/session');
    assert.equal(s.user.name, 'ada');
    assert.equal(s.csrf, csrf);
    // The page itself is served with a CSP that forbids inline script and framing.
    const page = await fetch(collector.url + '/');
    assert.match(page.headers.get('content-security-policy') ?? '', /script-src 'self'.*frame-ancestors 'none'/);
  });

  test('writes need the CSRF token and a same-origin Origin; failed sign-ins are throttled per user', async () => {
    const post = (headers: Record<string, string>) => req('/api/integrity/verify', { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: '{}' });
    assert.equal((await post({})).status, 403, 'no token');
    assert.equal((await post({ 'x-csrf-token': 'x'.repeat(32) })).status, 403, 'wrong token');
    assert.equal((await post({ 'x-csrf-token': csrf, origin: 'http://evil.example' })).status, 403, 'foreign origin');
    assert.equal((await login('ada', PASSWORD, { origin: 'http://evil.example' })).status, 403, 'login CSRF');
    for (let i = 0; i < 5; i++) assert.equal((await login('vic', `nope-${i}`)).status, 401);
    const throttled = await login('vic', PASSWORD);
    assert.equal(throttled.status, 429, 'even the right password waits out the window');
    assert.match(((await throttled.json()) as { message: string }).message, /too many failed sign-ins/);
  });

  test('the jobs list and the decision chart agree with the events in the log', async () => {
    const { jobs } = await json<{ jobs: { key: string; events: number; statements: number; denied: number; masked: number; reviewed: number; repository: string }[] }>('/api/jobs?limit=500');
    assert.equal(jobs.length, seeded.jobs);
    assert.equal(jobs.reduce((n, j) => n + j.events, 0), seeded.events, 'every event belongs to one job');
    // Page through all denied statements: the same count as the rollups say.
    let denied = 0;
    for (let before: number | null = null; ;) {
      const page: { events: { index: number; event: { statement?: { decision?: { action?: string } } } }[]; next: number | null } =
        await json(`/api/events?decision=deny&limit=100${before === null ? '' : `&before=${before}`}`);
      for (const e of page.events) assert.equal(e.event.statement?.decision?.action, 'deny');
      denied += page.events.length;
      if (page.next === null) break;
      before = page.next;
    }
    assert.ok(denied > 0);
    assert.equal(jobs.reduce((n, j) => n + j.denied, 0), denied);
    const o = await json<{ decisions: { counts: Record<string, number> }[]; size: number; jobs: { active: number; flagged: number } }>('/api/overview?range=24h');
    assert.equal(o.size, seeded.events);
    // The log spans 6 hours: every job is active in the last day.
    assert.deepEqual(o.jobs, { active: seeded.jobs, flagged: jobs.filter((j) => j.denied + j.reviewed > 0).length });
    const charted = o.decisions.reduce((n, b) => n + Object.values(b.counts).reduce((a, c) => a + c, 0), 0);
    assert.equal(charted, jobs.reduce((n, j) => n + j.statements, 0), 'the chart counts every statement once');

    // A job's sessions and activity are its events.
    const j = jobs[3]!;
    const detail = await json<{ sessions: { events: number }[]; activity: unknown[] }>(`/api/jobs/${encodeURIComponent(j.key)}`);
    assert.equal(detail.sessions.reduce((n, s) => n + s.events, 0), j.events);
    assert.equal(detail.activity.length, j.events);
    const filtered = await json<{ jobs: { repository: string }[] }>(`/api/jobs?repository=${encodeURIComponent(j.repository)}`);
    assert.ok(filtered.jobs.length > 0 && filtered.jobs.every((x) => x.repository === j.repository));
    assert.equal((await req('/api/jobs/no%7Csuch%7Cjob')).status, 404);
    assert.equal((await req('/api/events?decision=maybe')).status, 400);
  });

  test('an event comes with an inclusion proof that verifies against the signed checkpoint', async () => {
    const d = await json<{ leaf: string; proof: { size: number; hashes: string[] }; checkpoint: string }>('/api/events/1234');
    const root = Buffer.from(d.checkpoint.split('\n')[2]!, 'base64');
    const proof = d.proof.hashes.map((h) => Buffer.from(h, 'base64'));
    assert.ok(verifyInclusion(leafHash(Buffer.from(d.leaf, 'base64')), 1234, d.proof.size, proof, root).ok);
    assert.equal(verifyInclusion(leafHash(Buffer.from(d.leaf, 'base64')), 1235, d.proof.size, proof, root).ok, false);
    assert.equal((await req(`/api/events/${seeded.events + 10}`)).status, 404);
  });

  test('rollups lost or from an older store are rebuilt from the event bytes on open', async () => {
    const before = await json<{ jobs: unknown[] }>('/api/jobs?limit=500');
    await collector.stop();
    const db = new Database(path.join(dataDir, 'log.db'));
    db.exec("DELETE FROM jobs; DELETE FROM decision_counts; UPDATE leaves SET decision = ''; DELETE FROM meta");
    db.close();
    await startCollector();
    await login('ada', PASSWORD).then(async (r) => {
      cookie = (r.headers.get('set-cookie') ?? '').split(';')[0]!;
      csrf = ((await r.json()) as { csrf: string }).csrf;
    });
    assert.deepEqual(await json<{ jobs: unknown[] }>('/api/jobs?limit=500'), before);
  });

  test('the self-verify an admin starts finds a tampered leaf; a viewer cannot start one', async () => {
    const integrity = () => json<{ verify: { ok: boolean; size: number; firstProblem: { index: number; reason: string } | null; trigger: string } | null; verifyRunning: boolean }>('/api/integrity');
    await waitFor('the start-up verify run', async () => (await integrity()).verify?.trigger === 'collector start', 30_000, 200);
    assert.equal((await integrity()).verify?.ok, true);
    const val = await login('val', PASSWORD);
    assert.equal(val.status, 200);
    const valCookie = (val.headers.get('set-cookie') ?? '').split(';')[0]!;
    const valCsrf = ((await val.json()) as { csrf: string }).csrf;
    const refused = await fetch(`${collector.url}/api/integrity/verify`, { method: 'POST', headers: { cookie: valCookie, 'x-csrf-token': valCsrf, 'content-type': 'application/json' }, body: '{}' });
    assert.equal(refused.status, 403);
    assert.match(((await refused.json()) as { message: string }).message, /only an admin/);
    // Rewrite one stored event behind the collector's back (a bit flip in its text).
    const db = new Database(path.join(dataDir, 'log.db'));
    const row = db.prepare('SELECT bytes FROM leaves WHERE idx = 777').get() as { bytes: Buffer };
    const bytes = Buffer.from(row.bytes);
    bytes[bytes.length - 3]! ^= 1;
    db.prepare('UPDATE leaves SET bytes = ? WHERE idx = 777').run(bytes);
    db.close();
    const r = await req('/api/integrity/verify', { method: 'POST', headers: { 'content-type': 'application/json', 'x-csrf-token': csrf }, body: '{}' });
    assert.equal(r.status, 200, await r.clone().text());
    const v = await waitFor('the requested verify run', async () => {
      const i = await integrity();
      return !i.verifyRunning && i.verify?.trigger === 'requested by ada' ? i.verify : undefined;
    }, 30_000, 200);
    assert.equal(v.ok, false);
    assert.equal(v.firstProblem?.index, 777, JSON.stringify(v.firstProblem));
  });
});
