// The native relay's JavaScript side (see src/relay.h for the division of work): sessions handed
// to it, the records it sends back dispatched to each session's listener, and the commands a
// session answers with. One relay per process, started on first use.
import { agentIdField, type StatementTemplate } from '../../proto/session-events.js';
import { EventKind } from '../../proto/index.js';
import type { RunWriter } from '../events/spool.js';
import { DEFAULT_MAX_MESSAGE_LENGTH } from '../pg/frames.js';
import { loadNative, type NativeAddon, type RelaySendStats } from './index.js';

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
   * One record: `bytes` is the listener's to keep (a view into a copy of the batch, not into the
   * buffer the addon reuses). `ms` is when the relay handled it, on performance.now()'s clock;
   * `epoch` counts policy changes.
   */
  onRelayRecord(kind: RecordKind, side: RelaySide, bytes: Buffer, ms: number, epoch: number): void;
}

const HEADER = 24; // src/relay_records.h RecordHeader
const EMPTY = Buffer.alloc(0);

/** Slots of a session's event tally (src/relay_events.h TallySlot). */
export const enum Tally { RequestSeq = 0, BytesUp = 1, BytesDown = 2, Summarised = 3, Encoded = 4, UnnamedPortal = 5 }

/**
 * The counts a session's handler and the relay's event sealer both keep (src/relay_events.h): in
 * an ArrayBuffer of its own, whose memory the garbage collector never moves, since the addon keeps
 * a pointer to it.
 */
export function newEventTally(): Float64Array {
  return new Float64Array(new ArrayBuffer(8 * 6));
}

/** What the event sealer needs of a session: the sealer, its envelope's fixed pieces and its tally. */
export interface SessionEventSource {
  readonly sealer: EventSealer;
  readonly sessionIdField: Uint8Array;
  readonly identityFields: Uint8Array;
  readonly tally: Float64Array;
}

/** The spool as the event sealer sees it (agent/events/spool.ts). */
export interface RunSink {
  appendRun(writer: RunWriter): number;
}

export interface RelayOptions {
  /** How long forwarded messages may wait before the handler hears of them (audit, not latency; config relayAuditDelayMs). */
  replayDelayMs: number;
  /** Relay threads, 1-64 (config relayThreads); each session stays on one. */
  threads: number;
  /** Each loop turn's requests to servers in one io_uring call where the kernel allows (config relayBatchSends). */
  batchSends: boolean;
}

export class NativeRelay {
  private readonly listeners = new Map<number, { listener: RelayListener; sealer: EventSealer | undefined }>();
  private nextId = 1;
  private nextSink = 1;
  // The relay stamps records with CLOCK_MONOTONIC, the clock behind process.hrtime(); this maps it
  // to performance.now(), the clock the handler measures durations with.
  private readonly clockOffset = performance.now() - Number(process.hrtime.bigint()) / 1e6;
  /** Errors thrown by a listener: logged by the owner, never allowed to stop other sessions' records. */
  onListenerError: (err: unknown) => void = () => {};
  /** Told the number of sessions the relay holds whenever it changes (audit-priority.ts). */
  onSessionsChange: (sessions: number) => void = () => {};

  constructor(private readonly addon: NativeAddon, opts: RelayOptions) {
    addon.relayStart((batch, length) => this.dispatch(batch, length), DEFAULT_MAX_MESSAGE_LENGTH, opts.replayDelayMs, opts.threads, opts.batchSends);
  }

  /**
   * What seals the statement events the relay writes itself (RecordKind.Event) straight into
   * `spool` (src/relay_events.h), for sessions adopted with it; undefined if this node cannot seal
   * natively (sealAvailable), and their listeners then hear of every record.
   */
  eventSealer(spool: RunSink, agentId: string): EventSealer | undefined {
    if (!this.addon.sealAvailable()) return undefined;
    return new EventSealer(this.addon, spool, agentId, this.nextSink++);
  }

  /**
   * Hands a session's two sockets (by descriptor) to the relay; the caller then closes its own.
   * `precheck` (packPrecheck) lets the relay audit statements itself (RecordKind.Event); with
   * `events`, their events go straight into the sealer's spool, counted in the session's tally.
   */
  adopt(listener: RelayListener, clientFd: number, serverFd: number, precheck: Buffer | null, events?: SessionEventSource): number {
    const id = this.nextId++;
    this.addon.relayAdopt(id, clientFd, serverFd, precheck);
    this.listeners.set(id, { listener, sealer: events?.sealer });
    if (events) this.addon.relayEventsRegister(id, events.sealer.sink, events.sessionIdField, events.identityFields, events.tally);
    this.onSessionsChange(this.listeners.size);
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

  /** Closes the session; its records from now on, sealed events too, go to its listener, which ignores them. */
  close(id: number): void {
    this.addon.relayEventsForget(id);
    this.addon.relayClose(id);
  }

  /** The policy changed: no session may repeat an earlier decision. Returns the new epoch. */
  forget(): number {
    return this.addon.relayForget();
  }

  /** How the relay threads send: batched through io_uring or one send(2) at a time. */
  sendStats(): RelaySendStats {
    return this.addon.relayStats();
  }

  /** Keeps every other thread of the process on one cpu (src/relay.h relayPinOthers); the cpu, or -1. */
  pinOthers(): number {
    return this.addon.relayPinOthers();
  }

  get sessions(): number {
    return this.listeners.size;
  }

  /**
   * The records in batch[0, length). The addon copies every batch into the same buffer (src/relay.cc
   * call_js), so nothing may keep a view of it past this call: runs sealed into the spool are copied
   * there, and the first record a listener hears of has the rest of the batch copied, once, for the
   * listeners to keep.
   */
  private dispatch(batch: Buffer, length: number): void {
    let view = new DataView(batch.buffer, batch.byteOffset, length);
    let own = false;
    for (let off = 0; off + HEADER <= length; ) {
      const id = view.getUint32(off, true);
      const kind = view.getUint8(off + 4) as RecordKind;
      const entry = this.listeners.get(id);
      if (entry?.sealer && (kind === RecordKind.Event || kind === RecordKind.Skip)) {
        // A run of records (of any sessions sealing into the same spool) in one call, up to the
        // first that the listener must see.
        const next = entry.sealer.sealFrom(batch, off, length);
        if (next !== off) {
          off = next;
          continue;
        }
      }
      const len = view.getUint32(off + 12, true);
      if (entry && !own) {
        batch = Buffer.from(batch.subarray(0, length));
        view = new DataView(batch.buffer, batch.byteOffset, length);
        own = true;
      }
      const side = view.getUint8(off + 5) as RelaySide;
      const epoch = view.getUint32(off + 8, true);
      const ms = view.getFloat64(off + 16, true) + this.clockOffset;
      const bytes = batch.subarray(off + HEADER, off + HEADER + len);
      off += HEADER + len;
      if (kind === RecordKind.Closed) {
        this.listeners.delete(id);
        this.addon.relayEventsForget(id);
        this.onSessionsChange(this.listeners.size);
      }
      if (!entry) continue;
      try {
        entry.listener.onRelayRecord(kind, side, bytes, ms, epoch);
      } catch (err) {
        this.onListenerError(err);
      }
    }
  }
}

/**
 * Seals runs of a batch's records that need no handler straight into the spool, as one native call
 * (src/relay_events.h) where the handler would append each event itself.
 */
export class EventSealer implements RunWriter {
  bytes = 0;
  needs = 0;
  private batch: Buffer = EMPTY;
  private offset = 0;
  private readonly out = new Float64Array(4);
  private readonly agentField: Uint8Array;

  /** `sink` tells this sealer's sessions from those of another spool (another agent in the process). */
  constructor(private readonly addon: NativeAddon, private readonly spool: RunSink, agentId: string, readonly sink: number) {
    this.agentField = agentIdField(agentId);
  }

  /**
   * Seals from `offset` on, in batch[0, length); returns the offset of the first record left to
   * the listeners. Keeps no reference to `batch` past the call (the addon reuses it).
   */
  sealFrom(batch: Buffer, offset: number, length: number): number {
    this.batch = length === batch.length ? batch : batch.subarray(0, length);
    this.offset = offset;
    try {
      this.spool.appendRun(this);
    } finally {
      this.batch = EMPTY;
    }
    return this.offset;
  }

  write(slab: Buffer, pos: number, room: number, maxEventBytes: number, seq: number, chainHash: Buffer, timeMs: number): number {
    const out = this.out;
    this.addon.relayEventsSeal(this.sink, this.batch, this.offset, slab, pos, room, maxEventBytes, chainHash, this.agentField, seq, timeMs,
      EventKind.EVENT_KIND_STATEMENT!, out);
    this.offset = out[0]!;
    this.bytes = out[2]! - pos;
    this.needs = out[3]!;
    return out[1]!;
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
