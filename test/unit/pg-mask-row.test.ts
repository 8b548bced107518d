// Result masking of DataRows (maskDataRow in agent/pg/handler.ts), against the implementation it
// replaced: the row fast path (rowCannotHit) must give the very same bytes, errors and counts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { PgProtocolError } from '../../agent/pg/frames.js';
import * as m from '../../agent/pg/messages.js';
import { maskDataRow, type ResultMask } from '../../agent/pg/handler.js';
import { detectorHit, rowCannotHit } from '../../agent/redact/detectors.js';
import { MASK_DETECTORS } from '../../agent/policy/load.js';

/** The original PgSession.maskRow (before the fast path), as the oracle. */
function maskRowRef(body: Buffer, detectors: readonly string[], cols: boolean[], formats: number[], onMasked: () => void): Buffer | PgProtocolError | undefined {
  let select: boolean[] = cols;
  if (detectors.length) {
    const row = m.decodeDataRow(body);
    if (row instanceof PgProtocolError) return row;
    select = row.values.map((v, i) => cols[i] || (v !== null && formats[i] === 0 && detectorHit(detectors, v.toString('utf8'))));
  }
  if (!select.some(Boolean)) return m.checkDataRow(body);
  return m.rewriteDataRow(body, select, (_v, i) => {
    onMasked();
    return formats[i] === 1 ? Buffer.alloc(0) : Buffer.from('[MASKED]');
  });
}

function dataRowBody(values: (Buffer | null)[]): Buffer {
  const parts: Buffer[] = [Buffer.alloc(2)];
  parts[0]!.writeUInt16BE(values.length);
  for (const v of values) {
    const len = Buffer.alloc(4);
    len.writeInt32BE(v === null ? -1 : v.length);
    parts.push(len);
    if (v) parts.push(v);
  }
  return Buffer.concat(parts);
}

const TEXTS = ['0', '-4711', '42', '2024-05-01 12:00:00+00', 'ada@example.com', 'x@y', '@', 'mailto:bo@ex.org', 'postgres://u:p@h/db',
  '4111 1111 1111 1111', '4111111111111111', '5500-0000-0000-0004', '1700000000000', '1234567890123', '123456789012', 'Zoë ☃ 😀',
  'ghp_' + 'a'.repeat(36), 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig', 'password=hunter2', '\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669\u0660\u0661\u0662'];
const value: fc.Arbitrary<Buffer | null> = fc.oneof(
  { arbitrary: fc.constant(null), weight: 1 },
  { arbitrary: fc.constantFrom(...TEXTS).map((t) => Buffer.from(t)), weight: 4 },
  { arbitrary: fc.array(fc.constantFrom(...TEXTS, ' ', '-', '1', '@', 'é'), { maxLength: 5 }).map((a) => Buffer.from(a.join(''))), weight: 3 },
  { arbitrary: fc.string({ unit: 'binary', maxLength: 20 }).map((s) => Buffer.from(s)), weight: 2 },
  { arbitrary: fc.uint8Array({ maxLength: 20 }).map((b) => Buffer.from(b)), weight: 2 },
  { arbitrary: fc.integer({ min: 0, max: 0x7fffffff }).map((n) => Buffer.from(String(n * 7919))), weight: 2 },
);
const DETECTOR_SETS: string[][] = [[], ['email'], ['card-number'], ['email', 'card-number'], ['card-number', 'email'], ['jwt'], ['email', 'github-token'],
  ['card-number', 'password-assignment'], [...MASK_DETECTORS]];

/** A body: usually well-formed, sometimes cut short, padded or with a wrong column count. */
const body = fc.tuple(fc.array(value, { maxLength: 6 }), fc.constantFrom('ok', 'ok', 'ok', 'ok', 'cut', 'pad', 'count')).chain(([values, how]) => {
  const b = dataRowBody(values);
  if (how === 'cut') return fc.integer({ min: 0, max: Math.max(0, b.length - 1) }).map((n) => ({ values, body: b.subarray(0, n) }));
  if (how === 'pad') return fc.constant({ values, body: Buffer.concat([b, Buffer.from('@1')]) });
  if (how === 'count') return fc.integer({ min: 0, max: 8 }).map((n) => { const c = Buffer.from(b); if (c.length >= 2) c.writeUInt16BE(n); return { values, body: c }; });
  return fc.constant({ values, body: b });
});

const show = (r: Buffer | PgProtocolError | undefined) => (r instanceof PgProtocolError ? `error: ${r.message}` : r === undefined ? 'unchanged' : r.toString('hex'));

test('maskDataRow gives the same rows, errors and masked counts as the full path it shortcuts', () => {
  fc.assert(fc.property(body, fc.constantFrom(...DETECTOR_SETS), fc.array(fc.boolean(), { maxLength: 7 }), fc.boolean(),
    fc.array(fc.constantFrom(0, 0, 1), { maxLength: 7 }), ({ body: b }, detectors, someCols, noCols, formats) => {
      // Mostly results with no column masked by name: the case the fast path is for.
      const cols = noCols ? someCols.map(() => false) : someCols;
      const mask: ResultMask = { detectors, cols, formats, anyColumn: cols.some(Boolean), cannotHit: rowCannotHit(detectors) };
      let n = 0;
      let nRef = 0;
      const got = maskDataRow(b, mask, () => n++);
      const want = maskRowRef(b, detectors, cols, formats, () => nRef++);
      assert.equal(show(got), show(want));
      assert.equal(n, nRef);
    }), { numRuns: 20_000 });
});

test('rowCannotHit: only for email and card-number, and only rows that really cannot hit', () => {
  assert.equal(rowCannotHit([]), undefined);
  assert.equal(rowCannotHit(['email', 'jwt']), undefined);
  assert.equal(rowCannotHit(['url-password']), undefined, "url-password needs an '@' too, but is not one the test knows");
  const email = rowCannotHit(['email'])!;
  const card = rowCannotHit(['card-number'])!;
  const both = rowCannotHit(['email', 'card-number'])!;
  assert.equal(email(Buffer.from('12345678901234567890')), true);
  assert.equal(email(Buffer.from('a@b')), false);
  assert.equal(card(Buffer.from('a@b 123456789012')), true, '12 digits');
  assert.equal(card(Buffer.from('1234567890123')), false, '13 digits');
  assert.equal(both(Buffer.from('-4711')), true);
  assert.equal(both(Buffer.from('x@')), false);
});

test('rowCannotHit never claims a value cannot hit when detectorHit finds something in it', () => {
  const text = fc.oneof(fc.string({ unit: 'binary', maxLength: 40 }),
    fc.array(fc.constantFrom(...TEXTS, ' ', '-', '1', '12', '@', '.', 'com', 'é'), { maxLength: 8 }).map((a) => a.join('')));
  for (const names of [['email'], ['card-number'], ['email', 'card-number']]) {
    const cannot = rowCannotHit(names)!;
    fc.assert(fc.property(text, (s) => {
      if (cannot(Buffer.from(s, 'utf8'))) assert.equal(detectorHit(names, s), false, JSON.stringify(s));
    }), { numRuns: 5000 });
  }
});
