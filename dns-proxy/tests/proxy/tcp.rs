//! Queries over TCP: framing, pipelining without head-of-line blocking, denials.

use hickory_proto::op::{Message, ResponseCode};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::harness::{CLIENT_IP, Proxy, WAIT, framed, query, read_frame};

async fn connect(proxy: &Proxy) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind((CLIENT_IP, 0).into())
        .expect("bind the endpoint's address");
    socket.connect(proxy.tcp()).await.expect("connect")
}

/// Writes every query at once on one connection and returns the answers in arrival order.
pub async fn exchange(proxy: &Proxy, queries: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut stream = connect(proxy).await;
    let mut all = Vec::new();
    for q in queries {
        all.extend_from_slice(&framed(q));
    }
    stream.write_all(&all).await.expect("write");
    let mut answers = Vec::new();
    for _ in queries {
        let frame = tokio::time::timeout(WAIT, read_frame(&mut stream))
            .await
            .expect("an answer in time")
            .expect("a frame");
        answers.push(frame);
    }
    answers
}

fn parse(bytes: &[u8]) -> Message {
    Message::from_vec(bytes).expect("parses")
}

// RFC 7766 6.2.1.1: pipelined queries are answered as each is ready: the slow first one
// does not hold back the second.
#[tokio::test]
async fn pipelined_queries_are_answered_out_of_order() {
    let proxy = Proxy::start(|_| {}).await;
    let answers = exchange(&proxy, &[query(1, "slow.test."), query(2, "www.test.")]).await;
    let (first, second) = (parse(&answers[0]), parse(&answers[1]));
    assert_eq!(first.metadata.id, 2);
    assert_eq!(second.metadata.id, 1);
    assert_eq!(first.metadata.response_code, ResponseCode::NoError);
    assert_eq!(second.metadata.response_code, ResponseCode::NoError);
}

// Denials and malformed queries over TCP, and the connection stays usable.
#[tokio::test]
async fn denied_and_malformed_over_tcp() {
    let proxy = Proxy::start(|_| {}).await;
    let mut two = query(4, "www.test.");
    let question = two[12..].to_vec();
    two.extend_from_slice(&question);
    two[4..6].copy_from_slice(&2u16.to_be_bytes());
    let answers = exchange(
        &proxy,
        &[
            query(3, "denied.example.org."),
            two,
            query(5, "allowed.example.com."),
        ],
    )
    .await;
    let mut by_id: Vec<(u16, ResponseCode)> = answers
        .iter()
        .map(|a| {
            let m = parse(a);
            (m.metadata.id, m.metadata.response_code)
        })
        .collect();
    by_id.sort_by_key(|(id, _)| *id);
    assert_eq!(
        by_id,
        [
            (3, ResponseCode::Refused),
            (4, ResponseCode::FormErr),
            (5, ResponseCode::NoError)
        ]
    );
    assert_eq!(
        proxy
            .metric("dns_proxy_queries_total{outcome=\"forwarded\",transport=\"TCP\"}")
            .await,
        1.0
    );
}

// A server that does not answer over TCP: SERVFAIL at the timeout.
#[tokio::test]
async fn tcp_upstream_timeout_is_servfail() {
    let proxy = Proxy::start(|_| {}).await;
    let answers = exchange(&proxy, &[query(6, "drop.test."), query(7, "www.test.")]).await;
    let (first, second) = (parse(&answers[0]), parse(&answers[1]));
    assert_eq!((first.metadata.id, second.metadata.id), (7, 6));
    assert_eq!(second.metadata.response_code, ResponseCode::ServFail);
}

// The upstream connection closing fails every waiting query at once (SERVFAIL, not the
// timeout); the next query opens a new one.
#[tokio::test]
async fn upstream_close_fails_pending_queries_and_reconnects() {
    let proxy = Proxy::start(|c| c.upstream_timeout = std::time::Duration::from_secs(5)).await;
    let mut stream = connect(&proxy).await;
    let started = std::time::Instant::now();
    let mut both = framed(&query(1, "drop.test."));
    both.extend_from_slice(&framed(&query(2, "close.test.")));
    stream.write_all(&both).await.expect("write");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let answer = tokio::time::timeout(WAIT, read_frame(&mut stream))
            .await
            .expect("in time")
            .expect("frame");
        let msg = parse(&answer);
        assert_eq!(msg.metadata.response_code, ResponseCode::ServFail);
        ids.push(msg.metadata.id);
    }
    ids.sort_unstable();
    assert_eq!(ids, [1, 2]);
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    stream
        .write_all(&framed(&query(3, "www.test.")))
        .await
        .expect("write");
    let answer = tokio::time::timeout(WAIT, read_frame(&mut stream))
        .await
        .expect("in time")
        .expect("frame");
    let msg = parse(&answer);
    assert_eq!(
        (msg.metadata.id, msg.metadata.response_code),
        (3, ResponseCode::NoError)
    );
}
