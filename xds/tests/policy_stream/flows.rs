//! Flow reports and FQDN observations travel back to the agent.

use std::time::Duration;

use xds::{AgentClient, Backoff, FlowReporter, XdsError, proto};

use crate::harness::{IDENTITY, Socket, TestServer, WAIT, at, ready};

fn record(i: u32) -> proto::FlowRecord {
    proto::FlowRecord {
        verdict: "FORWARDED".to_string(),
        traffic_direction: "INGRESS".to_string(),
        l7: Some(proto::flow_record::L7::Http(proto::HttpFlow {
            method: "GET".to_string(),
            url: format!("http://web/{i}"),
            ..proto::HttpFlow::default()
        })),
        ..proto::FlowRecord::default()
    }
}

#[tokio::test]
async fn the_flow_reporter_is_bounded_counts_drops_and_delivers_when_the_agent_comes() {
    let socket = Socket::new();
    // No agent yet: the queue fills up and the rest is dropped, without blocking.
    let reporter = FlowReporter::start_with_backoff(
        socket.endpoint(),
        "l7-proxy/test",
        4,
        Backoff::new(Duration::from_millis(10), Duration::from_millis(50)),
    );
    let accepted: Vec<bool> = (0..10).map(|i| reporter.report(record(i))).collect();
    assert_eq!(accepted.iter().filter(|a| **a).count(), 4);
    assert_eq!(reporter.dropped(), 6);

    let server = TestServer::start(&socket.path, ready(vec![(IDENTITY, at(1, &[]))]));
    tokio::time::timeout(WAIT, async {
        while server.hooks.flows.lock().expect("flows").len() < 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the queued records arrive");
    // More records flow on the open stream.
    assert!(reporter.report(record(10)));
    tokio::time::timeout(WAIT, async {
        while server.hooks.flows.lock().expect("flows").len() < 5 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("a live record arrives");
    let flows = server.hooks.flows.lock().expect("flows").clone();
    assert!(flows.iter().all(|(client, _)| client == "l7-proxy/test"));
    let urls: Vec<String> = flows
        .iter()
        .filter_map(|(_, r)| match &r.l7 {
            Some(proto::flow_record::L7::Http(http)) => Some(http.url.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        urls,
        ["0", "1", "2", "3", "10"].map(|i| format!("http://web/{i}"))
    );
    assert_eq!(reporter.sent(), 5);
    assert_eq!(reporter.dropped(), 6);

    drop(reporter);
    server.stop().await;
}

// Records queued while the agent was away travel in batches, in order.
#[tokio::test]
async fn queued_records_travel_in_batches() {
    let socket = Socket::new();
    let reporter = FlowReporter::start_with_backoff(
        socket.endpoint(),
        "l7-proxy/test",
        2000,
        Backoff::new(Duration::from_millis(10), Duration::from_millis(50)),
    );
    for i in 0..1000 {
        assert!(reporter.report(record(i)));
    }
    let server = TestServer::start(&socket.path, ready(vec![(IDENTITY, at(1, &[]))]));
    tokio::time::timeout(WAIT, async {
        while server.hooks.flows.lock().expect("flows").len() < 1000 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("every record arrives");
    let calls = server
        .hooks
        .flow_calls
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (16..=60).contains(&calls),
        "1000 records in {calls} batches of at most 64"
    );
    let flows = server.hooks.flows.lock().expect("flows").clone();
    let in_order = flows.iter().enumerate().all(|(i, (_, r))| match &r.l7 {
        Some(proto::flow_record::L7::Http(http)) => http.url == format!("http://web/{i}"),
        _ => false,
    });
    assert!(in_order);
    assert_eq!(reporter.sent(), 1000);
    drop(reporter);
    server.stop().await;
}

#[tokio::test]
async fn observe_fqdn_round_trip() {
    let socket = Socket::new();
    let server = TestServer::start(&socket.path, ready(vec![(IDENTITY, at(1, &[]))]));
    let agent = AgentClient::new(socket.endpoint()).expect("client");
    let result = agent
        .observe_fqdn(proto::FqdnObservation {
            endpoint: "default/web".to_string(),
            name: "api.example.".to_string(),
            ips: vec!["192.0.2.1".to_string(), "192.0.2.2".to_string()],
            ttl_seconds: 30,
        })
        .await
        .expect("observation answered");
    assert!(result.allowed);
    assert_eq!(
        result.detail,
        "default/web api.example. 192.0.2.1,192.0.2.2"
    );

    // The agent's refusal comes back as a typed error naming the call and the socket.
    let refused = agent
        .observe_fqdn(proto::FqdnObservation {
            endpoint: "default/web".to_string(),
            name: "refused.example.".to_string(),
            ..proto::FqdnObservation::default()
        })
        .await;
    match refused {
        Err(XdsError::Rpc {
            rpc,
            status,
            endpoint,
        }) => {
            assert_eq!(rpc, "ObserveFqdn");
            assert_eq!(status.code(), tonic::Code::FailedPrecondition);
            assert!(endpoint.contains("policy.sock"), "{endpoint}");
        }
        other => panic!("expected an RPC error, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn fqdn_cache_round_trip() {
    let socket = Socket::new();
    let server = TestServer::start(&socket.path, ready(vec![(IDENTITY, at(1, &[]))]));
    let agent = AgentClient::new(socket.endpoint()).expect("client");
    let all = agent.fqdn_cache("").await.expect("cache listed");
    assert_eq!(all.entries.len(), 1);
    assert_eq!(all.entries[0].name, "api.example.");
    assert_eq!(all.entries[0].source, "lookup");
    assert_eq!(all.metrics.map(|m| m.entries), Some(1));
    let other = agent
        .fqdn_cache("default/other")
        .await
        .expect("cache listed");
    assert!(other.entries.is_empty());
    // The counters travel in the status too.
    let status = agent.status().await.expect("status");
    assert_eq!(status.fqdn.map(|m| m.observations), Some(1));
    server.stop().await;
}

#[tokio::test]
async fn fetch_status_names_a_missing_socket() {
    let socket = Socket::new();
    match xds::fetch_status(&socket.endpoint()).await {
        Err(e @ XdsError::Connect { .. }) => {
            assert!(e.to_string().contains("policy.sock"), "{e}");
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
}
