//! Forwarding to the original destination: one pooled HTTP/1 client and one HTTP/2 client
//! (HTTP/2 in means HTTP/2 out, SEMANTICS 4.11). Connections are pooled per destination
//! (the pool key is the URI authority, which is the original destination address), carry
//! the datapath's socket mark, and time out clearly. Requests are never retried.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
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
    /// The exchange on a tunnel's own connection failed.
    #[error("request to {dst} failed: {source}")]
    Tunnel {
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
            UpstreamError::Request { .. } | UpstreamError::Tunnel { .. } => "request",
        }
    }
}

type Connector = tower::util::BoxCloneSyncService<Uri, TokioIo<TcpStream>, std::io::Error>;

#[derive(Clone, Debug)]
pub struct Upstream {
    http1: Client<Connector, ProxyBody>,
    http2: Client<Connector, ProxyBody>,
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
        let http1 = builder.build(connector.clone());
        let http2 = builder.http2_only(true).build(connector);
        Self {
            http1,
            http2,
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

    /// Time allowed until an upstream's response headers arrive.
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    pub async fn send(
        &self,
        request: Request<ProxyBody>,
        http2: bool,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let dst = request
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let client = if http2 { &self.http2 } else { &self.http1 };
        match tokio::time::timeout(self.response_timeout, client.request(request)).await {
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
