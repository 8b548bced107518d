// What the collector accepts as an agent's status (proto/runguard/v1/ingest.proto, AgentStatus) and
// how GET /agents shows it. The status is only stored and displayed, never trusted for integrity,
// but it is stored as JSON: a bound on its size keeps an enrolled but misbehaving agent from
// filling the store with one call.
import type { AgentStatusMsg } from '../proto/services.js';
import type { StoredAgentStatus } from './store/store.js';

export const MAX_STATUS_JSON = 64 * 1024;

export function heartbeatProblem(status: AgentStatusMsg): string | undefined {
  const size = JSON.stringify(status).length;
  if (size > MAX_STATUS_JSON) return `the agent status is ${size} bytes as JSON, over the collector's limit of ${MAX_STATUS_JSON}`;
  return undefined;
}

/** The `status` member of an agent in GET /agents: the message as sent, plus when it arrived. */
export function statusJson(s: StoredAgentStatus | undefined): Record<string, unknown> | null {
  if (!s) return null;
  const { agentId: _id, ...status } = s.status;
  return { receivedMs: s.receivedMs, received: new Date(s.receivedMs).toISOString(), ...status };
}
