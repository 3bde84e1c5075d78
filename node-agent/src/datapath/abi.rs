//! Rust mirrors of `bpf/datapath.h`: the keys and values of the BPF maps and the event
//! written to the ring buffer, shared by the BPF programs and the agent.
//!
//! Every struct is `#[repr(C)]` with the C struct's field names and order; the header's
//! comments explain each field and the policy lookup order, and are not repeated in full
//! here. The test at the bottom compiles `bpf/layout_probe.c` with the host C compiler and
//! checks every size, field offset and constant against this module, so the two
//! cannot drift apart silently.
//!
//! Byte order as in the header: addresses and ports (`addr`, `saddr`, `daddr`, `ipv4`,
//! `ipv6`, `sport`, `dport`) are in network byte order, everything else in host order.

/// `DP_FAMILY_*`: address family in keys and events.
pub const DP_FAMILY_IPV4: u8 = 4;
pub const DP_FAMILY_IPV6: u8 = 6;

/// `DP_DIR_*`: direction relative to the local endpoint (SEMANTICS 2).
pub const DP_DIR_INGRESS: u8 = 0;
pub const DP_DIR_EGRESS: u8 = 1;

/// Reserved identities the programs know; 0 is the policy map's wildcard identity.
pub const DP_IDENTITY_ANY: u32 = 0;
pub const DP_IDENTITY_HOST: u32 = crate::identity::reserved::HOST;
pub const DP_IDENTITY_WORLD: u32 = crate::identity::reserved::WORLD;
pub const DP_IDENTITY_WORLD_IPV4: u32 = crate::identity::reserved::WORLD_IPV4;
pub const DP_IDENTITY_WORLD_IPV6: u32 = crate::identity::reserved::WORLD_IPV6;

/// Mark bits shared with the proxies and the node's policy routing.
pub const DP_MARK_MASK: u32 = 0x0f00;
pub const DP_MARK_TO_PROXY: u32 = 0x0200;
pub const DP_MARK_FROM_PROXY: u32 = 0x0300;
pub const DP_MARK_FROM_INGRESS_PROXY: u32 = 0x0400;

/// Pinned map names (at most 15 characters, a BPF limit) and sizes.
pub const DP_MAP_IPCACHE: &str = "dp_ipcache";
pub const DP_MAP_ENDPOINTS: &str = "dp_endpoints";
pub const DP_MAP_POLICY: &str = "dp_policy";
pub const DP_MAP_CT: &str = "dp_ct";
pub const DP_MAP_EVENTS: &str = "dp_events";
pub const DP_MAP_LOCAL_IPS: &str = "dp_local_ips";
pub const DP_IPCACHE_MAX_ENTRIES: u32 = 65536;
pub const DP_ENDPOINTS_MAX_ENTRIES: u32 = 4096;
pub const DP_POLICY_MAX_ENTRIES: u32 = 65536;
pub const DP_CT_MAX_ENTRIES: u32 = 262144;
pub const DP_EVENTS_RING_BYTES: u32 = 1 << 20;
pub const DP_LOCAL_IPS_MAX_ENTRIES: u32 = 8192;

/// Bits of `family` + `pad` that every ipcache prefix length includes.
pub const DP_IPCACHE_STATIC_PREFIX: u32 = 32;

/// `endpoint_value.flags`.
pub const DP_EP_INGRESS_DEFAULT_DENY: u16 = 1 << 0;
pub const DP_EP_EGRESS_DEFAULT_DENY: u16 = 1 << 1;
pub const DP_EP_HAS_IPV4: u16 = 1 << 2;
pub const DP_EP_HAS_IPV6: u16 = 1 << 3;

/// Bits of `endpoint_id` + `direction` + `pad` + `identity` + `pad2` in every policy prefix.
pub const DP_POLICY_STATIC_PREFIX: u32 = 72;

/// `policy_value.action` / `ct_value.action` / `dp_event.action`, ordered by precedence:
/// the programs take the larger of the two policy lookups (deny > redirect > allow > none).
pub const DP_ACT_NONE: u8 = 0;
pub const DP_ACT_ALLOW: u8 = 1;
pub const DP_ACT_REDIRECT: u8 = 2;
pub const DP_ACT_DENY: u8 = 3;

/// `ct_value.flags`.
pub const DP_CT_F_REPLY_SEEN: u8 = 1 << 0;
pub const DP_CT_F_CLOSING: u8 = 1 << 1;
pub const DP_CT_F_PROXY_SOURCED: u8 = 1 << 2;

/// `dp_event.type`.
pub const DP_EVENT_DROP: u8 = 1;
pub const DP_EVENT_POLICY_VERDICT: u8 = 2;

/// `dp_event.reason` for drops.
pub const DP_DROP_POLICY_DENIED: u8 = 1;
pub const DP_DROP_DEFAULT_DENY: u8 = 2;
pub const DP_DROP_PROXY_DOWN: u8 = 3;
pub const DP_DROP_SPOOFED_SOURCE: u8 = 4;
pub const DP_DROP_NO_REDIRECT_PATH: u8 = 5;

/// `dp_event.match`: which kind of policy entry decided.
pub const DP_MATCH_NONE: u8 = 0;
pub const DP_MATCH_L3_ONLY: u8 = 1;
pub const DP_MATCH_L3_L4: u8 = 2;
pub const DP_MATCH_L4_ONLY: u8 = 3;
pub const DP_MATCH_ALL: u8 = 4;

/// ipcache (LPM trie) key: IP prefix of either family.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct IpcacheKey {
    /// `DP_IPCACHE_STATIC_PREFIX` + the IP prefix length; LPM tries want it first.
    pub prefixlen: u32,
    /// `DP_FAMILY_*`; part of the matched prefix so families never match each other.
    pub family: u8,
    /// Zero (matched as part of the prefix).
    pub pad: [u8; 3],
    /// Network byte order; IPv4 in the first 4 bytes, rest zero.
    pub addr: [u8; 16],
}

/// ipcache value.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct IpcacheValue {
    /// Security identity of the prefix.
    pub identity: u32,
}

/// endpoints (hash) key: the host-side device, so the endpoint comes from the device a
/// packet crossed rather than from an address the pod chose (see the header).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EndpointKey {
    /// ifindex of the pod's host-side device in the node's namespace.
    pub ifindex: u32,
}

/// endpoints value.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EndpointValue {
    /// First field of the endpoint's policy keys.
    pub endpoint_id: u16,
    /// `DP_EP_*`.
    pub flags: u16,
    /// The endpoint's own identity.
    pub identity: u32,
    /// Network byte order (valid with `DP_EP_HAS_IPV4`).
    pub ipv4: [u8; 4],
    /// Network byte order (valid with `DP_EP_HAS_IPV6`).
    pub ipv6: [u8; 16],
}

/// local_ips (hash) key: a local endpoint's address.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct LocalIpKey {
    /// `DP_FAMILY_*`.
    pub family: u8,
    /// Zero.
    pub pad: [u8; 3],
    /// Network byte order, IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
}

/// policy (LPM trie) key: (endpoint, direction, remote identity, protocol, port).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct PolicyKey {
    /// `DP_POLICY_STATIC_PREFIX` (+ 8 with a protocol, + port prefix bits with a port).
    pub prefixlen: u32,
    pub endpoint_id: u16,
    /// `DP_DIR_*`.
    pub direction: u8,
    /// Zero.
    pub pad: u8,
    /// Remote identity; `DP_IDENTITY_ANY` is the wildcard.
    pub identity: u32,
    /// Zero; keeps `protocol` and `dport` adjacent in the prefix.
    pub pad2: u8,
    /// IPPROTO_*; 0 for L3-only entries.
    pub protocol: u8,
    /// Destination port, network byte order; 0 for every-port entries.
    pub dport: u16,
}

/// policy value.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct PolicyValue {
    /// `DP_ACT_*`.
    pub action: u8,
    /// `DP_POLICY_F_*`.
    pub flags: u8,
    /// Proxy listening port, host byte order.
    pub proxy_port: u16,
    /// Bits of the entry's key after `DP_POLICY_STATIC_PREFIX` (the match kind for events).
    pub l4_prefixlen: u8,
    /// Zero.
    pub pad: [u8; 3],
}

/// ct (LRU hash) key: the original direction's 5-tuple and the direction.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    /// Network byte order, IPv4 in the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Network byte order.
    pub sport: u16,
    pub dport: u16,
    /// IPPROTO_*.
    pub protocol: u8,
    /// `DP_DIR_*`.
    pub direction: u8,
    /// `DP_FAMILY_*`.
    pub family: u8,
    /// Zero.
    pub pad: u8,
}

/// ct value: the verdict kept for the flow.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CtValue {
    /// `bpf_ktime_get_ns()` of the last packet, for the agent's GC.
    pub last_seen_ns: u64,
    /// Peer identity when the flow was created.
    pub remote_identity: u32,
    /// Proxy port of a redirected flow.
    pub proxy_port: u16,
    /// `DP_ACT_ALLOW` or `DP_ACT_REDIRECT`.
    pub action: u8,
    /// `DP_CT_F_*`.
    pub flags: u8,
}

/// An event from the ring buffer (drop or policy verdict).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DpEvent {
    /// `bpf_ktime_get_ns()`.
    pub timestamp_ns: u64,
    /// `DP_EVENT_*`.
    pub r#type: u8,
    /// `DP_DROP_*` for drops.
    pub reason: u8,
    /// `DP_ACT_*`.
    pub action: u8,
    /// `DP_MATCH_*`.
    pub r#match: u8,
    /// `DP_DIR_*`.
    pub direction: u8,
    /// `DP_FAMILY_*`.
    pub family: u8,
    /// IPPROTO_*.
    pub protocol: u8,
    /// Zero.
    pub pad: u8,
    pub ifindex: u32,
    /// 0 when no local endpoint (uplink).
    pub endpoint_id: u16,
    pub proxy_port: u16,
    pub src_identity: u32,
    pub dst_identity: u32,
    /// Network byte order.
    pub sport: u16,
    pub dport: u16,
    /// Network byte order, IPv4 in the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Zero; the size is a multiple of 8 like the C struct's.
    pub pad2: [u8; 4],
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::mem::{offset_of, size_of};
    use std::path::Path;
    use std::process::Command;

    /// `struct NAME` size and `NAME.FIELD` offsets of one mirror, in the probe's naming.
    macro_rules! layout {
        ($out:ident, $ty:ty, $c:literal, [$($field:ident),* $(,)?]) => {
            $out.insert($c.to_string(), size_of::<$ty>().to_string());
            $(
                $out.insert(
                    format!("{}.{}", $c, stringify!($field).trim_start_matches("r#")),
                    offset_of!($ty, $field).to_string(),
                );
            )*
        };
    }

    macro_rules! consts {
        ($out:ident, [$($name:ident),* $(,)?]) => {
            $( $out.insert(stringify!($name).to_string(), $name.to_string()); )*
        };
    }

    fn rust_layout() -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        layout!(
            out,
            IpcacheKey,
            "ipcache_key",
            [prefixlen, family, pad, addr]
        );
        layout!(out, IpcacheValue, "ipcache_value", [identity]);
        layout!(out, EndpointKey, "endpoint_key", [ifindex]);
        layout!(
            out,
            EndpointValue,
            "endpoint_value",
            [endpoint_id, flags, identity, ipv4, ipv6]
        );
        layout!(out, LocalIpKey, "local_ip_key", [family, pad, addr]);
        layout!(
            out,
            PolicyKey,
            "policy_key",
            [
                prefixlen,
                endpoint_id,
                direction,
                pad,
                identity,
                pad2,
                protocol,
                dport
            ]
        );
        layout!(
            out,
            PolicyValue,
            "policy_value",
            [action, flags, proxy_port, l4_prefixlen, pad]
        );
        layout!(
            out,
            CtKey,
            "ct_key",
            [saddr, daddr, sport, dport, protocol, direction, family, pad]
        );
        layout!(
            out,
            CtValue,
            "ct_value",
            [last_seen_ns, remote_identity, proxy_port, action, flags]
        );
        layout!(
            out,
            DpEvent,
            "dp_event",
            [
                timestamp_ns,
                r#type,
                reason,
                action,
                r#match,
                direction,
                family,
                protocol,
                pad,
                ifindex,
                endpoint_id,
                proxy_port,
                src_identity,
                dst_identity,
                sport,
                dport,
                saddr,
                daddr,
                pad2,
            ]
        );
        consts!(
            out,
            [
                DP_FAMILY_IPV4,
                DP_FAMILY_IPV6,
                DP_DIR_INGRESS,
                DP_DIR_EGRESS,
                DP_IDENTITY_ANY,
                DP_IDENTITY_HOST,
                DP_IDENTITY_WORLD,
                DP_IDENTITY_WORLD_IPV4,
                DP_IDENTITY_WORLD_IPV6,
                DP_MARK_MASK,
                DP_MARK_TO_PROXY,
                DP_MARK_FROM_PROXY,
                DP_MARK_FROM_INGRESS_PROXY,
                DP_LOCAL_IPS_MAX_ENTRIES,
                DP_IPCACHE_MAX_ENTRIES,
                DP_ENDPOINTS_MAX_ENTRIES,
                DP_POLICY_MAX_ENTRIES,
                DP_CT_MAX_ENTRIES,
                DP_EVENTS_RING_BYTES,
                DP_IPCACHE_STATIC_PREFIX,
                DP_EP_INGRESS_DEFAULT_DENY,
                DP_EP_EGRESS_DEFAULT_DENY,
                DP_EP_HAS_IPV4,
                DP_EP_HAS_IPV6,
                DP_POLICY_STATIC_PREFIX,
                DP_ACT_NONE,
                DP_ACT_ALLOW,
                DP_ACT_REDIRECT,
                DP_ACT_DENY,
                DP_CT_F_REPLY_SEEN,
                DP_CT_F_CLOSING,
                DP_CT_F_PROXY_SOURCED,
                DP_EVENT_DROP,
                DP_EVENT_POLICY_VERDICT,
                DP_DROP_POLICY_DENIED,
                DP_DROP_DEFAULT_DENY,
                DP_DROP_PROXY_DOWN,
                DP_DROP_SPOOFED_SOURCE,
                DP_DROP_NO_REDIRECT_PATH,
                DP_MATCH_NONE,
                DP_MATCH_L3_ONLY,
                DP_MATCH_L3_L4,
                DP_MATCH_L4_ONLY,
                DP_MATCH_ALL,
                DP_MAP_IPCACHE,
                DP_MAP_ENDPOINTS,
                DP_MAP_POLICY,
                DP_MAP_CT,
                DP_MAP_EVENTS,
                DP_MAP_LOCAL_IPS,
            ]
        );
        out
    }

    /// Compiles and runs `bpf/layout_probe.c` in a temporary directory (nothing is written
    /// into the source tree) and parses its `name value` lines.
    fn c_layout() -> BTreeMap<String, String> {
        let bpf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bpf");
        let dir = tempfile::tempdir().expect("temporary directory");
        let exe = dir.path().join("layout_probe");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
        let status = Command::new(&cc)
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
            .arg(&bpf)
            .arg(bpf.join("layout_probe.c"))
            .arg("-o")
            .arg(&exe)
            .status()
            .unwrap_or_else(|e| {
                panic!("running `{cc}` (install gcc and linux-libc-dev): {e}");
            });
        assert!(
            status.success(),
            "`{cc}` failed to build bpf/layout_probe.c"
        );
        let output = Command::new(&exe)
            .output()
            .expect("running the layout probe");
        assert!(output.status.success(), "the layout probe failed");
        let text = String::from_utf8(output.stdout).expect("probe output is UTF-8");
        text.lines()
            .map(|line| {
                let (name, value) = line.split_once(' ').expect("`name value` line");
                (name.to_string(), value.to_string())
            })
            .collect()
    }

    #[test]
    fn layout_matches_c_header() {
        let rust = rust_layout();
        let c = c_layout();
        // Compare as whole maps so that a struct, field or constant present on one side
        // only is reported too, not just differing values.
        let mismatches: Vec<String> = c
            .keys()
            .chain(rust.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|name| c.get(*name) != rust.get(*name))
            .map(|name| format!("{name}: C {:?}, Rust {:?}", c.get(name), rust.get(name)))
            .collect();
        assert!(
            mismatches.is_empty(),
            "bpf/datapath.h and datapath/abi.rs disagree:\n{}",
            mismatches.join("\n")
        );
        // The probe really printed the structs (a broken probe printing nothing must fail).
        assert_eq!(c.get("dp_event").map(String::as_str), Some("72"));
    }

    /// The map names fit the kernel's 15-character limit for BPF object names.
    #[test]
    fn map_names_fit() {
        for name in [
            DP_MAP_IPCACHE,
            DP_MAP_ENDPOINTS,
            DP_MAP_POLICY,
            DP_MAP_CT,
            DP_MAP_EVENTS,
        ] {
            assert!(name.len() <= 15, "{name}");
        }
    }
}
