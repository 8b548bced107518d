// The parts of the runner hooks that need no BPF: finding the runner's worker on a /proc-like
// tree, naming job cgroups, the label cache, and how a label and an environment combine.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { jobFromEnv } from '../../agent/identity/ci.js';
import { findWorker, jobCgroupName } from '../../agent/cli/hook-cmd.js';
import { LabelStore, labelledJob, listLabels, writeLabel, type JobLabel } from '../../agent/identity/labels.js';
import { Attribution } from '../../agent/identity/attribution.js';
import { IdentitySource, type JobInfo } from '../../proto/index.js';
import { cgroupIdOf, parseCgroupFile } from '../../agent/cgroup.js';
import type { Origin } from '../../agent/bpf/layout.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'rg-hooks-unit-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** A fake /proc: pid -> [comm, ppid, argv]. */
function procTree(procs: Record<number, [string, number, string[]]>): string {
  const root = mkdtempSync(path.join(tmp, 'proc-'));
  for (const [pid, [comm, ppid, argv]] of Object.entries(procs)) {
    mkdirSync(path.join(root, pid));
    // Fields 3.. of /proc/<pid>/stat; field 22 (start time) is the 20th after the comm.
    const rest = ['S', String(ppid), ...Array.from({ length: 17 }, () => '0'), String(1000 + Number(pid)), '0'];
    writeFileSync(path.join(root, pid, 'stat'), `${pid} (${comm}) ${rest.join(' ')}\n`);
    writeFileSync(path.join(root, pid, 'comm'), `${comm}\n`);
    writeFileSync(path.join(root, pid, 'cmdline'), argv.map((a) => a + '\0').join(''));
  }
  return root;
}

describe('findWorker', () => {
  test('walks up from the hook to the Runner.Worker, through bash and sudo', () => {
    const proc = procTree({
      50: ['Runner.Listener', 1, ['/home/runner/bin/Runner.Listener', 'run']],
      100: ['Runner.Worker', 50, ['/home/runner/bin/Runner.Worker', 'spawnclient', '113', '116']],
      200: ['bash', 100, ['/usr/bin/bash', '-e', '/opt/runguard/packaging/github-runner/job-started.sh']],
      300: ['sudo', 200, ['sudo', '-n', '/opt/runguard/bin/runguard', 'hook', 'job-started']],
    });
    assert.deepEqual(findWorker(300, proc), { pid: 100, comm: 'Runner.Worker', startTime: '1100', how: 'runner-worker' });
    assert.equal(findWorker(100, proc)?.pid, 100);
  });

  test('finds a worker run through dotnet, by program name, not by any argument', () => {
    const proc = procTree({
      100: ['dotnet', 1, ['/usr/bin/dotnet', '/home/runner/bin/Runner.Worker.dll', 'spawnclient']],
      150: ['grep', 100, ['grep', 'Runner.Worker']],
      200: ['bash', 150, ['bash']],
    });
    assert.equal(findWorker(200, proc)?.pid, 100);
    assert.equal(findWorker(200, proc)?.how, 'runner-worker');
  });

  test('without a Runner.Worker, the nearest ancestor that is not a wrapper (the GitLab job shell)', () => {
    const proc = procTree({
      10: ['gitlab-runner', 1, ['/usr/bin/gitlab-runner', 'run']],
      20: ['bash', 10, ['bash', '--login']],
      30: ['sudo', 20, ['sudo', '-n', 'runguard']],
      31: ['sudo', 30, ['sudo', '-n', 'runguard']],
    });
    assert.deepEqual(findWorker(31, proc), { pid: 20, comm: 'bash', startTime: '1020', how: 'parent' });
    assert.equal(findWorker(20, proc)?.pid, 20);
  });

  test('nothing to move when the walk reaches init or a gone process', () => {
    const proc = procTree({ 30: ['sudo', 1, ['sudo']] });
    assert.equal(findWorker(30, proc), undefined);
    assert.equal(findWorker(999, proc), undefined);
    assert.equal(findWorker(1, proc), undefined);
  });
});

test('job cgroup names come from the run, in safe characters, with a random suffix', () => {
  const job: JobInfo = { provider: 'github', runId: '9001', runAttempt: '2', job: 'build (ubuntu, 3.12)/../x' };
  assert.equal(jobCgroupName(job, 'abcd0123'), 'github-9001-2-build_ubuntu_3.12_.._x-abcd0123');
  assert.match(jobCgroupName(undefined), /^job-[0-9a-z]+-[0-9a-f]{8}$/);
  assert.match(jobCgroupName({ provider: 'github', job: 'x'.repeat(300) }), /^github-x{73}-[0-9a-f]{8}$/);
  assert.notEqual(jobCgroupName(job), jobCgroupName(job));
  assert.doesNotMatch(jobCgroupName({ provider: '..', job: '..' }, '00000000'), /^\./);
});

describe('labelledJob', () => {
  const label: JobInfo = { provider: 'github', repository: 'acme/payments', runId: '9001', runAttempt: '2', job: 'migrate', source: IdentitySource.IDENTITY_SOURCE_ENVIRONMENT };
  const env = (o: JobInfo): JobInfo => ({ ...o, source: IdentitySource.IDENTITY_SOURCE_ENVIRONMENT, sourcePid: 42 });

  test('the label wins and says so', () => {
    assert.deepEqual(labelledJob(label, undefined), { ...label, source: IdentitySource.IDENTITY_SOURCE_RUNNER_HOOK });
    assert.deepEqual(
      labelledJob(label, env({ provider: 'github', repository: 'acme/payments', runId: '9001', job: 'other-name' })).job,
      'migrate',
    );
  });

  test('the same job in the environment may fill in what the label lacks', () => {
    const got = labelledJob(label, env({ provider: 'github', repository: 'acme/payments', runId: '9001', sha: 'abc', actor: 'alice' }));
    assert.deepEqual(got, { ...label, sha: 'abc', actor: 'alice', source: IdentitySource.IDENTITY_SOURCE_RUNNER_HOOK });
    assert.equal(got.sourcePid, undefined);
  });

  test('another repository, run or attempt in the environment adds nothing', () => {
    for (const other of [
      { provider: 'github', repository: 'mallory/elsewhere', runId: '9001' },
      { provider: 'github', repository: 'acme/payments', runId: '666' },
      { provider: 'github', repository: 'acme/payments', runId: '9001', runAttempt: '1' },
      { provider: 'gitlab', repository: 'acme/payments', runId: '9001' },
    ]) {
      assert.deepEqual(labelledJob(label, env({ ...other, sha: 'evil', actor: 'mallory' })), { ...label, source: IdentitySource.IDENTITY_SOURCE_RUNNER_HOOK }, JSON.stringify(other));
    }
  });
});

function label(id: string, job: JobInfo = { provider: 'github', repository: 'acme/payments', runId: '1' }): JobLabel {
  return {
    version: 1, cgroupId: id, cgroup: `/runguard.jobs/j-${id}`, job, workerPid: 100, workerStartTime: '1', workerComm: 'Runner.Worker',
    workerFound: 'runner-worker', originCgroup: '/system.slice/runner.service', startedAt: new Date().toISOString(),
  };
}

describe('LabelStore', () => {
  test('labels by cgroup id, for the cgroup and those below it, cached with a time to live', () => {
    const dir = path.join(mkdtempSync(path.join(tmp, 'state-')), 'jobs');
    let now = 1_000_000;
    const ids: Record<string, string> = { '/runguard.jobs/j-100': '100', '/runguard.jobs': '7' };
    const store = new LabelStore(dir, { now: () => now, idOf: (p) => ids[p] ?? '', ttlMs: 1000 });
    assert.equal(store.lookup('100'), undefined, 'no directory yet');

    writeLabel(dir, label('100'));
    assert.equal(statSync(dir).mode & 0o777, 0o755);
    assert.equal(statSync(path.join(dir, '100.json')).mode & 0o777, 0o644);
    assert.equal(store.lookup('100'), undefined, 'a miss is remembered for a second');
    now += 1001;
    assert.equal(store.lookup(100n)?.job?.repository, 'acme/payments');
    // A sub-cgroup the job made: its own id has no label, its parent's has.
    assert.equal(store.lookup('555', '/runguard.jobs/j-100/docker-build')?.cgroupId, '100');
    assert.equal(store.lookup('556', () => '/runguard.jobs/j-100/a/b')?.cgroupId, '100');
    assert.equal(store.lookup('557', '/elsewhere/x'), undefined);
    assert.equal(store.lookup('558'), undefined, 'without a path only the own label counts');
    // The path is only asked for when the cgroup's own label is missing.
    assert.equal(store.lookup('100', () => assert.fail('path asked for a labelled cgroup'))?.cgroupId, '100');

    // Removed: seen after the time to live, for the cgroup and for those below it.
    unlinkSync(path.join(dir, '100.json'));
    assert.equal(store.lookup('100')?.cgroupId, '100', 'cached for up to a second');
    now += 1001;
    assert.equal(store.lookup('100'), undefined);
    assert.equal(store.lookup('555', '/runguard.jobs/j-100/docker-build'), undefined);
  });

  test('a rewritten label is read again; a label file anyone could have written is not trusted', () => {
    const dir = path.join(mkdtempSync(path.join(tmp, 'state-')), 'jobs');
    let now = 0;
    const store = new LabelStore(dir, { now: () => now });
    writeLabel(dir, label('200'));
    assert.equal(store.lookup('200')?.job?.runId, '1');
    writeLabel(dir, label('200', { provider: 'github', repository: 'acme/payments', runId: '2' }));
    now += 1001;
    assert.equal(store.lookup('200')?.job?.runId, '2');

    writeLabel(dir, label('300'));
    chmodSync(path.join(dir, '300.json'), 0o666);
    assert.equal(store.lookup('300'), undefined, 'world-writable');
    const strict = new LabelStore(dir, { ownerUid: (process.geteuid?.() ?? 0) + 1 });
    assert.equal(strict.lookup('200'), undefined, 'owned by another user');
    // A file whose name and content disagree, or that is not JSON, is no label.
    writeFileSync(path.join(dir, '400.json'), JSON.stringify(label('401')), { mode: 0o644 });
    writeFileSync(path.join(dir, '500.json'), '{"cgroupId": "500", ', { mode: 0o644 });
    assert.equal(store.lookup('400'), undefined);
    assert.equal(store.lookup('500'), undefined);
    assert.deepEqual(listLabels(dir).map((l) => l.label.cgroupId).sort(), ['200', '300']);
  });
});

describe('Attribution with job labels', () => {
  const cgroup = parseCgroupFile(readFileSync('/proc/self/cgroup', 'utf8'));
  const ownId = cgroup ? cgroupIdOf(cgroup) : '';
  const origin = (pid: number, cgroupId: string): Origin => ({
    addr: Buffer.alloc(16), port: 5432, family: 4, pid, tid: pid, uid: 0, gid: 0, cgroupId: BigInt(cgroupId), cookie: 1n, comm: 'psql',
  });

  test('a connection from a labelled cgroup gets the label\'s job, live process or gone', { skip: ownId === '' && 'no cgroup v2' }, () => {
    const dir = path.join(mkdtempSync(path.join(tmp, 'state-')), 'jobs');
    writeLabel(dir, label(ownId, { provider: 'github', repository: 'acme/payments', runId: '9001', job: 'migrate' }));
    const attribution = new Attribution(undefined, { labelsDir: dir });
    const live = attribution.forConnection(origin(process.pid, ownId));
    assert.equal(live.process.pid, process.pid);
    assert.deepEqual(live.job, { provider: 'github', repository: 'acme/payments', runId: '9001', job: 'migrate', source: IdentitySource.IDENTITY_SOURCE_RUNNER_HOOK });
    const gone = attribution.forConnection(origin(0x3ffffff, ownId));
    assert.equal(gone.job.source, IdentitySource.IDENTITY_SOURCE_RUNNER_HOOK);
    assert.equal(gone.job.repository, 'acme/payments');

    const unlabelled = new Attribution(undefined, { labelsDir: path.join(tmp, 'nowhere') }).forConnection(origin(process.pid, ownId));
    assert.notEqual(unlabelled.job.source, IdentitySource.IDENTITY_SOURCE_RUNNER_HOOK);
  });

  test('a process moved to another cgroup after it was first seen is reported where the kernel says it is', { skip: ownId === '' && 'no cgroup v2' }, () => {
    const dir = path.join(mkdtempSync(path.join(tmp, 'state-')), 'jobs');
    const attribution = new Attribution(undefined, { labelsDir: dir });
    const first = attribution.forConnection(origin(process.pid, ownId));
    assert.equal(first.process.cgroup, cgroup);
    assert.equal(String(first.process.cgroupId), ownId);
    // The same process (cached by the resolver), now in a cgroup with a label: as after job-started.
    const movedTo = '987654321';
    writeLabel(dir, label(movedTo, { provider: 'github', repository: 'acme/payments', runId: '7' }));
    const moved = attribution.forConnection(origin(process.pid, movedTo));
    assert.equal(String(moved.process.cgroupId), movedTo);
    assert.equal(moved.process.cgroup, '', 'not the cgroup it was in: /proc says another one, so unknown');
    assert.equal(moved.job.source, IdentitySource.IDENTITY_SOURCE_RUNNER_HOOK);
    assert.equal(moved.job.runId, '7');
  });
});

describe('packaging', () => {
  const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../packaging');
  const keptBySudo = (file: string) => new Set(
    [...readFileSync(path.join(PKG, file), 'utf8').matchAll(/env_keep \+= "([^"]*)"/g)].flatMap((m) => m[1]!.split(/\s+/)),
  );

  // Every variable the job mapping reads, with a value, as the runner would set them.
  const GITHUB = {
    GITHUB_ACTIONS: 'true', GITHUB_REPOSITORY: 'acme/payments', GITHUB_WORKFLOW: 'deploy', GITHUB_RUN_ID: '9001', GITHUB_RUN_ATTEMPT: '2',
    GITHUB_JOB: 'migrate', GITHUB_ACTOR: 'alice', GITHUB_REF: 'refs/heads/main', GITHUB_SHA: 'abc', RUNNER_NAME: 'r7', GITHUB_SERVER_URL: 'https://ghe.example',
    GITHUB_TOKEN: 'ghs_secret', PATH: '/usr/bin',
  };
  const GITLAB = {
    GITLAB_CI: 'true', CI_PROJECT_PATH: 'group/infra', CI_PIPELINE_NAME: 'nightly', CI_PIPELINE_SOURCE: 'push', CI_PIPELINE_ID: '4242',
    CI_JOB_NAME: 'deploy', CI_JOB_ID: '777', GITLAB_USER_LOGIN: 'bob', CI_COMMIT_REF_NAME: 'main', CI_COMMIT_SHA: 'def',
    CI_RUNNER_DESCRIPTION: 'shell-1', CI_JOB_URL: 'https://gitlab.example/group/infra/-/jobs/777', CI_JOB_TOKEN: 'glcbt-secret',
  };

  for (const [file, env] of [['github-runner/sudoers.runguard', GITHUB], ['gitlab-runner/sudoers.runguard', GITLAB]] as const) {
    test(`${file} keeps every variable the job identity is read from, and no token`, () => {
      const kept = keptBySudo(file);
      const throughSudo = Object.fromEntries(Object.entries(env).filter(([k]) => kept.has(k)));
      assert.deepEqual(jobFromEnv(throughSudo), jobFromEnv(env));
      assert.ok(![...kept].some((k) => /TOKEN|RUNGUARD|NODE|\*/.test(k)), [...kept].join(' '));
    });
  }

  test('the hook scripts are executable shell that parse; the sudoers files and units check out where the tools are', { skip: process.platform !== 'linux' }, () => {
    for (const s of ['github-runner/job-started.sh', 'github-runner/job-completed.sh']) {
      const file = path.join(PKG, s);
      assert.ok(statSync(file).mode & 0o111, `${s} is not executable`);
      const r = spawnSync('sh', ['-n', file], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      // The command lines the sudoers rule allows, exactly.
      const text = readFileSync(file, 'utf8');
      assert.match(text, /^RUNGUARD=\/opt\/runguard\/bin\/runguard$/m);
      assert.match(text, /^STATE_DIR=\/var\/lib\/runguard$/m);
      assert.match(text, /sudo -n "\$RUNGUARD" hook job-(started|completed) --state-dir "\$STATE_DIR"/);
    }
    if (spawnSync('visudo', ['--version']).status === 0) {
      for (const s of ['github-runner/sudoers.runguard', 'gitlab-runner/sudoers.runguard']) {
        const r = spawnSync('visudo', ['-cf', path.join(PKG, s)], { encoding: 'utf8' });
        assert.equal(r.status, 0, r.stdout + r.stderr);
      }
    }
    if (spawnSync('systemd-analyze', ['--version']).status === 0) {
      // Verified as installed, with ExecStart pointing at this checkout's bin/runguard.
      const dir = mkdtempSync(path.join(tmp, 'units-'));
      const bin = path.resolve(PKG, '../bin/runguard');
      const units = ['runguard-agent.service', 'runguard-collector.service'].map((u) => {
        writeFileSync(path.join(dir, u), readFileSync(path.join(PKG, 'systemd', u), 'utf8').replaceAll('/opt/runguard/bin/runguard', bin));
        return path.join(dir, u);
      });
      const r = spawnSync('systemd-analyze', ['verify', '--man=no', ...units], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stdout + r.stderr);
    }
  });
});
