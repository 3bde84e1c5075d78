//! Test hosts as Linux network namespaces: a node namespace that routes between pod
//! namespaces joined to it by veth pairs, as a CNI would wire them. Needs root.
//!
//! Every namespace name carries the creating process's id, so parallel test binaries never
//! collide, and namespaces left behind by a killed run are removed by the next one. Dropping
//! a [`Netns`] deletes it, also when a test panics.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

const PREFIX: &str = "sl";
/// The node's side of every pod link: pods route everything to this address, as with
/// Cilium's link-local gateway.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// Runs a command and panics with its output when it fails: set-up failures must stop the
/// test with the reason, not show up later as a confusing timeout.
pub fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    if !output.status.success() {
        panic!(
            "{program} {}: {}\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output
}

/// Panics with a clear message unless running as root: the namespace tests need it.
pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next().map(str::to_owned));
    if uid.as_deref() != Some("0") {
        panic!("this test creates network namespaces and must run as root");
    }
}

/// One named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `sl-TAG-PID-N` with loopback up.
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        require_root();
        remove_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}-{tag}-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// A command that runs `program` inside the namespace. `ip netns exec` execs the
    /// program, so the child's pid is the program's own and killing it works.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name])
            .arg(program)
            .stdin(Stdio::null());
        command
    }

    /// Runs `program ARGS` in the namespace to completion and returns its output, failed
    /// or not.
    pub fn output(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program} in {}: {e}", self.name))
    }

    /// Runs `program ARGS` in the namespace and panics if it fails.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        let output = self.output(program, args);
        if !output.status.success() {
            panic!(
                "{program} {} in {}: {}\n{}",
                args.join(" "),
                self.name,
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        output
    }

    /// Loads an nftables ruleset into the namespace.
    pub fn nft(&self, ruleset: &str) {
        use std::io::Write;
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running nft in {}: {e}", self.name));
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(ruleset.as_bytes())
                .unwrap_or_else(|e| panic!("writing to nft: {e}"));
        }
        let output = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for nft: {e}"));
        if !output.status.success() {
            panic!(
                "nft in {}: {}\n{ruleset}",
                self.name,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Deletes namespaces of ours whose creating process is gone (a run killed before its
/// destructors ran).
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut parts = name.split('-');
        if parts.next() != Some(PREFIX) {
            continue;
        }
        let Some(pid) = name.rsplit('-').nth(1) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A pod: its own namespace with `eth0` holding `ip/32`, default route to the node.
#[derive(Debug)]
pub struct Pod {
    pub ns: Netns,
    pub ip: Ipv4Addr,
    /// The pod link's device in the node namespace.
    pub host_device: String,
}

/// A node namespace and the pods wired to it.
#[derive(Debug)]
pub struct Node {
    pub ns: Netns,
    pods: Vec<Pod>,
    hosts: Vec<Pod>,
}

impl Node {
    /// A node namespace that forwards between its pods.
    pub fn new(tag: &str) -> Self {
        let ns = Netns::new(tag);
        ns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        Self {
            ns,
            pods: Vec::new(),
            hosts: Vec::new(),
        }
    }

    /// Adds a pod with address `ip`. Its host-side device is `lxcN` in the node namespace.
    pub fn add_pod(&mut self, tag: &str, ip: Ipv4Addr) -> &Pod {
        let pod = self.wire(tag, ip, &format!("lxc{}", self.pods.len()));
        self.pods.push(pod);
        let last = self.pods.len() - 1;
        &self.pods[last]
    }

    /// Adds a machine outside the cluster (a web server "on the internet"), wired and routed
    /// like a pod but through `extN`: no pod object names it, so it has no programs and its
    /// address is the world's.
    pub fn add_host(&mut self, tag: &str, ip: Ipv4Addr) -> &Pod {
        let host = self.wire(tag, ip, &format!("ext{}", self.hosts.len()));
        self.hosts.push(host);
        let last = self.hosts.len() - 1;
        &self.hosts[last]
    }

    fn wire(&self, tag: &str, ip: Ipv4Addr, host_device: &str) -> Pod {
        let pod_ns = Netns::new(tag);
        let host_device = host_device.to_owned();
        let ip_text = ip.to_string();
        let gateway = POD_GATEWAY.to_string();
        // Created inside the node namespace with the peer moved straight into the pod's,
        // so parallel tests never race for a device name in the root namespace.
        self.ns.ip(&[
            "link",
            "add",
            &host_device,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod_ns.name(),
        ]);
        self.ns
            .ip(&["addr", "add", &format!("{gateway}/32"), "dev", &host_device]);
        self.ns.ip(&["link", "set", &host_device, "up"]);
        self.ns.ip(&[
            "route",
            "add",
            &format!("{ip_text}/32"),
            "dev",
            &host_device,
        ]);
        pod_ns.ip(&["addr", "add", &format!("{ip_text}/32"), "dev", "eth0"]);
        pod_ns.ip(&["link", "set", "eth0", "up"]);
        pod_ns.ip(&["route", "add", &gateway, "dev", "eth0", "scope", "link"]);
        pod_ns.ip(&["route", "add", "default", "via", &gateway, "dev", "eth0"]);
        Pod {
            ns: pod_ns,
            ip,
            host_device,
        }
    }

    pub fn hosts(&self) -> &[Pod] {
        &self.hosts
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Redirects TCP traffic for `dport` arriving from the pod links (`lxc*`) to a
    /// transparent listener on `to_port` in the node namespace, the way the datapath
    /// redirect will: TPROXY plus a mark routed to the local stack. Packets the proxy
    /// sends itself leave through OUTPUT and are never redirected again.
    pub fn tproxy(&self, dport: u16, to_port: u16) {
        const MARK: &str = "0x200";
        self.ns.nft(&format!(
            "table ip sidecarless_test {{\n  chain prerouting {{\n    type filter hook prerouting priority mangle; policy accept;\n    iifname \"lxc*\" tcp dport {dport} tproxy to :{to_port} meta mark set {MARK} accept\n  }}\n}}\n"
        ));
        // Several rules may share the routing set-up; add it once.
        let rules = self.ns.ip(&["rule", "show"]);
        if !String::from_utf8_lossy(&rules.stdout).contains("lookup 200") {
            self.ns
                .ip(&["rule", "add", "fwmark", MARK, "lookup", "200"]);
            self.ns.ip(&[
                "route",
                "add",
                "local",
                "0.0.0.0/0",
                "dev",
                "lo",
                "table",
                "200",
            ]);
        }
    }
}

/// A child process killed and reaped on drop.
#[derive(Debug)]
pub struct Process(pub Child);

impl Process {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
