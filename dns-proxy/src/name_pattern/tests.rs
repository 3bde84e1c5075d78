//! Tests for the name-pattern matcher, each table citing the SEMANTICS section it checks.

use super::*;

fn name(s: &str) -> DnsSelectorSpec {
    DnsSelectorSpec::MatchName(s.to_owned())
}

fn pattern(s: &str) -> DnsSelectorSpec {
    DnsSelectorSpec::MatchPattern(s.to_owned())
}

fn compiled(spec: &DnsSelectorSpec) -> CompiledNameMatcher {
    match CompiledNameMatcher::compile(spec) {
        Ok(m) => m,
        Err(e) => panic!("{spec:?} should compile: {e}"),
    }
}

fn rule_set(specs: &[DnsSelectorSpec]) -> DnsRuleSet {
    match DnsRuleSet::compile(specs) {
        Ok(set) => set,
        Err(e) => panic!("rule set should compile: {e}"),
    }
}

/// Split display text into wire labels, the way a DNS parser would hand them over.
/// Only for text without `..`, which has no single wire form.
fn wire(text: &str) -> Vec<&[u8]> {
    let body = text.strip_suffix('.').unwrap_or(text);
    if body.is_empty() {
        return Vec::new();
    }
    body.split('.').map(str::as_bytes).collect()
}

/// (spec, query, expected), checked on the text API, the wire API, and a one-rule set.
fn check_table(table: &[(DnsSelectorSpec, &str, bool)]) {
    for (spec, query, want) in table {
        let m = compiled(spec);
        assert_eq!(m.matches(query), *want, "{spec:?} vs {query:?}");
        if !query.contains("..") {
            assert_eq!(
                m.matches_wire_labels(&wire(query)),
                *want,
                "{spec:?} vs wire {query:?}"
            );
        }
        let set = rule_set(std::slice::from_ref(spec));
        assert_eq!(
            set.matches(query),
            want.then_some(0),
            "set {spec:?} vs {query:?}"
        );
    }
}

#[test]
fn match_name_is_exact() {
    // SEMANTICS 5.2: matchName is an exact name.
    check_table(&[
        (name("example.com"), "example.com", true),
        (name("example.com"), "a.example.com", false),
        (name("example.com"), "example.co", false),
        (name("example.com"), "example.com.au", false),
        (name("example.com"), "xexample.com", false),
        (name("a-b_c.example.com"), "a-b_c.example.com", true),
        (name("com"), "com", true),
        (name("com"), "example.com", false),
    ]);
}

#[test]
fn case_and_trailing_dots_on_both_sides() {
    // SEMANTICS 5.1: lower-cased and fully qualified, pattern and query alike.
    check_table(&[
        (name("Example.COM"), "example.com", true),
        (name("example.com"), "EXAMPLE.com.", true),
        (name("example.com."), "example.com", true),
        (name("EXAMPLE.COM."), "eXaMpLe.CoM.", true),
        (pattern("*.Example.com"), "WWW.example.COM.", true),
        (pattern("*.example.com."), "www.example.com", true),
        (pattern("**.EXAMPLE.com"), "A.B.example.com.", true),
        (pattern("API*.example.com"), "api-v2.EXAMPLE.com", true),
        (pattern("Example.com"), "example.COM.", true),
        // Two trailing dots on the query leave an empty label: not the same name.
        (name("example.com"), "example.com..", false),
    ]);
}

#[test]
fn ascii_lowercasing_only() {
    // SEMANTICS 5.1: ASCII lower-casing only, never Unicode folding. U+212A KELVIN SIGN
    // folds to 'k' under Unicode rules; it must not here.
    check_table(&[
        (name("k.example.com"), "\u{212A}.example.com", false),
        (pattern("*.example.com"), "\u{212A}.example.com", false),
        (pattern("*"), "\u{212A}.example.com", true),
        (name("xn--bcher-kva.example"), "xn--BCHER-kva.example", true),
        (name("xn--bcher-kva.example"), "bücher.example", false),
    ]);
}

#[test]
fn match_all_forms() {
    // SEMANTICS 5.2: `*` alone or `*.` alone matches every name.
    for p in ["*", "*."] {
        let m = compiled(&pattern(p));
        assert!(m.matches_all(), "{p}");
        for query in [
            "",
            ".",
            "com",
            "example.com.",
            "a.b.c.d.example.com",
            "a b.example.com",
            "a..b",
            "\u{212A}",
            &"x".repeat(1000),
        ] {
            assert!(m.matches(query), "{p} vs {query:?}");
        }
        let odd_labels: &[&[u8]] = &[b"a.b", b"\xff", b""];
        assert!(m.matches_wire_labels(odd_labels), "{p}");
        assert!(m.matches_wire_labels(&[]), "{p}: root");
    }
    for p in ["**", "**.", "*.*", "*.com", "a*"] {
        assert!(!compiled(&pattern(p)).matches_all(), "{p}");
    }
    assert!(!compiled(&name("example.com")).matches_all());
}

#[test]
fn single_star_label_forms() {
    // SEMANTICS 5.2: any other `*` is zero or more label characters, never crossing a dot.
    check_table(&[
        (pattern("*.example.com"), "a.example.com", true),
        (pattern("*.example.com"), "a-b_9.example.com", true),
        (pattern("*.example.com"), "a.b.example.com", false),
        (pattern("*.example.com"), "example.com", false),
        (pattern("*.example.com"), ".example.com", false),
        (pattern("*example.com"), "example.com", true),
        (pattern("*example.com"), "subexample.com", true),
        (pattern("*example.com"), "sub.example.com", false),
        (pattern("example.*"), "example.com", true),
        (pattern("example.*"), "example.org", true),
        (pattern("example.*"), "example.co.uk", false),
        (pattern("example.*"), "example", false),
        (pattern("a*b.com"), "ab.com", true),
        (pattern("a*b.com"), "axyzb.com", true),
        (pattern("a*b.com"), "a-_b.com", true),
        (pattern("a*b.com"), "a.b.com", false),
        (pattern("a*b.com"), "a.xb.com", false),
        (pattern("a*b.com"), "ba.com", false),
        (pattern("a*b.com"), "abc.com", false),
        (pattern("a*a.com"), "a.com", false),
        (pattern("a*a.com"), "aa.com", true),
        (pattern("a*b*c.com"), "abc.com", true),
        (pattern("a*b*c.com"), "axbxc.com", true),
        (pattern("a*b*c.com"), "acb.com", false),
        (pattern("*.*.com"), "a.b.com", true),
        (pattern("*.*.com"), "b.com", false),
        (pattern("www.*.example.com"), "www.eu.example.com", true),
        (pattern("www.*.example.com"), "www.eu.x.example.com", false),
        (pattern("*-api.example.com"), "eu-api.example.com", true),
        (pattern("*-api.example.com"), "-api.example.com", true),
        (pattern("*-api.example.com"), "eu-apix.example.com", false),
    ]);
}

#[test]
fn double_star_forms() {
    // SEMANTICS 5.2: a leading `**.` is one or more whole labels; `**` elsewhere means `*`.
    check_table(&[
        (pattern("**.example.com"), "a.example.com", true),
        (pattern("**.example.com"), "a.b.example.com", true),
        (pattern("**.example.com"), "a.b.c.d.e.example.com", true),
        (pattern("**.example.com"), "example.com", false),
        (pattern("**.example.com"), "xexample.com", false),
        (pattern("**.example.com"), "a.example.org", false),
        (pattern("***.example.com"), "a.b.example.com", true),
        (pattern("***.example.com"), "example.com", false),
        (pattern("**.*.example.com"), "a.b.example.com", true),
        (pattern("**.*.example.com"), "a.example.com", false),
        (
            pattern("**.api*.example.com"),
            "x.y.api-1.example.com",
            true,
        ),
        (pattern("**.api*.example.com"), "api-1.example.com", false),
        // `**` not leading: the same as `*`.
        (pattern("a.**.com"), "a.b.com", true),
        (pattern("a.**.com"), "a.com.com", true),
        (pattern("a.**.com"), "a.b.c.com", false),
        (pattern("a**b.com"), "ab.com", true),
        (pattern("a**b.com"), "axxb.com", true),
        (pattern("a**b.com"), "a.b.com", false),
        (pattern("**example.com"), "subexample.com", true),
        (pattern("**example.com"), "example.com", true),
        (pattern("**example.com"), "a.example.com", false),
        (pattern("*.**.example.com"), "a.b.example.com", true),
        (pattern("*.**.example.com"), "a.b.c.example.com", false),
        // `**` / `**.` alone: one or more whole labels, so every name but the root.
        (pattern("**"), "com", true),
        (pattern("**."), "a.b.c", true),
        (pattern("**"), ".", false),
        (pattern("**"), "", false),
    ]);
}

#[test]
fn patterns_without_star_are_exact() {
    // SEMANTICS 5.2: a matchPattern without `*` is a literal name.
    check_table(&[
        (pattern("example.com"), "example.com", true),
        (pattern("example.com"), "a.example.com", false),
    ]);
}

#[test]
fn unmatchable_query_names() {
    // SEMANTICS 5.1/5.3: a name no pattern can spell matches only `*`.
    let long = format!("{}.com", "a".repeat(MAX_NAME_LEN));
    check_table(
        &[
            (pattern("**.com"), "a b.com", false),
            (pattern("*.com"), "*.com", false),
            (name("a.com"), ".a.com", false),
            (pattern("*"), "a b.com", true),
            (pattern("**.com"), &long, false),
            (pattern("*"), &long, true),
        ]
        .into_iter()
        .filter(|(spec, ..)| spec.validate().is_ok())
        .collect::<Vec<_>>(),
    );
}

#[test]
fn wire_labels() {
    // SEMANTICS 5.1: labels compared byte-wise after ASCII lower-casing; a label holding a
    // '.' byte or bytes outside the allowed set never matches a pattern that can't spell it.
    type Case<'a> = (DnsSelectorSpec, &'a [&'a [u8]], bool);
    let table: &[Case<'_>] = &[
        (
            name("a.b.example.com"),
            &[b"a", b"b", b"example", b"com"],
            true,
        ),
        (
            name("a.b.example.com"),
            &[b"A", b"B", b"Example", b"COM", b""],
            true,
        ),
        (
            name("a.b.example.com"),
            &[b"a.b", b"example", b"com"],
            false,
        ),
        (
            pattern("a.b.example.com"),
            &[b"a.b", b"example", b"com"],
            false,
        ),
        (
            pattern("*.example.com"),
            &[b"a.b", b"example", b"com"],
            false,
        ),
        (
            pattern("**.example.com"),
            &[b"a.b", b"example", b"com"],
            false,
        ),
        (
            pattern("**.b.example.com"),
            &[b"a.b", b"example", b"com"],
            false,
        ),
        (pattern("*.com"), &[b"example.com"], false),
        (pattern("*"), &[b"a.b", b"example", b"com"], true),
        (pattern("*."), &[b"a.b", b"example", b"com"], true),
        (
            pattern("*.example.com"),
            &[b"\xc3\xa9", b"example", b"com"],
            false,
        ),
        (
            pattern("*.example.com"),
            &[b"\xff", b"example", b"com"],
            false,
        ),
        (
            pattern("*.example.com"),
            &[b"a\0", b"example", b"com"],
            false,
        ),
        (
            pattern("*.example.com"),
            &[b"a b", b"example", b"com"],
            false,
        ),
        (pattern("*.example.com"), &[b"*", b"example", b"com"], false),
        (pattern("*"), &[b"\xff", b"\0"], true),
        // Kelvin sign bytes are not 'k' (5.1: no Unicode folding).
        (name("k.com"), &[b"\xe2\x84\xaa", b"com"], false),
        // An empty label inside the name is not a name.
        (pattern("a.*.com"), &[b"a", b"", b"com"], false),
        (pattern("*.example.com"), &[b"", b"example", b"com"], false),
        // Root: no labels, or just the root label.
        (pattern("**"), &[], false),
        (pattern("**"), &[b""], false),
        (pattern("*"), &[], true),
        (pattern("*"), &[b""], true),
        (pattern("**"), &[b"com", b""], true),
    ];
    for (spec, labels, want) in table {
        let m = compiled(spec);
        assert_eq!(
            m.matches_wire_labels(labels),
            *want,
            "{spec:?} vs {labels:?}"
        );
        let set = rule_set(std::slice::from_ref(spec));
        assert_eq!(
            set.matches_wire_labels(labels),
            want.then_some(0),
            "set {spec:?} vs {labels:?}"
        );
    }
}

#[test]
fn wire_name_too_long_only_matches_all() {
    // SEMANTICS 5.1 with MAX_NAME_LEN: longer than any real name.
    let label = [b'a'; 63];
    let labels: Vec<&[u8]> = std::iter::repeat_n(&label[..], 5).collect();
    assert!(!compiled(&pattern("**.aaa*")).matches_wire_labels(&labels));
    assert!(compiled(&pattern("*")).matches_wire_labels(&labels));
    let fits: Vec<&[u8]> = std::iter::repeat_n(&label[..], 4).collect();
    assert!(compiled(&pattern("**.aaa*")).matches_wire_labels(&fits));
}

#[test]
fn validation_errors() {
    // SEMANTICS 5.3: allowed characters, at most 255 characters, non-empty.
    type Check = fn(&NamePatternError) -> bool;
    let too_long_name = format!("{}.com", "a".repeat(MAX_PATTERN_LEN));
    let table: &[(DnsSelectorSpec, Check)] = &[
        (name(""), |e| matches!(e, NamePatternError::Empty { .. })),
        (pattern(""), |e| matches!(e, NamePatternError::Empty { .. })),
        (pattern("a b.com"), |e| {
            matches!(
                e,
                NamePatternError::InvalidCharacter {
                    character: ' ',
                    position: 1,
                    ..
                }
            )
        }),
        (name("*.example.com"), |e| {
            matches!(
                e,
                NamePatternError::InvalidCharacter {
                    character: '*',
                    position: 0,
                    ..
                }
            )
        }),
        (name("bücher.example"), |e| {
            matches!(
                e,
                NamePatternError::InvalidCharacter {
                    character: 'ü',
                    position: 1,
                    ..
                }
            )
        }),
        (pattern("example.com/"), |e| {
            matches!(e, NamePatternError::InvalidCharacter { character: '/', .. })
        }),
        (pattern("ex?mple.com"), |e| {
            matches!(e, NamePatternError::InvalidCharacter { character: '?', .. })
        }),
        (pattern("\texample.com"), |e| {
            matches!(
                e,
                NamePatternError::InvalidCharacter {
                    character: '\t',
                    ..
                }
            )
        }),
        (pattern("(.*)\\.com"), |e| {
            matches!(e, NamePatternError::InvalidCharacter { character: '(', .. })
        }),
        (name(&too_long_name), |e| {
            matches!(e, NamePatternError::TooLong { length: 259, .. })
        }),
        (pattern(&"*".repeat(256)), |e| {
            matches!(e, NamePatternError::TooLong { length: 256, .. })
        }),
        (name("."), |e| {
            matches!(e, NamePatternError::EmptyLabel { position: 0, .. })
        }),
        (name(".example.com"), |e| {
            matches!(e, NamePatternError::EmptyLabel { position: 0, .. })
        }),
        (pattern("a..b"), |e| {
            matches!(e, NamePatternError::EmptyLabel { position: 2, .. })
        }),
        (pattern("example.com.."), |e| {
            matches!(e, NamePatternError::EmptyLabel { position: 12, .. })
        }),
    ];
    for (spec, check) in table {
        let err = match spec.validate() {
            Ok(()) => panic!("{spec:?} should be rejected"),
            Err(e) => e,
        };
        assert!(check(&err), "{spec:?}: {err:?}");
        assert_eq!(err.field(), spec.field().as_str(), "{spec:?}");
        assert_eq!(err.pattern(), spec.value(), "{spec:?}");
        assert_eq!(err.index(), None);
        let via_compile = CompiledNameMatcher::compile(spec).err();
        assert_eq!(via_compile.as_ref(), Some(&err), "{spec:?}");
        let via_field = match spec {
            DnsSelectorSpec::MatchName(s) => validate_match_name(s),
            DnsSelectorSpec::MatchPattern(s) => validate_match_pattern(s),
        };
        assert_eq!(via_field, Err(err.clone()), "{spec:?}");
    }
}

#[test]
fn validation_accepts() {
    // SEMANTICS 5.3: the allowed character sets and the length limit itself.
    let max_name = format!("{}.com", "a".repeat(MAX_PATTERN_LEN - 4));
    let max_name_dot = format!("{max_name}.").split_off(1);
    for s in [
        "example.com",
        "example.com.",
        "EXAMPLE.com",
        "a-b_c.0-9.Z",
        "com",
        "_srv._tcp.example.com",
        &max_name,
        &max_name_dot,
    ] {
        assert_eq!(validate_match_name(s), Ok(()), "{s}");
        assert_eq!(validate_match_pattern(s), Ok(()), "{s}");
    }
    for s in [
        "*",
        "*.",
        "**",
        "**.",
        "**.example.com",
        "a*b.com",
        "*.*",
        "*-*.x*y.com",
    ] {
        assert_eq!(validate_match_pattern(s), Ok(()), "{s}");
        assert!(validate_match_name(s).is_err(), "{s}");
    }
}

#[test]
fn error_messages_name_pattern_and_reason() {
    // SEMANTICS 5.3: a validation error names the pattern.
    let table: &[(DnsSelectorSpec, &str)] = &[
        (
            pattern("a b.com"),
            r#"invalid matchPattern "a b.com": character ' ' at position 1 is not allowed (allowed: a-z A-Z 0-9 - _ . *)"#,
        ),
        (
            name("*.com"),
            r#"invalid matchName "*.com": character '*' at position 0 is not allowed (allowed: a-z A-Z 0-9 - _ .)"#,
        ),
        (name(""), r#"invalid matchName "": must not be empty"#),
        (
            pattern("a..b"),
            r#"invalid matchPattern "a..b": empty label at position 2 (labels are separated by single dots; only one trailing dot is allowed)"#,
        ),
        (
            pattern("a\nb"),
            r#"invalid matchPattern "a\nb": character '\n' at position 1 is not allowed (allowed: a-z A-Z 0-9 - _ . *)"#,
        ),
    ];
    for (spec, want) in table {
        let got = spec.validate().err().map(|e| e.to_string());
        assert_eq!(got.as_deref(), Some(*want), "{spec:?}");
    }
    let long = spec_err(&pattern(&"a".repeat(300)));
    assert_eq!(
        long,
        format!(
            "invalid matchPattern {:?}... (cut at 64 characters): 300 characters, at most 255 allowed",
            "a".repeat(64)
        )
    );
}

fn spec_err(spec: &DnsSelectorSpec) -> String {
    spec.validate()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
}

#[test]
fn set_compile_error_carries_index() {
    // SEMANTICS 5.3, for a list of rules: the error points at the failing item.
    let specs = [
        name("ok.example.com"),
        pattern("*.example.com"),
        pattern("bad pattern"),
        name("also bad"),
    ];
    let err = match DnsRuleSet::compile(&specs) {
        Ok(_) => panic!("should fail"),
        Err(e) => e,
    };
    assert_eq!(err.index(), Some(2));
    assert_eq!(err.field(), "matchPattern");
    assert_eq!(err.pattern(), "bad pattern");
    assert_eq!(
        err.to_string(),
        r#"item 2: invalid matchPattern "bad pattern": character ' ' at position 3 is not allowed (allowed: a-z A-Z 0-9 - _ . *)"#
    );
    assert_eq!(err.clone().with_index(None).index(), None);
}

#[test]
fn rule_set_any_match_lowest_index() {
    // SEMANTICS 5.4: allowed if any rule matches; we report the lowest matching index.
    let set = rule_set(&[
        name("api.example.com"),
        pattern("*.example.com"),
        pattern("**.example.com"),
        name("www.example.com"),
        pattern("*.example.org"),
        pattern("example.*"),
        name("API.example.com."),
    ]);
    let table: &[(&str, Option<usize>)] = &[
        ("api.example.com", Some(0)),
        ("API.EXAMPLE.COM.", Some(0)),
        ("www.example.com", Some(1)),
        ("a.b.example.com", Some(2)),
        ("example.com", Some(5)),
        ("x.example.org", Some(4)),
        ("example.org", Some(5)),
        ("example.net", Some(5)),
        ("a.b.example.org", None),
        ("example.co.uk", None),
        ("", None),
        (".", None),
        ("a b.example.com", None),
    ];
    for (query, want) in table {
        assert_eq!(set.matches(query), *want, "{query:?}");
        assert_eq!(
            set.matches_wire_labels(&wire(query)),
            *want,
            "wire {query:?}"
        );
    }
    assert_eq!(set.len(), 7);
    assert!(!set.is_allow_all());
}

#[test]
fn rule_set_match_all_rules() {
    // SEMANTICS 5.2/5.4: a `*` rule allows every name; a lower index still wins.
    let set = rule_set(&[name("a.com"), pattern("*"), pattern("*.com")]);
    assert_eq!(set.matches("a.com"), Some(0));
    assert_eq!(set.matches("b.com"), Some(1));
    assert_eq!(set.matches("."), Some(1));
    assert_eq!(set.matches("a b"), Some(1));
    assert_eq!(set.matches_wire_labels(&[b"a.b"]), Some(1));
}

#[test]
fn empty_and_allow_all_sets() {
    // SEMANTICS 5.4: no DNS rules on a redirected peer allows every name (allow_all); an
    // empty list of selectors on its own matches nothing.
    let empty = rule_set(&[]);
    assert!(empty.is_empty());
    assert_eq!(empty.matches("example.com"), None);
    assert_eq!(empty.matches_wire_labels(&[b"example", b"com"]), None);

    let all = DnsRuleSet::allow_all();
    assert!(all.is_allow_all());
    assert_eq!(all.specs(), &[pattern("*")]);
    for query in ["example.com", ".", "", "a b", "\u{212A}"] {
        assert_eq!(all.matches(query), Some(0), "{query:?}");
    }
    assert_eq!(all.matches_wire_labels(&[b"a.b", b"\xff"]), Some(0));
}

#[test]
fn normalize_name_table() {
    // SEMANTICS 5.1: lower-cased, trailing dot added, ASCII only.
    for (input, want) in [
        ("Example.COM", "example.com."),
        ("example.com.", "example.com."),
        ("", "."),
        (".", "."),
        ("\u{212A}.Com", "\u{212A}.com."),
        ("ÀB", "Àb."),
    ] {
        assert_eq!(normalize_name(input), want, "{input:?}");
    }
}

#[test]
fn spec_serde_shape() {
    // SEMANTICS 5.3/6.1: a selector is `matchName: x` or `matchPattern: y`, one of the two.
    use serde::Deserialize;
    use serde::de::IntoDeserializer;
    use serde::de::value::{Error, MapAccessDeserializer, MapDeserializer};
    let map = MapDeserializer::<_, Error>::new(std::iter::once(("matchPattern", "*.a.com")));
    let got = DnsSelectorSpec::deserialize(MapAccessDeserializer::new(map));
    assert_eq!(got.ok(), Some(pattern("*.a.com")));
    let unit: serde::de::value::StrDeserializer<'_, Error> = "matchName".into_deserializer();
    assert!(
        DnsSelectorSpec::deserialize(unit).is_err(),
        "a bare key is not a selector"
    );
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or_default()
    }

    fn string(&mut self, alphabet: &[&str], max_len: usize) -> String {
        let len = self.below(max_len + 1);
        (0..len)
            .map(|_| alphabet[self.below(alphabet.len())])
            .collect()
    }
}

#[test]
fn no_panics_on_odd_input() {
    // SEMANTICS 5.1/5.3: any input is either rejected or matched, never a panic.
    let alphabet = [
        "a",
        "B",
        "z",
        "0",
        "-",
        "_",
        ".",
        ".",
        "*",
        "*",
        "**",
        " ",
        "\\",
        "\0",
        "\u{7f}",
        "é",
        "\u{212A}",
        "ß",
        "\u{1F600}",
        "\u{FEFF}",
        "\n",
        "..",
        "xn--",
        "%",
        "$",
    ];
    let mut g = Gen(0x9E37_79B9_7F4A_7C15);
    for round in 0..20_000 {
        let max = if round % 100 == 0 { 600 } else { 24 };
        let text = g.string(&alphabet, max);
        for spec in [name(&text), pattern(&text)] {
            match CompiledNameMatcher::compile(&spec) {
                Ok(m) => {
                    assert!(spec.validate().is_ok());
                    let query = g.string(&alphabet, max);
                    let _ = m.matches(&query);
                    let _ = m.matches(&text);
                    let labels: Vec<&[u8]> = query.as_bytes().chunks(g.below(5) + 1).collect();
                    let _ = m.matches_wire_labels(&labels);
                }
                Err(e) => {
                    assert!(e.to_string().contains(spec.field().as_str()), "{e}");
                }
            }
        }
        let _ = normalize_name(&text);
    }
}

/// Reference implementation straight from the SEMANTICS 5.2 text, as an anchored regex
/// over the normalized (5.1) name. Only meant for names of valid labels.
fn reference_regex(spec: &DnsSelectorSpec) -> regex::Regex {
    let normalized = normalize_name(spec.value());
    let mut re = String::from(r"\A");
    let body = match spec {
        DnsSelectorSpec::MatchName(_) => regex::escape(&normalized),
        DnsSelectorSpec::MatchPattern(_) if normalized == "*." => String::from(".*"),
        DnsSelectorSpec::MatchPattern(_) => {
            let mut rest = normalized.as_str();
            let stars = rest.len() - rest.trim_start_matches('*').len();
            let mut out = String::new();
            if stars >= 2 && rest[stars..].starts_with('.') {
                out.push_str(r"(?:[-a-z0-9_]+\.)+");
                rest = &rest[stars + 1..];
            }
            let mut in_star = false;
            for c in rest.chars() {
                if c == '*' {
                    if !in_star {
                        out.push_str("[-a-z0-9_]*");
                    }
                    in_star = true;
                } else {
                    in_star = false;
                    out.push_str(&regex::escape(&c.to_string()));
                }
            }
            out
        }
    };
    re.push_str(&body);
    re.push_str(r"\z");
    match regex::Regex::new(&re) {
        Ok(r) => r,
        Err(e) => panic!("reference regex {re}: {e}"),
    }
}

#[test]
fn agrees_with_reference_regex() {
    // SEMANTICS 5.2: the label matcher and a regex written from the spec text agree.
    let pattern_alphabet = ["a", "b", "A", "-", "*", "*", ".", "**", "**."];
    let name_alphabet = ["a", "b", "B", "-", "a", ".", "ab"];
    let mut g = Gen(42);
    let mut matched = 0;
    for _ in 0..3_000 {
        let text = g.string(&pattern_alphabet, 10);
        let spec = if g.below(4) == 0 {
            name(&text)
        } else {
            pattern(&text)
        };
        let Ok(m) = CompiledNameMatcher::compile(&spec) else {
            continue;
        };
        let reference = reference_regex(&spec);
        for _ in 0..50 {
            let query = g.string(&name_alphabet, 12);
            if validate_match_name(&query).is_err() {
                continue; // the reference only knows names of valid labels
            }
            let want = reference.is_match(&normalize_name(&query));
            assert_eq!(m.matches(&query), want, "{spec:?} vs {query:?}");
            assert_eq!(
                m.matches_wire_labels(&wire(&query)),
                want,
                "{spec:?} vs wire {query:?}"
            );
            matched += usize::from(want);
        }
    }
    assert!(
        matched > 1_000,
        "the generator should produce matches, got {matched}"
    );
}

#[test]
fn thousand_rule_set() {
    // SEMANTICS 5.4 at scale: 1k rules, answers equal the lowest single-rule match.
    let mut specs = Vec::new();
    for i in 0..1000 {
        specs.push(match i % 5 {
            0 => name(&format!("svc{i}.example.com")),
            1 => pattern(&format!("*.team{i}.example.com")),
            2 => pattern(&format!("**.zone{i}.example.org")),
            3 => pattern(&format!("api{i}-*.example.net")),
            _ => pattern(&format!("host{i}*.*")),
        });
    }
    let set = rule_set(&specs);
    let singles: Vec<CompiledNameMatcher> = specs.iter().map(compiled).collect();
    let mut queries: Vec<String> = Vec::new();
    for i in (0..1000).step_by(3) {
        // One query the rule of index i should allow, one near miss.
        let (hit, miss) = match i % 5 {
            0 => (
                format!("svc{i}.example.com"),
                format!("x.svc{i}.example.com"),
            ),
            1 => (
                format!("x.team{i}.example.com"),
                format!("team{i}.example.com"),
            ),
            2 => (
                format!("a.b.zone{i}.example.org"),
                format!("zone{i}.example.org"),
            ),
            3 => (
                format!("api{i}-eu.example.net"),
                format!("api{i}.example.net"),
            ),
            _ => (format!("host{i}9.local"), format!("host{i}.a.b")),
        };
        queries.push(hit);
        queries.push(miss);
    }
    let mut allowed = 0;
    for query in &queries {
        let want = singles.iter().position(|m| m.matches(query));
        assert_eq!(set.matches(query), want, "{query}");
        assert_eq!(set.matches_wire_labels(&wire(query)), want, "wire {query}");
        allowed += usize::from(want.is_some());
    }
    assert!(
        allowed >= queries.len() / 2,
        "{allowed} of {}",
        queries.len()
    );
    assert_eq!(set.matches("svc5.example.com"), Some(5));
    assert_eq!(set.matches("x.team1.example.com"), Some(1));
    assert_eq!(set.matches("svc1.example.com"), None);
    // `host4*.*` (index 4) also covers host40..host49, host400..: lowest index wins.
    assert_eq!(set.matches("host44.x"), Some(4));
}

#[test]
fn rule_set_agrees_with_single_matchers() {
    // SEMANTICS 5.4: a set allows a query iff some rule does, and reports the lowest one.
    let pattern_alphabet = ["a", "b", "-", "*", "*", ".", ".", "**", "**.", "ab*", "*b"];
    let name_alphabet = ["a", "b", "-", "a", ".", ".", "ab", "ba"];
    let mut g = Gen(7);
    let mut allowed = 0;
    for _ in 0..400 {
        let specs: Vec<DnsSelectorSpec> = std::iter::repeat_with(|| {
            let text = g.string(&pattern_alphabet, 8);
            if g.below(4) == 0 {
                name(&text)
            } else {
                pattern(&text)
            }
        })
        .filter(|spec| spec.validate().is_ok() && spec.value() != "*" && spec.value() != "*.")
        .take(12)
        .collect();
        let set = rule_set(&specs);
        let singles: Vec<CompiledNameMatcher> = specs.iter().map(compiled).collect();
        for _ in 0..40 {
            let query = g.string(&name_alphabet, 10);
            let want = singles.iter().position(|m| m.matches(&query));
            assert_eq!(set.matches(&query), want, "{specs:?} vs {query:?}");
            if !query.contains("..") {
                assert_eq!(
                    set.matches_wire_labels(&wire(&query)),
                    want,
                    "wire {query:?}"
                );
            }
            allowed += usize::from(want.is_some());
        }
    }
    assert!(
        allowed > 1_000,
        "the generator should produce matches, got {allowed}"
    );
}

#[test]
fn compiled_types_are_shareable() {
    // Compiled once on the control side, read per query on the data runtime.
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<DnsRuleSet>();
    send_sync::<CompiledNameMatcher>();
    send_sync::<NamePatternError>();
}
