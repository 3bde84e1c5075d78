//! Policy sources: where Namespaces, Pods and policies come from. Both sources (the
//! directory of manifests here, the Kubernetes API later) speak the same events, so the
//! compiler never knows which one feeds it.

pub mod directory;

use std::fmt;
use std::path::PathBuf;
use std::sync::mpsc::Sender;

use crate::manifest::{ManifestError, Object, ObjectKey};

pub use directory::{DirectorySource, DirectoryWatch};

/// One change, as `kubectl apply` / `kubectl delete` would make it.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    /// The object was created or replaced.
    Applied(Object),
    /// The object is gone.
    Deleted(ObjectKey),
    /// An object could not be read; the previous version (if any) stays in force.
    Invalid(ManifestError),
    /// Everything that existed at start-up has been delivered. Consumers must not act on a
    /// partial view before this (SEMANTICS 9.2).
    Synced,
}

/// Where objects come from: a directory of manifests, or (later) the Kubernetes API.
///
/// The life of a source is `load` once at start-up, then `watch` for the changes after
/// it. Both speak `SourceEvent`s, so the consumer applies them the same way.
pub trait Source: Send + fmt::Debug {
    /// Reads everything the source holds now: `Applied` per object, `Invalid` per object
    /// that cannot be read, then `Synced`. Fails only when the source itself cannot be
    /// reached (a missing directory), never because of one bad object.
    fn load(&mut self) -> Result<Vec<SourceEvent>, SourceError>;

    /// Sends every change after the last `load` to `tx` until the returned guard is
    /// dropped or `tx`'s receiver is gone. Never sends `Synced`.
    fn watch(self: Box<Self>, tx: Sender<SourceEvent>) -> Result<Box<dyn WatchGuard>, SourceError>;
}

/// Keeps a source's watch running; dropping it stops the watch.
pub trait WatchGuard: Send + fmt::Debug {}

/// A source that cannot be read or watched at all. Problems with single objects are not
/// errors but `SourceEvent::Invalid`.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("manifest directory {path} does not exist")]
    DirectoryMissing { path: PathBuf },
    #[error("manifest directory {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("cannot read manifest directory {path}")]
    DirectoryUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch {path} for changes")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}
