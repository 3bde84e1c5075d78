//! Unit tests of the FQDN cache: one or more per rule of the module documentation.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dns_proxy::{CompiledNameMatcher, DnsSelectorSpec};

use super::*;
use crate::compiler::EndpointKey;

fn ep(text: &str) -> EndpointKey {
    EndpointKey::parse(text).expect("NS/POD")
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an IP")
}

fn ips(texts: &[&str]) -> Vec<IpAddr> {
    texts.iter().map(|t| ip(t)).collect()
}

fn set(texts: &[&str]) -> BTreeSet<IpAddr> {
    ips(texts).into_iter().collect()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn name(n: &str) -> CompiledNameMatcher {
    CompiledNameMatcher::compile(&DnsSelectorSpec::MatchName(n.into())).expect("valid")
}

fn pattern(p: &str) -> CompiledNameMatcher {
    CompiledNameMatcher::compile(&DnsSelectorSpec::MatchPattern(p.into())).expect("valid")
}

fn config(min_ttl_secs: u32, max_ips_per_name: usize, max_entries: usize) -> FqdnConfig {
    FqdnConfig {
        min_ttl_secs,
        max_ips_per_name,
        max_entries,
    }
}

fn never_in_use(_: &EndpointKey, _: IpAddr) -> bool {
    false
}

fn wall(secs_since_epoch: u64) -> SystemTime {
    UNIX_EPOCH + secs(secs_since_epoch)
}

#[test]
fn fqdn_defaults_follow_semantics_6_4() {
    let c = FqdnConfig::default();
    assert_eq!(c.min_ttl_secs, 0);
    assert_eq!(c.max_ips_per_name, 1000);
    assert_eq!(c.max_entries, 65_536);
}

#[test]
fn fqdn_observe_reports_new_ips_and_normalises_the_name() {
    let mut c = FqdnCache::default();
    let t0 = Instant::now();
    let a = ep("default/client");
    let out = c.observe(
        &a,
        "Google.COM",
        &ips(&["10.0.0.2", "10.0.0.1", "10.0.0.1"]),
        30,
        t0,
    );
    assert_eq!(out.name, "google.com.");
    assert_eq!(out.added, ips(&["10.0.0.1", "10.0.0.2"]));
    assert!(out.refreshed.is_empty() && out.evicted.is_empty());
    assert_eq!(c.len(), 2);

    let again = c.observe(&a, "google.com.", &ips(&["10.0.0.1", "10.0.0.3"]), 30, t0);
    assert_eq!(again.added, ips(&["10.0.0.3"]));
    assert_eq!(again.refreshed, ips(&["10.0.0.1"]));
    assert_eq!(c.metrics().entries, 3);

    let empty = c.observe(&a, "google.com", &[], 30, t0);
    assert!(empty.added.is_empty() && empty.refreshed.is_empty());
}

#[test]
fn fqdn_ttl_expiry_removes_unused_ips() {
    let mut c = FqdnCache::default();
    let t0 = Instant::now();
    let a = ep("default/client");
    c.observe(&a, "a.com", &ips(&["1.1.1.1"]), 10, t0);
    c.observe(&a, "b.com", &ips(&["2.2.2.2"]), 20, t0);
    assert!(
        c.expire(t0 + secs(10), never_in_use).is_empty(),
        "not past expiry yet"
    );
    let removed = c.expire(t0 + secs(11), never_in_use);
    assert_eq!(
        removed,
        vec![Removed {
            endpoint: a.clone(),
            name: "a.com.".into(),
            ip: ip("1.1.1.1"),
            reason: RemovalReason::Expired,
        }]
    );
    assert_eq!(c.ips_for(&a, &pattern("*")), set(&["2.2.2.2"]));
    assert_eq!(c.metrics().expirations, 1);
    assert_eq!(c.expire(t0 + secs(21), never_in_use).len(), 1);
    assert!(c.is_empty());
}

#[test]
fn fqdn_min_ttl_raises_short_ttls() {
    let mut c = FqdnCache::new(config(60, 1000, 1000));
    let t0 = Instant::now();
    let a = ep("default/client");
    c.observe(&a, "short.com", &ips(&["1.1.1.1"]), 0, t0);
    c.observe(&a, "long.com", &ips(&["2.2.2.2"]), 300, t0);
    assert!(c.expire(t0 + secs(60), never_in_use).is_empty());
    let removed = c.expire(t0 + secs(61), never_in_use);
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].name, "short.com.");
    let list = c.list(None, t0);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].expires_in_secs, 300, "a longer TTL is kept as is");
}

#[test]
fn fqdn_zero_min_ttl_keeps_ttl_zero_until_past_now() {
    let mut c = FqdnCache::default();
    let t0 = Instant::now();
    let a = ep("default/client");
    c.observe(&a, "zero.com", &ips(&["1.1.1.1"]), 0, t0);
    assert!(c.expire(t0, never_in_use).is_empty());
    assert_eq!(
        c.expire(t0 + Duration::from_millis(1), never_in_use).len(),
        1
    );
}

#[test]
fn fqdn_refresh_extends_expiry_and_never_shortens_it() {
    let mut c = FqdnCache::default();
    let t0 = Instant::now();
    let a = ep("default/client");
    c.observe(&a, "a.com", &ips(&["1.1.1.1"]), 10, t0);
    // Seen again at t0+8 with TTL 10: valid until t0+18.
    let out = c.observe(&a, "a.com", &ips(&["1.1.1.1"]), 10, t0 + secs(8));
    assert_eq!(out.refreshed, ips(&["1.1.1.1"]));
    assert!(out.added.is_empty());
    assert!(c.expire(t0 + secs(15), never_in_use).is_empty());
    // A shorter TTL later does not cut the earlier answer short.
    c.observe(&a, "a.com", &ips(&["1.1.1.1"]), 1, t0 + secs(9));
    assert!(c.expire(t0 + secs(17), never_in_use).is_empty());
    assert_eq!(c.expire(t0 + secs(19), never_in_use).len(), 1);
}

#[test]
fn fqdn_per_name_limit_evicts_the_earliest_expiring() {
    let mut c = FqdnCache::new(config(0, 2, 1000));
    let t0 = Instant::now();
    let a = ep("default/client");
    c.observe(&a, "cdn.com", &ips(&["1.1.1.1"]), 100, t0);
    c.observe(&a, "cdn.com", &ips(&["2.2.2.2"]), 50, t0);
    // Another name of the same endpoint is not affected by cdn.com's limit.
    c.observe(&a, "other.com", &ips(&["9.9.9.9"]), 1, t0);
    let out = c.observe(&a, "cdn.com", &ips(&["3.3.3.3"]), 200, t0);
    assert_eq!(out.added, ips(&["3.3.3.3"]));
    assert_eq!(
        out.evicted,
        vec![Removed {
            endpoint: a.clone(),
            name: "cdn.com.".into(),
            ip: ip("2.2.2.2"),
            reason: RemovalReason::PerNameLimit,
        }]
    );
    assert_eq!(
        c.ips_for(&a, &name("cdn.com")),
        set(&["1.1.1.1", "3.3.3.3"])
    );
    assert_eq!(c.ips_for(&a, &name("other.com")), set(&["9.9.9.9"]));
    assert_eq!(c.metrics().evictions_per_name_limit, 1);
    assert_eq!(c.metrics().evictions_global_limit, 0);
}

#[test]
fn fqdn_per_name_limit_within_one_answer_reports_only_kept_ips() {
    let mut c = FqdnCache::new(config(0, 2, 1000));
    let t0 = Instant::now();
    let a = ep("default/client");
    let out = c.observe(
        &a,
        "many.com",
        &ips(&["1.1.1.3", "1.1.1.1", "1.1.1.2"]),
        30,
        t0,
    );
    // Same expiry: the tie is broken by IP order, and an IP evicted at once was never
    // reported as added, so there is nothing to withdraw.
    assert_eq!(out.added, ips(&["1.1.1.2", "1.1.1.3"]));
    assert!(out.evicted.is_empty());
    assert_eq!(c.len(), 2);
    assert_eq!(c.metrics().evictions_per_name_limit, 1);
}

#[test]
fn fqdn_global_limit_evicts_the_earliest_expiring_anywhere() {
    let mut c = FqdnCache::new(config(0, 1000, 3));
    let t0 = Instant::now();
    let a = ep("default/a");
    let b = ep("default/b");
    c.observe(&a, "x.com", &ips(&["1.1.1.1"]), 100, t0);
    c.observe(&b, "y.com", &ips(&["2.2.2.2"]), 10, t0);
    c.observe(&a, "z.com", &ips(&["3.3.3.3"]), 50, t0);
    let out = c.observe(&a, "w.com", &ips(&["4.4.4.4", "5.5.5.5"]), 70, t0);
    assert_eq!(out.added, ips(&["4.4.4.4", "5.5.5.5"]));
    let evicted: Vec<(String, IpAddr, RemovalReason)> = out
        .evicted
        .iter()
        .map(|r| (r.endpoint.to_string(), r.ip, r.reason))
        .collect();
    assert_eq!(
        evicted,
        vec![
            (
                "default/b".into(),
                ip("2.2.2.2"),
                RemovalReason::GlobalLimit
            ),
            (
                "default/a".into(),
                ip("3.3.3.3"),
                RemovalReason::GlobalLimit
            ),
        ]
    );
    assert_eq!(c.len(), 3);
    assert_eq!(c.metrics().evictions_global_limit, 2);
    assert!(c.ips_for(&b, &pattern("*")).is_empty());

    // A new IP that would itself be the earliest to expire is dropped at once and not
    // reported as added.
    let out = c.observe(&b, "short.com", &ips(&["6.6.6.6"]), 1, t0);
    assert!(out.added.is_empty() && out.evicted.is_empty());
    assert_eq!(c.len(), 3);
    assert_eq!(c.metrics().evictions_global_limit, 3);
}

#[test]
fn fqdn_in_use_ips_are_kept_past_expiry_until_unused() {
    let mut c = FqdnCache::default();
    let t0 = Instant::now();
    let a = ep("default/client");
    c.observe(&a, "a.com", &ips(&["1.1.1.1", "1.1.1.2"]), 10, t0);
    let busy = ip("1.1.1.1");
    let mut asked = Vec::new();
    let removed = c.expire(t0 + secs(11), |e, i| {
        asked.push((e.clone(), i));
        i == busy
    });
    assert_eq!(asked.len(), 2);
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].ip, ip("1.1.1.2"));
    // Still allowed, shown as expired and kept.
    assert_eq!(c.ips_for(&a, &name("a.com")), set(&["1.1.1.1"]));
    let list = c.list(None, t0 + secs(11));
    assert!(list[0].expired && list[0].expires_in_secs == 0);
    // Still in use a minute later: kept; then the connection closes: removed.
    assert!(c.expire(t0 + secs(70), |_, i| i == busy).is_empty());
    let removed = c.expire(t0 + secs(71), never_in_use);
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].reason, RemovalReason::Expired);
    assert!(c.is_empty());
    assert_eq!(c.metrics().expirations, 2);
}

#[test]
fn fqdn_in_use_expired_ip_refreshed_by_a_new_answer() {
    let mut c = FqdnCache::default();
    let t0 = Instant::now();
    let a = ep("default/client");
    c.observe(&a, "a.com", &ips(&["1.1.1.1"]), 10, t0);
    assert!(c.expire(t0 + secs(20), |_, _| true).is_empty());
    let out = c.observe(&a, "a.com", &ips(&["1.1.1.1"]), 10, t0 + secs(20));
    assert_eq!(out.refreshed, ips(&["1.1.1.1"]));
    let list = c.list(None, t0 + secs(20));
    assert!(!list[0].expired);
    assert_eq!(list[0].expires_in_secs, 10);
}

#[test]
fn fqdn_learned_ips_are_per_endpoint() {
    let mut c = FqdnCache::default();
    let t0 = Instant::now();
    let a = ep("default/a");
    let b = ep("default/b");
    let other_ns = ep("other/a");
    c.observe(&a, "google.com", &ips(&["1.1.1.1"]), 30, t0);
    c.observe(&b, "google.com", &ips(&["2.2.2.2"]), 30, t0);
    assert_eq!(c.ips_for(&a, &name("google.com")), set(&["1.1.1.1"]));
    assert_eq!(c.ips_for(&b, &name("google.com")), set(&["2.2.2.2"]));
    assert!(c.ips_for(&other_ns, &name("google.com")).is_empty());
    // The same IP for two endpoints is two entries, each with its own expiry.
    c.observe(&b, "google.com", &ips(&["1.1.1.1"]), 100, t0);
    let removed = c.expire(t0 + secs(31), never_in_use);
    assert_eq!(removed.len(), 2);
    assert!(c.ips_for(&a, &name("google.com")).is_empty());
    assert_eq!(c.ips_for(&b, &name("google.com")), set(&["1.1.1.1"]));
    // in_use is asked per endpoint.
    c.observe(&a, "google.com", &ips(&["1.1.1.1"]), 1, t0 + secs(31));
    let removed = c.expire(t0 + secs(200), |e, _| *e == b);
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].endpoint, a);
}

#[test]
fn fqdn_selectors_match_names_and_patterns() {
    let mut c = FqdnCache::default();
    let t0 = Instant::now();
    let a = ep("default/client");
    c.observe(&a, "api.example.com", &ips(&["1.0.0.1"]), 30, t0);
    c.observe(&a, "a.b.example.com", &ips(&["1.0.0.2"]), 30, t0);
    c.observe(&a, "example.com", &ips(&["1.0.0.3"]), 30, t0);
    c.observe(&a, "subexample.com", &ips(&["1.0.0.4"]), 30, t0);
    c.observe(&a, "github.com", &ips(&["2001:db8::1"]), 30, t0);

    assert_eq!(c.ips_for(&a, &name("API.example.com.")), set(&["1.0.0.1"]));
    assert_eq!(c.ips_for(&a, &pattern("*.example.com")), set(&["1.0.0.1"]));
    assert_eq!(
        c.ips_for(&a, &pattern("**.example.com")),
        set(&["1.0.0.1", "1.0.0.2"])
    );
    assert_eq!(
        c.ips_for(&a, &pattern("*example.com")),
        set(&["1.0.0.3", "1.0.0.4"])
    );
    assert_eq!(c.ips_for(&a, &pattern("*")).len(), 5);
    assert_eq!(c.ips_for(&a, &name("github.com")), set(&["2001:db8::1"]));
    assert!(c.ips_for(&a, &name("google.com")).is_empty());
}

#[test]
fn fqdn_list_is_sorted_filtered_and_serialisable() {
    let mut c = FqdnCache::default();
    let t0 = Instant::now();
    let a = ep("ns1/pod");
    let b = ep("ns0/pod");
    c.observe(&a, "b.com", &ips(&["2.2.2.2", "1.1.1.1"]), 30, t0);
    c.observe(&a, "a.com", &ips(&["3.3.3.3"]), 30, t0);
    c.observe(&b, "z.com", &ips(&["4.4.4.4"]), 30, t0);
    let all = c.list(None, t0 + Duration::from_millis(500));
    let keys: Vec<(&str, &str, IpAddr)> = all
        .iter()
        .map(|e| (e.endpoint.as_str(), e.name.as_str(), e.ip))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("ns0/pod", "z.com.", ip("4.4.4.4")),
            ("ns1/pod", "a.com.", ip("3.3.3.3")),
            ("ns1/pod", "b.com.", ip("1.1.1.1")),
            ("ns1/pod", "b.com.", ip("2.2.2.2")),
        ]
    );
    assert_eq!(all[0].expires_in_secs, 30, "rounded up");
    assert_eq!(all[0].source, Source::Lookup);
    assert_eq!(c.list(Some(&b), t0).len(), 1);
    assert!(c.list(Some(&ep("ns2/pod")), t0).is_empty());

    let json = serde_json::to_value(&all[0]).expect("serialises");
    assert_eq!(
        json,
        serde_json::json!({
            "endpoint": "ns0/pod",
            "name": "z.com.",
            "ip": "4.4.4.4",
            "expires_in_secs": 30,
            "expired": false,
            "source": "lookup",
        })
    );
    let metrics = serde_json::to_value(c.metrics()).expect("serialises");
    assert_eq!(metrics["entries"], 4);
}

#[test]
fn fqdn_save_load_round_trip_keeps_names_reachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fqdn-cache.json");
    let t0 = Instant::now();
    let a = ep("default/client");
    let b = ep("default/other");
    let mut c = FqdnCache::default();
    c.observe(&a, "google.com", &ips(&["1.1.1.1", "2001:db8::1"]), 300, t0);
    c.observe(&b, "github.com", &ips(&["2.2.2.2"]), 60, t0);
    c.observe(&b, "gone.com", &ips(&["3.3.3.3"]), 5, t0);
    // gone.com expired but kept for a live connection at save time.
    assert!(c.expire(t0 + secs(10), |_, _| true).is_empty());
    let written = c
        .save(&path, t0 + secs(10), wall(1_000_000))
        .expect("saved");
    assert_eq!(written, 4);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("readdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");

    // The new process: another monotonic origin, 20 s later on the wall clock.
    let t1 = Instant::now() + secs(5000);
    let mut restored = FqdnCache::default();
    let outcome = restored.load(&path, t1, wall(1_000_020)).expect("loaded");
    assert_eq!(outcome.restored, 4);
    assert_eq!(outcome.skipped, 0);
    assert!(!outcome.missing);
    assert_eq!(
        restored.ips_for(&a, &name("google.com")),
        set(&["1.1.1.1", "2001:db8::1"])
    );
    assert_eq!(restored.ips_for(&b, &name("github.com")), set(&["2.2.2.2"]));
    let list = restored.list(Some(&a), t1);
    assert_eq!(list[0].expires_in_secs, 300 - 30);
    assert_eq!(list[0].source, Source::Restored);
    // The expired entry survives the load, and goes at the next expiry unless in use.
    assert_eq!(restored.ips_for(&b, &name("gone.com")), set(&["3.3.3.3"]));
    let removed = restored.expire(t1 + secs(1), never_in_use);
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].name, "gone.com.");
    // A fresh lookup turns a restored entry into a lookup one.
    restored.observe(&a, "google.com", &ips(&["1.1.1.1"]), 300, t1);
    assert_eq!(restored.list(Some(&a), t1)[0].source, Source::Lookup);
    // Saving over an existing file replaces it.
    restored
        .save(&path, t1, wall(1_000_020))
        .expect("saved again");
    let mut again = FqdnCache::default();
    assert_eq!(
        again
            .load(&path, t1, wall(1_000_020))
            .expect("loaded")
            .restored,
        3
    );
}

#[test]
fn fqdn_load_applies_the_bounds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cache.json");
    let t0 = Instant::now();
    let a = ep("default/client");
    let mut c = FqdnCache::default();
    c.observe(
        &a,
        "cdn.com",
        &ips(&["1.1.1.1", "1.1.1.2", "1.1.1.3"]),
        30,
        t0,
    );
    c.save(&path, t0, wall(100)).expect("saved");
    let mut small = FqdnCache::new(config(0, 2, 1000));
    let outcome = small.load(&path, t0, wall(100)).expect("loaded");
    assert_eq!(outcome.restored, 2);
    assert_eq!(small.len(), 2);
}

#[test]
fn fqdn_load_missing_file_is_empty_not_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = FqdnCache::default();
    let outcome = c
        .load(&dir.path().join("absent.json"), Instant::now(), wall(100))
        .expect("a missing file is fine");
    assert!(outcome.missing);
    assert_eq!(outcome.restored, 0);
    assert!(c.is_empty());
}

#[test]
fn fqdn_load_corrupt_file_is_a_typed_error_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cache.json");
    let t0 = Instant::now();
    let a = ep("default/client");
    let mut c = FqdnCache::default();
    c.observe(&a, "a.com", &ips(&["1.1.1.1"]), 30, t0);
    for bad in [
        &b"{not json"[..],
        b"",
        b"\xff\xfe",
        br#"{"version":1,"entries":[{"endpoint":"a/b","name":"x.","ip":"nope","expires_at_unix_secs":1,"source":"lookup"}]}"#,
    ] {
        std::fs::write(&path, bad).expect("write");
        let err = c.load(&path, t0, wall(100)).expect_err("corrupt");
        assert!(matches!(err, PersistError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
    std::fs::write(&path, br#"{"version":99,"entries":[]}"#).expect("write");
    let err = c.load(&path, t0, wall(100)).expect_err("version");
    assert!(matches!(
        err,
        PersistError::UnsupportedVersion { found: 99, .. }
    ));
    assert_eq!(c.len(), 1, "a failed load leaves the cache as it was");
}

#[test]
fn fqdn_load_skips_entries_with_a_bad_endpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cache.json");
    std::fs::write(
        &path,
        br#"{"version":1,"entries":[
            {"endpoint":"no-slash","name":"x.com.","ip":"1.1.1.1","expires_at_unix_secs":200,"source":"lookup"},
            {"endpoint":"ns/pod","name":"X.com","ip":"1.1.1.2","expires_at_unix_secs":200,"source":"lookup"}
        ]}"#,
    )
    .expect("write");
    let mut c = FqdnCache::default();
    let t0 = Instant::now();
    let outcome = c.load(&path, t0, wall(100)).expect("loaded");
    assert_eq!((outcome.restored, outcome.skipped), (1, 1));
    assert_eq!(c.ips_for(&ep("ns/pod"), &name("x.com")), set(&["1.1.1.2"]));
    assert_eq!(c.list(None, t0)[0].expires_in_secs, 100);
}

#[test]
fn fqdn_save_to_an_unwritable_place_is_a_typed_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("no-such-dir").join("cache.json");
    let c = FqdnCache::default();
    let err = c
        .save(&path, Instant::now(), wall(100))
        .expect_err("no directory");
    assert!(matches!(err, PersistError::Write { .. }), "{err}");
}

#[test]
fn fqdn_global_limit_evicts_expired_in_use_entries_first() {
    let mut c = FqdnCache::new(config(0, 1000, 2));
    let t0 = Instant::now();
    let a = ep("default/client");
    c.observe(&a, "old.com", &ips(&["1.1.1.1"]), 5, t0);
    c.observe(&a, "new.com", &ips(&["2.2.2.2"]), 60, t0);
    assert!(c.expire(t0 + secs(10), |_, _| true).is_empty());
    let out = c.observe(&a, "newer.com", &ips(&["3.3.3.3"]), 30, t0 + secs(10));
    assert_eq!(out.added, ips(&["3.3.3.3"]));
    assert_eq!(out.evicted.len(), 1);
    assert_eq!(out.evicted[0].name, "old.com.");
    assert_eq!(out.evicted[0].reason, RemovalReason::GlobalLimit);
}

#[test]
fn fqdn_refreshed_ip_evicted_is_reported_for_withdrawal() {
    let mut c = FqdnCache::new(config(0, 1, 1000));
    let t0 = Instant::now();
    let a = ep("default/client");
    c.observe(&a, "a.com", &ips(&["1.1.1.1"]), 100, t0);
    // Both now expire at t0+200; the tie goes by IP, so the refreshed 1.1.1.1 is evicted,
    // and as it was programmed it is reported for withdrawal (and not as refreshed).
    let out = c.observe(&a, "a.com", &ips(&["1.1.1.1", "1.1.1.9"]), 200, t0);
    assert_eq!(out.added, ips(&["1.1.1.9"]));
    assert!(out.refreshed.is_empty());
    assert_eq!(out.evicted.len(), 1);
    assert_eq!(out.evicted[0].ip, ip("1.1.1.1"));
    assert_eq!(out.evicted[0].reason, RemovalReason::PerNameLimit);
}

#[test]
fn fqdn_huge_ttl_does_not_overflow() {
    let mut c = FqdnCache::default();
    let t0 = Instant::now();
    let a = ep("default/client");
    c.observe(&a, "forever.com", &ips(&["1.1.1.1"]), u32::MAX, t0);
    assert_eq!(c.list(None, t0)[0].expires_in_secs, u64::from(u32::MAX));
    assert!(c.expire(t0 + secs(1 << 20), never_in_use).is_empty());
}
