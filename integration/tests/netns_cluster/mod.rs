//! The harness of the transparent-mode tests: a node namespace with pods, `node-agent run`
//! and `l7-proxy` inside it, real upstream servers and clients in the pods.
#![allow(dead_code)] // not every test file uses every helper

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use integration::binary;
use integration::netns::{Node, Pod, Process};
use serde_json::Value;

/// The proxy's transparent listener and admin port inside the node namespace. Each test has
/// its own node namespace, so fixed ports never clash.
pub const PROXY_PORT: u16 = 15001;
pub const ADMIN: &str = "127.0.0.1:9901";
/// Generous: a loaded 2-core machine runs every test of this file at once.
pub const PATIENCE: Duration = Duration::from_secs(60);
pub const DENIED_BODY: &str = "Access denied\r\n";

/// Records each request as one JSON line (in a log file and as the response body), so a
/// test can check exactly which requests got past the proxy and what they looked like.
/// HTTP/1.1 with keep-alive; any method, including lowercase ones.
pub const HTTP1_UPSTREAM: &str = r#"
import http.server, json, sys, threading
port, log_path, ready_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
lock = threading.Lock()

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def record(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        line = json.dumps({
            "method": self.command,
            "path": self.path,
            "host": self.headers.get("Host"),
            "x-token": self.headers.get("X-Token"),
            "version": self.request_version,
            "peer": "%s:%d" % self.client_address,
        })
        with lock:
            with open(log_path, "a") as log:
                log.write(line + "\n")
        body = (line + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def __getattr__(self, name):
        if name.startswith("do_"):
            return self.record
        raise AttributeError(name)

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)
server.daemon_threads = True
open(ready_path, "w").close()
server.serve_forever()
"#;

/// The same record as [`HTTP1_UPSTREAM`], over HTTP/2 with prior knowledge (h2c).
pub const HTTP2_UPSTREAM: &str = r#"
const http2 = require("http2");
const fs = require("fs");
const [port, logPath, readyPath] = process.argv.slice(1);
const server = http2.createServer();
server.on("stream", (stream, headers) => {
  stream.resume();
  const socket = stream.session.socket;
  const line = JSON.stringify({
    method: headers[":method"],
    path: headers[":path"],
    host: headers[":authority"] || headers["host"] || null,
    "x-token": headers["x-token"] || null,
    version: "HTTP/2",
    peer: socket.remoteAddress + ":" + socket.remotePort,
  });
  fs.appendFileSync(logPath, line + "\n");
  stream.respond({ ":status": 200, "content-type": "application/json" });
  stream.end(line + "\n");
});
server.listen(Number(port), "0.0.0.0", () => fs.writeFileSync(readyPath, ""));
"#;

/// Several requests as streams of one HTTP/2 prior-knowledge connection, one after the
/// other: `URL PATH...`, each answer a JSON line `{status, body, port}` (`port`: the
/// connection's local port, the same for all when the connection survived).
pub const HTTP2_CLIENT: &str = r#"
const http2 = require("http2");
const [url, ...paths] = process.argv.slice(1);
const session = http2.connect(url);
session.setTimeout(30000, () => { console.log(JSON.stringify({ error: "timeout" })); process.exit(1); });
(async () => {
  for (const path of paths) {
    const answer = await new Promise((resolve, reject) => {
      const req = session.request({ ":path": path, "x-token": "1" });
      let status = 0;
      let body = "";
      req.setEncoding("utf8");
      req.on("response", (headers) => { status = headers[":status"]; });
      req.on("data", (chunk) => { body += chunk; });
      req.on("end", () => resolve({ status, body }));
      req.on("error", reject);
    });
    console.log(JSON.stringify({ ...answer, port: session.socket.localPort }));
  }
  session.close();
})().catch((e) => { console.log(JSON.stringify({ error: String(e) })); process.exit(1); });
"#;

/// A client on one keep-alive connection, driven line by line from the test: each input
/// line `METHOD PATH` sends one request, each output line is `STATUS LOCALPORT BODY` (body
/// JSON-quoted). `auto_open = 0` makes a closed connection an error instead of a silent
/// reconnect, so an unchanged local port proves the connection survived.
pub const KEEPALIVE_CLIENT: &str = r#"
import http.client, json, sys
conn = http.client.HTTPConnection(sys.argv[1], 80, timeout=30)
conn.connect()
conn.auto_open = 0
for line in sys.stdin:
    method, path = line.split()
    try:
        conn.request(method, path)
        response = conn.getresponse()
        body = response.read().decode()
        print(response.status, conn.sock.getsockname()[1], json.dumps(body), flush=True)
    except Exception as e:
        print("ERROR", 0, json.dumps(repr(e)), flush=True)
"#;

/// One pod of a test: its namespace address, and the labels of its Pod manifest (none: the
/// pod exists on the network but not in the cluster, so it has the `world` identity).
#[derive(Debug, Clone, Copy)]
pub struct PodSpec {
    pub name: &'static str,
    pub ip: Ipv4Addr,
    pub labels: Option<&'static str>,
}

pub const fn pod(name: &'static str, ip: [u8; 4], labels: &'static str) -> PodSpec {
    PodSpec {
        name,
        ip: Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]),
        labels: Some(labels),
    }
}

/// A recording upstream server process and the file it records requests in.
#[derive(Debug)]
pub struct Upstream {
    pub process: Process,
    pub log: PathBuf,
}

/// A node with its pods, the agent and the proxy, and the folder of manifests. Field order
/// is drop order: processes die before the namespaces they run in are deleted, and the
/// folder (which holds their logs) goes last.
#[derive(Debug)]
pub struct Cluster {
    pub proxy: Process,
    pub agent: Process,
    pub upstreams: Vec<Upstream>,
    pub node: Node,
    pub names: Vec<&'static str>,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Wires `pods` to a fresh node, writes their manifests and `policy` (a CNP), starts the
    /// agent and the transparent proxy (with `proxy_args` added) and waits until the proxy
    /// has its first policy.
    pub fn start(tag: &str, pods: &[PodSpec], policy: &str, proxy_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let manifests = dir.path().join("manifests");
        std::fs::create_dir(&manifests).expect("create the manifests folder");
        std::fs::write(manifests.join("pods.yaml"), pods_yaml(pods)).expect("write pods.yaml");
        let mut node = Node::new(tag);
        for spec in pods {
            node.add_pod(spec.name, spec.ip);
        }
        node.tproxy(80, PROXY_PORT);
        write_policy(&manifests, policy);
        let socket = dir.path().join("agent.sock");
        let mut agent = node.ns.command(binary("node-agent", "node-agent"));
        agent
            .args(["run", "--no-datapath", "--node-name", "node1", "--source"])
            .arg(format!("dir:{}", manifests.display()))
            .arg("--xds-socket")
            .arg(&socket)
            .arg("--fqdn-state")
            .arg(dir.path().join("fqdn-cache.json"))
            .env("NODE_AGENT_LOG", "info")
            .env("NO_COLOR", "1");
        let agent = spawn_logged(agent, dir.path(), "agent");
        let mut proxy = node.ns.command(binary("l7-proxy", "l7-proxy"));
        proxy
            .arg("--agent")
            .arg(format!("unix:{}", socket.display()))
            .args([
                "--ingress",
                &format!("0.0.0.0:{PROXY_PORT}"),
                "--admin",
                ADMIN,
            ])
            .args(proxy_args)
            .env("L7_PROXY_LOG", "info,l7_proxy=debug")
            .env("NO_COLOR", "1");
        let proxy = spawn_logged(proxy, dir.path(), "proxy");
        let mut cluster = Cluster {
            proxy,
            agent,
            upstreams: Vec::new(),
            node,
            names: pods.iter().map(|p| p.name).collect(),
            dir,
        };
        cluster.wait_until("the proxy to be ready", |c| {
            c.check_alive();
            c.admin("/ready").0 == 200
        });
        cluster
    }

    pub fn pod(&self, name: &str) -> &Pod {
        let index = self
            .names
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("no pod {name} in this test"));
        &self.node.pods()[index]
    }

    pub fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    pub fn write_policy(&self, policy: &str) {
        write_policy(&self.manifests(), policy);
    }

    /// Fails fast, with the logs, when the agent or the proxy died instead of waiting for a
    /// readiness that will never come.
    pub fn check_alive(&mut self) {
        for (name, process) in [("agent", &mut self.agent), ("proxy", &mut self.proxy)] {
            if let Ok(Some(status)) = process.0.try_wait() {
                panic!("{name} exited early: {status}");
            }
        }
    }

    /// GET on the proxy's admin listener, from inside the node: (status, body).
    pub fn admin(&self, path: &str) -> (u16, String) {
        let output = self.node.ns.output(
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
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        (status.trim().parse().unwrap_or(0), body.to_owned())
    }

    pub fn wait_until(&mut self, what: &str, mut done: impl FnMut(&mut Self) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the HTTP/1.1 recording upstream on port 80 of `pod`; returns its index.
    pub fn serve_http1(&mut self, pod: &str) -> usize {
        let mut command = self.pod(pod).ns.command("python3");
        command.args(["-u", "-c", HTTP1_UPSTREAM, "80"]);
        self.start_upstream(pod, command)
    }

    /// Starts the HTTP/2 (h2c) recording upstream on port 80 of `pod`; returns its index.
    pub fn serve_http2(&mut self, pod: &str) -> usize {
        let mut command = self.pod(pod).ns.command("node");
        command.args(["-e", HTTP2_UPSTREAM, "80"]);
        self.start_upstream(pod, command)
    }

    pub fn start_upstream(&mut self, pod: &str, mut command: Command) -> usize {
        let index = self.upstreams.len();
        let log = self.dir.path().join(format!("requests-{index}.jsonl"));
        let ready = self.dir.path().join(format!("ready-{index}"));
        command.arg(&log).arg(&ready);
        let process = spawn_logged(command, self.dir.path(), &format!("upstream-{index}"));
        self.upstreams.push(Upstream { process, log });
        self.wait_until(&format!("the upstream in {pod} to listen"), |c| {
            if let Ok(Some(status)) = c.upstreams[index].process.0.try_wait() {
                panic!("the upstream in {pod} exited early: {status}");
            }
            ready.exists()
        });
        index
    }

    /// Every request upstream `index` received, in order.
    pub fn received(&self, index: usize) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.upstreams[index].log).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("upstream log line is JSON"))
            .collect()
    }

    /// `METHOD PATH` of every request upstream `index` received.
    pub fn received_lines(&self, index: usize) -> Vec<String> {
        self.received(index)
            .iter()
            .map(|r| {
                format!(
                    "{} {}",
                    r["method"].as_str().unwrap_or("?"),
                    r["path"].as_str().unwrap_or("?")
                )
            })
            .collect()
    }

    /// Runs curl inside pod `from` with generous timeouts.
    pub fn curl(&self, from: &str, args: &[&str]) -> Output {
        let mut full = vec!["-sS", "--connect-timeout", "10", "--max-time", "30"];
        full.extend_from_slice(args);
        self.pod(from).ns.output("curl", &full)
    }

    /// One request with curl from pod `from`: (status, body). `url_path` is appended to
    /// `http://TO_IP`; `args` go before the URL. Status 0 means no HTTP answer.
    pub fn request(&self, from: &str, to: &str, url_path: &str, args: &[&str]) -> (u16, String) {
        let url = format!("http://{}{url_path}", self.pod(to).ip);
        let mut full = args.to_vec();
        full.extend_from_slice(&["-w", "\n%{http_code}", &url]);
        let output = self.curl(from, &full);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        (status.trim().parse().unwrap_or(0), body.to_owned())
    }

    pub fn metrics(&self) -> String {
        let (status, body) = self.admin("/metrics");
        assert_eq!(status, 200, "metrics: {body}");
        body
    }
}

impl Drop for Cluster {
    // The processes' output goes to files (it would otherwise interleave with every other
    // test's); show it when the test failed, which is when it is needed.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for name in ["agent", "proxy", "upstream-0", "upstream-1"] {
            let path = self.dir.path().join(format!("{name}.log"));
            if let Ok(text) = std::fs::read_to_string(&path) {
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                eprintln!("---- {name} log (last lines) ----");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Spawns `command` with stdout and stderr in `DIR/NAME.log`.
pub fn spawn_logged(mut command: Command, dir: &Path, name: &str) -> Process {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("create a log file");
    let err = log.try_clone().expect("clone the log file");
    let child = command
        .stdout(log)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    Process(child)
}

/// Replaces the policy file; written outside the watched folder then renamed into it, so
/// the agent never reads half of it.
pub fn write_policy(manifests: &Path, policy: &str) {
    let tmp = manifests.with_file_name("policy.yaml.tmp");
    std::fs::write(&tmp, policy).expect("write the policy");
    std::fs::rename(&tmp, manifests.join("policy.yaml")).expect("rename the policy");
}

pub fn pods_yaml(pods: &[PodSpec]) -> String {
    let mut yaml = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for pod in pods {
        let Some(labels) = pod.labels else { continue };
        yaml.push_str(&format!(
            "- {{apiVersion: v1, kind: Pod, metadata: {{name: {}, namespace: default, labels: {labels}}},\n   spec: {{nodeName: node1, containers: [{{name: c, image: i}}]}}, status: {{podIP: {}}}}}\n",
            pod.name, pod.ip
        ));
    }
    yaml
}

/// A CNP named `web` selecting `app: web` with `ingress` (YAML list items, indented by 2).
pub fn web_policy(ingress: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: web, namespace: default}}\nspec:\n  endpointSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n{ingress}"
    )
}

pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
