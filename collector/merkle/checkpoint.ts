// C2SP signed-note (https://c2sp.org/signed-note) with Ed25519, and the C2SP tlog-checkpoint note
// body (https://c2sp.org/tlog-checkpoint). Key strings follow golang.org/x/mod/sumdb/note:
//   verifier key: <name>+<hex key id>+base64(0x01 || 32-byte public key)
//   signer key:   PRIVATE+KEY+<name>+<hex key id>+base64(0x01 || 32-byte seed)
//   key id:       first 4 bytes of SHA-256(name || 0x0A || 0x01 || public key), big-endian
// A signed note is text ending in "\n", a blank line, then lines "— <name> base64(key id || sig)\n".
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { isIndex } from './bits.js';
import { HASH_SIZE } from './hash.js';
import { fail, okValue, type Result } from './result.js';

const ALG_ED25519 = 0x01;
const EM_DASH_PREFIX = '\u2014 ';
/** Notes with more signature lines than this are refused as malformed (as in the Go reference). */
export const MAX_SIGNATURES = 100;

const PKCS8_ED25519_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');
const SPKI_ED25519_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Strict standard base64 (RFC 4648 section 4): padded, canonical, nothing else. */
export function decodeBase64Strict(s: string): Buffer | null {
  if (!BASE64_RE.test(s)) return null;
  const b = Buffer.from(s, 'base64');
  return b.toString('base64') === s ? b : null;
}

/** Key names: non-empty, valid UTF-16 text without Unicode white space or "+". */
export function isValidKeyName(name: string): boolean {
  return name.length > 0 && !/[\p{White_Space}+]/u.test(name) && !hasLoneSurrogate(name);
}

function hasLoneSurrogate(s: string): boolean {
  return /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(s);
}

function hex8(id: number): string {
  return id.toString(16).padStart(8, '0');
}

/** The key id of an Ed25519 key: SHA-256(name || "\n" || 0x01 || pub)[:4] as a uint32. */
export function ed25519KeyId(name: string, publicKey: Uint8Array): number {
  if (publicKey.length !== 32) throw new RangeError(`Ed25519 public key has ${publicKey.length} bytes, expected 32`);
  const h = createHash('sha256').update(name, 'utf8').update('\n').update(Buffer.from([ALG_ED25519])).update(publicKey).digest();
  return h.readUInt32BE(0);
}

function privateKeyFromSeed(seed: Uint8Array): KeyObject {
  return createPrivateKey({ key: Buffer.concat([PKCS8_ED25519_PREFIX, seed]), format: 'der', type: 'pkcs8' });
}

function publicKeyFromRaw(pub: Uint8Array): KeyObject {
  return createPublicKey({ key: Buffer.concat([SPKI_ED25519_PREFIX, pub]), format: 'der', type: 'spki' });
}

function rawPublicKey(key: KeyObject): Buffer {
  const der = key.export({ format: 'der', type: 'spki' });
  return der.subarray(der.length - 32);
}

function rawSeed(key: KeyObject): Buffer {
  const der = key.export({ format: 'der', type: 'pkcs8' });
  return der.subarray(der.length - 32);
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

/** Verifies signatures by one key. */
export interface NoteVerifier {
  readonly name: string;
  /** uint32 key id. */
  readonly keyId: number;
  /** The public key, raw 32 bytes. */
  readonly publicKey: Buffer;
  verify(message: Uint8Array, signature: Uint8Array): boolean;
  /** name+hex(keyid)+base64(0x01 || pubkey). */
  toString(): string;
}

/** Signs with one key. */
export interface NoteSigner {
  readonly name: string;
  readonly keyId: number;
  readonly publicKey: Buffer;
  sign(message: Uint8Array): Buffer;
  /** The matching verifier. */
  verifier(): NoteVerifier;
  /** PRIVATE+KEY+name+hex(keyid)+base64(0x01 || seed). Secret. */
  toString(): string;
}

function makeVerifier(name: string, pub: Buffer): NoteVerifier {
  const key = publicKeyFromRaw(pub);
  const keyId = ed25519KeyId(name, pub);
  const text = `${name}+${hex8(keyId)}+${Buffer.concat([Buffer.from([ALG_ED25519]), pub]).toString('base64')}`;
  return {
    name,
    keyId,
    publicKey: Buffer.from(pub),
    verify: (message, signature) => signature.length === 64 && verify(null, message, key, signature),
    toString: () => text,
  };
}

function makeSigner(name: string, seed: Buffer): NoteSigner {
  const key = privateKeyFromSeed(seed);
  const pub = rawPublicKey(createPublicKey(key));
  const keyId = ed25519KeyId(name, pub);
  const text = `PRIVATE+KEY+${name}+${hex8(keyId)}+${Buffer.concat([Buffer.from([ALG_ED25519]), seed]).toString('base64')}`;
  return {
    name,
    keyId,
    publicKey: pub,
    sign: (message) => sign(null, message, key),
    verifier: () => makeVerifier(name, pub),
    toString: () => text,
  };
}

/** A new Ed25519 note key named `name`, with both key strings. */
export function generateNoteKey(name: string): { signer: NoteSigner; signerKey: string; verifierKey: string } {
  if (!isValidKeyName(name)) throw new RangeError(`invalid key name ${JSON.stringify(name)}`);
  const { privateKey } = generateKeyPairSync('ed25519');
  const signer = makeSigner(name, rawSeed(privateKey));
  return { signer, signerKey: signer.toString(), verifierKey: signer.verifier().toString() };
}

/** A signer from an Ed25519 private key object or 32-byte seed. */
export function signerFromKey(name: string, key: KeyObject | Uint8Array): NoteSigner {
  if (!isValidKeyName(name)) throw new RangeError(`invalid key name ${JSON.stringify(name)}`);
  if (key instanceof Uint8Array) {
    if (key.length !== 32) throw new RangeError(`Ed25519 seed has ${key.length} bytes, expected 32`);
    return makeSigner(name, Buffer.from(key));
  }
  if (key.type !== 'private' || key.asymmetricKeyType !== 'ed25519') throw new RangeError('not an Ed25519 private key');
  return makeSigner(name, rawSeed(key));
}

/** A verifier from an Ed25519 public key object or 32 raw bytes. */
export function verifierFromKey(name: string, key: KeyObject | Uint8Array): NoteVerifier {
  if (!isValidKeyName(name)) throw new RangeError(`invalid key name ${JSON.stringify(name)}`);
  if (key instanceof Uint8Array) {
    if (key.length !== 32) throw new RangeError(`Ed25519 public key has ${key.length} bytes, expected 32`);
    return makeVerifier(name, Buffer.from(key));
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new RangeError('not an Ed25519 key');
  return makeVerifier(name, rawPublicKey(key.type === 'private' ? createPublicKey(key) : key));
}

/** Splits "a+b+c" at the first `n` pluses (the base64 tail may itself contain "+"). */
function splitKey(s: string, n: number): string[] | null {
  const parts: string[] = [];
  let rest = s;
  for (let i = 0; i < n; i++) {
    const at = rest.indexOf('+');
    if (at < 0) return null;
    parts.push(rest.slice(0, at));
    rest = rest.slice(at + 1);
  }
  parts.push(rest);
  return parts;
}

function parseKeyBody(what: string, name: string, id: string, b64: string): Result<{ keyId: number; key: Buffer }> {
  if (!isValidKeyName(name)) return fail(`${what}: invalid key name ${JSON.stringify(name)}`);
  if (!/^[0-9a-fA-F]{8}$/.test(id)) return fail(`${what}: key id ${JSON.stringify(id)} is not 8 hex digits`);
  const raw = decodeBase64Strict(b64);
  if (!raw || raw.length === 0) return fail(`${what}: key is not valid base64`);
  if (raw[0] !== ALG_ED25519) return fail(`${what}: unknown key algorithm ${raw[0]} (only 1, Ed25519, is supported)`);
  if (raw.length !== 33) return fail(`${what}: Ed25519 key has ${raw.length - 1} bytes, expected 32`);
  return okValue({ keyId: parseInt(id, 16), key: raw.subarray(1) });
}

/** Parses a verifier key string name+hex(keyid)+base64(0x01 || pubkey), checking the key id. */
export function parseVerifierKey(vkey: string): Result<NoteVerifier> {
  const parts = splitKey(vkey.trim(), 2);
  if (!parts) return fail('verifier key: expected name+keyid+key');
  const [name, id, b64] = parts as [string, string, string];
  const body = parseKeyBody('verifier key', name, id, b64);
  if (!body.ok) return body;
  const v = makeVerifier(name, body.value.key);
  if (v.keyId !== body.value.keyId) {
    return fail(`verifier key: key id ${id} does not match the key (computed ${hex8(v.keyId)})`);
  }
  return okValue(v);
}

/** Parses a signer key string PRIVATE+KEY+name+hex(keyid)+base64(0x01 || seed), checking the key id. */
export function parseSignerKey(skey: string): Result<NoteSigner> {
  const parts = splitKey(skey.trim(), 4);
  if (!parts || parts[0] !== 'PRIVATE' || parts[1] !== 'KEY') return fail('signer key: expected PRIVATE+KEY+name+keyid+key');
  const [, , name, id, b64] = parts as [string, string, string, string, string];
  const body = parseKeyBody('signer key', name, id, b64);
  if (!body.ok) return body;
  const s = makeSigner(name, body.value.key);
  if (s.keyId !== body.value.keyId) {
    return fail(`signer key: key id ${id} does not match the key (computed ${hex8(s.keyId)})`);
  }
  return okValue(s);
}

// ---------------------------------------------------------------------------------------------
// Signed notes
// ---------------------------------------------------------------------------------------------

/** One signature line of a note. */
export interface NoteSignature {
  name: string;
  keyId: number;
  /** base64(key id || signature), as on the line. */
  base64: string;
}

/** An opened note: its text and which signatures were verified and which were by unknown keys. */
export interface OpenedNote {
  /** The signed text, including its final newline. */
  text: string;
  verified: NoteSignature[];
  unverified: NoteSignature[];
}

function checkNoteText(text: string): string | null {
  if (!text.endsWith('\n')) return 'note text must end with a newline';
  if (hasLoneSurrogate(text)) return 'note text is not valid Unicode';
  const ctl = /[\u0000-\u0009\u000b-\u001f]/.exec(text);
  if (ctl) return `note text contains control character U+${ctl[0].charCodeAt(0).toString(16).padStart(4, '0')}`;
  return null;
}

/** Signs `text` (which must end in "\n") with each signer and returns the signed note. */
export function signNote(text: string, ...signers: NoteSigner[]): string {
  const bad = checkNoteText(text);
  if (bad) throw new RangeError(bad);
  if (signers.length === 0) throw new RangeError('no signers');
  const msg = Buffer.from(text, 'utf8');
  let out = `${text}\n`;
  for (const s of signers) {
    if (!isValidKeyName(s.name)) throw new RangeError(`invalid key name ${JSON.stringify(s.name)}`);
    const id = Buffer.alloc(4);
    id.writeUInt32BE(s.keyId);
    out += `${EM_DASH_PREFIX}${s.name} ${Buffer.concat([id, s.sign(msg)]).toString('base64')}\n`;
  }
  return out;
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * Opens a signed note: parses it and checks the signatures by the known verifiers. Signatures by
 * unknown keys (name and key id not both matching a verifier) are ignored and listed as
 * unverified. Fails if the note is malformed, if any signature by a known key is bad, or if no
 * known key signed it.
 */
export function openNote(message: string | Uint8Array, verifiers: readonly NoteVerifier[]): Result<OpenedNote> {
  let msg: string;
  if (typeof message === 'string') {
    if (hasLoneSurrogate(message)) return fail('malformed note: not valid Unicode');
    msg = message;
  } else {
    try {
      msg = utf8.decode(message);
    } catch {
      return fail('malformed note: not valid UTF-8');
    }
  }
  const ctl = /[\u0000-\u0009\u000b-\u001f]/.exec(msg);
  if (ctl) {
    return fail(`malformed note: control character U+${ctl[0].charCodeAt(0).toString(16).padStart(4, '0')} at offset ${ctl.index}`);
  }
  const split = msg.lastIndexOf('\n\n');
  if (split < 0) return fail('malformed note: no blank line before the signatures');
  const text = msg.slice(0, split + 1);
  let sigs = msg.slice(split + 2);
  if (sigs.length === 0) return fail('malformed note: no signature lines');
  if (!sigs.endsWith('\n')) return fail('malformed note: the last signature line does not end with a newline');

  const byKey = new Map<string, NoteVerifier[]>();
  for (const v of verifiers) {
    const k = `${v.name}+${hex8(v.keyId)}`;
    byKey.set(k, [...(byKey.get(k) ?? []), v]);
  }
  const textBytes = Buffer.from(text, 'utf8');
  const verified: NoteSignature[] = [];
  const unverified: NoteSignature[] = [];
  const seen = new Set<string>();
  const seenUnverified = new Set<string>();
  let count = 0;
  let lineNo = 0;
  while (sigs.length > 0) {
    const nl = sigs.indexOf('\n');
    const line = sigs.slice(0, nl);
    sigs = sigs.slice(nl + 1);
    lineNo++;
    if (!line.startsWith(EM_DASH_PREFIX)) {
      return fail(`malformed note: signature line ${lineNo} does not start with "\u2014 ": ${JSON.stringify(line.slice(0, 60))}`);
    }
    const body = line.slice(EM_DASH_PREFIX.length);
    const sp = body.indexOf(' ');
    const name = sp < 0 ? body : body.slice(0, sp);
    const b64 = sp < 0 ? '' : body.slice(sp + 1);
    if (!isValidKeyName(name)) return fail(`malformed note: signature line ${lineNo} has an invalid key name`);
    const raw = decodeBase64Strict(b64);
    if (!raw || raw.length < 5) return fail(`malformed note: signature line ${lineNo} (${name}) is not base64 of a key id and a signature`);
    if (++count > MAX_SIGNATURES) return fail(`malformed note: more than ${MAX_SIGNATURES} signatures`);
    const keyId = raw.readUInt32BE(0);
    const key = `${name}+${hex8(keyId)}`;
    const sig: NoteSignature = { name, keyId, base64: b64 };
    const candidates = byKey.get(key);
    if (!candidates) {
      if (!seenUnverified.has(line)) {
        seenUnverified.add(line);
        unverified.push(sig);
      }
      continue;
    }
    if (candidates.length > 1) return fail(`ambiguous key ${key}: more than one verifier has this name and key id`);
    if (seen.has(key)) continue;
    seen.add(key);
    if (!candidates[0]!.verify(textBytes, raw.subarray(4))) return fail(`invalid signature for key ${key}`);
    verified.push(sig);
  }
  if (verified.length === 0) {
    const who = unverified.map((s) => `${s.name}+${hex8(s.keyId)}`).join(', ');
    const known = verifiers.map((v) => `${v.name}+${hex8(v.keyId)}`).join(', ') || 'none';
    return fail(`note is not signed by a known key (signed by ${who}; known: ${known})`);
  }
  return okValue({ text, verified, unverified });
}

// ---------------------------------------------------------------------------------------------
// Checkpoints
// ---------------------------------------------------------------------------------------------

/** A tlog-checkpoint body. */
export interface Checkpoint {
  /** Log identity, e.g. "runguard.example/collector". */
  origin: string;
  /** Number of leaves. */
  size: number;
  /** RFC 6962 root hash of the tree of `size` leaves. */
  root: Uint8Array;
  /** Opaque extension lines (not recommended). */
  extensions?: string[];
}

/** The note text of a checkpoint: origin, size, base64 root, extension lines, each ending in "\n". */
export function formatCheckpoint(c: Checkpoint): string {
  if (c.origin.length === 0 || /\n/.test(c.origin)) throw new RangeError('checkpoint origin must be one non-empty line');
  if (!isIndex(c.size)) throw new RangeError(`bad checkpoint size ${c.size}`);
  if (c.root.length !== HASH_SIZE) throw new RangeError(`checkpoint root has ${c.root.length} bytes, expected ${HASH_SIZE}`);
  const ext = c.extensions ?? [];
  for (const e of ext) if (e.length === 0 || /\n/.test(e)) throw new RangeError('extension lines must be non-empty single lines');
  const root = Buffer.from(c.root.buffer, c.root.byteOffset, c.root.byteLength).toString('base64');
  return [c.origin, String(c.size), root, ...ext].map((l) => `${l}\n`).join('');
}

/** Parses checkpoint note text (already verified by openNote). */
export function parseCheckpoint(text: string): Result<Checkpoint> {
  if (!text.endsWith('\n')) return fail('checkpoint: text does not end with a newline');
  const lines = text.slice(0, -1).split('\n');
  if (lines.length < 3) return fail(`checkpoint: ${lines.length} lines, expected at least 3 (origin, size, root)`);
  const [origin, sizeText, rootText, ...extensions] = lines as [string, string, string, ...string[]];
  if (origin.length === 0) return fail('checkpoint: empty origin line');
  if (!/^(0|[1-9][0-9]*)$/.test(sizeText)) return fail(`checkpoint: size ${JSON.stringify(sizeText)} is not a decimal number without leading zeroes`);
  const size = Number(sizeText);
  if (!isIndex(size)) return fail(`checkpoint: size ${sizeText} is too large`);
  const root = decodeBase64Strict(rootText);
  if (!root) return fail(`checkpoint: root ${JSON.stringify(rootText)} is not base64`);
  if (root.length !== HASH_SIZE) return fail(`checkpoint: root has ${root.length} bytes, expected ${HASH_SIZE}`);
  if (extensions.some((e) => e.length === 0)) return fail('checkpoint: empty extension line');
  return okValue({ origin, size, root, extensions });
}

/** Signs a checkpoint with the log's key (and any others) and returns the signed note. */
export function signCheckpoint(c: Checkpoint, ...signers: NoteSigner[]): string {
  return signNote(formatCheckpoint(c), ...signers);
}

/**
 * Opens a signed checkpoint: the note must carry a valid signature by one of `verifiers`, parse as
 * a checkpoint, and, when `origin` is given, have that origin.
 */
export function openCheckpoint(
  message: string | Uint8Array,
  verifiers: readonly NoteVerifier[],
  origin?: string,
): Result<{ checkpoint: Checkpoint; note: OpenedNote }> {
  const note = openNote(message, verifiers);
  if (!note.ok) return note;
  const cp = parseCheckpoint(note.value.text);
  if (!cp.ok) return cp;
  if (origin !== undefined && cp.value.origin !== origin) {
    return fail(`checkpoint origin ${JSON.stringify(cp.value.origin)} is not the expected ${JSON.stringify(origin)}`);
  }
  return okValue({ checkpoint: cp.value, note: note.value });
}
