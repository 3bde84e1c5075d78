//! The eBPF datapath across two nodes: two node namespaces joined by a link (each node's
//! `--uplink`), each with its own agent, proxy and pinned maps, reading the same manifests.
//! Traffic from node1's pods to node2's crosses the link; node2's uplink program decides
//! the ingress redirect, node1's steers replies of its proxy's upstream connections back
//! to the proxy. Needs root, clang, iproute2, nsenter, curl and python3.

mod datapath_cluster;
use datapath_cluster::*;

fn pods() -> Vec<PodSpec> {
    vec![
        pod("client", [10, 72, 1, 10], "{app: client}", 0),
        pod("other", [10, 72, 1, 30], "{app: other}", 0),
        pod("server", [10, 72, 2, 20], "{app: server}", 1),
    ]
}

const SERVER_INGRESS_L7: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/public.*"}]
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "81", protocol: TCP}]}]
"#;

const CLIENT_EGRESS_L7: &str = r#"---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/public.*"}, {method: GET, path: "/egress-only"}]
"#;

// L3/L4 and L7 on ingress across nodes: node2's uplink program redirects the client's flow
// to node2's ingress proxy; other is dropped by node2's to_pod; allowed flows on a port
// without L7 pass in the kernel.
#[test]
fn cross_node_l3_l4_and_l7_ingress() {
    let mut c = DpCluster::start("dp2i", 2, &pods(), SERVER_INGRESS_L7);
    let log = c.serve_http("server", 80);
    c.serve_http("server", 81);
    assert_eq!(c.get("client", "server", 80, "/public/1").0, 200);
    assert_eq!(
        c.get("client", "server", 80, "/private"),
        (403, DENIED_BODY.to_string())
    );
    assert_eq!(c.status("client", "server", 81, "/"), 200, "L3/L4 only");
    assert_eq!(c.status("other", "server", 80, "/public/1"), 0);
    assert_eq!(c.status("other", "server", 81, "/"), 0);
    let received = DpCluster::received(&log);
    assert_eq!(received.len(), 1, "{received:?}");
    assert!(
        received[0]["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("10.72.1.10:")),
        "node2's proxy kept the client's address: {received:?}"
    );
}

// L7 on egress at node1 and on ingress at node2 for the same flow: each proxy enforces its
// own endpoint's rules, the server sees the client's address, and the replies of node1's
// proxy's upstream connection come back to it through node1's uplink program.
#[test]
fn cross_node_l7_egress_then_ingress() {
    let policy = format!("{SERVER_INGRESS_L7}{CLIENT_EGRESS_L7}");
    let mut c = DpCluster::start("dp2e", 2, &pods(), &policy);
    let log = c.serve_http("server", 80);
    assert_eq!(c.get("client", "server", 80, "/public/2").0, 200);
    // Denied by the client's egress rules (node1's proxy).
    assert_eq!(
        c.get("client", "server", 80, "/admin"),
        (403, DENIED_BODY.to_string())
    );
    // Allowed by the client's egress, denied by the server's ingress (node2's proxy).
    assert_eq!(
        c.get("client", "server", 80, "/egress-only"),
        (403, DENIED_BODY.to_string())
    );
    let received = DpCluster::received(&log);
    assert_eq!(received.len(), 1, "{received:?}");
    assert!(
        received[0]["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("10.72.1.10:"))
    );
}
