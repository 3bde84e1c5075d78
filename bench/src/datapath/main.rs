//! `datapath-bench`: B4 (connection churn through the eBPF redirect vs the same l7-proxy
//! behind nftables TPROXY) and B9 (cost of the tc programs for flows that are not
//! redirected: attached vs detached) of BENCHMARKS.md, in network namespaces. See
//! bench/README.md.

mod load;
mod nodes;
mod report;
mod runs;

#[path = "../common.rs"]
mod common;
#[allow(dead_code)] // shared with http-bench; not every helper is used here
#[path = "../procfs.rs"]
mod procfs;
#[allow(dead_code)]
#[path = "../stats.rs"]
mod stats;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::common::{
    Binaries, check_interrupted, command_line, release_binaries, results_path, seed_or_clock,
    watch_signals, write_results,
};
use crate::nodes::{BenchNode, Key, Setup};
use crate::report::Report;
use crate::runs::{Settings, Workload};
use crate::stats::Shuffler;

#[derive(Debug, Parser)]
#[command(about = "B4 and B9 of BENCHMARKS.md: the eBPF datapath vs TPROXY and vs nothing")]
pub struct Args {
    /// Benchmarks to run, comma-separated (B4, B9).
    #[arg(long, value_delimiter = ',', default_values = ["B4", "B9"])]
    pub only: Vec<String>,
    /// Interleaved rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds of warm-up before each wrk run (0: none).
    #[arg(long, default_value_t = 1)]
    pub warmup: u64,
    /// wrk connections (closed loop).
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Skip the bulk TCP stream of B9 (iperf3).
    #[arg(long)]
    pub no_iperf: bool,
    /// Skip the pass that reads the programs' run time (kernel.bpf_stats_enabled).
    #[arg(long)]
    pub no_prog_stats: bool,
    /// Seed of the order of configurations within rounds (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Do not run `cargo build --release` first.
    #[arg(long)]
    pub no_build: bool,
    /// Debugging: after starting the nodes, print their namespaces and wait this many
    /// seconds before the rounds (to look at them by hand).
    #[arg(long, default_value_t = 0, hide = true)]
    pub pause: u64,
    /// Results file (default: bench/results/datapath-DATE.md).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    integration::netns::require_root();
    watch_signals();
    let only: Vec<String> = args.only.iter().map(|b| b.to_ascii_uppercase()).collect();
    for b in &only {
        if !["B4", "B9"].contains(&b.as_str()) {
            bail!("--only: unknown benchmark {b} (B4, B9)");
        }
    }
    if !(1..=600).contains(&args.duration) || !(1..=50).contains(&args.rounds) {
        bail!("--duration must be 1-600 s and --rounds 1-50");
    }
    let mut workloads = Vec::new();
    if only.iter().any(|b| b == "B4") {
        workloads.push(Workload::Churn);
        workloads.push(Workload::ChurnNoTimeWait);
    }
    if only.iter().any(|b| b == "B9") {
        workloads.push(Workload::KeepAlive);
        if !args.no_iperf {
            workloads.push(Workload::Bulk);
        }
    }
    let settings = Settings {
        rounds: args.rounds,
        duration: Duration::from_secs(args.duration),
        warmup: Duration::from_secs(args.warmup),
        connections: args.connections.clamp(1, 10_000),
        ticks_per_sec: procfs::clock_ticks()?,
        max_steal_percent: 2.0,
    };
    let seed = seed_or_clock(args.seed);
    let date = command_line("date", &["-u", "+%F"]);
    let out = results_path(args.out.as_deref(), "datapath", &date);
    let bins = release_binaries(!args.no_build)?;
    nodes::remove_stale_pins();
    let scratch = tempfile::Builder::new()
        .prefix("datapath-bench-")
        .tempdir()
        .context("creating a scratch folder")?;

    let mut report = Report::new(&args, &settings, &workloads, seed, &date);
    // Nodes are dropped (processes stopped, namespaces and pins removed) before the
    // scratch folder, also when a step fails.
    let mut nodes: BTreeMap<Key, BenchNode> = BTreeMap::new();
    let result = run(
        &mut nodes,
        &bins,
        scratch.path(),
        &workloads,
        &settings,
        seed,
        &mut report,
        &args,
    );
    drop(nodes);
    write_results(&out, report.render(), &result)?;
    result
}

#[allow(clippy::too_many_arguments)]
fn run(
    nodes: &mut BTreeMap<Key, BenchNode>,
    bins: &Binaries,
    scratch: &std::path::Path,
    workloads: &[Workload],
    settings: &Settings,
    seed: u64,
    report: &mut Report,
    args: &Args,
) -> Result<()> {
    let mut keys: Vec<Key> = workloads.iter().flat_map(|w| w.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        check_interrupted()?;
        eprintln!("starting {}", key.name());
        nodes.insert(key, BenchNode::start(key, bins, scratch)?);
    }
    if args.pause > 0 {
        for node in nodes.values() {
            eprintln!(
                "{}: node {} client {} backend {} dir {}",
                node.key.name(),
                node.node.ns.name(),
                node.client().name(),
                node.node.pods()[1].ns.name(),
                node.dir.display()
            );
        }
        for _ in 0..args.pause {
            check_interrupted()?;
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let mut shuffler = Shuffler::new(seed);
    let result = runs::rounds(
        nodes,
        workloads,
        settings,
        &mut shuffler,
        &mut report.samples,
    );
    if let Err(e) = &result {
        eprintln!("rounds failed: {e:#}");
        for (key, node) in nodes.iter() {
            if key.setup == Setup::Datapath {
                eprintln!("{}", common::log_tails(&node.dir));
            }
        }
        return result;
    }
    if !args.no_prog_stats {
        eprintln!("program statistics pass (kernel.bpf_stats_enabled=1)");
        report.prog_stats = runs::prog_stats(nodes, workloads, settings)?;
    }
    Ok(())
}
