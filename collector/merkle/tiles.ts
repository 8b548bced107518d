// C2SP tlog-tiles (https://c2sp.org/tlog-tiles): the Merkle tree served as static "tiles" of
// height 8. The n-th tile at level l holds, for i in 0..255,
//     MTH(D[(n*256 + i) * 256^l : (n*256 + i + 1) * 256^l])
// i.e. the tree nodes at tree level 8*l with indexes n*256 .. n*256+255. A tree of size s has
// floor(s / 256^l) nodes at tree level 8*l; the rightmost tile of a level is partial (1..255
// hashes) unless that count is a multiple of 256. Paths: tile/<L>/<N>[.p/<W>], with N written in
// 3-digit groups, all but the last prefixed with "x" (1234067 -> x001/x234/067); entry bundles
// (big-endian uint16 length-prefixed entries) at tile/entries/<N>[.p/<W>].
import { isIndex } from './bits.js';
import { hashEqual, hex, HASH_SIZE, leafHash, nodeHash } from './hash.js';
import type { NodeGetter } from './proof.js';
import { fail, OK, okValue, type Result, type Verdict } from './result.js';

/** Tree levels per tile. */
export const TILE_HEIGHT = 8;
/** Hashes in a full tile (and entries in a full bundle). */
export const TILE_WIDTH = 256;
/** Largest entry an entry bundle can hold (uint16 length prefix). */
export const MAX_ENTRY_SIZE = 0xffff;

/** A tile: its level, its index within the level, and its width (1..256; 256 = full). */
export interface TileID {
  level: number;
  index: number;
  width: number;
}

/** A parsed tile path: a hash tile, or an entry bundle (`entries: true`, level 0 implied). */
export interface TilePath extends TileID {
  entries: boolean;
}

const MAX_TILE_LEVEL = 63;

function checkTile(level: number, index: number, width: number): void {
  if (!Number.isInteger(level) || level < 0 || level > MAX_TILE_LEVEL) throw new RangeError(`bad tile level ${level}`);
  if (!isIndex(index)) throw new RangeError(`bad tile index ${index}`);
  if (!Number.isInteger(width) || width < 1 || width > TILE_WIDTH) throw new RangeError(`bad tile width ${width}`);
}

/** Encodes a tile index as 3-digit path elements: 1234067 -> "x001/x234/067", 5 -> "005". */
export function encodeTileIndex(n: number): string {
  if (!isIndex(n)) throw new RangeError(`bad tile index ${n}`);
  let digits = String(n);
  digits = digits.padStart(Math.ceil(digits.length / 3) * 3, '0');
  const groups: string[] = [];
  for (let i = 0; i < digits.length; i += 3) groups.push(digits.slice(i, i + 3));
  return groups.map((g, i) => (i < groups.length - 1 ? `x${g}` : g)).join('/');
}

function suffix(width: number): string {
  return width === TILE_WIDTH ? '' : `.p/${width}`;
}

/** The path of a hash tile: tile/<L>/<N>[.p/<W>]. */
export function tilePath(tile: TileID): string {
  checkTile(tile.level, tile.index, tile.width);
  return `tile/${tile.level}/${encodeTileIndex(tile.index)}${suffix(tile.width)}`;
}

/** The path of an entry bundle: tile/entries/<N>[.p/<W>]. */
export function entriesPath(index: number, width: number = TILE_WIDTH): string {
  checkTile(0, index, width);
  return `tile/entries/${encodeTileIndex(index)}${suffix(width)}`;
}

const PATH_RE = /^tile\/(entries|0|[1-9][0-9]?)\/((?:x[0-9]{3}\/)*[0-9]{3})(?:\.p\/([1-9][0-9]{0,2}))?$/;

/**
 * Parses a tile or entry bundle path (with or without a leading "/"). Only the canonical encoding
 * is accepted (no "x000/" prefix groups, no leading zeroes in L or W, W in 1..255).
 */
export function parseTilePath(path: string): Result<TilePath> {
  const m = PATH_RE.exec(path.startsWith('/') ? path.slice(1) : path);
  if (!m) return fail(`not a tile path: ${JSON.stringify(path)}`);
  const entries = m[1] === 'entries';
  const level = entries ? 0 : Number(m[1]);
  if (level > MAX_TILE_LEVEL) return fail(`tile level ${level} > ${MAX_TILE_LEVEL}`);
  const indexText = m[2]!;
  const index = Number(indexText.replace(/x|\//g, ''));
  if (!isIndex(index)) return fail(`tile index ${indexText} is too large`);
  if (encodeTileIndex(index) !== indexText) return fail(`tile index ${indexText} is not canonically encoded`);
  const width = m[3] === undefined ? TILE_WIDTH : Number(m[3]);
  if (m[3] !== undefined && width >= TILE_WIDTH) return fail(`partial tile width ${width} must be below ${TILE_WIDTH}`);
  return okValue({ entries, level, index, width });
}

/** Number of tree nodes at tree level 8*level in a tree of `size` leaves. */
function rowLength(size: number, level: number): number {
  return Math.floor(size / TILE_WIDTH ** level);
}

/** Width of tile (level, index) in a tree of `size` leaves: 0 (absent) .. 256 (full). */
export function tileWidth(size: number, level: number, index: number): number {
  const w = rowLength(size, level) - index * TILE_WIDTH;
  return Math.max(0, Math.min(TILE_WIDTH, w));
}

/** Every tile (full and partial) that represents the tree of `size` leaves, level by level. */
export function tilesForTree(size: number): TileID[] {
  return changedTiles(0, size);
}

/**
 * The tiles that are new or wider in the tree of `newSize` leaves than in the tree of `oldSize`
 * leaves: what a log writes when it integrates leaves [oldSize, newSize).
 */
export function changedTiles(oldSize: number, newSize: number): TileID[] {
  if (!isIndex(oldSize) || !isIndex(newSize) || oldSize > newSize) {
    throw new RangeError(`bad tree sizes ${oldSize} -> ${newSize}`);
  }
  const out: TileID[] = [];
  for (let level = 0; rowLength(newSize, level) > 0; level++) {
    const first = Math.floor(rowLength(oldSize, level) / TILE_WIDTH);
    const last = Math.ceil(rowLength(newSize, level) / TILE_WIDTH) - 1;
    for (let index = first; index <= last; index++) {
      const width = tileWidth(newSize, level, index);
      if (width > tileWidth(oldSize, level, index)) out.push({ level, index, width });
    }
  }
  return out;
}

/** Where tree node (level, index) lives: its tile, its sub-level in the tile and its offset there. */
export function tileForNode(level: number, index: number): {
  tileLevel: number;
  tileIndex: number;
  subLevel: number;
  offset: number;
} {
  if (!Number.isInteger(level) || level < 0 || !isIndex(index)) throw new RangeError(`bad node (${level}, ${index})`);
  const tileLevel = Math.floor(level / TILE_HEIGHT);
  const subLevel = level % TILE_HEIGHT;
  const perTile = 2 ** (TILE_HEIGHT - subLevel);
  const tileIndex = Math.floor(index / perTile);
  return { tileLevel, tileIndex, subLevel, offset: index - tileIndex * perTile };
}

/** Builds the bytes of a tile from a store of perfect nodes (tree level 8*L, indexes N*256 + i). */
export async function buildTile(tile: TileID, getNode: NodeGetter): Promise<Buffer> {
  checkTile(tile.level, tile.index, tile.width);
  const level = tile.level * TILE_HEIGHT;
  const base = tile.index * TILE_WIDTH;
  const hashes = await Promise.all(Array.from({ length: tile.width }, (_, i) => getNode(level, base + i)));
  for (const [i, h] of hashes.entries()) {
    if (h.length !== HASH_SIZE) throw new Error(`node (${level}, ${base + i}) has ${h.length} bytes, expected ${HASH_SIZE}`);
  }
  return Buffer.concat(hashes);
}

/** Fetches the bytes of a tile (full, or partial with the given width). */
export type TileFetcher = (tile: TileID) => Uint8Array | Promise<Uint8Array>;

/**
 * Implements NodeGetter over tiles for a tree of a fixed size: the node (level, index) is read from
 * tile (level >> 3, ...) and, for sub-levels 1..7, recomputed from that tile's hashes. Tiles are
 * fetched once per reader (concurrent requests share one fetch). Checks each tile's length; the
 * hashes themselves are trusted only as far as the proofs built from them verify.
 */
export class TileHashReader {
  readonly #tiles = new Map<string, Promise<Uint8Array>>();

  constructor(
    readonly treeSize: number,
    private readonly fetchTile: TileFetcher,
  ) {
    if (!isIndex(treeSize)) throw new RangeError(`bad tree size ${treeSize}`);
  }

  #tile(tile: TileID): Promise<Uint8Array> {
    const key = `${tile.level}/${tile.index}/${tile.width}`;
    let p = this.#tiles.get(key);
    if (!p) {
      p = (async () => {
        const bytes = await this.fetchTile(tile);
        if (bytes.length !== tile.width * HASH_SIZE) {
          throw new Error(`${tilePath(tile)} has ${bytes.length} bytes, expected ${tile.width * HASH_SIZE}`);
        }
        return bytes;
      })();
      p.catch(() => this.#tiles.delete(key));
      this.#tiles.set(key, p);
    }
    return p;
  }

  /** NodeGetter: the hash of the perfect node (level, index) of the tree of treeSize leaves. */
  readonly getNode = async (level: number, index: number): Promise<Uint8Array> => {
    if (!Number.isInteger(level) || level < 0 || level > 63 || !isIndex(index) || (index + 1) * 2 ** level > this.treeSize) {
      throw new RangeError(`node (${level}, ${index}) is not a complete subtree of the tree of size ${this.treeSize}`);
    }
    const { tileLevel, tileIndex, subLevel, offset } = tileForNode(level, index);
    const width = tileWidth(this.treeSize, tileLevel, tileIndex);
    const bytes = await this.#tile({ level: tileLevel, index: tileIndex, width });
    const span = 2 ** subLevel;
    let row: Uint8Array[] = [];
    for (let i = offset * span; i < (offset + 1) * span; i++) {
      row.push(bytes.subarray(i * HASH_SIZE, (i + 1) * HASH_SIZE));
    }
    while (row.length > 1) {
      const up: Uint8Array[] = [];
      for (let i = 0; i < row.length; i += 2) up.push(nodeHash(row[i]!, row[i + 1]!));
      row = up;
    }
    return Uint8Array.from(row[0]!);
  };
}

/** The hashes of a tile, split; fails if the length is not a whole number of hashes in 1..256. */
export function tileHashes(bytes: Uint8Array): Result<Uint8Array[]> {
  if (bytes.length === 0 || bytes.length % HASH_SIZE !== 0 || bytes.length > TILE_WIDTH * HASH_SIZE) {
    return fail(`tile has ${bytes.length} bytes, not 1 to ${TILE_WIDTH} hashes of ${HASH_SIZE} bytes`);
  }
  const out: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += HASH_SIZE) out.push(bytes.subarray(i, i + HASH_SIZE));
  return okValue(out);
}

// ---------------------------------------------------------------------------------------------
// Entry bundles.
// ---------------------------------------------------------------------------------------------

/** Encodes up to 256 entries as a bundle of big-endian uint16 length-prefixed entries. */
export function encodeEntryBundle(entries: readonly Uint8Array[]): Buffer {
  if (entries.length > TILE_WIDTH) throw new RangeError(`a bundle holds at most ${TILE_WIDTH} entries, got ${entries.length}`);
  const parts: Uint8Array[] = [];
  for (const [i, e] of entries.entries()) {
    if (e.length > MAX_ENTRY_SIZE) throw new RangeError(`entry ${i} has ${e.length} bytes, more than ${MAX_ENTRY_SIZE}`);
    const len = Buffer.alloc(2);
    len.writeUInt16BE(e.length);
    parts.push(len, e);
  }
  return Buffer.concat(parts);
}

/** Decodes an entry bundle; with `expectedCount`, also checks the number of entries. */
export function decodeEntryBundle(bytes: Uint8Array, expectedCount?: number): Result<Uint8Array[]> {
  const out: Uint8Array[] = [];
  let p = 0;
  while (p < bytes.length) {
    if (out.length === TILE_WIDTH) return fail(`bundle has more than ${TILE_WIDTH} entries (extra bytes at ${p})`);
    if (p + 2 > bytes.length) return fail(`bundle ends inside the length of entry ${out.length} at byte ${p}`);
    const len = (bytes[p]! << 8) | bytes[p + 1]!;
    p += 2;
    if (p + len > bytes.length) {
      return fail(`entry ${out.length} claims ${len} bytes but only ${bytes.length - p} remain`);
    }
    out.push(bytes.subarray(p, p + len));
    p += len;
  }
  if (expectedCount !== undefined && out.length !== expectedCount) {
    return fail(`bundle has ${out.length} entries, expected ${expectedCount}`);
  }
  return okValue(out);
}

/** Checks that each entry of a bundle hashes to the matching hash of the level-0 tile. */
export function checkBundleAgainstTile(entries: readonly Uint8Array[], tile: Uint8Array, bundleIndex = 0): Verdict {
  const hashes = tileHashes(tile);
  if (!hashes.ok) return hashes;
  if (hashes.value.length !== entries.length) {
    return fail(`bundle has ${entries.length} entries but the tile has ${hashes.value.length} hashes`);
  }
  for (let i = 0; i < entries.length; i++) {
    const h = leafHash(entries[i]!);
    if (!hashEqual(h, hashes.value[i]!)) {
      return fail(`entry ${bundleIndex * TILE_WIDTH + i} hashes to ${hex(h)} but the tile has ${hex(hashes.value[i]!)}`);
    }
  }
  return OK;
}
