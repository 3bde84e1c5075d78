//! Policy change to enforcement: the time from writing a policy file to the proxy's ACK of
//! the new version, with 5,000 local endpoints and 1,000 policies loaded, and the bytes the
//! change cost on the stream. The agent runs in this process (release build); the proxy
//! is a real `xds` client over a unix socket.
//!
//! `cargo bench -p integration --bench policy_change`

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use node_agent::agent::{self, AgentConfig};
use node_agent::synthetic::{PODS, POLICIES, pods, policy};
use xds::client::{AgentClient, ClientBuilder, Endpoint, TypeHandler};
use xds::proto;

const ROUNDS: usize = 30;

/// Counts resources: the proxy side of the benchmark does no work of its own.
struct Count;

impl TypeHandler for Count {
    type State = usize;

    fn type_url(&self) -> &'static str {
        xds::NETWORK_POLICY_TYPE
    }

    fn build(
        &self,
        resources: &BTreeMap<String, Arc<proto::Resource>>,
    ) -> Result<usize, Vec<(String, String)>> {
        Ok(resources.len())
    }
}

struct Stats {
    acked_version: String,
    bytes: u64,
    resources: u64,
}

async fn client_stats(agent: &AgentClient) -> Option<Stats> {
    let status = agent.status().await.ok()?;
    let t = status
        .clients
        .first()?
        .types
        .iter()
        .find(|t| t.type_url == xds::NETWORK_POLICY_TYPE)?;
    Some(Stats {
        acked_version: t.acked_version.clone(),
        bytes: t.bytes_sent,
        resources: t.resources_sent,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn write_policies(dir: &Path) {
    std::fs::write(dir.join("pods.yaml"), pods(1)).expect("write pods");
    for chunk in 0..10 {
        let text: String = (chunk * POLICIES / 10..(chunk + 1) * POLICIES / 10)
            .filter(|i| *i != 0)
            .map(|i| policy(i, 80))
            .collect();
        std::fs::write(dir.join(format!("policies-{chunk}.yaml")), text).expect("write");
    }
    std::fs::write(dir.join("changing.yaml"), policy(0, 80)).expect("write");
}

fn main() {
    if std::env::var_os("BENCH_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("BENCH_LOG"))
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let manifests = dir.path().join("manifests");
        std::fs::create_dir(&manifests).expect("mkdir");
        write_policies(&manifests);
        let socket = dir.path().join("agent.sock");
        let config = AgentConfig {
            source_dir: manifests.clone(),
            node_name: "node0".into(),
            socket: socket.clone(),
            tcp: None,
            flow_buffer: 1000,
            datapath: None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let started = Instant::now();
        let agent_task = tokio::spawn(agent::run(config, async {
            let _ = stopped.await;
        }));

        let endpoint = Endpoint::Unix(socket.clone());
        let mut builder = ClientBuilder::new(
            endpoint.clone(),
            proto::ClientInfo { id: "bench-proxy".into(), kind: "l7-proxy".into(), ..Default::default() },
        )
        .backoff(Duration::from_millis(5), Duration::from_millis(50));
        let mut policies = builder.subscribe(Count);
        let client = builder.start();
        loop {
            if policies.borrow_and_update().as_ref().is_some_and(|s| s.state == PODS) {
                break;
            }
            policies.changed().await.expect("client alive");
        }
        println!("initial load: {} endpoints, {} policies, first snapshot ACKed after {:?}", PODS, POLICIES, started.elapsed());
        let agent = AgentClient::new(endpoint).expect("agent client");
        let initial = client_stats(&agent).await.expect("status");
        println!("initial sync: {} resources, {} bytes", initial.resources, initial.bytes);

        // Files younger than the directory source's trust window (2 s) are re-read on every
        // rescan; let the freshly written folder age so rounds measure one changed file.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let mut to_state = Vec::new();
        let mut to_ack = Vec::new();
        let mut bytes = Vec::new();
        let mut resources = Vec::new();
        let mut last = client_stats(&agent).await.expect("status");
        for round in 0..ROUNDS {
            // A 1-rule change: policy 0's port flips between 80 and 81.
            let port = if round % 2 == 0 { 81 } else { 80 };
            let before = policies.borrow_and_update().as_ref().map(|s| s.version.clone());
            let t0 = Instant::now();
            std::fs::write(manifests.join("changing.yaml"), policy(0, port)).expect("write");
            let waited = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    policies.changed().await.expect("client alive");
                    let now = policies.borrow_and_update().as_ref().map(|s| s.version.clone());
                    if now != before {
                        break now.unwrap_or_default();
                    }
                }
            })
            .await;
            let Ok(version) = waited else {
                panic!(
                    "round {round}: no new version within 10 s; client {:?}, agent {:?}",
                    client.status(),
                    agent.status().await
                );
            };
            to_state.push(t0.elapsed());
            if std::env::var_os("BENCH_LOG").is_some() {
                eprintln!("round {round}: new version after {:?}", t0.elapsed());
            }
            let waited = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    if let Some(stats) = client_stats(&agent).await
                        && stats.acked_version == version
                    {
                        break stats;
                    }
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            })
            .await;
            let Ok(stats) = waited else {
                panic!("round {round}: version {version} not ACKed within 10 s; agent {:?}", agent.status().await);
            };
            to_ack.push(t0.elapsed());
            bytes.push(stats.bytes - last.bytes);
            resources.push(stats.resources - last.resources);
            last = stats;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        to_state.sort();
        to_ack.sort();
        println!("policy file change -> proxy has the new version ({ROUNDS} rounds): p50 {:?} p90 {:?} max {:?}",
            percentile(&to_state, 0.5), percentile(&to_state, 0.9), percentile(&to_state, 1.0));
        println!("policy file change -> agent has the proxy's ACK (status polled every 200 us): p50 {:?} p90 {:?} max {:?}",
            percentile(&to_ack, 0.5), percentile(&to_ack, 0.9), percentile(&to_ack, 1.0));
        bytes.sort();
        resources.sort();
        println!("per change on the stream: {} resources, {} bytes (median)", resources[resources.len() / 2], bytes[bytes.len() / 2]);
        println!("note: the directory watch waits for 10 ms of quiet before it rescans; that debounce is part of these numbers");
        client.shutdown().await;
        let _ = stop.send(());
        let _ = agent_task.await;
    });
}
