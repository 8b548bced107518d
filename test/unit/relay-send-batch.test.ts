// The relay's batched sends (agent/native/src/send_batch.h): one io_uring call per loop turn gives
// each socket exactly what send(2) would have, errors included, and the relay's sessions get every
// byte in order when their requests to servers share turns. Where the kernel refuses io_uring
// (checked below) the same assertions hold for the plain path the batch falls back to.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { loadNative } from '../../agent/native/index.js';
import { copyData, dataRow } from '../../agent/pg/messages.js';
import { fdOf, socketPair } from '../helpers/socket-pair.js';

const { addon } = loadNative();
const skip = addon ? false : 'the native addon is not built';
const DISABLED = '/proc/sys/kernel/io_uring_disabled';
/** io_uring is there for root unless the sysctl says 2 (0: all, 1: a group; root passes both). */
const ringAllowed = !existsSync(DISABLED) || readFileSync(DISABLED, 'utf8').trim() !== '2';
const errno = os.constants.errno;

test('a batch of sends gives each socket what send(2) would, through the ring and without', { skip, timeout: 60_000 }, async () => {
  const native = addon!;
  for (const useRing of [true, false]) {
    // More sockets than one ring chunk (64 sends per io_uring_enter).
    const pairs = await Promise.all(Array.from({ length: 70 }, () => socketPair({ pauseOnConnect: true })));
    const devNull = openSync('/dev/null', 'w');
    try {
      const messages = pairs.map((_, i) => Buffer.from(`message ${i} `.repeat(i + 1)));
      const got = pairs.map(() => [] as Buffer[]);
      pairs.forEach((p, i) => p.a.on('data', (d: Buffer) => got[i]!.push(d)));
      // The accepted ends (b) are the relay's side: Node never reads them (pauseOnConnect).
      const r = native.sendBatch([...pairs.map((p) => fdOf(p.b)), -1, devNull], [...messages, Buffer.from('x'), Buffer.from('y')], useRing);
      assert.equal(r.batched, useRing && ringAllowed, 'the ring is used when asked for and allowed');
      assert.deepEqual(r.results.slice(0, 70), messages.map((m) => m.length), 'every send wrote all of its buffer');
      assert.equal(r.results[70], -errno.EBADF, 'a closed descriptor fails as send(2) fails it');
      assert.equal(r.results[71], -errno.ENOTSOCK, 'so does a file that is no socket');
      for (let wait = 0; got.some((g, i) => Buffer.concat(g).length < messages[i]!.length) && wait < 500; wait++) await sleep(2);
      got.forEach((g, i) => assert.ok(Buffer.concat(g).equals(messages[i]!), `socket ${i} got its bytes and no other's`));

      // A socket whose peer reads nothing fills up: the send that finds no room says EAGAIN, at
      // once (MSG_DONTWAIT: the ring must not park it until there is room), and keeps nothing.
      const full = pairs[0]!;
      const chunk = Buffer.alloc(256 * 1024, 1);
      let last = 0;
      for (let i = 0; i < 1000 && last >= 0; i++) last = native.sendBatch([fdOf(full.b)], [chunk], useRing).results[0]!;
      assert.equal(last, -errno.EAGAIN, 'a full socket refuses the send');

      // A peer that reset the connection: the send fails with the error send(2) reports.
      const reset = pairs[1]!;
      reset.a.resetAndDestroy();
      await once(reset.a, 'close');
      await sleep(20);
      const after = native.sendBatch([fdOf(reset.b), fdOf(pairs[2]!.b)], [Buffer.from('late'), Buffer.from('still fine')], useRing).results;
      assert.ok(after[0] === -errno.ECONNRESET || after[0] === -errno.EPIPE, `the reset socket's send failed (${after[0]})`);
      assert.equal(after[1], 'still fine'.length, 'the failure ends no other send of the batch');
    } finally {
      closeSync(devNull);
      pairs.forEach((p) => p.close());
    }
  }
});


test('requests to servers share loop turns, answers go at once, every byte in order', { skip, timeout: 60_000 }, async () => {
  const native = addon!;
  native.relayStart(() => {}, 1 << 20, 1, 1, true);
  const SESSIONS = 8;
  const ROUNDS = 100;
  const sessions = await Promise.all(Array.from({ length: SESSIONS }, async () => ({
    client: await socketPair({ pauseOnConnect: true }),
    server: await socketPair({ pauseOnConnect: true }),
    received: [] as Buffer[], // by the client
    receivedBytes: 0,
    sent: [] as Buffer[], // by the server
    sentBytes: 0,
    upReceived: [] as Buffer[], // by the server
    upReceivedBytes: 0,
    upSent: [] as Buffer[], // by the client
    upSentBytes: 0,
  })));
  try {
    sessions.forEach((s, i) => {
      native.relayAdopt(i + 1, fdOf(s.client.b), fdOf(s.server.b), null);
      s.client.a.on('data', (d: Buffer) => { s.received.push(d); s.receivedBytes += d.length; });
      s.server.a.on('data', (d: Buffer) => { s.upReceived.push(d); s.upReceivedBytes += d.length; });
    });
    for (let round = 0; round < ROUNDS; round++) {
      // Every client and server writes at once: the relay reads several in one epoll_wait. CopyData
      // from a client is a message it forwards without asking the handler, as a DataRow from a server.
      for (const [i, s] of sessions.entries()) {
        const up = copyData(Buffer.from(`session ${i} data ${round}`));
        s.upSent.push(up);
        s.upSentBytes += up.length;
        s.client.a.write(up);
        const row = dataRow([`session ${i} row ${round}`]);
        s.sent.push(row);
        s.sentBytes += row.length;
        s.server.a.write(row);
      }
      const behind = () => sessions.some((s) => s.receivedBytes < s.sentBytes || s.upReceivedBytes < s.upSentBytes);
      for (let wait = 0; behind() && wait < 500; wait++) await sleep(1);
    }
    sessions.forEach((s, i) => {
      assert.ok(Buffer.concat(s.received).equals(Buffer.concat(s.sent)), `session ${i}: every row, in order`);
      assert.ok(Buffer.concat(s.upReceived).equals(Buffer.concat(s.upSent)), `session ${i}: every CopyData, in order`);
    });
    const stats = native.relayStats();
    if (!ringAllowed) {
      assert.equal(stats.batchedThreads, 0, 'without io_uring the relay sends one at a time');
      return;
    }
    assert.equal(stats.batchedThreads, 1);
    // Only the requests are batched: one batched send per CopyData, none for the rows.
    assert.equal(stats.batchedSends, SESSIONS * ROUNDS, 'each request went out in a batched send, no answer did');
    assert.ok(stats.largestTurn >= 2, `some turn sent for several sessions (largest: ${stats.largestTurn})`);
    assert.ok(stats.batchedTurns < stats.batchedSends, `${stats.batchedSends} sends in ${stats.batchedTurns} turns`);
    // The ring only for turns of several sends, send(2) for a turn of one.
    const ringTurns = stats.batchedTurns - stats.singleSends;
    assert.ok(ringTurns >= 1, 'some turns went through the ring');
    assert.ok(stats.batchedSends - stats.singleSends >= 2 * ringTurns, `no ring turn of one send (${stats.batchedSends - stats.singleSends} sends in ${ringTurns} ring turns)`);

    // One session at a time, each request received by the server before the next is written:
    // every turn has one send, which goes out with send(2), not the ring.
    const lone = sessions[0]!;
    const LONE = 20;
    for (let round = 0; round < LONE; round++) {
      const up = copyData(Buffer.from(`alone ${round}`));
      lone.upSent.push(up);
      lone.upSentBytes += up.length;
      lone.client.a.write(up);
      for (let wait = 0; lone.upReceivedBytes < lone.upSentBytes && wait < 10_000; wait++) await sleep(1);
      // Otherwise the next request could share this one's turn, and the counts below would be off.
      assert.equal(lone.upReceivedBytes, lone.upSentBytes, `the lone session's request ${round} arrived before the next was written`);
    }
    assert.ok(Buffer.concat(lone.upReceived).equals(Buffer.concat(lone.upSent)), 'the lone session: every CopyData, in order');
    const after = native.relayStats();
    assert.equal(after.batchedSends - stats.batchedSends, LONE, 'one send per request');
    assert.equal(after.singleSends - stats.singleSends, LONE, 'each in a turn of its own, through send(2)');
    sessions.forEach((_, i) => native.relayClose(i + 1));
  } finally {
    sessions.forEach((s) => { s.client.close(); s.server.close(); });
  }
});
