//! The upstream of each allowed request is the one its decision names: a connection of
//! the egress listener into a same-node endpoint whose ingress rules the proxy enforced
//! too forwards with the ingress listener's upstream (`Via::Ingress`, the ingress mark),
//! anything else with its listener's. Here the two upstreams differ by their source
//! (the node's, or the client's original one, bound with IP_TRANSPARENT: the tests run as
//! root), so the upstream server can tell them apart; on one keep-alive connection each
//! request takes its own.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use l7_proxy::http_rules::RequestView;
use l7_proxy::listener::{self, ListenerConfig, ListenerMode};
use l7_proxy::proxy::upstream::{Upstream, UpstreamConfig, UpstreamSource};
use l7_proxy::proxy::{
    ConnInfo, Decision, Direction, RequestAuthorizer, ServerLimits, Upstreams, Via,
    serve_connection,
};

const CLIENT: &str = "127.0.0.3:40000";

/// Allows everything; requests for `/chained...` are forwarded `Via::Ingress`.
struct Chained;

impl RequestAuthorizer for Chained {
    fn authorize(&self, _conn: &ConnInfo, request: &RequestView<'_>) -> Decision {
        Decision::Allow {
            target: request.target.to_owned(),
            header_edits: Vec::new(),
            rule: "test".into(),
            via: if request.target.contains("/chained") {
                Via::Ingress
            } else {
                Via::Listener
            },
        }
    }
}

/// An egress listener (PROXY protocol) whose own upstream connects from the node and
/// whose ingress upstream from the client's address.
async fn egress_proxy() -> SocketAddr {
    let listener = listener::bind(&ListenerConfig {
        addr: "127.0.0.1:0".parse().expect("addr"),
        mode: ListenerMode::ProxyProtocol,
        proxy_header_timeout: Duration::from_secs(5),
    })
    .await
    .expect("bind proxy");
    let addr = listener.local_addr();
    let config = |source| UpstreamConfig {
        source,
        connect_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_secs(5),
        ..UpstreamConfig::default()
    };
    let upstreams = Upstreams {
        listener: Upstream::new(&config(UpstreamSource::Node)),
        ingress: Upstream::new(&config(UpstreamSource::Original)),
    };
    let authorizer: Arc<dyn RequestAuthorizer> = Arc::new(Chained);
    tokio::spawn(async move {
        listener
            .serve(move |accepted| {
                let authorizer = authorizer.clone();
                let upstreams = upstreams.clone();
                async move {
                    let conn = ConnInfo {
                        direction: Direction::Egress,
                        original_src: accepted.original_src,
                        original_dst: accepted.original_dst,
                    };
                    let _ = serve_connection(
                        accepted.stream,
                        conn,
                        authorizer,
                        upstreams,
                        &ServerLimits::default(),
                    )
                    .await;
                }
            })
            .await;
    });
    addr
}

/// The source IP of the upstream connection in an answer of `peer_upstream`.
fn peer_ip(body: &str) -> IpAddr {
    let (_, peer) = body.rsplit_once(" from ").expect("upstream answer");
    peer.parse::<SocketAddr>().expect("peer").ip()
}

fn client_ip() -> IpAddr {
    CLIENT.parse::<SocketAddr>().expect("addr").ip()
}

// HTTP/1 keep-alive: each request goes out on the upstream its decision names.
#[tokio::test]
async fn http1_requests_take_the_upstream_of_their_decision() {
    let (up, _) = peer_upstream().await;
    let proxy = egress_proxy().await;
    let stream = connect_from(proxy, CLIENT.parse().expect("addr"), up).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut seen = Vec::new();
    for path in ["/plain", "/chained/a", "/plain", "/chained/b"] {
        let request = hyper::Request::get(path)
            .header("host", "server")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        assert_eq!(response.status(), 200);
        seen.push(peer_ip(&body_text(response).await));
    }
    let node: IpAddr = "127.0.0.1".parse().expect("ip");
    assert_eq!(seen, [node, client_ip(), node, client_ip()]);
}

// HTTP/2: the same, on the multiplexed upstream connections of each upstream.
#[tokio::test]
async fn http2_requests_take_the_upstream_of_their_decision() {
    let (up, _) = peer_upstream().await;
    let proxy = egress_proxy().await;
    let stream = connect_from(proxy, CLIENT.parse().expect("addr"), up).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    for (path, expected) in [
        ("/chained", client_ip()),
        ("/plain", "127.0.0.1".parse().expect("ip")),
    ] {
        let request = hyper::Request::get(format!("http://server{path}"))
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        assert_eq!(response.status(), 200);
        assert_eq!(peer_ip(&body_text(response).await), expected, "{path}");
    }
}
