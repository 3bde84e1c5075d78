//! Load generators, run in the client pod on the load CPU: `oha` at a fixed rate (open
//! loop, for latency and CPU per request) and `wrk` (closed loop, saturation only).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

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

fn truncate(text: &str) -> &str {
    let end = text
        .char_indices()
        .nth(300)
        .map(|(i, _)| i)
        .unwrap_or(text.len());
    &text[..end]
}

/// One closed-loop run as wrk saw it.
#[derive(Debug, Clone, Default)]
pub struct WrkResult {
    pub requests: u64,
    pub rps: f64,
    pub non_2xx: u64,
    pub socket_errors: u64,
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
    let output = topo
        .client()
        .command("taskset")
        .args(["-c", LOAD_CPU, "wrk", "-t1"])
        .args([
            "-c",
            &connections.to_string(),
            "-d",
            // wrk takes whole seconds only ("2000ms" is a usage error).
            &format!("{}s", duration.as_secs().max(1)),
            "--timeout",
            "5s",
            &format!("http://{target}{path}"),
        ])
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

fn parse_wrk(text: &str) -> Result<WrkResult> {
    let mut result = WrkResult::default();
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            result.rps = v.trim().parse().context("wrk Requests/sec")?;
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            result.requests = n.trim().parse().context("wrk request count")?;
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            result.non_2xx = v.trim().parse().context("wrk non-2xx count")?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            result.socket_errors = v
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        }
    }
    if result.rps == 0.0 {
        bail!("no Requests/sec in wrk's output: {}", truncate(text));
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk() {
        let text = "Running 2s test @ http://x/\n  1 threads and 50 connections\n  40000 requests in 2.00s, 3.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 40000\nRequests/sec:  19990.50\nTransfer/sec:      1.50MB\n";
        let r = parse_wrk(text).expect("parses");
        assert_eq!(r.requests, 40000);
        assert_eq!(r.non_2xx, 40000);
        assert_eq!(r.socket_errors, 3);
        assert!((r.rps - 19990.5).abs() < 1e-9);
    }

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
