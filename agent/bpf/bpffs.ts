// The BPF filesystem that holds runguard's pins. Some hosts (minimal VMs, containers) boot without
// it; the agent mounts it rather than asking the operator to.
import { mkdirSync, readFileSync } from 'node:fs';
import koffi from 'koffi';

const libc = koffi.load('libc.so.6');
const mount = libc.func('int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const void *data)');
const strerror = libc.func('const char *strerror(int errnum)');

export function isBpffsMounted(at: string, mounts = readFileSync('/proc/self/mounts', 'utf8')): boolean {
  return mounts.split('\n').some((l) => {
    const [, mp, type] = l.split(' ');
    return type === 'bpf' && mp === at;
  });
}

/** Makes sure a bpffs is mounted at `at` (normally /sys/fs/bpf); returns true if this call mounted it. */
export function ensureBpffs(at = '/sys/fs/bpf'): boolean {
  if (isBpffsMounted(at)) return false;
  mkdirSync(at, { recursive: true });
  if (mount('bpf', at, 'bpf', 0, null) !== 0) {
    const errno = koffi.errno();
    throw new Error(`cannot mount the BPF filesystem at ${at}: ${strerror(errno)} (runguard needs root or CAP_SYS_ADMIN)`);
  }
  return true;
}

/** The mount point holding a pin directory such as /sys/fs/bpf/runguard. */
export function bpffsMountFor(pinDir: string, mounts = readFileSync('/proc/self/mounts', 'utf8')): string {
  const points = mounts.split('\n').map((l) => l.split(' ')).filter((f) => f[2] === 'bpf').map((f) => f[1]!);
  const hit = points.filter((p) => pinDir === p || pinDir.startsWith(p + '/')).sort((a, b) => b.length - a.length)[0];
  return hit ?? '/sys/fs/bpf';
}
