//! The harness of the eBPF datapath tests: one or two node namespaces, each running the real
//! `node-agent run` (with its datapath) and the real `l7-proxy`, pods wired to them by veth
//! pairs, real servers and real curl inside the pods.
//!
//! The agent enters only the node's network namespace (`nsenter --net`), as the README
//! says to run it: `ip netns exec` would give it a private mount namespace whose bpffs a
//! restarted agent could not see. Every node pins its maps in its own folder of
//! /sys/fs/bpf, named after its namespace and removed on drop (and by the next run when a
//! killed run left it behind).
#![allow(dead_code)] // not every test file uses every helper

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use integration::binary;
use integration::netns::{Netns, Node, Pod, Process};
use serde_json::Value;

#[path = "../netns_cluster/mod.rs"]
mod netns_cluster;
pub use netns_cluster::{HTTP1_UPSTREAM, spawn_logged, write_policy};

pub const HTTP_EGRESS_PORT: u16 = 15001;
pub const HTTP_INGRESS_PORT: u16 = 15002;
pub const ADMIN: &str = "127.0.0.1:9901";
pub const PATIENCE: Duration = Duration::from_secs(60);
pub const DENIED_BODY: &str = "Access denied\r\n";
pub const DNS_PROXY_PORT: u16 = 15053;
pub const DNS_ADMIN: &str = "127.0.0.1:9902";
const PIN_ROOT: &str = "/sys/fs/bpf/sidecarless";

/// One pod of a test.
#[derive(Debug, Clone, Copy)]
pub struct PodSpec {
    pub name: &'static str,
    pub ip: Ipv4Addr,
    pub labels: &'static str,
    /// Index of the node it runs on.
    pub node: usize,
    /// `metadata.annotations` as a YAML flow map, or "".
    pub annotations: &'static str,
}

pub const fn pod(name: &'static str, ip: [u8; 4], labels: &'static str, node: usize) -> PodSpec {
    PodSpec {
        name,
        ip: Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]),
        labels,
        node,
        annotations: "",
    }
}

pub fn node_name(index: usize) -> String {
    format!("node{}", index + 1)
}

pub fn pods_yaml(pods: &[PodSpec]) -> String {
    let mut yaml = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for pod in pods {
        let annotations = if pod.annotations.is_empty() {
            String::new()
        } else {
            format!(", annotations: {}", pod.annotations)
        };
        yaml.push_str(&format!(
            "- {{apiVersion: v1, kind: Pod, metadata: {{name: {}, namespace: default, labels: {}{annotations}}},\n   spec: {{nodeName: {}, containers: [{{name: c, image: i}}]}}, status: {{podIP: {}}}}}\n",
            pod.name,
            pod.labels,
            node_name(pod.node),
            pod.ip
        ));
    }
    yaml
}

/// A folder of pinned maps, removed on drop.
#[derive(Debug)]
pub struct PinDir(pub PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes pin folders and resolver folders (`/etc/netns/NS`) of namespaces that no
/// longer exist (a killed run's).
fn remove_stale_pins() {
    for root in [PIN_ROOT, "/etc/netns"] {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("sl-") && !Path::new("/run/netns").join(&name).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// One node: its namespace and pods, agent and proxy. Field order is drop order.
#[derive(Debug)]
pub struct DpNode {
    pub dns_proxy: Option<Process>,
    pub proxy: Option<Process>,
    pub agent: Option<Process>,
    pub node: Node,
    pub pins: PinDir,
    pub socket: PathBuf,
    pub uplink: Option<String>,
    pub name: String,
    /// Pod names in `node.pods()` order.
    pub pod_names: Vec<&'static str>,
    starts: usize,
}

/// The nodes, the upstream servers and the manifests folder.
#[derive(Debug)]
pub struct DpCluster {
    pub servers: Vec<Process>,
    pub nodes: Vec<DpNode>,
    /// Hosts outside the cluster, by name: (node index, position in its hosts).
    pub hosts: Vec<(&'static str, usize, usize)>,
    /// `/etc/netns/NS` folders written for pods' resolvers, removed on drop.
    pub resolver_dirs: Vec<PathBuf>,
    pub dir: tempfile::TempDir,
}

impl DpCluster {
    /// `node_count` nodes (joined by one link when two), `pods` wired to them, manifests
    /// (pods and `policy`) written, agents and proxies started and ready.
    pub fn start(tag: &str, node_count: usize, pods: &[PodSpec], policy: &str) -> Self {
        assert!((1..=2).contains(&node_count));
        remove_stale_pins();
        let dir = tempfile::tempdir().expect("temp dir");
        let manifests = dir.path().join("manifests");
        std::fs::create_dir(&manifests).expect("create the manifests folder");
        std::fs::write(manifests.join("pods.yaml"), pods_yaml(pods)).expect("write pods.yaml");
        write_policy(&manifests, policy);

        let mut nodes = Vec::new();
        for index in 0..node_count {
            let mut node = Node::new(&format!("{tag}{}", index + 1));
            let mut pod_names = Vec::new();
            for spec in pods.iter().filter(|p| p.node == index) {
                node.add_pod(spec.name, spec.ip);
                pod_names.push(spec.name);
            }
            let name = node.ns.name().to_string();
            nodes.push(DpNode {
                dns_proxy: None,
                proxy: None,
                agent: None,
                pins: PinDir(Path::new(PIN_ROOT).join(&name)),
                socket: dir.path().join(format!("agent-{}.sock", index + 1)),
                uplink: None,
                name,
                pod_names,
                node,
                starts: 0,
            });
        }
        if node_count == 2 {
            link_nodes(&mut nodes, pods);
        }
        let mut cluster = Self {
            servers: Vec::new(),
            nodes,
            hosts: Vec::new(),
            resolver_dirs: Vec::new(),
            dir,
        };
        for index in 0..node_count {
            cluster.start_agent(index);
            cluster.start_proxy(index);
        }
        for index in 0..node_count {
            cluster.wait_ready(index);
        }
        cluster
    }

    pub fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    pub fn write_policy(&self, policy: &str) {
        write_policy(&self.manifests(), policy);
    }

    pub fn write_pods(&self, pods: &[PodSpec]) {
        let tmp = self.dir.path().join("pods.yaml.tmp");
        std::fs::write(&tmp, pods_yaml(pods)).expect("write pods");
        std::fs::rename(&tmp, self.manifests().join("pods.yaml")).expect("rename pods");
    }

    /// Starts (or restarts) node `index`'s agent.
    pub fn start_agent(&mut self, index: usize) {
        let manifests = self.manifests();
        let node = &mut self.nodes[index];
        node.starts += 1;
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", node.name))
            .arg(binary("node-agent", "node-agent"))
            .args(["run", "--node-name", &node_name(index), "--source"])
            .arg(format!("dir:{}", manifests.display()))
            .arg("--xds-socket")
            .arg(&node.socket)
            .arg("--bpf-dir")
            .arg(&node.pins.0)
            .arg("--fqdn-state")
            .arg(
                self.dir
                    .path()
                    .join(format!("fqdn-cache-{}.json", index + 1)),
            )
            .stdin(Stdio::null())
            .env("NODE_AGENT_LOG", "info")
            .env("NO_COLOR", "1");
        if let Some(uplink) = &node.uplink {
            command.args(["--uplink", uplink]);
        }
        let log = format!("agent{}-{}", index + 1, node.starts);
        node.agent = Some(spawn_logged(command, self.dir.path(), &log));
    }

    /// Starts (or restarts) node `index`'s proxy.
    pub fn start_proxy(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let mut command = node.node.ns.command(binary("l7-proxy", "l7-proxy"));
        command
            .arg("--agent")
            .arg(format!("unix:{}", node.socket.display()))
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
                "original",
                "--admin",
                ADMIN,
            ])
            .env("L7_PROXY_LOG", "info")
            .env("NO_COLOR", "1");
        let log = format!("proxy{}-{}", index + 1, node.starts);
        node.proxy = Some(spawn_logged(command, self.dir.path(), &log));
    }

    /// Kills node `index`'s agent with SIGKILL: nothing of its own cleans up.
    pub fn kill_agent(&mut self, index: usize) {
        if let Some(mut agent) = self.nodes[index].agent.take() {
            let _ = agent.0.kill();
            let _ = agent.0.wait();
        }
    }

    pub fn stop_proxy(&mut self, index: usize) {
        self.nodes[index].proxy = None;
    }

    /// Waits until node `index` has programmed every one of its pods' devices and its
    /// proxy has a policy.
    pub fn wait_ready(&mut self, index: usize) {
        let what = format!("node{} to program its datapath", index + 1);
        self.wait_until(&what, |c| {
            c.check_alive(index);
            let node = &c.nodes[index];
            node.node.pods().iter().all(|pod| {
                let filters = node.node.ns.output(
                    "tc",
                    &["filter", "show", "dev", &pod.host_device, "ingress"],
                );
                String::from_utf8_lossy(&filters.stdout).contains("from_pod")
            }) && c.agent_log(index).contains("datapath programmed")
        });
        if self.nodes[index].proxy.is_some() {
            let what = format!("node{}'s proxy to be ready", index + 1);
            self.wait_until(&what, |c| {
                c.check_alive(index);
                c.admin(index, "/ready").0 == 200
            });
        }
    }

    pub fn agent_log(&self, index: usize) -> String {
        let node = &self.nodes[index];
        let path = self
            .dir
            .path()
            .join(format!("agent{}-{}.log", index + 1, node.starts));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    pub fn check_alive(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        for (name, process) in [
            ("agent", &mut node.agent),
            ("proxy", &mut node.proxy),
            ("dns-proxy", &mut node.dns_proxy),
        ] {
            if let Some(process) = process
                && let Ok(Some(status)) = process.0.try_wait()
            {
                panic!("node{}'s {name} exited early: {status}", index + 1);
            }
        }
    }

    pub fn wait_until(&mut self, what: &str, mut done: impl FnMut(&mut Self) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Retries `probe` until it returns `expected` (policy changes take effect within about
    /// a second); panics with the last value otherwise.
    pub fn eventually<T: PartialEq + std::fmt::Debug>(
        &mut self,
        what: &str,
        expected: T,
        mut probe: impl FnMut(&mut Self) -> T,
    ) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = probe(self);
            if got == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: expected {expected:?}, still {got:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn admin(&self, index: usize, path: &str) -> (u16, String) {
        let output = self.nodes[index].node.ns.output(
            "curl",
            &[
                "-sS",
                "--max-time",
                "5",
                "-w",
                "\n%{http_code}",
                &format!("http://{ADMIN}{path}"),
            ],
        );
        split_status(&output)
    }

    pub fn pod(&self, name: &str) -> &Pod {
        for node in &self.nodes {
            if let Some(i) = node.pod_names.iter().position(|n| *n == name) {
                return &node.node.pods()[i];
            }
        }
        panic!("no pod {name} in this test")
    }

    /// Starts the recording HTTP/1.1 server on `port` of `pod`; returns the file it records
    /// requests in (one JSON line each, with the peer address).
    pub fn serve_http(&mut self, pod: &str, port: u16) -> PathBuf {
        let command = self.pod(pod).ns.command("python3");
        self.serve_http_with(command, pod, port)
    }

    /// `serve_http` on a host outside the cluster (see `add_host`), on every address it
    /// has.
    pub fn serve_http_on_host(&mut self, host: &str, port: u16) -> PathBuf {
        let command = self.host(host).ns.command("python3");
        self.serve_http_with(command, host, port)
    }

    fn serve_http_with(&mut self, mut command: Command, name: &str, port: u16) -> PathBuf {
        let index = self.servers.len();
        let log = self
            .dir
            .path()
            .join(format!("requests-{name}-{port}.jsonl"));
        let ready = self.dir.path().join(format!("ready-{index}"));
        command
            .args(["-u", "-c", HTTP1_UPSTREAM, &port.to_string()])
            .arg(&log)
            .arg(&ready);
        let process = spawn_logged(command, self.dir.path(), &format!("server-{index}"));
        self.servers.push(process);
        self.wait_until(&format!("the server in {name}:{port}"), |_| ready.exists());
        log
    }

    /// Every request a recording server received.
    pub fn received(log: &Path) -> Vec<Value> {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("server log line is JSON"))
            .collect()
    }

    /// One request from pod `from` with curl: (status, body); status 0 = no HTTP answer
    /// (dropped: curl times out after `connect_timeout` seconds, or refused).
    pub fn request(&self, from: &str, url: &str, args: &[&str]) -> (u16, String) {
        let mut full = vec!["-sS", "--connect-timeout", "2", "--max-time", "8"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["-w", "\n%{http_code}", url]);
        split_status(&self.pod(from).ns.output("curl", &full))
    }

    /// `request` to `http://IP-OF-to:port/path`.
    pub fn get(&self, from: &str, to: &str, port: u16, path: &str) -> (u16, String) {
        let url = format!("http://{}:{port}{path}", self.pod(to).ip);
        self.request(from, &url, &[])
    }

    pub fn status(&self, from: &str, to: &str, port: u16, path: &str) -> u16 {
        self.get(from, to, port, path).0
    }

    /// Starts (or restarts) node `index`'s DNS proxy (transparent, port
    /// [`DNS_PROXY_PORT`], upstream from the client's address with the proxy mark) and waits
    /// until it has a policy.
    pub fn start_dns_proxy(&mut self, index: usize, extra: &[&str]) {
        let node = &mut self.nodes[index];
        let mut command = node.node.ns.command(binary("dns-proxy", "dns-proxy"));
        command
            .arg("--agent")
            .arg(format!("unix:{}", node.socket.display()))
            .args([
                "--mode",
                "transparent",
                "--listen-port",
                &DNS_PROXY_PORT.to_string(),
                "--mark",
                "0x300",
                "--admin",
                DNS_ADMIN,
            ])
            .args(extra)
            .env("DNS_PROXY_LOG", "info")
            .env("NO_COLOR", "1");
        let log = format!("dns-proxy{}-{}", index + 1, node.starts);
        node.dns_proxy = Some(spawn_logged(command, self.dir.path(), &log));
        let what = format!("node{}'s DNS proxy to be ready", index + 1);
        self.wait_until(&what, |c| {
            c.check_alive(index);
            c.dns_admin(index, "/ready").0 == 200
        });
    }

    /// GET `path` of node `index`'s DNS proxy admin address: (status, body).
    pub fn dns_admin(&self, index: usize, path: &str) -> (u16, String) {
        let output = self.nodes[index].node.ns.output(
            "curl",
            &[
                "-sS",
                "--max-time",
                "5",
                "-w",
                "\n%{http_code}",
                &format!("http://{DNS_ADMIN}{path}"),
            ],
        );
        split_status(&output)
    }

    /// Adds a host outside the cluster on node `index` (see `Node::add_host`).
    pub fn add_host(&mut self, index: usize, name: &'static str, ip: Ipv4Addr) -> &Pod {
        let node = &mut self.nodes[index];
        node.node.add_host(name, ip);
        let at = node.node.hosts().len() - 1;
        self.hosts.push((name, index, at));
        &self.nodes[index].node.hosts()[at]
    }

    /// A host added by `add_host`.
    pub fn host(&self, name: &str) -> &Pod {
        let (_, node, at) = self
            .hosts
            .iter()
            .find(|(n, _, _)| *n == name)
            .unwrap_or_else(|| panic!("no host {name} in this test"));
        &self.nodes[*node].node.hosts()[*at]
    }

    /// Runs dnsmasq in pod `pod` as an authoritative-only server on port 53 of its address,
    /// with `records` (dnsmasq options such as `--host-record=NAME,IP,TTL`), and waits until
    /// it answers.
    pub fn serve_dns(&mut self, pod: &str, records: &[String]) {
        let ip = self.pod(pod).ip.to_string();
        let mut command = self.pod(pod).ns.command("dnsmasq");
        command
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--pid-file=",
                "--user=root",
                "--bind-interfaces",
                "--log-facility=-",
            ])
            .arg(format!("--listen-address={ip}"))
            .args(records);
        let index = self.servers.len();
        let process = spawn_logged(command, self.dir.path(), &format!("dnsmasq-{index}"));
        self.servers.push(process);
        self.wait_until(&format!("dnsmasq in {pod}"), |c| {
            let out = c.pod(pod).ns.output(
                "dig",
                &[
                    "+short",
                    "+time=1",
                    "+tries=1",
                    &format!("@{ip}"),
                    "version.bind",
                    "CH",
                    "TXT",
                ],
            );
            out.status.success() && !out.stdout.is_empty()
        });
    }

    /// Makes pod `pod`'s system resolver (glibc: curl, getent) ask `server`:
    /// `ip netns exec` mounts /etc/netns/NS/resolv.conf over /etc/resolv.conf.
    pub fn set_resolver(&mut self, pod: &str, server: Ipv4Addr) {
        let dir = Path::new("/etc/netns").join(self.pod(pod).ns.name());
        std::fs::create_dir_all(&dir).expect("create /etc/netns/NS");
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {server}\noptions timeout:2 attempts:1\n"),
        )
        .expect("write resolv.conf");
        self.resolver_dirs.push(dir);
    }

    /// `dig ARGS` in pod `from`, with short timeouts: (exit success, stdout).
    pub fn dig(&self, from: &str, args: &[&str]) -> (bool, String) {
        let mut full = vec!["+time=2", "+tries=1"];
        full.extend_from_slice(args);
        let out = self.pod(from).ns.output("dig", &full);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Runs a `node-agent` client command (observe, monitor) against node `index`.
    pub fn agent_cli(&self, index: usize, args: &[&str]) -> Output {
        Command::new(binary("node-agent", "node-agent"))
            .args(args)
            .arg("--xds-socket")
            .arg(&self.nodes[index].socket)
            .stdin(Stdio::null())
            .output()
            .expect("run node-agent")
    }
}

/// Joins node1's `up1` and node2's `up2` (192.168.77.1/30 and .2/30) and routes each
/// node's pod addresses to the other through it; the link is each node's `--uplink`.
fn link_nodes(nodes: &mut [DpNode], pods: &[PodSpec]) {
    let (first, second) = nodes.split_at_mut(1);
    let (a, b) = (&mut first[0], &mut second[0]);
    a.node.ns.ip(&[
        "link",
        "add",
        "up1",
        "type",
        "veth",
        "peer",
        "name",
        "up2",
        "netns",
        b.node.ns.name(),
    ]);
    a.node
        .ns
        .ip(&["addr", "add", "192.168.77.1/30", "dev", "up1"]);
    b.node
        .ns
        .ip(&["addr", "add", "192.168.77.2/30", "dev", "up2"]);
    a.node.ns.ip(&["link", "set", "up1", "up"]);
    b.node.ns.ip(&["link", "set", "up2", "up"]);
    for pod in pods {
        let (ns, via): (&Netns, &str) = if pod.node == 0 {
            (&b.node.ns, "192.168.77.1")
        } else {
            (&a.node.ns, "192.168.77.2")
        };
        ns.ip(&["route", "add", &format!("{}/32", pod.ip), "via", via]);
    }
    a.uplink = Some("up1".into());
    b.uplink = Some("up2".into());
}

fn split_status(output: &Output) -> (u16, String) {
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

impl Drop for DpCluster {
    // Logs go to files; show them when the test failed.
    fn drop(&mut self) {
        for dir in &self.resolver_dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
        if !std::thread::panicking() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        let mut logs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for path in logs {
            if let Ok(text) = std::fs::read_to_string(&path) {
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("---- {} (last lines) ----", path.display());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}
