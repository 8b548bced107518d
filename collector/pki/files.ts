// Key and certificate files: exact modes regardless of umask, durable writes, and a refusal to read
// a private key that other users can read (as ssh does).
import { closeSync, fchmodSync, fsyncSync, openSync, readFileSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';

/** Errors a user can act on: a refused overwrite, a missing or unsafe file, a bad name. */
export class PkiError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PkiError';
  }
}

export const PRIVATE_MODE = 0o600;
export const PUBLIC_MODE = 0o644;
export const DIR_MODE = 0o700;

function writeFd(fd: number, data: string | Uint8Array, mode: number): void {
  fchmodSync(fd, mode);
  const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  let off = 0;
  while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
  fsyncSync(fd);
}

/** Creates `file` with `data`; fails (EEXIST) if it exists. */
export function createFileExclusive(file: string, data: string | Uint8Array, mode: number): void {
  const fd = openSync(file, 'wx', mode);
  try {
    writeFd(fd, data, mode);
  } catch (err) {
    closeSync(fd);
    try { unlinkSync(file); } catch { /* already gone */ }
    throw err;
  }
  closeSync(fd);
}

/** Replaces `file` atomically (write a temporary file in the same directory, then rename). */
export function replaceFile(file: string, data: string | Uint8Array, mode: number): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
  createFileExclusive(tmp, data, mode);
  try {
    renameSync(tmp, file);
  } catch (err) {
    try { unlinkSync(tmp); } catch { /* already gone */ }
    throw err;
  }
}

/** fsyncs a directory so that the names created in it survive a crash. */
export function syncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, 'r');
    fsyncSync(fd);
  } catch {
    // Some file systems do not support fsync on directories; the files themselves are synced.
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** Whether `file` exists (any type). */
export function exists(file: string): boolean {
  try {
    statSync(file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

/** Reads a file, turning "not found" into a PkiError that names what was expected there. */
export function readRequired(file: string, what: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new PkiError(`${file} not found (expected ${what})`);
    throw err;
  }
}

/** Reads a private key file; refuses one that group or other users can access. */
export function readPrivate(file: string, what: string): Buffer {
  const data = readRequired(file, what);
  if (process.platform !== 'win32') {
    const mode = statSync(file).mode & 0o777;
    if (mode & 0o077) {
      throw new PkiError(`${file} (${what}) is accessible by other users (mode ${mode.toString(8).padStart(4, '0')}); run: chmod 600 ${file}`);
    }
  }
  return data;
}
