//! Connects the HTTP proxy to the policy stream: every request is decided against the
//! policy and identity map current at that moment (a `watch` of `Arc`s, so an update
//! applies to the next request and a request in flight keeps the version it started with).

use std::sync::Arc;

use xds::client::{FlowReporter, StateWatch};

use super::metrics::Metrics;
use crate::http_rules::RequestView;
use crate::policy::{EndpointPolicies, IdentityMap, RequestDecision};
use crate::proxy::{ConnInfo, Decision, Direction, RequestAuthorizer, RequestOutcome};

pub struct XdsAuthorizer {
    pub policies: StateWatch<EndpointPolicies>,
    pub identities: StateWatch<IdentityMap>,
    pub metrics: Arc<Metrics>,
    pub flows: Arc<FlowReporter>,
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
    fn decide(&self, conn: &ConnInfo, request: &RequestView<'_>) -> Decision {
        let policies = self.policies.borrow().clone();
        let identities = self.identities.borrow().clone();
        // Fail closed until the first good policy and identity map have arrived.
        let (Some(policies), Some(identities)) = (policies, identities) else {
            return Decision::Deny {
                reason: "no policy received from the agent yet".into(),
            };
        };
        let (local, peer) = match conn.direction {
            Direction::Ingress => (conn.original_dst, conn.original_src),
            Direction::Egress => (conn.original_src, conn.original_dst),
        };
        let peer_identity = identities.state.lookup(peer.ip());
        let connection = policies
            .state
            .connection(conn.direction, local, peer, peer_identity);
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
