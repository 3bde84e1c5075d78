//! The proxy's Prometheus metrics, one registry with the `dns_proxy` prefix.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use xds::proxy::StreamMetrics;

use crate::message::QueryError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// What happened to one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed, forwarded, answered by the server.
    Forwarded,
    /// Denied by policy: REFUSED / NXDOMAIN.
    Denied,
    /// Malformed with a header: FORMERR / NOTIMP / SERVFAIL.
    Rejected,
    /// Malformed without a usable header: no answer.
    Dropped,
    /// Over `--max-in-flight`: SERVFAIL at once.
    Shed,
    /// Allowed, but the server did not answer in time or failed: SERVFAIL.
    UpstreamFailed,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::Denied => "denied",
            Self::Rejected => "rejected",
            Self::Dropped => "dropped",
            Self::Shed => "shed",
            Self::UpstreamFailed => "upstream_failed",
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    queries: Family<OutcomeLabels, Counter>,
    malformed: Family<KindLabels, Counter>,
    upstream_errors: Family<KindLabels, Counter>,
    /// Policy versions held and flow records dropped, set at each scrape.
    pub stream: StreamMetrics,
    pub shed: Counter,
    pub truncated: Counter,
    pub fqdn_hold_seconds: Histogram,
    pub fqdn_hold_timeouts: Counter,
    pub fqdn_errors: Counter,
    pub fqdn_known: Counter,
    pub in_flight: Gauge<i64, AtomicI64>,
    pub upstream_udp_sockets: Gauge<i64, AtomicI64>,
    pub tcp_connections: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dns_proxy");
        let queries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "queries",
            "DNS queries by outcome (forwarded, denied, rejected, dropped, shed, upstream_failed) and transport",
            queries.clone(),
        );
        let malformed = Family::<KindLabels, Counter>::default();
        registry.register(
            "malformed_queries",
            "Queries rejected or dropped as malformed, by kind",
            malformed.clone(),
        );
        let shed = Counter::default();
        registry.register(
            "queries_shed",
            "Queries answered SERVFAIL at once because --max-in-flight queries were being processed",
            shed.clone(),
        );
        let upstream_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Allowed queries answered SERVFAIL because the server failed (timeout, closed, io)",
            upstream_errors.clone(),
        );
        let truncated = Counter::default();
        registry.register(
            "truncated_answers",
            "UDP answers cut to the client's limit with TC set",
            truncated.clone(),
        );
        let fqdn_hold_seconds = Histogram::new([
            0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        ]);
        registry.register(
            "fqdn_hold_seconds",
            "How long answers feeding toFQDNs were held for the agent (SEMANTICS 6.3)",
            fqdn_hold_seconds.clone(),
        );
        let fqdn_hold_timeouts = Counter::default();
        registry.register(
            "fqdn_hold_timeouts",
            "Answers released at --fqdn-hold-ms before the agent confirmed their IPs",
            fqdn_hold_timeouts.clone(),
        );
        let fqdn_known = Counter::default();
        registry.register(
            "fqdn_known",
            "Answers released at once: the agent already allows their IPs for the endpoint and name for at least their TTL",
            fqdn_known.clone(),
        );
        let fqdn_errors = Counter::default();
        registry.register(
            "fqdn_errors",
            "FQDN observations that failed or that the agent did not allow",
            fqdn_errors.clone(),
        );
        let in_flight = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "in_flight",
            "Queries being processed now",
            in_flight.clone(),
        );
        let upstream_udp_sockets = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "upstream_udp_sockets",
            "Open pooled UDP sockets towards DNS servers",
            upstream_udp_sockets.clone(),
        );
        let tcp_connections = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "tcp_connections",
            "Client TCP connections open now",
            tcp_connections.clone(),
        );
        let stream = StreamMetrics::register(&mut registry);
        Self {
            registry,
            queries,
            malformed,
            upstream_errors,
            stream,
            shed,
            truncated,
            fqdn_hold_seconds,
            fqdn_hold_timeouts,
            fqdn_errors,
            fqdn_known,
            in_flight,
            upstream_udp_sockets,
            tcp_connections,
        }
    }

    pub fn query(&self, outcome: Outcome, transport: &'static str) {
        self.queries
            .get_or_create(&OutcomeLabels {
                outcome: outcome.name(),
                transport,
            })
            .inc();
    }

    pub fn malformed(&self, error: &QueryError) {
        let kind = match error {
            QueryError::HeaderTruncated { .. } => "header_truncated",
            QueryError::NotAQuery => "not_a_query",
            QueryError::UnsupportedOpcode(_) => "unsupported_opcode",
            QueryError::QuestionCount(_) => "question_count",
            QueryError::Malformed { .. } => "malformed",
            QueryError::Encode(_) => "encode",
        };
        self.malformed.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        xds::proxy::encode_metrics(&self.registry)
    }
}
