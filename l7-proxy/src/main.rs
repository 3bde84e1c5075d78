use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use l7_proxy::app::{self, Config};
use l7_proxy::listener::ListenerMode;
use l7_proxy::proxy::ServerLimits;
use l7_proxy::proxy::upstream::{UpstreamConfig, UpstreamSource};
use xds::client::Endpoint;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    /// Connections redirected by the kernel (IP_TRANSPARENT; needs root).
    Transparent,
    /// Each connection starts with a PROXY protocol v1/v2 header naming the original
    /// source and destination (for tests, benchmarks, and behind load balancers).
    ProxyProtocol,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Source {
    /// Connect from the node's own address (the kernel's choice).
    Node,
    /// Connect from the client's original source IP (bound with IP_TRANSPARENT; needs
    /// CAP_NET_ADMIN, and the datapath must route the replies back to the proxy), so the
    /// destination sees the client's address. Connections are reused only for requests of
    /// the same client IP to the same destination.
    Original,
}

/// Per-node HTTP proxy enforcing CiliumNetworkPolicy HTTP rules.
#[derive(Debug, Parser)]
#[command(name = "l7-proxy", version)]
struct Args {
    /// The agent's policy stream: unix:PATH or http://HOST:PORT.
    #[arg(long, default_value = "unix:/var/run/sidecarless/agent.sock")]
    agent: String,
    /// Listener for traffic entering local endpoints.
    #[arg(long)]
    ingress: Option<SocketAddr>,
    /// Listener for traffic leaving local endpoints.
    #[arg(long)]
    egress: Option<SocketAddr>,
    #[arg(long, value_enum, default_value_t = Mode::Transparent)]
    mode: Mode,
    /// SO_MARK on upstream connections, so the datapath does not redirect them again
    /// (for the ingress listener's connections unless --ingress-mark is given). Decimal or
    /// 0x-prefixed hexadecimal.
    #[arg(long, value_parser = parse_mark)]
    mark: Option<u32>,
    /// SO_MARK on upstream connections of connections accepted on the ingress listener,
    /// so the destination's datapath knows which proxy enforced them. Default: --mark.
    #[arg(long, value_parser = parse_mark)]
    ingress_mark: Option<u32>,
    /// Source address of upstream connections: the node's (node) or the client's original
    /// source IP (original).
    #[arg(long, value_enum, default_value_t = Source::Node)]
    upstream_source: Source,
    /// Admin listener (/metrics, /ready, /config).
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// Seconds allowed to connect to an upstream.
    #[arg(long, default_value_t = 5)]
    connect_timeout: u64,
    /// Seconds allowed for a client to send its request headers.
    #[arg(long, default_value_t = 10)]
    header_timeout: u64,
    /// Largest request head in bytes (HTTP/1 head, HTTP/2 header list); larger gets 431.
    #[arg(long, default_value_t = 64 * 1024)]
    max_header_bytes: usize,
    /// Most request headers (1-100); more gets 431.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=100))]
    max_headers: u16,
    /// Seconds a connection may sit with no request in flight and no bytes moving.
    #[arg(long, default_value_t = 300)]
    idle_timeout: u64,
    /// Seconds a WebSocket or CONNECT tunnel may sit with no bytes moving.
    #[arg(long, default_value_t = 3600)]
    tunnel_idle_timeout: u64,
    /// Worker threads; 0 means one per CPU this process may run on.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Seconds requests in flight get to finish when their connection is closed because
    /// it went idle or lost its L3/L4 access.
    #[arg(long, default_value_t = 5)]
    drain_timeout: u64,
}

impl Args {
    /// The mark of the ingress listener's upstream connections: its own, else `--mark`.
    fn ingress_mark(&self) -> Option<u32> {
        self.ingress_mark.or(self.mark)
    }
}

/// A socket mark: decimal, or hexadecimal after `0x` (as the datapath writes them).
fn parse_mark(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("{text:?} is not a 32-bit mark: {e}"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("L7_PROXY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let agent = if let Some(path) = args.agent.strip_prefix("unix:") {
        Endpoint::Unix(PathBuf::from(path))
    } else if args.agent.starts_with("http://") {
        Endpoint::Tcp(args.agent.clone())
    } else {
        bail!(
            "--agent {:?}: expected unix:PATH or http://HOST:PORT",
            args.agent
        );
    };
    if args.ingress.is_none() && args.egress.is_none() {
        bail!("give --ingress, --egress or both");
    }
    let config = Config {
        agent,
        client_id: format!("l7-proxy/{}", std::process::id()),
        ingress: args.ingress,
        egress: args.egress,
        mode: match args.mode {
            Mode::Transparent => ListenerMode::Transparent,
            Mode::ProxyProtocol => ListenerMode::ProxyProtocol,
        },
        upstream: UpstreamConfig {
            mark: args.mark,
            source: match args.upstream_source {
                Source::Node => UpstreamSource::Node,
                Source::Original => UpstreamSource::Original,
            },
            connect_timeout: Duration::from_secs(args.connect_timeout),
            ..UpstreamConfig::default()
        },
        ingress_mark: args.ingress_mark(),
        limits: ServerLimits {
            header_read_timeout: Duration::from_secs(args.header_timeout),
            max_header_bytes: args.max_header_bytes,
            max_headers: usize::from(args.max_headers),
            idle_timeout: Duration::from_secs(args.idle_timeout),
            tunnel_idle_timeout: Duration::from_secs(args.tunnel_idle_timeout),
            drain_timeout: Duration::from_secs(args.drain_timeout),
        },
        admin: args.admin,
    };
    let runtime = xds::proxy::runtime(args.threads).context("starting the runtime")?;
    runtime.block_on(async {
        let shutdown = xds::proxy::shutdown_signal().context("listening for SIGTERM and SIGINT")?;
        app::run(config, shutdown).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(
            ["l7-proxy", "--egress", "127.0.0.1:15002"]
                .iter()
                .chain(args),
        )
    }

    #[test]
    fn ingress_mark_defaults_to_mark() -> Result<(), clap::Error> {
        assert_eq!(parse(&[])?.ingress_mark(), None);
        assert_eq!(parse(&["--mark", "0x300"])?.ingress_mark(), Some(0x300));
        let both = parse(&["--mark", "0x300", "--ingress-mark", "1024"])?;
        assert_eq!((both.mark, both.ingress_mark()), (Some(0x300), Some(0x400)));
        assert!(parse(&["--mark", "0x1_0000_0000"]).is_err());
        assert!(parse(&["--ingress-mark", "-1"]).is_err());
        Ok(())
    }

    #[test]
    fn upstream_source_defaults_to_node() -> Result<(), clap::Error> {
        assert!(matches!(parse(&[])?.upstream_source, Source::Node));
        let original = parse(&["--upstream-source", "original"])?;
        assert!(matches!(original.upstream_source, Source::Original));
        assert!(parse(&["--upstream-source", "pod"]).is_err());
        Ok(())
    }
}
