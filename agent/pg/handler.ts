// PostgreSQL in the data path. The handler speaks the protocol in both directions: it answers the
// job's SSLRequest with its own certificate, relays (or performs) authentication, and then inspects
// every simple and extended-protocol statement: classified by the real PostgreSQL parser, decided by
// policy, audited with its outcome, and masked in the result when policy says so.
//
// Once a plaintext session is authenticated it is handed to the native relay (agent/native): the
// relay forwards what this handler has decided and replays it here in batches, so the same code
// below still classifies, decides and audits every message ("replay" records, whose writes are only
// counted); what the relay cannot vouch for comes here first ("live" records), and the answer says
// what to write and which decisions the relay may repeat. See onRelayRecord.
//
// A denied statement never reaches the database as written: it is replaced by a DO block that raises
// SQLSTATE 42501 naming the rule, so the *server* reports the error and leaves an open transaction in
// the failed state exactly as PostgreSQL itself would; the session stays usable.
import net from 'node:net';
import tls from 'node:tls';
import { readFileSync } from 'node:fs';
import { EventKind, type StatementInfo } from '../../proto/index.js';
import { StatementTemplate, type StatementBase, type StatementOutcome } from '../../proto/session-events.js';
import { UnsupportedValue } from '../../proto/wire-writer.js';
import type { Decision, MaskSpec, Operation, OperationContext, Policy } from '../policy/index.js';
import { maskByNameOnly, maskCoversColumn } from '../policy/index.js';
import type { CredentialConfig } from '../config.js';
import type { AgentCa } from '../tls/ca.js';
import { Redactor, redactionLabels } from '../redact/redactor.js';
import { maskedWrites, mentionsMaskedColumnCached, NO_MASKED_PARAMS, redactedParam, type MaskedWrites } from './column-literals.js';
import { detectorHit, rowCannotHit } from '../redact/detectors.js';
import type { EndReason, ProtocolHandler, Session, SessionEnd } from '../proxy/handler.js';
import { Outbox } from '../net/outbox.js';
import { ReadBuffer } from '../net/read-buffer.js';
import { FrameReader, PgProtocolError, type Frame } from './frames.js';
import * as msg from './messages.js';
import { md5Password, ScramClient, chooseSaslMechanism } from './scram.js';
import { classify, statementSpansText } from './classify.js';
import type { ApprovalClient } from '../approvals/client.js';
import { approvalsUnavailable, holdForApproval, reviewDenialText, type ReviewResult } from '../approvals/review.js';
import {
  EVENT_PARSED_UNNAMED, EVENT_PORTAL_ENDED, MASK_HIT_AT, MASK_HIT_DIGITS, newEventTally, packPrecheck, packTemplate, RecordKind, RelayCache, RelaySide, Tally,
  type EventSealer, type NativeRelay, type RelayAnswer, type RelayListener,
} from '../native/relay.js';

const ch = (c: string) => c.charCodeAt(0);
const T = {
  Query: ch('Q'), Parse: ch('P'), Bind: ch('B'), Execute: ch('E'), Sync: ch('S'), Terminate: ch('X'), Password: ch('p'),
  CopyData: ch('d'), CopyDone: ch('c'), CopyFail: ch('f'), Close: ch('C'), Describe: ch('D'), Flush: ch('H'), FunctionCall: ch('F'),
  Auth: ch('R'), ParamStatus: ch('S'), KeyData: ch('K'), Ready: ch('Z'), RowDesc: ch('T'), DataRow: ch('D'), Complete: ch('C'),
  Error: ch('E'), Empty: ch('I'), Suspended: ch('s'), CopyIn: ch('G'), CopyOut: ch('H'), CopyBoth: ch('W'), Notice: ch('N'),
} as const;

export interface PgHandlerDeps {
  policy: () => Policy;
  /** Terminates the job's TLS; without it SSLRequest is declined and the job talks plaintext to us. */
  ca?: AgentCa;
  /** Credentials the agent holds for a destination ("address:port"), if any. */
  credentials: (destination: string) => CredentialConfig | undefined;
  serverTls: 'prefer' | 'require' | 'disable';
  /** Where review decisions come from (the collector); without it review denies, saying why. */
  approvals?: ApprovalClient;
  /**
   * The native data path (agent/native/relay.ts): plaintext sessions are handed to it once
   * authenticated. `policyAt(epoch)` is the policy that was in force at a relay epoch (see
   * NativeRelay.forget), for records the relay forwarded before a reload reached it. With `sealer`,
   * the statement events the relay writes itself go straight into the spool (NativeRelay.eventSealer).
   */
  relay?: { relay: NativeRelay; policyAt(epoch: number): Policy | undefined; sealer?: EventSealer };
}

/** What a caller of statementInfo adds to the record (statementInfo copies exactly these). */
type StatementExtra = Pick<StatementInfo, 'params' | 'prepared' | 'parseError' | 'error' | 'errorCode'>;

/** One statement waiting for its outcome from the server. */
interface Pending {
  kind: 'statement' | 'sync' | 'simple-end';
  op?: Operation;
  info?: StatementInfo;
  /** performance.now() when the statement was sent (a number: no BigInt per statement). */
  started?: number;
  mask?: MaskSpec;
}

interface Prepared {
  ops: Operation[];
  parseError?: string;
  decision: Decision;
  denied: boolean;
  /** Audit text and masked-column parameters, worked out at the first Execute and kept. */
  writes?: MaskedWrites;
  /** writes.text through the detectors: the same for every Execute (the session's redactors are fixed). */
  auditText?: string;
  /** The text names no masked column at all (its shape says so): it writes none, no parse needed. */
  namesNoMasked?: boolean;
  /** One statement, spanning the text (classify.ts statementSpansText): an audit template may stand for it. */
  spansText?: boolean;
  /** A reviewed prepared statement: how its review ended. */
  review?: ReviewResult;
  /** Its executions' audit template (executionTemplate); null where the wire writer takes none. */
  template?: StatementTemplate | null;
}

const EMPTY_OP: Operation = Object.freeze({ type: 'EMPTY' });

/** The statement a prepared statement's Execute runs (an empty one for an empty text). */
function executedOp(p: Prepared): Operation {
  return p.ops[0] ?? EMPTY_OP;
}

/**
 * The audit's view of a decision, one frozen object per Decision (a policy's decisions are fixed
 * objects; a reload makes new ones), instead of a fresh object for every statement.
 */
const decisionInfos = new WeakMap<Decision, Readonly<NonNullable<StatementInfo['decision']>>>();
function decisionInfo(d: Decision): NonNullable<StatementInfo['decision']> {
  let info = decisionInfos.get(d);
  if (!info) decisionInfos.set(d, (info = Object.freeze({ action: d.action, rule: d.rule, reason: d.reason })));
  return info;
}

/** Bytes before the request in a kAudited record (relay.cc AuditedHead). */
const AUDITED_HEAD = 32;
/** A RecordKind.Event's head (src/relay.cc EventHead): bytes up, down, flags, template, length of the Bind that follows. */
const EVENT_HEAD = 20;
/** Audit templates a session keeps (the relay forgets its decisions at 4096 too: kMaxRemembered). */
const MAX_TEMPLATES = 4096;

/**
 * The session's portals. Whether the unnamed one exists is mirrored in the event tally: the relay's
 * event sealer leaves a record that ends it to the handler only while there is one to forget.
 */
class Portals extends Map<string, { stmt: string; params: (Buffer | null)[] }> {
  constructor(private readonly tally: Float64Array) {
    super();
  }

  override set(name: string, portal: { stmt: string; params: (Buffer | null)[] }): this {
    if (name === '') this.tally[Tally.UnnamedPortal] = 1;
    return super.set(name, portal);
  }

  override delete(name: string): boolean {
    if (name === '') this.tally[Tally.UnnamedPortal] = 0;
    return super.delete(name);
  }

  override clear(): void {
    this.tally[Tally.UnnamedPortal] = 0;
    super.clear();
  }
}

/** The body of the message at `at` in `buf`, or undefined if its length runs past the buffer. */
function messageBody(buf: Buffer, at: number): Buffer | undefined {
  if (buf.length - at < 5) return undefined;
  const len = buf.readUInt32BE(at + 1);
  if (len < 4 || len > buf.length - at - 1) return undefined;
  return buf.subarray(at + 5, at + 1 + len);
}

const denySql = (message: string, hint: string): string => {
  // $runguard$ quoting: nothing inside may close it, so dollar signs are dropped from the texts.
  const lit = (s: string) => s.replace(/\$/g, '').replace(/'/g, "''");
  return `DO $runguard$BEGIN RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = '${lit(message)}', HINT = '${lit(hint)}'; END$runguard$`;
};

function denialText(decision: Decision, op: Operation | undefined): { message: string; hint: string } {
  const what = op?.type ?? 'statement';
  if (decision.action === 'review') return approvalsUnavailable(what, decision);
  return { message: `runguard: ${what} denied by policy rule "${decision.rule}"`, hint: decision.reason || 'Ask the owners of the runguard policy.' };
}

/** Most severe first: one forbidden statement decides a multi-statement string as a whole. */
/** What the collector and the trail are told when a session ends while a statement is held. */
const HOLD_ENDED: Record<EndReason, string> = {
  client_closed: 'client disconnected', client_error: 'client connection failed', upstream_closed: 'the database server closed the connection',
  upstream_error: 'the database server connection failed', upstream_unreachable: 'the database server is unreachable',
  agent_stopping: 'the agent is stopping', protocol_error: 'the session ended on a protocol error',
};

const SEVERITY: Record<Decision['action'], number> = { deny: 3, review: 2, mask: 1, allow: 0 };

export function postgresHandler(deps: PgHandlerDeps): ProtocolHandler {
  return { name: 'postgres', run: (s) => new PgSession(s, deps).run() };
}

/** Whether any rule of the policy reads the operation's text (then decisions hold for one text only). */
const readsText = new WeakMap<Policy, boolean>();
function policyReadsText(policy: Policy): boolean {
  let r = readsText.get(policy);
  if (r === undefined) readsText.set(policy, (r = policy.rules.some((rule) => rule.match.pattern !== undefined)));
  return r;
}

/**
 * What the native relay may remember of a decision it can carry out (an allow, or a mask it can
 * apply: see relayMaskFlags): for this text only, or for every text of its shape.
 */
function relayCacheFor(p: Prepared, policy: Policy): RelayCache {
  if (p.decision.action !== 'allow' && !(p.decision.action === 'mask' && p.decision.mask && relayMaskFlags(p.decision.mask) >= 0)) return RelayCache.None;
  return p.parseError !== undefined || policyReadsText(policy) ? RelayCache.Exact : RelayCache.Shape;
}

/**
 * A mask the relay can carry out on the results it forwards: it relays a RowDescription the
 * handler found no column masked in (so the spec must not depend on tables) and rows in which the
 * spec's detectors provably cannot hit (rowCannotHit's detectors); everything else it sends here.
 * The detectors as mask tag bits, or -1 for a spec the relay cannot apply.
 */
const maskFlags = new WeakMap<MaskSpec, number>();
function relayMaskFlags(spec: MaskSpec): number {
  let f = maskFlags.get(spec);
  if (f === undefined) {
    f = maskByNameOnly(spec) ? 0 : -1;
    for (const d of spec.detectors) f = f < 0 ? f : d === 'email' ? f | MASK_HIT_AT : d === 'card-number' ? f | MASK_HIT_DIGITS : -1;
    maskFlags.set(spec, f);
  }
  return f;
}

class PgSession implements RelayListener {
  private client: net.Socket;
  private server?: net.Socket;
  // The job's socket delivers fresh 'data' chunks, which frames may keep referencing (held messages,
  // bound parameters). The server's socket reads into a reused buffer (agent/net/read-buffer.ts):
  // its frames are views valid only while their chunk is handled, so the reader copies a partial one.
  // (Reusing the job side's buffer too would need net.Server internals; bench/relay-ceiling.ts shows
  // it saves no more than the noise.)
  private readonly fromClient = new FrameReader({ direction: 'frontend' });
  private readonly fromServer = new FrameReader({ direction: 'backend', reusedInput: true });
  /** The server socket's reads, when it is plain TCP (a TLS session reads through 'data'). */
  private serverReads?: ReadBuffer;
  private phase: 'startup' | 'connecting' | 'auth' | 'ready' | 'closed' = 'startup';
  private end?: SessionEnd;
  private finish!: (end: SessionEnd) => void;
  private clientTls = false;
  private serverTls = false;
  private params = new Map<string, string>();
  private user = '';
  private database = '';
  private authMethod = 'trust';
  private backendPid = 0;
  private injected?: { user: string; password: string; scram?: ScramClient; serverProven?: boolean };
  /** The injected password must never reach the trail either. */
  private credentialRedactor?: Redactor;
  private readonly queue: Pending[] = [];
  /**
   * Request numbers, bytes each way and the relay's share of the audit: counted here and, for the
   * statement events the relay seals into the spool itself, by the addon (agent/native/relay.ts
   * newEventTally), so that request ids stay one sequence whichever side numbers a statement.
   */
  private readonly tally = newEventTally();
  private readonly prepared = new Map<string, Prepared>();
  private readonly portals = new Portals(this.tally);
  /** How the current result's rows are masked; undefined when they are relayed as they are. */
  private rowMask: ResultMask | undefined;
  private readonly redactor: Redactor;
  /** Set while a statement waits for review: the job's later messages, kept in order until then. */
  private held?: Frame[];
  /** The review in progress: aborted when the session ends, done once its outcome is recorded. */
  private holding?: { abort: AbortController; done: Promise<void> };
  // Writes queued while one input chunk is handled (batching > 0), sent together when it is done.
  private readonly up = new Outbox();
  private readonly down = new Outbox();
  private batching = 0;
  // The native data path, once the session is handed to it (see agent/native/src/relay.h).
  private link?: { relay: NativeRelay; id: number };
  /** Handling a record of what the relay already forwarded: writes are counted, not sent. */
  private replaying = false;
  private replayUp = 0;
  private replayDown = 0;
  /** The policy of the relay epoch a replayed record belongs to, when it is not the current one. */
  private replayPolicy?: Policy;
  /** When the message being handled was read, on performance.now()'s clock (records carry it). */
  private clock?: number;
  /** The answer to the live record being handled (see NativeRelay.resume). */
  private readonly answer: RelayAnswer = { cache: RelayCache.None, allowName: false, serverLive: false, tag: 0, plainResult: 0, template: 0, templatePieces: null };
  /**
   * Audit templates of the simple queries the relay may repeat (RelayAnswer.template), by id: what
   * the decision fixes in the statement's event, under the policy it was decided by.
   */
  private readonly templates = new Map<number, { policy: Policy; statement: StatementTemplate }>();
  /**
   * The statements whose executions the relay may audit itself, by the id of the template it got
   * for them (executionEventTemplate): what the unnamed statement becomes when a run the relay
   * audited parsed it (onRelayEvent).
   */
  private readonly executed = new Map<number, Prepared>();
  /** Execution templates by operation and decision (see executionTemplate). */
  private readonly opTemplates = new WeakMap<Operation, { decision: Decision; template: StatementTemplate | undefined }>();
  private lastTemplate = 0;
  /** While set, writes wait for the answer to the live record (they go with it, atomically). */
  private deferred = false;
  /** The relay's ids for the mask specs of this session's decisions (see maskTag). */
  private readonly maskIds = new Map<MaskSpec, number>();
  /** The current result's mask is one the relay cannot apply: its rows come here first. */
  private rowMaskLive = false;
  private diverged = false;
  /** Adds `n` to a tally slot (the tally is shared: see above); returns the new count. */
  private count(slot: Tally, n = 1): number {
    return (this.tally[slot] = this.tally[slot]! + n);
  }

  constructor(private readonly s: Session, private readonly deps: PgHandlerDeps) {
    this.client = s.client;
    this.redactor = s.redactor ?? new Redactor();
  }

  run(): Promise<SessionEnd> {
    return new Promise<SessionEnd>((resolve) => {
      this.finish = resolve;
      this.attachClient(this.client);
      this.s.stopping.addEventListener('abort', () => this.close('agent_stopping'), { once: true });
    });
  }

  // ---- plumbing -------------------------------------------------------------------------------

  private attachClient(sock: net.Socket): void {
    this.client = sock;
    sock.on('data', (chunk: Buffer) => this.onClientData(chunk));
    sock.on('end', () => this.close('client_closed'));
    sock.on('error', (err) => this.close('client_error', err.message));
    sock.on('close', () => this.close('client_closed'));
  }

  private attachServer(sock: net.Socket): void {
    this.server = sock;
    const reads = this.serverReads;
    if (reads && !(sock instanceof tls.TLSSocket)) {
      reads.sink = (chunk) => {
        this.onServerData(chunk);
        this.afterReusedRead(reads);
      };
    } else {
      sock.on('data', (chunk: Buffer) => this.onServerData(chunk));
    }
    sock.on('end', () => this.close('upstream_closed'));
    sock.on('error', (err) => this.close('upstream_error', err.message));
    sock.on('close', () => this.close('upstream_closed'));
    // Backpressure both ways: a slow reader pauses the other side instead of buffering without bound.
    sock.on('drain', () => { if (!this.held) this.client.resume(); });
    this.client.on('drain', () => sock.resume());
  }

  /**
   * A chunk read into a reused buffer has been handled. Everything relayed from it was written, but
   * a write that could not complete at once (a socket with bytes still queued) keeps referencing
   * that memory: then the next read must go to a fresh buffer.
   */
  private afterReusedRead(reads: ReadBuffer): void {
    if (this.client.writableLength > 0 || (this.server !== undefined && this.server.writableLength > 0)) reads.retain();
  }

  private now(): number {
    return this.clock ?? performance.now();
  }

  private policy(): Policy {
    return this.replayPolicy ?? this.deps.policy();
  }

  private toServer(b: Buffer): void {
    this.count(Tally.BytesUp, b.length);
    if (this.replaying) return void (this.replayUp += b.length);
    this.up.add(b);
    if (!this.batching) this.flush();
  }

  private toClient(b: Buffer): void {
    this.count(Tally.BytesDown, b.length);
    if (this.replaying) return void (this.replayDown += b.length);
    this.down.add(b);
    if (!this.batching) this.flush();
  }

  /** Runs `fn` with writes queued, then sends them: one write per socket for the whole chunk. */
  private batch(fn: () => void): void {
    this.batching++;
    try {
      fn();
    } finally {
      if (--this.batching === 0) this.flush();
    }
  }

  private flush(): void {
    if (this.link) {
      if (this.deferred) return;
      const up = this.up.take();
      const down = this.down.take();
      if (up || down) this.link.relay.write(this.link.id, this.serverLive(), up, down);
      return;
    }
    if (!this.up.empty) {
      if (this.server) {
        if (!this.up.flush(this.server)) this.client.pause();
      } else {
        this.up.clear();
      }
    }
    if (!this.down.empty && !this.down.flush(this.client)) this.server?.pause();
  }

  private close(reason: EndReason, error?: string): void {
    if (this.end) return;
    this.end = { reason, error, bytesUp: this.tally[Tally.BytesUp]!, bytesDown: this.tally[Tally.BytesDown]! };
    if (this.link) {
      this.end.relay = 'native';
      this.end.relaySummarized = this.tally[Tally.Summarised]!;
      this.end.relayEncoded = this.tally[Tally.Encoded]!;
    }
    this.phase = 'closed';
    // Statements still waiting for an outcome are recorded as such, not forgotten.
    for (const p of this.queue) if (p.kind === 'statement') this.complete(p, { error: `session ended (${reason}) before the server answered` });
    this.queue.length = 0;
    // What was relayed before the end (a Terminate, the frames before a bad one) still goes out.
    this.deferred = false;
    this.flush();
    if (this.link) {
      this.link.relay.close(this.link.id);
    } else {
      this.client.end();
    this.server?.end();
      setTimeout(() => {
        this.client.destroy();
        this.server?.destroy();
      }, 1000).unref();
    }
    const end = this.end;
    if (!this.holding) return this.finish(end);
    // A held statement's request is withdrawn, and its outcome recorded, before the session's end:
    // the trail keeps cause before effect, and a stopping agent waits for it.
    this.holding.abort.abort(HOLD_ENDED[reason]);
    void this.holding.done.then(() => this.finish(end));
  }

  /** A malformed message from either side ends the session with a clear error to the job. */
  private protocolError(side: 'job' | 'server', err: PgProtocolError): void {
    const text = `runguard: the ${side === 'job' ? 'client' : 'server'} sent an invalid message; ending the session: ${err.message}`;
    this.s.log.warn({ side, err: err.message }, 'postgres protocol error');
    this.flush();
    const fatal = msg.errorResponse({ severity: 'FATAL', code: '08P01', message: text });
    if (this.link) this.link.relay.write(this.link.id, false, null, fatal);
    else if (!this.client.destroyed) this.client.write(fatal);
    this.close('protocol_error', `${side}: ${err.message}`);
  }

  // ---- job -> agent ---------------------------------------------------------------------------

  private onClientData(chunk: Buffer): void {
    if (this.phase === 'closed') return;
    let err: PgProtocolError | undefined;
    this.batch(() => { err = this.fromClient.push(chunk, this.onClientFrameBound); });
    if (err) this.protocolError('job', err);
  }

  private readonly onClientFrameBound = (f: Frame): void => this.onClientFrame(f);
  private readonly onServerFrameBound = (f: Frame): void => this.onServerFrame(f);

  private onClientFrame(f: Frame): void {
    if (this.phase === 'closed') return;
    if (this.held) return void this.held.push(f);
    if (this.phase === 'startup') return void this.onStartupPacket(f);
    const raw = f.buffer.subarray(f.start, f.end);
    if (this.phase === 'connecting') return void this.protocolError('job', new PgProtocolError('malformed', 'a message arrived before the server connection was ready'));
    if (this.phase === 'auth') {
      if (this.injected) return void this.protocolError('job', new PgProtocolError('auth', 'the agent authenticates this session itself; the client must not answer'));
      if (f.type === T.Password && this.authMethod.startsWith('scram')) {
        // Channel binding cannot work through a terminating proxy: we never offer -PLUS.
        const init = msg.decodeSASLInitialResponse(f.body);
        if (!(init instanceof PgProtocolError) && init.mechanism.endsWith('-PLUS')) {
          return void this.protocolError('job', new PgProtocolError('auth', 'SCRAM channel binding (-PLUS) is not possible through the runguard proxy'));
        }
      }
      return void this.toServer(raw);
    }
    switch (f.type) {
      case T.Query: return this.onQuery(f, raw);
      case T.Parse: return this.onParse(f, raw);
      case T.Bind: return this.onBind(f, raw);
      case T.Execute: return this.onExecute(f, raw);
      case T.Sync:
        this.queue.push({ kind: 'sync' });
        return this.toServer(raw);
      case T.Close: {
        const c = msg.decodeClose(f.body);
        if (!(c instanceof PgProtocolError)) (c.kind === 'S' ? this.prepared : this.portals).delete(c.name);
        return this.toServer(raw);
      }
      case T.FunctionCall:
        this.audit({ type: 'FUNCTION CALL' }, { action: 'allow', rule: 'default', reason: '' }, { prepared: true });
        return this.toServer(raw);
      case T.Terminate:
        this.toServer(raw);
        return this.close('client_closed');
      default:
        return this.toServer(raw); // Describe, Flush, CopyData/Done/Fail: relayed as they are
    }
  }

  private onStartupPacket(f: Frame): void {
    const p = msg.decodeStartupPacket(f.body);
    if (p instanceof PgProtocolError) return this.protocolError('job', p);
    if (p.kind === 'gssenc') return void this.client.write(Buffer.from('N'));
    if (p.kind === 'ssl') return this.startClientTls();
    if (p.kind === 'cancel') return void this.forwardCancel(f.buffer.subarray(f.start, f.end), p.pid);
    this.params = p.params;
    this.user = p.params.get('user') ?? '';
    this.database = p.params.get('database') ?? this.user;
    this.phase = 'connecting';
    this.client.pause();
    this.connect().then(
      () => this.client.resume(),
      (err: Error) => {
        this.client.write(msg.errorResponse({ severity: 'FATAL', code: '08006', message: `runguard: ${err.message}` }));
        this.close('upstream_unreachable', err.message);
      },
    );
  }

  private startClientTls(): void {
    const ca = this.deps.ca;
    if (!ca) return void this.client.write(Buffer.from('N'));
    const raw = this.client;
    raw.removeAllListeners('data');
    raw.removeAllListeners('end');
    raw.removeAllListeners('close');
    raw.removeAllListeners('error');
    raw.on('error', (err) => this.close('client_error', err.message));
    raw.pause();
    const address = this.s.destination.address;
    // The certificate names the destination the job dialled; libpq sends SNI only for host names.
    ca.contextFor([address]).then((secureContext) => {
      if (this.phase === 'closed') return;
      raw.write(Buffer.from('S'));
      const socket = new tls.TLSSocket(raw, {
        isServer: true,
        secureContext,
        SNICallback: (servername, cb) => {
          if (!servername || servername === address) return cb(null, secureContext);
          ca.contextFor([servername, address]).then((ctx) => cb(null, ctx), (err: Error) => cb(err));
        },
      });
      this.clientTls = true;
      this.attachClient(socket);
      raw.resume();
    }, (err: Error) => {
      this.s.log.error({ err }, 'cannot issue a TLS certificate for the job; declining TLS');
      raw.write(Buffer.from('N'));
      this.attachClient(raw);
      raw.resume();
    });
  }

  private async forwardCancel(raw: Buffer, pid: number): Promise<void> {
    this.phase = 'closed';
    try {
      const up = await this.s.connectUpstream();
      up.end(raw);
      this.audit({ type: 'CANCEL REQUEST' }, { action: 'allow', rule: 'default', reason: '' }, { params: [`backend pid ${pid}`] });
    } catch (err) {
      this.s.log.warn({ err }, 'cannot forward a cancel request');
    }
    this.client.end();
    this.finish({ reason: 'client_closed', bytesUp: raw.length, bytesDown: 0 });
  }

  // ---- connecting and authentication ---------------------------------------------------------

  private async connect(): Promise<void> {
    this.serverReads = new ReadBuffer();
    let sock = await this.s.connectUpstream(this.serverReads);
    if (this.deps.serverTls !== 'disable') sock = await this.upgradeServerTls(sock);
    const dest = `${this.s.destination.address.includes(':') ? `[${this.s.destination.address}]` : this.s.destination.address}:${this.s.destination.port}`;
    const cred = this.deps.credentials(dest);
    const params = new Map(this.params);
    if (cred) {
      const password = cred.passwordFile ? readFileSync(cred.passwordFile, 'utf8').split('\n')[0]! : process.env[cred.passwordEnv!] ?? '';
      if (!password) throw new Error(`no password for ${dest}: ${cred.passwordFile ?? `$${cred.passwordEnv}`} is empty`);
      const user = cred.user ?? this.user;
      params.set('user', user);
      this.injected = { user, password };
      this.credentialRedactor = new Redactor([{ name: 'injected-credential', value: password }]);
    }
    this.phase = 'auth';
    this.attachServer(sock);
    this.toServer(msg.startupMessage(params));
  }

  private upgradeServerTls(sock: net.Socket): Promise<net.Socket> {
    return new Promise((resolve, reject) => {
      const reads = this.serverReads;
      const answered = (b: Buffer) => {
        if (reads) reads.sink = () => {};
        if (b.length !== 1 || (b[0] !== ch('S') && b[0] !== ch('N'))) return reject(new Error('the server answered SSLRequest with something other than S or N'));
        if (b[0] === ch('N')) {
          if (this.deps.serverTls === 'require') return reject(new Error('the server does not offer TLS and serverTls is "require"'));
          return resolve(sock);
        }
        const t = tls.connect({ socket: sock, rejectUnauthorized: false, servername: net.isIP(this.s.destination.address) ? undefined : this.s.destination.address });
        t.once('secureConnect', () => {
          this.serverTls = true;
          t.removeAllListeners('error');
          resolve(t);
        });
        t.once('error', reject);
      };
      if (reads) reads.sink = answered;
      else sock.once('data', answered);
      sock.once('error', reject);
      sock.write(msg.sslRequest());
    });
  }

  // ---- server -> agent ------------------------------------------------------------------------

  private onServerData(chunk: Buffer): void {
    if (this.phase === 'closed') return;
    let err: PgProtocolError | undefined;
    this.batch(() => { err = this.fromServer.push(chunk, this.onServerFrameBound); });
    if (err) return this.protocolError('server', err);
    if (this.handOffDue) this.handOff();
  }

  // ---- the native data path -------------------------------------------------------------------

  /** Set at the end of authentication: hand the session to the relay once this chunk is done. */
  private handOffDue = false;

  /**
   * Gives both sockets to the native relay. Only a plaintext session at rest: authenticated, no
   * statement outstanding, nothing buffered on either side (the relay starts at a message boundary
   * and the JavaScript sockets are closed right after, their descriptors duplicated).
   */
  private handOff(): void {
    this.handOffDue = false;
    const native = this.deps.relay;
    const server = this.server;
    if (!native || !server || this.clientTls || this.serverTls || this.phase !== 'ready' || this.held || this.queue.length) return;
    if (this.fromClient.buffered || this.fromServer.buffered || this.client.readableLength || this.client.writableLength || server.writableLength) {
      // Bytes in flight: the session stays here (it is rare: a job that pipelines before the server's first ReadyForQuery).
      this.s.log.debug({ client: this.client.writableLength, server: server.writableLength }, 'session not handed to the native relay: bytes in flight');
      return;
    }
    const fdOf = (sock: net.Socket) => (sock as unknown as { _handle?: { fd?: number } })._handle?.fd ?? -1;
    const cfd = fdOf(this.client);
    const sfd = fdOf(server);
    if (cfd < 0 || sfd < 0) return;
    let id: number;
    try {
      // The statement text goes through both redactors (see redact()): the relay checks for both.
      const checks = this.credentialRedactor ? [this.redactor.precheck(), this.credentialRedactor.precheck()] : [this.redactor.precheck()];
      const fields = this.s.eventFields;
      const sealer = native.sealer;
      const events = fields && sealer && { sealer, sessionIdField: fields.sessionIdField, identityFields: fields.identityFields, tally: this.tally };
      id = native.relay.adopt(this, cfd, sfd, packPrecheck(checks), events);
    } catch (err) {
      this.s.log.warn({ err }, 'cannot hand the session to the native relay; relaying it here');
      return;
    }
    this.link = { relay: native.relay, id };
    for (const sock of [this.client, server]) {
      sock.removeAllListeners();
      sock.on('error', () => {});
      sock.destroy();
    }
    if (this.serverReads) this.serverReads.sink = () => {};
  }

  /** Whether the server's messages must come here first: a result masked in a way the relay cannot. */
  private serverLive(): boolean {
    if (this.rowMask && this.rowMaskLive) return true;
    for (const p of this.queue) if (p.mask && relayMaskFlags(p.mask) < 0) return true;
    return false;
  }

  /** The relay's mask tag for a decision: 0 for rows as they are, -1 for a mask it cannot apply. */
  private maskTag(d: Decision): number {
    if (d.action !== 'mask' || !d.mask) return d.action === 'allow' ? 0 : -1;
    const flags = relayMaskFlags(d.mask);
    if (flags < 0) return -1;
    let id = this.maskIds.get(d.mask);
    if (id === undefined) this.maskIds.set(d.mask, (id = this.maskIds.size + 1));
    return id * 4 + flags;
  }

  /** Starts the answer to a live record: nothing remembered unless a handler step says so. */
  private newAnswer(): void {
    const a = this.answer;
    a.cache = RelayCache.None;
    a.allowName = false;
    a.tag = 0;
    a.plainResult = 0;
    a.template = 0;
    a.templatePieces = null;
    this.deferred = true;
  }

  /** Sends the answer to the live record of `side`, with what the handler wrote meanwhile. */
  private sendAnswer(side: RelaySide): void {
    this.deferred = false;
    const link = this.link!;
    this.answer.serverLive = this.serverLive();
    link.relay.resume(link.id, side, this.answer, this.up.take(), this.down.take());
  }

  /** Whether the session has ended (a method: TypeScript cannot see a handler call change the phase). */
  private ended(): boolean {
    return this.phase === 'closed';
  }

  /** Lets the job's messages flow again after a hold. */
  private resumeClient(): void {
    if (!this.link) return void this.client.resume();
    this.sendAnswer(RelaySide.Client);
  }

  onRelayRecord(kind: RecordKind, side: RelaySide, bytes: Buffer, ms: number, epoch: number): void {
    const link = this.link;
    if (!link || this.phase === 'closed') return;
    const fromClient = side === RelaySide.Client;
    switch (kind) {
      case RecordKind.Replay: {
        // The relay forwarded these messages already; the handler runs over them as if it had,
        // under the policy the relay decided them by, for the audit and the session's state.
        this.replaying = true;
        this.replayUp = this.replayDown = 0;
        this.clock = ms;
        this.replayPolicy = this.deps.relay?.policyAt(epoch);
        try {
          if (fromClient) this.onClientData(bytes);
          else this.onServerData(bytes);
        } finally {
          this.replaying = false;
          this.clock = this.replayPolicy = undefined;
        }
        const same = fromClient ? this.replayUp === bytes.length && this.replayDown === 0 : this.replayDown === bytes.length && this.replayUp === 0;
        if (!same && !this.ended()) {
          this.divergence({ side: fromClient ? 'job' : 'server', bytes: bytes.length, up: this.replayUp, down: this.replayDown }, 'messages');
        }
        return;
      }
      case RecordKind.Live: {
        this.clock = ms;
        this.newAnswer();
        try {
          if (fromClient) this.onClientData(bytes);
          else this.onServerData(bytes);
        } finally {
          this.clock = undefined;
        }
        if (this.ended()) return;
        if (fromClient && this.held) {
          // A hold answers when it ends (resumeClient); nothing was written meanwhile.
          this.deferred = false;
          return this.flush();
        }
        this.sendAnswer(side);
        return;
      }
      case RecordKind.Event:
        return this.onRelayEvent(bytes);
      case RecordKind.Audited:
        this.replayPolicy = this.deps.relay?.policyAt(epoch);
        try {
          this.onAudited(bytes);
        } finally {
          this.replayPolicy = undefined;
        }
        return;
      case RecordKind.Skip: {
        // Messages the handler would only have relayed and counted (see only_counted in relay.cc).
        const n = bytes.readUInt32LE(0);
        this.count(fromClient ? Tally.BytesUp : Tally.BytesDown, n);
        return;
      }
      case RecordKind.End: {
        const error = bytes.length ? bytes.toString('utf8') : undefined;
        if (fromClient) this.close(error ? 'client_error' : 'client_closed', error);
        else this.close(error ? 'upstream_error' : 'upstream_closed', error);
        return;
      }
      default:
        return;
    }
  }

  /**
   * A request the relay forwarded on remembered decisions, with its whole answer, one plain result
   * (relay.cc Session::held): a simple query, or one execution of a statement (Parse, Bind,
   * Describe, Execute, Sync; Parse and Describe optional). Audited from the request and the command tag by the same decisions
   * and statement record as the message-by-message path, under the policy of the relay's epoch.
   * The rows are not read again: the relay forwarded only rows this statement's mask could not
   * change.
   */
  private onAudited(bytes: Buffer): void {
    const durationMs = bytes.readDoubleLE(0);
    const up = bytes.readUInt32LE(8);
    const down = bytes.readUInt32LE(12);
    const requestEnd = AUDITED_HEAD + bytes.readUInt32LE(16);
    if (requestEnd > bytes.length) return this.notWhole();
    const request = bytes.subarray(AUDITED_HEAD, requestEnd);
    const c = msg.decodeCommandComplete(bytes.subarray(requestEnd));
    if (c instanceof PgProtocolError) return this.protocolError('server', c);
    this.count(Tally.BytesUp, up);
    this.count(Tally.BytesDown, down);
    this.count(Tally.Summarised);
    const durationUs = Math.floor(durationMs * 1000);
    const outcome: StatementOutcome = c.rows === undefined ? { commandTag: c.tag, durationUs } : { rows: c.rows, commandTag: c.tag, durationUs };
    if (request[0] !== T.Query) {
      const e = this.summarisedExecution(request);
      if (!e) return;
      const t = this.executionTemplate(e.p);
      if (t) return this.emitTemplated(t, e.p.auditText!, e.params, outcome);
      return this.emitStatement(Object.assign(this.executionInfo(e.p, e.params), outcome));
    }
    const template = this.templates.get(bytes.readUInt32LE(20));
    if (template && template.policy === this.policy()) {
      // The statement's text is the span the relay's scanner found (query string at offset 5, NUL last).
      const start = 5 + bytes.readUInt32LE(24);
      const end = 5 + bytes.readUInt32LE(28);
      if (start > end || end >= request.length) return this.notWhole();
      return this.emitTemplated(template.statement, this.auditText(request.toString('utf8', start, end)), undefined, outcome);
    }
    const info = this.summarisedQuery(request);
    if (info) this.emitStatement(Object.assign(info, outcome));
  }

  /**
   * A statement the relay audited itself, as onAudited would have from the same kAudited record
   * (its template, a text and bound values the redactors leave as they are, the command tag and the
   * duration): the Statement field is encoded, the handler only counts and numbers it
   * (src/statement_event.h). An execution of the unnamed portal comes with EVENT_PORTAL_ENDED when
   * its transaction ended with it (the handler never saw that Bind, and the portal it knew is gone),
   * otherwise with the Bind, kept as the portal; with EVENT_PARSED_UNNAMED when the run parsed the
   * unnamed statement first: it is now the statement the record's template was made for.
   */
  private onRelayEvent(bytes: Buffer): void {
    if (bytes.length < EVENT_HEAD) return void this.notWhole();
    this.count(Tally.BytesUp, bytes.readUInt32LE(0));
    this.count(Tally.BytesDown, bytes.readUInt32LE(4));
    const flags = bytes.readUInt32LE(8);
    const fieldAt = EVENT_HEAD + bytes.readUInt32LE(16);
    if (fieldAt > bytes.length) return void this.notWhole();
    if (flags & EVENT_PARSED_UNNAMED) {
      const p = this.executed.get(bytes.readUInt32LE(12));
      if (p) this.prepared.set('', p);
      else {
        // Its template outlived the handler's bounded memory of it: later executions are audited as unknown.
        this.prepared.delete('');
        this.divergence({ template: bytes.readUInt32LE(12) }, 'a Parse');
      }
    }
    if (flags & EVENT_PORTAL_ENDED) this.portals.delete('');
    else if (fieldAt > EVENT_HEAD) {
      // The transaction is still open, and with it the portal: kept as onBind keeps it.
      const b = msg.decodeBind(bytes.subarray(EVENT_HEAD, fieldAt));
      if (b instanceof PgProtocolError) return this.protocolError('job', b);
      this.portals.set(b.portal, { stmt: b.statement, params: b.params });
    }
    this.count(Tally.Summarised);
    this.count(Tally.Encoded);
    this.s.emit({ kind: EventKind.EVENT_KIND_STATEMENT!, requestId: String(this.count(Tally.RequestSeq)), statementField: bytes.subarray(fieldAt) });
  }

  private emitTemplated(template: StatementTemplate, text: string, params: string[] | undefined, outcome: StatementOutcome): void {
    const templated = params === undefined ? { template, text, outcome } : { template, text, params, outcome };
    this.s.emit({ kind: EventKind.EVENT_KIND_STATEMENT!, requestId: String(this.count(Tally.RequestSeq)), templated });
  }

  /**
   * The template of a prepared statement's executions: made once per statement, and shared between
   * statements of one exactly classified text and decision (drivers that Parse the unnamed
   * statement before every execution get the same operation object back from classify).
   */
  private executionTemplate(p: Prepared): StatementTemplate | undefined {
    if (p.template !== undefined) return p.template ?? undefined;
    const op = executedOp(p);
    let cached = p.review ? undefined : this.opTemplates.get(op);
    if (!cached || cached.decision !== p.decision) {
      const base = this.statementBase(op, p.decision, p.review);
      base.prepared = true;
      if (p.parseError !== undefined) base.parseError = p.parseError;
      cached = { decision: p.decision, template: this.template(base) };
      if (!p.review) this.opTemplates.set(op, cached);
    }
    p.template = cached.template ?? null;
    return cached.template;
  }

  private summarisedQuery(request: Buffer): StatementInfo | undefined {
    const body = messageBody(request, 0);
    if (!body) return this.notWhole();
    const q = msg.decodeQuery(body);
    if (q instanceof PgProtocolError) return void this.protocolError('job', q);
    const p = this.decide(q.sql);
    const op = p.ops[0];
    if (p.denied || p.ops.length !== 1 || !op) this.divergence({ statements: p.ops.length, action: p.decision.action });
    return op && this.queryInfo(op, p);
  }

  /**
   * Parse (optional) and Bind as onParse and onBind would take them; the rest is Describe, Execute,
   * Sync. The statement executed and its bound values as the audit shows them.
   */
  private summarisedExecution(request: Buffer): { p: Prepared; params: string[] } | undefined {
    let at = 0;
    let body = messageBody(request, at);
    if (body && request[at] === T.Parse) {
      const m = msg.decodeParse(body);
      if (m instanceof PgProtocolError) return void this.protocolError('job', m);
      this.prepared.set(m.name, this.decide(m.sql, true));
      at += 1 + request.readUInt32BE(at + 1);
      body = messageBody(request, at);
    }
    if (!body || request[at] !== T.Bind) return this.notWhole();
    const b = msg.decodeBind(body);
    if (b instanceof PgProtocolError) return void this.protocolError('job', b);
    const portal = { stmt: b.statement, params: b.params };
    this.portals.set(b.portal, portal);
    const p = this.prepared.get(b.statement);
    if (!p || p.denied) this.divergence({ statement: b.statement, action: p?.decision.action ?? 'unknown' });
    // It ran all the same: recorded under the decision the handler finds now, or as unknown.
    const executed = p ?? this.unknownStatement(b.statement);
    return { p: executed, params: this.executionParams(executed, portal) };
  }

  /** What a statement the handler never saw parsed is audited as (a divergence: it should not happen). */
  private unknownStatement(name: string): Prepared {
    return { ops: [{ type: 'UNKNOWN', text: '' }], decision: { action: 'allow', rule: 'default', reason: `prepared statement "${name}" unknown to the handler` }, denied: false };
  }

  private notWhole(): undefined {
    this.protocolError('job', new PgProtocolError('malformed', 'the relay summarised a request that is not whole messages'));
    return undefined;
  }

  /** Handled differently here than relayed there: a bug, or a policy change racing a decision. */
  private divergence(fields: Record<string, unknown>, what = 'a request'): void {
    if (this.diverged) return;
    this.diverged = true;
    this.s.log.error(fields, `the native relay forwarded ${what} the handler would have handled differently`);
  }

  private onServerFrame(f: Frame): void {
    if (this.phase === 'closed') return;
    const raw = f.buffer.subarray(f.start, f.end);
    if (this.phase === 'auth') return this.onAuthFrame(f, raw);
    switch (f.type) {
      case T.RowDesc: {
        const bad = this.describeResult(f.body);
        if (bad) return this.protocolError('server', bad);
        return this.toClient(raw);
      }
      case T.DataRow: {
        if (this.rowMask) {
          const masked = maskDataRow(f.body, this.rowMask, this.countMasked);
          if (masked instanceof PgProtocolError) return this.protocolError('server', masked);
          return this.toClient(masked ?? raw);
        }
        const bad = msg.checkDataRow(f.body);
        if (bad) return this.protocolError('server', bad);
        return this.toClient(raw);
      }
      case T.Complete: {
        const c = msg.decodeCommandComplete(f.body);
        if (c instanceof PgProtocolError) return this.protocolError('server', c);
        this.settle({ tag: c.tag, rows: c.rows });
        return this.toClient(raw);
      }
      case T.Auth:
      case T.KeyData:
        return this.protocolError('server', new PgProtocolError('malformed', `message ${String.fromCharCode(f.type)} is not allowed after authentication`));
      case T.Empty:
      case T.Suspended:
        this.settle({ tag: f.type === T.Empty ? 'EMPTY' : 'SUSPENDED' });
        return this.toClient(raw);
      case T.Error: {
        const e = msg.decodeErrorResponse(f.body);
        if (e instanceof PgProtocolError) return this.protocolError('server', e);
        this.settle({ errorCode: e.code, error: e.message }, true);
        return this.toClient(raw);
      }
      case T.Ready: {
        const z = msg.decodeReadyForQuery(f.body);
        if (z instanceof PgProtocolError) return this.protocolError('server', z);
        this.onReady();
        return this.toClient(raw);
      }
      default:
        return this.toClient(raw);
    }
  }

  private onAuthFrame(f: Frame, raw: Buffer): void {
    if (f.type === T.Error) {
      const e = msg.decodeErrorResponse(f.body);
      this.toClient(raw);
      return this.close('upstream_closed', `authentication failed: ${e instanceof PgProtocolError ? e.message : e.message}`);
    }
    if (f.type === T.Auth) {
      const a = msg.decodeAuthentication(f.body);
      if (a instanceof PgProtocolError) return this.protocolError('server', a);
      if (this.injected) return this.injectAuth(a, raw);
      switch (a.kind) {
        case 'ok': break;
        case 'cleartext': this.authMethod = 'cleartext'; break;
        case 'md5': this.authMethod = 'md5'; break;
        case 'sasl': {
          this.authMethod = 'scram-sha-256';
          const offered = a.mechanisms.filter((m) => !m.endsWith('-PLUS'));
          if (offered.length !== a.mechanisms.length) return this.toClient(msg.authenticationSASL(offered));
          break;
        }
        default: break;
      }
      return this.toClient(raw);
    }
    // Between authentication and the first ReadyForQuery only these may come, each well formed.
    let bad: PgProtocolError | undefined;
    switch (f.type) {
      case T.KeyData: {
        const k = msg.decodeBackendKeyData(f.body);
        if (k instanceof PgProtocolError) bad = k;
        else this.backendPid = k.pid;
        break;
      }
      case T.ParamStatus: {
        const p = msg.decodeParameterStatus(f.body);
        if (p instanceof PgProtocolError) bad = p;
        break;
      }
      case T.Notice: {
        const n = msg.decodeErrorResponse(f.body);
        if (n instanceof PgProtocolError) bad = n;
        break;
      }
      case T.Ready: {
        const z = msg.decodeReadyForQuery(f.body);
        if (z instanceof PgProtocolError) bad = z;
        break;
      }
      case ch('v'): {
        const v = msg.decodeNegotiateProtocolVersion(f.body);
        if (v instanceof PgProtocolError) bad = v;
        break;
      }
      default:
        bad = new PgProtocolError('malformed', `message ${String.fromCharCode(f.type)} is not allowed during authentication`);
    }
    if (bad) return this.protocolError('server', bad);
    if (f.type === T.Ready) {
      this.phase = 'ready';
      this.sessionStarted();
      this.handOffDue = this.deps.relay !== undefined;
    }
    this.toClient(raw);
  }

  /** Credential injection: the agent answers the server; the job sees only AuthenticationOk. */
  private injectAuth(a: msg.Authentication, raw: Buffer): void {
    const inj = this.injected!;
    switch (a.kind) {
      case 'ok':
        if (inj.scram && !inj.serverProven) return this.protocolError('server', new PgProtocolError('auth', 'the server skipped the SCRAM server proof'));
        this.authMethod = `injected:${this.authMethod}`;
        return this.toClient(raw);
      case 'cleartext':
        this.authMethod = 'cleartext';
        return this.toServer(msg.passwordMessage(inj.password));
      case 'md5':
        this.authMethod = 'md5';
        return this.toServer(msg.passwordMessage(md5Password(inj.user, inj.password, a.salt)));
      case 'sasl': {
        const mech = chooseSaslMechanism(a.mechanisms);
        if (mech instanceof PgProtocolError) return this.protocolError('server', mech);
        this.authMethod = 'scram-sha-256';
        inj.scram = new ScramClient({ password: inj.password });
        return this.toServer(msg.saslInitialResponse(mech, inj.scram.clientFirstMessage()));
      }
      case 'sasl-continue': {
        const final = inj.scram?.clientFinalMessage(a.data);
        if (final === undefined || final instanceof PgProtocolError) return this.protocolError('server', final ?? new PgProtocolError('auth', 'SASL continue without a SASL exchange'));
        return this.toServer(msg.saslResponse(final));
      }
      case 'sasl-final': {
        const ok = inj.scram?.verifyServerFinal(a.data);
        if (ok === undefined || ok instanceof PgProtocolError) return this.protocolError('server', ok ?? new PgProtocolError('auth', 'SASL final without a SASL exchange'));
        inj.serverProven = true;
        return;
      }
      default:
        return this.protocolError('server', new PgProtocolError('auth', `the server asks for an authentication method (${a.subtype}) the agent cannot perform`));
    }
  }

  private sessionStarted(): void {
    this.s.emit({
      kind: EventKind.EVENT_KIND_DB_SESSION_START!,
      dbSession: {
        protocol: 'postgres', database: this.database, user: this.injected?.user ?? this.user, clientUser: this.user,
        application: this.params.get('application_name') ?? '', clientTls: this.clientTls, serverTls: this.serverTls,
        auth: this.authMethod, backendPid: this.backendPid,
      },
    });
  }

  // ---- statements -----------------------------------------------------------------------------

  /**
   * The policy's view of `op`. One object per session, refreshed per call rather than allocated
   * per evaluation: Policy.evaluate reads it synchronously and keeps nothing (it returns one of
   * its frozen Decisions), and every caller here passes it straight to evaluate.
   */
  private context(op: Operation): OperationContext {
    const c: OperationContext = (this.ctx ??= { protocol: 'postgres', target: this.s.destination, job: this.s.job, database: '', user: '', operation: op });
    c.target = this.s.destination;
    c.job = this.s.job;
    c.database = this.database;
    c.user = this.injected?.user ?? this.user;
    c.operation = op;
    return c;
  }

  private ctx?: OperationContext;

  /** Classifies SQL and decides it; the most severe decision over its statements wins. */
  private decide(sql: string, exact = false): Prepared {
    const c = classify(sql, { exact });
    const policy = this.policy();
    if ('error' in c) {
      const op: Operation = { type: 'UNPARSED', text: sql };
      return { ops: [op], parseError: c.error, decision: policy.evaluate(this.context(op)), denied: false };
    }
    let decision: Decision | undefined;
    for (const op of c.statements) {
      const d = policy.evaluate(this.context(op));
      if (!decision || SEVERITY[d.action] > SEVERITY[decision.action]) decision = d;
    }
    decision ??= policy.evaluate(this.context({ type: 'EMPTY', text: sql }));
    const denied = decision.action === 'deny' || decision.action === 'review';
    const namesNoMasked = decision.mask !== undefined && !mentionsMaskedColumnCached(sql, decision.mask, c.shape);
    // Nested statements (a DELETE inside a WITH, EXPLAIN ANALYZE's statement) are judged above but
    // get no CommandComplete of their own: the audit follows the top-level statements.
    return { ops: c.statements.filter((op) => !op.nested), decision, denied, namesNoMasked, spansText: c.shape !== undefined && statementSpansText(c.shape) };
  }

  private onQuery(f: Frame, raw: Buffer): void {
    const q = msg.decodeQuery(f.body);
    if (q instanceof PgProtocolError) return this.protocolError('job', q);
    const p = this.decide(q.sql);
    const blocker = () => p.ops.find((op) => SEVERITY[this.policy().evaluate(this.context(op)).action] >= 2) ?? p.ops[0];
    if (p.decision.action === 'review' && this.deps.approvals) {
      return this.holdForReview(p, blocker() ?? { type: 'EMPTY' }, (r) => (r.decision === 'approved' ? this.forwardQuery(raw, p, r) : this.denyQuery(p, blocker(), r)));
    }
    if (p.denied) return this.denyQuery(p, blocker());
    this.answer.cache = relayCacheFor(p, this.policy());
    if (this.answer.cache !== RelayCache.None) {
      const id = this.queryTemplate(p);
      this.answer.template = id;
      // The relay writes the events of this template's statements itself where it can (onRelayEvent).
      this.answer.templatePieces = id ? packTemplate(this.templates.get(id)!.statement) : null;
    }
    this.forwardQuery(raw, p);
  }

  /**
   * An audit template for the statement of a simple query the relay may repeat, or 0. Only where
   * everything but the text and outcome is the same for every query the relay repeats on this
   * decision: one statement spanning the text, parsed, and a text that no masked-column literal
   * changes (queryInfo would audit op.text itself). The text still goes through the detectors.
   */
  private queryTemplate(p: Prepared): number {
    const op = p.ops[0];
    if (!op || p.ops.length !== 1 || !p.spansText || p.parseError !== undefined || (p.decision.mask && !p.namesNoMasked)) return 0;
    const statement = this.template(this.statementBase(op, p.decision));
    if (!statement) return 0;
    const id = this.templateId();
    if (!id) return 0;
    if (this.templates.size >= MAX_TEMPLATES) this.templates.clear();
    this.templates.set(id, { policy: this.policy(), statement });
    return id;
  }

  /**
   * Lets the relay write the events of this statement's executions itself (onRelayEvent): their
   * template with the statement's text inside. Only where every bound value goes into the audit
   * as the redactors leave it (none is written into a masked column).
   */
  private executionEventTemplate(p: Prepared): void {
    p.writes ??= this.maskedWrites(executedOp(p), p.decision, p.namesNoMasked);
    if (p.writes.params.size !== 0) return;
    p.auditText ??= this.auditText(p.writes.text);
    const t = this.executionTemplate(p);
    const id = t && this.templateId();
    if (!id) return;
    this.answer.template = id;
    this.answer.templatePieces = packTemplate(t, p.auditText);
    if (this.executed.size >= MAX_TEMPLATES) this.executed.clear();
    this.executed.set(id, p);
  }

  /** A new template id, or 0. Ids are never reused: the relay may still name one whose template was dropped. */
  private templateId(): number {
    // Past 2^32 - 1 decisions a session simply gets no more (its statements are audited the long way).
    return this.lastTemplate >= 0xffffffff ? 0 : ++this.lastTemplate;
  }

  private denyQuery(p: Prepared, blocker: Operation | undefined, review?: ReviewResult): void {
    const { message, hint } = review ? reviewDenialText(blocker?.type ?? 'statement', p.decision, review) : denialText(p.decision, blocker);
    // Every statement of the string is recorded as denied: none of them runs.
    for (const op of p.ops) this.audit(op, p.decision, { error: message, errorCode: '42501' }, review);
    this.queue.push({ kind: 'simple-end' });
    this.toServer(msg.query(denySql(message, hint)));
  }

  private forwardQuery(raw: Buffer, p: Prepared, review?: ReviewResult): void {
    const started = this.now();
    this.answer.tag = Math.max(0, this.maskTag(p.decision));
    for (const op of p.ops) {
      this.queue.push({ kind: 'statement', op, started, mask: p.decision.action === 'mask' ? p.decision.mask : undefined,
        info: this.queryInfo(op, p, review) });
    }
    this.queue.push({ kind: 'simple-end' });
    this.toServer(raw);
  }

  /**
   * Review: the statement is held, not forwarded, and nothing more is read from this job's session
   * (later messages wait in order; other sessions go on) until the approvers decide. Then `then`
   * forwards or denies it and the waiting messages are handled as if they had just arrived. The
   * session has no idle timeout, so the job's connection stays open however long the review takes.
   */
  private holdForReview(p: Prepared, op: Operation, then: (r: ReviewResult) => void): void {
    this.held = [];
    const client = this.client;
    if (!this.link) client.pause();
    const ended = new AbortController();
    const held = { protocol: 'postgres' as const, operation: { ...op, text: op.text ? this.redact(op.text) : op.text }, decision: p.decision,
      database: this.database, user: this.injected?.user ?? this.user };
    const done = holdForApproval(this.deps.approvals!, this.s, held, ended.signal)
      .catch((err: Error): ReviewResult => ({ decision: 'denied', by: [], reason: `approval failed: ${err.message}`, id: '-', waitedMs: 0 }))
      .then((r) => {
        this.holding = undefined;
        if (this.phase === 'closed') return;
        const waiting = this.held ?? [];
        this.held = undefined;
        // On the native relay, what the outcome writes goes with the answer that resumes the job.
        if (this.link) this.newAnswer();
        this.batch(() => {
          then(r);
          for (const f of waiting) this.onClientFrame(f); // one of them may start another hold: the rest wait again
        });
        if (!this.held) this.resumeClient();
        else if (this.link) {
          this.deferred = false;
          this.flush();
        }
      })
      .catch((err: Error) => {
        this.s.log.error({ err }, 'cannot resume a session after its review');
        this.close('protocol_error', `after review: ${err.message}`);
      });
    this.holding = { abort: ended, done };
  }

  private onParse(f: Frame, raw: Buffer): void {
    const m = msg.decodeParse(f.body);
    if (m instanceof PgProtocolError) return this.protocolError('job', m);
    const p = this.decide(m.sql, true);
    this.prepared.set(m.name, p);
    if (p.decision.action === 'review' && this.deps.approvals) {
      return this.holdForReview(p, executedOp(p), (r) => {
        p.review = r;
        if (r.decision !== 'approved') return this.denyParse(m.name, p, r);
        p.denied = false;
        this.toServer(raw);
      });
    }
    if (!p.denied) {
      const tag = this.maskTag(p.decision);
      this.answer.cache = relayCacheFor(p, this.policy());
      this.answer.allowName = tag >= 0;
      this.answer.tag = Math.max(0, tag);
      // Only in an answer: a Parse the relay repeated gets the template it remembered.
      if (tag >= 0 && this.link && !this.replaying) this.executionEventTemplate(p);
      return this.toServer(raw);
    }
    this.denyParse(m.name, p);
  }

  private denyParse(name: string, p: Prepared, review?: ReviewResult): void {
    const what = p.ops[0]?.type ?? 'statement';
    const { message, hint } = review ? reviewDenialText(what, p.decision, review) : denialText(p.decision, p.ops[0]);
    this.audit(p.ops[0]!, p.decision, { error: message, errorCode: '42501', prepared: true }, review);
    this.toServer(msg.parse(name, denySql(message, hint), []));
  }

  private onBind(f: Frame, raw: Buffer): void {
    const b = msg.decodeBind(f.body);
    if (b instanceof PgProtocolError) return this.protocolError('job', b);
    this.portals.set(b.portal, { stmt: b.statement, params: b.params });
    const p = this.prepared.get(b.statement);
    // The denied statement was replaced by one without parameters: bind it with none.
    if (p?.denied) return this.toServer(msg.bind({ portal: b.portal, statement: b.statement, resultFormats: b.resultFormats }));
    const tag = p ? this.maskTag(p.decision) : -1;
    this.answer.allowName = tag >= 0;
    this.answer.tag = Math.max(0, tag);
    this.toServer(raw);
  }

  private onExecute(f: Frame, raw: Buffer): void {
    const e = msg.decodeExecute(f.body);
    if (e instanceof PgProtocolError) return this.protocolError('job', e);
    const portal = this.portals.get(e.portal);
    const p = portal ? this.prepared.get(portal.stmt) : undefined;
    if (p && !p.denied) {
      this.queue.push({ kind: 'statement', op: executedOp(p), started: this.now(),
        mask: p.decision.action === 'mask' ? p.decision.mask : undefined, info: this.executionInfo(p, this.executionParams(p, portal!)) });
      const tag = this.maskTag(p.decision);
      this.answer.allowName = tag >= 0;
      this.answer.tag = Math.max(0, tag);
    }
    this.toServer(raw);
  }

  private redact(text: string): string {
    const r = this.redactor.redact(text);
    return this.credentialRedactor ? this.credentialRedactor.redact(r) : r;
  }

  /** Literals and parameters a masked statement writes into masked columns (see column-literals.ts). */
  private maskedWrites(op: Operation, d: Decision, namesNoMasked = false): MaskedWrites {
    return d.mask && op.text && !namesNoMasked ? maskedWrites(op.text, d.mask, op.objects ?? [], this.secretLabel) : { text: op.text ?? '', params: NO_MASKED_PARAMS };
  }

  /** A bound value for a masked column: hidden whole, under a detector's label if it holds a secret. */
  private maskedParam(value: Buffer, column: string): string {
    const label = this.secretLabel(value.toString('utf8'));
    return label ? `[REDACTED:${label}]` : redactedParam(column);
  }

  /** What the detectors call the secret(s) in a literal, if they find any (see column-literals.ts). */
  private readonly secretLabel = (literal: string): string | undefined => {
    const r = this.redact(literal);
    return r === literal ? undefined : redactionLabels(r);
  };

  /**
   * The statement's audit record. Built for every statement, so without object spreads (each a
   * runtime copy loop): the fields `extra` may carry are copied one by one, and only when set, which
   * the event encoding cannot tell from a spread's undefined ones.
   */
  private statementInfo(op: Operation, d: Decision, extra: StatementExtra, review?: ReviewResult,
    text = this.auditText(this.maskedWrites(op, d).text)): StatementInfo {
    const info: StatementInfo = this.statementBase(op, d, review);
    info.text = text;
    if (extra.params !== undefined) info.params = extra.params;
    if (extra.prepared !== undefined) info.prepared = extra.prepared;
    if (extra.parseError !== undefined) info.parseError = extra.parseError;
    if (extra.error !== undefined) info.error = extra.error;
    if (extra.errorCode !== undefined) info.errorCode = extra.errorCode;
    return info;
  }

  /** What the statement's decision fixes in its audit record (all of it but text, values, outcome). */
  private statementBase(op: Operation, d: Decision, review?: ReviewResult): StatementBase {
    return {
      protocol: 'postgres', type: op.type, objects: op.objects ?? [],
      decision: review
        ? { action: d.action, rule: d.rule, reason: d.reason, outcome: review.decision, approvalId: review.id }
        : decisionInfo(d),
      database: this.database, user: this.injected?.user ?? this.user,
    };
  }

  /** A template of statementBase, or undefined for a base the wire writer does not take. */
  private template(base: StatementBase): StatementTemplate | undefined {
    try {
      return new StatementTemplate(base);
    } catch (err) {
      if (err instanceof UnsupportedValue) return undefined;
      throw err;
    }
  }

  /** The audit record of one statement of a simple query (forwarded live, or summarised by the relay). */
  private queryInfo(op: Operation, p: Prepared, review?: ReviewResult): StatementInfo {
    const text = this.auditText(this.maskedWrites(op, p.decision, p.namesNoMasked).text);
    return this.statementInfo(op, p.decision, { parseError: p.parseError }, review, text);
  }

  /** The audit record of one execution of a prepared statement; `params` from executionParams, which also sets p.auditText. */
  private executionInfo(p: Prepared, params: string[]): StatementInfo {
    return this.statementInfo(executedOp(p), p.decision, { params, prepared: true, parseError: p.parseError }, p.review, p.auditText);
  }

  /** The bound values as the audit shows them; also works out p.writes and p.auditText. */
  private executionParams(p: Prepared, portal: { params: (Buffer | null)[] }): string[] {
    p.writes ??= this.maskedWrites(executedOp(p), p.decision, p.namesNoMasked);
    p.auditText ??= this.auditText(p.writes.text);
    const masked = p.writes.params;
    return portal.params.map((v, i) => (v === null ? 'NULL' : masked.has(i + 1) ? this.maskedParam(v, masked.get(i + 1)!) : this.redact(v.toString('utf8'))));
  }

  /** A statement's text as the audit shows it: masked-column literals already replaced, then the detectors. */
  private auditText(text: string): string {
    return text ? this.redact(text) : '';
  }

  /** Records a statement that got no server round trip of its own (denied, cancel, function call). */
  private audit(op: Operation, d: Decision, extra: StatementExtra, review?: ReviewResult): void {
    this.emitStatement(this.statementInfo(op, d, extra, review));
  }

  private emitStatement(info: StatementInfo): void {
    this.s.emit({ kind: EventKind.EVENT_KIND_STATEMENT!, requestId: String(this.count(Tally.RequestSeq)), statement: info });
  }

  /** The head statement got its outcome (CommandComplete, EmptyQuery, PortalSuspended, Error). */
  private settle(outcome: { tag?: string; rows?: number; errorCode?: string; error?: string }, isError = false): void {
    const i = this.queue.findIndex((p) => p.kind === 'statement');
    const head = this.queue[0];
    if (i !== 0 || !head) return; // an error outside any statement (e.g. in Parse of a denied one)
    this.queue.shift();
    this.complete(head, outcome);
    this.rowMask = undefined;
    if (isError) {
      // After an error the server skips the rest of the simple query / of the pipeline until Sync.
      while (this.queue[0]?.kind === 'statement') this.complete(this.queue.shift()!, { error: 'not executed: an earlier statement failed' });
    }
  }

  private complete(p: Pending, outcome: { tag?: string; rows?: number; errorCode?: string; error?: string }): void {
    const info = p.info!;
    if (outcome.tag) info.commandTag = outcome.tag;
    if (outcome.rows !== undefined) info.rows = outcome.rows;
    if (outcome.errorCode) info.errorCode = outcome.errorCode;
    if (outcome.error) info.error = this.redact(outcome.error);
    // Whole microseconds, truncated as the integer division of hrtime nanoseconds did.
    if (p.started !== undefined) info.durationUs = Math.floor((this.now() - p.started) * 1000);
    if (this.maskedValues) info.maskedValues = this.maskedValues;
    this.maskedValues = 0;
    this.emitStatement(info);
  }

  private onReady(): void {
    // ReadyForQuery closes a simple query or a pipeline up to its Sync.
    while (this.queue.length) {
      const p = this.queue.shift()!;
      if (p.kind === 'statement') this.complete(p, { error: 'no outcome before ReadyForQuery' });
      if (p.kind === 'sync' || p.kind === 'simple-end') break;
    }
    this.rowMask = undefined;
  }

  // ---- masking --------------------------------------------------------------------------------

  private maskedValues = 0;
  private readonly countMasked = (): void => { this.maskedValues++; };

  /** Masking decisions per result shape (see ResultShapes). */
  private readonly shapes = new ResultShapes<ResultMask>();

  private describeResult(body: Buffer): PgProtocolError | undefined {
    const head = this.queue.find((p) => p.kind === 'statement');
    const spec = head?.mask;
    this.rowMask = undefined;
    this.rowMaskLive = spec !== undefined && relayMaskFlags(spec) < 0;
    if (!spec) {
      const rd = msg.decodeRowDescription(body);
      return rd instanceof PgProtocolError ? rd : undefined;
    }
    const tables = head?.op?.objects ?? [];
    let shape = this.shapes.get(spec, tables, body);
    if (!shape) {
      // Only bytes that decoded once are ever cached: a hit is a valid RowDescription.
      const rd = msg.decodeRowDescription(body);
      if (rd instanceof PgProtocolError) return rd;
      const cols = rd.fields.map((fd) => maskCoversColumn(spec, fd.name) || tables.some((t) => maskCoversColumn(spec, fd.name, t)));
      const anyColumn = cols.some(Boolean);
      shape = { detectors: spec.detectors, cols, formats: rd.fields.map((fd) => fd.format), anyColumn, cannotHit: rowFilterFor(spec) };
      this.shapes.set(tables, body, shape);
    }
    // Rows need looking at when a column is masked by name or a detector may hit in a value.
    if (shape.anyColumn || shape.detectors.length > 0) this.rowMask = shape;
    // The relay may forward this result's description itself from now on (its rows it checks).
    if (this.link && !shape.anyColumn && !this.rowMaskLive) this.answer.plainResult = this.maskTag({ action: 'mask', rule: '', reason: '', mask: spec });
    return undefined;
  }
}

/**
 * Masking decisions per result shape: a session runs the same few statements again and again, and
 * the same RowDescription bytes under the same mask spec and tables decide the same columns.
 * Exact: a hit needs the very same spec object, table names and bytes. The last shape is checked
 * first by comparing bytes (a repeated statement gets the same RowDescription as the previous one),
 * which needs no key string; other shapes are found by a key built from the tables and the bytes.
 */
export class ResultShapes<T> {
  private readonly byKey = new Map<string, T>();
  private spec?: MaskSpec;
  /** The shape last looked up or stored, with its own copy of the bytes (a frame may be a view). */
  private last?: { tables: readonly string[]; body: Buffer; value: T };
  /** At most this many shapes per spec; then they are forgotten and found again. */
  static readonly MAX = 256;

  /** The value stored for these tables and RowDescription bytes under this spec, if any. */
  get(spec: MaskSpec, tables: readonly string[], body: Buffer): T | undefined {
    if (this.spec !== spec || this.byKey.size >= ResultShapes.MAX) {
      this.byKey.clear();
      this.last = undefined;
      this.spec = spec;
    }
    const last = this.last;
    if (last && sameStrings(last.tables, tables) && last.body.equals(body)) return last.value;
    const value = this.byKey.get(shapeKey(tables, body));
    if (value !== undefined) this.last = { tables: tables.slice(), body: Buffer.from(body), value };
    return value;
  }

  /** Stores a value for the spec of the preceding get(), which found none. */
  set(tables: readonly string[], body: Buffer, value: T): void {
    this.byKey.set(shapeKey(tables, body), value);
    this.last = { tables: tables.slice(), body: Buffer.from(body), value };
  }
}

// JSON of the tables ends at its own ']': no two lists of names (not [] and [''], nor ['a', 'b'] and
// ['a\0b']) share a key, and one latin1 character per byte keeps the bytes exact.
const shapeKey = (tables: readonly string[], body: Buffer): string => `${JSON.stringify(tables)}${body.toString('latin1')}`;

function sameStrings(a: readonly string[], b: readonly string[]): boolean {
  if (a === b) return true;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** How the rows of one result are masked, worked out from its RowDescription under a mask spec. */
export interface ResultMask {
  /** The spec's detectors: a text value in which one of them hits is masked. */
  readonly detectors: readonly string[];
  /** Per column: masked by name (a column selector of the spec covers it). */
  readonly cols: boolean[];
  /** Per column: the format code, 0 text or 1 binary (detectors look at text values only). */
  readonly formats: number[];
  /** Some column is masked by name. */
  readonly anyColumn: boolean;
  /** rowCannotHit(detectors), when the detectors have such a test (see the fast path below). */
  readonly cannotHit?: (row: Uint8Array) => boolean;
}

/**
 * A DataRow body masked: the whole message (type and length included), or undefined when nothing
 * in it needed masking and the frame goes out as it came; an error for a malformed row.
 * `onMasked` is called once per value masked.
 */
export function maskDataRow(body: Buffer, m: ResultMask, onMasked: () => void): Buffer | PgProtocolError | undefined {
  const cols = m.cols;
  let select: boolean[] = cols;
  if (m.detectors.length) {
    // Fast path: with no column masked by name, a row whose bytes prove that none of the spec's
    // detectors can hit in any value (no '@' for email, under 13 digits for card-number: see
    // rowCannotHit) would come out of the full path below unchanged. It gets the same structural
    // check instead of being decoded and every value turned into a string and run through the
    // detector regexes: most rows of most results (ids, counts, timestamps) are like that.
    if (!m.anyColumn && m.cannotHit?.(body)) return msg.checkDataRow(body);
    const row = msg.decodeDataRow(body);
    if (row instanceof PgProtocolError) return row;
    select = row.values.map((v, i) => cols[i] || (v !== null && m.formats[i] === 0 && detectorHit(m.detectors, v.toString('utf8'))));
  }
  if (!select.some(Boolean)) return msg.checkDataRow(body);
  return msg.rewriteDataRow(body, select, (_v, i) => {
    onMasked();
    // Text values become a marker; binary values (type-specific encodings) become NULL-free zeroes
    // would be wrong for many types, so a binary column is masked as an empty value.
    return m.formats[i] === 1 ? Buffer.alloc(0) : MASKED;
  });
}

const MASKED = Buffer.from('[MASKED]');

/** rowCannotHit for a spec's detectors, worked out once per spec (null: none for them). */
const rowFilters = new WeakMap<MaskSpec, ((row: Uint8Array) => boolean) | null>();
function rowFilterFor(spec: MaskSpec): ((row: Uint8Array) => boolean) | undefined {
  let f = rowFilters.get(spec);
  if (f === undefined) rowFilters.set(spec, (f = rowCannotHit(spec.detectors) ?? null));
  return f ?? undefined;
}

