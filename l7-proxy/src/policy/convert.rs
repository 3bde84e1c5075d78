//! `NetworkPolicy` resources -> [`EndpointPolicies`], with every HTTP rule set compiled
//! here, once.
//!
//! Anything the proxy could not enforce exactly as the agent meant it (a bad regex, an
//! enum value this build does not know, an unparsable IP, a port out of range, an entry
//! whose action and parser disagree) rejects the response: the client NACKs it naming the
//! resource and keeps enforcing the last good state (SEMANTICS 9.1).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use xds::proto;

use crate::http_rules::{HeaderMatchSpec, HttpRuleSet, HttpRuleSpec, MismatchAction, SecretRef};

use super::endpoint::{
    DirectionRules, EndpointPolicies, EndpointPolicy, L7Parser, L7Rules, NamedHttpRuleSet,
    PolicyEntry, PortRange, Protocol,
};

/// The rules of one rule set, as a cache key: equal keys compile to equal sets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RuleKey {
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    headers: Vec<String>,
    header_matches: Vec<proto::HeaderMatch>,
}

type RuleSetKey = Vec<RuleKey>;

/// [`xds::TypeHandler`] of [`xds::NETWORK_POLICY_TYPE`].
///
/// Compiled rule sets are shared by every entry and endpoint with the same rules and kept
/// from one good version to the next, so an update recompiles only rules that changed.
///
/// Secret-sourced `headerMatches` values are not resolved here: a rule compiles with its
/// inline `value` as the fallback and, without one, never matches (as in Cilium when the
/// secret cannot be read).
#[derive(Debug, Default)]
pub struct PolicyHandler {
    /// The rule sets of the last good state.
    cache: Mutex<HashMap<RuleSetKey, Arc<HttpRuleSet>>>,
}

impl PolicyHandler {
    /// A handler with an empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds the state from the complete resource set; `Err` names every resource that
    /// cannot be enforced, with the reason.
    pub fn build_policies(
        &self,
        resources: &BTreeMap<String, Arc<proto::Resource>>,
    ) -> Result<EndpointPolicies, Vec<(String, String)>> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let mut compiler = Compiler {
            previous: &cache,
            used: HashMap::new(),
        };
        let mut endpoints = Vec::with_capacity(resources.len());
        let mut errors = Vec::new();
        for (name, resource) in resources {
            let policy = match resource.network_policy() {
                Ok(policy) => policy,
                Err(reason) => {
                    errors.push((name.clone(), reason));
                    continue;
                }
            };
            match compiler.endpoint(name, policy) {
                Ok(endpoint) => endpoints.push(endpoint),
                Err(reason) => errors.push((name.clone(), reason)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let used = compiler.used;
        *cache = used;
        Ok(EndpointPolicies::new(endpoints))
    }
}

impl xds::TypeHandler for PolicyHandler {
    type State = EndpointPolicies;

    fn type_url(&self) -> &'static str {
        xds::NETWORK_POLICY_TYPE
    }

    fn build(
        &self,
        resources: &BTreeMap<String, Arc<proto::Resource>>,
    ) -> Result<EndpointPolicies, Vec<(String, String)>> {
        self.build_policies(resources)
    }
}

/// One build: compiles each distinct rule set once, reusing the previous state's sets.
struct Compiler<'a> {
    previous: &'a HashMap<RuleSetKey, Arc<HttpRuleSet>>,
    used: HashMap<RuleSetKey, Arc<HttpRuleSet>>,
}

impl Compiler<'_> {
    fn endpoint(
        &mut self,
        name: &str,
        policy: &proto::NetworkPolicy,
    ) -> Result<EndpointPolicy, String> {
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
        Ok(EndpointPolicy {
            name: name.to_owned(),
            namespace: policy.namespace.clone(),
            pod: policy.pod.clone(),
            ips,
            identity: policy.identity,
            ingress: self.direction("ingress", policy.ingress.as_ref())?,
            egress: self.direction("egress", policy.egress.as_ref())?,
        })
    }

    /// An absent direction is the proto3 default: not enforced.
    fn direction(
        &mut self,
        at: &str,
        policy: Option<&proto::DirectionPolicy>,
    ) -> Result<DirectionRules, String> {
        let Some(policy) = policy else {
            return Ok(DirectionRules::default());
        };
        let entries = policy
            .entries
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                self.entry(entry)
                    .map_err(|e| format!("{at}.entries[{i}] (peer {:?}): {e}", entry.peer))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DirectionRules {
            enforced: policy.enforced,
            default_deny: policy.default_deny,
            entries,
        })
    }

    fn entry(&mut self, entry: &proto::PortPolicy) -> Result<PolicyEntry, String> {
        let protocol = match proto::Protocol::try_from(entry.protocol) {
            Ok(proto::Protocol::Any) => None,
            Ok(proto::Protocol::Tcp) => Some(Protocol::Tcp),
            Ok(proto::Protocol::Udp) => Some(Protocol::Udp),
            Ok(proto::Protocol::Sctp) => Some(Protocol::Sctp),
            Err(_) => return Err(format!("unknown protocol {}", entry.protocol)),
        };
        let action = proto::Action::try_from(entry.action)
            .map_err(|_| format!("unknown action {}", entry.action))?;
        let parser = match proto::L7Parser::try_from(entry.parser) {
            Ok(proto::L7Parser::None) => None,
            Ok(proto::L7Parser::Http) => Some(L7Parser::Http),
            Ok(proto::L7Parser::Dns) => Some(L7Parser::Dns),
            Err(_) => return Err(format!("unknown L7 parser {}", entry.parser)),
        };
        let (port, end_port) = entry.port_range()?;
        let remote_identities = entry.sorted_remote_identities();

        let l7 = match (action, parser) {
            // SEMANTICS 2.3: denies carry L3/L4 only; any L7 fields are irrelevant.
            (proto::Action::Deny, _) | (proto::Action::Allow, None) => None,
            (proto::Action::Allow, Some(parser)) => {
                return Err(format!(
                    "action ACTION_ALLOW with parser {}: an L7 parser needs ACTION_REDIRECT",
                    parser.name()
                ));
            }
            (proto::Action::Redirect, None) => {
                return Err("action ACTION_REDIRECT without an L7 parser".to_owned());
            }
            (proto::Action::Redirect, Some(L7Parser::Dns)) => {
                if !entry.http_rule_sets.is_empty() {
                    return Err("HTTP rule sets on an entry with the DNS parser".to_owned());
                }
                Some(L7Rules {
                    parser: L7Parser::Dns,
                    allow_all: entry.l7_allow_all,
                    http: Vec::new(),
                })
            }
            (proto::Action::Redirect, Some(L7Parser::Http)) => {
                if !entry.dns_rule_sets.is_empty() {
                    return Err("DNS rule sets on an entry with the HTTP parser".to_owned());
                }
                let http = entry
                    .http_rule_sets
                    .iter()
                    .enumerate()
                    .map(|(i, set)| {
                        self.rule_set(set)
                            .map_err(|e| format!("http_rule_sets[{i}] ({}): {e}", set.origin))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Some(L7Rules {
                    parser: L7Parser::Http,
                    allow_all: entry.l7_allow_all,
                    http,
                })
            }
        };
        Ok(PolicyEntry {
            ports: PortRange {
                protocol,
                port,
                end_port,
            },
            all_identities: entry.all_identities,
            remote_identities,
            deny: action == proto::Action::Deny,
            l7,
            peer: entry.peer.clone(),
            origins: entry
                .origins
                .iter()
                .map(|o| Arc::from(o.as_str()))
                .collect(),
        })
    }

    fn rule_set(&mut self, set: &proto::HttpRuleSet) -> Result<NamedHttpRuleSet, String> {
        let key: RuleSetKey = set
            .rules
            .iter()
            .map(|r| RuleKey {
                method: r.method.clone(),
                path: r.path.clone(),
                host: r.host.clone(),
                headers: r.headers.clone(),
                header_matches: r.header_matches.clone(),
            })
            .collect();
        let origin: Arc<str> = Arc::from(set.origin.as_str());
        if let Some(compiled) = self.used.get(&key).or_else(|| self.previous.get(&key)) {
            let compiled = compiled.clone();
            self.used.insert(key, compiled.clone());
            return Ok(NamedHttpRuleSet {
                origin,
                set: compiled,
            });
        }
        let specs = set
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| http_rule_spec(rule).map_err(|e| format!("http[{i}].{e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let compiled = Arc::new(HttpRuleSet::compile(&specs).map_err(|e| e.to_string())?);
        self.used.insert(key, compiled.clone());
        Ok(NamedHttpRuleSet {
            origin,
            set: compiled,
        })
    }
}

/// proto `HttpRule` -> the policy spelling the matcher compiles (SEMANTICS 4.1, 4.8).
fn http_rule_spec(rule: &proto::HttpRule) -> Result<HttpRuleSpec, String> {
    let header_matches = rule
        .header_matches
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mismatch = match m.mismatch.as_str() {
                "" => None,
                "LOG" => Some(MismatchAction::Log),
                "ADD" => Some(MismatchAction::Add),
                "DELETE" => Some(MismatchAction::Delete),
                "REPLACE" => Some(MismatchAction::Replace),
                other => {
                    return Err(format!(
                        "headerMatches[{i}].mismatch: unknown action {other:?} (LOG, ADD, DELETE or REPLACE)"
                    ));
                }
            };
            Ok(HeaderMatchSpec {
                name: m.name.clone(),
                value: m.value.clone(),
                secret: m.secret.as_ref().map(|s| SecretRef {
                    namespace: (!s.namespace.is_empty()).then(|| s.namespace.clone()),
                    name: s.name.clone(),
                }),
                mismatch,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HttpRuleSpec {
        method: rule.method.clone(),
        path: rule.path.clone(),
        host: rule.host.clone(),
        headers: rule.headers.clone(),
        header_matches,
    })
}
