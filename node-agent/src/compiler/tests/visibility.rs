//! SEMANTICS 7: the proxy-visibility pod annotation redirects what policy allows on a port
//! to the proxy, every request allowed; it never changes a verdict.

use super::*;
use crate::compiler::visibility::{self, ANNOTATION, LEGACY_ANNOTATION};
use crate::datapath::abi::{DP_ACT_REDIRECT, DP_DIR_INGRESS};
use crate::datapath::entries::{ProxyPorts, policy_entries};
use crate::policy::rule::L7Parser;

/// `prod/web` of the world, with `annotations` (a YAML flow mapping body).
fn web_with(annotations: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: prod, labels: {{app: web}}, annotations: {{{annotations}}}}}
spec: {{nodeName: n1, containers: [{{name: c, image: i, ports: [{{name: http, containerPort: 8080}}]}}]}}
status: {{podIP: 10.0.1.1}}
"#
    )
}

fn web_visibility(value: &str) -> String {
    web_with(&format!("{ANNOTATION}: {value:?}"))
}

/// Every HTTP request of `peer` to `endpoint` on `port` passes the ingress proxy.
fn any_http_allowed(c: &Compiler, endpoint: &str, peer: &str, port: u16) -> bool {
    ["GET /", "DELETE /admin", "POST /x?y=1"].iter().all(|req| {
        let (method, path) = req.split_once(' ').expect("METHOD PATH");
        http(c, endpoint, peer, port, method, path)
    })
}

/// The DNS proxy's decision for `name` on the egress of `endpoint` to `peer`.
fn dns(c: &Compiler, endpoint: &str, peer: &str, proto: Protocol, name: &str) -> bool {
    let policy = c.endpoint(&key(endpoint)).expect("endpoint compiled");
    let result = evaluate(&policy.egress, peer_identity(c, peer), proto, 53);
    let rules = result.l7.expect("redirected to the proxy");
    assert_eq!(rules.parser, L7Parser::Dns);
    rules.evaluate_dns(name).allowed
}

/// What `policy explain` reports: the items that alone send the flow to the proxy.
fn only_visibility(c: &Compiler, endpoint: &str, peer: &str, port: u16) -> Option<String> {
    let policy = c.endpoint(&key(endpoint)).expect("endpoint compiled");
    let result = evaluate(&policy.ingress, peer_identity(c, peer), Tcp, port);
    match result.verdict {
        Verdict::AllowedViaProxy => visibility::only_by_visibility(result.deciding.iter().copied()),
        _ => None,
    }
}

fn notes(c: &Compiler, endpoint: &str) -> Vec<String> {
    c.endpoint(&key(endpoint)).expect("compiled").notes.clone()
}

// SEMANTICS 7.2 with 2.2: a direction no policy enforces becomes default allow and the
// annotated port goes through the proxy with the wildcard; nothing else changes.
#[test]
#[rustfmt::skip]
fn unenforced_direction_gets_a_wildcard_redirect() {
    let c = compiler(&web_visibility("<Ingress/80/TCP/HTTP>"));
    run_cases(
        &c,
        &[
            ("annotated port redirected", IN, "prod/web", "prod/client", Tcp, 80, P),
            ("every peer", IN, "prod/web", "dev/client", Tcp, 80, P),
            ("world too", IN, "prod/web", "#2", Tcp, 80, P),
            ("other ports allowed directly", IN, "prod/web", "prod/client", Tcp, 81, A),
            ("other protocol allowed directly", IN, "prod/web", "prod/client", Udp, 80, A),
            ("egress untouched", OUT, "prod/web", "prod/client", Tcp, 80, A),
        ],
    );
    assert!(any_http_allowed(&c, "prod/web", "prod/client", 80));
    assert_eq!(check(&c, OUT, "prod/web", "prod/client", Tcp, 80).1, Reason::NoPolicy);
    let web = c.endpoint(&key("prod/web")).expect("compiled");
    assert!(web.ingress.enforced && !web.ingress.default_deny);
    assert!(web.ingress.entries.iter().all(|e| e.visibility.is_some()));
    assert!(web.notes.is_empty(), "{:?}", web.notes);

    // The datapath sees an ordinary redirect entry to the ingress HTTP proxy.
    let ports = ProxyPorts { http_ingress: 15001, http_egress: 15002, dns: 15053 };
    let entries = policy_entries(7, web, &ports);
    assert!(entries.iter().any(|(k, v)| k.direction == DP_DIR_INGRESS
        && k.protocol == 6
        && u16::from_be(k.dport) == 80
        && v.action == DP_ACT_REDIRECT
        && v.proxy_port == 15001));
}

// SEMANTICS 7.2 with 2.2, 2.3: a default-allow direction (enableDefaultDeny: false) is
// redirected the same way, and its deny entries keep winning.
#[test]
#[rustfmt::skip]
fn default_allow_direction_keeps_its_denies() {
    let c = compiler(&format!(
        r#"{}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: audit, namespace: prod}}
spec:
  endpointSelector: {{matchLabels: {{app: web}}}}
  enableDefaultDeny: {{ingress: false}}
  ingressDeny:
  - fromEndpoints: [{{matchLabels: {{app: client}}}}]
    toPorts:
    - ports: [{{port: "80", protocol: TCP}}]
"#,
        web_visibility("<Ingress/80/TCP/HTTP>")
    ));
    run_cases(
        &c,
        &[
            ("denied peer stays denied", IN, "prod/web", "prod/client", Tcp, 80, D),
            ("denied peer, other port", IN, "prod/web", "prod/client", Tcp, 81, A),
            ("other peer redirected", IN, "prod/web", "prod/db", Tcp, 80, P),
            ("other namespace redirected", IN, "prod/web", "dev/client", Tcp, 80, P),
        ],
    );
    assert_eq!(check(&c, IN, "prod/web", "prod/client", Tcp, 80).1, Reason::DenyRule);
    assert!(any_http_allowed(&c, "prod/web", "prod/db", 80));
}

// SEMANTICS 7.2 in an enforced, default-deny direction: only peers policy already allows
// on the port are redirected (for L3-only allows, port allows and ranges alike); the others
// stay dropped, denies keep winning, other ports are untouched.
#[test]
#[rustfmt::skip]
fn enforced_direction_redirects_only_allowed_peers() {
    let c = compiler(&format!(
        r#"{}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: web, namespace: prod}}
spec:
  endpointSelector: {{matchLabels: {{app: web}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: client}}}}]
  - fromEndpoints: [{{matchLabels: {{app: client, io.kubernetes.pod.namespace: dev}}}}]
    toPorts:
    - ports: [{{port: "80", protocol: TCP}}]
  - fromEndpoints: [{{matchLabels: {{k8s-app: kube-dns, io.kubernetes.pod.namespace: kube-system}}}}]
    toPorts:
    - ports: [{{port: "70", endPort: 90, protocol: TCP}}]
  - fromEntities: [world]
  ingressDeny:
  - fromEntities: [world]
    toPorts:
    - ports: [{{port: "80", protocol: TCP}}]
"#,
        web_visibility("<Ingress/80/TCP/HTTP>")
    ));
    run_cases(
        &c,
        &[
            ("L3-only allow: redirected on the annotated port", IN, "prod/web", "prod/client", Tcp, 80, P),
            ("L3-only allow: other port not redirected", IN, "prod/web", "prod/client", Tcp, 81, A),
            ("L3-only allow: other protocol not redirected", IN, "prod/web", "prod/client", Udp, 80, A),
            ("port allow: redirected", IN, "prod/web", "dev/client", Tcp, 80, P),
            ("port allow: other port still denied", IN, "prod/web", "dev/client", Tcp, 81, D),
            ("range allow: redirected", IN, "prod/web", "kube-system/dns", Tcp, 80, P),
            ("range allow: rest of range not redirected", IN, "prod/web", "kube-system/dns", Tcp, 85, A),
            ("not allowed: still denied", IN, "prod/web", "prod/db", Tcp, 80, D),
            ("deny wins over the redirect", IN, "prod/web", "#2", Tcp, 80, D),
            ("denied peer, other port", IN, "prod/web", "#2", Tcp, 81, A),
        ],
    );
    assert_eq!(check(&c, IN, "prod/web", "prod/db", Tcp, 80).1, Reason::DefaultDeny);
    assert_eq!(check(&c, IN, "prod/web", "#2", Tcp, 80).1, Reason::DenyRule);
    for peer in ["prod/client", "dev/client", "kube-system/dns"] {
        assert!(any_http_allowed(&c, "prod/web", peer, 80), "{peer}");
    }

    // The L3-only allow gained a port entry for exactly its peer on exactly 80/TCP; the
    // port allow was turned into the redirect; denies are as they were.
    let web = c.endpoint(&key("prod/web")).expect("compiled");
    let client = peer_identity(&c, "prod/client");
    let added: Vec<_> = web.ingress.entries.iter().filter(|e| e.visibility.is_some()).collect();
    assert!(added.iter().all(|e| e.port.to_string() == "80/TCP" && !e.deny));
    assert!(added.iter().all(|e| e.l7.as_ref().is_some_and(|l7| l7.allow_all && l7.rules.is_empty())));
    assert_eq!(added.len(), 4, "{added:#?}");
    assert!(added.iter().any(|e| e.selection.identities == [client] && !e.origins.is_empty()));
    assert_eq!(web.ingress.entries.iter().filter(|e| e.deny).count(), 1);
    assert!(web.ingress.default_deny);

    // `policy explain` says when the proxy is only there because of the annotation.
    assert_eq!(only_visibility(&c, "prod/web", "prod/client", 80).as_deref(), Some("<Ingress/80/TCP/HTTP>"));
    assert_eq!(only_visibility(&c, "prod/web", "prod/client", 81), None);
}

// SEMANTICS 7.2 with 3.4: ports with L7 rules keep them; visibility adds nothing there.
#[test]
#[rustfmt::skip]
fn l7_rules_are_kept() {
    let c = compiler(&format!(
        r#"{}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: web, namespace: prod}}
spec:
  endpointSelector: {{matchLabels: {{app: web}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: client}}}}]
    toPorts:
    - ports: [{{port: "80", protocol: TCP}}]
      rules:
        http: [{{method: GET, path: /public}}]
"#,
        web_visibility("<Ingress/80/TCP/HTTP>")
    ));
    run_cases(&c, &[("still via proxy", IN, "prod/web", "prod/client", Tcp, 80, P)]);
    assert!(http(&c, "prod/web", "prod/client", 80, "GET", "/public"));
    assert!(!http(&c, "prod/web", "prod/client", 80, "DELETE", "/public"));
    let web = c.endpoint(&key("prod/web")).expect("compiled");
    assert!(web.ingress.entries.iter().all(|e| e.visibility.is_none()));
    assert!(web.notes.is_empty(), "{:?}", web.notes);
    assert_eq!(only_visibility(&c, "prod/web", "prod/client", 80), None);
}

// SEMANTICS 7.1: the legacy name is read when the new one is absent; the new one wins.
#[test]
#[rustfmt::skip]
fn both_annotation_names() {
    let legacy = compiler(&web_with(&format!("{LEGACY_ANNOTATION}: \"<Ingress/80/TCP/HTTP>\"")));
    run_cases(&legacy, &[("legacy name", IN, "prod/web", "prod/client", Tcp, 80, P)]);

    let both = compiler(&web_with(&format!(
        "{ANNOTATION}: \"<Ingress/81/TCP/HTTP>\", {LEGACY_ANNOTATION}: \"<Ingress/80/TCP/HTTP>\""
    )));
    run_cases(
        &both,
        &[
            ("new name wins", IN, "prod/web", "prod/client", Tcp, 81, P),
            ("legacy ignored when both", IN, "prod/web", "prod/client", Tcp, 80, A),
        ],
    );
    // An invalid new annotation is not replaced by a valid legacy one.
    let invalid_new = compiler(&web_with(&format!(
        "{ANNOTATION}: \"<Ingress/0/TCP/HTTP>\", {LEGACY_ANNOTATION}: \"<Ingress/80/TCP/HTTP>\""
    )));
    run_cases(&invalid_new, &[("invalid new name", IN, "prod/web", "prod/client", Tcp, 80, A)]);
    assert_eq!(notes(&invalid_new, "prod/web").len(), 1);
}

// SEMANTICS 7.1: the grammar, case-insensitive.
#[test]
fn parses_items() {
    let items = visibility::parse("<ingress/80/tcp/http>, <EGRESS/53/any/Dns>,<Egress/8/TCP/HTTP>")
        .expect("valid");
    let summary: Vec<_> = items
        .iter()
        .map(|i| (i.direction, i.port, i.protocols.clone(), i.parser))
        .collect();
    assert_eq!(
        summary,
        [
            (IN, 80, vec![Tcp], L7Parser::Http),
            (OUT, 53, vec![Tcp, Udp], L7Parser::Dns),
            (OUT, 8, vec![Tcp], L7Parser::Http),
        ]
    );
    assert_eq!(
        visibility::parse("<Ingress/80/ANY/HTTP>").expect("valid")[0].protocols,
        [Tcp]
    );
    assert_eq!(
        visibility::parse("<Egress/65535/UDP/DNS>").expect("valid")[0].protocols,
        [Udp]
    );
    assert!(visibility::parse("").expect("empty").is_empty());
}

// SEMANTICS 7.2: an invalid annotation is ignored for the pod and reported with the
// reason; the pod's policy is compiled as without it.
#[test]
#[rustfmt::skip]
fn invalid_annotations_are_reported_and_ignored() {
    let cases = [
        ("<Ingress/0/TCP/HTTP>", "port \"0\" must be a number from 1 to 65535"),
        ("<Ingress/65536/TCP/HTTP>", "port \"65536\" must be a number from 1 to 65535"),
        ("<Ingress/-1/TCP/HTTP>", "must be a number from 1 to 65535"),
        ("<Ingress/53/UDP/DNS>", "DNS visibility is egress-only"),
        ("<Ingress/80/TCP/Kafka>", "L7 protocol \"Kafka\" must be HTTP or DNS"),
        ("<Ingress/80/ICMP/HTTP>", "protocol \"ICMP\" must be TCP, UDP, SCTP or ANY"),
        ("<Sideways/80/TCP/HTTP>", "direction \"Sideways\" must be Ingress or Egress"),
        ("Ingress/80/TCP/HTTP", "expected <Direction/Port/Protocol/L7>"),
        ("<Ingress/80/TCP>", "expected <Direction/Port/Protocol/L7>"),
        ("<Ingress/80/TCP/HTTP>,", "item 3 \"\""),
        ("<Ingress/80/UDP/HTTP>", "HTTP needs TCP"),
        ("<Egress/53/SCTP/DNS>", "DNS needs UDP, TCP or ANY"),
        ("<Egress/53/ANY/DNS>,<Egress/53/TCP/HTTP>", "different L7 protocols"),
    ];
    let policy = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
"#;
    for (value, reason) in cases {
        // A valid item before the bad one: the whole annotation is ignored.
        let value = format!("<Ingress/80/TCP/HTTP>,{value}");
        let c = compiler(&format!("{}\n---\n{policy}", web_visibility(&value)));
        run_cases(
            &c,
            &[
                ("policy still applies", IN, "prod/web", "prod/client", Tcp, 80, A),
                ("policy still denies", IN, "prod/web", "prod/db", Tcp, 80, D),
                ("egress not enforced", OUT, "prod/web", "prod/db", Tcp, 53, A),
            ],
        );
        let notes = notes(&c, "prod/web");
        assert_eq!(notes.len(), 1, "{value}: {notes:?}");
        assert!(notes[0].contains(ANNOTATION), "{value}: {}", notes[0]);
        assert!(notes[0].contains(reason), "{value}: {} lacks {reason}", notes[0]);
        assert!(notes[0].contains("ignored"), "{value}: {}", notes[0]);
    }
}

// SEMANTICS 7.1, 5.4: a DNS egress item redirects allowed DNS traffic to the DNS proxy,
// which allows every name (matchPattern "*").
#[test]
#[rustfmt::skip]
fn dns_egress_item() {
    let unenforced = compiler(&web_visibility("<Egress/53/ANY/DNS>"));
    run_cases(
        &unenforced,
        &[
            ("UDP redirected", OUT, "prod/web", "kube-system/dns", Udp, 53, P),
            ("TCP redirected", OUT, "prod/web", "kube-system/dns", Tcp, 53, P),
            ("SCTP not redirected", OUT, "prod/web", "kube-system/dns", Sctp, 53, A),
            ("ingress untouched", IN, "prod/web", "kube-system/dns", Udp, 53, A),
        ],
    );
    assert!(dns(&unenforced, "prod/web", "kube-system/dns", Udp, "anything.example.com"));

    let enforced = compiler(&format!(
        r#"{}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: web, namespace: prod}}
spec:
  endpointSelector: {{matchLabels: {{app: web}}}}
  egress:
  - toEndpoints: [{{matchLabels: {{k8s-app: kube-dns, io.kubernetes.pod.namespace: kube-system}}}}]
    toPorts:
    - ports: [{{port: "53", protocol: UDP}}]
  - toEndpoints: [{{matchLabels: {{app: db}}}}]
    toPorts:
    - ports: [{{port: pg, protocol: TCP}}]
"#,
        web_visibility("<Egress/53/ANY/DNS>")
    ));
    run_cases(
        &enforced,
        &[
            ("allowed DNS redirected", OUT, "prod/web", "kube-system/dns", Udp, 53, P),
            ("TCP 53 still denied", OUT, "prod/web", "kube-system/dns", Tcp, 53, D),
            ("other peer still denied", OUT, "prod/web", "prod/db", Udp, 53, D),
            ("other port untouched", OUT, "prod/web", "prod/db", Tcp, 5432, A),
        ],
    );
    assert!(dns(&enforced, "prod/web", "kube-system/dns", Udp, "a.b.example.org"));
}

// A port already redirected to another proxy by policy keeps it; the conflict is noted.
#[test]
#[rustfmt::skip]
fn port_with_other_parser_is_left_alone() {
    let c = compiler(&format!(
        r#"{}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: web, namespace: prod}}
spec:
  endpointSelector: {{matchLabels: {{app: web}}}}
  egress:
  - toEndpoints: [{{matchLabels: {{k8s-app: kube-dns, io.kubernetes.pod.namespace: kube-system}}}}]
    toPorts:
    - ports: [{{port: "53", protocol: TCP}}]
      rules:
        dns: [{{matchName: example.com}}]
"#,
        web_visibility("<Egress/53/TCP/HTTP>")
    ));
    run_cases(&c, &[("still via DNS proxy", OUT, "prod/web", "kube-system/dns", Tcp, 53, P)]);
    assert!(dns(&c, "prod/web", "kube-system/dns", Tcp, "example.com"));
    assert!(!dns(&c, "prod/web", "kube-system/dns", Tcp, "other.com"));
    let notes = notes(&c, "prod/web");
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("already redirected to the dns proxy"), "{}", notes[0]);
}

// The pod is recompiled when its annotation changes, appears or goes away.
#[test]
#[rustfmt::skip]
fn annotation_change_recompiles_the_pod() {
    let mut c = compiler("");
    run_cases(&c, &[("no annotation", IN, "prod/web", "prod/client", Tcp, 80, A)]);
    let update = |c: &mut Compiler, text: &str| {
        let parsed = parse_str("update.yaml", text);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        for object in parsed.objects {
            c.apply(SourceEvent::Applied(object));
        }
        let changes = c.flush();
        assert!(changes.recompiled.contains(&key("prod/web")), "{changes:?}");
    };
    update(&mut c, &web_visibility("<Ingress/80/TCP/HTTP>"));
    run_cases(&c, &[("annotation added", IN, "prod/web", "prod/client", Tcp, 80, P)]);
    update(&mut c, &web_visibility("<Ingress/81/TCP/HTTP>"));
    run_cases(
        &c,
        &[
            ("annotation changed: new port", IN, "prod/web", "prod/client", Tcp, 81, P),
            ("annotation changed: old port", IN, "prod/web", "prod/client", Tcp, 80, A),
        ],
    );
    update(&mut c, &web_with(""));
    run_cases(&c, &[("annotation removed", IN, "prod/web", "prod/client", Tcp, 81, A)]);
    assert_eq!(check(&c, IN, "prod/web", "prod/client", Tcp, 81).1, Reason::NoPolicy);
}
