// `runguard run -- CMD ARGS...`: runs CMD as a watched job in a fresh cgroup under the agent's job
// parent, with stdin/stdout/stderr passed through and CMD's exit status returned.
//
// The child joins the cgroup itself (a shell writes its own pid to cgroup.procs, then execs CMD), so
// not one instruction of CMD runs outside it. This works with the agent down too: the hooks stay
// pinned on the parent and the job's connections then fail closed.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs, UsageError } from './args.js';
import { readAgentState } from '../state.js';
import { ensureCgroup, isPopulated, removeCgroup } from '../cgroup.js';
import { DEFAULT_STATE_DIR } from '../paths.js';

const JOIN_AND_EXEC = 'echo $$ > "$0/cgroup.procs" && exec "$@"';

export async function runCommand(argv: string[]): Promise<number> {
  const a = parseArgs(argv, { 'state-dir': 'string', 'job-id': 'string' });
  if (!a._.length) throw new UsageError('nothing to run: runguard run [--state-dir DIR] -- CMD ARGS...');
  const stateDir = a['state-dir'] ?? DEFAULT_STATE_DIR;
  const state = readAgentState(stateDir);
  if (!state || !existsSync(state.jobCgroup)) {
    throw new Error(`no agent has run with state dir ${stateDir}; start \`runguard agent --state-dir ${stateDir}\` first`);
  }
  const jobId = a['job-id'] ?? `job-${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(jobId)) throw new UsageError(`--job-id "${jobId}" may use letters, digits, . _ - only`);
  const cgroup = path.join(state.jobCgroup, jobId);
  ensureCgroup(cgroup);
  const child = spawn('/bin/sh', ['-c', JOIN_AND_EXEC, cgroup, ...a._], { stdio: 'inherit' });
  const forward = (sig: NodeJS.Signals) => child.kill(sig);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, forward);
  const status = await new Promise<number>((resolve) => {
    child.on('error', (err) => {
      process.stderr.write(`runguard run: ${err.message}\n`);
      resolve(127);
    });
    child.on('exit', (code, signal) => resolve(code ?? 128 + (signal ? osSignal(signal) : 0)));
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.off(sig, forward);
  await removeWhenEmpty(cgroup);
  return status;
}

function osSignal(name: NodeJS.Signals): number {
  return os.constants.signals[name] ?? 0;
}

/** Background processes the job left behind keep the cgroup (and so stay watched); say so. */
async function removeWhenEmpty(cgroup: string): Promise<void> {
  for (let i = 0; i < 40; i++) {
    if (!isPopulated(cgroup) && removeCgroup(cgroup)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  process.stderr.write(`runguard run: processes left by the job keep ${cgroup}; it stays watched\n`);
}
