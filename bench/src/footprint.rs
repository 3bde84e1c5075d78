//! B5: memory at rest with 1k rules, and per idle keep-alive connection.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::common::Binaries;
use crate::load;
use crate::procfs::Memory;
use crate::rules::RuleSet;
use crate::systems::{self, System};
use crate::topology::{LOAD_CPU, Topology};

#[derive(Debug, Clone)]
pub struct Footprint {
    pub round: usize,
    pub system: System,
    pub rules: usize,
    pub idle: Memory,
    /// With `connections` idle keep-alive connections open, each after one request.
    pub loaded: Memory,
    pub connections: usize,
    /// Connections the backend saw open meanwhile: does the proxy hold one upstream per
    /// idle client?
    pub upstream_conns: usize,
    /// The agent, for ours: not counted in the ratios, written down beside them.
    pub agent: Option<Memory>,
}

impl Footprint {
    pub fn rss_bytes_per_conn(&self) -> f64 {
        (self.loaded.rss_kib as f64 - self.idle.rss_kib as f64) * 1024.0 / self.connections as f64
    }

    pub fn pss_bytes_per_conn(&self) -> f64 {
        (self.loaded.pss_kib as f64 - self.idle.pss_kib as f64) * 1024.0 / self.connections as f64
    }
}

/// Starts each system afresh with `rules`, warms it with `warm_requests` requests, reads
/// its memory, then opens `connections` idle connections and reads it again.
pub fn measure(
    topo: &Topology,
    bins: &Binaries,
    rules: &RuleSet,
    round: usize,
    connections: usize,
) -> Result<Vec<Footprint>> {
    let mut out = Vec::new();
    for system in [System::Ours, System::Nginx, System::Haproxy] {
        crate::common::check_interrupted()?;
        let running = systems::start(topo, system, rules, bins)?;
        let path = rules.allowed_path();
        // Warm: pools, buffers and lazily built matchers exist in every steady state.
        load::oha(
            topo,
            system.target(),
            &path,
            1000,
            Duration::from_secs(1),
            16,
        )?;
        std::thread::sleep(Duration::from_millis(500));
        let idle = Memory::read_sum(&running.sut_pids)?;
        let agent = running.agent_pid.map(Memory::read).transpose()?;
        let (loaded, upstream_conns) =
            with_idle_connections(topo, system, &path, connections, || {
                std::thread::sleep(Duration::from_millis(500));
                Ok((
                    Memory::read_sum(&running.sut_pids)?,
                    backend_connections(topo),
                ))
            })?;
        let f = Footprint {
            round,
            system,
            rules: rules.len(),
            idle,
            loaded,
            connections,
            upstream_conns,
            agent,
        };
        eprintln!(
            "  footprint round {round} {:8}: idle RSS {} KiB Pss {} KiB; +{connections} conns: {:.0} B/conn RSS, {:.0} B/conn Pss",
            system.name(),
            f.idle.rss_kib,
            f.idle.pss_kib,
            f.rss_bytes_per_conn(),
            f.pss_bytes_per_conn()
        );
        out.push(f);
    }
    Ok(out)
}

/// Established connections to the backend's ports, seen from the backend pod.
fn backend_connections(topo: &Topology) -> usize {
    let output = topo.node.pods()[1].ns.output(
        "ss",
        &[
            "-Htn",
            "state",
            "established",
            "( sport = :8080 or sport = :8081 )",
        ],
    );
    String::from_utf8_lossy(&output.stdout).lines().count()
}

/// Runs `read` while `http-bench hold` keeps `count` connections open from the client pod.
fn with_idle_connections<T>(
    topo: &Topology,
    system: System,
    path: &str,
    count: usize,
    read: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let mut child = topo
        .client()
        .command("taskset")
        .args(["-c", LOAD_CPU])
        .arg(&topo.self_exe)
        .args([
            "hold",
            &system.target().to_string(),
            path,
            &count.to_string(),
            "--max-hold-secs",
            "120",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting http-bench hold")?;
    let guard = HoldGuard(&mut child);
    let stdout = guard
        .0
        .stdout
        .take()
        .ok_or_else(|| anyhow!("hold without stdout"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| anyhow!("{count} connections not open after 60 s"))?;
    if !line.starts_with("ready") {
        let mut stderr = String::new();
        if let Some(mut e) = guard.0.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut stderr);
        }
        bail!("hold failed against {}: {stderr}", system.name());
    }
    let value = read()?;
    if let Some(mut stdin) = guard.0.stdin.take() {
        let _ = stdin.write_all(b"done\n");
    }
    Ok(value)
}

/// Ends the holding client whatever happens, so no connection outlives its measurement.
struct HoldGuard<'a>(&'a mut std::process::Child);

impl Drop for HoldGuard<'_> {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
