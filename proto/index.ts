// Loads the wire contract (proto/runguard/v1/*.proto) with protobufjs at run time, so the .proto
// files stay the single source of truth and there is no generated code to keep in step.
import path from 'node:path';
import protobuf from 'protobufjs';
import { PROTO_DIR } from '../agent/paths.js';

// Imports name files from the proto directory ("runguard/v1/events.proto"), as protoc -I proto would.
const loader = new protobuf.Root();
loader.resolvePath = (origin, target) => (target.startsWith('runguard/') ? path.join(PROTO_DIR, target) : protobuf.util.path.resolve(origin, target));
export const root = loader.loadSync(['events.proto', 'ingest.proto', 'approvals.proto'].map((f) => path.join(PROTO_DIR, 'runguard/v1', f)));
root.resolveAll();

export const AuditEventType = root.lookupType('runguard.v1.AuditEvent');
export const EventKindEnum = root.lookupEnum('runguard.v1.EventKind');
export const IdentitySourceEnum = root.lookupEnum('runguard.v1.IdentitySource');

export const EventKind = EventKindEnum.values as Readonly<Record<string, number>>;
export const IdentitySource = IdentitySourceEnum.values as Readonly<Record<string, number>>;

/** Shapes used when building events; protobufjs accepts these plain objects. */
export interface ProcessInfo {
  pid?: number; ppid?: number; uid?: number; user?: string; exe?: string; argv?: string[];
  argvTruncated?: boolean; cwd?: string; cgroup?: string; cgroupId?: number | string;
  containerId?: string; comm?: string; tid?: number;
}
export interface JobInfo {
  provider?: string; repository?: string; workflow?: string; runId?: string; runAttempt?: string;
  job?: string; actor?: string; ref?: string; sha?: string; runner?: string; url?: string;
  source?: number; sourcePid?: number;
}
export interface EndpointInfo { address?: string; port?: number; hostname?: string }

/** An event as the emitter fills it in; agentId, seq, prevHash and time are set by the spool. */
export interface EventDraft {
  kind: number;
  sessionId?: string;
  requestId?: string;
  process?: ProcessInfo;
  job?: JobInfo;
  destination?: EndpointInfo;
  source?: EndpointInfo;
  agent?: Record<string, unknown>;
  notice?: { level: string; code: string; message: string };
  exec?: { filename?: string; bootTimeNs?: number | string };
  exit?: { exitCode?: number; signal?: number; bootTimeNs?: number | string };
  connectionOpen?: { protocol?: string; ipFamily?: number; socketCookie?: number | string };
  connectionClose?: {
    protocol?: string; bytesUp?: number; bytesDown?: number; durationMs?: number;
    reason?: string; error?: string; relay?: string; relaySummarized?: number; relayEncoded?: number;
  };
  connectionRefused?: { reason?: string; error?: string };
  dbSession?: {
    protocol?: string; database?: string; user?: string; clientUser?: string; application?: string;
    clientTls?: boolean; serverTls?: boolean; auth?: string; backendPid?: number;
  };
  statement?: StatementInfo;
  approvalRequested?: {
    approvalId?: string; protocol?: string; operationType?: string; text?: string; objects?: string[];
    rule?: string; approvers?: string; approvals?: number; timeoutMs?: number;
  };
  approvalDecided?: { approvalId?: string; outcome?: string; approvers?: string[]; reason?: string; waitedMs?: number; rule?: string };
}

export interface StatementInfo {
  protocol?: string; text?: string; type?: string; objects?: string[]; params?: string[];
  decision?: { action?: string; rule?: string; reason?: string; outcome?: string; approvalId?: string };
  rows?: number; commandTag?: string; durationUs?: number; errorCode?: string; error?: string;
  maskedValues?: number; database?: string; user?: string; parseError?: string; prepared?: boolean;
}

/** What only the spool knows when it seals an event into the chain. */
export interface EventEnvelope {
  agentId: string;
  seq: number;
  prevHash: Uint8Array;
  timeMs: number;
}

/**
 * An event that writes its own bytes once sealed (proto/session-events.ts). encode() may return a
 * view into a buffer its next call reuses: the spool consumes the bytes before encoding another.
 */
export interface SelfEncodingEvent {
  readonly kind: number;
  encode(env: EventEnvelope): Uint8Array;
}

export function isSelfEncoding(e: EventDraft | SelfEncodingEvent): e is SelfEncodingEvent {
  return typeof (e as SelfEncodingEvent).encode === 'function';
}

/** The draft with the spool's fields, as encodeEvent() takes it. */
export function sealedEvent(draft: EventDraft, env: EventEnvelope): Record<string, unknown> {
  return {
    ...draft, agentId: env.agentId, seq: env.seq, prevHash: env.prevHash,
    time: { seconds: Math.floor(env.timeMs / 1000), nanos: (env.timeMs % 1000) * 1_000_000 },
  };
}

/**
 * Encodes a complete event (with agentId, seq, prevHash, time). 64-bit fields take a number or a
 * decimal string; fromObject coerces, unknown fields are ignored.
 */
export function encodeEvent(event: Record<string, unknown>): Uint8Array {
  return AuditEventType.encode(AuditEventType.fromObject(event)).finish();
}

export function decodeEvent(bytes: Uint8Array): protobuf.Message {
  return AuditEventType.decode(bytes);
}

function timestampToRfc3339(ts: { seconds?: string | number; nanos?: number }): string {
  const seconds = Number(ts.seconds ?? 0);
  const nanos = ts.nanos ?? 0;
  const base = new Date(seconds * 1000).toISOString().slice(0, 19);
  if (!nanos) return `${base}Z`;
  const frac = String(nanos).padStart(9, '0').replace(/0+$/, '');
  return `${base}.${frac}Z`;
}

/**
 * The proto3 JSON mapping of an AuditEvent: lowerCamelCase names, enums by name, 64-bit integers
 * as strings, bytes as base64, Timestamp as RFC 3339, default values omitted.
 */
export function eventToJson(bytes: Uint8Array): Record<string, unknown> {
  const msg = AuditEventType.decode(bytes);
  const obj = AuditEventType.toObject(msg, {
    longs: String, enums: String, bytes: String, defaults: false, oneofs: false,
  }) as Record<string, unknown>;
  if (obj.time && typeof obj.time === 'object') obj.time = timestampToRfc3339(obj.time as { seconds?: string; nanos?: number });
  return obj;
}
