//! toFQDNs in the running agent: DNS answers from the DNS proxy (`ObserveFqdn`) are
//! recorded, compiled, published and programmed before the answer is released
//! (SEMANTICS 6.3); expired entries go on the 1 s tick unless connections still use them
//! (6.4); the cache survives restarts in a file; `FqdnCache` lists it.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;
use xds::proto;

use super::PolicyPipeline;
use crate::compiler::{Compiler, EndpointKey};
use crate::datapath::Datapath;
use crate::datapath::scanner::{EgressFlows, ScanJob};
use crate::fqdn::{FqdnConfig, Journal, Source};
use crate::source::SourceEvent;

/// How long past its expiry an entry is kept at least: with a minimum TTL of 0 a client
/// that connects right after the answer must never be dropped.
pub const DEFAULT_EXPIRY_GRACE: Duration = Duration::from_secs(2);

/// The cache file is written at most this often while it changes.
const SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// Entries one expiry pass withdraws at most: each costs a recompile share and two map
/// deletes, and DNS answers wait on the loop while a pass runs (a second of answers at
/// 1,000 names/s expiring together took 30-50 ms in one pass).
const EXPIRY_CHUNK: usize = 256;

/// toFQDNs settings of `node-agent run`.
#[derive(Debug, Clone)]
pub struct FqdnSettings {
    pub config: FqdnConfig,
    /// Where the cache is saved across restarts; `None` keeps it in memory only.
    pub state_file: Option<PathBuf>,
    pub expiry_grace: Duration,
}

impl Default for FqdnSettings {
    fn default() -> Self {
        Self {
            config: FqdnConfig::default(),
            state_file: None,
            expiry_grace: DEFAULT_EXPIRY_GRACE,
        }
    }
}

/// One DNS answer waiting for its IPs to be allowed.
#[derive(Debug)]
pub struct FqdnRequest {
    pub observation: proto::FqdnObservation,
    pub reply: oneshot::Sender<proto::FqdnObservationResult>,
}

/// A `FqdnCache` call waiting for the event loop.
#[derive(Debug)]
pub struct CacheRequest {
    pub request: proto::FqdnCacheRequest,
    pub reply: oneshot::Sender<Result<proto::FqdnCacheResponse, tonic::Status>>,
}

/// What the blocking event loop reads: the source's events and the RPCs that need the
/// compiler.
#[derive(Debug)]
pub enum LoopEvent {
    Source(SourceEvent),
    Observe(FqdnRequest),
    ListCache(CacheRequest),
    /// The conntrack scanner's answer to a FQDN expiry's request: the live egress flows.
    EgressFlows(EgressFlows),
    /// Save what must be saved and stop.
    Shutdown,
}

/// FQDN state of the pipeline that is not the compiler's.
#[derive(Debug)]
pub(super) struct FqdnRuntime {
    pub(super) settings: FqdnSettings,
    /// The cache changed since it was last saved.
    unsaved: bool,
    /// Answers since the last save, appended before each reply (see `fqdn::journal`).
    journal: Option<Journal>,
    last_save: Option<Instant>,
    last_observation: Option<Instant>,
    /// Identities changed since the hooks' name table was last rebuilt.
    pub(super) names_stale: bool,
    /// A scan of the live flows was asked of the conntrack scanner for expiry.
    pub(super) scan_pending: bool,
    /// The flows of the expiry in progress, while entries due remain for later passes.
    expiry_flows: Option<EgressFlows>,
    observations: u64,
    refused: u64,
}

impl FqdnRuntime {
    pub(super) fn new(settings: FqdnSettings) -> Self {
        Self {
            settings,
            unsaved: false,
            journal: None,
            last_save: None,
            last_observation: None,
            names_stale: false,
            scan_pending: false,
            expiry_flows: None,
            observations: 0,
            refused: 0,
        }
    }
}

fn refused(detail: String) -> proto::FqdnObservationResult {
    proto::FqdnObservationResult {
        allowed: false,
        detail,
    }
}

/// An observation checked against what the agent knows.
struct Valid {
    endpoint: EndpointKey,
    ips: Vec<IpAddr>,
}

fn validate(
    compiler: &Compiler,
    obs: &proto::FqdnObservation,
) -> Result<Valid, proto::FqdnObservationResult> {
    let Some(endpoint) = EndpointKey::parse(&obs.endpoint) else {
        return Err(refused(format!(
            "endpoint {:?} is not NAMESPACE/POD",
            obs.endpoint
        )));
    };
    if !compiler.pod(&endpoint).is_some_and(|p| p.local) {
        return Err(refused(format!(
            "{endpoint} is not a local endpoint of this node: nothing programmed"
        )));
    }
    if obs.name.trim_end_matches('.').is_empty() {
        return Err(refused("the observation names no DNS name".into()));
    }
    let mut ips = Vec::with_capacity(obs.ips.len());
    for text in &obs.ips {
        match text.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => return Err(refused(format!("{text:?} is not an IP address"))),
        }
    }
    Ok(Valid { endpoint, ips })
}

/// (endpoint IP, remote IP) of every zombie entry: flows the conntrack re-check spares.
pub(super) fn zombie_flows(compiler: &Compiler) -> BTreeSet<(IpAddr, IpAddr)> {
    compiler
        .fqdn_zombie_flows()
        .into_iter()
        .filter_map(|(ep, ip)| compiler.pod(&ep).and_then(|p| p.ip).map(|own| (own, ip)))
        .collect()
}

impl PolicyPipeline {
    /// Restores the cache a previous agent saved; call before the source is applied (and
    /// after the datapath, whose pinned ipcache keeps the restored IPs' numbers). A file
    /// that cannot be read is logged with its path and ignored.
    pub fn load_fqdn(&mut self) {
        let Some(path) = self.fqdn.settings.state_file.clone() else {
            return;
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Err(error) = std::fs::create_dir_all(dir)
        {
            tracing::warn!(dir = %dir.display(), %error, "cannot create the FQDN state folder; the cache will not be saved");
        }
        match self
            .compiler
            .fqdn_load(&path, Instant::now(), SystemTime::now())
        {
            Ok(outcome) if outcome.missing => {
                tracing::info!(path = %path.display(), "no saved FQDN cache")
            }
            Ok(outcome) => tracing::info!(
                path = %path.display(),
                restored = outcome.restored,
                skipped = outcome.skipped,
                "FQDN cache restored"
            ),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "saved FQDN cache ignored")
            }
        }
        match Journal::open(&path) {
            Ok(journal) => self.fqdn.journal = Some(journal),
            Err(error) => {
                tracing::warn!(%error, "no FQDN journal: answers since the last save are lost if the agent is killed")
            }
        }
    }

    /// Records a batch of DNS answers, recompiles, publishes, programs the datapath, and
    /// only then replies to each (SEMANTICS 6.3).
    pub fn observe_fqdn(&mut self, requests: Vec<FqdnRequest>) {
        let started = Instant::now();
        let wall_now = SystemTime::now();
        let min_ttl = self.compiler.fqdn_cache().config().min_ttl_secs;
        let mut journal_lines = Vec::new();
        let mut pending = Vec::with_capacity(requests.len());
        let mut selected = 0usize;
        for FqdnRequest { observation, reply } in requests {
            self.fqdn.observations += 1;
            match validate(&self.compiler, &observation) {
                Ok(valid) => {
                    let outcome = self.compiler.fqdn_observe(
                        &valid.endpoint,
                        &observation.name,
                        &valid.ips,
                        observation.ttl_seconds,
                        started,
                    );
                    self.fqdn.unsaved = true;
                    if self.fqdn.journal.is_some() {
                        Journal::record(
                            &mut journal_lines,
                            &valid.endpoint,
                            &observation.name,
                            &valid.ips,
                            observation.ttl_seconds.max(min_ttl),
                            wall_now,
                        );
                    }
                    selected += usize::from(outcome.selected);
                    pending.push((reply, observation, outcome.selected));
                }
                Err(result) => {
                    self.fqdn.refused += 1;
                    tracing::debug!(
                        endpoint = observation.endpoint,
                        name = observation.name,
                        detail = result.detail,
                        "FQDN observation refused"
                    );
                    let _ = reply.send(result);
                }
            }
        }
        if pending.is_empty() {
            self.publish_fqdn_metrics();
            return;
        }
        if let Some(journal) = self.fqdn.journal.as_mut()
            && let Err(error) = journal.flush(&journal_lines)
        {
            tracing::warn!(%error, "journaling FQDN answers failed; they are saved with the next cache write");
        }
        let changes = self.compiler.flush();
        let flushed_us = started.elapsed().as_micros() as u64;
        // Rebuilding the flow records' name table costs O(identities): the tick does it.
        self.fqdn.names_stale |= !changes.identities.is_empty();
        self.builder
            .publish(&self.compiler, &changes, &self.publish);
        let published_us = started.elapsed().as_micros() as u64;
        let programmed = self.program_fqdn_changes(&changes);
        self.fqdn.last_observation = Some(Instant::now());
        let elapsed_us = started.elapsed().as_micros() as u64;
        let detail = match &programmed {
            Ok(Some(r)) => format!(
                "programmed {} identities, {} policy entries in {elapsed_us} us",
                r.ipcache_upserts + r.ipcache_deletes,
                r.policy_upserts + r.policy_deletes
            ),
            Ok(None) if self.datapath.is_none() => {
                format!("published in {elapsed_us} us (no datapath on this node)")
            }
            Ok(None) => format!("programmed by a full reconcile in {elapsed_us} us"),
            Err(error) => format!("programming the datapath failed: {error}"),
        };
        let allowed = programmed.is_ok();
        tracing::debug!(
            observations = pending.len(),
            selected,
            recompiled = changes.recompiled.len(),
            identities = changes.identities.len(),
            flushed_us,
            published_us,
            elapsed_us,
            %detail,
            "FQDN answers programmed"
        );
        if let Err(error) = &programmed {
            tracing::error!(%error, "programming FQDN answers failed; retrying on the next refresh");
        }
        for (reply, observation, selected) in pending {
            let detail = if selected || !allowed {
                detail.clone()
            } else {
                format!(
                    "recorded; no toFQDNs selector of {} matches {}",
                    observation.endpoint, observation.name
                )
            };
            // The proxy may have given up waiting: nothing to do then.
            let _ = reply.send(proto::FqdnObservationResult { allowed, detail });
        }
        // Withdrawn entries (evictions) may cut flows: re-checked after the replies, which
        // never wait for a conntrack scan.
        self.recheck_after(&programmed);
        self.publish_fqdn_metrics();
    }

    /// Programs what an FQDN flush changed: incrementally, unless it needs the full
    /// reconcile. `Ok(None)`: no datapath, or the full reconcile ran.
    fn program_fqdn_changes(
        &mut self,
        changes: &crate::compiler::Changes,
    ) -> Result<Option<crate::datapath::IncrementalReport>, String> {
        if !self.ready && self.datapath.is_some() {
            // The maps keep a previous agent's state until the source is read.
            return Err("the agent has not read its policy source yet".into());
        }
        match self.datapath.as_mut() {
            None => Ok(None),
            Some(_) if Datapath::needs_reconcile(changes) => {
                self.reconcile_datapath();
                Ok(None)
            }
            Some(datapath) => datapath
                .program_changes(&self.compiler, changes)
                .map(Some)
                .map_err(|e| e.to_string()),
        }
    }

    /// After entries were withdrawn: established flows the policy now denies are cut,
    /// except the zombies' (SEMANTICS 6.4).
    fn recheck_after(
        &mut self,
        programmed: &Result<Option<crate::datapath::IncrementalReport>, String>,
    ) {
        if let Ok(Some(report)) = programmed
            && report.deleted()
        {
            let exempt = zombie_flows(&self.compiler);
            if let Some(datapath) = self.datapath.as_mut() {
                Self::sweep(datapath, true, &exempt);
            }
        }
    }

    /// The tick's FQDN expiry, when some entry is due: the live flows come from the
    /// conntrack scanner's thread (the expiry runs when they arrive, as
    /// `LoopEvent::EgressFlows`), or from a scan right here without one.
    pub(super) fn start_fqdn_expiry(&mut self, now: Instant) {
        if !self.fqdn_expiry_due(now) || self.fqdn.scan_pending || self.fqdn_expiry_in_progress() {
            return;
        }
        if let Some(scanner) = &self.scanner {
            if scanner.request(ScanJob::LiveEgressFlows) {
                self.fqdn.scan_pending = true;
                return;
            }
            tracing::warn!("the conntrack scanner is gone; scanning on the event loop");
            self.scanner = None;
        }
        let flows = match self.datapath.as_mut() {
            None => EgressFlows::new(),
            Some(datapath) => match datapath.expire_idle_and_collect_flows() {
                Ok(flows) => flows,
                Err(error) => {
                    tracing::warn!(%error, "conntrack scan failed; FQDN expiry waits");
                    return;
                }
            },
        };
        while self.expire_and_program(now, &flows) {}
    }

    /// The scanner's flows arrived: the event loop expires what is due, a chunk per pass.
    pub(super) fn finish_fqdn_expiry(&mut self, flows: EgressFlows) {
        self.fqdn.scan_pending = false;
        self.fqdn.expiry_flows = Some(flows);
    }

    /// Entries due remain for another pass: the event loop then runs
    /// [`PolicyPipeline::continue_fqdn_expiry`] after the events queued meanwhile.
    pub fn fqdn_expiry_in_progress(&self) -> bool {
        self.fqdn.expiry_flows.is_some()
    }

    /// The next pass of the expiry in progress, with the flows its scan found.
    pub fn continue_fqdn_expiry(&mut self) {
        let Some(flows) = self.fqdn.expiry_flows.take() else {
            return;
        };
        if self.expire_and_program(Instant::now(), &flows) {
            self.fqdn.expiry_flows = Some(flows);
        }
    }

    /// One expiry pass, recompiled, published and programmed incrementally. No re-check
    /// sweep follows: the IPs withdrawn had no live flow in `flows` (see
    /// `datapath::scanner::expire_idle_and_collect`). Returns whether entries due remain
    /// for another pass.
    pub(super) fn expire_and_program(&mut self, now: Instant, flows: &EgressFlows) -> bool {
        let (changed, more) = self.expire_fqdn(now, flows);
        if !changed {
            return more;
        }
        let changes = self.compiler.flush();
        self.fqdn.names_stale |= !changes.identities.is_empty();
        self.builder
            .publish(&self.compiler, &changes, &self.publish);
        match self.program_fqdn_changes(&changes) {
            Ok(Some(report)) => tracing::info!(
                ipcache_upserts = report.ipcache_upserts,
                ipcache_deletes = report.ipcache_deletes,
                policy_upserts = report.policy_upserts,
                policy_deletes = report.policy_deletes,
                elapsed_us = now.elapsed().as_micros() as u64,
                "expired FQDN entries withdrawn"
            ),
            Ok(None) => {}
            Err(error) => {
                tracing::error!(%error, "withdrawing expired FQDN entries failed; retrying on the next refresh")
            }
        }
        more
    }

    /// The threshold of this pass: entries expiring before it are processed. At most
    /// [`EXPIRY_CHUNK`] entries beyond the zombies (which stay first in expiry order);
    /// `true` when entries due at `threshold` are left for another pass.
    fn expiry_chunk(&self, threshold: Instant) -> (Instant, bool) {
        let cache = self.compiler.fqdn_cache();
        let skip = self.compiler.fqdn_zombie_count();
        match (
            cache.expiry_at_rank(skip),
            cache.expiry_at_rank(skip + EXPIRY_CHUNK),
        ) {
            // Entries that all expire at the same instant cannot be split: processed
            // together.
            (Some(first), Some(limit)) if first < limit && limit < threshold => (limit, true),
            _ => (threshold, false),
        }
    }

    /// Whether some FQDN entry expired more than the grace ago.
    fn fqdn_expiry_due(&self, now: Instant) -> bool {
        now.checked_sub(self.fqdn.settings.expiry_grace)
            .is_some_and(|threshold| {
                self.compiler
                    .fqdn_cache()
                    .next_expiry()
                    .is_some_and(|next| next < threshold)
            })
    }

    /// Whether a DNS answer was handled within `window`: the tick then skips the full
    /// reconcile (its `ip` calls take milliseconds, which answers would wait behind).
    pub(super) fn answers_within(&self, window: Duration) -> bool {
        self.fqdn
            .last_observation
            .is_some_and(|at| at.elapsed() < window)
    }

    /// Expires entries due at `now` (past the grace), a chunk at a time; an IP a flow of
    /// `flows` uses stays as a zombie. Returns whether anything expired or turned zombie
    /// (the caller then recompiles and programs), and whether entries due remain.
    pub fn expire_fqdn(&mut self, now: Instant, flows: &EgressFlows) -> (bool, bool) {
        let Some(threshold) = now.checked_sub(self.fqdn.settings.expiry_grace) else {
            return (false, false);
        };
        if !self.fqdn_expiry_due(now) {
            return (false, false);
        }
        let (threshold, more) = self.expiry_chunk(threshold);
        let own_ips: std::collections::BTreeMap<EndpointKey, IpAddr> = self
            .compiler
            .fqdn_cache()
            .expired_before(threshold)
            .filter_map(|(ep, _, _)| {
                self.compiler
                    .pod(ep)
                    .and_then(|p| p.ip)
                    .map(|ip| (ep.clone(), ip))
            })
            .collect();
        let expired = self.compiler.fqdn_expire(threshold, |ep, ip| {
            own_ips
                .get(ep)
                .is_some_and(|own| flows.contains(&(*own, ip)))
        });
        if expired.removed + expired.new_zombies == 0 {
            return (false, more);
        }
        tracing::info!(
            removed = expired.removed,
            in_use = expired.new_zombies,
            "FQDN entries expired"
        );
        self.fqdn.unsaved |= expired.removed > 0;
        (true, more)
    }

    /// Writes the cache file if it changed and the last write is at least a second old
    /// (or `force`, at shutdown).
    pub fn save_fqdn(&mut self, force: bool) {
        let Some(path) = self.fqdn.settings.state_file.clone() else {
            return;
        };
        let now = Instant::now();
        let recent = self
            .fqdn
            .last_save
            .is_some_and(|at| now.duration_since(at) < SAVE_INTERVAL);
        if !self.fqdn.unsaved || (recent && !force) {
            return;
        }
        self.fqdn.last_save = Some(now);
        self.fqdn.unsaved = false;
        match self
            .compiler
            .fqdn_cache()
            .save(&path, now, SystemTime::now())
        {
            Ok(entries) => {
                tracing::debug!(path = %path.display(), entries, "FQDN cache saved");
                if let Some(journal) = self.fqdn.journal.as_mut()
                    && let Err(error) = journal.clear()
                {
                    tracing::warn!(%error, "emptying the FQDN journal failed");
                }
            }
            Err(error) => tracing::warn!(%error, "saving the FQDN cache failed"),
        }
    }

    /// The `FqdnCache` answer.
    pub fn fqdn_cache_list(
        &self,
        request: &proto::FqdnCacheRequest,
    ) -> Result<proto::FqdnCacheResponse, tonic::Status> {
        let endpoint = if request.endpoint.is_empty() {
            None
        } else {
            Some(EndpointKey::parse(&request.endpoint).ok_or_else(|| {
                tonic::Status::invalid_argument(format!(
                    "endpoint {:?} is not NAMESPACE/POD",
                    request.endpoint
                ))
            })?)
        };
        let cache = self.compiler.fqdn_cache();
        let entries = cache
            .list(endpoint.as_ref(), Instant::now())
            .into_iter()
            .map(|e| {
                let in_use = EndpointKey::parse(&e.endpoint)
                    .is_some_and(|ep| self.compiler.fqdn_is_zombie(&ep, &e.name, e.ip));
                proto::FqdnCacheEntry {
                    endpoint: e.endpoint,
                    name: e.name,
                    ip: e.ip.to_string(),
                    expires_in_seconds: e.expires_in_secs,
                    expired: e.expired,
                    in_use,
                    source: match e.source {
                        Source::Lookup => "lookup",
                        Source::Restored => "restored",
                    }
                    .into(),
                }
            })
            .collect();
        Ok(proto::FqdnCacheResponse {
            entries,
            metrics: Some(self.fqdn_metrics()),
        })
    }

    fn fqdn_metrics(&self) -> proto::FqdnMetrics {
        let m = self.compiler.fqdn_cache().metrics();
        proto::FqdnMetrics {
            entries: m.entries as u64,
            evictions_per_name_limit: m.evictions_per_name_limit,
            evictions_global_limit: m.evictions_global_limit,
            expirations: m.expirations,
            in_use: self.compiler.fqdn_zombie_count() as u64,
            observations: self.fqdn.observations,
            refused: self.fqdn.refused,
            identities: self.compiler.fqdn_identity_count() as u64,
        }
    }

    /// Hands the counters to the hooks, where `status` reads them without the loop.
    pub(super) fn publish_fqdn_metrics(&self) {
        if let Some(hooks) = &self.hooks {
            hooks.set_fqdn_metrics(self.fqdn_metrics());
        }
    }
}

#[cfg(test)]
#[path = "fqdn_tests.rs"]
mod tests;
