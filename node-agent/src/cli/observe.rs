//! `node-agent observe`: the flow records a running agent holds, like `hubble observe`:
//! compact lines or Hubble's flow JSON (SEMANTICS 8.3), one record per line.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::builder::PossibleValuesParser;
use serde_json::{Map, Value, json};
use xds::client::{AgentClient, Endpoint};
use xds::proto;
use xds::proto::flow_record::L7;

use crate::agent::events::drop_reason_desc;

/// How many held records `observe` prints without `--last` (as `hubble observe` does);
/// with `--follow`, none: only new ones.
const DEFAULT_LAST: u64 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per record, like `hubble observe`.
    Compact,
    /// Hubble's flow JSON, one object per line.
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ObserveArgs {
    /// The agent's policy-stream socket.
    #[arg(long, default_value = crate::agent::DEFAULT_SOCKET)]
    pub xds_socket: PathBuf,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Compact)]
    pub output: Format,
    /// Only records from this pod: NAMESPACE/NAME (a name prefix), NAMESPACE/ for a whole
    /// namespace, or NAME in `default`.
    #[arg(long, value_name = "NS/NAME")]
    pub from_pod: Option<String>,
    /// Only records to this pod (same forms as --from-pod).
    #[arg(long, value_name = "NS/NAME")]
    pub to_pod: Option<String>,
    /// Only records with this verdict; repeatable.
    #[arg(long, ignore_case = true,
          value_parser = PossibleValuesParser::new(["FORWARDED", "DROPPED", "ERROR", "REDIRECTED"]))]
    pub verdict: Vec<String>,
    /// Keep printing new records as they arrive.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Print the newest N held records first (default 20, or 0 with --follow).
    #[arg(long, value_name = "N")]
    pub last: Option<u64>,
}

impl ObserveArgs {
    pub fn request(&self) -> proto::ObserveRequest {
        proto::ObserveRequest {
            follow: self.follow,
            last: Some(
                self.last
                    .unwrap_or(if self.follow { 0 } else { DEFAULT_LAST }),
            ),
            filter: Some(proto::FlowFilter {
                source_pod: self.from_pod.clone().unwrap_or_default(),
                destination_pod: self.to_pod.clone().unwrap_or_default(),
                verdicts: self
                    .verdict
                    .iter()
                    .map(|v| v.to_ascii_uppercase())
                    .collect(),
            }),
        }
    }
}

pub fn run(args: &ObserveArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let endpoint = Endpoint::Unix(args.xds_socket.clone());
    let mut stdout = std::io::stdout().lock();
    runtime.block_on(observe(
        &endpoint,
        args.request(),
        args.output,
        &mut stdout,
        None,
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// Streams records from the agent to `out` until the agent ends the stream (or, with
/// `limit`, after that many lines). A closed `out` (`| head`) ends it quietly.
pub async fn observe(
    endpoint: &Endpoint,
    request: proto::ObserveRequest,
    format: Format,
    out: &mut impl Write,
    limit: Option<usize>,
) -> anyhow::Result<()> {
    let client = AgentClient::new(endpoint.clone())?;
    let mut stream = client.observe(request).await?;
    let mut printed = 0usize;
    while limit.is_none_or(|l| printed < l) {
        let Some(response) = stream
            .message()
            .await
            .map_err(|status| client.rpc_error("Observe", status))?
        else {
            break;
        };
        let line = match (response.response, format) {
            (Some(proto::observe_response::Response::Flow(record)), Format::Compact) => {
                compact(&record)
            }
            (Some(proto::observe_response::Response::Flow(record)), Format::Json) => {
                json_line(&record)
            }
            (Some(proto::observe_response::Response::Lost(n)), Format::Compact) => {
                format!("EVENTS LOST: {n} (this client read too slowly)")
            }
            (Some(proto::observe_response::Response::Lost(n)), Format::Json) => {
                json!({"lost_events": {"num_events_lost": n}}).to_string()
            }
            (None, _) => continue,
        };
        if !write_line(out, &line)? {
            break;
        }
        printed += 1;
    }
    Ok(())
}

/// Writes a line and flushes; `false` when the reader is gone (a broken pipe).
pub(super) fn write_line(out: &mut impl Write, line: &str) -> anyhow::Result<bool> {
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's
/// `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

struct Utc {
    year: i64,
    month: u32,
    day: u32,
    hour: i64,
    minute: i64,
    second: i64,
    nanos: i64,
}

fn utc(unix_nanos: i64) -> Utc {
    let secs = unix_nanos.div_euclid(1_000_000_000);
    let nanos = unix_nanos.rem_euclid(1_000_000_000);
    let (year, month, day) = civil(secs.div_euclid(86_400));
    let rest = secs.rem_euclid(86_400);
    Utc {
        year,
        month,
        day,
        hour: rest / 3600,
        minute: rest % 3600 / 60,
        second: rest % 60,
        nanos,
    }
}

/// `Nov 22 09:12:01.123` (UTC), the time column of `hubble observe`.
pub fn short_time(unix_nanos: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let t = utc(unix_nanos);
    format!(
        "{} {:02} {:02}:{:02}:{:02}.{:03}",
        MONTHS[(t.month as usize - 1) % 12],
        t.day,
        t.hour,
        t.minute,
        t.second,
        t.nanos / 1_000_000
    )
}

/// RFC 3339 with nanoseconds, UTC: Hubble's `time`.
pub fn rfc3339(unix_nanos: i64) -> String {
    let t = utc(unix_nanos);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.nanos
    )
}

/// `ip:port`, IPv6 in brackets; no port for port 0 (ICMP).
pub fn socket_text(endpoint: &proto::FlowEndpoint) -> String {
    let v6 = endpoint.ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv6());
    match (endpoint.port, v6) {
        (0, _) => endpoint.ip.clone(),
        (port, true) => format!("[{}]:{port}", endpoint.ip),
        (port, false) => format!("{}:{port}", endpoint.ip),
    }
}

/// One end as `hubble observe` prints it: `default/deathstar:80 (ID:7)`, or
/// `1.1.1.1:443 (world)` for a reserved identity.
fn compact_endpoint(endpoint: Option<&proto::FlowEndpoint>) -> String {
    let Some(e) = endpoint else {
        return "?".into();
    };
    let place = if e.pod_name.is_empty() {
        socket_text(e)
    } else if e.port == 0 {
        format!("{}/{}", e.namespace, e.pod_name)
    } else {
        format!("{}/{}:{}", e.namespace, e.pod_name, e.port)
    };
    let reserved: Vec<&str> = e
        .labels
        .iter()
        .filter_map(|l| l.strip_prefix("reserved:"))
        .collect();
    if e.pod_name.is_empty() && !reserved.is_empty() && reserved.len() == e.labels.len() {
        format!("{place} ({})", reserved.join(","))
    } else {
        format!("{place} (ID:{})", e.identity)
    }
}

fn http_summary(record: &proto::FlowRecord, http: &proto::HttpFlow) -> String {
    if record.is_reply {
        format!(
            "{} {} {}ms ({} {})",
            http.protocol,
            http.code,
            http.latency_ns / 1_000_000,
            http.method,
            http.url
        )
    } else {
        format!("{} {} {}", http.protocol, http.method, http.url)
    }
}

fn dns_summary(record: &proto::FlowRecord, dns: &proto::DnsFlow) -> String {
    let query = format!("{} {}", dns.query, dns.qtypes.join(","));
    if !record.is_reply {
        return format!("DNS Query {query}");
    }
    if !dns.rcode.is_empty() && !dns.rcode.eq_ignore_ascii_case("NOERROR") {
        return format!("DNS Answer RCode: {} (Query {query})", dns.rcode);
    }
    let mut answer: Vec<String> = dns.ips.iter().map(|ip| format!("\"{ip}\"")).collect();
    answer.extend(dns.cnames.iter().map(|c| format!("CNAME {c}")));
    format!(
        "DNS Answer {} TTL: {} (Query {query})",
        answer.join(","),
        dns.ttl
    )
}

/// The event column and the summary in parentheses of a compact line (the summary is also
/// Hubble's JSON `Summary`).
fn event_and_summary(record: &proto::FlowRecord) -> (String, String) {
    let request_or_response = if record.is_reply {
        "response"
    } else {
        "request"
    };
    match &record.l7 {
        Some(L7::Http(http)) => (
            format!("http-{request_or_response}"),
            http_summary(record, http),
        ),
        Some(L7::Dns(dns)) => (
            format!("dns-{request_or_response}"),
            dns_summary(record, dns),
        ),
        Some(L7::Datapath(dp)) if dp.event == "drop" => {
            (dp.drop_reason.clone(), record.l4_protocol.clone())
        }
        Some(L7::Datapath(dp)) => (
            format!("policy-verdict:{} {}", dp.r#match, record.traffic_direction),
            record.l4_protocol.clone(),
        ),
        None => ("to-endpoint".into(), record.l4_protocol.clone()),
    }
}

fn compact_verdict(record: &proto::FlowRecord) -> &str {
    match &record.l7 {
        // Hubble says ALLOWED for a policy verdict that lets a flow through.
        Some(L7::Datapath(dp)) if dp.event == "policy-verdict" && record.verdict == "FORWARDED" => {
            "ALLOWED"
        }
        _ => &record.verdict,
    }
}

/// A record as one `hubble observe` line, e.g.
/// `Nov 22 09:12:01.123: default/tiefighter:41234 (ID:5) -> default/deathstar:80 (ID:7)
/// http-request FORWARDED (HTTP/1.1 POST http://deathstar/v1/request-landing)`.
/// Responses put the client first with `<-`, as Hubble does.
pub fn compact(record: &proto::FlowRecord) -> String {
    let src = compact_endpoint(record.source.as_ref());
    let dst = compact_endpoint(record.destination.as_ref());
    let ends = if record.is_reply {
        format!("{dst} <- {src}")
    } else {
        format!("{src} -> {dst}")
    };
    let (event, summary) = event_and_summary(record);
    format!(
        "{}: {ends} {event} {} ({summary})",
        short_time(record.time_unix_nano),
        compact_verdict(record)
    )
}

fn json_endpoint(endpoint: Option<&proto::FlowEndpoint>) -> Value {
    let Some(e) = endpoint else {
        return json!({});
    };
    let mut out = Map::new();
    out.insert("identity".into(), json!(e.identity));
    if !e.namespace.is_empty() {
        out.insert("namespace".into(), json!(e.namespace));
    }
    out.insert("labels".into(), json!(e.labels));
    if !e.pod_name.is_empty() {
        out.insert("pod_name".into(), json!(e.pod_name));
    }
    Value::Object(out)
}

/// A record as Hubble's flow JSON (SEMANTICS 8.3).
pub fn json(record: &proto::FlowRecord) -> Value {
    let src = record.source.clone().unwrap_or_default();
    let dst = record.destination.clone().unwrap_or_default();
    let v6 = src.ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv6());
    let mut out = Map::new();
    out.insert("time".into(), json!(rfc3339(record.time_unix_nano)));
    out.insert("verdict".into(), json!(record.verdict));
    out.insert(
        "IP".into(),
        json!({
            "source": src.ip,
            "destination": dst.ip,
            "ipVersion": if v6 { "IPv6" } else { "IPv4" },
        }),
    );
    let ports = json!({"source_port": src.port, "destination_port": dst.port});
    let l4 = match record.l4_protocol.as_str() {
        "TCP" | "UDP" | "SCTP" => json!({ record.l4_protocol.clone(): ports }),
        "ICMP" => json!({"ICMPv4": {}}),
        "ICMPv6" => json!({"ICMPv6": {}}),
        _ => Value::Null,
    };
    if !l4.is_null() {
        out.insert("l4".into(), l4);
    }
    out.insert("source".into(), json_endpoint(record.source.as_ref()));
    out.insert(
        "destination".into(),
        json_endpoint(record.destination.as_ref()),
    );
    let l7_type = if record.is_reply {
        "RESPONSE"
    } else {
        "REQUEST"
    };
    // Hubble's event types: 1 drop, 5 policy verdict, 129 L7.
    match &record.l7 {
        Some(L7::Http(http)) => {
            out.insert("Type".into(), json!("L7"));
            let headers: Vec<Value> = http
                .headers
                .iter()
                .map(|(key, value)| json!({"key": key, "value": value}))
                .collect();
            out.insert(
                "l7".into(),
                json!({
                    "type": l7_type,
                    "latency_ns": http.latency_ns,
                    "http": {
                        "code": http.code,
                        "method": http.method,
                        "url": http.url,
                        "protocol": http.protocol,
                        "headers": headers,
                    },
                }),
            );
            out.insert("event_type".into(), json!({"type": 129}));
        }
        Some(L7::Dns(dns)) => {
            out.insert("Type".into(), json!("L7"));
            out.insert(
                "l7".into(),
                json!({
                    "type": l7_type,
                    "latency_ns": 0,
                    "dns": {
                        "query": dns.query,
                        "ips": dns.ips,
                        "ttl": dns.ttl,
                        "cnames": dns.cnames,
                        "rcode": dns.rcode,
                        "qtypes": dns.qtypes,
                    },
                }),
            );
            out.insert("event_type".into(), json!({"type": 129}));
        }
        Some(L7::Datapath(dp)) => {
            out.insert("Type".into(), json!("L3_L4"));
            if dp.event == "drop" {
                out.insert("event_type".into(), json!({"type": 1}));
                out.insert(
                    "drop_reason_desc".into(),
                    json!(drop_reason_desc(&dp.drop_reason)),
                );
            } else {
                out.insert("event_type".into(), json!({"type": 5}));
                out.insert("policy_match_type".into(), json!(dp.r#match));
            }
        }
        None => {
            out.insert("Type".into(), json!("L3_L4"));
        }
    }
    if !record.matched_rule.is_empty() {
        out.insert("matched_rule".into(), json!(record.matched_rule));
    }
    out.insert("traffic_direction".into(), json!(record.traffic_direction));
    out.insert("is_reply".into(), json!(record.is_reply));
    out.insert("Summary".into(), json!(event_and_summary(record).1));
    Value::Object(out)
}

/// [`json`] as one line.
pub fn json_line(record: &proto::FlowRecord) -> String {
    json(record).to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::agent::events::{Names, flow_record_at};
    use crate::datapath::abi::{
        DP_ACT_DENY, DP_DIR_INGRESS, DP_DROP_POLICY_DENIED, DP_EVENT_DROP, DP_FAMILY_IPV4,
        DP_MATCH_NONE, DpEvent,
    };

    /// 2026-11-22 09:12:01.123456789 UTC.
    pub(crate) const T: i64 = 1_795_338_721_123_456_789;

    pub(crate) fn drop_event() -> DpEvent {
        let mut event = DpEvent {
            r#type: DP_EVENT_DROP,
            reason: DP_DROP_POLICY_DENIED,
            action: DP_ACT_DENY,
            r#match: DP_MATCH_NONE,
            direction: DP_DIR_INGRESS,
            family: DP_FAMILY_IPV4,
            protocol: 6,
            ifindex: 9,
            endpoint_id: 12,
            src_identity: 576,
            dst_identity: 519,
            sport: 52908u16.to_be(),
            dport: 80u16.to_be(),
            ..DpEvent::default()
        };
        event.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        event.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        event
    }

    pub(crate) fn drop_record() -> proto::FlowRecord {
        let (_, mut record) =
            flow_record_at(&drop_event(), &Names::default(), T).expect("a drop record");
        let dst = record.destination.as_mut().expect("destination");
        dst.namespace = "default".into();
        dst.pod_name = "deathstar".into();
        record
    }

    pub(crate) fn l7_record() -> proto::FlowRecord {
        proto::FlowRecord {
            time_unix_nano: T,
            verdict: "FORWARDED".into(),
            traffic_direction: "INGRESS".into(),
            is_reply: false,
            source: Some(proto::FlowEndpoint {
                ip: "10.0.0.1".into(),
                port: 41234,
                identity: 256,
                namespace: "default".into(),
                pod_name: "tiefighter".into(),
                labels: vec!["k8s:org=empire".into()],
            }),
            destination: Some(proto::FlowEndpoint {
                ip: "10.0.0.2".into(),
                port: 80,
                identity: 257,
                namespace: "default".into(),
                pod_name: "deathstar".into(),
                labels: vec!["k8s:class=deathstar".into(), "k8s:org=empire".into()],
            }),
            l4_protocol: "TCP".into(),
            matched_rule: String::new(),
            l7: Some(L7::Http(proto::HttpFlow {
                method: "POST".into(),
                url: "http://deathstar/v1/request-landing".into(),
                code: 0,
                protocol: "HTTP/1.1".into(),
                latency_ns: 0,
                headers: [("x-trace".to_owned(), "7".to_owned())].into(),
            })),
        }
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(short_time(T), "Nov 22 09:12:01.123");
        assert_eq!(rfc3339(T), "2026-11-22T09:12:01.123456789Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(short_time(951_782_400_000_000_000), "Feb 29 00:00:00.000");
    }

    #[test]
    fn compact_lines_of_an_l7_record_and_a_drop() {
        assert_eq!(
            compact(&l7_record()),
            "Nov 22 09:12:01.123: default/tiefighter:41234 (ID:256) -> default/deathstar:80 (ID:257) \
             http-request FORWARDED (HTTP/1.1 POST http://deathstar/v1/request-landing)"
        );
        let mut response = l7_record();
        response.is_reply = true;
        std::mem::swap(&mut response.source, &mut response.destination);
        if let Some(L7::Http(http)) = &mut response.l7 {
            http.code = 200;
            http.latency_ns = 12_000_000;
        }
        assert_eq!(
            compact(&response),
            "Nov 22 09:12:01.123: default/tiefighter:41234 (ID:256) <- default/deathstar:80 (ID:257) \
             http-response FORWARDED (HTTP/1.1 200 12ms (POST http://deathstar/v1/request-landing))"
        );
        assert_eq!(
            compact(&drop_record()),
            "Nov 22 09:12:01.123: 10.0.0.1:52908 (ID:576) -> default/deathstar:80 (ID:519) \
             Policy denied DROPPED (TCP)"
        );
    }

    #[test]
    fn json_of_a_drop_has_hubble_field_names() {
        let value = json(&drop_record());
        assert_eq!(value["time"], "2026-11-22T09:12:01.123456789Z");
        assert_eq!(value["verdict"], "DROPPED");
        assert_eq!(value["drop_reason_desc"], "POLICY_DENIED");
        assert_eq!(value["IP"]["source"], "10.0.0.1");
        assert_eq!(value["IP"]["destination"], "10.0.0.2");
        assert_eq!(value["l4"]["TCP"]["source_port"], 52908);
        assert_eq!(value["l4"]["TCP"]["destination_port"], 80);
        assert_eq!(value["source"]["identity"], 576);
        assert_eq!(value["destination"]["pod_name"], "deathstar");
        assert_eq!(value["destination"]["namespace"], "default");
        assert_eq!(value["Type"], "L3_L4");
        assert_eq!(value["traffic_direction"], "INGRESS");
        assert_eq!(value["is_reply"], false);
        assert_eq!(value["Summary"], "TCP");
        assert!(value.get("l7").is_none());
    }

    #[test]
    fn json_of_an_l7_record_has_hubble_field_names() {
        let line = json_line(&l7_record());
        assert!(!line.contains('\n'));
        let value: Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(value["Type"], "L7");
        assert_eq!(value["l7"]["type"], "REQUEST");
        assert_eq!(value["l7"]["http"]["method"], "POST");
        assert_eq!(
            value["l7"]["http"]["url"],
            "http://deathstar/v1/request-landing"
        );
        assert_eq!(value["l7"]["http"]["protocol"], "HTTP/1.1");
        assert_eq!(
            value["l7"]["http"]["headers"][0],
            json!({"key": "x-trace", "value": "7"})
        );
        assert_eq!(value["source"]["pod_name"], "tiefighter");
        assert_eq!(value["source"]["labels"][0], "k8s:org=empire");
        assert_eq!(
            value["Summary"],
            "HTTP/1.1 POST http://deathstar/v1/request-landing"
        );
    }

    #[test]
    fn request_defaults_follow_hubble() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Wrap {
            #[command(flatten)]
            args: ObserveArgs,
        }
        let parse = |argv: &[&str]| {
            Wrap::try_parse_from(std::iter::once("observe").chain(argv.iter().copied()))
                .expect("arguments")
                .args
                .request()
        };
        assert_eq!(parse(&[]).last, Some(20));
        assert_eq!(parse(&["--follow"]).last, Some(0));
        let r = parse(&[
            "--from-pod",
            "default/tiefighter",
            "--verdict",
            "dropped",
            "--verdict",
            "FORWARDED",
            "--last",
            "5",
        ]);
        assert_eq!(r.last, Some(5));
        let filter = r.filter.expect("filter");
        assert_eq!(filter.source_pod, "default/tiefighter");
        assert_eq!(filter.verdicts, vec!["DROPPED", "FORWARDED"]);
    }
}
