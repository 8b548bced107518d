// The host agent: wires the BPF runtime, the proxy, identity and the event spool together, in the
// order that never leaves a gap: the proxy listens before the redirect is switched on, the config
// says UP before any hook is attached, and on stop the hooks are marked DOWN (fail-closed) or
// detached (fail-open) before the proxy goes away.
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { EventKind, IdentitySource, type EventDraft } from '../proto/index.js';
import { BpfRuntime, CGROUP_PROGRAMS, EXEC_PROGRAMS, watchedCgroup } from './bpf/runtime.js';
import type { ExecRecord } from './bpf/layout.js';
import { cgroup2Root, cgroupId, cgroupOfPid, cgroupPath, ensureCgroup } from './cgroup.js';
import { relayThreadCount, type AgentConfig } from './config.js';
import { ProxyServer } from './proxy/server.js';
import { tcpHandler } from './proxy/tcp.js';
import type { ProtocolHandler } from './proxy/handler.js';
import { postgresHandler } from './pg/handler.js';
import { loadClassifier } from './pg/classify.js';
import { defaultPolicy, loadPolicy, watchPolicy, type Policy } from './policy/index.js';
import { AgentCa } from './tls/ca.js';
import { Spool, type SpoolState } from './events/spool.js';
import { Shipper } from './events/shipper.js';
import { loadAgentIdentity, loadCheckpointVerifier, tlsClientCredentials } from '../collector/pki/identity.js';
import { Attribution } from './identity/attribution.js';
import { VERSION } from './version.js';
import { CollectorApprovals } from './approvals/client.js';
import { HeartbeatSender } from './events/heartbeat.js';
import { AgentStatusReporter, type BpfStatus } from './status.js';
import { nativeRelay, type NativeRelay } from './native/relay.js';
import { AuditPriority } from './native/audit-priority.js';
import { loadNative } from './native/index.js';
import { writeAgentState, type AgentState } from './state.js';

export interface RunningAgent {
  readonly proxy: ProxyServer;
  readonly spool: Spool;
  readonly shipper?: Shipper;
  stop(reason: string): Promise<void>;
}

export async function startAgent(cfg: AgentConfig, log: Logger): Promise<RunningAgent> {
  const startedMs = Date.now();
  mkdirSync(cfg.stateDir, { recursive: true, mode: 0o700 });
  const spool = await Spool.open({ dir: path.join(cfg.stateDir, 'spool'), agentId: cfg.agentId, maxBytes: cfg.spoolMaxBytes,
    commitDelayMs: cfg.spoolCommitDelayMs, logger: log });
  const emit = (draft: EventDraft) => spool.append(draft);
  const shipper = cfg.collector ? createShipper(cfg, spool, emit, log) : undefined;
  spool.on('state', (state: string, reason?: string) => {
    if (state === 'ok') {
      log.warn('audit spool is writable again; accepting new connections');
      emit({ kind: EventKind.EVENT_KIND_AGENT_NOTICE!, notice: { level: 'warn', code: 'spool_recovered', message: `spool accepting events again after: ${lastSpoolProblem}` } });
    } else {
      lastSpoolProblem = reason ?? state;
      log.error({ state, reason }, 'audit spool cannot take events: refusing new intercepted connections (fail-closed) until it can');
    }
  });
  let lastSpoolProblem = '';

  const root = cgroup2Root();
  const jobCgroup = cgroupPath(cfg.jobCgroupParent, root);
  ensureCgroup(jobCgroup);
  const watched = [jobCgroup, ...cfg.watchCgroups.map((c) => cgroupPath(c, root))].map(watchedCgroup);
  const ownCgroup = path.join(root, cgroupOfPid('self'));
  if (watched.some((w) => ownCgroup === w.path || ownCgroup.startsWith(w.path + '/'))) {
    log.warn({ ownCgroup }, 'the agent runs inside a watched cgroup; its own connections are exempted by cgroup id');
  }

  // Policy: a file that does not load stops the agent at start (say which line), and on a later
  // change keeps the policy in force (never run without one because of a typo).
  let policy: Policy = cfg.policyFile ? loadPolicy(cfg.policyFile) : defaultPolicy();
  const relay = startRelay(cfg, log, emit);
  const priority = relay && cfg.auditNice > 0 ? auditPriority(cfg.auditNice, relay, log) : undefined;
  // The relay repeats decisions it was told it may; a new policy starts a new epoch in which it
  // remembers none, and what it forwarded before is replayed under the policy of its own epoch.
  const policies = new Map<number, Policy>([[0, policy]]);
  let epoch = 0;
  const stopWatching = cfg.policyFile
    ? watchPolicy(cfg.policyFile, (p) => {
      policy = p;
      if (relay) {
        policies.set((epoch = relay.forget()), p);
        policies.delete(epoch - 8);
      }
      log.info({ file: cfg.policyFile, rules: p.rules.length }, 'policy reloaded');
      emit({ kind: EventKind.EVENT_KIND_AGENT_NOTICE!, notice: { level: 'info', code: 'policy_reloaded', message: `${cfg.policyFile}: ${p.rules.length} rules, sha256 ${p.digest}` } });
    }, (err) => {
      emit({ kind: EventKind.EVENT_KIND_AGENT_NOTICE!, notice: { level: 'error', code: 'policy_invalid', message: `${err.message}; the previous policy stays in force` } });
    }, { current: policy, logger: log })
    : () => {};
  await loadClassifier();
  const ca = await AgentCa.open(path.join(cfg.stateDir, 'tls'), cfg.agentId);
  const credentials = new Map(cfg.credentials.map((c) => [c.target, c]));
  // Review decisions come from the collector, over the same mutual-TLS identity as the shipper.
  const approvals = cfg.collector
    ? new CollectorApprovals({ agentId: cfg.agentId, target: cfg.collector, credentials: tlsClientCredentials(cfg.tlsDir!), log: log.child({ component: 'approvals' }) })
    : undefined;
  const handlers: Record<string, ProtocolHandler> = {
    tcp: tcpHandler,
    postgres: postgresHandler({ policy: () => policy, ca, credentials: (dst) => credentials.get(dst), serverTls: cfg.serverTls, approvals,
      relay: relay && { relay, policyAt: (e) => (e === epoch ? undefined : policies.get(e)), sealer: relay.eventSealer(spool, cfg.agentId) } }),
  };

  const identity = new Attribution(undefined, { labelsDir: path.join(cfg.stateDir, 'jobs') });
  const bpf = new BpfRuntime({ pinDir: cfg.pinDir, onExec: (rec) => onExec(rec) });
  let bpfState: { state: string; error?: string } = { state: 'loading' };
  let stopping = false;
  let reportedDrops = 0n;
  let proxy: ProxyServer | undefined;
  const bpfStatus = (): BpfStatus => ({
    state: bpfState.state, error: bpfState.error ?? '', links: bpf.linkCount, watchedCgroups: watched.length, failOpen: cfg.failOpen,
    execEventsLost: Number(reportedDrops),
    // What is attached to the watched cgroups: after a fail-closed stop the pinned hooks stay.
    programs: bpfState.state === 'attached' || bpfState.state === 'reused' ? [...CGROUP_PROGRAMS, ...EXEC_PROGRAMS]
      : bpfState.state === 'pinned-fail-closed' ? [...CGROUP_PROGRAMS] : [],
  });
  const reporter = shipper && new AgentStatusReporter({
    agentId: cfg.agentId, startedMs, spool, shipper, proxyPort: cfg.proxyPort, get proxy() { return proxy; }, bpf: bpfStatus, stopping: () => stopping,
  });
  const heartbeat = shipper && reporter && new HeartbeatSender({
    channel: shipper.channel, send: (st, timeoutMs) => shipper.heartbeat(st, timeoutMs), collect: () => reporter.collect(),
    intervalMs: cfg.heartbeatIntervalMs, log: log.child({ component: 'heartbeat' }),
  });
  const onExec = (rec: ExecRecord) => {
    try {
      emit(identity.execEvent(rec));
    } catch (err) {
      log.error({ err, pid: rec.pid }, 'cannot record exec event');
    }
  };
  try {
    bpf.load();
  } catch (err) {
    await reportBpfFailure(err as Error);
    throw err;
  }

  proxy = new ProxyServer({
    port: cfg.proxyPort,
    origins: bpf,
    identity: {
      // Exec events the job emitted before this connect() may still sit in the ring buffer: handle
      // them first, so the connection is attributed to the program that made it (a wrapper such as
      // Debian's psql re-execs under the same pid) and the trail keeps cause before effect.
      forConnection: (origin) => {
        bpf.drainExec();
        return identity.forConnection(origin);
      },
    },
    events: spool,
    handlerFor: (origin) => handlers[cfg.protocols[origin.port] ?? 'tcp']!,
    log: log.child({ component: 'proxy' }),
    onActiveChange: priority && ((n) => (priority.proxy = n)),
  });
  await proxy.listen();

  let status: Awaited<ReturnType<typeof bpf.attach>>;
  try {
    bpf.writeConfig({ up: true, proxyPort: cfg.proxyPort, agentCgroupId: cgroupId(ownCgroup), rules: cfg.intercept });
    status = bpf.attach(watched);
    bpf.startExecTracing();
  } catch (err) {
    await reportBpfFailure(err as Error);
    throw err;
  }
  bpfState = { state: status };

  const dropTimer = setInterval(() => {
    const drops = bpf.execDrops();
    if (drops > reportedDrops) {
      const lost = drops - reportedDrops;
      reportedDrops = drops;
      log.error({ lost: String(lost) }, 'exec ring buffer overflowed: process events were lost');
      emit({ kind: EventKind.EVENT_KIND_AGENT_NOTICE!, notice: { level: 'error', code: 'exec_events_lost', message: `${lost} exec/exit events did not fit the ring buffer` } });
    }
  }, 2000);

  const state: AgentState = {
    agentId: cfg.agentId, pid: process.pid, running: true, proxyPort: cfg.proxyPort, jobCgroup,
    pinDir: cfg.pinDir, startedAt: new Date().toISOString(),
  };
  writeAgentState(cfg.stateDir, state);
  const lifecycle = {
    version: VERSION, bpfStatus: status, watchedCgroups: watched.map((w) => w.path),
    interceptRules: cfg.intercept.map((r) => r.text), failOpen: cfg.failOpen,
  };
  if (cfg.policyFile) log.info({ file: cfg.policyFile, rules: policy.rules.length, default: policy.defaultAction }, 'policy loaded');
  await emit({ kind: EventKind.EVENT_KIND_AGENT_START!, agent: lifecycle }).durable;
  shipper?.start();
  heartbeat?.start();
  log.info({ ...lifecycle, proxyPort: cfg.proxyPort, stateDir: cfg.stateDir }, `agent running (${status} BPF hooks)`);

  let stopped: Promise<void> | undefined;
  return {
    proxy,
    spool,
    shipper,
    stop(reason: string) {
      stopped ??= (async () => {
        clearInterval(dropTimer);
        stopWatching();
        // Hooks first: from here on a watched connect either fails at once or goes direct.
        bpf.shutdown(cfg.failOpen);
        await proxy.close();
        priority?.close();
        writeAgentState(cfg.stateDir, { ...state, running: false });
        const stopEvent = emit({
          kind: EventKind.EVENT_KIND_AGENT_STOP!,
          agent: { ...lifecycle, bpfStatus: cfg.failOpen ? 'detached' : 'pinned-fail-closed', reason },
        });
        await durableUnlessStuck(spool, stopEvent.durable);
        // Give the shipper a moment to deliver the last events; what it cannot stays spooled.
        if (shipper) {
          await shipper.drain(spool.stats().lastSeq, 3000);
          // The last status tells the agents panel this agent stopped on purpose, and how it left the hooks.
          stopping = true;
          bpfState = { state: cfg.failOpen ? 'detached' : 'pinned-fail-closed' };
          await heartbeat?.stop(() => reporter!.collect());
          await shipper.stop();
        }
        approvals?.close();
        await spool.close();
        log.info({ reason, failOpen: cfg.failOpen }, cfg.failOpen ? 'agent stopped; hooks detached (fail-open)' : 'agent stopped; hooks stay pinned and refuse connections (fail-closed)');
      })();
      return stopped;
    },
  };

  /** An agent whose hooks cannot be attached exits; the collector's agents panel hears why first. */
  async function reportBpfFailure(err: Error): Promise<void> {
    if (!heartbeat || !reporter || !shipper) return;
    bpfState = { state: 'failed', error: err.message };
    await heartbeat.stop(() => reporter.collect(), 2000);
    await shipper.stop();
  }
}

/**
 * Resolves once `durable` does, or as soon as the spool cannot write (over its limit with nothing
 * acking, or failing): a stop must not wait on a disk that will not take the event. spool.close()
 * then makes its one last write, past the limit, so the stop event and everything before it still
 * reach the disk if it takes them at all.
 */
function durableUnlessStuck(spool: Spool, durable: Promise<void>): Promise<void> {
  if (spool.stats().state !== 'ok') return Promise.resolve();
  return new Promise((resolve) => {
    const onState = (state: SpoolState): void => {
      if (state !== 'ok') done();
    };
    const done = (): void => {
      spool.off('state', onState);
      resolve();
    };
    spool.on('state', onState);
    durable.then(done, done);
  });
}

/** The native data path, when configured and loadable; otherwise sessions stay on JavaScript, said once. */
function startRelay(cfg: AgentConfig, log: Logger, emit: (d: EventDraft) => unknown): NativeRelay | undefined {
  if (cfg.dataPath !== 'native') return undefined;
  const threads = relayThreadCount(cfg);
  const relay = nativeRelay({ replayDelayMs: cfg.relayAuditDelayMs, threads, batchSends: cfg.relayBatchSends });
  if (!relay) {
    const message = `${loadNative().error ?? 'the native data path is unavailable'}; PostgreSQL sessions are relayed in JavaScript`;
    log.warn(message);
    emit({ kind: EventKind.EVENT_KIND_AGENT_NOTICE!, notice: { level: 'warn', code: 'native_unavailable', message } });
    return undefined;
  }
  relay.onListenerError = (err) => log.error({ err }, 'a session failed on a native relay record');
  if (cfg.relayBatchSends && relay.sendStats().batchedThreads < threads) {
    const message = 'io_uring is unavailable to the agent (kernel.io_uring_disabled or a seccomp profile): the relay sends one message at a time';
    log.warn(message);
    emit({ kind: EventKind.EVENT_KIND_AGENT_NOTICE!, notice: { level: 'warn', code: 'relay_unbatched', message } });
  }
  if (cfg.pinAuditThreads) {
    const cpu = relay.pinOthers();
    if (cpu >= 0) log.info({ cpu, relayThreads: threads }, 'audit threads kept on one cpu; the relay threads run anywhere');
  }
  return relay;
}

/** The main thread nicer while every session is on the relay (audit-priority.ts). */
function auditPriority(nice: number, relay: NativeRelay, log: Logger): AuditPriority {
  const priority = new AuditPriority({ nice, onError: (err) => log.warn({ err }, 'the main thread keeps its priority') });
  relay.onSessionsChange = (n) => (priority.relay = n);
  if (priority.usable) log.info({ nice }, 'the main thread runs nicer while every session is on the native relay');
  return priority;
}

function createShipper(cfg: AgentConfig, spool: Spool, emit: (d: EventDraft) => unknown, log: Logger): Shipper {
  const tlsDir = cfg.tlsDir!;
  const id = loadAgentIdentity(tlsDir);
  if (id.agentId !== cfg.agentId) {
    throw new Error(`the certificate in ${tlsDir} is for agent "${id.agentId}", but this agent is "${cfg.agentId}": set agentId to match or enroll again`);
  }
  return new Shipper({
    spool, agentId: cfg.agentId, target: cfg.collector!, credentials: tlsClientCredentials(tlsDir), signingKey: id.signingKey,
    stateDir: cfg.stateDir, checkpointVerifier: loadCheckpointVerifier(tlsDir), log: log.child({ component: 'shipper' }),
    emit: (d) => void emit(d),
  });
}

export { IdentitySource };
