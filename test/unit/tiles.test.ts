// C2SP tlog-tiles: path encoding (examples from the spec), which tiles make up a tree, and proofs
// built from tiles only (with partial tiles recomputed at sub-levels) equal proofs built from
// every node in memory.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  buildTile, changedTiles, checkBundleAgainstTile, consistencyProof, decodeEntryBundle, encodeEntryBundle,
  encodeTileIndex, entriesPath, hex, inclusionProof, leafHash, MemoryTree, parseTilePath, root, tileForNode,
  TileHashReader, tilePath, tilesForTree, tileWidth, verifyConsistency, verifyInclusion, type TileID,
} from '../../collector/merkle/index.js';

test('tile index encoding: 3-digit groups, all but the last prefixed with x', () => {
  assert.equal(encodeTileIndex(1234067), 'x001/x234/067'); // the spec's example
  assert.equal(encodeTileIndex(0), '000');
  assert.equal(encodeTileIndex(5), '005');
  assert.equal(encodeTileIndex(999), '999');
  assert.equal(encodeTileIndex(1000), 'x001/000');
  assert.equal(encodeTileIndex(123456), 'x123/456');
  assert.equal(encodeTileIndex(2 ** 53 - 1), 'x009/x007/x199/x254/x740/991');
  assert.throws(() => encodeTileIndex(-1), RangeError);
  assert.throws(() => encodeTileIndex(1.5), RangeError);
});

test('tile and entry bundle paths, full and partial', () => {
  assert.equal(tilePath({ level: 0, index: 1234067, width: 256 }), 'tile/0/x001/x234/067');
  assert.equal(tilePath({ level: 1, index: 1234067, width: 256 }), 'tile/1/x001/x234/067');
  assert.equal(tilePath({ level: 0, index: 273, width: 112 }), 'tile/0/273.p/112');
  assert.equal(tilePath({ level: 2, index: 0, width: 1 }), 'tile/2/000.p/1');
  assert.equal(entriesPath(1234067), 'tile/entries/x001/x234/067');
  assert.equal(entriesPath(48, 255), 'tile/entries/048.p/255');
  assert.throws(() => tilePath({ level: 0, index: 0, width: 0 }), RangeError);
  assert.throws(() => tilePath({ level: 0, index: 0, width: 257 }), RangeError);
  assert.throws(() => tilePath({ level: 64, index: 0, width: 256 }), RangeError);
});

test('tile paths parse back, non-canonical ones are refused', () => {
  const good: [string, object][] = [
    ['tile/0/x001/x234/067', { entries: false, level: 0, index: 1234067, width: 256 }],
    ['/tile/3/x001/000.p/17', { entries: false, level: 3, index: 1000, width: 17 }],
    ['tile/entries/000.p/1', { entries: true, level: 0, index: 0, width: 1 }],
    ['tile/entries/x123/456', { entries: true, level: 0, index: 123456, width: 256 }],
    ['tile/63/000', { entries: false, level: 63, index: 0, width: 256 }],
  ];
  for (const [p, want] of good) {
    const r = parseTilePath(p);
    assert.ok(r.ok, `${p}: ${r.ok || r.reason}`);
    assert.deepEqual(r.value, want);
  }
  for (const t of [{ level: 5, index: 98765432, width: 3 }, { level: 0, index: 7, width: 256 }]) {
    const r = parseTilePath(tilePath(t));
    assert.ok(r.ok);
    assert.deepEqual(r.value, { entries: false, ...t });
  }
  const bad = [
    'tile/0/1', 'tile/0/01', 'tile/0/0001', 'tile/00/000', 'tile/01/000', 'tile/64/000', 'tile/0/x000/001',
    'tile/0/001/002', 'tile/0/x001', 'tile/0/000.p/0', 'tile/0/000.p/256', 'tile/0/000.p/007', 'tile/0/000.p/',
    'tile/entries/000.p/300', 'tile/-1/000', 'tiles/0/000', 'tile/0/000/', 'tile/0/x1/000', 'tile/0/000.p/5/',
  ];
  for (const p of bad) {
    const r = parseTilePath(p);
    assert.equal(r.ok, false, `${p} must be refused`);
    assert.ok(!r.ok && r.reason.length > 0);
  }
});

test('the tiles of a tree: the spec examples for sizes 70,000 and 256', () => {
  const t = tilesForTree(70_000);
  const at = (level: number) => t.filter((x) => x.level === level);
  assert.equal(at(0).filter((x) => x.width === 256).length, 273);
  assert.deepEqual(at(0).filter((x) => x.width < 256), [{ level: 0, index: 273, width: 112 }]);
  assert.deepEqual(at(1), [{ level: 1, index: 0, width: 256 }, { level: 1, index: 1, width: 17 }]);
  assert.deepEqual(at(2), [{ level: 2, index: 0, width: 1 }]);
  assert.equal(t.length, 273 + 1 + 2 + 1);
  assert.deepEqual(tilesForTree(256), [{ level: 0, index: 0, width: 256 }, { level: 1, index: 0, width: 1 }]);
  assert.deepEqual(tilesForTree(0), []);
  assert.deepEqual(tilesForTree(1), [{ level: 0, index: 0, width: 1 }]);
  assert.equal(tileWidth(70_000, 0, 273), 112);
  assert.equal(tileWidth(70_000, 0, 274), 0);
  assert.equal(tileWidth(70_000, 2, 0), 1);
});

test('changedTiles lists exactly the tiles that are new or wider', () => {
  const key = (x: TileID) => `${x.level}/${x.index}/${x.width}`;
  for (const [a, b] of [[0, 1], [255, 256], [256, 257], [1000, 70_000], [65_535, 65_536], [70_000, 70_000], [3, 600]] as const) {
    const before = new Set(tilesForTree(a).map(key));
    const expected = tilesForTree(b).filter((x) => !before.has(key(x))).map(key).sort();
    assert.deepEqual(changedTiles(a, b).map(key).sort(), expected, `${a} -> ${b}`);
  }
  assert.throws(() => changedTiles(5, 4), RangeError);
});

test('tileForNode: tile, sub-level and offset', () => {
  assert.deepEqual(tileForNode(0, 0), { tileLevel: 0, tileIndex: 0, subLevel: 0, offset: 0 });
  assert.deepEqual(tileForNode(0, 300), { tileLevel: 0, tileIndex: 1, subLevel: 0, offset: 44 });
  assert.deepEqual(tileForNode(3, 40), { tileLevel: 0, tileIndex: 1, subLevel: 3, offset: 8 });
  assert.deepEqual(tileForNode(8, 5), { tileLevel: 1, tileIndex: 0, subLevel: 0, offset: 5 });
  assert.deepEqual(tileForNode(15, 3), { tileLevel: 1, tileIndex: 1, subLevel: 7, offset: 1 });
  assert.deepEqual(tileForNode(16, 256), { tileLevel: 2, tileIndex: 1, subLevel: 0, offset: 0 });
});

/** A tile server over an in-memory tree of a given size; counts fetches. */
function tileServer(tree: MemoryTree) {
  const served = new Map<string, Buffer>();
  let fetches = 0;
  return {
    async publish(size: number) {
      for (const t of tilesForTree(size)) {
        if (!served.has(tilePath(t))) served.set(tilePath(t), await buildTile(t, tree.getNode));
      }
    },
    fetch: async (t: TileID): Promise<Uint8Array> => {
      fetches++;
      const b = served.get(tilePath(t));
      if (!b) throw new Error(`404 ${tilePath(t)}`);
      return b;
    },
    get fetches() {
      return fetches;
    },
  };
}

test('getNode over tiles equals getNode in memory, and proofs built from tiles verify', async () => {
  const rand = (n: number) => Math.floor(Math.random() * n);
  const sizes = [1, 2, 255, 256, 257, 511, 512, 65_536 + 300, 1 + rand(70_000), 1 + rand(3000), 1 + rand(3000)];
  const tree = new MemoryTree();
  const max = Math.max(...sizes);
  while (tree.size < max) tree.append(leafHash(randomBytes(8)));
  const server = tileServer(tree);
  for (const size of sizes) {
    await server.publish(size);
    const reader = new TileHashReader(size, server.fetch);
    // Every complete node of small trees; random ones of big trees, at every level.
    for (let level = 0; 2 ** level <= size; level++) {
      const count = Math.floor(size / 2 ** level);
      const picks = count <= 600 ? Array.from({ length: count }, (_, i) => i) : [0, count - 1, ...Array.from({ length: 100 }, () => rand(count))];
      for (const i of picks) {
        assert.equal(hex(await reader.getNode(level, i)), hex(tree.getNode(level, i)), `size ${size} node (${level}, ${i})`);
      }
    }
    await assert.rejects(reader.getNode(0, size), RangeError);
    const rootHere = await root(size, tree.getNode);
    assert.equal(hex(await root(size, reader.getNode)), hex(rootHere));
    for (let k = 0; k < 30; k++) {
      const index = rand(size);
      const fromTiles = await inclusionProof(index, size, reader.getNode);
      assert.deepEqual(fromTiles.map(hex), (await inclusionProof(index, size, tree.getNode)).map(hex));
      assert.ok(verifyInclusion(tree.getNode(0, index), index, size, fromTiles, rootHere).ok);
      const m = 1 + rand(size);
      const cons = await consistencyProof(m, size, reader.getNode);
      assert.deepEqual(cons.map(hex), (await consistencyProof(m, size, tree.getNode)).map(hex));
      assert.ok(verifyConsistency(m, size, cons, await root(m, tree.getNode), rootHere).ok);
    }
  }
  // Tiles are fetched once per reader.
  const before = server.fetches;
  const reader = new TileHashReader(1000, server.fetch);
  await Promise.all(Array.from({ length: 50 }, (_, i) => reader.getNode(0, i)));
  assert.equal(server.fetches - before, 1);
});

test('a tile of the wrong length is refused', async () => {
  const tree = new MemoryTree();
  for (let i = 0; i < 300; i++) tree.append(leafHash(Buffer.from([i & 255, i >> 8])));
  const full = await buildTile({ level: 0, index: 1, width: 44 }, tree.getNode);
  const reader = new TileHashReader(300, () => full.subarray(0, 43 * 32));
  await assert.rejects(reader.getNode(0, 260), /tile\/0\/001\.p\/44 has 1376 bytes, expected 1408/);
});

test('entry bundles: uint16 length-prefixed entries that hash to the level-0 tile', async () => {
  const entries = [Buffer.from('a'), Buffer.alloc(0), randomBytes(1000), randomBytes(65_535)];
  const b = encodeEntryBundle(entries);
  assert.equal(b.subarray(0, 3).toString('hex'), '000161');
  assert.equal(b.subarray(3, 5).toString('hex'), '0000');
  const d = decodeEntryBundle(b, 4);
  assert.ok(d.ok);
  assert.deepEqual(d.value.map(hex), entries.map(hex));
  assert.deepEqual(decodeEntryBundle(Buffer.alloc(0)), { ok: true, value: [] });
  for (const cut of [1, 2, 100]) {
    const r = decodeEntryBundle(b.subarray(0, b.length - cut));
    assert.equal(r.ok, false, `truncated by ${cut}`);
  }
  const wrongCount = decodeEntryBundle(b, 5);
  assert.ok(!wrongCount.ok && wrongCount.reason === 'bundle has 4 entries, expected 5');
  assert.throws(() => encodeEntryBundle([Buffer.alloc(65_536)]), RangeError);
  assert.throws(() => encodeEntryBundle(Array.from({ length: 257 }, () => Buffer.alloc(0))), RangeError);
  const tooMany = Buffer.concat([encodeEntryBundle(Array.from({ length: 256 }, () => Buffer.from('x'))), Buffer.from([0, 0])]);
  assert.equal(decodeEntryBundle(tooMany).ok, false);

  const tree = new MemoryTree();
  for (const e of entries) tree.append(leafHash(e));
  const tile = await buildTile({ level: 0, index: 0, width: 4 }, tree.getNode);
  assert.deepEqual(checkBundleAgainstTile(entries, tile), { ok: true });
  const swapped = [entries[1]!, entries[0]!, entries[2]!, entries[3]!];
  const v = checkBundleAgainstTile(swapped, tile);
  assert.ok(!v.ok && v.reason.startsWith('entry 0 hashes to'), JSON.stringify(v));
  assert.equal(checkBundleAgainstTile(entries.slice(0, 3), tile).ok, false);
});
