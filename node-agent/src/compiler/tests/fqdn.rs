//! SEMANTICS 6: toFQDNs selects the IPs an endpoint's own DNS answers gave (6.5), as /32
//! CIDR identities shared through reference counts, never pod IPs (6.6); expired IPs still
//! in use leave the selection (6.4).

use std::time::{Duration, Instant};

use super::*;

/// prod/web and prod/client may reach api.example.com and *.cdn.example.com on 443;
/// dev/client may reach the world.
const POLICIES: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-api, namespace: prod}
spec:
  endpointSelector: {}
  egress:
  - toFQDNs: [{matchName: api.example.com}, {matchPattern: "*.cdn.example.com"}]
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

const API: &str = "api.example.com.";

fn ip(text: &str) -> IpAddr {
    text.parse().expect("IP")
}

fn observe(
    c: &mut Compiler,
    ep: &str,
    name: &str,
    ips: &[&str],
    ttl: u32,
    now: Instant,
) -> Changes {
    let ips: Vec<IpAddr> = ips.iter().map(|t| ip(t)).collect();
    c.fqdn_observe(&key(ep), name, &ips, ttl, now);
    c.flush()
}

fn verdict(c: &Compiler, ep: &str, peer: &str) -> Verdict {
    check(c, OUT, ep, peer, Tcp, 443).0
}

#[test]
fn learned_ips_are_selected_only_for_the_endpoint_that_asked() {
    let mut c = compiler(POLICIES);
    let now = Instant::now();
    assert_eq!(verdict(&c, "prod/client", "192.0.2.1"), D);
    let changes = observe(
        &mut c,
        "prod/client",
        "API.Example.com",
        &["192.0.2.1"],
        60,
        now,
    );
    // The asking endpoint, and dev/client whose world rule selects the new identity.
    assert_eq!(
        changes.recompiled,
        [key("dev/client"), key("prod/client")]
            .into_iter()
            .collect()
    );
    let id = c.identity_of_ip(ip("192.0.2.1"));
    assert!(id >= crate::identity::FIRST_LOCAL_IDENTITY, "{id}");
    assert!(changes.identities.contains(&id));
    assert_eq!(
        changes.ipcache_prefixes,
        ["192.0.2.1/32".parse().expect("net")].into()
    );
    assert_eq!(verdict(&c, "prod/client", "192.0.2.1"), A);
    // SEMANTICS 6.5: the same policy on prod/web does not learn prod/client's answers.
    assert_eq!(verdict(&c, "prod/web", "192.0.2.1"), D);
    // The learned identity is still world for world rules.
    assert_eq!(verdict(&c, "dev/client", "192.0.2.1"), A);
    // The same answer again changes nothing.
    let again = observe(&mut c, "prod/client", API, &["192.0.2.1"], 60, now);
    assert!(again.recompiled.is_empty() && again.identities.is_empty());
}

#[test]
fn match_pattern_selects_subdomains_only() {
    let mut c = compiler(POLICIES);
    let now = Instant::now();
    observe(
        &mut c,
        "prod/client",
        "img.cdn.example.com.",
        &["192.0.2.7"],
        60,
        now,
    );
    observe(
        &mut c,
        "prod/client",
        "cdn.example.com.",
        &["192.0.2.8"],
        60,
        now,
    );
    assert_eq!(verdict(&c, "prod/client", "192.0.2.7"), A);
    assert_eq!(verdict(&c, "prod/client", "192.0.2.8"), D);
}

#[test]
fn unselected_names_are_kept_without_identity_until_a_rule_wants_them() {
    let mut c = compiler(POLICIES);
    let now = Instant::now();
    let changes = observe(
        &mut c,
        "prod/client",
        "other.org.",
        &["198.51.100.1"],
        60,
        now,
    );
    assert!(changes.recompiled.is_empty());
    assert!(changes.ipcache_prefixes.is_empty() && changes.identities.is_empty());
    assert_eq!(
        c.identity_of_ip(ip("198.51.100.1")),
        crate::identity::reserved::WORLD
    );
    assert_eq!(c.fqdn_cache().len(), 1);
    // A rule added later uses the recorded answer (as Cilium does).
    let parsed = parse_str(
        "late.yaml",
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-other, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toFQDNs: [{matchName: other.org}]
"#,
    );
    for object in parsed.objects {
        c.apply(SourceEvent::Applied(object));
    }
    c.flush();
    assert_eq!(verdict(&c, "prod/client", "198.51.100.1"), A);
}

#[test]
fn identities_are_shared_and_released_with_the_last_entry() {
    let mut c = compiler(POLICIES);
    let t0 = Instant::now();
    observe(&mut c, "prod/client", API, &["192.0.2.1"], 10, t0);
    observe(&mut c, "prod/web", API, &["192.0.2.1"], 100, t0);
    let id = c.identity_of_ip(ip("192.0.2.1"));
    assert_eq!(verdict(&c, "prod/web", "192.0.2.1"), A);
    // prod/client's entry expires; prod/web still holds the IP and its identity.
    let out = c.fqdn_expire(t0 + Duration::from_secs(20), |_, _| false);
    assert_eq!(out.removed, 1);
    let changes = c.flush();
    assert!(changes.recompiled.contains(&key("prod/client")));
    assert_eq!(c.identity_of_ip(ip("192.0.2.1")), id);
    assert_eq!(verdict(&c, "prod/client", "192.0.2.1"), D);
    assert_eq!(verdict(&c, "prod/web", "192.0.2.1"), A);
    // The last one goes: so does the identity and its ipcache entry.
    c.fqdn_expire(t0 + Duration::from_secs(200), |_, _| false);
    let changes = c.flush();
    assert!(changes.identities.contains(&id));
    assert!(c.identities().labels(id).is_none());
    assert_eq!(c.ipcache_entry("192.0.2.1/32".parse().expect("net")), None);
    assert_eq!(verdict(&c, "prod/web", "192.0.2.1"), D);
}

#[test]
fn pod_ips_keep_their_pod_identity() {
    let mut c = compiler(POLICIES);
    let db = c.pod(&key("prod/db")).expect("db").identity;
    let changes = observe(
        &mut c,
        "prod/client",
        API,
        &["10.0.1.3"],
        60,
        Instant::now(),
    );
    assert!(changes.identities.is_empty());
    assert_eq!(c.identity_of_ip(ip("10.0.1.3")), db);
    assert_eq!(
        c.ipcache_entry("10.0.1.3/32".parse().expect("net")),
        Some(db)
    );
    // SEMANTICS 6.6: toFQDNs does not select the pod.
    assert_eq!(verdict(&c, "prod/client", "prod/db"), D);
}

#[test]
fn an_expired_ip_in_use_leaves_the_selection_until_a_fresh_answer() {
    let mut c = compiler(POLICIES);
    let t0 = Instant::now();
    observe(&mut c, "prod/client", API, &["192.0.2.1"], 1, t0);
    let id = c.identity_of_ip(ip("192.0.2.1"));
    let later = t0 + Duration::from_secs(10);
    let out = c.fqdn_expire(later, |ep, ip| {
        *ep == key("prod/client") && ip == self::ip("192.0.2.1")
    });
    assert_eq!((out.removed, out.new_zombies), (0, 1));
    let changes = c.flush();
    assert!(changes.recompiled.contains(&key("prod/client")));
    assert!(c.fqdn_is_zombie(&key("prod/client"), API, ip("192.0.2.1")));
    assert_eq!(
        c.fqdn_zombie_flows(),
        [(key("prod/client"), ip("192.0.2.1"))]
            .into_iter()
            .collect()
    );
    // New connections need a fresh answer; the identity stays for the established ones.
    assert_eq!(verdict(&c, "prod/client", "192.0.2.1"), D);
    assert_eq!(c.identity_of_ip(ip("192.0.2.1")), id);
    // A fresh answer ends the zombie state.
    observe(&mut c, "prod/client", API, &["192.0.2.1"], 30, later);
    assert!(!c.fqdn_is_zombie(&key("prod/client"), API, ip("192.0.2.1")));
    assert_eq!(verdict(&c, "prod/client", "192.0.2.1"), A);
    // Expired again, connections gone: removed.
    let out = c.fqdn_expire(later + Duration::from_secs(60), |_, _| false);
    assert_eq!((out.removed, out.new_zombies), (1, 0));
    c.flush();
    assert_eq!(c.fqdn_zombie_count(), 0);
    assert_eq!(
        c.identity_of_ip(ip("192.0.2.1")),
        crate::identity::reserved::WORLD
    );
}

/// Every compiled toFQDNs entry holds what a selection computed from scratch gives.
fn assert_selections_fresh(c: &Compiler, step: &str) {
    for policy in c.endpoints() {
        for entry in &policy.egress.entries {
            if let Peer::Fqdn(spec) = &entry.peer {
                assert_eq!(
                    entry.selection.identities,
                    c.fqdn_select(&policy.key, spec).identities,
                    "{step}: {} {spec:?}",
                    policy.key
                );
            }
        }
    }
}

// The selections kept between recompiles (updated in place when an answer only adds IPs)
// never drift from a full recomputation, whatever happens to the entries.
#[test]
fn cached_selections_match_a_full_recomputation() {
    let mut c = compiler(POLICIES);
    let t0 = Instant::now();
    let cdn = "img.cdn.example.com.";
    observe(&mut c, "prod/client", API, &["192.0.2.1"], 5, t0);
    assert_selections_fresh(&c, "first answer");
    observe(
        &mut c,
        "prod/client",
        API,
        &["192.0.2.2", "192.0.2.3"],
        5,
        t0,
    );
    observe(
        &mut c,
        "prod/client",
        cdn,
        &["192.0.2.3", "198.51.100.7"],
        30,
        t0,
    );
    observe(&mut c, "prod/web", cdn, &["198.51.100.7"], 30, t0);
    assert_selections_fresh(&c, "more names and a shared IP");
    let later = t0 + Duration::from_secs(10);
    c.fqdn_expire(later, |_, ip| ip == self::ip("192.0.2.2"));
    c.flush();
    assert_selections_fresh(&c, "expired, one zombie");
    assert_eq!(verdict(&c, "prod/client", "192.0.2.2"), D);
    assert_eq!(
        verdict(&c, "prod/client", "192.0.2.3"),
        A,
        "still valid under the cdn name"
    );
    observe(&mut c, "prod/client", API, &["192.0.2.2"], 5, later);
    assert_selections_fresh(&c, "zombie refreshed");
    assert_eq!(verdict(&c, "prod/client", "192.0.2.2"), A);
    c.fqdn_expire(later + Duration::from_secs(60), |_, _| false);
    c.flush();
    assert_selections_fresh(&c, "everything expired");
    assert_eq!(verdict(&c, "prod/web", "198.51.100.7"), D);
}
