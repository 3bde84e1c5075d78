//! Checking the wire format of `api` field by field (SEMANTICS 1-6) and turning it into
//! `rule` shapes. Every error names the field path, and all errors of an object are
//! collected rather than only the first. Ports and L7 rules are in `convert_ports`.

use ipnet::IpNet;

use super::convert_ports::{
    check_l7_conflicts, convert_deny_ports, convert_dns_selector, convert_port_rules,
};
use super::rule::{DirectionRules, DnsSelectorSpecKey, Peer, PeerRule, PortSpec, Rule, RuleOrigin};
use crate::labels::{NAMESPACE_LABELS_PREFIX, POD_NAMESPACE_LABEL, SOURCE_K8S, SOURCE_RESERVED};
use crate::policy::api;
use crate::policy::selector::{Operator, Requirement, Selector};
use crate::policy::{Direction, FieldError, PolicyKey};

/// Collects errors while converting one object.
pub(super) struct Checker<'a> {
    pub(super) key: &'a PolicyKey,
    pub(super) errors: Vec<FieldError>,
}

impl Checker<'_> {
    pub(super) fn error(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(FieldError::new(path, reason));
    }

    pub(super) fn unsupported<T>(&mut self, field: &Option<T>, path: &str, name: &str) {
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

impl<'a> L3Fields<'a> {
    /// The peer fields of one rule item, named as its direction names them.
    fn new(
        direction: Direction,
        endpoints: Option<&'a Vec<api::LabelSelector>>,
        cidr: Option<&'a Vec<String>>,
        cidr_set: Option<&'a Vec<api::CidrRule>>,
        entities: Option<&'a Vec<String>>,
        fqdns: Option<&'a Vec<api::FqdnSelector>>,
    ) -> Self {
        let names = match direction {
            Direction::Ingress => ["fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities"],
            Direction::Egress => ["toEndpoints", "toCIDR", "toCIDRSet", "toEntities"],
        };
        Self {
            endpoints: (names[0], endpoints),
            cidr: (names[1], cidr),
            cidr_set: (names[2], cidr_set),
            entities: (names[3], entities),
            fqdns,
        }
    }
}

impl Checker<'_> {
    /// Reports each of the named fields that is present as not supported.
    fn unsupported_fields(&mut self, path: &str, fields: &[(bool, &str)]) {
        for (present, name) in fields {
            if *present {
                self.error(
                    format!("{path}.{name}"),
                    format!("{name} is not supported by this enforcer"),
                );
            }
        }
    }
}

fn convert_ingress(c: &mut Checker<'_>, path: &str, r: &api::IngressRule) -> Option<PeerRule> {
    c.unsupported_fields(
        path,
        &[
            (r.from_requires.is_some(), "fromRequires"),
            (r.from_groups.is_some(), "fromGroups"),
            (r.from_nodes.is_some(), "fromNodes"),
            (r.icmps.is_some(), "icmps"),
            (r.authentication.is_some(), "authentication"),
        ],
    );
    let fields = L3Fields::new(
        Direction::Ingress,
        r.from_endpoints.as_ref(),
        r.from_cidr.as_ref(),
        r.from_cidr_set.as_ref(),
        r.from_entities.as_ref(),
        None,
    );
    let peers = convert_peers(c, path, fields);
    let ports = convert_port_rules(c, path, r.to_ports.as_deref(), Direction::Ingress);
    Some(peer_rule(c, path, false, peers, ports))
}

fn convert_ingress_deny(
    c: &mut Checker<'_>,
    path: &str,
    r: &api::IngressDenyRule,
) -> Option<PeerRule> {
    c.unsupported_fields(
        path,
        &[
            (r.from_requires.is_some(), "fromRequires"),
            (r.from_groups.is_some(), "fromGroups"),
            (r.from_nodes.is_some(), "fromNodes"),
            (r.icmps.is_some(), "icmps"),
        ],
    );
    let fields = L3Fields::new(
        Direction::Ingress,
        r.from_endpoints.as_ref(),
        r.from_cidr.as_ref(),
        r.from_cidr_set.as_ref(),
        r.from_entities.as_ref(),
        None,
    );
    let peers = convert_peers(c, path, fields);
    let ports = convert_deny_ports(c, path, r.to_ports.as_deref());
    Some(peer_rule(c, path, true, peers, ports))
}

fn convert_egress(c: &mut Checker<'_>, path: &str, r: &api::EgressRule) -> Option<PeerRule> {
    c.unsupported_fields(
        path,
        &[
            (r.to_requires.is_some(), "toRequires"),
            (r.to_services.is_some(), "toServices"),
            (r.to_groups.is_some(), "toGroups"),
            (r.to_nodes.is_some(), "toNodes"),
            (r.icmps.is_some(), "icmps"),
            (r.authentication.is_some(), "authentication"),
        ],
    );
    let fields = L3Fields::new(
        Direction::Egress,
        r.to_endpoints.as_ref(),
        r.to_cidr.as_ref(),
        r.to_cidr_set.as_ref(),
        r.to_entities.as_ref(),
        r.to_fqdns.as_ref(),
    );
    let peers = convert_peers(c, path, fields);
    let ports = convert_port_rules(c, path, r.to_ports.as_deref(), Direction::Egress);
    Some(peer_rule(c, path, false, peers, ports))
}

fn convert_egress_deny(
    c: &mut Checker<'_>,
    path: &str,
    r: &api::EgressDenyRule,
) -> Option<PeerRule> {
    c.unsupported_fields(
        path,
        &[
            (r.to_requires.is_some(), "toRequires"),
            (r.to_services.is_some(), "toServices"),
            (r.to_groups.is_some(), "toGroups"),
            (r.to_nodes.is_some(), "toNodes"),
            (r.icmps.is_some(), "icmps"),
        ],
    );
    let fields = L3Fields::new(
        Direction::Egress,
        r.to_endpoints.as_ref(),
        r.to_cidr.as_ref(),
        r.to_cidr_set.as_ref(),
        r.to_entities.as_ref(),
        None,
    );
    let peers = convert_peers(c, path, fields);
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
