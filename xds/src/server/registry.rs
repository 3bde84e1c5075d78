//! Who is connected and what each one holds, for `status()`.
//!
//! Each stream task owns its state and writes a fresh `ClientStatus` here after every
//! event; readers take a copy. Entries are removed when their stream ends.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use crate::proto;

pub(super) struct Registry {
    /// stream id -> that stream's latest status.
    clients: Mutex<BTreeMap<u64, proto::ClientStatus>>,
    changes: watch::Sender<()>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            clients: Mutex::new(BTreeMap::new()),
            changes: watch::Sender::new(()),
        }
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, proto::ClientStatus>> {
        // A panic elsewhere while holding the lock leaves a map that is still consistent
        // (every write is a single insert or remove).
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn set(&self, stream: u64, status: proto::ClientStatus) {
        self.lock().insert(stream, status);
        self.changes.send_replace(());
    }

    pub(super) fn remove(&self, stream: u64) {
        self.lock().remove(&stream);
        self.changes.send_replace(());
    }

    /// Every connected client, in the order they connected.
    pub(super) fn clients(&self) -> Vec<proto::ClientStatus> {
        self.lock().values().cloned().collect()
    }

    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    pub(super) fn changes(&self) -> watch::Receiver<()> {
        self.changes.subscribe()
    }
}
