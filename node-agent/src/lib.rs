//! The per-node control plane: the policy language, identities, the compiler, policy
//! sources and the CLI behind `node-agent`.

pub mod agent;
pub mod cli;
pub mod compiler;
pub mod datapath;
pub mod fqdn;
pub mod identity;
pub mod labels;
pub mod manifest;
pub mod policy;
pub mod source;
pub mod synthetic;
