// Agent configuration: a YAML file, overridden by command-line flags. A bad file is reported with
// the line it is on; nothing is guessed.
import { readFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Node as YamlNode } from 'yaml';
import { ipToBytes16 } from './net/addr.js';
import type { InterceptRule } from './bpf/layout.js';
import { DEFAULT_PIN_DIR, DEFAULT_STATE_DIR } from './paths.js';
import { DEFAULT_COMMIT_DELAY_MS, MAX_COMMIT_DELAY_MS } from './events/commit-delay.js';

export interface AgentConfig {
  agentId: string;
  stateDir: string;
  pinDir: string;
  proxyPort: number;
  /** Relative to the cgroup v2 root: the parent under which `runguard run` creates job cgroups. */
  jobCgroupParent: string;
  /** Extra cgroups to watch (a runner service's cgroup), relative to the root or absolute. */
  watchCgroups: string[];
  intercept: InterceptRule[];
  failOpen: boolean;
  spoolMaxBytes: number;
  /**
   * How long the spool lets a batch of events nobody waits for (statements, closes) gather more
   * before its write+fdatasync; awaited events (a connection open) never wait. 0: no delay.
   */
  spoolCommitDelayMs: number;
  /** host:port of the collector's gRPC ingest; unset: events stay in the local spool. */
  collector?: string;
  /** The agent's enrolment directory from `runguard enroll` (certificate, keys, collector CA). */
  tlsDir?: string;
  /** Policy file (YAML), reloaded on change; unset: allow everything, audit everything. */
  policyFile?: string;
  /** Destination port -> protocol handler; ports not listed get the generic TCP handler. */
  protocols: Record<number, 'postgres' | 'tcp'>;
  /** Targets whose credentials the agent holds: the job never sees them. */
  credentials: CredentialConfig[];
  /** TLS towards PostgreSQL servers: prefer (use it when offered), require, or disable. */
  serverTls: 'prefer' | 'require' | 'disable';
  /** How often the agent reports its status to the collector (and at once on connecting). */
  heartbeatIntervalMs: number;
  /**
   * Who relays PostgreSQL sessions once authenticated: "native" (agent/native: a native thread,
   * falling back to JavaScript with a notice when the addon cannot load) or "javascript".
   */
  dataPath: 'native' | 'javascript';
  /**
   * How long the native relay may keep what it forwarded before handing it to the audit: the
   * statements it summarised or replays. Nothing the job waits for waits on this (a decision the
   * relay cannot repeat goes to the handler at once); it is how late, at most, such a statement
   * reaches the spool, and so what an agent crash can lose on top of the spool's commit delay.
   */
  relayAuditDelayMs: number;
  /**
   * With the native data path: how many relay threads share the sessions (each session stays on
   * one). 0, the default: one per 4 cpus the agent may run on, 1 to 4 (CPUS_PER_AUTO_RELAY_THREAD).
   * Several let the others go on forwarding while one waits for a cpu; see g_relays in
   * agent/native/src/relay.cc.
   */
  relayThreads: number;
  /**
   * With the native data path on a host with two cpus or more: keep the audit side of the agent
   * (every thread but the relay's) on one cpu, the highest it may use. See relay_pin_others_js in
   * agent/native/src/relay.cc for why; false leaves every thread to the scheduler.
   */
  pinAuditThreads: boolean;
  /**
   * With the native data path: each relay loop turn sends the requests it read, for every session,
   * to their servers in one io_uring call (agent/native/src/send_batch.h), so that waking one
   * session's backend does not hand it the cpu before the others' requests are sent; answers to
   * clients go out as they are read. Where the kernel refuses io_uring (kernel.io_uring_disabled, a
   * seccomp profile) the relay sends one at a time and the agent says so; false always does.
   */
  relayBatchSends: boolean;
  /**
   * With the native data path: how much nicer (1-19) than the agent's own the JavaScript main
   * thread runs while every session is on the relay, so that the audit side does not take cpu time
   * from it on a busy host; 0 never changes it. See agent/native/audit-priority.ts.
   */
  auditNice: number;
}

export interface CredentialConfig {
  /** "ADDRESS:PORT" of the original destination, e.g. "10.1.2.3:5432" or "[fd00::5]:5432". */
  target: string;
  /** The user to log in as; unset: the user the job asked for. */
  user?: string;
  /** Where the password is on the agent host: a file (first line) or an environment variable. */
  passwordFile?: string;
  passwordEnv?: string;
}

/**
 * The native relay hands the audit its forwarded statements in batches this many ms apart. Larger
 * batches cost the agent less per statement: fewer wake-ups of the JavaScript thread and fewer
 * spool commits. Measured on the 2-cpu bench host (pgbench select-only, main thread per
 * transaction): 2 ms 12-17 us, 10 ms 10-14, 25 ms 9-12, 50 ms 8-10. 25 keeps the window small.
 */
export const DEFAULT_RELAY_AUDIT_DELAY_MS = 25;
export const MAX_RELAY_AUDIT_DELAY_MS = 1000;
/** relayThreads: the most a config may ask for (as the addon's kMaxRelayThreads), and the most 0 means. */
export const MAX_RELAY_THREADS = 64;
export const AUTO_RELAY_THREADS_MAX = 4;
/**
 * relayThreads 0: one relay thread per this many cpus. A relay thread sleeps when its sessions have
 * nothing to read, and each sleep and wake-up costs it more than the forwarding of a statement; split
 * over fewer threads, the same sessions give each thread more to do per epoll turn. On the 2-cpu
 * bench host (perf, epoll_waits per message sent) one thread slept 0.27 times in TPC-B and 0.37 in
 * select-only prepared (pgbouncer 0.37 and 0.39), two threads 0.48 and 0.52. A further thread pays
 * off only where one cannot keep up, on a host with cpus to spare for it.
 */
export const CPUS_PER_AUTO_RELAY_THREAD = 4;

/** The relay threads a config asks for: its number, or for 0 one per 4 cpus this process may use (1 to 4). */
export function relayThreadCount(cfg: Pick<AgentConfig, 'relayThreads'>, cpus = os.availableParallelism()): number {
  if (cfg.relayThreads > 0) return cfg.relayThreads;
  return Math.max(1, Math.min(AUTO_RELAY_THREADS_MAX, Math.floor(cpus / CPUS_PER_AUTO_RELAY_THREAD)));
}

/** Everything outside loopback; the proxy's own address is always exempt in the BPF program. */
export const DEFAULT_INTERCEPT = ['!127.0.0.0/8', '![::1]/128', '0.0.0.0/0', '[::]/0'];

export function defaultConfig(): AgentConfig {
  return {
    agentId: os.hostname(),
    stateDir: DEFAULT_STATE_DIR,
    pinDir: DEFAULT_PIN_DIR,
    proxyPort: 15001,
    jobCgroupParent: 'runguard.jobs',
    watchCgroups: [],
    intercept: DEFAULT_INTERCEPT.map((r) => parseInterceptRule(r)),
    failOpen: false,
    spoolMaxBytes: 1 << 30,
    spoolCommitDelayMs: DEFAULT_COMMIT_DELAY_MS,
    protocols: { 5432: 'postgres' },
    credentials: [],
    serverTls: 'prefer',
    heartbeatIntervalMs: 10_000,
    dataPath: 'native',
    relayAuditDelayMs: DEFAULT_RELAY_AUDIT_DELAY_MS,
    relayThreads: 0,
    pinAuditThreads: true,
    relayBatchSends: true,
    auditNice: 10,
  };
}

export class ConfigError extends Error {
  constructor(readonly where: string, message: string) {
    super(`${where}: ${message}`);
    this.name = 'ConfigError';
  }
}

/**
 * `CIDR[:PORT]`, `[IPv6-CIDR][:PORT]` or a bare address; a leading `!` makes it a bypass rule.
 * IPv4 rules are stored IPv4-mapped, so their prefix is offset by 96 bits.
 */
export function parseInterceptRule(text: string): InterceptRule {
  const fail = (why: string): never => {
    throw new Error(`intercept rule "${text}": ${why} (expected CIDR[:PORT], e.g. 10.0.0.0/8:5432 or [fd00::]/8:443, "!" to bypass)`);
  };
  let s = text.trim();
  const action = s.startsWith('!') ? 'bypass' : 'intercept';
  if (action === 'bypass') s = s.slice(1);
  let addrPart: string;
  let portPart: string | undefined;
  if (s.startsWith('[')) {
    const close = s.indexOf(']');
    if (close < 0) fail('missing ]');
    addrPart = s.slice(1, close);
    const rest = s.slice(close + 1);
    const m = /^(\/\d+)?(?::(\d+))?$/.exec(rest);
    if (!m) fail(`unexpected "${rest}"`);
    addrPart += m![1] ?? '';
    portPart = m![2];
  } else if (s.includes('.')) {
    const m = /^([^:]+)(?::(\d+))?$/.exec(s);
    if (!m) fail('bad IPv4 rule');
    addrPart = m![1]!;
    portPart = m![2];
  } else {
    addrPart = s; // bare IPv6 without a port
  }
  const [ip, prefixText] = addrPart.split('/') as [string, string | undefined];
  const family = net.isIP(ip);
  if (!family) fail(`"${ip}" is not an IP address`);
  const maxPrefix = family === 4 ? 32 : 128;
  const prefix = prefixText === undefined ? maxPrefix : Number(prefixText);
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > maxPrefix) fail(`prefix must be 0..${maxPrefix}`);
  const port = portPart === undefined ? 0 : Number(portPart);
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail('port must be 1..65535');
  const addr = Buffer.alloc(16);
  ipToBytes16(ip, addr);
  return { action, addr, prefix: family === 4 ? 96 + prefix : prefix, port, text: text.trim() };
}

const KEYS: Record<string, 'string' | 'number' | 'boolean' | 'strings'> = {
  agentId: 'string', stateDir: 'string', pinDir: 'string', proxyPort: 'number', jobCgroupParent: 'string',
  watchCgroups: 'strings', intercept: 'strings', failOpen: 'boolean', spoolMaxBytes: 'number', spoolCommitDelayMs: 'number',
  collector: 'string', tlsDir: 'string', policyFile: 'string', serverTls: 'string', heartbeatIntervalMs: 'number',
  dataPath: 'string', relayAuditDelayMs: 'number', relayThreads: 'number', pinAuditThreads: 'boolean', relayBatchSends: 'boolean', auditNice: 'number',
};

/** Reads a YAML config file; every error names the file and line. */
export function loadConfigFile(file: string, base = defaultConfig()): AgentConfig {
  const text = readFileSync(file, 'utf8');
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false });
  const at = (node: YamlNode | null | undefined | { range?: [number, number, number] }) => {
    const offset = (node as { range?: [number, number, number] } | undefined)?.range?.[0] ?? 0;
    return `${file}:${lines.linePos(offset).line}`;
  };
  if (doc.errors.length) {
    const e = doc.errors[0]!;
    throw new ConfigError(`${file}:${lines.linePos(e.pos[0]).line}`, e.message.split('\n')[0]!);
  }
  const cfg = { ...base };
  if (doc.contents === null) return cfg;
  if (!isMap(doc.contents)) throw new ConfigError(at(doc.contents), 'the config must be a mapping of settings');
  for (const pair of doc.contents.items) {
    const key = isScalar(pair.key) ? String(pair.key.value) : '';
    const where = at(pair.key as YamlNode);
    if (key === 'protocols' || key === 'credentials') {
      const value = (pair.value as YamlNode | null)?.toJSON?.() ?? null;
      if (key === 'protocols') cfg.protocols = parseProtocols(value, where);
      else cfg.credentials = parseCredentials(value, where);
      continue;
    }
    const kind = KEYS[key];
    if (!kind) throw new ConfigError(where, `unknown setting "${key}" (known: ${Object.keys(KEYS).join(', ')})`);
    const v = pair.value as YamlNode | null;
    if (kind === 'strings') {
      if (!isSeq(v) || !v.items.every((i) => isScalar(i) && typeof i.value === 'string')) {
        throw new ConfigError(where, `"${key}" must be a list of strings`);
      }
      const items = v.items as { value: string; range?: [number, number, number] }[];
      if (key === 'intercept') {
        cfg.intercept = items.map((i) => {
          try {
            return parseInterceptRule(i.value);
          } catch (err) {
            throw new ConfigError(at(i), (err as Error).message);
          }
        });
      } else {
        cfg.watchCgroups = items.map((i) => i.value);
      }
      continue;
    }
    if (!isScalar(v) || typeof v.value !== kind) throw new ConfigError(where, `"${key}" must be a ${kind}`);
    (cfg as Record<string, unknown>)[key] = v.value;
  }
  validate(cfg, file);
  return cfg;
}

function parseProtocols(value: unknown, where: string): Record<number, 'postgres' | 'tcp'> {
  if (!value || typeof value !== 'object' || Array.isArray(value)) throw new ConfigError(where, 'protocols must map ports to handlers, e.g. { 5432: postgres, 6432: postgres }');
  const out: Record<number, 'postgres' | 'tcp'> = {};
  for (const [port, handler] of Object.entries(value)) {
    const n = Number(port);
    if (!Number.isInteger(n) || n < 1 || n > 65535) throw new ConfigError(where, `protocols: "${port}" is not a port`);
    if (handler !== 'postgres' && handler !== 'tcp') throw new ConfigError(where, `protocols: port ${port}: unknown handler "${String(handler)}" (known: postgres, tcp)`);
    out[n] = handler;
  }
  return out;
}

function parseCredentials(value: unknown, where: string): CredentialConfig[] {
  if (!Array.isArray(value)) throw new ConfigError(where, 'credentials must be a list of { target, user, passwordFile | passwordEnv }');
  return value.map((c, i) => {
    const e = (why: string) => new ConfigError(where, `credentials[${i}]: ${why}`);
    if (!c || typeof c !== 'object') throw e('must be a mapping');
    const known = new Set(['target', 'user', 'passwordFile', 'passwordEnv']);
    for (const k of Object.keys(c)) if (!known.has(k)) throw e(`unknown key "${k}" (known: ${[...known].join(', ')})`);
    const { target, user, passwordFile, passwordEnv } = c as Record<string, unknown>;
    if (typeof target !== 'string' || !/^(\[[0-9a-fA-F:.]+\]|[0-9.]+):\d+$/.test(target)) throw e('target must be ADDRESS:PORT, e.g. 10.1.2.3:5432');
    if ((passwordFile === undefined) === (passwordEnv === undefined)) throw e('give exactly one of passwordFile, passwordEnv');
    for (const [k, v] of Object.entries({ user, passwordFile, passwordEnv })) if (v !== undefined && typeof v !== 'string') throw e(`${k} must be a string`);
    return { target, user: user as string | undefined, passwordFile: passwordFile as string | undefined, passwordEnv: passwordEnv as string | undefined };
  });
}

export function validate(cfg: AgentConfig, where = 'config'): void {
  if (!['native', 'javascript'].includes(cfg.dataPath)) throw new ConfigError(where, `dataPath must be native or javascript, got "${cfg.dataPath}"`);
  if (!['prefer', 'require', 'disable'].includes(cfg.serverTls)) throw new ConfigError(where, `serverTls must be prefer, require or disable, got "${cfg.serverTls}"`);
  if (!Number.isInteger(cfg.proxyPort) || cfg.proxyPort < 1 || cfg.proxyPort > 65535) {
    throw new ConfigError(where, `proxyPort must be 1..65535, got ${cfg.proxyPort}`);
  }
  if (!/^[A-Za-z0-9._-]{1,128}$/.test(cfg.agentId)) {
    throw new ConfigError(where, `agentId "${cfg.agentId}" may use letters, digits, . _ - only`);
  }
  if (!Number.isInteger(cfg.heartbeatIntervalMs) || cfg.heartbeatIntervalMs < 100 || cfg.heartbeatIntervalMs > 3_600_000) {
    throw new ConfigError(where, `heartbeatIntervalMs must be an integer from 100 to 3600000 (1 h), got ${cfg.heartbeatIntervalMs}`);
  }
  if (!(cfg.spoolCommitDelayMs >= 0 && cfg.spoolCommitDelayMs <= MAX_COMMIT_DELAY_MS)) {
    throw new ConfigError(where, `spoolCommitDelayMs must be from 0 to ${MAX_COMMIT_DELAY_MS} (ms), got ${cfg.spoolCommitDelayMs}`);
  }
  if (!(cfg.relayAuditDelayMs >= 0 && cfg.relayAuditDelayMs <= MAX_RELAY_AUDIT_DELAY_MS)) {
    throw new ConfigError(where, `relayAuditDelayMs must be from 0 to ${MAX_RELAY_AUDIT_DELAY_MS} (ms), got ${cfg.relayAuditDelayMs}`);
  }
  if (!Number.isInteger(cfg.relayThreads) || cfg.relayThreads < 0 || cfg.relayThreads > MAX_RELAY_THREADS) {
    throw new ConfigError(where, `relayThreads must be an integer from 0 (one per ${CPUS_PER_AUTO_RELAY_THREAD} cpus, 1 to ${AUTO_RELAY_THREADS_MAX}) to ${MAX_RELAY_THREADS}, got ${cfg.relayThreads}`);
  }
  if (!Number.isInteger(cfg.auditNice) || cfg.auditNice < 0 || cfg.auditNice > 19) {
    throw new ConfigError(where, `auditNice must be an integer from 0 (off) to 19, got ${cfg.auditNice}`);
  }
  if (cfg.intercept.length > 64) throw new ConfigError(where, 'at most 64 intercept rules');
  if (cfg.collector && !cfg.tlsDir) throw new ConfigError(where, 'a collector needs tlsDir (the directory `runguard enroll --out` wrote)');
  if (cfg.collector && !/^\[?[^\]]+\]?:\d+$/.test(cfg.collector)) throw new ConfigError(where, `collector "${cfg.collector}" must be HOST:PORT`);
}
