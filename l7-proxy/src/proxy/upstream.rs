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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::ProxyBody;
use crate::listener::connect_upstream;

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// SO_MARK on upstream sockets, so the datapath does not redirect them again.
    pub mark: Option<u32>,
    pub connect_timeout: Duration,
    /// Time allowed until the upstream's response headers arrive.
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            mark: None,
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
    connect_timeout: Duration,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Self {
        let mark = config.mark;
        let connect_timeout = config.connect_timeout;
        let connector = Connector::new(tower::service_fn(move |uri: Uri| async move {
            let dst = destination(&uri)?;
            let stream = connect_upstream(dst, mark, connect_timeout)
                .await
                .map_err(std::io::Error::other)?;
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
            connect_timeout,
        }
    }

    /// A fresh, unpooled connection to `dst` with the same mark and timeout as pooled
    /// ones: tunnels (WebSocket, CONNECT) take a connection for themselves.
    pub async fn connect(&self, dst: SocketAddr) -> Result<TcpStream, UpstreamError> {
        connect_upstream(dst, self.mark, self.connect_timeout)
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
        dst: SocketAddr,
        request: Request<B>,
    ) -> Result<Response<Incoming>, UpstreamError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let exchange = async {
            let stream = self.connect(dst).await?;
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

    /// Sends an HTTP/1 request whose URI authority is the original destination.
    pub async fn send_http1(
        &self,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let dst = request
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        self.finish(dst, self.http1.request(request)).await
    }

    /// Sends an HTTP/2 request (its URI carries the client's authority) to `dst`.
    pub async fn send_http2(
        &self,
        dst: SocketAddr,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let exchange = async {
            let mut sender = self.http2.sender(dst, self).await?;
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

/// One HTTP/2 connection per original destination, shared by all requests to it; a
/// closed one is replaced on the next request.
#[derive(Debug, Default)]
pub struct Http2Connections {
    senders: Mutex<HashMap<SocketAddr, SendRequest<ProxyBody>>>,
}

impl Http2Connections {
    async fn sender(
        &self,
        dst: SocketAddr,
        upstream: &Upstream,
    ) -> Result<SendRequest<ProxyBody>, UpstreamError> {
        {
            let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
            match senders.get(&dst) {
                Some(sender) if !sender.is_closed() => return Ok(sender.clone()),
                Some(_) => {
                    senders.remove(&dst);
                }
                None => {}
            }
        }
        let stream = upstream.connect(dst).await?;
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
            .insert(dst, sender.clone());
        Ok(sender)
    }
}

fn destination(uri: &Uri) -> Result<SocketAddr, std::io::Error> {
    uri.authority()
        .and_then(|a| a.as_str().parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("upstream URI {uri} does not name an address"),
            )
        })
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
