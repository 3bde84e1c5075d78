//! `dns-bench`: B6 (dns-proxy CPU per query and added latency against dnsdist) and B7
//! (FQDN learning: the answer is held until the datapath allows its addresses) of
//! BENCHMARKS.md, in network namespaces. See bench/README.md. The hidden subcommands are
//! the bench's own servers and load tool, run inside the namespaces.

mod b6;
mod b6conf;
mod b7;
mod dnsperf;
mod fqdn_load;
mod metrics;
mod report;
mod serve;
mod wire;

#[allow(dead_code)] // shared with http-bench and datapath-bench; not every helper is used
#[path = "../common.rs"]
mod common;
#[allow(dead_code)]
#[path = "../procfs.rs"]
mod procfs;
#[allow(dead_code)]
#[path = "../stats.rs"]
mod stats;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::b6::{B6Env, System};
use crate::b6conf::RuleSet;
use crate::b7::{B7Env, Kind};
use crate::common::{
    check_interrupted, command_line, results_path, seed_or_clock, watch_signals, write_results,
};
use crate::report::Report;
use crate::stats::Shuffler;

/// The systems under test run here; load generators and servers on LOAD_CPU.
pub const SUT_CPU: &str = "0";
pub const LOAD_CPU: &str = "1";

#[derive(Debug, Parser)]
#[command(
    about = "B6 and B7 of BENCHMARKS.md: dns-proxy vs dnsdist, and FQDN learning",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    args: Args,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Benchmarks to run, comma-separated (B6, B7).
    #[arg(long, value_delimiter = ',', default_values = ["B6", "B7"])]
    pub only: Vec<String>,
    /// Interleaved rounds.
    #[arg(long, default_value_t = 7)]
    pub rounds: usize,
    /// B6: seconds per measured fixed-rate run.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// B6: seconds per max-throughput run (0: none).
    #[arg(long, default_value_t = 5)]
    pub max_duration: u64,
    /// B6: the fixed query rate (dnsperf -Q), below every system's saturation.
    #[arg(long, default_value_t = 5_000)]
    pub rate: u32,
    /// B6: number of DNS rules (half matchName, half matchPattern).
    #[arg(long, default_value_t = 1000)]
    pub patterns: usize,
    /// B7: new names per second.
    #[arg(long, default_value_t = 1000)]
    pub fqdn_rate: u32,
    /// B7: seconds per run.
    #[arg(long, default_value_t = 10)]
    pub fqdn_seconds: u64,
    /// B7: TTL of the responder's answers.
    #[arg(long, default_value_t = 30)]
    pub ttl: u32,
    /// B6: redo a run (twice at most) when processes outside the bench used more than this
    /// share of the machine meanwhile, as with steal; 100 turns it off (a machine shared
    /// with builds: read the "other %" column instead).
    #[arg(long, default_value_t = 100.0)]
    pub max_other_percent: f64,
    /// Seed of the query order and of the order of systems within rounds.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Do not run `cargo build --release` first.
    #[arg(long)]
    pub no_build: bool,
    /// Results file (default: bench/results/dns-DATE.md).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// B7's DNS pod: answers `nI.…` with 10.64.0.0 + I.
    #[command(hide = true)]
    ServeDns {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 30)]
        ttl: u32,
        #[arg(long, default_value_t = 3600)]
        lifetime: u64,
    },
    /// B7's web namespace: accepts and closes TCP connections.
    #[command(hide = true)]
    Sink {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 3600)]
        lifetime: u64,
    },
    /// B7's client: resolve new names at a fixed rate and connect to each answer.
    #[command(hide = true)]
    FqdnLoad {
        #[arg(long)]
        server: SocketAddr,
        #[arg(long)]
        domain: String,
        #[arg(long, default_value_t = 1)]
        first: u32,
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// 0: resolve only.
        #[arg(long, default_value_t = 0)]
        connect_port: u16,
    },
}

/// The binaries the bench runs: ours, and dns-bench itself for the helpers.
#[derive(Debug, Clone)]
pub struct Bins {
    pub agent: PathBuf,
    pub dns_proxy: PathBuf,
    pub bench: PathBuf,
}

/// The release binaries, built first unless `build` is false: benchmarks of a debug build
/// mean nothing.
fn release_binaries(build: bool) -> Result<Bins> {
    let target = common::release_dir(build, &["dns-proxy", "node-agent"])?;
    Ok(Bins {
        agent: target.join("node-agent"),
        dns_proxy: target.join("dns-proxy"),
        bench: std::env::current_exe().context("finding dns-bench itself")?,
    })
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Sub::ServeDns {
            listen,
            ttl,
            lifetime,
        }) => serve::responder(listen, ttl, Duration::from_secs(lifetime)),
        Some(Sub::Sink { listen, lifetime }) => serve::sink(listen, Duration::from_secs(lifetime)),
        Some(Sub::FqdnLoad {
            server,
            domain,
            first,
            rate,
            seconds,
            connect_port,
        }) => {
            if rate == 0 || !(1..=600).contains(&seconds) {
                bail!("--rate must be positive and --seconds 1-600");
            }
            fqdn_load::run(fqdn_load::LoadArgs {
                server,
                domain,
                first,
                rate,
                seconds,
                connect_port,
                resolve_timeout: Duration::from_secs(2),
                // Long enough for one SYN retransmission (1 s), so a late success is told
                // apart from a failure.
                connect_timeout: Duration::from_millis(1500),
            })
        }
        None => bench(cli.args),
    }
}

fn bench(args: Args) -> Result<()> {
    integration::netns::require_root();
    watch_signals();
    let only: Vec<String> = args.only.iter().map(|b| b.to_ascii_uppercase()).collect();
    for b in &only {
        if !["B6", "B7"].contains(&b.as_str()) {
            bail!("--only: unknown benchmark {b} (B6, B7)");
        }
    }
    if !(1..=600).contains(&args.duration)
        || !(1..=50).contains(&args.rounds)
        || !(1..=600).contains(&args.fqdn_seconds)
        || args.max_duration > 600
        || args.rate == 0
        || args.fqdn_rate == 0
        || args.patterns == 0
    {
        bail!(
            "--duration and --fqdn-seconds must be 1-600 s, --rounds 1-50, rates and --patterns positive"
        );
    }
    let seed = seed_or_clock(args.seed);
    let date = command_line("date", &["-u", "+%F"]);
    let out = results_path(args.out.as_deref(), "dns", &date);
    let bins = release_binaries(!args.no_build)?;
    b7::remove_stale_pins();
    let scratch = tempfile::Builder::new()
        .prefix("dns-bench-")
        .tempdir()
        .context("creating a scratch folder")?;
    let mut report = Report::new(&args, &bins, seed, &date);
    let ticks = procfs::clock_ticks()?;
    let mut result = Ok(());
    if only.iter().any(|b| b == "B6") {
        result = run_b6(&args, &bins, scratch.path(), seed, ticks, &mut report);
        if let Err(e) = &result {
            eprintln!("B6 failed: {e:#}");
        }
    }
    if result.is_ok() && only.iter().any(|b| b == "B7") {
        result = run_b7(&args, &bins, scratch.path(), seed, ticks, &mut report);
        if let Err(e) = &result {
            eprintln!("B7 failed: {e:#}");
        }
    }
    write_results(&out, report.render(), &result)?;
    result
}

/// A run redone while it was disturbed (twice at most, then kept and visible):
/// `disturbed` says why, or None.
fn redo_disturbed<T>(
    mut run: impl FnMut() -> Result<T>,
    disturbed: impl Fn(&T) -> Option<String>,
) -> Result<T> {
    let mut sample = run()?;
    for _ in 0..2 {
        let Some(why) = disturbed(&sample) else {
            break;
        };
        eprintln!("  {why}: redoing the run");
        sample = run()?;
    }
    Ok(sample)
}

fn run_b6(
    args: &Args,
    bins: &Bins,
    scratch: &Path,
    seed: u64,
    ticks: f64,
    report: &mut Report,
) -> Result<()> {
    eprintln!("B6: starting dnsmasq, dnsdist x2, node-agent and dns-proxy");
    // Dropped (processes stopped, namespace deleted) at the end of this function, also on
    // an error.
    let mut env = B6Env::start(
        bins,
        scratch,
        RuleSet {
            patterns: args.patterns,
        },
        seed,
    )?;
    let mut shuffler = Shuffler::new(seed);
    let duration = Duration::from_secs(args.duration);
    let warmup = Duration::from_secs(1);
    let disturbed = |s: &b6::B6Sample| {
        if s.steal_percent > 2.0 {
            Some(format!("steal {:.1} %", s.steal_percent))
        } else if s.other_percent > args.max_other_percent {
            Some(format!("other processes {:.1} %", s.other_percent))
        } else {
            None
        }
    };
    for round in 0..args.rounds {
        let mut order = System::ALL.to_vec();
        shuffler.shuffle(&mut order);
        for &system in &order {
            env.measure(system, Some(args.rate), warmup, ticks)?;
            let mut sample = redo_disturbed(
                || env.measure(system, Some(args.rate), duration, ticks),
                disturbed,
            )?;
            sample.round = round;
            eprintln!(
                "round {round} B6 {:<15} {:>8.0} q/s sut {:>6.2} µs/q p50 {:>6.0} µs p99 {:>6.0} µs wrong {} lost {}",
                system.name(),
                sample.result.qps,
                sample.sut_per_query(),
                sample.result.latency(50.0),
                sample.result.latency(99.0),
                sample.result.wrong,
                sample.result.lost,
            );
            report.b6.push(sample);
        }
        if args.max_duration > 0 {
            shuffler.shuffle(&mut order);
            for &system in &order {
                let max = Duration::from_secs(args.max_duration);
                let mut sample =
                    redo_disturbed(|| env.measure(system, None, max, ticks), disturbed)?;
                sample.round = round;
                eprintln!(
                    "round {round} B6 max {:<15} {:>8.0} q/s sut {:>6.2} µs/q lost {}",
                    system.name(),
                    sample.result.qps,
                    sample.sut_per_query(),
                    sample.result.lost,
                );
                report.b6.push(sample);
            }
        }
    }
    Ok(())
}

fn run_b7(
    args: &Args,
    bins: &Bins,
    scratch: &Path,
    seed: u64,
    ticks: f64,
    report: &mut Report,
) -> Result<()> {
    eprintln!(
        "B7: starting the node (agent with datapath, dns-proxy transparent), pods and web namespace"
    );
    let lifetime = Duration::from_secs(args.rounds as u64 * (2 * args.fqdn_seconds + 30) + 600);
    let mut env = B7Env::start(bins, scratch, args.ttl, lifetime)?;
    // Warm-up: one second of each kind, not recorded.
    env.load(Kind::Fqdn, args.fqdn_rate, 1)?;
    env.load(Kind::Baseline, args.fqdn_rate, 1)?;
    let mut shuffler = Shuffler::new(seed.wrapping_add(7));
    for round in 0..args.rounds {
        let mut order = vec![Kind::Fqdn, Kind::Baseline];
        shuffler.shuffle(&mut order);
        for kind in order {
            check_interrupted()?;
            let sample = env.measure(kind, args.fqdn_rate, args.fqdn_seconds, round, ticks)?;
            eprintln!(
                "round {round} B7 {:<22} {:>6.0} names/s first-SYN {:>6.2} % late {} failed {} unresolved {} resolve p50 {:>6.0} µs p99 {:>6.0} µs holds {:.0} timeouts {:.0}",
                kind.name(),
                sample.load.achieved_rate,
                sample.first_syn_percent(),
                sample.load.connect_late,
                sample.load.connect_failed,
                sample.load.resolve_failed,
                sample.load.resolve_p50_us,
                sample.load.resolve_p99_us,
                sample.hold.count,
                sample.hold_timeouts,
            );
            report.b7.push(sample);
        }
    }
    Ok(())
}
