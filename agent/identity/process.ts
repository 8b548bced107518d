// Who a process is, read from /proc. Everything here is synchronous: each read is a few
// microseconds against procfs, and the identity must be known before the proxy dials upstream.
//
// A process can exit between any two reads and its pid can be reused right after, so every reader
// treats "gone" as a normal outcome (undefined), and readProcess checks the start time again at the
// end so that a snapshot never mixes two processes.
import { readFileSync, readlinkSync, statSync } from 'node:fs';
import type { ProcessInfo } from '../../proto/index.js';
import { Redactor } from '../redact/redactor.js';
import { cgroupIdOf, parseCgroupFile } from '../cgroup.js';

/** The kernel's answers for a process that no longer exists (or a thread id that was never one). */
export function isGone(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return code === 'ENOENT' || code === 'ESRCH';
}

/** Reads a /proc file; undefined if the process has gone. Other errors are the caller's to see. */
function readProc(pid: number, file: string): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/${file}`, 'utf8');
  } catch (err) {
    if (isGone(err)) return undefined;
    throw err;
  }
}

/** A link that may be unreadable for a live process (kernel threads have no exe): '' then. */
function readProcLink(pid: number, link: string): string {
  try {
    return readlinkSync(`/proc/${pid}/${link}`);
  } catch {
    return '';
  }
}

export interface ProcStat {
  comm: string;
  /** R, S, D, Z (zombie), ... */
  state: string;
  ppid: number;
  /** Field 22: clock ticks after boot at which the process started; with pid it names one process. */
  startTime: string;
}

/** Parses /proc/<pid>/stat; comm may contain spaces and ')' so fields are counted from the last ')'. */
export function parseStat(text: string): ProcStat | undefined {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) return undefined;
  const fields = text.slice(close + 2).split(' ');
  // fields[0] is field 3 (state), so field N is fields[N - 3].
  const ppid = Number(fields[1]);
  const startTime = fields[19];
  if (!Number.isInteger(ppid) || startTime === undefined || !/^\d+$/.test(startTime)) return undefined;
  return { comm: text.slice(open + 1, close), state: fields[0] ?? '', ppid, startTime };
}

/**
 * The stat of a live process. A zombie counts as gone: it has exited, its exe, cwd and environment
 * are no longer readable, and an identity read from it would replace a good one with an empty one.
 */
export function readStat(pid: number): ProcStat | undefined {
  const text = readProc(pid, 'stat');
  const stat = text === undefined ? undefined : parseStat(text);
  return stat === undefined || stat.state === 'Z' || stat.state === 'X' ? undefined : stat;
}

/** The start time (field 22 of /proc/<pid>/stat), the other half of a process's identity. */
export function readStartTime(pid: number): string | undefined {
  return readStat(pid)?.startTime;
}

/** NAME=value pairs from /proc/<pid>/environ: the environment the process was exec'd with. */
export function parseEnviron(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const entry of text.split('\0')) {
    const eq = entry.indexOf('=');
    if (eq > 0) env[entry.slice(0, eq)] = entry.slice(eq + 1);
  }
  return env;
}

/**
 * The process's environment; undefined if it has gone or the environment cannot be read (some
 * hardened init processes refuse even root), which for identity purposes means the same thing.
 */
export function readEnviron(pid: number): Record<string, string> | undefined {
  try {
    const text = readProc(pid, 'environ');
    return text === undefined ? undefined : parseEnviron(text);
  } catch {
    return undefined;
  }
}

interface StatusFields {
  tgid: number;
  ppid: number;
  uid: number;
}

function parseStatus(text: string): StatusFields | undefined {
  const field = (name: string): string | undefined => {
    const at = text.indexOf(`\n${name}:\t`);
    if (at < 0) return undefined;
    const from = at + name.length + 3;
    const to = text.indexOf('\n', from);
    return text.slice(from, to < 0 ? undefined : to);
  };
  const tgid = Number(field('Tgid'));
  const ppid = Number(field('PPid'));
  // The real uid, the first of four: the user who ran it, as bpf_get_current_uid_gid reports it too.
  const uid = Number(field('Uid')?.split('\t')[0]);
  if (!Number.isInteger(tgid) || !Number.isInteger(ppid) || !Number.isInteger(uid)) return undefined;
  return { tgid, ppid, uid };
}

// --- users -------------------------------------------------------------------------------------

let users: { mtimeMs: number; byUid: Map<number, string> } | undefined;

/** Name for a uid from /etc/passwd, parsed once and again only if the file changed. */
export function userName(uid: number): string {
  let mtimeMs = -1;
  try {
    mtimeMs = statSync('/etc/passwd').mtimeMs;
  } catch {
    // No passwd file (a minimal container image): every user is a number.
  }
  if (users === undefined || users.mtimeMs !== mtimeMs) {
    users = { mtimeMs, byUid: parsePasswd(mtimeMs < 0 ? '' : readFileSync('/etc/passwd', 'utf8')) };
  }
  return users.byUid.get(uid) ?? '';
}

export function parsePasswd(text: string): Map<number, string> {
  const byUid = new Map<number, string>();
  for (const line of text.split('\n')) {
    const [name, , uid] = line.split(':');
    if (name && uid !== undefined && /^\d+$/.test(uid) && !byUid.has(Number(uid))) byUid.set(Number(uid), name);
  }
  return byUid;
}

// --- cgroups -----------------------------------------------------------------------------------

/**
 * The container id in a cgroup path: docker-<id>.scope, cri-containerd-<id>.scope, libpod-<id>.scope,
 * crio-<id>.scope, /docker/<id>, /kubepods/.../<id>. The innermost one wins.
 */
export function containerIdFromCgroup(cgroupPath: string): string {
  const re = /(?:^|[/-])([0-9a-f]{64})(?=\.scope(?:\/|$)|\/|$)/g;
  let id = '';
  for (let m = re.exec(cgroupPath); m !== null; m = re.exec(cgroupPath)) id = m[1]!;
  return id;
}

// --- the process -------------------------------------------------------------------------------

export interface ProcessSnapshot {
  info: ProcessInfo;
  startTime: string;
}

/**
 * Everything /proc says about a process, with its start time; undefined if it has gone (or its pid
 * was reused while we were reading). argv is redacted with `redactor` when given.
 */
export function readProcessSnapshot(pid: number, redactor?: Redactor): ProcessSnapshot | undefined {
  const stat = readStat(pid);
  const statusText = readProc(pid, 'status');
  const cmdline = readProc(pid, 'cmdline');
  const cgroupText = readProc(pid, 'cgroup');
  if (stat === undefined || statusText === undefined || cmdline === undefined || cgroupText === undefined) return undefined;
  const status = parseStatus(statusText);
  if (status === undefined) return undefined;
  const exe = readProcLink(pid, 'exe');
  const cwd = readProcLink(pid, 'cwd');
  const comm = readProc(pid, 'comm')?.replace(/\n$/, '') ?? stat.comm;

  // The pid may have been reused between the first read and the last: then nothing above is
  // known to belong to one process.
  if (readStartTime(pid) !== stat.startTime) return undefined;

  const argv = cmdline === '' ? [] : cmdline.replace(/\0$/, '').split('\0');
  const cgroup = parseCgroupFile(cgroupText);
  const info: ProcessInfo = {
    pid: status.tgid,
    ppid: status.ppid,
    uid: status.uid,
    user: userName(status.uid),
    exe,
    argv: redactor ? redactor.redactArgv(argv) : argv,
    cwd,
    cgroup,
    cgroupId: cgroupIdOf(cgroup),
    containerId: containerIdFromCgroup(cgroup),
    comm,
  };
  // /proc/<tid> exists for every thread; the event's pid is the thread group, the tid the thread.
  if (status.tgid !== pid) info.tid = pid;
  return { info, startTime: stat.startTime };
}

/**
 * The process as ProcessInfo, undefined if it has gone. Without a redactor argv is still redacted
 * with the detectors alone: raw argv never leaves this module by default.
 */
export function readProcess(pid: number, redactor: Redactor = detectorsOnly()): ProcessInfo | undefined {
  return readProcessSnapshot(pid, redactor)?.info;
}

let sharedDetectorsOnly: Redactor | undefined;

function detectorsOnly(): Redactor {
  return (sharedDetectorsOnly ??= new Redactor());
}
