// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Process tree of watched jobs: every exec and every process exit inside a watched cgroup, so that
 * a connection can be tied to the command line (and its ancestors) that opened it.
 *
 * No vmlinux.h: the few kernel fields read here are declared below with preserve_access_index, and
 * libbpf relocates them against the running kernel's BTF (CO-RE).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "runguard.h"

struct mm_struct {
	unsigned long arg_start;
	unsigned long arg_end;
} __attribute__((preserve_access_index));

struct task_struct {
	int pid;
	int tgid;
	int exit_code;
	struct task_struct *real_parent;
	struct mm_struct *mm;
} __attribute__((preserve_access_index));

struct linux_binprm {
	const char *filename;
} __attribute__((preserve_access_index));

/* Watched cgroup roots (cgroup id -> 1); a task is reported when any ancestor is one of them. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RG_MAX_WATCHED);
	__type(key, __u64);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rg_watched SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} rg_exec_events SEC(".maps");

/* Events the ring buffer had no room for: reported by the agent, so a loss is never silent. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} rg_exec_drops SEC(".maps");

static __always_inline int in_watched_cgroup(void)
{
	for (int level = 0; level < RG_MAX_CGROUP_DEPTH; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);

		if (!id)
			return 0;
		if (bpf_map_lookup_elem(&rg_watched, &id))
			return 1;
	}
	return 0;
}

static __always_inline struct rg_exec_event *reserve(__u32 type, struct task_struct *task)
{
	struct rg_exec_event *e = bpf_ringbuf_reserve(&rg_exec_events, sizeof(*e), 0);
	__u64 uid_gid;

	if (!e) {
		__u32 zero = 0;
		__u64 *drops = bpf_map_lookup_elem(&rg_exec_drops, &zero);

		if (drops)
			(*drops)++;
		return NULL;
	}
	uid_gid = bpf_get_current_uid_gid();
	e->type = type;
	e->pid = BPF_CORE_READ(task, tgid);
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->uid = (__u32)uid_gid;
	e->gid = uid_gid >> 32;
	e->exit_code = 0;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->ktime_ns = bpf_ktime_get_ns();
	e->flags = 0;
	e->argv_len = 0;
	e->argv_total = 0;
	e->_pad = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->filename[0] = 0;
	return e;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(rg_exec, struct task_struct *task, int old_pid, struct linux_binprm *bprm)
{
	struct rg_exec_event *e;
	unsigned long start, end, total, len;
	long n;

	if (!in_watched_cgroup())
		return 0;
	e = reserve(RG_EV_EXEC, task);
	if (!e)
		return 0;

	n = bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), BPF_CORE_READ(bprm, filename));
	if (n == sizeof(e->filename))
		e->flags |= RG_EXEC_FILENAME_TRUNCATED;

	start = BPF_CORE_READ(task, mm, arg_start);
	end = BPF_CORE_READ(task, mm, arg_end);
	total = end > start ? end - start : 0;
	len = total;
	if (len > RG_ARGV_MAX) {
		len = RG_ARGV_MAX;
		e->flags |= RG_EXEC_ARGV_TRUNCATED;
	}
	/* The new image's argv pages were just written by execve, so this read does not fault. */
	if (len && bpf_probe_read_user(e->argv, len, (void *)start) == 0)
		e->argv_len = len;
	e->argv_total = total > 0xffffffff ? 0xffffffff : total;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(rg_exit, struct task_struct *task)
{
	struct rg_exec_event *e;

	/* One event per process, not per thread. */
	if (BPF_CORE_READ(task, pid) != BPF_CORE_READ(task, tgid))
		return 0;
	if (!in_watched_cgroup())
		return 0;
	e = reserve(RG_EV_EXIT, task);
	if (!e)
		return 0;
	e->exit_code = BPF_CORE_READ(task, exit_code);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
