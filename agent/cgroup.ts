// cgroup v2: where it is mounted, ids, and the per-job cgroups `runguard run` creates.
//
// Hybrid hosts mount the v2 hierarchy at /sys/fs/cgroup/unified and the v1 controllers beside it;
// pure v2 hosts at /sys/fs/cgroup. Read /proc/self/mounts, never assume.
import { mkdirSync, openSync, readdirSync, readFileSync, rmdirSync, statSync, existsSync } from 'node:fs';
import path from 'node:path';

export function parseCgroup2Mount(mounts: string): string | undefined {
  for (const line of mounts.split('\n')) {
    const [, mountPoint, fstype] = line.split(' ');
    // Mount points escape space, tab, newline and backslash as octal.
    if (fstype === 'cgroup2' && mountPoint) return mountPoint.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  }
  return undefined;
}

let root: string | undefined;

/** Where cgroup v2 is mounted; the mount table is read once per process. */
export function cgroup2Root(): string {
  root ??= parseCgroup2Mount(readFileSync('/proc/self/mounts', 'utf8'));
  if (root === undefined) throw new Error('no cgroup v2 hierarchy is mounted (runguard needs cgroup v2; see /proc/self/mounts)');
  return root;
}

/** The cgroup v2 path (the `0::` line of /proc/<pid>/cgroup), relative to the cgroup2 mount. */
export function parseCgroupFile(text: string): string {
  for (const line of text.split('\n')) if (line.startsWith('0::')) return line.slice(3);
  return '';
}

/**
 * The id the BPF programs see (bpf_get_current_cgroup_id) for a path relative to the v2 root, as a
 * decimal string; '' when the cgroup is gone (job finished) or outside our cgroup namespace.
 */
export function cgroupIdOf(relPath: string): string {
  if (relPath === '') return '';
  try {
    return statSync(cgroup2Root() + (relPath === '/' ? '' : relPath), { bigint: true }).ino.toString();
  } catch {
    return '';
  }
}

/** Absolute path of a cgroup given relative to the v2 root, or already absolute under it. */
export function cgroupPath(nameOrPath: string, root = cgroup2Root()): string {
  const abs = nameOrPath.startsWith(root + '/') || nameOrPath === root ? nameOrPath : path.join(root, nameOrPath);
  const rel = path.relative(root, abs);
  if (rel.startsWith('..')) throw new Error(`cgroup ${nameOrPath} is outside the cgroup v2 hierarchy at ${root}`);
  return abs;
}

/** The kernel's cgroup id is the inode number of the cgroup directory. */
export function cgroupId(absPath: string): bigint {
  return statSync(absPath, { bigint: true }).ino;
}

/** The v2 cgroup of a process, relative to the hierarchy root ("/" for the root). */
export function cgroupOfPid(pid: number | 'self'): string {
  const rel = parseCgroupFile(readFileSync(`/proc/${pid}/cgroup`, 'utf8'));
  if (!rel) throw new Error(`process ${pid} has no cgroup v2 membership`);
  return rel;
}

export function ensureCgroup(absPath: string): void {
  mkdirSync(absPath, { recursive: true });
}

/** fd for BPF_PROG_ATTACH / link create; the caller closes it. */
export function openCgroupFd(absPath: string): number {
  if (!existsSync(absPath)) throw new Error(`watched cgroup ${absPath} does not exist`);
  return openSync(absPath, 'r');
}

/** Removes an empty cgroup; returns false while processes still live in it. */
export function removeCgroup(absPath: string): boolean {
  try {
    rmdirSync(absPath);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return true;
    if (code === 'EBUSY') return false;
    throw err;
  }
}

/** The cgroups directly under `dir`, or null when `dir` itself is gone. */
export function childCgroups(dir: string): string[] | null {
  try {
    return readdirSync(dir, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => path.join(dir, e.name));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

/**
 * Removes the agent's job cgroup parent, with the empty job cgroups directly under it first: a job
 * whose `runguard run` was killed before it could remove its own cgroup leaves one behind, and that
 * alone keeps the parent. Only direct children without cgroups of their own are touched (a job may
 * have made some); returns false, leaving the parent, while any child remains. A job's own
 * `runguard run` may remove its cgroup at any moment of this: a child gone between the listing and
 * its own read counts as removed, not as an error. `list` is childCgroups; tests pass one that
 * races.
 */
export function removeJobCgroups(parent: string, list: (dir: string) => string[] | null = childCgroups): boolean {
  const jobs = list(parent);
  if (jobs === null) return true;
  let empty = true;
  for (const job of jobs) {
    const below = list(job);
    if (below === null) continue;
    if (below.length > 0 || !removeCgroup(job)) empty = false;
  }
  return empty && removeCgroup(parent);
}

export function isPopulated(absPath: string): boolean {
  try {
    return /populated 1/.test(readFileSync(path.join(absPath, 'cgroup.events'), 'utf8'));
  } catch {
    return false;
  }
}
