// The read-only view of a spool directory for `runguard events --state-dir`, usable while the
// agent is running because it never takes the directory over for writing.
import { open, type FileHandle } from 'node:fs/promises';
import { RecordReader, type SpoolRecord } from './record-format.js';
import { listSegments, SpoolError } from './segment-files.js';

/**
 * Reads a spool directory without opening it for writing, e.g. while the agent is running. The
 * newest segment may end in a record still being written; reading stops there.
 */
export async function* readSpoolDir(dir: string, fromSeq = 1): AsyncGenerator<SpoolRecord> {
  let files;
  try {
    files = await listSegments(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    throw new SpoolError(`no spool at ${dir}: the directory does not exist (has the agent run with this state directory?)`, dir);
  }
  for (const [i, file] of files.entries()) {
    const next = files[i + 1];
    if (next && next.firstSeq <= fromSeq) continue;
    let fh: FileHandle;
    try {
      fh = await open(file.path, 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // acked and deleted since the listing
      throw err;
    }
    try {
      const reader = new RecordReader(fh, (await fh.stat()).size);
      let seq = file.firstSeq;
      for (let rec = await reader.next(); rec; rec = await reader.next(), seq++) {
        if (seq >= fromSeq) yield { seq, bytes: rec.payload };
      }
      if (reader.corruption && next) {
        throw new SpoolError(`spool segment ${file.path} is corrupt at byte offset ${reader.corruption.offset}: ${reader.corruption.reason}`,
          file.path, reader.corruption.offset);
      }
    } finally {
      await fh.close();
    }
  }
}

