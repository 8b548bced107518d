// Talking to the collector: same-origin fetches with the session cookie; writes carry the CSRF token
// the collector handed out at sign-in. An expired session sends the user back to the sign-in form.
export interface User { name: string; roles: string[]; groups: string[] }

export class ApiError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

let csrf: string | null = null;
let onSignedOut: () => void = () => {};

export function setCsrf(token: string | null): void {
  csrf = token;
}

export function whenSignedOut(fn: () => void): void {
  onSignedOut = fn;
}

async function call<T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { 'x-runguard-ui': '1' };
  if (method === 'POST') {
    headers['content-type'] = 'application/json';
    if (csrf) headers['x-csrf-token'] = csrf;
  }
  const res = await fetch(path, { method, headers, credentials: 'same-origin', body: body === undefined ? (method === 'POST' ? '{}' : undefined) : JSON.stringify(body) });
  const text = await res.text();
  let value: unknown;
  try {
    value = text ? JSON.parse(text) : null;
  } catch {
    throw new ApiError(res.status, 'bad_response', `the collector answered ${res.status} with something that is not JSON`);
  }
  if (!res.ok) {
    const e = value as { error?: string; message?: string } | null;
    if (res.status === 401 && path !== '/api/login') onSignedOut();
    throw new ApiError(res.status, e?.error ?? 'error', e?.message ?? `HTTP ${res.status}`);
  }
  return value as T;
}

export const get = <T>(path: string) => call<T>('GET', path);
export const post = <T>(path: string, body?: unknown) => call<T>('POST', path, body);

export function query(params: Record<string, string | number | undefined | null>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : '';
}
