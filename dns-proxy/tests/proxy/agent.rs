//! What the agent sees and what happens without it: FQDN observations and the hold
//! (SEMANTICS 6.2, 6.3), flow records (8.2), and answering while the agent is away.

use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use xds::proto;

use crate::harness::{
    CLIENT_IDENTITY, CLIENT_IP, DNS_IDENTITY, ORIGIN, Proxy, ask, eventually, query, rcode,
};

// SEMANTICS 6.2: the endpoint, the lower-cased qualified question name, every A/AAAA IP,
// the minimum TTL; 6.3: the answer waits for the agent's confirmation.
#[tokio::test]
async fn observations_reach_the_agent_and_hold_the_answer() {
    let proxy = Proxy::start(|c| c.fqdn_hold = Duration::from_secs(2)).await;
    *proxy.agent().hooks.fqdn_delay.lock().expect("delay") = Duration::from_millis(150);
    let started = Instant::now();
    let answer = ask(&proxy, &query(1, "WWW.Test.")).await;
    let took = started.elapsed();
    assert_eq!(rcode(&answer), ResponseCode::NoError);
    assert!(took >= Duration::from_millis(150), "held {took:?}");
    let observations = proxy.agent().observations();
    assert_eq!(
        observations,
        [proto::FqdnObservation {
            endpoint: "default/client".into(),
            name: "www.test.".into(),
            ips: vec!["192.0.2.1".into(), "2001:db8::1".into()],
            ttl_seconds: 60,
        }]
    );
    assert_eq!(proxy.metric("dns_proxy_fqdn_hold_seconds_count").await, 1.0);
    assert_eq!(
        proxy.metric("dns_proxy_fqdn_hold_timeouts_total").await,
        0.0
    );
}

// An answer whose IPs the agent already allows for the endpoint and name is not held: its
// later expiry reaches the agent in the background.
#[tokio::test]
async fn an_answer_the_agent_already_allows_is_released_at_once() {
    let proxy = Proxy::start(|c| c.fqdn_hold = Duration::from_secs(2)).await;
    *proxy.agent().hooks.fqdn_delay.lock().expect("delay") = Duration::from_millis(150);
    let answer = ask(&proxy, &query(1, "www.test.")).await;
    assert_eq!(rcode(&answer), ResponseCode::NoError);
    assert_eq!(proxy.agent().observations().len(), 1);

    let started = Instant::now();
    let answer = ask(&proxy, &query(2, "WWW.test.")).await;
    let took = started.elapsed();
    assert_eq!(rcode(&answer), ResponseCode::NoError);
    assert!(took < Duration::from_millis(150), "not held: {took:?}");
    assert_eq!(proxy.metric("dns_proxy_fqdn_known_total").await, 1.0);
    eventually("the background refresh at the agent", || {
        proxy.agent().observations().len() == 2
    })
    .await;
    let refresh = &proxy.agent().observations()[1];
    assert_eq!((refresh.name.as_str(), refresh.ips.len()), ("www.test.", 2));
    assert!((59..=60).contains(&refresh.ttl_seconds), "{refresh:?}");
}

// SEMANTICS 6.3: a stalled agent holds the answer only up to the bound, counted.
#[tokio::test]
async fn a_stalled_agent_releases_at_the_bound() {
    let proxy = Proxy::start(|c| c.fqdn_hold = Duration::from_millis(100)).await;
    *proxy.agent().hooks.fqdn_delay.lock().expect("delay") = Duration::from_secs(5);
    let started = Instant::now();
    let answer = ask(&proxy, &query(2, "www.test.")).await;
    let took = started.elapsed();
    assert_eq!(rcode(&answer), ResponseCode::NoError);
    assert!(took >= Duration::from_millis(100), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(
        proxy.metric("dns_proxy_fqdn_hold_timeouts_total").await,
        1.0
    );
    // Released, but the agent still learns the IPs.
    eventually("the observation at the agent", || {
        !proxy.agent().observations().is_empty()
    })
    .await;
}

fn dns(record: &proto::FlowRecord) -> &proto::DnsFlow {
    match &record.l7 {
        Some(proto::flow_record::L7::Dns(dns)) => dns,
        other => panic!("not a DNS record: {other:?}"),
    }
}

// SEMANTICS 8.2: request and response records for an allowed query, one DROPPED record for
// a denied one, ERROR/ServFail for a timeout.
#[tokio::test]
async fn flow_records_reach_the_agent() {
    let proxy = Proxy::start(|_| {}).await;
    ask(&proxy, &query(1, "allowed.example.com.")).await;
    ask(&proxy, &query(2, "denied.example.org.")).await;
    ask(&proxy, &query(3, "drop.test.")).await;
    eventually("five flow records", || proxy.agent().flows().len() >= 5).await;
    let flows = proxy.agent().flows();
    let allowed: Vec<_> = flows
        .iter()
        .filter(|r| dns(r).query == "allowed.example.com.")
        .collect();
    assert_eq!(allowed.len(), 2);
    let (request, response) = (allowed[0], allowed[1]);
    assert_eq!(request.verdict, "FORWARDED");
    assert!(!request.is_reply && response.is_reply);
    assert_eq!(request.traffic_direction, "EGRESS");
    assert_eq!(request.l4_protocol, "UDP");
    assert_eq!(request.matched_rule, ORIGIN);
    assert_eq!(dns(request).qtypes, ["A"]);
    let source = request.source.as_ref().expect("source");
    assert_eq!(source.ip, CLIENT_IP.to_string());
    assert_eq!(source.identity, CLIENT_IDENTITY);
    assert_eq!(
        (source.namespace.as_str(), source.pod_name.as_str()),
        ("default", "client")
    );
    let destination = request.destination.as_ref().expect("destination");
    assert_eq!(destination.identity, DNS_IDENTITY);
    assert_eq!(destination.namespace, "kube-system");
    assert_eq!(destination.port, u32::from(proxy.upstream.addr.port()));
    assert_eq!(response.verdict, "FORWARDED");
    assert_eq!(dns(response).rcode, "NoError");
    assert_eq!(dns(response).ips, ["192.0.2.1", "2001:db8::1"]);
    assert_eq!(dns(response).ttl, 60);

    let denied: Vec<_> = flows
        .iter()
        .filter(|r| dns(r).query == "denied.example.org.")
        .collect();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].verdict, "DROPPED");
    assert_eq!(dns(denied[0]).rcode, "Refused");
    assert!(!denied[0].matched_rule.is_empty());

    let failed: Vec<_> = flows
        .iter()
        .filter(|r| dns(r).query == "drop.test." && r.is_reply)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].verdict, "ERROR");
    assert_eq!(dns(failed[0]).rcode, "ServFail");
}

// Issue item 7: the proxy keeps answering with the last good policy while the agent is
// away, and the FQDN hold does not wait for a dead agent.
#[tokio::test]
async fn answers_continue_after_the_agent_goes_away() {
    let mut proxy = Proxy::start(|c| c.fqdn_hold = Duration::from_secs(1)).await;
    proxy.agent.take().expect("agent").stop().await;
    let started = Instant::now();
    let answer = ask(&proxy, &query(1, "www.test.")).await;
    assert_eq!(rcode(&answer), ResponseCode::NoError);
    assert!(started.elapsed() < Duration::from_secs(2));
    let answer = ask(&proxy, &query(2, "denied.example.org.")).await;
    assert_eq!(rcode(&answer), ResponseCode::Refused);
    let answer = crate::tcp::exchange(&proxy, &[query(3, "allowed.example.com.")]).await;
    assert_eq!(
        rcode(&hickory_proto::op::Message::from_vec(&answer[0]).expect("parses")),
        ResponseCode::NoError
    );
    assert_eq!(proxy.get("/ready").await.0, 200);
}
