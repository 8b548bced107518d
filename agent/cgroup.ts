// cgroup v2: where it is mounted, ids, and the per-job cgroups `runguard run` creates.
//
// Hybrid hosts mount the v2 hierarchy at /sys/fs/cgroup/unified and the v1 controllers beside it;
// pure v2 hosts at /sys/fs/cgroup. Read /proc/self/mounts, never assume.
import { mkdirSync, openSync, readFileSync, rmdirSync, statSync, existsSync } from 'node:fs';
import path from 'node:path';

export function cgroup2Root(mounts = readFileSync('/proc/self/mounts', 'utf8')): string {
  for (const line of mounts.split('\n')) {
    const [, mountPoint, fsType] = line.split(' ');
    if (fsType === 'cgroup2' && mountPoint) return mountPoint.replace(/\\040/g, ' ');
  }
  throw new Error('no cgroup v2 hierarchy is mounted (runguard needs cgroup v2; see /proc/self/mounts)');
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
  const text = readFileSync(`/proc/${pid}/cgroup`, 'utf8');
  const line = text.split('\n').find((l) => l.startsWith('0::'));
  if (!line) throw new Error(`process ${pid} has no cgroup v2 membership`);
  return line.slice(3);
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

export function isPopulated(absPath: string): boolean {
  try {
    return /populated 1/.test(readFileSync(path.join(absPath, 'cgroup.events'), 'utf8'));
  } catch {
    return false;
  }
}
