//! The policy of one connection, and the decision for each of its requests
//! (SEMANTICS 3.3, 3.4, 4, 10.2).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use crate::http_rules::{
    HeaderEdit, HttpRuleSet, HttpVerdict, RequestView, TargetError, normalize_target,
};

use super::endpoint::{Direction, EndpointPolicy, L7Parser, NamedHttpRuleSet, Reason};

/// `matched` of a request allowed by the wildcard (SEMANTICS 3.4), as `policy explain`
/// prints it.
const WILDCARD: &str = "wildcard";
/// `matched` of a request on a connection this side does not redirect.
const NO_L7: &str = "no L7 rules";

/// `{}`: normalises the target like every rule set, then allows.
static ALLOW_ALL: LazyLock<HttpRuleSet> = LazyLock::new(HttpRuleSet::allow_all);

/// The L3/L4 verdict of a connection for one side (SEMANTICS 10.1).
#[derive(Debug, Clone)]
pub enum L3Verdict {
    /// Allowed without a proxy: no L7 rules on this side (`NoPolicy` or `AllowRule`).
    Allowed {
        /// Why.
        reason: Reason,
        /// The matching entries' origins.
        origins: Vec<Arc<str>>,
    },
    /// Dropped (`DenyRule`, `DefaultDeny` or `EndpointConflict`). The kernel drops these;
    /// a proxy that sees one closes the connection.
    Denied {
        /// Why.
        reason: Reason,
        /// The deny entries' origins (the conflicting resources' names for a conflict).
        origins: Vec<Arc<str>>,
    },
    /// Allowed via the HTTP proxy: every request is decided by [`ConnectionPolicy::evaluate`].
    Redirect(HttpRedirect),
    /// Redirected to a proxy for another protocol (DNS): this connection is not HTTP and
    /// the HTTP proxy must refuse it.
    NotHttp {
        /// The proxy it belongs to.
        parser: L7Parser,
        /// The matching entries' origins.
        origins: Vec<Arc<str>>,
    },
    /// The local IP is not an endpoint of the policy set: the caller fails closed.
    Unknown,
}

impl L3Verdict {
    /// SEMANTICS 10.1 name: `allowed`, `denied` or `allowed-via-proxy`; `unknown` for an
    /// endpoint without policy.
    pub fn name(&self) -> &'static str {
        match self {
            L3Verdict::Allowed { .. } => "allowed",
            L3Verdict::Denied { .. } => "denied",
            L3Verdict::Redirect(_) | L3Verdict::NotHttp { .. } => "allowed-via-proxy",
            L3Verdict::Unknown => "unknown",
        }
    }

    /// The origins that decided (empty for no policy, default deny and unknown).
    pub fn origins(&self) -> &[Arc<str>] {
        match self {
            L3Verdict::Allowed { origins, .. }
            | L3Verdict::Denied { origins, .. }
            | L3Verdict::NotHttp { origins, .. } => origins,
            L3Verdict::Redirect(redirect) => &redirect.origins,
            L3Verdict::Unknown => &[],
        }
    }
}

/// The HTTP rules of a redirected connection: a request passes if `allow_all`, or if any
/// rule set allows it (SEMANTICS 3.3, 3.4).
#[derive(Debug, Clone)]
pub struct HttpRedirect {
    /// The rule sets of every matching entry, each once, in entry order.
    pub rule_sets: Vec<NamedHttpRuleSet>,
    /// Every request passes (still through the proxy, and still normalised).
    pub allow_all: bool,
    /// The matching entries' origins.
    pub origins: Vec<Arc<str>>,
}

/// The policy of one connection, from one side of the flow.
#[derive(Debug, Clone)]
pub struct ConnectionPolicy {
    /// The side of the local endpoint.
    pub direction: Direction,
    /// The local endpoint's address.
    pub local: SocketAddr,
    /// The other end.
    pub peer: SocketAddr,
    /// The peer's identity.
    pub peer_identity: u32,
    /// The destination port the verdict is for.
    pub port: u16,
    /// The local endpoint's policy, if the IP belongs to exactly one endpoint.
    pub endpoint: Option<Arc<EndpointPolicy>>,
    /// The L3/L4 verdict.
    pub verdict: L3Verdict,
}

/// The decision for one request (SEMANTICS 10.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestDecision {
    /// Forward the request.
    Allowed {
        /// Normalised path and query: what was matched, and what must be forwarded
        /// (SEMANTICS 4.6).
        normalized_target: String,
        /// Edits to apply, in order, before forwarding (SEMANTICS 4.8; the Host of an
        /// absolute-form target).
        header_edits: Vec<HeaderEdit>,
        /// Mismatches let through by a mismatch action (secret values redacted).
        logged_mismatches: Vec<String>,
        /// What allowed it: `ORIGIN.rules.http[INDEX]`, `wildcard` (SEMANTICS 3.4), or
        /// `no L7 rules` on a connection this side does not redirect.
        matched: String,
    },
    /// Answer 403 (SEMANTICS 4.10).
    Denied {
        /// Why no rule allowed it.
        reason: String,
    },
    /// Answer 400 and close the connection (SEMANTICS 4.12).
    Rejected {
        /// Always 400.
        status: u16,
        /// What is wrong with the target.
        reason: TargetError,
    },
}

impl RequestDecision {
    /// True for [`RequestDecision::Allowed`].
    pub fn is_allowed(&self) -> bool {
        matches!(self, RequestDecision::Allowed { .. })
    }
}

impl ConnectionPolicy {
    /// The connection may be served by the HTTP proxy: redirected to HTTP, or allowed
    /// without L7 rules on this side.
    pub fn is_http(&self) -> bool {
        matches!(
            self.verdict,
            L3Verdict::Redirect(_) | L3Verdict::Allowed { .. }
        )
    }

    /// Decides one request. The target is always normalised first and a malformed one
    /// is rejected with 400, also when every request is allowed (SEMANTICS 4.6, 4.12).
    /// Then: the wildcard allows (3.4); otherwise the rule sets are tried in order and
    /// the first that allows decides (3.3); none allowing is a 403. On a connection this
    /// side allows without L7 rules, requests pass; on one it denies, refuses as non-HTTP
    /// or does not know, they are denied.
    pub fn evaluate(&self, req: &RequestView<'_>) -> RequestDecision {
        match &self.verdict {
            L3Verdict::Redirect(redirect) => redirect.evaluate(req),
            L3Verdict::Allowed { .. } => allow_all(req, NO_L7),
            L3Verdict::Denied { reason, .. } => RequestDecision::Denied {
                reason: format!("connection denied at L3/L4 ({})", reason.name()),
            },
            L3Verdict::NotHttp { parser, .. } => RequestDecision::Denied {
                reason: format!(
                    "port {} is redirected to the {} proxy, not HTTP",
                    self.port,
                    parser.name()
                ),
            },
            L3Verdict::Unknown => RequestDecision::Denied {
                reason: format!("no policy for local endpoint {}", self.local.ip()),
            },
        }
    }
}

impl HttpRedirect {
    /// See [`ConnectionPolicy::evaluate`].
    pub fn evaluate(&self, req: &RequestView<'_>) -> RequestDecision {
        if self.allow_all {
            return allow_all(req, WILDCARD);
        }
        if self.rule_sets.is_empty() {
            // Redirected with no rules at all: every request is denied, after the same
            // target check every rule set does.
            return match normalize_target(req.method, req.target) {
                Ok(_) => RequestDecision::Denied {
                    reason: "no HTTP rules".to_owned(),
                },
                Err(reason) => RequestDecision::Rejected {
                    status: 400,
                    reason,
                },
            };
        }
        let mut reasons = String::new();
        for named in &self.rule_sets {
            match named.set.evaluate(req) {
                HttpVerdict::Allowed {
                    rule_index,
                    normalized_target,
                    header_edits,
                    logged_mismatches,
                } => {
                    return RequestDecision::Allowed {
                        normalized_target,
                        header_edits,
                        logged_mismatches,
                        matched: format!("{}.rules.http[{rule_index}]", named.origin),
                    };
                }
                // Normalisation does not depend on the rules: every set would say the same.
                HttpVerdict::Rejected { status, reason } => {
                    return RequestDecision::Rejected { status, reason };
                }
                HttpVerdict::Denied { reason } => {
                    if !reasons.is_empty() {
                        reasons.push_str("; ");
                    }
                    let _ = write!(reasons, "{}: {reason}", named.origin);
                }
            }
        }
        RequestDecision::Denied { reason: reasons }
    }
}

/// Allows `req` after normalising its target (or rejects a malformed one).
fn allow_all(req: &RequestView<'_>, matched: &str) -> RequestDecision {
    match ALLOW_ALL.evaluate(req) {
        HttpVerdict::Allowed {
            normalized_target,
            header_edits,
            logged_mismatches,
            ..
        } => RequestDecision::Allowed {
            normalized_target,
            header_edits,
            logged_mismatches,
            matched: matched.to_owned(),
        },
        HttpVerdict::Rejected { status, reason } => RequestDecision::Rejected { status, reason },
        // `{}` matches every request it can normalise.
        HttpVerdict::Denied { reason } => RequestDecision::Denied {
            reason: reason.to_string(),
        },
    }
}
