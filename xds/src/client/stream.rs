//! The client's stream: connect, subscribe with what it holds, apply, ACK/NACK, reconnect.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::connect::MAX_RESPONSE;
use super::{
    Backoff, ClientStatus, Endpoint, NackStatus, ResourceChange, StateWatch, TypeHandler, Versioned,
};
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
    /// The resources of the last good version (while the handler judges a delta, the
    /// candidate set; the delta's undo log can put the last good one back).
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
        let proto::StreamResponse {
            version_info,
            resources,
            removed_resources,
            full_state,
            ..
        } = response;
        if full_state {
            // The reconnect path: rare, so the new set is simply built beside the old one,
            // which stays until the handler accepted the new one (SEMANTICS 9.1).
            let next: BTreeMap<String, Arc<proto::Resource>> = resources
                .into_iter()
                .map(|r| (r.name.clone(), Arc::new(r)))
                .collect();
            let state = self.handler.build(&next).map_err(rejection)?;
            self.resources = next;
            self.publish(version_info, state);
            return Ok(());
        }
        // A delta is applied in place (copying the whole set per delta is what made large
        // sets slow), remembering per name what it held before the response so that a
        // rejection puts exactly that back (SEMANTICS 9.1: never half-applied).
        let mut undo: BTreeMap<String, Option<Arc<proto::Resource>>> = BTreeMap::new();
        for name in removed_resources {
            let before = self.resources.remove(&name);
            undo.entry(name).or_insert(before);
        }
        for resource in resources {
            let name = resource.name.clone();
            let before = self.resources.insert(name.clone(), Arc::new(resource));
            undo.entry(name).or_insert(before);
        }
        // Cloned out so that the watch's lock is not held while the handler works.
        let previous = self.states.borrow().clone();
        let built = match &previous {
            Some(previous) => {
                let changes: Vec<ResourceChange<'_>> = undo
                    .iter()
                    .filter_map(|(name, before)| {
                        let after = self.resources.get(name);
                        (before.is_some() || after.is_some()).then(|| ResourceChange {
                            name,
                            before: before.as_deref(),
                            after: after.map(|r| &**r),
                        })
                    })
                    .collect();
                self.handler
                    .update(&previous.state, &self.resources, &changes)
                    .unwrap_or_else(|| self.handler.build(&self.resources))
            }
            // Nothing to update yet: the first state is built whatever the response.
            None => self.handler.build(&self.resources),
        };
        match built {
            Ok(state) => {
                self.publish(version_info, state);
                Ok(())
            }
            Err(rejected) => {
                for (name, before) in undo {
                    match before {
                        Some(resource) => self.resources.insert(name, resource),
                        None => self.resources.remove(&name),
                    };
                }
                Err(rejection(rejected))
            }
        }
    }
}

impl<H: TypeHandler> TypedSlot<H> {
    /// A new `Arc` per version: readers keep the snapshot they hold, unchanged.
    fn publish(&mut self, version: String, state: H::State) {
        self.version.clone_from(&version);
        self.states
            .send_replace(Some(Arc::new(Versioned { version, state })));
    }
}

fn rejection(rejected: Vec<(String, String)>) -> Rejection {
    Rejection {
        message: rejected
            .iter()
            .map(|(name, reason)| format!("{name}: {reason}"))
            .collect::<Vec<_>>()
            .join("; "),
        names: rejected.into_iter().map(|(name, _)| name).collect(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{IdentityHandler, IdentityMap, WORLD};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// [`IdentityHandler`] that counts its builds and updates, with or without `update`.
    struct Counting {
        incremental: bool,
        builds: Arc<AtomicUsize>,
        updates: Arc<AtomicUsize>,
    }

    impl TypeHandler for Counting {
        type State = IdentityMap;

        fn type_url(&self) -> &'static str {
            crate::IDENTITY_TYPE
        }

        fn build(
            &self,
            resources: &BTreeMap<String, Arc<proto::Resource>>,
        ) -> Result<IdentityMap, Vec<(String, String)>> {
            self.builds.fetch_add(1, Ordering::Relaxed);
            IdentityHandler.build(resources)
        }

        fn update(
            &self,
            previous: &IdentityMap,
            resources: &BTreeMap<String, Arc<proto::Resource>>,
            changes: &[ResourceChange<'_>],
        ) -> Option<crate::client::Built<IdentityMap>> {
            if !self.incremental {
                return None;
            }
            self.updates.fetch_add(1, Ordering::Relaxed);
            IdentityHandler.update(previous, resources, changes)
        }
    }

    fn host(name: &str, id: u32, prefix: &str) -> proto::Resource {
        proto::Resource {
            name: name.to_owned(),
            version: format!("{name}@{prefix}"),
            body: Some(proto::resource::Body::Identity(proto::Identity {
                id,
                labels: vec![format!("k8s:app={name}")],
                prefixes: vec![prefix.to_owned()],
            })),
        }
    }

    fn response(
        version: &str,
        full_state: bool,
        resources: Vec<proto::Resource>,
        removed: &[&str],
    ) -> proto::StreamResponse {
        proto::StreamResponse {
            type_url: crate::IDENTITY_TYPE.to_owned(),
            version_info: version.to_owned(),
            nonce: format!("n-{version}"),
            resources,
            removed_resources: removed.iter().map(|n| (*n).to_owned()).collect(),
            full_state,
        }
    }

    fn ip(text: &str) -> std::net::IpAddr {
        text.parse().expect("literal address")
    }

    fn rejected_delta_changes_nothing(incremental: bool) {
        let builds = Arc::new(AtomicUsize::new(0));
        let updates = Arc::new(AtomicUsize::new(0));
        let (mut slot, states) = TypedSlot::new(Counting {
            incremental,
            builds: builds.clone(),
            updates: updates.clone(),
        });
        let full = vec![
            host("r1", 101, "10.0.0.1/32"),
            host("r2", 102, "10.0.0.2/32"),
        ];
        assert!(slot.apply(response("v1", true, full, &[])).is_ok());
        let delta = vec![host("r3", 103, "10.0.0.3/32")];
        assert!(slot.apply(response("v2", false, delta, &[])).is_ok());
        let held = states.borrow().clone().expect("v2 published");
        let resources = slot.resources.clone();

        // r2 takes r3's prefix, r5's prefix does not parse, r1 goes and r4 comes: all of it
        // or nothing.
        let bad = vec![
            host("r2", 102, "10.0.0.3/32"),
            host("r4", 104, "10.0.0.4/32"),
            host("r5", 105, "zz"),
        ];
        let rejection = slot
            .apply(response("v3", false, bad, &["r1"]))
            .expect_err("v3 rejected");
        assert!(
            rejection.names.contains(&"r5".to_owned()),
            "{:?}",
            rejection.names
        );
        assert!(
            rejection
                .message
                .contains("r5: prefixes[0]: invalid IP prefix"),
            "{}",
            rejection.message
        );
        assert_eq!(slot.version(), "v2");
        assert_eq!(slot.resources.len(), resources.len());
        for (name, resource) in &resources {
            let now = slot.resources.get(name).expect("still held");
            assert!(Arc::ptr_eq(now, resource), "{name} replaced");
        }
        let published = states.borrow().clone().expect("still published");
        assert!(Arc::ptr_eq(&published, &held), "published state replaced");

        // The next delta applies on top of v2 (r2 keeps its prefix, r3 is there), with a
        // name removed that is not held and a name upserted twice.
        let good = vec![
            host("r4", 104, "10.0.0.40/32"),
            host("r4", 104, "10.0.0.4/32"),
        ];
        assert!(
            slot.apply(response("v4", false, good, &["r1", "nope"]))
                .is_ok()
        );
        assert_eq!(slot.version(), "v4");
        assert_eq!(
            slot.resources.keys().collect::<Vec<_>>(),
            ["r2", "r3", "r4"]
        );
        let v4 = states.borrow().clone().expect("v4 published");
        assert_eq!(v4.version, "v4");
        let map = &v4.state;
        assert_eq!(map.lookup(ip("10.0.0.1")), WORLD);
        assert_eq!(map.lookup(ip("10.0.0.2")), 102);
        assert_eq!(map.lookup(ip("10.0.0.3")), 103);
        assert_eq!(map.lookup(ip("10.0.0.4")), 104);
        assert_eq!(map.lookup(ip("10.0.0.40")), WORLD);
        assert_eq!(map.identity_count(), 3);
        assert_eq!(map.prefix_count(), 3);
        assert_eq!(map.labels(101), None);
        // A reader of v2 still sees v2.
        assert_eq!(held.version, "v2");
        assert_eq!(held.state.lookup(ip("10.0.0.1")), 101);
        assert_eq!(held.state.lookup(ip("10.0.0.4")), WORLD);
        assert_eq!(held.state.identity_count(), 3);

        // Full state: a fresh set, built.
        let full = vec![host("r9", 109, "10.0.0.9/32")];
        assert!(slot.apply(response("v5", true, full, &[])).is_ok());
        assert_eq!(slot.resources.keys().collect::<Vec<_>>(), ["r9"]);
        let v5 = states.borrow().clone().expect("v5 published");
        assert_eq!(v5.state.lookup(ip("10.0.0.2")), WORLD);
        assert_eq!(v5.state.lookup(ip("10.0.0.9")), 109);

        // With `update`, only the full states are built by the slot; without it, every
        // response is.
        if incremental {
            assert_eq!(updates.load(Ordering::Relaxed), 3);
            assert_eq!(builds.load(Ordering::Relaxed), 2);
        } else {
            assert_eq!(updates.load(Ordering::Relaxed), 0);
            assert_eq!(builds.load(Ordering::Relaxed), 5);
        }
    }

    #[test]
    fn rejected_delta_changes_nothing_incremental() {
        rejected_delta_changes_nothing(true);
    }

    #[test]
    fn rejected_delta_changes_nothing_without_update() {
        rejected_delta_changes_nothing(false);
    }
}
