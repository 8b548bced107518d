// Just-in-time approvals end to end with real parts: a real collector (with users and a webhook), the
// real agent with eBPF redirect shipping to it, a real PostgreSQL on 127.0.0.2 and the real psql as a
// GitHub Actions job. A statement under a review rule is held (psql waits, the connection stays
// open), listed by `runguard approvals`, and approved, denied or left to expire with the CLI.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { AgentFixture, RUNGUARD, runProcess, type ProcResult } from '../helpers/agent.js';
import { startPostgres, type PgServer } from '../helpers/postgres.js';
import { bpfUnavailableReason } from '../helpers/env.js';
import { CollectorProcess, freePort, initPki, saveArtifact, shipperState, sleep, verifyJson, waitFor, type Pki } from '../helpers/collector.js';
import { tempDir } from '../helpers/tmp.js';

const skip = process.env.RUNGUARD_REQUIRE_BPF === '1' ? false : bpfUnavailableReason();
const PASSWORD = 'approver-password-1';
const JOB_ENV = {
  GITHUB_ACTIONS: 'true', GITHUB_REPOSITORY: 'acme/payments', GITHUB_WORKFLOW: 'migrate', GITHUB_RUN_ID: '91',
  GITHUB_JOB: 'db', GITHUB_ACTOR: 'carol', GITHUB_REF: 'refs/heads/main', GITHUB_SHA: 'c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00',
  PGCONNECT_TIMEOUT: '10',
};
const POLICY = `version: 1
default: allow
rules:
  - name: review-quick
    description: This one times out fast.
    match: { protocol: postgres, statement: ALTER TABLE, tables: [expiring] }
    action: review
    review: { approvers: dba, approvals: 1, timeout: 2s }
  - name: review-four-eyes
    match: { protocol: postgres, statement: ALTER TABLE, tables: [ledger] }
    action: review
    review: { approvers: dba, approvals: 2, timeout: 2m }
  - name: review-schema-changes
    description: ALTER TABLE from CI needs a DBA's approval.
    match: { protocol: postgres, statement: ALTER TABLE }
    action: review
    review: { approvers: dba, approvals: 1, timeout: 2m }
`;

interface Listed { id: string; state: string; job: Record<string, string>; process: { pid?: number; exe?: string }; target: { address: string; port: number }; operation: { type: string; text: string }; rule: string; reason?: string }

describe('just-in-time approvals through the collector', { skip }, () => {
  let pg: PgServer;
  let pki: Pki;
  let collector: CollectorProcess;
  let agent: AgentFixture;
  let work: string;
  let url: string;
  let dataDir: string;
  let hook: http.Server;
  const hooked: { text: string; blocks?: unknown[] }[] = [];

  const psql = (sql: string, extra: string[] = []): Promise<ProcResult> =>
    agent.run(['psql', '-X', '-v', 'ON_ERROR_STOP=1', '-v', 'VERBOSITY=verbose', ...extra, url, '-c', sql], JOB_ENV);
  const cli = (args: string[], user?: string) =>
    runProcess(RUNGUARD, [...args, '--collector', collector.url, ...(user ? ['--user', user] : [])], { RUNGUARD_PASSWORD: PASSWORD });
  const pending = async (): Promise<Listed[]> => {
    const r = await cli(['approvals', '--json'], 'dana');
    assert.equal(r.status, 0, r.stderr);
    return r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Listed);
  };
  /** Waits for the held statement containing `text` to be listed; returns it. A job that ends first fails the wait. */
  const heldRequest = (text: string, job?: Promise<ProcResult>) => {
    let ended: ProcResult | undefined;
    void job?.then((r) => (ended = r));
    return waitFor(() => `a pending approval for "${text}"${ended ? ` (the job ended instead: ${ended.status} ${ended.stderr})` : ''}`, async () => {
      if (ended) throw new Error(`the job ended before its statement was held: status ${ended.status}: ${ended.stderr}`);
      return (await pending()).find((p) => p.operation.text.includes(text));
    }, 20_000, 200);
  };
  const settled = <T>(p: Promise<T>) => Promise.race([p.then(() => true), sleep(0).then(() => false)]);

  before(async () => {
    const why = bpfUnavailableReason();
    if (why) throw new Error(`eBPF required but unavailable: ${why}`);
    pg = startPostgres();
    url = `postgresql://postgres@127.0.0.2:${pg.port}/postgres`;
    pg.admin('CREATE TABLE accounts (id int); CREATE TABLE expiring (id int); CREATE TABLE ledger (id int)');
    work = tempDir('rg-approvals-');
    pki = await initPki(work, 'test-agent');
    dataDir = path.join(work, 'data');
    // The approvers: two DBAs, one outsider, and one named like the job's actor.
    for (const [name, group] of [['dana', 'dba'], ['dmitri', 'dba'], ['otto', 'ops'], ['carol', 'dba']] as const) {
      const r = await runProcess(RUNGUARD, ['user', 'add', '--data-dir', dataDir, '--name', name, '--role', 'approver', '--group', group], { RUNGUARD_PASSWORD: PASSWORD });
      assert.equal(r.status, 0, r.stderr);
    }
    hook = http.createServer((req, res) => {
      let body = '';
      req.on('data', (d) => (body += d));
      req.on('end', () => {
        hooked.push(JSON.parse(body));
        res.end('ok');
      });
    });
    await new Promise<void>((r) => hook.listen(0, '127.0.0.1', () => r()));
    const grpcPort = await freePort();
    let httpPort: number;
    do httpPort = await freePort(); while (httpPort === grpcPort);
    collector = await new CollectorProcess({
      dataDir, tlsDir: pki.caDir, grpcPort, httpPort,
      extraArgs: ['--approval-webhook', `http://127.0.0.1:${(hook.address() as { port: number }).port}/hook`],
    }).start();
    const policy = path.join(work, 'policy.yaml');
    writeFileSync(policy, POLICY);
    const config = path.join(work, 'agent.yaml');
    writeFileSync(config, `protocols:\n  ${pg.port}: postgres\n`);
    agent = await new AgentFixture({
      intercept: ['127.0.0.2/32'],
      extraArgs: ['--config', config, '--policy', policy, '--collector', collector.target, '--tls', pki.agentDir],
    }).start();
  });

  after(async () => {
    saveArtifact('approvals-agent.log', agent?.log);
    saveArtifact('approvals-collector.log', collector?.log);
    await agent?.cleanup();
    await collector?.stop();
    hook?.close();
    pg?.stop();
  });

  test('a held ALTER TABLE waits, is listed with its job, is refused to the actor and to outsiders, and runs once approved; other sessions go on', async () => {
    const job = psql('ALTER TABLE accounts ADD COLUMN note text');
    const req = await heldRequest('ALTER TABLE accounts ADD COLUMN note', job);
    assert.match(req.id, /^ap-[0-9a-f]{12}$/);
    assert.equal(req.state, 'pending');
    assert.equal(req.rule, 'review-schema-changes');
    assert.equal(req.operation.type, 'ALTER TABLE');
    assert.equal(req.job.repository, 'acme/payments');
    assert.equal(req.job.actor, 'carol');
    assert.equal(req.target.address, '127.0.0.2');
    assert.equal(req.target.port, pg.port);
    await sleep(500);
    assert.equal(await settled(job), false, 'psql is held');

    // While this session is held, another session of the same job runs normally.
    const other = await psql('SELECT 40 + 2 AS answer', ['-At']);
    assert.equal(other.status, 0, other.stderr);
    assert.equal(other.stdout.trim(), '42');

    const self = await cli(['approve', req.id], 'carol');
    assert.equal(self.status, 1);
    assert.match(self.stderr, /self-approval refused/);
    const outsider = await cli(['approve', req.id], 'otto');
    assert.equal(outsider.status, 1);
    assert.match(outsider.stderr, /not in the approvers group "dba"/);
    const unknown = await cli(['approve', 'ap-000000000000'], 'dana');
    assert.match(unknown.stderr, /no approval request ap-000000000000/);
    const wrongPassword = await runProcess(RUNGUARD, ['approve', req.id, '--collector', collector.url, '--user', 'dana'], { RUNGUARD_PASSWORD: 'nope-nope' });
    assert.match(wrongPassword.stderr, /wrong user name or password/);
    assert.equal(await settled(job), false, 'refused votes decide nothing');

    const ok = await cli(['approve', req.id], 'dana');
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stdout, /approved by dana/);
    const r = await job;
    assert.equal(r.status, 0, r.stderr);
    assert.equal(pg.admin("SELECT count(*) FROM information_schema.columns WHERE table_name = 'accounts' AND column_name = 'note'").trim(), '1');
    const again = await cli(['deny', req.id], 'dmitri');
    assert.match(again.stderr, /already approved/);
    assert.ok(hooked.some((h) => h.text.includes(req.id) && h.text.includes('ALTER TABLE') && Array.isArray(h.blocks)), 'the webhook got a Slack-style payload');
  });

  test('a denied statement fails with 42501 and the reason; an expired one is denied after its timeout', async () => {
    const job = psql('ALTER TABLE accounts ADD COLUMN other text');
    const req = await heldRequest('ADD COLUMN other', job);
    const d = await cli(['deny', req.id, '--reason', 'not during the freeze'], 'dmitri');
    assert.equal(d.status, 0, d.stderr);
    const r = await job;
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /42501/);
    assert.match(r.stderr, /denied by dmitri/);
    assert.match(r.stderr, /not during the freeze/);
    assert.equal(pg.admin("SELECT count(*) FROM information_schema.columns WHERE column_name = 'other'").trim(), '0');

    const started = Date.now();
    const e = await psql('ALTER TABLE expiring ADD COLUMN late text');
    assert.notEqual(e.status, 0);
    assert.match(e.stderr, /not approved within 2s/);
    assert.ok(Date.now() - started >= 2000, 'held until the timeout');
    const expired = (await cli(['approvals', '--json', '--state', 'expired'], 'dana')).stdout;
    assert.match(expired, /ALTER TABLE expiring/);
  });

  test('a rule needing two approvals waits for two distinct approvers', async () => {
    const job = psql('ALTER TABLE ledger ADD COLUMN memo text');
    const req = await heldRequest('ALTER TABLE ledger', job);
    const first = await cli(['approve', req.id], 'dana');
    assert.equal(first.status, 0, first.stderr);
    assert.match(first.stdout, /1 of 2 approvals, still pending/);
    const twice = await cli(['approve', req.id], 'dana');
    assert.equal(twice.status, 1);
    assert.match(twice.stderr, /already approved/);
    await sleep(300);
    assert.equal(await settled(job), false, 'one approval of two holds on');
    const second = await cli(['approve', req.id], 'dmitri');
    assert.match(second.stdout, /approved by dana, dmitri/);
    const r = await job;
    assert.equal(r.status, 0, r.stderr);
  });

  test('requests and decisions are in the agent\'s signed chain and in the collector, and the log verifies', async () => {
    const events = await agent.events();
    const requested = events.filter((e) => e.kind === 'EVENT_KIND_APPROVAL_REQUESTED');
    const decided = events.filter((e) => e.kind === 'EVENT_KIND_APPROVAL_DECIDED');
    assert.equal(requested.length, 4);
    assert.deepEqual(decided.map((e) => e.approvalDecided.outcome), ['approved', 'denied', 'expired', 'approved']);
    assert.deepEqual(decided[0]!.approvalDecided.approvers, ['dana']);
    assert.deepEqual(decided[1]!.approvalDecided.approvers, ['dmitri']);
    assert.equal(decided[1]!.approvalDecided.reason, 'not during the freeze');
    assert.deepEqual(decided[3]!.approvalDecided.approvers, ['dana', 'dmitri']);
    assert.equal(requested[0]!.job.actor, 'carol');
    assert.equal(requested[2]!.approvalRequested.timeoutMs, '2000');
    const statements = events.filter((e) => e.kind === 'EVENT_KIND_STATEMENT' && e.statement.type === 'ALTER TABLE').map((e) => e.statement);
    assert.deepEqual(statements.map((s) => [s.decision.action, s.decision.outcome]), [['review', 'approved'], ['review', 'denied'], ['review', 'expired'], ['review', 'approved']]);
    assert.equal(statements[0]!.commandTag, 'ALTER TABLE');
    assert.equal(statements[1]!.errorCode, '42501');
    assert.equal(statements[0]!.decision.approvalId, requested[0]!.approvalRequested.approvalId);

    const last = Math.max(...events.map((e) => Number(e.seq)));
    await waitFor('the agent to ship its events', () => shipperState(agent.stateDir).ackedSeq >= last, 20_000, 100);
    const stored = (await collector.get('/events?kind=APPROVAL_DECIDED')).split('\n').filter(Boolean).map((l) => JSON.parse(l));
    assert.equal(stored.length, 4);
    await waitFor('a checkpoint covering them', async () => (await collector.checkpoint()).size >= last, 10_000, 200);
    const v = await verifyJson(['--collector', collector.url, '--key', pki.pub]);
    assert.deepEqual(v.report.problems, []);
    assert.equal(v.status, 0);
  });

  test('a pending request survives a collector restart; the held job re-attaches and goes on once approved', async () => {
    const job = psql('ALTER TABLE accounts ADD COLUMN after_restart text');
    const req = await heldRequest('after_restart', job);
    const stopped = await collector.stop('SIGTERM', 10_000);
    assert.ok(stopped.exited, 'the collector stops while a request is held');
    await sleep(1500);
    assert.equal(await settled(job), false, 'still held while the collector is down');
    await collector.start();
    assert.equal((await heldRequest('after_restart')).id, req.id);
    await sleep(2500); // the agent's stream re-attaches (it retries every second)
    const ok = await cli(['approve', req.id], 'dmitri');
    assert.equal(ok.status, 0, ok.stderr);
    const r = await job;
    assert.equal(r.status, 0, r.stderr);
    assert.equal(pg.admin("SELECT count(*) FROM information_schema.columns WHERE column_name = 'after_restart'").trim(), '1');
  });

  test('a held statement whose client disconnects is cancelled: gone from the queue, recorded, and refused to approvers with 409', async () => {
    const api = async (method: string, p: string, body?: unknown) => {
      const res = await fetch(`${collector.url}/api/approvals${p}`, {
        method, headers: { authorization: `Basic ${Buffer.from(`dana:${PASSWORD}`).toString('base64')}`, 'content-type': 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      return { status: res.status, body: (await res.json()) as any };
    };
    const job = psql('ALTER TABLE accounts ADD COLUMN abandoned text');
    const req = await heldRequest('ADD COLUMN abandoned', job);
    const listed = (await api('GET', `/${req.id}`)).body as Listed;
    const pid = listed.process.pid!;
    assert.ok(pid > 1, `the request names the client process (${JSON.stringify(listed.process)})`);
    process.kill(pid, 'SIGKILL');
    const r = await job;
    assert.notEqual(r.status, 0, 'the killed client\'s job fails');

    const cancelled = await waitFor('the request to be cancelled', async () => {
      const one = await api('GET', `/${req.id}`);
      return one.body.state === 'cancelled' ? one.body : undefined;
    }, 10_000, 100);
    assert.equal(cancelled.reason, 'client disconnected');
    assert.ok(!(await pending()).some((p) => p.id === req.id), 'no longer pending');
    assert.ok((await api('GET', '?state=cancelled')).body.some((p: Listed) => p.id === req.id), 'listed under state=cancelled');

    const late = await api('POST', `/${req.id}/approve`, {});
    assert.equal(late.status, 409);
    assert.equal(late.body.error, 'cancelled');
    assert.match(late.body.message, /was cancelled by its agent \(client disconnected\)/);
    const cliLate = await cli(['approve', req.id], 'dmitri');
    assert.equal(cliLate.status, 1);
    assert.match(cliLate.stderr, /cancelled by its agent/);
    assert.equal(pg.admin("SELECT count(*) FROM information_schema.columns WHERE column_name = 'abandoned'").trim(), '0');

    const events = await waitFor('the agent to record the outcome', async () => {
      const all = await agent.events();
      return all.some((e) => e.kind === 'EVENT_KIND_APPROVAL_DECIDED' && e.approvalDecided.approvalId === req.id) ? all : undefined;
    }, 10_000, 100);
    const decided = events.find((e) => e.kind === 'EVENT_KIND_APPROVAL_DECIDED' && e.approvalDecided.approvalId === req.id)!;
    assert.equal(decided.approvalDecided.outcome, 'cancelled');
    assert.equal(decided.approvalDecided.reason, 'client disconnected');
    const close = events.find((e) => e.kind === 'EVENT_KIND_CONNECTION_CLOSE' && e.sessionId === decided.sessionId);
    assert.ok(close, 'the session\'s close is recorded');
    assert.ok(Number(close.seq) > Number(decided.seq), 'the outcome is recorded before the session\'s close');
  });
});
