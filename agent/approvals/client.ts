// The agent's side of just-in-time approvals: asks the collector over the agent's mutual-TLS channel
// and waits for the decision. A stream that breaks (collector restart, network) is opened again with
// the same request id, which re-attaches to the pending request. If no decision arrives by the
// deadline (the rule's timeout plus a grace for the collector's own expiry to reach us), the answer
// is 'expired': a held operation is never let through by default. When the held session ends first
// (the caller aborts), the request is withdrawn (Approvals.Cancel) so approvers stop seeing it, and
// the answer is 'cancelled'.
import { randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { APPROVAL_STATES, ApprovalsService, type ApprovalRequestMsg, type ApprovalUpdateMsg, type CancelApprovalRequestMsg } from '../../proto/services.js';

export type ApprovalDecision = 'approved' | 'denied' | 'expired' | 'cancelled';

export interface ApprovalOutcome {
  decision: ApprovalDecision;
  /** approved: the approvers; denied: who denied (empty when nobody could decide). */
  by: string[];
  reason: string;
}

export type ApprovalRequest = Omit<ApprovalRequestMsg, 'agentId'>;

/**
 * What a protocol handler needs: one call that resolves with the decision, never rejects. Aborting
 * `signal` (its reason, a string, says why: "client disconnected") withdraws the request.
 */
export interface ApprovalClient {
  requestApproval(req: ApprovalRequest, signal?: AbortSignal): Promise<ApprovalOutcome>;
}

/** What the collector is told when a held session ends without saying why. */
export const SESSION_ENDED = 'the session ended while the operation was held';

/** Short, typeable request ids ("ap-" and 12 hex digits). */
export function newApprovalId(): string {
  return `ap-${randomBytes(6).toString('hex')}`;
}

export interface CollectorApprovalsOptions {
  agentId: string;
  target: string;
  credentials: grpc.ChannelCredentials;
  log: Logger;
  /** Added to the rule's timeout before the agent gives up on hearing from the collector. */
  graceMs?: number;
  retryMs?: number;
  /** How long one Cancel call may take before the held session's end is recorded anyway. */
  cancelTimeoutMs?: number;
}

export class CollectorApprovals implements ApprovalClient {
  private readonly client: grpc.Client;

  constructor(private readonly opts: CollectorApprovalsOptions) {
    const Approvals = grpc.makeGenericClientConstructor(ApprovalsService, 'Approvals');
    this.client = new Approvals(opts.target, opts.credentials, {
      'grpc.keepalive_time_ms': 20_000, 'grpc.initial_reconnect_backoff_ms': 250, 'grpc.max_reconnect_backoff_ms': 5000,
    });
  }

  close(): void {
    for (const t of this.cancelRetries.values()) clearTimeout(t);
    this.cancelRetries.clear();
    this.client.close();
  }

  /** Cancels that could not reach the collector, retried until the request would have expired anyway. */
  private readonly cancelRetries = new Map<string, NodeJS.Timeout>();

  /**
   * Withdraws a request. Resolves with what the collector said: '' once it is cancelled there, or
   * why not. A collector that cannot be reached is asked again in the background until `untilMs`.
   */
  private async cancel(requestId: string, reason: string, untilMs: number): Promise<string> {
    const { log } = this.opts;
    const msg: CancelApprovalRequestMsg = { requestId, agentId: this.opts.agentId, reason };
    const attempt = () => new Promise<string>((resolve) => {
      this.client.makeUnaryRequest(ApprovalsService.cancel.path, ApprovalsService.cancel.requestSerialize, ApprovalsService.cancel.responseDeserialize,
        msg, { deadline: Date.now() + (this.opts.cancelTimeoutMs ?? 3000) }, (err: grpc.ServiceError | null) => {
          if (!err) return resolve('');
          // NOT_FOUND too: a session that ends at once may cancel before its request reached the collector.
          const retry = err.code === grpc.status.UNAVAILABLE || err.code === grpc.status.DEADLINE_EXCEEDED || err.code === grpc.status.NOT_FOUND;
          resolve(`${retry ? 'retry:' : ''}${err.details || err.message}`);
        });
    });
    const first = await attempt();
    if (!first.startsWith('retry:')) return first;
    const again = () => {
      this.cancelRetries.delete(requestId);
      if (Date.now() >= untilMs) return;
      void attempt().then((r) => {
        if (r.startsWith('retry:')) this.cancelRetries.set(requestId, setTimeout(again, (this.opts.retryMs ?? 1000) * 5));
        else log.info({ approval: requestId, result: r || 'cancelled' }, 'approval request withdrawn after a retry');
      });
    };
    this.cancelRetries.set(requestId, setTimeout(again, (this.opts.retryMs ?? 1000) * 5));
    return `${first.slice(6)}; asking again in the background`;
  }

  requestApproval(req: ApprovalRequest, signal?: AbortSignal): Promise<ApprovalOutcome> {
    const { log } = this.opts;
    const giveUpAt = Date.now() + req.timeoutMs + (this.opts.graceMs ?? 10_000);
    const msg: ApprovalRequestMsg = { ...req, agentId: this.opts.agentId };
    if (signal?.aborted) {
      return Promise.resolve({ decision: 'cancelled', by: [], reason: typeof signal.reason === 'string' && signal.reason ? signal.reason : SESSION_ENDED });
    }
    return new Promise<ApprovalOutcome>((resolve) => {
      let call: grpc.ClientReadableStream<ApprovalUpdateMsg> | undefined;
      let retry: NodeJS.Timeout | undefined;
      let settled = false;
      let withdrawing = false;
      let lastError = '';
      const settle = (o: ApprovalOutcome) => {
        if (!withdrawing) settleNow(o);
      };
      const settleNow = (o: ApprovalOutcome) => {
        if (settled) return;
        settled = true;
        clearTimeout(giveUp);
        clearTimeout(retry);
        signal?.removeEventListener('abort', onAbort);
        call?.cancel();
        resolve(o);
      };
      const onAbort = () => {
        if (settled || withdrawing) return;
        // From here the session is gone: whatever the collector says now cannot let the operation run.
        withdrawing = true;
        clearTimeout(retry);
        call?.cancel();
        const why = typeof signal?.reason === 'string' && signal.reason ? signal.reason : SESSION_ENDED;
        void this.cancel(req.requestId, why, giveUpAt).then((problem) => {
          if (problem) log.warn({ approval: req.requestId, problem }, 'the collector did not cancel the approval request');
          else log.info({ approval: req.requestId, reason: why }, 'approval request cancelled: the held session ended');
          settleNow({ decision: 'cancelled', by: [], reason: problem ? `${why} (not cancelled on the collector: ${problem})` : why });
        });
      };
      const giveUp = setTimeout(() => settle({
        decision: 'expired', by: [],
        reason: `no decision from the collector before the deadline${lastError ? ` (last error: ${lastError})` : ''}`,
      }), giveUpAt - Date.now());
      signal?.addEventListener('abort', onAbort, { once: true });
      const open = () => {
        if (settled) return;
        const c = this.client.makeServerStreamRequest(ApprovalsService.request.path, ApprovalsService.request.requestSerialize,
          ApprovalsService.request.responseDeserialize, msg, { deadline: giveUpAt }) as grpc.ClientReadableStream<ApprovalUpdateMsg>;
        call = c;
        let ended = false;
        const again = (why: string) => {
          if (ended || settled || withdrawing) return;
          ended = true;
          lastError = why;
          log.warn({ approval: req.requestId, err: why }, 'approval stream to the collector ended; asking again');
          retry = setTimeout(open, this.opts.retryMs ?? 1000);
        };
        c.on('data', (u: ApprovalUpdateMsg) => {
          const state = APPROVAL_STATES[u.state] ?? 'unspecified';
          if (state === 'approved') settle({ decision: 'approved', by: u.approvedBy, reason: u.reason });
          else if (state === 'denied') settle({ decision: 'denied', by: u.deniedBy ? [u.deniedBy] : [], reason: u.reason });
          else if (state === 'expired') settle({ decision: 'expired', by: [], reason: u.reason });
          else if (state === 'cancelled') settle({ decision: 'cancelled', by: [], reason: u.reason });
        });
        c.on('error', (err: grpc.ServiceError) => {
          // A request the collector refuses outright (bad request, another agent's id) will not improve.
          if (err.code === grpc.status.INVALID_ARGUMENT || err.code === grpc.status.ALREADY_EXISTS || err.code === grpc.status.UNAUTHENTICATED) {
            settle({ decision: 'denied', by: [], reason: `the collector refused the approval request: ${err.details || err.message}` });
          } else again(err.details || err.message);
        });
        c.on('end', () => again('the collector closed the stream without a decision'));
      };
      open();
    });
  }
}
