//! Connecting to the original destination on behalf of a client.

use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

use super::ListenerError;

/// How to open an upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamOptions {
    /// `SO_MARK` for the socket, so the datapath recognises traffic that has already been
    /// through the proxy and does not redirect it again. Needs `CAP_NET_ADMIN`.
    pub mark: Option<u32>,
    /// Upper bound on the TCP handshake.
    pub timeout: Duration,
    /// Connect *from* this address (usually the client's original source), binding it with
    /// `IP_TRANSPARENT`/`IPV6_TRANSPARENT` so that a non-local address is allowed. Off by
    /// default: return traffic to a foreign source address only reaches the proxy with
    /// matching routing, which the datapath must set up (`--upstream-source original`).
    pub transparent_source: Option<SocketAddr>,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        Self {
            mark: None,
            timeout: Duration::from_secs(10),
            transparent_source: None,
        }
    }
}

/// Connects to `dst` with `SO_MARK` = `mark` (when given), failing after `timeout`.
pub async fn connect_upstream(
    dst: SocketAddr,
    mark: Option<u32>,
    timeout: Duration,
) -> Result<TcpStream, ListenerError> {
    connect_upstream_with(
        dst,
        &UpstreamOptions {
            mark,
            timeout,
            transparent_source: None,
        },
    )
    .await
}

/// Connects to `dst` as `options` say.
pub async fn connect_upstream_with(
    dst: SocketAddr,
    options: &UpstreamOptions,
) -> Result<TcpStream, ListenerError> {
    let socket = upstream_socket(dst, options)?;
    match tokio::time::timeout(options.timeout, socket.connect(dst)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(ListenerError::Connect { dst, source }),
        Err(_) => Err(ListenerError::ConnectTimeout {
            dst,
            timeout: options.timeout,
        }),
    }
}

/// The socket `connect_upstream_with` connects: mark and source set, not yet connected.
pub(super) fn upstream_socket(
    dst: SocketAddr,
    options: &UpstreamOptions,
) -> Result<TcpSocket, ListenerError> {
    let fail = |option: &'static str| {
        move |source: std::io::Error| ListenerError::UpstreamSocket {
            dst,
            option,
            source,
        }
    };
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))
        .map_err(fail("socket"))?;
    if let Some(mark) = options.mark {
        socket.set_mark(mark).map_err(fail("SO_MARK"))?;
    }
    if let Some(source) = options.transparent_source {
        if source.is_ipv4() != dst.is_ipv4() {
            return Err(fail("bind")(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("transparent source {source} is not in the destination's address family"),
            )));
        }
        match source {
            SocketAddr::V4(_) => socket
                .set_ip_transparent_v4(true)
                .map_err(fail("IP_TRANSPARENT"))?,
            SocketAddr::V6(_) => socket
                .set_ip_transparent_v6(true)
                .map_err(fail("IPV6_TRANSPARENT"))?,
        }
        // The client may still hold a socket with the same address elsewhere.
        socket
            .set_reuse_address(true)
            .map_err(fail("SO_REUSEADDR"))?;
        socket.bind(&source.into()).map_err(fail("bind"))?;
    }
    socket.set_nonblocking(true).map_err(fail("O_NONBLOCK"))?;
    Ok(TcpSocket::from_std_stream(socket.into()))
}
