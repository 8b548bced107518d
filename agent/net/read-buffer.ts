// Socket reads into one reused buffer (net.Socket's `onread` option) instead of a fresh Buffer and a
// trip through the Readable stream machinery per read. bench/relay-ceiling.ts measures what that
// saves per relayed chunk; the PostgreSQL handler reads its server socket this way (net.connect's
// documented `onread` option; an accepted socket has none, so the job's side stays on 'data').
//
// The contract for whoever gets a chunk: it is a view into memory the next read overwrites, so
// nothing may keep it (or a subarray of it) past the callback; copy what must outlive it. One case
// cannot be seen from inside the callback: a chunk written on to another socket whose write went
// async (the kernel's buffer was full) is still referenced by that pending write. The caller says so
// with retain() (check the destination's writableLength after writing), and the next read then gets
// a fresh buffer; the old one is left to that write and the garbage collector.
import net from 'node:net';

/** Large enough for a whole pgbench result or a run of DataRows in one read. */
export const READ_BUFFER_SIZE = 64 * 1024;

export class ReadBuffer {
  private buf: Buffer;
  private retained = false;
  /** Where chunks go; replaceable (the socket may be created before its consumer exists). */
  sink: (chunk: Buffer) => void = () => {};

  constructor(private readonly size = READ_BUFFER_SIZE) {
    this.buf = Buffer.allocUnsafe(size);
  }

  /** The memory of the chunk being handled must survive it (a write holds it). */
  retain(): void {
    this.retained = true;
  }

  /** For net.connect({ onread }). */
  readonly onread: net.OnReadOpts = {
    buffer: () => {
      if (this.retained) {
        this.retained = false;
        this.buf = Buffer.allocUnsafe(this.size);
      }
      return this.buf;
    },
    callback: (n: number, buf: Uint8Array): boolean => {
      this.sink((buf as Buffer).subarray(0, n));
      return true; // stopping is the consumer's call: socket.pause() stops reading, resume() restarts it
    },
  };
}
