//! The CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy wire format (`cilium.io/v2`),
//! exactly as users write it. Every struct rejects unknown fields, so a typo such as
//! `toPort:` is an error instead of a silently wider policy. Fields that Cilium has but this
//! enforcer does not implement are still declared, so that `policy::rule` can reject them
//! with "not supported" rather than the less helpful "unknown field".

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;

/// `spec` / `specs[]` of a CNP or CCNP.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSpec {
    pub endpoint_selector: Option<LabelSelector>,
    pub node_selector: Option<IgnoredAny>,
    pub ingress: Option<Vec<IngressRule>>,
    pub ingress_deny: Option<Vec<IngressDenyRule>>,
    pub egress: Option<Vec<EgressRule>>,
    pub egress_deny: Option<Vec<EgressDenyRule>>,
    pub enable_default_deny: Option<DefaultDeny>,
    pub labels: Option<Vec<RuleLabel>>,
    pub description: Option<String>,
    pub log: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefaultDeny {
    pub ingress: Option<bool>,
    pub egress: Option<bool>,
}

/// A label attached to a rule (metadata only, shown in `explain`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleLabel {
    pub key: String,
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub source: String,
}

/// A Kubernetes label selector; keys may carry a source prefix (`k8s:`, `any:`, `reserved:`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    pub match_labels: Option<BTreeMap<String, String>>,
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: String,
    pub values: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    pub from_endpoints: Option<Vec<LabelSelector>>,
    #[serde(rename = "fromCIDR")]
    pub from_cidr: Option<Vec<String>>,
    #[serde(rename = "fromCIDRSet")]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    pub from_entities: Option<Vec<String>>,
    pub to_ports: Option<Vec<PortRule>>,
    pub from_requires: Option<IgnoredAny>,
    pub from_groups: Option<IgnoredAny>,
    pub from_nodes: Option<IgnoredAny>,
    pub icmps: Option<IgnoredAny>,
    pub authentication: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressDenyRule {
    pub from_endpoints: Option<Vec<LabelSelector>>,
    #[serde(rename = "fromCIDR")]
    pub from_cidr: Option<Vec<String>>,
    #[serde(rename = "fromCIDRSet")]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    pub from_entities: Option<Vec<String>>,
    pub to_ports: Option<Vec<PortDenyRule>>,
    pub from_requires: Option<IgnoredAny>,
    pub from_groups: Option<IgnoredAny>,
    pub from_nodes: Option<IgnoredAny>,
    pub icmps: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    pub to_endpoints: Option<Vec<LabelSelector>>,
    #[serde(rename = "toCIDR")]
    pub to_cidr: Option<Vec<String>>,
    #[serde(rename = "toCIDRSet")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    pub to_entities: Option<Vec<String>>,
    #[serde(rename = "toFQDNs")]
    pub to_fqdns: Option<Vec<FqdnSelector>>,
    pub to_ports: Option<Vec<PortRule>>,
    pub to_requires: Option<IgnoredAny>,
    pub to_services: Option<IgnoredAny>,
    pub to_groups: Option<IgnoredAny>,
    pub to_nodes: Option<IgnoredAny>,
    pub icmps: Option<IgnoredAny>,
    pub authentication: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressDenyRule {
    pub to_endpoints: Option<Vec<LabelSelector>>,
    #[serde(rename = "toCIDR")]
    pub to_cidr: Option<Vec<String>>,
    #[serde(rename = "toCIDRSet")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    pub to_entities: Option<Vec<String>>,
    pub to_ports: Option<Vec<PortDenyRule>>,
    pub to_requires: Option<IgnoredAny>,
    pub to_services: Option<IgnoredAny>,
    pub to_groups: Option<IgnoredAny>,
    pub to_nodes: Option<IgnoredAny>,
    pub icmps: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CidrRule {
    pub cidr: Option<String>,
    pub except: Option<Vec<String>>,
    pub cidr_group_ref: Option<IgnoredAny>,
    pub cidr_group_selector: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRule {
    pub ports: Option<Vec<PortProtocol>>,
    pub rules: Option<L7Rules>,
    #[serde(rename = "terminatingTLS")]
    pub terminating_tls: Option<IgnoredAny>,
    #[serde(rename = "originatingTLS")]
    pub originating_tls: Option<IgnoredAny>,
    pub server_names: Option<IgnoredAny>,
    pub listener: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortDenyRule {
    pub ports: Option<Vec<PortProtocol>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortProtocol {
    pub port: Option<PortValue>,
    pub end_port: Option<i64>,
    pub protocol: Option<String>,
}

/// Cilium's schema says `port` is a string, but users often write `port: 80`; both mean
/// the same thing, so both are accepted.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum PortValue {
    Number(i64),
    Text(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L7Rules {
    pub http: Option<Vec<HttpRule>>,
    pub dns: Option<Vec<DnsRule>>,
    pub kafka: Option<IgnoredAny>,
    #[serde(rename = "l7proto")]
    pub l7_proto: Option<IgnoredAny>,
    pub l7: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRule {
    pub method: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub headers: Option<Vec<String>>,
    pub header_matches: Option<Vec<HeaderMatch>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: Option<String>,
    pub value: Option<String>,
    pub mismatch: Option<String>,
    pub secret: Option<SecretRef>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    pub namespace: Option<String>,
    pub name: Option<String>,
}

/// A `rules.dns[]` item and a `toFQDNs[]` item share this shape (SEMANTICS 5.3, 6.1).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsRule {
    pub match_name: Option<String>,
    pub match_pattern: Option<String>,
}

pub type FqdnSelector = DnsRule;
