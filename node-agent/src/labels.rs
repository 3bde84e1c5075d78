//! Security labels (SEMANTICS 1.2, 1.3): a label has a source (`k8s`, `reserved`, `cidr`,
//! ...), a key and a value. Selectors name a source with a `source:` key prefix, or match
//! any source when they name none.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Pod};

pub const SOURCE_K8S: &str = "k8s";
pub const SOURCE_RESERVED: &str = "reserved";
pub const SOURCE_CIDR: &str = "cidr";
pub const SOURCE_ANY: &str = "any";

pub const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
pub const SERVICE_ACCOUNT_LABEL: &str = "io.cilium.k8s.policy.serviceaccount";
pub const CLUSTER_LABEL: &str = "io.cilium.k8s.policy.cluster";
pub const DEFAULT_CLUSTER: &str = "default";

/// Splits `source:key` into its parts. Only known sources count as a prefix, so a key that
/// merely contains a colon (rare, but legal in annotations) keeps it.
pub fn split_source(qualified: &str) -> (&str, &str) {
    if let Some((source, key)) = qualified.split_once(':')
        && matches!(
            source,
            SOURCE_K8S
                | SOURCE_RESERVED
                | SOURCE_CIDR
                | SOURCE_ANY
                | "fqdn"
                | "unspec"
                | "container"
        )
    {
        return (source, key);
    }
    (SOURCE_ANY, qualified)
}

/// The set of security-relevant labels of an identity. At most one value per (key, source).
/// Indexed by key so that a selector lookup is one map probe without allocation (selectors
/// are matched against every identity when a policy compiles).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelSet {
    /// key -> (source, value), sorted by source.
    labels: BTreeMap<String, Vec<(String, String)>>,
}

impl LabelSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, source: &str, key: &str, value: &str) {
        let entries = self.labels.entry(key.to_owned()).or_default();
        match entries.binary_search_by(|(s, _)| s.as_str().cmp(source)) {
            Ok(i) => entries[i].1 = value.to_owned(),
            Err(i) => entries.insert(i, (source.to_owned(), value.to_owned())),
        }
    }

    pub fn with(mut self, source: &str, key: &str, value: &str) -> Self {
        self.insert(source, key, value);
        self
    }

    /// Values of `key` from `source`, or from every source when `source` is `any`.
    pub fn values<'a>(&'a self, source: &'a str, key: &str) -> impl Iterator<Item = &'a str> {
        self.labels
            .get(key)
            .into_iter()
            .flatten()
            .filter(move |(s, _)| source == SOURCE_ANY || s == source)
            .map(|(_, v)| v.as_str())
    }

    pub fn has_source(&self, source: &str) -> bool {
        self.labels
            .values()
            .any(|entries| entries.iter().any(|(s, _)| s == source))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.labels.iter().flat_map(|(k, entries)| {
            entries
                .iter()
                .map(move |(s, v)| (s.as_str(), k.as_str(), v.as_str()))
        })
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// `source:key=value` strings, the form Cilium and Hubble print.
    pub fn to_strings(&self) -> Vec<String> {
        self.iter()
            .map(|(s, k, v)| {
                if v.is_empty() {
                    format!("{s}:{k}")
                } else {
                    format!("{s}:{k}={v}")
                }
            })
            .collect()
    }

    /// The security labels of a pod (SEMANTICS 1.3): its own labels, its namespace, its
    /// namespace's labels, its service account and the cluster name.
    pub fn for_pod(pod: &Pod, namespace: Option<&Namespace>) -> Self {
        let mut set = LabelSet::new();
        if let Some(labels) = &pod.metadata.labels {
            for (k, v) in labels {
                set.insert(SOURCE_K8S, k, v);
            }
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        set.insert(SOURCE_K8S, POD_NAMESPACE_LABEL, ns);
        if let Some(labels) = namespace.and_then(|n| n.metadata.labels.as_ref()) {
            for (k, v) in labels {
                set.insert(SOURCE_K8S, &format!("{NAMESPACE_LABELS_PREFIX}{k}"), v);
            }
        }
        // The API server fills in `default` when a pod names no service account; manifests
        // read from a directory often leave it out, so do the same here.
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref())
            .filter(|s| !s.is_empty())
            .unwrap_or("default");
        set.insert(SOURCE_K8S, SERVICE_ACCOUNT_LABEL, sa);
        set.insert(SOURCE_K8S, CLUSTER_LABEL, DEFAULT_CLUSTER);
        set
    }
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", self.to_strings().join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // SEMANTICS 1.2
    #[test]
    fn source_prefixes() {
        let cases = [
            ("k8s:app", ("k8s", "app")),
            ("any:app", ("any", "app")),
            ("app", ("any", "app")),
            ("reserved:host", ("reserved", "host")),
            (
                "k8s:io.kubernetes.pod.namespace",
                ("k8s", "io.kubernetes.pod.namespace"),
            ),
            ("example.com/tier", ("any", "example.com/tier")),
            ("k8s.io/name", ("any", "k8s.io/name")),
            ("weird:key", ("any", "weird:key")),
        ];
        for (input, want) in cases {
            assert_eq!(split_source(input), want, "{input}");
        }
    }

    #[test]
    fn values_respect_source() {
        let set = LabelSet::new()
            .with("k8s", "app", "web")
            .with("reserved", "host", "");
        assert_eq!(set.values("k8s", "app").collect::<Vec<_>>(), ["web"]);
        assert_eq!(set.values("any", "app").collect::<Vec<_>>(), ["web"]);
        assert_eq!(set.values("reserved", "app").count(), 0);
        assert_eq!(set.values("any", "host").collect::<Vec<_>>(), [""]);
        assert_eq!(set.values("k8s", "host").count(), 0);
    }
}
