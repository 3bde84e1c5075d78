//! Connects the HTTP proxy to the policy stream: every request is decided against the
//! policy and identity map current at that moment (a `watch` of `Arc`s, so an update
//! applies to the next request and a request in flight keeps the version it started with).

use std::sync::Arc;

use xds::client::{FlowReporter, StateWatch};

use super::metrics::Metrics;
use crate::http_rules::RequestView;
use crate::policy::{ConnectionPolicy, EndpointPolicies, IdentityMap, L3Verdict, RequestDecision};
use crate::proxy::{
    Admission, ConnInfo, Decision, Direction, PolicyClose, RequestAuthorizer, RequestOutcome,
};

pub struct XdsAuthorizer {
    pub policies: StateWatch<EndpointPolicies>,
    pub identities: StateWatch<IdentityMap>,
    pub metrics: Arc<Metrics>,
    pub flows: Arc<FlowReporter>,
    /// Ticks after every change of either watch (see `spawn_update_ticker`).
    pub updates: tokio::sync::watch::Receiver<()>,
}

/// One receiver that changes whenever the policies or the identity map do: connections
/// re-check their L3/L4 access on it.
pub fn spawn_update_ticker(
    mut policies: StateWatch<EndpointPolicies>,
    mut identities: StateWatch<IdentityMap>,
) -> tokio::sync::watch::Receiver<()> {
    let (sender, receiver) = tokio::sync::watch::channel(());
    tokio::spawn(async move {
        loop {
            let changed = tokio::select! {
                changed = policies.changed() => changed,
                changed = identities.changed() => changed,
                () = sender.closed() => return,
            };
            if changed.is_err() {
                return;
            }
            sender.send_replace(());
        }
    });
    receiver
}

impl RequestAuthorizer for XdsAuthorizer {
    fn authorize(&self, conn: &ConnInfo, request: &RequestView<'_>) -> Decision {
        let decision = self.decide(conn, request);
        let verdict = match &decision {
            Decision::Allow { .. } => "forwarded",
            Decision::Deny { .. } => "denied",
            Decision::Reject { .. } => "rejected",
        };
        self.metrics.request(conn.direction, verdict);
        decision
    }

    /// Refuses what the datapath would drop. Before the first policy arrives nothing is
    /// refused here: every request is denied instead, and the connection is checked again
    /// when the policy comes.
    fn admit(&self, conn: &ConnInfo) -> Admission {
        let Some(connection) = self.connection(conn) else {
            return Admission::Admitted;
        };
        match &connection.verdict {
            L3Verdict::Allowed { .. } | L3Verdict::Redirect(_) => Admission::Admitted,
            L3Verdict::Denied { reason, .. } => Admission::Refused {
                reason: format!("denied at L3/L4 ({})", reason.name()),
            },
            L3Verdict::NotHttp { parser, .. } => Admission::Refused {
                reason: format!(
                    "port {} is redirected to the {} proxy",
                    connection.port,
                    parser.name()
                ),
            },
            L3Verdict::Unknown => Admission::Refused {
                reason: format!("no policy for local endpoint {}", connection.local.ip()),
            },
        }
    }

    fn policy_updates(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        let mut updates = self.updates.clone();
        updates.mark_unchanged();
        Some(updates)
    }

    fn closed_by_policy(&self, conn: &ConnInfo, when: PolicyClose, _reason: &str) {
        let when = match when {
            PolicyClose::Accept => "accept",
            PolicyClose::Update => "update",
        };
        self.metrics.closed_by_policy(conn.direction, when);
    }

    fn completed(&self, conn: &ConnInfo, outcome: &RequestOutcome<'_>) {
        if let Some(kind) = outcome.upstream_failure {
            self.metrics.upstream_error(kind);
        }
        let policies = self.policies.borrow().clone();
        let identities = self.identities.borrow().clone();
        let records = super::flows::records(
            conn,
            outcome,
            policies.as_ref().map(|p| &p.state),
            identities.as_ref().map(|i| &i.state),
        );
        for record in records {
            // A full queue drops the record (counted by the reporter); never wait here.
            self.flows.report(record);
        }
    }
}

impl XdsAuthorizer {
    /// The connection's policy now; `None` until the first good policy and identity map
    /// have arrived.
    fn connection(&self, conn: &ConnInfo) -> Option<ConnectionPolicy> {
        let policies = self.policies.borrow().clone()?;
        let identities = self.identities.borrow().clone()?;
        let (local, peer) = match conn.direction {
            Direction::Ingress => (conn.original_dst, conn.original_src),
            Direction::Egress => (conn.original_src, conn.original_dst),
        };
        let peer_identity = identities.state.lookup(peer.ip());
        Some(
            policies
                .state
                .connection(conn.direction, local, peer, peer_identity),
        )
    }

    fn decide(&self, conn: &ConnInfo, request: &RequestView<'_>) -> Decision {
        // Fail closed until the first good policy and identity map have arrived.
        let Some(connection) = self.connection(conn) else {
            return Decision::Deny {
                reason: "no policy received from the agent yet".into(),
            };
        };
        match connection.evaluate(request) {
            RequestDecision::Allowed {
                normalized_target,
                header_edits,
                matched,
                ..
            } => Decision::Allow {
                target: normalized_target,
                header_edits,
                rule: matched,
            },
            RequestDecision::Denied { reason } => Decision::Deny { reason },
            RequestDecision::Rejected { reason, .. } => Decision::Reject {
                reason: reason.to_string(),
            },
        }
    }
}
