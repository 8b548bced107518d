// Transparent capture, end to end with real parts: the committed BPF objects attached to real
// cgroups, the real `runguard agent` and `runguard run`, a real client (python's socket module)
// and real servers on 127.0.0.2 and ::1.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { AgentFixture, ROOT, RUNGUARD, runProcess, type ProcResult } from '../helpers/agent.js';
import { waitFor } from '../helpers/wait.js';
import { cgroupPath } from '../../agent/cgroup.js';
import { echoServer, type EchoServer } from '../helpers/servers.js';
import { bpfUnavailableReason } from '../helpers/env.js';

const CLIENT = path.join(ROOT, 'test/fixtures/tcp-client.py');
// The interpreter itself, not a version-manager shim, so the exec tree is the client's own.
const PYTHON = spawnSync('python3', ['-c', 'import sys; print(sys.executable)'], { encoding: 'utf8' }).stdout.trim();

const GITHUB_ENV = {
  GITHUB_ACTIONS: 'true', GITHUB_REPOSITORY: 'acme/payments', GITHUB_WORKFLOW: 'deploy', GITHUB_RUN_ID: '9001',
  GITHUB_RUN_ATTEMPT: '2', GITHUB_JOB: 'migrate', GITHUB_ACTOR: 'alice', GITHUB_REF: 'refs/heads/main',
  GITHUB_SHA: '3f2c1e0d9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e', RUNNER_NAME: 'runner-7', GITHUB_SERVER_URL: 'https://github.example',
};

interface ClientResult { peer?: [string, number]; sock?: [string, number]; echo?: string; pid: number; error?: number; msg?: string }

function parseClient(r: ProcResult): ClientResult {
  const out = String(r.stdout).trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(out) as ClientResult;
  } catch {
    throw new Error(`client printed no result (status ${r.status}):\n${r.stdout}\n${r.stderr}`);
  }
}

const skip = process.env.RUNGUARD_REQUIRE_BPF === '1' ? false : bpfUnavailableReason();

describe('transparent capture through the eBPF redirect', { skip }, () => {
  let v4: EchoServer;
  let v6: EchoServer;
  let agent: AgentFixture;
  const runJob = async (args: string[], env: Record<string, string> = GITHUB_ENV) => parseClient(await agent.run([PYTHON, CLIENT, ...args], env));

  before(async () => {
    const why = bpfUnavailableReason();
    if (why) throw new Error(`eBPF required (RUNGUARD_REQUIRE_BPF=1) but unavailable: ${why}`);
    v4 = await echoServer('127.0.0.2');
    v6 = await echoServer('::1');
    agent = new AgentFixture({ intercept: ['127.0.0.2/32', `[::1]/128:${v6.port}`] });
    await agent.start();
  });

  after(async () => {
    await agent?.cleanup();
    await v4?.close();
    await v6?.close();
  });

  test('a watched job reaches 127.0.0.2 through the proxy and its getpeername shows 127.0.0.2', async () => {
    const r = await runJob(['127.0.0.2', String(v4.port)]);
    assert.deepEqual(r.peer, ['127.0.0.2', v4.port]);
    assert.equal(r.echo, 'ping');
    // The upstream saw the proxy's socket, not the job's: the connection really was redirected.
    const seen = v4.peers.at(-1)!;
    assert.notEqual(seen.port, r.sock![1], 'upstream saw the job socket itself: not redirected');
  });

  test('connection events carry the job identity, the process and the byte counts', async () => {
    const r = await runJob(['127.0.0.2', String(v4.port), 'inet', 'hello-runguard']);
    const events = (await agent.events());
    const open = events.find((e) => e.kind === 'EVENT_KIND_CONNECTION_OPEN' && e.process?.pid === r.pid);
    assert.ok(open, `no CONNECTION_OPEN for pid ${r.pid}`);
    assert.deepEqual(open.destination, { address: '127.0.0.2', port: v4.port });
    assert.equal(open.source.port, r.sock![1]);
    assert.equal(open.connectionOpen.protocol, 'tcp');
    assert.equal(open.connectionOpen.ipFamily, 4);
    assert.match(open.process.exe, /python/);
    assert.ok(open.process.argv.includes(CLIENT), `argv ${open.process.argv}`);
    assert.match(open.process.cgroup, new RegExp(`${agent.jobCgroup}/job-`));
    assert.equal(open.process.user, 'root');
    assert.deepEqual(
      { ...open.job, sourcePid: undefined },
      {
        provider: 'github', repository: 'acme/payments', workflow: 'deploy', runId: '9001', runAttempt: '2', job: 'migrate',
        actor: 'alice', ref: 'refs/heads/main', sha: GITHUB_ENV.GITHUB_SHA, runner: 'runner-7',
        url: 'https://github.example/acme/payments/actions/runs/9001', source: 'IDENTITY_SOURCE_ENVIRONMENT', sourcePid: undefined,
      },
    );
    assert.equal(open.agentId, 'test-agent');
    const close = events.find((e) => e.kind === 'EVENT_KIND_CONNECTION_CLOSE' && e.sessionId === open.sessionId);
    assert.ok(close, 'no CONNECTION_CLOSE for the session');
    assert.equal(close.connectionClose.bytesUp, String('hello-runguard'.length));
    assert.equal(close.connectionClose.bytesDown, String('hello-runguard'.length));
    assert.equal(close.connectionClose.reason, 'client_closed');
    assert.ok(Number(close.seq) > Number(open.seq));
  });

  test('`runguard events --json` prints exactly the spooled events, one JSON object per line', async () => {
    const viaCli = agent.eventsViaCli();
    const inProcess = await agent.events();
    assert.ok(viaCli.length > 0);
    assert.deepEqual(viaCli, inProcess.slice(0, viaCli.length));
    for (const e of viaCli) assert.match(e.kind, /^EVENT_KIND_/);
  });

  test('exec events give the job its process tree', async () => {
    const shell = await agent.run(['/bin/sh', '-c', `"${PYTHON}" "${CLIENT}" 127.0.0.2 ${v4.port}; echo shell=$$`], GITHUB_ENV);
    const r = parseClient({ ...shell, stdout: String(shell.stdout).split('\n').filter((l) => l.startsWith('{')).join('\n') });
    const shellPid = Number(/shell=(\d+)/.exec(String(shell.stdout))?.[1]);
    const events = (await agent.events());
    const execs = events.filter((e) => e.kind === 'EVENT_KIND_PROCESS_EXEC');
    const client = execs.find((e) => e.process.pid === r.pid && e.exec.filename === PYTHON);
    assert.ok(client, `no exec event for the client pid ${r.pid}`);
    assert.equal(client.process.ppid, shellPid, 'the client was started by the job shell');
    assert.deepEqual(client.process.argv, [PYTHON, CLIENT, '127.0.0.2', String(v4.port)]);
    const sh = execs.find((e) => e.process.pid === shellPid);
    assert.ok(sh, 'no exec event for the job shell');
    assert.equal(client.sessionId, sh.sessionId, 'both run in the same job scope');
    for (const e of events.filter((x) => x.sessionId === sh.sessionId)) {
      assert.equal(e.job?.repository, 'acme/payments', `event ${e.seq} (${e.kind} pid ${e.process?.pid}) lost the job identity`);
    }
    // Exit events reach the spool through the exec ring buffer, drained every 20 ms: the last one
    // may land just after `runguard run` returns, so wait for it (bounded) rather than assume it.
    const exit = await agent.waitForEvent(`exit event for the client pid ${r.pid}`, (e) => e.kind === 'EVENT_KIND_PROCESS_EXIT' && e.process.pid === r.pid);
    const open = events.find((e) => e.kind === 'EVENT_KIND_CONNECTION_OPEN' && e.process?.pid === r.pid);
    assert.ok(open && Number(exit.seq) > Number(open.seq));
  });

  test('an unwatched process is not redirected', async () => {
    const before = (await agent.events()).length;
    const r = parseClient(await runProcess(PYTHON, [CLIENT, '127.0.0.2', String(v4.port)]));
    assert.deepEqual(r.peer, ['127.0.0.2', v4.port]);
    assert.equal(v4.peers.at(-1)!.port, r.sock![1], 'upstream should see the client socket itself');
    const after = (await agent.events()).slice(before);
    assert.equal(after.filter((e) => e.process?.pid === r.pid).length, 0);
  });

  test('IPv6: a job connecting to ::1 is redirected and sees ::1 as its peer', async () => {
    const r = await runJob(['::1', String(v6.port), 'inet6']);
    assert.deepEqual(r.peer, ['::1', v6.port]);
    assert.equal(r.echo, 'ping');
    assert.notEqual(v6.peers.at(-1)!.port, r.sock![1]);
    const open = (await agent.events()).find((e) => e.kind === 'EVENT_KIND_CONNECTION_OPEN' && e.process?.pid === r.pid);
    assert.deepEqual(open?.destination, { address: '::1', port: v6.port });
    assert.equal(open?.connectionOpen.ipFamily, 6);
  });

  test('IPv4-mapped: an AF_INET6 socket dialling ::ffff:127.0.0.2 is redirected like IPv4', async () => {
    const r = await runJob(['::ffff:127.0.0.2', String(v4.port), 'inet6']);
    assert.deepEqual(r.peer, ['::ffff:127.0.0.2', v4.port]);
    assert.equal(r.echo, 'ping');
    const open = (await agent.events()).find((e) => e.kind === 'EVENT_KIND_CONNECTION_OPEN' && e.process?.pid === r.pid);
    assert.deepEqual(open?.destination, { address: '127.0.0.2', port: v4.port });
    assert.equal(open?.connectionOpen.ipFamily, 6);
  });

  test('a connection dialled straight at the proxy is refused and recorded', async () => {
    const err = await new Promise<Error | undefined>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port: agent.proxyPort });
      s.on('error', (e) => resolve(e));
      s.on('close', () => resolve(undefined));
      s.on('data', () => resolve(new Error('proxy relayed data for an unredirected connection')));
    });
    assert.ok(!err || /ECONNRESET|EPIPE/.test(err.message), err?.message);
    await new Promise((r) => setTimeout(r, 100));
    const refused = (await agent.events()).filter((e) => e.kind === 'EVENT_KIND_CONNECTION_REFUSED');
    assert.ok(refused.some((e) => e.connectionRefused.reason === 'no_redirect_record'));
  });

  test('an argv longer than the kernel-side bound is flagged as truncated, never silently cut', async () => {
    const long = 'x'.repeat(3000);
    const r = await agent.run(['/bin/true', 'marker-arg', long]);
    assert.equal(r.status, 0);
    const exec = await agent.waitForEvent('exec event for /bin/true marker-arg', (e) => e.kind === 'EVENT_KIND_PROCESS_EXEC' && e.process.argv?.[1] === 'marker-arg');
    assert.equal(exec.process.argvTruncated, true);
    assert.ok(exec.process.argv.join('\0').length <= 2048, 'no more than the 2 KiB bound');
    const short = await agent.run(['/bin/true', 'short-marker']);
    assert.equal(short.status, 0);
    const shortExec = await agent.waitForEvent('exec event for /bin/true short-marker', (e) => e.kind === 'EVENT_KIND_PROCESS_EXEC' && e.process.argv?.[1] === 'short-marker');
    assert.equal(shortExec.process.argvTruncated, undefined, 'a complete argv is not flagged');
  });

  test('the agent down refuses watched connections at once (fail-closed); a restarted agent resumes', async () => {
    assert.equal(await agent.stop('SIGTERM'), 0);
    const down = await runJob(['127.0.0.2', String(v4.port)]);
    assert.equal(down.error, 1, `expected EPERM with the agent stopped, got ${JSON.stringify(down)}`);

    agent = await new AgentFixture({ intercept: agent.opts.intercept, reuse: agent }).start();
    assert.match(agent.log, /agent running \(reused BPF hooks\)/);
    assert.deepEqual((await runJob(['127.0.0.2', String(v4.port)])).peer, ['127.0.0.2', v4.port]);

    // A crashed agent leaves the hooks in place: the proxy port is closed, so the connect is refused.
    await agent.stop('SIGKILL');
    const crashed = await runJob(['127.0.0.2', String(v4.port)]);
    assert.equal(crashed.error, 111, `expected ECONNREFUSED after kill -9, got ${JSON.stringify(crashed)}`);

    agent = await new AgentFixture({ intercept: agent.opts.intercept, reuse: agent }).start();
    const resumed = await runJob(['127.0.0.2', String(v4.port)]);
    assert.deepEqual(resumed.peer, ['127.0.0.2', v4.port]);
    const events = (await agent.events());
    const seqs = events.map((e) => Number(e.seq));
    assert.deepEqual(seqs, seqs.map((_, i) => i + 1), 'sequence numbers are gap-free across restarts');
    assert.ok(events.some((e) => e.kind === 'EVENT_KIND_AGENT_STOP' && /SIGTERM/.test(e.agent.reason)));
    assert.ok(events.some((e) => e.kind === 'EVENT_KIND_CONNECTION_OPEN' && e.process?.pid === resumed.pid));
  });
});

describe('fail-open', { skip }, () => {
  test('with failOpen the stopped agent detaches its hooks and jobs connect directly', async () => {
    const server = await echoServer('127.0.0.2');
    const agent = await new AgentFixture({ intercept: ['127.0.0.2/32'], extraArgs: ['--fail-open'] }).start();
    try {
      const through = parseClient(await agent.run([PYTHON, CLIENT, '127.0.0.2', String(server.port)]));
      assert.notEqual(server.peers.at(-1)!.port, through.sock![1]);
      assert.equal(await agent.stop(), 0);
      assert.equal(existsSync(agent.pinDir), false, 'fail-open shutdown unpins everything');
      const direct = parseClient(await agent.run([PYTHON, CLIENT, '127.0.0.2', String(server.port)]));
      assert.deepEqual(direct.peer, ['127.0.0.2', server.port]);
      assert.equal(server.peers.at(-1)!.port, direct.sock![1], 'went straight to the server');
    } finally {
      await agent.cleanup();
      await server.close();
    }
  });
});

describe('cleanup', { skip }, () => {
  test('agent --cleanup removes the cgroups of jobs whose `runguard run` was killed, and keeps those still running', async () => {
    const agent = await new AgentFixture({ intercept: ['127.0.0.2/32'] }).start();
    const jobs = cgroupPath(agent.jobCgroup);
    const started: ChildProcess[] = [];
    try {
      // Two jobs; `runguard run` and the job share a process group, as under a runner that kills
      // the whole group on a timeout: nothing is left to remove the job's cgroup.
      for (let i = 0; i < 2; i++) {
        started.push(spawn(RUNGUARD, ['run', '--state-dir', agent.stateDir, '--', 'sleep', '600'], { stdio: 'ignore', detached: true }));
      }
      const jobDirs = () => readdirSync(jobs).filter((n) => n.startsWith('job-'));
      const procs = (job: string) => readFileSync(path.join(jobs, job, 'cgroup.procs'), 'utf8').trim();
      await waitFor('two job cgroups with a process in each', async () => jobDirs().length === 2 && jobDirs().every((d) => procs(d) !== ''), 10_000, 50);
      const [killed, running] = started as [ChildProcess, ChildProcess];
      process.kill(-killed.pid!, 'SIGKILL');
      await waitFor('the killed job cgroup empty and left behind', async () => jobDirs().filter((d) => procs(d) === '').length === 1, 10_000, 50);
      assert.equal(await agent.stop(), 0);

      // A job cgroup with cgroups of its own (a job may make some) is not the agent's to take apart.
      const nested = path.join(jobs, 'job-nested');
      mkdirSync(path.join(nested, 'inner'), { recursive: true });
      const cleanup = () => spawnSync(RUNGUARD, ['agent', '--cleanup', '--state-dir', agent.stateDir, '--pin-dir', agent.pinDir, '--job-cgroup', agent.jobCgroup], { encoding: 'utf8' });
      const busy = cleanup();
      assert.equal(busy.status, 0, busy.stderr);
      assert.match(busy.stdout, /still has jobs in it; left in place/);
      const left = jobDirs().filter((d) => d !== 'job-nested');
      assert.equal(left.length, 1, 'the empty job cgroup is gone, the running one stays');
      assert.notEqual(procs(left[0]!), '');
      assert.ok(existsSync(path.join(nested, 'inner')), 'a job cgroup with cgroups below it stays');
      rmdirSync(path.join(nested, 'inner'));

      process.kill(-running.pid!, 'SIGKILL');
      await waitFor('the second job cgroup empty', async () => jobDirs().every((d) => procs(d) === ''), 10_000, 50);
      const done = cleanup();
      assert.equal(done.status, 0, done.stderr);
      assert.match(done.stdout, /removed cgroup/);
      assert.equal(existsSync(jobs), false);
    } finally {
      for (const c of started) {
        try {
          process.kill(-c.pid!, 'SIGKILL');
        } catch { /* already gone */ }
      }
      await agent.cleanup();
    }
  });
});
