//! The pipeline's FQDN path without a datapath (`--no-datapath`): replies come after the
//! snapshot is published, and the cache survives a restart through its file.

use std::sync::Arc;

use tokio::sync::{oneshot, watch};
use xds::server::Snapshot;
use xds::{IDENTITY_TYPE, NETWORK_POLICY_TYPE, proto};

use super::*;
use crate::agent::snapshot::SnapshotBuilder;
use crate::compiler::Changes;
use crate::manifest::parse_str;

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: prod, labels: {app: client}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {podIP: 10.0.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: remote, namespace: prod, labels: {app: remote}}
spec: {nodeName: n2, containers: [{name: c, image: i}]}
status: {podIP: 10.0.9.9}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-api, namespace: prod}
spec:
  endpointSelector: {}
  egress:
  - toFQDNs: [{matchName: api.example.com}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
"#;

fn pipeline(settings: FqdnSettings) -> (PolicyPipeline, watch::Receiver<Arc<Snapshot>>) {
    PolicyPipeline::with_fqdn("n1", settings)
}

fn load(pipeline: &mut PolicyPipeline) {
    let parsed = parse_str("objects.yaml", OBJECTS);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let mut events: Vec<SourceEvent> = parsed
        .objects
        .into_iter()
        .map(SourceEvent::Applied)
        .collect();
    events.push(SourceEvent::Synced);
    pipeline.apply(events);
}

/// Applies a changed version of the objects, as the source would after an edit.
fn apply_yaml(pipeline: &mut PolicyPipeline, text: &str) {
    let parsed = parse_str("objects.yaml", text);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    pipeline.apply(
        parsed
            .objects
            .into_iter()
            .map(SourceEvent::Applied)
            .collect(),
    );
}

/// The client's answer for api.example.com with `ip`; returns the identity `ip` got.
fn learn(
    pipeline: &mut PolicyPipeline,
    snapshots: &watch::Receiver<Arc<Snapshot>>,
    ip: &str,
) -> u32 {
    observe(
        pipeline,
        vec![observation("prod/client", "api.example.com.", &[ip])],
    );
    identity_with(&snapshots.borrow(), &format!("{ip}/32"))
        .expect("identity")
        .id
}

fn observation(endpoint: &str, name: &str, ips: &[&str]) -> proto::FqdnObservation {
    proto::FqdnObservation {
        endpoint: endpoint.into(),
        name: name.into(),
        ips: ips.iter().map(|s| s.to_string()).collect(),
        ttl_seconds: 60,
    }
}

/// Sends observations through the loop's entry point and returns the replies.
fn observe(
    pipeline: &mut PolicyPipeline,
    obs: Vec<proto::FqdnObservation>,
) -> Vec<proto::FqdnObservationResult> {
    let mut answers = Vec::new();
    let mut events = Vec::new();
    for observation in obs {
        let (reply, answer) = oneshot::channel();
        events.push(LoopEvent::Observe(FqdnRequest { observation, reply }));
        answers.push(answer);
    }
    assert!(pipeline.handle(events));
    answers
        .into_iter()
        .map(|mut a| a.try_recv().expect("answered before the pass returned"))
        .collect()
}

/// The identity resource holding `prefix`, if any.
fn identity_with(snapshot: &Snapshot, prefix: &str) -> Option<proto::Identity> {
    snapshot
        .types
        .get(IDENTITY_TYPE)?
        .resources
        .values()
        .find_map(|r| match &r.body {
            Some(proto::resource::Body::Identity(i)) if i.prefixes.iter().any(|p| p == prefix) => {
                Some(i.clone())
            }
            _ => None,
        })
}

fn egress_identities(snapshot: &Snapshot, endpoint: &str) -> Vec<u32> {
    let resource = &snapshot.types[NETWORK_POLICY_TYPE].resources[endpoint];
    match &resource.body {
        Some(proto::resource::Body::NetworkPolicy(p)) => p
            .egress
            .iter()
            .flat_map(|d| &d.entries)
            .flat_map(|e| e.remote_identities.clone())
            .collect(),
        _ => panic!("not a policy"),
    }
}

/// The identities of the endpoint's compiled egress entries: what the datapath gets.
fn compiled_egress_identities(pipeline: &PolicyPipeline, endpoint: &str) -> Vec<u32> {
    let key = crate::compiler::EndpointKey::parse(endpoint).expect("NS/POD");
    let compiled = pipeline
        .compiler()
        .endpoint(&key)
        .expect("compiled endpoint");
    compiled
        .egress
        .entries
        .iter()
        .flat_map(|e| e.selection.identities.clone())
        .collect()
}

#[test]
fn an_answer_is_published_before_the_reply() {
    let (mut p, snapshots) = pipeline(FqdnSettings::default());
    load(&mut p);
    let replies = observe(
        &mut p,
        vec![
            observation("prod/client", "api.example.com.", &["192.0.2.1"]),
            observation("prod/client", "other.org.", &["198.51.100.1"]),
            observation("prod/remote", "api.example.com.", &["192.0.2.2"]),
            observation("prod/client", "api.example.com.", &["not-an-ip"]),
        ],
    );
    assert!(replies[0].allowed, "{:?}", replies[0]);
    assert!(
        replies[0].detail.contains("no datapath"),
        "{}",
        replies[0].detail
    );
    assert!(replies[1].allowed);
    assert!(
        replies[1].detail.contains("no toFQDNs selector"),
        "{}",
        replies[1].detail
    );
    assert!(!replies[2].allowed);
    assert!(
        replies[2].detail.contains("not a local endpoint"),
        "{}",
        replies[2].detail
    );
    assert!(!replies[3].allowed);
    let snapshot = snapshots.borrow().clone();
    let identity = identity_with(&snapshot, "192.0.2.1/32").expect("identity published");
    assert!(
        identity
            .labels
            .iter()
            .any(|l| l.contains("cidr:192.0.2.1/32")),
        "{:?}",
        identity.labels
    );
    assert!(compiled_egress_identities(&p, "prod/client").contains(&identity.id));
    // The proxies are not sent the toFQDNs allow on 443: no redirect entry shares its
    // ports, so it can never decide a redirected flow.
    assert!(egress_identities(&snapshot, "prod/client").is_empty());
    // The unselected name is recorded without an identity.
    assert!(identity_with(&snapshot, "198.51.100.1/32").is_none());
    let list = p
        .fqdn_cache_list(&proto::FqdnCacheRequest {
            endpoint: "prod/client".into(),
        })
        .expect("listed");
    let names: Vec<&str> = list.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["api.example.com.", "other.org."]);
    let metrics = list.metrics.expect("metrics");
    assert_eq!(
        (
            metrics.entries,
            metrics.identities,
            metrics.observations,
            metrics.refused
        ),
        (2, 1, 4, 2)
    );
}

#[test]
fn identity_resources_updated_one_by_one_equal_a_full_build() {
    let (mut p, snapshots) = pipeline(FqdnSettings::default());
    load(&mut p);
    observe(
        &mut p,
        vec![observation(
            "prod/client",
            "api.example.com.",
            &["192.0.2.1", "2001:db8::1"],
        )],
    );
    let mut fresh = Snapshot::default();
    SnapshotBuilder::new().update(
        p.compiler(),
        &Changes {
            ipcache_changed: true,
            ..Changes::default()
        },
        &mut fresh,
    );
    let bodies = |s: &Snapshot| -> Vec<_> {
        s.types[IDENTITY_TYPE]
            .resources
            .iter()
            .map(|(n, r)| (n.clone(), r.body.clone()))
            .collect()
    };
    assert_eq!(bodies(&snapshots.borrow()), bodies(&fresh));
}

#[test]
fn the_cache_survives_a_restart_through_its_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = FqdnSettings {
        state_file: Some(dir.path().join("state/fqdn-cache.json")),
        ..FqdnSettings::default()
    };
    let (mut first, _) = pipeline(settings.clone());
    first.load_fqdn();
    load(&mut first);
    observe(
        &mut first,
        vec![observation(
            "prod/client",
            "api.example.com.",
            &["192.0.2.1"],
        )],
    );
    assert!(!first.handle(vec![LoopEvent::Shutdown]));

    let (mut second, snapshots) = pipeline(settings.clone());
    second.load_fqdn();
    load(&mut second);
    let snapshot = snapshots.borrow().clone();
    let identity = identity_with(&snapshot, "192.0.2.1/32").expect("restored IP has an identity");
    assert!(compiled_egress_identities(&second, "prod/client").contains(&identity.id));
    let list = second
        .fqdn_cache_list(&proto::FqdnCacheRequest::default())
        .expect("listed");
    assert_eq!(list.entries.len(), 1);
    assert_eq!(list.entries[0].source, "restored");

    // A corrupt file is ignored: the agent starts with an empty cache.
    if let Some(path) = &settings.state_file {
        std::fs::write(path, b"{not json").expect("write");
    }
    let (mut third, _) = pipeline(settings);
    third.load_fqdn();
    load(&mut third);
    assert!(third.compiler().fqdn_cache().is_empty());
}

/// Time per observation through the loop's entry point, without a datapath: 20 local
/// endpoints sharing a toFQDNs rule, 2 with a world rule (recompiled for every new
/// identity), 2,000 names already learned, then 2,000 new ones one pass each. Run with
/// `cargo test --release -p node-agent --lib fqdn_observation_latency -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement"]
fn fqdn_observation_latency() {
    let mut text = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n");
    for i in 0..20 {
        let app = if i < 2 { "open" } else { "app" };
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: prod, labels: {{app: {app}}}}}\nspec: {{nodeName: n1, containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: 10.0.1.{}}}\n",
            i + 1
        ));
    }
    text.push_str(
        r#"---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-api, namespace: prod}
spec:
  endpointSelector: {}
  egress:
  - toFQDNs: [{matchPattern: "*.example.com"}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: open, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: open}}
  egress:
  - toEntities: [world]
"#,
    );
    let (mut p, _snapshots) = pipeline(FqdnSettings::default());
    let parsed = parse_str("objects.yaml", &text);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let mut events: Vec<SourceEvent> = parsed
        .objects
        .into_iter()
        .map(SourceEvent::Applied)
        .collect();
    events.push(SourceEvent::Synced);
    p.apply(events);
    let name_ip = |n: usize| {
        (
            format!("host{n}.example.com."),
            format!("198.18.{}.{}", n / 250, n % 250 + 1),
        )
    };
    for n in 0..2000 {
        let (name, ip) = name_ip(n);
        observe(
            &mut p,
            vec![observation(&format!("prod/p{}", n % 20), &name, &[&ip])],
        );
    }
    let mut times = Vec::new();
    for n in 2000..4000 {
        let (name, ip) = name_ip(n);
        let started = std::time::Instant::now();
        let reply = observe(
            &mut p,
            vec![observation(&format!("prod/p{}", n % 20), &name, &[&ip])],
        );
        times.push(started.elapsed().as_micros());
        assert!(reply[0].allowed);
    }
    times.sort_unstable();
    println!(
        "per observation: p50 {} us, p99 {} us, max {} us",
        times[times.len() / 2],
        times[times.len() * 99 / 100],
        times[times.len() - 1]
    );
}

// Only endpoints whose egress has toFQDNs selectors are told to report their answers.
#[test]
fn network_policies_say_which_endpoints_report_answers() {
    let (mut p, snapshots) = pipeline(FqdnSettings::default());
    load(&mut p);
    let egress_fqdn =
        |snapshot: &Snapshot| match &snapshot.types[NETWORK_POLICY_TYPE].resources["prod/client"]
            .body
        {
            Some(proto::resource::Body::NetworkPolicy(policy)) => policy.egress_fqdn,
            _ => panic!("not a policy"),
        };
    assert!(egress_fqdn(&snapshots.borrow()));

    let without = OBJECTS.replace(
        "  - toFQDNs: [{matchName: api.example.com}]",
        "  - toCIDR: [192.0.2.0/24]",
    );
    apply_yaml(&mut p, &without);
    assert!(!egress_fqdn(&snapshots.borrow()));
}

// A learned IP changes what proxies are sent only where a proxy could use it: a toFQDNs
// allow whose ports a redirect entry shares (SEMANTICS 3.4: it widens that redirect to
// every request for the learned peers). Elsewhere an answer publishes one Identity
// resource and no NetworkPolicy version.
#[test]
fn learned_ips_reach_proxies_only_where_a_redirect_shares_the_ports() {
    let (mut p, snapshots) = pipeline(FqdnSettings::default());
    load(&mut p);
    let policy_version = |s: &Snapshot| s.types[NETWORK_POLICY_TYPE].version;
    let before = policy_version(&snapshots.borrow());
    let id = learn(&mut p, &snapshots, "192.0.2.1");
    let snapshot = snapshots.borrow().clone();
    assert!(compiled_egress_identities(&p, "prod/client").contains(&id));
    assert_eq!(policy_version(&snapshot), before, "no NetworkPolicy push");
    assert!(egress_identities(&snapshot, "prod/client").is_empty());

    // An HTTP rule on 443 for every peer: the toFQDNs allow now shares a redirect's port.
    let with_l7 = OBJECTS.to_owned()
        + r#"---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7-everywhere, namespace: prod}
spec:
  endpointSelector: {}
  egress:
  - toEntities: [world]
    toPorts: [{ports: [{port: "443", protocol: TCP}], rules: {http: [{method: GET}]}}]
"#;
    apply_yaml(&mut p, &with_l7);
    assert!(egress_identities(&snapshots.borrow(), "prod/client").contains(&id));
    let before = policy_version(&snapshots.borrow());
    let second = learn(&mut p, &snapshots, "192.0.2.7");
    let snapshot = snapshots.borrow().clone();
    assert!(policy_version(&snapshot) > before);
    assert!(egress_identities(&snapshot, "prod/client").contains(&second));
}

// The server sends a client only the names the change log lists since the version it
// ACKed: every resource that differs between two published snapshots must be listed.
#[test]
fn the_change_log_lists_every_changed_resource() {
    let (mut p, snapshots) = pipeline(FqdnSettings::default());
    load(&mut p);
    let mut before = snapshots.borrow().clone();
    let first_identities = before.types[IDENTITY_TYPE].resources.len();
    for n in 0..40u8 {
        let ips = [format!("192.0.2.{n}"), format!("198.51.100.{}", n / 3)];
        let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
        observe(
            &mut p,
            vec![observation("prod/client", "api.example.com.", &ips)],
        );
        if n % 10 == 9 {
            // Expiry and a policy edit in between: removals and rewrites.
            p.tick();
            load(&mut p);
        }
        let after = snapshots.borrow().clone();
        for (type_url, now) in &after.types {
            let was = &before.types[type_url];
            let log = now.changes.as_ref().expect("the agent keeps a change log");
            let listed: std::collections::BTreeSet<&str> =
                log.since(was.version).expect("log reaches back").collect();
            let names: std::collections::BTreeSet<&String> =
                now.resources.keys().chain(was.resources.keys()).collect();
            for name in names {
                let differs = match (was.resources.get(name), now.resources.get(name)) {
                    (Some(a), Some(b)) => a.body != b.body || a.version != b.version,
                    (None, None) => false,
                    _ => true,
                };
                assert!(
                    !differs || listed.contains(name.as_str()),
                    "{type_url} {name} changed between {} and {} but is not logged",
                    was.version,
                    now.version
                );
            }
        }
        before = after;
    }
    assert!(before.types[IDENTITY_TYPE].resources.len() >= first_identities + 40);
}

// Expiry withdraws a bounded chunk per pass, so DNS answers queued on the loop wait for
// one chunk, not for a whole second's worth of expiring names; the passes together
// withdraw everything due, and an IP in use stays as a zombie whichever pass it falls in.
#[test]
fn expiry_runs_in_bounded_chunks_until_done() {
    let (mut p, snapshots) = pipeline(FqdnSettings::default());
    load(&mut p);
    let count = 3 * EXPIRY_CHUNK - 10;
    let ips: Vec<String> = (0..count)
        .map(|n| format!("192.0.{}.{}", 2 + n / 250, 1 + n % 250))
        .collect();
    for ip in &ips {
        observe(
            &mut p,
            vec![observation("prod/client", "api.example.com.", &[ip])],
        );
    }
    let identities = |s: &Snapshot| s.types[IDENTITY_TYPE].resources.len();
    let learned = identities(&snapshots.borrow());
    // One IP is still used by a connection of the client.
    let in_use: EgressFlows = [(
        "10.0.1.2".parse().expect("ip"),
        ips[count / 2].parse().expect("ip"),
    )]
    .into();
    let later = Instant::now() + Duration::from_secs(3600);
    let mut passes = 0;
    while p.expire_and_program(later, &in_use) {
        passes += 1;
        let withdrawn = learned - identities(&snapshots.borrow());
        assert!(
            withdrawn <= passes * EXPIRY_CHUNK,
            "pass {passes}: {withdrawn}"
        );
        assert!(passes < 10, "expiry never finishes");
    }
    assert_eq!(passes, 2, "three passes in all");
    assert_eq!(learned - identities(&snapshots.borrow()), count - 1);
    let list = p
        .fqdn_cache_list(&proto::FqdnCacheRequest::default())
        .expect("listed");
    assert_eq!(list.entries.len(), 1);
    assert_eq!(list.entries[0].ip, ips[count / 2]);
    assert!(list.entries[0].in_use);
}
