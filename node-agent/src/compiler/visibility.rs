//! The proxy-visibility pod annotation (SEMANTICS 7): `<Direction/Port/Protocol/L7>`
//! items that redirect traffic the policy already allows on a port to the HTTP or DNS
//! proxy, where every request is allowed and logged. It never changes a verdict.
//!
//! Visibility is expressed with the ordinary kinds of entries, so that the datapath
//! (redirect to the proxy port) and the proxies (a wildcard L7 entry allows every request,
//! SEMANTICS 3.4/3.5) need no special case:
//! - a direction no policy enforces becomes default allow (SEMANTICS 2.2): an allow of
//!   every peer on every port, plus a port entry of every peer with the L7 wildcard;
//! - in an enforced direction, every allow without L7 whose ports include the annotated
//!   port (an L3-only allow, a port allow, a range) gets a port entry for its own peer
//!   with the L7 wildcard (an allow of exactly that port is turned into one). Peers that
//!   are not allowed get nothing, deny entries are untouched and keep winning, and peers
//!   already redirected by L7 rules keep those rules.
//!
//! Entries that redirect only because of the annotation carry the item in
//! `PolicyEntry::visibility`. An invalid annotation is ignored for the pod and reported in
//! the endpoint's notes.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use super::endpoint::{DirectionPolicy, L7Policy, PolicyEntry, PortKey, Selection};
use crate::policy::rule::L7Parser;
use crate::policy::{Direction, Peer, Protocol};

/// The annotation's name.
pub const ANNOTATION: &str = "policy.cilium.io/proxy-visibility";
/// Its legacy name, read when the new one is absent.
pub const LEGACY_ANNOTATION: &str = "io.cilium.proxy-visibility";

/// One `<Direction/Port/Protocol/L7>` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisibilityItem {
    pub direction: Direction,
    pub port: u16,
    /// The protocols redirected: ANY is TCP for HTTP, TCP and UDP for DNS.
    pub protocols: Vec<Protocol>,
    pub parser: L7Parser,
    /// The item as written in the annotation (trimmed).
    pub text: String,
}

/// The visibility annotation of a pod, `(name, value)`: the new name wins over the legacy
/// one.
pub fn pod_annotation(pod: &Pod) -> Option<(&'static str, &str)> {
    let annotations = pod.metadata.annotations.as_ref()?;
    [ANNOTATION, LEGACY_ANNOTATION]
        .into_iter()
        .find_map(|name| annotations.get(name).map(|v| (name, v.as_str())))
}

/// The visibility items of a pod, or a note saying why its annotation is ignored.
pub fn pod_items(pod: &Pod) -> Result<Vec<VisibilityItem>, String> {
    let Some((name, value)) = pod_annotation(pod) else {
        return Ok(Vec::new());
    };
    parse(value).map_err(|reason| {
        format!("annotation {name}: {value:?} is invalid and ignored for this pod: {reason}")
    })
}

/// Parses the annotation's value: comma-separated `<Direction/Port/Protocol/L7>` items,
/// case-insensitive. An empty value has no items.
pub fn parse(value: &str) -> Result<Vec<VisibilityItem>, String> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut items: Vec<VisibilityItem> = Vec::new();
    for (index, raw) in value.split(',').enumerate() {
        let item = parse_item(raw.trim())
            .map_err(|reason| format!("item {} {:?}: {reason}", index + 1, raw.trim()))?;
        // Cilium refuses two L7 protocols for the same port.
        if let Some(other) = items.iter().find(|o| {
            o.direction == item.direction
                && o.port == item.port
                && o.parser != item.parser
                && o.protocols.iter().any(|p| item.protocols.contains(p))
        }) {
            return Err(format!(
                "items {:?} and {:?} ask for different L7 protocols on the same port",
                other.text, item.text
            ));
        }
        items.push(item);
    }
    Ok(items)
}

fn parse_item(text: &str) -> Result<VisibilityItem, String> {
    let inner = text
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .ok_or("expected <Direction/Port/Protocol/L7>")?;
    let parts: Vec<&str> = inner.split('/').collect();
    let [direction, port, protocol, l7] = parts[..] else {
        return Err("expected <Direction/Port/Protocol/L7>".into());
    };
    let direction = if direction.eq_ignore_ascii_case("ingress") {
        Direction::Ingress
    } else if direction.eq_ignore_ascii_case("egress") {
        Direction::Egress
    } else {
        return Err(format!("direction {direction:?} must be Ingress or Egress"));
    };
    let port = match port.parse::<u32>() {
        Ok(n @ 1..=65535) if port.bytes().all(|b| b.is_ascii_digit()) => n as u16,
        _ => return Err(format!("port {port:?} must be a number from 1 to 65535")),
    };
    let any = protocol.eq_ignore_ascii_case("any");
    let protocol = match Protocol::parse(protocol) {
        Some(p) => Some(p),
        None if any => None,
        None => {
            return Err(format!(
                "protocol {protocol:?} must be TCP, UDP, SCTP or ANY"
            ));
        }
    };
    let parser = if l7.eq_ignore_ascii_case("http") {
        L7Parser::Http
    } else if l7.eq_ignore_ascii_case("dns") {
        L7Parser::Dns
    } else {
        return Err(format!("L7 protocol {l7:?} must be HTTP or DNS"));
    };
    // SEMANTICS 3.2: the same constraints as L7 rules of a policy.
    let protocols = match (parser, protocol) {
        (L7Parser::Dns, _) if direction == Direction::Ingress => {
            return Err("DNS visibility is egress-only".into());
        }
        (L7Parser::Http, None | Some(Protocol::Tcp)) => vec![Protocol::Tcp],
        (L7Parser::Http, Some(p)) => return Err(format!("HTTP needs TCP, not {p}")),
        (L7Parser::Dns, None) => vec![Protocol::Tcp, Protocol::Udp],
        (L7Parser::Dns, Some(Protocol::Sctp)) => {
            return Err("DNS needs UDP, TCP or ANY, not SCTP".into());
        }
        (L7Parser::Dns, Some(p)) => vec![p],
    };
    Ok(VisibilityItem {
        direction,
        port,
        protocols,
        parser,
        text: text.to_owned(),
    })
}

fn wildcard(parser: L7Parser) -> L7Policy {
    // SEMANTICS 3.4/3.5: HTTP `{}`, DNS `matchPattern: "*"`: through the proxy, any request.
    L7Policy {
        parser,
        allow_all: true,
        rules: Vec::new(),
    }
}

/// Adds the redirects of `items` (those of `direction`) to one compiled direction.
/// `every` is the selection of every identity, for a direction no policy enforces.
pub(super) fn apply(
    direction: Direction,
    policy: &mut DirectionPolicy,
    items: &[VisibilityItem],
    every: Arc<Selection>,
    notes: &mut Vec<String>,
) {
    let items: Vec<&VisibilityItem> = items.iter().filter(|i| i.direction == direction).collect();
    if items.is_empty() {
        return;
    }
    if !policy.enforced {
        // SEMANTICS 2.2: default allow, so the annotated ports can be redirected.
        let texts: Vec<&str> = items.iter().map(|i| i.text.as_str()).collect();
        policy.enforced = true;
        policy.default_deny = false;
        policy.entries.push(PolicyEntry {
            port: PortKey::ANY,
            peer: Peer::Any,
            named_port: None,
            selection: every,
            deny: false,
            l7: None,
            origins: Vec::new(),
            visibility: Some(texts.join(",")),
        });
    }
    for item in items {
        for protocol in &item.protocols {
            redirect_port(policy, item, *protocol, notes);
        }
    }
    policy.entries.sort_by(|a, b| {
        (a.port, &a.peer, &a.named_port, a.deny).cmp(&(b.port, &b.peer, &b.named_port, b.deny))
    });
}

fn redirect_port(
    policy: &mut DirectionPolicy,
    item: &VisibilityItem,
    protocol: Protocol,
    notes: &mut Vec<String>,
) {
    let target = PortKey {
        protocol: Some(protocol),
        port: item.port,
        end_port: item.port,
    };
    let entries = &mut policy.entries;
    let allows = |e: &PolicyEntry| !e.deny && e.port.matches(protocol, item.port);
    // One port carries one L7 parser: rules of another parser keep the port.
    if let Some(other) = entries
        .iter()
        .filter(|e| allows(e))
        .filter_map(|e| e.l7.as_ref())
        .find(|l7| l7.parser != item.parser)
    {
        notes.push(format!(
            "visibility {}: {target} is already redirected to the {} proxy by policy; {} visibility left out there",
            item.text,
            other.parser.name(),
            item.parser.name()
        ));
        return;
    }
    let sources: Vec<usize> = (0..entries.len())
        .filter(|i| allows(&entries[*i]) && entries[*i].l7.is_none())
        .collect();
    let mut added = Vec::new();
    for index in sources {
        let source = &entries[index];
        if source.port == target {
            // An allow of exactly this port becomes the redirect.
            let entry = &mut entries[index];
            entry.l7 = Some(wildcard(item.parser));
            entry.visibility = Some(item.text.clone());
            continue;
        }
        // The same peer already has an entry for exactly this port: either L7 rules
        // (kept as they are) or a plain allow that is itself a source, turned above.
        let exact = entries.iter().chain(&added).any(|e: &PolicyEntry| {
            !e.deny
                && e.port == target
                && e.peer == source.peer
                && e.named_port == source.named_port
        });
        if exact {
            continue;
        }
        added.push(PolicyEntry {
            port: target,
            peer: source.peer.clone(),
            named_port: source.named_port.clone(),
            selection: source.selection.clone(),
            deny: false,
            l7: Some(wildcard(item.parser)),
            origins: source.origins.clone(),
            visibility: Some(item.text.clone()),
        });
    }
    entries.extend(added);
}

/// Whether a direction verdict redirects to the proxy only because of the annotation:
/// every deciding entry that redirects was added or turned by visibility.
pub fn only_by_visibility<'a>(
    deciding: impl IntoIterator<Item = &'a PolicyEntry>,
) -> Option<String> {
    let mut items: Vec<&str> = Vec::new();
    for entry in deciding {
        if entry.l7.is_none() {
            continue;
        }
        let text = entry.visibility.as_deref()?;
        if !items.contains(&text) {
            items.push(text);
        }
    }
    (!items.is_empty()).then(|| items.join(","))
}
