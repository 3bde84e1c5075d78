//! First sync, deltas, NACK handling, readiness (SEMANTICS 9.1-9.3).

use std::time::Duration;

use xds::proto;

use crate::harness::{
    IDENTITY, POLICY, Socket, TestServer, acked, at, ready, resource, state, toy_client,
    type_status, wait_version,
};

// SEMANTICS 9.1, 9.3: the first version reaches the client and its ACK shows in status.
#[tokio::test]
async fn first_sync_and_ack_show_in_status() {
    let socket = Socket::new();
    let server = TestServer::start(
        &socket.path,
        ready(vec![
            (IDENTITY, at(1, &[("id-1", 1), ("id-2", 1)])),
            (POLICY, at(4, &[("default/web", 3)])),
        ]),
    );
    let (client, mut watches) = toy_client(&socket, "proxy-1", &[IDENTITY, POLICY]);

    let ids = wait_version(&mut watches[0], "1").await;
    assert_eq!(ids.state, state(&[("id-1", 1), ("id-2", 1)]));
    let policies = wait_version(&mut watches[1], "4").await;
    assert_eq!(policies.state, state(&[("default/web", 3)]));

    let status = server
        .wait_status("both ACKs", |s| {
            acked(s, "proxy-1", IDENTITY, "1") && acked(s, "proxy-1", POLICY, "4")
        })
        .await;
    assert!(status.ready);
    assert_eq!(status.versions.get(IDENTITY).map(String::as_str), Some("1"));
    assert_eq!(status.clients.len(), 1);
    let entry = &status.clients[0];
    assert_eq!(entry.client.as_ref().map(|c| c.kind.as_str()), Some("test"));
    assert!(entry.connected_unix_ms > 0);
    let identity = type_status(&status, "proxy-1", IDENTITY).expect("identity status");
    assert_eq!(identity.sent_version, "", "nothing in flight after the ACK");
    assert_eq!(identity.last_nack_version, "");
    assert_eq!(identity.responses_sent, 1);
    assert_eq!(identity.resources_sent, 2);

    let client_status = client.status();
    assert!(client_status.connected);
    assert_eq!(client_status.types[IDENTITY].version, "1");
    assert_eq!(client_status.types[POLICY].version, "4");

    // The same answer through the RPC that `node-agent status` uses.
    let fetched = xds::fetch_status(&socket.endpoint())
        .await
        .expect("fetch status");
    assert!(acked(&fetched, "proxy-1", POLICY, "4"));

    client.shutdown().await;
    server
        .wait_status("the client leaves status", |s| s.clients.is_empty())
        .await;
    server.stop().await;
}

// SEMANTICS 9.1: an update carries only what changed since the client's ACKed state.
#[tokio::test]
async fn an_update_is_sent_as_a_delta() {
    let socket = Socket::new();
    let server = TestServer::start(
        &socket.path,
        ready(vec![(IDENTITY, at(1, &[("a", 1), ("b", 1), ("c", 1)]))]),
    );
    let (client, mut watches) = toy_client(&socket, "proxy-1", &[IDENTITY]);
    wait_version(&mut watches[0], "1").await;
    server
        .wait_status("ACK of 1", |s| acked(s, "proxy-1", IDENTITY, "1"))
        .await;

    // a changed, b unchanged, c removed, d added.
    server.publish(ready(vec![(
        IDENTITY,
        at(2, &[("a", 2), ("b", 1), ("d", 2)]),
    )]));
    let v2 = wait_version(&mut watches[0], "2").await;
    assert_eq!(v2.state, state(&[("a", 2), ("b", 1), ("d", 2)]));

    let status = server
        .wait_status("ACK of 2", |s| acked(s, "proxy-1", IDENTITY, "2"))
        .await;
    let identity = type_status(&status, "proxy-1", IDENTITY).expect("identity status");
    assert_eq!(identity.responses_sent, 2);
    assert_eq!(
        identity.resources_sent,
        3 + 2,
        "only a and d were sent again"
    );

    // A new version with no change for this client still moves its version (so that the
    // agent can wait for it), with an empty response.
    server.publish(ready(vec![(
        IDENTITY,
        at(3, &[("a", 2), ("b", 1), ("d", 2)]),
    )]));
    wait_version(&mut watches[0], "3").await;
    let status = server
        .wait_status("ACK of 3", |s| acked(s, "proxy-1", IDENTITY, "3"))
        .await;
    let identity = type_status(&status, "proxy-1", IDENTITY).expect("identity status");
    assert_eq!((identity.responses_sent, identity.resources_sent), (3, 5));

    client.shutdown().await;
    server.stop().await;
}

// SEMANTICS 9.1: a NACKed version is never applied; the client keeps its last good one,
// the server shows the NACK, does not resend that version, and the next version heals.
#[tokio::test]
async fn a_nack_keeps_the_last_good_version_until_the_next_one() {
    let socket = Socket::new();
    let server = TestServer::start(
        &socket.path,
        ready(vec![
            (IDENTITY, at(1, &[("a", 1)])),
            (POLICY, at(1, &[("p", 1)])),
        ]),
    );
    let (client, mut watches) = toy_client(&socket, "proxy-1", &[IDENTITY, POLICY]);
    wait_version(&mut watches[0], "1").await;
    server
        .wait_status("ACK of 1", |s| acked(s, "proxy-1", IDENTITY, "1"))
        .await;

    server.publish(ready(vec![
        (IDENTITY, at(2, &[("a", 2), ("bad", 2)])),
        (POLICY, at(1, &[("p", 1)])),
    ]));
    let status = server
        .wait_status("the NACK of 2", |s| {
            type_status(s, "proxy-1", IDENTITY).is_some_and(|t| t.last_nack_version == "2")
        })
        .await;
    let identity = type_status(&status, "proxy-1", IDENTITY).expect("identity status");
    assert_eq!(identity.acked_version, "1");
    assert_eq!(
        identity.sent_version, "",
        "the NACK ended the response in flight"
    );
    assert!(
        identity.last_nack_error.contains("bad: a bad resource"),
        "error text: {}",
        identity.last_nack_error
    );
    assert!(identity.last_nack_unix_ms > 0);
    let current = watches[0].borrow().clone().expect("a version");
    assert_eq!(current.version, "1");
    assert_eq!(
        current.state,
        state(&[("a", 1)]),
        "nothing of version 2 applied"
    );
    let nack = client.status().types[IDENTITY]
        .last_nack
        .clone()
        .expect("the client records its NACK");
    assert_eq!(nack.version, "2");
    assert_eq!(client.status().types[IDENTITY].version, "1");

    // The snapshot changes in another type only: the identity version is still the
    // rejected one, so nothing is resent for it. The policy's arrival proves the server
    // has looked at the identity type again (it reviews every type on each change).
    server.publish(ready(vec![
        (IDENTITY, at(2, &[("a", 2), ("bad", 2)])),
        (POLICY, at(2, &[("p", 2)])),
    ]));
    wait_version(&mut watches[1], "2").await;
    let status = server
        .wait_status("ACK of policy 2", |s| acked(s, "proxy-1", POLICY, "2"))
        .await;
    let identity = type_status(&status, "proxy-1", IDENTITY).expect("identity status");
    assert_eq!(
        identity.responses_sent, 2,
        "the rejected version was not resent"
    );
    assert_eq!(client.status().types[IDENTITY].responses, 2);

    // Version 3 drops the bad resource: the client recovers, and gets a's change of
    // version 2 again (the diff is against what it ACKed).
    server.publish(ready(vec![
        (IDENTITY, at(3, &[("a", 2), ("e", 3)])),
        (POLICY, at(2, &[("p", 2)])),
    ]));
    let v3 = wait_version(&mut watches[0], "3").await;
    assert_eq!(v3.state, state(&[("a", 2), ("e", 3)]));
    let status = server
        .wait_status("ACK of 3", |s| acked(s, "proxy-1", IDENTITY, "3"))
        .await;
    let identity = type_status(&status, "proxy-1", IDENTITY).expect("identity status");
    assert_eq!(
        identity.last_nack_version, "2",
        "the last NACK stays visible"
    );
    assert_eq!(identity.responses_sent, 3);

    client.shutdown().await;
    server.stop().await;
}

// SEMANTICS 9.2: nothing is sent before the agent is ready, not even an empty state.
#[tokio::test]
async fn nothing_is_sent_until_the_snapshot_is_ready() {
    let socket = Socket::new();
    let mut loading = ready(vec![(IDENTITY, at(1, &[("a", 1)]))]);
    loading.ready = false;
    let server = TestServer::start(&socket.path, loading);
    let (client, mut watches) = toy_client(&socket, "proxy-1", &[IDENTITY]);

    // The status entry is written after the server has considered sending.
    let status = server
        .wait_status("the subscription", |s| {
            type_status(s, "proxy-1", IDENTITY).is_some()
        })
        .await;
    assert!(!status.ready);
    let identity = type_status(&status, "proxy-1", IDENTITY).expect("identity status");
    assert_eq!(identity.responses_sent, 0);
    assert_eq!(identity.sent_version, "");
    assert!(watches[0].borrow().is_none());
    assert_eq!(client.status().types[IDENTITY].responses, 0);

    server.publish(ready(vec![(IDENTITY, at(2, &[("a", 1), ("b", 2)]))]));
    let v2 = wait_version(&mut watches[0], "2").await;
    assert_eq!(v2.state, state(&[("a", 1), ("b", 2)]));

    client.shutdown().await;
    server.stop().await;
}

// The same stream over TCP.
#[tokio::test]
async fn serves_over_tcp() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind TCP");
    let addr = listener.local_addr().expect("local address");
    let (snapshots, receiver) = tokio::sync::watch::channel(std::sync::Arc::new(ready(vec![(
        IDENTITY,
        at(1, &[("a", 1)]),
    )])));
    let server = xds::PolicyServer::new(
        receiver,
        std::sync::Arc::new(crate::harness::TestHooks::default()),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.clone().serve_tcp_listener(listener, async move {
        let _ = stopped.await;
    }));

    let endpoint = xds::Endpoint::Tcp(format!("http://{addr}"));
    let mut builder = xds::ClientBuilder::new(endpoint.clone(), crate::harness::info("tcp-1"))
        .backoff(Duration::from_millis(10), Duration::from_millis(100));
    let mut ids = builder.subscribe(crate::harness::Toy::new(IDENTITY));
    let client = builder.start();
    wait_version(&mut ids, "1").await;
    let status: proto::StatusResponse =
        tokio::time::timeout(crate::harness::WAIT, xds::fetch_status(&endpoint))
            .await
            .expect("status in time")
            .expect("status over TCP");
    assert_eq!(status.clients.len(), 1);

    client.shutdown().await;
    drop(snapshots);
    drop(stop);
    tokio::time::timeout(crate::harness::WAIT, task)
        .await
        .expect("stops in time")
        .expect("server task")
        .expect("server ends cleanly");
}

// With a change log, an update is found from the names changed since the client's ACKed
// version (not by diffing every resource), and says exactly the same as the whole diff.
// A log that does not reach back to the client's version falls back to the whole diff.
#[tokio::test]
async fn a_logged_update_is_sent_as_the_same_delta() {
    use xds::server::ChangeLog;
    let socket = Socket::new();
    let mut identities = at(1, &[("a", 1), ("b", 1), ("c", 1)]);
    identities.changes = Some(ChangeLog::starting_at(1));
    let server = TestServer::start(&socket.path, ready(vec![(IDENTITY, identities.clone())]));
    let (client, mut watches) = toy_client(&socket, "proxy-1", &[IDENTITY]);
    wait_version(&mut watches[0], "1").await;
    server
        .wait_status("ACK of 1", |s| acked(s, "proxy-1", IDENTITY, "1"))
        .await;

    // a changed, b unchanged, c removed, d added; e added then removed again.
    identities.upsert("a".into(), resource("a", 2), 2);
    identities.remove("c", 2);
    identities.upsert("d".into(), resource("d", 2), 2);
    identities.upsert("e".into(), resource("e", 2), 2);
    identities.remove("e", 2);
    identities.version = 2;
    server.publish(ready(vec![(IDENTITY, identities.clone())]));
    let v2 = wait_version(&mut watches[0], "2").await;
    assert_eq!(v2.state, state(&[("a", 2), ("b", 1), ("d", 2)]));
    let status = server
        .wait_status("ACK of 2", |s| acked(s, "proxy-1", IDENTITY, "2"))
        .await;
    let sent = type_status(&status, "proxy-1", IDENTITY).expect("identity status");
    assert_eq!((sent.responses_sent, sent.resources_sent), (2, 3 + 2));

    // The next change builds on the state the ACK left (the delta, applied).
    identities.upsert("b".into(), resource("b", 3), 3);
    identities.version = 3;
    server.publish(ready(vec![(IDENTITY, identities.clone())]));
    let v3 = wait_version(&mut watches[0], "3").await;
    assert_eq!(v3.state, state(&[("a", 2), ("b", 3), ("d", 2)]));
    let status = server
        .wait_status("ACK of 3", |s| acked(s, "proxy-1", IDENTITY, "3"))
        .await;
    let sent = type_status(&status, "proxy-1", IDENTITY).expect("identity status");
    assert_eq!((sent.responses_sent, sent.resources_sent), (3, 3 + 2 + 1));

    // A log starting after the client's version (as after an agent restart) cannot say
    // what changed: the whole diff finds that "a" went and "f" came.
    let mut restarted = at(5, &[("b", 3), ("d", 2), ("f", 5)]);
    restarted.changes = Some(ChangeLog::starting_at(5));
    server.publish(ready(vec![(IDENTITY, restarted)]));
    let v5 = wait_version(&mut watches[0], "5").await;
    assert_eq!(v5.state, state(&[("b", 3), ("d", 2), ("f", 5)]));

    client.shutdown().await;
    server.stop().await;
}
