// The agent's side of just-in-time approvals: asks the collector over the agent's mutual-TLS channel
// and waits for the decision. A stream that breaks (collector restart, network) is opened again with
// the same request id, which re-attaches to the pending request. If no decision arrives by the
// deadline (the rule's timeout plus a grace for the collector's own expiry to reach us), the answer
// is 'expired': a held operation is never let through by default.
import { randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { APPROVAL_STATES, ApprovalsService, type ApprovalRequestMsg, type ApprovalUpdateMsg } from '../../proto/services.js';

export type ApprovalDecision = 'approved' | 'denied' | 'expired';

export interface ApprovalOutcome {
  decision: ApprovalDecision;
  /** approved: the approvers; denied: who denied (empty when nobody could decide). */
  by: string[];
  reason: string;
}

export type ApprovalRequest = Omit<ApprovalRequestMsg, 'agentId'>;

/** What a protocol handler needs: one call that resolves with the decision, never rejects. */
export interface ApprovalClient {
  requestApproval(req: ApprovalRequest, signal?: AbortSignal): Promise<ApprovalOutcome>;
}

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
    this.client.close();
  }

  requestApproval(req: ApprovalRequest, signal?: AbortSignal): Promise<ApprovalOutcome> {
    const { log } = this.opts;
    const giveUpAt = Date.now() + req.timeoutMs + (this.opts.graceMs ?? 10_000);
    const msg: ApprovalRequestMsg = { ...req, agentId: this.opts.agentId };
    return new Promise<ApprovalOutcome>((resolve) => {
      let call: grpc.ClientReadableStream<ApprovalUpdateMsg> | undefined;
      let retry: NodeJS.Timeout | undefined;
      let settled = false;
      let lastError = '';
      const settle = (o: ApprovalOutcome) => {
        if (settled) return;
        settled = true;
        clearTimeout(giveUp);
        clearTimeout(retry);
        signal?.removeEventListener('abort', onAbort);
        call?.cancel();
        resolve(o);
      };
      const onAbort = () => settle({ decision: 'denied', by: [], reason: 'the session ended while the operation was held' });
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
          if (ended || settled) return;
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
