//! DNS over UDP: the listener loop, the pool of upstream sockets, and the way answers go
//! back to the client.
//!
//! Upstream sockets are long-lived, one per (client IP or node, server): bound to the
//! client's IP with `--upstream-source original`, connected to the server, marked. One
//! reader task per socket hands answers to the waiting queries by upstream ID (module
//! `exchange`) and closes the socket after it has been idle for a while.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::exchange::{ExchangeError, Pending, with_upstream_id};
use super::metrics::Metrics;
use super::policy::Transport;
use super::service::{Forward, Plan, QueryContext, Service};
use super::sockets::{self, recv_from_with_dst, reply_socket};
use crate::message::ResponseInfo;

/// Largest datagram read (the UDP maximum).
const MAX_DATAGRAM: usize = 65_535;

/// Most reply sockets (one per server address) kept open.
const MAX_REPLY_SOCKETS: usize = 1024;

type PoolKey = (Option<IpAddr>, SocketAddr);

#[derive(Debug)]
struct UpstreamSocket {
    socket: UdpSocket,
    pending: Arc<Pending>,
    last_used: Mutex<Instant>,
}

/// The pool of upstream UDP sockets.
#[derive(Debug)]
pub struct UdpUpstreams {
    sockets: Mutex<HashMap<PoolKey, Arc<UpstreamSocket>>>,
    mark: Option<u32>,
    /// Bind upstream sockets to the client's IP (transparent).
    original_source: bool,
    idle: Duration,
    metrics: Arc<Metrics>,
}

impl UdpUpstreams {
    pub fn new(
        mark: Option<u32>,
        original_source: bool,
        idle: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            sockets: Mutex::new(HashMap::new()),
            mark,
            original_source,
            idle,
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Arc<UpstreamSocket>>> {
        self.sockets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn socket(
        self: &Arc<Self>,
        client: IpAddr,
        server: SocketAddr,
    ) -> Result<Arc<UpstreamSocket>, ExchangeError> {
        let source = self.original_source.then_some(client);
        let key = (source, server);
        let mut sockets = self.lock();
        if let Some(existing) = sockets.get(&key) {
            // Under the pool lock, so the idle check cannot remove it in between.
            *existing
                .last_used
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Instant::now();
            return Ok(existing.clone());
        }
        let socket = sockets::upstream_udp(source, server, self.mark)
            .map_err(|e| ExchangeError::Io(e.to_string()))?;
        let local = socket.local_addr().ok();
        tracing::debug!(?local, %server, mark = ?self.mark, "opened an upstream UDP socket (connected to the server)");
        let upstream = Arc::new(UpstreamSocket {
            socket,
            pending: Arc::new(Pending::default()),
            last_used: Mutex::new(Instant::now()),
        });
        sockets.insert(key, upstream.clone());
        self.metrics.upstream_udp_sockets.inc();
        tokio::spawn(read_loop(Arc::downgrade(self), key, upstream.clone()));
        Ok(upstream)
    }

    /// Sends the query to the server under a fresh ID and waits for its answer.
    pub async fn exchange(
        self: &Arc<Self>,
        forward: &Forward,
        ctx: &QueryContext,
    ) -> Result<(Vec<u8>, ResponseInfo), ExchangeError> {
        let upstream = self.socket(ctx.client.ip(), ctx.server)?;
        let mut registration = upstream.pending.register()?;
        let bytes = with_upstream_id(&forward.bytes, registration.id);
        let mut sent = upstream.socket.send(&bytes).await;
        if sent
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            // The error of an earlier datagram (ICMP unreachable), reported on this send:
            // this one did not go out yet.
            sent = upstream.socket.send(&bytes).await;
        }
        sent.map_err(|e| ExchangeError::Io(format!("sending to {}: {e}", ctx.server)))?;
        let upstream_query = forward.query.with_id(registration.id);
        registration.answer(&upstream_query, forward.deadline).await
    }

    /// Removes `key` if it still is `upstream`, and fails its waiting queries.
    fn remove(&self, key: &PoolKey, upstream: &Arc<UpstreamSocket>) {
        let mut sockets = self.lock();
        if sockets.get(key).is_some_and(|s| Arc::ptr_eq(s, upstream)) {
            sockets.remove(key);
            self.metrics.upstream_udp_sockets.dec();
        }
        upstream.pending.close();
    }

    /// Removes `key` when idle: no query used it for `idle` and none is waiting.
    fn remove_if_idle(&self, key: &PoolKey, upstream: &Arc<UpstreamSocket>) -> bool {
        let mut sockets = self.lock();
        let idle = upstream
            .last_used
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
            >= self.idle;
        if !idle || !upstream.pending.is_empty() {
            return false;
        }
        if sockets.get(key).is_some_and(|s| Arc::ptr_eq(s, upstream)) {
            sockets.remove(key);
            self.metrics.upstream_udp_sockets.dec();
        }
        upstream.pending.close();
        true
    }
}

async fn read_loop(pool: Weak<UdpUpstreams>, key: PoolKey, upstream: Arc<UpstreamSocket>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let check = pool.upgrade().map_or(Duration::from_secs(1), |p| {
        (p.idle / 2).max(Duration::from_millis(10))
    });
    let mut ticker = tokio::time::interval(check);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = upstream.socket.recv(&mut buf) => match received {
                Ok(n) => upstream.pending.dispatch(&buf[..n]),
                // An ICMP error from an earlier send: the waiting queries time out.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tracing::debug!(server = %key.1, "upstream port unreachable");
                }
                Err(error) => {
                    tracing::warn!(server = %key.1, %error, "upstream UDP socket failed; closing it");
                    if let Some(pool) = pool.upgrade() {
                        pool.remove(&key, &upstream);
                    }
                    return;
                }
            },
            _ = ticker.tick() => {
                let Some(pool) = pool.upgrade() else { return };
                if pool.remove_if_idle(&key, &upstream) {
                    tracing::debug!(server = %key.1, "closed an idle upstream UDP socket");
                    return;
                }
            }
        }
    }
}

/// How answers reach the client.
#[derive(Debug)]
pub enum ReplyPath {
    /// Through the listener (forward mode: the client asked the listener).
    Listener,
    /// From the server's address (transparent mode): one unconnected transparent socket per
    /// server address.
    Spoofed(Mutex<ReplySockets>),
}

#[derive(Debug, Default)]
pub struct ReplySockets {
    sockets: HashMap<SocketAddr, Arc<UdpSocket>>,
    /// When a failure to open one was last logged, per server address.
    warned: HashMap<SocketAddr, Instant>,
}

impl ReplyPath {
    fn socket_for(&self, server: SocketAddr) -> Option<Arc<UdpSocket>> {
        let Self::Spoofed(replies) = self else {
            return None;
        };
        let mut replies = replies.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(socket) = replies.sockets.get(&server) {
            return Some(socket.clone());
        }
        if replies.sockets.len() >= MAX_REPLY_SOCKETS {
            // Clients choose the addresses: keep the descriptors bounded. Sockets in use
            // close when their last answer is sent.
            tracing::info!(
                count = replies.sockets.len(),
                "too many reply sockets; closing them all"
            );
            replies.sockets.clear();
        }
        match reply_socket(server) {
            Ok(socket) => {
                tracing::info!(%server, "opened a reply socket bound to the server's address (IP_TRANSPARENT, unconnected) to answer clients from it");
                let socket = Arc::new(socket);
                replies.sockets.insert(server, socket.clone());
                Some(socket)
            }
            Err(error) => {
                // E.g. a process of the node holds that address and port exclusively.
                let now = Instant::now();
                let recent = replies
                    .warned
                    .get(&server)
                    .is_some_and(|at| now.duration_since(*at) < Duration::from_secs(60));
                if recent {
                    tracing::debug!(%error, "cannot answer from the server's address");
                } else {
                    tracing::warn!(%error, "cannot answer from the server's address; answers to it are lost (logged at most once a minute per address)");
                    if replies.warned.len() >= MAX_REPLY_SOCKETS {
                        replies.warned.clear();
                    }
                    replies.warned.insert(server, now);
                }
                None
            }
        }
    }
}

/// One UDP listener and what its queries need.
#[derive(Debug)]
pub struct UdpFrontend {
    pub service: Arc<Service>,
    pub upstreams: Arc<UdpUpstreams>,
    /// `Some` in forward mode: every query's server.
    pub forward_to: Option<SocketAddr>,
    pub replies: Arc<ReplyPath>,
}

impl UdpFrontend {
    /// Reads queries forever; each one is processed on its own task.
    pub async fn serve(self: Arc<Self>, listener: Arc<UdpSocket>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, client, original) = match recv_from_with_dst(&listener, &mut buf).await {
                Ok(received) => received,
                Err(error) => {
                    tracing::debug!(%error, "UDP receive failed");
                    // Never spin on an error that repeats.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            };
            let client = SocketAddr::new(client.ip().to_canonical(), client.port());
            let Some(server) = self
                .forward_to
                .or(original.map(|o| SocketAddr::new(o.ip().to_canonical(), o.port())))
            else {
                tracing::debug!(%client, "datagram without its original destination; dropped");
                continue;
            };
            let ctx = QueryContext {
                client,
                server,
                transport: Transport::Udp,
            };
            let bytes = buf[..n].to_vec();
            let Some(permit) = self.service.admit() else {
                if let Some(answer) = self.service.shed(&bytes, Transport::Udp) {
                    self.reply(&listener, &ctx, &answer).await;
                }
                continue;
            };
            let this = self.clone();
            let listener = listener.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let answer = match this.service.plan(&bytes, &ctx) {
                    Plan::Nothing => return,
                    Plan::Reply(answer) => answer,
                    Plan::Forward(forward) => {
                        let result = this.upstreams.exchange(&forward, &ctx).await;
                        this.service.finish(*forward, &ctx, result).await
                    }
                };
                this.reply(&listener, &ctx, &answer).await;
            });
        }
    }

    async fn reply(&self, listener: &UdpSocket, ctx: &QueryContext, answer: &[u8]) {
        let sent = match self.replies.as_ref() {
            ReplyPath::Listener => listener.send_to(answer, ctx.client).await,
            ReplyPath::Spoofed(_) => match self.replies.socket_for(ctx.server) {
                Some(socket) => socket.send_to(answer, ctx.client).await,
                None => return,
            },
        };
        if let Err(error) = sent {
            tracing::debug!(client = %ctx.client, %error, "sending the answer failed");
        }
    }
}
