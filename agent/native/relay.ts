// The native relay's JavaScript side (see src/relay.h for the division of work): sessions handed
// to it, the records it sends back dispatched to each session's listener, and the commands a
// session answers with. One relay per process, started on first use.
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
}

/** Mask tag bits for the detectors the relay can rule out in a row (src/relay.cc row_cannot_hit). */
export const MASK_HIT_AT = 1;
export const MASK_HIT_DIGITS = 2;

export const enum RecordKind { Replay = 1, Live = 2, End = 3, Closed = 4, Skip = 5, Audited = 6 }

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

  /** Hands a session's two sockets (by descriptor) to the relay; the caller then closes its own. */
  adopt(listener: RelayListener, clientFd: number, serverFd: number): number {
    const id = this.nextId++;
    this.addon.relayAdopt(id, clientFd, serverFd);
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
    this.addon.relayResume(id, side, answer.cache, answer.allowName, answer.serverLive, answer.tag, answer.plainResult, answer.template, toServer, toClient);
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

let relay: NativeRelay | undefined;

/** The process's relay, or undefined when the addon is not available (see loadNative). */
export function nativeRelay(opts: RelayOptions): NativeRelay | undefined {
  if (relay) return relay;
  const { addon } = loadNative();
  if (!addon) return undefined;
  relay = new NativeRelay(addon, opts);
  return relay;
}
