// The Merkle core against the reference vectors of transparency-dev/merkle (every file, accepting
// and rejecting side), the RFC 6962 reference roots, and a property test over every tree size up
// to 300: each generated proof verifies, and each corruption of it is rejected.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import {
  consistencyProof, consistencyProofNodes, emptyRoot, hex, inclusionProof, inclusionProofNodes, leafHash,
  MemoryTree, nodeHash, perfectNodes, root, rootFromInclusionProof, TreeBuilder, verifyConsistency,
  verifyInclusion,
} from '../../collector/merkle/index.js';
import { bitLen, popCount, trailingZeros, xor } from '../../collector/merkle/bits.js';
import { ROOT } from '../helpers/agent.js';

// shared/ sits beside the repository (locally and in CI's clean clone).
const TESTDATA = path.resolve(process.env.RUNGUARD_SHARED ?? path.join(ROOT, '..', 'shared'), 'testdata/merkle');

function jsonFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...jsonFiles(p));
    else if (e.name.endsWith('.json')) out.push(p);
  }
  return out.sort();
}

const b64 = (s: string): Buffer => Buffer.from(s, 'base64');
const proofOf = (p: string[] | null): Buffer[] => (p ?? []).map(b64);

interface InclusionVector { leafIdx: number; treeSize: number; root: string; leafHash: string; proof: string[] | null; desc: string; wantErr: boolean }
interface ConsistencyVector { size1: number; size2: number; root1: string; root2: string; proof: string[] | null; desc: string; wantErr: boolean }
interface Roots { leafInputsHex: string[]; rootHashesHex: string[] }

const roots = JSON.parse(readFileSync(path.join(TESTDATA, 'roots.json'), 'utf8')) as Roots;

/** The reference tree of roots.json: 8 leaves. */
function referenceTree(): MemoryTree {
  const t = new MemoryTree();
  for (const h of roots.leafInputsHex) t.append(leafHash(Buffer.from(h, 'hex')));
  return t;
}

test('bit helpers agree with BigInt arithmetic up to 2^53', () => {
  const samples = [0, 1, 2, 3, 255, 256, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1, 2 ** 40 + 12345, 2 ** 52, 2 ** 53 - 1];
  for (let i = 0; i < 200; i++) samples.push(Math.floor(Math.random() * 2 ** 53));
  for (const a of samples) {
    const A = BigInt(a);
    assert.equal(bitLen(a), A.toString(2).replace(/^0+/, '').length, `bitLen(${a})`);
    assert.equal(popCount(a), [...A.toString(2)].filter((c) => c === '1').length, `popCount(${a})`);
    if (a > 0) assert.equal(trailingZeros(a), A.toString(2).length - 1 - A.toString(2).lastIndexOf('1'), `tz(${a})`);
    for (const b of samples.slice(0, 13)) assert.equal(BigInt(xor(a, b)), A ^ BigInt(b), `xor(${a}, ${b})`);
  }
});

test('hashing: RFC 6962 leaf, node and empty hashes', () => {
  assert.equal(hex(emptyRoot()), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  assert.equal(hex(leafHash(Buffer.alloc(0))), createHash('sha256').update(Buffer.from([0])).digest('hex'));
  const l = randomBytes(32);
  const r = randomBytes(32);
  assert.equal(hex(nodeHash(l, r)), createHash('sha256').update(Buffer.concat([Buffer.from([1]), l, r])).digest('hex'));
  // The first reference root is the leaf hash of the empty entry.
  assert.equal(hex(leafHash(Buffer.alloc(0))), roots.rootHashesHex[1]);
});

test('roots.json: roots of the reference tree for sizes 0..8', async () => {
  assert.equal(roots.rootHashesHex.length, 9);
  const full = referenceTree();
  const builder = new TreeBuilder();
  for (let n = 0; n <= 8; n++) {
    assert.equal(hex(await root(n, full.getNode)), roots.rootHashesHex[n], `root(${n}) over the node store`);
    assert.equal(hex(builder.root()), roots.rootHashesHex[n], `incremental root at ${n}`);
    if (n < 8) builder.append(leafHash(Buffer.from(roots.leafInputsHex[n]!, 'hex')));
  }
});

const inclusionFiles = jsonFiles(path.join(TESTDATA, 'inclusion'));
const consistencyFiles = jsonFiles(path.join(TESTDATA, 'consistency'));

test('reference vectors are present', () => {
  assert.ok(inclusionFiles.length >= 90, `${inclusionFiles.length} inclusion files`);
  assert.ok(consistencyFiles.length >= 90, `${consistencyFiles.length} consistency files`);
  for (const f of [...inclusionFiles, ...consistencyFiles]) {
    assert.equal(typeof (JSON.parse(readFileSync(f, 'utf8')) as { wantErr: unknown }).wantErr, 'boolean', f);
  }
});

test('inclusion vectors: verify accepts exactly the files with wantErr false', async (t) => {
  const tree = referenceTree();
  let accepted = 0;
  let rejected = 0;
  for (const file of inclusionFiles) {
    const name = path.relative(TESTDATA, file);
    await t.test(name, async () => {
      const v = JSON.parse(readFileSync(file, 'utf8')) as InclusionVector;
      const proof = proofOf(v.proof);
      const verdict = verifyInclusion(b64(v.leafHash), v.leafIdx, v.treeSize, proof, b64(v.root));
      assert.equal(verdict.ok, !v.wantErr, `${v.desc}: ${verdict.ok ? 'accepted' : verdict.reason}`);
      if (!verdict.ok) {
        assert.ok(verdict.reason.length > 0);
        rejected++;
        return;
      }
      accepted++;
      const r = rootFromInclusionProof(b64(v.leafHash), v.leafIdx, v.treeSize, proof);
      assert.ok(r.ok);
      assert.equal(hex(r.value), hex(b64(v.root)));
      // Happy paths over the reference tree: our prover produces the reference proof.
      if (v.treeSize <= 8 && hex(b64(v.root)) === roots.rootHashesHex[v.treeSize]) {
        const ours = await inclusionProof(v.leafIdx, v.treeSize, tree.getNode);
        assert.deepEqual(ours.map(hex), proof.map(hex));
      }
    });
  }
  assert.ok(accepted > 0 && rejected > accepted, `${accepted} accepted, ${rejected} rejected`);
});

test('consistency vectors: verify accepts exactly the files with wantErr false', async (t) => {
  const tree = referenceTree();
  let accepted = 0;
  let rejected = 0;
  for (const file of consistencyFiles) {
    const name = path.relative(TESTDATA, file);
    await t.test(name, async () => {
      const v = JSON.parse(readFileSync(file, 'utf8')) as ConsistencyVector;
      const proof = proofOf(v.proof);
      const verdict = verifyConsistency(v.size1, v.size2, proof, b64(v.root1), b64(v.root2));
      assert.equal(verdict.ok, !v.wantErr, `${v.desc}: ${verdict.ok ? 'accepted' : verdict.reason}`);
      if (!verdict.ok) {
        rejected++;
        return;
      }
      accepted++;
      if (v.size2 <= 8 && v.size1 > 0 && hex(b64(v.root2)) === roots.rootHashesHex[v.size2]) {
        const ours = await consistencyProof(v.size1, v.size2, tree.getNode);
        assert.deepEqual(ours.map(hex), proof.map(hex));
      }
    });
  }
  assert.ok(accepted > 0 && rejected > accepted, `${accepted} accepted, ${rejected} rejected`);
});

test('verifier reasons are readable', () => {
  const t = new MemoryTree();
  for (let i = 0; i < 5; i++) t.append(leafHash(Buffer.from([i])));
  const r = t.root();
  const leaf = t.getNode(0, 2);
  const v1 = verifyInclusion(leaf, 7, 5, [], r);
  assert.deepEqual(v1, { ok: false, reason: 'index 7 >= size 5' });
  const v2 = verifyInclusion(leaf, 2, 5, [leaf, leaf], r);
  assert.deepEqual(v2, { ok: false, reason: 'proof has 2 hashes, expected 3' });
  const v3 = verifyInclusion(leaf, 2, 5, [leaf, leaf, leaf], r);
  assert.ok(!v3.ok && v3.reason.startsWith('root mismatch at size 5'), JSON.stringify(v3));
  const v4 = verifyConsistency(6, 5, [], r, r);
  assert.ok(!v4.ok && v4.reason.includes('6 > size2 5'));
  const v5 = verifyInclusion(leaf, 1.5, 5, [], r);
  assert.ok(!v5.ok && v5.reason.includes('not an integer'));
  const v6 = verifyInclusion(leaf, 2, 5, [leaf, Buffer.alloc(31), leaf], r);
  assert.deepEqual(v6, { ok: false, reason: 'proof hash 1 has 31 bytes, expected 32' });
});

test('perfect-node decomposition and proof plans use only complete nodes', () => {
  assert.deepEqual(perfectNodes(0, 7), [{ level: 2, index: 0 }, { level: 1, index: 2 }, { level: 0, index: 6 }]);
  assert.deepEqual(perfectNodes(4, 7), [{ level: 1, index: 2 }, { level: 0, index: 6 }]);
  assert.deepEqual(perfectNodes(8, 8), []);
  for (let size = 1; size <= 70; size++) {
    const check = (plan: { level: number; index: number }[][]) => {
      for (const g of plan) for (const n of g) assert.ok((n.index + 1) * 2 ** n.level <= size, `node ${JSON.stringify(n)} in size ${size}`);
    };
    for (let i = 0; i < size; i++) check(inclusionProofNodes(i, size));
    for (let m = 1; m <= size; m++) check(consistencyProofNodes(m, size));
  }
  // Large indexes work without 32-bit overflow.
  const big = 2 ** 40 + 3;
  assert.deepEqual(inclusionProofNodes(big - 1, big), [[{ level: 1, index: 2 ** 39 }], [{ level: 40, index: 0 }]]);
  assert.deepEqual(inclusionProofNodes(0, big), [
    ...Array.from({ length: 40 }, (_, l) => [{ level: l, index: 1 }]),
    [{ level: 1, index: 2 ** 39 }, { level: 0, index: 2 ** 40 + 2 }],
  ]);
  assert.throws(() => inclusionProofNodes(5, 5), RangeError);
  assert.throws(() => consistencyProofNodes(0, 5), RangeError);
  assert.throws(() => consistencyProofNodes(6, 5), RangeError);
});

function flipBit(proof: readonly Uint8Array[], i: number, bitIndex: number): Uint8Array[] {
  const out = proof.map((h) => Uint8Array.from(h));
  out[i]![bitIndex >> 3]! ^= 1 << (bitIndex & 7);
  return out;
}

const EXHAUSTIVE = process.env.RUNGUARD_MERKLE_EXHAUSTIVE === '1';

test('property: proofs in trees of every size 1..300 verify, and corrupted ones do not', async () => {
  const MAX = 300;
  const tree = new MemoryTree();
  const rootAt: Uint8Array[] = [emptyRoot()];
  for (let n = 1; n <= MAX; n++) {
    tree.append(leafHash(randomBytes(1 + (n % 40))));
    rootAt[n] = tree.root();
    assert.equal(hex(await root(n, tree.getNode)), hex(rootAt[n]!), `root(${n})`);
  }
  const rand = (n: number) => Math.floor(Math.random() * n);
  let verified = 0;
  let corrupted = 0;
  const mustFail = (v: { ok: boolean }, what: string) => {
    corrupted++;
    assert.equal(v.ok, false, what);
  };

  for (let size = 1; size <= MAX; size++) {
    const r = rootAt[size]!;
    // Every inclusion proof verifies; a sample of them (all of them for small trees) is corrupted.
    for (let index = 0; index < size; index++) {
      const proof = await inclusionProof(index, size, tree.getNode);
      const leaf = tree.getNode(0, index);
      const ok = verifyInclusion(leaf, index, size, proof, r);
      assert.ok(ok.ok, `inclusion ${index}/${size}: ${ok.ok || ok.reason}`);
      verified++;
      if (size > 24 && rand(size) > 1) continue;
      const what = `inclusion ${index}/${size}`;
      for (let i = 0; i < proof.length; i++) mustFail(verifyInclusion(leaf, index, size, flipBit(proof, i, rand(256)), r), `${what} bit flip in ${i}`);
      mustFail(verifyInclusion(flipBit([leaf], 0, rand(256))[0]!, index, size, proof, r), `${what} wrong leaf`);
      mustFail(verifyInclusion(leaf, index, size, proof, flipBit([r], 0, rand(256))[0]!), `${what} wrong root`);
      for (const j of [index - 1, index + 1, index ^ 2, index ^ 1, size]) {
        if (j !== index) mustFail(verifyInclusion(leaf, j, size, proof, r), `${what} index ${j}`);
      }
      // Sizes as in the reference corruptions (x2, /2). Not size+1: a proof does not bind the size
      // by itself (the proof for leaf 0 of 3 leaves also "verifies" as leaf 0 of 4 against the same
      // root), the signed checkpoint binds size and root together.
      for (const s of [size * 2, Math.floor(size / 2)]) {
        if (s !== size) mustFail(verifyInclusion(leaf, index, s, proof, r), `${what} size ${s}`);
      }
      if (proof.length > 0) {
        mustFail(verifyInclusion(leaf, index, size, proof.slice(1), r), `${what} dropped first`);
        mustFail(verifyInclusion(leaf, index, size, [...proof, r], r), `${what} extra last`);
        mustFail(verifyInclusion(leaf, index, size, [proof[0]!, ...proof], r), `${what} duplicated first`);
      }
    }
    // Consistency proofs into this size: from every smaller size up to 160 leaves (all of them with
    // RUNGUARD_MERKLE_EXHAUSTIVE=1), from 40 random ones above; a sample is corrupted.
    const froms = EXHAUSTIVE || size <= 160
      ? Array.from({ length: size }, (_, i) => i + 1)
      : [1, size, ...Array.from({ length: 38 }, () => 1 + rand(size))];
    for (const m of froms) {
      const proof = await consistencyProof(m, size, tree.getNode);
      const r1 = rootAt[m]!;
      const ok = verifyConsistency(m, size, proof, r1, r);
      assert.ok(ok.ok, `consistency ${m}->${size}: ${ok.ok || ok.reason}`);
      verified++;
      if (size > 24 && rand(size) > 1) continue;
      const what = `consistency ${m}->${size}`;
      for (let i = 0; i < proof.length; i++) mustFail(verifyConsistency(m, size, flipBit(proof, i, rand(256)), r1, r), `${what} bit flip in ${i}`);
      mustFail(verifyConsistency(m, size, proof, flipBit([r1], 0, rand(256))[0]!, r), `${what} wrong root1`);
      mustFail(verifyConsistency(m, size, proof, r1, flipBit([r], 0, rand(256))[0]!), `${what} wrong root2`);
      if (m !== size) mustFail(verifyConsistency(m, size, proof, r, r1), `${what} swapped roots`);
      for (const m2 of [m - 1, m + 1, m ^ 2]) {
        if (m2 !== m && m2 <= size) mustFail(verifyConsistency(m2, size, proof, r1, r), `${what} size1 ${m2}`);
      }
      for (const s of [size * 2, Math.floor(size / 2)]) {
        if (s !== size && s >= m) mustFail(verifyConsistency(m, s, proof, r1, r), `${what} size2 ${s}`);
      }
      if (proof.length > 0) {
        mustFail(verifyConsistency(m, size, proof.slice(0, -1), r1, r), `${what} truncated`);
        mustFail(verifyConsistency(m, size, [...proof, r1], r1, r), `${what} trailing root1`);
        mustFail(verifyConsistency(m, size, [proof[0]!, ...proof], r1, r), `${what} preceding proof[0]`);
      }
    }
  }
  assert.ok(verified > 60_000, `${verified} proofs verified`);
  assert.ok(corrupted > 10_000, `${corrupted} corruptions rejected`);
  console.log(`# property: ${verified} proofs verified, ${corrupted} corruptions rejected`);
});

test('TreeBuilder reports every perfect node and resumes from stored nodes', async () => {
  const nodes = new Map<string, Uint8Array>();
  const b = new TreeBuilder();
  const mem = new MemoryTree();
  for (let i = 0; i < 777; i++) {
    const h = leafHash(Buffer.from(`entry ${i}`));
    b.append(h, (level, index, hash) => nodes.set(`${level}/${index}`, hash));
    mem.append(h);
  }
  for (const [key, hash] of nodes) {
    const [level, index] = key.split('/').map(Number) as [number, number];
    assert.equal(hex(hash), hex(mem.getNode(level, index)));
  }
  // Nodes at level l: floor(777 / 2^l); all of them reported.
  let expected = 0;
  for (let l = 0; 777 >> l > 0; l++) expected += 777 >> l;
  assert.equal(nodes.size, expected);
  const resumed = await TreeBuilder.fromNodes(500, mem.getNode);
  const fresh = new TreeBuilder();
  for (let i = 0; i < 500; i++) fresh.append(mem.getNode(0, i));
  assert.equal(hex(resumed.root()), hex(fresh.root()));
  const copy = resumed.clone();
  for (let i = 500; i < 777; i++) resumed.append(mem.getNode(0, i));
  assert.equal(hex(resumed.root()), hex(mem.root()));
  // The clone did not move.
  assert.equal(copy.size, 500);
  assert.equal(hex(copy.root()), hex(fresh.root()));
  const sync = TreeBuilder.fromNodesSync(777, mem.getNode);
  assert.equal(hex(sync.root()), hex(mem.root()));
  const asyncGetter = (async () => Buffer.alloc(32)) as unknown as (l: number, i: number) => Uint8Array;
  assert.throws(() => TreeBuilder.fromNodesSync(3, asyncGetter), TypeError);
  assert.throws(() => TreeBuilder.fromNodesSync(3, () => Buffer.alloc(31)), /not a 32-byte hash/);
});

test('async node getters work and bad node hashes are refused', async () => {
  const mem = new MemoryTree();
  for (let i = 0; i < 21; i++) mem.append(leafHash(Buffer.from([i])));
  const slow = async (l: number, i: number) => {
    await new Promise((r) => setImmediate(r));
    return mem.getNode(l, i);
  };
  const p = await inclusionProof(13, 21, slow);
  assert.ok(verifyInclusion(mem.getNode(0, 13), 13, 21, p, mem.root()).ok);
  await assert.rejects(inclusionProof(13, 21, () => Buffer.alloc(5)), /expected 32/);
});
