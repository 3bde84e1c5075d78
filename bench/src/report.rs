//! The results file: set-up, ratios per benchmark against the targets of BENCHMARKS.md,
//! then every raw run so that each ratio can be recomputed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::footprint::Footprint;
use crate::runs::{Sample, Saturation};
use crate::stats::{Spread, ratio};
use crate::systems::System;

/// Compile/stream/load time of one system for one rule set.
#[derive(Debug, Clone)]
pub struct ReadyTime {
    pub system: System,
    pub variant: String,
    pub seconds: f64,
}

#[derive(Debug, Default)]
pub struct Report {
    pub header: String,
    pub samples: Vec<Sample>,
    pub saturation: Vec<Saturation>,
    pub footprints: Vec<Footprint>,
    pub ready: Vec<ReadyTime>,
}

/// Per-round values of one metric, keyed by (round, system).
fn by_round<T>(
    items: &[T],
    key: impl Fn(&T) -> (usize, System),
    value: impl Fn(&T) -> f64,
) -> BTreeMap<usize, BTreeMap<System, f64>> {
    let mut rounds: BTreeMap<usize, BTreeMap<System, f64>> = BTreeMap::new();
    for item in items {
        let (round, system) = key(item);
        rounds.entry(round).or_default().insert(system, value(item));
    }
    rounds
}

/// Per-round ratios ours / `peer` (or / the better peer of that round when `None`).
/// `lower_is_better` picks the best peer for costs; rates pass false.
fn ratios(
    rounds: &BTreeMap<usize, BTreeMap<System, f64>>,
    peer: Option<System>,
    lower_is_better: bool,
) -> Vec<f64> {
    rounds
        .values()
        .filter_map(|r| {
            let ours = *r.get(&System::Ours)?;
            let theirs = match peer {
                Some(p) => *r.get(&p)?,
                None => {
                    let peers = System::PEERS.iter().filter_map(|p| r.get(p).copied());
                    if lower_is_better {
                        peers.fold(f64::INFINITY, f64::min)
                    } else {
                        peers.fold(f64::NEG_INFINITY, f64::max)
                    }
                }
            };
            Some(ratio(ours, theirs))
        })
        .collect()
}

fn spread_text(values: &[f64]) -> String {
    Spread::of(values).map_or_else(|| "n/a".to_owned(), |s| s.to_string())
}

fn median_of(values: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = values.collect();
    Spread::of(&v).map_or(f64::NAN, |s| s.median)
}

/// One line of ratios of a metric: vs nginx, vs haproxy, vs the best peer.
fn ratio_row(
    out: &mut String,
    label: &str,
    rounds: &BTreeMap<usize, BTreeMap<System, f64>>,
    lower_is_better: bool,
) {
    let _ = writeln!(
        out,
        "| {label} | {} | {} | {} |",
        spread_text(&ratios(rounds, Some(System::Nginx), lower_is_better)),
        spread_text(&ratios(rounds, Some(System::Haproxy), lower_is_better)),
        spread_text(&ratios(rounds, None, lower_is_better)),
    );
}

impl Report {
    pub fn render(&self) -> String {
        let mut out = self.header.clone();
        let mut variants: Vec<(&str, &str)> = Vec::new();
        for s in &self.samples {
            if !variants.contains(&(s.bench, s.variant.as_str())) {
                variants.push((s.bench, s.variant.as_str()));
            }
        }
        out.push_str("\n## Ratios (ours / peer): median [min–max over rounds]\n\n");
        out.push_str("Lower is better for CPU and latency, higher for rates. \"best\" divides by the better peer of each round. Added latency = the system's percentile minus the direct run's in the same round at the same rate.\n\n");
        for (bench, variant) in &variants {
            let samples: Vec<&Sample> = self
                .samples
                .iter()
                .filter(|s| s.bench == *bench && s.variant == *variant)
                .collect();
            let key = |s: &&Sample| (s.round, s.system);
            let cpu = by_round(&samples, key, |s| s.sut_us);
            let p99 = by_round(&samples, key, |s| s.oha.p99_us);
            let added = |pick: fn(&Sample) -> f64| {
                let mut rounds = by_round(&samples, key, |s| pick(s));
                for r in rounds.values_mut() {
                    let base = r.get(&System::Direct).copied();
                    for v in r.values_mut() {
                        *v = base.map_or(f64::NAN, |b| *v - b);
                    }
                }
                rounds
            };
            let _ = writeln!(
                out,
                "### {bench} {variant} (rate {} req/s)\n\n| metric | vs nginx | vs haproxy | vs best |\n| --- | --- | --- | --- |",
                samples.first().map_or(0, |s| s.rate)
            );
            ratio_row(&mut out, "SUT CPU µs/request", &cpu, true);
            let with_agent = by_round(&samples, key, |s| s.sut_us + s.agent_us.unwrap_or(0.0));
            ratio_row(&mut out, "SUT CPU incl. our agent", &with_agent, true);
            let has_direct = samples.iter().any(|s| s.system == System::Direct);
            if has_direct {
                ratio_row(&mut out, "added p50", &added(|s| s.oha.p50_us), true);
                ratio_row(&mut out, "added p99", &added(|s| s.oha.p99_us), true);
            }
            ratio_row(&mut out, "p99 (absolute)", &p99, true);
            out.push_str("\n| system | SUT µs/req | agent µs/req | all processes µs/req | p50 µs | p90 µs | p99 µs | achieved req/s | unexpected |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
            for system in [System::Direct, System::Ours, System::Nginx, System::Haproxy] {
                let of: Vec<&&Sample> = samples.iter().filter(|s| s.system == system).collect();
                if of.is_empty() {
                    continue;
                }
                let agent = median_of(of.iter().filter_map(|s| s.agent_us));
                let _ = writeln!(
                    out,
                    "| {} | {:.1} | {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
                    system.name(),
                    median_of(of.iter().map(|s| s.sut_us)),
                    if agent.is_nan() {
                        "-".to_owned()
                    } else {
                        format!("{agent:.1}")
                    },
                    median_of(of.iter().map(|s| s.total_us())),
                    median_of(of.iter().map(|s| s.oha.p50_us)),
                    median_of(of.iter().map(|s| s.oha.p90_us)),
                    median_of(of.iter().map(|s| s.oha.p99_us)),
                    median_of(of.iter().map(|s| s.oha.rps)),
                    of.iter().map(|s| s.unexpected()).sum::<u64>(),
                );
            }
            out.push('\n');
        }
        self.render_saturation(&mut out);
        self.render_scaling(&mut out);
        self.render_footprint(&mut out);
        self.render_raw(&mut out);
        out
    }

    fn render_saturation(&self, out: &mut String) {
        if self.saturation.is_empty() {
            return;
        }
        let key = |s: &Saturation| (s.round, s.system);
        let rps = by_round(&self.saturation, key, |s| s.wrk.rps);
        let cpu = by_round(&self.saturation, key, |s| s.sut_us);
        out.push_str("### B1 saturation (wrk, closed loop; a lower bound: wrk has one core, CPU 1, and is itself the limit when the SUT is fast)\n\n| metric | vs nginx | vs haproxy | vs best |\n| --- | --- | --- | --- |\n");
        ratio_row(out, "deny req/s", &rps, false);
        ratio_row(out, "SUT CPU µs/request at saturation", &cpu, true);
        out.push('\n');
    }

    /// B3: for each system, the cost with N rules over the cost with 1, per round.
    fn render_scaling(&self, out: &mut String) {
        let b3: Vec<&Sample> = self.samples.iter().filter(|s| s.bench == "B3").collect();
        if b3.is_empty() {
            return;
        }
        out.push_str("### B3 scaling: SUT CPU µs/request with N rules / with 1 rule (median of per-round ratios)\n\n| set | system | ratio |\n| --- | --- | --- |\n");
        let base: Vec<&&Sample> = b3.iter().filter(|s| s.variant == "mixed-1").collect();
        let mut variants: Vec<&str> = Vec::new();
        for s in &b3 {
            if s.variant != "mixed-1" && !variants.contains(&s.variant.as_str()) {
                variants.push(&s.variant);
            }
        }
        for variant in variants {
            for system in [System::Ours, System::Nginx, System::Haproxy] {
                let values: Vec<f64> = b3
                    .iter()
                    .filter(|s| s.variant == variant && s.system == system)
                    .filter_map(|s| {
                        let b = base
                            .iter()
                            .find(|b| b.round == s.round && b.system == system)?;
                        Some(ratio(s.sut_us, b.sut_us))
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "| {variant} / mixed-1 | {} | {} |",
                    system.name(),
                    spread_text(&values)
                );
            }
        }
        if !self.ready.is_empty() {
            out.push_str("\nTime from start to the first correct answer with the whole rule set (ours: agent compile + policy stream + proxy compile):\n\n| rule set | system | seconds |\n| --- | --- | --- |\n");
            for r in &self.ready {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.2} |",
                    r.variant,
                    r.system.name(),
                    r.seconds
                );
            }
        }
        out.push('\n');
    }

    fn render_footprint(&self, out: &mut String) {
        if self.footprints.is_empty() {
            return;
        }
        let key = |f: &Footprint| (f.round, f.system);
        out.push_str("### B5 footprint (ours = l7-proxy only; the agent is listed apart)\n\n| metric | vs nginx | vs haproxy | vs best |\n| --- | --- | --- | --- |\n");
        ratio_row(
            out,
            "idle Pss",
            &by_round(&self.footprints, key, |f| f.idle.pss_kib as f64),
            true,
        );
        ratio_row(
            out,
            "idle RSS",
            &by_round(&self.footprints, key, |f| f.idle.rss_kib as f64),
            true,
        );
        ratio_row(
            out,
            "RSS bytes per idle connection",
            &by_round(&self.footprints, key, |f| f.rss_bytes_per_conn()),
            true,
        );
        ratio_row(
            out,
            "Pss bytes per idle connection",
            &by_round(&self.footprints, key, |f| f.pss_bytes_per_conn()),
            true,
        );
        out.push_str("\n| round | system | rules | idle RSS KiB | idle Pss KiB | VmHWM KiB | RSS KiB with conns | Pss KiB with conns | conns | RSS B/conn | Pss B/conn | backend conns | agent RSS KiB | agent Pss KiB |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
        for f in &self.footprints {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {} | {} | {} |",
                f.round,
                f.system.name(),
                f.rules,
                f.idle.rss_kib,
                f.idle.pss_kib,
                f.idle.hwm_kib,
                f.loaded.rss_kib,
                f.loaded.pss_kib,
                f.connections,
                f.rss_bytes_per_conn(),
                f.pss_bytes_per_conn(),
                f.upstream_conns,
                f.agent.map_or("-".into(), |a| a.rss_kib.to_string()),
                f.agent.map_or("-".into(), |a| a.pss_kib.to_string()),
            );
        }
        out.push('\n');
    }

    fn render_raw(&self, out: &mut String) {
        out.push_str("## Raw runs\n\nFixed rate (oha). CPU in µs per completed request; latency in µs; statuses as code:count.\n\n| bench | variant | round | system | target req/s | achieved req/s | completed | statuses | errors | SUT µs | agent µs | backend µs | oha µs | p50 | p90 | p99 | steal % | other % |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
        for s in &self.samples {
            let statuses: Vec<String> = s
                .oha
                .statuses
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {:.2} | {} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} | {:.2} | {:.1} |",
                s.bench,
                s.variant,
                s.round,
                s.system.name(),
                s.rate,
                s.oha.rps,
                s.oha.completed,
                statuses.join(" "),
                s.oha.errors,
                s.sut_us,
                s.agent_us.map_or("-".into(), |a| format!("{a:.2}")),
                s.backend_us,
                s.generator_us,
                s.oha.p50_us,
                s.oha.p90_us,
                s.oha.p99_us,
                s.steal_percent,
                s.other_percent,
            );
        }
        if !self.saturation.is_empty() {
            out.push_str("\nSaturation (wrk -t1):\n\n| variant | round | system | requests | req/s | non-2xx | socket errors | SUT µs/req | steal % |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
            for s in &self.saturation {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {:.0} | {} | {} | {:.2} | {:.2} |",
                    s.variant,
                    s.round,
                    s.system.name(),
                    s.wrk.requests,
                    s.wrk.rps,
                    s.wrk.non_2xx,
                    s.wrk.socket_errors,
                    s.sut_us,
                    s.steal_percent
                );
            }
        }
    }
}
