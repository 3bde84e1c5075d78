//! The B7 load tool (hidden subcommand, run in the client pod): new names at a fixed rate,
//! open loop; per name one UDP A query to the DNS pod (through the transparent proxy) and,
//! right after the answer, one TCP connect to the answered address. Prints one JSON
//! summary on stdout.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hickory_proto::op::ResponseCode;
use serde_json::json;
use tokio::net::{TcpStream, UdpSocket};

use crate::wire;

#[derive(Debug, Clone)]
pub struct LoadArgs {
    pub server: SocketAddr,
    pub domain: String,
    pub first: u32,
    pub rate: u32,
    pub seconds: u64,
    /// 0: resolve only.
    pub connect_port: u16,
    pub resolve_timeout: Duration,
    pub connect_timeout: Duration,
}

/// What happened to one name.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    /// Resolved (µs); no connect was asked for.
    Resolved { resolve_us: f64 },
    /// Resolved (µs) and connected on the first SYN (µs).
    Ok { resolve_us: f64, connect_us: f64 },
    /// Resolved, but the connect needed a SYN retransmission.
    ConnectLate { resolve_us: f64, connect_us: f64 },
    /// Resolved, but no connection within the timeout.
    ConnectFailed { resolve_us: f64 },
    /// No usable answer: timeout, an error rcode or no A record.
    ResolveFailed,
}

/// A connect that took longer than this needed a retransmitted SYN: Linux resends the
/// first SYN after 1 s (TCP_TIMEOUT_INIT), and nothing else here takes that long.
const FIRST_SYN_LIMIT: Duration = Duration::from_millis(800);

async fn one(args: &LoadArgs, index: u32, connect: bool) -> Outcome {
    let name = format!("n{index}.{}", args.domain);
    // Each name on a socket of its own with its own id, as a stub resolver does.
    let id = (index % 65_521) as u16;
    let start = Instant::now();
    let Some(ip) = resolve(args, &name, id).await else {
        return Outcome::ResolveFailed;
    };
    let resolve_us = start.elapsed().as_secs_f64() * 1e6;
    if !connect {
        return Outcome::Resolved { resolve_us };
    }
    let start = Instant::now();
    let result = tokio::time::timeout(
        args.connect_timeout,
        TcpStream::connect((ip, args.connect_port)),
    )
    .await;
    let connect_us = start.elapsed().as_secs_f64() * 1e6;
    match result {
        Ok(Ok(_stream)) if connect_us < FIRST_SYN_LIMIT.as_secs_f64() * 1e6 => Outcome::Ok {
            resolve_us,
            connect_us,
        },
        Ok(Ok(_stream)) => Outcome::ConnectLate {
            resolve_us,
            connect_us,
        },
        _ => Outcome::ConnectFailed { resolve_us },
    }
}

async fn resolve(args: &LoadArgs, name: &str, id: u16) -> Option<Ipv4Addr> {
    let query = wire::a_query(id, name).ok()?;
    let socket = UdpSocket::bind("0.0.0.0:0").await.ok()?;
    socket.connect(args.server).await.ok()?;
    socket.send(&query).await.ok()?;
    let mut buf = [0u8; 1500];
    let deadline = tokio::time::Instant::now() + args.resolve_timeout;
    loop {
        let len = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .ok()?
            .ok()?;
        // A stray datagram with another id is skipped, as a resolver does.
        if let Ok(answer) = wire::read_answer(&buf[..len], id) {
            return match answer.rcode {
                ResponseCode::NoError => answer.address,
                _ => None,
            };
        }
    }
}

/// Nearest-rank percentile of sorted `values` (NaN when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs the load and prints the JSON summary.
pub fn run(args: LoadArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    let summary = runtime.block_on(load(args))?;
    println!("{summary}");
    Ok(())
}

async fn load(args: LoadArgs) -> Result<serde_json::Value> {
    let total = u64::from(args.rate) * args.seconds;
    let connect = args.connect_port != 0;
    let shared = std::sync::Arc::new(args.clone());
    let mut tasks = tokio::task::JoinSet::new();
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let start = tokio::time::Instant::now();
    for i in 0..total {
        // Open loop: name i starts at i × period whatever happened to the earlier ones.
        tokio::time::sleep_until(start + period.mul_f64(i as f64)).await;
        let index = args
            .first
            .checked_add(u32::try_from(i).context("too many names")?)
            .context("name index overflow")?;
        let shared = shared.clone();
        tasks.spawn(async move { one(&shared, index, connect).await });
    }
    let sent_secs = start.elapsed().as_secs_f64();
    let mut resolve = Vec::new();
    let mut connect_times = Vec::new();
    let (mut ok, mut late, mut conn_failed, mut res_failed) = (0u64, 0u64, 0u64, 0u64);
    let mut resolved_only = 0u64;
    while let Some(outcome) = tasks.join_next().await {
        match outcome.context("a name's task failed")? {
            Outcome::Resolved { resolve_us } => {
                resolved_only += 1;
                resolve.push(resolve_us);
            }
            Outcome::Ok {
                resolve_us,
                connect_us,
            } => {
                ok += 1;
                resolve.push(resolve_us);
                connect_times.push(connect_us);
            }
            Outcome::ConnectLate {
                resolve_us,
                connect_us,
            } => {
                late += 1;
                resolve.push(resolve_us);
                connect_times.push(connect_us);
            }
            Outcome::ConnectFailed { resolve_us } => {
                conn_failed += 1;
                resolve.push(resolve_us);
            }
            Outcome::ResolveFailed => res_failed += 1,
        }
    }
    resolve.sort_by(f64::total_cmp);
    connect_times.sort_by(f64::total_cmp);
    let p = |v: &[f64], q: f64| percentile(v, q);
    Ok(json!({
        "names": total,
        "send_secs": sent_secs,
        "achieved_rate": total as f64 / sent_secs.max(1e-9),
        "resolved_only": resolved_only,
        "first_syn_ok": ok,
        "connect_late": late,
        "connect_failed": conn_failed,
        "resolve_failed": res_failed,
        "resolve_p50_us": p(&resolve, 50.0),
        "resolve_p90_us": p(&resolve, 90.0),
        "resolve_p99_us": p(&resolve, 99.0),
        "resolve_max_us": resolve.last().copied().unwrap_or(f64::NAN),
        "connect_p50_us": p(&connect_times, 50.0),
        "connect_p99_us": p(&connect_times, 99.0),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 1.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
