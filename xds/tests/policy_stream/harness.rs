//! Toy handler, hand-made snapshots, a server on a unix socket, and a raw stream client.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Uri;
use xds::proto;
use xds::proto::policy_stream_client::PolicyStreamClient;
use xds::{
    AgentHooks, ClientBuilder, ClientHandle, Endpoint, PolicyServer, Snapshot, StateWatch,
    TypeHandler, TypeSnapshot, Versioned, XdsError,
};

/// Every wait in these tests gives up after this long.
pub const WAIT: Duration = Duration::from_secs(10);

/// Two toy types. Their names sort "policy" before "identity", so that without
/// `requires` the server would send the policy first.
pub const POLICY: &str = "test/a-policy";
pub const IDENTITY: &str = "test/b-identity";

/// A handler that accepts everything except resources whose name starts with "bad"; its
/// state is name -> resource version. Optionally logs each accepted build as "TYPE VERSIONS".
pub struct Toy {
    pub type_url: &'static str,
    pub log: Option<Arc<Mutex<Vec<String>>>>,
}

impl Toy {
    pub fn new(type_url: &'static str) -> Self {
        Toy {
            type_url,
            log: None,
        }
    }
}

pub type ToyState = BTreeMap<String, String>;

impl TypeHandler for Toy {
    type State = ToyState;

    fn type_url(&self) -> &'static str {
        self.type_url
    }

    fn build(
        &self,
        resources: &BTreeMap<String, Arc<proto::Resource>>,
    ) -> Result<ToyState, Vec<(String, String)>> {
        let bad: Vec<(String, String)> = resources
            .keys()
            .filter(|name| name.starts_with("bad"))
            .map(|name| (name.clone(), "a bad resource".to_string()))
            .collect();
        if !bad.is_empty() {
            return Err(bad);
        }
        let state: ToyState = resources
            .iter()
            .map(|(name, r)| (name.clone(), r.version.clone()))
            .collect();
        if let Some(log) = &self.log {
            let versions: Vec<&str> = state.values().map(String::as_str).collect();
            log.lock()
                .expect("log lock")
                .push(format!("{} {}", self.type_url, versions.join(",")));
        }
        Ok(state)
    }
}

pub fn resource(name: &str, version: u64) -> Arc<proto::Resource> {
    Arc::new(proto::Resource {
        name: name.to_string(),
        version: version.to_string(),
        body: Some(proto::resource::Body::Identity(proto::Identity {
            id: 1000,
            labels: vec![format!("k8s:name={name}")],
            prefixes: vec![format!("10.0.0.{}/32", version % 250)],
        })),
    })
}

/// A type at `version` holding `(name, version it last changed)` resources.
pub fn at(version: u64, resources: &[(&str, u64)]) -> TypeSnapshot {
    TypeSnapshot {
        version,
        resources: resources
            .iter()
            .map(|(name, v)| (name.to_string(), resource(name, *v)))
            .collect(),
        requires: None,
        changes: None,
    }
}

pub fn ready(types: Vec<(&str, TypeSnapshot)>) -> Snapshot {
    Snapshot {
        ready: true,
        types: types
            .into_iter()
            .map(|(type_url, t)| (type_url.to_string(), t))
            .collect(),
    }
}

/// Flows and FQDN observations as the agent would see them.
#[derive(Default)]
pub struct TestHooks {
    pub flows: Mutex<Vec<(String, proto::FlowRecord)>>,
    /// How many times `flows` was called (one per batch the agent received).
    pub flow_calls: std::sync::atomic::AtomicUsize,
}

#[tonic::async_trait]
impl AgentHooks for TestHooks {
    fn flows(&self, client: &str, records: Vec<proto::FlowRecord>) -> u64 {
        self.flow_calls
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut flows = self.flows.lock().expect("flows lock");
        flows.extend(records.into_iter().map(|r| (client.to_string(), r)));
        0
    }

    async fn observe_fqdn(
        &self,
        obs: proto::FqdnObservation,
    ) -> Result<proto::FqdnObservationResult, tonic::Status> {
        if obs.name == "refused.example." {
            return Err(tonic::Status::failed_precondition(
                "no selector for that name",
            ));
        }
        Ok(proto::FqdnObservationResult {
            allowed: true,
            detail: format!("{} {} {}", obs.endpoint, obs.name, obs.ips.join(",")),
        })
    }

    async fn fqdn_cache(
        &self,
        request: proto::FqdnCacheRequest,
    ) -> Result<proto::FqdnCacheResponse, tonic::Status> {
        let entry = proto::FqdnCacheEntry {
            endpoint: "default/web".to_string(),
            name: "api.example.".to_string(),
            ip: "192.0.2.1".to_string(),
            expires_in_seconds: 30,
            source: "lookup".to_string(),
            ..proto::FqdnCacheEntry::default()
        };
        let entries = [entry]
            .into_iter()
            .filter(|e| request.endpoint.is_empty() || e.endpoint == request.endpoint)
            .collect();
        Ok(proto::FqdnCacheResponse {
            entries,
            metrics: self.fqdn_metrics(),
        })
    }

    fn fqdn_metrics(&self) -> Option<proto::FqdnMetrics> {
        Some(proto::FqdnMetrics {
            entries: 1,
            observations: 1,
            ..proto::FqdnMetrics::default()
        })
    }
}

/// A policy server on a unix socket, with its snapshot sender.
pub struct TestServer {
    pub server: PolicyServer,
    pub snapshots: watch::Sender<Arc<Snapshot>>,
    pub hooks: Arc<TestHooks>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), XdsError>>,
}

impl TestServer {
    pub fn start(path: &Path, snapshot: Snapshot) -> Self {
        let (snapshots, receiver) = watch::channel(Arc::new(snapshot));
        let hooks = Arc::new(TestHooks::default());
        let server = PolicyServer::new(receiver, hooks.clone());
        let listener = xds::bind_unix(path).expect("bind the test socket");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.clone().serve_unix_listener(listener, async move {
            let _ = stopped.await;
        }));
        TestServer {
            server,
            snapshots,
            hooks,
            stop,
            task,
        }
    }

    pub fn publish(&self, snapshot: Snapshot) {
        self.snapshots.send_replace(Arc::new(snapshot));
    }

    /// Waits until `done` holds for the server's status.
    pub async fn wait_status(
        &self,
        what: &str,
        done: impl FnMut(&proto::StatusResponse) -> bool,
    ) -> proto::StatusResponse {
        match tokio::time::timeout(WAIT, self.server.wait_status(done)).await {
            Ok(status) => status,
            Err(_) => panic!(
                "timed out waiting for {what}; status: {:#?}",
                self.server.status()
            ),
        }
    }

    /// Shuts the server down and waits until it has stopped.
    pub async fn stop(self) {
        drop(self.stop);
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("server stops in time")
            .expect("server task")
            .expect("server ends without error");
    }
}

/// The status of `type_url` for the client with `id`, if connected and subscribed.
pub fn type_status<'a>(
    status: &'a proto::StatusResponse,
    id: &str,
    type_url: &str,
) -> Option<&'a proto::TypeStatus> {
    status
        .clients
        .iter()
        .find(|c| c.client.as_ref().is_some_and(|c| c.id == id))?
        .types
        .iter()
        .find(|t| t.type_url == type_url)
}

/// Whether client `id` has ACKed `version` of `type_url`.
pub fn acked(status: &proto::StatusResponse, id: &str, type_url: &str, version: &str) -> bool {
    type_status(status, id, type_url).is_some_and(|t| t.acked_version == version)
}

pub fn info(id: &str) -> proto::ClientInfo {
    proto::ClientInfo {
        id: id.to_string(),
        kind: "test".to_string(),
        subscriptions: Vec::new(),
    }
}

pub struct Socket {
    // Kept for its Drop: the folder goes when the test ends.
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Socket {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("run/policy.sock");
        Socket { _dir: dir, path }
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::Unix(self.path.clone())
    }
}

/// A client of `socket` subscribed to the toy `types`, with a short backoff.
pub fn toy_client(
    socket: &Socket,
    id: &str,
    types: &[&'static str],
) -> (ClientHandle, Vec<StateWatch<ToyState>>) {
    let mut builder = ClientBuilder::new(socket.endpoint(), info(id))
        .backoff(Duration::from_millis(10), Duration::from_millis(200));
    let watches = types
        .iter()
        .map(|t| builder.subscribe(Toy::new(t)))
        .collect();
    (builder.start(), watches)
}

/// Waits until the watch holds `version`, and returns it.
pub async fn wait_version(
    states: &mut StateWatch<ToyState>,
    version: &str,
) -> Arc<Versioned<ToyState>> {
    let current = tokio::time::timeout(
        WAIT,
        states.wait_for(|s| s.as_ref().is_some_and(|v| v.version == version)),
    )
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for version {version}"))
    .expect("the client is alive")
    .clone();
    current.expect("a version is there")
}

/// Builds a toy state from `(name, version)` pairs.
pub fn state(pairs: &[(&str, u64)]) -> ToyState {
    pairs
        .iter()
        .map(|(name, v)| (name.to_string(), v.to_string()))
        .collect()
}

/// A hand-driven stream: the test decides what to send and whether to ACK.
pub struct RawClient {
    pub requests: mpsc::Sender<proto::StreamRequest>,
    pub responses: tonic::Streaming<proto::StreamResponse>,
}

pub async fn raw_channel(path: &Path) -> tonic::transport::Channel {
    let path = path.to_path_buf();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .expect("connect the raw client")
}

impl RawClient {
    /// Opens a stream whose first request is `first`.
    pub async fn open(path: &Path, first: proto::StreamRequest) -> Self {
        let mut client = PolicyStreamClient::new(raw_channel(path).await);
        let (requests, outbound) = mpsc::channel(16);
        requests.send(first).await.expect("queue the first request");
        let responses = client
            .stream(ReceiverStream::new(outbound))
            .await
            .expect("open the stream")
            .into_inner();
        RawClient {
            requests,
            responses,
        }
    }

    /// Opens a stream as `id` and subscribes to `types` (announced in the client info).
    pub async fn subscribe(path: &Path, id: &str, types: &[&str]) -> Self {
        let mut client_info = info(id);
        client_info.subscriptions = types.iter().map(|t| t.to_string()).collect();
        let mut first = subscribe_request(types[0]);
        first.client = Some(client_info);
        let raw = RawClient::open(path, first).await;
        for t in &types[1..] {
            raw.send(subscribe_request(t)).await;
        }
        raw
    }

    pub async fn send(&self, request: proto::StreamRequest) {
        self.requests.send(request).await.expect("send a request");
    }

    pub async fn next(&mut self) -> proto::StreamResponse {
        tokio::time::timeout(WAIT, self.responses.message())
            .await
            .expect("a response in time")
            .expect("the stream is fine")
            .expect("the stream is open")
    }

    pub async fn ack(&self, response: &proto::StreamResponse) {
        self.send(proto::StreamRequest {
            type_url: response.type_url.clone(),
            version_info: response.version_info.clone(),
            response_nonce: response.nonce.clone(),
            ..proto::StreamRequest::default()
        })
        .await;
    }
}

pub fn subscribe_request(type_url: &str) -> proto::StreamRequest {
    proto::StreamRequest {
        type_url: type_url.to_string(),
        ..proto::StreamRequest::default()
    }
}
