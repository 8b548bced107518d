// Ships the spool to the collector and watches the collector in return.
//
// Shipping: batches of consecutive durable events, the tip signed with the agent's key, over one
// gRPC stream. An event leaves the spool only when the collector acknowledged it as durably stored;
// after any failure the stream restarts from the last acknowledged seq and the collector drops what
// it already has (it deduplicates by agent and seq, byte for byte), so nothing is lost or doubled.
//
// Witnessing: the agent keeps the last checkpoint it saw, checks that each new one is consistent
// with it and that its own acknowledged events are included. A collector that rewrites history is
// caught by the agents that fed it.
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { KeyObject } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { EventKind, type EventDraft } from '../../proto/index.js';
import { eventHash, signBatchTip } from '../../proto/batch.js';
import {
  IngestService, LogService, type AgentStatusMsg, type BatchAck, type ConsistencyProofRequest, type EventBatch, type HeartbeatAck,
  type InclusionProofRequest, type Proof, type SignedCheckpoint,
} from '../../proto/services.js';
import { leafHash } from '../../collector/merkle/hash.js';
import { openCheckpoint, verifyConsistency, verifyInclusion, type Checkpoint, type NoteVerifier } from '../../collector/merkle/index.js';
import type { Spool, SpoolRecord } from './spool.js';

export interface ShipperOptions {
  spool: Spool;
  agentId: string;
  target: string;                    // host:port of the collector
  credentials: grpc.ChannelCredentials;
  signingKey: KeyObject;
  stateDir: string;
  checkpointVerifier: NoteVerifier;
  log: Logger;
  emit: (draft: EventDraft) => void;
  batchEvents?: number;
  batchBytes?: number;
  maxInFlight?: number;
  witnessIntervalMs?: number;
}

interface ShipperState {
  ackedSeq: number;
  /** The newest acknowledged event: its log index and Merkle leaf hash, for inclusion checks. */
  lastIndex: number;
  lastLeafHash: string;
}

interface InFlight {
  lastSeq: number;
  lastIndexLeafHash: Buffer;
}

const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 15_000;

export class Shipper {
  private state: ShipperState;
  private checkpoint?: { note: string; cp: Checkpoint };
  private stopped = false;
  private abort = new AbortController();
  private loop?: Promise<void>;
  private witnessTimer?: NodeJS.Timeout;
  private readonly client: grpc.Client;
  private readonly logClient: grpc.Client;
  stats = {
    acked: 0, batches: 0, reconnects: 0, connected: false, lastAckMs: 0, lastError: '', lastErrorMs: 0,
    witnessChecks: 0, witnessFailures: 0, checkpointSize: 0,
    /** The last witness round that reached the collector: when, and whether the log held up. */
    witnessLastCheckMs: 0, witnessLastOk: false, witnessLastProblem: '', witnessLastFailureMs: 0,
  };

  constructor(private readonly opts: ShipperOptions) {
    this.state = readJson<ShipperState>(this.stateFile) ?? { ackedSeq: 0, lastIndex: -1, lastLeafHash: '' };
    const saved = readText(this.checkpointFile);
    if (saved) {
      const opened = openCheckpoint(saved, [opts.checkpointVerifier]);
      if (opened.ok) {
        this.checkpoint = { note: saved, cp: opened.value.checkpoint };
        this.stats.checkpointSize = opened.value.checkpoint.size;
      }
      else opts.log.error({ reason: opened.reason }, 'the saved checkpoint does not verify; starting witness checks afresh');
    }
    const Ingest = grpc.makeGenericClientConstructor(IngestService, 'Ingest');
    const Log = grpc.makeGenericClientConstructor(LogService, 'Log');
    // grpc-js's own reconnect backoff grows to 2 minutes by default; the shipper paces retries itself.
    const channelOptions = {
      'grpc.keepalive_time_ms': 20_000, 'grpc.max_receive_message_length': 64 << 20,
      'grpc.initial_reconnect_backoff_ms': BACKOFF_MIN_MS, 'grpc.max_reconnect_backoff_ms': BACKOFF_MAX_MS,
    };
    this.client = new Ingest(opts.target, opts.credentials, channelOptions);
    this.logClient = new Log(opts.target, opts.credentials, channelOptions);
  }

  private get stateFile(): string { return path.join(this.opts.stateDir, 'shipper.json'); }
  private get checkpointFile(): string { return path.join(this.opts.stateDir, 'checkpoint.note'); }
  get ackedSeq(): number { return this.state.ackedSeq; }

  /** The channel the shipper ships on: heartbeats ride it, so they say nothing about another path. */
  get channel(): grpc.Channel { return this.client.getChannel() as grpc.Channel; }

  /** Sends one status report (Ingest.Heartbeat) over the shipper's channel and credentials. */
  heartbeat(status: AgentStatusMsg, timeoutMs: number): Promise<HeartbeatAck> {
    return unary(this.client, IngestService.heartbeat, status, timeoutMs);
  }

  start(): void {
    this.loop = this.run();
    const every = this.opts.witnessIntervalMs ?? 3000;
    this.witnessTimer = setInterval(() => void this.witness(), every);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.abort.abort();
    clearInterval(this.witnessTimer);
    await this.loop;
    this.client.close();
    this.logClient.close();
  }

  /** Waits until `seq` is acknowledged or `timeoutMs` passes; true if it was. */
  async drain(seq: number, timeoutMs: number): Promise<boolean> {
    const until = Date.now() + timeoutMs;
    while (this.state.ackedSeq < seq && Date.now() < until && !this.stopped) await sleep(20, this.abort.signal);
    return this.state.ackedSeq >= seq;
  }

  private async run(): Promise<void> {
    let backoff = BACKOFF_MIN_MS;
    while (!this.stopped) {
      const ackedBefore = this.state.ackedSeq;
      const err = await this.session();
      if (this.stopped) break;
      this.stats.connected = false;
      this.stats.reconnects++;
      this.stats.lastError = err;
      this.stats.lastErrorMs = Date.now();
      // A session that delivered anything means the collector is up: retry soon.
      if (this.state.ackedSeq > ackedBefore) backoff = BACKOFF_MIN_MS;
      this.opts.log.warn({ err, retryInMs: backoff, ackedSeq: this.state.ackedSeq }, 'collector stream ended; resending from the last acknowledged event');
      await sleep(backoff, this.abort.signal);
      backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    }
  }

  /** One stream: sends from ackedSeq+1 until the stream fails; returns why it ended. */
  private session(): Promise<string> {
    return new Promise<string>((resolve) => {
      const sessionAbort = new AbortController();
      // Stopping ends the stream too: waiting for the collector to hang up would hold the agent.
      const onStop = () => end('the agent is stopping');
      this.abort.signal.addEventListener('abort', onStop, { once: true });
      const call = this.client.makeBidiStreamRequest(IngestService.stream.path, IngestService.stream.requestSerialize,
        IngestService.stream.responseDeserialize) as grpc.ClientDuplexStream<EventBatch, BatchAck>;
      const inflight: InFlight[] = [];
      let wake: (() => void) | undefined;
      let ended = false;
      const end = (why: string) => {
        if (ended) return;
        ended = true;
        this.abort.signal.removeEventListener('abort', onStop);
        sessionAbort.abort();
        call.cancel();
        wake?.();
        resolve(why);
      };
      call.on('data', (ack: BatchAck) => {
        this.stats.connected = true;
        const sent = inflight.shift();
        if (ack.error) {
          this.opts.log.error({ reason: ack.error, expectedSeq: ack.expectedSeq, firstSeq: ack.firstSeq }, 'the collector rejected a batch');
          end(`rejected: ${ack.error}`);
          return;
        }
        if (!sent || sent.lastSeq !== ack.lastSeq) {
          end(`ack for seq ${ack.lastSeq} does not match the oldest batch in flight (${sent?.lastSeq})`);
          return;
        }
        this.onAck(ack, sent);
        wake?.();
      });
      call.on('error', (e: Error) => end(e.message));
      call.on('end', () => end('the collector closed the stream'));

      const batchEvents = this.opts.batchEvents ?? 512;
      const batchBytes = this.opts.batchBytes ?? 1 << 20;
      const maxInFlight = this.opts.maxInFlight ?? 8;
      let pending: SpoolRecord[] = [];
      let pendingBytes = 0;
      const send = () => {
        if (!pending.length) return;
        const events = pending.map((r) => r.bytes);
        const last = events[events.length - 1]!;
        const lastSeq = pending[pending.length - 1]!.seq;
        const tipSignature = signBatchTip(this.opts.signingKey, this.opts.agentId, lastSeq, eventHash(last));
        inflight.push({ lastSeq, lastIndexLeafHash: leafHash(last) });
        call.write({ agentId: this.opts.agentId, firstSeq: pending[0]!.seq, events, tipSignature });
        this.stats.batches++;
        pending = [];
        pendingBytes = 0;
      };
      (async () => {
        let flushTimer: NodeJS.Timeout | undefined;
        try {
          for await (const rec of this.opts.spool.follow(this.state.ackedSeq + 1, sessionAbort.signal)) {
            pending.push(rec);
            pendingBytes += rec.bytes.length;
            if (pending.length >= batchEvents || pendingBytes >= batchBytes) send();
            else if (!flushTimer) flushTimer = setTimeout(() => { flushTimer = undefined; send(); }, 2);
            while (inflight.length >= maxInFlight && !ended) await new Promise<void>((r) => (wake = r));
            if (ended) break;
          }
        } catch (err) {
          if (!sessionAbort.signal.aborted) end(`reading the spool: ${(err as Error).message}`);
        } finally {
          clearTimeout(flushTimer);
        }
      })();
    });
  }

  private onAck(ack: BatchAck, sent: InFlight): void {
    this.state = { ackedSeq: ack.lastSeq, lastIndex: ack.lastIndex, lastLeafHash: sent.lastIndexLeafHash.toString('base64') };
    this.stats.acked = ack.lastSeq;
    this.stats.lastAckMs = Date.now();
    writeJsonAtomic(this.stateFile, this.state);
    this.opts.spool.ackUpTo(ack.lastSeq).catch((err) => this.opts.log.error({ err }, 'cannot release acknowledged spool segments'));
  }

  private witnessing = false;

  /** One witness round: the newest checkpoint is signed, consistent with ours, and has our events. */
  async witness(): Promise<void> {
    // One round at a time: a slow round must not overlap the next timer tick.
    if (this.witnessing || this.state.lastIndex < 0) return;
    this.witnessing = true;
    try {
      await this.witnessRound();
    } finally {
      this.witnessing = false;
    }
  }

  private async witnessRound(): Promise<void> {
    // What we check inclusion of is fixed before any await: acks arriving meanwhile move the
    // agent's own newest index past the checkpoint fetched here.
    const own = { index: this.state.lastIndex, leafHash: this.state.lastLeafHash };
    let note: string;
    try {
      note = (await unary<Record<string, never>, SignedCheckpoint>(this.logClient, LogService.getCheckpoint, {})).note;
    } catch {
      return; // unreachable collector: shipping reports that
    }
    let problem: string | undefined;
    try {
      problem = await this.checkCheckpoint(note, own);
    } catch (err) {
      // A proof that cannot be fetched (the collector went away mid-round) is evidence of nothing:
      // the next round asks again. Left uncaught it would be an unhandled rejection of the timer.
      this.opts.log.warn({ err }, 'witness round cut short; trying again next round');
      return;
    }
    this.stats.witnessChecks++;
    this.stats.witnessLastCheckMs = Date.now();
    this.stats.witnessLastOk = !problem;
    if (problem) {
      this.stats.witnessFailures++;
      this.stats.witnessLastProblem = problem;
      this.stats.witnessLastFailureMs = this.stats.witnessLastCheckMs;
      this.opts.log.error({ problem }, 'WITNESS FAILURE: the collector log is not consistent with what this agent saw');
      this.opts.emit({ kind: EventKind.EVENT_KIND_AGENT_NOTICE!, notice: { level: 'error', code: 'witness_failure', message: problem } });
    }
  }

  private async checkCheckpoint(note: string, own: { index: number; leafHash: string }): Promise<string | undefined> {
    const opened = openCheckpoint(note, [this.opts.checkpointVerifier]);
    if (!opened.ok) return `checkpoint does not verify: ${opened.reason}`;
    const cp = opened.value.checkpoint;
    const prev = this.checkpoint?.cp;
    if (prev && cp.size < prev.size) return `checkpoint size ${cp.size} is smaller than the ${prev.size} seen before`;
    if (prev && prev.size > 0 && cp.size > prev.size) {
      const proof = await unary<ConsistencyProofRequest, Proof>(this.logClient, LogService.getConsistencyProof, { fromSize: prev.size, toSize: cp.size });
      const v = verifyConsistency(prev.size, cp.size, proof.hashes, prev.root, cp.root);
      if (!v.ok) return `checkpoint ${cp.size} is not consistent with checkpoint ${prev.size}: ${v.reason}`;
    } else if (prev && cp.size === prev.size && !Buffer.from(cp.root).equals(Buffer.from(prev.root))) {
      return `two checkpoints of size ${cp.size} with different roots`;
    }
    // An event acknowledged before this checkpoint was fetched must be in it (a later one may not be yet).
    if (own.index >= 0 && own.index < cp.size) {
      const proof = await unary<InclusionProofRequest, Proof>(this.logClient, LogService.getInclusionProof, { index: own.index, treeSize: cp.size });
      const v = verifyInclusion(Buffer.from(own.leafHash, 'base64'), own.index, cp.size, proof.hashes, cp.root);
      if (!v.ok) return `this agent's event at index ${own.index} is not included in checkpoint ${cp.size}: ${v.reason}`;
    }
    this.checkpoint = { note, cp };
    this.stats.checkpointSize = cp.size;
    writeFileSync(this.checkpointFile + '.tmp', note);
    renameSync(this.checkpointFile + '.tmp', this.checkpointFile);
    return undefined;
  }
}

function unary<Req, Res>(client: grpc.Client, m: grpc.MethodDefinition<Req, Res>, req: Req, timeoutMs = 10_000): Promise<Res> {
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(m.path, m.requestSerialize, m.responseDeserialize, req, { deadline: Date.now() + timeoutMs }, (err, res) => {
      if (err || !res) reject(err ?? new Error('empty response'));
      else resolve(res);
    });
  });
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const onAbort = () => {
      clearTimeout(t);
      resolve();
    };
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

function readText(file: string): string | undefined {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}

function readJson<T>(file: string): T | undefined {
  const text = readText(file);
  return text ? (JSON.parse(text) as T) : undefined;
}

function writeJsonAtomic(file: string, value: unknown): void {
  writeFileSync(file + '.tmp', JSON.stringify(value));
  renameSync(file + '.tmp', file);
}
