//! Matching a server's answers to the queries waiting for them, by upstream ID: one
//! [`Pending`] per upstream socket or connection, fed by that socket's reader task.
//!
//! Each forwarded query gets a fresh random ID (never the client's), so that answers on a
//! shared socket cannot be confused and an off-path spoofer has to guess it. A packet with
//! a waiting ID is handed to that query, which checks it (ID, question) and keeps waiting
//! until its deadline when it does not fit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::message::{CheckedQuery, ResponseInfo, inspect_response};

/// Answers a waiting query may hold before more are dropped (only spoofed or duplicate
/// packets ever queue up).
const ANSWER_QUEUE: usize = 4;

/// Tries at drawing a free random ID before giving up (only when nearly 65,536 queries are
/// in flight on one socket).
const ID_TRIES: usize = 64;

/// Why no answer came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    #[error("the server did not answer in time")]
    Timeout,
    #[error("the upstream socket or connection closed")]
    Closed,
    #[error("no free query ID on the upstream socket")]
    NoFreeId,
    #[error("{0}")]
    Io(String),
}

impl ExchangeError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Closed => "closed",
            Self::NoFreeId => "no_free_id",
            Self::Io(_) => "io",
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    waiters: HashMap<u16, mpsc::Sender<Vec<u8>>>,
    closed: bool,
}

/// The queries waiting on one upstream socket or connection.
#[derive(Debug, Default)]
pub struct Pending {
    inner: Mutex<Inner>,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves a free random ID; its answers arrive on the registration until it is
    /// dropped.
    pub fn register(self: &Arc<Self>) -> Result<Registration, ExchangeError> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(ExchangeError::Closed);
        }
        for _ in 0..ID_TRIES {
            let id: u16 = rand::random();
            if let std::collections::hash_map::Entry::Vacant(slot) = inner.waiters.entry(id) {
                let (sender, answers) = mpsc::channel(ANSWER_QUEUE);
                slot.insert(sender);
                return Ok(Registration {
                    pending: self.clone(),
                    id,
                    answers,
                });
            }
        }
        Err(ExchangeError::NoFreeId)
    }

    /// Hands a packet to the query waiting for its ID; anything else is dropped.
    pub fn dispatch(&self, packet: &[u8]) {
        let [hi, lo, ..] = *packet else {
            return;
        };
        let id = u16::from_be_bytes([hi, lo]);
        if let Some(waiter) = self.lock().waiters.get(&id) {
            let _ = waiter.try_send(packet.to_vec());
        }
    }

    /// The socket is gone: every waiting query fails now, later ones at once.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.waiters.clear();
    }

    /// Whether [`Pending::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    pub fn is_empty(&self) -> bool {
        self.lock().waiters.is_empty()
    }
}

/// A reserved upstream ID and the packets that arrive for it.
#[derive(Debug)]
pub struct Registration {
    pending: Arc<Pending>,
    pub id: u16,
    answers: mpsc::Receiver<Vec<u8>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.pending.lock().waiters.remove(&self.id);
    }
}

impl Registration {
    /// Waits until a packet is a valid answer to `upstream_query` (the query under this
    /// registration's ID), or the deadline. Packets that do not fit are logged and ignored.
    pub async fn answer(
        &mut self,
        upstream_query: &CheckedQuery,
        deadline: Instant,
    ) -> Result<(Vec<u8>, ResponseInfo), ExchangeError> {
        loop {
            let packet = match tokio::time::timeout_at(deadline, self.answers.recv()).await {
                Err(_) => return Err(ExchangeError::Timeout),
                Ok(None) => return Err(ExchangeError::Closed),
                Ok(Some(packet)) => packet,
            };
            match inspect_response(upstream_query, &packet) {
                Ok(info) => return Ok((packet, info)),
                Err(error) => {
                    tracing::debug!(%error, id = self.id, "ignoring an answer that does not fit the query");
                }
            }
        }
    }
}

/// The bytes to send upstream: the checked query re-encoded, under the upstream ID.
pub fn with_upstream_id(forward: &[u8], id: u16) -> Vec<u8> {
    let mut out = forward.to_vec();
    if let Some(head) = out.get_mut(..2) {
        head.copy_from_slice(&id.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::message::{DenyRcode, QueryVerdict, police_query};
    use crate::name_pattern::DnsRuleSet;

    fn checked() -> (CheckedQuery, Vec<u8>) {
        let mut bytes = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        bytes.extend_from_slice(b"\x03www\x04test\x00\x00\x01\x00\x01");
        match police_query(&bytes, &DnsRuleSet::allow_all(), DenyRcode::Refused) {
            QueryVerdict::Allowed { query, forward, .. } => (query, forward),
            other => panic!("not allowed: {other:?}"),
        }
    }

    /// The forwarded query turned into an empty NOERROR answer under `id`.
    fn answer(forward: &[u8], id: u16) -> Vec<u8> {
        let mut out = with_upstream_id(forward, id);
        out[2] |= 0x80;
        out
    }

    #[tokio::test]
    async fn answers_reach_the_query_with_their_id_and_others_are_ignored() {
        let pending = Arc::new(Pending::default());
        let (query, forward) = checked();
        let mut a = pending.register().expect("id");
        let b = pending.register().expect("id");
        assert_ne!(a.id, b.id);
        let upstream = query.with_id(a.id);
        // Another ID, a wrong question under the right ID, then the answer.
        pending.dispatch(&answer(&forward, b.id));
        let mut wrong = answer(&forward, a.id);
        let at = wrong.len() - 6;
        wrong[at] = b'x';
        pending.dispatch(&wrong);
        pending.dispatch(&answer(&forward, a.id));
        let deadline = Instant::now() + Duration::from_secs(5);
        let (bytes, info) = a.answer(&upstream, deadline).await.expect("answer");
        assert_eq!(u16::from_be_bytes([bytes[0], bytes[1]]), a.id);
        assert_eq!(info.name.to_string(), "www.test.");
        drop(b);
        drop(a);
        assert!(pending.is_empty());
    }

    #[tokio::test]
    async fn timeout_and_close() {
        let pending = Arc::new(Pending::default());
        let (query, _) = checked();
        let mut a = pending.register().expect("id");
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(
            a.answer(&query.with_id(a.id), soon).await,
            Err(ExchangeError::Timeout)
        );
        pending.close();
        let later = Instant::now() + Duration::from_secs(5);
        assert_eq!(
            a.answer(&query.with_id(a.id), later).await,
            Err(ExchangeError::Closed)
        );
        assert_eq!(pending.register().err(), Some(ExchangeError::Closed));
    }
}
