// The native data path (agent/native) against the things that could make a remembered decision
// wrong: a policy reload in the middle of a session, and results whose masking depends on the rows.
// Real PostgreSQL on 127.0.0.2, real psql through the eBPF redirect, plaintext both ways so that
// every session reaches the relay once authenticated.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AgentFixture, ROOT } from '../helpers/agent.js';
import * as msg from '../../agent/pg/messages.js';
import { redactedParam } from '../../agent/pg/column-literals.js';
import { startPostgres, type PgServer } from '../helpers/postgres.js';
import { bpfUnavailableReason } from '../helpers/env.js';
import { waitFor } from '../helpers/wait.js';
import { statFields, threadNice } from '../helpers/proc.js';
import { tempDir } from '../helpers/tmp.js';

const skip = process.env.RUNGUARD_REQUIRE_BPF === '1' ? false : bpfUnavailableReason();

const ALLOW = `version: 1
default: allow
rules:
  - name: mask-contacts
    match: { protocol: postgres }
    action: mask
    mask: { columns: [secret_note], detectors: [email] }
`;
const DENY = `version: 1
default: allow
rules:
  - name: no-reading-contacts
    description: contacts are off limits now
    match: { protocol: postgres, tables: [contacts] }
    action: deny
`;

const RELAY_THREADS = 2;

/** The agent's relay threads by tid, and cpu time each has used (clock ticks). */
function relayThreads(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    if (!stat.includes('(runguard-relay)')) continue;
    const f = statFields(stat);
    out.set(tid, f[11]! + f[12]!);
  }
  return out;
}

describe('the native relay repeats only decisions that still hold', { skip }, () => {
  let pg: PgServer;
  let agent: AgentFixture;
  let work: string;
  let url: string;
  let policy: string;

  before(async () => {
    const why = bpfUnavailableReason();
    if (why) throw new Error(`eBPF required but unavailable: ${why}`);
    pg = startPostgres({ ssl: false });
    work = tempDir('rg-pgnative-');
    url = `postgresql://postgres@127.0.0.2:${pg.port}/postgres?sslmode=disable`;
    policy = path.join(work, 'policy.yaml');
    writeFileSync(policy, ALLOW);
    writeFileSync(path.join(work, 'allow.yaml'), ALLOW);
    writeFileSync(path.join(work, 'deny.yaml'), DENY);
    const config = path.join(work, 'agent.yaml');
    writeFileSync(config, `protocols:\n  ${pg.port}: postgres\nserverTls: disable\nrelayThreads: ${RELAY_THREADS}\n`);
    pg.admin("CREATE TABLE contacts (id int PRIMARY KEY, note text, secret_note text); GRANT SELECT ON contacts TO PUBLIC");
    pg.admin("INSERT INTO contacts SELECT i, CASE WHEN i % 3 = 0 THEN 'mail u' || i || '@example.com' ELSE 'plain ' || i END, 's' || i FROM generate_series(1, 3000) i");
    agent = new AgentFixture({ intercept: ['127.0.0.2/32'], extraArgs: ['--config', config, '--policy', policy] });
    await agent.start();
  });

  after(async () => {
    copyFileSync(path.join(work, 'allow.yaml'), policy);
    await agent?.cleanup();
    pg?.stop();
  });

  /**
   * The last session ran on the native relay, which summarised min..max statements and encoded the
   * events of `encoded` (a range) of them itself; no secret leaked, no divergence.
   */
  function assertSummarised(events: Awaited<ReturnType<AgentFixture['events']>>, min: number, max: number, secret: string,
    encoded: [number, number] = [0, 0]): void {
    const close = events.filter((e) => e.kind === 'EVENT_KIND_CONNECTION_CLOSE').at(-1)!.connectionClose;
    assert.equal(close.relay, 'native');
    const n = Number(close.relaySummarized);
    assert.ok(n >= min && n <= max, `summarised: ${close.relaySummarized}`);
    const e = Number(close.relayEncoded ?? 0);
    assert.ok(e >= encoded[0] && e <= encoded[1], `encoded by the relay: ${e}, expected ${encoded[0]}..${encoded[1]}`);
    assert.ok(!JSON.stringify(events).includes(secret), 'secret in the spool');
    assert.ok(!agent.log.includes(secret), 'secret in the agent log');
    assert.ok(!agent.log.includes('would have handled differently'));
  }

  /** The statements of the last session that closed, from the settled spool. */
  function lastSessionStatements(events: Awaited<ReturnType<AgentFixture['events']>>): Record<string, any>[] {
    const session = events.filter((e) => e.kind === 'EVENT_KIND_CONNECTION_CLOSE').at(-1)!.sessionId;
    return events.filter((e) => e.kind === 'EVENT_KIND_STATEMENT' && e.sessionId === session).map((e) => e.statement);
  }

  /** One execution of `sql` in the unnamed portal, parsed first: what drivers that bind values send. */
  const execution = (sql: string, value: string, maxRows = 0): Buffer =>
    Buffer.concat([msg.parse('', sql), msg.bind({ params: [value] }), msg.describe('P'), msg.execute('', maxRows), msg.sync()]);

  /** Sends each step and waits for its answer (test/fixtures/raw-client.py); the answers as latin1 text. */
  async function rawSession(steps: Buffer[], env: Record<string, string> = {}): Promise<string[]> {
    const r = await agent.run(['python3', path.join(ROOT, 'test/fixtures/raw-client.py'), '127.0.0.2', String(pg.port), ...steps.map((b) => b.toString('hex'))], env);
    return (JSON.parse(r.stdout.trim()) as { received: string[] }).received.map((h) => Buffer.from(h, 'hex').toString('latin1'));
  }

  test('the audit side of the agent stays on one cpu; the relay threads may run on any', () => {
    const pid = agent.proc!.pid!;
    const threads = readdirSync(`/proc/${pid}/task`).map((tid) => {
      const status = readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
      return { name: /^Name:\s*(.*)$/m.exec(status)![1]!, cpus: /^Cpus_allowed_list:\s*(.*)$/m.exec(status)![1]! };
    });
    const all = /^Cpus_allowed_list:\s*(.*)$/m.exec(readFileSync('/proc/self/status', 'utf8'))![1]!;
    const relay = threads.filter((t) => t.name === 'runguard-relay');
    assert.equal(relay.length, RELAY_THREADS, 'relayThreads relay threads');
    for (const t of relay) assert.equal(t.cpus, all, 'a relay thread keeps every cpu the host allows');
    const highest = all.split(',').at(-1)!.split('-').at(-1)!;
    const others = threads.filter((t) => t.name !== 'runguard-relay');
    assert.ok(others.length >= 5, 'main thread, V8 helpers and the libuv pool');
    for (const t of others) assert.equal(t.cpus, highest, `${t.name} is kept on cpu ${highest}`);
  });

  test('concurrent sessions are spread over the relay threads', async () => {
    const pid = agent.proc!.pid!;
    const script = path.join(work, 'select1.sql');
    writeFileSync(script, 'SELECT 1;\n');
    const before = relayThreads(pid);
    // Two clients at once, each busy for the whole run: on one thread, the other would stay idle.
    const r = await agent.run(['pgbench', '-n', '-c', String(RELAY_THREADS), '-j', String(RELAY_THREADS), '-T', '3', '-f', script, url]);
    assert.equal(r.status, 0, r.stderr);
    const used = [...relayThreads(pid)].map(([tid, ticks]) => ticks - (before.get(tid) ?? 0));
    assert.equal(used.length, RELAY_THREADS);
    const most = Math.max(...used);
    assert.ok(most >= 10, `the relay threads forwarded the run (cpu ticks ${used.join(', ')})`);
    for (const u of used) assert.ok(u >= most / 4, `every relay thread carries a session (cpu ticks ${used.join(', ')})`);
  });

  test('the main thread runs nicer only while every session is on the relay', async () => {
    const pid = agent.proc!.pid!;
    const nice = (): number => threadNice(pid, pid);
    const relayTids = [...relayThreads(pid).keys()];
    const base = os.getPriority(); // the agent inherits this process's
    await waitFor('no session left from the tests before', () => nice() === base, 5000);
    const onRelay = agent.run(['psql', '-X', '-At', url, '-c', 'SELECT pg_sleep(6)']);
    await waitFor(() => `nice ${base + 10} while the one session is on the relay (now ${nice()})`, () => nice() === base + 10, 3000);
    for (const tid of relayTids) assert.equal(threadNice(pid, tid), base, 'the relay threads keep their priority');
    // TLS from the job: the handler relays that session itself, on the main thread.
    const onHandler = agent.run(['psql', '-X', '-At', url.replace('sslmode=disable', 'sslmode=require'), '-c', 'SELECT pg_sleep(1.5)']);
    await waitFor(() => `nice ${base} while a session is relayed by JavaScript (now ${nice()})`, () => nice() === base, 3000);
    const tls = await onHandler;
    assert.equal(tls.status, 0, tls.stderr);
    await waitFor(() => `nice ${base + 10} again once the TLS session ended (now ${nice()})`, () => nice() === base + 10, 3000);
    const plain = await onRelay;
    assert.equal(plain.status, 0, plain.stderr);
    await waitFor(() => `nice ${base} once no session is left (now ${nice()})`, () => nice() === base, 3000);
    const closes = (await agent.settledEvents()).filter((e) => e.kind === 'EVENT_KIND_CONNECTION_CLOSE').slice(-2).map((e) => e.connectionClose.relay || 'handler');
    assert.deepEqual(closes.sort(), ['handler', 'native'], 'one session on the relay, one on the handler');
  });

  test('rows are masked by column and by detector exactly as the handler would, row by row', async () => {
    // Statements of one shape: the relay remembers the mask decision after the first. The result
    // without a masked column it relays itself, except rows in which an email may be, which go to
    // the handler; the result with one goes to the handler whole.
    const r = await agent.run(['psql', '-X', '-At', url,
      '-c', 'SELECT id, note, id FROM contacts WHERE id <= 3000 ORDER BY id',
      '-c', 'SELECT id, note, secret_note FROM contacts WHERE id <= 3000 ORDER BY id']);
    assert.equal(r.status, 0, r.stderr);
    const rows = r.stdout.trim().split('\n');
    assert.equal(rows.length, 6000);
    rows.forEach((line, i) => {
      const [id, note, last] = line.split('|');
      assert.equal(note, Number(id) % 3 === 0 ? '[MASKED]' : `plain ${id}`, `note of ${id}`);
      assert.equal(last, i < 3000 ? id : '[MASKED]', `last column of ${id}`);
    });
    const events = await agent.settledEvents();
    assert.equal(events.filter((e) => e.kind === 'EVENT_KIND_CONNECTION_CLOSE').at(-1)?.connectionClose.relay, 'native');
    const st = events.filter((e) => e.kind === 'EVENT_KIND_STATEMENT').slice(-2).map((e) => e.statement);
    assert.deepEqual(st.map((s) => Number(s.maskedValues ?? 0)), [1000, 4000], 'masked values counted per statement');
  });

  test('simple queries of a remembered shape are summarised by the relay and audited like any other, secrets redacted', async () => {
    const SECRET = 'tok-' + 'Qm9sdC1zZWNyZXQtdmFsdWU';
    const args = ['psql', '-X', '-At', url];
    for (let i = 1; i <= 8; i++) args.push('-c', `SELECT count(*) FROM contacts WHERE id < ${i * 10}`);
    args.push('-c', `SELECT count(*) FROM contacts WHERE note = '${SECRET}'`, '-c', `SELECT count(*) FROM contacts WHERE note = '${SECRET}2'`);
    const r = await agent.run(args, { DEPLOY_TOKEN: SECRET });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split('\n'), ['9', '19', '29', '39', '49', '59', '69', '79', '0', '0']);
    const events = await agent.settledEvents();
    const st = events.filter((e) => e.kind === 'EVENT_KIND_STATEMENT').slice(-10).map((e) => e.statement);
    assert.deepEqual(st.map((s) => s.text), [
      ...[1, 2, 3, 4, 5, 6, 7, 8].map((i) => `SELECT count(*) FROM contacts WHERE id < ${i * 10}`),
      "SELECT count(*) FROM contacts WHERE note = '[REDACTED:env:DEPLOY_TOKEN]'",
      "SELECT count(*) FROM contacts WHERE note = '[REDACTED:env:DEPLOY_TOKEN]2'",
    ]);
    for (const s of st) {
      assert.equal(s.type, 'SELECT');
      assert.deepEqual(s.objects, ['contacts']);
      assert.deepEqual([s.decision.action, s.decision.rule], ['mask', 'mask-contacts']);
      assert.deepEqual([s.commandTag, Number(s.rows)], ['SELECT 1', 1]);
      assert.ok(Number(s.durationUs) > 0, 'the duration is measured');
    }
    // After the first of each shape (decided live) the relay answers alone; a reply split over two
    // reads would go the replay way, so allow for a few. The relay writes the events of the clean
    // ones itself; the two carrying the job's secret it leaves to the handler, which redacts them.
    assertSummarised(events, 5, 8, SECRET, [4, 7]);
  });

  for (const mode of ['prepared', 'extended']) {
    test(`executions of statements with bound values (pgbench -M ${mode}) are summarised by the relay, the values redacted`, async () => {
      const SECRET = 'tok-' + 'UHJlcGFyZWQtc2VjcmV0LXZhbHVl';
      const script = path.join(work, 'prepared.sql');
      // The same statement twice per run: bound to the job's secret, then to a plain value.
      const sql = 'SELECT count(*) FROM contacts WHERE id <= :n AND note <> :v;\n';
      writeFileSync(script, `\\set n random(1, 2000)\n${sql.replace(':v', ':tok')}${sql.replace(':v', ':plain')}`);
      // -M prepared: Parse once per command, then Bind (the two values), Describe, Execute, Sync per
      // run; -M extended: Parse of the unnamed statement, then the same, every run.
      const r = await agent.run(['pgbench', '-n', '-M', mode, '-c', '1', '-t', '20', '-D', `tok=${SECRET}`, '-D', 'plain=nothing here',
        '-f', script, url], { DEPLOY_TOKEN: SECRET });
      assert.equal(r.status, 0, r.stderr);
      const events = await agent.settledEvents();
      const st = lastSessionStatements(events);
      assert.deepEqual(new Set(st.map((s) => s.text)), new Set(['SELECT count(*) FROM contacts WHERE id <= $1 AND note <> $2']));
      assert.equal(st.length, 40);
      st.forEach((s, i) => {
        assert.equal(s.prepared, true);
        assert.deepEqual([s.type, s.objects, s.decision.action, s.decision.rule], ['SELECT', ['contacts'], 'mask', 'mask-contacts']);
        assert.equal(s.params.length, 2);
        assert.ok(Number(s.params[0]) >= 1 && Number(s.params[0]) <= 2000, `first value bound: ${s.params[0]}`);
        assert.equal(s.params[1], i % 2 === 0 ? '[REDACTED:env:DEPLOY_TOKEN]' : 'nothing here');
        assert.deepEqual([s.commandTag, Number(s.rows)], ['SELECT 1', 1]);
        assert.ok(Number(s.durationUs) > 0, 'the duration is measured');
      });
      // The first run of each statement goes to the handler (it is decided then); most of the rest
      // are summarised, a reply split over two reads goes the replay way. Of a prepared statement's
      // executions, the relay writes the events of those with the plain value itself; the secret
      // ones it leaves to the handler, which redacts them.
      assertSummarised(events, 30, 40, SECRET, [15, 20]);
    });
  }

  test('an execution the relay audits inside a transaction leaves the handler its portal, for an Execute without Bind', async () => {
    const A = 'SELECT count(*) FROM contacts WHERE id <= 2 AND note <> $1';
    const run = (value: string) => execution(A, value);
    const steps = [
      msg.startupMessage({ user: 'postgres', database: 'postgres' }),
      msg.query('BEGIN'),
      run('v1'), // decided by the handler
      run('v2'), // the relay may write these two itself: the transaction stays open, the portal too
      run('v3'),
      Buffer.concat([msg.execute('', 0), msg.sync()]), // the same portal again, no Bind: its values are v3's
      msg.query('COMMIT'),
      msg.terminate(),
    ];
    const replies = await rawSession(steps);
    assert.match(replies[5]!, /C\0\0\0[^]SELECT 0\0/, "the portal ran again (it had no rows left)");
    assert.match(replies[5]!, /Z\0\0\0\x05T/, 'inside the transaction');
    const events = await agent.settledEvents();
    const st = lastSessionStatements(events);
    assert.deepEqual(st.map((s) => [s.text, s.params ?? []]), [
      ['BEGIN', []], [A, ['v1']], [A, ['v2']], [A, ['v3']], [A, ['v3']], ['COMMIT', []],
    ]);
    assertSummarised(events, 1, 3, 'no secret in this test', [1, 2]);
  });

  test('values bound into a masked column stay with the handler, which masks them; the relay writes none of those events', async () => {
    const NOTE = 'private-note-' + 'b8e1c0';
    const script = path.join(work, 'masked-write.sql');
    // secret_note is masked by column: its value is masked in the audit even though no detector flags it.
    writeFileSync(script, '\\set id random(1, 2000)\nUPDATE contacts SET secret_note = :note WHERE id = :id;\n');
    const r = await agent.run(['pgbench', '-n', '-M', 'prepared', '-c', '1', '-t', '20', '-D', `note=${NOTE}`, '-f', script, url]);
    assert.equal(r.status, 0, r.stderr);
    const events = await agent.settledEvents();
    const st = lastSessionStatements(events);
    assert.equal(st.length, 20);
    for (const s of st) {
      assert.equal(s.text, 'UPDATE contacts SET secret_note = $1 WHERE id = $2');
      assert.equal(s.params[0], redactedParam('secret_note'));
      assert.ok(Number(s.params[1]) >= 1 && Number(s.params[1]) <= 2000);
      assert.equal(s.commandTag, 'UPDATE 1');
    }
    // Summarised by the relay, audited by the handler: the note's value is in no statement event (the
    // exec event of pgbench has it, in its command line).
    assert.ok(!JSON.stringify(st).includes(NOTE), 'the masked value in a statement event');
    assertSummarised(events, 15, 20, 'no secret in this test', [0, 0]);
  });

  test('executions the relay must not summarise (pipelined, failing, row-limited) are audited from their messages', async () => {
    const ROWS = 'SELECT id FROM contacts WHERE id <= $1 ORDER BY id';
    const DIVIDE = 'SELECT 10 / $1::int AS q';
    const steps = [
      msg.startupMessage({ user: 'postgres', database: 'postgres' }),
      execution(ROWS, '5'), // decided by the handler, then remembered
      execution(ROWS, '3'), // may be summarised
      Buffer.concat([execution(ROWS, '2'), execution(ROWS, '4')]), // two at once: never summarised
      execution(DIVIDE, '2'),
      execution(DIVIDE, '0'), // an error answer: never summarised
      execution(ROWS, '3', 1), // PortalSuspended: never summarised
      execution(ROWS, '1'), // may be summarised
      msg.terminate(),
    ];
    const replies = await rawSession(steps);
    assert.match(replies[3]!, /SELECT 2\0[^]*SELECT 4\0/, 'both pipelined executions answered');
    assert.match(replies[5]!, /22012/, 'division by zero reaches the job');
    assert.match(replies[6]!, /s\0\0\0\x04/, 'the row limit suspends the portal');
    const events = await agent.settledEvents();
    const st = lastSessionStatements(events);
    assert.deepEqual(st.map((s) => [s.text, s.params, s.commandTag ?? null, s.rows === undefined ? null : Number(s.rows), s.errorCode ?? null]), [
      [ROWS, ['5'], 'SELECT 5', 5, null],
      [ROWS, ['3'], 'SELECT 3', 3, null],
      [ROWS, ['2'], 'SELECT 2', 2, null],
      [ROWS, ['4'], 'SELECT 4', 4, null],
      [DIVIDE, ['2'], 'SELECT 1', 1, null],
      [DIVIDE, ['0'], null, null, '22012'],
      [ROWS, ['3'], 'SUSPENDED', null, null],
      [ROWS, ['1'], 'SELECT 1', 1, null],
    ]);
    // At most the two plain lone executions are summarised (one of them may come back in two reads),
    // and their events written by the relay.
    assertSummarised(events, 1, 2, 'no secret in this test', [0, 2]);
  });

  test('a run the relay audits that parses the unnamed statement leaves the handler knowing which statement that is', async () => {
    const SECRET = 'tok-' + 'VW5uYW1lZC1zZWNyZXQ';
    const A = 'SELECT count(*) FROM contacts WHERE id <= 1 AND note <> $1';
    const B = 'SELECT count(*) FROM contacts WHERE note <> $1 AND id <= 1';
    // Bind of the unnamed statement without a Parse: executes whatever was parsed last.
    const rebind = (value: string) => Buffer.concat([msg.bind({ params: [value] }), msg.describe('P'), msg.execute('', 0), msg.sync()]);
    const steps = [
      msg.startupMessage({ user: 'postgres', database: 'postgres' }),
      execution(A, '1'), // decided by the handler, which sends the template of A's executions
      execution(B, '2'), // the same for B: the unnamed statement is B
      execution(A, '3'), // A again, by its exact text: the relay may write this event itself, and the handler learns the unnamed statement is A
      execution(A, '4'),
      rebind(SECRET), // a value the relay leaves to the handler, which must audit it as an execution of A
      msg.terminate(),
    ];
    const replies = await rawSession(steps, { DEPLOY_TOKEN: SECRET });
    assert.match(replies[5]!, /SELECT 1\0/, 'the rebound statement ran');
    const events = await agent.settledEvents();
    const st = lastSessionStatements(events);
    assert.deepEqual(st.map((s) => [s.text, s.params, s.commandTag, s.prepared]), [
      [A, ['1'], 'SELECT 1', true],
      [B, ['2'], 'SELECT 1', true],
      [A, ['3'], 'SELECT 1', true],
      [A, ['4'], 'SELECT 1', true],
      [A, ['[REDACTED:env:DEPLOY_TOKEN]'], 'SELECT 1', true],
    ]);
    // The two runs of A by its exact text are the relay's to write (one may come back in two reads).
    assertSummarised(events, 1, 4, SECRET, [1, 2]);
  });

  test('a policy reload takes effect in a session on the relay: a statement of a shape allowed before is denied after', async () => {
    const script = [
      'SELECT count(*) FROM contacts WHERE id < 10;',
      `\\! cp ${path.join(work, 'deny.yaml')} ${policy} && sleep 2`,
      'SELECT count(*) FROM contacts WHERE id < 20;',
    ].join('\n');
    const r = await agent.run(['sh', '-c', 'printf %s "$RG_INPUT" | psql -X -At "$1"', 'psql', url], { RG_INPUT: script });
    assert.equal(r.stdout.trim(), '9', 'the first statement ran');
    assert.match(r.stderr, /denied by policy rule "no-reading-contacts"/, 'the second, of the same shape, was denied');
    const st = (await agent.settledEvents()).filter((e) => e.kind === 'EVENT_KIND_STATEMENT').map((e) => e.statement).slice(-2);
    assert.deepEqual(st.map((s) => [s.text, s.decision.action, s.decision.rule]), [
      ['SELECT count(*) FROM contacts WHERE id < 10', 'mask', 'mask-contacts'],
      ['SELECT count(*) FROM contacts WHERE id < 20', 'deny', 'no-reading-contacts'],
    ]);
    const closes = (await agent.settledEvents()).filter((e) => e.kind === 'EVENT_KIND_CONNECTION_CLOSE');
    assert.equal(closes.at(-1)?.connectionClose.relay, 'native');
    assert.ok(!agent.log.includes('would have handled differently'));
  });
});
