// Identity against real processes: children spawned with CI variables, an env-less grandchild, an
// orphan, a process in a real cgroup named like a container's, a thread, and processes that exited.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, realpathSync, rmdirSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { once } from 'node:events';
import os from 'node:os';
import path from 'node:path';
import { encodeEvent, eventToJson, EventKind, IdentitySource } from '../../proto/index.js';
import { jobFromEnv, PROVIDERS } from '../../agent/identity/ci.js';
import {
  containerIdFromCgroup, parseEnviron, parseStat, readEnviron, readProcess, readStartTime,
} from '../../agent/identity/process.js';
import { IdentityResolver } from '../../agent/identity/resolver.js';
import { parseCgroup2Mount } from '../../agent/cgroup.js';

const ENVIRONMENT = IdentitySource.IDENTITY_SOURCE_ENVIRONMENT;
const NONE = IdentitySource.IDENTITY_SOURCE_NONE;
const TOKEN = 'ghs_0123456789abcdefghijklmnopqrstuvwxyz';

const GITHUB_ENV: Record<string, string> = {
  PATH: process.env.PATH ?? '/usr/bin:/bin',
  GITHUB_ACTIONS: 'true',
  GITHUB_REPOSITORY: 'acme/payments',
  GITHUB_WORKFLOW: 'deploy',
  GITHUB_RUN_ID: '9876543210',
  GITHUB_RUN_ATTEMPT: '2',
  GITHUB_JOB: 'migrate',
  GITHUB_ACTOR: 'octocat',
  GITHUB_REF: 'refs/heads/main',
  GITHUB_SHA: 'f'.repeat(40),
  GITHUB_SERVER_URL: 'https://github.com',
  RUNNER_NAME: 'runner-7',
  GITHUB_TOKEN: TOKEN,
};

const GITHUB_JOB = {
  provider: 'github', repository: 'acme/payments', workflow: 'deploy', runId: '9876543210', runAttempt: '2',
  job: 'migrate', actor: 'octocat', ref: 'refs/heads/main', sha: 'f'.repeat(40), runner: 'runner-7',
  url: 'https://github.com/acme/payments/actions/runs/9876543210', source: ENVIRONMENT,
};

// --- real processes, each killed by pid when its test ends -------------------------------------------

type TestContext = { after(fn: () => unknown): void };

/** Live processes whose parent is `pid`, and theirs: a shell's children outlive a killed shell. */
function descendants(pid: number): number[] {
  const children: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (parseStat(readFileSync(`/proc/${name}/stat`, 'utf8'))?.ppid === pid) children.push(Number(name));
    } catch {
      // exited while we looked
    }
  }
  return children.flatMap((c) => [c, ...descendants(c)]);
}

/** Kills `pid` and what it started when the test ends, by pid, and waits until they are gone. */
function track(t: TestContext, pid: number): void {
  t.after(async () => {
    // Innermost first, so each parent is still there to reap its child.
    const all = [pid, ...descendants(pid)].reverse();
    for (const p of all) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    for (const p of all) await waitGone(p);
  });
}

const workDir = realpathSync(mkdtempSync(path.join(os.tmpdir(), 'rg-identity-')));
after(() => rmSync(workDir, { recursive: true, force: true }));

/** Spawns in the work dir; stdout is piped only when the test reads it, so nothing else holds it open. */
async function start(t: TestContext, cmd: string, args: string[], env: Record<string, string>, stdout: 'pipe' | 'ignore' = 'ignore'): Promise<ChildProcess & { pid: number }> {
  const child = spawn(cmd, args, { env, cwd: workDir, stdio: ['ignore', stdout, 'inherit'] });
  await once(child, 'spawn');
  track(t, child.pid!);
  return child as ChildProcess & { pid: number };
}

/** The first line the child prints: how a shell hands us the pid of its own child. */
async function firstLine(child: ChildProcess): Promise<string> {
  let buf = '';
  for await (const chunk of child.stdout!) {
    buf += String(chunk);
    if (buf.includes('\n')) return buf.slice(0, buf.indexOf('\n'));
  }
  throw new Error('child printed nothing');
}

/** Until the process has exec'd `exe` (a shell's child may still be the forked shell). */
async function waitExe(pid: number, exe: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (readProcess(pid)?.exe === exe) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`pid ${pid} never became ${exe}`);
}

async function waitGone(pid: number): Promise<void> {
  for (let i = 0; i < 200 && readStartTime(pid) !== undefined; i++) await new Promise((r) => setTimeout(r, 10));
}

function cgroupLine(pid: number): string {
  return readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n').find((l) => l.startsWith('0::'))!.slice(3);
}

/** Found independently of the module under test: the test must not share its bug. */
const CGROUP2 = readFileSync('/proc/self/mounts', 'utf8').split('\n').map((l) => l.split(' ')).find((f) => f[2] === 'cgroup2')![1]!;

// --- readProcess ------------------------------------------------------------------------------------

test('readProcess: a real child, every field from /proc', async (t) => {
  const child = await start(t, 'sleep', ['30'], GITHUB_ENV);
  const info = readProcess(child.pid);
  assert.ok(info);
  assert.equal(info.pid, child.pid);
  assert.equal(info.ppid, process.pid);
  assert.equal(info.exe, '/usr/bin/sleep');
  assert.deepEqual(info.argv, ['sleep', '30']);
  assert.equal(info.cwd, workDir);
  assert.equal(info.uid, process.getuid!());
  assert.equal(info.user, process.getuid!() === 0 ? 'root' : os.userInfo().username);
  assert.equal(info.comm, 'sleep');
  assert.equal(info.cgroup, cgroupLine(child.pid));
  assert.equal(info.cgroupId, statSync(CGROUP2 + (info.cgroup === '/' ? '' : info.cgroup), { bigint: true }).ino.toString());
  assert.equal(info.containerId, '');
  assert.equal(info.tid, undefined);
  assert.match(readStartTime(child.pid)!, /^\d+$/);
});

test('readProcess: a pid that has exited is undefined, not an error', async (t) => {
  const child = spawn('true', [], { stdio: 'ignore' });
  const pid = child.pid!;
  await once(child, 'exit');
  await waitGone(pid);
  assert.equal(readProcess(pid), undefined);
  assert.equal(readStartTime(pid), undefined);
  assert.equal(readEnviron(pid), undefined);
  assert.equal(new IdentityResolver().resolve(pid), undefined);
});

test('readProcess: a zombie has exited: undefined, and the resolver does not cache an empty identity', async (t) => {
  // sleep 0 exits at once; its parent then execs sleep 30, which never reaps it.
  const sh = await start(t, 'sh', ['-c', 'sleep 0 >/dev/null & echo $!; exec sleep 30'], GITHUB_ENV, 'pipe');
  const zombie = Number(await firstLine(sh));
  track(t, zombie);
  for (let i = 0; i < 200 && !readFileSync(`/proc/${zombie}/stat`, 'utf8').includes(') Z '); i++) await new Promise((r) => setTimeout(r, 10));
  assert.match(readFileSync(`/proc/${zombie}/stat`, 'utf8'), /\) Z /);
  assert.equal(readProcess(zombie), undefined);
  assert.equal(readStartTime(zombie), undefined);
  assert.equal(new IdentityResolver().resolve(zombie), undefined);
});

test('readProcess: a comm with spaces and parentheses does not shift the stat fields', async (t) => {
  const link = path.join(workDir, 'a) b (c');
  symlinkSync('/usr/bin/sleep', link);
  const child = await start(t, link, ['30'], GITHUB_ENV);
  const info = readProcess(child.pid);
  assert.ok(info);
  assert.equal(info.comm, 'a) b (c');
  assert.equal(info.ppid, process.pid);
  assert.equal(info.exe, '/usr/bin/sleep');
  assert.equal(parseStat(readFileSync(`/proc/${child.pid}/stat`, 'utf8'))?.ppid, process.pid);
});

test('readProcess: a thread id resolves to its thread group, with tid set', () => {
  const tid = readdirSync('/proc/self/task').map(Number).find((t) => t !== process.pid);
  assert.ok(tid, 'node always runs helper threads');
  const info = readProcess(tid);
  assert.equal(info?.pid, process.pid);
  assert.equal(info?.tid, tid);
});

test('readProcess: cgroup path, cgroup id and container id of a process in a real container-style cgroup', async (t) => {
  const id = 'c0ffee'.repeat(10) + 'abcd';
  const parent = path.join(CGROUP2, `runguard-test-${process.pid}`);
  const scope = path.join(parent, `docker-${id}.scope`);
  mkdirSync(scope, { recursive: true });
  // The shell moves itself into the cgroup, then becomes sleep: the pid we know ends up inside.
  const child = await start(t, 'sh', ['-c', `echo $$ > '${scope}/cgroup.procs' && exec sleep 30`], GITHUB_ENV);
  try {
    await waitExe(child.pid, '/usr/bin/sleep');
    const info = readProcess(child.pid);
    assert.ok(info);
    assert.equal(info.cgroup, `/runguard-test-${process.pid}/docker-${id}.scope`);
    assert.equal(info.cgroup, cgroupLine(child.pid));
    assert.equal(info.cgroupId, statSync(scope, { bigint: true }).ino.toString());
    assert.equal(info.containerId, id);
  } finally {
    // A cgroup can only be removed once empty.
    child.kill('SIGKILL');
    await waitGone(child.pid);
    rmdirSync(scope);
    rmdirSync(parent);
  }
});

test('readProcess: argv is redacted with the detectors even without a job', async (t) => {
  const child = await start(t, 'sh', ['-c', 'sleep 30; : "$1"', 'sh', '--password=hunter22'], { PATH: GITHUB_ENV.PATH! });
  const info = readProcess(child.pid);
  assert.deepEqual(info?.argv, ['sh', '-c', 'sleep 30; : "$1"', 'sh', '--password=[REDACTED:cli-password]']);
});

// --- resolver --------------------------------------------------------------------------------------

test('resolve: a GitHub Actions child has its own job identity and secrets', async (t) => {
  const child = await start(t, 'sleep', ['30'], GITHUB_ENV);
  const resolver = new IdentityResolver();
  const who = resolver.resolve(child.pid);
  assert.ok(who);
  assert.equal(who.process.pid, child.pid);
  assert.equal(who.process.ppid, process.pid);
  assert.equal(who.process.exe, '/usr/bin/sleep');
  assert.deepEqual(who.job, { ...GITHUB_JOB, sourcePid: child.pid });
  assert.deepEqual(who.secrets, [{ name: 'GITHUB_TOKEN', value: TOKEN }]);
  assert.equal(who.redactor.redact(`token=${TOKEN}`), 'token=[REDACTED:env:GITHUB_TOKEN]');
  assert.equal(who.startTime, readStartTime(child.pid));
  // Cached per (pid, start time): the same result object, no second walk.
  assert.equal(resolver.resolve(child.pid), who);

  // The shapes are the wire contract's: they encode, and decode to the same values.
  const json = eventToJson(encodeEvent({ agentId: 'a', seq: 1, kind: EventKind.EVENT_KIND_PROCESS_EXEC, process: who.process, job: who.job }));
  // proto3 JSON leaves out default values (uid 0, empty container id).
  const nonDefault = Object.fromEntries(Object.entries(who.process).filter(([, v]) => v !== 0 && v !== '' && v !== undefined));
  assert.deepEqual(json.process, nonDefault);
  assert.deepEqual(json.job, { ...GITHUB_JOB, source: 'IDENTITY_SOURCE_ENVIRONMENT', sourcePid: child.pid });
});

test('resolve: argv carrying the job token is redacted with the job env secrets', async (t) => {
  const child = await start(t, 'sh', ['-c', 'sleep 30; : "$1"', 'sh', `https://x-access-token:${TOKEN}@github.com/acme/payments`], GITHUB_ENV);
  const who = new IdentityResolver().resolve(child.pid);
  assert.ok(who);
  assert.deepEqual(who.process.argv, ['sh', '-c', 'sleep 30; : "$1"', 'sh', 'https://x-access-token:[REDACTED:env:GITHUB_TOKEN]@github.com/acme/payments']);
  assert.ok(!JSON.stringify(who.process).includes(TOKEN));
});

test('resolve: an env-less grandchild (env -i) gets the identity of the shell above it', async (t) => {
  // `& wait` keeps sh alive as the parent; a plain `sh -c 'env -i sleep'` would exec in place. The
  // redirect keeps the grandchild off our stdout pipe, which would otherwise outlive the test.
  const sh = await start(t, 'sh', ['-c', 'env -i sleep 30 >/dev/null & echo $!; wait'], GITHUB_ENV, 'pipe');
  const grandchild = Number(await firstLine(sh));
  track(t, grandchild);
  await waitExe(grandchild, '/usr/bin/sleep');
  assert.deepEqual(readEnviron(grandchild), {});

  const who = new IdentityResolver().resolve(grandchild);
  assert.ok(who);
  assert.equal(who.process.pid, grandchild);
  assert.equal(who.process.ppid, sh.pid);
  assert.deepEqual(who.job, { ...GITHUB_JOB, sourcePid: sh.pid });
  assert.deepEqual(who.secrets, [{ name: 'GITHUB_TOKEN', value: TOKEN }]);
});

test('resolve: RUNGUARD_JOB_* wins over the CI system in the same environment', async (t) => {
  const env = {
    ...GITHUB_ENV, RUNGUARD_JOB_PROVIDER: 'internal-ci', RUNGUARD_JOB_REPOSITORY: 'infra/db', RUNGUARD_JOB_RUN_ID: 'r-1',
    RUNGUARD_JOB_JOB: 'backup', RUNGUARD_JOB_ACTOR: 'cron',
  };
  const child = await start(t, 'sleep', ['30'], env);
  const who = new IdentityResolver().resolve(child.pid);
  assert.deepEqual(who?.job, {
    provider: 'internal-ci', repository: 'infra/db', runId: 'r-1', job: 'backup', actor: 'cron', source: ENVIRONMENT, sourcePid: child.pid,
  });
});

test('resolve: an orphan without CI variables has no job (the walk stops at pid 1)', async (t) => {
  const sh = await start(t, 'sh', ['-c', 'env -i sleep 30 >/dev/null & echo $!'], GITHUB_ENV, 'pipe');
  const orphan = Number(await firstLine(sh));
  track(t, orphan);
  // Until env has exec'd sleep, the orphan still carries the shell's environment.
  await waitExe(orphan, '/usr/bin/sleep');
  if (sh.exitCode === null) await once(sh, 'exit');
  await waitGone(sh.pid);
  const who = new IdentityResolver().resolve(orphan);
  assert.ok(who);
  if (who.process.ppid !== 1) {
    t.skip(`reparented to a subreaper (pid ${who.process.ppid}), not init`);
    return;
  }
  assert.deepEqual(who.job, { source: NONE });
  assert.deepEqual(who.secrets, []);
});

test('resolve: a process that has gone resolves from a fallback through its live ancestors', async (t) => {
  const sh = await start(t, 'sh', ['-c', 'sleep 30'], GITHUB_ENV);
  const resolver = new IdentityResolver();
  const gone = spawn('true', [], { stdio: 'ignore' });
  const pid = gone.pid!;
  await once(gone, 'exit');
  await waitGone(pid);

  // As an exec event would have described it, with the shell as its parent.
  const who = resolver.resolve(pid, { ppid: sh.pid, uid: 0, cgroupId: 1n, filename: '/usr/bin/psql', argv: ['psql', `--password=${TOKEN}`, 'postgres://app:hunter22@db/app'] });
  assert.ok(who);
  assert.equal(who.process.pid, pid);
  assert.equal(who.process.ppid, sh.pid);
  assert.equal(who.process.exe, '/usr/bin/psql');
  assert.equal(who.process.cgroupId, '1');
  assert.equal(who.process.user, 'root');
  assert.deepEqual(who.process.argv, ['psql', '--password=[REDACTED:env:GITHUB_TOKEN]', 'postgres://app:[REDACTED:url-password]@db/app']);
  assert.deepEqual(who.job, { ...GITHUB_JOB, sourcePid: sh.pid });
  assert.equal(who.startTime, '');

  // rememberExited keeps the same knowledge for callers that have no fallback at hand.
  assert.equal(resolver.resolve(pid), undefined);
  resolver.rememberExited(pid, { ppid: sh.pid, filename: '/usr/bin/true', argv: ['true'] });
  assert.deepEqual(resolver.resolve(pid)?.job, { ...GITHUB_JOB, sourcePid: sh.pid });

  // A redirect record knows the cgroup but not the parent: the exec event's parent completes it.
  const fromRecord = resolver.resolve(pid, { uid: 0, cgroupId: 7n, comm: 'true', tid: pid + 1 });
  assert.equal(fromRecord?.process.ppid, sh.pid);
  assert.equal(fromRecord?.process.cgroupId, '7');
  assert.equal(fromRecord?.process.tid, pid + 1);
  assert.deepEqual(fromRecord?.job, { ...GITHUB_JOB, sourcePid: sh.pid });
  // ...unless they disagree on the parent: then they are two processes, and only the given one counts.
  assert.deepEqual(resolver.resolve(pid, { ppid: 999_999 })?.job, { source: NONE });
});

test('resolve: a process resolved while alive keeps that identity after it exits', async (t) => {
  const child = await start(t, 'sleep', ['30'], GITHUB_ENV);
  const resolver = new IdentityResolver();
  const alive = resolver.resolve(child.pid);
  assert.ok(alive);
  child.kill('SIGKILL');
  await once(child, 'exit');
  await waitGone(child.pid);
  assert.equal(resolver.resolve(child.pid), alive);
  // A fallback naming another parent is a newer process that reused the pid.
  const newer = resolver.resolve(child.pid, { ppid: 999_999, filename: '/usr/bin/other' });
  assert.equal(newer?.process.exe, '/usr/bin/other');
  assert.deepEqual(newer?.job, { source: NONE });
});

test('resolve: the cache is bounded and invalidate() forgets a pid (exec keeps pid and start time)', async (t) => {
  const resolver = new IdentityResolver({ cacheSize: 2 });
  const children = await Promise.all([1, 2, 3].map(() => start(t, 'sleep', ['30'], GITHUB_ENV)));
  const first = resolver.resolve(children[0]!.pid);
  for (const c of children) resolver.resolve(c.pid);
  assert.equal(resolver.size, 2);
  assert.notEqual(resolver.resolve(children[0]!.pid), first, 'evicted, so resolved afresh');
  const again = resolver.resolve(children[2]!.pid);
  resolver.invalidate(children[2]!.pid);
  assert.notEqual(resolver.resolve(children[2]!.pid), again);
});

test('resolve: pids that are not processes are undefined', () => {
  const resolver = new IdentityResolver();
  assert.equal(resolver.resolve(0), undefined);
  assert.equal(resolver.resolve(-1), undefined);
  assert.equal(resolver.resolve(2 ** 22 + 1), undefined); // above pid_max
});

// --- CI providers -------------------------------------------------------------------------------

const PROVIDER_CASES: { name: string; env: Record<string, string>; job: Record<string, unknown> }[] = [
  { name: 'github', env: GITHUB_ENV, job: GITHUB_JOB },
  {
    name: 'github (GITHUB_RUN_ID alone detects; server URL defaults)',
    env: { GITHUB_RUN_ID: '5', GITHUB_REPOSITORY: 'a/b' },
    job: { provider: 'github', runId: '5', repository: 'a/b', url: 'https://github.com/a/b/actions/runs/5', source: ENVIRONMENT },
  },
  {
    name: 'gitlab',
    env: {
      GITLAB_CI: 'true', CI_PROJECT_PATH: 'group/sub/app', CI_PIPELINE_SOURCE: 'push', CI_PIPELINE_NAME: 'Release', CI_PIPELINE_ID: '1001',
      CI_JOB_ID: '5005', CI_JOB_NAME: 'migrate', GITLAB_USER_LOGIN: 'alice', CI_COMMIT_REF_NAME: 'main', CI_COMMIT_SHA: 'a'.repeat(40),
      CI_RUNNER_DESCRIPTION: 'shared-runner-3', CI_JOB_URL: 'https://gitlab.example.com/group/sub/app/-/jobs/5005',
    },
    job: {
      provider: 'gitlab', repository: 'group/sub/app', workflow: 'Release', runId: '1001', job: 'migrate', actor: 'alice', ref: 'main',
      sha: 'a'.repeat(40), runner: 'shared-runner-3', url: 'https://gitlab.example.com/group/sub/app/-/jobs/5005', source: ENVIRONMENT,
    },
  },
  {
    name: 'gitlab (no pipeline name: the source; no job name: the id)',
    env: { GITLAB_CI: 'true', CI_PIPELINE_SOURCE: 'schedule', CI_JOB_ID: '77' },
    job: { provider: 'gitlab', workflow: 'schedule', job: '77', source: ENVIRONMENT },
  },
  {
    name: 'buildkite',
    env: {
      BUILDKITE: 'true', BUILDKITE_REPO: 'git@github.com:acme/app.git', BUILDKITE_PIPELINE_SLUG: 'app-deploy', BUILDKITE_BUILD_NUMBER: '88',
      BUILDKITE_RETRY_COUNT: '1', BUILDKITE_JOB_ID: '0190-uuid', BUILDKITE_LABEL: ':rocket: deploy', BUILDKITE_BUILD_CREATOR: 'Bob',
      BUILDKITE_BRANCH: 'main', BUILDKITE_COMMIT: 'b'.repeat(40), BUILDKITE_AGENT_NAME: 'agent-1', BUILDKITE_BUILD_URL: 'https://buildkite.com/acme/app-deploy/builds/88',
    },
    job: {
      provider: 'buildkite', repository: 'git@github.com:acme/app.git', workflow: 'app-deploy', runId: '88', runAttempt: '1', job: ':rocket: deploy',
      actor: 'Bob', ref: 'main', sha: 'b'.repeat(40), runner: 'agent-1', url: 'https://buildkite.com/acme/app-deploy/builds/88', source: ENVIRONMENT,
    },
  },
  {
    name: 'circleci',
    env: {
      CIRCLECI: 'true', CIRCLE_PROJECT_USERNAME: 'acme', CIRCLE_PROJECT_REPONAME: 'app', CIRCLE_WORKFLOW_ID: 'wf-uuid', CIRCLE_BUILD_NUM: '321',
      CIRCLE_JOB: 'deploy', CIRCLE_USERNAME: 'carol', CIRCLE_BRANCH: 'main', CIRCLE_SHA1: 'c'.repeat(40), CIRCLE_BUILD_URL: 'https://circleci.com/gh/acme/app/321',
    },
    job: {
      provider: 'circleci', repository: 'acme/app', workflow: 'wf-uuid', runId: '321', job: 'deploy', actor: 'carol', ref: 'main',
      sha: 'c'.repeat(40), url: 'https://circleci.com/gh/acme/app/321', source: ENVIRONMENT,
    },
  },
  {
    name: 'jenkins',
    env: {
      JENKINS_URL: 'https://jenkins.example.com/', JOB_NAME: 'infra/db-migrate', BUILD_NUMBER: '12', GIT_URL: 'https://git.example.com/infra/db.git',
      GIT_BRANCH: 'origin/main', GIT_COMMIT: 'd'.repeat(40), NODE_NAME: 'linux-7', BUILD_URL: 'https://jenkins.example.com/job/infra/job/db-migrate/12/',
      BUILD_USER_ID: 'dave', STAGE_NAME: 'Migrate',
    },
    job: {
      provider: 'jenkins', repository: 'https://git.example.com/infra/db.git', workflow: 'infra/db-migrate', runId: '12', job: 'Migrate', actor: 'dave',
      ref: 'origin/main', sha: 'd'.repeat(40), runner: 'linux-7', url: 'https://jenkins.example.com/job/infra/job/db-migrate/12/', source: ENVIRONMENT,
    },
  },
  {
    name: 'runguard (provider defaults to runguard)',
    env: {
      RUNGUARD_JOB_REPOSITORY: 'infra/db', RUNGUARD_JOB_WORKFLOW: 'nightly', RUNGUARD_JOB_RUN_ID: 'r-9', RUNGUARD_JOB_RUN_ATTEMPT: '3',
      RUNGUARD_JOB_JOB: 'vacuum', RUNGUARD_JOB_ACTOR: 'cron', RUNGUARD_JOB_REF: 'main', RUNGUARD_JOB_SHA: 'e'.repeat(40),
      RUNGUARD_JOB_RUNNER: 'host-1', RUNGUARD_JOB_URL: 'https://ci.internal/r-9',
    },
    job: {
      provider: 'runguard', repository: 'infra/db', workflow: 'nightly', runId: 'r-9', runAttempt: '3', job: 'vacuum', actor: 'cron',
      ref: 'main', sha: 'e'.repeat(40), runner: 'host-1', url: 'https://ci.internal/r-9', source: ENVIRONMENT,
    },
  },
  {
    name: 'runguard wins over gitlab when RUNGUARD_JOB_RUN_ID is set',
    env: { GITLAB_CI: 'true', CI_PROJECT_PATH: 'g/a', RUNGUARD_JOB_RUN_ID: 'x-1' },
    job: { provider: 'runguard', runId: 'x-1', source: ENVIRONMENT },
  },
];

for (const c of PROVIDER_CASES) {
  test(`jobFromEnv: ${c.name}`, () => {
    assert.deepEqual(jobFromEnv(c.env), c.job);
  });
}

test('jobFromEnv: every provider in the table has a case above', () => {
  const covered = new Set(PROVIDER_CASES.map((c) => jobFromEnv(c.env)?.provider));
  for (const p of PROVIDERS) assert.ok(covered.has(p.provider), p.provider);
});

test('jobFromEnv: no CI system, or only half a claim, is no job', () => {
  assert.equal(jobFromEnv({}), undefined);
  assert.equal(jobFromEnv({ PATH: '/usr/bin', HOME: '/root' }), undefined);
  assert.equal(jobFromEnv({ GITHUB_ACTIONS: 'false', GITHUB_REPOSITORY: 'a/b' }), undefined);
  assert.equal(jobFromEnv({ RUNGUARD_JOB_ACTOR: 'x' }), undefined, 'RUNGUARD_JOB_* needs REPOSITORY or RUN_ID');
  assert.equal(jobFromEnv({ GITLAB_CI: '' }), undefined);
});

// --- parsers on text the kernel can produce but these tests cannot easily provoke ---------------

test('parsers: cgroup2 mount (hybrid, escaped), container ids, environ', () => {
  const hybrid = 'cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n';
  assert.equal(parseCgroup2Mount(hybrid), '/sys/fs/cgroup/unified');
  assert.equal(parseCgroup2Mount('cgroup2 /mnt/cg\\040v2 cgroup2 rw 0 0\n'), '/mnt/cg v2');
  assert.equal(parseCgroup2Mount('proc /proc proc rw 0 0\n'), undefined);

  const id = '0123456789abcdef'.repeat(4);
  for (const p of [
    `/system.slice/docker-${id}.scope`,
    `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1_2.slice/cri-containerd-${id}.scope`,
    `/machine.slice/libpod-${id}.scope/container`,
    `/docker/${id}`,
    `/kubepods/besteffort/pod0a-1b/${id}`,
    `/system.slice/crio-${id}.scope`,
  ]) assert.equal(containerIdFromCgroup(p), id, p);
  assert.equal(containerIdFromCgroup('/user.slice/user-0.slice/session-1.scope'), '');
  assert.equal(containerIdFromCgroup(`/x/${id}0`), '', '65 hex digits are not an id');

  assert.deepEqual(parseEnviron('A=1\0B=x=y\0EMPTY=\0\0'), { A: '1', B: 'x=y', EMPTY: '' });
  assert.equal(parseStat('123 (a) b) S 7 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 4242 0')?.startTime, '4242');
});
