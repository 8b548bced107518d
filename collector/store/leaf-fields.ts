// The columns a leaf is indexed and rolled up by, read from its decoded AuditEvent. One function for
// the ingest path and for rebuilding the columns of an older store, so the two can never disagree.
import { AuditEventType, EventKind } from '../../proto/index.js';
import type { LeafInput } from './store.js';

type Long = number | { toNumber(): number };

/** The AuditEvent fields read here, as protobufjs decodes them. */
export interface DecodedEvent {
  agentId?: string;
  seq?: Long;
  prevHash?: Uint8Array;
  time?: { seconds?: Long; nanos?: number };
  kind?: number;
  sessionId?: string;
  job?: { provider?: string; repository?: string; workflow?: string; runId?: string; job?: string; actor?: string; ref?: string; sha?: string; url?: string; source?: number };
  destination?: { address?: string; port?: number };
  statement?: { decision?: { action?: string }; maskedValues?: number };
}

export const num = (v: Long | undefined): number => (v === undefined ? 0 : typeof v === 'number' ? v : v.toNumber());

export type LeafFields = Omit<LeafInput, 'seq' | 'bytes' | 'hash'>;

export function leafFields(ev: DecodedEvent): LeafFields {
  const t = ev.time;
  const kind = ev.kind ?? 0;
  const j = ev.job;
  let decision = '';
  if (kind === EventKind.EVENT_KIND_STATEMENT) {
    decision = ev.statement?.decision?.action || 'allow';
    // Indexed is what happened, not which rule kind matched: a mask rule that masked nothing (it
    // matched a statement returning no such column) let the statement through unchanged.
    if (decision === 'mask' && !ev.statement?.maskedValues) decision = 'allow';
  }
  else if (kind === EventKind.EVENT_KIND_CONNECTION_REFUSED) decision = 'refused';
  return {
    timeMs: t ? num(t.seconds) * 1000 + Math.floor((t.nanos ?? 0) / 1e6) : 0,
    kind,
    sessionId: ev.sessionId ?? '',
    repository: j?.repository ?? '', workflow: j?.workflow ?? '', runId: j?.runId ?? '',
    job: j?.job ?? '', actor: j?.actor ?? '',
    destination: ev.destination?.address ? `${ev.destination.address}:${ev.destination.port ?? 0}` : '',
    decision,
    jobMeta: j ? { provider: j.provider ?? '', ref: j.ref ?? '', sha: j.sha ?? '', url: j.url ?? '', source: j.source ?? 0 } : undefined,
  };
}

export function decodeLeafFields(bytes: Uint8Array): LeafFields {
  return leafFields(AuditEventType.decode(bytes) as unknown as DecodedEvent);
}
