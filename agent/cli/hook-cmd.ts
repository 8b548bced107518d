// `runguard hook job-started|job-completed`: the CI runner's job hooks.
//
// GitHub Actions runs the script named by ACTIONS_RUNNER_HOOK_JOB_STARTED before a job's first step
// and ACTIONS_RUNNER_HOOK_JOB_COMPLETED after its last, as children of the Runner.Worker process
// that runs the job, with the job's GITHUB_* variables in their environment. GitLab Runner (shell
// executor) runs pre_build_script / post_build_script inside the shell that runs the job's script.
//
// job-started puts the job under watch: it makes a fresh cgroup under the agent's job parent, writes
// the job's label (STATE_DIR/jobs/<cgroup id>.json: who the job is, from the hook's environment,
// which the host's runner set) and then moves the process that will start the job's steps (the
// Runner.Worker, or the job shell) into the cgroup, so every step it starts from then on runs
// watched and is attributed by the label (IDENTITY_SOURCE_RUNNER_HOOK). The label is written before
// the move, so no process is ever in a job cgroup without its label.
//
// It fails closed: if it cannot put the job under watch (no agent state, no job cgroup parent, no
// process to move, a failed write) it exits 1 and the runner fails the job instead of running it
// unwatched. RUNGUARD_HOOK_FAIL_OPEN=1 (or --fail-open) makes it exit 0 then, and say so.
//
// job-completed moves the worker (and the hook's own ancestors, which the worker started in the job
// cgroup) back to the cgroup it came from, then removes the cgroup and the label once the cgroup is
// empty. It never fails the job: problems are logged to stderr and it exits 0. Processes the job left
// behind keep the cgroup and its label (they stay watched and attributed to the job); the next hook
// run removes both once they have gone.
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs, UsageError } from './args.js';
import { agentStatePath, readAgentState, type AgentState } from '../state.js';
import { cgroup2Root, cgroupId, cgroupIdOf, cgroupOfPid, isPopulated, parseCgroupFile, removeCgroup } from '../cgroup.js';
import { DEFAULT_STATE_DIR } from '../paths.js';
import { jobFromEnv, type Env } from '../identity/ci.js';
import { labelsDir, listLabels, readLabelFile, labelPath, removeLabel, writeLabel, LABEL_VERSION, type JobLabel } from '../identity/labels.js';
import { parseStat, type ProcStat } from '../identity/process.js';
import type { JobInfo } from '../../proto/index.js';

const USAGE = 'runguard hook job-started|job-completed [--state-dir DIR] [--fail-open]';
const FLAGS = { 'state-dir': 'string', 'fail-open': 'boolean' } as const;

export async function hookCommand(argv: string[]): Promise<number> {
  const [event, ...rest] = argv;
  if (event === '--help' || event === '-h') {
    process.stdout.write(`usage: ${USAGE}\n`);
    return 0;
  }
  if (event !== 'job-started' && event !== 'job-completed') throw new UsageError(`usage: ${USAGE}`);
  const a = parseArgs(rest, FLAGS);
  if (a._.length) throw new UsageError(`unexpected argument "${a._[0]}"; usage: ${USAGE}`);
  const stateDir = a['state-dir'] ?? DEFAULT_STATE_DIR;
  const env = process.env;
  if (event === 'job-started') return jobStarted(stateDir, a['fail-open'] === true || env.RUNGUARD_HOOK_FAIL_OPEN === '1', env);
  return jobCompleted(stateDir, env);
}

const say = (event: string, message: string) => process.stderr.write(`runguard hook ${event}: ${message}\n`);

// --- finding the process to move -------------------------------------------------------------------

/** Processes that only wrap the hook (sudo and friends): the process to move is above them. */
const WRAPPERS = new Set(['sudo', 'doas', 'su', 'runuser', 'setpriv', 'env', 'nice', 'ionice', 'timeout', 'flock']);

export interface WorkerTarget {
  pid: number;
  comm: string;
  startTime: string;
  /** override: RUNGUARD_HOOK_TARGET_PID; runner-worker: the Runner.Worker ancestor; parent: the nearest non-wrapper ancestor. */
  how: 'override' | 'runner-worker' | 'parent';
}

function readAt(procRoot: string, pid: number, file: string): string | undefined {
  try {
    return readFileSync(`${procRoot}/${pid}/${file}`, 'utf8');
  } catch {
    return undefined;
  }
}

function statAt(procRoot: string, pid: number): ProcStat | undefined {
  const text = readAt(procRoot, pid, 'stat');
  const stat = text === undefined ? undefined : parseStat(text);
  return stat === undefined || stat.state === 'Z' || stat.state === 'X' ? undefined : stat;
}

/**
 * Runner.Worker, run as itself (bin/Runner.Worker) or through dotnet (dotnet bin/Runner.Worker.dll);
 * by program name only, so that `grep Runner.Worker` is not taken for one.
 */
function isRunnerWorker(comm: string, cmdline: string): boolean {
  if (comm === 'Runner.Worker') return true;
  const [argv0 = '', argv1 = ''] = cmdline.split('\0');
  if (path.basename(argv0) === 'Runner.Worker') return true;
  return /^dotnet/.test(path.basename(argv0)) && /^Runner\.Worker(\.dll)?$/.test(path.basename(argv1));
}

/**
 * The process whose future children are the job's steps: walking up from `fromPid` (the hook's
 * parent), the first Runner.Worker; if there is none (GitLab's job shell, a test), the nearest
 * ancestor that is not a wrapper such as sudo. undefined if the walk reaches init first.
 */
export function findWorker(fromPid: number, procRoot = '/proc'): WorkerTarget | undefined {
  let fallback: WorkerTarget | undefined;
  let pid = fromPid;
  for (let depth = 0; depth < 64 && pid > 1; depth++) {
    const stat = statAt(procRoot, pid);
    if (stat === undefined) break;
    const comm = readAt(procRoot, pid, 'comm')?.replace(/\n$/, '') ?? stat.comm;
    if (isRunnerWorker(comm, readAt(procRoot, pid, 'cmdline') ?? '')) return { pid, comm, startTime: stat.startTime, how: 'runner-worker' };
    if (fallback === undefined && !WRAPPERS.has(comm)) fallback = { pid, comm, startTime: stat.startTime, how: 'parent' };
    pid = stat.ppid;
  }
  return fallback;
}

/** RUNGUARD_HOOK_TARGET_PID (for tests and unusual runners), else findWorker from our parent. */
function chooseTarget(env: Env, agentPid: number | undefined): WorkerTarget {
  const override = env.RUNGUARD_HOOK_TARGET_PID;
  if (override !== undefined && override !== '') {
    const pid = Number(override);
    if (!Number.isInteger(pid) || pid <= 1 || pid === process.pid) throw new Error(`RUNGUARD_HOOK_TARGET_PID="${override}" is not a process this hook can move`);
    if (pid === agentPid) throw new Error(`RUNGUARD_HOOK_TARGET_PID=${pid} is the agent itself`);
    const stat = statAt('/proc', pid);
    if (stat === undefined) throw new Error(`RUNGUARD_HOOK_TARGET_PID=${pid}: no such process`);
    return { pid, comm: stat.comm, startTime: stat.startTime, how: 'override' };
  }
  const found = findWorker(process.ppid);
  if (found === undefined) throw new Error(`found no process to move: neither a Runner.Worker nor a parent process above the hook (pid ${process.pid}, parent ${process.ppid})`);
  if (found.pid === agentPid) throw new Error(`the process above the hook is the agent itself (pid ${found.pid})`);
  return found;
}

// --- cgroups ------------------------------------------------------------------------------------

function relOf(root: string, abs: string): string {
  return '/' + path.relative(root, abs);
}

function within(rel: string, cgroup: string): boolean {
  return rel === cgroup || rel.startsWith(cgroup + '/');
}

/** Moves a whole process (every thread) into the cgroup at `abs`. */
function moveTo(abs: string, pid: number): void {
  writeFileSync(path.join(abs, 'cgroup.procs'), `${pid}\n`);
}

function cgroupOf(pid: number): string | undefined {
  try {
    return parseCgroupFile(readFileSync(`/proc/${pid}/cgroup`, 'utf8')) || undefined;
  } catch {
    return undefined;
  }
}

/** Removes a cgroup and the empty cgroups a job made below it; false while processes are in it. */
function removeTree(abs: string): boolean {
  let entries: string[] = [];
  try {
    entries = readdirSync(abs, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return true;
    throw err;
  }
  for (const name of entries) if (!removeTree(path.join(abs, name))) return false;
  return removeCgroup(abs);
}

function pidAlive(pid: number, startTime: string): boolean {
  return statAt('/proc', pid)?.startTime === startTime;
}

/** What is left in a cgroup (and below), as "pid comm" for the message. */
function leftovers(abs: string): string[] {
  const out: string[] = [];
  const visit = (dir: string) => {
    for (const pid of safeRead(path.join(dir, 'cgroup.procs')).split('\n').filter(Boolean)) {
      out.push(`${pid} ${statAt('/proc', Number(pid))?.comm ?? '?'}`);
    }
    try {
      for (const d of readdirSync(dir, { withFileTypes: true })) if (d.isDirectory()) visit(path.join(dir, d.name));
    } catch {
      // gone meanwhile
    }
  };
  visit(abs);
  return out;
}

function safeRead(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

/**
 * Labels whose job is over: the cgroup is gone, or empty and either completed or its worker gone
 * (a GitLab job whose script failed never runs post_build_script). Removes cgroup and label.
 */
function sweep(dir: string, state: AgentState | undefined, root: string, keep?: string): void {
  const parentRel = state ? relOf(root, state.jobCgroup) : undefined;
  for (const { label } of listLabels(dir)) {
    if (label.cgroupId === keep) continue;
    const abs = path.join(root, label.cgroup ?? '');
    if (!label.cgroup || (parentRel !== undefined && !within(label.cgroup, parentRel)) || label.cgroup.includes('..')) continue;
    try {
      if (!existsSync(abs) || cgroupIdOf(label.cgroup) !== label.cgroupId) {
        removeLabel(dir, label.cgroupId);
        continue;
      }
      if (isPopulated(abs)) continue;
      if (label.completedAt === undefined && pidAlive(label.workerPid, label.workerStartTime)) continue;
      if (removeTree(abs)) removeLabel(dir, label.cgroupId);
    } catch (err) {
      say('sweep', `cannot remove the finished job cgroup ${abs}: ${(err as Error).message}`);
    }
  }
}

/** provider-run-attempt-job-<random>, in the characters a cgroup (and a file name) takes safely. */
export function jobCgroupName(job: JobInfo | undefined, random = randomBytes(4).toString('hex')): string {
  const parts = job ? [job.provider, job.runId, job.runAttempt, job.job].filter((p): p is string => !!p) : [];
  const base = (parts.length ? parts.join('-') : `job-${Date.now().toString(36)}`)
    .replace(/[^A-Za-z0-9._-]+/g, '_').replace(/^[._]+/, '').slice(0, 80);
  return `${base || 'job'}-${random}`;
}

// --- job-started --------------------------------------------------------------------------------

function jobStarted(stateDir: string, failOpen: boolean, env: Env): number {
  const fail = (message: string): number => {
    if (failOpen) {
      say('job-started', `${message}\nfail-open (--fail-open or RUNGUARD_HOOK_FAIL_OPEN=1): the job runs UNWATCHED (not redirected, not audited by runguard)`);
      return 0;
    }
    say('job-started', `${message}\nthe job is failed rather than run unwatched (fail-closed); to let jobs run unwatched when runguard cannot watch them, add --fail-open to the hook command (or set RUNGUARD_HOOK_FAIL_OPEN=1 in its environment)`);
    return 1;
  };

  const state = readAgentState(stateDir);
  if (!state) {
    return fail(`no runguard agent state in ${stateDir} (${agentStatePath(stateDir)} is missing or unreadable): is the agent installed and started (systemctl status runguard-agent) with this state directory?`);
  }
  if (!existsSync(state.jobCgroup)) return fail(`the agent's job cgroup parent ${state.jobCgroup} does not exist: start the agent (systemctl start runguard-agent)`);
  if (!state.running || !processAlive(state.pid)) {
    say('job-started', `warning: the agent (pid ${state.pid}) is not running: the job is placed under watch, and its intercepted connections are refused until the agent is back (or go direct, if the agent runs with failOpen)`);
  }

  let root: string;
  let target: WorkerTarget;
  try {
    root = cgroup2Root();
    // The runner runs this hook before the job's first step, from outside any job. Called from
    // inside a job (a step running the hook, which sudo lets the runner's user do), it would let the
    // job move its worker into a cgroup labelled with whatever identity the step's environment
    // claims: refused, and the job that tried is failed.
    const own = cgroupOf(process.pid);
    const parentRel = relOf(root, state.jobCgroup);
    if (own !== undefined && within(own, parentRel)) {
      say('job-started', `refused: called from inside a watched job (cgroup ${own}); job-started runs from the runner, before the job's first step`);
      return 1;
    }
    target = chooseTarget(env, state.pid);
  } catch (err) {
    return fail((err as Error).message);
  }
  const dir = labelsDir(stateDir);
  try {
    sweep(dir, state, root);
  } catch (err) {
    say('job-started', `warning: cleaning up finished jobs: ${(err as Error).message}`);
  }

  const job = jobFromEnv(env);
  if (job === undefined) say('job-started', 'warning: no CI job variables (GITHUB_*, CI_*, RUNGUARD_JOB_*...) in the hook\'s environment: the job is watched but its events are attributed by the environment of its processes only');
  const abs = path.join(state.jobCgroup, jobCgroupName(job));
  const rel = relOf(root, abs);
  let id: string;
  try {
    mkdirSync(abs); // not recursive: the parent is the agent's, and a name is never reused
    id = cgroupId(abs).toString();
  } catch (err) {
    return fail(`cannot create the job cgroup ${abs}: ${(err as Error).message}`);
  }
  const undo = (message: string) => {
    try {
      removeLabel(dir, id);
      removeCgroup(abs);
    } catch {
      // reported below
    }
    return fail(message);
  };

  let origin = cgroupOf(target.pid);
  if (origin === undefined) return undo(`process ${target.pid} (${target.comm}) has gone or has no cgroup v2 membership`);
  // Still in an earlier job's cgroup (that job's job-completed never ran): go back where that one came from.
  if (within(origin, relOf(root, state.jobCgroup))) {
    const earlier = readLabelFile(labelPath(dir, cgroupIdOf(origin)));
    if (earlier && earlier.workerPid === target.pid && earlier.workerStartTime === target.startTime) {
      say('job-started', `process ${target.pid} was still in the cgroup of an earlier job (${origin}); it will go back to ${earlier.originCgroup} when this job completes`);
      writeLabel(dir, { ...earlier, completedAt: new Date().toISOString() });
      origin = earlier.originCgroup;
    }
  }

  const label: JobLabel = {
    version: LABEL_VERSION, cgroupId: id, cgroup: rel, workerPid: target.pid, workerStartTime: target.startTime,
    workerComm: target.comm, workerFound: target.how, originCgroup: origin, startedAt: new Date().toISOString(),
  };
  if (job !== undefined) {
    // The label's source is the hook (readers say RUNNER_HOOK); jobFromEnv's ENVIRONMENT is not kept.
    const { source: _source, sourcePid: _pid, ...fields } = job;
    label.job = fields;
  }
  try {
    writeLabel(dir, label);
  } catch (err) {
    return undo(`cannot write the job label in ${dir}: ${(err as Error).message}`);
  }
  try {
    if (!pidAlive(target.pid, target.startTime)) throw new Error(`process ${target.pid} has gone`);
    moveTo(abs, target.pid);
  } catch (err) {
    return undo(`cannot move process ${target.pid} (${target.comm}) into ${abs}: ${(err as Error).message}`);
  }
  const who = job ? [job.provider, job.repository, job.runId && `run ${job.runId}${job.runAttempt ? `/${job.runAttempt}` : ''}`, job.job].filter(Boolean).join(' ') : 'unidentified job';
  say('job-started', `${who}: ${target.comm} (pid ${target.pid}, ${target.how === 'runner-worker' ? 'the runner worker' : target.how === 'override' ? 'RUNGUARD_HOOK_TARGET_PID' : 'the hook\'s parent'}) is watched in cgroup ${rel} (id ${id}); label ${labelPath(dir, id)}`);
  return 0;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

// --- job-completed ------------------------------------------------------------------------------

async function jobCompleted(stateDir: string, env: Env): Promise<number> {
  try {
    await complete(stateDir, env);
  } catch (err) {
    say('job-completed', `${(err as Error).message} (ignored: runguard never fails a job at its end)`);
  }
  return 0;
}

/** The hook's own line of ancestors, from itself up to (not including) `stopAt`. */
function ownLine(stopAt: number): number[] {
  const line: number[] = [];
  let pid = process.pid;
  for (let depth = 0; depth < 64 && pid > 1 && pid !== stopAt; depth++) {
    line.push(pid);
    const stat = statAt('/proc', pid);
    if (stat === undefined) break;
    pid = stat.ppid;
  }
  return line;
}

async function complete(stateDir: string, env: Env): Promise<void> {
  const dir = labelsDir(stateDir);
  const state = readAgentState(stateDir);
  const root = cgroup2Root();
  let target: WorkerTarget | undefined;
  try {
    target = chooseTarget(env, state?.pid);
  } catch (err) {
    say('job-completed', (err as Error).message);
  }

  // The job's label: the one that names this worker, else the one of the cgroup this hook runs in.
  const labels = listLabels(dir);
  let found = target && labels.find(({ label }) => label.workerPid === target!.pid && label.workerStartTime === target!.startTime && label.completedAt === undefined);
  if (!found) {
    const own = cgroupOf(process.pid);
    found = own === undefined ? undefined : labels.find(({ label }) => label.cgroup && within(own, label.cgroup));
  }
  if (!found) {
    say('job-completed', `no job label for this job in ${dir} (was job-started run?); nothing to undo`);
    if (state) sweep(dir, state, root);
    return;
  }
  const label = found.label;
  const abs = path.join(root, label.cgroup);
  let back = path.join(root, label.originCgroup);
  if (!existsSync(back)) {
    say('job-completed', `the cgroup the worker came from (${label.originCgroup}) has gone; moving it to the cgroup root instead`);
    back = root;
  }

  // The worker back where it was: what it starts from now on (the next job's setup) is not this job's.
  const moved: string[] = [];
  if (pidAlive(label.workerPid, label.workerStartTime)) {
    const now = cgroupOf(label.workerPid);
    if (now !== undefined && within(now, label.cgroup)) {
      moveTo(back, label.workerPid);
      moved.push(`${label.workerComm} (pid ${label.workerPid})`);
    }
  }
  // This hook and the processes between it and the worker were started by the worker inside the job
  // cgroup: out with them too, or the cgroup could not empty while we wait for it.
  for (const pid of ownLine(label.workerPid)) {
    const now = cgroupOf(pid);
    if (now !== undefined && within(now, label.cgroup)) {
      try {
        moveTo(back, pid);
      } catch (err) {
        say('job-completed', `cannot move hook process ${pid} out of the job cgroup: ${(err as Error).message}`);
      }
    }
  }

  // Steps that are still exiting get a moment; what the job left running keeps the cgroup.
  for (let i = 0; i < 40; i++) {
    if (!isPopulated(abs) && removeTree(abs)) {
      removeLabel(dir, label.cgroupId);
      say('job-completed', `${moved.length ? `${moved.join(', ')} moved back to ${relOf(root, back)}; ` : ''}job cgroup ${label.cgroup} and its label removed`);
      if (state) sweep(dir, state, root, label.cgroupId);
      return;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  writeLabel(dir, { ...label, completedAt: new Date().toISOString() });
  const left = leftovers(abs);
  say('job-completed', `${moved.length ? `${moved.join(', ')} moved back to ${relOf(root, back)}; ` : ''}processes the job left behind keep ${label.cgroup} (${left.slice(0, 10).join(', ')}${left.length > 10 ? ', ...' : ''}): they stay watched and labelled as this job; a later hook run removes the cgroup and label once they have exited`);
}
