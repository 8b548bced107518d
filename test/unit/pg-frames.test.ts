import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  FrameReader, PgProtocolError, type Frame, type FrameReaderOptions,
  SSL_REQUEST_CODE, GSSENC_REQUEST_CODE, CANCEL_REQUEST_CODE, PROTOCOL_3_0,
} from '../../agent/pg/frames.js';
import * as m from '../../agent/pg/messages.js';

interface Seen { type: number; raw: string; body: string }

/** Feeds chunks; returns the frames (as hex, copied at delivery) and the first error. */
function run(opts: FrameReaderOptions, chunks: Buffer[], onFrame?: (f: Frame, r: FrameReader) => void): { frames: Seen[]; error?: PgProtocolError; reader: FrameReader } {
  const reader = new FrameReader(opts);
  const frames: Seen[] = [];
  let error: PgProtocolError | undefined;
  for (const c of chunks) {
    const e = reader.push(c, (f) => {
      frames.push({ type: f.type, raw: f.buffer.subarray(f.start, f.end).toString('hex'), body: f.body.toString('hex') });
      onFrame?.(f, reader);
    });
    if (e) {
      error = e;
      break;
    }
  }
  return { frames, error, reader };
}

const frontendStream = Buffer.concat([
  m.startupMessage({ user: 'alice', database: 'app', application_name: 'psql' }),
  m.query('SELECT 1; SELECT 2'),
  m.parse('s1', 'SELECT $1::int', [23]),
  m.bind({ portal: '', statement: 's1', params: [Buffer.from('42'), null], paramFormats: [0], resultFormats: [1] }),
  m.describe('P', ''),
  m.execute('', 0),
  m.sync(),
  m.flush(),
  m.close('S', 's1'),
  m.copyData(Buffer.from('1\tx\n')),
  m.copyDone(),
  m.copyFail('stop'),
  m.passwordMessage('secret'),
  m.terminate(),
]);

const backendStream = Buffer.concat([
  m.authenticationSASL(['SCRAM-SHA-256']),
  m.authenticationSASLContinue(Buffer.from('r=abc,s=c2FsdA==,i=4096')),
  m.authenticationOk(),
  m.parameterStatus('server_version', '15.6'),
  m.backendKeyData(1234, 0x5eed),
  m.readyForQuery('I'),
  m.rowDescription([{ name: 'a', tableOid: 0, columnAttr: 0, typeOid: 23, typeSize: 4, typeMod: -1, format: 0 }]),
  m.dataRow(['1']),
  m.dataRow([null]),
  m.commandComplete('SELECT 2'),
  m.noticeResponse({ severity: 'NOTICE', code: '00000', message: 'hello' }),
  m.errorResponse({ severity: 'ERROR', code: '42601', message: 'syntax error' }),
  m.parseComplete(), m.bindComplete(), m.closeComplete(), m.noData(), m.emptyQueryResponse(),
  m.readyForQuery('E'),
]);

test('a recorded stream split at every byte boundary gives the same frames', () => {
  for (const [dir, stream] of [['frontend', frontendStream], ['backend', backendStream]] as const) {
    const whole = run({ direction: dir }, [stream]);
    assert.equal(whole.error, undefined);
    assert.ok(whole.frames.length >= 14);
    assert.equal(whole.frames.map((f) => f.raw).join(''), stream.toString('hex'), 'frames cover the stream exactly');
    for (let cut = 1; cut < stream.length; cut++) {
      const two = run({ direction: dir }, [stream.subarray(0, cut), stream.subarray(cut)]);
      assert.deepEqual(two.frames, whole.frames, `${dir} split at ${cut}`);
      assert.equal(two.error, undefined);
    }
    const bytes = [...stream].map((b) => Buffer.from([b]));
    assert.deepEqual(run({ direction: dir }, bytes).frames, whole.frames, `${dir} byte by byte`);
  }
});

test('frames inside one chunk are views of it, not copies', () => {
  const q = m.query('SELECT 1');
  const chunk = Buffer.concat([q, q]);
  const r = new FrameReader({ direction: 'frontend', startupPhase: false });
  const got: Frame[] = [];
  assert.equal(r.push(chunk, (f) => got.push(f)), undefined);
  assert.equal(got.length, 2);
  assert.equal(got[0]!.buffer, chunk);
  assert.equal(got[1]!.start, q.length);
  assert.equal(got[1]!.body.buffer, chunk.buffer);
  assert.equal(got[0]!.type, 'Q'.charCodeAt(0));
  assert.equal(r.buffered, 0);
});

test('startup phase: SSLRequest, then (after denial) a StartupMessage, then typed messages', () => {
  const stream = [m.sslRequest(), Buffer.concat([m.startupMessage({ user: 'u' }), m.query('SELECT 1')])];
  const codes: number[] = [];
  const { frames, error, reader } = run({ direction: 'frontend' }, stream, (f) => {
    if (f.type === 0) codes.push(f.body.readInt32BE(0));
  });
  assert.equal(error, undefined);
  assert.deepEqual(codes, [SSL_REQUEST_CODE, PROTOCOL_3_0]);
  assert.deepEqual(frames.map((f) => f.type), [0, 0, 'Q'.charCodeAt(0)]);
  assert.equal(reader.startupPhase, false, 'a protocol-3 StartupMessage ends the startup phase');

  // GSSENCRequest then SSLRequest then startup, each in its own push.
  const g = run({ direction: 'frontend' }, [m.gssencRequest(), m.sslRequest(), m.startupMessage({ user: 'u' })]);
  assert.equal(g.error, undefined);
  assert.equal(g.frames.length, 3);
  assert.equal(Buffer.from(g.frames[0]!.body, 'hex').readInt32BE(0), GSSENC_REQUEST_CODE);

  // CancelRequest (3.0 key, and a 3.2-style 32-byte key).
  for (const key of [0x01020304, Buffer.alloc(32, 7)]) {
    const c = run({ direction: 'frontend' }, [m.cancelRequest(99, key)]);
    assert.equal(c.error, undefined);
    assert.equal(Buffer.from(c.frames[0]!.body, 'hex').readInt32BE(0), CANCEL_REQUEST_CODE);
  }

  // The caller may leave the startup phase from inside the callback.
  const manual = run({ direction: 'frontend' }, [Buffer.concat([m.startupMessage({ user: 'u' }, 196610), m.sync()])]);
  assert.equal(manual.error, undefined, 'protocol 3.2 is 3.x');
  assert.deepEqual(manual.frames.map((f) => f.type), [0, 'S'.charCodeAt(0)]);
});

test('bytes after an SSLRequest in the same read are rejected (buffer stuffing)', () => {
  const r = run({ direction: 'frontend' }, [Buffer.concat([m.sslRequest(), m.startupMessage({ user: 'u' })])]);
  assert.equal(r.frames.length, 0, 'the SSLRequest is not delivered, so never acted upon');
  assert.equal(r.error?.code, 'data_after_ssl');
  assert.match(r.error!.message, /after the SSLRequest/);
  // ... also when the SSLRequest arrived in pieces.
  const ssl = m.sslRequest();
  const r2 = run({ direction: 'frontend' }, [ssl.subarray(0, 3), Buffer.concat([ssl.subarray(3), Buffer.from('x')])]);
  assert.equal(r2.error?.code, 'data_after_ssl');
  assert.equal(r2.frames.length, 0);
});

test('backend SSL response: one byte, then nothing before the handshake', () => {
  const reader = new FrameReader({ direction: 'backend' });
  reader.expectSslResponse = true;
  const seen: number[] = [];
  assert.equal(reader.push(Buffer.from('N'), (f) => seen.push(f.type)), undefined);
  assert.deepEqual(seen, ['N'.charCodeAt(0)]);
  assert.equal(reader.push(m.authenticationOk(), (f) => seen.push(f.type)), undefined);
  assert.deepEqual(seen, ['N'.charCodeAt(0), 'R'.charCodeAt(0)]);

  const r2 = new FrameReader({ direction: 'backend' });
  r2.expectSslResponse = true;
  const e = r2.push(Buffer.concat([Buffer.from('S'), m.authenticationOk()]), () => assert.fail('not delivered'));
  assert.equal(e?.code, 'data_after_ssl');
  assert.match(e!.message, /server accepted encryption/);

  const r3 = new FrameReader({ direction: 'backend' });
  r3.expectSslResponse = true;
  const types: number[] = [];
  assert.equal(r3.push(m.errorResponse({ severity: 'FATAL', code: '08P01', message: 'no' }), (f) => types.push(f.type)), undefined);
  assert.deepEqual(types, ['E'.charCodeAt(0)], 'an old server\'s ErrorResponse is framed normally');

  const r4 = new FrameReader({ direction: 'backend' });
  r4.expectSslResponse = true;
  assert.equal(r4.push(Buffer.from('Q'), () => {})?.code, 'unknown_type');
});

function header(type: string, len: number): Buffer {
  const b = Buffer.alloc(5);
  b[0] = type.charCodeAt(0);
  b.writeInt32BE(len | 0, 1);
  return b;
}

function startupHeader(len: number, code: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeInt32BE(len | 0, 0);
  b.writeInt32BE(code | 0, 4);
  return b;
}

test('every bad length and type is an error value with a clear message, and stops the reader', () => {
  const fe = { direction: 'frontend' as const, startupPhase: false };
  const cases: [FrameReaderOptions, Buffer, string, RegExp][] = [
    [fe, header('Q', 2147483647), 'length_too_large', /^message 'Q' declares length 2147483647, over the 67108864-byte limit$/],
    [fe, header('Q', 3), 'length_too_small', /^message 'Q' declares length 3, less than the 4 bytes of the length field itself$/],
    [fe, header('Q', 0), 'length_too_small', /declares length 0/],
    [fe, header('P', -1), 'length_too_small', /declares length -1/],
    [fe, header('d', -2147483648), 'length_too_small', /declares length -2147483648/],
    [{ ...fe, maxMessageLength: 1000 }, header('d', 1001), 'length_too_large', /over the 1000-byte limit/],
    [fe, header('S', 8), 'bad_length', /message 'S' declares length 8; that message type always has length 4/],
    [fe, header('X', 5), 'bad_length', /'X'/],
    [fe, header('Z', 5), 'unknown_type', /^unknown frontend message type 'Z'$/],
    [fe, header('\u0000', 5), 'unknown_type', /type 0x00/],
    [{ direction: 'backend' }, header('Q', 5), 'unknown_type', /^unknown backend message type 'Q'$/],
    [{ direction: 'backend' }, header('Z', 6), 'bad_length', /'Z' declares length 6/],
    [{ direction: 'backend' }, header('K', 300), 'bad_length', /must be 12 to 264/],
    [{ direction: 'backend' }, header('R', 4), 'bad_length', /needs at least 8/],
    [{ direction: 'frontend' }, startupHeader(7, PROTOCOL_3_0), 'length_too_small', /^startup packet declares length 7, less than the 8-byte minimum$/],
    [{ direction: 'frontend' }, startupHeader(-5, PROTOCOL_3_0), 'length_too_small', /-5/],
    [{ direction: 'frontend' }, startupHeader(10001, PROTOCOL_3_0), 'length_too_large', /^startup packet declares length 10001, over the 10000-byte limit$/],
    [{ direction: 'frontend' }, startupHeader(2147483647, PROTOCOL_3_0), 'length_too_large', /2147483647/],
    [{ direction: 'frontend' }, Buffer.concat([startupHeader(9, 2 << 16), Buffer.from([0])]), 'unknown_startup_code', /protocol 2\.0 .* only protocol 3\.x/],
    [{ direction: 'frontend' }, Buffer.concat([startupHeader(12, SSL_REQUEST_CODE), Buffer.alloc(4)]), 'bad_length', /SSLRequest declares length 12; it always has length 8/],
    [{ direction: 'frontend' }, startupHeader(8, CANCEL_REQUEST_CODE), 'bad_length', /CancelRequest declares length 8/],
  ];
  for (const [opts, bytes, code, re] of cases) {
    // Whole, and split after each byte: the error must not depend on chunking.
    for (let cut = 0; cut <= bytes.length; cut++) {
      const chunks = cut === 0 || cut === bytes.length ? [bytes] : [bytes.subarray(0, cut), bytes.subarray(cut)];
      const { error, frames, reader } = run(opts, chunks);
      assert.equal(frames.length, 0);
      assert.ok(error instanceof PgProtocolError, `${bytes.toString('hex')} cut ${cut}`);
      assert.equal(error.code, code, error.message);
      assert.match(error.message, re);
      assert.equal(reader.buffered, 0, 'nothing held after the error');
      const again = reader.push(m.sync(), () => assert.fail('no frames after an error'));
      assert.equal(again?.code, 'reader_stopped');
      assert.match(again!.message, /no further input accepted after a protocol error/);
    }
  }
});

test('frames before a bad one are delivered; a huge declared length buffers nothing in advance', () => {
  const r = run({ direction: 'frontend', startupPhase: false }, [Buffer.concat([m.sync(), header('Q', 2147483647)])]);
  assert.equal(r.frames.length, 1);
  assert.equal(r.error?.code, 'length_too_large');

  const reader = new FrameReader({ direction: 'frontend', startupPhase: false });
  const before = process.memoryUsage().arrayBuffers;
  assert.equal(reader.push(Buffer.concat([header('Q', 60 * 1024 * 1024), Buffer.from('SELECT')]), () => {}), undefined);
  assert.equal(reader.buffered, 11, 'only the bytes received are held');
  assert.ok(process.memoryUsage().arrayBuffers - before < 1024 * 1024, 'no buffer of the declared size was allocated');
  const e = reader.finish();
  assert.equal(e?.code, 'truncated');
  assert.match(e!.message, /message 'Q' after 11 of its 62914561 bytes/);
});

test('a large message in many chunks is assembled with one copy', () => {
  const big = m.copyData(Buffer.alloc(3 * 1024 * 1024, 0x61));
  const chunks: Buffer[] = [];
  for (let i = 0; i < big.length; i += 1000) chunks.push(big.subarray(i, i + 1000));
  const reader = new FrameReader({ direction: 'frontend', startupPhase: false });
  const got: Frame[] = [];
  const t0 = performance.now();
  for (const c of chunks) assert.equal(reader.push(c, (f) => got.push(f)), undefined);
  const ms = performance.now() - t0;
  assert.equal(got.length, 1);
  assert.equal(got[0]!.body.length, 3 * 1024 * 1024);
  assert.ok(got[0]!.buffer.equals(big));
  assert.ok(ms < 2000, `took ${ms} ms`); // quadratic copying would take far longer; not a benchmark
});

// ----------------------------------------------------------------------------------------------------
// Properties

const FRONTEND_TYPES = 'QPBDECdfFp';
const FIXED_FRONTEND = 'SHXc';

const arbFrontendMessage = fc.oneof(
  fc.tuple(fc.constantFrom(...FRONTEND_TYPES), fc.uint8Array({ maxLength: 300 })).map(([t, body]) => {
    const b = Buffer.alloc(5 + body.length);
    b[0] = t.charCodeAt(0);
    b.writeInt32BE(4 + body.length, 1);
    Buffer.from(body).copy(b, 5);
    return b;
  }),
  fc.constantFrom(...FIXED_FRONTEND).map((t) => header(t, 4)),
);

/** Cut points -> chunks. */
function chunk(stream: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let prev = 0;
  for (const p of points) {
    out.push(stream.subarray(prev, p));
    prev = p;
  }
  out.push(stream.subarray(prev));
  return out;
}

test('property: any chunking of a valid message sequence yields the same frames', () => {
  fc.assert(
    fc.property(
      fc.dictionary(fc.constantFrom('user', 'database', 'application_name', 'options'), fc.string({ minLength: 1, maxLength: 20 }).filter((s) => !s.includes('\0'))),
      fc.array(arbFrontendMessage, { maxLength: 20 }),
      fc.array(fc.nat(), { maxLength: 30 }),
      (params, msgs, cuts) => {
        const stream = Buffer.concat([m.startupMessage(params), ...msgs]);
        const whole = run({ direction: 'frontend' }, [stream]);
        assert.equal(whole.error, undefined);
        assert.equal(whole.frames.length, 1 + msgs.length);
        const pieces = run({ direction: 'frontend' }, chunk(stream, cuts));
        assert.equal(pieces.error, undefined);
        assert.deepEqual(pieces.frames, whole.frames);
        assert.equal(pieces.reader.buffered, 0);
      },
    ),
    { numRuns: 300 },
  );
});

// Random bytes, with valid frames mixed in so that parsing gets past the first header often.
const arbNoise = fc.array(
  fc.oneof(
    fc.uint8Array({ maxLength: 16 }).map((a) => Buffer.from(a)),
    arbFrontendMessage,
    fc.tuple(fc.integer(), fc.integer({ min: 0, max: 255 })).map(([len, t]) => {
      const b = Buffer.alloc(5);
      b[0] = t;
      b.writeInt32BE(len | 0, 1);
      return b;
    }),
    fc.tuple(fc.integer({ min: -10, max: 20_000 }), fc.constantFrom(PROTOCOL_3_0, SSL_REQUEST_CODE, GSSENC_REQUEST_CODE, CANCEL_REQUEST_CODE, 0, 131072)).map(([len, code]) => startupHeader(len, code)),
  ),
  { maxLength: 12 },
);

test('property: arbitrary bytes never throw, stay within the limit, and frames lie within the input', () => {
  fc.assert(
    fc.property(
      arbNoise,
      fc.array(fc.nat(), { maxLength: 10 }),
      fc.constantFrom<'frontend' | 'backend'>('frontend', 'backend'),
      fc.integer({ min: 8, max: 4096 }),
      fc.boolean(),
      (parts, cuts, direction, maxMessageLength, startupPhase) => {
        const input = Buffer.concat(parts);
        const reader = new FrameReader({ direction, maxMessageLength, maxStartupLength: 512, startupPhase: direction === 'frontend' && startupPhase });
        let offset = 0; // frames must tile a prefix of the input
        let error: PgProtocolError | undefined;
        for (const c of chunk(input, cuts)) {
          const e = reader.push(c, (f) => {
            const raw = f.buffer.subarray(f.start, f.end);
            assert.ok(f.end <= f.buffer.length && f.start >= 0 && f.start < f.end);
            assert.ok(raw.equals(input.subarray(offset, offset + raw.length)), 'frame bytes are the input bytes');
            assert.ok(f.body.length <= raw.length);
            assert.ok(raw.length <= Math.max(maxMessageLength, 512) + 1);
            offset += raw.length;
          });
          assert.ok(reader.buffered <= Math.max(maxMessageLength, 512) + 1, 'never holds more than the limit');
          if (e) {
            assert.ok(e instanceof PgProtocolError);
            assert.ok(e.message.length > 0);
            error = e;
            break;
          }
        }
        if (error === undefined) assert.equal(offset + reader.buffered, input.length, 'every byte is framed or held');
      },
    ),
    { numRuns: 1500 },
  );
});

const DECODERS: [string, (b: Buffer) => unknown][] = [
  ['startup', m.decodeStartupPacket], ['Query', m.decodeQuery], ['Parse', m.decodeParse], ['Bind', m.decodeBind],
  ['Execute', m.decodeExecute], ['Close', m.decodeClose], ['Describe', m.decodeDescribe],
  ['PasswordMessage', m.decodePasswordMessage], ['SASLInitialResponse', m.decodeSASLInitialResponse],
  ['CopyFail', m.decodeCopyFail], ['FunctionCall', m.decodeFunctionCall], ['Authentication', m.decodeAuthentication],
  ['RowDescription', m.decodeRowDescription], ['DataRow', m.decodeDataRow], ['CommandComplete', m.decodeCommandComplete],
  ['ErrorResponse', m.decodeErrorResponse], ['ParameterStatus', m.decodeParameterStatus],
  ['BackendKeyData', m.decodeBackendKeyData], ['ReadyForQuery', m.decodeReadyForQuery],
  ['ParameterDescription', m.decodeParameterDescription], ['NotificationResponse', m.decodeNotificationResponse],
  ['CopyResponse', m.decodeCopyResponse], ['NegotiateProtocolVersion', m.decodeNegotiateProtocolVersion],
  ['rewriteDataRow', (b) => m.rewriteDataRow(b, new Set([0, 1, 2]), (v) => Buffer.concat([v, v]))],
];

// Bodies of real messages, then truncated, extended or with bytes changed: closer to the edge cases
// than uniform noise.
const SAMPLE_BODIES = [
  m.startupMessage({ user: 'u', database: 'd' }).subarray(4), m.cancelRequest(1, 2).subarray(4),
  m.query('SELECT 1').subarray(5), m.parse('n', 'SELECT $1', [23, 25]).subarray(5),
  m.bind({ statement: 'n', params: [Buffer.from('1'), null], paramFormats: [0, 1], resultFormats: [1] }).subarray(5),
  m.execute('p', 10).subarray(5), m.close('S', 'n').subarray(5), m.saslInitialResponse('SCRAM-SHA-256', 'n,,n=,r=x').subarray(5),
  m.authenticationSASL(['SCRAM-SHA-256']).subarray(5), m.authenticationMD5Password(Buffer.from('abcd')).subarray(5),
  m.rowDescription([{ name: 'a', tableOid: 1, columnAttr: 1, typeOid: 23, typeSize: 4, typeMod: -1, format: 0 }]).subarray(5),
  m.dataRow(['x', null, Buffer.alloc(0)]).subarray(5), m.commandComplete('INSERT 0 3').subarray(5),
  m.errorResponse({ severity: 'ERROR', code: '42501', message: 'no' }).subarray(5), m.parameterStatus('a', 'b').subarray(5),
  m.backendKeyData(1, 2).subarray(5), m.readyForQuery('T').subarray(5),
];

const arbBody = fc.oneof(
  fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a)),
  fc.tuple(fc.constantFrom(...SAMPLE_BODIES), fc.nat(), fc.uint8Array({ maxLength: 8 }), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }))
    .map(([body, cut, extra, edits]) => {
      const b = Buffer.concat([body.subarray(0, cut % (body.length + 1)), Buffer.from(extra)]);
      for (const [at, v] of edits) if (b.length > 0) b[at % b.length] = v;
      return b;
    }),
);

test('property: decoders never throw on arbitrary bodies and views stay inside the body', () => {
  fc.assert(
    fc.property(arbBody, (body) => {
      for (const [name, decode] of DECODERS) {
        let r: unknown;
        assert.doesNotThrow(() => {
          r = decode(body);
        }, name);
        assert.ok(r instanceof PgProtocolError || (typeof r === 'object' && r !== null) || Buffer.isBuffer(r), name);
        if (r instanceof PgProtocolError) assert.match(r.message, /^malformed .* message: /, name);
        if (name === 'DataRow' && !(r instanceof PgProtocolError)) {
          for (const v of (r as { values: (Buffer | null)[] }).values) {
            if (v !== null) assert.ok(v.buffer === body.buffer && v.byteOffset >= body.byteOffset && v.byteOffset + v.length <= body.byteOffset + body.length);
          }
        }
      }
    }),
    { numRuns: 2000 },
  );
});
