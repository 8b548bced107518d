import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { FrameReader, PgProtocolError, type Frame, type Direction } from '../../agent/pg/frames.js';
import * as m from '../../agent/pg/messages.js';
import { ScramClient, md5Password, chooseSaslMechanism, saslprep } from '../../agent/pg/scram.js';

/** Frames one encoded message (checking the framing is valid) and returns it. */
function frame(bytes: Buffer, direction: Direction = 'frontend', startupPhase = false): Frame {
  const r = new FrameReader({ direction, startupPhase });
  const got: Frame[] = [];
  const e = r.push(bytes, (f) => got.push(f));
  assert.equal(e, undefined, e?.message);
  assert.equal(got.length, 1);
  assert.equal(r.buffered, 0);
  return got[0]!;
}

function ok<T>(v: T | PgProtocolError): T {
  if (v instanceof PgProtocolError) assert.fail(v.message);
  return v;
}

function err(v: unknown, re: RegExp): void {
  assert.ok(v instanceof PgProtocolError, `expected an error, got ${JSON.stringify(v)}`);
  assert.match(v.message, re);
}

test('frontend messages round-trip', () => {
  const s = ok(m.decodeStartupPacket(frame(m.startupMessage({ user: 'alice', database: 'app', application_name: 'ci job é' }), 'frontend', true).body));
  assert.equal(s.kind, 'startup');
  if (s.kind === 'startup') {
    assert.equal(s.major, 3);
    assert.equal(s.minor, 0);
    assert.deepEqual([...s.params], [['user', 'alice'], ['database', 'app'], ['application_name', 'ci job é']]);
  }
  assert.deepEqual(ok(m.decodeStartupPacket(frame(m.sslRequest(), 'frontend', true).body)), { kind: 'ssl' });
  assert.deepEqual(ok(m.decodeStartupPacket(frame(m.gssencRequest(), 'frontend', true).body)), { kind: 'gssenc' });
  const c = ok(m.decodeStartupPacket(frame(m.cancelRequest(4242, 0x0a0b0c0d), 'frontend', true).body));
  assert.equal(c.kind, 'cancel');
  if (c.kind === 'cancel') {
    assert.equal(c.pid, 4242);
    assert.equal(c.key.toString('hex'), '0a0b0c0d');
  }

  assert.deepEqual(ok(m.decodeQuery(frame(m.query('SELECT 1; SELECT ‘x’')).body)), { sql: 'SELECT 1; SELECT ‘x’' });
  assert.deepEqual(ok(m.decodeParse(frame(m.parse('st', 'SELECT $1, $2', [23, 4294967295])).body)), { name: 'st', sql: 'SELECT $1, $2', paramTypes: [23, 4294967295] });
  const b = ok(m.decodeBind(frame(m.bind({ portal: 'p', statement: 'st', params: ['42', null, Buffer.from([0, 0, 0, 7]), ''], paramFormats: [0, 0, 1, 0], resultFormats: [1] })).body));
  assert.equal(b.portal, 'p');
  assert.equal(b.statement, 'st');
  assert.deepEqual(b.paramFormats, [0, 0, 1, 0]);
  assert.deepEqual(b.params.map((p) => (p === null ? null : p.toString('hex'))), ['3432', null, '00000007', '']);
  assert.deepEqual(b.resultFormats, [1]);
  assert.deepEqual(ok(m.decodeExecute(frame(m.execute('p', 100)).body)), { portal: 'p', maxRows: 100 });
  assert.deepEqual(ok(m.decodeDescribe(frame(m.describe('S', 'st')).body)), { kind: 'S', name: 'st' });
  assert.deepEqual(ok(m.decodeClose(frame(m.close('P', '')).body)), { kind: 'P', name: '' });
  assert.deepEqual(ok(m.decodePasswordMessage(frame(m.passwordMessage('hunter2')).body)), { password: 'hunter2' });
  const si = ok(m.decodeSASLInitialResponse(frame(m.saslInitialResponse('SCRAM-SHA-256', 'n,,n=,r=abc')).body));
  assert.equal(si.mechanism, 'SCRAM-SHA-256');
  assert.equal(si.data?.toString(), 'n,,n=,r=abc');
  assert.equal(m.decodeSASLResponse(frame(m.saslResponse('c=biws')).body).data.toString(), 'c=biws');
  assert.deepEqual(ok(m.decodeCopyFail(frame(m.copyFail('bad\0input')).body)), { message: 'bad\uFFFDinput' });
  assert.equal(frame(m.terminate()).type, 'X'.charCodeAt(0));
  assert.equal(frame(m.sync()).body.length, 0);
});

test('backend messages round-trip', () => {
  const be = (b: Buffer): Buffer => frame(b, 'backend').body;
  assert.deepEqual(ok(m.decodeAuthentication(be(m.authenticationOk()))), { kind: 'ok', subtype: 0 });
  assert.deepEqual(ok(m.decodeAuthentication(be(m.authenticationCleartextPassword()))), { kind: 'cleartext', subtype: 3 });
  const md5 = ok(m.decodeAuthentication(be(m.authenticationMD5Password(Buffer.from([1, 2, 3, 4])))));
  assert.equal(md5.kind === 'md5' && md5.salt.toString('hex'), '01020304');
  assert.deepEqual(ok(m.decodeAuthentication(be(m.authenticationSASL(['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256'])))), { kind: 'sasl', subtype: 10, mechanisms: ['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256'] });
  const cont = ok(m.decodeAuthentication(be(m.authenticationSASLContinue(Buffer.from('r=x,s=y,i=1')))));
  assert.equal(cont.kind === 'sasl-continue' && cont.data.toString(), 'r=x,s=y,i=1');
  const fin = ok(m.decodeAuthentication(be(m.authenticationSASLFinal(Buffer.from('v=abc')))));
  assert.equal(fin.kind === 'sasl-final' && fin.data.toString(), 'v=abc');

  const e = ok(m.decodeErrorResponse(be(m.errorResponse({ severity: 'ERROR', code: '42501', message: 'statement denied by rule "no-drop"', detail: 'DROP TABLE users', hint: 'ask for a review' }))));
  assert.equal(e.severity, 'ERROR');
  assert.equal(e.code, '42501');
  assert.equal(e.message, 'statement denied by rule "no-drop"');
  assert.equal(e.fields.D, 'DROP TABLE users');
  assert.equal(e.fields.H, 'ask for a review');
  assert.equal(e.fields.S, 'ERROR');
  assert.equal(ok(m.decodeErrorResponse(be(m.errorResponse({ severity: 'FATAL', code: '08P01', message: 'a\0b' })))).message, 'a\uFFFDb', 'NUL cannot cut a field short');
  assert.equal(frame(m.noticeResponse({ severity: 'NOTICE', code: '00000', message: 'n' }), 'backend').type, 'N'.charCodeAt(0));

  assert.deepEqual(ok(m.decodeReadyForQuery(be(m.readyForQuery('T')))), { status: 'T' });
  assert.deepEqual(ok(m.decodeParameterStatus(be(m.parameterStatus('client_encoding', 'UTF8')))), { name: 'client_encoding', value: 'UTF8' });
  const k = ok(m.decodeBackendKeyData(be(m.backendKeyData(77, -2))));
  assert.equal(k.pid, 77);
  assert.equal(k.key.toString('hex'), 'fffffffe');
  assert.equal(ok(m.decodeBackendKeyData(be(m.backendKeyData(1, Buffer.alloc(32, 9))))).key.length, 32);

  const fields = [
    { name: 'id', tableOid: 16384, columnAttr: 1, typeOid: 23, typeSize: 4, typeMod: -1, format: 1 },
    { name: 'émail', tableOid: 16384, columnAttr: 2, typeOid: 25, typeSize: -1, typeMod: -1, format: 0 },
  ];
  assert.deepEqual(ok(m.decodeRowDescription(be(m.rowDescription(fields)))).fields, fields);
  const row = ok(m.decodeDataRow(be(m.dataRow(['a', null, '', Buffer.from([0xff])]))));
  assert.deepEqual(row.values.map((v) => (v === null ? null : v.toString('hex'))), ['61', null, '', 'ff']);

  const tags: [string, string, number | undefined][] = [
    ['INSERT 0 5', 'INSERT', 5], ['SELECT 3', 'SELECT', 3], ['UPDATE 0', 'UPDATE', 0], ['DELETE 12', 'DELETE', 12],
    ['COPY 100000', 'COPY', 100000], ['MERGE 2', 'MERGE', 2], ['FETCH 1', 'FETCH', 1], ['CREATE TABLE', 'CREATE TABLE', undefined],
    ['DROP TABLE', 'DROP TABLE', undefined], ['BEGIN', 'BEGIN', undefined],
  ];
  for (const [tag, command, rows] of tags) {
    assert.deepEqual(ok(m.decodeCommandComplete(be(m.commandComplete(tag)))), { tag, command, rows }, tag);
  }
});

test('decoders are as strict as the server', () => {
  // The server reads a query up to its first NUL and then rejects the leftover bytes: so do we.
  err(m.decodeQuery(Buffer.from('SELECT 1\0DROP TABLE t\0')), /^malformed Query message: 13 unexpected byte\(s\) after the query string's NUL$/);
  err(m.decodeQuery(Buffer.from('SELECT 1')), /not NUL-terminated/);
  err(m.decodeQuery(Buffer.alloc(0)), /not NUL-terminated/);
  err(m.decodeStartupPacket(m.startupMessage({ user: 'a' }).subarray(4, -1)), /does not end with a NUL terminator/);
  const dup = Buffer.concat([Buffer.from([0, 3, 0, 0]), Buffer.from('user\0a\0user\0b\0\0')]);
  err(m.decodeStartupPacket(dup), /parameter "user" appears twice/);
  err(m.decodeStartupPacket(Buffer.concat([Buffer.from([0, 3, 0, 0]), Buffer.from('user\0')])), /value of parameter "user"/);
  err(m.decodeStartupPacket(Buffer.from([0, 2, 0, 0, 0])), /unsupported protocol 2\.0/);
  err(m.decodeStartupPacket(m.cancelRequest(1, 2).subarray(4, 14)), /secret key of 2 bytes/);
  err(m.decodeStartupPacket(m.cancelRequest(1, 2).subarray(4, 10)), /missing the process id/);
  const bind = m.bind({ params: ['1', '2'], paramFormats: [0, 0] }).subarray(5);
  err(m.decodeBind(Buffer.concat([bind, Buffer.from([0])])), /1 unexpected byte/);
  err(m.decodeBind(m.bind({ params: ['1', '2'], paramFormats: [0, 1, 0] }).subarray(5)), /3 parameter format codes for 2 parameters/);
  err(m.decodeBind(m.bind({ params: ['1'], paramFormats: [2] }).subarray(5)), /parameter format codes 1 is 2/);
  const neg = Buffer.from(m.bind({ params: ['1'] }).subarray(5));
  neg.writeInt32BE(-2, 2 + 2 + 2); // '' '' nformats=0 nparams=1, then the length
  err(m.decodeBind(neg), /parameter 1 declares length -2/);
  const huge = Buffer.from(m.bind({ params: ['1'] }).subarray(5));
  huge.writeInt32BE(0x7fffffff, 6);
  err(m.decodeBind(huge), /parameter 1 declares 2147483647 bytes but only 3 remain/);
  const manyParams = Buffer.from([0, 0, 0, 0, 0xff, 0xff]);
  err(m.decodeBind(manyParams), /declares 65535 parameters but only 0 bytes remain/);
  err(m.decodeParse(Buffer.from('n\0SELECT 1\0\0\x05')), /declares 5 parameter types/);
  err(m.decodeDescribe(Buffer.from('Xname\0')), /neither 'S' nor 'P'/);
  err(m.decodeReadyForQuery(Buffer.from('Q')), /transaction status/);
  err(m.decodeAuthentication(Buffer.from([0, 0, 0, 5, 1, 2])), /salt of 2 bytes/);
  err(m.decodeDataRow(Buffer.from([0, 1, 0, 0, 0, 9, 1])), /column 1 declares length 9 but 1 bytes remain/);
  err(m.decodeRowDescription(Buffer.from([0, 1, 0x61, 0])), /declares 1 fields but only 2 bytes remain/);
  err(m.decodeErrorResponse(Buffer.from('Mno')), /field M is not NUL-terminated/);
  assert.throws(() => m.query('SELECT 1\0'), /query string must not contain a NUL/);
  assert.throws(() => m.startupMessage({ user: 'a\0b' }), TypeError);
});

test('rewriteDataRow masks chosen columns, keeps NULLs, fixes every length', () => {
  const body = (values: (Buffer | string | null)[]): Buffer => m.dataRow(values).subarray(5);
  const mask = (v: Buffer): Buffer => Buffer.from(`***${v.length}`);
  const decode = (out: Buffer | PgProtocolError): (string | null)[] => {
    const f = frame(ok(out), 'backend');
    assert.equal(f.type, 'D'.charCodeAt(0));
    return ok(m.decodeDataRow(f.body)).values.map((v) => (v === null ? null : v.toString()));
  };
  const row = body(['1', 'alice@example.com', null, '', 'plain']);
  assert.deepEqual(decode(m.rewriteDataRow(row, new Set([1, 2, 3]), mask)), ['1', '***17', null, '***0', 'plain']);
  assert.deepEqual(decode(m.rewriteDataRow(row, [false, true, false, false, true], mask)), ['1', '***17', null, '', '***5']);
  assert.deepEqual(decode(m.rewriteDataRow(row, new Set(), mask)), ['1', 'alice@example.com', null, '', 'plain']);
  assert.deepEqual(decode(m.rewriteDataRow(row, new Set([0, 1, 2, 3, 4]), () => Buffer.alloc(0))), ['', '', null, '', '']);
  // Binary int4 column: the mask function returns a valid 4-byte value.
  const bin = body([Buffer.from([0, 0, 0x30, 0x39]), Buffer.from('x')]);
  const out = ok(m.rewriteDataRow(bin, new Set([0]), (v, col) => {
    assert.equal(col, 0);
    assert.equal(v.length, 4);
    return Buffer.alloc(4);
  }));
  assert.deepEqual(ok(m.decodeDataRow(frame(out, 'backend').body)).values.map((v) => v?.toString('hex')), ['00000000', '78']);
  // Zero columns.
  assert.deepEqual(decode(m.rewriteDataRow(body([]), new Set([0]), mask)), []);
  // Malformed rows are errors, not exceptions.
  err(m.rewriteDataRow(Buffer.from([0, 2, 0, 0, 0, 1, 0x61]), new Set([0]), mask), /column 2 is cut off/);
  err(m.rewriteDataRow(Buffer.concat([row, Buffer.from([1])]), new Set([0]), mask), /1 unexpected byte/);
});

test('property: rewriteDataRow equals decode, replace, encode', () => {
  const arbValue = fc.oneof(fc.constant(null), fc.uint8Array({ maxLength: 40 }).map((a) => Buffer.from(a)));
  fc.assert(
    fc.property(fc.array(arbValue, { maxLength: 30 }), fc.array(fc.nat(40)), fc.uint8Array({ maxLength: 60 }), (values, masked, replacement) => {
      const set = new Set(masked);
      const repl = Buffer.from(replacement);
      const out = ok(m.rewriteDataRow(m.dataRow(values).subarray(5), set, () => repl));
      const expected = m.dataRow(values.map((v, i) => (v !== null && set.has(i) ? repl : v)));
      assert.ok(out.equals(expected));
    }),
    { numRuns: 500 },
  );
});

test('SCRAM-SHA-256: RFC 7677 test vector', () => {
  const c = new ScramClient({ password: 'pencil', username: 'user', clientNonce: 'rOprNGfwEbeRWgbNEkqO' });
  assert.equal(c.clientFirstMessage(), 'n,,n=user,r=rOprNGfwEbeRWgbNEkqO');
  const final = c.clientFinalMessage('r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096');
  assert.equal(final, 'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=');
  assert.equal(c.verifyServerFinal(Buffer.from('v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=')), true);
});

test('SCRAM-SHA-256: PostgreSQL form and refusals', () => {
  const serverFirst = 'r=abcdefghijklmnopqrstuvwxSERVER,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096';
  const pg = new ScramClient({ password: 'pencil', clientNonce: 'abcdefghijklmnopqrstuvwx' });
  assert.equal(pg.clientFirstMessage(), 'n,,n=,r=abcdefghijklmnopqrstuvwx', 'libpq sends an empty user name');
  assert.match(ok(pg.clientFinalMessage(serverFirst)), /^c=biws,r=abcdefghijklmnopqrstuvwxSERVER,p=[A-Za-z0-9+/]{43}=$/);
  err(pg.verifyServerFinal('v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4='), /server signature is wrong/);

  const random = new ScramClient({ password: 'x' });
  assert.match(random.clientFirstMessage(), /^n,,n=,r=[A-Za-z0-9+/]{24}$/);

  const fresh = (): ScramClient => {
    const c = new ScramClient({ password: 'p', clientNonce: 'nonce', maxIterations: 10_000 });
    c.clientFirstMessage();
    return c;
  };
  err(fresh().clientFinalMessage('r=other,s=AAAA,i=4096'), /does not extend the client nonce/);
  err(fresh().clientFinalMessage('r=nonce,s=AAAA,i=4096'), /does not extend the client nonce/);
  err(fresh().clientFinalMessage('r=nonceX,s=AAAA,i=100000'), /100000 iterations, over the limit of 10000/);
  err(fresh().clientFinalMessage('r=nonceX,s=AAAA,i=0'), /not a positive integer/);
  err(fresh().clientFinalMessage('r=nonceX,s=A*AA,i=1'), /salt is not base64/);
  err(fresh().clientFinalMessage('m=ext,r=nonceX,s=AAAA,i=1'), /extension/);
  err(fresh().clientFinalMessage('garbage'), /malformed attribute/);
  const c = fresh();
  ok(c.clientFinalMessage('r=nonceX,s=AAAA,i=1'));
  err(c.verifyServerFinal('e=invalid-proof'), /the server reports "invalid-proof"/);
  err(new ScramClient({ password: 'p' }).clientFinalMessage(serverFirst), /out of order/);

  assert.equal(chooseSaslMechanism(['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256']), 'SCRAM-SHA-256');
  err(chooseSaslMechanism(['SCRAM-SHA-256-PLUS']), /offers only SCRAM-SHA-256-PLUS/);
});

test('SASLprep of passwords', () => {
  assert.equal(saslprep('plain ascii 123'), 'plain ascii 123');
  assert.equal(saslprep('I\u00ADX'), 'IX', 'soft hyphen maps to nothing');
  assert.equal(saslprep('a\u00A0b'), 'a b', 'non-ASCII space maps to space');
  assert.equal(saslprep('\u2168'), 'IX', 'NFKC');
  assert.equal(saslprep('\u00AA'), 'a');
  assert.equal(saslprep('a\u0007b'), 'a\u0007b', 'prohibited: used unchanged, as libpq does');
  assert.equal(saslprep('\u0627\u0031'), '\u0627\u0031', 'bidi violation: unchanged');
});

test('md5 password hashing', () => {
  assert.equal(md5Password('user', 'pencil', Buffer.from([1, 2, 3, 4])), 'md54376eb6913b38f9aaff38dc7cf19ca76');
  assert.equal(md5Password('postgres', 'secret', Buffer.from([0x93, 0x2a, 0xff, 0x00])), 'md555144bc69bc5714f726173bf86ebdfee');
  const body = frame(m.passwordMessage(md5Password('u', 'p', Buffer.alloc(4)))).body;
  assert.match(ok(m.decodePasswordMessage(body)).password, /^md5[0-9a-f]{32}$/);
});
