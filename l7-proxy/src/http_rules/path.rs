//! Request-target normalisation (SEMANTICS 4.6).
//!
//! The path a rule is matched against must be the path the upstream acts on, so the
//! normalised target is both what `path` regexes see and what the proxy forwards. Steps,
//! in the order Envoy applies them for Cilium (`normalize_path`, then `merge_slashes`):
//!
//! 1. percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded (RFC 3986
//!    6.2.2.2), so `%2e%2e` is a `..` segment and cannot smuggle a traversal;
//! 2. dot segments are removed (RFC 3986 5.2.4), `..` above the root clamps to `/`;
//! 3. runs of `/` are merged into one.
//!
//! The query is kept exactly as sent. Anything an upstream could read as a different path
//! than the one matched is refused with 400 instead (see [`TargetError`]).

/// A request target after normalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedTarget {
    /// Normalised path, then `?query` exactly as sent: what is matched and forwarded.
    pub path_and_query: String,
    /// Authority of an absolute-form target (`http://authority/path`). Per RFC 9112 3.2.2 it
    /// replaces the Host header, as Envoy does when it sets `:authority` from the URL.
    pub authority: Option<String>,
}

/// Why a request target is refused (answered with 400, SEMANTICS 4.12).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The request target is empty.
    #[error("empty request target")]
    Empty,
    /// A `#` fragment: never sent by a conforming client, and some upstreams cut the path there.
    #[error("request target contains a fragment ('#')")]
    Fragment,
    /// Space, DEL or another ASCII control character.
    #[error("request target contains a space or control character")]
    ControlCharacter,
    /// A raw `\` in the path: some upstreams (IIS, many frameworks) treat it as `/`.
    #[error("path contains a backslash")]
    Backslash,
    /// `%2F` or `%5C` in the path: an upstream that decodes it sees a different path from
    /// the one matched (`/public%2F..%2Fadmin`), so it is refused rather than forwarded.
    #[error("path contains an encoded slash or backslash ({0})")]
    EncodedSeparator(String),
    /// A `%` not followed by two hex digits. Refused so that decoding cannot assemble a new
    /// escape (`%%32%66` would decode to `%2f`).
    #[error("path contains malformed percent-encoding")]
    BadPercentEncoding,
    /// A segment such as `..;x`, which some servers (Tomcat) read as `..`.
    #[error("path contains an ambiguous dot segment ({0:?})")]
    AmbiguousDotSegment(String),
    /// `http://user@host/`: the userinfo could hide the real authority.
    #[error("absolute-form target carries userinfo ('@')")]
    UserInfo,
    /// Absolute-form with a scheme other than http or https.
    #[error("absolute-form target has an unsupported scheme")]
    UnsupportedScheme,
    /// Absolute-form with an empty authority or one with characters a host cannot hold.
    #[error("absolute-form target has an empty or invalid authority")]
    BadAuthority,
    /// `*` with a method other than OPTIONS.
    #[error("asterisk-form target '*' is only valid with OPTIONS")]
    AsteriskNotOptions,
    /// Neither origin-form, absolute-form nor asterisk-form (authority-form is CONNECT's
    /// alone).
    #[error("request target is not origin-form, absolute-form or asterisk-form")]
    UnsupportedForm,
    /// CONNECT with anything but `host:port` (RFC 9110 9.3.6: the port is required).
    #[error("CONNECT target must be host:port")]
    ConnectTarget,
}

/// Normalises a request target as received (origin-, absolute- or asterisk-form; for
/// CONNECT, authority-form only).
///
/// A CONNECT has no path: its `path_and_query` is empty, so a rule with a `path` only
/// allows it if its regex matches the empty string, and its authority is matched as the
/// host, the way Envoy presents CONNECT to route matching.
pub fn normalize_target(method: &str, target: &str) -> Result<NormalizedTarget, TargetError> {
    if target.is_empty() {
        return Err(TargetError::Empty);
    }
    if method == "CONNECT" {
        return connect_target(target).map(|authority| NormalizedTarget {
            path_and_query: String::new(),
            authority: Some(authority.to_owned()),
        });
    }
    if target.contains('#') {
        return Err(TargetError::Fragment);
    }
    // Non-ASCII is kept as sent: it cannot form a slash or a dot, so it cannot change
    // which path the upstream resolves.
    if target.chars().any(|c| c == ' ' || c.is_ascii_control()) {
        return Err(TargetError::ControlCharacter);
    }
    if target.starts_with('/') {
        return Ok(NormalizedTarget {
            path_and_query: normalize_path_and_query(target)?,
            authority: None,
        });
    }
    if target == "*" {
        return if method == "OPTIONS" {
            Ok(NormalizedTarget {
                path_and_query: "*".to_owned(),
                authority: None,
            })
        } else {
            Err(TargetError::AsteriskNotOptions)
        };
    }
    let (authority, rest) = split_absolute_form(target)?;
    let path_and_query = if rest.is_empty() || rest.starts_with('?') {
        // `http://host` and `http://host?q` address the root (RFC 9110 4.2.3).
        normalize_path_and_query(&format!("/{rest}"))?
    } else {
        normalize_path_and_query(rest)?
    };
    Ok(NormalizedTarget {
        path_and_query,
        authority: Some(authority.to_owned()),
    })
}

/// `host:port` where host is a registered name, an IPv4 address or a bracketed IPv6
/// address, and port is 1-65535.
fn connect_target(target: &str) -> Result<&str, TargetError> {
    let (host, port) = target.rsplit_once(':').ok_or(TargetError::ConnectTarget)?;
    let port_ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    };
    if port_ok && host_ok {
        Ok(target)
    } else {
        Err(TargetError::ConnectTarget)
    }
}

/// Splits `scheme://authority<rest>`; `rest` is empty or starts with `/` or `?`.
fn split_absolute_form(target: &str) -> Result<(&str, &str), TargetError> {
    let Some((scheme, after)) = target.split_once("://") else {
        return Err(TargetError::UnsupportedForm);
    };
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err(TargetError::UnsupportedForm);
    }
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(TargetError::UnsupportedScheme);
    }
    let end = after.find(['/', '?']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    if authority.contains('@') {
        return Err(TargetError::UserInfo);
    }
    let authority_ok = !authority.is_empty()
        && authority.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    '-' | '.'
                        | '_'
                        | '~'
                        | '!'
                        | '$'
                        | '&'
                        | '\''
                        | '('
                        | ')'
                        | '*'
                        | '+'
                        | ','
                        | ';'
                        | '='
                        | ':'
                        | '['
                        | ']'
                )
        });
    if !authority_ok {
        return Err(TargetError::BadAuthority);
    }
    Ok((authority, rest))
}

/// `path` starts with `/`; everything from the first `?` on is kept unchanged.
fn normalize_path_and_query(target: &str) -> Result<String, TargetError> {
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let mut out = normalize_path(path)?;
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

/// Normalises an absolute path (starting with `/`, no query).
fn normalize_path(path: &str) -> Result<String, TargetError> {
    let decoded = decode_unreserved(path)?;
    let resolved = remove_dot_segments(&decoded)?;
    Ok(merge_slashes(&resolved))
}

/// Decodes `%XX` escapes of unreserved characters and keeps every other escape as sent.
fn decode_unreserved(path: &str) -> Result<String, TargetError> {
    let mut out = String::with_capacity(path.len());
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => return Err(TargetError::Backslash),
            '%' => {
                let (Some(hi), Some(lo)) = (chars.next(), chars.next()) else {
                    return Err(TargetError::BadPercentEncoding);
                };
                let (Some(hi_val), Some(lo_val)) = (hi.to_digit(16), lo.to_digit(16)) else {
                    return Err(TargetError::BadPercentEncoding);
                };
                let byte = u8::try_from(hi_val * 16 + lo_val)
                    .map_err(|_| TargetError::BadPercentEncoding)?;
                match byte {
                    b'/' | b'\\' => {
                        return Err(TargetError::EncodedSeparator(format!("%{hi}{lo}")));
                    }
                    b if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') => {
                        out.push(char::from(b));
                    }
                    _ => {
                        out.push('%');
                        out.push(hi);
                        out.push(lo);
                    }
                }
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// RFC 3986 5.2.4 over `/`-separated segments. Empty segments count as segments (so
/// `/a//../b` is `/a/b`, as in Envoy), and `..` at the root stays at the root.
fn remove_dot_segments(path: &str) -> Result<String, TargetError> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    let mut kept: Vec<&str> = Vec::new();
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let is_last = segments.peek().is_none();
        match segment {
            "." | ".." => {
                if segment == ".." {
                    kept.pop();
                }
                if is_last {
                    // `/a/b/..` is `/a/`: the result still names a directory.
                    kept.push("");
                }
            }
            s if s.starts_with(".;") || s.starts_with("..;") => {
                return Err(TargetError::AmbiguousDotSegment(s.to_owned()));
            }
            s => kept.push(s),
        }
    }
    Ok(format!("/{}", kept.join("/")))
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut previous_slash = false;
    for c in path.chars() {
        if c == '/' && previous_slash {
            continue;
        }
        previous_slash = c == '/';
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(target: &str) -> Result<String, TargetError> {
        normalize_target("GET", target).map(|t| t.path_and_query)
    }

    // SEMANTICS 4.6: dot segments, repeated slashes, encoded dots.
    #[test]
    fn normalises_origin_form() {
        let cases = [
            ("/", "/"),
            ("/a", "/a"),
            ("//x", "/x"),
            ("///a//b///", "/a/b/"),
            ("/a/../b", "/b"),
            ("/a/./b", "/a/b"),
            ("/./", "/"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a//../b", "/a/b"),
            ("/a/%2e%2e/b", "/b"),
            ("/a/%2E%2E/b", "/b"),
            ("/a/.%2e/b", "/b"),
            ("/a/%2e/b", "/a/b"),
            ("/%7Euser/%41bc", "/~user/Abc"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3fb"),
            ("/...", "/..."),
            ("/a..b/..c", "/a..b/..c"),
            ("/café/../thé", "/thé"),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input).as_deref(), Ok(want), "input {input:?}");
        }
    }

    // SEMANTICS 4.3 + 4.6: the query is kept unchanged after the normalised path.
    #[test]
    fn keeps_query_unchanged() {
        let cases = [
            ("/a/../b?x=1", "/b?x=1"),
            ("//p?q=/../..//%2F%5C\\", "/p?q=/../..//%2F%5C\\"),
            ("/p?", "/p?"),
            ("/p?a?b", "/p?a?b"),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input).as_deref(), Ok(want), "input {input:?}");
        }
    }

    #[test]
    fn connect_takes_host_and_port_only() {
        for good in [
            "example.com:443",
            "10.0.0.1:8080",
            "[::1]:443",
            "a_b.internal:1",
        ] {
            let target = normalize_target("CONNECT", good).expect(good);
            assert_eq!(target.path_and_query, "", "{good}");
            assert_eq!(target.authority.as_deref(), Some(good));
        }
        for bad in [
            "/x",
            "example.com",
            "example.com:",
            "example.com:0",
            "example.com:99999",
            "user@example.com:443",
            "http://example.com:443/",
            "[::1:443",
            "[not-ip]:443",
            "exa mple.com:443",
        ] {
            assert_eq!(
                normalize_target("CONNECT", bad),
                Err(TargetError::ConnectTarget),
                "{bad}"
            );
        }
    }

    // SEMANTICS 4.6 (encoded slashes/backslashes), 4.12 (ambiguous input gets 400).
    #[test]
    fn rejects_ambiguous_paths() {
        use TargetError::*;
        let cases = [
            ("", Empty),
            ("/a%2Fb", EncodedSeparator("%2F".into())),
            ("/a%2fb", EncodedSeparator("%2f".into())),
            ("/a%5Cb", EncodedSeparator("%5C".into())),
            ("/a%5cb", EncodedSeparator("%5c".into())),
            ("/public/..%2f..%2fadmin", EncodedSeparator("%2f".into())),
            ("/a\\b", Backslash),
            ("/a#frag", Fragment),
            ("/a?x#frag", Fragment),
            ("/a b", ControlCharacter),
            ("/a\tb", ControlCharacter),
            ("/a\u{7f}", ControlCharacter),
            ("/a%", BadPercentEncoding),
            ("/a%2", BadPercentEncoding),
            ("/a%zz", BadPercentEncoding),
            ("/a%+f", BadPercentEncoding),
            ("/%%32%66", BadPercentEncoding),
            ("/a/..;/b", AmbiguousDotSegment("..;".into())),
            ("/a/.;x/b", AmbiguousDotSegment(".;x".into())),
            ("*", AsteriskNotOptions),
            ("a/b", UnsupportedForm),
            ("example.com:443", UnsupportedForm),
            ("http:/x", UnsupportedForm),
            ("1http://h/", UnsupportedForm),
            ("ftp://h/", UnsupportedScheme),
            ("http://a@b/", UserInfo),
            ("http://user:pw@b/x", UserInfo),
            ("http:///x", BadAuthority),
            ("http://h\u{e9}/x", BadAuthority),
            ("http://h/%2F", EncodedSeparator("%2F".into())),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input), Err(want), "input {input:?}");
        }
    }

    // SEMANTICS 4.6: absolute-form takes path and query; asterisk-form only for OPTIONS.
    #[test]
    fn other_forms() {
        let cases = [
            ("GET", "http://h/a/../b?x", "/b?x", Some("h")),
            ("GET", "HTTPS://h:8080//p", "/p", Some("h:8080")),
            ("GET", "http://h", "/", Some("h")),
            ("GET", "http://h?x=1", "/?x=1", Some("h")),
            ("GET", "http://[::1]:80/", "/", Some("[::1]:80")),
            ("OPTIONS", "*", "*", None),
        ];
        for (method, input, want, authority) in cases {
            let got = normalize_target(method, input).expect("valid target");
            assert_eq!(got.path_and_query, want, "input {input:?}");
            assert_eq!(got.authority.as_deref(), authority, "input {input:?}");
        }
    }

    // SEMANTICS 4.6: the output is a fixpoint, so no second decoding changes the path.
    #[test]
    fn normalisation_is_idempotent() {
        for input in ["/a/%2e%2e/b//c/.", "/x/%41%2d%25/../y", "//..//a/./b/../"] {
            let once = norm(input).expect("valid");
            assert_eq!(norm(&once).as_deref(), Ok(once.as_str()), "input {input:?}");
        }
    }

    // Bad input never panics (SEMANTICS 4.12): a few hundred odd targets.
    #[test]
    fn odd_targets_never_panic() {
        let pieces = [
            "%",
            "%%",
            "%zz",
            "%2",
            "%2e",
            "%2E%2e",
            "%2f",
            "%5c",
            "%25",
            "%c3%a9",
            "é",
            "☃",
            "/",
            "//",
            ".",
            "..",
            "...",
            "?",
            "#",
            "\\",
            "*",
            "@",
            ":",
            "http://",
            "[",
            "\u{0}",
            " ",
            ";",
            "\u{10FFFF}",
            "a",
        ];
        let mut seed: u32 = 0x9e37_79b9;
        for _ in 0..600 {
            let mut target = String::new();
            if !seed.is_multiple_of(3) {
                target.push('/');
            }
            for _ in 0..(seed % 7) {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let pick = usize::try_from(seed >> 16).unwrap_or_default() % pieces.len();
                target.push_str(pieces.get(pick).copied().unwrap_or_default());
            }
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            for method in ["GET", "OPTIONS"] {
                if let Ok(t) = normalize_target(method, &target) {
                    // Whatever is accepted must be stable under a second pass.
                    if t.path_and_query.starts_with('/') {
                        let again =
                            normalize_target(method, &t.path_and_query).map(|t| t.path_and_query);
                        assert_eq!(again.as_ref(), Ok(&t.path_and_query), "input {target:?}");
                    }
                }
            }
        }
    }
}
