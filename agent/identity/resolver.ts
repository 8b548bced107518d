// pid -> {process, CI job, secrets}: what the proxy needs to know about the process behind a
// connection before it records anything.
//
// The job identity comes from the process's own environment or, when that has none (env -i, a
// sandbox, a daemon that scrubs its environment), from the nearest ancestor that has one. Results
// are cached per (pid, start time), never per pid alone: pids are reused, and a reused pid must not
// inherit the identity of the job that had it before.
import { IdentitySource, type JobInfo, type ProcessInfo } from '../../proto/index.js';
import { Redactor, secretsFromEnv, type EnvSecret } from '../redact/redactor.js';
import { jobFromEnv } from './ci.js';
import { containerIdFromCgroup, readEnviron, readProcessSnapshot, readStat, userName, type ProcStat } from './process.js';

/** What an exec event (or a bpf redirect record) told us about a process that may be gone by now. */
export interface ProcessFallback {
  /** Without it there is no ancestor to ask, and the job is IDENTITY_SOURCE_NONE. */
  ppid?: number;
  tid?: number;
  uid?: number;
  cgroup?: string;
  /** bpf_get_current_cgroup_id(); a bigint as the bpf records carry it is fine. */
  cgroupId?: number | string | bigint;
  /** The exec filename; becomes ProcessInfo.exe. */
  filename?: string;
  argv?: string[];
  argvTruncated?: boolean;
  comm?: string;
  /** In /proc/<pid>/stat units (field 22), if known: lets the ancestor walk reject a reused ppid. */
  startTime?: string;
}

export interface ResolvedIdentity {
  readonly process: ProcessInfo;
  readonly job: JobInfo;
  /** Secret values from the process's environment and the job's: the proxy redacts with these. */
  readonly secrets: readonly EnvSecret[];
  /** A Redactor built from `secrets`, shared by every result with the same secrets. */
  readonly redactor: Redactor;
  /** /proc start time of the process; '' when the process part came from a fallback. */
  readonly startTime: string;
}

export interface ResolverOptions {
  /** How many ancestors to look at for a job identity. */
  maxDepth?: number;
  /** Cached identities (one per process); the oldest is evicted first. */
  cacheSize?: number;
}

interface CacheEntry {
  readonly pid: number;
  readonly key: string;
  /** comm at resolve time: an exec keeps pid and start time, and usually changes comm. */
  readonly comm: string;
  readonly identity: ResolvedIdentity;
}

interface FoundJob {
  job: JobInfo;
  secrets: readonly EnvSecret[];
}

const NO_JOB: Readonly<JobInfo> = Object.freeze({ source: IdentitySource.IDENTITY_SOURCE_NONE });

export class IdentityResolver {
  readonly #maxDepth: number;
  readonly #cacheSize: number;
  /** `${pid}:${startTime}` -> entry, in least-recently-used order. */
  readonly #cache = new Map<string, CacheEntry>();
  /** pid -> key of its newest cache entry: what we knew of a process once it has gone. */
  readonly #latest = new Map<number, string>();
  readonly #exited = new Map<number, ProcessFallback>();
  readonly #redactors = new Map<string, Redactor>();

  constructor(options: ResolverOptions = {}) {
    this.#maxDepth = options.maxDepth ?? 32;
    this.#cacheSize = options.cacheSize ?? 4096;
  }

  /**
   * The identity of `pid`. If the process has gone, the identity seen while it lived, or one built
   * from `fallback` (or from what rememberExited stored) with the job of its ancestors. undefined
   * only if the process has gone and nothing is known about it.
   */
  resolve(pid: number, fallback?: ProcessFallback): ResolvedIdentity | undefined {
    if (!Number.isInteger(pid) || pid <= 0) return undefined;
    const stat = readStat(pid);
    if (stat !== undefined) {
      const cached = this.#cached(pid, stat);
      if (cached !== undefined) return cached;
      const live = this.#resolveLive(pid, stat);
      if (live !== undefined) return live;
    }
    return this.#resolveGone(pid, this.#fallbackFor(pid, fallback));
  }

  /** Keeps what an exec event said about a process, for resolving it after it has exited. */
  rememberExited(pid: number, info: ProcessFallback): void {
    setBounded(this.#exited, pid, info, this.#cacheSize);
  }

  /** Call on exec: the pid and start time stay, the program (and so argv, exe, env) changes. */
  invalidate(pid: number): void {
    const key = this.#latest.get(pid);
    if (key !== undefined) this.#cache.delete(key);
    this.#latest.delete(pid);
  }

  get size(): number {
    return this.#cache.size;
  }

  /**
   * The caller's fallback completed with what rememberExited kept: a redirect record knows the
   * cgroup but not the parent, the exec event knew the parent. Kept apart when they disagree on
   * cgroup or parent, since then they describe two processes that shared the pid.
   */
  #fallbackFor(pid: number, given: ProcessFallback | undefined): ProcessFallback | undefined {
    const remembered = this.#exited.get(pid);
    if (given === undefined || remembered === undefined) return given ?? remembered;
    const differ = (a: unknown, b: unknown) => a !== undefined && b !== undefined && String(a) !== String(b);
    if (differ(given.cgroupId, remembered.cgroupId) || differ(given.ppid, remembered.ppid)) return given;
    const merged: ProcessFallback = { ...remembered };
    for (const [k, v] of Object.entries(given)) if (v !== undefined) (merged as Record<string, unknown>)[k] = v;
    return merged;
  }

  #cached(pid: number, stat: ProcStat): ResolvedIdentity | undefined {
    const key = `${pid}:${stat.startTime}`;
    const entry = this.#cache.get(key);
    if (entry === undefined || entry.comm !== stat.comm) return undefined;
    this.#cache.delete(key); // re-insert: most recently used goes last
    this.#cache.set(key, entry);
    return entry.identity;
  }

  #resolveLive(pid: number, stat: ProcStat): ResolvedIdentity | undefined {
    const env = readEnviron(pid) ?? {};
    const own = jobFromEnv(env);
    const found: FoundJob | undefined = own !== undefined ? { job: { ...own, sourcePid: pid }, secrets: [] } : this.#findInAncestors(stat.ppid, stat.startTime);
    const secrets = mergeSecrets(secretsFromEnv(env), found?.secrets ?? []);
    const redactor = this.#redactorFor(secrets);
    const snapshot = readProcessSnapshot(pid, redactor);
    if (snapshot === undefined || snapshot.startTime !== stat.startTime) return undefined;

    const identity: ResolvedIdentity = { process: snapshot.info, job: found?.job ?? NO_JOB, secrets, redactor, startTime: stat.startTime };
    this.#store({ pid, key: `${pid}:${stat.startTime}`, comm: stat.comm, identity });
    return identity;
  }

  #resolveGone(pid: number, fallback: ProcessFallback | undefined): ResolvedIdentity | undefined {
    const known = this.#latestIdentity(pid);
    // A fallback with another parent describes a newer process that reused the pid.
    if (known !== undefined && (fallback?.ppid === undefined || fallback.ppid === known.process.ppid)) return known;
    if (fallback === undefined) return undefined;

    const found = fallback.ppid === undefined ? undefined : this.#findInAncestors(fallback.ppid, fallback.startTime);
    const secrets = found?.secrets ?? [];
    const redactor = this.#redactorFor(secrets);
    const cgroup = fallback.cgroup ?? '';
    const process: ProcessInfo = {
      pid,
      ppid: fallback.ppid ?? 0,
      uid: fallback.uid ?? 0,
      user: fallback.uid === undefined ? '' : userName(fallback.uid),
      exe: fallback.filename ?? '',
      argv: redactor.redactArgv(fallback.argv ?? []),
      argvTruncated: fallback.argvTruncated ?? false,
      cwd: '',
      cgroup,
      cgroupId: fallback.cgroupId === undefined ? '' : String(fallback.cgroupId),
      containerId: containerIdFromCgroup(cgroup),
      comm: fallback.comm ?? '',
    };
    if (fallback.tid !== undefined && fallback.tid !== pid) process.tid = fallback.tid;
    return { process, job: found?.job ?? NO_JOB, secrets, redactor, startTime: '' };
  }

  /**
   * The first ancestor, starting at `ppid`, whose environment names a CI job. `childStart` is the
   * start time of the process below: a real parent cannot have started after its child, so a pid
   * that did was reused and the walk stops rather than borrow a stranger's identity.
   */
  #findInAncestors(ppid: number, childStart: string | undefined): FoundJob | undefined {
    let pid = ppid;
    let below = childStart;
    // pid 1 is init (or a container's), never a job; its environment is the host's or the image's.
    for (let depth = 0; depth < this.#maxDepth && pid > 1; depth++) {
      const stat = readStat(pid);
      if (stat === undefined) {
        // Gone: continue from what we saw of it while it lived, or what its exec event said.
        const known = this.#latestIdentity(pid);
        if (known !== undefined) return known.job.source === NO_JOB.source ? undefined : { job: known.job, secrets: known.secrets };
        const next = this.#exited.get(pid)?.ppid;
        if (next === undefined) return undefined;
        pid = next;
        below = undefined;
        continue;
      }
      if (below !== undefined && BigInt(stat.startTime) > BigInt(below)) return undefined;

      // Processes of one job share ancestors: an ancestor resolved before answers for its line.
      const cached = this.#cached(pid, stat);
      if (cached !== undefined) return cached.job.source === NO_JOB.source ? undefined : { job: cached.job, secrets: cached.secrets };

      const env = readEnviron(pid);
      const job = env === undefined ? undefined : jobFromEnv(env);
      if (job !== undefined) return { job: { ...job, sourcePid: pid }, secrets: secretsFromEnv(env!) };
      below = stat.startTime;
      pid = stat.ppid;
    }
    return undefined;
  }

  #latestIdentity(pid: number): ResolvedIdentity | undefined {
    const key = this.#latest.get(pid);
    return key === undefined ? undefined : this.#cache.get(key)?.identity;
  }

  #store(entry: CacheEntry): void {
    const previous = this.#latest.get(entry.pid);
    if (previous !== undefined && previous !== entry.key) this.#cache.delete(previous);
    this.#cache.delete(entry.key);
    this.#cache.set(entry.key, entry);
    this.#latest.set(entry.pid, entry.key);
    while (this.#cache.size > this.#cacheSize) {
      const oldest = this.#cache.values().next().value as CacheEntry;
      this.#cache.delete(oldest.key);
      if (this.#latest.get(oldest.pid) === oldest.key) this.#latest.delete(oldest.pid);
    }
  }

  /** Building a Redactor compiles its patterns; the processes of one job share their secrets. */
  #redactorFor(secrets: readonly EnvSecret[]): Redactor {
    const key = secrets.map((s) => `${s.name}\0${s.value}`).join('\0');
    let redactor = this.#redactors.get(key);
    if (redactor === undefined) {
      redactor = new Redactor(secrets);
      setBounded(this.#redactors, key, redactor, 256);
    }
    return redactor;
  }
}

/** Own environment first (its names label the redactions), then the job's; each value once. */
function mergeSecrets(own: readonly EnvSecret[], job: readonly EnvSecret[]): readonly EnvSecret[] {
  if (job.length === 0) return own;
  const seen = new Set(own.map((s) => s.value));
  return [...own, ...job.filter((s) => !seen.has(s.value))];
}

function setBounded<K, V>(map: Map<K, V>, key: K, value: V, max: number): void {
  map.delete(key);
  map.set(key, value);
  while (map.size > max) map.delete(map.keys().next().value as K);
}
