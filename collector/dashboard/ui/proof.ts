// The browser checks an event's place in the log itself, trusting the collector for nothing but
// bytes: it hashes the event (RFC 9162 leaf hash), folds the inclusion proof up to a root, compares
// that with the root in the latest checkpoint, and checks the checkpoint's Ed25519 signature
// (C2SP signed note) against the collector's verifier key. Pin that key (checkpoint.pub from
// `runguard ca init`) and compare: the page shows it.
const enc = new TextEncoder();

async function sha256(...parts: Uint8Array[]): Promise<Uint8Array> {
  const len = parts.reduce((n, p) => n + p.length, 0);
  const buf = new Uint8Array(len);
  let off = 0;
  for (const p of parts) {
    buf.set(p, off);
    off += p.length;
  }
  return new Uint8Array(await crypto.subtle.digest('SHA-256', buf));
}

export function fromBase64(s: string): Uint8Array<ArrayBuffer> {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export function toBase64(b: Uint8Array): string {
  let s = '';
  for (const x of b) s += String.fromCharCode(x);
  return btoa(s);
}

export const leafHash = (leaf: Uint8Array) => sha256(Uint8Array.of(0), leaf);
const nodeHash = (l: Uint8Array, r: Uint8Array) => sha256(Uint8Array.of(1), l, r);

const bitLength = (n: number) => (n === 0 ? 0 : Math.floor(Math.log2(n)) + 1);
function popcount(n: number): number {
  let c = 0;
  for (; n > 0; n = Math.floor(n / 2)) c += n % 2;
  return c;
}

/**
 * RFC 9162 section 2.1.3.2: the root an inclusion proof leads to, or an error. The same algorithm
 * as collector/merkle/proof.ts, here over WebCrypto; test/unit/dashboard-proof.test.ts runs both
 * against the reference vectors.
 */
export async function rootFromInclusionProof(index: number, size: number, leafHash: Uint8Array, proof: Uint8Array[]): Promise<Uint8Array> {
  if (!Number.isSafeInteger(index) || !Number.isSafeInteger(size) || index < 0) throw new Error(`bad index ${index} or size ${size}`);
  if (index >= size) throw new Error(`index ${index} is beyond tree size ${size}`);
  if (leafHash.length !== 32 || proof.some((p) => p.length !== 32)) throw new Error('hashes must be 32 bytes');
  // index ^ (size - 1) overflows 32-bit bitwise operators past 2^31 leaves: use BigInt for it.
  const inner = bitLength(Number(BigInt(index) ^ BigInt(size - 1)));
  const border = popcount(Math.floor(index / 2 ** inner));
  if (proof.length !== inner + border) throw new Error(`proof has ${proof.length} hashes, expected ${inner + border}`);
  let h = leafHash;
  for (let i = 0; i < inner; i++) {
    h = Math.floor(index / 2 ** i) % 2 === 0 ? await nodeHash(h, proof[i]!) : await nodeHash(proof[i]!, h);
  }
  for (let i = inner; i < proof.length; i++) h = await nodeHash(proof[i]!, h);
  return h;
}

export interface ParsedCheckpoint { origin: string; size: number; root: Uint8Array; text: string; signatures: { name: string; keyHash: Uint8Array; sig: Uint8Array<ArrayBuffer> }[] }

export function parseCheckpoint(note: string): ParsedCheckpoint {
  const split = note.indexOf('\n\n');
  if (split < 0) throw new Error('the checkpoint has no signature block');
  const text = note.slice(0, split + 1);
  const [origin, size, root] = text.split('\n');
  if (!origin || !size || !/^\d+$/.test(size) || !root) throw new Error('the checkpoint body is not origin, size, root');
  const signatures = note.slice(split + 2).split('\n').filter(Boolean).map((line) => {
    const m = /^\u2014 (\S+) (\S+)$/.exec(line);
    if (!m) throw new Error(`bad signature line: ${line}`);
    const raw = fromBase64(m[2]!);
    return { name: m[1]!, keyHash: raw.slice(0, 4), sig: raw.slice(4) };
  });
  return { origin, size: Number(size), root: fromBase64(root), text, signatures };
}

/** Checks the note's Ed25519 signature by the key "name+hash+base64(0x01||key)". */
export async function checkpointSigned(cp: ParsedCheckpoint, verifierKey: string): Promise<boolean> {
  // name+hash+key: the name and hash hold no "+", the base64 key may.
  const a = verifierKey.indexOf('+');
  const b = verifierKey.indexOf('+', a + 1);
  const [name, hash, key] = [verifierKey.slice(0, a), verifierKey.slice(a + 1, b), verifierKey.slice(b + 1)];
  if (a < 1 || b < 0 || !hash || !key) throw new Error('the verifier key is not name+hash+key');
  const raw = fromBase64(key);
  if (raw[0] !== 1 || raw.length !== 33) throw new Error('the verifier key is not an Ed25519 note key');
  const sig = cp.signatures.find((s) => s.name === name && [...s.keyHash].map((b) => b.toString(16).padStart(2, '0')).join('') === hash);
  if (!sig) return false;
  const k = await crypto.subtle.importKey('raw', new Uint8Array(raw.slice(1)), { name: 'Ed25519' }, false, ['verify']);
  return crypto.subtle.verify({ name: 'Ed25519' }, k, new Uint8Array(sig.sig), enc.encode(cp.text));
}

export function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
