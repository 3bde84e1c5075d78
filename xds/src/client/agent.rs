//! The agent's other calls: FQDN observations (dns-proxy), status (`node-agent status`),
//! flow records and live events (`node-agent observe` / `monitor`).

use std::time::Duration;

use tonic::transport::Channel;

use super::Endpoint;
use super::connect::MAX_RESPONSE;
use crate::XdsError;
use crate::proto;
use crate::proto::policy_stream_client::PolicyStreamClient;

/// How long `fetch_status` waits for an answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// A small client for the agent's unary calls. Connects on first use and reconnects by
/// itself; cheap to clone (clones share the connection).
#[derive(Debug, Clone)]
pub struct AgentClient {
    endpoint: Endpoint,
    client: PolicyStreamClient<Channel>,
}

impl AgentClient {
    /// A client of `endpoint`. Does not connect yet (so it works before the agent is up);
    /// fails only on a malformed endpoint. Needs a tokio runtime.
    pub fn new(endpoint: Endpoint) -> Result<Self, XdsError> {
        let channel = endpoint.connect_lazy()?;
        Ok(AgentClient {
            endpoint,
            client: PolicyStreamClient::new(channel).max_decoding_message_size(MAX_RESPONSE),
        })
    }

    /// Reports a DNS answer; returns once the agent has made the datapath allow its IPs
    /// (or said why not). Bound it with a timeout of the caller's choosing (SEMANTICS 6.3).
    pub async fn observe_fqdn(
        &self,
        observation: proto::FqdnObservation,
    ) -> Result<proto::FqdnObservationResult, XdsError> {
        let mut client = self.client.clone();
        client
            .observe_fqdn(observation)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| self.rpc_error("ObserveFqdn", status))
    }

    /// The agent's view of its clients.
    pub async fn status(&self) -> Result<proto::StatusResponse, XdsError> {
        let mut client = self.client.clone();
        client
            .status(proto::StatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| self.rpc_error("Status", status))
    }

    /// The agent's FQDN cache (`node-agent fqdn cache list`), optionally of one endpoint
    /// ("NAMESPACE/POD"; empty for all).
    pub async fn fqdn_cache(&self, endpoint: &str) -> Result<proto::FqdnCacheResponse, XdsError> {
        let mut client = self.client.clone();
        let mut request = tonic::Request::new(proto::FqdnCacheRequest {
            endpoint: endpoint.to_owned(),
        });
        request.set_timeout(STATUS_TIMEOUT);
        client
            .fqdn_cache(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| self.rpc_error("FqdnCache", status))
    }

    /// The agent's flow records (`node-agent observe`): the held ones, then with `follow`
    /// the new ones until the stream is dropped.
    pub async fn observe(
        &self,
        request: proto::ObserveRequest,
    ) -> Result<tonic::Streaming<proto::ObserveResponse>, XdsError> {
        let mut client = self.client.clone();
        client
            .observe(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| self.rpc_error("Observe", status))
    }

    /// The agent's live events (`node-agent monitor`) until the stream is dropped.
    pub async fn monitor(
        &self,
        request: proto::MonitorRequest,
    ) -> Result<tonic::Streaming<proto::MonitorEvent>, XdsError> {
        let mut client = self.client.clone();
        client
            .monitor(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| self.rpc_error("Monitor", status))
    }

    /// An error of a call made through this client (e.g. a stream that broke later).
    pub fn rpc_error(&self, rpc: &'static str, status: tonic::Status) -> XdsError {
        XdsError::Rpc {
            endpoint: self.endpoint.to_string(),
            rpc,
            status: Box::new(status),
        }
    }
}

/// Connects to the agent, asks for its status, and disconnects. Fails with a connect error
/// naming the endpoint if the agent is not there; gives up after 10 s.
pub async fn fetch_status(endpoint: &Endpoint) -> Result<proto::StatusResponse, XdsError> {
    let channel = endpoint.connect().await?;
    let mut client = PolicyStreamClient::new(channel).max_decoding_message_size(MAX_RESPONSE);
    let mut request = tonic::Request::new(proto::StatusRequest {});
    request.set_timeout(STATUS_TIMEOUT);
    client
        .status(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| XdsError::Rpc {
            endpoint: endpoint.to_string(),
            rpc: "Status",
            status: Box::new(status),
        })
}
