/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * datapath.h: the ONE definition of what the BPF programs and node-agent exchange through
 * maps and the event ring buffer. node-agent/src/datapath/abi.rs mirrors every struct here
 * field by field (#[repr(C)], same names); its test compiles bpf/layout_probe.c against this
 * header and checks that every size and offset agrees. Change both together.
 *
 * Rules for every struct here:
 * - fixed-width types only, every hole filled by an explicit `pad*` field that is always
 *   written as zero: hash and LPM-trie maps compare keys as raw bytes, so an uninitialised
 *   hole would make two equal keys differ;
 * - `_Static_assert` on the size, so a change that moves a field fails to compile here
 *   before it silently breaks the Rust side;
 * - byte order: addresses and ports are kept in network byte order (as on the wire, so the
 *   programs copy them without conversion and LPM prefixes over them work); everything else
 *   (identities, endpoint ids, ifindexes, proxy ports, timestamps) is in host byte order.
 */
#ifndef DATAPATH_H
#define DATAPATH_H

#include <linux/types.h>

/* ---------------------------------------------------------------------------------------
 * Shared constants
 * ------------------------------------------------------------------------------------- */

/* Address families as stored in keys and events. Our own small numbers rather than
 * AF_INET/AF_INET6 so that the header needs no libc socket header in BPF builds. */
#define DP_FAMILY_IPV4 4
#define DP_FAMILY_IPV6 6

/* Traffic direction relative to the local endpoint (SEMANTICS 2): egress is what the pod
 * sends (tc ingress hook of its host-side device), ingress is what it receives (tc egress
 * hook of that device). Same values as the policy map's and conntrack's `direction`. */
#define DP_DIR_INGRESS 0
#define DP_DIR_EGRESS 1

/* Reserved identities the programs need to know (SEMANTICS 1.6; identity.rs). 0 is never
 * allocated to anything, which is why the policy map can use it as "any identity". */
#define DP_IDENTITY_ANY 0
#define DP_IDENTITY_HOST 1
#define DP_IDENTITY_WORLD 2
#define DP_IDENTITY_WORLD_IPV4 9
#define DP_IDENTITY_WORLD_IPV6 10

/* Socket/packet mark shared with the proxies (DESIGN "Datapath mechanics"): the programs set
 * DP_MARK_TO_PROXY on packets they steer to a proxy so that the node's policy routing
 * (`ip rule add fwmark DP_MARK_TO_PROXY/DP_MARK_MASK lookup T`) delivers them locally; the
 * proxies set DP_MARK_FROM_PROXY on their upstream sockets so that the programs do not
 * redirect that traffic again. Only the bits under DP_MARK_MASK are ours, so other users of
 * the mark (a CNI, kube-proxy) keep theirs. */
#define DP_MARK_MASK 0x0f00
#define DP_MARK_TO_PROXY 0x0200
/* Upstream traffic of the egress L7 proxy and of the DNS proxy. */
#define DP_MARK_FROM_PROXY 0x0300
/* Upstream traffic of the ingress L7 proxy: the destination's ingress L7 policy has been
 * enforced, so its redirect verdict lets the packet through. Traffic from the egress proxy
 * has only been through the source's egress rules and must not pass a redirect verdict of
 * the destination's ingress. */
#define DP_MARK_FROM_INGRESS_PROXY 0x0400

/* Map names, as pinned under the agent's per-node folder of /sys/fs/bpf, and their sizes.
 * BPF map names are at most 15 characters. */
#define DP_MAP_IPCACHE "dp_ipcache"
#define DP_MAP_ENDPOINTS "dp_endpoints"
#define DP_MAP_POLICY "dp_policy"
#define DP_MAP_CT "dp_ct"
#define DP_MAP_EVENTS "dp_events"
#define DP_MAP_LOCAL_IPS "dp_local_ips"
#define DP_IPCACHE_MAX_ENTRIES 65536
#define DP_ENDPOINTS_MAX_ENTRIES 4096
#define DP_POLICY_MAX_ENTRIES 65536
#define DP_CT_MAX_ENTRIES 262144
#define DP_EVENTS_RING_BYTES (1 << 20)
#define DP_LOCAL_IPS_MAX_ENTRIES 8192

/* ---------------------------------------------------------------------------------------
 * ipcache: BPF_MAP_TYPE_LPM_TRIE, IP prefix -> identity.
 * One map for both families: `family` is part of the matched prefix, so an IPv4 /8 can
 * never match an IPv6 address and vice versa, and the agent programs one map.
 * ------------------------------------------------------------------------------------- */
struct ipcache_key {
	/* LPM tries require the prefix length first. It counts bits from `family` on:
	 * 32 (family + pad, always matched) + the IP prefix length (0..32 or 0..128). */
	__u32 prefixlen;
	/* DP_FAMILY_IPV4 or DP_FAMILY_IPV6. */
	__u8 family;
	/* Zero; inside the always-matched part of the prefix, so it must be zero on both the
	 * agent's entries and the programs' lookups. */
	__u8 pad[3];
	/* Network byte order. IPv4 uses the first 4 bytes and leaves the rest zero; 16 bytes so
	 * that IPv6 fits the same key. */
	__u8 addr[16];
};
_Static_assert(sizeof(struct ipcache_key) == 24, "ipcache_key size");

#define DP_IPCACHE_STATIC_PREFIX 32 /* bits of family + pad */

struct ipcache_value {
	/* Security identity of the prefix (pod, reserved or CIDR identity). The agent installs
	 * 0.0.0.0/0 -> world-ipv4 and ::/0 -> world-ipv6, so lookups do not miss; the programs
	 * still treat a miss as DP_IDENTITY_WORLD (never as a local identity) so that a map
	 * being reprogrammed cannot make an outside address look like a pod. */
	__u32 identity;
};
_Static_assert(sizeof(struct ipcache_value) == 4, "ipcache_value size");

/* ---------------------------------------------------------------------------------------
 * endpoints: BPF_MAP_TYPE_HASH, host-side ifindex -> local endpoint.
 * Keyed by the ifindex of the pod's host-side device, not by pod IP, because:
 * - every program of ours runs on that device (tc ingress = the pod's egress, tc egress =
 *   the pod's ingress), so skb->ifindex finds the endpoint with one lookup before parsing
 *   anything, for IPv4, IPv6 and non-IP alike;
 * - the endpoint a packet belongs to then comes from the device it crossed, not from an
 *   address the pod chose: a pod that spoofs its source address still gets its own egress
 *   policy, and the program can drop the spoofed packet by comparing with ipv4/ipv6 below;
 * - the agent finds the device from the route to the pod IP (DESIGN), so it has the
 *   ifindex anyway. When a pod's device is recreated the agent re-attaches, rewriting the
 *   entry.
 * Traffic for local pods that arrives from other nodes is routed to the pod's device and
 * handled there, so the uplink needs no endpoint lookup by address.
 * ------------------------------------------------------------------------------------- */
struct endpoint_key {
	/* ifindex of the host-side device (in the node's network namespace). */
	__u32 ifindex;
};
_Static_assert(sizeof(struct endpoint_key) == 4, "endpoint_key size");

/* endpoint_value.flags */
/* The direction is enforced (SEMANTICS 2.1): a policy-map miss drops. Without the flag a
 * miss allows, which is also how default-allow rules (2.2) and unselected pods work;
 * deny and redirect entries still apply. */
#define DP_EP_INGRESS_DEFAULT_DENY (1 << 0)
#define DP_EP_EGRESS_DEFAULT_DENY (1 << 1)
/* ipv4 / ipv6 below hold an address (a pod may be single-stack). */
#define DP_EP_HAS_IPV4 (1 << 2)
#define DP_EP_HAS_IPV6 (1 << 3)

struct endpoint_value {
	/* The agent's small number for the endpoint: the first field of every policy key, so
	 * one policy map serves all endpoints of the node; 16 bits as in Cilium. */
	__u16 endpoint_id;
	/* DP_EP_* above. */
	__u16 flags;
	/* The endpoint's own identity: the source identity of its egress and the destination
	 * identity of its ingress, in events and in policy lookups, without an ipcache lookup. */
	__u32 identity;
	/* Pod addresses, network byte order: anti-spoofing on egress, and reported in events. */
	__u8 ipv4[4];
	__u8 ipv6[16];
};
_Static_assert(sizeof(struct endpoint_value) == 28, "endpoint_value size");

/* ---------------------------------------------------------------------------------------
 * local_ips: BPF_MAP_TYPE_HASH, local endpoint address -> endpoint_key (its device).
 * Only for where a packet enters the node towards a local endpoint (a local pod's egress,
 * the uplink): the destination's ingress redirect must be decided there, at a tc ingress
 * hook, because bpf_sk_assign works only on ingress. The policy itself always comes from
 * the endpoints map, so a stale address here can at worst miss a redirect, which the
 * destination's own hook then drops (fail closed).
 * ------------------------------------------------------------------------------------- */
struct local_ip_key {
	/* DP_FAMILY_*. */
	__u8 family;
	/* Zero. */
	__u8 pad[3];
	/* Network byte order, IPv4 in the first 4 bytes. */
	__u8 addr[16];
};
_Static_assert(sizeof(struct local_ip_key) == 20, "local_ip_key size");

/* ---------------------------------------------------------------------------------------
 * policy: BPF_MAP_TYPE_LPM_TRIE,
 *   (endpoint, direction, remote identity, protocol, destination port) -> action.
 *
 * Key fields are in prefix order: the always-matched part (endpoint, direction, pad,
 * identity, pad2) then protocol, then the port bits. That gives the three kinds of entries
 * of PortKey (node-agent/src/compiler/endpoint.rs) as prefix lengths:
 *   every protocol and port (L3-only, PortKey::ANY):  DP_POLICY_STATIC_PREFIX
 *   every port of one protocol (port 0):               DP_POLICY_STATIC_PREFIX + 8
 *   port range [port, end_port]:                       DP_POLICY_STATIC_PREFIX + 8 + n
 * The agent splits a range into aligned power-of-two blocks (n = 16 - log2(block size)),
 * so one range is at most 30 entries; protocol ANY is written as one entry per protocol
 * (TCP, UDP, SCTP: SEMANTICS 3.1) unless it is the L3-only form. Identity 0
 * (DP_IDENTITY_ANY) is the wildcard identity: entries whose peer selects every identity
 * (e.g. `fromEntities: [all]`, or a port rule without an L3 part).
 *
 * Lookup order (the programs, for a flow of endpoint E, direction D, peer identity R,
 * protocol P, port N):
 *   1. a = LPM lookup (E, D, R,               P, N)   most specific entry for the peer
 *   2. b = LPM lookup (E, D, DP_IDENTITY_ANY, P, N)   most specific wildcard-identity entry
 *   3. action = max(a.action, b.action) with DP_ACT_NONE for a miss; the order of the
 *      DP_ACT_* values IS the precedence: deny > redirect > allow > none. So a deny from
 *      either lookup beats any allow (SEMANTICS 2.3), and an allow plus a redirect for the
 *      same flow goes through the proxy (SEMANTICS 3.4). On a redirect the proxy port comes
 *      from the entry that redirects (a first if both do).
 *   4. if action is DP_ACT_NONE: drop when the endpoint's DP_EP_*_DEFAULT_DENY flag for D is
 *      set, allow otherwise.
 * Visibility annotations (SEMANTICS 7) need no step of their own: the agent compiles them
 * into redirect entries for exactly what policy already allows.
 * Because an LPM lookup returns only the longest match for one identity, a broader entry of
 * the same identity is hidden by a narrower one (a deny on all ports of TCP by an allow on
 * TCP/80). The agent therefore writes into each entry the max() of the actions of itself and every broader entry of the same (E, D, identity) that covers
 * it; across identities the programs merge (step 3). With that invariant the result equals the union semantics of SEMANTICS 2-3.
 * ------------------------------------------------------------------------------------- */
struct policy_key {
	/* Counts bits from endpoint_id on; see DP_POLICY_STATIC_PREFIX and the table above. */
	__u32 prefixlen;
	/* endpoint_value.endpoint_id of the local endpoint. */
	__u16 endpoint_id;
	/* DP_DIR_INGRESS or DP_DIR_EGRESS. */
	__u8 direction;
	/* Zero; aligns identity. */
	__u8 pad;
	/* Remote identity (source for ingress, destination for egress); 0 = any identity. */
	__u32 identity;
	/* Zero; here rather than after protocol so that protocol and dport are adjacent and
	 * the port bits directly follow the protocol bits in the prefix. */
	__u8 pad2;
	/* IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP; 0 (not matched) for L3-only entries. */
	__u8 protocol;
	/* Destination port, network byte order so that a port prefix is a prefix of the key's
	 * bytes; 0 (not matched) for every-port entries. */
	__be16 dport;
};
_Static_assert(sizeof(struct policy_key) == 16, "policy_key size");

/* Bits of endpoint_id + direction + pad + identity + pad2. */
#define DP_POLICY_STATIC_PREFIX 72

/* policy_value.action: ordered by precedence, larger wins (lookup step 3). */
#define DP_ACT_NONE 0
#define DP_ACT_ALLOW 1
#define DP_ACT_REDIRECT 2
#define DP_ACT_DENY 3

struct policy_value {
	/* DP_ACT_*, never DP_ACT_NONE. */
	__u8 action;
	/* Zero (reserved for flags). */
	__u8 flags;
	/* Proxy listening port (host byte order) for DP_ACT_REDIRECT entries;
	 * which proxy (HTTP or DNS) is decided by the agent when it picks the port. 0 otherwise. */
	__u16 proxy_port;
	/* Bits of the entry's key after DP_POLICY_STATIC_PREFIX (0 = L3-only, 8 = one protocol,
	 * 9..24 = a port block): a trie lookup does not return the key it matched, so the
	 * programs take the match kind they report in policy-verdict events (L3-only, L3-L4,
	 * L4-only, all) from this and from which lookup (a or b) matched. */
	__u8 l4_prefixlen;
	/* Zero; keeps the value a multiple of 4 bytes. */
	__u8 pad[3];
};
_Static_assert(sizeof(struct policy_value) == 8, "policy_value size");

/* ---------------------------------------------------------------------------------------
 * ct: BPF_MAP_TYPE_LRU_HASH, connection tracking.
 * One entry per flow and direction as seen from the local endpoint, keyed by the tuple of
 * the flow's first packet (the original direction). A packet of the reverse tuple is a
 * reply: it passes without a policy lookup once the entry exists. LRU so that a flood of
 * new flows evicts old ones instead of failing inserts; the agent's GC uses last_seen_ns.
 * ------------------------------------------------------------------------------------- */
struct ct_key {
	/* Source and destination address of the original direction, network byte order, IPv4
	 * in the first 4 bytes with the rest zero. */
	__u8 saddr[16];
	__u8 daddr[16];
	/* Network byte order; 0 for protocols without ports (for ICMP echo the programs put the
	 * echo id in both, so that the reply's swapped tuple matches). */
	__be16 sport;
	__be16 dport;
	/* IPPROTO_*. */
	__u8 protocol;
	/* DP_DIR_*: the same 5-tuple can be egress of one local endpoint and ingress of
	 * another (pod to pod on one node); each side keeps its own verdict. */
	__u8 direction;
	/* DP_FAMILY_*: an IPv4 and an IPv6 tuple with equal bytes stay apart. */
	__u8 family;
	/* Zero. */
	__u8 pad;
};
_Static_assert(sizeof(struct ct_key) == 40, "ct_key size");

/* ct_value.flags */
/* A packet of the reverse tuple has been seen (the flow is established). */
#define DP_CT_F_REPLY_SEEN (1 << 0)
/* FIN or RST seen: the agent's GC may reap the entry sooner. */
#define DP_CT_F_CLOSING (1 << 1)
/* The flow was opened by a proxy on this node on behalf of the original client (its packets
 * carry the client's address): replies must be steered to the proxy's socket instead of
 * being forwarded to the client's address. */
#define DP_CT_F_PROXY_SOURCED (1 << 2)

struct ct_value {
	/* bpf_ktime_get_ns() of the last packet in either direction, for the agent's GC. */
	__u64 last_seen_ns;
	/* Peer identity when the flow was created: reported in events for the flow's later
	 * packets and kept even if the ipcache changes mid-flow. */
	__u32 remote_identity;
	/* Proxy port when action is DP_ACT_REDIRECT: packets of a redirected flow keep going to
	 * the same proxy (and fail closed if it is gone) without a new policy lookup. */
	__u16 proxy_port;
	/* The verdict kept for the flow: DP_ACT_ALLOW or DP_ACT_REDIRECT (denied flows get no
	 * entry). */
	__u8 action;
	/* DP_CT_F_*. */
	__u8 flags;
};
_Static_assert(sizeof(struct ct_value) == 16, "ct_value size");

/* ---------------------------------------------------------------------------------------
 * events: BPF_MAP_TYPE_RINGBUF of struct dp_event, read by `node-agent monitor` and the flow
 * records (SEMANTICS 8.5, 10).
 * ------------------------------------------------------------------------------------- */
/* dp_event.type */
#define DP_EVENT_DROP 1
#define DP_EVENT_POLICY_VERDICT 2

/* dp_event.reason for drops; the monitor prints the text in parentheses (SEMANTICS 8.5). */
#define DP_DROP_POLICY_DENIED 1  /* "Policy denied": a deny entry (SEMANTICS 2.3) */
#define DP_DROP_DEFAULT_DENY 2   /* "Policy denied": no entry, direction enforced (2.1) */
#define DP_DROP_PROXY_DOWN 3     /* "Proxy unavailable": redirect with no listener (fail closed) */
#define DP_DROP_SPOOFED_SOURCE 4 /* "Invalid source ip": egress source is not the pod's */
/* "No L7 redirect on this path": the destination's ingress redirects this flow, but it
 * arrived where no redirect is possible (from the host, or from the egress proxy). */
#define DP_DROP_NO_REDIRECT_PATH 5

/* dp_event.match for policy verdicts: what kind of entry decided (Cilium's match types). */
#define DP_MATCH_NONE 0   /* no entry: the default of the direction */
#define DP_MATCH_L3_ONLY 1
#define DP_MATCH_L3_L4 2
#define DP_MATCH_L4_ONLY 3
#define DP_MATCH_ALL 4

struct dp_event {
	/* bpf_ktime_get_ns(); the reader converts to wall time. */
	__u64 timestamp_ns;
	/* DP_EVENT_*. */
	__u8 type;
	/* DP_DROP_* for drops, 0 for verdicts. */
	__u8 reason;
	/* DP_ACT_* decided (policy verdicts and drops alike, so a drop says deny). */
	__u8 action;
	/* DP_MATCH_*. */
	__u8 match;
	/* DP_DIR_* relative to the endpoint below. */
	__u8 direction;
	/* DP_FAMILY_*. */
	__u8 family;
	/* IPPROTO_*. */
	__u8 protocol;
	/* Zero. */
	__u8 pad;
	/* Device the packet crossed (the endpoint's host-side device, or the uplink). */
	__u32 ifindex;
	/* Local endpoint ("to endpoint N" in SEMANTICS 8.5); 0 when none (uplink). */
	__u16 endpoint_id;
	/* Proxy port for redirects, 0 otherwise. */
	__u16 proxy_port;
	/* "identity S->D" of SEMANTICS 8.5. */
	__u32 src_identity;
	__u32 dst_identity;
	/* Network byte order, as in the packet. */
	__be16 sport;
	__be16 dport;
	/* Network byte order, IPv4 in the first 4 bytes. */
	__u8 saddr[16];
	__u8 daddr[16];
	/* Zero; rounds the size up to the 8-byte alignment of timestamp_ns, stated rather than
	 * left to the compiler. */
	__u8 pad2[4];
};
_Static_assert(sizeof(struct dp_event) == 72, "dp_event size");

#endif /* DATAPATH_H */
