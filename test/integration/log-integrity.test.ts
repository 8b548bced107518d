// The tamper-evident log end to end, with real parts: `ca init` and `enroll`, a real collector
// process (gRPC over mutual TLS, SQLite), the real agent with real eBPF shipping its events, and
// `runguard verify` run as a command. Then the store is tampered with, each time on a fresh copy,
// and verify must name the first bad index and why; a rewritten history with a re-signed
// checkpoint is caught by the checkpoint saved earlier and by the agent that saw it (its witness).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { AgentFixture, RUNGUARD, runProcess } from '../helpers/agent.js';
import { bpfUnavailableReason } from '../helpers/env.js';
import { CollectorProcess, copyStore, freePort, initPki, leafStats, saveArtifact, shipperState, spoolEvents, spoolSeqs, stopProcess, verifyJson, waitFor, type Pki, type VerifyJson } from '../helpers/collector.js';
import { AuditEventType, encodeEvent, EventKind } from '../../proto/index.js';
import { eventHash, signBatchTip } from '../../proto/batch.js';
import { SqliteStore } from '../../collector/store/sqlite.js';
import type { LeafInput } from '../../collector/store/store.js';
import { loadCheckpointSigner, loadCheckpointVerifier } from '../../collector/pki/identity.js';
import { openCheckpoint, signCheckpoint } from '../../collector/merkle/index.js';

const AGENT_ID = 'test-agent'; // AgentFixture runs the agent under this id
const skip = process.env.RUNGUARD_REQUIRE_BPF === '1' ? false : bpfUnavailableReason();

interface LeafRow {
  idx: number; agent_id: string; seq: number; bytes: Buffer; time_ms: number; kind: number; session_id: string;
  repository: string; workflow: string; run_id: string; job: string; actor: string; destination: string;
}

function leafInput(r: LeafRow, bytes = r.bytes): LeafInput {
  return {
    seq: r.seq, bytes, hash: eventHash(bytes), timeMs: r.time_ms, kind: r.kind, sessionId: r.session_id, repository: r.repository,
    workflow: r.workflow, runId: r.run_id, job: r.job, actor: r.actor, destination: r.destination, decision: '',
  };
}

async function maxSeq(agent: AgentFixture): Promise<number> {
  return Math.max(0, ...(await spoolSeqs(agent.stateDir)));
}

describe('log integrity: real collector, real agent, tampering on the real store', { skip }, () => {
  let root: string;
  let pki: Pki;
  let grpcPort: number;
  let httpPort: number;
  let dataDir: string;
  let collector: CollectorProcess;
  let agent: AgentFixture;
  let agentArgs: string[];
  /** Size of the log once the agent's events are all in (one agent: leaf i is seq i+1). */
  let N = 0;
  let savedNote = '';
  let savedFile = '';
  /** The stopped collector's store, WAL folded in: every tamper test starts from a copy of it. */
  let pristine = '';
  let tips: number[] = [];
  let rewritten = '';
  /** The agent's SIGTERM while the collector is down; awaited by the witness test. */
  let agentStopping: ReturnType<typeof stopProcess> | undefined;

  const verifyDir = (dir: string, extra: string[] = []) => verifyJson(['--data-dir', dir, '--key', pki.pub, ...extra]);
  const show = (r: VerifyJson) => JSON.stringify(r.problems.slice(0, 6));

  function assertFirst(res: { status: number | null; report: VerifyJson }, index: number, reason: RegExp): void {
    assert.equal(res.report.ok, false, 'verify must fail');
    assert.equal(res.status, 1, 'verify exits 1 on failure');
    assert.equal(res.report.checkpointSigned, true);
    assert.equal(res.report.firstProblem?.index, index, `first bad index: ${show(res.report)}`);
    assert.match(res.report.firstProblem!.reason, reason);
  }

  /** A fresh copy of the pristine store, changed by `fn` in one transaction. */
  function tampered(name: string, fn: (db: Database.Database) => void): string {
    assert.ok(pristine, 'the pristine store was made');
    const dir = path.join(root, `tamper-${name}`);
    copyStore(pristine, dir);
    const db = new Database(path.join(dir, 'log.db'));
    try {
      db.transaction(() => fn(db))();
    } finally {
      db.close();
    }
    return dir;
  }

  /** Signs a checkpoint for the store's current tree with the collector's real key and stores it. */
  function resign(store: SqliteStore): string {
    const signer = loadCheckpointSigner(pki.caDir);
    const size = store.size();
    const rootHash = Buffer.from(store.root());
    const note = signCheckpoint({ origin: signer.name, size, root: rootHash }, signer);
    store.saveCheckpoint({ size, root: rootHash, note, timeMs: Date.now() });
    return note;
  }

  before(async () => {
    const why = bpfUnavailableReason();
    if (why) throw new Error(`eBPF required (RUNGUARD_REQUIRE_BPF=1) but unavailable: ${why}`);
    root = mkdtempSync(path.join(os.tmpdir(), 'rg-integrity-'));
    pki = await initPki(root, AGENT_ID);
    grpcPort = await freePort();
    do httpPort = await freePort(); while (httpPort === grpcPort);
    dataDir = path.join(root, 'data');
    collector = await new CollectorProcess({ dataDir, tlsDir: pki.caDir, grpcPort, httpPort }).start();
    agentArgs = ['--collector', collector.target, '--tls', pki.agentDir];
    agent = await new AgentFixture({ intercept: ['127.0.0.2/32'], extraArgs: agentArgs }).start();
  });

  const logs = { agent: '', collector: '' };
  after(async () => {
    saveArtifact('log-integrity-agent.log', logs.agent + (agent?.log ?? ''));
    saveArtifact('log-integrity-collector.log', logs.collector + (collector?.log ?? ''));
    await stopProcess(agent?.proc, 'SIGTERM', 3000);
    await collector?.stop('SIGTERM', 3000);
    await agent?.cleanup();
    if (root) rmSync(root, { recursive: true, force: true });
  });

  test('a few hundred events reach the collector; verify says OK from the store and from the read API', async () => {
    const job = await agent.run(['/bin/sh', '-c', 'for i in $(seq 100); do /bin/true; done']);
    assert.equal(job.status, 0, job.stderr);
    let last = 0;
    await waitFor(() => `the agent's last seq ${last} to be acked and checkpointed (acked ${shipperState(agent.stateDir).ackedSeq}, leaves ${leafStats(dataDir, AGENT_ID).n})`, async () => {
      const now = await maxSeq(agent);
      const settled = now === last;
      last = now;
      if (!settled || shipperState(agent.stateDir).ackedSeq !== last) return false;
      const cp = await collector.checkpoint();
      return cp.size === last && leafStats(dataDir, AGENT_ID).size === last;
    }, 20_000, 250);
    N = last;
    assert.ok(N >= 200, `expected ~200 exec/exit events, the log has ${N}`);
    assert.deepEqual(leafStats(dataDir, AGENT_ID), { n: N, distinct: N, lo: 1, hi: N, size: N });

    // Three verifier processes at once: each spends most of its second loading modules.
    const [fromStore, fromApi, text] = await Promise.all([
      verifyDir(dataDir),
      verifyJson(['--collector', collector.url, '--key', pki.pub]),
      runProcess(RUNGUARD, ['verify', '--collector', collector.url, '--key', pki.pub]),
    ]);
    assert.equal(fromStore.status, 0, show(fromStore.report));
    assert.equal(fromStore.report.ok, true);
    assert.equal(fromStore.report.size, N);
    assert.equal(fromStore.report.leavesChecked, N);
    assert.equal(fromStore.report.agents, 1);
    assert.equal(fromStore.report.checkpointSigned, true);
    assert.ok(fromStore.report.signaturesChecked >= 1);
    assert.equal(fromApi.status, 0, show(fromApi.report));
    assert.equal(fromApi.report.ok, true);
    assert.equal(fromApi.report.leavesChecked, N);
    assert.equal(text.status, 0);
    assert.match(text.stdout, /^checkpoint signature: valid$/m);
    assert.match(text.stdout, /^OK: /m);

    const cp = await collector.checkpoint();
    assert.equal(cp.size, N);
    savedNote = cp.note;
    savedFile = path.join(root, 'saved.note');
    writeFileSync(savedFile, savedNote);

    // The agent, as a witness, keeps the newest checkpoint it checked.
    const agentNote = path.join(agent.stateDir, 'checkpoint.note');
    await waitFor('the agent to save the checkpoint of the whole log', () => existsSync(agentNote) && readFileSync(agentNote, 'utf8') === savedNote, 10_000, 200);
    assert.ok(openCheckpoint(readFileSync(agentNote, 'utf8'), [loadCheckpointVerifier(pki.pub)]).ok);
  });

  test('the collector exits promptly on SIGTERM while an agent is connected', async () => {
    const r = await collector.stop('SIGTERM', 4000);
    assert.ok(r.exited, `the collector was still running ${r.ms} ms after SIGTERM with the agent's ingest stream open (killed it with SIGKILL)`);
    assert.equal(r.code, 0);
  });

  test('control: the stopped collector\'s store verifies OK', async () => {
    assert.equal(collector.running, false);
    // The agent stops too (it spends ~3 s trying to deliver its stop event) while the store is tampered with.
    agentStopping = stopProcess(agent.proc, 'SIGTERM', 10_000);
    pristine = path.join(root, 'pristine');
    copyStore(dataDir, pristine);
    const db = new Database(path.join(pristine, 'log.db'));
    db.pragma('wal_checkpoint(TRUNCATE)');
    const size = db.prepare('SELECT count(*) FROM leaves').pluck().get() as number;
    assert.equal(size, N, 'nothing arrived after the saved checkpoint');
    assert.equal(db.prepare('SELECT count(*) FROM leaves WHERE seq != idx + 1').pluck().get(), 0, 'one agent: leaf i is seq i+1');
    tips = db.prepare('SELECT last_seq FROM batches WHERE agent_id = ? ORDER BY last_seq').pluck().all(AGENT_ID) as number[];
    db.close();
    assert.equal(tips.at(-1), N);
    const r = await verifyDir(pristine, ['--checkpoint', savedFile]);
    assert.equal(r.status, 0, show(r.report));
    assert.equal(r.report.ok, true);
  });

  test('(a) a modified leaf: named at its index, "leaf modified"', async () => {
    const K = Math.floor(N / 2);
    const dir = tampered('a', (db) => {
      const bytes = Buffer.from(db.prepare('SELECT bytes FROM leaves WHERE idx = ?').pluck().get(K) as Buffer);
      bytes[bytes.length - 2]! ^= 0x01;
      assert.equal(db.prepare('UPDATE leaves SET bytes = ? WHERE idx = ?').run(bytes, K).changes, 1);
    });
    assertFirst(await verifyDir(dir), K, /leaf modified/);
  });

  test('(b) a deleted leaf: named at its index, "missing"', async () => {
    const K = Math.floor(N / 2) + 1;
    const dir = tampered('b', (db) => {
      assert.equal(db.prepare('DELETE FROM leaves WHERE idx = ?').run(K).changes, 1);
    });
    assertFirst(await verifyDir(dir), K, /missing/);
  });

  test('(c) two leaves swapped: named at the first of them', async () => {
    const J = Math.floor(N / 4);
    const K = Math.floor(N / 2);
    const dir = tampered('c', (db) => {
      const get = db.prepare('SELECT seq, bytes FROM leaves WHERE idx = ?');
      const set = db.prepare('UPDATE leaves SET seq = ?, bytes = ? WHERE idx = ?');
      const j = get.get(J) as { seq: number; bytes: Buffer };
      const k = get.get(K) as { seq: number; bytes: Buffer };
      set.run(-1, j.bytes, J); // (agent_id, seq) is unique: park J's seq while swapping
      set.run(j.seq, j.bytes, K);
      set.run(k.seq, k.bytes, J);
    });
    assertFirst(await verifyDir(dir), J, /leaf modified|follows|chain/);
  });

  /** Deletes leaves idx >= K and every Merkle node covering any of them. */
  const truncateAt = (K: number) => (db: Database.Database) => {
    assert.equal(db.prepare('DELETE FROM leaves WHERE idx >= ?').run(K).changes, N - K);
    assert.ok(db.prepare('DELETE FROM nodes WHERE ((idx + 1) << level) > ?').run(K).changes >= N - K);
  };

  test('(d) a tail truncated after a signed batch: named at the first missing index, "truncated"', async () => {
    // Leaf K-1 is seq K: cut right after a batch whose signature names seq K.
    const K = tips.filter((t) => t >= N / 2 && t < N).at(0) ?? tips.filter((t) => t < N).at(-1)!;
    const dir = tampered('d1', truncateAt(K));
    assertFirst(await verifyDir(dir), K, /truncated/);
  });

  test('(d) a tail truncated inside a signed batch: named at the first missing index, "truncated"', async (t) => {
    // Leaf K-1 is seq K, which no batch signature names: the cut falls inside a batch.
    const inside = [];
    for (let K = Math.floor(N / 2); K < N; K++) if (!tips.includes(K)) inside.push(K);
    if (inside.length === 0) {
      t.skip('every batch held one event: no cut falls inside a batch');
      return;
    }
    const K = inside[Math.floor(inside.length / 2)]!;
    const dir = tampered('d2', truncateAt(K));
    assertFirst(await verifyDir(dir), K, /truncated/);
  });

  test('(e) an injected event with a forged signature under a re-signed checkpoint: named at its index, "signature"', async () => {
    const dir = path.join(root, 'tamper-e');
    copyStore(pristine, dir);
    const store = SqliteStore.open(dir);
    let at: number;
    try {
      const known = store.agent(AGENT_ID)!;
      const seq = known.lastSeq + 1;
      at = store.size();
      // Well chained (the right seq and prev_hash), plausible, and signed with a key that is not the agent's.
      const bytes = Buffer.from(encodeEvent({
        agentId: AGENT_ID, seq, prevHash: known.lastHash, time: { seconds: Math.floor(Date.now() / 1000), nanos: 0 },
        kind: EventKind.EVENT_KIND_CONNECTION_OPEN, sessionId: 'forged', destination: { address: '203.0.113.7', port: 443 },
      }));
      const forger = generateKeyPairSync('ed25519').privateKey;
      store.appendBatch({
        agentId: AGENT_ID,
        leaves: [{ seq, bytes, hash: eventHash(bytes), timeMs: Date.now(), kind: EventKind.EVENT_KIND_CONNECTION_OPEN!, sessionId: 'forged', repository: '', workflow: '', runId: '', job: '', actor: '', destination: '203.0.113.7:443', decision: '' }],
        tipSignature: signBatchTip(forger, AGENT_ID, seq, eventHash(bytes)),
      });
      resign(store);
    } finally {
      store.close();
    }
    assert.equal(at, N);
    const [alone, withSaved] = await Promise.all([verifyDir(dir), verifyDir(dir, ['--checkpoint', savedFile])]);
    assertFirst(alone, at, /signature/);
    // The forged event extends the log consistently: the saved checkpoint alone would not catch it.
    assertFirst(withSaved, at, /signature/);
  });

  test('(f) a rewritten tree with a re-signed checkpoint is inconsistent with the checkpoint saved earlier', async () => {
    const src = new Database(path.join(pristine, 'log.db'), { readonly: true });
    const rows = src.prepare('SELECT * FROM leaves ORDER BY idx').all() as LeafRow[];
    const batches = src.prepare('SELECT last_seq AS lastSeq, signature FROM batches WHERE agent_id = ? ORDER BY last_seq').all(AGENT_ID) as { lastSeq: number; signature: Buffer }[];
    const agentRow = src.prepare('SELECT signing_key, certificate FROM agents WHERE agent_id = ?').get(AGENT_ID) as { signing_key: Buffer; certificate: string };
    src.close();
    // An early event, not itself a signed tip, so only the chain and the tree can give it away.
    const K = rows.findIndex((r) => r.idx >= 2 && !tips.includes(r.seq) && r.seq < N - 1);
    assert.ok(K > 0);
    const ev = AuditEventType.decode(rows[K]!.bytes) as unknown as { sessionId: string };
    ev.sessionId = 'rewritten-history';
    const altered = Buffer.from(AuditEventType.encode(ev as never).finish());

    rewritten = path.join(root, 'rewritten');
    const store = SqliteStore.open(rewritten);
    try {
      store.registerAgent(AGENT_ID, agentRow.signing_key, agentRow.certificate);
      let i = 0;
      for (const b of batches) {
        const leaves: LeafInput[] = [];
        for (; i < rows.length && rows[i]!.seq <= b.lastSeq; i++) leaves.push(leafInput(rows[i]!, i === K ? altered : rows[i]!.bytes));
        store.appendBatch({ agentId: AGENT_ID, leaves, tipSignature: b.signature });
      }
      assert.equal(store.size(), N);
      resign(store);
    } finally {
      store.close();
    }

    const [withSaved, withAgents] = await Promise.all([
      verifyDir(rewritten, ['--checkpoint', savedFile]),
      verifyDir(rewritten, ['--checkpoint', path.join(agent.stateDir, 'checkpoint.note')]),
    ]);
    assert.equal(withSaved.status, 1);
    assert.equal(withSaved.report.ok, false);
    assert.ok(withSaved.report.problems.some((p) => p.index === N - 1 && /inconsistent with the checkpoint saved earlier/.test(p.reason)), show(withSaved.report));
    assert.ok([K, K + 1].includes(withSaved.report.firstProblem!.index), `first bad index near ${K}: ${show(withSaved.report)}`);
    // The checkpoint the agent saw (its witness state) catches it the same way.
    assert.ok(withAgents.report.problems.some((p) => /saved earlier/.test(p.reason)), show(withAgents.report));
  });

  test('(f) a rewrite that keeps every agent chain valid is caught by the checkpoint saved earlier, and by --ca', async () => {
    // The collector invents an agent of its own (its key, its signatures) and slips its events in
    // at an early index. Every chain and signature holds; only the earlier checkpoint shows it.
    const src = new Database(path.join(pristine, 'log.db'), { readonly: true });
    const rows = src.prepare('SELECT * FROM leaves ORDER BY idx').all() as LeafRow[];
    const batches = src.prepare('SELECT last_seq AS lastSeq, signature FROM batches WHERE agent_id = ? ORDER BY last_seq').all(AGENT_ID) as { lastSeq: number; signature: Buffer }[];
    const agentRow = src.prepare('SELECT signing_key, certificate FROM agents WHERE agent_id = ?').get(AGENT_ID) as { signing_key: Buffer; certificate: string };
    src.close();
    const ghost = generateKeyPairSync('ed25519');
    const ghostRaw = ghost.publicKey.export({ format: 'der', type: 'spki' }).subarray(-32);
    const dir = path.join(root, 'rewritten-ghost');
    const store = SqliteStore.open(dir);
    try {
      store.registerAgent(AGENT_ID, agentRow.signing_key, agentRow.certificate);
      store.registerAgent('ghost', Buffer.from(ghostRaw), agentRow.certificate);
      let i = 0;
      for (const [n, b] of batches.entries()) {
        const leaves: LeafInput[] = [];
        for (; i < rows.length && rows[i]!.seq <= b.lastSeq; i++) leaves.push(leafInput(rows[i]!));
        store.appendBatch({ agentId: AGENT_ID, leaves, tipSignature: b.signature });
        if (n === 0) {
          const bytes = Buffer.from(encodeEvent({ agentId: 'ghost', seq: 1, prevHash: Buffer.alloc(32), time: { seconds: 1, nanos: 0 }, kind: EventKind.EVENT_KIND_AGENT_START }));
          store.appendBatch({ agentId: 'ghost', leaves: [{ seq: 1, bytes, hash: eventHash(bytes), timeMs: 1000, kind: EventKind.EVENT_KIND_AGENT_START!, sessionId: '', repository: '', workflow: '', runId: '', job: '', actor: '', destination: '', decision: '' }], tipSignature: signBatchTip(ghost.privateKey, 'ghost', 1, eventHash(bytes)) });
        }
      }
      resign(store);
    } finally {
      store.close();
    }
    const [r, withCa] = await Promise.all([verifyDir(dir, ['--checkpoint', savedFile]), verifyDir(dir, ['--ca', pki.caDir])]);
    assert.equal(r.status, 1, show(r.report));
    assert.ok(r.report.problems.some((p) => p.index === N - 1 && /inconsistent with the checkpoint saved earlier/.test(p.reason)), show(r.report));
    // The invented agent's key is not the one the certificate it borrowed binds: --ca sees that.
    assert.equal(withCa.status, 1, show(withCa.report));
    assert.ok(withCa.report.problems.some((p) => /agent ghost: .*(certificate|key in the log)/.test(p.reason)), show(withCa.report));
  });

  test('the agent that saw the old checkpoint reports a WITNESS FAILURE against the rewritten log', async () => {
    assert.ok(rewritten, 'the rewritten store was made');
    // The agent stops while the collector is down (its last events stay spooled) ...
    const stopped = await (agentStopping ?? stopProcess(agent.proc, 'SIGTERM', 10_000));
    assert.ok(stopped.exited, `the agent did not stop within 10 s of SIGTERM with the collector down (killed after ${stopped.ms} ms)`);
    const ackedBefore = shipperState(agent.stateDir).ackedSeq;
    assert.equal(ackedBefore, N);
    // ... and comes back to a collector serving the rewritten history under the same key.
    logs.collector += collector.log;
    logs.agent += agent.log;
    collector = await new CollectorProcess({ dataDir: rewritten, tlsDir: pki.caDir, grpcPort, httpPort }).start();
    agent = await new AgentFixture({ intercept: ['127.0.0.2/32'], extraArgs: agentArgs, reuse: agent }).start();
    await waitFor('WITNESS FAILURE in the agent log', () => agent.log.includes('WITNESS FAILURE'), 15_000, 100);
    const line = agent.log.split('\n').find((l) => l.includes('WITNESS FAILURE'))!;
    assert.match(JSON.parse(line).problem, new RegExp(`not consistent with checkpoint ${N}|two checkpoints of size ${N} with different roots`));
    const notice = await waitFor('a witness_failure notice in the spool', async () => (await spoolEvents(agent.stateDir, N + 1)).find((e) => e.kind === 'EVENT_KIND_AGENT_NOTICE' && e.notice?.code === 'witness_failure'), 5000, 250);
    assert.equal(notice.notice.level, 'error');
    // The agent keeps its old checkpoint: it never accepts the rewritten one.
    assert.equal(readFileSync(path.join(agent.stateDir, 'checkpoint.note'), 'utf8'), savedNote);
  });

  test('the agent exits promptly on SIGTERM while connected to a live collector', async () => {
    const r = await stopProcess(agent.proc, 'SIGTERM', 5000);
    assert.ok(r.exited, `the agent was still running ${r.ms} ms after SIGTERM (killed it with SIGKILL); log tail:\n${agent.log.split('\n').slice(-4).join('\n')}`);
    assert.equal(r.code, 0);
  });

  test('the agent leaks no abort listeners while it waits (retries, draining at stop)', () => {
    const all = logs.agent + agent.log;
    assert.doesNotMatch(all, /MaxListenersExceededWarning[^\n]*/, 'an AbortSignal collects a listener per sleep');
  });
});
