//! The policy-stream client the proxies run.
//!
//! A proxy registers one [`TypeHandler`] per resource type with a [`ClientBuilder`] and gets
//! a `watch` of its built state per type. The client keeps one stream to the agent for all
//! types, applies each response all or nothing (the handler builds the new state from the
//! complete resource set, or updates the previous state by a delta's changes; any rejected
//! resource NACKs the whole response and the previous state stays in force), and
//! reconnects with backoff. While disconnected the last good
//! state stays published: the proxy keeps enforcing it.

mod agent;
mod connect;
mod flows;
mod stream;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::proto;
pub use agent::{AgentClient, fetch_status};
pub use connect::Backoff;
pub use flows::FlowReporter;
use stream::Slot as _;

/// Where the agent serves the policy stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket path (the default deployment).
    Unix(PathBuf),
    /// `http://host:port`.
    Tcp(String),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Tcp(url) => f.write_str(url),
        }
    }
}

/// Turns the resources of one type into the state a proxy enforces.
pub trait TypeHandler: Send + Sync + 'static {
    type State: Send + Sync + 'static;

    fn type_url(&self) -> &'static str;

    /// Builds the state from the COMPLETE resource set after applying a response (all or
    /// nothing). `Err` lists (resource name, reason) pairs: the response is NACKed and the
    /// previous state stays in force.
    fn build(
        &self,
        resources: &BTreeMap<String, Arc<proto::Resource>>,
    ) -> Result<Self::State, Vec<(String, String)>>;

    /// Builds the state after a delta response from the state before it, for types whose
    /// resource sets are large and whose deltas are small (rebuilding tens of thousands of
    /// resources per one-resource delta is what this avoids). `previous` was built from the
    /// resources before the response, `resources` is the complete set after it, and
    /// `changes` names every resource the response upserted or removed, with what it held
    /// before and after. The result must be exactly what [`TypeHandler::build`] returns on
    /// `resources` (the same state, or the same errors). `None`, the default: not
    /// supported, the client calls `build`.
    fn update(
        &self,
        _previous: &Self::State,
        _resources: &BTreeMap<String, Arc<proto::Resource>>,
        _changes: &[ResourceChange<'_>],
    ) -> Option<Built<Self::State>> {
        None
    }
}

/// What [`TypeHandler::build`] and [`TypeHandler::update`] return: the state, or the
/// (resource name, reason) pairs that make the response a NACK.
pub type Built<S> = Result<S, Vec<(String, String)>>;

/// One resource a delta response upserted or removed (see [`TypeHandler::update`]).
#[derive(Debug, Clone, Copy)]
pub struct ResourceChange<'a> {
    pub name: &'a str,
    /// What the previous state was built from under this name (`None`: a new name).
    pub before: Option<&'a proto::Resource>,
    /// What the new state must hold under this name (`None`: removed).
    pub after: Option<&'a proto::Resource>,
}

/// A built state and the type version it was built from.
#[derive(Debug)]
pub struct Versioned<S> {
    pub version: String,
    pub state: S,
}

/// The published state of one type: `None` until the first good version arrives.
pub type StateWatch<S> = watch::Receiver<Option<Arc<Versioned<S>>>>;

/// What a running client knows about its stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStatus {
    /// The stream to the agent is up.
    pub connected: bool,
    /// type_url -> that subscription.
    pub types: BTreeMap<String, SubscriptionStatus>,
}

/// One subscribed type, as the client sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionStatus {
    /// The last version applied and ACKed ("" before the first one).
    pub version: String,
    /// Responses received (applied or rejected).
    pub responses: u64,
    pub last_nack: Option<NackStatus>,
}

/// The last response a client rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NackStatus {
    /// The version that was rejected.
    pub version: String,
    pub error: String,
    pub at: SystemTime,
}

/// Collects subscriptions, then starts the client.
pub struct ClientBuilder {
    endpoint: Endpoint,
    info: proto::ClientInfo,
    slots: Vec<Box<dyn stream::Slot>>,
    backoff: Backoff,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("endpoint", &self.endpoint)
            .field("client", &self.info.id)
            .field(
                "types",
                &self.slots.iter().map(|s| s.type_url()).collect::<Vec<_>>(),
            )
            .field("backoff", &self.backoff)
            .finish()
    }
}

impl ClientBuilder {
    /// A client of `endpoint` that introduces itself as `info` (`subscriptions` is filled in
    /// from the handlers).
    pub fn new(endpoint: Endpoint, info: proto::ClientInfo) -> Self {
        ClientBuilder {
            endpoint,
            info,
            slots: Vec::new(),
            backoff: Backoff::default(),
        }
    }

    /// Subscribes to the handler's type. The watch holds `None` until the first good
    /// version, then the latest good one (a new `Arc` per version, so a request in flight
    /// finishes on the version it read). Subscribing a type twice replaces the first.
    pub fn subscribe<H: TypeHandler>(&mut self, handler: H) -> StateWatch<H::State> {
        let (slot, states) = stream::TypedSlot::new(handler);
        self.slots.retain(|s| s.type_url() != slot.type_url());
        self.slots.push(Box::new(slot));
        states
    }

    /// Reconnect delays: from `min`, doubling up to `max`, with jitter.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = Backoff::new(min, max);
        self
    }

    /// Spawns the client on the current tokio runtime. It connects, reconnects forever,
    /// and stops when the handle is dropped or shut down.
    pub fn start(self) -> ClientHandle {
        let status = Arc::new(Mutex::new(ClientStatus {
            connected: false,
            types: self
                .slots
                .iter()
                .map(|s| (s.type_url().to_string(), SubscriptionStatus::default()))
                .collect(),
        }));
        let (stop, stopped) = oneshot::channel();
        let mut info = self.info;
        info.subscriptions = self
            .slots
            .iter()
            .map(|s| s.type_url().to_string())
            .collect();
        let runner = stream::Runner::new(
            self.endpoint,
            info,
            self.slots,
            self.backoff,
            status.clone(),
        );
        let task = tokio::spawn(runner.run(stopped));
        ClientHandle {
            stop: Some(stop),
            task,
            status,
        }
    }
}

/// A running client. Dropping it stops the client (the published states stay readable).
#[derive(Debug)]
pub struct ClientHandle {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    status: Arc<Mutex<ClientStatus>>,
}

impl ClientHandle {
    /// Connected or not, and per type the last applied version and last NACK.
    pub fn status(&self) -> ClientStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops the client and waits until its task has ended (the stream is closed).
    pub async fn shutdown(mut self) {
        drop(self.stop.take());
        if let Err(e) = (&mut self.task).await {
            tracing::warn!(error = %e, "the policy client task ended abnormally");
        }
    }
}
