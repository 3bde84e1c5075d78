//! The proxy's Prometheus metrics, one registry with the `l7_proxy` prefix.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use xds::proxy::StreamMetrics;

use crate::proxy::Direction;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    direction: &'static str,
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyCloseLabels {
    direction: &'static str,
    /// `accept`: refused when accepted; `update`: access removed while open.
    when: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream_errors: Family<FailureLabels, Counter>,
    connections_closed_by_policy: Family<PolicyCloseLabels, Counter>,
    /// Policy versions held and flow records dropped, set at each scrape.
    pub stream: StreamMetrics,
    pub active_connections: Gauge<i64, AtomicI64>,
    pub connections: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("l7_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests by direction and verdict (forwarded, denied, rejected)",
            requests.clone(),
        );
        let active_connections = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "active_connections",
            "Downstream connections open now",
            active_connections.clone(),
        );
        let connections = Counter::default();
        registry.register(
            "connections",
            "Downstream connections accepted",
            connections.clone(),
        );
        let upstream_errors = Family::<FailureLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Requests answered 502/503/504 because the upstream failed (connect, timeout, request)",
            upstream_errors.clone(),
        );
        let connections_closed_by_policy = Family::<PolicyCloseLabels, Counter>::default();
        registry.register(
            "connections_closed_by_policy",
            "Connections closed because L3/L4 policy does not allow them (when: accept, update)",
            connections_closed_by_policy.clone(),
        );
        let stream = StreamMetrics::register(&mut registry);
        Self {
            registry,
            requests,
            upstream_errors,
            connections_closed_by_policy,
            stream,
            active_connections,
            connections,
        }
    }

    pub fn request(&self, direction: Direction, verdict: &'static str) {
        self.requests
            .get_or_create(&RequestLabels {
                direction: direction.name(),
                verdict,
            })
            .inc();
    }

    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&FailureLabels { kind })
            .inc();
    }

    pub fn closed_by_policy(&self, direction: Direction, when: &'static str) {
        self.connections_closed_by_policy
            .get_or_create(&PolicyCloseLabels {
                direction: direction.name(),
                when,
            })
            .inc();
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        xds::proxy::encode_metrics(&self.registry)
    }
}
