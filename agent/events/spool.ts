// The agent's durable local event spool: every AuditEvent gets its seq and chain hash here, is
// encoded once, and is fsynced to disk before anyone calls it durable. The shipper reads it back
// and acks; nothing is ever dropped, not when the spool is over its size limit nor when the disk
// fails: events wait in memory and the spool tells its owner to stop admitting new work.
import { EventEmitter } from 'node:events';
import { chmod, mkdir, open, stat, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { pino } from 'pino';
import { encodeEvent, isSelfEncoding, sealedEvent, type EventDraft, type EventEnvelope, type SelfEncodingEvent } from '../../proto/index.js';
import { HASH_BYTES, HEADER_BYTES, RecordReader, sealRecord, type SpoolRecord } from './record-format.js';
import { fsyncDir, removeStaleHeadTmp, segmentFileName, SpoolError, writeHead } from './segment-files.js';
import { DEFAULT_COMMIT_DELAY_MS, MAX_COMMIT_DELAY_MS } from './commit-delay.js';
import { recoverSpool, ZERO_HASH, type SegmentState, type SpoolLogger } from './spool-recovery.js';
import { loadNative } from '../native/index.js';
import { Slabs } from './slabs.js';

export { SpoolError } from './segment-files.js';
export { readSpoolDir } from './read-spool-dir.js';
export type { SpoolLogger } from './spool-recovery.js';

export const DEFAULT_SEGMENT_BYTES = 8 * 1024 * 1024;
export { DEFAULT_COMMIT_DELAY_MS, MAX_COMMIT_DELAY_MS } from './commit-delay.js';
/** Largest encoded event append() takes; emitters truncate long fields (and say so) before this. */
export const MAX_EVENT_BYTES = 1024 * 1024;

// A batch this large is written at the end of the turn instead of waiting for the commit delay.
const GROUP_BYTES = 64 * 1024;
// Caps one write: it bounds commit latency and how much a crash can tear (TORN_TAIL_WINDOW).
const FLUSH_MAX_BYTES = 1024 * 1024;
const SLAB_BYTES = 256 * 1024;
/** Written slabs kept for reuse (slabs.ts): a commit's worth at the usual rates, 1 MiB. */
const FREE_SLABS = 4;
const RETRY_MS = 500;
// The most one unsynced write can span: up to FLUSH_MAX_BYTES of groups, or one group that ends
// with an event of the largest size. Only that much of the newest segment can be torn by a crash.
const TORN_TAIL_WINDOW = FLUSH_MAX_BYTES + GROUP_BYTES + HEADER_BYTES + MAX_EVENT_BYTES;

export type SpoolState = 'ok' | 'full' | 'error';

export interface SpoolOptions {
  dir: string;
  agentId: string;
  /** Limit on segment bytes on disk plus bytes buffered in memory. */
  maxBytes: number;
  /** Default: 8 MiB, or a quarter of maxBytes if that is smaller. */
  segmentBytes?: number;
  /** Default DEFAULT_COMMIT_DELAY_MS; see there. */
  commitDelayMs?: number;
  logger?: SpoolLogger;
}

export type { SpoolRecord } from './record-format.js';

export interface Appended {
  readonly seq: number;
  /**
   * Resolves once the event is fsynced; rejects only if the spool is closed before that. Reading it
   * says that someone waits: the event's batch then skips the commit delay.
   */
  readonly durable: Promise<void>;
}

/**
 * Writes whole records (agent/events/record-format.ts framing, chained from `chainHash`) straight
 * into the spool's slab: the native relay's own STATEMENT events (agent/native/relay.ts EventSealer).
 */
export interface RunWriter {
  /**
   * Seals records of seq, seq + 1, ... (at most `maxEventBytes` of payload each) into
   * slab[pos, pos + room), leaving the last one's hash in `chainHash`; returns how many, and leaves
   * the bytes they take in `bytes`.
   */
  write(slab: Buffer, pos: number, room: number, maxEventBytes: number, seq: number, chainHash: Buffer, timeMs: number): number;
  readonly bytes: number;
  /**
   * After a write: the framed size (header included) of the record it stopped at when only room
   * was lacking, so that the spool makes room and calls again; 0 when it stopped for another
   * reason (the record is not the writer's to seal, or there are no more).
   */
  readonly needs: number;
}

export interface SpoolStats {
  /** Oldest seq still on disk; durableSeq + 1 when the disk holds none. */
  firstSeq: number;
  /** Last seq handed out by append(), durable or not. */
  lastSeq: number;
  durableSeq: number;
  /** Segment bytes on disk. */
  bytes: number;
  /** Bytes appended but not yet durable. */
  bufferedBytes: number;
  segments: number;
  state: SpoolState;
}

export interface SpoolMetrics {
  /** Successful group commits: each is one write and one fdatasync per segment it touches. */
  flushes: number;
  fsyncs: number;
  writeFailures: number;
  bytesWritten: number;
  /** Events made durable: eventsWritten / fsyncs is the group commit's batch size. */
  eventsWritten: number;
}

/** Appended events that share one write: they become durable, and settle, together. */
interface Group {
  segFirstSeq: number;
  firstSeq: number;
  lastSeq: number;
  /** Set when the group is sealed: until then the spool's chainHash is its last event's hash. */
  lastHash: Buffer;
  chunks: Buffer[];
  bytes: number;
  done: Deferred;
  /** Someone awaits this group's `durable`: it is flushed without the commit delay. */
  urgent: boolean;
}

interface Deferred {
  promise: Promise<void>;
  resolve: () => void;
  reject: (err: Error) => void;
}

interface Cursor {
  want: number;
  seg: SegmentState | null;
  fh: FileHandle | null;
  offset: number;
  atSeq: number;
}

/** 'state' listeners get (state, reason, previous). */
export type SpoolEvents = { state: [state: SpoolState, reason: string, previous: SpoolState] };

export class Spool extends EventEmitter<SpoolEvents> {
  state: SpoolState = 'ok';
  stateReason = '';
  readonly metrics: SpoolMetrics = { flushes: 0, fsyncs: 0, writeFailures: 0, bytesWritten: 0, eventsWritten: 0 };
  readonly dir: string;
  readonly agentId: string;
  readonly maxBytes: number;
  readonly segmentBytes: number;
  readonly commitDelayMs: number;
  private readonly maxEventBytes: number;
  private readonly logger: SpoolLogger;

  private readonly segments: SegmentState[];
  private activeFh: FileHandle | null;
  private truncatePending = false;
  private nextSeq: number;
  /**
   * The chain hash of the last appended event, overwritten in place by each append: the next event
   * copies it into its encoding before the overwrite, and seal() copies it into the closing group.
   */
  private readonly chainHash = Buffer.alloc(HASH_BYTES);
  private durableSeq: number;
  private diskBytes: number;
  private bufferedBytes = 0;

  // Where append() puts the next record; segments are cut at append time so that a group never
  // straddles two files.
  private tailSegFirstSeq: number;
  private tailSegBytes: number;

  private readonly queue: Group[] = [];
  private openGroup: Group | null = null;
  private readonly slabs = new Slabs(SLAB_BYTES, FREE_SLABS);
  private slab: Buffer = this.slabs.take(SLAB_BYTES);
  private slabStart = 0;
  private slabPos = 0;

  private flushTimer: NodeJS.Timeout | NodeJS.Immediate | undefined;
  /** flushTimer is the commit delay (a Timeout), not the end-of-turn flush (an Immediate). */
  private flushDelayed = false;
  /** Some queued group is urgent: the next flush is not delayed. */
  private urgentQueued = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private flushActive = false;
  private flushRun: Promise<void> = Promise.resolve();
  private again = false;
  private writeError: string | null = null;
  private blocked = false;

  private closing = false;
  private closed = false;
  private closeRun: Promise<void> | null = null;
  private ackChain: Promise<unknown> = Promise.resolve();
  private readonly durableWaiters = new Set<() => void>();

  static async open(opts: SpoolOptions): Promise<Spool> {
    const settings = checkOptions(opts);
    const logger = opts.logger ?? pino({ name: 'runguard-spool' });
    await mkdir(opts.dir, { recursive: true, mode: 0o700 });
    await restrictToOwner(opts.dir);
    await removeStaleHeadTmp(opts.dir);
    const recovered = await recoverSpool(opts.dir, { agentId: opts.agentId, logger, tornTailWindow: TORN_TAIL_WINDOW });
    return new Spool(opts, settings, logger, recovered);
  }

  private constructor(
    opts: SpoolOptions,
    settings: { segmentBytes: number; commitDelayMs: number },
    logger: SpoolLogger,
    rec: Awaited<ReturnType<typeof recoverSpool>>,
  ) {
    super();
    this.dir = opts.dir;
    this.agentId = opts.agentId;
    this.maxBytes = opts.maxBytes;
    this.segmentBytes = settings.segmentBytes;
    this.commitDelayMs = settings.commitDelayMs;
    this.maxEventBytes = Math.min(MAX_EVENT_BYTES, this.segmentBytes - HEADER_BYTES);
    this.logger = logger;
    this.segments = rec.segments;
    this.activeFh = rec.active;
    this.nextSeq = rec.nextSeq;
    rec.prevHash.copy(this.chainHash);
    this.durableSeq = rec.nextSeq - 1;
    this.diskBytes = rec.segments.reduce((n, s) => n + s.bytes, 0);
    const last = rec.segments.at(-1);
    this.tailSegFirstSeq = last ? last.firstSeq : rec.nextSeq;
    this.tailSegBytes = last ? last.bytes : 0;
    this.refreshState();
  }

  /** False unless the spool is healthy: callers stop taking new work that would need events. */
  admitting(): boolean {
    return this.state === 'ok' && !this.closing;
  }

  /**
   * Seals the event into the chain and buffers it. Never blocks and never drops: over the limit
   * or after a write error the event waits in memory and `durable` stays pending.
   */
  append(draft: EventDraft | SelfEncodingEvent): Appended {
    if (this.closing) throw new SpoolError(`spool ${this.dir} is closed; no more events can be appended`, this.dir);
    const seq = this.nextSeq;
    const env: EventEnvelope = { agentId: this.agentId, seq, prevHash: this.chainHash, timeMs: Date.now() };
    // A self-encoded payload may be a reused buffer: it is copied and hashed before anything below
    // can append (and so encode) another event.
    const payload = isSelfEncoding(draft) ? draft.encode(env) : encodeEvent(sealedEvent(draft, env));
    if (payload.length > this.maxEventBytes) {
      throw new RangeError(`event of kind ${draft.kind} encodes to ${payload.length} bytes, over the spool's limit of ${this.maxEventBytes}: truncate its fields`);
    }
    const recordBytes = HEADER_BYTES + payload.length;
    const group = this.groupFor(seq, recordBytes);
    this.slabPos = sealRecord(this.reserve(recordBytes), this.slabPos, payload, this.chainHash);
    group.lastSeq = seq;
    group.bytes += recordBytes;
    this.nextSeq = seq + 1;
    this.bufferedBytes += recordBytes;
    if (group.bytes >= GROUP_BYTES) {
      this.seal();
      this.flushAtTurnEnd();
    } else {
      this.armFlushTimer();
    }
    if (this.state === 'ok' && this.diskBytes + this.bufferedBytes > this.maxBytes) this.refreshState();
    return new AppendedEvent(seq, group, this.hurry);
  }

  /**
   * Lets `writer` seal a run of events into the slab in one go, where append() would take them one
   * at a time. Each call gets the room that needs no segment cut, no new slab and no group commit,
   * so the bookkeeping after it is append()'s for the calls' records as a whole; where the writer
   * stops for want of room, the spool makes it (the cuts append() would make for that record) and
   * calls again. The writer's records then never leave the native path at a group, slab or segment
   * boundary (a relay batch crosses a few: it holds up to a few hundred KiB). Returns how many it
   * wrote (none once the spool is closing).
   */
  appendRun(writer: RunWriter): number {
    let total = 0;
    // The record the spool last made room for (0: none): a fresh group takes it even if it is over
    // a group's size, as append() would, and is then full.
    let madeRoom = 0;
    while (!this.closing) {
      const group = this.openGroup;
      const groupRoom = group ? GROUP_BYTES - 1 - group.bytes : Math.max(GROUP_BYTES - 1, madeRoom);
      const room = Math.max(0, Math.min(this.slab.length - this.slabPos, this.segmentBytes - this.tailSegBytes, groupRoom));
      const seq = this.nextSeq;
      const records = writer.write(this.slab, this.slabPos, room, this.maxEventBytes, seq, this.chainHash, Date.now());
      if (records > 0) {
        const bytes = writer.bytes;
        const into = this.groupFor(seq, bytes);
        this.slabPos += bytes;
        into.lastSeq = seq + records - 1;
        into.bytes += bytes;
        this.nextSeq = seq + records;
        this.bufferedBytes += bytes;
        total += records;
        madeRoom = 0;
      } else if (madeRoom) {
        break; // the writer did not take the room it asked for
      }
      const needs = writer.needs;
      if (needs === 0) break;
      this.makeRoom(needs);
      madeRoom = needs;
    }
    if (total === 0) return 0;
    // A run is a relay batch: the statements of the last relayAuditDelayMs, and the next batch is
    // that far away. Waiting the commit delay for company would add nothing to this commit but a
    // wake-up of the main thread (and the delay to the run's durability); what else arrives in
    // this turn still goes along.
    this.flushAtTurnEnd();
    if (this.state === 'ok' && this.diskBytes + this.bufferedBytes > this.maxBytes) this.refreshState();
    return total;
  }

  /**
   * The cuts append() makes for a record of `recordBytes` at a boundary: the open group closed
   * (append() would close it just after the record; either way the files hold the same bytes),
   * the segment cut where the record would overflow it, and a new slab.
   */
  private makeRoom(recordBytes: number): void {
    if (this.openGroup && this.openGroup.bytes + recordBytes > GROUP_BYTES - 1) this.seal();
    this.cutSegmentFor(this.nextSeq, recordBytes);
    this.reserve(recordBytes);
  }

  async appendDurable(draft: EventDraft | SelfEncodingEvent): Promise<number> {
    const { seq, durable } = this.append(draft);
    await durable;
    return seq;
  }

  stats(): SpoolStats {
    const first = this.segments[0];
    return {
      firstSeq: first && first.lastSeq >= first.firstSeq ? first.firstSeq : this.durableSeq + 1,
      lastSeq: this.nextSeq - 1,
      durableSeq: this.durableSeq,
      bytes: this.diskBytes,
      bufferedBytes: this.bufferedBytes,
      segments: this.segments.length,
      state: this.state,
    };
  }

  // ---- append side: groups and the slab ----

  private groupFor(seq: number, recordBytes: number): Group {
    this.cutSegmentFor(seq, recordBytes);
    this.tailSegBytes += recordBytes;
    if (this.openGroup) return this.openGroup;
    const group: Group = {
      segFirstSeq: this.tailSegFirstSeq, firstSeq: seq, lastSeq: seq - 1, lastHash: ZERO_HASH,
      chunks: [], bytes: 0, done: deferred(), urgent: false,
    };
    this.queue.push(group);
    this.openGroup = group;
    return group;
  }

  /** Starts a new segment at `seq` if a record of `recordBytes` would overflow the tail one. */
  private cutSegmentFor(seq: number, recordBytes: number): void {
    if (this.tailSegBytes > 0 && this.tailSegBytes + recordBytes > this.segmentBytes) {
      this.seal();
      this.tailSegFirstSeq = seq;
      this.tailSegBytes = 0;
    }
  }

  /** Room for `bytes` at slabPos. Records are copied into shared slabs, so a flush is one writev. */
  private reserve(bytes: number): Buffer {
    if (this.slab.length - this.slabPos >= bytes) return this.slab;
    this.cutSlab();
    this.slabs.retire(this.slab);
    this.slab = this.slabs.take(bytes);
    this.slabStart = this.slabPos = 0;
    return this.slab;
  }

  /** Hands the open group the slab bytes it has filled since the last cut. */
  private cutSlab(): void {
    if (this.openGroup && this.slabPos > this.slabStart) {
      this.openGroup.chunks.push(this.slab.subarray(this.slabStart, this.slabPos));
      this.slabs.cut(this.slab);
    }
    this.slabStart = this.slabPos;
  }

  private seal(): void {
    this.cutSlab();
    if (this.openGroup) this.openGroup.lastHash = Buffer.from(this.chainHash);
    this.openGroup = null;
  }

  // ---- flushing ----

  /**
   * Flushes at the end of this I/O turn if someone awaits a queued event, else after the commit
   * delay: a batch nobody awaits waits that long for company, counted from its first event or from
   * the end of the commit in flight, whichever is later. A timer that fires during a commit only
   * marks the loop to go again, which it does at once for an awaited batch, else after the delay.
   */
  private armFlushTimer(atTurnEnd = false): void {
    if (this.flushTimer || this.closing || this.writeError || this.blocked) return;
    this.flushDelayed = !atTurnEnd && this.commitDelayMs > 0 && !this.urgentQueued;
    this.flushTimer = this.flushDelayed ? setTimeout(this.onFlushTimer, this.commitDelayMs) : setImmediate(this.onFlushTimer);
  }

  /**
   * A full group is written at the end of this turn, not at once: the rest of a burst (a relay
   * batch appends a few hundred events in one call) goes along in the same write and fdatasync,
   * where an immediate start would commit the first group alone and the rest after its sync.
   */
  private flushAtTurnEnd(): void {
    this.cancelDelayedFlush();
    this.armFlushTimer(true);
  }

  /** Drops a commit-delay timer; a turn-end one stays, it fires soon enough. */
  private cancelDelayedFlush(): void {
    if (this.flushTimer && this.flushDelayed) {
      cancelTimer(this.flushTimer);
      this.flushTimer = undefined;
    }
  }

  private readonly onFlushTimer = (): void => {
    this.flushTimer = undefined;
    this.kick(false);
  };

  /** A caller waits for the group's fdatasync: cut the commit delay short. */
  private readonly hurry = (group: Group): void => {
    if (group.urgent) return;
    group.urgent = true;
    // Not queued: already being written (it settles when that sync returns) or settled.
    if (!this.queue.includes(group)) return;
    this.urgentQueued = true;
    this.cancelDelayedFlush();
    this.armFlushTimer();
  };

  private armRetry(): void {
    if (this.retryTimer || this.closing) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.kick(true);
    }, RETRY_MS);
  }

  /** Starts the flush loop, or tells the running one to go round again. */
  private kick(force: boolean): void {
    if (this.flushTimer) {
      cancelTimer(this.flushTimer);
      this.flushTimer = undefined;
    }
    if (this.closing || this.queue.length === 0) return;
    // While failing or over the limit, only the retry timer and acks try again.
    if (!force && (this.writeError || this.blocked)) return;
    if (this.flushActive) {
      this.again = true;
      return;
    }
    this.flushActive = true;
    this.flushRun = this.flushLoop();
  }

  private async flushLoop(): Promise<void> {
    try {
      for (;;) {
        this.again = false;
        const progressed = await this.flushOnce();
        if (!progressed || this.closing) return;
        if (this.hasSealedBacklog()) continue;
        // What arrived during that sync goes next, at once if someone awaits it; else after the
        // commit delay, armed below, so that it takes along what arrives meanwhile.
        if (!this.again || (this.commitDelayMs > 0 && !this.urgentQueued)) return;
      }
    } finally {
      // Cleared in the same tick as the last look at `again`, so no kick() is lost in between.
      this.flushActive = false;
      if (this.queue.length > 0) {
        // The commit delay counts from the end of the last commit, not from an append during it.
        this.cancelDelayedFlush();
        // Events appended while a retry was running found the timer gated; they must not sit idle.
        this.armFlushTimer();
      }
    }
  }

  private hasSealedBacklog(): boolean {
    return this.queue.length > 1 || (this.queue.length === 1 && this.queue[0] !== this.openGroup);
  }

  /** One group commit. False if nothing could be written (over the limit, or a write failed). */
  private async flushOnce(): Promise<boolean> {
    const budget = this.closing ? Infinity : this.maxBytes - this.diskBytes;
    const { batch, stoppedByBudget } = this.takeBatch(budget);
    if (batch.length === 0) {
      if (this.queue.length > 0) {
        this.blocked = true;
        this.armRetry();
      }
      this.refreshState();
      return false;
    }
    const { written, error } = await this.writeBatch(batch);
    if (error) {
      this.metrics.writeFailures++;
      this.writeError = error.message;
      this.logger.error({ dir: this.dir, err: error }, 'spool: write failed; events stay in memory, retrying every 500 ms');
      this.armRetry();
    } else {
      this.metrics.flushes++;
      // Back to healthy only once the backlog is on disk, not after its first megabyte.
      const caughtUp = !this.hasSealedBacklog();
      if (stoppedByBudget) this.blocked = true;
      else if (caughtUp) this.blocked = false;
      if (caughtUp) this.writeError = null;
      if (this.blocked) this.armRetry();
    }
    // State first, then the promises: whoever awaited `durable` sees the state that goes with it.
    this.refreshState();
    for (const group of written) group.done.resolve();
    if (written.length > 0) this.wakeReaders();
    return !error;
  }

  private takeBatch(budget: number): { batch: Group[]; stoppedByBudget: boolean } {
    let taken = 0;
    let n = 0;
    let stoppedByBudget = false;
    for (const group of this.queue) {
      if (taken + group.bytes > budget) {
        stoppedByBudget = true;
        break;
      }
      if (n > 0 && taken + group.bytes > FLUSH_MAX_BYTES) break;
      taken += group.bytes;
      n++;
    }
    if (n > 0 && this.queue[n - 1] === this.openGroup) this.seal();
    const batch = this.queue.splice(0, n);
    // What is left was held back by the budget or FLUSH_MAX_BYTES; failed writes go back in front
    // with their flag, and hurry() will set it again for anything appended later.
    if (this.urgentQueued) this.urgentQueued = this.queue.some((g) => g.urgent);
    return { batch, stoppedByBudget };
  }

  /** Writes the batch segment by segment; whatever did not become durable goes back in front. */
  private async writeBatch(batch: Group[]): Promise<{ written: Group[]; error: Error | null }> {
    let i = 0;
    try {
      while (i < batch.length) {
        const segFirstSeq = batch[i]!.segFirstSeq;
        let j = i + 1;
        while (j < batch.length && batch[j]!.segFirstSeq === segFirstSeq) j++;
        await this.writeRun(batch.slice(i, j));
        i = j;
      }
      return { written: batch, error: null };
    } catch (err) {
      const unwritten = batch.slice(i);
      this.queue.unshift(...unwritten);
      if (unwritten.some((g) => g.urgent)) this.urgentQueued = true;
      return { written: batch.slice(0, i), error: err as Error };
    }
  }

  /** Groups of one segment: one writev at the durable end, then one fdatasync. */
  private async writeRun(run: Group[]): Promise<void> {
    const seg = await this.segmentFor(run[0]!.segFirstSeq);
    const fh = this.activeFh!;
    const bytes = run.reduce((n, g) => n + g.bytes, 0);
    const chunks = run.flatMap((g) => g.chunks);
    try {
      if (writeDurable && !this.truncatePending) {
        await writeDurable(fh, chunks, seg.bytes);
      } else {
        await writeFully(fh, chunks, seg.bytes, bytes);
        if (this.truncatePending) await fh.truncate(seg.bytes + bytes);
        this.truncatePending = false;
        await fh.datasync();
      }
      this.metrics.fsyncs++;
    } catch (err) {
      await this.discardUnsynced(fh, seg);
      throw new SpoolError(`spool: writing ${bytes} bytes to ${seg.path} failed: ${(err as Error).message}`, seg.path, seg.bytes);
    }
    this.slabs.written(chunks, this.slab);
    const last = run.at(-1)!;
    seg.bytes += bytes;
    seg.lastSeq = last.lastSeq;
    seg.lastHash = last.lastHash;
    this.diskBytes += bytes;
    this.bufferedBytes -= bytes;
    this.durableSeq = last.lastSeq;
    this.metrics.bytesWritten += bytes;
    this.metrics.eventsWritten += last.lastSeq - run[0]!.firstSeq + 1;
  }

  /**
   * After a failed write or fdatasync, the page cache may claim data the disk never got, so the
   * whole run is rewritten from the last synced offset; the partial bytes are cut off first so a
   * crash cannot leave them looking like a tail.
   */
  private async discardUnsynced(fh: FileHandle, seg: SegmentState): Promise<void> {
    try {
      await fh.truncate(seg.bytes);
    } catch {
      this.truncatePending = true;
    }
  }

  private async segmentFor(firstSeq: number): Promise<SegmentState> {
    const current = this.segments.at(-1);
    if (current && current.firstSeq === firstSeq) return current;
    // The previous segment's last run was fdatasynced before we got here, so a crash can never
    // leave a torn record in a segment that is not the newest.
    const file = path.join(this.dir, segmentFileName(firstSeq));
    let fh: FileHandle;
    try {
      fh = await open(file, 'w', 0o600);
    } catch (err) {
      throw new SpoolError(`spool: creating segment ${file} failed: ${(err as Error).message}`, file);
    }
    try {
      await fsyncDir(this.dir);
    } catch (err) {
      await fh.close();
      throw new SpoolError(`spool: syncing directory ${this.dir} after creating ${file} failed: ${(err as Error).message}`, file);
    }
    await this.activeFh?.close().catch(() => {});
    this.activeFh = fh;
    this.truncatePending = false;
    const seg: SegmentState = { firstSeq, lastSeq: firstSeq - 1, bytes: 0, lastHash: null, path: file };
    this.segments.push(seg);
    return seg;
  }

  // ---- state ----

  private refreshState(): void {
    if (this.writeError) {
      this.setState('error', this.writeError);
    } else if (this.blocked || this.diskBytes + this.bufferedBytes > this.maxBytes) {
      this.setState('full', `spool ${this.dir} holds ${this.diskBytes} bytes on disk and ${this.bufferedBytes} in memory, ` +
        `over its limit of ${this.maxBytes} bytes: events wait in memory until the shipper drains it`);
    } else {
      this.setState('ok', `spool ${this.dir} is writing normally`);
    }
  }

  private setState(next: SpoolState, reason: string): void {
    this.stateReason = reason;
    if (next === this.state) return;
    const previous = this.state;
    this.state = next;
    if (next === 'ok') this.logger.info({ dir: this.dir, previous }, `spool: back to ok after ${previous}`);
    else this.logger.warn({ dir: this.dir, state: next, reason }, `spool: ${next}, not admitting new work: ${reason}`);
    try {
      this.emit('state', next, reason, previous);
    } catch (err) {
      // A throwing listener must not break the flush loop or an append that already took a seq.
      this.logger.error({ dir: this.dir, err }, 'spool: a state listener threw');
    }
  }

  // ---- acks ----

  /**
   * Deletes every segment whose events are all <= seq, except the newest, which carries seq and
   * hash continuity. Returns the number of segments deleted.
   */
  ackUpTo(seq: number): Promise<number> {
    const run = this.ackChain.then(() => this.deleteAcked(seq));
    this.ackChain = run.catch(() => {});
    return run;
  }

  private async deleteAcked(seq: number): Promise<number> {
    if (seq > this.durableSeq) {
      throw new RangeError(`ackUpTo(${seq}): only events up to seq ${this.durableSeq} are durable in spool ${this.dir}`);
    }
    const victims: SegmentState[] = [];
    for (const seg of this.segments.slice(0, -1)) {
      if (seg.lastSeq > seq) break;
      victims.push(seg);
    }
    if (victims.length === 0) return 0;
    const doomed = await this.recordHead(victims);
    for (const seg of doomed) {
      await unlink(seg.path).catch((err: NodeJS.ErrnoException) => { if (err.code !== 'ENOENT') throw err; });
      this.segments.splice(this.segments.indexOf(seg), 1);
      this.diskBytes -= seg.bytes;
    }
    if (doomed.length > 0) await fsyncDir(this.dir);
    this.refreshState();
    if (this.state !== 'ok') this.kick(true);
    return doomed.length;
  }

  /** Writes the head for the newest victim; if that fails, that victim is kept to carry the chain. */
  private async recordHead(victims: SegmentState[]): Promise<SegmentState[]> {
    const newest = victims.at(-1)!;
    try {
      await writeHead(this.dir, { seq: newest.lastSeq, hash: newest.lastHash ?? ZERO_HASH, agentId: this.agentId });
      return victims;
    } catch (err) {
      this.logger.warn({ dir: this.dir, err }, `spool: cannot write the head file, keeping ${newest.path} to carry the hash chain`);
      return victims.slice(0, -1);
    }
  }

  // ---- readers ----

  /** Durable events with seq >= `seq`, read from disk, up to the newest durable one. */
  async *readFrom(seq: number): AsyncGenerator<SpoolRecord> {
    const cursor = newCursor(seq);
    try {
      yield* this.readCursor(cursor);
    } finally {
      await cursor.fh?.close();
    }
  }

  /** Like readFrom, then keeps yielding events as they become durable, until aborted or closed. */
  async *follow(seq: number, signal: AbortSignal): AsyncGenerator<SpoolRecord> {
    const cursor = newCursor(seq);
    try {
      while (!signal.aborted) {
        yield* this.readCursor(cursor);
        if (this.closed || signal.aborted) return;
        await this.durableAfter(cursor.want - 1, signal);
      }
    } finally {
      await cursor.fh?.close();
    }
  }

  private async *readCursor(c: Cursor): AsyncGenerator<SpoolRecord> {
    for (;;) {
      if (!c.seg || !this.segments.includes(c.seg)) await this.position(c);
      const seg = c.seg;
      if (!seg) return;
      if (c.offset < seg.bytes) {
        try {
          c.fh ??= await open(seg.path, 'r');
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
          c.seg = null; // acked and deleted under us: look again
          continue;
        }
        const reader = new RecordReader(c.fh, seg.bytes, c.offset);
        for (let rec = await reader.next(); rec; rec = await reader.next()) {
          const seq = c.atSeq++;
          c.offset = reader.offset;
          if (seq < c.want) continue;
          c.want = seq + 1;
          yield { seq, bytes: rec.payload };
        }
        if (reader.corruption) {
          throw new SpoolError(`spool segment ${seg.path} is corrupt at byte offset ${reader.corruption.offset}: ${reader.corruption.reason}`,
            seg.path, reader.corruption.offset);
        }
        continue; // more may have become durable while we yielded
      }
      const next = this.segments[this.segments.indexOf(seg) + 1];
      if (!next) return;
      await c.fh?.close();
      Object.assign(c, { seg: next, fh: null, offset: 0, atSeq: next.firstSeq });
    }
  }

  /** Points the cursor at the segment that holds c.want, or the oldest one if it is gone. */
  private async position(c: Cursor): Promise<void> {
    await c.fh?.close();
    let seg: SegmentState | null = null;
    for (const s of this.segments) {
      if (s.firstSeq > c.want) break;
      seg = s;
    }
    seg ??= this.segments[0] ?? null;
    Object.assign(c, { seg, fh: null, offset: 0, atSeq: seg?.firstSeq ?? 0 });
    // Past everything in the newest segment: start at its end instead of rescanning it.
    if (seg && seg === this.segments.at(-1) && seg.lastSeq < c.want) {
      c.offset = seg.bytes;
      c.atSeq = seg.lastSeq + 1;
    }
  }

  private durableAfter(seq: number, signal: AbortSignal): Promise<void> {
    if (this.durableSeq > seq || this.closed || signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const wake = (): void => {
        this.durableWaiters.delete(wake);
        signal.removeEventListener('abort', wake);
        resolve();
      };
      this.durableWaiters.add(wake);
      signal.addEventListener('abort', wake, { once: true });
    });
  }

  private wakeReaders(): void {
    for (const wake of [...this.durableWaiters]) wake();
  }

  // ---- close ----

  /**
   * Writes what is buffered, fsyncs and closes. Events that still cannot be written reject their
   * `durable` promises, and close() rejects naming them, so a loss is never silent.
   */
  close(): Promise<void> {
    this.closeRun ??= this.shutdown();
    return this.closeRun;
  }

  private async shutdown(): Promise<void> {
    this.closing = true;
    if (this.flushTimer) cancelTimer(this.flushTimer);
    clearTimeout(this.retryTimer);
    this.flushTimer = this.retryTimer = undefined;
    await this.flushRun;
    await this.ackChain;
    // One last try past maxBytes and past an earlier write error: the limit protects the disk
    // from a stuck shipper, but dropping audit events at shutdown would be worse than overshooting.
    while (this.queue.length > 0 && (await this.flushOnce()));
    await this.activeFh?.close().catch(() => {});
    this.activeFh = null;
    this.closed = true;
    this.wakeReaders();
    if (this.queue.length > 0) throw this.failUnwritten();
  }

  private failUnwritten(): SpoolError {
    const first = this.queue[0]!.firstSeq;
    const last = this.queue.at(-1)!.lastSeq;
    const err = new SpoolError(
      `spool ${this.dir} closed with events ${first}..${last} (${last - first + 1}) not written: ${this.writeError ?? 'unknown error'}`,
      this.dir);
    for (const group of this.queue.splice(0)) group.done.reject(err);
    this.openGroup = null;
    this.bufferedBytes = 0;
    return err;
  }
}

/** What append() returns: reading `durable` marks the event's group as awaited. */
class AppendedEvent implements Appended {
  constructor(readonly seq: number, private readonly group: Group, private readonly hurry: (group: Group) => void) {}

  get durable(): Promise<void> {
    this.hurry(this.group);
    return this.group.done.promise;
  }
}

function newCursor(want: number): Cursor {
  return { want, seg: null, fh: null, offset: 0, atSeq: 0 };
}

function deferred(): Deferred {
  let resolve!: () => void;
  let reject!: (err: Error) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Callers may ignore `durable`; a rejection at close must not crash the process as unhandled.
  promise.catch(() => {});
  return { promise, resolve, reject };
}

/**
 * A commit (every byte at `position`, then fdatasync) as one pool job in the native addon
 * (agent/native/src/durable.cc) instead of two fs.promises calls, each of which wakes a pool thread
 * and then the event loop. Null without the addon: writeFully + datasync, the same bytes.
 */
const writeDurable = ((): ((fh: FileHandle, bufs: Buffer[], position: number) => Promise<void>) | null => {
  const native = loadNative().addon?.writeDurable;
  if (!native) return null;
  return (fh, bufs, position) => new Promise((resolve, reject) => native(fh.fd, bufs, position, (err) => (err ? reject(err) : resolve())));
})();

/** Writes all of `bufs` at `position`, continuing after short writes so a real errno surfaces. */
async function writeFully(fh: FileHandle, bufs: Buffer[], position: number, total: number): Promise<void> {
  let pending = bufs;
  let pos = position;
  let left = total;
  while (left > 0) {
    const { bytesWritten } = await fh.writev(pending, pos);
    if (bytesWritten === 0) throw new Error(`write made no progress at byte offset ${pos}`);
    pos += bytesWritten;
    left -= bytesWritten;
    pending = skipBytes(pending, bytesWritten);
  }
}

function skipBytes(bufs: Buffer[], n: number): Buffer[] {
  let skip = n;
  let i = 0;
  while (i < bufs.length && skip >= bufs[i]!.length) skip -= bufs[i++]!.length;
  const rest = bufs.slice(i);
  if (skip > 0 && rest[0]) rest[0] = rest[0].subarray(skip);
  return rest;
}

function cancelTimer(t: NodeJS.Timeout | NodeJS.Immediate): void {
  if ('refresh' in t) clearTimeout(t);
  else clearImmediate(t);
}

function checkOptions(opts: SpoolOptions): { segmentBytes: number; commitDelayMs: number } {
  const where = `spool ${opts.dir}`;
  if (!opts.agentId) throw new SpoolError(`${where}: agentId is required`, opts.dir);
  if (!Number.isSafeInteger(opts.maxBytes) || opts.maxBytes <= 0) throw new SpoolError(`${where}: maxBytes must be a positive integer`, opts.dir);
  const segmentBytes = opts.segmentBytes ?? Math.min(DEFAULT_SEGMENT_BYTES, Math.floor(opts.maxBytes / 4));
  if (!Number.isSafeInteger(segmentBytes) || segmentBytes < 512) {
    throw new SpoolError(`${where}: segmentBytes must be an integer of at least 512 (maxBytes ${opts.maxBytes} may be too small)`, opts.dir);
  }
  // The newest segment is never deleted, so a limit below two segments could wedge the spool.
  if (opts.maxBytes < 2 * segmentBytes) {
    throw new SpoolError(`${where}: maxBytes (${opts.maxBytes}) must be at least twice segmentBytes (${segmentBytes})`, opts.dir);
  }
  const commitDelayMs = opts.commitDelayMs ?? DEFAULT_COMMIT_DELAY_MS;
  if (!(commitDelayMs >= 0 && commitDelayMs <= MAX_COMMIT_DELAY_MS)) {
    throw new SpoolError(`${where}: commitDelayMs must be from 0 to ${MAX_COMMIT_DELAY_MS}, got ${commitDelayMs}`, opts.dir);
  }
  return { segmentBytes, commitDelayMs };
}

async function restrictToOwner(dir: string): Promise<void> {
  // mkdir's mode does not apply to a directory that already exists.
  const { mode } = await stat(dir);
  if (mode & 0o077) await chmod(dir, 0o700);
}
