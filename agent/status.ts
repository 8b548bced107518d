// The agent's status report (runguard.v1.AgentStatus), gathered from the parts that know each piece:
// the BPF runtime, the proxy, the spool and the shipper (which is also the witness).
import type { AgentStatusMsg } from '../proto/services.js';
import { BacklogMeter } from './events/backlog.js';
import type { Shipper } from './events/shipper.js';
import type { Spool } from './events/spool.js';
import { VERSION } from './version.js';

export type BpfStatus = NonNullable<AgentStatusMsg['bpf']>;

export interface StatusSources {
  agentId: string;
  startedMs: number;
  spool: Spool;
  shipper: Shipper;
  proxyPort: number;
  proxy?: { stats: { active: number; accepted: number; refused: number } };
  bpf: () => BpfStatus;
  stopping: () => boolean;
}

export class AgentStatusReporter {
  private readonly backlog: BacklogMeter;

  constructor(private readonly src: StatusSources) {
    this.backlog = new BacklogMeter(src.spool);
  }

  async collect(): Promise<AgentStatusMsg> {
    const { src } = this;
    const now = Date.now();
    const spool = src.spool.stats();
    const acked = src.shipper.ackedSeq;
    const usage = spool.bytes + spool.bufferedBytes;
    // The exact figure reads segment files; if that fails, the spool's own size is an upper bound.
    const backlog = await this.backlog.measure(acked).catch(() => ({ events: Math.max(0, spool.lastSeq - acked), bytes: usage, oldestMs: undefined }));
    const sh = src.shipper.stats;
    return {
      agentId: src.agentId, version: VERSION, sentMs: now, startedMs: src.startedMs, uptimeMs: now - src.startedMs, stopping: src.stopping(),
      bpf: src.bpf(),
      proxy: {
        port: src.proxyPort, activeSessions: src.proxy?.stats.active ?? 0,
        acceptedSessions: src.proxy?.stats.accepted ?? 0, refusedConnections: src.proxy?.stats.refused ?? 0,
      },
      spool: {
        backlogEvents: backlog.events, backlogBytes: backlog.bytes,
        oldestUnackedAgeMs: backlog.oldestMs === undefined ? 0 : Math.max(0, now - backlog.oldestMs),
        bytes: usage, maxBytes: src.spool.maxBytes, state: spool.state, refusing: !src.spool.admitting(),
        reason: spool.state === 'ok' ? '' : src.spool.stateReason, lastSeq: spool.lastSeq, ackedSeq: acked,
      },
      shipper: {
        connected: sh.connected, lastAckMs: sh.lastAckMs, lastError: sh.lastError, lastErrorMs: sh.lastErrorMs,
        reconnects: sh.reconnects, batches: sh.batches,
      },
      witness: {
        checkpointSize: sh.checkpointSize, lastCheckMs: sh.witnessLastCheckMs, lastCheckOk: sh.witnessLastOk,
        lastProblem: sh.witnessLastProblem, lastFailureMs: sh.witnessLastFailureMs, checks: sh.witnessChecks, failures: sh.witnessFailures,
      },
    };
  }
}
