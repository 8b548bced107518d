// Result masking of DataRows (maskDataRow in agent/pg/handler.ts), against the implementation it
// replaced: the row fast path (rowCannotHit) must give the very same bytes, errors and counts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { PgProtocolError } from '../../agent/pg/frames.js';
import * as m from '../../agent/pg/messages.js';
import { maskDataRow, ResultShapes, type ResultMask } from '../../agent/pg/handler.js';
import type { MaskSpec } from '../../agent/policy/types.js';
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

// ---- ResultShapes against the string-keyed Map it replaced ----------------------------------------

/** The original cache in describeResult: cleared on a new spec or at 256 shapes, keyed by a string. */
class ShapesRef<T> {
  private readonly shapes = new Map<string, T>();
  private spec?: MaskSpec;
  get(spec: MaskSpec, tables: readonly string[], body: Buffer): T | undefined {
    if (this.spec !== spec || this.shapes.size >= 256) {
      this.shapes.clear();
      this.spec = spec;
    }
    return this.shapes.get(`${tables.join('\0')}\x01${body.toString('latin1')}`);
  }
  set(tables: readonly string[], body: Buffer, value: T): void {
    this.shapes.set(`${tables.join('\0')}\x01${body.toString('latin1')}`, value);
  }
}

test('ResultShapes hits exactly when the old cache did, and never with another shape', () => {
  const specs: MaskSpec[] = [{ columns: ['*email*'], detectors: [] }, { columns: ['*email*'], detectors: [] }, { columns: [], detectors: ['email'] }];
  // No '' or NUL in names: the old key joined them with NUL, so [''] and [] collided there (see below).
  const tables = fc.oneof(fc.constantFrom([], ['users'], ['users', 'orders']),
    fc.array(fc.constantFrom('users', 'public.users', 'Users', 'é', 'a', '"'), { maxLength: 3 }));
  // Few distinct bodies, so that repeats (the last-shape path) and returns to older shapes happen;
  // latin1 and UTF-8 look-alikes ('é' as one byte or two) must stay apart.
  const rowDesc = fc.oneof(
    fc.constantFrom('', 'T', 'é', '\u00c3\u00a9', '\0', 'abc', 'abd').map((t) => Buffer.from(t, 'latin1')),
    fc.constantFrom('é', 'abc').map((t) => Buffer.from(t, 'utf8')),
    fc.uint8Array({ maxLength: 3 }).map((b) => Buffer.from(b)),
  );
  // Mostly one spec, as in a session; a change of spec forgets everything.
  const step = fc.tuple(fc.constantFrom(0, 0, 0, 0, 0, 0, 1, 2), tables, rowDesc);
  fc.assert(fc.property(fc.array(step, { maxLength: 600 }), (steps) => {
    const shapes = new ResultShapes<string>();
    const ref = new ShapesRef<string>();
    const reads = Buffer.alloc(16);
    for (const [si, generated, b] of steps) {
      const spec = specs[si]!;
      const t: string[] = [...generated];
      const identity = `${si}|${JSON.stringify(t)}|${b.toString('hex')}`;
      // Every frame is read into the same memory, as the server side's reads are.
      const view = reads.subarray(0, b.length);
      b.copy(view);
      const got = shapes.get(spec, t, view);
      const want = ref.get(spec, t, b);
      assert.equal(got, want);
      if (got === undefined) {
        shapes.set(t, view, identity);
        ref.set(t, b, identity);
      } else {
        assert.equal(got, identity, 'a hit is the shape stored for these very inputs');
      }
      t.push('mutated later');
    }
  }), { numRuns: 300 });
});

test('ResultShapes forgets everything at a new spec and past its bound', () => {
  const a: MaskSpec = { columns: ['x'], detectors: [] };
  const shapes = new ResultShapes<number>();
  for (let i = 0; i < ResultShapes.MAX; i++) {
    assert.equal(shapes.get(a, [], Buffer.from([i & 0xff, i >> 8])), undefined);
    shapes.set([], Buffer.from([i & 0xff, i >> 8]), i);
  }
  assert.equal(shapes.get(a, [], Buffer.from([5, 0])), undefined, 'cleared at the bound');
  shapes.set([], Buffer.from([5, 0]), 5);
  assert.equal(shapes.get(a, [], Buffer.from([5, 0])), 5);
  assert.equal(shapes.get({ ...a }, [], Buffer.from([5, 0])), undefined, 'another spec object');
});

test('ResultShapes keeps its own copy of the bytes: the frame it saw may be overwritten', () => {
  const a: MaskSpec = { columns: ['x'], detectors: [] };
  const shapes = new ResultShapes<string>();
  const frame = Buffer.from('Tabc');
  shapes.get(a, ['t'], frame);
  shapes.set(['t'], frame, 'abc');
  frame.write('Txyz');
  assert.equal(shapes.get(a, ['t'], Buffer.from('Txyz')), undefined);
  assert.equal(shapes.get(a, ['t'], Buffer.from('Tabc')), 'abc');
});

test('ResultShapes tells apart lists of table names the old NUL-joined key confused', () => {
  const a: MaskSpec = { columns: ['x'], detectors: [] };
  const body = Buffer.from('T');
  for (const [x, y] of [[[], ['']], [['a', 'b'], ['a\0b']], [['a'], ['a', '']]] as string[][][]) {
    const shapes = new ResultShapes<string>();
    shapes.get(a, x!, body);
    shapes.set(x!, body, 'x');
    assert.equal(shapes.get(a, y!, body), undefined, JSON.stringify([x, y]));
    shapes.set(y!, body, 'y');
    assert.equal(shapes.get(a, x!, body), 'x', 'from the map, not the last shape');
    assert.equal(shapes.get(a, y!, body), 'y');
  }
});
