// Overview (tiles, decisions chart, live feed), event search, and one event with its proof.
import { get, query } from './api.js';
import type { ViewContext } from './app.js';
import { decisionChart, type Bucket } from './charts.js';
import { ago, badge, h, link, num, replace, submitsTo, time } from './dom.js';
import { decisionOf, endpoint, type IndexedEvent, jobLabel, KINDS, kindName, summary } from './events.js';
import { checkpointSigned, equal, fromBase64, leafHash, parseCheckpoint, rootFromInclusionProof } from './proof.js';

interface Overview {
  now: number; range: { sinceMs: number; bucketMs: number }; size: number;
  checkpoint: { size: number; timeMs: number; root: string } | null; decisions: Bucket[];
  jobs: { active: number; flagged: number }; pendingApprovals: number; agents: { agentId: string; lastSeenMs: number }[];
  verify: { ok: boolean; finishedMs: number; size: number; firstProblem: { index: number; reason: string } | null } | null;
}

interface EventPage { events: IndexedEvent[]; next: number | null; textScanWindow: number | null }

function tile(label: string, value: string | number, href?: string, tone?: string): HTMLElement {
  const body = [h('div', { class: 'tile-value' }, typeof value === 'number' ? num(value) : value), h('div', { class: 'tile-label' }, label)];
  return h('div', { class: `tile${tone ? ` tone-${tone}` : ''}` }, href ? link(href, ...body) : body);
}

export function eventRow(e: IndexedEvent): HTMLTableRowElement {
  const ev = e.event;
  const d = decisionOf(ev);
  return h('tr', { 'data-index': e.index },
    h('td', {}, link(`#/event/${e.index}`, `#${e.index}`)),
    h('td', { class: 'nowrap' }, time(ev.time)),
    h('td', {}, kindName(ev.kind)),
    h('td', { class: 'job' }, jobLabel(ev.job)),
    h('td', { class: 'mono summary' }, summary(ev)),
    h('td', {}, d ? badge(d, d.split(':')[0]) : ''));
}

export function eventTable(rows: IndexedEvent[], caption?: string): HTMLTableElement {
  return h('table', { class: 'events' },
    caption ? h('caption', {}, caption) : null,
    h('thead', {}, h('tr', {}, ['index', 'time', 'kind', 'job', 'what', 'decision'].map((c) => h('th', {}, c)))),
    h('tbody', {}, rows.map(eventRow)));
}

export async function overviewView(ctx: ViewContext): Promise<void> {
  const range = ctx.params.get('range') ?? '24h';
  const o = await get<Overview>(`/api/overview${query({ range })}`);
  const online = o.agents.filter((a) => o.now - a.lastSeenMs < 5 * 60_000).length;
  const cpAge = o.checkpoint ? ago(o.checkpoint.timeMs, o.now) : 'none';
  const verify = o.verify ? (o.verify.ok ? `OK ${ago(o.verify.finishedMs, o.now)}` : 'FAILED') : 'not yet';
  const ranges = ['1h', '24h', '7d', '30d'].map((r) => link(`#/?range=${r}`, r === range ? h('strong', {}, r) : r));
  const feedBody = h('tbody', {});
  const feed = h('table', { class: 'events', 'data-test': 'live-feed' },
    h('thead', {}, h('tr', {}, ['index', 'time', 'kind', 'job', 'what', 'decision'].map((c) => h('th', {}, c)))), feedBody);
  replace(ctx.main,
    h('section', { class: 'tiles' },
      tile('events in the log', o.size, '#/events'),
      tile(`jobs active (${range})`, o.jobs.active, '#/jobs'),
      tile(`jobs with a deny, review or refusal (${range})`, o.jobs.flagged, '#/jobs?flagged=1', o.jobs.flagged ? 'warn' : undefined),
      tile('pending approvals', o.pendingApprovals, '#/approvals', o.pendingApprovals ? 'warn' : undefined),
      tile('agents seen in 5 min', `${online} / ${o.agents.length}`, '#/agents'),
      tile('log integrity', verify, '#/integrity', o.verify && !o.verify.ok ? 'bad' : 'good'),
      tile('latest checkpoint', cpAge, '#/integrity')),
    h('section', {}, h('h2', {}, 'Statement decisions ', h('span', { class: 'ranges' }, ranges)),
      decisionChart(o.decisions, o.range.sinceMs, o.now, o.range.bucketMs)),
    h('section', {}, h('h2', {}, 'Live feed'), feed));

  // The feed: newest 50, then every 2 s whatever came after the newest shown.
  let newest = -1;
  const add = (rows: IndexedEvent[]) => {
    for (const r of rows) {
      feedBody.insertBefore(eventRow(r), feedBody.firstChild);
      newest = Math.max(newest, r.index);
    }
    while (feedBody.children.length > 50) feedBody.lastElementChild!.remove();
  };
  const first = await get<EventPage>('/api/events?limit=50');
  add(first.events.reverse());
  let busy = false;
  const timer = setInterval(() => {
    if (busy) return;
    busy = true;
    get<EventPage>(`/api/events${query({ after: newest, order: 'asc', limit: 200 })}`)
      .then((p) => add(p.events), () => {})
      .finally(() => { busy = false; });
  }, 2000);
  ctx.onLeave(() => clearInterval(timer));
}

const FILTERS: [string, string][] = [
  ['repository', 'repository'], ['workflow', 'workflow'], ['run', 'run id'], ['actor', 'actor'], ['target', 'target (addr:port)'],
];

export async function eventsView(ctx: ViewContext): Promise<void> {
  const p = ctx.params;
  const input = (name: string, label: string, type = 'text') =>
    h('label', {}, label, h('input', { name, type, value: p.get(name) ?? '' }));
  const select = (name: string, label: string, options: string[]) =>
    h('label', {}, label, h('select', { name }, h('option', { value: '' }, 'any'),
      options.map((o) => h('option', { value: o, selected: p.get(name) === o }, o))));
  const form = h('form', { class: 'filters', 'aria-label': 'search events' },
    FILTERS.map(([n, l]) => input(n, l)),
    select('kind', 'kind', KINDS), select('decision', 'decision', ['allow', 'deny', 'mask', 'review', 'refused']),
    input('since', 'since', 'datetime-local'), input('until', 'until', 'datetime-local'),
    input('q', 'text (3+ chars)'),
    h('button', { type: 'submit' }, 'Search'));
  submitsTo(form, '#/events', ctx.go);
  const results = h('div', {});
  replace(ctx.main, h('h1', {}, 'Search events'), form, results);

  const params: Record<string, string> = {};
  for (const [k, v] of p) if (k !== 'before') params[k] = v;
  // datetime-local has no zone: the user means their own.
  for (const k of ['since', 'until']) if (params[k]) params[k] = String(new Date(params[k]!).getTime());
  const tbody = h('tbody', {});
  const more = h('button', { type: 'button' }, 'Older events');
  const note = h('p', { class: 'muted' });
  replace(results, h('table', { class: 'events', 'data-test': 'search-results' },
    h('thead', {}, h('tr', {}, ['index', 'time', 'kind', 'job', 'what', 'decision'].map((c) => h('th', {}, c)))), tbody), note, more);
  const load = async (before: number | null) => {
    const page = await get<EventPage>(`/api/events${query({ ...params, before, limit: 100 })}`);
    for (const r of page.events) tbody.appendChild(eventRow(r));
    more.hidden = page.next === null;
    if (page.next !== null) more.onclick = () => void load(page.next);
    note.textContent = tbody.children.length === 0 ? 'No events match.' : page.textScanWindow
      ? `Text search looked at the newest ${num(page.textScanWindow)} events; give a time range to search further back.` : '';
  };
  await load(null);
}

interface EventDetail {
  index: number; agentId: string; seq: number; event: IndexedEvent['event']; leaf: string;
  checkpoint: string | null; verifierKey: string; proof: { size: number; hashes: string[] } | null;
}

export async function eventView(ctx: ViewContext, arg: string): Promise<void> {
  const d = await get<EventDetail>(`/api/events/${arg}`);
  const ev = d.event;
  const facts: [string, unknown][] = [
    ['time', time(ev.time)], ['kind', kindName(ev.kind)], ['agent', `${d.agentId}, seq ${d.seq}`],
    ['job', ev.job ? jobLabel(ev.job) : ''], ['commit', ev.job?.sha ?? ''], ['actor', ev.job?.actor ?? ''],
    ['command line', (ev.process?.argv ?? []).join(' ')], ['process', ev.process ? `pid ${ev.process.pid ?? ''} ${ev.process.exe ?? ''} (user ${ev.process.user ?? ev.process.uid ?? ''})` : ''],
    ['target', endpoint(ev.destination)], ['decision', decisionOf(ev)], ['rule', ev.statement?.decision?.rule ?? ''],
  ];
  const proofBox = h('div', { class: 'proof', 'data-test': 'proof' }, 'checking the inclusion proof in your browser…');
  const jobKey = ev.job?.repository || ev.job?.runId || ev.job?.job ? `${ev.job?.repository ?? ''}|${ev.job?.runId ?? ''}|${ev.job?.job ?? ''}` : `agent:${d.agentId}`;
  replace(ctx.main,
    h('h1', {}, `Event #${d.index}`),
    h('p', { class: 'mono summary-big' }, summary(ev)),
    h('p', {}, ev.sessionId ? link(`#/session/${encodeURIComponent(ev.sessionId)}`, 'session') : null, ' · ', link(`#/job/${encodeURIComponent(jobKey)}`, 'job')),
    h('dl', { class: 'facts' }, facts.filter(([, v]) => v).map(([k, v]) => [h('dt', {}, k), h('dd', { class: 'mono' }, String(v))])),
    h('h2', {}, 'Integrity'), proofBox,
    h('h2', {}, 'The event as stored'), h('pre', { class: 'json' }, JSON.stringify(ev, null, 2)));

  if (!d.proof || !d.checkpoint) {
    proofBox.textContent = 'Not yet covered by a signed checkpoint (one is published every second while the log grows): reload shortly.';
    return;
  }
  try {
    const cp = parseCheckpoint(d.checkpoint);
    const root = await rootFromInclusionProof(d.index, d.proof.size, await leafHash(fromBase64(d.leaf)), d.proof.hashes.map(fromBase64));
    const signed = await checkpointSigned(cp, d.verifierKey);
    const ok = cp.size === d.proof.size && equal(root, cp.root) && signed;
    proofBox.className = `proof ${ok ? 'ok' : 'bad'}`;
    replace(proofBox,
      h('strong', {}, ok ? '✓ Verified in your browser: ' : '✗ Verification FAILED: '),
      ok ? `this event is leaf ${d.index} of the log whose checkpoint of size ${num(cp.size)} is signed by ${cp.origin}.`
        : !signed ? 'the checkpoint signature does not verify with the collector key.' : 'the inclusion proof does not lead to the checkpoint root.',
      h('details', {}, h('summary', {}, 'proof details'),
        h('dl', { class: 'facts' },
          h('dt', {}, 'checkpoint'), h('dd', {}, h('pre', {}, d.checkpoint)),
          h('dt', {}, 'verifier key'), h('dd', { class: 'mono' }, d.verifierKey, h('br'), h('span', { class: 'muted' }, 'compare with checkpoint.pub from `runguard ca init`')),
          h('dt', {}, 'proof hashes'), h('dd', { class: 'mono' }, d.proof.hashes.map((x) => h('div', {}, x))))));
  } catch (err) {
    proofBox.className = 'proof bad';
    proofBox.textContent = `✗ cannot verify: ${(err as Error).message}`;
  }
}
