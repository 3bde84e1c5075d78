//! WebSocket upgrades and CONNECT with real sockets: the request is policed like any
//! other, and only when it is allowed and the upstream agrees are bytes tunnelled. A real
//! WebSocket client and server (tungstenite) talk through the proxy.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use futures_util::{SinkExt, StreamExt};
use l7_proxy::http_rules::{HttpRuleSet, HttpRuleSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

// Issue item 3: the upgrade request is policed, then bytes are tunnelled both ways.
#[tokio::test]
async fn websocket_upgrade_is_policed_then_tunnelled() {
    let (up, paths) = websocket_upstream().await;
    let proxy = proxy(rules(&[("GET", "/chat")])).await;

    let stream = connect(proxy, up).await;
    let (mut socket, response) = tokio_tungstenite::client_async("ws://deathstar/./chat", stream)
        .await
        .expect("allowed upgrade");
    assert_eq!(response.status(), 101);
    for text in ["hello", "a second message"] {
        socket.send(Message::text(text)).await.expect("send");
        let echoed = socket.next().await.expect("an answer").expect("a message");
        assert_eq!(echoed, Message::text(text));
    }
    socket.close(None).await.expect("close");

    let stream = connect(proxy, up).await;
    let denied = tokio_tungstenite::client_async("ws://deathstar/admin", stream).await;
    match denied {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
            assert_eq!(
                response.body().as_deref(),
                Some(b"Access denied\r\n".as_slice())
            );
        }
        other => panic!("expected a 403, got {other:?}"),
    }
    let seen = paths.lock().expect("paths").clone();
    assert_eq!(
        seen,
        ["/chat"],
        "the normalised path, and only the allowed upgrade"
    );
}

/// An HTTP proxy upstream: answers each CONNECT with 200 and then echoes bytes.
async fn connect_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connects = Arc::new(AtomicUsize::new(0));
    let counter = connects.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                if !head.starts_with(b"CONNECT allowed.example:443 ") {
                    let _ = stream.write_all(b"HTTP/1.1 400 Bad\r\n\r\n").await;
                    return;
                }
                counter.fetch_add(1, Ordering::SeqCst);
                if stream
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                let (mut reader, mut writer) = stream.split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            });
        }
    });
    (addr, connects)
}

async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

// Issue item 3: CONNECT is policed on its authority; when allowed it is passed to the
// original destination (itself a proxy) and tunnelled, never opened by us to the authority.
#[tokio::test]
async fn connect_is_policed_on_its_authority() {
    let (up, connects) = connect_upstream().await;
    let spec = HttpRuleSpec {
        method: Some("CONNECT".into()),
        host: Some("allowed\\.example:443".into()),
        ..Default::default()
    };
    let proxy = proxy(Arc::new(Rules(
        HttpRuleSet::compile(&[spec]).expect("valid rule"),
    )))
    .await;

    let mut stream = connect(proxy, up).await;
    stream
        .write_all(b"CONNECT allowed.example:443 HTTP/1.1\r\nHost: allowed.example:443\r\n\r\n")
        .await
        .expect("write");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream.write_all(b"bytes of anything").await.expect("write");
    let mut echoed = [0u8; 17];
    stream.read_exact(&mut echoed).await.expect("echo");
    assert_eq!(&echoed, b"bytes of anything");
    drop(stream);

    let mut stream = connect(proxy, up).await;
    stream
        .write_all(b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n")
        .await
        .expect("write");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(
        connects.load(Ordering::SeqCst),
        1,
        "only the allowed CONNECT"
    );
}

// An upgrade to anything but WebSocket (h2c would carry later requests past the policy)
// is forwarded as a plain request and the connection stays HTTP/1.
#[tokio::test]
async fn h2c_upgrade_is_not_honoured() {
    let (up, hits) = upstream().await;
    let proxy = proxy(rules(&[("GET", "/public/.*")])).await;
    let answer = raw(
        proxy,
        up,
        "GET /public/a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\nGET /secret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("GET /public/a"), "{answer}");
    assert!(
        answer.contains("HTTP/1.1 403"),
        "the next request is still policed: {answer}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

// Found by the fuzzer: an absolute-form CONNECT must not be policed by its authority and
// then tunnelled with a target the policy never saw.
#[tokio::test]
async fn absolute_form_connect_is_refused() {
    let (up, connects) = connect_upstream().await;
    let spec = HttpRuleSpec {
        method: Some("CONNECT".into()),
        ..Default::default()
    };
    let proxy = proxy(Arc::new(Rules(
        HttpRuleSet::compile(&[spec]).expect("valid rule"),
    )))
    .await;
    let answer = raw(
        proxy,
        up,
        "CONNECT http://allowed.example:443/@evil.example:443?x HTTP/1.1\r\nHost: allowed.example:443\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(connects.load(Ordering::SeqCst), 0);
}
