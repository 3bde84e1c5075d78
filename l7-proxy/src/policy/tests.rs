//! Policy state built from hand-written `NetworkPolicy` and `Identity` resources, checked
//! against SEMANTICS 2, 3, 4 and 10 (the node-agent's `compiler::evaluate` is the reference).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use xds::TypeHandler as _;
use xds::proto;

use super::*;
use crate::http_rules::{HeaderEdit, RequestView, TargetError};

const ENDPOINT_IP: &str = "10.0.0.10";
const FRONTEND: u32 = 1000;
const OTHER: u32 = 2000;

// ---------------------------------------------------------------------------------------
// Builders.

fn origin(path: &str) -> String {
    format!("CiliumNetworkPolicy default/web {path}")
}

fn port_entry(
    protocol: proto::Protocol,
    port: u32,
    end_port: u32,
    peers: &[u32],
    action: proto::Action,
    from: &str,
) -> proto::PortPolicy {
    proto::PortPolicy {
        protocol: protocol as i32,
        port,
        end_port,
        all_identities: false,
        remote_identities: peers.to_vec(),
        action: action as i32,
        peer: format!("{peers:?}"),
        origins: vec![origin(from)],
        ..Default::default()
    }
}

fn allow(port: u32, peers: &[u32], from: &str) -> proto::PortPolicy {
    port_entry(
        proto::Protocol::Tcp,
        port,
        port,
        peers,
        proto::Action::Allow,
        from,
    )
}

fn deny(port: u32, peers: &[u32], from: &str) -> proto::PortPolicy {
    port_entry(
        proto::Protocol::Tcp,
        port,
        port,
        peers,
        proto::Action::Deny,
        from,
    )
}

fn redirect(
    port: u32,
    peers: &[u32],
    from: &str,
    rules: Vec<proto::HttpRule>,
) -> proto::PortPolicy {
    let mut entry = port_entry(
        proto::Protocol::Tcp,
        port,
        port,
        peers,
        proto::Action::Redirect,
        from,
    );
    entry.parser = proto::L7Parser::Http as i32;
    entry.http_rule_sets = vec![proto::HttpRuleSet {
        origin: origin(from),
        rules,
    }];
    entry
}

fn rule(method: &str, path: &str) -> proto::HttpRule {
    proto::HttpRule {
        method: Some(method.to_owned()),
        path: Some(path.to_owned()),
        ..Default::default()
    }
}

fn direction(entries: Vec<proto::PortPolicy>) -> proto::DirectionPolicy {
    proto::DirectionPolicy {
        enforced: true,
        default_deny: true,
        entries,
    }
}

fn network_policy(
    name: &str,
    ips: &[&str],
    ingress: Option<proto::DirectionPolicy>,
    egress: Option<proto::DirectionPolicy>,
) -> NamedResource {
    let (namespace, pod) = name.split_once('/').unwrap_or(("default", name));
    let body = proto::NetworkPolicy {
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
        ips: ips.iter().map(|s| (*s).to_owned()).collect(),
        identity: 42,
        ingress,
        egress,
        egress_fqdn: false,
    };
    (
        name.to_owned(),
        Arc::new(proto::Resource {
            name: name.to_owned(),
            version: "1".to_owned(),
            body: Some(proto::resource::Body::NetworkPolicy(body)),
        }),
    )
}

type Resources = BTreeMap<String, Arc<proto::Resource>>;
type NamedResource = (String, Arc<proto::Resource>);
/// (case, entry, [(TCP port, allowed)]).
type PortCase = (&'static str, proto::PortPolicy, &'static [(u16, bool)]);

fn resources(items: Vec<NamedResource>) -> Resources {
    items.into_iter().collect()
}

/// One endpoint at `ENDPOINT_IP` with this ingress policy.
fn ingress_policies(entries: Vec<proto::PortPolicy>) -> EndpointPolicies {
    let res = resources(vec![network_policy(
        "default/web",
        &[ENDPOINT_IP],
        Some(direction(entries)),
        None,
    )]);
    PolicyHandler::new().build(&res).expect("policy compiles")
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

fn ingress(policies: &EndpointPolicies, port: u16, peer_identity: u32) -> ConnectionPolicy {
    policies.connection(
        Direction::Ingress,
        addr(ENDPOINT_IP, port),
        addr("10.0.9.9", 40000),
        peer_identity,
    )
}

fn get(target: &str) -> RequestView<'_> {
    RequestView {
        method: "GET",
        target,
        host: Some("web"),
        headers: &[],
    }
}

/// `allowed`, `denied`, `allowed-via-proxy`, plus the reason for the first two.
fn summary(verdict: &L3Verdict) -> String {
    match verdict {
        L3Verdict::Allowed { reason, .. } | L3Verdict::Denied { reason, .. } => {
            format!("{} {}", verdict.name(), reason.name())
        }
        L3Verdict::Redirect(r) => format!(
            "allowed-via-proxy sets={} allow_all={}",
            r.rule_sets.len(),
            r.allow_all
        ),
        L3Verdict::NotHttp { parser, .. } => format!("not-http {}", parser.name()),
        L3Verdict::Unknown => "unknown".to_owned(),
    }
}

fn matched(decision: &RequestDecision) -> Option<&str> {
    match decision {
        RequestDecision::Allowed { matched, .. } => Some(matched),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// L3/L4.

// SEMANTICS 2.1: an enforced direction denies what no entry allows; 2.2 / not enforced:
// everything is allowed.
#[test]
fn default_deny_and_no_policy() {
    let enforced = ingress_policies(vec![allow(80, &[FRONTEND], "spec.ingress[0]")]);
    let res = resources(vec![network_policy(
        "default/web",
        &[ENDPOINT_IP],
        Some(proto::DirectionPolicy::default()),
        None,
    )]);
    let open = PolicyHandler::new().build(&res).expect("compiles");
    let cases: [(&str, &EndpointPolicies, u16, u32, &str); 5] = [
        (
            "allowed peer and port",
            &enforced,
            80,
            FRONTEND,
            "allowed allow-rule",
        ),
        ("other peer", &enforced, 80, OTHER, "denied default-deny"),
        ("other port", &enforced, 81, FRONTEND, "denied default-deny"),
        ("not enforced", &open, 80, OTHER, "allowed no-policy"),
        (
            "not enforced, any port",
            &open,
            9999,
            WORLD,
            "allowed no-policy",
        ),
    ];
    for (name, policies, port, peer, want) in cases {
        let conn = ingress(policies, port, peer);
        assert_eq!(summary(&conn.verdict), want, "{name}");
    }
    let conn = ingress(&enforced, 80, FRONTEND);
    assert_eq!(
        conn.verdict.origins(),
        [Arc::<str>::from(origin("spec.ingress[0]").as_str())]
    );
    // SEMANTICS 10.2: an allowed connection without L7 rules on this side passes requests.
    assert_eq!(matched(&conn.evaluate(&get("/x"))), Some("no L7 rules"));
    // An absent direction is the proto3 default: not enforced.
    let res = resources(vec![network_policy(
        "default/web",
        &[ENDPOINT_IP],
        None,
        None,
    )]);
    let absent = PolicyHandler::new().build(&res).expect("compiles");
    assert_eq!(
        summary(&ingress(&absent, 80, OTHER).verdict),
        "allowed no-policy"
    );
}

// SEMANTICS 2.3: a deny beats every allow, an L7 allow included; the request is never
// evaluated (the kernel drops it).
#[test]
fn deny_beats_l7_allow() {
    let policies = ingress_policies(vec![
        redirect(
            80,
            &[FRONTEND],
            "spec.ingress[0].toPorts[0]",
            vec![rule("GET", "/.*")],
        ),
        allow(80, &[FRONTEND], "spec.ingress[1]"),
        deny(80, &[FRONTEND], "specs[1].ingressDeny[0]"),
    ]);
    let conn = ingress(&policies, 80, FRONTEND);
    assert_eq!(summary(&conn.verdict), "denied deny-rule");
    assert_eq!(
        conn.verdict.origins(),
        [Arc::<str>::from(origin("specs[1].ingressDeny[0]").as_str())]
    );
    assert!(!conn.is_http());
    assert!(matches!(
        conn.evaluate(&get("/public")),
        RequestDecision::Denied { .. }
    ));
    // The deny covers only its peer: another peer's L7 allow still applies.
    let policies = ingress_policies(vec![
        redirect(
            80,
            &[FRONTEND, OTHER],
            "spec.ingress[0].toPorts[0]",
            vec![rule("GET", "/.*")],
        ),
        deny(80, &[FRONTEND], "specs[1].ingressDeny[0]"),
    ]);
    assert_eq!(
        summary(&ingress(&policies, 80, FRONTEND).verdict),
        "denied deny-rule"
    );
    assert_eq!(
        summary(&ingress(&policies, 80, OTHER).verdict),
        "allowed-via-proxy sets=1 allow_all=false"
    );
}

// SEMANTICS 3.3: the rule sets of every matching entry are ORed; the fields of one rule
// are ANDed. `matched` names the origin and the rule index.
#[test]
fn l7_rules_ored_across_entries() {
    let a = "spec.ingress[0].toPorts[0]";
    let b = "specs[1].ingress[0].toPorts[0]";
    let policies = ingress_policies(vec![
        redirect(
            80,
            &[FRONTEND],
            a,
            vec![rule("GET", "/a"), rule("POST", "/a2")],
        ),
        redirect(80, &[FRONTEND, OTHER], b, vec![rule("GET", "/b")]),
    ]);
    let conn = ingress(&policies, 80, FRONTEND);
    assert_eq!(
        summary(&conn.verdict),
        "allowed-via-proxy sets=2 allow_all=false"
    );
    assert!(conn.is_http());
    let cases: [(&str, &str, Option<String>); 5] = [
        ("GET", "/a", Some(format!("{}.rules.http[0]", origin(a)))),
        ("POST", "/a2", Some(format!("{}.rules.http[1]", origin(a)))),
        ("GET", "/b", Some(format!("{}.rules.http[0]", origin(b)))),
        // AND within a rule: the method of rule 0 with the path of rule 1.
        ("GET", "/a2", None),
        ("GET", "/c", None),
    ];
    for (method, target, want) in cases {
        let req = RequestView {
            method,
            ..get(target)
        };
        let decision = conn.evaluate(&req);
        assert_eq!(matched(&decision), want.as_deref(), "{method} {target}");
        if let RequestDecision::Denied { reason } = &decision {
            // The 403 explains both rule sets.
            assert!(
                reason.contains(&origin(a)) && reason.contains(&origin(b)),
                "{reason}"
            );
        }
    }
    // The other peer only matches the second entry.
    let conn = ingress(&policies, 80, OTHER);
    assert!(!conn.evaluate(&get("/a")).is_allowed());
    assert!(conn.evaluate(&get("/b")).is_allowed());
}

// SEMANTICS 3.4, 3.5: a plain allow for the peer on a redirected port, or `l7_allow_all`
// (`http: [{}]`), makes every request pass, still through the proxy; the target is still
// normalised (4.6) and a malformed one still gets 400 (4.12).
#[test]
fn allow_all_wildcard() {
    let l7 = || {
        redirect(
            80,
            &[FRONTEND],
            "spec.ingress[0].toPorts[0]",
            vec![rule("GET", "/only")],
        )
    };
    let mut flagged = l7();
    flagged.l7_allow_all = true;
    let cases: [(&str, Vec<proto::PortPolicy>); 3] = [
        (
            "L3/L4 allow on the port",
            vec![l7(), allow(80, &[FRONTEND], "spec.ingress[1]")],
        ),
        (
            "L3-only allow (every port)",
            vec![
                l7(),
                port_entry(
                    proto::Protocol::Any,
                    0,
                    0,
                    &[FRONTEND],
                    proto::Action::Allow,
                    "spec.ingress[1]",
                ),
            ],
        ),
        ("l7_allow_all", vec![flagged]),
    ];
    for (name, entries) in cases {
        let policies = ingress_policies(entries);
        let conn = ingress(&policies, 80, FRONTEND);
        let L3Verdict::Redirect(redirect) = &conn.verdict else {
            panic!("{name}: {:?}", conn.verdict);
        };
        assert!(redirect.allow_all, "{name}");
        assert_eq!(
            conn.evaluate(&RequestView {
                method: "DELETE",
                ..get("/a/./b/../c//d?x=1")
            }),
            RequestDecision::Allowed {
                normalized_target: "/a/c/d?x=1".to_owned(),
                header_edits: vec![],
                logged_mismatches: vec![],
                matched: "wildcard".to_owned(),
            },
            "{name}"
        );
        assert_eq!(
            conn.evaluate(&get("/public%2F..%2Fadmin")),
            RequestDecision::Rejected {
                status: 400,
                reason: TargetError::EncodedSeparator("%2F".to_owned()),
            },
            "{name}"
        );
        // Absolute-form: the authority becomes the Host forwarded.
        let RequestDecision::Allowed { header_edits, .. } =
            conn.evaluate(&get("http://other:8080/x"))
        else {
            panic!("{name}: absolute-form denied");
        };
        assert!(
            matches!(header_edits.as_slice(), [HeaderEdit::Set { name, value, .. }] if name == "host" && value == "other:8080"),
            "{name}: {header_edits:?}"
        );
        // The wildcard is for this peer only.
        assert!(!ingress(&policies, 80, OTHER).is_http(), "{name}");
    }
}

// SEMANTICS 3.1: ranges, single ports, port 0 (every port), PROTOCOL_ANY (every
// protocol); the HTTP proxy evaluates TCP.
#[test]
fn port_ranges_and_any() {
    let entry = |protocol, port, end_port| {
        port_entry(
            protocol,
            port,
            end_port,
            &[FRONTEND],
            proto::Action::Allow,
            "spec.ingress[0]",
        )
    };
    use proto::Protocol::{Any, Sctp, Tcp, Udp};
    let cases: [PortCase; 7] = [
        (
            "range",
            entry(Tcp, 8000, 8080),
            &[
                (7999, false),
                (8000, true),
                (8042, true),
                (8080, true),
                (8081, false),
            ],
        ),
        (
            "single port",
            entry(Tcp, 80, 80),
            &[(79, false), (80, true), (81, false)],
        ),
        (
            "end_port unset is one port",
            entry(Tcp, 80, 0),
            &[(80, true), (81, false)],
        ),
        ("UDP entry, TCP flow", entry(Udp, 80, 80), &[(80, false)]),
        ("SCTP entry, TCP flow", entry(Sctp, 0, 0), &[(80, false)]),
        (
            "ANY protocol, one port",
            entry(Any, 443, 443),
            &[(443, true), (80, false)],
        ),
        (
            "ANY protocol, port 0",
            entry(Any, 0, 0),
            &[(1, true), (80, true), (65535, true)],
        ),
    ];
    for (name, entry, ports) in cases {
        let policies = ingress_policies(vec![entry]);
        for &(port, allowed) in ports {
            let conn = ingress(&policies, port, FRONTEND);
            let want = if allowed {
                "allowed allow-rule"
            } else {
                "denied default-deny"
            };
            assert_eq!(summary(&conn.verdict), want, "{name}: port {port}");
        }
    }
    // TCP port 0: every TCP port; a redirect on a range keeps its rules on every port.
    let mut range = redirect(
        8000,
        &[FRONTEND],
        "spec.ingress[0].toPorts[0]",
        vec![rule("GET", "/")],
    );
    range.end_port = 8010;
    let policies = ingress_policies(vec![entry(Tcp, 0, 0), range]);
    assert_eq!(
        summary(&ingress(&policies, 22, FRONTEND).verdict),
        "allowed allow-rule"
    );
    assert_eq!(
        summary(&ingress(&policies, 8005, FRONTEND).verdict),
        "allowed-via-proxy sets=1 allow_all=true"
    );
}

// The port evaluated is the destination's: the local port for ingress, the peer's for
// egress; and the endpoint is looked up by the local IP in both directions.
#[test]
fn direction_picks_local_endpoint_and_destination_port() {
    let res = resources(vec![network_policy(
        "default/web",
        &[ENDPOINT_IP, "fd00::10"],
        Some(direction(vec![allow(80, &[FRONTEND], "spec.ingress[0]")])),
        Some(direction(vec![redirect(
            8080,
            &[OTHER],
            "spec.egress[0].toPorts[0]",
            vec![rule("GET", "/api/.*")],
        )])),
    )]);
    let policies = PolicyHandler::new().build(&res).expect("compiles");
    let local = addr(ENDPOINT_IP, 80);
    let cases: [(Direction, SocketAddr, SocketAddr, u32, &str); 6] = [
        (
            Direction::Ingress,
            local,
            addr("10.0.1.1", 8080),
            FRONTEND,
            "allowed allow-rule",
        ),
        (
            Direction::Ingress,
            addr(ENDPOINT_IP, 8080),
            addr("10.0.1.1", 80),
            FRONTEND,
            "denied default-deny",
        ),
        (
            Direction::Egress,
            addr(ENDPOINT_IP, 40000),
            addr("10.0.1.1", 8080),
            OTHER,
            "allowed-via-proxy sets=1 allow_all=false",
        ),
        (
            Direction::Egress,
            addr(ENDPOINT_IP, 8080),
            addr("10.0.1.1", 80),
            OTHER,
            "denied default-deny",
        ),
        (
            Direction::Egress,
            addr("fd00::10", 40000),
            addr("fd00::1", 8080),
            OTHER,
            "allowed-via-proxy sets=1 allow_all=false",
        ),
        // An IPv4-mapped local address (dual-stack socket) is the IPv4 endpoint.
        (
            Direction::Egress,
            addr("::ffff:10.0.0.10", 40000),
            addr("10.0.1.1", 8080),
            OTHER,
            "allowed-via-proxy sets=1 allow_all=false",
        ),
    ];
    for (dir, local, peer, id, want) in cases {
        let conn = policies.connection(dir, local, peer, id);
        assert_eq!(summary(&conn.verdict), want, "{dir:?} {local} -> {peer}");
        assert_eq!(
            conn.endpoint.as_ref().map(|e| e.name.as_str()),
            Some("default/web")
        );
    }
}

// An IP no resource claims: Unknown, and its requests are denied (the caller fails closed).
// An IP two resources claim: denied until the agent resolves it.
#[test]
fn unknown_and_conflicting_endpoints() {
    let res = resources(vec![
        network_policy("default/a", &["10.0.0.1"], None, None),
        network_policy("default/b", &["10.0.0.2", "10.0.0.9"], None, None),
        network_policy("default/c", &["10.0.0.9"], None, None),
    ]);
    let policies = PolicyHandler::new().build(&res).expect("compiles");
    let conn = |ip: &str| {
        policies.connection(
            Direction::Ingress,
            addr(ip, 80),
            addr("10.1.0.1", 1234),
            FRONTEND,
        )
    };
    let unknown = conn("10.0.0.3");
    assert!(matches!(unknown.verdict, L3Verdict::Unknown));
    assert!(unknown.endpoint.is_none());
    assert!(!unknown.is_http());
    assert!(matches!(
        unknown.evaluate(&get("/")),
        RequestDecision::Denied { .. }
    ));
    assert_eq!(summary(&conn("10.0.0.1").verdict), "allowed no-policy");
    assert_eq!(summary(&conn("10.0.0.2").verdict), "allowed no-policy");
    let conflict = conn("10.0.0.9");
    assert_eq!(summary(&conflict.verdict), "denied endpoint-conflict");
    assert_eq!(conflict.verdict.origins().len(), 2);
    assert_eq!(policies.len(), 3);
    assert!(policies.endpoint("default/c").is_some());
    assert!(
        policies
            .endpoint_by_ip("10.0.0.2".parse().expect("ip"))
            .is_some_and(|e| e.name == "default/b")
    );
}

// SEMANTICS 3.2, 5: a port redirected to the DNS proxy is not HTTP: the HTTP proxy must
// refuse the connection.
#[test]
fn dns_parser_port_is_not_http() {
    let mut dns = port_entry(
        proto::Protocol::Any,
        53,
        53,
        &[OTHER],
        proto::Action::Redirect,
        "spec.egress[0].toPorts[0]",
    );
    dns.parser = proto::L7Parser::Dns as i32;
    dns.dns_rule_sets = vec![proto::DnsRuleSet {
        origin: origin("spec.egress[0].toPorts[0]"),
        selectors: vec![proto::DnsSelector {
            selector: Some(proto::dns_selector::Selector::MatchPattern("*".to_owned())),
        }],
    }];
    let res = resources(vec![network_policy(
        "default/web",
        &[ENDPOINT_IP],
        None,
        Some(direction(vec![dns, allow(53, &[OTHER], "spec.egress[1]")])),
    )]);
    let policies = PolicyHandler::new().build(&res).expect("compiles");
    let conn = policies.connection(
        Direction::Egress,
        addr(ENDPOINT_IP, 40000),
        addr("10.96.0.10", 53),
        OTHER,
    );
    assert_eq!(summary(&conn.verdict), "not-http dns");
    assert_eq!(conn.verdict.name(), "allowed-via-proxy");
    assert!(!conn.is_http());
    let RequestDecision::Denied { reason } = conn.evaluate(&get("/")) else {
        panic!("a DNS port served as HTTP");
    };
    assert!(reason.contains("dns proxy"), "{reason}");
}

// A redirected port with no rule set and no wildcard allows nothing, but a malformed
// target is still a 400 (SEMANTICS 4.12).
#[test]
fn redirect_without_rules_denies() {
    let mut entry = redirect(80, &[FRONTEND], "spec.ingress[0].toPorts[0]", vec![]);
    entry.http_rule_sets.clear();
    let policies = ingress_policies(vec![entry]);
    let conn = ingress(&policies, 80, FRONTEND);
    assert_eq!(
        summary(&conn.verdict),
        "allowed-via-proxy sets=0 allow_all=false"
    );
    assert_eq!(
        conn.evaluate(&get("/x")),
        RequestDecision::Denied {
            reason: "no HTTP rules".to_owned()
        }
    );
    assert!(matches!(
        conn.evaluate(&get("/a#b")),
        RequestDecision::Rejected { status: 400, .. }
    ));
    // An empty rule set (`http: []` in the agent's output) also denies.
    let policies = ingress_policies(vec![redirect(80, &[FRONTEND], "x", vec![])]);
    assert!(
        !ingress(&policies, 80, FRONTEND)
            .evaluate(&get("/"))
            .is_allowed()
    );
}

// SEMANTICS 4.7, 4.8: headers and headerMatches survive the conversion, with their
// mismatch actions and secret references (no secret value here: the inline value is the
// fallback, as in Cilium).
#[test]
fn header_matches_convert() {
    let rule = proto::HttpRule {
        method: Some("GET".to_owned()),
        headers: vec!["X-Team: blue".to_owned()],
        header_matches: vec![
            proto::HeaderMatch {
                name: "X-Env".to_owned(),
                value: Some("prod".to_owned()),
                mismatch: "REPLACE".to_owned(),
                secret: None,
            },
            proto::HeaderMatch {
                name: "X-Token".to_owned(),
                value: Some("fallback".to_owned()),
                mismatch: String::new(),
                secret: Some(proto::SecretRef {
                    namespace: "default".to_owned(),
                    name: "token".to_owned(),
                }),
            },
        ],
        ..Default::default()
    };
    let policies = ingress_policies(vec![redirect(
        80,
        &[FRONTEND],
        "spec.ingress[0].toPorts[0]",
        vec![rule],
    )]);
    let conn = ingress(&policies, 80, FRONTEND);
    let req = |headers| RequestView {
        headers,
        ..get("/")
    };
    let decision = conn.evaluate(&req(&[
        ("x-team", "blue"),
        ("x-env", "dev"),
        ("x-token", "fallback"),
    ]));
    let RequestDecision::Allowed { header_edits, .. } = decision else {
        panic!("denied: {decision:?}");
    };
    assert!(
        matches!(header_edits.as_slice(), [HeaderEdit::Set { name, value, .. }] if name == "x-env" && value == "prod"),
        "{header_edits:?}"
    );
    assert!(
        !conn
            .evaluate(&req(&[("x-env", "prod"), ("x-token", "fallback")]))
            .is_allowed()
    );
    assert!(
        !conn
            .evaluate(&req(&[("x-team", "blue"), ("x-token", "other")]))
            .is_allowed()
    );
}

// ---------------------------------------------------------------------------------------
// NACKs (SEMANTICS 9.1): anything that cannot be enforced exactly rejects the response,
// naming the resource.

#[test]
fn invalid_resources_nack_naming_the_resource() {
    let good = network_policy(
        "default/good",
        &["10.0.0.1"],
        Some(direction(vec![redirect(
            80,
            &[FRONTEND],
            "ok",
            vec![rule("GET", "/ok")],
        )])),
        None,
    );
    let mut bad_protocol = allow(80, &[FRONTEND], "p");
    bad_protocol.protocol = 17;
    let mut bad_parser = redirect(80, &[FRONTEND], "p", vec![]);
    bad_parser.parser = 9;
    let mut bad_action = allow(80, &[FRONTEND], "p");
    bad_action.action = 5;
    let mut bad_mismatch = rule("GET", "/");
    bad_mismatch.header_matches = vec![proto::HeaderMatch {
        name: "X".to_owned(),
        value: Some("1".to_owned()),
        mismatch: "log".to_owned(),
        secret: None,
    }];
    let mut allow_with_parser = allow(80, &[FRONTEND], "p");
    allow_with_parser.parser = proto::L7Parser::Http as i32;
    let mut redirect_without_parser = redirect(80, &[FRONTEND], "p", vec![]);
    redirect_without_parser.parser = proto::L7Parser::None as i32;
    let mut range_backwards = allow(8080, &[FRONTEND], "p");
    range_backwards.end_port = 80;
    let bad_regex = direction(vec![
        allow(22, &[FRONTEND], "p"),
        redirect(
            80,
            &[FRONTEND],
            "spec.ingress[1].toPorts[0]",
            vec![rule("GET", "/ok"), rule("GET", "/(unclosed")],
        ),
    ]);
    let cases: [(&str, Vec<&str>, Option<proto::DirectionPolicy>, &str); 10] = [
        (
            "bad regex",
            vec![ENDPOINT_IP],
            Some(bad_regex),
            "ingress.entries[1]",
        ),
        (
            "bad IP",
            vec!["10.0.0.300"],
            None,
            "ips[0]: invalid IP address",
        ),
        (
            "unknown protocol",
            vec![ENDPOINT_IP],
            Some(direction(vec![bad_protocol])),
            "unknown protocol 17",
        ),
        (
            "unknown parser",
            vec![ENDPOINT_IP],
            Some(direction(vec![bad_parser])),
            "unknown L7 parser 9",
        ),
        (
            "unknown action",
            vec![ENDPOINT_IP],
            Some(direction(vec![bad_action])),
            "unknown action 5",
        ),
        (
            "unknown mismatch",
            vec![ENDPOINT_IP],
            Some(direction(vec![redirect(
                80,
                &[FRONTEND],
                "p",
                vec![bad_mismatch],
            )])),
            "headerMatches[0].mismatch",
        ),
        (
            "port out of range",
            vec![ENDPOINT_IP],
            Some(direction(vec![allow(70000, &[FRONTEND], "p")])),
            "port 70000 out of range",
        ),
        (
            "range backwards",
            vec![ENDPOINT_IP],
            Some(direction(vec![range_backwards])),
            "end_port 80 below port 8080",
        ),
        (
            "allow with parser",
            vec![ENDPOINT_IP],
            Some(direction(vec![allow_with_parser])),
            "ACTION_ALLOW with parser",
        ),
        (
            "redirect without parser",
            vec![ENDPOINT_IP],
            Some(direction(vec![redirect_without_parser])),
            "without an L7 parser",
        ),
    ];
    for (name, ips, ingress, want) in cases {
        let res = resources(vec![
            good.clone(),
            network_policy("default/bad", &ips, ingress, None),
        ]);
        let errors = PolicyHandler::new().build(&res).expect_err(name);
        assert_eq!(errors.len(), 1, "{name}: {errors:?}");
        let (resource, reason) = &errors[0];
        assert_eq!(resource, "default/bad", "{name}");
        assert!(reason.contains(want), "{name}: {reason}");
    }
    // The regex error names the entry, the rule set's origin, the rule and the field.
    let res = resources(vec![network_policy(
        "default/bad",
        &[ENDPOINT_IP],
        Some(direction(vec![redirect(
            80,
            &[FRONTEND],
            "spec.ingress[1].toPorts[0]",
            vec![rule("GET", "/ok"), rule("GET", "/(unclosed")],
        )])),
        None,
    )]);
    let errors = PolicyHandler::new().build(&res).expect_err("bad regex");
    let reason = &errors[0].1;
    assert!(
        reason.starts_with("ingress.entries[0]")
            && reason.contains(&format!(
                "http_rule_sets[0] ({})",
                origin("spec.ingress[1].toPorts[0]")
            ))
            && reason.contains("http[1].path: invalid regex"),
        "{reason}"
    );
    // Every bad resource is named, not only the first; a wrong body type too.
    let mut res = resources(vec![
        network_policy("default/x", &["nope"], None, None),
        network_policy("default/y", &["also-nope"], None, None),
    ]);
    res.insert(
        "42".to_owned(),
        Arc::new(proto::Resource {
            name: "42".to_owned(),
            version: "1".to_owned(),
            body: Some(proto::resource::Body::Identity(proto::Identity::default())),
        }),
    );
    let errors = PolicyHandler::new().build(&res).expect_err("bad");
    let names: Vec<&str> = errors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["42", "default/x", "default/y"]);
}

// Rule sets are compiled once: shared between endpoints with the same rules, and reused
// by the next version while unchanged.
#[test]
fn rule_sets_compiled_once_and_shared() {
    let entries = || {
        direction(vec![redirect(
            80,
            &[FRONTEND],
            "spec.ingress[0].toPorts[0]",
            vec![rule("GET", "/a")],
        )])
    };
    let res = resources(vec![
        network_policy("default/a", &["10.0.0.1"], Some(entries()), None),
        network_policy("default/b", &["10.0.0.2"], Some(entries()), None),
    ]);
    let handler = PolicyHandler::new();
    let set_of = |policies: &EndpointPolicies, name: &str| {
        let endpoint = policies.endpoint(name).expect("endpoint");
        let l7 = endpoint.ingress.entries[0].l7.as_ref().expect("l7");
        l7.http[0].set.clone()
    };
    let first = handler.build(&res).expect("compiles");
    assert!(Arc::ptr_eq(
        &set_of(&first, "default/a"),
        &set_of(&first, "default/b")
    ));
    let second = handler.build(&res).expect("compiles");
    assert!(Arc::ptr_eq(
        &set_of(&first, "default/a"),
        &set_of(&second, "default/b")
    ));
    // A failed build leaves the cache of the last good state alone.
    let bad = resources(vec![network_policy("default/x", &["nope"], None, None)]);
    assert!(handler.build(&bad).is_err());
    let third = handler.build(&res).expect("compiles");
    assert!(Arc::ptr_eq(
        &set_of(&first, "default/a"),
        &set_of(&third, "default/a")
    ));
}

// ---------------------------------------------------------------------------------------
// Identities.

fn identity(id: u32, labels: &[&str], prefixes: &[&str]) -> NamedResource {
    (
        id.to_string(),
        Arc::new(proto::Resource {
            name: id.to_string(),
            version: "1".to_owned(),
            body: Some(proto::resource::Body::Identity(proto::Identity {
                id,
                labels: labels.iter().map(|s| (*s).to_owned()).collect(),
                prefixes: prefixes.iter().map(|s| (*s).to_owned()).collect(),
            })),
        }),
    )
}

// SEMANTICS 1.6, 1.7: the longest prefix wins; uncovered addresses are world (2).
#[test]
fn identity_longest_prefix_match() {
    let res = resources(vec![
        identity(16777217, &["cidr:10.0.0.0/8"], &["10.0.0.0/8"]),
        identity(
            16777218,
            &["cidr:10.1.0.0/16"],
            &["10.1.0.0/16", "fd00::/8"],
        ),
        identity(300, &["k8s:app=web"], &["10.1.2.3/32", "fd00:1::5/128"]),
        identity(400, &["k8s:app=db"], &["fd00:1::/32", "192.168.7.0/24"]),
        identity(WORLD, &["reserved:world"], &[]),
    ]);
    let map = IdentityHandler.build(&res).expect("identities parse");
    let cases: [(&str, u32, Option<&str>); 13] = [
        ("10.1.2.3", 300, Some("10.1.2.3/32")),
        ("10.1.2.4", 16777218, Some("10.1.0.0/16")),
        ("10.1.255.255", 16777218, Some("10.1.0.0/16")),
        ("10.2.0.1", 16777217, Some("10.0.0.0/8")),
        ("10.255.255.255", 16777217, Some("10.0.0.0/8")),
        ("11.0.0.1", WORLD, None),
        ("192.168.7.200", 400, Some("192.168.7.0/24")),
        ("::ffff:10.1.2.3", 300, Some("10.1.2.3/32")),
        ("fd00:1::5", 300, Some("fd00:1::5/128")),
        ("fd00:1::6", 400, Some("fd00:1::/32")),
        ("fd00:2::1", 16777218, Some("fd00::/8")),
        ("fe80::1", WORLD, None),
        ("::", WORLD, None),
    ];
    for (ip, want, prefix) in cases {
        let ip: IpAddr = ip.parse().expect("ip");
        assert_eq!(map.lookup(ip), want, "{ip}");
        assert_eq!(
            map.lookup_prefix(ip)
                .map(|(net, _)| net.to_string())
                .as_deref(),
            prefix,
            "{ip}"
        );
    }
    assert_eq!(map.labels(300), Some(&["k8s:app=web".to_owned()][..]));
    assert_eq!(map.labels(999), None);
    assert_eq!(map.identity_count(), 5);
    assert_eq!(map.prefix_count(), 7);
    // A default route covers everything else.
    let res = resources(vec![identity(9, &["reserved:world-ipv4"], &["0.0.0.0/0"])]);
    let map = IdentityHandler.build(&res).expect("parses");
    assert_eq!(map.lookup("1.2.3.4".parse().expect("ip")), 9);
    assert_eq!(map.lookup("2001:db8::1".parse().expect("ip")), WORLD);
}

// An invalid prefix, or one prefix given two identities, NACKs naming the resource.
#[test]
fn identity_invalid_prefixes_nack() {
    let cases: [(Vec<NamedResource>, &str, &str); 4] = [
        (
            vec![identity(5, &[], &["10.0.0.0/33"])],
            "5",
            "prefixes[0]: invalid IP prefix",
        ),
        (
            vec![identity(5, &[], &["10.0.0.1"])],
            "5",
            "invalid IP prefix",
        ),
        (
            vec![identity(5, &[], &["fd00::/8", "zz"])],
            "5",
            "prefixes[1]",
        ),
        (
            vec![
                identity(5, &[], &["10.0.0.0/8"]),
                identity(6, &[], &["10.1.0.0/8"]),
            ],
            "6",
            "maps to identity 6 and to identity 5",
        ),
    ];
    for (items, name, want) in cases {
        let errors = IdentityHandler.build(&resources(items)).expect_err(want);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, name);
        assert!(errors[0].1.contains(want), "{}", errors[0].1);
    }
}

// 10k prefixes of mixed lengths: every lookup finds its own prefix, quickly.
#[test]
fn identity_map_with_10k_prefixes() {
    let mut prefixes: Vec<(u32, String)> = Vec::new();
    for i in 0..4000u32 {
        // /32 hosts in 10.0.0.0/8.
        prefixes.push((
            100_000 + i,
            format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 255, i & 255),
        ));
    }
    for i in 0..3000u32 {
        // /24s in 172.16.0.0/12.
        prefixes.push((
            200_000 + i,
            format!("172.{}.{}.0/24", 16 + (i >> 8), i & 255),
        ));
    }
    for i in 0..3000u32 {
        // /64s and /128s.
        prefixes.push((300_000 + i, format!("fd00:{i:x}::/64")));
    }
    let res: Resources = prefixes
        .iter()
        .map(|(id, p)| identity(*id, &[], &[p.as_str()]))
        .collect();
    let map = IdentityHandler.build(&res).expect("parses");
    assert_eq!(map.prefix_count(), 10_000);
    let started = Instant::now();
    let mut lookups = 0u32;
    for round in 0..10 {
        for i in 0..4000u32 {
            let ip = IpAddr::from([10, (i >> 16) as u8, ((i >> 8) & 255) as u8, (i & 255) as u8]);
            assert_eq!(map.lookup(ip), 100_000 + i);
        }
        for i in 0..3000u32 {
            let ip = IpAddr::from([172, (16 + (i >> 8)) as u8, (i & 255) as u8, round]);
            assert_eq!(map.lookup(ip), 200_000 + i);
        }
        for i in 0..3000u16 {
            let ip = IpAddr::from([0xfd00, i, 0, 0, 0, 0, 0, u16::from(round) + 1]);
            assert_eq!(map.lookup(ip), 300_000 + u32::from(i));
        }
        lookups += 10_000;
    }
    assert_eq!(map.lookup("10.200.0.1".parse().expect("ip")), WORLD);
    // 100k lookups: a linear scan of 10k prefixes would take seconds unoptimised.
    assert!(
        started.elapsed().as_secs() < 5,
        "{lookups} lookups took {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// Same-node flows through the egress listener (SEMANTICS 10.3).

/// Addresses and identities of the same-node tests.
pub(crate) const CLIENT_IP: &str = "10.0.0.1";
pub(crate) const SERVER_IP: &str = "10.0.0.2";
pub(crate) const REMOTE_IP: &str = "10.0.5.5";
pub(crate) const CLIENT_ID: u32 = 1001;
pub(crate) const SERVER_ID: u32 = 1002;

/// What the server's ingress says about the client on port 80.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ServerIngress {
    /// `GET /public.*` only.
    Http,
    /// Allowed without L7 rules.
    L4,
    /// Only another identity is allowed: the client is denied.
    Denied,
    /// Redirected to the DNS proxy.
    Dns,
}

/// client (egress to server and to the remote address on 80: `GET /public.*`,
/// `GET /egress-only`) and server (ingress as `server`), both local.
pub(crate) fn same_node_policies(server: ServerIngress) -> EndpointPolicies {
    let egress = vec![redirect(
        80,
        &[SERVER_ID, WORLD],
        "egress[0].toPorts[0]",
        vec![rule("GET", "/public.*"), rule("GET", "/egress-only")],
    )];
    let ingress = match server {
        ServerIngress::Http => vec![redirect(
            80,
            &[CLIENT_ID],
            "ingress[0].toPorts[0]",
            vec![rule("GET", "/public.*")],
        )],
        ServerIngress::L4 => vec![allow(80, &[CLIENT_ID], "ingress[0].toPorts[0]")],
        ServerIngress::Denied => vec![allow(80, &[OTHER], "ingress[0].toPorts[0]")],
        ServerIngress::Dns => {
            let mut entry = redirect(80, &[CLIENT_ID], "ingress[0].toPorts[0]", vec![]);
            entry.parser = proto::L7Parser::Dns as i32;
            entry.http_rule_sets = vec![];
            vec![entry]
        }
    };
    let res = resources(vec![
        network_policy(
            "default/client",
            &[CLIENT_IP],
            None,
            Some(direction(egress)),
        ),
        network_policy(
            "default/server",
            &[SERVER_IP],
            Some(direction(ingress)),
            None,
        ),
    ]);
    PolicyHandler::new().build(&res).expect("policy compiles")
}

/// The identities of client and server.
pub(crate) fn same_node_identities() -> IdentityMap {
    let res = resources(vec![
        identity(
            CLIENT_ID,
            &["k8s:app=client"],
            &[&format!("{CLIENT_IP}/32")],
        ),
        identity(
            SERVER_ID,
            &["k8s:app=server"],
            &[&format!("{SERVER_IP}/32")],
        ),
    ]);
    IdentityHandler.build(&res).expect("parses")
}

fn client_to(policies: &EndpointPolicies, ip: &str, identity: u32) -> FlowPolicy {
    policies.flow(
        Direction::Egress,
        addr(CLIENT_IP, 40000),
        addr(ip, 80),
        CLIENT_ID,
        identity,
    )
}

fn denied_reason(decision: &FlowDecision) -> &str {
    match &decision.decision {
        RequestDecision::Denied { reason } => reason,
        other => panic!("expected a deny: {other:?}"),
    }
}

// Egress L7 of the source and ingress L7 of a same-node destination: both decide every
// request (AND), the deny names the side, and an allowed request is chained.
#[test]
fn same_node_flow_needs_both_sides() {
    let policies = same_node_policies(ServerIngress::Http);
    let flow = client_to(&policies, SERVER_IP, SERVER_ID);
    assert!(flow.is_chained());
    assert_eq!(flow.admission(), FlowAdmission::Admitted);

    let allowed = flow.evaluate(&get("/public/x"));
    assert!(allowed.chained);
    let matched = matched(&allowed.decision).expect("allowed");
    assert!(
        matched.contains("egress[0].toPorts[0].rules.http[0] (egress of default/client)")
            && matched.contains("ingress[0].toPorts[0].rules.http[0] (ingress of default/server)"),
        "{matched}"
    );

    // Denied by the client's egress.
    let admin = flow.evaluate(&get("/admin"));
    assert!(
        denied_reason(&admin).starts_with("denied by the egress policy of default/client: "),
        "{admin:?}"
    );
    // Allowed by the client's egress, denied by the server's ingress.
    let egress_only = flow.evaluate(&get("/egress-only"));
    assert!(
        denied_reason(&egress_only).starts_with("denied by the ingress policy of default/server: "),
        "{egress_only:?}"
    );
    // Each side alone would have allowed it.
    assert!(flow.own.evaluate(&get("/egress-only")).is_allowed());
    assert!(
        flow.destination
            .as_ref()
            .expect("local destination")
            .evaluate(&get("/public/x"))
            .is_allowed()
    );
    // A malformed target is still a 400, whichever side looks at it first.
    assert!(matches!(
        flow.evaluate(&get("/public%2F..%2Fadmin")).decision,
        RequestDecision::Rejected { .. }
    ));
}

// The destination's ingress allows without L7 rules: only the source's egress rules apply,
// as for any egress flow, and requests go out as egress-proxy traffic.
#[test]
fn same_node_flow_without_destination_l7_is_egress_only() {
    let policies = same_node_policies(ServerIngress::L4);
    let flow = client_to(&policies, SERVER_IP, SERVER_ID);
    assert!(!flow.is_chained());
    assert!(flow.destination.is_some());
    assert_eq!(flow.admission(), FlowAdmission::Admitted);
    let decision = flow.evaluate(&get("/egress-only"));
    assert!(!decision.chained && decision.decision.is_allowed());
    // The egress deny reads as before.
    let admin = flow.evaluate(&get("/admin"));
    assert!(!admin.chained);
    assert!(!denied_reason(&admin).starts_with("denied by"), "{admin:?}");
}

// The destination's ingress denies the source (or sends the port to another proxy): the
// kernel would drop the flow at the destination, so the connection is refused.
#[test]
fn same_node_flow_denied_by_destination_is_refused() {
    for (server, expected) in [
        (ServerIngress::Denied, "denied at L3/L4 (default-deny)"),
        (ServerIngress::Dns, "redirected to the dns proxy"),
    ] {
        let policies = same_node_policies(server);
        let flow = client_to(&policies, SERVER_IP, SERVER_ID);
        assert!(!flow.is_chained());
        let FlowAdmission::Refused(reason) = flow.admission() else {
            panic!("{server:?}: admitted");
        };
        assert!(
            reason.starts_with("ingress of the destination default/server: ")
                && reason.contains(expected),
            "{server:?}: {reason}"
        );
    }
}

// A destination that is not a local endpoint, and connections of the ingress listener,
// are decided by one side only.
#[test]
fn remote_destination_and_ingress_listener_are_one_sided() {
    let policies = same_node_policies(ServerIngress::Http);
    let remote = client_to(&policies, REMOTE_IP, WORLD);
    assert!(remote.destination.is_none() && !remote.is_chained());
    assert_eq!(remote.admission(), FlowAdmission::Admitted);
    let decision = remote.evaluate(&get("/egress-only"));
    assert!(!decision.chained && decision.decision.is_allowed());

    let inbound = policies.flow(
        Direction::Ingress,
        addr(CLIENT_IP, 40000),
        addr(SERVER_IP, 80),
        CLIENT_ID,
        SERVER_ID,
    );
    assert!(inbound.destination.is_none() && !inbound.is_chained());
    assert_eq!(inbound.own.direction, Direction::Ingress);
    let decision = inbound.evaluate(&get("/egress-only"));
    assert!(!decision.chained && !decision.decision.is_allowed());
    assert!(inbound.evaluate(&get("/public/x")).decision.is_allowed());
}

// The destination's rules see the request as the source's side forwards it: a header the
// source's egress rule sets (mismatch REPLACE) is what the destination's ingress checks.
#[test]
fn same_node_flow_ingress_sees_the_egress_edits() {
    let mut egress_rule = rule("GET", "/public.*");
    egress_rule.header_matches = vec![proto::HeaderMatch {
        name: "X-Env".to_owned(),
        value: Some("prod".to_owned()),
        mismatch: "REPLACE".to_owned(),
        secret: None,
    }];
    let mut ingress_rule = rule("GET", "/public.*");
    ingress_rule.headers = vec!["X-Env: prod".to_owned()];
    let res = resources(vec![
        network_policy(
            "default/client",
            &[CLIENT_IP],
            None,
            Some(direction(vec![redirect(
                80,
                &[SERVER_ID],
                "egress[0].toPorts[0]",
                vec![egress_rule],
            )])),
        ),
        network_policy(
            "default/server",
            &[SERVER_IP],
            Some(direction(vec![redirect(
                80,
                &[CLIENT_ID],
                "ingress[0].toPorts[0]",
                vec![ingress_rule],
            )])),
            None,
        ),
    ]);
    let policies = PolicyHandler::new().build(&res).expect("policy compiles");
    let flow = client_to(&policies, SERVER_IP, SERVER_ID);
    let request = RequestView {
        headers: &[("x-env", "dev")],
        ..get("/public/x")
    };
    // The destination alone would deny what the client sent.
    assert!(
        !flow
            .destination
            .as_ref()
            .expect("local destination")
            .evaluate(&request)
            .is_allowed()
    );
    let decision = flow.evaluate(&request);
    assert!(decision.chained);
    let RequestDecision::Allowed { header_edits, .. } = decision.decision else {
        panic!("denied: {decision:?}");
    };
    assert!(
        matches!(header_edits.as_slice(), [HeaderEdit::Set { name, value, .. }] if name == "x-env" && value == "prod"),
        "{header_edits:?}"
    );
}
