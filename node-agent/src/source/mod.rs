//! Policy sources: where Namespaces, Pods and policies come from. Both sources (the
//! directory of manifests here, the Kubernetes API later) speak the same events, so the
//! compiler never knows which one feeds it.

use crate::manifest::{ManifestError, Object, ObjectKey};

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
