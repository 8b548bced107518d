// The Approvals gRPC service: an agent (mutual TLS, its id from the client certificate) opens a
// request and waits on the stream. A dropped stream leaves the request pending (the agent
// re-attaches with the same id after a reconnect or a collector restart); it ends at its deadline,
// or when the agent cancels it because the held session ended.
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { ApprovalRequestMsg, ApprovalUpdateMsg, CancelApprovalRequestMsg } from '../../proto/services.js';
import { peerAgentIdentity } from '../pki/identity.js';
import { ApprovalError, isFinal, toUpdate, type ApprovalRecord, type ApprovalRegistry } from './registry.js';

export function approvalsServiceImpl(registry: ApprovalRegistry, log: Logger) {
  return {
    request: (call: grpc.ServerWritableStream<ApprovalRequestMsg, ApprovalUpdateMsg>) => {
      const req = call.request;
      const who = peerAgentIdentity(call as unknown as Parameters<typeof peerAgentIdentity>[0], req.agentId || undefined);
      if (!who.ok) {
        log.warn({ peer: call.getPeer(), reason: who.reason }, 'refused an approval request');
        call.emit('error', { code: grpc.status.UNAUTHENTICATED, details: `not an enrolled agent: ${who.reason}` });
        return;
      }
      const agentId = who.value.agentId;
      let rec: ApprovalRecord;
      try {
        rec = registry.open(agentId, { ...req, agentId });
      } catch (err) {
        const e = err as ApprovalError;
        const code = e instanceof ApprovalError ? (e.status === 409 ? grpc.status.ALREADY_EXISTS : grpc.status.INVALID_ARGUMENT) : grpc.status.INTERNAL;
        if (code === grpc.status.INTERNAL) log.error({ err }, 'cannot register an approval request');
        call.emit('error', { code, details: e.message });
        return;
      }
      let done = false;
      const send = (r: ApprovalRecord) => {
        if (done || r.id !== rec.id) return;
        call.write(toUpdate(r));
        if (isFinal(r)) {
          done = true;
          registry.off('change', send);
          call.end();
        }
      };
      registry.on('change', send);
      call.on('cancelled', () => {
        done = true;
        registry.off('change', send);
      });
      send(rec);
    },
    cancel: (call: grpc.ServerUnaryCall<CancelApprovalRequestMsg, ApprovalUpdateMsg>, cb: grpc.sendUnaryData<ApprovalUpdateMsg>) => {
      const req = call.request;
      const who = peerAgentIdentity(call as unknown as Parameters<typeof peerAgentIdentity>[0], req.agentId || undefined);
      if (!who.ok) {
        log.warn({ peer: call.getPeer(), reason: who.reason }, 'refused an approval cancel');
        cb({ code: grpc.status.UNAUTHENTICATED, details: `not an enrolled agent: ${who.reason}` });
        return;
      }
      try {
        cb(null, toUpdate(registry.cancel(req.requestId, who.value.agentId, req.reason.slice(0, 1000))));
      } catch (err) {
        if (!(err instanceof ApprovalError)) {
          log.error({ err }, 'cannot cancel an approval request');
          cb({ code: grpc.status.INTERNAL, details: (err as Error).message });
          return;
        }
        const code = err.status === 404 ? grpc.status.NOT_FOUND : err.status === 403 ? grpc.status.PERMISSION_DENIED : grpc.status.FAILED_PRECONDITION;
        cb({ code, details: err.message });
      }
    },
  };
}
