//! The path index of a large rule set (benchmark B3): finds the rules whose `path` can
//! match a request without trying every rule's pattern.
//!
//! Rules are filed by the shape of their `path` pattern (see `shape.rs`): exact paths in
//! a hash map, `prefix.*` paths in a hash map probed once per distinct prefix length, all
//! other regexes in a few `RegexSet`s that report every matching rule in one pass, and
//! rules without a path (or that no set could hold) in a list tried for every request.
//! Each source lists rules in ascending order; a candidate is then checked in full by the
//! rule itself (method, path, host, headers), so the index only has to never miss a rule
//! whose path matches: an extra candidate costs time, not correctness.

use std::collections::HashMap;

use regex::{RegexSet, RegexSetBuilder};

use super::rule::{CompiledHttpRule, Matcher, REGEX_SIZE_LIMIT};

/// Regexes per `RegexSet`. Each set costs one lazy-DFA pass per request, and a set
/// that matches costs a scan of one flag per pattern (`SetMatches::iter`), while the DFA
/// states grow with the patterns alive at once (every pattern of the benchmark shares
/// `/api/v`). Measured on 10k rules (`benches/http_rules.rs`): 256 per set cost 3.0 µs
/// per request, 2048 cost 1.7 µs, 1024 cost 1.1 µs and compiled fastest.
const REGEXES_PER_SET: usize = 1024;
/// Compiled-size limit of one set: [`REGEX_SIZE_LIMIT`] bounds one rule's regex, and a
/// set holds many. A set that does not fit is split in two, down to one regex per set.
const SET_SIZE_LIMIT: usize = 16 * REGEX_SIZE_LIMIT;
/// Lazy DFA cache of one set (allocated per thread that searches it, on first use).
const SET_DFA_SIZE_LIMIT: usize = 2 * REGEX_SIZE_LIMIT;

/// Rules (by index in the set, each list ascending) filed by the shape of their path.
#[derive(Debug, Clone, Default)]
pub(crate) struct RuleIndex {
    /// Rules whose path matches everything (no `path`, `.*`), and regex rules no set
    /// could hold: candidates for every request.
    always: Vec<usize>,
    /// Exact path => rules.
    exact: HashMap<String, Vec<usize>>,
    /// Path prefix (never empty) => rules.
    prefixes: HashMap<String, Vec<usize>>,
    /// The distinct lengths of the keys of `prefixes`, ascending.
    prefix_lens: Vec<usize>,
    /// Sets of the remaining path regexes, in rule order: every rule of a set comes
    /// after every rule of the sets before it.
    sets: Vec<RegexChunk>,
}

#[derive(Debug, Clone)]
struct RegexChunk {
    set: RegexSet,
    /// Rule index of each pattern of `set`, ascending.
    rules: Vec<usize>,
}

impl RuleIndex {
    pub(crate) fn build(rules: &[CompiledHttpRule]) -> Self {
        let mut index = RuleIndex::default();
        let mut regexes: Vec<(usize, String)> = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let Some(path) = rule.path_match() else {
                index.always.push(i);
                continue;
            };
            match &path.matcher {
                Matcher::Exact(values) => {
                    for value in values {
                        index.exact.entry(value.clone()).or_default().push(i);
                    }
                }
                Matcher::Prefix { prefixes, .. } => {
                    for prefix in prefixes {
                        if prefix.is_empty() {
                            index.always.push(i);
                        } else {
                            index.prefixes.entry(prefix.clone()).or_default().push(i);
                        }
                    }
                }
                // The same anchoring as the rule's own regex.
                Matcher::Regex(_) => regexes.push((i, format!(r"\A(?:{})\z", path.pattern))),
            }
        }
        for group in regexes.chunks(REGEXES_PER_SET) {
            index.add_sets(group);
        }
        // Rules were pushed in ascending order, but regex rules that no set could hold
        // were appended to `always` after all others.
        index.always.sort_unstable();
        index.always.dedup();
        let mut lens: Vec<usize> = index.prefixes.keys().map(String::len).collect();
        lens.sort_unstable();
        lens.dedup();
        index.prefix_lens = lens;
        index
    }

    /// Adds `group` as one set, or as smaller ones when it is too large to compile.
    fn add_sets(&mut self, group: &[(usize, String)]) {
        let built = RegexSetBuilder::new(group.iter().map(|(_, pattern)| pattern))
            .size_limit(SET_SIZE_LIMIT)
            .dfa_size_limit(SET_DFA_SIZE_LIMIT)
            .build();
        match built {
            Ok(set) => self.sets.push(RegexChunk {
                set,
                rules: group.iter().map(|(i, _)| *i).collect(),
            }),
            Err(_) if group.len() > 1 => {
                let (head, tail) = group.split_at(group.len() / 2);
                self.add_sets(head);
                self.add_sets(tail);
            }
            // Each pattern compiled alone as the rule's own regex: the rule is checked
            // with it for every request.
            Err(_) => self.always.extend(group.iter().map(|(i, _)| *i)),
        }
    }

    /// The lowest index of a rule that matches the request, as the first `position` of a
    /// linear scan would find it. Allocates nothing unless a regex set matches.
    pub(crate) fn first_match<N: AsRef<str>, V: AsRef<str>>(
        &self,
        rules: &[CompiledHttpRule],
        method: &str,
        path: &str,
        host: Option<&str>,
        headers: &[(N, V)],
    ) -> Option<usize> {
        let matches = |i: usize| {
            rules
                .get(i)
                .is_some_and(|rule| rule.first_unmet(method, path, host, headers).is_none())
        };
        // Lowest matching rule found so far; each source is ascending, so it is only
        // read up to that rule.
        let mut best = usize::MAX;
        let scan = |list: &mut dyn Iterator<Item = usize>, best: &mut usize| {
            for i in list {
                if i >= *best {
                    break;
                }
                if matches(i) {
                    *best = i;
                    break;
                }
            }
        };
        scan(&mut self.always.iter().copied(), &mut best);
        if let Some(list) = self.exact.get(path) {
            scan(&mut list.iter().copied(), &mut best);
        }
        for &len in &self.prefix_lens {
            if len > path.len() {
                break;
            }
            // `None` when `len` falls inside a character: no prefix can end there.
            if let Some(list) = path.get(..len).and_then(|head| self.prefixes.get(head)) {
                scan(&mut list.iter().copied(), &mut best);
            }
        }
        for chunk in &self.sets {
            // Sets are in rule order: once one starts after `best`, all later ones do.
            if chunk.rules.first().is_none_or(|&first| first >= best) {
                break;
            }
            if !chunk.set.is_match(path) {
                continue;
            }
            let matched = chunk.set.matches(path);
            scan(
                &mut matched
                    .iter()
                    .filter_map(|pattern| chunk.rules.get(pattern).copied()),
                &mut best,
            );
        }
        (best != usize::MAX).then_some(best)
    }

    /// Every rule whose path may match, ascending and without repeats: for rule sets with
    /// mismatch actions, which must visit every matching rule in order.
    pub(crate) fn candidates(&self, path: &str) -> Vec<usize> {
        let mut out = self.always.clone();
        if let Some(list) = self.exact.get(path) {
            out.extend_from_slice(list);
        }
        for &len in &self.prefix_lens {
            if len > path.len() {
                break;
            }
            if let Some(list) = path.get(..len).and_then(|head| self.prefixes.get(head)) {
                out.extend_from_slice(list);
            }
        }
        for chunk in &self.sets {
            if chunk.set.is_match(path) {
                let matched = chunk.set.matches(path);
                out.extend(
                    matched
                        .iter()
                        .filter_map(|pattern| chunk.rules.get(pattern).copied()),
                );
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}
