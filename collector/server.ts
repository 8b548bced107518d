// The collector process: gRPC ingest and log queries over mutual TLS, a checkpointer that signs the
// tree head every second while it grows, and the HTTP read API.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { ApprovalsService, IngestService, LogService, type AgentStatusMsg, type BatchAck, type EventBatch, type HeartbeatAck } from '../proto/services.js';
import { consistencyProof, inclusionProof, signCheckpoint } from './merkle/index.js';
import { Ingestor, type AgentPeer } from './ingest.js';
import { createReadApi } from './http.js';
import { SqliteStore } from './store/sqlite.js';
import { ApprovalRegistry, approvalsServiceImpl, createApprovalsApi, postApprovalWebhook, UserStore } from './approvals/index.js';
import { Authenticator, createDashboard, startVerifier, type Verifier } from './dashboard/index.js';
import { agentIdentityFromCert, ed25519Raw, loadCheckpointSigner, peerAgentIdentity, tlsServerCredentials } from './pki/identity.js';
import { heartbeatProblem } from './heartbeat.js';

export interface CollectorOptions {
  dataDir: string;
  tlsDir: string;
  listen: string;           // host:port for gRPC
  http?: string;            // host:port for the read API and the dashboard
  /** Serve --http over TLS with the collector's certificate (needed off loopback: cookies are Secure). */
  httpTls?: boolean;
  /** How often the collector verifies its own log in the background (0: only on request). */
  verifyIntervalMs?: number;
  log: Logger;
  checkpointIntervalMs?: number;
  /** Slack-compatible incoming webhook told about every new approval request. */
  approvalWebhook?: string;
}

export interface RunningCollector {
  grpcPort: number;
  httpPort?: number;
  store: SqliteStore;
  ingestor: Ingestor;
  approvals: ApprovalRegistry;
  publishCheckpoint(): void;
  stop(): Promise<void>;
}

function splitHostPort(s: string, what: string): { host: string; port: number } {
  const m = /^\[?([^\]]*)\]?:(\d+)$/.exec(s);
  if (!m) throw new Error(`${what} "${s}" must be HOST:PORT`);
  return { host: m[1]!, port: Number(m[2]) };
}

export async function startCollector(opts: CollectorOptions): Promise<RunningCollector> {
  const { log } = opts;
  const store = SqliteStore.open(opts.dataDir);
  const ingestor = new Ingestor(store);
  const signer = loadCheckpointSigner(opts.tlsDir);
  let latest = store.latestCheckpoint();

  const publishCheckpoint = () => {
    const size = store.size();
    if (latest && latest.size === size) return;
    const root = Buffer.from(store.root());
    const note = signCheckpoint({ origin: signer.name, size, root }, signer);
    latest = { size, root, note, timeMs: Date.now() };
    store.saveCheckpoint(latest);
    log.debug({ size }, 'checkpoint published');
  };
  publishCheckpoint();
  const timer = setInterval(publishCheckpoint, opts.checkpointIntervalMs ?? 1000);

  const approvals = new ApprovalRegistry(store.db, log.child({ component: 'approvals' }));
  if (opts.approvalWebhook) {
    const url = opts.approvalWebhook;
    approvals.on('opened', (rec) => void postApprovalWebhook(url, rec, log));
  }

  const server = new grpc.Server({ 'grpc.max_receive_message_length': 64 << 20 });
  server.addService(IngestService, {
    stream: (call: grpc.ServerDuplexStream<EventBatch, BatchAck>) => {
      const cert = call.getAuthContext()?.sslPeerCertificate;
      const who = cert ? agentIdentityFromCert(cert.raw) : { ok: false as const, reason: 'no client certificate' };
      if (!who.ok) {
        log.warn({ peer: call.getPeer(), reason: who.reason }, 'refused an ingest stream');
        call.emit('error', { code: grpc.status.UNAUTHENTICATED, details: `not an enrolled agent: ${who.reason}` });
        return;
      }
      const peer: AgentPeer = {
        agentId: who.value.agentId,
        signingKey: ed25519Raw(who.value.signingKey),
        certificate: `-----BEGIN CERTIFICATE-----\n${cert!.raw.toString('base64').replace(/(.{64})/g, '$1\n')}\n-----END CERTIFICATE-----\n`,
      };
      const agentLog = log.child({ agent: peer.agentId });
      agentLog.info('agent stream opened');
      call.on('data', (batch: EventBatch) => {
        let ack: BatchAck;
        try {
          ack = ingestor.handle(peer, batch);
        } catch (err) {
          // A store failure: nothing was acknowledged, the agent resends after reconnecting.
          agentLog.error({ err }, 'cannot store a batch');
          call.emit('error', { code: grpc.status.UNAVAILABLE, details: `collector cannot store events: ${(err as Error).message}` });
          return;
        }
        if (ack.error) agentLog.warn({ reason: ack.error, firstSeq: ack.firstSeq }, 'rejected a batch');
        call.write(ack);
      });
      call.on('end', () => call.end());
      call.on('error', () => {});
    },
    heartbeat: (call: grpc.ServerUnaryCall<AgentStatusMsg, HeartbeatAck>, cb: grpc.sendUnaryData<HeartbeatAck>) => {
      const status = call.request;
      const who = peerAgentIdentity(call as unknown as Parameters<typeof peerAgentIdentity>[0]);
      if (!who.ok) {
        log.warn({ peer: call.getPeer(), reason: who.reason }, 'refused a heartbeat');
        cb({ code: grpc.status.UNAUTHENTICATED, details: `not an enrolled agent: ${who.reason}` });
        return;
      }
      const agentId = who.value.agentId;
      // Checked here rather than by peerAgentIdentity's claim so that a mismatch is a permission
      // error (enrolled, but speaking for another agent), not an unknown client.
      if (status.agentId && status.agentId !== agentId) {
        log.warn({ agent: agentId, claimed: status.agentId }, 'refused a heartbeat for another agent');
        cb({ code: grpc.status.PERMISSION_DENIED, details: `this client certificate is for agent ${JSON.stringify(agentId)}; it cannot report the status of agent ${JSON.stringify(status.agentId)}` });
        return;
      }
      const problem = heartbeatProblem(status);
      if (problem) {
        cb({ code: grpc.status.INVALID_ARGUMENT, details: problem });
        return;
      }
      const receivedMs = Date.now();
      try {
        store.saveAgentStatus(agentId, { ...status, agentId }, receivedMs);
      } catch (err) {
        log.error({ err, agent: agentId }, 'cannot save an agent status');
        cb({ code: grpc.status.UNAVAILABLE, details: `collector cannot save the status: ${(err as Error).message}` });
        return;
      }
      // At debug, every status: the store keeps only the latest, the log the history.
      log.debug({ agent: agentId, status }, 'agent status');
      cb(null, { receivedMs });
    },
  });
  server.addService(LogService, {
    getCheckpoint: (_call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<{ note: string }>) => {
      publishCheckpoint();
      cb(null, { note: latest!.note });
    },
    getInclusionProof: (call: grpc.ServerUnaryCall<{ index: number; treeSize: number }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      const { index, treeSize } = call.request;
      if (treeSize > store.size() || index >= treeSize) {
        cb({ code: grpc.status.OUT_OF_RANGE, details: `index ${index} is not in a tree of size ${treeSize}` });
        return;
      }
      inclusionProof(index, treeSize, store.getNode).then(
        (hashes) => cb(null, { hashes: hashes.map((h) => Buffer.from(h)), leafHash: Buffer.from(store.getNode(0, index)) }),
        (err: Error) => cb({ code: grpc.status.INTERNAL, details: err.message }),
      );
    },
    getConsistencyProof: (call: grpc.ServerUnaryCall<{ fromSize: number; toSize: number }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      const { fromSize, toSize } = call.request;
      if (fromSize < 1 || fromSize > toSize || toSize > store.size()) {
        cb({ code: grpc.status.OUT_OF_RANGE, details: `no consistency proof from ${fromSize} to ${toSize}` });
        return;
      }
      consistencyProof(fromSize, toSize, store.getNode).then(
        (hashes) => cb(null, { hashes: hashes.map((h) => Buffer.from(h)), leafHash: Buffer.alloc(0) }),
        (err: Error) => cb({ code: grpc.status.INTERNAL, details: err.message }),
      );
    },
  });
  server.addService(ApprovalsService, approvalsServiceImpl(approvals, log.child({ component: 'approvals' })));
  const listen = splitHostPort(opts.listen, '--listen');
  const grpcPort = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${listen.host.includes(':') ? `[${listen.host}]` : listen.host}:${listen.port}`, tlsServerCredentials(opts.tlsDir), (err, port) => (err ? reject(err) : resolve(port)));
  });

  let httpServer: http.Server | undefined;
  let httpPort: number | undefined;
  let verifier: Verifier | undefined;
  if (opts.http) {
    const h = splitHostPort(opts.http, '--http');
    const readApi = createReadApi({ store, checkpoint: () => latest, log });
    const auth = new Authenticator(UserStore.forDataDir(opts.dataDir));
    const approvalsApi = createApprovalsApi({ registry: approvals, auth, log });
    const interval = opts.verifyIntervalMs ?? 3600_000;
    verifier = startVerifier({ dataDir: opts.dataDir, tlsDir: opts.tlsDir, intervalMs: interval > 0 ? interval : 2 ** 31 - 1, log: log.child({ component: 'verify' }) });
    verifier.start('collector start');
    const dashboard = createDashboard({
      store, auth, approvals, checkpoint: () => latest, verifierKey: readFileSync(path.join(opts.tlsDir, 'checkpoint.pub'), 'utf8').trim(),
      verifier, log: log.child({ component: 'dashboard' }),
    });
    const handler: http.RequestListener = (req, res) => void (approvalsApi(req, res) || dashboard(req, res) || readApi(req, res));
    httpServer = opts.httpTls
      ? https.createServer({
        cert: readFileSync(path.join(opts.tlsDir, 'server.crt')), key: readFileSync(path.join(opts.tlsDir, 'server.key')),
      }, handler)
      : http.createServer(handler);
    httpPort = await new Promise<number>((resolve, reject) => {
      httpServer!.once('error', reject);
      httpServer!.listen(h.port, h.host, () => resolve((httpServer!.address() as { port: number }).port));
    });
  }
  log.info({ grpc: `${listen.host}:${grpcPort}`, http: httpPort ? `${opts.http?.replace(/:\d+$/, '')}:${httpPort}` : undefined, size: store.size(), origin: signer.name }, 'collector running');

  return {
    grpcPort, httpPort, store, ingestor, approvals, publishCheckpoint,
    async stop() {
      clearInterval(timer);
      // Agents hold their ingest streams open; every ack is sent only after its commit, so cutting
      // them after a short grace loses nothing (the agents resend what was not acknowledged).
      await new Promise<void>((r) => {
        const force = setTimeout(() => server.forceShutdown(), 1000);
        server.tryShutdown(() => {
          clearTimeout(force);
          r();
        });
      });
      if (httpServer) {
        httpServer.closeAllConnections();
        await new Promise<void>((r) => httpServer!.close(() => r()));
      }
      approvals.close();
      await verifier?.stop();
      publishCheckpoint();
      store.close();
    },
  };
}
