// What a relay produces for one socket while it handles one input chunk, written at once. A
// message relayed unchanged is a view into the chunk it arrived in, so a run of such messages is
// one contiguous range of that chunk: it goes out as one view instead of one write per message.
// Each socket.write() costs a request object and a queue entry, and one per message was a
// measurable share of the PostgreSQL handler's CPU per statement.
import type { Writable } from 'node:stream';

export class Outbox {
  private readonly parts: Buffer[] = [];
  // The open run: bytes [start, end) of one ArrayBuffer, not yet materialised as a Buffer.
  private runBuffer: ArrayBufferLike | null = null;
  private runStart = 0;
  private runEnd = 0;

  /** Queues b after everything queued so far; b must not change until flush(). */
  add(b: Buffer): void {
    if (b.length === 0) return;
    // Adjacent in the same memory: already in order there, so the run just grows.
    if (b.buffer === this.runBuffer && b.byteOffset === this.runEnd) {
      this.runEnd += b.length;
      return;
    }
    this.closeRun();
    this.runBuffer = b.buffer;
    this.runStart = b.byteOffset;
    this.runEnd = b.byteOffset + b.length;
  }

  get empty(): boolean {
    return this.runBuffer === null && this.parts.length === 0;
  }

  /**
   * Writes what is queued to `to`: one write, or one corked writev for several pieces. Returns
   * false when the socket's buffer is full (the caller pauses the other side), like write().
   * A destroyed socket gets nothing: the session is ending and its end reason says why.
   */
  flush(to: Writable): boolean {
    this.closeRun();
    const parts = this.parts;
    if (parts.length === 0) return true;
    if (to.destroyed || !to.writable) {
      parts.length = 0;
      return true;
    }
    let ok: boolean;
    if (parts.length === 1) {
      ok = to.write(parts[0]!);
    } else {
      to.cork();
      ok = true;
      for (const p of parts) ok = to.write(p);
      to.uncork();
    }
    parts.length = 0;
    return ok;
  }

  /** What is queued, as one Buffer (null when nothing is), for a writer that is not a stream. */
  take(): Buffer | null {
    this.closeRun();
    const parts = this.parts;
    if (parts.length === 0) return null;
    const b = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
    parts.length = 0;
    return b;
  }

  /** Drops what is queued (the socket it was for is gone). */
  clear(): void {
    this.runBuffer = null;
    this.parts.length = 0;
  }

  private closeRun(): void {
    if (this.runBuffer === null) return;
    this.parts.push(Buffer.from(this.runBuffer as ArrayBuffer, this.runStart, this.runEnd - this.runStart));
    this.runBuffer = null;
  }
}
