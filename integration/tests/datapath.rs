//! The eBPF datapath end to end on one node: `node-agent run` loads and attaches the real
//! programs of `bpf/datapath.c` to the pods' host-side devices, `l7-proxy` receives the
//! flows the programs redirect, and real curl and Python servers in pod namespaces see
//! the result. Needs root, clang (the build), iproute2, nsenter, curl and python3.

use integration::netns::Process;

mod datapath_cluster;
use datapath_cluster::*;

const CLIENT: [u8; 4] = [10, 71, 0, 10];
const SERVER: [u8; 4] = [10, 71, 0, 20];
const OTHER: [u8; 4] = [10, 71, 0, 30];

fn three_pods() -> Vec<PodSpec> {
    vec![
        pod("client", CLIENT, "{app: client}", 0),
        pod("server", SERVER, "{app: server}", 0),
        pod("other", OTHER, "{app: other}", 0),
    ]
}

/// server: ingress from client on 80/TCP, with `rules` under the port if given.
fn server_ingress(rules: &str) -> String {
    format!(
        r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: server, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: server}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: client}}}}]
    toPorts:
    - ports: [{{port: "80", protocol: TCP}}]
{rules}"#
    )
}

const HTTP_RULES: &str = r#"      rules:
        http: [{method: GET, path: "/public.*"}]
"#;

/// client: egress only to server on 80/TCP, and an enforced ingress that allows nothing:
/// replies of its own flows must still reach it.
const CLIENT_LOCKED_DOWN: &str = r#"---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  ingress:
  - fromEndpoints: [{matchLabels: {app: nobody}}]
"#;

// SEMANTICS 2.1 and 3.1 in the kernel: ingress allow and default-deny drop, egress allow and
// default-deny drop, replies of allowed flows through an enforced default-deny ingress,
// and the drop reported by `node-agent monitor --type drop` with both identities.
#[test]
fn l3_l4_allow_and_drop_in_both_directions() {
    let policy = format!("{}{CLIENT_LOCKED_DOWN}", server_ingress(""));
    let mut c = DpCluster::start("dpl4", 1, &three_pods(), &policy);
    let server_log = c.serve_http("server", 80);
    c.serve_http("server", 81);
    c.serve_http("other", 80);
    c.serve_http("client", 80);

    // Monitor first, so it sees the drops below as they happen.
    let mut monitor = c.nodes[0]
        .node
        .ns
        .command(integration::binary("node-agent", "node-agent"));
    monitor
        .args(["monitor", "--type", "drop", "--xds-socket"])
        .arg(&c.nodes[0].socket)
        .stdout(std::process::Stdio::piped());
    let mut monitor = Process(monitor.spawn().expect("start node-agent monitor"));
    let monitor_out = monitor.0.stdout.take().expect("monitor stdout");
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    {
        let lines = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(monitor_out)
                .lines()
                .map_while(Result::ok)
            {
                lines.lock().expect("lines").push(line);
            }
        });
    }

    // Allowed: client -> server:80 (egress and ingress allowed); the answer comes back
    // through client's enforced ingress because it is a reply.
    assert_eq!(c.status("client", "server", 80, "/"), 200);
    let peers: Vec<String> = DpCluster::received(&server_log)
        .iter()
        .map(|r| r["peer"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        peers.iter().all(|p| p.starts_with("10.71.0.10:")),
        "the server saw the client's own address: {peers:?}"
    );
    // Ingress drop: other is not allowed into server.
    assert_eq!(c.status("other", "server", 80, "/"), 0);
    // Ingress drop: client may not reach server's port 81.
    assert_eq!(c.status("client", "server", 81, "/"), 0);
    // Egress drop: client may only talk to server.
    assert_eq!(c.status("client", "other", 80, "/"), 0);
    // Ingress of client is enforced: nobody may open a flow to it.
    assert_eq!(c.status("server", "client", 80, "/"), 0);
    // Not selected by any policy in that direction: other's egress and ingress are open.
    assert_eq!(c.status("other", "client", 80, "/"), 0, "client's ingress");
    assert_eq!(c.status("server", "other", 80, "/"), 200);

    // The monitor saw the drop of other -> server with both identities.
    let identities = identities_of(&c, &["other", "server"]);
    let expected = format!("identity {}->{}", identities[0], identities[1]);
    c.wait_until("monitor to print the drop", |_| {
        lines.lock().expect("lines").iter().any(|l| {
            l.contains("drop (Policy denied)")
                && l.contains(&expected)
                && l.contains("10.71.0.30:")
                && l.contains("-> 10.71.0.20:80 tcp")
        })
    });
    drop(monitor);
}

/// Each pod's identity as the agent's flow records (`observe -o json`) report it.
fn identities_of(c: &DpCluster, pods: &[&str]) -> Vec<u32> {
    let output = c.agent_cli(0, &["observe", "-o", "json", "--last", "1000"]);
    let text = String::from_utf8_lossy(&output.stdout);
    pods.iter()
        .map(|pod| {
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find_map(|flow| {
                    ["source", "destination"].iter().find_map(|side| {
                        (flow[side]["pod_name"] == *pod)
                            .then(|| flow[side]["identity"].as_u64())
                            .flatten()
                    })
                })
                .unwrap_or_else(|| panic!("no flow record names {pod}: {text}")) as u32
        })
        .collect()
}

// SEMANTICS 3-4 on ingress, same node: the program of the client's device sends the flow
// to the ingress proxy, which answers 403 for what the rules do not allow; allowed
// requests reach the server from the client's own address.
#[test]
fn l7_ingress_allow_and_403_same_node() {
    let mut c = DpCluster::start("dpl7i", 1, &three_pods(), &server_ingress(HTTP_RULES));
    let log = c.serve_http("server", 80);
    assert_eq!(c.get("client", "server", 80, "/public/a").0, 200);
    assert_eq!(
        c.get("client", "server", 80, "/private"),
        (403, DENIED_BODY.to_string())
    );
    // L3 still applies before L7: other is dropped in the kernel, not answered 403.
    assert_eq!(c.status("other", "server", 80, "/public/a"), 0);
    let received = DpCluster::received(&log);
    assert_eq!(received.len(), 1, "only the allowed request: {received:?}");
    assert_eq!(received[0]["path"], "/public/a");
    assert!(
        received[0]["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("10.71.0.10:")),
        "the proxy kept the client's address: {received:?}"
    );
}

// SEMANTICS 3-4 on egress: the client's own egress rules through the egress proxy, to a
// server that has no policy.
#[test]
fn l7_egress_allow_and_403() {
    let policy = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/public.*"}]
"#;
    let mut c = DpCluster::start("dpl7e", 1, &three_pods(), policy);
    let log = c.serve_http("server", 80);
    c.serve_http("other", 80);
    assert_eq!(c.get("client", "server", 80, "/public/x").0, 200);
    assert_eq!(
        c.get("client", "server", 80, "/admin"),
        (403, DENIED_BODY.to_string())
    );
    assert_eq!(
        c.status("client", "other", 80, "/public/x"),
        0,
        "egress default deny"
    );
    let received = DpCluster::received(&log);
    assert_eq!(received.len(), 1, "{received:?}");
    assert!(
        received[0]["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("10.71.0.10:"))
    );
}

// A policy change applies to new connections without restarting anything: allow ->
// L7 rules -> removed (default deny).
#[test]
fn policy_change_without_restart() {
    let mut c = DpCluster::start("dpchg", 1, &three_pods(), &server_ingress(""));
    c.serve_http("server", 80);
    assert_eq!(c.status("client", "server", 80, "/private"), 200);

    c.write_policy(&server_ingress(HTTP_RULES));
    c.eventually("L7 rules in force", 403, |c| {
        c.status("client", "server", 80, "/private")
    });
    assert_eq!(c.status("client", "server", 80, "/public"), 200);

    // Only other may come in now: client is dropped in the kernel.
    c.write_policy(&server_ingress("").replace("app: client", "app: other"));
    c.eventually("client dropped", 0, |c| {
        c.status("client", "server", 80, "/public")
    });
    assert_eq!(c.status("other", "server", 80, "/public"), 200);
}

// Fail closed: with the proxy stopped, redirected flows fail (no answer, never the
// server's), while flows that need no proxy keep working; the drop says why.
#[test]
fn proxy_stopped_fails_closed() {
    let policy = format!(
        "{}  - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n    toPorts: [{{ports: [{{port: \"81\", protocol: TCP}}]}}]\n",
        server_ingress(HTTP_RULES)
    );
    let mut c = DpCluster::start("dpdown", 1, &three_pods(), &policy);
    let log = c.serve_http("server", 80);
    c.serve_http("server", 81);
    assert_eq!(c.status("client", "server", 80, "/public"), 200);
    c.stop_proxy(0);
    for _ in 0..3 {
        assert_eq!(c.status("client", "server", 80, "/public"), 0);
    }
    assert_eq!(
        DpCluster::received(&log).len(),
        1,
        "nothing bypassed the proxy"
    );
    assert_eq!(
        c.status("client", "server", 81, "/"),
        200,
        "L3/L4-only flows still pass"
    );
    let output = c.agent_cli(
        0,
        &[
            "observe",
            "-o",
            "json",
            "--verdict",
            "DROPPED",
            "--last",
            "100",
        ],
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(r#""drop_reason_desc":"PROXY_UNAVAILABLE""#)
            && text.contains(r#""pod_name":"server""#),
        "the drop of the redirected flow names the missing proxy: {text}"
    );

    c.start_proxy(0);
    c.wait_ready(0);
    c.eventually("proxy back", 200, |c| {
        c.status("client", "server", 80, "/public")
    });
}

// kill -9 of the agent while traffic runs: the pinned maps and attached programs keep
// enforcing (allowed stays allowed, denied stays denied), and the restarted agent adopts
// them and converges on a policy changed while it was down.
#[test]
fn agent_killed_keeps_enforcing_and_converges() {
    let mut c = DpCluster::start("dpkill", 1, &three_pods(), &server_ingress(""));
    c.serve_http("server", 80);
    c.serve_http("server", 81);

    // Traffic while the agent dies: one request every 100 ms for 4 s from client.
    let mut traffic = c.pod("client").ns.command("sh");
    traffic.args([
        "-c",
        "ok=0; bad=0; for i in $(seq 40); do if curl -s -o /dev/null --max-time 2 http://10.71.0.20/; then ok=$((ok+1)); else bad=$((bad+1)); fi; sleep 0.1; done; echo $ok $bad",
    ]);
    traffic.stdout(std::process::Stdio::piped());
    let traffic = traffic.spawn().expect("traffic loop");
    std::thread::sleep(std::time::Duration::from_millis(500));
    c.kill_agent(0);
    assert_eq!(
        c.status("other", "server", 80, "/"),
        0,
        "denied stays denied"
    );
    assert_eq!(
        c.status("client", "server", 81, "/"),
        0,
        "denied port stays denied"
    );
    let output = traffic.wait_with_output().expect("traffic loop output");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "40 0",
        "every request of the allowed flow succeeded across the kill"
    );

    // Changed while the agent is down: now other may come in and client may not, and a
    // new pod listed first would take the lowest identity number if numbers were handed
    // out afresh.
    c.write_policy(&server_ingress("").replace("app: client", "app: other"));
    let mut pods = vec![pod("aardvark", [10, 71, 0, 40], "{app: aardvark}", 0)];
    pods.extend(three_pods());
    c.write_pods(&pods);
    assert_eq!(
        c.status("client", "server", 80, "/"),
        200,
        "old policy until the agent is back"
    );
    c.start_agent(0);
    c.wait_ready(0);
    c.eventually("converged: client dropped", 0, |c| {
        c.status("client", "server", 80, "/")
    });
    assert_eq!(c.status("other", "server", 80, "/"), 200);
    let log = c.agent_log(0);
    assert!(
        log.contains("adopted_policy="),
        "the restarted agent adopted the pinned maps"
    );
    // The existing pods kept their identities (hinted from the pinned ipcache): the only
    // new ipcache entry is the new pod's address.
    assert!(
        log.contains("ipcache_upserts=1 "),
        "existing identities kept: {log}"
    );
}

// SEMANTICS 7: the visibility annotation sends allowed traffic through the proxy (so it is
// logged as HTTP) without changing any verdict.
#[test]
fn visibility_annotation_logs_without_changing_verdicts() {
    let mut pods = three_pods();
    pods[1].annotations = r#"{"policy.cilium.io/proxy-visibility": "<Ingress/80/TCP/HTTP>"}"#;
    let mut c = DpCluster::start("dpvis", 1, &pods, &server_ingress(""));
    let log = c.serve_http("server", 80);
    assert_eq!(c.status("client", "server", 80, "/anything"), 200);
    assert_eq!(
        c.status("other", "server", 80, "/anything"),
        0,
        "still denied"
    );
    assert_eq!(DpCluster::received(&log).len(), 1);
    c.eventually("an HTTP flow record of the allowed request", true, |c| {
        let output = c.agent_cli(0, &["observe", "-o", "json", "--last", "200"]);
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .any(|l| l.contains("/anything") && l.contains("FORWARDED"))
    });
}

/// One keep-alive connection to port 80 of argv[1]: a GET for every input line, printing
/// the status or `ERROR <kind>`; never reconnects, so an answer proves the same flow.
const ONE_CONNECTION_CLIENT: &str = r#"
import http.client, sys
conn = http.client.HTTPConnection(sys.argv[1], 80, timeout=3)
conn.connect()
conn.auto_open = 0
for line in sys.stdin:
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        print(response.status, flush=True)
    except Exception as e:
        print("ERROR", type(e).__name__, flush=True)
"#;

// A policy change reaches established flows too: a keep-alive connection whose flow the
// new policy denies is cut (the agent removes its conntrack entry, so its next packet is
// looked up again and dropped), instead of living on with the old verdict.
#[test]
fn established_flow_that_loses_access_is_cut() {
    use std::io::{BufRead, BufReader, Write};
    let mut c = DpCluster::start("dpcut", 1, &three_pods(), &server_ingress(""));
    c.serve_http("server", 80);
    let mut client = c.pod("client").ns.command("python3");
    client
        .args(["-u", "-c", ONE_CONNECTION_CLIENT, "10.71.0.20"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut client = Process(client.spawn().expect("start the client"));
    let mut input = client.0.stdin.take().expect("client stdin");
    let mut output = BufReader::new(client.0.stdout.take().expect("client stdout"));
    let mut ask = |input: &mut std::process::ChildStdin| {
        writeln!(input, "go").expect("write to the client");
        let mut line = String::new();
        output.read_line(&mut line).expect("read the client");
        line.trim().to_string()
    };
    assert_eq!(ask(&mut input), "200");
    assert_eq!(ask(&mut input), "200", "the connection is kept alive");

    c.write_policy(&server_ingress("").replace("app: client", "app: other"));
    c.eventually("new connections from client dropped", 0, |c| {
        c.status("client", "server", 80, "/")
    });
    let after = ask(&mut input);
    assert!(
        after.starts_with("ERROR"),
        "the established connection was cut: {after}"
    );
    assert!(c.agent_log(0).contains("conntrack entries removed"));
}

// Pods come and go: a pod added to the cluster gets the programs on its device within the
// agent's refresh, and a pod removed loses them (and its map entries).
#[test]
fn programs_follow_pods_coming_and_going() {
    let pods = three_pods();
    let mut c = DpCluster::start("dppods", 1, &pods[..2], &server_ingress(""));
    // `other` is wired to the node but not in the cluster yet: no program on its device.
    let other_device = c.nodes[0]
        .node
        .add_pod("other", std::net::Ipv4Addr::new(10, 71, 0, 30))
        .host_device
        .clone();
    c.nodes[0].pod_names.push("other");
    let has_program = |c: &DpCluster, device: &str| {
        let filters = c.nodes[0]
            .node
            .ns
            .output("tc", &["filter", "show", "dev", device, "ingress"]);
        String::from_utf8_lossy(&filters.stdout).contains("from_pod")
    };
    assert!(!has_program(&c, &other_device));
    c.serve_http("server", 80);
    // Unknown to the cluster, other is world to the server's policy: dropped there.
    assert_eq!(c.status("other", "server", 80, "/"), 0);

    c.write_pods(&pods);
    c.eventually("other's device programmed", true, |c| {
        has_program(c, &other_device)
    });
    c.write_pods(&pods[..2]);
    c.eventually("other's device released", false, |c| {
        has_program(c, &other_device)
    });
    assert!(
        c.agent_log(0).contains("detached=[\""),
        "the agent reported the detach"
    );
}

// Under connection churn the proxy lets the client close first, so the node keeps no
// TIME_WAIT socket on redirected tuples: a tuple held in TIME_WAIT could not be redirected
// again (the kernel refuses the new SYN's request socket), and a client reusing its port
// within a minute would stall.
#[test]
fn proxied_connections_leave_no_time_wait_in_the_node() {
    let mut c = DpCluster::start("dptw", 1, &three_pods(), &server_ingress(HTTP_RULES));
    c.serve_http("server", 80);
    let url = "http://10.71.0.20/public/churn";
    for _ in 0..20 {
        assert_eq!(
            c.request("client", url, &["-H", "Connection: close"]).0,
            200
        );
    }
    let ss = c.nodes[0]
        .node
        .ns
        .exec("ss", &["-Htan", "state", "time-wait"]);
    let text = String::from_utf8_lossy(&ss.stdout);
    let held: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("10.71.0.20:80 "))
        .collect();
    assert!(
        held.is_empty(),
        "TIME_WAIT on the redirected tuples: {held:?}"
    );
}

// Bad datapath flags stop the agent at start with a message naming what is wrong, before it
// serves any policy.
#[test]
fn bad_datapath_flags_are_clear_errors() {
    let node = integration::netns::Node::new("dpflags");
    let dir = tempfile::tempdir().expect("temp dir");
    let pins = std::path::Path::new("/sys/fs/bpf/sidecarless").join(node.ns.name());
    let run = |extra: &[&str]| {
        let output = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", node.ns.name()))
            .arg(integration::binary("node-agent", "node-agent"))
            .args(["run", "--node-name", "node1", "--source"])
            .arg(format!("dir:{}", dir.path().display()))
            .arg("--xds-socket")
            .arg(dir.path().join("agent.sock"))
            .arg("--fqdn-state")
            .arg(dir.path().join("fqdn-cache.json"))
            .args(extra)
            .env("NO_COLOR", "1")
            .output()
            .expect("run node-agent");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let pin_arg = pins.display().to_string();
    let (ok, stderr) = run(&["--bpf-dir", &pin_arg, "--uplink", "no-such-dev"]);
    assert!(!ok);
    assert!(
        stderr.contains("uplink device no-such-dev does not exist"),
        "{stderr}"
    );
    let (ok, stderr) = run(&["--bpf-dir", dir.path().to_str().expect("utf-8 path")]);
    assert!(!ok, "pinning outside bpffs must fail");
    assert!(stderr.contains("loading the BPF object"), "{stderr}");
    let _ = std::fs::remove_dir_all(&pins);
}
