//! Shared by the socket tests: a real upstream, the proxy behind a PROXY protocol v2
//! listener (which carries the original source and destination, as the kernel redirect
//! will), and a fixed rule set as policy.
#![allow(dead_code)] // each test file uses a different subset

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use l7_proxy::http_rules::{HttpRuleSet, HttpRuleSpec, HttpVerdict, RequestView};
use l7_proxy::listener::{self, ListenerConfig, ListenerMode};
use l7_proxy::proxy::upstream::{Upstream, UpstreamConfig};
use l7_proxy::proxy::{ConnInfo, Decision, RequestAuthorizer, ServerLimits, Via, serve_connection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Allows what one rule set allows (SEMANTICS 4), denies the rest.
pub struct Rules(pub HttpRuleSet);

impl RequestAuthorizer for Rules {
    fn authorize(&self, _conn: &ConnInfo, request: &RequestView<'_>) -> Decision {
        match self.0.evaluate(request) {
            HttpVerdict::Allowed {
                normalized_target,
                header_edits,
                rule_index,
                ..
            } => Decision::Allow {
                target: normalized_target,
                header_edits,
                rule: format!("http[{rule_index}]"),
                via: Via::Listener,
            },
            HttpVerdict::Denied { reason } => Decision::Deny {
                reason: reason.to_string(),
            },
            HttpVerdict::Rejected { reason, .. } => Decision::Reject {
                reason: reason.to_string(),
            },
        }
    }
}

pub fn rules(specs: &[(&str, &str)]) -> Arc<Rules> {
    let specs: Vec<HttpRuleSpec> = specs
        .iter()
        .map(|(method, path)| HttpRuleSpec {
            method: Some((*method).into()),
            path: Some((*path).into()),
            ..Default::default()
        })
        .collect();
    Arc::new(Rules(HttpRuleSet::compile(&specs).expect("valid rules")))
}

/// An upstream that answers `METHOD PATH` and counts what reached it.
pub async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let line = format!("{} {}", req.method(), req.uri());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(line),
                        )))
                    }
                });
                // HTTP/1 and h2c, so HTTP/2 can be proxied as HTTP/2.
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, hits)
}

/// An upstream (HTTP/1 and h2c) that answers `METHOD PATH from PEER`, PEER being the
/// address the request's connection came from, and records the peer of every connection
/// it accepts.
pub async fn peer_upstream() -> (SocketAddr, Arc<std::sync::Mutex<Vec<SocketAddr>>>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    let peers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = peers.clone();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            seen.lock().expect("peers").push(peer);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let line = format!("{} {} from {peer}", req.method(), req.uri());
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(line),
                        )))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, peers)
}

/// The proxy on a PROXY-protocol listener.
pub async fn proxy(authorizer: Arc<dyn RequestAuthorizer>) -> SocketAddr {
    proxy_with(authorizer, ServerLimits::default()).await
}

/// The proxy on a PROXY-protocol listener, with `limits`.
pub async fn proxy_with(
    authorizer: Arc<dyn RequestAuthorizer>,
    limits: ServerLimits,
) -> SocketAddr {
    proxy_with_upstream(authorizer, limits, UpstreamConfig::default()).await
}

/// The proxy on a PROXY-protocol listener, with `limits` and upstream settings (its
/// timeouts are replaced by short ones).
pub async fn proxy_with_upstream(
    authorizer: Arc<dyn RequestAuthorizer>,
    limits: ServerLimits,
    upstream: UpstreamConfig,
) -> SocketAddr {
    let listener = listener::bind(&ListenerConfig {
        addr: "127.0.0.1:0".parse().expect("addr"),
        mode: ListenerMode::ProxyProtocol,
        proxy_header_timeout: Duration::from_secs(5),
    })
    .await
    .expect("bind proxy");
    let addr = listener.local_addr();
    let upstream = Upstream::new(&UpstreamConfig {
        connect_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_secs(5),
        ..upstream
    });
    tokio::spawn(async move {
        listener
            .serve(move |accepted| {
                let authorizer = authorizer.clone();
                let upstream = upstream.clone();
                let limits = limits.clone();
                async move {
                    let conn = ConnInfo {
                        direction: l7_proxy::proxy::Direction::Ingress,
                        original_src: accepted.original_src,
                        original_dst: accepted.original_dst,
                    };
                    let _ = serve_connection(accepted.stream, conn, authorizer, upstream, &limits)
                        .await;
                }
            })
            .await;
    });
    addr
}

/// A TCP connection to the proxy that claims to be from 127.0.0.1:40000 to `dst`.
pub async fn connect(proxy: SocketAddr, dst: SocketAddr) -> TcpStream {
    connect_from(proxy, "127.0.0.1:40000".parse().expect("addr"), dst).await
}

/// A TCP connection to the proxy that claims to be from `src` to `dst`.
pub async fn connect_from(proxy: SocketAddr, src: SocketAddr, dst: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(proxy).await.expect("connect proxy");
    let header = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (src, dst),
    )
    .build()
    .expect("header");
    stream.write_all(&header).await.expect("write header");
    stream
}

pub async fn body_text(response: hyper::Response<Incoming>) -> String {
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

pub async fn raw(proxy: SocketAddr, dst: SocketAddr, request: &str) -> String {
    let mut stream = connect(proxy, dst).await;
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A WebSocket echo server that counts the handshakes that reached it and records their
/// paths.
// tungstenite's handshake callback type fixes the large error variant.
#[allow(clippy::result_large_err)]
pub async fn websocket_upstream() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let paths = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = paths.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let record =
                    |request: &tokio_tungstenite::tungstenite::handshake::server::Request,
                     response| {
                        if let Ok(mut seen) = seen.lock() {
                            seen.push(request.uri().to_string());
                        }
                        Ok(response)
                    };
                let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, record).await
                else {
                    return;
                };
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_text() && socket.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, paths)
}
