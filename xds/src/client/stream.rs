//! The client's stream: connect, subscribe with what it holds, apply, ACK/NACK, reconnect.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::connect::MAX_RESPONSE;
use super::{Backoff, ClientStatus, Endpoint, NackStatus, StateWatch, TypeHandler, Versioned};
use crate::proto;
use crate::proto::policy_stream_client::PolicyStreamClient;

/// A stream that lived this long counts as a success: the next failure backs off from the
/// start again (also when the agent had nothing new to send in that time).
const HEALTHY_STREAM: Duration = Duration::from_secs(5);

/// A response the handler rejected.
pub(super) struct Rejection {
    pub(super) message: String,
    pub(super) names: Vec<String>,
}

/// One subscribed type with its handler, held resources and published state, behind a
/// type-erased interface so that one stream can carry types of different handlers.
pub(super) trait Slot: Send {
    fn type_url(&self) -> &'static str;
    /// The last good version ("" if none).
    fn version(&self) -> &str;
    /// name -> resource version of what is held.
    fn known(&self) -> BTreeMap<String, String>;
    fn apply(&mut self, response: proto::StreamResponse) -> Result<(), Rejection>;
}

pub(super) struct TypedSlot<H: TypeHandler> {
    handler: H,
    version: String,
    /// The resources of the last good version. Shared (`Arc`) so that building the next
    /// candidate set beside it copies pointers, not thousands of policies.
    resources: BTreeMap<String, Arc<proto::Resource>>,
    states: watch::Sender<Option<Arc<Versioned<H::State>>>>,
}

impl<H: TypeHandler> TypedSlot<H> {
    pub(super) fn new(handler: H) -> (Self, StateWatch<H::State>) {
        let (states, watch) = watch::channel(None);
        let slot = TypedSlot {
            handler,
            version: String::new(),
            resources: BTreeMap::new(),
            states,
        };
        (slot, watch)
    }
}

impl<H: TypeHandler> Slot for TypedSlot<H> {
    fn type_url(&self) -> &'static str {
        self.handler.type_url()
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn known(&self) -> BTreeMap<String, String> {
        self.resources
            .iter()
            .map(|(name, r)| (name.clone(), r.version.clone()))
            .collect()
    }

    fn apply(&mut self, response: proto::StreamResponse) -> Result<(), Rejection> {
        // Build the complete new set beside the old one; the old one stays until the
        // handler accepted the new one (SEMANTICS 9.1: never half-applied).
        let mut next = if response.full_state {
            BTreeMap::new()
        } else {
            self.resources.clone()
        };
        for name in &response.removed_resources {
            next.remove(name);
        }
        for resource in response.resources {
            next.insert(resource.name.clone(), Arc::new(resource));
        }
        match self.handler.build(&next) {
            Ok(state) => {
                self.resources = next;
                self.version = response.version_info.clone();
                self.states.send_replace(Some(Arc::new(Versioned {
                    version: response.version_info,
                    state,
                })));
                Ok(())
            }
            Err(rejected) => Err(Rejection {
                message: rejected
                    .iter()
                    .map(|(name, reason)| format!("{name}: {reason}"))
                    .collect::<Vec<_>>()
                    .join("; "),
                names: rejected.into_iter().map(|(name, _)| name).collect(),
            }),
        }
    }
}

pub(super) struct Runner {
    endpoint: Endpoint,
    info: proto::ClientInfo,
    slots: Vec<Box<dyn Slot>>,
    backoff: Backoff,
    status: Arc<Mutex<ClientStatus>>,
}

/// How a stream ended.
enum End {
    /// Could not connect or open the stream.
    Failed(String),
    /// The stream was up and then ended.
    Lost { lived: Duration, reason: String },
}

impl Runner {
    pub(super) fn new(
        endpoint: Endpoint,
        info: proto::ClientInfo,
        slots: Vec<Box<dyn Slot>>,
        backoff: Backoff,
        status: Arc<Mutex<ClientStatus>>,
    ) -> Self {
        Runner {
            endpoint,
            info,
            slots,
            backoff,
            status,
        }
    }

    fn update_status(&self, change: impl FnOnce(&mut ClientStatus)) {
        change(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Connects and reconnects until `stop` fires (or its sender is dropped).
    pub(super) async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut failures: u32 = 0;
        loop {
            let end = tokio::select! {
                _ = &mut stop => break,
                end = self.stream() => end,
            };
            self.update_status(|s| s.connected = false);
            match end {
                End::Failed(reason) => {
                    // Debug, not warn: a proxy that starts before the agent retries quietly.
                    tracing::debug!(endpoint = %self.endpoint, %reason, "policy stream not established");
                    failures = failures.saturating_add(1);
                }
                End::Lost { lived, reason } => {
                    tracing::warn!(endpoint = %self.endpoint, %reason,
                        "policy stream lost; keeping the last good state and reconnecting");
                    if lived >= HEALTHY_STREAM {
                        failures = 0;
                    } else {
                        failures = failures.saturating_add(1);
                    }
                }
            }
            let delay = self.backoff.delay(failures.saturating_sub(1));
            tokio::select! {
                _ = &mut stop => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        tracing::debug!(endpoint = %self.endpoint, "policy client stopped");
    }

    /// One stream: subscribe with what is held, then apply responses until it ends.
    async fn stream(&mut self) -> End {
        let channel = match self.endpoint.connect().await {
            Ok(channel) => channel,
            Err(e) => return End::Failed(e.to_string()),
        };
        let mut client = PolicyStreamClient::new(channel).max_decoding_message_size(MAX_RESPONSE);
        let (requests, outbound) = mpsc::channel(self.slots.len() + 16);
        for request in self.subscribe_requests() {
            if requests.send(request).await.is_err() {
                return End::Failed("the request stream closed".to_string());
            }
        }
        let mut inbound = match client.stream(ReceiverStream::new(outbound)).await {
            Ok(response) => response.into_inner(),
            Err(status) => return End::Failed(status.to_string()),
        };
        let since = Instant::now();
        self.update_status(|s| s.connected = true);
        tracing::info!(endpoint = %self.endpoint, client = %self.info.id, "policy stream established");
        let reason = loop {
            match inbound.message().await {
                Ok(Some(response)) => {
                    if let Some(answer) = self.handle(response)
                        && requests.send(answer).await.is_err()
                    {
                        break "the request stream closed".to_string();
                    }
                }
                Ok(None) => break "the agent ended the stream".to_string(),
                Err(status) => break status.to_string(),
            }
        };
        End::Lost {
            lived: since.elapsed(),
            reason,
        }
    }

    /// The first requests of a stream: per type, a subscribe with the last good version and
    /// the resources held, so the agent sends only what differs (the first one carries the
    /// client info).
    fn subscribe_requests(&self) -> Vec<proto::StreamRequest> {
        let mut requests: Vec<proto::StreamRequest> = self
            .slots
            .iter()
            .map(|slot| proto::StreamRequest {
                type_url: slot.type_url().to_string(),
                version_info: slot.version().to_string(),
                known_resources: slot.known().into_iter().collect(),
                ..proto::StreamRequest::default()
            })
            .collect();
        match requests.first_mut() {
            Some(first) => first.client = Some(self.info.clone()),
            None => requests.push(proto::StreamRequest {
                client: Some(self.info.clone()),
                ..proto::StreamRequest::default()
            }),
        }
        requests
    }

    /// Applies one response; returns the ACK or NACK to send.
    fn handle(&mut self, response: proto::StreamResponse) -> Option<proto::StreamRequest> {
        let type_url = response.type_url.clone();
        let Some(slot) = self.slots.iter_mut().find(|s| s.type_url() == type_url) else {
            tracing::warn!(%type_url, "response for a type this client did not subscribe to; ignored");
            return None;
        };
        let nonce = response.nonce.clone();
        let version = response.version_info.clone();
        let count = response.resources.len();
        let removed = response.removed_resources.len();
        let result = slot.apply(response);
        let (answer, nack) = match result {
            Ok(()) => {
                tracing::debug!(%type_url, %version, resources = count, removed, "applied; ACK");
                let ack = proto::StreamRequest {
                    type_url: type_url.clone(),
                    version_info: version.clone(),
                    response_nonce: nonce,
                    ..proto::StreamRequest::default()
                };
                (ack, None)
            }
            Err(rejection) => {
                tracing::warn!(%type_url, rejected = %version, kept = %slot.version(),
                    error = %rejection.message, "rejected; NACK, keeping the last good state");
                let nack = NackStatus {
                    version: version.clone(),
                    error: rejection.message.clone(),
                    at: SystemTime::now(),
                };
                let request = proto::StreamRequest {
                    type_url: type_url.clone(),
                    version_info: slot.version().to_string(),
                    response_nonce: nonce,
                    error_detail: Some(proto::ErrorDetail {
                        message: rejection.message,
                        rejected_resources: rejection.names,
                    }),
                    ..proto::StreamRequest::default()
                };
                (request, Some(nack))
            }
        };
        let applied = slot.version().to_string();
        self.update_status(|s| {
            let entry = s.types.entry(type_url).or_default();
            entry.responses += 1;
            entry.version = applied;
            if nack.is_some() {
                entry.last_nack = nack;
            }
        });
        Some(answer)
    }
}
