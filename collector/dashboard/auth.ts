// Who is asking: dashboard sessions for browsers, HTTP Basic for the CLI and scripts.
//
// A browser signs in once (POST /api/login) and gets a random session id in a cookie that scripts
// cannot read (HttpOnly), that no other site's request carries (SameSite=Strict), and that travels
// only over TLS or to a loopback address (Secure; browsers treat http://127.0.0.1 and localhost as
// secure). Every state-changing request from a session must also echo the session's CSRF token in
// the x-csrf-token header, and its Origin, when present, must be this server's own. Sessions live in
// memory, keyed by the SHA-256 of the id (a collector restart signs everyone out, by design: there
// is nothing to steal from its disk). Failed sign-ins are slowed per user name and per address.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type http from 'node:http';
import { hasRole, type Role, type User, type UserStore } from '../approvals/users.js';

export const SESSION_COOKIE = 'rg_session';
const IDLE_MS = 30 * 60_000;
const ABSOLUTE_MS = 12 * 3600_000;
const MAX_SESSIONS = 10_000;
/**
 * Failed sign-ins allowed in a window before further attempts wait it out: few per user name (a
 * password guesser), more per address (many people may share one, behind a proxy or NAT).
 */
const FAILURES = { perUser: 5, perAddress: 20, windowMs: 60_000 };

export class AuthError extends Error {
  constructor(readonly status: 401 | 403 | 429, readonly code: string, message: string) {
    super(message);
    this.name = 'AuthError';
  }
}

interface Session {
  user: User;
  csrf: string;
  createdMs: number;
  lastMs: number;
}

export interface Principal {
  user: User;
  /** Present for a browser session: the token its writes must carry. */
  csrf?: string;
  via: 'session' | 'basic';
}

const digest = (sid: string) => createHash('sha256').update(sid).digest('base64url');

export class Authenticator {
  private readonly sessions = new Map<string, Session>();
  private readonly failures = new Map<string, { n: number; firstMs: number }>();

  constructor(private readonly users: UserStore, private readonly now = () => Date.now()) {}

  /** Checks a password and opens a session; returns the cookie value and the CSRF token. */
  login(name: string, password: string, address: string): { sid: string; csrf: string; user: User } {
    this.throttle(`user:${name}`);
    this.throttle(`addr:${address}`);
    const user = this.users.authenticate(name, password);
    if (!user) {
      this.fail(`user:${name}`);
      this.fail(`addr:${address}`);
      throw new AuthError(401, 'bad_credentials', 'wrong user name or password');
    }
    if (!hasRole(user, 'viewer')) throw new AuthError(403, 'no_role', `user ${user.name} has no role`);
    this.failures.delete(`user:${name}`);
    this.sweep();
    const sid = randomBytes(32).toString('base64url');
    const csrf = randomBytes(24).toString('base64url');
    const now = this.now();
    this.sessions.set(digest(sid), { user, csrf, createdMs: now, lastMs: now });
    return { sid, csrf, user };
  }

  logout(req: http.IncomingMessage): void {
    const sid = cookie(req, SESSION_COOKIE);
    if (sid) this.sessions.delete(digest(sid));
  }

  /**
   * The principal behind a request, or an AuthError. `write` requests from a browser session must
   * carry its CSRF token and come from this origin; Basic credentials are not sent cross-site by
   * browsers without a preflight this server never grants, so they need neither.
   */
  authenticate(req: http.IncomingMessage, opts: { write: boolean; role: Role }): Principal {
    const principal = this.fromSession(req) ?? this.fromBasic(req);
    if (!principal) {
      throw new AuthError(401, 'unauthenticated', 'sign in (dashboard session) or send HTTP Basic credentials of a user from `runguard user add`');
    }
    if (opts.write && principal.via === 'session') {
      const origin = req.headers.origin;
      if (origin !== undefined && origin !== `${isTls(req) ? 'https' : 'http'}://${req.headers.host}`) {
        throw new AuthError(403, 'bad_origin', `a request from ${origin} cannot act for a dashboard session`);
      }
      const token = req.headers['x-csrf-token'];
      if (typeof token !== 'string' || !safeEqual(token, principal.csrf!)) {
        throw new AuthError(403, 'csrf', 'missing or wrong CSRF token: reload the dashboard');
      }
    }
    if (!hasRole(principal.user, opts.role)) {
      throw new AuthError(403, 'forbidden', `user ${principal.user.name} does not have the ${opts.role} role`);
    }
    return principal;
  }

  /** Set-Cookie value for a new session, or for clearing it (sid undefined). */
  static cookieHeader(sid: string | undefined): string {
    const attrs = 'Path=/; HttpOnly; SameSite=Strict; Secure';
    return sid ? `${SESSION_COOKIE}=${sid}; ${attrs}; Max-Age=${ABSOLUTE_MS / 1000}` : `${SESSION_COOKIE}=; ${attrs}; Max-Age=0`;
  }

  private fromSession(req: http.IncomingMessage): Principal | undefined {
    const sid = cookie(req, SESSION_COOKIE);
    if (!sid) return undefined;
    const key = digest(sid);
    const s = this.sessions.get(key);
    const now = this.now();
    if (!s) return undefined;
    if (now - s.lastMs > IDLE_MS || now - s.createdMs > ABSOLUTE_MS) {
      this.sessions.delete(key);
      return undefined;
    }
    s.lastMs = now;
    return { user: s.user, csrf: s.csrf, via: 'session' };
  }

  private fromBasic(req: http.IncomingMessage): Principal | undefined {
    const m = /^Basic\s+([A-Za-z0-9+/=]+)$/i.exec(req.headers.authorization ?? '');
    if (!m) return undefined;
    const decoded = Buffer.from(m[1]!, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    const name = colon > 0 ? decoded.slice(0, colon) : '';
    this.throttle(`user:${name}`);
    const user = colon > 0 ? this.users.authenticate(name, decoded.slice(colon + 1)) : undefined;
    if (!user) {
      this.fail(`user:${name}`);
      throw new AuthError(401, 'bad_credentials', 'wrong user name or password');
    }
    return { user, via: 'basic' };
  }

  private throttle(key: string): void {
    const f = this.failures.get(key);
    if (!f) return;
    if (this.now() - f.firstMs > FAILURES.windowMs) this.failures.delete(key);
    else if (f.n >= (key.startsWith('addr:') ? FAILURES.perAddress : FAILURES.perUser)) throw new AuthError(429, 'throttled', 'too many failed sign-ins: wait a minute');
  }

  private fail(key: string): void {
    const f = this.failures.get(key);
    if (f && this.now() - f.firstMs <= FAILURES.windowMs) f.n++;
    else this.failures.set(key, { n: 1, firstMs: this.now() });
    if (this.failures.size > MAX_SESSIONS) this.failures.clear();
  }

  private sweep(): void {
    if (this.sessions.size < MAX_SESSIONS) return;
    const now = this.now();
    for (const [k, s] of this.sessions) if (now - s.lastMs > IDLE_MS || now - s.createdMs > ABSOLUTE_MS) this.sessions.delete(k);
    // Still full: drop the oldest (Map keeps insertion order).
    for (const k of this.sessions.keys()) {
      if (this.sessions.size < MAX_SESSIONS) break;
      this.sessions.delete(k);
    }
  }
}

export function isTls(req: http.IncomingMessage): boolean {
  return Boolean((req.socket as { encrypted?: boolean }).encrypted);
}

function cookie(req: http.IncomingMessage, name: string): string | undefined {
  const header = req.headers.cookie;
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}
