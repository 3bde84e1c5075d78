//! Flow records (SEMANTICS 8.1): one for each request (FORWARDED or DROPPED) and one for
//! its response (status and latency), sent to the agent without ever blocking a request
//! (the reporter's queue is bounded; overflow is counted, not waited for).

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use xds::proto;

use crate::policy::{EndpointPolicies, IdentityMap};
use crate::proxy::{ConnInfo, Decision, Direction, RequestOutcome};

/// Header values never sent in clear (SEMANTICS 8.6).
const SENSITIVE_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

pub fn records(
    conn: &ConnInfo,
    outcome: &RequestOutcome<'_>,
    policies: Option<&EndpointPolicies>,
    identities: Option<&IdentityMap>,
) -> [proto::FlowRecord; 2] {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let endpoint = |addr: SocketAddr| {
        let identity = identities.map(|i| i.lookup(addr.ip())).unwrap_or(0);
        let labels: Vec<String> = identities
            .and_then(|i| i.labels(identity))
            .map(<[String]>::to_vec)
            .unwrap_or_default();
        let namespace = labels
            .iter()
            .find_map(|l| l.strip_prefix("k8s:io.kubernetes.pod.namespace="))
            .unwrap_or_default()
            .to_owned();
        let pod_name = policies
            .and_then(|p| p.endpoint_by_ip(addr.ip()))
            .map(|e| e.pod.clone())
            .unwrap_or_default();
        proto::FlowEndpoint {
            ip: addr.ip().to_string(),
            port: u32::from(addr.port()),
            identity,
            namespace,
            pod_name,
            labels,
        }
    };
    let source = endpoint(conn.original_src);
    let destination = endpoint(conn.original_dst);
    let (verdict, matched_rule) = match outcome.decision {
        Decision::Allow { rule, .. } => ("FORWARDED", rule.clone()),
        // The deny reason names the policy that denied (for a same-node flow decided by
        // both sides: the source's egress or the destination's ingress).
        Decision::Deny { reason } => ("DROPPED", reason.clone()),
        Decision::Reject { .. } => ("DROPPED", String::new()),
    };
    let headers = outcome
        .headers
        .iter()
        .map(|(name, value)| {
            let value = if SENSITIVE_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                "[redacted]".to_owned()
            } else {
                (*value).to_owned()
            };
            ((*name).to_owned(), value)
        })
        .collect();
    let direction = match conn.direction {
        Direction::Ingress => "INGRESS",
        Direction::Egress => "EGRESS",
    };
    let request = proto::FlowRecord {
        time_unix_nano: now,
        verdict: verdict.into(),
        traffic_direction: direction.into(),
        is_reply: false,
        source: Some(source.clone()),
        destination: Some(destination.clone()),
        l4_protocol: "TCP".into(),
        matched_rule: matched_rule.clone(),
        l7: Some(proto::flow_record::L7::Http(proto::HttpFlow {
            method: outcome.method.to_owned(),
            url: outcome.url.clone(),
            code: 0,
            protocol: outcome.protocol.into(),
            latency_ns: 0,
            headers,
        })),
    };
    let response = proto::FlowRecord {
        time_unix_nano: now,
        verdict: verdict.into(),
        traffic_direction: direction.into(),
        is_reply: true,
        source: Some(destination),
        destination: Some(source),
        l4_protocol: "TCP".into(),
        matched_rule,
        l7: Some(proto::flow_record::L7::Http(proto::HttpFlow {
            method: outcome.method.to_owned(),
            url: outcome.url.clone(),
            code: u32::from(outcome.status),
            protocol: outcome.protocol.into(),
            latency_ns: u64::try_from(outcome.latency.as_nanos()).unwrap_or(u64::MAX),
            headers: Default::default(),
        })),
    };
    [request, response]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    // SEMANTICS 8.1 and 8.6: a denied request gives a DROPPED request record and the 403
    // response record; credentials never appear in clear.
    #[test]
    fn denied_request_records() {
        let conn = ConnInfo {
            direction: Direction::Ingress,
            original_src: "10.0.0.2:5555".parse().expect("addr"),
            original_dst: "10.0.0.1:80".parse().expect("addr"),
        };
        let decision = Decision::Deny {
            reason: "no rule".into(),
        };
        let headers = [("Authorization", "Bearer secret"), ("x-trace", "7")];
        let outcome = RequestOutcome {
            method: "PUT",
            url: "http://deathstar/v1/exhaust-port".into(),
            protocol: "HTTP/1.1",
            headers: &headers,
            decision: &decision,
            status: 403,
            latency: Duration::from_micros(30),
            upstream_failure: None,
        };
        let [request, response] = records(&conn, &outcome, None, None);
        assert_eq!(request.verdict, "DROPPED");
        assert!(!request.is_reply && response.is_reply);
        let Some(proto::flow_record::L7::Http(http)) = &request.l7 else {
            panic!("HTTP record");
        };
        assert_eq!(http.headers["Authorization"], "[redacted]");
        assert_eq!(http.headers["x-trace"], "7");
        let Some(proto::flow_record::L7::Http(http)) = &response.l7 else {
            panic!("HTTP record");
        };
        assert_eq!(http.code, 403);
        assert_eq!(http.latency_ns, 30_000);
    }
}
