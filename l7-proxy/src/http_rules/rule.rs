//! One compiled HTTP rule (SEMANTICS 4.1-4.9).

use regex::{Regex, RegexBuilder};

use super::error::HttpRuleError;
use super::headers::{
    CompiledHeaderMatch, HeaderAction, HeaderCheck, compile_header_match, parse_header_entry,
};
use super::shape::{Shape, classify};
use super::spec::{HttpRuleSpec, SecretRef};

/// Largest compiled size of one `method`/`path`/`host` regex. A hostile pattern such as
/// `\w{1000}{1000}` fails to compile with an error instead of exhausting memory.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// How much smaller than [`REGEX_SIZE_LIMIT`] the anchored regex must compile for the
/// separate validation build of the bare pattern to be skipped (see [`compile_anchored`]).
/// The two differ by two assertions and the few states of the unanchored-search prefix,
/// far less than this.
const VALIDATION_MARGIN: usize = 64 << 10;

/// How a `method`/`path`/`host` value is compared with its pattern.
#[derive(Debug, Clone)]
pub(crate) enum Matcher {
    /// The value is one of these strings (the pattern was `/public` or `GET|HEAD`).
    Exact(Box<[String]>),
    /// The value starts with one of these strings, followed by anything but `\n` unless
    /// `dotall` (the pattern was `/v1/.*`).
    Prefix {
        prefixes: Box<[String]>,
        dotall: bool,
    },
    /// Any other pattern, compiled as `\A(?:pattern)\z`.
    Regex(Regex),
}

/// A pattern that must match the whole value (SEMANTICS 4.2).
#[derive(Debug, Clone)]
pub(crate) struct FullMatch {
    pub(crate) matcher: Matcher,
    /// The pattern as written in policy, for explanations and the rule set's index.
    pub(crate) pattern: String,
}

impl FullMatch {
    /// `None` for an absent or empty pattern: Cilium's Go types cannot tell `""` from
    /// absent, and both place no constraint.
    ///
    /// Patterns of a simple shape ([`Shape`]) are matched without a regex: they parse, and
    /// are too small to reach the size limit, so the regex crate would accept them as well.
    /// `shapes: false` compiles every pattern as a regex (the reference in tests).
    fn compile(
        field: &'static str,
        pattern: Option<&str>,
        shapes: bool,
    ) -> Result<Option<Self>, HttpRuleError> {
        let Some(pattern) = pattern.filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        let matcher = match shapes.then(|| classify(pattern)).flatten() {
            Some(Shape::Exact(values)) => Matcher::Exact(values.into()),
            Some(Shape::Prefix { prefixes, dotall }) => Matcher::Prefix {
                prefixes: prefixes.into(),
                dotall,
            },
            None => Matcher::Regex(compile_anchored(field, pattern)?),
        };
        Ok(Some(FullMatch {
            matcher,
            pattern: pattern.to_owned(),
        }))
    }

    pub(crate) fn is_match(&self, value: &str) -> bool {
        match &self.matcher {
            Matcher::Exact(values) => values.iter().any(|v| v == value),
            Matcher::Prefix { prefixes, dotall } => prefixes.iter().any(|p| {
                value
                    .strip_prefix(p.as_str())
                    .is_some_and(|rest| *dotall || !rest.contains('\n'))
            }),
            Matcher::Regex(regex) => regex.is_match(value),
        }
    }

    fn explain(&self, what: &str, value: &str) -> String {
        format!("{what} {value:?} does not match {:?}", self.pattern)
    }
}

/// The anchored regex of `pattern`, with the errors (and their order) of the original two
/// builds: the bare pattern first, then `\A(?:pattern)\z`.
fn compile_anchored(field: &'static str, pattern: &str) -> Result<Regex, HttpRuleError> {
    let invalid = |e: regex::Error| HttpRuleError::InvalidRegex {
        field,
        pattern: pattern.to_owned(),
        message: one_line(&e),
    };
    let anchored = format!(r"\A(?:{pattern})\z");
    // The pattern must be valid on its own: `a)|(b` is not, and would otherwise close
    // the anchoring group below and match unanchored. Parsing (what the regex crate does
    // first, with the same settings) is enough to tell; a failure is reported with the
    // regex crate's own error, from the build it would fail.
    if regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .is_err()
    {
        build(pattern, REGEX_SIZE_LIMIT).map_err(invalid)?;
    }
    // Building the bare pattern as well only checked its compiled size (half the compile
    // time of 10k regex rules). Skipped when the anchored regex fits with a margin that
    // covers their difference; near the limit, both builds run as they always did, so
    // what is refused, and the message, are unchanged.
    if let Ok(regex) = build(&anchored, REGEX_SIZE_LIMIT - VALIDATION_MARGIN) {
        return Ok(regex);
    }
    build(pattern, REGEX_SIZE_LIMIT).map_err(invalid)?;
    build(&anchored, REGEX_SIZE_LIMIT).map_err(invalid)
}

/// The regex crate draws a multi-line caret diagram for syntax errors; error lists and
/// NACK texts want one line, and the pattern is quoted beside it anyway.
fn one_line(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("error: "))
        .map_or_else(
            || text.split_whitespace().collect::<Vec<_>>().join(" "),
            str::to_owned,
        )
}

fn build(pattern: &str, size_limit: usize) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .size_limit(size_limit)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// Which condition of a rule is unmet; turned into text only when a request is denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unmet {
    Method,
    Path,
    Host,
    /// Index into the rule's header checks.
    Header(usize),
}

/// The first unmet condition of a rule that did not match, for `policy explain` and logs.
/// It never contains a request header value nor a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleFailure {
    /// Position of the rule in its set.
    pub rule_index: usize,
    /// The field relative to the rule: `method`, `path`, `host`, `headers[1]`, `headerMatches[0]`.
    pub field: String,
    /// What did not match.
    pub detail: String,
}

impl std::fmt::Display for RuleFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "http[{}].{}: {}",
            self.rule_index, self.field, self.detail
        )
    }
}

/// One HTTP rule, compiled once per policy version. `Default` is the empty rule `{}`.
#[derive(Debug, Clone, Default)]
pub struct CompiledHttpRule {
    method: Option<FullMatch>,
    path: Option<FullMatch>,
    host: Option<FullMatch>,
    /// Unmet => the rule does not match: `headers` entries and `headerMatches` without a
    /// mismatch action (Cilium turns the latter into plain Envoy header matchers too).
    checks: Vec<HeaderCheck>,
    /// `headerMatches` with a mismatch action: run only once the checks above pass.
    actions: Vec<HeaderAction>,
}

impl CompiledHttpRule {
    /// Compiles a rule whose secret-sourced header values are not available (see
    /// [`CompiledHttpRule::compile_with_secrets`]).
    pub fn compile(spec: &HttpRuleSpec) -> Result<Self, HttpRuleError> {
        Self::compile_with_secrets(spec, &|_| None)
    }

    /// Compiles a rule; `secrets` returns the value of a referenced secret when the caller
    /// can read it. When it cannot, `headerMatches[].value` is the fallback; with no
    /// fallback the rule never matches, whatever its mismatch action (as in Cilium).
    pub fn compile_with_secrets(
        spec: &HttpRuleSpec,
        secrets: &dyn Fn(&SecretRef) -> Option<String>,
    ) -> Result<Self, HttpRuleError> {
        Self::compile_inner(spec, secrets, true)
    }

    /// As [`CompiledHttpRule::compile_with_secrets`], with every pattern a regex: the
    /// plain implementation that tests compare the shapes and the index against.
    #[cfg(test)]
    pub(crate) fn compile_all_regex(
        spec: &HttpRuleSpec,
        secrets: &dyn Fn(&SecretRef) -> Option<String>,
    ) -> Result<Self, HttpRuleError> {
        Self::compile_inner(spec, secrets, false)
    }

    fn compile_inner(
        spec: &HttpRuleSpec,
        secrets: &dyn Fn(&SecretRef) -> Option<String>,
        shapes: bool,
    ) -> Result<Self, HttpRuleError> {
        let method = FullMatch::compile("method", spec.method.as_deref(), shapes)?;
        let path = FullMatch::compile("path", spec.path.as_deref(), shapes)?;
        let host = FullMatch::compile("host", spec.host.as_deref(), shapes)?;
        let mut checks = spec
            .headers
            .iter()
            .enumerate()
            .map(|(i, entry)| parse_header_entry(i, entry))
            .collect::<Result<Vec<_>, _>>()?;
        let mut actions = Vec::new();
        for (i, m) in spec.header_matches.iter().enumerate() {
            let secret_value = m.secret.as_ref().and_then(secrets);
            match compile_header_match(i, m, secret_value)? {
                CompiledHeaderMatch::Check(check) => checks.push(check),
                CompiledHeaderMatch::Action(action) => actions.push(action),
            }
        }
        Ok(CompiledHttpRule {
            method,
            path,
            host,
            checks,
            actions,
        })
    }

    /// True when a `headerMatches` item has a mismatch action, so matching this rule may
    /// edit the request or record mismatches.
    pub fn has_header_actions(&self) -> bool {
        !self.actions.is_empty()
    }

    /// The first unmet condition among those that can deny: method, path, host, then
    /// header checks in policy order. `target` is the normalised target and `host` the
    /// authority the request names. Allocates nothing.
    pub(crate) fn first_unmet<N: AsRef<str>, V: AsRef<str>>(
        &self,
        method: &str,
        target: &str,
        host: Option<&str>,
        headers: &[(N, V)],
    ) -> Option<Unmet> {
        // SEMANTICS 4.5: case-sensitive, whole value.
        if self.method.as_ref().is_some_and(|m| !m.is_match(method)) {
            return Some(Unmet::Method);
        }
        // SEMANTICS 4.3: the normalised path with its query string.
        if self.path.as_ref().is_some_and(|p| !p.is_match(target)) {
            return Some(Unmet::Path);
        }
        // SEMANTICS 4.4: Host as sent, port included; no Host header never matches.
        if let Some(h) = &self.host
            && !host.is_some_and(|value| h.is_match(value))
        {
            return Some(Unmet::Host);
        }
        // SEMANTICS 4.7, 4.8.
        self.checks
            .iter()
            .position(|check| !check.is_met(headers))
            .map(Unmet::Header)
    }

    /// Describes an unmet condition as (field, detail), for deny reasons.
    pub(crate) fn explain<N: AsRef<str>, V: AsRef<str>>(
        &self,
        unmet: Unmet,
        method: &str,
        target: &str,
        host: Option<&str>,
        headers: &[(N, V)],
    ) -> (String, String) {
        let field = |name: &str, detail: Option<String>| {
            (
                name.to_owned(),
                detail.unwrap_or_else(|| "unmet".to_owned()),
            )
        };
        match unmet {
            Unmet::Method => field(
                "method",
                self.method.as_ref().map(|m| m.explain("method", method)),
            ),
            Unmet::Path => field(
                "path",
                self.path.as_ref().map(|p| p.explain("path", target)),
            ),
            Unmet::Host => match host {
                None => field("host", Some("request has no Host header".to_owned())),
                Some(value) => field("host", self.host.as_ref().map(|h| h.explain("host", value))),
            },
            Unmet::Header(i) => match self.checks.get(i) {
                Some(check) => (check.origin.clone(), check.explain(headers)),
                None => field("headers", None),
            },
        }
    }

    pub(crate) fn actions(&self) -> &[HeaderAction] {
        &self.actions
    }

    /// The `path` pattern, for the rule set's index; `None` matches every path.
    pub(crate) fn path_match(&self) -> Option<&FullMatch> {
        self.path.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{HttpRuleSet, HttpRuleSpec};
    use super::*;

    // SEMANTICS 4.2: invalid regexes are compile errors naming the field and the pattern.
    #[test]
    fn invalid_regexes() {
        let cases = [
            (r#"{"path":"/a("}"#, "path", "/a("),
            (r#"{"method":"[GET"}"#, "method", "[GET"),
            (r#"{"host":"*.example.com"}"#, "host", "*.example.com"),
            // Would escape the anchors if wrapped blindly: `^(?:a)|(b)$`.
            (r#"{"path":"/a)|(/b"}"#, "path", "/a)|(/b"),
            (r#"{"path":"(?<!x)a"}"#, "path", "(?<!x)a"),
            (r#"{"path":"\\1"}"#, "path", "\\1"),
        ];
        for (rule, field, pattern) in cases {
            let spec: HttpRuleSpec = serde_json::from_str(rule).expect("parses");
            let err = CompiledHttpRule::compile(&spec).expect_err(rule);
            assert!(
                matches!(&err, HttpRuleError::InvalidRegex { field: f, pattern: p, .. } if *f == field && p == pattern),
                "{rule}: {err:?}"
            );
            let text = err.to_string();
            assert!(!text.contains('\n'), "{text}");
            assert!(
                text.starts_with(&format!("{field}: invalid regex {pattern:?}: ")),
                "{text}"
            );
        }
        let specs: Vec<HttpRuleSpec> =
            serde_json::from_str(r#"[{}, {"path":"/ok"}, {"host":"("}]"#).expect("parses");
        let err = HttpRuleSet::compile(&specs).expect_err("third rule is invalid");
        assert_eq!((err.index(), err.field_path().as_str()), (2, "host"));
        assert!(
            err.to_string()
                .starts_with("http[2].host: invalid regex \"(\""),
            "{err}"
        );
    }

    // A hostile pattern is a compile error, not a memory blow-up.
    #[test]
    fn oversized_regex_is_an_error() {
        for pattern in [r"\w{1000}{1000}", r"(?:\pL|\pN){2000}", r"[a-z]{100000}"] {
            let spec = HttpRuleSpec {
                path: Some(pattern.to_owned()),
                ..HttpRuleSpec::default()
            };
            let err = CompiledHttpRule::compile(&spec).expect_err(pattern);
            assert_eq!(err.field_path(), "path");
            assert!(err.to_string().contains("size limit"), "{err}");
        }
    }
}
