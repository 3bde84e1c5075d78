//! Bad input: every problem is one line `FILE: KIND NAMESPACE/NAME: FIELD.PATH: reason`,
//! nothing panics, and a bad object never hides the good ones.

use crate::manifest::{Object, parse_str};

fn cnp(spec: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: bad, namespace: ns1}}\nspec:\n{spec}"
    )
}

fn errors(text: &str) -> Vec<String> {
    parse_str("f.yaml", text)
        .errors
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Each case: the policy, and the start of the one error line it must give.
#[test]
fn each_bad_field_is_named() {
    let sel = "  endpointSelector: {matchLabels: {app: a}}\n";
    let cases: Vec<(String, &str)> = vec![
        // Unknown and mistyped fields (serde).
        (
            cnp(&format!("{sel}  ingress:\n  - fromEndpoint: [{{}}]\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.ingress[0].fromEndpoint: unknown field `fromEndpoint`",
        ),
        (
            cnp(&format!("{sel}  ingress: yes\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.ingress: invalid type",
        ),
        (
            cnp(&format!("{sel}  egress:\n  - toPorts:\n    - ports: [{{port: \"80\"}}]\n      rules: {{http: [{{methd: GET}}]}}\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.egress[0].toPorts[0].rules.http[0].methd: unknown field `methd`",
        ),
        // L7 in deny rules does not exist (SEMANTICS 2.3).
        (
            cnp(&format!("{sel}  ingressDeny:\n  - toPorts:\n    - ports: [{{port: \"80\"}}]\n      rules: {{http: [{{}}]}}\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.ingressDeny[0].toPorts[0].rules: unknown field `rules`",
        ),
        // Selectors (SEMANTICS 1.5).
        (
            cnp("  endpointSelector: {matchExpressions: [{key: a, operator: Equals}]}\n  ingress: [{}]\n"),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.endpointSelector.matchExpressions[0].operator: unknown operator \"Equals\"",
        ),
        (
            cnp("  ingress: [{}]\n"),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.endpointSelector: endpointSelector is required",
        ),
        // Entities and CIDRs (SEMANTICS 1.6, 1.7).
        (
            cnp(&format!("{sel}  ingress:\n  - fromEntities: [everyone]\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.ingress[0].fromEntities[0]: unknown entity \"everyone\"",
        ),
        (
            cnp(&format!("{sel}  egress:\n  - toCIDRSet: [{{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}]\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.egress[0].toCIDRSet[0].except[0]: 192.168.0.0/16 is not inside 10.0.0.0/8",
        ),
        (
            cnp(&format!("{sel}  egress:\n  - toCIDR: [10.0.0.300/8]\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.egress[0].toCIDR[0]: \"10.0.0.300/8\" is not a valid CIDR",
        ),
        (
            cnp(&format!("{sel}  egress:\n  - toCIDR: [10.0.0.0/8]\n    toEndpoints: [{{}}]\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.egress[0]: combining toEndpoints and toCIDR in one rule is not supported",
        ),
        // Ports and protocols (SEMANTICS 3.1, 3.2).
        (
            cnp(&format!("{sel}  ingress:\n  - toPorts: [{{ports: [{{port: \"70000\"}}]}}]\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.ingress[0].toPorts[0].ports[0].port: port 70000 is out of range 0-65535",
        ),
        (
            cnp(&format!("{sel}  ingress:\n  - toPorts: [{{ports: [{{port: \"80\", protocol: ICMP}}]}}]\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.ingress[0].toPorts[0].ports[0].protocol: unknown protocol \"ICMP\"",
        ),
        (
            cnp(&format!("{sel}  ingress:\n  - toPorts: [{{ports: [{{port: \"90\", endPort: 80}}]}}]\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.ingress[0].toPorts[0].ports[0].endPort: endPort 80 is below port 90",
        ),
        (
            cnp(&format!("{sel}  ingress:\n  - toPorts: [{{ports: [{{port: \"http_x\"}}]}}]\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.ingress[0].toPorts[0].ports[0].port: \"http_x\" is neither a port number nor a valid port name",
        ),
        (
            cnp(&format!("{sel}  ingress:\n  - toPorts:\n    - ports: [{{port: \"80\", protocol: UDP}}]\n      rules: {{http: [{{}}]}}\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.ingress[0].toPorts[0].ports[0].protocol: HTTP rules need protocol TCP",
        ),
        (
            cnp(&format!("{sel}  ingress:\n  - toPorts:\n    - ports: [{{port: \"80\"}}]\n      rules: {{http: [{{}}]}}\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.ingress[0].toPorts[0].ports[0].protocol: HTTP rules need protocol TCP",
        ),
        (
            cnp(&format!("{sel}  ingress:\n  - toPorts:\n    - ports: [{{port: \"0\", protocol: TCP}}]\n      rules: {{http: [{{}}]}}\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.ingress[0].toPorts[0].ports[0].port: HTTP rules need a port other than 0",
        ),
        (
            cnp(&format!("{sel}  ingress:\n  - toPorts:\n    - ports: [{{port: \"53\", protocol: UDP}}]\n      rules: {{dns: [{{matchName: a.com}}]}}\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.ingress[0].toPorts[0].rules.dns: DNS rules are only allowed on egress",
        ),
        (
            cnp(&format!("{sel}  egress:\n  - toPorts:\n    - ports: [{{port: \"53\", endPort: 54}}]\n      rules: {{dns: [{{matchName: a.com}}]}}\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.egress[0].toPorts[0].ports[0].endPort: DNS rules do not support port ranges",
        ),
        (
            cnp(&format!("{sel}  egress:\n  - toPorts:\n    - rules: {{dns: [{{matchName: a.com}}]}}\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.egress[0].toPorts[0].ports: L7 rules need at least one port",
        ),
        (
            cnp(&format!("{sel}  egress:\n  - toPorts:\n    - ports: [{{port: \"53\", protocol: TCP}}]\n      rules: {{http: [{{}}]}}\n  - toPorts:\n    - ports: [{{port: \"53\", protocol: TCP}}]\n      rules: {{dns: [{{matchPattern: \"*\"}}]}}\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.egress[1].toPorts[0].ports[0]: conflicting L7 parsers on 53/TCP: dns here, http at spec.egress[0].toPorts[0].ports[0]",
        ),
        // HTTP rules (SEMANTICS 4).
        (
            cnp(&format!("{sel}  ingress:\n  - toPorts:\n    - ports: [{{port: \"80\", protocol: TCP}}]\n      rules: {{http: [{{}}, {{path: \"/a(\"}}]}}\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.ingress[0].toPorts[0].rules.http[1].path: invalid regex \"/a(\"",
        ),
        (
            cnp(&format!("{sel}  ingress:\n  - toPorts:\n    - ports: [{{port: \"80\", protocol: TCP}}]\n      rules: {{http: [{{headerMatches: [{{name: x, mismatch: DROP}}]}}]}}\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].mismatch: unknown mismatch action \"DROP\"",
        ),
        (
            cnp(&format!("{sel}  ingress:\n  - toPorts:\n    - ports: [{{port: \"80\", protocol: TCP}}]\n      rules: {{http: [{{headers: [\"X:v\"]}}]}}\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.ingress[0].toPorts[0].rules.http[0].headers[0]:",
        ),
        (
            cnp(&format!("{sel}  ingress:\n  - toPorts:\n    - ports: [{{port: \"80\", protocol: TCP}}]\n      rules: {{kafka: [{{topic: t}}]}}\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.ingress[0].toPorts[0].rules.kafka: kafka is not supported by this enforcer",
        ),
        // DNS patterns and toFQDNs (SEMANTICS 5.3).
        (
            cnp(&format!("{sel}  egress:\n  - toPorts:\n    - ports: [{{port: \"53\"}}]\n      rules: {{dns: [{{matchPattern: \"a b.com\"}}]}}\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.egress[0].toPorts[0].rules.dns[0].matchPattern: invalid matchPattern \"a b.com\"",
        ),
        (
            cnp(&format!("{sel}  egress:\n  - toFQDNs: [{{matchName: a.com, matchPattern: \"*.a.com\"}}]\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.egress[0].toFQDNs[0]: set only one of matchName and matchPattern",
        ),
        (
            cnp(&format!("{sel}  egress:\n  - toFQDNs: [{{matchName: \"*.a.com\"}}]\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.egress[0].toFQDNs[0].matchName: invalid matchName \"*.a.com\"",
        ),
        // Things Cilium has that this enforcer does not do: said plainly.
        (
            cnp(&format!("{sel}  egress:\n  - toServices: [{{k8sService: {{serviceName: s}}}}]\n")),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec.egress[0].toServices: toServices is not supported by this enforcer",
        ),
        // Object-level problems.
        (
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: bad, namespace: ns1}\n".into(),
            "f.yaml: CiliumNetworkPolicy ns1/bad: spec: spec or specs is required",
        ),
        (
            "apiVersion: cilium.io/v1\nkind: CiliumNetworkPolicy\nmetadata: {name: bad, namespace: ns1}\nspec: {}\n".into(),
            "f.yaml: CiliumNetworkPolicy ns1/bad: apiVersion: CiliumNetworkPolicy needs apiVersion cilium.io/v2",
        ),
        (
            "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: cw}\nspecs:\n- endpointSelector: {}\n  egress: [{toEntities: [moon]}]\n".into(),
            "f.yaml: CiliumClusterwideNetworkPolicy -/cw: specs[0].egress[0].toEntities[0]: unknown entity \"moon\"",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: ns1}\nspec: {containers: 3}\n".into(),
            "f.yaml: Pod ns1/p: spec.containers: invalid type",
        ),
        (
            "kind: [\n".into(),
            "f.yaml: document 1: line",
        ),
        (
            "- just\n- a list\n".into(),
            "f.yaml: - -/-: -: a Kubernetes object must be a mapping",
        ),
    ];
    for (text, want) in cases {
        let got = errors(&text);
        assert_eq!(
            got.len(),
            1,
            "want one error for {want:?}, got {got:#?}\n{text}"
        );
        assert!(
            got[0].starts_with(want),
            "want prefix\n  {want}\ngot\n  {}\n{text}",
            got[0]
        );
    }
}

#[test]
fn several_errors_in_one_object_are_all_reported() {
    let text = cnp(
        "  endpointSelector: {matchLabels: {app: a}}\n  ingress:\n  - fromEntities: [moon]\n    toPorts: [{ports: [{port: \"99999\"}]}]\n",
    );
    let got = errors(&text);
    assert_eq!(got.len(), 2, "{got:#?}");
}

#[test]
fn one_bad_policy_leaves_the_others() {
    let good = |name: &str| {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  endpointSelector: {{}}\n  ingress: [{{}}]\n"
        )
    };
    let text = format!(
        "{}---\n{}---\n{}",
        good("one"),
        cnp("  endpointSelector: {}\n  ingress: [{fromEntities: [moon]}]\n"),
        good("two")
    );
    let parsed = parse_str("f.yaml", &text);
    assert_eq!(parsed.errors.len(), 1);
    let names: Vec<String> = parsed
        .objects
        .iter()
        .map(|o| match o {
            Object::Policy(p) => p.key.name.clone(),
            _ => String::new(),
        })
        .collect();
    assert_eq!(names, ["one", "two"]);
}

#[test]
fn deeply_nested_yaml_is_an_error_not_a_crash() {
    let depth = 100_000;
    let text = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: deep}}\nspec: {}{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let got = errors(&text);
    assert_eq!(got.len(), 1, "{got:?}");
    let flow = format!("{}{}", "- ".repeat(10_000), "x");
    assert_eq!(errors(&flow).len(), 1);
}

#[test]
fn ten_megabyte_files_parse() {
    // ~10 MB of valid policies: all of them load.
    let one = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: pNNNNN, namespace: ns}\nspec:\n  endpointSelector: {matchLabels: {app: a}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: b}}]\n    toPorts:\n    - ports: [{port: \"80\", protocol: TCP}]\n      rules:\n        http: [{method: GET, path: \"/v1/.*\"}]\n---\n";
    let count = 10 * 1024 * 1024 / one.len() + 1;
    let mut text = String::with_capacity(count * one.len());
    for i in 0..count {
        text.push_str(&one.replace("NNNNN", &format!("{i:05}")));
    }
    let parsed = parse_str("big.yaml", &text);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors.first());
    assert_eq!(parsed.objects.len(), count);

    // ~10 MB of one scalar: one error naming the field, no crash.
    let junk = cnp(&format!(
        "  endpointSelector: {{matchLabels: {{app: a}}}}\n  description: {}\n  ingress: 5\n",
        "x".repeat(10 * 1024 * 1024)
    ));
    let got = errors(&junk);
    assert_eq!(got.len(), 1);
    assert!(got[0].contains("spec.ingress"), "{}", got[0]);
}

#[test]
fn arbitrary_bytes_never_panic() {
    let seeds = [
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"1\"}]}]}]}\n",
        "kind: List\nitems: [{kind: Pod}, 3, null, {kind: List, items: 4}]\n",
        "--- !tag\n&a [*a]\n",
        "a: *b\n",
        "\u{feff}kind: Pod\u{0}\n",
    ];
    for seed in seeds {
        for cut in 0..seed.len() {
            if seed.is_char_boundary(cut) {
                let _ = parse_str("f.yaml", &seed[..cut]);
            }
        }
    }
}

/// Mutated copies of the example manifests (bytes flipped, dropped, duplicated): whatever
/// comes out, parsing returns objects or errors and never panics.
#[test]
fn mutated_examples_never_panic() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut inputs = Vec::new();
    for dir in ["starwars", "bookinfo", "to-google"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("examples exist") {
            inputs.push(std::fs::read(entry.expect("entry").path()).expect("readable"));
        }
    }
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64: deterministic, so a failure reproduces.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b" :-[]{}\"'\n\t*&!|>#.,0a";
    for input in &inputs {
        for _ in 0..300 {
            let mut bytes = input.clone();
            for _ in 0..(1 + next() % 4) {
                if bytes.is_empty() {
                    break;
                }
                let at = (next() % bytes.len() as u64) as usize;
                match next() % 3 {
                    0 => bytes[at] = alphabet[(next() % alphabet.len() as u64) as usize],
                    1 => {
                        bytes.remove(at);
                    }
                    _ => {
                        let end = (at + (next() % 40) as usize).min(bytes.len());
                        let chunk = bytes[at..end].to_vec();
                        bytes.splice(at..at, chunk);
                    }
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse_str("mutated.yaml", &text);
        }
    }
}
