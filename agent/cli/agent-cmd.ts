// `runguard agent`: runs in the foreground until SIGTERM/SIGINT; `--cleanup` removes what it pinned.
import { pino } from 'pino';
import { defaultConfig, loadConfigFile, parseInterceptRule, validate, type AgentConfig } from '../config.js';
import { parseArgs, UsageError } from './args.js';
import { startAgent } from '../agent.js';
import { readAgentState } from '../state.js';
import { removePins } from '../bpf/runtime.js';
import { cgroupPath, removeJobCgroups } from '../cgroup.js';

const FLAGS = {
  config: 'string', 'state-dir': 'string', intercept: 'strings', 'watch-cgroup': 'strings', 'proxy-port': 'string',
  'pin-dir': 'string', 'job-cgroup': 'string', 'agent-id': 'string', 'fail-open': 'boolean', cleanup: 'boolean',
  'log-level': 'string', collector: 'string', tls: 'string', policy: 'string', 'heartbeat-interval-ms': 'string',
} as const;

export function configFromArgs(argv: string[]): { cfg: AgentConfig; cleanup: boolean; logLevel: string } {
  const a = parseArgs(argv, FLAGS);
  if (a._.length) throw new UsageError(`unexpected argument "${a._[0]}"`);
  const cfg = a.config ? loadConfigFile(a.config) : defaultConfig();
  if (a['state-dir']) cfg.stateDir = a['state-dir'];
  if (a['pin-dir']) cfg.pinDir = a['pin-dir'];
  if (a['job-cgroup']) cfg.jobCgroupParent = a['job-cgroup'];
  if (a['agent-id']) cfg.agentId = a['agent-id'];
  if (a['proxy-port']) cfg.proxyPort = Number(a['proxy-port']);
  if (a['fail-open'] !== undefined) cfg.failOpen = a['fail-open'];
  if (a.collector) cfg.collector = a.collector;
  if (a.tls) cfg.tlsDir = a.tls;
  if (a.policy) cfg.policyFile = a.policy;
  if (a['heartbeat-interval-ms']) cfg.heartbeatIntervalMs = Number(a['heartbeat-interval-ms']);
  if (a['watch-cgroup']) cfg.watchCgroups = [...cfg.watchCgroups, ...a['watch-cgroup']];
  if (a.intercept) {
    try {
      cfg.intercept = a.intercept.map((r) => parseInterceptRule(r));
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
  }
  validate(cfg, a.config ?? 'flags');
  return { cfg, cleanup: a.cleanup ?? false, logLevel: a['log-level'] ?? process.env.RUNGUARD_LOG_LEVEL ?? 'info' };
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export async function agentCommand(argv: string[]): Promise<number> {
  const { cfg, cleanup, logLevel } = configFromArgs(argv);
  const log = pino({ level: logLevel, base: { agent: cfg.agentId } });
  if (cleanup) {
    const prev = readAgentState(cfg.stateDir);
    if (prev?.running && pidAlive(prev.pid) && prev.pid !== process.pid) {
      throw new Error(`an agent (pid ${prev.pid}) is still running with state dir ${cfg.stateDir}; stop it first`);
    }
    const removed = removePins(prev?.pinDir ?? cfg.pinDir);
    const jobs = prev?.jobCgroup ?? cgroupPath(cfg.jobCgroupParent);
    const cgRemoved = removeJobCgroups(jobs);
    process.stdout.write(`${removed.length ? removed.map((r) => `removed ${r}`).join('\n') + '\n' : 'no pinned hooks or maps\n'}`);
    process.stdout.write(cgRemoved ? `removed cgroup ${jobs}\n` : `cgroup ${jobs} still has jobs in it; left in place\n`);
    return 0;
  }
  const agent = await startAgent(cfg, log);
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info({ signal }, 'stopping');
      agent.stop(`signal ${signal}`).then(resolve, (err) => {
        log.error({ err }, 'error while stopping');
        resolve();
      });
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  return 0;
}
