// The collector's ingest rules, on a real SQLite store: every accepted batch becomes leaves with
// indexes; a resend is acknowledged as duplicates and stored once; every rejection reason stores
// nothing at all; a gap is stored as a gap and `verifyLog` names it at the right index.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { encodeEvent, EventKind } from '../../proto/index.js';
import { eventHash, signBatchTip } from '../../proto/batch.js';
import type { EventBatch } from '../../proto/services.js';
import { Ingestor, type AgentPeer } from '../../collector/ingest.js';
import { SqliteStore } from '../../collector/store/sqlite.js';
import { ed25519Raw } from '../../collector/pki/identity.js';
import { generateNoteKey, signCheckpoint } from '../../collector/merkle/index.js';
import { verifyLog } from '../../collector/verify.js';
import { storeSource } from '../../collector/verify-sources.js';

const root = mkdtempSync(path.join(os.tmpdir(), 'rg-ingest-'));
after(() => rmSync(root, { recursive: true, force: true }));
let dirs = 0;
const newDir = () => path.join(root, `store-${++dirs}`);

const ZERO = Buffer.alloc(32);
const T0 = 1_750_000_000;

/** An agent that chains and signs events the way the real spool and shipper do. */
class FakeAgent {
  readonly key: KeyObject;
  readonly peer: AgentPeer;
  readonly events: Buffer[] = []; // events[seq - 1]

  constructor(readonly agentId: string, key?: KeyObject) {
    this.key = key ?? generateKeyPairSync('ed25519').privateKey;
    this.peer = { agentId, signingKey: ed25519Raw(this.key), certificate: `-----BEGIN CERTIFICATE-----\n(${agentId})\n-----END CERTIFICATE-----\n` };
  }

  /** Encodes event `seq` chained to `prev` (default: the hash of the agent's event seq-1). */
  event(seq: number, over: Record<string, unknown> = {}): Buffer {
    const prev = 'prevHash' in over || seq < 2 ? ZERO : eventHash(this.events[seq - 2]!);
    return Buffer.from(encodeEvent({
      agentId: this.agentId, seq, prevHash: prev, time: { seconds: T0 + seq, nanos: 1000 * seq },
      kind: EventKind.EVENT_KIND_PROCESS_EXEC, sessionId: `s-${seq}`, process: { pid: 1000 + seq, exe: '/bin/true' },
      ...over,
    }));
  }

  /** Appends `n` more events to the agent's own history and returns them as a signed batch. */
  next(n: number): EventBatch {
    const firstSeq = this.events.length + 1;
    for (let i = 0; i < n; i++) this.events.push(this.event(this.events.length + 1));
    return this.batch(firstSeq, this.events.length);
  }

  /** A signed batch of the agent's events firstSeq..lastSeq (a resend when they were sent before). */
  batch(firstSeq: number, lastSeq: number): EventBatch {
    return this.sign(firstSeq, this.events.slice(firstSeq - 1, lastSeq));
  }

  sign(firstSeq: number, events: Buffer[], key: KeyObject = this.key): EventBatch {
    const last = events[events.length - 1] ?? Buffer.alloc(0);
    const lastSeq = firstSeq + events.length - 1;
    return { agentId: this.agentId, firstSeq, events, tipSignature: signBatchTip(key, this.agentId, lastSeq, eventHash(last)) };
  }
}

interface Snapshot { size: number; root: string; leaves: number; nodes: number; batches: number; gaps: number; agents: unknown[] }

function snapshot(store: SqliteStore): Snapshot {
  const count = (table: string) => store.db.prepare(`SELECT count(*) FROM ${table}`).pluck().get() as number;
  return {
    size: store.size(), root: Buffer.from(store.root()).toString('hex'),
    leaves: count('leaves'), nodes: count('nodes'), batches: count('batches'), gaps: count('gaps'),
    agents: store.agents().map((a) => ({ id: a.agentId, key: a.signingKey.toString('hex'), lastSeq: a.lastSeq, lastHash: a.lastHash.toString('hex'), lastIndex: a.lastIndex })),
  };
}

function open(): { store: SqliteStore; ingestor: Ingestor; dir: string } {
  const dir = newDir();
  const store = SqliteStore.open(dir);
  return { store, ingestor: new Ingestor(store), dir };
}

describe('Ingestor over a real SQLite store', () => {
  test('an accepted batch gets consecutive log indexes; a resend is acked as duplicates and stored once', () => {
    const { store, ingestor } = open();
    const a = new FakeAgent('agent-a');
    const b = new FakeAgent('agent-b');

    const ack1 = ingestor.handle(a.peer, a.next(5));
    assert.deepEqual(ack1, { firstSeq: 1, lastSeq: 5, firstIndex: 0, lastIndex: 4, newEvents: 5, duplicates: 0, error: '', expectedSeq: 0 });
    const ack2 = ingestor.handle(b.peer, b.next(3));
    assert.deepEqual({ ...ack2 }, { firstSeq: 1, lastSeq: 3, firstIndex: 5, lastIndex: 7, newEvents: 3, duplicates: 0, error: '', expectedSeq: 0 });
    const ack3 = ingestor.handle(a.peer, a.next(2));
    assert.equal(ack3.error, '');
    assert.equal(ack3.firstIndex, 8);
    assert.equal(ack3.lastIndex, 9);
    assert.equal(store.size(), 10);
    for (let seq = 1; seq <= 7; seq++) {
      const idx = store.indexOf('agent-a', seq)!;
      assert.ok(store.leaf(idx)!.bytes.equals(a.events[seq - 1]!), `agent-a seq ${seq} stored byte for byte`);
    }
    assert.equal(store.agent('agent-a')!.lastSeq, 7);
    assert.ok(store.agent('agent-a')!.lastHash.equals(eventHash(a.events[6]!)));

    // The ack of 1..5 was lost: the agent resends; the log acks it again with the stored indexes.
    const before = snapshot(store);
    const resend = ingestor.handle(a.peer, a.batch(1, 5));
    assert.equal(resend.error, '');
    assert.equal(resend.duplicates, 5);
    assert.equal(resend.newEvents, 0);
    assert.equal(resend.lastIndex, 4);
    assert.deepEqual(snapshot(store), before, 'a resend stores nothing');

    // A resend that overlaps what is stored and carries new events: the old ones are duplicates.
    a.events.push(a.event(8));
    a.events.push(a.event(9));
    const overlap = ingestor.handle(a.peer, a.batch(6, 9));
    assert.equal(overlap.error, '');
    assert.equal(overlap.duplicates, 2);
    assert.equal(overlap.newEvents, 2);
    assert.equal(overlap.firstIndex, 10);
    assert.equal(overlap.lastIndex, 11);
    assert.equal(store.size(), 12);
    const rows = store.db.prepare('SELECT count(*) AS n, count(DISTINCT seq) AS d, min(seq) AS lo, max(seq) AS hi FROM leaves WHERE agent_id = ?').get('agent-a');
    assert.deepEqual(rows, { n: 9, d: 9, lo: 1, hi: 9 });
    assert.deepEqual(ingestor.stats, { batches: 5, events: 12, duplicates: 7, rejected: 0 });
    store.close();
  });

  describe('every rejection stores nothing', () => {
    const { store, ingestor } = open();
    const a = new FakeAgent('agent-a');
    const other = new FakeAgent('agent-b');
    after(() => store.close());
    // Agent a has seq 1..4 in the log; each case builds a bad batch for seq 5.. (or a resend).
    assert.equal(ingestor.handle(a.peer, a.next(4)).error, '');
    assert.equal(ingestor.handle(other.peer, other.next(2)).error, '');
    const good5 = a.event(5);
    const good6 = (() => {
      a.events.push(good5);
      const e = a.event(6);
      a.events.pop();
      return e;
    })();

    const cases: { name: string; peer: () => AgentPeer; batch: () => EventBatch; reason: RegExp }[] = [
      {
        name: 'a bad batch signature',
        peer: () => a.peer,
        batch: () => ({ ...a.sign(5, [good5, good6]), tipSignature: flip(a.sign(5, [good5, good6]).tipSignature, 10) }),
        reason: /batch signature over seq 6 does not verify/,
      },
      {
        name: 'a batch signed with another key',
        peer: () => a.peer,
        batch: () => a.sign(5, [good5, good6], generateKeyPairSync('ed25519').privateKey),
        reason: /batch signature over seq 6 does not verify/,
      },
      {
        name: 'a seq that does not follow within the batch',
        peer: () => a.peer,
        batch: () => a.sign(5, [good5, a.event(7, { prevHash: eventHash(good5) })]),
        reason: /position 1 has seq 7, expected 6/,
      },
      {
        name: 'a broken prev_hash (first event of the batch)',
        peer: () => a.peer,
        batch: () => a.sign(5, [a.event(5, { prevHash: eventHash(a.events[2]!) })]),
        reason: /event seq 5 does not chain/,
      },
      {
        name: 'a broken prev_hash (inside the batch)',
        peer: () => a.peer,
        batch: () => a.sign(5, [good5, a.event(6, { prevHash: Buffer.alloc(32, 7) })]),
        reason: /event seq 6 does not chain/,
      },
      {
        name: 'an event naming another agent',
        peer: () => a.peer,
        batch: () => a.sign(5, [good5, a.event(6, { agentId: 'agent-b', prevHash: eventHash(good5) })]),
        reason: /event seq 6 names agent "agent-b"/,
      },
      {
        name: 'a batch whose agentId differs from the client certificate',
        peer: () => other.peer,
        batch: () => a.sign(5, [good5]),
        reason: /batch names agent "agent-a" but the client certificate is for "agent-b"/,
      },
      {
        name: 'a known agent presenting a different signing key',
        peer: () => {
          const rekeyed = new FakeAgent('agent-a');
          return rekeyed.peer;
        },
        batch: () => a.sign(5, [good5]),
        reason: /presents a signing key other than the one the log holds/,
      },
      {
        name: 'a forked resend (other bytes for a stored seq)',
        peer: () => a.peer,
        batch: () => a.sign(3, [a.event(3, { sessionId: 'forked' }), a.events[3]!, good5]),
        reason: /event seq 3 differs from the one the log stored at index 2: the agent's history forked/,
      },
      {
        name: 'a forked resend whose later events are new',
        peer: () => a.peer,
        batch: () => a.sign(4, [a.event(4, { sessionId: 'forked' }), good5]),
        reason: /event seq 4 differs .* forked/,
      },
      {
        name: 'an empty batch',
        peer: () => a.peer,
        batch: () => ({ agentId: 'agent-a', firstSeq: 5, events: [], tipSignature: Buffer.alloc(64) }),
        reason: /empty batch/,
      },
      {
        name: 'first_seq 0',
        peer: () => a.peer,
        batch: () => a.sign(0, [a.event(0)]),
        reason: /first_seq 0 is not a sequence number/,
      },
      {
        name: 'bytes that are not an AuditEvent',
        peer: () => a.peer,
        batch: () => a.sign(5, [Buffer.from([0xff, 0xff, 0xff])]),
        reason: /event seq 5 is not a valid AuditEvent/,
      },
    ];

    for (const c of cases) {
      test(`rejected, nothing stored: ${c.name}`, () => {
        const before = snapshot(store);
        const rejectedBefore = ingestor.stats.rejected;
        const ack = ingestor.handle(c.peer(), c.batch());
        assert.match(ack.error, c.reason);
        assert.equal(ack.newEvents, 0);
        assert.equal(ack.expectedSeq, c.name.includes('client certificate') ? 3 : 5, 'the ack says which seq the log needs next');
        assert.equal(ingestor.stats.rejected, rejectedBefore + 1);
        assert.deepEqual(snapshot(store), before, 'the store is unchanged');
      });
    }

    test('after all of that the genuine batch is accepted where it belongs', () => {
      a.events.push(good5, good6);
      const ack = ingestor.handle(a.peer, a.batch(5, 6));
      assert.equal(ack.error, '');
      assert.deepEqual([ack.firstIndex, ack.lastIndex, ack.newEvents], [6, 7, 2]);
    });
  });

  test('a gap is stored as a gap, and verify names it at the index where the events resume', async () => {
    const { store, ingestor, dir } = open();
    const a = new FakeAgent('agent-a');
    const b = new FakeAgent('agent-b');
    assert.equal(ingestor.handle(a.peer, a.next(3)).error, '');
    assert.equal(ingestor.handle(b.peer, b.next(2)).error, '');
    // Seq 4..6 of agent a never arrive (lost before the spool, say); the next batch starts at 7.
    a.next(3);
    const afterGap = a.next(2);
    assert.equal(afterGap.firstSeq, 7);
    const ack = ingestor.handle(a.peer, afterGap);
    assert.equal(ack.error, '', 'a gap is not a reason to drop the events that did arrive');
    assert.deepEqual([ack.firstIndex, ack.lastIndex, ack.newEvents], [5, 6, 2]);
    assert.deepEqual(store.gaps().map(({ detectedMs: _, ...g }) => g), [{ agentId: 'agent-a', fromSeq: 4, toSeq: 6, atIndex: 5 }]);
    const row = store.db.prepare('SELECT agent_id, from_seq, to_seq, at_index FROM gaps').all();
    assert.deepEqual(row, [{ agent_id: 'agent-a', from_seq: 4, to_seq: 6, at_index: 5 }]);
    assert.equal(store.agent('agent-a')!.lastSeq, 8);

    // The missing events cannot be slipped in later: their seqs are below the log's last seq.
    const before = snapshot(store);
    const late = ingestor.handle(a.peer, a.batch(4, 6));
    assert.match(late.error, /seq 4 is at or below the log's last seq 8 but was never stored \(a recorded gap\)/);
    assert.deepEqual(snapshot(store), before);
    // And the chain goes on after the gap.
    assert.equal(ingestor.handle(a.peer, a.next(1)).error, '');

    const key = generateNoteKey('test-collector');
    store.saveCheckpoint({ size: store.size(), root: Buffer.from(store.root()), note: signCheckpoint({ origin: 'test-collector', size: store.size(), root: store.root() }, key.signer), timeMs: Date.now() });
    store.close();

    const source = storeSource(dir);
    try {
      const report = await verifyLog(source, { verifier: key.signer.verifier() });
      assert.equal(report.ok, false);
      assert.equal(report.size, 8);
      assert.equal(report.leavesChecked, 8);
      assert.deepEqual(report.firstProblem?.index, 5);
      assert.match(report.firstProblem!.reason, /agent agent-a: events seq 4\.\.6 never reached the log \(a recorded gap\)/);
      assert.equal(report.problems.length, 1, `only the gap: ${JSON.stringify(report.problems)}`);
    } finally {
      source.close();
    }
  });

  test('a log without gaps verifies OK (the control for the gap test)', async () => {
    const { store, ingestor, dir } = open();
    const a = new FakeAgent('agent-a');
    const b = new FakeAgent('agent-b');
    for (let i = 0; i < 5; i++) {
      assert.equal(ingestor.handle(a.peer, a.next(1 + i)).error, '');
      assert.equal(ingestor.handle(b.peer, b.next(2)).error, '');
    }
    const key = generateNoteKey('test-collector');
    store.saveCheckpoint({ size: store.size(), root: Buffer.from(store.root()), note: signCheckpoint({ origin: 'test-collector', size: store.size(), root: store.root() }, key.signer), timeMs: Date.now() });
    store.close();
    const source = storeSource(dir);
    try {
      const report = await verifyLog(source, { verifier: key.signer.verifier() });
      assert.deepEqual(report.problems, []);
      assert.equal(report.ok, true);
      assert.equal(report.size, 25);
      assert.equal(report.signaturesChecked, 10);
    } finally {
      source.close();
    }
  });
});

function flip(b: Buffer, at: number): Buffer {
  const c = Buffer.from(b);
  c[at]! ^= 0x01;
  return c;
}
