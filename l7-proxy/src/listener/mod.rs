//! The accept side of the HTTP proxy: listening sockets, the original addresses of an
//! accepted connection, and upstream connects.
//!
//! Two ways to learn a connection's original source and destination:
//! - [`ListenerMode::Transparent`]: the datapath steers pod traffic to a listener bound with
//!   `IP_TRANSPARENT` (DESIGN "Datapath mechanics"); the accepted socket's local address is
//!   the original destination and its peer the original source.
//! - [`ListenerMode::ProxyProtocol`]: a PROXY protocol v1 or v2 header precedes the data.
//!
//! Accepting is split from the handshake so that an accept loop never waits on a slow
//! client: [`Listener::accept`] only accepts, and [`Handshaker::handshake`] (run in a task
//! per connection; [`Listener::serve`] does that) reads the PROXY header under a timeout.
//!
//! Upstream connections ([`connect_upstream`]) carry a socket mark so that the datapath does
//! not redirect the proxy's own traffic back to it.

mod error;
mod prefixed;
mod proxy_protocol;
mod upstream;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

pub use error::ListenerError;
pub use prefixed::PrefixedStream;
pub use proxy_protocol::{MAX_V1_HEADER_LEN, MAX_V2_HEADER_LEN};
pub use upstream::{UpstreamOptions, connect_upstream, connect_upstream_with};

use proxy_protocol::ProxyHeader;

/// `listen(2)` backlog of the listening socket.
pub const LISTEN_BACKLOG: i32 = 1024;

/// How a listener learns a connection's original addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerMode {
    /// The socket is bound with `IP_TRANSPARENT`/`IPV6_TRANSPARENT`; an accepted socket's
    /// local address is the original destination. Binding needs `CAP_NET_ADMIN`.
    Transparent,
    /// Each connection starts with a PROXY protocol v1 or v2 header.
    ProxyProtocol,
}

/// Where and how to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    pub mode: ListenerMode,
    /// How long a client has to send its complete PROXY header (ignored in transparent
    /// mode).
    pub proxy_header_timeout: Duration,
}

/// An accepted connection with its original source and destination.
#[derive(Debug)]
pub struct Accepted {
    /// The client connection, positioned after any PROXY header. Bytes that were read past
    /// the header are replayed by the first reads.
    pub stream: PrefixedStream,
    pub original_src: SocketAddr,
    pub original_dst: SocketAddr,
}

/// A listening socket; see the module documentation.
#[derive(Debug)]
pub struct Listener {
    inner: TcpListener,
    local_addr: SocketAddr,
    handshaker: Handshaker,
}

/// Opens a listening socket on `config.addr`: `SO_REUSEADDR`, non-blocking, backlog
/// [`LISTEN_BACKLOG`], and in transparent mode `IP_TRANSPARENT` (IPv4) or
/// `IPV6_TRANSPARENT` (IPv6). Must run inside a Tokio runtime.
pub async fn bind(config: &ListenerConfig) -> Result<Listener, ListenerError> {
    let addr = config.addr;
    let fail = |option: &'static str| {
        move |source: io::Error| ListenerError::ListenSocket {
            addr,
            option,
            source,
        }
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(fail("socket"))?;
    socket
        .set_reuse_address(true)
        .map_err(fail("SO_REUSEADDR"))?;
    if config.mode == ListenerMode::Transparent {
        match addr {
            SocketAddr::V4(_) => socket
                .set_ip_transparent_v4(true)
                .map_err(fail("IP_TRANSPARENT"))?,
            SocketAddr::V6(_) => socket
                .set_ip_transparent_v6(true)
                .map_err(fail("IPV6_TRANSPARENT"))?,
        }
    }
    socket.set_nonblocking(true).map_err(fail("O_NONBLOCK"))?;
    socket.bind(&addr.into()).map_err(fail("bind"))?;
    socket.listen(LISTEN_BACKLOG).map_err(fail("listen"))?;
    let inner = TcpListener::from_std(socket.into()).map_err(fail("tokio registration"))?;
    let local_addr = inner.local_addr().map_err(fail("getsockname"))?;
    Ok(Listener {
        inner,
        local_addr,
        handshaker: Handshaker {
            mode: config.mode,
            proxy_header_timeout: config.proxy_header_timeout,
        },
    })
}

impl Listener {
    /// The bound address (with the actual port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The mode this listener was bound in.
    pub fn mode(&self) -> ListenerMode {
        self.handshaker.mode
    }

    /// Accepts one connection. Does not read from it: pass it to [`Self::handshake`] (or a
    /// [`Handshaker`]) in a task of its own.
    pub async fn accept(&self) -> Result<(TcpStream, SocketAddr), ListenerError> {
        self.inner
            .accept()
            .await
            .map_err(|source| ListenerError::Accept {
                addr: self.local_addr,
                source,
            })
    }

    /// A handle that runs handshakes for this listener's connections, to move into tasks.
    pub fn handshaker(&self) -> Handshaker {
        self.handshaker.clone()
    }

    /// Learns the original addresses of an accepted connection; see
    /// [`Handshaker::handshake`].
    pub async fn handshake(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Result<Accepted, ListenerError> {
        self.handshaker.handshake(stream, peer).await
    }

    /// Accepts connections forever, runs each one's handshake in its own task and passes
    /// the result to `handler` in that task. Handshake failures close the connection and
    /// are logged at debug; accept failures are logged and, unless they concern only one
    /// connection, followed by a short pause (e.g. out of file descriptors). Runs until the
    /// future is dropped.
    pub async fn serve<F, Fut>(&self, handler: F)
    where
        F: Fn(Accepted) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handler = Arc::new(handler);
        loop {
            let (stream, peer) = match self.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    if is_per_connection(&err) {
                        tracing::debug!(error = %err, "accept failed");
                    } else {
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            };
            let handshaker = self.handshaker();
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                match handshaker.handshake(stream, peer).await {
                    Ok(accepted) => handler(accepted).await,
                    Err(err) => tracing::debug!(error = %err, "handshake failed; closing"),
                }
            });
        }
    }
}

fn is_per_connection(err: &ListenerError) -> bool {
    match err {
        ListenerError::Accept { source, .. } => matches!(
            source.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::Interrupted
        ),
        _ => false,
    }
}

/// Runs the per-connection handshake of a [`Listener`]; cheap to clone and `'static`.
#[derive(Debug, Clone)]
pub struct Handshaker {
    mode: ListenerMode,
    proxy_header_timeout: Duration,
}

impl Handshaker {
    /// Learns the original addresses of a connection accepted from this listener.
    ///
    /// Transparent mode: the socket's local address is the original destination and `peer`
    /// the original source; nothing is read. PROXY protocol mode: reads the header, within
    /// the configured timeout; a v2 LOCAL header yields the connection's own addresses.
    /// IPv4-mapped IPv6 addresses are reported as IPv4. On error the stream is dropped,
    /// which closes the connection.
    pub async fn handshake(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
    ) -> Result<Accepted, ListenerError> {
        let local = |stream: &TcpStream| {
            stream
                .local_addr()
                .map_err(|source| ListenerError::LocalAddr { peer, source })
        };
        let (src, dst, prefix) = match self.mode {
            ListenerMode::Transparent => (peer, local(&stream)?, Vec::new()),
            ListenerMode::ProxyProtocol => {
                let read = proxy_protocol::read_header(&mut stream, peer);
                let (header, rest) = tokio::time::timeout(self.proxy_header_timeout, read)
                    .await
                    .map_err(|_| ListenerError::ProxyHeaderTimeout {
                        peer,
                        timeout: self.proxy_header_timeout,
                    })??;
                match header {
                    ProxyHeader::Local => (peer, local(&stream)?, rest),
                    ProxyHeader::Proxy { src, dst } => (src, dst, rest),
                }
            }
        };
        Ok(Accepted {
            stream: PrefixedStream::new(stream, Bytes::from(prefix)),
            original_src: canonical(src),
            original_dst: canonical(dst),
        })
    }
}

/// IPv4-mapped IPv6 addresses (from dual-stack sockets) as plain IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
