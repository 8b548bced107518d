// What an audit event looks like in the API (the proto3 JSON mapping of runguard.v1.AuditEvent) and
// how the dashboard names and summarises it in one line.
export interface Endpoint { address?: string; port?: number; hostname?: string }
export interface Process { pid?: number; ppid?: number; uid?: number; user?: string; exe?: string; argv?: string[]; cwd?: string; cgroup?: string; comm?: string }
export interface Job {
  provider?: string; repository?: string; workflow?: string; runId?: string; runAttempt?: string; job?: string; actor?: string;
  ref?: string; sha?: string; runner?: string; url?: string; source?: string;
}
export interface Decision { action?: string; rule?: string; reason?: string; outcome?: string; approvalId?: string }
export interface AuditEvent {
  agentId?: string; seq?: string; time?: string; kind?: string; sessionId?: string; requestId?: string;
  process?: Process; job?: Job; destination?: Endpoint; source?: Endpoint;
  agent?: { version?: string; bpfStatus?: string; reason?: string };
  notice?: { level?: string; code?: string; message?: string };
  exec?: { filename?: string };
  exit?: { exitCode?: number; signal?: number };
  connectionOpen?: { protocol?: string };
  connectionClose?: { protocol?: string; bytesUp?: string; bytesDown?: string; durationMs?: string; reason?: string; error?: string };
  connectionRefused?: { reason?: string; error?: string };
  dbSession?: { protocol?: string; database?: string; user?: string; clientUser?: string; application?: string; clientTls?: boolean; serverTls?: boolean; auth?: string };
  statement?: {
    protocol?: string; text?: string; type?: string; objects?: string[]; params?: string[]; decision?: Decision; rows?: string;
    commandTag?: string; durationUs?: string; errorCode?: string; error?: string; maskedValues?: number; database?: string; user?: string; prepared?: boolean;
  };
  approvalRequested?: { approvalId?: string; operationType?: string; text?: string; rule?: string; approvers?: string; approvals?: number; timeoutMs?: string };
  approvalDecided?: { approvalId?: string; outcome?: string; approvers?: string[]; reason?: string; waitedMs?: string };
}
export interface IndexedEvent { index: number; event: AuditEvent }

export const KINDS = [
  'statement', 'connection_open', 'connection_close', 'connection_refused', 'db_session_start', 'process_exec', 'process_exit',
  'approval_requested', 'approval_decided', 'agent_start', 'agent_stop', 'agent_notice',
];

export function kindName(kind: string | undefined): string {
  return (kind ?? 'EVENT_KIND_UNSPECIFIED').replace(/^EVENT_KIND_/, '').toLowerCase();
}

export function endpoint(e: Endpoint | undefined): string {
  if (!e?.address) return '';
  const host = e.address.includes(':') ? `[${e.address}]` : e.address;
  return `${e.hostname ? `${e.hostname} ` : ''}${host}:${e.port ?? 0}`;
}

/**
 * The decision shown for an event: a statement's action (review with its outcome), a refusal. A
 * mask rule that masked nothing shows as allow, as the store indexes it (collector/store/
 * leaf-fields.ts), so the badge and the decision filter always agree.
 */
export function decisionOf(ev: AuditEvent): string {
  const d = ev.statement?.decision;
  if (ev.statement) {
    if (d?.action === 'review' && d.outcome) return `review:${d.outcome}`;
    if (d?.action === 'mask' && !ev.statement.maskedValues) return 'allow';
    return d?.action || 'allow';
  }
  if (ev.connectionRefused) return 'refused';
  if (ev.approvalDecided) return ev.approvalDecided.outcome ?? '';
  return '';
}

export function summary(ev: AuditEvent): string {
  switch (kindName(ev.kind)) {
    case 'statement': {
      const s = ev.statement!;
      const err = s.error ? `  → ERROR ${s.errorCode ?? ''} ${s.error}` : '';
      return `${s.text ?? ''}${err}`;
    }
    case 'connection_open': return `${ev.connectionOpen?.protocol ?? 'tcp'} → ${endpoint(ev.destination)}`;
    case 'connection_close': {
      const c = ev.connectionClose!;
      return `closed (${c.reason ?? ''}) ${c.bytesUp ?? 0} B up, ${c.bytesDown ?? 0} B down, ${c.durationMs ?? 0} ms`;
    }
    case 'connection_refused': return `refused ${endpoint(ev.destination)}: ${ev.connectionRefused?.reason ?? ''} ${ev.connectionRefused?.error ?? ''}`;
    case 'db_session_start': {
      const d = ev.dbSession!;
      return `${d.protocol ?? ''} session: database ${d.database ?? ''}, user ${d.user ?? ''}${d.application ? `, ${d.application}` : ''}${d.clientTls ? ', TLS' : ''}`;
    }
    case 'process_exec': return (ev.process?.argv ?? []).join(' ') || ev.exec?.filename || ev.process?.exe || '';
    case 'process_exit': return `exit ${ev.exit?.exitCode ?? 0}${ev.exit?.signal ? ` (signal ${ev.exit.signal})` : ''}: ${ev.process?.comm ?? ''}`;
    case 'approval_requested': return `held for approval: ${ev.approvalRequested?.text ?? ''}`;
    case 'approval_decided': {
      const a = ev.approvalDecided!;
      return `${a.outcome ?? ''}${a.approvers?.length ? ` by ${a.approvers.join(', ')}` : ''}${a.reason ? `: ${a.reason}` : ''}`;
    }
    case 'agent_start': return `agent started, version ${ev.agent?.version ?? ''}, eBPF ${ev.agent?.bpfStatus ?? ''}`;
    case 'agent_stop': return `agent stopped: ${ev.agent?.reason ?? ''}`;
    case 'agent_notice': return `${ev.notice?.level ?? ''} ${ev.notice?.code ?? ''}: ${ev.notice?.message ?? ''}`;
    default: return '';
  }
}

export function jobLabel(j: { repository?: string; workflow?: string; job?: string; runId?: string } | undefined): string {
  if (!j?.repository && !j?.job) return '(no CI identity)';
  return `${j.repository ?? ''} · ${j.workflow ?? ''} · ${j.job ?? ''} #${j.runId ?? ''}`;
}
