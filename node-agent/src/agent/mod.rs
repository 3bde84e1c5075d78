//! The running agent (`node-agent run`): a policy source feeds the compiler, whose output
//! is published as a snapshot that the policy stream serves to the proxies.
//!
//! The source is read completely before anything is served (SEMANTICS 9.2); after that,
//! each batch of source events is applied, recompiled incrementally and published as one
//! new snapshot.

pub mod events;
mod fqdn;
mod hooks;
mod ring;
pub mod snapshot;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use tokio::sync::watch;
use xds::server::{PolicyServer, Snapshot};

pub use fqdn::{CacheRequest, DEFAULT_EXPIRY_GRACE, FqdnRequest, FqdnSettings, LoopEvent};
pub use hooks::Hooks;
use snapshot::SnapshotBuilder;

use crate::compiler::{Compiler, EndpointScope};
use crate::datapath::scanner::{ConntrackScanner, ScanJob};
use crate::datapath::{Datapath, DatapathConfig, DatapathError};
use crate::source::{DirectorySource, SourceError, SourceEvent};

/// How often the datapath is refreshed when no policy event arrives.
const DATAPATH_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// How often the datapath is fully refreshed at least while DNS answers keep coming.
const BUSY_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

/// Idle conntrack entries are expired every this many refreshes.
const CONNTRACK_EXPIRY_TICKS: u64 = 30;

/// Where the agent serves the policy stream unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/sidecarless/agent.sock";

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub source_dir: PathBuf,
    pub node_name: String,
    pub socket: PathBuf,
    pub tcp: Option<SocketAddr>,
    /// How many flow records the agent keeps.
    pub flow_buffer: usize,
    /// The kernel datapath; `None` runs the policy stream only.
    pub datapath: Option<DatapathConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("policy source: {0}")]
    Source(#[from] SourceError),
    #[error("policy stream: {0}")]
    Stream(#[from] xds::XdsError),
    #[error("the source event loop stopped unexpectedly")]
    EventLoop,
    #[error("datapath: {0}")]
    Datapath(DatapathError),
}

/// The part of the agent that owns the compiler: applies source events and publishes
/// snapshots.
#[derive(Debug)]
pub struct PolicyPipeline {
    compiler: Compiler,
    builder: SnapshotBuilder,
    publish: watch::Sender<Arc<Snapshot>>,
    /// Told the names of pods and identities after every apply (for flow records).
    hooks: Option<Arc<Hooks>>,
    /// Programmed after every apply once the source is completely read.
    datapath: Option<Datapath>,
    ready: bool,
    fqdn: fqdn::FqdnRuntime,
    /// When the last full reconcile ran.
    last_reconcile: Option<Instant>,
    /// Scans conntrack off the event loop (FQDN expiry, idle entries); `None` without a
    /// datapath, or before the loop starts it.
    scanner: Option<ConntrackScanner>,
}

impl PolicyPipeline {
    pub fn new(node_name: &str) -> (Self, watch::Receiver<Arc<Snapshot>>) {
        Self::with_fqdn(node_name, FqdnSettings::default())
    }

    /// A pipeline whose FQDN cache has these limits, grace and file.
    pub fn with_fqdn(
        node_name: &str,
        settings: FqdnSettings,
    ) -> (Self, watch::Receiver<Arc<Snapshot>>) {
        let (publish, snapshots) = watch::channel(Arc::new(Snapshot::default()));
        let mut compiler = Compiler::new(EndpointScope::Node(node_name.to_owned()));
        compiler.set_fqdn_config(settings.config);
        let pipeline = Self {
            compiler,
            builder: SnapshotBuilder::new(),
            publish,
            hooks: None,
            datapath: None,
            ready: false,
            fqdn: fqdn::FqdnRuntime::new(settings),
            last_reconcile: None,
            scanner: None,
        };
        (pipeline, snapshots)
    }

    /// Applies one batch of events and publishes the result if anything changed.
    pub fn apply(&mut self, events: Vec<SourceEvent>) {
        let started = Instant::now();
        let mut synced = false;
        let count = events.len();
        for event in events {
            match event {
                SourceEvent::Invalid(error) => {
                    tracing::warn!(%error, "invalid object skipped; its previous version stays in force")
                }
                SourceEvent::Synced => synced = true,
                event => self.compiler.apply(event),
            }
        }
        self.flush_publish_reconcile(started, count, synced);
    }

    /// Handles one wake-up's worth of loop events: source events first (so an answer for
    /// a pod that just appeared finds it), then every queued DNS answer in one pass, then
    /// cache listings. Returns false on `Shutdown`.
    pub fn handle(&mut self, events: Vec<LoopEvent>) -> bool {
        let mut sources = Vec::new();
        let mut observations = Vec::new();
        let mut listings = Vec::new();
        let mut flows = None;
        let mut running = true;
        for event in events {
            match event {
                LoopEvent::Source(e) => sources.push(e),
                LoopEvent::Observe(r) => observations.push(r),
                LoopEvent::ListCache(r) => listings.push(r),
                LoopEvent::EgressFlows(f) => flows = Some(f),
                LoopEvent::Shutdown => running = false,
            }
        }
        if !sources.is_empty() {
            self.apply(sources);
        }
        if !observations.is_empty() {
            self.observe_fqdn(observations);
        }
        if let Some(flows) = flows {
            self.finish_fqdn_expiry(flows);
        }
        for CacheRequest { request, reply } in listings {
            let _ = reply.send(self.fqdn_cache_list(&request));
        }
        if !running {
            self.save_fqdn(true);
        }
        running
    }

    /// Recompiles what the compiler recorded, publishes and reconciles the datapath if
    /// anything changed.
    fn flush_publish_reconcile(&mut self, started: Instant, count: usize, synced: bool) {
        let changes = self.compiler.flush();
        if let Some(hooks) = &self.hooks {
            hooks.update_names(&self.compiler);
            self.fqdn.names_stale = false;
        }
        if synced {
            self.builder.set_ready();
        }
        let changed = self
            .builder
            .publish(&self.compiler, &changes, &self.publish);
        if changed || synced {
            let snapshot = self.publish.borrow().clone();
            tracing::info!(
                events = count,
                recompiled = changes.recompiled.len(),
                removed = changes.removed.len(),
                versions = ?snapshot.types.iter().map(|(t, s)| (short_type(t), s.version)).collect::<Vec<_>>(),
                elapsed_us = started.elapsed().as_micros() as u64,
                "policy published"
            );
        }
        self.ready |= synced;
        if changed || synced {
            self.reconcile_datapath();
        }
    }

    /// Brings the datapath to the compiled state. Never before the source has been read
    /// completely: until then the maps keep what they hold (a previous agent's state), so
    /// a partial view never replaces a complete one. A failure is logged and retried on
    /// the next change or refresh; the maps keep their last good state meanwhile.
    pub fn reconcile_datapath(&mut self) {
        if !self.ready {
            return;
        }
        let exempt = fqdn::zombie_flows(&self.compiler);
        let Some(datapath) = self.datapath.as_mut() else {
            return;
        };
        let started = Instant::now();
        self.last_reconcile = Some(started);
        match datapath.reconcile(&self.compiler) {
            Ok(report) if report.is_empty() => {}
            Ok(report) => {
                tracing::info!(
                    policy_upserts = report.policy_upserts,
                    policy_deletes = report.policy_deletes,
                    ipcache_upserts = report.ipcache_upserts,
                    ipcache_deletes = report.ipcache_deletes,
                    attached = ?report.attached,
                    detached = ?report.detached,
                    without_device = ?report.without_device,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "datapath programmed"
                );
                if report.policy_changed() {
                    Self::sweep(datapath, true, &exempt);
                }
            }
            Err(error) => {
                tracing::error!(%error, "programming the datapath failed; retrying on the next change")
            }
        }
    }

    /// Expires idle conntrack entries (see `Datapath::sweep_conntrack`); called now and
    /// then by the event loop.
    pub fn expire_conntrack(&mut self) {
        if let Some(scanner) = &self.scanner
            && scanner.request(ScanJob::ExpireIdle)
        {
            return;
        }
        if let Some(datapath) = self.datapath.as_mut() {
            Self::sweep(datapath, false, &BTreeSet::new());
        }
    }

    /// Starts the conntrack scanner, whose results come back through `loop_tx`. Without
    /// it (no datapath, or it cannot start) the scans run on the event loop.
    pub fn start_conntrack_scanner(&mut self, loop_tx: mpsc::Sender<LoopEvent>) {
        let Some(datapath) = &self.datapath else {
            return;
        };
        let deliver = Box::new(move |flows| loop_tx.send(LoopEvent::EgressFlows(flows)).is_ok());
        match datapath.conntrack_scanner(deliver) {
            Ok(scanner) => self.scanner = Some(scanner),
            Err(error) => {
                tracing::warn!(%error, "conntrack scans will run on the event loop")
            }
        }
    }

    /// The event loop's periodic work: FQDN expiry (recompiled and published when it
    /// changed something), the datapath refresh, saving the FQDN cache.
    pub fn tick(&mut self) {
        let now = Instant::now();
        self.start_fqdn_expiry(now);
        // Under a steady stream of DNS answers the full reconcile runs less often, so
        // that answers rarely wait behind it; new devices are still found within
        // `BUSY_REFRESH`.
        let busy = self.answers_within(DATAPATH_REFRESH);
        if !busy
            || self
                .last_reconcile
                .is_none_or(|at| at.elapsed() >= BUSY_REFRESH)
        {
            self.reconcile_datapath();
        }
        if std::mem::take(&mut self.fqdn.names_stale)
            && let Some(hooks) = &self.hooks
        {
            hooks.update_names(&self.compiler);
        }
        self.save_fqdn(false);
        self.publish_fqdn_metrics();
    }

    fn sweep(datapath: &mut Datapath, recheck: bool, exempt: &BTreeSet<(IpAddr, IpAddr)>) {
        match datapath.sweep_conntrack(recheck, exempt) {
            Ok(report) if report.expired + report.denied > 0 => tracing::info!(
                scanned = report.scanned,
                expired = report.expired,
                denied = report.denied,
                "conntrack entries removed"
            ),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "conntrack sweep failed"),
        }
    }

    /// Hands the datapath to the pipeline. The identities its pinned maps still use become
    /// the compiler's hints, so a restarted agent numbers the same cluster the same way.
    pub fn set_datapath(&mut self, datapath: Datapath) {
        self.compiler
            .set_identity_hints(datapath.adopted_identities());
        self.datapath = Some(datapath);
    }

    pub fn compiler(&self) -> &Compiler {
        &self.compiler
    }

    /// Keeps `hooks`' name table (pods, identity labels) current from now on.
    pub fn set_hooks(&mut self, hooks: Arc<Hooks>) {
        self.hooks = Some(hooks);
    }
}

fn short_type(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

/// Runs the agent until `shutdown` resolves, with the default FQDN settings and no FQDN
/// state file.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    run_with_fqdn(config, FqdnSettings::default(), shutdown).await
}

/// Runs the agent until `shutdown` resolves.
pub async fn run_with_fqdn(
    config: AgentConfig,
    fqdn: FqdnSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let (mut pipeline, snapshots) = PolicyPipeline::with_fqdn(&config.node_name, fqdn);
    let hooks = Arc::new(Hooks::new(config.flow_buffer));
    pipeline.set_hooks(hooks.clone());
    let hooks_for_events = hooks.clone();
    let server = PolicyServer::new(snapshots, hooks);

    // Serve first (nothing is sent until the snapshot is ready), so that proxies can
    // connect while a large directory loads.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut servers = tokio::task::JoinSet::new();
    {
        let server = server.clone();
        let socket = config.socket.clone();
        let stop = stopped(stop_rx.clone());
        servers.spawn(async move { server.serve_unix(&socket, stop).await });
    }
    if let Some(addr) = config.tcp {
        let server = server.clone();
        let stop = stopped(stop_rx.clone());
        servers.spawn(async move { server.serve_tcp(addr, stop).await });
    }
    tracing::info!(socket = %config.socket.display(), tcp = ?config.tcp, "serving the policy stream");

    let mut source = DirectorySource::new(&config.source_dir);
    let dir = config.source_dir.clone();
    let datapath_config = config.datapath.clone();
    let ring_hooks = hooks_for_events.clone();
    // Loading and compiling are CPU work: keep them off the async workers.
    let (mut pipeline, source) = tokio::task::spawn_blocking(move || {
        if let Some(datapath_config) = datapath_config {
            let mut datapath = Datapath::start(datapath_config).map_err(AgentError::Datapath)?;
            if let Some(ring) = datapath.take_events() {
                ring::spawn_reader(ring, ring_hooks);
            }
            pipeline.set_datapath(datapath);
        }
        // After the datapath (its pinned ipcache hints the restored IPs' numbers), before
        // the source (whose toFQDNs selectors give them identities).
        pipeline.load_fqdn();
        let events = source.load()?;
        tracing::info!(dir = %dir.display(), objects = events.len(), "source loaded");
        pipeline.apply(events);
        pipeline.publish_fqdn_metrics();
        Ok::<_, AgentError>((pipeline, source))
    })
    .await
    .map_err(|_| AgentError::EventLoop)??;

    let (loop_tx, loop_rx) = mpsc::channel::<LoopEvent>();
    let (events_tx, events_rx) = mpsc::channel::<SourceEvent>();
    let watch_guard = source.watch(events_tx)?;
    // The watcher speaks `SourceEvent`s; this thread forwards them into the loop's one
    // queue and ends with the watch.
    let forward_tx = loop_tx.clone();
    std::thread::Builder::new()
        .name("source-forward".into())
        .spawn(move || {
            for event in events_rx {
                if forward_tx.send(LoopEvent::Source(event)).is_err() {
                    break;
                }
            }
        })
        .map_err(|_| AgentError::EventLoop)?;
    hooks_for_events.connect_loop(loop_tx.clone());
    pipeline.start_conntrack_scanner(loop_tx.clone());
    let event_loop = tokio::task::spawn_blocking(move || {
        // Each wake-up drains everything queued, so a burst of edits is one recompile and
        // a burst of DNS answers one programming pass. The tick runs every second even
        // under a steady stream of events: the datapath refresh (a pod's device can
        // appear after the pod object), FQDN expiry, saving the FQDN cache.
        let mut ticks = 0u64;
        let mut next_tick = Instant::now() + DATAPATH_REFRESH;
        loop {
            // An expiry in progress goes on as soon as the queued events are handled.
            let wait = if pipeline.fqdn_expiry_in_progress() {
                std::time::Duration::ZERO
            } else {
                next_tick.saturating_duration_since(Instant::now())
            };
            match loop_rx.recv_timeout(wait) {
                Ok(first) => {
                    let mut batch = vec![first];
                    batch.extend(loop_rx.try_iter());
                    if !pipeline.handle(batch) {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            pipeline.continue_fqdn_expiry();
            if Instant::now() >= next_tick {
                pipeline.tick();
                ticks += 1;
                if ticks.is_multiple_of(CONNTRACK_EXPIRY_TICKS) {
                    pipeline.expire_conntrack();
                }
                next_tick = Instant::now() + DATAPATH_REFRESH;
            }
        }
        pipeline.save_fqdn(true);
    });

    tokio::select! {
        () = shutdown => tracing::info!("shutting down"),
        Some(result) = servers.join_next() => {
            if let Ok(Err(e)) = result {
                return Err(e.into());
            }
        }
    }
    let _ = stop_tx.send(true);
    drop(watch_guard);
    while servers.join_next().await.is_some() {}
    hooks_for_events.disconnect_loop();
    let _ = loop_tx.send(LoopEvent::Shutdown);
    drop(loop_tx);
    let _ = event_loop.await;
    Ok(())
}
