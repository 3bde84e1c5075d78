//! The admin listener: `/metrics` (Prometheus text), `/ready` (200 once the first policy and
//! identity map were applied, else 503 saying what is pending).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use xds::client::{FlowReporter, StateWatch};
use xds::identity::IdentityMap;

use super::metrics::Metrics;
use super::policy::DnsPolicies;

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub flows: Arc<FlowReporter>,
    pub policies: StateWatch<DnsPolicies>,
    pub identities: StateWatch<IdentityMap>,
}

pub async fn serve(listener: TcpListener, state: AdminState) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(&state, request.uri().path())) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(state: &AdminState, path: &str) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/metrics" => {
            let version = |v: Option<&str>| v.and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
            let policy = state.policies.borrow().clone();
            let identity = state.identities.borrow().clone();
            state.metrics.observe(
                version(policy.as_ref().map(|s| s.version.as_str())),
                version(identity.as_ref().map(|s| s.version.as_str())),
                state.flows.dropped(),
            );
            (StatusCode::OK, state.metrics.encode())
        }
        "/ready" => {
            let mut pending = Vec::new();
            if state.policies.borrow().is_none() {
                pending.push("network policy");
            }
            if state.identities.borrow().is_none() {
                pending.push("identity map");
            }
            if pending.is_empty() {
                (StatusCode::OK, "ready\n".to_owned())
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("waiting for: {}\n", pending.join(", ")),
                )
            }
        }
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
