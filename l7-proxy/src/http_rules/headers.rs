//! Header requirements: `headers` entries (SEMANTICS 4.7) and `headerMatches` (4.8).
//!
//! Names compare case-insensitively, values exactly; several values of one header are
//! joined with `,` before comparison (Envoy's `getAllOfHeaderAsString`, which Cilium uses).

use std::borrow::Cow;
use std::fmt;

use super::error::HttpRuleError;
use super::spec::{HeaderMatchSpec, MismatchAction, SecretRef};

/// A change the proxy applies to the request before forwarding it (SEMANTICS 4.8).
/// Edits are listed in the order they must be applied.
#[derive(Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Append one header line, keeping any existing ones (`ADD`).
    Add {
        /// Lower-case header name.
        name: String,
        /// Value to add.
        value: String,
        /// The value comes from a secret: never log it (its `Debug` shows `[redacted]`).
        sensitive: bool,
    },
    /// Remove every header line of this name (`DELETE`).
    Remove {
        /// Lower-case header name.
        name: String,
    },
    /// Remove every header line of this name, then add one with this value (`REPLACE`,
    /// and the Host of an absolute-form target).
    Set {
        /// Lower-case header name.
        name: String,
        /// Value to set.
        value: String,
        /// The value comes from a secret: never log it (its `Debug` shows `[redacted]`).
        sensitive: bool,
    },
}

impl HeaderEdit {
    /// Applies the edit to a header list of (name, value) pairs in arrival order.
    pub fn apply<N, V>(&self, headers: &mut Vec<(N, V)>)
    where
        N: AsRef<str> + From<String>,
        V: From<String>,
    {
        match self {
            HeaderEdit::Add { name, value, .. } => {
                headers.push((N::from(name.clone()), V::from(value.clone())));
            }
            HeaderEdit::Remove { name } => {
                headers.retain(|(n, _)| !n.as_ref().eq_ignore_ascii_case(name));
            }
            HeaderEdit::Set { name, value, .. } => {
                headers.retain(|(n, _)| !n.as_ref().eq_ignore_ascii_case(name));
                headers.push((N::from(name.clone()), V::from(value.clone())));
            }
        }
    }
}

impl fmt::Debug for HeaderEdit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |value: &str, sensitive: bool| {
            if sensitive {
                REDACTED.to_owned()
            } else {
                format!("{value:?}")
            }
        };
        match self {
            HeaderEdit::Add {
                name,
                value,
                sensitive,
            } => write!(f, "Add({name:?}, {})", shown(value, *sensitive)),
            HeaderEdit::Remove { name } => write!(f, "Remove({name:?})"),
            HeaderEdit::Set {
                name,
                value,
                sensitive,
            } => write!(f, "Set({name:?}, {})", shown(value, *sensitive)),
        }
    }
}

/// Written wherever a secret-sourced value would appear (SEMANTICS 4.8).
pub(crate) const REDACTED: &str = "[redacted]";

/// RFC 9110 `token`: the only valid header names.
pub(crate) fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// A value that may be sent in a header line: no control characters but tab.
fn is_field_value(value: &str) -> bool {
    value.chars().all(|c| c == '\t' || !c.is_ascii_control())
}

/// All values of a header, joined with `,` in arrival order; `None` when absent.
pub(crate) fn joined_value<'h, N, V>(headers: &'h [(N, V)], name: &str) -> Option<Cow<'h, str>>
where
    N: AsRef<str>,
    V: AsRef<str>,
{
    let mut values = headers
        .iter()
        .filter(|(n, _)| n.as_ref().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_ref());
    let first = values.next()?;
    match values.next() {
        None => Some(Cow::Borrowed(first)),
        Some(second) => {
            let mut joined = format!("{first},{second}");
            for v in values {
                joined.push(',');
                joined.push_str(v);
            }
            Some(Cow::Owned(joined))
        }
    }
}

/// Compares a received value with an expected one without stopping at the first
/// difference, so response timing does not reveal how much of a secret was guessed (Cilium
/// uses `CRYPTO_memcmp` here). Only the length can be told apart.
fn same_value(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && std::hint::black_box(
            a.bytes()
                .zip(b.bytes())
                .fold(0u8, |acc, (x, y)| acc | (x ^ y)),
        ) == 0
}

/// What a header must look like.
#[derive(Debug, Clone)]
pub(crate) enum Expected {
    /// Present, any value.
    Present,
    /// Present with exactly this (joined) value.
    Exact(String),
    /// Sourced from a secret whose value is not available and has no inline fallback:
    /// never satisfied, whatever the mismatch action (Cilium: "header match will fail").
    Unavailable(SecretRef),
}

/// A requirement that denies the request when unmet: every `headers` entry, and the
/// `headerMatches` items without a mismatch action.
#[derive(Debug, Clone)]
pub(crate) struct HeaderCheck {
    /// Lower-case name.
    pub(crate) name: String,
    pub(crate) expected: Expected,
    /// Where it came from, for deny reasons: `headers[1]`, `headerMatches[0]`.
    pub(crate) origin: String,
}

impl HeaderCheck {
    pub(crate) fn is_met<N: AsRef<str>, V: AsRef<str>>(&self, headers: &[(N, V)]) -> bool {
        match &self.expected {
            Expected::Unavailable(_) => false,
            Expected::Present => joined_value(headers, &self.name).is_some(),
            Expected::Exact(want) => {
                joined_value(headers, &self.name).is_some_and(|got| same_value(&got, want))
            }
        }
    }

    /// Why the check is unmet, without echoing request values.
    pub(crate) fn explain<N: AsRef<str>, V: AsRef<str>>(&self, headers: &[(N, V)]) -> String {
        let name = &self.name;
        match (&self.expected, joined_value(headers, name)) {
            (Expected::Unavailable(secret), _) => {
                format!(
                    "value of secret {secret} is not available, so header {name:?} cannot match"
                )
            }
            (_, None) => format!("header {name:?} is absent"),
            (Expected::Exact(_), Some(_)) => format!("header {name:?} has another value"),
            (Expected::Present, Some(_)) => format!("header {name:?} is present"),
        }
    }
}

/// A `headerMatches` item with a mismatch action: it never denies, it edits or logs.
#[derive(Debug, Clone)]
pub(crate) struct HeaderAction {
    /// Lower-case name.
    pub(crate) name: String,
    /// `None`: presence only.
    pub(crate) expected: Option<String>,
    /// Sourced from a secret: neither the expected nor the received value is logged.
    pub(crate) sensitive: bool,
    pub(crate) action: MismatchAction,
}

/// What a header action did to one request.
#[derive(Debug, Default)]
pub(crate) struct ActionOutcome {
    pub(crate) edit: Option<HeaderEdit>,
    pub(crate) logged: Option<String>,
}

impl HeaderAction {
    /// Mirrors Cilium's proxy: on a match nothing happens; on a mismatch the action runs and
    /// the mismatch is recorded as `name: expected E, got G (ACTION)`.
    pub(crate) fn run<N: AsRef<str>, V: AsRef<str>>(&self, headers: &[(N, V)]) -> ActionOutcome {
        let actual = joined_value(headers, &self.name);
        let matches = match (&self.expected, &actual) {
            (None, present) => present.is_some(),
            (Some(want), Some(got)) => same_value(want, got),
            (Some(_), None) => false,
        };
        if matches {
            return ActionOutcome::default();
        }
        let value = self.expected.clone().unwrap_or_default();
        let edit = match self.action {
            MismatchAction::Log => None,
            MismatchAction::Add => Some(HeaderEdit::Add {
                name: self.name.clone(),
                value,
                sensitive: self.sensitive,
            }),
            // Nothing to remove when the header is absent.
            MismatchAction::Delete => actual.is_some().then(|| HeaderEdit::Remove {
                name: self.name.clone(),
            }),
            MismatchAction::Replace => Some(HeaderEdit::Set {
                name: self.name.clone(),
                value,
                sensitive: self.sensitive,
            }),
        };
        let expected = match (&self.expected, self.sensitive) {
            (None, _) => "present".to_owned(),
            (Some(_), true) => REDACTED.to_owned(),
            (Some(v), false) => format!("{v:?}"),
        };
        let got = match (&actual, self.sensitive) {
            (None, _) => "absent".to_owned(),
            (Some(_), true) => REDACTED.to_owned(),
            (Some(v), false) => format!("{v:?}"),
        };
        ActionOutcome {
            edit,
            logged: Some(format!(
                "{}: expected {expected}, got {got} ({})",
                self.name, self.action
            )),
        }
    }
}

/// Parses a `headers[index]` entry (SEMANTICS 4.7), the way Cilium does: split at the
/// first space; with a space, trailing `:` are cut from the name and the rest is the exact
/// value; without one, the whole entry is a name that must be present. An empty value
/// (`"X-Foo: "`) means presence, as an empty exact match does in Envoy.
pub(crate) fn parse_header_entry(index: usize, entry: &str) -> Result<HeaderCheck, HttpRuleError> {
    let invalid = |reason: String| HttpRuleError::InvalidHeader {
        index,
        entry: entry.to_owned(),
        reason,
    };
    let (name, expected) = match entry.split_once(' ') {
        Some((name, value)) => {
            let name = name.trim_end_matches(':');
            if value.is_empty() {
                (name, Expected::Present)
            } else {
                (name, Expected::Exact(value.to_owned()))
            }
        }
        None => (entry, Expected::Present),
    };
    if name.is_empty() {
        return Err(invalid("empty header name".to_owned()));
    }
    if !is_token(name) {
        let hint = if name.contains(':') {
            " (write \"Name: value\", with a space after the colon)"
        } else {
            ""
        };
        return Err(invalid(format!(
            "header name {name:?} is not a valid token{hint}"
        )));
    }
    if let Expected::Exact(value) = &expected
        && !is_field_value(value)
    {
        return Err(invalid("value contains a control character".to_owned()));
    }
    Ok(HeaderCheck {
        name: name.to_ascii_lowercase(),
        expected,
        origin: format!("headers[{index}]"),
    })
}

/// A compiled `headerMatches[index]` item: a deny-on-mismatch check, or an action.
#[derive(Debug, Clone)]
pub(crate) enum CompiledHeaderMatch {
    Check(HeaderCheck),
    Action(HeaderAction),
}

/// Compiles `headerMatches[index]` (SEMANTICS 4.8). `secret_value` is the secret's value
/// when the caller could read it.
///
/// As in Cilium: the secret's value wins over `value`; when the secret cannot be read,
/// `value` is the fallback; with neither, the match can never be satisfied and the rule
/// never matches, whatever the mismatch action. A match that involves a secret is
/// sensitive even when it falls back to `value`.
pub(crate) fn compile_header_match(
    index: usize,
    spec: &HeaderMatchSpec,
    secret_value: Option<String>,
) -> Result<CompiledHeaderMatch, HttpRuleError> {
    let invalid = |field: &'static str, reason: String| HttpRuleError::InvalidHeaderMatch {
        index,
        field,
        reason,
    };
    if spec.name.is_empty() {
        return Err(invalid("name", "name is required".to_owned()));
    }
    if !is_token(&spec.name) {
        return Err(invalid(
            "name",
            format!("header name {:?} is not a valid token", spec.name),
        ));
    }
    let inline = spec.value.clone().filter(|v| !v.is_empty());
    if inline.as_deref().is_some_and(|v| !is_field_value(v)) {
        return Err(invalid(
            "value",
            "value contains a control character".to_owned(),
        ));
    }
    if let Some(secret) = &spec.secret
        && secret.name.is_empty()
    {
        return Err(invalid("secret.name", "secret name is required".to_owned()));
    }
    let name = spec.name.to_ascii_lowercase();
    let origin = format!("headerMatches[{index}]");
    // A secret value that is empty or could not be sent in a header counts as unreadable;
    // unlike policy text it is never echoed in an error.
    let secret_value = secret_value.filter(|v| !v.is_empty() && is_field_value(v));
    let (expected, sensitive) = match &spec.secret {
        None => (inline.map_or(Expected::Present, Expected::Exact), false),
        Some(secret) => match secret_value.or(inline) {
            Some(v) => (Expected::Exact(v), true),
            None => (Expected::Unavailable(secret.clone()), true),
        },
    };
    match (spec.mismatch, expected) {
        (None, expected) | (Some(_), expected @ Expected::Unavailable(_)) => {
            Ok(CompiledHeaderMatch::Check(HeaderCheck {
                name,
                expected,
                origin,
            }))
        }
        (Some(action), Expected::Present) => Ok(CompiledHeaderMatch::Action(HeaderAction {
            name,
            expected: None,
            sensitive,
            action,
        })),
        (Some(action), Expected::Exact(v)) => Ok(CompiledHeaderMatch::Action(HeaderAction {
            name,
            expected: Some(v),
            sensitive,
            action,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // SEMANTICS 4.7: entry syntax.
    #[test]
    fn parses_header_entries() {
        let cases: [(&str, &str, Option<&str>); 6] = [
            ("X-Foo: bar", "x-foo", Some("bar")),
            ("X-Foo bar", "x-foo", Some("bar")),
            ("X-Foo:: a b", "x-foo", Some("a b")),
            ("X-Foo", "x-foo", None),
            ("X-Foo: ", "x-foo", None),
            ("x-foo:  two", "x-foo", Some(" two")),
        ];
        for (entry, name, value) in cases {
            let check = parse_header_entry(0, entry).expect("valid entry");
            assert_eq!(check.name, name, "entry {entry:?}");
            match (&check.expected, value) {
                (Expected::Present, None) => {}
                (Expected::Exact(got), Some(want)) => assert_eq!(got, want, "entry {entry:?}"),
                (other, _) => panic!("entry {entry:?}: unexpected {other:?}"),
            }
        }
    }

    // SEMANTICS 4.7: invalid names are compile errors.
    #[test]
    fn refuses_bad_header_entries() {
        let cases = [
            ("", "empty header name"),
            (": x", "empty header name"),
            ("X-Foo:", "not a valid token (write"),
            ("X-Foo:bar", "not a valid token (write"),
            ("X(Foo) bar", "not a valid token"),
            (":authority foo", "not a valid token"),
            ("X-Foo a\r\nEvil: 1", "control character"),
        ];
        for (entry, reason) in cases {
            let err = parse_header_entry(3, entry).expect_err(entry);
            assert_eq!(err.field_path(), "headers[3]");
            assert!(err.to_string().contains(reason), "{entry:?}: {err}");
        }
    }

    #[test]
    fn compares_values_exactly() {
        let cases = [
            ("a", "a", true),
            ("a", "A", false),
            ("ab", "a", false),
            ("", "", true),
        ];
        for (a, b, want) in cases {
            assert_eq!(same_value(a, b), want, "{a:?} vs {b:?}");
        }
    }

    // SEMANTICS 4.7: several values joined with ',' in arrival order.
    #[test]
    fn joins_repeated_headers() {
        let headers = [("A", "1"), ("b", "x"), ("a", "2"), ("A", "")];
        assert_eq!(joined_value(&headers, "a").as_deref(), Some("1,2,"));
        assert_eq!(joined_value(&headers, "B").as_deref(), Some("x"));
        assert_eq!(joined_value(&headers, "c"), None);
    }

    #[test]
    fn edits_apply_in_order_and_redact_secrets() {
        let mut headers: Vec<(String, String)> =
            vec![("X-A".into(), "1".into()), ("x-a".into(), "2".into())];
        let set = HeaderEdit::Set {
            name: "x-a".into(),
            value: "s3cret".into(),
            sensitive: true,
        };
        set.apply(&mut headers);
        assert_eq!(headers, vec![("x-a".to_owned(), "s3cret".to_owned())]);
        HeaderEdit::Add {
            name: "x-b".into(),
            value: "v".into(),
            sensitive: false,
        }
        .apply(&mut headers);
        HeaderEdit::Remove { name: "X-A".into() }.apply(&mut headers);
        assert_eq!(headers, vec![("x-b".to_owned(), "v".to_owned())]);
        assert_eq!(format!("{set:?}"), "Set(\"x-a\", [redacted])");
    }

    // SEMANTICS 4.8: headerMatches validation.
    #[test]
    fn refuses_bad_header_matches() {
        let spec = |name: &str, value: Option<&str>, secret: Option<&str>| HeaderMatchSpec {
            name: name.to_owned(),
            value: value.map(str::to_owned),
            secret: secret.map(|s| SecretRef {
                namespace: None,
                name: s.to_owned(),
            }),
            mismatch: None,
        };
        let cases = [
            (spec("", None, None), "headerMatches[1].name", "required"),
            (spec("a b", None, None), "headerMatches[1].name", "token"),
            (spec("a:", None, None), "headerMatches[1].name", "token"),
            (
                spec("a", Some("x\ny"), None),
                "headerMatches[1].value",
                "control",
            ),
            (
                spec("a", None, Some("")),
                "headerMatches[1].secret.name",
                "required",
            ),
        ];
        for (spec, path, reason) in cases {
            let err = compile_header_match(1, &spec, None).expect_err(path);
            assert_eq!(err.field_path(), path);
            assert!(err.to_string().contains(reason), "{err}");
        }
    }
}
