import { test } from 'node:test';
import assert from 'node:assert/strict';
import { sessionId } from '../../agent/proxy/server.js';

test('session ids are RFC 9562 UUIDv7: version 7, variant 10, ordered by time, unique', () => {
  const t = 1_795_000_000_000;
  const a = sessionId(t);
  const b = sessionId(t + 1);
  assert.match(a, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(parseInt(a.replace(/-/g, '').slice(0, 12), 16), t, 'the first 48 bits are the Unix time in ms');
  assert.ok(a < b, 'a later session sorts after an earlier one');
  const many = new Set(Array.from({ length: 10_000 }, () => sessionId(t)));
  assert.equal(many.size, 10_000, 'ids from the same millisecond differ');
});
