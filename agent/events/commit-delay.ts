// The spool's commit delay settings, apart from spool.ts so that the agent's config can check them
// without loading the spool (and protobuf) into every CLI command.

/**
 * How long a batch that nobody awaits may wait for company before its write+fdatasync. Everything
 * appended in one I/O turn shares one fdatasync, and whatever arrives while a sync is in flight
 * shares the next one; the delay adds to that the events of the next millisecond, which under a
 * statement-per-event load is what turns one sync per few events into one per dozens (see
 * bench/pgbench.ts). An event counts as durable only once its own fdatasync returns, as before, and
 * a batch that someone awaits (reads `durable`: a connection open, the agent's start) is flushed at
 * the end of the current turn, not after the delay. 0: never delay.
 */
export const DEFAULT_COMMIT_DELAY_MS = 1;
/** The largest commit delay accepted: it bounds how long an unawaited event can sit in memory. */
export const MAX_COMMIT_DELAY_MS = 1000;
