//! One client's stream: what it subscribed to, what it acknowledged, what is in flight.
//!
//! The rules (SEMANTICS 9):
//! - nothing is sent while the snapshot is not ready (9.2);
//! - per type at most one response is in flight; the next one waits for its ACK or NACK;
//! - a response carries the difference between the snapshot and what the client has
//!   ACKed (resources whose version differs, names that are gone); the first one after a
//!   subscribe without known state is the full state;
//! - after a NACK the client keeps its last good state, and the server sends nothing more
//!   of that type until the type's version moves past the rejected one (no NACK loops);
//! - a type with `requires` waits until the client ACKed that version of the other type.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use super::service::shutdown_signal;
use super::{Shared, Snapshot, TypeSnapshot};
use crate::proto;

type Outbound = mpsc::Sender<Result<proto::StreamResponse, Status>>;

/// The stream is over: the client went away (its response channel is closed), or the
/// listener is shutting down while a response was waiting for room.
struct Gone;

/// Runs one stream until the client leaves, breaks the stream, or the listener shuts down.
pub(super) async fn run(
    shared: Arc<Shared>,
    mut inbound: Streaming<proto::StreamRequest>,
    out: Outbound,
    mut shutdown: Option<watch::Receiver<bool>>,
    peer: String,
) {
    let first = tokio::select! {
        _ = shutdown_signal(&mut shutdown) => return,
        first = inbound.message() => first,
    };
    let first = match first {
        Ok(Some(request)) => request,
        Ok(None) => return,
        Err(status) => {
            tracing::debug!(%peer, %status, "policy stream broke before its first request");
            return;
        }
    };
    let Some(client) = first.client.clone() else {
        tracing::warn!(%peer, "policy stream without client info in its first request; closing it");
        let _ = out
            .send(Err(Status::invalid_argument(
                "the first request of a policy stream must carry `client`",
            )))
            .await;
        return;
    };
    let id = shared.streams.fetch_add(1, Ordering::Relaxed);
    let mut snapshots = shared.snapshots.clone();
    snapshots.mark_unchanged();
    let mut session = Session {
        shared: shared.clone(),
        id,
        client,
        connected_unix_ms: unix_ms(SystemTime::now()),
        types: BTreeMap::new(),
        out,
    };
    let _registered = Registered {
        shared: shared.clone(),
        id,
    };
    tracing::info!(
        client = %session.client.id,
        kind = %session.client.kind,
        %peer,
        "policy client connected"
    );
    session.handle(first);
    let mut watching = true;
    let end = loop {
        if session.pump(&mut shutdown).await.is_err() {
            break "client gone or server shutting down";
        }
        session.publish_status();
        tokio::select! {
            _ = shutdown_signal(&mut shutdown) => {
                let _ = session
                    .out
                    .send(Err(Status::unavailable("the policy server is shutting down")))
                    .await;
                break "server shutting down";
            }
            next = inbound.message() => match next {
                Ok(Some(request)) => session.handle(request),
                Ok(None) => break "client closed the stream",
                Err(status) => {
                    tracing::debug!(client = %session.client.id, %status, "policy stream broke");
                    break "stream broke";
                }
            },
            changed = snapshots.changed(), if watching => {
                if changed.is_err() {
                    // The agent dropped its sender: the last snapshot stays; keep serving it.
                    watching = false;
                }
            }
            () = session.out.closed() => break "client gone",
        }
    };
    tracing::info!(client = %session.client.id, reason = end, "policy client disconnected");
}

/// Removes the stream from the registry however its task ends.
struct Registered {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.registry.remove(self.id);
    }
}

struct Session {
    shared: Arc<Shared>,
    id: u64,
    client: proto::ClientInfo,
    connected_unix_ms: i64,
    /// type_url -> this client's subscription.
    types: BTreeMap<String, Subscription>,
    out: Outbound,
}

/// What one client holds of one type, as far as the server knows.
#[derive(Default)]
struct Subscription {
    /// name -> resource version the client has ACKed (or said it holds, on subscribe).
    acked: BTreeMap<String, String>,
    /// The type version the client has ACKed ("" if none yet).
    acked_version: String,
    /// `acked` is exactly the type's resources at `acked_version`, because the client
    /// ACKed a response of this stream (not just reported what it holds): the changes
    /// logged since that version are then all it lacks.
    acked_exact: bool,
    /// The next response must be the full state (the client has nothing yet).
    full_state: bool,
    in_flight: Option<InFlight>,
    /// A NACKed version: nothing more is sent until the type's version is above it.
    held_at: Option<u64>,
    last_nack: Option<Nack>,
    /// The type was reported as unknown once; don't repeat the warning.
    warned_unknown: bool,
    responses_sent: u64,
    resources_sent: u64,
    bytes_sent: u64,
}

struct InFlight {
    nonce: String,
    version: u64,
    /// The client's state once it applies this response.
    state: NextState,
}

/// What the client will hold after a response: a whole map, or changes to what it ACKed.
enum NextState {
    Whole(BTreeMap<String, String>),
    /// name -> its new resource version, or `None` for a removal.
    Delta(BTreeMap<String, Option<String>>),
}

impl NextState {
    fn apply_to(self, acked: &mut BTreeMap<String, String>) {
        match self {
            NextState::Whole(state) => *acked = state,
            NextState::Delta(delta) => {
                for (name, version) in delta {
                    match version {
                        Some(version) => acked.insert(name, version),
                        None => acked.remove(&name),
                    };
                }
            }
        }
    }
}

struct Nack {
    version: u64,
    error: String,
    unix_ms: i64,
}

impl Session {
    fn handle(&mut self, request: proto::StreamRequest) {
        if request.type_url.is_empty() {
            // The first request of a client with no subscriptions carries only its info.
            if !request.response_nonce.is_empty() {
                tracing::warn!(client = %self.client.id, "policy request without a type_url; ignored");
            }
            return;
        }
        if request.response_nonce.is_empty() {
            self.subscribe(request);
        } else {
            self.acknowledge(request);
        }
    }

    /// A subscribe (or re-subscribe): start over from what the client says it holds.
    fn subscribe(&mut self, request: proto::StreamRequest) {
        let knows_nothing = request.known_resources.is_empty() && request.version_info.is_empty();
        tracing::debug!(
            client = %self.client.id,
            type_url = %request.type_url,
            version = %request.version_info,
            known = request.known_resources.len(),
            "subscribe"
        );
        let subscription = Subscription {
            acked: request.known_resources.into_iter().collect(),
            acked_version: request.version_info,
            full_state: knows_nothing,
            ..Subscription::default()
        };
        // A response in flight from before is forgotten: its ACK will be a stale nonce.
        self.types.insert(request.type_url, subscription);
    }

    /// An ACK or NACK of the response in flight.
    fn acknowledge(&mut self, request: proto::StreamRequest) {
        let client = &self.client.id;
        let type_url = &request.type_url;
        let Some(subscription) = self.types.get_mut(type_url) else {
            tracing::warn!(%client, %type_url, nonce = %request.response_nonce,
                "ACK/NACK for a type the client has not subscribed to; ignored");
            return;
        };
        let in_flight = match subscription.in_flight.take() {
            Some(f) if f.nonce == request.response_nonce => f,
            other => {
                subscription.in_flight = other;
                tracing::warn!(%client, %type_url, nonce = %request.response_nonce,
                    "ACK/NACK with a nonce that is not the response in flight; ignored");
                return;
            }
        };
        match request.error_detail {
            None => {
                tracing::info!(%client, %type_url, version = in_flight.version, "ACK");
                in_flight.state.apply_to(&mut subscription.acked);
                subscription.acked_version = in_flight.version.to_string();
                subscription.acked_exact = true;
                subscription.full_state = false;
                subscription.held_at = None;
            }
            Some(detail) => {
                tracing::warn!(
                    %client,
                    %type_url,
                    version = in_flight.version,
                    kept = %request.version_info,
                    rejected = ?detail.rejected_resources,
                    error = %detail.message,
                    "NACK: the client keeps its last good version"
                );
                subscription.held_at = Some(in_flight.version);
                subscription.last_nack = Some(Nack {
                    version: in_flight.version,
                    error: detail.message,
                    unix_ms: unix_ms(SystemTime::now()),
                });
            }
        }
    }

    /// Sends, for every subscribed type, the next response if one is due and allowed.
    /// The send waits for room only while the listener is not shutting down: a client that
    /// stopped reading must not hold up the server's shutdown.
    async fn pump(&mut self, shutdown: &mut Option<watch::Receiver<bool>>) -> Result<(), Gone> {
        let responses = self.due_responses();
        for response in responses {
            tokio::select! {
                sent = self.out.send(Ok(response)) => sent.map_err(|_| Gone)?,
                _ = shutdown_signal(shutdown) => return Err(Gone),
            }
        }
        Ok(())
    }

    /// The responses due now, each recorded as in flight. The snapshot is released before
    /// anything is sent: while a stream holds it, the agent's next publish must copy it
    /// instead of changing it in place.
    fn due_responses(&mut self) -> Vec<proto::StreamResponse> {
        let snapshot: Arc<Snapshot> = self.shared.snapshots.borrow().clone();
        let mut due = Vec::new();
        if !snapshot.ready {
            // SEMANTICS 9.2: the agent has not finished loading; wait.
            return due;
        }
        let type_urls: Vec<String> = self.types.keys().cloned().collect();
        for type_url in type_urls {
            let Some(current) = snapshot.types.get(&type_url) else {
                if let Some(subscription) = self.types.get_mut(&type_url)
                    && !subscription.warned_unknown
                {
                    subscription.warned_unknown = true;
                    tracing::warn!(client = %self.client.id, %type_url,
                        "subscription to an unknown type; nothing will be sent for it");
                }
                continue;
            };
            if !self.may_send(&type_url, current) {
                continue;
            }
            let Some(subscription) = self.types.get_mut(&type_url) else {
                continue;
            };
            let Some((response, state)) = next_response(subscription, &type_url, current) else {
                continue;
            };
            let nonce = self
                .shared
                .nonces
                .fetch_add(1, Ordering::Relaxed)
                .to_string();
            let response = proto::StreamResponse { nonce, ..response };
            let count = response.resources.len();
            let bytes = response.encoded_len();
            tracing::info!(
                client = %self.client.id,
                %type_url,
                version = current.version,
                resources = count,
                removed = response.removed_resources.len(),
                full_state = response.full_state,
                bytes,
                "push"
            );
            subscription.in_flight = Some(InFlight {
                nonce: response.nonce.clone(),
                version: current.version,
                state,
            });
            subscription.responses_sent += 1;
            subscription.resources_sent += count as u64;
            subscription.bytes_sent += bytes as u64;
            due.push(response);
        }
        due
    }

    /// Whether a response of this type may go now: none in flight, not held by a NACK of
    /// the current version, and the type it requires is ACKed far enough.
    fn may_send(&self, type_url: &str, current: &TypeSnapshot) -> bool {
        let Some(subscription) = self.types.get(type_url) else {
            return false;
        };
        if subscription.in_flight.is_some() {
            return false;
        }
        if subscription
            .held_at
            .is_some_and(|nacked| current.version <= nacked)
        {
            return false;
        }
        let Some((other, at_least)) = &current.requires else {
            return true;
        };
        match self.types.get(other) {
            Some(required) => required
                .acked_version
                .parse::<u64>()
                .is_ok_and(|v| v >= *at_least),
            // Not subscribed (yet): it counts if the client announced it will subscribe.
            None => !self.client.subscriptions.iter().any(|s| s == other),
        }
    }

    fn publish_status(&self) {
        let types = self
            .types
            .iter()
            .map(|(type_url, s)| proto::TypeStatus {
                type_url: type_url.clone(),
                acked_version: s.acked_version.clone(),
                sent_version: s
                    .in_flight
                    .as_ref()
                    .map(|f| f.version.to_string())
                    .unwrap_or_default(),
                last_nack_version: s
                    .last_nack
                    .as_ref()
                    .map(|n| n.version.to_string())
                    .unwrap_or_default(),
                last_nack_error: s
                    .last_nack
                    .as_ref()
                    .map(|n| n.error.clone())
                    .unwrap_or_default(),
                last_nack_unix_ms: s.last_nack.as_ref().map(|n| n.unix_ms).unwrap_or_default(),
                responses_sent: s.responses_sent,
                resources_sent: s.resources_sent,
                bytes_sent: s.bytes_sent,
            })
            .collect();
        self.shared.registry.set(
            self.id,
            proto::ClientStatus {
                client: Some(self.client.clone()),
                connected_unix_ms: self.connected_unix_ms,
                types,
            },
        );
    }
}

/// The response that brings the client from its ACKed state to `current`, and the state it
/// will have after applying it; `None` if it is already there.
fn next_response(
    subscription: &Subscription,
    type_url: &str,
    current: &TypeSnapshot,
) -> Option<(proto::StreamResponse, NextState)> {
    let version = current.version.to_string();
    let (resources, removed, state) = match logged_changes(subscription, current) {
        Some(changes) => changes,
        None => whole_diff(subscription, current),
    };
    let nothing_to_do = !subscription.full_state
        && resources.is_empty()
        && removed.is_empty()
        && subscription.acked_version == version;
    if nothing_to_do {
        return None;
    }
    let response = proto::StreamResponse {
        type_url: type_url.to_string(),
        version_info: version,
        nonce: String::new(),
        resources: resources.into_iter().map(|r| (**r).clone()).collect(),
        removed_resources: removed,
        full_state: subscription.full_state,
    };
    Some((response, state))
}

type Diff<'a> = (Vec<&'a Arc<proto::Resource>>, Vec<String>, NextState);

/// The diff from the change log: only the names changed since the client's exact ACKed
/// version. `None` when that does not apply (first response, a state the client reported,
/// no log, or a log that no longer reaches back).
fn logged_changes<'a>(subscription: &Subscription, current: &'a TypeSnapshot) -> Option<Diff<'a>> {
    if subscription.full_state || !subscription.acked_exact {
        return None;
    }
    let acked_version = subscription.acked_version.parse::<u64>().ok()?;
    let names: std::collections::BTreeSet<&str> =
        current.changes.as_ref()?.since(acked_version)?.collect();
    let mut resources = Vec::new();
    let mut removed = Vec::new();
    let mut delta = BTreeMap::new();
    for name in names {
        match current.resources.get(name) {
            Some(r) if subscription.acked.get(name) != Some(&r.version) => {
                resources.push(r);
                delta.insert(name.to_owned(), Some(r.version.clone()));
            }
            Some(_) => {}
            None if subscription.acked.contains_key(name) => {
                removed.push(name.to_owned());
                delta.insert(name.to_owned(), None);
            }
            None => {}
        }
    }
    Some((resources, removed, NextState::Delta(delta)))
}

/// The diff over every resource, against what the client holds.
fn whole_diff<'a>(subscription: &Subscription, current: &'a TypeSnapshot) -> Diff<'a> {
    let state: BTreeMap<String, String> = current
        .resources
        .iter()
        .map(|(name, r)| (name.clone(), r.version.clone()))
        .collect();
    if subscription.full_state {
        return (
            current.resources.values().collect(),
            Vec::new(),
            NextState::Whole(state),
        );
    }
    let changed = current
        .resources
        .iter()
        .filter(|(name, r)| subscription.acked.get(*name) != Some(&r.version))
        .map(|(_, r)| r)
        .collect();
    let removed = subscription
        .acked
        .keys()
        .filter(|name| !current.resources.contains_key(*name))
        .cloned()
        .collect();
    (changed, removed, NextState::Whole(state))
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
