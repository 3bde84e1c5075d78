//! Checking `toPorts` items: port numbers and names, protocols, and the L7 rules they carry
//! (SEMANTICS 3.1, 3.2, 4, 5), compiled once here so every endpoint shares them.

use std::collections::BTreeMap;
use std::sync::Arc;

use dns_proxy::{DnsRuleSet, DnsSelectorSpec};
use l7_proxy::{HeaderMatchSpec, HttpRuleSet, HttpRuleSpec, MismatchAction, SecretRef};

use super::convert::Checker;
use super::rule::{L7Parser, L7Spec, PortRef, PortSpec, Protocol, Rule};
use crate::policy::Direction;
use crate::policy::api;

/// Cilium refuses more than this many ports in one `toPorts` item; so do we.
const MAX_PORTS_PER_RULE: usize = 40;

pub(super) fn convert_deny_ports(
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

pub(super) fn convert_port_rules(
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
                    e.reason(),
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

pub(super) fn convert_dns_selector(
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
            to_ports_path: path.to_owned(),
            port,
            protocols,
            l7: l7.cloned(),
        });
    }
    out
}

/// Cilium keeps one L7 parser per port and protocol; two different parsers on the same
/// port of one direction cannot be merged. Within one object that is a validation error.
pub(super) fn check_l7_conflicts(c: &mut Checker<'_>, rules: &[Rule]) {
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
