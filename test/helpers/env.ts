// What the integration tests need from the machine. With RUNGUARD_REQUIRE_BPF=1 (as in CI) a
// missing capability fails the test instead of skipping it, so an eBPF test never passes by
// not running.
import { existsSync, readFileSync } from 'node:fs';
import type { TestContext } from 'node:test';

export function bpfUnavailableReason(): string | undefined {
  if (process.getuid?.() !== 0) return 'not root';
  if (!existsSync('/sys/kernel/btf/vmlinux')) return 'kernel has no BTF (/sys/kernel/btf/vmlinux)';
  if (!readFileSync('/proc/self/mounts', 'utf8').split('\n').some((l) => l.split(' ')[2] === 'cgroup2')) return 'no cgroup v2 mount';
  return undefined;
}

/** Call at the start of a test that needs real eBPF: skips, or fails under RUNGUARD_REQUIRE_BPF=1. */
export function requireBpf(t: TestContext): boolean {
  const why = bpfUnavailableReason();
  if (!why) return true;
  if (process.env.RUNGUARD_REQUIRE_BPF === '1') throw new Error(`eBPF required (RUNGUARD_REQUIRE_BPF=1) but unavailable: ${why}`);
  t.skip(`eBPF unavailable: ${why}`);
  return false;
}
