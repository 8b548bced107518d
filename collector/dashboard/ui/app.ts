// The dashboard's shell: sign-in, navigation and a hash router. Views live in views-*.ts; each
// renders into <main> and may register a cleanup (a live feed's timer) for when the user leaves.
import { ApiError, get, post, setCsrf, whenSignedOut, type User } from './api.js';
import { h, replace } from './dom.js';
import { eventView, eventsView, overviewView } from './views-log.js';
import { jobsView, jobView, sessionView } from './views-jobs.js';
import { agentsView, approvalsView, integrityView } from './views-ops.js';

export interface ViewContext {
  main: HTMLElement;
  user: User;
  params: URLSearchParams;
  /** Registers work to stop when the user navigates away. */
  onLeave(fn: () => void): void;
  /** Navigates, keeping history. */
  go(hash: string): void;
}

type View = (ctx: ViewContext, arg: string) => Promise<void> | void;

const ROUTES: [RegExp, View][] = [
  [/^\/$/, overviewView],
  [/^\/jobs$/, jobsView],
  [/^\/job\/(.+)$/, jobView],
  [/^\/session\/(.+)$/, sessionView],
  [/^\/events$/, eventsView],
  [/^\/event\/(\d+)$/, eventView],
  [/^\/approvals$/, approvalsView],
  [/^\/agents$/, agentsView],
  [/^\/integrity$/, integrityView],
];

const NAV: [string, string][] = [['#/', 'Overview'], ['#/jobs', 'Jobs'], ['#/events', 'Search'], ['#/approvals', 'Approvals'], ['#/agents', 'Agents'], ['#/integrity', 'Integrity']];

let user: User | null = null;
let leaving: (() => void)[] = [];
/** Bumped by every navigation: a view that answers after the user moved on must not draw. */
let generation = 0;
const main = () => document.getElementById('main')!;

/** Ends the current view: its cleanups run, and whatever it still had in flight lands nowhere. */
function leave(): number {
  for (const fn of leaving) fn();
  leaving = [];
  return ++generation;
}

async function start(): Promise<void> {
  whenSignedOut(() => {
    user = null;
    setCsrf(null);
    showLogin('Your session ended: sign in again.');
  });
  try {
    const s = await get<{ user: User; csrf: string | null }>('/api/session');
    user = s.user;
    setCsrf(s.csrf);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) throw err;
  }
  window.addEventListener('hashchange', () => void route());
  if (user) await route();
  else showLogin();
}

function showLogin(message?: string): void {
  leave();
  replace(document.getElementById('nav')!);
  replace(document.getElementById('who')!);
  const error = h('p', { class: 'error', role: 'alert' }, message ?? '');
  const name = h('input', { name: 'user', autocomplete: 'username', required: true, autofocus: true });
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const form = h('form', { class: 'login', 'aria-label': 'sign in' },
    h('h1', {}, 'Sign in to runguard'),
    h('label', {}, 'User', name),
    h('label', {}, 'Password', password),
    h('button', { type: 'submit' }, 'Sign in'),
    error,
    h('p', { class: 'muted' }, 'Users are created on the collector host with `runguard user add`.'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    post<{ user: User; csrf: string }>('/api/login', { user: name.value, password: password.value }).then((s) => {
      user = s.user;
      setCsrf(s.csrf);
      password.value = '';
      void route();
    }, (err: Error) => {
      error.textContent = err.message;
    });
  });
  replace(main(), form);
}

function renderChrome(current: string): void {
  replace(document.getElementById('nav')!, NAV.map(([href, label]) => {
    const active = href === '#/' ? current === '/' : current.startsWith(href.slice(1));
    return h('a', { href, class: active ? 'active' : null, 'aria-current': active ? 'page' : null }, label);
  }));
  const logout = h('button', { class: 'link', type: 'button' }, 'Sign out');
  logout.addEventListener('click', () => {
    void post('/api/logout').finally(() => {
      user = null;
      setCsrf(null);
      showLogin();
    });
  });
  replace(document.getElementById('who')!, h('span', { 'data-test': 'who' }, `${user!.name} (${user!.roles.join(', ')})`), ' ', logout);
}

async function route(): Promise<void> {
  const gen = leave();
  if (!user) return showLogin();
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, qs] = raw.split('?', 2) as [string, string | undefined];
  renderChrome(path);
  const found = ROUTES.find(([re]) => re.test(path));
  const el = main();
  if (!found) return replace(el, h('p', { class: 'error' }, `no page ${path}`));
  const m = found[0].exec(path)!;
  // Each view draws into its own container. A view still awaiting its data when the user moves on
  // (the overview's queries, say, after a quick click on Approvals) then draws into a detached
  // element instead of over the page the user went to.
  const view = h('div', { class: 'view' }, h('p', { class: 'muted' }, 'loading…'));
  replace(el, view);
  const ctx: ViewContext = {
    main: view, user, params: new URLSearchParams(qs ?? ''),
    // A cleanup registered after the user left (a live feed started late) runs at once.
    onLeave: (fn) => (gen === generation ? leaving.push(fn) : fn()),
    // Nor may it navigate: a late answer (Verify now's POST) must not take the user back.
    go: (hash) => {
      if (gen === generation) location.hash = hash;
    },
  };
  try {
    await found[1](ctx, m[1] ? decodeURIComponent(m[1]) : '');
  } catch (err) {
    if (gen !== generation || (err instanceof ApiError && err.status === 401)) return;
    replace(view, h('p', { class: 'error', role: 'alert' }, (err as Error).message));
  }
}

void start();
