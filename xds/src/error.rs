//! The one error type of this crate: each variant names what failed and where.

use std::net::SocketAddr;
use std::path::PathBuf;

/// What went wrong serving or reaching the policy stream.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The folder that should hold the unix socket could not be created.
    #[error("cannot create the socket folder {path}: {source}")]
    CreateSocketDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A stale unix socket file could not be removed before binding.
    #[error("cannot remove the stale socket {path}: {source}")]
    RemoveStaleSocket {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Binding the unix socket failed.
    #[error("cannot listen on unix socket {path}: {source}")]
    BindUnix {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Binding the TCP address failed.
    #[error("cannot listen on {addr}: {source}")]
    BindTcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The gRPC server stopped with an error.
    #[error("policy server on {listener} failed: {source}")]
    Serve {
        listener: String,
        source: tonic::transport::Error,
    },
    /// The endpoint is not a usable address (e.g. a malformed `http://host:port`).
    #[error("invalid policy endpoint {endpoint}: {source}")]
    InvalidEndpoint {
        endpoint: String,
        source: tonic::transport::Error,
    },
    /// Connecting to the agent failed.
    #[error("cannot connect to the policy endpoint {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
    /// The agent answered a call with an error status (or the call broke).
    #[error("{rpc} on {endpoint} failed: {status}")]
    Rpc {
        endpoint: String,
        rpc: &'static str,
        // Boxed: a `tonic::Status` is large and would bloat every `Result` of this crate.
        status: Box<tonic::Status>,
    },
}
