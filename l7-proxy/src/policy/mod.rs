//! The policy state the proxy enforces, built from the policy stream (SEMANTICS 2, 3, 9, 10).
//!
//! - [`PolicyHandler`] turns the `NetworkPolicy` resources into [`EndpointPolicies`]: every
//!   HTTP rule set compiled once per policy version (and shared between endpoints and
//!   versions while its rules do not change), endpoints indexed by IP. A resource that
//!   cannot be compiled rejects the whole response (NACK): the previous state stays.
//! - [`IdentityHandler`] (in `xds::identity`, shared with the DNS proxy) turns the `Identity` resources into an [`IdentityMap`]: longest
//!   prefix match from peer IP to identity, identity to labels.
//! - [`EndpointPolicies::connection`] decides a connection at L3/L4 for one side of the flow
//!   (the same verdict as the node-agent's `compiler::evaluate`), and
//!   [`ConnectionPolicy::evaluate`] decides each request of a redirected connection.
//!
//! A flow between two local endpoints is decided by both sides (SEMANTICS 10.3):
//! [`EndpointPolicies::flow`] gives the source's egress and the destination's ingress of a
//! connection the egress listener accepted, and [`FlowPolicy`] requires both to allow.

mod connection;
mod convert;
mod endpoint;
mod flow;

#[cfg(test)]
pub(crate) mod tests;

pub use connection::{ConnectionPolicy, HttpRedirect, L3Verdict, RequestDecision};
pub use convert::PolicyHandler;
pub use endpoint::{
    Direction, DirectionRules, EndpointPolicies, EndpointPolicy, L7Parser, L7Rules,
    NamedHttpRuleSet, PolicyEntry, PortRange, Protocol, Reason,
};
pub use flow::{FlowAdmission, FlowDecision, FlowPolicy};
pub use xds::identity::{IdentityHandler, IdentityMap, WORLD};
