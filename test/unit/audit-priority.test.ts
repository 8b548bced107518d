// The main thread's priority follows where the sessions are (agent/native/audit-priority.ts): nicer
// only while every session is on the native relay. Real setpriority on this test's own main thread,
// read back from /proc; the other threads must never change.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { AuditPriority } from '../../agent/native/audit-priority.js';
import { threadNice } from '../helpers/proc.js';

const others = (): number[] => readdirSync('/proc/self/task').map(Number).filter((t) => t !== process.pid);
const root = process.getuid?.() === 0 ? false : 'needs root (CAP_SYS_NICE) to raise the priority back';

test('nicer only while every live session is on the relay, and back for good on close', { skip: root }, () => {
  const base = os.getPriority();
  const errors: Error[] = [];
  const p = new AuditPriority({ nice: 10, onError: (e) => errors.push(e) });
  try {
    const step = (proxy: number, relay: number, lowered: boolean, why: string): void => {
      p.proxy = proxy;
      p.relay = relay;
      assert.equal(p.lowered, lowered, why);
      assert.equal(threadNice('self', process.pid), lowered ? base + 10 : base, why);
    };
    step(0, 0, false, 'no session');
    step(1, 0, false, 'a session starting up (JavaScript relays it)');
    step(1, 1, true, 'the one session adopted by the relay');
    step(2, 1, false, 'a second session on JavaScript');
    step(3, 3, true, 'all three on the relay');
    step(2, 3, true, 'one ended on the proxy side, its Closed record not yet dispatched');
    step(0, 0, false, 'all ended');
    step(1, 1, true, 'a new one on the relay');
    for (const tid of others()) assert.equal(threadNice('self', tid), base, `thread ${tid} keeps its priority`);
    p.close();
    assert.equal(threadNice('self', process.pid), base, 'close restores');
    p.relay = 5;
    assert.equal(threadNice('self', process.pid), base, 'and nothing changes after close');
    assert.deepEqual(errors, []);
  } finally {
    os.setPriority(base);
  }
});

test('the lowered value is capped at 19', { skip: root }, () => {
  const base = os.getPriority();
  try {
    os.setPriority(15);
    const p = new AuditPriority({ nice: 10, onError: (e) => assert.fail(e) });
    p.proxy = 1;
    p.relay = 1;
    assert.equal(threadNice('self', process.pid), 19);
    p.close();
    assert.equal(threadNice('self', process.pid), 15);
  } finally {
    os.setPriority(base);
  }
});

test('without the right to raise it back, it says so and never lowers', { skip: root }, () => {
  // As nobody: lowering is allowed, raising back is not, so the probe at construction must fail
  // and the thread must keep its priority however the sessions move.
  // A copy the child can read wherever the checkout is (a home directory is often 0700); the
  // module imports only node:os.
  const dir = mkdtempSync(path.join(os.tmpdir(), 'rg-audit-priority-'));
  chmodSync(dir, 0o755);
  const module = path.join(dir, 'audit-priority.mjs');
  writeFileSync(module, readFileSync(fileURLToPath(new URL('../../agent/native/audit-priority.js', import.meta.url))), { mode: 0o644 });
  const script = `
    import os from 'node:os';
import path from 'node:path';
    const { AuditPriority } = await import(${JSON.stringify(module)});
    const errors = [];
    const p = new AuditPriority({ nice: 10, onError: (e) => errors.push(e.message) });
    p.proxy = 1; p.relay = 1;
    console.log(JSON.stringify({ nice: os.getPriority(), usable: p.usable, lowered: p.lowered, errors }));`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { uid: 65534, gid: 65534, encoding: 'utf8', cwd: dir });
  rmSync(dir, { recursive: true, force: true });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { nice: number; usable: boolean; lowered: boolean; errors: string[] };
  assert.equal(out.nice, os.getPriority(), 'the priority it started with');
  assert.equal(out.usable, false);
  assert.equal(out.lowered, false);
  assert.equal(out.errors.length, 1);
  assert.match(out.errors[0]!, /cannot raise the main thread's priority back once lowered .*; it stays at nice \d+/);
});
