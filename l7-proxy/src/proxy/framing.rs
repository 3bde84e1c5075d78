//! Framing checks hyper leaves to us (SEMANTICS 4.12, issue item 4): anything a server
//! behind us might frame or route differently is refused with 400 before policy is
//! consulted. hyper re-frames what we forward, but the upstream must never see a request
//! whose meaning depended on which header it believed.

use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Request, Version};

pub fn check<B>(request: &Request<B>) -> Result<(), String> {
    let headers = request.headers();
    let lengths: Vec<&[u8]> = headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let encodings = headers.get_all(TRANSFER_ENCODING).iter().count();
    if !lengths.is_empty() && encodings > 0 {
        return Err("both Content-Length and Transfer-Encoding".into());
    }
    if lengths.windows(2).any(|w| w[0] != w[1]) {
        return Err("differing Content-Length headers".into());
    }
    if let Some(length) = lengths.first()
        && (length.is_empty() || !length.iter().all(u8::is_ascii_digit))
    {
        return Err("Content-Length is not a number".into());
    }
    for value in headers.get_all(TRANSFER_ENCODING) {
        let text = value
            .to_str()
            .map_err(|_| "Transfer-Encoding is not text")?;
        // Only plain chunked is unambiguous: anything else (gzip, chunked twice, unknown
        // codings) is read differently by different servers.
        if !text.trim().eq_ignore_ascii_case("chunked") || encodings > 1 {
            return Err(format!("unsupported Transfer-Encoding {text:?}"));
        }
    }
    if request.version() != Version::HTTP_2 {
        match headers.get_all(HOST).iter().count() {
            0 if request.version() == Version::HTTP_11 => {
                return Err("HTTP/1.1 request without Host".into());
            }
            0 | 1 => {}
            _ => return Err("more than one Host header".into()),
        }
    }
    // The authority of an absolute-form target must agree with Host: hyper accepts both.
    if let (Some(authority), Some(host)) = (request.uri().authority(), headers.get(HOST))
        && request.version() != Version::HTTP_2
        && !host
            .as_bytes()
            .eq_ignore_ascii_case(authority.as_str().as_bytes())
    {
        return Err("Host does not match the request target's authority".into());
    }
    Ok(())
}

/// Removes the headers that describe this hop only (RFC 9110 7.6.1), including those the
/// Connection header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().uri("/x").version(version);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request")
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let v11 = Version::HTTP_11;
        let cases: Vec<(Request<()>, bool, &str)> = vec![
            (request(v11, &[("host", "a")]), true, "plain"),
            (
                request(v11, &[("host", "a"), ("content-length", "5")]),
                true,
                "length",
            ),
            (
                request(v11, &[("host", "a"), ("transfer-encoding", "chunked")]),
                true,
                "chunked",
            ),
            (
                request(
                    v11,
                    &[
                        ("host", "a"),
                        ("content-length", "5"),
                        ("transfer-encoding", "chunked"),
                    ],
                ),
                false,
                "CL and TE",
            ),
            (
                request(
                    v11,
                    &[
                        ("host", "a"),
                        ("content-length", "5"),
                        ("content-length", "6"),
                    ],
                ),
                false,
                "differing CL",
            ),
            (
                request(
                    v11,
                    &[
                        ("host", "a"),
                        ("content-length", "5"),
                        ("content-length", "5"),
                    ],
                ),
                true,
                "repeated equal CL",
            ),
            (
                request(v11, &[("host", "a"), ("content-length", "+5")]),
                false,
                "signed CL",
            ),
            (
                request(
                    v11,
                    &[("host", "a"), ("transfer-encoding", "gzip, chunked")],
                ),
                false,
                "TE list",
            ),
            (
                request(
                    v11,
                    &[
                        ("host", "a"),
                        ("transfer-encoding", "chunked"),
                        ("transfer-encoding", "chunked"),
                    ],
                ),
                false,
                "TE twice",
            ),
            (request(v11, &[]), false, "no Host"),
            (
                request(Version::HTTP_10, &[]),
                true,
                "HTTP/1.0 without Host",
            ),
            (
                request(v11, &[("host", "a"), ("host", "b")]),
                false,
                "two Hosts",
            ),
        ];
        for (req, ok, name) in cases {
            assert_eq!(check(&req).is_ok(), ok, "{name}: {:?}", check(&req));
        }
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", "close, x-secret".parse().expect("value"));
        headers.insert("x-secret", "1".parse().expect("value"));
        headers.insert("keep-alive", "5".parse().expect("value"));
        headers.insert("x-kept", "1".parse().expect("value"));
        strip_hop_by_hop(&mut headers);
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }
}
