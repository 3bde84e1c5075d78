//! One node namespace per configuration, each with a client pod, a backend pod and (for
//! the configurations that have one) our agent and l7-proxy. Idle nodes cost nothing, so
//! every configuration stays up for the whole run and rounds only switch which one the
//! client loads. Everything is removed on drop: processes first, then the namespaces, then
//! the datapath's pin folder.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use integration::netns::{Netns, Node};

use crate::common::{Binaries, Proc, log_tails, pinned_in, start_nginx};
use crate::procfs;

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 10);
pub const BACKEND_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 20);
/// The backend's port under an L7 rule (`http: [{}]`): every connection goes through the
/// proxy (B4).
pub const L7_PORT: u16 = 80;
/// Ports allowed at L3/L4 only: never redirected (B9). 8081 is HTTP, 5201 iperf3.
pub const L4_PORT: u16 = 8081;
pub const IPERF_PORT: u16 = 5201;
pub const HTTP_EGRESS_PORT: u16 = 15001;
pub const HTTP_INGRESS_PORT: u16 = 15002;
/// TPROXY's mark for the local-delivery routing rule (as `Node::tproxy`).
const TPROXY_MARK: &str = "0x200";
pub const ADMIN: &str = "127.0.0.1:9901";
const PIN_ROOT: &str = "/sys/fs/bpf/sidecarless";
/// Namespace tags start with this, so stale pin folders of a killed run can be found.
const TAG: &str = "dpb";

/// CPU for the system under test (proxy and agent), and for the client and backend.
pub const SUT_CPU: &str = "0";
pub const LOAD_CPU: &str = "1";

/// How a node hands (or does not hand) the client's connections to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Setup {
    /// Ours: `node-agent run` with the eBPF datapath (tc programs on the pod devices,
    /// `bpf_sk_assign` to the proxy's ingress listener), `--upstream-source original`.
    Datapath,
    /// The same proxy and flags behind nftables TPROXY (agent `--no-datapath`); the
    /// replies of its original-source upstream connections are steered back to it by an
    /// nft `socket transparent` rule, the usual TPROXY recipe.
    TproxyOriginal,
    /// As above with `--upstream-source node` (the proxy's upstream connections come from
    /// the node's address, so no reply steering at all): the cheapest TPROXY set-up.
    TproxyNode,
    /// Nothing but routing: no agent, no proxy, no programs, no nft rules (B9 "detached").
    Bare,
    /// As `Bare` plus the policy-routing rule the agent installs
    /// (`fwmark 0x200/0xf00 lookup 2004`): with any custom rule every forwarded packet
    /// walks the FIB rules, so this separates the rule's cost from the programs'.
    BareWithRule,
}

impl Setup {
    pub fn name(self) -> &'static str {
        match self {
            Setup::Datapath => "ebpf",
            Setup::TproxyOriginal => "tproxy-orig",
            Setup::TproxyNode => "tproxy-node",
            Setup::Bare => "detached",
            Setup::BareWithRule => "detached+rule",
        }
    }

    fn tag(self) -> String {
        let short = match self {
            Setup::Datapath => "dp",
            Setup::TproxyOriginal => "to",
            Setup::TproxyNode => "tn",
            Setup::Bare => "bare",
            Setup::BareWithRule => "rule",
        };
        format!("{TAG}{short}")
    }

    fn has_proxy(self) -> bool {
        !matches!(self, Setup::Bare | Setup::BareWithRule)
    }
}

/// A node: its configuration and whether its namespace keeps TIME_WAIT sockets.
/// `no_time_wait` sets `net.ipv4.tcp_max_tw_buckets=0` in the node's namespace, so the
/// proxy's closed client connections leave no TIME_WAIT behind (a workaround: a SYN whose
/// 4-tuple matches a TIME_WAIT socket of the node is not accepted through `bpf_sk_assign`,
/// where TPROXY recycles the TIME_WAIT socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub setup: Setup,
    pub no_time_wait: bool,
}

impl Key {
    pub fn name(self) -> String {
        if self.no_time_wait {
            format!("{}+tw0", self.setup.name())
        } else {
            self.setup.name().to_owned()
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

/// One configuration's node. Field order is drop order.
#[derive(Debug)]
pub struct BenchNode {
    pub proxy: Option<Proc>,
    pub agent: Option<Proc>,
    backend: Proc,
    iperf: Proc,
    pub node: Node,
    pins: Option<PinDir>,
    pub setup: Setup,
    pub key: Key,
    pub dir: PathBuf,
}

impl BenchNode {
    /// Builds the namespaces, starts the backend, iperf3 server, agent and proxy, and
    /// waits until a request on the L7 port is answered through the proxy.
    pub fn start(key: Key, bins: &Binaries, scratch: &Path) -> Result<Self> {
        let setup = key.setup;
        let dir = scratch.join(key.name());
        std::fs::create_dir_all(&dir)?;
        let tag = format!("{}{}", setup.tag(), if key.no_time_wait { "x" } else { "" });
        let mut node = Node::new(&tag);
        node.add_pod(&format!("{tag}c"), CLIENT_IP);
        node.add_pod(&format!("{tag}s"), BACKEND_IP);
        if key.no_time_wait {
            node.ns
                .exec("sysctl", &["-qw", "net.ipv4.tcp_max_tw_buckets=0"]);
        }
        // Connection churn: tens of thousands of connections per run must not run out of
        // ports or trip over TIME_WAIT, in the client and in the node (upstream side).
        for ns in [&node.pods()[0].ns, &node.ns] {
            ns.exec(
                "sysctl",
                &[
                    "-qw",
                    "net.ipv4.ip_local_port_range=1024 65000",
                    "net.ipv4.tcp_tw_reuse=1",
                ],
            );
        }
        let backend = start_backend(&node.pods()[1].ns, &dir)?;
        let mut iperf = pinned_in(
            &node.pods()[1].ns,
            LOAD_CPU,
            Path::new("iperf3"),
            &dir.join("iperf3-server.log"),
        )?;
        iperf.args(["-s", "-p", &IPERF_PORT.to_string()]);
        let iperf = Proc::spawn(iperf, "iperf3 server")?;
        let pins =
            (setup == Setup::Datapath).then(|| PinDir(Path::new(PIN_ROOT).join(node.ns.name())));
        match setup {
            Setup::TproxyOriginal | Setup::TproxyNode => {
                node.tproxy(L7_PORT, HTTP_INGRESS_PORT);
                if setup == Setup::TproxyOriginal {
                    // Replies to the proxy's upstream sockets (bound to the client's
                    // address) are routed locally, to those sockets.
                    node.ns.nft(&format!(
                        "table ip bench_tproxy_return {{\n  chain prerouting {{\n    type filter hook prerouting priority mangle - 1; policy accept;\n    meta l4proto tcp socket transparent 1 meta mark set {TPROXY_MARK} accept\n  }}\n}}\n"
                    ));
                }
            }
            Setup::BareWithRule => {
                node.ns.ip(&[
                    "rule",
                    "add",
                    "fwmark",
                    "0x200/0xf00",
                    "lookup",
                    "2004",
                    "pref",
                    "9",
                ]);
                node.ns.ip(&[
                    "route",
                    "add",
                    "local",
                    "0.0.0.0/0",
                    "dev",
                    "lo",
                    "table",
                    "2004",
                ]);
            }
            Setup::Datapath | Setup::Bare => {}
        }
        let mut this = Self {
            proxy: None,
            agent: None,
            backend,
            iperf,
            node,
            pins,
            setup,
            key,
            dir,
        };
        if setup.has_proxy() {
            this.start_agent_and_proxy(bins)?;
        }
        this.wait_ready()
            .with_context(|| format!("{} not ready{}", key.name(), log_tails(&this.dir)))?;
        Ok(this)
    }

    pub fn client(&self) -> &Netns {
        &self.node.pods()[0].ns
    }

    /// Host-side devices of the client and backend pods.
    pub fn devices(&self) -> [&str; 2] {
        [
            self.node.pods()[0].host_device.as_str(),
            self.node.pods()[1].host_device.as_str(),
        ]
    }

    pub fn backend_pid(&self) -> u32 {
        self.backend.id()
    }

    pub fn check_running(&mut self) -> Result<()> {
        self.backend.check_running()?;
        self.iperf.check_running()?;
        for proc in self.proxy.iter_mut().chain(self.agent.iter_mut()) {
            proc.check_running()?;
        }
        Ok(())
    }

    fn start_agent_and_proxy(&mut self, bins: &Binaries) -> Result<()> {
        let manifests = self.dir.join("manifests");
        std::fs::create_dir_all(&manifests)?;
        std::fs::write(manifests.join("pods.yaml"), pods_yaml())?;
        std::fs::write(manifests.join("policy.yaml"), policy_yaml())?;
        let socket = self.dir.join("agent.sock");
        let ns_name = self.node.ns.name().to_owned();

        // The agent enters only the node's network namespace (as the README and the
        // datapath tests run it): a private mount namespace would hide bpffs pins.
        let log = std::fs::File::create(self.dir.join("agent.log"))?;
        let mut agent = Command::new("nsenter");
        agent
            .arg(format!("--net=/run/netns/{ns_name}"))
            .args(["taskset", "-c", SUT_CPU])
            .arg(&bins.agent)
            .args(["run", "--node-name", "node1", "--source"])
            .arg(format!("dir:{}", manifests.display()))
            .arg("--xds-socket")
            .arg(&socket)
            .arg("--fqdn-state")
            .arg(self.dir.join("fqdn-cache.json"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("NODE_AGENT_LOG", "warn")
            .env("NO_COLOR", "1");
        match &self.pins {
            Some(pins) => {
                agent.arg("--bpf-dir").arg(&pins.0);
            }
            None => {
                agent.arg("--no-datapath");
            }
        }
        self.agent = Some(Proc::spawn(agent, "node-agent")?);

        let source = if self.setup == Setup::TproxyNode {
            "node"
        } else {
            "original"
        };
        let mut proxy = pinned_in(
            &self.node.ns,
            SUT_CPU,
            &bins.proxy,
            &self.dir.join("proxy.log"),
        )?;
        proxy
            .arg("--agent")
            .arg(format!("unix:{}", socket.display()))
            .args([
                "--ingress",
                &format!("0.0.0.0:{HTTP_INGRESS_PORT}"),
                "--egress",
                &format!("0.0.0.0:{HTTP_EGRESS_PORT}"),
                "--mark",
                "0x300",
                "--ingress-mark",
                "0x400",
                "--upstream-source",
                source,
                "--admin",
                ADMIN,
            ])
            .env("L7_PROXY_LOG", "warn")
            .env("NO_COLOR", "1");
        self.proxy = Some(Proc::spawn(proxy, "l7-proxy")?);
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let until = |this: &mut Self, what: &str, done: &dyn Fn(&Self) -> bool| -> Result<()> {
            loop {
                this.check_running()?;
                if done(this) {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    bail!("timed out waiting for {what}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        until(self, "the backend", &|n| n.status(L4_PORT) == 200)?;
        if self.setup == Setup::Datapath {
            until(self, "the tc programs on both pod devices", &|n| {
                n.devices().iter().all(|dev| {
                    let out = n
                        .node
                        .ns
                        .output("tc", &["filter", "show", "dev", dev, "ingress"]);
                    String::from_utf8_lossy(&out.stdout).contains("from_pod")
                })
            })?;
        }
        if self.setup.has_proxy() {
            until(self, "the proxy's /ready", &|n| n.admin("/ready").0 == 200)?;
            // Through the proxy: the answer is 200 and the proxy counted the request.
            until(self, "a request through the proxy", &|n| {
                let before = n.proxy_requests();
                n.status(L7_PORT) == 200 && n.proxy_requests() > before
            })?;
            // The L4-only port must not go through the proxy.
            let before = self.proxy_requests();
            if self.status(L4_PORT) != 200 || self.proxy_requests() != before {
                bail!("port {L4_PORT} is not answered directly by the backend");
            }
        } else {
            until(self, "the backend on the L7 port", &|n| {
                n.status(L7_PORT) == 200
            })?;
        }
        Ok(())
    }

    /// One GET from the client to the backend's `port`: the status, 0 for no answer.
    pub fn status(&self, port: u16) -> u16 {
        let out = self.client().output(
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "--max-time",
                "3",
                "-w",
                "%{http_code}",
                &format!("http://{BACKEND_IP}:{port}/"),
            ],
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// GET on the proxy's admin listener: (status, body).
    pub fn admin(&self, path: &str) -> (u16, String) {
        let out = self.node.ns.output(
            "curl",
            &[
                "-sS",
                "--max-time",
                "3",
                "-w",
                "\n%{http_code}",
                &format!("http://{ADMIN}{path}"),
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        (status.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// Requests the proxy has decided, any direction and verdict (0 without a proxy).
    pub fn proxy_requests(&self) -> u64 {
        if !self.setup.has_proxy() {
            return 0;
        }
        let (_, body) = self.admin("/metrics");
        body.lines()
            .filter(|l| l.starts_with("l7_proxy_requests_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Packets that entered the node from the two pods (the client's and the backend's
    /// host devices, rx): each of them runs `from_pod` and then `to_pod` when attached.
    pub fn pod_packets(&self) -> Result<u64> {
        let mut sum = 0;
        for dev in self.devices() {
            let out = self
                .node
                .ns
                .exec("ip", &["-j", "-s", "link", "show", "dev", dev]);
            let json: serde_json::Value =
                serde_json::from_slice(&out.stdout).context("ip -j -s link")?;
            sum += json
                .pointer("/0/stats64/rx/packets")
                .and_then(serde_json::Value::as_u64)
                .context("no rx packets in ip -j -s link")?;
        }
        Ok(sum)
    }

    /// The programs attached to the pod devices (tc ingress and egress): (name and where,
    /// id). One program is loaded once and attached to every pod device, so its run
    /// counters cover all of them.
    pub fn attached_programs(&self) -> Vec<(String, u64)> {
        let mut by_id: BTreeMap<u64, (String, Vec<String>)> = BTreeMap::new();
        for dev in self.devices() {
            for hook in ["ingress", "egress"] {
                let out = self
                    .node
                    .ns
                    .output("tc", &["-j", "filter", "show", "dev", dev, hook]);
                let Ok(json) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                    continue;
                };
                for filter in json.as_array().into_iter().flatten() {
                    let options = filter.get("options");
                    let id = options
                        .and_then(|o| o.pointer("/prog/id"))
                        .and_then(serde_json::Value::as_u64);
                    let name = options
                        .and_then(|o| o.get("bpf_name"))
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("?");
                    if let Some(id) = id {
                        let entry = by_id
                            .entry(id)
                            .or_insert_with(|| (name.to_owned(), Vec::new()));
                        entry.1.push(format!("{dev} {hook}"));
                    }
                }
            }
        }
        by_id
            .into_iter()
            .map(|(id, (name, places))| (format!("{name} ({})", places.join(", ")), id))
            .collect()
    }

    pub fn proxy_ticks(&self) -> Result<u64> {
        procfs::cpu_ticks_sum(&self.proxy.iter().map(Proc::id).collect::<Vec<_>>())
    }

    pub fn agent_ticks(&self) -> Result<u64> {
        procfs::cpu_ticks_sum(&self.agent.iter().map(Proc::id).collect::<Vec<_>>())
    }
}

fn pods_yaml() -> String {
    format!(
        "apiVersion: v1\nkind: List\nitems:\n\
         - {{apiVersion: v1, kind: Pod, metadata: {{name: client, namespace: default, labels: {{app: client}}}},\n   spec: {{nodeName: node1, containers: [{{name: c, image: i}}]}}, status: {{podIP: {CLIENT_IP}}}}}\n\
         - {{apiVersion: v1, kind: Pod, metadata: {{name: backend, namespace: default, labels: {{app: backend}}}},\n   spec: {{nodeName: node1, containers: [{{name: c, image: i}}]}}, status: {{podIP: {BACKEND_IP}}}}}\n"
    )
}

/// The backend's ingress: from the client on 80/TCP with an allow-all HTTP rule (every
/// connection through the proxy), and on 8081 and 5201/TCP at L3/L4 only.
pub fn policy_yaml() -> String {
    [
        "apiVersion: cilium.io/v2",
        "kind: CiliumNetworkPolicy",
        "metadata: {name: bench, namespace: default}",
        "spec:",
        "  endpointSelector: {matchLabels: {app: backend}}",
        "  ingress:",
        "  - fromEndpoints: [{matchLabels: {app: client}}]",
        "    toPorts:",
        &format!("    - ports: [{{port: \"{L7_PORT}\", protocol: TCP}}]"),
        "      rules:",
        "        http: [{}]",
        "  - fromEndpoints: [{matchLabels: {app: client}}]",
        "    toPorts:",
        &format!(
            "    - ports: [{{port: \"{L4_PORT}\", protocol: TCP}}, {{port: \"{IPERF_PORT}\", protocol: TCP}}]"
        ),
        "",
    ]
    .join("\n")
}

/// The backend: nginx, one process on the load CPU, `return 200 ""` on both HTTP ports,
/// no access log, unlimited keep-alive.
fn start_backend(ns: &Netns, dir: &Path) -> Result<Proc> {
    let d = dir.join("backend");
    std::fs::create_dir_all(&d)?;
    let dd = d.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nuser root;\npid {dd}/nginx.pid;\n\
         error_log {dd}/error.log warn;\nworker_rlimit_nofile 20000;\nevents {{ worker_connections 10000; }}\n\
         http {{\n  access_log off;\n  default_type text/plain;\n  keepalive_requests 1000000000;\n  keepalive_timeout 600s;\n\
         client_body_temp_path {dd}/cb;\n  proxy_temp_path {dd}/p;\n  fastcgi_temp_path {dd}/f;\n  uwsgi_temp_path {dd}/u;\n  scgi_temp_path {dd}/s;\n\
         server {{\n    listen {BACKEND_IP}:{L7_PORT} backlog=4096;\n    listen {BACKEND_IP}:{L4_PORT} backlog=4096;\n    location / {{ return 200 \"\"; }}\n  }}\n}}\n"
    );
    start_nginx(ns, LOAD_CPU, &d, "stderr.log", conf, "backend nginx")
}
