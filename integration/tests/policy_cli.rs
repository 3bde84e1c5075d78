//! The README's policy walkthrough, end to end: the real `node-agent` binary on the
//! example manifests (Star Wars, bookinfo, to-google), checking what a user reads.

use integration::node_agent;
use serde_json::Value;

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn explain(manifests: &[&str], args: &[&str]) -> Value {
    let mut all = vec!["policy", "explain"];
    for m in manifests {
        all.extend(["--manifests", m]);
    }
    all.extend(args);
    all.extend(["-o", "json"]);
    let output = node_agent(&all);
    assert!(
        output.status.success(),
        "explain {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("explain -o json prints JSON")
}

const STARWARS_L4: [&str; 2] = [
    "examples/starwars/pods.yaml",
    "examples/starwars/sw_l3_l4_policy.yaml",
];
const STARWARS_L7: [&str; 2] = [
    "examples/starwars/pods.yaml",
    "examples/starwars/sw_l3_l4_l7_policy.yaml",
];

#[test]
fn examples_validate() {
    let output = node_agent(&["policy", "validate", "examples"]);
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout(&output), "");
}

#[test]
fn validate_reports_each_error_and_exits_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: rule1, namespace: default}\nspec:\n  endpointSelector: {matchLabels: {class: deathstar}}\n  ingress:\n  - toPorts:\n    - ports: [{port: \"80\", protocol: TCP}]\n      rules:\n        http: [{path: \"/v1/(\"}]\n---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: cw}\nspec:\n  endpointSelector: {}\n  egress: [{toPort: []}]\n",
    )
    .expect("write");
    let path = file.display().to_string();
    let output = node_agent(&["policy", "validate", &path]);
    assert_eq!(output.status.code(), Some(1));
    let lines: Vec<String> = stdout(&output).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].starts_with(&format!(
            "{path}: CiliumNetworkPolicy default/rule1: spec.ingress[0].toPorts[0].rules.http[0].path: invalid regex"
        )),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(&format!(
            "{path}: CiliumClusterwideNetworkPolicy -/cw: spec.egress[0].toPort: unknown field `toPort`"
        )),
        "{}",
        lines[1]
    );
}

// The Star Wars story: L3/L4 first, then L7.
#[test]
fn starwars_l3_l4() {
    let tiefighter = explain(
        &STARWARS_L4,
        &[
            "--from",
            "default/tiefighter",
            "--to",
            "default/deathstar",
            "--port",
            "80/TCP",
        ],
    );
    assert_eq!(tiefighter["verdict"], "allowed");
    assert_eq!(tiefighter["ingress"]["reason"], "allow-rule");
    assert_eq!(
        tiefighter["ingress"]["rules"][0]["rules"][0]["name"],
        "rule1"
    );
    assert_eq!(tiefighter["egress"]["reason"], "no-policy");

    let xwing = explain(
        &STARWARS_L4,
        &[
            "--from",
            "default/xwing",
            "--to",
            "default/deathstar",
            "--port",
            "80/TCP",
        ],
    );
    assert_eq!(xwing["verdict"], "denied");
    assert_eq!(xwing["ingress"]["reason"], "default-deny");
    assert_eq!(xwing["l7_verdict"], Value::Null);
}

#[test]
fn starwars_l7() {
    let exhaust = explain(
        &STARWARS_L7,
        &[
            "--from",
            "default/tiefighter",
            "--to",
            "default/deathstar",
            "--port",
            "80/TCP",
            "--http",
            "PUT /v1/exhaust-port",
        ],
    );
    assert_eq!(exhaust["verdict"], "allowed-via-proxy");
    assert_eq!(exhaust["l7_verdict"], "denied");

    let landing = explain(
        &STARWARS_L7,
        &[
            "--from",
            "default/tiefighter",
            "--to",
            "10.200.1.10",
            "--port",
            "80",
            "--http",
            "POST /v1/request-landing",
        ],
    );
    assert_eq!(landing["verdict"], "allowed-via-proxy");
    assert_eq!(landing["l7_verdict"], "allowed");
    assert_eq!(
        landing["ingress"]["l7"]["matched"],
        "spec.ingress[0].toPorts[0].rules.http[0]"
    );

    // Text output, as a person reads it.
    let output = node_agent(&[
        "policy",
        "explain",
        "--manifests",
        STARWARS_L7[0],
        "--manifests",
        STARWARS_L7[1],
        "--from",
        "default/xwing",
        "--to",
        "default/deathstar",
        "--port",
        "80/TCP",
        "--http",
        "POST /v1/request-landing",
    ]);
    let text = stdout(&output);
    assert!(text.contains("ingress of default/deathstar"), "{text}");
    assert!(text.contains("Verdict: denied"), "{text}");
}

// The bookinfo walkthrough: productpage may GET reviews; details reaches the proxy
// through the L4-only rule but only for GET /nopathallowed.
#[test]
fn bookinfo_reviews() {
    let dir = ["examples/bookinfo"];
    let productpage = explain(
        &dir,
        &[
            "--from",
            "bookinfo/productpage-v1",
            "--to",
            "bookinfo/reviews-v1",
            "--port",
            "9080/TCP",
            "--http",
            "GET /reviews/0",
        ],
    );
    assert_eq!(productpage["verdict"], "allowed-via-proxy");
    assert_eq!(productpage["l7_verdict"], "allowed");

    let details = explain(
        &dir,
        &[
            "--from",
            "bookinfo/details-v1",
            "--to",
            "bookinfo/reviews-v1",
            "--port",
            "9080/TCP",
            "--http",
            "GET /reviews/0",
        ],
    );
    assert_eq!(details["verdict"], "allowed-via-proxy");
    assert_eq!(details["l7_verdict"], "denied");

    let other_port = explain(
        &dir,
        &[
            "--from",
            "bookinfo/details-v1",
            "--to",
            "bookinfo/reviews-v1",
            "--port",
            "9081",
        ],
    );
    assert_eq!(other_port["verdict"], "denied");
}

// The to-google walkthrough: DNS to kube-dns through the proxy, then toFQDNs.
#[test]
fn to_google() {
    let dir = ["examples/to-google"];
    let dns = explain(
        &dir,
        &[
            "--from",
            "basics/basicdeploy-65ff8695df-p58zr",
            "--to",
            "kube-system/coredns-0",
            "--port",
            "53/UDP",
            "--dns",
            "google.com",
        ],
    );
    assert_eq!(dns["verdict"], "allowed-via-proxy");
    assert_eq!(dns["l7_verdict"], "allowed");
    // No DNS answer has been seen: the address of google.com is not allowed yet.
    let web = explain(
        &dir,
        &[
            "--from",
            "basics/basicdeploy-65ff8695df-p58zr",
            "--to",
            "142.250.74.46",
            "--port",
            "80",
        ],
    );
    assert_eq!(web["verdict"], "denied");
    assert_eq!(web["ingress"]["reason"], "not-a-pod");
}

#[test]
fn show_lists_local_endpoints() {
    let output = node_agent(&[
        "policy",
        "show",
        "--manifests",
        STARWARS_L7[0],
        "--manifests",
        STARWARS_L7[1],
        "--node",
        "node1",
        "-o",
        "json",
    ]);
    assert!(output.status.success());
    let endpoints: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let names: Vec<&str> = endpoints
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|e| e["endpoint"].as_str())
        .collect();
    assert_eq!(
        names,
        ["default/deathstar", "default/tiefighter", "default/xwing"]
    );
    let deathstar = &endpoints[0];
    assert_eq!(deathstar["ingress"]["default_deny"], true);
    assert_eq!(deathstar["ingress"]["entries"][0]["action"], "redirect");
    assert_eq!(deathstar["egress"]["enforced"], false);
}

// An invalid policy beside valid ones: reported on stderr, the others still decide.
#[test]
fn explain_skips_an_invalid_policy() {
    let dir = tempfile::tempdir().expect("temp dir");
    for file in ["pods.yaml", "sw_l3_l4_policy.yaml"] {
        std::fs::copy(
            integration::workspace_root()
                .join("examples/starwars")
                .join(file),
            dir.path().join(file),
        )
        .expect("copy");
    }
    std::fs::write(
        dir.path().join("broken.yaml"),
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: broken}\nspec:\n  endpointSelector: {}\n  egress: [{toEntities: [moon]}]\n",
    )
    .expect("write");
    let path = dir.path().display().to_string();
    let output = node_agent(&[
        "policy",
        "explain",
        "--manifests",
        &path,
        "--from",
        "default/xwing",
        "--to",
        "default/deathstar",
        "--port",
        "80/TCP",
    ]);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("CiliumNetworkPolicy default/broken: spec.egress[0].toEntities[0]"),
        "{stderr}"
    );
    assert!(stdout(&output).contains("Verdict: denied"));
}
