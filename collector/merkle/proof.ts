// Inclusion and consistency proofs for RFC 6962 / RFC 9162 Merkle trees: the verifier side, which
// returns errors as values, and the prover side, which builds proofs from the hashes of perfect
// subtrees only (so a store holding only "full" nodes, e.g. C2SP tlog-tiles, can serve them).
//
// Nodes are addressed as (level, index): level 0 are the leaf hashes, and node (l, i) is the root
// of the perfect subtree over leaves [i * 2^l, (i + 1) * 2^l). Only nodes whose leaves all exist in
// a tree of size n, i.e. (i + 1) * 2^l <= n, are ever requested.
import { bit, bitLen, isIndex, largestPow2Below, popCount, shr, trailingZeros, xor } from './bits.js';
import { emptyRoot, hashEqual, hex, HASH_SIZE, nodeHash } from './hash.js';
import { fail, OK, okValue, type Result, type Verdict } from './result.js';

// ---------------------------------------------------------------------------------------------
// Verifier side (RFC 9162 sections 2.1.3.2 and 2.1.4.2, in the form of transparency-dev/merkle).
// ---------------------------------------------------------------------------------------------

function checkIndex(name: string, v: number): string | null {
  return isIndex(v) ? null : `${name} ${String(v)} is not an integer in [0, 2^53)`;
}

function checkProofHashes(proof: readonly Uint8Array[]): string | null {
  for (let i = 0; i < proof.length; i++) {
    const h = proof[i]!;
    if (h.length !== HASH_SIZE) return `proof hash ${i} has ${h.length} bytes, expected ${HASH_SIZE}`;
  }
  return null;
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 'es'}`;
}

/** Hashes along a path below the right border: the side of each sibling comes from index's bits. */
function chainInner(seed: Uint8Array, proof: readonly Uint8Array[], index: number): Uint8Array {
  let h = seed;
  for (let i = 0; i < proof.length; i++) {
    h = bit(index, i) === 0 ? nodeHash(h, proof[i]!) : nodeHash(proof[i]!, h);
  }
  return h;
}

/** Like chainInner, but only the siblings to the left: the same subtree at an earlier size. */
function chainInnerRight(seed: Uint8Array, proof: readonly Uint8Array[], index: number): Uint8Array {
  let h = seed;
  for (let i = 0; i < proof.length; i++) {
    if (bit(index, i) === 1) h = nodeHash(proof[i]!, h);
  }
  return h;
}

/** Hashes along the right border: every sibling is on the left. */
function chainBorderRight(seed: Uint8Array, proof: readonly Uint8Array[]): Uint8Array {
  let h = seed;
  for (const p of proof) h = nodeHash(p, h);
  return h;
}

/**
 * Splits the inclusion proof of leaf `index` in a tree of `size` into the part below the point
 * where the paths to `index` and to `size - 1` diverge (inner) and the part above (border).
 */
function decompose(index: number, size: number): { inner: number; border: number } {
  const inner = bitLen(xor(index, size - 1));
  const border = popCount(shr(index, inner));
  return { inner, border };
}

/** The number of hashes in the inclusion proof of leaf `index` in a tree of `size`. */
export function inclusionProofSize(index: number, size: number): number {
  const { inner, border } = decompose(index, size);
  return inner + border;
}

/**
 * The root implied by an inclusion proof for leaf `index` with hash `leafHash` in a tree of `size`
 * leaves. Fails only on malformed input (index out of range, wrong lengths); it cannot know the
 * right root, compare it yourself or use verifyInclusion.
 */
export function rootFromInclusionProof(
  leafHash: Uint8Array,
  index: number,
  size: number,
  proof: readonly Uint8Array[],
): Result<Uint8Array> {
  const bad = checkIndex('index', index) ?? checkIndex('size', size);
  if (bad) return fail(bad);
  if (index >= size) return fail(`index ${index} >= size ${size}`);
  if (leafHash.length !== HASH_SIZE) return fail(`leaf hash has ${leafHash.length} bytes, expected ${HASH_SIZE}`);
  const { inner, border } = decompose(index, size);
  if (proof.length !== inner + border) {
    return fail(`proof has ${plural(proof.length, 'hash')}, expected ${inner + border}`);
  }
  const badHash = checkProofHashes(proof);
  if (badHash) return fail(badHash);
  const h = chainInner(leafHash, proof.slice(0, inner), index);
  return okValue(chainBorderRight(h, proof.slice(inner)));
}

/** Checks that leaf `index` with hash `leafHash` is in the tree of `size` leaves with root `root`. */
export function verifyInclusion(
  leafHash: Uint8Array,
  index: number,
  size: number,
  proof: readonly Uint8Array[],
  root: Uint8Array,
): Verdict {
  const r = rootFromInclusionProof(leafHash, index, size, proof);
  if (!r.ok) return r;
  if (!hashEqual(r.value, root)) {
    return fail(`root mismatch at size ${size}: proof gives ${hex(r.value)}, expected ${hex(root)}`);
  }
  return OK;
}

/**
 * Checks that the tree of `size2` leaves with root `root2` extends the tree of `size1` leaves with
 * root `root1`. Sizes must satisfy 0 < size1 <= size2; for equal sizes the proof must be empty and
 * the roots equal. A proof from size 0 is refused: the empty tree is a prefix of every tree, so
 * there is nothing to prove, and a caller holding an empty checkpoint should skip the check.
 */
export function verifyConsistency(
  size1: number,
  size2: number,
  proof: readonly Uint8Array[],
  root1: Uint8Array,
  root2: Uint8Array,
): Verdict {
  const bad = checkIndex('size1', size1) ?? checkIndex('size2', size2);
  if (bad) return fail(bad);
  if (size1 > size2) return fail(`size1 ${size1} > size2 ${size2}: a log cannot shrink`);
  if (size1 === 0) {
    return fail('size1 is 0: a consistency proof from the empty tree proves nothing (skip the check instead)');
  }
  if (size1 === size2) {
    if (proof.length !== 0) return fail(`proof has ${plural(proof.length, 'hash')}, expected 0 for equal sizes`);
    if (!hashEqual(root1, root2)) {
      return fail(`root mismatch: both trees have size ${size1} but the roots differ (${hex(root1)} vs ${hex(root2)})`);
    }
    return OK;
  }
  if (proof.length === 0) return fail(`proof is empty, but sizes ${size1} and ${size2} differ`);

  // The proof is the inclusion proof of the node covering the last perfect subtree of the old
  // tree, (shift, (size1 - 1) >> shift), in the new tree; preceded by that node's hash unless
  // size1 is a power of two, in which case the node is the old root itself.
  let { inner, border } = decompose(size1 - 1, size2);
  const shift = trailingZeros(size1);
  inner -= shift;
  const oldIsPerfect = size1 === 2 ** shift;
  const start = oldIsPerfect ? 0 : 1;
  const want = start + inner + border;
  if (proof.length !== want) return fail(`proof has ${plural(proof.length, 'hash')}, expected ${want}`);
  const badHash = checkProofHashes(proof);
  if (badHash) return fail(badHash);

  const seed = oldIsPerfect ? root1 : proof[0]!;
  const rest = proof.slice(start);
  const mask = shr(size1 - 1, shift);
  const innerPart = rest.slice(0, inner);
  const borderPart = rest.slice(inner);

  const hash1 = chainBorderRight(chainInnerRight(seed, innerPart, mask), borderPart);
  if (!hashEqual(hash1, root1)) {
    return fail(`root mismatch at size ${size1} (old tree): proof gives ${hex(hash1)}, expected ${hex(root1)}`);
  }
  const hash2 = chainBorderRight(chainInner(seed, innerPart, mask), borderPart);
  if (!hashEqual(hash2, root2)) {
    return fail(`root mismatch at size ${size2} (new tree): proof gives ${hex(hash2)}, expected ${hex(root2)}`);
  }
  return OK;
}

// ---------------------------------------------------------------------------------------------
// Prover side (RFC 9162 sections 2.1.3.1 and 2.1.4.1).
// ---------------------------------------------------------------------------------------------

/** A perfect subtree: level 0 is a leaf hash; (level, index) covers leaves [index*2^level, (index+1)*2^level). */
export interface NodeID {
  level: number;
  index: number;
}

/** Returns the hash of the perfect subtree node (level, index). May be async. */
export type NodeGetter = (level: number, index: number) => Uint8Array | Promise<Uint8Array>;

/**
 * Decomposes the leaf range [start, end) into maximal aligned perfect subtrees, left to right.
 * For every range that occurs in RFC 6962's recursive definition the Merkle Tree Hash of the range
 * is the right fold of these nodes: H(n0, H(n1, ... H(n_{k-2}, n_{k-1}))).
 */
export function perfectNodes(start: number, end: number): NodeID[] {
  if (!isIndex(start) || !isIndex(end) || start > end) throw new RangeError(`bad leaf range [${start}, ${end})`);
  const out: NodeID[] = [];
  let p = start;
  while (p < end) {
    let level = p === 0 ? bitLen(end - p) - 1 : Math.min(trailingZeros(p), bitLen(end - p) - 1);
    while (p + 2 ** level > end) level--;
    out.push({ level, index: p / 2 ** level });
    p += 2 ** level;
  }
  return out;
}

/** Hash of a range from its perfect-subtree decomposition (right fold). */
export function foldNodes(hashes: readonly Uint8Array[]): Uint8Array {
  if (hashes.length === 0) throw new RangeError('cannot fold an empty list of hashes');
  let h = hashes[hashes.length - 1]!;
  for (let i = hashes.length - 2; i >= 0; i--) h = nodeHash(hashes[i]!, h);
  return h;
}

/**
 * The plan of an inclusion proof: for each proof hash, bottom-up, the perfect subtrees whose right
 * fold gives it. Pure arithmetic; fetch the nodes yourself or use inclusionProof.
 */
export function inclusionProofNodes(index: number, size: number): NodeID[][] {
  if (!isIndex(index) || !isIndex(size)) throw new RangeError(`bad inclusion proof request: index ${index}, size ${size}`);
  if (index >= size) throw new RangeError(`index ${index} >= size ${size}`);
  const topDown: NodeID[][] = [];
  let s = 0;
  let e = size;
  while (e - s > 1) {
    const k = largestPow2Below(e - s);
    if (index - s < k) {
      topDown.push(perfectNodes(s + k, e));
      e = s + k;
    } else {
      topDown.push(perfectNodes(s, s + k));
      s += k;
    }
  }
  return topDown.reverse();
}

/**
 * The plan of a consistency proof from size1 to size2 (0 < size1 <= size2), like
 * inclusionProofNodes. Equal sizes give an empty proof.
 */
export function consistencyProofNodes(size1: number, size2: number): NodeID[][] {
  if (!isIndex(size1) || !isIndex(size2)) throw new RangeError(`bad consistency proof request: ${size1} to ${size2}`);
  if (size1 === 0) throw new RangeError('no consistency proof from the empty tree');
  if (size1 > size2) throw new RangeError(`size1 ${size1} > size2 ${size2}`);
  const topDown: NodeID[][] = [];
  let s = 0;
  let e = size2;
  let complete = true; // RFC 9162's b: the current subtree is the whole old tree seen so far
  for (;;) {
    if (e === size1) {
      if (!complete) topDown.push(perfectNodes(s, e));
      break;
    }
    const k = largestPow2Below(e - s);
    if (size1 - s <= k) {
      topDown.push(perfectNodes(s + k, e));
      e = s + k;
    } else {
      topDown.push(perfectNodes(s, s + k));
      s += k;
      complete = false;
    }
  }
  return topDown.reverse();
}

function checkNode(id: NodeID, h: unknown): Uint8Array {
  if (!(h instanceof Uint8Array) || h.length !== HASH_SIZE) {
    const got = h instanceof Uint8Array ? `${h.length} bytes` : typeof h;
    throw new Error(`node (${id.level}, ${id.index}) is ${got}, expected ${HASH_SIZE} bytes`);
  }
  return h;
}

/** Fetches every node of a plan (all requests issued at once) and folds each group. */
async function resolve(plan: NodeID[][], getNode: NodeGetter): Promise<Uint8Array[]> {
  const ids = plan.flat();
  const got = ids.map(({ level, index }) => getNode(level, index));
  // Synchronous stores (e.g. better-sqlite3) skip a promise per node.
  const hashes = got.some((h) => h instanceof Promise) ? await Promise.all(got) : (got as Uint8Array[]);
  let k = 0;
  return plan.map((group) => foldNodes(group.map((id) => checkNode(id, hashes[k++]))));
}

/** The inclusion proof of leaf `index` in the tree of `size` leaves, bottom-up. */
export async function inclusionProof(index: number, size: number, getNode: NodeGetter): Promise<Uint8Array[]> {
  return resolve(inclusionProofNodes(index, size), getNode);
}

/** The consistency proof from the tree of `size1` leaves to the tree of `size2` leaves. */
export async function consistencyProof(size1: number, size2: number, getNode: NodeGetter): Promise<Uint8Array[]> {
  return resolve(consistencyProofNodes(size1, size2), getNode);
}

/** The root of the tree of `size` leaves (the empty root for size 0). */
export async function root(size: number, getNode: NodeGetter): Promise<Uint8Array> {
  if (!isIndex(size)) throw new RangeError(`bad tree size ${size}`);
  if (size === 0) return emptyRoot();
  const [h] = await resolve([perfectNodes(0, size)], getNode);
  return h!;
}
