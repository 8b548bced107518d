// pgbouncer, the reference PostgreSQL proxy of the benchmarks (bench/pgbench.ts,
// bench/relay-ceiling.ts): session mode on 127.0.0.1, a generated ini (auth_type trust, pool 20,
// max_client_conn 100, idle server connections closed after 1 s), run as the postgres user,
// stopped by pid at cleanup.
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { freePort } from '../test/helpers/ports.js';
import type { PgServer } from '../test/helpers/postgres.js';
import { onCleanup, sh, stopChild, track } from './harness.js';

export interface Bouncer {
  port: number;
  pid: number;
  version: string;
}

function canConnect(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Starts pgbouncer in front of `pg` (which listens on `host`); throws if it is not installed. */
export async function startPgbouncer(pg: PgServer, host: string): Promise<Bouncer> {
  const bin = ['/usr/sbin/pgbouncer', '/usr/bin/pgbouncer'].find((p) => existsSync(p)) ?? 'pgbouncer';
  const version = sh(bin, ['--version']);
  if (!version.ok) throw new Error(`pgbouncer is not installed (apt-get install -y pgbouncer): ${version.out}`);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'rg-pgbouncer-'));
  onCleanup('pgbouncer dir', () => rmSync(dir, { recursive: true, force: true }));
  chmodSync(dir, 0o755); // pgbouncer drops to the postgres user (-u) before reading its files
  const port = await freePort();
  writeFileSync(path.join(dir, 'userlist.txt'), '"postgres" ""\n', { mode: 0o644 });
  writeFileSync(path.join(dir, 'pgbouncer.ini'), [
    '[databases]',
    `postgres = host=${host} port=${pg.port} dbname=postgres user=postgres`,
    '[pgbouncer]',
    `listen_addr = 127.0.0.1`, `listen_port = ${port}`, 'unix_socket_dir =',
    'auth_type = trust', `auth_file = ${path.join(dir, 'userlist.txt')}`,
    'pool_mode = session', 'default_pool_size = 20', 'max_client_conn = 100',
    'log_connections = 0', 'log_disconnections = 0', 'log_pooler_errors = 1',
    // Server connections idle for a second are closed, so that every run starts on new backends,
    // as it does directly and through runguard (one backend per job connection): a pool kept warm
    // from the previous run would spare pgbouncer's backends the page faults of their first
    // seconds, which is not the proxy's cost being measured.
    'server_idle_timeout = 1',
  ].join('\n') + '\n', { mode: 0o644 });
  const proc = spawn(bin, ['-u', 'postgres', path.join(dir, 'pgbouncer.ini')], { stdio: ['ignore', 'pipe', 'pipe'] });
  track(proc);
  onCleanup('pgbouncer', () => stopChild(proc, 5000));
  let log = '';
  proc.stdout!.on('data', (d: Buffer) => (log = (log + d).slice(-8192)));
  proc.stderr!.on('data', (d: Buffer) => (log = (log + d).slice(-8192)));
  for (let i = 0; i < 100; i++) {
    if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`pgbouncer exited with ${proc.exitCode}:\n${log}`);
    if (await canConnect('127.0.0.1', port)) return { port, pid: proc.pid!, version: version.out.split('\n')[0]! };
    await sleep(100);
  }
  throw new Error(`pgbouncer does not listen on 127.0.0.1:${port} after 10 s:\n${log}`);
}
