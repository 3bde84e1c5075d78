//! B6's rule set and query names, and how each system is given the rules: our CNP
//! (`rules.dns` matchName/matchPattern) and dnsdist's Lua (two forms, take the faster).
//!
//! The set has `patterns` entries, alternately `matchName: "eI.exact.bench.test"` and
//! `matchPattern: "*.pI.bench.test"`. Queried names: 90 % allowed (half exact names, half
//! `wK.pI.bench.test`), 10 % refused (`wK.qI.bench.test`, `xI.exact.bench.test`: near
//! misses of both kinds), shuffled; every name is under `bench.test`, which the upstream
//! answers for, so the direct run gets NOERROR for all of them.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::stats::Shuffler;

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 202, 0, 10);
pub const UPSTREAM_IP: Ipv4Addr = Ipv4Addr::new(10, 202, 0, 53);
pub const OURS_IP: Ipv4Addr = Ipv4Addr::new(10, 202, 0, 2);
pub const DNSDIST_RE_IP: Ipv4Addr = Ipv4Addr::new(10, 202, 0, 3);
pub const DNSDIST_SFX_IP: Ipv4Addr = Ipv4Addr::new(10, 202, 0, 4);
pub const ZONE: &str = "bench.test";

/// Names that follow the rule set: `patterns` rules, half exact and half wildcard.
#[derive(Debug, Clone, Copy)]
pub struct RuleSet {
    pub patterns: usize,
}

impl RuleSet {
    fn exact_count(self) -> usize {
        self.patterns.div_ceil(2)
    }

    fn wildcard_count(self) -> usize {
        self.patterns / 2
    }

    fn exact(i: usize) -> String {
        format!("e{i}.exact.{ZONE}")
    }

    fn suffix(i: usize) -> String {
        format!("p{i}.{ZONE}")
    }

    /// The rcode each system must give `name`: the verdict of the rule set.
    pub fn verdict(self, name: &str) -> &'static str {
        let name = name.trim_end_matches('.');
        let allowed = if let Some(rest) = name.strip_prefix('e') {
            rest.strip_suffix(&format!(".exact.{ZONE}"))
                .and_then(|i| i.parse::<usize>().ok())
                .is_some_and(|i| i < self.exact_count())
        } else {
            // One label, then `pI.bench.test` with I in range.
            name.split_once('.').is_some_and(|(first, rest)| {
                !first.contains('.')
                    && rest
                        .strip_prefix('p')
                        .and_then(|r| r.strip_suffix(&format!(".{ZONE}")))
                        .and_then(|i| i.parse::<usize>().ok())
                        .is_some_and(|i| i < self.wildcard_count())
            })
        };
        if allowed { "NOERROR" } else { "REFUSED" }
    }

    /// `lines` queried names (`NAME A`, dnsperf's input), 10 % refused, shuffled.
    pub fn queries(self, lines: usize, seed: u64) -> String {
        let mut shuffler = Shuffler::new(seed);
        let mut names = Vec::with_capacity(lines);
        let (e, w) = (self.exact_count().max(1), self.wildcard_count().max(1));
        for k in 0..lines {
            let name = match k % 20 {
                // 2 of 20 refused: a wildcard near miss and an exact near miss.
                0 => format!("w{k}.q{}.{ZONE}", k % w),
                1 => format!("x{}.exact.{ZONE}", k % e),
                n if n % 2 == 0 => Self::exact((k / 2) % e),
                _ => format!("w{k}.{}", Self::suffix((k / 2) % w)),
            };
            names.push(name);
        }
        shuffler.shuffle(&mut names);
        let mut out = String::new();
        for name in names {
            let _ = writeln!(out, "{name} A");
        }
        out
    }

    /// The client's CNP: DNS to the upstream pod on 53 with the whole set as `rules.dns`.
    pub fn policy_yaml(self) -> String {
        let mut out = [
            "apiVersion: cilium.io/v2",
            "kind: CiliumNetworkPolicy",
            "metadata: {name: dnsbench, namespace: default}",
            "spec:",
            "  endpointSelector: {matchLabels: {app: client}}",
            "  egress:",
            "  - toEndpoints: [{matchLabels: {app: dns}}]",
            "    toPorts:",
            "    - ports: [{port: \"53\", protocol: ANY}]",
            "      rules:",
            "        dns:",
            "",
        ]
        .join("\n");
        for i in 0..self.patterns {
            if i % 2 == 0 {
                let _ = writeln!(out, "        - matchName: \"{}\"", Self::exact(i / 2));
            } else {
                let _ = writeln!(out, "        - matchPattern: \"*.{}\"", Self::suffix(i / 2));
            }
        }
        out
    }

    /// The two dnsdist forms. `regex`: exact names in a `QNameSetRule` (hashed) and every
    /// wildcard in one anchored RE2 alternation (`[-a-zA-Z0-9_]*` is Cilium's `*`); one RE2
    /// automaton is far cheaper than hundreds of `RegexRule`s tried in turn. Otherwise
    /// (`suffix`): the wildcards as one `SuffixMatchNodeRule`, dnsdist's cheapest form,
    /// which also matches deeper names and the suffix itself: the same verdicts on the
    /// queried names, slightly looser than the CNP in general.
    pub fn dnsdist_lua(self, listen: Ipv4Addr, regex: bool) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "-- generated by dns-bench (B6)\n\
             setSecurityPollSuffix(\"\")\n\
             setLocal(\"{listen}:53\")\n\
             setMaxTCPClientThreads(1)\n\
             newServer({{address=\"{UPSTREAM_IP}:53\", name=\"upstream\", healthCheckMode=\"up\"}})\n\
             exact = newDNSNameSet()"
        );
        for i in 0..self.exact_count() {
            let _ = writeln!(out, "exact:add(newDNSName(\"{}\"))", Self::exact(i));
        }
        let _ = writeln!(out, "addAction(QNameSetRule(exact), AllowAction())");
        if self.wildcard_count() > 0 {
            if regex {
                let alternatives: Vec<String> = (0..self.wildcard_count())
                    .map(|i| {
                        format!(
                            "[-a-zA-Z0-9_]*\\\\.{}",
                            Self::suffix(i).replace('.', "\\\\.")
                        )
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "addAction(RE2Rule(\"^(?:{})$\"), AllowAction())",
                    alternatives.join("|")
                );
            } else {
                let _ = writeln!(out, "wild = newSuffixMatchNode()");
                for i in 0..self.wildcard_count() {
                    let _ = writeln!(out, "wild:add(\"{}\")", Self::suffix(i));
                }
                let _ = writeln!(out, "addAction(SuffixMatchNodeRule(wild), AllowAction())");
            }
        }
        let _ = writeln!(out, "addAction(AllRule(), RCodeAction(DNSRCode.REFUSED))");
        out
    }
}

/// The agent's Pod manifests: the client and the upstream server as pods of node1.
pub fn pods_yaml(client: Ipv4Addr, dns: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1\nkind: List\nitems:\n\
         - {{apiVersion: v1, kind: Pod, metadata: {{name: client, namespace: default, labels: {{app: client}}}},\n   spec: {{nodeName: node1, containers: [{{name: c, image: i}}]}}, status: {{podIP: {client}}}}}\n\
         - {{apiVersion: v1, kind: Pod, metadata: {{name: dns, namespace: default, labels: {{app: dns}}}},\n   spec: {{nodeName: node1, containers: [{{name: c, image: i}}]}}, status: {{podIP: {dns}}}}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_set() {
        let set = RuleSet { patterns: 1000 };
        assert_eq!(set.verdict("e0.exact.bench.test"), "NOERROR");
        assert_eq!(set.verdict("e499.exact.bench.test."), "NOERROR");
        assert_eq!(set.verdict("e500.exact.bench.test"), "REFUSED");
        assert_eq!(set.verdict("x3.exact.bench.test"), "REFUSED");
        assert_eq!(set.verdict("w7.p499.bench.test"), "NOERROR");
        assert_eq!(set.verdict("w7.p500.bench.test"), "REFUSED");
        assert_eq!(set.verdict("a.w7.p1.bench.test"), "REFUSED");
        assert_eq!(set.verdict("w7.q1.bench.test"), "REFUSED");
    }

    #[test]
    fn ten_percent_refused() {
        let set = RuleSet { patterns: 1000 };
        let text = set.queries(10_000, 1);
        let names: Vec<&str> = text.lines().filter_map(|l| l.strip_suffix(" A")).collect();
        assert_eq!(names.len(), 10_000);
        let refused = names.iter().filter(|n| set.verdict(n) == "REFUSED").count();
        assert_eq!(refused, 1000);
        assert!(names.iter().all(|n| n.ends_with(".bench.test")));
    }

    #[test]
    fn configs_have_every_rule() {
        let set = RuleSet { patterns: 10 };
        let yaml = set.policy_yaml();
        assert_eq!(yaml.matches("matchName").count(), 5);
        assert_eq!(yaml.matches("matchPattern: \"*.p4.bench.test\"").count(), 1);
        let re = set.dnsdist_lua(DNSDIST_RE_IP, true);
        assert_eq!(re.matches("exact:add").count(), 5);
        assert!(re.contains("RE2Rule(\"^(?:[-a-zA-Z0-9_]*\\\\.p0\\\\.bench\\\\.test|"));
        let sfx = set.dnsdist_lua(DNSDIST_SFX_IP, false);
        assert_eq!(sfx.matches("wild:add").count(), 5);
        assert!(sfx.ends_with("addAction(AllRule(), RCodeAction(DNSRCode.REFUSED))\n"));
    }
}
