// Malformed and oversized PostgreSQL messages from both sides, generated with fast-check, through
// the real eBPF redirect and the real agent: each ends its session with a clear error and an audit
// event, never the agent, which goes on serving a real psql session afterwards.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { AgentFixture, ROOT } from '../helpers/agent.js';
import { startPostgres, type PgServer } from '../helpers/postgres.js';
import { bpfUnavailableReason } from '../helpers/env.js';
import * as msg from '../../agent/pg/messages.js';
import { tempDir } from '../helpers/tmp.js';

const skip = process.env.RUNGUARD_REQUIRE_BPF === '1' ? false : bpfUnavailableReason();
const RAW_CLIENT = path.join(ROOT, 'test/fixtures/raw-client.py');
const RUNS = 8;

function frame(type: string, body: Buffer, declared?: number): Buffer {
  const head = Buffer.alloc(5);
  head.write(type, 0, 'latin1');
  head.writeInt32BE(declared ?? body.length + 4, 1);
  return Buffer.concat([head, body]);
}

/** Messages no correct peer sends: lengths that lie, types that do not exist, bodies that do not parse. */
function malformed(direction: 'frontend' | 'backend') {
  const known = direction === 'frontend' ? 'QPBDESHCdcfXFp' : 'RKSZTDCENAGHWdc123nstIVv';
  return fc.oneof(
    // a declared length below the 4 bytes the length field itself takes
    fc.record({ t: fc.constantFrom(...known), len: fc.integer({ min: -(2 ** 31), max: 3 }) }).map(({ t, len }) => frame(t, Buffer.alloc(0), len)),
    // a declared length over the limit (oversized), with only a little of it sent
    fc.record({ t: fc.constantFrom(...known), len: fc.integer({ min: 64 * 1024 * 1024 + 1, max: 2 ** 31 - 1 }) }).map(({ t, len }) => frame(t, Buffer.alloc(16), len)),
    // a type byte this direction does not have
    fc.record({ t: fc.integer({ min: 0, max: 255 }).filter((b) => !known.includes(String.fromCharCode(b))), body: fc.uint8Array({ maxLength: 32 }) })
      .map(({ t, body }) => frame(String.fromCharCode(t), Buffer.from(body))),
    // a known type whose body does not decode: no zero byte anywhere, so the C string that P, B, E
    // and C start with is never terminated, and a leading 0xff makes T's and D's counts overrun and
    // is no ReadyForQuery status (a body with a zero byte could be valid: CommandComplete "\xff")
    fc.record({ t: fc.constantFrom(...(direction === 'frontend' ? 'PBE' : 'TDCZ')), body: fc.uint8Array({ min: 1, minLength: 1, maxLength: 24 }).map((b) => Buffer.from(b).fill(0xff, 0, 1)) })
      .map(({ t, body }) => frame(t, body)),
  );
}

describe('malformed PostgreSQL messages end the session, never the agent', { skip }, () => {
  let pg: PgServer;
  let agent: AgentFixture;
  let fake: net.Server;
  let fakePort = 0;
  let nextReply: Buffer = Buffer.alloc(0);
  // Whether the fake server first completes the startup (AuthenticationOk, ReadyForQuery) and sends
  // the bad reply to the query: the session is then on the native relay when the reply comes.
  let replyAfterReady = false;

  before(async () => {
    const why = bpfUnavailableReason();
    if (why) throw new Error(`eBPF required but unavailable: ${why}`);
    pg = startPostgres({ ssl: false });
    // A server that answers the startup with whatever the current property case says.
    fake = net.createServer((s) => {
      s.on('error', () => {});
      s.once('data', () => {
        if (!replyAfterReady) return void s.write(Buffer.concat([msg.authenticationOk(), nextReply]));
        s.write(Buffer.concat([msg.authenticationOk(), msg.readyForQuery('I')]));
        s.once('data', () => s.write(nextReply));
      });
    });
    await new Promise<void>((r) => fake.listen(0, '127.0.0.3', () => r()));
    fakePort = (fake.address() as net.AddressInfo).port;
    const work = tempDir('rg-pgfuzz-');
    const config = path.join(work, 'agent.yaml');
    writeFileSync(config, `protocols:\n  ${pg.port}: postgres\n  ${fakePort}: postgres\nserverTls: disable\n`);
    agent = new AgentFixture({ intercept: ['127.0.0.2/32', '127.0.0.3/32'], extraArgs: ['--config', config] });
    await agent.start();
  });

  after(async () => {
    await agent?.cleanup();
    await new Promise<void>((r) => (fake ? fake.close(() => r()) : r()));
    pg?.stop();
  });

  const startup = msg.startupMessage({ user: 'postgres', database: 'postgres' }).toString('hex');
  const alive = async () => {
    const r = await agent.run(['psql', '-X', '-At', `postgresql://postgres@127.0.0.2:${pg.port}/postgres`, '-c', 'SELECT 6 * 7']);
    assert.equal(r.stdout.trim(), '42', `the agent no longer serves sessions: ${r.stderr}`);
  };

  test('from the job: every malformed or oversized message ends that session with an 08P01 error and an event', async () => {
    let cases = 0;
    await fc.assert(fc.asyncProperty(malformed('frontend'), async (bad) => {
      cases++;
      const before = (await agent.events()).length;
      const r = await agent.run(['python3', RAW_CLIENT, '127.0.0.2', String(pg.port), startup, bad.toString('hex')]);
      const out = JSON.parse(r.stdout.trim()) as { received: string[]; closed: boolean };
      assert.equal(out.closed, true, 'the session must be closed');
      const reply = Buffer.from(out.received.at(-1) ?? '', 'hex');
      assert.ok(reply.includes(Buffer.from('08P01')), `the client gets a protocol_violation error, got ${reply.toString('latin1').slice(0, 120)}`);
      const closes = (await agent.events()).slice(before).filter((e) => e.kind === 'EVENT_KIND_CONNECTION_CLOSE');
      assert.ok(closes.some((e) => e.connectionClose.reason === 'protocol_error' && /job:/.test(e.connectionClose.error)), 'a protocol_error close event');
      // The bad message comes after the server's ReadyForQuery: the native relay carried the session.
      assert.ok(closes.some((e) => e.connectionClose.relay === 'native'), 'the session was on the native relay');
    }), { numRuns: RUNS });
    assert.equal(cases, RUNS);
    await alive();
  });

  for (const afterReady of [false, true]) test(`from the server${afterReady ? ', on the native relay' : ''}: every malformed reply ends that session with an error to the job and an event`, async () => {
    replyAfterReady = afterReady;
    await fc.assert(fc.asyncProperty(malformed('backend'), async (bad) => {
      nextReply = bad;
      const before = (await agent.events()).length;
      const r = await agent.run(['psql', '-X', `postgresql://postgres@127.0.0.3:${fakePort}/postgres${afterReady ? '?sslmode=disable' : ''}`, '-c', 'SELECT 1']);
      assert.notEqual(r.status, 0);
      assert.match(r.stderr, /runguard: the server sent an invalid message/);
      const closes = (await agent.events()).slice(before).filter((e) => e.kind === 'EVENT_KIND_CONNECTION_CLOSE');
      assert.ok(closes.some((e) => e.connectionClose.reason === 'protocol_error' && /server:/.test(e.connectionClose.error)));
      assert.equal(closes.some((e) => e.connectionClose.relay === 'native'), afterReady, 'which path carried the session');
    }), { numRuns: RUNS });
    await alive();
  });
});
