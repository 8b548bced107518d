// The relay threads' batches as JavaScript receives them (agent/native/src/relay.cc call_js): every
// record forwarded, in order, and all of them in one Buffer that the addon reuses from batch to
// batch (a fresh ArrayBuffer per batch made V8 run a mark-compact every second or two under load).
// The relay here sends one message at a time (batchSends false: the path taken where io_uring is
// refused); relay-send-batch.test.ts covers the batched sends.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { loadNative } from '../../agent/native/index.js';
import { dataRow } from '../../agent/pg/messages.js';
import { fdOf, socketPair } from '../helpers/socket-pair.js';

const { addon } = loadNative();
const skip = addon ? false : 'the native addon is not built';


test('relay batches: every forwarded record arrives in order, in one reused buffer', { skip }, async () => {
  const native = addon!;
  const buffers = new Set<ArrayBufferLike>();
  const replayed: Buffer[] = [];
  let batches = 0;
  native.relayStart((batch, length) => {
    batches++;
    buffers.add(batch.buffer);
    assert.ok(length <= batch.length, 'the length is within the buffer');
    for (let off = 0; off + 24 <= length; ) {
      const len = batch.readUInt32LE(off + 12);
      // Only this call may read the buffer: what is kept is copied.
      if (batch[off + 4] === 1 /* kReplay */) replayed.push(Buffer.from(batch.subarray(off + 24, off + 24 + len)));
      off += 24 + len;
    }
  }, 1 << 20, 1, 1, false);
  const client = await socketPair({ pauseOnConnect: true });
  const server = await socketPair({ pauseOnConnect: true });
  try {
    // The relay reads the session's sockets (the accepted ends) from now on: the agent closes its
    // own, this test keeps them paused (pauseOnConnect) and uses the far ends only.
    native.relayAdopt(1, fdOf(client.b), fdOf(server.b), null);
    const received: Buffer[] = [];
    let receivedBytes = 0;
    client.a.on('data', (d: Buffer) => { received.push(d); receivedBytes += d.length; });

    const sent: Buffer[] = [];
    let sentBytes = 0;
    for (let i = 0; i < 60; i++) {
      const rows = Buffer.concat([dataRow([`row ${i}`]), dataRow([`second row ${i}`])]);
      sent.push(rows);
      sentBytes += rows.length;
      server.a.write(rows);
      for (let wait = 0; receivedBytes < sentBytes && wait < 500; wait++) await sleep(2);
      await sleep(3); // past the 1 ms audit delay: about one batch per write
    }
    for (let wait = 0; Buffer.concat(replayed).length < sentBytes && wait < 500; wait++) await sleep(2);
    assert.ok(Buffer.concat(received).equals(Buffer.concat(sent)), 'the client got every byte the server sent');
    assert.ok(Buffer.concat(replayed).equals(Buffer.concat(sent)), 'the replay records hold every message, in order');
    assert.ok(batches >= 20, `${batches} batches`);
    assert.equal(buffers.size, 1, `${batches} batches came in ${buffers.size} buffers`);
    const stats = native.relayStats();
    assert.equal(stats.batchedThreads, 0, 'asked not to, the relay sends one at a time');
    assert.equal(stats.batchedTurns, 0);
    native.relayClose(1);
  } finally {
    client.close();
    server.close();
  }
});
