//! Turns compiled policy into what the policy stream serves: one `NetworkPolicy` resource
//! per local endpoint and one `Identity` resource per identity, each carrying the type
//! version at which it last changed, so the server can send clients only what differs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use xds::proto;
use xds::server::{ChangeLog, Snapshot, TypeSnapshot};
use xds::{IDENTITY_TYPE, NETWORK_POLICY_TYPE};

use crate::compiler::{Changes, Compiler, DirectionPolicy, EndpointPolicy, L7Policy, PolicyEntry};
use crate::identity::Identity;
use crate::policy::rule::L7Parser;
use crate::policy::{L7Spec, Peer, Protocol};

/// Updates the served resources in place (the published snapshot itself, so that a
/// change costs what changed, not a copy of every resource) and bumps a type's version
/// only when one of its resources really changed.
#[derive(Debug)]
pub struct SnapshotBuilder {
    ready: bool,
    /// The identity resources were built from scratch once; since then they are updated
    /// one identity at a time (`Changes::identities`).
    identities_built: bool,
    /// The first version of each type.
    base: u64,
}

impl Default for SnapshotBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotBuilder {
    pub fn new() -> Self {
        // Versions must never go back, also across agent restarts: a reconnecting proxy
        // reports the version it holds and the server orders types by it. Starting from
        // the clock (in microseconds) keeps a restarted agent ahead of what it served.
        let base = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
            .unwrap_or(1);
        Self {
            ready: false,
            identities_built: false,
            base,
        }
    }

    fn start(&self) -> TypeSnapshot {
        TypeSnapshot {
            version: self.base,
            changes: Some(ChangeLog::starting_at(self.base)),
            ..TypeSnapshot::default()
        }
    }

    /// Marks the sources as fully loaded: from now on the snapshot may be served
    /// (SEMANTICS 9.2).
    pub fn set_ready(&mut self) {
        self.ready = true;
    }

    /// Brings `snapshot` up to date with `changes` (and the ready flag); returns whether
    /// anything changed.
    pub fn update(
        &mut self,
        compiler: &Compiler,
        changes: &Changes,
        snapshot: &mut Snapshot,
    ) -> bool {
        let mut policies = snapshot
            .types
            .remove(NETWORK_POLICY_TYPE)
            .unwrap_or_else(|| self.start());
        let mut identities = snapshot
            .types
            .remove(IDENTITY_TYPE)
            .unwrap_or_else(|| self.start());
        let changed = self.update_types(compiler, changes, &mut policies, &mut identities);
        snapshot
            .types
            .insert(NETWORK_POLICY_TYPE.to_owned(), policies);
        snapshot.types.insert(IDENTITY_TYPE.to_owned(), identities);
        let ready_changed = snapshot.ready != self.ready;
        snapshot.ready = self.ready;
        changed || ready_changed
    }

    fn update_types(
        &mut self,
        compiler: &Compiler,
        changes: &Changes,
        policies: &mut TypeSnapshot,
        identities: &mut TypeSnapshot,
    ) -> bool {
        let mut changed = false;
        if !self.identities_built {
            if changes.ipcache_changed || !changes.identities.is_empty() {
                let fresh = identity_resources(compiler);
                changed |= replace_all(identities, fresh);
                self.identities_built = true;
            }
        } else if !changes.identities.is_empty() {
            // One identity at a time: a learned FQDN IP must not cost a rebuild of every
            // identity resource.
            let next = identities.version + 1;
            let mut identities_changed = false;
            for id in &changes.identities {
                match identity_resource(compiler, *id) {
                    Some(body) => {
                        identities_changed |= upsert(identities, id.to_string(), body, next);
                    }
                    None => {
                        identities_changed |= identities.remove(&id.to_string(), next);
                    }
                }
            }
            if identities_changed {
                identities.version = next;
            }
            changed |= identities_changed;
        }
        let next = policies.version + 1;
        let mut policies_changed = false;
        for key in &changes.recompiled {
            let Some(endpoint) = compiler.endpoint(key) else {
                continue;
            };
            let body = proto::resource::Body::NetworkPolicy(network_policy(endpoint));
            policies_changed |= upsert(policies, key.to_string(), body, next);
        }
        for key in &changes.removed {
            policies_changed |= policies.remove(&key.to_string(), next);
        }
        if policies_changed {
            policies.version = next;
        }
        // Policies refer to identities: a client must hold this identity version first.
        policies.requires = Some((IDENTITY_TYPE.to_owned(), identities.version));
        changed | policies_changed
    }

    /// Applies `changes` to the published snapshot, in place unless a stream still
    /// holds it; subscribers are told only if something changed.
    pub fn publish(
        &mut self,
        compiler: &Compiler,
        changes: &Changes,
        publish: &tokio::sync::watch::Sender<Arc<Snapshot>>,
    ) -> bool {
        publish.send_if_modified(|current| self.update(compiler, changes, Arc::make_mut(current)))
    }
}

/// Inserts or replaces one resource; false when it is unchanged.
fn upsert(
    state: &mut TypeSnapshot,
    name: String,
    body: proto::resource::Body,
    version: u64,
) -> bool {
    if state
        .resources
        .get(&name)
        .is_some_and(|r| r.body.as_ref() == Some(&body))
    {
        return false;
    }
    let resource = Arc::new(proto::Resource {
        name: name.clone(),
        version: version.to_string(),
        body: Some(body),
    });
    state.upsert(name, resource, version);
    true
}

/// Replaces the whole set of a type, keeping the versions of unchanged resources.
fn replace_all(state: &mut TypeSnapshot, fresh: BTreeMap<String, proto::resource::Body>) -> bool {
    let next = state.version + 1;
    let gone: Vec<String> = state
        .resources
        .keys()
        .filter(|name| !fresh.contains_key(*name))
        .cloned()
        .collect();
    let mut changed = !gone.is_empty();
    for name in gone {
        state.remove(&name, next);
    }
    for (name, body) in fresh {
        changed |= upsert(state, name, body, next);
    }
    if changed {
        state.version = next;
    }
    changed
}

fn identity_resources(compiler: &Compiler) -> BTreeMap<String, proto::resource::Body> {
    let mut prefixes: BTreeMap<Identity, Vec<IpNet>> = BTreeMap::new();
    for (net, id) in compiler.ipcache() {
        prefixes.entry(id).or_default().push(net);
    }
    compiler
        .identities()
        .iter()
        .map(|(id, labels)| {
            if let Some(list) = prefixes.get_mut(&id) {
                // The same order as `identity_resource`, so both build equal resources.
                list.sort_unstable();
            }
            let body = proto::resource::Body::Identity(proto::Identity {
                id,
                labels: labels.to_strings(),
                prefixes: prefixes
                    .get(&id)
                    .into_iter()
                    .flatten()
                    .map(ToString::to_string)
                    .collect(),
            });
            (id.to_string(), body)
        })
        .collect()
}

/// The resource of one identity, or `None` if it no longer exists.
fn identity_resource(compiler: &Compiler, id: Identity) -> Option<proto::resource::Body> {
    let labels = compiler.identities().labels(id)?;
    let mut prefixes = compiler.prefixes_of(id);
    prefixes.sort_unstable();
    Some(proto::resource::Body::Identity(proto::Identity {
        id,
        labels: labels.to_strings(),
        prefixes: prefixes.iter().map(ToString::to_string).collect(),
    }))
}

pub fn network_policy(endpoint: &EndpointPolicy) -> proto::NetworkPolicy {
    proto::NetworkPolicy {
        namespace: endpoint.key.namespace.clone(),
        pod: endpoint.key.name.clone(),
        ips: endpoint.ip.iter().map(ToString::to_string).collect(),
        identity: endpoint.identity,
        ingress: Some(direction(&endpoint.ingress)),
        egress: Some(proxy_egress(&endpoint.egress)),
        egress_fqdn: endpoint
            .egress
            .entries
            .iter()
            .any(|e| matches!(e.peer, Peer::Fqdn(_))),
    }
}

/// The egress the proxies see: without the toFQDNs allow entries that no redirect entry's
/// ports overlap. A proxy evaluates an egress entry only for a flow the datapath redirected,
/// that is a flow some redirect entry matches; an allow entry on other ports can never
/// match such a flow, so leaving it out changes no proxy verdict. These entries are left
/// out because they are the ones that grow with every DNS answer (one identity per learned
/// IP): sending them would make each answer cost a push of the endpoint's whole policy,
/// O(learned IPs), to every proxy. The datapath is programmed from the compiler's full
/// entries, not from this.
fn proxy_egress(policy: &DirectionPolicy) -> proto::DirectionPolicy {
    let redirects: Vec<&PolicyEntry> = policy
        .entries
        .iter()
        .filter(|e| !e.deny && e.l7.is_some())
        .collect();
    let proxy_relevant = |e: &&PolicyEntry| {
        let fqdn_allow = !e.deny && e.l7.is_none() && matches!(e.peer, Peer::Fqdn(_));
        !fqdn_allow || redirects.iter().any(|r| r.port.overlaps(&e.port))
    };
    proto::DirectionPolicy {
        enforced: policy.enforced,
        default_deny: policy.default_deny,
        entries: policy
            .entries
            .iter()
            .filter(proxy_relevant)
            .map(entry)
            .collect(),
    }
}

fn direction(policy: &DirectionPolicy) -> proto::DirectionPolicy {
    proto::DirectionPolicy {
        enforced: policy.enforced,
        default_deny: policy.default_deny,
        entries: policy.entries.iter().map(entry).collect(),
    }
}

fn entry(entry: &PolicyEntry) -> proto::PortPolicy {
    let protocol = match entry.port.protocol {
        None => proto::Protocol::Any,
        Some(Protocol::Tcp) => proto::Protocol::Tcp,
        Some(Protocol::Udp) => proto::Protocol::Udp,
        Some(Protocol::Sctp) => proto::Protocol::Sctp,
    };
    let action = match (entry.deny, &entry.l7) {
        (true, _) => proto::Action::Deny,
        (false, None) => proto::Action::Allow,
        (false, Some(_)) => proto::Action::Redirect,
    };
    let mut out = proto::PortPolicy {
        protocol: protocol as i32,
        port: u32::from(entry.port.port),
        end_port: u32::from(entry.port.end_port),
        all_identities: entry.selection.all,
        remote_identities: entry.selection.identities.clone(),
        action: action as i32,
        peer: entry.peer.to_string(),
        origins: entry.origins.iter().map(ToString::to_string).collect(),
        ..Default::default()
    };
    if let Some(l7) = &entry.l7 {
        fill_l7(&mut out, l7);
    }
    out
}

fn fill_l7(out: &mut proto::PortPolicy, l7: &L7Policy) {
    out.parser = match l7.parser {
        L7Parser::Http => proto::L7Parser::Http,
        L7Parser::Dns => proto::L7Parser::Dns,
    } as i32;
    out.l7_allow_all = l7.allow_all;
    for (origin, spec) in &l7.rules {
        match spec {
            L7Spec::Http { specs, .. } => out.http_rule_sets.push(proto::HttpRuleSet {
                origin: origin.clone(),
                rules: specs.iter().map(http_rule).collect(),
            }),
            L7Spec::Dns { specs, .. } => out.dns_rule_sets.push(proto::DnsRuleSet {
                origin: origin.clone(),
                selectors: specs
                    .iter()
                    .map(|s| proto::DnsSelector {
                        selector: Some(match s {
                            dns_proxy::DnsSelectorSpec::MatchName(n) => {
                                proto::dns_selector::Selector::MatchName(n.clone())
                            }
                            dns_proxy::DnsSelectorSpec::MatchPattern(p) => {
                                proto::dns_selector::Selector::MatchPattern(p.clone())
                            }
                        }),
                    })
                    .collect(),
            }),
        }
    }
}

fn http_rule(spec: &l7_proxy::HttpRuleSpec) -> proto::HttpRule {
    proto::HttpRule {
        method: spec.method.clone(),
        path: spec.path.clone(),
        host: spec.host.clone(),
        headers: spec.headers.clone(),
        header_matches: spec
            .header_matches
            .iter()
            .map(|m| proto::HeaderMatch {
                name: m.name.clone(),
                value: m.value.clone(),
                mismatch: m
                    .mismatch
                    .map(|a| a.as_str().to_owned())
                    .unwrap_or_default(),
                secret: m.secret.as_ref().map(|s| proto::SecretRef {
                    namespace: s.namespace.clone().unwrap_or_default(),
                    name: s.name.clone(),
                }),
            })
            .collect(),
    }
}
