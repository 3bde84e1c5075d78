//! What happens to connections rather than requests, with real sockets: header limits
//! (431), idle connections closed, and connections closed when a policy change removes
//! their L3/L4 access (and only then).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use l7_proxy::http_rules::RequestView;
use l7_proxy::proxy::{
    Admission, ConnInfo, Decision, PolicyClose, RequestAuthorizer, ServerLimits,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GET: &[u8] = b"GET /public/a HTTP/1.1\r\nHost: x\r\n\r\n";

/// Reads one response (head and a Content-Length body).
async fn read_response(stream: &mut TcpStream) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                return String::from_utf8_lossy(&data[..end + 4 + length]).into_owned();
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(n > 0, "closed before a whole response: {data:?}");
        data.extend_from_slice(&buf[..n]);
    }
}

/// True if the proxy closes the connection within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

// Issue item 4: header size and count limits answer 431.
#[tokio::test]
async fn header_limits_answer_431() {
    let (up, hits) = upstream().await;
    let limits = ServerLimits {
        max_header_bytes: 8192,
        max_headers: 20,
        ..ServerLimits::default()
    };
    let proxy = proxy_with(rules(&[("GET", "/public/.*")]), limits).await;

    let many: String = (0..21).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = raw(
        proxy,
        up,
        &format!("GET /public/a HTTP/1.1\r\nHost: x\r\n{many}\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "too many: {answer}");

    let big = "a".repeat(9000);
    let answer = raw(
        proxy,
        up,
        &format!("GET /public/a HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "too large: {answer}");

    let fine: String = (0..17).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = raw(
        proxy,
        up,
        &format!("GET /public/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{fine}\r\n"),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "within limits: {answer}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

// Issue item 4: idle keep-alive connections are closed.
#[tokio::test]
async fn idle_connection_is_closed() {
    let (up, _) = upstream().await;
    let limits = ServerLimits {
        idle_timeout: Duration::from_millis(300),
        ..ServerLimits::default()
    };
    let proxy = proxy_with(rules(&[("GET", "/public/.*")]), limits).await;
    let mut stream = connect(proxy, up).await;
    stream.write_all(GET).await.expect("write");
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    // Activity keeps it open...
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        stream.write_all(GET).await.expect("write");
        assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    }
    // ...and silence closes it.
    assert!(closed_within(&mut stream, Duration::from_secs(3)).await);
}

/// Allows `/public/.*` while `access` is true; after a flip, `notify` tells connections
/// to re-check.
struct Switchable {
    rules: Arc<Rules>,
    access: AtomicBool,
    updates: tokio::sync::watch::Sender<()>,
    closed_on_update: AtomicUsize,
    refused_at_accept: AtomicUsize,
}

impl Switchable {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            rules: rules(&[("GET", "/public/.*")]),
            access: AtomicBool::new(true),
            updates: tokio::sync::watch::channel(()).0,
            closed_on_update: AtomicUsize::new(0),
            refused_at_accept: AtomicUsize::new(0),
        })
    }

    fn set_access(&self, access: bool) {
        self.access.store(access, Ordering::SeqCst);
        self.updates.send_replace(());
    }
}

impl RequestAuthorizer for Switchable {
    fn authorize(&self, conn: &ConnInfo, request: &RequestView<'_>) -> Decision {
        self.rules.authorize(conn, request)
    }

    fn admit(&self, _conn: &ConnInfo) -> Admission {
        if self.access.load(Ordering::SeqCst) {
            Admission::Admitted
        } else {
            Admission::Refused {
                reason: "denied at L3/L4 (test)".into(),
            }
        }
    }

    fn policy_updates(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        Some(self.updates.subscribe())
    }

    fn closed_by_policy(&self, _conn: &ConnInfo, when: PolicyClose, _reason: &str) {
        let counter = match when {
            PolicyClose::Accept => &self.refused_at_accept,
            PolicyClose::Update => &self.closed_on_update,
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

// Issue item 6: an update that keeps the connection's access leaves it open; one that
// removes it closes it, and the close is counted. New connections are refused.
#[tokio::test]
async fn connection_closed_when_its_access_is_removed() {
    let (up, _) = upstream().await;
    let authorizer = Switchable::new();
    let proxy = proxy(authorizer.clone()).await;
    let mut stream = connect(proxy, up).await;
    stream.write_all(GET).await.expect("write");
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));

    authorizer.set_access(true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(GET).await.expect("write");
    assert!(
        read_response(&mut stream).await.starts_with("HTTP/1.1 200"),
        "an update that keeps access changes nothing"
    );

    authorizer.set_access(false);
    assert!(closed_within(&mut stream, Duration::from_secs(3)).await);
    assert_eq!(authorizer.closed_on_update.load(Ordering::SeqCst), 1);

    let mut refused = connect(proxy, up).await;
    let _ = refused.write_all(GET).await;
    assert!(closed_within(&mut refused, Duration::from_secs(3)).await);
    assert_eq!(authorizer.refused_at_accept.load(Ordering::SeqCst), 1);
}

// Issue item 6 for tunnels: a WebSocket whose L3/L4 access is removed is cut.
#[tokio::test]
async fn tunnel_closed_when_its_access_is_removed() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let (up, _) = websocket_upstream().await;
    let authorizer = Switchable::new();
    let proxy = proxy(authorizer.clone()).await;
    let stream = connect(proxy, up).await;
    let (mut socket, _) = tokio_tungstenite::client_async("ws://deathstar/public/ws", stream)
        .await
        .expect("allowed upgrade");
    socket.send(Message::text("one")).await.expect("send");
    assert_eq!(
        socket.next().await.expect("answer").expect("message"),
        Message::text("one")
    );
    authorizer.set_access(false);
    let next = tokio::time::timeout(Duration::from_secs(3), socket.next())
        .await
        .expect("the tunnel is cut in time");
    assert!(
        !matches!(next, Some(Ok(Message::Text(_)))),
        "nothing more arrives: {next:?}"
    );
    assert_eq!(authorizer.closed_on_update.load(Ordering::SeqCst), 1);
}
