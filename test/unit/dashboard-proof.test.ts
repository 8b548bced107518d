// The dashboard checks inclusion proofs and checkpoint signatures in the browser with its own
// WebCrypto code (collector/dashboard/ui/proof.ts). Node has the same WebCrypto, so the browser code
// runs here against the reference vectors and the collector's own signed notes: it must accept
// exactly what collector/merkle accepts, and reject the rest.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { ROOT } from '../helpers/agent.js';
import { generateNoteKey, formatCheckpoint, leafHash, signNote } from '../../collector/merkle/index.js';

const TESTDATA = path.resolve(process.env.RUNGUARD_SHARED ?? path.join(ROOT, '..', 'shared'), 'testdata/merkle');

interface BrowserProof {
  rootFromInclusionProof(index: number, size: number, leafHash: Uint8Array, proof: Uint8Array[]): Promise<Uint8Array>;
  leafHash(leaf: Uint8Array): Promise<Uint8Array>;
  parseCheckpoint(note: string): { origin: string; size: number; root: Uint8Array; text: string };
  checkpointSigned(cp: ReturnType<BrowserProof['parseCheckpoint']>, verifierKey: string): Promise<boolean>;
  equal(a: Uint8Array, b: Uint8Array): boolean;
}
// Loaded by URL: it is compiled by the UI's own tsconfig (DOM lib), not part of the node program.
const ui = (await import(pathToFileURL(path.join(ROOT, 'dist/collector/dashboard/ui/proof.js')).href)) as BrowserProof;

function jsonFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = path.join(dir, f);
    return statSync(p).isDirectory() ? jsonFiles(p) : f.endsWith('.json') ? [p] : [];
  });
}

interface InclusionVector { leafIdx: number; treeSize: number; root: string; leafHash: string; proof: string[] | null; desc: string; wantErr: boolean }

test('browser inclusion check: accepts exactly the reference vectors with wantErr false', async () => {
  const files = jsonFiles(path.join(TESTDATA, 'inclusion'));
  assert.ok(files.length >= 90, `${files.length} vectors`);
  let accepted = 0;
  for (const f of files) {
    const v = JSON.parse(readFileSync(f, 'utf8')) as InclusionVector;
    let ok: boolean;
    try {
      const root = await ui.rootFromInclusionProof(v.leafIdx, v.treeSize, Buffer.from(v.leafHash, 'base64'), (v.proof ?? []).map((p) => Buffer.from(p, 'base64')));
      ok = ui.equal(root, Buffer.from(v.root, 'base64'));
    } catch {
      ok = false;
    }
    assert.equal(ok, !v.wantErr, `${path.relative(TESTDATA, f)}: ${v.desc}`);
    if (ok) accepted++;
  }
  assert.ok(accepted > 0 && accepted < files.length, 'both sides exercised');
});

test('browser leaf hash is RFC 9162 (0x00 prefix) as the collector computes it', async () => {
  for (const leaf of [Buffer.alloc(0), Buffer.from('runguard'), Buffer.alloc(70_000, 7)]) {
    assert.deepEqual(Buffer.from(await ui.leafHash(leaf)), Buffer.from(leafHash(leaf)));
  }
});

test('browser checkpoint signature check: accepts the collector note, rejects altered ones and other keys', async () => {
  // A key whose base64 holds a "+", the separator of the key string's fields.
  let key = generateNoteKey('collector.example/log');
  while (key.verifierKey.split('+').length < 4) key = generateNoteKey('collector.example/log');
  const { signer, verifierKey } = key;
  const other = generateNoteKey('collector.example/log');
  const root = Buffer.alloc(32, 9);
  const note = signNote(formatCheckpoint({ origin: 'collector.example/log', size: 12345, root }), signer);
  const cp = ui.parseCheckpoint(note);
  assert.equal(cp.size, 12345);
  assert.deepEqual(Buffer.from(cp.root), root);
  assert.equal(await ui.checkpointSigned(cp, verifierKey), true);
  assert.equal(await ui.checkpointSigned(cp, other.verifierKey), false, 'a key with another id finds no signature');
  const altered = ui.parseCheckpoint(note.replace('12345', '12346'));
  assert.equal(await ui.checkpointSigned(altered, verifierKey), false, 'a changed size breaks the signature');
  assert.throws(() => ui.parseCheckpoint('no signature block\n'), /signature/);
});
