//! Table-driven checks of the compiled verdicts against SEMANTICS.md, sections 1-3 and 5-6.
//! Each table names the section it checks: `selection` for section 1 (who is selected),
//! `merging` for sections 2, 3, 5, 6 and incremental recompilation. `compiler` and `key`
//! also serve the datapath's tests, which start from the same world.

mod fqdn;
mod merging;
mod selection;
mod visibility;

use std::net::IpAddr;

use super::evaluate::{Reason, Verdict, evaluate};
use super::*;
use crate::manifest::parse_str;
use crate::policy::Protocol::{self, Sctp, Tcp, Udp};

/// Pods in two namespaces; `prod` and `dev` carry a `team` label.
pub(super) const WORLD: &str = r#"
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

pub(crate) fn compiler(policies: &str) -> Compiler {
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

pub(crate) fn key(text: &str) -> EndpointKey {
    EndpointKey::parse(text).expect("NS/NAME")
}

/// A peer: a pod (`ns/name`), an IP, or a reserved identity (`#N`).
pub(super) fn peer_identity(c: &Compiler, peer: &str) -> Identity {
    if let Some(n) = peer.strip_prefix('#') {
        return n.parse().expect("identity number");
    }
    if let Ok(ip) = peer.parse::<IpAddr>() {
        return c.identity_of_ip(ip);
    }
    c.pod(&key(peer)).expect("pod exists").identity
}

pub(super) fn check(
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

pub(super) fn http(
    c: &Compiler,
    endpoint: &str,
    peer: &str,
    port: u16,
    method: &str,
    path: &str,
) -> bool {
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

pub(super) const A: Verdict = Verdict::Allowed;
pub(super) const D: Verdict = Verdict::Denied;
pub(super) const P: Verdict = Verdict::AllowedViaProxy;
pub(super) const IN: Direction = Direction::Ingress;
pub(super) const OUT: Direction = Direction::Egress;

pub(super) type Case<'a> = (&'a str, Direction, &'a str, &'a str, Protocol, u16, Verdict);

pub(super) fn run_cases(c: &Compiler, cases: &[Case<'_>]) {
    for (name, direction, endpoint, peer, proto, port, want) in cases {
        let (got, reason) = check(c, *direction, endpoint, peer, *proto, *port);
        assert_eq!(
            got, *want,
            "{name}: {endpoint} {direction:?} peer {peer} {port}/{proto} ({reason:?})"
        );
    }
}
