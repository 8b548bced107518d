// The dashboard's page, style sheet and scripts. The HTML and CSS are served from the source tree,
// the scripts from their tsc output beside this module. Loaded into memory once; served with a
// Content-Security-Policy that allows nothing but this origin: no inline script, no inline style,
// no framing. (Event text is attacker-controlled: the UI only ever sets it as textContent.)
import { readdirSync, readFileSync } from 'node:fs';
import type http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const SOURCE_UI = path.resolve(here, '../../../collector/dashboard/ui');
const BUILT_UI = path.join(here, 'ui');

const SECURITY_HEADERS = {
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
  'cross-origin-opener-policy': 'same-origin',
};

interface Asset { type: string; body: Buffer }

function load(): Map<string, Asset> {
  const assets = new Map<string, Asset>();
  const html = readFileSync(path.join(SOURCE_UI, 'index.html'));
  assets.set('/', { type: 'text/html; charset=utf-8', body: html });
  assets.set('/ui/style.css', { type: 'text/css; charset=utf-8', body: readFileSync(path.join(SOURCE_UI, 'style.css')) });
  for (const f of readdirSync(BUILT_UI)) {
    if (f.endsWith('.js')) assets.set(`/ui/${f}`, { type: 'text/javascript; charset=utf-8', body: readFileSync(path.join(BUILT_UI, f)) });
  }
  return assets;
}

export function createAssets(): (req: http.IncomingMessage, res: http.ServerResponse) => boolean {
  const assets = load();
  return (req, res) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') return false;
    const pathname = new URL(req.url ?? '/', 'http://collector').pathname;
    const asset = assets.get(pathname === '/index.html' ? '/' : pathname);
    if (!asset) return false;
    res.writeHead(200, { 'content-type': asset.type, 'cache-control': 'no-cache', 'content-length': asset.body.length, ...SECURITY_HEADERS });
    res.end(req.method === 'HEAD' ? undefined : asset.body);
    return true;
  };
}
