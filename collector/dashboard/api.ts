// The dashboard's JSON API under /api/ (approvals live in collector/approvals/http.ts). Everything
// here needs a signed-in user; lists are cursor-paginated and bounded, and every list is answered
// from an index or a rollup table, so the dashboard stays quick with millions of events.
import type http from 'node:http';
import type { Logger } from 'pino';
import { eventToJson, EventKind } from '../../proto/index.js';
import { inclusionProof } from '../merkle/index.js';
import type { EventQuery, JobQuery, LogStore, StoredCheckpoint } from '../store/store.js';
import type { ApprovalRegistry } from '../approvals/registry.js';
import { Authenticator, AuthError, isTls, type Principal } from './auth.js';
import type { Verifier } from './verifier.js';
import { statusJson } from '../heartbeat.js';
import { BodyError, readJsonObject } from '../json-body.js';

export interface DashboardApiOptions {
  store: LogStore;
  auth: Authenticator;
  approvals: ApprovalRegistry;
  checkpoint: () => StoredCheckpoint | undefined;
  verifierKey: string;
  verifier: Verifier;
  log: Logger;
}

export class ApiError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

/** Text search reads event bytes; without a time range it looks at this many newest events. */
export const TEXT_SCAN_WINDOW = 200_000;

type Handler = (ctx: { req: http.IncomingMessage; res: http.ServerResponse; url: URL; match: RegExpExecArray; who: Principal }) => unknown;

export function createDashboardApi(opts: DashboardApiOptions): (req: http.IncomingMessage, res: http.ServerResponse) => boolean {
  const { store, auth, log } = opts;
  const get: [RegExp, Handler][] = [
    [/^\/api\/session$/, ({ who }) => ({ user: who.user, csrf: who.csrf ?? null })],
    [/^\/api\/overview$/, ({ url }) => overview(url)],
    [/^\/api\/events$/, ({ url }) => listEvents(url)],
    [/^\/api\/events\/(\d+)$/, ({ match }) => eventDetail(Number(match[1]))],
    [/^\/api\/jobs$/, ({ url }) => ({ jobs: store.jobs(jobQuery(url)) })],
    [/^\/api\/jobs\/(.+)$/, ({ match }) => jobDetail(decodeURIComponent(match[1]!))],
    [/^\/api\/sessions\/([^/]+)$/, ({ match }) => sessionDetail(decodeURIComponent(match[1]!))],
    [/^\/api\/agents$/, () => ({ agents: agents() })],
    [/^\/api\/integrity$/, () => integrity()],
  ];
  const post: [RegExp, Handler][] = [
    [/^\/api\/logout$/, ({ req, res }) => {
      auth.logout(req);
      res.setHeader('set-cookie', Authenticator.cookieHeader(undefined));
      return { ok: true };
    }],
    [/^\/api\/integrity\/verify$/, ({ who }) => {
      if (!who.user.roles.includes('admin')) throw new ApiError(403, 'forbidden', 'only an admin can start a verify run');
      return { started: opts.verifier.start(`requested by ${who.user.name}`) };
    }],
  ];

  return (req, res) => {
    const url = new URL(req.url ?? '/', 'http://collector');
    if (!url.pathname.startsWith('/api/') || url.pathname.startsWith('/api/approvals')) return false;
    handle(req, res, url).catch((err: Error) => {
      const status = err instanceof ApiError || err instanceof AuthError || err instanceof BodyError ? err.status : 500;
      if (status === 500) log.error({ err, path: url.pathname }, 'dashboard API error');
      sendJson(res, status, { error: (err as ApiError).code ?? 'internal', message: err.message });
    });
    return true;
  };

  async function handle(req: http.IncomingMessage, res: http.ServerResponse, url: URL): Promise<void> {
    if (req.method === 'POST' && url.pathname === '/api/login') return login(req, res);
    const write = req.method !== 'GET';
    const routes = req.method === 'GET' ? get : req.method === 'POST' ? post : undefined;
    if (!routes) throw new ApiError(405, 'method', `${req.method} is not supported here`);
    const route = routes.find(([re]) => re.test(url.pathname));
    if (!route) throw new ApiError(404, 'not_found', `no such endpoint: ${req.method} ${url.pathname}`);
    const who = auth.authenticate(req, { write, role: 'viewer' });
    if (write) await readJsonObject(req);
    const value = await route[1]({ req, res, url, match: route[0].exec(url.pathname)!, who });
    sendJson(res, 200, value);
  }

  async function login(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const origin = req.headers.origin;
    // Login CSRF: a page elsewhere must not sign a victim's browser into the attacker's account.
    if (origin !== undefined && origin !== `${isTls(req) ? 'https' : 'http'}://${req.headers.host}`) {
      throw new ApiError(403, 'bad_origin', `sign-in from ${origin} refused`);
    }
    const body = await readJsonObject(req);
    if (typeof body.user !== 'string' || typeof body.password !== 'string') throw new ApiError(400, 'bad_request', 'send {"user": "...", "password": "..."}');
    const address = req.socket.remoteAddress ?? '';
    const s = auth.login(body.user, body.password, address);
    log.info({ user: s.user.name, address }, 'dashboard sign-in');
    res.setHeader('set-cookie', Authenticator.cookieHeader(s.sid));
    sendJson(res, 200, { user: s.user, csrf: s.csrf });
  }

  function overview(url: URL) {
    const range = RANGES[url.searchParams.get('range') ?? '24h'];
    if (!range) throw new ApiError(400, 'bad_request', `range must be one of ${Object.keys(RANGES).join(', ')}`);
    const now = Date.now();
    const since = now - range.ms;
    const decisions = store.decisionCounts(since, now + 60_000, range.bucketMs);
    const cp = opts.checkpoint();
    return {
      now, range: { sinceMs: since, bucketMs: range.bucketMs },
      size: store.size(),
      checkpoint: cp ? { size: cp.size, timeMs: cp.timeMs, root: Buffer.from(cp.root).toString('base64') } : null,
      decisions,
      // Counted in SQL: every job of the range, not the first thousand read into memory.
      jobs: store.jobCounts(since),
      pendingApprovals: opts.approvals.list({ state: 'pending', limit: 1000 }).length,
      agents: store.agents().map((a) => ({ agentId: a.agentId, lastSeenMs: a.lastSeenMs })),
      verify: opts.verifier.last(),
    };
  }

  function listEvents(url: URL) {
    const q = eventQuery(url);
    let window: number | undefined;
    if (q.text && q.sinceMs === undefined && q.untilMs === undefined) {
      window = TEXT_SCAN_WINDOW;
      q.afterIndex = Math.max(q.afterIndex ?? -1, (q.beforeIndex ?? store.size()) - TEXT_SCAN_WINDOW - 1);
    }
    const rows = store.queryEvents(q);
    return {
      events: rows.map((r) => ({ index: r.index, event: eventToJson(r.bytes) })),
      // Newest first: the next page is below the last index shown; the live feed asks after the first.
      next: rows.length === q.limit ? rows[rows.length - 1]!.index : null,
      textScanWindow: window ?? null,
    };
  }

  async function eventDetail(index: number) {
    const leaf = store.leaf(index);
    if (!leaf) throw new ApiError(404, 'not_found', `no event at index ${index} (log size ${store.size()})`);
    const cp = opts.checkpoint();
    const proof = cp && index < cp.size
      ? { size: cp.size, hashes: (await inclusionProof(index, cp.size, store.getNode)).map((h) => Buffer.from(h).toString('base64')) }
      : null;
    return {
      index, agentId: leaf.agentId, seq: leaf.seq, event: eventToJson(leaf.bytes), leaf: leaf.bytes.toString('base64'),
      checkpoint: cp?.note ?? null, verifierKey: opts.verifierKey, proof,
    };
  }

  function jobDetail(key: string) {
    const job = store.job(key);
    if (!job) throw new ApiError(404, 'not_found', `no job ${key}`);
    const processes = store.queryEvents({ jobKey: key, kind: EventKind.EVENT_KIND_PROCESS_EXEC, limit: 2000 })
      .map((r) => ({ index: r.index, event: eventToJson(r.bytes) }));
    const exits = store.queryEvents({ jobKey: key, kind: EventKind.EVENT_KIND_PROCESS_EXIT, limit: 2000 })
      .map((r) => ({ index: r.index, event: eventToJson(r.bytes) }));
    const opens = store.queryEvents({ jobKey: key, kind: EventKind.EVENT_KIND_CONNECTION_OPEN, limit: 2000 })
      .map((r) => ({ index: r.index, event: eventToJson(r.bytes) }));
    return { job, sessions: store.jobSessions(key, 1000), activity: store.jobActivity(key, 5000), processes, exits, connections: opens };
  }

  function sessionDetail(id: string) {
    const rows = store.queryEvents({ sessionId: id, limit: 5000 });
    if (!rows.length) throw new ApiError(404, 'not_found', `no session ${id}`);
    return { sessionId: id, events: rows.map((r) => ({ index: r.index, event: eventToJson(r.bytes) })) };
  }

  function agents() {
    // Heartbeat statuses: operational state the agents report, not part of the log.
    const statuses = new Map(store.agentStatuses().map((s) => [s.agentId, s]));
    return store.agents().map((a) => ({
      agentId: a.agentId, lastSeq: a.lastSeq, lastIndex: a.lastIndex, lastSeenMs: a.lastSeenMs,
      status: statusJson(statuses.get(a.agentId)),
    }));
  }

  function integrity() {
    const cp = opts.checkpoint();
    return {
      checkpoint: cp ? { size: cp.size, timeMs: cp.timeMs, note: cp.note } : null,
      verifierKey: opts.verifierKey,
      gaps: store.gaps(),
      agents: agents(),
      verify: opts.verifier.last(),
      verifyRunning: opts.verifier.running(),
    };
  }
}

const RANGES: Record<string, { ms: number; bucketMs: number }> = {
  '1h': { ms: 3600_000, bucketMs: 60_000 },
  '24h': { ms: 24 * 3600_000, bucketMs: 3600_000 },
  '7d': { ms: 7 * 24 * 3600_000, bucketMs: 6 * 3600_000 },
  '30d': { ms: 30 * 24 * 3600_000, bucketMs: 24 * 3600_000 },
};

function str(u: URL, k: string): string | undefined {
  const v = u.searchParams.get(k)?.trim();
  return v ? v.slice(0, 512) : undefined;
}

function int(u: URL, k: string): number | undefined {
  const v = str(u, k);
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v)) throw new ApiError(400, 'bad_request', `${k} must be a non-negative integer`);
  return Number(v);
}

function time(u: URL, k: string): number | undefined {
  const v = str(u, k);
  if (v === undefined) return undefined;
  const ms = /^\d+$/.test(v) ? Number(v) : Date.parse(v);
  if (Number.isNaN(ms)) throw new ApiError(400, 'bad_request', `${k} must be a time (RFC 3339 or epoch ms)`);
  return ms;
}

const DECISIONS = new Set(['allow', 'deny', 'mask', 'review', 'refused']);

function eventQuery(u: URL): EventQuery {
  const kindName = str(u, 'kind');
  let kind: number | undefined;
  if (kindName !== undefined) {
    kind = EventKind[kindName.startsWith('EVENT_KIND_') ? kindName : `EVENT_KIND_${kindName.toUpperCase()}`];
    if (kind === undefined) throw new ApiError(400, 'bad_request', `unknown event kind ${kindName}`);
  }
  const decision = str(u, 'decision');
  if (decision !== undefined && !DECISIONS.has(decision)) throw new ApiError(400, 'bad_request', `decision must be one of ${[...DECISIONS].join(', ')}`);
  const text = str(u, 'q');
  return {
    agentId: str(u, 'agent'), sessionId: str(u, 'session'), kind, repository: str(u, 'repository'), workflow: str(u, 'workflow'),
    runId: str(u, 'run'), job: str(u, 'job'), actor: str(u, 'actor'), destination: str(u, 'target'), decision,
    jobKey: str(u, 'jobKey'), text: text && text.length >= 3 ? text : undefined,
    sinceMs: time(u, 'since'), untilMs: time(u, 'until'), afterIndex: int(u, 'after'), beforeIndex: int(u, 'before'),
    descending: u.searchParams.get('order') !== 'asc', limit: Math.min(int(u, 'limit') ?? 100, 500),
  };
}

function jobQuery(u: URL): JobQuery {
  return {
    repository: str(u, 'repository'), workflow: str(u, 'workflow'), runId: str(u, 'run'), actor: str(u, 'actor'),
    sinceMs: time(u, 'since'), untilMs: time(u, 'until'), beforeMs: int(u, 'before'), flagged: u.searchParams.get('flagged') === '1',
    limit: Math.min(int(u, 'limit') ?? 100, 500),
  };
}

function sendJson(res: http.ServerResponse, status: number, value: unknown): void {
  if (res.headersSent) return void res.destroy();
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(value));
}
