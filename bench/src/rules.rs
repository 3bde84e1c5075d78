//! One HTTP rule set, rendered for each system with the same meaning: a request is allowed
//! when its method and its whole path match some rule (anchored, as Cilium anchors
//! `method` and `path`), else it gets 403.
//!
//! The peers match the key `METHOD:PATH` (nginx `$request_method:$request_uri`, haproxy
//! `method` and `path` joined in a variable) so that each rule stays one entry of their
//! fastest lookup: nginx's `map` hashes exact keys and tries regexes in order; haproxy
//! indexes `-m str` and `-m beg` lists in trees and tries `-m reg` lists in order.

use std::fmt::Write as _;

/// What a rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// The path is exactly this.
    Exact(String),
    /// The path starts with this.
    Prefix(String),
    /// The path matches this regex as a whole.
    Regex(String),
}

/// A rule: `GET` and a path pattern (one method keeps the peers' keys simple; the proxy
/// still evaluates the method regex of every rule it tries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub method: &'static str,
    pub pattern: Pattern,
}

/// Which mix of rules a set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// 40 % exact paths, 30 % prefixes, 30 % regexes, interleaved.
    Mixed,
    /// Regexes only.
    RegexHeavy,
}

impl Mix {
    pub fn name(self) -> &'static str {
        match self {
            Mix::Mixed => "mixed",
            Mix::RegexHeavy => "regex",
        }
    }
}

/// The regex of rule `i`. A literal prefix then character classes, as typical API rules
/// are; every rule shares `/api/v`, so no engine can reject most rules on a first byte.
fn regex_for(i: usize) -> String {
    format!("/api/v[0-9]/svc{i}/[a-z]+/[0-9]+")
}

/// A path that only the regex of rule `i` matches.
pub fn path_for_regex(i: usize) -> String {
    format!("/api/v1/svc{i}/items/42")
}

/// The same, answered by the backend with a 1 KB body.
pub fn path_for_regex_kb(i: usize) -> String {
    format!("/api/v1/svc{i}/kb/1")
}

/// A path no rule matches.
pub const DENIED_PATH: &str = "/api/v1/denied/items/42";

/// `n` rules of `mix`; the last is always a regex, and [`RuleSet::allowed_path`] matches
/// that rule only, so each system has to try every regex before it (and miss every exact
/// and prefix lookup) to allow the request.
#[derive(Debug, Clone)]
pub struct RuleSet {
    pub mix: Mix,
    pub rules: Vec<Rule>,
}

impl RuleSet {
    pub fn new(mix: Mix, n: usize) -> Self {
        let n = n.max(1);
        let rules = (0..n)
            .map(|i| {
                let pattern = if i + 1 == n || mix == Mix::RegexHeavy {
                    Pattern::Regex(regex_for(i))
                } else {
                    match i % 10 {
                        0..=3 => Pattern::Exact(format!("/api/v1/exact/{i}")),
                        4..=6 => Pattern::Prefix(format!("/api/v1/prefix/{i}/")),
                        _ => Pattern::Regex(regex_for(i)),
                    }
                };
                Rule {
                    method: "GET",
                    pattern,
                }
            })
            .collect();
        Self { mix, rules }
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Allowed by the last rule only.
    pub fn allowed_path(&self) -> String {
        path_for_regex(self.rules.len() - 1)
    }

    /// Allowed by the last rule only, answered with 1 KB.
    pub fn allowed_kb_path(&self) -> String {
        path_for_regex_kb(self.rules.len() - 1)
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        let mut counts = (0, 0, 0);
        for rule in &self.rules {
            match rule.pattern {
                Pattern::Exact(_) => counts.0 += 1,
                Pattern::Prefix(_) => counts.1 += 1,
                Pattern::Regex(_) => counts.2 += 1,
            }
        }
        counts
    }

    /// The `rules: http:` list of a CNP, indented for [`crate::systems`]'s template. A CNP
    /// path is a regex matched against the whole path, so a prefix is `P.*` and an exact
    /// path is the path itself (none of them hold regex metacharacters).
    pub fn cnp_http_rules(&self, indent: &str) -> String {
        let mut out = String::new();
        for rule in &self.rules {
            let path = match &rule.pattern {
                Pattern::Exact(p) => p.clone(),
                Pattern::Prefix(p) => format!("{p}.*"),
                Pattern::Regex(r) => r.clone(),
            };
            let _ = writeln!(
                out,
                "{indent}- {{method: \"{}\", path: \"{path}\"}}",
                rule.method
            );
        }
        out
    }

    /// Entries of an nginx `map "$request_method:$request_uri" $allowed` block.
    pub fn nginx_map(&self) -> String {
        let mut out = String::new();
        for rule in &self.rules {
            let m = rule.method;
            let _ = match &rule.pattern {
                Pattern::Exact(p) => writeln!(out, "\"{m}:{p}\" 1;"),
                Pattern::Prefix(p) => writeln!(out, "\"~^{m}:{p}\" 1;"),
                Pattern::Regex(r) => writeln!(out, "\"~^{m}:{r}$\" 1;"),
            };
        }
        out
    }

    /// haproxy pattern files: (exact `-m str`, prefix `-m beg`, regex `-m reg`).
    pub fn haproxy_lists(&self) -> (String, String, String) {
        let (mut exact, mut prefix, mut regex) = (String::new(), String::new(), String::new());
        for rule in &self.rules {
            let m = rule.method;
            let _ = match &rule.pattern {
                Pattern::Exact(p) => writeln!(exact, "{m}:{p}"),
                Pattern::Prefix(p) => writeln!(prefix, "{m}:{p}"),
                Pattern::Regex(r) => writeln!(regex, "^{m}:{r}$"),
            };
        }
        (exact, prefix, regex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_rule_is_the_target_regex() {
        for n in [1, 10, 100] {
            let set = RuleSet::new(Mix::Mixed, n);
            assert_eq!(set.len(), n);
            assert_eq!(set.rules[n - 1].pattern, Pattern::Regex(regex_for(n - 1)));
        }
        let (exact, prefix, regex) = RuleSet::new(Mix::Mixed, 100).counts();
        assert_eq!((exact, prefix, regex), (40, 30, 30));
        assert_eq!(RuleSet::new(Mix::RegexHeavy, 10).counts(), (0, 0, 10));
    }

    #[test]
    fn renders_every_format() {
        let set = RuleSet::new(Mix::Mixed, 10);
        assert!(
            set.cnp_http_rules("  ")
                .contains("path: \"/api/v1/prefix/4/.*\"")
        );
        assert!(
            set.nginx_map()
                .contains("\"~^GET:/api/v[0-9]/svc9/[a-z]+/[0-9]+$\" 1;")
        );
        let (exact, prefix, regex) = set.haproxy_lists();
        assert!(exact.contains("GET:/api/v1/exact/0\n"));
        assert!(prefix.contains("GET:/api/v1/prefix/4/\n"));
        assert!(regex.ends_with("^GET:/api/v[0-9]/svc9/[a-z]+/[0-9]+$\n"));
    }
}
