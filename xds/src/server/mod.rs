//! The policy-stream server the agent runs.
//!
//! The agent publishes [`Snapshot`]s through a `tokio::sync::watch`; every connected client
//! has its own task (`session.rs`) that compares the current snapshot with what that client
//! has acknowledged and sends the difference, one response per type at a time
//! (SEMANTICS 9). What each client holds is visible through [`PolicyServer::status`].

mod changes;
mod observe;
mod registry;
mod service;
mod session;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{broadcast, watch};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};

use crate::XdsError;
use crate::proto;
use crate::proto::policy_stream_server::PolicyStreamServer;
pub use changes::ChangeLog;
pub use observe::flow_matches;
use registry::Registry;
pub use service::PolicyService;

/// A receiver of the agent's live events (see [`AgentHooks::events`]).
pub type EventReceiver = broadcast::Receiver<Arc<proto::MonitorEvent>>;

/// Held flow records, oldest first, and (when following) the events after them.
pub type FlowHistory = (Vec<proto::FlowRecord>, Option<EventReceiver>);

/// What the agent publishes: per type, the current version and resources. Replaced as a
/// whole (`Arc`) through a `tokio::sync::watch` on every change.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The agent has finished loading its sources. Until then nothing is sent to anyone
    /// (SEMANTICS 9.2: an empty or partial snapshot would make proxies drop working policy).
    pub ready: bool,
    /// type_url -> that type's state. A type a client subscribes to that is missing here
    /// (while ready) is unknown: the server logs it and answers nothing for it.
    pub types: BTreeMap<String, TypeSnapshot>,
}

/// One resource type of a [`Snapshot`].
#[derive(Debug, Clone, Default)]
pub struct TypeSnapshot {
    /// Moves up whenever anything of this type changes. Versions must never go back, also
    /// not across agent restarts (a reconnecting client states its version and resources;
    /// a reused number with other content would still be diffed correctly, but `requires`
    /// trusts version numbers).
    pub version: u64,
    /// name -> resource; `Resource.version` is the type version at which that resource
    /// last changed (a u64 as a string). The server diffs clients by these.
    pub resources: BTreeMap<String, Arc<proto::Resource>>,
    /// Responses of this type may only go to a client that has ACKed at least this version
    /// of that other type (the identity map reaches a client before the policies that
    /// refer to new identities). Applies only to clients that subscribe to that other type.
    pub requires: Option<(String, u64)>,
    /// What changed at which version, if the writer keeps a log (through
    /// [`TypeSnapshot::upsert`] and [`TypeSnapshot::remove`]): clients are then sent the
    /// changes since their ACKed version without diffing every resource.
    pub changes: Option<ChangeLog>,
}

/// What the server needs from the agent besides snapshots.
#[tonic::async_trait]
pub trait AgentHooks: Send + Sync + 'static {
    /// Flow records from a client (its `client-id` metadata, or the peer if none). Must not
    /// block: the agent buffers with a bound. Returns how many of them it dropped.
    fn flows(&self, client: &str, records: Vec<proto::FlowRecord>) -> u64;

    /// A DNS answer seen by the DNS proxy; returns once the datapath allows the IPs (or
    /// says why not).
    async fn observe_fqdn(
        &self,
        obs: proto::FqdnObservation,
    ) -> Result<proto::FqdnObservationResult, tonic::Status>;

    /// The FQDN cache (`FqdnCache`), optionally of one endpoint ("NAMESPACE/POD").
    /// The default answers UNIMPLEMENTED: this agent keeps no FQDN cache.
    async fn fqdn_cache(
        &self,
        request: proto::FqdnCacheRequest,
    ) -> Result<proto::FqdnCacheResponse, tonic::Status> {
        let _ = request;
        Err(tonic::Status::unimplemented(
            "this agent keeps no FQDN cache",
        ))
    }

    /// The FQDN cache's counters for `status`; `None` if there is no cache. Must be cheap.
    fn fqdn_metrics(&self) -> Option<proto::FqdnMetrics> {
        None
    }

    /// Flow records received so far and how many were dropped, for `status`.
    fn flow_counts(&self) -> (u64, u64) {
        (0, 0)
    }

    /// Live events for `Monitor` (and `Observe` with `follow`): datapath drops and policy
    /// verdicts, L7 records, published as they arrive. A receiver that falls behind skips
    /// what it missed and is told how much (the publisher never waits for it). `None`: this
    /// agent publishes no events (the RPCs answer UNIMPLEMENTED).
    fn events(&self) -> Option<EventReceiver> {
        None
    }

    /// For `Observe`: the held flow records that pass `keep`, the newest `last` of them
    /// (all if `None`), oldest first; with `follow`, also a receiver of the events published
    /// after them, taken together with the records so that nothing is missed or repeated.
    /// Every event with a `flow` published there is also held. `None`: this agent holds no
    /// records (UNIMPLEMENTED).
    fn flow_history(
        &self,
        keep: &(dyn Fn(&proto::FlowRecord) -> bool + Sync),
        last: Option<usize>,
        follow: bool,
    ) -> Option<FlowHistory> {
        let _ = (keep, last, follow);
        None
    }
}

/// HTTP/2 pings on idle connections, and how long an answer may take.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The gRPC metadata key that carries the client id on `ReportFlows`.
pub const CLIENT_ID_METADATA: &str = "x-sidecarless-client-id";

/// The agent's policy-stream server. Cheap to clone: all clones share one state.
#[derive(Clone)]
pub struct PolicyServer {
    shared: Arc<Shared>,
}

/// State shared by every stream and by [`PolicyServer::status`].
pub(crate) struct Shared {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    hooks: Arc<dyn AgentHooks>,
    registry: Registry,
    /// Source of nonces: one counter for every response to anyone, so a nonce names exactly
    /// one response.
    nonces: AtomicU64,
    /// Source of stream ids (the registry key; a client id may appear twice while an old
    /// stream has not been noticed dead yet).
    streams: AtomicU64,
}

impl fmt::Debug for PolicyServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyServer")
            .field("ready", &self.shared.snapshots.borrow().ready)
            .field("clients", &self.shared.registry.len())
            .finish_non_exhaustive()
    }
}

impl PolicyServer {
    /// A server that publishes what `snapshots` holds and hands flows and FQDN observations
    /// to `hooks`.
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, hooks: Arc<dyn AgentHooks>) -> Self {
        PolicyServer {
            shared: Arc::new(Shared {
                snapshots,
                hooks,
                registry: Registry::default(),
                nonces: AtomicU64::new(1),
                streams: AtomicU64::new(1),
            }),
        }
    }

    /// The tonic service, to mount on a router of the caller's own. Its streams end only
    /// when their clients go; [`PolicyServer::serve_unix`] and friends also end them on
    /// shutdown.
    pub fn service(&self) -> PolicyStreamServer<PolicyService> {
        PolicyService::new(self.shared.clone(), None).into_server()
    }

    /// The ready flag, the current version per type, and per connected client what it
    /// acknowledged, what is in flight and its last NACK (SEMANTICS 9.3).
    pub fn status(&self) -> proto::StatusResponse {
        let snapshot = self.shared.snapshots.borrow().clone();
        let (flows_received, flows_dropped) = self.shared.hooks.flow_counts();
        proto::StatusResponse {
            ready: snapshot.ready,
            versions: snapshot
                .types
                .iter()
                .map(|(type_url, t)| (type_url.clone(), t.version.to_string()))
                .collect(),
            clients: self.shared.registry.clients(),
            flows_received,
            flows_dropped,
            fqdn: self.shared.hooks.fqdn_metrics(),
        }
    }

    /// Ticks whenever a client connects, disconnects, is sent something, ACKs or NACKs.
    /// Pair with [`PolicyServer::status`], or use [`PolicyServer::wait_status`].
    pub fn status_changes(&self) -> watch::Receiver<()> {
        self.shared.registry.changes()
    }

    /// Waits until `done` holds for the status (checked now and after every change), and
    /// returns that status. E.g. "every l7-proxy has ACKed version 7 of the policies".
    /// Bound it with `tokio::time::timeout`.
    pub async fn wait_status(
        &self,
        mut done: impl FnMut(&proto::StatusResponse) -> bool,
    ) -> proto::StatusResponse {
        let mut changes = self.status_changes();
        let mut snapshots = self.shared.snapshots.clone();
        loop {
            changes.mark_unchanged();
            snapshots.mark_unchanged();
            let status = self.status();
            if done(&status) {
                return status;
            }
            tokio::select! {
                _ = changes.changed() => {}
                // The ready flag and versions come from the snapshot. If the agent dropped
                // its sender, the snapshot never changes again: only client changes count.
                Ok(()) = snapshots.changed() => {}
            }
        }
    }

    /// Serves on a unix socket at `path` until `shutdown` resolves: creates the parent
    /// folder, removes a stale socket file, binds. On shutdown every open stream ends with
    /// `UNAVAILABLE` so that clients reconnect to the next server.
    pub async fn serve_unix(
        self,
        path: &Path,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), XdsError> {
        let listener = bind_unix(path)?;
        self.serve_unix_listener(listener, shutdown).await
    }

    /// Serves on an already bound unix listener (see [`bind_unix`]).
    pub async fn serve_unix_listener(
        self,
        listener: UnixListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), XdsError> {
        let name = match listener.local_addr() {
            Ok(addr) => match addr.as_pathname() {
                Some(path) => format!("unix:{}", path.display()),
                None => "an unnamed unix socket".to_string(),
            },
            Err(_) => "a unix socket".to_string(),
        };
        let incoming = UnixListenerStream::new(listener);
        self.serve_incoming(incoming, name, shutdown).await
    }

    /// Serves on TCP at `addr` until `shutdown` resolves.
    pub async fn serve_tcp(
        self,
        addr: SocketAddr,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), XdsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| XdsError::BindTcp { addr, source })?;
        self.serve_tcp_listener(listener, shutdown).await
    }

    /// Serves on an already bound TCP listener (e.g. bound to port 0 by a test).
    pub async fn serve_tcp_listener(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), XdsError> {
        let name = match listener.local_addr() {
            Ok(addr) => addr.to_string(),
            Err(_) => "a TCP socket".to_string(),
        };
        let incoming = TcpListenerStream::new(listener);
        self.serve_incoming(incoming, name, shutdown).await
    }

    async fn serve_incoming<I, IO, IE>(
        self,
        incoming: I,
        listener: String,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), XdsError>
    where
        I: tokio_stream::Stream<Item = Result<IO, IE>>,
        IO: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + tonic::transport::server::Connected
            + Unpin
            + Send
            + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Streams are long-lived: the transport's graceful shutdown would wait for them
        // forever, so the shutdown signal also tells every stream of this listener to end.
        let (stop_streams, streams_stop) = watch::channel(false);
        let service = PolicyService::new(self.shared.clone(), Some(streams_stop)).into_server();
        let signal = async move {
            shutdown.await;
            tracing::info!("policy server shutting down");
            stop_streams.send_replace(true);
        };
        tracing::info!(%listener, "policy server listening");
        tonic::transport::Server::builder()
            // A client that vanished without closing (only possible over TCP) is noticed
            // and leaves the status instead of staying "connected" forever.
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, signal)
            .await
            .map_err(|source| XdsError::Serve { listener, source })
    }
}

/// Binds a unix socket at `path`: creates the parent folder and removes a stale socket
/// file first. Lets a caller know the socket exists before it starts serving.
pub fn bind_unix(path: &Path) -> Result<UnixListener, XdsError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| XdsError::CreateSocketDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(path = %path.display(), "removed a stale policy socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(XdsError::RemoveStaleSocket {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    UnixListener::bind(path).map_err(|source| XdsError::BindUnix {
        path: path.to_path_buf(),
        source,
    })
}
