//! `requires`: the identity map reaches a client before the policies that refer to it.

use std::sync::{Arc, Mutex};

use crate::harness::{
    IDENTITY, POLICY, RawClient, Socket, TestServer, Toy, at, info, ready, type_status,
    wait_version,
};

fn with_requirement(identity_version: u64, policy_version: u64) -> xds::Snapshot {
    let mut policy = at(policy_version, &[("default/web", policy_version)]);
    policy.requires = Some((IDENTITY.to_string(), identity_version));
    ready(vec![
        (
            IDENTITY,
            at(identity_version, &[("1000", identity_version)]),
        ),
        (POLICY, policy),
    ])
}

#[tokio::test]
async fn policies_wait_until_the_identities_they_need_are_acked() {
    let socket = Socket::new();
    let server = TestServer::start(&socket.path, with_requirement(1, 1));

    // A hand-driven client that subscribes to the policies first.
    let mut raw = RawClient::subscribe(&socket.path, "raw-1", &[POLICY, IDENTITY]).await;
    let first = raw.next().await;
    assert_eq!(first.type_url, IDENTITY, "identities go first");
    let status = server
        .wait_status("the identity in flight", |s| {
            type_status(s, "raw-1", IDENTITY).is_some_and(|t| t.sent_version == "1")
        })
        .await;
    let policy = type_status(&status, "raw-1", POLICY).expect("policy status");
    assert_eq!(
        policy.responses_sent, 0,
        "held back until identity 1 is ACKed"
    );

    raw.ack(&first).await;
    let second = raw.next().await;
    assert_eq!(second.type_url, POLICY);
    assert_eq!(second.version_info, "1");
    raw.ack(&second).await;

    // Both move: identity 2 must be ACKed before policy 2 goes out.
    server.publish(with_requirement(2, 2));
    let third = raw.next().await;
    assert_eq!(
        (third.type_url.as_str(), third.version_info.as_str()),
        (IDENTITY, "2")
    );
    raw.ack(&third).await;
    let fourth = raw.next().await;
    assert_eq!(
        (fourth.type_url.as_str(), fourth.version_info.as_str()),
        (POLICY, "2")
    );
    drop(raw);
    server.stop().await;
}

#[tokio::test]
async fn a_real_client_applies_identities_before_policies() {
    let socket = Socket::new();
    let server = TestServer::start(&socket.path, with_requirement(1, 1));
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut builder = xds::ClientBuilder::new(socket.endpoint(), info("proxy-1"));
    let mut policies = builder.subscribe(Toy {
        type_url: POLICY,
        log: Some(log.clone()),
    });
    let mut identities = builder.subscribe(Toy {
        type_url: IDENTITY,
        log: Some(log.clone()),
    });
    let client = builder.start();
    wait_version(&mut policies, "1").await;
    server.publish(with_requirement(2, 2));
    wait_version(&mut policies, "2").await;
    wait_version(&mut identities, "2").await;
    let applied = log.lock().expect("log").clone();
    assert_eq!(
        applied,
        vec![
            format!("{IDENTITY} 1"),
            format!("{POLICY} 1"),
            format!("{IDENTITY} 2"),
            format!("{POLICY} 2"),
        ]
    );
    client.shutdown().await;
    server.stop().await;
}

// A client that does not use the identity map is not held back by it.
#[tokio::test]
async fn a_requirement_on_an_unsubscribed_type_does_not_apply() {
    let socket = Socket::new();
    let server = TestServer::start(&socket.path, with_requirement(1, 1));
    let mut raw = RawClient::subscribe(&socket.path, "policy-only", &[POLICY]).await;
    let first = raw.next().await;
    assert_eq!(first.type_url, POLICY);
    drop(raw);
    server.stop().await;
}
