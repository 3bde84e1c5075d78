//! The enforcement-ready policy of the local endpoints, and the L3/L4 verdict of one
//! direction (SEMANTICS 2, 3.3, 3.4, 10.1), in agreement with the node-agent's
//! `compiler::evaluate`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::http_rules::HttpRuleSet;

use super::connection::{ConnectionPolicy, HttpRedirect, L3Verdict};

/// Which side of a flow the local endpoint is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The local endpoint is the destination: its ingress policy applies.
    Ingress,
    /// The local endpoint is the source: its egress policy applies.
    Egress,
}

impl Direction {
    /// `ingress` or `egress`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// An L4 protocol of a flow or of a policy entry (SEMANTICS 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

/// The proxy an entry redirects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L7Parser {
    /// The HTTP proxy (this crate).
    Http,
    /// The DNS proxy: not HTTP.
    Dns,
}

impl L7Parser {
    /// `http` or `dns`.
    pub fn name(self) -> &'static str {
        match self {
            L7Parser::Http => "http",
            L7Parser::Dns => "dns",
        }
    }
}

/// Why one direction reached its verdict (the node-agent's `Reason`, plus the proxy's own
/// fail-closed case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No rule selecting the endpoint speaks about this direction.
    NoPolicy,
    /// A deny rule matched (SEMANTICS 2.3).
    DenyRule,
    /// An allow rule matched.
    AllowRule,
    /// Nothing matched and the direction is enforced (SEMANTICS 2.1).
    DefaultDeny,
    /// Several policy resources claim the local IP: which one applies is unknown, so the
    /// connection is refused until the agent resolves it.
    EndpointConflict,
}

impl Reason {
    /// Kebab-case name, as `policy explain` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Reason::NoPolicy => "no-policy",
            Reason::DenyRule => "deny-rule",
            Reason::AllowRule => "allow-rule",
            Reason::DefaultDeny => "default-deny",
            Reason::EndpointConflict => "endpoint-conflict",
        }
    }
}

/// A port range of one protocol (SEMANTICS 3.1). `protocol: None` is every protocol; port 0
/// is every port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// `None`: TCP, UDP and SCTP (`PROTOCOL_ANY`).
    pub protocol: Option<Protocol>,
    /// 0: every port.
    pub port: u16,
    /// Last port of the range, `>= port` (equal for a single port).
    pub end_port: u16,
}

impl PortRange {
    /// Whether a flow of `protocol` to `port` is in the range.
    pub fn matches(&self, protocol: Protocol, port: u16) -> bool {
        self.protocol.is_none_or(|p| p == protocol)
            && (self.port == 0 || (self.port <= port && port <= self.end_port))
    }
}

/// An HTTP rule set with the place in policy it was written. The compiled set is shared by
/// every entry, endpoint and version that carries the same rules.
#[derive(Debug, Clone)]
pub struct NamedHttpRuleSet {
    /// `KIND NAMESPACE/NAME PATH` of the `toPorts` item.
    pub origin: Arc<str>,
    /// The compiled rules.
    pub set: Arc<HttpRuleSet>,
}

/// The L7 part of an allow entry: requests pass if `allow_all`, or if any rule set allows.
#[derive(Debug, Clone)]
pub struct L7Rules {
    /// The proxy the traffic goes to.
    pub parser: L7Parser,
    /// `http: [{}]` and SEMANTICS 3.4 as computed by the agent.
    pub allow_all: bool,
    /// Compiled HTTP rule sets (empty for DNS: the DNS proxy compiles its own).
    pub http: Vec<NamedHttpRuleSet>,
}

/// One (port range, peer) entry of a direction.
#[derive(Debug, Clone)]
pub struct PolicyEntry {
    /// The ports it covers.
    pub ports: PortRange,
    /// The peer selects every identity, also ones allocated later.
    pub all_identities: bool,
    /// Selected identities, sorted and without duplicates.
    pub remote_identities: Vec<u32>,
    /// A deny entry (SEMANTICS 2.3); its L7 fields, if any, are ignored.
    pub deny: bool,
    /// `Some` for an allow through a proxy (`ACTION_REDIRECT`).
    pub l7: Option<L7Rules>,
    /// The peer as written in policy.
    pub peer: String,
    /// The rules this entry came from: `KIND NAMESPACE/NAME PATH`.
    pub origins: Vec<Arc<str>>,
}

impl PolicyEntry {
    /// Whether the entry's peer selects `identity`.
    pub fn selects(&self, identity: u32) -> bool {
        self.all_identities || self.remote_identities.binary_search(&identity).is_ok()
    }

    /// Whether the entry applies to a flow from/to `peer` with `protocol` and `port`.
    pub fn matches(&self, peer: u32, protocol: Protocol, port: u16) -> bool {
        self.ports.matches(protocol, port) && self.selects(peer)
    }
}

/// One direction of an endpoint's policy.
#[derive(Debug, Clone, Default)]
pub struct DirectionRules {
    /// Some rule selecting the endpoint speaks about this direction; if false, everything
    /// is allowed.
    pub enforced: bool,
    /// As sent by the agent, informational: the agent already turns a default-allow
    /// direction into explicit allow entries (SEMANTICS 2.2), so an enforced direction
    /// denies whatever no entry matches, as the node-agent's `evaluate` does.
    pub default_deny: bool,
    /// The entries, in the agent's order.
    pub entries: Vec<PolicyEntry>,
}

impl DirectionRules {
    /// The L3/L4 verdict of a flow with `peer` on (`protocol`, `port`), where `port` is the
    /// destination port. Same decision as the node-agent's `compiler::evaluate`:
    /// - not enforced: allowed;
    /// - a matching deny entry: denied (SEMANTICS 2.3), whatever else matches;
    /// - nothing matching: denied (SEMANTICS 2.1);
    /// - no matching entry with L7: allowed;
    /// - otherwise redirected, with the rule sets of every matching L7 entry ORed
    ///   (SEMANTICS 3.3), and every request allowed if a matching entry has `allow_all` or
    ///   a matching allow has no L7 (SEMANTICS 3.4).
    ///
    /// Redirects to a proxy other than HTTP (a matching L7 entry with the DNS parser)
    /// yield [`L3Verdict::NotHttp`].
    pub fn evaluate(&self, peer: u32, protocol: Protocol, port: u16) -> L3Verdict {
        if !self.enforced {
            return L3Verdict::Allowed {
                reason: Reason::NoPolicy,
                origins: Vec::new(),
            };
        }
        let matching: Vec<&PolicyEntry> = self
            .entries
            .iter()
            .filter(|e| e.matches(peer, protocol, port))
            .collect();
        if matching.iter().any(|e| e.deny) {
            return L3Verdict::Denied {
                reason: Reason::DenyRule,
                origins: origins(matching.iter().copied().filter(|e| e.deny)),
            };
        }
        if matching.is_empty() {
            return L3Verdict::Denied {
                reason: Reason::DefaultDeny,
                origins: Vec::new(),
            };
        }
        let all_origins = origins(matching.iter().copied());
        let mut l7 = matching.iter().filter_map(|e| e.l7.as_ref()).peekable();
        if l7.peek().is_none() {
            return L3Verdict::Allowed {
                reason: Reason::AllowRule,
                origins: all_origins,
            };
        }
        let mut redirect = HttpRedirect {
            rule_sets: Vec::new(),
            allow_all: matching.iter().any(|e| e.l7.is_none()),
            origins: all_origins,
        };
        let mut other_parser = None;
        for rules in l7 {
            if rules.parser != L7Parser::Http {
                other_parser.get_or_insert(rules.parser);
                continue;
            }
            redirect.allow_all |= rules.allow_all;
            for named in &rules.http {
                // Two selectors covering the same peer carry the same rules twice.
                let seen = redirect
                    .rule_sets
                    .iter()
                    .any(|s| Arc::ptr_eq(&s.set, &named.set) && s.origin == named.origin);
                if !seen {
                    redirect.rule_sets.push(named.clone());
                }
            }
        }
        match other_parser {
            Some(parser) => L3Verdict::NotHttp {
                parser,
                origins: redirect.origins,
            },
            None => L3Verdict::Redirect(redirect),
        }
    }
}

/// The origins of `entries`, each once, in order.
fn origins<'a>(entries: impl Iterator<Item = &'a PolicyEntry>) -> Vec<Arc<str>> {
    let mut out: Vec<Arc<str>> = Vec::new();
    for origin in entries.flat_map(|e| e.origins.iter()) {
        if !out.contains(origin) {
            out.push(origin.clone());
        }
    }
    out
}

/// The policy of one local endpoint (one `NetworkPolicy` resource).
#[derive(Debug, Clone)]
pub struct EndpointPolicy {
    /// The resource name, `NAMESPACE/POD`.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// The endpoint's IPs (IPv4-mapped IPv6 addresses stored as IPv4).
    pub ips: Vec<IpAddr>,
    /// The endpoint's security identity.
    pub identity: u32,
    /// Ingress policy.
    pub ingress: DirectionRules,
    /// Egress policy.
    pub egress: DirectionRules,
}

impl EndpointPolicy {
    /// The policy of `direction`.
    pub fn direction(&self, direction: Direction) -> &DirectionRules {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// Every local endpoint's policy, indexed by IP: the state of the `NetworkPolicy` type.
#[derive(Debug, Clone, Default)]
pub struct EndpointPolicies {
    by_name: BTreeMap<String, Arc<EndpointPolicy>>,
    by_ip: HashMap<IpAddr, Arc<EndpointPolicy>>,
    /// IPs claimed by more than one resource -> the names of those resources.
    conflicts: HashMap<IpAddr, Vec<String>>,
}

impl EndpointPolicies {
    /// Indexes `endpoints` by name and IP. An IP claimed by several endpoints (a pod
    /// leaving while a new one reuses its address) is left out of the IP index and
    /// recorded as a conflict: connections of that IP are denied until it is resolved.
    pub fn new(endpoints: impl IntoIterator<Item = EndpointPolicy>) -> Self {
        let mut out = EndpointPolicies::default();
        let mut claims: HashMap<IpAddr, Vec<Arc<EndpointPolicy>>> = HashMap::new();
        for endpoint in endpoints {
            let endpoint = Arc::new(endpoint);
            for ip in &endpoint.ips {
                let claimants = claims.entry(*ip).or_default();
                if !claimants.iter().any(|c| Arc::ptr_eq(c, &endpoint)) {
                    claimants.push(endpoint.clone());
                }
            }
            out.by_name.insert(endpoint.name.clone(), endpoint);
        }
        for (ip, mut claimants) in claims {
            if claimants.len() == 1 {
                if let Some(endpoint) = claimants.pop() {
                    out.by_ip.insert(ip, endpoint);
                }
            } else {
                let names: Vec<String> = claimants.iter().map(|c| c.name.clone()).collect();
                tracing::warn!(%ip, endpoints = ?names, "several endpoints claim one IP; its connections are denied");
                out.conflicts.insert(ip, names);
            }
        }
        out
    }

    /// The endpoint with this resource name (`NAMESPACE/POD`).
    pub fn endpoint(&self, name: &str) -> Option<&Arc<EndpointPolicy>> {
        self.by_name.get(name)
    }

    /// The endpoint that owns `ip`, if exactly one does.
    pub fn endpoint_by_ip(&self, ip: IpAddr) -> Option<&Arc<EndpointPolicy>> {
        self.by_ip.get(&ip.to_canonical())
    }

    /// Every endpoint, by name.
    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<EndpointPolicy>> {
        self.by_name.values()
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when there is no endpoint.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// IPs claimed by several endpoints, with the endpoints' names.
    pub fn conflicts(&self) -> &HashMap<IpAddr, Vec<String>> {
        &self.conflicts
    }

    /// The policy of one TCP connection as seen from the local endpoint's side.
    ///
    /// `local` is the local endpoint's address: the original destination for `Ingress`,
    /// the source for `Egress`; `peer` is the other end, and `peer_identity` its identity
    /// (from [`super::IdentityMap::lookup`]). The port evaluated is the destination port:
    /// `local`'s for ingress, `peer`'s for egress. A local IP with no policy resource
    /// gives [`L3Verdict::Unknown`]: the caller fails closed.
    pub fn connection(
        &self,
        direction: Direction,
        local: SocketAddr,
        peer: SocketAddr,
        peer_identity: u32,
    ) -> ConnectionPolicy {
        let port = match direction {
            Direction::Ingress => local.port(),
            Direction::Egress => peer.port(),
        };
        let local_ip = local.ip().to_canonical();
        let (endpoint, verdict) = match self.by_ip.get(&local_ip) {
            Some(endpoint) => {
                let verdict =
                    endpoint
                        .direction(direction)
                        .evaluate(peer_identity, Protocol::Tcp, port);
                (Some(endpoint.clone()), verdict)
            }
            None => match self.conflicts.get(&local_ip) {
                Some(names) => (
                    None,
                    L3Verdict::Denied {
                        reason: Reason::EndpointConflict,
                        origins: names.iter().map(|n| Arc::from(n.as_str())).collect(),
                    },
                ),
                None => (None, L3Verdict::Unknown),
            },
        };
        ConnectionPolicy {
            direction,
            local,
            peer,
            peer_identity,
            port,
            endpoint,
            verdict,
        }
    }
}
