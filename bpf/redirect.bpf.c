// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Transparent redirect of a watched job's TCP connections to the agent's proxy.
 *
 *   connect4/6     decide by the intercept rules; record who asked for what under the socket cookie;
 *                  rewrite the destination to the proxy on loopback.
 *   sockops        once the handshake completes, the job's local addr:port is known: publish the
 *                  record under it, which is all the proxy can see of the job's socket on accept().
 *   getpeername4/6 hand the job back the peer it asked for, so nothing in the job can tell.
 *
 * These programs are attached to watched cgroups only; everything else on the host is untouched.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "runguard.h"

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define TCP_CLOSE 7

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rg_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rg_config SEC(".maps");

/* Socket cookie -> origin: read by getpeername for the life of the job's socket. LRU so that a
 * socket whose close we never saw cannot exhaust the map; sockops deletes on close in the common case. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, RG_MAX_CONNS);
	__type(key, __u64);
	__type(value, struct rg_origin);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rg_origins SEC(".maps");

/* Job socket's local addr:port -> origin: read (and deleted) by the proxy on accept(). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, RG_MAX_CONNS);
	__type(key, struct rg_addr_key);
	__type(value, struct rg_origin);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rg_by_addr SEC(".maps");

static __always_inline void v4_mapped(__u32 *dst, __u32 ip4_be)
{
	dst[0] = 0;
	dst[1] = 0;
	dst[2] = bpf_htonl(0x0000ffff);
	dst[3] = ip4_be;
}

static __always_inline int is_v4_mapped(const __u32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

/* First matching rule wins; no match means the connection is left alone. */
static __always_inline int decide(const struct rg_config *cfg, const __u32 *addr, __u16 port)
{
	__u32 n = cfg->nrules;

	for (__u32 i = 0; i < RG_MAX_RULES; i++) {
		if (i >= n)
			break;
		const struct rg_rule *r = &cfg->rules[i];
		const __u32 *ra = (const __u32 *)r->addr;
		const __u32 *rm = (const __u32 *)r->mask;

		if ((addr[0] & rm[0]) != ra[0] || (addr[1] & rm[1]) != ra[1] ||
		    (addr[2] & rm[2]) != ra[2] || (addr[3] & rm[3]) != ra[3])
			continue;
		if (r->port && r->port != port)
			continue;
		return r->action;
	}
	return RG_RULE_BYPASS;
}

/*
 * Returns 1 to let connect() proceed (rewritten or not), 0 to fail it with EPERM. The proxy address
 * itself is never intercepted, which also makes a second program on a nested watched cgroup a no-op.
 */
static __always_inline int intercept(struct bpf_sock_addr *ctx, const __u32 *addr, __u16 port,
				     __u16 family, int *redirect)
{
	__u32 zero = 0;
	struct rg_config *cfg;
	struct rg_origin o = {};
	__u64 pid_tgid, uid_gid;

	*redirect = 0;
	if (ctx->type != SOCK_STREAM)
		return 1;
	cfg = bpf_map_lookup_elem(&rg_config, &zero);
	if (!cfg)
		return 1;
	if (cfg->agent_cgroup_id && bpf_get_current_cgroup_id() == cfg->agent_cgroup_id)
		return 1;
	if (port == cfg->proxy_port && addr[0] == 0 && addr[1] == 0 &&
	    ((addr[2] == bpf_htonl(0x0000ffff) && addr[3] == bpf_htonl(0x7f000001)) ||
	     (addr[2] == 0 && addr[3] == bpf_htonl(1))))
		return 1;
	if (decide(cfg, addr, port) != RG_RULE_INTERCEPT)
		return 1;
	/* Fail closed: with the agent down nothing may reach an intercepted target unaudited. */
	if (cfg->state != RG_STATE_UP)
		return 0;

	__builtin_memcpy(o.addr, addr, 16);
	o.port = port;
	o.family = family;
	pid_tgid = bpf_get_current_pid_tgid();
	uid_gid = bpf_get_current_uid_gid();
	o.pid = pid_tgid >> 32;
	o.tid = (__u32)pid_tgid;
	o.uid = (__u32)uid_gid;
	o.gid = uid_gid >> 32;
	o.cgroup_id = bpf_get_current_cgroup_id();
	o.cookie = bpf_get_socket_cookie(ctx);
	bpf_get_current_comm(o.comm, sizeof(o.comm));
	/* A redirect the proxy could not attribute would be an unaudited connection: refuse instead. */
	if (bpf_map_update_elem(&rg_origins, &o.cookie, &o, BPF_ANY))
		return 0;
	*redirect = cfg->proxy_port;
	return 1;
}

SEC("cgroup/connect4")
int rg_connect4(struct bpf_sock_addr *ctx)
{
	__u32 addr[4];
	int proxy_port, verdict;

	v4_mapped(addr, ctx->user_ip4);
	verdict = intercept(ctx, addr, bpf_ntohs(ctx->user_port), 4, &proxy_port);
	if (proxy_port) {
		ctx->user_ip4 = bpf_htonl(0x7f000001);
		ctx->user_port = bpf_htons(proxy_port);
	}
	return verdict;
}

SEC("cgroup/connect6")
int rg_connect6(struct bpf_sock_addr *ctx)
{
	__u32 addr[4];
	int proxy_port, verdict;

	addr[0] = ctx->user_ip6[0];
	addr[1] = ctx->user_ip6[1];
	addr[2] = ctx->user_ip6[2];
	addr[3] = ctx->user_ip6[3];
	verdict = intercept(ctx, addr, bpf_ntohs(ctx->user_port), 6, &proxy_port);
	if (proxy_port) {
		/* An IPv4-mapped destination stays IPv4 on the wire, so it goes to the v4 listener. */
		int mapped = is_v4_mapped(addr);

		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = mapped ? bpf_htonl(0x0000ffff) : 0;
		ctx->user_ip6[3] = mapped ? bpf_htonl(0x7f000001) : bpf_htonl(1);
		ctx->user_port = bpf_htons(proxy_port);
	}
	return verdict;
}

SEC("cgroup/getpeername4")
int rg_getpeername4(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct rg_origin *o = bpf_map_lookup_elem(&rg_origins, &cookie);

	if (o) {
		ctx->user_ip4 = ((__u32 *)o->addr)[3];
		ctx->user_port = bpf_htons(o->port);
	}
	return 1;
}

SEC("cgroup/getpeername6")
int rg_getpeername6(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct rg_origin *o = bpf_map_lookup_elem(&rg_origins, &cookie);

	if (o) {
		const __u32 *a = (const __u32 *)o->addr;

		ctx->user_ip6[0] = a[0];
		ctx->user_ip6[1] = a[1];
		ctx->user_ip6[2] = a[2];
		ctx->user_ip6[3] = a[3];
		ctx->user_port = bpf_htons(o->port);
	}
	return 1;
}

static __always_inline void local_key(struct bpf_sock_ops *skops, struct rg_addr_key *k)
{
	__u32 *a = (__u32 *)k->addr;

	if (skops->family == AF_INET) {
		v4_mapped(a, skops->local_ip4);
	} else {
		/* For a v4 connection on an AF_INET6 socket this is already the mapped form. */
		a[0] = skops->local_ip6[0];
		a[1] = skops->local_ip6[1];
		a[2] = skops->local_ip6[2];
		a[3] = skops->local_ip6[3];
	}
	k->port = (__u16)skops->local_port;
	k->_pad = 0;
}

SEC("sockops")
int rg_sockops(struct bpf_sock_ops *skops)
{
	struct rg_addr_key key = {};
	struct rg_origin *o;
	__u64 cookie;

	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		cookie = bpf_get_socket_cookie(skops);
		o = bpf_map_lookup_elem(&rg_origins, &cookie);
		if (!o)
			return 1;
		/* Runs before the final ACK leaves, so the entry exists before the proxy can accept(). */
		local_key(skops, &key);
		bpf_map_update_elem(&rg_by_addr, &key, o, BPF_ANY);
		bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] != TCP_CLOSE)
			return 1;
		cookie = bpf_get_socket_cookie(skops);
		bpf_map_delete_elem(&rg_origins, &cookie);
		local_key(skops, &key);
		bpf_map_delete_elem(&rg_by_addr, &key);
		break;
	}
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
