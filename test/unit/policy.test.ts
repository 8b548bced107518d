import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import {
  defaultPolicy, loadPolicy, maskCoversColumn, parseDuration, parsePolicy, parseTarget, Policy, PolicyError,
  reloadPolicy, watchPolicy, type OperationContext, type PolicyLogger,
} from '../../agent/policy/index.js';
import { parseIpWords } from '../../agent/policy/policy.js';
import { tempDir } from '../helpers/tmp.js';

// Compile-time check: a pino Logger is a PolicyLogger.
const _pinoFits: (l: Logger) => PolicyLogger = (l) => l;
void _pinoFits;

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const dir = tempDir('rg-policy-');

function ctx(over: {
  protocol?: OperationContext['protocol'];
  target?: OperationContext['target'];
  job?: OperationContext['job'];
  database?: string | undefined;
  user?: string | undefined;
  operation?: Partial<OperationContext['operation']>;
} = {}): OperationContext {
  const c: OperationContext = {
    protocol: over.protocol ?? 'postgres',
    target: over.target ?? { address: '10.1.2.3', port: 5432, hostname: 'db.internal' },
    job: over.job ?? {
      provider: 'github', repository: 'acme/api', workflow: 'deploy', job: 'migrate', actor: 'alice',
      ref: 'refs/heads/main', sha: 'abc123',
    },
    database: 'app',
    user: 'ci',
    operation: { type: 'SELECT', objects: ['public.users', 'users'], text: 'SELECT email FROM users', ...over.operation },
  };
  if ('database' in over) c.database = over.database;
  if ('user' in over) c.user = over.user;
  return c;
}

/** A policy with one deny rule "r" whose match is `match` (flow YAML), default allow. */
function one(match: string): Policy {
  return parsePolicy(`version: 1\ndefault: allow\nrules:\n  - name: r\n    match: ${match}\n    action: deny\n`, 'test.yaml');
}

function hits(match: string, c: OperationContext): boolean {
  const d = one(match).evaluate(c);
  return d.rule === 'r';
}

function ok(match: string, c: OperationContext): void {
  assert.equal(hits(match, c), true, `${match} should match`);
}
function no(match: string, c: OperationContext): void {
  assert.equal(hits(match, c), false, `${match} should not match`);
}

const HEAD = 'version: 1\ndefault: allow\nrules:\n';

/** Asserts that `text` fails on `line` with a message matching `re`. */
function fails(text: string, line: number, re: RegExp): PolicyError {
  try {
    parsePolicy(text, 'p.yaml');
  } catch (err) {
    assert.ok(err instanceof PolicyError, `expected a PolicyError, got ${String(err)}`);
    assert.equal(err.line, line, `wrong line for: ${err.message}`);
    assert.match(err.message, re);
    assert.ok(err.message.startsWith(`p.yaml:${line}: `), err.message);
    return err;
  }
  assert.fail(`expected an error on line ${line}:\n${text}`);
}

// ---------------------------------------------------------------------------------------------
// Matching

test('protocol: one value or any of a list', () => {
  ok('{ protocol: postgres }', ctx());
  no('{ protocol: mysql }', ctx());
  ok('{ protocol: [mysql, postgres] }', ctx());
  no('{ protocol: [mysql, ssh] }', ctx());
});

test('statement: types compare case-insensitively, whitespace-normalised, globs allowed', () => {
  ok('{ statement: DROP TABLE }', ctx({ operation: { type: 'DROP TABLE' } }));
  ok('{ statement: "drop   table" }', ctx({ operation: { type: 'DROP TABLE' } }));
  ok('{ statement: [DELETE, TRUNCATE] }', ctx({ operation: { type: 'TRUNCATE' } }));
  no('{ statement: [DELETE, TRUNCATE] }', ctx({ operation: { type: 'SELECT' } }));
  no('{ statement: DROP TABLE }', ctx({ operation: { type: 'DROP TABLESPACE' } }));
  ok('{ statement: "DROP *" }', ctx({ operation: { type: 'DROP INDEX' } }));
  no('{ statement: "DROP *" }', ctx({ operation: { type: 'CREATE INDEX' } }));
});

test('where: matches hasWhere exactly; an operation without the notion never matches', () => {
  ok('{ where: false }', ctx({ operation: { type: 'DELETE', hasWhere: false } }));
  no('{ where: false }', ctx({ operation: { type: 'DELETE', hasWhere: true } }));
  ok('{ where: true }', ctx({ operation: { type: 'UPDATE', hasWhere: true } }));
  no('{ where: false }', ctx({ operation: { type: 'SELECT' } }));
  no('{ where: true }', ctx({ operation: { type: 'SELECT' } }));
});

test('tables: globs over the operation objects, any of; case-insensitive', () => {
  ok('{ tables: users }', ctx());
  ok('{ tables: public.users }', ctx());
  ok('{ tables: "public.*" }', ctx());
  ok('{ tables: [orders, "us?rs"] }', ctx());
  ok('{ tables: USERS }', ctx());
  no('{ tables: [orders, payments] }', ctx());
  no('{ tables: user }', ctx());
  no('{ tables: "*" }', ctx({ operation: { objects: undefined } }));
  no('{ tables: "*" }', ctx({ operation: { objects: [] } }));
});

test('pattern: a regular expression over the operation text, (?i) for case-insensitive', () => {
  ok(String.raw`{ pattern: '\bpg_sleep\s*\(' }`, ctx({ operation: { text: 'select pg_sleep (10)' } }));
  no(String.raw`{ pattern: '\bpg_sleep\s*\(' }`, ctx({ operation: { text: 'select PG_SLEEP(10)' } }));
  ok(String.raw`{ pattern: '(?i)\bpg_sleep\s*\(' }`, ctx({ operation: { text: 'select PG_SLEEP(10)' } }));
  ok("{ pattern: 'FROM users' }", ctx()); // unanchored: a search, not a full match
  no("{ pattern: '.' }", ctx({ operation: { text: undefined } }));
});

test('target: CIDR, CIDR:port, IPv6, host:port, *:port', () => {
  const v4 = ctx();
  ok('{ target: 10.0.0.0/8 }', v4);
  ok('{ target: "10.0.0.0/8:5432" }', v4);
  no('{ target: "10.0.0.0/8:5433" }', v4);
  no('{ target: 10.2.0.0/16 }', v4);
  ok('{ target: 10.1.2.3 }', v4);
  no('{ target: 10.1.2.4 }', v4);
  ok('{ target: 0.0.0.0/0 }', v4);
  ok('{ target: "10.1.2.0/23" }', v4);
  no('{ target: "10.1.4.0/23" }', v4);
  ok('{ target: ["192.168.0.0/16", "10.1.2.3:5432"] }', v4);
  ok('{ target: "db.internal:5432" }', v4);
  ok('{ target: "DB.Internal" }', v4);
  ok('{ target: "*.internal:5432" }', v4);
  no('{ target: "db.internal:6432" }', v4);
  no('{ target: "cache.internal" }', v4);
  ok('{ target: "*:5432" }', v4);
  no('{ target: "*:3306" }', v4);
  no('{ target: "db.internal" }', ctx({ target: { address: '10.1.2.3', port: 5432 } }));
  ok('{ target: "*:5432" }', ctx({ target: { address: '10.1.2.3', port: 5432 } }));
  // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d.
  ok('{ target: 10.0.0.0/8 }', ctx({ target: { address: '::ffff:10.9.8.7', port: 5432 } }));
  const v6 = ctx({ target: { address: 'fd00:0:0:1::5', port: 5432 } });
  ok('{ target: "fd00::/8" }', v6);
  ok('{ target: "[fd00::]/8:5432" }', v6);
  no('{ target: "[fd00::]/8:5433" }', v6);
  ok('{ target: "[fd00::/8]:5432" }', v6);
  ok('{ target: "fd00:0:0:1::/64" }', v6);
  no('{ target: "fd00:0:0:2::/64" }', v6);
  no('{ target: "10.0.0.0/8" }', v6);
  ok('{ target: "::1" }', ctx({ target: { address: '::1', port: 5432 } }));
  ok('{ target: "[::1]:5432" }', ctx({ target: { address: '0:0::1', port: 5432 } }));
  no('{ target: "::1" }', ctx({ target: { address: 'not-an-ip', port: 5432 } }));
});

test('job identity: repository, workflow, job, actor, provider, ref as globs; a missing field never matches', () => {
  const c = ctx();
  ok('{ repository: "acme/*" }', c);
  ok('{ repository: ACME/API }', c); // GitHub names are case-insensitive
  no('{ repository: "other/*" }', c);
  ok('{ workflow: deploy }', c);
  no('{ workflow: Deploy }', c);
  no('{ workflow: test }', c);
  ok('{ job: "mig*" }', c);
  no('{ job: build }', c);
  ok('{ actor: [bob, alice] }', c);
  no('{ actor: bob }', c);
  ok('{ provider: github }', c);
  no('{ provider: gitlab }', c);
  ok('{ ref: "refs/heads/*" }', c);
  no('{ ref: "refs/tags/*" }', c);
  no('{ repository: "*" }', ctx({ job: {} }));
  no('{ actor: "*" }', ctx({ job: { repository: 'acme/api' } }));
});

test('branch: refs/heads/ stripped; tags and pull requests have no branch; bare names (GitLab) work', () => {
  ok('{ branch: main }', ctx());
  no('{ branch: develop }', ctx());
  ok('{ branch: "release/*" }', ctx({ job: { ref: 'refs/heads/release/1.2' } }));
  no('{ branch: "*" }', ctx({ job: { ref: 'refs/tags/v1.0' } }));
  no('{ branch: "*" }', ctx({ job: { ref: 'refs/pull/12/merge' } }));
  ok('{ branch: main }', ctx({ job: { ref: 'main' } }));
  no('{ branch: main }', ctx({ job: { ref: 'refs/heads/mainline' } }));
  no('{ branch: main }', ctx({ job: {} }));
});

test('database and user: globs; absent means no match', () => {
  ok('{ database: app }', ctx());
  ok('{ database: "a*" }', ctx());
  no('{ database: prod }', ctx());
  no('{ database: "*" }', ctx({ database: undefined }));
  ok('{ user: ci }', ctx());
  no('{ user: [postgres, admin] }', ctx());
  no('{ user: "*" }', ctx({ user: undefined }));
});

test('every field of a rule must match; an empty or missing match matches everything', () => {
  ok('{ protocol: postgres, statement: SELECT, tables: users, branch: main }', ctx());
  no('{ protocol: postgres, statement: SELECT, tables: users, branch: dev }', ctx());
  const p = parsePolicy(`${HEAD}  - name: everything\n    action: deny\n`);
  assert.equal(p.evaluate(ctx()).rule, 'everything');
  ok('{}', ctx());
});

test('first match wins; the default decides when nothing matches; decisions are frozen and reused', () => {
  const p = parsePolicy(`version: 1
default: deny
rules:
  - name: allow-reads
    match: { statement: SELECT }
    action: allow
  - name: no-users
    description: nobody touches users
    match: { tables: users }
    action: deny
  - name: mask-users
    match: { tables: users }
    action: mask
    mask: { columns: [email] }
`, 'first.yaml');
  const sel = p.evaluate(ctx());
  assert.equal(sel.rule, 'allow-reads');
  assert.equal(sel.action, 'allow');
  assert.equal(sel.reason, 'allowed by policy rule "allow-reads"');
  const upd = p.evaluate(ctx({ operation: { type: 'UPDATE' } }));
  assert.deepEqual({ ...upd }, { action: 'deny', rule: 'no-users', reason: 'nobody touches users' });
  const other = p.evaluate(ctx({ operation: { type: 'UPDATE', objects: ['orders'] } }));
  assert.equal(other.rule, 'default');
  assert.equal(other.action, 'deny');
  assert.match(other.reason, /no policy rule matched; the policy default is deny/);
  // The same frozen object each time: nothing is allocated per call.
  assert.equal(p.evaluate(ctx({ operation: { type: 'UPDATE' } })), upd);
  assert.ok(Object.isFrozen(upd));
  assert.throws(() => { (upd as { action: string }).action = 'allow'; }, TypeError);
  assert.equal(p.source, 'first.yaml');
  assert.deepEqual(p.rules.map((r) => [r.name, r.line, r.action]), [['allow-reads', 4, 'allow'], ['no-users', 7, 'deny'], ['mask-users', 11, 'mask']]);
  assert.equal(p.rule('no-users')?.description, 'nobody touches users');
});

test('default allow, and defaultPolicy() allows everything as rule "default"', () => {
  const p = parsePolicy(`${HEAD}  - name: r\n    match: { statement: DROP TABLE }\n    action: deny\n`);
  assert.deepEqual({ ...p.evaluate(ctx()) }, { action: 'allow', rule: 'default', reason: 'no policy rule matched; the policy default is allow' });
  const d = defaultPolicy();
  assert.equal(d.rules.length, 0);
  const dec = d.evaluate(ctx({ operation: { type: 'DROP TABLE' } }));
  assert.equal(dec.action, 'allow');
  assert.equal(dec.rule, 'default');
  assert.equal(parsePolicy('version: 1\ndefault: deny\nrules: []\n').evaluate(ctx()).action, 'deny');
});

test('mask and review decisions carry their specs', () => {
  const p = parsePolicy(`${HEAD}  - name: m
    match: { statement: SELECT }
    action: mask
    mask:
      columns: ["*email*", users.password, "*.token"]
      detectors: [email, card-number, email]
  - name: rv
    match: { statement: ALTER TABLE }
    action: review
    review: { approvers: dba, approvals: 2, timeout: 1h30m }
  - name: rv2
    match: { statement: CREATE TABLE }
    action: review
    review: { timeout: 30s }
`);
  const m = p.evaluate(ctx());
  assert.equal(m.action, 'mask');
  assert.deepEqual(m.mask, { columns: ['*email*', 'users.password', '*.token'], detectors: ['email', 'card-number'] });
  assert.ok(Object.isFrozen(m.mask) && Object.isFrozen(m.mask!.columns));
  const r = p.evaluate(ctx({ operation: { type: 'ALTER TABLE' } }));
  assert.deepEqual(r.review, { approvals: 2, timeoutMs: 5_400_000, approvers: 'dba' });
  assert.equal(r.reason, 'held for review by policy rule "rv"');
  assert.deepEqual(p.evaluate(ctx({ operation: { type: 'CREATE TABLE' } })).review, { approvals: 1, timeoutMs: 30_000 });
});

test('maskCoversColumn: names, table.column (with or without schema) and globs, case-insensitive', () => {
  const spec = { columns: ['*email*', 'users.password', 'public.accounts.secret', '*.token'], detectors: [] };
  assert.equal(maskCoversColumn(spec, 'email'), true);
  assert.equal(maskCoversColumn(spec, 'Backup_Email_Address'), true);
  assert.equal(maskCoversColumn(spec, 'password'), false); // only users.password
  assert.equal(maskCoversColumn(spec, 'password', 'users'), true);
  assert.equal(maskCoversColumn(spec, 'password', 'public.users'), true);
  assert.equal(maskCoversColumn(spec, 'password', 'orders'), false);
  assert.equal(maskCoversColumn(spec, 'secret', 'public.accounts'), true);
  assert.equal(maskCoversColumn(spec, 'secret', 'accounts'), false);
  assert.equal(maskCoversColumn(spec, 'token', 'anything'), true);
  assert.equal(maskCoversColumn(spec, 'token'), false);
  assert.equal(maskCoversColumn(spec, 'name', 'users'), false);
});

test('parseDuration, parseTarget and the IP parser', () => {
  assert.equal(parseDuration('30s'), 30_000);
  assert.equal(parseDuration('10m'), 600_000);
  assert.equal(parseDuration('1h'), 3_600_000);
  assert.equal(parseDuration('1h30m'), 5_400_000);
  assert.equal(parseDuration('250ms'), 250);
  for (const bad of ['', '10', '10 m', 'm', '1d', '1.5h', '-1s']) assert.equal(parseDuration(bad), undefined, bad);
  assert.equal(parseTarget('*:5432').kind, 'host');
  assert.throws(() => parseTarget('10.0.0.0/33'), /prefix "\/33" must be 0..32.*expected CIDR/);
  assert.throws(() => parseTarget('10.0.0.300'), /not a valid IP address/);
  assert.throws(() => parseTarget('db:99999'), /port "99999" must be 1..65535/);
  assert.throws(() => parseTarget('[fd00::/8'), /missing \]/);
  assert.throws(() => parseTarget('db internal'), /not a host name/);
  const w = new Uint16Array(8);
  const hex = () => Array.from(w, (x) => x.toString(16)).join(':');
  assert.ok(parseIpWords('1.2.3.4', w));
  assert.equal(hex(), '0:0:0:0:0:ffff:102:304');
  assert.ok(parseIpWords('2001:db8::8:800:200c:417a', w));
  assert.equal(hex(), '2001:db8:0:0:8:800:200c:417a');
  assert.ok(parseIpWords('::', w));
  assert.equal(hex(), '0:0:0:0:0:0:0:0');
  assert.ok(parseIpWords('fe80::1%eth0', w));
  assert.equal(hex(), 'fe80:0:0:0:0:0:0:1');
  assert.ok(parseIpWords('1:2:3:4:5:6:7::', w));
  assert.equal(hex(), '1:2:3:4:5:6:7:0');
  assert.ok(parseIpWords('::ffff:192.168.1.1', w));
  assert.equal(hex(), '0:0:0:0:0:ffff:c0a8:101');
  for (const bad of ['', '1.2.3', '1.2.3.4.5', '256.1.1.1', '1::2::3', '1:2:3:4:5:6:7:8:9', ':1', '1:', '12345::', 'g::1', '1:2:3:4:5:6:7:8::', 'a.b.c.d']) {
    assert.equal(parseIpWords(bad, w), false, bad);
  }
});

// ---------------------------------------------------------------------------------------------
// Validation: every error names its line and says what is expected

test('file-level errors: empty, YAML syntax, duplicate keys, version, default, rules', () => {
  fails('', 1, /the policy file is empty; expected version: 1/);
  fails('# only a comment\n', 1, /empty/);
  fails('version: 1\ndefault: allow\nrules: [\n', 4, /invalid YAML/);
  fails('version: 1\ndefault: allow\ndefault: deny\nrules: []\n', 3, /appears twice/);
  fails('- a\n- b\n', 1, /the policy file must be a mapping of version, default, rules/);
  fails('version: 2\ndefault: allow\nrules: []\n', 1, /version must be 1.*got number 2/);
  fails('default: allow\nrules: []\n', 1, /version is missing; start the file with version: 1/);
  fails('version: 1\nrules: []\n', 1, /default is missing; say default: allow or default: deny/);
  fails('version: 1\ndefault: mask\nrules: []\n', 2, /default must be allow or deny, got "mask"/);
  fails('version: 1\ndefault: alow\nrules: []\n', 2, /did you mean "allow"/);
  fails('version: 1\ndefault: allow\n', 1, /rules is missing.*rules: \[\] for none/);
  fails('version: 1\ndefault: allow\nrules:\n', 3, /rules must be a list of rules.*got nothing/);
  fails('version: 1\ndefault: allow\nrules: []\nrule: []\n', 4, /unknown key "rule" in the policy file \(did you mean "rules"\?\); expected version, default, rules/);
  // An empty rule list is fine.
  assert.equal(parsePolicy('version: 1\ndefault: allow\nrules: []\n').rules.length, 0);
});

test('rule errors: unknown keys, missing or bad name, duplicate names, unknown action', () => {
  fails(`${HEAD}  - name: a\n    actoin: deny\n`, 5, /unknown key "actoin" in a rule \(did you mean "action"\?\); expected name, description, match, action, mask, review/);
  fails(`${HEAD}  - match: { statement: SELECT }\n    action: deny\n`, 4, /this rule has no name; every rule needs a unique name/);
  fails(`${HEAD}  - name: 123\n    action: deny\n`, 4, /name must be a string, got number 123 \(quote it/);
  fails(`${HEAD}  - name: "no spaces please"\n    action: deny\n`, 4, /must be 1-64 letters, digits/);
  fails(`${HEAD}  - name: default\n    action: deny\n`, 4, /reserved/);
  fails(`${HEAD}  - name: a\n    action: deny\n  - name: b\n    action: allow\n  - name: a\n    action: deny\n`, 8,
    /rule name "a" is already used by the rule on line 4; rule names must be unique/);
  fails(`${HEAD}  - name: a\n    match: { statement: SELECT }\n`, 4, /rule "a" has no action; expected action: allow, deny, mask or review/);
  fails(`${HEAD}  - name: a\n    action: block\n`, 5, /unknown action "block"; expected allow, deny, mask or review/);
  fails(`${HEAD}  - name: a\n    action: dney\n`, 5, /did you mean "deny"/);
  fails(`${HEAD}  - just a string\n`, 4, /each rule must be a mapping with name, match and action, got "just a string"/);
  fails(`${HEAD}  - name: a\n    description: 5\n    action: deny\n`, 5, /description must be a string/);
});

test('match errors: unknown keys, wrong types, empty lists, bad values', () => {
  const rule = (match: string) => `${HEAD}  - name: a\n    action: deny\n    match:\n${match}`;
  fails(rule('      protocol: postgres\n      statment: SELECT\n'), 8, /unknown key "statment" in match \(did you mean "statement"\?\); expected protocol, target,/);
  fails(rule('      protocol: postgresql\n'), 7, /unknown protocol "postgresql"; expected one of postgres, mysql, ssh, http, k8s, tls, tcp \(did you mean "postgres"\?\)/);
  fails(rule('      protocol: [postgres, mysql, sqlite]\n'), 7, /unknown protocol "sqlite"/);
  fails(rule('      statement: []\n'), 7, /statement is an empty list, which matches nothing/);
  fails(rule('      statement: 5\n'), 7, /statement must be a string or a list of strings, got number 5 \(quote it/);
  fails(rule('      statement:\n        - SELECT\n        - { a: 1 }\n'), 9, /each statement value must be a string, got a mapping/);
  fails(rule('      statement: "DROP TABLE;"\n'), 7, /is not a statement type; expected words like SELECT, DROP TABLE/);
  fails(rule('      where: "no"\n'), 7, /where must be true or false.*got "no"/);
  fails(rule('      where:\n'), 7, /where must be true or false.*got nothing/);
  fails(rule('      repository: { a: b }\n'), 7, /repository must be a string or a list of strings, got a mapping/);
  fails(rule('      branch: ""\n'), 7, /branch is empty/);
  fails(`${HEAD}  - name: a\n    action: deny\n    match:\n`, 6, /match is empty/);
  fails(`${HEAD}  - name: a\n    action: deny\n    match: [a]\n`, 6, /match must be a mapping of protocol, target/);
});

test('pattern errors: invalid regular expressions name their line', () => {
  fails(`${HEAD}  - name: a\n    action: deny\n    match:\n      pattern: "drop ("\n`, 7, /pattern is not a valid regular expression: .*Unterminated group.*JavaScript syntax; "\(\?i\)"/);
  fails(`${HEAD}  - name: a\n    action: deny\n    match:\n      pattern: "(?x)a"\n`, 7, /pattern is not a valid regular expression/);
  fails(`${HEAD}  - name: a\n    action: deny\n    match:\n      pattern: "(?i)"\n`, 7, /pattern is empty/);
});

test('target errors: invalid CIDR, address, port, host', () => {
  const rule = (t: string) => `${HEAD}  - name: a\n    action: deny\n    match:\n      target:\n        - 10.0.0.0/8\n        - ${t}\n`;
  fails(rule('10.0.0.0/33'), 9, /target "10.0.0.0\/33": prefix "\/33" must be 0..32; expected CIDR, CIDR:PORT/);
  fails(rule('300.1.2.3/8'), 9, /"300.1.2.3" is not a valid IP address or CIDR/);
  fails(rule('"10.0.0.1:0"'), 9, /port "0" must be 1..65535/);
  fails(rule('"[fd00::]/129"'), 9, /must be 0..128/);
  fails(rule('"db/8"'), 9, /not a valid IP address or CIDR/);
  fails(rule('"db;rm"'), 9, /is not a host name/);
});

test('an unquoted * (a YAML alias) gets a hint to quote it', () => {
  fails(`${HEAD}  - name: a\n    action: deny\n    match:\n      target: *:5432\n`, 7, /must be quoted, e.g. "\*email\*" or "\*:5432"/);
  fails(`${HEAD}  - name: a\n    action: mask\n    mask:\n      columns: [*email*]\n`, 7, /must be quoted/);
});

test('mask errors: needs columns or detectors, known detectors, only with action mask', () => {
  const rule = (mask: string, action = 'mask') => `${HEAD}  - name: a\n    action: ${action}\n    mask:\n${mask}`;
  fails(rule('      columns: []\n'), 7, /columns is an empty list/);
  fails(`${HEAD}  - name: a\n    action: mask\n    mask: {}\n`, 6, /mask needs columns or detectors \(or both\)/);
  fails(`${HEAD}  - name: a\n    action: mask\n    mask:\n`, 6, /mask must be a mapping of columns, detectors, got nothing/);
  fails(rule('      detectors: [email, ssn]\n'), 7, /unknown detector "ssn"; expected one of .*email.*card-number/);
  fails(rule('      detectors: [emial]\n'), 7, /did you mean "email"/);
  fails(rule('      columns: [email]\n      colour: red\n'), 8, /unknown key "colour" in mask/);
  fails(rule('      columns: ["users."]\n'), 7, /column selector "users." is not valid/);
  fails(rule('      columns: [email]\n', 'deny'), 6, /mask: is only used with action: mask \(this rule's action is deny\)/);
  fails(`${HEAD}  - name: a\n    action: mask\n`, 5, /action mask needs a mask: section/);
});

test('review errors: timeout required and a duration, approvals a positive integer', () => {
  const rule = (review: string) => `${HEAD}  - name: a\n    action: review\n    review:\n${review}`;
  fails(rule('      approvers: dba\n'), 6, /review needs a timeout.*durations look like 30s, 10m, 1h/);
  fails(rule('      timeout: 10\n'), 7, /timeout must be a duration like 30s, 10m, 1h or 1h30m \(a bare number has no unit\), got number 10/);
  fails(rule('      timeout: 10 minutes\n'), 7, /timeout must be a duration.*got "10 minutes"/);
  fails(rule('      timeout: 0s\n'), 7, /more than 0 and at most 24h/);
  fails(rule('      timeout: 25h\n'), 7, /at most 24h/);
  fails(rule('      timeout: 10m\n      approvals: 0\n'), 8, /approvals must be a whole number of approvers, 1 or more, got number 0/);
  fails(rule('      timeout: 10m\n      approvals: 1.5\n'), 8, /approvals must be a whole number/);
  fails(rule('      timeout: 10m\n      approvers: [a, b]\n'), 8, /approvers must be a string, got a list/);
  fails(rule('      timeout: 10m\n      quorum: 2\n'), 8, /unknown key "quorum" in review; expected approvers, approvals, timeout/);
  fails(`${HEAD}  - name: a\n    action: review\n`, 5, /action review needs a review: section with at least a timeout/);
  fails(`${HEAD}  - name: a\n    action: allow\n    review: { timeout: 1m }\n`, 6, /review: is only used with action: review/);
});

test('loadPolicy: reads a file; an unreadable file is a PolicyError', () => {
  const f = path.join(dir, 'load.yaml');
  writeFileSync(f, `${HEAD}  - name: r\n    action: deny\n`);
  assert.equal(loadPolicy(f).source, f);
  assert.throws(() => loadPolicy(path.join(dir, 'missing.yaml')), (e: unknown) => e instanceof PolicyError && e.line === 0 && /cannot read the policy file/.test(e.message));
  writeFileSync(f, `${HEAD}  - name: r\n    action: nope\n`);
  assert.throws(() => loadPolicy(f), (e: unknown) => e instanceof PolicyError && e.line === 5 && e.message.startsWith(`${f}:5: unknown action`));
});

test('examples/policy.yaml loads and does what it documents', () => {
  const p = loadPolicy(path.join(root, 'examples/policy.yaml'));
  assert.deepEqual(p.rules.map((r) => r.name), ['no-drop-or-truncate', 'no-unbounded-delete', 'review-schema-changes', 'mask-personal-data']);
  const op = (type: string, extra: Partial<OperationContext['operation']> = {}) => p.evaluate(ctx({ operation: { type, ...extra } }));
  assert.equal(op('DROP TABLE').action, 'deny');
  assert.equal(op('DROP TABLE').rule, 'no-drop-or-truncate');
  assert.equal(op('TRUNCATE').action, 'deny');
  assert.equal(op('DELETE', { hasWhere: false }).rule, 'no-unbounded-delete');
  assert.equal(op('DELETE', { hasWhere: true }).action, 'mask'); // allowed, with any RETURNING rows masked
  const review = op('ALTER TABLE');
  assert.equal(review.action, 'review');
  assert.deepEqual(review.review, { approvers: 'dba', approvals: 1, timeoutMs: 900_000 });
  const sel = op('SELECT');
  assert.equal(sel.action, 'mask');
  for (const c of ['email', 'password_hash', 'api_token']) assert.ok(maskCoversColumn(sel.mask!, c), c);
  assert.equal(maskCoversColumn(sel.mask!, 'name'), false);
  assert.deepEqual(sel.mask!.detectors, ['email', 'card-number']);
  assert.equal(p.evaluate({ ...ctx(), protocol: 'ssh' }).rule, 'default');
});

// ---------------------------------------------------------------------------------------------
// Reload

function nextCall<T>(label: string, timeoutMs = 5000): { fn: (v: T) => void; next: () => Promise<T> } {
  const queue: T[] = [];
  let waiter: ((v: T) => void) | undefined;
  return {
    fn: (v) => {
      if (waiter) { const w = waiter; waiter = undefined; w(v); } else queue.push(v);
    },
    next: () => {
      if (queue.length) return Promise.resolve(queue.shift()!);
      return new Promise<T>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`no ${label} within ${timeoutMs}ms`)), timeoutMs);
        waiter = (v) => { clearTimeout(t); resolve(v); };
      });
    },
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const policyText = (action: string, extra = '') => `${HEAD}  - name: drops\n    match: { statement: DROP TABLE }\n    action: ${action}\n${extra}`;

test('watchPolicy: reloads on rewrite and on rename; a broken file keeps the old policy and reports its line', async () => {
  const wdir = mkdtempSync(path.join(dir, 'watch-'));
  const f = path.join(wdir, 'policy.yaml');
  writeFileSync(f, policyText('deny'));
  let current = loadPolicy(f);
  const changes = nextCall<Policy>('change');
  const errors = nextCall<PolicyError>('error');
  const logged: string[] = [];
  const logger: PolicyLogger = { info: (_o, m) => logged.push(`info ${m}`), error: (_o, m) => logged.push(`error ${m}`) };
  const stop = watchPolicy(f, (p) => { current = p; changes.fn(p); }, errors.fn, { current, debounceMs: 30, logger });
  const drop = ctx({ operation: { type: 'DROP TABLE' } });
  try {
    assert.equal(current.evaluate(drop).action, 'deny');

    // 1. In-place rewrite.
    writeFileSync(f, policyText('allow'));
    let p = await changes.next();
    assert.equal(p.evaluate(drop).action, 'allow');
    assert.equal(current, p);

    // 2. Replace by rename, as editors and config managers do.
    const tmp = path.join(wdir, '.policy.yaml.tmp');
    writeFileSync(tmp, policyText('review', '    review: { timeout: 5m }\n'));
    renameSync(tmp, f);
    p = await changes.next();
    assert.equal(p.evaluate(drop).action, 'review');

    // 3. A broken rewrite: the error names the line, the policy in force stays.
    writeFileSync(f, policyText('review', '    review: { timeout: soon }\n'));
    const err = await errors.next();
    assert.equal(err.line, 7);
    assert.match(err.message, /policy\.yaml:7: timeout must be a duration/);
    assert.equal(current.evaluate(drop).action, 'review');
    assert.ok(logged.includes('error policy file did not load; the previous policy stays in force'));

    // 4. A rename of a broken file over it, then deletion: reported, still the old policy.
    writeFileSync(tmp, 'version: 1\ndefault: allow\nrules:\n  - name: x\n    action: deny\n    match: { statment: DROP TABLE }\n');
    renameSync(tmp, f);
    const err2 = await errors.next();
    assert.equal(err2.line, 6);
    assert.match(err2.message, /did you mean "statement"/);
    rmSync(f);
    const err3 = await errors.next();
    assert.match(err3.message, /cannot read the policy file/);
    assert.equal(current.evaluate(drop).action, 'review');

    // 5. Fixed again: reloads.
    writeFileSync(tmp, policyText('deny'));
    renameSync(tmp, f);
    p = await changes.next();
    assert.equal(p.evaluate(drop).action, 'deny');

    // 6. Events that do not change the content (another file in the directory, a touch) are not changes.
    writeFileSync(path.join(wdir, 'other.txt'), 'x');
    writeFileSync(f, policyText('deny'));
    await sleep(200);
    await assert.rejects(Promise.race([changes.next(), sleep(100).then(() => { throw new Error('quiet'); })]), /quiet/);
  } finally {
    stop();
  }
  // Stopped: no more reloads.
  writeFileSync(f, policyText('allow'));
  await sleep(150);
  assert.equal(current.evaluate(drop).action, 'deny');
});

test('reloadPolicy: returns the new policy, or the old one with the error', () => {
  const f = path.join(dir, 'reload.yaml');
  writeFileSync(f, policyText('deny'));
  const first = loadPolicy(f);
  assert.deepEqual(reloadPolicy(f, first), { policy: first, changed: false });
  writeFileSync(f, policyText('allow'));
  const r = reloadPolicy(f, first);
  assert.equal(r.changed, true);
  assert.equal(r.policy.evaluate(ctx({ operation: { type: 'DROP TABLE' } })).action, 'allow');
  writeFileSync(f, policyText('allow') + '  - name: drops\n    action: deny\n');
  const bad = reloadPolicy(f, r.policy);
  assert.equal(bad.changed, false);
  assert.equal(bad.policy, r.policy);
  assert.equal(bad.error?.line, 7);
  assert.match(bad.error!.message, /already used by the rule on line 4/);
});
