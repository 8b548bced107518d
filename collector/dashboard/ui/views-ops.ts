// The operator's pages: the approvals queue, the agents, and the integrity of the log.
import { get, post, query } from './api.js';
import type { ViewContext } from './app.js';
import { ago, badge, h, link, num, replace, time } from './dom.js';
import { endpoint, type Endpoint, type Job, jobLabel, type Process } from './events.js';

interface Approval {
  id: string; state: string; agent: string; sessionId: string; created: string; deadline: string; decided?: string;
  job: Job; process: Process; target: Endpoint; protocol: string;
  operation: { type?: string; text?: string; objects?: string[]; database?: string; user?: string };
  rule: string; ruleReason: string; approvers: string; approvalsNeeded: number; approvedBy: string[]; deniedBy?: string; reason?: string;
}

const canDecide = (ctx: ViewContext) => ctx.user.roles.includes('approver') || ctx.user.roles.includes('admin');

function approvalCard(ctx: ViewContext, a: Approval, refresh: () => void): HTMLElement {
  const error = h('p', { class: 'error', role: 'alert' });
  const reason = h('input', { name: 'reason', placeholder: 'reason (required to deny)', 'aria-label': 'reason' });
  const act = (verdict: 'approve' | 'deny') => {
    if (verdict === 'deny' && !reason.value.trim()) {
      error.textContent = 'give a reason to deny';
      return;
    }
    post(`/api/approvals/${encodeURIComponent(a.id)}/${verdict}`, { reason: reason.value.trim() }).then(refresh, (err: Error) => {
      error.textContent = err.message;
    });
  };
  const pending = a.state === 'pending';
  const left = Date.parse(a.deadline) - Date.now();
  return h('article', { class: `approval state-${a.state}`, 'data-test': 'approval', 'data-id': a.id },
    h('header', {}, h('strong', {}, `${a.operation.type ?? a.protocol}`), ' ', badge(a.state, a.state === 'approved' ? 'allow' : a.state === 'pending' ? 'review' : 'deny'),
      h('span', { class: 'muted' }, ` ${a.id} · opened ${ago(Date.parse(a.created))}`, pending ? ` · ${left > 0 ? `expires in ${Math.ceil(left / 1000)} s` : 'expiring'}` : '')),
    h('pre', { class: 'statement' }, a.operation.text ?? ''),
    h('dl', { class: 'facts' },
      h('dt', {}, 'job'), h('dd', {}, jobLabel(a.job)),
      h('dt', {}, 'actor'), h('dd', {}, a.job.actor ?? ''),
      h('dt', {}, 'commit'), h('dd', { class: 'mono' }, `${a.job.sha ?? ''} ${a.job.ref ?? ''}`),
      h('dt', {}, 'command line'), h('dd', { class: 'mono' }, (a.process.argv ?? []).join(' ')),
      h('dt', {}, 'target'), h('dd', { class: 'mono' }, `${a.protocol} ${endpoint(a.target)}${a.operation.database ? ` database ${a.operation.database}` : ''}${a.operation.user ? ` as ${a.operation.user}` : ''}`),
      h('dt', {}, 'rule'), h('dd', {}, `${a.rule}${a.ruleReason ? `: ${a.ruleReason}` : ''}`),
      h('dt', {}, 'needs'), h('dd', {}, `${a.approvalsNeeded} approval(s)${a.approvers ? ` from group ${a.approvers}` : ''}; so far: ${a.approvedBy.join(', ') || 'none'}`),
      a.deniedBy ? [h('dt', {}, 'denied by'), h('dd', {}, `${a.deniedBy}: ${a.reason ?? ''}`)] : null,
      !pending && a.reason && !a.deniedBy ? [h('dt', {}, 'reason'), h('dd', {}, a.reason)] : null,
      a.sessionId ? [h('dt', {}, 'session'), h('dd', {}, link(`#/session/${encodeURIComponent(a.sessionId)}`, a.sessionId))] : null),
    pending && canDecide(ctx) ? h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'approve', onclick: () => act('approve') }, 'Approve'),
      reason,
      h('button', { type: 'button', class: 'deny', onclick: () => act('deny') }, 'Deny')) : null,
    pending && !canDecide(ctx) ? h('p', { class: 'muted' }, 'You need the approver role to decide.') : null,
    error);
}

export async function approvalsView(ctx: ViewContext): Promise<void> {
  const pendingBox = h('div', { 'data-test': 'pending' });
  const recentBox = h('div', {});
  replace(ctx.main, h('h1', {}, 'Approvals'), h('h2', {}, 'Waiting for a decision'), pendingBox, h('h2', {}, 'Recently decided'), recentBox);
  const load = async () => {
    const [pending, all] = await Promise.all([
      get<Approval[]>('/api/approvals?state=pending'), get<Approval[]>(`/api/approvals${query({ state: 'all', limit: 30 })}`),
    ]);
    replace(pendingBox, pending.length ? pending.map((a) => approvalCard(ctx, a, () => void load())) : h('p', { class: 'muted' }, 'Nothing is waiting.'));
    replace(recentBox, all.filter((a) => a.state !== 'pending').map((a) => approvalCard(ctx, a, () => void load())));
  };
  await load();
  // Refresh unless the user is typing a reason.
  const timer = setInterval(() => {
    if (!(document.activeElement instanceof HTMLInputElement)) void load().catch(() => {});
  }, 3000);
  ctx.onLeave(() => clearInterval(timer));
}

type Status = Record<string, unknown> & { receivedMs?: number };
interface AgentRow { agentId: string; lastSeq: number; lastIndex: number; lastSeenMs: number; status: Status | null }

const get2 = (o: unknown, ...path: string[]): unknown => path.reduce<unknown>((v, k) => (v && typeof v === 'object' ? (v as Record<string, unknown>)[k] : undefined), o);
const str = (v: unknown) => (v === undefined || v === null ? '' : String(v));

export async function agentsView(ctx: ViewContext): Promise<void> {
  const { agents } = await get<{ agents: AgentRow[] }>('/api/agents');
  const now = Date.now();
  replace(ctx.main, h('h1', {}, 'Agents'),
    h('table', { class: 'agents', 'data-test': 'agents' },
      h('thead', {}, h('tr', {}, ['agent', 'last event stored', 'last heartbeat', 'version', 'eBPF', 'sessions', 'spool backlog', 'shipping', 'witness'].map((c) => h('th', {}, c)))),
      h('tbody', {}, agents.map((a) => {
        const s = a.status;
        const stale = !s?.receivedMs || now - s.receivedMs > 60_000;
        const bpf = str(get2(s, 'bpf', 'state'));
        const spoolState = str(get2(s, 'spool', 'state'));
        const backlog = Number(get2(s, 'spool', 'backlogEvents') ?? 0);
        const oldest = Number(get2(s, 'spool', 'oldestUnackedAgeMs') ?? 0);
        const lastError = str(get2(s, 'shipper', 'lastError'));
        return h('tr', { 'data-agent': a.agentId },
          h('td', { class: 'mono' }, a.agentId),
          h('td', { class: 'nowrap', title: time(a.lastSeenMs) }, ago(a.lastSeenMs)),
          h('td', { class: stale ? 'nowrap bad' : 'nowrap' }, s?.receivedMs ? ago(s.receivedMs) : 'never'),
          h('td', {}, str(get2(s, 'version'))),
          h('td', {}, s ? badge(bpf || 'unknown', bpf === 'attached' || bpf === 'reused' ? 'allow' : 'deny') : ''),
          h('td', {}, s ? num(Number(get2(s, 'proxy', 'activeSessions') ?? 0)) : ''),
          h('td', {}, s ? [`${num(backlog)} events`, oldest ? ` (oldest ${Math.round(oldest / 1000)} s)` : '',
            spoolState && spoolState !== 'ok' ? h('div', { class: 'bad' }, `spool ${spoolState}${get2(s, 'spool', 'refusing') ? ': refusing new connections' : ''}`) : null] : ''),
          h('td', {}, !s ? '' : get2(s, 'shipper', 'connected') ? 'connected' : h('span', { class: 'bad' }, lastError || 'disconnected')),
          h('td', {}, !s ? '' : get2(s, 'witness', 'lastCheckOk') === false
            ? badge(`failed: ${str(get2(s, 'witness', 'lastProblem'))}`, 'deny')
            : get2(s, 'witness', 'lastCheckMs') ? badge('consistent', 'allow') : 'no check yet'));
      }))),
    h('p', { class: 'muted' }, 'Each connected agent reports every 10 s; "last event stored" is when its last batch reached the log.'));
}

interface Integrity {
  checkpoint: { size: number; timeMs: number; note: string } | null; verifierKey: string;
  gaps: { agentId: string; fromSeq: number; toSeq: number; atIndex: number; detectedMs: number }[];
  agents: AgentRow[];
  verify: { ok: boolean; startedMs: number; finishedMs: number; trigger: string; size: number; leavesChecked: number; agents: number; signaturesChecked: number; checkpointSigned: boolean; agentCertsChecked: boolean; firstProblem: { index: number; reason: string } | null; problems: number; error?: string } | null;
  verifyRunning: boolean;
}

export async function integrityView(ctx: ViewContext): Promise<void> {
  const d = await get<Integrity>('/api/integrity');
  const v = d.verify;
  const button = ctx.user.roles.includes('admin')
    ? h('button', { type: 'button', disabled: d.verifyRunning, onclick: () => void post('/api/integrity/verify').then(() => ctx.go(`#/integrity?t=${Date.now()}`)) }, d.verifyRunning ? 'Verifying…' : 'Verify now')
    : null;
  replace(ctx.main, h('h1', {}, 'Integrity'),
    h('section', { class: `verdict ${v ? (v.ok ? 'ok' : 'bad') : ''}`, 'data-test': 'verify-result' },
      h('h2', {}, 'Self-verify'),
      v ? h('p', {}, h('strong', {}, v.ok ? '✓ The log verifies' : '✗ The log does NOT verify'),
        `: ${num(v.leavesChecked)} of ${num(v.size)} leaves, ${v.agents} agent chain(s), ${num(v.signaturesChecked)} batch signatures, checkpoint signature ${v.checkpointSigned ? 'valid' : 'not checked'}, agent keys ${v.agentCertsChecked ? 'issued by the fleet CA' : 'not checked against a CA'}; finished ${ago(v.finishedMs)} (${v.trigger}, ${((v.finishedMs - v.startedMs) / 1000).toFixed(1)} s).`,
        v.firstProblem ? h('div', { class: 'bad' }, `first problem at index ${v.firstProblem.index}: ${v.firstProblem.reason} (${v.problems} in all)`) : null,
        v.error ? h('div', { class: 'bad' }, v.error) : null)
        : h('p', { class: 'muted' }, d.verifyRunning ? 'The first verify run is under way.' : 'No verify run yet.'),
      button,
      h('p', { class: 'muted' }, 'An auditor checks the same independently: runguard verify --collector URL --key checkpoint.pub --ca ca.crt')),
    h('section', {}, h('h2', {}, 'Latest checkpoint'),
      d.checkpoint ? [h('p', {}, `size ${num(d.checkpoint.size)}, signed ${ago(d.checkpoint.timeMs)}`), h('pre', { 'data-test': 'checkpoint' }, d.checkpoint.note)] : h('p', {}, 'none yet'),
      h('p', {}, 'verifier key: ', h('code', {}, d.verifierKey))),
    h('section', {}, h('h2', {}, 'Witnesses'),
      h('p', { class: 'muted' }, 'Each agent checks that every checkpoint it sees extends the last one and includes its own events.'),
      h('table', {}, h('thead', {}, h('tr', {}, ['agent', 'witness', 'checkpoint size seen', 'checked', 'history'].map((c) => h('th', {}, c)))),
        h('tbody', {}, d.agents.map((a) => {
          const w = get2(a.status, 'witness') as Record<string, unknown> | undefined;
          return h('tr', {}, h('td', { class: 'mono' }, a.agentId),
            h('td', {}, !w ? 'no heartbeat' : w.lastCheckOk === false ? badge(`failed: ${str(w.lastProblem)}`, 'deny') : w.lastCheckMs ? badge('consistent', 'allow') : 'no check yet'),
            h('td', {}, str(w?.checkpointSize)), h('td', {}, w?.lastCheckMs ? ago(Number(w.lastCheckMs)) : ''),
            h('td', {}, `${str(w?.checks)} checks, ${str(w?.failures)} failures`));
        })))),
    h('section', {}, h('h2', {}, 'Gaps'),
      d.gaps.length ? h('table', {}, h('thead', {}, h('tr', {}, ['agent', 'lost seq', 'at index', 'detected'].map((c) => h('th', {}, c)))),
        h('tbody', {}, d.gaps.map((g) => h('tr', { class: 'bad' }, h('td', {}, g.agentId), h('td', {}, `${g.fromSeq}–${g.toSeq}`), h('td', {}, String(g.atIndex)), h('td', {}, time(g.detectedMs))))))
        : h('p', {}, 'No agent has skipped a sequence number.')));
}
