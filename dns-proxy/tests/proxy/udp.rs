//! Queries over UDP: policy decisions, malformed input, timeouts, truncation, shedding.

use std::time::{Duration, Instant};

use dns_proxy::DenyRcode;
use hickory_proto::op::{Message, ResponseCode};

use crate::harness::{CLIENT_IP, Proxy, STRANGER_IP, WAIT, ask, query, rcode, udp_exchange};

// SEMANTICS 5.1, 5.2: matchName and matchPattern allow; the server sees the original case
// under an ID of the proxy's choosing, the client gets its own ID back.
#[tokio::test]
async fn allowed_names_are_forwarded_with_original_case_and_the_clients_id() {
    let proxy = Proxy::start(|_| {}).await;
    let answer = ask(&proxy, &query(0x1234, "Allowed.EXAMPLE.com.")).await;
    assert_eq!(rcode(&answer), ResponseCode::NoError);
    assert_eq!(answer.metadata.id, 0x1234);
    assert_eq!(answer.answers.len(), 2);
    let answer = ask(&proxy, &query(0x4321, "www.test.")).await;
    assert_eq!(rcode(&answer), ResponseCode::NoError);
    assert_eq!(answer.metadata.id, 0x4321);
    let seen = proxy.upstream.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].1, "Allowed.EXAMPLE.com.");
    assert_eq!(seen[1].1, "www.test.");
    // The proxy's own IDs (both equal to the client's by chance: 1 in 2^32).
    assert!(seen[0].0 != 0x1234 || seen[1].0 != 0x4321);
    assert_eq!(
        proxy
            .metric("dns_proxy_queries_total{outcome=\"forwarded\",transport=\"UDP\"}")
            .await,
        2.0
    );
}

// SEMANTICS 5.5: denied names get REFUSED with the question echoed and the ID preserved,
// and never reach the server.
#[tokio::test]
async fn denied_names_are_refused_with_the_question_echoed() {
    let proxy = Proxy::start(|_| {}).await;
    for name in ["denied.example.org.", "a.b.test.", "example.com."] {
        let answer = ask(&proxy, &query(77, name)).await;
        assert_eq!(rcode(&answer), ResponseCode::Refused, "{name}");
        assert_eq!(answer.metadata.id, 77);
        assert_eq!(answer.queries.len(), 1);
        assert_eq!(answer.queries[0].name.to_ascii(), name);
    }
    assert!(proxy.upstream.seen().is_empty());
}

#[tokio::test]
async fn deny_rcode_nxdomain() {
    let proxy = Proxy::start(|c| c.deny = DenyRcode::NxDomain).await;
    let answer = ask(&proxy, &query(5, "denied.example.org.")).await;
    assert_eq!(rcode(&answer), ResponseCode::NXDomain);
    assert_eq!(answer.queries.len(), 1);
}

// Fail closed: a client that is no local endpoint gets REFUSED, even for allowed names.
#[tokio::test]
async fn a_client_without_policy_is_refused() {
    let proxy = Proxy::start(|_| {}).await;
    let answer = udp_exchange(
        STRANGER_IP,
        proxy.udp(),
        &query(9, "allowed.example.com."),
        WAIT,
    )
    .await
    .expect("an answer");
    let answer = Message::from_vec(&answer).expect("parses");
    assert_eq!(rcode(&answer), ResponseCode::Refused);
    assert!(proxy.upstream.seen().is_empty());
}

// SEMANTICS 5.5: a truncated header is dropped, QDCOUNT 0 or 2 is FORMERR, garbage never
// hurts, and a valid query still works afterwards.
#[tokio::test]
async fn malformed_queries() {
    let proxy = Proxy::start(|_| {}).await;
    let short = udp_exchange(
        CLIENT_IP,
        proxy.udp(),
        &[1, 2, 3],
        Duration::from_millis(200),
    )
    .await;
    assert_eq!(short, None);

    let mut none = query(11, "www.test.");
    none[4..6].copy_from_slice(&0u16.to_be_bytes());
    let answer = ask(&proxy, &none).await;
    assert_eq!(rcode(&answer), ResponseCode::FormErr);
    assert_eq!(answer.metadata.id, 11);

    let mut two = query(12, "www.test.");
    let question = two[12..].to_vec();
    two.extend_from_slice(&question);
    two[4..6].copy_from_slice(&2u16.to_be_bytes());
    let answer = ask(&proxy, &two).await;
    assert_eq!(rcode(&answer), ResponseCode::FormErr);

    let mut state = 0x2545_f491_u32;
    for len in 0..200usize {
        let garbage: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state.to_le_bytes()[0]
            })
            .collect();
        let _ = udp_exchange(CLIENT_IP, proxy.udp(), &garbage, Duration::from_millis(5)).await;
    }
    let answer = ask(&proxy, &query(13, "www.test.")).await;
    assert_eq!(rcode(&answer), ResponseCode::NoError);
    assert!(
        proxy
            .metric("dns_proxy_malformed_queries_total{kind=\"header_truncated\"}")
            .await
            >= 1.0
    );
    assert!(
        proxy
            .metric("dns_proxy_malformed_queries_total{kind=\"question_count\"}")
            .await
            >= 2.0
    );
}

// A server that does not answer: SERVFAIL at the timeout, never silence.
#[tokio::test]
async fn upstream_timeout_is_servfail() {
    let proxy = Proxy::start(|_| {}).await;
    let started = Instant::now();
    let answer = ask(&proxy, &query(21, "drop.test.")).await;
    assert_eq!(rcode(&answer), ResponseCode::ServFail);
    assert_eq!(answer.metadata.id, 21);
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert_eq!(
        proxy
            .metric("dns_proxy_upstream_errors_total{kind=\"timeout\"}")
            .await,
        1.0
    );
}

// Packets with another ID or another question are ignored; the real answer still counts.
#[tokio::test]
async fn mismatching_answers_are_ignored() {
    let proxy = Proxy::start(|_| {}).await;
    let answer = ask(&proxy, &query(31, "spoof.test.")).await;
    assert_eq!(rcode(&answer), ResponseCode::NoError);
    assert_eq!(answer.answers.len(), 2);
}

// An answer over 512 bytes to a client without EDNS comes back truncated (TC) and the
// same query over TCP gets all of it.
#[tokio::test]
async fn big_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let proxy = Proxy::start(|_| {}).await;
    let bytes = query(41, "big.test.");
    let answer = udp_exchange(CLIENT_IP, proxy.udp(), &bytes, WAIT)
        .await
        .expect("answer");
    assert!(answer.len() <= 512);
    let msg = Message::from_vec(&answer).expect("parses");
    assert!(msg.metadata.truncation);
    assert_eq!(msg.metadata.id, 41);
    assert!(msg.answers.is_empty());

    let whole = crate::tcp::exchange(&proxy, &[bytes]).await;
    let msg = Message::from_vec(&whole[0]).expect("parses");
    assert!(!msg.metadata.truncation);
    assert_eq!(msg.answers.len(), 60);
    assert_eq!(proxy.metric("dns_proxy_truncated_answers_total").await, 1.0);
}

// --max-in-flight: past it a query is answered SERVFAIL at once and counted.
#[tokio::test]
async fn the_in_flight_bound_sheds_with_servfail() {
    let proxy = Proxy::start(|c| {
        c.max_in_flight = 2;
        c.upstream_timeout = Duration::from_secs(3);
    })
    .await;
    let p = &proxy;
    let (q1, q2) = (query(51, "drop.test."), query(52, "drop.test."));
    let slow = async {
        tokio::join!(
            udp_exchange(CLIENT_IP, p.udp(), &q1, WAIT),
            udp_exchange(CLIENT_IP, p.udp(), &q2, WAIT),
        )
    };
    let shed = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let answer = ask(p, &query(53, "www.test.")).await;
        (answer, started.elapsed())
    };
    let ((a, b), (answer, took)) = tokio::join!(slow, shed);
    assert_eq!(rcode(&answer), ResponseCode::ServFail);
    assert_eq!(answer.metadata.id, 53);
    assert!(took < Duration::from_secs(1), "shed at once, took {took:?}");
    for held in [a, b] {
        let msg = Message::from_vec(&held.expect("answered")).expect("parses");
        assert_eq!(rcode(&msg), ResponseCode::ServFail);
    }
    assert_eq!(proxy.metric("dns_proxy_queries_shed_total").await, 1.0);
    // Permits come back: the next query is served.
    let answer = ask(&proxy, &query(54, "www.test.")).await;
    assert_eq!(rcode(&answer), ResponseCode::NoError);
}

// Before the first policy arrives (no agent at all) every query is refused: fail closed,
// and nothing reaches the server.
#[tokio::test]
async fn no_policy_yet_is_refused() {
    let upstream = crate::harness::Upstream::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = dns_proxy::app::Config::new(
        xds::Endpoint::Unix(dir.path().join("nobody.sock")),
        dns_proxy::app::Mode::Forward {
            listen: (CLIENT_IP, 0).into(),
            upstream: upstream.addr,
        },
    );
    config.admin = (CLIENT_IP, 0).into();
    let running = dns_proxy::app::start(config).await.expect("starts");
    let answer = udp_exchange(CLIENT_IP, running.udp[0], &query(61, "www.test."), WAIT)
        .await
        .expect("an answer");
    let answer = Message::from_vec(&answer).expect("parses");
    assert_eq!(rcode(&answer), ResponseCode::Refused);
    assert_eq!(answer.metadata.id, 61);
    assert!(upstream.seen().is_empty());
    running.shutdown().await;
}

// Upstream sockets are pooled and closed once idle; the next query opens a new one.
#[tokio::test]
async fn idle_upstream_sockets_are_closed() {
    let proxy = Proxy::start(|c| c.udp_upstream_idle = Duration::from_millis(100)).await;
    for id in [71, 72] {
        assert_eq!(
            rcode(&ask(&proxy, &query(id, "www.test.")).await),
            ResponseCode::NoError
        );
    }
    assert_eq!(proxy.metric("dns_proxy_upstream_udp_sockets").await, 1.0);
    let deadline = Instant::now() + WAIT;
    while proxy.metric("dns_proxy_upstream_udp_sockets").await != 0.0 {
        assert!(Instant::now() < deadline, "the idle socket is never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        rcode(&ask(&proxy, &query(73, "www.test.")).await),
        ResponseCode::NoError
    );
}
