//! The incremental plan, checked against the full desired state the reconcile computes.

use std::time::{Duration, Instant};

use super::*;
use crate::compiler::tests::{compiler, key};

const POLICY: &str = r#"
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
metadata: {name: to-world, namespace: dev}
spec:
  endpointSelector: {}
  egress:
  - toEntities: [world]
"#;

const PORTS: ProxyPorts = ProxyPorts {
    http_ingress: 15001,
    http_egress: 15002,
    dns: 15053,
};

struct Maps {
    ipcache: BTreeMap<IpcacheKey, IpcacheValue>,
    policy: BTreeMap<PolicyKey, PolicyValue>,
    ids: BTreeMap<EndpointKey, u16>,
    programmed: BTreeMap<EndpointKey, Arc<EndpointPolicy>>,
}

/// What a full reconcile would write for `compiler`: every compiled endpoint but
/// `without` gets an id.
fn full(compiler: &Compiler, without: &str) -> Maps {
    let mut ids = BTreeMap::new();
    let mut policy = BTreeMap::new();
    let mut programmed = BTreeMap::new();
    for (n, endpoint) in compiler
        .endpoints()
        .filter(|e| e.key != key(without))
        .enumerate()
    {
        let id = u16::try_from(n + 1).expect("few endpoints");
        ids.insert(endpoint.key.clone(), id);
        policy.extend(entries::policy_entries(id, endpoint, &PORTS));
        programmed.insert(endpoint.key.clone(), endpoint.clone());
    }
    Maps {
        ipcache: entries::ipcache_entries(compiler.ipcache()),
        policy,
        ids,
        programmed,
    }
}

fn apply(maps: &mut Maps, compiler: &Compiler, changes: &Changes) -> Plan {
    let no_hosts = BTreeSet::new();
    let current = Current {
        ipcache: &maps.ipcache,
        policy: &maps.policy,
        ids: &maps.ids,
        programmed: &maps.programmed,
        host_prefixes: &no_hosts,
        ports: &PORTS,
    };
    let plan = plan(&current, compiler, changes);
    for (k, v) in &plan.ipcache_up {
        maps.ipcache.insert(*k, *v);
    }
    for (k, v) in &plan.policy_up {
        maps.policy.insert(*k, *v);
    }
    for k in &plan.policy_del {
        maps.policy.remove(k);
    }
    for k in &plan.ipcache_del {
        maps.ipcache.remove(k);
    }
    maps.programmed.extend(plan.programmed.iter().cloned());
    plan
}

#[test]
fn the_plan_reaches_the_full_state_with_only_what_changed() {
    let mut c = compiler(POLICY);
    let mut maps = full(&c, "prod/web");
    let t0 = Instant::now();
    let ips: Vec<std::net::IpAddr> = ["192.0.2.1", "192.0.2.2"]
        .iter()
        .map(|t| t.parse().expect("IP"))
        .collect();
    c.fqdn_observe(&key("prod/client"), "api.example.com.", &ips, 5, t0);
    let changes = c.flush();
    let plan = apply(&mut maps, &c, &changes);
    // Two identities; prod/client's two entries and dev/client's world entries for them;
    // prod/web has no id (no device), so nothing of it.
    assert_eq!(plan.ipcache_up.len(), 2);
    assert!(plan.ipcache_del.is_empty() && plan.policy_del.is_empty());
    assert_eq!(plan.policy_up.len(), 4);
    assert_eq!(plan.without_id, 0);
    let want = full(&c, "prod/web");
    assert_eq!(maps.ipcache, want.ipcache);
    assert_eq!(maps.policy, want.policy);

    // Expiry withdraws: deletes, and the maps still equal the full state.
    c.fqdn_expire(t0 + Duration::from_secs(60), |_, _| false);
    let changes = c.flush();
    let plan = apply(&mut maps, &c, &changes);
    assert_eq!((plan.ipcache_del.len(), plan.policy_del.len()), (2, 4));
    assert!(plan.policy_up.is_empty());
    let want = full(&c, "prod/web");
    assert_eq!(maps.ipcache, want.ipcache);
    assert_eq!(maps.policy, want.policy);
}

#[test]
fn an_endpoint_without_id_is_counted_not_written() {
    let mut c = compiler(POLICY);
    let mut maps = full(&c, "prod/web");
    let ip: std::net::IpAddr = "192.0.2.9".parse().expect("IP");
    c.fqdn_observe(&key("prod/web"), "x.example.com.", &[ip], 5, Instant::now());
    let changes = c.flush();
    let plan = apply(&mut maps, &c, &changes);
    assert_eq!(plan.without_id, 1);
    // The identity is still programmed (dev/client's world rule uses it).
    assert_eq!(plan.ipcache_up.len(), 1);
}

#[test]
fn endpoint_policy_finds_one_endpoints_entries() {
    let c = compiler(POLICY);
    let maps = full(&c, "prod/web");
    for (k, id) in &maps.ids {
        let own = entries::endpoint_policy(&maps.policy, *id);
        let want = entries::policy_entries(*id, c.endpoint(k).expect("compiled"), &PORTS);
        assert_eq!(own, want, "{k}");
    }
}

/// Time of one incremental plan after a new answer, with 4,000 learned identities that
/// dev/client's world rule selects (so its whole entry set is rebuilt and diffed). Run with
/// `cargo test --release -p node-agent --lib incremental_plan_latency -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement"]
fn incremental_plan_latency() {
    let mut c = compiler(POLICY);
    let t0 = Instant::now();
    let mut maps = full(&c, "prod/web");
    let mut times = Vec::new();
    for n in 0..4200u32 {
        let ip = std::net::IpAddr::from([198, 18, (n / 250) as u8, (n % 250 + 1) as u8]);
        c.fqdn_observe(
            &key("prod/client"),
            &format!("h{n}.example.com."),
            &[ip],
            600,
            t0,
        );
        let changes = c.flush();
        let started = Instant::now();
        apply(&mut maps, &c, &changes);
        if n >= 4000 {
            times.push(started.elapsed().as_micros());
        }
    }
    times.sort_unstable();
    println!(
        "plan + apply to maps: p50 {} us, p99 {} us",
        times[times.len() / 2],
        times[times.len() * 99 / 100]
    );
}
