//! Forwarding to the original destination: a pooled HTTP/1 client, and one multiplexed
//! HTTP/2 connection per destination (HTTP/2 in means HTTP/2 out, SEMANTICS 4.11).
//! Connections carry the datapath's socket mark and time out clearly. Requests are never
//! retried.
//!
//! The HTTP/1 pool is hyper-util's, keyed by the URI authority, which is set to the
//! original destination address (the Host header travels unchanged). HTTP/2 cannot work
//! that way: hyper derives `:authority` from the URI, and it must be what the client sent.
//! So HTTP/2 requests carry the client's authority in their URI and go out on a
//! connection looked up by original destination in `Http2Connections`.
//!
//! With [`UpstreamSource::Original`] every upstream connection is bound to the client's
//! original source address (`IP_TRANSPARENT`), so connections are reused per (source,
//! destination) and never carry another client's requests: the HTTP/1 pool key gets the
//! source as its userinfo (`127.0.0.3@10.0.0.1:80`, see [`pool_authority`]; hyper sends
//! HTTP/1 requests in origin form, so the userinfo never leaves the proxy), and
//! `Http2Connections` is keyed by both.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::ProxyBody;
use crate::listener::{ListenerError, UpstreamOptions, connect_upstream_with};

/// The source address of upstream connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UpstreamSource {
    /// The node's own address, chosen by the kernel.
    #[default]
    Node,
    /// The client's original source IP (port chosen by the kernel), bound with
    /// `IP_TRANSPARENT`/`IPV6_TRANSPARENT` (needs `CAP_NET_ADMIN`), so the destination and
    /// its datapath see the client, as behind Cilium's Envoy. Return traffic to that
    /// address must be routed back to the proxy by the datapath.
    Original,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// SO_MARK on upstream sockets, so the datapath does not redirect them again.
    pub mark: Option<u32>,
    /// Which source address upstream connections use.
    pub source: UpstreamSource,
    pub connect_timeout: Duration,
    /// Time allowed until the upstream's response headers arrive.
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            mark: None,
            source: UpstreamSource::Node,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(90),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to {dst}: {reason}")]
    Connect { dst: String, reason: String },
    #[error("{dst} did not answer within {after:?}")]
    Timeout { dst: String, after: Duration },
    #[error("request to {dst} failed: {source}")]
    Request {
        dst: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The exchange on a connection of our own (HTTP/2, tunnels) failed.
    #[error("request to {dst} failed: {source}")]
    Exchange {
        dst: String,
        #[source]
        source: hyper::Error,
    },
}

impl UpstreamError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::Request { .. } | UpstreamError::Exchange { .. } => "request",
        }
    }
}

type Connector = tower::util::BoxCloneSyncService<Uri, TokioIo<TcpStream>, std::io::Error>;

#[derive(Clone, Debug)]
pub struct Upstream {
    http1: Client<Connector, ProxyBody>,
    http2: Arc<Http2Connections>,
    response_timeout: Duration,
    mark: Option<u32>,
    source: UpstreamSource,
    connect_timeout: Duration,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Self {
        let mark = config.mark;
        let connect_timeout = config.connect_timeout;
        let connector = Connector::new(tower::service_fn(move |uri: Uri| async move {
            let (source, dst) = pool_route(&uri)?;
            let stream = open(source, dst, mark, connect_timeout).await?;
            Ok(TokioIo::new(stream))
        }));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.idle_timeout)
            .retry_canceled_requests(false)
            .set_host(false);
        let http1 = builder.build(connector);
        Self {
            http1,
            http2: Arc::default(),
            response_timeout: config.response_timeout,
            mark,
            source: config.source,
            connect_timeout,
        }
    }

    /// The `SO_MARK` of its connections.
    pub fn mark(&self) -> Option<u32> {
        self.mark
    }

    /// The address upstream connections for a client at `client` are bound to, if any.
    fn source_for(&self, client: IpAddr) -> Option<IpAddr> {
        match self.source {
            UpstreamSource::Node => None,
            UpstreamSource::Original => Some(client),
        }
    }

    /// A fresh, unpooled connection to `dst` for a client at `client`, with the same mark,
    /// source and timeout as pooled ones: tunnels (WebSocket, CONNECT) take a connection
    /// for themselves.
    pub async fn connect(
        &self,
        client: IpAddr,
        dst: SocketAddr,
    ) -> Result<TcpStream, UpstreamError> {
        self.connect_from(self.source_for(client), dst).await
    }

    async fn connect_from(
        &self,
        source: Option<IpAddr>,
        dst: SocketAddr,
    ) -> Result<TcpStream, UpstreamError> {
        open(source, dst, self.mark, self.connect_timeout)
            .await
            .map_err(|e| UpstreamError::Connect {
                dst: dst.to_string(),
                reason: error_chain(&e),
            })
    }

    /// Sends one HTTP/1 request on a connection of its own, which stays the request's: for
    /// tunnels (the connection is upgraded and carries the tunnel) and for requests the
    /// pool cannot address (`OPTIONS *`).
    pub async fn send_on_own_connection<B>(
        &self,
        client: IpAddr,
        dst: SocketAddr,
        request: Request<B>,
    ) -> Result<Response<Incoming>, UpstreamError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let exchange = async {
            let stream = self.connect(client, dst).await?;
            let exchange_failed = |source| UpstreamError::Exchange {
                dst: dst.to_string(),
                source,
            };
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake::<_, B>(TokioIo::new(stream))
                    .await
                    .map_err(exchange_failed)?;
            tokio::spawn(async move {
                if let Err(error) = connection.with_upgrades().await {
                    tracing::debug!(%dst, %error, "upstream connection ended");
                }
            });
            sender.send_request(request).await.map_err(exchange_failed)
        };
        match tokio::time::timeout(self.response_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout {
                dst: dst.to_string(),
                after: self.response_timeout,
            }),
        }
    }

    /// Time allowed until an upstream's response headers arrive.
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// Sends an HTTP/1 request from a client at `client` to `dst` on a pooled connection.
    /// The request's URI names the path and query; its scheme and authority are replaced
    /// by the pool key.
    pub async fn send_http1(
        &self,
        client: IpAddr,
        dst: SocketAddr,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut parts = request.uri().clone().into_parts();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(pool_authority(self.source_for(client), dst));
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        match Uri::from_parts(parts) {
            Ok(uri) => *request.uri_mut() = uri,
            Err(e) => {
                return Err(UpstreamError::Connect {
                    dst: dst.to_string(),
                    reason: format!("no pool address for the request: {e}"),
                });
            }
        }
        self.finish(dst.to_string(), self.http1.request(request))
            .await
    }

    /// Sends an HTTP/2 request (its URI carries the client's authority) from a client at
    /// `client` to `dst`.
    pub async fn send_http2(
        &self,
        client: IpAddr,
        dst: SocketAddr,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let exchange = async {
            let mut sender = self
                .http2
                .sender(self.source_for(client), dst, self)
                .await?;
            sender
                .ready()
                .await
                .map_err(|source| UpstreamError::Exchange {
                    dst: dst.to_string(),
                    source,
                })?;
            sender
                .send_request(request)
                .await
                .map_err(|source| UpstreamError::Exchange {
                    dst: dst.to_string(),
                    source,
                })
        };
        match tokio::time::timeout(self.response_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout {
                dst: dst.to_string(),
                after: self.response_timeout,
            }),
        }
    }

    async fn finish(
        &self,
        dst: String,
        exchange: impl Future<Output = Result<Response<Incoming>, hyper_util::client::legacy::Error>>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.response_timeout, exchange).await {
            Err(_) => Err(UpstreamError::Timeout {
                dst,
                after: self.response_timeout,
            }),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(source)) if source.is_connect() => Err(UpstreamError::Connect {
                reason: error_chain(&source),
                dst,
            }),
            Ok(Err(source)) => Err(UpstreamError::Request { dst, source }),
        }
    }
}

/// Where an upstream connection goes: its bound source address (`None`: the node's) and
/// its destination.
type Route = (Option<IpAddr>, SocketAddr);

/// One HTTP/2 connection per (bound source, original destination), shared by all
/// requests to it; a closed one is replaced on the next request.
#[derive(Debug, Default)]
pub struct Http2Connections {
    senders: Mutex<HashMap<Route, SendRequest<ProxyBody>>>,
}

impl Http2Connections {
    async fn sender(
        &self,
        source: Option<IpAddr>,
        dst: SocketAddr,
        upstream: &Upstream,
    ) -> Result<SendRequest<ProxyBody>, UpstreamError> {
        let key = (source, dst);
        {
            let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
            match senders.get(&key) {
                Some(sender) if !sender.is_closed() => return Ok(sender.clone()),
                Some(_) => {
                    senders.remove(&key);
                }
                None => {}
            }
        }
        let stream = upstream.connect_from(source, dst).await?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Exchange {
                dst: dst.to_string(),
                source,
            })?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%dst, %error, "upstream HTTP/2 connection ended");
            }
        });
        self.senders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, sender.clone());
        Ok(sender)
    }
}

/// Opens an upstream connection, bound to `source` (port 0) when given. A socket that
/// cannot be set up that way (typically a bind without `CAP_NET_ADMIN`, or to an address
/// the routing does not allow) is logged with both addresses: it is a deployment problem,
/// not one of this destination.
async fn open(
    source: Option<IpAddr>,
    dst: SocketAddr,
    mark: Option<u32>,
    timeout: Duration,
) -> Result<TcpStream, std::io::Error> {
    let options = UpstreamOptions {
        mark,
        timeout,
        transparent_source: source.map(|ip| SocketAddr::new(ip, 0)),
    };
    let result = connect_upstream_with(dst, &options).await;
    if let (
        Err(ListenerError::UpstreamSocket {
            option,
            source: error,
            ..
        }),
        Some(src),
    ) = (&result, source)
    {
        tracing::warn!(%src, %dst, option, %error, "upstream socket from the original source failed");
    }
    result.map_err(|error| match source {
        Some(src) => std::io::Error::other(format!("from {src}: {}", error_chain(&error))),
        None => std::io::Error::other(error),
    })
}

/// The HTTP/1 pool's authority for connections from `source` to `dst`: the destination,
/// with the bound source as userinfo (IPv6 colons written as `-`, which userinfo allows
/// and no address contains).
pub fn pool_authority(source: Option<IpAddr>, dst: SocketAddr) -> http::uri::Authority {
    let text = match source {
        None => dst.to_string(),
        Some(ip) => format!("{}@{dst}", ip.to_string().replace(':', "-")),
    };
    text.parse()
        .expect("an address with an address as userinfo is an authority")
}

/// The (source, destination) of a pool key made by [`pool_authority`].
fn pool_route(uri: &Uri) -> Result<Route, std::io::Error> {
    let invalid = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("upstream URI {uri} does not name an address"),
        )
    };
    let authority = uri.authority().ok_or_else(invalid)?.as_str();
    let (source, dst) = match authority.rsplit_once('@') {
        None => (None, authority),
        Some((source, dst)) => {
            let ip = source.replace('-', ":").parse().map_err(|_| invalid())?;
            (Some(ip), dst)
        }
    };
    Ok((source, dst.parse().map_err(|_| invalid())?))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Empty};

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn failure<T: std::fmt::Debug>(result: Result<T, UpstreamError>) -> UpstreamError {
        match result {
            Ok(value) => panic!("unexpected success: {value:?}"),
            Err(error) => error,
        }
    }

    fn config(mark: Option<u32>, source: UpstreamSource) -> UpstreamConfig {
        UpstreamConfig {
            mark,
            source,
            connect_timeout: Duration::from_secs(5),
            ..UpstreamConfig::default()
        }
    }

    #[test]
    fn pool_authority_names_source_and_destination() -> TestResult {
        let cases: [(Option<IpAddr>, SocketAddr); 4] = [
            (None, "10.0.0.1:80".parse()?),
            (Some("127.0.0.3".parse()?), "10.0.0.1:80".parse()?),
            (Some("fd00::1:2".parse()?), "[fd00::9]:8080".parse()?),
            (
                Some("::ffff:10.1.2.3".parse()?),
                "[::ffff:10.0.0.1]:80".parse()?,
            ),
        ];
        for (source, dst) in cases {
            let authority = pool_authority(source, dst);
            let uri: Uri = format!("http://{authority}/x").parse()?;
            assert_eq!(pool_route(&uri)?, (source, dst), "{authority}");
        }
        // Different sources are different pool keys.
        let dst: SocketAddr = "10.0.0.1:80".parse()?;
        assert_ne!(
            pool_authority(Some("10.1.0.3".parse()?), dst),
            pool_authority(Some("10.1.0.4".parse()?), dst)
        );
        assert_ne!(
            pool_authority(None, dst),
            pool_authority(Some("10.1.0.4".parse()?), dst)
        );
        Ok(())
    }

    // The mark and the source reach the connections of every kind of request.
    #[tokio::test]
    async fn connections_carry_mark_and_original_source() -> TestResult {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let dst = server.local_addr()?;
        let client: IpAddr = "127.0.0.3".parse()?;

        let original = Upstream::new(&config(Some(0x400), UpstreamSource::Original));
        let stream = original.connect(client, dst).await?;
        assert_eq!(socket2::SockRef::from(&stream).mark()?, 0x400);
        let (_accepted, peer) = server.accept().await?;
        assert_eq!(peer.ip(), client);

        let node = Upstream::new(&config(Some(0x300), UpstreamSource::Node));
        let stream = node.connect(client, dst).await?;
        assert_eq!(socket2::SockRef::from(&stream).mark()?, 0x300);
        let (_accepted, peer) = server.accept().await?;
        assert_ne!(peer.ip(), client);
        Ok(())
    }

    // A source that cannot be bound is a connect error naming both addresses, for every
    // kind of connection.
    #[tokio::test]
    async fn unbindable_source_is_a_connect_error() -> TestResult {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let dst = server.local_addr()?;
        // An IPv6 client cannot be the source of a connection to an IPv4 destination.
        let client: IpAddr = "fd00::3".parse()?;
        let upstream = Upstream::new(&config(None, UpstreamSource::Original));
        let named = |error: &UpstreamError| {
            let text = error.to_string();
            assert!(matches!(error, UpstreamError::Connect { .. }), "{error:?}");
            assert!(text.contains(&dst.to_string()), "{text}");
            assert!(text.contains("fd00::3"), "{text}");
        };
        named(&failure(upstream.connect(client, dst).await));
        let request = || {
            Request::get("/").body(
                Empty::<bytes::Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed(),
            )
        };
        named(&failure(upstream.send_http1(client, dst, request()?).await));
        named(&failure(upstream.send_http2(client, dst, request()?).await));
        named(&failure(
            upstream
                .send_on_own_connection(client, dst, request()?)
                .await,
        ));
        Ok(())
    }
}
