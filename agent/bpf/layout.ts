// Byte layouts of the structs in bpf/runguard.h, read and written with plain Buffer offsets because
// these run on every accepted connection. test/unit/bpf-layout.test.ts checks every offset below
// against the BTF that clang wrote into the committed objects, so a change on one side fails there.
import { ipToBytes16 } from '../net/addr.js';

export const RG_MAX_RULES = 64;
export const RG_ARGV_MAX = 2048;
export const RG_FILENAME_MAX = 256;
export const RG_RULE_INTERCEPT = 1;
export const RG_RULE_BYPASS = 2;
export const RG_STATE_DOWN = 0;
export const RG_STATE_UP = 1;
export const RG_EV_EXEC = 1;
export const RG_EV_EXIT = 2;
export const RG_EXEC_ARGV_TRUNCATED = 1;
export const RG_EXEC_FILENAME_TRUNCATED = 2;

export const RULE = { size: 40, addr: 0, mask: 16, port: 32, action: 34 } as const;
export const CONFIG = { size: 16 + RG_MAX_RULES * RULE.size, state: 0, proxyPort: 4, nrules: 6, agentCgroupId: 8, rules: 16 } as const;
export const ADDR_KEY = { size: 20, addr: 0, port: 16 } as const;
export const ORIGIN = {
  size: 72, addr: 0, port: 16, family: 18, pid: 20, tid: 24, uid: 28, gid: 32, cgroupId: 40, cookie: 48, comm: 56,
} as const;
export const EXEC_EVENT = {
  size: 2376, type: 0, pid: 4, ppid: 8, uid: 12, gid: 16, exitCode: 20, cgroupId: 24, ktimeNs: 32, flags: 40,
  argvLen: 44, argvTotal: 48, comm: 56, filename: 72, argv: 328,
} as const;

export interface InterceptRule {
  action: 'intercept' | 'bypass';
  addr: Buffer;   // 16 bytes, IPv4 mapped
  prefix: number; // 0..128 over the 16-byte form
  port: number;   // 0 = any
  text: string;   // as the operator wrote it
}

export interface ConfigValue {
  up: boolean;
  proxyPort: number;
  agentCgroupId: bigint;
  rules: readonly InterceptRule[];
}

function maskBytes(prefix: number): Buffer {
  const m = Buffer.alloc(16);
  for (let i = 0; i < 16; i++) {
    const bits = Math.max(0, Math.min(8, prefix - i * 8));
    m[i] = bits === 0 ? 0 : (0xff << (8 - bits)) & 0xff;
  }
  return m;
}

export function encodeConfig(cfg: ConfigValue): Buffer {
  if (cfg.rules.length > RG_MAX_RULES) throw new Error(`at most ${RG_MAX_RULES} intercept rules are supported, got ${cfg.rules.length}`);
  const b = Buffer.alloc(CONFIG.size);
  b.writeUInt32LE(cfg.up ? RG_STATE_UP : RG_STATE_DOWN, CONFIG.state);
  b.writeUInt16LE(cfg.proxyPort, CONFIG.proxyPort);
  b.writeUInt16LE(cfg.rules.length, CONFIG.nrules);
  b.writeBigUInt64LE(cfg.agentCgroupId, CONFIG.agentCgroupId);
  cfg.rules.forEach((r, i) => {
    const off = CONFIG.rules + i * RULE.size;
    const mask = maskBytes(r.prefix);
    for (let j = 0; j < 16; j++) b[off + RULE.addr + j] = r.addr[j]! & mask[j]!;
    mask.copy(b, off + RULE.mask);
    b.writeUInt16LE(r.port, off + RULE.port);
    b[off + RULE.action] = r.action === 'intercept' ? RG_RULE_INTERCEPT : RG_RULE_BYPASS;
  });
  return b;
}

/** Fills `key` (ADDR_KEY.size bytes, reused by the caller) for a peer as Node reports it. */
export function fillAddrKey(key: Buffer, address: string, port: number): boolean {
  if (!ipToBytes16(address, key)) return false;
  key.writeUInt16LE(port, ADDR_KEY.port);
  key.writeUInt16LE(0, ADDR_KEY.port + 2);
  return true;
}

export interface Origin {
  addr: Buffer; // 16 bytes
  port: number;
  family: 4 | 6;
  pid: number;
  tid: number;
  uid: number;
  gid: number;
  cgroupId: bigint;
  cookie: bigint;
  comm: string;
}

function cString(b: Buffer, start: number, max: number): string {
  const end = b.indexOf(0, start);
  return b.toString('utf8', start, end < 0 || end > start + max ? start + max : end);
}

export function decodeOrigin(b: Buffer): Origin {
  return {
    addr: Buffer.from(b.subarray(ORIGIN.addr, ORIGIN.addr + 16)),
    port: b.readUInt16LE(ORIGIN.port),
    family: b.readUInt16LE(ORIGIN.family) === 6 ? 6 : 4,
    pid: b.readUInt32LE(ORIGIN.pid),
    tid: b.readUInt32LE(ORIGIN.tid),
    uid: b.readUInt32LE(ORIGIN.uid),
    gid: b.readUInt32LE(ORIGIN.gid),
    cgroupId: b.readBigUInt64LE(ORIGIN.cgroupId),
    cookie: b.readBigUInt64LE(ORIGIN.cookie),
    comm: cString(b, ORIGIN.comm, 16),
  };
}

export interface ExecRecord {
  type: 'exec' | 'exit';
  pid: number;
  ppid: number;
  uid: number;
  gid: number;
  exitCode: number;
  cgroupId: bigint;
  ktimeNs: bigint;
  comm: string;
  filename: string;
  filenameTruncated: boolean;
  argv: string[];
  argvTruncated: boolean;
}

export function decodeExecEvent(b: Buffer): ExecRecord {
  const flags = b.readUInt32LE(EXEC_EVENT.flags);
  const argvLen = Math.min(b.readUInt32LE(EXEC_EVENT.argvLen), RG_ARGV_MAX);
  const argvTotal = b.readUInt32LE(EXEC_EVENT.argvTotal);
  const raw = b.subarray(EXEC_EVENT.argv, EXEC_EVENT.argv + argvLen);
  const argv = raw.length ? raw.toString('utf8').split('\0') : [];
  // argv ends with a NUL when complete; a cut argv ends mid-string and keeps its partial last word.
  if (argv.length && argv[argv.length - 1] === '') argv.pop();
  return {
    type: b.readUInt32LE(EXEC_EVENT.type) === 2 ? 'exit' : 'exec',
    pid: b.readUInt32LE(EXEC_EVENT.pid),
    ppid: b.readUInt32LE(EXEC_EVENT.ppid),
    uid: b.readUInt32LE(EXEC_EVENT.uid),
    gid: b.readUInt32LE(EXEC_EVENT.gid),
    exitCode: b.readInt32LE(EXEC_EVENT.exitCode),
    cgroupId: b.readBigUInt64LE(EXEC_EVENT.cgroupId),
    ktimeNs: b.readBigUInt64LE(EXEC_EVENT.ktimeNs),
    comm: cString(b, EXEC_EVENT.comm, 16),
    filename: cString(b, EXEC_EVENT.filename, RG_FILENAME_MAX),
    filenameTruncated: (flags & RG_EXEC_FILENAME_TRUNCATED) !== 0,
    argv,
    argvTruncated: (flags & RG_EXEC_ARGV_TRUNCATED) !== 0 || argvTotal > argvLen,
  };
}
