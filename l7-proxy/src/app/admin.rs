//! The admin listener's pages (`xds::proxy::serve_admin`): `/metrics` (Prometheus text),
//! `/ready` (200 once the first policy and identity map arrived, else 503 saying what is
//! pending), `/config` (the running config).

use std::sync::Arc;

use xds::client::{FlowReporter, StateWatch};

use super::metrics::Metrics;
use crate::policy::{EndpointPolicies, IdentityMap};

pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub flows: Arc<FlowReporter>,
    pub policies: StateWatch<EndpointPolicies>,
    pub identities: StateWatch<IdentityMap>,
    pub config: String,
}

impl xds::proxy::AdminPages for AdminState {
    fn metrics(&self) -> String {
        self.metrics
            .stream
            .observe(&self.policies, &self.identities, &self.flows);
        self.metrics.encode()
    }

    fn pending(&self) -> Vec<&'static str> {
        xds::proxy::pending(&self.policies, &self.identities)
    }

    fn page(&self, path: &str) -> Option<String> {
        (path == "/config").then(|| format!("{}\n", self.config))
    }
}
