//! The load generators, run in the client pod on the load CPU: `wrk` (closed loop, for
//! saturation; one new connection per request with `Connection: close`) and `iperf3`
//! (one bulk TCP stream). Both are bounded by their own duration.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::nodes::{BACKEND_IP, BenchNode, IPERF_PORT, LOAD_CPU};
use crate::procfs;

/// One closed-loop run as wrk saw it.
#[derive(Debug, Clone, Default)]
pub struct WrkResult {
    pub requests: u64,
    pub rps: f64,
    pub non_2xx: u64,
    pub socket_errors: u64,
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
) -> Result<WrkResult> {
    let mut command = node.client().command("taskset");
    command.args(["-c", LOAD_CPU, "wrk", "-t1"]).args([
        "-c",
        &connections.to_string(),
        "-d",
        &format!("{}s", duration.as_secs().max(1)),
        "--timeout",
        "5s",
    ]);
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
    let mut result = parse_wrk(&String::from_utf8_lossy(&output.stdout))?;
    result.generator_ticks = ticks;
    Ok(result)
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
            result.socket_errors = v
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        }
    }
    if result.rps == 0.0 {
        bail!("no Requests/sec in wrk's output: {text}");
    }
    Ok(result)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk() {
        let text = "Running 2s test @ http://x/\n  1 threads and 50 connections\n  40000 requests in 2.00s, 3.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec:  19990.50\n";
        let r = parse_wrk(text).expect("parses");
        assert_eq!(r.requests, 40000);
        assert_eq!(r.non_2xx, 4);
        assert_eq!(r.socket_errors, 3);
    }
}
