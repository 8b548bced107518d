// relayAdopt's bookkeeping across relay threads (agent/native/src/relay.cc place/relay_for): a session
// id is live on one thread until relayClose, a second adoption of a live id is refused before the
// addon duplicates its descriptors, and a closed id may be adopted again.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { loadNative } from '../../agent/native/index.js';
import { fdOf, socketPair as pair } from '../helpers/socket-pair.js';

const { addon } = loadNative();
const skip = addon ? false : 'the native addon is not built';

const openFds = () => readdirSync('/proc/self/fd').length;

test('a live session id is adopted once; a second adoption is refused and keeps no descriptor', { skip }, async () => {
  const native = addon!;
  native.relayStart(() => {}, 1 << 20, 25, 2, true);
  const client = await pair();
  const server = await pair();
  try {
    native.relayAdopt(7, fdOf(client.b), fdOf(server.a), null);
    const before = openFds();
    assert.throws(() => native.relayAdopt(7, fdOf(client.b), fdOf(server.a), null), /relayAdopt: that session id is already live/);
    assert.equal(openFds(), before, 'the refused adoption duplicated no descriptor');

    // Once closed, the id is free again (the relay drops its duplicates of the closed session).
    native.relayClose(7);
    native.relayAdopt(7, fdOf(client.b), fdOf(server.a), null);
    native.relayClose(7);
  } finally {
    client.close();
    server.close();
  }
});
