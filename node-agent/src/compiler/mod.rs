//! The policy compiler: keeps the objects of the cluster, the identities of the pods and
//! prefixes they imply, and the compiled policy of every local endpoint. It is
//! incremental: `apply` records what changed and which endpoints it touches, `flush`
//! recompiles only those.

pub mod endpoint;
pub mod evaluate;
mod fqdn;
mod resolve;
pub mod visibility;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Pod};

pub use endpoint::{DirectionPolicy, L7Policy, PolicyEntry, PortKey, Selection};
pub use fqdn::{FqdnExpired, FqdnObserved};

use crate::identity::{Identity, IdentityAllocator, reserved};
use crate::labels::{LabelSet, SOURCE_CIDR, SOURCE_RESERVED};
use crate::manifest::{Object, ObjectKey, pod_namespace};
use crate::policy::{Direction, Peer, Policy, PolicyKey};
use crate::source::SourceEvent;

/// Which pods are endpoints compiled by this agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointScope {
    /// Pods whose `spec.nodeName` is this node and whose `status.podIP` is set.
    Node(String),
    /// Every pod, IP or not (for `policy explain`, where node names do not matter).
    AllPods,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for EndpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl EndpointKey {
    pub fn parse(text: &str) -> Option<Self> {
        let (namespace, name) = text.split_once('/')?;
        (!namespace.is_empty() && !name.is_empty()).then(|| Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

#[derive(Debug, Clone)]
pub struct PodState {
    pub pod: Arc<Pod>,
    pub labels: LabelSet,
    pub identity: Identity,
    pub ip: Option<IpAddr>,
    /// Container port names (lower-cased) to numbers.
    pub named_ports: BTreeMap<String, u16>,
    pub local: bool,
}

/// The compiled policy of one local endpoint.
#[derive(Debug, Clone)]
pub struct EndpointPolicy {
    pub key: EndpointKey,
    pub ip: Option<IpAddr>,
    pub identity: Identity,
    pub labels: LabelSet,
    pub ingress: DirectionPolicy,
    pub egress: DirectionPolicy,
    /// Parts of the policy that could not be applied, and why.
    pub notes: Vec<String>,
}

impl EndpointPolicy {
    pub fn direction(&self, direction: Direction) -> &DirectionPolicy {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// What one `flush` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub recompiled: BTreeSet<EndpointKey>,
    pub removed: BTreeSet<EndpointKey>,
    /// The identity map changed: an identity or a prefix -> identity mapping.
    pub ipcache_changed: bool,
    /// Prefixes whose identity may have changed (added, removed or renumbered), so the
    /// datapath can update just those.
    pub ipcache_prefixes: BTreeSet<IpNet>,
    /// Identities allocated, released, or whose prefixes changed, so the published
    /// identity resources can be updated one by one.
    pub identities: BTreeSet<Identity>,
}

#[derive(Debug)]
pub struct Compiler {
    scope: EndpointScope,
    namespaces: BTreeMap<String, Arc<Namespace>>,
    pods: BTreeMap<EndpointKey, PodState>,
    pods_by_ip: BTreeMap<IpAddr, EndpointKey>,
    policies: BTreeMap<PolicyKey, Arc<Policy>>,
    identities: IdentityAllocator,
    /// Prefixes named by CIDR rules, each with its identity and how many rules name it.
    cidrs: BTreeMap<IpNet, (Identity, usize)>,
    selections: HashMap<Peer, Arc<Selection>>,
    compiled: BTreeMap<EndpointKey, Arc<EndpointPolicy>>,
    dirty: BTreeSet<EndpointKey>,
    changed_identities: Vec<(Identity, LabelSet)>,
    named_ports_changed: bool,
    ipcache_changed: bool,
    /// Identities the datapath still uses, by prefix (see `set_identity_hints`).
    identity_hints: BTreeMap<IpNet, Identity>,
    /// Since the last flush: see `Changes::ipcache_prefixes` and `Changes::identities`.
    changed_prefixes: BTreeSet<IpNet>,
    touched_identities: BTreeSet<Identity>,
    /// What DNS answers taught (toFQDNs).
    fqdn: fqdn::FqdnState,
}

impl Compiler {
    pub fn new(scope: EndpointScope) -> Self {
        Self {
            scope,
            namespaces: BTreeMap::new(),
            pods: BTreeMap::new(),
            pods_by_ip: BTreeMap::new(),
            policies: BTreeMap::new(),
            identities: IdentityAllocator::new(),
            cidrs: BTreeMap::new(),
            selections: HashMap::new(),
            compiled: BTreeMap::new(),
            dirty: BTreeSet::new(),
            changed_identities: Vec::new(),
            named_ports_changed: false,
            ipcache_changed: false,
            identity_hints: BTreeMap::new(),
            changed_prefixes: BTreeSet::new(),
            touched_identities: BTreeSet::new(),
            fqdn: fqdn::FqdnState::default(),
        }
    }

    /// Records one event; call `flush` to recompile what it touched.
    pub fn apply(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::Applied(Object::Policy(policy)) => {
                let old = self.policies.insert(policy.key.clone(), policy.clone());
                self.policy_changed(old.as_deref(), Some(&policy));
            }
            SourceEvent::Deleted(ObjectKey::Policy(key)) => {
                if let Some(old) = self.policies.remove(&key) {
                    self.policy_changed(Some(&old), None);
                }
            }
            SourceEvent::Applied(Object::Pod(pod)) => {
                let key = EndpointKey {
                    namespace: pod_namespace(&pod).to_owned(),
                    name: pod.metadata.name.clone().unwrap_or_default(),
                };
                self.set_pod(key, Some(pod));
            }
            SourceEvent::Deleted(ObjectKey::Pod { namespace, name }) => {
                self.set_pod(EndpointKey { namespace, name }, None);
            }
            SourceEvent::Applied(Object::Namespace(ns)) => {
                let name = ns.metadata.name.clone().unwrap_or_default();
                self.namespaces.insert(name.clone(), ns);
                self.namespace_changed(&name);
            }
            SourceEvent::Deleted(ObjectKey::Namespace(name)) => {
                if self.namespaces.remove(&name).is_some() {
                    self.namespace_changed(&name);
                }
            }
            SourceEvent::Invalid(_) | SourceEvent::Synced => {}
        }
    }

    /// Recompiles every endpoint the recorded events touched.
    pub fn flush(&mut self) -> Changes {
        let mut changes = Changes {
            ipcache_changed: std::mem::take(&mut self.ipcache_changed)
                || !self.changed_identities.is_empty(),
            ipcache_prefixes: std::mem::take(&mut self.changed_prefixes),
            identities: std::mem::take(&mut self.touched_identities),
            ..Changes::default()
        };
        changes
            .identities
            .extend(self.changed_identities.iter().map(|(id, _)| *id));
        if !self.changed_identities.is_empty() || self.named_ports_changed {
            let changed = std::mem::take(&mut self.changed_identities);
            self.update_selections(&changed);
            let named = std::mem::take(&mut self.named_ports_changed);
            for (key, policy) in &self.compiled {
                let touched = Direction::BOTH.iter().any(|d| {
                    policy.direction(*d).entries.iter().any(|e| {
                        (named && e.named_port.is_some())
                            || changed
                                .iter()
                                .any(|(id, labels)| self.peer_selects(&e.peer, *id, labels))
                    })
                });
                if touched {
                    self.dirty.insert(key.clone());
                }
            }
        }
        for key in std::mem::take(&mut self.dirty) {
            match self.pods.get(&key).filter(|p| p.local) {
                Some(_) => {
                    let policy = self.compile_endpoint(&key);
                    if let Some(policy) = policy {
                        self.compiled.insert(key.clone(), Arc::new(policy));
                        changes.recompiled.insert(key);
                    }
                }
                None => {
                    self.fqdn.endpoint_gone(&key);
                    if self.compiled.remove(&key).is_some() {
                        changes.removed.insert(key);
                    }
                }
            }
        }
        changes
    }

    /// The identities a previous agent programmed, by pod IP or CIDR prefix (the pinned
    /// ipcache): a pod or prefix that still exists keeps its number when its label set is
    /// first seen. Call before the source is loaded.
    pub fn set_identity_hints(&mut self, hints: BTreeMap<IpNet, Identity>) {
        self.identities.reserve(hints.values().copied());
        self.identity_hints = hints;
    }

    pub fn endpoint(&self, key: &EndpointKey) -> Option<&Arc<EndpointPolicy>> {
        self.compiled.get(key)
    }

    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<EndpointPolicy>> {
        self.compiled.values()
    }

    pub fn pod(&self, key: &EndpointKey) -> Option<&PodState> {
        self.pods.get(key)
    }

    pub fn policies(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.policies.values()
    }

    pub fn identities(&self) -> &IdentityAllocator {
        &self.identities
    }

    /// The identity the datapath would give `ip`: a pod's, else the most specific CIDR
    /// prefix named by policy, else world.
    pub fn identity_of_ip(&self, ip: IpAddr) -> Identity {
        if let Some(pod) = self.pods_by_ip.get(&ip).and_then(|k| self.pods.get(k)) {
            return pod.identity;
        }
        self.cidrs
            .iter()
            .filter(|(net, _)| net.contains(&ip))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, (id, _))| *id)
            .unwrap_or(reserved::WORLD)
    }

    /// Every prefix the datapath maps to an identity: pod IPs and the CIDR prefixes that
    /// policies name. Addresses in none of them are world.
    pub fn ipcache(&self) -> impl Iterator<Item = (IpNet, Identity)> + '_ {
        let pods = self.pods_by_ip.iter().filter_map(|(ip, key)| {
            self.pods
                .get(key)
                .map(|pod| (IpNet::from(*ip), pod.identity))
        });
        let cidrs = self.cidrs.iter().map(|(net, (id, _))| (*net, *id));
        pods.chain(cidrs)
    }

    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&EndpointKey> {
        self.pods_by_ip.get(&ip)
    }

    /// The identity `Compiler::ipcache` gives exactly `net`, if it lists `net`.
    pub fn ipcache_entry(&self, net: IpNet) -> Option<Identity> {
        let pod = (net.prefix_len() == net.max_prefix_len())
            .then(|| self.pods_by_ip.get(&net.addr()))
            .flatten()
            .and_then(|key| self.pods.get(key))
            .map(|pod| pod.identity);
        // `ipcache()` lists CIDR prefixes after pods: the datapath keeps the later one.
        self.cidrs.get(&net).map(|(id, _)| *id).or(pod)
    }

    /// The prefixes `Compiler::ipcache` maps to `id`.
    pub fn prefixes_of(&self, id: Identity) -> Vec<IpNet> {
        if let Some(net) = self.identities.labels(id).and_then(|l| cidr_of_labels(l)) {
            return match self.cidrs.get(&net) {
                Some((cidr_id, _)) if *cidr_id == id => vec![net],
                _ => Vec::new(),
            };
        }
        self.pods_by_ip
            .iter()
            .filter(|(_, key)| self.pods.get(*key).is_some_and(|p| p.identity == id))
            .map(|(ip, _)| IpNet::from(*ip))
            .collect()
    }

    fn is_local(&self, pod: &Pod) -> bool {
        match &self.scope {
            EndpointScope::AllPods => true,
            EndpointScope::Node(node) => {
                pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str())
                    && pod_ip(pod).is_some()
            }
        }
    }

    fn policy_changed(&mut self, old: Option<&Policy>, new: Option<&Policy>) {
        for policy in old.into_iter().chain(new) {
            // A namespaced policy selects only pods of its namespace (SEMANTICS 1.4).
            let pods: Box<dyn Iterator<Item = (&EndpointKey, &PodState)>> =
                match &policy.key.namespace {
                    Some(ns) => Box::new(
                        self.pods
                            .range(
                                EndpointKey {
                                    namespace: ns.clone(),
                                    name: String::new(),
                                }..,
                            )
                            .take_while(move |(k, _)| k.namespace == *ns),
                    ),
                    None => Box::new(self.pods.iter()),
                };
            for (key, pod) in pods {
                if pod.local
                    && !self.dirty.contains(key)
                    && policy
                        .rules
                        .iter()
                        .any(|r| r.endpoint_selector.matches(&pod.labels))
                {
                    self.dirty.insert(key.clone());
                }
            }
        }
        for prefix in new.map(policy_prefixes).unwrap_or_default() {
            self.acquire_cidr(prefix);
        }
        for prefix in old.map(policy_prefixes).unwrap_or_default() {
            self.release_cidr(prefix);
        }
        self.fqdn_policy_changed(old, new);
    }

    fn acquire_cidr(&mut self, prefix: IpNet) {
        if let Some((_, refs)) = self.cidrs.get_mut(&prefix) {
            *refs += 1;
            return;
        }
        let labels = cidr_labels(prefix);
        if let Some(id) = self.identity_hints.get(&prefix) {
            self.identities.hint(labels.clone(), *id);
        }
        let (id, new) = self.identities.acquire(&labels);
        self.cidrs.insert(prefix, (id, 1));
        self.ipcache_changed = true;
        self.changed_prefixes.insert(prefix);
        self.touched_identities.insert(id);
        if new {
            self.changed_identities.push((id, labels));
        }
    }

    fn release_cidr(&mut self, prefix: IpNet) {
        let Some((id, refs)) = self.cidrs.get_mut(&prefix) else {
            return;
        };
        *refs -= 1;
        if *refs > 0 {
            return;
        }
        let id = *id;
        self.cidrs.remove(&prefix);
        self.ipcache_changed = true;
        self.changed_prefixes.insert(prefix);
        self.touched_identities.insert(id);
        if self.identities.release(id) {
            self.changed_identities.push((id, cidr_labels(prefix)));
        }
    }

    fn namespace_changed(&mut self, namespace: &str) {
        let keys: Vec<EndpointKey> = self
            .pods
            .keys()
            .filter(|k| k.namespace == namespace)
            .cloned()
            .collect();
        for key in keys {
            let pod = self.pods.get(&key).map(|p| p.pod.clone());
            self.set_pod(key, pod);
        }
    }

    fn set_pod(&mut self, key: EndpointKey, pod: Option<Arc<Pod>>) {
        let old = self.pods.remove(&key);
        if let Some(old) = &old {
            self.touched_identities.insert(old.identity);
            if let Some(ip) = old.ip {
                self.pods_by_ip.remove(&ip);
                self.changed_prefixes.insert(IpNet::from(ip));
            }
            if self.identities.release(old.identity) {
                self.changed_identities
                    .push((old.identity, old.labels.clone()));
            }
            if old.local {
                self.dirty.insert(key.clone());
            }
        }
        // A learned IP that was this pod's is the world's again (SEMANTICS 6.6); synced
        // once the new state is in place, so an unchanged IP causes no churn.
        let old_ip = old.as_ref().and_then(|o| o.ip);
        let Some(pod) = pod else {
            if let Some(ip) = old_ip {
                self.fqdn_sync_ip(ip);
            }
            self.ipcache_changed |= old.as_ref().is_some_and(|o| o.ip.is_some());
            self.named_ports_changed |= old.is_some_and(|o| !o.named_ports.is_empty());
            return;
        };
        let labels = LabelSet::for_pod(&pod, self.namespaces.get(&key.namespace).map(|n| &**n));
        let ip = pod_ip(&pod);
        if let Some(id) = ip.and_then(|ip| self.identity_hints.get(&IpNet::from(ip))) {
            self.identities.hint(labels.clone(), *id);
        }
        let (identity, new) = self.identities.acquire(&labels);
        if new {
            self.changed_identities.push((identity, labels.clone()));
        }
        self.touched_identities.insert(identity);
        if let Some(ip) = ip {
            self.pods_by_ip.insert(ip, key.clone());
            self.changed_prefixes.insert(IpNet::from(ip));
        }
        if old.as_ref().map(|o| (o.ip, o.identity)) != Some((ip, identity)) {
            self.ipcache_changed = true;
        }
        let named_ports = named_ports(&pod);
        if old.as_ref().map(|o| &o.named_ports) != Some(&named_ports) {
            self.named_ports_changed = true;
        }
        let local = self.is_local(&pod);
        if local {
            self.dirty.insert(key.clone());
        }
        self.pods.insert(
            key,
            PodState {
                pod,
                labels,
                identity,
                ip,
                named_ports,
                local,
            },
        );
        for changed in [old_ip, ip].into_iter().flatten() {
            self.fqdn_sync_ip(changed);
        }
    }

    /// Whether `peer` selects the identity `id` with `labels`.
    pub fn peer_selects(&self, peer: &Peer, id: Identity, labels: &LabelSet) -> bool {
        match peer {
            Peer::Any => true,
            Peer::Endpoints(selector) => selector.matches(labels),
            Peer::Entity { selectors, .. } => selectors.iter().any(|s| s.matches(labels)),
            Peer::Cidr { prefix, except } => {
                // Read from the labels, not from live state, so that an identity being
                // removed is still recognised for what it selected.
                if let Some(net) = cidr_of_labels(labels) {
                    return prefix.contains(&net) && !except.iter().any(|e| e.contains(&net));
                }
                // 0.0.0.0/0 and ::/0 also mean "the world" (Cilium maps them to it).
                prefix.prefix_len() == 0
                    && labels.has_source(SOURCE_RESERVED)
                    && match prefix {
                        IpNet::V4(_) => id == reserved::WORLD || id == reserved::WORLD_IPV4,
                        IpNet::V6(_) => id == reserved::WORLD || id == reserved::WORLD_IPV6,
                    }
            }
            // Selected per endpoint from its own DNS answers (`EndpointResolver::select`);
            // the endpoints concerned are marked dirty when the FQDN cache changes.
            Peer::Fqdn(_) => false,
        }
    }

    /// Adds and removes the changed identities in every cached selection, so a new pod
    /// costs one selector test per cached peer rather than a full re-selection.
    fn update_selections(&mut self, changed: &[(Identity, LabelSet)]) {
        let peers: Vec<Peer> = self.selections.keys().cloned().collect();
        for peer in peers {
            let Some(current) = self.selections.get(&peer) else {
                continue;
            };
            let mut selection = (**current).clone();
            let mut touched = false;
            for (id, labels) in changed {
                let alive = self.identities.labels(*id).is_some();
                let selects = alive && self.peer_selects(&peer, *id, labels);
                match (selection.identities.binary_search(id), selects) {
                    (Ok(i), false) => {
                        selection.identities.remove(i);
                        touched = true;
                    }
                    (Err(i), true) => {
                        selection.identities.insert(i, *id);
                        touched = true;
                    }
                    _ => {}
                }
            }
            if touched {
                self.selections.insert(peer, Arc::new(selection));
            }
        }
    }

    fn select_uncached(&self, peer: &Peer) -> Selection {
        let all = match peer {
            Peer::Any => true,
            Peer::Entity { selectors, .. } => selectors.iter().any(|s| s.is_wildcard()),
            _ => false,
        };
        let identities = self
            .identities
            .iter()
            .filter(|(id, labels)| self.peer_selects(peer, *id, labels))
            .map(|(id, _)| id)
            .collect();
        Selection { all, identities }
    }
}

fn cidr_labels(prefix: IpNet) -> LabelSet {
    LabelSet::new()
        .with(SOURCE_CIDR, &prefix.to_string(), "")
        .with(SOURCE_RESERVED, "world", "")
}

fn cidr_of_labels(labels: &LabelSet) -> Option<IpNet> {
    labels
        .iter()
        .find(|(source, _, _)| *source == SOURCE_CIDR)
        .and_then(|(_, key, _)| key.parse().ok())
}

fn policy_prefixes(policy: &Policy) -> Vec<IpNet> {
    let mut out = Vec::new();
    for rule in &policy.rules {
        for direction in Direction::BOTH {
            for peer_rule in &rule.direction(direction).rules {
                for peer in peer_rule.peers.iter().flatten() {
                    if let Peer::Cidr { prefix, except } = peer {
                        out.push(*prefix);
                        out.extend(except.iter().copied());
                    }
                }
            }
        }
    }
    out
}

fn pod_ip(pod: &Pod) -> Option<IpAddr> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
}

fn named_ports(pod: &Pod) -> BTreeMap<String, u16> {
    let mut out = BTreeMap::new();
    for container in pod.spec.iter().flat_map(|s| &s.containers) {
        for port in container.ports.iter().flatten() {
            if let (Some(name), Ok(number)) = (&port.name, u16::try_from(port.container_port)) {
                out.insert(name.to_ascii_lowercase(), number);
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests;
