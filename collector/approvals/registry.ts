// The collector's live state of approval requests: in memory for the streams and timers, written
// through to SQLite (table approvals) so a restart loses no pending request. A request opens when an
// agent asks; approvers vote over HTTP; it closes approved (N distinct approvals), denied (any deny),
// expired (its deadline passed) or cancelled (its agent withdrew it: the held session ended).
// Listeners hear every change: the agent's stream, webhooks, and (later) the dashboard.
import { EventEmitter } from 'node:events';
import type Database from 'better-sqlite3';
import type { Logger } from 'pino';
import type { ApprovalRequestMsg, ApprovalStateName, ApprovalUpdateMsg, ApprovalVoteMsg } from '../../proto/services.js';
import { APPROVAL_STATES } from '../../proto/services.js';
import { hasRole, type User } from './users.js';

const SCHEMA = `
CREATE TABLE IF NOT EXISTS approvals (
  id TEXT PRIMARY KEY,
  agent TEXT NOT NULL,
  request TEXT NOT NULL,
  state TEXT NOT NULL,
  decisions TEXT NOT NULL,
  created INTEGER NOT NULL,
  deadline INTEGER NOT NULL,
  decided INTEGER,
  reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS approvals_state ON approvals(state, created);
`;

export type FinalState = Exclude<ApprovalStateName, 'unspecified' | 'pending'>;

export interface ApprovalRecord {
  id: string;
  agent: string;
  request: ApprovalRequestMsg;
  state: Exclude<ApprovalStateName, 'unspecified'>;
  votes: ApprovalVoteMsg[];
  createdMs: number;
  deadlineMs: number;
  decidedMs?: number;
  /** Denied: the approver's reason; expired, cancelled: why. */
  reason: string;
}

/** A refusal an approver can act on; `status` is the HTTP status it maps to. */
export class ApprovalError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
    this.name = 'ApprovalError';
  }
}

export const REQUEST_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{3,63}$/;
export const MAX_TIMEOUT_MS = 24 * 3600_000;

interface Row { id: string; agent: string; request: string; state: string; decisions: string; created: number; deadline: number; decided: number | null; reason: string }

export class ApprovalRegistry extends EventEmitter<{ change: [ApprovalRecord]; opened: [ApprovalRecord] }> {
  private readonly records = new Map<string, ApprovalRecord>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private readonly stmt;

  constructor(private readonly db: Database.Database, private readonly log: Logger, private readonly now = () => Date.now()) {
    super();
    db.exec(SCHEMA);
    this.stmt = {
      insert: db.prepare('INSERT INTO approvals (id, agent, request, state, decisions, created, deadline, decided, reason) VALUES (@id, @agent, @request, @state, @decisions, @created, @deadline, @decided, @reason)'),
      update: db.prepare('UPDATE approvals SET state = @state, decisions = @decisions, decided = @decided, reason = @reason WHERE id = @id'),
      get: db.prepare('SELECT * FROM approvals WHERE id = ?'),
      pending: db.prepare("SELECT * FROM approvals WHERE state = 'pending'"),
      list: db.prepare('SELECT * FROM approvals WHERE (@state IS NULL OR state = @state) ORDER BY created DESC LIMIT @limit'),
    };
    // Pending requests survive a restart: their timers start again (an overdue one expires now).
    for (const row of this.stmt.pending.all() as Row[]) {
      const rec = fromRow(row);
      this.records.set(rec.id, rec);
      this.schedule(rec);
    }
  }

  /** Registers a request from `agent`, or returns the one it opened before with the same id. */
  open(agent: string, req: ApprovalRequestMsg): ApprovalRecord {
    if (!REQUEST_ID_RE.test(req.requestId)) throw new ApprovalError(400, 'bad_request', `request id "${req.requestId}" must be 4-64 letters, digits, ".", "_" or "-"`);
    const existing = this.get(req.requestId);
    if (existing) {
      if (existing.agent !== agent) throw new ApprovalError(409, 'id_taken', `approval request ${req.requestId} belongs to another agent`);
      return existing;
    }
    if (!Number.isInteger(req.approvals) || req.approvals < 1) throw new ApprovalError(400, 'bad_request', 'approvals must be 1 or more');
    if (!(req.timeoutMs > 0 && req.timeoutMs <= MAX_TIMEOUT_MS)) throw new ApprovalError(400, 'bad_request', 'timeout must be more than 0 and at most 24h');
    const created = this.now();
    const rec: ApprovalRecord = {
      id: req.requestId, agent, request: req, state: 'pending', votes: [], createdMs: created, deadlineMs: created + req.timeoutMs, reason: '',
    };
    this.stmt.insert.run({ id: rec.id, agent, request: JSON.stringify(req), state: rec.state, decisions: '[]', created, deadline: rec.deadlineMs, decided: null, reason: '' });
    this.records.set(rec.id, rec);
    this.schedule(rec);
    this.log.info({ approval: rec.id, agent, rule: req.rule, operation: req.operation?.type, approvers: req.approvers, approvals: req.approvals }, 'approval requested');
    this.emit('opened', rec);
    this.emit('change', rec);
    return rec;
  }

  get(id: string): ApprovalRecord | undefined {
    const mem = this.records.get(id);
    if (mem) return mem;
    const row = this.stmt.get.get(id) as Row | undefined;
    return row ? fromRow(row) : undefined;
  }

  list(opts: { state?: string; limit?: number } = {}): ApprovalRecord[] {
    const rows = this.stmt.list.all({ state: opts.state ?? null, limit: opts.limit ?? 500 }) as Row[];
    return rows.map((r) => this.records.get(r.id) ?? fromRow(r));
  }

  /**
   * An approver's vote. Refused (ApprovalError) when the request is unknown or decided, the user is
   * not an approver, not in the rule's group, is the requesting job's actor (approve only), or
   * already approved it. Any deny denies at once; the Nth distinct approval approves.
   */
  decide(id: string, user: User, verdict: 'approve' | 'deny', reason = ''): ApprovalRecord {
    const rec = this.records.get(id) ?? this.get(id);
    if (!rec) throw new ApprovalError(404, 'unknown_id', `no approval request ${id}`);
    if (rec.state === 'cancelled') {
      throw new ApprovalError(409, 'cancelled', `approval request ${id} was cancelled by its agent${rec.reason ? ` (${rec.reason})` : ''}: the held operation can no longer run, so there is nothing to decide`);
    }
    if (rec.state !== 'pending') {
      throw new ApprovalError(409, 'already_decided', `approval request ${id} is already ${rec.state}${rec.reason ? ` (${rec.reason})` : ''}`);
    }
    if (!hasRole(user, 'approver')) throw new ApprovalError(403, 'not_an_approver', `user ${user.name} does not have the approver role`);
    const group = rec.request.approvers;
    if (group && !user.groups.includes(group)) {
      throw new ApprovalError(403, 'not_in_group', `user ${user.name} is not in the approvers group "${group}" that rule "${rec.request.rule}" requires`);
    }
    const actor = String((rec.request.job as { actor?: string } | null)?.actor ?? '');
    if (verdict === 'approve' && actor && actor.toLowerCase() === user.name.toLowerCase()) {
      throw new ApprovalError(403, 'self_approval', `self-approval refused: user ${user.name} is the actor of the job that made this request`);
    }
    if (verdict === 'approve' && rec.votes.some((v) => v.verdict === 'approve' && v.approver === user.name)) {
      throw new ApprovalError(409, 'already_approved', `user ${user.name} has already approved ${id}; it needs ${rec.request.approvals} distinct approvers`);
    }
    const vote: ApprovalVoteMsg = { approver: user.name, verdict, reason, timeMs: this.now() };
    rec.votes.push(vote);
    if (verdict === 'deny') {
      this.finish(rec, 'denied', reason || 'no reason given');
    } else if (approvers(rec).length >= rec.request.approvals) {
      this.finish(rec, 'approved', reason);
    } else {
      this.save(rec);
      this.log.info({ approval: id, approver: user.name, have: approvers(rec).length, need: rec.request.approvals }, 'approval vote');
      this.emit('change', rec);
    }
    return rec;
  }

  /**
   * The agent that opened a pending request withdraws it: the held operation can no longer run.
   * Refused (ApprovalError) for an unknown id, another agent's request, or one already final.
   */
  cancel(id: string, agent: string, reason: string): ApprovalRecord {
    const rec = this.records.get(id) ?? this.get(id);
    if (!rec) throw new ApprovalError(404, 'unknown_id', `no approval request ${id}`);
    if (rec.agent !== agent) throw new ApprovalError(403, 'not_your_request', `approval request ${id} was opened by another agent; only that agent may cancel it`);
    if (rec.state !== 'pending') {
      throw new ApprovalError(409, 'already_decided', `approval request ${id} is already ${rec.state}${rec.reason ? ` (${rec.reason})` : ''}`);
    }
    this.finish(rec, 'cancelled', reason || 'cancelled by the agent');
    return rec;
  }

  /** Stops the timers (the state is on disk; a new registry picks it up). */
  close(): void {
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    this.removeAllListeners();
  }

  private schedule(rec: ApprovalRecord): void {
    const expire = () => {
      this.timers.delete(rec.id);
      if (rec.state !== 'pending') return;
      const left = rec.deadlineMs - this.now();
      if (left > 0) return void this.timers.set(rec.id, setTimeout(expire, Math.min(left, 2 ** 31 - 1)));
      this.finish(rec, 'expired', `no decision within ${formatMs(rec.request.timeoutMs)}`);
    };
    const left = rec.deadlineMs - this.now();
    if (left <= 0) return void queueMicrotask(expire);
    this.timers.set(rec.id, setTimeout(expire, Math.min(left, 2 ** 31 - 1)));
  }

  private finish(rec: ApprovalRecord, state: FinalState, reason: string): void {
    rec.state = state;
    rec.reason = reason;
    rec.decidedMs = this.now();
    clearTimeout(this.timers.get(rec.id));
    this.timers.delete(rec.id);
    this.save(rec);
    this.records.delete(rec.id);
    this.log.info({ approval: rec.id, state, by: state === 'approved' ? approvers(rec) : deniedBy(rec), reason }, `approval ${state}`);
    this.emit('change', rec);
  }

  private save(rec: ApprovalRecord): void {
    this.stmt.update.run({ id: rec.id, state: rec.state, decisions: JSON.stringify(rec.votes), decided: rec.decidedMs ?? null, reason: rec.reason });
  }
}

export const approvers = (rec: ApprovalRecord): string[] => [...new Set(rec.votes.filter((v) => v.verdict === 'approve').map((v) => v.approver))];
const deniedBy = (rec: ApprovalRecord): string => rec.votes.find((v) => v.verdict === 'deny')?.approver ?? '';

export function isFinal(rec: ApprovalRecord): boolean {
  return rec.state !== 'pending';
}

/** The stream message for a record's current state. */
export function toUpdate(rec: ApprovalRecord): ApprovalUpdateMsg {
  return {
    requestId: rec.id, state: APPROVAL_STATES.indexOf(rec.state), approvedBy: approvers(rec), deniedBy: rec.state === 'denied' ? deniedBy(rec) : '',
    reason: rec.reason, approvalsNeeded: rec.request.approvals, deadlineMs: rec.deadlineMs, votes: rec.votes,
  };
}

/** The JSON an approver (CLI, dashboard) sees. */
export function toJson(rec: ApprovalRecord): Record<string, unknown> {
  const r = rec.request;
  return {
    id: rec.id, state: rec.state, agent: rec.agent, sessionId: r.sessionId,
    created: new Date(rec.createdMs).toISOString(), deadline: new Date(rec.deadlineMs).toISOString(),
    decided: rec.decidedMs ? new Date(rec.decidedMs).toISOString() : undefined,
    job: r.job ?? {}, process: r.process ?? {}, target: r.target ?? {}, protocol: r.protocol,
    operation: r.operation ?? {}, rule: r.rule, ruleReason: r.ruleReason,
    approvers: r.approvers, approvalsNeeded: r.approvals, approvedBy: approvers(rec),
    deniedBy: rec.state === 'denied' ? deniedBy(rec) : undefined, reason: rec.reason || undefined, votes: rec.votes,
  };
}

function fromRow(r: Row): ApprovalRecord {
  return {
    id: r.id, agent: r.agent, request: JSON.parse(r.request) as ApprovalRequestMsg, state: r.state as ApprovalRecord['state'],
    votes: JSON.parse(r.decisions) as ApprovalVoteMsg[], createdMs: r.created, deadlineMs: r.deadline,
    decidedMs: r.decided ?? undefined, reason: r.reason,
  };
}

export function formatMs(ms: number): string {
  if (ms % 3600_000 === 0) return `${ms / 3600_000}h`;
  if (ms % 60_000 === 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}
