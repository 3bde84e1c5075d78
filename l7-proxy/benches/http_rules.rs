//! HTTP rule evaluation and compile cost against the number of rules (benchmark B3 in
//! process, without the network): `HttpRuleSet::evaluate` on 1, 100, 1k and 10k rules of
//! a mixed set (40 % exact paths, 30 % prefixes, 30 % regexes) and of a regex-only set,
//! for a request only the last rule allows and for a denied one; and `compile` of 10k.
//!
//! The sets are those of `bench/src/rules.rs` (the network benchmark), rebuilt here so
//! that this crate does not depend on the bench crate.
//!
//! `cargo bench -p l7-proxy --bench http_rules`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use l7_proxy::{HttpRuleSet, HttpRuleSpec, RequestView};

#[derive(Clone, Copy)]
enum Mix {
    Mixed,
    Regex,
}

impl Mix {
    fn name(self) -> &'static str {
        match self {
            Mix::Mixed => "mixed",
            Mix::Regex => "regex",
        }
    }
}

/// As `bench/src/rules.rs`: a literal prefix then character classes, all rules sharing
/// `/api/v` so that no engine can reject most of them on a first byte.
fn regex_for(i: usize) -> String {
    format!("/api/v[0-9]/svc{i}/[a-z]+/[0-9]+")
}

/// `n` rules, all `GET`; the last is always a regex, matched only by [`allowed_path`].
fn specs(mix: Mix, n: usize) -> Vec<HttpRuleSpec> {
    (0..n)
        .map(|i| {
            let path = match mix {
                _ if i + 1 == n => regex_for(i),
                Mix::Regex => regex_for(i),
                Mix::Mixed => match i % 10 {
                    0..=3 => format!("/api/v1/exact/{i}"),
                    4..=6 => format!("/api/v1/prefix/{i}/.*"),
                    _ => regex_for(i),
                },
            };
            HttpRuleSpec {
                method: Some("GET".to_owned()),
                path: Some(path),
                ..HttpRuleSpec::default()
            }
        })
        .collect()
}

fn allowed_path(n: usize) -> String {
    format!("/api/v1/svc{}/items/42", n - 1)
}

const DENIED_PATH: &str = "/api/v1/denied/items/42";

fn request(target: &str) -> RequestView<'_> {
    RequestView {
        method: "GET",
        target,
        host: Some("svc"),
        headers: &[("user-agent", "bench"), ("accept", "*/*")],
    }
}

fn evaluate(c: &mut Criterion) {
    for mix in [Mix::Mixed, Mix::Regex] {
        let mut group = c.benchmark_group(format!("evaluate/{}", mix.name()));
        group.sample_size(20);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(2));
        for n in [1, 100, 1_000, 10_000] {
            let set = HttpRuleSet::compile(&specs(mix, n)).expect("bench rules compile");
            let allowed = allowed_path(n);
            let allow_req = request(&allowed);
            assert!(set.evaluate(&allow_req).is_allowed());
            let deny_req = request(DENIED_PATH);
            assert!(!set.evaluate(&deny_req).is_allowed());
            group.bench_with_input(BenchmarkId::new("allow_last", n), &n, |b, _| {
                b.iter(|| black_box(set.evaluate(black_box(&allow_req))))
            });
            group.bench_with_input(BenchmarkId::new("deny", n), &n, |b, _| {
                b.iter(|| black_box(set.evaluate(black_box(&deny_req))))
            });
            // Real traffic is not one path repeated: 64 paths, each allowed by another
            // regex rule spread over the set, in turn (lazy DFA caches see more states).
            let varied: Vec<String> = (0..64)
                .map(|k| n - 1 - (k * n / 64) / 10 * 10)
                .map(|i| match mix {
                    Mix::Regex => format!("/api/v1/svc{i}/items/42"),
                    // The regexes of the mixed set are rules 7, 8, 9 (mod 10), and the last.
                    Mix::Mixed if i + 1 == n => allowed_path(n),
                    Mix::Mixed => format!("/api/v1/svc{}/items/42", i / 10 * 10 + 9),
                })
                .collect();
            for path in &varied {
                assert!(set.evaluate(&request(path)).is_allowed(), "{path}");
            }
            let mut next = 0;
            group.bench_with_input(BenchmarkId::new("allow_varied", n), &n, |b, _| {
                b.iter(|| {
                    next = (next + 1) % varied.len();
                    let path = varied.get(next).map_or(DENIED_PATH, String::as_str);
                    black_box(set.evaluate(black_box(&request(path))))
                })
            });
        }
        group.finish();
    }
}

fn compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(5));
    for mix in [Mix::Mixed, Mix::Regex] {
        let specs = specs(mix, 10_000);
        group.bench_function(BenchmarkId::new(mix.name(), 10_000), |b| {
            b.iter(|| black_box(HttpRuleSet::compile(black_box(&specs)).expect("compiles")))
        });
    }
    group.finish();
}

criterion_group!(benches, evaluate, compile);
criterion_main!(benches);
