// `runguard user add|list --data-dir DIR`: the collector's local users (DATA_DIR/users.json). The
// password comes from $RUNGUARD_PASSWORD or the first line of stdin, never from the command line.
// Name approvers as the CI system names people: an approver whose name equals a job's actor
// (GITHUB_ACTOR ...) cannot approve that job's requests.
import { ROLES, UserStore, type Role } from '../../collector/approvals/users.js';
import { parseArgs, UsageError } from './args.js';
import { readPassword } from './approvals-cmd.js';

const USAGE = 'usage: runguard user add --data-dir DIR --name NAME --role viewer|approver|admin [--role ...] [--group GROUP ...]\n       runguard user list --data-dir DIR';

export async function userCommand(argv: string[]): Promise<number> {
  const a = parseArgs(argv, { 'data-dir': 'string', name: 'string', role: 'strings', group: 'strings' });
  const [sub, ...extra] = a._;
  if (!a['data-dir'] || extra.length || (sub !== 'add' && sub !== 'list')) throw new UsageError(USAGE);
  const store = UserStore.forDataDir(a['data-dir']);
  if (sub === 'list') {
    for (const u of store.list()) process.stdout.write(`${u.name}  roles: ${u.roles.join(',')}  groups: ${u.groups.join(',') || '-'}\n`);
    return 0;
  }
  if (!a.name) throw new UsageError(`--name is required\n${USAGE}`);
  const roles = (a.role ?? []).flatMap((r) => r.split(',')).filter(Boolean);
  for (const r of roles) if (!ROLES.includes(r as Role)) throw new UsageError(`unknown role "${r}" (known: ${ROLES.join(', ')})`);
  if (!roles.length) throw new UsageError(`give at least one --role (${ROLES.join(', ')})`);
  const groups = (a.group ?? []).flatMap((g) => g.split(',')).filter(Boolean);
  store.add({ name: a.name, roles: roles as Role[], groups }, await readPassword());
  process.stdout.write(`user ${a.name} saved in ${store.file} (roles: ${roles.join(',')}; groups: ${groups.join(',') || '-'})\n`);
  return 0;
}
