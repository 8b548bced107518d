// The JavaScript main thread's priority next to the native relay thread's.
//
// While every session is on the relay, the main thread is only the audit side of them: it hears of
// what the relay forwarded (every 25 ms, relayAuditDelayMs), writes the spool, answers the rare
// statement the relay cannot decide. Nothing a job waits for is on it, and at the agent's own
// priority it takes cpu time from the relay whenever the host is busy. Measured on a 2-cpu host
// (bench/pgbench.ts, the setting toggled per round, balanced against the bench's path order, 16
// rounds of 5 s), pgbench select-only through runguard, mean ratio to pgbouncer's throughput with
// the main thread at nice 10 against 0, in three runs: 0.97x/0.84x, 0.95x/0.82x, 0.96x/0.83x;
// TPC-B-like within its noise. Not wake-up preemption: SCHED_BATCH for the same thread (no
// preemption at wake-up, the same cpu share) changed nothing.
//
// A session that is not on the relay (its start-up and authentication, TLS on either hop, any other
// protocol) has its bytes forwarded by this very thread, and on a busy host a lower priority would
// add to its latency: the main thread is back at the agent's own priority whenever there is one.
// Linux's setpriority(PRIO_PROCESS, 0) changes the calling thread only; threads that thread creates
// meanwhile inherit its value (libuv's pool starts with the spool, before any session).
import os from 'node:os';

export interface AuditPriorityOptions {
  /** How much nicer than the agent's own the main thread runs while every session is native (1-19). */
  nice: number;
  /** Told once if the priority cannot be changed (no CAP_SYS_NICE to raise it back): it then stays the agent's own. */
  onError: (err: Error) => void;
}

export class AuditPriority {
  private readonly baseNice: number;
  private readonly lowNice: number;
  private low = false;
  /** No more changes: after a failure, or once closed. */
  private fixed = false;
  private proxySessions = 0;
  private relaySessions = 0;

  constructor(private readonly opts: AuditPriorityOptions) {
    this.baseNice = os.getPriority();
    this.lowNice = Math.min(19, this.baseNice + opts.nice);
    // Lowering is always allowed; raising back needs CAP_SYS_NICE (or RLIMIT_NICE). Find out now,
    // by raising one step and back, rather than be stuck low later.
    if (this.baseNice > -20) {
      try {
        os.setPriority(this.baseNice - 1);
        os.setPriority(this.baseNice);
      } catch (err) {
        this.fixed = true;
        opts.onError(new Error(`cannot raise the main thread's priority back once lowered (${(err as Error).message}); it stays at nice ${this.baseNice}`));
      }
    }
  }

  /** Sessions the proxy runs (any protocol, any stage). */
  set proxy(n: number) {
    this.proxySessions = n;
    this.apply();
  }

  /** Sessions the native relay holds. */
  set relay(n: number) {
    this.relaySessions = n;
    this.apply();
  }

  /** False once it cannot change the priority (or is closed): it then never will. */
  get usable(): boolean {
    return !this.fixed;
  }

  /** Whether the main thread is at the lowered priority now. */
  get lowered(): boolean {
    return this.low;
  }

  /** Back to the agent's own priority for good (the agent stops). */
  close(): void {
    this.relaySessions = 0;
    this.apply();
    this.fixed = true;
  }

  private apply(): void {
    // The relay may still hold a session whose proxy side has ended (its Closed record not yet
    // dispatched, a few milliseconds): more relay sessions than proxy sessions counts as all native.
    const want = this.relaySessions > 0 && this.relaySessions >= this.proxySessions;
    if (want === this.low || this.fixed) return;
    try {
      os.setPriority(want ? this.lowNice : this.baseNice);
      this.low = want;
    } catch (err) {
      // Lowering is always allowed, raising back may not be: give up in the state that is safe for
      // JavaScript-relayed sessions.
      this.fixed = true;
      try {
        os.setPriority(this.baseNice);
        this.low = false;
      } catch {
        // Stuck lower than the agent's own: said through onError.
      }
      this.opts.onError(new Error(`cannot set the main thread's priority (${(err as Error).message}); it stays at nice ${os.getPriority()}`));
    }
  }
}
