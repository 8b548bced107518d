import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import {
  AuditEventType, EventKind, encodeEvent, eventToJson, sealedEvent, type EventEnvelope, type StatementInfo,
} from '../../proto/index.js';
import { SessionEventEncoder, StatementTemplate, type SessionDetail, type SessionFields } from '../../proto/session-events.js';
import { Spool } from '../../agent/events/spool.js';

// The reference: what the spool encoded for every event before the session encoder existed.
function reference(fixed: SessionFields, detail: SessionDetail, env: EventEnvelope): Buffer {
  return Buffer.from(encodeEvent(sealedEvent({ ...detail, ...fixed }, env)));
}

function fast(fixed: SessionFields, detail: SessionDetail, env: EventEnvelope): Buffer {
  // Copied: the encoder's bytes are a view its next call overwrites.
  return Buffer.from(new SessionEventEncoder(fixed).event(detail).encode(env));
}

const decoded = (b: Uint8Array) => AuditEventType.toObject(AuditEventType.decode(b), { longs: String, bytes: String, defaults: false });

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

const STATEMENT = EventKind.EVENT_KIND_STATEMENT!;

// Strings with multi-byte characters and lengths on both sides of every varint length boundary.
const wellFormed = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 60 }),
  fc.string({ unit: 'grapheme-ascii', minLength: 100, maxLength: 300 }),
  fc.string({ unit: 'binary', minLength: 40, maxLength: 200 }),
  fc.constantFrom('', 'SELECT 1', 'é'.repeat(42), 'x'.repeat(127), 'x'.repeat(128), '€'.repeat(5462), 'x'.repeat(16_400)),
);
const maybe = <T>(a: fc.Arbitrary<T>) => fc.option(a, { nil: undefined });
const u64 = fc.oneof(fc.constant(0), fc.nat(), fc.maxSafeNat());

const statementArb = (str: fc.Arbitrary<string>): fc.Arbitrary<StatementInfo> => fc.record({
  protocol: maybe(str), text: maybe(str), type: maybe(str), objects: maybe(fc.array(str, { maxLength: 4 })),
  params: maybe(fc.array(str, { maxLength: 4 })),
  decision: maybe(fc.record({ action: maybe(str), rule: maybe(str), reason: maybe(str), outcome: maybe(str), approvalId: maybe(str) })),
  rows: maybe(u64), commandTag: maybe(str), durationUs: maybe(u64), errorCode: maybe(str), error: maybe(str),
  maskedValues: maybe(fc.nat({ max: 0xffffffff })), database: maybe(str), user: maybe(str), parseError: maybe(str),
  prepared: maybe(fc.boolean()),
});

const fixedArb: fc.Arbitrary<SessionFields> = fc.record({
  sessionId: fc.uuid(),
  process: fc.record({
    pid: fc.nat({ max: 4_194_304 }), ppid: fc.nat(), uid: fc.nat(), user: wellFormed, exe: wellFormed,
    argv: fc.array(wellFormed, { maxLength: 5 }), argvTruncated: fc.boolean(), cwd: wellFormed, cgroup: wellFormed,
    cgroupId: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }).map(String), containerId: wellFormed, comm: wellFormed,
  }, { requiredKeys: ['pid'] }),
  job: fc.record({ provider: wellFormed, repository: wellFormed, runId: wellFormed, actor: wellFormed, sha: wellFormed, source: fc.nat({ max: 4 }) }, { requiredKeys: [] }),
  destination: fc.record({ address: fc.ipV4(), port: fc.nat({ max: 65535 }) }),
  source: fc.record({ address: fc.ipV6(), port: fc.nat({ max: 65535 }) }),
});

const envArb: fc.Arbitrary<EventEnvelope> = fc.record({
  agentId: wellFormed, seq: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
  prevHash: fc.uint8Array({ minLength: 32, maxLength: 32 }),
  timeMs: fc.oneof(fc.constant(1_700_000_000_000), fc.integer({ min: 0, max: 4_102_444_800_000 })),
});

test('statement events encode byte for byte as protobufjs encodes them', () => {
  fc.assert(fc.property(fixedArb, envArb, maybe(fc.nat().map(String)), statementArb(wellFormed), (fixed, env, requestId, statement) => {
    const detail: SessionDetail = { kind: STATEMENT, requestId, statement };
    assert.deepEqual(fast(fixed, detail, env), reference(fixed, detail, env));
  }), { numRuns: 2000 });
});

test('a statement from a template, its text, values and outcome encodes as the whole statement does', () => {
  fc.assert(fc.property(fixedArb, envArb, fc.nat().map(String), statementArb(wellFormed), (fixed, env, requestId, s) => {
    const { text, params, rows, commandTag, durationUs, errorCode, error, maskedValues, ...base } = s;
    const outcome = { rows, commandTag, durationUs, errorCode, error, maskedValues };
    const encoder = new SessionEventEncoder(fixed);
    const templated = Buffer.from(encoder.event({ kind: STATEMENT, requestId, templated: { template: new StatementTemplate(base), text: text ?? '', params, outcome } }).encode(env));
    assert.deepEqual(templated, reference(fixed, { kind: STATEMENT, requestId, statement: { ...base, text, params, ...outcome } }, env));
  }), { numRuns: 1000 });
  // An outcome the writer does not take falls back to protobufjs with the whole statement.
  const fixed: SessionFields = { sessionId: 's', process: { pid: 1 }, job: {}, destination: { address: '127.0.0.2', port: 5432 }, source: { address: '127.0.0.1', port: 40000 } };
  const env: EventEnvelope = { agentId: 'a', seq: 9, prevHash: Buffer.alloc(32, 7), timeMs: 1_700_000_000_123 };
  const base = { protocol: 'postgres', type: 'SELECT', objects: ['t'], decision: { action: 'allow', rule: 'r' }, database: 'd', user: 'u' };
  const t = new StatementTemplate(base);
  const got = Buffer.from(new SessionEventEncoder(fixed).event({ kind: STATEMENT, requestId: '1', templated: { template: t, text: 'SELECT 1', outcome: { rows: 2 ** 60 } } }).encode(env));
  assert.deepEqual(got, reference(fixed, { kind: STATEMENT, requestId: '1', statement: { ...base, text: 'SELECT 1', rows: 2 ** 60 } }, env));
});

test('a statement encoded elsewhere (the native relay) as its field alone encodes as the whole statement does', () => {
  fc.assert(fc.property(fixedArb, envArb, fc.nat().map(String), statementArb(wellFormed), (fixed, env, requestId, statement) => {
    // The field alone is an AuditEvent with nothing but its statement: what the relay hands over.
    const statementField = encodeEvent({ kind: 0, statement });
    const got = Buffer.from(new SessionEventEncoder(fixed).event({ kind: STATEMENT, requestId, statementField }).encode(env));
    assert.deepEqual(got, reference(fixed, { kind: STATEMENT, requestId, statement }, env));
  }), { numRuns: 500 });
});

test('a string with lone surrogates is stored as well-formed UTF-8 that decodes to its well-formed form', () => {
  const anyUnits = fc.string({ unit: fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)), maxLength: 80 });
  fc.assert(fc.property(fixedArb, envArb, statementArb(anyUnits), (fixed, env, statement) => {
    const bytes = fast(fixed, { kind: STATEMENT, requestId: '1', statement }, env);
    const wf = JSON.parse(JSON.stringify(statement, (_k, v: unknown) => (typeof v === 'string' ? v.replace(LONE_SURROGATE, '\uFFFD') : v))) as StatementInfo;
    assert.deepEqual(decoded(bytes), decoded(reference(fixed, { kind: STATEMENT, requestId: '1', statement: wf }, env)));
  }), { numRuns: 500 });
});

test('other session events (open, close, db session, notice) encode byte for byte as protobufjs', () => {
  const details: SessionDetail[] = [
    { kind: EventKind.EVENT_KIND_CONNECTION_CLOSE!, connectionClose: { protocol: 'postgres', bytesUp: 12345678901, bytesDown: 0, durationMs: 3, reason: 'client_closed', error: '' } },
    { kind: EventKind.EVENT_KIND_DB_SESSION_START!, dbSession: { protocol: 'postgres', database: 'db', user: 'u', clientUser: 'u', application: 'pgbench', clientTls: false, serverTls: true, auth: 'trust', backendPid: 42 } },
    { kind: EventKind.EVENT_KIND_AGENT_NOTICE!, notice: { level: 'warn', code: 'session_error', message: 'bad' } },
    { kind: EventKind.EVENT_KIND_APPROVAL_DECIDED!, requestId: '7', approvalDecided: { approvalId: 'ap-1', outcome: 'denied', approvers: ['a', 'b'], waitedMs: 10 } },
    // A statement with a second detail set is not the writer's case: protobufjs takes it whole.
    { kind: STATEMENT, requestId: '3', statement: { text: 'x' }, notice: { level: 'info', code: 'c', message: 'm' } },
  ];
  fc.assert(fc.property(fixedArb, envArb, fc.constantFrom(...details), (fixed, env, detail) => {
    assert.deepEqual(fast(fixed, detail, env), reference(fixed, detail, env));
  }), { numRuns: 300 });
});

test('values the writer does not take go through protobufjs and give its bytes (or its error)', () => {
  const fixed: SessionFields = { sessionId: 's', process: { pid: 1 }, job: {}, destination: { address: '127.0.0.2', port: 5432 }, source: { address: '127.0.0.1', port: 40000 } };
  const env: EventEnvelope = { agentId: 'a', seq: 9, prevHash: Buffer.alloc(32, 7), timeMs: 1_700_000_000_123 };
  const odd: StatementInfo[] = [
    { rows: 2 ** 60 }, { rows: '18446744073709551615' as unknown as number }, { durationUs: 1.5 }, { maskedValues: 2 ** 33 },
    { text: 5 as unknown as string }, { objects: ['a', 7 as unknown as string] },
  ];
  for (const statement of odd) {
    const detail: SessionDetail = { kind: STATEMENT, requestId: '1', statement };
    assert.deepEqual(fast(fixed, detail, env), reference(fixed, detail, env), JSON.stringify(statement));
  }
  const bad: SessionDetail = { kind: STATEMENT, statement: { objects: 'users' as unknown as string[] } };
  assert.throws(() => reference(fixed, bad, env), TypeError);
  assert.throws(() => fast(fixed, bad, env), TypeError);
});

test('the spool stores, chains and reads back self-encoded events among ordinary ones', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'rg-enc-'));
  try {
    const spool = await Spool.open({ dir, agentId: 'agent-enc', maxBytes: 64 * 1024 * 1024, logger: { info() {}, warn() {}, error() {} } });
    const enc = new SessionEventEncoder({ sessionId: 'sess-1', process: { pid: 10, argv: ['psql'] }, job: { repository: 'acme/app' }, destination: { address: '127.0.0.2', port: 5432 }, source: { address: '127.0.0.1', port: 5555 } });
    for (let i = 1; i <= 50; i++) {
      if (i % 10 === 0) spool.append({ kind: EventKind.EVENT_KIND_AGENT_NOTICE!, notice: { level: 'info', code: 't', message: `n${i}` } });
      else spool.append(enc.event({ kind: STATEMENT, requestId: String(i), statement: { protocol: 'postgres', text: `SELECT ${i}`, type: 'SELECT', rows: i } }));
    }
    await spool.close();
    const reopened = await Spool.open({ dir, agentId: 'agent-enc', maxBytes: 64 * 1024 * 1024, logger: { info() {}, warn() {}, error() {} } });
    const seen = [];
    for await (const r of reopened.readFrom(1)) seen.push(eventToJson(r.bytes));
    await reopened.close();
    assert.equal(seen.length, 50);
    seen.forEach((e, i) => {
      assert.equal(e.seq, String(i + 1));
      if ((i + 1) % 10 === 0) return assert.equal((e.notice as { message: string }).message, `n${i + 1}`);
      assert.equal(e.sessionId, 'sess-1');
      assert.equal(e.requestId, String(i + 1));
      assert.equal((e.statement as { text: string }).text, `SELECT ${i + 1}`);
      assert.deepEqual((e.process as { argv: string[] }).argv, ['psql']);
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
