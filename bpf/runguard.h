/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Layouts shared by the BPF programs and the agent (agent/bpf/layout.ts mirrors them byte for byte;
 * test/unit/bpf-layout.test.ts checks the offsets against the BTF in the compiled objects).
 * Every address is 16 bytes: IPv4 is stored IPv4-mapped (::ffff:a.b.c.d) so one key type serves
 * both families and a v4 connect made through an AF_INET6 socket finds the same entry.
 */
#ifndef RUNGUARD_H
#define RUNGUARD_H

#define RG_MAX_RULES 64         /* intercept rules evaluated per connect(), first match wins */
#define RG_MAX_WATCHED 256      /* watched cgroup roots the exec tracer reports on */
#define RG_MAX_CGROUP_DEPTH 32  /* ancestor levels walked to find a watched root */
#define RG_MAX_CONNS 65536      /* in-flight redirected sockets tracked at once */
#define RG_ARGV_MAX 2048        /* bytes of argv copied per exec; more is flagged, never silently cut */
#define RG_FILENAME_MAX 256

#define RG_RULE_INTERCEPT 1
#define RG_RULE_BYPASS 2

#define RG_STATE_DOWN 0         /* agent stopped: watched connects to intercepted targets fail (EPERM) */
#define RG_STATE_UP 1

struct rg_rule {
	__u8 addr[16];
	__u8 mask[16];
	__u16 port;             /* host order; 0 matches any port */
	__u8 action;            /* RG_RULE_* */
	__u8 _pad[5];
};

/* Single-entry array: written by the agent, read on every connect(). */
struct rg_config {
	__u32 state;            /* RG_STATE_* */
	__u16 proxy_port;       /* host order; the agent's listener on 127.0.0.1 and ::1 */
	__u16 nrules;
	__u64 agent_cgroup_id;  /* connects from this cgroup are never redirected */
	struct rg_rule rules[RG_MAX_RULES];
};

/* Key of a redirected socket as the proxy sees it: the job socket's local address and port. */
struct rg_addr_key {
	__u8 addr[16];
	__u16 port;             /* host order */
	__u16 _pad;
};

/* What the job asked for and who asked, recorded at connect() time. */
struct rg_origin {
	__u8 addr[16];          /* original destination */
	__u16 port;             /* host order */
	__u16 family;           /* 4 or 6: the family of the job's socket */
	__u32 pid;              /* thread-group id */
	__u32 tid;
	__u32 uid;
	__u32 gid;
	__u32 _pad;
	__u64 cgroup_id;
	__u64 cookie;           /* socket cookie of the job's socket */
	char comm[16];
};

#define RG_EV_EXEC 1
#define RG_EV_EXIT 2

#define RG_EXEC_ARGV_TRUNCATED 1
#define RG_EXEC_FILENAME_TRUNCATED 2

struct rg_exec_event {
	__u32 type;             /* RG_EV_* */
	__u32 pid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__s32 exit_code;        /* exit: the raw wait status (code << 8 | signal) */
	__u64 cgroup_id;
	__u64 ktime_ns;
	__u32 flags;            /* RG_EXEC_* */
	__u32 argv_len;         /* bytes valid in argv (NUL-separated) */
	__u32 argv_total;       /* bytes the process really had */
	__u32 _pad;
	char comm[16];
	char filename[RG_FILENAME_MAX];
	char argv[RG_ARGV_MAX];
};

#endif
