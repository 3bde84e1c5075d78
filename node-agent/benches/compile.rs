//! Compiler benchmarks: a full compile of 1,000 policies over 5,000 pods, and the
//! incremental recompile after one policy changes.
//!
//! `cargo bench -p node-agent --bench compile`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use node_agent::compiler::{Compiler, EndpointScope};
use node_agent::manifest::{Object, parse_str};
use node_agent::source::SourceEvent;

const PODS: usize = 5_000;
const POLICIES: usize = 1_000;
const NAMESPACES: usize = 50;
const APPS: usize = 250;

fn pods() -> String {
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
            i % 4,
            i / 65536,
            (i / 256) % 256,
            i % 256
        ));
    }
    text
}

/// One policy of a realistic mix: L3/L4, HTTP rules, DNS + toFQDNs, CIDR, entities, deny.
fn policy(i: usize, port: u16) -> String {
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

fn objects(text: &str) -> Vec<Object> {
    let parsed = parse_str("bench.yaml", text);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors.first());
    parsed.objects
}

fn world() -> Vec<Object> {
    let mut text = pods();
    for i in 0..POLICIES {
        text.push_str(&policy(i, 80));
    }
    objects(&text)
}

fn compile_all(objects: &[Object]) -> Compiler {
    let mut compiler = Compiler::new(EndpointScope::AllPods);
    for object in objects {
        compiler.apply(SourceEvent::Applied(object.clone()));
    }
    compiler.flush();
    compiler
}

fn bench(c: &mut Criterion) {
    let objects = world();
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.bench_function("full_1000_policies_5000_pods", |b| {
        b.iter(|| black_box(compile_all(&objects)))
    });

    let mut compiler = compile_all(&objects);
    let changed = [objects_one(&policy(1, 81)), objects_one(&policy(1, 80))];
    let mut flip = 0;
    group.bench_function("incremental_one_policy_changed", |b| {
        b.iter(|| {
            compiler.apply(SourceEvent::Applied(changed[flip].clone()));
            flip = 1 - flip;
            black_box(compiler.flush())
        })
    });
    group.finish();
}

fn objects_one(text: &str) -> Object {
    objects(text).remove(0)
}

criterion_group!(benches, bench);
criterion_main!(benches);
