// The native message checks (agent/native/src/pgmsg.cc) against the JavaScript decoders they stand in
// for: whatever native accepts, JS accepts with the same fields (native may refuse more, never less).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { loadNative, type NativeAddon } from '../../agent/native/index.js';
import { PgProtocolError } from '../../agent/pg/frames.js';
import * as m from '../../agent/pg/messages.js';

type Direction = 'frontend' | 'backend';
type Fields = Record<string, unknown>;

function addon(): NativeAddon {
  const n = loadNative();
  if (!n.addon) assert.fail(n.error ?? 'the native addon did not load');
  return n.addon;
}

const ch = (c: string): number => c.charCodeAt(0);
const FRONTEND = ['Q', 'P', 'B', 'E', 'C'].map(ch);
const BACKEND = ['T', 'D', 'C', 'E', 'Z', 'R', 'K', 'I', 'N', 'S', 's', 'd'].map(ch);

const utf8 = (s: string): Buffer => Buffer.from(s, 'utf8');

/** What the JS decoders make of a body, in the shape checkMessage returns (strings as their UTF-8). */
function jsCheck(direction: Direction, type: number, body: Buffer): Fields | null {
  const ok = <T>(v: T | PgProtocolError): v is T => !(v instanceof PgProtocolError);
  if (direction === 'frontend') {
    switch (String.fromCharCode(type)) {
      case 'Q': { const q = m.decodeQuery(body); return ok(q) ? { sql: utf8(q.sql) } : null; }
      case 'P': { const p = m.decodeParse(body); return ok(p) ? { name: utf8(p.name), sql: utf8(p.sql) } : null; }
      case 'B': { const b = m.decodeBind(body); return ok(b) ? { portal: utf8(b.portal), statement: utf8(b.statement) } : null; }
      case 'E': { const e = m.decodeExecute(body); return ok(e) ? { portal: utf8(e.portal) } : null; }
      case 'C': { const c = m.decodeClose(body); return ok(c) ? { kind: c.kind, name: utf8(c.name) } : null; }
      default: return null;
    }
  }
  switch (String.fromCharCode(type)) {
    case 'T': return ok(m.decodeRowDescription(body)) ? {} : null;
    case 'D': return m.checkDataRow(body) === undefined ? {} : null;
    case 'C': return ok(m.decodeCommandComplete(body)) ? {} : null;
    case 'E': return ok(m.decodeErrorResponse(body)) ? {} : null;
    case 'Z': return ok(m.decodeReadyForQuery(body)) ? {} : null;
    case 'R': case 'K': return null;
    default: return {};
  }
}

/**
 * The invariant, plus the converse where nothing excuses a refusal: a body JS accepts with no U+FFFD
 * in its names (so they were valid UTF-8, or spelled U+FFFD validly) native must accept too; backend
 * checks read no keys and must agree exactly.
 */
function agree(direction: Direction, type: number, body: Buffer): Fields | null {
  // An exactly-sized copy (its own allocation, not a slice of a pool or of the whole message), so a
  // build with -fsanitize=address catches any read past the body.
  const exact = Buffer.alloc(body.length);
  body.copy(exact);
  const native = addon().checkMessage(direction, type, exact);
  const js = jsCheck(direction, type, body);
  if (native !== null) {
    assert.notEqual(js, null, `native accepted what JS refuses: ${direction} ${String.fromCharCode(type)} ${body.toString('hex')}`);
    assert.deepEqual(native, js);
  } else if (js !== null) {
    const clean = Object.values(js).every((v) => !Buffer.isBuffer(v) || !v.toString('utf8').includes('\uFFFD'));
    assert.ok(direction === 'frontend' && !clean, `native refused what JS accepts: ${direction} ${String.fromCharCode(type)} ${body.toString('hex')}`);
  }
  return native;
}

// ---------------------------------------------------------------------------------------------------
// Arbitraries

const text = fc
  .oneof(fc.string(), fc.string({ unit: 'binary' }), fc.string({ unit: 'grapheme', maxLength: 40 }), fc.string({ minLength: 8, maxLength: 200 }))
  .map((s) => s.replaceAll('\0', ''));
const u16 = fc.integer({ min: 0, max: 0xffff });
const i16 = fc.integer({ min: -0x8000, max: 0x7fff });
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const i32 = fc.integer({ min: -0x80000000, max: 0x7fffffff });
const value = fc.oneof(fc.constant(null), text, fc.uint8Array({ maxLength: 20 }).map((a) => Buffer.from(a)));
const bit = fc.constantFrom(0, 1);

interface Msg { direction: Direction; type: number; body: Buffer }
const msgOf = (direction: Direction, whole: Buffer): Msg => ({ direction, type: whole[0]!, body: whole.subarray(5) });

const bindMsg = fc
  .record({ portal: text, statement: text, params: fc.array(value, { maxLength: 6 }), perParam: fc.array(bit, { maxLength: 6 }), mode: fc.nat(2), rf: fc.array(bit, { maxLength: 4 }) })
  .map(({ portal, statement, params, perParam, mode, rf }) => {
    // None, one for all, or one per parameter: the three layouts the protocol allows.
    const paramFormats = mode === 0 ? [] : mode === 1 ? [perParam[0] ?? 1] : params.map((_, i) => perParam[i] ?? 0);
    return m.bind({ portal, statement, params, paramFormats, resultFormats: rf });
  });

const field = fc.record({ name: text, tableOid: u32, columnAttr: i16, typeOid: u32, typeSize: i16, typeMod: i32, format: i16 });
const severity = fc.constantFrom<m.Severity>('ERROR', 'FATAL', 'PANIC', 'WARNING', 'NOTICE', 'DEBUG', 'INFO', 'LOG');

const frontendMsg: fc.Arbitrary<Msg> = fc.oneof(
  text.map((sql) => m.query(sql)),
  fc.tuple(text, text, fc.array(u32, { maxLength: 5 })).map(([name, sql, types]) => m.parse(name, sql, types)),
  bindMsg,
  fc.tuple(text, i32).map(([portal, rows]) => m.execute(portal, rows)),
  fc.tuple(fc.constantFrom<'S' | 'P'>('S', 'P'), text).map(([kind, name]) => m.close(kind, name)),
).map((b) => msgOf('frontend', b));

const backendMsg: fc.Arbitrary<Msg> = fc.oneof(
  fc.array(field, { maxLength: 5 }).map((fs) => m.rowDescription(fs)),
  fc.array(value, { maxLength: 8 }).map((vs) => m.dataRow(vs)),
  text.map((tag) => m.commandComplete(tag)),
  fc.record({ severity, code: fc.string({ minLength: 5, maxLength: 5 }), message: fc.string({ unit: 'binary' }), detail: fc.option(text, { nil: undefined }), hint: fc.option(text, { nil: undefined }) })
    .map((f) => m.errorResponse(f)),
  fc.constantFrom<m.TransactionStatus>('I', 'T', 'E').map((s) => m.readyForQuery(s)),
).map((b) => msgOf('backend', b));

const anyMsg = fc.oneof(frontendMsg, backendMsg);

/** One edit of a body: a flipped, inserted, deleted or overwritten run of bytes, or a new length field. */
const edit = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 6 }) }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), count: fc.integer({ min: 1, max: 6 }) }),
  fc.record({ kind: fc.constant('i32' as const), at: fc.nat(), v: fc.oneof(fc.constantFrom(-1, -2, 0, 1, 4, 0x7fffffff, -0x80000000), i32) }),
  fc.record({ kind: fc.constant('u16' as const), at: fc.nat(), v: fc.oneof(fc.constantFrom(0, 1, 2, 3, 0xffff), u16) }),
  fc.record({ kind: fc.constant('utf8' as const), at: fc.nat(), bytes: fc.array(fc.constantFrom(0x80, 0xbf, 0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xff, 0x8f, 0x90, 0x9f, 0xa0), { minLength: 1, maxLength: 4 }) }),
);

type Edit = typeof edit extends fc.Arbitrary<infer E> ? E : never;

function apply(body: Buffer, e: Edit): Buffer {
  const at = body.length === 0 ? 0 : e.at % (body.length + 1);
  switch (e.kind) {
    case 'flip': {
      if (body.length === 0) return body;
      const b = Buffer.from(body);
      b[at % b.length]! ^= e.xor;
      return b;
    }
    case 'insert':
    case 'utf8':
      return Buffer.concat([body.subarray(0, at), Buffer.from(e.bytes), body.subarray(at)]);
    case 'delete':
      return Buffer.concat([body.subarray(0, at), body.subarray(at + e.count)]);
    case 'i32':
    case 'u16': {
      const w = e.kind === 'i32' ? 4 : 2;
      const b = Buffer.from(body);
      if (b.length < w) return b;
      const pos = at % (b.length - w + 1);
      if (e.kind === 'i32') b.writeInt32BE(e.v, pos);
      else b.writeUInt16BE(e.v, pos);
      return b;
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Tests

test('the native addon loads', () => {
  addon();
});

test('valid messages: native accepts them with the JS decoders\' fields', () => {
  fc.assert(
    fc.property(anyMsg, ({ direction, type, body }) => {
      assert.notEqual(agree(direction, type, body), null, `refused ${direction} ${String.fromCharCode(type)} ${body.toString('hex')}`);
    }),
    { numRuns: 3000 },
  );
});

test('valid messages cut off at every length: never accepted looser than JS', () => {
  fc.assert(
    fc.property(anyMsg, ({ direction, type, body }) => {
      for (let n = 0; n < body.length; n++) agree(direction, type, body.subarray(0, n));
      // And with a byte too many.
      agree(direction, type, Buffer.concat([body, Buffer.from([0])]));
    }),
    { numRuns: 600 },
  );
});

test('mutated messages: whatever native accepts, JS accepts with the same fields', () => {
  fc.assert(
    fc.property(anyMsg, fc.array(edit, { minLength: 1, maxLength: 3 }), fc.option(fc.constantFrom(...FRONTEND, ...BACKEND), { nil: undefined }), (msg, edits, retype) => {
      let body = msg.body;
      for (const e of edits) body = apply(body, e);
      agree(msg.direction, retype ?? msg.type, body);
    }),
    { numRuns: 3000 },
  );
});

test('random bodies of every checked type', () => {
  fc.assert(
    fc.property(fc.constantFrom<Direction>('frontend', 'backend'), fc.constantFrom(...FRONTEND, ...BACKEND), fc.uint8Array({ maxLength: 40 }), (direction, type, bytes) => {
      agree(direction, type, Buffer.from(bytes));
    }),
    { numRuns: 2000 },
  );
});

/** Valid UTF-8 is exactly what survives a decode and re-encode unchanged (the decoder maps the rest to U+FFFD). */
const validUtf8 = (b: Buffer): boolean => utf8(b.toString('utf8')).equals(b);

test('names and SQL: accepted exactly when they are valid UTF-8', () => {
  const q = (bytes: Buffer): boolean => addon().checkMessage('frontend', ch('Q'), Buffer.concat([bytes, Buffer.from([0])])) !== null;
  // Every one- and two-byte string, and every lead/second byte pair of the longer forms.
  for (let a = 1; a < 256; a++) {
    assert.equal(q(Buffer.from([a])), validUtf8(Buffer.from([a])), `${a.toString(16)}`);
    for (let b = 1; b < 256; b++) {
      const two = Buffer.from([a, b]);
      assert.equal(q(two), validUtf8(two), two.toString('hex'));
      if (a >= 0xe0) {
        const longer = Buffer.from(a >= 0xf0 ? [a, b, 0x80, 0xbf] : [a, b, 0xbf]);
        assert.equal(q(longer), validUtf8(longer), longer.toString('hex'));
        assert.equal(q(longer.subarray(0, longer.length - 1)), false, `truncated ${longer.toString('hex')}`);
      }
    }
  }
  // Around the word-at-a-time ASCII scan: one special byte at each position of ASCII runs.
  for (let len = 0; len < 40; len++) {
    for (let at = 0; at <= len; at++) {
      for (const special of [[], [0x80], [0xc3, 0xa9], [0xed, 0xa0, 0x80], [0xf0, 0x9f, 0x98, 0x80], [0x7f], [0x00]]) {
        const bytes = Buffer.concat([Buffer.alloc(at, 0x61), Buffer.from(special), Buffer.alloc(len - at, 0x62)]);
        const body = Buffer.concat([bytes, Buffer.from([0])]);
        const got = agree('frontend', ch('Q'), body);
        assert.equal(got !== null, !bytes.includes(0) && validUtf8(bytes), body.toString('hex'));
      }
    }
  }
  fc.assert(
    fc.property(fc.array(fc.oneof(fc.integer({ min: 1, max: 0x7f }), fc.constantFrom(0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xe1, 0xed, 0xee, 0xef, 0xf0, 0xf1, 0xf4, 0xf5, 0xff)), { maxLength: 24 }), (arr) => {
      const bytes = Buffer.from(arr);
      assert.equal(q(bytes), validUtf8(bytes), bytes.toString('hex'));
    }),
    { numRuns: 3000 },
  );
});

test('hand-picked refusals', () => {
  const refused = (direction: Direction, type: string, body: Buffer, jsAccepts = false): void => {
    assert.equal(addon().checkMessage(direction, ch(type), body), null, `${direction} ${type} ${body.toString('hex')}`);
    assert.equal(jsCheck(direction, ch(type), body) !== null, jsAccepts, `JS on ${direction} ${type} ${body.toString('hex')}`);
  };
  const body = (whole: Buffer): Buffer => whole.subarray(5);
  const withInt32 = (b: Buffer, at: number, v: number): Buffer => { const c = Buffer.from(b); c.writeInt32BE(v, at); return c; };

  // Query: empty, unterminated, a NUL inside, bytes after the NUL.
  refused('frontend', 'Q', Buffer.alloc(0));
  refused('frontend', 'Q', Buffer.from('SELECT 1'));
  refused('frontend', 'Q', Buffer.from('SELECT 1\0; DROP TABLE t\0'));
  refused('frontend', 'Q', Buffer.from('SELECT 1\0\0'));

  // Names that are not UTF-8: JS would take them (as U+FFFD), native must not.
  for (const badName of [[0xc0, 0xaf], [0xe0, 0x80, 0xaf], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xf8, 0x88, 0x80, 0x80, 0x80], [0xc3], [0xe2, 0x82], [0x80], [0xff]]) {
    const name = Buffer.from(badName);
    refused('frontend', 'P', Buffer.concat([name, Buffer.from('\0SELECT 1\0\0\0')]), true);
    refused('frontend', 'B', Buffer.concat([Buffer.from('\0'), name, Buffer.from('\0\0\0\0\0\0\0')]), true);
    refused('frontend', 'E', Buffer.concat([name, Buffer.from('\0\0\0\0\0')]), true);
    refused('frontend', 'C', Buffer.concat([Buffer.from('S'), name, Buffer.from('\0')]), true);
    refused('frontend', 'Q', Buffer.concat([Buffer.from('SELECT '), name, Buffer.from('\0')]), true);
  }

  // Parse: more parameter types declared than present; one left over.
  refused('frontend', 'P', Buffer.from('s\0SELECT $1\0\0\x02\0\0\0\x17'));
  refused('frontend', 'P', Buffer.from('s\0SELECT 1\0\0\0\0'));

  // Bind: the parameter length at its offset after "p\0s\0", two format codes (4), the count (2).
  const b = body(m.bind({ portal: 'p', statement: 's', params: ['abc'], paramFormats: [0], resultFormats: [] }));
  const lenAt = 4 + 4 + 2;
  assert.notEqual(addon().checkMessage('frontend', ch('B'), b), null);
  refused('frontend', 'B', withInt32(b, lenAt, -2));
  refused('frontend', 'B', withInt32(b, lenAt, -0x80000000));
  refused('frontend', 'B', withInt32(b, lenAt, 4));
  refused('frontend', 'B', withInt32(b, lenAt, 0x7fffffff));
  refused('frontend', 'B', b.subarray(0, lenAt + 2));
  refused('frontend', 'B', Buffer.concat([b, Buffer.from([0])]));
  refused('frontend', 'B', body(m.bind({ params: ['1'], paramFormats: [2] })));
  refused('frontend', 'B', body(m.bind({ params: ['1', '2', '3'], paramFormats: [0, 1] })));
  refused('frontend', 'B', body(m.bind({ resultFormats: [-1] })));
  assert.deepEqual(addon().checkMessage('frontend', ch('B'), body(m.bind({ portal: 'p', params: [null, ''], paramFormats: [1] }))), { portal: Buffer.from('p'), statement: Buffer.alloc(0) });

  // Execute and Close.
  refused('frontend', 'E', Buffer.from('p\0\0\0\0'));
  refused('frontend', 'E', Buffer.from('p\0\0\0\0\0\0'));
  refused('frontend', 'C', Buffer.from('Xname\0'));
  refused('frontend', 'C', Buffer.from('S'));
  refused('frontend', 'C', Buffer.from('Sname\0\0'));
  refused('frontend', 'C', Buffer.alloc(0));
  refused('frontend', 'D', body(m.describe('S', 'x')));

  // Backend.
  refused('backend', 'Z', Buffer.from('X'));
  refused('backend', 'Z', Buffer.from('II'));
  refused('backend', 'Z', Buffer.alloc(0));
  refused('backend', 'R', body(m.authenticationOk()));
  refused('backend', 'K', body(m.backendKeyData(1, 2)));
  const d = body(m.dataRow(['ab', null]));
  refused('backend', 'D', withInt32(d, 2, -2));
  refused('backend', 'D', withInt32(d, 2, 3));
  refused('backend', 'D', d.subarray(0, d.length - 1));
  refused('backend', 'D', Buffer.concat([d, Buffer.from([0])]));
  const t = body(m.rowDescription([{ name: 'id', tableOid: 1, columnAttr: 1, typeOid: 23, typeSize: 4, typeMod: -1, format: 0 }]));
  refused('backend', 'T', t.subarray(0, t.length - 1));
  refused('backend', 'T', Buffer.concat([t, Buffer.from([0])]));
  refused('backend', 'C', Buffer.from('SELECT 1'));
  refused('backend', 'C', Buffer.from('SELECT 1\0x'));
  refused('backend', 'E', Buffer.from('SERROR\0'));
  refused('backend', 'E', Buffer.from('SERROR'));
  refused('backend', 'E', Buffer.from('SERROR\0\0\0'));

  // Accepted as JS accepts them: odd but well-formed.
  assert.deepEqual(addon().checkMessage('backend', ch('E'), Buffer.from('\0')), {});
  assert.deepEqual(addon().checkMessage('backend', ch('T'), Buffer.from([0, 1, 0xff, 0, ...new Array(18).fill(0xff)])), {}, 'a non-UTF-8 field name and a format code of -1');
  assert.deepEqual(addon().checkMessage('backend', ch('N'), Buffer.from('anything')), {});
  assert.deepEqual(addon().checkMessage('frontend', ch('E'), Buffer.from('\0\xff\xff\xff\xff', 'latin1')), { portal: Buffer.alloc(0) }, 'a negative row limit');
  assert.deepEqual(addon().checkMessage('frontend', ch('Q'), Buffer.from('\xef\xbb\xbfSELECT \xef\xbf\xbd\0', 'latin1')), { sql: Buffer.from('\uFEFFSELECT \uFFFD') });
  assert.equal(addon().checkMessage('frontend', ch('S'), Buffer.alloc(0)), null, 'types native does not take apart');
});

test('bad arguments throw TypeError', () => {
  const a = addon() as unknown as { checkMessage: (...args: unknown[]) => unknown };
  assert.throws(() => a.checkMessage('sideways', 81, Buffer.from('\0')), TypeError);
  assert.throws(() => a.checkMessage(1, 81, Buffer.from('\0')), TypeError);
  assert.throws(() => a.checkMessage('frontend', 'Q', Buffer.from('\0')), TypeError);
  assert.throws(() => a.checkMessage('frontend', 256, Buffer.from('\0')), TypeError);
  assert.throws(() => a.checkMessage('frontend', 1.5, Buffer.from('\0')), TypeError);
  assert.throws(() => a.checkMessage('frontend', 81, 'SELECT 1'), TypeError);
  assert.throws(() => a.checkMessage('frontend', 81), TypeError);
});
