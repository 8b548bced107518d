// `runguard <subcommand>`: dispatch, usage and the exit-code convention (0 ok, 1 failure, 2 usage).
import { UsageError } from './args.js';

type Command = (argv: string[]) => Promise<number>;

const COMMANDS: Record<string, { summary: string; load: () => Promise<Command> }> = {
  agent: { summary: 'run the host agent (BPF redirect, proxy, audit spool)', load: async () => (await import('./agent-cmd.js')).agentCommand },
  hook: { summary: 'CI runner job hooks: hook job-started|job-completed [--state-dir DIR] (watch and label each job)', load: async () => (await import('./hook-cmd.js')).hookCommand },
  run: { summary: 'run a command as a watched job: runguard run -- CMD ARGS...', load: async () => (await import('./run-cmd.js')).runCommand },
  events: { summary: 'print audit events from the local spool or a collector (--json: proto3 JSON)', load: async () => (await import('./events-cmd.js')).eventsCommand },
  collector: { summary: 'run the collector (gRPC ingest, Merkle log, checkpoints, read API)', load: async () => (await import('./collector-cmd.js')).collectorCommand },
  verify: { summary: 'verify a log offline: leaves, tree, checkpoint, agent signatures and chains', load: async () => (await import('./verify-cmd.js')).verifyCommand },
  ca: { summary: 'ca init --dir DIR: create the collector CA, its certificate and checkpoint key', load: async () => (await import('../../collector/pki/cli.js')).caCommand },
  approvals: { summary: 'list approval requests on a collector: approvals --collector URL [--state pending|all] [--json]', load: async () => (await import('./approvals-cmd.js')).approvalsCommand },
  approve: { summary: 'approve a held operation: approve ID --collector URL [--user NAME] (password: $RUNGUARD_PASSWORD or stdin)', load: async () => (await import('./approvals-cmd.js')).approveCommand },
  deny: { summary: 'deny a held operation: deny ID --collector URL [--reason TEXT] [--user NAME]', load: async () => (await import('./approvals-cmd.js')).denyCommand },
  user: { summary: 'collector users: user add --data-dir DIR --name NAME --role approver --group dba (password on stdin)', load: async () => (await import('./user-cmd.js')).userCommand },
  enroll: { summary: 'issue an agent certificate and signing key: enroll --ca DIR --agent-id ID --out DIR', load: async () => (await import('../../collector/pki/cli.js')).enrollCommand },
};

function usage(): string {
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(10)} ${c.summary}`);
  return `usage: runguard <command> [options]\n\ncommands:\n${lines.join('\n')}\n`;
}

export async function main(argv: string[]): Promise<number> {
  // `runguard events | head`: a reader that went away is not an error.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0);
    throw err;
  });
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage());
    return name ? 0 : 2;
  }
  const cmd = COMMANDS[name];
  if (!cmd) {
    process.stderr.write(`runguard: unknown command "${name}"\n\n${usage()}`);
    return 2;
  }
  try {
    return await (await cmd.load())(rest);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`runguard ${name}: ${err.message}\n`);
      return 2;
    }
    process.stderr.write(`runguard ${name}: ${(err as Error).message}\n`);
    return 1;
  }
}
