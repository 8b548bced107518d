// removeJobCgroups against real cgroups under the v2 root: what `agent --cleanup` removes, what it
// keeps, and a job's own `runguard run` removing its cgroup in the middle of the sweep.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync } from 'node:fs';
import { once } from 'node:events';
import path from 'node:path';
import { childCgroups, removeJobCgroups } from '../../agent/cgroup.js';

/** Found independently of the module under test. */
const CGROUP2 = readFileSync('/proc/self/mounts', 'utf8').split('\n').map((l) => l.split(' ')).find((f) => f[2] === 'cgroup2')![1]!;

/** Deepest first: a cgroup goes only once it has none below it. */
function removeTree(dir: string): void {
  if (!existsSync(dir)) return;
  for (const e of readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) removeTree(path.join(dir, e.name));
  rmdirSync(dir);
}

let serial = 0;
/** A fresh parent under the v2 root with the given (relative) cgroups; removed by the test's end. */
function tree(t: { after(fn: () => void): void }, ...children: string[]): string {
  const parent = path.join(CGROUP2, `runguard-unit-${process.pid}-${serial++}`);
  // Not recursive: a cgroup of that name left by another run (a recycled pid) is not ours to remove.
  mkdirSync(parent);
  t.after(() => removeTree(parent));
  for (const c of children) mkdirSync(path.join(parent, c), { recursive: true });
  return parent;
}

test('removeJobCgroups: empty job cgroups and then the parent go', (t) => {
  const parent = tree(t, 'job-a', 'job-b');
  assert.equal(removeJobCgroups(parent), true);
  assert.equal(existsSync(parent), false);
});

test('removeJobCgroups: a job still running and a job with cgroups of its own stay, and so does the parent', async (t) => {
  const parent = tree(t, 'running', 'nested/inner', 'ended');
  const running = path.join(parent, 'running');
  const sleeper = spawn('sh', ['-c', `echo $$ > '${running}/cgroup.procs' && exec sleep 30`], { stdio: 'ignore' });
  try {
    await sweepAroundRunning(parent, running);
  } finally {
    // Before tree()'s removal: a cgroup with a process in it cannot be removed.
    if (sleeper.exitCode === null && sleeper.signalCode === null) {
      sleeper.kill('SIGKILL');
      await once(sleeper, 'exit');
    }
    for (let i = 0; i < 200 && readFileSync(path.join(running, 'cgroup.procs'), 'utf8').trim(); i++) await new Promise((r) => setTimeout(r, 10));
  }
});

async function sweepAroundRunning(parent: string, running: string): Promise<void> {
  for (let i = 0; i < 200 && !readFileSync(path.join(running, 'cgroup.procs'), 'utf8').trim(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.notEqual(readFileSync(path.join(running, 'cgroup.procs'), 'utf8').trim(), '', 'the sleeper never joined its cgroup');

  assert.equal(removeJobCgroups(parent), false);
  assert.deepEqual(childCgroups(parent)?.map((c) => path.basename(c)).sort(), ['nested', 'running']);
  assert.equal(existsSync(path.join(parent, 'nested', 'inner')), true);
}

test('removeJobCgroups: a job cgroup removed by its own job between the listing and its read counts as gone', (t) => {
  const parent = tree(t, 'job-a', 'job-b', 'job-c');
  const raced: string[] = [];
  const racing = (dir: string): string[] | null => {
    // The job's `runguard run` ends right after the parent was listed: its cgroup is gone by the
    // time the sweep reads it.
    if (path.basename(dir) === 'job-b') {
      rmdirSync(dir);
      raced.push(dir);
    }
    return childCgroups(dir);
  };
  assert.equal(removeJobCgroups(parent, racing), true);
  assert.equal(raced.length, 1);
  assert.equal(existsSync(parent), false);
});

test('removeJobCgroups and childCgroups: a parent that does not exist is already removed', () => {
  const gone = path.join(CGROUP2, `runguard-unit-${process.pid}-absent`);
  assert.equal(childCgroups(gone), null);
  assert.equal(removeJobCgroups(gone), true);
});
