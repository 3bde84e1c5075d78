//! The agent's FQDN cache (SEMANTICS 6): per endpoint and name, the IPs that DNS answers
//! gave, with their expiry, for `toFQDNs` selectors.
//!
//! A pure library: no sockets, no BPF, no clock of its own. The caller passes the
//! monotonic time (`std::time::Instant`) to every call that needs it, and the wall clock
//! (`std::time::SystemTime`) only to [`FqdnCache::save`] / [`FqdnCache::load`], whose file
//! holds absolute expiry times so that they survive a restart.
//!
//! # What the cache holds and what the caller programs
//!
//! The cache is the set of (endpoint, name, IP) the datapath should allow: an entry leaves
//! it only through [`FqdnCache::expire`] (expired and no longer used by a connection) or by
//! eviction (the per-name or the global bound), and every removal is returned so the caller
//! can withdraw it. [`FqdnCache::observe`] returns the new entries so the caller knows what
//! to program before releasing the DNS answer (SEMANTICS 6.3). [`FqdnCache::ips_for`]
//! gives, for an endpoint and one `toFQDNs` selector, the IPs to turn into identities.
//!
//! # Rules (SEMANTICS 6.2, 6.4, 6.5)
//!
//! - An IP expires at `now + max(ttl, min_ttl)`; seeing it again for the same endpoint and
//!   name keeps the later of the two expiries (a client may still use the earlier answer).
//! - At most `max_ips_per_name` IPs per (endpoint, name): the earliest-expiring go first.
//! - At most `max_entries` (endpoint, name, IP) entries in all: the earliest-expiring go
//!   first, whichever endpoint they belong to.
//! - An expired IP stays while `in_use(endpoint, ip)` says a connection still uses it.
//!   Such an IP is the earliest-expiring of all, so it is the first the global bound
//!   evicts: past that bound, memory wins over established connections (counted).
//! - IPs learned from one endpoint's lookup are allowed for that endpoint only (6.5).

mod cache;
mod journal;
mod persist;

#[cfg(test)]
mod tests;

use std::net::IpAddr;

pub use cache::FqdnCache;
pub use journal::{Journal, journal_path};
pub use persist::{LoadOutcome, PersistError};

/// Limits of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FqdnConfig {
    /// Minimum TTL in seconds applied to every answer (SEMANTICS 6.4: default 0, like
    /// Cilium's `--tofqdns-min-ttl` when set to 0).
    pub min_ttl_secs: u32,
    /// Maximum IPs per (endpoint, name); the earliest-expiring are evicted first
    /// (SEMANTICS 6.4: default 1000, Cilium's `--tofqdns-endpoint-max-ip-per-hostname`).
    pub max_ips_per_name: usize,
    /// Maximum (endpoint, name, IP) entries in the whole cache; the earliest-expiring are
    /// evicted first. Default 65,536: the size of the datapath's ipcache map, which the
    /// learned IPs end up in.
    pub max_entries: usize,
}

impl FqdnConfig {
    /// SEMANTICS 6.4 default minimum TTL.
    pub const DEFAULT_MIN_TTL_SECS: u32 = 0;
    /// SEMANTICS 6.4 default maximum IPs per name and endpoint.
    pub const DEFAULT_MAX_IPS_PER_NAME: usize = 1000;
    /// Default global bound (the datapath's `DP_IPCACHE_MAX_ENTRIES`).
    pub const DEFAULT_MAX_ENTRIES: usize = 65_536;
}

impl Default for FqdnConfig {
    fn default() -> Self {
        Self {
            min_ttl_secs: Self::DEFAULT_MIN_TTL_SECS,
            max_ips_per_name: Self::DEFAULT_MAX_IPS_PER_NAME,
            max_entries: Self::DEFAULT_MAX_ENTRIES,
        }
    }
}

/// Where an entry came from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A DNS answer seen by the proxy since the agent started.
    Lookup,
    /// Loaded from the file written before the agent restarted.
    Restored,
}

/// Why an entry left the cache.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum RemovalReason {
    /// Past its expiry and no longer used by a connection.
    Expired,
    /// Evicted by the per-(endpoint, name) bound.
    PerNameLimit,
    /// Evicted by the global bound.
    GlobalLimit,
}

/// One (endpoint, name, IP) that left the cache: the caller withdraws it from the
/// selectors that match `name` for `endpoint` (unless [`FqdnCache::ips_for`] still gives
/// the IP through another name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Removed {
    pub endpoint: crate::compiler::EndpointKey,
    /// Normalised name: lower-case, fully qualified.
    pub name: String,
    pub ip: IpAddr,
    pub reason: RemovalReason,
}

/// What one [`FqdnCache::observe`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObserveOutcome {
    /// The normalised name the IPs were recorded under.
    pub name: String,
    /// IPs new for this (endpoint, name): the caller programs them for the selectors
    /// matching `name`. Sorted.
    pub added: Vec<IpAddr>,
    /// IPs already known for this (endpoint, name) whose expiry was refreshed. Sorted.
    pub refreshed: Vec<IpAddr>,
    /// Entries evicted to make room (this or other endpoints and names), to withdraw.
    /// An IP of this answer evicted at once is in neither `added` nor here.
    pub evicted: Vec<Removed>,
}

/// One line of `node-agent fqdn cache list`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// `NAMESPACE/POD`.
    pub endpoint: String,
    /// Normalised name: lower-case, fully qualified.
    pub name: String,
    pub ip: IpAddr,
    /// Seconds until expiry, rounded up; 0 once expired.
    pub expires_in_secs: u64,
    /// Past its expiry but still here: a connection used it at the last expiry pass
    /// (SEMANTICS 6.4), or no pass has run since it expired.
    pub expired: bool,
    pub source: Source,
}

/// Counters and gauges, ready to be exported as metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FqdnMetrics {
    /// (endpoint, name, IP) entries now in the cache.
    pub entries: usize,
    /// Evictions by the per-(endpoint, name) bound, since start.
    pub evictions_per_name_limit: u64,
    /// Evictions by the global bound, since start.
    pub evictions_global_limit: u64,
    /// Entries removed because they expired and no connection used them, since start.
    pub expirations: u64,
}
