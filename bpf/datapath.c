/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * datapath.c: the tc programs of the node (DESIGN "Datapath mechanics", SEMANTICS 2-3).
 *
 *   from_pod     tc ingress of a local pod's host-side device: what the pod sends, so its
 *                egress policy; also the ingress redirect of a same-node destination,
 *                because bpf_sk_assign only works at a tc ingress hook.
 *   to_pod       tc egress of that device: what the pod receives, so its ingress policy
 *                (except the redirect, decided where the packet entered the node).
 *   from_netdev  tc ingress of the node's uplink: the ingress redirect of traffic from other
 *                nodes, and steering the replies of flows a local proxy opened on behalf
 *                of a local pod (they carry the pod's address) to the proxy's socket.
 *
 * Everything the programs know comes from the maps of datapath.h, which node-agent
 * programs; a packet the programs cannot place is dropped, never passed unchecked.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "datapath.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* ---------------------------------------------------------------------------------------
 * Maps (names and sizes from datapath.h; node-agent pins them by these names).
 * ------------------------------------------------------------------------------------- */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, DP_IPCACHE_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} dp_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_value);
	__uint(max_entries, DP_ENDPOINTS_MAX_ENTRIES);
} dp_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct local_ip_key);
	__type(value, struct endpoint_key);
	__uint(max_entries, DP_LOCAL_IPS_MAX_ENTRIES);
} dp_local_ips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(max_entries, DP_POLICY_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} dp_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
	__uint(max_entries, DP_CT_MAX_ENTRIES);
} dp_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, DP_EVENTS_RING_BYTES);
} dp_events SEC(".maps");

/* ---------------------------------------------------------------------------------------
 * Packet parsing
 * ------------------------------------------------------------------------------------- */
#define IPPROTO_ICMPV6_ 58
#define ICMP_ECHO_REPLY 0
#define ICMP_ECHO_REQUEST 8
#define ICMPV6_ECHO_REQUEST_ 128
#define ICMPV6_ECHO_REPLY_ 129
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04

struct pkt {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	/* The port the policy is looked up with: dport, or 0 where ports do not apply (ICMP,
	 * later fragments) so that only every-port entries match. */
	__be16 policy_port;
	__u8 family;
	__u8 protocol;
	__u8 tcp_flags;
	/* IPv6 neighbour discovery and link-local control traffic: always passes, a pod
	 * without it cannot reach its gateway. */
	__u8 link_control;
	__u8 pad[2];
};

enum parse_result { PARSE_NOT_IP = 0, PARSE_OK = 1, PARSE_BAD = -1 };

static __always_inline void copy16(__u8 *dst, const __u8 *src)
{
	__builtin_memcpy(dst, src, 16);
}

static __always_inline int equal16(const __u8 *a, const __u8 *b)
{
	__u64 a0, a1, b0, b1;
	__builtin_memcpy(&a0, a, 8);
	__builtin_memcpy(&a1, a + 8, 8);
	__builtin_memcpy(&b0, b, 8);
	__builtin_memcpy(&b1, b + 8, 8);
	return a0 == b0 && a1 == b1;
}

/* Reads the L4 header at `l4` (ports, TCP flags, ICMP echo id). `later_fragment` means the
 * L4 header is not in this packet. */
static __always_inline int parse_l4(void *l4, void *end, struct pkt *p, int later_fragment)
{
	if (later_fragment)
		return PARSE_OK;
	switch (p->protocol) {
	case IPPROTO_TCP: {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > end)
			return PARSE_BAD;
		p->sport = th->source;
		p->dport = th->dest;
		p->policy_port = th->dest;
		p->tcp_flags = ((__u8 *)th)[13];
		return PARSE_OK;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		/* SCTP's common header starts with the same two ports. */
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > end)
			return PARSE_BAD;
		p->sport = uh->source;
		p->dport = uh->dest;
		p->policy_port = uh->dest;
		return PARSE_OK;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6_: {
		__u8 *icmp = l4;
		if ((void *)(icmp + 8) > end)
			return PARSE_BAD;
		__u8 type = icmp[0];
		int echo = p->protocol == IPPROTO_ICMP
				   ? (type == ICMP_ECHO_REQUEST || type == ICMP_ECHO_REPLY)
				   : (type == ICMPV6_ECHO_REQUEST_ || type == ICMPV6_ECHO_REPLY_);
		if (echo) {
			/* The echo id in both ports, so the reply's swapped tuple matches. */
			__be16 id;
			__builtin_memcpy(&id, icmp + 4, 2);
			p->sport = id;
			p->dport = id;
		}
		/* Multicast listener queries and reports (130-132, 143), router and neighbour
		 * solicitation and advertisement, redirect (133-137): the link's own control
		 * traffic, sent from link-local or unspecified addresses. */
		if (p->protocol == IPPROTO_ICMPV6_ &&
		    ((type >= 130 && type <= 137) || type == 143))
			p->link_control = 1;
		return PARSE_OK;
	}
	default:
		return PARSE_OK;
	}
}

static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	__builtin_memset(p, 0, sizeof(*p));
	if ((void *)(eth + 1) > end)
		return PARSE_NOT_IP;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return PARSE_BAD;
		if (ip->ihl < 5)
			return PARSE_BAD;
		p->family = DP_FAMILY_IPV4;
		p->protocol = ip->protocol;
		__builtin_memcpy(p->saddr, &ip->saddr, 4);
		__builtin_memcpy(p->daddr, &ip->daddr, 4);
		int later_fragment = (ip->frag_off & bpf_htons(0x1fff)) != 0;
		void *l4 = (void *)ip + ip->ihl * 4;
		return parse_l4(l4, end, p, later_fragment);
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return PARSE_BAD;
		p->family = DP_FAMILY_IPV6;
		/* Extension headers are not walked: a packet with one is matched by its first
		 * next-header value and port 0, which only every-port entries allow. */
		p->protocol = ip6->nexthdr;
		copy16(p->saddr, (__u8 *)&ip6->saddr);
		copy16(p->daddr, (__u8 *)&ip6->daddr);
		return parse_l4(ip6 + 1, end, p, 0);
	}
	return PARSE_NOT_IP;
}

/* ---------------------------------------------------------------------------------------
 * Lookups
 * ------------------------------------------------------------------------------------- */
static __always_inline __u32 identity_of(__u8 family, const __u8 *addr)
{
	struct ipcache_key key = {};
	key.family = family;
	copy16(key.addr, addr);
	key.prefixlen = DP_IPCACHE_STATIC_PREFIX + (family == DP_FAMILY_IPV4 ? 32 : 128);
	struct ipcache_value *v = bpf_map_lookup_elem(&dp_ipcache, &key);
	/* A miss is the outside world, never a local identity (see datapath.h). */
	return v ? v->identity : DP_IDENTITY_WORLD;
}

static __always_inline struct endpoint_value *local_endpoint_of(__u8 family, const __u8 *addr,
								 __u32 *ifindex)
{
	struct local_ip_key key = {};
	key.family = family;
	copy16(key.addr, addr);
	struct endpoint_key *ek = bpf_map_lookup_elem(&dp_local_ips, &key);
	if (!ek)
		return 0;
	*ifindex = ek->ifindex;
	return bpf_map_lookup_elem(&dp_endpoints, ek);
}

struct verdict {
	/* DP_ACT_ALLOW, DP_ACT_REDIRECT or DP_ACT_DENY after defaults and visibility. */
	__u8 action;
	/* DP_DROP_* when action is DP_ACT_DENY. */
	__u8 reason;
	__u8 match;
	__u8 pad;
	__u16 proxy_port;
};

static __always_inline __u8 match_kind(struct policy_value *v, int wildcard_identity)
{
	if (v->l4_prefixlen == 0)
		return wildcard_identity ? DP_MATCH_ALL : DP_MATCH_L3_ONLY;
	return wildcard_identity ? DP_MATCH_L4_ONLY : DP_MATCH_L3_L4;
}

/* The lookup order of datapath.h's policy map comment, steps 1-4. */
static __always_inline void decide(const struct endpoint_value *ep, __u8 direction,
				   __u32 remote, const struct pkt *p, struct verdict *out)
{
	struct policy_key key = {};
	key.prefixlen = DP_POLICY_STATIC_PREFIX + 24;
	key.endpoint_id = ep->endpoint_id;
	key.direction = direction;
	key.identity = remote;
	key.protocol = p->protocol;
	key.dport = p->policy_port;
	struct policy_value *a = bpf_map_lookup_elem(&dp_policy, &key);
	key.identity = DP_IDENTITY_ANY;
	struct policy_value *b = bpf_map_lookup_elem(&dp_policy, &key);

	__u8 aa = a ? a->action : DP_ACT_NONE;
	__u8 ba = b ? b->action : DP_ACT_NONE;
	__u8 action = aa > ba ? aa : ba;

	__builtin_memset(out, 0, sizeof(*out));
	if (action == DP_ACT_NONE) {
		__u16 flag = direction == DP_DIR_INGRESS ? DP_EP_INGRESS_DEFAULT_DENY
							 : DP_EP_EGRESS_DEFAULT_DENY;
		out->match = DP_MATCH_NONE;
		if (ep->flags & flag) {
			out->action = DP_ACT_DENY;
			out->reason = DP_DROP_DEFAULT_DENY;
			return;
		}
		out->action = DP_ACT_ALLOW;
	} else {
		out->action = action;
		if (a && aa == action) {
			out->match = match_kind(a, 0);
			out->proxy_port = a->proxy_port;
		} else if (b) {
			out->match = match_kind(b, 1);
			out->proxy_port = b->proxy_port;
		}
		if (action == DP_ACT_DENY) {
			out->reason = DP_DROP_POLICY_DENIED;
			out->proxy_port = 0;
			return;
		}
	}
	if (out->action == DP_ACT_ALLOW)
		out->proxy_port = 0;
	if (out->action == DP_ACT_REDIRECT && out->proxy_port == 0) {
		/* A redirect without a proxy port cannot be honoured: fail closed. */
		out->action = DP_ACT_DENY;
		out->reason = DP_DROP_PROXY_DOWN;
	}
}

/* ---------------------------------------------------------------------------------------
 * Events
 * ------------------------------------------------------------------------------------- */
static __always_inline void emit(struct __sk_buff *skb, __u8 type, __u8 direction,
				 const struct pkt *p, const struct verdict *v, __u16 endpoint_id,
				 __u32 src_identity, __u32 dst_identity)
{
	struct dp_event *e = bpf_ringbuf_reserve(&dp_events, sizeof(*e), 0);
	if (!e)
		return;
	__builtin_memset(e, 0, sizeof(*e));
	e->timestamp_ns = bpf_ktime_get_ns();
	e->type = type;
	e->reason = type == DP_EVENT_DROP ? v->reason : 0;
	e->action = v->action;
	e->match = v->match;
	e->direction = direction;
	e->family = p->family;
	e->protocol = p->protocol;
	e->ifindex = skb->ifindex;
	e->endpoint_id = endpoint_id;
	e->proxy_port = v->action == DP_ACT_REDIRECT ? v->proxy_port : 0;
	e->src_identity = src_identity;
	e->dst_identity = dst_identity;
	e->sport = p->sport;
	e->dport = p->dport;
	copy16(e->saddr, p->saddr);
	copy16(e->daddr, p->daddr);
	/* Waking the reader costs an interrupt per event (an IPI to the submitting CPU), the
	 * largest per-flow cost of the events under connection churn. Only drops wake it at
	 * once; verdicts wait for the reader's next periodic drain unless a quarter of the
	 * ring is already full. */
	__u64 wake = BPF_RB_NO_WAKEUP;
	if (type == DP_EVENT_DROP ||
	    bpf_ringbuf_query(&dp_events, BPF_RB_AVAIL_DATA) > DP_EVENTS_RING_BYTES / 4)
		wake = 0;
	bpf_ringbuf_submit(e, wake);
}

/* A policy-verdict event for a new flow, except flows no policy entry decided and that the
 * direction's default allows (pods no policy selects): like Cilium, verdicts are reported
 * where policy is in force, not for all traffic. */
static __always_inline void emit_verdict(struct __sk_buff *skb, __u8 direction,
					 const struct pkt *p, const struct verdict *v,
					 __u16 endpoint_id, __u32 src_identity, __u32 dst_identity)
{
	if (v->match == DP_MATCH_NONE && v->action == DP_ACT_ALLOW)
		return;
	emit(skb, DP_EVENT_POLICY_VERDICT, direction, p, v, endpoint_id, src_identity,
	     dst_identity);
}

static __always_inline int drop(struct __sk_buff *skb, __u8 direction, const struct pkt *p,
				const struct verdict *v, __u16 endpoint_id, __u32 src_identity,
				__u32 dst_identity)
{
	emit(skb, DP_EVENT_DROP, direction, p, v, endpoint_id, src_identity, dst_identity);
	return TC_ACT_SHOT;
}

/* ---------------------------------------------------------------------------------------
 * Connection tracking
 * ------------------------------------------------------------------------------------- */
static __always_inline void ct_key_of(const struct pkt *p, __u8 direction, int swapped,
				      struct ct_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	if (swapped) {
		copy16(k->saddr, p->daddr);
		copy16(k->daddr, p->saddr);
		k->sport = p->dport;
		k->dport = p->sport;
	} else {
		copy16(k->saddr, p->saddr);
		copy16(k->daddr, p->daddr);
		k->sport = p->sport;
		k->dport = p->dport;
	}
	k->protocol = p->protocol;
	k->direction = direction;
	k->family = p->family;
}

/* The conntrack timeouts are minutes to hours, so last_seen is written at most once a
 * second: a write per packet would move the entry's cache line between CPUs on every
 * packet of a busy flow. */
#define CT_TOUCH_INTERVAL_NS 1000000000ULL

static __always_inline void ct_touch(struct ct_value *v, const struct pkt *p, int reply)
{
	__u64 now = bpf_ktime_get_ns();
	if (now - v->last_seen_ns > CT_TOUCH_INTERVAL_NS)
		v->last_seen_ns = now;
	__u8 flags = v->flags;
	if (reply)
		flags |= DP_CT_F_REPLY_SEEN;
	if (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		flags |= DP_CT_F_CLOSING;
	if (flags != v->flags)
		v->flags = flags;
}

static __always_inline void ct_create(const struct pkt *p, __u8 direction, __u32 remote,
				      const struct verdict *v, __u8 flags)
{
	struct ct_key k;
	struct ct_value val = {};
	ct_key_of(p, direction, 0, &k);
	val.last_seen_ns = bpf_ktime_get_ns();
	val.remote_identity = remote;
	val.action = v->action;
	val.proxy_port = v->action == DP_ACT_REDIRECT ? v->proxy_port : 0;
	val.flags = flags;
	bpf_map_update_elem(&dp_ct, &k, &val, BPF_ANY);
}

/* ---------------------------------------------------------------------------------------
 * Steering to local sockets (DESIGN "Datapath mechanics")
 * ------------------------------------------------------------------------------------- */
static __always_inline __u32 tuple_of(const struct pkt *p, struct bpf_sock_tuple *t)
{
	__builtin_memset(t, 0, sizeof(*t));
	if (p->family == DP_FAMILY_IPV4) {
		__builtin_memcpy(&t->ipv4.saddr, p->saddr, 4);
		__builtin_memcpy(&t->ipv4.daddr, p->daddr, 4);
		t->ipv4.sport = p->sport;
		t->ipv4.dport = p->dport;
		return sizeof(t->ipv4);
	}
	__builtin_memcpy(t->ipv6.saddr, p->saddr, 16);
	__builtin_memcpy(t->ipv6.daddr, p->daddr, 16);
	t->ipv6.sport = p->sport;
	t->ipv6.dport = p->dport;
	return sizeof(t->ipv6);
}

static __always_inline void set_to_proxy_mark(struct __sk_buff *skb)
{
	skb->mark = (skb->mark & ~DP_MARK_MASK) | DP_MARK_TO_PROXY;
}

/* Hands the packet to the local socket that already owns its 4-tuple (an accepted proxy
 * connection, or a proxy's upstream connection the packet replies to). Listeners and
 * TIME_WAIT sockets do not count; for UDP only connected sockets do, so a socket bound to
 * a wildcard address in the node cannot capture a pod's traffic. Returns 1 if assigned. */
static __always_inline int assign_established(struct __sk_buff *skb, const struct pkt *p)
{
	struct bpf_sock_tuple t;
	__u32 size = tuple_of(p, &t);
	struct bpf_sock *sk;

	if (p->protocol == IPPROTO_TCP) {
		sk = bpf_skc_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return 0;
		if (sk->state == BPF_TCP_LISTEN || sk->state == BPF_TCP_TIME_WAIT) {
			bpf_sk_release(sk);
			return 0;
		}
	} else if (p->protocol == IPPROTO_UDP) {
		sk = bpf_sk_lookup_udp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return 0;
		if (sk->dst_port == 0) {
			bpf_sk_release(sk);
			return 0;
		}
	} else {
		return 0;
	}
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return 0;
	set_to_proxy_mark(skb);
	return 1;
}

/* Steers a packet of a redirected flow to the proxy: the flow's own socket if the proxy
 * already accepted it (without this the handshake's last ACK would reach the listener and
 * the connection would never complete), else the proxy's listener on `proxy_port`.
 * Returns 0 on success, -1 when no proxy socket exists (the caller drops: fail closed). */
static __always_inline int redirect_to_proxy(struct __sk_buff *skb, const struct pkt *p,
					     __u16 proxy_port)
{
	if (assign_established(skb, p))
		return 0;

	struct bpf_sock_tuple t;
	__u32 size = tuple_of(p, &t);
	if (p->family == DP_FAMILY_IPV4)
		t.ipv4.dport = bpf_htons(proxy_port);
	else
		t.ipv6.dport = bpf_htons(proxy_port);

	struct bpf_sock *sk;
	if (p->protocol == IPPROTO_TCP) {
		sk = bpf_skc_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return -1;
		if (sk->state != BPF_TCP_LISTEN) {
			bpf_sk_release(sk);
			return -1;
		}
	} else if (p->protocol == IPPROTO_UDP) {
		sk = bpf_sk_lookup_udp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return -1;
	} else {
		return -1;
	}
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return -1;
	set_to_proxy_mark(skb);
	return 0;
}

/* ---------------------------------------------------------------------------------------
 * Programs
 * ------------------------------------------------------------------------------------- */
static __always_inline struct endpoint_value *endpoint_of_device(struct __sk_buff *skb)
{
	struct endpoint_key key = { .ifindex = skb->ifindex };
	return bpf_map_lookup_elem(&dp_endpoints, &key);
}

static __always_inline int source_is_pod(const struct endpoint_value *ep, const struct pkt *p)
{
	if (p->family == DP_FAMILY_IPV4) {
		if (!(ep->flags & DP_EP_HAS_IPV4))
			return 0;
		__u32 a, b;
		__builtin_memcpy(&a, p->saddr, 4);
		__builtin_memcpy(&b, ep->ipv4, 4);
		return a == b;
	}
	if (!(ep->flags & DP_EP_HAS_IPV6))
		return 0;
	return equal16(p->saddr, ep->ipv6);
}

SEC("classifier")
int from_pod(struct __sk_buff *skb)
{
	struct endpoint_value *ep = endpoint_of_device(skb);
	/* Attached but not (or no longer) programmed: nothing says this traffic is allowed. */
	if (!ep)
		return TC_ACT_SHOT;

	struct pkt p;
	int parsed = parse(skb, &p);
	if (parsed == PARSE_NOT_IP)
		return TC_ACT_OK;
	if (parsed == PARSE_BAD || p.link_control)
		return parsed == PARSE_BAD ? TC_ACT_SHOT : TC_ACT_OK;

	struct verdict v = {};
	if (!source_is_pod(ep, &p)) {
		v.action = DP_ACT_DENY;
		v.reason = DP_DROP_SPOOFED_SOURCE;
		return drop(skb, DP_DIR_EGRESS, &p, &v, ep->endpoint_id, ep->identity, 0);
	}

	struct ct_key k;
	/* A reply of a flow the pod receives. */
	ct_key_of(&p, DP_DIR_INGRESS, 1, &k);
	struct ct_value *ct = bpf_map_lookup_elem(&dp_ct, &k);
	if (ct) {
		ct_touch(ct, &p, 1);
		if (ct->flags & DP_CT_F_PROXY_SOURCED) {
			/* The flow was opened by a proxy of this node with the client's address:
			 * the reply belongs to the proxy's socket, not to the client. */
			return assign_established(skb, &p) ? TC_ACT_OK : TC_ACT_SHOT;
		}
		return TC_ACT_OK;
	}
	/* A packet of a flow the pod opened. */
	ct_key_of(&p, DP_DIR_EGRESS, 0, &k);
	ct = bpf_map_lookup_elem(&dp_ct, &k);
	if (ct) {
		ct_touch(ct, &p, 0);
		if (ct->action != DP_ACT_REDIRECT)
			return TC_ACT_OK;
		if (redirect_to_proxy(skb, &p, ct->proxy_port) == 0)
			return TC_ACT_OK;
		v.action = DP_ACT_DENY;
		v.reason = DP_DROP_PROXY_DOWN;
		return drop(skb, DP_DIR_EGRESS, &p, &v, ep->endpoint_id, ep->identity,
			    ct->remote_identity);
	}

	/* A new flow: the pod's egress policy. */
	__u32 remote = identity_of(p.family, p.daddr);
	decide(ep, DP_DIR_EGRESS, remote, &p, &v);
	if (v.action == DP_ACT_DENY)
		return drop(skb, DP_DIR_EGRESS, &p, &v, ep->endpoint_id, ep->identity, remote);

	if (v.action == DP_ACT_ALLOW) {
		/* A same-node destination whose ingress goes through the proxy: redirect here,
		 * the last tc ingress hook the packet crosses. Its other verdicts are left to
		 * the destination's to_pod. */
		__u32 dst_ifindex = 0;
		struct endpoint_value *dst = local_endpoint_of(p.family, p.daddr, &dst_ifindex);
		if (dst) {
			struct verdict in = {};
			decide(dst, DP_DIR_INGRESS, ep->identity, &p, &in);
			if (in.action == DP_ACT_REDIRECT) {
				if (redirect_to_proxy(skb, &p, in.proxy_port) != 0) {
					in.action = DP_ACT_DENY;
					in.reason = DP_DROP_PROXY_DOWN;
					return drop(skb, DP_DIR_INGRESS, &p, &in, dst->endpoint_id,
						    ep->identity, dst->identity);
				}
				emit_verdict(skb, DP_DIR_INGRESS, &p, &in,
				     dst->endpoint_id, ep->identity, dst->identity);
				ct_create(&p, DP_DIR_EGRESS, remote, &in, 0);
				emit_verdict(skb, DP_DIR_EGRESS, &p, &v,
				     ep->endpoint_id, ep->identity, remote);
				return TC_ACT_OK;
			}
		}
	} else if (redirect_to_proxy(skb, &p, v.proxy_port) != 0) {
		v.action = DP_ACT_DENY;
		v.reason = DP_DROP_PROXY_DOWN;
		return drop(skb, DP_DIR_EGRESS, &p, &v, ep->endpoint_id, ep->identity, remote);
	}
	ct_create(&p, DP_DIR_EGRESS, remote, &v, 0);
	emit_verdict(skb, DP_DIR_EGRESS, &p, &v, ep->endpoint_id, ep->identity,
	     remote);
	return TC_ACT_OK;
}

SEC("classifier")
int to_pod(struct __sk_buff *skb)
{
	struct endpoint_value *ep = endpoint_of_device(skb);
	if (!ep)
		return TC_ACT_SHOT;

	struct pkt p;
	int parsed = parse(skb, &p);
	if (parsed == PARSE_NOT_IP)
		return TC_ACT_OK;
	if (parsed == PARSE_BAD || p.link_control)
		return parsed == PARSE_BAD ? TC_ACT_SHOT : TC_ACT_OK;

	struct ct_key k;
	/* A reply of a flow the pod opened (possibly answered by a proxy on its behalf). */
	ct_key_of(&p, DP_DIR_EGRESS, 1, &k);
	struct ct_value *ct = bpf_map_lookup_elem(&dp_ct, &k);
	if (ct) {
		ct_touch(ct, &p, 1);
		return TC_ACT_OK;
	}
	ct_key_of(&p, DP_DIR_INGRESS, 0, &k);
	ct = bpf_map_lookup_elem(&dp_ct, &k);
	if (ct) {
		ct_touch(ct, &p, 0);
		return TC_ACT_OK;
	}

	/* A new flow: the pod's ingress policy, with the identity of the packet's source
	 * address (a proxy keeps the original client's address, so it is the client's). */
	__u32 remote = identity_of(p.family, p.saddr);
	struct verdict v = {};
	decide(ep, DP_DIR_INGRESS, remote, &p, &v);
	if (v.action == DP_ACT_DENY)
		return drop(skb, DP_DIR_INGRESS, &p, &v, ep->endpoint_id, remote, ep->identity);

	__u32 mark = skb->mark & DP_MARK_MASK;
	if (v.action == DP_ACT_REDIRECT) {
		/* Only the ingress proxy has enforced this endpoint's L7 rules; anything else
		 * (the host, the egress proxy) would bypass them. */
		if (mark != DP_MARK_FROM_INGRESS_PROXY) {
			v.action = DP_ACT_DENY;
			v.reason = DP_DROP_NO_REDIRECT_PATH;
			return drop(skb, DP_DIR_INGRESS, &p, &v, ep->endpoint_id, remote,
				    ep->identity);
		}
	}
	if (mark == DP_MARK_FROM_PROXY || mark == DP_MARK_FROM_INGRESS_PROXY) {
		/* The proxy's leg of a flow whose verdict was reported where it was redirected:
		 * no second verdict event for it. */
		ct_create(&p, DP_DIR_INGRESS, remote, &v, DP_CT_F_PROXY_SOURCED);
		return TC_ACT_OK;
	}
	ct_create(&p, DP_DIR_INGRESS, remote, &v, 0);
	emit_verdict(skb, DP_DIR_INGRESS, &p, &v, ep->endpoint_id, remote,
	     ep->identity);
	return TC_ACT_OK;
}

SEC("classifier")
int from_netdev(struct __sk_buff *skb)
{
	struct pkt p;
	int parsed = parse(skb, &p);
	if (parsed != PARSE_OK || p.link_control)
		return TC_ACT_OK;

	__u32 dst_ifindex = 0;
	struct endpoint_value *dst = local_endpoint_of(p.family, p.daddr, &dst_ifindex);
	if (!dst)
		return TC_ACT_OK;

	/* A reply to a local proxy's upstream connection (made with a local pod's address),
	 * or a later packet of a flow already redirected to the ingress proxy. */
	if (assign_established(skb, &p))
		return TC_ACT_OK;

	__u32 remote = identity_of(p.family, p.saddr);
	struct verdict v = {};
	decide(dst, DP_DIR_INGRESS, remote, &p, &v);
	if (v.action != DP_ACT_REDIRECT)
		/* Allow and deny are decided (and reported) by the destination's to_pod. */
		return TC_ACT_OK;
	if (redirect_to_proxy(skb, &p, v.proxy_port) != 0) {
		v.action = DP_ACT_DENY;
		v.reason = DP_DROP_PROXY_DOWN;
		return drop(skb, DP_DIR_INGRESS, &p, &v, dst->endpoint_id, remote, dst->identity);
	}
	emit_verdict(skb, DP_DIR_INGRESS, &p, &v, dst->endpoint_id, remote,
	     dst->identity);
	return TC_ACT_OK;
}
