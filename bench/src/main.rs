//! `http-bench`: B1, B2, B3 and B5 of BENCHMARKS.md, our l7-proxy side by side with nginx
//! and haproxy in network namespaces. See bench/README.md.

mod client;
mod common;
mod footprint;
mod load;
mod procfs;
mod report;
mod rules;
mod runs;
mod stats;
mod systems;
mod topology;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::common::{
    Binaries, command_line, cpu_model, release_binaries, results_path, seed_or_clock,
    watch_signals, write_results,
};
use crate::report::{ReadyTime, Report};
use crate::rules::{DENIED_PATH, Mix, RuleSet};
use crate::runs::{Case, Settings};
use crate::stats::Shuffler;
use crate::systems::{Running, System};
use crate::topology::Topology;

#[derive(Debug, Parser)]
#[command(about = "HTTP benchmarks of l7-proxy against nginx and haproxy (BENCHMARKS.md)")]
struct Args {
    #[command(subcommand)]
    helper: Option<Helper>,
    /// smoke: a few minutes, 3 rounds; full: 7 rounds of 10 s.
    #[arg(long, value_enum, default_value_t = Tier::Smoke)]
    tier: Tier,
    /// Benchmarks to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_values = ["B1", "B2", "B3", "B5"])]
    only: Vec<String>,
    /// Rounds (overrides the tier's).
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds per measured run (overrides the tier's).
    #[arg(long)]
    duration: Option<f64>,
    /// Fixed rate for B1/B2, requests per second.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Fixed rate for B3.
    #[arg(long, default_value_t = 1000)]
    rules_rate: u64,
    /// Rule counts for B3's mixed set (1 is always run: it is the baseline).
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 1000, 10000])]
    sizes: Vec<usize>,
    /// Rule counts for B3's regex-only set.
    #[arg(long, value_delimiter = ',', default_values_t = [1000usize, 10000])]
    regex_sizes: Vec<usize>,
    /// Idle connections for B5.
    #[arg(long, default_value_t = 1000)]
    idle_connections: usize,
    /// Seed of the order of systems within rounds (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Redo a round when processes outside the benchmark used more than this percentage
    /// of the machine during one of its runs (shared build machines).
    #[arg(long, default_value_t = 10.0)]
    max_other_percent: f64,
    /// Do not run `cargo build --release` first.
    #[arg(long)]
    no_build: bool,
    /// Results file (default: bench/results/http-DATE.md).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Tier {
    Smoke,
    Full,
}

/// Helpers the benchmark runs inside the pod namespaces.
#[derive(Debug, Subcommand)]
enum Helper {
    /// One request on a new connection; prints the status (0: no answer).
    #[command(hide = true)]
    Probe { addr: SocketAddr, path: String },
    /// Opens COUNT keep-alive connections, one request each, and holds them until stdin
    /// closes.
    #[command(hide = true)]
    Hold {
        addr: SocketAddr,
        path: String,
        count: usize,
        #[arg(long, default_value_t = 120)]
        max_hold_secs: u64,
    },
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.helper {
        Some(Helper::Probe { addr, path }) => client::probe(addr, &path),
        Some(Helper::Hold {
            addr,
            path,
            count,
            max_hold_secs,
        }) => client::hold(addr, &path, count, Duration::from_secs(max_hold_secs)),
        None => {
            watch_signals();
            run(&args)
        }
    }
}

fn settings(args: &Args) -> Result<Settings> {
    let (rounds, duration, warmup, wrk) = match args.tier {
        Tier::Smoke => (3, 3.0, 0.5, 2.0),
        Tier::Full => (7, 10.0, 1.0, 5.0),
    };
    let duration = args.duration.unwrap_or(duration);
    if !(0.1..=600.0).contains(&duration) {
        bail!("--duration must be between 0.1 and 600 seconds");
    }
    Ok(Settings {
        rounds: args.rounds.unwrap_or(rounds).clamp(1, 50),
        duration: Duration::from_secs_f64(duration),
        warmup: Duration::from_secs_f64(warmup),
        rate: args.rate,
        rules_rate: args.rules_rate,
        connections: 32,
        wrk_duration: Duration::from_secs_f64(wrk),
        wrk_connections: 32,
        ticks_per_sec: procfs::clock_ticks()?,
        max_steal_percent: 2.0,
        max_other_percent: args.max_other_percent,
        max_redos: 2,
    })
}

fn header(args: &Args, settings: &Settings, seed: u64, date: &str) -> String {
    let cpu = cpu_model();
    format!(
        "# HTTP benchmarks B1, B2, B3, B5: l7-proxy vs nginx and haproxy\n\n\
         Command: `sudo cargo run --release -p bench --bin http-bench -- --tier {tier:?}{only}` (seed {seed}).\n\n\
         | | |\n| --- | --- |\n| date | {date} |\n| kernel | {kernel} |\n| CPU | {nproc} x {cpu} |\n| commit | {commit} |\n\
         | rustc | {rustc} |\n| nginx | {nginx} |\n| haproxy | {haproxy} |\n| oha | {oha} |\n| wrk | {wrk} |\n\
         | rounds | {rounds}, {dur:?} per run after a {warm:?} warm-up, systems shuffled per round |\n\
         | fixed rates | B1/B2 {rate} req/s, B3 {rrate} req/s, {conns} keep-alive connections (oha --latency-correction) |\n\
         | saturation | wrk -t1 -c{wconns}, {wdur:?} |\n\
         | pinning | SUT (and our agent) on CPU 0; oha/wrk and the backend nginx on CPU 1 |\n\n\
         Configs are written by `bench/src/systems.rs` and `bench/src/topology.rs`; bench/README.md shows them.\n",
        tier = args.tier,
        only = if args.only.len() == 4 {
            String::new()
        } else {
            format!(" --only {}", args.only.join(","))
        },
        kernel = command_line("uname", &["-r"]),
        nproc = command_line("nproc", &[]),
        commit = command_line("git", &["rev-parse", "--short", "HEAD"]),
        rustc = command_line("rustc", &["-V"]),
        nginx = command_line("nginx", &["-v"]),
        haproxy = command_line("haproxy", &["-v"]),
        oha = command_line(&load::oha_path().display().to_string(), &["--version"]),
        wrk = command_line("wrk", &["-v"]),
        rounds = settings.rounds,
        dur = settings.duration,
        warm = settings.warmup,
        rate = settings.rate,
        rrate = settings.rules_rate,
        conns = settings.connections,
        wconns = settings.wrk_connections,
        wdur = settings.wrk_duration,
    )
}

fn run(args: &Args) -> Result<()> {
    integration::netns::require_root();
    let settings = settings(args)?;
    let only: Vec<String> = args.only.iter().map(|b| b.to_ascii_uppercase()).collect();
    for b in &only {
        if !["B1", "B2", "B3", "B5"].contains(&b.as_str()) {
            bail!("--only: unknown benchmark {b} (B1, B2, B3, B5)");
        }
    }
    let wants = |b: &str| only.iter().any(|o| o == b);
    let seed = seed_or_clock(args.seed);
    let mut shuffler = Shuffler::new(seed);
    let date = command_line("date", &["-u", "+%F"]);
    let out = results_path(args.out.as_deref(), "http", &date);
    let bins = release_binaries(!args.no_build)?;
    let topo = Topology::new()?;
    let mut report = Report {
        header: header(args, &settings, seed, &date),
        ..Report::default()
    };

    let result = run_benchmarks(
        &topo,
        &bins,
        &settings,
        &mut shuffler,
        &mut report,
        args,
        &wants,
    );
    write_results(&out, report.render(), &result)?;
    result
}

fn start_all(
    topo: &Topology,
    bins: &Binaries,
    rules: &RuleSet,
    report: &mut Report,
    with_direct: bool,
) -> Result<Vec<Running>> {
    let mut all = Vec::new();
    let systems: &[System] = if with_direct {
        &[System::Direct, System::Ours, System::Nginx, System::Haproxy]
    } else {
        &[System::Ours, System::Nginx, System::Haproxy]
    };
    for &system in systems {
        let running = systems::start(topo, system, rules, bins)?;
        if system != System::Direct {
            report.ready.push(ReadyTime {
                system,
                variant: format!("{}-{}", rules.mix.name(), rules.len()),
                seconds: running.ready_after.as_secs_f64(),
            });
        }
        all.push(running);
    }
    Ok(all)
}

/// Every run on `systems` answers `expected` on `path` before it is measured: a
/// misconfigured peer must not pass for a fast one.
fn check_answers(topo: &Topology, systems: &[Running], path: &str, expected: u16) -> Result<()> {
    for r in systems {
        let status = topo.probe(topo.client(), r.system.target(), path)?;
        if status != expected && r.system != System::Direct {
            bail!(
                "{} answers {status} to {path}, expected {expected}",
                r.system.name()
            );
        }
    }
    Ok(())
}

fn run_benchmarks(
    topo: &Topology,
    bins: &Binaries,
    settings: &Settings,
    shuffler: &mut Shuffler,
    report: &mut Report,
    args: &Args,
    wants: &dyn Fn(&str) -> bool,
) -> Result<()> {
    if wants("B1") || wants("B2") {
        let rules = RuleSet::new(Mix::Mixed, 1);
        let running = start_all(topo, bins, &rules, report, true)?;
        let refs: Vec<&Running> = running.iter().collect();
        if wants("B1") {
            eprintln!("B1: deny path");
            check_answers(topo, &running, DENIED_PATH, 403)?;
            let case = Case {
                bench: "B1",
                variant: "deny".into(),
                path: DENIED_PATH.into(),
                expected_status: 403,
                rate: settings.rate,
            };
            // The direct run gets 200 from the backend: it is the latency floor, not a peer.
            let samples = runs::fixed_rate(topo, &refs, &case, settings, shuffler)?;
            report.samples.extend(samples);
            let proxies: Vec<&Running> = refs[1..].to_vec();
            report.saturation.extend(runs::saturation(
                topo,
                &proxies,
                "deny",
                DENIED_PATH,
                settings,
                shuffler,
            )?);
        }
        if wants("B2") {
            for (variant, path) in [
                ("0B", rules.allowed_path()),
                ("1KB", rules.allowed_kb_path()),
            ] {
                eprintln!("B2: allow path, {variant} body");
                check_answers(topo, &running, &path, 200)?;
                let case = Case {
                    bench: "B2",
                    variant: variant.into(),
                    path,
                    expected_status: 200,
                    rate: settings.rate,
                };
                report
                    .samples
                    .extend(runs::fixed_rate(topo, &refs, &case, settings, shuffler)?);
            }
        }
    }
    if wants("B3") {
        let mut sets = vec![RuleSet::new(Mix::Mixed, 1)];
        sets.extend(
            args.sizes
                .iter()
                .filter(|&&n| n > 1)
                .map(|&n| RuleSet::new(Mix::Mixed, n)),
        );
        sets.extend(
            args.regex_sizes
                .iter()
                .map(|&n| RuleSet::new(Mix::RegexHeavy, n)),
        );
        for rules in &sets {
            let variant = format!("{}-{}", rules.mix.name(), rules.len());
            eprintln!("B3: {variant} {:?} (exact, prefix, regex)", rules.counts());
            let running = start_all(topo, bins, rules, report, false)?;
            let refs: Vec<&Running> = running.iter().collect();
            let path = rules.allowed_path();
            check_answers(topo, &running, &path, 200)?;
            check_answers(topo, &running, DENIED_PATH, 403)?;
            let case = Case {
                bench: "B3",
                variant,
                path,
                expected_status: 200,
                rate: settings.rules_rate,
            };
            report
                .samples
                .extend(runs::fixed_rate(topo, &refs, &case, settings, shuffler)?);
        }
    }
    if wants("B5") {
        let rules = RuleSet::new(Mix::Mixed, 1000);
        let rounds = settings.rounds.min(3);
        for round in 0..rounds {
            eprintln!("B5: footprint round {round}");
            report.footprints.extend(footprint::measure(
                topo,
                bins,
                &rules,
                round,
                args.idle_connections,
            )?);
        }
    }
    Ok(())
}
