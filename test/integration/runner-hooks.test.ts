// The CI runner hooks end to end, with real parts: the real agent (real BPF on real cgroups), the
// real `runguard hook job-started|job-completed`, a simulated runner worker (a long-lived shell that
// starts a job step when told to), a real client and a real server on 127.0.0.2.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AgentFixture, ROOT, RUNGUARD, runProcess, type ProcResult } from '../helpers/agent.js';
import { echoServer, type EchoServer } from '../helpers/servers.js';
import { bpfUnavailableReason } from '../helpers/env.js';
import { cgroup2Root, cgroupIdOf, parseCgroupFile } from '../../agent/cgroup.js';

const CLIENT = path.join(ROOT, 'test/fixtures/tcp-client.py');
const PYTHON = spawnSync('python3', ['-c', 'import sys; print(sys.executable)'], { encoding: 'utf8' }).stdout.trim();

/** What the runner gives the hook: the job's identity. */
const HOOK_ENV = {
  GITHUB_ACTIONS: 'true', GITHUB_REPOSITORY: 'acme/payments', GITHUB_WORKFLOW: 'deploy', GITHUB_RUN_ID: '9001',
  GITHUB_RUN_ATTEMPT: '2', GITHUB_JOB: 'migrate', GITHUB_ACTOR: 'alice', GITHUB_REF: 'refs/heads/main',
  GITHUB_SHA: '3f2c1e0d9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e', RUNNER_NAME: 'runner-7', GITHUB_SERVER_URL: 'https://github.example',
};

/** What a step claims about itself: another repository and run. The label must win, unmixed. */
const STEP_ENV = 'GITHUB_ACTIONS=true GITHUB_REPOSITORY=mallory/elsewhere GITHUB_RUN_ID=666 GITHUB_JOB=exfiltrate GITHUB_ACTOR=mallory';

const EXPECTED_JOB = {
  provider: 'github', repository: 'acme/payments', workflow: 'deploy', runId: '9001', runAttempt: '2', job: 'migrate',
  actor: 'alice', ref: 'refs/heads/main', sha: HOOK_ENV.GITHUB_SHA, runner: 'runner-7',
  url: 'https://github.example/acme/payments/actions/runs/9001', source: 'IDENTITY_SOURCE_RUNNER_HOOK',
};

/**
 * A stand-in for Runner.Worker: waits for "go", runs one step (the client, with its own job
 * environment), then waits for "done" before exiting, as the worker outlives the job-completed hook.
 */
const WORKER = `
while [ ! -e "$1/go" ]; do sleep 0.02; done
env ${STEP_ENV} "$2" "$3" 127.0.0.2 "$4" > "$1/step.out" 2> "$1/step.err"
: > "$1/step.done"
while [ ! -e "$1/done" ]; do sleep 0.02; done
`;

function cgroupOf(pid: number): string {
  return parseCgroupFile(readFileSync(`/proc/${pid}/cgroup`, 'utf8'));
}

async function waitFor(what: string, check: () => boolean, ms = 15_000): Promise<void> {
  const until = Date.now() + ms;
  while (!check()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

function hook(agent: AgentFixture | { stateDir: string }, event: 'job-started' | 'job-completed', env: Record<string, string>): Promise<ProcResult> {
  return runProcess(RUNGUARD, ['hook', event, '--state-dir', agent.stateDir], env);
}

interface ClientResult { peer?: [string, number]; sock?: [string, number]; echo?: string; pid: number; error?: number }

const skip = process.env.RUNGUARD_REQUIRE_BPF === '1' ? false : bpfUnavailableReason();

describe('runner hooks: each job in its own watched, labelled cgroup', { skip }, () => {
  let server: EchoServer;
  let agent: AgentFixture;
  const started: ChildProcess[] = [];
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'rg-hooks-'));

  before(async () => {
    const why = bpfUnavailableReason();
    if (why) throw new Error(`eBPF required (RUNGUARD_REQUIRE_BPF=1) but unavailable: ${why}`);
    server = await echoServer('127.0.0.2');
    agent = await new AgentFixture({ intercept: ['127.0.0.2/32'] }).start();
  });

  after(async () => {
    for (const p of started) if (p.exitCode === null && p.signalCode === null && p.pid) process.kill(p.pid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 100));
    // Anything a failed test left in the job parent: move it out, remove the job cgroups.
    const root = cgroup2Root();
    const parent = path.join(root, agent?.jobCgroup ?? 'none');
    if (existsSync(parent)) {
      for (const d of readdirNames(parent)) {
        for (const pid of readFileSync(path.join(parent, d, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean)) {
          try {
            writeFileSync(path.join(root, 'cgroup.procs'), pid);
          } catch {
            // exited meanwhile
          }
        }
        try {
          rmdirSync(path.join(parent, d));
        } catch {
          // still busy: the agent's cleanup reports it
        }
      }
    }
    await agent?.cleanup();
    await server?.close();
    rmSync(tmp, { recursive: true, force: true });
  });

  test('GitHub Actions: job-started moves the worker into a labelled job cgroup; its steps are redirected and attributed by the label; job-completed undoes it', async () => {
    const dir = mkdtempSync(path.join(tmp, 'gh-'));
    const worker = spawn('/bin/sh', ['-c', WORKER, 'worker', dir, PYTHON, CLIENT, String(server.port)], { stdio: 'ignore' });
    started.push(worker);
    const wpid = worker.pid!;
    const origin = cgroupOf(wpid);
    assert.ok(!origin.startsWith(`/${agent.jobCgroup}`), 'the worker starts outside any watched cgroup');

    const r = await hook(agent, 'job-started', { ...HOOK_ENV, RUNGUARD_HOOK_TARGET_PID: String(wpid) });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /github acme\/payments run 9001\/2 migrate: .* is watched in cgroup/);

    // The worker is in a fresh cgroup under the job parent, named after the run.
    const jobCg = cgroupOf(wpid);
    assert.match(jobCg, new RegExp(`^/${agent.jobCgroup}/github-9001-2-migrate-[0-9a-f]{8}$`));
    const id = cgroupIdOf(jobCg);
    const labelFile = path.join(agent.stateDir, 'jobs', `${id}.json`);
    assert.ok(existsSync(labelFile), `no label ${labelFile}`);
    assert.equal(statSync(labelFile).mode & 0o777, 0o644);
    assert.equal(statSync(path.dirname(labelFile)).mode & 0o777, 0o755);
    const label = JSON.parse(readFileSync(labelFile, 'utf8'));
    assert.equal(label.cgroupId, id);
    assert.equal(label.cgroup, jobCg);
    assert.equal(label.workerPid, wpid);
    assert.equal(label.workerFound, 'override');
    assert.equal(label.originCgroup, origin);
    assert.equal(label.job.repository, 'acme/payments');
    assert.equal(label.job.runId, '9001');

    // The step runs: redirected through the proxy, attributed to the label's job, not its own claim.
    writeFileSync(path.join(dir, 'go'), '');
    await waitFor('the step', () => existsSync(path.join(dir, 'step.done')));
    const out = readFileSync(path.join(dir, 'step.out'), 'utf8').trim();
    const client = JSON.parse(out || '{}') as ClientResult;
    assert.deepEqual(client.peer, ['127.0.0.2', server.port], `step: ${out} ${readFileSync(path.join(dir, 'step.err'), 'utf8')}`);
    assert.equal(client.echo, 'ping');
    assert.notEqual(server.peers.at(-1)!.port, client.sock![1], 'upstream saw the step socket itself: not redirected');

    const events = await agent.events();
    const open = events.find((e) => e.kind === 'EVENT_KIND_CONNECTION_OPEN' && e.process?.pid === client.pid);
    assert.ok(open, `no CONNECTION_OPEN for the step (pid ${client.pid})`);
    assert.equal(open.process.cgroup, jobCg);
    assert.deepEqual(open.job, EXPECTED_JOB, 'the label wins over the step\'s environment, and nothing of the step\'s claim is mixed in');
    const exec = events.find((e) => e.kind === 'EVENT_KIND_PROCESS_EXEC' && e.process?.pid === client.pid && e.exec.filename === PYTHON);
    assert.ok(exec, 'no exec event for the step');
    assert.deepEqual(exec.job, EXPECTED_JOB);

    // job-completed: the worker goes back, the label and the (now empty) cgroup go away.
    const c = await hook(agent, 'job-completed', { ...HOOK_ENV, RUNGUARD_HOOK_TARGET_PID: String(wpid) });
    assert.equal(c.status, 0, c.stderr);
    assert.equal(cgroupOf(wpid), origin, 'the worker is back in the cgroup it came from');
    assert.equal(existsSync(labelFile), false, 'the label is removed');
    assert.equal(existsSync(path.join(cgroup2Root(), jobCg)), false, `the job cgroup is removed: ${c.stderr}`);
    assert.match(c.stderr, /moved back to .*job cgroup .* and its label removed/);

    writeFileSync(path.join(dir, 'done'), '');
    await waitFor('the worker to exit', () => worker.exitCode !== null);
    assert.equal(worker.exitCode, 0);
  });

  test('GitLab shell executor: without a Runner.Worker the hook moves the job shell that ran it; CI_* variables label the job', async () => {
    const env = {
      GITLAB_CI: 'true', CI_PROJECT_PATH: 'group/infra', CI_PIPELINE_ID: '4242', CI_PIPELINE_SOURCE: 'push', CI_JOB_NAME: 'deploy',
      CI_JOB_ID: '777', GITLAB_USER_LOGIN: 'bob', CI_COMMIT_REF_NAME: 'main', CI_COMMIT_SHA: 'a'.repeat(40),
      CI_RUNNER_DESCRIPTION: 'shell-runner-1', CI_JOB_URL: 'https://gitlab.example/group/infra/-/jobs/777',
      RG: RUNGUARD, STATE: agent.stateDir, PY: PYTHON, CLIENT, PORT: String(server.port),
    };
    // pre_build_script, the job's script, post_build_script: one shell, as GitLab Runner runs them.
    const script = `
      "$RG" hook job-started --state-dir "$STATE" || exit 9
      echo "in=$(cat /proc/$$/cgroup | sed -n 's/^0:://p')"
      "$PY" "$CLIENT" 127.0.0.2 "$PORT"
      "$RG" hook job-completed --state-dir "$STATE"
      echo "out=$(cat /proc/$$/cgroup | sed -n 's/^0:://p')"
    `;
    const origin = cgroupOf(process.pid);
    const r = await runProcess('/bin/sh', ['-c', script], env);
    assert.equal(r.status, 0, r.stderr);
    const inCg = /in=(.*)/.exec(r.stdout)?.[1] ?? '';
    assert.match(inCg, new RegExp(`^/${agent.jobCgroup}/gitlab-4242-deploy-[0-9a-f]{8}$`), r.stderr);
    assert.equal(/out=(.*)/.exec(r.stdout)?.[1], origin, 'the shell went back where it came from');
    assert.match(r.stderr, /the hook's parent/);
    const client = JSON.parse(r.stdout.split('\n').find((l) => l.startsWith('{')) ?? '{}') as ClientResult;
    assert.notEqual(server.peers.at(-1)!.port, client.sock![1], 'the job script\'s connection was redirected');
    const open = (await agent.events()).find((e) => e.kind === 'EVENT_KIND_CONNECTION_OPEN' && e.process?.pid === client.pid);
    assert.deepEqual(open?.job, {
      provider: 'gitlab', repository: 'group/infra', workflow: 'push', runId: '4242', job: 'deploy', actor: 'bob', ref: 'main',
      sha: 'a'.repeat(40), runner: 'shell-runner-1', url: 'https://gitlab.example/group/infra/-/jobs/777', source: 'IDENTITY_SOURCE_RUNNER_HOOK',
    });
    assert.equal(existsSync(path.join(cgroup2Root(), inCg)), false, 'the job cgroup is removed');
    assert.equal(existsSync(path.join(agent.stateDir, 'jobs', `${cgroupIdOf(inCg) || 'x'}.json`)), false);
  });

  test('a process the job left behind keeps its cgroup and label until it exits; the next job-started cleans up', async () => {
    const dir = mkdtempSync(path.join(tmp, 'left-'));
    const worker = spawn('/bin/sh', ['-c', 'while [ ! -e "$1/done" ]; do sleep 0.02; done', 'worker', dir], { stdio: 'ignore' });
    started.push(worker);
    const wpid = worker.pid!;
    const s = await hook(agent, 'job-started', { ...HOOK_ENV, GITHUB_RUN_ID: '9002', RUNGUARD_HOOK_TARGET_PID: String(wpid) });
    assert.equal(s.status, 0, s.stderr);
    const jobCg = cgroupOf(wpid);
    const labelFile = path.join(agent.stateDir, 'jobs', `${cgroupIdOf(jobCg)}.json`);
    // A "step" daemonises: started in the job cgroup, outliving the job.
    const daemon = spawn('/bin/sh', ['-c', `echo $$ > "${path.join(cgroup2Root(), jobCg, 'cgroup.procs')}" && exec sleep 30`], { stdio: 'ignore' });
    started.push(daemon);
    await waitFor('the daemon to join the job cgroup', () => {
      try {
        return cgroupOf(daemon.pid!) === jobCg && readFileSync(`/proc/${daemon.pid}/comm`, 'utf8').trim() === 'sleep';
      } catch {
        return false;
      }
    });

    const c = await hook(agent, 'job-completed', { ...HOOK_ENV, RUNGUARD_HOOK_TARGET_PID: String(wpid) });
    assert.equal(c.status, 0, c.stderr);
    assert.match(c.stderr, new RegExp(`processes the job left behind keep .*\\(${daemon.pid} sleep\\)`));
    assert.notEqual(cgroupOf(wpid), jobCg, 'the worker itself went back');
    assert.ok(existsSync(labelFile), 'the label stays while the job\'s leftovers run');
    assert.ok(JSON.parse(readFileSync(labelFile, 'utf8')).completedAt);

    process.kill(daemon.pid!, 'SIGKILL');
    await waitFor('the daemon to exit', () => daemon.exitCode !== null || daemon.signalCode !== null);
    // The next job's job-started removes what the finished one left.
    const next = await hook(agent, 'job-started', { ...HOOK_ENV, GITHUB_RUN_ID: '9003', RUNGUARD_HOOK_TARGET_PID: String(wpid) });
    assert.equal(next.status, 0, next.stderr);
    assert.equal(existsSync(labelFile), false);
    assert.equal(existsSync(path.join(cgroup2Root(), jobCg)), false);
    const done = await hook(agent, 'job-completed', { RUNGUARD_HOOK_TARGET_PID: String(wpid) });
    assert.equal(done.status, 0, done.stderr);
    assert.match(done.stderr, /and its label removed/);
    writeFileSync(path.join(dir, 'done'), '');
    await waitFor('the worker to exit', () => worker.exitCode !== null);
  });

  test('without an override the hook finds the Runner.Worker above it, as the runner runs it (through a shell)', async () => {
    const dir = mkdtempSync(path.join(tmp, 'walk-'));
    // A program whose name (comm) is Runner.Worker: a copy of the shell.
    const fake = path.join(dir, 'Runner.Worker');
    writeFileSync(fake, readFileSync('/bin/sh'), { mode: 0o755 });
    const script = `
      /bin/sh -c 'exec "$RG" hook job-started --state-dir "$STATE"' 2> "$1/started.err"; echo $? > "$1/started.rc"
      while [ ! -e "$1/go" ]; do sleep 0.02; done
      "$PY" "$CLIENT" 127.0.0.2 "$PORT" > "$1/step.out"
      /bin/sh -c '"$RG" hook job-completed --state-dir "$STATE"; exit 0' 2> "$1/completed.err"; echo $? > "$1/completed.rc"
      while [ ! -e "$1/done" ]; do sleep 0.02; done
    `;
    const worker = spawn(fake, ['-c', script, 'Runner.Worker', dir], {
      stdio: 'ignore',
      env: { ...process.env, ...HOOK_ENV, RG: RUNGUARD, STATE: agent.stateDir, PY: PYTHON, CLIENT, PORT: String(server.port) },
    });
    started.push(worker);
    const wpid = worker.pid!;
    const origin = cgroupOf(wpid);
    // `echo $? > FILE` creates the file before it writes the status: wait for the status itself.
    const status = (name: string) => (existsSync(path.join(dir, name)) ? readFileSync(path.join(dir, name), 'utf8').trim() || undefined : undefined);
    await waitFor('job-started', () => status('started.rc') !== undefined);
    const err = () => readFileSync(path.join(dir, 'started.err'), 'utf8');
    assert.equal(status('started.rc'), '0', err());
    assert.match(err(), new RegExp(`Runner\\.Worker \\(pid ${wpid}, the runner worker\\) is watched`));
    const jobCg = cgroupOf(wpid);
    assert.match(jobCg, new RegExp(`^/${agent.jobCgroup}/github-9001-2-migrate-`));
    const label = JSON.parse(readFileSync(path.join(agent.stateDir, 'jobs', `${cgroupIdOf(jobCg)}.json`), 'utf8'));
    assert.equal(label.workerFound, 'runner-worker');
    assert.equal(label.workerComm, 'Runner.Worker');

    writeFileSync(path.join(dir, 'go'), '');
    await waitFor('job-completed', () => status('completed.rc') !== undefined);
    const client = JSON.parse(readFileSync(path.join(dir, 'step.out'), 'utf8')) as ClientResult;
    assert.notEqual(server.peers.at(-1)!.port, client.sock![1], 'the step was redirected');
    const open = (await agent.events()).find((e) => e.kind === 'EVENT_KIND_CONNECTION_OPEN' && e.process?.pid === client.pid);
    assert.equal(open?.job?.source, 'IDENTITY_SOURCE_RUNNER_HOOK');
    // job-completed ran inside the job cgroup (the worker started it there) and still emptied it.
    assert.match(readFileSync(path.join(dir, 'completed.err'), 'utf8'), /and its label removed/);
    assert.equal(cgroupOf(wpid), origin);
    assert.equal(existsSync(path.join(cgroup2Root(), jobCg)), false);
    writeFileSync(path.join(dir, 'done'), '');
    await waitFor('the worker to exit', () => worker.exitCode !== null);
  });

  test('a job cannot relabel itself: job-started called from inside a watched job is refused', async () => {
    const labelsBefore = existsSync(path.join(agent.stateDir, 'jobs')) ? readdirSync(path.join(agent.stateDir, 'jobs')) : [];
    const r = await agent.run(['/bin/sh', '-c', '"$0" hook job-started --state-dir "$1"; echo "rc=$?"; sed -n "s/^0:://p" /proc/$$/cgroup', RUNGUARD, agent.stateDir], {
      ...HOOK_ENV, GITHUB_REPOSITORY: 'victim/crown-jewels', RUNGUARD_HOOK_FAIL_OPEN: '1',
    });
    assert.match(r.stdout, /rc=1/);
    assert.match(r.stderr, /refused: called from inside a watched job/);
    assert.match(r.stdout, new RegExp(`^/${agent.jobCgroup}/job-`, 'm'), 'the job stayed in its own cgroup');
    const labelsAfter = existsSync(path.join(agent.stateDir, 'jobs')) ? readdirSync(path.join(agent.stateDir, 'jobs')) : [];
    assert.deepEqual(labelsAfter, labelsBefore, 'no label was written');
  });

  test('no agent state: job-started fails the job (fail-closed), or lets it run with RUNGUARD_HOOK_FAIL_OPEN=1; job-completed never fails', async () => {
    const empty = { stateDir: mkdtempSync(path.join(tmp, 'nostate-')) };
    const closed = await hook(empty, 'job-started', HOOK_ENV);
    assert.equal(closed.status, 1);
    assert.match(closed.stderr, /no runguard agent state in .*is the agent installed and started/);
    assert.match(closed.stderr, /the job is failed rather than run unwatched \(fail-closed\)/);
    const open = await hook(empty, 'job-started', { ...HOOK_ENV, RUNGUARD_HOOK_FAIL_OPEN: '1' });
    assert.equal(open.status, 0);
    assert.match(open.stderr, /fail-open \(--fail-open or RUNGUARD_HOOK_FAIL_OPEN=1\): the job runs UNWATCHED/);
    const flag = await runProcess(RUNGUARD, ['hook', 'job-started', '--state-dir', empty.stateDir, '--fail-open'], HOOK_ENV);
    assert.equal(flag.status, 0);
    const completed = await hook(empty, 'job-completed', HOOK_ENV);
    assert.equal(completed.status, 0, completed.stderr);
    const usage = await runProcess(RUNGUARD, ['hook', 'job-exploded']);
    assert.equal(usage.status, 2);
    assert.match(usage.stderr, /usage: runguard hook job-started\|job-completed/);
  });
});

function readdirNames(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name);
}
