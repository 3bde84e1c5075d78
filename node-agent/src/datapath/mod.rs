//! The kernel datapath (issue 5): the BPF programs of `bpf/datapath.c` that enforce L3/L4
//! policy on each local endpoint's host-side device and redirect policy-selected flows to
//! the proxies.
//!
//! - [`abi`]: Rust mirrors of the map keys, values and events of `bpf/datapath.h`;
//!   [`bytes`] writes and reads them as the kernel stores them.
//! - [`entries`]: compiled policy -> map entries, and diffs between two sets of entries.
//! - [`loader`]: loads the object with aya, pins the maps, attaches programs.
//! - [`system`]: the node's devices, routes and addresses; the proxy redirect's routing.
//! - [`controller`]: keeps devices and maps in step with the compiler; `incremental`:
//!   the fast path for FQDN answers (only what one flush changed, no device work).

pub mod abi;
pub mod bytes;
pub mod controller;
pub mod entries;
mod incremental;
pub mod loader;
pub mod scanner;
pub mod system;

pub use controller::{Datapath, DatapathConfig, DatapathError, ReconcileReport};
pub use incremental::IncrementalReport;
