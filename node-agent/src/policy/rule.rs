//! Validated rules: the wire format of `api` checked field by field (SEMANTICS 1-6) and
//! turned into the shapes the compiler works with. Every error names the field path, and
//! all errors of an object are collected rather than only the first.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use dns_proxy::{DnsRuleSet, DnsSelectorSpec};
use ipnet::IpNet;
use l7_proxy::{HeaderMatchSpec, HttpRuleSet, HttpRuleSpec, MismatchAction, SecretRef};

use crate::labels::{NAMESPACE_LABELS_PREFIX, POD_NAMESPACE_LABEL, SOURCE_K8S, SOURCE_RESERVED};
use crate::policy::api;
use crate::policy::selector::{Operator, Requirement, Selector};
use crate::policy::{FieldError, PolicyKey};

/// Cilium refuses more than this many ports in one `toPorts` item; so do we.
const MAX_PORTS_PER_RULE: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a rule came from, for `explain` and flow records.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleOrigin {
    pub policy: PolicyKey,
    /// Path of the rule inside the object, e.g. `spec.ingress[0]`.
    pub path: String,
}

impl fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.policy, self.path)
    }
}

/// A peer a rule names. Entities and CIDRs are kept as written so that `explain` and
/// `show` print what the user wrote.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// The rule names no peer (only ports, or nothing): every identity.
    Any,
    Endpoints(Selector),
    Entity {
        name: String,
        selectors: Vec<Selector>,
    },
    Cidr {
        prefix: IpNet,
        except: Vec<IpNet>,
    },
    Fqdn(DnsSelectorSpecKey),
}

/// `DnsSelectorSpec` with an order, so peers can key maps.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsSelectorSpecKey {
    pub match_name: Option<String>,
    pub match_pattern: Option<String>,
}

impl DnsSelectorSpecKey {
    pub fn spec(&self) -> DnsSelectorSpec {
        match (&self.match_name, &self.match_pattern) {
            (Some(name), _) => DnsSelectorSpec::MatchName(name.clone()),
            (None, Some(pattern)) => DnsSelectorSpec::MatchPattern(pattern.clone()),
            (None, None) => DnsSelectorSpec::MatchName(String::new()),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Any => write!(f, "any peer"),
            Peer::Endpoints(selector) => write!(f, "endpoints {selector}"),
            Peer::Entity { name, .. } => write!(f, "entity {name}"),
            Peer::Cidr { prefix, except } if except.is_empty() => write!(f, "cidr {prefix}"),
            Peer::Cidr { prefix, except } => {
                let except: Vec<String> = except.iter().map(ToString::to_string).collect();
                write!(f, "cidr {prefix} except {}", except.join(","))
            }
            Peer::Fqdn(spec) => match (&spec.match_name, &spec.match_pattern) {
                (Some(name), _) => write!(f, "fqdn matchName {name}"),
                (_, Some(pattern)) => write!(f, "fqdn matchPattern {pattern}"),
                _ => write!(f, "fqdn"),
            },
        }
    }
}

/// The numeric port of a `toPorts.ports[]` entry, or a container port name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortRef {
    /// 0 means every port of the protocol.
    Number {
        port: u16,
        end_port: u16,
    },
    Named(String),
}

/// L7 rules of one `toPorts` item, compiled once per policy version.
#[derive(Debug, Clone)]
pub enum L7Spec {
    Http {
        specs: Vec<HttpRuleSpec>,
        compiled: Arc<HttpRuleSet>,
    },
    Dns {
        specs: Vec<DnsSelectorSpec>,
        compiled: Arc<DnsRuleSet>,
    },
}

impl L7Spec {
    pub fn parser(&self) -> L7Parser {
        match self {
            L7Spec::Http { .. } => L7Parser::Http,
            L7Spec::Dns { .. } => L7Parser::Dns,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum L7Parser {
    Http,
    Dns,
}

impl L7Parser {
    pub fn name(self) -> &'static str {
        match self {
            L7Parser::Http => "http",
            L7Parser::Dns => "dns",
        }
    }
}

/// One `toPorts[].ports[]` entry with its protocols expanded (ANY is TCP, UDP and SCTP).
#[derive(Debug, Clone)]
pub struct PortSpec {
    pub path: String,
    pub port: PortRef,
    pub protocols: Vec<Protocol>,
    pub l7: Option<L7Spec>,
}

/// One item of `ingress`, `ingressDeny`, `egress` or `egressDeny`.
#[derive(Debug, Clone)]
pub struct PeerRule {
    pub origin: RuleOrigin,
    pub deny: bool,
    /// `None`: the rule names no peer, so it applies to every peer.
    pub peers: Option<Vec<Peer>>,
    /// Empty: every port and protocol (an L3-only rule).
    pub ports: Vec<PortSpec>,
}

/// One `spec` or `specs[]` item, validated.
#[derive(Debug, Clone)]
pub struct Rule {
    pub origin: RuleOrigin,
    pub endpoint_selector: Selector,
    pub description: Option<String>,
    pub labels: Vec<String>,
    pub ingress: DirectionRules,
    pub egress: DirectionRules,
}

#[derive(Debug, Clone, Default)]
pub struct DirectionRules {
    /// The rule says something about this direction (sections present, or default deny set).
    pub relevant: bool,
    pub default_deny: bool,
    pub rules: Vec<PeerRule>,
}

impl Rule {
    pub fn direction(&self, direction: Direction) -> &DirectionRules {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// Collects errors while converting one object.
struct Checker<'a> {
    key: &'a PolicyKey,
    errors: Vec<FieldError>,
}

impl Checker<'_> {
    fn error(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(FieldError::new(path, reason));
    }

    fn unsupported<T>(&mut self, field: &Option<T>, path: &str, name: &str) {
        if field.is_some() {
            self.error(
                format!("{path}.{name}"),
                format!("{name} is not supported by this enforcer"),
            );
        }
    }

    fn selector(&mut self, api: &api::LabelSelector, path: &str) -> Option<Selector> {
        match Selector::from_api(api, path) {
            Ok(s) => Some(s),
            Err(errors) => {
                self.errors.extend(errors);
                None
            }
        }
    }

    /// SEMANTICS 1.4: a peer selector of a namespaced policy that does not name a namespace
    /// is restricted to the policy's namespace; one of a clusterwide policy is restricted
    /// to pods (any namespace). Selectors of reserved labels are left alone.
    fn scope_peer_selector(&self, mut selector: Selector) -> Selector {
        if selector.has_source(SOURCE_RESERVED) {
            return selector;
        }
        if selector.has_key(POD_NAMESPACE_LABEL) {
            return selector;
        }
        match &self.key.namespace {
            None => selector.add(Requirement {
                source: SOURCE_K8S.into(),
                key: POD_NAMESPACE_LABEL.into(),
                operator: Operator::Exists,
                values: vec![],
            }),
            Some(ns) => {
                if !selector.has_key_prefix(NAMESPACE_LABELS_PREFIX) {
                    selector.add(Requirement {
                        source: SOURCE_K8S.into(),
                        key: POD_NAMESPACE_LABEL.into(),
                        operator: Operator::In,
                        values: vec![ns.clone()],
                    });
                }
            }
        }
        selector
    }
}

/// Validates and converts the rules of one policy object. `specs` pairs each rule with its
/// path (`spec` or `specs[N]`).
pub fn convert_rules(
    key: &PolicyKey,
    specs: &[(String, api::RuleSpec)],
) -> Result<Vec<Rule>, Vec<FieldError>> {
    let mut checker = Checker {
        key,
        errors: Vec::new(),
    };
    let mut rules = Vec::new();
    for (path, spec) in specs {
        if let Some(rule) = convert_rule(&mut checker, path, spec) {
            rules.push(rule);
        }
    }
    check_l7_conflicts(&mut checker, &rules);
    if checker.errors.is_empty() {
        Ok(rules)
    } else {
        Err(checker.errors)
    }
}

fn convert_rule(c: &mut Checker<'_>, path: &str, spec: &api::RuleSpec) -> Option<Rule> {
    let before = c.errors.len();
    c.unsupported(&spec.node_selector, path, "nodeSelector");
    c.unsupported(&spec.log, path, "log");
    let endpoint_selector = match &spec.endpoint_selector {
        None => {
            c.error(
                format!("{path}.endpointSelector"),
                "endpointSelector is required",
            );
            None
        }
        Some(api) => c
            .selector(api, &format!("{path}.endpointSelector"))
            .map(|mut s| {
                if let Some(ns) = &c.key.namespace {
                    s.add(Requirement {
                        source: SOURCE_K8S.into(),
                        key: POD_NAMESPACE_LABEL.into(),
                        operator: Operator::In,
                        values: vec![ns.clone()],
                    });
                }
                s
            }),
    };
    let mut ingress_rules = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        let p = format!("{path}.ingress[{i}]");
        ingress_rules.extend(convert_ingress(c, &p, r));
    }
    for (i, r) in spec.ingress_deny.iter().flatten().enumerate() {
        let p = format!("{path}.ingressDeny[{i}]");
        ingress_rules.extend(convert_ingress_deny(c, &p, r));
    }
    let mut egress_rules = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        let p = format!("{path}.egress[{i}]");
        egress_rules.extend(convert_egress(c, &p, r));
    }
    for (i, r) in spec.egress_deny.iter().flatten().enumerate() {
        let p = format!("{path}.egressDeny[{i}]");
        egress_rules.extend(convert_egress_deny(c, &p, r));
    }

    // SEMANTICS 2.1: a non-empty ingress/ingressDeny section makes the direction default
    // deny unless enableDefaultDeny says otherwise (Cilium's Rule.Sanitize).
    let has_ingress = spec.ingress.as_ref().is_some_and(|v| !v.is_empty())
        || spec.ingress_deny.as_ref().is_some_and(|v| !v.is_empty());
    let has_egress = spec.egress.as_ref().is_some_and(|v| !v.is_empty())
        || spec.egress_deny.as_ref().is_some_and(|v| !v.is_empty());
    let dd = spec.enable_default_deny.clone().unwrap_or_default();
    let ingress_dd = dd.ingress.unwrap_or(has_ingress);
    let egress_dd = dd.egress.unwrap_or(has_egress);

    let labels = spec
        .labels
        .iter()
        .flatten()
        .map(|l| {
            let source = if l.source.is_empty() {
                "unspec"
            } else {
                &l.source
            };
            format!("{source}:{}={}", l.key, l.value)
        })
        .collect();

    if c.errors.len() > before {
        return None;
    }
    Some(Rule {
        origin: RuleOrigin {
            policy: c.key.clone(),
            path: path.to_owned(),
        },
        endpoint_selector: endpoint_selector?,
        description: spec.description.clone(),
        labels,
        ingress: DirectionRules {
            relevant: has_ingress || ingress_dd,
            default_deny: ingress_dd,
            rules: ingress_rules,
        },
        egress: DirectionRules {
            relevant: has_egress || egress_dd,
            default_deny: egress_dd,
            rules: egress_rules,
        },
    })
}

/// The L3 fields of one peer rule, whichever direction it has.
struct L3Fields<'a> {
    endpoints: (&'static str, Option<&'a Vec<api::LabelSelector>>),
    cidr: (&'static str, Option<&'a Vec<String>>),
    cidr_set: (&'static str, Option<&'a Vec<api::CidrRule>>),
    entities: (&'static str, Option<&'a Vec<String>>),
    fqdns: Option<&'a Vec<api::FqdnSelector>>,
}

fn convert_peers(c: &mut Checker<'_>, path: &str, f: L3Fields<'_>) -> Option<Vec<Peer>> {
    // Cilium rejects mixing peer kinds in one rule ("Combining X and Y is not supported yet").
    let present: Vec<&str> = [
        f.endpoints
            .1
            .filter(|v| !v.is_empty())
            .map(|_| f.endpoints.0),
        f.cidr.1.filter(|v| !v.is_empty()).map(|_| f.cidr.0),
        f.cidr_set.1.filter(|v| !v.is_empty()).map(|_| f.cidr_set.0),
        f.entities.1.filter(|v| !v.is_empty()).map(|_| f.entities.0),
        f.fqdns.filter(|v| !v.is_empty()).map(|_| "toFQDNs"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if present.len() > 1 {
        c.error(
            path,
            format!(
                "combining {} in one rule is not supported; write one rule per peer kind",
                present.join(" and ")
            ),
        );
    }
    let any_set = f.endpoints.1.is_some()
        || f.cidr.1.is_some()
        || f.cidr_set.1.is_some()
        || f.entities.1.is_some()
        || f.fqdns.is_some();
    if !any_set {
        return None;
    }
    let mut peers = Vec::new();
    for (i, sel) in f.endpoints.1.iter().copied().flatten().enumerate() {
        let p = format!("{path}.{}[{i}]", f.endpoints.0);
        if let Some(s) = c.selector(sel, &p) {
            peers.push(Peer::Endpoints(c.scope_peer_selector(s)));
        }
    }
    for (i, cidr) in f.cidr.1.iter().copied().flatten().enumerate() {
        let p = format!("{path}.{}[{i}]", f.cidr.0);
        // A bare address is a /32 or /128 here (Cilium's api.CIDR).
        match parse_cidr(cidr, true) {
            Ok(prefix) => peers.push(Peer::Cidr {
                prefix,
                except: vec![],
            }),
            Err(reason) => c.error(p, reason),
        }
    }
    for (i, rule) in f.cidr_set.1.iter().copied().flatten().enumerate() {
        let p = format!("{path}.{}[{i}]", f.cidr_set.0);
        c.unsupported(&rule.cidr_group_ref, &p, "cidrGroupRef");
        c.unsupported(&rule.cidr_group_selector, &p, "cidrGroupSelector");
        let Some(cidr) = &rule.cidr else {
            c.error(format!("{p}.cidr"), "cidr is required");
            continue;
        };
        let prefix = match parse_cidr(cidr, false) {
            Ok(prefix) => prefix,
            Err(reason) => {
                c.error(format!("{p}.cidr"), reason);
                continue;
            }
        };
        let mut except = Vec::new();
        for (j, e) in rule.except.iter().flatten().enumerate() {
            match parse_cidr(e, false) {
                Ok(e) if prefix.contains(&e) => except.push(e),
                Ok(_) => c.error(
                    format!("{p}.except[{j}]"),
                    format!("{e} is not inside {prefix}"),
                ),
                Err(reason) => c.error(format!("{p}.except[{j}]"), reason),
            }
        }
        peers.push(Peer::Cidr { prefix, except });
    }
    for (i, entity) in f.entities.1.iter().copied().flatten().enumerate() {
        let p = format!("{path}.{}[{i}]", f.entities.0);
        match entity_selectors(entity) {
            Some(selectors) => peers.push(Peer::Entity {
                name: entity.clone(),
                selectors,
            }),
            None => c.error(
                p,
                format!(
                    "unknown entity {entity:?} (expected one of {})",
                    ENTITIES.join(", ")
                ),
            ),
        }
    }
    for (i, fqdn) in f.fqdns.iter().copied().flatten().enumerate() {
        let p = format!("{path}.toFQDNs[{i}]");
        if convert_dns_selector(c, &p, fqdn).is_some() {
            peers.push(Peer::Fqdn(DnsSelectorSpecKey {
                match_name: fqdn.match_name.clone(),
                match_pattern: fqdn.match_pattern.clone(),
            }));
        }
    }
    Some(peers)
}

/// SEMANTICS 1.6.
pub const ENTITIES: [&str; 11] = [
    "all",
    "world",
    "cluster",
    "host",
    "remote-node",
    "kube-apiserver",
    "health",
    "init",
    "unmanaged",
    "ingress",
    "none",
];

/// Each entity as selectors of reserved labels (Cilium's EntitySelectorMapping).
pub fn entity_selectors(entity: &str) -> Option<Vec<Selector>> {
    let reserved = |name: &str| Selector::label(SOURCE_RESERVED, name, "");
    Some(match entity {
        "all" => vec![Selector::wildcard()],
        "world" => vec![
            reserved("world"),
            reserved("world-ipv4"),
            reserved("world-ipv6"),
        ],
        "cluster" => vec![
            reserved("host"),
            reserved("remote-node"),
            reserved("init"),
            reserved("health"),
            reserved("unmanaged"),
            reserved("kube-apiserver"),
            reserved("ingress"),
            Selector::label(
                SOURCE_K8S,
                crate::labels::CLUSTER_LABEL,
                crate::labels::DEFAULT_CLUSTER,
            ),
        ],
        "host" | "remote-node" | "kube-apiserver" | "health" | "init" | "unmanaged" | "ingress" => {
            vec![reserved(entity)]
        }
        "none" => vec![],
        _ => return None,
    })
}

fn parse_cidr(text: &str, allow_bare_ip: bool) -> Result<IpNet, String> {
    if text.is_empty() {
        return Err("CIDR must not be empty".into());
    }
    if let Ok(net) = text.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(format!(
                "{text} has host bits set (did you mean {}?)",
                net.trunc()
            ));
        }
        return Ok(net);
    }
    if allow_bare_ip && let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!("{text:?} is not a valid CIDR"))
}

fn convert_ingress(c: &mut Checker<'_>, path: &str, r: &api::IngressRule) -> Option<PeerRule> {
    c.unsupported(&r.from_requires, path, "fromRequires");
    c.unsupported(&r.from_groups, path, "fromGroups");
    c.unsupported(&r.from_nodes, path, "fromNodes");
    c.unsupported(&r.icmps, path, "icmps");
    c.unsupported(&r.authentication, path, "authentication");
    let peers = convert_peers(
        c,
        path,
        L3Fields {
            endpoints: ("fromEndpoints", r.from_endpoints.as_ref()),
            cidr: ("fromCIDR", r.from_cidr.as_ref()),
            cidr_set: ("fromCIDRSet", r.from_cidr_set.as_ref()),
            entities: ("fromEntities", r.from_entities.as_ref()),
            fqdns: None,
        },
    );
    let ports = convert_port_rules(c, path, r.to_ports.as_deref(), Direction::Ingress);
    Some(peer_rule(c, path, false, peers, ports))
}

fn convert_ingress_deny(
    c: &mut Checker<'_>,
    path: &str,
    r: &api::IngressDenyRule,
) -> Option<PeerRule> {
    c.unsupported(&r.from_requires, path, "fromRequires");
    c.unsupported(&r.from_groups, path, "fromGroups");
    c.unsupported(&r.from_nodes, path, "fromNodes");
    c.unsupported(&r.icmps, path, "icmps");
    let peers = convert_peers(
        c,
        path,
        L3Fields {
            endpoints: ("fromEndpoints", r.from_endpoints.as_ref()),
            cidr: ("fromCIDR", r.from_cidr.as_ref()),
            cidr_set: ("fromCIDRSet", r.from_cidr_set.as_ref()),
            entities: ("fromEntities", r.from_entities.as_ref()),
            fqdns: None,
        },
    );
    let ports = convert_deny_ports(c, path, r.to_ports.as_deref());
    Some(peer_rule(c, path, true, peers, ports))
}

fn convert_egress(c: &mut Checker<'_>, path: &str, r: &api::EgressRule) -> Option<PeerRule> {
    c.unsupported(&r.to_requires, path, "toRequires");
    c.unsupported(&r.to_services, path, "toServices");
    c.unsupported(&r.to_groups, path, "toGroups");
    c.unsupported(&r.to_nodes, path, "toNodes");
    c.unsupported(&r.icmps, path, "icmps");
    c.unsupported(&r.authentication, path, "authentication");
    let peers = convert_peers(
        c,
        path,
        L3Fields {
            endpoints: ("toEndpoints", r.to_endpoints.as_ref()),
            cidr: ("toCIDR", r.to_cidr.as_ref()),
            cidr_set: ("toCIDRSet", r.to_cidr_set.as_ref()),
            entities: ("toEntities", r.to_entities.as_ref()),
            fqdns: r.to_fqdns.as_ref(),
        },
    );
    let ports = convert_port_rules(c, path, r.to_ports.as_deref(), Direction::Egress);
    Some(peer_rule(c, path, false, peers, ports))
}

fn convert_egress_deny(
    c: &mut Checker<'_>,
    path: &str,
    r: &api::EgressDenyRule,
) -> Option<PeerRule> {
    c.unsupported(&r.to_requires, path, "toRequires");
    c.unsupported(&r.to_services, path, "toServices");
    c.unsupported(&r.to_groups, path, "toGroups");
    c.unsupported(&r.to_nodes, path, "toNodes");
    c.unsupported(&r.icmps, path, "icmps");
    let peers = convert_peers(
        c,
        path,
        L3Fields {
            endpoints: ("toEndpoints", r.to_endpoints.as_ref()),
            cidr: ("toCIDR", r.to_cidr.as_ref()),
            cidr_set: ("toCIDRSet", r.to_cidr_set.as_ref()),
            entities: ("toEntities", r.to_entities.as_ref()),
            fqdns: None,
        },
    );
    let ports = convert_deny_ports(c, path, r.to_ports.as_deref());
    Some(peer_rule(c, path, true, peers, ports))
}

fn peer_rule(
    c: &Checker<'_>,
    path: &str,
    deny: bool,
    peers: Option<Vec<Peer>>,
    ports: Vec<PortSpec>,
) -> PeerRule {
    PeerRule {
        origin: RuleOrigin {
            policy: c.key.clone(),
            path: path.to_owned(),
        },
        deny,
        peers,
        ports,
    }
}

fn convert_deny_ports(
    c: &mut Checker<'_>,
    path: &str,
    ports: Option<&[api::PortDenyRule]>,
) -> Vec<PortSpec> {
    let mut out = Vec::new();
    for (i, pr) in ports.into_iter().flatten().enumerate() {
        let p = format!("{path}.toPorts[{i}]");
        out.extend(convert_ports(c, &p, pr.ports.as_deref(), None));
    }
    out
}

fn convert_port_rules(
    c: &mut Checker<'_>,
    path: &str,
    ports: Option<&[api::PortRule]>,
    direction: Direction,
) -> Vec<PortSpec> {
    let mut out = Vec::new();
    for (i, pr) in ports.into_iter().flatten().enumerate() {
        let p = format!("{path}.toPorts[{i}]");
        c.unsupported(&pr.terminating_tls, &p, "terminatingTLS");
        c.unsupported(&pr.originating_tls, &p, "originatingTLS");
        c.unsupported(&pr.server_names, &p, "serverNames");
        c.unsupported(&pr.listener, &p, "listener");
        let l7 = pr
            .rules
            .as_ref()
            .and_then(|rules| convert_l7(c, &format!("{p}.rules"), rules, direction));
        out.extend(convert_ports(c, &p, pr.ports.as_deref(), l7.as_ref()));
    }
    out
}

fn convert_l7(
    c: &mut Checker<'_>,
    path: &str,
    rules: &api::L7Rules,
    direction: Direction,
) -> Option<L7Spec> {
    c.unsupported(&rules.kafka, path, "kafka");
    c.unsupported(&rules.l7_proto, path, "l7proto");
    c.unsupported(&rules.l7, path, "l7");
    if rules.http.is_some() && rules.dns.is_some() {
        c.error(
            path,
            "http and dns rules in one toPorts item: only one L7 protocol per port",
        );
        return None;
    }
    if let Some(http) = &rules.http {
        let mut specs = Vec::new();
        for (i, h) in http.iter().enumerate() {
            if let Some(spec) = convert_http(c, &format!("{path}.http[{i}]"), h) {
                specs.push(spec);
            }
        }
        if specs.len() != http.len() {
            return None;
        }
        return match HttpRuleSet::compile(&specs) {
            Ok(compiled) => Some(L7Spec::Http {
                specs,
                compiled: Arc::new(compiled),
            }),
            Err(e) => {
                c.error(
                    format!("{path}.http[{}].{}", e.index(), e.field_path()),
                    e.to_string(),
                );
                None
            }
        };
    }
    if let Some(dns) = &rules.dns {
        if direction == Direction::Ingress {
            c.error(
                format!("{path}.dns"),
                "DNS rules are only allowed on egress (SEMANTICS 3.2)",
            );
            return None;
        }
        let mut specs = Vec::new();
        for (i, d) in dns.iter().enumerate() {
            if let Some(spec) = convert_dns_selector(c, &format!("{path}.dns[{i}]"), d) {
                specs.push(spec);
            }
        }
        if specs.len() != dns.len() {
            return None;
        }
        return match DnsRuleSet::compile(&specs) {
            Ok(compiled) => Some(L7Spec::Dns {
                specs,
                compiled: Arc::new(compiled),
            }),
            Err(e) => {
                c.error(format!("{path}.dns"), e.to_string());
                None
            }
        };
    }
    None
}

fn convert_http(c: &mut Checker<'_>, path: &str, h: &api::HttpRule) -> Option<HttpRuleSpec> {
    let mut header_matches = Vec::new();
    let mut ok = true;
    for (i, m) in h.header_matches.iter().flatten().enumerate() {
        let p = format!("{path}.headerMatches[{i}]");
        let Some(name) = m.name.clone().filter(|n| !n.is_empty()) else {
            c.error(format!("{p}.name"), "name is required");
            ok = false;
            continue;
        };
        let mismatch = match m.mismatch.as_deref() {
            None | Some("") => None,
            Some("LOG") => Some(MismatchAction::Log),
            Some("ADD") => Some(MismatchAction::Add),
            Some("DELETE") => Some(MismatchAction::Delete),
            Some("REPLACE") => Some(MismatchAction::Replace),
            Some(other) => {
                c.error(
                    format!("{p}.mismatch"),
                    format!(
                        "unknown mismatch action {other:?} (expected LOG, ADD, DELETE or REPLACE)"
                    ),
                );
                ok = false;
                continue;
            }
        };
        let secret = match &m.secret {
            None => None,
            Some(s) => match s.name.clone().filter(|n| !n.is_empty()) {
                Some(name) => Some(SecretRef {
                    namespace: s.namespace.clone(),
                    name,
                }),
                None => {
                    c.error(format!("{p}.secret.name"), "secret name is required");
                    ok = false;
                    continue;
                }
            },
        };
        header_matches.push(HeaderMatchSpec {
            name,
            value: m.value.clone(),
            secret,
            mismatch,
        });
    }
    ok.then(|| HttpRuleSpec {
        method: h.method.clone(),
        path: h.path.clone(),
        host: h.host.clone(),
        headers: h.headers.clone().unwrap_or_default(),
        header_matches,
    })
}

fn convert_dns_selector(
    c: &mut Checker<'_>,
    path: &str,
    d: &api::DnsRule,
) -> Option<DnsSelectorSpec> {
    match (&d.match_name, &d.match_pattern) {
        (Some(_), Some(_)) => {
            c.error(path, "set only one of matchName and matchPattern");
            None
        }
        (None, None) => {
            c.error(path, "one of matchName or matchPattern is required");
            None
        }
        (Some(name), None) => match dns_proxy::validate_match_name(name) {
            Ok(()) => Some(DnsSelectorSpec::MatchName(name.clone())),
            Err(e) => {
                c.error(format!("{path}.matchName"), e.to_string());
                None
            }
        },
        (None, Some(pattern)) => match dns_proxy::validate_match_pattern(pattern) {
            Ok(()) => Some(DnsSelectorSpec::MatchPattern(pattern.clone())),
            Err(e) => {
                c.error(format!("{path}.matchPattern"), e.to_string());
                None
            }
        },
    }
}

/// True for an IANA service name as Cilium checks it: 1-15 characters of lower-case
/// letters, digits and `-`, at least one letter, no leading, trailing or double `-`.
fn is_service_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn convert_ports(
    c: &mut Checker<'_>,
    path: &str,
    ports: Option<&[api::PortProtocol]>,
    l7: Option<&L7Spec>,
) -> Vec<PortSpec> {
    let ports = ports.unwrap_or_default();
    if ports.len() > MAX_PORTS_PER_RULE {
        c.error(
            format!("{path}.ports"),
            format!(
                "{} ports in one item; at most {MAX_PORTS_PER_RULE} are allowed",
                ports.len()
            ),
        );
        return vec![];
    }
    if ports.is_empty() && l7.is_some() {
        c.error(
            format!("{path}.ports"),
            "L7 rules need at least one port (SEMANTICS 3.2)",
        );
        return vec![];
    }
    let mut out = Vec::new();
    for (i, pp) in ports.iter().enumerate() {
        let p = format!("{path}.ports[{i}]");
        let port = match &pp.port {
            None => {
                c.error(format!("{p}.port"), "port is required");
                continue;
            }
            Some(api::PortValue::Number(n)) => match u16::try_from(*n) {
                Ok(n) => PortRef::Number {
                    port: n,
                    end_port: n,
                },
                Err(_) => {
                    c.error(
                        format!("{p}.port"),
                        format!("port {n} is out of range 0-65535"),
                    );
                    continue;
                }
            },
            Some(api::PortValue::Text(t)) => {
                let lower = t.to_ascii_lowercase();
                if let Ok(n) = t.parse::<u16>() {
                    PortRef::Number {
                        port: n,
                        end_port: n,
                    }
                } else if is_service_name(&lower) {
                    PortRef::Named(lower)
                } else if t.parse::<u64>().is_ok() {
                    c.error(
                        format!("{p}.port"),
                        format!("port {t} is out of range 0-65535"),
                    );
                    continue;
                } else {
                    c.error(
                        format!("{p}.port"),
                        format!("{t:?} is neither a port number nor a valid port name"),
                    );
                    continue;
                }
            }
        };
        let port = match (port, pp.end_port) {
            (port, None | Some(0)) => port,
            (PortRef::Named(name), Some(_)) => {
                c.error(
                    format!("{p}.endPort"),
                    format!("endPort cannot be used with the named port {name:?}"),
                );
                continue;
            }
            (PortRef::Number { port, .. }, Some(end)) => match u16::try_from(end) {
                Ok(end) if end >= port => PortRef::Number {
                    port,
                    end_port: end,
                },
                Ok(end) => {
                    c.error(
                        format!("{p}.endPort"),
                        format!("endPort {end} is below port {port}"),
                    );
                    continue;
                }
                Err(_) => {
                    c.error(
                        format!("{p}.endPort"),
                        format!("endPort {end} is out of range 0-65535"),
                    );
                    continue;
                }
            },
        };
        let protocols = match pp.protocol.as_deref() {
            None | Some("") => Protocol::ALL.to_vec(),
            Some(s) if s.eq_ignore_ascii_case("ANY") => Protocol::ALL.to_vec(),
            Some(s) => match Protocol::parse(s) {
                Some(proto) => vec![proto],
                None => {
                    c.error(
                        format!("{p}.protocol"),
                        format!("unknown protocol {s:?} (expected TCP, UDP, SCTP or ANY)"),
                    );
                    continue;
                }
            },
        };
        if let Some(l7) = l7 {
            // SEMANTICS 3.2
            let is_zero = matches!(port, PortRef::Number { port: 0, .. });
            let is_range = matches!(port, PortRef::Number { port, end_port } if end_port > port);
            match l7.parser() {
                L7Parser::Http => {
                    if protocols != [Protocol::Tcp] {
                        c.error(
                            format!("{p}.protocol"),
                            "HTTP rules need protocol TCP".to_string(),
                        );
                        continue;
                    }
                    if is_zero {
                        c.error(format!("{p}.port"), "HTTP rules need a port other than 0");
                        continue;
                    }
                }
                L7Parser::Dns => {
                    if protocols.contains(&Protocol::Sctp) && protocols.len() == 1 {
                        c.error(
                            format!("{p}.protocol"),
                            "DNS rules need protocol UDP, TCP or ANY",
                        );
                        continue;
                    }
                    if is_zero {
                        c.error(format!("{p}.port"), "DNS rules need a port other than 0");
                        continue;
                    }
                    if is_range {
                        c.error(
                            format!("{p}.endPort"),
                            "DNS rules do not support port ranges",
                        );
                        continue;
                    }
                }
            }
        }
        // DNS over SCTP does not exist; ANY with DNS rules redirects TCP and UDP only.
        let protocols = match l7.map(L7Spec::parser) {
            Some(L7Parser::Dns) => protocols
                .into_iter()
                .filter(|p| *p != Protocol::Sctp)
                .collect(),
            _ => protocols,
        };
        out.push(PortSpec {
            path: p,
            port,
            protocols,
            l7: l7.cloned(),
        });
    }
    out
}

/// Cilium keeps one L7 parser per port and protocol; two different parsers on the same
/// port of one direction cannot be merged. Within one object that is a validation error.
fn check_l7_conflicts(c: &mut Checker<'_>, rules: &[Rule]) {
    for direction in Direction::BOTH {
        let mut seen: BTreeMap<(PortRef, Protocol), (L7Parser, String)> = BTreeMap::new();
        for rule in rules {
            for peer_rule in &rule.direction(direction).rules {
                for port in &peer_rule.ports {
                    let Some(l7) = &port.l7 else { continue };
                    for proto in &port.protocols {
                        let key = (port.port.clone(), *proto);
                        match seen.get(&key) {
                            Some((parser, first)) if *parser != l7.parser() => {
                                c.error(
                                    port.path.clone(),
                                    format!(
                                        "conflicting L7 parsers on {}/{}: {} here, {} at {first}",
                                        port_label(&port.port),
                                        proto,
                                        l7.parser().name(),
                                        parser.name()
                                    ),
                                );
                            }
                            Some(_) => {}
                            None => {
                                seen.insert(key, (l7.parser(), port.path.clone()));
                            }
                        }
                    }
                }
            }
        }
    }
}

pub fn port_label(port: &PortRef) -> String {
    match port {
        PortRef::Number { port, end_port } if end_port > port => format!("{port}-{end_port}"),
        PortRef::Number { port, .. } => port.to_string(),
        PortRef::Named(name) => name.clone(),
    }
}
