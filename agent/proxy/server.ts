// The agent's proxy: one port, on 127.0.0.1 and ::1, where the BPF connect hooks send watched jobs.
//
// On accept, the peer's address:port is the job socket's local end, which is the key the sockops
// program published the redirect record under: from it come the original destination and the
// process. A connection without a record did not come through the redirect (someone dialled the
// proxy directly) and is refused: the proxy is not an open relay.
import net from 'node:net';
import { randomFillSync } from 'node:crypto';
import type { Logger } from 'pino';
import { EventKind, type EventDraft, type JobInfo, type ProcessInfo, type SelfEncodingEvent } from '../../proto/index.js';
import { SessionEventEncoder } from '../../proto/session-events.js';
import type { Origin } from '../bpf/layout.js';
import { bytes16ToIp } from '../net/addr.js';
import type { ReadBuffer } from '../net/read-buffer.js';
import type { ProtocolHandler, Session, SessionEnd, SessionEventDraft } from './handler.js';
import type { Redactor } from '../redact/redactor.js';

export interface OriginSource {
  takeOrigin(address: string, port: number): Origin | undefined;
}

export interface IdentityProvider {
  forConnection(origin: Origin): { process: ProcessInfo; job: JobInfo; redactor?: Redactor };
}

export interface EventSink {
  append(draft: EventDraft | SelfEncodingEvent): { seq: number; durable: Promise<void> };
  /** False while events cannot be made durable (spool full or failing): no new work is admitted. */
  admitting(): boolean;
}

export interface ProxyOptions {
  port: number;
  origins: OriginSource;
  identity: IdentityProvider;
  events: EventSink;
  handlerFor: (origin: Origin) => ProtocolHandler;
  log: Logger;
  upstreamConnectTimeoutMs?: number;
  /** Told the number of live sessions whenever it changes. */
  onActiveChange?: (active: number) => void;
}

const LISTEN_ADDRESSES = ['127.0.0.1', '::1'];

const idBytes = Buffer.alloc(16);

/**
 * A UUIDv7 (RFC 9562): time-ordered, so the collector's session index grows at its right edge
 * instead of taking random page splits (random UUIDs halved its insert rate in bench/ingest).
 */
export function sessionId(now = Date.now()): string {
  randomFillSync(idBytes, 6, 10);
  idBytes.writeUIntBE(now, 0, 6);
  idBytes[6] = (idBytes[6]! & 0x0f) | 0x70;
  idBytes[8] = (idBytes[8]! & 0x3f) | 0x80;
  const h = idBytes.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export class ProxyServer {
  private readonly servers: net.Server[] = [];
  private readonly stopController = new AbortController();
  private readonly live = new Set<Promise<void>>();
  stats = { accepted: 0, refused: 0, active: 0 };

  constructor(private readonly opts: ProxyOptions) {}

  async listen(): Promise<void> {
    for (const host of LISTEN_ADDRESSES) {
      const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => this.accept(socket));
      await new Promise<void>((resolve, reject) => {
        server.once('error', (err: NodeJS.ErrnoException) => {
          reject(new Error(`proxy cannot listen on [${host}]:${this.opts.port}: ${err.code === 'EADDRINUSE' ? 'the port is in use (another agent running?)' : err.message}`));
        });
        server.listen({ port: this.opts.port, host, ipv6Only: host === '::1' }, () => resolve());
      });
      server.on('error', (err) => this.opts.log.error({ err }, 'proxy listener error'));
      this.servers.push(server);
    }
  }

  private accept(client: net.Socket): void {
    const peerAddress = client.remoteAddress;
    const peerPort = client.remotePort;
    if (!peerAddress || !peerPort) {
      client.destroy();
      return;
    }
    const origin = this.opts.origins.takeOrigin(peerAddress, peerPort);
    if (!origin) {
      this.refuse(client, undefined, 'no_redirect_record', `connection from ${peerAddress}:${peerPort} did not come through the redirect`);
      return;
    }
    if (!this.opts.events.admitting()) {
      this.refuse(client, origin, 'spool_unavailable', 'the audit spool cannot take events (full or failing); refusing new connections until it can');
      return;
    }
    this.stats.accepted++;
    this.stats.active++;
    this.opts.onActiveChange?.(this.stats.active);
    const done = this.runSession(client, origin, peerAddress, peerPort)
      .catch((err) => this.opts.log.error({ err }, 'session failed unexpectedly'))
      .finally(() => {
        this.stats.active--;
        this.opts.onActiveChange?.(this.stats.active);
        this.live.delete(done);
      });
    this.live.add(done);
  }

  private refuse(client: net.Socket, origin: Origin | undefined, reason: string, error: string): void {
    this.stats.refused++;
    client.on('error', () => {});
    client.resetAndDestroy();
    const draft: EventDraft = {
      kind: EventKind.EVENT_KIND_CONNECTION_REFUSED!,
      sessionId: sessionId(),
      source: { address: client.remoteAddress ?? '', port: client.remotePort ?? 0 },
      connectionRefused: { reason, error },
    };
    if (origin) {
      const who = this.opts.identity.forConnection(origin);
      Object.assign(draft, { process: who.process, job: who.job, destination: { address: bytes16ToIp(origin.addr), port: origin.port } });
    }
    this.opts.events.append(draft);
    this.opts.log.warn({ reason, peer: `${client.remoteAddress}:${client.remotePort}` }, error);
  }

  private async runSession(client: net.Socket, origin: Origin, peerAddress: string, peerPort: number): Promise<void> {
    const started = Date.now();
    const id = sessionId();
    const destination = { address: bytes16ToIp(origin.addr), port: origin.port };
    const source = { address: peerAddress.replace(/^::ffff:/, ''), port: peerPort };
    const { process, job, redactor } = this.opts.identity.forConnection(origin);
    const handler = this.opts.handlerFor(origin);
    const log = this.opts.log.child({ session: id, pid: origin.pid, dst: `${destination.address}:${destination.port}` });
    const events = this.opts.events;
    const timeoutMs = this.opts.upstreamConnectTimeoutMs ?? 10_000;
    client.on('error', () => {}); // reported through the handler's result, not as an unhandled error
    const encoder = new SessionEventEncoder({ sessionId: id, process, job, destination, source });
    const session: Session = {
      id, client, origin, destination, source, process, job, redactor, log,
      stopping: this.stopController.signal,
      emit: (draft: SessionEventDraft) => {
        events.append(encoder.event(draft));
      },
      eventFields: encoder,
      connectUpstream: (reads?: ReadBuffer) => connectTo(destination, timeoutMs, reads),
    };
    // The open event is durable before a single byte reaches the target: no unaudited session.
    await events.append({
      kind: EventKind.EVENT_KIND_CONNECTION_OPEN!, sessionId: id, process, job, destination, source,
      connectionOpen: { protocol: handler.name, ipFamily: origin.family, socketCookie: String(origin.cookie) },
    }).durable;
    let end: SessionEnd;
    try {
      end = await handler.run(session);
    } catch (err) {
      client.destroy();
      end = { reason: 'protocol_error', error: (err as Error).message, bytesUp: 0, bytesDown: client.bytesWritten };
    }
    session.emit({
      kind: EventKind.EVENT_KIND_CONNECTION_CLOSE!,
      connectionClose: {
        protocol: handler.name, bytesUp: end.bytesUp, bytesDown: end.bytesDown,
        durationMs: Date.now() - started, reason: end.reason, error: end.error ?? '', relay: end.relay ?? '', relaySummarized: end.relaySummarized ?? 0,
        relayEncoded: end.relayEncoded ?? 0,
      },
    });
    log.debug({ reason: end.reason, up: end.bytesUp, down: end.bytesDown }, 'session closed');
  }

  /** Stops accepting, ends live sessions (reason agent_stopping) and waits for their close events. */
  async close(): Promise<void> {
    await Promise.all(this.servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
    this.stopController.abort();
    await Promise.all([...this.live]);
  }
}

function connectTo(dst: { address: string; port: number }, timeoutMs: number, reads?: ReadBuffer): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: dst.address, port: dst.port, allowHalfOpen: true, noDelay: true, ...(reads && { onread: reads.onread }) });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`connecting to ${dst.address}:${dst.port} timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      // Errors from here on belong to the handler's relay; this keeps one from going unhandled
      // in the gap before the handler attaches its own listener.
      socket.on('error', () => {});
      resolve(socket);
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`connecting to ${dst.address}:${dst.port}: ${err.message}`));
    });
  });
}
