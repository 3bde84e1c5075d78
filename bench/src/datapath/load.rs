//! The load generators, run in the client pod on the load CPU: `wrk` (closed loop, for
//! saturation; one new connection per request with `Connection: close`) and `iperf3`
//! (one bulk TCP stream). Both are bounded by their own duration.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::common::{WrkResult, parse_wrk, wrk_command};
use crate::nodes::{BACKEND_IP, BenchNode, IPERF_PORT, LOAD_CPU};
use crate::procfs;

/// One closed-loop run as wrk saw it, and what wrk itself cost.
#[derive(Debug, Clone, Default)]
pub struct WrkRun {
    pub wrk: WrkResult,
    /// CPU of wrk itself, clock ticks.
    pub generator_ticks: u64,
}

/// wrk, one thread, `connections` connections for `duration` to the backend's `port`;
/// `close` sends `Connection: close`, so every request is a new connection.
pub fn wrk(
    node: &BenchNode,
    port: u16,
    close: bool,
    duration: Duration,
    connections: usize,
) -> Result<WrkRun> {
    let mut command = wrk_command(node.client(), LOAD_CPU, duration, connections);
    if close {
        command.args(["-H", "Connection: close"]);
    }
    command.arg(format!("http://{BACKEND_IP}:{port}/"));
    let (output, ticks) = run_counting(command, duration)?;
    if !output.status.success() {
        bail!(
            "wrk failed: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(WrkRun {
        wrk: parse_wrk(&String::from_utf8_lossy(&output.stdout))?,
        generator_ticks: ticks,
    })
}

/// Runs `command` to completion with its output captured, and reads its CPU time while
/// it is a zombie (afterwards /proc has nothing of it).
fn run_counting(mut command: Command, duration: Duration) -> Result<(Output, u64)> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the load generator")?;
    // Drain stdout on a thread so a chatty generator cannot block on a full pipe.
    let mut stdout = child.stdout.take().context("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let ticks =
        procfs::cpu_ticks_at_exit(child.id(), duration + Duration::from_secs(30)).unwrap_or(0);
    let mut output = child
        .wait_with_output()
        .context("waiting for the generator")?;
    output.stdout = reader.join().unwrap_or_default();
    Ok((output, ticks))
}

/// One iperf3 run: what the receiver got.
#[derive(Debug, Clone, Default)]
pub struct IperfResult {
    pub bits_per_second: f64,
    pub retransmits: u64,
    /// CPU of the iperf3 client, clock ticks.
    pub generator_ticks: u64,
}

/// One TCP stream from the client to the backend's iperf3 server for `duration`.
pub fn iperf(node: &BenchNode, duration: Duration) -> Result<IperfResult> {
    let mut command = node.client().command("taskset");
    command
        .args(["-c", LOAD_CPU, "iperf3", "-J", "-c"])
        .arg(BACKEND_IP.to_string())
        .args([
            "-p",
            &IPERF_PORT.to_string(),
            "-t",
            &format!("{}", duration.as_secs().max(1)),
        ]);
    let (output, ticks) = run_counting(command, duration)?;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "iperf3 printed no JSON: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    if let Some(error) = json.get("error").and_then(serde_json::Value::as_str) {
        bail!("iperf3: {error}");
    }
    let get = |p: &str| json.pointer(p).and_then(serde_json::Value::as_f64);
    Ok(IperfResult {
        bits_per_second: get("/end/sum_received/bits_per_second")
            .context("iperf3 JSON without end.sum_received")?,
        retransmits: get("/end/sum_sent/retransmits").unwrap_or(0.0) as u64,
        generator_ticks: ticks,
    })
}
