// How much of the spool the collector has not acknowledged yet, in events, bytes and age, for the
// agent's heartbeat. The spool keeps whole segments until every event in them is acknowledged, so
// its size overstates the backlog by up to a segment; the exact figure needs the byte offset of the
// first unacknowledged event inside its segment. That offset only moves forward as acks arrive, so
// it is found by scanning record headers from where the last measurement stopped: each segment is
// read about once however often the heartbeat asks.
import { open, stat } from 'node:fs/promises';
import { decodeEvent } from '../../proto/index.js';
import { RecordReader } from './record-format.js';
import { listSegments } from './segment-files.js';
import type { Spool } from './spool.js';

export interface Backlog {
  events: number;
  bytes: number;
  /** Time of the oldest unacknowledged event that is on disk; undefined when there is none. */
  oldestMs?: number;
}

export class BacklogMeter {
  /** Where the last scan stopped: in segment `path`, seq `seq` starts at byte `offset`. */
  private mark?: { path: string; seq: number; offset: number };

  constructor(private readonly spool: Spool) {}

  async measure(ackedSeq: number): Promise<Backlog> {
    const stats = this.spool.stats();
    const events = Math.max(0, stats.lastSeq - ackedSeq);
    if (events === 0) return { events: 0, bytes: 0 };
    const want = ackedSeq + 1;
    const segments = await listSegments(this.spool.dir);
    let bytes = stats.bufferedBytes;
    let oldestMs: number | undefined;
    for (let i = 0; i < segments.length; i++) {
      const seg = segments[i]!;
      const next = segments[i + 1];
      if (next && next.firstSeq <= want) continue; // wholly acknowledged, kept for the chain
      const size = await stat(seg.path).then((s) => s.size, () => 0); // deleted meanwhile: acked
      if (seg.firstSeq >= want) {
        bytes += size;
        oldestMs ??= size > 0 ? await this.timeAt(seg.path, 0, size) : undefined;
        continue;
      }
      const offset = await this.offsetOf(seg.path, seg.firstSeq, want, size);
      bytes += size - offset;
      if (offset < size) oldestMs ??= await this.timeAt(seg.path, offset, size);
    }
    return { events, bytes, oldestMs };
  }

  /** Byte offset of `want` in the segment starting at `firstSeq` (its size if it is not there yet). */
  private async offsetOf(path: string, firstSeq: number, want: number, size: number): Promise<number> {
    const m = this.mark;
    let seq = firstSeq;
    let offset = 0;
    if (m && m.path === path && m.seq <= want) ({ seq, offset } = m);
    if (seq < want) {
      const fh = await open(path, 'r');
      try {
        const reader = new RecordReader(fh, size, offset);
        while (seq < want && (await reader.next())) seq++;
        offset = reader.offset;
      } finally {
        await fh.close();
      }
    }
    this.mark = { path, seq, offset };
    return offset;
  }

  private async timeAt(path: string, offset: number, size: number): Promise<number | undefined> {
    const fh = await open(path, 'r').catch(() => undefined);
    if (!fh) return undefined;
    try {
      const rec = await new RecordReader(fh, size, offset).next();
      if (!rec) return undefined;
      const time = (decodeEvent(rec.payload) as unknown as { time?: { seconds?: number | { toNumber(): number }; nanos?: number } }).time;
      if (!time) return undefined;
      const seconds = typeof time.seconds === 'object' ? time.seconds.toNumber() : Number(time.seconds ?? 0);
      return seconds * 1000 + Math.floor((time.nanos ?? 0) / 1e6);
    } finally {
      await fh.close();
    }
  }
}
