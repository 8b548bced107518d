// The on-disk framing of spool records: [u32 LE payload length][u32 LE crc32 of payload][payload].
// Written by hand because it is eight bytes of header around bytes that protobufjs already
// produced; no framing library would save code, and the reader must distrust every field anyway.
import { hash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
import { loadNative } from '../native/index.js';

export const HEADER_BYTES = 8;

/**
 * A length field above this is corruption, not a record: it bounds what a reader allocates
 * before the crc can vouch for anything.
 */
export const MAX_RECORD_PAYLOAD = 4 * 1024 * 1024;

/** Frames `payload` into `target` at `offset`; returns the offset after the record. */
export function putRecord(target: Buffer, offset: number, payload: Uint8Array): number {
  target.writeUInt32LE(payload.length, offset);
  target.writeUInt32LE(crc32(payload), offset + 4);
  target.set(payload, offset + HEADER_BYTES);
  return offset + HEADER_BYTES + payload.length;
}

/** Bytes of an event's chain hash (SHA-256 of its encoded payload). */
export const HASH_BYTES = 32;

/**
 * Frames `payload` into `target` at `offset` and writes its SHA-256 into `hashOut`; returns the
 * offset after the record. The spool's per-event step: putRecord plus the chain hash.
 */
export type SealRecord = (target: Buffer, offset: number, payload: Uint8Array, hashOut: Buffer) => number;

export const sealRecordJs: SealRecord = (target, offset, payload, hashOut) => {
  const end = putRecord(target, offset, payload);
  hash('sha256', payload, 'buffer').copy(hashOut);
  return end;
};

/**
 * The native addon's sealRecord (agent/native/src/seal.cc): the same bytes in one call without
 * allocating, which matters at one call per audited statement. Null without the addon.
 */
export const sealRecordNative: SealRecord | null = (() => {
  const { addon } = loadNative();
  return addon?.sealAvailable() ? addon.sealRecord : null;
})();

export const sealRecord: SealRecord = sealRecordNative ?? sealRecordJs;

/** A durable event as the spool's readers hand it out. */
export interface SpoolRecord {
  seq: number;
  /** The encoded AuditEvent, exactly as hashed into the chain. */
  bytes: Buffer;
}

export interface FramedRecord {
  /** Byte offset of the record header in its file. */
  offset: number;
  payload: Buffer;
}

export interface Corruption {
  offset: number;
  reason: string;
}

// Reads ahead in large chunks so that scanning a segment costs a few syscalls, not two per record.
const READ_CHUNK = 1024 * 1024;

/**
 * Reads framed records from `start` up to `end` (exclusive) of an open file. `next()` returns
 * null at `end` or at the first bad record, whose offset and reason are then in `corruption`.
 * Payloads are views into freshly allocated read chunks, never reused, so callers may keep them.
 */
export class RecordReader {
  corruption: Corruption | null = null;
  private buf: Buffer = Buffer.alloc(0);
  private bufStart: number;
  private pos = 0;

  constructor(
    private readonly fh: FileHandle,
    private readonly end: number,
    start = 0,
  ) {
    this.bufStart = start;
  }

  /** File offset of the next record, i.e. the end of the last good one. */
  get offset(): number {
    return this.bufStart + this.pos;
  }

  async next(): Promise<FramedRecord | null> {
    if (this.corruption) return null;
    const offset = this.offset;
    const left = this.end - offset;
    if (left <= 0) return null;
    if (left < HEADER_BYTES) return this.fail(offset, `${left} stray bytes, too few for a record header`);
    if (!(await this.fill(HEADER_BYTES))) return this.fail(offset, 'the file ends inside a record header');
    const length = this.buf.readUInt32LE(this.pos);
    if (length === 0) return this.fail(offset, 'record length is 0');
    if (length > MAX_RECORD_PAYLOAD) return this.fail(offset, `record length ${length} exceeds the ${MAX_RECORD_PAYLOAD}-byte bound`);
    if (length > left - HEADER_BYTES) return this.fail(offset, `record length ${length} runs past the end of the file (${left - HEADER_BYTES} bytes left)`);
    if (!(await this.fill(HEADER_BYTES + length))) return this.fail(offset, 'the file ends inside a record');
    const payload = this.buf.subarray(this.pos + HEADER_BYTES, this.pos + HEADER_BYTES + length);
    if (crc32(payload) !== this.buf.readUInt32LE(this.pos + 4)) return this.fail(offset, 'crc32 mismatch');
    this.pos += HEADER_BYTES + length;
    return { offset, payload };
  }

  private fail(offset: number, reason: string): null {
    this.corruption = { offset, reason };
    return null;
  }

  /** Makes at least `need` unread bytes available; false if the file is shorter than promised. */
  private async fill(need: number): Promise<boolean> {
    const have = this.buf.length - this.pos;
    if (have >= need) return true;
    const fileOffset = this.bufStart + this.buf.length;
    const want = Math.min(Math.max(need - have, READ_CHUNK), this.end - fileOffset);
    const next = Buffer.allocUnsafe(have + want);
    this.buf.copy(next, 0, this.pos);
    let got = 0;
    while (got < want) {
      const { bytesRead } = await this.fh.read(next, have + got, want - got, fileOffset + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    this.bufStart += this.pos;
    this.pos = 0;
    this.buf = next.subarray(0, have + got);
    return have + got >= need;
  }
}
