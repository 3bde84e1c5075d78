//! SEMANTICS 2, 3, 5, 6: how rules combine into verdicts, and incremental recompilation.

use super::*;

// SEMANTICS 2.1, 2.2, 2.3: default deny, default allow, deny beats allow.
#[test]
#[rustfmt::skip]
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
            ("ingress: [{}] denies all", IN, "prod/web", "prod/client", Tcp, 80, D),
            ("egress untouched", OUT, "prod/web", "prod/client", Tcp, 80, A),
            ("default allow: other peers pass", IN, "prod/client", "prod/db", Tcp, 9000, A),
            ("default allow: L7 port via proxy", IN, "prod/client", "prod/db", Tcp, 80, P),
            ("deny beats an L7 allow", IN, "prod/db", "prod/client", Tcp, 80, D),
            ("deny is per port", IN, "prod/db", "prod/client", Tcp, 81, A),
            ("others keep the L7 allow", IN, "prod/db", "prod/web", Tcp, 80, P),
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
#[rustfmt::skip]
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
            ("range is TCP only", IN, "prod/web", "prod/client", Udp, 8050, D),
            ("no protocol = ANY: TCP", IN, "prod/web", "prod/client", Tcp, 53, A),
            ("no protocol = ANY: UDP", IN, "prod/web", "prod/client", Udp, 53, A),
            ("no protocol = ANY: SCTP", IN, "prod/web", "prod/client", Sctp, 53, A),
            ("own named port", IN, "prod/web", "prod/client", Tcp, 8080, A),
            ("peer named port", OUT, "prod/web", "prod/db", Tcp, 5432, A),
            ("peer named port, other number", OUT, "prod/web", "prod/db", Tcp, 5433, D),
            ("peer named port, other peer", OUT, "prod/web", "prod/client", Tcp, 5432, D),
        ],
    );
}

// SEMANTICS 3.3, 3.4, 3.5: merging L7 rules and wildcarding by L3/L4 allows.
#[test]
#[rustfmt::skip]
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
            ("L7 port is redirected", IN, "prod/web", "prod/client", Tcp, 80, P),
            ("L3-only peer on L7 port is redirected", IN, "prod/web", "prod/db", Tcp, 80, P),
            ("L3-only peer elsewhere is plain", IN, "prod/web", "prod/db", Tcp, 22, A),
            ("L7 peer on other port", IN, "prod/web", "prod/client", Tcp, 81, D),
            ("http [{}] redirects", IN, "prod/client", "prod/web", Tcp, 80, P),
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
#[rustfmt::skip]
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
            ("DNS over UDP via proxy", OUT, "prod/web", "kube-system/dns", Udp, 53, P),
            ("DNS over TCP via proxy", OUT, "prod/web", "kube-system/dns", Tcp, 53, P),
            ("toFQDNs before any answer", OUT, "prod/web", "93.184.216.34", Tcp, 443, D),
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

// SEMANTICS 1.7, incrementally: a prefix another policy names gets its own identity, and
// every CIDR selector containing it must select it, before and after it goes away.
#[test]
#[rustfmt::skip]
fn cidr_identities_follow_other_policies() {
    let mut c = compiler(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: wide, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toCIDR: [172.16.0.0/12]
"#,
    );
    run_cases(&c, &[("inside the wide prefix", OUT, "prod/web", "172.17.1.1", Tcp, 443, A)]);
    let narrow = parse_str(
        "n.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: narrow, namespace: prod}\nspec:\n  endpointSelector: {matchLabels: {app: client}}\n  egress:\n  - toCIDR: [172.17.0.0/16]\n",
    )
    .objects
    .remove(0);
    let narrow_key = narrow.key();
    c.apply(SourceEvent::Applied(narrow));
    let touched: Vec<String> = c.flush().recompiled.iter().map(|k| k.to_string()).collect();
    assert_eq!(touched, ["prod/client", "prod/web"], "web selects the new prefix identity");
    run_cases(&c, &[
        ("new, more specific prefix still allowed", OUT, "prod/web", "172.17.1.1", Tcp, 443, A),
        ("the narrow policy", OUT, "prod/client", "172.17.1.1", Tcp, 443, A),
        ("outside the narrow prefix", OUT, "prod/client", "172.18.1.1", Tcp, 443, D),
    ]);
    c.apply(SourceEvent::Deleted(narrow_key));
    c.flush();
    run_cases(&c, &[("prefix gone, wide rule still applies", OUT, "prod/web", "172.17.1.1", Tcp, 443, A)]);
}
