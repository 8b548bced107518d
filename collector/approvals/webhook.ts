// Tells people a request is waiting: a Slack-compatible incoming-webhook payload ({ text, blocks })
// POSTed when a request opens. A failure is logged and never holds up the request.
import type { Logger } from 'pino';
import { formatMs, type ApprovalRecord } from './registry.js';

export function approvalWebhookPayload(rec: ApprovalRecord, dashboardUrl?: string): { text: string; blocks: unknown[] } {
  const r = rec.request;
  const job = (r.job ?? {}) as Record<string, string | undefined>;
  const jobText = [job.repository, job.workflow, job.job && `job ${job.job}`, job.runId && `run ${job.runId}`, job.actor && `by ${job.actor}`].filter(Boolean).join(' · ') || 'unknown job';
  const target = r.target ? `${r.target.hostname || r.target.address}:${r.target.port}` : '';
  const op = r.operation;
  const text = `runguard: approval needed for ${op?.type ?? 'an operation'} on ${target} (${r.protocol}) from ${jobText} — rule "${r.rule}", ` +
    `${r.approvals} approval${r.approvals === 1 ? '' : 's'}${r.approvers ? ` from group ${r.approvers}` : ''} within ${formatMs(r.timeoutMs)}. ` +
    `Decide: runguard approve ${rec.id} / runguard deny ${rec.id} --reason TEXT`;
  const statement = (op?.text ?? '').slice(0, 2500).replace(/```/g, "'''");
  const blocks: unknown[] = [
    { type: 'section', text: { type: 'mrkdwn', text: `*Approval needed* (rule \`${r.rule}\`): ${op?.type ?? ''} on \`${target}\`` } },
    { type: 'section', fields: [
      { type: 'mrkdwn', text: `*Job*\n${jobText}` },
      { type: 'mrkdwn', text: `*Approvers*\n${r.approvals} from ${r.approvers || 'any approver'}, within ${formatMs(r.timeoutMs)}` },
    ] },
    ...(statement ? [{ type: 'section', text: { type: 'mrkdwn', text: '```' + statement + '```' } }] : []),
    { type: 'context', elements: [{ type: 'mrkdwn', text: `id \`${rec.id}\` · \`runguard approve ${rec.id}\`${dashboardUrl ? ` · ${dashboardUrl}` : ''}` }] },
  ];
  return { text, blocks };
}

/** Posts the payload; resolves either way (failures are logged). */
export async function postApprovalWebhook(url: string, rec: ApprovalRecord, log: Logger, timeoutMs = 5000): Promise<boolean> {
  try {
    const res = await fetch(url, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(approvalWebhookPayload(rec)),
      signal: AbortSignal.timeout(timeoutMs),
    });
    if (!res.ok) {
      log.warn({ approval: rec.id, status: res.status, body: (await res.text()).slice(0, 200) }, 'approval webhook refused the notification');
      return false;
    }
    await res.arrayBuffer();
    return true;
  } catch (err) {
    log.warn({ approval: rec.id, err: (err as Error).message }, 'approval webhook failed');
    return false;
  }
}
