import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { openSync, closeSync, writeSync } from 'node:fs';
import { appendFile, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { AuditEventType, EventKind, encodeEvent, type EventDraft } from '../../proto/index.js';
import { HEADER_BYTES, sealRecord } from '../../agent/events/record-format.js';
import { readSpoolDir, Spool, SpoolError, type SpoolLogger, type SpoolOptions, type SpoolRecord, type SpoolState } from '../../agent/events/spool.js';
import { tempDir as newTempDir } from '../helpers/tmp.js';

const AGENT = 'agent-test-1';

async function tempDir(): Promise<string> {
  return newTempDir('rg-spool-');
}

function draft(i: number): EventDraft {
  return { kind: EventKind.EVENT_KIND_AGENT_NOTICE!, notice: { level: 'info', code: 'test', message: `event number ${i}` } };
}

interface Captured extends SpoolLogger {
  warnings: { obj: Record<string, unknown>; msg: string }[];
}

function captureLogger(): Captured {
  const warnings: Captured['warnings'] = [];
  return { warnings, info() {}, error() {}, warn(obj: object, msg: string) { warnings.push({ obj: obj as Record<string, unknown>, msg }); } };
}

function open(dir: string, extra: Partial<SpoolOptions> = {}): Promise<Spool> {
  return Spool.open({ dir, agentId: AGENT, maxBytes: 64 * 1024 * 1024, logger: captureLogger(), ...extra });
}

async function collect(it: AsyncIterable<SpoolRecord>): Promise<SpoolRecord[]> {
  const out: SpoolRecord[] = [];
  for await (const r of it) out.push(r);
  return out;
}

interface Decoded { agentId: string; seq: number; prevHash: Buffer; time?: { seconds: number; nanos: number }; notice?: { message: string } }
function decode(bytes: Uint8Array): Decoded {
  return AuditEventType.toObject(AuditEventType.decode(bytes), { longs: Number, bytes: Buffer }) as unknown as Decoded;
}

const sha256 = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest();

/** Asserts consecutive seqs from `firstSeq` and that every prevHash is the hash of the record before. */
function assertChain(records: SpoolRecord[], firstSeq: number, firstPrev: Buffer | null): void {
  let prev = firstPrev;
  records.forEach((r, i) => {
    const ev = decode(r.bytes);
    assert.equal(r.seq, firstSeq + i, 'seqs are gap-free');
    assert.equal(ev.seq, r.seq, 'record seq matches the event');
    assert.equal(ev.agentId, AGENT);
    if (prev) assert.deepEqual(ev.prevHash, prev, `prevHash of seq ${r.seq}`);
    prev = sha256(r.bytes);
  });
}

async function appendMany(spool: Spool, n: number, from = 0): Promise<number[]> {
  const appended = Array.from({ length: n }, (_, i) => spool.append(draft(from + i)));
  await Promise.all(appended.map((a) => a.durable));
  return appended.map((a) => a.seq);
}

async function segmentFiles(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((f) => f.endsWith('.seg')).sort();
}

/** Offsets of the records of a segment file, parsed here independently of the spool's reader. */
async function recordOffsets(file: string): Promise<number[]> {
  const buf = await readFile(file);
  const out: number[] = [];
  for (let off = 0; off < buf.length; off += 8 + buf.readUInt32LE(off)) out.push(off);
  return out;
}

function waitForState(spool: Spool, want: SpoolState, timeoutMs = 5000): Promise<string> {
  if (spool.state === want) return Promise.resolve(spool.stateReason);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`spool did not reach state ${want} (is ${spool.state}: ${spool.stateReason})`)), timeoutMs);
    const on = (state: SpoolState, reason: string): void => {
      if (state !== want) return;
      clearTimeout(timer);
      spool.off('state', on);
      resolve(reason);
    };
    spool.on('state', on);
  });
}

async function isPending(p: Promise<unknown>, ms: number): Promise<boolean> {
  return (await Promise.race([p.then(() => 'settled', () => 'settled'), sleep(ms).then(() => 'pending')])) === 'pending';
}

test('seqs are gap-free from 1 and each prevHash is the SHA-256 of the previous event bytes', async () => {
  const dir = path.join(await tempDir(), 'spool');
  const spool = await open(dir);
  try {
    const seqs = await appendMany(spool, 50);
    assert.deepEqual(seqs, Array.from({ length: 50 }, (_, i) => i + 1));
    const records = await collect(spool.readFrom(1));
    assert.equal(records.length, 50);
    assertChain(records, 1, Buffer.alloc(32));
    const first = decode(records[0]!.bytes);
    assert.ok(first.time && first.time.seconds > 1_600_000_000, 'time is set');
    assert.equal(first.notice?.message, 'event number 0');
    assert.deepEqual(await segmentFiles(dir), ['00000000000000000001.seg']);
    assert.equal((await stat(dir)).mode & 0o777, 0o700);
    assert.deepEqual(spool.stats(), { firstSeq: 1, lastSeq: 50, durableSeq: 50, bytes: spool.stats().bytes, bufferedBytes: 0, segments: 1, state: 'ok' });
    assert.deepEqual((await collect(spool.readFrom(48))).map((r) => r.seq), [48, 49, 50]);
  } finally {
    await spool.close();
  }
});

test('slabs are reused only once what was cut from them is on disk: megabytes appended while commits are in flight read back intact', async () => {
  // Records of mixed sizes (some over a slab) over several segments, with the event loop let go
  // every few dozen appends so that writes are in flight while later slabs fill: a slab handed
  // back early would be overwritten under a pending write, and the chain or a message would differ.
  const dir = path.join(await tempDir(), 'spool');
  const spool = await open(dir, { segmentBytes: 1 << 20 });
  const messages: string[] = [];
  try {
    let x = 12345;
    const next = (): number => (x = (x * 1103515245 + 12345) % 2 ** 31);
    const pending: Promise<void>[] = [];
    for (let i = 0; i < 6000; i++) {
      const size = i % 997 === 0 ? 300_000 : 50 + (next() % 1500);
      const message = `${i}:`.padEnd(size, String.fromCharCode(97 + (i % 26)));
      messages.push(message);
      pending.push(spool.append({ kind: EventKind.EVENT_KIND_AGENT_NOTICE!, notice: { level: 'info', code: 'slab', message } }).durable);
      if (i % 40 === 0) await new Promise((r) => setImmediate(r));
      if (i % 1000 === 999) await pending.at(-1);
    }
    await Promise.all(pending);
  } finally {
    await spool.close();
  }
  const records = await collect(readSpoolDir(dir));
  assert.equal(records.length, messages.length);
  assertChain(records, 1, Buffer.alloc(32));
  records.forEach((r, i) => assert.equal(decode(r.bytes).notice?.message, messages[i], `message of seq ${r.seq}`));
});

test('group commit: thousands of appends share a handful of write+fdatasync rounds', async () => {
  const spool = await open(await tempDir());
  try {
    await appendMany(spool, 5000);
    const { flushes, fsyncs } = spool.metrics;
    assert.ok(flushes >= 1 && flushes <= 20, `5000 appends took ${flushes} flushes`);
    assert.equal(fsyncs, flushes, 'one fdatasync per flush within one segment');
    // Appends in one tick, under the size threshold, go out in exactly one flush.
    await appendMany(spool, 20);
    assert.equal(spool.metrics.flushes, flushes + 1);
    assert.equal(spool.stats().durableSeq, 5020);
  } finally {
    await spool.close();
  }
});

/** Polls until the spool reports `seq` durable, without reading any `durable` (which would hurry it). */
async function durableBy(spool: Spool, seq: number, timeoutMs = 5000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (spool.stats().durableSeq < seq) {
    if (Date.now() > until) throw new Error(`seq ${seq} not durable after ${timeoutMs} ms (durableSeq ${spool.stats().durableSeq})`);
    await sleep(2);
  }
}

test('group commit: a burst past the group size in one turn goes out in one write+fdatasync', async () => {
  // As a relay batch does: hundreds of events appended in one call, nobody awaiting them. Full
  // groups must not start a commit of their own mid-burst.
  const spool = await open(await tempDir(), { commitDelayMs: 60 });
  try {
    let n = 0;
    while (spool.stats().bufferedBytes < 200 * 1024) spool.append(draft(n++));
    assert.equal(spool.metrics.flushes, 0, 'nothing is written before the turn ends');
    await durableBy(spool, n, 2000);
    assert.equal(spool.metrics.flushes, 1, `${n} events in one turn took ${spool.metrics.flushes} commits`);
    assert.equal(spool.metrics.fsyncs, 1);
    assert.equal(spool.metrics.eventsWritten, n);
  } finally {
    await spool.close();
  }
});

test('commit delay: events nobody awaits wait for company and share one write+fdatasync', async () => {
  const spool = await open(await tempDir(), { commitDelayMs: 60 });
  try {
    assert.equal(spool.commitDelayMs, 60);
    for (let i = 0; i < 3; i++) spool.append(draft(i));
    await sleep(20);
    assert.equal(spool.stats().durableSeq, 0, 'still within the delay');
    assert.equal(spool.metrics.flushes, 0);
    for (let i = 3; i < 6; i++) spool.append(draft(i)); // another turn, same batch
    await durableBy(spool, 6);
    assert.equal(spool.metrics.flushes, 1, 'one commit for both turns');
    assert.equal(spool.metrics.fsyncs, 1);
    assert.equal(spool.metrics.eventsWritten, 6);
    assert.deepEqual((await collect(spool.readFrom(1))).map((r) => r.seq), [1, 2, 3, 4, 5, 6]);
  } finally {
    await spool.close();
  }
});

test('commit delay: a run (a relay batch) is committed at the end of its turn, with what else came in it', async () => {
  // The relay's batches come relayAuditDelayMs apart: nothing would join a run during the delay.
  const spool = await open(await tempDir(), { commitDelayMs: 1000 });
  try {
    spool.append(draft(0)); // earlier in the turn, nobody awaits it: it goes along
    const writer = {
      bytes: 0,
      needs: 0,
      write(slab: Buffer, pos: number, room: number, _max: number, seq: number, chainHash: Buffer): number {
        let at = pos;
        for (let i = 0; i < 3; i++) {
          const payload = encodeEvent({ agentId: AGENT, seq: seq + i, prevHash: Buffer.from(chainHash), kind: EventKind.EVENT_KIND_AGENT_NOTICE, notice: { level: 'info', code: 'run', message: `run ${i}` } });
          assert.ok(at + HEADER_BYTES + payload.length <= pos + room);
          at = sealRecord(slab, at, payload, chainHash);
        }
        this.bytes = at - pos;
        return 3;
      },
    };
    assert.equal(spool.appendRun(writer), 3);
    await durableBy(spool, 4, 800); // before the 1000 ms delay
    assert.equal(spool.metrics.fsyncs, 1, 'one commit for the event and the run');
    const records = await collect(spool.readFrom(1));
    assert.deepEqual(records.map((r) => r.seq), [1, 2, 3, 4]);
    assertChain(records, 1, null);
  } finally {
    await spool.close();
  }
});

/** A notice of about `size` bytes, encoded for `seq` after `prevHash`: the same payload whichever path appends it. */
function sizedNotice(i: number, size: number, seq: number, prevHash: Uint8Array): Uint8Array {
  return encodeEvent({ agentId: AGENT, seq, prevHash: Buffer.from(prevHash), kind: EventKind.EVENT_KIND_AGENT_NOTICE, notice: { level: 'info', code: 'run', message: `${i}:`.padEnd(size, 'x') } });
}

test('a run crosses group, slab and segment boundaries in one appendRun, leaving the files append() leaves', async () => {
  // Sizes that cross 64 KiB groups, 256 KiB slabs and 100,000-byte segments many times, some
  // records nearly a segment; the writer seals what fits and says what the next one needs.
  const sizes = Array.from({ length: 400 }, (_, i) => (i % 50 === 7 ? 90_000 : 300 + ((i * 7919) % 4000)));
  const dirs = [await tempDir(), await tempDir()];
  const [viaAppend, viaRun] = [await open(dirs[0]!, { segmentBytes: 100_000 }), await open(dirs[1]!, { segmentBytes: 100_000 })];
  try {
    for (let i = 0; i < sizes.length; i++) viaAppend.append({ kind: EventKind.EVENT_KIND_AGENT_NOTICE!, encode: (env) => sizedNotice(i, sizes[i]!, env.seq, env.prevHash) });
    let next = 0;
    let calls = 0;
    const writer = {
      bytes: 0,
      needs: 0,
      write(slab: Buffer, pos: number, room: number, max: number, seq: number, chainHash: Buffer): number {
        calls++;
        let at = pos;
        let n = 0;
        this.needs = 0;
        while (next < sizes.length) {
          const payload = sizedNotice(next, sizes[next]!, seq + n, chainHash);
          assert.ok(payload.length <= max);
          if (at + HEADER_BYTES + payload.length > pos + room) {
            this.needs = HEADER_BYTES + payload.length;
            break;
          }
          at = sealRecord(slab, at, payload, chainHash);
          next++;
          n++;
        }
        this.bytes = at - pos;
        return n;
      },
    };
    assert.equal(viaRun.appendRun(writer), sizes.length, 'every record in one run');
    assert.ok(calls > 20, `the spool made room and called again (${calls} calls)`);
    await Promise.all([viaAppend.close(), viaRun.close()]);
    const files = async (dir: string) => {
      const names = (await readdir(dir)).filter((n) => n.endsWith('.seg')).sort();
      return Promise.all(names.map(async (n) => [n, await readFile(path.join(dir, n))] as const));
    };
    const [a, r] = [await files(dirs[0]!), await files(dirs[1]!)];
    assert.ok(a.length > 5, `${a.length} segments`);
    assert.deepEqual(r.map(([n]) => n), a.map(([n]) => n), 'the same segment cuts');
    for (let i = 0; i < a.length; i++) assert.ok(r[i]![1].equals(a[i]![1]), `${a[i]![0]}: byte-identical`);
    const reopened = await open(dirs[1]!, { segmentBytes: 100_000 });
    try {
      const records = await collect(reopened.readFrom(1));
      assert.equal(records.length, sizes.length);
      assertChain(records, 1, null);
    } finally {
      await reopened.close();
    }
  } finally {
    await Promise.all([viaAppend.close(), viaRun.close()]);
  }
});

test('a writer that does not take the room it asked for ends the run there', async () => {
  const spool = await open(await tempDir(), { segmentBytes: 1 << 20 });
  try {
    let calls = 0;
    const writer = {
      bytes: 0,
      needs: 0,
      write(slab: Buffer, pos: number, room: number, _max: number, seq: number, chainHash: Buffer): number {
        calls++;
        this.needs = 2000;
        if (calls > 1) {
          assert.ok(room >= 2000, `room made: ${room}`);
          this.bytes = 0;
          return 0;
        }
        this.bytes = sealRecord(slab, pos, sizedNotice(0, 500, seq, chainHash), chainHash) - pos;
        return 1;
      },
    };
    assert.equal(spool.appendRun(writer), 1);
    assert.equal(calls, 2, 'one call after making room, then no loop');
    assert.equal(await spool.appendDurable(draft(1)), 2);
    assertChain(await collect(spool.readFrom(1)), 1, null);
  } finally {
    await spool.close();
  }
});

test('commit delay: an awaited event is flushed at once, taking the unawaited ones before it along', async () => {
  const spool = await open(await tempDir(), { commitDelayMs: 1000 });
  try {
    spool.append(draft(0));
    spool.append(draft(1));
    await sleep(5);
    const started = Date.now();
    const seq = await spool.appendDurable(draft(2));
    assert.equal(seq, 3);
    assert.ok(Date.now() - started < 900, `the awaited append took ${Date.now() - started} ms, the delay is 1000`);
    assert.equal(spool.stats().durableSeq, 3, 'the events before it are durable with it');
    assert.equal(spool.metrics.flushes, 1);
    // Awaiting an event appended before, in the delayed batch, hurries it the same way.
    const early = spool.append(draft(3));
    spool.append(draft(4));
    await sleep(5);
    const t1 = Date.now();
    await early.durable;
    assert.ok(Date.now() - t1 < 900, 'reading durable later cuts the delay short');
    assert.equal(spool.stats().durableSeq, 5);
    // The hurry is per batch: the next unawaited event waits for the delay again.
    spool.append(draft(5));
    await sleep(50);
    assert.equal(spool.stats().durableSeq, 5, 'a later, unawaited batch is delayed again');
  } finally {
    await spool.close();
  }
  assert.equal(spool.stats().durableSeq, 6, 'close() writes the delayed batch without waiting out the delay');
});

test('commit delay: under a steady stream the commits are spaced by the delay, not by each sync', async () => {
  const batched = await open(await tempDir(), { commitDelayMs: 25 });
  const eager = await open(await tempDir(), { commitDelayMs: 0 });
  try {
    for (let i = 0; i < 200; i++) {
      batched.append(draft(i));
      eager.append(draft(i));
      await sleep(1);
    }
    await durableBy(batched, 200);
    await durableBy(eager, 200);
    const { flushes } = batched.metrics;
    assert.ok(flushes <= Math.ceil(200 / 25) + 3, `200 events over >= 200 ms took ${flushes} commits with a 25 ms delay`);
    assert.equal(batched.metrics.eventsWritten, 200);
    assert.ok(eager.metrics.flushes > flushes, `without a delay: ${eager.metrics.flushes} commits, with: ${flushes}`);
  } finally {
    await batched.close();
    await eager.close();
  }
});

test('reopening continues the seq and the hash chain', async () => {
  const dir = await tempDir();
  let spool = await open(dir);
  await appendMany(spool, 10);
  await spool.close();
  spool = await open(dir);
  try {
    assert.equal(spool.stats().lastSeq, 10);
    assert.equal(await spool.appendDurable(draft(10)), 11);
    const records = await collect(spool.readFrom(1));
    assert.equal(records.length, 11);
    assertChain(records, 1, Buffer.alloc(32));
  } finally {
    await spool.close();
  }
});

test('a torn tail of the newest segment is truncated with a warning and the chain continues', async (t) => {
  const variants: [string, (file: string, goodSize: number) => Promise<void>][] = [
    ['half of the last record cut off', async (file) => {
      const offsets = await recordOffsets(file);
      const last = offsets.at(-1)!;
      await truncate(file, last + 8 + 5);
    }],
    ['garbage with an absurd length', (file) => appendFile(file, Buffer.from('ffffffff00000000deadbeef', 'hex'))],
    ['a zero length field', (file) => appendFile(file, Buffer.alloc(8))],
    ['a header whose length runs past EOF', (file) => appendFile(file, Buffer.from('4000000000000000abcd', 'hex'))],
    ['a full-size record with a bad crc', async (file) => {
      const payload = Buffer.from('not the bytes the crc was computed over');
      const header = Buffer.alloc(8);
      header.writeUInt32LE(payload.length, 0);
      header.writeUInt32LE(12345, 4);
      await appendFile(file, Buffer.concat([header, payload]));
    }],
  ];
  for (const [name, damage] of variants) {
    await t.test(name, async () => {
      const dir = await tempDir();
      let spool = await open(dir);
      await appendMany(spool, 5);
      await spool.close();
      const file = path.join(dir, '00000000000000000001.seg');
      const cut = name.startsWith('half');
      const expectedSize = cut ? (await recordOffsets(file)).at(-1)! : (await stat(file)).size;
      await damage(file, expectedSize);
      const logger = captureLogger();
      spool = await Spool.open({ dir, agentId: AGENT, maxBytes: 1 << 26, logger });
      try {
        assert.equal(logger.warnings.length, 1, 'one warning');
        assert.equal(logger.warnings[0]!.obj.offset, expectedSize, 'warning names the byte offset');
        assert.match(logger.warnings[0]!.msg, new RegExp(`byte offset ${expectedSize}`));
        assert.equal((await stat(file)).size, expectedSize, 'file truncated to the last good record');
        const good = cut ? 4 : 5;
        assert.equal(await spool.appendDurable(draft(99)), good + 1);
        const records = await collect(spool.readFrom(1));
        assert.equal(records.length, good + 1);
        assertChain(records, 1, Buffer.alloc(32));
      } finally {
        await spool.close();
      }
    });
  }
});

test('corruption inside a segment that is not the newest is an error naming the file and offset', async () => {
  const dir = await tempDir();
  const spool = await open(dir, { segmentBytes: 1024, maxBytes: 1 << 20 });
  await appendMany(spool, 60);
  await spool.close();
  const segs = await segmentFiles(dir);
  assert.ok(segs.length >= 3, `rotated into ${segs.length} segments`);
  const victim = path.join(dir, segs[1]!);
  const offsets = await recordOffsets(victim);
  const off = offsets[3]!;
  const buf = await readFile(victim);
  buf[off + 8 + 4]! ^= 0x55;
  await writeFile(victim, buf);
  await assert.rejects(open(dir, { segmentBytes: 1024, maxBytes: 1 << 20 }), (err: Error) => {
    assert.ok(err instanceof SpoolError);
    assert.ok(err.message.includes(victim), err.message);
    assert.ok(err.message.includes(`byte offset ${off}`), err.message);
    assert.match(err.message, /crc32 mismatch/);
    return true;
  });
  // The reader used by `runguard events` refuses it too rather than skipping events silently.
  await assert.rejects(collect(readSpoolDir(dir)), /crc32 mismatch/);
});

test('damage deep inside the newest segment, in data that was already synced, is not taken for a torn tail', async () => {
  const dir = await tempDir();
  const big = { segmentBytes: 8 << 20, maxBytes: 64 << 20 };
  const spool = await open(dir, big);
  const n = 30_000; // about 2.5 MiB, more than one write can tear
  for (let i = 0; i < n; i += 5000) await appendMany(spool, 5000, i);
  await spool.close();
  const file = path.join(dir, '00000000000000000001.seg');
  assert.ok((await stat(file)).size > 2.2 * 1024 * 1024);
  const buf = await readFile(file);
  buf[100]! ^= 0xff;
  await writeFile(file, buf);
  await assert.rejects(open(dir, big), (err: Error) => err.message.includes(file) && /byte offset \d+/.test(err.message));
});

test('rotation, ackUpTo deleting only fully acked older segments, and the head file after a full drain', async () => {
  const dir = await tempDir();
  const opts = { segmentBytes: 1024, maxBytes: 1 << 20 };
  let spool = await open(dir, opts);
  await appendMany(spool, 100);
  const all = await collect(spool.readFrom(1));
  assertChain(all, 1, Buffer.alloc(32));
  const segs = await segmentFiles(dir);
  assert.ok(segs.length >= 5, `${segs.length} segments`);
  for (const s of segs) assert.ok((await stat(path.join(dir, s))).size <= 1024, `${s} respects segmentBytes`);
  assert.equal(spool.stats().segments, segs.length);

  // Ack a seq in the middle of the third segment: only the first two go.
  const third = Number(segs[2]!.slice(0, 20));
  const fourth = Number(segs[3]!.slice(0, 20));
  assert.equal(await spool.ackUpTo(third + 1), 2);
  assert.deepEqual(await segmentFiles(dir), segs.slice(2));
  const head = JSON.parse(await readFile(path.join(dir, 'head'), 'utf8'));
  assert.equal(head.seq, third - 1);
  assert.equal(head.hash, sha256(all[third - 2]!.bytes).toString('hex'));
  assert.equal(spool.stats().firstSeq, third);
  assert.equal((await collect(spool.readFrom(1)))[0]!.seq, third, 'reading from before the oldest starts at the oldest');
  assert.equal(await spool.ackUpTo(fourth - 2), 0, 'a partly acked segment stays');
  await assert.rejects(spool.ackUpTo(101), /only events up to seq 100 are durable/);

  // Fill until a fresh segment holds exactly one event, then ack everything before it.
  const before = spool.stats().segments;
  let last = 100;
  while (spool.stats().segments === before) last = await spool.appendDurable(draft(last));
  const newest = (await segmentFiles(dir)).at(-1)!;
  assert.equal(Number(newest.slice(0, 20)), last);
  const prevBytes = (await collect(spool.readFrom(last - 1)))[0]!.bytes;
  await spool.ackUpTo(last);
  assert.deepEqual(await segmentFiles(dir), [newest], 'the newest segment is never deleted');
  assert.equal(JSON.parse(await readFile(path.join(dir, 'head'), 'utf8')).seq, last - 1);
  await spool.close();

  // A crash tore the only record of the newest segment: nothing is left but the head file.
  await truncate(path.join(dir, newest), 6);
  spool = await open(dir, opts);
  try {
    assert.deepEqual(await segmentFiles(dir), []);
    assert.equal(await spool.appendDurable(draft(0)), last, 'seq continues after the head');
    const [rec] = await collect(spool.readFrom(1));
    assert.deepEqual(decode(rec!.bytes).prevHash, sha256(prevBytes), 'chain continues from the head hash');
  } finally {
    await spool.close();
  }
});

test('follow() yields existing events, then events appended later, across rotations, until aborted', async () => {
  const spool = await open(await tempDir(), { segmentBytes: 1024, maxBytes: 1 << 20 });
  const ac = new AbortController();
  const seen: number[] = [];
  const done = (async () => {
    for await (const r of spool.follow(1, ac.signal)) {
      seen.push(r.seq);
      if (seen.length === 60) ac.abort();
    }
  })();
  try {
    await appendMany(spool, 10);
    await sleep(30);
    for (let i = 0; i < 5; i++) {
      await sleep(10);
      await appendMany(spool, 10, 10 * i);
    }
    await done;
    assert.deepEqual(seen, Array.from({ length: 60 }, (_, i) => i + 1));
    assert.ok(spool.stats().segments > 2);
  } finally {
    ac.abort();
    await spool.close();
  }
});

test('over maxBytes: state full, appends keep buffering with durable pending, ack frees space, back to ok', async () => {
  const dir = await tempDir();
  const spool = await open(dir, { segmentBytes: 1024, maxBytes: 4096 });
  const states: string[] = [];
  spool.on('state', (s) => states.push(s));
  try {
    const pending: Promise<void>[] = [];
    for (let i = 0; spool.state === 'ok'; i++) {
      assert.ok(i < 1000, 'never became full');
      const a = spool.append(draft(i));
      if (spool.state === 'ok') await a.durable;
      else pending.push(a.durable);
    }
    assert.equal(spool.state, 'full');
    assert.equal(spool.admitting(), false);
    assert.match(spool.stateReason, /over its limit of 4096 bytes/);
    for (let i = 0; i < 20; i++) pending.push(spool.append(draft(1000 + i)).durable);
    const lastSeq = spool.stats().lastSeq;
    assert.ok(await isPending(pending.at(-1)!, 700), 'durable stays pending while full (through a retry)');
    const st = spool.stats();
    assert.ok(st.durableSeq < lastSeq);
    assert.ok(st.bytes <= 4096, `disk use ${st.bytes} stays within maxBytes`);

    const ok = waitForState(spool, 'ok');
    await spool.ackUpTo(st.durableSeq);
    await ok;
    await Promise.all(pending);
    assert.equal(spool.stats().durableSeq, lastSeq);
    assert.ok(spool.stats().bytes <= 4096);
    assert.deepEqual(states, ['full', 'ok']);
    const records = await collect(spool.readFrom(1));
    assert.equal(records.at(-1)!.seq, lastSeq);
    assertChain(records, records[0]!.seq, null);
  } finally {
    await spool.close();
  }
});

test('close() writes a backlog held back by maxBytes rather than dropping it', async () => {
  const dir = await tempDir();
  let spool = await open(dir, { segmentBytes: 1024, maxBytes: 2048 });
  const all: Promise<void>[] = [];
  for (let i = 0; i < 60; i++) all.push(spool.append(draft(i)).durable);
  await sleep(50);
  assert.equal(spool.state, 'full');
  await spool.close();
  await Promise.all(all);
  assert.throws(() => spool.append(draft(0)), /closed/);
  spool = await open(dir, { segmentBytes: 1024, maxBytes: 1 << 20 });
  assert.equal(spool.stats().lastSeq, 60);
  await spool.close();
});

test('a real full disk (tmpfs): state error with ENOSPC, nothing lost once space is freed', async (t) => {
  if (process.getuid?.() !== 0) return t.skip('mounting tmpfs needs root');
  const mnt = await tempDir();
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', mnt]);
  let spool: Spool | undefined;
  try {
    const dir = path.join(mnt, 'spool');
    spool = await open(dir, { segmentBytes: 64 * 1024, maxBytes: 1 << 20 });
    await appendMany(spool, 10);
    const filler = path.join(mnt, 'filler');
    fillDisk(filler);

    const errored = waitForState(spool, 'error');
    const pending: Promise<void>[] = [];
    let n = 10;
    // Appends fill the segment's last page, then the write needs a new page and fails.
    while (spool.state === 'ok') {
      assert.ok(n < 10_000, 'never failed');
      pending.push(spool.append(draft(n++)).durable);
      if (n % 50 === 0) await sleep(5);
    }
    const reason = await errored;
    assert.match(reason, /ENOSPC/);
    assert.ok(reason.includes(dir), 'the reason names the file');
    assert.equal(spool.admitting(), false);
    for (let i = 0; i < 25; i++) pending.push(spool.append(draft(n++)).durable);
    assert.ok(await isPending(pending.at(-1)!, 600), 'durable stays pending through a failed retry');
    assert.equal(spool.state, 'error');

    const ok = waitForState(spool, 'ok', 3000);
    await rm(filler);
    await ok;
    await Promise.all(pending);
    assert.equal(spool.stats().durableSeq, n);
    await spool.close();
    spool = undefined;

    const records = await collect(readSpoolDir(dir));
    assert.equal(records.length, n, 'every event is on disk');
    assertChain(records, 1, Buffer.alloc(32));
    assert.ok(spool === undefined);
  } finally {
    await spool?.close().catch(() => {});
    execFileSync('umount', [mnt]);
    await rm(mnt, { recursive: true, force: true });
  }
});

function fillDisk(file: string): void {
  const fd = openSync(file, 'w');
  const chunk = Buffer.alloc(4096, 1);
  try {
    for (;;) writeSync(fd, chunk);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
  } finally {
    closeSync(fd);
  }
}

test('readSpoolDir reads a spool that another writer has open, and stops at a torn tail', async () => {
  const dir = await tempDir();
  const spool = await open(dir, { segmentBytes: 1024, maxBytes: 1 << 20 });
  try {
    await appendMany(spool, 40);
    const records = await collect(readSpoolDir(dir));
    assert.equal(records.length, 40);
    assertChain(records, 1, Buffer.alloc(32));
    assert.deepEqual((await collect(readSpoolDir(dir, 38))).map((r) => r.seq), [38, 39, 40]);
  } finally {
    await spool.close();
  }
  const newest = path.join(dir, (await segmentFiles(dir)).at(-1)!);
  await appendFile(newest, Buffer.from('2000000011111111abcdef', 'hex'));
  assert.equal((await collect(readSpoolDir(dir))).length, 40);
});

test('a spool holding another agent\'s events refuses to open', async () => {
  const dir = await tempDir();
  const spool = await open(dir);
  await appendMany(spool, 3);
  await spool.close();
  await assert.rejects(Spool.open({ dir, agentId: 'someone-else', maxBytes: 1 << 26, logger: captureLogger() }), (err: Error) => {
    assert.match(err.message, /agent "agent-test-1", not of agent "someone-else"/);
    assert.ok(err.message.includes(path.join(dir, '00000000000000000001.seg')));
    return true;
  });
});

test('options and event size are checked with clear errors', async () => {
  const dir = await tempDir();
  await assert.rejects(Spool.open({ dir, agentId: AGENT, maxBytes: 1000, segmentBytes: 1024 }), /at least twice segmentBytes/);
  await assert.rejects(open(dir, { commitDelayMs: -1 }), /commitDelayMs must be from 0 to 1000/);
  await assert.rejects(open(dir, { commitDelayMs: 1001 }), /commitDelayMs must be from 0 to 1000/);
  const spool = await open(dir, { segmentBytes: 1024, maxBytes: 1 << 20 });
  try {
    assert.throws(() => spool.append({ ...draft(0), notice: { level: 'info', code: 'big', message: 'x'.repeat(2000) } }), RangeError);
    assert.equal(spool.append(draft(1)).seq, 1, 'a refused event does not use up a seq');
  } finally {
    await spool.close();
  }
});


test('a writer killed with SIGKILL mid-stream leaves a spool that reopens and continues the chain', async () => {
  const dir = await tempDir();
  const spoolModule = fileURLToPath(new URL('../../agent/events/spool.js', import.meta.url));
  const script = `
    const { Spool } = await import(${JSON.stringify(spoolModule)});
    const spool = await Spool.open({ dir: ${JSON.stringify(dir)}, agentId: ${JSON.stringify(AGENT)}, maxBytes: 1 << 26, segmentBytes: 16384,
      logger: { info() {}, warn() {}, error() {} } });
    for (let i = 0; ; i++) {
      const { durable } = spool.append({ kind: 3, notice: { level: 'info', code: 'crash', message: 'x'.repeat(i % 200) } });
      if (i === 500) durable.then(() => process.stdout.write('ready\\n'));
      if (i % 64 === 0) await new Promise((r) => setImmediate(r));
    }`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    child.stdout.once('data', () => resolve());
    child.once('exit', (code) => reject(new Error(`writer exited early with ${code}`)));
  });
  await sleep(100);
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));

  const spool = await open(dir, { segmentBytes: 16384 });
  try {
    const before = spool.stats().lastSeq;
    assert.ok(before > 500, `${before} events survived`);
    assert.equal(await spool.appendDurable(draft(0)), before + 1);
    const records = await collect(spool.readFrom(1));
    assert.equal(records.length, before + 1);
    assertChain(records, 1, Buffer.alloc(32));
  } finally {
    await spool.close();
  }
});
