// The spool's commit delay settings, apart from spool.ts so that the agent's config can check them
// without loading the spool (and protobuf) into every CLI command.

/**
 * How long a batch that nobody awaits may wait for company before its write+fdatasync, counted from
 * its first event or from the end of the commit in flight, whichever is later. Everything appended
 * in one I/O turn shares one fdatasync, and whatever arrives while a sync is in flight shares the
 * next one; the delay adds what arrives in the next few milliseconds. On the 2-cpu ext4 bench host
 * (bench/pgbench.ts, select-only, ~5,000-7,500 statements/s) it took the spool from ~12-15 events
 * per fdatasync at 0 ms to ~33 at 2 ms and ~56 at 5 ms, and the libuv pool's cpu from ~20-23 us per
 * transaction to ~8 and ~6: 2 ms gets most of it. An event counts as durable only once its own
 * fdatasync returns, as before, and a batch that someone awaits (reads `durable`: a connection
 * open, the agent's start) is flushed at the end of the current turn, not after the delay.
 * 0: never delay.
 */
export const DEFAULT_COMMIT_DELAY_MS = 2;
/** The largest commit delay accepted: it bounds how long an unawaited event can sit in memory. */
export const MAX_COMMIT_DELAY_MS = 1000;
