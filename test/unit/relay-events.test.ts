// The relay's own STATEMENT events sealed natively into the spool (agent/native/src/relay_events.h)
// against the path they replace: the handler numbering each one and the spool appending it
// (agent/pg/handler.ts onRelayEvent, SessionEventEncoder, Spool.append). The same records through
// both must leave byte-identical spool files and the same tallies, whichever records the sealer
// leaves to the handler and wherever the spool cuts segments, groups and slabs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { AuditEventType, EventKind, encodeEvent } from '../../proto/index.js';
import { SessionEventEncoder, type SessionFields } from '../../proto/session-events.js';
import { readSpoolDir, Spool } from '../../agent/events/spool.js';
import { loadNative, type NativeAddon } from '../../agent/native/index.js';
import {
  EVENT_PARSED_UNNAMED, EVENT_PORTAL_ENDED, NativeRelay, RecordKind, RelaySide, Tally, newEventTally, type RelayListener,
} from '../../agent/native/relay.js';

const { addon } = loadNative();
const skip = addon?.sealAvailable() ? false : 'the native addon (with sealAvailable) is not built';
const AGENT = 'agent-relay-events-1';
const STATEMENT = EventKind.EVENT_KIND_STATEMENT!;

interface Rec { id: number; kind: RecordKind; side: RelaySide; payload: Buffer }

/** One relay record (src/relay_records.h RecordHeader, native byte order = little-endian here). */
function frame(r: Rec): Buffer {
  const h = Buffer.alloc(24);
  h.writeUInt32LE(r.id, 0);
  h[4] = r.kind;
  h[5] = r.side;
  h.writeUInt32LE(7, 8);
  h.writeUInt32LE(r.payload.length, 12);
  h.writeDoubleLE(123.5, 16);
  return Buffer.concat([h, r.payload]);
}

/** A kEvent payload: EventHead, the Bind's body, the Statement field. */
function eventPayload(up: number, down: number, flags: number, bind: Buffer, field: Uint8Array): Buffer {
  const h = Buffer.alloc(20);
  h.writeUInt32LE(up, 0);
  h.writeUInt32LE(down, 4);
  h.writeUInt32LE(flags, 8);
  h.writeUInt32LE(3, 12);
  h.writeUInt32LE(bind.length, 16);
  return Buffer.concat([h, bind, field]);
}

const statementField = (text: string): Buffer => Buffer.from(encodeEvent({ statement: { text, type: 'SELECT', commandTag: 'SELECT 1', rows: 1 } }));

function fields(n: number): SessionFields {
  return {
    sessionId: `session-${n}`,
    process: { pid: 1000 + n, exe: '/usr/bin/psql', argv: ['psql', '-c', `select ${n}`] },
    job: { runId: `run-${n}`, repository: 'acme/app', workflow: 'ci' },
    destination: { address: '127.0.0.2', port: 5432 },
    source: { address: '127.0.0.1', port: 40000 + n },
  };
}

/**
 * What agent/pg/handler.ts does with the records the sealer leaves to it, reduced to the part
 * that matters here: the same tally slots, the same request numbering, the same spool append.
 */
class HandlerPath implements RelayListener {
  readonly tally = newEventTally();
  readonly encoder: SessionEventEncoder;
  /** Statement events this path appended (the sealer left them to it). */
  appended = 0;
  constructor(private readonly spool: Spool, fixed: SessionFields) {
    this.encoder = new SessionEventEncoder(fixed);
  }

  onRelayRecord(kind: RecordKind, side: RelaySide, bytes: Buffer): void {
    const t = this.tally;
    if (kind === RecordKind.Skip) {
      t[side === RelaySide.Client ? Tally.BytesUp : Tally.BytesDown]! += bytes.readUInt32LE(0);
      return;
    }
    if (kind !== RecordKind.Event) return;
    t[Tally.BytesUp]! += bytes.readUInt32LE(0);
    t[Tally.BytesDown]! += bytes.readUInt32LE(4);
    const flags = bytes.readUInt32LE(8);
    const fieldAt = 20 + bytes.readUInt32LE(16);
    if (flags & EVENT_PORTAL_ENDED) t[Tally.UnnamedPortal] = 0;
    else if (fieldAt > 20) t[Tally.UnnamedPortal] = 1;
    t[Tally.Summarised]! += 1;
    t[Tally.Encoded]! += 1;
    const requestId = String((t[Tally.RequestSeq]! += 1));
    this.appended++;
    this.spool.append(this.encoder.event({ kind: STATEMENT, requestId, statementField: bytes.subarray(fieldAt) }));
  }
}

/**
 * A NativeRelay whose thread is never started: its batches come from the test. Everything else
 * (dispatch, adopt, the sealer, relayEvents*) is the real addon.
 */
function relayForTest(real: NativeAddon): { relay: NativeRelay; deliver: (batch: Buffer, length?: number) => void } {
  let onBatch: (batch: Buffer, length: number) => void = () => {};
  // The addon's properties are read-only: shadowed on an object that inherits the rest.
  const fake = Object.create(real, {
    relayStart: { value: (cb: (batch: Buffer, length: number) => void) => void (onBatch = cb) },
    relayAdopt: { value: () => {} },
    relayClose: { value: () => {} },
  }) as NativeAddon;
  const relay = new NativeRelay(fake, { replayDelayMs: 0, threads: 1, batchSends: false });
  relay.onListenerError = (err) => {
    throw err;
  };
  return { relay, deliver: (batch, length = batch.length) => onBatch(batch, length) };
}

async function spoolFiles(dir: string): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for (const name of (await readdir(dir)).sort()) out.set(name, await readFile(path.join(dir, name)));
  return out;
}

/**
 * Runs `batches` of `sessions` sessions through the handler path alone and through the sealer, each
 * into a fresh spool, at the clock `nowMs`; returns both spools' files and tallies.
 */
async function bothWays(batches: Rec[][], sessions: number, opts: { nowMs: number; segmentBytes: number; sealed: (id: number) => boolean }) {
  const real = addon!;
  const root = await mkdtemp(path.join(os.tmpdir(), 'rg-relay-events-'));
  const realNow = Date.now;
  Date.now = () => opts.nowMs;
  try {
    const result = [];
    for (const native of [false, true]) {
      const dir = path.join(root, native ? 'native' : 'handler');
      const spool = await Spool.open({ dir, agentId: AGENT, maxBytes: 1 << 30, segmentBytes: opts.segmentBytes, commitDelayMs: 0 });
      const { relay, deliver } = relayForTest(real);
      const sealer = native ? relay.eventSealer(spool, AGENT) : undefined;
      const handlers: HandlerPath[] = [];
      const ids: number[] = [];
      for (let n = 1; n <= sessions; n++) {
        const h = new HandlerPath(spool, fields(n));
        handlers.push(h);
        const events = sealer && opts.sealed(n) ? { sealer, sessionIdField: h.encoder.sessionIdField, identityFields: h.encoder.identityFields, tally: h.tally } : undefined;
        ids.push(relay.adopt(h, -1, -1, null, events));
      }
      for (const batch of batches) deliver(Buffer.concat(batch.map((r) => frame({ ...r, id: ids[r.id - 1]! }))));
      for (const id of ids) relay.close(id);
      await spool.close();
      result.push({ files: await spoolFiles(dir), tallies: handlers.map((h) => [...h.tally]), dir, appended: handlers.reduce((n, h) => n + h.appended, 0) });
    }
    const [handler, native] = result as [(typeof result)[0], (typeof result)[0]];
    return { handler, native, cleanup: () => rm(root, { recursive: true, force: true }) };
  } finally {
    Date.now = realNow;
  }
}

function assertSame(handler: { files: Map<string, Buffer>; tallies: number[][] }, native: { files: Map<string, Buffer>; tallies: number[][] }): void {
  assert.deepEqual([...native.files.keys()], [...handler.files.keys()], 'the same segment files');
  for (const [name, bytes] of handler.files) assert.ok(bytes.equals(native.files.get(name)!), `${name}: byte-identical`);
  assert.deepEqual(native.tallies, handler.tallies, 'the same tallies');
}

test('a batch of plain statement events: the sealer writes what the handler path writes, byte for byte', { skip }, async () => {
  const batch: Rec[] = [];
  for (let i = 0; i < 300; i++) {
    batch.push({ id: 1 + (i % 3), kind: RecordKind.Event, side: RelaySide.Client, payload: eventPayload(40 + i, 90, 0, Buffer.alloc(0), statementField(`SELECT ${i}`)) });
    if (i % 7 === 0) batch.push({ id: 1 + (i % 3), kind: RecordKind.Skip, side: (i % 2) as RelaySide, payload: Buffer.from([i, 1, 0, 0]) });
  }
  // Nanos 0 (the field omitted) and not.
  for (const nowMs of [1_764_000_000_000, 1_764_000_000_123]) {
    const { handler, native, cleanup } = await bothWays([batch], 3, { nowMs, segmentBytes: 8 * 1024 * 1024, sealed: () => true });
    try {
      assertSame(handler, native);
      assert.equal(native.tallies[0]![Tally.RequestSeq], 100);
      const records = [];
      for await (const r of readSpoolDir(native.dir)) records.push(r);
      assert.equal(records.length, 300);
      const last = AuditEventType.toObject(AuditEventType.decode(records.at(-1)!.bytes), { longs: Number }) as { requestId: string; sessionId: string; time: { nanos?: number } };
      assert.equal(last.requestId, '100');
      assert.equal(last.sessionId, 'session-3');
      assert.equal(last.time.nanos ?? 0, (nowMs % 1000) * 1e6);
    } finally {
      await cleanup();
    }
  }
});

test('a batch that crosses many groups, slabs and segments is sealed whole: the handler appends none of it', { skip }, async () => {
  // About 700 KiB of events into 20,000-byte segments: every kind of spool cut, dozens of times.
  const batch: Rec[] = [];
  for (let i = 0; i < 2500; i++) {
    batch.push({ id: 1 + (i % 3), kind: RecordKind.Event, side: RelaySide.Client, payload: eventPayload(40, 90, 0, Buffer.alloc(0), statementField(`SELECT ${'x'.repeat(i % 400)}`)) });
  }
  const { handler, native, cleanup } = await bothWays([batch], 3, { nowMs: 1_764_000_000_321, segmentBytes: 20_000, sealed: () => true });
  try {
    assert.ok(native.files.size > 30, `${native.files.size} files`);
    assertSame(handler, native);
    assert.equal(handler.appended, 2500);
    assert.equal(native.appended, 0, 'no statement left to the handler at a cut');
  } finally {
    await cleanup();
  }
});

test('records the handler must see stop the run; the rest of the batch is sealed after them', { skip }, async () => {
  const plain = (id: number, text: string) => ({ id, kind: RecordKind.Event, side: RelaySide.Client, payload: eventPayload(10, 20, 0, Buffer.alloc(0), statementField(text)) });
  const bind = Buffer.from('\0\0\0\0\0\0\0\0', 'latin1');
  const batch: Rec[] = [
    plain(1, 'a'),
    // Keeps the unnamed portal: the handler's part, and from then on a record that ends it is too.
    { id: 1, kind: RecordKind.Event, side: RelaySide.Client, payload: eventPayload(1, 2, 0, bind, statementField('bound')) },
    plain(1, 'b'),
    { id: 1, kind: RecordKind.Event, side: RelaySide.Client, payload: eventPayload(1, 2, EVENT_PORTAL_ENDED, bind, statementField('ends the portal')) },
    { id: 1, kind: RecordKind.Event, side: RelaySide.Client, payload: eventPayload(1, 2, EVENT_PORTAL_ENDED, Buffer.alloc(0), statementField('no portal to end')) },
    { id: 1, kind: RecordKind.Event, side: RelaySide.Client, payload: eventPayload(1, 2, EVENT_PARSED_UNNAMED, Buffer.alloc(0), statementField('parsed')) },
    // A session adopted without the sealer, and records of other kinds.
    plain(2, 'not sealed'),
    { id: 1, kind: RecordKind.Replay, side: RelaySide.Client, payload: Buffer.from('Q\0\0\0\x05\0') },
    plain(1, 'c'),
    { id: 2, kind: RecordKind.Skip, side: RelaySide.Server, payload: Buffer.from([5, 0, 0, 0]) },
    plain(1, 'd'),
  ];
  const { handler, native, cleanup } = await bothWays([batch], 2, { nowMs: 1_764_000_000_456, segmentBytes: 8 * 1024 * 1024, sealed: (n) => n === 1 });
  try {
    assertSame(handler, native);
    assert.equal(native.tallies[0]![Tally.RequestSeq], 8);
    assert.equal(native.tallies[0]![Tally.UnnamedPortal], 0);
    assert.equal(native.tallies[1]![Tally.BytesDown], 25);
  } finally {
    await cleanup();
  }
});

test('the addon reuses its batch buffer: listeners keep their records, and nothing past the length is read', { skip }, async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'rg-relay-events-'));
  try {
    const spool = await Spool.open({ dir, agentId: AGENT, maxBytes: 1 << 30, segmentBytes: 8 * 1024 * 1024, commitDelayMs: 0 });
    const { relay, deliver } = relayForTest(addon!);
    const sealer = relay.eventSealer(spool, AGENT)!;
    const sealed = new HandlerPath(spool, fields(1));
    const a = relay.adopt(sealed, -1, -1, null, { sealer, sessionIdField: sealed.encoder.sessionIdField, identityFields: sealed.encoder.identityFields, tally: sealed.tally });
    const heard: Buffer[] = [];
    const b = relay.adopt({ onRelayRecord: (_kind, _side, bytes) => void heard.push(bytes) }, -1, -1, null);
    const event = (text: string) => frame({ id: a, kind: RecordKind.Event, side: RelaySide.Client, payload: eventPayload(10, 20, 0, Buffer.alloc(0), statementField(text)) });
    const replay = (text: string) => frame({ id: b, kind: RecordKind.Replay, side: RelaySide.Client, payload: Buffer.from(text) });

    // One buffer, as the addon hands it: this call's records, then stale bytes of a longer batch.
    const buffer = Buffer.alloc(4096);
    const first = Buffer.concat([event('a'), replay('first'), event('b')]);
    first.copy(buffer);
    replay('stale').copy(buffer, first.length);
    deliver(buffer, first.length);
    assert.deepEqual(heard.map(String), ['first']);

    // Sealed records alone (nothing copied for a listener), then a stale record again.
    buffer.fill(0xee);
    const second = event('c');
    second.copy(buffer);
    replay('stale').copy(buffer, second.length);
    deliver(buffer, second.length);
    assert.deepEqual(heard.map(String), ['first'], 'the first record kept its bytes after the buffer was overwritten; no stale record');
    relay.close(a);
    relay.close(b);
    await spool.close();
    const texts = [];
    for await (const r of readSpoolDir(dir)) {
      const e = AuditEventType.toObject(AuditEventType.decode(r.bytes)) as { statement?: { text: string } };
      if (e.statement) texts.push(e.statement.text);
    }
    assert.deepEqual(texts, ['a', 'b', 'c']);
    assert.equal(sealed.appended, 0, 'every statement event was sealed from the reused buffer');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a record cut short, or one claiming more bytes than the batch has, is not sealed', { skip }, () => {
  const real = addon!;
  const tally = newEventTally();
  real.relayEventsRegister(9001, 77, Buffer.from([0x32, 1, 0x41]), Buffer.alloc(0), tally);
  try {
    const slab = Buffer.alloc(4096);
    const chain = Buffer.alloc(32);
    const out = new Float64Array(4);
    const whole = frame({ id: 9001, kind: RecordKind.Event, side: RelaySide.Client, payload: eventPayload(1, 1, 0, Buffer.alloc(0), statementField('x')) });
    const seal = (batch: Buffer, room = slab.length, max = 1 << 20, sink = 77) => {
      real.relayEventsSeal(sink, batch, 0, slab, 0, room, max, chain, Buffer.alloc(0), 1, 1000, STATEMENT, out);
      return [...out];
    };
    assert.deepEqual(seal(whole.subarray(0, whole.length - 1)), [0, 0, 0, 0], 'truncated');
    const lying = Buffer.from(whole);
    lying.writeUInt32LE(1 << 30, 12);
    assert.deepEqual(seal(lying), [0, 0, 0, 0], 'length past the batch');
    const short = frame({ id: 9001, kind: RecordKind.Event, side: RelaySide.Client, payload: Buffer.alloc(12) });
    assert.deepEqual(seal(short), [0, 0, 0, 0], 'shorter than its head');
    const bindPastEnd = frame({ id: 9001, kind: RecordKind.Event, side: RelaySide.Client, payload: eventPayload(1, 1, EVENT_PORTAL_ENDED, Buffer.alloc(0), Buffer.alloc(0)) });
    bindPastEnd.writeUInt32LE(99, 24 + 16);
    assert.deepEqual(seal(bindPastEnd), [0, 0, 0, 0], 'bind length past the record');
    const [stop, none, at, needs] = seal(whole, 10);
    assert.deepEqual([stop, none, at], [0, 0, 0], 'no room');
    assert.ok(needs! > 8, `no room: says what the record needs (${needs})`);
    assert.deepEqual(seal(whole, slab.length, 10), [0, 0, 0, 0], 'over the largest event');
    assert.deepEqual(seal(whole, slab.length, 1 << 20, 78), [0, 0, 0, 0], 'another spool');
    assert.equal(tally[Tally.RequestSeq], 0, 'nothing counted for what was not sealed');
    const [end, n, pos, after] = seal(whole);
    assert.deepEqual([end, n, after], [whole.length, 1, 0]);
    assert.ok(pos! > 8 && slab.readUInt32LE(0) === pos! - 8, 'one framed record');
    assert.equal(pos, needs, 'the room it asked for is the room it took');
    assert.equal(tally[Tally.RequestSeq], 1);
  } finally {
    real.relayEventsForget(9001);
  }
  assert.throws(() => real.relayEventsRegister(1, 1, Buffer.alloc(0), Buffer.alloc(0), new Float64Array(2)), /Float64Array\(6\)/);
});

test('any mix of records, sessions and spool cuts: the same spool files and tallies either way', { skip }, async () => {
  const record = fc.oneof(
    { weight: 6, arbitrary: fc.record({ id: fc.integer({ min: 1, max: 3 }), flags: fc.constantFrom(0, 0, 0, EVENT_PORTAL_ENDED, EVENT_PARSED_UNNAMED), bind: fc.boolean(), size: fc.oneof(fc.integer({ min: 1, max: 200 }), fc.integer({ min: 1000, max: 9000 })) }).map(
      ({ id, flags, bind, size }): Rec => ({ id, kind: RecordKind.Event, side: RelaySide.Client, payload: eventPayload(size, 7, flags, bind ? Buffer.alloc(6) : Buffer.alloc(0), statementField('s'.repeat(size))) })) },
    { weight: 1, arbitrary: fc.record({ id: fc.integer({ min: 1, max: 3 }), n: fc.nat(1000), side: fc.constantFrom(RelaySide.Client, RelaySide.Server) }).map(
      ({ id, n, side }): Rec => ({ id, kind: RecordKind.Skip, side, payload: Buffer.from(new Uint32Array([n]).buffer) })) },
    { weight: 1, arbitrary: fc.integer({ min: 1, max: 3 }).map((id): Rec => ({ id, kind: RecordKind.Replay, side: RelaySide.Server, payload: Buffer.from('Z\0\0\0\x05I') })) },
  );
  await fc.assert(fc.asyncProperty(
    fc.array(fc.array(record, { minLength: 1, maxLength: 120 }), { minLength: 1, maxLength: 4 }),
    fc.constantFrom(20_000, 70_000, 300_000),
    fc.integer({ min: 0, max: 7 }),
    async (batches, segmentBytes, sealedMask) => {
      const { handler, native, cleanup } = await bothWays(batches, 3, { nowMs: 1_764_000_000_789, segmentBytes, sealed: (n) => ((sealedMask >> (n - 1)) & 1) === 1 });
      try {
        assertSame(handler, native);
      } finally {
        await cleanup();
      }
    }), { numRuns: 25 });
});
