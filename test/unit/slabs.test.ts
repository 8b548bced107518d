// The spool's slab reuse (agent/events/slabs.ts): a slab goes back only when nothing cut from it
// waits for the disk and it is not the one being written into.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Slabs } from '../../agent/events/slabs.js';

test('a retired slab with nothing pending is reused at once; an oversized one never', () => {
  const slabs = new Slabs(1024, 2);
  const a = slabs.take(100);
  assert.equal(a.length, 1024);
  slabs.retire(a);
  assert.equal(slabs.take(1024), a, 'the same slab');
  const big = slabs.take(5000);
  assert.equal(big.length, 5000);
  slabs.retire(big);
  assert.equal(slabs.freeCount, 0, 'oversized slabs are not kept');
  slabs.retire(a);
  assert.notEqual(slabs.take(2000), a, 'a request over the usual size gets a new slab');
});

test('a slab comes back only once every chunk cut from it is written, and never while current', () => {
  const slabs = new Slabs(1024, 4);
  const a = slabs.take(1);
  const c1 = a.subarray(0, 100);
  slabs.cut(a);
  const c2 = a.subarray(100, 300);
  slabs.cut(a);
  const b = slabs.take(1);
  slabs.retire(a); // a is full: b is written into now
  assert.equal(slabs.freeCount, 0, 'two chunks of a wait for the disk');
  slabs.written([c1], b);
  assert.equal(slabs.freeCount, 0, 'one chunk of a still waits');
  slabs.written([c2], b);
  assert.equal(slabs.freeCount, 1, 'a is free');
  assert.equal(slabs.take(1), a);
  // b: its chunk is written while b is still the current slab; it comes back when retired.
  const d1 = b.subarray(0, 10);
  slabs.cut(b);
  slabs.written([d1], b);
  assert.equal(slabs.freeCount, 0, 'the current slab is never handed back');
  slabs.retire(b);
  assert.equal(slabs.freeCount, 1);
});

test('at most `keep` free slabs are held', () => {
  const slabs = new Slabs(64, 2);
  const taken = [slabs.take(1), slabs.take(1), slabs.take(1)];
  for (const s of taken) slabs.retire(s);
  assert.equal(slabs.freeCount, 2);
});
