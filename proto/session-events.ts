// Session events encoded without protobufjs's per-event object conversion. A session's identity
// (session id, process, job, both endpoints) is the bulk of every event it emits and never changes,
// so it is encoded once, by protobufjs, when the session starts; each event then writes only its
// own fields around those bytes. A protobuf message is the concatenation of its fields, and the
// pieces are laid out in field-number order exactly as protobufjs lays out a whole event, so the
// bytes are identical to encodeEvent()'s (test/unit/event-encoding.test.ts checks that). Either way
// the spool hashes and stores the bytes as produced; nothing is ever re-encoded.
import {
  AuditEventType, encodeEvent, sealedEvent, type EndpointInfo, type EventDraft, type EventEnvelope, type JobInfo,
  type ProcessInfo, type SelfEncodingEvent, type StatementInfo,
} from './index.js';
import { UnsupportedValue, WireWriter } from './wire-writer.js';

/** What a session adds to every event it emits. */
export interface SessionFields {
  sessionId: string;
  process: ProcessInfo;
  job: JobInfo;
  destination: EndpointInfo;
  source: EndpointInfo;
}

/** Event fields a session's handler fills in. */
export type SessionDetail = Omit<EventDraft, keyof SessionFields>;

/**
 * The fields of a Statement that its decision fixes (everything but the text, the bound values and
 * the outcome), encoded once. A handler that audits many statements under one decision (the
 * PostgreSQL handler's summarised queries and executions) writes only those of each around these
 * bytes.
 */
export type StatementBase = Omit<StatementInfo, 'text' | 'params' | StatementOutcomeField>;
type StatementOutcomeField = 'rows' | 'commandTag' | 'durationUs' | 'errorCode' | 'error' | 'maskedValues';
export type StatementOutcome = Pick<StatementInfo, StatementOutcomeField>;

export class StatementTemplate {
  // In field order, with what each statement adds between them: head (1), text (2), subject (3, 4),
  // params (5), decision (6), outcome (7 to 12), tail (13 to 16).
  readonly head: Uint8Array;
  readonly subject: Uint8Array;
  readonly decision: Uint8Array;
  readonly tail: Uint8Array;

  /** Throws UnsupportedValue for a base the wire writer does not take (see SessionEventEncoder). */
  constructor(readonly base: Readonly<StatementBase>) {
    const w = new WireWriter(256);
    const piece = (write: (w: WireWriter, s: StatementBase) => void) => {
      write(w.reset(), base);
      return Buffer.from(w.view());
    };
    this.head = piece(writeHead);
    this.subject = piece(writeSubject);
    this.decision = piece(writeDecision);
    this.tail = piece(writeTail);
  }

  /**
   * The head, the text and the subject in one piece: for statements whose text is fixed too (the
   * executions of a prepared statement), whose events the native relay writes with an empty text
   * in between (agent/native/relay.ts packTemplate).
   */
  headWithText(text: string): Uint8Array {
    const w = new WireWriter(this.head.length + this.subject.length + text.length + 8);
    w.raw(this.head);
    w.stringField(2, text);
    w.raw(this.subject);
    return Buffer.from(w.view());
  }
}

/** A STATEMENT event made of a template, its own text (and bound values) and its outcome. */
export interface TemplatedStatementDetail {
  kind: number;
  requestId: string;
  templated: { template: StatementTemplate; text: string; params?: string[]; outcome: StatementOutcome };
}

/**
 * A STATEMENT event whose Statement field (28, key and length included) is already encoded: the
 * native relay writes it from a StatementTemplate for the statements it audits itself
 * (agent/native/src/statement_event.h).
 */
export interface EncodedStatementDetail {
  kind: number;
  requestId: string;
  statementField: Uint8Array;
}

type Detail = SessionDetail | TemplatedStatementDetail | EncodedStatementDetail;

// runguard.v1.AuditEvent, Timestamp and Statement field numbers (proto/runguard/v1/events.proto).
const F = { agentId: 1, seq: 2, prevHash: 3, time: 4, kind: 5, requestId: 7, statement: 28 } as const;
const MAX_ENUM = 0x7fffffff;
const MAX_UINT32 = 0xffffffff;

// One buffer for every event: the spool copies and hashes the bytes before it encodes another.
const scratch = new WireWriter(16 * 1024);

/** A session's event fields that never change, encoded (what agent/native/src/relay_events.h writes around its events). */
export interface EncodedSessionFields {
  /** session_id (6), key and length included. */
  readonly sessionIdField: Uint8Array;
  /** process, job, destination and source (8 to 11). */
  readonly identityFields: Uint8Array;
}

/** agent_id (1) as every event of this agent begins: key and length included, nothing for an empty id. */
export function agentIdField(agentId: string): Uint8Array {
  const w = new WireWriter(64);
  w.stringField(F.agentId, agentId);
  return Buffer.from(w.view());
}

export class SessionEventEncoder implements EncodedSessionFields {
  readonly sessionIdField: Uint8Array;
  readonly identityFields: Uint8Array;

  /** The fields are snapshotted: the session's objects are fixed for its lifetime. */
  constructor(private readonly fixed: SessionFields) {
    // request_id (7) sits between session_id (6) and process (8): two pieces keep the field order.
    this.sessionIdField = Buffer.from(encodeEvent({ sessionId: fixed.sessionId }));
    this.identityFields = Buffer.from(encodeEvent({ process: fixed.process, job: fixed.job, destination: fixed.destination, source: fixed.source }));
  }

  event(detail: Detail): SelfEncodingEvent {
    return { kind: detail.kind, encode: (env) => this.encode(env, detail) };
  }

  /** The event's bytes; a view into a buffer that the next call overwrites. */
  encode(env: EventEnvelope, detail: Detail): Uint8Array {
    const w = scratch.reset();
    try {
      w.stringField(F.agentId, env.agentId);
      w.uintField(F.seq, env.seq);
      w.bytesField(F.prevHash, env.prevHash);
      w.fork(F.time);
      w.uintField(1, Math.floor(env.timeMs / 1000));
      w.uintField(2, (env.timeMs % 1000) * 1_000_000);
      w.ldelim();
      w.uintField(F.kind, detail.kind, MAX_ENUM);
      w.raw(this.sessionIdField);
      w.stringField(F.requestId, detail.requestId);
      w.raw(this.identityFields);
      if ('statementField' in detail) {
        w.raw(detail.statementField);
      } else if ('templated' in detail) {
        const { template, text, params, outcome } = detail.templated;
        w.fork(F.statement);
        w.raw(template.head);
        w.stringField(2, text);
        w.raw(template.subject);
        w.repeatedStringField(5, params);
        w.raw(template.decision);
        writeOutcome(w, outcome);
        w.raw(template.tail);
        w.ldelim();
      } else if (isStatementOnly(detail)) {
        w.fork(F.statement);
        writeStatement(w, detail.statement!);
        w.ldelim();
      } else {
        // Other session events are a few per connection: protobufjs encodes their detail field.
        const { kind: _kind, requestId: _requestId, ...rest } = detail;
        w.raw(encodeEvent(rest));
      }
      return w.view();
    } catch (err) {
      if (!(err instanceof UnsupportedValue)) throw err;
      // A value the writer does not take (a 64-bit count past 2^53, a non-string...): protobufjs
      // converts or rejects it, whichever it always did.
      return encodeEvent(sealedEvent({ ...draftOf(detail), ...this.fixed }, env));
    }
  }
}

function draftOf(d: Detail): SessionDetail {
  if ('statementField' in d) {
    // The field alone is an AuditEvent with only its statement set.
    const { statement } = AuditEventType.toObject(AuditEventType.decode(d.statementField), { longs: Number }) as { statement: StatementInfo };
    return { kind: d.kind, requestId: d.requestId, statement };
  }
  if (!('templated' in d)) return d;
  const { template, text, params, outcome } = d.templated;
  const statement: StatementInfo = { ...template.base, text, ...outcome };
  if (params !== undefined) statement.params = params;
  return { kind: d.kind, requestId: d.requestId, statement };
}

function isStatementOnly(d: SessionDetail): boolean {
  if (d.statement == null) return false;
  for (const key in d) {
    if (key !== 'kind' && key !== 'requestId' && key !== 'statement' && (d as Record<string, unknown>)[key] != null) return false;
  }
  return true;
}

// A Statement in field order, in the pieces a StatementTemplate keeps.
function writeStatement(w: WireWriter, s: StatementInfo): void {
  if (typeof s !== 'object') throw new UnsupportedValue('statement is not an object');
  writeHead(w, s);
  w.stringField(2, s.text);
  writeSubject(w, s);
  w.repeatedStringField(5, s.params);
  writeDecision(w, s);
  writeOutcome(w, s);
  writeTail(w, s);
}

function writeHead(w: WireWriter, s: StatementBase): void {
  w.stringField(1, s.protocol);
}

function writeSubject(w: WireWriter, s: StatementBase): void {
  w.stringField(3, s.type);
  w.repeatedStringField(4, s.objects);
}

function writeDecision(w: WireWriter, s: StatementBase): void {
  const d = s.decision;
  if (d != null) {
    if (typeof d !== 'object') throw new UnsupportedValue('decision is not an object');
    w.fork(6);
    w.stringField(1, d.action);
    w.stringField(2, d.rule);
    w.stringField(3, d.reason);
    w.stringField(4, d.outcome);
    w.stringField(5, d.approvalId);
    w.ldelim();
  }
}

function writeOutcome(w: WireWriter, s: StatementOutcome): void {
  w.uintField(7, s.rows);
  w.stringField(8, s.commandTag);
  w.uintField(9, s.durationUs);
  w.stringField(10, s.errorCode);
  w.stringField(11, s.error);
  w.uintField(12, s.maskedValues, MAX_UINT32);
}

function writeTail(w: WireWriter, s: StatementBase): void {
  w.stringField(13, s.database);
  w.stringField(14, s.user);
  w.stringField(15, s.parseError);
  w.boolField(16, s.prepared);
}
