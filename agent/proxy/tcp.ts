// Generic TCP: the connection itself is the audited operation. Bytes are relayed untouched with
// stream.pipe (backpressure included); the byte counts come from the sockets' own counters, so the
// relay adds no per-chunk work.
import type net from 'node:net';
import type { EndReason, ProtocolHandler, Session, SessionEnd } from './handler.js';

export const tcpHandler: ProtocolHandler = {
  name: 'tcp',
  async run(session: Session): Promise<SessionEnd> {
    const { client } = session;
    let upstream: net.Socket;
    try {
      upstream = await session.connectUpstream();
    } catch (err) {
      client.resetAndDestroy();
      return { reason: 'upstream_unreachable', error: (err as Error).message, bytesUp: 0, bytesDown: 0 };
    }
    return relay(session, client, upstream);
  },
};

/** Pipes both ways until both sides are closed; the first side to end or fail names the reason. */
export function relay(session: Session, client: net.Socket, upstream: net.Socket): Promise<SessionEnd> {
  return new Promise((resolve) => {
    let reason: EndReason | undefined;
    let error: string | undefined;
    const first = (r: EndReason, e?: string) => {
      if (!reason) {
        reason = r;
        error = e;
      }
    };
    client.on('end', () => first('client_closed'));
    upstream.on('end', () => first('upstream_closed'));
    client.on('error', (err) => {
      first('client_error', err.message);
      upstream.destroy();
    });
    upstream.on('error', (err) => {
      first('upstream_error', err.message);
      client.resetAndDestroy();
    });
    const onStop = () => {
      first('agent_stopping');
      client.destroy();
      upstream.destroy();
    };
    session.stopping.addEventListener('abort', onStop, { once: true });
    let open = 2;
    const closed = () => {
      if (--open > 0) return;
      session.stopping.removeEventListener('abort', onStop);
      resolve({
        reason: reason ?? 'client_closed',
        error,
        bytesUp: upstream.bytesWritten,
        bytesDown: client.bytesWritten,
      });
    };
    client.once('close', closed);
    upstream.once('close', closed);
    client.pipe(upstream);
    upstream.pipe(client);
  });
}
