// The two pictures: decisions over time (stacked bars) and a job's activity (one lane per session,
// a tick per event, coloured by decision). Plain SVG sized by a viewBox, so they scale with the page.
import { h, svg } from './dom.js';

export const DECISION_ORDER = ['allow', 'mask', 'review', 'deny', 'refused'];

export interface Bucket { startMs: number; counts: Record<string, number> }

export function decisionChart(buckets: Bucket[], sinceMs: number, untilMs: number, bucketMs: number): HTMLElement {
  const W = 800, H = 180, PAD = 28;
  // Buckets are aligned to bucketMs, so the range touches one more than it spans: the partial ones
  // at both ends (the newest, holding what happened just now, most of all) are drawn too.
  const first = Math.floor(sinceMs / bucketMs);
  const n = Math.max(1, Math.floor(untilMs / bucketMs) - first + 1);
  const byStart = new Map(buckets.map((b) => [Math.floor(b.startMs / bucketMs), b]));
  let max = 1;
  for (const b of buckets) max = Math.max(max, Object.values(b.counts).reduce((a, c) => a + c, 0));
  const bw = (W - PAD) / n;
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': 'statement decisions over time' });
  root.appendChild(svg('text', { x: 0, y: 12, class: 'axis' }, String(max)));
  root.appendChild(svg('line', { x1: PAD, y1: H - 16, x2: W, y2: H - 16, class: 'axis-line' }));
  for (let i = 0; i < n; i++) {
    const b = byStart.get(first + i);
    let y = H - 16;
    for (const action of DECISION_ORDER) {
      const c = b?.counts[action] ?? 0;
      if (!c) continue;
      const bh = (c / max) * (H - 32);
      y -= bh;
      const rect = svg('rect', { x: PAD + i * bw + 1, y, width: Math.max(1, bw - 2), height: bh, class: `fill-${action}` });
      rect.appendChild(svg('title', {}, `${new Date((first + i) * bucketMs).toISOString()}: ${c} ${action}`));
      root.appendChild(rect);
    }
  }
  root.appendChild(svg('text', { x: PAD, y: H - 2, class: 'axis' }, new Date(sinceMs).toISOString().slice(0, 16).replace('T', ' ')));
  root.appendChild(svg('text', { x: W, y: H - 2, class: 'axis', 'text-anchor': 'end' }, 'now'));
  return h('figure', { class: 'chart-box' }, root, legend());
}

function legend(): HTMLElement {
  return h('figcaption', { class: 'legend' }, DECISION_ORDER.map((a) => h('span', {}, h('i', { class: `swatch fill-${a}` }), a)));
}

export interface ActivityPoint { index: number; timeMs: number; kind: number; sessionId: string; decision: string }

/** Lanes: sessions in order of first appearance; process events share one "processes" lane. */
export function jobTimeline(points: ActivityPoint[], sessionLabel: (id: string) => string, onPick: (index: number) => void): HTMLElement {
  if (!points.length) return h('p', { class: 'muted' }, 'no activity');
  const t0 = points[0]!.timeMs;
  const t1 = Math.max(points[points.length - 1]!.timeMs, t0 + 1);
  const lanes: string[] = [];
  const laneOf = new Map<string, number>();
  for (const p of points) {
    const lane = p.sessionId.startsWith('cgroup-') ? 'processes' : p.sessionId;
    if (!laneOf.has(lane)) {
      laneOf.set(lane, lanes.length);
      lanes.push(lane);
    }
  }
  const shown = lanes.slice(0, 40);
  const LH = 22, LW = 200, W = 1000;
  const H = shown.length * LH + 24;
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'timeline', role: 'img', 'aria-label': 'job activity timeline' });
  shown.forEach((lane, i) => {
    root.appendChild(svg('text', { x: 0, y: i * LH + 15, class: 'lane-label' }, lane === 'processes' ? 'processes' : sessionLabel(lane)));
    root.appendChild(svg('line', { x1: LW, y1: i * LH + 11, x2: W, y2: i * LH + 11, class: 'lane-line' }));
  });
  const x = (t: number) => LW + ((t - t0) / (t1 - t0)) * (W - LW - 6);
  for (const p of points) {
    const lane = laneOf.get(p.sessionId.startsWith('cgroup-') ? 'processes' : p.sessionId)!;
    if (lane >= shown.length) continue;
    const tick = svg('rect', { x: x(p.timeMs), y: lane * LH + 3, width: 4, height: 16, class: `tick fill-${p.decision || 'event'}` });
    tick.appendChild(svg('title', {}, `#${p.index} ${new Date(p.timeMs).toISOString()} ${p.decision}`));
    tick.addEventListener('click', () => onPick(p.index));
    root.appendChild(tick);
  }
  root.appendChild(svg('text', { x: LW, y: H - 4, class: 'axis' }, new Date(t0).toISOString().slice(11, 19)));
  root.appendChild(svg('text', { x: W, y: H - 4, class: 'axis', 'text-anchor': 'end' }, `${((t1 - t0) / 1000).toFixed(1)} s`));
  const box = h('figure', { class: 'chart-box' }, root, legend());
  if (lanes.length > shown.length) box.appendChild(h('p', { class: 'muted' }, `${lanes.length - shown.length} more sessions not drawn`));
  return box;
}
