//! Requests after which the connection stops being HTTP: WebSocket upgrades and CONNECT.
//! The request itself is policed like any other; once allowed, it is sent to the original
//! destination on a connection of its own, and if the upstream agrees (101 for WebSocket,
//! 2xx for CONNECT) the bytes are copied both ways until either side closes, the
//! connection's L3/L4 access is removed, or the tunnel idles out (`serve_connection`
//! watches it).
//!
//! CONNECT is never terminated here: the proxy does not open a connection to the
//! authority the client names, only to the original destination the datapath allowed, so
//! CONNECT reaches nothing that L3/L4 policy does not already allow. The original
//! destination must itself be a proxy that understands CONNECT.
//!
//! Only `Upgrade: websocket` is honoured. Any other upgrade (notably `h2c`, which would
//! carry later requests past the policy) is forwarded as a plain request with its
//! `Upgrade` header removed.

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::upstream::UpstreamError;
use super::{ProxyBody, RequestContext, apply_edit, framing, response};
use crate::http_rules::HeaderEdit;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelKind {
    WebSocket,
    Connect,
}

/// Whether `request` would turn its connection into a tunnel.
pub fn kind<B>(request: &Request<B>) -> Option<TunnelKind> {
    if request.method() == Method::CONNECT {
        return Some(TunnelKind::Connect);
    }
    let headers = request.headers();
    let asks_upgrade = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let websocket = headers
        .get_all(UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|protocol| protocol.trim().eq_ignore_ascii_case("websocket"));
    (request.version() == Version::HTTP_11 && asks_upgrade && websocket)
        .then_some(TunnelKind::WebSocket)
}

/// Sends an allowed tunnel request upstream and, if the upstream agrees, starts the copy
/// task. Returns the response for the client and the upstream failure, if any.
pub async fn open(
    mut request: Request<Incoming>,
    kind: TunnelKind,
    target: &str,
    header_edits: &[HeaderEdit],
    context: &RequestContext<'_>,
) -> (Response<ProxyBody>, Option<&'static str>) {
    if request.version() == Version::HTTP_2 {
        // Extended CONNECT (RFC 8441) and HTTP/2 CONNECT would need an HTTP/2 tunnel
        // upstream; refuse clearly rather than carry it half-way.
        return (
            response::not_implemented("CONNECT over HTTP/2 is not supported by this proxy"),
            None,
        );
    }
    let client_side = hyper::upgrade::on(&mut request);
    let (mut parts, body) = request.into_parts();
    if kind == TunnelKind::WebSocket {
        // The path that was matched is the path forwarded (SEMANTICS 4.6).
        match target.parse() {
            Ok(uri) => parts.uri = uri,
            Err(e) => {
                let reason = format!("target cannot be forwarded: {e}");
                return (response::bad_request(&reason), None);
            }
        }
    }
    for edit in header_edits {
        apply_edit(&mut parts.headers, edit);
    }
    let upgrade = parts.headers.get(UPGRADE).cloned();
    framing::strip_hop_by_hop(&mut parts.headers);
    if let (TunnelKind::WebSocket, Some(upgrade)) = (kind, upgrade) {
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(UPGRADE, upgrade);
    }
    let request = Request::from_parts(parts, body);

    let dst = context.conn.original_dst;
    let upstream = context.upstream;
    let client = context.conn.original_src.ip();
    let mut upstream_response = match upstream.send_on_own_connection(client, dst, request).await {
        Ok(response) => response,
        Err(error) => return failed(&error),
    };
    let agreed = match kind {
        TunnelKind::WebSocket => upstream_response.status() == StatusCode::SWITCHING_PROTOCOLS,
        TunnelKind::Connect => upstream_response.status().is_success(),
    };
    if agreed {
        let upstream_side = hyper::upgrade::on(&mut upstream_response);
        let conn = context.conn;
        let task = tokio::spawn(async move {
            let (client, upstream) = match tokio::try_join!(client_side, upstream_side) {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::debug!(?conn, %error, "tunnel could not start");
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                Ok((up, down)) => tracing::debug!(?conn, up, down, "tunnel closed"),
                Err(error) => tracing::debug!(?conn, %error, "tunnel failed"),
            }
        });
        context.state.set_tunnel(task);
    }
    (upstream_response.map(|b| b.boxed()), None)
}

fn failed(error: &UpstreamError) -> (Response<ProxyBody>, Option<&'static str>) {
    tracing::debug!(%error, "tunnel upstream failed");
    (response::upstream_error(error), Some(error.kind()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder()
            .method(method)
            .uri("/chat")
            .version(version);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request")
    }

    #[test]
    fn only_websocket_upgrades_and_connect_tunnel() {
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ];
        assert_eq!(
            kind(&request("GET", Version::HTTP_11, &ws)),
            Some(TunnelKind::WebSocket)
        );
        assert_eq!(
            kind(&request("CONNECT", Version::HTTP_11, &[])),
            Some(TunnelKind::Connect)
        );
        let h2c = [("connection", "upgrade"), ("upgrade", "h2c")];
        assert_eq!(kind(&request("GET", Version::HTTP_11, &h2c)), None);
        let no_connection = [("upgrade", "websocket")];
        assert_eq!(
            kind(&request("GET", Version::HTTP_11, &no_connection)),
            None
        );
        assert_eq!(kind(&request("GET", Version::HTTP_10, &ws)), None);
    }
}
