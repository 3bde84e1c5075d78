//! The kernel datapath (issue 5): the BPF programs of `bpf/` that enforce L3/L4 policy on
//! each local endpoint's host-side device and redirect policy-selected flows to the proxies.
//!
//! For now this holds [`abi`], the Rust mirrors of the map keys, values and events defined
//! in `bpf/datapath.h`, and [`entries`], which turns compiled policy into map entries;
//! loading, attaching and programming the maps build on them.

pub mod abi;
pub mod entries;
