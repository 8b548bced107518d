// Ports for the tests' own listeners, below the kernel's ephemeral range. A port inside that range
// can be taken at any moment as the local port of some outgoing connection (the agent's to the
// collector, a client's to a server), and a listener then fails with EADDRINUSE: a port that was
// free when a test looked was no promise. Below the range only explicit binds take ports, and the
// test files run one at a time.
import { readFileSync } from 'node:fs';
import net from 'node:net';

const FIRST = 10000;
/** Agent fixtures' proxy ports: [AGENT_FIRST, ephemeral range). Free ports: [FIRST, AGENT_FIRST). */
const AGENT_FIRST = 20000;

/** The first port of net.ipv4.ip_local_port_range (Linux's default 32768). */
function ephemeralFirst(): number {
  try {
    const first = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    if (Number.isInteger(first) && first > 0) return first;
  } catch {
    // not Linux, or no procfs: the default
  }
  return 32768;
}

/** A proxy port for an agent fixture, from a seed (the test process and its fixture count). */
export function agentProxyPort(seed: number): number {
  const end = ephemeralFirst();
  if (end <= AGENT_FIRST + 1000) {
    throw new Error(`net.ipv4.ip_local_port_range starts at ${end}: the tests need ${AGENT_FIRST}-${AGENT_FIRST + 1000} outside it`);
  }
  return AGENT_FIRST + (seed % (end - AGENT_FIRST));
}

/** A loopback port nobody listens on right now, outside the ephemeral range. */
export async function freePort(): Promise<number> {
  for (let tries = 0; tries < 100; tries++) {
    const port = FIRST + Math.floor(Math.random() * (AGENT_FIRST - FIRST));
    if (await bindable(port)) return port;
  }
  throw new Error(`no free loopback port in ${FIRST}-${AGENT_FIRST - 1} after 100 tries`);
}

function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}
