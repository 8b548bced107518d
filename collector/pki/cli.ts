// `runguard ca init` and `runguard enroll`. Errors are thrown (UsageError: exit 2, others: exit 1)
// for main() to print; results go to stdout (the verifier key) and notes to stderr.
import path from 'node:path';
import { parseArgs, UsageError } from '../../agent/cli/args.js';
import { caInit, enroll, DEFAULT_CA_NAME } from './ca.js';
import { AGENT_FILES, CA_FILES } from './identity.js';

const CA_USAGE = `usage: runguard ca init --dir DIR [--name NAME] [--host HOST]...

Creates the collector's CA in DIR (mode 0700): ca.key + ca.crt (the CA), server.key + server.crt
(the collector's TLS certificate for localhost, 127.0.0.1, ::1 and each --host), and the checkpoint
signing key checkpoint.key + checkpoint.pub. Prints the checkpoint verifier key, which auditors and
\`runguard verify --key\` use. Never overwrites an existing CA.

  --dir DIR     where to create the CA (also the collector's --tls DIR)
  --name NAME   checkpoint key name and log origin (default ${DEFAULT_CA_NAME})
  --host HOST   another DNS name or IP address agents use to reach the collector (repeatable)
`;

const ENROLL_USAGE = `usage: runguard enroll --ca DIR --agent-id NAME --out DIR2

Issues an agent's TLS certificate, signed by the CA in DIR, into DIR2 (mode 0700): agent.key +
agent.crt, the agent's event-signing key signing.key (created once, kept on re-enrolment) bound into
the certificate, and copies of ca.crt and checkpoint.pub. DIR2 is the agent's --tls DIR.

  --ca DIR         the CA directory from \`runguard ca init\`
  --agent-id NAME  the agent's id: 1-128 characters of A-Z a-z 0-9 . _ -
  --out DIR2       where to write the agent's files
`;

export async function caCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === '--help' || sub === '-h' || sub === 'help') {
    process.stdout.write(CA_USAGE);
    return 0;
  }
  if (sub !== 'init') throw new UsageError(sub === undefined ? `missing subcommand\n${CA_USAGE}` : `unknown subcommand "${sub}" (known: init)`);
  const args = parseArgs(rest, { dir: 'string', name: 'string', host: 'strings', help: 'boolean' });
  if (args.help) {
    process.stdout.write(CA_USAGE);
    return 0;
  }
  if (args._.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(args._[0])}`);
  if (!args.dir) throw new UsageError('--dir DIR is required');
  const opts: { name?: string; hosts?: string[] } = {};
  if (args.name !== undefined) opts.name = args.name;
  if (args.host !== undefined) opts.hosts = args.host;
  const r = await caInit(args.dir, opts);
  process.stderr.write(
    `runguard ca: created CA "${r.name}" in ${r.dir}\n` +
    `  collector certificate for: ${r.hosts.join(', ')}\n` +
    `  checkpoint verifier key (also in ${path.join(r.dir, CA_FILES.checkpointPub)}):\n`,
  );
  process.stdout.write(r.verifierKey + '\n');
  return 0;
}

export async function enrollCommand(argv: string[]): Promise<number> {
  const args = parseArgs(argv, { ca: 'string', 'agent-id': 'string', out: 'string', help: 'boolean' });
  if (args.help) {
    process.stdout.write(ENROLL_USAGE);
    return 0;
  }
  if (args._.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(args._[0])}`);
  if (!args.ca) throw new UsageError('--ca DIR is required');
  if (!args['agent-id']) throw new UsageError('--agent-id NAME is required');
  if (!args.out) throw new UsageError('--out DIR2 is required');
  const r = await enroll({ caDir: args.ca, agentId: args['agent-id'], outDir: args.out });
  process.stderr.write(
    `runguard enroll: agent "${r.agentId}" enrolled in ${r.outDir} (certificate valid until ${r.notAfter.toISOString()})\n` +
    `  signing key ${r.keptSigningKey ? 'kept from' : 'created in'} ${path.join(r.outDir, AGENT_FILES.signingKey)}\n`,
  );
  process.stdout.write(r.signingKeyUri + '\n');
  return 0;
}
