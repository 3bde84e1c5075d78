//! Builds the policy of one endpoint in one direction from the rules that select it,
//! following the merge rules of SEMANTICS 2 and 3:
//! - entries are keyed by (port, peer): rules for the same key merge (3.3);
//! - an L3/L4 allow without L7 on a port that has L7 rules becomes the L7 wildcard for its
//!   peer, also when it comes from another selector or from an all-ports rule (3.4);
//! - a default-allow direction is an implicit allow of every peer on every port (2.2);
//! - deny entries stay beside allows; evaluation lets a deny win (2.3).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::identity::Identity;
use crate::policy::rule::{L7Parser, PortRef, RuleOrigin};
use crate::policy::{Direction, L7Spec, Peer, Protocol, Rule};

/// A port range of one protocol; `protocol: None` with port 0 is every port of every
/// protocol (an L3-only rule). Port 0 with a protocol is every port of that protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PortKey {
    pub protocol: Option<Protocol>,
    pub port: u16,
    pub end_port: u16,
}

impl PortKey {
    pub const ANY: PortKey = PortKey {
        protocol: None,
        port: 0,
        end_port: 0,
    };

    pub fn matches(&self, protocol: Protocol, port: u16) -> bool {
        self.protocol.is_none_or(|p| p == protocol)
            && (self.port == 0 || (self.port <= port && port <= self.end_port))
    }

    /// Whether some flow is a flow of both.
    pub fn overlaps(&self, other: &PortKey) -> bool {
        let protocols = match (self.protocol, other.protocol) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        let range = |k: &PortKey| (k.port, k.end_port.max(k.port));
        let ports = self.port == 0 || other.port == 0 || {
            let ((a, b), (c, d)) = (range(self), range(other));
            a <= d && c <= b
        };
        protocols && ports
    }

    /// Whether every flow of `other` is also a flow of `self`.
    pub fn covers(&self, other: &PortKey) -> bool {
        let proto_ok = match (self.protocol, other.protocol) {
            (None, _) => true,
            (Some(a), Some(b)) => a == b,
            (Some(_), None) => false,
        };
        proto_ok
            && (self.port == 0
                || (other.port != 0 && self.port <= other.port && other.end_port <= self.end_port))
    }
}

impl std::fmt::Display for PortKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = self.protocol.map(Protocol::name).unwrap_or("ANY");
        match (self.port, self.end_port) {
            (0, _) => write!(f, "*/{proto}"),
            (p, e) if e > p => write!(f, "{p}-{e}/{proto}"),
            (p, _) => write!(f, "{p}/{proto}"),
        }
    }
}

/// The identities a peer selects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Selection {
    /// The peer selects every identity, also ones allocated later.
    pub all: bool,
    /// Sorted.
    pub identities: Vec<Identity>,
}

impl Selection {
    pub fn contains(&self, id: Identity) -> bool {
        self.all || self.identities.binary_search(&id).is_ok()
    }
}

/// L7 rules of one entry: requests are allowed if `allow_all`, or if any rule set allows.
#[derive(Debug, Clone)]
pub struct L7Policy {
    pub parser: L7Parser,
    /// Set by `http: [{}]`-like wildcards and by SEMANTICS 3.4.
    pub allow_all: bool,
    pub rules: Vec<(String, L7Spec)>,
}

#[derive(Debug, Clone)]
pub struct PolicyEntry {
    pub port: PortKey,
    pub peer: Peer,
    /// For egress named ports: the container port name this entry was resolved from.
    pub named_port: Option<String>,
    pub selection: Arc<Selection>,
    pub deny: bool,
    pub l7: Option<L7Policy>,
    pub origins: Vec<RuleOrigin>,
    /// Set when this entry exists or redirects only because of the pod's visibility
    /// annotation (SEMANTICS 7): the annotation item(s), e.g. `<Ingress/80/TCP/HTTP>`.
    pub visibility: Option<String>,
}

impl PolicyEntry {
    fn add_origin(&mut self, origin: &RuleOrigin) {
        if !self.origins.contains(origin) {
            self.origins.push(origin.clone());
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct DirectionPolicy {
    /// Some rule selecting the endpoint speaks about this direction.
    pub enforced: bool,
    pub default_deny: bool,
    pub entries: Vec<PolicyEntry>,
}

/// What building a policy needs to know about the world.
pub trait PeerResolver {
    fn select(&mut self, peer: &Peer) -> Arc<Selection>;
    /// The endpoint's own container port `name` (ingress named ports).
    fn own_named_port(&self, name: &str) -> Option<u16>;
    /// Ports that `name` stands for among the pods `peer` selects, each with the
    /// identities of the pods that use that number (egress named ports).
    fn peer_named_ports(&mut self, peer: &Peer, name: &str) -> Vec<(u16, Arc<Selection>)>;
}

type EntryKey = (PortKey, Peer, Option<String>, bool);

/// Builds one direction of one endpoint. Problems that make part of the policy unusable
/// are returned as notes; the unusable part is left out, which can only deny more.
pub fn build_direction(
    direction: Direction,
    rules: &[&Rule],
    resolver: &mut dyn PeerResolver,
) -> (DirectionPolicy, Vec<String>) {
    let mut notes = Vec::new();
    let enforced = rules.iter().any(|r| r.direction(direction).relevant);
    if !enforced {
        return (DirectionPolicy::default(), notes);
    }
    let default_deny = rules.iter().any(|r| r.direction(direction).default_deny);
    let mut entries: BTreeMap<EntryKey, PolicyEntry> = BTreeMap::new();

    for rule in rules {
        for peer_rule in &rule.direction(direction).rules {
            let peers: Vec<Peer> = match &peer_rule.peers {
                // An empty item (`ingress: [{}]`) selects nobody: it only makes the
                // direction default deny, as Cilium's "deny all" example relies on.
                None if peer_rule.ports.is_empty() => vec![],
                // Ports without peers: those ports from/to every peer.
                None => vec![Peer::Any],
                Some(peers) => peers.clone(),
            };
            for peer in peers {
                if peer_rule.ports.is_empty() {
                    let selection = resolver.select(&peer);
                    merge(
                        &mut entries,
                        (PortKey::ANY, peer.clone(), None, peer_rule.deny),
                        selection,
                        None,
                        &peer_rule.origin,
                        &mut notes,
                    );
                    continue;
                }
                for port in &peer_rule.ports {
                    let numbers: Vec<(u16, u16, Option<String>, Arc<Selection>)> = match &port.port
                    {
                        PortRef::Number { port, end_port } => {
                            vec![(*port, *end_port, None, resolver.select(&peer))]
                        }
                        PortRef::Named(name) => match direction {
                            Direction::Ingress => match resolver.own_named_port(name) {
                                Some(n) => vec![(n, n, None, resolver.select(&peer))],
                                None => {
                                    notes.push(format!(
                                        "{}: named port {name:?} is not a container port of this endpoint; entry skipped",
                                        port.path
                                    ));
                                    vec![]
                                }
                            },
                            Direction::Egress => resolver
                                .peer_named_ports(&peer, name)
                                .into_iter()
                                .map(|(n, sel)| (n, n, Some(name.clone()), sel))
                                .collect(),
                        },
                    };
                    for (lo, hi, named, selection) in numbers {
                        for proto in &port.protocols {
                            let key = PortKey {
                                protocol: Some(*proto),
                                port: lo,
                                end_port: if lo == 0 { 0 } else { hi },
                            };
                            let l7 = port
                                .l7
                                .as_ref()
                                .map(|spec| (port.to_ports_path.clone(), spec.clone()));
                            merge(
                                &mut entries,
                                (key, peer.clone(), named.clone(), peer_rule.deny),
                                selection.clone(),
                                l7,
                                &peer_rule.origin,
                                &mut notes,
                            );
                        }
                    }
                }
            }
        }
    }

    if !default_deny {
        // SEMANTICS 2.2: every rule for this direction is default-allow.
        let origin = rules
            .iter()
            .find(|r| r.direction(direction).relevant)
            .map(|r| RuleOrigin {
                policy: r.origin.policy.clone(),
                path: format!("{}.enableDefaultDeny.{}", r.origin.path, direction.name()),
            });
        if let Some(origin) = origin {
            let selection = resolver.select(&Peer::Any);
            merge(
                &mut entries,
                (PortKey::ANY, Peer::Any, None, false),
                selection,
                None,
                &origin,
                &mut notes,
            );
        }
    }

    drop_conflicting_parsers(&mut entries, &mut notes);
    wildcard_l3l4_allows(&mut entries);

    (
        DirectionPolicy {
            enforced,
            default_deny,
            entries: entries.into_values().collect(),
        },
        notes,
    )
}

fn merge(
    entries: &mut BTreeMap<EntryKey, PolicyEntry>,
    key: EntryKey,
    selection: Arc<Selection>,
    l7: Option<(String, L7Spec)>,
    origin: &RuleOrigin,
    notes: &mut Vec<String>,
) {
    let (port, peer, named_port, deny) = key.clone();
    let entry = entries.entry(key).or_insert_with(|| PolicyEntry {
        port,
        peer,
        named_port,
        selection,
        deny,
        l7: None,
        origins: Vec::new(),
        visibility: None,
    });
    let had_l3l4_allow = !entry.origins.is_empty() && entry.l7.is_none();
    entry.add_origin(origin);
    if deny {
        return;
    }
    match (l7, &mut entry.l7) {
        (None, None) => {}
        // SEMANTICS 3.4: an allow without L7 for the same peer and port wildcards L7.
        (None, Some(existing)) => existing.allow_all = true,
        (Some((path, spec)), slot @ None) => {
            *slot = Some(L7Policy {
                parser: spec.parser(),
                allow_all: had_l3l4_allow,
                rules: vec![(path, spec)],
            });
        }
        (Some((path, spec)), Some(existing)) if existing.parser == spec.parser() => {
            existing.rules.push((path, spec));
        }
        (Some((path, spec)), Some(existing)) => notes.push(format!(
            "{origin} ({path}): {} rules conflict with {} rules already on {} for {}; left out",
            spec.parser().name(),
            existing.parser.name(),
            entry.port,
            entry.peer
        )),
    }
}

/// One port carries one L7 parser (Cilium cannot merge different parsers on a port).
/// The parser of the earliest rule (by policy, then rule path) wins; entries with another
/// parser on that port are left out, which can only deny more.
fn drop_conflicting_parsers(
    entries: &mut BTreeMap<EntryKey, PolicyEntry>,
    notes: &mut Vec<String>,
) {
    let mut by_rule_order: Vec<(&RuleOrigin, &EntryKey, &PolicyEntry)> = entries
        .iter()
        .filter(|(_, e)| e.l7.is_some())
        .filter_map(|(k, e)| e.origins.iter().min().map(|o| (o, k, e)))
        .collect();
    by_rule_order.sort_by(|a, b| a.0.cmp(b.0));
    let mut first: BTreeMap<PortKey, (L7Parser, &RuleOrigin)> = BTreeMap::new();
    let mut dropped = Vec::new();
    for (origin, key, entry) in by_rule_order {
        let Some(l7) = &entry.l7 else { continue };
        match first.get(&entry.port) {
            None => {
                first.insert(entry.port, (l7.parser, origin));
            }
            Some((parser, _)) if *parser == l7.parser => {}
            Some((parser, by)) => {
                notes.push(format!(
                    "{origin}: {} rules on {} conflict with {} rules from {by}; left out",
                    l7.parser.name(),
                    entry.port,
                    parser.name()
                ));
                dropped.push(key.clone());
            }
        }
    }
    for key in dropped {
        entries.remove(&key);
    }
}

/// SEMANTICS 3.4 across selectors: every allow without L7 whose ports cover a port that
/// has L7 rules is added to that port as the L7 wildcard for its own peer, so its traffic
/// still goes through the proxy (and is logged) but any request passes.
fn wildcard_l3l4_allows(entries: &mut BTreeMap<EntryKey, PolicyEntry>) {
    let l7_ports: BTreeMap<PortKey, L7Parser> = entries
        .values()
        .filter(|e| !e.deny)
        .filter_map(|e| e.l7.as_ref().map(|l7| (e.port, l7.parser)))
        .collect();
    let mut additions = Vec::new();
    for entry in entries.values() {
        if entry.deny || entry.l7.is_some() {
            continue;
        }
        for (port, parser) in &l7_ports {
            // The same port key included: another peer's L7 rules on this very port
            // still make this peer's traffic go through the proxy, with the wildcard.
            if entry.port.covers(port) {
                additions.push((*port, *parser, entry.clone()));
            }
        }
    }
    for (port, parser, source) in additions {
        let key = (port, source.peer.clone(), source.named_port.clone(), false);
        let target = entries.entry(key).or_insert_with(|| PolicyEntry {
            port,
            peer: source.peer.clone(),
            named_port: source.named_port.clone(),
            selection: source.selection.clone(),
            deny: false,
            l7: None,
            origins: Vec::new(),
            visibility: None,
        });
        for origin in &source.origins {
            target.add_origin(origin);
        }
        match &mut target.l7 {
            Some(l7) => l7.allow_all = true,
            None => {
                target.l7 = Some(L7Policy {
                    parser,
                    allow_all: true,
                    rules: Vec::new(),
                })
            }
        }
    }
}
