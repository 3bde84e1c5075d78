//! The HTTP proxy: serves one accepted connection (HTTP/1.x or HTTP/2 prior knowledge),
//! asks the authorizer about every request against the policy current at that moment,
//! answers 403 or 400 itself, and forwards allowed requests to the original destination.
//!
//! The order of work per request is fixed: framing checks (`framing`), the policy decision
//! (`RequestAuthorizer`), the path rewrite to the normalised target, then forwarding
//! (`upstream`, or `tunnel` for WebSocket upgrades and CONNECT). A denied or rejected
//! request never reaches the upstream.
//!
//! Around the requests, the connection itself is watched: its L3/L4 access is checked at
//! accept and again after every policy change (a connection that lost it is drained and
//! closed), and it is closed after `ServerLimits::idle_timeout` without activity.

mod activity;
mod first_chunk;
mod framing;
mod head_scan;
pub mod response;
mod tunnel;
pub mod upstream;
mod watch;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::http_rules::{HeaderEdit, RequestView};

pub use crate::policy::Direction;

/// What the proxy knows about a connection before its first request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo {
    pub direction: Direction,
    pub original_src: SocketAddr,
    pub original_dst: SocketAddr,
}

/// The policy's answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward `target` (the normalised path and query) after applying `header_edits`.
    Allow {
        target: String,
        header_edits: Vec<HeaderEdit>,
        rule: String,
        /// Which upstream forwards it.
        via: Via,
    },
    /// Answer 403 (SEMANTICS 4.10).
    Deny { reason: String },
    /// Answer 400 and close (SEMANTICS 4.12).
    Reject { reason: String },
}

/// Which of the connection's upstreams forwards an allowed request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Via {
    /// The upstream of the listener that accepted the connection.
    #[default]
    Listener,
    /// The ingress listener's upstream (the ingress proxy's mark): the destination's
    /// ingress L7 rules were enforced on this request too, which is what the datapath
    /// requires of a flow into an endpoint whose ingress redirects.
    Ingress,
}

/// The upstreams a connection may forward with (see [`Via`]).
#[derive(Debug, Clone)]
pub struct Upstreams {
    pub listener: upstream::Upstream,
    pub ingress: upstream::Upstream,
}

impl Upstreams {
    pub fn get(&self, via: Via) -> &upstream::Upstream {
        match via {
            Via::Listener => &self.listener,
            Via::Ingress => &self.ingress,
        }
    }
}

/// One upstream for both: the ingress listener's own connections.
impl From<upstream::Upstream> for Upstreams {
    fn from(upstream: upstream::Upstream) -> Self {
        Self {
            listener: upstream.clone(),
            ingress: upstream,
        }
    }
}

/// Whether a connection may exist at all (its L3/L4 verdict).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// The datapath would drop this flow: the connection is closed without an answer.
    Refused {
        reason: String,
    },
}

/// When a connection was closed because of policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyClose {
    /// Refused when accepted.
    Accept,
    /// Its access was removed by a policy change while it was open.
    Update,
}

/// Decides requests against the current policy. Called once per request, so a policy
/// update applies to the next request, also on open keep-alive connections.
pub trait RequestAuthorizer: Send + Sync + 'static {
    fn authorize(&self, conn: &ConnInfo, request: &RequestView<'_>) -> Decision;

    /// The connection's L3/L4 verdict, asked at accept and after every policy change.
    fn admit(&self, _conn: &ConnInfo) -> Admission {
        Admission::Admitted
    }

    /// Changes whenever the policy may have changed; `None` if it never does.
    fn policy_updates(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        None
    }

    /// Called when a connection is closed because `admit` refused it (for metrics).
    fn closed_by_policy(&self, _conn: &ConnInfo, _when: PolicyClose, _reason: &str) {}

    /// Called once per request when its outcome is known (the upstream's response headers,
    /// or the proxy's own 403/400/50x), for flow records (SEMANTICS 8.1). Must not block.
    fn completed(&self, _conn: &ConnInfo, _outcome: &RequestOutcome<'_>) {}
}

/// What a flow record says about one request.
#[derive(Debug)]
pub struct RequestOutcome<'a> {
    pub method: &'a str,
    /// `http://host/path?query` as the client asked (SEMANTICS 8.1).
    pub url: String,
    /// "HTTP/1.0", "HTTP/1.1" or "HTTP/2".
    pub protocol: &'static str,
    pub headers: &'a [(&'a str, &'a str)],
    pub decision: &'a Decision,
    pub status: u16,
    pub latency: Duration,
    /// Set when the proxy answered 502/503/504 itself because the upstream failed:
    /// "connect", "timeout" or "request".
    pub upstream_failure: Option<&'static str>,
}

/// Limits and timeouts of the downstream side.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// hyper's header read timeout: a client that does not finish its headers in time is
    /// disconnected (without a timer hyper never times out).
    pub header_read_timeout: Duration,
    /// Largest request head accepted: HTTP/1 head bytes, HTTP/2 header list size. Larger
    /// heads get 431.
    pub max_header_bytes: usize,
    /// Most request headers accepted (HTTP/1; at most `MAX_HEADER_COUNT`). More get 431.
    pub max_headers: usize,
    /// A connection with no request in flight and nothing read or written for this long
    /// is closed.
    pub idle_timeout: Duration,
    /// The same for an open tunnel (WebSocket, CONNECT), which is often quiet for long.
    pub tunnel_idle_timeout: Duration,
    /// How long requests in flight may finish once a connection is being closed because
    /// its L3/L4 access was removed or it went idle.
    pub drain_timeout: Duration,
}

/// The ceiling of `ServerLimits::max_headers` (see `head_scan::MAX_HEADERS`).
pub const MAX_HEADER_COUNT: usize = head_scan::MAX_HEADERS;

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_headers: MAX_HEADER_COUNT,
            idle_timeout: Duration::from_secs(300),
            tunnel_idle_timeout: Duration::from_secs(3600),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Why a connection ended abnormally (logged by the caller; it never affects others).
#[derive(Debug, thiserror::Error)]
#[error("connection from {src} to {dst}: {source}")]
pub struct ConnectionError {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Serves one connection until the client closes it, it fails, it goes idle, or the
/// policy stops allowing it.
pub async fn serve_connection<S>(
    stream: S,
    conn: ConnInfo,
    authorizer: Arc<dyn RequestAuthorizer>,
    upstreams: impl Into<Upstreams>,
    limits: &ServerLimits,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let upstreams = upstreams.into();
    if let Admission::Refused { reason } = authorizer.admit(&conn) {
        tracing::debug!(?conn, %reason, "connection refused");
        authorizer.closed_by_policy(&conn, PolicyClose::Accept, &reason);
        return Ok(());
    }
    let max_buf = limits.max_header_bytes.max(8192);
    let state = Arc::new(activity::ConnState::default());
    // hyper hides some framing ambiguities from the service; the scanner sees the raw
    // HTTP/1 heads and leaves one verdict per request (SEMANTICS 4.12).
    let verdicts = Arc::new(head_scan::Verdicts::default());
    let stream = head_scan::HeadScanner::new(stream, max_buf, verdicts.clone());
    let stream = activity::ActivityStream::new(stream, state.clone());
    let service = {
        let authorizer = authorizer.clone();
        let state = state.clone();
        let body_timeout = limits.header_read_timeout;
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let authorizer = authorizer.clone();
            let upstreams = upstreams.clone();
            let state = state.clone();
            // Taken before the future runs: HTTP/1 requests reach the service in order.
            let both_lengths = request.version() != Version::HTTP_2 && verdicts.take();
            async move {
                let _in_flight = state.request_started();
                if both_lengths {
                    tracing::debug!(
                        ?conn,
                        "request with Content-Length and Transfer-Encoding rejected"
                    );
                    return Ok::<_, Infallible>(response::bad_request(
                        "both Content-Length and Transfer-Encoding",
                    ));
                }
                let context = RequestContext {
                    conn,
                    authorizer: &*authorizer,
                    upstream: &upstreams.listener,
                    state: &state,
                    body_timeout,
                };
                Ok::<_, Infallible>(handle(request, context, &upstreams).await)
            }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(max_buf)
        .max_headers(limits.max_headers.clamp(1, MAX_HEADER_COUNT))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let served = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    let result = watch::watch_connection(
        std::pin::pin!(served),
        |served| served.graceful_shutdown(),
        &conn,
        &*authorizer,
        &state,
        limits,
    )
    .await;
    // A tunnel outlives hyper's connection: the upgraded stream is its own now.
    if let Some(tunnel) = state.take_tunnel() {
        let abort = tunnel.abort_handle();
        watch::watch_tunnel(tunnel, &conn, &*authorizer, &state, limits).await;
        abort.abort();
    }
    result.map_err(|source| ConnectionError {
        src: conn.original_src,
        dst: conn.original_dst,
        source,
    })
}

/// What a request handler needs from its connection.
struct RequestContext<'a> {
    conn: ConnInfo,
    authorizer: &'a dyn RequestAuthorizer,
    /// The upstream of this request (see [`Via`]).
    upstream: &'a upstream::Upstream,
    state: &'a Arc<activity::ConnState>,
    /// How long the first chunk of a chunked body may take (see `first_chunk`).
    body_timeout: Duration,
}

async fn handle(
    request: Request<Incoming>,
    context: RequestContext<'_>,
    upstreams: &Upstreams,
) -> Response<ProxyBody> {
    let RequestContext {
        conn, authorizer, ..
    } = context;
    let started = Instant::now();
    if let Err(reason) = framing::check(&request) {
        tracing::debug!(?conn, %reason, "malformed request rejected");
        return response::bad_request(&reason);
    }
    let target = request_target(request.method(), request.uri());
    let tunnel_kind = tunnel::kind(&request);
    let host = request_host(&request);
    let method = request.method().clone();
    let protocol = protocol_name(request.version());
    // The request moves upstream before its flow record is written, so the record needs
    // its own view of the headers: cloning the map shares the values' bytes instead of
    // copying each into a new string.
    let headers = request.headers().clone();
    let header_pairs: Vec<(&str, &str)> = headers
        .iter()
        .filter_map(|(name, value)| value.to_str().ok().map(|v| (name.as_str(), v)))
        .collect();
    let view = RequestView {
        method: method.as_str(),
        target: &target,
        host: host.as_deref(),
        headers: &header_pairs,
    };
    let decision = authorizer.authorize(&conn, &view);
    let (response, upstream_failure) = match &decision {
        Decision::Deny { reason } => {
            tracing::debug!(?conn, %method, %target, %reason, "denied");
            (response::access_denied(method == http::Method::HEAD), None)
        }
        Decision::Reject { reason } => {
            tracing::debug!(?conn, %target, %reason, "rejected");
            (response::bad_request(reason), None)
        }
        Decision::Allow {
            target,
            header_edits,
            rule,
            via,
        } => {
            tracing::trace!(?conn, %target, %rule, ?via, "allowed");
            let context = RequestContext {
                upstream: upstreams.get(*via),
                ..context
            };
            match tunnel_kind {
                Some(kind) => tunnel::open(request, kind, target, header_edits, &context).await,
                None => forward(request, target, header_edits, &context).await,
            }
        }
    };
    let url = if target.starts_with('/') {
        format!("http://{}{target}", host.as_deref().unwrap_or(""))
    } else {
        target.clone()
    };
    authorizer.completed(
        &conn,
        &RequestOutcome {
            method: method.as_str(),
            url,
            protocol,
            headers: &header_pairs,
            decision: &decision,
            status: response.status().as_u16(),
            latency: started.elapsed(),
            upstream_failure,
        },
    );
    response
}

fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/1.1",
    }
}

async fn forward(
    request: Request<Incoming>,
    target: &str,
    header_edits: &[HeaderEdit],
    context: &RequestContext<'_>,
) -> (Response<ProxyBody>, Option<&'static str>) {
    let (conn, upstream) = (context.conn, context.upstream);
    let http2 = request.version() == Version::HTTP_2;
    let chunked = request
        .headers()
        .contains_key(http::header::TRANSFER_ENCODING);
    let (mut parts, body) = request.into_parts();
    let body = if chunked {
        match first_chunk::read_first_chunk(body, context.body_timeout).await {
            Ok(body) => body,
            Err(error) => {
                tracing::debug!(?conn, %error, "request body refused");
                return (response::bad_request(&error.to_string()), None);
            }
        }
    } else {
        body.boxed()
    };
    for edit in header_edits {
        apply_edit(&mut parts.headers, edit);
    }
    framing::strip_hop_by_hop(&mut parts.headers);
    // The path that was matched is the path forwarded (SEMANTICS 4.6). HTTP/1 addresses
    // the pool by original destination and keeps Host as a header; HTTP/2 sends the
    // client's authority as `:authority` (a Host header set by a rule takes its place).
    let authority = if http2 {
        let host = parts.headers.remove(http::header::HOST);
        host.as_ref()
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| parts.uri.authority().map(|a| a.as_str().to_owned()))
            .unwrap_or_else(|| conn.original_dst.to_string())
    } else {
        conn.original_dst.to_string()
    };
    // `OPTIONS *` has no path to put in an absolute URI; it goes out as sent, on a
    // connection of its own.
    let asterisk = target == "*" && !http2;
    let uri = if asterisk {
        "*".to_owned()
    } else {
        format!("http://{authority}{target}")
    };
    parts.uri = match uri.parse::<Uri>() {
        Ok(uri) => uri,
        Err(e) => {
            let reason = format!("target cannot be forwarded: {e}");
            return (response::bad_request(&reason), None);
        }
    };
    let request = Request::from_parts(parts, body);
    let (client, dst) = (conn.original_src.ip(), conn.original_dst);
    let sent = if http2 {
        upstream.send_http2(client, dst, request).await
    } else if asterisk {
        upstream.send_on_own_connection(client, dst, request).await
    } else {
        upstream.send_http1(client, dst, request).await
    };
    match sent {
        Ok(response) => (response.map(|b| b.boxed()), None),
        Err(error) => {
            tracing::debug!(?conn, %error, "upstream failed");
            (response::upstream_error(&error), Some(error.kind()))
        }
    }
}

fn apply_edit(headers: &mut http::HeaderMap, edit: &HeaderEdit) {
    let set = |headers: &mut http::HeaderMap, name: &str, value: &str, append: bool| {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::try_from(name),
            http::HeaderValue::try_from(value),
        ) {
            if append {
                headers.append(name, value);
            } else {
                headers.insert(name, value);
            }
        }
    };
    match edit {
        HeaderEdit::Add { name, value, .. } => set(headers, name, value, true),
        HeaderEdit::Set { name, value, .. } => set(headers, name, value, false),
        HeaderEdit::Remove { name } => {
            headers.remove(name.as_str());
        }
    }
}

/// The request target as the client sent it: origin-form path and query, the whole
/// absolute-form URI (the matcher rejects userinfo and other schemes there), or CONNECT's
/// authority.
pub(crate) fn request_target(method: &http::Method, uri: &Uri) -> String {
    if method == http::Method::CONNECT {
        // Only a bare `host:port` is handed over as the authority; anything else (hyper
        // also accepts `CONNECT http://host:port/path`) goes to the policy as sent, which
        // refuses it, so the tunnel never carries a target the policy did not check.
        match (uri.scheme(), uri.path_and_query(), uri.authority()) {
            (None, None, Some(authority)) => authority.as_str().to_owned(),
            _ => uri.to_string(),
        }
    } else if uri.scheme().is_some() {
        uri.to_string()
    } else {
        uri.path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into())
    }
}

/// The Host header as sent, or HTTP/2's `:authority`.
fn request_host(request: &Request<Incoming>) -> Option<String> {
    request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_owned()))
}
