//! `node-agent observe` and `monitor` against the real RPCs: an agent's policy server with
//! its `Hooks` on a unix socket in a temp dir, a datapath event pushed as the ring-buffer
//! reader would, a flow batch reported as a proxy would, and the CLI's client code reading.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use node_agent::agent::Hooks;
use node_agent::cli::monitor::{self, EventType, MonitorArgs};
use node_agent::cli::observe::{self, Format};
use node_agent::compiler::EndpointScope;
use node_agent::datapath::abi::{
    DP_ACT_ALLOW, DP_ACT_DENY, DP_DIR_INGRESS, DP_DROP_DEFAULT_DENY, DP_EVENT_DROP,
    DP_EVENT_POLICY_VERDICT, DP_FAMILY_IPV4, DP_MATCH_L3_L4, DpEvent,
};
use tokio::sync::watch;
use xds::client::Endpoint;
use xds::server::{PolicyServer, Snapshot};
use xds::{FlowReporter, proto};

const WAIT: Duration = Duration::from_secs(10);

const PODS: &str = "\
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: tiefighter, namespace: default, labels: {org: empire}},
   spec: {nodeName: n1, containers: [{name: c, image: i}]}, status: {podIP: 10.0.0.1}}
- {apiVersion: v1, kind: Pod, metadata: {name: deathstar, namespace: default, labels: {org: empire, class: deathstar}},
   spec: {nodeName: n1, containers: [{name: c, image: i}]}, status: {podIP: 10.0.0.2}}
";

struct Agent {
    hooks: Arc<Hooks>,
    endpoint: Endpoint,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let manifests = dir.path().join("pods.yaml");
        std::fs::write(&manifests, PODS).expect("manifests");
        let (compiler, errors) =
            node_agent::cli::load_compiler(&[manifests], EndpointScope::AllPods)
                .expect("manifests load");
        assert!(errors.is_empty(), "{errors:?}");
        let hooks = Arc::new(Hooks::new(100));
        hooks.update_names(&compiler);

        let socket = dir.path().join("agent.sock");
        let listener = xds::bind_unix(&socket).expect("socket");
        let (_, snapshots) = watch::channel(Arc::new(Snapshot::default()));
        let server = PolicyServer::new(snapshots, hooks.clone());
        let (stop, mut stopped) = watch::channel(false);
        tokio::spawn(server.serve_unix_listener(listener, async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        Agent {
            hooks,
            endpoint: Endpoint::Unix(socket),
            stop,
            _dir: dir,
        }
    }
}

fn event(kind: u8, sport: u16) -> DpEvent {
    let mut event = DpEvent {
        r#type: kind,
        reason: if kind == DP_EVENT_DROP {
            DP_DROP_DEFAULT_DENY
        } else {
            0
        },
        action: if kind == DP_EVENT_DROP {
            DP_ACT_DENY
        } else {
            DP_ACT_ALLOW
        },
        r#match: DP_MATCH_L3_L4,
        direction: DP_DIR_INGRESS,
        family: DP_FAMILY_IPV4,
        protocol: 6,
        ifindex: 9,
        endpoint_id: 12,
        src_identity: 256,
        dst_identity: 257,
        sport: sport.to_be(),
        dport: 80u16.to_be(),
        ..DpEvent::default()
    };
    event.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
    event.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
    event
}

fn l7_record() -> proto::FlowRecord {
    let end = |ip: &str, port| proto::FlowEndpoint {
        ip: ip.into(),
        port,
        identity: 0,
        ..proto::FlowEndpoint::default()
    };
    proto::FlowRecord {
        time_unix_nano: 1,
        verdict: "FORWARDED".into(),
        traffic_direction: "INGRESS".into(),
        source: Some(end("10.0.0.1", 41234)),
        destination: Some(end("10.0.0.2", 80)),
        l4_protocol: "TCP".into(),
        l7: Some(proto::flow_record::L7::Http(proto::HttpFlow {
            method: "POST".into(),
            url: "http://deathstar/v1/request-landing".into(),
            protocol: "HTTP/1.1".into(),
            ..proto::HttpFlow::default()
        })),
        ..proto::FlowRecord::default()
    }
}

async fn observe_lines(agent: &Agent, args: &[&str], format: Format) -> Vec<String> {
    use clap::Parser;
    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(flatten)]
        args: observe::ObserveArgs,
    }
    let args = Wrap::try_parse_from(std::iter::once("observe").chain(args.iter().copied()))
        .expect("arguments")
        .args;
    let mut out = Vec::new();
    tokio::time::timeout(
        WAIT,
        observe::observe(&agent.endpoint, args.request(), format, &mut out, None),
    )
    .await
    .expect("observe ends")
    .expect("observe");
    String::from_utf8(out)
        .expect("UTF-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Runs `monitor` for `types` until it printed one line, pushing events meanwhile (the
/// monitor only sees what happens after it subscribed).
async fn monitor_one(agent: &Agent, types: Vec<EventType>, push: impl Fn(&Hooks)) -> String {
    let args = MonitorArgs {
        xds_socket: Path::new("unused").to_owned(),
        types,
    };
    let endpoint = agent.endpoint.clone();
    let request = args.request();
    let task = tokio::spawn(async move {
        let mut out = Vec::new();
        monitor::monitor(&endpoint, request, &mut out, Some(1))
            .await
            .map(|()| out)
    });
    tokio::time::timeout(WAIT, async {
        while !task.is_finished() {
            push(&agent.hooks);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the monitor printed a line");
    let out = task.await.expect("task").expect("monitor");
    String::from_utf8(out).expect("UTF-8").trim_end().to_owned()
}

#[tokio::test]
async fn observe_and_monitor_over_the_policy_socket() {
    let agent = Agent::start();

    // A drop from the datapath, then an L7 record reported by a "proxy".
    agent.hooks.datapath_event(&event(DP_EVENT_DROP, 52908));
    let reporter = FlowReporter::start(agent.endpoint.clone(), "l7-proxy/test", 16);
    assert!(reporter.report(l7_record()));
    tokio::time::timeout(WAIT, async {
        while agent.hooks.counts().0 < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the flow batch arrives");

    let lines = observe_lines(&agent, &[], Format::Compact).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].ends_with(
            "default/tiefighter:52908 (ID:256) -> default/deathstar:80 (ID:257) \
             Policy denied DROPPED (TCP)"
        ),
        "{}",
        lines[0]
    );
    // The proxy named neither end nor their identities: the agent did (pod identities are
    // 256 and 257, in an order of the compiler's choosing).
    for part in [
        "default/tiefighter:41234 (ID:25",
        "-> default/deathstar:80 (ID:25",
        "http-request FORWARDED (HTTP/1.1 POST http://deathstar/v1/request-landing)",
    ] {
        assert!(lines[1].contains(part), "{}", lines[1]);
    }

    // Filters and --last.
    let dropped = observe_lines(&agent, &["--verdict", "DROPPED"], Format::Compact).await;
    assert_eq!(dropped.len(), 1);
    assert!(dropped[0].contains("Policy denied DROPPED"));
    let to_deathstar =
        observe_lines(&agent, &["--to-pod", "default/deathstar"], Format::Compact).await;
    assert_eq!(to_deathstar.len(), 2);
    let from_other = observe_lines(&agent, &["--from-pod", "kube-system/"], Format::Compact).await;
    assert!(from_other.is_empty());
    let last = observe_lines(&agent, &["--last", "1"], Format::Compact).await;
    assert_eq!(last.len(), 1);
    assert!(last[0].contains("http-request"));

    // JSON, one object per line, with the names the agent filled in.
    let json = observe_lines(&agent, &[], Format::Json).await;
    assert_eq!(json.len(), 2);
    let drop: serde_json::Value = serde_json::from_str(&json[0]).expect("JSON");
    assert_eq!(drop["verdict"], "DROPPED");
    assert_eq!(drop["drop_reason_desc"], "POLICY_DENIED");
    assert_eq!(drop["source"]["pod_name"], "tiefighter");
    assert_eq!(drop["source"]["namespace"], "default");
    assert!(
        drop["source"]["labels"]
            .as_array()
            .expect("labels")
            .iter()
            .any(|l| l == "k8s:org=empire"),
        "{drop}"
    );
    let http: serde_json::Value = serde_json::from_str(&json[1]).expect("JSON");
    assert_eq!(http["Type"], "L7");
    assert_eq!(http["destination"]["pod_name"], "deathstar");

    // Follow: new records arrive after the held ones.
    let follow = {
        let endpoint = agent.endpoint.clone();
        tokio::spawn(async move {
            let request = proto::ObserveRequest {
                follow: true,
                last: Some(0),
                filter: Some(proto::FlowFilter {
                    verdicts: vec!["DROPPED".into()],
                    ..proto::FlowFilter::default()
                }),
            };
            let mut out = Vec::new();
            observe::observe(&endpoint, request, Format::Compact, &mut out, Some(1))
                .await
                .map(|()| out)
        })
    };
    tokio::time::timeout(WAIT, async {
        while !follow.is_finished() {
            agent.hooks.datapath_event(&event(DP_EVENT_DROP, 40000));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("observe --follow printed a new record");
    let followed = String::from_utf8(follow.await.expect("task").expect("observe")).expect("UTF-8");
    assert!(followed.contains(":40000 (ID:256) -> "), "{followed}");

    // Monitor, one type at a time; the other types pushed meanwhile are not printed.
    let push_all = |hooks: &Hooks| {
        hooks.datapath_event(&event(DP_EVENT_POLICY_VERDICT, 50000));
        hooks.datapath_event(&event(DP_EVENT_DROP, 50001));
        reporter.report(l7_record());
    };
    let drop = monitor_one(&agent, vec![EventType::Drop], push_all).await;
    assert!(
        drop.starts_with("xx drop (Policy denied) flow 0x"),
        "{drop}"
    );
    assert!(
        drop.ends_with(
            "to endpoint 12, ifindex 9, file datapath, , identity 256->257: \
             10.0.0.1:50001 -> 10.0.0.2:80 tcp"
        ),
        "{drop}"
    );
    let verdict = monitor_one(&agent, vec![EventType::PolicyVerdict], push_all).await;
    assert!(
        verdict.starts_with("Policy verdict log: flow 0x"),
        "{verdict}"
    );
    assert!(
        verdict.ends_with(
            "local EP ID 12, remote ID 256, proto 6, ingress, action allow, auth: disabled, \
             match L3-L4, 10.0.0.1:50000 -> 10.0.0.2:80 tcp"
        ),
        "{verdict}"
    );
    let l7 = monitor_one(&agent, vec![EventType::L7], push_all).await;
    assert!(l7.starts_with("<- Request http from 0 ([k8s:"), "{l7}");
    assert!(l7.contains("k8s:org=empire"), "{l7}");
    assert!(
        l7.ends_with("verdict Forwarded POST http://deathstar/v1/request-landing => 0"),
        "{l7}"
    );

    agent.stop.send_replace(true);
}
