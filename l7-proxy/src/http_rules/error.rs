//! Compile errors of HTTP rules. Each names the field that failed, relative to the rule
//! (`path`, `headers[1]`, `headerMatches[0].name`), so a caller can prefix its own location.

use std::fmt;

/// Why one HTTP rule could not be compiled.
///
/// `Display` reads `<field path>: <reason>`, e.g. `path: invalid regex "(": ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpRuleError {
    /// `method`, `path` or `host` is not a valid regex, or compiles too large.
    #[error("{field}: invalid regex {}: {message}", Shortened(.pattern))]
    InvalidRegex {
        /// `"method"`, `"path"` or `"host"`.
        field: &'static str,
        /// The pattern as written in policy.
        pattern: String,
        /// What the regex compiler said.
        message: String,
    },
    /// A `headers[index]` entry is malformed.
    #[error("headers[{index}]: invalid entry {}: {reason}", Shortened(.entry))]
    InvalidHeader {
        /// Position in `headers`.
        index: usize,
        /// The entry as written in policy.
        entry: String,
        /// Why it was refused.
        reason: String,
    },
    /// A `headerMatches[index]` item is malformed.
    #[error("headerMatches[{index}].{field}: {reason}")]
    InvalidHeaderMatch {
        /// Position in `headerMatches`.
        index: usize,
        /// Which part of the item: `"name"`, `"value"` or `"secret.name"`.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
}

impl HttpRuleError {
    /// The failing field relative to the rule: `path`, `headers[1]`, `headerMatches[0].name`.
    pub fn field_path(&self) -> String {
        match self {
            HttpRuleError::InvalidRegex { field, .. } => (*field).to_owned(),
            HttpRuleError::InvalidHeader { index, .. } => format!("headers[{index}]"),
            HttpRuleError::InvalidHeaderMatch { index, field, .. } => {
                format!("headerMatches[{index}].{field}")
            }
        }
    }

    /// The reason without the field path, for callers that print their own location.
    pub fn reason(&self) -> String {
        match self {
            HttpRuleError::InvalidRegex {
                pattern, message, ..
            } => format!("invalid regex {}: {message}", Shortened(pattern)),
            HttpRuleError::InvalidHeader { entry, reason, .. } => {
                format!("invalid entry {}: {reason}", Shortened(entry))
            }
            HttpRuleError::InvalidHeaderMatch { reason, .. } => reason.clone(),
        }
    }
}

/// A rule of a set failed to compile: which one, and why.
///
/// `Display` reads `http[<index>].<field path>: <reason>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("http[{index}].{error}")]
pub struct HttpRuleSetError {
    /// Position of the failing rule in the slice given to `HttpRuleSet::compile`.
    pub index: usize,
    /// What was wrong with it.
    pub error: HttpRuleError,
}

impl HttpRuleSetError {
    /// Position of the failing rule.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The failing field relative to the rule (see [`HttpRuleError::field_path`]).
    pub fn field_path(&self) -> String {
        self.error.field_path()
    }

    /// The reason without any location (see [`HttpRuleError::reason`]).
    pub fn reason(&self) -> String {
        self.error.reason()
    }
}

/// Quotes a policy string for an error message, cutting very long (possibly hostile)
/// input so that one bad pattern cannot flood a log line.
struct Shortened<'a>(&'a str);

const SHOW_AT_MOST: usize = 200;

impl fmt::Display for Shortened<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.len() <= SHOW_AT_MOST {
            return write!(f, "{:?}", self.0);
        }
        let mut end = SHOW_AT_MOST;
        while !self.0.is_char_boundary(end) {
            end -= 1;
        }
        let head = self.0.get(..end).unwrap_or_default();
        write!(f, "{head:?}... ({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_starts_with_field_path() {
        let cases = [
            (
                HttpRuleError::InvalidRegex {
                    field: "path",
                    pattern: "(".into(),
                    message: "unclosed group".into(),
                },
                "path",
                "path: invalid regex \"(\": unclosed group",
            ),
            (
                HttpRuleError::InvalidHeader {
                    index: 1,
                    entry: "X Y".into(),
                    reason: "bad".into(),
                },
                "headers[1]",
                "headers[1]: invalid entry \"X Y\": bad",
            ),
            (
                HttpRuleError::InvalidHeaderMatch {
                    index: 0,
                    field: "name",
                    reason: "name is required".into(),
                },
                "headerMatches[0].name",
                "headerMatches[0].name: name is required",
            ),
        ];
        for (err, path, text) in cases {
            assert_eq!(err.field_path(), path);
            assert_eq!(err.to_string(), text);
            assert_eq!(format!("{path}: {}", err.reason()), text);
        }
    }

    #[test]
    fn set_error_names_rule_index() {
        let err = HttpRuleSetError {
            index: 2,
            error: HttpRuleError::InvalidRegex {
                field: "host",
                pattern: "[".into(),
                message: "m".into(),
            },
        };
        assert_eq!(err.index(), 2);
        assert_eq!(err.field_path(), "host");
        assert_eq!(err.to_string(), "http[2].host: invalid regex \"[\": m");
    }

    #[test]
    fn long_patterns_are_cut_in_messages() {
        let pattern = "é".repeat(500);
        let text = Shortened(&pattern).to_string();
        assert!(text.len() < 300, "{text}");
        assert!(text.ends_with("... (1000 bytes)"), "{text}");
    }
}
