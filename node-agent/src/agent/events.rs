//! Datapath events as flow records (SEMANTICS 8.5): a drop or a policy verdict from the
//! ring buffer becomes the same `FlowRecord` the proxies report, with names (pods, identity
//! labels) from a table the agent refreshes after every policy change.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use xds::proto;

use crate::compiler::Compiler;
use crate::datapath::abi::{
    DP_ACT_ALLOW, DP_ACT_DENY, DP_ACT_REDIRECT, DP_DIR_EGRESS, DP_DROP_DEFAULT_DENY,
    DP_DROP_NO_REDIRECT_PATH, DP_DROP_POLICY_DENIED, DP_DROP_PROXY_DOWN, DP_DROP_SPOOFED_SOURCE,
    DP_EVENT_DROP, DP_EVENT_POLICY_VERDICT, DP_FAMILY_IPV4, DP_FAMILY_IPV6, DP_MATCH_ALL,
    DP_MATCH_L3_L4, DP_MATCH_L3_ONLY, DP_MATCH_L4_ONLY, DP_MATCH_NONE, DpEvent,
};
use crate::identity::Identity;
use crate::labels::POD_NAMESPACE_LABEL;

/// What the agent knows to name the two ends of a flow: identity -> labels, IP -> pod.
#[derive(Debug, Default)]
pub struct Names {
    labels: HashMap<Identity, Arc<[String]>>,
    /// Pod IP -> (namespace, name, identity).
    pods: HashMap<IpAddr, (String, String, Identity)>,
}

impl Names {
    /// The names the compiler knows now: every identity's labels, every pod with an IP.
    pub fn from_compiler(compiler: &Compiler) -> Self {
        let labels = compiler
            .identities()
            .iter()
            .map(|(id, labels)| (id, Arc::from(labels.to_strings())))
            .collect();
        // Pod IPs are the host prefixes of the ipcache; `pod_by_ip` tells them from
        // policy CIDRs.
        let pods = compiler
            .ipcache()
            .filter(|(net, _)| net.prefix_len() == net.max_prefix_len())
            .filter_map(|(net, identity)| {
                let ip = net.addr();
                compiler
                    .pod_by_ip(ip)
                    .map(|key| (ip, (key.namespace.clone(), key.name.clone(), identity)))
            })
            .collect();
        Names { labels, pods }
    }

    pub fn labels(&self, identity: Identity) -> Option<&[String]> {
        self.labels.get(&identity).map(|l| &l[..])
    }

    /// The pod at `ip`: (namespace, name, identity).
    pub fn pod(&self, ip: IpAddr) -> Option<(&str, &str, Identity)> {
        self.pods
            .get(&ip)
            .map(|(namespace, name, identity)| (namespace.as_str(), name.as_str(), *identity))
    }

    /// Fills in what a flow endpoint lacks (pod, namespace, identity of a pod IP, labels)
    /// from the table; what a proxy already said stays.
    pub fn fill(&self, endpoint: &mut proto::FlowEndpoint) {
        let pod = endpoint.ip.parse().ok().and_then(|ip| self.pod(ip));
        if let Some((namespace, name, identity)) = pod {
            if endpoint.pod_name.is_empty() {
                endpoint.pod_name = name.to_owned();
                if endpoint.namespace.is_empty() {
                    endpoint.namespace = namespace.to_owned();
                }
            }
            if endpoint.identity == 0 {
                endpoint.identity = identity;
            }
        }
        if endpoint.labels.is_empty()
            && let Some(labels) = self.labels(endpoint.identity)
        {
            endpoint.labels = labels.to_vec();
        }
        if endpoint.namespace.is_empty()
            && let Some(namespace) = endpoint.labels.iter().find_map(|l| {
                l.strip_prefix("k8s:")
                    .and_then(|l| l.strip_prefix(POD_NAMESPACE_LABEL))
                    .and_then(|l| l.strip_prefix('='))
            })
        {
            endpoint.namespace = namespace.to_owned();
        }
    }
}

/// The text SEMANTICS 8.5 prints for a `DP_DROP_*` code, and Hubble's name for it
/// (`drop_reason_desc`).
pub fn drop_reason(code: u8) -> (&'static str, &'static str) {
    match code {
        DP_DROP_POLICY_DENIED | DP_DROP_DEFAULT_DENY => ("Policy denied", "POLICY_DENIED"),
        DP_DROP_PROXY_DOWN => ("Proxy unavailable", "PROXY_UNAVAILABLE"),
        DP_DROP_SPOOFED_SOURCE => ("Invalid source ip", "INVALID_SOURCE_IP"),
        DP_DROP_NO_REDIRECT_PATH => ("No L7 redirect on this path", "NO_L7_REDIRECT_PATH"),
        _ => ("Unknown drop reason", "DROP_REASON_UNKNOWN"),
    }
}

/// Hubble's name for a drop reason text (the reverse of [`drop_reason`]).
pub fn drop_reason_desc(text: &str) -> &'static str {
    [
        DP_DROP_POLICY_DENIED,
        DP_DROP_PROXY_DOWN,
        DP_DROP_SPOOFED_SOURCE,
        DP_DROP_NO_REDIRECT_PATH,
    ]
    .into_iter()
    .map(drop_reason)
    .find(|(t, _)| *t == text)
    .map_or("DROP_REASON_UNKNOWN", |(_, desc)| desc)
}

/// Cilium's name for a `DP_MATCH_*` kind ("match L3-L4" in a policy verdict).
pub fn match_name(code: u8) -> &'static str {
    match code {
        DP_MATCH_NONE => "none",
        DP_MATCH_L3_ONLY => "L3-Only",
        DP_MATCH_L3_L4 => "L3-L4",
        DP_MATCH_L4_ONLY => "L4-Only",
        DP_MATCH_ALL => "all",
        _ => "unknown",
    }
}

fn action_name(code: u8) -> &'static str {
    match code {
        DP_ACT_ALLOW => "allow",
        DP_ACT_REDIRECT => "redirect",
        DP_ACT_DENY => "deny",
        _ => "none",
    }
}

/// "TCP", "UDP", ... for an IPPROTO_* number ("" if unnamed).
pub fn protocol_name(protocol: u8) -> &'static str {
    match protocol {
        1 => "ICMP",
        6 => "TCP",
        17 => "UDP",
        58 => "ICMPv6",
        132 => "SCTP",
        _ => "",
    }
}

fn address(family: u8, bytes: &[u8; 16]) -> Option<IpAddr> {
    match family {
        DP_FAMILY_IPV4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        DP_FAMILY_IPV6 => Some(IpAddr::V6(Ipv6Addr::from(*bytes))),
        _ => None,
    }
}

/// A stable id for the 5-tuple (FNV-1a): the same flow always has the same id, like the
/// flow ids `cilium monitor` prints.
pub fn flow_id(event: &DpEvent) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&[event.family, event.protocol]);
    eat(&event.saddr);
    eat(&event.daddr);
    eat(&event.sport.to_ne_bytes());
    eat(&event.dport.to_ne_bytes());
    hash
}

/// Nanoseconds of CLOCK_MONOTONIC now. The datapath stamps events with
/// `bpf_ktime_get_ns()`, which is this clock; `std::time::Instant` reads it too but never
/// shows its value, and the workspace forbids the `unsafe` a libc call would need, so
/// rustix's safe `clock_gettime` it is (a crate the lock file already had).
fn monotonic_now_ns() -> i128 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    i128::from(now.tv_sec) * 1_000_000_000 + i128::from(now.tv_nsec)
}

fn wall_now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
        .unwrap_or(0)
}

/// Unix time of a CLOCK_MONOTONIC stamp, given both clocks read now.
pub fn unix_nanos(monotonic_ns: u64, wall_now_ns: i128, monotonic_now_ns: i128) -> i64 {
    let t = wall_now_ns - (monotonic_now_ns - i128::from(monotonic_ns));
    i64::try_from(t.max(0)).unwrap_or(i64::MAX)
}

/// Which monitor type an event is, and its flow record (None for an unknown event type or
/// address family).
pub fn flow_record(
    event: &DpEvent,
    names: &Names,
) -> Option<(proto::MonitorType, proto::FlowRecord)> {
    flow_record_at(
        event,
        names,
        unix_nanos(event.timestamp_ns, wall_now_ns(), monotonic_now_ns()),
    )
}

/// [`flow_record`] with the event's wall time given.
pub fn flow_record_at(
    event: &DpEvent,
    names: &Names,
    time_unix_nano: i64,
) -> Option<(proto::MonitorType, proto::FlowRecord)> {
    let (kind, verdict, event_name) = match event.r#type {
        DP_EVENT_DROP => (proto::MonitorType::Drop, "DROPPED", "drop"),
        DP_EVENT_POLICY_VERDICT => (
            proto::MonitorType::PolicyVerdict,
            if event.action == DP_ACT_REDIRECT {
                "REDIRECTED"
            } else {
                "FORWARDED"
            },
            "policy-verdict",
        ),
        _ => return None,
    };
    let src = address(event.family, &event.saddr)?;
    let dst = address(event.family, &event.daddr)?;
    let endpoint = |ip: IpAddr, port: u16, identity: u32| {
        let mut endpoint = proto::FlowEndpoint {
            ip: ip.to_string(),
            port: u32::from(u16::from_be(port)),
            identity,
            ..proto::FlowEndpoint::default()
        };
        names.fill(&mut endpoint);
        endpoint
    };
    let (drop_reason, drop_reason_code) = if event.r#type == DP_EVENT_DROP {
        (drop_reason(event.reason).0, u32::from(event.reason))
    } else {
        ("", 0)
    };
    let record = proto::FlowRecord {
        time_unix_nano,
        verdict: verdict.into(),
        traffic_direction: if event.direction == DP_DIR_EGRESS {
            "EGRESS"
        } else {
            "INGRESS"
        }
        .into(),
        is_reply: false,
        source: Some(endpoint(src, event.sport, event.src_identity)),
        destination: Some(endpoint(dst, event.dport, event.dst_identity)),
        l4_protocol: protocol_name(event.protocol).into(),
        matched_rule: String::new(),
        l7: Some(proto::flow_record::L7::Datapath(proto::DatapathFlow {
            event: event_name.into(),
            drop_reason: drop_reason.into(),
            drop_reason_code,
            action: action_name(event.action).into(),
            r#match: match_name(event.r#match).into(),
            endpoint_id: u32::from(event.endpoint_id),
            ifindex: event.ifindex,
            protocol: u32::from(event.protocol),
            proxy_port: u32::from(event.proxy_port),
            flow_id: flow_id(event),
        })),
    };
    Some((kind, record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_stamps_become_wall_time() {
        // Stamped 2 s before "now" on the monotonic clock.
        let t = unix_nanos(8_000_000_000, 1_700_000_000_000_000_000, 10_000_000_000);
        assert_eq!(t, 1_699_999_998_000_000_000);
        assert!(monotonic_now_ns() > 0);
    }

    #[test]
    fn drop_reasons_have_the_monitor_texts() {
        assert_eq!(drop_reason(DP_DROP_POLICY_DENIED).0, "Policy denied");
        assert_eq!(drop_reason(DP_DROP_DEFAULT_DENY).0, "Policy denied");
        assert_eq!(drop_reason(DP_DROP_PROXY_DOWN).0, "Proxy unavailable");
        assert_eq!(drop_reason(DP_DROP_SPOOFED_SOURCE).0, "Invalid source ip");
        assert_eq!(
            drop_reason(DP_DROP_NO_REDIRECT_PATH).0,
            "No L7 redirect on this path"
        );
        assert_eq!(drop_reason_desc("Invalid source ip"), "INVALID_SOURCE_IP");
    }

    #[test]
    fn ipv6_addresses_and_network_order_ports() {
        let mut event = DpEvent {
            r#type: DP_EVENT_POLICY_VERDICT,
            action: DP_ACT_REDIRECT,
            r#match: DP_MATCH_L3_L4,
            family: DP_FAMILY_IPV6,
            protocol: 17,
            sport: 5353u16.to_be(),
            dport: 53u16.to_be(),
            ..DpEvent::default()
        };
        event.saddr = "fd00::1".parse::<Ipv6Addr>().expect("ip").octets();
        event.daddr = "fd00::2".parse::<Ipv6Addr>().expect("ip").octets();
        let (kind, record) = flow_record_at(&event, &Names::default(), 0).expect("record");
        assert_eq!(kind, proto::MonitorType::PolicyVerdict);
        assert_eq!(record.verdict, "REDIRECTED");
        assert_eq!(record.l4_protocol, "UDP");
        let src = record.source.expect("source");
        assert_eq!((src.ip.as_str(), src.port), ("fd00::1", 5353));
        assert_eq!(record.destination.expect("destination").port, 53);
        // The same tuple, the same id; another tuple, another.
        let id = flow_id(&event);
        assert_eq!(id, flow_id(&event.clone()));
        event.sport = 5354u16.to_be();
        assert_ne!(id, flow_id(&event));
    }
}
