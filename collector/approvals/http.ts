// The approvals API on the collector's --http port, for the CLI now and the dashboard later:
//   GET  /api/approvals[?state=pending|approved|denied|expired|cancelled|all][&limit=N]  JSON list (newest first)
//   GET  /api/approvals/<id>                                                JSON of one request
//   POST /api/approvals/<id>/approve   {"reason"?: "..."}                  JSON of the request after the vote
//   POST /api/approvals/<id>/deny      {"reason": "..."}
// Every call authenticates a local user (DATA_DIR/users.json): the CLI with HTTP Basic auth, the
// dashboard with its session cookie and CSRF token (collector/dashboard/auth.ts). Reading needs any
// role, deciding needs the approver (or admin) role. POSTs must be application/json, which a
// browser will not send cross-site without a CORS preflight this server never grants.
// Errors are JSON { error: CODE, message } with 400/401/403/404/409/429 (deciding a request its
// agent cancelled: 409 with error "cancelled").
import type http from 'node:http';
import type { Logger } from 'pino';
import { ApprovalError, toJson, type ApprovalRegistry } from './registry.js';
import { AuthError, type Authenticator } from '../dashboard/auth.js';
import { BodyError, readJsonObject } from '../json-body.js';

export interface ApprovalsApiOptions {
  registry: ApprovalRegistry;
  auth: Authenticator;
  log: Logger;
}

const STATES = new Set(['pending', 'approved', 'denied', 'expired', 'cancelled']);

/** Handles /api/approvals...; returns false for any other path (the caller serves it). */
export function createApprovalsApi(opts: ApprovalsApiOptions): (req: http.IncomingMessage, res: http.ServerResponse) => boolean {
  const { registry, auth, log } = opts;
  return (req, res) => {
    const u = new URL(req.url ?? '/', 'http://collector');
    if (u.pathname !== '/api/approvals' && !u.pathname.startsWith('/api/approvals/')) return false;
    handle(req, res, u).catch((err: Error) => {
      // The dashboard's own fetches get no Basic challenge: the browser would pop up a password box.
      if (err instanceof ApprovalError || err instanceof AuthError || err instanceof BodyError) return sendJson(res, err.status, { error: err.code, message: err.message }, !req.headers['x-runguard-ui']);
      log.error({ err, path: u.pathname }, 'approvals API error');
      if (!res.headersSent) sendJson(res, 500, { error: 'internal', message: err.message });
    });
    return true;
  };

  async function handle(req: http.IncomingMessage, res: http.ServerResponse, u: URL): Promise<void> {
    const write = req.method !== 'GET' && req.method !== 'HEAD';
    // The registry judges who may decide (role, group, not the requesting actor) and says why not.
    const { user } = auth.authenticate(req, { write, role: 'viewer' });
    const parts = u.pathname.split('/').filter(Boolean).slice(2).map(decodeURIComponent); // after api/approvals
    if (req.method === 'GET' && parts.length === 0) {
      const state = u.searchParams.get('state') ?? 'pending';
      if (state !== 'all' && !STATES.has(state)) throw new ApprovalError(400, 'bad_request', `state must be pending, approved, denied, expired, cancelled or all, got "${state}"`);
      const limit = Number(u.searchParams.get('limit') ?? 500);
      if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) throw new ApprovalError(400, 'bad_request', 'limit must be 1..10000');
      return sendJson(res, 200, registry.list({ state: state === 'all' ? undefined : state, limit }).map(toJson));
    }
    if (req.method === 'GET' && parts.length === 1) {
      const rec = registry.get(parts[0]!);
      if (!rec) throw new ApprovalError(404, 'unknown_id', `no approval request ${parts[0]}`);
      return sendJson(res, 200, toJson(rec));
    }
    if (req.method === 'POST' && parts.length === 2 && (parts[1] === 'approve' || parts[1] === 'deny')) {
      const body = await readJsonObject(req);
      const reason = body.reason === undefined ? '' : body.reason;
      if (typeof reason !== 'string' || reason.length > 1000) throw new ApprovalError(400, 'bad_request', 'reason must be a string of at most 1000 characters');
      const rec = registry.decide(parts[0]!, user, parts[1] === 'approve' ? 'approve' : 'deny', reason);
      log.info({ approval: rec.id, user: user.name, verdict: parts[1], state: rec.state }, 'approval decision received');
      return sendJson(res, 200, toJson(rec));
    }
    throw new ApprovalError(req.method === 'GET' || req.method === 'POST' ? 404 : 405, 'not_found', `no such approvals endpoint: ${req.method} ${u.pathname}`);
  }
}

function sendJson(res: http.ServerResponse, status: number, value: unknown, challenge = false): void {
  const headers: Record<string, string> = { 'content-type': 'application/json', 'cache-control': 'no-store' };
  if (status === 401 && challenge) headers['www-authenticate'] = 'Basic realm="runguard", charset="UTF-8"';
  res.writeHead(status, headers);
  res.end(JSON.stringify(value) + '\n');
}
