//! `NetworkPolicy` resources -> [`DnsPolicies`]: per local endpoint IP, the egress entries
//! redirected to the DNS proxy, with their rule sets compiled once per build.
//!
//! Only `ACTION_REDIRECT` entries with the DNS parser matter here: L3/L4 allows and denies
//! are the kernel's business, and a query reaches the proxy only through a redirect.
//! A resource this build cannot enforce exactly as meant (a selector that does not
//! compile, an unknown enum value, an unparsable IP, a port out of range) rejects the whole
//! response, so the client NACKs it and the last good state stays in force (SEMANTICS 9.1).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use xds::proto;

use crate::name_pattern::{DnsRuleSet, DnsSelectorSpec};

/// The transport a query came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    /// As flow records spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
        }
    }
}

/// A rule set and where it was written, for `matched_rule`.
#[derive(Debug, Clone)]
pub struct NamedRuleSet {
    pub origin: Arc<str>,
    pub set: Arc<DnsRuleSet>,
}

/// One redirected (port range, peer) entry of an endpoint's egress.
#[derive(Debug, Clone)]
pub struct DnsEntry {
    /// `None`: any protocol.
    pub protocol: Option<Transport>,
    pub port: u16,
    /// Inclusive; equal to `port` for a single port. Port 0 means every port.
    pub end_port: u16,
    pub all_identities: bool,
    /// Sorted.
    pub remote_identities: Vec<u32>,
    /// Every name passes (SEMANTICS 3.4, 5.4).
    pub allow_all: bool,
    pub rule_sets: Vec<NamedRuleSet>,
    /// The rules the entry came from, for `matched_rule` of an allow-all entry.
    pub origins: Vec<Arc<str>>,
}

impl DnsEntry {
    /// Whether the entry covers a query to `port` over `transport` for the server `peer`.
    pub fn covers(&self, transport: Transport, port: u16, peer: u32) -> bool {
        let protocol = self.protocol.is_none_or(|p| p == transport);
        let ports = self.port == 0 || (self.port..=self.end_port).contains(&port);
        let peers = self.all_identities || self.remote_identities.binary_search(&peer).is_ok();
        protocol && ports && peers
    }

    /// The origin recorded when this entry allows a query without rules.
    pub fn allow_all_origin(&self) -> Arc<str> {
        self.origins
            .first()
            .cloned()
            .unwrap_or_else(|| Arc::from("allow-all"))
    }
}

/// One local endpoint.
#[derive(Debug, Clone)]
pub struct EndpointDns {
    /// "NAMESPACE/POD".
    pub name: String,
    pub namespace: String,
    pub pod: String,
    pub identity: u32,
    pub entries: Vec<DnsEntry>,
    /// Its egress policy has toFQDNs selectors: its answers are reported and held.
    pub reports_fqdn: bool,
}

/// The state of the `NetworkPolicy` type: local endpoints by IP.
#[derive(Debug, Clone, Default)]
pub struct DnsPolicies {
    by_ip: HashMap<IpAddr, Arc<EndpointDns>>,
}

impl DnsPolicies {
    /// The endpoint owning `ip` (IPv4-mapped addresses count as IPv4).
    pub fn endpoint(&self, ip: IpAddr) -> Option<&Arc<EndpointDns>> {
        self.by_ip.get(&ip.to_canonical())
    }

    /// Number of endpoint IPs known.
    pub fn ip_count(&self) -> usize {
        self.by_ip.len()
    }
}

/// Compiled rule sets by their selectors: the agent sends the same rules to many endpoints
/// and entries, and most of them again in the next version.
type RuleCache = HashMap<Vec<DnsSelectorSpec>, Arc<DnsRuleSet>>;

/// [`xds::TypeHandler`] of [`xds::NETWORK_POLICY_TYPE`] for the DNS proxy. Each distinct
/// rule set is compiled once per build, and reused from the last good build.
#[derive(Debug, Default)]
pub struct DnsPolicyHandler {
    cache: Mutex<RuleCache>,
}

impl xds::TypeHandler for DnsPolicyHandler {
    type State = DnsPolicies;

    fn type_url(&self) -> &'static str {
        xds::NETWORK_POLICY_TYPE
    }

    fn build(
        &self,
        resources: &BTreeMap<String, Arc<proto::Resource>>,
    ) -> Result<DnsPolicies, Vec<(String, String)>> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let mut compiler = Compiler {
            previous: &cache,
            used: HashMap::new(),
        };
        let built = compiler.policies(resources)?;
        *cache = compiler.used;
        Ok(built)
    }
}

/// One build: compiles each distinct rule set once.
struct Compiler<'a> {
    previous: &'a RuleCache,
    used: RuleCache,
}

/// Builds the state from the complete resource set, without a cache; `Err` names every
/// resource that cannot be enforced, with the reason.
pub fn build_policies(
    resources: &BTreeMap<String, Arc<proto::Resource>>,
) -> Result<DnsPolicies, Vec<(String, String)>> {
    let empty = RuleCache::new();
    Compiler {
        previous: &empty,
        used: HashMap::new(),
    }
    .policies(resources)
}

impl Compiler<'_> {
    fn policies(
        &mut self,
        resources: &BTreeMap<String, Arc<proto::Resource>>,
    ) -> Result<DnsPolicies, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut by_ip = HashMap::new();
        let mut conflicts = HashMap::new();
        for (name, resource) in resources {
            let policy = match resource.network_policy() {
                Ok(policy) => policy,
                Err(reason) => {
                    errors.push((name.clone(), reason));
                    continue;
                }
            };
            match self.endpoint(name, policy) {
                Ok((ips, endpoint)) => {
                    let endpoint = Arc::new(endpoint);
                    for ip in ips {
                        if let Some(other) = by_ip.insert(ip, endpoint.clone()) {
                            conflicts.insert(ip, [other.name.clone(), name.clone()]);
                        }
                    }
                }
                Err(reason) => errors.push((name.clone(), reason)),
            }
        }
        // An IP two pods claim (a pod leaving while its IP is reused) is served by
        // neither: fail closed, as the HTTP proxy does, rather than reject the version.
        for (ip, names) in conflicts {
            tracing::warn!(%ip, endpoints = ?names, "several endpoints claim one IP; its queries are denied");
            by_ip.remove(&ip);
        }
        if errors.is_empty() {
            Ok(DnsPolicies { by_ip })
        } else {
            Err(errors)
        }
    }

    fn endpoint(
        &mut self,
        name: &str,
        policy: &proto::NetworkPolicy,
    ) -> Result<(Vec<IpAddr>, EndpointDns), String> {
        let mut ips = Vec::with_capacity(policy.ips.len());
        for (i, ip) in policy.ips.iter().enumerate() {
            let parsed: IpAddr = ip
                .trim()
                .parse()
                .map_err(|_| format!("ips[{i}]: invalid IP address {ip:?}"))?;
            let parsed = parsed.to_canonical();
            if !ips.contains(&parsed) {
                ips.push(parsed);
            }
        }
        let mut entries = Vec::new();
        if let Some(egress) = &policy.egress {
            for (i, entry) in egress.entries.iter().enumerate() {
                let converted = self
                    .dns_entry(entry)
                    .map_err(|e| format!("egress.entries[{i}] (peer {:?}): {e}", entry.peer))?;
                entries.extend(converted);
            }
        }
        Ok((
            ips,
            EndpointDns {
                name: name.to_owned(),
                namespace: policy.namespace.clone(),
                pod: policy.pod.clone(),
                identity: policy.identity,
                entries,
                reports_fqdn: policy.egress_fqdn,
            },
        ))
    }

    /// `Ok(None)` for entries that do not concern the DNS proxy.
    fn dns_entry(&mut self, entry: &proto::PortPolicy) -> Result<Option<DnsEntry>, String> {
        let action = proto::Action::try_from(entry.action)
            .map_err(|_| format!("unknown action {}", entry.action))?;
        let parser = proto::L7Parser::try_from(entry.parser)
            .map_err(|_| format!("unknown L7 parser {}", entry.parser))?;
        if action != proto::Action::Redirect || parser != proto::L7Parser::Dns {
            return Ok(None);
        }
        let protocol = match proto::Protocol::try_from(entry.protocol) {
            Ok(proto::Protocol::Any) => None,
            Ok(proto::Protocol::Tcp) => Some(Transport::Tcp),
            Ok(proto::Protocol::Udp) => Some(Transport::Udp),
            // DNS over SCTP never reaches this proxy.
            Ok(proto::Protocol::Sctp) => return Ok(None),
            Err(_) => return Err(format!("unknown protocol {}", entry.protocol)),
        };
        let (port, end_port) = entry.port_range()?;
        let remote_identities = entry.sorted_remote_identities();
        let rule_sets = entry
            .dns_rule_sets
            .iter()
            .enumerate()
            .map(|(i, set)| {
                self.rule_set(set)
                    .map_err(|e| format!("dns_rule_sets[{i}] ({}): {e}", set.origin))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(DnsEntry {
            protocol,
            port,
            end_port,
            all_identities: entry.all_identities,
            remote_identities,
            allow_all: entry.l7_allow_all,
            rule_sets,
            origins: entry
                .origins
                .iter()
                .map(|o| Arc::from(o.as_str()))
                .collect(),
        }))
    }

    fn rule_set(&mut self, set: &proto::DnsRuleSet) -> Result<NamedRuleSet, String> {
        let specs = set
            .selectors
            .iter()
            .enumerate()
            .map(|(i, s)| match &s.selector {
                Some(proto::dns_selector::Selector::MatchName(n)) => {
                    Ok(DnsSelectorSpec::MatchName(n.clone()))
                }
                Some(proto::dns_selector::Selector::MatchPattern(p)) => {
                    Ok(DnsSelectorSpec::MatchPattern(p.clone()))
                }
                None => Err(format!(
                    "selectors[{i}]: neither matchName nor matchPattern"
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let origin = Arc::from(set.origin.as_str());
        if let Some(compiled) = self.used.get(&specs).or_else(|| self.previous.get(&specs)) {
            let compiled = compiled.clone();
            self.used.insert(specs, compiled.clone());
            return Ok(NamedRuleSet {
                origin,
                set: compiled,
            });
        }
        let compiled = Arc::new(DnsRuleSet::compile(&specs).map_err(|e| e.to_string())?);
        self.used.insert(specs, compiled.clone());
        Ok(NamedRuleSet {
            origin,
            set: compiled,
        })
    }
}

/// Why a query was allowed or denied (SEMANTICS 5.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `origin` names the rule set (or allow-all entry) that allowed it.
    Allowed { origin: Arc<str> },
    /// Fail closed; `reason` goes into the flow record.
    Denied { reason: String },
}

/// The entries covering a query from `endpoint` to the server `peer` on `port`: the names
/// are matched by [`match_name`] on them.
pub fn covering(
    endpoint: &EndpointDns,
    transport: Transport,
    port: u16,
    peer: u32,
) -> Vec<&DnsEntry> {
    endpoint
        .entries
        .iter()
        .filter(|e| e.covers(transport, port, peer))
        .collect()
}

/// The origin of the first entry allowing the name (wire labels), if any.
pub fn match_name(entries: &[&DnsEntry], labels: &[&[u8]]) -> Option<Arc<str>> {
    entries.iter().find_map(|entry| {
        if entry.allow_all {
            return Some(entry.allow_all_origin());
        }
        entry
            .rule_sets
            .iter()
            .find(|rs| rs.set.matches_wire_labels(labels).is_some())
            .map(|rs| rs.origin.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(port: u32, identities: &[u32], patterns: &[&str]) -> proto::PortPolicy {
        proto::PortPolicy {
            protocol: proto::Protocol::Udp as i32,
            port,
            remote_identities: identities.to_vec(),
            action: proto::Action::Redirect as i32,
            parser: proto::L7Parser::Dns as i32,
            dns_rule_sets: vec![proto::DnsRuleSet {
                origin: "CiliumNetworkPolicy default/dns spec.egress[0]".into(),
                selectors: patterns
                    .iter()
                    .map(|p| proto::DnsSelector {
                        selector: Some(proto::dns_selector::Selector::MatchPattern(
                            (*p).to_owned(),
                        )),
                    })
                    .collect(),
            }],
            ..Default::default()
        }
    }

    fn resources(entries: Vec<proto::PortPolicy>) -> BTreeMap<String, Arc<proto::Resource>> {
        let policy = proto::NetworkPolicy {
            namespace: "default".into(),
            pod: "client".into(),
            ips: vec!["10.0.0.5".into()],
            identity: 300,
            egress: Some(proto::DirectionPolicy {
                enforced: true,
                default_deny: true,
                entries,
            }),
            ..Default::default()
        };
        BTreeMap::from([(
            "default/client".to_owned(),
            Arc::new(proto::Resource {
                name: "default/client".into(),
                version: "1".into(),
                body: Some(proto::resource::Body::NetworkPolicy(policy)),
            }),
        )])
    }

    // SEMANTICS 5.4: the rules of the (endpoint, port, protocol, peer) decide.
    #[test]
    fn entries_cover_port_protocol_and_peer() {
        let built =
            build_policies(&resources(vec![entry(53, &[7], &["*.example.com"])])).expect("builds");
        let ep = built.endpoint("10.0.0.5".parse().expect("ip")).expect("ep");
        assert_eq!(ep.name, "default/client");
        let labels: [&[u8]; 3] = [b"WWW", b"example", b"com"];
        let cov = covering(ep, Transport::Udp, 53, 7);
        assert!(match_name(&cov, &labels).is_some());
        assert!(covering(ep, Transport::Tcp, 53, 7).is_empty());
        assert!(covering(ep, Transport::Udp, 54, 7).is_empty());
        assert!(covering(ep, Transport::Udp, 53, 8).is_empty());
        let other: [&[u8]; 2] = [b"example", b"org"];
        assert_eq!(match_name(&cov, &other), None);
    }

    // SEMANTICS 9.1: a selector that does not compile rejects the resource.
    #[test]
    fn bad_selector_is_rejected() {
        let errors =
            build_policies(&resources(vec![entry(53, &[7], &["bad pattern"])])).expect_err("NACK");
        assert_eq!(errors[0].0, "default/client");
        assert!(errors[0].1.contains("dns_rule_sets[0]"), "{}", errors[0].1);
    }

    // Same selectors, one compiled set: across entries and across versions.
    #[test]
    fn rule_sets_are_shared_and_kept() {
        use xds::TypeHandler as _;
        let handler = DnsPolicyHandler::default();
        let resources = resources(vec![
            entry(53, &[7], &["*.example.com"]),
            entry(5353, &[7], &["*.example.com"]),
        ]);
        let set = |built: &DnsPolicies, i: usize| {
            let ep = built.endpoint("10.0.0.5".parse().expect("ip")).expect("ep");
            ep.entries[i].rule_sets[0].set.clone()
        };
        let first = handler.build(&resources).expect("builds");
        let second = handler.build(&resources).expect("builds");
        assert!(Arc::ptr_eq(&set(&first, 0), &set(&first, 1)));
        assert!(Arc::ptr_eq(&set(&first, 0), &set(&second, 0)));
    }

    // Fail closed for an IP two endpoints claim; the others are unaffected.
    #[test]
    fn a_claimed_twice_ip_has_no_endpoint() {
        let mut all = resources(vec![entry(53, &[7], &["*"])]);
        let mut other = (*all["default/client"]).clone();
        other.name = "default/other".into();
        if let Some(proto::resource::Body::NetworkPolicy(p)) = &mut other.body {
            p.pod = "other".into();
            p.ips.push("10.0.0.6".into());
        }
        all.insert("default/other".into(), Arc::new(other));
        let built = build_policies(&all).expect("builds");
        assert!(built.endpoint("10.0.0.5".parse().expect("ip")).is_none());
        let ep = built.endpoint("10.0.0.6".parse().expect("ip")).expect("ep");
        assert_eq!(ep.name, "default/other");
    }

    #[test]
    fn other_entries_are_ignored() {
        let mut http = entry(80, &[7], &[]);
        http.parser = proto::L7Parser::Http as i32;
        http.dns_rule_sets.clear();
        let mut allow = entry(443, &[7], &[]);
        allow.action = proto::Action::Allow as i32;
        allow.parser = proto::L7Parser::None as i32;
        let built = build_policies(&resources(vec![http, allow])).expect("builds");
        let ep = built.endpoint("10.0.0.5".parse().expect("ip")).expect("ep");
        assert!(ep.entries.is_empty());
    }
}
