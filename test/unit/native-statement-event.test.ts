// The statement events the native relay writes itself (agent/native/src/statement_event.cc) against
// what the handler would write for the same statement: byte for byte the same Statement field when
// the relay writes one, and no event at all (the handler's turn) whenever the redactors would change
// the text, the text is not UTF-8, or the command tag is not plain.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { loadNative, type NativeAddon } from '../../agent/native/index.js';
import { packPrecheck, packTemplate } from '../../agent/native/relay.js';
import { PgProtocolError } from '../../agent/pg/frames.js';
import { dataRow, decodeCommandComplete } from '../../agent/pg/messages.js';
import { Redactor } from '../../agent/redact/redactor.js';
import { encodeEvent, type StatementInfo } from '../../proto/index.js';
import { StatementTemplate, type StatementBase } from '../../proto/session-events.js';

function addon(): NativeAddon {
  const n = loadNative();
  if (!n.addon) assert.fail(n.error ?? 'the native addon did not load');
  return n.addon;
}

const BASE: StatementBase = {
  protocol: 'postgres', type: 'SELECT', objects: ['public.accounts'],
  decision: { action: 'allow', rule: 'default', reason: 'no rule matched', outcome: '', approvalId: '' },
  database: 'app', user: 'ci', prepared: false,
};
const TEMPLATE = new StatementTemplate(BASE);
const SECRET = 'hunter2-Sup3r-s3cret';
const redactor = new Redactor([{ name: 'DB_PASSWORD', value: SECRET }]);
const PRECHECK = packPrecheck([redactor.precheck()])!;

const cstr = (s: string): Buffer => Buffer.concat([Buffer.from(s, 'utf8'), Buffer.alloc(1)]);

/** The Statement field the handler writes (onAudited + emitTemplated), as protobufjs encodes it. */
function handlerField(text: string, tag: string, durationMs: number): Buffer {
  const c = decodeCommandComplete(cstr(tag));
  if (c instanceof PgProtocolError) throw c;
  const statement: StatementInfo = { ...BASE, text: redactor.redact(text), commandTag: c.tag, durationUs: Math.floor(durationMs * 1000) };
  if (c.rows !== undefined) statement.rows = c.rows;
  return Buffer.from(encodeEvent({ kind: 0, statement }));
}

function relayField(text: string | Buffer, tag: string | Buffer, durationMs = 0.25, precheck = PRECHECK): Buffer | null {
  const t = typeof text === 'string' ? Buffer.from(text, 'utf8') : text;
  const c = typeof tag === 'string' ? cstr(tag) : tag;
  return addon().statementEvent(precheck, packTemplate(TEMPLATE), t, c, durationMs);
}

test('a clean statement: the same Statement field as the handler writes, for every plain tag', () => {
  const text = 'SELECT abalance FROM pgbench_accounts WHERE aid = 4711';
  for (const tag of ['SELECT 1', 'SELECT 0', 'INSERT 0 3', 'UPDATE 12', 'DELETE 0', 'COPY 99', 'FETCH 5', 'MOVE 2', 'MERGE 1', 'CREATE TABLE', 'BEGIN', 'SET']) {
    assert.deepEqual(relayField(text, tag, 0.4567), handlerField(text, tag, 0.4567), tag);
  }
  // A count the handler would read as unsafe is left to it; so is a tag that is not printable ASCII.
  assert.equal(relayField(text, 'SELECT 1234567890123456'), null);
  assert.deepEqual(relayField(text, 'SELECT 123456789012345'), handlerField(text, 'SELECT 123456789012345', 0.25));
  assert.equal(relayField(text, 'SELECT\t1'), null);
  assert.equal(relayField(text, Buffer.from('SELECT 1')), null, 'a tag without its NUL');
  assert.equal(relayField(text, Buffer.from('SELECT 1\0x\0')), null, 'bytes after the NUL');
});

test('text the redactors would change is never written by the relay', () => {
  const dirty = [
    `SELECT * FROM t WHERE pw = '${SECRET}'`,
    `SELECT '${Buffer.from(SECRET).toString('base64')}'`,
    `SELECT '${encodeURIComponent(SECRET)}'`,
    "SELECT 'ops@example.com'",
    "SELECT '4111 1111 1111 1111'",
    "SELECT '4111-1111-1111-1'",
    'SELECT 1234567890123',
    "ALTER ROLE app PASSWORD 'x'",
    "SELECT 'postgres://u:p@h/db'",
    "select 'GHP_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'",
    "SELECT 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.x'",
    "SELECT '-----BEGIN RSA PRIVATE KEY-----'",
  ];
  for (const text of dirty) assert.equal(relayField(text, 'SELECT 1'), null, text);
  // Near misses stay with the relay: twelve digits, runs broken by two separators.
  for (const text of ['SELECT 123456789012', "SELECT '1234 5678  9012 3456'", "SELECT '123456--7890123'"]) {
    assert.deepEqual(relayField(text, 'SELECT 1'), handlerField(text, 'SELECT 1', 0.25), text);
  }
});

test('property: whatever the relay writes, the handler would have written the same', () => {
  // Texts built from SQL-ish pieces and the material detectors look for, so that both sides of the
  // pre-check are exercised.
  const piece = fc.constantFrom('SELECT ', 'x', ' = ', "'", '1', '2', '1234', '56789', ' ', '-', '@', 'example.com', 'pass', 'word', 'PASSW', 'ghp_', 'AK', 'IA',
    'eyJ', ':/', '/', 'é', '€', '😀', SECRET.slice(0, 8), SECRET.slice(8), 'mysql', 'Private Key');
  fc.assert(fc.property(fc.array(piece, { maxLength: 30 }), fc.double({ min: 0, max: 1e6, noNaN: true }), (pieces, ms) => {
    const text = pieces.join('');
    const relay = relayField(text, 'SELECT 7', ms);
    if (relay === null) {
      // The relay declined: only where the pre-checks see something (never for text they pass).
      assert.ok(redactor.precheckHit(text), `declined a text the pre-checks pass: ${JSON.stringify(text)}`);
      return;
    }
    // Written by the relay: exactly the texts the pre-checks pass, which redact() returns as they are.
    assert.ok(!redactor.precheckHit(text), `wrote a text the pre-checks flag: ${JSON.stringify(text)}`);
    assert.equal(redactor.redact(text), text);
    assert.deepEqual(relay, handlerField(text, 'SELECT 7', ms));
  }), { numRuns: 2000 });
});

test('the one-pass pre-check finds a needle or secret wherever it starts, in any ASCII case, and nothing that only begins one', () => {
  // Several needles share a first byte ('g', 'x', 'p', 'a'); a failed try at one position must not
  // skip the match that starts at the next, and a needle cut off by the end of the text is no hit.
  const texts = [
    'ppassword', 'xoxxoxb-1', 'gh_ghp_1', 'SELECT 1 -- PaSsW', 'a@', '@', 'eyJ', 'eyj', 'ey', 'select passw',
    'aaaakia', 'SELECT aki', 'xoxb', 'xox', 'ghp', `x${SECRET}`, SECRET.slice(0, -1), `${SECRET.slice(0, -1)}?${SECRET}`,
    'SELECT abalance FROM pgbench_accounts WHERE aid = 4711', 'mariadb', 'MARIADB', 'mari', '://', ':/', '',
  ];
  for (const text of texts) {
    const written = relayField(text, 'SELECT 1') !== null;
    assert.equal(written, !redactor.precheckHit(text), `${JSON.stringify(text)}: ${written ? 'written' : 'declined'}`);
  }
});

test('the pre-check\'s two-byte prefilter: one-byte entries, the text\'s last byte, exact forms in another case or not ASCII', () => {
  // A pre-check built by hand, so that it has what the detectors' needles do not: a one-byte needle,
  // exact forms that start with an upper-case letter (matched byte for byte, not folded) or with a
  // multi-byte character. The oracle is the definition, not Redactor: an ASCII-folded substring
  // for a needle, a byte substring for an exact form.
  const check = { needles: ['q', 'k9'], digitRuns: [], exact: ['Zx9', '\u00e91', 'W'] };
  const packed = packPrecheck([check])!;
  const fold = (b: Buffer) => Buffer.from(b.map((c) => (c >= 0x41 && c <= 0x5a ? c + 32 : c)));
  const hit = (text: string) => {
    const bytes = Buffer.from(text, 'utf8');
    return check.needles.some((n) => fold(bytes).includes(Buffer.from(n))) || check.exact.some((e) => bytes.includes(Buffer.from(e, 'utf8')));
  };
  const texts = [
    'q', 'Q', 'select q', 'select Q', 'select k', 'select K9', 'k', 'zx9', 'Zx9', 'ZX9', 'aZx9b', 'Zx', '\u00e91', 'a\u00e91', '\u00e9', '\u00c91',
    'w', 'W', 'select W', 'select w', 'plain text', '',
  ];
  for (const text of texts) {
    const written = relayField(text, 'SELECT 1', 0.25, packed) !== null;
    assert.equal(written, !hit(text), `${JSON.stringify(text)}: ${written ? 'written' : 'declined'}`);
  }
  fc.assert(fc.property(fc.string({ unit: fc.constantFrom('q', 'Q', 'k', 'K', '9', 'Z', 'z', 'x', 'X', 'W', 'w', '\u00e9', '1', ' ') }), (text) => {
    assert.equal(relayField(text, 'SELECT 1', 0.25, packed) !== null, !hit(text), JSON.stringify(text));
  }), { numRuns: 3000 });
});

test('text that is not valid UTF-8 is left to the handler (it would decode it with U+FFFD)', () => {
  const bad = [[0xc0, 0x80], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xe2, 0x82], [0x80], [0xf8, 0x88, 0x80, 0x80, 0x80]];
  for (const bytes of bad) {
    const text = Buffer.concat([Buffer.from('SELECT '), Buffer.from(bytes)]);
    assert.equal(relayField(text, 'SELECT 1'), null, Buffer.from(bytes).toString('hex'));
    assert.notEqual(text.toString('utf8'), Buffer.from(text.toString('utf8'), 'utf8').toString('latin1'));
  }
  assert.deepEqual(relayField('SELECT \'€😀é\'', 'SELECT 1'), handlerField('SELECT \'€😀é\'', 'SELECT 1', 0.25));
});

test('a pre-check or template that does not parse: no relay event', () => {
  assert.equal(relayField('SELECT 1', 'SELECT 1', 0.25, Buffer.from([0, 9, 0, 0, 0, 0x61])), null, 'a needle longer than its bytes');
  assert.equal(relayField('SELECT 1', 'SELECT 1', 0.25, Buffer.from([3, 1, 0, 0, 0, 0x61])), null, 'an unknown kind');
  assert.equal(relayField('SELECT 1', 'SELECT 1', 0.25, Buffer.from([0, 2, 0, 0, 0, 0xc3, 0xa9])), null, 'a needle that is not ASCII');
  assert.equal(packPrecheck([{ needles: ['é'], digitRuns: [], exact: [] }]), null);
  const pieces = packTemplate(TEMPLATE);
  assert.equal(addon().statementEvent(PRECHECK, pieces.subarray(0, pieces.length - 1), Buffer.from('SELECT 1'), cstr('SELECT 1'), 0), null);
});

// Executions of a prepared statement: the template holds the text, each event adds the bound values.
const EXEC_BASE: StatementBase = { ...BASE, prepared: true };
const EXEC_TEMPLATE = new StatementTemplate(EXEC_BASE);
const EXEC_TEXT = 'SELECT abalance FROM pgbench_accounts WHERE aid = $1 AND note <> $2';

/**
 * A Bind's parameter block as pg_bind hands it on ([u16 count], then per value [i32 length][bytes],
 * -1 for NULL): laid out exactly as a DataRow's body. `count` may say otherwise, for broken blocks.
 */
function valuesBlock(values: readonly (Buffer | null)[], count = values.length): Buffer {
  const block = Buffer.from(dataRow([...values]).subarray(5));
  block.writeUInt16BE(count, 0);
  return block;
}

/** The handler's execution event (onAudited: executionParams, then emitTemplated), as protobufjs encodes it. */
function handlerExecution(values: readonly (Buffer | null)[], tag: string, durationMs: number): Buffer {
  const c = decodeCommandComplete(cstr(tag));
  if (c instanceof PgProtocolError) throw c;
  const params = values.map((v) => (v === null ? 'NULL' : redactor.redact(v.toString('utf8'))));
  const statement: StatementInfo = { ...EXEC_BASE, text: redactor.redact(EXEC_TEXT), params, commandTag: c.tag, durationUs: Math.floor(durationMs * 1000) };
  if (c.rows !== undefined) statement.rows = c.rows;
  return Buffer.from(encodeEvent({ kind: 0, statement }));
}

function relayExecution(values: readonly (Buffer | null)[] | Buffer, tag: string, durationMs = 0.25): Buffer | null {
  const block = Buffer.isBuffer(values) ? values : valuesBlock(values);
  return addon().statementEvent(PRECHECK, packTemplate(EXEC_TEMPLATE, EXEC_TEXT), Buffer.alloc(0), cstr(tag), durationMs, block);
}

test('an execution with clean values: the handler\'s Statement field, values in order, NULL as the handler writes it', () => {
  const cases: (Buffer | null)[][] = [
    [], [Buffer.from('4711'), Buffer.from('plain')], [null, Buffer.from('')], [Buffer.from('€ and 😀'), null, Buffer.from('x'.repeat(300))],
    [Buffer.from([0, 0, 0x12, 0x67])], // a binary int4: valid UTF-8, decoded by the handler as it is
  ];
  for (const values of cases) {
    assert.deepEqual(relayExecution(values, 'SELECT 1', 0.375), handlerExecution(values, 'SELECT 1', 0.375), JSON.stringify(values));
  }
});

test('an execution whose values the redactors would change, or that are not UTF-8, is left to the handler', () => {
  for (const v of [SECRET, `pw=${SECRET}!`, Buffer.from(SECRET).toString('base64'), 'ops@example.com', '4111 1111 1111 1111', 'ghp_' + 'a'.repeat(36)]) {
    assert.equal(relayExecution([Buffer.from('1'), Buffer.from(v)], 'SELECT 1'), null, v);
  }
  assert.equal(relayExecution([Buffer.from([0x80, 0x01])], 'SELECT 1'), null, 'a binary value that is not UTF-8');
  // A block that is not whole: a count that does not match its values, a value cut short.
  const two = valuesBlock([Buffer.from('a'), Buffer.from('b')]);
  assert.equal(relayExecution(valuesBlock([Buffer.from('a'), Buffer.from('b')], 3), 'SELECT 1'), null);
  assert.equal(relayExecution(two.subarray(0, two.length - 1), 'SELECT 1'), null);
  assert.equal(relayExecution(Buffer.from([0]), 'SELECT 1'), null);
});

test('property: whatever execution event the relay writes, the handler would have written the same', () => {
  const piece = fc.constantFrom('x', '1', '1234', '56789', ' ', '-', '@', 'example.com', 'pass', 'word', 'ghp_', 'eyJ', 'é', '😀', SECRET.slice(0, 8), SECRET.slice(8));
  const value = fc.oneof(
    fc.constant(null),
    fc.array(piece, { maxLength: 12 }).map((p) => Buffer.from(p.join(''), 'utf8')),
    fc.uint8Array({ maxLength: 6 }).map((b) => Buffer.from(b)),
  );
  fc.assert(fc.property(fc.array(value, { maxLength: 5 }), (values) => {
    const relay = relayExecution(values, 'SELECT 3');
    const clean = values.every((v) => v === null || (Buffer.from(v.toString('utf8'), 'utf8').equals(v) && !redactor.precheckHit(v.toString('utf8'))));
    assert.equal(relay !== null, clean, `written by the relay: ${relay !== null}, values ${JSON.stringify(values.map((v) => v?.toString('hex')))}`);
    if (relay) assert.deepEqual(relay, handlerExecution(values, 'SELECT 3', 0.25));
  }), { numRuns: 2000 });
});
