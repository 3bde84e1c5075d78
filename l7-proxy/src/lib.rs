//! Per-node transparent HTTP proxy enforcing CiliumNetworkPolicy HTTP rules. The HTTP rule
//! matcher (`http_rules`, SEMANTICS 4) is shared with the node-agent's validator and
//! `policy explain`.

pub mod app;
pub mod fuzzing;
pub mod http_rules;
pub mod listener;
pub mod policy;
pub mod proxy;

pub use http_rules::{
    CompiledHttpRule, DenyReason, HeaderEdit, HeaderMatchSpec, HttpRuleError, HttpRuleSet,
    HttpRuleSetError, HttpRuleSpec, HttpVerdict, MismatchAction, NormalizedTarget, RequestView,
    RuleFailure, SecretRef, TargetError, normalize_target,
};
#[cfg(test)]
mod test_rng;
