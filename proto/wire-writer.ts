// A minimal protobuf wire writer for the agent's hottest path (one STATEMENT event per statement).
// Written by hand because protobufjs has no cheap way to splice bytes encoded once per session into
// each event: its fromObject + encode cost about 35 us per statement event, most of the agent's own
// CPU per select. This writer only appends tags, varints, length-delimited bytes and raw bytes to one
// buffer reused across events; the message layouts stay in proto/runguard/v1/*.proto and
// test/unit/event-encoding.test.ts proves the output equals protobufjs's, byte for byte.

const WIRE_VARINT = 0;
const WIRE_LEN = 2;
const MAX_NESTING = 8;

/** Thrown for a value this writer does not encode the way protobufjs would; callers fall back. */
export class UnsupportedValue extends Error {}

export class WireWriter {
  private buf: Buffer;
  pos = 0;
  private readonly forks = new Int32Array(MAX_NESTING);
  private depth = 0;

  constructor(initial = 4096) {
    this.buf = Buffer.allocUnsafe(initial);
  }

  reset(): this {
    this.pos = 0;
    this.depth = 0;
    return this;
  }

  /** The bytes written since reset(); a view that the next reset() overwrites. */
  view(): Buffer {
    return this.buf.subarray(0, this.pos);
  }

  private reserve(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  /** Unsigned varint of a non-negative safe integer (uint32, uint64, enum values, lengths). */
  varint(v: number): void {
    this.reserve(10);
    const buf = this.buf;
    let pos = this.pos;
    // Division, not >>>, past 2^31: JS bit operators are 32-bit.
    while (v > 0x7f) {
      buf[pos++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    buf[pos++] = v;
    this.pos = pos;
  }

  tag(field: number, wire: number): void {
    this.varint(field * 8 + wire);
  }

  /** uint64 / uint32 / enum field, omitted at its default 0 as proto3 (and protobufjs) do. */
  uintField(field: number, v: number | undefined | null, max = Number.MAX_SAFE_INTEGER): void {
    if (v == null) return;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max) throw new UnsupportedValue(`field ${field}: ${String(v)}`);
    if (v === 0) return;
    this.tag(field, WIRE_VARINT);
    this.varint(v);
  }

  boolField(field: number, v: boolean | undefined | null): void {
    if (!v) return;
    this.tag(field, WIRE_VARINT);
    this.varint(1);
  }

  /** A string field, omitted when empty (proto3 implicit presence). */
  stringField(field: number, s: string | undefined | null): void {
    if (s == null) return;
    if (typeof s !== 'string') throw new UnsupportedValue(`field ${field}: not a string`);
    if (s.length === 0) return;
    this.tag(field, WIRE_LEN);
    this.stringBody(s);
  }

  /** Every element, empty ones too: repeated fields have no default to omit. */
  repeatedStringField(field: number, list: readonly string[] | undefined | null): void {
    if (list == null) return;
    if (!Array.isArray(list)) throw new UnsupportedValue(`field ${field}: not an array`);
    for (const s of list) {
      if (typeof s !== 'string') throw new UnsupportedValue(`field ${field}: element not a string`);
      this.tag(field, WIRE_LEN);
      this.stringBody(s);
    }
  }

  bytesField(field: number, b: Uint8Array): void {
    if (b.length === 0) return;
    this.tag(field, WIRE_LEN);
    this.varint(b.length);
    this.raw(b);
  }

  /**
   * Length-prefixed UTF-8. Lone surrogates become U+FFFD (Buffer's encoder), so the stored bytes are
   * always valid UTF-8 that any protobuf implementation accepts.
   */
  private stringBody(s: string): void {
    // Most strings here are short ASCII (types, rules, tags, names, statements): copied by a loop,
    // which costs less than Buffer.write's call into C++. Any other character falls through.
    const len = s.length;
    if (len < 0x80) {
      this.reserve(1 + len);
      const buf = this.buf;
      const at = this.pos + 1;
      let i = 0;
      for (; i < len; i++) {
        const c = s.charCodeAt(i);
        if (c >= 0x80) break;
        buf[at + i] = c;
      }
      if (i === len) {
        buf[this.pos] = len; // < 128: one varint byte
        this.pos = at + len;
        return;
      }
    }
    // Short strings: one pass, length guessed at 1 byte and fixed up if the body is longer.
    if (len < 0x80 / 3) {
      this.reserve(1 + s.length * 3);
      const n = this.buf.write(s, this.pos + 1);
      this.buf[this.pos] = n; // < 128: one varint byte
      this.pos += 1 + n;
      return;
    }
    const n = Buffer.byteLength(s, 'utf8');
    this.varint(n);
    this.reserve(n);
    this.pos += this.buf.write(s, this.pos, n);
  }

  raw(b: Uint8Array): void {
    this.reserve(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }

  /** Starts a length-delimited nested message; close it with ldelim(). */
  fork(field: number): void {
    if (this.depth === MAX_NESTING) throw new UnsupportedValue('nesting too deep');
    this.tag(field, WIRE_LEN);
    this.reserve(1);
    // One byte reserved for the length; ldelim() moves the body if the length needs more.
    this.forks[this.depth++] = this.pos++;
  }

  ldelim(): void {
    const at = this.forks[--this.depth]!;
    const len = this.pos - at - 1;
    if (len < 0x80) {
      this.buf[at] = len;
      return;
    }
    let extra = 0;
    for (let v = len; v > 0x7f; v = Math.floor(v / 0x80)) extra++;
    this.reserve(extra);
    this.buf.copyWithin(at + 1 + extra, at + 1, this.pos);
    const end = this.pos + extra;
    this.pos = at;
    this.varint(len);
    this.pos = end;
  }
}
