//! The test hosts: a node namespace (where the system under test runs), a client pod and a
//! backend pod wired to it by `integration::netns`, and the backend server.
//!
//! Ports: the backend listens on [`REDIRECTED_PORT`], which the node redirects to our
//! proxy's transparent listener (TPROXY), and on [`DIRECT_PORT`], which is only routed:
//! the direct runs and the peers' upstreams use it, so only our runs pay the redirect.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use integration::netns::{Netns, Node, POD_GATEWAY};

use crate::common::{Proc, start_nginx};

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 10);
pub const BACKEND_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 20);
pub const REDIRECTED_PORT: u16 = 8080;
pub const DIRECT_PORT: u16 = 8081;
/// Our proxy's transparent listener in the node namespace.
pub const PROXY_PORT: u16 = 15001;
/// The peers listen on the node's pod-gateway address, which every pod can reach.
pub const NGINX_PORT: u16 = 9080;
pub const HAPROXY_PORT: u16 = 9081;

/// CPU for the system under test, and for everything else (BENCHMARKS 2).
pub const SUT_CPU: &str = "0";
pub const LOAD_CPU: &str = "1";

/// The 1 KB body: the size Istio's published figures use.
pub const KB_BODY_LEN: usize = 1024;

/// The namespaces, the backend and a scratch folder; all removed on drop (processes
/// first: `Proc` fields drop before the namespaces they run in, in declaration order).
#[derive(Debug)]
pub struct Topology {
    backend: Proc,
    pub node: Node,
    pub dir: tempfile::TempDir,
    /// This binary, for the probe/hold helpers run inside namespaces.
    pub self_exe: PathBuf,
}

pub fn gateway(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(POD_GATEWAY, port))
}

pub fn backend(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(BACKEND_IP, port))
}

impl Topology {
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("http-bench-")
            .tempdir()
            .context("creating a scratch folder")?;
        let mut node = Node::new("bnode");
        node.add_pod("bcli", CLIENT_IP);
        node.add_pod("bsrv", BACKEND_IP);
        node.tproxy(REDIRECTED_PORT, PROXY_PORT);
        let self_exe = std::env::current_exe().context("locating http-bench")?;
        let backend = start_backend(&node.pods()[1].ns, dir.path())?;
        let topology = Self {
            backend,
            node,
            dir,
            self_exe,
        };
        topology.wait_status("the backend", topology.client(), backend_addr(), "/", 200)?;
        Ok(topology)
    }

    pub fn client(&self) -> &Netns {
        &self.node.pods()[0].ns
    }

    pub fn backend_pid(&self) -> u32 {
        self.backend.id()
    }

    /// `http-bench probe ADDR PATH` inside `ns`: the status, 0 for no answer.
    pub fn probe(&self, ns: &Netns, addr: SocketAddr, path: &str) -> Result<u16> {
        let output = ns
            .command(&self.self_exe)
            .args(["probe", &addr.to_string(), path])
            .stderr(Stdio::null())
            .output()
            .context("running the probe")?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or(0))
    }

    /// Polls until `path` at `addr` answers `status` from `ns`, for up to 2 minutes (10k
    /// rules can take a while to compile).
    pub fn wait_status(
        &self,
        what: &str,
        ns: &Netns,
        addr: SocketAddr,
        path: &str,
        status: u16,
    ) -> Result<Duration> {
        let started = Instant::now();
        let mut last = 0;
        while started.elapsed() < Duration::from_secs(120) {
            last = self.probe(ns, addr, path)?;
            if last == status {
                return Ok(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{what}: {addr}{path} answered {last}, expected {status}, for 2 minutes")
    }
}

fn backend_addr() -> SocketAddr {
    backend(DIRECT_PORT)
}

/// The backend: nginx, one process (`master_process off`: it is not under test and dies
/// with one signal), fixed bodies, no access log, unlimited keep-alive.
fn start_backend(ns: &Netns, dir: &Path) -> Result<Proc> {
    let d = dir.join("backend");
    std::fs::create_dir_all(&d)?;
    let kb = "x".repeat(KB_BODY_LEN);
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nuser root;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nevents {{ worker_connections 20000; }}\n\
         http {{\n  access_log off;\n  default_type text/plain;\n  keepalive_requests 1000000000;\n\
         keepalive_timeout 600s;\n{temps}\n  server {{\n    listen {ip}:{r} backlog=4096;\n    listen {ip}:{dp} backlog=4096;\n\
         location / {{ return 200 \"\"; }}\n    location ~ ^/api/v1/svc[0-9]+/kb/ {{ return 200 \"{kb}\"; }}\n  }}\n}}\n",
        d = d.display(),
        temps = nginx_temp_paths(&d),
        ip = BACKEND_IP,
        r = REDIRECTED_PORT,
        dp = DIRECT_PORT,
    );
    start_nginx(ns, LOAD_CPU, &d, "stderr.log", conf, "backend nginx")
}

/// nginx needs writable temp folders; defaults point to system paths.
pub fn nginx_temp_paths(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "  client_body_temp_path {d}/client_body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n"
    )
}
