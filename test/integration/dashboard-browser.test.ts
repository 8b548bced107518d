// The dashboard in a real browser (Debian's chromium through playwright-core) over the whole real
// path: a GitHub Actions job runs psql through the eBPF redirect and the agent, under the shipped
// examples/policy.yaml; events go over mTLS gRPC to a real collector, whose dashboard a DBA uses to
// sign in, find the job, open a statement (its proof checked in the browser), and approve the
// ALTER TABLE the job is waiting on, after which the job goes on. Screenshots of each step are saved
// in test-artifacts/screenshots/.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { AgentFixture, ROOT, RUNGUARD, runProcess, type ProcResult } from '../helpers/agent.js';
import { startPostgres, type PgServer } from '../helpers/postgres.js';
import { bpfUnavailableReason } from '../helpers/env.js';
import { CollectorProcess, freePort, initPki, saveArtifact, waitFor, type Pki } from '../helpers/collector.js';
import { launchBrowser, screenshot } from '../helpers/browser.js';
import { tempDir } from '../helpers/tmp.js';

const skip = process.env.RUNGUARD_REQUIRE_BPF === '1' ? false : bpfUnavailableReason();
const PASSWORD = 'dba-password-42';
const JOB_ENV = {
  GITHUB_ACTIONS: 'true', GITHUB_REPOSITORY: 'acme/ledger', GITHUB_WORKFLOW: 'release', GITHUB_RUN_ID: '7301',
  GITHUB_JOB: 'migrate', GITHUB_ACTOR: 'release-bot', GITHUB_REF: 'refs/heads/main', GITHUB_SHA: '5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed',
  PGCONNECT_TIMEOUT: '10',
};
// What the job does: set up, read (masked), try a DROP (denied: the job notes it and goes on), then an
// ALTER TABLE that policy holds until a DBA approves it, then one more statement.
const JOB = `set -u
P="psql -X -v ON_ERROR_STOP=1 -At $URL"
$P -c "CREATE TABLE accounts (id int, email text); INSERT INTO accounts VALUES (1, 'ada@example.com')"
$P -c "SELECT id, email FROM accounts"
$P -c "SELECT '<img src=x onerror=alert(1)>' AS markup"
if $P -c "DROP TABLE accounts" 2>drop.err; then echo "DROP RAN"; exit 3; fi
echo "drop refused: $(tr -d '\\n' < drop.err)"
$P -c "ALTER TABLE accounts ADD COLUMN note text"
$P -c "SELECT 'after approval: ' || count(*) FROM information_schema.columns WHERE table_name = 'accounts' AND column_name = 'note'"
`;

describe('the dashboard in a browser', { skip }, () => {
  let pg: PgServer;
  let pki: Pki;
  let collector: CollectorProcess;
  let agent: AgentFixture;
  let browser: Browser;
  let work: string;
  let job: Promise<ProcResult> | undefined;
  const pageErrors: string[] = [];

  const signIn = async (ctx: BrowserContext, user: string): Promise<Page> => {
    const page = await ctx.newPage();
    page.on('pageerror', (e) => pageErrors.push(e.message));
    page.on('dialog', (d) => {
      pageErrors.push(`a dialog opened: ${d.message()}`);
      void d.dismiss();
    });
    await page.goto(collector.url + '/');
    await page.fill('input[name=user]', user);
    await page.fill('input[name=password]', PASSWORD);
    await page.click('form.login button[type=submit]');
    await page.waitForSelector('[data-test=who]');
    return page;
  };

  before(async () => {
    const why = bpfUnavailableReason();
    if (why) throw new Error(`eBPF required but unavailable: ${why}`);
    pg = startPostgres();
    work = tempDir('rg-dashboard-');
    chmodSync(work, 0o755);
    pki = await initPki(work, 'test-agent');
    const dataDir = path.join(work, 'data');
    for (const [name, role, group] of [['dana', 'approver', 'dba'], ['vic', 'viewer', 'ops']] as const) {
      const r = await runProcess(RUNGUARD, ['user', 'add', '--data-dir', dataDir, '--name', name, '--role', role, '--group', group], { RUNGUARD_PASSWORD: PASSWORD });
      assert.equal(r.status, 0, r.stderr);
    }
    const grpcPort = await freePort();
    let httpPort: number;
    do httpPort = await freePort(); while (httpPort === grpcPort);
    collector = await new CollectorProcess({ dataDir, tlsDir: pki.caDir, grpcPort, httpPort }).start();
    const config = path.join(work, 'agent.yaml');
    writeFileSync(config, `protocols:\n  ${pg.port}: postgres\n`);
    agent = await new AgentFixture({
      intercept: ['127.0.0.2/32'],
      extraArgs: ['--config', config, '--policy', path.join(ROOT, 'examples/policy.yaml'), '--collector', collector.target, '--tls', pki.agentDir],
    }).start();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    if (job) await job.catch(() => {});
    saveArtifact('dashboard-agent.log', agent?.log);
    saveArtifact('dashboard-collector.log', collector?.log);
    await agent?.cleanup();
    await collector?.stop();
    pg?.stop();
  });

  test('sign-in refuses a wrong password and sets a session cookie scripts cannot read', async () => {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    await page.goto(collector.url + '/');
    await page.fill('input[name=user]', 'dana');
    await page.fill('input[name=password]', 'not-her-password');
    await page.click('form.login button[type=submit]');
    await page.waitForSelector('form.login [role=alert]:has-text("wrong user name or password")');
    assert.equal((await ctx.cookies()).length, 0);
    await screenshot(page, '01-sign-in-refused');

    const signed = await signIn(ctx, 'dana');
    const [cookie] = await ctx.cookies();
    assert.equal(cookie?.name, 'rg_session');
    assert.equal(cookie?.httpOnly, true);
    assert.equal(cookie?.secure, true);
    assert.equal(cookie?.sameSite, 'Strict');
    assert.equal(await signed.evaluate(() => document.cookie), '', 'the session cookie is not readable by scripts');
    // A write without the CSRF token is refused even with the cookie.
    const forged = await signed.evaluate(async () => (await fetch('/api/logout', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })).status);
    assert.equal(forged, 403);
    await ctx.close();
  });

  test('a page that answers late does not draw over the page the user went to meanwhile', async () => {
    // What a quick click after sign-in does on a busy collector: the overview's queries are still
    // running when the user opens Approvals. The overview's answer is held back here (the real
    // answer, later) so the order does not depend on the machine's speed.
    const ctx = await browser.newContext();
    const page = await signIn(ctx, 'vic');
    let overviewAnswered!: () => void;
    const answered = new Promise<void>((resolve) => (overviewAnswered = resolve));
    await page.route('**/api/overview*', async (route) => {
      await new Promise((r) => setTimeout(r, 1000));
      await route.continue();
      overviewAnswered();
    });
    await page.goto(`${collector.url}/#/`);
    await page.click('nav a:has-text("Approvals")');
    await page.waitForSelector('main h1:has-text("Approvals")');
    await answered;
    // The overview's answer reached the page: give its rendering a moment, then look.
    await page.waitForTimeout(300);
    assert.deepEqual(await page.locator('main h1').allInnerTexts(), ['Approvals'], 'the overview drew over the approvals page');
    assert.equal(await page.locator('[data-test=live-feed]').count(), 0);
    assert.ok(await page.locator('main [data-test=pending]').isVisible());
    await ctx.close();
  });

  test('a DBA approves the held ALTER TABLE in the dashboard and the job goes on; the denied DROP failed the statement', async () => {
    const script = path.join(work, 'job.sh');
    writeFileSync(script, JOB);
    chmodSync(script, 0o755);
    job = agent.run(['bash', '-c', `cd ${work} && URL=postgresql://postgres@127.0.0.2:${pg.port}/postgres bash ${script}`], JOB_ENV);
    let ended: ProcResult | undefined;
    void job.then((r) => (ended = r));

    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await signIn(ctx, 'dana');
    await page.click('nav a:has-text("Approvals")');
    const card = page.locator('[data-test=pending] [data-test=approval]', { hasText: 'ALTER TABLE accounts ADD COLUMN note text' });
    let pageText = '';
    // Should it never show, the message says which side lost it: the agent (no hold logged) or the page.
    const held = () => (/operation held for approval/.test(agent.log) ? 'the agent held it' : 'the agent logged no hold');
    await waitFor(() => `the held ALTER TABLE in the approvals queue (${held()}; the page shows: ${pageText})${ended ? ` (the job ended: ${ended.status} ${ended.stdout} ${ended.stderr})` : ''}`,
      async () => {
        pageText = (await page.locator('main').innerText()).slice(0, 300);
        return !ended && (await card.count()) === 1;
      }, 30_000, 250);
    // What an approver needs to judge it: job, commit, command line, statement, rule.
    const text = await card.innerText();
    assert.match(text, /acme\/ledger · release · migrate #7301/);
    assert.match(text, /5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed/);
    assert.match(text, /psql -X -v ON_ERROR_STOP=1 -At postgresql:/);
    assert.match(text, /review-schema-changes/);
    assert.match(text, /from group dba/);
    await screenshot(page, '02-approval-pending');
    assert.equal(ended, undefined, 'the job waits while the statement is held');

    await card.getByRole('button', { name: 'Approve' }).click();
    const result = await Promise.race([job, new Promise<never>((_, rej) => setTimeout(() => rej(new Error('the job did not finish after approval')), 30_000))]);
    assert.equal(result.status, 0, `job failed: ${result.stdout}\n${result.stderr}`);
    assert.match(result.stdout, /after approval: 1/);
    // The denied DROP: PostgreSQL's own error path, SQLSTATE 42501 naming the rule.
    assert.match(result.stdout, /drop refused: .*42501|drop refused: .*no-drop-or-truncate/);
    assert.match(result.stdout, /no-drop-or-truncate/);
    assert.doesNotMatch(result.stdout, /ada@example\.com/, 'the email came back masked');
    await page.waitForSelector('.approval.state-approved:has-text("ALTER TABLE accounts")');
    await screenshot(page, '03-approval-approved');
    await ctx.close();
  });

  test('find the job, follow it to the denied statement and its browser-checked proof', async () => {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await signIn(ctx, 'vic');
    // The decisions chart draws the hour that holds what just happened (the newest, partial bucket).
    await waitFor('the denied DROP in the decisions chart', async () => {
      await page.goto(`${collector.url}/#/`);
      await page.waitForSelector('svg.chart');
      return (await page.locator('svg.chart rect.fill-deny').count()) >= 1;
    }, 30_000, 500);
    assert.ok(await page.locator('svg.chart rect.fill-review').count() >= 1, 'the reviewed ALTER TABLE is in the chart too');
    await screenshot(page, '04-overview');
    // The job's events reach the collector shortly after it ends; filter the jobs list by repository.
    await waitFor('the job in the jobs list', async () => {
      await page.goto(`${collector.url}/#/jobs?repository=acme%2Fledger`);
      await page.waitForSelector('[data-test=jobs] tbody tr');
      return (await page.locator('[data-test=jobs] tbody tr a', { hasText: 'acme/ledger' }).count()) === 1
        && (await page.locator('[data-test=jobs] tbody tr', { hasText: 'acme/ledger' }).innerText()).includes('release-bot');
    }, 30_000, 500);
    await screenshot(page, '05-jobs');
    await page.click('[data-test=jobs] tbody tr a:has-text("acme/ledger")');
    await page.waitForSelector('[data-test=process-tree]');
    assert.match(await page.locator('[data-test=process-tree]').innerText(), /psql -X -v ON_ERROR_STOP=1/);
    await screenshot(page, '06-job');

    // The session that ran the DROP: its statement is denied with the rule and SQLSTATE.
    await page.goto(`${collector.url}/#/events?repository=acme%2Fledger&decision=deny`);
    const row = page.locator('[data-test=search-results] tbody tr', { hasText: 'DROP TABLE accounts' });
    await row.waitFor();
    assert.match(await row.innerText(), /deny/);
    await row.locator('a').first().click();
    await page.waitForSelector('[data-test=proof].ok');
    assert.match(await page.locator('[data-test=proof]').innerText(), /Verified in your browser/);
    const stored = await page.locator('pre.json').innerText();
    assert.match(stored, /"rule": "no-drop-or-truncate"/);
    assert.match(stored, /"errorCode": "42501"/);
    await screenshot(page, '07-denied-statement');

    // The session view lists every statement of that psql run with its decision.
    await page.click('a:has-text("session")');
    await page.waitForSelector('[data-test=statements]');
    assert.match(await page.locator('[data-test=statements]').innerText(), /DROP TABLE accounts[\s\S]*deny/);

    // A viewer sees the approvals but cannot decide.
    await page.click('nav a:has-text("Approvals")');
    await page.waitForSelector('.approval.state-approved');
    assert.equal(await page.getByRole('button', { name: 'Approve' }).count(), 0);

    // Markup from a job is shown as text, never run: the SELECT of an <img onerror> made no element.
    await page.goto(`${collector.url}/#/events?repository=acme%2Fledger&q=onerror`);
    // The statement, and psql's command line that carried it.
    await page.locator('[data-test=search-results] tbody tr', { hasText: '<img src=x onerror=alert(1)>' }).first().waitFor();
    assert.ok(await page.locator('[data-test=search-results] tbody tr', { hasText: 'statement' }).count() >= 1);
    assert.equal(await page.locator('main img').count(), 0);
    await screenshot(page, '08-search');

    // The agent's heartbeat: eBPF attached, connected, witnessing.
    await page.click('nav a:has-text("Agents")');
    const agentRow = page.locator('[data-test=agents] tr[data-agent=test-agent]');
    await agentRow.waitFor();
    const agentText = await agentRow.innerText();
    assert.match(agentText, /attached|reused/);
    assert.match(agentText, /connected/);
    await screenshot(page, '09-agents');

    await page.click('nav a:has-text("Integrity")');
    await page.waitForSelector('[data-test=checkpoint]');
    await screenshot(page, '10-integrity');
    assert.deepEqual(pageErrors, []);
    await ctx.close();
  });
});
