//! The HTTP proxy (HTTP/1.x and h2c) with real sockets: a real upstream server, the proxy behind a PROXY
//! protocol v2 listener (which carries the original source and destination, as the kernel
//! redirect will), and a real HTTP client. Policy here is a fixed rule set, so these tests
//! are about the proxy's mechanics: 403 without contacting the upstream, keep-alive after a
//! 403, the normalised path forwarded, framing ambiguities refused, upstream failures.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

// SEMANTICS 4.10: 403 with the exact body; the keep-alive connection stays usable; the
// upstream only ever sees allowed requests, with the normalised path (4.6).
#[tokio::test]
async fn allowed_then_denied_on_one_connection() {
    let (up, hits) = upstream().await;
    let proxy = proxy(rules(&[("GET", "/public/.*"), ("GET", "/exact")])).await;
    let stream = connect(proxy, up).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let get = |path: &str| {
        hyper::Request::get(path)
            .header("host", "deathstar")
            .body(Empty::<Bytes>::new())
            .expect("request")
    };

    let allowed = sender
        .send_request(get("/public/./a//b"))
        .await
        .expect("allowed");
    assert_eq!(allowed.status(), 200);
    assert_eq!(body_text(allowed).await, "GET /public/a/b");

    let denied = sender.send_request(get("/private")).await.expect("denied");
    assert_eq!(denied.status(), 403);
    assert_eq!(denied.headers()["content-type"], "text/plain");
    assert_eq!(body_text(denied).await, "Access denied\r\n");

    let smuggled = sender
        .send_request(get("/public/../private"))
        .await
        .expect("normalised");
    assert_eq!(smuggled.status(), 403, "/public/../private is /private");
    let _ = body_text(smuggled).await;

    let again = sender
        .send_request(get("/exact?y=1"))
        .await
        .expect("after 403");
    assert_eq!(
        again.status(),
        403,
        "query strings are part of the path (4.3)"
    );
    let _ = body_text(again).await;
    let again = sender
        .send_request(get("/public/x"))
        .await
        .expect("after 403");
    assert_eq!(
        again.status(),
        200,
        "the connection is still usable after 403s"
    );
    let _ = body_text(again).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "denied requests never reached the upstream"
    );
}

/// Sends raw bytes through the proxy and returns what comes back.
// Issue item 4: framing an upstream might read differently is refused with 400, and
// never reaches the upstream.
#[tokio::test]
async fn ambiguous_framing_is_refused() {
    let (up, hits) = upstream().await;
    let proxy = proxy(rules(&[("POST", "/.*"), ("GET", "/.*")])).await;
    let cases = [
        "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        "GET /a HTTP/1.1\r\n\r\n",
        "GET /a%2fb HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
        "GET http://user@evil/a HTTP/1.1\r\nHost: evil\r\n\r\n",
        // Invalid header names, a bare CR, codings other than plain chunked, a length
        // that is not a plain number, and chunk sizes no server can agree on.
        "GET /a HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost: x\r\nX-A\x01: v\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
        "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",
        "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n",
        "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3x\r\nabc\r\n0\r\n\r\n",
    ];
    let mut failures = Vec::new();
    for request in cases {
        let answer = raw(proxy, up, request).await;
        if !answer.starts_with("HTTP/1.1 400") {
            failures.push(format!("{request:?} got {answer:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

// SEMANTICS 4.12: hyper drops a Content-Length that comes with a Transfer-Encoding; the
// proxy still sees it, also on a keep-alive connection after a clean request, and closes.
#[tokio::test]
async fn content_length_with_transfer_encoding_after_clean_request() {
    let (up, hits) = upstream().await;
    let proxy = proxy(rules(&[("POST", "/.*"), ("GET", "/.*")])).await;
    let answer = raw(
        proxy,
        up,
        "GET /first HTTP/1.1\r\nHost: x\r\n\r\n\
         POST /second HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    )
    .await;
    let first = answer.find("HTTP/1.1 200").expect("the clean response");
    let second = answer.find("HTTP/1.1 400").expect("the refused response");
    assert!(first < second, "responses in request order: {answer:?}");
    assert!(answer.contains("GET /first"), "{answer:?}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "only the clean request went up"
    );
}

// Upstream down: a clear 503, not a hang or a reset.
#[tokio::test]
async fn upstream_down_is_503() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let proxy = proxy(rules(&[("GET", "/.*")])).await;
    let answer = raw(
        proxy,
        closed,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
}

// HEAD gets the 403 headers without a body (SEMANTICS 4.10).
#[tokio::test]
async fn head_denied_has_no_body() {
    let (up, _) = upstream().await;
    let proxy = proxy(rules(&[("GET", "/.*")])).await;
    let answer = raw(
        proxy,
        up,
        "HEAD /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer:?}");
    assert!(
        answer.ends_with("\r\n\r\n"),
        "no body after the headers: {answer:?}"
    );
}

// Adversarial: an allowed and a denied request pipelined in one write. Each is decided on
// its own; the denied one never reaches the upstream.
#[tokio::test]
async fn pipelined_allowed_and_denied() {
    let (up, hits) = upstream().await;
    let proxy = proxy(rules(&[("GET", "/public/.*")])).await;
    let answer = raw(
        proxy,
        up,
        "GET /public/a HTTP/1.1\r\nHost: x\r\n\r\nGET /secret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let first = answer.find("HTTP/1.1 200").expect("the allowed response");
    let second = answer.find("HTTP/1.1 403").expect("the denied response");
    assert!(first < second, "responses in request order: {answer:?}");
    assert!(answer.ends_with("Access denied\r\n"), "{answer:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

// Adversarial: smuggling variants against a rule that allows only /public/.* (SEMANTICS 4.6).
#[tokio::test]
async fn path_smuggling_variants() {
    let (up, hits) = upstream().await;
    let proxy = proxy(rules(&[("GET", "/public/.*")])).await;
    let cases = [
        ("/public/../secret", "403"),
        ("//secret", "403"),
        ("/public/%2e%2e/secret", "403"),
        ("/public/%2E%2E/secret", "403"),
        ("/public/..%2fsecret", "400"),
        ("/public/%2F../secret", "400"),
        ("/public/..%5csecret", "400"),
        ("/public\\..\\secret", "400"),
        ("/public/.;/../secret", "400"),
    ];
    for (path, want) in cases {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let answer = raw(proxy, up, &request).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {want}")),
            "{path}: {answer:?}"
        );
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "none of them reached the upstream"
    );
}

// SEMANTICS 4.11: HTTP/2 (prior knowledge) in, HTTP/2 out; 403 the same way.
#[tokio::test]
async fn http2_prior_knowledge() {
    let (up, hits) = upstream().await;
    let proxy = proxy(rules(&[("GET", "/public/.*")])).await;
    let stream = connect(proxy, up).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let get = |path: &str| {
        hyper::Request::get(format!("http://deathstar{path}"))
            .body(Empty::<Bytes>::new())
            .expect("request")
    };
    let allowed = sender
        .send_request(get("/public/a"))
        .await
        .expect("allowed");
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.version(), hyper::Version::HTTP_2);
    let body = body_text(allowed).await;
    assert!(
        body.starts_with("GET ") && body.ends_with("/public/a"),
        "{body}"
    );
    let denied = sender.send_request(get("/secret")).await.expect("denied");
    assert_eq!(denied.status(), 403);
    assert_eq!(body_text(denied).await, "Access denied\r\n");
    let again = sender
        .send_request(get("/public/b"))
        .await
        .expect("after 403");
    assert_eq!(again.status(), 200, "the HTTP/2 connection is still usable");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

// `OPTIONS *` has no path: it is policed as `*` and forwarded in asterisk-form.
#[tokio::test]
async fn options_asterisk_is_forwarded_as_sent() {
    let (up, hits) = upstream().await;
    let proxy = proxy(rules(&[("OPTIONS", "\\*")])).await;
    let answer = raw(
        proxy,
        up,
        "OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("OPTIONS *"), "{answer}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

// `Expect: 100-continue`: an allowed request gets `100 Continue` once it is being
// forwarded, then the upstream's answer; a denied one gets its 403 straight away and the
// client never has to send the body.
#[tokio::test]
async fn expect_continue() {
    let (up, hits) = upstream().await;
    let proxy = proxy(rules(&[("POST", "/public/.*")])).await;

    let mut stream = connect(proxy, up).await;
    stream
        .write_all(b"POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .expect("write head");
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut interim))
        .await
        .expect("100 Continue in time")
        .expect("read");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").await.expect("write body");
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("POST /public/a"), "{answer}");

    let mut stream = connect(proxy, up).await;
    stream
        .write_all(b"POST /private HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .expect("write head");
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(
        answer.starts_with("HTTP/1.1 403"),
        "no 100 Continue first: {answer}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}
