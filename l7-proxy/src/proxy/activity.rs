//! What a connection is doing, for the timeouts and closes that hyper does not do itself:
//! an idle keep-alive connection is closed after `ServerLimits::idle_timeout`, and a
//! tunnel (WebSocket, CONNECT) outlives hyper's connection and must be closed by us.
//!
//! `ActivityStream` counts I/O operations rather than reading the clock on each one: the
//! watchdog in `serve_connection` only needs to know whether anything happened between
//! two of its ticks.

use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::JoinHandle;

/// Shared between the connection's watchdog, its request handlers and its tunnel.
#[derive(Debug, Default)]
pub struct ConnState {
    io_ops: AtomicU64,
    in_flight: AtomicUsize,
    tunnel: Mutex<Option<JoinHandle<()>>>,
    /// The connection became a tunnel: its shutdowns are the tunnel's, not hyper's.
    upgraded: AtomicBool,
}

impl ConnState {
    fn touch(&self) {
        self.io_ops.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks a request as in flight until the guard is dropped (also when the handler
    /// future is cancelled).
    pub fn request_started(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Hands over the task copying a tunnel's bytes; the connection ends when it does.
    pub fn set_tunnel(&self, task: JoinHandle<()>) {
        self.upgraded.store(true, Ordering::Relaxed);
        let mut slot = self.tunnel.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = slot.replace(task) {
            old.abort();
        }
    }

    pub fn take_tunnel(&self) -> Option<JoinHandle<()>> {
        self.tunnel.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

pub struct InFlight<'a>(&'a ConnState);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Decides when a connection has been idle for its timeout: nothing read or written and
/// no request in flight for at least `timeout` (checked every quarter of it, so the close
/// comes between 1 and 1.25 times the timeout after the last activity).
#[derive(Debug)]
pub struct IdleClock {
    timeout: Duration,
    last_ops: u64,
    quiet_since: Instant,
}

impl IdleClock {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            last_ops: 0,
            quiet_since: Instant::now(),
        }
    }

    pub fn tick_period(&self) -> Duration {
        (self.timeout / 4).max(Duration::from_millis(10))
    }

    /// Called every `tick_period`; true once the connection counts as idle.
    pub fn is_idle(&mut self, state: &ConnState) -> bool {
        let ops = state.io_ops.load(Ordering::Relaxed);
        let busy = state.in_flight.load(Ordering::Relaxed) > 0;
        let now = Instant::now();
        if ops != self.last_ops || busy {
            self.last_ops = ops;
            self.quiet_since = now;
            return false;
        }
        now.duration_since(self.quiet_since) >= self.timeout
    }
}

/// How long hyper's close of a connection waits for the client to close first.
///
/// A server that sends the first FIN keeps the connection's 4-tuple in TIME_WAIT for a
/// minute. Behind the eBPF redirect that tuple cannot be used again: the kernel refuses a
/// new SYN's request socket when a TIME_WAIT socket holds the same tuple (TPROXY recycles
/// it; `bpf_sk_assign` cannot), so a client opening hundreds of connections per second to
/// one service would stall on port reuse. Clients close as soon as a `Connection: close`
/// response is complete, so waiting briefly for their FIN makes the proxy the passive
/// closer, which keeps no TIME_WAIT. Responses whose end is the close itself (no length)
/// pay this delay once.
pub const CLOSE_LINGER: Duration = Duration::from_millis(200);

/// The downstream stream, counting its reads and writes into `ConnState`.
pub struct ActivityStream<S> {
    inner: S,
    state: std::sync::Arc<ConnState>,
    /// Running while a shutdown waits for the peer's FIN (see [`CLOSE_LINGER`]).
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
    peer_closed: bool,
}

impl<S> ActivityStream<S> {
    pub fn new(inner: S, state: std::sync::Arc<ConnState>) -> Self {
        Self {
            inner,
            state,
            linger: None,
            peer_closed: false,
        }
    }
}

impl<S: AsyncRead + Unpin> ActivityStream<S> {
    /// Ready once the peer has closed its side (or the linger ran out). Anything the peer
    /// still sends is discarded: the connection is being closed after its last exchange.
    fn poll_peer_closed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self
            .linger
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(CLOSE_LINGER)));
        let mut scratch = [0u8; 1024];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => return deadline.as_mut().poll(cx),
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ActivityStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if poll.is_ready() {
            self.state.touch();
        }
        poll
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ActivityStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if poll.is_ready() {
            self.state.touch();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if poll.is_ready() {
            self.state.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A tunnel's shutdown half-closes one direction while the other still carries
        // data: never read (and discard) its bytes here.
        if !self.peer_closed && !self.state.upgraded.load(Ordering::Relaxed) {
            std::task::ready!(self.poll_peer_closed(cx));
            self.peer_closed = true;
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_only_after_a_quiet_timeout_without_requests() {
        let state = ConnState::default();
        let mut clock = IdleClock::new(Duration::from_millis(40));
        assert!(!clock.is_idle(&state));
        std::thread::sleep(Duration::from_millis(50));
        assert!(clock.is_idle(&state), "quiet for longer than the timeout");

        state.touch();
        assert!(!clock.is_idle(&state), "activity restarts the clock");
        let guard = state.request_started();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!clock.is_idle(&state), "a request in flight is never idle");
        drop(guard);
        assert!(!clock.is_idle(&state), "the clock restarts when it ends");
        std::thread::sleep(Duration::from_millis(50));
        assert!(clock.is_idle(&state));
    }
}
