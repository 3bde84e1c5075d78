//! Small HTTP/1.1 clients that `http-bench` runs as its own subcommands inside a
//! namespace (`ip netns exec NS http-bench probe ...`): entering a namespace from this
//! process would need unsafe `setns`, which the workspace forbids.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// Sends `GET path` on `stream` and reads one whole response; returns its status.
fn request(stream: &mut TcpStream, path: &str) -> Result<u16> {
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: backend\r\nUser-Agent: http-bench\r\n\r\n"
    )
    .context("writing the request")?;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).context("reading the response")?;
        if n == 0 {
            bail!("connection closed after {} bytes", data.len());
        }
        data.extend_from_slice(&buf[..n]);
        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&data[..end]);
        let status = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("no status line in {head:?}"))?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        if data.len() >= end + 4 + length {
            return Ok(status);
        }
    }
}

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// `probe`: one request on a new connection; prints the status (0 when there is no
/// answer, so callers can poll for readiness).
pub fn probe(addr: SocketAddr, path: &str) -> Result<()> {
    let status = connect(addr)
        .and_then(|mut s| request(&mut s, path))
        .unwrap_or(0);
    println!("{status}");
    Ok(())
}

/// `hold`: opens `count` keep-alive connections, one request on each, prints
/// `ready N` and keeps them open until stdin closes or `max_hold` passes.
pub fn hold(addr: SocketAddr, path: &str, count: usize, max_hold: Duration) -> Result<()> {
    let mut streams = Vec::with_capacity(count);
    for i in 0..count {
        let mut stream = connect(addr).with_context(|| format!("connection {i}"))?;
        let status = request(&mut stream, path).with_context(|| format!("connection {i}"))?;
        if status != 200 {
            bail!("connection {i}: status {status}");
        }
        streams.push(stream);
    }
    println!("ready {}", streams.len());
    std::io::stdout().flush()?;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        let _ = done_tx.send(());
    });
    let started = Instant::now();
    let _ = done_rx.recv_timeout(max_hold);
    eprintln!(
        "held {} connections for {:?}",
        streams.len(),
        started.elapsed()
    );
    Ok(())
}
