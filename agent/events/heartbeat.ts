// The agent's status report to the collector (Ingest.Heartbeat): every `intervalMs`, and at once
// whenever the channel to the collector (re)connects, so the agents panel shows an agent as soon as
// it is reachable. A heartbeat is operational state, not audit: one that fails is logged at debug
// and forgotten (the next one replaces it), and nothing here touches the shipping of events.
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { AgentStatusMsg, HeartbeatAck } from '../../proto/services.js';

export const DEFAULT_HEARTBEAT_INTERVAL_MS = 10_000;

export interface HeartbeatOptions {
  channel: grpc.Channel;
  send: (status: AgentStatusMsg, timeoutMs: number) => Promise<HeartbeatAck>;
  collect: () => Promise<AgentStatusMsg>;
  log: Logger;
  intervalMs?: number;
}

export class HeartbeatSender {
  private timer?: NodeJS.Timeout;
  private stopped = false;
  private inFlight?: Promise<void>;
  private again = false;
  sent = 0;
  failed = 0;

  constructor(private readonly opts: HeartbeatOptions) {}

  get intervalMs(): number { return this.opts.intervalMs ?? DEFAULT_HEARTBEAT_INTERVAL_MS; }

  start(): void {
    this.timer = setInterval(() => void this.beat(), this.intervalMs);
    this.timer.unref();
    this.watchChannel();
    void this.beat();
  }

  /** Stops the schedule; with `last`, sends that status first (bounded by `timeoutMs`). */
  async stop(last?: () => Promise<AgentStatusMsg>, timeoutMs = 1000): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    // Bounded: one stuck on an unreachable collector must not hold up the agent's shutdown.
    if (this.inFlight) await Promise.race([this.inFlight, new Promise((r) => setTimeout(r, timeoutMs).unref())]);
    if (last) await this.sendOne(await last(), timeoutMs);
  }

  /**
   * One heartbeat now. With one on its way, another follows it rather than piling up beside it:
   * the one on its way may have been gathered long before a reconnect and say nothing current.
   */
  beat(): Promise<void> {
    if (this.stopped) return this.inFlight ?? Promise.resolve();
    if (this.inFlight) {
      this.again = true;
      return this.inFlight;
    }
    this.inFlight = this.opts.collect()
      .then((status) => this.sendOne(status, Math.max(1000, this.intervalMs)))
      .catch((err: Error) => this.opts.log.debug({ err }, 'cannot gather the agent status'))
      .finally(() => {
        this.inFlight = undefined;
        if (this.again) {
          this.again = false;
          void this.beat();
        }
      });
    return this.inFlight;
  }

  private async sendOne(status: AgentStatusMsg, timeoutMs: number): Promise<void> {
    try {
      await this.opts.send(status, timeoutMs);
      this.sent++;
    } catch (err) {
      this.failed++;
      this.opts.log.debug({ err: (err as grpc.ServiceError).details || (err as Error).message }, 'heartbeat not delivered');
    }
  }

  private watchChannel(): void {
    const { channel } = this.opts;
    let state = channel.getConnectivityState(false);
    const wait = () => {
      if (this.stopped) return;
      try {
        // No deadline: the watch ends at each state change, and for good when the channel closes.
        channel.watchConnectivityState(state, Infinity, () => {
          if (this.stopped) return;
          const now = channel.getConnectivityState(false);
          if (now === grpc.connectivityState.READY && state !== grpc.connectivityState.READY) void this.beat();
          state = now;
          wait();
        });
      } catch {
        // the channel is shut down: the shipper is stopping
      }
    };
    wait();
  }
}
