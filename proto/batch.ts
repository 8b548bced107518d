// The batch signature of the ingest contract (proto/runguard/v1/ingest.proto). Each event carries
// the SHA-256 of its predecessor, so a signature over the newest event's hash commits to the agent's
// whole chain: the collector can neither drop, reorder nor forge an event without breaking it.
import { hash, sign, verify, type KeyObject } from 'node:crypto';

export function eventHash(bytes: Uint8Array): Buffer {
  // One-shot hashing: no Hash object per event (verify hashes every event in the log).
  return hash('sha256', bytes, 'buffer');
}

export function batchTipMessage(agentId: string, lastSeq: number, lastEventHash: Uint8Array): Buffer {
  return Buffer.from(`runguard.v1.batch\n${agentId}\n${lastSeq}\n${Buffer.from(lastEventHash).toString('base64')}\n`);
}

export function signBatchTip(key: KeyObject, agentId: string, lastSeq: number, lastEventHash: Uint8Array): Buffer {
  return sign(null, batchTipMessage(agentId, lastSeq, lastEventHash), key);
}

export function verifyBatchTip(key: KeyObject, agentId: string, lastSeq: number, lastEventHash: Uint8Array, signature: Uint8Array): boolean {
  try {
    return verify(null, batchTipMessage(agentId, lastSeq, lastEventHash), key, signature);
  } catch {
    return false;
  }
}
