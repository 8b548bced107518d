// The spool's native commit (agent/native/src/durable.cc): every byte lands at its offset, however
// many buffers (more than one pwritev takes), and failures come back as errno errors, not throws.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openSync, closeSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { loadNative, type NativeAddon } from '../../agent/native/index.js';
import { tempDir } from '../helpers/tmp.js';

function addon(): NativeAddon {
  const n = loadNative();
  if (!n.addon) assert.fail(n.error ?? 'the native addon did not load');
  return n.addon;
}

const commit = (fd: number, bufs: Buffer[], position: number) =>
  new Promise<NodeJS.ErrnoException | null>((resolve) => addon().writeDurable(fd, bufs, position, resolve));

test('writes every buffer in order at the offset, past IOV_MAX buffers, and leaves the bytes before it', async () => {
  const file = path.join(tempDir('rg-durable-'), 'seg');
  writeFileSync(file, 'HEAD');
  // 3000 buffers of varied sizes (empty ones too): over IOV_MAX (1024), so the job loops.
  const bufs = Array.from({ length: 3000 }, (_, i) => Buffer.alloc(i % 7, 97 + (i % 26)));
  const fd = openSync(file, 'r+');
  try {
    assert.equal(await commit(fd, bufs, 4), null);
  } finally {
    closeSync(fd);
  }
  assert.deepEqual(readFileSync(file), Buffer.concat([Buffer.from('HEAD'), ...bufs]));
});

test('a failed write is an errno error naming the call', async () => {
  const file = path.join(tempDir('rg-durable-'), 'ro');
  writeFileSync(file, '');
  const fd = openSync(file, 'r');
  try {
    const err = await commit(fd, [Buffer.from('x')], 0);
    assert.equal(err?.code, 'EBADF');
    assert.equal(err?.syscall, 'pwritev');
    assert.match(err!.message, /^EBADF: .*, pwritev$/);
  } finally {
    closeSync(fd);
  }
  assert.equal(readFileSync(file).length, 0);
});

test('arguments that are not an fd, Buffers, an offset and a callback throw at once', () => {
  const done = () => assert.fail('must not be called');
  assert.throws(() => addon().writeDurable(-1, [], 0, done), TypeError);
  assert.throws(() => addon().writeDurable(0, ['x' as unknown as Buffer], 0, done), TypeError);
  assert.throws(() => addon().writeDurable(0, [], -5, done), TypeError);
  assert.throws(() => addon().writeDurable(0, [], 0, null as unknown as () => void), TypeError);
});
