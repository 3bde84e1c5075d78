//! SEMANTICS 1: which endpoints and peers a policy selects.

use super::*;

// SEMANTICS 1.4: namespace scoping of endpointSelector and peer selectors.
#[test]
#[rustfmt::skip]
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
            ("policy selects only its namespace", IN, "dev/client", "prod/web", Tcp, 80, A),
            ("selected in its namespace", IN, "prod/client", "prod/web", Tcp, 80, A),
            ("peer limited to the policy namespace", IN, "prod/client", "dev/client", Tcp, 80, D),
            ("explicit namespace is kept", IN, "prod/web", "dev/client", Tcp, 80, A),
            ("explicit namespace excludes own", IN, "prod/web", "prod/client", Tcp, 80, D),
            ("namespace labels select across", IN, "prod/db", "dev/client", Tcp, 80, A),
            ("namespace labels: other team", IN, "prod/db", "prod/client", Tcp, 80, D),
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
            ("CCNP selects every namespace", IN, "dev/client", "prod/web", Tcp, 80, A),
            ("CCNP {} selects pods anywhere", IN, "prod/client", "dev/client", Tcp, 80, A),
            ("CCNP {} does not select world", IN, "prod/client", "8.8.8.8", Tcp, 80, D),
            ("CCNP {} does not select host", IN, "prod/client", "#1", Tcp, 80, D),
        ],
    );
}

// SEMANTICS 1.3 and 1.5: selectors over security labels, [] vs {}.
#[test]
#[rustfmt::skip]
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
            ("[] selects nothing", IN, "prod/web", "prod/client", Tcp, 80, D),
            ("{} selects the namespace", IN, "prod/client", "prod/web", Tcp, 80, A),
            ("{} stays in the namespace", IN, "prod/client", "dev/client", Tcp, 80, D),
            ("In", IN, "prod/db", "prod/web", Tcp, 80, A),
            ("NotIn on service account", IN, "prod/db", "prod/client", Tcp, 80, D),
        ],
    );
}

// SEMANTICS 1.6: entities.
#[test]
#[rustfmt::skip]
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
            ("world allows outside IPs", IN, "prod/web", "8.8.8.8", Tcp, 80, A),
            ("world is not pods", IN, "prod/web", "prod/client", Tcp, 80, D),
            ("world is not host", IN, "prod/web", "#1", Tcp, 80, D),
            ("cluster allows pods of any namespace", IN, "prod/client", "dev/client", Tcp, 80, A),
            ("cluster allows host", IN, "prod/client", "#1", Tcp, 80, A),
            ("cluster is not world", IN, "prod/client", "8.8.8.8", Tcp, 80, D),
            ("host", IN, "prod/db", "#1", Tcp, 80, A),
            ("remote-node", IN, "prod/db", "#6", Tcp, 80, A),
            ("host is not health", IN, "prod/db", "#4", Tcp, 80, D),
        ],
    );
}

// SEMANTICS 1.7 and 6.6: CIDR rules with except; pod IPs keep their pod identity.
#[test]
#[rustfmt::skip]
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
            ("outside every CIDR", OUT, "prod/web", "8.8.8.8", Tcp, 443, D),
            ("pod IP keeps pod identity", OUT, "prod/web", "10.0.1.3", Tcp, 443, D),
            ("non-pod IP in 10/8", OUT, "prod/web", "10.9.9.9", Tcp, 443, A),
            ("CIDRSet allows", OUT, "prod/web", "172.16.2.1", Tcp, 443, A),
            ("except carves out", OUT, "prod/web", "172.16.1.9", Tcp, 443, D),
        ],
    );
}
