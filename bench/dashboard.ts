// Dashboard benchmark: every request the dashboard UI makes, timed against a real collector whose
// store holds a million events of a realistic fleet.
//
//   npm run build && node dist/bench/dashboard.js
//   node dist/bench/dashboard.js [--events 1000000] [--keep DIR] [--samples 10] [--agents 12] [--browser] [--json FILE]
//     --keep DIR   seed into DIR (or reuse what an earlier run seeded there) and keep it afterwards,
//                  so reruns skip the seeding; without it everything lives in a temp dir removed at exit
//     --browser    also time the overview page in Debian's chromium (playwright-core)
//     --json FILE  also write the figures as JSON (for comparing runs)
//
// 1. Seeding: a CA (caInit) and 13 enrolled agents (runner hosts, one of them rare and seldom
//    shipping), and --events events from test/helpers/synthetic-fleet.ts: jobs of many repositories,
//    workflows, actors and targets (Zipf-skewed, with a long tail of rare values), process trees,
//    connections (a few refused), database, SSH, Kubernetes and HTTP sessions whose statements are
//    allowed, masked, denied or held for review. They are encoded, chained and batch-signed per agent
//    and appended through the collector's own Ingestor and SqliteStore, in batches of 512 as agents
//    ship them, over 30 days ending now. Reported: events/s and the store's size.
// 2. `bin/runguard collector` (a child process) on that store, with a user from `bin/runguard user
//    add`: time to its "collector running" line (schema migration, if any, included) and the
//    duration of the self-verify it starts at once (waited for before anything is timed, so it does
//    not share the CPU with the requests).
// 3. Every GET the UI makes (overview per range, the event search with each filter, common and rare
//    values, time ranges, text search, cursor paging, an event with its inclusion proof, jobs, a job,
//    a session, agents, integrity), signed in with a session cookie like the browser: one warm-up,
//    then --samples sequential timed requests each (full response read). p50 and p95 in ms, the rows
//    returned, and the response size.
//
// Needs no root. The collector is stopped by pid, and the temp dir removed (unless --keep), at exit,
// Ctrl-C included. On a shared 2-core machine, absolute figures move with the neighbours.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { caInit } from '../collector/pki/index.js';
import { seedFleet, type FleetSeed } from '../test/helpers/synthetic-fleet.js';
import { cleanupAll, lineReader, onCleanup, percentile, run, stopChild, table, track } from './harness.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const RUNGUARD = path.join(ROOT, 'bin/runguard');
const DAY = 24 * 3600_000;

interface Opts { events: number; keep?: string; samples: number; agents: number; browser: boolean; json?: string }

function parseArgs(argv: string[]): Opts {
  const opts: Opts = { events: 1_000_000, samples: 10, agents: 12, browser: false };
  const usage = 'usage: dashboard.js [--events N] [--keep DIR] [--samples N] [--agents N] [--browser] [--json FILE]';
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i]!;
    if (key === '--browser') { opts.browser = true; continue; }
    const value = argv[++i];
    if (value === undefined) throw new Error(`${usage} (${key} needs a value)`);
    if (key === '--keep') opts.keep = path.resolve(value);
    else if (key === '--json') opts.json = path.resolve(value);
    else {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 1) throw new Error(`${usage} (got "${key} ${value}")`);
      if (key === '--events') opts.events = n;
      else if (key === '--samples') opts.samples = n;
      else if (key === '--agents') opts.agents = n;
      else throw new Error(`${usage} (unknown "${key}")`);
    }
  }
  return opts;
}

const say = (s: string) => process.stderr.write(`${s}\n`);
const fmt = (ms: number) => (ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2));
const mb = (bytes: number) => `${(bytes / 1e6).toFixed(0)} MB`;

function storeBytes(dataDir: string): number {
  let n = 0;
  for (const f of ['log.db', 'log.db-wal']) if (existsSync(path.join(dataDir, f))) n += statSync(path.join(dataDir, f)).size;
  return n;
}

// ---------------------------------------------------------------------------------------------
// Seeding

interface Seeded { seed: FleetSeed; seconds?: number; rate?: number; storeBytes: number }

async function seeded(root: string, opts: Opts): Promise<Seeded> {
  const caDir = path.join(root, 'ca');
  const dataDir = path.join(root, 'data');
  const seedFile = path.join(root, 'seed.json');
  if (existsSync(seedFile)) {
    const seed = JSON.parse(readFileSync(seedFile, 'utf8')) as FleetSeed & { requested: number };
    if (seed.requested === opts.events && seed.agents.length === opts.agents + 1) {
      say(`reusing the ${seed.events} events seeded ${((Date.now() - seed.nowMs) / 3600_000).toFixed(1)} h ago in ${root}`);
      return { seed, storeBytes: storeBytes(dataDir) };
    }
    throw new Error(`${root} holds a store seeded with ${seed.events} events and ${seed.agents.length} agents: remove it or choose another --keep DIR`);
  }
  if (existsSync(dataDir)) throw new Error(`${dataDir} exists but ${seedFile} does not (an interrupted seeding?): remove ${root}`);
  if (!existsSync(path.join(caDir, 'checkpoint.pub'))) await caInit(caDir);
  say(`seeding ${opts.events} events into ${dataDir} ...`);
  let last = 0;
  const t0 = performance.now();
  const seed = await seedFleet({
    dataDir, caDir, agentsDir: path.join(root, 'agents'), events: opts.events, agents: opts.agents,
    onProgress: (n) => {
      if (n - last >= 100_000) {
        last = n;
        say(`  ${n} events, ${Math.round(n / ((performance.now() - t0) / 1000))}/s`);
      }
    },
  });
  const seconds = (performance.now() - t0) / 1000;
  writeFileSync(seedFile, JSON.stringify({ ...seed, requested: opts.events }, null, 2) + '\n');
  return { seed, seconds, rate: seed.events / seconds, storeBytes: storeBytes(dataDir) };
}

// ---------------------------------------------------------------------------------------------
// The collector

interface Collector { proc: ChildProcess; base: string; startMs: number; verify: Promise<{ ms: number; ok: boolean; line: string }>; log: () => string }

async function startCollector(root: string): Promise<Collector> {
  const t0 = performance.now();
  const proc = track(spawn(process.execPath, [RUNGUARD, 'collector', '--data-dir', path.join(root, 'data'), '--tls', path.join(root, 'ca'),
    '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--verify-interval', '0', '--log-level', 'info'], { stdio: ['ignore', 'pipe', 'pipe'] }));
  onCleanup('collector', () => stopChild(proc, 10_000));
  const lines = lineReader(proc, 'the collector');
  const wait = async (test: (o: Record<string, unknown>) => boolean, what: string, timeoutMs: number) => {
    const o = await lines.wait(test, timeoutMs, what);
    return { o, ms: performance.now() - t0 };
  };
  const verify = wait((o) => typeof o.msg === 'string' && o.msg.startsWith('self-verify'), 'self-verify result', 30 * 60_000)
    .then(({ o }) => ({ ms: Number(o.ms ?? NaN), ok: o.msg === 'self-verify OK', line: JSON.stringify(o) }));
  verify.catch(() => {});
  const running = await wait((o) => o.msg === 'collector running', '"collector running" line', 10 * 60_000);
  return { proc, base: `http://${String(running.o.http)}`, startMs: running.ms, verify, log: lines.tail };
}

// ---------------------------------------------------------------------------------------------
// Requests

interface Req { group: string; name: string; path: string }

function requests(seed: FleetSeed, size: number): Req[] {
  const p = seed.picks;
  const enc = encodeURIComponent;
  const day = { since: seed.nowMs - 4 * DAY, until: seed.nowMs - 3 * DAY };
  const week = { since: seed.nowMs - 14 * DAY, until: seed.nowMs - 7 * DAY };
  const deep = Math.floor(size / 10);
  const out: Req[] = [];
  const add = (group: string, name: string, path: string) => out.push({ group, name, path });
  for (const r of ['1h', '24h', '7d', '30d']) add('overview', `overview ${r}`, `/api/overview?range=${r}`);
  add('events', 'overview feed (newest 50)', '/api/events?limit=50');
  add('events', 'live feed (after newest-100, asc)', `/api/events?after=${size - 101}&order=asc&limit=200`);
  add('events', 'search, no filter', '/api/events?limit=100');
  const filter = (name: string, q: string) => add('filter', name, `/api/events?${q}&limit=100`);
  filter('kind=statement', 'kind=statement');
  filter('kind=process_exec', 'kind=process_exec');
  filter('kind=connection_refused (rare)', 'kind=connection_refused');
  filter('kind=agent_start (rare, old)', 'kind=agent_start');
  for (const d of ['allow', 'mask', 'deny', 'review', 'refused']) filter(`decision=${d}`, `decision=${d}`);
  const both = (label: string, param: string, pk: { common: string; commonEvents: number; rare: string; rareEvents: number }) => {
    filter(`${label} common (${pk.commonEvents} ev)`, `${param}=${enc(pk.common)}`);
    filter(`${label} rare (${pk.rareEvents} ev)`, `${param}=${enc(pk.rare)}`);
  };
  both('repository', 'repository', p.repository);
  both('workflow', 'workflow', p.workflow);
  both('run id', 'run', p.run);
  both('actor', 'actor', p.actor);
  both('target', 'target', p.target);
  both('agent', 'agent', p.agent);
  both('job key', 'jobKey', p.jobKey);
  filter('session (filter)', `session=${enc(seed.bigSession)}`);
  add('time', 'day (3-4 days ago)', `/api/events?since=${day.since}&until=${day.until}&limit=100`);
  add('time', 'week (7-14 days ago)', `/api/events?since=${week.since}&until=${week.until}&limit=100`);
  add('time', 'week + kind=statement', `/api/events?since=${week.since}&until=${week.until}&kind=statement&limit=100`);
  add('time', 'week + decision=deny', `/api/events?since=${week.since}&until=${week.until}&decision=deny&limit=100`);
  add('time', 'week + agent rare', `/api/events?since=${week.since}&until=${week.until}&agent=${enc(p.agent.rare)}&limit=100`);
  add('time', 'day + repository common', `/api/events?since=${day.since}&until=${day.until}&repository=${enc(p.repository.common)}&limit=100`);
  add('time', '30 days + actor common', `/api/events?since=${seed.nowMs - 30 * DAY}&until=${seed.nowMs}&actor=${enc(p.actor.common)}&limit=100`);
  add('combo', 'repository common + kind=statement', `/api/events?repository=${enc(p.repository.common)}&kind=statement&limit=100`);
  add('combo', 'actor common + decision=deny', `/api/events?actor=${enc(p.actor.common)}&decision=deny&limit=100`);
  add('combo', 'agent common + kind=connection_open', `/api/events?agent=${enc(p.agent.common)}&kind=connection_open&limit=100`);
  add('text', 'text hit ("invoices")', '/api/events?q=invoices&limit=100');
  add('text', 'text rare hit ("DROP TABLE")', `/api/events?q=${enc('DROP TABLE')}&limit=100`);
  add('text', 'text no match', '/api/events?q=zzqx-no-such-text&limit=100');
  add('text', 'text no match + day', `/api/events?q=zzqx-no-such-text&since=${day.since}&until=${day.until}&limit=100`);
  add('paging', `before=${deep} (deep)`, `/api/events?before=${deep}&limit=100`);
  add('paging', `after=${Math.floor(size / 2)}, asc`, `/api/events?after=${Math.floor(size / 2)}&order=asc&limit=100`);
  add('paging', `kind=statement before=${deep}`, `/api/events?kind=statement&before=${deep}&limit=100`);
  add('paging', `decision=deny before=${deep}`, `/api/events?decision=deny&before=${deep}&limit=100`);
  add('paging', `repository common before=${deep}`, `/api/events?repository=${enc(p.repository.common)}&before=${deep}&limit=100`);
  add('paging', `agent common before=${deep}`, `/api/events?agent=${enc(p.agent.common)}&before=${deep}&limit=100`);
  add('detail', 'event + inclusion proof (middle)', `/api/events/${Math.floor(size / 2)}`);
  add('detail', 'event + inclusion proof (newest)', `/api/events/${size - 2}`);
  add('jobs', 'jobs', '/api/jobs?limit=100');
  add('jobs', 'jobs flagged', '/api/jobs?flagged=1&limit=100');
  add('jobs', 'jobs repository common', `/api/jobs?repository=${enc(p.repository.common)}&limit=100`);
  add('jobs', 'jobs run rare', `/api/jobs?run=${enc(p.run.rare)}&limit=100`);
  add('jobs', 'jobs older page (before 15 days ago)', `/api/jobs?before=${seed.nowMs - 15 * DAY}&limit=100`);
  add('jobs', `job (largest, ${p.jobKey.commonEvents} ev)`, `/api/jobs/${enc(p.jobKey.common)}`);
  add('jobs', `job (small, ${p.jobKey.rareEvents} ev)`, `/api/jobs/${enc(p.jobKey.rare)}`);
  add('jobs', 'session detail (sessions/:id)', `/api/sessions/${enc(seed.bigSession)}`);
  add('ops', 'agents', '/api/agents');
  add('ops', 'integrity', '/api/integrity');
  return out;
}

interface Timed extends Req { p50: number; p95: number; min: number; rows: number | string; bytes: number }

async function timeRequest(base: string, cookie: string, r: Req, samples: number): Promise<Timed> {
  const once = async () => {
    const t0 = performance.now();
    const res = await fetch(base + r.path, { headers: { cookie } });
    const body = await res.text();
    const ms = performance.now() - t0;
    if (res.status !== 200) throw new Error(`GET ${r.path}: ${res.status} ${body.slice(0, 300)}`);
    return { ms, body };
  };
  const first = await once();
  const ms: number[] = [];
  for (let i = 0; i < samples; i++) ms.push((await once()).ms);
  ms.sort((a, b) => a - b);
  const v = JSON.parse(first.body) as Record<string, unknown>;
  const rows = Array.isArray(v.events) ? v.events.length : Array.isArray(v.jobs) ? v.jobs.length : Array.isArray(v.agents) ? v.agents.length
    : Array.isArray(v.activity) ? `${v.activity.length} act.` : '';
  return { ...r, p50: percentile(ms, 0.5), p95: percentile(ms, 0.95), min: ms[0]!, rows, bytes: first.body.length };
}

async function browserOverview(base: string, user: string, password: string, samples: number): Promise<{ p50: number; p95: number } | string> {
  const { launchBrowser } = await import('../test/helpers/browser.js');
  let browser;
  try {
    browser = await launchBrowser();
  } catch (err) {
    return `chromium not available: ${(err as Error).message.split('\n')[0]}`;
  }
  onCleanup('chromium', () => browser.close());
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  await page.goto(base + '/');
  await page.fill('input[name=user]', user);
  await page.fill('input[name=password]', password);
  await page.click('form.login button[type=submit]');
  await page.waitForSelector('[data-test=who]');
  const ms: number[] = [];
  for (let i = 0; i <= samples; i++) {
    const p = await ctx.newPage();
    const t0 = performance.now();
    await p.goto(`${base}/#/?range=24h`);
    await p.waitForSelector('[data-test=live-feed] tbody tr', { timeout: 60_000 });
    if (i > 0) ms.push(performance.now() - t0);
    await p.close();
  }
  await browser.close();
  ms.sort((a, b) => a - b);
  return { p50: percentile(ms, 0.5), p95: percentile(ms, 0.95) };
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const opts = parseArgs(process.argv.slice(2));
  const root = opts.keep ?? mkdtempSync(path.join(os.tmpdir(), 'rg-dash-bench-'));
  if (opts.keep) mkdirSync(root, { recursive: true, mode: 0o700 });
  else onCleanup('temp dir', () => rmSync(root, { recursive: true, force: true }));

  const s = await seeded(root, opts);
  const { seed } = s;
  const dataDir = path.join(root, 'data');
  const user = 'bench';
  // A fresh random password each run: it is never printed and never leaves this process and the store.
  const password = randomBytes(18).toString('base64url');
  const added = await run([process.execPath, RUNGUARD, 'user', 'add', '--data-dir', dataDir, '--name', user, '--role', 'admin'], { timeoutMs: 30_000, env: { RUNGUARD_PASSWORD: password } });
  if (added.code !== 0) throw new Error(`runguard user add failed: ${added.stderr}`);

  say('starting the collector ...');
  const c = await startCollector(root);
  say(`collector running after ${fmt(c.startMs)} ms; waiting for its start-up self-verify ...`);
  const verify = await c.verify;
  if (!verify.ok) throw new Error(`the self-verify failed: ${verify.line}`);
  const login = await fetch(`${c.base}/api/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ user, password }) });
  if (login.status !== 200) throw new Error(`sign-in failed: ${login.status} ${await login.text()}`);
  const cookie = (login.headers.get('set-cookie') ?? '').split(';')[0]!;
  const size = ((await (await fetch(`${c.base}/api/overview?range=1h`, { headers: { cookie } })).json()) as { size: number }).size;

  const results: Timed[] = [];
  for (const r of requests(seed, size)) {
    const t = await timeRequest(c.base, cookie, r, opts.samples);
    say(`  ${t.name.padEnd(44)} p50 ${fmt(t.p50).padStart(7)} ms  p95 ${fmt(t.p95).padStart(7)} ms  rows ${t.rows}`);
    results.push(t);
  }
  const browser = opts.browser ? await browserOverview(c.base, user, password, Math.min(opts.samples, 5)) : undefined;
  const t0 = performance.now();
  await stopChild(c.proc, 30_000);
  const stopMs = performance.now() - t0;

  const rows = [['group', 'request', 'rows', 'p50 ms', 'p95 ms', 'KB']];
  for (const r of results) rows.push([r.group, r.name, String(r.rows), fmt(r.p50), fmt(r.p95), (r.bytes / 1024).toFixed(0)]);
  const summary = [['measure', 'value']];
  summary.push(['events in the store', String(size)]);
  summary.push(['jobs', String(seed.jobs)]);
  summary.push(['agents', String(seed.agents.length)]);
  summary.push(['seeding (Ingestor + SqliteStore, in process)', s.rate ? `${Math.round(s.rate)} events/s (${s.seconds!.toFixed(0)} s)` : 'reused (--keep)']);
  summary.push(['store size (log.db + WAL) after seeding', mb(s.storeBytes)]);
  summary.push(['store size now', mb(storeBytes(dataDir))]);
  summary.push(['collector start to "collector running"', `${fmt(c.startMs)} ms`]);
  summary.push(['start-up self-verify (worker thread)', `${(verify.ms / 1000).toFixed(1)} s`]);
  summary.push(['collector stop', `${fmt(stopMs)} ms`]);
  if (browser) summary.push(['chromium: overview page to live feed rows', typeof browser === 'string' ? browser : `p50 ${fmt(browser.p50)} ms, p95 ${fmt(browser.p95)} ms`]);
  const slow = results.filter((r) => r.p50 >= 50);
  process.stdout.write(`\n${table(summary, 'll')}\n\n${table(rows, 'llr')}\n\n${opts.samples} samples per request after one warm-up; ` +
    `${slow.length ? `p50 >= 50 ms: ${slow.map((r) => r.name).join('; ')}` : 'every p50 < 50 ms'}\n`);
  if (opts.json) {
    writeFileSync(opts.json, JSON.stringify({
      events: size, seedRate: s.rate, storeBytes: storeBytes(dataDir), startMs: c.startMs, verifyMs: verify.ms, browser,
      requests: results.map(({ group, name, path: p, p50, p95, min, rows: n, bytes }) => ({ group, name, path: p, p50, p95, min, rows: n, bytes })),
    }, null, 2) + '\n');
  }
}

let exitCode = 0;
const onSignal = (sig: NodeJS.Signals) => {
  say(`\n${sig}: cleaning up`);
  void cleanupAll().finally(() => process.exit(130));
};
process.once('SIGINT', onSignal);
process.once('SIGTERM', onSignal);
try {
  await main();
} catch (err) {
  say(`bench failed: ${(err as Error).stack ?? String(err)}`);
  exitCode = 1;
} finally {
  await cleanupAll();
}
process.exit(exitCode);
