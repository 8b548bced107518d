// gRPC service definitions for @grpc/grpc-js, built from the same protobufjs root as everything
// else, so the .proto files stay the only description of the wire.
import type { ServiceDefinition, MethodDefinition } from '@grpc/grpc-js';
import type protobuf from 'protobufjs';
import { root } from './index.js';

const CONVERSION: protobuf.IConversionOptions = { longs: Number, bytes: Buffer, defaults: true, arrays: true };

function codec<T>(typeName: string) {
  const type = root.lookupType(typeName);
  return {
    serialize: (value: T): Buffer => Buffer.from(type.encode(type.fromObject(value as Record<string, unknown>)).finish()),
    deserialize: (bytes: Buffer): T => type.toObject(type.decode(bytes), CONVERSION) as T,
  };
}

export function method<Req, Res>(service: string, name: string, req: string, res: string, requestStream: boolean, responseStream: boolean): MethodDefinition<Req, Res> {
  const q = codec<Req>(`runguard.v1.${req}`);
  const r = codec<Res>(`runguard.v1.${res}`);
  return {
    path: `/runguard.v1.${service}/${name}`, requestStream, responseStream,
    requestSerialize: q.serialize, requestDeserialize: q.deserialize,
    responseSerialize: r.serialize, responseDeserialize: r.deserialize,
  };
}

export interface EventBatch {
  agentId: string;
  firstSeq: number;
  events: Buffer[];
  tipSignature: Buffer;
}

export interface BatchAck {
  firstSeq: number;
  lastSeq: number;
  firstIndex: number;
  lastIndex: number;
  newEvents: number;
  duplicates: number;
  error: string;
  expectedSeq: number;
}

export interface SignedCheckpoint { note: string }
export interface InclusionProofRequest { index: number; treeSize: number }
export interface ConsistencyProofRequest { fromSize: number; toSize: number }
export interface Proof { hashes: Buffer[]; leafHash: Buffer }

/** runguard.v1.AgentStatus as protobufjs hands it over (defaults filled in, 64-bit as numbers). */
export interface AgentStatusMsg {
  agentId: string;
  version: string;
  sentMs: number;
  startedMs: number;
  uptimeMs: number;
  stopping: boolean;
  bpf: { state: string; programs: string[]; links: number; watchedCgroups: number; failOpen: boolean; execEventsLost: number; error: string } | null;
  proxy: { port: number; activeSessions: number; acceptedSessions: number; refusedConnections: number } | null;
  spool: {
    backlogEvents: number; backlogBytes: number; oldestUnackedAgeMs: number; bytes: number; maxBytes: number;
    state: string; refusing: boolean; reason: string; lastSeq: number; ackedSeq: number;
  } | null;
  shipper: { connected: boolean; lastAckMs: number; lastError: string; lastErrorMs: number; reconnects: number; batches: number } | null;
  witness: {
    checkpointSize: number; lastCheckMs: number; lastCheckOk: boolean; lastProblem: string; lastFailureMs: number;
    checks: number; failures: number;
  } | null;
}

export interface HeartbeatAck { receivedMs: number }

export const IngestService = {
  stream: method<EventBatch, BatchAck>('Ingest', 'Stream', 'EventBatch', 'BatchAck', true, true),
  heartbeat: method<AgentStatusMsg, HeartbeatAck>('Ingest', 'Heartbeat', 'AgentStatus', 'HeartbeatAck', false, false),
} satisfies ServiceDefinition;

export const LogService = {
  getCheckpoint: method<Record<string, never>, SignedCheckpoint>('Log', 'GetCheckpoint', 'CheckpointRequest', 'SignedCheckpoint', false, false),
  getInclusionProof: method<InclusionProofRequest, Proof>('Log', 'GetInclusionProof', 'InclusionProofRequest', 'Proof', false, false),
  getConsistencyProof: method<ConsistencyProofRequest, Proof>('Log', 'GetConsistencyProof', 'ConsistencyProofRequest', 'Proof', false, false),
} satisfies ServiceDefinition;

export interface ApprovalOperationMsg { type: string; text: string; objects: string[]; database: string; user: string }

/** An approval request; job, process and target use the field names of events.proto. */
export interface ApprovalRequestMsg {
  requestId: string;
  agentId: string;
  sessionId: string;
  job: Record<string, unknown> | null;
  process: Record<string, unknown> | null;
  target: { address: string; port: number; hostname: string } | null;
  protocol: string;
  operation: ApprovalOperationMsg | null;
  rule: string;
  ruleReason: string;
  approvers: string;
  approvals: number;
  timeoutMs: number;
}

export const APPROVAL_STATES = ['unspecified', 'pending', 'approved', 'denied', 'expired', 'cancelled'] as const;
export type ApprovalStateName = (typeof APPROVAL_STATES)[number];

export interface ApprovalVoteMsg { approver: string; verdict: string; reason: string; timeMs: number }

export interface ApprovalUpdateMsg {
  requestId: string;
  /** ApprovalState enum value: index into APPROVAL_STATES. */
  state: number;
  approvedBy: string[];
  deniedBy: string;
  reason: string;
  approvalsNeeded: number;
  deadlineMs: number;
  votes: ApprovalVoteMsg[];
}

export interface CancelApprovalRequestMsg { requestId: string; agentId: string; reason: string }

export const ApprovalsService = {
  request: method<ApprovalRequestMsg, ApprovalUpdateMsg>('Approvals', 'Request', 'ApprovalRequest', 'ApprovalUpdate', false, true),
  cancel: method<CancelApprovalRequestMsg, ApprovalUpdateMsg>('Approvals', 'Cancel', 'CancelApprovalRequest', 'ApprovalUpdate', false, false),
} satisfies ServiceDefinition;
