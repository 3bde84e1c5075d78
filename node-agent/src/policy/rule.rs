//! Validated rules: the shapes the compiler works with, produced from the wire format of
//! `api` by `convert` (objects, peers) and `convert_ports` (ports and L7 rules).

use std::fmt;
use std::sync::Arc;

use dns_proxy::{DnsRuleSet, DnsSelectorSpec};
use ipnet::IpNet;
use l7_proxy::{HttpRuleSet, HttpRuleSpec};

use crate::policy::PolicyKey;
use crate::policy::selector::Selector;

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
    /// Path of this `ports[]` entry.
    pub path: String,
    /// Path of the `toPorts[]` item that holds it (and its `rules`).
    pub to_ports_path: String,
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
