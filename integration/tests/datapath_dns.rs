//! DNS rules and toFQDNs end to end: the eBPF programs redirect a pod's DNS to the real
//! `dns-proxy`, which forwards allowed queries to a real DNS server (dnsmasq in a pod) and
//! refuses the others; each answer's IPs are programmed into the datapath for the asking
//! pod's toFQDNs selectors before the pod sees it, so real clients (dig, and curl through
//! the system resolver) connect to a web server outside the cluster only after resolving an
//! allowed name. Needs root, clang (the build), iproute2, dnsmasq, dig, curl and python3.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

mod datapath_cluster;
use datapath_cluster::*;

const CLIENT: [u8; 4] = [10, 72, 0, 10];
const OTHER: [u8; 4] = [10, 72, 0, 11];
const DNS: [u8; 4] = [10, 72, 0, 53];
const DNS_IP: &str = "10.72.0.53";
/// The web server outside the cluster: its own address, plus every address of
/// [`WEB_RANGE`] (a local route), so each test name can have its own IP.
const WEB: [u8; 4] = [203, 0, 113, 10];
const WEB_RANGE: &str = "198.18.0.0/16";

fn pods() -> Vec<PodSpec> {
    vec![
        pod("client", CLIENT, "{app: client}", 0),
        pod("other", OTHER, "{app: client}", 0),
        pod("dns", DNS, "{k8s-app: kube-dns}", 0),
    ]
}

/// The seed's `to-google` policy, plus test names: DNS to the DNS pod with rules, and
/// toFQDNs for google.com and every name under `.test`. github.com may be resolved but is
/// not in toFQDNs.
const POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-google, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {k8s-app: kube-dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns:
        - matchName: google.com
        - matchName: github.com
        - matchPattern: "**.test"
  - toFQDNs:
    - matchName: google.com
    - matchPattern: "**.test"
"#;

/// How many distinct fresh names the "connect right after the answer" test uses.
const FRESH_NAMES: u32 = 30;

fn dns_records() -> Vec<String> {
    let mut records = vec![
        "--host-record=google.com,203.0.113.10,300".to_owned(),
        "--host-record=github.com,198.18.0.11,300".to_owned(),
        // Known to the server (which would answer it) but allowed by no DNS rule: a
        // REFUSED can only come from the proxy.
        "--host-record=blocked.example,198.18.0.99,300".to_owned(),
        "--host-record=multi.test,198.18.0.21,300".to_owned(),
        "--host-record=multi.test,198.18.0.22,300".to_owned(),
        "--host-record=target.test,198.18.0.31,300".to_owned(),
        "--cname=www.alias.test,target.test".to_owned(),
        "--host-record=short.test,198.18.0.41,1".to_owned(),
        "--host-record=six.test,198.18.0.51,fd00::51,300".to_owned(),
    ];
    for i in 1..=FRESH_NAMES {
        records.push(format!("--host-record=n{i}.test,198.18.1.{i},0"));
    }
    // More than 512 bytes of answer: 40 A records.
    for i in 1..=40 {
        records.push(format!("--host-record=big.test,198.18.2.{i},300"));
    }
    records
}

/// One node with the three pods, the DNS server, the web host, the resolver of both client
/// pods pointed at the DNS pod, and the DNS proxy running.
fn cluster(tag: &str) -> DpCluster {
    let mut c = DpCluster::start(tag, 1, &pods(), POLICY);
    let web = c.add_host(0, "web", Ipv4Addr::from(WEB));
    let (web_ns, web_device) = (web.ns.name().to_owned(), web.host_device.clone());
    c.nodes[0]
        .node
        .ns
        .ip(&["route", "add", WEB_RANGE, "dev", &web_device]);
    integration::netns::run(
        "ip",
        &[
            "-n", &web_ns, "route", "add", "local", WEB_RANGE, "dev", "lo",
        ],
    );
    c.serve_dns("dns", &dns_records());
    c.serve_http_on_host("web", 80);
    c.set_resolver("client", Ipv4Addr::from(DNS));
    c.set_resolver("other", Ipv4Addr::from(DNS));
    c.start_dns_proxy(0, &[]);
    c
}

/// `dig @DNS NAME` from `from`: (status, answer addresses and CNAMEs, whole output).
fn lookup(c: &DpCluster, from: &str, args: &[&str]) -> (String, Vec<String>, String) {
    let mut full = vec![format!("@{DNS_IP}")];
    full.extend(args.iter().map(|a| a.to_string()));
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    let (_, out) = c.dig(from, &full);
    let status = out
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("")
        .to_owned();
    let mut answers = Vec::new();
    let mut in_answer = false;
    for line in out.lines() {
        if line.starts_with(";; ANSWER SECTION") {
            in_answer = true;
            continue;
        }
        if in_answer {
            if line.trim().is_empty() {
                break;
            }
            if let Some(last) = line.split_whitespace().last() {
                answers.push(last.trim_end_matches('.').to_owned());
            }
        }
    }
    (status, answers, out)
}

/// `curl http://TARGET/` from `from` with a 2 s connect timeout: the HTTP status, 0 when the
/// connection was dropped (or the name did not resolve).
fn http_status(c: &DpCluster, from: &str, target: &str) -> u16 {
    c.request(from, &format!("http://{target}/"), &[]).0
}

fn observe(c: &DpCluster, from: &str) -> String {
    let out = c.agent_cli(0, &["observe", "--from-pod", from, "--last", "200"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fqdn_cache(c: &DpCluster) -> serde_json::Value {
    let out = c.agent_cli(0, &["fqdn", "cache", "list", "-o", "json"]);
    assert!(
        out.status.success(),
        "fqdn cache list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("fqdn cache list -o json is JSON")
}

fn cache_has(cache: &serde_json::Value, endpoint: &str, name: &str, ip: &str) -> bool {
    cache.as_array().is_some_and(|entries| {
        entries
            .iter()
            .any(|e| e["endpoint"] == endpoint && e["name"] == name && e["ip"] == ip)
    })
}

// The seed's story (to-google): DNS to the cluster DNS is allowed by name, google.com is
// reachable after resolving it and not before, github.com resolves but stays dropped, a
// name no DNS rule allows is REFUSED, mixed case matches and keeps its case, and the IPs
// one pod learned are not allowed for another (SEMANTICS 6.5). The flows say why.
#[test]
fn dns_rules_and_to_fqdns_follow_the_seed_story() {
    let mut c = cluster("dnsseed");

    assert_eq!(
        http_status(&c, "client", "203.0.113.10"),
        0,
        "google.com's address before any lookup"
    );

    let (status, answers, _) = lookup(&c, "client", &["google.com"]);
    assert_eq!(
        (status.as_str(), answers),
        ("NOERROR", vec!["203.0.113.10".to_owned()])
    );
    let (status, answers, out) = lookup(&c, "client", &["blocked.example"]);
    assert_eq!(status, "REFUSED", "{out}");
    assert!(answers.is_empty());
    assert!(out.contains("blocked.example."), "question echoed: {out}");
    let (status, answers, out) = lookup(&c, "client", &["GitHub.COM"]);
    assert_eq!(status, "NOERROR", "{out}");
    assert_eq!(answers, vec!["198.18.0.11".to_owned()]);
    assert!(
        out.contains("GitHub.COM."),
        "the answer keeps the query's case: {out}"
    );

    // curl through the system resolver, as in the seed.
    assert_eq!(http_status(&c, "client", "google.com"), 200);
    assert_eq!(
        http_status(&c, "client", "github.com"),
        0,
        "github.com is not in toFQDNs"
    );
    assert_eq!(
        http_status(&c, "other", "203.0.113.10"),
        0,
        "another pod never resolved google.com"
    );

    let cache = fqdn_cache(&c);
    assert!(
        cache_has(&cache, "default/client", "google.com.", "203.0.113.10"),
        "{cache:#}"
    );
    assert!(!cache_has(
        &cache,
        "default/other",
        "google.com.",
        "203.0.113.10"
    ));

    let flows = observe(&c, "default/client");
    for needle in [
        "DNS Query google.com. A",
        "DNS Query blocked.example. A",
        "DROPPED",
        "203.0.113.10",
    ] {
        assert!(flows.contains(needle), "observe lacks {needle:?}:\n{flows}");
    }
    c.check_alive(0);
}

// SEMANTICS 6.3: the answer is released only once the datapath allows its IPs, so a
// connection made right after it is never dropped, even with TTL 0. Also several A
// records, and a CNAME chain (IPs tied to the question name).
#[test]
fn connections_right_after_the_answer_are_never_dropped() {
    let mut c = cluster("dnsfresh");
    let script = format!(
        "ok=0; for i in $(seq 1 {FRESH_NAMES}); do \
         s=$(curl -s -o /dev/null -w '%{{http_code}}' --connect-timeout 1 --max-time 3 http://n$i.test/); \
         [ \"$s\" = 200 ] && ok=$((ok+1)) || echo \"n$i.test: $s\"; done; echo ok=$ok"
    );
    let out = c.pod("client").ns.output("sh", &["-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("ok={FRESH_NAMES}")),
        "every first connection after a fresh answer must pass:\n{text}"
    );

    let (status, mut answers, _) = lookup(&c, "client", &["multi.test"]);
    answers.sort();
    assert_eq!(
        (status.as_str(), answers.clone()),
        (
            "NOERROR",
            vec!["198.18.0.21".to_owned(), "198.18.0.22".to_owned()]
        )
    );
    for ip in answers {
        assert_eq!(http_status(&c, "client", &ip), 200, "A record {ip}");
    }

    let (status, answers, out) = lookup(&c, "client", &["www.alias.test"]);
    assert_eq!(status, "NOERROR", "{out}");
    assert!(answers.contains(&"target.test".to_owned()), "{out}");
    assert!(answers.contains(&"198.18.0.31".to_owned()), "{out}");
    assert_eq!(http_status(&c, "client", "198.18.0.31"), 200);
    let cache = fqdn_cache(&c);
    assert!(
        cache_has(&cache, "default/client", "www.alias.test.", "198.18.0.31"),
        "{cache:#}"
    );

    // AAAA: answered and learned (the pods here have IPv4 only, so nothing connects to it).
    let (status, answers, out) = lookup(&c, "client", &["six.test", "AAAA"]);
    assert_eq!(
        (status.as_str(), answers),
        ("NOERROR", vec!["fd00::51".to_owned()]),
        "{out}"
    );
    let cache = fqdn_cache(&c);
    assert!(
        cache_has(&cache, "default/client", "six.test.", "fd00::51"),
        "{cache:#}"
    );
    c.check_alive(0);
}

/// Opens one connection to `ip`:80 from `pod`, makes a request, and makes a second one on
/// the same connection once `go` exists; prints each status line.
const HELD_CONNECTION: &str = r#"
import os, socket, sys, time
ip, ready, go = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.create_connection((ip, 80), timeout=5)
def get():
    s.sendall(b"GET /held HTTP/1.1\r\nHost: short.test\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")]
    n = int(length[0].split(b":")[1])
    while len(body) < n:
        body += s.recv(4096)
    print(head.split(b"\r\n")[0].decode(), flush=True)
get()
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.05)
get()
"#;

// SEMANTICS 6.4: once a TTL expires, new connections need a fresh answer, but a connection
// made while it was valid keeps working.
#[test]
fn expired_ttl_blocks_new_connections_not_established_ones() {
    let mut c = cluster("dnsttl");
    let (status, answers, _) = lookup(&c, "client", &["short.test"]);
    assert_eq!(
        (status.as_str(), answers),
        ("NOERROR", vec!["198.18.0.41".to_owned()])
    );
    let ready = c.dir.path().join("held-ready");
    let go = c.dir.path().join("held-go");
    let mut held = c.pod("client").ns.command("python3");
    held.args(["-u", "-c", HELD_CONNECTION, "198.18.0.41"])
        .arg(&ready)
        .arg(&go)
        .stdout(std::process::Stdio::piped());
    let held = held.spawn().expect("start the held connection");
    c.wait_until("the held connection", |_| ready.exists());

    // TTL 1 s plus the agent's grace period: new connections stop passing.
    let started = Instant::now();
    c.eventually("a new connection after the TTL", 0, |c| {
        http_status(c, "client", "198.18.0.41")
    });
    assert!(started.elapsed() < Duration::from_secs(20));

    std::fs::write(&go, "").expect("release the held connection");
    let out = held.wait_with_output().expect("held connection");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().filter(|l| l.contains("200 OK")).count(),
        2,
        "the established connection must survive the expiry: {text}"
    );

    let (status, _, _) = lookup(&c, "client", &["short.test"]);
    assert_eq!(status, "NOERROR");
    assert_eq!(
        http_status(&c, "client", "198.18.0.41"),
        200,
        "a fresh answer allows again"
    );
    c.check_alive(0);
}

/// Sends raw UDP payloads (hex) to the DNS pod and prints, per payload, the rcode of the
/// answer or "none".
const RAW_QUERIES: &str = r#"
import socket, sys
server = sys.argv[1]
for payload in sys.argv[2:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    s.sendto(bytes.fromhex(payload), (server, 53))
    try:
        data, _ = s.recvfrom(4096)
        print(data[3] & 0x0f if len(data) >= 4 else "short", flush=True)
    except socket.timeout:
        print("none", flush=True)
    s.close()
"#;

fn question(name_wire: &str) -> String {
    format!("{name_wire}00010001")
}

// TCP DNS, the UDP truncation fallback, and malformed queries (SEMANTICS 5.5): dropped or
// answered FORMERR, and the proxy keeps serving.
#[test]
fn tcp_truncation_and_malformed_queries() {
    let mut c = cluster("dnstcp");
    let (status, answers, out) = lookup(&c, "client", &["+tcp", "google.com"]);
    assert_eq!(
        (status.as_str(), answers),
        ("NOERROR", vec!["203.0.113.10".to_owned()]),
        "{out}"
    );

    // Without EDNS a UDP client takes 512 bytes: 40 A records come back truncated (dnsmasq
    // truncates for such a client as well; the proxy's own truncation, for answers over
    // the client's limit, is covered by dns-proxy's socket tests)...
    let (_, _, out) = lookup(&c, "client", &["+noedns", "+ignore", "big.test"]);
    assert!(out.contains(" tc"), "TC expected: {out}");
    // ...and dig then retries over TCP and gets them all.
    let (status, answers, out) = lookup(&c, "client", &["+noedns", "big.test"]);
    assert_eq!(status, "NOERROR", "{out}");
    assert_eq!(answers.len(), 40, "{out}");

    let google = "06676f6f676c6503636f6d00";
    let header = |qd: &str| format!("abcd0100{qd}000000000000");
    let huge_name: String = (0..5)
        .map(|_| format!("3f{}", "61".repeat(63)))
        .collect::<String>()
        + "00";
    let payloads = [
        "abcd01".to_owned(), // truncated header: dropped
        header("0000"),      // QDCOUNT 0: FORMERR
        format!("{}{}{}", header("0002"), question(google), question(google)), // QDCOUNT 2
        format!("{}{}", header("0001"), question("c00c")), // pointer loop: FORMERR
        format!("{}{}", header("0001"), question(&huge_name)), // name over 255: FORMERR
        format!("{}{}", header("0001"), question(google)), // a good one: NOERROR
    ];
    let mut args = vec!["-u", "-c", RAW_QUERIES, DNS_IP];
    args.extend(payloads.iter().map(String::as_str));
    let out = c.pod("client").ns.output("python3", &args);
    let rcodes: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        rcodes,
        vec!["none", "1", "1", "1", "1", "0"],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (status, _, _) = lookup(&c, "client", &["google.com"]);
    assert_eq!(status, "NOERROR", "the proxy still serves");
    let (code, metrics) = c.dns_admin(0, "/metrics");
    assert_eq!(code, 200);
    for counted in [
        r#"dns_proxy_malformed_queries_total{kind="header_truncated"} 1"#,
        r#"dns_proxy_malformed_queries_total{kind="question_count"} 2"#,
        r#"dns_proxy_malformed_queries_total{kind="malformed"} 2"#,
    ] {
        assert!(metrics.contains(counted), "{counted} in:\n{metrics}");
    }
    c.check_alive(0);
}

// Issue item 7 and persistence: while the agent is down the DNS proxy keeps answering with
// its last policy; names resolved before a restart stay reachable after it.
#[test]
fn dns_survives_an_agent_restart_and_learned_names_persist() {
    let mut c = cluster("dnsrestart");
    let (status, _, _) = lookup(&c, "client", &["google.com"]);
    assert_eq!(status, "NOERROR");
    assert_eq!(http_status(&c, "client", "203.0.113.10"), 200);

    c.kill_agent(0);
    let (status, answers, _) = lookup(&c, "client", &["google.com"]);
    assert_eq!(
        (status.as_str(), answers),
        ("NOERROR", vec!["203.0.113.10".to_owned()])
    );
    let (status, _, _) = lookup(&c, "client", &["blocked.example"]);
    assert_eq!(status, "REFUSED", "the last policy still applies");
    assert_eq!(
        http_status(&c, "client", "203.0.113.10"),
        200,
        "the maps keep enforcing"
    );

    c.start_agent(0);
    c.wait_ready(0);
    // Give the restarted agent a few reconciles: the restored entry must keep the address
    // allowed without a new lookup.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(http_status(&c, "client", "203.0.113.10"), 200);
    let cache = fqdn_cache(&c);
    let restored = cache.as_array().is_some_and(|entries| {
        entries.iter().any(|e| {
            e["endpoint"] == "default/client"
                && e["name"] == "google.com."
                && e["source"] == "restored"
        })
    });
    assert!(restored, "{cache:#}");
    let (status, _, _) = lookup(&c, "client", &["google.com"]);
    assert_eq!(status, "NOERROR");
    c.check_alive(0);
}
