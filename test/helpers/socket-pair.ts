// Connected loopback sockets for tests that hand descriptors to the native relay.
import net from 'node:net';
import { once } from 'node:events';

/** A socket's descriptor (Node keeps it on the handle), or -1. */
export const fdOf = (sock: net.Socket): number => (sock as unknown as { _handle?: { fd?: number } })._handle?.fd ?? -1;

/**
 * Two connected loopback sockets: `a` connected, `b` accepted. With `pauseOnConnect`, Node never
 * reads `b`, so its descriptor can be handed to the relay while `a` stays the far end.
 */
export async function socketPair(opts: { pauseOnConnect?: boolean } = {}): Promise<{ a: net.Socket; b: net.Socket; close: () => void }> {
  const server = net.createServer({ pauseOnConnect: opts.pauseOnConnect ?? false });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  const a = net.connect(port, '127.0.0.1');
  const [b] = (await once(server, 'connection')) as [net.Socket];
  await once(a, 'connect');
  return { a, b, close: () => { a.destroy(); b.destroy(); server.close(); } };
}
