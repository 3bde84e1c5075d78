//! The verdict of one flow against one direction of a compiled policy (SEMANTICS 2, 3, 10).
//! This is the reference the datapath and the proxies must agree with; `policy explain`
//! prints it.

use serde::Serialize;

use super::endpoint::{DirectionPolicy, PolicyEntry};
use crate::identity::Identity;
use crate::policy::rule::L7Parser;
use crate::policy::{L7Spec, Protocol};

/// SEMANTICS 10.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Allowed,
    Denied,
    AllowedViaProxy,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
            Verdict::AllowedViaProxy => "allowed-via-proxy",
        }
    }
}

/// Why a direction reached its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// No rule selecting the endpoint speaks about this direction.
    NoPolicy,
    /// A deny rule matched (SEMANTICS 2.3).
    DenyRule,
    /// An allow rule matched.
    AllowRule,
    /// Nothing matched and the direction is default deny (SEMANTICS 2.1).
    DefaultDeny,
}

/// The decision of one direction, with the entries that made it.
#[derive(Debug, Clone)]
pub struct DirectionVerdict<'a> {
    pub verdict: Verdict,
    pub reason: Reason,
    pub deciding: Vec<&'a PolicyEntry>,
    /// The L7 rules that apply when redirected: allowed if `allow_all` or any rule allows.
    pub l7: Option<L7Rules<'a>>,
}

#[derive(Debug, Clone)]
pub struct L7Rules<'a> {
    pub parser: L7Parser,
    pub allow_all: bool,
    pub rules: Vec<&'a (String, L7Spec)>,
}

pub fn evaluate(
    policy: &DirectionPolicy,
    peer: Identity,
    protocol: Protocol,
    port: u16,
) -> DirectionVerdict<'_> {
    if !policy.enforced {
        return DirectionVerdict {
            verdict: Verdict::Allowed,
            reason: Reason::NoPolicy,
            deciding: vec![],
            l7: None,
        };
    }
    let matching: Vec<&PolicyEntry> = policy
        .entries
        .iter()
        .filter(|e| e.port.matches(protocol, port) && e.selection.contains(peer))
        .collect();
    // SEMANTICS 2.3: a deny beats every allow, L7 or not.
    let denies: Vec<&PolicyEntry> = matching.iter().copied().filter(|e| e.deny).collect();
    if !denies.is_empty() {
        return DirectionVerdict {
            verdict: Verdict::Denied,
            reason: Reason::DenyRule,
            deciding: denies,
            l7: None,
        };
    }
    if matching.is_empty() {
        return DirectionVerdict {
            verdict: Verdict::Denied,
            reason: Reason::DefaultDeny,
            deciding: vec![],
            l7: None,
        };
    }
    let with_l7: Vec<&PolicyEntry> = matching
        .iter()
        .copied()
        .filter(|e| e.l7.is_some())
        .collect();
    if with_l7.is_empty() {
        return DirectionVerdict {
            verdict: Verdict::Allowed,
            reason: Reason::AllowRule,
            deciding: matching,
            l7: None,
        };
    }
    // SEMANTICS 3.3: the L7 rules of every matching entry are ORed; 3.4: a matching allow
    // without L7 makes the peer's requests all pass (still through the proxy).
    let mut l7 = L7Rules {
        parser: with_l7[0]
            .l7
            .as_ref()
            .map(|l| l.parser)
            .unwrap_or(L7Parser::Http),
        allow_all: matching.iter().any(|e| e.l7.is_none()),
        rules: Vec::new(),
    };
    for entry in &with_l7 {
        if let Some(entry_l7) = &entry.l7 {
            l7.allow_all |= entry_l7.allow_all;
            l7.rules.extend(entry_l7.rules.iter());
        }
    }
    DirectionVerdict {
        verdict: Verdict::AllowedViaProxy,
        reason: Reason::AllowRule,
        deciding: matching,
        l7: Some(l7),
    }
}

/// The L7 decision for one request or query, with the rule that allowed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct L7Decision {
    pub allowed: bool,
    /// `PATH` of the `toPorts` item (and index) whose rule allowed it, or `wildcard`.
    pub matched: Option<String>,
    /// Why the request could not be evaluated at all (malformed input).
    pub error: Option<String>,
}

/// What one rule set says about a request.
enum RuleSetAnswer {
    /// Allowed by the rule at this path suffix (`http[0]`, `dns[2]`).
    Allowed(String),
    /// The request cannot be evaluated at all (a malformed HTTP target: 400).
    Rejected(String),
    NoMatch,
}

impl L7Rules<'_> {
    pub fn evaluate_http(&self, request: &l7_proxy::RequestView<'_>) -> L7Decision {
        self.decide(|spec| match spec {
            L7Spec::Http { compiled, .. } => match compiled.evaluate(request) {
                l7_proxy::HttpVerdict::Allowed { rule_index, .. } => {
                    RuleSetAnswer::Allowed(format!("http[{rule_index}]"))
                }
                l7_proxy::HttpVerdict::Rejected { status, reason } => {
                    RuleSetAnswer::Rejected(format!("{status}: {reason}"))
                }
                l7_proxy::HttpVerdict::Denied { .. } => RuleSetAnswer::NoMatch,
            },
            L7Spec::Dns { .. } => RuleSetAnswer::NoMatch,
        })
    }

    pub fn evaluate_dns(&self, name: &str) -> L7Decision {
        self.decide(|spec| match spec {
            L7Spec::Dns { compiled, .. } => match compiled.matches(name) {
                Some(index) => RuleSetAnswer::Allowed(format!("dns[{index}]")),
                None => RuleSetAnswer::NoMatch,
            },
            L7Spec::Http { .. } => RuleSetAnswer::NoMatch,
        })
    }

    /// SEMANTICS 3.3: allowed if any rule set allows; 3.4: the wildcard allows everything.
    fn decide(&self, mut answer: impl FnMut(&L7Spec) -> RuleSetAnswer) -> L7Decision {
        let decision = |allowed, matched, error| L7Decision {
            allowed,
            matched,
            error,
        };
        if self.allow_all {
            return decision(true, Some("wildcard".into()), None);
        }
        for (path, spec) in &self.rules {
            match answer(spec) {
                RuleSetAnswer::Allowed(rule) => {
                    return decision(true, Some(format!("{path}.rules.{rule}")), None);
                }
                RuleSetAnswer::Rejected(error) => return decision(false, None, Some(error)),
                RuleSetAnswer::NoMatch => {}
            }
        }
        decision(false, None, None)
    }
}
