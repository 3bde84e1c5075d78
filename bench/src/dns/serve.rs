//! The two servers of B7, run by dns-bench itself inside their namespaces (hidden
//! subcommands): the DNS pod's responder and the "external" web sink. Both are plain
//! blocking loops on one thread: they are pinned to the load CPU and must cost little
//! next to what is measured.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::wire;

/// Answers A queries `nI.…` with `10.64.0.0 + I` (TTL `ttl`) on UDP `listen` until
/// `lifetime` has passed: bounded so that a bench killed hard leaves nothing running long.
pub fn responder(listen: SocketAddr, ttl: u32, lifetime: Duration) -> Result<()> {
    let socket = UdpSocket::bind(listen).with_context(|| format!("binding {listen}"))?;
    // Wakes up now and then to check the lifetime even when no query comes.
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    let end = Instant::now() + lifetime;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        let (len, peer) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e).context("receiving a query"),
        };
        if let Some(answer) = wire::respond(&buf[..len], ttl) {
            // A client that went away is not the responder's problem.
            let _ = socket.send_to(&answer, peer);
        }
    }
    Ok(())
}

/// Accepts TCP connections on `listen` and closes them at once, until `lifetime` has
/// passed. The web namespace routes a whole range to `lo`, so one wildcard listener takes
/// every address.
pub fn sink(listen: SocketAddr, lifetime: Duration) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    // Non-blocking with a short sleep when idle, so the lifetime is checked without a
    // connection arriving.
    listener.set_nonblocking(true)?;
    let end = Instant::now() + lifetime;
    while Instant::now() < end {
        match listener.accept() {
            Ok((stream, _)) => drop(stream),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1));
            }
            // Accept errors (a connection reset before accept) end nothing.
            Err(_) => {}
        }
    }
    Ok(())
}
