//! Keeps the kernel datapath in step with the compiler: which devices carry our programs
//! and what the maps hold.
//!
//! The controller starts from what the maps already hold (a previous agent's entries are
//! adopted, not cleared), computes the complete desired state after every policy change
//! (and periodically, for pods whose devices appear later), and writes only the
//! difference. Writes are ordered so that a half-applied update is never more permissive
//! than either the old or the new state would be for long: identities and policy entries
//! first, then endpoints and attachments, deletions last.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use aya::maps::{MapData, RingBuf};
use aya::programs::TcAttachType;
use ipnet::IpNet;

use super::abi::{
    CtKey, DP_ACT_DENY, DP_DIR_EGRESS, DP_FAMILY_IPV4, DP_FAMILY_IPV6, DP_IDENTITY_HOST,
    DP_IPCACHE_STATIC_PREFIX, EndpointValue, IpcacheKey, IpcacheValue, LocalIpKey, PolicyKey,
    PolicyValue,
};
use super::bytes;
use super::entries::{self, ProxyPorts};
use super::loader::{self, Loaded, LoaderError};
use super::scanner;
use super::system::{self, SystemError};
use crate::compiler::{Compiler, EndpointKey};

/// Default routing table for packets steered to a proxy (Cilium uses the same number).
pub const DEFAULT_PROXY_TABLE: u32 = 2004;

impl From<LoaderError> for DatapathError {
    fn from(e: LoaderError) -> Self {
        Self::Loader(e)
    }
}

impl From<SystemError> for DatapathError {
    fn from(e: SystemError) -> Self {
        Self::System(e)
    }
}

#[derive(Debug, Clone)]
pub struct DatapathConfig {
    /// Folder of pinned maps (one per node).
    pub pin_dir: PathBuf,
    /// The proxies' transparent listening ports.
    pub proxy_ports: ProxyPorts,
    /// Devices through which traffic from other nodes arrives.
    pub uplinks: Vec<String>,
    /// Routing table of the proxy redirect's policy route.
    pub routing_table: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("{0}")]
    Loader(LoaderError),
    #[error("{0}")]
    System(SystemError),
    #[error("uplink device {0} does not exist")]
    NoUplink(String),
    #[error("more than 65535 local endpoints")]
    EndpointIdsExhausted,
    #[error("starting the conntrack scan thread: {0}")]
    ScanThread(std::io::Error),
}

/// What one reconcile did (logged, and shown by tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    pub policy_upserts: usize,
    pub policy_deletes: usize,
    pub ipcache_upserts: usize,
    pub ipcache_deletes: usize,
    pub attached: Vec<String>,
    pub detached: Vec<String>,
    /// Local endpoints that have no device yet (no route to their IP).
    pub without_device: Vec<String>,
}

impl ReconcileReport {
    /// Nothing was written, attached or detached (pods still without a device aside).
    pub fn is_empty(&self) -> bool {
        self.policy_upserts + self.policy_deletes + self.ipcache_upserts + self.ipcache_deletes == 0
            && self.attached.is_empty()
            && self.detached.is_empty()
    }

    /// Identities or policy entries changed (established flows need a re-check).
    pub fn policy_changed(&self) -> bool {
        self.policy_upserts + self.policy_deletes + self.ipcache_upserts + self.ipcache_deletes > 0
    }
}

#[derive(Debug)]
pub struct Datapath {
    pub(super) loaded: Loaded,
    pub(super) config: DatapathConfig,
    pub(super) ipcache: BTreeMap<IpcacheKey, IpcacheValue>,
    pub(super) policy: BTreeMap<PolicyKey, PolicyValue>,
    /// ifindex -> endpoint, as in the map.
    endpoints: BTreeMap<u32, EndpointValue>,
    local_ips: BTreeMap<LocalIpKey, u32>,
    /// Devices (ifindex -> name) our pod programs are attached to by this agent.
    attached: BTreeMap<u32, String>,
    /// Endpoint ids by pod, stable while the pod lives.
    pub(super) ids: BTreeMap<EndpointKey, u16>,
    uplinks_attached: BTreeMap<u32, String>,
    /// The node's own addresses at the last reconcile: host entries of the ipcache, which
    /// the incremental path leaves alone.
    pub(super) host_prefixes: BTreeSet<IpNet>,
    /// The compiled policy whose entries the map holds, per endpoint with an id, so the
    /// incremental path can rebuild only what a new version changed.
    pub(super) programmed: BTreeMap<EndpointKey, std::sync::Arc<crate::compiler::EndpointPolicy>>,
}

impl Datapath {
    /// Loads the programs (adopting pinned maps), sets up the proxy routing and attaches
    /// the uplinks. Pod devices are attached by [`Datapath::reconcile`].
    pub fn start(config: DatapathConfig) -> Result<Self, DatapathError> {
        let loaded = Loaded::load(&config.pin_dir)?;
        system::ensure_proxy_routing(config.routing_table)?;
        let ipcache = loaded.maps.read_ipcache();
        let policy = loaded.maps.read_policy();
        let endpoints = loaded.maps.read_endpoints();
        let local_ips = loaded.maps.read_local_ips();
        tracing::info!(
            pin_dir = %config.pin_dir.display(),
            adopted_ipcache = ipcache.len(),
            adopted_policy = policy.len(),
            adopted_endpoints = endpoints.len(),
            "datapath loaded"
        );
        let mut datapath = Self {
            loaded,
            config,
            ipcache,
            policy,
            endpoints,
            local_ips,
            attached: BTreeMap::new(),
            ids: BTreeMap::new(),
            uplinks_attached: BTreeMap::new(),
            host_prefixes: BTreeSet::new(),
            programmed: BTreeMap::new(),
        };
        datapath.attach_uplinks()?;
        Ok(datapath)
    }

    /// The ring buffer of events, for one reader.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.loaded.events.take()
    }

    fn attach_uplinks(&mut self) -> Result<(), DatapathError> {
        let links = system::links()?;
        for name in &self.config.uplinks {
            let link = links
                .iter()
                .find(|l| &l.ifname == name)
                .ok_or_else(|| DatapathError::NoUplink(name.clone()))?;
            if self.uplinks_attached.get(&link.ifindex) != Some(name) {
                self.loaded.attach_uplink(name)?;
                self.uplinks_attached.insert(link.ifindex, name.clone());
                tracing::info!(device = %name, "uplink program attached");
            }
        }
        Ok(())
    }

    /// Brings devices and maps to the compiler's current state.
    pub fn reconcile(&mut self, compiler: &Compiler) -> Result<ReconcileReport, DatapathError> {
        let mut report = ReconcileReport::default();
        let links = system::links()?;
        let routes = system::routes()?;
        let node_addresses = system::addresses()?;
        let ifindex_of: BTreeMap<&str, u32> = links
            .iter()
            .map(|l| (l.ifname.as_str(), l.ifindex))
            .collect();
        let uplink_names: BTreeSet<&str> = self.config.uplinks.iter().map(String::as_str).collect();

        // Endpoint ids: keep the id a device already has in the map (a restarted agent
        // must not renumber what the programs use), else the pod's, else the lowest free.
        let mut used: BTreeSet<u16> = BTreeSet::new();
        let mut wanted: Vec<(EndpointKey, IpAddr, String, u32)> = Vec::new();
        for endpoint in compiler.endpoints() {
            let Some(ip) = endpoint.ip else { continue };
            let device =
                system::device_for(&routes, ip).filter(|d| !uplink_names.contains(d) && *d != "lo");
            let Some((device, ifindex)) =
                device.and_then(|d| ifindex_of.get(d).map(|i| (d.to_string(), *i)))
            else {
                report.without_device.push(endpoint.key.to_string());
                continue;
            };
            wanted.push((endpoint.key.clone(), ip, device, ifindex));
        }
        let mut ids: BTreeMap<EndpointKey, u16> = BTreeMap::new();
        for (key, _, _, ifindex) in &wanted {
            let id = self
                .endpoints
                .get(ifindex)
                .map(|e| e.endpoint_id)
                .or_else(|| self.ids.get(key).copied())
                .filter(|id| *id != 0 && !used.contains(id));
            if let Some(id) = id {
                used.insert(id);
                ids.insert(key.clone(), id);
            }
        }
        for (key, _, _, _) in &wanted {
            if ids.contains_key(key) {
                continue;
            }
            let id = (1..=u16::MAX)
                .find(|id| !used.contains(id))
                .ok_or(DatapathError::EndpointIdsExhausted)?;
            used.insert(id);
            ids.insert(key.clone(), id);
        }

        let mut desired_policy = BTreeMap::new();
        let mut programmed = BTreeMap::new();
        let mut desired_endpoints = BTreeMap::new();
        let mut desired_local_ips = BTreeMap::new();
        let mut desired_devices = BTreeMap::new();
        for (key, ip, device, ifindex) in &wanted {
            let (Some(policy), Some(id)) = (compiler.endpoint(key), ids.get(key)) else {
                continue;
            };
            desired_policy.extend(entries::policy_entries(
                *id,
                policy,
                &self.config.proxy_ports,
            ));
            programmed.insert(key.clone(), policy.clone());
            desired_endpoints.insert(*ifindex, entries::endpoint_value(*id, policy));
            desired_local_ips.insert(local_ip_key(*ip), *ifindex);
            desired_devices.insert(*ifindex, device.clone());
        }
        let host_prefixes: Vec<(IpNet, u32)> = node_addresses
            .iter()
            .filter(|ip| compiler.pod_by_ip(**ip).is_none())
            .map(|ip| (IpNet::from(*ip), DP_IDENTITY_HOST))
            .collect();
        self.host_prefixes = host_prefixes.iter().map(|(net, _)| *net).collect();
        let desired_ipcache =
            entries::ipcache_entries(compiler.ipcache().chain(host_prefixes.iter().copied()));

        // 1. identities and policy entries.
        let (ipcache_up, ipcache_del) = entries::diff(&self.ipcache, &desired_ipcache);
        let (policy_up, policy_del) = entries::diff(&self.policy, &desired_policy);
        for (k, v) in &ipcache_up {
            self.loaded.maps.put_ipcache(k, v)?;
            self.ipcache.insert(*k, *v);
        }
        for (k, v) in &policy_up {
            self.loaded.maps.put_policy(k, v)?;
            self.policy.insert(*k, *v);
        }
        // 2. endpoints (before their programs can look them up) and their addresses.
        let (endpoint_up, endpoint_del) = entries::diff(&self.endpoints, &desired_endpoints);
        for (ifindex, value) in &endpoint_up {
            self.loaded.maps.put_endpoint(*ifindex, value)?;
            self.endpoints.insert(*ifindex, *value);
        }
        let (local_up, local_del) = entries::diff(&self.local_ips, &desired_local_ips);
        for (k, ifindex) in &local_up {
            self.loaded.maps.put_local_ip(k, *ifindex)?;
            self.local_ips.insert(*k, *ifindex);
        }
        // 3. programs on new devices (or all devices, the first time after a start:
        // replacing a previous agent's filters with this agent's programs).
        for (ifindex, device) in &desired_devices {
            if self.attached.get(ifindex) == Some(device) {
                continue;
            }
            self.loaded.attach_endpoint(device)?;
            self.attached.insert(*ifindex, device.clone());
            report.attached.push(device.clone());
        }
        // 4. what is gone: programs first, then entries.
        let gone: Vec<(u32, String)> = self
            .attached
            .iter()
            .filter(|(i, _)| !desired_devices.contains_key(*i))
            .map(|(i, d)| (*i, d.clone()))
            .collect();
        for (ifindex, device) in gone {
            if ifindex_of.get(device.as_str()) == Some(&ifindex) {
                loader::detach(&device, TcAttachType::Ingress);
                loader::detach(&device, TcAttachType::Egress);
            }
            self.attached.remove(&ifindex);
            report.detached.push(device);
        }
        for ifindex in &endpoint_del {
            self.loaded.maps.delete_endpoint(*ifindex)?;
            self.endpoints.remove(ifindex);
        }
        for k in &local_del {
            self.loaded.maps.delete_local_ip(k)?;
            self.local_ips.remove(k);
        }
        for k in &policy_del {
            self.loaded.maps.delete_policy(k)?;
            self.policy.remove(k);
        }
        for k in &ipcache_del {
            self.loaded.maps.delete_ipcache(k)?;
            self.ipcache.remove(k);
        }
        self.ids = ids;
        self.programmed = programmed;
        report.policy_upserts = policy_up.len();
        report.policy_deletes = policy_del.len();
        report.ipcache_upserts = ipcache_up.len();
        report.ipcache_deletes = ipcache_del.len();
        Ok(report)
    }

    /// Connection tracking upkeep. Removes entries idle longer than their protocol's
    /// timeout (the LRU map would only evict under pressure, and a stale entry could let a
    /// reused 5-tuple skip the policy), and, with `recheck`, entries whose flow the current
    /// policy denies: their next packet is then a new flow, looked up and dropped, so a
    /// policy change cuts established flows that lost access instead of leaving them
    /// open. Flows that stay allowed keep their kept verdict (allow or redirect).
    ///
    /// `exempt` lists (local endpoint IP, remote IP) pairs whose egress flows are never cut
    /// by the re-check: expired FQDN entries kept for the connections that use them.
    pub fn sweep_conntrack(
        &mut self,
        recheck: bool,
        exempt: &BTreeSet<(IpAddr, IpAddr)>,
    ) -> Result<SweepReport, DatapathError> {
        let now = monotonic_ns();
        let mut report = SweepReport::default();
        let mut doomed = Vec::new();
        for (raw_key, raw_value) in self.loaded.maps.ct.iter().flatten() {
            report.scanned += 1;
            let key = bytes::ct_key_from(&raw_key);
            if scanner::is_idle(now, &key, &bytes::ct_value_from(&raw_value)) {
                report.expired += 1;
                doomed.push(raw_key);
            } else if recheck && !is_exempt(&key, exempt) && self.flow_now_denied(&key) {
                report.denied += 1;
                doomed.push(raw_key);
            }
        }
        scanner::remove_entries(&mut self.loaded.maps.ct, doomed)?;
        Ok(report)
    }

    /// A thread scanning this datapath's conntrack map on its own handle (see
    /// `datapath::scanner`).
    pub fn conntrack_scanner(
        &self,
        deliver: scanner::DeliverFlows,
    ) -> Result<scanner::ConntrackScanner, DatapathError> {
        scanner::ConntrackScanner::start(&self.config.pin_dir, deliver)
    }

    /// Whether the policy now in the maps denies the flow of a conntrack entry, from the
    /// side of the local endpoint that owns the entry.
    fn flow_now_denied(&self, key: &CtKey) -> bool {
        let (local, remote) = if key.direction == DP_DIR_EGRESS {
            (&key.saddr, &key.daddr)
        } else {
            (&key.daddr, &key.saddr)
        };
        let local_key = LocalIpKey {
            family: key.family,
            pad: [0; 3],
            addr: *local,
        };
        let Some(endpoint) = self
            .local_ips
            .get(&local_key)
            .and_then(|ifindex| self.endpoints.get(ifindex))
        else {
            // The endpoint is gone: its device (and programs) went with it.
            return false;
        };
        let peer = self.identity_of(key.family, remote);
        let port = match key.protocol {
            IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => u16::from_be(key.dport),
            _ => 0,
        };
        entries::lookup_action(
            &self.policy,
            endpoint,
            key.direction,
            peer,
            key.protocol,
            port,
        ) == DP_ACT_DENY
    }

    /// The ipcache's longest match for an address, as the programs look it up.
    fn identity_of(&self, family: u8, addr: &[u8; 16]) -> crate::identity::Identity {
        let bits: u32 = if family == DP_FAMILY_IPV4 { 32 } else { 128 };
        (0..=bits)
            .rev()
            .find_map(|len| {
                let mut masked = [0u8; 16];
                for (i, byte) in masked.iter_mut().enumerate() {
                    let covered = len.saturating_sub(i as u32 * 8).min(8);
                    let mask = if covered == 0 {
                        0
                    } else {
                        0xffu8 << (8 - covered)
                    };
                    *byte = addr[i] & mask;
                }
                let key = IpcacheKey {
                    prefixlen: DP_IPCACHE_STATIC_PREFIX + len,
                    family,
                    pad: [0; 3],
                    addr: masked,
                };
                self.ipcache.get(&key).map(|v| v.identity)
            })
            .unwrap_or(crate::identity::reserved::WORLD)
    }

    /// The ipcache as the maps hold it (a previous agent's, right after `start`), as
    /// prefix -> identity, without the world defaults.
    pub fn adopted_identities(&self) -> BTreeMap<IpNet, crate::identity::Identity> {
        self.ipcache
            .iter()
            .filter_map(|(key, value)| {
                let bits = key.prefixlen.checked_sub(DP_IPCACHE_STATIC_PREFIX)?;
                let net = match key.family {
                    DP_FAMILY_IPV4 => {
                        let addr: [u8; 4] = key.addr[..4].try_into().ok()?;
                        IpNet::new(IpAddr::from(addr), u8::try_from(bits).ok()?).ok()?
                    }
                    DP_FAMILY_IPV6 => {
                        IpNet::new(IpAddr::from(key.addr), u8::try_from(bits).ok()?).ok()?
                    }
                    _ => return None,
                };
                (net.prefix_len() > 0).then_some((net, value.identity))
            })
            .collect()
    }
}

/// An address of a conntrack key.
pub(super) fn ct_addr(family: u8, addr: &[u8; 16]) -> Option<IpAddr> {
    match family {
        DP_FAMILY_IPV4 => {
            let v4: [u8; 4] = addr[..4].try_into().ok()?;
            Some(IpAddr::from(v4))
        }
        DP_FAMILY_IPV6 => Some(IpAddr::from(*addr)),
        _ => None,
    }
}

fn is_exempt(key: &CtKey, exempt: &BTreeSet<(IpAddr, IpAddr)>) -> bool {
    if exempt.is_empty() || key.direction != DP_DIR_EGRESS {
        return false;
    }
    match (
        ct_addr(key.family, &key.saddr),
        ct_addr(key.family, &key.daddr),
    ) {
        (Some(local), Some(remote)) => exempt.contains(&(local, remote)),
        _ => false,
    }
}

/// What one conntrack sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    pub scanned: usize,
    pub expired: usize,
    pub denied: usize,
}

pub(super) const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;
const SECOND_NS: u64 = 1_000_000_000;
/// Idle timeouts of conntrack entries, in the spirit of Linux conntrack's defaults but
/// shorter for established TCP (a flow idle for hours re-checks policy when it wakes up).
pub(super) const CT_TCP_TIMEOUT_NS: u64 = 6 * 3600 * SECOND_NS;
pub(super) const CT_OTHER_TIMEOUT_NS: u64 = 120 * SECOND_NS;
pub(super) const CT_CLOSING_TIMEOUT_NS: u64 = 30 * SECOND_NS;

/// CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns().
pub(super) fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * SECOND_NS + u64::try_from(t.tv_nsec).unwrap_or(0)
}

fn local_ip_key(ip: IpAddr) -> LocalIpKey {
    let mut key = LocalIpKey::default();
    match ip {
        IpAddr::V4(v4) => {
            key.family = DP_FAMILY_IPV4;
            key.addr[..4].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            key.family = DP_FAMILY_IPV6;
            key.addr = v6.octets();
        }
    }
    key
}
