//! toFQDNs through the running agent (no datapath): `ObserveFqdn` and `FqdnCache` over the
//! socket reach the event loop, the counters reach `Status`, and the cache file written
//! at shutdown is restored by the next agent.

use std::path::Path;
use std::time::Duration;

use node_agent::agent::{self, AgentConfig, FqdnSettings};
use tokio::sync::oneshot;
use xds::client::Endpoint;
use xds::{AgentClient, proto};

const WAIT: Duration = Duration::from_secs(10);

const OBJECTS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {app: client}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {podIP: 10.0.0.1}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-api, namespace: default}
spec:
  endpointSelector: {}
  egress:
  - toFQDNs: [{matchPattern: "*.example.com"}]
"#;

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), agent::AgentError>>,
    client: AgentClient,
}

async fn start(dir: &Path) -> Running {
    let socket = dir.join("agent.sock");
    let _ = std::fs::remove_file(&socket);
    let config = AgentConfig {
        source_dir: dir.join("manifests"),
        node_name: "n1".into(),
        socket: socket.clone(),
        tcp: None,
        flow_buffer: 10,
        datapath: None,
    };
    let settings = FqdnSettings {
        state_file: Some(dir.join("state/fqdn-cache.json")),
        ..FqdnSettings::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(agent::run_with_fqdn(config, settings, async {
        let _ = stopped.await;
    }));
    let endpoint = Endpoint::Unix(socket);
    let client = AgentClient::new(endpoint.clone()).expect("client");
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(status) = xds::fetch_status(&endpoint).await
                && status.ready
                && status.fqdn.is_some()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the agent is ready");
    Running { stop, task, client }
}

async fn stop(running: Running) {
    let _ = running.stop.send(());
    tokio::time::timeout(WAIT, running.task)
        .await
        .expect("the agent stops")
        .expect("joined")
        .expect("ran without error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observations_reach_the_loop_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("manifests")).expect("mkdir");
    std::fs::write(dir.path().join("manifests/objects.yaml"), OBJECTS).expect("write");

    let running = start(dir.path()).await;
    let result = running
        .client
        .observe_fqdn(proto::FqdnObservation {
            endpoint: "default/client".into(),
            name: "api.example.com.".into(),
            ips: vec!["192.0.2.1".into()],
            ttl_seconds: 300,
        })
        .await
        .expect("answered");
    assert!(result.allowed, "{result:?}");
    let unknown = running
        .client
        .observe_fqdn(proto::FqdnObservation {
            endpoint: "default/nobody".into(),
            name: "api.example.com.".into(),
            ips: vec!["192.0.2.2".into()],
            ttl_seconds: 300,
        })
        .await
        .expect("answered");
    assert!(!unknown.allowed);
    let listed = running.client.fqdn_cache("").await.expect("listed");
    assert_eq!(listed.entries.len(), 1);
    assert_eq!(listed.entries[0].ip, "192.0.2.1");
    assert_eq!(listed.entries[0].source, "lookup");
    let bad = running.client.fqdn_cache("no-slash").await;
    assert!(bad.is_err());
    let status = running.client.status().await.expect("status");
    let metrics = status.fqdn.expect("FQDN counters");
    assert_eq!(
        (metrics.entries, metrics.identities, metrics.refused),
        (1, 1, 1)
    );
    stop(running).await;
    assert!(dir.path().join("state/fqdn-cache.json").exists());

    let running = start(dir.path()).await;
    let listed = running
        .client
        .fqdn_cache("default/client")
        .await
        .expect("listed");
    assert_eq!(listed.entries.len(), 1);
    assert_eq!(listed.entries[0].source, "restored");
    assert_eq!(listed.metrics.map(|m| m.identities), Some(1));
    stop(running).await;
}
