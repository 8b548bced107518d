// A spool over its size limit never drops an event: the agent refuses new intercepted connections
// (fail-closed), says why in its log, and once the collector has taken the backlog it accepts them
// again and records that in the trail. An agent stopped while its spool is full still stops, and
// writes what it holds. Real agent, real eBPF, real collector.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { AgentFixture, ROOT } from '../helpers/agent.js';
import { readSpoolDir } from '../../agent/events/read-spool-dir.js';
import { eventToJson } from '../../proto/index.js';
import { echoServer, type EchoServer } from '../helpers/servers.js';
import { bpfUnavailableReason } from '../helpers/env.js';
import { CollectorProcess, freePort, initPki, shipperState, waitFor } from '../helpers/collector.js';
import { tempDir } from '../helpers/tmp.js';

const skip = process.env.RUNGUARD_REQUIRE_BPF === '1' ? false : bpfUnavailableReason();
const CLIENT = path.join(ROOT, 'test/fixtures/tcp-client.py');

describe('a full spool', { skip }, () => {
  let server: EchoServer;
  let agent: AgentFixture;
  let collector: CollectorProcess;

  before(async () => {
    const why = bpfUnavailableReason();
    if (why) throw new Error(`eBPF required but unavailable: ${why}`);
    server = await echoServer('127.0.0.2');
    const work = tempDir('rg-spoolfull-');
    const pki = await initPki(work, 'test-agent');
    collector = new CollectorProcess({ dataDir: path.join(work, 'collector'), tlsDir: pki.caDir, grpcPort: await freePort(), httpPort: await freePort() });
    const config = path.join(work, 'agent.yaml');
    writeFileSync(config, 'spoolMaxBytes: 65536\n');
    // The collector is not started yet: events pile up in the spool.
    agent = await new AgentFixture({ intercept: ['127.0.0.2/32'], extraArgs: ['--config', config, '--collector', collector.target, '--tls', pki.agentDir] }).start();
  });

  after(async () => {
    await agent?.cleanup();
    await collector?.stop();
    await server?.close();
  });

  test('refuses new connections while full, loses nothing, and resumes once there is room', async () => {
    const ok = await agent.run(['python3', CLIENT, '127.0.0.2', String(server.port)]);
    assert.match(ok.stdout, /"echo": "ping"/, 'connections work while the spool has room');
    // Fill it: every exec and exit of a watched job is an event.
    for (let i = 0; i < 4 && !/audit spool cannot take events/.test(agent.log); i++) {
      await agent.run(['sh', '-c', 'i=0; while [ $i -lt 150 ]; do /bin/true; i=$((i+1)); done']);
    }
    await waitFor('the agent to report a full spool', () => /audit spool cannot take events/.test(agent.log) || undefined, 15_000);
    const refused = await agent.run(['python3', CLIENT, '127.0.0.2', String(server.port)]);
    assert.doesNotMatch(refused.stdout, /"echo": "ping"/, 'a new connection must not be relayed while the spool is full');
    assert.match(refused.stdout + refused.stderr, /Connection reset|ECONNRESET|error|Broken pipe|reset/i);

    await collector.start();
    await waitFor('the spool to take events again', () => /audit spool is writable again/.test(agent.log) || undefined, 30_000);
    const again = await agent.run(['python3', CLIENT, '127.0.0.2', String(server.port)]);
    assert.match(again.stdout, /"echo": "ping"/);

    await waitFor('everything to be acknowledged', async () => {
      const st = shipperState(agent.stateDir);
      const cp = await collector.checkpoint();
      return cp.size > 0 && st.ackedSeq === cp.size ? st : undefined;
    }, 30_000);
    const trail = (await collector.get('/events?limit=10000')).trim().split('\n').map((l) => JSON.parse(l).event);
    const seqs = trail.map((e) => Number(e.seq));
    assert.deepEqual(seqs, seqs.map((_, i) => i + 1), 'gap-free: nothing was dropped while full');
    assert.ok(trail.some((e) => e.kind === 'EVENT_KIND_CONNECTION_REFUSED' && e.connectionRefused.reason === 'spool_unavailable'), 'the refusal is in the trail');
    assert.ok(trail.some((e) => e.kind === 'EVENT_KIND_AGENT_NOTICE' && e.notice.code === 'spool_recovered'), 'and so is the recovery, with why it happened');
  });
});

describe('an agent stopped while its spool is full', { skip }, () => {
  let agent: AgentFixture | undefined;

  after(async () => {
    await agent?.cleanup();
  });

  test('stops at once and writes everything it holds, its stop event last, past the limit', async () => {
    const why = bpfUnavailableReason();
    if (why) throw new Error(`eBPF required but unavailable: ${why}`);
    const work = tempDir('rg-spoolstop-');
    const config = path.join(work, 'agent.yaml');
    writeFileSync(config, 'spoolMaxBytes: 65536\n');
    // No collector: nothing will ever make room, as on a host whose collector is gone for good.
    agent = await new AgentFixture({ intercept: ['127.0.0.2/32'], extraArgs: ['--config', config] }).start();
    for (let i = 0; i < 4 && !/audit spool cannot take events/.test(agent.log); i++) {
      await agent.run(['sh', '-c', 'i=0; while [ $i -lt 150 ]; do /bin/true; i=$((i+1)); done']);
    }
    await waitFor('the agent to report a full spool', () => /audit spool cannot take events/.test(agent!.log) || undefined, 15_000);
    const exited = agent.stop('SIGTERM');
    const timedOut = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 15_000).unref());
    const code = await Promise.race([exited, timedOut]);
    assert.notEqual(code, 'timeout', 'SIGTERM must stop an agent whose spool is full (it waited for a write that could never happen)');
    assert.equal(code, 0);
    const trail: Record<string, any>[] = [];
    for await (const rec of readSpoolDir(path.join(agent.stateDir, 'spool'))) trail.push(eventToJson(rec.bytes));
    const seqs = trail.map((e) => Number(e.seq));
    assert.deepEqual(seqs, seqs.map((_, i) => i + 1), 'gap-free: nothing was dropped');
    assert.equal(trail.at(-1)?.kind, 'EVENT_KIND_AGENT_STOP', 'the stop event is written, last');
    assert.ok(trail.filter((e) => e.kind === 'EVENT_KIND_PROCESS_EXEC').length >= 150, 'the events held in memory while full are written too');
  });
});
