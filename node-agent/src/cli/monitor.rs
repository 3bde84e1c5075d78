//! `node-agent monitor`: live events of a running agent in the text forms of
//! `cilium monitor` (SEMANTICS 8.4, 8.5): datapath drops, policy verdicts, L7 records.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use xds::client::{AgentClient, Endpoint};
use xds::proto;
use xds::proto::flow_record::L7;

use super::observe::{socket_text, write_line};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventType {
    /// Drops in the kernel datapath.
    Drop,
    /// Flow records from the proxies.
    L7,
    /// The datapath's verdict on each new flow.
    PolicyVerdict,
}

impl EventType {
    fn proto(self) -> proto::MonitorType {
        match self {
            EventType::Drop => proto::MonitorType::Drop,
            EventType::L7 => proto::MonitorType::L7,
            EventType::PolicyVerdict => proto::MonitorType::PolicyVerdict,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct MonitorArgs {
    /// The agent's policy-stream socket.
    #[arg(long, default_value = crate::agent::DEFAULT_SOCKET)]
    pub xds_socket: PathBuf,
    /// Only these kinds of event; repeatable (every kind by default).
    #[arg(short = 't', long = "type", value_enum)]
    pub types: Vec<EventType>,
}

impl MonitorArgs {
    pub fn request(&self) -> proto::MonitorRequest {
        proto::MonitorRequest {
            types: self.types.iter().map(|t| t.proto() as i32).collect(),
        }
    }
}

pub fn run(args: &MonitorArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let endpoint = Endpoint::Unix(args.xds_socket.clone());
    let mut stdout = std::io::stdout().lock();
    runtime.block_on(monitor(&endpoint, args.request(), &mut stdout, None))?;
    Ok(ExitCode::SUCCESS)
}

/// Prints events from the agent to `out` until the agent ends the stream (or, with
/// `limit`, after that many lines). A closed `out` ends it quietly.
pub async fn monitor(
    endpoint: &Endpoint,
    request: proto::MonitorRequest,
    out: &mut impl Write,
    limit: Option<usize>,
) -> anyhow::Result<()> {
    let client = AgentClient::new(endpoint.clone())?;
    let mut stream = client.monitor(request).await?;
    let mut printed = 0usize;
    while limit.is_none_or(|l| printed < l) {
        let Some(event) = stream
            .message()
            .await
            .map_err(|status| client.rpc_error("Monitor", status))?
        else {
            break;
        };
        let Some(line) = text(&event) else {
            continue;
        };
        if !write_line(out, &line)? {
            break;
        }
        printed += 1;
    }
    Ok(())
}

/// An event as `cilium monitor` prints it (None for an event with nothing to print).
pub fn text(event: &proto::MonitorEvent) -> Option<String> {
    if event.lost > 0 {
        return Some(format!(
            "Lost {} events (this monitor read too slowly)",
            event.lost
        ));
    }
    let record = event.flow.as_ref()?;
    Some(match &record.l7 {
        Some(L7::Datapath(dp)) if dp.event == "drop" => drop_text(record, dp),
        Some(L7::Datapath(dp)) => verdict_text(record, dp),
        Some(L7::Http(_) | L7::Dns(_)) => l7_text(record),
        None => return None,
    })
}

/// `10.0.0.1:52908 -> 10.0.0.2:80 tcp`.
fn tuple(record: &proto::FlowRecord) -> String {
    let end = |e: Option<&proto::FlowEndpoint>| e.map(socket_text).unwrap_or_default();
    format!(
        "{} -> {} {}",
        end(record.source.as_ref()),
        end(record.destination.as_ref()),
        record.l4_protocol.to_ascii_lowercase()
    )
}

fn identities(record: &proto::FlowRecord) -> (u32, u32) {
    (
        record.source.as_ref().map_or(0, |e| e.identity),
        record.destination.as_ref().map_or(0, |e| e.identity),
    )
}

/// SEMANTICS 8.5: `xx drop (Policy denied) flow 0x1f2e to endpoint 12, ifindex 9, file
/// datapath, , identity 576->519: 10.0.0.1:52908 -> 10.0.0.2:80 tcp`.
pub fn drop_text(record: &proto::FlowRecord, dp: &proto::DatapathFlow) -> String {
    let (src, dst) = identities(record);
    format!(
        "xx drop ({}) flow {:#x} to endpoint {}, ifindex {}, file datapath, , identity {src}->{dst}: {}",
        dp.drop_reason,
        dp.flow_id,
        dp.endpoint_id,
        dp.ifindex,
        tuple(record)
    )
}

/// Cilium's policy verdict line: `Policy verdict log: flow 0x1f2e, local EP ID 12, remote
/// ID 576, proto 6, ingress, action allow, auth: disabled, match L3-L4, 10.0.0.1:52908 ->
/// 10.0.0.2:80 tcp`.
pub fn verdict_text(record: &proto::FlowRecord, dp: &proto::DatapathFlow) -> String {
    let (src, dst) = identities(record);
    let egress = record.traffic_direction == "EGRESS";
    format!(
        "Policy verdict log: flow {:#x}, local EP ID {}, remote ID {}, proto {}, {}, action {}, auth: disabled, match {}, {}",
        dp.flow_id,
        dp.endpoint_id,
        if egress { dst } else { src },
        dp.protocol,
        if egress { "egress" } else { "ingress" },
        dp.action,
        dp.r#match,
        tuple(record)
    )
}

/// SEMANTICS 8.4: `<- Request http from 0 ([labels]) to 0 ([labels]), identity 256->257,
/// verdict Forwarded GET http://deathstar/v1/ => 0`. `<-` ingress, `->` egress; the
/// numbers after from/to are Cilium's endpoint ids, which proxy records do not carry (0,
/// as Cilium prints for an unknown endpoint).
pub fn l7_text(record: &proto::FlowRecord) -> String {
    let arrow = if record.traffic_direction == "EGRESS" {
        "->"
    } else {
        "<-"
    };
    let kind = if record.is_reply {
        "Response"
    } else {
        "Request"
    };
    let labels = |e: Option<&proto::FlowEndpoint>| {
        format!("[{}]", e.map(|e| e.labels.join(" ")).unwrap_or_default())
    };
    let (src, dst) = identities(record);
    let verdict = match record.verdict.as_str() {
        "FORWARDED" => "Forwarded",
        "DROPPED" => "Denied",
        "ERROR" => "Error",
        other => other,
    };
    let (protocol, detail) = match &record.l7 {
        Some(L7::Http(http)) => (
            "http",
            format!("{} {} => {}", http.method, http.url, http.code),
        ),
        Some(L7::Dns(dns)) if record.is_reply => (
            "dns",
            format!(
                "DNS Answer: {} TTL {} CNAMEs [{}] RCode {} (Query {} {})",
                dns.ips.join(","),
                dns.ttl,
                dns.cnames.join(","),
                if dns.rcode.is_empty() {
                    "NOERROR"
                } else {
                    &dns.rcode
                },
                dns.query,
                dns.qtypes.join(",")
            ),
        ),
        Some(L7::Dns(dns)) => (
            "dns",
            format!("DNS Query: {} {}", dns.query, dns.qtypes.join(",")),
        ),
        _ => ("", String::new()),
    };
    format!(
        "{arrow} {kind} {protocol} from 0 ({}) to 0 ({}), identity {src}->{dst}, verdict {verdict} {detail}",
        labels(record.source.as_ref()),
        labels(record.destination.as_ref()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::events::{Names, flow_id, flow_record_at};
    use crate::cli::observe::tests::{T, drop_event, drop_record, l7_record};
    use crate::datapath::abi::{
        DP_ACT_ALLOW, DP_DIR_EGRESS, DP_EVENT_POLICY_VERDICT, DP_MATCH_L3_L4,
    };

    fn event(kind: proto::MonitorType, flow: proto::FlowRecord) -> proto::MonitorEvent {
        proto::MonitorEvent {
            r#type: kind as i32,
            flow: Some(flow),
            lost: 0,
        }
    }

    #[test]
    fn a_drop_prints_like_cilium_monitor() {
        let id = flow_id(&drop_event());
        assert_eq!(
            text(&event(proto::MonitorType::Drop, drop_record())).expect("a line"),
            format!(
                "xx drop (Policy denied) flow {id:#x} to endpoint 12, ifindex 9, file datapath, , \
                 identity 576->519: 10.0.0.1:52908 -> 10.0.0.2:80 tcp"
            )
        );
    }

    #[test]
    fn a_policy_verdict_prints_like_cilium_monitor() {
        let mut dp = drop_event();
        dp.r#type = DP_EVENT_POLICY_VERDICT;
        dp.reason = 0;
        dp.action = DP_ACT_ALLOW;
        dp.r#match = DP_MATCH_L3_L4;
        dp.direction = DP_DIR_EGRESS;
        let (kind, record) = flow_record_at(&dp, &Names::default(), T).expect("a record");
        assert_eq!(record.verdict, "FORWARDED");
        assert_eq!(
            text(&event(kind, record)).expect("a line"),
            format!(
                "Policy verdict log: flow {:#x}, local EP ID 12, remote ID 519, proto 6, egress, \
                 action allow, auth: disabled, match L3-L4, 10.0.0.1:52908 -> 10.0.0.2:80 tcp",
                flow_id(&dp)
            )
        );
    }

    #[test]
    fn an_l7_record_prints_like_cilium_monitor() {
        assert_eq!(
            text(&event(proto::MonitorType::L7, l7_record())).expect("a line"),
            "<- Request http from 0 ([k8s:org=empire]) to 0 ([k8s:class=deathstar k8s:org=empire]), \
             identity 256->257, verdict Forwarded POST http://deathstar/v1/request-landing => 0"
        );
        let mut denied = l7_record();
        denied.verdict = "DROPPED".into();
        denied.is_reply = true;
        denied.traffic_direction = "EGRESS".into();
        if let Some(L7::Http(http)) = &mut denied.l7 {
            http.code = 403;
        }
        let line = text(&event(proto::MonitorType::L7, denied)).expect("a line");
        assert!(line.starts_with("-> Response http from 0"), "{line}");
        assert!(line.ends_with("verdict Denied POST http://deathstar/v1/request-landing => 403"));
    }

    #[test]
    fn lost_events_are_said() {
        let lost = proto::MonitorEvent {
            lost: 7,
            ..proto::MonitorEvent::default()
        };
        assert_eq!(
            text(&lost).as_deref(),
            Some("Lost 7 events (this monitor read too slowly)")
        );
    }
}
