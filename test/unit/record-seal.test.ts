// Spool record sealing: the native one-call path (agent/native/src/seal.cc) writes the same record
// bytes and chain hash as the JavaScript path, and refuses what does not fit instead of writing past
// the target.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { crc32 } from 'node:zlib';
import fc from 'fast-check';
import { HEADER_BYTES, sealRecordJs, sealRecordNative, type SealRecord } from '../../agent/events/record-format.js';

function native(): SealRecord {
  assert.ok(sealRecordNative, 'the native sealRecord is unavailable (addon missing or this node exports no SHA256/crc32)');
  return sealRecordNative;
}

test('sealRecord: native and JS write the same record and hash at any offset', () => {
  const seal = native();
  fc.assert(fc.property(fc.uint8Array({ maxLength: 3000 }), fc.nat({ max: 64 }), (payload, offset) => {
    const size = offset + HEADER_BYTES + payload.length + 7;
    const a = Buffer.alloc(size, 0xaa), b = Buffer.alloc(size, 0xaa);
    const ha = Buffer.alloc(32), hb = Buffer.alloc(32);
    assert.equal(seal(a, offset, payload, ha), offset + HEADER_BYTES + payload.length);
    assert.equal(sealRecordJs(b, offset, payload, hb), offset + HEADER_BYTES + payload.length);
    assert.deepEqual(a, b);
    assert.deepEqual(ha, hb);
    // And both are what the format says, computed independently.
    assert.equal(a.readUInt32LE(offset), payload.length);
    assert.equal(a.readUInt32LE(offset + 4), crc32(payload));
    assert.deepEqual(ha, createHash('sha256').update(payload).digest());
  }));
});

test('sealRecord (native): the crc is zlib\'s at every length, alignment and size, folded or not', () => {
  // The native crc folds 16-byte blocks with carry-less multiplication from 64 bytes on and leaves
  // the tail to zlib: every length up to 1,100 crosses each boundary (64, lanes of 16, tails of
  // 0-15), at three alignments of the payload, then a megabyte.
  const seal = native();
  const data = Buffer.alloc((1 << 20) + 3);
  for (let i = 0, x = 12345; i < data.length; i++) data[i] = (x = (x * 1103515245 + 12345) >>> 0) >>> 24;
  const check = (payload: Buffer) => {
    const out = Buffer.alloc(HEADER_BYTES + payload.length);
    seal(out, 0, payload, Buffer.alloc(32));
    assert.equal(out.readUInt32LE(4), crc32(payload), `length ${payload.length} at ${payload.byteOffset}`);
  };
  for (let n = 0; n <= 1100; n++) for (let at = 0; at < 3; at++) check(data.subarray(at, at + n));
  check(data.subarray(3));
  check(Buffer.alloc(4096)); // all zero: the state alone carries the crc
  check(Buffer.alloc(4096, 0xff));
});

test('sealRecord: a payload that is a view into a larger buffer is sealed as the view', () => {
  const seal = native();
  const big = Buffer.from('0123456789abcdefghij');
  const view = big.subarray(5, 12);
  const out = Buffer.alloc(64), hashOut = Buffer.alloc(32);
  seal(out, 0, view, hashOut);
  assert.equal(out.subarray(HEADER_BYTES, HEADER_BYTES + 7).toString(), '56789ab');
  assert.deepEqual(hashOut, createHash('sha256').update('56789ab').digest());
});

test('sealRecord (native): refuses a record that does not fit, and bad arguments, without writing', () => {
  const seal = native();
  const out = Buffer.alloc(20, 0x55), hashOut = Buffer.alloc(32);
  assert.throws(() => seal(out, 10, Buffer.alloc(3), hashOut), RangeError); // 10 + 8 + 3 > 20
  assert.throws(() => seal(out, -1, Buffer.alloc(1), hashOut), RangeError);
  assert.throws(() => seal(out, 21, Buffer.alloc(0), hashOut), RangeError);
  assert.throws(() => seal(out, 0, Buffer.alloc(1), Buffer.alloc(31)), RangeError);
  assert.throws(() => seal(out, 0, 'text' as unknown as Uint8Array, hashOut), TypeError);
  assert.deepEqual(out, Buffer.alloc(20, 0x55));
  assert.equal(seal(out, 9, Buffer.alloc(3, 1), hashOut), 20); // exactly fits
});
