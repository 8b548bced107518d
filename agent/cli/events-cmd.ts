// `runguard events`: the agent's spooled events, one per line. --json prints the proto3 JSON
// mapping of AuditEvent; the default is a short human line. Reads the spool read-only, so it works
// while the agent runs.
import path from 'node:path';
import { eventToJson } from '../../proto/index.js';
import { readSpoolDir } from '../events/spool.js';
import { DEFAULT_STATE_DIR } from '../paths.js';
import { parseArgs, UsageError } from './args.js';

type Json = Record<string, any>;

function humanLine(e: Json): string {
  const kind = String(e.kind ?? '').replace(/^EVENT_KIND_/, '');
  const proc = e.process ? `pid=${e.process.pid ?? '?'} ${e.process.exe ?? e.process.comm ?? ''}` : '';
  const dst = e.destination ? `${e.destination.address}:${e.destination.port}` : '';
  const job = e.job?.repository ? `${e.job.provider}:${e.job.repository}#${e.job.runId ?? ''}/${e.job.job ?? ''}` : '';
  const detail = e.connectionClose ? `${e.connectionClose.reason} up=${e.connectionClose.bytesUp ?? 0} down=${e.connectionClose.bytesDown ?? 0}`
    : e.connectionRefused ? e.connectionRefused.reason
    : e.exec ? (e.process?.argv ?? []).join(' ')
    : e.notice ? `${e.notice.code}: ${e.notice.message}`
    : e.statement ? statementDetail(e.statement)
    : e.dbSession ? `${e.dbSession.protocol ?? ''} db=${e.dbSession.database ?? ''} user=${e.dbSession.user ?? ''}${e.dbSession.clientTls ? ' tls' : ''}`
    : e.approvalRequested ? `${e.approvalRequested.approvalId} held by ${e.approvalRequested.rule}: ${e.approvalRequested.text ?? ''}`
    : e.approvalDecided ? `${e.approvalDecided.approvalId} ${e.approvalDecided.outcome}${e.approvalDecided.approvers?.length ? ` by ${e.approvalDecided.approvers.join(',')}` : ''}${e.approvalDecided.reason ? `: ${e.approvalDecided.reason}` : ''}`
    : '';
  return [e.seq, e.time, kind, e.sessionId, proc, dst, job, detail].filter(Boolean).join('  ');
}

/** decision[:outcome] (rule) result: text; the text is already redacted by the agent. */
function statementDetail(st: Json): string {
  const d = st.decision ?? {};
  const decision = `${d.action ?? 'allow'}${d.outcome ? `:${d.outcome}` : ''}${d.rule ? ` (${d.rule})` : ''}`;
  const result = st.errorCode ? `ERROR ${st.errorCode}` : st.commandTag ?? '';
  const masked = st.maskedValues ? ` ${st.maskedValues} masked` : '';
  return `${decision} ${result}${masked}: ${st.text ?? ''}`;
}

/** Pages through the collector's /events query (NDJSON), following with --follow. */
async function fromCollector(base: string, a: Record<string, unknown>, print: (e: Json) => void): Promise<number> {
  const params = new URLSearchParams();
  for (const k of ['session', 'job', 'repository', 'run', 'agent', 'since', 'until'] as const) if (a[k]) params.set(k, String(a[k]));
  const kinds = (a.kind as string[] | undefined) ?? [];
  if (kinds.length > 1) throw new UsageError('with --collector, give at most one --kind');
  if (kinds[0]) params.set('kind', kinds[0]);
  let remaining = a.limit ? Number(a.limit) : Infinity;
  let after = -1;
  for (;;) {
    params.set('limit', String(Math.min(1000, remaining)));
    if (after >= 0) params.set('after', String(after));
    const url = `${base.replace(/\/$/, '')}/events?${params}`;
    const res = await fetch(url).catch((err: Error) => {
      throw new Error(`cannot reach the collector at ${base}: ${err.cause instanceof Error ? err.cause.message : err.message}`);
    });
    if (!res.ok) throw new Error(`${url}: ${res.status} ${(await res.text()).trim()}`);
    const lines = (await res.text()).split('\n').filter(Boolean);
    for (const line of lines) {
      const row = JSON.parse(line) as { index: number; event: Json };
      print({ index: row.index, ...row.event });
      after = row.index;
      remaining--;
    }
    if (remaining <= 0) return 0;
    if (lines.length === 0) {
      if (!a.follow) return 0;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

export async function eventsCommand(argv: string[]): Promise<number> {
  const a = parseArgs(argv, {
    'state-dir': 'string', follow: 'boolean', json: 'boolean', kind: 'strings', session: 'string',
    collector: 'string', job: 'string', repository: 'string', run: 'string', agent: 'string', since: 'string', until: 'string', limit: 'string',
  });
  if (a._.length) throw new UsageError(`unexpected argument "${a._[0]}"`);
  if (a.collector) return fromCollector(a.collector, a, (e) => process.stdout.write((a.json ? JSON.stringify(e) : humanLine(e)) + '\n'));
  const dir = path.join(a['state-dir'] ?? DEFAULT_STATE_DIR, 'spool');
  const kinds = a.kind?.map((k) => (k.startsWith('EVENT_KIND_') ? k : `EVENT_KIND_${k.toUpperCase()}`));
  const print = (e: Json) => {
    if (kinds && !kinds.includes(e.kind)) return;
    if (a.session && e.sessionId !== a.session) return;
    process.stdout.write((a.json ? JSON.stringify(e) : humanLine(e)) + '\n');
  };
  let next = 1;
  const drain = async () => {
    for await (const rec of readSpoolDir(dir, next)) {
      print(eventToJson(rec.bytes));
      next = rec.seq + 1;
    }
  };
  await drain();
  if (!a.follow) return 0;
  const stop = new Promise<void>((r) => {
    process.once('SIGINT', r);
    process.once('SIGTERM', r);
  });
  let stopped = false;
  void stop.then(() => (stopped = true));
  while (!stopped) {
    await Promise.race([new Promise((r) => setTimeout(r, 200)), stop]);
    if (!stopped) await drain();
  }
  return 0;
}
