//! The proxy's Prometheus metrics, one registry with the `l7_proxy` prefix.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::proxy::Direction;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    direction: &'static str,
    verdict: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
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
        Self {
            registry,
            requests,
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

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
