//! The xDS-style policy stream between `node-agent` and the proxies.
//!
//! This crate holds the wire protocol (`.proto` files, generated types) and the generic
//! server and client. It is filled in by the policy-stream issue; until then it only
//! reserves its place in the workspace so the layout of DESIGN.md holds.
