//! Recognises the `method`/`path`/`host` patterns that need no regex engine: a finite set
//! of exact strings (`/public`, `GET|HEAD`) and exact strings followed by `.*`
//! (`/v1/.*`). Most policy paths have one of these shapes; matching them is a string
//! comparison, they can be indexed by value or prefix (see `index.rs`), and compiling a
//! set of 10k rules does not have to build 10k regexes.
//!
//! The pattern is parsed with `regex-syntax`, the parser of the `regex` crate, with the
//! same settings, so a shape is exactly the language the anchored regex would match.
//! Anything not recognised with certainty (look-around assertions, unbounded classes,
//! too many or too long literals) returns `None` and stays a regex.

use regex_syntax::ParserBuilder;
use regex_syntax::hir::literal::{ExtractKind, Extractor};
use regex_syntax::hir::{Dot, Hir, HirKind, Look};

/// What a pattern matches, when it is simple. Every string listed is valid UTF-8 and the
/// lists are free of duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Shape {
    /// The value is one of these strings.
    Exact(Vec<String>),
    /// The value starts with one of these strings; the rest is any characters, except
    /// `\n` unless `dotall` (`.` excludes `\n` unless `(?s)`).
    Prefix {
        /// The literal parts before `.*`.
        prefixes: Vec<String>,
        /// The rest may contain `\n` (`(?s).*`).
        dotall: bool,
    },
}

/// Longer patterns are left to the regex engine: its compiled-size limit
/// (`REGEX_SIZE_LIMIT`) must keep refusing what it refused before, and a shape of at
/// most this many bytes (below) is far below that limit.
const MAX_PATTERN_LEN: usize = 1024;
/// At most this many alternatives (`GET|HEAD|...`); beyond, a regex is as good.
const MAX_LITERALS: usize = 64;
/// Total bytes of all alternatives, for the same reason as [`MAX_PATTERN_LEN`].
const MAX_TOTAL_LITERAL_BYTES: usize = 4096;

/// The shape of `pattern` as the proxy matches it (anchored at both ends), or `None`
/// when it needs the regex engine, including when it does not parse (the regex path then
/// reports the error exactly as before).
pub(crate) fn classify(pattern: &str) -> Option<Shape> {
    if pattern.len() > MAX_PATTERN_LEN {
        return None;
    }
    // The same parser settings as `regex::RegexBuilder`'s defaults.
    let parse = |p: &str| ParserBuilder::new().build().parse(p).ok();
    let hir = parse(pattern)?;
    // The proxy compiles `\A(?:pattern)\z`, one nesting level deeper: a pattern at the
    // nesting limit fails there, and must keep failing with the regex crate's message.
    parse(&format!(r"\A(?:{pattern})\z"))?;

    let mut items = top_level_items(&hir);
    // The match is anchored at both ends anyway: a leading `^`/`\A` and a trailing
    // `$`/`\z` (not their multi-line forms) change nothing.
    if items.first().is_some_and(|h| is_look(h, Look::Start)) {
        items.remove(0);
    }
    if items.last().is_some_and(|h| is_look(h, Look::End)) {
        items.pop();
    }
    let dotall = match items.last().map(|h| any_chars(h)) {
        Some(Some(dotall)) => {
            items.pop();
            Some(dotall)
        }
        _ => None,
    };
    let literals = exact_literals(&Hir::concat(items.into_iter().cloned().collect()))?;
    Some(match dotall {
        None => Shape::Exact(literals),
        Some(dotall) => Shape::Prefix {
            prefixes: literals,
            dotall,
        },
    })
}

/// The items of a top-level concatenation, looking through capture groups (which do not
/// change what matches).
fn top_level_items(hir: &Hir) -> Vec<&Hir> {
    match hir.kind() {
        HirKind::Capture(capture) => top_level_items(&capture.sub),
        HirKind::Concat(items) => items.iter().collect(),
        _ => vec![hir],
    }
}

fn is_look(hir: &Hir, look: Look) -> bool {
    matches!(hir.kind(), HirKind::Look(l) if *l == look)
}

/// `Some(dotall)` when `hir` is `.*` (`Some(false)`) or `(?s).*` (`Some(true)`), greedy
/// or lazy (the same set of strings for a whole match).
fn any_chars(hir: &Hir) -> Option<bool> {
    let HirKind::Repetition(rep) = hir.kind() else {
        return None;
    };
    if rep.min != 0 || rep.max.is_some() {
        return None;
    }
    if *rep.sub == Hir::dot(Dot::AnyChar) {
        Some(true)
    } else if *rep.sub == Hir::dot(Dot::AnyCharExceptLF) {
        Some(false)
    } else {
        None
    }
}

/// Every string `hir` matches as a whole, when that is a small finite set.
fn exact_literals(hir: &Hir) -> Option<Vec<String>> {
    // The literal extractor reads assertions as empty strings (`a\bb` would come out as
    // the exact `ab`, which the regex never matches): refuse any assertion left.
    if !hir.properties().look_set().is_empty() {
        return None;
    }
    let mut extractor = Extractor::new();
    extractor
        .kind(ExtractKind::Prefix)
        .limit_literal_len(MAX_PATTERN_LEN)
        .limit_total(MAX_LITERALS);
    let seq = extractor.extract(hir);
    // An exact sequence lists complete matches; inexact or infinite ones are prefixes
    // of matches only.
    if !seq.is_exact() {
        return None;
    }
    let literals = seq.literals()?;
    if literals.len() > MAX_LITERALS
        || literals.iter().map(|l| l.len()).sum::<usize>() > MAX_TOTAL_LITERAL_BYTES
    {
        return None;
    }
    let mut out = Vec::with_capacity(literals.len());
    for literal in literals {
        let text = std::str::from_utf8(literal.as_bytes()).ok()?;
        if !out.iter().any(|seen: &String| seen == text) {
            out.push(text.to_owned());
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn recognises_common_shapes() {
        let exact = |items: &[&str]| Some(Shape::Exact(strings(items)));
        let prefix = |items: &[&str], dotall| {
            Some(Shape::Prefix {
                prefixes: strings(items),
                dotall,
            })
        };
        let cases = [
            ("/public", exact(&["/public"])),
            ("GET", exact(&["GET"])),
            ("GET|HEAD", exact(&["GET", "HEAD"])),
            ("^/a$", exact(&["/a"])),
            (r"\A/a\z", exact(&["/a"])),
            ("(/a)", exact(&["/a"])),
            (r"/p\?x=1", exact(&["/p?x=1"])),
            (r"api\.example\.com", exact(&["api.example.com"])),
            ("/v[12]/x", exact(&["/v1/x", "/v2/x"])),
            ("/v1/.*", prefix(&["/v1/"], false)),
            ("/v1/.*?", prefix(&["/v1/"], false)),
            ("(?s)/v1/.*", prefix(&["/v1/"], true)),
            ("^/v1/.*$", prefix(&["/v1/"], false)),
            (".*", prefix(&[""], false)),
            ("(/a|/b)/.*", prefix(&["/a/", "/b/"], false)),
            // Still regexes.
            ("/v1/.+", None),
            ("/a/.*/b", None),
            ("/[a-z]+", None),
            ("(?m)^/a$", None),
            (r"/a\b", None),
            ("/a(", None),
            ("a)|(b", None),
        ];
        for (pattern, want) in cases {
            assert_eq!(classify(pattern), want, "{pattern}");
        }
        assert_eq!(classify(&"a".repeat(MAX_PATTERN_LEN + 1)), None);
    }
}
