// `runguard approvals`, `runguard approve ID`, `runguard deny ID`: the approver's side of
// just-in-time approvals, against the collector's HTTP API (--collector http://HOST:PORT, its --http
// address). The CLI signs in as a named approver (--user, else $RUNGUARD_USER, else the login name)
// with the password from $RUNGUARD_PASSWORD or, without a prompt, the first line of stdin.
import os from 'node:os';
import { parseArgs, UsageError } from './args.js';

interface Auth { url: string; user: string; password: string }

async function readStdinLine(): Promise<string> {
  if (process.stdin.isTTY) return '';
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8').split(/\r?\n/)[0] ?? '';
}

export async function readPassword(): Promise<string> {
  const pw = process.env.RUNGUARD_PASSWORD ?? (await readStdinLine());
  if (!pw) throw new UsageError('no password: set RUNGUARD_PASSWORD or give it on stdin (first line)');
  return pw;
}

async function auth(a: { collector?: string; user?: string }): Promise<Auth> {
  const url = (a.collector ?? process.env.RUNGUARD_COLLECTOR_URL ?? 'http://127.0.0.1:7480').replace(/\/+$/, '');
  if (!/^https?:\/\//.test(url)) throw new UsageError(`--collector must be the collector's HTTP address, e.g. http://127.0.0.1:7480, got "${url}"`);
  const user = a.user ?? process.env.RUNGUARD_USER ?? os.userInfo().username;
  return { url, user, password: await readPassword() };
}

async function call(au: Auth, method: 'GET' | 'POST', p: string, body?: unknown): Promise<unknown> {
  let res: Response;
  try {
    res = await fetch(`${au.url}${p}`, {
      method,
      headers: {
        authorization: `Basic ${Buffer.from(`${au.user}:${au.password}`).toString('base64')}`,
        ...(body !== undefined && { 'content-type': 'application/json' }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new Error(`cannot reach the collector at ${au.url}: ${(err as Error & { cause?: Error }).cause?.message ?? (err as Error).message}`);
  }
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  if (!res.ok) {
    const e = json as { error?: string; message?: string } | undefined;
    const hint = res.status === 401 ? ` (signing in as "${au.user}")` : '';
    throw new Error(`${e?.message ?? text.trim()}${hint}`);
  }
  return json;
}

interface ApprovalJson {
  id: string; state: string; job: Record<string, string>; target: { address?: string; port?: number; hostname?: string };
  operation: { type?: string; text?: string; objects?: string[]; database?: string }; rule: string; approvers: string;
  approvalsNeeded: number; approvedBy: string[]; deadline: string; created: string; deniedBy?: string; reason?: string; protocol: string;
}

const jobText = (j: Record<string, string>) =>
  [j.repository, j.workflow, j.job, j.runId && `#${j.runId}`, j.actor && `@${j.actor}`].filter(Boolean).join(' ') || '(no job identity)';
const targetText = (t: ApprovalJson['target']) => `${t.hostname || t.address || '?'}:${t.port ?? '?'}`;

export async function approvalsCommand(argv: string[]): Promise<number> {
  const a = parseArgs(argv, { collector: 'string', user: 'string', json: 'boolean', state: 'string' });
  if (a._.length) throw new UsageError('usage: runguard approvals [--collector URL] [--user NAME] [--state pending|approved|denied|expired|cancelled|all] [--json]');
  const au = await auth(a);
  const list = (await call(au, 'GET', `/api/approvals?state=${encodeURIComponent(a.state ?? 'pending')}`)) as ApprovalJson[];
  if (a.json) {
    for (const r of list) {
      process.stdout.write(JSON.stringify({
        id: r.id, state: r.state, job: r.job, target: r.target, protocol: r.protocol, operation: r.operation, rule: r.rule,
        approvers: r.approvers, approvalsNeeded: r.approvalsNeeded, approvedBy: r.approvedBy, created: r.created, deadline: r.deadline,
        ...(r.deniedBy && { deniedBy: r.deniedBy }), ...(r.reason && { reason: r.reason }),
      }) + '\n');
    }
    return 0;
  }
  if (!list.length) {
    process.stdout.write(`no ${a.state ?? 'pending'} approval requests\n`);
    return 0;
  }
  for (const r of list) {
    const text = (r.operation.text ?? '').replace(/\s+/g, ' ');
    process.stdout.write(`${r.id}  ${r.state}  ${r.operation.type ?? ''} on ${targetText(r.target)}  rule ${r.rule}  ` +
      `${r.approvedBy.length}/${r.approvalsNeeded} approvals${r.approvers ? ` from ${r.approvers}` : ''}  until ${r.deadline}\n` +
      `    job: ${jobText(r.job)}\n    ${text.length > 200 ? text.slice(0, 200) + '…' : text}\n`);
  }
  return 0;
}

async function decide(argv: string[], verdict: 'approve' | 'deny'): Promise<number> {
  const a = parseArgs(argv, { collector: 'string', user: 'string', reason: 'string', json: 'boolean' });
  const id = a._[0];
  if (!id || a._.length > 1) throw new UsageError(`usage: runguard ${verdict} ID [--collector URL] [--user NAME]${verdict === 'deny' ? ' [--reason TEXT]' : ''}`);
  const au = await auth(a);
  const r = (await call(au, 'POST', `/api/approvals/${encodeURIComponent(id)}/${verdict}`, a.reason === undefined ? {} : { reason: a.reason })) as ApprovalJson;
  if (a.json) process.stdout.write(JSON.stringify(r) + '\n');
  else if (r.state === 'pending') process.stdout.write(`${r.id}: approval by ${au.user} recorded; ${r.approvedBy.length} of ${r.approvalsNeeded} approvals, still pending\n`);
  else process.stdout.write(`${r.id}: ${r.state}${r.state === 'approved' ? ` by ${r.approvedBy.join(', ')}` : r.deniedBy ? ` by ${r.deniedBy}` : ''}${r.reason ? `: ${r.reason}` : ''}\n`);
  return 0;
}

export const approveCommand = (argv: string[]) => decide(argv, 'approve');
export const denyCommand = (argv: string[]) => decide(argv, 'deny');
