// Jobs -> a job (identity, timeline, process tree, sessions) -> a session (its statements).
import { get, query } from './api.js';
import type { ViewContext } from './app.js';
import { jobTimeline, type ActivityPoint } from './charts.js';
import { ago, badge, submitsTo, duration, h, link, num, replace, time } from './dom.js';
import { decisionOf, endpoint, type IndexedEvent, jobLabel, kindName, summary } from './events.js';
import { eventRow } from './views-log.js';

interface JobSummary {
  key: string; agentId: string; provider: string; repository: string; workflow: string; runId: string; job: string; actor: string;
  ref: string; sha: string; url: string; source: number; firstMs: number; lastMs: number; events: number; statements: number;
  denied: number; masked: number; reviewed: number; refused: number; lastIndex: number;
}
interface SessionSummary { sessionId: string; firstMs: number; lastMs: number; firstIndex: number; events: number; statements: number; flagged: number; destination: string }
interface JobDetail {
  job: JobSummary; sessions: SessionSummary[]; activity: ActivityPoint[];
  processes: IndexedEvent[]; exits: IndexedEvent[]; connections: IndexedEvent[];
}

const SOURCES = ['', 'none', 'environment', 'runner hook', 'OIDC'];
const jobHref = (key: string) => `#/job/${encodeURIComponent(key)}`;

export async function jobsView(ctx: ViewContext): Promise<void> {
  const p = ctx.params;
  const fields: [string, string][] = [['repository', 'repository'], ['workflow', 'workflow'], ['run', 'run id'], ['actor', 'actor']];
  const form = h('form', { class: 'filters', 'aria-label': 'filter jobs' },
    fields.map(([n, l]) => h('label', {}, l, h('input', { name: n, value: p.get(n) ?? '' }))),
    h('label', { class: 'check' }, h('input', { type: 'checkbox', name: 'flagged', value: '1', checked: p.get('flagged') === '1' }), 'only with deny, review or refusal'),
    h('button', { type: 'submit' }, 'Filter'));
  submitsTo(form, '#/jobs', ctx.go);
  const tbody = h('tbody', {});
  const more = h('button', { type: 'button' }, 'Older jobs');
  replace(ctx.main, h('h1', {}, 'Jobs'), form,
    h('table', { class: 'jobs', 'data-test': 'jobs' },
      h('thead', {}, h('tr', {}, ['job', 'actor', 'commit', 'last active', 'events', 'statements', 'denied', 'masked', 'reviewed', 'refused'].map((c) => h('th', {}, c)))),
      tbody), more);
  const base = { repository: p.get('repository'), workflow: p.get('workflow'), run: p.get('run'), actor: p.get('actor'), flagged: p.get('flagged') };
  const load = async (before: number | null) => {
    const { jobs } = await get<{ jobs: JobSummary[] }>(`/api/jobs${query({ ...base, before, limit: 100 })}`);
    for (const j of jobs) {
      tbody.appendChild(h('tr', {},
        h('td', {}, link(jobHref(j.key), jobLabel(j))), h('td', {}, j.actor), h('td', { class: 'mono' }, j.sha.slice(0, 10)),
        h('td', { class: 'nowrap', title: time(j.lastMs) }, ago(j.lastMs)), h('td', {}, num(j.events)), h('td', {}, num(j.statements)),
        h('td', {}, j.denied ? badge(String(j.denied), 'deny') : '0'), h('td', {}, j.masked ? badge(String(j.masked), 'mask') : '0'),
        h('td', {}, j.reviewed ? badge(String(j.reviewed), 'review') : '0'), h('td', {}, j.refused ? badge(String(j.refused), 'refused') : '0')));
    }
    more.hidden = jobs.length < 100;
    if (jobs.length) more.onclick = () => void load(jobs[jobs.length - 1]!.lastMs);
    if (!tbody.children.length) tbody.appendChild(h('tr', {}, h('td', { colspan: 10, class: 'muted' }, 'No jobs match.')));
  };
  await load(null);
}

interface ProcNode { pid: number; ppid: number; execs: IndexedEvent[]; exit?: IndexedEvent; children: ProcNode[]; sessions: IndexedEvent[] }

/** The job's process tree from its exec events; a pid that exec'd again keeps one node. */
function processTree(d: JobDetail): ProcNode[] {
  const nodes = new Map<number, ProcNode>();
  const node = (pid: number, ppid: number) => {
    let n = nodes.get(pid);
    if (!n) nodes.set(pid, (n = { pid, ppid, execs: [], children: [], sessions: [] }));
    return n;
  };
  for (const e of d.processes) node(e.event.process?.pid ?? 0, e.event.process?.ppid ?? 0).execs.push(e);
  for (const e of d.exits) {
    const n = nodes.get(e.event.process?.pid ?? 0);
    if (n) n.exit = e;
  }
  for (const c of d.connections) {
    const n = nodes.get(c.event.process?.pid ?? -1);
    if (n) n.sessions.push(c);
  }
  const roots: ProcNode[] = [];
  for (const n of nodes.values()) {
    const parent = nodes.get(n.ppid);
    if (parent && parent !== n) parent.children.push(n);
    else roots.push(n);
  }
  return roots;
}

function renderProc(n: ProcNode): HTMLLIElement {
  const last = n.execs[n.execs.length - 1];
  const code = n.exit?.event.exit;
  return h('li', {},
    h('span', { class: 'mono' }, link(`#/event/${last?.index ?? 0}`, `${n.pid}`), ' ', last ? summary(last.event) : ''),
    n.execs.length > 1 ? h('span', { class: 'muted' }, ` (exec'd ${n.execs.length} times)`) : null,
    code ? h('span', { class: code.exitCode || code.signal ? 'bad' : 'muted' }, ` exit ${code.exitCode ?? 0}${code.signal ? ` signal ${code.signal}` : ''}`) : null,
    n.sessions.length ? h('ul', { class: 'conns' }, n.sessions.map((s) => h('li', {},
      link(`#/session/${encodeURIComponent(s.event.sessionId ?? '')}`, `→ ${endpoint(s.event.destination)} (${s.event.connectionOpen?.protocol ?? 'tcp'})`)))) : null,
    n.children.length ? h('ul', {}, n.children.map(renderProc)) : null);
}

export async function jobView(ctx: ViewContext, key: string): Promise<void> {
  const d = await get<JobDetail>(`/api/jobs/${encodeURIComponent(key)}`);
  const j = d.job;
  const facts: [string, string][] = [
    ['repository', j.repository], ['workflow', j.workflow], ['job', j.job], ['run', j.runId], ['actor', j.actor], ['ref', j.ref], ['commit', j.sha],
    ['identity from', SOURCES[j.source] ?? String(j.source)], ['agent', j.agentId], ['first seen', time(j.firstMs)], ['last seen', time(j.lastMs)],
  ];
  const sessionDest = new Map(d.sessions.map((s) => [s.sessionId, s.destination]));
  const tree = processTree(d);
  replace(ctx.main,
    h('h1', {}, jobLabel(j)),
    h('dl', { class: 'facts' }, facts.filter(([, v]) => v).map(([k, v]) => [h('dt', {}, k), h('dd', { class: 'mono' }, v)]),
      j.url ? [h('dt', {}, 'CI run'), h('dd', {}, h('a', { href: j.url, rel: 'noreferrer noopener', target: '_blank' }, j.url))] : null),
    h('p', {}, `${num(j.events)} events, ${num(j.statements)} statements: `, badge(`${j.denied} denied`, 'deny'), ' ', badge(`${j.masked} masked`, 'mask'), ' ',
      badge(`${j.reviewed} reviewed`, 'review'), ' ', badge(`${j.refused} refused`, 'refused'), ' · ', link(`#/events?jobKey=${encodeURIComponent(j.key)}`, 'all events')),
    h('h2', {}, 'Timeline'),
    jobTimeline(d.activity, (id) => sessionDest.get(id) || id.slice(0, 8), (i) => ctx.go(`#/event/${i}`)),
    d.activity.length >= 5000 ? h('p', { class: 'muted' }, 'showing the newest 5,000 events') : null,
    h('h2', {}, 'Process tree'),
    tree.length ? h('ul', { class: 'tree', 'data-test': 'process-tree' }, tree.map(renderProc)) : h('p', { class: 'muted' }, 'no process events recorded for this job'),
    h('h2', {}, 'Sessions'),
    h('table', { class: 'sessions', 'data-test': 'sessions' },
      h('thead', {}, h('tr', {}, ['session', 'target', 'start', 'duration', 'events', 'statements', 'flagged'].map((c) => h('th', {}, c)))),
      h('tbody', {}, d.sessions.map((s) => h('tr', {},
        h('td', { class: 'mono' }, link(`#/session/${encodeURIComponent(s.sessionId)}`, s.sessionId.startsWith('cgroup-') ? `processes (${s.sessionId})` : s.sessionId)),
        h('td', { class: 'mono' }, s.destination), h('td', { class: 'nowrap' }, time(s.firstMs)), h('td', {}, duration(s.lastMs - s.firstMs)),
        h('td', {}, num(s.events)), h('td', {}, num(s.statements)), h('td', {}, s.flagged ? badge(String(s.flagged), 'deny') : '0'))))));
}

export async function sessionView(ctx: ViewContext, id: string): Promise<void> {
  const { events } = await get<{ events: IndexedEvent[] }>(`/api/sessions/${encodeURIComponent(id)}`);
  const first = events[0]!.event;
  const db = events.find((e) => e.event.dbSession)?.event.dbSession;
  const statements = events.filter((e) => e.event.statement);
  const other = events.filter((e) => !e.event.statement);
  const jobKey = first.job?.repository || first.job?.runId || first.job?.job ? `${first.job?.repository ?? ''}|${first.job?.runId ?? ''}|${first.job?.job ?? ''}` : `agent:${first.agentId ?? ''}`;
  replace(ctx.main,
    h('h1', {}, `Session ${id}`),
    h('dl', { class: 'facts' },
      h('dt', {}, 'job'), h('dd', {}, link(jobHref(jobKey), jobLabel(first.job))),
      h('dt', {}, 'process'), h('dd', { class: 'mono' }, `pid ${first.process?.pid ?? ''}: ${(first.process?.argv ?? []).join(' ')}`),
      first.destination ? [h('dt', {}, 'target'), h('dd', { class: 'mono' }, endpoint(first.destination))] : null,
      db ? [h('dt', {}, 'database'), h('dd', { class: 'mono' }, `${db.protocol ?? ''} ${db.database ?? ''} as ${db.user ?? ''}${db.clientUser && db.clientUser !== db.user ? ` (job asked for ${db.clientUser})` : ''}, auth ${db.auth ?? ''}, client TLS ${db.clientTls ? 'yes' : 'no'}, server TLS ${db.serverTls ? 'yes' : 'no'}`)] : null),
    h('h2', {}, `Statements (${statements.length})`),
    h('table', { class: 'statements', 'data-test': 'statements' },
      h('thead', {}, h('tr', {}, ['index', 'time', 'type', 'statement', 'decision', 'rows', 'duration', 'error'].map((c) => h('th', {}, c)))),
      h('tbody', {}, statements.map((e) => {
        const s = e.event.statement!;
        const dec = decisionOf(e.event);
        return h('tr', {},
          h('td', {}, link(`#/event/${e.index}`, `#${e.index}`)), h('td', { class: 'nowrap' }, time(e.event.time)), h('td', {}, s.type ?? ''),
          h('td', { class: 'mono summary' }, s.text ?? '', s.params?.length ? h('div', { class: 'muted' }, `params: ${s.params.join(', ')}`) : null),
          h('td', {}, badge(dec, dec.split(':')[0]), s.decision?.rule ? h('div', { class: 'muted' }, s.decision.rule) : null),
          h('td', {}, s.rows ?? ''), h('td', {}, s.durationUs ? `${(Number(s.durationUs) / 1000).toFixed(2)} ms` : ''),
          h('td', { class: s.error ? 'bad' : '' }, s.error ? `${s.errorCode ?? ''} ${s.error}` : ''));
      }))),
    h('h2', {}, 'Connection events'),
    h('table', { class: 'events' }, h('tbody', {}, other.map(eventRow))),
    h('p', { class: 'muted' }, `${events.length} events; kinds: ${[...new Set(events.map((e) => kindName(e.event.kind)))].join(', ')}`));
}
