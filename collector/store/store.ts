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
  /** Policy action of a statement (allow, deny, mask, review) or "refused" for a refused connection. */
  decision: string;
  /** What the job rollup shows beside the key fields; not indexed per leaf. */
  jobMeta?: JobMeta;
}

export interface JobMeta {
  provider: string;
  ref: string;
  sha: string;
  url: string;
  source: number;
}

/** One CI job as the dashboard lists it: kept up to date as its events are appended. */
export interface JobSummary {
  key: string;            // "<repository>|<run_id>|<job>", or "agent:<id>" for events without CI identity
  agentId: string;
  provider: string;
  repository: string;
  workflow: string;
  runId: string;
  job: string;
  actor: string;
  ref: string;
  sha: string;
  url: string;
  source: number;
  firstMs: number;
  lastMs: number;
  events: number;
  statements: number;
  denied: number;
  masked: number;
  reviewed: number;
  refused: number;
  lastIndex: number;
}

export interface JobQuery {
  repository?: string;
  workflow?: string;
  runId?: string;
  actor?: string;
  sinceMs?: number;
  untilMs?: number;
  /** Only jobs with at least one deny, review or refused connection. */
  flagged?: boolean;
  limit?: number;
  /** Pagination: jobs last active before this time. */
  beforeMs?: number;
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
  /** A JobSummary key: the events of that job (see jobKey). */
  jobKey?: string;
  workflow?: string;
  actor?: string;
  destination?: string;
  decision?: string;
  /** Substring of the stored event bytes (statement text, argv, names): a bounded scan. */
  text?: string;
  sinceMs?: number;
  untilMs?: number;
  afterIndex?: number;
  /** Newest first, strictly below this index (pagination of the dashboard's lists). */
  beforeIndex?: number;
  /** Newest first instead of oldest first. */
  descending?: boolean;
  limit?: number;
}

export interface SessionSummary {
  sessionId: string;
  firstMs: number;
  lastMs: number;
  firstIndex: number;
  events: number;
  statements: number;
  flagged: number;       // deny, review, refused
  destination: string;
}

export interface ActivityPoint {
  index: number;
  timeMs: number;
  kind: number;
  sessionId: string;
  decision: string;
}

/** Counts of statement decisions per time bucket, for the dashboard's chart. */
export interface DecisionBucket {
  startMs: number;
  counts: Record<string, number>;
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
  jobs(q: JobQuery): JobSummary[];
  job(key: string): JobSummary | undefined;
  /** The sessions of a job, oldest first, with what happened in each. */
  jobSessions(key: string, limit: number): SessionSummary[];
  /** Index, time, kind, session and decision of a job's newest `limit` events, oldest first. */
  jobActivity(key: string, limit: number): ActivityPoint[];
  /** Decisions counted per bucket of `bucketMs` (a multiple of a minute) in [sinceMs, untilMs). */
  decisionCounts(sinceMs: number, untilMs: number, bucketMs: number): DecisionBucket[];
  /** Jobs whose last event is at or after `sinceMs`, and how many of those have a deny, review or refusal. */
  jobCounts(sinceMs: number): { active: number; flagged: number };
  /** Replaces the agent's status with this one (only the latest is kept). */
  saveAgentStatus(agentId: string, status: AgentStatusMsg, receivedMs: number): void;
  /** The latest status of every agent that sent one, by agent id. */
  agentStatuses(): StoredAgentStatus[];
  close(): void;
}
