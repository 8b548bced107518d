// PostgreSQL wire-protocol framing, both directions (protocol 3.x).
//
// A FrameReader turns a byte stream into whole messages. It never trusts a length field: every declared
// length is checked against the message type's minimum and against a configured maximum *before* a byte
// of the body is buffered, so a peer can make the reader hold at most `maxMessageLength` bytes. A bad
// length or an unknown message type is returned as a PgProtocolError value (never thrown); after one the
// reader refuses further input, because the stream can no longer be framed.
//
// Hand-written rather than taken from pg-protocol: pg-protocol parses only the backend direction (it
// is a client library), allocates a message object per row, and has no startup phase or length limits.
// The buffering follows its idea (frames inside one chunk are subarrays of that chunk, no copy) but keeps
// a list of pieces for a frame that spans chunks and copies each such frame exactly once, so a large
// message arriving in many small chunks costs linear, not quadratic, copying.

/** An error value: the peer broke the protocol. `message` is fit to show to a user and to audit. */
export class PgProtocolError {
  readonly isPgProtocolError = true;
  constructor(
    readonly code: PgErrorCode,
    readonly message: string,
  ) {}
  toString(): string {
    return this.message;
  }
}

export type PgErrorCode =
  | 'length_too_small' // a declared length below the minimum for the message
  | 'length_too_large' // a declared length over the configured limit
  | 'bad_length' // a declared length the message type cannot have
  | 'unknown_type' // a message type byte not defined for this direction
  | 'unknown_startup_code' // a startup-phase packet with an unknown request code / protocol version
  | 'data_after_ssl' // plaintext bytes sent after an SSL/GSSENC request or acceptance (buffer stuffing)
  | 'truncated' // the stream ended inside a message
  | 'reader_stopped' // input offered after an earlier error
  | 'malformed' // a message body that does not decode
  | 'auth'; // an authentication exchange that cannot continue

export function isPgProtocolError(v: unknown): v is PgProtocolError {
  return v instanceof PgProtocolError;
}

/** Startup-phase request codes (the int32 after the length in an untyped packet). */
export const PROTOCOL_3_0 = 196608; // 3 << 16
export const SSL_REQUEST_CODE = 80877103;
export const GSSENC_REQUEST_CODE = 80877104;
export const CANCEL_REQUEST_CODE = 80877102;

/** PostgreSQL's own MAX_STARTUP_PACKET_LENGTH. */
export const DEFAULT_MAX_STARTUP_LENGTH = 10_000;
export const DEFAULT_MAX_MESSAGE_LENGTH = 64 * 1024 * 1024;

export type Direction = 'frontend' | 'backend';

/**
 * One complete message. `buffer.subarray(start, end)` is the whole message as it arrived (type byte,
 * length, body), ready to forward unchanged; `body` is the part after the length (for a startup-phase
 * packet it begins with the int32 request code). Both are views, not copies: they stay valid as long as
 * the caller keeps them, but the caller must not write into them.
 */
export interface Frame {
  /** The type byte ('Q' = 0x51 ...); 0 for startup-phase packets; for an SSL/GSSENC response, the byte. */
  type: number;
  buffer: Buffer;
  start: number;
  end: number;
  body: Buffer;
}

export interface FrameReaderOptions {
  direction: Direction;
  /** Frontend only: the stream starts with untyped startup-phase packets. Default: true for frontend. */
  startupPhase?: boolean;
  /** Largest declared length (the length field counts itself) accepted for a typed message. */
  maxMessageLength?: number;
  /** Largest declared length accepted for a startup-phase packet. */
  maxStartupLength?: number;
  /**
   * The caller reuses a chunk's memory once push() returns (a socket reading into one buffer, see
   * agent/net/read-buffer.ts): the reader then copies the partial frame it keeps. Frames passed to
   * onFrame are still views, valid only during the call.
   */
  reusedInput?: boolean;
}

// Per-direction type tables: minimum and maximum declared length (the length field includes itself).
// NOT_A_TYPE marks bytes that are not message types in that direction. Fixed-size messages have
// min == max; the rest are bounded above by the configured limit and checked in detail by decoders.
const NOT_A_TYPE = -1;
const ANY = 0x7fffffff;

function table(entries: [string, number, number][]): { min: Int32Array; max: Int32Array } {
  const min = new Int32Array(256).fill(NOT_A_TYPE);
  const max = new Int32Array(256).fill(NOT_A_TYPE);
  for (const [ch, lo, hi] of entries) {
    min[ch.charCodeAt(0)] = lo;
    max[ch.charCodeAt(0)] = hi;
  }
  return { min, max };
}

const FRONTEND = table([
  ['Q', 4, ANY], ['P', 4, ANY], ['B', 4, ANY], ['D', 4, ANY], ['E', 4, ANY], ['S', 4, 4], ['H', 4, 4],
  ['C', 4, ANY], ['d', 4, ANY], ['c', 4, 4], ['f', 4, ANY], ['X', 4, 4], ['F', 4, ANY], ['p', 4, ANY],
]);

const BACKEND = table([
  ['R', 8, ANY], ['K', 12, 264], ['S', 4, ANY], ['Z', 5, 5], ['T', 4, ANY], ['D', 4, ANY], ['C', 4, ANY],
  ['E', 4, ANY], ['N', 4, ANY], ['A', 4, ANY], ['G', 4, ANY], ['H', 4, ANY], ['W', 4, ANY], ['d', 4, ANY],
  ['c', 4, 4], ['1', 4, 4], ['2', 4, 4], ['3', 4, 4], ['n', 4, 4], ['s', 4, 4], ['t', 4, ANY], ['I', 4, 4],
  ['V', 4, ANY], ['v', 4, ANY],
]);

/** 'Q' for printable type bytes, 0x01 otherwise: for error messages. */
export function typeLabel(type: number): string {
  return type >= 0x20 && type < 0x7f ? `'${String.fromCharCode(type)}'` : `0x${type.toString(16).padStart(2, '0')}`;
}

const EMPTY = Buffer.alloc(0);

function stuffing(extra: number, after: string): PgProtocolError {
  return new PgProtocolError('data_after_ssl', `${extra} unencrypted byte(s) arrived after ${after}; nothing may precede the TLS/GSS handshake`);
}

/**
 * Feed with push(chunk, onFrame); complete frames are passed to onFrame synchronously, in order.
 *
 * Startup phase (frontend): while `startupPhase` is true, packets are untyped (int32 length, int32 code).
 * The reader leaves the startup phase by itself after a protocol-3 StartupMessage; after an SSLRequest or
 * GSSENCRequest it stays in it (a denied client sends another startup packet; an accepted one starts TLS
 * and the caller feeds the decrypted stream, still in the startup phase). The caller may also set the
 * flag, including from inside onFrame: it applies from the next frame on.
 *
 * Backend: set `expectSslResponse` after sending SSLRequest/GSSENCRequest upstream; the next byte is then
 * delivered as a one-byte frame whose type is 'S'/'N' (or 'G'/'N'). A server that answers with an
 * ErrorResponse instead ('E', servers too old for SSL) is framed as a normal message.
 *
 * Bytes after an SSLRequest/GSSENCRequest (frontend) or after an accepting 'S'/'G' (backend) in the same
 * push are a protocol error, returned without delivering the request or response: nothing may precede the
 * TLS handshake (CVE-2021-23214, CVE-2021-23222). Bytes that arrive in a later push are the caller's to
 * refuse: once it has answered 'S', it must hand the socket to TLS and check `buffered` is 0.
 * onFrame must not throw; if it does, the exception propagates and the rest of that chunk is lost.
 * The reader keeps views of the chunks it is given (frames and a partial tail): callers must not reuse or
 * overwrite a chunk's memory afterwards (socket 'data' chunks are fresh buffers; that is fine), unless
 * they say so with `reusedInput`, which makes the reader copy the partial tail it keeps.
 */
export class FrameReader {
  readonly direction: Direction;
  startupPhase: boolean;
  expectSslResponse = false;
  readonly maxMessageLength: number;
  readonly maxStartupLength: number;

  private readonly minLen: Int32Array;
  private readonly maxLen: Int32Array;
  // The partial frame: pieces (views of earlier chunks) holding its first pendingBytes bytes.
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** Total size of the partial frame (type byte included) once its header is known, else -1. */
  private need = -1;
  private readonly header = Buffer.alloc(8);
  private failed: PgProtocolError | undefined;
  private readonly copyKept: boolean;

  constructor(opts: FrameReaderOptions) {
    this.direction = opts.direction;
    this.startupPhase = opts.startupPhase ?? opts.direction === 'frontend';
    this.maxMessageLength = opts.maxMessageLength ?? DEFAULT_MAX_MESSAGE_LENGTH;
    this.maxStartupLength = opts.maxStartupLength ?? DEFAULT_MAX_STARTUP_LENGTH;
    this.copyKept = opts.reusedInput ?? false;
    const t = opts.direction === 'frontend' ? FRONTEND : BACKEND;
    this.minLen = t.min;
    this.maxLen = t.max;
  }

  /** Bytes held for a message not yet complete. */
  get buffered(): number {
    return this.pendingBytes;
  }

  /** The error that stopped the reader, if any. */
  get error(): PgProtocolError | undefined {
    return this.failed;
  }

  /**
   * Consumes a chunk. Returns undefined, or the protocol error that stopped the reader (frames before the
   * bad one have been delivered). Once stopped, every further push returns a 'reader_stopped' error.
   */
  push(chunk: Buffer, onFrame: (frame: Frame) => void): PgProtocolError | undefined {
    if (this.failed !== undefined) {
      return new PgProtocolError('reader_stopped', `no further input accepted after a protocol error: ${this.failed.message}`);
    }
    if (chunk.length === 0) return undefined;
    let off = 0;
    if (this.pendingBytes > 0) {
      const r = this.completePending(chunk, onFrame);
      if (r === undefined) return undefined; // consumed whole chunk, frame still incomplete
      if (r instanceof PgProtocolError) return this.fail(r);
      off = r;
    }
    return this.scan(chunk, off, onFrame);
  }

  /**
   * Call when the stream ends: returns an error if a message was cut off. The reader stays usable only
   * for inspection afterwards.
   */
  finish(): PgProtocolError | undefined {
    if (this.failed !== undefined || this.pendingBytes === 0) return undefined;
    const what = this.need >= 0
      ? `${this.describePending()} after ${this.pendingBytes} of its ${this.need} bytes`
      : `after ${this.pendingBytes} byte(s) of a message header`;
    return this.fail(new PgProtocolError('truncated', `the stream ended inside a message: ${what}`));
  }

  private describePending(): string {
    const first = this.pending[0];
    if (this.startupPhase || first === undefined) return 'a startup packet';
    return `message ${typeLabel(first[0] ?? 0)}`;
  }

  private fail(err: PgProtocolError): PgProtocolError {
    this.failed = err;
    this.pending = [];
    this.pendingBytes = 0;
    this.need = -1;
    return err;
  }

  /** Returns the offset in chunk where the remaining bytes start, undefined if all consumed, or an error. */
  private completePending(chunk: Buffer, onFrame: (frame: Frame) => void): number | undefined | PgProtocolError {
    const have = this.pendingBytes;
    if (this.need < 0) {
      const hs = this.startupPhase ? 4 : 5;
      if (have + chunk.length < hs) {
        this.pending.push(this.kept(chunk));
        this.pendingBytes += chunk.length;
        return undefined;
      }
      let k = 0;
      for (const p of this.pending) {
        p.copy(this.header, k);
        k += p.length;
      }
      chunk.copy(this.header, k, 0, hs - have);
      const size = this.frameSize(this.header, 0);
      if (size instanceof PgProtocolError) return size;
      this.need = size;
    }
    if (have + chunk.length < this.need) {
      this.pending.push(this.kept(chunk));
      this.pendingBytes += chunk.length;
      return undefined;
    }
    // The one copy: assemble the spanning frame.
    const take = this.need - have;
    const buf = Buffer.allocUnsafe(this.need);
    let k = 0;
    for (const p of this.pending) {
      p.copy(buf, k);
      k += p.length;
    }
    chunk.copy(buf, k, 0, take);
    this.pending = [];
    this.pendingBytes = 0;
    this.need = -1;
    const err = this.deliver(buf, 0, buf.length, chunk.length - take, onFrame);
    if (err !== undefined) return err;
    return take;
  }

  private scan(chunk: Buffer, off: number, onFrame: (frame: Frame) => void): PgProtocolError | undefined {
    const len = chunk.length;
    while (off < len) {
      if (this.expectSslResponse) {
        const b = chunk[off]!;
        this.expectSslResponse = false;
        if (b !== 0x45 /* E */) {
          if (b !== 0x53 /* S */ && b !== 0x47 /* G */ && b !== 0x4e /* N */) {
            return this.fail(new PgProtocolError('unknown_type', `the server answered the SSL/GSSENC request with ${typeLabel(b)}, not 'S', 'G', 'N' or an error`));
          }
          if (b !== 0x4e && off + 1 < len) {
            return this.fail(stuffing(len - off - 1, 'the server accepted encryption'));
          }
          onFrame({ type: b, buffer: chunk, start: off, end: off + 1, body: EMPTY });
          off += 1;
          continue;
        }
      }
      const avail = len - off;
      const hs = this.startupPhase ? 4 : 5;
      if (avail < hs) {
        this.stash(chunk, off, -1);
        return undefined;
      }
      const size = this.frameSize(chunk, off);
      if (size instanceof PgProtocolError) return this.fail(size);
      if (avail < size) {
        this.stash(chunk, off, size);
        return undefined;
      }
      const err = this.deliver(chunk, off, off + size, avail - size, onFrame);
      if (err !== undefined) return this.fail(err);
      off += size;
    }
    return undefined;
  }

  private stash(chunk: Buffer, off: number, need: number): void {
    const rest = this.kept(off === 0 ? chunk : chunk.subarray(off));
    this.pending.push(rest);
    this.pendingBytes = rest.length;
    this.need = need;
  }

  /** What the reader keeps of a chunk past push(): a copy when the caller reuses the memory. */
  private kept(part: Buffer): Buffer {
    return this.copyKept ? Buffer.from(part) : part;
  }

  /** Validates the header at buf[off..]; returns the whole frame's size in bytes, or an error. */
  private frameSize(buf: Buffer, off: number): number | PgProtocolError {
    if (this.startupPhase) {
      const declared = buf.readInt32BE(off);
      if (declared < 8) {
        return new PgProtocolError('length_too_small', `startup packet declares length ${declared}, less than the 8-byte minimum`);
      }
      if (declared > this.maxStartupLength) {
        return new PgProtocolError('length_too_large', `startup packet declares length ${declared}, over the ${this.maxStartupLength}-byte limit`);
      }
      return declared;
    }
    const type = buf[off]!;
    const min = this.minLen[type]!;
    if (min === NOT_A_TYPE) {
      return new PgProtocolError('unknown_type', `unknown ${this.direction} message type ${typeLabel(type)}`);
    }
    const declared = buf.readInt32BE(off + 1);
    if (declared < 4) {
      return new PgProtocolError('length_too_small', `message ${typeLabel(type)} declares length ${declared}, less than the 4 bytes of the length field itself`);
    }
    if (declared > this.maxMessageLength) {
      return new PgProtocolError('length_too_large', `message ${typeLabel(type)} declares length ${declared}, over the ${this.maxMessageLength}-byte limit`);
    }
    const max = this.maxLen[type]!;
    if (declared < min || declared > max) {
      const range = min === max ? `always has length ${min}` : max === ANY ? `needs at least ${min}` : `must be ${min} to ${max}`;
      return new PgProtocolError('bad_length', `message ${typeLabel(type)} declares length ${declared}; that message type ${range}`);
    }
    return declared + 1;
  }

  /** Hands over one frame; `following` = bytes after it in the current chunk. */
  private deliver(buf: Buffer, start: number, end: number, following: number, onFrame: (frame: Frame) => void): PgProtocolError | undefined {
    if (!this.startupPhase) {
      onFrame({ type: buf[start]!, buffer: buf, start, end, body: buf.subarray(start + 5, end) });
      return undefined;
    }
    const declared = end - start;
    const code = buf.readInt32BE(start + 4);
    let leaveStartup = false;
    switch (code) {
      case SSL_REQUEST_CODE:
      case GSSENC_REQUEST_CODE:
        if (declared !== 8) {
          return new PgProtocolError('bad_length', `${code === SSL_REQUEST_CODE ? 'SSLRequest' : 'GSSENCRequest'} declares length ${declared}; it always has length 8`);
        }
        // Checked before the request is delivered, so that it is never acted upon.
        if (following > 0) return stuffing(following, code === SSL_REQUEST_CODE ? 'the SSLRequest' : 'the GSSENCRequest');
        break;
      case CANCEL_REQUEST_CODE:
        // 3.0: pid + 4-byte key = 16; protocol 3.2 allows keys of 4..256 bytes.
        if (declared < 16 || declared > 12 + 256) {
          return new PgProtocolError('bad_length', `CancelRequest declares length ${declared}; it must be 16 to 268`);
        }
        break;
      default: {
        const major = code >>> 16;
        if (major !== 3) {
          const minor = code & 0xffff;
          return new PgProtocolError('unknown_startup_code', `startup packet requests protocol ${major}.${minor} (code ${code}); only protocol 3.x is supported`);
        }
        leaveStartup = true;
      }
    }
    onFrame({ type: 0, buffer: buf, start, end, body: buf.subarray(start + 4, end) });
    if (leaveStartup) this.startupPhase = false;
    return undefined;
  }
}
