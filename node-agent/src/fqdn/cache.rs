//! The in-memory cache: per endpoint, per name, per IP an expiry; plus an index by expiry
//! for the global bound and for [`FqdnCache::expire`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use dns_proxy::{CompiledNameMatcher, normalize_name};

use super::{Entry, FqdnConfig, FqdnMetrics, ObserveOutcome, RemovalReason, Removed, Source};
use crate::compiler::EndpointKey;

/// The state of one (endpoint, name, IP).
#[derive(Debug, Clone, Copy)]
pub(super) struct IpState {
    pub(super) expires: Instant,
    pub(super) source: Source,
}

/// Orders entries by expiry, then by key, so the first is the one to evict.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ExpiryKey {
    expires: Instant,
    endpoint: EndpointKey,
    name: String,
    ip: IpAddr,
}

type Names = BTreeMap<String, BTreeMap<IpAddr, IpState>>;

/// The FQDN cache (see the module documentation for the rules).
#[derive(Debug, Clone)]
pub struct FqdnCache {
    config: FqdnConfig,
    endpoints: BTreeMap<EndpointKey, Names>,
    by_expiry: BTreeSet<ExpiryKey>,
    evictions_per_name_limit: u64,
    evictions_global_limit: u64,
    expirations: u64,
}

impl Default for FqdnCache {
    fn default() -> Self {
        Self::new(FqdnConfig::default())
    }
}

/// `now + secs`, saturating far in the future instead of overflowing.
pub(super) fn add_secs(now: Instant, secs: u64) -> Instant {
    let mut secs = secs;
    loop {
        if let Some(t) = now.checked_add(Duration::from_secs(secs)) {
            return t;
        }
        secs /= 2;
    }
}

impl FqdnCache {
    /// An empty cache. Bounds of 0 are raised to 1 (a cache that can hold nothing would
    /// make every answer's release wait in vain).
    pub fn new(config: FqdnConfig) -> Self {
        let config = FqdnConfig {
            max_ips_per_name: config.max_ips_per_name.max(1),
            max_entries: config.max_entries.max(1),
            ..config
        };
        Self {
            config,
            endpoints: BTreeMap::new(),
            by_expiry: BTreeSet::new(),
            evictions_per_name_limit: 0,
            evictions_global_limit: 0,
            expirations: 0,
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &FqdnConfig {
        &self.config
    }

    /// (endpoint, name, IP) entries in the cache.
    pub fn len(&self) -> usize {
        self.by_expiry.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_expiry.is_empty()
    }

    /// Counters for metrics.
    pub fn metrics(&self) -> FqdnMetrics {
        FqdnMetrics {
            entries: self.len(),
            evictions_per_name_limit: self.evictions_per_name_limit,
            evictions_global_limit: self.evictions_global_limit,
            expirations: self.expirations,
        }
    }

    /// Records a DNS answer that `endpoint`'s query produced (SEMANTICS 6.2): `ips` for
    /// `name` (normalised here: ASCII lower-case, trailing dot), valid for
    /// `max(ttl_secs, min_ttl)` seconds from `now`. IPs already known for this endpoint and
    /// name keep the later expiry. Then the per-name and global bounds are enforced.
    pub fn observe(
        &mut self,
        endpoint: &EndpointKey,
        name: &str,
        ips: &[IpAddr],
        ttl_secs: u32,
        now: Instant,
    ) -> ObserveOutcome {
        let ttl = ttl_secs.max(self.config.min_ttl_secs);
        let expires = add_secs(now, u64::from(ttl));
        self.insert(
            endpoint,
            &normalize_name(name),
            ips,
            expires,
            Source::Lookup,
        )
    }

    /// Inserts or refreshes, then enforces the bounds.
    pub(super) fn insert(
        &mut self,
        endpoint: &EndpointKey,
        name: &str,
        ips: &[IpAddr],
        expires: Instant,
        source: Source,
    ) -> ObserveOutcome {
        let mut out = ObserveOutcome {
            name: name.to_owned(),
            ..ObserveOutcome::default()
        };
        let unique: BTreeSet<IpAddr> = ips.iter().copied().collect();
        if unique.is_empty() {
            return out;
        }
        let names = self.endpoints.entry(endpoint.clone()).or_default();
        let entries = names.entry(name.to_owned()).or_default();
        for ip in unique {
            match entries.get_mut(&ip) {
                Some(state) => {
                    if expires > state.expires {
                        self.by_expiry.remove(&ExpiryKey {
                            expires: state.expires,
                            endpoint: endpoint.clone(),
                            name: name.to_owned(),
                            ip,
                        });
                        state.expires = expires;
                        self.by_expiry.insert(ExpiryKey {
                            expires,
                            endpoint: endpoint.clone(),
                            name: name.to_owned(),
                            ip,
                        });
                    }
                    if source == Source::Lookup {
                        state.source = Source::Lookup;
                    }
                    out.refreshed.push(ip);
                }
                None => {
                    entries.insert(ip, IpState { expires, source });
                    self.by_expiry.insert(ExpiryKey {
                        expires,
                        endpoint: endpoint.clone(),
                        name: name.to_owned(),
                        ip,
                    });
                    out.added.push(ip);
                }
            }
        }

        // Per-name bound: the earliest-expiring of this (endpoint, name) first; ties broken
        // by IP so that the outcome is deterministic.
        let mut evicted = Vec::new();
        let excess = entries.len().saturating_sub(self.config.max_ips_per_name);
        if excess > 0 {
            let mut order: Vec<(Instant, IpAddr)> =
                entries.iter().map(|(ip, s)| (s.expires, *ip)).collect();
            order.sort_unstable();
            for (_, ip) in order.into_iter().take(excess) {
                self.remove(endpoint, name, ip);
                self.evictions_per_name_limit += 1;
                evicted.push((
                    endpoint.clone(),
                    name.to_owned(),
                    ip,
                    RemovalReason::PerNameLimit,
                ));
            }
        }

        // Global bound: the earliest-expiring anywhere first.
        while self.by_expiry.len() > self.config.max_entries {
            let Some(first) = self.by_expiry.first().cloned() else {
                break;
            };
            self.remove(&first.endpoint, &first.name, first.ip);
            self.evictions_global_limit += 1;
            evicted.push((
                first.endpoint,
                first.name,
                first.ip,
                RemovalReason::GlobalLimit,
            ));
        }

        for (ep, n, ip, reason) in evicted {
            if &ep == endpoint && n == name {
                if let Ok(at) = out.added.binary_search(&ip) {
                    // Never reported, so never programmed: nothing to withdraw.
                    out.added.remove(at);
                    continue;
                }
                if let Ok(at) = out.refreshed.binary_search(&ip) {
                    out.refreshed.remove(at);
                }
            }
            out.evicted.push(Removed {
                endpoint: ep,
                name: n,
                ip,
                reason,
            });
        }
        out
    }

    /// Removes one entry, with the empty maps above it. Returns its state if it was there.
    fn remove(&mut self, endpoint: &EndpointKey, name: &str, ip: IpAddr) -> Option<IpState> {
        let names = self.endpoints.get_mut(endpoint)?;
        let entries = names.get_mut(name)?;
        let state = entries.remove(&ip)?;
        if entries.is_empty() {
            names.remove(name);
            if names.is_empty() {
                self.endpoints.remove(endpoint);
            }
        }
        self.by_expiry.remove(&ExpiryKey {
            expires: state.expires,
            endpoint: endpoint.clone(),
            name: name.to_owned(),
            ip,
        });
        Some(state)
    }

    /// Removes the entries that expired before `now` unless `in_use(endpoint, ip)` says a
    /// connection of that endpoint still uses the IP (the datapath's connection tracking);
    /// those stay, and are asked about again on the next call (SEMANTICS 6.4). An entry is
    /// expired once `now` is past its expiry. Returns what was removed, to withdraw.
    pub fn expire(
        &mut self,
        now: Instant,
        mut in_use: impl FnMut(&EndpointKey, IpAddr) -> bool,
    ) -> Vec<Removed> {
        let due: Vec<ExpiryKey> = self
            .by_expiry
            .iter()
            .take_while(|k| k.expires < now)
            .cloned()
            .collect();
        let mut removed = Vec::new();
        for key in due {
            if in_use(&key.endpoint, key.ip) {
                continue;
            }
            if self.remove(&key.endpoint, &key.name, key.ip).is_some() {
                self.expirations += 1;
                removed.push(Removed {
                    endpoint: key.endpoint,
                    name: key.name,
                    ip: key.ip,
                    reason: RemovalReason::Expired,
                });
            }
        }
        removed
    }

    /// The IPs `selector` (a compiled `toFQDNs` `matchName` / `matchPattern`) allows for
    /// `endpoint`: those learned from that endpoint's own lookups of matching names
    /// (SEMANTICS 6.5), including expired ones kept for live connections.
    pub fn ips_for(
        &self,
        endpoint: &EndpointKey,
        selector: &CompiledNameMatcher,
    ) -> BTreeSet<IpAddr> {
        let Some(names) = self.endpoints.get(endpoint) else {
            return BTreeSet::new();
        };
        names
            .iter()
            .filter(|(name, _)| selector.matches(name))
            .flat_map(|(_, entries)| entries.keys().copied())
            .collect()
    }

    /// The earliest expiry of any entry (expired ones kept for connections included), so
    /// the caller knows when [`FqdnCache::expire`] has something to do.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.by_expiry.first().map(|k| k.expires)
    }

    /// The expiry of the entry at `rank` in expiry order (0: the earliest).
    pub fn expiry_at_rank(&self, rank: usize) -> Option<Instant> {
        self.by_expiry.iter().nth(rank).map(|k| k.expires)
    }

    /// The entries whose expiry is before `before`, earliest first: after an
    /// [`FqdnCache::expire`] with the same time, the ones kept for live connections.
    pub fn expired_before(
        &self,
        before: Instant,
    ) -> impl Iterator<Item = (&EndpointKey, &str, IpAddr)> + '_ {
        self.by_expiry
            .iter()
            .take_while(move |k| k.expires < before)
            .map(|k| (&k.endpoint, k.name.as_str(), k.ip))
    }

    /// The names of one endpoint, each with its IPs (sorted by name, then IP).
    pub fn names_of<'a>(
        &'a self,
        endpoint: &EndpointKey,
    ) -> impl Iterator<Item = (&'a str, impl Iterator<Item = IpAddr> + 'a)> + 'a {
        self.endpoints
            .get(endpoint)
            .into_iter()
            .flatten()
            .map(|(name, entries)| (name.as_str(), entries.keys().copied()))
    }

    /// Every (endpoint, name, IP), sorted.
    pub fn entries(&self) -> impl Iterator<Item = (&EndpointKey, &str, IpAddr)> + '_ {
        self.iter_states().map(|(ep, name, ip, _)| (ep, name, ip))
    }

    /// Every entry, or those of one endpoint, sorted by endpoint, name and IP.
    pub fn list(&self, endpoint: Option<&EndpointKey>, now: Instant) -> Vec<Entry> {
        let mut out = Vec::new();
        for (ep, names) in &self.endpoints {
            if endpoint.is_some_and(|want| want != ep) {
                continue;
            }
            let ep_text = ep.to_string();
            for (name, entries) in names {
                for (ip, state) in entries {
                    let left = state.expires.saturating_duration_since(now);
                    let mut secs = left.as_secs();
                    if left.subsec_nanos() > 0 {
                        secs += 1;
                    }
                    out.push(Entry {
                        endpoint: ep_text.clone(),
                        name: name.clone(),
                        ip: *ip,
                        expires_in_secs: secs,
                        expired: state.expires < now,
                        source: state.source,
                    });
                }
            }
        }
        out
    }

    /// Every (endpoint, name, IP, state), for persistence.
    pub(super) fn iter_states(
        &self,
    ) -> impl Iterator<Item = (&EndpointKey, &str, IpAddr, IpState)> + '_ {
        self.endpoints.iter().flat_map(|(ep, names)| {
            names.iter().flat_map(move |(name, entries)| {
                entries
                    .iter()
                    .map(move |(ip, state)| (ep, name.as_str(), *ip, *state))
            })
        })
    }
}
