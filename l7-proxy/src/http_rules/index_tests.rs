//! Differential tests of the fast paths: pattern shapes (`shape.rs`) and the path index
//! (`index.rs`) must decide exactly as compiling every pattern as a regex and trying
//! every rule in turn, the implementation they replace.

use super::*;

use crate::test_rng::Rng;

fn pick<'a>(rng: &mut Rng, items: &[&'a str]) -> &'a str {
    rng.pick(items).copied().unwrap_or("")
}

/// Patterns of every shape: exact, prefix, general regex, with anchors, alternations,
/// assertions, `(?s)` and non-ASCII text. `None` is an absent field.
const METHODS: &[&str] = &[
    "GET", "GET|HEAD", "POST", "(?i)get", "G.T", "[A-Z]+", "^GET$",
];
const PATHS: &[&str] = &[
    "",
    "/a",
    "/a/b",
    "/a/.*",
    "/a.*",
    "/b/.*",
    "(?s)/a/.*",
    "^/a$",
    "^/a/.*$",
    "/a|/b",
    "/v[12]/x",
    "/a/[0-9]+",
    "/.*/x",
    ".*",
    r"/a/b\?q=1",
    "/a/.+",
    "/é/.*",
    "/c(/d)?",
    r"/a\b",
    r"/a\b.*",
    "(/a|/c)/.*",
    "/a/.*?",
    "(?i)/A/B",
    r"/a/b\?.*",
];
const HOSTS: &[&str] = &[
    "svc",
    "svc|other",
    "s.c",
    r"api\.example\.com",
    "svc:8080",
    ".*",
    "(?s).*",
];
const HEADERS: &[&str] = &["X-A: 1", "X-A", "x-b: 2"];

fn random_rule(rng: &mut Rng) -> HttpRuleSpec {
    let mut spec = HttpRuleSpec::default();
    if rng.chance(40) {
        spec.method = Some(pick(rng, METHODS).to_owned());
    }
    if rng.chance(90) {
        spec.path = Some(pick(rng, PATHS).to_owned());
    }
    if rng.chance(15) {
        spec.host = Some(pick(rng, HOSTS).to_owned());
    }
    if rng.chance(15) {
        spec.headers.push(pick(rng, HEADERS).to_owned());
    }
    if rng.chance(8) {
        let mismatch = [
            None,
            Some(MismatchAction::Log),
            Some(MismatchAction::Add),
            Some(MismatchAction::Delete),
            Some(MismatchAction::Replace),
        ];
        spec.header_matches.push(HeaderMatchSpec {
            name: pick(rng, &["X-A", "x-b"]).to_owned(),
            value: rng.chance(70).then(|| pick(rng, &["1", "2"]).to_owned()),
            secret: None,
            mismatch: mismatch.get(rng.below(mismatch.len())).copied().flatten(),
        });
    }
    spec
}

const TARGETS: &[&str] = &[
    "/",
    "/a",
    "/a/",
    "/a/b",
    "/a/c",
    "/a/123",
    "/a/b?q=1",
    "/a/b?q=2",
    "/a?x",
    "/ab",
    "/a-",
    "/b",
    "/b/x",
    "/v1/x",
    "/v3/x",
    "/x/y/x",
    "/é/z",
    "/é",
    "/c",
    "/c/d",
    "/c/e",
    "/a/b/../c",
    "//a//b",
    "http://other/a",
    "http://svc:8080/a/b",
    "/A/B",
    "/a%0Ab",
    "*",
];
const REQUEST_METHODS: &[&str] = &["GET", "HEAD", "POST", "get", "PUT", "OPTIONS"];

/// Runs `sets` random rule sets of up to `max_rules` rules against random requests.
fn differential(seed: u64, sets: usize, max_rules: usize) {
    let mut rng = Rng(seed);
    for round in 0..sets {
        let n = rng.below(max_rules + 1);
        let specs: Vec<HttpRuleSpec> = (0..n).map(|_| random_rule(&mut rng)).collect();
        let reference: Result<Vec<_>, _> = specs
            .iter()
            .map(|spec| CompiledHttpRule::compile_all_regex(spec, &|_| None))
            .collect();
        let (fast, reference) = match (HttpRuleSet::compile(&specs), reference) {
            (Ok(fast), Ok(reference)) => (fast, HttpRuleSet::from_rules(reference)),
            // Some `headerMatches` combinations are refused (an action without a value):
            // both must refuse them alike.
            (Err(fast), Err(reference)) => {
                assert_eq!(fast.error, reference, "{specs:?}");
                continue;
            }
            (fast, reference) => panic!("{specs:?}: {fast:?} vs {reference:?}"),
        };
        assert_eq!(fast.index.is_some(), n >= INDEX_MIN_RULES);
        for _ in 0..40 {
            let header_sets: [&[(&str, &str)]; 5] = [
                &[],
                &[("x-a", "1")],
                &[("x-a", "2"), ("x-b", "2")],
                &[("X-B", "2"), ("x-a", "1")],
                &[("x-b", "3")],
            ];
            let headers = header_sets
                .get(rng.below(header_sets.len()))
                .copied()
                .unwrap_or(&[]);
            let host = [
                Some("svc"),
                Some("other"),
                None,
                Some("svc:8080"),
                Some("s\nc"),
            ]
            .get(rng.below(5))
            .copied()
            .flatten();
            let req = RequestView {
                method: pick(&mut rng, REQUEST_METHODS),
                target: pick(&mut rng, TARGETS),
                host,
                headers,
            };
            let want = reference.evaluate_linear(&req);
            assert_eq!(
                fast.evaluate(&req),
                want,
                "round {round}, rules {specs:?}, request {req:?}"
            );
            assert_eq!(fast.evaluate_linear(&req), want, "round {round}, {req:?}");
        }
    }
}

// Sets on both sides of the index threshold, with and without mismatch actions.
#[test]
fn index_decides_as_linear_scan() {
    differential(0x9E37_79B9_7F4A_7C15, 400, 40);
}

// Sets large enough for several regex sets, whose order the index relies on.
#[test]
fn index_with_several_regex_sets() {
    differential(0xD1B5_4A32_D192_ED03, 4, 1200);
}

// A shape (exact or prefix) matches exactly what its anchored regex matches, including
// values with `\n`, which `.` does not match unless `(?s)`.
#[test]
fn shapes_match_as_their_regex() {
    let values = [
        "", "GET", "get", "HEAD", "GAT", "G\nT", "POST", "/a", "/a/", "/a/\n", "/a/b\nc", "/a\n",
        "/ab", "/b", "/v1/x", "/é/z", "svc", "svc:8080", "s\nc", "/c/d", "/c",
    ];
    for pattern in METHODS.iter().chain(PATHS).chain(HOSTS) {
        let spec = HttpRuleSpec {
            host: Some((*pattern).to_owned()),
            ..HttpRuleSpec::default()
        };
        let fast = CompiledHttpRule::compile(&spec).expect("compiles");
        let reference = CompiledHttpRule::compile_all_regex(&spec, &|_| None).expect("compiles");
        for value in values {
            let no_headers: &[(&str, &str)] = &[];
            assert_eq!(
                fast.first_unmet("GET", "/", Some(value), no_headers),
                reference.first_unmet("GET", "/", Some(value), no_headers),
                "{pattern:?} against {value:?}"
            );
        }
    }
}

// Invalid patterns fail with the same message whether or not they have a simple shape
// when parsed loosely, and whatever the set size.
#[test]
fn invalid_patterns_keep_their_errors() {
    for pattern in ["/a(", "a)|(b", "[GET", "(?<!x)a", r"\1", r"\w{1000}{1000}"] {
        let spec = HttpRuleSpec {
            path: Some(pattern.to_owned()),
            ..HttpRuleSpec::default()
        };
        let fast = CompiledHttpRule::compile(&spec).expect_err(pattern);
        let reference = CompiledHttpRule::compile_all_regex(&spec, &|_| None).expect_err(pattern);
        assert_eq!(fast, reference, "{pattern}");
        let mut specs = vec![HttpRuleSpec::default(); 20];
        specs.push(spec);
        let err = HttpRuleSet::compile(&specs).expect_err(pattern);
        assert_eq!(err.to_string(), format!("http[20].{fast}"));
    }
}

// A denial of a large set explains the first rules and counts the rest.
#[test]
fn large_denials_are_capped() {
    let specs: Vec<HttpRuleSpec> = (0..1000)
        .map(|i| HttpRuleSpec {
            path: Some(format!("/p{i}")),
            ..HttpRuleSpec::default()
        })
        .collect();
    let set = HttpRuleSet::compile(&specs).expect("compiles");
    let req = RequestView {
        method: "GET",
        target: "/none",
        host: None,
        headers: &[],
    };
    let HttpVerdict::Denied { reason } = set.evaluate(&req) else {
        panic!("denied");
    };
    let DenyReason::NoRuleMatched { failures, omitted } = &reason else {
        panic!("{reason:?}");
    };
    assert_eq!(failures.len(), MAX_EXPLAINED_RULES);
    assert_eq!(omitted, &(1000 - MAX_EXPLAINED_RULES));
    assert_eq!(
        failures.last().map(|f| f.rule_index),
        Some(MAX_EXPLAINED_RULES - 1)
    );
    let text = reason.to_string();
    assert!(
        text.ends_with(
            "http[15].path: path \"/none\" does not match \"/p15\"; 984 more rules not explained"
        ),
        "{text}"
    );
    assert!(
        set.evaluate(&RequestView {
            target: "/p999",
            ..req
        })
        .is_allowed()
    );
}
