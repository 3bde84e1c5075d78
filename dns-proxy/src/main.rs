use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use dns_proxy::DenyRcode;
use dns_proxy::app::{self, Config, Mode};
use xds::client::Endpoint;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    /// Flows redirected by the kernel (bpf_sk_assign or TPROXY) to IP_TRANSPARENT
    /// listeners on --listen-port; each query goes to the server the client addressed.
    /// Needs CAP_NET_ADMIN.
    Transparent,
    /// Plain listeners on --listen; every query goes to --upstream (tests, benchmarks).
    Forward,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Source {
    /// Upstream sockets bound to the client's IP (IP_TRANSPARENT, port 0): the server and
    /// its policy see the client.
    Original,
    /// The node's own address.
    Node,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DenyArg {
    Refused,
    Nxdomain,
}

/// Per-node DNS proxy enforcing CiliumNetworkPolicy DNS rules and feeding toFQDNs.
#[derive(Debug, Parser)]
#[command(name = "dns-proxy", version)]
struct Args {
    /// The agent's policy stream: unix:PATH or http://HOST:PORT.
    #[arg(long, default_value = "unix:/var/run/sidecarless/agent.sock")]
    agent: String,
    #[arg(long, value_enum, default_value_t = ModeArg::Transparent)]
    mode: ModeArg,
    /// Transparent mode: UDP and TCP port on 0.0.0.0 and [::].
    #[arg(long, default_value_t = 15053)]
    listen_port: u16,
    /// Forward mode: UDP and TCP listening address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Forward mode: the DNS server every query goes to.
    #[arg(long)]
    upstream: Option<SocketAddr>,
    /// SO_MARK on every upstream socket (0: none), so the datapath does not redirect the
    /// proxy's own queries. Decimal or 0x-prefixed hexadecimal. Needs CAP_NET_ADMIN; in
    /// forward mode without it the sockets stay unmarked (with a warning).
    #[arg(long, value_parser = parse_mark, default_value = "0x300")]
    mark: u32,
    /// Source address of upstream sockets. Default: original in transparent mode, node in
    /// forward mode.
    #[arg(long, value_enum)]
    upstream_source: Option<Source>,
    /// Milliseconds the server has to answer; then the client gets SERVFAIL.
    #[arg(long, default_value_t = 2000)]
    upstream_timeout_ms: u64,
    /// Queries processed at once (UDP and TCP); more are answered SERVFAIL at once.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    max_in_flight: u32,
    /// Rcode of denied queries.
    #[arg(long, value_enum, default_value_t = DenyArg::Refused)]
    deny_rcode: DenyArg,
    /// Milliseconds an answer feeding toFQDNs waits for the agent before it is released.
    #[arg(long, default_value_t = 100)]
    fqdn_hold_ms: u64,
    /// Admin listener (/metrics, /ready).
    #[arg(long, default_value = "127.0.0.1:9902")]
    admin: SocketAddr,
    /// Worker threads; 0 (default) means one per CPU this process may run on.
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// A socket mark: decimal, or hexadecimal after `0x` (as the datapath writes them).
fn parse_mark(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("{text:?} is not a 32-bit mark: {e}"))
}

fn config(args: &Args) -> anyhow::Result<Config> {
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
    let mode = match args.mode {
        ModeArg::Transparent => {
            if args.listen.is_some() || args.upstream.is_some() {
                bail!("--listen and --upstream are for --mode forward");
            }
            Mode::Transparent {
                port: args.listen_port,
            }
        }
        ModeArg::Forward => match (args.listen, args.upstream) {
            (Some(listen), Some(upstream)) => Mode::Forward { listen, upstream },
            _ => bail!("--mode forward needs --listen ADDR:PORT and --upstream ADDR:PORT"),
        },
    };
    let mut config = Config::new(agent, mode);
    config.mark = (args.mark != 0).then_some(args.mark);
    config.original_source = match args.upstream_source {
        Some(Source::Original) => true,
        Some(Source::Node) => false,
        None => args.mode == ModeArg::Transparent,
    };
    config.upstream_timeout = Duration::from_millis(args.upstream_timeout_ms);
    config.max_in_flight = usize::try_from(args.max_in_flight).unwrap_or(usize::MAX);
    config.deny = match args.deny_rcode {
        DenyArg::Refused => DenyRcode::Refused,
        DenyArg::Nxdomain => DenyRcode::NxDomain,
    };
    config.fqdn_hold = Duration::from_millis(args.fqdn_hold_ms);
    config.admin = args.admin;
    Ok(config)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DNS_PROXY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let config = config(args)?;
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
        Args::try_parse_from(["dns-proxy"].iter().chain(args))
    }

    #[test]
    fn defaults_follow_the_mode() -> anyhow::Result<()> {
        let t = config(&parse(&[])?)?;
        assert_eq!(t.mode, Mode::Transparent { port: 15053 });
        assert!(t.original_source);
        assert_eq!(t.mark, Some(0x300));
        let f = config(&parse(&[
            "--mode",
            "forward",
            "--listen",
            "127.0.0.1:5353",
            "--upstream",
            "127.0.0.1:53",
            "--mark",
            "0",
            "--deny-rcode",
            "nxdomain",
        ])?)?;
        assert!(!f.original_source);
        assert_eq!(f.mark, None);
        assert_eq!(f.deny, DenyRcode::NxDomain);
        assert!(config(&parse(&["--mode", "forward"])?).is_err());
        assert!(parse(&["--mark", "0x1_0000_0000"]).is_err());
        assert_eq!(config(&parse(&["--mark", "768"])?)?.mark, Some(0x300));
        Ok(())
    }
}
