//! B7: FQDN learning on a real node: the agent with its eBPF datapath, the dns-proxy in
//! transparent mode (the datapath redirects the client's DNS to it), a client pod, a DNS
//! pod (dns-bench's responder: `nI.DOMAIN` answers 10.64.0.0 + I), and an "external" web
//! namespace routed from the node in which all of 10.64.0.0/12 is local. The client
//! resolves new names and connects to each answer at once: the first SYN only gets through
//! if the proxy held the answer until the datapath allowed the address.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use integration::netns::{Netns, Node};

use crate::b6::{admin_get, run_counting};
use crate::common::{Proc, check_interrupted, log_tails, pinned_in};
use crate::metrics::{self, Histogram};
use crate::procfs;
use crate::wire::{ANSWER_PREFIX, ANSWER_RANGE};
use crate::{Bins, LOAD_CPU, SUT_CPU};

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 10);
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 53);
/// The node's and the web namespace's ends of their link.
const NODE_EXT: &str = "192.168.250.1";
const WEB_EXT: &str = "192.168.250.2";
pub const DNS_PORT: u16 = 15053;
pub const WEB_PORT: u16 = 80;
pub const PIN_ROOT: &str = "/sys/fs/bpf/sidecarless";
/// Namespace tags start with this, so stale pin folders of a killed run can be found.
const TAG: &str = "dnsb7";
pub const SELECTED: &str = "fqdn.test";
pub const UNSELECTED: &str = "plain.test";
pub const HOLD: &str = "dns_proxy_fqdn_hold_seconds";
pub const HOLD_TIMEOUTS: &str = "dns_proxy_fqdn_hold_timeouts_total";
/// Observations that failed or that the agent did not allow.
pub const FQDN_ERRORS: &str = "dns_proxy_fqdn_errors_total";

/// Which names a run resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `nI.fqdn.test`, selected by the client's toFQDNs: answers are held while the
    /// datapath learns, then the client connects.
    Fqdn,
    /// `nI.plain.test`, selected by nothing: nothing to program, resolution only.
    Baseline,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Fqdn => "fqdn (held)",
            Kind::Baseline => "baseline (unselected)",
        }
    }
}

/// A pin folder, removed on drop (after the agent that used it has stopped).
#[derive(Debug)]
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes our pin folders whose namespace is gone (a run killed before its destructors).
pub fn remove_stale_pins() {
    let Ok(entries) = std::fs::read_dir(PIN_ROOT) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("sl-{TAG}")) && !Path::new("/run/netns").join(&name).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The B7 node. Field order is drop order: processes, then namespaces, then pins.
#[derive(Debug)]
pub struct B7Env {
    proxy: Proc,
    agent: Proc,
    responder: Proc,
    sink: Proc,
    _web: Netns,
    pub node: Node,
    _pins: PinDir,
    pub dir: PathBuf,
    bins: Bins,
    /// Next unused name index: every name (and so every address) is new.
    next_index: u32,
}

/// The client's policy: DNS to the DNS pod with `matchPattern: "*"`, and port 80 to
/// whatever `*.fqdn.test` resolves to.
pub fn policy_yaml() -> String {
    [
        "apiVersion: cilium.io/v2",
        "kind: CiliumNetworkPolicy",
        "metadata: {name: fqdn, namespace: default}",
        "spec:",
        "  endpointSelector: {matchLabels: {app: client}}",
        "  egress:",
        "  - toEndpoints: [{matchLabels: {app: dns}}]",
        "    toPorts:",
        "    - ports: [{port: \"53\", protocol: ANY}]",
        "      rules:",
        "        dns: [{matchPattern: \"*\"}]",
        &format!("  - toFQDNs: [{{matchPattern: \"*.{SELECTED}\"}}]"),
        "    toPorts:",
        &format!("    - ports: [{{port: \"{WEB_PORT}\", protocol: TCP}}]"),
        "",
    ]
    .join("\n")
}

impl B7Env {
    pub fn start(bins: &Bins, scratch: &Path, ttl: u32, lifetime: Duration) -> Result<Self> {
        let dir = scratch.join("b7");
        std::fs::create_dir_all(&dir)?;
        let mut node = Node::new(&format!("{TAG}n"));
        node.add_pod(&format!("{TAG}c"), CLIENT_IP);
        node.add_pod(&format!("{TAG}d"), DNS_IP);
        // A thousand new connections a second from the client for minutes.
        node.pods()[0].ns.exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_local_port_range=1024 65000",
                "net.ipv4.tcp_tw_reuse=1",
            ],
        );
        let web = Netns::new(&format!("{TAG}w"));
        node.ns.ip(&[
            "link",
            "add",
            "ext0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            web.name(),
        ]);
        node.ns
            .ip(&["addr", "add", &format!("{NODE_EXT}/30"), "dev", "ext0"]);
        node.ns.ip(&["link", "set", "ext0", "up"]);
        node.ns
            .ip(&["route", "add", ANSWER_PREFIX, "via", WEB_EXT, "dev", "ext0"]);
        web.ip(&["addr", "add", &format!("{WEB_EXT}/30"), "dev", "eth0"]);
        web.ip(&["link", "set", "eth0", "up"]);
        web.ip(&["route", "add", "default", "via", NODE_EXT, "dev", "eth0"]);
        // Every address of the range is this namespace's own: one listener takes them all.
        web.ip(&["route", "add", "local", ANSWER_PREFIX, "dev", "lo"]);

        let secs = lifetime.as_secs().to_string();
        let mut responder = pinned_in(
            &node.pods()[1].ns,
            LOAD_CPU,
            &bins.bench,
            &dir.join("responder.log"),
        )?;
        responder.args([
            "serve-dns",
            "--listen",
            "0.0.0.0:53",
            "--ttl",
            &ttl.to_string(),
            "--lifetime",
            &secs,
        ]);
        let responder = Proc::spawn(responder, "DNS responder")?;
        let mut sink = pinned_in(&web, LOAD_CPU, &bins.bench, &dir.join("sink.log"))?;
        sink.args([
            "sink",
            "--listen",
            &format!("0.0.0.0:{WEB_PORT}"),
            "--lifetime",
            &secs,
        ]);
        let sink = Proc::spawn(sink, "web sink")?;

        let pins = PinDir(Path::new(PIN_ROOT).join(node.ns.name()));
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests)?;
        std::fs::write(
            manifests.join("pods.yaml"),
            crate::b6conf::pods_yaml(CLIENT_IP, DNS_IP),
        )?;
        std::fs::write(manifests.join("policy.yaml"), policy_yaml())?;
        let socket = dir.join("agent.sock");
        // The agent enters only the node's network namespace (as datapath-bench runs it):
        // `ip netns exec` would give it a private mount namespace that hides bpffs pins.
        let log = std::fs::File::create(dir.join("agent.log"))?;
        let mut agent = Command::new("nsenter");
        agent
            .arg(format!("--net=/run/netns/{}", node.ns.name()))
            .args(["taskset", "-c", SUT_CPU])
            .arg(&bins.agent)
            .args(["run", "--node-name", "node1", "--source"])
            .arg(format!("dir:{}", manifests.display()))
            .arg("--xds-socket")
            .arg(&socket)
            .arg("--bpf-dir")
            .arg(&pins.0)
            // A cache of its own: the default file outlives the run, and names restored
            // from an earlier run would be allowed before any hold.
            .arg("--fqdn-state")
            .arg(dir.join("fqdn-cache.json"))
            .args(["--dns-port", &DNS_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("NODE_AGENT_LOG", "warn")
            .env("NO_COLOR", "1");
        let agent = Proc::spawn(agent, "node-agent")?;
        let mut proxy = pinned_in(
            &node.ns,
            SUT_CPU,
            &bins.dns_proxy,
            &dir.join("dns-proxy.log"),
        )?;
        proxy
            .args([
                "--mode",
                "transparent",
                "--threads",
                "1",
                "--admin",
                crate::b6::ADMIN,
            ])
            .args(["--listen-port", &DNS_PORT.to_string()])
            .arg("--agent")
            .arg(format!("unix:{}", socket.display()))
            .env("DNS_PROXY_LOG", "warn")
            .env("NO_COLOR", "1");
        let proxy = Proc::spawn(proxy, "dns-proxy")?;
        let mut env = Self {
            proxy,
            agent,
            responder,
            sink,
            _web: web,
            node,
            _pins: pins,
            dir,
            bins: bins.clone(),
            next_index: 1,
        };
        env.wait_ready()
            .with_context(|| format!("B7 node not ready{}", log_tails(&env.dir)))?;
        Ok(env)
    }

    pub fn check_running(&mut self) -> Result<()> {
        self.responder.check_running()?;
        self.sink.check_running()?;
        self.agent.check_running()?;
        self.proxy.check_running()
    }

    pub fn client(&self) -> &Netns {
        &self.node.pods()[0].ns
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.check_running()?;
            check_interrupted()?;
            let programs = self.node.pods().iter().all(|pod| {
                let out = self.node.ns.output(
                    "tc",
                    &["filter", "show", "dev", &pod.host_device, "ingress"],
                );
                String::from_utf8_lossy(&out.stdout).contains("from_pod")
            });
            if programs && admin_get(&self.node.ns, "/ready").0 == 200 {
                break;
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for the tc programs and the proxy's /ready");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // End to end: a few names resolved through the proxy, each connected at once.
        loop {
            let before = self.scrape();
            let probe = self.load(Kind::Fqdn, 10, 1)?;
            let held =
                Histogram::scrape(&self.scrape(), HOLD).since(&Histogram::scrape(&before, HOLD));
            if probe.resolve_failed == 0 && probe.first_syn_ok == probe.names && held.count > 0.0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the probe names did not resolve through the proxy and connect: {probe:?}, holds counted {}",
                    held.count
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn scrape(&self) -> String {
        admin_get(&self.node.ns, "/metrics").1
    }

    /// One run of the load tool in the client pod: `rate` new names a second for
    /// `seconds`; Fqdn runs connect to every answer.
    pub fn load(&mut self, kind: Kind, rate: u32, seconds: u64) -> Result<LoadResult> {
        let count = u32::try_from(u64::from(rate) * seconds).context("too many names")?;
        let first = self.next_index;
        let next = first.checked_add(count).filter(|&n| n <= ANSWER_RANGE);
        self.next_index = next.with_context(|| {
            format!("out of fresh names: the responder's range holds {ANSWER_RANGE} (fewer rounds or seconds)")
        })?;
        let (domain, port) = match kind {
            Kind::Fqdn => (SELECTED, WEB_PORT),
            Kind::Baseline => (UNSELECTED, 0),
        };
        let mut command = self.client().command("taskset");
        command
            .args(["-c", LOAD_CPU])
            .arg(&self.bins.bench)
            .args([
                "fqdn-load",
                "--server",
                &format!("{DNS_IP}:53"),
                "--domain",
                domain,
            ])
            .args(["--first", &first.to_string(), "--rate", &rate.to_string()])
            .args([
                "--seconds",
                &seconds.to_string(),
                "--connect-port",
                &port.to_string(),
            ]);
        let (output, ticks) = run_counting(command, Duration::from_secs(seconds + 10))?;
        if !output.status.success() {
            bail!(
                "fqdn-load failed: {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let mut result = LoadResult::parse(&output.stdout)?;
        result.generator_ticks = ticks;
        Ok(result)
    }

    /// A measured run: the load plus the proxy's and agent's CPU and the hold metrics
    /// over it.
    pub fn measure(
        &mut self,
        kind: Kind,
        rate: u32,
        seconds: u64,
        round: usize,
        ticks_per_sec: f64,
    ) -> Result<B7Sample> {
        check_interrupted()?;
        self.check_running()?;
        let pids = [self.proxy.id(), self.agent.id()];
        let settle_secs = self.settle(&pids, ticks_per_sec)?;
        let (proxy0, agent0) = (procfs::cpu_ticks(pids[0])?, procfs::cpu_ticks(pids[1])?);
        let before = self.scrape();
        let load = self.load(kind, rate, seconds)?;
        let after = self.scrape();
        let (proxy1, agent1) = (procfs::cpu_ticks(pids[0])?, procfs::cpu_ticks(pids[1])?);
        self.check_running()?;
        let us = |t: u64| t as f64 / ticks_per_sec * 1e6;
        Ok(B7Sample {
            round,
            kind,
            hold: Histogram::scrape(&after, HOLD).since(&Histogram::scrape(&before, HOLD)),
            hold_timeouts: metrics::counter(&after, HOLD_TIMEOUTS)
                - metrics::counter(&before, HOLD_TIMEOUTS),
            fqdn_errors: metrics::counter(&after, FQDN_ERRORS)
                - metrics::counter(&before, FQDN_ERRORS),
            proxy_us: us(proxy1.saturating_sub(proxy0)),
            agent_us: us(agent1.saturating_sub(agent0)),
            settle_secs,
            load,
        })
    }

    /// Waits until the proxy and agent together use under 5 % of a CPU (half-second
    /// samples), at most a minute: a run must not inherit the previous run's backlog of
    /// observations to program (or the expiry of its names). Returns the seconds waited.
    fn settle(&self, pids: &[u32], ticks_per_sec: f64) -> Result<f64> {
        let start = Instant::now();
        let half = Duration::from_millis(500);
        loop {
            check_interrupted()?;
            let t0 = procfs::cpu_ticks_sum(pids)?;
            std::thread::sleep(half);
            let busy = procfs::cpu_ticks_sum(pids)?.saturating_sub(t0) as f64
                / ticks_per_sec
                / half.as_secs_f64();
            if busy < 0.05 || start.elapsed() > Duration::from_secs(60) {
                return Ok(start.elapsed().as_secs_f64());
            }
        }
    }
}

/// The load tool's JSON summary.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    pub names: u64,
    pub achieved_rate: f64,
    /// Resolved, no connect asked for (baseline runs).
    pub resolved_only: u64,
    pub first_syn_ok: u64,
    pub connect_late: u64,
    pub connect_failed: u64,
    pub resolve_failed: u64,
    pub resolve_p50_us: f64,
    pub resolve_p90_us: f64,
    pub resolve_p99_us: f64,
    pub resolve_max_us: f64,
    pub connect_p50_us: f64,
    pub connect_p99_us: f64,
    pub generator_ticks: u64,
}

impl LoadResult {
    pub fn parse(stdout: &[u8]) -> Result<Self> {
        let json: serde_json::Value =
            serde_json::from_slice(stdout).context("fqdn-load printed no JSON")?;
        let int = |k: &str| json.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        // null (no value: NaN in the tool) reads as NaN.
        let float = |k: &str| {
            json.get(k)
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(f64::NAN)
        };
        Ok(Self {
            names: int("names"),
            achieved_rate: float("achieved_rate"),
            resolved_only: int("resolved_only"),
            first_syn_ok: int("first_syn_ok"),
            connect_late: int("connect_late"),
            connect_failed: int("connect_failed"),
            resolve_failed: int("resolve_failed"),
            resolve_p50_us: float("resolve_p50_us"),
            resolve_p90_us: float("resolve_p90_us"),
            resolve_p99_us: float("resolve_p99_us"),
            resolve_max_us: float("resolve_max_us"),
            connect_p50_us: float("connect_p50_us"),
            connect_p99_us: float("connect_p99_us"),
            generator_ticks: 0,
        })
    }
}

/// One measured B7 run.
#[derive(Debug, Clone)]
pub struct B7Sample {
    pub round: usize,
    pub kind: Kind,
    pub load: LoadResult,
    /// The proxy's hold histogram over the run.
    pub hold: Histogram,
    pub hold_timeouts: f64,
    pub fqdn_errors: f64,
    pub proxy_us: f64,
    pub agent_us: f64,
    /// Seconds waited before the run for the proxy and agent to go idle.
    pub settle_secs: f64,
}

impl B7Sample {
    /// Percent of names whose first SYN was allowed (of all names, failures included);
    /// NaN for runs that do not connect.
    pub fn first_syn_percent(&self) -> f64 {
        if self.load.names == 0 || self.kind == Kind::Baseline {
            f64::NAN
        } else {
            100.0 * self.load.first_syn_ok as f64 / self.load.names as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_load_summary() {
        let text = br#"{"names":10,"achieved_rate":999.5,"first_syn_ok":9,"connect_late":1,"connect_failed":0,"resolve_failed":0,"resolve_p50_us":120.5,"resolve_p90_us":200.0,"resolve_p99_us":900.0,"resolve_max_us":1000.0,"connect_p50_us":50.0,"connect_p99_us":null}"#;
        let r = LoadResult::parse(text).expect("parses");
        assert_eq!((r.names, r.first_syn_ok, r.connect_late), (10, 9, 1));
        assert!(r.connect_p99_us.is_nan());
        assert!(LoadResult::parse(b"oops").is_err());
    }

    #[test]
    fn policy_selects_only_the_fqdn_domain() {
        let yaml = policy_yaml();
        assert!(yaml.contains("toFQDNs: [{matchPattern: \"*.fqdn.test\"}]"));
        assert!(!yaml.contains(UNSELECTED));
    }
}
