//! The answers the proxy gives itself: one place maps decisions and upstream failures to
//! HTTP responses.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};

use super::ProxyBody;
use super::upstream::UpstreamError;

/// SEMANTICS 4.10: exactly these 15 bytes.
pub const ACCESS_DENIED_BODY: &str = "Access denied\r\n";

fn text(status: StatusCode, body: &str, head: bool) -> Response<ProxyBody> {
    let length = body.len();
    let body = if head {
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed()
    } else {
        Full::new(Bytes::copy_from_slice(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed()
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

/// 403 for a denied request; the connection stays open (SEMANTICS 4.10). HEAD gets the
/// headers only.
pub fn access_denied(head: bool) -> Response<ProxyBody> {
    text(StatusCode::FORBIDDEN, ACCESS_DENIED_BODY, head)
}

/// 400 and close: the request cannot be read unambiguously (SEMANTICS 4.12).
pub fn bad_request(reason: &str) -> Response<ProxyBody> {
    let mut response = text(
        StatusCode::BAD_REQUEST,
        &format!("Bad request: {reason}\r\n"),
        false,
    );
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// 502 when the upstream failed, 503 when it refused or could not be reached, 504 when
/// it did not answer in time.
pub fn upstream_error(error: &UpstreamError) -> Response<ProxyBody> {
    let status = match error {
        UpstreamError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        UpstreamError::Connect { .. } => StatusCode::SERVICE_UNAVAILABLE,
        UpstreamError::Request { .. } | UpstreamError::Exchange { .. } => StatusCode::BAD_GATEWAY,
    };
    let reason = status.canonical_reason().unwrap_or("upstream error");
    text(status, &format!("{reason}\r\n"), false)
}

/// 501 for what the proxy cannot carry (CONNECT and upgrades over HTTP/2).
pub fn not_implemented(reason: &str) -> Response<ProxyBody> {
    text(
        StatusCode::NOT_IMPLEMENTED,
        &format!("Not implemented: {reason}\r\n"),
        false,
    )
}
