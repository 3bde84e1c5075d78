//! Load generators, run in the client pod on the load CPU: `oha` at a fixed rate (open
//! loop, for latency and CPU per request) and `wrk` (closed loop, saturation only).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::common::{WrkResult, parse_wrk, truncate, wrk_command};
use crate::procfs;
use crate::topology::{LOAD_CPU, Topology};

/// One fixed-rate run as oha saw it.
#[derive(Debug, Clone, Default)]
pub struct OhaResult {
    /// Responses received, any status.
    pub completed: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub statuses: BTreeMap<u16, u64>,
    /// Connection errors, timeouts and the like.
    pub errors: u64,
    /// CPU of oha itself.
    pub generator_ticks: u64,
}

impl OhaResult {
    pub fn count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }
}

/// Where oha is: `OHA` in the environment, else `~/.cargo/bin/oha`, else `PATH`.
pub fn oha_path() -> PathBuf {
    if let Some(path) = std::env::var_os("OHA") {
        return PathBuf::from(path);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let path = Path::new(&home).join(".cargo/bin/oha");
        if path.exists() {
            return path;
        }
    }
    PathBuf::from("oha")
}

/// oha at `rate` req/s for `duration` over `connections` keep-alive connections.
/// Latency is corrected for coordinated omission (measured from when each request was due),
/// and requests in flight at the deadline are waited for, so none count as errors.
pub fn oha(
    topo: &Topology,
    target: SocketAddr,
    path: &str,
    rate: u64,
    duration: Duration,
    connections: usize,
) -> Result<OhaResult> {
    let out = topo.dir.path().join("oha.json");
    let mut command = topo.client().command("taskset");
    command
        .args(["-c", LOAD_CPU])
        .arg(oha_path())
        .args([
            "--no-tui",
            "--output-format",
            "json",
            "--latency-correction",
            "--wait-ongoing-requests-after-deadline",
            "-q",
            &rate.to_string(),
            "-z",
            &format!("{}ms", duration.as_millis()),
            "-c",
            &connections.to_string(),
            &format!("http://{target}{path}"),
        ])
        .stdout(std::fs::File::create(&out)?)
        .stderr(Stdio::piped());
    let mut child = command.spawn().context("starting oha")?;
    // Read at exit (zombie), before reaping: afterwards /proc has nothing of it.
    let ticks = procfs::cpu_ticks_at_exit(child.id(), duration + Duration::from_secs(60));
    let status = child.wait().context("waiting for oha")?;
    if !status.success() {
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut stderr);
        }
        bail!("oha failed: {status}: {stderr}");
    }
    let text = std::fs::read_to_string(&out).context("reading oha's output")?;
    let mut result = parse_oha(&text)?;
    result.generator_ticks = ticks.unwrap_or(0);
    Ok(result)
}

fn parse_oha(text: &str) -> Result<OhaResult> {
    let json: serde_json::Value = serde_json::from_str(text)
        .with_context(|| format!("oha's output is not JSON: {}", truncate(text)))?;
    let number = |pointer: &str| -> Result<f64> {
        json.pointer(pointer)
            .and_then(serde_json::Value::as_f64)
            .ok_or_else(|| anyhow!("oha's JSON has no {pointer}"))
    };
    let statuses: BTreeMap<u16, u64> = json
        .get("statusCodeDistribution")
        .and_then(serde_json::Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    let errors = json
        .get("errorDistribution")
        .and_then(serde_json::Value::as_object)
        .map(|m| m.values().filter_map(serde_json::Value::as_u64).sum())
        .unwrap_or(0);
    let completed = statuses.values().sum();
    // Percentiles are null when nothing completed.
    let percentile = |name: &str| number(&format!("/latencyPercentiles/{name}")).unwrap_or(0.0);
    Ok(OhaResult {
        completed,
        rps: number("/summary/requestsPerSec")?,
        p50_us: percentile("p50") * 1e6,
        p90_us: percentile("p90") * 1e6,
        p99_us: percentile("p99") * 1e6,
        statuses,
        errors,
        generator_ticks: 0,
    })
}

/// wrk with one thread and `connections` connections for `duration`: a lower bound of
/// the saturation rate, the generator sharing its CPU with the backend.
pub fn wrk(
    topo: &Topology,
    target: SocketAddr,
    path: &str,
    duration: Duration,
    connections: usize,
) -> Result<WrkResult> {
    let output = wrk_command(topo.client(), LOAD_CPU, duration, connections)
        .arg(format!("http://{target}{path}"))
        .output()
        .context("running wrk")?;
    if !output.status.success() {
        bail!(
            "wrk failed: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_wrk(&String::from_utf8_lossy(&output.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_oha() {
        let text = r#"{"summary":{"requestsPerSec":999.5,"total":1.0},
            "latencyPercentiles":{"p50":0.0001,"p90":0.0002,"p99":0.0004},
            "statusCodeDistribution":{"200":990,"403":10},"errorDistribution":{"timeout":2}}"#;
        let r = parse_oha(text).expect("parses");
        assert_eq!(r.completed, 1000);
        assert_eq!(r.count(403), 10);
        assert_eq!(r.errors, 2);
        assert!((r.p99_us - 400.0).abs() < 1e-6);
    }
}
