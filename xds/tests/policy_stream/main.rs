//! The policy stream end to end: a real tonic server and real clients over a unix socket
//! in a temporary folder (SEMANTICS 9). Waits are bounded (10 s); nothing asserts timing.

mod harness;

mod flows;
mod observe;
mod ordering;
mod restart;
mod robustness;
mod sync;
