//! The policy language: the CNP/CCNP wire format (`api`), selectors, and the validated
//! internal rules (`rule`) that the compiler consumes.

pub mod api;
mod convert;
mod convert_ports;
pub mod rule;
pub mod selector;

use std::fmt;
use std::sync::Arc;

pub use convert::{ENTITIES, convert_rules, entity_selectors};
pub use rule::{Direction, L7Spec, Peer, PeerRule, PortSpec, Protocol, Rule};
pub use selector::Selector;

/// One problem in one field of an object, named by its path (`spec.ingress[0].toPorts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    Namespaced,
    Clusterwide,
}

impl PolicyKind {
    pub fn kind_name(self) -> &'static str {
        match self {
            PolicyKind::Namespaced => "CiliumNetworkPolicy",
            PolicyKind::Clusterwide => "CiliumClusterwideNetworkPolicy",
        }
    }
}

/// Identifies a policy object the way `kubectl` does: kind, namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub kind: PolicyKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{}",
            self.kind.kind_name(),
            self.namespace.as_deref().unwrap_or("-"),
            self.name
        )
    }
}

/// A validated policy object: all of its rules, ready to compile.
#[derive(Debug)]
pub struct Policy {
    pub key: PolicyKey,
    pub rules: Vec<Rule>,
}

pub type PolicyRef = Arc<Policy>;

#[cfg(test)]
mod validation_tests;
