//! Interleaved rounds (BENCHMARKS 5): in each round every system gets the same run, in
//! a shuffled order, and the process CPU of each side is read around it.

use std::time::Duration;

use anyhow::Result;

use crate::common::WrkResult;
use crate::load::{self, OhaResult};
use crate::procfs::{self, MachineCpu};
use crate::stats::Shuffler;
use crate::systems::{Running, System};
use crate::topology::Topology;

/// How long and how hard, per tier.
#[derive(Debug, Clone)]
pub struct Settings {
    pub rounds: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Fixed rate for B1/B2.
    pub rate: u64,
    /// Fixed rate for B3: low enough that 10k rules do not saturate anyone.
    pub rules_rate: u64,
    pub connections: usize,
    pub wrk_duration: Duration,
    pub wrk_connections: usize,
    pub ticks_per_sec: f64,
    /// Rounds with more steal than this are redone (BENCHMARKS 5).
    pub max_steal_percent: f64,
    /// Rounds where other processes used more than this share of the machine are redone.
    pub max_other_percent: f64,
    /// Redos per round before the round is kept anyway, flagged by its steal figure.
    pub max_redos: usize,
}

/// One request shape sent to every system.
#[derive(Debug, Clone)]
pub struct Case {
    pub bench: &'static str,
    pub variant: String,
    pub path: String,
    pub expected_status: u16,
    pub rate: u64,
}

/// One fixed-rate run of one system.
#[derive(Debug, Clone)]
pub struct Sample {
    pub bench: &'static str,
    pub variant: String,
    pub round: usize,
    pub system: System,
    pub rate: u64,
    pub oha: OhaResult,
    pub expected_status: u16,
    pub sut_us: f64,
    pub agent_us: Option<f64>,
    pub backend_us: f64,
    pub generator_us: f64,
    pub steal_percent: f64,
    /// Machine CPU used by processes outside the benchmark during the run.
    pub other_percent: f64,
}

impl Sample {
    pub fn unexpected(&self) -> u64 {
        self.oha.completed - self.oha.count(self.expected_status) + self.oha.errors
    }

    /// SUT + agent + backend + generator: the process sum BENCHMARKS found stable.
    pub fn total_us(&self) -> f64 {
        self.sut_us + self.agent_us.unwrap_or(0.0) + self.backend_us + self.generator_us
    }
}

/// One closed-loop run of one system.
#[derive(Debug, Clone)]
pub struct Saturation {
    pub variant: String,
    pub round: usize,
    pub system: System,
    pub wrk: WrkResult,
    pub sut_us: f64,
    pub steal_percent: f64,
}

fn per_request(ticks: u64, requests: u64, settings: &Settings) -> f64 {
    if requests == 0 {
        return f64::NAN;
    }
    ticks as f64 / settings.ticks_per_sec * 1e6 / requests as f64
}

/// `settings.rounds` rounds of `case` over `systems`.
pub fn fixed_rate(
    topo: &Topology,
    systems: &[&Running],
    case: &Case,
    settings: &Settings,
    shuffler: &mut Shuffler,
) -> Result<Vec<Sample>> {
    interleaved_rounds(
        systems,
        settings,
        shuffler,
        |running, round| measure(topo, running, case, settings, round),
        |samples, round| {
            let steal = samples.iter().map(|s| s.steal_percent).fold(0.0, f64::max);
            let other = samples.iter().map(|s| s.other_percent).fold(0.0, f64::max);
            for s in samples {
                eprintln!(
                    "  {} {} round {round} {:8}: {:7.0} req/s, sut {:6.1} us/req, p50 {:6.0} p99 {:6.0} us, unexpected {}, steal {:.1}%, other {:.0}%",
                    s.bench,
                    s.variant,
                    s.system.name(),
                    s.oha.rps,
                    s.sut_us,
                    s.oha.p50_us,
                    s.oha.p99_us,
                    s.unexpected(),
                    s.steal_percent,
                    s.other_percent
                );
            }
            let quiet = steal <= settings.max_steal_percent && other <= settings.max_other_percent;
            if !quiet {
                eprintln!(
                    "  round {round}: steal {steal:.1}%, other processes {other:.0}%: redoing it"
                );
            }
            quiet
        },
    )
}

/// Runs `settings.rounds` rounds; each measures every system once, in a fresh random
/// order, and is redone (up to `max_redos` times) while `quiet` says the machine was busy.
fn interleaved_rounds<T>(
    systems: &[&Running],
    settings: &Settings,
    shuffler: &mut Shuffler,
    mut measure_one: impl FnMut(&Running, usize) -> Result<T>,
    mut quiet: impl FnMut(&[T], usize) -> bool,
) -> Result<Vec<T>> {
    let mut kept = Vec::new();
    for round in 0..settings.rounds {
        for attempt in 0..=settings.max_redos {
            let mut order = systems.to_vec();
            shuffler.shuffle(&mut order);
            let mut samples = Vec::new();
            for running in order {
                crate::common::check_interrupted()?;
                samples.push(measure_one(running, round)?);
            }
            if quiet(&samples, round) || attempt == settings.max_redos {
                kept.extend(samples);
                break;
            }
        }
    }
    Ok(kept)
}

fn measure(
    topo: &Topology,
    running: &Running,
    case: &Case,
    settings: &Settings,
    round: usize,
) -> Result<Sample> {
    let target = running.system.target();
    load::oha(
        topo,
        target,
        &case.path,
        case.rate,
        settings.warmup,
        settings.connections,
    )?;
    let machine = MachineCpu::read()?;
    let sut = procfs::cpu_ticks_sum(&running.sut_pids)?;
    let agent = running.agent_pid.map(procfs::cpu_ticks).transpose()?;
    let backend = procfs::cpu_ticks(topo.backend_pid())?;
    let oha = load::oha(
        topo,
        target,
        &case.path,
        case.rate,
        settings.duration,
        settings.connections,
    )?;
    let sut = procfs::cpu_ticks_sum(&running.sut_pids)? - sut;
    let agent = match (running.agent_pid, agent) {
        (Some(pid), Some(before)) => Some(procfs::cpu_ticks(pid)? - before),
        _ => None,
    };
    let backend = procfs::cpu_ticks(topo.backend_pid())? - backend;
    let machine_after = MachineCpu::read()?;
    let steal_percent = machine.steal_percent(&machine_after);
    let ours = sut + agent.unwrap_or(0) + backend + oha.generator_ticks;
    let other_percent = machine.other_percent(&machine_after, ours);
    let n = oha.completed;
    Ok(Sample {
        bench: case.bench,
        variant: case.variant.clone(),
        round,
        system: running.system,
        rate: case.rate,
        // The backend allows everything: direct runs are the latency floor of a deny case.
        expected_status: if running.system == System::Direct {
            200
        } else {
            case.expected_status
        },
        sut_us: per_request(sut, n, settings),
        agent_us: agent.map(|a| per_request(a, n, settings)),
        backend_us: per_request(backend, n, settings),
        generator_us: per_request(oha.generator_ticks, n, settings),
        steal_percent,
        other_percent,
        oha,
    })
}

/// Closed-loop saturation rounds (wrk), for the deny rps of B1.
pub fn saturation(
    topo: &Topology,
    systems: &[&Running],
    variant: &str,
    path: &str,
    settings: &Settings,
    shuffler: &mut Shuffler,
) -> Result<Vec<Saturation>> {
    interleaved_rounds(
        systems,
        settings,
        shuffler,
        |running, round| {
            let machine = MachineCpu::read()?;
            let sut = procfs::cpu_ticks_sum(&running.sut_pids)?;
            let wrk = load::wrk(
                topo,
                running.system.target(),
                path,
                settings.wrk_duration,
                settings.wrk_connections,
            )?;
            let sut = procfs::cpu_ticks_sum(&running.sut_pids)? - sut;
            let steal_percent = machine.steal_percent(&MachineCpu::read()?);
            eprintln!(
                "  saturation {variant} round {round} {:8}: {:7.0} req/s, sut {:5.1} us/req, non-2xx {}, errors {}",
                running.system.name(),
                wrk.rps,
                per_request(sut, wrk.requests, settings),
                wrk.non_2xx,
                wrk.socket_errors
            );
            Ok(Saturation {
                variant: variant.to_owned(),
                round,
                system: running.system,
                sut_us: per_request(sut, wrk.requests, settings),
                wrk,
                steal_percent,
            })
        },
        |samples, round| {
            let steal = samples.iter().map(|s| s.steal_percent).fold(0.0, f64::max);
            let quiet = steal <= settings.max_steal_percent;
            if !quiet {
                eprintln!("  round {round}: steal {steal:.1}% > 2 %, redoing it");
            }
            quiet
        },
    )
}
