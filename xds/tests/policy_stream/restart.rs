//! The agent restarts while a proxy keeps enforcing (DESIGN "Protocol", SEMANTICS 9.1).

use crate::harness::{
    IDENTITY, POLICY, Socket, TestServer, acked, at, ready, state, toy_client, type_status,
    wait_version,
};

#[tokio::test]
async fn the_client_keeps_its_state_across_a_server_restart_and_resyncs_by_difference() {
    let socket = Socket::new();
    let first = TestServer::start(
        &socket.path,
        ready(vec![
            (IDENTITY, at(5, &[("a", 1), ("b", 4), ("c", 5)])),
            (POLICY, at(3, &[("p", 3)])),
        ]),
    );
    let (client, mut watches) = toy_client(&socket, "proxy-1", &[IDENTITY, POLICY]);
    wait_version(&mut watches[0], "5").await;
    wait_version(&mut watches[1], "3").await;
    first
        .wait_status("both ACKs", |s| {
            acked(s, "proxy-1", IDENTITY, "5") && acked(s, "proxy-1", POLICY, "3")
        })
        .await;

    first.stop().await;
    tokio::time::timeout(crate::harness::WAIT, async {
        while client.status().connected {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the client notices the server is gone");
    // Disconnected, the last good state stays published.
    let kept = watches[0].borrow().clone().expect("state kept");
    assert_eq!(kept.version, "5");
    assert_eq!(kept.state, state(&[("a", 1), ("b", 4), ("c", 5)]));

    // A new server on the same socket: only b changed; the policies are the same version.
    let second = TestServer::start(
        &socket.path,
        ready(vec![
            (IDENTITY, at(6, &[("a", 1), ("b", 6), ("c", 5)])),
            (POLICY, at(3, &[("p", 3)])),
        ]),
    );
    let v6 = wait_version(&mut watches[0], "6").await;
    assert_eq!(v6.state, state(&[("a", 1), ("b", 6), ("c", 5)]));
    let status = second
        .wait_status("the resync", |s| {
            acked(s, "proxy-1", IDENTITY, "6") && acked(s, "proxy-1", POLICY, "3")
        })
        .await;
    let identity = type_status(&status, "proxy-1", IDENTITY).expect("identity status");
    assert_eq!(identity.responses_sent, 1);
    assert_eq!(identity.resources_sent, 1, "only b was sent");
    let policy = type_status(&status, "proxy-1", POLICY).expect("policy status");
    assert_eq!(
        policy.responses_sent, 0,
        "the client already held this version exactly: nothing sent"
    );
    assert_eq!(
        watches[1].borrow().as_ref().map(|v| v.version.clone()),
        Some("3".to_string())
    );

    client.shutdown().await;
    second.stop().await;
}

// A server that starts with a different state at a lower version (it lost its counter)
// is still followed: the client takes the server's word.
#[tokio::test]
async fn a_client_follows_a_restarted_server_with_other_content() {
    let socket = Socket::new();
    let first = TestServer::start(
        &socket.path,
        ready(vec![(IDENTITY, at(9, &[("a", 9), ("b", 9)]))]),
    );
    let (client, mut watches) = toy_client(&socket, "proxy-1", &[IDENTITY]);
    wait_version(&mut watches[0], "9").await;
    first.stop().await;

    let second = TestServer::start(&socket.path, ready(vec![(IDENTITY, at(2, &[("a", 2)]))]));
    let v2 = wait_version(&mut watches[0], "2").await;
    assert_eq!(v2.state, state(&[("a", 2)]), "b was removed");
    client.shutdown().await;
    second.stop().await;
}
