//! The gRPC service: the generated `PolicyStream` trait implemented over [`Shared`].

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{CLIENT_ID_METADATA, Shared, observe, session};
use crate::proto;
use crate::proto::policy_stream_server::{PolicyStream, PolicyStreamServer};

/// Responses waiting to be written to one client. At most one response per type is in
/// flight, so this only fills up if a client re-subscribes over and over without reading;
/// then its own task waits, nobody else's.
const OUTBOUND_QUEUE: usize = 16;

/// Decoded messages from clients may be this large (a flow batch holds at most a few
/// hundred records, so this is plenty; kept explicit).
const MAX_DECODE: usize = 4 * 1024 * 1024;

/// The tonic service behind [`super::PolicyServer`]; get one from
/// [`super::PolicyServer::service`].
pub struct PolicyService {
    shared: Arc<Shared>,
    /// Turns true when the listener this service belongs to shuts down; `None` for a
    /// service mounted by the caller (its streams end when their clients go).
    shutdown: Option<watch::Receiver<bool>>,
}

impl std::fmt::Debug for PolicyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyService").finish_non_exhaustive()
    }
}

impl PolicyService {
    pub(super) fn new(shared: Arc<Shared>, shutdown: Option<watch::Receiver<bool>>) -> Self {
        PolicyService { shared, shutdown }
    }

    pub(super) fn into_server(self) -> PolicyStreamServer<PolicyService> {
        PolicyStreamServer::new(self).max_decoding_message_size(MAX_DECODE)
    }
}

/// Resolves when `shutdown` turns true (or its sender is gone); never for `None`.
pub(super) async fn shutdown_signal(shutdown: &mut Option<watch::Receiver<bool>>) {
    match shutdown {
        Some(rx) => {
            // An error means the listener's sender is gone: it is shutting down too.
            let _ = rx.wait_for(|stop| *stop).await;
        }
        None => std::future::pending().await,
    }
}

#[tonic::async_trait]
impl PolicyStream for PolicyService {
    type StreamStream = ReceiverStream<Result<proto::StreamResponse, Status>>;
    type ObserveStream = observe::ObserveStream;
    type MonitorStream = observe::MonitorStream;

    async fn stream(
        &self,
        request: Request<Streaming<proto::StreamRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = describe_peer(&request);
        let inbound = request.into_inner();
        let (out, responses) = mpsc::channel(OUTBOUND_QUEUE);
        // One task per stream: a slow or silent client only ever stalls its own task.
        tokio::spawn(session::run(
            self.shared.clone(),
            inbound,
            out,
            self.shutdown.clone(),
            peer,
        ));
        Ok(Response::new(ReceiverStream::new(responses)))
    }

    async fn report_flows(
        &self,
        request: Request<Streaming<proto::FlowBatch>>,
    ) -> Result<Response<proto::FlowReportSummary>, Status> {
        let client = request
            .metadata()
            .get(CLIENT_ID_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| describe_peer(&request));
        let mut inbound = request.into_inner();
        let mut shutdown = self.shutdown.clone();
        let mut summary = proto::FlowReportSummary::default();
        loop {
            let next = tokio::select! {
                _ = shutdown_signal(&mut shutdown) => break,
                next = inbound.message() => next,
            };
            let batch = match next {
                Ok(Some(batch)) => batch,
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(%client, %status, "flow report stream broke");
                    break;
                }
            };
            if batch.records.is_empty() {
                continue;
            }
            summary.received += batch.records.len() as u64;
            summary.dropped += self.shared.hooks.flows(&client, batch.records);
        }
        tracing::debug!(
            %client,
            received = summary.received,
            dropped = summary.dropped,
            "flow report stream ended"
        );
        Ok(Response::new(summary))
    }

    async fn observe_fqdn(
        &self,
        request: Request<proto::FqdnObservation>,
    ) -> Result<Response<proto::FqdnObservationResult>, Status> {
        let result = self.shared.hooks.observe_fqdn(request.into_inner()).await?;
        Ok(Response::new(result))
    }

    async fn fqdn_cache(
        &self,
        request: Request<proto::FqdnCacheRequest>,
    ) -> Result<Response<proto::FqdnCacheResponse>, Status> {
        let response = self.shared.hooks.fqdn_cache(request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn status(
        &self,
        _request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        let server = super::PolicyServer {
            shared: self.shared.clone(),
        };
        Ok(Response::new(server.status()))
    }

    async fn observe(
        &self,
        request: Request<proto::ObserveRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let stream = observe::observe(&self.shared, request.into_inner(), self.shutdown.clone())?;
        Ok(Response::new(stream))
    }

    async fn monitor(
        &self,
        request: Request<proto::MonitorRequest>,
    ) -> Result<Response<Self::MonitorStream>, Status> {
        let stream = observe::monitor(&self.shared, request.into_inner(), self.shutdown.clone())?;
        Ok(Response::new(stream))
    }
}

/// The peer for logs: a TCP address, or "unix" (unix peers have no useful address).
fn describe_peer<T>(request: &Request<T>) -> String {
    match request.remote_addr() {
        Some(addr) => addr.to_string(),
        None => "unix".to_string(),
    }
}
