// The read API for auditors and witnesses, over plain HTTP: everything in it is public by design
// (signed, hashed, verifiable). C2SP tlog-tiles paths for the checkpoint, hash tiles and entry
// bundles, so any independent implementation can recompute every proof; plus proofs by index and
// size, the agents' keys and batch signatures that `runguard verify` needs (with each agent's latest
// heartbeat, operational and unverified), and an event query.
import http from 'node:http';
import type { Logger } from 'pino';
import { eventToJson, EventKind } from '../proto/index.js';
import {
  buildTile, consistencyProof, encodeEntryBundle, inclusionProof, parseTilePath, tileWidth, TILE_WIDTH,
} from './merkle/index.js';
import { leafHash } from './merkle/hash.js';
import type { EventQuery, LogStore } from './store/store.js';
import { statusJson } from './heartbeat.js';

export interface ReadApiOptions {
  store: LogStore;
  /** The newest published checkpoint: tiles and proofs are served for sizes it covers. */
  checkpoint: () => { note: string; size: number } | undefined;
  log: Logger;
}

class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

function intParam(u: URL, name: string, required: boolean): number | undefined {
  const v = u.searchParams.get(name);
  if (v === null || v === '') {
    if (required) throw new HttpError(400, `missing query parameter ${name}`);
    return undefined;
  }
  if (!/^\d+$/.test(v)) throw new HttpError(400, `${name} must be a non-negative integer`);
  return Number(v);
}

export function eventQueryFromUrl(u: URL): EventQuery {
  const s = (k: string) => u.searchParams.get(k) ?? undefined;
  const time = (k: string) => {
    const v = s(k);
    if (v === undefined) return undefined;
    const ms = /^\d+$/.test(v) ? Number(v) : Date.parse(v);
    if (Number.isNaN(ms)) throw new HttpError(400, `${k} must be a time (RFC 3339 or epoch ms)`);
    return ms;
  };
  const kindName = s('kind');
  let kind: number | undefined;
  if (kindName !== undefined) {
    kind = EventKind[kindName.startsWith('EVENT_KIND_') ? kindName : `EVENT_KIND_${kindName.toUpperCase()}`];
    if (kind === undefined) throw new HttpError(400, `unknown event kind ${kindName}`);
  }
  return {
    agentId: s('agent'), sessionId: s('session'), kind, repository: s('repository'), runId: s('run'), job: s('job'),
    sinceMs: time('since'), untilMs: time('until'), afterIndex: intParam(u, 'after', false), limit: intParam(u, 'limit', false),
  };
}

export function createReadApi(opts: ReadApiOptions): http.RequestListener {
  const { store } = opts;
  const published = () => {
    const cp = opts.checkpoint();
    if (!cp) throw new HttpError(404, 'no checkpoint has been published yet');
    return cp;
  };
  const routes: [RegExp, (m: RegExpExecArray, u: URL, res: http.ServerResponse) => Promise<void> | void][] = [
    [/^\/checkpoint$/, (_m, _u, res) => send(res, 200, 'text/plain; charset=utf-8', published().note)],
    [/^\/tile\/.+$/, async (_m, u, res) => {
      const parsed = parseTilePath(u.pathname.slice(1));
      if (!parsed.ok) throw new HttpError(400, parsed.reason);
      const tile = parsed.value;
      const size = published().size;
      if (tile.entries) {
        const width = tileWidth(size, 0, tile.index);
        if (width < tile.width || width === 0) throw new HttpError(404, `entry bundle ${tile.index} is not that wide at size ${size}`);
        const leaves = store.leaves(tile.index * TILE_WIDTH, tile.index * TILE_WIDTH + tile.width);
        send(res, 200, 'application/octet-stream', encodeEntryBundle(leaves.map((l) => l.bytes)), tile.width === TILE_WIDTH);
        return;
      }
      const width = tileWidth(size, tile.level, tile.index);
      if (width < tile.width || width === 0) throw new HttpError(404, `tile ${u.pathname} is not that wide at size ${size}`);
      // Full tiles never change; a partial one is replaced by a wider one as the log grows.
      send(res, 200, 'application/octet-stream', await buildTile(tile, store.getNode), tile.width === TILE_WIDTH);
    }],
    [/^\/proof\/inclusion$/, async (_m, u, res) => {
      const index = intParam(u, 'index', true)!;
      const size = intParam(u, 'size', false) ?? published().size;
      if (size > store.size() || index >= size) throw new HttpError(400, `index ${index} is not in a tree of size ${size} (log size ${store.size()})`);
      const hashes = await inclusionProof(index, size, store.getNode);
      json(res, { index, size, leafHash: Buffer.from(store.getNode(0, index)).toString('base64'), hashes: hashes.map(b64) });
    }],
    [/^\/proof\/consistency$/, async (_m, u, res) => {
      const from = intParam(u, 'from', true)!;
      const to = intParam(u, 'to', false) ?? published().size;
      if (from < 1 || from > to || to > store.size()) throw new HttpError(400, `no consistency proof from ${from} to ${to} (log size ${store.size()})`);
      json(res, { from, to, hashes: (await consistencyProof(from, to, store.getNode)).map(b64) });
    }],
    [/^\/agents$/, (_m, _u, res) => {
      const statuses = new Map(store.agentStatuses().map((st) => [st.agentId, st]));
      json(res, store.agents().map((a) => ({
        agentId: a.agentId, signingKey: b64(a.signingKey), certificate: a.certificate, lastSeq: a.lastSeq, lastIndex: a.lastIndex,
        lastSeen: new Date(a.lastSeenMs).toISOString(),
        batches: store.batchSignatures(a.agentId).map((b) => ({ lastSeq: b.lastSeq, signature: b64(b.signature) })),
        // The latest heartbeat (operational, not verified): null until the agent sends one.
        status: statusJson(statuses.get(a.agentId)),
      })));
    }],
    [/^\/gaps$/, (_m, _u, res) => json(res, store.gaps())],
    [/^\/events$/, (_m, u, res) => {
      const rows = store.queryEvents(eventQueryFromUrl(u));
      res.writeHead(200, { 'content-type': 'application/x-ndjson' });
      for (const r of rows) res.write(JSON.stringify({ index: r.index, leafHash: b64(leafHash(r.bytes)), event: eventToJson(r.bytes) }) + '\n');
      res.end();
    }],
  ];
  return (req, res) => {
    const u = new URL(req.url ?? '/', 'http://collector');
    const route = req.method === 'GET' ? routes.find(([re]) => re.test(u.pathname)) : undefined;
    if (!route) {
      send(res, req.method === 'GET' ? 404 : 405, 'text/plain', 'not found\n');
      return;
    }
    Promise.resolve()
      .then(() => route[1](route[0].exec(u.pathname)!, u, res))
      .catch((err: Error) => {
        const status = err instanceof HttpError ? err.status : 500;
        if (status === 500) opts.log.error({ err, path: u.pathname }, 'read API error');
        if (!res.headersSent) send(res, status, 'text/plain; charset=utf-8', `${err.message}\n`);
        else res.destroy();
      });
  };
}

const b64 = (b: Uint8Array) => Buffer.from(b).toString('base64');

function send(res: http.ServerResponse, status: number, type: string, body: string | Buffer, immutable = false): void {
  res.writeHead(status, { 'content-type': type, 'cache-control': immutable ? 'public, max-age=31536000, immutable' : 'no-store' });
  res.end(body);
}

function json(res: http.ServerResponse, value: unknown): void {
  send(res, 200, 'application/json', JSON.stringify(value));
}
