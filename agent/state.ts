// STATE_DIR/agent.json: what a running agent tells the commands that work beside it (`runguard run`,
// `runguard hook`, `runguard events`) about itself. Its own module, free of the agent's imports: a
// command that only reads it must not load the whole agent (BPF, proxy, handlers), which cost every
// `runguard run` half a second of cpu before the job started.
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';

export interface AgentState {
  agentId: string;
  pid: number;
  running: boolean;
  proxyPort: number;
  jobCgroup: string; // absolute path of the parent of per-job cgroups
  pinDir: string;
  startedAt: string;
}

export function agentStatePath(stateDir: string): string {
  return path.join(stateDir, 'agent.json');
}

export function readAgentState(stateDir: string): AgentState | undefined {
  try {
    return JSON.parse(readFileSync(agentStatePath(stateDir), 'utf8')) as AgentState;
  } catch {
    return undefined;
  }
}

/** Replaces the file whole (write, then rename): a reader never sees half of it. */
export function writeAgentState(stateDir: string, state: AgentState): void {
  const file = agentStatePath(stateDir);
  writeFileSync(file + '.tmp', JSON.stringify(state, null, 2) + '\n', { mode: 0o644 });
  renameSync(file + '.tmp', file);
}
