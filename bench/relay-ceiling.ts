// What a Node 20 socket relay costs per PostgreSQL transaction, before any protocol work: the floor
// under runguard's PostgreSQL handler (bench/pgbench.ts). pgbench select-only (-S, simple and prepared
// protocol) runs through each relay variant, side by side in one run with pgbench talking to
// PostgreSQL directly and through pgbouncer (session mode), all to the same PostgreSQL 15 on
// 127.0.0.2. Each relay runs in its own node process, so its cpu time (/proc/PID/stat) is its own:
//   data     socket 'data' events + write() per chunk, pause/resume on backpressure: what the
//            PostgreSQL handler did before this bench (and what every stream-based relay does);
//   pipe     stream.pipe both ways (bench/ref-proxy.ts, the generic TCP handler);
//   cork     'data' + write() inside cork(), uncorked on the next tick: writev batching of all the
//            chunks one socket delivers in a loop iteration;
//   onread   net.Socket `onread: { buffer, callback }` on both sockets: libuv reads into one reused
//            buffer per socket, no Buffer object or Readable machinery per read; the chunk is
//            written from that buffer (the accepted socket is re-wrapped around its handle, since
//            net.Server has no onread option). A buffer still held by a write that went async is
//            given up and the next read gets a fresh one, so nothing is overwritten in flight;
//   onread1  onread on the upstream socket only, the accepted socket as in `data`;
//   rawwrite onread + writes straight to the libuv handle (process.binding('stream_wrap').WriteWrap),
//            bypassing the Writable state machine (a request object and a nextTick per write): not
//            something to ship (deprecated internals), only how much of the rest is the stream layer.
// tps is pgbench's; "us/txn" is the relay's cpu time over the run divided by the transactions.
//
//   npx tsc -p . && node dist/bench/relay-ceiling.js [--time 10] [--warmup 2] [--clients 8]
//                    [--threads 2] [--variants data,pipe,cork,onread,onread1,rawwrite] [--workloads simple,prepared]
//   node dist/bench/relay-ceiling.js --serve VARIANT --upstream HOST:PORT   (one relay; prints {"port": N})
//
// Needs root (PostgreSQL runs as the postgres user), pgbench, the PostgreSQL 15 server binaries, and
// pgbouncer for the reference path. Stops everything it started by pid, removes its temp dirs.
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import os from 'node:os';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { startPostgres } from '../test/helpers/postgres.js';
import { cleanupAll, cpuSeconds, onCleanup, run, stopChild, table, track } from './harness.js';
import { startPgbouncer } from './pgbouncer.js';

const HOST = '127.0.0.2';
const SELF = fileURLToPath(import.meta.url);
const VARIANTS = ['data', 'pipe', 'cork', 'onread', 'onread1', 'rawwrite'] as const;
type Variant = (typeof VARIANTS)[number];
const READ_SIZE = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// The relays

/** Both directions of one connection; `a` is the accepted (job) side, `b` the upstream side. */
function serve(variant: Variant, upstream: { host: string; port: number }): void {
  const rewrap = variant === 'onread' || variant === 'rawwrite';
  const server = net.createServer({ allowHalfOpen: true, noDelay: true, pauseOnConnect: rewrap }, (accepted) => {
    accepted.on('error', () => {});
    if (variant === 'pipe') {
      const b = net.connect({ ...upstream, allowHalfOpen: true, noDelay: true });
      b.on('error', () => accepted.destroy());
      accepted.on('error', () => b.destroy());
      accepted.pipe(b);
      b.pipe(accepted);
      return;
    }
    if (variant === 'data' || variant === 'cork') {
      const b = net.connect({ ...upstream, allowHalfOpen: true, noDelay: true });
      streamSide(accepted, b, variant === 'cork');
      streamSide(b, accepted, variant === 'cork');
      closeTogether(accepted, b);
      return;
    }
    // onread variants: reads land in a reused buffer and go out from it.
    const raw = variant === 'rawwrite';
    let a: net.Socket = accepted;
    let b: net.Socket;
    const up = new OnreadSide(() => b, raw);
    const down = new OnreadSide(() => a, raw);
    if (variant === 'onread1') {
      a.on('data', (chunk: Buffer) => { if (!b.write(chunk)) a.pause(); });
      b = net.connect({ ...upstream, allowHalfOpen: true, noDelay: true, onread: down.onread(() => b) });
      b.on('drain', () => a.resume());
    } else {
      a = adoptWithOnread(accepted, up.onread(() => a));
      b = net.connect({ ...upstream, allowHalfOpen: true, noDelay: true, onread: down.onread(() => b) });
    }
    a.on('drain', () => b.resume());
    b.on('drain', () => a.resume());
    closeTogether(a, b);
  });
  server.listen({ host: '127.0.0.1', port: 0 }, () => {
    process.stdout.write(JSON.stringify({ port: (server.address() as net.AddressInfo).port }) + '\n');
  });
  readline.createInterface({ input: process.stdin }).on('close', () => process.exit(0));
  process.once('SIGTERM', () => process.exit(0));
}

function closeTogether(a: net.Socket, b: net.Socket): void {
  a.on('error', () => b.destroy());
  b.on('error', () => a.destroy());
  a.on('end', () => b.end());
  b.on('end', () => a.end());
  a.on('close', () => b.destroy());
  b.on('close', () => a.destroy());
}

function streamSide(from: net.Socket, to: net.Socket, cork: boolean): void {
  let corked = false;
  const uncork = () => { corked = false; to.uncork(); };
  from.on('data', (chunk: Buffer) => {
    if (cork && !corked) {
      corked = true;
      to.cork();
      process.nextTick(uncork);
    }
    if (!to.write(chunk)) from.pause();
  });
  to.on('drain', () => from.resume());
}

/**
 * A socket around an accepted socket's handle, with onread: net.Server has no onread option, so the
 * server accepts with pauseOnConnect (nothing read yet) and the handle moves to a new net.Socket.
 */
function adoptWithOnread(accepted: net.Socket, onread: net.OnReadOpts): net.Socket {
  const handle = (accepted as unknown as { _handle: unknown })._handle;
  (accepted as unknown as { _handle: unknown })._handle = null;
  accepted.destroy(); // no handle any more: only the server's connection count is released
  return new net.Socket({ handle, allowHalfOpen: true, readable: true, writable: true, onread } as net.SocketConstructorOpts);
}

// Writes straight to the libuv handle (bench only: deprecated internals).
type StreamBinding = { WriteWrap: new () => Record<string, unknown>; streamBaseState: Int32Array; kLastWriteWasAsync: number };
let binding: StreamBinding | undefined;
function rawWrite(sock: net.Socket, data: Buffer, onDone: () => void): boolean {
  binding ??= (process as unknown as { binding(n: string): StreamBinding }).binding('stream_wrap');
  const handle = (sock as unknown as { _handle: { writeBuffer(req: unknown, b: Buffer): number } | null })._handle;
  if (!handle) return true;
  const req = new binding.WriteWrap();
  req.handle = handle;
  req.oncomplete = onDone;
  req.async = false;
  const err = handle.writeBuffer(req, data);
  if (err) {
    sock.destroy();
    return true;
  }
  return !binding.streamBaseState[binding.kLastWriteWasAsync];
}

/** One direction of an onread relay: reads into `buf`, writes to `to()`. */
class OnreadSide {
  private buf = Buffer.allocUnsafe(READ_SIZE);
  /** The current buffer is referenced by a write still in flight: the next read needs another. */
  private held = false;
  private pending = 0;
  constructor(private readonly to: () => net.Socket, private readonly raw: boolean) {}

  onread(from: () => net.Socket): net.OnReadOpts {
    return {
      buffer: () => {
        if (this.held) {
          this.held = false;
          this.buf = Buffer.allocUnsafe(READ_SIZE);
        }
        return this.buf;
      },
      callback: (n: number, buf: Uint8Array) => {
        const chunk = Buffer.from(buf.buffer, buf.byteOffset, n);
        const to = this.to();
        if (this.raw) {
          if (rawWrite(to, chunk, () => { if (--this.pending === 0) from().resume(); })) return true;
          this.pending++;
          this.held = true;
          return false; // stop reading until the write completes
        }
        const ok = to.write(chunk);
        if (to.writableLength > 0) this.held = true;
        return ok; // false stops reading; 'drain' resumes
      },
    };
  }
}

// ---------------------------------------------------------------------------------------------
// The bench

interface Options {
  time: number;
  warmup: number;
  clients: number;
  threads: number;
  variants: Variant[];
  workloads: string[];
}

function parseArgs(argv: string[]): Options {
  const opts: Options = { time: 10, warmup: 2, clients: 8, threads: 2, variants: [...VARIANTS], workloads: ['simple', 'prepared'] };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i]!.replace(/^--/, '');
    const value = argv[i + 1];
    if (value === undefined) throw new Error(`--${key} needs a value`);
    if (key === 'variants') {
      opts.variants = value.split(',').map((v) => {
        if (!(VARIANTS as readonly string[]).includes(v)) throw new Error(`unknown variant ${v}; one of ${VARIANTS.join(',')}`);
        return v as Variant;
      });
    } else if (key === 'workloads') {
      opts.workloads = value.split(',');
      for (const w of opts.workloads) if (w !== 'simple' && w !== 'prepared') throw new Error(`unknown workload ${w}: simple or prepared`);
    } else if (key === 'time' || key === 'warmup' || key === 'clients' || key === 'threads') {
      opts[key] = Number(value);
    } else {
      throw new Error(`unknown option --${key}`);
    }
  }
  return opts;
}

async function startRelay(variant: Variant, pgPort: number): Promise<{ port: number; pid: number; proc: ChildProcess }> {
  const proc = spawn(process.execPath, [SELF, '--serve', variant, '--upstream', `${HOST}:${pgPort}`], { stdio: ['pipe', 'pipe', 'inherit'] });
  track(proc);
  onCleanup(`relay ${variant}`, () => stopChild(proc, 3000));
  const line = await new Promise<string>((resolve, reject) => {
    readline.createInterface({ input: proc.stdout! }).once('line', resolve);
    proc.once('exit', (code) => reject(new Error(`relay ${variant} exited with ${code}`)));
  });
  return { port: (JSON.parse(line) as { port: number }).port, pid: proc.pid!, proc };
}

async function pgbench(args: string[], host: string, port: number, seconds: number, opts: Options) {
  const r = await run(['pgbench', '-n', ...args, '-c', String(opts.clients), '-j', String(opts.threads), '-T', String(seconds),
    '-h', host, '-p', String(port), '-U', 'postgres', 'postgres'], { timeoutMs: (seconds + 60) * 1000, env: { PGSSLMODE: 'disable' } });
  const tps = Number(/^tps = ([\d.]+) \(without initial connection time\)/m.exec(r.stdout)?.[1]);
  const txns = Number(/^number of transactions actually processed: (\d+)/m.exec(r.stdout)?.[1]);
  if (r.code !== 0 || !(txns > 0)) throw new Error(`pgbench exited with ${r.code}: ${(r.stderr || r.stdout).slice(-800)}`);
  return { tps, txns };
}

async function main(): Promise<number> {
  const opts = parseArgs(process.argv.slice(2));
  const say = (s: string) => process.stderr.write(`relay-ceiling: ${s}\n`);
  const pg = startPostgres({ ssl: false });
  onCleanup('postgres', () => pg.stop());
  const init = await run(['pgbench', '-i', '-s', '10', '-q', '-h', pg.dir, '-p', String(pg.port), '-U', 'postgres', 'postgres'], { timeoutMs: 300_000 });
  if (init.code !== 0) throw new Error(`pgbench -i failed: ${init.stderr}`);
  const paths: { name: string; host: string; port: number; pid?: number }[] = [{ name: 'direct', host: HOST, port: pg.port }];
  try {
    const b = await startPgbouncer(pg, HOST);
    paths.push({ name: 'pgbouncer', host: '127.0.0.1', port: b.port, pid: b.pid });
  } catch (err) {
    say(`no pgbouncer: ${(err as Error).message}`);
  }
  for (const v of opts.variants) {
    const r = await startRelay(v, pg.port);
    paths.push({ name: `node ${v}`, host: '127.0.0.1', port: r.port, pid: r.pid });
  }
  const rows: string[][] = [['workload', 'path', 'tps', 'x direct', 'x pgbouncer', 'proxy us/txn', 'proxy cpu', 'host idle']];
  for (const w of opts.workloads) {
    const args = ['-S', '-M', w];
    const results = new Map<string, { tps: number; us: number; cpu: number; idle: number }>();
    for (const p of paths) {
      say(`select-only -M ${w} via ${p.name}`);
      if (opts.warmup) await pgbench(args, p.host, p.port, opts.warmup, opts);
      const c0 = p.pid ? cpuSeconds(p.pid) : 0;
      const h0 = os.cpus().reduce((s, c) => s + c.times.idle, 0);
      const t0 = process.hrtime.bigint();
      const r = await pgbench(args, p.host, p.port, opts.time, opts);
      const wall = Number(process.hrtime.bigint() - t0) / 1e9;
      const cpu = p.pid ? cpuSeconds(p.pid) - c0 : NaN;
      const idle = (os.cpus().reduce((s, c) => s + c.times.idle, 0) - h0) / 1000 / (wall * os.cpus().length);
      results.set(p.name, { tps: r.tps, us: (cpu * 1e6) / r.txns, cpu: cpu / wall, idle });
    }
    const d = results.get('direct')!.tps;
    const b = results.get('pgbouncer')?.tps ?? NaN;
    for (const [name, r] of results) {
      rows.push([`select-only -M ${w}`, name, r.tps.toFixed(0), (r.tps / d).toFixed(2), (r.tps / b).toFixed(2),
        Number.isFinite(r.us) ? r.us.toFixed(1) : '-', Number.isFinite(r.cpu) ? `${(100 * r.cpu).toFixed(0)}%` : '-', `${(100 * r.idle).toFixed(0)}%`]);
    }
  }
  process.stdout.write(`\npgbench -c ${opts.clients} -j ${opts.threads}, ${opts.time} s per path, node ${process.version}, ${os.cpus().length} cpus\n`);
  process.stdout.write(table(rows, 'll') + '\n');
  process.stdout.write('  proxy us/txn: cpu time of the relay process (user+sys) per transaction; host idle: idle share of all cpus\n');
  return 0;
}

const serveAt = process.argv.indexOf('--serve');
if (serveAt >= 0) {
  const variant = process.argv[serveAt + 1] as Variant;
  const [host, port] = process.argv[process.argv.indexOf('--upstream') + 1]!.split(':');
  serve(variant, { host: host!, port: Number(port) });
} else {
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => void cleanupAll().finally(() => process.exit(130)));
  if (process.getuid?.() !== 0) throw new Error('run as root (PostgreSQL runs as the postgres user)');
  try {
    process.exitCode = await main();
  } catch (err) {
    process.stderr.write(`relay-ceiling: ${(err as Error).stack}\n`);
    process.exitCode = 1;
  } finally {
    await cleanupAll();
  }
}
