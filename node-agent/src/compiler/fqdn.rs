//! toFQDNs in the compiler (SEMANTICS 6): the FQDN cache's IPs become /32 (/128) CIDR
//! identities, and a `Peer::Fqdn` selects, per endpoint, the identities of the IPs that
//! endpoint's own lookups gave for matching names (6.5).
//!
//! - An IP gets an identity (through the refcounted CIDR mechanism, so toCIDR and world
//!   rules select it too, and the pinned ipcache's hints keep its number) while the cache
//!   holds it under a name that some policy's toFQDNs selector matches, unless it is a
//!   pod's IP (6.6: pods keep their identity). Answers for names nobody selects stay in the
//!   cache (a later rule can use them) without costing an identity or a datapath write.
//! - An expired entry that connections still use is a "zombie": withdrawn from the
//!   selections (new connections need a fresh answer) but kept, with its identity, for the
//!   flows that use it (6.4). A fresh answer ends that state.
//! - A change marks dirty exactly the endpoints whose policy has a toFQDNs selector that
//!   matches the name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use dns_proxy::CompiledNameMatcher;
use ipnet::IpNet;

use super::endpoint::Selection;
use super::{Compiler, EndpointKey};
use crate::fqdn::{FqdnCache, FqdnConfig, LoadOutcome, PersistError, Removed};
use crate::identity::Identity;
use crate::policy::rule::DnsSelectorSpecKey;
use crate::policy::{Direction, Peer, Policy};

/// (endpoint, name, IP) of the cache.
type EntryKey = (EndpointKey, String, IpAddr);

#[derive(Debug, Default)]
pub(super) struct FqdnState {
    cache: FqdnCache,
    /// The toFQDNs selectors policies name, compiled once, with how many policies name
    /// them. `None`: the selector does not compile (it selects nothing).
    matchers: BTreeMap<DnsSelectorSpecKey, (Option<Arc<CompiledNameMatcher>>, usize)>,
    /// Per IP, the (endpoint, name) entries holding it.
    by_ip: BTreeMap<IpAddr, BTreeSet<(EndpointKey, String)>>,
    /// IPs the compiler holds a CIDR reference for, with that prefix's identity (fixed
    /// while the reference is held). Hashed: looked up for every IP of every selection.
    acquired: HashMap<IpAddr, Identity>,
    /// Expired entries kept for connections that still use them.
    zombies: BTreeSet<EntryKey>,
    /// Per compiled endpoint, the toFQDNs selectors its policy uses.
    specs_by_endpoint: BTreeMap<EndpointKey, BTreeSet<DnsSelectorSpecKey>>,
    /// Selections computed for (endpoint, selector). A recompile after a DNS answer would
    /// otherwise match every name the endpoint ever resolved again: quadratic under a
    /// stream of new names. An answer that only adds IPs updates these in place; any
    /// other change to an endpoint's entries drops its selections (recomputed on demand).
    selections: HashMap<EndpointKey, HashMap<DnsSelectorSpecKey, Arc<Selection>>>,
}

impl FqdnState {
    pub(super) fn endpoint_gone(&mut self, key: &EndpointKey) {
        self.specs_by_endpoint.remove(key);
        self.selections.remove(key);
    }
}

/// What one observation changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FqdnObserved {
    /// IPs new for this endpoint and name.
    pub added: usize,
    /// Entries evicted by the cache's bounds.
    pub evicted: usize,
    /// A toFQDNs selector of the endpoint's policy matches the name.
    pub selected: bool,
}

/// What one expiry pass changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FqdnExpired {
    pub removed: usize,
    /// Entries that became zombies in this pass.
    pub new_zombies: usize,
}

fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

impl Compiler {
    /// Replaces the FQDN cache's limits (at start, before anything is observed).
    pub fn set_fqdn_config(&mut self, config: FqdnConfig) {
        self.fqdn.cache = FqdnCache::new(config);
    }

    pub fn fqdn_cache(&self) -> &FqdnCache {
        &self.fqdn.cache
    }

    /// Whether the entry is an expired one kept only for its connections.
    pub fn fqdn_is_zombie(&self, endpoint: &EndpointKey, name: &str, ip: IpAddr) -> bool {
        self.fqdn
            .zombies
            .contains(&(endpoint.clone(), name.to_owned(), ip))
    }

    /// (endpoint, IP) of every zombie: their established flows must survive policy
    /// re-checks.
    pub fn fqdn_zombie_flows(&self) -> BTreeSet<(EndpointKey, IpAddr)> {
        self.fqdn
            .zombies
            .iter()
            .map(|(ep, _, ip)| (ep.clone(), *ip))
            .collect()
    }

    pub fn fqdn_zombie_count(&self) -> usize {
        self.fqdn.zombies.len()
    }

    /// IPs that have a toFQDNs identity now.
    pub fn fqdn_identity_count(&self) -> usize {
        self.fqdn.acquired.len()
    }

    /// Records a DNS answer `endpoint`'s query produced (see `FqdnCache::observe`) and
    /// marks the endpoint dirty if its policy selects the name; `flush` then recompiles.
    pub fn fqdn_observe(
        &mut self,
        endpoint: &EndpointKey,
        name: &str,
        ips: &[IpAddr],
        ttl_secs: u32,
        now: Instant,
    ) -> FqdnObserved {
        let outcome = self.fqdn.cache.observe(endpoint, name, ips, ttl_secs, now);
        let name = outcome.name;
        let selected = self.endpoint_selects_name(endpoint, &name);
        let mut changed = !outcome.added.is_empty();
        for ip in &outcome.added {
            self.fqdn
                .by_ip
                .entry(*ip)
                .or_default()
                .insert((endpoint.clone(), name.clone()));
            self.fqdn_sync_ip_except(*ip, Some(endpoint));
        }
        self.fqdn_extend_selections(endpoint, &name, &outcome.added);
        for ip in &outcome.refreshed {
            let revived = self
                .fqdn
                .zombies
                .remove(&(endpoint.clone(), name.clone(), *ip));
            if revived {
                self.fqdn_invalidate(endpoint);
            }
            changed |= revived;
        }
        let evicted = outcome.evicted.len();
        for removed in outcome.evicted {
            self.fqdn_removed(removed);
        }
        if changed && selected {
            self.mark_dirty(endpoint);
        }
        FqdnObserved {
            added: outcome.added.len(),
            evicted,
            selected,
        }
    }

    /// Removes the entries expired before `threshold` that no connection uses
    /// (`in_use(endpoint, ip)`), and withdraws the ones still used from the selections.
    pub fn fqdn_expire(
        &mut self,
        threshold: Instant,
        in_use: impl FnMut(&EndpointKey, IpAddr) -> bool,
    ) -> FqdnExpired {
        let removed = self.fqdn.cache.expire(threshold, in_use);
        let mut out = FqdnExpired {
            removed: removed.len(),
            ..FqdnExpired::default()
        };
        for r in removed {
            self.fqdn_removed(r);
        }
        let zombies: BTreeSet<EntryKey> = self
            .fqdn
            .cache
            .expired_before(threshold)
            .map(|(ep, name, ip)| (ep.clone(), name.to_owned(), ip))
            .collect();
        let new: Vec<EntryKey> = zombies.difference(&self.fqdn.zombies).cloned().collect();
        out.new_zombies = new.len();
        self.fqdn.zombies = zombies;
        for (ep, name, _) in new {
            self.fqdn_invalidate(&ep);
            if self.endpoint_selects_name(&ep, &name) {
                self.mark_dirty(&ep);
            }
        }
        out
    }

    /// Loads the cache saved by a previous agent (see `FqdnCache::load`). Call before the
    /// source is applied: its policies' selectors then give the restored IPs identities.
    pub fn fqdn_load(
        &mut self,
        path: &Path,
        now: Instant,
        wall_now: SystemTime,
    ) -> Result<LoadOutcome, PersistError> {
        // The whole cache as last saved, then the answers journaled since (an agent killed
        // between two saves).
        let mut outcome = self.fqdn.cache.load(path, now, wall_now)?;
        let journal = self.fqdn.cache.replay_journal(path, now, wall_now)?;
        outcome.missing &= journal.missing;
        outcome.restored += journal.restored;
        outcome.skipped += journal.skipped;
        outcome.evicted.extend(journal.evicted);
        let entries: Vec<EntryKey> = self
            .fqdn
            .cache
            .entries()
            .map(|(ep, name, ip)| (ep.clone(), name.to_owned(), ip))
            .collect();
        self.fqdn.by_ip.clear();
        self.fqdn.selections.clear();
        for (ep, name, ip) in entries {
            self.fqdn.by_ip.entry(ip).or_default().insert((ep, name));
        }
        let ips: Vec<IpAddr> = self.fqdn.by_ip.keys().copied().collect();
        for ip in ips {
            self.fqdn_sync_ip(ip);
        }
        Ok(outcome)
    }

    /// [`Compiler::fqdn_select`], from the cache of selections when it holds it.
    pub(super) fn fqdn_select_cached(
        &mut self,
        endpoint: &EndpointKey,
        spec: &DnsSelectorSpecKey,
    ) -> Arc<Selection> {
        if let Some(selection) = self
            .fqdn
            .selections
            .get(endpoint)
            .and_then(|by_spec| by_spec.get(spec))
        {
            return selection.clone();
        }
        let selection = Arc::new(self.fqdn_select(endpoint, spec));
        self.fqdn
            .selections
            .entry(endpoint.clone())
            .or_default()
            .insert(spec.clone(), selection.clone());
        selection
    }

    /// Drops the cached selections of `endpoint`: its entries changed in a way other than
    /// new IPs for a name.
    fn fqdn_invalidate(&mut self, endpoint: &EndpointKey) {
        self.fqdn.selections.remove(endpoint);
    }

    /// Adds the identities of `ips` (new for `endpoint` under `name`) to the endpoint's
    /// cached selections whose selector matches `name`.
    fn fqdn_extend_selections(&mut self, endpoint: &EndpointKey, name: &str, ips: &[IpAddr]) {
        let ids: Vec<Identity> = ips
            .iter()
            .filter_map(|ip| self.fqdn.acquired.get(ip).copied())
            .collect();
        let Some(by_spec) = self.fqdn.selections.get_mut(endpoint) else {
            return;
        };
        for (spec, selection) in by_spec.iter_mut() {
            let matches =
                matches!(self.fqdn.matchers.get(spec), Some((Some(m), _)) if m.matches(name));
            if !matches {
                continue;
            }
            let selection = Arc::make_mut(selection);
            for id in &ids {
                if let Err(at) = selection.identities.binary_search(id) {
                    selection.identities.insert(at, *id);
                }
            }
        }
    }

    /// Selection of a toFQDNs peer for one endpoint: the identities of the IPs its own
    /// lookups gave for matching names, zombies and pod IPs left out.
    pub(super) fn fqdn_select(
        &self,
        endpoint: &EndpointKey,
        spec: &DnsSelectorSpecKey,
    ) -> Selection {
        let Some((Some(matcher), _)) = self.fqdn.matchers.get(spec) else {
            return Selection::default();
        };
        // This endpoint's zombies, found once (the set sorts by endpoint first), so the
        // loop below allocates nothing per IP.
        let zombies: BTreeSet<(&str, IpAddr)> = if self.fqdn.zombies.is_empty() {
            BTreeSet::new()
        } else {
            let from = (endpoint.clone(), String::new(), IpAddr::from([0u8; 4]));
            self.fqdn
                .zombies
                .range(from..)
                .take_while(|(ep, _, _)| ep == endpoint)
                .map(|(_, name, ip)| (name.as_str(), *ip))
                .collect()
        };
        let mut identities = Vec::new();
        for (name, ips) in self.fqdn.cache.names_of(endpoint) {
            if !matcher.matches(name) {
                continue;
            }
            for ip in ips {
                if let Some(id) = self.fqdn.acquired.get(&ip)
                    && !zombies.contains(&(name, ip))
                {
                    identities.push(*id);
                }
            }
        }
        identities.sort_unstable();
        identities.dedup();
        Selection {
            all: false,
            identities,
        }
    }

    /// Remembers which toFQDNs selectors a freshly compiled endpoint uses.
    pub(super) fn fqdn_set_specs(
        &mut self,
        key: &EndpointKey,
        specs: BTreeSet<DnsSelectorSpecKey>,
    ) {
        if specs.is_empty() {
            self.fqdn.specs_by_endpoint.remove(key);
        } else {
            self.fqdn.specs_by_endpoint.insert(key.clone(), specs);
        }
    }

    /// Keeps the toFQDNs selectors of every policy compiled, and the identities of the
    /// cached IPs that a selector starts or stops matching.
    pub(super) fn fqdn_policy_changed(&mut self, old: Option<&Policy>, new: Option<&Policy>) {
        // Which selectors exist, and which endpoints use them, may change: start over.
        self.fqdn.selections.clear();
        let mut touched: Vec<Arc<CompiledNameMatcher>> = Vec::new();
        for spec in new.map(policy_fqdn_specs).unwrap_or_default() {
            let entry = self.fqdn.matchers.entry(spec.clone()).or_insert_with(|| {
                let matcher = CompiledNameMatcher::compile(&spec.spec())
                    .ok()
                    .map(Arc::new);
                (matcher, 0)
            });
            entry.1 += 1;
            if entry.1 == 1
                && let Some(m) = &entry.0
            {
                touched.push(m.clone());
            }
        }
        for spec in old.map(policy_fqdn_specs).unwrap_or_default() {
            let Some(entry) = self.fqdn.matchers.get_mut(&spec) else {
                continue;
            };
            entry.1 -= 1;
            if entry.1 == 0 {
                if let Some(m) = &entry.0 {
                    touched.push(m.clone());
                }
                self.fqdn.matchers.remove(&spec);
            }
        }
        if touched.is_empty() {
            return;
        }
        let ips: BTreeSet<IpAddr> = self
            .fqdn
            .cache
            .entries()
            .filter(|(_, name, _)| touched.iter().any(|m| m.matches(name)))
            .map(|(_, _, ip)| ip)
            .collect();
        for ip in ips {
            self.fqdn_sync_ip(ip);
        }
    }

    /// Gives `ip` an identity or takes it back, as the cache and the pods now say; marks
    /// dirty the endpoints whose selections it enters or leaves.
    pub(super) fn fqdn_sync_ip(&mut self, ip: IpAddr) {
        self.fqdn_sync_ip_except(ip, None);
    }

    /// `fqdn_sync_ip`, leaving the cached selections of `except` alone (its caller updates
    /// them itself).
    fn fqdn_sync_ip_except(&mut self, ip: IpAddr, except: Option<&EndpointKey>) {
        let holders = self.fqdn.by_ip.get(&ip);
        let want = !self.pods_by_ip.contains_key(&ip)
            && holders.is_some_and(|h| h.iter().any(|(_, name)| self.name_selected(name)));
        let have = self.fqdn.acquired.contains_key(&ip);
        if want == have {
            return;
        }
        if want {
            self.acquire_cidr(host_net(ip));
            if let Some((id, _)) = self.cidrs.get(&host_net(ip)) {
                self.fqdn.acquired.insert(ip, *id);
            }
        } else {
            self.fqdn.acquired.remove(&ip);
            self.release_cidr(host_net(ip));
        }
        let holders: Vec<(EndpointKey, String)> = self
            .fqdn
            .by_ip
            .get(&ip)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for (ep, name) in holders {
            if except != Some(&ep) {
                self.fqdn_invalidate(&ep);
            }
            if self.endpoint_selects_name(&ep, &name) {
                self.mark_dirty(&ep);
            }
        }
    }

    /// One entry left the cache: withdraw it.
    fn fqdn_removed(&mut self, removed: Removed) {
        let Removed {
            endpoint, name, ip, ..
        } = removed;
        self.fqdn
            .zombies
            .remove(&(endpoint.clone(), name.clone(), ip));
        if let Some(holders) = self.fqdn.by_ip.get_mut(&ip) {
            holders.remove(&(endpoint.clone(), name.clone()));
            if holders.is_empty() {
                self.fqdn.by_ip.remove(&ip);
            }
        }
        self.fqdn_invalidate(&endpoint);
        if self.endpoint_selects_name(&endpoint, &name) {
            self.mark_dirty(&endpoint);
        }
        self.fqdn_sync_ip(ip);
    }

    /// Some policy's toFQDNs selector matches `name`.
    fn name_selected(&self, name: &str) -> bool {
        self.fqdn
            .matchers
            .values()
            .any(|(m, _)| m.as_ref().is_some_and(|m| m.matches(name)))
    }

    /// The compiled policy of `endpoint` has a toFQDNs selector matching `name`.
    fn endpoint_selects_name(&self, endpoint: &EndpointKey, name: &str) -> bool {
        self.fqdn
            .specs_by_endpoint
            .get(endpoint)
            .into_iter()
            .flatten()
            .any(|spec| {
                matches!(self.fqdn.matchers.get(spec), Some((Some(m), _)) if m.matches(name))
            })
    }

    fn mark_dirty(&mut self, endpoint: &EndpointKey) {
        if self.pods.get(endpoint).is_some_and(|p| p.local) {
            self.dirty.insert(endpoint.clone());
        }
    }
}

fn policy_fqdn_specs(policy: &Policy) -> Vec<DnsSelectorSpecKey> {
    let mut out = Vec::new();
    for rule in &policy.rules {
        for direction in Direction::BOTH {
            for peer_rule in &rule.direction(direction).rules {
                for peer in peer_rule.peers.iter().flatten() {
                    if let Peer::Fqdn(spec) = peer {
                        out.push(spec.clone());
                    }
                }
            }
        }
    }
    out
}
