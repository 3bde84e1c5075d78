//! Label selectors (SEMANTICS 1.2, 1.5): `matchLabels` and `matchExpressions` compiled into
//! one list of requirements that all must hold. An empty selector matches every label set.

use std::fmt;

use crate::labels::{LabelSet, SOURCE_ANY, split_source};
use crate::policy::FieldError;
use crate::policy::api::LabelSelector;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Requirement {
    pub source: String,
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

impl Requirement {
    fn matches(&self, labels: &LabelSet) -> bool {
        let mut values = labels.values(&self.source, &self.key);
        match self.operator {
            Operator::In => values.any(|v| self.values.iter().any(|w| w == v)),
            // Kubernetes semantics: NotIn also holds when the label is absent.
            Operator::NotIn => values.all(|v| self.values.iter().all(|w| w != v)),
            Operator::Exists => values.next().is_some(),
            Operator::DoesNotExist => values.next().is_none(),
        }
    }
}

/// A compiled endpoint selector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches everything (`{}`).
    pub fn wildcard() -> Self {
        Self::default()
    }

    /// Matches labels carrying exactly `source:key=value`.
    pub fn label(source: &str, key: &str, value: &str) -> Self {
        let mut s = Self::default();
        s.add(Requirement {
            source: source.to_owned(),
            key: key.to_owned(),
            operator: Operator::In,
            values: vec![value.to_owned()],
        });
        s
    }

    /// Compiles a selector as written in policy; `path` names it in errors.
    pub fn from_api(api: &LabelSelector, path: &str) -> Result<Self, Vec<FieldError>> {
        let mut selector = Self::default();
        let mut errors = Vec::new();
        for (qualified, value) in api.match_labels.iter().flatten() {
            let (source, key) = split_source(qualified);
            if key.is_empty() {
                errors.push(FieldError::new(
                    format!("{path}.matchLabels"),
                    format!("label key {qualified:?} is empty"),
                ));
                continue;
            }
            selector.add(Requirement {
                source: source.to_owned(),
                key: key.to_owned(),
                operator: Operator::In,
                values: vec![value.clone()],
            });
        }
        for (i, expr) in api.match_expressions.iter().flatten().enumerate() {
            let here = format!("{path}.matchExpressions[{i}]");
            let (source, key) = split_source(&expr.key);
            if key.is_empty() {
                errors.push(FieldError::new(
                    format!("{here}.key"),
                    "key must not be empty",
                ));
                continue;
            }
            let operator = match expr.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    errors.push(FieldError::new(
                        format!("{here}.operator"),
                        format!(
                            "unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"
                        ),
                    ));
                    continue;
                }
            };
            let mut values = expr.values.clone().unwrap_or_default();
            match operator {
                Operator::In | Operator::NotIn if values.is_empty() => {
                    errors.push(FieldError::new(
                        format!("{here}.values"),
                        format!("operator {} needs at least one value", expr.operator),
                    ));
                    continue;
                }
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                    errors.push(FieldError::new(
                        format!("{here}.values"),
                        format!("operator {} takes no values", expr.operator),
                    ));
                    continue;
                }
                _ => {}
            }
            values.sort();
            values.dedup();
            selector.add(Requirement {
                source: source.to_owned(),
                key: key.to_owned(),
                operator,
                values,
            });
        }
        if errors.is_empty() {
            Ok(selector)
        } else {
            Err(errors)
        }
    }

    pub fn add(&mut self, requirement: Requirement) {
        if !self.requirements.contains(&requirement) {
            self.requirements.push(requirement);
            self.requirements.sort();
        }
    }

    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    pub fn is_wildcard(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether any requirement names `key` from the k8s or any source.
    pub fn has_key(&self, key: &str) -> bool {
        self.requirements
            .iter()
            .any(|r| r.key == key && (r.source == "k8s" || r.source == SOURCE_ANY))
    }

    pub fn has_key_prefix(&self, prefix: &str) -> bool {
        self.requirements
            .iter()
            .any(|r| r.key.starts_with(prefix) && (r.source == "k8s" || r.source == SOURCE_ANY))
    }

    pub fn has_source(&self, source: &str) -> bool {
        self.requirements.iter().any(|r| r.source == source)
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| {
                let name = format!("{}:{}", r.source, r.key);
                match r.operator {
                    Operator::In if r.values.len() == 1 => format!("{name}={}", r.values[0]),
                    Operator::In => format!("{name} in ({})", r.values.join(",")),
                    Operator::NotIn => format!("{name} notin ({})", r.values.join(",")),
                    Operator::Exists => name,
                    Operator::DoesNotExist => format!("!{name}"),
                }
            })
            .collect();
        write!(f, "{{{}}}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::policy::api::LabelSelectorRequirement;

    fn sel(labels: &[(&str, &str)], exprs: &[(&str, &str, &[&str])]) -> Selector {
        let api = LabelSelector {
            match_labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            match_expressions: Some(
                exprs
                    .iter()
                    .map(|(k, op, vs)| LabelSelectorRequirement {
                        key: k.to_string(),
                        operator: op.to_string(),
                        values: Some(vs.iter().map(|v| v.to_string()).collect()),
                    })
                    .collect(),
            ),
        };
        Selector::from_api(&api, "sel").expect("valid selector")
    }

    // SEMANTICS 1.2 and 1.5
    #[test]
    fn matching_table() {
        let pod = LabelSet::new()
            .with("k8s", "app", "web")
            .with("k8s", "tier", "front")
            .with("k8s", "io.kubernetes.pod.namespace", "prod");
        let host = LabelSet::new().with("reserved", "host", "");
        let cases: Vec<(Selector, &LabelSet, bool, &str)> = vec![
            (sel(&[], &[]), &pod, true, "empty selects all"),
            (sel(&[], &[]), &host, true, "empty selects reserved too"),
            (
                sel(&[("app", "web")], &[]),
                &pod,
                true,
                "no prefix = any source",
            ),
            (sel(&[("k8s:app", "web")], &[]), &pod, true, "k8s prefix"),
            (sel(&[("any:app", "web")], &[]), &pod, true, "any prefix"),
            (
                sel(&[("reserved:app", "web")], &[]),
                &pod,
                false,
                "wrong source",
            ),
            (sel(&[("app", "db")], &[]), &pod, false, "wrong value"),
            (
                sel(&[("reserved:host", "")], &[]),
                &host,
                true,
                "reserved label",
            ),
            (
                sel(&[("reserved:host", "")], &[]),
                &pod,
                false,
                "reserved vs pod",
            ),
            (sel(&[], &[("app", "In", &["db", "web"])]), &pod, true, "In"),
            (sel(&[], &[("app", "In", &["db"])]), &pod, false, "In miss"),
            (sel(&[], &[("app", "NotIn", &["db"])]), &pod, true, "NotIn"),
            (
                sel(&[], &[("app", "NotIn", &["web"])]),
                &pod,
                false,
                "NotIn hit",
            ),
            (
                sel(&[], &[("zone", "NotIn", &["a"])]),
                &pod,
                true,
                "NotIn absent",
            ),
            (sel(&[], &[("tier", "Exists", &[])]), &pod, true, "Exists"),
            (
                sel(&[], &[("zone", "Exists", &[])]),
                &pod,
                false,
                "Exists miss",
            ),
            (
                sel(&[], &[("zone", "DoesNotExist", &[])]),
                &pod,
                true,
                "DNE",
            ),
            (
                sel(&[], &[("app", "DoesNotExist", &[])]),
                &pod,
                false,
                "DNE hit",
            ),
            (
                sel(&[("app", "web")], &[("tier", "In", &["back"])]),
                &pod,
                false,
                "all requirements must hold",
            ),
        ];
        for (selector, labels, want, name) in cases {
            assert_eq!(selector.matches(labels), want, "{name}: {selector}");
        }
    }

    #[test]
    fn invalid_expressions_name_the_field() {
        let api = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "a".into(),
                    operator: "Equals".into(),
                    values: None,
                },
                LabelSelectorRequirement {
                    key: "b".into(),
                    operator: "In".into(),
                    values: None,
                },
                LabelSelectorRequirement {
                    key: "c".into(),
                    operator: "Exists".into(),
                    values: Some(vec!["x".into()]),
                },
            ]),
        };
        let errors =
            Selector::from_api(&api, "spec.endpointSelector").expect_err("invalid selector");
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.endpointSelector.matchExpressions[0].operator",
                "spec.endpointSelector.matchExpressions[1].values",
                "spec.endpointSelector.matchExpressions[2].values"
            ]
        );
    }
}
