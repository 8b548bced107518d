// The client side of PostgreSQL password authentication, for credential injection: the agent, holding
// the real password, authenticates to the server itself.
//
// SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL uses it: gs2 header "n,," (no channel binding: a
// terminating proxy cannot bind the job's TLS channel to the server's), and an empty username in the
// client-first message, as libpq sends it (the server uses the startup packet's user). Written on
// node:crypto because no maintained library does only the client exchange; pg's own sasl.js is not
// exported as a module and has no strict parsing of server messages.
import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';
import { PgProtocolError } from './frames.js';

export const SCRAM_SHA_256 = 'SCRAM-SHA-256';

/** "md5" + md5(md5(password + user) + salt), the PasswordMessage answer to AuthenticationMD5Password. */
export function md5Password(user: string, password: string, salt: Buffer): string {
  const inner = createHash('md5').update(password, 'utf8').update(user, 'utf8').digest('hex');
  return 'md5' + createHash('md5').update(inner, 'latin1').update(salt).digest('hex');
}

function authError(message: string): PgProtocolError {
  return new PgProtocolError('auth', `SCRAM-SHA-256: ${message}`);
}

/** Chooses SCRAM-SHA-256 from the server's list, or says why it cannot authenticate. */
export function chooseSaslMechanism(mechanisms: string[]): typeof SCRAM_SHA_256 | PgProtocolError {
  if (mechanisms.includes(SCRAM_SHA_256)) return SCRAM_SHA_256;
  return authError(`the server offers only ${mechanisms.join(', ') || 'no mechanisms'}; the agent can do SCRAM-SHA-256 without channel binding only`);
}

export interface ScramClientOptions {
  password: string;
  /** Name sent in client-first-message; PostgreSQL ignores it and libpq sends "". */
  username?: string;
  /** Fixed nonce, for tests; otherwise 18 random bytes in base64, as libpq does. */
  clientNonce?: string;
  /** Refuse servers that ask for more PBKDF2 iterations than this (a hostile server could stall us). */
  maxIterations?: number;
}

/**
 * One SCRAM exchange: clientFirstMessage() -> SASLInitialResponse; clientFinalMessage(server-first from
 * AuthenticationSASLContinue) -> SASLResponse; verifyServerFinal(AuthenticationSASLFinal data), which
 * must succeed before AuthenticationOk is believed: a server that cannot prove it knows the verifier is
 * not the real one.
 */
export class ScramClient {
  private readonly password: string;
  private readonly clientNonce: string;
  private readonly clientFirstBare: string;
  private readonly maxIterations: number;
  private state: 'initial' | 'first-sent' | 'final-sent' | 'done' | 'failed' = 'initial';
  private expectedServerSignature: Buffer | undefined;

  constructor(opts: ScramClientOptions) {
    this.password = saslprep(opts.password);
    this.clientNonce = opts.clientNonce ?? randomBytes(18).toString('base64');
    if (!/^[\x21-\x2b\x2d-\x7e]+$/.test(this.clientNonce)) throw new TypeError('a SCRAM nonce is printable ASCII without commas');
    this.clientFirstBare = `n=${escapeSaslName(opts.username ?? '')},r=${this.clientNonce}`;
    this.maxIterations = opts.maxIterations ?? 1_000_000;
  }

  readonly mechanism = SCRAM_SHA_256;

  /** The client-first-message (data of SASLInitialResponse). */
  clientFirstMessage(): string {
    this.state = 'first-sent';
    return `n,,${this.clientFirstBare}`;
  }

  /** Given the server-first-message, returns the client-final-message (data of SASLResponse). */
  clientFinalMessage(serverFirst: string | Buffer): string | PgProtocolError {
    if (this.state !== 'first-sent') return this.failWith('server-first-message out of order');
    const text = typeof serverFirst === 'string' ? serverFirst : serverFirst.toString('utf8');
    const attrs = parseAttributes(text);
    if (attrs instanceof PgProtocolError) return this.failWith(attrs.message);
    if (attrs[0]?.[0] === 'm') return this.failWith('the server requires an extension this client does not know');
    if (attrs.length < 3 || attrs[0]![0] !== 'r' || attrs[1]![0] !== 's' || attrs[2]![0] !== 'i') {
      return this.failWith('server-first-message is not "r=...,s=...,i=..."');
    }
    const nonce = attrs[0]![1];
    const saltB64 = attrs[1]![1];
    const iterText = attrs[2]![1];
    if (!nonce.startsWith(this.clientNonce) || nonce.length === this.clientNonce.length) {
      return this.failWith('the server nonce does not extend the client nonce');
    }
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(saltB64) || saltB64.length % 4 !== 0) return this.failWith('the salt is not base64');
    const salt = Buffer.from(saltB64, 'base64');
    if (!/^[1-9][0-9]{0,9}$/.test(iterText)) return this.failWith(`iteration count "${iterText}" is not a positive integer`);
    const iterations = Number(iterText);
    if (iterations > this.maxIterations) return this.failWith(`the server asks for ${iterations} iterations, over the limit of ${this.maxIterations}`);

    const saltedPassword = saltedPasswordFor(this.password, salt, iterations);
    const clientKey = hmac(saltedPassword, 'Client Key');
    const storedKey = createHash('sha256').update(clientKey).digest();
    const serverKey = hmac(saltedPassword, 'Server Key');
    const clientFinalWithoutProof = `c=biws,r=${nonce}`; // biws = base64("n,,")
    const authMessage = `${this.clientFirstBare},${text},${clientFinalWithoutProof}`;
    const clientSignature = hmac(storedKey, authMessage);
    const proof = Buffer.alloc(clientKey.length);
    for (let i = 0; i < proof.length; i++) proof[i] = clientKey[i]! ^ clientSignature[i]!;
    this.expectedServerSignature = hmac(serverKey, authMessage);
    this.state = 'final-sent';
    return `${clientFinalWithoutProof},p=${proof.toString('base64')}`;
  }

  /** Checks the server-final-message ("v=<signature>"); true when the server proved itself. */
  verifyServerFinal(serverFinal: string | Buffer): true | PgProtocolError {
    if (this.state !== 'final-sent' || this.expectedServerSignature === undefined) {
      return this.failWith('server-final-message out of order');
    }
    const text = typeof serverFinal === 'string' ? serverFinal : serverFinal.toString('utf8');
    const attrs = parseAttributes(text);
    if (attrs instanceof PgProtocolError) return this.failWith(attrs.message);
    const first = attrs[0];
    if (first?.[0] === 'e') return this.failWith(`the server reports "${first[1]}"`);
    if (first?.[0] !== 'v') return this.failWith('server-final-message has no verifier');
    const sig = Buffer.from(first[1], 'base64');
    if (sig.length !== this.expectedServerSignature.length || !timingSafeEqual(sig, this.expectedServerSignature)) {
      return this.failWith('the server signature is wrong: the server does not know this password');
    }
    this.state = 'done';
    return true;
  }

  private failWith(message: string): PgProtocolError {
    this.state = 'failed';
    return authError(message);
  }
}

function hmac(key: Buffer, text: string): Buffer {
  return createHmac('sha256', key).update(text, 'utf8').digest();
}

/** "a=1,b=2" -> [['a','1'],['b','2']]; attribute names are single letters. */
function parseAttributes(text: string): [string, string][] | PgProtocolError {
  const out: [string, string][] = [];
  for (const part of text.split(',')) {
    if (part.length < 2 || part[1] !== '=' || !/^[A-Za-z]$/.test(part[0]!)) {
      return authError(`malformed attribute "${part.slice(0, 40)}"`);
    }
    out.push([part[0]!, part.slice(2)]);
  }
  return out;
}

function escapeSaslName(name: string): string {
  return name.replaceAll('=', '=3D').replaceAll(',', '=2C');
}

// PBKDF2 with 4096 iterations costs a few milliseconds of event-loop time; the same server sends the
// same salt for a role every time, so the result is remembered (keyed by a hash of the password, never
// the password itself) for the connections that follow.
const saltedCache = new Map<string, Buffer>();
const SALTED_CACHE_MAX = 64;

function saltedPasswordFor(password: string, salt: Buffer, iterations: number): Buffer {
  const key = createHash('sha256').update(password, 'utf8').update('\0').update(salt).update(`\0${iterations}`).digest('base64');
  const hit = saltedCache.get(key);
  if (hit !== undefined) return hit;
  const v = pbkdf2Sync(Buffer.from(password, 'utf8'), salt, iterations, 32, 'sha256');
  if (saltedCache.size >= SALTED_CACHE_MAX) saltedCache.delete(saltedCache.keys().next().value!);
  saltedCache.set(key, v);
  return v;
}

// ---------------------------------------------------------------------------------------------------
// SASLprep (RFC 4013), as libpq applies it to the password: when the result would be prohibited, libpq
// uses the password unchanged, and so do we. ASCII passwords (the common case) are exact: printable ASCII
// maps to itself, control characters make the password "prohibited", i.e. used as is. For non-ASCII the
// mapping tables (B.1, C.1.2), NFKC and the prohibited ranges are implemented; "unassigned" is judged by
// the current Unicode tables (\p{Cn}), not Unicode 3.2 as the RFC demands, and the bidi rule uses the
// Hebrew/Arabic blocks for RandALCat. A password that hits those differences may need to be stored
// already normalized.

const NON_ASCII_SPACE = /[\u00A0\u1680\u2000-\u200B\u202F\u205F\u3000]/g;
const MAPPED_TO_NOTHING = /[\u00AD\u034F\u1806\u180B-\u180D\u200B-\u200D\u2060\uFE00-\uFE0F\uFEFF]/g;
const PROHIBITED =
  /[\u0000-\u001F\u007F-\u009F\u0340\u0341\u06DD\u070F\u180E\u200C-\u200F\u2028-\u202E\u2060-\u2063\u206A-\u206F\u2FF0-\u2FFB\uD800-\uDFFF\uE000-\uF8FF\uFDD0-\uFDEF\uFEFF\uFFF9-\uFFFF]|[\u{1D173}-\u{1D17A}\u{E0001}\u{E0020}-\u{E007F}\u{F0000}-\u{10FFFF}]|[\u{1FFFE}\u{1FFFF}\u{2FFFE}\u{2FFFF}\u{3FFFE}\u{3FFFF}\u{4FFFE}\u{4FFFF}\u{5FFFE}\u{5FFFF}\u{6FFFE}\u{6FFFF}\u{7FFFE}\u{7FFFF}\u{8FFFE}\u{8FFFF}\u{9FFFE}\u{9FFFF}\u{AFFFE}\u{AFFFF}\u{BFFFE}\u{BFFFF}\u{CFFFE}\u{CFFFF}\u{DFFFE}\u{DFFFF}\u{EFFFE}\u{EFFFF}]|\p{Cn}/u;
const RANDAL = /[\u05BE\u05C0\u05C3\u05D0-\u05F4\u0600-\u07FF\u0800-\u08FF\uFB1D-\uFDFF\uFE70-\uFEFC]/u;
const LCAT = /[A-Za-z\u00AA\u00B5\u00BA\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u02B8\u0370-\u058F\u0900-\u1FFF\u3000-\uD7FF]/u;

export function saslprep(password: string): string {
  // Printable ASCII is unchanged by SASLprep, and ASCII control characters are prohibited, which
  // again means "use the password as is": either way an ASCII password is used unchanged.
  if (/^[\x00-\x7f]*$/.test(password)) return password;
  const mapped = password.replace(NON_ASCII_SPACE, ' ').replace(MAPPED_TO_NOTHING, '').normalize('NFKC');
  if (mapped.length === 0 || PROHIBITED.test(mapped)) return password;
  if (RANDAL.test(mapped)) {
    const chars = [...mapped];
    if (LCAT.test(mapped) || !RANDAL.test(chars[0]!) || !RANDAL.test(chars[chars.length - 1]!)) return password;
  }
  return mapped;
}
