//! The policy stream end to end: the real `node-agent run` binary on a folder of manifests,
//! and a proxy-side `xds` client over the unix socket (SEMANTICS 9).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use integration::{AgentProcess, node_agent, workspace_root};
use xds::client::{ClientBuilder, ClientHandle, Endpoint, StateWatch, TypeHandler, Versioned};
use xds::proto;

/// Bound for waits: how long a change may take to arrive, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(60);

/// What a test proxy holds: endpoint name -> its policy.
type Policies = BTreeMap<String, proto::NetworkPolicy>;

/// Decodes the policies like a proxy would, and rejects what this proxy cannot enforce:
/// header values sourced from secrets (it has no access to secrets). That is the
/// client-side validation failure that must NACK.
struct PolicyHandler;

impl TypeHandler for PolicyHandler {
    type State = Policies;

    fn type_url(&self) -> &'static str {
        xds::NETWORK_POLICY_TYPE
    }

    fn build(
        &self,
        resources: &BTreeMap<String, Arc<proto::Resource>>,
    ) -> Result<Policies, Vec<(String, String)>> {
        let mut out = BTreeMap::new();
        let mut errors = Vec::new();
        for (name, resource) in resources {
            let Some(proto::resource::Body::NetworkPolicy(policy)) = &resource.body else {
                errors.push((name.clone(), "not a NetworkPolicy".into()));
                continue;
            };
            let uses_secret = [&policy.ingress, &policy.egress]
                .into_iter()
                .flatten()
                .flat_map(|d| &d.entries)
                .flat_map(|e| &e.http_rule_sets)
                .flat_map(|s| &s.rules)
                .flat_map(|r| &r.header_matches)
                .any(|m| m.secret.is_some());
            if uses_secret {
                errors.push((
                    name.clone(),
                    "header values from secrets are not supported by this proxy".into(),
                ));
                continue;
            }
            out.insert(name.clone(), policy.clone());
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }
}

struct IdentityHandler;

impl TypeHandler for IdentityHandler {
    type State = BTreeMap<u32, proto::Identity>;

    fn type_url(&self) -> &'static str {
        xds::IDENTITY_TYPE
    }

    fn build(
        &self,
        resources: &BTreeMap<String, Arc<proto::Resource>>,
    ) -> Result<Self::State, Vec<(String, String)>> {
        resources
            .values()
            .map(|r| match &r.body {
                Some(proto::resource::Body::Identity(id)) => Ok((id.id, id.clone())),
                _ => Err(vec![(r.name.clone(), "not an Identity".into())]),
            })
            .collect()
    }
}

struct Proxy {
    handle: ClientHandle,
    policies: StateWatch<Policies>,
    identities: StateWatch<BTreeMap<u32, proto::Identity>>,
}

fn proxy(socket: &Path, id: &str) -> Proxy {
    let mut builder = ClientBuilder::new(
        Endpoint::Unix(socket.to_owned()),
        proto::ClientInfo {
            id: id.into(),
            kind: "l7-proxy".into(),
            ..Default::default()
        },
    )
    .backoff(Duration::from_millis(20), Duration::from_millis(200));
    let policies = builder.subscribe(PolicyHandler);
    let identities = builder.subscribe(IdentityHandler);
    Proxy {
        handle: builder.start(),
        policies,
        identities,
    }
}

/// Waits until the published state satisfies `done`, and returns it.
async fn wait_for<S>(
    watch: &mut StateWatch<S>,
    what: &str,
    mut done: impl FnMut(&Versioned<S>) -> bool,
) -> Arc<Versioned<S>> {
    let result = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(state) = watch.borrow_and_update().clone()
                && done(&state)
            {
                return state;
            }
            if watch.changed().await.is_err() {
                panic!("client stopped while waiting for {what}");
            }
        }
    })
    .await;
    match result {
        Ok(state) => state,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

fn copy_example(dir: &Path, file: &str) {
    std::fs::copy(
        workspace_root().join("examples/starwars").join(file),
        dir.join(file),
    )
    .expect("copy example");
}

fn status_json(socket: &Path) -> serde_json::Value {
    let socket = socket.display().to_string();
    let output = node_agent(&["status", "--xds-socket", &socket, "-o", "json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("status -o json")
}

fn redirect_rules(policies: &Policies, endpoint: &str) -> Vec<String> {
    policies[endpoint]
        .ingress
        .iter()
        .flat_map(|d| &d.entries)
        .flat_map(|e| &e.http_rule_sets)
        .flat_map(|s| &s.rules)
        .map(|r| {
            format!(
                "{} {}",
                r.method.clone().unwrap_or_default(),
                r.path.clone().unwrap_or_default()
            )
        })
        .collect()
}

// First sync and ACK; an update after a policy file changes reaches the proxy as a delta;
// a NACK keeps the proxy on its last good version and shows in `node-agent status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_update_and_nack() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("mkdir");
    copy_example(&manifests, "pods.yaml");
    copy_example(&manifests, "sw_l3_l4_policy.yaml");
    let socket = dir.path().join("agent.sock");
    let agent = AgentProcess::start(&manifests, &socket);
    let mut p = proxy(&socket, "l7-proxy/node1/test");

    // First sync: all three endpoints, the identities before them.
    let first = wait_for(&mut p.policies, "first sync", |s| s.state.len() == 3).await;
    let identities = wait_for(&mut p.identities, "identities", |s| !s.state.is_empty()).await;
    let deathstar = &first.state["default/deathstar"];
    let tiefighter_id = first.state["default/tiefighter"].identity;
    assert!(
        identities.state.contains_key(&tiefighter_id),
        "identity map holds the peers"
    );
    assert!(
        redirect_rules(&first.state, "default/deathstar").is_empty(),
        "L3/L4 only"
    );
    assert_eq!(
        deathstar.ingress.as_ref().map(|d| d.default_deny),
        Some(true)
    );

    // The agent records the ACKs (they travel after the client published its state).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let status = status_json(&socket);
        assert_eq!(status["ready"], true);
        let versions = &status["versions"];
        let client = &status["clients"][0];
        assert_eq!(client["id"], "l7-proxy/node1/test");
        let types = client["types"].as_array().expect("types");
        assert!(
            types
                .iter()
                .all(|t| t["last_nack"] == serde_json::Value::Null)
        );
        let all_acked = types
            .iter()
            .all(|t| t["acked_version"] == versions[t["type"].as_str().expect("type")]);
        if all_acked {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ACKs not recorded: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // An update: the L7 policy replaces the L3/L4 one (same object, rule1).
    std::fs::remove_file(manifests.join("sw_l3_l4_policy.yaml")).expect("rm");
    copy_example(&manifests, "sw_l3_l4_l7_policy.yaml");
    let updated = wait_for(&mut p.policies, "the L7 rule", |s| {
        !redirect_rules(&s.state, "default/deathstar").is_empty()
    })
    .await;
    assert_eq!(
        redirect_rules(&updated.state, "default/deathstar"),
        ["POST /v1/request-landing"]
    );
    assert_ne!(updated.version, first.version);
    // Only the deathstar changed; the other endpoints' policies are untouched.
    assert_eq!(updated.state["default/xwing"], first.state["default/xwing"]);

    // A NACK: a policy this proxy cannot enforce.
    std::fs::write(
        manifests.join("secret.yaml"),
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: secret-header, namespace: default}\nspec:\n  endpointSelector: {matchLabels: {class: xwing}}\n  ingress:\n  - toPorts:\n    - ports: [{port: \"80\", protocol: TCP}]\n      rules:\n        http: [{headerMatches: [{name: x-token, secret: {name: token}}]}]\n",
    )
    .expect("write");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let nack = loop {
        let status = status_json(&socket);
        let nacked = status["clients"][0]["types"]
            .as_array()
            .expect("types")
            .iter()
            .find(|t| t["last_nack"] != serde_json::Value::Null)
            .cloned();
        if let Some(t) = nacked {
            break t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no NACK recorded: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = nack["last_nack"]["error"].as_str().expect("error text");
    assert!(error.contains("default/xwing"), "{error}");
    assert!(error.contains("secrets are not supported"), "{error}");
    // The proxy keeps enforcing its last good version.
    let held = p.policies.borrow().clone().expect("state");
    assert_eq!(held.version, updated.version);
    let text = node_agent(&["status", "--xds-socket", &socket.display().to_string()]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("last NACK of version"), "{text}");

    // Fixing the file lets the proxy move on.
    std::fs::remove_file(manifests.join("secret.yaml")).expect("rm");
    wait_for(&mut p.policies, "recovery after the NACK", |s| {
        s.version != updated.version
    })
    .await;

    p.handle.shutdown().await;
    assert!(agent.stop().success());
}

// The agent restarts: the proxy keeps its policy while the agent is gone, then resyncs to
// what the restarted agent computes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("mkdir");
    copy_example(&manifests, "pods.yaml");
    copy_example(&manifests, "sw_l3_l4_l7_policy.yaml");
    let socket = dir.path().join("agent.sock");
    let agent = AgentProcess::start(&manifests, &socket);
    let mut p = proxy(&socket, "l7-proxy/node1/restart");
    let before = wait_for(&mut p.policies, "first sync", |s| s.state.len() == 3).await;
    assert!(agent.stop().success());

    // Gone: the client still publishes the last good state.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!p.handle.status().connected);
    assert_eq!(
        p.policies.borrow().as_ref().map(|s| s.version.clone()),
        Some(before.version.clone())
    );

    // A policy changed while the agent was down; the restarted agent serves it.
    std::fs::remove_file(manifests.join("sw_l3_l4_l7_policy.yaml")).expect("rm");
    copy_example(&manifests, "sw_l3_l4_policy.yaml");
    let agent = AgentProcess::start(&manifests, &socket);
    let after = wait_for(&mut p.policies, "resync", |s| {
        s.version != before.version && redirect_rules(&s.state, "default/deathstar").is_empty()
    })
    .await;
    assert_eq!(after.state["default/xwing"], before.state["default/xwing"]);
    assert!(
        after.version.parse::<u64>().expect("numeric")
            > before.version.parse::<u64>().expect("numeric"),
        "versions never go back across restarts"
    );
    p.handle.shutdown().await;
    assert!(agent.stop().success());
}

// A big folder: a proxy connected before the agent finished loading gets nothing until
// everything is compiled, and then everything at once (SEMANTICS 9.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_directory_is_never_served_partially() {
    use node_agent::synthetic::{PODS, POLICIES, pods, policy};
    let dir = tempfile::tempdir().expect("temp dir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("mkdir");
    std::fs::write(manifests.join("pods.yaml"), pods(1)).expect("write pods");
    for chunk in 0..10 {
        let text: String = (chunk * POLICIES / 10..(chunk + 1) * POLICIES / 10)
            .map(|i| policy(i, 80))
            .collect();
        std::fs::write(manifests.join(format!("policies-{chunk}.yaml")), text).expect("write");
    }
    let socket = dir.path().join("agent.sock");
    // The proxy first, so it is waiting while the agent loads.
    let mut p = proxy(&socket, "l7-proxy/node1/big");
    let agent = AgentProcess::start_on("node0", &manifests, &socket);
    let mut seen = Vec::new();
    let first = wait_for(&mut p.policies, "the first snapshot", |s| {
        seen.push(s.state.len());
        true
    })
    .await;
    assert_eq!(
        first.state.len(),
        PODS,
        "first snapshot holds every endpoint (saw sizes {seen:?})"
    );
    p.handle.shutdown().await;
    assert!(agent.stop().success());
}

// SIGTERM right after the agent opens its socket, while it is still loading: an orchestrator
// stopping a pod that just started. The agent must stop cleanly (exit 0), not die of the
// signal's default action half-way through writing its state.
#[test]
fn sigterm_while_starting_is_a_clean_stop() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("mkdir");
    copy_example(&manifests, "pods.yaml");
    copy_example(&manifests, "sw_l3_l4_l7_policy.yaml");
    for round in 0..5 {
        let socket = dir.path().join(format!("agent-{round}.sock"));
        let agent = AgentProcess::start(&manifests, &socket);
        let deadline = std::time::Instant::now() + PATIENCE;
        // Spinning, and signalling from this process rather than through kill(1), puts the
        // signal within microseconds of the socket's creation: before the first publish.
        while !socket.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the socket never appeared"
            );
            std::hint::spin_loop();
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(agent.pid()).expect("pid fits"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let status = agent.wait();
        assert!(status.success(), "round {round}: {status}");
    }
}
