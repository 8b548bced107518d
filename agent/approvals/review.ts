// Holding an operation for review, for any protocol handler: records the request in the agent's own
// signed chain (APPROVAL_REQUESTED), asks the collector, and records the outcome (APPROVAL_DECIDED)
// before the handler lets the operation through or refuses it. Without a collector there is nobody
// to ask: the caller denies and says approvals need a collector (see `approvalsUnavailable`).
import { EventKind } from '../../proto/index.js';
import type { Decision, Operation, Protocol } from '../policy/types.js';
import type { Session } from '../proxy/handler.js';
import { newApprovalId, type ApprovalClient, type ApprovalOutcome } from './client.js';
import { formatDuration } from './format.js';

export interface HeldOperation {
  protocol: Protocol;
  /** With its text already redacted: it goes to the collector and the trail as it is. */
  operation: Operation;
  decision: Decision;
  database?: string;
  user?: string;
}

export interface ReviewResult extends ApprovalOutcome {
  id: string;
  waitedMs: number;
}

export async function holdForApproval(client: ApprovalClient, session: Session, held: HeldOperation, signal?: AbortSignal): Promise<ReviewResult> {
  const id = newApprovalId();
  const { decision, operation: op } = held;
  const review = decision.review ?? { approvals: 1, timeoutMs: 15 * 60_000 };
  const started = Date.now();
  session.emit({
    kind: EventKind.EVENT_KIND_APPROVAL_REQUESTED!,
    approvalRequested: {
      approvalId: id, protocol: held.protocol, operationType: op.type, text: op.text ?? '', objects: op.objects ?? [],
      rule: decision.rule, approvers: review.approvers ?? '', approvals: review.approvals, timeoutMs: review.timeoutMs,
    },
  });
  session.log.info({ approval: id, rule: decision.rule, operation: op.type }, 'operation held for approval');
  const outcome = await client.requestApproval({
    requestId: id, sessionId: session.id, job: session.job as Record<string, unknown>, process: session.process as Record<string, unknown>,
    target: { address: session.destination.address, port: session.destination.port, hostname: '' }, protocol: held.protocol,
    operation: { type: op.type, text: op.text ?? '', objects: op.objects ?? [], database: held.database ?? '', user: held.user ?? '' },
    rule: decision.rule, ruleReason: decision.reason, approvers: review.approvers ?? '', approvals: review.approvals, timeoutMs: review.timeoutMs,
  }, signal);
  const waitedMs = Date.now() - started;
  session.emit({
    kind: EventKind.EVENT_KIND_APPROVAL_DECIDED!,
    approvalDecided: { approvalId: id, outcome: outcome.decision, approvers: outcome.by, reason: outcome.reason, waitedMs, rule: decision.rule },
  });
  session.log.info({ approval: id, outcome: outcome.decision, by: outcome.by, reason: outcome.reason, waitedMs }, 'approval decided');
  return { ...outcome, id, waitedMs };
}

/** The error text a job gets for a held operation that was not approved. */
export function reviewDenialText(what: string, decision: Decision, r: ReviewResult): { message: string; hint: string } {
  const rule = `policy rule "${decision.rule}"`;
  if (r.decision === 'denied' && r.by.length) {
    return {
      message: `runguard: ${what} was denied by ${r.by.join(', ')} (approval ${r.id}, ${rule}): ${r.reason || 'no reason given'}`,
      hint: decision.reason || 'Ask the approvers what to change.',
    };
  }
  if (r.decision === 'expired') {
    const timeout = decision.review ? formatDuration(decision.review.timeoutMs) : 'the timeout';
    return {
      message: `runguard: ${what} was not approved within ${timeout} (approval ${r.id}, ${rule}), so it is denied`,
      hint: `${r.reason ? r.reason + '. ' : ''}Ask an approver${decision.review?.approvers ? ` in group "${decision.review.approvers}"` : ''} to watch for it, then run the job again.`,
    };
  }
  return {
    message: `runguard: ${what} requires approval under ${rule} and was not approved (approval ${r.id}): ${r.reason}`,
    hint: decision.reason || 'Run the job again once the approval can be decided.',
  };
}

/** The error text when review is asked for but this agent has no collector to ask. */
export function approvalsUnavailable(what: string, decision: Decision): { message: string; hint: string } {
  return {
    message: `runguard: ${what} requires approval under policy rule "${decision.rule}"`,
    hint: `${decision.reason ? decision.reason + '. ' : ''}Just-in-time approvals are not available: they need a collector, and this agent has none configured (set collector and tlsDir), so the statement is denied.`,
  };
}
