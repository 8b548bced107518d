// The dashboard served by the collector's --http listener: the page (assets.ts), its JSON API
// (api.ts) and sign-in (auth.ts). Returns one request handler that claims its own paths.
import type http from 'node:http';
import type { Logger } from 'pino';
import type { ApprovalRegistry } from '../approvals/registry.js';
import type { LogStore, StoredCheckpoint } from '../store/store.js';
import { createDashboardApi } from './api.js';
import { createAssets } from './assets.js';
import type { Authenticator } from './auth.js';
import type { Verifier } from './verifier.js';

export { Authenticator } from './auth.js';
export { startVerifier, type Verifier, type VerifyRun } from './verifier.js';

export interface DashboardOptions {
  store: LogStore;
  auth: Authenticator;
  approvals: ApprovalRegistry;
  checkpoint: () => StoredCheckpoint | undefined;
  verifierKey: string;
  verifier: Verifier;
  log: Logger;
}

export function createDashboard(opts: DashboardOptions): (req: http.IncomingMessage, res: http.ServerResponse) => boolean {
  const api = createDashboardApi(opts);
  const assets = createAssets();
  return (req, res) => api(req, res) || assets(req, res);
}
