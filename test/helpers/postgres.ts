// A real PostgreSQL for the tests: initdb in a temp dir, run as the postgres user, listening on a
// loopback address other than 127.0.0.1 (so a redirected connection is visibly not a direct one),
// with SCRAM and md5 users and server TLS. Stopped by its postmaster pid.
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const PGBIN = (() => {
  const base = '/usr/lib/postgresql';
  const versions = readdirSync(base).filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a));
  if (!versions.length) throw new Error('PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)');
  return path.join(base, versions[0]!, 'bin');
})();

const PASSWORDS = { scram_user: 'scram-Secret-123', md5_user: 'md5-Secret-456' } as const;

function asPostgres(cmd: string, args: string[], opts: { input?: string } = {}): string {
  return execFileSync('runuser', ['-u', 'postgres', '--', path.join(PGBIN, cmd), ...args], { encoding: 'utf8', input: opts.input, stdio: ['pipe', 'pipe', 'pipe'] });
}

export interface PgServer {
  host: string;
  port: number;
  dir: string;
  passwords: typeof PASSWORDS;
  /** psql as the superuser over the unix socket (bypasses the redirect: for setup and checks). */
  admin(sql: string, db?: string): string;
  stop(): void;
}

export function startPostgres(opts: { host?: string; port?: number; ssl?: boolean } = {}): PgServer {
  const host = opts.host ?? '127.0.0.2';
  const port = opts.port ?? 25432 + (process.pid % 1000);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'rg-pg-'));
  chmodSync(dir, 0o755);
  const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
  chownSync(dir, uid, gid);
  const data = path.join(dir, 'data');
  asPostgres('initdb', ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync']);
  const conf: string[] = [
    `listen_addresses = '${host}'`, `port = ${port}`, `unix_socket_directories = '${dir}'`, 'fsync = off',
    'password_encryption = scram-sha-256', 'max_connections = 100', 'shared_buffers = 64MB',
  ];
  if (opts.ssl !== false) {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2',
      '-subj', '/CN=pg-test', '-keyout', path.join(data, 'server.key'), '-out', path.join(data, 'server.crt')], { stdio: 'ignore' });
    chownSync(path.join(data, 'server.key'), uid, gid);
    chownSync(path.join(data, 'server.crt'), uid, gid);
    chmodSync(path.join(data, 'server.key'), 0o600);
    conf.push('ssl = on');
  }
  writeFileSync(path.join(data, 'postgresql.auto.conf'), conf.join('\n') + '\n');
  // trust for the superuser and the test roles on the network, passwords for the password roles.
  writeFileSync(path.join(data, 'pg_hba.conf'), [
    'local all all trust',
    `host all scram_user 0.0.0.0/0 scram-sha-256`,
    `host all md5_user 0.0.0.0/0 md5`,
    `host all all 0.0.0.0/0 trust`,
    `host all all ::/0 trust`,
  ].join('\n') + '\n');
  asPostgres('pg_ctl', ['-D', data, '-l', path.join(dir, 'log'), '-w', '-t', '30', 'start']);
  const admin = (sql: string, db = 'postgres') =>
    execFileSync('psql', ['-h', dir, '-p', String(port), '-U', 'postgres', '-d', db, '-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-c', sql], { encoding: 'utf8' });
  admin(`CREATE ROLE scram_user LOGIN PASSWORD '${PASSWORDS.scram_user}'`);
  admin(`SET password_encryption = 'md5'; CREATE ROLE md5_user LOGIN PASSWORD '${PASSWORDS.md5_user}'`);
  admin('GRANT ALL ON SCHEMA public TO PUBLIC');
  return {
    host, port, dir, passwords: PASSWORDS, admin,
    stop() {
      const pid = Number(readFileSync(path.join(data, 'postmaster.pid'), 'utf8').split('\n')[0]);
      spawnSync('kill', ['-INT', String(pid)]); // fast shutdown, by pid
      for (let i = 0; i < 100; i++) {
        if (spawnSync('kill', ['-0', String(pid)]).status !== 0) break;
        spawnSync('sleep', ['0.1']);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
