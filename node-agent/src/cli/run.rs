//! `node-agent run`: the agent with a policy source and the policy stream.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;

use crate::agent::{self, AgentConfig, FqdnSettings};
use crate::datapath::{self, DatapathConfig, entries::ProxyPorts, loader::DEFAULT_PIN_ROOT};
use crate::fqdn::FqdnConfig;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where policy comes from: `dir:DIR` (a folder of manifests, watched for changes).
    #[arg(long)]
    pub source: String,
    /// This node's name: pods with this `spec.nodeName` (and a pod IP) are its endpoints.
    #[arg(long)]
    pub node_name: String,
    /// Unix socket the policy stream is served on.
    #[arg(long, default_value = agent::DEFAULT_SOCKET)]
    pub xds_socket: PathBuf,
    /// Also serve the policy stream on this TCP address (e.g. 127.0.0.1:15010).
    #[arg(long)]
    pub xds_tcp: Option<SocketAddr>,
    /// How many flow records from the proxies the agent keeps.
    #[arg(long, default_value_t = 10_000)]
    pub flow_buffer: usize,
    /// Run without the kernel datapath (policy stream only: no programs, no maps).
    #[arg(long)]
    pub no_datapath: bool,
    /// Folder of /sys/fs/bpf where this node's maps are pinned
    /// [default: /sys/fs/bpf/sidecarless/NODE-NAME].
    #[arg(long)]
    pub bpf_dir: Option<PathBuf>,
    /// Device through which traffic from other nodes arrives (repeatable). Gets the
    /// program that redirects it to the ingress proxy when policy says so.
    #[arg(long)]
    pub uplink: Vec<String>,
    /// Port of l7-proxy's transparent listener for traffic leaving local pods (its --egress).
    #[arg(long, default_value_t = 15001)]
    pub http_egress_port: u16,
    /// Port of l7-proxy's transparent listener for traffic entering local pods (its --ingress).
    #[arg(long, default_value_t = 15002)]
    pub http_ingress_port: u16,
    /// Port of dns-proxy's transparent listener.
    #[arg(long, default_value_t = 15053)]
    pub dns_port: u16,
    /// Routing table for packets steered to a proxy (ip rule fwmark 0x200/0xf00).
    #[arg(long, default_value_t = datapath::controller::DEFAULT_PROXY_TABLE)]
    pub proxy_routing_table: u32,
    /// Minimum TTL (seconds) of the IPs DNS answers teach toFQDNs selectors.
    #[arg(long, default_value_t = FqdnConfig::DEFAULT_MIN_TTL_SECS)]
    pub fqdn_min_ttl: u32,
    /// Most IPs kept per DNS name and endpoint (the earliest-expiring go first).
    #[arg(long, default_value_t = FqdnConfig::DEFAULT_MAX_IPS_PER_NAME)]
    pub fqdn_max_ips_per_name: usize,
    /// How long after its expiry a learned IP stays allowed at least, in seconds.
    #[arg(long, default_value_t = agent::DEFAULT_EXPIRY_GRACE.as_secs())]
    pub fqdn_expiry_grace: u64,
    /// File the FQDN cache is saved to, and restored from at start
    /// [default: /var/lib/sidecarless/NODE-NAME/fqdn-cache.json].
    #[arg(long)]
    pub fqdn_state: Option<PathBuf>,
}

/// Where the FQDN cache is saved unless told otherwise.
pub const DEFAULT_FQDN_STATE_ROOT: &str = "/var/lib/sidecarless";

pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let Some(dir) = args.source.strip_prefix("dir:") else {
        bail!(
            "--source {:?}: expected dir:DIR (the kube source is not available yet)",
            args.source
        );
    };
    if args.flow_buffer == 0 {
        bail!("--flow-buffer must be at least 1");
    }
    let config = AgentConfig {
        source_dir: PathBuf::from(dir),
        node_name: args.node_name.clone(),
        socket: args.xds_socket.clone(),
        tcp: args.xds_tcp,
        flow_buffer: args.flow_buffer,
        datapath: (!args.no_datapath).then(|| DatapathConfig {
            pin_dir: args
                .bpf_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_ROOT).join(&args.node_name)),
            proxy_ports: ProxyPorts {
                http_ingress: args.http_ingress_port,
                http_egress: args.http_egress_port,
                dns: args.dns_port,
            },
            uplinks: args.uplink.clone(),
            routing_table: args.proxy_routing_table,
        }),
    };
    if args.fqdn_max_ips_per_name == 0 {
        bail!("--fqdn-max-ips-per-name must be at least 1");
    }
    let fqdn = FqdnSettings {
        config: FqdnConfig {
            min_ttl_secs: args.fqdn_min_ttl,
            max_ips_per_name: args.fqdn_max_ips_per_name,
            ..FqdnConfig::default()
        },
        state_file: Some(args.fqdn_state.clone().unwrap_or_else(|| {
            PathBuf::from(DEFAULT_FQDN_STATE_ROOT)
                .join(&args.node_name)
                .join("fqdn-cache.json")
        })),
        expiry_grace: std::time::Duration::from_secs(args.fqdn_expiry_grace),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("agent-control")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        // Before the agent serves anything (see `shutdown_signal`).
        let shutdown = xds::proxy::shutdown_signal().context("listening for SIGTERM and SIGINT")?;
        agent::run_with_fqdn(config, fqdn, shutdown).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
