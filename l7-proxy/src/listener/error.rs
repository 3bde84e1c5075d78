//! Errors of the accept side and of upstream connects.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// What went wrong while listening, accepting, reading a PROXY header or connecting
/// upstream. Every variant names the address it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenerError {
    /// Creating or configuring the listening socket failed.
    #[error("listener on {addr}: setting {option} failed: {source}")]
    ListenSocket {
        addr: SocketAddr,
        /// The operation or socket option, e.g. `IP_TRANSPARENT`, `bind`, `listen`.
        option: &'static str,
        #[source]
        source: io::Error,
    },
    /// `accept(2)` failed on the listening socket.
    #[error("listener on {addr}: accept failed: {source}")]
    Accept {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The accepted socket's own address could not be read (in transparent mode this is the
    /// original destination).
    #[error("connection from {peer}: reading the socket's local address failed: {source}")]
    LocalAddr {
        peer: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The client sent no complete PROXY header within the timeout.
    #[error("connection from {peer}: no complete PROXY header within {timeout:?}")]
    ProxyHeaderTimeout { peer: SocketAddr, timeout: Duration },
    /// The client closed the connection before the PROXY header was complete.
    #[error("connection from {peer}: closed after {received} bytes of PROXY header")]
    ProxyHeaderClosed { peer: SocketAddr, received: usize },
    /// Reading the PROXY header failed at the socket level.
    #[error("connection from {peer}: reading PROXY header failed: {source}")]
    ProxyHeaderIo {
        peer: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The PROXY header is not valid.
    #[error("connection from {peer}: malformed PROXY header: {reason}")]
    ProxyHeaderMalformed { peer: SocketAddr, reason: String },
    /// The PROXY header is (or announces itself as) longer than we accept.
    #[error("connection from {peer}: PROXY {version} header of {len} bytes exceeds limit of {max}")]
    ProxyHeaderTooLarge {
        peer: SocketAddr,
        /// `"v1"` or `"v2"`.
        version: &'static str,
        /// Header length seen or announced so far (a lower bound for v1).
        len: usize,
        max: usize,
    },
    /// The PROXY header is valid but carries addresses we cannot use (UNIX, UNSPEC or
    /// UNKNOWN with the PROXY command, or a non-stream protocol).
    #[error("connection from {peer}: unsupported PROXY header addresses: {family}")]
    ProxyHeaderUnsupported {
        peer: SocketAddr,
        family: &'static str,
    },
    /// Creating or configuring an upstream socket failed.
    #[error("upstream {dst}: setting {option} failed: {source}")]
    UpstreamSocket {
        dst: SocketAddr,
        /// The operation or socket option, e.g. `SO_MARK`, `IP_TRANSPARENT`, `bind`.
        option: &'static str,
        #[source]
        source: io::Error,
    },
    /// The upstream connect failed (refused, unreachable, ...).
    #[error("upstream {dst}: connect failed: {source}")]
    Connect {
        dst: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The upstream connect did not complete within the timeout.
    #[error("upstream {dst}: connect timed out after {timeout:?}")]
    ConnectTimeout { dst: SocketAddr, timeout: Duration },
}
