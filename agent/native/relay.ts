// The native relay's JavaScript side (see src/relay.h for the division of work): sessions handed
// to it, the records it sends back dispatched to each session's listener, and the commands a
// session answers with. One relay per process, started on first use.
import type { StatementTemplate } from '../../proto/session-events.js';
import { DEFAULT_MAX_MESSAGE_LENGTH } from '../pg/frames.js';
import { loadNative, type NativeAddon } from './index.js';

export const enum RelaySide { Client = 0, Server = 1 }

/** What the handler lets the relay remember about a statement it decided (src/relay.cc CacheKind). */
export const enum RelayCache {
  None = 0,
  /** This very text (and, for Parse, this statement name) is decided the same way again. */
  Exact = 1,
  /** Every text of the same shape (classify.ts shapeOf) is decided the same way. */
  Shape = 2,
}

export interface RelayAnswer {
  cache: RelayCache;
  allowName: boolean;
  serverLive: boolean;
  tag: number;
  plainResult: number;
  /** For a Q remembered by `cache`: the handler's audit template for its statement, 0 for none (src/relay.cc AuditedHead). */
  template: number;
  /** A new template's pieces (packTemplate), so that the relay can write its statements' events itself; null for none. */
  templatePieces: Buffer | null;
}

/** Mask tag bits for the detectors the relay can rule out in a row (src/relay.cc row_cannot_hit). */
export const MASK_HIT_AT = 1;
export const MASK_HIT_DIGITS = 2;

export const enum RecordKind { Replay = 1, Live = 2, End = 3, Closed = 4, Skip = 5, Audited = 6, Event = 7 }

/**
 * A RecordKind.Event's flags (src/relay.cc EventFlags): an execution of the unnamed portal, which
 * ended with its transaction; and one whose run parsed the unnamed statement first.
 */
export const EVENT_PORTAL_ENDED = 1;
export const EVENT_PARSED_UNNAMED = 2;

export interface RelayListener {
  /**
   * One record: `bytes` is a view into the batch (the batch is not reused: views may be kept).
   * `ms` is when the relay handled it, on performance.now()'s clock; `epoch` counts policy changes.
   */
  onRelayRecord(kind: RecordKind, side: RelaySide, bytes: Buffer, ms: number, epoch: number): void;
}

const HEADER = 24; // src/relay.cc RecordHeader

export interface RelayOptions {
  /** How long forwarded messages may wait before the handler hears of them (audit, not latency; config relayAuditDelayMs). */
  replayDelayMs: number;
}

export class NativeRelay {
  private readonly listeners = new Map<number, RelayListener>();
  private nextId = 1;
  // The relay stamps records with CLOCK_MONOTONIC, the clock behind process.hrtime(); this maps it
  // to performance.now(), the clock the handler measures durations with.
  private readonly clockOffset = performance.now() - Number(process.hrtime.bigint()) / 1e6;
  /** Errors thrown by a listener: logged by the owner, never allowed to stop other sessions' records. */
  onListenerError: (err: unknown) => void = () => {};

  constructor(private readonly addon: NativeAddon, opts: RelayOptions) {
    addon.relayStart((batch) => this.dispatch(batch), DEFAULT_MAX_MESSAGE_LENGTH, opts.replayDelayMs);
  }

  /**
   * Hands a session's two sockets (by descriptor) to the relay; the caller then closes its own.
   * `precheck` (packPrecheck) lets the relay audit statements itself (RecordKind.Event).
   */
  adopt(listener: RelayListener, clientFd: number, serverFd: number, precheck: Buffer | null): number {
    const id = this.nextId++;
    this.addon.relayAdopt(id, clientFd, serverFd, precheck);
    this.listeners.set(id, listener);
    return id;
  }

  write(id: number, serverLive: boolean, toServer: Buffer | null, toClient: Buffer | null): void {
    this.addon.relayWrite(id, serverLive, toServer, toClient);
  }

  /**
   * The handler's answer to a live record of `side`, with what it writes: whether (and how) the
   * relay may repeat the decision, whether the statement a Parse/Bind/Execute names may run
   * through the relay, the statement's mask tag, and for a RowDescription of a masked statement
   * the tag under which it masks nothing (0: none). See src/relay.cc.
   */
  resume(id: number, side: RelaySide, answer: RelayAnswer, toServer: Buffer | null, toClient: Buffer | null): void {
    this.addon.relayResume(id, side, answer.cache, answer.allowName, answer.serverLive, answer.tag, answer.plainResult, answer.template,
      answer.templatePieces, toServer, toClient);
  }

  close(id: number): void {
    this.addon.relayClose(id);
  }

  /** The policy changed: no session may repeat an earlier decision. Returns the new epoch. */
  forget(): number {
    return this.addon.relayForget();
  }

  /** Keeps every other thread of the process on one cpu (src/relay.h relayPinOthers); the cpu, or -1. */
  pinOthers(): number {
    return this.addon.relayPinOthers();
  }

  get sessions(): number {
    return this.listeners.size;
  }

  private dispatch(batch: Buffer): void {
    const view = new DataView(batch.buffer, batch.byteOffset, batch.length);
    for (let off = 0; off + HEADER <= batch.length; ) {
      const id = view.getUint32(off, true);
      const kind = view.getUint8(off + 4) as RecordKind;
      const side = view.getUint8(off + 5) as RelaySide;
      const epoch = view.getUint32(off + 8, true);
      const len = view.getUint32(off + 12, true);
      const ms = view.getFloat64(off + 16, true) + this.clockOffset;
      const bytes = batch.subarray(off + HEADER, off + HEADER + len);
      off += HEADER + len;
      const l = this.listeners.get(id);
      if (kind === RecordKind.Closed) this.listeners.delete(id);
      if (!l) continue;
      try {
        l.onRelayRecord(kind, side, bytes, ms, epoch);
      } catch (err) {
        this.onListenerError(err);
      }
    }
  }
}

/** What Redactor.precheck() returns: the redaction pre-checks of a session, as data. */
export interface Precheck { needles: readonly string[]; digitRuns: readonly number[]; exact: readonly string[] }

/**
 * The pre-checks of every redactor a session's statement text goes through, packed for relayAdopt
 * (src/statement_event.h RedactionPrecheck::parse), or null when the relay could not run them
 * exactly (a needle that is not ASCII): then the handler audits every statement itself.
 */
export function packPrecheck(checks: readonly Precheck[]): Buffer | null {
  const parts: Buffer[] = [];
  const entry = (kind: number, n: number, bytes?: Buffer) => {
    const head = Buffer.alloc(5);
    head[0] = kind;
    head.writeUInt32LE(n, 1);
    parts.push(head);
    if (bytes) parts.push(bytes);
  };
  for (const c of checks) {
    for (const needle of c.needles) {
      if (!/^[\x01-\x7f]+$/.test(needle)) return null;
      entry(0, needle.length, Buffer.from(needle, 'latin1'));
    }
    for (const n of c.digitRuns) entry(1, n);
    for (const form of c.exact) {
      const bytes = Buffer.from(form, 'utf8');
      if (bytes.length > 0) entry(2, bytes.length, bytes);
    }
  }
  return Buffer.concat(parts);
}

/**
 * A template's encoded pieces packed for relayResume (src/statement_event.h StatementPieces::parse).
 * With `text`, the template of statements that all have that text (a prepared statement's
 * executions): the text goes into the head, and the relay writes none of its own.
 */
export function packTemplate(t: StatementTemplate, text?: string): Buffer {
  const parts: Uint8Array[] = [];
  const pieces = text === undefined ? [t.head, t.subject, t.decision, t.tail] : [t.headWithText(text), new Uint8Array(0), t.decision, t.tail];
  for (const piece of pieces) {
    const n = Buffer.alloc(4);
    n.writeUInt32LE(piece.length);
    parts.push(n, piece);
  }
  return Buffer.concat(parts);
}

let relay: NativeRelay | undefined;

/** The process's relay, or undefined when the addon is not available (see loadNative). */
export function nativeRelay(opts: RelayOptions): NativeRelay | undefined {
  if (relay) return relay;
  const { addon } = loadNative();
  if (!addon) return undefined;
  relay = new NativeRelay(addon, opts);
  return relay;
}
