// The collector's storage, behind one interface: SQLite is the embedded default; a PostgreSQL
// backend for larger fleets implements the same contract.
import type { AgentStatusMsg } from '../../proto/services.js';

/** What the log knows of an agent: enough to check the next batch's chain and signature. */
export interface AgentRecord {
  agentId: string;
  signingKey: Buffer;      // raw 32-byte Ed25519 public key, from the agent's certificate
  certificate: string;     // PEM, as presented at first contact
  lastSeq: number;
  lastHash: Buffer;        // SHA-256 of the agent's newest stored event
  lastIndex: number;       // log index of that event
  lastSeenMs: number;
}

/** An event ready to become a leaf, with the columns the query API filters on. */
export interface LeafInput {
  seq: number;
  bytes: Buffer;
  hash: Buffer;            // SHA-256(bytes): the agent chain hash, not the Merkle leaf hash
  timeMs: number;
  kind: number;
  sessionId: string;
  repository: string;
  workflow: string;
  runId: string;
  job: string;
  actor: string;
  destination: string;
}

export interface AppendBatch {
  agentId: string;
  leaves: LeafInput[];
  tipSignature: Buffer;
  /** Sequence numbers the agent skipped (lost before they reached us): recorded, never hidden. */
  gap?: { fromSeq: number; toSeq: number };
}

export interface StoredLeaf {
  index: number;
  agentId: string;
  seq: number;
  bytes: Buffer;
}

export interface EventQuery {
  agentId?: string;
  sessionId?: string;
  kind?: number;
  repository?: string;
  runId?: string;
  job?: string;
  sinceMs?: number;
  untilMs?: number;
  afterIndex?: number;
  limit?: number;
}

export interface StoredCheckpoint {
  size: number;
  root: Buffer;
  note: string;
  timeMs: number;
}

/** An agent's latest heartbeat: operational state, kept apart from the log (not a leaf, not signed). */
export interface StoredAgentStatus {
  agentId: string;
  receivedMs: number;
  status: AgentStatusMsg;
}

export interface LogStore {
  size(): number;
  agent(agentId: string): AgentRecord | undefined;
  agents(): AgentRecord[];
  /** Registers an agent at first contact; returns the stored record (existing or new). */
  registerAgent(agentId: string, signingKey: Buffer, certificate: string): AgentRecord;
  /** Durably appends a batch (leaves, tree nodes, signature, agent state) in one transaction. */
  appendBatch(batch: AppendBatch): { firstIndex: number; lastIndex: number };
  /** Index of an agent's event by seq, if stored. */
  indexOf(agentId: string, seq: number): number | undefined;
  leaf(index: number): StoredLeaf | undefined;
  leaves(from: number, to: number): StoredLeaf[];
  /** Hash of the perfect subtree node at (level, index); level 0 holds the leaf hashes. */
  getNode(level: number, index: number): Uint8Array;
  batchSignatures(agentId: string): { lastSeq: number; signature: Buffer }[];
  gaps(): { agentId: string; fromSeq: number; toSeq: number; atIndex: number; detectedMs: number }[];
  latestCheckpoint(): StoredCheckpoint | undefined;
  saveCheckpoint(cp: StoredCheckpoint): void;
  queryEvents(q: EventQuery): StoredLeaf[];
  /** Replaces the agent's status with this one (only the latest is kept). */
  saveAgentStatus(agentId: string, status: AgentStatusMsg, receivedMs: number): void;
  /** The latest status of every agent that sent one, by agent id. */
  agentStatuses(): StoredAgentStatus[];
  close(): void;
}
