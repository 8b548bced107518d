import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  loadClassifier, classify, classifyUncached, classifyStats, resetClassifyCache, shapeOf,
  type ClassifiedStatement, type Classification,
} from '../../agent/pg/classify.js';

before(async () => {
  await loadClassifier();
});

function stmts(c: Classification): ClassifiedStatement[] {
  if ('error' in c) assert.fail(`unexpected parse error: ${c.error}`);
  return c.statements;
}

function one(sql: string): ClassifiedStatement {
  const s = stmts(classify(sql)).filter((x) => !x.nested);
  assert.equal(s.length, 1, sql);
  return s[0]!;
}

test('DROP inside a comment or a string literal is not a DROP', () => {
  for (const sql of [
    "SELECT 'DROP TABLE users'",
    'SELECT 1 -- DROP TABLE users',
    '/* DROP TABLE users; */ SELECT 1',
    '/* nested /* DROP TABLE users; */ still comment */ SELECT 1',
    'SELECT $$DROP TABLE users$$',
    "SELECT E'\\'; DROP TABLE users; --'",
    'SELECT "DROP TABLE users" FROM t',
  ]) {
    const all = stmts(classify(sql));
    assert.equal(all.length, 1, sql);
    assert.equal(all[0]!.type, 'SELECT', sql);
  }
  assert.equal(one('DROP TABLE users').type, 'DROP TABLE');
});

test('DELETE and UPDATE without WHERE are recognisable', () => {
  assert.deepEqual(one('DELETE FROM users'), { type: 'DELETE', objects: ['users'], text: 'DELETE FROM users', hasWhere: false });
  assert.deepEqual(one('delete from public.users where id = 3'), { type: 'DELETE', objects: ['public.users'], text: 'delete from public.users where id = 3', hasWhere: true });
  assert.equal(one('DELETE FROM users -- WHERE id = 1').hasWhere, false);
  assert.equal(one("DELETE FROM users WHERE note = 'no where here'").hasWhere, true);
  assert.equal(one('UPDATE users SET a = 1').hasWhere, false);
  assert.equal(one('UPDATE users SET a = 1 WHERE CURRENT OF c').hasWhere, true);
  assert.equal(one('SELECT 1').hasWhere, undefined);
});

test('a multi-statement string gives one operation per statement, with its own text', () => {
  const s = stmts(classify("SELECT 1; DROP TABLE app.users CASCADE;\n  insert into t values ('a;b'); -- done"));
  assert.deepEqual(s.map((x) => x.type), ['SELECT', 'DROP TABLE', 'INSERT']);
  assert.deepEqual(s.map((x) => x.text), ['SELECT 1', 'DROP TABLE app.users CASCADE', "insert into t values ('a;b')"]);
  assert.deepEqual(s[1]!.objects, ['app.users']);
  // Not cacheable by shape (dollar quotes): same texts through the byte-offset path, non-ASCII included.
  const u = stmts(classify("SELECT $$é;$$; DROP TABLE \"ü\"; SELECT 'ß'"));
  assert.deepEqual(u.map((x) => [x.type, x.text]), [['SELECT', 'SELECT $$é;$$'], ['DROP TABLE', 'DROP TABLE "ü"'], ['SELECT', "SELECT 'ß'"]]);
  assert.deepEqual(u[1]!.objects, ['ü']);
  assert.deepEqual(stmts(classify('')), []);
  assert.deepEqual(stmts(classify(' ; -- nothing')), []);
});

test('objects: joins, subqueries, CTEs, INSERT ... SELECT, DROP and TRUNCATE lists', () => {
  assert.deepEqual(one('SELECT * FROM a JOIN b.c ON true LEFT JOIN d USING (id), e').objects, ['a', 'b.c', 'd', 'e']);
  assert.deepEqual(one('SELECT * FROM a WHERE id IN (SELECT aid FROM b WHERE EXISTS (SELECT 1 FROM s.c)) AND x = (SELECT max(y) FROM d)').objects, ['a', 'b', 's.c', 'd']);
  // A CTE's own name is reported too when referenced (a conservative choice: it is a name that could be a table).
  const cte = one('WITH x AS (SELECT * FROM a) SELECT * FROM x JOIN b ON true');
  assert.deepEqual(new Set(cte.objects), new Set(['a', 'b', 'x']));
  assert.deepEqual(one('INSERT INTO t (a) SELECT a FROM s WHERE s.b = 1').objects, ['t', 's']);
  assert.deepEqual(one('UPDATE t SET a = u.a FROM u WHERE t.id = u.id').objects, ['t', 'u']);
  assert.deepEqual(one('DELETE FROM t USING u WHERE t.id = u.id').objects, ['t', 'u']);
  assert.deepEqual(one('TRUNCATE a, b.c').objects, ['a', 'b.c']);
  assert.deepEqual(one('DROP TABLE IF EXISTS a, s.b CASCADE').objects, ['a', 's.b']);
  assert.deepEqual(one('DROP TRIGGER tr ON s.t').objects, ['s.t']);
  assert.deepEqual(one('DROP DATABASE prod').objects, ['prod']);
  assert.deepEqual(one('SELECT * FROM db.s.t').objects, ['db.s.t']);
  assert.deepEqual(one('SELECT 1').objects, []);
  assert.deepEqual(one('COPY t (a, b) FROM STDIN').objects, ['t']);
  assert.deepEqual(one('GRANT SELECT ON s.t TO bob').objects, ['s.t']);
  assert.deepEqual(one('ALTER TABLE s.t ADD COLUMN c int').objects, ['s.t']);
  assert.deepEqual(one('CREATE INDEX i ON t (a)').objects, ['t']);
});

test('statement types', () => {
  const cases: [string, string][] = [
    ['SELECT 1', 'SELECT'], ['VALUES (1)', 'SELECT'], ['TABLE t', 'SELECT'], ['SELECT * INTO t2 FROM t', 'SELECT INTO'],
    ['INSERT INTO t VALUES (1)', 'INSERT'], ['UPDATE t SET a = 1', 'UPDATE'], ['DELETE FROM t', 'DELETE'],
    ['MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE', 'MERGE'],
    ['DROP TABLE t', 'DROP TABLE'], ['DROP INDEX i', 'DROP INDEX'], ['DROP SCHEMA s CASCADE', 'DROP SCHEMA'],
    ['DROP DATABASE d', 'DROP DATABASE'], ['DROP VIEW v', 'DROP VIEW'], ['DROP MATERIALIZED VIEW v', 'DROP MATERIALIZED VIEW'],
    ['DROP FUNCTION f(int)', 'DROP FUNCTION'], ['DROP ROLE r', 'DROP ROLE'], ['DROP SEQUENCE q', 'DROP SEQUENCE'],
    ['TRUNCATE t', 'TRUNCATE'], ['ALTER TABLE t ADD COLUMN c int', 'ALTER TABLE'], ['ALTER INDEX i RENAME TO j', 'ALTER INDEX'],
    ['ALTER TABLE t RENAME COLUMN a TO b', 'ALTER TABLE'], ['ALTER TABLE t RENAME TO u', 'ALTER TABLE'],
    ['ALTER TABLE t SET SCHEMA s', 'ALTER TABLE'], ['ALTER TABLE t OWNER TO r', 'ALTER TABLE'], ['ALTER VIEW v RENAME TO w', 'ALTER VIEW'],
    ['ALTER SEQUENCE q RESTART', 'ALTER SEQUENCE'],
    ['CREATE TABLE t (a int)', 'CREATE TABLE'], ['CREATE TABLE t2 AS SELECT 1', 'CREATE TABLE AS'],
    ['CREATE MATERIALIZED VIEW mv AS SELECT 1', 'CREATE MATERIALIZED VIEW'], ['CREATE INDEX i ON t (a)', 'CREATE INDEX'],
    ["CREATE ROLE r PASSWORD 'x'", 'CREATE ROLE'], ["CREATE USER u PASSWORD 'x'", 'CREATE ROLE'], ["ALTER ROLE r PASSWORD 'y'", 'ALTER ROLE'],
    ['GRANT SELECT ON t TO r', 'GRANT'], ['REVOKE SELECT ON t FROM r', 'REVOKE'], ['GRANT r TO u', 'GRANT'],
    ['COPY t TO STDOUT', 'COPY'], ['BEGIN', 'BEGIN'], ['START TRANSACTION', 'START TRANSACTION'], ['COMMIT', 'COMMIT'],
    ['ROLLBACK', 'ROLLBACK'], ['SAVEPOINT a', 'SAVEPOINT'], ['RELEASE a', 'RELEASE'], ['ROLLBACK TO a', 'ROLLBACK'],
    ["PREPARE TRANSACTION 'x'", 'PREPARE TRANSACTION'], ['SET search_path = s', 'SET'], ['SET ROLE admin', 'SET'], ['RESET ALL', 'RESET'],
    ['SHOW ALL', 'SHOW'], ['EXPLAIN SELECT 1', 'EXPLAIN'], ['DO $$ BEGIN END $$', 'DO'], ['CALL p()', 'CALL'],
    ['VACUUM t', 'VACUUM'], ['ANALYZE t', 'ANALYZE'], ['CREATE SEQUENCE q', 'CREATE SEQUENCE'], ['CREATE VIEW v AS SELECT 1', 'CREATE VIEW'],
    ['CREATE SCHEMA s', 'CREATE SCHEMA'], ['CREATE EXTENSION pgcrypto', 'CREATE EXTENSION'], ['CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$SELECT 1$$', 'CREATE FUNCTION'],
    ['CREATE PROCEDURE p() LANGUAGE sql AS $$SELECT 1$$', 'CREATE PROCEDURE'], ['LOCK TABLE t', 'LOCK TABLE'], ['LISTEN c', 'LISTEN'],
    ["NOTIFY c, 'x'", 'NOTIFY'], ['PREPARE p AS SELECT 1', 'PREPARE'], ['EXECUTE p', 'EXECUTE'], ['DEALLOCATE p', 'DEALLOCATE'],
    ['DISCARD ALL', 'DISCARD'], ['CHECKPOINT', 'CHECKPOINT'], ['REFRESH MATERIALIZED VIEW mv', 'REFRESH MATERIALIZED VIEW'],
    ['CREATE DATABASE d', 'CREATE DATABASE'], ["COMMENT ON TABLE t IS 'x'", 'COMMENT'], ['CREATE TYPE ty AS (a int)', 'CREATE TYPE'],
    ['CREATE AGGREGATE a (int) (sfunc = f, stype = int)', 'CREATE AGGREGATE'], ['FETCH 1 FROM c', 'FETCH'], ['MOVE 1 IN c', 'MOVE'],
    ['CREATE PUBLICATION p FOR ALL TABLES', 'CREATE PUBLICATION'], ['CREATE ACCESS METHOD am TYPE TABLE HANDLER h', 'CREATE ACCESS METHOD'],
  ];
  for (const [sql, type] of cases) assert.equal(one(sql).type, type, sql);
});

test('statements that run inside another are listed too', () => {
  const cte = stmts(classify('WITH d AS (DELETE FROM users RETURNING *) SELECT * FROM d'));
  assert.deepEqual(cte.map((s) => [s.type, s.nested ?? false, s.hasWhere]), [['SELECT', false, undefined], ['DELETE', true, false]]);
  assert.equal(cte[1]!.text, cte[0]!.text);
  assert.deepEqual(cte[1]!.objects, ['users']);
  assert.ok(cte[0]!.objects.includes('users'));

  assert.deepEqual(stmts(classify('EXPLAIN ANALYZE DELETE FROM t')).map((s) => s.type), ['EXPLAIN', 'DELETE']);
  assert.deepEqual(stmts(classify('EXPLAIN (ANALYZE false) DELETE FROM t')).map((s) => s.type), ['EXPLAIN', 'DELETE'], 'the option counts whatever its value');
  assert.deepEqual(stmts(classify('EXPLAIN DELETE FROM t')).map((s) => s.type), ['EXPLAIN'], 'plain EXPLAIN executes nothing');
  assert.deepEqual(stmts(classify('PREPARE p AS DELETE FROM t')).map((s) => s.type), ['PREPARE', 'DELETE']);
  assert.deepEqual(stmts(classify('COPY (DELETE FROM t RETURNING *) TO STDOUT')).map((s) => s.type), ['COPY', 'DELETE']);
  assert.deepEqual(stmts(classify('CREATE RULE r AS ON INSERT TO t DO ALSO (DELETE FROM x; UPDATE y SET a = 1 WHERE b)')).map((s) => s.type), ['CREATE RULE', 'DELETE', 'UPDATE']);
  assert.deepEqual(stmts(classify('CREATE SCHEMA s CREATE TABLE t (a int)')).map((s) => s.type), ['CREATE SCHEMA', 'CREATE TABLE']);
  assert.deepEqual(stmts(classify('WITH a AS (WITH b AS (UPDATE t SET x = 1 RETURNING *) SELECT * FROM b) INSERT INTO u SELECT * FROM a')).map((s) => s.type), ['INSERT', 'UPDATE']);
  assert.deepEqual(stmts(classify('SELECT * FROM (SELECT 1) s WHERE EXISTS (SELECT 1)')).map((s) => s.type), ['SELECT']);
});

test('parse errors are values, never thrown, never cached by shape', () => {
  resetClassifyCache();
  const e = classify('SELECT * FROM');
  assert.ok('error' in e && /syntax error/.test(e.error));
  assert.ok('error' in classify('DROP TABLE users WHERE'));
  const nul = classify('SELECT 1\u0000; DROP TABLE x');
  assert.ok('error' in nul && /NUL/.test(nul.error), 'the parser would stop at the NUL and miss the DROP');
  // float(0) is rejected by the grammar and float(10) accepted, though both have the same shape.
  assert.equal(shapeOf('SELECT 1::float(0)'), shapeOf('SELECT 1::float(10)'));
  assert.ok('error' in classify('SELECT 1::float(0)'));
  assert.equal(one('SELECT 1::float(10)').type, 'SELECT', 'an error shape must not make a valid statement pass unclassified');
  assert.doesNotThrow(() => classify('SELECT ' + '('.repeat(5000) + '1' + ')'.repeat(5000)));
});

test('shapeOf: literal-only differences share a shape, everything else does not', () => {
  const same: [string, string][] = [
    ["SELECT * FROM t WHERE a = 1 AND b = 'x'", "SELECT * FROM t WHERE a = 22 AND b = 'it''s'"],
    ['SELECT 1.5, 2', 'SELECT 0.25, 7'],
    ['SELECT 007', 'SELECT 5'],
    ["INSERT INTO t VALUES ('é', 'DROP TABLE x')", "INSERT INTO t VALUES ('', 'ü')"],
    ['SELECT  1\n\tFROM t -- c\n', 'SELECT /* x */ 2 FROM t'],
    ['SELECT a FROM t WHERE id = $1', 'SELECT a FROM t WHERE id = $1'],
    ['SELECT "Col" FROM "ü"', 'SELECT "Col" FROM "ü"'],
    ['select 2147483647', 'select -5'.replace('-', '')],
  ];
  for (const [a, b] of same) {
    assert.notEqual(shapeOf(a), undefined, a);
    assert.equal(shapeOf(a), shapeOf(b), `${a} | ${b}`);
  }
  const different: [string, string][] = [
    ['SELECT 1', 'SELECT 1.5'], // ICONST vs FCONST
    ['SELECT 2147483647', 'SELECT 2147483648'], // int32 overflow makes PostgreSQL lex FCONST
    ['SELECT a FROM t', 'SELECT b FROM t'],
    ['SELECT 1 FROM t', 'select 1 from t'],
    ["SELECT 'a'", 'SELECT 1'],
    ['SELECT a<=b', 'SELECT a< =b'],
    ['SELECT a/**/b', 'SELECT ab'],
    ['SELECT $1', 'SELECT $2'],
  ];
  for (const [a, b] of different) assert.notEqual(shapeOf(a), shapeOf(b), `${a} | ${b}`);
});

test('shapeOf gives up on every construct it does not fully understand', () => {
  const unsafe = [
    "SELECT E'a\\nb'", "SELECT e'x'", "SELECT U&'d\\0061t'", "SELECT u&\"col\" FROM t", "SELECT B'101'", "SELECT X'1F'",
    "SELECT N'x'", "SELECT b'1'", "SELECT date'2024-01-01'", 'SELECT $$DROP TABLE x$$', 'SELECT $tag$x$tag$', "SELECT 'a\\b'",
    'SELECT \\d', 'SELECT 1e5', 'SELECT 1E5', 'SELECT 1_000', 'SELECT 0x1F', 'SELECT 0o17', 'SELECT 0b101', 'SELECT 123abc',
    'SELECT 1.5.3', 'SELECT 1.', 'SELECT .5', 'SELECT a.1', 'SELECT 1..2', "SELECT 'a'\n'b'", "SELECT 'a' -- c\n'b'",
    "SELECT 'unterminated", 'SELECT "unterminated', 'SELECT 1 /* unterminated', 'SELECT 1 /* /* nested */ still open',
    'SELECT \u0001', 'SELECT 1\u007f', 'SELECT $1a', 'SELECT 1$',
  ];
  for (const sql of unsafe) assert.equal(shapeOf(sql), undefined, sql);
  // ... and such texts are still classified, by a full parse.
  const before = classifyStats().uncacheable;
  assert.equal(one("SELECT E'x'").type, 'SELECT');
  assert.equal(classifyStats().uncacheable, before + 1);
  // Nested comments are understood.
  assert.equal(shapeOf('SELECT /* a /* b */ c */ 1'), shapeOf('SELECT 2'));
});

test('cache: hits return the actual text; exact-text cache for prepared statements', () => {
  resetClassifyCache();
  const a = stmts(classify("UPDATE accounts SET balance = balance + 10 WHERE id = 1; SELECT 'x'"));
  const b = stmts(classify("UPDATE accounts SET balance = balance + 123456 WHERE id = 99999; SELECT 'a longer literal'"));
  let st = classifyStats();
  assert.equal(st.misses, 1);
  assert.equal(st.shapeHits, 1);
  assert.deepEqual(b.map((s) => s.text), ['UPDATE accounts SET balance = balance + 123456 WHERE id = 99999', "SELECT 'a longer literal'"]);
  assert.deepEqual(a.map((s) => [s.type, s.objects, s.hasWhere]), b.map((s) => [s.type, s.objects, s.hasWhere]));

  const p = 'SELECT abalance FROM pgbench_accounts WHERE aid = $1';
  classify(p, { exact: true });
  classify(p, { exact: true });
  st = classifyStats();
  assert.equal(st.exactHits, 1);
  assert.equal(st.hits, 2);
  assert.equal(st.exactEntries, 1);
});

// Templates: {i} integer, {f} decimal, {s} string literal, {w} separator (space, newline, comment).
const TEMPLATES = [
  'SELECT * FROM users WHERE id = {i} AND name = {s}',
  'UPDATE accounts SET balance = balance + {f} WHERE id = {i};{w}SELECT balance FROM accounts WHERE id = {i}',
  'DELETE FROM sessions WHERE expires < {s}',
  'DELETE FROM sessions{w};{w}',
  'INSERT INTO audit.log (a, b, c) VALUES ({i}, {s}, {f}) RETURNING id',
  'WITH d AS (DELETE FROM q WHERE id = {i} RETURNING *) INSERT INTO archive SELECT * FROM d',
  'SELECT {s}::text,{w}{i} FROM generate_series(1, {i}) g JOIN t ON t.id = g LIMIT {i}',
  'BEGIN; UPDATE t SET a = {s} WHERE b IN ({i}, {i}); DROP TABLE x; COMMIT',
  'SET statement_timeout = {i}',
  'EXPLAIN ANALYZE UPDATE t SET a = {i}',
  'SELECT * FROM a{w}JOIN b ON a.id = b.id + {i} WHERE b.name = {s}{w}-- trailing comment \'x\' /*',
  "INSERT INTO t VALUES ({s}, {s}), ({s}, 'fixed')",
];

const arbInt = fc.oneof(fc.nat(100), fc.nat(), fc.constantFrom('2147483647', '2147483648', '0000000000002', '99999999999999999999'));
const arbDec = fc.tuple(fc.nat(99999), fc.nat(99999)).map(([a, b]) => `${a}.${b}`);
const arbStr = fc.string({ maxLength: 12, unit: fc.constantFrom('a', 'Z', ' ', ';', "'", 'é', '€', '-', '/', '*', '\n', 'D', 'R', 'O', 'P') })
  .map((s) => `'${s.replaceAll("'", "''")}'`);
const arbSep = fc.constantFrom(' ', '\n', '  ', ' /* c; */ ', ' -- c;\n', '\t');

function fill(template: string, ints: string[], decs: string[], strs: string[], seps: string[]): string {
  let k = 0;
  return template.replace(/\{([ifsw])\}/g, (_, t: string) => {
    const pick = t === 'i' ? ints : t === 'f' ? decs : t === 's' ? strs : seps;
    return pick[k++ % pick.length]!;
  });
}

test('property: a cache hit classifies exactly like a fresh parse', () => {
  resetClassifyCache();
  fc.assert(
    fc.property(
      fc.constantFrom(...TEMPLATES),
      fc.array(arbInt.map(String), { minLength: 1, maxLength: 4 }),
      fc.array(arbDec, { minLength: 1, maxLength: 3 }),
      fc.array(arbStr, { minLength: 1, maxLength: 4 }),
      fc.array(arbSep, { minLength: 1, maxLength: 3 }),
      (template, ints, decs, strs, seps) => {
        const sql = fill(template, ints, decs, strs, seps);
        const { shape, ...cached } = classify(sql) as { statements: unknown[]; shape?: object };
        const fresh = classifyUncached(sql);
        assert.deepEqual(cached, fresh, sql);
        // A hit names its shape; texts of one shape share the id.
        if (shape !== undefined) assert.equal((classify(fill(template, ints, decs, strs, seps)) as { shape?: object }).shape, shape);
        assert.ok(!('error' in fresh), sql);
      },
    ),
    { numRuns: 600 },
  );
  const st = classifyStats();
  assert.ok(st.shapeHits > 300, `expected mostly cache hits, got ${JSON.stringify(st)}`);
  assert.equal(st.uncacheable, 0);
});
