// Agent heartbeats, without processes: the collector keeps the latest status per agent apart from
// the log, shows it in GET /agents, bounds its size; the agent measures its unacknowledged backlog
// exactly (bytes of the records after the acknowledged seq, not whole segments).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import Database from 'better-sqlite3';
import { SqliteStore } from '../../collector/store/sqlite.js';
import { createReadApi } from '../../collector/http.js';
import { heartbeatProblem, statusJson } from '../../collector/heartbeat.js';
import { BacklogMeter } from '../../agent/events/backlog.js';
import { Spool } from '../../agent/events/spool.js';
import { HEADER_BYTES } from '../../agent/events/record-format.js';
import { EventKind } from '../../proto/index.js';
import type { AgentStatusMsg } from '../../proto/services.js';

const log = pino({ level: 'silent' });

function status(agentId: string, extra: Partial<AgentStatusMsg> = {}): AgentStatusMsg {
  return {
    agentId, version: '0.1.0', sentMs: 1_700_000_000_000, startedMs: 1_699_999_990_000, uptimeMs: 10_000, stopping: false,
    bpf: { state: 'attached', programs: ['rg_connect4'], links: 7, watchedCgroups: 1, failOpen: false, execEventsLost: 0, error: '' },
    proxy: { port: 15001, activeSessions: 2, acceptedSessions: 9, refusedConnections: 0 },
    spool: { backlogEvents: 3, backlogBytes: 300, oldestUnackedAgeMs: 40, bytes: 4096, maxBytes: 1 << 30, state: 'ok', refusing: false, reason: '', lastSeq: 12, ackedSeq: 9 },
    shipper: { connected: true, lastAckMs: 1_700_000_000_000, lastError: '', lastErrorMs: 0, reconnects: 0, batches: 4 },
    witness: { checkpointSize: 9, lastCheckMs: 1_699_999_999_000, lastCheckOk: true, lastProblem: '', lastFailureMs: 0, checks: 3, failures: 0 },
    ...extra,
  };
}

test('the store keeps the latest status per agent, across a reopen, apart from the log', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'rg-status-'));
  try {
    let store = SqliteStore.open(dir);
    assert.deepEqual(store.agentStatuses(), []);
    store.saveAgentStatus('b', status('b'), 1000);
    store.saveAgentStatus('a', status('a', { uptimeMs: 1 }), 2000);
    store.saveAgentStatus('a', status('a', { uptimeMs: 2 }), 3000);
    const all = store.agentStatuses();
    assert.deepEqual(all.map((s) => [s.agentId, s.receivedMs, s.status.uptimeMs]), [['a', 3000, 2], ['b', 1000, 10_000]]);
    assert.deepEqual(all[1]!.status, status('b'), 'stored as sent');
    assert.equal(store.size(), 0, 'statuses are not leaves');
    store.close();
    store = SqliteStore.open(dir);
    assert.equal(store.agentStatuses().length, 2);
    store.close();
    const ro = SqliteStore.open(dir, { readonly: true });
    assert.equal(ro.agentStatuses().length, 2);
    assert.throws(() => ro.saveAgentStatus('a', status('a'), 1), /read-only/);
    ro.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a read-only store from before agent_status (runguard verify on an old database) has no statuses', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'rg-status-old-'));
  try {
    SqliteStore.open(dir).close();
    const db = new Database(path.join(dir, 'log.db'));
    db.exec('DROP TABLE agent_status');
    db.close();
    const ro = SqliteStore.open(dir, { readonly: true });
    assert.deepEqual(ro.agentStatuses(), []);
    ro.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('GET /agents adds each agent\'s status (null before its first heartbeat) and keeps the other fields', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'rg-status-http-'));
  const store = SqliteStore.open(dir);
  try {
    store.registerAgent('a', Buffer.alloc(32, 1), 'PEM-A');
    store.registerAgent('b', Buffer.alloc(32, 2), 'PEM-B');
    store.saveAgentStatus('a', status('a'), 1_700_000_000_500);
    store.saveAgentStatus('ghost', status('ghost'), 1); // never shipped an event: not an agent of the log
    const api = createReadApi({ store, checkpoint: () => undefined, log });
    const server = (await import('node:http')).createServer(api);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    try {
      const res = await fetch(`http://127.0.0.1:${(server.address() as { port: number }).port}/agents`);
      const agents = (await res.json()) as Record<string, any>[];
      assert.deepEqual(agents.map((a) => a.agentId), ['a', 'b']);
      assert.deepEqual(Object.keys(agents[0]!), ['agentId', 'signingKey', 'certificate', 'lastSeq', 'lastIndex', 'lastSeen', 'batches', 'status']);
      assert.equal(agents[1]!.status, null);
      const s = agents[0]!.status;
      assert.equal(s.receivedMs, 1_700_000_000_500);
      assert.equal(s.received, '2023-11-14T22:13:20.500Z');
      assert.equal(s.agentId, undefined, 'the agent id is the entry\'s, not repeated');
      assert.equal(s.version, '0.1.0');
      assert.deepEqual(s.spool, status('a').spool);
      assert.deepEqual(s.witness, status('a').witness);
      assert.equal(s.bpf.state, 'attached');
    } finally {
      server.close();
    }
  } finally {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  }
  assert.equal(statusJson(undefined), null);
});

test('an oversized status is refused with its size', () => {
  assert.equal(heartbeatProblem(status('a')), undefined);
  const big = status('a', { version: 'x'.repeat(70_000) });
  assert.match(heartbeatProblem(big)!, /over the collector's limit of 65536/);
});

test('the backlog is the exact bytes after the acknowledged seq, and the age of the oldest unacknowledged event', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'rg-backlog-'));
  // Small segments so that the acknowledged seq falls inside one with more after it.
  const spool = await Spool.open({ dir, agentId: 'a', maxBytes: 64 * 1024, segmentBytes: 1024, logger: { info() {}, warn() {}, error() {} } });
  try {
    const sizes: number[] = [0];
    const before = Date.now();
    for (let i = 1; i <= 60; i++) {
      const { seq, durable } = spool.append({ kind: EventKind.EVENT_KIND_AGENT_NOTICE!, notice: { level: 'info', code: 't', message: `event ${i} ${'.'.repeat(i % 7)}` } });
      await durable;
      sizes[seq] = 0;
    }
    for await (const rec of spool.readFrom(1)) sizes[rec.seq] = HEADER_BYTES + rec.bytes.length;
    const after = (acked: number) => sizes.slice(acked + 1).reduce((a, b) => a + b, 0);
    assert.ok(spool.stats().segments > 3, `several segments (${spool.stats().segments})`);
    const meter = new BacklogMeter(spool);
    for (const acked of [0, 1, 17, 18, 33, 59, 60]) {
      if (acked > 0) await spool.ackUpTo(acked);
      const b = await meter.measure(acked);
      assert.equal(b.events, 60 - acked, `events after ${acked}`);
      assert.equal(b.bytes, after(acked), `bytes after ${acked}`);
      if (acked < 60) assert.ok(b.oldestMs! >= before - 1000 && b.oldestMs! <= Date.now(), `oldest time after ${acked}: ${b.oldestMs}`);
      else assert.equal(b.oldestMs, undefined);
    }
  } finally {
    await spool.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
