// PostgreSQL in the data path, end to end with real parts: a real PostgreSQL 15 on 127.0.0.2, the
// real psql and pgbench run as watched jobs through the eBPF redirect, the agent with the shipped
// examples/policy.yaml, and a real collector receiving the trail.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { AgentFixture, ROOT, RUNGUARD, runProcess, type ProcResult } from '../helpers/agent.js';
import { startPostgres, type PgServer } from '../helpers/postgres.js';
import { bpfUnavailableReason } from '../helpers/env.js';
import { CollectorProcess, freePort, initPki, shipperState, waitFor } from '../helpers/collector.js';
import Database from 'better-sqlite3';
import { tempDir } from '../helpers/tmp.js';

const skip = process.env.RUNGUARD_REQUIRE_BPF === '1' ? false : bpfUnavailableReason();
const SECRET = 'sup3r-s3cret-deploy-token-value';
const JOB_ENV = {
  GITHUB_ACTIONS: 'true', GITHUB_REPOSITORY: 'acme/payments', GITHUB_WORKFLOW: 'migrate', GITHUB_RUN_ID: '77',
  GITHUB_JOB: 'db', GITHUB_ACTOR: 'alice', GITHUB_REF: 'refs/heads/main', GITHUB_SHA: 'c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00',
  DEPLOY_TOKEN: SECRET, PGCONNECT_TIMEOUT: '10',
};

// Every test runs twice: with TLS (the job's libpq prefers it, the agent terminates it, and opens TLS
// to the server: sessions stay on the JavaScript handler) and in plaintext both ways (sessions go to
// the native data path once authenticated: agent/native). The same assertions hold for both; the last test checks which path carried them.
const VARIANTS = [
  { name: 'JavaScript data path (TLS to the server)', serverTls: 'prefer', native: false, sslmode: 'prefer' },
  { name: 'native data path (plaintext both ways)', serverTls: 'disable', native: true, sslmode: 'disable' },
] as const;

for (const variant of VARIANTS) describe(`PostgreSQL through the agent: ${variant.name}`, { skip }, () => {
  let pg: PgServer;
  let agent: AgentFixture;
  let collector: CollectorProcess;
  let work: string;
  let url: string;
  const jobEnv = { ...JOB_ENV, PGSSLMODE: variant.sslmode };
  const psql = (args: string[], env: Record<string, string> = {}, input?: string): Promise<ProcResult> =>
    agent.run(['sh', '-c', input === undefined ? 'exec psql "$@"' : 'printf %s "$RG_INPUT" | psql "$@"', 'psql', '-X', '-v', 'ON_ERROR_STOP=1', ...args], { ...jobEnv, RG_INPUT: input ?? '', ...env });
  const statements = async () => (await agent.settledEvents()).filter((e) => e.kind === 'EVENT_KIND_STATEMENT').map((e) => ({ ...e.statement, seq: Number(e.seq), sessionId: e.sessionId, job: e.job }));

  before(async () => {
    const why = bpfUnavailableReason();
    if (why) throw new Error(`eBPF required but unavailable: ${why}`);
    pg = startPostgres();
    work = tempDir('rg-pgtest-');
    url = `postgresql://postgres@127.0.0.2:${pg.port}/postgres`;
    const passwordFile = path.join(work, 'scram.pass');
    writeFileSync(passwordFile, pg.passwords.scram_user + '\n', { mode: 0o600 });
    process.env.RG_TEST_MD5_PASSWORD = pg.passwords.md5_user;
    const config = path.join(work, 'agent.yaml');
    writeFileSync(config, [
      'protocols:', `  ${pg.port}: postgres`, `serverTls: ${variant.serverTls}`,
      'credentials:',
      `  - target: 127.0.0.2:${pg.port}`, '    user: scram_user', `    passwordFile: ${passwordFile}`,
    ].join('\n') + '\n');
    const pki = await initPki(work, 'test-agent');
    collector = await new CollectorProcess({ dataDir: path.join(work, 'collector'), tlsDir: pki.caDir, grpcPort: await freePort(), httpPort: await freePort() }).start();
    agent = new AgentFixture({ intercept: ['127.0.0.2/32'], extraArgs: ['--config', config, '--policy', path.join(ROOT, 'examples/policy.yaml'), '--collector', collector.target, '--tls', pki.agentDir] });
    await agent.start();
  });

  after(async () => {
    await agent?.cleanup();
    await collector?.stop();
    pg?.stop();
  });

  test('psql runs a migration unchanged; every statement is audited with its job, type, tables and rows', async () => {
    const r = await psql([url, '-c', 'CREATE TABLE accounts (id int primary key, owner text, email text, balance int)',
      '-c', "INSERT INTO accounts VALUES (1, 'ann', 'ann@example.com', 10), (2, 'bob', 'bob@example.com', 20)",
      '-c', 'UPDATE accounts SET balance = balance + 1 WHERE id = 2', '-c', 'SELECT count(*) FROM accounts']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /\b2\b/);
    const st = (await statements());
    const ins = st.find((s) => s.type === 'INSERT');
    assert.ok(ins, 'no INSERT statement event');
    assert.deepEqual(ins.objects, ['accounts']);
    assert.equal(ins.rows, '2');
    assert.equal(ins.commandTag, 'INSERT 0 2');
    assert.equal(ins.decision.rule, 'mask-personal-data');
    assert.equal(ins.job.repository, 'acme/payments');
    assert.equal(st.find((s) => s.type === 'UPDATE')?.rows, '1');
    assert.equal(st.find((s) => s.type === 'CREATE TABLE')?.decision.action, 'mask');
    const session = (await agent.settledEvents()).find((e) => e.kind === 'EVENT_KIND_DB_SESSION_START');
    assert.equal(session?.dbSession.database, 'postgres');
  });

  test('DROP TABLE is blocked with SQLSTATE 42501 naming the rule; the table survives; DROP in a comment or literal is not a DROP', async () => {
    const r = await psql([url, '-c', 'DROP TABLE accounts']);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /DROP TABLE denied by policy rule "no-drop-or-truncate"/);
    assert.equal(pg.admin("SELECT count(*) FROM accounts").trim(), '2');
    const denied = (await statements()).find((s) => s.type === 'DROP TABLE');
    assert.equal(denied?.decision.action, 'deny');
    assert.equal(denied?.errorCode, '42501');
    const ok = await psql([url, '-c', "SELECT 'DROP TABLE accounts' AS not_a_drop /* DROP TABLE accounts */"]);
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stdout, /DROP TABLE accounts/);
  });

  test('inside a transaction a blocked statement leaves it failed, as PostgreSQL would; the session stays usable', async () => {
    const r = await psql([url, '-v', 'ON_ERROR_STOP=0'], {}, 'BEGIN;\nDROP TABLE accounts;\nSELECT 1;\nROLLBACK;\nSELECT 41 + 1 AS answer;\n');
    assert.match(r.stderr, /denied by policy rule "no-drop-or-truncate"/);
    assert.match(r.stderr, /current transaction is aborted/);
    assert.match(r.stdout, /\b42\b/, 'the session goes on after ROLLBACK');
    assert.equal(pg.admin('SELECT count(*) FROM accounts').trim(), '2');
  });

  test('a multi-statement string with one forbidden statement is denied as a whole; DELETE without WHERE is recognised', async () => {
    const r = await psql([url, '-c', "INSERT INTO accounts VALUES (3, 'cy', 'cy@example.com', 0); TRUNCATE accounts"]);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /TRUNCATE denied/);
    assert.equal(pg.admin('SELECT count(*) FROM accounts').trim(), '2', 'the INSERT of the same string did not run');
    const d = await psql([url, '-c', 'DELETE FROM accounts']);
    assert.match(d.stderr, /denied by policy rule "no-unbounded-delete"/);
    const ok = await psql([url, '-c', 'DELETE FROM accounts WHERE id = 99']);
    assert.equal(ok.status, 0, ok.stderr);
  });

  test('ALTER TABLE is held for review until a DBA decides; denied, the job gets 42501 naming the rule', async () => {
    // Approvals end to end are in approvals.test.ts; here: the shipped policy's review rule holds it.
    const auth = { RUNGUARD_PASSWORD: 'dba-password-1' };
    const add = await runProcess(RUNGUARD, ['user', 'add', '--data-dir', path.join(work, 'collector'), '--name', 'dba1', '--role', 'approver', '--group', 'dba'], auth);
    assert.equal(add.status, 0, add.stderr);
    const job = psql([url, '-c', 'ALTER TABLE accounts ADD COLUMN note text']);
    const id = await waitFor('the ALTER TABLE to be held', async () => {
      const l = await runProcess(RUNGUARD, ['approvals', '--json', '--collector', collector.url, '--user', 'dba1'], auth);
      return l.stdout.split('\n').filter(Boolean).map((x) => JSON.parse(x)).find((x) => x.rule === 'review-schema-changes')?.id as string | undefined;
    }, 20_000, 200);
    const d = await runProcess(RUNGUARD, ['deny', id, '--reason', 'not in CI', '--collector', collector.url, '--user', 'dba1'], auth);
    assert.equal(d.status, 0, d.stderr);
    const r = await job;
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /ALTER TABLE was denied by dba1 \(approval ap-[0-9a-f]+, policy rule "review-schema-changes"\): not in CI/);
  });

  test('email columns and email-looking values come back masked, with valid rows', async () => {
    const r = await psql([url, '-At', '-c', "SELECT id, owner, email, 'x' || email AS contact FROM accounts ORDER BY id"]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), '1|ann|[MASKED]|[MASKED]\n2|bob|[MASKED]|[MASKED]');
    const sel = (await statements()).filter((s) => s.type === 'SELECT').at(-1)!;
    assert.equal(sel.maskedValues, 4);
    assert.doesNotMatch(JSON.stringify((await agent.settledEvents())), /ann@example\.com'?[^,]*SELECT id/);
  });

  test('values written into masked columns are redacted in the trail, as literals and as bound parameters', async () => {
    // Neither value matches a detector: only the column says it is a token. Both reach the server
    // without passing through a command line (psql reads stdin; pgbench draws the value itself).
    const r = await psql([url], {}, "CREATE TABLE creds (id bigint, api_token text);\nINSERT INTO creds (id, api_token) VALUES (1, 'plain-tok-91x');\n");
    assert.equal(r.status, 0, r.stderr);
    const script = path.join(work, 'insert-token.sql');
    // Ten digits: a card number has 13 or more, so no detector can claim the value (a random
    // 13-digit one passed the Luhn check one time in ten and came out as [REDACTED:card-number]).
    writeFileSync(script, '\\set tok random(1000000000, 9999999999)\nINSERT INTO creds (id, api_token) VALUES (2, :tok);\n');
    chmodSync(work, 0o755);
    const b = await agent.run(['pgbench', '-n', '-M', 'prepared', '-t', '1', '-f', script, url], jobEnv);
    assert.equal(b.status, 0, b.stderr + b.stdout);
    const stored = pg.admin("SELECT string_agg(api_token, ',' ORDER BY id) FROM creds").match(/plain-tok-91x,(\d{10})/);
    assert.ok(stored, 'the server got the real values');
    const st = await statements();
    const ins = st.find((s) => s.type === 'INSERT' && s.text?.includes('INSERT INTO creds (id, api_token) VALUES (1,'));
    assert.equal(ins?.text, "INSERT INTO creds (id, api_token) VALUES (1, '[REDACTED:column:api_token]')");
    const prepared = st.find((s) => s.prepared && s.text?.includes('INSERT INTO creds'));
    assert.deepEqual(prepared?.params, ['[REDACTED:column:api_token]']);
    const spool = JSON.stringify(await agent.settledEvents());
    assert.ok(!spool.includes('plain-tok-91x'), 'the literal token is in the trail');
    assert.ok(!spool.includes(stored[1]!), 'the bound token is in the trail');
  });

  test("a secret from the job's environment never appears in the trail or the agent's log", async () => {
    const r = await psql([url, '-c', `SELECT '${SECRET}' AS token_value, length('${SECRET}')`]);
    assert.equal(r.status, 0, r.stderr);
    const st = (await statements()).filter((s) => s.text?.includes('REDACTED:env:DEPLOY_TOKEN'));
    assert.ok(st.length > 0, 'the statement text should show where the secret was');
    const spool = JSON.stringify((await agent.settledEvents()));
    assert.ok(!spool.includes(SECRET), 'secret in the spool');
    assert.ok(!agent.log.includes(SECRET), 'secret in the agent log');
  });

  test('sslmode=require works unchanged, and verify-full works for a job that trusts the agent CA', async () => {
    const r = await psql([`${url}?sslmode=require`, '-At', '-c', 'SELECT 1']);
    assert.equal(r.status, 0, r.stderr);
    const ca = path.join(agent.stateDir, 'tls', 'ca.crt');
    const v = await psql([`${url}?sslmode=verify-full&sslrootcert=${ca}`, '-At', '-c', 'SELECT 2']);
    assert.equal(v.status, 0, v.stderr);
    const sessions = (await agent.settledEvents()).filter((e) => e.kind === 'EVENT_KIND_DB_SESSION_START' && e.dbSession.clientTls);
    assert.ok(sessions.length >= 2);
  });

  test('COPY in and out, and a large result, pass through with their row counts', async () => {
    const rows = Array.from({ length: 500 }, (_, i) => `${1000 + i}\tuser${i}\t\\N\t${i}`).join('\n') + '\n';
    const cin = await psql([url, '-c', '\\copy accounts FROM STDIN'], {}, rows);
    assert.equal(cin.status, 0, cin.stderr);
    const cout = await psql([url, '-c', 'COPY (SELECT id FROM accounts ORDER BY id) TO STDOUT']);
    assert.equal(cout.stdout.trim().split('\n').length, 502);
    const big = await psql([url, '-At', '-c', 'SELECT g, md5(g::text) FROM generate_series(1, 200000) g']);
    assert.equal(big.status, 0, big.stderr);
    assert.equal(big.stdout.trim().split('\n').length, 200000);
    const st = (await statements());
    assert.ok(st.some((s) => s.type === 'COPY' && s.rows === '500'));
    assert.ok(st.some((s) => s.type === 'SELECT' && s.rows === '200000'));
  });

  test('a long query cancelled by the client (psql ^C) is cancelled through the proxy', async () => {
    const child = spawn(RUNGUARD, ['run', '--state-dir', agent.stateDir, '--', 'psql', '-X', url, '-c', 'SELECT pg_sleep(30)'], { env: { ...process.env, ...jobEnv }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    // runguard run's shell execs psql in place (Debian's perl wrapper then execs the real client),
    // so the CLI's child is psql; interrupt it once its session is up and the query sent.
    for (let i = 0; i < 300; i++) {
      if (pg.admin("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = 'SELECT pg_sleep(30)'").trim() === '1') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const psqlPid = Number((await runProcess('pgrep', ['-P', String(child.pid)])).stdout.trim());
    // Never signal pid 0 or 1: kill(0) would interrupt this test runner's own process group.
    assert.ok(Number.isInteger(psqlPid) && psqlPid > 1, `psql not found under runguard run (pid ${child.pid})`);
    process.kill(psqlPid, 'SIGINT');
    const code = await new Promise<number | null>((r) => child.on('close', (c) => r(c)));
    assert.notEqual(code, 0);
    assert.match(stderr, /canceling statement due to user request/);
    const st = (await statements());
    assert.ok(st.some((s) => s.type === 'CANCEL REQUEST'));
    assert.ok(st.some((s) => s.type === 'SELECT' && s.errorCode === '57014'));
  });

  test('pgbench with the simple, extended and prepared protocols runs clean through the proxy', async () => {
    // pgbench -i drops its tables first, which the policy (rightly) denies: set up outside the proxy.
    const init = await runProcess('pgbench', ['-i', '-s', '1', '-q', '-h', pg.dir, '-p', String(pg.port), '-U', 'postgres', 'postgres']);
    assert.equal(init.status, 0, init.stderr);
    pg.admin('GRANT SELECT ON ALL TABLES IN SCHEMA public TO PUBLIC');
    for (const mode of ['simple', 'extended', 'prepared']) {
      const r = await agent.run(['pgbench', '-n', '-M', mode, '-c', '2', '-t', '50', '-S', url], jobEnv);
      assert.equal(r.status, 0, `${mode}: ${r.stderr}`);
      assert.match(r.stdout, /number of transactions actually processed: 100\/100/);
    }
    const st = (await statements()).filter((s) => s.objects?.includes('pgbench_accounts') && s.type === 'SELECT');
    assert.ok(st.filter((s) => s.prepared).length >= 200, 'extended and prepared statements are audited');
    assert.ok(st.filter((s) => s.prepared && s.params?.length === 1).length >= 200, 'with their bound parameters');
  });

  test('credential injection: the job connects with no password and never learns it', async () => {
    const r = await psql([`postgresql://whoever@127.0.0.2:${pg.port}/postgres`, '-At', '-c', 'SELECT current_user']);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'scram_user');
    const s = (await agent.settledEvents()).filter((e) => e.kind === 'EVENT_KIND_DB_SESSION_START').at(-1)!;
    assert.equal(s.dbSession.user, 'scram_user');
    assert.equal(s.dbSession.clientUser, 'whoever');
    assert.match(s.dbSession.auth, /^injected:scram-sha-256$/);
    assert.ok(!JSON.stringify((await agent.settledEvents())).includes(pg.passwords.scram_user));
    assert.ok(!agent.log.includes(pg.passwords.scram_user));
  });

  test(variant.native ? 'plaintext sessions were relayed by the native data path' : 'sessions with TLS to the server stay on the JavaScript handler', async () => {
    const closes = (await agent.settledEvents()).filter((e) => e.kind === 'EVENT_KIND_CONNECTION_CLOSE' && e.connectionClose.protocol === 'postgres');
    const native = closes.filter((e) => e.connectionClose.relay === 'native');
    if (!variant.native) return assert.equal(native.length, 0);
    // All but the sessions that never authenticate (cancel requests) or use TLS with the job.
    assert.ok(native.length >= closes.length - 6, `${native.length} of ${closes.length} sessions native`);
    assert.ok(!agent.log.includes('would have handled differently'), 'the relay and the handler agree on every message');
  });
});
