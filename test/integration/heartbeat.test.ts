// Agent heartbeats with real processes: a real collector and the real agent (real eBPF) report the
// agent's version, hook state, proxy port, spool backlog and witness state to GET /agents; a
// backlog built while the collector was down is reported exactly the moment it is back; a client
// certificate of another agent cannot report for this one; a stopping agent says how it left.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, rmSync, mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { AgentFixture, ROOT, RUNGUARD, runProcess } from '../helpers/agent.js';
import { bpfUnavailableReason } from '../helpers/env.js';
import { CollectorProcess, freePort, initPki, saveArtifact, shipperState, spoolSeqs, stopProcess, waitFor, type Pki } from '../helpers/collector.js';
import { readSpoolDir } from '../../agent/events/read-spool-dir.js';
import { HEADER_BYTES } from '../../agent/events/record-format.js';
import { CGROUP_PROGRAMS } from '../../agent/bpf/runtime.js';
import { tlsClientCredentials } from '../../collector/pki/identity.js';
import { IngestService, type AgentStatusMsg, type HeartbeatAck } from '../../proto/services.js';

const AGENT_ID = 'test-agent'; // AgentFixture runs the agent under this id
const VERSION = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version as string;
const skip = process.env.RUNGUARD_REQUIRE_BPF === '1' ? false : bpfUnavailableReason();

type Status = AgentStatusMsg & { receivedMs: number; received: string };

describe('agent heartbeats', { skip }, () => {
  let root: string;
  let pki: Pki;
  let collector: CollectorProcess;
  let agent: AgentFixture;

  const statusOf = async (): Promise<Status | null> => {
    const agents = JSON.parse(await collector.get('/agents')) as { agentId: string; status: Status | null }[];
    return agents.find((a) => a.agentId === AGENT_ID)?.status ?? null;
  };
  /** Every status the collector received since its log was `from` long, in order, from its debug log. */
  const received = (from = 0): AgentStatusMsg[] => collector.log.slice(from).split('\n').filter((l) => l.includes('"msg":"agent status"'))
    .map((l) => JSON.parse(l) as { agent: string; status: AgentStatusMsg }).filter((l) => l.agent === AGENT_ID).map((l) => l.status);

  before(async () => {
    const why = bpfUnavailableReason();
    if (why) throw new Error(`eBPF required (RUNGUARD_REQUIRE_BPF=1) but unavailable: ${why}`);
    root = mkdtempSync(path.join(os.tmpdir(), 'rg-heartbeat-'));
    pki = await initPki(root, AGENT_ID);
    const grpcPort = await freePort();
    let httpPort: number;
    do httpPort = await freePort(); while (httpPort === grpcPort);
    collector = await new CollectorProcess({ dataDir: path.join(root, 'data'), tlsDir: pki.caDir, grpcPort, httpPort }).start();
    agent = await new AgentFixture({
      intercept: ['127.0.0.2/32'],
      extraArgs: ['--collector', collector.target, '--tls', pki.agentDir, '--heartbeat-interval-ms', '1000'],
    }).start();
  });

  after(async () => {
    saveArtifact('heartbeat-agent.log', agent?.log);
    saveArtifact('heartbeat-collector.log', collector?.log);
    await collector?.kill9();
    await stopProcess(agent?.proc, 'SIGKILL', 5000);
    await agent?.cleanup();
    if (root) rmSync(root, { recursive: true, force: true });
  });

  test('the collector shows the agent\'s version, hooks, proxy, spool, shipper and witness state', async () => {
    // The witness checks every 3 s once something is acknowledged: wait for a status after one.
    let latest: Status | null = null;
    const s = await waitFor(() => `a status with a witness check (latest: ${JSON.stringify(latest)})`, async () => {
      latest = await statusOf();
      return latest && latest.witness!.checks > 0 ? latest : undefined;
    }, 20_000, 200);
    assert.equal(s.version, VERSION);
    assert.ok(Date.now() - s.receivedMs < 10_000 && s.received === new Date(s.receivedMs).toISOString());
    assert.ok(s.uptimeMs > 0 && s.startedMs <= s.sentMs);
    assert.equal(s.stopping, false);
    assert.equal(s.bpf!.state, 'attached');
    assert.equal(s.bpf!.watchedCgroups, 1);
    assert.equal(s.bpf!.links, CGROUP_PROGRAMS.length + 2, 'the five cgroup hooks on the job cgroup, exec and exit');
    assert.deepEqual(s.bpf!.programs, [...CGROUP_PROGRAMS, 'rg_exec', 'rg_exit']);
    assert.equal(s.bpf!.failOpen, false);
    assert.equal(s.proxy!.port, agent.proxyPort);
    assert.equal(s.spool!.maxBytes, 1 << 30);
    assert.equal(s.spool!.state, 'ok');
    assert.equal(s.spool!.refusing, false);
    assert.ok(s.spool!.ackedSeq >= 1 && s.spool!.lastSeq >= s.spool!.ackedSeq);
    assert.equal(s.spool!.backlogEvents, s.spool!.lastSeq - s.spool!.ackedSeq);
    assert.equal(s.shipper!.connected, true);
    assert.ok(s.shipper!.lastAckMs > 0);
    assert.ok(s.witness!.checkpointSize >= 1);
    assert.equal(s.witness!.lastCheckOk, true);
    assert.equal(s.witness!.failures, 0);
  });

  test('a backlog built while the collector was down is reported exactly once it is back', async () => {
    await collector.stop('SIGTERM', 5000);
    const job = await agent.run(['/bin/sh', '-c', 'for i in $(seq 20); do /bin/true; done']);
    assert.equal(job.status, 0, job.stderr);
    // Wait until the exec events are all spooled and nothing more comes.
    let last = -1;
    await waitFor('the spool to settle', async () => {
      const now = Math.max(...(await spoolSeqs(agent.stateDir)));
      const stable = now === last;
      last = now;
      return stable;
    }, 10_000, 300);
    const acked = shipperState(agent.stateDir).ackedSeq;
    assert.ok(last - acked >= 40, `the job's exec and exit events wait in the spool (${last - acked})`);
    let bytes = 0;
    for await (const rec of readSpoolDir(path.join(agent.stateDir, 'spool'), acked + 1)) bytes += HEADER_BYTES + rec.bytes.length;
    const downFor = Date.now();

    const mark = collector.log.length;
    await collector.start();
    const first = await waitFor('a status from the agent after the restart', () => received(mark)[0], 20_000, 50);
    assert.equal(first.spool!.lastSeq, last);
    assert.equal(first.spool!.ackedSeq, acked);
    assert.equal(first.spool!.backlogEvents, last - acked);
    // Acks may already be deleting segments while the agent measures: never more than the truth.
    assert.ok(first.spool!.backlogBytes > 0 && first.spool!.backlogBytes <= bytes, `backlog bytes ${first.spool!.backlogBytes} of ${bytes}`);
    assert.ok(first.spool!.oldestUnackedAgeMs >= first.sentMs - downFor, `oldest unacked age ${first.spool!.oldestUnackedAgeMs} ms`);
    // And it drains: a later status shows nothing left.
    await waitFor('a status with the backlog delivered', async () => (await statusOf())?.spool!.backlogEvents === 0, 20_000, 200);
    assert.equal((await statusOf())!.spool!.backlogBytes, 0);
  });

  test('a client certificate of another agent cannot report this agent\'s status', async () => {
    const otherDir = path.join(root, 'agent-other');
    const enroll = await runProcess(RUNGUARD, ['enroll', '--ca', pki.caDir, '--agent-id', 'other-agent', '--out', otherDir]);
    assert.equal(enroll.status, 0, enroll.stderr);
    const Ingest = grpc.makeGenericClientConstructor(IngestService, 'Ingest');
    const client = new Ingest(collector.target, tlsClientCredentials(otherDir));
    const send = (status: AgentStatusMsg) => new Promise<HeartbeatAck>((resolve, reject) => {
      client.makeUnaryRequest(IngestService.heartbeat.path, IngestService.heartbeat.requestSerialize, IngestService.heartbeat.responseDeserialize,
        status, { deadline: Date.now() + 10_000 }, (err, res) => (err ? reject(err) : resolve(res!)));
    });
    try {
      const real = (await statusOf())!;
      const forged = { ...real, agentId: AGENT_ID, version: 'forged', sentMs: Date.now() } as AgentStatusMsg;
      await assert.rejects(send(forged), (err: grpc.ServiceError) => {
        assert.equal(err.code, grpc.status.PERMISSION_DENIED);
        assert.match(err.details, /certificate is for agent "other-agent"; it cannot report the status of agent "test-agent"/);
        return true;
      });
      // Its own status is accepted (and kept under its own id, not shown until it ships events).
      const ack = await send({ ...forged, agentId: 'other-agent' });
      assert.ok(ack.receivedMs > 0);
      const agents = JSON.parse(await collector.get('/agents')) as { agentId: string; status: Status | null }[];
      assert.notEqual(agents.find((a) => a.agentId === AGENT_ID)!.status!.version, 'forged');
      assert.equal(agents.some((a) => a.agentId === 'other-agent'), false);
    } finally {
      client.close();
    }
  });

  test('a stopping agent sends a last status saying how it left the hooks', async () => {
    const code = await agent.stop('SIGTERM');
    assert.equal(code, 0, agent.log.slice(-2000));
    const s = (await statusOf())!;
    assert.equal(s.stopping, true);
    assert.equal(s.bpf!.state, 'pinned-fail-closed');
    assert.deepEqual(s.bpf!.programs, [...CGROUP_PROGRAMS]);
    assert.equal(s.spool!.backlogEvents, 0, 'the agent\'s stop event was delivered before it said goodbye');
  });
});
