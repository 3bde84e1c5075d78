//! The eBPF datapath end to end on one node, for a flow both of whose ends have L7 rules:
//! the client's egress and the server's ingress both redirect port 80. The client's
//! `from_pod` sends the flow to the EGRESS listener (the first hook decides); the proxy
//! enforces the client's egress rules AND the server's ingress rules on every request, and
//! forwards with the INGRESS mark, which the server's `to_pod` requires of a redirected
//! ingress (anything else is dropped as "No L7 redirect on this path"). Needs root, clang
//! (the build), iproute2, nsenter, curl and python3.

mod datapath_cluster;
use datapath_cluster::*;

const CLIENT: [u8; 4] = [10, 72, 0, 10];
const SERVER: [u8; 4] = [10, 72, 0, 20];

fn pods() -> Vec<PodSpec> {
    vec![
        pod("client", CLIENT, "{app: client}", 0),
        pod("server", SERVER, "{app: server}", 0),
    ]
}

/// client: egress to server on 80/TCP with `GET /public.*` and `GET /egress-only`.
const CLIENT_EGRESS: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/public.*"}
        - {method: GET, path: "/egress-only"}
"#;

/// server: ingress from `from` on 80/TCP, with `rules` under the port if given.
fn server_ingress(from: &str, rules: &str) -> String {
    format!(
        r#"---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: server, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: server}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: {from}}}}}]
    toPorts:
    - ports: [{{port: "80", protocol: TCP}}]
{rules}"#
    )
}

const SERVER_HTTP_RULES: &str = r#"      rules:
        http: [{method: GET, path: "/public.*"}]
"#;

fn policy(server: &str) -> String {
    format!("{CLIENT_EGRESS}{server}")
}

/// The proxy's HTTP flow records of requests for `path` (`observe -o json`).
fn http_records(c: &DpCluster, path: &str) -> Vec<serde_json::Value> {
    let output = c.agent_cli(0, &["observe", "-o", "json", "--last", "1000"]);
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|flow| {
            flow["is_reply"] == false
                && flow["l7"]["http"]["url"]
                    .as_str()
                    .is_some_and(|u| u.ends_with(path))
        })
        .collect()
}

// SEMANTICS 10.3 on one node: egress L7 of the client AND ingress L7 of the server. A
// request either side denies gets 403 (the record says which side), an allowed one reaches
// the server from the client's own address.
#[test]
fn egress_and_ingress_l7_on_one_node_both_apply() {
    let policy = policy(&server_ingress("client", SERVER_HTTP_RULES));
    let mut c = DpCluster::start("dpch", 1, &pods(), &policy);
    let log = c.serve_http("server", 80);

    assert_eq!(c.get("client", "server", 80, "/public/x").0, 200);
    // Denied by the client's egress.
    assert_eq!(
        c.get("client", "server", 80, "/admin"),
        (403, DENIED_BODY.to_string())
    );
    // Allowed by the client's egress, denied by the server's ingress.
    assert_eq!(
        c.get("client", "server", 80, "/egress-only"),
        (403, DENIED_BODY.to_string())
    );

    let received = DpCluster::received(&log);
    assert_eq!(received.len(), 1, "only the allowed request: {received:?}");
    assert_eq!(received[0]["path"], "/public/x");
    assert!(
        received[0]["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("10.72.0.10:")),
        "the server saw the client's address: {received:?}"
    );

    // The flow records name the side that decided.
    c.eventually("flow records naming the deciding side", true, |c| {
        let said = |path: &str, verdict: &str, text: &str| {
            http_records(c, path).iter().any(|r| {
                r["verdict"] == verdict
                    && r["matched_rule"].as_str().is_some_and(|m| m.contains(text))
            })
        };
        said("/admin", "DROPPED", "egress policy of default/client")
            && said(
                "/egress-only",
                "DROPPED",
                "ingress policy of default/server",
            )
            && said("/public/x", "FORWARDED", "(ingress of default/server)")
    });
}

// Policy changes of the server's ingress apply to the chained flow: without L7 rules only
// the client's egress decides (and the datapath takes the egress proxy's traffic); denying
// the client refuses the flow (no answer); L7 rules back: both sides again.
#[test]
fn server_ingress_changes_apply_to_the_chained_flow() {
    let mut c = DpCluster::start("dpcu", 1, &pods(), &policy(&server_ingress("client", "")));
    let log = c.serve_http("server", 80);
    assert_eq!(c.status("client", "server", 80, "/egress-only"), 200);
    assert_eq!(c.status("client", "server", 80, "/admin"), 403);

    c.write_policy(&policy(&server_ingress("nobody", "")));
    c.eventually("the server's ingress drops the client", 0, |c| {
        c.status("client", "server", 80, "/public/x")
    });

    c.write_policy(&policy(&server_ingress("client", SERVER_HTTP_RULES)));
    c.eventually("the server's ingress rules apply again", 403, |c| {
        c.status("client", "server", 80, "/egress-only")
    });
    assert_eq!(c.status("client", "server", 80, "/public/y"), 200);
    // Only what one side or both allowed reached the server (`/public/x` may have, before
    // the drop took effect).
    let paths: Vec<String> = DpCluster::received(&log)
        .iter()
        .map(|r| r["path"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        paths.iter().filter(|p| *p == "/egress-only").count(),
        1,
        "{paths:?}"
    );
    assert_eq!(
        paths.last().map(String::as_str),
        Some("/public/y"),
        "{paths:?}"
    );
    assert!(
        paths
            .iter()
            .all(|p| p == "/egress-only" || p.starts_with("/public/")),
        "{paths:?}"
    );
}
