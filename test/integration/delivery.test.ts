// Delivery from the agent's spool to the collector, with real processes: a collector killed with
// SIGKILL in the middle of ingest loses no event it acknowledged, and a collector that is down for
// a while loses nothing and doubles nothing once it is back; the agent keeps working meanwhile.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AgentFixture, ROOT, type ProcResult } from '../helpers/agent.js';
import { bpfUnavailableReason } from '../helpers/env.js';
import { echoServer, type EchoServer } from '../helpers/servers.js';
import { CollectorProcess, freePort, initPki, leafStats, saveArtifact, shipperState, sleep, spoolEvents, spoolSeqs, stopProcess, verifyJson, waitFor, type Pki } from '../helpers/collector.js';

const AGENT_ID = 'test-agent'; // AgentFixture runs the agent under this id
const CLIENT = path.join(ROOT, 'test/fixtures/tcp-client.py');
const PYTHON = spawnSync('python3', ['-c', 'import sys; print(sys.executable)'], { encoding: 'utf8' }).stdout.trim();
const skip = process.env.RUNGUARD_REQUIRE_BPF === '1' ? false : bpfUnavailableReason();

describe('delivery: an acknowledged event is never lost, a resent one never doubled', { skip }, () => {
  let root: string;
  let pki: Pki;
  let dataDir: string;
  let collector: CollectorProcess;
  let agent: AgentFixture;
  let echo: EchoServer;

  const seqs = () => spoolSeqs(agent.stateDir);

  /**
   * Waits until the agent has stopped producing events, all of them are acknowledged, stored and
   * covered by the published checkpoint; returns the agent's last seq.
   */
  async function settle(timeoutMs: number): Promise<number> {
    let last = -1;
    await waitFor(() => `delivery to settle (agent last seq ${last}, acked ${shipperState(agent.stateDir).ackedSeq}, stored ${leafStats(dataDir, AGENT_ID).n})`, async () => {
      const now = Math.max(0, ...(await seqs()));
      const stable = now === last;
      last = now;
      if (!stable || shipperState(agent.stateDir).ackedSeq !== last || leafStats(dataDir, AGENT_ID).size !== last) return false;
      return (await collector.checkpoint()).size === last;
    }, timeoutMs, 250);
    return last;
  }

  /** The store holds seq 1..last of the agent, each exactly once; verify agrees from disk and over HTTP. */
  async function assertComplete(last: number): Promise<void> {
    assert.deepEqual(leafStats(dataDir, AGENT_ID), { n: last, distinct: last, lo: 1, hi: last, size: last });
    const lines = (await collector.get(`/events?agent=${AGENT_ID}&limit=10000`)).split('\n').filter(Boolean).map((l) => JSON.parse(l));
    assert.deepEqual(lines.map((l) => Number(l.event.seq)), Array.from({ length: last }, (_, i) => i + 1), 'the read API serves seq 1..last once each, in order');
    const [disk, api] = await Promise.all([
      verifyJson(['--data-dir', dataDir, '--key', pki.pub]),
      verifyJson(['--collector', collector.url, '--key', pki.pub]),
    ]);
    for (const r of [disk, api]) {
      assert.deepEqual(r.report.problems, []);
      assert.equal(r.status, 0);
      assert.equal(r.report.leavesChecked, last);
    }
  }

  before(async () => {
    const why = bpfUnavailableReason();
    if (why) throw new Error(`eBPF required (RUNGUARD_REQUIRE_BPF=1) but unavailable: ${why}`);
    root = mkdtempSync(path.join(os.tmpdir(), 'rg-delivery-'));
    pki = await initPki(root, AGENT_ID);
    const grpcPort = await freePort();
    let httpPort: number;
    do httpPort = await freePort(); while (httpPort === grpcPort);
    dataDir = path.join(root, 'data');
    collector = await new CollectorProcess({ dataDir, tlsDir: pki.caDir, grpcPort, httpPort }).start();
    agent = await new AgentFixture({ intercept: ['127.0.0.2/32'], extraArgs: ['--collector', collector.target, '--tls', pki.agentDir] }).start();
    echo = await echoServer('127.0.0.2');
  });

  const logs = { agent: '', collector: '' };
  after(async () => {
    saveArtifact('delivery-agent.log', logs.agent + (agent?.log ?? ''));
    saveArtifact('delivery-collector.log', logs.collector + (collector?.log ?? ''));
    // Teardown only (SIGTERM handling is tested in log-integrity.test.ts): kill both by pid, unpin.
    await collector?.kill9();
    await stopProcess(agent?.proc, 'SIGKILL', 5000);
    await agent?.cleanup();
    await echo?.close();
    if (root) rmSync(root, { recursive: true, force: true });
  });

  test('(a) kill -9 of the collector during ingest loses no acknowledged event', async () => {
    // A job that execs /bin/true until told to stop: events keep coming before, during and after the kill.
    const stopFile = path.join(root, 'stop-a');
    let jobDone = false;
    const job = agent.run(['/bin/sh', '-c', 'i=0; while [ ! -e "$1" ] && [ $i -lt 3000 ]; do /bin/true; i=$((i+1)); done', 'sh', stopFile])
      .finally(() => (jobDone = true));
    try {
      await waitFor('the collector to acknowledge 100 events', () => shipperState(agent.stateDir).ackedSeq > 100, 15_000, 5);
      assert.equal(jobDone, false, 'the job is still producing events when the collector dies');
      await collector.kill9();
      await sleep(200); // an ack already on the wire when the collector died is still delivered
      const acked = shipperState(agent.stateDir).ackedSeq;
      // The dead collector's store, as it is: everything acknowledged is there, once, gap-free.
      const atKill = leafStats(dataDir, AGENT_ID);
      assert.ok(atKill.hi! >= acked, `the agent holds seq ${acked} as acknowledged but the store ends at seq ${atKill.hi}`);
      assert.deepEqual(atKill, { n: atKill.hi, distinct: atKill.hi, lo: 1, hi: atKill.hi, size: atKill.hi });

      logs.collector += collector.log;
      collector = await new CollectorProcess(collector.opts).start();
      await waitFor('ingest to resume after the restart', () => shipperState(agent.stateDir).ackedSeq > atKill.hi!, 40_000, 20);
    } finally {
      writeFileSync(stopFile, '');
      const r: ProcResult = await job;
      assert.equal(r.status, 0, r.stderr);
    }
    const last = await settle(30_000);
    await assertComplete(last);
  });

  test('(b) a collector down for a while and back: nothing lost, nothing doubled, the agent works meanwhile', async (t) => {
    const before = await settle(15_000);
    const stop = await collector.stop('SIGTERM', 2000);
    if (!stop.exited) t.diagnostic(`the collector did not exit within 2 s of SIGTERM; it was killed (see log-integrity.test.ts)`);
    const downAt = Date.now();

    // The collector is down: watched jobs run, their connections are still relayed, events spool.
    const job = await agent.run(['/bin/sh', '-c', 'for i in $(seq 50); do /bin/true; done']);
    assert.equal(job.status, 0, job.stderr);
    const client = await agent.run([PYTHON, CLIENT, '127.0.0.2', String(echo.port)]);
    const res = JSON.parse(client.stdout.trim().split('\n').pop() ?? '{}') as { peer?: [string, number]; echo?: string; sock?: [string, number] };
    assert.deepEqual(res.peer, ['127.0.0.2', echo.port], `client: ${client.stdout}${client.stderr}`);
    assert.equal(res.echo, 'ping');
    assert.notEqual(echo.peers.at(-1)!.port, res.sock![1], 'the connection went through the agent proxy');
    await sleep(Math.max(0, 3000 - (Date.now() - downAt))); // down for at least 3 s

    assert.equal(agent.proc!.exitCode, null, 'the agent keeps running without its collector');
    const acked = shipperState(agent.stateDir).ackedSeq;
    assert.equal(acked, before, 'nothing is acknowledged while the collector is down');
    assert.equal(leafStats(dataDir, AGENT_ID).n, before);
    const spooled = (await seqs()).filter((s) => s > acked);
    assert.ok(spooled.length >= 100, `the spool holds the new events (${spooled.length})`);
    assert.deepEqual(spooled, Array.from({ length: spooled.length }, (_, i) => acked + 1 + i), 'spooled gap-free after the last acknowledged seq');
    const events = await spoolEvents(agent.stateDir, acked + 1);
    assert.ok(events.some((e) => e.kind === 'EVENT_KIND_CONNECTION_OPEN' && e.destination?.port === echo.port), 'the relayed connection was recorded');

    logs.collector += collector.log;
    collector = await new CollectorProcess(collector.opts).start();
    const upAt = Date.now();
    await waitFor('delivery to resume', () => shipperState(agent.stateDir).ackedSeq > acked, 40_000, 20);
    t.diagnostic(`collector down ${upAt - downAt} ms; the agent's first ack came ${Date.now() - upAt} ms after it was back`);
    const last = await settle(30_000);
    assert.ok(last >= acked + spooled.length);
    await assertComplete(last);
  });
});
