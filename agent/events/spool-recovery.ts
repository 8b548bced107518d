// Opening an existing spool: verify every record, cut a torn tail off the newest segment, and find
// where the sequence and the hash chain continue.
import { hash } from 'node:crypto';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import { AuditEventType } from '../../proto/index.js';
import { RecordReader } from './record-format.js';
import { fsyncDir, listSegments, readHead, SpoolError, type SegmentFile } from './segment-files.js';

export interface SpoolLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/** What the spool knows about one segment on disk. */
export interface SegmentState {
  firstSeq: number;
  /** firstSeq - 1 while the segment holds no durable record. */
  lastSeq: number;
  /** Durable bytes: readers never look past this, the next write starts here. */
  bytes: number;
  /** SHA-256 of the last record: what the head file needs when this segment is deleted. */
  lastHash: Buffer | null;
  path: string;
}

export interface Recovered {
  segments: SegmentState[];
  /** Read-write handle on the newest segment, positioned by `bytes`. */
  active: FileHandle | null;
  nextSeq: number;
  prevHash: Buffer;
}

export const ZERO_HASH: Buffer = Buffer.alloc(32);

interface ScanContext {
  agentId: string;
  logger: SpoolLogger;
  /** Bytes at the end of a file that one unsynced write can cover; see spool.ts. */
  tornTailWindow: number;
}

export async function recoverSpool(dir: string, ctx: ScanContext): Promise<Recovered> {
  const files = await listSegments(dir);
  const segments: SegmentState[] = [];
  let active: FileHandle | null = null;
  try {
    for (const [i, file] of files.entries()) {
      const isLast = i === files.length - 1;
      const { state, fh } = await scanSegment(file, isLast, ctx);
      checkContinuity(segments.at(-1), state, file);
      segments.push(state);
      active = fh;
    }
    active = await dropEmptyNewest(dir, segments, active);
    const last = segments.at(-1);
    if (last) return { segments, active, nextSeq: last.lastSeq + 1, prevHash: last.lastHash ?? ZERO_HASH };
    return { segments, active: null, ...(await continueFromHead(dir, ctx.agentId)) };
  } catch (err) {
    await active?.close();
    throw err;
  }
}

async function scanSegment(file: SegmentFile, isLast: boolean, ctx: ScanContext): Promise<{ state: SegmentState; fh: FileHandle | null }> {
  // Only the newest segment can have a torn tail to cut; the rest are opened read-only.
  const fh = await open(file.path, isLast ? 'r+' : 'r');
  try {
    const size = (await fh.stat()).size;
    const reader = new RecordReader(fh, size);
    let count = 0;
    let first: Buffer | null = null;
    let last: Buffer | null = null;
    let lastOffset = 0;
    for (let rec = await reader.next(); rec; rec = await reader.next()) {
      count++;
      first ??= rec.payload;
      last = rec.payload;
      lastOffset = rec.offset;
    }
    if (reader.corruption) await handleCorruption(fh, file.path, size, reader.offset, reader.corruption.reason, isLast, ctx);
    const state: SegmentState = {
      firstSeq: file.firstSeq, lastSeq: file.firstSeq + count - 1, bytes: reader.offset,
      lastHash: last ? hash('sha256', last, 'buffer') : null, path: file.path,
    };
    if (first && last) {
      checkRecord(first, file, 0, file.firstSeq, ctx.agentId);
      checkRecord(last, file, lastOffset, state.lastSeq, ctx.agentId);
    }
    if (!isLast) await fh.close();
    return { state, fh: isLast ? fh : null };
  } catch (err) {
    await fh.close();
    throw err;
  }
}

async function handleCorruption(
  fh: FileHandle, file: string, size: number, offset: number, reason: string, isLast: boolean, ctx: ScanContext,
): Promise<void> {
  // Each flush ends with fdatasync, so only the last write of the newest segment can be torn by
  // a crash. A bad record further from the end lies in data that was synced: that is damage.
  if (!isLast || size - offset > ctx.tornTailWindow) {
    throw new SpoolError(
      `spool segment ${file} is corrupt at byte offset ${offset}: ${reason}. ` +
      'Events there were already durable; copy the spool directory for inspection, then move the damaged file away to start the agent',
      file, offset);
  }
  ctx.logger.warn({ file, offset, discardedBytes: size - offset, reason },
    `spool: truncating torn tail of ${file} at byte offset ${offset} (${reason}); those events were never acknowledged as durable`);
  await fh.truncate(offset);
  await fh.datasync();
}

function checkRecord(payload: Buffer, file: SegmentFile, offset: number, expectSeq: number, agentId: string): void {
  let seq: number;
  let eventAgent: string;
  try {
    const obj = AuditEventType.toObject(AuditEventType.decode(payload), { longs: Number }) as { seq?: number; agentId?: string };
    seq = obj.seq ?? 0;
    eventAgent = obj.agentId ?? '';
  } catch (err) {
    throw new SpoolError(`spool segment ${file.path}: record at byte offset ${offset} passes its crc but is not an AuditEvent (${(err as Error).message})`, file.path, offset);
  }
  if (eventAgent !== agentId) {
    throw new SpoolError(
      `spool segment ${file.path} holds events of agent "${eventAgent}", not of agent "${agentId}": ` +
      'each agent needs its own state directory; ship or move the old spool away before reusing it',
      file.path, offset);
  }
  if (seq !== expectSeq) {
    throw new SpoolError(`spool segment ${file.path}: record at byte offset ${offset} has seq ${seq}, expected ${expectSeq} from its position`, file.path, offset);
  }
}

function checkContinuity(prev: SegmentState | undefined, cur: SegmentState, file: SegmentFile): void {
  if (!prev) return;
  if (prev.lastSeq < prev.firstSeq) {
    throw new SpoolError(`spool segment ${prev.path} is empty but is not the newest segment; move it away`, prev.path);
  }
  if (cur.firstSeq !== prev.lastSeq + 1) {
    throw new SpoolError(
      `spool segment ${file.path} starts at seq ${cur.firstSeq} but ${prev.path} ends at seq ${prev.lastSeq}: events are missing or duplicated`,
      file.path);
  }
}

/**
 * A newest segment with no record left is one whose creation or first write a crash cut short;
 * the next write recreates it under the same name, so it is simply removed.
 */
async function dropEmptyNewest(dir: string, segments: SegmentState[], active: FileHandle | null): Promise<FileHandle | null> {
  const last = segments.at(-1);
  if (!last || last.lastSeq >= last.firstSeq) return active;
  await active?.close();
  await unlink(last.path);
  await fsyncDir(dir);
  segments.pop();
  const prev = segments.at(-1);
  // The segment before it was closed read-only by the scan; appends go there now.
  return prev ? open(prev.path, 'r+') : null;
}

async function continueFromHead(dir: string, agentId: string): Promise<{ nextSeq: number; prevHash: Buffer }> {
  const head = await readHead(dir);
  if (!head) return { nextSeq: 1, prevHash: ZERO_HASH };
  if (head.agentId && head.agentId !== agentId) {
    throw new SpoolError(
      `spool head file in ${dir} belongs to agent "${head.agentId}", not to agent "${agentId}": each agent needs its own state directory`,
      dir);
  }
  return { nextSeq: head.seq + 1, prevHash: head.hash };
}
