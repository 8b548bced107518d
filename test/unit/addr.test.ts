import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bytes16ToIp, ipToBytes16, isV4Mapped } from '../../agent/net/addr.js';

const cases: [string, string, string][] = [
  ['127.0.0.2', '00000000000000000000ffff7f000002', '127.0.0.2'],
  ['::ffff:127.0.0.1', '00000000000000000000ffff7f000001', '127.0.0.1'],
  ['::1', '00000000000000000000000000000001', '::1'],
  ['::', '00000000000000000000000000000000', '::'],
  ['fe80::1:2', 'fe800000000000000000000000010002', 'fe80::1:2'],
  ['2001:db8::', '20010db8000000000000000000000000', '2001:db8::'],
  ['1:2:3:4:5:6:7:8', '00010002000300040005000600070008', '1:2:3:4:5:6:7:8'],
  ['2001:0:0:1::1', '20010000000000010000000000000001', '2001:0:0:1::1'],
];

test('addresses map to the 16-byte BPF key form and back', () => {
  for (const [text, hex, back] of cases) {
    const b = Buffer.alloc(16);
    assert.equal(ipToBytes16(text, b), true, text);
    assert.equal(b.toString('hex'), hex, text);
    assert.equal(bytes16ToIp(b), back, text);
  }
  assert.equal(isV4Mapped(Buffer.from('00000000000000000000ffff7f000001', 'hex')), true);
  assert.equal(isV4Mapped(Buffer.from('00000000000000000000000000000001', 'hex')), false);
});

test('non-addresses are rejected, not guessed', () => {
  const b = Buffer.alloc(16);
  for (const bad of ['', 'localhost', '1.2.3', '::g', '1.2.3.4.5']) assert.equal(ipToBytes16(bad, b), false, bad);
});
