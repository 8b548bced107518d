// The native statement shape (agent/native/src/shape.cc) must be byte for byte the UTF-8 encoding of
// shapeOf() in agent/pg/classify.ts, and must give up exactly where shapeOf does, except that it also
// gives up on invalid UTF-8 and on NUL bytes (stricter, never looser).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { classify, loadClassifier, shapeOf, statementSpansText } from '../../agent/pg/classify.js';
import { loadNative, type NativeAddon } from '../../agent/native/index.js';

// As RUNGUARD_REQUIRE_NATIVE=1: a missing or broken build fails the test rather than skipping it.
process.env.RUNGUARD_REQUIRE_NATIVE = '1';
const loaded = loadNative();
if (!loaded.addon) throw new Error(loaded.error ?? 'native addon not loaded');
const addon: NativeAddon = loaded.addon;

function native(s: string | Buffer): string | undefined {
  const out = addon.shape(typeof s === 'string' ? Buffer.from(s, 'utf8') : s);
  assert.ok(out === null || Buffer.isBuffer(out));
  return out === null ? undefined : out.toString('utf8');
}

/** Lone surrogates do not survive UTF-8, so such strings have no byte form to compare. */
function roundTrips(s: string): boolean {
  return Buffer.from(s, 'utf8').toString('utf8') === s;
}

/** native(s) must equal shapeOf(s), as bytes; a NUL anywhere makes native give up while JS may not. */
function assertSame(s: string): void {
  assert.ok(roundTrips(s), 'test input must be valid Unicode');
  const got = addon.shape(Buffer.from(s, 'utf8'));
  if (s.includes('\u0000')) {
    assert.equal(got, null, JSON.stringify(s));
    return;
  }
  const want = shapeOf(s);
  if (want === undefined) assert.equal(got, null, `native gave a shape where JS gives up: ${JSON.stringify(s)}`);
  else {
    assert.ok(got !== null, `native gave up where JS did not: ${JSON.stringify(s)}`);
    assert.ok(got.equals(Buffer.from(want, 'utf8')), `${JSON.stringify(s)}: ${JSON.stringify(got.toString('utf8'))} != ${JSON.stringify(want)}`);
  }
}

test('native shape: hand-picked cases agree with shapeOf', () => {
  const cases = [
    '', ' ', '   ', '\t\n\v\f\r ', 'SELECT 1', 'SELECT 1 ', '  SELECT  1  ', 'SELECT 1;', ';', 'SELECT\n1\r\n',
    // comments
    'SELECT 1 -- c', 'SELECT 1 --', '--', '-- only', 'SELECT 1 -- c\nFROM t', 'SELECT 1 -- c\rFROM t', 'a-b', 'a - -b', 'a--b\n',
    '/**/', '/* c */ SELECT 1', 'SELECT a/**/b', 'SELECT /* a /* b */ c */ 1', 'SELECT /* a /* b */ 1', '/*', '/*/', '/* */*/',
    'SELECT 1 /* unterminated', 'SELECT 1 /* /* nested */ still open', '/* é 🙂 */ 1', '/*\u0001*/ 1', '/***/ 1', '/* * / */ 1',
    // strings
    "SELECT 'a'", "SELECT ''", "SELECT ''''", "SELECT 'it''s'", "SELECT 'a''", "SELECT 'unterminated", "'",
    "SELECT 'a'\n'b'", "SELECT 'a' -- c\n'b'", "SELECT 'a' 'b'", "SELECT 'a''b'", "SELECT 'a', 'b'", "SELECT 'a'||'b'",
    "SELECT 'a\\b'", "SELECT 'a\tb\nc'", "SELECT 'a\v\f\rb'", "SELECT 'a\u0001b'", "SELECT 'a\u000eb'", "SELECT 'a\u001fb'", "SELECT 'a\u007fb'", "SELECT 'é'", "SELECT '🙂'", "SELECT 'ß'x",
    "SELECT E'a\\nb'", "SELECT e'x'", "SELECT U&'d\\0061t'", "SELECT u&'x'", "SELECT &'x'", "SELECT B'101'", "SELECT X'1F'",
    "SELECT N'x'", "SELECT b'1'", "SELECT date'2024-01-01'", "SELECT date '2024-01-01'", "SELECT é'x'", "SELECT 1'x'",
    "SELECT a$'x'", "SELECT ('x')", "SELECT ='x'", "'x'", "SELECT x'", "SELECT \"a\"'x'", "SELECT 'a'\"b\"",
    // quoted identifiers
    'SELECT "Col" FROM "ü"', 'SELECT "a""b"', 'SELECT ""', 'SELECT "unterminated', 'SELECT u&"col" FROM t', 'SELECT &"x"',
    'SELECT "a\\b"', 'SELECT "a\u0001b"', 'SELECT "a\u001fb"', 'SELECT "a\tb"', 'SELECT "a\v\fb"', 'SELECT "🙂"', 'SELECT a"b"', 'SELECT "a"b', 'SELECT 1"a"',
    // dollars and parameters
    'SELECT $1', 'SELECT $12 + $3', 'SELECT $$DROP TABLE x$$', 'SELECT $tag$x$tag$', 'SELECT $', 'SELECT $1a', 'SELECT $1.',
    'SELECT $1$', 'SELECT 1$', 'SELECT a$b', 'SELECT $1é', 'SELECT $1::int', 'SELECT ($1)', 'SELECT $1.5', 'SELECT $01',
    // numbers
    'SELECT 1e5', 'SELECT 1E5', 'SELECT 0x1F', 'SELECT 0o17', 'SELECT 0b101', 'SELECT 1_000', 'SELECT 123abc', 'SELECT 1.',
    'SELECT .5', 'SELECT a.1', 'SELECT 1..2', 'SELECT 1.5.3', 'SELECT 1.5', 'SELECT 0.25', 'SELECT 1.5e3', 'SELECT 1.5x',
    'SELECT 2147483647', 'SELECT 2147483648', 'SELECT 02147483647', 'SELECT 002147483648', 'SELECT 9999999999',
    'SELECT 1000000000', 'SELECT 999999999', 'SELECT 21474836470', 'SELECT 0', 'SELECT 00', 'SELECT 0000000000000',
    'SELECT 0000000000001', 'SELECT 007', 'SELECT -1', 'SELECT 1+2', 'SELECT 1é', 'SELECT 1🙂', 'SELECT t.a1', 'SELECT a1.b',
    'SELECT 1::float(0)', 'SELECT 1,2', 'SELECT (1)', 'SELECT 1;2', 'SELECT 1.5.', 'SELECT 1 .5', 'SELECT 1. 5',
    // identifiers and operators
    'SELECT a<=b', 'SELECT a< =b', 'SELECT a <> b', 'SELECT a->>\'k\'', 'SELECT @@ ~* !~~ ||/', 'SELECT * FROM t',
    'SELECT é FROM ü', 'SELECT Ω_1$x', 'SELECT _a', 'SELECT a & b', 'SELECT a&b', "SELECT a&'x'", 'SELECT a&"x"',
    'select 1 from t', 'SELECT a::text[]', 'SELECT [1]', 'SELECT {}', 'SELECT `x`', 'SELECT #x', 'SELECT ?',
    // control characters and backslashes
    'SELECT \u0001', 'SELECT 1\u007f', 'SELECT \\d', '\\', 'SELECT 1\u001f', 'SELECT \u0085', 'SELECT \u00a0 1',
    'SELECT 1\u0000', '/* \u0000 */ SELECT 1', '-- \u0000\nSELECT 1', "'\u0000'",
    // non-ASCII of every UTF-8 length, next to everything
    'é', '🙂', 'ü1', '€$1', '中文 = 1', 'a\u{10ffff}', '\ufeffSELECT 1', "x 'é''🙂'", '"é""🙂"', '/*🙂*/🙂', '--🙂\n🙂',
  ];
  for (const s of cases) assertSame(s);
});

test('native shape: specific shapes', () => {
  const expect: [string, string | null][] = [
    ["SELECT * FROM t WHERE a = 1 AND b = 'x'", 'SELECT * FROM t WHERE a = \u0000i AND b = \u0000s'],
    ['SELECT 1.5, 2147483648, 2147483647', 'SELECT \u0000f, \u0000f, \u0000i'],
    ['  SELECT  /* x */ 1 -- y\n', 'SELECT \u0000i'],
    ['SELECT "a""é" FROM ü WHERE x=$1', 'SELECT "a""é" FROM ü WHERE x=$1'],
    ['SELECT a<=b', 'SELECT a<=b'],
    ['SELECT 000000000002147483648', 'SELECT \u0000f'],
    ["SELECT E'x'", null],
    ["SELECT 'a'\n'b'", null],
    ['SELECT 1.', null],
    ['SELECT 1 /* open', null],
    ['/* \u0000 */ SELECT 1', null], // NUL: JS has a shape, native gives up (stricter)
  ];
  for (const [sql, want] of expect) {
    const got = addon.shape(Buffer.from(sql, 'utf8'));
    assert.deepEqual(got === null ? null : got.toString('utf8'), want, sql);
  }
  assert.equal(shapeOf('/* \u0000 */ SELECT 1'), 'SELECT \u0000i');
});

test('native shape: invalid UTF-8 and non-Buffer arguments', () => {
  const bad = [
    [0xc0, 0x80], [0xc1, 0xbf], [0xe0, 0x80, 0x80], [0xe0, 0x9f, 0xbf], [0xf0, 0x80, 0x80, 0x80], [0xf0, 0x8f, 0xbf, 0xbf],
    [0xed, 0xa0, 0x80], [0xed, 0xbf, 0xbf], [0xf4, 0x90, 0x80, 0x80], [0xf5, 0x80, 0x80, 0x80], [0xff], [0x80], [0xbf],
    [0xc3], [0xe2, 0x82], [0xf0, 0x9f, 0x99], [0xc3, 0x41], [0xe2, 0x41, 0xac], [0xf0, 0x9f, 0x41, 0x82], [0x00],
  ];
  for (const b of bad) {
    assert.equal(addon.shape(Buffer.from([0x61, 0x20, ...b])), null, Buffer.from(b).toString('hex'));
    assert.equal(addon.shape(Buffer.from([0x27, ...b, 0x27])), null, `'${Buffer.from(b).toString('hex')}'`);
  }
  for (const ok of [[0xc2, 0x80], [0xdf, 0xbf], [0xe0, 0xa0, 0x80], [0xed, 0x9f, 0xbf], [0xee, 0x80, 0x80], [0xf0, 0x90, 0x80, 0x80], [0xf4, 0x8f, 0xbf, 0xbf]]) {
    const b = Buffer.from(ok);
    assert.deepEqual(addon.shape(b), b, b.toString('hex'));
  }
  for (const arg of ['SELECT 1', undefined, null, 1, {}, [1]]) {
    assert.throws(() => (addon.shape as (x: unknown) => unknown)(arg), TypeError);
  }
  assert.throws(() => (addon.shape as () => unknown)(), TypeError);
});

const TOKENS = [
  'SELECT', 'from', ' ', ' ', "'", "''", '"', '--', '/*', '*/', '/', '*', '-', '\n', '\r', '\t', '$', '$1', '1', '2147483647',
  '2147483648', '0', '.', 'e', 'E', '&', 'U', 'x', '\\', 'é', '🙂', ';', '(', ')', '=', '_', '\u0001', '\u007f', '\u0000',
  '\v', '\f', '\u001f', "'a'", '"b"', '1.5', '$2', 'é1', ' t ', ',',
];

test('native shape: agrees with shapeOf on SQL-ish token soup', () => {
  fc.assert(
    fc.property(fc.array(fc.constantFrom(...TOKENS), { maxLength: 30 }), (toks) => {
      assertSame(toks.join(''));
    }),
    { numRuns: 2000 },
  );
});

test('native shape: agrees with shapeOf on arbitrary Unicode', () => {
  fc.assert(
    fc.property(fc.oneof(fc.string({ unit: 'grapheme', maxLength: 40 }), fc.string({ unit: 'binary', maxLength: 40 })), (s) => {
      if (roundTrips(s)) assertSame(s);
    }),
    { numRuns: 2000 },
  );
});

test('native shape: random bytes never crash, and a shape means valid UTF-8 and agreement', () => {
  fc.assert(
    fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 40 }),
        // Mostly printable ASCII with some high bytes, so that shapes are found at all.
        fc.array(fc.oneof(fc.integer({ min: 32, max: 126 }), fc.integer({ min: 0, max: 255 })), { maxLength: 40 }).map((a) => Uint8Array.from(a)),
      ),
      (u) => {
        const b = Buffer.from(u);
        const got = addon.shape(b);
        const s = b.toString('utf8');
        const valid = Buffer.from(s, 'utf8').equals(b) && !b.includes(0);
        if (got !== null) {
          assert.ok(valid, `shape for invalid UTF-8 or NUL: ${b.toString('hex')}`);
        }
        if (valid) assertSame(s);
      },
    ),
    { numRuns: 2000 },
  );
});

// The relay hands the handler a simple query's statement text as a byte span of the query
// (AuditedHead.text_start/end); the handler uses it instead of classifying again only where
// statementSpansText says the span is the statement. Both must agree with classify's own text.
const PIECES = {
  lead: ['', ' ', '\n\t', '/* lead; */ ', '-- lead\n', ';', '; '],
  stmt: [
    'SELECT a FROM t WHERE id = 42', "SELECT 'x;y' AS s, \"é;\" FROM t", 'UPDATE t SET v = v + 1 WHERE id = 7',
    'INSERT INTO t (a, b) VALUES (1, \'two\')', 'WITH d AS (DELETE FROM t WHERE id = 3 RETURNING *) SELECT count(*) FROM d',
    'SELECT 1; SELECT 2', 'SELECT 🙂 FROM t', 'select  a ,b   from t  where c  =  $1', 'SELECT 1.5::numeric',
  ],
  inner: ['', ' /* mid */ ', ' -- mid\n'],
  trail: ['', ';', ' ;', ';;', '; -- done', ' /* end */', '\n', '; ;\n'],
};

test('native shape: the span it reports is the statement text wherever classify says a statement spans its text', async () => {
  await loadClassifier();
  const span = new Uint32Array(2);
  let spanning = 0;
  fc.assert(
    fc.property(fc.constantFrom(...PIECES.lead), fc.constantFrom(...PIECES.stmt), fc.constantFrom(...PIECES.inner), fc.constantFrom(...PIECES.trail),
      (lead, stmt, inner, trail) => {
        // `inner` goes after the first word, where a comment is not part of a literal.
        const sql = lead + stmt.replace(' ', inner || ' ') + trail;
        const c = classify(sql);
        if ('error' in c || c.shape === undefined || !statementSpansText(c.shape)) return;
        spanning++;
        const bytes = Buffer.from(sql, 'utf8');
        assert.ok(addon.shape(bytes, span) !== null, sql);
        assert.equal(bytes.toString('utf8', span[0], span[1]), c.statements[0]!.text, JSON.stringify(sql));
      }),
    { numRuns: 1000 },
  );
  assert.ok(spanning > 100, `only ${spanning} texts spanned by their statement`);
  // And where it does not hold, the handler must not be told it does.
  for (const sql of ['SELECT 1; SELECT 2', 'SELECT 1;SELECT 2;']) {
    const c = classify(sql);
    assert.ok(!('error' in c) && c.shape !== undefined && !statementSpansText(c.shape), sql);
  }
  const c = classify('SELECT 1 -- c');
  assert.ok(!('error' in c) && c.shape !== undefined && statementSpansText(c.shape));
  assert.equal(c.statements[0]!.text, 'SELECT 1');
});
