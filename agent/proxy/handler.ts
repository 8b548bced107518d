// The one interface between the proxy and a protocol handler. A handler owns one protocol in both
// directions; it gets a session (the job's socket, who the job is, where it wanted to go) and
// returns how the session ended. Everything it wants recorded goes through session.emit().
import type net from 'node:net';
import type { Logger } from 'pino';
import type { EventDraft, JobInfo, ProcessInfo } from '../../proto/index.js';
import type { EncodedSessionFields, EncodedStatementDetail, TemplatedStatementDetail } from '../../proto/session-events.js';
import type { Origin } from '../bpf/layout.js';
import type { Redactor } from '../redact/redactor.js';
import type { ReadBuffer } from '../net/read-buffer.js';

export interface Endpoint {
  address: string;
  port: number;
}

/** Event fields a handler fills in; the session adds its id, process, job and endpoints. */
export type SessionEventDraft = Omit<EventDraft, 'sessionId' | 'process' | 'job' | 'destination' | 'source'> | TemplatedStatementDetail | EncodedStatementDetail;

export interface Session {
  readonly id: string;
  readonly client: net.Socket;
  readonly origin: Origin;
  readonly destination: Endpoint;
  readonly source: Endpoint;
  readonly process: ProcessInfo;
  readonly job: JobInfo;
  /** Redacts the job's own secrets (from its environment) and every detector's hits. */
  readonly redactor?: Redactor;
  readonly log: Logger;
  /** Appends an event about this session to the spool (durably, with group commit). */
  emit(draft: SessionEventDraft): void;
  /** emit()'s fixed fields, encoded: for the native relay to write this session's statement events itself. */
  readonly eventFields?: EncodedSessionFields;
  /**
   * Opens the connection to the original destination; rejects with a message fit for an event.
   * With `reads`, the socket reads through that buffer (net.Socket `onread`) instead of 'data' events.
   */
  connectUpstream(reads?: ReadBuffer): Promise<net.Socket>;
  /** Aborted when the agent is stopping: the handler should end the session. */
  readonly stopping: AbortSignal;
}

export type EndReason =
  | 'client_closed' | 'upstream_closed' | 'client_error' | 'upstream_error' | 'upstream_unreachable'
  | 'agent_stopping' | 'protocol_error';

export interface SessionEnd {
  reason: EndReason;
  error?: string;
  bytesUp: number;
  bytesDown: number;
  /** Set when the session's messages were relayed by the native data path (agent/native). */
  relay?: 'native';
  /** Statements the native relay summarised instead of replaying (see relay.cc Session::held). */
  relaySummarized?: number;
  /** Of those, the statements whose event the relay encoded itself (src/statement_event.h). */
  relayEncoded?: number;
}

export interface ProtocolHandler {
  /** Name recorded in connection events: tcp, postgres, ... */
  readonly name: string;
  run(session: Session): Promise<SessionEnd>;
}
