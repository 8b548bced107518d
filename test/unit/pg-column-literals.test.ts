// Literals written into masked columns never reach the audit text; everything else is untouched.
import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { classify, loadClassifier } from '../../agent/pg/classify.js';
import { maskedWrites, mentionsMaskedColumn, mentionsMaskedColumnCached, redactColumnLiterals } from '../../agent/pg/column-literals.js';
import type { MaskSpec } from '../../agent/policy/types.js';
import { maskCoversColumn } from '../../agent/policy/policy.js';

const SPEC: MaskSpec = { columns: ['*email*', '*password*', '*token*', 'payroll.salary'], detectors: [] };
const R = (c: string) => `'[REDACTED:column:${c}]'`;

before(() => loadClassifier());

test('INSERT: each VALUES row, by column position, any literal form', () => {
  assert.equal(redactColumnLiterals("INSERT INTO deploys (ref, api_token) VALUES ('main', 'tok_7f3a9c'), ('dev', E'x\\'y'::text)", SPEC),
    `INSERT INTO deploys (ref, api_token) VALUES ('main', ${R('api_token')}), ('dev', ${R('api_token')}::text)`);
  assert.equal(redactColumnLiterals('INSERT INTO u (id, password_hash) VALUES (7, $pw$s3cr3t\'$$x$pw$)', SPEC),
    `INSERT INTO u (id, password_hash) VALUES (7, ${R('password_hash')})`);
  assert.equal(redactColumnLiterals("INSERT INTO u (email) VALUES (lower('ADA@EXAMPLE.COM'))", SPEC), `INSERT INTO u (email) VALUES (lower(${R('email')}))`);
  assert.equal(redactColumnLiterals('INSERT INTO u ("Api_Token") VALUES (\'q\')', SPEC), `INSERT INTO u ("Api_Token") VALUES (${R('Api_Token')})`);
});

test('UPDATE SET and ON CONFLICT DO UPDATE SET; table.column selectors', () => {
  assert.equal(redactColumnLiterals("UPDATE users SET api_token = 'abc', name = 'n' WHERE id = 1", SPEC), `UPDATE users SET api_token = ${R('api_token')}, name = 'n' WHERE id = 1`);
  assert.equal(redactColumnLiterals("INSERT INTO t (id, token) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET token = 'b'", SPEC),
    `INSERT INTO t (id, token) VALUES (1, ${R('token')}) ON CONFLICT (id) DO UPDATE SET token = ${R('token')}`);
  assert.equal(redactColumnLiterals('UPDATE payroll SET salary = 99000.50 WHERE id = 3', SPEC), `UPDATE payroll SET salary = ${R('salary')} WHERE id = 3`);
  assert.equal(redactColumnLiterals('UPDATE other SET salary = 1', SPEC), 'UPDATE other SET salary = 1', 'salary only in payroll');
  assert.equal(redactColumnLiterals("WITH x AS (UPDATE s SET token = 'z' RETURNING 1) SELECT * FROM x", SPEC), `WITH x AS (UPDATE s SET token = ${R('token')} RETURNING 1) SELECT * FROM x`);
});

test('untouched: other columns, reads, non-ASCII around, bad SQL, no masked identifier', () => {
  for (const sql of ["INSERT INTO t (name) VALUES ('tok_1')", "SELECT * FROM users WHERE api_token = 'x'", 'UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid = 1', 'INSERT INTO (', "UPDATE t SET token = NULL"]) {
    assert.equal(redactColumnLiterals(sql, SPEC), sql);
  }
  assert.equal(redactColumnLiterals("INSERT INTO t (nom, token) VALUES ('Zoë ☃', 'sécret')", SPEC), `INSERT INTO t (nom, token) VALUES ('Zoë ☃', ${R('token')})`);
  assert.equal(mentionsMaskedColumn('UPDATE pgbench_branches SET bbalance = bbalance + 1', SPEC), false);
  assert.equal(mentionsMaskedColumn('UPDATE x SET token = 1', { columns: [], detectors: ['email'] }), false);
});

test('bound parameters assigned to masked columns are named, with their column', () => {
  const w = maskedWrites('INSERT INTO deploys (ref, api_token, note) VALUES ($1, $2, $3) ON CONFLICT (ref) DO UPDATE SET api_token = $4', SPEC);
  assert.deepEqual([...w.params].sort(), [[2, 'api_token'], [4, 'api_token']]);
  assert.deepEqual([...maskedWrites('UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2', SPEC).params], []);
});

test("a secret a detector knows keeps the detector's label, still hiding the literal whole", () => {
  const label = (lit: string) => (lit.includes('dpl_') ? 'env:DEPLOY_TOKEN' : undefined);
  assert.equal(redactColumnLiterals("INSERT INTO deploys (ref, notify_token, api_token) VALUES ('main', 'Bearer dpl_9a8b', 'plain')", SPEC, [], label),
    `INSERT INTO deploys (ref, notify_token, api_token) VALUES ('main', '[REDACTED:env:DEPLOY_TOKEN]', ${R('api_token')})`);
  assert.equal(redactColumnLiterals("INSERT INTO t (name) VALUES ('dpl_1')", SPEC, [], label), "INSERT INTO t (name) VALUES ('dpl_1')", 'only masked columns are rewritten here');
});

// ---- mentionsMaskedColumn against the regex implementation it replaced --------------------------

/** The original: a global identifier regex and one for quoted identifiers (the oracle). */
function mentionsMaskedColumnRef(sql: string, spec: MaskSpec): boolean {
  if (!spec.columns.length) return false;
  const cols: MaskSpec = { columns: spec.columns.map((c) => c.slice(c.lastIndexOf('.') + 1)), detectors: [] };
  for (const m of sql.matchAll(/[A-Za-z_][A-Za-z0-9_$]*/g)) if (maskCoversColumn(cols, m[0].toLowerCase())) return true;
  for (const m of sql.matchAll(/"((?:[^"]|"")+)"/g)) if (maskCoversColumn(cols, m[1]!.replace(/""/g, '"'))) return true;
  return false;
}

// Fixed specs, so the per-spec caches persist across generated statements as they do in a session.
const SPECS: MaskSpec[] = [
  SPEC,
  { columns: ['token'], detectors: [] },
  { columns: ['Api_Token', 'users.Email'], detectors: ['email'] },
  { columns: ['*$*', 'a?c', '*"*'], detectors: [] },
  { columns: ['*é*', 'x y', 'schema.t.col9'], detectors: [] },
  { columns: [], detectors: ['email'] },
];
const WORDS = ['token', 'TOKEN', 'api_token', 'Api_Token', 'email', 'Email', 'EMAIL_addr', 'password_hash', 'salary', 'payroll', 'col9', 'abc', 'aXc',
  'select', 'from', 'where', 'x', '_', 'a$b', '$1', 'é', 'tokén', 'x y', 'Zoë'];
const fragment = fc.oneof(
  fc.constantFrom(...WORDS),
  fc.constantFrom(' ', ',', '.', '(', ')', "'", '"', '""', '@', '$', '-', '\n', '9', '42', '1234567890123', '☃', '😀', '\u0130', '\u212a'),
  fc.constantFrom(...WORDS).map((w) => `"${w.replace(/"/g, '""')}"`),
  fc.string({ unit: 'binary', maxLength: 6 }),
  fc.string({ unit: fc.constantFrom('a', 'B', '_', '$', '0', '"', ' ', '@', 'k'), maxLength: 8 }),
);
const statement = fc.array(fragment, { maxLength: 24 }).map((parts) => parts.join(''));

test('mentionsMaskedColumn agrees with the regex scan it replaced (generated text)', () => {
  fc.assert(fc.property(statement, fc.constantFrom(...SPECS), (sql, spec) => {
    assert.equal(mentionsMaskedColumn(sql, spec), mentionsMaskedColumnRef(sql, spec), JSON.stringify(sql));
  }), { numRuns: 5000 });
  fc.assert(fc.property(fc.string({ unit: 'grapheme', maxLength: 40 }), fc.constantFrom(...SPECS), (sql, spec) => {
    assert.equal(mentionsMaskedColumn(sql, spec), mentionsMaskedColumnRef(sql, spec));
  }), { numRuns: 2000 });
});

test('mentionsMaskedColumn stays exact when its bounded cache is cleared and refilled', () => {
  const spec: MaskSpec = { columns: ['*token*', 'n4095'], detectors: [] };
  // More distinct names than the cache holds, twice over, then the names that match.
  const names = Array.from({ length: 10_000 }, (_, i) => `n${i}`);
  for (const n of names) assert.equal(mentionsMaskedColumn(`SELECT ${n}`, spec), n === 'n4095', n);
  assert.equal(mentionsMaskedColumn('SELECT N4095', spec), true);
  assert.equal(mentionsMaskedColumn('SELECT "my_TOKEN"', spec), true);
  assert.equal(mentionsMaskedColumn('SELECT "n"', spec), false);
});

test('mentionsMaskedColumnCached: per shape, never a "no" the scan of the text would not give', () => {
  const shapeOf = (sql: string) => {
    const c = classify(sql);
    assert.ok('statements' in c);
    return c.shape;
  };
  const spec: MaskSpec = { columns: ['*email*'], detectors: [] };
  // The first text of a shape is parsed; the second one hits the shape cache and carries its id.
  classify('SELECT name FROM users WHERE id = 1');
  const plain = shapeOf('SELECT name FROM users WHERE id = 2');
  assert.ok(plain, 'a shape hit carries the shape id');
  assert.equal(shapeOf('SELECT name FROM users WHERE id = 3'), plain, 'one id per shape');
  assert.equal(mentionsMaskedColumnCached('SELECT name FROM users WHERE id = 2', spec, plain), false);
  // A literal that looks like a masked name does not make the shape mention one, and is not needed to:
  // only real column references can receive a masked write.
  assert.equal(mentionsMaskedColumnCached("SELECT name FROM users WHERE id = 'email'", spec, shapeOf("SELECT name FROM users WHERE id = 'x'")), true,
    'a first text with the name in a literal scans as mentioning it (harmless: the exact check follows)');
  // A multi-statement string: the answer covers the whole string, so a later statement is never missed.
  classify("SELECT 1; UPDATE users SET email = 'a' WHERE id = 1");
  const multi = shapeOf("SELECT 2; UPDATE users SET email = 'b' WHERE id = 2");
  assert.equal(mentionsMaskedColumnCached("SELECT 2; UPDATE users SET email = 'b' WHERE id = 2", spec, multi), true);
  assert.equal(mentionsMaskedColumnCached("SELECT 3; UPDATE users SET email = 'c' WHERE id = 3", spec, multi), true);
  // Without a shape id (exact-cache hits, texts the shape scanner gives up on) it is the plain scan.
  assert.equal(mentionsMaskedColumnCached('UPDATE users SET email = $1', spec, undefined), true);
  // Property: for texts of one shape the cached answer is never "no" where the text's scan says yes
  // outside literals, i.e. where maskedWrites could redact something.
  fc.assert(fc.property(fc.integer(), fc.constantFrom('email', 'name', 'x@y'), (n, lit) => {
    const sql = `UPDATE users SET email = '${lit}' WHERE id = ${n}`;
    const cached = mentionsMaskedColumnCached(sql, spec, shapeOf(sql));
    return cached || maskedWrites(sql, spec).text === sql;
  }));
});
