// C2SP signed notes and tlog checkpoints with Ed25519: round trips, tampering, wrong and foreign
// keys, key string formats, and known-answer vectors from the Go reference implementation
// (golang.org/x/mod/sumdb/note), the signed-note spec, and real checkpoints of sum.golang.org.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import {
  decodeBase64Strict, ed25519KeyId, formatCheckpoint, generateNoteKey, hex, isValidKeyName, leafHash, MemoryTree,
  openCheckpoint, openNote, parseCheckpoint, parseSignerKey, parseVerifierKey, signCheckpoint, signerFromKey,
  signNote, verifierFromKey, type Checkpoint, type NoteVerifier,
} from '../../collector/merkle/index.js';

// golang.org/x/mod/sumdb/note: documentation example and note_test.go.
const PETER_SKEY = 'PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz';
const PETER_VKEY = 'PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW';
const ENOCH_VKEY = 'EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop';
const PETER_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
const PETER_SIG = '\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n';
const ENOCH_SIG = '\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n';

// c2sp.org/signed-note example key and note.
const SPEC_VKEY = 'example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k';
const SPEC_NOTE = 'This is an example message.\n\n\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n';

// sum.golang.org, the Go checksum database: its public key and checkpoints it served.
const SUMDB_VKEY = 'sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8';
const SUMDB_ORIGIN = 'go.sum database tree';
const SUMDB_CHECKPOINTS: [number, string, string][] = [
  [3784599, '7uvxIZ67TZygcq/AehTD8iHYt81Ih+Zl2Y7vXZbfszQ=', 'Az3grn972wXskjQrsZhVGc93fTU2uOsmSTiId1Wn1lxDCup5z4ggl1/4gaUqOkMa6cMbYvjB7hn7yemNr7Zqanol/go='],
  [31700353, 'qINS1GRFhWHwdkUeqLEoP4yEMkTBBzxBkGwGQlVlVcs=', 'Az3grnmrIUEDFqHzAElIQCPNoRFRAAdFo47fooyWKMHb89k11GJh5zHIfNCOBmwn/C3YI8oW9/C8DJ87F61QqspBYwM='],
  [52544510, '+TGlZfnTizQCJgyZR56QixD8+X4dd8Wefy8U1w6k0Ig=', 'Az3grn6d1PSjcypDf9bfcFVU5fvJB7VkLc0MAbz8jqeQVnSbAj9pKcsB5dJt5VdswPDUtiFar5LPRBu+uEQAT1CDfAc='],
  [65209736, '5+uGFjx6xBZG8ip1+wi77v+grwbhhukIrxEUS8PXvRo=', 'Az3grnbssgK7ubgFX36gVETtNv0U23qxyAhAMai2QUfeGa3nB/akvkMdlUErfcZz7l/R3cVtYspg3dxXABkGZZKdsQ8='],
];
const sumdbNote = ([size, root, sig]: [number, string, string]) => `${SUMDB_ORIGIN}\n${size}\n${root}\n\n\u2014 sum.golang.org ${sig}\n`;

function must<T>(r: { ok: true; value: T } | { ok: false; reason: string }): T {
  if (!r.ok) assert.fail(r.reason);
  return r.value;
}

function rejects(r: { ok: boolean; reason?: string }, pattern: RegExp, what: string): void {
  assert.equal(r.ok, false, `${what} must be rejected`);
  assert.match((r as { reason: string }).reason, pattern, what);
}

function sampleCheckpoint(size = 7): Checkpoint {
  const t = new MemoryTree();
  for (let i = 0; i < size; i++) t.append(leafHash(Buffer.from(`event ${i}`)));
  return { origin: 'runguard.example/collector', size, root: t.root() };
}

test('known answer: the Go reference key signs its example note byte for byte', () => {
  const signer = must(parseSignerKey(PETER_SKEY));
  assert.equal(signer.name, 'PeterNeumann');
  assert.equal(signer.keyId, 0xc74f20a3);
  assert.equal(signer.toString(), PETER_SKEY);
  assert.equal(signer.verifier().toString(), PETER_VKEY);
  assert.equal(signNote(PETER_TEXT, signer), `${PETER_TEXT}\n${PETER_SIG}`);
  const verifier = must(parseVerifierKey(PETER_VKEY));
  assert.equal(verifier.toString(), PETER_VKEY);
  assert.equal(ed25519KeyId('PeterNeumann', verifier.publicKey), 0xc74f20a3);
});

test('known answer: notes with one known and one unknown signature (note_test.go)', () => {
  const peter = must(parseVerifierKey(PETER_VKEY));
  const enoch = must(parseVerifierKey(ENOCH_VKEY));
  const msg = `${PETER_TEXT}\n${PETER_SIG}${ENOCH_SIG}`;
  const one = must(openNote(msg, [peter]));
  assert.equal(one.text, PETER_TEXT);
  assert.deepEqual(one.verified.map((s) => s.name), ['PeterNeumann']);
  assert.deepEqual(one.unverified, [{ name: 'EnochRoot', keyId: 0xaf0cfe78, base64: ENOCH_SIG.slice(12, -1) }]);
  const both = must(openNote(msg, [peter, enoch]));
  assert.deepEqual(both.verified.map((s) => s.name), ['PeterNeumann', 'EnochRoot']);
  rejects(openNote(msg, []), /not signed by a known key/, 'no known keys');
  rejects(openNote(`${PETER_TEXT}\n${ENOCH_SIG}`, [enoch, peter, enoch]), /ambiguous key EnochRoot\+af0cfe78/, 'duplicate verifier');
  // A corrupted signature by a known key rejects the whole note.
  const bad = `${PETER_TEXT}\n${PETER_SIG.slice(0, 60)}ABCD${PETER_SIG.slice(60)}`;
  rejects(openNote(bad, [peter]), /invalid signature for key PeterNeumann\+c74f20a3/, 'corrupted signature');
  // Repeated signatures are fine; more than 100 are not.
  must(openNote(`${PETER_TEXT}\n${PETER_SIG}${PETER_SIG}`, [peter]));
  rejects(openNote(`${PETER_TEXT}\n${PETER_SIG.repeat(101)}`, [peter]), /more than 100 signatures/, '101 signatures');
});

test('known answer: malformed notes from note_test.go are rejected', () => {
  const peter = must(parseVerifierKey(PETER_VKEY));
  const bad = [
    PETER_TEXT,
    `${PETER_TEXT}\n`,
    `${PETER_TEXT}\n${PETER_SIG.slice(0, -1)}`,
    `\x01${PETER_TEXT}\n${PETER_SIG}`,
    `${PETER_TEXT}\n\u2014 Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=`,
    `${PETER_TEXT}\n${PETER_SIG}Unexpected line.\n`,
  ];
  for (const m of bad) rejects(openNote(m, [peter]), /malformed note/, JSON.stringify(m.slice(-40)));
  // Invalid UTF-8 as bytes.
  const bytes = Buffer.concat([Buffer.from([0xff]), Buffer.from(`${PETER_TEXT}\n${PETER_SIG}`)]);
  rejects(openNote(bytes, [peter]), /not valid UTF-8/, 'invalid UTF-8');
  // The same note as bytes is fine.
  must(openNote(Buffer.from(`${PETER_TEXT}\n${PETER_SIG}`), [peter]));
});

test('known answer: the signed-note spec example', () => {
  const v = must(parseVerifierKey(SPEC_VKEY));
  assert.equal(v.name, 'example.com/foo');
  const n = must(openNote(SPEC_NOTE, [v]));
  assert.equal(n.text, 'This is an example message.\n');
});

test('known answer: checkpoints served by sum.golang.org verify as tlog-checkpoints', () => {
  const v = must(parseVerifierKey(SUMDB_VKEY));
  for (const cp of SUMDB_CHECKPOINTS) {
    const opened = must(openCheckpoint(sumdbNote(cp), [v], SUMDB_ORIGIN));
    assert.equal(opened.checkpoint.size, cp[0]);
    assert.equal(Buffer.from(opened.checkpoint.root).toString('base64'), cp[1]);
    assert.deepEqual(opened.checkpoint.extensions, []);
    // Off by one leaf: refused.
    const tampered = sumdbNote(cp).replace(`\n${cp[0]}\n`, `\n${cp[0] + 1}\n`);
    rejects(openCheckpoint(tampered, [v], SUMDB_ORIGIN), /invalid signature for key sum\.golang\.org\+033de0ae/, 'tampered sumdb size');
  }
});

test('round trip: a checkpoint signed with a generated key opens with its verifier key string', () => {
  const { signer, signerKey, verifierKey } = generateNoteKey('runguard.example/collector');
  assert.match(signerKey, /^PRIVATE\+KEY\+runguard\.example\/collector\+[0-9a-f]{8}\+A[A-Za-z0-9+/]{43}$/);
  assert.match(verifierKey, /^runguard\.example\/collector\+[0-9a-f]{8}\+A[A-Za-z0-9+/]{43}$/);
  const cp = sampleCheckpoint();
  const note = signCheckpoint(cp, signer);
  const [text, sigs] = note.split('\n\n') as [string, string];
  assert.equal(`${text}\n`, formatCheckpoint(cp));
  assert.equal(text.split('\n').length, 3);
  assert.ok(sigs.startsWith('\u2014 runguard.example/collector '));
  const verifier = must(parseVerifierKey(verifierKey));
  const opened = must(openCheckpoint(note, [verifier], cp.origin));
  assert.equal(opened.checkpoint.origin, cp.origin);
  assert.equal(opened.checkpoint.size, cp.size);
  assert.equal(hex(opened.checkpoint.root), hex(cp.root));
  // Key strings parse back to the same key.
  const reparsed = must(parseSignerKey(signerKey));
  assert.equal(reparsed.toString(), signerKey);
  assert.equal(reparsed.verifier().toString(), verifierKey);
  assert.equal(reparsed.keyId, verifier.keyId);
  assert.equal(signNote('x\n', reparsed), signNote('x\n', signer)); // Ed25519 is deterministic
  // A trailing newline, as read from a key file, is fine.
  must(parseVerifierKey(`${verifierKey}\n`));
});

test('tampered size, root or origin, and a wrong key, are rejected', () => {
  const { signer } = generateNoteKey('log.example');
  const verifier = signer.verifier();
  const cp = sampleCheckpoint(12);
  const note = signCheckpoint({ ...cp, origin: 'log.example' }, signer);
  must(openCheckpoint(note, [verifier], 'log.example'));
  const lines = note.split('\n');
  const edit = (i: number, v: string) => lines.map((l, j) => (j === i ? v : l)).join('\n');
  rejects(openCheckpoint(edit(1, '13'), [verifier]), /invalid signature for key log\.example\+/, 'size');
  rejects(openCheckpoint(edit(1, '012'), [verifier]), /invalid signature/, 'size with a leading zero');
  const otherRoot = Buffer.from(cp.root);
  otherRoot[31]! ^= 1;
  rejects(openCheckpoint(edit(2, otherRoot.toString('base64')), [verifier]), /invalid signature/, 'root');
  rejects(openCheckpoint(edit(0, 'log.example2'), [verifier]), /invalid signature/, 'origin');
  // Right signature, but not the log the caller expects.
  rejects(openCheckpoint(note, [verifier], 'other.example'), /origin "log\.example" is not the expected "other\.example"/, 'expected origin');
  // A different key with the same name: its key id differs, so the signature is "unknown".
  const impostor = generateNoteKey('log.example');
  rejects(openCheckpoint(note, [impostor.signer.verifier()]), /not signed by a known key/, 'wrong key');
  // A different key claiming the same name and key id: the signature check fails.
  const forged: NoteVerifier = { ...impostor.signer.verifier(), keyId: verifier.keyId, verify: impostor.signer.verifier().verify };
  rejects(openCheckpoint(note, [forged]), /invalid signature/, 'same name and id, other key');
  // Re-signed by another key after tampering: still not ours.
  rejects(openCheckpoint(signCheckpoint({ ...cp, origin: 'log.example', size: 13 }, impostor.signer), [verifier]), /not signed by a known key/, 're-signed');
});

test('signatures by other keys (witnesses) are ignored; one by our key is enough', () => {
  const log = generateNoteKey('log.example');
  const witness1 = generateNoteKey('witness.example/one');
  const witness2 = generateNoteKey('witness.example/two');
  const cp = { ...sampleCheckpoint(3), origin: 'log.example' };
  const note = signCheckpoint(cp, witness1.signer, log.signer, witness2.signer);
  const opened = must(openCheckpoint(note, [log.signer.verifier()], 'log.example'));
  assert.deepEqual(opened.note.verified.map((s) => s.name), ['log.example']);
  assert.deepEqual(opened.note.unverified.map((s) => s.name), ['witness.example/one', 'witness.example/two']);
  // A garbage signature by an unknown key is ignored too (the spec: verifiers MUST ignore them).
  const withJunk = `${note}\u2014 junk.example ${Buffer.alloc(68, 7).toString('base64')}\n`;
  must(openCheckpoint(withJunk, [log.signer.verifier()]));
  // Only witnesses signed: rejected.
  rejects(openCheckpoint(signCheckpoint(cp, witness1.signer), [log.signer.verifier()]), /not signed by a known key \(signed by witness\.example\/one\+[0-9a-f]{8}; known: log\.example\+/, 'witness only');
});

test('checkpoint bodies: extension lines, and malformed bodies', () => {
  const cp = { ...sampleCheckpoint(0), extensions: ['ext one', 'two'] };
  assert.equal(hex(cp.root), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  const text = formatCheckpoint(cp);
  assert.equal(text, `runguard.example/collector\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\next one\ntwo\n`);
  assert.deepEqual(must(parseCheckpoint(text)).extensions, ['ext one', 'two']);
  const root = Buffer.from(cp.root).toString('base64');
  const bad: [string, RegExp][] = [
    ['o\n1\n', /2 lines, expected at least 3/],
    [`o\n1\n${root}`, /does not end with a newline/],
    [`\n1\n${root}\n`, /empty origin/],
    [`o\n01\n${root}\n`, /leading zeroes/],
    [`o\n-1\n${root}\n`, /not a decimal/],
    [`o\n1 \n${root}\n`, /not a decimal/],
    [`o\n99999999999999999999\n${root}\n`, /too large/],
    [`o\n1\n${root.slice(0, -1)}\n`, /not base64/],
    [`o\n1\n${Buffer.alloc(31).toString('base64')}\n`, /31 bytes, expected 32/],
    [`o\n1\n${root}\n\nx\n`, /empty extension line/],
  ];
  for (const [t, re] of bad) rejects(parseCheckpoint(t), re, JSON.stringify(t));
  assert.throws(() => formatCheckpoint({ origin: 'a\nb', size: 1, root: cp.root }), RangeError);
  assert.throws(() => formatCheckpoint({ origin: 'a', size: 1, root: Buffer.alloc(3) }), RangeError);
  assert.throws(() => formatCheckpoint({ origin: 'a', size: -1, root: cp.root }), RangeError);
});

test('key strings: malformed and mismatched keys are refused with a reason', () => {
  const v = PETER_VKEY;
  // Every proper substring and every single-character change of the Go example key is refused.
  for (let i = 0; i <= v.length; i++) {
    for (let j = i + 1; j <= v.length; j++) {
      if (i !== 0 || j !== v.length) assert.equal(parseVerifierKey(v.slice(i, j)).ok, false, v.slice(i, j));
    }
  }
  for (let i = 0; i < v.length; i++) {
    const changed = v.slice(0, i) + String.fromCharCode(v.charCodeAt(i) + 1) + v.slice(i + 1);
    assert.equal(parseVerifierKey(changed).ok, false, changed);
  }
  for (let i = 0; i < PETER_SKEY.length; i++) {
    const changed = PETER_SKEY.slice(0, i) + String.fromCharCode(PETER_SKEY.charCodeAt(i) + 1) + PETER_SKEY.slice(i + 1);
    assert.equal(parseSignerKey(changed).ok, false, changed);
  }
  rejects(parseVerifierKey('PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=='), /not valid base64|expected 32/, 'long key');
  rejects(parseVerifierKey('PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW'), /unknown key algorithm/, 'algorithm');
  rejects(parseVerifierKey('PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW'), /does not match the key \(computed c74f20a3\)/, 'key id');
  rejects(parseSignerKey(PETER_VKEY), /expected PRIVATE\+KEY/, 'verifier key as signer key');
  rejects(parseVerifierKey('Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW'), /invalid key name/, 'space in name');
  assert.equal(isValidKeyName('a\u00a0b'), false);
  assert.equal(isValidKeyName('a\u0085b'), false);
  assert.equal(isValidKeyName('example.com/log'), true);
  assert.throws(() => generateNoteKey('a+b'), RangeError);
  assert.equal(decodeBase64Strict('AB=='), null); // non-canonical padding bits
  assert.deepEqual(decodeBase64Strict('AA=='), Buffer.from([0]));
  assert.equal(decodeBase64Strict('AA'), null);
});

test('signers and verifiers from node:crypto key objects and raw bytes', () => {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const s = signerFromKey('k.example', privateKey);
  const v = verifierFromKey('k.example', publicKey);
  assert.equal(s.verifier().toString(), v.toString());
  must(openNote(signNote('hello\n', s), [v]));
  const seed = randomBytes(32);
  const s2 = signerFromKey('k.example', seed);
  assert.equal(verifierFromKey('k.example', s2.publicKey).toString(), s2.verifier().toString());
  assert.throws(() => signerFromKey('k.example', publicKey), RangeError);
  assert.throws(() => signNote('no newline', s), RangeError);
  assert.throws(() => signNote('tab\there\n', s), RangeError);
});
