//! HTTP rule matching (SEMANTICS 4).
//!
//! [`HttpRuleSet`] holds the rules of one (peer, port), compiled once per policy version;
//! [`HttpRuleSet::evaluate`] decides one request. The proxy uses it per request and the
//! node-agent uses it for validation and `policy explain`.
//!
//! Evaluation follows Cilium's proxy:
//! - the target is normalised first; a target that cannot be normalised unambiguously is
//!   [`HttpVerdict::Rejected`] with 400 whatever the rules (SEMANTICS 4.6, 4.12);
//! - a request is allowed if any rule matches (OR), and every field of a rule must match
//!   (AND) (SEMANTICS 3.3); `{}` matches everything (4.9); no rules deny everything;
//! - when no rule has a `headerMatches` mismatch action, the first matching rule decides;
//! - otherwise every rule is evaluated in order, and each rule whose conditions hold runs
//!   its actions on the request as edited so far, so later rules see earlier edits and
//!   all edits are returned (Cilium evaluates all rules "to run all the header actions").
//!
//! Where we knowingly differ: rules run in policy order (Cilium sorts them first, which
//! changes only the reported `rule_index` and the order of edits); pseudo-header names
//! (`:authority`) in `headers` are compile errors rather than never-matching entries; and
//! targets an upstream could read differently are refused with 400 (see [`TargetError`]).
//! Secret values come from the caller ([`HttpRuleSet::compile_with_secrets`]); without
//! them a secret-sourced match falls back to its inline `value`, and with no fallback the
//! rule never matches, as in Cilium.

mod error;
mod headers;
mod path;
mod rule;
mod spec;

#[cfg(test)]
mod tests;

pub use error::{HttpRuleError, HttpRuleSetError};
pub use headers::HeaderEdit;
pub use path::{NormalizedTarget, TargetError, normalize_target};
pub use rule::{CompiledHttpRule, REGEX_SIZE_LIMIT, RuleFailure};
pub use spec::{HeaderMatchSpec, HttpRuleSpec, MismatchAction, SecretRef};

use std::fmt;

/// The request as the matcher sees it.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Method as sent (case-sensitive).
    pub method: &'a str,
    /// Request target as received, query included, before normalisation.
    pub target: &'a str,
    /// Host header (HTTP/1) or `:authority` (HTTP/2) as sent, port included.
    pub host: Option<&'a str>,
    /// Header (name, value) pairs in arrival order, values with surrounding whitespace
    /// already trimmed by the parser.
    pub headers: &'a [(&'a str, &'a str)],
}

/// The decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpVerdict {
    /// Forward the request.
    Allowed {
        /// The first rule that allowed it.
        rule_index: usize,
        /// Normalised path and query: what was matched, and what must be forwarded.
        normalized_target: String,
        /// Edits to apply, in order, before forwarding.
        header_edits: Vec<HeaderEdit>,
        /// Mismatches let through by a mismatch action, as `name: expected E, got G
        /// (ACTION)`, secret-sourced values written `[redacted]`. Values of ordinary
        /// headers appear as received; flow records redact sensitive names (SEMANTICS 8.6).
        logged_mismatches: Vec<String>,
    },
    /// Answer 403 (SEMANTICS 4.10).
    Denied {
        /// Why no rule matched.
        reason: DenyReason,
    },
    /// Answer 400 and close the connection (SEMANTICS 4.12).
    Rejected {
        /// Always 400.
        status: u16,
        /// What is wrong with the target.
        reason: TargetError,
    },
}

impl HttpVerdict {
    /// True for [`HttpVerdict::Allowed`].
    pub fn is_allowed(&self) -> bool {
        matches!(self, HttpVerdict::Allowed { .. })
    }
}

/// Why a request was denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// The set has no rules. Callers decide wildcarding (SEMANTICS 3.4) before this point.
    NoRules,
    /// No rule matched: the first unmet condition of each rule, in rule order.
    NoRuleMatched {
        /// One entry per rule.
        failures: Vec<RuleFailure>,
    },
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::NoRules => f.write_str("no HTTP rules"),
            DenyReason::NoRuleMatched { failures } => {
                f.write_str("no HTTP rule matched")?;
                for (i, failure) in failures.iter().enumerate() {
                    f.write_str(if i == 0 { ": " } else { "; " })?;
                    write!(f, "{failure}")?;
                }
                Ok(())
            }
        }
    }
}

/// The HTTP rules of one (peer, port): a request is allowed if any rule matches.
#[derive(Debug, Clone, Default)]
pub struct HttpRuleSet {
    rules: Vec<CompiledHttpRule>,
    has_actions: bool,
}

impl HttpRuleSet {
    /// Compiles every rule; the error names the first failing rule by index.
    pub fn compile(specs: &[HttpRuleSpec]) -> Result<Self, HttpRuleSetError> {
        Self::compile_with_secrets(specs, &|_| None)
    }

    /// As [`HttpRuleSet::compile`], with access to secret values (see
    /// [`CompiledHttpRule::compile_with_secrets`]).
    pub fn compile_with_secrets(
        specs: &[HttpRuleSpec],
        secrets: &dyn Fn(&SecretRef) -> Option<String>,
    ) -> Result<Self, HttpRuleSetError> {
        let rules = specs
            .iter()
            .enumerate()
            .map(|(index, spec)| {
                CompiledHttpRule::compile_with_secrets(spec, secrets)
                    .map_err(|error| HttpRuleSetError { index, error })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_rules(rules))
    }

    /// A set of already compiled rules.
    pub fn from_rules(rules: Vec<CompiledHttpRule>) -> Self {
        let has_actions = rules.iter().any(CompiledHttpRule::has_header_actions);
        HttpRuleSet { rules, has_actions }
    }

    /// `http: [{}]`: every request allowed, through the proxy (SEMANTICS 3.4, 3.5).
    pub fn allow_all() -> Self {
        Self::from_rules(vec![CompiledHttpRule::default()])
    }

    /// The compiled rules, in policy order.
    pub fn rules(&self) -> &[CompiledHttpRule] {
        &self.rules
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when there are no rules (everything is denied).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Decides one request.
    pub fn evaluate(&self, req: &RequestView<'_>) -> HttpVerdict {
        // SEMANTICS 4.6, 4.12: normalise first; what cannot be normalised is refused.
        let target = match normalize_target(req.method, req.target) {
            Ok(target) => target,
            Err(reason) => {
                return HttpVerdict::Rejected {
                    status: 400,
                    reason,
                };
            }
        };
        if self.rules.is_empty() {
            return HttpVerdict::Denied {
                reason: DenyReason::NoRules,
            };
        }
        // RFC 9112 3.2.2: an absolute-form target's authority replaces the Host header,
        // for matching (as Envoy's `:authority`) and for the upstream (see below).
        let host = target.authority.as_deref().or(req.host);
        let path = target.path_and_query.as_str();
        let mut header_edits = Vec::new();
        if let Some(authority) = &target.authority
            && req.host != Some(authority.as_str())
        {
            header_edits.push(HeaderEdit::Set {
                name: "host".to_owned(),
                value: authority.clone(),
                sensitive: false,
            });
        }
        let method = req.method;

        if !self.has_actions {
            // No side effects anywhere: the first matching rule decides (SEMANTICS 3.3).
            let first = self
                .rules
                .iter()
                .position(|rule| rule.first_unmet(method, path, host, req.headers).is_none());
            return match first {
                Some(rule_index) => HttpVerdict::Allowed {
                    rule_index,
                    normalized_target: target.path_and_query,
                    header_edits,
                    logged_mismatches: Vec::new(),
                },
                None => {
                    // Denied: only now spend time on explaining each rule.
                    let failures = self
                        .rules
                        .iter()
                        .enumerate()
                        .filter_map(|(i, rule)| {
                            let unmet = rule.first_unmet(method, path, host, req.headers)?;
                            let (field, detail) =
                                rule.explain(unmet, method, path, host, req.headers);
                            Some(RuleFailure {
                                rule_index: i,
                                field,
                                detail,
                            })
                        })
                        .collect();
                    HttpVerdict::Denied {
                        reason: DenyReason::NoRuleMatched { failures },
                    }
                }
            };
        }

        // SEMANTICS 4.8 with Cilium's order: every rule whose conditions hold runs its
        // mismatch actions on the request as edited so far.
        let mut working: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        let mut failures = Vec::new();
        let mut logged_mismatches = Vec::new();
        let mut allowed_by = None;
        for (i, rule) in self.rules.iter().enumerate() {
            if let Some(unmet) = rule.first_unmet(method, path, host, &working) {
                if allowed_by.is_none() {
                    let (field, detail) = rule.explain(unmet, method, path, host, &working);
                    failures.push(RuleFailure {
                        rule_index: i,
                        field,
                        detail,
                    });
                }
                continue;
            }
            for action in rule.actions() {
                let outcome = action.run(&working);
                if let Some(edit) = outcome.edit {
                    edit.apply(&mut working);
                    header_edits.push(edit);
                }
                logged_mismatches.extend(outcome.logged);
            }
            allowed_by.get_or_insert(i);
        }
        match allowed_by {
            Some(rule_index) => HttpVerdict::Allowed {
                rule_index,
                normalized_target: target.path_and_query,
                header_edits,
                logged_mismatches,
            },
            None => HttpVerdict::Denied {
                reason: DenyReason::NoRuleMatched { failures },
            },
        }
    }
}
