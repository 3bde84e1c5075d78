//! HTTP rules as written in policy (SEMANTICS 4.1), before compilation.
//!
//! Field names follow CiliumNetworkPolicy `toPorts[].rules.http[]` (camelCase in YAML).
//! Unknown fields are refused rather than dropped: a misspelt `paht:` would otherwise
//! silently widen the rule to every path.

use serde::{Deserialize, Serialize};

/// One rule as written in policy (CiliumNetworkPolicy `rules.http[]` item).
///
/// Every present field must match (AND, SEMANTICS 3.3); an absent field, or one set to the
/// empty string as Cilium's Go types read it, places no constraint. `{}` matches every
/// request (SEMANTICS 4.9).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRuleSpec {
    /// Regex over the request method (SEMANTICS 4.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Regex over the normalised path including the query (SEMANTICS 4.3, 4.6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Regex over the Host header / `:authority` as sent (SEMANTICS 4.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `"Name: value"` (exact value) or `"Name"` (presence) entries (SEMANTICS 4.7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// Structured header requirements, optionally with a mismatch action (SEMANTICS 4.8).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header_matches: Vec<HeaderMatchSpec>,
}

/// A `headerMatches[]` item (SEMANTICS 4.8).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatchSpec {
    /// Header name, case-insensitive. Required.
    pub name: String,
    /// Expected exact value. Absent (or empty) means presence only, unless `secret` is set,
    /// in which case this is the fallback used when the secret cannot be read (as in Cilium).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Kubernetes secret holding the expected value. Its value is never logged in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretRef>,
    /// What to do instead of denying when the header does not match. Absent: deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<MismatchAction>,
}

/// Reference to a Kubernetes secret with exactly one entry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// Namespace of the secret; absent means the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the secret. Required.
    pub name: String,
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.namespace.as_deref().filter(|ns| !ns.is_empty()) {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// `headerMatches[].mismatch` (SEMANTICS 4.8): modify the request instead of denying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MismatchAction {
    /// Allow, and record the mismatch.
    Log,
    /// Allow, adding the expected value as a further header.
    Add,
    /// Allow, removing the header.
    Delete,
    /// Allow, setting the header to the expected value.
    Replace,
}

impl MismatchAction {
    /// The policy spelling: `LOG`, `ADD`, `DELETE` or `REPLACE`.
    pub fn as_str(self) -> &'static str {
        match self {
            MismatchAction::Log => "LOG",
            MismatchAction::Add => "ADD",
            MismatchAction::Delete => "DELETE",
            MismatchAction::Replace => "REPLACE",
        }
    }
}

impl std::fmt::Display for MismatchAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // SEMANTICS 4.1, 4.8: the policy shape, with the enum spelled as in policy.
    #[test]
    fn spec_serde_shape() {
        let json = r#"{"method":"GET","path":"/a","headers":["X: 1"],
        "headerMatches":[{"name":"X-T","secret":{"namespace":"ns","name":"s"},"mismatch":"REPLACE"}]}"#;
        let spec: HttpRuleSpec = serde_json::from_str(json).expect("parses");
        assert_eq!(
            spec.header_matches.first().and_then(|m| m.mismatch),
            Some(MismatchAction::Replace)
        );
        let back = serde_json::to_value(&spec).expect("serialises");
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(json).expect("json")
        );
        assert_eq!(
            serde_json::to_string(&HttpRuleSpec::default()).expect("serialises"),
            "{}"
        );
        for bad in [
            r#"{"paht":"/a"}"#,
            r#"{"headerMatches":[{"name":"X","mismatch":"log"}]}"#,
            r#"{"headerMatches":[{"value":"1"}]}"#,
        ] {
            assert!(serde_json::from_str::<HttpRuleSpec>(bad).is_err(), "{bad}");
        }
    }
}
