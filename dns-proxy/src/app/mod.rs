//! The `dns-proxy` process: a policy-stream client, UDP and TCP listeners (transparent or
//! forward mode), pooled upstreams, the FQDN hold, flow records and an admin listener.
//!
//! Nothing on the query path waits on the agent except the FQDN hold, which is bounded: the
//! policy is read from the stream client's last good state, flow records go through a
//! bounded queue, so the proxy keeps answering while the agent restarts.

mod admin;
mod exchange;
mod flows;
mod fqdn;
pub mod metrics;
pub mod policy;
mod service;
mod sockets;
mod tcp;
mod udp;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use xds::AgentClient;
use xds::client::{ClientHandle, Endpoint};

use crate::message::DenyRcode;
use fqdn::FqdnHold;
use metrics::Metrics;
use policy::DnsPolicyHandler;
pub use policy::{DnsPolicies, Transport};
use service::Service;
pub use sockets::SocketError;
use tcp::TcpFrontend;
use udp::{ReplyPath, UdpFrontend, UdpUpstreams};

/// How queries reach the proxy and where they go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Redirected by the kernel to transparent listeners on this port (0.0.0.0 and [::]);
    /// each query goes to the server the client addressed.
    Transparent { port: u16 },
    /// Plain listeners on `listen`; every query goes to `upstream`.
    Forward {
        listen: SocketAddr,
        upstream: SocketAddr,
    },
}

/// The proxy's settings, validated by the CLI.
#[derive(Debug, Clone)]
pub struct Config {
    pub agent: Endpoint,
    pub client_id: String,
    pub mode: Mode,
    /// `SO_MARK` on upstream sockets.
    pub mark: Option<u32>,
    /// Upstream sockets bound to the client's IP (`IP_TRANSPARENT`).
    pub original_source: bool,
    pub upstream_timeout: Duration,
    pub max_in_flight: usize,
    pub deny: DenyRcode,
    pub fqdn_hold: Duration,
    pub admin: SocketAddr,
    pub tcp_idle_timeout: Duration,
    pub udp_upstream_idle: Duration,
}

impl Config {
    /// Defaults of the CLI for `mode`, talking to `agent`.
    pub fn new(agent: Endpoint, mode: Mode) -> Self {
        Self {
            agent,
            client_id: format!("dns-proxy/{}", std::process::id()),
            mode,
            mark: None,
            original_source: matches!(mode, Mode::Transparent { .. }),
            upstream_timeout: Duration::from_millis(2000),
            max_in_flight: 10_000,
            deny: DenyRcode::Refused,
            fqdn_hold: Duration::from_millis(100),
            admin: SocketAddr::from((Ipv4Addr::LOCALHOST, 9902)),
            tcp_idle_timeout: Duration::from_secs(30),
            udp_upstream_idle: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("admin listener on {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A started proxy: its bound addresses, and how to stop it.
#[derive(Debug)]
pub struct Running {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub metrics: Arc<Metrics>,
    tasks: JoinSet<()>,
    client: ClientHandle,
}

impl Running {
    /// Stops the listeners and the policy client.
    pub async fn shutdown(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.client.shutdown().await;
    }
}

/// Runs until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let running = start(config).await?;
    shutdown.await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

/// Binds every listener and starts serving on the current runtime.
pub async fn start(config: Config) -> Result<Running, AppError> {
    let metrics = Arc::new(Metrics::new());
    let xds::proxy::ProxyStream {
        client,
        policies,
        identities,
        flows,
    } = xds::proxy::connect(
        &config.agent,
        &config.client_id,
        "dns-proxy",
        DnsPolicyHandler::default(),
    );
    let agent = match AgentClient::new(config.agent.clone()) {
        Ok(agent) => Some(agent),
        Err(error) => {
            tracing::error!(%error, "no FQDN observations possible: answers are released without the agent");
            None
        }
    };
    let service = Arc::new(Service {
        policies: policies.clone(),
        identities: identities.clone(),
        deny: config.deny,
        metrics: metrics.clone(),
        flows: flows.clone(),
        fqdn: FqdnHold::new(agent, config.fqdn_hold, metrics.clone()),
        upstream_timeout: config.upstream_timeout,
        in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
    });
    let mut mark = config.mark.filter(|m| *m != 0);
    let (addrs, forward_to, replies) = match config.mode {
        Mode::Transparent { port } => (
            vec![
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
            ],
            None,
            ReplyPath::Spoofed(Default::default()),
        ),
        Mode::Forward { listen, upstream } => (vec![listen], Some(upstream), ReplyPath::Listener),
    };
    let transparent = forward_to.is_none();
    if let Some(m) = mark
        && let Err(error) = sockets::probe_mark(m)
    {
        // Unmarked upstream traffic would be redirected back to the proxy by the datapath.
        if transparent {
            return Err(error.into());
        }
        tracing::warn!(%error, "forward mode without CAP_NET_ADMIN: upstream sockets are not marked");
        mark = None;
    }
    let udp_upstreams = UdpUpstreams::new(
        mark,
        config.original_source,
        config.udp_upstream_idle,
        metrics.clone(),
    );
    let udp_front = Arc::new(UdpFrontend {
        service: service.clone(),
        upstreams: udp_upstreams,
        forward_to,
        replies: Arc::new(replies),
    });
    let tcp_front = Arc::new(TcpFrontend {
        service: service.clone(),
        forward_to,
        mark,
        original_source: config.original_source,
        idle_timeout: config.tcp_idle_timeout,
    });

    let mut tasks = JoinSet::new();
    let (mut udp_addrs, mut tcp_addrs) = (Vec::new(), Vec::new());
    for addr in addrs {
        let (udp, udp_addr, tcp) = match listeners(addr, transparent) {
            Ok(bound) => bound,
            Err(error) if addr.is_ipv6() && transparent => {
                tracing::warn!(%error, "no IPv6 listeners; serving IPv4 only");
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        let tcp_addr = tcp.local_addr().unwrap_or(udp_addr);
        tracing::info!(
            udp = %udp_addr,
            tcp = %tcp_addr,
            transparent,
            upstream = ?forward_to,
            mark = ?mark.map(|m| format!("{m:#x}")),
            original_source = config.original_source,
            "listening for DNS queries{}",
            if transparent {
                " (IP_TRANSPARENT: redirected flows; UDP original destination from IP_RECVORIGDSTADDR, TCP from the accepted socket)"
            } else {
                " (forward mode: every query goes to the upstream)"
            }
        );
        udp_addrs.push(udp_addr);
        tcp_addrs.push(tcp_addr);
        tasks.spawn(udp_front.clone().serve(Arc::new(udp)));
        tasks.spawn(tcp_front.clone().serve(tcp));
    }
    let admin = tokio::net::TcpListener::bind(config.admin)
        .await
        .map_err(|source| AppError::Admin {
            addr: config.admin,
            source,
        })?;
    let admin_addr = admin.local_addr().unwrap_or(config.admin);
    tracing::info!(addr = %admin_addr, "admin listening (/metrics, /ready)");
    tasks.spawn(xds::proxy::serve_admin(
        admin,
        Arc::new(admin::AdminState {
            metrics: metrics.clone(),
            flows,
            policies,
            identities,
        }),
    ));
    Ok(Running {
        udp: udp_addrs,
        tcp: tcp_addrs,
        admin: admin_addr,
        metrics,
        tasks,
        client,
    })
}

/// The UDP and TCP listeners on `addr`, on the same port (matters when the port is 0).
fn listeners(
    addr: SocketAddr,
    transparent: bool,
) -> Result<(tokio::net::UdpSocket, SocketAddr, tokio::net::TcpListener), SocketError> {
    let mut tries = 0;
    loop {
        let udp = sockets::udp_listener(addr, transparent)?;
        let udp_addr = udp.local_addr().map_err(|source| SocketError {
            purpose: "UDP listener",
            addr,
            what: "getsockname",
            source,
        })?;
        match sockets::tcp_listener(udp_addr, transparent) {
            Ok(tcp) => return Ok((udp, udp_addr, tcp)),
            // Port 0: the kernel's UDP pick may be a busy TCP port; pick again.
            Err(e)
                if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse && tries < 16 =>
            {
                tries += 1;
            }
            Err(e) => return Err(e),
        }
    }
}
