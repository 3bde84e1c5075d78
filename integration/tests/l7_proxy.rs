//! The HTTP proxy end to end: `node-agent run` on the Star Wars manifests, the real
//! `l7-proxy` binary connected to it over the policy stream, a real upstream (the
//! deathstar), and clients whose original addresses reach the proxy in a PROXY protocol v2
//! header (the kernel redirect arrives with the datapath issue). Pod IPs are loopback
//! addresses so that the proxy can really forward to the original destination.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use integration::{AgentProcess, binary};

const DEATHSTAR: &str = "127.88.0.10:8000";
const TIEFIGHTER: &str = "127.88.0.11:40000";
const XWING: &str = "127.88.0.12:40000";

fn manifests(dir: &Path, l7_rules: &str) {
    let pods = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: deathstar, namespace: default, labels: {org: empire, class: deathstar}},
   spec: {nodeName: node1, containers: [{name: c, image: i}]}, status: {podIP: 127.88.0.10}}
- {apiVersion: v1, kind: Pod, metadata: {name: tiefighter, namespace: default, labels: {org: empire, class: tiefighter}},
   spec: {nodeName: node1, containers: [{name: c, image: i}]}, status: {podIP: 127.88.0.11}}
- {apiVersion: v1, kind: Pod, metadata: {name: xwing, namespace: default, labels: {org: alliance, class: xwing}},
   spec: {nodeName: node1, containers: [{name: c, image: i}]}, status: {podIP: 127.88.0.12}}
"#;
    std::fs::write(dir.join("pods.yaml"), pods).expect("write pods");
    let policy = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: rule1, namespace: default}}\nspec:\n  endpointSelector: {{matchLabels: {{org: empire, class: deathstar}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{org: empire}}}}]\n    toPorts:\n    - ports: [{{port: \"8000\", protocol: TCP}}]\n      rules:\n        http:\n{l7_rules}"
    );
    // Write then rename, so the watch never reads a half-written policy.
    let tmp = dir.join(".rule1.tmp");
    std::fs::write(&tmp, policy).expect("write policy");
    std::fs::rename(&tmp, dir.join("rule1.yaml")).expect("rename policy");
}

const LANDING_ONLY: &str = "        - {method: POST, path: /v1/request-landing}\n";
const LANDING_AND_EXHAUST: &str = "        - {method: POST, path: /v1/request-landing}\n        - {method: PUT, path: /v1/exhaust-port}\n";

/// The deathstar: answers like the demo's service, on its pod IP.
fn deathstar() -> std::thread::JoinHandle<()> {
    let listener = TcpListener::bind(DEATHSTAR).expect("bind deathstar on its pod IP");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        let request = String::from_utf8_lossy(&head[..end]).into_owned();
                        head.drain(..end + 4);
                        let body = if request.starts_with("PUT /v1/exhaust-port") {
                            "Panic: deathstar exploded\n"
                        } else {
                            "Ship landed\n"
                        };
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if stream.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Proxy {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_proxy(socket: &Path) -> Proxy {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let child = Command::new(binary("l7-proxy", "l7-proxy"))
        .arg("--agent")
        .arg(format!("unix:{}", socket.display()))
        .args([
            "--ingress",
            &addr.to_string(),
            "--mode",
            "proxy-protocol",
            "--admin",
            &admin.to_string(),
        ])
        .spawn()
        .expect("start l7-proxy");
    Proxy { child, addr, admin }
}

/// A PROXY protocol v2 header for a TCP/IPv4 connection from `src` to `dst`.
fn proxy_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (src, dst) else {
        panic!("IPv4 only here");
    };
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0, 12]);
    header.extend_from_slice(&src.ip().octets());
    header.extend_from_slice(&dst.ip().octets());
    header.extend_from_slice(&src.port().to_be_bytes());
    header.extend_from_slice(&dst.port().to_be_bytes());
    header
}

/// One keep-alive connection through the proxy, as `from`, to the deathstar.
struct Conn(TcpStream);

impl Conn {
    fn open(proxy: SocketAddr, from: &str) -> Self {
        let mut stream = TcpStream::connect(proxy).expect("connect proxy");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let header = proxy_header(from.parse().expect("src"), DEATHSTAR.parse().expect("dst"));
        stream.write_all(&header).expect("PROXY header");
        Conn(stream)
    }

    /// Sends one request and returns (status, body).
    fn request(&mut self, method: &str, path: &str) -> (u16, String) {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: deathstar.default.svc.cluster.local\r\nContent-Length: 0\r\n\r\n"
        );
        self.0.write_all(request.as_bytes()).expect("write request");
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = self.0.read(&mut buf).expect("read response");
            assert!(n > 0, "connection closed before a full response");
            data.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&data).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_owned())
                    })
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if data.len() >= end + 4 + length {
                    let status = text[9..12].parse().expect("status code");
                    return (status, text[end + 4..end + 4 + length].to_owned());
                }
            }
        }
    }
}

impl Conn {
    /// Sends one request and reports whether the connection was closed (or reset) without
    /// a byte of answer.
    fn closed_without_answer(&mut self, method: &str, path: &str) -> bool {
        let request = format!("{method} {path} HTTP/1.1\r\nHost: deathstar\r\n\r\n");
        let _ = self.0.write_all(request.as_bytes());
        let mut buf = [0u8; 64];
        matches!(self.0.read(&mut buf), Ok(0) | Err(_))
    }
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    // Not listening yet counts as "no answer" for the callers that wait.
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// The Star Wars story through the real proxy: landing allowed, the exhaust port denied
// with 403 (SEMANTICS 4.10), an xwing denied, and a policy change applied to the next
// request of an open keep-alive connection.
#[test]
fn starwars_through_the_proxy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifests_dir = dir.path().join("manifests");
    std::fs::create_dir(&manifests_dir).expect("mkdir");
    manifests(&manifests_dir, LANDING_ONLY);
    let _deathstar = deathstar();
    let socket = dir.path().join("agent.sock");
    let agent = AgentProcess::start(&manifests_dir, &socket);
    let socket_arg = socket.display().to_string();
    wait_until("the agent to serve", || {
        integration::node_agent(&["status", "--xds-socket", &socket_arg])
            .status
            .success()
    });
    let proxy = start_proxy(&socket);
    wait_until("the proxy to be ready", || {
        http_get(proxy.admin, "/ready").0 == 200
    });

    let mut tiefighter = Conn::open(proxy.addr, TIEFIGHTER);
    assert_eq!(
        tiefighter.request("POST", "/v1/request-landing"),
        (200, "Ship landed\n".into())
    );
    assert_eq!(
        tiefighter.request("PUT", "/v1/exhaust-port"),
        (403, "Access denied\r\n".into())
    );
    // Same connection, still usable after the 403.
    assert_eq!(
        tiefighter.request("POST", "/v1/request-landing"),
        (200, "Ship landed\n".into())
    );

    // L3/L4 deny: the datapath would drop it, so the proxy closes the connection without
    // an answer (and counts it).
    let mut xwing = Conn::open(proxy.addr, XWING);
    assert!(
        xwing.closed_without_answer("POST", "/v1/request-landing"),
        "L3 deny, fail closed"
    );

    // The policy changes while the tiefighter's connection stays open.
    manifests(&manifests_dir, LANDING_AND_EXHAUST);
    wait_until("the new policy on the open connection", || {
        tiefighter.request("PUT", "/v1/exhaust-port").0 == 200
    });

    let (status, metrics) = http_get(proxy.admin, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("l7_proxy_requests_total{direction=\"ingress\",verdict=\"denied\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("l7_proxy_policy_version{type=\"NetworkPolicy\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("l7_proxy_flow_records_dropped 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "l7_proxy_connections_closed_by_policy_total{direction=\"ingress\",when=\"accept\"} 1"
        ),
        "{metrics}"
    );
    // Flow records reached the agent: two per request (SEMANTICS 8.1).
    wait_until("flow records at the agent", || {
        let output =
            integration::node_agent(&["status", "--xds-socket", &socket_arg, "-o", "json"]);
        let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        status["flows"]["received"].as_u64().unwrap_or(0) >= 8
    });
    drop(proxy);
    assert!(agent.stop().success());
}
