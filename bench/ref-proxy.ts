// The reference for bench/connect.ts: the classic iptables transparent proxy, as small as it gets.
// An `iptables -t nat ... -j REDIRECT --to-ports PORT` rule sends the client here; the original
// destination comes from getsockopt(SOL_IP, SO_ORIGINAL_DST) on the accepted socket (conntrack's
// pre-NAT address). Then connect upstream and pipe both ways, with the same socket options and relay
// (stream.pipe) as runguard's generic TCP handler, but no audit, identity or policy work: the
// difference between the two is what runguard's connect path costs beyond the redirect itself.
//
// Node has no binding for SO_ORIGINAL_DST, so getsockopt is called from libc through koffi (the FFI
// the agent already uses for libbpf).
//
//   node dist/bench/ref-proxy.js [--port N]     (0 = any free port; prints {"port": N} when listening)
// A line "stats" on stdin prints {"accepted": N, "failed": N}.
import net from 'node:net';
import readline from 'node:readline';
import koffi from 'koffi';

const SOL_IP = 0;
const SO_ORIGINAL_DST = 80;
const AF_INET = 2;

const libc = koffi.load('libc.so.6');
const getsockopt = libc.func('int getsockopt(int sockfd, int level, int optname, void *optval, _Inout_ uint32_t *optlen)');
const strerror = libc.func('const char *strerror(int errnum)');

/** The pre-NAT destination of an accepted, REDIRECTed IPv4 socket. */
function originalDst(socket: net.Socket): { address: string; port: number } {
  const fd = (socket as any)._handle?.fd as number | undefined;
  if (typeof fd !== 'number' || fd < 0) throw new Error('accepted socket has no fd');
  const sa = Buffer.alloc(16); // struct sockaddr_in: family u16 (host order), port u16 BE, addr[4], zero[8]
  const len = [sa.length];
  if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, sa, len) !== 0) {
    throw new Error(`getsockopt(SO_ORIGINAL_DST): ${strerror(koffi.errno())}`);
  }
  const family = sa.readUInt16LE(0);
  if (family !== AF_INET) throw new Error(`SO_ORIGINAL_DST returned address family ${family}`);
  return { address: `${sa[4]}.${sa[5]}.${sa[6]}.${sa[7]}`, port: sa.readUInt16BE(2) };
}

const portArg = process.argv.indexOf('--port');
const listenPort = portArg >= 0 ? Number(process.argv[portArg + 1]) : 0;
const stats = { accepted: 0, failed: 0 };

const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (client) => {
  client.on('error', () => {});
  let dst: { address: string; port: number };
  try {
    dst = originalDst(client);
  } catch {
    stats.failed++;
    client.resetAndDestroy();
    return;
  }
  // A connection that was not redirected reports the proxy itself: never relay to ourselves.
  if (dst.port === (server.address() as net.AddressInfo).port && dst.address.startsWith('127.')) {
    stats.failed++;
    client.resetAndDestroy();
    return;
  }
  stats.accepted++;
  const upstream = net.connect({ host: dst.address, port: dst.port, allowHalfOpen: true, noDelay: true });
  upstream.on('error', () => client.resetAndDestroy());
  client.on('error', () => upstream.destroy());
  client.pipe(upstream);
  upstream.pipe(client);
});

server.listen({ host: '127.0.0.1', port: listenPort }, () => {
  process.stdout.write(JSON.stringify({ port: (server.address() as net.AddressInfo).port }) + '\n');
});
server.on('error', (err) => {
  process.stderr.write(`ref-proxy: ${err.message}\n`);
  process.exit(1);
});

// stdin closing means the bench is gone: go with it rather than linger.
readline.createInterface({ input: process.stdin })
  .on('line', (line) => {
    if (line.trim() === 'stats') process.stdout.write(JSON.stringify(stats) + '\n');
  })
  .on('close', () => process.exit(0));
for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => process.exit(0));
