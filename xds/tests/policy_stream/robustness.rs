//! Clients that misbehave only hurt themselves; many clients are fine.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use xds::proto;

use crate::harness::{
    IDENTITY, POLICY, RawClient, Socket, TestServer, WAIT, acked, at, ready, state,
    subscribe_request, toy_client, type_status, wait_version,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_all_get_the_first_version() {
    const CLIENTS: usize = 1000;
    let socket = Socket::new();
    let server = TestServer::start(
        &socket.path,
        ready(vec![(IDENTITY, at(1, &[("a", 1), ("b", 1)]))]),
    );
    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let (handle, mut watches) = toy_client(&socket, &format!("proxy-{i}"), &[IDENTITY]);
        clients.push((handle, watches.remove(0)));
    }
    for (_, states) in &mut clients {
        let v1 = wait_version(states, "1").await;
        assert_eq!(v1.state, state(&[("a", 1), ("b", 1)]));
    }
    let status = server
        .wait_status("every client ACKed", |s| {
            s.clients.len() == CLIENTS
                && s.clients.iter().all(|c| {
                    c.types
                        .iter()
                        .any(|t| t.type_url == IDENTITY && t.acked_version == "1")
                })
        })
        .await;
    assert_eq!(status.clients.len(), CLIENTS);

    // Everyone follows an update too.
    server.publish(ready(vec![(IDENTITY, at(2, &[("a", 1), ("b", 2)]))]));
    for (_, states) in &mut clients {
        wait_version(states, "2").await;
    }
    for (handle, _) in clients {
        handle.shutdown().await;
    }
    server.stop().await;
}

/// Writes `bytes` on a fresh connection and waits until the server closes it.
async fn write_garbage(socket: &Socket, bytes: &[u8]) {
    let mut conn = UnixStream::connect(&socket.path)
        .await
        .expect("connect for garbage");
    // The server may close before reading everything; a failed write is fine.
    let _ = conn.write_all(bytes).await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(WAIT, conn.read_to_end(&mut sink))
        .await
        .expect("the server closes a garbage connection");
}

#[tokio::test]
async fn garbage_on_the_socket_does_not_disturb_a_real_client() {
    let socket = Socket::new();
    let server = TestServer::start(&socket.path, ready(vec![(IDENTITY, at(1, &[("a", 1)]))]));
    let (client, mut watches) = toy_client(&socket, "proxy-1", &[IDENTITY]);
    wait_version(&mut watches[0], "1").await;

    write_garbage(&socket, &[0xde, 0xad, 0xbe, 0xef].repeat(1000)).await;
    write_garbage(&socket, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    // An HTTP/2 preface followed by nonsense frames.
    let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2.extend_from_slice(&[0xff; 64]);
    write_garbage(&socket, &h2).await;

    server.publish(ready(vec![(IDENTITY, at(2, &[("a", 2)]))]));
    wait_version(&mut watches[0], "2").await;
    assert!(client.status().connected);
    client.shutdown().await;
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_type_is_ignored_while_known_types_flow() {
    let socket = Socket::new();
    let server = TestServer::start(&socket.path, ready(vec![(IDENTITY, at(1, &[("a", 1)]))]));
    let (client, mut watches) = toy_client(&socket, "proxy-1", &[IDENTITY, "test/unknown"]);
    wait_version(&mut watches[0], "1").await;
    server.publish(ready(vec![(IDENTITY, at(2, &[("a", 2)]))]));
    wait_version(&mut watches[0], "2").await;
    let status = server
        .wait_status("ACK of 2", |s| acked(s, "proxy-1", IDENTITY, "2"))
        .await;
    let unknown = type_status(&status, "proxy-1", "test/unknown").expect("subscription listed");
    assert_eq!(unknown.responses_sent, 0);
    assert!(watches[1].borrow().is_none());
    client.shutdown().await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_never_acks_only_stalls_itself() {
    let socket = Socket::new();
    let server = TestServer::start(&socket.path, ready(vec![(IDENTITY, at(1, &[("a", 1)]))]));
    let mut silent = RawClient::subscribe(&socket.path, "silent", &[IDENTITY]).await;
    let first = silent.next().await;
    assert_eq!(first.version_info, "1");
    assert!(first.full_state);

    let (client, mut watches) = toy_client(&socket, "proxy-1", &[IDENTITY]);
    wait_version(&mut watches[0], "1").await;
    server.publish(ready(vec![(IDENTITY, at(2, &[("a", 2)]))]));
    wait_version(&mut watches[0], "2").await;
    server.publish(ready(vec![(IDENTITY, at(3, &[("a", 3)]))]));
    wait_version(&mut watches[0], "3").await;

    let status = server
        .wait_status("proxy-1 ACKed 3", |s| acked(s, "proxy-1", IDENTITY, "3"))
        .await;
    let stalled = type_status(&status, "silent", IDENTITY).expect("silent status");
    assert_eq!(stalled.acked_version, "");
    assert_eq!(stalled.sent_version, "1", "still waiting for its first ACK");
    assert_eq!(stalled.responses_sent, 1, "one response in flight, no more");

    // Once it ACKs, it gets the difference up to the current version.
    silent.ack(&first).await;
    let next = silent.next().await;
    assert_eq!(next.version_info, "3");
    assert!(!next.full_state);
    assert_eq!(next.resources.len(), 1);
    client.shutdown().await;
    server.stop().await;
}

#[tokio::test]
async fn a_nonce_the_server_never_sent_is_ignored() {
    let socket = Socket::new();
    let server = TestServer::start(&socket.path, ready(vec![(IDENTITY, at(1, &[("a", 1)]))]));
    let mut raw = RawClient::subscribe(&socket.path, "raw-1", &[IDENTITY]).await;
    let first = raw.next().await;

    let mut bogus = proto::StreamRequest {
        type_url: IDENTITY.to_string(),
        version_info: "1".to_string(),
        response_nonce: "no-such-nonce".to_string(),
        ..proto::StreamRequest::default()
    };
    raw.send(bogus.clone()).await;
    // A NACK with a foreign nonce, and an ACK for a type never subscribed: also ignored.
    bogus.error_detail = Some(proto::ErrorDetail {
        message: "nonsense".to_string(),
        rejected_resources: vec![],
    });
    raw.send(bogus).await;
    raw.send(proto::StreamRequest {
        type_url: POLICY.to_string(),
        response_nonce: first.nonce.clone(),
        ..proto::StreamRequest::default()
    })
    .await;
    raw.ack(&first).await;
    let status = server
        .wait_status("the real ACK", |s| acked(s, "raw-1", IDENTITY, "1"))
        .await;
    let identity = type_status(&status, "raw-1", IDENTITY).expect("status");
    assert_eq!(
        identity.last_nack_version, "",
        "the foreign NACK was not taken"
    );

    // The old nonce again after its ACK: ignored as well; the stream keeps working.
    raw.ack(&first).await;
    server.publish(ready(vec![(IDENTITY, at(2, &[("a", 2)]))]));
    let second = raw.next().await;
    assert_eq!(second.version_info, "2");
    assert_ne!(second.nonce, first.nonce);
    drop(raw);
    server.stop().await;
}

#[tokio::test]
async fn a_stream_without_client_info_is_refused() {
    let socket = Socket::new();
    let server = TestServer::start(&socket.path, ready(vec![(IDENTITY, at(1, &[("a", 1)]))]));
    let mut anonymous = RawClient::open(&socket.path, subscribe_request(IDENTITY)).await;
    let refused = tokio::time::timeout(WAIT, anonymous.responses.message())
        .await
        .expect("an answer in time");
    match refused {
        Err(status) => assert_eq!(status.code(), tonic::Code::InvalidArgument),
        Ok(other) => panic!("expected an error status, got {other:?}"),
    }
    // Others are served.
    let mut named = RawClient::subscribe(&socket.path, "named", &[IDENTITY]).await;
    assert_eq!(named.next().await.version_info, "1");
    drop(named);
    server.stop().await;
}

#[tokio::test]
async fn a_resubscribe_starts_over_from_what_the_client_says_it_holds() {
    let socket = Socket::new();
    let server = TestServer::start(
        &socket.path,
        ready(vec![(IDENTITY, at(4, &[("a", 4), ("b", 2)]))]),
    );
    let mut raw = RawClient::subscribe(&socket.path, "raw-1", &[IDENTITY]).await;
    let first = raw.next().await;
    assert_eq!(first.resources.len(), 2);
    // Without ACKing, subscribe again claiming a at 4 and an old c.
    let mut again = subscribe_request(IDENTITY);
    again.version_info = "3".to_string();
    again.known_resources = [("a", "4"), ("c", "3")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    raw.send(again).await;
    let second = raw.next().await;
    assert!(!second.full_state);
    let names: Vec<&str> = second.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["b"]);
    assert_eq!(second.removed_resources, vec!["c".to_string()]);
    // The first response's nonce is stale now.
    raw.ack(&first).await;
    raw.ack(&second).await;
    server
        .wait_status("ACK of 4", |s| acked(s, "raw-1", IDENTITY, "4"))
        .await;
    drop(raw);
    server.stop().await;
}
