//! What both proxies share at their end of the stream: reading a `PortPolicy`'s ports and
//! peers, the stream's own metrics, the admin listener, their runtime, and stopping on a
//! signal (the agent uses that one too).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::client::{ClientBuilder, ClientHandle, Endpoint, FlowReporter, StateWatch, TypeHandler};
use crate::identity::{IdentityHandler, IdentityMap};
use crate::proto;

/// A proxy's end of the stream: its `NetworkPolicy` state (as its handler builds it), the
/// identity map, and the flow reporter.
#[derive(Debug)]
pub struct ProxyStream<P> {
    pub client: ClientHandle,
    pub policies: StateWatch<P>,
    pub identities: StateWatch<IdentityMap>,
    pub flows: Arc<FlowReporter>,
}

/// Connects a proxy of `kind` ("dns-proxy", "l7-proxy") to the agent at `agent`, with
/// `policies` as its `NetworkPolicy` handler. Starts tasks on the current runtime.
pub fn connect<H: TypeHandler>(
    agent: &Endpoint,
    client_id: &str,
    kind: &str,
    policies: H,
) -> ProxyStream<H::State> {
    let mut client = ClientBuilder::new(
        agent.clone(),
        proto::ClientInfo {
            id: client_id.to_owned(),
            kind: kind.to_owned(),
            ..Default::default()
        },
    )
    .backoff(Duration::from_millis(100), Duration::from_secs(5));
    let policies = client.subscribe(policies);
    let identities = client.subscribe(IdentityHandler);
    ProxyStream {
        client: client.start(),
        policies,
        identities,
        flows: Arc::new(FlowReporter::start(agent.clone(), client_id, 10_000)),
    }
}

impl proto::Resource {
    /// The body as a `NetworkPolicy`; the error says what it is instead.
    pub fn network_policy(&self) -> Result<&proto::NetworkPolicy, String> {
        match &self.body {
            Some(proto::resource::Body::NetworkPolicy(policy)) => Ok(policy),
            Some(_) => Err("resource is not a NetworkPolicy".to_owned()),
            None => Err("resource has no body".to_owned()),
        }
    }

    /// The body as an `Identity`; the error says what it is instead.
    pub fn identity(&self) -> Result<&proto::Identity, String> {
        match &self.body {
            Some(proto::resource::Body::Identity(identity)) => Ok(identity),
            Some(_) => Err("resource is not an Identity".to_owned()),
            None => Err("resource has no body".to_owned()),
        }
    }
}

impl proto::PortPolicy {
    /// `(port, end_port)`: `(0, 0)` for every port, `end_port == port` for a single one
    /// (proto3 leaves an unset `end_port` at 0). Errors name the bad field.
    pub fn port_range(&self) -> Result<(u16, u16), String> {
        let port =
            u16::try_from(self.port).map_err(|_| format!("port {} out of range", self.port))?;
        let end_port = u16::try_from(self.end_port)
            .map_err(|_| format!("end_port {} out of range", self.end_port))?;
        match (port, end_port) {
            (0, _) => Ok((0, 0)),
            (p, 0) => Ok((p, p)),
            (p, e) if e < p => Err(format!("end_port {e} below port {p}")),
            (p, e) => Ok((p, e)),
        }
    }

    /// The peers' identities sorted and without repeats, for binary search.
    pub fn sorted_remote_identities(&self) -> Vec<u32> {
        let mut identities = self.remote_identities.clone();
        identities.sort_unstable();
        identities.dedup();
        identities
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    r#type: &'static str,
}

/// The stream's gauges in a proxy's registry: the version of each type held, and the
/// flow records dropped on the way to the agent.
#[derive(Debug, Clone, Default)]
pub struct StreamMetrics {
    policy_version: Family<TypeLabels, Gauge<i64, AtomicI64>>,
    flow_records_dropped: Gauge<i64, AtomicI64>,
}

impl StreamMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "policy_version",
            "Version of the last good policy per resource type (0: none yet)",
            metrics.policy_version.clone(),
        );
        registry.register(
            "flow_records_dropped",
            "Flow records dropped because the queue to the agent was full",
            metrics.flow_records_dropped.clone(),
        );
        metrics
    }

    /// Reads the gauges' values from the stream, just before a scrape.
    pub fn observe<P, I>(
        &self,
        policies: &StateWatch<P>,
        identities: &StateWatch<I>,
        flows: &FlowReporter,
    ) {
        fn version<S>(watch: &StateWatch<S>) -> i64 {
            watch
                .borrow()
                .as_ref()
                .and_then(|s| s.version.parse().ok())
                .unwrap_or(0)
        }
        self.policy_version
            .get_or_create(&TypeLabels {
                r#type: "NetworkPolicy",
            })
            .set(version(policies));
        self.policy_version
            .get_or_create(&TypeLabels { r#type: "Identity" })
            .set(version(identities));
        self.flow_records_dropped
            .set(i64::try_from(flows.dropped()).unwrap_or(i64::MAX));
    }
}

/// `registry` in the Prometheus text format (empty if a metric failed to encode).
pub fn encode_metrics(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

/// What a waiting proxy still lacks for `/ready`: empty once both types arrived.
pub fn pending<P, I>(policies: &StateWatch<P>, identities: &StateWatch<I>) -> Vec<&'static str> {
    let mut pending = Vec::new();
    if policies.borrow().is_none() {
        pending.push("network policy");
    }
    if identities.borrow().is_none() {
        pending.push("identity map");
    }
    pending
}

/// The pages of a proxy's admin listener.
pub trait AdminPages: Send + Sync + 'static {
    /// `/metrics`, in the Prometheus text format.
    fn metrics(&self) -> String;
    /// For `/ready`: what the proxy still waits for; empty when ready.
    fn pending(&self) -> Vec<&'static str>;
    /// Any other page the proxy serves, by path.
    fn page(&self, path: &str) -> Option<String> {
        let _ = path;
        None
    }
}

/// Serves `/metrics`, `/ready` (200, or 503 naming what is pending) and the proxy's own
/// pages over HTTP/1 until the task is dropped.
pub async fn serve_admin(listener: TcpListener, pages: Arc<dyn AdminPages>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let pages = pages.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let pages = pages.clone();
                async move { Ok::<_, Infallible>(admin_answer(&*pages, request.uri().path())) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn admin_answer(pages: &dyn AdminPages, path: &str) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/metrics" => (StatusCode::OK, pages.metrics()),
        "/ready" => {
            let pending = pages.pending();
            if pending.is_empty() {
                (StatusCode::OK, "ready\n".to_owned())
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("waiting for: {}\n", pending.join(", ")),
                )
            }
        }
        path => match pages.page(path) {
            Some(body) => (StatusCode::OK, body),
            None => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
        },
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

/// The proxies' runtime: `threads` workers (0: one per CPU). One worker gets the
/// current-thread scheduler, which wakes tasks without the cross-thread bookkeeping work
/// stealing needs: measurable per request and per query on a proxy pinned to one CPU.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder.enable_all().build()
}

/// Resolves at the first SIGTERM or SIGINT. The handlers are installed by this call, not
/// by the first poll: a caller that awaits the future only once it is serving would
/// otherwise leave a window in which SIGTERM still kills the process outright. Call it
/// inside the runtime.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(port: u32, end_port: u32) -> proto::PortPolicy {
        proto::PortPolicy {
            port,
            end_port,
            remote_identities: vec![9, 3, 9, 1],
            ..Default::default()
        }
    }

    #[test]
    fn port_ranges_are_read_and_bad_ones_named() {
        assert_eq!(entry(0, 7).port_range(), Ok((0, 0)));
        assert_eq!(entry(80, 0).port_range(), Ok((80, 80)));
        assert_eq!(entry(80, 90).port_range(), Ok((80, 90)));
        assert_eq!(
            entry(90, 80).port_range(),
            Err("end_port 80 below port 90".to_owned())
        );
        assert_eq!(
            entry(70_000, 0).port_range(),
            Err("port 70000 out of range".to_owned())
        );
        assert_eq!(
            entry(80, 70_000).port_range(),
            Err("end_port 70000 out of range".to_owned())
        );
        assert_eq!(entry(0, 0).sorted_remote_identities(), vec![1, 3, 9]);
    }
}
