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
mod index;
mod path;
mod rule;
mod shape;
mod spec;

#[cfg(test)]
mod index_tests;
#[cfg(test)]
mod tests;

pub use error::{HttpRuleError, HttpRuleSetError};
pub use headers::HeaderEdit;
pub use path::{NormalizedTarget, TargetError, normalize_target};
pub use rule::{CompiledHttpRule, REGEX_SIZE_LIMIT, RuleFailure};
pub use spec::{HeaderMatchSpec, HttpRuleSpec, MismatchAction, SecretRef};

use std::fmt;

use index::RuleIndex;

/// Sets with more rules than this get a path index ([`RuleIndex`]); below, trying each
/// rule in turn is as fast and needs no extra memory.
const INDEX_MIN_RULES: usize = 9;

/// A denial explains at most this many rules (the first ones), and counts the others:
/// explaining all 10k rules of a large set would cost more than the decision, on the
/// path that denied traffic takes.
pub const MAX_EXPLAINED_RULES: usize = 16;

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
    /// No rule matched: the first unmet condition of each of the first
    /// [`MAX_EXPLAINED_RULES`] rules, in rule order.
    NoRuleMatched {
        /// One entry per explained rule.
        failures: Vec<RuleFailure>,
        /// How many rules after those were not explained (none of them matched either).
        omitted: usize,
    },
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::NoRules => f.write_str("no HTTP rules"),
            DenyReason::NoRuleMatched { failures, omitted } => {
                f.write_str("no HTTP rule matched")?;
                for (i, failure) in failures.iter().enumerate() {
                    f.write_str(if i == 0 { ": " } else { "; " })?;
                    write!(f, "{failure}")?;
                }
                if *omitted > 0 {
                    f.write_str(if failures.is_empty() { ": " } else { "; " })?;
                    let rules = if *omitted == 1 { "rule" } else { "rules" };
                    write!(f, "{omitted} more {rules} not explained")?;
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
    /// Present for sets of at least [`INDEX_MIN_RULES`] rules.
    index: Option<RuleIndex>,
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
        let index = (rules.len() >= INDEX_MIN_RULES).then(|| RuleIndex::build(&rules));
        HttpRuleSet {
            rules,
            has_actions,
            index,
        }
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
        self.evaluate_with(req, self.index.as_ref())
    }

    /// [`HttpRuleSet::evaluate`] trying every rule in turn, whatever the size of the set:
    /// the plain implementation that tests compare the index against.
    #[cfg(test)]
    pub(crate) fn evaluate_linear(&self, req: &RequestView<'_>) -> HttpVerdict {
        self.evaluate_with(req, None)
    }

    /// Decides one request; `index` only narrows which rules are tried, never the result.
    fn evaluate_with(&self, req: &RequestView<'_>, index: Option<&RuleIndex>) -> HttpVerdict {
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
            let first = match index {
                Some(index) => index.first_match(&self.rules, method, path, host, req.headers),
                None => self
                    .rules
                    .iter()
                    .position(|rule| rule.first_unmet(method, path, host, req.headers).is_none()),
            };
            return match first {
                Some(rule_index) => HttpVerdict::Allowed {
                    rule_index,
                    normalized_target: target.path_and_query,
                    header_edits,
                    logged_mismatches: Vec::new(),
                },
                // Denied: only now spend time on explaining rules.
                None => HttpVerdict::Denied {
                    reason: self.explain_denial(method, path, host, req.headers),
                },
            };
        }

        // SEMANTICS 4.8 with Cilium's order: every rule whose conditions hold runs its
        // mismatch actions on the request as edited so far. Edits touch headers only, so
        // a rule whose path cannot match never will: the index may skip it.
        let mut working: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        let mut logged_mismatches = Vec::new();
        let mut allowed_by = None;
        let candidates = index.map(|index| index.candidates(path));
        let order: Box<dyn Iterator<Item = usize>> = match &candidates {
            Some(candidates) => Box::new(candidates.iter().copied()),
            None => Box::new(0..self.rules.len()),
        };
        for i in order {
            let Some(rule) = self.rules.get(i) else {
                continue;
            };
            if rule.first_unmet(method, path, host, &working).is_some() {
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
            // No rule matched, so no action ran and the headers are as received: the
            // explanation sees what each rule saw.
            None => HttpVerdict::Denied {
                reason: self.explain_denial(method, path, host, req.headers),
            },
        }
    }

    /// The first unmet condition of each of the first [`MAX_EXPLAINED_RULES`] rules, for a
    /// request that no rule matches.
    fn explain_denial<N: AsRef<str>, V: AsRef<str>>(
        &self,
        method: &str,
        path: &str,
        host: Option<&str>,
        headers: &[(N, V)],
    ) -> DenyReason {
        let explained = self.rules.len().min(MAX_EXPLAINED_RULES);
        let failures = self
            .rules
            .iter()
            .take(explained)
            .enumerate()
            .filter_map(|(i, rule)| {
                let unmet = rule.first_unmet(method, path, host, headers)?;
                let (field, detail) = rule.explain(unmet, method, path, host, headers);
                Some(RuleFailure {
                    rule_index: i,
                    field,
                    detail,
                })
            })
            .collect();
        DenyReason::NoRuleMatched {
            failures,
            omitted: self.rules.len() - explained,
        }
    }
}
