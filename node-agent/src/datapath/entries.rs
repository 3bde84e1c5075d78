//! Turns the compiler's output into the entries of the BPF maps of `bpf/datapath.h`, as
//! plain values of the [`abi`](super::abi) types, and diffs two sets of entries so that the
//! maps can be reprogrammed incrementally. Nothing here touches the kernel.
//!
//! Policy map (see the header's table and lookup order):
//! - one entry per (direction, peer identity or `DP_IDENTITY_ANY` when the peer selects every
//!   identity, protocol, aligned power-of-two port block);
//! - a port range is split into aligned power-of-two blocks, each an LPM prefix of
//!   `DP_POLICY_STATIC_PREFIX + 8 + (16 - log2(block size))` bits, the port in network order;
//! - a port entry of protocol ANY becomes one entry per protocol (TCP, UDP, SCTP); only the
//!   L3-only form (`PortKey::ANY`) stays one entry with protocol 0;
//! - each entry carries the max action of itself and of every broader
//!   entry of the same (endpoint, direction, identity) that covers it, because an LPM lookup
//!   returns only the narrowest match;
//! - default deny is not an entry but an endpoint flag ([`endpoint_value`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::abi::{
    DP_ACT_ALLOW, DP_ACT_DENY, DP_ACT_NONE, DP_ACT_REDIRECT, DP_DIR_EGRESS, DP_DIR_INGRESS,
    DP_EP_EGRESS_DEFAULT_DENY, DP_EP_HAS_IPV4, DP_EP_HAS_IPV6, DP_EP_INGRESS_DEFAULT_DENY,
    DP_FAMILY_IPV4, DP_FAMILY_IPV6, DP_IDENTITY_ANY, DP_IDENTITY_WORLD_IPV4,
    DP_IDENTITY_WORLD_IPV6, DP_IPCACHE_STATIC_PREFIX, DP_POLICY_STATIC_PREFIX, EndpointValue,
    IpcacheKey, IpcacheValue, PolicyKey, PolicyValue,
};
use crate::compiler::{DirectionPolicy, EndpointPolicy, PolicyEntry, PortKey};
use crate::identity::Identity;
use crate::policy::Protocol;
use crate::policy::rule::L7Parser;

/// Policy map entries of one or more endpoints, ordered so that two sets diff easily.
pub type PolicyEntries = BTreeMap<PolicyKey, PolicyValue>;
/// ipcache entries.
pub type IpcacheEntries = BTreeMap<IpcacheKey, IpcacheValue>;

/// Listening ports (host byte order) of the proxies that redirect entries point at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyPorts {
    /// The L7 (HTTP) proxy's port for traffic the endpoint receives.
    pub http_ingress: u16,
    /// The L7 (HTTP) proxy's port for traffic the endpoint sends.
    pub http_egress: u16,
    /// The DNS proxy's port.
    pub dns: u16,
}

impl ProxyPorts {
    fn port(&self, direction: u8, parser: L7Parser) -> u16 {
        match (parser, direction) {
            (L7Parser::Dns, _) => self.dns,
            (L7Parser::Http, DP_DIR_INGRESS) => self.http_ingress,
            (L7Parser::Http, _) => self.http_egress,
        }
    }
}

/// IPPROTO_* of a protocol.
pub fn ip_proto(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// The L4 part of a policy key: `l4_prefixlen` bits after `DP_POLICY_STATIC_PREFIX`
/// (0 = L3-only, 8 = every port of `protocol`, 9..=24 = an aligned block from `port`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct L4Block {
    l4_prefixlen: u8,
    protocol: u8,
    /// Host byte order; the block's first port.
    port: u16,
}

impl L4Block {
    const L3_ONLY: L4Block = L4Block {
        l4_prefixlen: 0,
        protocol: 0,
        port: 0,
    };
    const MIN: L4Block = L4Block::L3_ONLY;
    const MAX: L4Block = L4Block {
        l4_prefixlen: u8::MAX,
        protocol: u8::MAX,
        port: u16::MAX,
    };

    /// Whether every flow this block matches is matched by `self`.
    fn covers(&self, other: &L4Block) -> bool {
        if self.l4_prefixlen > other.l4_prefixlen {
            return false;
        }
        if self.l4_prefixlen == 0 {
            return true;
        }
        if self.protocol != other.protocol {
            return false;
        }
        let port_bits = u32::from(self.l4_prefixlen - 8);
        if port_bits == 0 {
            return true;
        }
        let mask = (u32::from(u16::MAX) << (16 - port_bits)) as u16;
        self.port & mask == other.port & mask
    }
}

/// Splits `[lo, hi]` (host order, `lo >= 1`) into aligned power-of-two blocks, returned
/// as (first port, port prefix bits `16 - log2(size)`).
pub fn split_port_range(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(lo), u32::from(hi.max(lo)));
    while lo <= hi {
        // Largest block aligned at `lo` that stays inside the range.
        let mut bits = if lo == 0 {
            16
        } else {
            lo.trailing_zeros().min(16)
        };
        while lo + (1u32 << bits) - 1 > hi {
            bits -= 1;
        }
        out.push((lo as u16, (16 - bits) as u8));
        lo += 1u32 << bits;
    }
    out
}

fn blocks(port: &PortKey) -> Vec<L4Block> {
    let protocols: Vec<u8> = match port.protocol {
        None if port.port == 0 => return vec![L4Block::L3_ONLY],
        None => Protocol::ALL.iter().map(|p| ip_proto(*p)).collect(),
        Some(p) => vec![ip_proto(p)],
    };
    let mut out = Vec::new();
    for protocol in protocols {
        if port.port == 0 {
            out.push(L4Block {
                l4_prefixlen: 8,
                protocol,
                port: 0,
            });
            continue;
        }
        for (first, bits) in split_port_range(port.port, port.end_port) {
            out.push(L4Block {
                l4_prefixlen: 8 + bits,
                protocol,
                port: first,
            });
        }
    }
    out
}

/// The action (and proxy port for redirects) one compiled entry asks for.
fn entry_value(entry: &PolicyEntry, direction: u8, ports: &ProxyPorts) -> (u8, u16) {
    if entry.deny {
        (DP_ACT_DENY, 0)
    } else if let Some(l7) = &entry.l7 {
        (DP_ACT_REDIRECT, ports.port(direction, l7.parser))
    } else {
        (DP_ACT_ALLOW, 0)
    }
}

/// (action, proxy port) merged by precedence: the larger action wins; the proxy port is
/// kept from a redirecting entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Merged {
    action: u8,
    proxy_port: u16,
}

impl Merged {
    fn add(&mut self, other: Merged) {
        if other.action > self.action {
            self.action = other.action;
            self.proxy_port = other.proxy_port;
        } else if other.action == self.action && self.proxy_port == 0 {
            self.proxy_port = other.proxy_port;
        }
        if self.action != DP_ACT_REDIRECT {
            self.proxy_port = 0;
        }
    }
}

fn direction_entries(
    endpoint_id: u16,
    direction: u8,
    policy: &DirectionPolicy,
    ports: &ProxyPorts,
    only: Option<&BTreeSet<Identity>>,
    out: &mut PolicyEntries,
) {
    if !policy.enforced {
        return;
    }
    // Raw entries: what each (identity, block) asks for by itself.
    let mut raw: BTreeMap<(Identity, L4Block), Merged> = BTreeMap::new();
    for entry in &policy.entries {
        let (action, proxy_port) = entry_value(entry, direction, ports);
        let value = Merged { action, proxy_port };
        let mut identities: Vec<Identity> = if entry.selection.all {
            vec![DP_IDENTITY_ANY]
        } else {
            entry.selection.identities.clone()
        };
        if let Some(only) = only {
            identities.retain(|id| only.contains(id));
        }
        let blocks = blocks(&entry.port);
        for identity in identities {
            for block in &blocks {
                raw.entry((identity, *block)).or_default().add(value);
            }
        }
    }
    // Fold every broader entry of the same identity into the narrower ones it covers.
    // Only that identity's entries are compared (a range of the sorted map), so an
    // endpoint with thousands of learned identities stays linear in them.
    for ((identity, block), own) in &raw {
        let mut value = *own;
        let same_identity = raw.range((*identity, L4Block::MIN)..=(*identity, L4Block::MAX));
        for ((_, other_block), other) in same_identity {
            if other_block != block && other_block.covers(block) {
                value.add(*other);
            }
        }
        let key = PolicyKey {
            prefixlen: DP_POLICY_STATIC_PREFIX + u32::from(block.l4_prefixlen),
            endpoint_id,
            direction,
            pad: 0,
            identity: *identity,
            pad2: 0,
            protocol: block.protocol,
            dport: block.port.to_be(),
        };
        out.insert(
            key,
            PolicyValue {
                action: value.action,
                flags: 0,
                proxy_port: value.proxy_port,
                l4_prefixlen: block.l4_prefixlen,
                pad: [0; 3],
            },
        );
    }
}

/// The policy map entries of one endpoint, both directions.
pub fn policy_entries(
    endpoint_id: u16,
    policy: &EndpointPolicy,
    ports: &ProxyPorts,
) -> PolicyEntries {
    policy_entries_of(endpoint_id, policy, ports, None)
}

/// [`policy_entries`] restricted to the keys of some peer identities (`None`: all).
pub fn policy_entries_of(
    endpoint_id: u16,
    policy: &EndpointPolicy,
    ports: &ProxyPorts,
    only: Option<&BTreeSet<Identity>>,
) -> PolicyEntries {
    let mut out = PolicyEntries::new();
    for (direction, policy) in [
        (DP_DIR_INGRESS, &policy.ingress),
        (DP_DIR_EGRESS, &policy.egress),
    ] {
        direction_entries(endpoint_id, direction, policy, ports, only, &mut out);
    }
    out
}

/// The peer identities whose map entries can differ between two compiled versions of an
/// endpoint's policy, when only selections differ; `None` when more changed (directions,
/// ports, actions), and everything must be recomputed. Map entries depend on nothing else
/// than what is compared here.
pub fn changed_identities(
    old: &EndpointPolicy,
    new: &EndpointPolicy,
) -> Option<BTreeSet<Identity>> {
    let mut out = BTreeSet::new();
    for (a, b) in [(&old.ingress, &new.ingress), (&old.egress, &new.egress)] {
        if a.enforced != b.enforced
            || a.default_deny != b.default_deny
            || a.entries.len() != b.entries.len()
        {
            return None;
        }
        for (x, y) in a.entries.iter().zip(&b.entries) {
            let shape = |e: &PolicyEntry| {
                (
                    e.port,
                    e.deny,
                    e.l7.as_ref().map(|l| l.parser),
                    e.selection.all,
                )
            };
            if shape(x) != shape(y) {
                return None;
            }
            if std::sync::Arc::ptr_eq(&x.selection, &y.selection) {
                continue;
            }
            sorted_difference(&x.selection.identities, &y.selection.identities, &mut out);
        }
    }
    Some(out)
}

/// Adds to `out` what is in one of two sorted lists and not the other, in one pass.
fn sorted_difference(a: &[Identity], b: &[Identity], out: &mut BTreeSet<Identity>) {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.insert(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.insert(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
            }
        }
    }
    out.extend(&a[i..]);
    out.extend(&b[j..]);
}

/// The entries of `entries` of endpoint `endpoint_id` whose peer is one of `identities`.
pub fn endpoint_policy_of(
    entries: &PolicyEntries,
    endpoint_id: u16,
    identities: &BTreeSet<Identity>,
) -> PolicyEntries {
    let mut out = PolicyEntries::new();
    for l4 in 0..=24u32 {
        for direction in [DP_DIR_INGRESS, DP_DIR_EGRESS] {
            for identity in identities {
                let first = PolicyKey {
                    prefixlen: DP_POLICY_STATIC_PREFIX + l4,
                    endpoint_id,
                    direction,
                    identity: *identity,
                    ..PolicyKey::default()
                };
                let last = PolicyKey {
                    pad2: u8::MAX,
                    protocol: u8::MAX,
                    dport: u16::MAX,
                    ..first
                };
                out.extend(entries.range(first..=last).map(|(k, v)| (*k, *v)));
            }
        }
    }
    out
}

/// The entries of `entries` that belong to endpoint `endpoint_id` (without scanning the
/// others: keys sort by prefix length, then endpoint).
pub fn endpoint_policy(entries: &PolicyEntries, endpoint_id: u16) -> PolicyEntries {
    let mut out = PolicyEntries::new();
    for l4 in 0..=24u32 {
        let prefixlen = DP_POLICY_STATIC_PREFIX + l4;
        let first = PolicyKey {
            prefixlen,
            endpoint_id,
            ..PolicyKey::default()
        };
        let last = PolicyKey {
            prefixlen,
            endpoint_id,
            direction: u8::MAX,
            pad: u8::MAX,
            identity: u32::MAX,
            pad2: u8::MAX,
            protocol: u8::MAX,
            dport: u16::MAX,
        };
        out.extend(entries.range(first..=last).map(|(k, v)| (*k, *v)));
    }
    out
}

/// The endpoints map value of one endpoint: its id, identity, address and the
/// default-deny flag of each enforced default-deny direction.
pub fn endpoint_value(endpoint_id: u16, policy: &EndpointPolicy) -> EndpointValue {
    let mut value = EndpointValue {
        endpoint_id,
        identity: policy.identity,
        ..EndpointValue::default()
    };
    if policy.ingress.enforced && policy.ingress.default_deny {
        value.flags |= DP_EP_INGRESS_DEFAULT_DENY;
    }
    if policy.egress.enforced && policy.egress.default_deny {
        value.flags |= DP_EP_EGRESS_DEFAULT_DENY;
    }
    match policy.ip {
        Some(IpAddr::V4(ip)) => {
            value.flags |= DP_EP_HAS_IPV4;
            value.ipv4 = ip.octets();
        }
        Some(IpAddr::V6(ip)) => {
            value.flags |= DP_EP_HAS_IPV6;
            value.ipv6 = ip.octets();
        }
        None => {}
    }
    value
}

/// The ipcache key of a prefix (host bits cleared).
pub fn ipcache_key(net: IpNet) -> IpcacheKey {
    let net = net.trunc();
    let mut key = IpcacheKey {
        prefixlen: DP_IPCACHE_STATIC_PREFIX + u32::from(net.prefix_len()),
        ..IpcacheKey::default()
    };
    match net {
        IpNet::V4(n) => {
            key.family = DP_FAMILY_IPV4;
            key.addr[..4].copy_from_slice(&n.network().octets());
        }
        IpNet::V6(n) => {
            key.family = DP_FAMILY_IPV6;
            key.addr = n.network().octets();
        }
    }
    key
}

/// The ipcache entries for the compiler's prefixes (`Compiler::ipcache()`), plus
/// 0.0.0.0/0 -> world-ipv4 and ::/0 -> world-ipv6 as the header requires. Those two
/// replace a /0 the compiler may list for a CIDR rule (which selects world anyway).
pub fn ipcache_entries(prefixes: impl IntoIterator<Item = (IpNet, Identity)>) -> IpcacheEntries {
    let mut out: IpcacheEntries = prefixes
        .into_iter()
        .map(|(net, identity)| (ipcache_key(net), IpcacheValue { identity }))
        .collect();
    for (net, identity) in [
        ("0.0.0.0/0", DP_IDENTITY_WORLD_IPV4),
        ("::/0", DP_IDENTITY_WORLD_IPV6),
    ] {
        let net: IpNet = net.parse().expect("static prefix");
        out.insert(ipcache_key(net), IpcacheValue { identity });
    }
    out
}

/// The action the programs' policy lookup gives (bpf/datapath.h, lookup steps 1-4) for a
/// flow of endpoint `ep` in `direction` with peer identity `peer`, `protocol` and
/// destination `port` (host order, 0 where ports do not apply), over `entries` as they are
/// in the map: `DP_ACT_ALLOW`, `DP_ACT_REDIRECT` or `DP_ACT_DENY`. The agent uses it to
/// re-check established flows after a policy change. Visibility flags are not applied
/// (they never turn anything into a deny).
pub fn lookup_action(
    entries: &PolicyEntries,
    ep: &EndpointValue,
    direction: u8,
    peer: Identity,
    protocol: u8,
    port: u16,
) -> u8 {
    let longest = |identity: Identity| {
        (0..=24u32).rev().find_map(|l4| {
            let bits = ((u32::from(protocol) << 16) | u32::from(port)) & mask24(l4);
            let key = PolicyKey {
                prefixlen: DP_POLICY_STATIC_PREFIX + l4,
                endpoint_id: ep.endpoint_id,
                direction,
                pad: 0,
                identity,
                pad2: 0,
                protocol: (bits >> 16) as u8,
                dport: (bits as u16).to_be(),
            };
            entries.get(&key).copied()
        })
    };
    let a = longest(peer).map_or(DP_ACT_NONE, |v| v.action);
    let b = longest(DP_IDENTITY_ANY).map_or(DP_ACT_NONE, |v| v.action);
    let action = a.max(b);
    if action != DP_ACT_NONE {
        return action;
    }
    let deny_flag = if direction == DP_DIR_INGRESS {
        DP_EP_INGRESS_DEFAULT_DENY
    } else {
        DP_EP_EGRESS_DEFAULT_DENY
    };
    if ep.flags & deny_flag != 0 {
        DP_ACT_DENY
    } else {
        DP_ACT_ALLOW
    }
}

/// The top `l4` of 24 bits (protocol then port) set.
fn mask24(l4: u32) -> u32 {
    if l4 == 0 {
        0
    } else {
        (0x00ff_ffff >> (24 - l4)) << (24 - l4)
    }
}

/// What to write and delete to turn `old` into `new`: upserts are the entries of `new` that
/// are absent from `old` or differ there; deletes are the keys of `old` absent from `new`.
pub fn diff<K: Ord + Copy, V: PartialEq + Copy>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) -> (Vec<(K, V)>, Vec<K>) {
    let upserts = new
        .iter()
        .filter(|(k, v)| old.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect();
    let deletes = old
        .keys()
        .filter(|k| !new.contains_key(k))
        .copied()
        .collect();
    (upserts, deletes)
}

#[cfg(test)]
#[path = "entries_tests.rs"]
mod tests;
