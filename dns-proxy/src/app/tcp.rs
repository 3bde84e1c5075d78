//! DNS over TCP (RFC 7766): 2-byte length framing, pipelined queries answered as soon as
//! each is ready (no head-of-line blocking), one upstream connection per client connection,
//! opened on the first allowed query.
//!
//! Each query runs on its own task; the client's write half is shared behind a lock so one
//! answer is written at a time. The upstream connection's reader task hands answers to the
//! waiting queries by upstream ID; when it closes or fails, every waiting query gets
//! SERVFAIL and the next allowed query opens a new connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::exchange::{ExchangeError, Pending, with_upstream_id};
use super::policy::Transport;
use super::service::{Forward, Plan, QueryContext, Service};
use super::sockets::upstream_tcp;
use crate::message::ResponseInfo;

/// One TCP listener and what its connections need.
#[derive(Debug)]
pub struct TcpFrontend {
    pub service: Arc<Service>,
    /// `Some` in forward mode: every query's server.
    pub forward_to: Option<SocketAddr>,
    pub mark: Option<u32>,
    pub original_source: bool,
    /// A connection with no query for this long is closed.
    pub idle_timeout: Duration,
}

/// The upstream connection of one client connection.
#[derive(Debug)]
struct TcpUpstream {
    writer: Mutex<OwnedWriteHalf>,
    pending: Arc<Pending>,
    reader: JoinHandle<()>,
}

impl Drop for TcpUpstream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

type UpstreamSlot = Arc<Mutex<Option<Arc<TcpUpstream>>>>;

impl TcpFrontend {
    /// Accepts connections forever; each one is served on its own task.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    tokio::spawn(self.clone().connection(stream, peer));
                }
                Err(error) => {
                    tracing::warn!(%error, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let client = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        // Transparent mode: the accepted socket's local address is where the client went.
        let server = match self.forward_to {
            Some(server) => server,
            None => match stream.local_addr() {
                Ok(local) => SocketAddr::new(local.ip().to_canonical(), local.port()),
                Err(error) => {
                    tracing::debug!(%client, %error, "no local address; closing");
                    return;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let ctx = QueryContext {
            client,
            server,
            transport: Transport::Tcp,
        };
        let metrics = self.service.metrics.clone();
        metrics.tcp_connections.inc();
        let (mut reader, writer) = stream.into_split();
        let writer = Arc::new(Mutex::new(writer));
        let upstream: UpstreamSlot = Arc::new(Mutex::new(None));
        let mut tasks = JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            // Only waiting for the next frame to start may time out without harm: a read cut
            // off mid-frame would lose the framing.
            match tokio::time::timeout(self.idle_timeout, reader.readable()).await {
                Err(_) if tasks.is_empty() => {
                    tracing::debug!(%client, "idle TCP connection closed");
                    break;
                }
                Err(_) => continue,
                Ok(Err(error)) => {
                    tracing::debug!(%client, %error, "reading from the client failed");
                    break;
                }
                Ok(Ok(())) => {}
            }
            let frame = match tokio::time::timeout(self.idle_timeout, read_frame(&mut reader)).await
            {
                Err(_) => {
                    tracing::debug!(%client, "client stalled inside a message; closing");
                    break;
                }
                Ok(Ok(Some(frame))) => frame,
                Ok(Ok(None)) => break,
                Ok(Err(error)) => {
                    tracing::debug!(%client, %error, "reading from the client failed");
                    break;
                }
            };
            let Some(permit) = self.service.admit() else {
                if let Some(answer) = self.service.shed(&frame, Transport::Tcp) {
                    write_frame(&writer, &answer).await;
                }
                continue;
            };
            let this = self.clone();
            let writer = writer.clone();
            let upstream = upstream.clone();
            tasks.spawn(async move {
                let _permit = permit;
                let answer = match this.service.plan(&frame, &ctx) {
                    Plan::Nothing => return,
                    Plan::Reply(answer) => answer,
                    Plan::Forward(forward) => {
                        let result = this.exchange(&upstream, &forward, &ctx).await;
                        this.service.finish(*forward, &ctx, result).await
                    }
                };
                write_frame(&writer, &answer).await;
            });
        }
        // The client may half-close after its last query: its answers still go out.
        while tasks.join_next().await.is_some() {}
        let _ = writer.lock().await.shutdown().await;
        metrics.tcp_connections.dec();
    }

    async fn exchange(
        &self,
        slot: &UpstreamSlot,
        forward: &Forward,
        ctx: &QueryContext,
    ) -> Result<(Vec<u8>, ResponseInfo), ExchangeError> {
        let upstream = self.upstream(slot, ctx, forward.deadline).await?;
        let mut registration = upstream.pending.register()?;
        let bytes = with_upstream_id(&forward.bytes, registration.id);
        let written = {
            let mut writer = upstream.writer.lock().await;
            tokio::time::timeout_at(forward.deadline, writer.write_all(&framed(&bytes))).await
        };
        match written {
            Err(_) => {
                // A write cut off mid-frame leaves the stream unusable.
                upstream.pending.close();
                return Err(ExchangeError::Timeout);
            }
            Ok(Err(e)) => {
                upstream.pending.close();
                return Err(ExchangeError::Io(format!("writing to {}: {e}", ctx.server)));
            }
            Ok(Ok(())) => {}
        }
        let upstream_query = forward.query.with_id(registration.id);
        registration.answer(&upstream_query, forward.deadline).await
    }

    /// The connection's upstream, opened (or reopened after it closed) when needed.
    async fn upstream(
        &self,
        slot: &UpstreamSlot,
        ctx: &QueryContext,
        deadline: Instant,
    ) -> Result<Arc<TcpUpstream>, ExchangeError> {
        let mut slot = slot.lock().await;
        if let Some(existing) = slot.as_ref().filter(|u| !u.pending.is_closed()) {
            return Ok(existing.clone());
        }
        let source = self.original_source.then_some(ctx.client.ip());
        let timeout = deadline.saturating_duration_since(Instant::now());
        let stream = upstream_tcp(source, ctx.server, self.mark, timeout)
            .await
            .map_err(|e| ExchangeError::Io(e.to_string()))?;
        tracing::debug!(client = %ctx.client, server = %ctx.server, local = ?stream.local_addr().ok(), "opened an upstream TCP connection");
        let (reader, writer) = stream.into_split();
        let pending = Arc::new(Pending::default());
        let reader = tokio::spawn(read_upstream(reader, pending.clone(), ctx.server));
        let upstream = Arc::new(TcpUpstream {
            writer: Mutex::new(writer),
            pending,
            reader,
        });
        *slot = Some(upstream.clone());
        Ok(upstream)
    }
}

async fn read_upstream(mut reader: OwnedReadHalf, pending: Arc<Pending>, server: SocketAddr) {
    loop {
        match read_frame(&mut reader).await {
            Ok(Some(frame)) => pending.dispatch(&frame),
            Ok(None) => {
                tracing::debug!(%server, "upstream TCP connection closed");
                break;
            }
            Err(error) => {
                tracing::debug!(%server, %error, "upstream TCP connection failed");
                break;
            }
        }
    }
    pending.close();
}

/// One length-prefixed message; `None` at a clean end of stream.
async fn read_frame(reader: &mut OwnedReadHalf) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut frame = vec![0u8; usize::from(u16::from_be_bytes(len))];
    reader.read_exact(&mut frame).await?;
    Ok(Some(frame))
}

fn framed(message: &[u8]) -> Vec<u8> {
    let len = u16::try_from(message.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(message.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&message[..usize::from(len)]);
    out
}

/// How long one answer may take to write to a client: a client that does not read must
/// not hold its queries' `--max-in-flight` permits for ever.
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

async fn write_frame(writer: &Mutex<OwnedWriteHalf>, message: &[u8]) {
    let mut writer = writer.lock().await;
    match tokio::time::timeout(CLIENT_WRITE_TIMEOUT, writer.write_all(&framed(message))).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "writing the answer to the client failed"),
        Err(_) => {
            tracing::debug!("the client does not read its answers; closing");
            let _ = writer.shutdown().await;
        }
    }
}
