//! A synthetic cluster for benchmarks: namespaces, pods and a realistic mix of policies,
//! as manifest text. Deterministic, so runs compare.

pub const PODS: usize = 5_000;
pub const POLICIES: usize = 1_000;
pub const NAMESPACES: usize = 50;
pub const APPS: usize = 250;

/// Namespaces and `PODS` pods spread over `nodes` nodes (`node0`, `node1`, ...).
pub fn pods(nodes: usize) -> String {
    let nodes = nodes.max(1);
    let mut text = String::new();
    for ns in 0..NAMESPACES {
        text.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{ns}, labels: {{team: t{}}}}}\n---\n",
            ns % 7
        ));
    }
    for i in 0..PODS {
        let ns = i % NAMESPACES;
        let app = i % APPS;
        text.push_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: pod{i}, namespace: ns{ns}, labels: {{app: app{app}, tier: t{}}}}}\nspec: {{nodeName: node{}, containers: [{{name: c, image: i, ports: [{{name: http, containerPort: 8080}}]}}]}}\nstatus: {{podIP: 10.{}.{}.{}}}\n---\n",
            app % 3,
            i % nodes,
            i / 65536,
            (i / 256) % 256,
            i % 256
        ));
    }
    text
}

/// One policy of a realistic mix: L3/L4, HTTP rules, DNS + toFQDNs, CIDR, entities, deny.
pub fn policy(i: usize, port: u16) -> String {
    let ns = i % NAMESPACES;
    let app = i % APPS;
    let peer = (i * 7) % APPS;
    let body = match i % 5 {
        0 => format!(
            "  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: app{peer}}}}}]\n    toPorts: [{{ports: [{{port: \"{port}\", protocol: TCP}}]}}]\n"
        ),
        1 => format!(
            "  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: app{peer}}}}}, {{matchExpressions: [{{key: tier, operator: In, values: [t1, t2]}}]}}]\n    toPorts:\n    - ports: [{{port: \"{port}\", protocol: TCP}}]\n      rules:\n        http:\n        - {{method: GET, path: \"/api/v{i}/.*\"}}\n        - {{method: POST, path: \"/api/v{i}/items\", headers: [\"X-Team: t{i}\"]}}\n"
        ),
        2 => format!(
            "  egress:\n  - toEndpoints: [{{matchLabels: {{k8s:io.kubernetes.pod.namespace: ns0, app: app0}}}}]\n    toPorts:\n    - ports: [{{port: \"53\", protocol: ANY}}]\n      rules:\n        dns: [{{matchPattern: \"*.svc{i}.example.com\"}}]\n  - toFQDNs: [{{matchName: api{i}.example.com}}]\n"
        ),
        3 => format!(
            "  egress:\n  - toCIDRSet: [{{cidr: 172.{}.0.0/16, except: [172.{}.1.0/24]}}]\n    toPorts: [{{ports: [{{port: \"443\"}}]}}]\n  - toEntities: [world]\n    toPorts: [{{ports: [{{port: \"{port}\", protocol: TCP}}]}}]\n",
            16 + i % 16,
            16 + i % 16
        ),
        _ => format!(
            "  ingress:\n  - fromEntities: [cluster]\n  ingressDeny:\n  - fromEndpoints: [{{matchLabels: {{app: app{peer}}}}}]\n    toPorts: [{{ports: [{{port: \"{port}\", protocol: TCP}}]}}]\n"
        ),
    };
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p{i}, namespace: ns{ns}}}\nspec:\n  endpointSelector: {{matchLabels: {{app: app{app}}}}}\n{body}---\n"
    )
}
