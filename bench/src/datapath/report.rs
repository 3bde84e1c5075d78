//! The results file: a summary against the targets of BENCHMARKS.md, the set-up, per
//! configuration medians, the program statistics and every raw run.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::Args;
use crate::common::{command_line, cpu_model};
use crate::nodes::Setup;
use crate::runs::{ProgStats, Sample, Settings, Workload};
use crate::stats::{Spread, median, ratio};

/// The binaries are built from the working tree: say so when it differs from the commit
/// in the crates they are built from.
fn dirty_note() -> String {
    let out = std::process::Command::new("git")
        .args([
            "status",
            "--porcelain",
            "--",
            "l7-proxy",
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
                " plus uncommitted changes in the working tree the binaries were built from: {}",
                files.join(", ")
            )
        }
        _ => String::new(),
    }
}

#[derive(Debug, Default)]
pub struct Report {
    header: String,
    workloads: Vec<Workload>,
    pub samples: Vec<Sample>,
    pub prog_stats: Vec<ProgStats>,
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

impl Report {
    pub fn new(
        args: &Args,
        settings: &Settings,
        workloads: &[Workload],
        seed: u64,
        date: &str,
    ) -> Self {
        let cpu = cpu_model();
        let header = format!(
            "Command: `cargo run --release -p bench --bin datapath-bench -- --only {only} --rounds {rounds} --duration {dur}` (as root; seed {seed}).\n\n\
             | | |\n| --- | --- |\n| date | {date} |\n| kernel | {kernel} |\n| CPU | {nproc} x {cpu} |\n| commit | {commit}{dirty} |\n\
             | rustc | {rustc} |\n| wrk | {wrk} |\n| iperf3 | {iperf} |\n| nft | {nft} |\n\
             | rounds | {rounds}, {dur} s per run after a {warm} s warm-up (wrk runs), configurations shuffled per round; steal > 2 % redoes a run |\n\
             | load | wrk -t1 -c{conns}; B4 with `-H 'Connection: close'` (one connection per request) to the backend's port 80; B9 keep-alive to port 8081, iperf3 one stream to 5201 |\n\
             | pinning | proxy and agent on CPU 0; wrk/iperf3 client and the backend (nginx, one process; iperf3 -s) on CPU 1 |\n\
             | proxy | `l7-proxy --ingress 0.0.0.0:15002 --egress 0.0.0.0:15001 --mark 0x300 --ingress-mark 0x400 --upstream-source original` (tproxy-node: `--upstream-source node`), logs at warn |\n\
             | policy | backend ingress from client: 80/TCP with `http: [{{}}]`; 8081/TCP and 5201/TCP at L3/L4 only |\n",
            only = args.only.join(","),
            rounds = settings.rounds,
            dur = settings.duration.as_secs(),
            warm = settings.warmup.as_secs(),
            conns = settings.connections,
            kernel = command_line("uname", &["-r"]),
            nproc = command_line("nproc", &[]),
            commit = command_line("git", &["rev-parse", "--short", "HEAD"]),
            dirty = dirty_note(),
            rustc = command_line("rustc", &["-V"]),
            wrk = command_line("wrk", &["-v"]),
            iperf = command_line("iperf3", &["--version"]),
            nft = command_line("nft", &["--version"]),
        );
        Self {
            header,
            workloads: workloads.to_vec(),
            ..Self::default()
        }
    }

    fn of(&self, workload: Workload) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.workload == workload)
            .collect()
    }

    /// Per-round ratios of `metric`, `ours` / `peer` (None: the best peer of the round,
    /// highest for rates, lowest for costs).
    fn ratios(
        &self,
        workload: Workload,
        ours: Setup,
        peer: Option<Setup>,
        metric: impl Fn(&Sample) -> f64,
        higher_is_better: bool,
    ) -> Vec<f64> {
        let mut by_round: BTreeMap<usize, BTreeMap<Setup, f64>> = BTreeMap::new();
        for s in self.of(workload) {
            by_round
                .entry(s.round)
                .or_default()
                .insert(s.setup, metric(s));
        }
        by_round
            .values()
            .filter_map(|r| {
                let o = *r.get(&ours)?;
                let theirs = match peer {
                    Some(p) => *r.get(&p)?,
                    None => {
                        let peers = r.iter().filter(|(k, _)| **k != ours).map(|(_, v)| *v);
                        if higher_is_better {
                            peers.fold(f64::NEG_INFINITY, f64::max)
                        } else {
                            peers.fold(f64::INFINITY, f64::min)
                        }
                    }
                };
                Some(ratio(o, theirs))
            })
            .collect()
    }

    fn median_of(&self, workload: Workload, setup: Setup, metric: impl Fn(&Sample) -> f64) -> f64 {
        let values: Vec<f64> = self
            .of(workload)
            .into_iter()
            .filter(|s| s.setup == setup)
            .map(metric)
            .collect();
        median(&values).unwrap_or(f64::NAN)
    }

    fn summary(&self, out: &mut String) {
        let verdict = |values: &[f64], target: f64| match Spread::of(values) {
            Some(s) if s.median >= target => "**met**",
            Some(_) => "**not met**",
            None => "n/a",
        };
        let _ = writeln!(out, "## Summary\n");
        let _ = writeln!(
            out,
            "Ratios are ours / peer, the median of per-round ratios [min–max, rounds]. \
             B4 runs twice: with the kernel's defaults, and (tw0) on nodes whose namespace keeps no \
             TIME_WAIT sockets (`net.ipv4.tcp_max_tw_buckets=0`), see the notes below.\n"
        );
        let _ = writeln!(out, "| id | metric | ratio | target | raw medians |");
        let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
        for w in [Workload::Churn, Workload::ChurnNoTimeWait] {
            if !self.workloads.contains(&w) {
                continue;
            }
            let variant = if w == Workload::ChurnNoTimeWait {
                " (tw0)"
            } else {
                ""
            };
            let rate = |s: &Sample| s.rate;
            let raw = |setup: Setup| num(self.median_of(w, setup, rate), 0);
            for (peer, label) in [
                (Some(Setup::TproxyOriginal), "tproxy-orig"),
                (Some(Setup::TproxyNode), "tproxy-node"),
                (None, "best TPROXY"),
            ] {
                let r = self.ratios(w, Setup::Datapath, peer, rate, true);
                let _ = writeln!(
                    out,
                    "| B4{variant} | conn/s, ebpf / {label} | {} | ≥ 1.0× ({}) | ebpf {} / {} |",
                    spread_text(&r),
                    verdict(&r, 1.0),
                    raw(Setup::Datapath),
                    peer.map_or_else(
                        || format!(
                            "{} / {}",
                            raw(Setup::TproxyOriginal),
                            raw(Setup::TproxyNode)
                        ),
                        raw
                    ),
                );
            }
            let sut = |s: &Sample| s.sut_per_unit();
            let r = self.ratios(w, Setup::Datapath, Some(Setup::TproxyOriginal), sut, false);
            let _ = writeln!(
                out,
                "| B4{variant} | proxy+agent CPU µs/connection, ebpf / tproxy-orig (lower is better) | {} | – | {} / {} µs |",
                spread_text(&r),
                num(self.median_of(w, Setup::Datapath, sut), 1),
                num(self.median_of(w, Setup::TproxyOriginal, sut), 1),
            );
            let agent = |s: &Sample| {
                if s.units == 0 {
                    f64::NAN
                } else {
                    s.agent_us / s.units as f64
                }
            };
            let _ = writeln!(
                out,
                "| B4{variant} | of which agent CPU µs/connection, ebpf / tproxy-orig | – | – | {} / {} µs |",
                num(self.median_of(w, Setup::Datapath, agent), 1),
                num(self.median_of(w, Setup::TproxyOriginal, agent), 1),
            );
            let machine = |s: &Sample| s.machine_per_unit();
            let r = self.ratios(
                w,
                Setup::Datapath,
                Some(Setup::TproxyOriginal),
                machine,
                false,
            );
            let _ = writeln!(
                out,
                "| B4{variant} | whole-machine CPU µs/connection, ebpf / tproxy-orig (lower is better) | {} | – | {} / {} µs |",
                spread_text(&r),
                num(self.median_of(w, Setup::Datapath, machine), 1),
                num(self.median_of(w, Setup::TproxyOriginal, machine), 1),
            );
        }
        for w in [Workload::KeepAlive, Workload::Bulk] {
            if !self.workloads.contains(&w) {
                continue;
            }
            let rate = |s: &Sample| s.rate;
            let r = self.ratios(w, Setup::Datapath, Some(Setup::Bare), rate, true);
            let _ = writeln!(
                out,
                "| B9 | {} {}, attached / detached | {} | ≥ 0.98× ({}) | {} / {} |",
                w.name(),
                w.unit(),
                spread_text(&r),
                verdict(&r, 0.98),
                num(self.median_of(w, Setup::Datapath, rate), 2),
                num(self.median_of(w, Setup::Bare, rate), 2),
            );
            let r = self.ratios(w, Setup::Datapath, Some(Setup::BareWithRule), rate, true);
            let _ = writeln!(
                out,
                "| B9 | {} {}, attached / detached with the agent's ip rule (the programs alone) | {} | – | {} / {} |",
                w.name(),
                w.unit(),
                spread_text(&r),
                num(self.median_of(w, Setup::Datapath, rate), 2),
                num(self.median_of(w, Setup::BareWithRule, rate), 2),
            );
            let pps = |s: &Sample| s.pps();
            let r = self.ratios(w, Setup::Datapath, Some(Setup::Bare), pps, true);
            let _ = writeln!(
                out,
                "| B9 | {} packets/s into the node, attached / detached | {} | – | {} / {} |",
                w.name(),
                spread_text(&r),
                num(self.median_of(w, Setup::Datapath, pps), 0),
                num(self.median_of(w, Setup::Bare, pps), 0),
            );
            let ns = |s: &Sample| s.machine_ns_per_packet();
            let attached: Vec<f64> = self
                .of(w)
                .into_iter()
                .filter(|s| s.setup == Setup::Datapath)
                .map(ns)
                .collect();
            let detached: Vec<f64> = self
                .of(w)
                .into_iter()
                .filter(|s| s.setup == Setup::Bare)
                .map(ns)
                .collect();
            let diff = match (median(&attached), median(&detached)) {
                (Some(a), Some(d)) => a - d,
                _ => f64::NAN,
            };
            let _ = writeln!(
                out,
                "| B9 | {} whole-machine CPU ns/packet, attached − detached (noisy) | {} ns | ≤ 100 ns (stretch) | {} / {} ns |",
                w.name(),
                num(diff, 0),
                num(median(&attached).unwrap_or(f64::NAN), 0),
                num(median(&detached).unwrap_or(f64::NAN), 0),
            );
        }
        for p in &self.prog_stats {
            if p.workload.is_churn() {
                continue;
            }
            let _ = writeln!(
                out,
                "| B9 | {}: eBPF program run time per packet entering the node (from_pod + to_pod, bpf_stats) | {} ns | ≤ 100 ns (stretch) | {} packets |",
                p.workload.name(),
                num(p.ns_per_packet, 0),
                p.packets,
            );
        }
        let _ = writeln!(out);
    }

    pub fn render(&self) -> String {
        let mut out = String::from(
            "# Datapath benchmarks B4 and B9: eBPF redirect vs TPROXY, tc programs attached vs detached\n\n",
        );
        self.summary(&mut out);
        let _ = writeln!(out, "## Set-up\n\n{}", self.header);
        let _ = writeln!(
            out,
            "Configurations (one node namespace each, all up for the whole run; `bench/src/datapath/nodes.rs`):\n\n\
             - **ebpf** (ours): `node-agent run` with the datapath (tc `from_pod`/`to_pod` on both pod devices), proxy ingress listener reached by `bpf_sk_assign`.\n\
             - **tproxy-orig**: agent `--no-datapath`, the same proxy and flags, nft `tproxy to :15002` for port 80 from `lxc*` (`integration::netns::Node::tproxy`) plus `socket transparent 1 meta mark set 0x200` so that replies reach the proxy's original-source upstream sockets.\n\
             - **tproxy-node**: as tproxy-orig with `--upstream-source node` and no socket rule (upstream connections from the node's address).\n\
             - **detached**: no agent, no proxy, no programs, no nft: plain routing.\n\
             - **detached+rule**: as detached plus the agent's policy-routing rule (`ip rule fwmark 0x200/0xf00 lookup 2004`, `local 0.0.0.0/0 dev lo table 2004`), which makes every forwarded packet walk the FIB rules.\n"
        );
        for &w in &self.workloads {
            let _ = writeln!(
                out,
                "## {} {}: medians per configuration\n",
                w.bench(),
                w.name()
            );
            let _ = writeln!(
                out,
                "| config | {unit} | errors | proxied | packets/s | proxy+agent µs/{per} | of which agent | backend µs/{per} | machine µs/{per} | machine ns/packet | steal % | unattributed % |",
                unit = w.unit(),
                per = w.per()
            );
            let _ = writeln!(
                out,
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
            );
            for &setup in w.setups() {
                let m = |f: &dyn Fn(&Sample) -> f64| self.median_of(w, setup, f);
                let per_unit = |us: f64, s: &Sample| {
                    if s.units == 0 {
                        f64::NAN
                    } else {
                        us / s.units as f64
                    }
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    setup.name(),
                    num(m(&|s| s.rate), 2),
                    num(m(&|s| s.errors as f64), 0),
                    num(m(&|s| s.proxied as f64), 0),
                    num(m(&Sample::pps), 0),
                    num(m(&Sample::sut_per_unit), 2),
                    num(m(&|s| per_unit(s.agent_us, s)), 2),
                    num(m(&|s| per_unit(s.backend_us, s)), 2),
                    num(m(&Sample::machine_per_unit), 2),
                    num(m(&Sample::machine_ns_per_packet), 0),
                    num(m(&|s| s.steal_percent), 2),
                    num(m(&|s| s.other_percent), 1),
                );
            }
            let _ = writeln!(out);
        }
        if !self.prog_stats.is_empty() {
            let _ = writeln!(
                out,
                "## eBPF program run time (one extra run per workload on the ebpf node with kernel.bpf_stats_enabled=1, not part of the ratios)\n"
            );
            let _ = writeln!(
                out,
                "| workload | rate | packets | ns/packet (all programs) | attachment: runs, ns/run |"
            );
            let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
            for p in &self.prog_stats {
                let progs: Vec<String> = p
                    .programs
                    .iter()
                    .map(|(name, runs, ns)| format!("{name}: {runs}, {}", num(*ns, 0)))
                    .collect();
                let _ = writeln!(
                    out,
                    "| {} | {} {} | {} | {} | {} |",
                    p.workload.name(),
                    num(p.rate, 1),
                    p.workload.unit(),
                    p.packets,
                    num(p.ns_per_packet, 0),
                    progs.join("; ")
                );
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(out, "## Raw runs\n");
        let _ = writeln!(
            out,
            "| bench | workload | round | config | s | rate | units | errors | proxied | packets | proxy+agent CPU µs | agent CPU µs | backend CPU µs | machine busy µs | steal % | unattributed % | retransmits |"
        );
        let _ = writeln!(
            out,
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for s in &self.samples {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.2} | {:.2} {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.1} | {} |",
                s.workload.bench(),
                s.workload.name(),
                s.round,
                s.setup.name(),
                s.secs,
                s.rate,
                s.workload.unit(),
                s.units,
                s.errors,
                s.proxied,
                s.packets,
                s.sut_us,
                s.agent_us,
                s.backend_us,
                s.machine_us,
                s.steal_percent,
                s.other_percent,
                s.retransmits,
            );
        }
        out
    }
}
