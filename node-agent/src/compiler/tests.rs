//! Table-driven checks of the compiled verdicts against SEMANTICS.md, sections 1-3 and 5-6.
//! Each table names the section it checks.

use std::net::IpAddr;

use super::evaluate::{Reason, Verdict, evaluate};
use super::*;
use crate::manifest::parse_str;
use crate::policy::Protocol::{self, Sctp, Tcp, Udp};

/// Pods in two namespaces; `prod` and `dev` carry a `team` label.
const WORLD: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: dev, labels: {team: b}}
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system}
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: web, namespace: prod, labels: {app: web}},
   spec: {nodeName: n1, containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]},
   status: {podIP: 10.0.1.1}}
- {apiVersion: v1, kind: Pod, metadata: {name: client, namespace: prod, labels: {app: client}},
   spec: {nodeName: n1, serviceAccountName: robot, containers: [{name: c, image: i}]}, status: {podIP: 10.0.1.2}}
- {apiVersion: v1, kind: Pod, metadata: {name: client, namespace: dev, labels: {app: client}},
   spec: {nodeName: n1, containers: [{name: c, image: i}]}, status: {podIP: 10.0.2.2}}
- {apiVersion: v1, kind: Pod, metadata: {name: db, namespace: prod, labels: {app: db}},
   spec: {nodeName: n2, containers: [{name: c, image: i, ports: [{name: pg, containerPort: 5432}]}]},
   status: {podIP: 10.0.1.3}}
- {apiVersion: v1, kind: Pod, metadata: {name: dns, namespace: kube-system, labels: {k8s-app: kube-dns}},
   spec: {nodeName: n1, containers: [{name: c, image: i}]}, status: {podIP: 10.0.3.3}}
"#;

fn compiler(policies: &str) -> Compiler {
    let mut compiler = Compiler::new(EndpointScope::AllPods);
    for text in [WORLD, policies] {
        let parsed = parse_str("test.yaml", text);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        for object in parsed.objects {
            compiler.apply(SourceEvent::Applied(object));
        }
    }
    compiler.flush();
    compiler
}

fn key(text: &str) -> EndpointKey {
    EndpointKey::parse(text).expect("NS/NAME")
}

/// A peer: a pod (`ns/name`), an IP, or a reserved identity (`#N`).
fn peer_identity(c: &Compiler, peer: &str) -> Identity {
    if let Some(n) = peer.strip_prefix('#') {
        return n.parse().expect("identity number");
    }
    if let Ok(ip) = peer.parse::<IpAddr>() {
        return c.identity_of_ip(ip);
    }
    c.pod(&key(peer)).expect("pod exists").identity
}

fn check(
    c: &Compiler,
    direction: Direction,
    endpoint: &str,
    peer: &str,
    proto: Protocol,
    port: u16,
) -> (Verdict, Reason) {
    let policy = c.endpoint(&key(endpoint)).expect("endpoint compiled");
    let result = evaluate(
        policy.direction(direction),
        peer_identity(c, peer),
        proto,
        port,
    );
    (result.verdict, result.reason)
}

fn http(c: &Compiler, endpoint: &str, peer: &str, port: u16, method: &str, path: &str) -> bool {
    let policy = c.endpoint(&key(endpoint)).expect("endpoint compiled");
    let result = evaluate(&policy.ingress, peer_identity(c, peer), Tcp, port);
    let rules = result.l7.expect("redirected to the proxy");
    rules
        .evaluate_http(&l7_proxy::RequestView {
            method,
            target: path,
            host: Some("web"),
            headers: &[],
        })
        .allowed
}

const A: Verdict = Verdict::Allowed;
const D: Verdict = Verdict::Denied;
const P: Verdict = Verdict::AllowedViaProxy;
const IN: Direction = Direction::Ingress;
const OUT: Direction = Direction::Egress;

type Case<'a> = (&'a str, Direction, &'a str, &'a str, Protocol, u16, Verdict);

fn run_cases(c: &Compiler, cases: &[Case<'_>]) {
    for (name, direction, endpoint, peer, proto, port, want) in cases {
        let (got, reason) = check(c, *direction, endpoint, peer, *proto, *port);
        assert_eq!(
            got, *want,
            "{name}: {endpoint} {direction:?} peer {peer} {port}/{proto} ({reason:?})"
        );
    }
}

// SEMANTICS 1.4: namespace scoping of endpointSelector and peer selectors.
#[test]
fn namespace_scoping() {
    let cnp = compiler(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: client}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-dev, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client, k8s:io.kubernetes.pod.namespace: dev}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: by-ns-label, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {io.cilium.k8s.namespace.labels.team: b}}]
"#,
    );
    run_cases(
        &cnp,
        &[
            (
                "policy selects only its namespace",
                IN,
                "dev/client",
                "prod/web",
                Tcp,
                80,
                A,
            ),
            (
                "selected in its namespace",
                IN,
                "prod/client",
                "prod/web",
                Tcp,
                80,
                A,
            ),
            (
                "peer limited to the policy namespace",
                IN,
                "prod/client",
                "dev/client",
                Tcp,
                80,
                D,
            ),
            (
                "explicit namespace is kept",
                IN,
                "prod/web",
                "dev/client",
                Tcp,
                80,
                A,
            ),
            (
                "explicit namespace excludes own",
                IN,
                "prod/web",
                "prod/client",
                Tcp,
                80,
                D,
            ),
            (
                "namespace labels select across",
                IN,
                "prod/db",
                "dev/client",
                Tcp,
                80,
                A,
            ),
            (
                "namespace labels: other team",
                IN,
                "prod/db",
                "prod/client",
                Tcp,
                80,
                D,
            ),
        ],
    );
    let ccnp = compiler(
        r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: c}
spec:
  endpointSelector: {matchLabels: {app: client}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}, {}]
"#,
    );
    run_cases(
        &ccnp,
        &[
            (
                "CCNP selects every namespace",
                IN,
                "dev/client",
                "prod/web",
                Tcp,
                80,
                A,
            ),
            (
                "CCNP {} selects pods anywhere",
                IN,
                "prod/client",
                "dev/client",
                Tcp,
                80,
                A,
            ),
            (
                "CCNP {} does not select world",
                IN,
                "prod/client",
                "8.8.8.8",
                Tcp,
                80,
                D,
            ),
            (
                "CCNP {} does not select host",
                IN,
                "prod/client",
                "#1",
                Tcp,
                80,
                D,
            ),
        ],
    );
}

// SEMANTICS 1.3 and 1.5: selectors over security labels, [] vs {}.
#[test]
fn selectors() {
    let c = compiler(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: empty-list, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: []
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: empty-selector, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: client}}
  ingress:
  - fromEndpoints: [{}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: expressions, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints:
    - matchExpressions:
      - {key: app, operator: In, values: [web, client]}
      - {key: k8s:io.cilium.k8s.policy.serviceaccount, operator: NotIn, values: [robot]}
"#,
    );
    run_cases(
        &c,
        &[
            (
                "[] selects nothing",
                IN,
                "prod/web",
                "prod/client",
                Tcp,
                80,
                D,
            ),
            (
                "{} selects the namespace",
                IN,
                "prod/client",
                "prod/web",
                Tcp,
                80,
                A,
            ),
            (
                "{} stays in the namespace",
                IN,
                "prod/client",
                "dev/client",
                Tcp,
                80,
                D,
            ),
            ("In", IN, "prod/db", "prod/web", Tcp, 80, A),
            (
                "NotIn on service account",
                IN,
                "prod/db",
                "prod/client",
                Tcp,
                80,
                D,
            ),
        ],
    );
}

// SEMANTICS 1.6: entities.
#[test]
fn entities() {
    let c = compiler(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: world, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEntities: [world]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cluster, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: client}}
  ingress:
  - fromEntities: [cluster]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: host, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEntities: [host, remote-node]
"#,
    );
    run_cases(
        &c,
        &[
            (
                "world allows outside IPs",
                IN,
                "prod/web",
                "8.8.8.8",
                Tcp,
                80,
                A,
            ),
            (
                "world is not pods",
                IN,
                "prod/web",
                "prod/client",
                Tcp,
                80,
                D,
            ),
            ("world is not host", IN, "prod/web", "#1", Tcp, 80, D),
            (
                "cluster allows pods of any namespace",
                IN,
                "prod/client",
                "dev/client",
                Tcp,
                80,
                A,
            ),
            ("cluster allows host", IN, "prod/client", "#1", Tcp, 80, A),
            (
                "cluster is not world",
                IN,
                "prod/client",
                "8.8.8.8",
                Tcp,
                80,
                D,
            ),
            ("host", IN, "prod/db", "#1", Tcp, 80, A),
            ("remote-node", IN, "prod/db", "#6", Tcp, 80, A),
            ("host is not health", IN, "prod/db", "#4", Tcp, 80, D),
        ],
    );
}

// SEMANTICS 1.7 and 6.6: CIDR rules with except; pod IPs keep their pod identity.
#[test]
fn cidr_rules() {
    let c = compiler(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cidr, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toCIDR: [192.168.0.0/16, 10.0.0.0/8]
  - toCIDRSet:
    - cidr: 172.16.0.0/12
      except: [172.16.1.0/24]
"#,
    );
    run_cases(
        &c,
        &[
            ("inside toCIDR", OUT, "prod/web", "192.168.7.1", Tcp, 443, A),
            (
                "outside every CIDR",
                OUT,
                "prod/web",
                "8.8.8.8",
                Tcp,
                443,
                D,
            ),
            (
                "pod IP keeps pod identity",
                OUT,
                "prod/web",
                "10.0.1.3",
                Tcp,
                443,
                D,
            ),
            (
                "non-pod IP in 10/8",
                OUT,
                "prod/web",
                "10.9.9.9",
                Tcp,
                443,
                A,
            ),
            ("CIDRSet allows", OUT, "prod/web", "172.16.2.1", Tcp, 443, A),
            (
                "except carves out",
                OUT,
                "prod/web",
                "172.16.1.9",
                Tcp,
                443,
                D,
            ),
        ],
    );
}

// SEMANTICS 2.1, 2.2, 2.3: default deny, default allow, deny beats allow.
#[test]
fn default_deny_and_deny_rules() {
    let c = compiler(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-all, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - {}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: visibility, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: client}}
  enableDefaultDeny: {ingress: false}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: /public}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-client, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{}]
  - fromEndpoints: [{}]
    toPorts:
    - ports: [{port: "81", protocol: TCP}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
"#,
    );
    run_cases(
        &c,
        &[
            (
                "ingress: [{}] denies all",
                IN,
                "prod/web",
                "prod/client",
                Tcp,
                80,
                D,
            ),
            (
                "egress untouched",
                OUT,
                "prod/web",
                "prod/client",
                Tcp,
                80,
                A,
            ),
            (
                "default allow: other peers pass",
                IN,
                "prod/client",
                "prod/db",
                Tcp,
                9000,
                A,
            ),
            (
                "default allow: L7 port via proxy",
                IN,
                "prod/client",
                "prod/db",
                Tcp,
                80,
                P,
            ),
            (
                "deny beats an L7 allow",
                IN,
                "prod/db",
                "prod/client",
                Tcp,
                80,
                D,
            ),
            ("deny is per port", IN, "prod/db", "prod/client", Tcp, 81, A),
            (
                "others keep the L7 allow",
                IN,
                "prod/db",
                "prod/web",
                Tcp,
                80,
                P,
            ),
        ],
    );
    let (_, reason) = check(&c, IN, "prod/db", "prod/client", Tcp, 80);
    assert_eq!(reason, Reason::DenyRule);
    let (_, reason) = check(&c, IN, "prod/web", "prod/client", Tcp, 80);
    assert_eq!(reason, Reason::DefaultDeny);
    // SEMANTICS 2.2: the L7 rule gains the wildcard in a default-allow direction.
    assert!(http(&c, "prod/client", "prod/web", 80, "GET", "/public"));
    assert!(http(
        &c,
        "prod/client",
        "prod/web",
        80,
        "DELETE",
        "/private"
    ));

    let deny_only = compiler(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-only, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingressDeny:
  - fromEntities: [world]
"#,
    );
    run_cases(
        &deny_only,
        &[(
            "a deny-only policy is default deny",
            IN,
            "prod/web",
            "prod/client",
            Tcp,
            80,
            D,
        )],
    );
}

// SEMANTICS 3.1: ranges, protocols, named ports.
#[test]
fn ports_and_protocols() {
    let c = compiler(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ports, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - toPorts:
    - ports:
      - {port: "8000", endPort: 8100, protocol: TCP}
      - {port: "53"}
      - {port: http}
  egress:
  - toEndpoints: [{matchLabels: {app: db}}]
    toPorts:
    - ports: [{port: pg, protocol: TCP}]
"#,
    );
    run_cases(
        &c,
        &[
            ("range start", IN, "prod/web", "prod/client", Tcp, 8000, A),
            ("range end", IN, "prod/web", "prod/client", Tcp, 8100, A),
            ("past range", IN, "prod/web", "prod/client", Tcp, 8101, D),
            (
                "range is TCP only",
                IN,
                "prod/web",
                "prod/client",
                Udp,
                8050,
                D,
            ),
            (
                "no protocol = ANY: TCP",
                IN,
                "prod/web",
                "prod/client",
                Tcp,
                53,
                A,
            ),
            (
                "no protocol = ANY: UDP",
                IN,
                "prod/web",
                "prod/client",
                Udp,
                53,
                A,
            ),
            (
                "no protocol = ANY: SCTP",
                IN,
                "prod/web",
                "prod/client",
                Sctp,
                53,
                A,
            ),
            (
                "own named port",
                IN,
                "prod/web",
                "prod/client",
                Tcp,
                8080,
                A,
            ),
            ("peer named port", OUT, "prod/web", "prod/db", Tcp, 5432, A),
            (
                "peer named port, other number",
                OUT,
                "prod/web",
                "prod/db",
                Tcp,
                5433,
                D,
            ),
            (
                "peer named port, other peer",
                OUT,
                "prod/web",
                "prod/client",
                Tcp,
                5432,
                D,
            ),
        ],
    );
}

// SEMANTICS 3.3, 3.4, 3.5: merging L7 rules and wildcarding by L3/L4 allows.
#[test]
fn l7_merge_and_wildcard() {
    let c = compiler(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/a"}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/b"}]
  - fromEndpoints: [{matchLabels: {app: db}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: all-http, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: client}}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{}]
"#,
    );
    run_cases(
        &c,
        &[
            (
                "L7 port is redirected",
                IN,
                "prod/web",
                "prod/client",
                Tcp,
                80,
                P,
            ),
            (
                "L3-only peer on L7 port is redirected",
                IN,
                "prod/web",
                "prod/db",
                Tcp,
                80,
                P,
            ),
            (
                "L3-only peer elsewhere is plain",
                IN,
                "prod/web",
                "prod/db",
                Tcp,
                22,
                A,
            ),
            (
                "L7 peer on other port",
                IN,
                "prod/web",
                "prod/client",
                Tcp,
                81,
                D,
            ),
            (
                "http [{}] redirects",
                IN,
                "prod/client",
                "prod/web",
                Tcp,
                80,
                P,
            ),
        ],
    );
    // 3.3: rules of both policies OR; fields inside one rule AND.
    assert!(http(&c, "prod/web", "prod/client", 80, "GET", "/a"));
    assert!(http(&c, "prod/web", "prod/client", 80, "GET", "/b"));
    assert!(!http(&c, "prod/web", "prod/client", 80, "GET", "/c"));
    assert!(!http(&c, "prod/web", "prod/client", 80, "POST", "/a"));
    // 3.4: the L3-only allow of db wildcards L7 on port 80 for db only.
    assert!(http(&c, "prod/web", "prod/db", 80, "DELETE", "/anything"));
    // 3.5
    assert!(http(&c, "prod/client", "prod/web", 80, "PUT", "/x"));

    let same_peer = compiler(
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
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l4, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
"#,
    );
    // 3.4 across selectors: `{}` covers client too, so client may make any request,
    // still through the proxy.
    run_cases(
        &same_peer,
        &[(
            "covered peer still redirected",
            IN,
            "prod/web",
            "prod/client",
            Tcp,
            80,
            P,
        )],
    );
    assert!(http(
        &same_peer,
        "prod/web",
        "prod/client",
        80,
        "POST",
        "/x"
    ));
}

// SEMANTICS 5.4, 6.1: DNS rules redirect; toFQDNs selects nothing until names resolve.
#[test]
fn dns_rules_and_fqdns() {
    let c = compiler(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-example, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toEndpoints:
    - matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s:k8s-app: kube-dns}
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*.example.com"}, {matchName: example.org}]
  - toFQDNs: [{matchName: example.org}]
"#,
    );
    run_cases(
        &c,
        &[
            (
                "DNS over UDP via proxy",
                OUT,
                "prod/web",
                "kube-system/dns",
                Udp,
                53,
                P,
            ),
            (
                "DNS over TCP via proxy",
                OUT,
                "prod/web",
                "kube-system/dns",
                Tcp,
                53,
                P,
            ),
            (
                "toFQDNs before any answer",
                OUT,
                "prod/web",
                "93.184.216.34",
                Tcp,
                443,
                D,
            ),
        ],
    );
    let policy = c.endpoint(&key("prod/web")).expect("compiled");
    let dns = peer_identity(&c, "kube-system/dns");
    let result = evaluate(&policy.egress, dns, Udp, 53);
    let rules = result.l7.expect("redirected");
    assert!(rules.evaluate_dns("www.example.com").allowed);
    assert!(rules.evaluate_dns("WWW.Example.COM.").allowed);
    assert!(!rules.evaluate_dns("example.com").allowed);
    assert!(rules.evaluate_dns("example.org").allowed);
    assert!(!rules.evaluate_dns("github.com").allowed);
}

// Incremental compilation: a change recompiles only the endpoints it touches.
#[test]
fn incremental_recompile() {
    let mut c = compiler("");
    let policy = |name: &str, app: &str| {
        let text = format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: prod}}\nspec:\n  endpointSelector: {{matchLabels: {{app: {app}}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n"
        );
        let mut parsed = parse_str("p.yaml", &text);
        parsed.objects.remove(0)
    };
    c.apply(SourceEvent::Applied(policy("p1", "web")));
    let changes = c.flush();
    assert_eq!(
        changes
            .recompiled
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>(),
        ["prod/web"]
    );
    // Retargeting the policy touches the old and the new endpoint.
    c.apply(SourceEvent::Applied(policy("p1", "db")));
    let changes = c.flush();
    let touched: Vec<String> = changes.recompiled.iter().map(|k| k.to_string()).collect();
    assert_eq!(touched, ["prod/db", "prod/web"]);
    run_cases(
        &c,
        &[
            (
                "old target no longer enforced",
                IN,
                "prod/web",
                "prod/db",
                Tcp,
                80,
                A,
            ),
            ("new target enforced", IN, "prod/db", "prod/web", Tcp, 80, D),
            (
                "new target allows client",
                IN,
                "prod/db",
                "prod/client",
                Tcp,
                80,
                A,
            ),
        ],
    );
    // A new pod with the selected labels gets a new identity; only endpoints whose
    // rules select it are recompiled.
    let pod = parse_str(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: client2, namespace: prod, labels: {app: client, tier: x}}\nspec: {nodeName: n1, containers: [{name: c, image: i}]}\nstatus: {podIP: 10.0.1.9}\n",
    )
    .objects
    .remove(0);
    c.apply(SourceEvent::Applied(pod));
    let touched: Vec<String> = c.flush().recompiled.iter().map(|k| k.to_string()).collect();
    assert_eq!(touched, ["prod/client2", "prod/db"]);
    run_cases(
        &c,
        &[(
            "new client allowed",
            IN,
            "prod/db",
            "prod/client2",
            Tcp,
            80,
            A,
        )],
    );
    c.apply(SourceEvent::Deleted(ObjectKey::Policy(PolicyKey {
        kind: crate::policy::PolicyKind::Namespaced,
        namespace: Some("prod".into()),
        name: "p1".into(),
    })));
    let touched: Vec<String> = c.flush().recompiled.iter().map(|k| k.to_string()).collect();
    assert_eq!(touched, ["prod/db"]);
    run_cases(
        &c,
        &[("policy deleted", IN, "prod/db", "prod/web", Tcp, 80, A)],
    );
}

// Endpoints of one node: spec.nodeName and status.podIP decide.
#[test]
fn node_scope() {
    let mut c = Compiler::new(EndpointScope::Node("n2".into()));
    for object in parse_str("w.yaml", WORLD).objects {
        c.apply(SourceEvent::Applied(object));
    }
    let changes = c.flush();
    let keys: Vec<String> = changes.recompiled.iter().map(|k| k.to_string()).collect();
    assert_eq!(keys, ["prod/db"]);
}

// Two policies putting different L7 parsers on one port cannot be merged (Cilium refuses
// the same). The second is left out, which can only deny more, and the endpoint says why.
#[test]
fn conflicting_parsers_across_policies() {
    let c = compiler(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a-http, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toEndpoints: [{matchLabels: {app: db}}]
    toPorts:
    - ports: [{port: "53", protocol: TCP}]
      rules: {http: [{method: GET}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b-dns, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "53", protocol: TCP}]
      rules: {dns: [{matchPattern: "*"}]}
"#,
    );
    run_cases(
        &c,
        &[
            ("first parser kept", OUT, "prod/web", "prod/db", Tcp, 53, P),
            (
                "conflicting entry left out",
                OUT,
                "prod/web",
                "prod/client",
                Tcp,
                53,
                D,
            ),
        ],
    );
    let notes = &c.endpoint(&key("prod/web")).expect("compiled").notes;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("prod/b-dns"), "{}", notes[0]);
    assert!(notes[0].contains("conflict"), "{}", notes[0]);
}
