import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { DETECTORS, detectorHit, isLikelyCardNumber } from '../../agent/redact/detectors.js';
import fc from 'fast-check';
import { Redactor, secretsFromEnv, MIN_SECRET_LENGTH, redactionLabels } from '../../agent/redact/redactor.js';

const detectorsOnly = new Redactor();

// Fake credentials put together at run time, so that the source holds nothing a scanner would flag.
const GHP = 'ghp_' + 'A1b2C3d4E5'.repeat(3) + 'f6G7h8';
const PAT = 'github_pat_' + '11ABCDEFG0'.repeat(2) + 'xy_' + 'Z9y8X7w6V5'.repeat(5) + 'u4t3s2r1q';
const GLPAT = 'glpat-' + 'aB3dE5gH7jK9mN1pQ3sT';
const SLACK = 'xoxb-' + '123456789012-1234567890123-' + 'AbCdEfGhIjKlMnOpQrStUvWx';
const JWT = ['eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9', 'eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ', 'SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c'].join('.');
const AKIA = 'AKIA' + 'IOSFODNN7EXAMPLE';
const AWS_SECRET = 'wJalrXUtnFEMI/K7MDENG/' + 'bPxRfiCYEXAMPLEKEY';
const PEM = ['-----BEGIN OPENSSH PRIVATE KEY-----', 'b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW', '-----END OPENSSH PRIVATE KEY-----'].join('\n');

const POSITIVE: { detector: string; input: string; output: string }[] = [
  { detector: 'aws-access-key-id', input: `key ${AKIA} here`, output: 'key [REDACTED:aws-access-key-id] here' },
  { detector: 'aws-access-key-id', input: `ASIA${'Y34FZKBOKMUTVV7A'}`, output: '[REDACTED:aws-access-key-id]' },
  { detector: 'aws-secret-access-key', input: `aws_secret_access_key = ${AWS_SECRET}`, output: 'aws_secret_access_key = [REDACTED:aws-secret-access-key]' },
  { detector: 'aws-secret-access-key', input: `AWS_SECRET_ACCESS_KEY="${AWS_SECRET}"`, output: 'AWS_SECRET_ACCESS_KEY="[REDACTED:aws-secret-access-key]"' },
  { detector: 'github-token', input: `git clone https://${GHP}@github.com/a/b`, output: 'git clone https://[REDACTED:github-token]@github.com/a/b' },
  { detector: 'github-token', input: `token: ${PAT}`, output: 'token: [REDACTED:github-token]' },
  { detector: 'github-token', input: `gho_${'x'.repeat(36)} ghs_${'y'.repeat(36)} ghu_${'z'.repeat(36)} ghr_${'w'.repeat(36)}`, output: '[REDACTED:github-token] [REDACTED:github-token] [REDACTED:github-token] [REDACTED:github-token]' },
  { detector: 'gitlab-token', input: `PRIVATE-TOKEN: ${GLPAT}`, output: 'PRIVATE-TOKEN: [REDACTED:gitlab-token]' },
  { detector: 'slack-token', input: `curl -d token=${SLACK} slack.com`, output: 'curl -d token=[REDACTED:slack-token] slack.com' },
  { detector: 'jwt', input: `Authorization: Bearer ${JWT}`, output: 'Authorization: Bearer [REDACTED:jwt]' },
  { detector: 'private-key', input: `key:\n${PEM}\nend`, output: 'key:\n[REDACTED:private-key]\nend' },
  { detector: 'private-key', input: '-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA (cut short', output: '[REDACTED:private-key]' },
  { detector: 'url-password', input: 'postgres://app:s3cr3t@db.internal:5432/app', output: 'postgres://app:[REDACTED:url-password]@db.internal:5432/app' },
  { detector: 'url-password', input: 'redis://:hunter2@127.0.0.2/0 and mysql://u:p@ss@h/db', output: 'redis://:[REDACTED:url-password]@127.0.0.2/0 and mysql://u:[REDACTED:url-password]@h/db' },
  { detector: 'cli-password', input: 'psql --password=hunter22 -h db', output: 'psql --password=[REDACTED:cli-password] -h db' },
  { detector: 'cli-password', input: "tool --passwd='two words' x", output: 'tool --passwd=[REDACTED:cli-password] x' },
  { detector: 'cli-password', input: 'mysql -h db -uroot -phunter22 app', output: 'mysql -h db -uroot -p[REDACTED:cli-password] app' },
  { detector: 'password-assignment', input: 'PGPASSWORD=hunter22 psql -h db', output: 'PGPASSWORD=[REDACTED:password-assignment] psql -h db' },
  { detector: 'password-assignment', input: 'db_password: "hunter 22"', output: 'db_password: [REDACTED:password-assignment]' },
  { detector: 'password-assignment', input: '{"user":"app","password":"hunter22"}', output: '{"user":"app","password":[REDACTED:password-assignment]}' },
  { detector: 'pg-role-password', input: "CREATE ROLE app LOGIN PASSWORD 'it''s s3cret';", output: 'CREATE ROLE app LOGIN PASSWORD [REDACTED:pg-role-password];' },
  { detector: 'pg-role-password', input: "alter user bob with encrypted password 'md5abc' valid until 'infinity'", output: "alter user bob with encrypted password [REDACTED:pg-role-password] valid until 'infinity'" },
  { detector: 'email', input: 'notify alice.smith+ci@example.co.uk now', output: 'notify [REDACTED:email] now' },
  { detector: 'card-number', input: 'card 4111 1111 1111 1111 exp', output: 'card [REDACTED:card-number] exp' },
  { detector: 'card-number', input: 'amex 3782-822463-10005, mc 5555555555554444', output: 'amex [REDACTED:card-number], mc [REDACTED:card-number]' },
];

const NEGATIVE: string[] = [
  'SELECT id, name FROM users WHERE id = 42',
  'card 4111 1111 1111 1112 (Luhn fails)',
  'epoch ms 1700000000005 passes Luhn but no card starts with 1',
  'akiaiosfodnn7example is lower case; AKIA123 is too short',
  'ghp_short and github_pat_short are not tokens',
  'xoxz-1234567890 is not a Slack prefix',
  'eyJhbGciOiJIUzI1NiJ9 alone is not a JWT',
  'ssh -p22 host; mkdir -p /tmp/x; psql -p 5432',
  'https://host:8080/path?q=1 and https://bob@example.com/ (a login, not an address)',
  'PWD=/home/runner OLDPWD=/tmp',
  'password reset requested',
  'aws_secret_access_key = tooShort',
  'CREATE ROLE app LOGIN; SELECT 1',
  '-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----',
  'mysql --password app',
  'user@localhost has no top-level domain',
];

for (const c of POSITIVE) {
  test(`detector ${c.detector}: ${JSON.stringify(c.input).slice(0, 60)}`, () => {
    assert.equal(detectorsOnly.redact(c.input), c.output);
  });
}

test('detectors: every detector has a positive case', () => {
  const covered = new Set(POSITIVE.map((c) => c.detector));
  for (const d of DETECTORS) assert.ok(covered.has(d.name), d.name);
});

test('detectors: look-alikes are left alone, as the same string', () => {
  for (const text of NEGATIVE) assert.equal(detectorsOnly.redact(text), text, text);
});

test('detectors: redaction is idempotent and a marker is never re-redacted', () => {
  for (const c of POSITIVE) assert.equal(detectorsOnly.redact(c.output), c.output, c.output);
});

test('detectorHit: every detector of a shared name is tried (both cli-password forms)', () => {
  // The second form used to be looked up under the first one's cached regex and never ran.
  assert.equal(detectorHit(['cli-password'], 'deploy --password=hunter2x'), true);
  assert.equal(detectorHit(['cli-password'], 'mysql -u app -phunter2x -h db'), true);
  assert.equal(detectorHit(['cli-password'], 'mysql -u app -h db'), false);
  for (const d of DETECTORS) {
    const c = POSITIVE.find((x) => x.detector === d.name && d.regex.test(x.input));
    if (c) assert.equal(detectorHit([d.name], c.input), true, `${d.name}: ${c.input}`);
  }
});

test('detectors: Luhn and issuer prefix', () => {
  assert.equal(isLikelyCardNumber('4111111111111111'), true);
  assert.equal(isLikelyCardNumber('4111-1111-1111-1111'), true);
  assert.equal(isLikelyCardNumber('4111111111111112'), false);
  assert.equal(isLikelyCardNumber('0000000000000000'), false, 'Luhn-valid but no issuer');
  assert.equal(isLikelyCardNumber('411111111111'), false, 'too short');
});

test('detectors: PII can be turned off by passing fewer detectors', () => {
  const secretsOnly = new Redactor([], { detectors: DETECTORS.filter((d) => d.kind !== 'pii') });
  assert.equal(secretsOnly.redact('mail alice@example.com'), 'mail alice@example.com');
  assert.equal(secretsOnly.redact(`t ${GHP}`), 't [REDACTED:github-token]');
});

// --- exact values from the job's environment -------------------------------------------------------

test('secretsFromEnv: by name, long enough values only, each value once', () => {
  const env = {
    GITHUB_TOKEN: 'ghs_abcdef123456', AWS_SECRET_ACCESS_KEY: 'abcdefghij', DB_PASSWORD: 'hunter22', MY_PASSWD: 'letmein!', SSH_PRIVATE: 'keykeykey',
    NPM_AUTH: 'npmauth1', API_KEY: 'short', GCP_CREDENTIALS: '{"type":"sa"}', lower_token: 'lowercase1', SECOND_TOKEN: 'hunter22',
    HOME: '/root', PATH: '/usr/bin:/bin', GITHUB_SHA: 'f'.repeat(40), UNSET: undefined,
  };
  assert.deepEqual(secretsFromEnv(env), [
    { name: 'GITHUB_TOKEN', value: 'ghs_abcdef123456' },
    { name: 'AWS_SECRET_ACCESS_KEY', value: 'abcdefghij' },
    { name: 'DB_PASSWORD', value: 'hunter22' },
    { name: 'MY_PASSWD', value: 'letmein!' },
    { name: 'SSH_PRIVATE', value: 'keykeykey' },
    { name: 'NPM_AUTH', value: 'npmauth1' },
    { name: 'GCP_CREDENTIALS', value: '{"type":"sa"}' },
    { name: 'lower_token', value: 'lowercase1' },
  ]);
  assert.equal(MIN_SECRET_LENGTH, 6);
});

const SECRET = 'pA55/w0rd+with "quotes" & spaces=ok';
const withSecret = new Redactor(secretsFromEnv({ DEPLOY_TOKEN: SECRET }));
const MARK = '[REDACTED:env:DEPLOY_TOKEN]';

test('env secret: raw, base64 (standard, url-safe, padded or not), URL-encoded, JSON-escaped', () => {
  const b64 = Buffer.from(SECRET).toString('base64');
  const b64url = Buffer.from(SECRET).toString('base64url');
  const forms: [string, string][] = [
    [`raw ${SECRET} end`, `raw ${MARK} end`],
    [`b64 ${b64} end`, `b64 ${MARK} end`],
    [`unpadded ${b64.replace(/=+$/, '')} end`, `unpadded ${MARK} end`],
    [`url-safe ${b64url} end`, `url-safe ${MARK} end`],
    [`url-safe padded ${b64url}${'='.repeat((4 - (b64url.length % 4)) % 4)} end`, `url-safe padded ${MARK} end`],
    [`GET /?t=${encodeURIComponent(SECRET)}&x=1`, `GET /?t=${MARK}&x=1`],
    [`form t=${new URLSearchParams({ t: SECRET }).toString().slice(2)}&x=1`, `form t=${MARK}&x=1`],
    [`lower hex ${encodeURIComponent(SECRET).replace(/%[0-9A-F]{2}/g, (h) => h.toLowerCase())}!`, `lower hex ${MARK}!`],
    [`{"t":${JSON.stringify(SECRET)}}`, `{"t":"${MARK}"}`],
  ];
  for (const [input, output] of forms) assert.equal(withSecret.redact(input), output, input);
});

test('env secret: inside a longer base64 string at any byte alignment (Basic auth)', () => {
  for (const user of ['', 'a', 'ab', 'abc', 'deploy', 'x-access-token']) {
    for (const tail of ['', '\n', '!!']) {
      const encoded = Buffer.from(`${user}:${SECRET}${tail}`).toString('base64');
      const out = withSecret.redact(`Authorization: Basic ${encoded}`);
      const m = /^Authorization: Basic ([A-Za-z0-9+/=]*)\[REDACTED:env:DEPLOY_TOKEN\]([A-Za-z0-9+/=]*)$/.exec(out);
      assert.ok(m, `${user}: ${out}`);
      // What is left on each side encodes the user and tail, plus at most one character shared
      // with the secret: a few bits, never enough to rebuild it.
      assert.ok(m[1]!.length <= Math.ceil(((user.length + 1) * 4) / 3) + 1, `left ${m[1]}`);
      assert.ok(m[2]!.length <= Math.ceil((tail.length * 4) / 3) + 4, `right ${m[2]}`);
    }
  }
});

test('env secret: the output never contains the value, whatever surrounds it', () => {
  for (let i = 0; i < 300; i++) {
    const value = randomBytes(6 + (i % 30)).toString(i % 2 ? 'base64' : 'hex');
    const r = new Redactor([{ name: 'T', value }]);
    const before = randomBytes(i % 7).toString('hex');
    const after = randomBytes(i % 5).toString('hex');
    for (const text of [
      before + value + after,
      `${before} ${Buffer.from(before + value + after).toString('base64')} x`,
      `${before} ${Buffer.from(value).toString('base64url')} x`,
      `q=${encodeURIComponent(value)}`,
    ]) {
      const out = r.redact(text);
      assert.ok(!out.includes(value), `${text} -> ${out}`);
      assert.ok(out.includes('[REDACTED:env:T]'), `${text} -> ${out}`);
      assert.ok(!Buffer.from(out.replace(/[^A-Za-z0-9+/]/g, ''), 'base64').includes(value), `${text} -> ${out}`);
    }
  }
});

test('env secret: the marker names the variable and holds no part of the value', () => {
  const r = new Redactor([{ name: 'TOKEN', value: 'abcdefgh' }]);
  const out = r.redact('x abcdefgh y');
  assert.equal(out, 'x [REDACTED:env:TOKEN] y');
  for (let i = 0; i + 3 <= 8; i++) assert.ok(!out.includes('abcdefgh'.slice(i, i + 3)));
});

test('env secret: a value inside a private key takes the whole key with it', () => {
  const body = 'b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ';
  const r = new Redactor([{ name: 'SSH_KEY', value: body }]);
  const pem = `-----BEGIN OPENSSH PRIVATE KEY-----\n${body}\nmore\n-----END OPENSSH PRIVATE KEY-----`;
  assert.equal(r.redact(`k=${pem};`), 'k=[REDACTED:env:SSH_KEY];');
});

test('fast path: text with nothing to redact comes back as is', () => {
  const texts = ['', 'ls', 'SELECT 1', 'x'.repeat(10_000), 'GET /healthz HTTP/1.1\r\nHost: api.internal\r\n\r\n', NEGATIVE.join('\n')];
  for (const r of [detectorsOnly, withSecret]) {
    for (const text of texts) assert.equal(r.redact(text), text);
  }
  const argv = ['psql', '-h', 'db.internal', '-c', 'select 1'];
  assert.equal(withSecret.redactArgv(argv), argv, 'same array when nothing changed');
});

// --- argv -----------------------------------------------------------------------------------------

test('redactArgv: per element, plus flags whose value is the next element', () => {
  const cases: [string[], string[]][] = [
    [['mysql', '-uroot', '-phunter22', 'app'], ['mysql', '-uroot', '-p[REDACTED:cli-password]', 'app']],
    [['/usr/bin/mariadb', '-p\'x y\''], ['/usr/bin/mariadb', '-p[REDACTED:cli-password]']],
    [['mysql', '--password', 'app'], ['mysql', '--password', 'app']], // bare --password prompts
    [['docker', 'login', '-u', 'bot', '--password', 'hunter22', 'ghcr.io'], ['docker', 'login', '-u', 'bot', '--password', '[REDACTED:cli-password]', 'ghcr.io']],
    [['vault', 'login', '--token', 's.abcdef'], ['vault', 'login', '--token', '[REDACTED:cli-secret]']],
    [['sudo', 'sshpass', '-p', 'hunter22', 'ssh', 'host'], ['sudo', 'sshpass', '-p', '[REDACTED:cli-password]', 'ssh', 'host']],
    [['curl', '-u', 'alice:hunter22', 'https://x'], ['curl', '-u', 'alice:[REDACTED:cli-password]', 'https://x']],
    [['ssh', '-p', '2222', 'host'], ['ssh', '-p', '2222', 'host']],
    // The token is both a URL password and a GitHub token: the more specific name wins.
    [['git', 'push', `https://x:${GHP}@github.com/a/b`], ['git', 'push', 'https://x:[REDACTED:github-token]@github.com/a/b']],
    [['psql', 'postgresql://app:pw123456@db/app', '-c', "ALTER ROLE app PASSWORD 'n3w'"], ['psql', 'postgresql://app:[REDACTED:url-password]@db/app', '-c', 'ALTER ROLE app PASSWORD [REDACTED:pg-role-password]']],
  ];
  for (const [argv, expected] of cases) assert.deepEqual(detectorsOnly.redactArgv(argv), expected, argv.join(' '));
});

test('redactArgv: env secrets in a flag value are redacted around the rule', () => {
  const r = new Redactor([{ name: 'CI_USER_TOKEN', value: 'userpart99' }]);
  assert.deepEqual(r.redactArgv(['curl', '-u', 'userpart99:hunter22', 'https://x']), ['curl', '-u', '[REDACTED:env:CI_USER_TOKEN]:[REDACTED:cli-password]', 'https://x']);
});

/** The labels the postgres handler's secretLabel read with matchAll and a Set (the oracle). */
function redactionLabelsRef(r: string): string | undefined {
  const labels = new Set(Array.from(r.matchAll(/\[REDACTED:([^\]]+)\]/g), (m) => m[1]!));
  return labels.size ? [...labels].join(',') : undefined;
}

test('redactionLabels: the labels the marker regex finds, once each, in order', () => {
  assert.equal(redactionLabels("'[REDACTED:env:DEPLOY_TOKEN]' and [REDACTED:jwt] and [REDACTED:env:DEPLOY_TOKEN]"), 'env:DEPLOY_TOKEN,jwt');
  assert.equal(redactionLabels('nothing here'), undefined);
  assert.equal(redactionLabels('[REDACTED:][REDACTED:x]'), 'x');
  assert.equal(redactionLabels('[REDACTED:a[REDACTED:b]'), 'a[REDACTED:b');
  const fragment = fc.oneof(
    fc.constantFrom('[REDACTED:', '[REDACTED:', ']', '[', 'REDACTED', ':', 'env:A', 'jwt', 'email', ',', ' ', '\n', 'é', '😀', "'"),
    fc.string({ unit: 'binary', maxLength: 4 }),
  );
  fc.assert(fc.property(fc.array(fragment, { maxLength: 16 }), (parts) => {
    const text = parts.join('');
    assert.equal(redactionLabels(text), redactionLabelsRef(text), JSON.stringify(text));
  }), { numRuns: 10_000 });
  // And on what the redactor really writes.
  const redactor = new Redactor(secretsFromEnv({ DEPLOY_TOKEN: 'dpl_9a8b7c6d', OTHER_SECRET: 'zz-top-secret-1' }));
  fc.assert(fc.property(fc.array(fc.constantFrom('dpl_9a8b7c6d', 'zz-top-secret-1', 'ada@example.com', 'x', ' ', "'", 'password=hunter22 '), { maxLength: 6 }), (parts) => {
    const r = redactor.redact(parts.join(''));
    assert.equal(redactionLabels(r), redactionLabelsRef(r));
  }), { numRuns: 500 });
});
