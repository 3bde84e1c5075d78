//! DNS flow records (SEMANTICS 8.2): an allowed query gives a request record (FORWARDED)
//! and a response record (rcode, IPs, TTL, CNAMEs; ERROR when the server failed); a denied
//! query one DROPPED request record. Sent through the reporter's bounded queue, never
//! waited for.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use hickory_proto::op::ResponseCode;
use xds::identity::IdentityMap;
use xds::proto;

use super::policy::{EndpointDns, Transport};
use crate::message::ResponseInfo;

/// Who talked to whom, as far as the proxy knows.
#[derive(Debug, Clone, Copy)]
pub struct FlowParties<'a> {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
    pub endpoint: Option<&'a EndpointDns>,
    pub identities: Option<&'a IdentityMap>,
    /// The server's identity.
    pub peer: u32,
}

/// The question, as records show it.
#[derive(Debug, Clone)]
pub struct FlowQuestion {
    /// Fully qualified, lower-cased (from the wire labels).
    pub name: String,
    /// E.g. "A".
    pub qtype: String,
}

/// Rcode as Hubble spells it ("NoError", "NXDomain", ...).
pub fn rcode_name(rcode: ResponseCode) -> String {
    match rcode {
        ResponseCode::NoError => "NoError".to_owned(),
        ResponseCode::FormErr => "FormErr".to_owned(),
        ResponseCode::ServFail => "ServFail".to_owned(),
        ResponseCode::NXDomain => "NXDomain".to_owned(),
        ResponseCode::NotImp => "NotImp".to_owned(),
        ResponseCode::Refused => "Refused".to_owned(),
        other => format!("RCODE{}", u16::from(other)),
    }
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl FlowParties<'_> {
    fn labels(&self, identity: u32) -> Vec<String> {
        self.identities
            .and_then(|i| i.labels(identity))
            .map(<[String]>::to_vec)
            .unwrap_or_default()
    }

    fn client_endpoint(&self) -> proto::FlowEndpoint {
        let identity = match (self.endpoint, self.identities) {
            (Some(ep), _) => ep.identity,
            (None, Some(ids)) => ids.lookup(self.client.ip()),
            (None, None) => 0,
        };
        proto::FlowEndpoint {
            ip: self.client.ip().to_string(),
            port: u32::from(self.client.port()),
            identity,
            namespace: self
                .endpoint
                .map(|e| e.namespace.clone())
                .unwrap_or_default(),
            pod_name: self.endpoint.map(|e| e.pod.clone()).unwrap_or_default(),
            labels: self.labels(identity),
        }
    }

    fn server_endpoint(&self) -> proto::FlowEndpoint {
        let labels = self.labels(self.peer);
        let namespace = labels
            .iter()
            .find_map(|l| l.strip_prefix("k8s:io.kubernetes.pod.namespace="))
            .unwrap_or_default()
            .to_owned();
        proto::FlowEndpoint {
            ip: self.server.ip().to_string(),
            port: u32::from(self.server.port()),
            identity: self.peer,
            namespace,
            pod_name: String::new(),
            labels,
        }
    }

    /// The request record: FORWARDED for an allowed query, DROPPED (with the deny rcode)
    /// for a denied one. `rule` is the allowing rule set's origin, or why it was denied.
    pub fn request(
        &self,
        verdict: &str,
        rule: &str,
        question: &FlowQuestion,
        rcode: Option<ResponseCode>,
    ) -> proto::FlowRecord {
        proto::FlowRecord {
            time_unix_nano: now_nanos(),
            verdict: verdict.to_owned(),
            traffic_direction: "EGRESS".to_owned(),
            is_reply: false,
            source: Some(self.client_endpoint()),
            destination: Some(self.server_endpoint()),
            l4_protocol: self.transport.name().to_owned(),
            matched_rule: rule.to_owned(),
            l7: Some(proto::flow_record::L7::Dns(proto::DnsFlow {
                query: question.name.clone(),
                qtypes: vec![question.qtype.clone()],
                rcode: rcode.map(rcode_name).unwrap_or_default(),
                ..Default::default()
            })),
        }
    }

    /// The response record: FORWARDED with what the server said, or ERROR/ServFail when it
    /// did not answer (`info` is `None`).
    pub fn response(
        &self,
        rule: &str,
        question: &FlowQuestion,
        info: Option<&ResponseInfo>,
    ) -> proto::FlowRecord {
        let dns = match info {
            Some(info) => proto::DnsFlow {
                query: question.name.clone(),
                qtypes: vec![question.qtype.clone()],
                rcode: rcode_name(info.rcode),
                ips: info.ips().map(|ip| ip.to_string()).collect(),
                ttl: info.min_ttl.unwrap_or(0),
                cnames: info.cnames.iter().map(ToString::to_string).collect(),
            },
            None => proto::DnsFlow {
                query: question.name.clone(),
                qtypes: vec![question.qtype.clone()],
                rcode: rcode_name(ResponseCode::ServFail),
                ..Default::default()
            },
        };
        proto::FlowRecord {
            time_unix_nano: now_nanos(),
            verdict: if info.is_some() { "FORWARDED" } else { "ERROR" }.to_owned(),
            traffic_direction: "EGRESS".to_owned(),
            is_reply: true,
            source: Some(self.server_endpoint()),
            destination: Some(self.client_endpoint()),
            l4_protocol: self.transport.name().to_owned(),
            matched_rule: rule.to_owned(),
            l7: Some(proto::flow_record::L7::Dns(dns)),
        }
    }
}
