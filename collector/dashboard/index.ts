// The dashboard served by the collector's --http listener: the page (assets.ts), its JSON API
// (api.ts) and sign-in (auth.ts). Returns one request handler that claims its own paths.
import type http from 'node:http';
import { createDashboardApi, type DashboardApiOptions } from './api.js';
import { createAssets } from './assets.js';

export { Authenticator } from './auth.js';
export { startVerifier, type Verifier, type VerifyRun } from './verifier.js';

export type DashboardOptions = DashboardApiOptions;

export function createDashboard(opts: DashboardOptions): (req: http.IncomingMessage, res: http.ServerResponse) => boolean {
  const api = createDashboardApi(opts);
  const assets = createAssets();
  return (req, res) => api(req, res) || assets(req, res);
}
