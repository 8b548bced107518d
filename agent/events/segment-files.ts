// Names and small files of a spool directory: `<20-digit first seq>.seg` segments and the `head`
// file that carries seq/hash continuity once every segment before the newest has been deleted.
import { open, readdir, readFile, rename, rm } from 'node:fs/promises';
import path from 'node:path';

const SEGMENT_RE = /^(\d{20})\.seg$/;
const HEAD_FILE = 'head';
const HEAD_TMP = 'head.tmp';

export class SpoolError extends Error {
  constructor(message: string, readonly file?: string, readonly offset?: number) {
    super(message);
    this.name = 'SpoolError';
  }
}

export function segmentFileName(firstSeq: number): string {
  return `${String(firstSeq).padStart(20, '0')}.seg`;
}

export interface SegmentFile {
  firstSeq: number;
  path: string;
}

/** Segments of `dir` in seq order; zero padding makes name order numeric order. */
export async function listSegments(dir: string): Promise<SegmentFile[]> {
  const names = (await readdir(dir)).sort();
  const out: SegmentFile[] = [];
  for (const name of names) {
    const m = SEGMENT_RE.exec(name);
    if (!m) continue;
    const firstSeq = Number(m[1]);
    if (!Number.isSafeInteger(firstSeq) || firstSeq < 1) {
      throw new SpoolError(`spool segment ${path.join(dir, name)}: first seq out of range; move the file away`, path.join(dir, name));
    }
    out.push({ firstSeq, path: path.join(dir, name) });
  }
  return out;
}

/** Makes a file creation, rename or deletion in `dir` durable. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export interface Head {
  /** Last seq of the newest deleted segment. */
  seq: number;
  /** SHA-256 of that event's bytes: the prevHash of seq + 1. */
  hash: Buffer;
  agentId: string;
}

export async function readHead(dir: string): Promise<Head | null> {
  const file = path.join(dir, HEAD_FILE);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new SpoolError(`spool head file ${file} is not JSON; restore it or move the spool directory away`, file);
  }
  const { seq, hash, agentId } = (parsed ?? {}) as Record<string, unknown>;
  if (!Number.isSafeInteger(seq) || (seq as number) < 0 || typeof hash !== 'string' || !/^[0-9a-f]{64}$/.test(hash)) {
    throw new SpoolError(`spool head file ${file} needs {"seq": integer, "hash": 64 hex digits}; restore it or move the spool directory away`, file);
  }
  return { seq: seq as number, hash: Buffer.from(hash, 'hex'), agentId: typeof agentId === 'string' ? agentId : '' };
}

/** tmp + fsync + rename + dir fsync: a crash leaves either the old head or the new one. */
export async function writeHead(dir: string, head: Head): Promise<void> {
  const tmp = path.join(dir, HEAD_TMP);
  const body = JSON.stringify({ seq: head.seq, hash: head.hash.toString('hex'), agentId: head.agentId }) + '\n';
  const fh = await open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(body);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path.join(dir, HEAD_FILE));
  await fsyncDir(dir);
}

/** A head.tmp is a head write that a crash interrupted; the real head is still intact. */
export async function removeStaleHeadTmp(dir: string): Promise<void> {
  await rm(path.join(dir, HEAD_TMP), { force: true });
}
