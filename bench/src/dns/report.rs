//! The results file: a summary against the targets of BENCHMARKS.md, the set-up, per
//! system medians, and every raw run, so each ratio can be recomputed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::b6::{B6Sample, System};
use crate::b7::{B7Sample, Kind};
use crate::common::{command_line, cpu_model};
use crate::stats::{Spread, median, ratio};
use crate::{Args, Bins};

#[derive(Debug, Default)]
pub struct Report {
    header: String,
    rate: u32,
    pub b6: Vec<B6Sample>,
    pub b7: Vec<B7Sample>,
}

fn spread_text(values: &[f64]) -> String {
    Spread::of(values).map_or_else(|| "n/a".to_owned(), |s| s.to_string())
}

fn num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "n/a".to_owned()
    }
}

/// "met" when the median of `values` is on the right side of `target`.
fn verdict(values: &[f64], target: f64, lower_is_better: bool) -> &'static str {
    match Spread::of(values) {
        Some(s)
            if (lower_is_better && s.median <= target)
                || (!lower_is_better && s.median >= target) =>
        {
            "**met**"
        }
        Some(_) => "**not met**",
        None => "n/a",
    }
}

/// Uncommitted changes in the crates the binaries are built from, for the header.
fn dirty_note() -> String {
    let out = std::process::Command::new("git")
        .args([
            "status",
            "--porcelain",
            "--",
            "dns-proxy",
            "node-agent",
            "bpf",
            "xds",
        ])
        .current_dir(integration::workspace_root())
        .output();
    match out {
        Ok(o) if !o.stdout.is_empty() => {
            let files: Vec<String> = String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| l.get(3..).unwrap_or(l).to_owned())
                .collect();
            format!(
                " plus uncommitted changes in the working tree when the run started (see the build times below): {}",
                files.join(", ")
            )
        }
        _ => String::new(),
    }
}

/// When our binaries were built (UTC, from their modification time): with `--no-build`
/// they may predate the commit above.
fn built(bins: &Bins) -> String {
    [("node-agent", &bins.agent), ("dns-proxy", &bins.dns_proxy)]
        .iter()
        .map(|(name, path)| {
            let when = command_line("date", &["-u", "-r", &path.to_string_lossy(), "+%F %T"]);
            format!("{name} {when}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Report {
    pub fn new(args: &Args, bins: &Bins, seed: u64, date: &str) -> Self {
        let header = format!(
            "Command: `cargo run --release -p bench --bin dns-bench -- --only {only} --rounds {rounds} --duration {dur} --max-duration {maxd} --rate {rate} --patterns {pat} --fqdn-rate {frate} --fqdn-seconds {fsec} --ttl {ttl} --max-other-percent {other} --seed {seed}` (as root).\n\n\
             | | |\n| --- | --- |\n| date | {date} |\n| kernel | {kernel} |\n| CPU | {nproc} x {cpu} |\n| commit | {commit}{dirty} |\n| binaries built | {built} |\n\
             | rustc | {rustc} |\n| dnsdist | {dnsdist} |\n| dnsmasq | {dnsmasq} |\n| dnsperf | {dnsperf} |\n\
             | pinning | systems under test (dns-proxy + node-agent, dnsdist) on CPU 0; dnsperf, dnsmasq, the B7 responder, web sink and load tool on CPU 1 |\n",
            only = args.only.join(","),
            rounds = args.rounds,
            dur = args.duration,
            maxd = args.max_duration,
            rate = args.rate,
            pat = args.patterns,
            frate = args.fqdn_rate,
            fsec = args.fqdn_seconds,
            ttl = args.ttl,
            other = args.max_other_percent,
            kernel = command_line("uname", &["-r"]),
            nproc = command_line("nproc", &[]),
            cpu = cpu_model(),
            commit = command_line("git", &["rev-parse", "--short", "HEAD"]),
            dirty = dirty_note(),
            built = built(bins),
            rustc = command_line("rustc", &["-V"]),
            dnsdist = command_line("dnsdist", &["--version"]),
            dnsmasq = command_line("dnsmasq", &["--version"]),
            dnsperf = command_line("sh", &["-c", "dnsperf -h 2>&1 | grep -i '^version'"]),
        );
        Self {
            header,
            rate: args.rate,
            ..Self::default()
        }
    }

    /// B6 samples of the fixed-rate (`max` false) or max-throughput runs, by round and
    /// system.
    fn b6_rounds(&self, max: bool) -> BTreeMap<usize, BTreeMap<System, &B6Sample>> {
        let mut rounds: BTreeMap<usize, BTreeMap<System, &B6Sample>> = BTreeMap::new();
        for s in self.b6.iter().filter(|s| s.rate.is_none() == max) {
            rounds.entry(s.round).or_default().insert(s.system, s);
        }
        rounds
    }

    /// Per-round ratios ours / `peer` (None: the best peer of the round) of `metric`.
    fn b6_ratios(
        &self,
        max: bool,
        peer: Option<System>,
        metric: &dyn Fn(&B6Sample, &BTreeMap<System, &B6Sample>) -> f64,
        lower_is_better: bool,
    ) -> Vec<f64> {
        self.b6_rounds(max)
            .values()
            .filter_map(|r| {
                let ours = metric(r.get(&System::Ours)?, r);
                let theirs = match peer {
                    Some(p) => metric(r.get(&p)?, r),
                    None => {
                        let values = System::PEERS
                            .iter()
                            .filter_map(|p| r.get(p))
                            .map(|s| metric(s, r));
                        if lower_is_better {
                            values.fold(f64::INFINITY, f64::min)
                        } else {
                            values.fold(f64::NEG_INFINITY, f64::max)
                        }
                    }
                };
                Some(ratio(ours, theirs))
            })
            .collect()
    }

    fn b6_summary(&self, out: &mut String) {
        if self.b6.is_empty() {
            return;
        }
        let cpu = |s: &B6Sample, _: &BTreeMap<System, &B6Sample>| s.sut_per_query();
        let added = |p: f64| {
            move |s: &B6Sample, r: &BTreeMap<System, &B6Sample>| {
                r.get(&System::Direct)
                    .map_or(f64::NAN, |d| s.result.latency(p) - d.result.latency(p))
            }
        };
        let qps = |s: &B6Sample, _: &BTreeMap<System, &B6Sample>| s.result.qps;
        let rate = self.rate;
        for (label, peer) in [
            ("dnsdist-re2", Some(System::DnsdistRe)),
            ("dnsdist-suffix", Some(System::DnsdistSfx)),
            ("best dnsdist", None),
        ] {
            let r = self.b6_ratios(false, peer, &cpu, true);
            let _ = writeln!(
                out,
                "| B6 | CPU µs/query at {rate} q/s, ours / {label} | {} | ≤ 0.95× ({}); stretch ≤ 0.7× ({}) |",
                spread_text(&r),
                verdict(&r, 0.95, true),
                verdict(&r, 0.7, true)
            );
        }
        let proxy_only =
            |s: &B6Sample, _: &BTreeMap<System, &B6Sample>| s.sut_per_query() - s.agent_per_query();
        let r = self.b6_ratios(false, None, &proxy_only, true);
        let _ = writeln!(
            out,
            "| B6 | CPU µs/query at {rate} q/s, dns-proxy alone (without the agent) / best dnsdist | {} | (for diagnosis) |",
            spread_text(&r)
        );
        for (p, target) in [(50.0, Some(0.9)), (99.0, None)] {
            let r = self.b6_ratios(false, None, &added(p), true);
            let target = target.map_or_else(
                || "(no target)".to_owned(),
                |t| format!("≤ {t}× ({})", verdict(&r, t, true)),
            );
            let _ = writeln!(
                out,
                "| B6 | added p{p:.0} latency at {rate} q/s, ours / best dnsdist | {} | {target} |",
                spread_text(&r)
            );
        }
        if self.b6.iter().any(|s| s.rate.is_none()) {
            let r = self.b6_ratios(true, None, &qps, false);
            let _ = writeln!(
                out,
                "| B6 | max queries/s, ours / best dnsdist (generator-bound lower bound) | {} | (no target) |",
                spread_text(&r)
            );
            let r = self.b6_ratios(true, None, &cpu, true);
            let _ = writeln!(
                out,
                "| B6 | CPU µs/query at max rate, ours / best dnsdist | {} | (no target) |",
                spread_text(&r)
            );
        }
    }

    fn b7_pairs(&self) -> Vec<(&B7Sample, &B7Sample)> {
        let mut by_round: BTreeMap<usize, (Option<&B7Sample>, Option<&B7Sample>)> = BTreeMap::new();
        for s in &self.b7 {
            let e = by_round.entry(s.round).or_default();
            match s.kind {
                Kind::Fqdn => e.0 = Some(s),
                Kind::Baseline => e.1 = Some(s),
            }
        }
        by_round
            .into_values()
            .filter_map(|(f, b)| Some((f?, b?)))
            .collect()
    }

    fn b7_summary(&self, out: &mut String) {
        if self.b7.is_empty() {
            return;
        }
        let fqdn: Vec<&B7Sample> = self.b7.iter().filter(|s| s.kind == Kind::Fqdn).collect();
        let names: u64 = fqdn.iter().map(|s| s.load.names).sum();
        let ok: u64 = fqdn.iter().map(|s| s.load.first_syn_ok).sum();
        let percent = if names == 0 {
            f64::NAN
        } else {
            100.0 * ok as f64 / names as f64
        };
        let _ = writeln!(
            out,
            "| B7 | first SYNs allowed, all held runs together | {} % ({ok} of {names}; per run {}) | 100 % ({}) |",
            num(percent, 3),
            spread_text(
                &fqdn
                    .iter()
                    .map(|s| s.first_syn_percent())
                    .collect::<Vec<_>>()
            ),
            if names > 0 && ok == names {
                "**met**"
            } else {
                "**not met**"
            }
        );
        let pairs = self.b7_pairs();
        for (p, get, target) in [
            (
                50,
                (|s: &B7Sample| s.load.resolve_p50_us) as fn(&B7Sample) -> f64,
                None,
            ),
            (
                99,
                |s: &B7Sample| s.load.resolve_p99_us,
                Some((1000.0, 250.0)),
            ),
        ] {
            let added: Vec<f64> = pairs.iter().map(|(f, b)| get(f) - get(b)).collect();
            let target = target.map_or_else(
                || "(no target)".to_owned(),
                |(must, stretch)| {
                    format!(
                        "≤ {must} µs ({}); stretch ≤ {stretch} µs ({})",
                        verdict(&added, must, true),
                        verdict(&added, stretch, true)
                    )
                },
            );
            let held: Vec<f64> = pairs.iter().map(|(f, _)| get(f)).collect();
            let base: Vec<f64> = pairs.iter().map(|(_, b)| get(b)).collect();
            let _ = writeln!(
                out,
                "| B7 | added p{p} resolution latency, held − baseline, µs (medians: held {}, baseline {}) | {} | {target} |",
                num(median(&held).unwrap_or(f64::NAN), 0),
                num(median(&base).unwrap_or(f64::NAN), 0),
                spread_text(&added)
            );
        }
    }

    /// The hold histogram and timeouts over all held runs together.
    fn b7_hold_summary(&self, out: &mut String) {
        let fqdn: Vec<&B7Sample> = self.b7.iter().filter(|s| s.kind == Kind::Fqdn).collect();
        if fqdn.is_empty() {
            return;
        }
        let timeouts: f64 = fqdn.iter().map(|s| s.hold_timeouts).sum();
        let errors: f64 = fqdn.iter().map(|s| s.fqdn_errors).sum();
        let p50: Vec<f64> = fqdn
            .iter()
            .map(|s| s.hold.percentile_bound(50.0) * 1e6)
            .collect();
        let p99: Vec<f64> = fqdn
            .iter()
            .map(|s| s.hold.percentile_bound(99.0) * 1e6)
            .collect();
        let _ = writeln!(
            out,
            "| B7 | proxy hold (dns_proxy_fqdn_hold_seconds), held runs: bucket bound of p50 / p99, µs | {} / {} (median over runs); hold timeouts {timeouts:.0}, FQDN errors {errors:.0} in all | (diagnosis) |",
            num(median(&p50).unwrap_or(f64::NAN), 0),
            num(median(&p99).unwrap_or(f64::NAN), 0),
        );
    }

    pub fn render(&self) -> String {
        let mut out = String::from(
            "# DNS benchmarks B6 and B7: dns-proxy vs dnsdist, FQDN learning\n\n## Summary\n\n",
        );
        let _ = writeln!(
            out,
            "Ratios are ours / peer, the median of per-round ratios [min–max, rounds]; below 1 is better \
             for CPU and latency. B7 added latency is the per-round difference of the client's resolution \
             percentiles, held names minus unselected names.\n\n| id | metric | value | target |\n| --- | --- | --- | --- |"
        );
        self.b6_summary(&mut out);
        self.b7_summary(&mut out);
        self.b7_hold_summary(&mut out);
        let _ = writeln!(out, "\n## Set-up\n\n{}", self.header);
        self.b6_tables(&mut out);
        self.b7_tables(&mut out);
        out
    }

    fn b6_tables(&self, out: &mut String) {
        if self.b6.is_empty() {
            return;
        }
        let _ = writeln!(out, "## B6: medians per system\n");
        let rounds = self.b6_rounds(false);
        let _ = writeln!(
            out,
            "| run | system | q/s | SUT µs/query | of which agent | all processes µs/query | p50 µs | p90 µs | p99 µs | added p50 µs | added p99 µs | lost | wrong rcode |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for max in [false, true] {
            for system in System::ALL {
                let samples: Vec<&B6Sample> = self
                    .b6
                    .iter()
                    .filter(|s| s.system == system && s.rate.is_none() == max)
                    .collect();
                if samples.is_empty() {
                    continue;
                }
                let m = |f: &dyn Fn(&B6Sample) -> f64| {
                    median(&samples.iter().map(|s| f(s)).collect::<Vec<_>>()).unwrap_or(f64::NAN)
                };
                let added = |p: f64| {
                    let v: Vec<f64> = samples
                        .iter()
                        .filter_map(|s| {
                            let d = rounds.get(&s.round)?.get(&System::Direct)?;
                            Some(s.result.latency(p) - d.result.latency(p))
                        })
                        .collect();
                    median(&v).unwrap_or(f64::NAN)
                };
                let run = if max {
                    "max".to_owned()
                } else {
                    format!("{} q/s", self.rate)
                };
                let (a50, a99) = if max {
                    (f64::NAN, f64::NAN)
                } else {
                    (added(50.0), added(99.0))
                };
                let _ = writeln!(
                    out,
                    "| {run} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    system.name(),
                    num(m(&|s| s.result.qps), 0),
                    num(m(&B6Sample::sut_per_query), 2),
                    num(m(&B6Sample::agent_per_query), 2),
                    num(m(&B6Sample::all_per_query), 2),
                    num(m(&|s| s.result.latency(50.0)), 0),
                    num(m(&|s| s.result.latency(90.0)), 0),
                    num(m(&|s| s.result.latency(99.0)), 0),
                    num(a50, 0),
                    num(a99, 0),
                    num(m(&|s| s.result.lost as f64), 0),
                    num(m(&|s| s.result.wrong as f64), 0),
                );
            }
        }
        let _ = writeln!(
            out,
            "\nSUT = dns-proxy + node-agent for ours, dnsdist (all its threads) for the peers; \
             all processes = SUT + dnsmasq + dnsperf. Latencies come from dnsperf -v (one line per \
             answer); max runs are not verbose, so they have none.\n\n## B6: every run\n\n\
             | round | run | system | q/s | sent | completed | lost | wrong | rcodes | SUT µs/q | agent µs/q | dnsmasq µs | dnsperf µs | p50 | p90 | p99 | steal % | other % |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for s in &self.b6 {
            let rcodes: Vec<String> = s
                .result
                .rcodes
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                s.round,
                s.rate
                    .map_or_else(|| "max".to_owned(), |r| format!("{r} q/s")),
                s.system.name(),
                num(s.result.qps, 0),
                s.result.sent,
                s.result.completed,
                s.result.lost,
                s.result.wrong,
                rcodes.join(", "),
                num(s.sut_per_query(), 2),
                num(s.agent_per_query(), 2),
                num(s.upstream_us, 0),
                num(s.generator_us, 0),
                num(s.result.latency(50.0), 0),
                num(s.result.latency(90.0), 0),
                num(s.result.latency(99.0), 0),
                num(s.steal_percent, 2),
                num(s.other_percent, 1),
            );
        }
        let _ = writeln!(out);
    }

    fn b7_tables(&self, out: &mut String) {
        if self.b7.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "## B7: every run\n\n\
             | round | names | names/s | resolved (no connect) | first SYN ok | late SYN | connect failed | unresolved | resolve p50 µs | p90 | p99 | max | connect p50 µs | p99 | holds | hold p50 ≤ | hold p99 ≤ | hold timeouts | FQDN errors | proxy µs/name | agent µs/name | settled after s |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for s in &self.b7 {
            let per = |us: f64| {
                if s.load.names == 0 {
                    f64::NAN
                } else {
                    us / s.load.names as f64
                }
            };
            let l = &s.load;
            let _ = writeln!(
                out,
                "| {} {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} µs | {} µs | {} | {} | {} | {} | {} |",
                s.round,
                s.kind.name(),
                l.names,
                num(l.achieved_rate, 0),
                l.resolved_only,
                l.first_syn_ok,
                l.connect_late,
                l.connect_failed,
                l.resolve_failed,
                num(l.resolve_p50_us, 0),
                num(l.resolve_p90_us, 0),
                num(l.resolve_p99_us, 0),
                num(l.resolve_max_us, 0),
                num(l.connect_p50_us, 0),
                num(l.connect_p99_us, 0),
                num(s.hold.count, 0),
                num(s.hold.percentile_bound(50.0) * 1e6, 0),
                num(s.hold.percentile_bound(99.0) * 1e6, 0),
                num(s.hold_timeouts, 0),
                num(s.fqdn_errors, 0),
                num(per(s.proxy_us), 1),
                num(per(s.agent_us), 1),
                num(s.settle_secs, 1),
            );
        }
        let _ = writeln!(
            out,
            "\nThe proxy's `dns_proxy_fqdn_hold_seconds` over each run (non-cumulative bucket counts):\n"
        );
        for s in &self.b7 {
            let _ = writeln!(
                out,
                "- round {} {}: {}",
                s.round,
                s.kind.name(),
                s.hold.describe()
            );
        }
        let _ = writeln!(out);
    }
}
