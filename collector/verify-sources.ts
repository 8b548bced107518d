// The two places `runguard verify` reads a log from: the collector's store on disk (read-only), or
// a collector's public read API (checkpoint, tlog-tiles entry bundles and hash tiles, agent keys).
import { SqliteStore } from './store/sqlite.js';
import { decodeEntryBundle, entriesPath, tilePath, tileWidth, TILE_WIDTH, tileHashes } from './merkle/index.js';
import type { AgentKeys, LogSource } from './verify.js';

export function storeSource(dataDir: string): LogSource & { close(): void } {
  const store = SqliteStore.open(dataDir, { readonly: true });
  // Stored leaf hashes are read a range at a time, beside the leaves, not one query per leaf.
  const level0 = store.db.prepare('SELECT idx, hash FROM nodes WHERE level = 0 AND idx >= ? AND idx < ?');
  let hashes = new Map<number, Buffer>();
  return {
    describe: `store ${dataDir}`,
    async checkpointNote() {
      const cp = store.latestCheckpoint();
      if (!cp) throw new Error(`${dataDir}: the store has no checkpoint yet`);
      return cp.note;
    },
    async *leaves(from: number, to: number) {
      for (let i = from; i < to; i += 4096) {
        const end = Math.min(to, i + 4096);
        hashes = new Map((level0.all(i, end) as { idx: number; hash: Buffer }[]).map((r) => [r.idx, r.hash]));
        for (const l of store.leaves(i, end)) yield { index: l.index, bytes: l.bytes };
      }
    },
    async treeLeafHash(index: number) {
      return hashes.get(index);
    },
    async agents(): Promise<AgentKeys[]> {
      return store.agents().map((a) => ({ agentId: a.agentId, signingKey: a.signingKey, certificate: a.certificate, batches: store.batchSignatures(a.agentId) }));
    },
    async gaps() {
      return store.gaps();
    },
    close: () => store.close(),
  };
}

export function httpSource(baseUrl: string): LogSource {
  const base = baseUrl.replace(/\/$/, '');
  const get = async (p: string): Promise<Buffer> => {
    const res = await fetch(`${base}/${p}`).catch((err: Error) => {
      throw new Error(`cannot reach ${base}: ${err.cause instanceof Error ? err.cause.message : err.message}`);
    });
    if (!res.ok) throw new Error(`${base}/${p}: ${res.status} ${(await res.text()).trim()}`);
    return Buffer.from(await res.arrayBuffer());
  };
  let size = 0;
  const level0 = new Map<number, Uint8Array[]>();
  return {
    describe: `collector ${base}`,
    async checkpointNote() {
      const note = (await get('checkpoint')).toString('utf8');
      size = Number(note.split('\n')[1]);
      return note;
    },
    async *leaves(from: number, to: number) {
      // Entry bundles, fetched a few at a time ahead of the reader.
      const first = Math.floor(from / TILE_WIDTH);
      const last = Math.ceil(to / TILE_WIDTH);
      const fetchBundle = async (n: number) => {
        const width = tileWidth(to, 0, n);
        const bytes = await get(entriesPath(n, width));
        const decoded = decodeEntryBundle(bytes, width);
        if (!decoded.ok) throw new Error(`entry bundle ${n}: ${decoded.reason}`);
        return decoded.value;
      };
      const ahead: Promise<Uint8Array[]>[] = [];
      for (let n = first; n < last; n++) {
        while (ahead.length < 8 && n + ahead.length < last) ahead.push(fetchBundle(n + ahead.length));
        const entries = await ahead.shift()!;
        for (const [i, e] of entries.entries()) {
          const index = n * TILE_WIDTH + i;
          if (index >= from && index < to) yield { index, bytes: Buffer.from(e) };
        }
      }
    },
    async treeLeafHash(index: number) {
      const n = Math.floor(index / TILE_WIDTH);
      let hashes = level0.get(n);
      if (!hashes) {
        const width = tileWidth(size, 0, n);
        const t = tileHashes(await get(tilePath({ level: 0, index: n, width })));
        if (!t.ok) throw new Error(`tile 0/${n}: ${t.reason}`);
        hashes = t.value;
        level0.clear(); // leaves are read in order: one tile at a time is enough
        level0.set(n, hashes);
      }
      return hashes[index % TILE_WIDTH];
    },
    async agents(): Promise<AgentKeys[]> {
      const list = JSON.parse((await get('agents')).toString('utf8')) as { agentId: string; signingKey: string; certificate: string; batches: { lastSeq: number; signature: string }[] }[];
      return list.map((a) => ({
        agentId: a.agentId, signingKey: Buffer.from(a.signingKey, 'base64'), certificate: a.certificate,
        batches: a.batches.map((b) => ({ lastSeq: b.lastSeq, signature: Buffer.from(b.signature, 'base64') })),
      }));
    },
    async gaps() {
      return JSON.parse((await get('gaps')).toString('utf8'));
    },
  };
}
