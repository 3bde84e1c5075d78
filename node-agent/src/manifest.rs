//! Reading Kubernetes objects from YAML manifests: several documents per file and
//! `kind: List` are accepted, as `kubectl apply -f` does. Each problem becomes one
//! `ManifestError` printed as `FILE: KIND NAMESPACE/NAME: FIELD.PATH: reason`; a bad object
//! never hides the good ones around it.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_yaml_ng::Value;

use crate::policy::api::RuleSpec;
use crate::policy::{FieldError, Policy, PolicyKey, PolicyKind, convert_rules};

/// Files larger than this are refused outright rather than parsed into memory.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024 * 1024;

/// An object this agent uses.
#[derive(Debug, Clone)]
pub enum Object {
    Namespace(Arc<Namespace>),
    Pod(Arc<Pod>),
    Policy(Arc<Policy>),
}

/// What identifies an object across updates (`kubectl apply` replaces by this key).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKey {
    Namespace(String),
    Pod { namespace: String, name: String },
    Policy(PolicyKey),
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectKey::Namespace(name) => write!(f, "Namespace -/{name}"),
            ObjectKey::Pod { namespace, name } => write!(f, "Pod {namespace}/{name}"),
            ObjectKey::Policy(key) => key.fmt(f),
        }
    }
}

impl Object {
    pub fn key(&self) -> ObjectKey {
        match self {
            Object::Namespace(ns) => {
                ObjectKey::Namespace(ns.metadata.name.clone().unwrap_or_default())
            }
            Object::Pod(pod) => ObjectKey::Pod {
                namespace: pod_namespace(pod).to_owned(),
                name: pod.metadata.name.clone().unwrap_or_default(),
            },
            Object::Policy(p) => ObjectKey::Policy(p.key.clone()),
        }
    }
}

/// A pod's namespace, `default` when the manifest leaves it out (as `kubectl` does).
pub fn pod_namespace(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

/// One problem in one object of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    pub file: String,
    /// `KIND NAMESPACE/NAME`, or `document N` when the document could not be read at all.
    pub object: String,
    pub error: FieldError,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file, self.object, self.error)
    }
}

impl std::error::Error for ManifestError {}

/// What a file holds: the objects that are valid, and an error for each that is not.
#[derive(Debug, Default)]
pub struct Parsed {
    pub objects: Vec<Object>,
    pub errors: Vec<ManifestError>,
    /// Objects of kinds this agent does not use (Deployments, Services...), as
    /// `KIND NAMESPACE/NAME`; they are skipped, not errors.
    pub skipped: Vec<String>,
}

/// Reads and parses one file. I/O problems are reported like any other error.
pub fn read_file(path: &Path) -> Parsed {
    let file = path.display().to_string();
    let fail = |reason: String| Parsed {
        errors: vec![ManifestError {
            file: file.clone(),
            object: "-".into(),
            error: FieldError::new("-", reason),
        }],
        ..Parsed::default()
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() > MAX_MANIFEST_BYTES => {
            return fail(format!(
                "file is {} bytes; manifests larger than {MAX_MANIFEST_BYTES} bytes are refused",
                meta.len()
            ));
        }
        Ok(_) => {}
        Err(e) => return fail(format!("cannot read: {e}")),
    }
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => parse_str(&file, &text),
            Err(e) => fail(format!("not UTF-8 text: {e}")),
        },
        Err(e) => fail(format!("cannot read: {e}")),
    }
}

/// Parses every document of `text`; `file` names the source in errors.
pub fn parse_str(file: &str, text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(document) {
            Ok(Value::Null) => {}
            Ok(value) => parse_value(file, value, &mut parsed),
            Err(e) => {
                let location = e
                    .location()
                    .map(|l| format!("line {} column {}", l.line(), l.column()))
                    .unwrap_or_else(|| "-".into());
                parsed.errors.push(ManifestError {
                    file: file.to_owned(),
                    object: format!("document {}", index + 1),
                    error: FieldError::new(location, format!("invalid YAML: {e}")),
                });
                // The YAML stream cannot be trusted past a syntax error.
                break;
            }
        }
    }
    parsed
}

fn text_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut v = value;
    for key in path {
        v = v.get(*key)?;
    }
    v.as_str()
}

fn parse_value(file: &str, value: Value, parsed: &mut Parsed) {
    let kind = text_at(&value, &["kind"]).unwrap_or("").to_owned();
    let name = text_at(&value, &["metadata", "name"])
        .unwrap_or("")
        .to_owned();
    let namespace = text_at(&value, &["metadata", "namespace"]).map(str::to_owned);
    let cluster_scoped = matches!(
        kind.as_str(),
        "Namespace" | "CiliumClusterwideNetworkPolicy"
    );
    let object = format!(
        "{} {}/{}",
        if kind.is_empty() { "-" } else { &kind },
        if cluster_scoped || kind.is_empty() {
            "-"
        } else {
            namespace.as_deref().unwrap_or("default")
        },
        if name.is_empty() { "-" } else { &name }
    );
    let mut error = |path: String, reason: String| {
        parsed.errors.push(ManifestError {
            file: file.to_owned(),
            object: object.clone(),
            error: FieldError::new(path, reason),
        });
    };
    if !value.is_mapping() {
        error("-".into(), "a Kubernetes object must be a mapping".into());
        return;
    }
    let api_version = text_at(&value, &["apiVersion"]).unwrap_or("");
    if kind == "List" || kind.ends_with("List") && value.get("items").is_some() {
        match value.get("items") {
            Some(Value::Sequence(items)) => {
                for item in items.clone() {
                    parse_value(file, item, parsed);
                }
            }
            Some(Value::Null) | None => {}
            Some(_) => error("items".into(), "items must be a list".into()),
        }
        return;
    }
    if kind.is_empty() {
        error("kind".into(), "kind is required".into());
        return;
    }
    if name.is_empty()
        && matches!(
            kind.as_str(),
            "Namespace" | "Pod" | "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy"
        )
    {
        error("metadata.name".into(), "metadata.name is required".into());
        return;
    }
    match kind.as_str() {
        "Namespace" | "Pod" if api_version != "v1" => error(
            "apiVersion".into(),
            format!("{kind} needs apiVersion v1, not {api_version:?}"),
        ),
        "Namespace" => match typed::<Namespace>(value) {
            Ok(ns) => parsed.objects.push(Object::Namespace(Arc::new(ns))),
            Err(e) => error(e.path, e.reason),
        },
        "Pod" => match typed::<Pod>(value) {
            Ok(pod) => parsed.objects.push(Object::Pod(Arc::new(pod))),
            Err(e) => error(e.path, e.reason),
        },
        "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy" => {
            if api_version != "cilium.io/v2" {
                error(
                    "apiVersion".into(),
                    format!("{kind} needs apiVersion cilium.io/v2, not {api_version:?}"),
                );
                return;
            }
            let kind = if kind == "CiliumNetworkPolicy" {
                PolicyKind::Namespaced
            } else {
                PolicyKind::Clusterwide
            };
            match parse_policy(kind, value) {
                Ok(policy) => parsed.objects.push(Object::Policy(Arc::new(policy))),
                Err(errors) => {
                    for e in errors {
                        error(e.path, e.reason);
                    }
                }
            }
        }
        _ => parsed.skipped.push(object.clone()),
    }
}

fn typed<T: DeserializeOwned>(value: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        FieldError::new(
            if path == "." { "-".into() } else { path },
            e.into_inner().to_string(),
        )
    })
}

/// A CNP or CCNP object as it appears on the wire.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyObject {
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    metadata: ObjectMeta,
    spec: Option<RuleSpec>,
    specs: Option<Vec<RuleSpec>>,
    #[serde(rename = "status")]
    _status: Option<IgnoredAny>,
}

fn parse_policy(kind: PolicyKind, value: Value) -> Result<Policy, Vec<FieldError>> {
    let object: PolicyObject = typed(value).map_err(|e| vec![e])?;
    let key = PolicyKey {
        kind,
        namespace: match kind {
            PolicyKind::Namespaced => Some(
                object
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
            ),
            // Cluster-scoped objects have no namespace; Kubernetes ignores one if given.
            PolicyKind::Clusterwide => None,
        },
        name: object.metadata.name.clone().unwrap_or_default(),
    };
    let mut specs = Vec::new();
    if let Some(spec) = object.spec {
        specs.push(("spec".to_owned(), spec));
    }
    for (i, spec) in object.specs.into_iter().flatten().enumerate() {
        specs.push((format!("specs[{i}]"), spec));
    }
    if specs.is_empty() {
        return Err(vec![FieldError::new("spec", "spec or specs is required")]);
    }
    let rules = convert_rules(&key, &specs)?;
    Ok(Policy { key, rules })
}
