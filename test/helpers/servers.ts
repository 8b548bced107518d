// Small real servers for the capture tests: a TCP echo server that records which peers it saw.
import net from 'node:net';

export interface EchoServer {
  port: number;
  peers: { address: string; port: number }[];
  close(): Promise<void>;
}

export async function echoServer(host: string, port = 0): Promise<EchoServer> {
  const peers: { address: string; port: number }[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    peers.push({ address: s.remoteAddress!, port: s.remotePort! });
    s.on('error', () => {});
    s.on('close', () => sockets.delete(s));
    s.pipe(s);
  });
  await new Promise<void>((r, j) => server.once('error', j).listen({ host, port, ipv6Only: host.includes(':') }, () => r()));
  return {
    port: (server.address() as net.AddressInfo).port,
    peers,
    close: () => new Promise<void>((r) => {
      for (const s of sockets) s.destroy();
      server.close(() => r());
    }),
  };
}
