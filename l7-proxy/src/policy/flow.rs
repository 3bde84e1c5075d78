//! The policy of a connection the proxy accepted, with both sides of a same-node flow
//! (SEMANTICS 10.3).
//!
//! The datapath sends a flow to one listener only, decided at the first hook: a pod's
//! egress redirect sends its flows to the egress listener even when the destination is a
//! pod of this node whose ingress redirects too. The upstream connection then reaches the
//! destination's `to_pod`, which accepts a redirected ingress only from the ingress proxy
//! (its mark). So for such a flow the egress listener enforces the destination's ingress
//! rules as well ("chained"): each request must be allowed by both sides, and it goes out
//! with the ingress proxy's mark.

use std::net::SocketAddr;

use crate::http_rules::{HeaderEdit, RequestView};

use super::connection::{ConnectionPolicy, L3Verdict, RequestDecision};
use super::endpoint::{Direction, EndpointPolicies};

/// Both sides of one accepted connection, as far as this proxy decides them.
#[derive(Debug, Clone)]
pub struct FlowPolicy {
    /// The side of the listener that accepted the connection.
    pub own: ConnectionPolicy,
    /// For a connection of the egress listener whose original destination is a local
    /// endpoint (one with a `NetworkPolicy`): that endpoint's ingress policy for the
    /// original source. `None` for the ingress listener and for remote destinations.
    pub destination: Option<ConnectionPolicy>,
}

/// Whether the connection may exist, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowAdmission {
    /// Admitted.
    Admitted,
    /// Refused: what the datapath would drop.
    Refused(String),
}

/// The decision for one request, and whether the destination's ingress rules were enforced
/// on it (so it must leave with the ingress proxy's mark).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowDecision {
    /// The decision.
    pub decision: RequestDecision,
    /// The destination's ingress L7 rules decided this request too.
    pub chained: bool,
}

impl EndpointPolicies {
    /// The policy of a connection accepted by the `direction` listener, from `src` to
    /// `dst` (the original addresses), with the identities of both ends.
    pub fn flow(
        &self,
        direction: Direction,
        src: SocketAddr,
        dst: SocketAddr,
        src_identity: u32,
        dst_identity: u32,
    ) -> FlowPolicy {
        match direction {
            Direction::Ingress => FlowPolicy {
                own: self.connection(Direction::Ingress, dst, src, src_identity),
                destination: None,
            },
            Direction::Egress => {
                let destination = self.connection(Direction::Ingress, dst, src, src_identity);
                FlowPolicy {
                    own: self.connection(Direction::Egress, src, dst, dst_identity),
                    destination: (!matches!(destination.verdict, L3Verdict::Unknown))
                        .then_some(destination),
                }
            }
        }
    }
}

impl FlowPolicy {
    /// True when the destination's ingress redirects to the HTTP proxy: its rules are
    /// enforced here and allowed requests leave with the ingress proxy's mark.
    pub fn is_chained(&self) -> bool {
        self.destination
            .as_ref()
            .is_some_and(|d| matches!(d.verdict, L3Verdict::Redirect(_)))
    }

    /// The L3/L4 admission of the connection: the own side's, then the destination's
    /// ingress (a drop there is a drop in the kernel, so the connection is refused).
    pub fn admission(&self) -> FlowAdmission {
        if let Some(reason) = refusal(&self.own) {
            return FlowAdmission::Refused(reason);
        }
        match self.destination.as_ref().and_then(refusal) {
            Some(reason) => FlowAdmission::Refused(format!(
                "ingress of the destination {}: {reason}",
                side_name(self.destination.as_ref())
            )),
            None => FlowAdmission::Admitted,
        }
    }

    /// Decides one request: the own side, and for a chained flow the destination's
    /// ingress as well (both must allow; the first deny decides and is named). The
    /// destination's rules see the request as the source's side would forward it (its
    /// normalised target, its header edits applied), as an ingress proxy would; the header
    /// edits of both sides apply, the source's first.
    pub fn evaluate(&self, request: &RequestView<'_>) -> FlowDecision {
        let own = self.own.evaluate(request);
        let Some(destination) = self.destination.as_ref().filter(|_| self.is_chained()) else {
            return FlowDecision {
                decision: own,
                chained: false,
            };
        };
        let decision = match own {
            RequestDecision::Allowed {
                normalized_target,
                mut header_edits,
                mut logged_mismatches,
                matched,
            } => match destination.evaluate_forwarded(request, &normalized_target, &header_edits) {
                RequestDecision::Allowed {
                    header_edits: their_edits,
                    logged_mismatches: their_mismatches,
                    matched: their_match,
                    ..
                } => {
                    header_edits.extend(their_edits);
                    logged_mismatches.extend(their_mismatches);
                    RequestDecision::Allowed {
                        normalized_target,
                        header_edits,
                        logged_mismatches,
                        matched: format!(
                            "{matched} (egress of {}) + {their_match} (ingress of {})",
                            side_name(Some(&self.own)),
                            side_name(Some(destination))
                        ),
                    }
                }
                RequestDecision::Denied { reason } => RequestDecision::Denied {
                    reason: format!(
                        "denied by the ingress policy of {}: {reason}",
                        side_name(Some(destination))
                    ),
                },
                rejected @ RequestDecision::Rejected { .. } => rejected,
            },
            RequestDecision::Denied { reason } => RequestDecision::Denied {
                reason: format!(
                    "denied by the egress policy of {}: {reason}",
                    side_name(Some(&self.own))
                ),
            },
            rejected @ RequestDecision::Rejected { .. } => rejected,
        };
        FlowDecision {
            decision,
            chained: true,
        }
    }
}

/// The Host and header lines of `request` once the source's side has applied `edits`.
fn edited_headers(
    request: &RequestView<'_>,
    edits: &[HeaderEdit],
) -> (Option<String>, Vec<(String, String)>) {
    let mut headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    for edit in edits {
        edit.apply(&mut headers);
    }
    let host_edited = edits.iter().any(|e| match e {
        HeaderEdit::Add { name, .. }
        | HeaderEdit::Remove { name }
        | HeaderEdit::Set { name, .. } => name.eq_ignore_ascii_case("host"),
    });
    let host = if host_edited {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("host"))
            .map(|(_, v)| v.clone())
    } else {
        request.host.map(str::to_owned)
    };
    (host, headers)
}

impl ConnectionPolicy {
    /// [`ConnectionPolicy::evaluate`] of `request` as another side forwards it: with its
    /// normalised `target` and its header `edits` applied.
    fn evaluate_forwarded(
        &self,
        request: &RequestView<'_>,
        target: &str,
        edits: &[HeaderEdit],
    ) -> RequestDecision {
        let (host, headers) = edited_headers(request, edits);
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        self.evaluate(&RequestView {
            method: request.method,
            target,
            host: host.as_deref(),
            headers: &pairs,
        })
    }
}

/// Why one side refuses the connection, if it does.
pub(crate) fn refusal(connection: &ConnectionPolicy) -> Option<String> {
    match &connection.verdict {
        L3Verdict::Allowed { .. } | L3Verdict::Redirect(_) => None,
        L3Verdict::Denied { reason, .. } => Some(format!("denied at L3/L4 ({})", reason.name())),
        L3Verdict::NotHttp { parser, .. } => Some(format!(
            "port {} is redirected to the {} proxy",
            connection.port,
            parser.name()
        )),
        L3Verdict::Unknown => Some(format!(
            "no policy for local endpoint {}",
            connection.local.ip()
        )),
    }
}

/// `NS/POD` of the side's endpoint, or its IP.
fn side_name(connection: Option<&ConnectionPolicy>) -> String {
    match connection {
        Some(c) => c
            .endpoint
            .as_ref()
            .map(|e| e.name.clone())
            .unwrap_or_else(|| c.local.ip().to_string()),
        None => String::new(),
    }
}
