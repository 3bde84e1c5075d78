//! How the compiler answers the questions of `endpoint::build_direction`: which identities
//! a peer selects (cached per peer) and what named ports stand for.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::endpoint::{PeerResolver, Selection, build_direction};
use super::{Compiler, EndpointKey, EndpointPolicy, visibility};
use crate::policy::rule::DnsSelectorSpecKey;
use crate::policy::{Direction, Peer, Rule};

/// Resolves peers for one endpoint being compiled.
struct EndpointResolver<'a> {
    compiler: &'a mut Compiler,
    key: &'a EndpointKey,
    own_ports: BTreeMap<String, u16>,
    /// The toFQDNs selectors the policy uses, so FQDN changes find this endpoint.
    fqdn_specs: BTreeSet<DnsSelectorSpecKey>,
}

impl PeerResolver for EndpointResolver<'_> {
    fn select(&mut self, peer: &Peer) -> Arc<Selection> {
        // Per endpoint (SEMANTICS 6.5): never in the cache shared by every endpoint.
        if let Peer::Fqdn(spec) = peer {
            self.fqdn_specs.insert(spec.clone());
            return self.compiler.fqdn_select_cached(self.key, spec);
        }
        if let Some(selection) = self.compiler.selections.get(peer) {
            return selection.clone();
        }
        let selection = Arc::new(self.compiler.select_uncached(peer));
        self.compiler
            .selections
            .insert(peer.clone(), selection.clone());
        selection
    }

    fn own_named_port(&self, name: &str) -> Option<u16> {
        self.own_ports.get(name).copied()
    }

    fn peer_named_ports(&mut self, peer: &Peer, name: &str) -> Vec<(u16, Arc<Selection>)> {
        let selection = self.select(peer);
        let mut by_number: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
        for pod in self.compiler.pods.values() {
            if let Some(number) = pod.named_ports.get(name)
                && selection.contains(pod.identity)
            {
                by_number.entry(*number).or_default().push(pod.identity);
            }
        }
        by_number
            .into_iter()
            .map(|(number, mut identities)| {
                identities.sort_unstable();
                identities.dedup();
                (
                    number,
                    Arc::new(Selection {
                        all: false,
                        identities,
                    }),
                )
            })
            .collect()
    }
}

impl Compiler {
    pub(super) fn compile_endpoint(&mut self, key: &EndpointKey) -> Option<EndpointPolicy> {
        let pod = self.pods.get(key)?;
        let labels = pod.labels.clone();
        let identity = pod.identity;
        let ip = pod.ip;
        let own_ports = pod.named_ports.clone();
        // SEMANTICS 7: an invalid annotation is ignored for this pod and reported.
        let (visibility, visibility_note) = match visibility::pod_items(&pod.pod) {
            Ok(items) => (items, None),
            Err(note) => (Vec::new(), Some(note)),
        };
        // A namespaced policy only ever selects pods of its namespace (SEMANTICS 1.4), so
        // the others are skipped without testing their selectors.
        let policies: Vec<_> = self
            .policies
            .values()
            .filter(|p| {
                p.key
                    .namespace
                    .as_ref()
                    .is_none_or(|ns| *ns == key.namespace)
            })
            .cloned()
            .collect();
        let rules: Vec<&Rule> = policies
            .iter()
            .flat_map(|p| &p.rules)
            .filter(|r| r.endpoint_selector.matches(&labels))
            .collect();
        let mut resolver = EndpointResolver {
            compiler: self,
            key,
            own_ports,
            fqdn_specs: BTreeSet::new(),
        };
        let (mut ingress, mut notes) = build_direction(Direction::Ingress, &rules, &mut resolver);
        let (mut egress, egress_notes) = build_direction(Direction::Egress, &rules, &mut resolver);
        notes.extend(egress_notes);
        notes.extend(visibility_note);
        if !visibility.is_empty() {
            let every = resolver.select(&Peer::Any);
            for (direction, policy) in [
                (Direction::Ingress, &mut ingress),
                (Direction::Egress, &mut egress),
            ] {
                visibility::apply(direction, policy, &visibility, every.clone(), &mut notes);
            }
        }
        let fqdn_specs = std::mem::take(&mut resolver.fqdn_specs);
        self.fqdn_set_specs(key, fqdn_specs);
        Some(EndpointPolicy {
            key: key.clone(),
            ip,
            identity,
            labels,
            ingress,
            egress,
            notes,
        })
    }
}
