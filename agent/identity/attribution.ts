// Ties kernel records to people and jobs: a redirect record (connection) or an exec/exit record
// becomes the process and CI-job part of an audit event.
//
// The job comes from a runner hook's label when the process's cgroup (or one above it) has one
// (STATE_DIR/jobs/<cgroup id>.json, see labels.ts; source RUNNER_HOOK), else from the environment
// of the process or its ancestors (source ENVIRONMENT). The label wins: the host's runner set it,
// while anything in the job can set its own environment.
import { readFileSync } from 'node:fs';
import { EventKind, IdentitySource, type EventDraft, type JobInfo, type ProcessInfo } from '../../proto/index.js';
import type { ExecRecord, Origin } from '../bpf/layout.js';
import type { IdentityProvider } from '../proxy/server.js';
import type { Redactor } from '../redact/redactor.js';
import { cgroupIdOf, parseCgroupFile } from '../cgroup.js';
import { LabelStore, labelledJob, type LabelStoreOptions } from './labels.js';
import { containerIdFromCgroup } from './process.js';
import { IdentityResolver } from './resolver.js';

const NO_JOB: JobInfo = { source: IdentitySource.IDENTITY_SOURCE_NONE };

/** Process events are grouped by the job scope they ran in: the watched cgroup of the job. */
export function jobScopeId(cgroupId: bigint | string | number): string {
  return `cgroup-${cgroupId}`;
}

/** Job scopes remembered for attributing processes that left nothing to resolve. */
const MAX_SCOPES = 4096;

export interface AttributionOptions {
  /** STATE_DIR/jobs: where `runguard hook job-started` writes job labels. Without it, no labels. */
  labelsDir?: string;
  labelStore?: LabelStoreOptions;
}

export class Attribution implements IdentityProvider {
  /** cgroup id -> the job last resolved for a process in it. */
  private readonly scopes = new Map<string, JobInfo>();

  private readonly labels: LabelStore | undefined;

  constructor(readonly resolver = new IdentityResolver(), options: AttributionOptions = {}) {
    this.labels = options.labelsDir === undefined ? undefined : new LabelStore(options.labelsDir, options.labelStore);
  }

  /**
   * The job for a process in cgroup `cgroupId` whose environment (or ancestors') said `fromEnv`:
   * the runner hook's label of that cgroup or the nearest labelled one above it, if any.
   */
  private labelled(pid: number, cgroupId: bigint | string, known: ProcessInfo | undefined, fromEnv: JobInfo | undefined): JobInfo | undefined {
    if (this.labels === undefined) return fromEnv;
    const id = String(cgroupId);
    const label = this.labels.lookup(id, () => cgroupPathOf(pid, id, known));
    return label?.job ? labelledJob(label.job, fromEnv) : fromEnv;
  }

  /**
   * A process that exited (with its parents) before we could read /proc still ran in its job's
   * cgroup: every process there belongs to the same job, so the job seen there stands for it.
   */
  private jobFor(cgroupId: bigint | string, job: JobInfo | undefined): JobInfo {
    const key = String(cgroupId);
    if (job && job.source !== IdentitySource.IDENTITY_SOURCE_NONE) {
      if (!this.scopes.has(key) && this.scopes.size >= MAX_SCOPES) this.scopes.delete(this.scopes.keys().next().value!);
      this.scopes.set(key, job);
      return job;
    }
    return this.scopes.get(key) ?? job ?? NO_JOB;
  }

  forConnection(origin: Origin): { process: ProcessInfo; job: JobInfo; redactor?: Redactor } {
    const id = this.resolver.resolve(origin.pid, {
      uid: origin.uid, cgroupId: origin.cgroupId, comm: origin.comm, tid: origin.tid,
    });
    if (!id) {
      // Gone before we looked and never seen exec: the kernel's record is all there is.
      const job = this.labelled(origin.pid, origin.cgroupId, undefined, undefined);
      return { process: { pid: origin.pid, tid: origin.tid, uid: origin.uid, comm: origin.comm, cgroupId: String(origin.cgroupId) }, job: this.jobFor(origin.cgroupId, job) };
    }
    const current = inCgroup(id.process, origin.pid, origin.cgroupId);
    const process = origin.tid !== origin.pid ? { ...current, tid: origin.tid } : current;
    const job = this.labelled(origin.pid, origin.cgroupId, current, id.job);
    return { process, job: this.jobFor(origin.cgroupId, job), redactor: id.redactor };
  }

  /** The PROCESS_EXEC or PROCESS_EXIT event for a record from the exec tracer. */
  execEvent(rec: ExecRecord): EventDraft {
    const fallback = {
      ppid: rec.ppid, uid: rec.uid, cgroupId: rec.cgroupId, filename: rec.filename, argv: rec.argv,
      argvTruncated: rec.argvTruncated, comm: rec.comm,
    };
    if (rec.type === 'exec') {
      // Same pid and start time, new program: what was cached for the old image is stale.
      this.resolver.invalidate(rec.pid);
      this.resolver.rememberExited(rec.pid, fallback);
    }
    const id = this.resolver.resolve(rec.pid, fallback);
    const base: ProcessInfo = id ? inCgroup(id.process, rec.pid, rec.cgroupId) : { pid: rec.pid, ppid: rec.ppid, uid: rec.uid, comm: rec.comm, cgroupId: String(rec.cgroupId) };
    const sessionId = jobScopeId(rec.cgroupId);
    const job = this.jobFor(rec.cgroupId, this.labelled(rec.pid, rec.cgroupId, id ? base : undefined, id?.job));
    if (rec.type === 'exit') {
      return {
        kind: EventKind.EVENT_KIND_PROCESS_EXIT!, sessionId, process: base, job,
        exit: { exitCode: rec.exitCode >> 8, signal: rec.exitCode & 0x7f, bootTimeNs: String(rec.ktimeNs) },
      };
    }
    // argv as the kernel copied it at exec time, with truncation flagged; /proc may since differ.
    const argv = id ? id.redactor.redactArgv(rec.argv) : rec.argv.map(() => '[REDACTED:unattributed]');
    return {
      kind: EventKind.EVENT_KIND_PROCESS_EXEC!, sessionId,
      process: { ...base, ppid: rec.ppid, argv, argvTruncated: rec.argvTruncated },
      job,
      exec: { filename: rec.filename, bootTimeNs: String(rec.ktimeNs) },
    };
  }
}

/**
 * The process as it is now: in the cgroup the kernel's record names. The resolver caches a process
 * with the cgroup it was in when first seen, and a runner hook moves processes (the worker into its
 * job's cgroup and back): a moved process is reported where it is, never where it was.
 */
function inCgroup(process: ProcessInfo, pid: number, cgroupId: bigint | string): ProcessInfo {
  const id = String(cgroupId);
  // An unknown id on either side (a cgroup outside our namespace, say) is no evidence of a move.
  const seen = process.cgroupId === undefined ? '' : String(process.cgroupId);
  if (id === '' || id === '0' || seen === '' || seen === id) return process;
  const cgroup = cgroupPathOf(pid, id, undefined) ?? '';
  return { ...process, cgroup, cgroupId: id, containerId: containerIdFromCgroup(cgroup) };
}

/**
 * The cgroup path (relative to the v2 root) of the cgroup `cgroupId` a process is in, for finding
 * the labels of the cgroups above it: the one read with the process if it is still that cgroup's
 * (a process can be moved, and the resolver caches per process), else /proc/<pid>/cgroup read now.
 */
function cgroupPathOf(pid: number, cgroupId: string, known: ProcessInfo | undefined): string | undefined {
  if (known?.cgroup && known.cgroupId === cgroupId) return known.cgroup;
  try {
    const rel = parseCgroupFile(readFileSync(`/proc/${pid}/cgroup`, 'utf8'));
    return rel !== '' && cgroupIdOf(rel) === cgroupId ? rel : undefined;
  } catch {
    return undefined;
  }
}
