//! The HTTP proxy end to end in its default transparent mode: pods are network namespaces
//! wired to a node namespace, the kernel redirects their port-80 traffic to the real
//! `l7-proxy` (nftables TPROXY, so the accepted socket's local address is the original
//! destination), `node-agent run` feeds it the policy of a folder of manifests, clients are
//! real `curl` (or a small Python client) inside the pods, and the upstream is a real
//! server process inside the destination pod that records every request it receives.
//!
//! Needs root (namespaces, TPROXY), `curl`, `python3` and `nft`; the HTTP/2 upstream needs
//! `node` (its built-in `http2` module is the only h2c server on the machine).

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::process::{ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use integration::netns::Process;
use serde_json::Value;

mod netns_cluster;
use netns_cluster::*;

/// One request of the rules test: method, request target as sent, extra curl arguments,
/// expected status, and for an allowed request the `METHOD PATH` the upstream must see.
type Case = (
    &'static str,
    &'static str,
    &'static [&'static str],
    u16,
    Option<&'static str>,
);

/// The rules of the method/path/host/header test: each line one SEMANTICS 4 feature.
const RULES_POLICY: &str = r#"  - fromEndpoints: [{matchLabels: {role: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/public/.*"}
        - {method: GET, path: "/exact"}
        - {method: POST, path: "/submit"}
        - {method: GET, path: "/vhost", host: "example\\.com"}
        - {method: GET, path: "/vhost-port", host: "example\\.com:80"}
        - {method: GET, path: "/token", headers: ["X-Token: 1"]}
"#;

// Method, path (with queries and normalisation), host and header rules through the kernel
// redirect, each allowed and denied request made by curl; the upstream must have received
// exactly the allowed ones, with the normalised path, and the proxy's own connections
// must carry --mark.
#[test]
fn http_rules_allow_and_deny() {
    let mut c = Cluster::start(
        "rules",
        &[
            pod("web", [10, 81, 1, 10], "{app: web}"),
            pod("client", [10, 81, 1, 11], "{role: client}"),
        ],
        &web_policy(RULES_POLICY),
        &["--mark", "4660"],
    );
    // Counts the upstream packets the proxy sends, marked and in all: the datapath
    // recognises the proxy's own traffic by this mark (0x1234 = 4660).
    c.node.ns.nft(
        "table ip marks {\n  counter marked {}\n  counter upstream {}\n  chain output {\n    type filter hook output priority 0; policy accept;\n    tcp dport 80 counter name \"upstream\"\n    tcp dport 80 meta mark 0x1234 counter name \"marked\"\n  }\n}\n",
    );
    let up = c.serve_http1("web");

    let cases: &[Case] = &[
        ("GET", "/public/a", &[], 200, Some("GET /public/a")),
        // The query is part of what `path` matches (SEMANTICS 4.3).
        (
            "GET",
            "/public/a?x=1&y=2",
            &[],
            200,
            Some("GET /public/a?x=1&y=2"),
        ),
        ("GET", "/exact", &[], 200, Some("GET /exact")),
        ("GET", "/exact?x=1", &[], 403, None),
        // Whole-value match (4.2): `/public/.*` does not match `/public`.
        ("GET", "/public", &[], 403, None),
        ("GET", "/other", &[], 403, None),
        ("DELETE", "/public/a", &[], 403, None),
        // Methods are case-sensitive (4.5).
        ("get", "/public/a", &[], 403, None),
        ("POST", "/submit", &[], 200, Some("POST /submit")),
        ("PUT", "/submit", &[], 403, None),
        // Dot segments resolve before matching, and the matched path is what is forwarded
        // (4.6); curl --path-as-is sends them raw.
        ("GET", "/public/../secret", &[], 403, None),
        (
            "GET",
            "/secret/../public/b",
            &[],
            200,
            Some("GET /public/b"),
        ),
        ("GET", "//public//c", &[], 200, Some("GET /public/c")),
        // An encoded slash must never get past a rule it fails decoded (here 400).
        ("GET", "/public/x%2F..%2F..%2Fsecret", &[], 400, None),
        // Host is matched as sent, port included (4.4).
        (
            "GET",
            "/vhost",
            &["-H", "Host: example.com"],
            200,
            Some("GET /vhost"),
        ),
        ("GET", "/vhost", &["-H", "Host: example.com:80"], 403, None),
        ("GET", "/vhost", &["-H", "Host: exampleXcom"], 403, None),
        (
            "GET",
            "/vhost-port",
            &["-H", "Host: example.com:80"],
            200,
            Some("GET /vhost-port"),
        ),
        (
            "GET",
            "/vhost-port",
            &["-H", "Host: example.com"],
            403,
            None,
        ),
        // Header names are case-insensitive, values exact (4.7).
        (
            "GET",
            "/token",
            &["-H", "x-token: 1"],
            200,
            Some("GET /token"),
        ),
        ("GET", "/token", &["-H", "X-Token: 2"], 403, None),
        ("GET", "/token", &[], 403, None),
    ];
    let mut expected = Vec::new();
    for (method, target, args, status, seen) in cases {
        let mut full = vec!["--path-as-is", "-X", method];
        full.extend_from_slice(args);
        let (got, body) = c.request("client", "web", target, &full);
        assert_eq!(got, *status, "{method} {target} {args:?}: body {body:?}");
        match status {
            403 => assert_eq!(body, DENIED_BODY, "{method} {target} {args:?}"),
            400 => assert!(body.starts_with("Bad request:"), "{body:?}"),
            _ => {}
        }
        if let Some(seen) = seen {
            expected.push((*seen).to_owned());
            // The upstream's echo: the request reached it, Host unchanged.
            let echo: Value = serde_json::from_str(body.trim()).expect("upstream echo");
            let host = args
                .iter()
                .find_map(|a| a.strip_prefix("Host: "))
                .map(str::to_owned)
                .unwrap_or_else(|| c.pod("web").ip.to_string());
            assert_eq!(echo["host"], host.as_str(), "{method} {target}");
        }
    }
    assert_eq!(
        c.received_lines(up),
        expected,
        "the upstream must see exactly the allowed requests"
    );
    let token = c.received(up);
    assert!(
        token
            .iter()
            .filter(|r| r["path"] == "/token")
            .all(|r| r["x-token"] == "1"),
        "{token:?}"
    );

    let counters = c.node.ns.exec("nft", &["list", "table", "ip", "marks"]);
    let counters = String::from_utf8_lossy(&counters.stdout).into_owned();
    let packets = |name: &str| -> u64 {
        let block = counters
            .split(&format!("counter {name} {{"))
            .nth(1)
            .unwrap_or_else(|| panic!("counter {name} in {counters}"));
        block
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("packets of {name} in {counters}"))
    };
    assert!(packets("upstream") > 0, "{counters}");
    assert_eq!(
        packets("marked"),
        packets("upstream"),
        "every upstream packet carries --mark: {counters}"
    );
}

// SEMANTICS 3.4: an L3/L4-only allow for one peer on a port that has HTTP rules for
// another makes that peer's requests all pass (still through the proxy), while the
// HTTP-rules peer stays limited.
#[test]
fn l3_only_peer_gets_the_wildcard() {
    let mut c = Cluster::start(
        "wildcard",
        &[
            pod("web", [10, 81, 2, 10], "{app: web}"),
            pod("client", [10, 81, 2, 11], "{role: client}"),
            pod("admin", [10, 81, 2, 12], "{role: admin}"),
        ],
        &web_policy(
            r#"  - fromEndpoints: [{matchLabels: {role: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/public"}
  - fromEndpoints: [{matchLabels: {role: admin}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
"#,
        ),
        &[],
    );
    let up = c.serve_http1("web");

    assert_eq!(c.request("client", "web", "/public", &[]).0, 200);
    assert_eq!(
        c.request("client", "web", "/admin", &[]),
        (403, DENIED_BODY.to_owned())
    );
    assert_eq!(
        c.request("client", "web", "/public", &["-X", "DELETE"]).0,
        403
    );
    assert_eq!(c.request("admin", "web", "/admin", &[]).0, 200);
    assert_eq!(
        c.request("admin", "web", "/public", &["-X", "DELETE"]).0,
        200
    );
    // Still through the proxy: normalised like every redirected request.
    assert_eq!(
        c.request("admin", "web", "/x/../admin/y", &["--path-as-is"])
            .0,
        200
    );
    assert_eq!(
        c.received_lines(up),
        [
            "GET /public",
            "GET /admin",
            "DELETE /public",
            "GET /admin/y"
        ]
    );
    let metrics = c.metrics();
    assert!(
        metrics.contains("l7_proxy_requests_total{direction=\"ingress\",verdict=\"forwarded\"} 4"),
        "all four allowed requests went through the proxy: {metrics}"
    );
}

// Allowed, denied, allowed on one HTTP/1.1 connection: the 403 leaves it open and usable
// (SEMANTICS 4.10), and curl reuses it for all three.
#[test]
fn keep_alive_survives_a_denial() {
    let mut c = Cluster::start(
        "keepalive",
        &[
            pod("web", [10, 81, 3, 10], "{app: web}"),
            pod("client", [10, 81, 3, 11], "{role: client}"),
        ],
        &web_policy(
            r#"  - fromEndpoints: [{matchLabels: {role: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/ok/.*"}
"#,
        ),
        &[],
    );
    let up = c.serve_http1("web");
    let ip = c.pod("web").ip;
    let bodies = c.dir.path().join("bodies");
    std::fs::create_dir(&bodies).expect("bodies folder");
    let body = |n: usize| bodies.join(n.to_string()).display().to_string();
    let (b1, b2, b3) = (body(1), body(2), body(3));
    let output = c.curl(
        "client",
        &[
            "-w",
            "%{http_code} %{num_connects}\n",
            "-o",
            &b1,
            &format!("http://{ip}/ok/1"),
            "-o",
            &b2,
            &format!("http://{ip}/denied"),
            "-o",
            &b3,
            &format!("http://{ip}/ok/2"),
        ],
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(
        text,
        "200 1\n403 0\n200 0\n",
        "statuses and new connections per request; stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(std::fs::read_to_string(&b2).expect("403 body"), DENIED_BODY);
    assert!(
        std::fs::read_to_string(&b3)
            .expect("third body")
            .contains("\"/ok/2\"")
    );
    assert_eq!(c.received_lines(up), ["GET /ok/1", "GET /ok/2"]);
    let metrics = c.metrics();
    assert!(
        metrics.contains("l7_proxy_connections_total 1"),
        "one client connection reached the proxy: {metrics}"
    );
}

// HTTP/2 with prior knowledge (h2c) in means HTTP/2 out (SEMANTICS 4.11): curl's allowed
// request reaches an h2c upstream as HTTP/2, its denied one gets the 403; and on one HTTP/2
// connection a 403 leaves the connection usable for the next stream.
#[test]
fn http2_prior_knowledge_allow_and_deny() {
    assert!(
        have("node"),
        "the h2c upstream needs `node` (.ci/run installs nodejs)"
    );
    let mut c = Cluster::start(
        "h2",
        &[
            pod("web", [10, 81, 4, 10], "{app: web}"),
            pod("client", [10, 81, 4, 11], "{role: client}"),
        ],
        &web_policy(
            r#"  - fromEndpoints: [{matchLabels: {role: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/h2/.*", headers: ["X-Token: 1"]}
"#,
        ),
        &[],
    );
    let up = c.serve_http2("web");
    let body_file = c.dir.path().join("h2-body").display().to_string();
    let ip = c.pod("web").ip;
    // (status and HTTP version as curl saw them, body).
    let h2_get = |path: &str| -> (String, String) {
        let output = c.curl(
            "client",
            &[
                "--http2-prior-knowledge",
                "-H",
                "X-Token: 1",
                "-o",
                &body_file,
                "-w",
                "%{http_code} %{http_version}",
                &format!("http://{ip}{path}"),
            ],
        );
        let body = std::fs::read_to_string(&body_file).unwrap_or_default();
        (String::from_utf8_lossy(&output.stdout).into_owned(), body)
    };
    let (status, body) = h2_get("/h2/ok?q=1");
    assert_eq!(status, "200 2", "{body}");
    let echo: Value = serde_json::from_str(body.trim()).expect("upstream echo");
    assert_eq!(echo["version"], "HTTP/2", "HTTP/2 out");
    assert_eq!(echo["x-token"], "1");
    assert_eq!(
        h2_get("/secret"),
        ("403 2".to_owned(), DENIED_BODY.to_owned())
    );
    // Without the header the allowed path is denied too.
    let (status, body) = c.request("client", "web", "/h2/ok", &["--http2-prior-knowledge"]);
    assert_eq!((status, body.as_str()), (403, DENIED_BODY));
    assert_eq!(c.received_lines(up), ["GET /h2/ok?q=1"]);

    // curl 7.88 (Debian 12) fails every second request on a reused prior-knowledge
    // connection ("Error in the HTTP2 framing layer"), against any server; node's own
    // client keeps several streams on one connection instead.
    let url = format!("http://{}", c.pod("web").ip);
    let output = c.pod("client").ns.exec(
        "node",
        &["-e", HTTP2_CLIENT, &url, "/h2/1", "/denied", "/h2/2"],
    );
    let answers: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("client answer is JSON"))
        .collect();
    let statuses: Vec<u64> = answers
        .iter()
        .filter_map(|a| a["status"].as_u64())
        .collect();
    assert_eq!(statuses, [200, 403, 200], "{answers:?}");
    assert_eq!(answers[1]["body"], DENIED_BODY);
    assert!(
        answers.iter().all(|a| a["port"] == answers[0]["port"]),
        "one connection for all three streams: {answers:?}"
    );
    assert_eq!(
        c.received_lines(up),
        ["GET /h2/ok?q=1", "GET /h2/1", "GET /h2/2"]
    );
}

// The authority an HTTP/2 client sent must reach the upstream, as Host does for HTTP/1.1:
// virtual hosts behind the proxy depend on it.
#[test]
fn http2_authority_reaches_the_upstream() {
    assert!(
        have("node"),
        "the h2c upstream needs `node` (.ci/run installs nodejs)"
    );
    let mut c = Cluster::start(
        "h2auth",
        &[
            pod("web", [10, 81, 5, 10], "{app: web}"),
            pod("client", [10, 81, 5, 11], "{role: client}"),
        ],
        &web_policy(
            r#"  - fromEndpoints: [{matchLabels: {role: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {host: "example\\.com"}
"#,
        ),
        &[],
    );
    let up = c.serve_http2("web");
    let (status, body) = c.request(
        "client",
        "web",
        "/vhost",
        &["--http2-prior-knowledge", "-H", "Host: example.com"],
    );
    assert_eq!(status, 200, "{body}");
    let (status, _) = c.request(
        "client",
        "web",
        "/vhost",
        &["--http2-prior-knowledge", "-H", "Host: other.com"],
    );
    assert_eq!(status, 403);
    let received = c.received(up);
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0]["host"], "example.com", "{received:?}");
}

// A policy change applies to the next request of an open keep-alive connection: allowed
// before the CNP file is rewritten, 403 after, on the same connection, never reset.
#[test]
fn policy_change_applies_mid_connection() {
    let mut c = Cluster::start(
        "change",
        &[
            pod("web", [10, 81, 6, 10], "{app: web}"),
            pod("client", [10, 81, 6, 11], "{role: client}"),
        ],
        &web_policy(
            r#"  - fromEndpoints: [{matchLabels: {role: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/a"}
        - {method: GET, path: "/b"}
"#,
        ),
        &[],
    );
    let up = c.serve_http1("web");
    let mut client = KeepAliveClient::start(&c, "client", "web");

    let (status, port, _) = client.request("GET /a");
    assert_eq!(status, 200);
    assert_eq!(client.request("GET /b"), (200, port, client.last_body()));

    // /a is no longer allowed.
    c.write_policy(&web_policy(
        r#"  - fromEndpoints: [{matchLabels: {role: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/b"}
"#,
    ));
    let deadline = Instant::now() + PATIENCE;
    let mut before_change = 0;
    loop {
        let (status, same_port, body) = client.request("GET /a");
        assert_eq!(
            same_port, port,
            "the connection was replaced ({status} {body})"
        );
        match status {
            200 => before_change += 1,
            403 => {
                assert_eq!(body, DENIED_BODY);
                break;
            }
            other => panic!("unexpected answer {other} {body:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the new policy never applied to the open connection"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Still the same connection, still usable, /b still allowed.
    assert_eq!(client.request("GET /b").0, 200);
    assert_eq!(client.request("GET /b").1, port);
    let mut expected = vec!["GET /a".to_owned(), "GET /b".to_owned()];
    expected.extend(std::iter::repeat_n("GET /a".to_owned(), before_change));
    expected.extend(["GET /b".to_owned(), "GET /b".to_owned()]);
    assert_eq!(c.received_lines(up), expected);
}

/// The Python client of [`KEEPALIVE_CLIENT`], one request per call.
#[derive(Debug)]
struct KeepAliveClient {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    last_body: String,
    _process: Process,
}

impl KeepAliveClient {
    /// Starts the client in pod `from`, connected to pod `to` on port 80.
    fn start(c: &Cluster, from: &str, to: &str) -> Self {
        let ip = c.pod(to).ip.to_string();
        let child = c
            .pod(from)
            .ns
            .command("python3")
            .args(["-u", "-c", KEEPALIVE_CLIENT, &ip])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the keep-alive client");
        Self::new(Process(child))
    }

    fn new(mut process: Process) -> Self {
        let stdin = process.0.stdin.take().expect("client stdin");
        let stdout = BufReader::new(process.0.stdout.take().expect("client stdout"));
        Self {
            stdin,
            stdout,
            last_body: String::new(),
            _process: process,
        }
    }

    /// Sends `METHOD PATH`; returns (status, local port, body). The client's own 30 s
    /// socket timeout bounds the wait.
    fn request(&mut self, line: &str) -> (u16, u16, String) {
        self.try_request(line)
            .unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    /// As [`Self::request`], but the connection failing (closed, reset) is an `Err` with
    /// the client's description.
    fn try_request(&mut self, line: &str) -> Result<(u16, u16, String), String> {
        writeln!(self.stdin, "{line}").expect("write to the client");
        self.stdin.flush().expect("flush the client");
        let mut answer = String::new();
        self.stdout
            .read_line(&mut answer)
            .expect("read from the client");
        let mut parts = answer.trim_end().splitn(3, ' ');
        let status = parts.next().unwrap_or("");
        let port = parts.next().unwrap_or("0");
        let body: String =
            serde_json::from_str(parts.next().unwrap_or("null")).unwrap_or_else(|_| answer.clone());
        if status == "ERROR" {
            return Err(body);
        }
        let status = status
            .parse()
            .unwrap_or_else(|_| panic!("client answer {answer:?}"));
        self.last_body = body.clone();
        Ok((status, port.parse().unwrap_or(0), body))
    }

    fn last_body(&self) -> String {
        self.last_body.clone()
    }
}

// The upstream cannot be reached: refused (nothing listens) is 503, one that never answers
// the handshake is 503 after --connect-timeout; both with a plain-text body naming the
// status, and both counted as upstream connect errors.
#[test]
fn upstream_down_is_503() {
    let c = Cluster::start(
        "down",
        &[
            pod("web", [10, 81, 7, 10], "{app: web}"),
            pod("silent", [10, 81, 7, 12], "{app: web}"),
            pod("client", [10, 81, 7, 11], "{role: client}"),
        ],
        &web_policy(
            r#"  - fromEndpoints: [{matchLabels: {role: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/.*"}
"#,
        ),
        &["--connect-timeout", "1"],
    );
    // Nothing listens in `web`: the kernel answers the proxy's SYN with a reset.
    let (status, body) = c.request("client", "web", "/x", &[]);
    assert_eq!((status, body.as_str()), (503, "Service Unavailable\r\n"));
    // `silent` drops SYNs: only the proxy's connect timeout ends the wait.
    c.pod("silent").ns.nft(
        "table ip blackhole {\n  chain input {\n    type filter hook input priority 0; policy accept;\n    tcp dport 80 drop\n  }\n}\n",
    );
    let started = Instant::now();
    let (status, body) = c.request("client", "silent", "/x", &[]);
    assert_eq!((status, body.as_str()), (503, "Service Unavailable\r\n"));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "answered before the connect timeout: {:?}",
        started.elapsed()
    );
    let metrics = c.metrics();
    assert!(
        metrics.contains("upstream_errors_total{kind=\"connect\"} 2"),
        "{metrics}"
    );
}

// L3/L4: a peer the policy does not allow (another pod, or an address that is no pod at
// all) gets no HTTP answer at all: the kernel redirects all port-80 traffic here, and the
// proxy closes such a connection at accept, as the datapath would drop it (SEMANTICS 2.3:
// no 403). The upstream never sees it. A change that removes an open connection's access
// (an ingressDeny, which beats the allow) closes that connection.
#[test]
fn l3_denied_peers_get_no_answer() {
    let mut c = Cluster::start(
        "l3deny",
        &[
            pod("web", [10, 81, 8, 10], "{app: web}"),
            pod("client", [10, 81, 8, 11], "{role: client}"),
            pod("other", [10, 81, 8, 12], "{role: other}"),
            PodSpec {
                name: "stranger",
                ip: Ipv4Addr::new(10, 81, 8, 13),
                labels: None,
            },
        ],
        &web_policy(ALLOW_CLIENT_ALL),
        &[],
    );
    let up = c.serve_http1("web");
    let url = format!("http://{}/any", c.pod("web").ip);
    assert_eq!(c.request("client", "web", "/any", &[]).0, 200);
    for peer in ["other", "stranger"] {
        for method in ["GET", "POST"] {
            let output = c.curl(peer, &["-X", method, "-w", "%{http_code}", &url]);
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            assert_eq!(stdout, "000", "{peer} {method}: no HTTP answer; {stderr}");
            // 52: closed without a byte ("Empty reply from server"); 56: reset, when the
            // close found the request unread in the socket. Both are a drop to the client.
            assert!(
                matches!(output.status.code(), Some(52 | 56)),
                "{peer} {method}: curl {:?}: {stderr}",
                output.status
            );
        }
    }
    let metrics = c.metrics();
    assert!(
        metrics.contains(
            "l7_proxy_connections_closed_by_policy_total{direction=\"ingress\",when=\"accept\"} 4"
        ),
        "{metrics}"
    );

    // The client keeps a connection open while an ingressDeny removes its access.
    let mut client = KeepAliveClient::start(&c, "client", "web");
    let (status, port, _) = client.request("GET /kept");
    assert_eq!(status, 200);
    let mut policy = web_policy(ALLOW_CLIENT_ALL);
    policy.push_str(
        "  ingressDeny:\n  - fromEndpoints: [{matchLabels: {role: client}}]\n    toPorts:\n    - ports: [{port: \"80\", protocol: TCP}]\n",
    );
    c.write_policy(&policy);
    let deadline = Instant::now() + PATIENCE;
    let mut kept = 1;
    loop {
        match client.try_request("GET /kept") {
            // Closed by the proxy: the outcome this waits for.
            Err(_) => break,
            // Before the change reached the proxy.
            Ok((200, p, _)) if p == port => kept += 1,
            // The change arrived, the close not yet: denied, never forwarded.
            Ok((403, p, body)) if p == port => assert_eq!(body, DENIED_BODY),
            Ok(other) => panic!("unexpected answer {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the connection stayed open after its access was removed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = c.curl("client", &["-w", "%{http_code}", &url]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "000",
        "new connections are refused too"
    );
    let mut expected = vec!["GET /any".to_owned()];
    expected.extend(std::iter::repeat_n("GET /kept".to_owned(), kept));
    assert_eq!(c.received_lines(up), expected);
    let metrics = c.metrics();
    assert!(
        metrics.contains(
            "l7_proxy_connections_closed_by_policy_total{direction=\"ingress\",when=\"update\"} 1"
        ),
        "{metrics}"
    );
}

/// `client` may make any request to `web` on port 80 (through the proxy).
const ALLOW_CLIENT_ALL: &str = r#"  - fromEndpoints: [{matchLabels: {role: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {}
"#;
