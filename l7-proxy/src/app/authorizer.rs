//! Connects the HTTP proxy to the policy stream: every request is decided against the
//! policy and identity map current at that moment (a `watch` of `Arc`s, so an update
//! applies to the next request and a request in flight keeps the version it started with).

use std::sync::Arc;

use xds::client::{FlowReporter, StateWatch};

use super::metrics::Metrics;
use crate::http_rules::RequestView;
use crate::policy::{
    EndpointPolicies, FlowAdmission, FlowDecision, FlowPolicy, IdentityMap, RequestDecision,
};
use crate::proxy::{
    Admission, ConnInfo, Decision, PolicyClose, RequestAuthorizer, RequestOutcome, Via,
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

    /// Refuses what the datapath would drop: the own side's L3/L4 verdict, and for a
    /// connection of the egress listener into a local endpoint, that endpoint's ingress
    /// verdict too. Before the first policy arrives nothing is refused here: every request
    /// is denied instead, and the connection is checked again when the policy comes.
    fn admit(&self, conn: &ConnInfo) -> Admission {
        let Some(flow) = self.flow(conn) else {
            return Admission::Admitted;
        };
        match flow.admission() {
            FlowAdmission::Admitted => Admission::Admitted,
            FlowAdmission::Refused(reason) => Admission::Refused { reason },
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
    /// The connection's policy now (both sides of a same-node flow, see
    /// [`EndpointPolicies::flow`]); `None` until the first good policy and identity map
    /// have arrived.
    fn flow(&self, conn: &ConnInfo) -> Option<FlowPolicy> {
        let policies = self.policies.borrow().clone()?;
        let identities = self.identities.borrow().clone()?;
        Some(flow_policy(&policies.state, &identities.state, conn))
    }

    fn decide(&self, conn: &ConnInfo, request: &RequestView<'_>) -> Decision {
        // Fail closed until the first good policy and identity map have arrived.
        let Some(flow) = self.flow(conn) else {
            return Decision::Deny {
                reason: "no policy received from the agent yet".into(),
            };
        };
        decision(&flow, request)
    }
}

/// The policy of `conn` in `policies`, with the identities of both ends from `identities`.
pub(crate) fn flow_policy(
    policies: &EndpointPolicies,
    identities: &IdentityMap,
    conn: &ConnInfo,
) -> FlowPolicy {
    policies.flow(
        conn.direction,
        conn.original_src,
        conn.original_dst,
        identities.lookup(conn.original_src.ip()),
        identities.lookup(conn.original_dst.ip()),
    )
}

/// The proxy's decision for one request of `flow`: a chained one (the destination's
/// ingress rules enforced here too) is forwarded with the ingress listener's upstream.
pub(crate) fn decision(flow: &FlowPolicy, request: &RequestView<'_>) -> Decision {
    let FlowDecision { decision, chained } = flow.evaluate(request);
    match decision {
        RequestDecision::Allowed {
            normalized_target,
            header_edits,
            matched,
            ..
        } => Decision::Allow {
            target: normalized_target,
            header_edits,
            rule: matched,
            via: if chained { Via::Ingress } else { Via::Listener },
        },
        RequestDecision::Denied { reason } => Decision::Deny { reason },
        RequestDecision::Rejected { reason, .. } => Decision::Reject {
            reason: reason.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use xds::client::{Endpoint, FlowReporter, Versioned};

    use super::*;
    use crate::policy::Direction;
    use crate::policy::tests::{
        CLIENT_IP, REMOTE_IP, SERVER_IP, ServerIngress, same_node_identities, same_node_policies,
    };

    fn authorizer(
        server: ServerIngress,
    ) -> (
        XdsAuthorizer,
        tokio::sync::watch::Sender<Option<Arc<Versioned<EndpointPolicies>>>>,
    ) {
        fn versioned<S>(state: S) -> Option<Arc<Versioned<S>>> {
            Some(Arc::new(Versioned {
                version: "1".into(),
                state,
            }))
        }
        let (policies_tx, policies) =
            tokio::sync::watch::channel(versioned(same_node_policies(server)));
        let (_identities_tx, identities) =
            tokio::sync::watch::channel(versioned(same_node_identities()));
        let (_updates_tx, updates) = tokio::sync::watch::channel(());
        let authorizer = XdsAuthorizer {
            policies,
            identities,
            metrics: Arc::new(Metrics::new()),
            flows: Arc::new(FlowReporter::start(
                Endpoint::Unix("/nonexistent/agent.sock".into()),
                "test",
                16,
            )),
            updates,
        };
        (authorizer, policies_tx)
    }

    fn egress_to(ip: &str) -> ConnInfo {
        ConnInfo {
            direction: Direction::Egress,
            original_src: format!("{CLIENT_IP}:40000").parse().expect("addr"),
            original_dst: format!("{ip}:80").parse().expect("addr"),
        }
    }

    fn get(target: &str) -> RequestView<'_> {
        RequestView {
            method: "GET",
            target,
            host: Some("server"),
            headers: &[],
        }
    }

    fn via(decision: &Decision) -> Option<Via> {
        match decision {
            Decision::Allow { via, .. } => Some(*via),
            _ => None,
        }
    }

    // A connection of the egress listener into a local endpoint whose ingress has L7
    // rules: both sides decide, and allowed requests go out with the ingress upstream.
    #[tokio::test]
    async fn chained_flow_uses_the_ingress_upstream() {
        let (authorizer, _policies) = authorizer(ServerIngress::Http);
        let conn = egress_to(SERVER_IP);
        assert_eq!(authorizer.admit(&conn), Admission::Admitted);
        assert_eq!(
            via(&authorizer.authorize(&conn, &get("/public/x"))),
            Some(Via::Ingress)
        );
        let Decision::Deny { reason } = authorizer.authorize(&conn, &get("/egress-only")) else {
            panic!("denied by the server's ingress");
        };
        assert!(
            reason.contains("ingress policy of default/server"),
            "{reason}"
        );
        let Decision::Deny { reason } = authorizer.authorize(&conn, &get("/admin")) else {
            panic!("denied by the client's egress");
        };
        assert!(
            reason.contains("egress policy of default/client"),
            "{reason}"
        );
        // A remote destination: the egress upstream, as before.
        let remote = egress_to(REMOTE_IP);
        assert_eq!(
            via(&authorizer.authorize(&remote, &get("/egress-only"))),
            Some(Via::Listener)
        );
    }

    // No L7 on the destination's ingress: the egress upstream; a destination that denies
    // the source: refused at accept; and an open connection is re-checked on updates.
    #[tokio::test]
    async fn destination_verdict_picks_upstream_and_admission() {
        let (authorizer, policies) = authorizer(ServerIngress::L4);
        let conn = egress_to(SERVER_IP);
        assert_eq!(authorizer.admit(&conn), Admission::Admitted);
        assert_eq!(
            via(&authorizer.authorize(&conn, &get("/egress-only"))),
            Some(Via::Listener)
        );
        // The server's ingress stops allowing the client: the connection's next check
        // (after the update) refuses it.
        policies.send_replace(Some(Arc::new(Versioned {
            version: "2".into(),
            state: same_node_policies(ServerIngress::Denied),
        })));
        let Admission::Refused { reason } = authorizer.admit(&conn) else {
            panic!("refused after the update");
        };
        assert!(
            reason.contains("ingress of the destination default/server"),
            "{reason}"
        );
        // And L7 rules appear on it: admitted again, chained.
        policies.send_replace(Some(Arc::new(Versioned {
            version: "3".into(),
            state: same_node_policies(ServerIngress::Http),
        })));
        assert_eq!(authorizer.admit(&conn), Admission::Admitted);
        assert_eq!(
            via(&authorizer.authorize(&conn, &get("/public/x"))),
            Some(Via::Ingress)
        );
    }
}
