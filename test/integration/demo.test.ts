// The README's demo command, run as CI runs it (`examples/demo.sh --exit`): everything real (collector,
// agent with eBPF redirect and examples/policy.yaml, PostgreSQL on 127.0.0.2:5432, psql as a GitHub
// Actions job). Checks what a newcomer is told happened, that the job's secret is nowhere in the
// output, and that the demo leaves no process, pin, cgroup or temp dir behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { cgroupPath } from '../../agent/cgroup.js';
import { ROOT, runProcess } from '../helpers/agent.js';
import { saveArtifact } from '../helpers/collector.js';
import { bpfUnavailableReason } from '../helpers/env.js';

const skip = process.env.RUNGUARD_REQUIRE_BPF === '1' ? false : bpfUnavailableReason();

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** Is anything listening on ADDR:PORT (hex in /proc/net/tcp, state 0A)? */
function listening(addr: string, port: number): boolean {
  const hex = addr.split('.').reverse().map((b) => Number(b).toString(16).padStart(2, '0')).join('').toUpperCase();
  const want = `${hex}:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  return readFileSync('/proc/net/tcp', 'utf8').split('\n').some((l) => {
    const f = l.trim().split(/\s+/);
    return f[1] === want && f[3] === '0A';
  });
}

test('examples/demo.sh --exit: masked read, denied DROP, ALTER TABLE approved with the CLI, verify OK, and nothing left behind', { skip, timeout: 180_000 }, async () => {
  const why = bpfUnavailableReason();
  if (why) throw new Error(`eBPF required but unavailable: ${why}`);
  const started = Date.now();
  // The suite has set up and built the machine already; the demo must not rebuild dist/ under it.
  const r = await runProcess('bash', [path.join(ROOT, 'examples/demo.sh'), '--exit'], { RUNGUARD_DEMO_SKIP_SETUP: '1' }, 150_000);
  const secs = (Date.now() - started) / 1000;
  const out = r.stdout + r.stderr;
  saveArtifact('demo.out', out);
  assert.equal(r.status, 0, `the demo failed (status ${r.status}):\n${out}`);

  // The job: the masked read, the denied DROP with the rule, the held ALTER TABLE approved by alice.
  assert.match(out, /\| +1 \| Ada Lovelace \| \[MASKED\] \| \[MASKED\]/);
  assert.match(out, /ERROR: +42501: runguard: DROP TABLE denied by policy rule "no-drop-or-truncate"/);
  assert.match(out, /\(psql failed; the job carries on\)/);
  const approved = out.match(/\| (ap-[0-9a-f]{12}): approved by alice/);
  assert.ok(approved, `no approval by alice in:\n${out}`);
  assert.match(out, new RegExp(`runguard approvals --collector http://127\\.0\\.0\\.1:\\d+ --user alice\\n[^]*?${approved[1]} +pending +ALTER TABLE on 127\\.0\\.0\\.2:5432 +rule review-schema-changes`));
  assert.match(out, /ALTER TABLE: done, the job goes on/);
  assert.match(out, /\(the job exited with status 0\)/);

  // The trail, as the collector stored it: one line per statement with its decision.
  assert.match(out, /job: github acme\/payments, workflow deploy, run \d+, job migrate, actor mona, commit 9fceb02/);
  assert.match(out, /mask +mask-personal-data +SELECT 2 \(4 masked\) +SELECT id, name, email, api_token FROM users/);
  assert.match(out, /deny +no-drop-or-truncate +ERROR 42501 +DROP TABLE deploys/);
  assert.match(out, new RegExp(`held +review-schema-changes +approval ${approved[1]} requested from dba`));
  assert.match(out, /review: approved +review-schema-changes +ALTER TABLE +ALTER TABLE users ADD COLUMN last_login/);
  assert.match(out, /VALUES \('9fceb02d0ae5', 'refs\/heads\/main', '\[REDACTED:env:DEPLOY_TOKEN\]'\)/);
  assert.match(out, /DEPLOY_TOKEN's value appears nowhere in the trail or the logs/);
  assert.doesNotMatch(out, /dpl_[0-9a-f]{32}/, 'the job secret is printed');

  // runguard verify, and where the dashboard is.
  assert.match(out, /\| collector http:\/\/127\.0\.0\.1:\d+: (\d+) of \1 leaves, 1 agent\(s\)/);
  assert.match(out, /\| checkpoint signature: valid/);
  assert.match(out, /\| agent keys: issued by the fleet CA/);
  assert.match(out, /\| OK: every leaf, the tree, the checkpoint and every agent chain and signature verify/);
  assert.match(out, /open +http:\/\/127\.0\.0\.1:\d+\//);
  // The demo signed in to the dashboard as alice and read the job's row: one denied, one reviewed.
  assert.match(out, /Jobs -> acme\/payments · deploy · \S+ #\d+ by mona: \d+ events, \d+ statements, 1 denied, [1-9]\d* masked, 1 reviewed/);
  const signIn = out.match(/sign in +alice \/ (\S+) /);
  assert.ok(signIn, 'the sign-in is printed');
  assert.equal(out.split(signIn[1]!).length - 1, 1, 'the demo password is printed once');
  assert.match(out, /demo done \(--exit\)/);
  assert.doesNotMatch(out, /\x1b\[/, 'no terminal escapes when the output is not a terminal');

  // Nothing left behind: processes, pins, job cgroup, PostgreSQL, temp dir.
  const work = out.match(/(\/tmp\/runguard-demo\.[A-Za-z0-9]+)/)?.[1];
  const pins = out.match(/BPF pins in (\/sys\/fs\/bpf\/runguard-demo-(\d+))/);
  assert.ok(work && pins, 'the demo names its temp dir and pin dir');
  assert.equal(existsSync(work), false, `${work} removed`);
  assert.equal(existsSync(pins[1]!), false, `${pins[1]} removed`);
  assert.equal(existsSync(cgroupPath(`runguard-demo-${pins[2]}.jobs`)), false, 'the job cgroup parent removed');
  for (const m of out.matchAll(/(?:collector|agent) pid (\d+)/g)) assert.equal(alive(Number(m[1])), false, `pid ${m[1]} stopped`);
  assert.equal(listening('127.0.0.2', 5432), false, 'PostgreSQL stopped');
  assert.ok(secs < 90, `the demo took ${secs.toFixed(1)} s`);
});
