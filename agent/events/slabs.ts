// The slabs the spool copies records into (one writev per commit), reused once everything cut from
// them is on disk. A fresh slab per 256 KiB of events is memory the kernel faults in page by page
// and that V8 collects only in a major GC: at pgbench TPC-B rates (about 7 MB of events a second)
// the agent ran a mark-compact every two seconds or so, driven by ArrayBuffer churn alone, its heap
// staying at 16 MB.
export class Slabs {
  private readonly free: Buffer[] = [];
  /** Slabs with chunks not yet on disk, by backing store: how many, and the slab to give back. */
  private readonly pending = new Map<ArrayBufferLike, { slab: Buffer; chunks: number }>();

  /** `size`: every slab's, unless a record needs more; `keep`: how many free slabs to hold at most. */
  constructor(readonly size: number, private readonly keep: number) {}

  /** A slab of at least `bytes`, reused when one of the usual size is free. */
  take(bytes: number): Buffer {
    if (bytes <= this.size) {
      const slab = this.free.pop();
      if (slab) return slab;
    }
    return Buffer.allocUnsafeSlow(Math.max(this.size, bytes));
  }

  /** A chunk cut from `slab` now waits for the disk. */
  cut(slab: Buffer): void {
    const p = this.pending.get(slab.buffer);
    if (p) p.chunks++;
    else this.pending.set(slab.buffer, { slab, chunks: 1 });
  }

  /** `slab` is no longer written into: free now if nothing cut from it waits for the disk. */
  retire(slab: Buffer): void {
    if (!this.pending.has(slab.buffer)) this.giveBack(slab);
  }

  /** These chunks are on disk; `current` is the slab still written into, which is never given back. */
  written(chunks: readonly Buffer[], current: Buffer): void {
    for (const chunk of chunks) {
      const p = this.pending.get(chunk.buffer);
      if (!p || --p.chunks > 0) continue;
      this.pending.delete(chunk.buffer);
      if (p.slab !== current) this.giveBack(p.slab);
    }
  }

  /** Free slabs held now (tests). */
  get freeCount(): number {
    return this.free.length;
  }

  private giveBack(slab: Buffer): void {
    if (slab.length === this.size && this.free.length < this.keep) this.free.push(slab);
  }
}
