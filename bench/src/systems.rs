//! The systems under test, each started in the node namespace on the SUT CPU with the
//! same rule set: ours (node-agent + l7-proxy behind TPROXY), nginx and haproxy as reverse
//! proxies. "Direct" is the client talking to the backend with nothing in between.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::common::{self, Binaries, Proc, log_tails, pinned_in};
use crate::procfs;
use crate::rules::RuleSet;
use crate::topology::{
    self, BACKEND_IP, CLIENT_IP, DIRECT_PORT, HAPROXY_PORT, NGINX_PORT, PROXY_PORT,
    REDIRECTED_PORT, SUT_CPU, Topology,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum System {
    Direct,
    Ours,
    Nginx,
    Haproxy,
}

impl System {
    pub const PEERS: [System; 2] = [System::Nginx, System::Haproxy];

    pub fn name(self) -> &'static str {
        match self {
            System::Direct => "direct",
            System::Ours => "ours",
            System::Nginx => "nginx",
            System::Haproxy => "haproxy",
        }
    }

    /// Where the client sends its requests.
    pub fn target(self) -> SocketAddr {
        match self {
            System::Direct => topology::backend(DIRECT_PORT),
            // The backend's own address: the node redirects it to the proxy.
            System::Ours => topology::backend(REDIRECTED_PORT),
            System::Nginx => topology::gateway(NGINX_PORT),
            System::Haproxy => topology::gateway(HAPROXY_PORT),
        }
    }
}

/// One started system. `sut_pids` are the processes whose CPU and memory count; the agent
/// is kept apart (it is ours, but not on the request path except for flow records).
#[derive(Debug)]
pub struct Running {
    pub system: System,
    pub sut_pids: Vec<u32>,
    pub agent_pid: Option<u32>,
    /// From start to the first correct answer: includes compiling the rules.
    pub ready_after: Duration,
    _procs: Vec<Proc>,
}

/// Starts `system` with `rules` and waits until the path only the last rule allows
/// answers 200: then the whole rule set is in force (ours denies everything until its
/// first policy arrives, so a 403 would say nothing).
pub fn start(topo: &Topology, system: System, rules: &RuleSet, bins: &Binaries) -> Result<Running> {
    let dir = topo.dir.path().join(format!(
        "{}-{}-{}",
        system.name(),
        rules.mix.name(),
        rules.len()
    ));
    std::fs::create_dir_all(&dir)?;
    let started = Instant::now();
    let (mut procs, agent_pid) = match system {
        System::Direct => (Vec::new(), None),
        System::Ours => start_ours(topo, &dir, rules, bins)?,
        System::Nginx => (vec![start_nginx(topo, &dir, rules)?], None),
        System::Haproxy => (vec![start_haproxy(topo, &dir, rules)?], None),
    };
    let what = format!("{} with {} rules", system.name(), rules.len());
    if system == System::Ours {
        // Until the proxy listens, the TPROXY rule finds no socket and lets the
        // connection through to the backend: a 200 then proves nothing. Wait for the
        // proxy's own readiness (policy and identities received) first.
        let admin: SocketAddr = ([127, 0, 0, 1], 9901).into();
        topo.wait_status("l7-proxy /ready", &topo.node.ns, admin, "/ready", 200)
            .with_context(|| log_tails(&dir))?;
    }
    let ready_after = topo.wait_status(
        &what,
        topo.client(),
        system.target(),
        &rules.allowed_path(),
        200,
    );
    for proc in &mut procs {
        proc.check_running().with_context(|| log_tails(&dir))?;
    }
    let ready_after = ready_after.with_context(|| log_tails(&dir))?;
    let ready_after = ready_after.max(started.elapsed());
    let sut_pids = match system {
        System::Direct => Vec::new(),
        // The proxy: the last process started for ours.
        System::Ours => procs.last().map(|p| vec![p.id()]).unwrap_or_default(),
        // nginx: master and worker; haproxy: one process.
        _ => procs
            .iter()
            .flat_map(|p| std::iter::once(p.id()).chain(procfs::children(p.id())))
            .collect(),
    };
    Ok(Running {
        system,
        sut_pids,
        agent_pid,
        ready_after,
        _procs: procs,
    })
}

/// The agent on a folder of manifests (both pods and a CNP on the backend whose ingress
/// from the client on the redirected port has `rules`), then the proxy in transparent mode.
fn start_ours(
    topo: &Topology,
    dir: &Path,
    rules: &RuleSet,
    bins: &Binaries,
) -> Result<(Vec<Proc>, Option<u32>)> {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let pods = format!(
        "apiVersion: v1\nkind: List\nitems:\n\
         - {{apiVersion: v1, kind: Pod, metadata: {{name: client, namespace: default, labels: {{app: client}}}},\n   spec: {{nodeName: node1, containers: [{{name: c, image: i}}]}}, status: {{podIP: {CLIENT_IP}}}}}\n\
         - {{apiVersion: v1, kind: Pod, metadata: {{name: backend, namespace: default, labels: {{app: backend}}}},\n   spec: {{nodeName: node1, containers: [{{name: c, image: i}}]}}, status: {{podIP: {BACKEND_IP}}}}}\n"
    );
    std::fs::write(manifests.join("pods.yaml"), pods)?;
    let policy = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: bench, namespace: default}}\nspec:\n  endpointSelector: {{matchLabels: {{app: backend}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n    toPorts:\n    - ports: [{{port: \"{REDIRECTED_PORT}\", protocol: TCP}}]\n      rules:\n        http:\n{}",
        rules.cnp_http_rules("        ")
    );
    std::fs::write(manifests.join("policy.yaml"), policy)?;
    let socket = dir.join("agent.sock");
    let node_ns = &topo.node.ns;

    let mut agent = pinned_in(node_ns, SUT_CPU, &bins.agent, &dir.join("agent.log"))?;
    agent
        .args(["run", "--no-datapath", "--node-name", "node1", "--source"])
        .arg(format!("dir:{}", manifests.display()))
        .arg("--xds-socket")
        .arg(&socket)
        .arg("--fqdn-state")
        .arg(dir.join("fqdn-cache.json"))
        .env("NODE_AGENT_LOG", "warn");
    let agent = Proc::spawn(agent, "node-agent")?;
    let agent_pid = agent.id();

    let mut proxy = pinned_in(node_ns, SUT_CPU, &bins.proxy, &dir.join("proxy.log"))?;
    proxy
        .arg("--agent")
        .arg(format!("unix:{}", socket.display()))
        .args([
            "--ingress",
            &format!("0.0.0.0:{PROXY_PORT}"),
            "--admin",
            "127.0.0.1:9901",
        ])
        .env("L7_PROXY_LOG", "warn");
    let proxy = Proc::spawn(proxy, "l7-proxy")?;
    Ok((vec![agent, proxy], Some(agent_pid)))
}

const DENY_BODY: &str = "Access denied\\r\\n";

/// nginx: master and one worker, rules in a `map`, upstream keep-alive to the backend.
fn start_nginx(topo: &Topology, dir: &Path, rules: &RuleSet) -> Result<Proc> {
    let d = dir.display();
    std::fs::write(dir.join("rules.map"), rules.nginx_map())?;
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\npcre_jit on;\nworker_rlimit_nofile 20000;\n\
         events {{ worker_connections 10000; }}\n\
         http {{\n  access_log off;\n  default_type text/plain;\n  keepalive_requests 1000000000;\n  keepalive_timeout 600s;\n{temps}\
         \n  map_hash_max_size 262144;\n  map_hash_bucket_size 256;\n\
         map \"$request_method:$request_uri\" $allowed {{\n    default 0;\n    include {d}/rules.map;\n  }}\n\
         upstream backend {{\n    server {BACKEND_IP}:{DIRECT_PORT};\n    keepalive 64;\n    keepalive_requests 1000000000;\n    keepalive_timeout 600s;\n  }}\n\
         server {{\n    listen {gw};\n    location / {{\n      if ($allowed = 0) {{ return 403 \"{DENY_BODY}\"; }}\n\
         proxy_pass http://backend;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
        temps = topology::nginx_temp_paths(dir),
        gw = topology::gateway(NGINX_PORT),
    );
    common::start_nginx(&topo.node.ns, SUT_CPU, dir, "nginx.log", conf, "nginx")
}

/// haproxy: one thread, rules as ACL pattern files on a `METHOD:PATH` variable, deny
/// with the same status and body as ours, `http-reuse always` to the backend.
fn start_haproxy(topo: &Topology, dir: &Path, rules: &RuleSet) -> Result<Proc> {
    let (exact, prefix, regex) = rules.haproxy_lists();
    let d = dir.display();
    let mut acls = String::new();
    let mut names = Vec::new();
    for (name, method, list, file) in [
        ("ok_exact", "str", exact, "exact.lst"),
        ("ok_prefix", "beg", prefix, "prefix.lst"),
        ("ok_regex", "reg", regex, "regex.lst"),
    ] {
        // An ACL on an empty file would never match; leaving it out is the faster config.
        if list.is_empty() {
            continue;
        }
        std::fs::write(dir.join(file), list)?;
        acls.push_str(&format!(
            "  acl {name} var(txn.key) -m {method} -f {d}/{file}\n"
        ));
        names.push(name);
    }
    let condition = names.join(" || ");
    let conf = format!(
        "global\n  nbthread 1\n  maxconn 8000\n  pidfile {d}/haproxy.pid\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 600s\n  timeout server 600s\n  timeout http-keep-alive 600s\n\
         frontend fe\n  bind {gw}\n  http-request set-var(txn.path) path\n  http-request set-var(txn.key) method,concat(:,txn.path)\n\
         {acls}  http-request deny deny_status 403 content-type text/plain string \"{DENY_BODY}\" unless {condition}\n  default_backend be\n\
         backend be\n  http-reuse always\n  server s1 {BACKEND_IP}:{DIRECT_PORT}\n",
        gw = topology::gateway(HAPROXY_PORT),
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf)?;
    let mut command = pinned_in(
        &topo.node.ns,
        SUT_CPU,
        Path::new("haproxy"),
        &dir.join("haproxy.log"),
    )?;
    // -db: foreground, no master process; the pid is haproxy's own.
    command.args(["-db", "-f"]).arg(&path);
    Proc::spawn(command, "haproxy")
}
