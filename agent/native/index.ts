// The native data path addon (agent/native/src), loaded once. The agent works without it (the
// PostgreSQL handler then relays every byte through JavaScript); RUNGUARD_REQUIRE_NATIVE=1 makes a
// missing or broken build an error instead, which the tests set.
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The relay threads' sends (src/relay.h relayStats, src/send_batch.h). */
export interface RelaySendStats {
  threads: number;
  /** Threads that send each loop turn's requests to servers in one io_uring call; the others send one at a time. */
  batchedThreads: number;
  batchedTurns: number;
  batchedSends: number;
  /** The most sends one turn made. */
  largestTurn: number;
  /** Turns of one send, made with send(2) instead of the ring (counted in batchedTurns and batchedSends too). */
  singleSends: number;
}

export interface NativeAddon {
  /** The statement shape key of SQL bytes (see src/shape.h), or null where the scanner gives up; `span` gets its statement text's [start, end). */
  shape(sql: Buffer, span?: Uint32Array): Buffer | null;
  /** Test hook: what the native message checks make of one message body (see src/pgmsg.h). */
  checkMessage(direction: 'frontend' | 'backend', type: number, body: Buffer): Record<string, unknown> | null;
  // The relay (src/relay.h; agent/native/relay.ts wraps these).
  relayStart(onBatch: (batch: Buffer, length: number) => void, maxMessageLength: number, replayDelayMs: number, threads: number, batchSends: boolean): void;
  relayAdopt(id: number, clientFd: number, serverFd: number, precheck: Buffer | null): void;
  relayWrite(id: number, serverLive: boolean, toServer: Buffer | null, toClient: Buffer | null): void;
  relayResume(id: number, side: number, cache: number, allowName: boolean, serverLive: boolean, tag: number, plainResult: number, template: number,
    templatePieces: Buffer | null, toServer: Buffer | null, toClient: Buffer | null): void;
  /** Test hook: the Statement field the relay would encode itself, or null (src/statement_event.h). */
  statementEvent(precheck: Buffer, pieces: Buffer, text: Buffer, complete: Buffer, durationMs: number, values?: Buffer): Buffer | null;
  relayClose(id: number): void;
  relayForget(): number;
  /** Test hook: one batch of sends, each result as send(2) gives it: bytes or -errno (src/send_batch.h). */
  sendBatch(fds: number[], buffers: Buffer[], useRing: boolean): { batched: boolean; results: number[] };
  /** How the relay threads send (src/relay.h relayStats). */
  relayStats(): RelaySendStats;
  /** Pins every thread but the relay's to one cpu (src/relay.h); the cpu, or -1 with fewer than two. */
  relayPinOthers(): number;
  // The relay's own STATEMENT events sealed into the spool (src/relay_events.h; relay.ts EventSealer).
  relayEventsRegister(id: number, sink: number, sessionIdField: Uint8Array, identityFields: Uint8Array, tally: Float64Array): void;
  relayEventsForget(id: number): void;
  relayEventsSeal(sink: number, batch: Buffer, offset: number, slab: Buffer, pos: number, room: number, maxEventBytes: number, chainHash: Buffer,
    agentIdField: Uint8Array, seq: number, timeMs: number, kind: number, out: Float64Array): void;
  /** Spool record framing plus the chain hash in one call (src/seal.h; agent/events/record-format.ts). */
  sealRecord(target: Buffer, offset: number, payload: Uint8Array, hashOut: Buffer): number;
  /** False if this node exports no SHA256_Init/Update/Final or crc32 for sealRecord to use. */
  sealAvailable(): boolean;
  /** One spool commit as one pool job: pwritev all of `buffers` at `position`, then fdatasync (src/durable.h). */
  writeDurable(fd: number, buffers: Buffer[], position: number, done: (err: NodeJS.ErrnoException | null) => void): void;
}

let loaded: { addon?: NativeAddon; error?: string } | undefined;

/** dist/native/runguard_native.node, built by `make -C agent/native` (npm run build does it). */
export const addonPath = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'native', 'runguard_native.node');

export function loadNative(): { addon?: NativeAddon; error?: string } {
  if (loaded) return loaded;
  try {
    loaded = { addon: createRequire(import.meta.url)(addonPath) as NativeAddon };
  } catch (err) {
    loaded = { error: `cannot load the native data path (${addonPath}): ${(err as Error).message}` };
    if (process.env.RUNGUARD_REQUIRE_NATIVE === '1') throw new Error(loaded.error);
  }
  return loaded;
}
