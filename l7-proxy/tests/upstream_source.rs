//! `--upstream-source`: upstream connections from the client's original source address
//! (bound with IP_TRANSPARENT; the tests run as root) or from the node's. The PROXY header
//! claims the client's source; 127.0.0.0/8 is all local, so 127.0.0.3 and 127.0.0.4 can
//! be bound without a network namespace. The upstream answers with the peer address of the
//! connection each request came on.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use l7_proxy::proxy::ServerLimits;
use l7_proxy::proxy::upstream::{UpstreamConfig, UpstreamSource};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENT_A: &str = "127.0.0.3:40000";
const CLIENT_B: &str = "127.0.0.4:40000";

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("addr")
}

async fn proxy_from(source: UpstreamSource) -> SocketAddr {
    proxy_with_upstream(
        rules(&[("GET", "/.*"), ("OPTIONS", ".*")]),
        ServerLimits::default(),
        UpstreamConfig {
            source,
            ..UpstreamConfig::default()
        },
    )
    .await
}

/// The upstream connection's source in an answer of `peer_upstream`.
fn peer_of(body: &str) -> SocketAddr {
    let (_, peer) = body.rsplit_once(" from ").expect("upstream answer");
    addr(peer)
}

/// A keep-alive HTTP/1 client claiming to be `src`.
async fn http1_client(
    proxy: SocketAddr,
    src: &str,
    up: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let stream = connect_from(proxy, addr(src), up).await;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

/// GET `path` on `sender`; the source of the upstream connection that carried it.
async fn get_http1(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> SocketAddr {
    let request = hyper::Request::get(path)
        .header("host", "app")
        .body(Empty::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), 200);
    let peer = peer_of(&body_text(response).await);
    // The finished connection goes back to the pool in a task of its own.
    tokio::time::sleep(Duration::from_millis(50)).await;
    peer
}

fn ips(peers: &std::sync::Mutex<Vec<SocketAddr>>) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = peers
        .lock()
        .expect("peers")
        .iter()
        .map(|p| p.ip())
        .collect();
    ips.sort();
    ips
}

#[tokio::test]
async fn upstream_sees_the_original_source_only_when_asked() {
    let client = addr(CLIENT_A).ip();
    for (source, expect_client) in [
        (UpstreamSource::Original, true),
        (UpstreamSource::Node, false),
    ] {
        let (up, peers) = peer_upstream().await;
        let proxy = proxy_from(source).await;
        let mut sender = http1_client(proxy, CLIENT_A, up).await;
        let peer = get_http1(&mut sender, "/a").await;
        assert_eq!(peer.ip() == client, expect_client, "{source:?}: {peer}");
        let seen = ips(&peers);
        assert_eq!(seen.len(), 1, "{source:?}: {seen:?}");
        assert_eq!(seen[0] == client, expect_client, "{source:?}: {seen:?}");
    }
}

// A pooled connection opened for one client IP never carries another's requests; a
// client's next request reuses its own.
#[tokio::test]
async fn http1_pool_is_keyed_by_source() {
    let (up, peers) = peer_upstream().await;
    let proxy = proxy_from(UpstreamSource::Original).await;
    let mut a = http1_client(proxy, CLIENT_A, up).await;
    let mut b = http1_client(proxy, CLIENT_B, up).await;
    let a1 = get_http1(&mut a, "/1").await;
    let b1 = get_http1(&mut b, "/1").await;
    let a2 = get_http1(&mut a, "/2").await;
    let b2 = get_http1(&mut b, "/2").await;
    assert_eq!(a1.ip(), addr(CLIENT_A).ip());
    assert_eq!(b1.ip(), addr(CLIENT_B).ip());
    assert_eq!(a2, a1, "the first client's connection is reused");
    assert_eq!(b2, b1, "the second client's connection is reused");
    assert_eq!(ips(&peers), [addr(CLIENT_A).ip(), addr(CLIENT_B).ip()]);
}

// From the node's address, clients share the pool (what the key above changes).
#[tokio::test]
async fn http1_pool_is_shared_from_the_node() {
    let (up, peers) = peer_upstream().await;
    let proxy = proxy_from(UpstreamSource::Node).await;
    let mut a = http1_client(proxy, CLIENT_A, up).await;
    let mut b = http1_client(proxy, CLIENT_B, up).await;
    let a1 = get_http1(&mut a, "/1").await;
    let b1 = get_http1(&mut b, "/1").await;
    assert_eq!(a1, b1);
    assert_eq!(ips(&peers).len(), 1);
}

// HTTP/2 goes out on one connection per (source, destination).
#[tokio::test]
async fn http2_connections_are_keyed_by_source() {
    let (up, peers) = peer_upstream().await;
    let proxy = proxy_from(UpstreamSource::Original).await;
    let client = |src: &'static str| async move {
        let stream = connect_from(proxy, addr(src), up).await;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        sender
    };
    let get = |mut sender: hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
               path: &'static str| async move {
        let request = hyper::Request::get(format!("http://app{path}"))
            .body(Empty::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        peer_of(&body_text(response).await)
    };
    let a = client(CLIENT_A).await;
    let b = client(CLIENT_B).await;
    let a1 = get(a.clone(), "/1").await;
    let b1 = get(b.clone(), "/1").await;
    let a2 = get(a, "/2").await;
    let b2 = get(b, "/2").await;
    assert_eq!(a1.ip(), addr(CLIENT_A).ip());
    assert_eq!(b1.ip(), addr(CLIENT_B).ip());
    assert_eq!((a2, b2), (a1, b1), "each client's connection is reused");
    assert_eq!(ips(&peers), [addr(CLIENT_A).ip(), addr(CLIENT_B).ip()]);
}

/// Sends `request` claiming to be `src`, returns the whole answer.
async fn raw_from(proxy: SocketAddr, src: &str, up: SocketAddr, request: &str) -> String {
    let mut stream = connect_from(proxy, addr(src), up).await;
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

// Requests on connections of their own (`OPTIONS *`, tunnel requests) come from the
// client's address too.
#[tokio::test]
async fn own_connections_come_from_the_original_source() {
    let (up, _peers) = peer_upstream().await;
    let proxy = proxy_from(UpstreamSource::Original).await;
    let cases = [
        "OPTIONS * HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
        // The upstream refuses the upgrade (200), so the answer comes back as it is.
        "GET /chat HTTP/1.1\r\nHost: app\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    ];
    for request in cases {
        let answer = raw_from(proxy, CLIENT_A, up, request).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "{request:?}: {answer:?}"
        );
        assert!(
            answer.contains(" from 127.0.0.3:"),
            "{request:?}: {answer:?}"
        );
    }
}
