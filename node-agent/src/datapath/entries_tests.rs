//! From CNP YAML through the compiler to map entries, and a model of the programs' lookup
//! order (bpf/datapath.h) checked against the compiler's own verdicts.

use super::*;
use crate::compiler::evaluate::{Verdict, evaluate};
use crate::compiler::tests::{compiler as compile, key};
use crate::compiler::{Compiler, EndpointKey};
use crate::datapath::abi::{DP_ACT_NONE, DP_IDENTITY_WORLD};
use crate::policy::Direction;

const EP: u16 = 7;
const PORTS: ProxyPorts = ProxyPorts {
    http_ingress: 15001,
    http_egress: 15002,
    dns: 15053,
};
const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const IN: u8 = DP_DIR_INGRESS;
const OUT: u8 = DP_DIR_EGRESS;

/// A pod in `prod` of the compiler tests' world.
fn ep_key(name: &str) -> EndpointKey {
    key(&format!("prod/{name}"))
}

fn id(c: &Compiler, name: &str) -> Identity {
    c.pod(&ep_key(name)).expect("pod").identity
}

fn entries(c: &Compiler, name: &str) -> PolicyEntries {
    policy_entries(EP, c.endpoint(&ep_key(name)).expect("compiled"), &PORTS)
}

/// (direction, identity, protocol, port, l4 prefix bits) -> key.
fn k(direction: u8, identity: Identity, protocol: u8, port: u16, l4: u8) -> PolicyKey {
    PolicyKey {
        prefixlen: DP_POLICY_STATIC_PREFIX + u32::from(l4),
        endpoint_id: EP,
        direction,
        pad: 0,
        identity,
        pad2: 0,
        protocol,
        dport: port.to_be(),
    }
}

fn v(action: u8, proxy_port: u16, l4: u8) -> PolicyValue {
    PolicyValue {
        action,
        flags: 0,
        proxy_port,
        l4_prefixlen: l4,
        pad: [0; 3],
    }
}

/// Whether an LPM entry with `key` matches the lookup key `probe` (bits up to prefixlen).
fn lpm_matches(key: &PolicyKey, probe: &PolicyKey) -> bool {
    if (key.endpoint_id, key.direction, key.identity)
        != (probe.endpoint_id, probe.direction, probe.identity)
    {
        return false;
    }
    let l4 = key.prefixlen - DP_POLICY_STATIC_PREFIX;
    let kbits = (u32::from(key.protocol) << 16) | u32::from(u16::from_be(key.dport));
    let pbits = (u32::from(probe.protocol) << 16) | u32::from(u16::from_be(probe.dport));
    l4 == 0 || (kbits >> (24 - l4)) == (pbits >> (24 - l4))
}

fn lpm(entries: &PolicyEntries, probe: &PolicyKey) -> Option<PolicyValue> {
    entries
        .iter()
        .filter(|(key, _)| lpm_matches(key, probe))
        .max_by_key(|(key, _)| key.prefixlen)
        .map(|(_, v)| *v)
}

/// The programs' lookup order (bpf/datapath.h, steps 1-4).
fn datapath_verdict(
    entries: &PolicyEntries,
    ep: &EndpointValue,
    direction: u8,
    peer: Identity,
    protocol: u8,
    port: u16,
) -> (Verdict, u16) {
    let probe = |identity| PolicyKey {
        prefixlen: DP_POLICY_STATIC_PREFIX + 24,
        endpoint_id: EP,
        direction,
        pad: 0,
        identity,
        pad2: 0,
        protocol,
        dport: port.to_be(),
    };
    let a = lpm(entries, &probe(peer));
    let b = lpm(entries, &probe(DP_IDENTITY_ANY));
    let action = a
        .map_or(DP_ACT_NONE, |v| v.action)
        .max(b.map_or(DP_ACT_NONE, |v| v.action));
    let proxy = [a, b]
        .into_iter()
        .flatten()
        .find(|v| v.action == DP_ACT_REDIRECT)
        .map_or(0, |v| v.proxy_port);
    let deny_flag = if direction == DP_DIR_INGRESS {
        DP_EP_INGRESS_DEFAULT_DENY
    } else {
        DP_EP_EGRESS_DEFAULT_DENY
    };
    // The agent's own lookup (used to re-check established flows) agrees with this model.
    let agent = super::lookup_action(entries, ep, direction, peer, protocol, port);
    let model = match action {
        DP_ACT_NONE if ep.flags & deny_flag != 0 => DP_ACT_DENY,
        DP_ACT_NONE => DP_ACT_ALLOW,
        other => other,
    };
    assert_eq!(
        agent, model,
        "lookup_action for peer {peer} {protocol}/{port}"
    );
    match action {
        DP_ACT_NONE if ep.flags & deny_flag != 0 => (Verdict::Denied, 0),
        DP_ACT_NONE | DP_ACT_ALLOW => (Verdict::Allowed, 0),
        DP_ACT_REDIRECT => (Verdict::AllowedViaProxy, proxy),
        _ => (Verdict::Denied, 0),
    }
}

/// Every endpoint, direction, peer and a spread of ports: the datapath model must give
/// the compiler's verdict.
fn assert_matches_compiler(c: &Compiler) {
    let mut peers: Vec<Identity> = ["web", "client", "db"].iter().map(|n| id(c, n)).collect();
    peers.extend([DP_IDENTITY_WORLD, DP_IDENTITY_WORLD_IPV4, 1]);
    let protos = [
        (Protocol::Tcp, TCP),
        (Protocol::Udp, UDP),
        (Protocol::Sctp, SCTP),
    ];
    for policy in c.endpoints() {
        let entries = policy_entries(EP, policy, &PORTS);
        let ep = endpoint_value(EP, policy);
        for (direction, dir) in [(Direction::Ingress, IN), (Direction::Egress, OUT)] {
            for &peer in &peers {
                for (protocol, proto) in protos {
                    for port in [1, 53, 79, 80, 81, 83, 84, 88, 89, 90, 91, 443, 8080, 65535] {
                        let want =
                            evaluate(policy.direction(direction), peer, protocol, port).verdict;
                        let (got, _) = datapath_verdict(&entries, &ep, dir, peer, proto, port);
                        assert_eq!(
                            got, want,
                            "{} {direction:?} peer {peer} {proto}/{port}\n{entries:#?}",
                            policy.key
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn l3_only_allow() {
    let c = compile(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
"#,
    );
    let client = id(&c, "client");
    let got = entries(&c, "web");
    let want: PolicyEntries = [(k(IN, client, 0, 0, 0), v(DP_ACT_ALLOW, 0, 0))].into();
    assert_eq!(got, want);
    assert_eq!(
        want.keys().next().expect("one entry").prefixlen,
        DP_POLICY_STATIC_PREFIX
    );

    let ep = endpoint_value(EP, web_policy(&c));
    assert_eq!(
        ep,
        EndpointValue {
            endpoint_id: EP,
            flags: DP_EP_INGRESS_DEFAULT_DENY | DP_EP_HAS_IPV4,
            identity: id(&c, "web"),
            ipv4: [10, 0, 1, 1],
            ipv6: [0; 16],
        }
    );
    assert_matches_compiler(&c);
}

#[test]
fn port_allow_and_range_blocks() {
    let c = compile(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - toPorts:
    - ports: [{port: "443", protocol: TCP}]
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", endPort: 90, protocol: TCP}]
"#,
    );
    let client = id(&c, "client");
    let got = entries(&c, "web");
    let want: PolicyEntries = [
        // A port rule without an L3 part: identity 0, one port = 8 + 16 bits.
        (k(IN, DP_IDENTITY_ANY, TCP, 443, 24), v(DP_ACT_ALLOW, 0, 24)),
        // 80-90 = 80-87 (8 ports), 88-89 (2), 90 (1).
        (k(IN, client, TCP, 80, 21), v(DP_ACT_ALLOW, 0, 21)),
        (k(IN, client, TCP, 88, 23), v(DP_ACT_ALLOW, 0, 23)),
        (k(IN, client, TCP, 90, 24), v(DP_ACT_ALLOW, 0, 24)),
    ]
    .into();
    assert_eq!(got, want);
    assert_eq!(
        got.keys()
            .map(|k| k.prefixlen)
            .collect::<Vec<_>>()
            .iter()
            .max(),
        Some(&(DP_POLICY_STATIC_PREFIX + 24))
    );
    assert_matches_compiler(&c);
}

#[test]
fn split_port_range_blocks() {
    assert_eq!(split_port_range(80, 90), vec![(80, 13), (88, 15), (90, 16)]);
    assert_eq!(split_port_range(443, 443), vec![(443, 16)]);
    assert_eq!(split_port_range(1024, 2047), vec![(1024, 6)]);
    assert_eq!(split_port_range(32768, 65535), vec![(32768, 1)]);
    assert_eq!(split_port_range(1, 65535).len(), 16);
    // The header's bound: one range is at most 30 blocks.
    assert_eq!(split_port_range(1, 65534).len(), 30);
    for (lo, hi) in [(1, 65535), (7, 1000), (80, 90), (65535, 65535), (2, 65533)] {
        let blocks = split_port_range(lo, hi);
        let mut next = u32::from(lo);
        for (first, bits) in blocks {
            let size = 1u32 << (16 - bits);
            assert_eq!(u32::from(first), next);
            assert_eq!(u32::from(first) % size, 0, "aligned");
            next += size;
        }
        assert_eq!(next, u32::from(hi) + 1);
    }
}

#[test]
fn any_protocol_expands_to_tcp_udp_sctp() {
    let c = compile(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toEndpoints: [{matchLabels: {app: db}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
"#,
    );
    let db = id(&c, "db");
    let got = entries(&c, "web");
    let want: PolicyEntries = [TCP, UDP, SCTP]
        .into_iter()
        .map(|p| (k(OUT, db, p, 53, 24), v(DP_ACT_ALLOW, 0, 24)))
        .collect();
    assert_eq!(got, want);
    let ep = endpoint_value(EP, web_policy(&c));
    assert_eq!(ep.flags, DP_EP_EGRESS_DEFAULT_DENY | DP_EP_HAS_IPV4);
    assert_matches_compiler(&c);
}

#[test]
fn deny_is_folded_into_narrower_allow_of_same_identity() {
    let c = compile(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
  - fromEndpoints: [{matchLabels: {app: db}}]
    toPorts:
    - ports: [{port: "88", protocol: TCP}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
  - fromEndpoints: [{matchLabels: {app: db}}]
    toPorts:
    - ports: [{port: "80", endPort: 90, protocol: TCP}]
"#,
    );
    let (client, db) = (id(&c, "client"), id(&c, "db"));
    let got = entries(&c, "web");
    let want: PolicyEntries = [
        // The broad deny and the narrower allow: the allow's entry carries the deny, or
        // the LPM lookup for client TCP/80 would return a bare allow.
        (k(IN, client, 0, 0, 0), v(DP_ACT_DENY, 0, 0)),
        (k(IN, client, TCP, 80, 24), v(DP_ACT_DENY, 0, 24)),
        // A deny block 80-87/88-89/90 and an allow on 88 inside the 88-89 block.
        (k(IN, db, TCP, 80, 21), v(DP_ACT_DENY, 0, 21)),
        (k(IN, db, TCP, 88, 23), v(DP_ACT_DENY, 0, 23)),
        (k(IN, db, TCP, 88, 24), v(DP_ACT_DENY, 0, 24)),
        (k(IN, db, TCP, 90, 24), v(DP_ACT_DENY, 0, 24)),
    ]
    .into();
    assert_eq!(got, want);
    assert_matches_compiler(&c);
}

#[test]
fn identity_entries_and_wildcard_entries_stay_apart() {
    let c = compile(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
  ingressDeny:
  - toPorts:
    - ports: [{port: "8080", protocol: TCP}]
"#,
    );
    let client = id(&c, "client");
    let got = entries(&c, "web");
    // Nothing folds across identities: the programs merge the two lookups.
    let want: PolicyEntries = [
        (k(IN, client, 0, 0, 0), v(DP_ACT_ALLOW, 0, 0)),
        (k(IN, DP_IDENTITY_ANY, TCP, 80, 24), v(DP_ACT_ALLOW, 0, 24)),
        (k(IN, DP_IDENTITY_ANY, TCP, 8080, 24), v(DP_ACT_DENY, 0, 24)),
    ]
    .into();
    assert_eq!(got, want);
    let ep = endpoint_value(EP, web_policy(&c));
    let verdict = |peer, port| datapath_verdict(&got, &ep, IN, peer, TCP, port).0;
    assert_eq!(
        verdict(client, 8080),
        Verdict::Denied,
        "wildcard deny beats the L3 allow"
    );
    assert_eq!(verdict(client, 22), Verdict::Allowed);
    assert_eq!(verdict(id(&c, "db"), 80), Verdict::Allowed);
    assert_eq!(verdict(id(&c, "db"), 22), Verdict::Denied, "default deny");
    assert_matches_compiler(&c);
}

#[test]
fn redirects_carry_the_proxy_port() {
    let c = compile(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: /public}]
  - fromEndpoints: [{matchLabels: {app: client}}]
  egress:
  - toEndpoints: [{matchLabels: {app: db}}]
    toPorts:
    - ports: [{port: "53", protocol: UDP}]
      rules:
        dns: [{matchPattern: "*"}]
  - toEndpoints: [{matchLabels: {app: db}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http: [{}]
"#,
    );
    let (client, db) = (id(&c, "client"), id(&c, "db"));
    let got = entries(&c, "web");
    let want: PolicyEntries = [
        // The L3 allow of the same peer keeps its entry; on port 80 the redirect wins
        // (SEMANTICS 3.4: the allow wildcards L7 but traffic still goes through the proxy).
        (k(IN, client, 0, 0, 0), v(DP_ACT_ALLOW, 0, 0)),
        (k(IN, client, TCP, 80, 24), v(DP_ACT_REDIRECT, 15001, 24)),
        (k(OUT, db, UDP, 53, 24), v(DP_ACT_REDIRECT, 15053, 24)),
        (k(OUT, db, TCP, 8080, 24), v(DP_ACT_REDIRECT, 15002, 24)),
    ]
    .into();
    assert_eq!(got, want);
    let ep = endpoint_value(EP, web_policy(&c));
    assert_eq!(
        datapath_verdict(&got, &ep, IN, client, TCP, 80),
        (Verdict::AllowedViaProxy, 15001)
    );
    assert_matches_compiler(&c);
}

#[test]
fn default_allow_direction_has_no_default_deny_flag() {
    let c = compile(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  enableDefaultDeny: {ingress: false}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
"#,
    );
    let ep = endpoint_value(EP, web_policy(&c));
    assert_eq!(
        ep.flags & (DP_EP_INGRESS_DEFAULT_DENY | DP_EP_EGRESS_DEFAULT_DENY),
        0
    );
    let got = entries(&c, "web");
    assert_eq!(
        got.get(&k(IN, id(&c, "client"), 0, 0, 0)),
        Some(&v(DP_ACT_DENY, 0, 0))
    );
    assert_matches_compiler(&c);
}

#[test]
fn ipcache_has_pods_cidrs_and_world() {
    let c = compile(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toCIDR: [192.168.0.0/16]
"#,
    );
    let got = ipcache_entries(c.ipcache());
    let world4 = IpcacheKey {
        prefixlen: DP_IPCACHE_STATIC_PREFIX,
        family: DP_FAMILY_IPV4,
        pad: [0; 3],
        addr: [0; 16],
    };
    let world6 = IpcacheKey {
        family: DP_FAMILY_IPV6,
        ..world4
    };
    assert_eq!(got[&world4].identity, DP_IDENTITY_WORLD_IPV4);
    assert_eq!(got[&world6].identity, DP_IDENTITY_WORLD_IPV6);
    let mut web = [0u8; 16];
    web[..4].copy_from_slice(&[10, 0, 1, 1]);
    let web_key = IpcacheKey {
        prefixlen: DP_IPCACHE_STATIC_PREFIX + 32,
        family: DP_FAMILY_IPV4,
        pad: [0; 3],
        addr: web,
    };
    assert_eq!(got[&web_key].identity, id(&c, "web"));
    let mut net = [0u8; 16];
    net[..2].copy_from_slice(&[192, 168]);
    let cidr_key = IpcacheKey {
        prefixlen: DP_IPCACHE_STATIC_PREFIX + 16,
        addr: net,
        ..web_key
    };
    assert_eq!(
        got[&cidr_key].identity,
        c.identity_of_ip("192.168.3.4".parse().expect("literal"))
    );
    // The compiler tests' five pods, one CIDR, two world entries.
    assert_eq!(got.len(), 8);
    // Host bits are cleared; IPv6 uses all 16 bytes.
    let v6 = ipcache_key("2001:db8::1/32".parse().expect("literal"));
    assert_eq!(v6.prefixlen, DP_IPCACHE_STATIC_PREFIX + 32);
    assert_eq!(&v6.addr[..4], &[0x20, 0x01, 0x0d, 0xb8]);
    assert_eq!(&v6.addr[4..], &[0; 12]);
}

#[test]
fn diff_gives_upserts_and_deletes() {
    let before = compile(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}, {port: "81", protocol: TCP}]
"#,
    );
    let after = compile(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}, {port: "443", protocol: TCP}]
  ingressDeny:
  - toPorts:
    - ports: [{port: "81", protocol: TCP}]
"#,
    );
    let (old, new) = (entries(&before, "web"), entries(&after, "web"));
    let (upserts, deletes) = diff(&old, &new);
    assert_eq!(
        upserts,
        vec![
            (k(IN, 0, TCP, 81, 24), v(DP_ACT_DENY, 0, 24)),
            (k(IN, 0, TCP, 443, 24), v(DP_ACT_ALLOW, 0, 24)),
        ]
    );
    assert!(deletes.is_empty());
    let (upserts, deletes) = diff(&new, &old);
    assert_eq!(
        upserts,
        vec![(k(IN, 0, TCP, 81, 24), v(DP_ACT_ALLOW, 0, 24))]
    );
    assert_eq!(deletes, vec![k(IN, 0, TCP, 443, 24)]);
    assert_eq!(diff(&new, &new), (vec![], vec![]));
    // Applying the diff to the old map gives the new one.
    let (upserts, deletes) = diff(&old, &new);
    let mut applied = old.clone();
    for key in deletes {
        applied.remove(&key);
    }
    applied.extend(upserts);
    assert_eq!(applied, new);
}

#[test]
fn mixed_policy_matches_the_compiler() {
    let c = compile(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET}]
  - fromEntities: [all]
    toPorts:
    - ports: [{port: "80", endPort: 443, protocol: ANY}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: db}}]
    toPorts:
    - ports: [{port: "84", endPort: 89, protocol: UDP}]
  egress:
  - toEntities: [world]
  - toEndpoints: [{}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*"}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: other, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: client}}
  enableDefaultDeny: {egress: false}
  egress:
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET}]
  egressDeny:
  - toEndpoints: [{matchLabels: {app: db}}]
"#,
    );
    let got = entries(&c, "web");
    assert!(
        got.values()
            .any(|v| v.action == DP_ACT_REDIRECT && v.proxy_port == 15001)
    );
    assert_matches_compiler(&c);
}

fn web_policy(c: &Compiler) -> &crate::compiler::EndpointPolicy {
    c.endpoint(&ep_key("web")).expect("compiled")
}
