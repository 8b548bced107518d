// The collector's local users: DATA_DIR/users.json, passwords hashed with scrypt and a random salt per
// user. Roles: viewer (reads), approver (decides approval requests), admin (everything). Groups name
// who may decide which requests: a review rule's `approvers: dba` admits members of "dba" only.
//
// Approver user names are matched against the CI actor of the job that asks (GITHUB_ACTOR,
// GITLAB_USER_LOGIN, ...): a user whose name equals the requesting job's actor can never approve that
// request. So name approvers as they are named in the CI system.
import { randomBytes, scryptSync, timingSafeEqual } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';

export const ROLES = ['viewer', 'approver', 'admin'] as const;
export type Role = (typeof ROLES)[number];

export interface User {
  name: string;
  roles: Role[];
  groups: string[];
}

interface StoredUser extends User {
  /** scrypt parameters, salt and derived key, base64. */
  password: { alg: 'scrypt'; N: number; r: number; p: number; salt: string; hash: string };
  created: string;
}

const SCRYPT = { N: 16384, r: 8, p: 1, keyLen: 32 };
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/;
const GROUP_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

export function usersFile(dataDir: string): string {
  return path.join(dataDir, 'users.json');
}

function hashPassword(password: string, salt: Buffer, p = SCRYPT): Buffer {
  return scryptSync(password.normalize('NFC'), salt, p.keyLen, { N: p.N, r: p.r, p: p.p });
}

export class UserStore {
  private users = new Map<string, StoredUser>();

  constructor(readonly file: string) {
    this.reload();
  }

  static forDataDir(dataDir: string): UserStore {
    return new UserStore(usersFile(dataDir));
  }

  /** Rereads the file (users added with `runguard user add` while the collector runs count at once). */
  private reload(): void {
    let text: string;
    try {
      text = readFileSync(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return void (this.users = new Map());
      throw err;
    }
    const parsed = JSON.parse(text) as { users?: StoredUser[] };
    this.users = new Map((parsed.users ?? []).map((u) => [u.name, u]));
  }

  list(): User[] {
    this.reload();
    return [...this.users.values()].map(({ name, roles, groups }) => ({ name, roles, groups }));
  }

  /** The user, if the name exists and the password is theirs. */
  authenticate(name: string, password: string): User | undefined {
    this.reload();
    const u = this.users.get(name);
    // A missing user costs the same scrypt as a wrong password: no user-name oracle by timing.
    const salt = u ? Buffer.from(u.password.salt, 'base64') : Buffer.alloc(16);
    const params = u ? { N: u.password.N, r: u.password.r, p: u.password.p, keyLen: Buffer.from(u.password.hash, 'base64').length } : SCRYPT;
    const got = hashPassword(password, salt, params);
    if (!u) return undefined;
    const want = Buffer.from(u.password.hash, 'base64');
    if (want.length !== got.length || !timingSafeEqual(want, got)) return undefined;
    return { name: u.name, roles: u.roles, groups: u.groups };
  }

  /** Adds or replaces a user. */
  add(user: User, password: string): void {
    if (!NAME_RE.test(user.name)) throw new Error(`user name "${user.name}" must be 1-64 letters, digits, ".", "_", "@" or "-"`);
    if (!user.roles.length) throw new Error('give at least one role (viewer, approver or admin)');
    for (const r of user.roles) if (!ROLES.includes(r)) throw new Error(`unknown role "${r}" (known: ${ROLES.join(', ')})`);
    for (const g of user.groups) if (!GROUP_RE.test(g)) throw new Error(`group "${g}" must be letters, digits, ".", "_" or "-"`);
    if (password.length < 8) throw new Error('the password must be at least 8 characters');
    this.reload();
    const salt = randomBytes(16);
    this.users.set(user.name, {
      name: user.name, roles: [...new Set(user.roles)], groups: [...new Set(user.groups)],
      password: { alg: 'scrypt', N: SCRYPT.N, r: SCRYPT.r, p: SCRYPT.p, salt: salt.toString('base64'), hash: hashPassword(password, salt).toString('base64') },
      created: new Date().toISOString(),
    });
    mkdirSync(path.dirname(this.file), { recursive: true, mode: 0o700 });
    writeFileSync(this.file + '.tmp', JSON.stringify({ users: [...this.users.values()] }, null, 2) + '\n', { mode: 0o600 });
    renameSync(this.file + '.tmp', this.file);
  }
}

export function hasRole(user: User, role: Role): boolean {
  if (user.roles.includes('admin')) return true;
  if (role === 'viewer') return user.roles.length > 0;
  return user.roles.includes(role);
}
