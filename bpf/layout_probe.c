/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Host program (not BPF) used only by node-agent's layout test
 * (node-agent/src/datapath/abi.rs): it prints the size of every struct of datapath.h and the
 * offset of every field, which the test compares with the Rust mirrors. Built with the host
 * C compiler into a temporary directory; the BPF build skips this file.
 *
 * Output, one per line: `struct SIZE`, `struct.field OFFSET` or `CONSTANT VALUE` (the constants
 * the Rust side mirrors too: numbers and map names).
 */
#include <stddef.h>
#include <stdio.h>

#include "datapath.h"

#define SIZE(s) printf("%s %zu\n", #s, sizeof(struct s))
#define FIELD(s, f) printf("%s.%s %zu\n", #s, #f, offsetof(struct s, f))
#define CONST(c) printf("%s %lld\n", #c, (long long)(c))
#define CONST_STR(c) printf("%s %s\n", #c, c)

int main(void)
{
	SIZE(ipcache_key);
	FIELD(ipcache_key, prefixlen);
	FIELD(ipcache_key, family);
	FIELD(ipcache_key, pad);
	FIELD(ipcache_key, addr);

	SIZE(ipcache_value);
	FIELD(ipcache_value, identity);

	SIZE(endpoint_key);
	FIELD(endpoint_key, ifindex);

	SIZE(endpoint_value);
	FIELD(endpoint_value, endpoint_id);
	FIELD(endpoint_value, flags);
	FIELD(endpoint_value, identity);
	FIELD(endpoint_value, ipv4);
	FIELD(endpoint_value, ipv6);

	SIZE(local_ip_key);
	FIELD(local_ip_key, family);
	FIELD(local_ip_key, pad);
	FIELD(local_ip_key, addr);

	SIZE(policy_key);
	FIELD(policy_key, prefixlen);
	FIELD(policy_key, endpoint_id);
	FIELD(policy_key, direction);
	FIELD(policy_key, pad);
	FIELD(policy_key, identity);
	FIELD(policy_key, pad2);
	FIELD(policy_key, protocol);
	FIELD(policy_key, dport);

	SIZE(policy_value);
	FIELD(policy_value, action);
	FIELD(policy_value, flags);
	FIELD(policy_value, proxy_port);
	FIELD(policy_value, l4_prefixlen);
	FIELD(policy_value, pad);

	SIZE(ct_key);
	FIELD(ct_key, saddr);
	FIELD(ct_key, daddr);
	FIELD(ct_key, sport);
	FIELD(ct_key, dport);
	FIELD(ct_key, protocol);
	FIELD(ct_key, direction);
	FIELD(ct_key, family);
	FIELD(ct_key, pad);

	SIZE(ct_value);
	FIELD(ct_value, last_seen_ns);
	FIELD(ct_value, remote_identity);
	FIELD(ct_value, proxy_port);
	FIELD(ct_value, action);
	FIELD(ct_value, flags);

	SIZE(dp_event);
	FIELD(dp_event, timestamp_ns);
	FIELD(dp_event, type);
	FIELD(dp_event, reason);
	FIELD(dp_event, action);
	FIELD(dp_event, match);
	FIELD(dp_event, direction);
	FIELD(dp_event, family);
	FIELD(dp_event, protocol);
	FIELD(dp_event, pad);
	FIELD(dp_event, ifindex);
	FIELD(dp_event, endpoint_id);
	FIELD(dp_event, proxy_port);
	FIELD(dp_event, src_identity);
	FIELD(dp_event, dst_identity);
	FIELD(dp_event, sport);
	FIELD(dp_event, dport);
	FIELD(dp_event, saddr);
	FIELD(dp_event, daddr);
	FIELD(dp_event, pad2);

	CONST(DP_FAMILY_IPV4);
	CONST(DP_FAMILY_IPV6);
	CONST(DP_DIR_INGRESS);
	CONST(DP_DIR_EGRESS);
	CONST(DP_IDENTITY_ANY);
	CONST(DP_IDENTITY_HOST);
	CONST(DP_IDENTITY_WORLD);
	CONST(DP_IDENTITY_WORLD_IPV4);
	CONST(DP_IDENTITY_WORLD_IPV6);
	CONST(DP_MARK_MASK);
	CONST(DP_MARK_TO_PROXY);
	CONST(DP_MARK_FROM_PROXY);
	CONST(DP_MARK_FROM_INGRESS_PROXY);
	CONST(DP_LOCAL_IPS_MAX_ENTRIES);
	CONST(DP_IPCACHE_MAX_ENTRIES);
	CONST(DP_ENDPOINTS_MAX_ENTRIES);
	CONST(DP_POLICY_MAX_ENTRIES);
	CONST(DP_CT_MAX_ENTRIES);
	CONST(DP_EVENTS_RING_BYTES);
	CONST(DP_IPCACHE_STATIC_PREFIX);
	CONST(DP_EP_INGRESS_DEFAULT_DENY);
	CONST(DP_EP_EGRESS_DEFAULT_DENY);
	CONST(DP_EP_HAS_IPV4);
	CONST(DP_EP_HAS_IPV6);
	CONST(DP_POLICY_STATIC_PREFIX);
	CONST(DP_ACT_NONE);
	CONST(DP_ACT_ALLOW);
	CONST(DP_ACT_REDIRECT);
	CONST(DP_ACT_DENY);
	CONST(DP_CT_F_REPLY_SEEN);
	CONST(DP_CT_F_CLOSING);
	CONST(DP_CT_F_PROXY_SOURCED);
	CONST(DP_EVENT_DROP);
	CONST(DP_EVENT_POLICY_VERDICT);
	CONST(DP_DROP_POLICY_DENIED);
	CONST(DP_DROP_DEFAULT_DENY);
	CONST(DP_DROP_PROXY_DOWN);
	CONST(DP_DROP_SPOOFED_SOURCE);
	CONST(DP_DROP_NO_REDIRECT_PATH);
	CONST(DP_MATCH_NONE);
	CONST(DP_MATCH_L3_ONLY);
	CONST(DP_MATCH_L3_L4);
	CONST(DP_MATCH_L4_ONLY);
	CONST(DP_MATCH_ALL);
	CONST_STR(DP_MAP_IPCACHE);
	CONST_STR(DP_MAP_ENDPOINTS);
	CONST_STR(DP_MAP_POLICY);
	CONST_STR(DP_MAP_CT);
	CONST_STR(DP_MAP_EVENTS);
	CONST_STR(DP_MAP_LOCAL_IPS);
	return 0;
}
