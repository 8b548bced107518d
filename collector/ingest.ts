// Accepts an agent's signed batches into the log. A batch is all or nothing: it is stored only if
// every event belongs to the agent named by the client certificate, the sequence numbers run on from
// what the log holds, each event names the hash of its predecessor, and the agent's signature over
// the tip holds. A resend (after a lost ack) is recognised byte for byte and acknowledged again.
import type { KeyObject } from 'node:crypto';
import { ed25519FromRaw } from './pki/identity.js';
import { AuditEventType } from '../proto/index.js';
import { eventHash, verifyBatchTip } from '../proto/batch.js';
import type { BatchAck, EventBatch } from '../proto/services.js';
import type { LeafInput, LogStore } from './store/store.js';
import { leafFields, num, type DecodedEvent as Decoded } from './store/leaf-fields.js';

/** Events per batch the collector accepts; the agent's shipper stays well below. */
export const MAX_BATCH_EVENTS = 4096;
/** Entries must fit a tlog-tiles entry bundle (16-bit length prefix). */
export const MAX_EVENT_BYTES = 0xffff;

export interface AgentPeer {
  agentId: string;
  signingKey: Buffer; // raw Ed25519 public key from the certificate
  certificate: string;
}

const ZERO_HASH = Buffer.alloc(32);

export class Ingestor {
  private readonly keys = new Map<string, KeyObject>();
  stats = { batches: 0, events: 0, duplicates: 0, rejected: 0 };

  constructor(private readonly store: LogStore) {}

  handle(peer: AgentPeer, batch: EventBatch): BatchAck {
    const firstSeq = batch.firstSeq;
    const lastSeq = firstSeq + batch.events.length - 1;
    const ack: BatchAck = { firstSeq, lastSeq, firstIndex: 0, lastIndex: 0, newEvents: 0, duplicates: 0, error: '', expectedSeq: 0 };
    const reject = (why: string): BatchAck => {
      this.stats.rejected++;
      const known = this.store.agent(peer.agentId);
      return { ...ack, error: why, expectedSeq: (known?.lastSeq ?? 0) + 1 };
    };

    if (batch.agentId !== peer.agentId) return reject(`batch names agent "${batch.agentId}" but the client certificate is for "${peer.agentId}"`);
    if (batch.events.length === 0) return reject('empty batch');
    if (batch.events.length > MAX_BATCH_EVENTS) return reject(`batch of ${batch.events.length} events is over the limit of ${MAX_BATCH_EVENTS}`);
    if (!Number.isSafeInteger(firstSeq) || firstSeq < 1) return reject(`first_seq ${firstSeq} is not a sequence number`);

    const agent = this.store.registerAgent(peer.agentId, peer.signingKey, peer.certificate);
    if (!agent.signingKey.equals(peer.signingKey)) {
      return reject(`agent "${peer.agentId}" presents a signing key other than the one the log holds for it; a re-enrolled agent needs a new agent id`);
    }

    const leaves: LeafInput[] = [];
    let duplicates = 0;
    let prevHash: Buffer | undefined;
    let gap: { fromSeq: number; toSeq: number } | undefined;
    for (const [i, bytes] of batch.events.entries()) {
      const seq = firstSeq + i;
      if (bytes.length > MAX_EVENT_BYTES) return reject(`event seq ${seq} is ${bytes.length} bytes, over ${MAX_EVENT_BYTES}`);
      let ev: Decoded;
      try {
        ev = AuditEventType.decode(bytes) as unknown as Decoded;
      } catch (err) {
        return reject(`event seq ${seq} is not a valid AuditEvent: ${(err as Error).message}`);
      }
      if (ev.agentId !== peer.agentId) return reject(`event seq ${seq} names agent "${ev.agentId}"`);
      if (num(ev.seq) !== seq) return reject(`event at position ${i} has seq ${num(ev.seq)}, expected ${seq}`);
      const hash = eventHash(bytes);
      if (seq <= agent.lastSeq) {
        // Already stored: must be the very same bytes, or the agent's history has forked.
        const idx = this.store.indexOf(peer.agentId, seq);
        const stored = idx === undefined ? undefined : this.store.leaf(idx);
        if (!stored) return reject(`seq ${seq} is at or below the log's last seq ${agent.lastSeq} but was never stored (a recorded gap)`);
        if (!stored.bytes.equals(bytes)) return reject(`event seq ${seq} differs from the one the log stored at index ${idx}: the agent's history forked`);
        duplicates++;
        prevHash = hash;
        continue;
      }
      const expectedPrev = prevHash ?? (seq === agent.lastSeq + 1 ? (agent.lastSeq === 0 ? ZERO_HASH : agent.lastHash) : undefined);
      if (expectedPrev === undefined) {
        // The agent skipped sequence numbers: the events are gone. Record the hole, keep going.
        gap = { fromSeq: agent.lastSeq + 1, toSeq: seq - 1 };
      } else if (!Buffer.from(ev.prevHash ?? []).equals(expectedPrev)) {
        return reject(`event seq ${seq} does not chain: its prev_hash is not the hash of seq ${seq - 1}`);
      }
      leaves.push({ seq, bytes, hash, ...leafFields(ev) });
      prevHash = hash;
    }

    let key = this.keys.get(peer.agentId);
    if (!key) {
      key = ed25519FromRaw(agent.signingKey);
      this.keys.set(peer.agentId, key);
    }
    if (!verifyBatchTip(key, peer.agentId, lastSeq, prevHash!, batch.tipSignature)) {
      return reject(`the batch signature over seq ${lastSeq} does not verify with the agent's key`);
    }

    this.stats.batches++;
    this.stats.duplicates += duplicates;
    if (leaves.length === 0) {
      const lastIndex = this.store.indexOf(peer.agentId, lastSeq) ?? 0;
      return { ...ack, duplicates, lastIndex };
    }
    const { firstIndex, lastIndex } = this.store.appendBatch({ agentId: peer.agentId, leaves, tipSignature: batch.tipSignature, gap });
    this.stats.events += leaves.length;
    return { ...ack, firstIndex, lastIndex, newEvents: leaves.length, duplicates };
  }
}
