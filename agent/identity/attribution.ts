// Ties kernel records to people and jobs: a redirect record (connection) or an exec/exit record
// becomes the process and CI-job part of an audit event.
import { EventKind, IdentitySource, type EventDraft, type JobInfo, type ProcessInfo } from '../../proto/index.js';
import type { ExecRecord, Origin } from '../bpf/layout.js';
import type { IdentityProvider } from '../proxy/server.js';
import type { Redactor } from '../redact/redactor.js';
import { IdentityResolver } from './resolver.js';

const NO_JOB: JobInfo = { source: IdentitySource.IDENTITY_SOURCE_NONE };

/** Process events are grouped by the job scope they ran in: the watched cgroup of the job. */
export function jobScopeId(cgroupId: bigint | string | number): string {
  return `cgroup-${cgroupId}`;
}

/** Job scopes remembered for attributing processes that left nothing to resolve. */
const MAX_SCOPES = 4096;

export class Attribution implements IdentityProvider {
  /** cgroup id -> the job last resolved for a process in it. */
  private readonly scopes = new Map<string, JobInfo>();

  constructor(readonly resolver = new IdentityResolver()) {}

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
      return { process: { pid: origin.pid, tid: origin.tid, uid: origin.uid, comm: origin.comm, cgroupId: String(origin.cgroupId) }, job: this.jobFor(origin.cgroupId, undefined) };
    }
    const process = origin.tid !== origin.pid ? { ...id.process, tid: origin.tid } : id.process;
    return { process, job: this.jobFor(origin.cgroupId, id.job), redactor: id.redactor };
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
    const base: ProcessInfo = id?.process ?? { pid: rec.pid, ppid: rec.ppid, uid: rec.uid, comm: rec.comm, cgroupId: String(rec.cgroupId) };
    const sessionId = jobScopeId(rec.cgroupId);
    const job = this.jobFor(rec.cgroupId, id?.job);
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
