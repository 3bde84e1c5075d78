//! Evaluation tests, one table per SEMANTICS section.

use super::*;

/// Rules written as JSON, the shape they have in policy YAML.
fn set(rules: &str) -> HttpRuleSet {
    let specs: Vec<HttpRuleSpec> = serde_json::from_str(rules).expect("test rules parse");
    HttpRuleSet::compile(&specs).expect("test rules compile")
}

#[derive(Debug, PartialEq, Eq)]
enum Want<'a> {
    /// Allowed by this rule, forwarding this target.
    Allow(usize, &'a str),
    Deny,
    Reject,
}

struct Case<'a> {
    rules: &'a str,
    method: &'a str,
    target: &'a str,
    host: Option<&'a str>,
    headers: &'a [(&'a str, &'a str)],
    want: Want<'a>,
}

const fn case<'a>(rules: &'a str, method: &'a str, target: &'a str, want: Want<'a>) -> Case<'a> {
    Case {
        rules,
        method,
        target,
        host: Some("svc"),
        headers: &[],
        want,
    }
}

fn run(cases: &[Case<'_>]) {
    for c in cases {
        let req = RequestView {
            method: c.method,
            target: c.target,
            host: c.host,
            headers: c.headers,
        };
        let got = match set(c.rules).evaluate(&req) {
            HttpVerdict::Allowed {
                rule_index,
                normalized_target,
                ..
            } => {
                let want_target = match c.want {
                    Want::Allow(_, t) => t,
                    _ => "",
                };
                assert_eq!(normalized_target, want_target, "{} {}", c.rules, c.target);
                Want::Allow(rule_index, want_target)
            }
            HttpVerdict::Denied { .. } => Want::Deny,
            HttpVerdict::Rejected { status, .. } => {
                assert_eq!(status, 400);
                Want::Reject
            }
        };
        assert_eq!(
            got, c.want,
            "rules {} {} {} host {:?} headers {:?}",
            c.rules, c.method, c.target, c.host, c.headers
        );
    }
}

use Want::{Allow, Deny, Reject};

// SEMANTICS 4.2: regexes match the whole value.
#[test]
fn regexes_match_whole_value() {
    run(&[
        case(
            r#"[{"path":"/public"}]"#,
            "GET",
            "/public",
            Allow(0, "/public"),
        ),
        case(r#"[{"path":"/public"}]"#, "GET", "/public/x", Deny),
        case(r#"[{"path":"/public"}]"#, "GET", "/publicx", Deny),
        case(r#"[{"path":"/public"}]"#, "GET", "/x/public", Deny),
        case(
            r#"[{"path":"/v1/.*"}]"#,
            "GET",
            "/v1/a/b",
            Allow(0, "/v1/a/b"),
        ),
        case(r#"[{"path":"/v1/.*"}]"#, "GET", "/v1/", Allow(0, "/v1/")),
        case(r#"[{"path":"/v1/.*"}]"#, "GET", "/v1", Deny),
        case(r#"[{"path":"/v1/.*"}]"#, "GET", "/v2/v1/x", Deny),
        case(r#"[{"path":"/a|/b"}]"#, "GET", "/b", Allow(0, "/b")),
        case(r#"[{"path":"/a|/b"}]"#, "GET", "/a/b", Deny),
        case(r#"[{"method":"GET|HEAD"}]"#, "GET", "/", Allow(0, "/")),
        case(r#"[{"method":"GET|HEAD"}]"#, "GETX", "/", Deny),
        case(r#"[{"path":""}]"#, "GET", "/any", Allow(0, "/any")),
    ]);
}

// SEMANTICS 4.3: the path regex sees the query string.
#[test]
fn path_includes_query() {
    run(&[
        case(r#"[{"path":"/public"}]"#, "GET", "/public?x=1", Deny),
        case(
            r#"[{"path":"/public.*"}]"#,
            "GET",
            "/public?x=1",
            Allow(0, "/public?x=1"),
        ),
        case(
            r#"[{"path":"/p\\?x=1"}]"#,
            "GET",
            "/p?x=1",
            Allow(0, "/p?x=1"),
        ),
        case(r#"[{"path":"/p\\?x=1"}]"#, "GET", "/p?x=2", Deny),
        case(
            r#"[{"path":"/b\\?q=/../a"}]"#,
            "GET",
            "/a/../b?q=/../a",
            Allow(0, "/b?q=/../a"),
        ),
    ]);
}

// SEMANTICS 4.4: host as sent, with its port; `.` is a wildcard.
#[test]
fn host_matching() {
    let with_host = |rules, host, want| Case {
        host,
        ..case(rules, "GET", "/", want)
    };
    run(&[
        with_host(
            r#"[{"host":"api\\.example\\.com"}]"#,
            Some("api.example.com"),
            Allow(0, "/"),
        ),
        with_host(
            r#"[{"host":"api\\.example\\.com"}]"#,
            Some("api.example.com:8080"),
            Deny,
        ),
        with_host(
            r#"[{"host":"api\\.example\\.com:8080"}]"#,
            Some("api.example.com:8080"),
            Allow(0, "/"),
        ),
        with_host(
            r#"[{"host":"api.example.com"}]"#,
            Some("apiXexample.com"),
            Allow(0, "/"),
        ),
        with_host(
            r#"[{"host":"api\\.example\\.com"}]"#,
            Some("apiXexample.com"),
            Deny,
        ),
        with_host(
            r#"[{"host":"api\\.example\\.com"}]"#,
            Some("API.example.com"),
            Deny,
        ),
        with_host(r#"[{"host":"api\\.example\\.com"}]"#, None, Deny),
        with_host(r#"[{"host":".*"}]"#, None, Deny),
        with_host(r#"[{"path":"/"}]"#, None, Allow(0, "/")),
        // Absolute-form: the target's authority is the host (RFC 9112 3.2.2).
        Case {
            target: "http://good:80/x",
            ..with_host(r#"[{"host":"good:80"}]"#, Some("evil"), Allow(0, "/x"))
        },
        Case {
            target: "http://evil/x",
            ..with_host(r#"[{"host":"good"}]"#, Some("good"), Deny)
        },
    ]);
}

// SEMANTICS 4.5: method is case-sensitive.
#[test]
fn method_is_case_sensitive() {
    run(&[
        case(r#"[{"method":"GET"}]"#, "GET", "/", Allow(0, "/")),
        case(r#"[{"method":"GET"}]"#, "get", "/", Deny),
        case(r#"[{"method":"get"}]"#, "GET", "/", Deny),
        case(r#"[{"method":"(?i)get"}]"#, "GET", "/", Allow(0, "/")),
    ]);
}

// SEMANTICS 4.6: normalisation before matching; the matched path is forwarded.
#[test]
fn normalises_before_matching() {
    let x = r#"[{"path":"/x"}]"#;
    let b = r#"[{"path":"/b"}]"#;
    let public = r#"[{"path":"/public/.*"}]"#;
    run(&[
        case(x, "GET", "//x", Allow(0, "/x")),
        case(b, "GET", "/a/../b", Allow(0, "/b")),
        case(b, "GET", "/a/%2e%2e/b", Allow(0, "/b")),
        case(b, "GET", "/a/%2E%2e/./b", Allow(0, "/b")),
        case(public, "GET", "/public/../admin", Deny),
        case(public, "GET", "/public/%2e%2e/admin", Deny),
        case(public, "GET", "/public/..%2fadmin", Reject),
        case(public, "GET", "/public/..%2Fadmin", Reject),
        case(public, "GET", "/public/..%5cadmin", Reject),
        case(public, "GET", "/public/..%5Cadmin", Reject),
        case(public, "GET", "/public\\..\\admin", Reject),
        case(public, "GET", "/public/x#frag", Reject),
        case(r#"[{"path":"/"}]"#, "GET", "/..", Allow(0, "/")),
        case(r#"[{"path":"/"}]"#, "GET", "/../..", Allow(0, "/")),
        case(r#"[{}]"#, "GET", "http://a@b/", Reject),
        case(r#"[{}]"#, "GET", "http://b/p/../q?z", Allow(0, "/q?z")),
        case(r#"[{}]"#, "OPTIONS", "*", Allow(0, "*")),
        case(r#"[{}]"#, "GET", "*", Reject),
        // CONNECT: policed on its authority, with an empty path.
        case(r#"[{}]"#, "CONNECT", "host:443", Allow(0, "")),
        case(
            r#"[{"method":"CONNECT","host":"host:443"}]"#,
            "CONNECT",
            "host:443",
            Allow(0, ""),
        ),
        case(
            r#"[{"method":"CONNECT","host":"other"}]"#,
            "CONNECT",
            "host:443",
            Deny,
        ),
        case(
            r#"[{"method":"CONNECT","path":"/.*"}]"#,
            "CONNECT",
            "host:443",
            Deny,
        ),
        case(r#"[{}]"#, "CONNECT", "/x", Reject),
        case(r#"[{}]"#, "GET", "host:443", Reject),
        // Malformed targets are rejected even where nothing would be allowed.
        case(r#"[]"#, "GET", "/%2f", Reject),
    ]);
}

// SEMANTICS 4.7: `headers` entries.
#[test]
fn header_entries() {
    let h = |rules, headers, want| Case {
        headers,
        ..case(rules, "GET", "/", want)
    };
    let presence = r#"[{"headers":["X-Token"]}]"#;
    let value = r#"[{"headers":["X-Token: abc"]}]"#;
    let joined = r#"[{"headers":["Accept: a,b"]}]"#;
    run(&[
        h(presence, &[("X-Token", "")], Allow(0, "/")),
        h(presence, &[("x-token", "anything")], Allow(0, "/")),
        h(presence, &[("X-Other", "1")], Deny),
        h(presence, &[], Deny),
        h(value, &[("x-TOKEN", "abc")], Allow(0, "/")),
        h(value, &[("X-Token", "ABC")], Deny),
        h(value, &[("X-Token", "abc ")], Deny),
        h(value, &[("X-Token", "abc"), ("X-Token", "abc")], Deny),
        h(
            joined,
            &[("accept", "a"), ("X", "y"), ("ACCEPT", "b")],
            Allow(0, "/"),
        ),
        h(joined, &[("accept", "b"), ("accept", "a")], Deny),
        h(
            r#"[{"headers":["Accept: a"]}]"#,
            &[("accept", "a"), ("accept", "b")],
            Deny,
        ),
        h(r#"[{"headers":["A: 1", "B"]}]"#, &[("a", "1")], Deny),
        h(
            r#"[{"headers":["A: 1", "B"]}]"#,
            &[("b", "2"), ("a", "1")],
            Allow(0, "/"),
        ),
    ]);
}

// SEMANTICS 3.3 (OR of rules, AND within one) and 4.9 (`{}` matches everything).
#[test]
fn rules_combine() {
    let two = r#"[{"method":"GET","path":"/a"},{"method":"POST"}]"#;
    run(&[
        case(two, "GET", "/a", Allow(0, "/a")),
        case(two, "GET", "/b", Deny),
        case(two, "POST", "/b", Allow(1, "/b")),
        case(r#"[{"path":"/a"},{}]"#, "DELETE", "/z", Allow(1, "/z")),
        case(r#"[{}]"#, "ANYTHING", "/z?q", Allow(0, "/z?q")),
        case(r#"[]"#, "GET", "/", Deny),
    ]);
    assert!(
        HttpRuleSet::allow_all()
            .evaluate(&request("GET", "/", &[]))
            .is_allowed()
    );
}

fn request<'a>(
    method: &'a str,
    target: &'a str,
    headers: &'a [(&'a str, &'a str)],
) -> RequestView<'a> {
    RequestView {
        method,
        target,
        host: Some("svc"),
        headers,
    }
}

#[test]
fn deny_reasons_name_the_unmet_condition() {
    let rules = set(r#"[{"method":"GET","path":"/a"},{"headers":["X-Key: s3cret"]},{"host":"h"}]"#);
    let verdict = rules.evaluate(&request("GET", "/b", &[("x-key", "guess")]));
    let HttpVerdict::Denied { reason } = verdict else {
        panic!("expected a denial, got {verdict:?}");
    };
    let text = reason.to_string();
    assert_eq!(
        text,
        "no HTTP rule matched: http[0].path: path \"/b\" does not match \"/a\"; \
         http[1].headers[0]: header \"x-key\" has another value; \
         http[2].host: host \"svc\" does not match \"h\""
    );
    assert!(!text.contains("guess"));
    assert_eq!(
        HttpRuleSet::default().evaluate(&request("GET", "/", &[])),
        HttpVerdict::Denied {
            reason: DenyReason::NoRules
        }
    );
}

/// Runs one set against one request and returns (rule, edits, logs), or `None` if denied.
fn actions(rules: &str, headers: &[(&str, &str)]) -> Option<(usize, Vec<HeaderEdit>, Vec<String>)> {
    match set(rules).evaluate(&request("GET", "/", headers)) {
        HttpVerdict::Allowed {
            rule_index,
            header_edits,
            logged_mismatches,
            ..
        } => Some((rule_index, header_edits, logged_mismatches)),
        _ => None,
    }
}

// SEMANTICS 4.8: headerMatches without and with a mismatch action.
#[test]
fn header_matches() {
    let plain = r#"[{"headerMatches":[{"name":"X-A","value":"1"}]}]"#;
    assert!(actions(plain, &[("x-a", "1")]).is_some());
    assert!(actions(plain, &[("x-a", "2")]).is_none());
    assert!(actions(plain, &[]).is_none());
    let presence = r#"[{"headerMatches":[{"name":"X-A"}]}]"#;
    assert!(actions(presence, &[("X-A", "")]).is_some());
    assert!(actions(presence, &[]).is_none());

    let with = |action: &str| {
        format!(r#"[{{"headerMatches":[{{"name":"X-A","value":"1","mismatch":"{action}"}}]}}]"#)
    };
    let add = |name: &str, value: &str| HeaderEdit::Add {
        name: name.into(),
        value: value.into(),
        sensitive: false,
    };
    let set_to = |name: &str, value: &str| HeaderEdit::Set {
        name: name.into(),
        value: value.into(),
        sensitive: false,
    };
    let remove = |name: &str| HeaderEdit::Remove { name: name.into() };
    let absent = "x-a: expected \"1\", got absent";
    let wrong = "x-a: expected \"1\", got \"2\"";
    type Row<'a> = (
        &'a str,
        &'a [(&'a str, &'a str)],
        Vec<HeaderEdit>,
        Vec<String>,
    );
    let table: Vec<Row<'_>> = vec![
        ("LOG", &[("x-a", "1")], vec![], vec![]),
        ("LOG", &[], vec![], vec![format!("{absent} (LOG)")]),
        (
            "LOG",
            &[("X-A", "2")],
            vec![],
            vec![format!("{wrong} (LOG)")],
        ),
        (
            "ADD",
            &[],
            vec![add("x-a", "1")],
            vec![format!("{absent} (ADD)")],
        ),
        (
            "ADD",
            &[("x-a", "2")],
            vec![add("x-a", "1")],
            vec![format!("{wrong} (ADD)")],
        ),
        (
            "DELETE",
            &[("x-a", "2")],
            vec![remove("x-a")],
            vec![format!("{wrong} (DELETE)")],
        ),
        ("DELETE", &[], vec![], vec![format!("{absent} (DELETE)")]),
        (
            "REPLACE",
            &[("x-a", "2")],
            vec![set_to("x-a", "1")],
            vec![format!("{wrong} (REPLACE)")],
        ),
        (
            "REPLACE",
            &[],
            vec![set_to("x-a", "1")],
            vec![format!("{absent} (REPLACE)")],
        ),
        ("REPLACE", &[("x-a", "1")], vec![], vec![]),
    ];
    for (action, headers, edits, logs) in table {
        let got = actions(&with(action), headers);
        assert_eq!(got, Some((0, edits, logs)), "{action} with {headers:?}");
    }
}

// SEMANTICS 4.8: secret-sourced values are never logged in clear; an unavailable secret
// with no fallback value never matches, whatever the mismatch action.
#[test]
fn secret_header_matches() {
    let spec = |value: Option<&str>, mismatch: Option<MismatchAction>| HttpRuleSpec {
        header_matches: vec![HeaderMatchSpec {
            name: "Authorization".into(),
            value: value.map(str::to_owned),
            secret: Some(SecretRef {
                namespace: Some("ns".into()),
                name: "token".into(),
            }),
            mismatch,
        }],
        ..HttpRuleSpec::default()
    };
    let eval = |rules: &HttpRuleSet, headers: &[(&str, &str)]| {
        rules.evaluate(&request("GET", "/", headers))
    };

    // No secret value, no fallback: never matches, even with LOG.
    for mismatch in [
        None,
        Some(MismatchAction::Log),
        Some(MismatchAction::Replace),
    ] {
        let rules = HttpRuleSet::compile(&[spec(None, mismatch)]).expect("compiles");
        let verdict = eval(&rules, &[("authorization", "Bearer x")]);
        let HttpVerdict::Denied { reason } = verdict else {
            panic!("{mismatch:?}: expected a denial, got {verdict:?}");
        };
        assert!(
            reason
                .to_string()
                .contains("secret ns/token is not available"),
            "{reason}"
        );
    }

    // The secret's value, once known, wins over the fallback, and is redacted everywhere.
    let resolve = |s: &SecretRef| (s.name == "token").then(|| "Bearer s3cret".to_owned());
    let rules = HttpRuleSet::compile_with_secrets(
        &[spec(Some("fallback"), Some(MismatchAction::Replace))],
        &resolve,
    )
    .expect("compiles");
    assert!(eval(&rules, &[("Authorization", "Bearer s3cret")]).is_allowed());
    let verdict = eval(&rules, &[("Authorization", "Bearer guess")]);
    let HttpVerdict::Allowed {
        header_edits,
        logged_mismatches,
        ..
    } = &verdict
    else {
        panic!("expected Allowed, got {verdict:?}");
    };
    assert_eq!(
        header_edits,
        &vec![HeaderEdit::Set {
            name: "authorization".into(),
            value: "Bearer s3cret".into(),
            sensitive: true
        }]
    );
    assert_eq!(
        logged_mismatches,
        &vec!["authorization: expected [redacted], got [redacted] (REPLACE)".to_owned()]
    );
    let shown = format!("{verdict:?}");
    assert!(
        !shown.contains("s3cret") && !shown.contains("guess"),
        "{shown}"
    );

    // Unreadable secret with a fallback value: the fallback is used, and still redacted.
    let rules = HttpRuleSet::compile(&[spec(Some("fallback"), Some(MismatchAction::Log))])
        .expect("compiles");
    assert_eq!(
        eval(&rules, &[]),
        HttpVerdict::Allowed {
            rule_index: 0,
            normalized_target: "/".into(),
            header_edits: vec![],
            logged_mismatches: vec!["authorization: expected [redacted], got absent (LOG)".into()],
        }
    );
    let strict = HttpRuleSet::compile(&[spec(Some("fallback"), None)]).expect("compiles");
    assert!(eval(&strict, &[("authorization", "fallback")]).is_allowed());
    assert!(!eval(&strict, &[("authorization", "other")]).is_allowed());
}

// SEMANTICS 4.8 with several rules: as in Cilium, every rule whose conditions hold runs
// its actions, later rules see earlier edits, and the first such rule is reported.
#[test]
fn actions_of_all_matching_rules_apply_in_order() {
    let rules = r#"[
        {"path":"/nope"},
        {"headerMatches":[{"name":"X-A","value":"1","mismatch":"REPLACE"}]},
        {"headers":["X-A: 1"],"headerMatches":[{"name":"X-B","mismatch":"ADD"}]},
        {"method":"POST","headerMatches":[{"name":"X-C","mismatch":"ADD"}]}
    ]"#;
    let got = actions(rules, &[("x-a", "0")]).expect("allowed");
    assert_eq!(got.0, 1);
    assert_eq!(
        got.1,
        vec![
            HeaderEdit::Set {
                name: "x-a".into(),
                value: "1".into(),
                sensitive: false
            },
            HeaderEdit::Add {
                name: "x-b".into(),
                value: String::new(),
                sensitive: false
            },
        ]
    );
    assert_eq!(
        got.2,
        vec![
            "x-a: expected \"1\", got \"0\" (REPLACE)".to_owned(),
            "x-b: expected present, got absent (ADD)".to_owned(),
        ]
    );
}

#[test]
fn absolute_form_sets_host_for_the_upstream() {
    let rules = set(r#"[{}]"#);
    let req = RequestView {
        method: "GET",
        target: "http://real:8080/a",
        host: Some("other"),
        headers: &[],
    };
    let HttpVerdict::Allowed { header_edits, .. } = rules.evaluate(&req) else {
        panic!("expected Allowed");
    };
    assert_eq!(
        header_edits,
        vec![HeaderEdit::Set {
            name: "host".into(),
            value: "real:8080".into(),
            sensitive: false
        }]
    );
    let same = RequestView {
        host: Some("real:8080"),
        ..req
    };
    let HttpVerdict::Allowed { header_edits, .. } = rules.evaluate(&same) else {
        panic!("expected Allowed");
    };
    assert!(header_edits.is_empty());
}

// Bad input never panics: odd targets, methods, hosts and headers through a set that
// exercises every code path.
#[test]
fn odd_requests_never_panic() {
    let rules = set(r#"[{"path":"/a.*","headers":["X: 1"]},
            {"host":"h:1","headerMatches":[{"name":"X","value":"é","mismatch":"REPLACE"}]},
            {"method":"G.*","headerMatches":[{"name":"Y","mismatch":"DELETE"}]}]"#);
    let pieces = [
        "%", "%%", "%zz", "%2e", "%2F", "%5c", "%00", "%e9", "é", "☃", "/", "//", ".", "..", "?",
        "#", "\\", "*", "@", "http://", "h:1", ";", "\u{0}", " ", "a",
    ];
    let mut seed: u64 = 42;
    let mut next = |n: usize| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        usize::try_from(seed >> 33).unwrap_or_default() % n
    };
    for _ in 0..500 {
        let mut target = String::new();
        for _ in 0..next(8) {
            target.push_str(pieces.get(next(pieces.len())).copied().unwrap_or_default());
        }
        let value = pieces.get(next(pieces.len())).copied().unwrap_or_default();
        let headers = [("X", value), ("y", value), ("x", "1")];
        let count = next(headers.len() + 1);
        let req = RequestView {
            method: if next(2) == 0 { "GET" } else { "é" },
            target: &target,
            host: [None, Some("h:1"), Some(value)]
                .get(next(3))
                .copied()
                .flatten(),
            headers: headers.get(..count).unwrap_or_default(),
        };
        if let HttpVerdict::Allowed {
            normalized_target, ..
        } = rules.evaluate(&req)
        {
            assert!(normalized_target.starts_with('/') || normalized_target == "*");
        }
    }
}
