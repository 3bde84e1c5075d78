//! Measured runs: the workloads, the counters read around each run, interleaved rounds,
//! and the eBPF program statistics pass.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::load;
use crate::nodes::{BenchNode, Key, L4_PORT, L7_PORT, Setup};
use crate::procfs::{self, MachineCpu};
use crate::stats::Shuffler;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Workload {
    /// B4: HTTP/1.1 `Connection: close` to the L7 port: a new proxied connection per request.
    Churn,
    /// B4 again on nodes with `net.ipv4.tcp_max_tw_buckets=0` (see `nodes::Key`).
    ChurnNoTimeWait,
    /// B9: keep-alive HTTP to the L4-only port.
    KeepAlive,
    /// B9: one bulk TCP stream (iperf3) to the L4-only port 5201.
    Bulk,
}

impl Workload {
    pub fn bench(self) -> &'static str {
        match self {
            Workload::Churn | Workload::ChurnNoTimeWait => "B4",
            Workload::KeepAlive | Workload::Bulk => "B9",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Workload::Churn => "churn (Connection: close)",
            Workload::ChurnNoTimeWait => "churn, node tcp_max_tw_buckets=0",
            Workload::KeepAlive => "keep-alive HTTP",
            Workload::Bulk => "bulk TCP (iperf3)",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Workload::Churn | Workload::ChurnNoTimeWait => "conn/s",
            Workload::KeepAlive => "req/s",
            Workload::Bulk => "Gbit/s",
        }
    }

    /// What one "unit" of CPU cost is counted over.
    pub fn per(self) -> &'static str {
        match self {
            Workload::Churn | Workload::ChurnNoTimeWait => "connection",
            Workload::KeepAlive => "request",
            Workload::Bulk => "packet",
        }
    }

    pub fn is_churn(self) -> bool {
        matches!(self, Workload::Churn | Workload::ChurnNoTimeWait)
    }

    /// The nodes this workload runs on.
    pub fn keys(self) -> Vec<Key> {
        self.setups()
            .iter()
            .map(|&setup| Key {
                setup,
                no_time_wait: self == Workload::ChurnNoTimeWait,
            })
            .collect()
    }

    /// The configurations compared, ours first.
    pub fn setups(self) -> &'static [Setup] {
        match self {
            Workload::Churn | Workload::ChurnNoTimeWait => {
                &[Setup::Datapath, Setup::TproxyOriginal, Setup::TproxyNode]
            }
            Workload::KeepAlive | Workload::Bulk => {
                &[Setup::Datapath, Setup::Bare, Setup::BareWithRule]
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub rounds: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    pub ticks_per_sec: f64,
    pub max_steal_percent: f64,
}

/// One measured run of one configuration.
#[derive(Debug, Clone)]
pub struct Sample {
    pub workload: Workload,
    pub round: usize,
    pub setup: Setup,
    pub secs: f64,
    /// conn/s, req/s or Gbit/s.
    pub rate: f64,
    /// Connections or requests completed (wrk), packets (iperf3).
    pub units: u64,
    pub errors: u64,
    /// Requests the proxy decided during the run.
    pub proxied: u64,
    /// Packets that entered the node from the two pods.
    pub packets: u64,
    /// Proxy + agent.
    pub sut_us: f64,
    pub agent_us: f64,
    pub backend_us: f64,
    /// Whole-machine busy time not charged to proxy, agent, backend or generator, in
    /// percent of the machine: softirq (the network stack and the tc programs, which run
    /// in softirq context) plus other tenants' processes.
    pub other_percent: f64,
    pub machine_us: f64,
    pub steal_percent: f64,
    pub retransmits: u64,
}

impl Sample {
    pub fn pps(&self) -> f64 {
        self.packets as f64 / self.secs
    }
    fn per_unit(&self, us: f64) -> f64 {
        if self.units == 0 {
            f64::NAN
        } else {
            us / self.units as f64
        }
    }
    /// Proxy + agent CPU per unit, µs.
    pub fn sut_per_unit(&self) -> f64 {
        self.per_unit(self.sut_us)
    }
    /// Whole machine busy CPU per unit, µs (counts softirq, so the eBPF programs).
    pub fn machine_per_unit(&self) -> f64 {
        self.per_unit(self.machine_us)
    }
    pub fn machine_ns_per_packet(&self) -> f64 {
        if self.packets == 0 {
            f64::NAN
        } else {
            self.machine_us * 1000.0 / self.packets as f64
        }
    }
}

/// Fails once Ctrl-C or SIGTERM arrived.
fn check_interrupted() -> Result<()> {
    crate::common::check_interrupted()
}

struct Counters {
    proxy: u64,
    agent: u64,
    backend: u64,
    machine: MachineCpu,
    packets: u64,
    proxied: u64,
    at: Instant,
}

fn counters(node: &BenchNode) -> Result<Counters> {
    Ok(Counters {
        proxy: node.proxy_ticks()?,
        agent: node.agent_ticks()?,
        backend: procfs::cpu_ticks(node.backend_pid())?,
        machine: MachineCpu::read()?,
        packets: node.pod_packets()?,
        proxied: node.proxy_requests(),
        at: Instant::now(),
    })
}

/// Runs `workload` on `node` once for `duration`; returns the sample (round unset).
pub fn measure(
    node: &mut BenchNode,
    workload: Workload,
    duration: Duration,
    settings: &Settings,
    round: usize,
) -> Result<Sample> {
    check_interrupted()?;
    node.check_running()?;
    let before = counters(node)?;
    let (rate, units, errors, retransmits, generator) = match workload {
        Workload::Churn | Workload::ChurnNoTimeWait | Workload::KeepAlive => {
            let (port, close) = if workload.is_churn() {
                (L7_PORT, true)
            } else {
                (L4_PORT, false)
            };
            let r = load::wrk(node, port, close, duration, settings.connections)?;
            (
                r.wrk.rps,
                r.wrk.requests,
                r.wrk.non_2xx + r.wrk.socket_errors,
                0,
                r.generator_ticks,
            )
        }
        Workload::Bulk => {
            let r = load::iperf(node, duration)?;
            (
                r.bits_per_second / 1e9,
                0,
                0,
                r.retransmits,
                r.generator_ticks,
            )
        }
    };
    let after = counters(node)?;
    node.check_running()?;
    let us = |ticks: u64| ticks as f64 / settings.ticks_per_sec * 1e6;
    let packets = after.packets.saturating_sub(before.packets);
    let proxy = after.proxy.saturating_sub(before.proxy);
    let agent = after.agent.saturating_sub(before.agent);
    let backend = after.backend.saturating_sub(before.backend);
    Ok(Sample {
        workload,
        round,
        setup: node.setup,
        secs: after.at.duration_since(before.at).as_secs_f64(),
        rate,
        units: if workload == Workload::Bulk {
            packets
        } else {
            units
        },
        errors,
        proxied: after.proxied.saturating_sub(before.proxied),
        packets,
        sut_us: us(proxy + agent),
        agent_us: us(agent),
        backend_us: us(backend),
        other_percent: before
            .machine
            .other_percent(&after.machine, proxy + agent + backend + generator),
        machine_us: us(after.machine.busy.saturating_sub(before.machine.busy)),
        steal_percent: before.machine.steal_percent(&after.machine),
        retransmits,
    })
}

/// Interleaved rounds: per round and workload, every configuration once in a shuffled
/// order, each after a short warm-up; a run with too much steal is redone (twice at most).
pub fn rounds(
    nodes: &mut BTreeMap<Key, BenchNode>,
    workloads: &[Workload],
    settings: &Settings,
    shuffler: &mut Shuffler,
    samples: &mut Vec<Sample>,
) -> Result<()> {
    for round in 0..settings.rounds {
        for &workload in workloads {
            let mut order: Vec<Key> = workload.keys();
            shuffler.shuffle(&mut order);
            for key in order {
                let setup = key.setup;
                let node = nodes
                    .get_mut(&key)
                    .with_context(|| format!("{} was not started", key.name()))?;
                if workload != Workload::Bulk && !settings.warmup.is_zero() {
                    measure(node, workload, settings.warmup, settings, round)?;
                }
                let mut sample = measure(node, workload, settings.duration, settings, round)?;
                for _ in 0..2 {
                    if sample.steal_percent <= settings.max_steal_percent {
                        break;
                    }
                    eprintln!("  steal {:.1} %: redoing the run", sample.steal_percent);
                    sample = measure(node, workload, settings.duration, settings, round)?;
                }
                eprintln!(
                    "round {round} {} {:<12} {:>10.1} {} errors {} proxied {} sut {:.1} µs/{} machine {:.1} µs/{}",
                    workload.bench(),
                    key.name(),
                    sample.rate,
                    workload.unit(),
                    sample.errors,
                    sample.proxied,
                    sample.sut_per_unit(),
                    workload.per(),
                    sample.machine_per_unit(),
                    workload.per(),
                );
                if workload.is_churn() && sample.proxied < sample.units * 9 / 10 {
                    bail!(
                        "{}: the proxy decided {} requests of {}: connections bypass it",
                        setup.name(),
                        sample.proxied,
                        sample.units
                    );
                }
                if workload == Workload::KeepAlive && sample.proxied > 0 {
                    bail!("{}: L4-only traffic went through the proxy", setup.name());
                }
                samples.push(sample);
            }
        }
    }
    Ok(())
}

/// Run time of the eBPF programs on the pod devices during one run of a workload.
#[derive(Debug, Clone)]
pub struct ProgStats {
    pub workload: Workload,
    /// (attachment, runs, ns per run).
    pub programs: Vec<(String, u64, f64)>,
    pub packets: u64,
    /// Program time summed over all attachments, per packet entering the node.
    pub ns_per_packet: f64,
    pub rate: f64,
}

/// `kernel.bpf_stats_enabled`, restored on drop: the statistics cost two clock reads per
/// program run, so they are only on for this pass, never during the measured rounds.
struct BpfStatsOn(String);

impl BpfStatsOn {
    fn enable() -> Result<Self> {
        let old = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .context("reading kernel.bpf_stats_enabled")?;
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
            .context("enabling kernel.bpf_stats_enabled")?;
        Ok(Self(old.trim().to_owned()))
    }
}

impl Drop for BpfStatsOn {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

fn prog_counters(id: u64) -> Result<(u64, u64)> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show", "id", &id.to_string()])
        .output()
        .context("running bpftool")?;
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("bpftool printed no JSON")?;
    let get = |k: &str| json.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    Ok((get("run_time_ns"), get("run_cnt")))
}

/// One run per workload on the datapath node with program statistics on.
pub fn prog_stats(
    nodes: &mut BTreeMap<Key, BenchNode>,
    workloads: &[Workload],
    settings: &Settings,
) -> Result<Vec<ProgStats>> {
    let _on = BpfStatsOn::enable()?;
    let mut out = Vec::new();
    // The churn run with TIME_WAIT is dominated by stalled handshakes: left out.
    for &workload in workloads.iter().filter(|&&w| w != Workload::Churn) {
        let key = Key {
            setup: Setup::Datapath,
            no_time_wait: workload == Workload::ChurnNoTimeWait,
        };
        let Some(node) = nodes.get_mut(&key) else {
            continue;
        };
        let programs = node.attached_programs();
        if programs.is_empty() {
            bail!("no programs found on the pod devices of {}", key.name());
        }
        let before: Vec<(u64, u64)> = programs
            .iter()
            .map(|(_, id)| prog_counters(*id))
            .collect::<Result<_>>()?;
        let sample = measure(node, workload, settings.duration, settings, 0)?;
        let mut rows = Vec::new();
        let mut total_ns = 0;
        for ((name, id), (t0, c0)) in programs.iter().zip(before) {
            let (t1, c1) = prog_counters(*id)?;
            let (dt, dc) = (t1.saturating_sub(t0), c1.saturating_sub(c0));
            total_ns += dt;
            rows.push((
                name.clone(),
                dc,
                if dc == 0 {
                    f64::NAN
                } else {
                    dt as f64 / dc as f64
                },
            ));
        }
        out.push(ProgStats {
            workload,
            programs: rows,
            packets: sample.packets,
            ns_per_packet: if sample.packets == 0 {
                f64::NAN
            } else {
                total_ns as f64 / sample.packets as f64
            },
            rate: sample.rate,
        });
    }
    Ok(out)
}
