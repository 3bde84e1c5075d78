//! The admin listener's pages (`xds::proxy::serve_admin`): `/metrics` (Prometheus text)
//! and `/ready` (200 once the first policy and identity map were applied, else 503 saying
//! what is pending).

use std::sync::Arc;

use xds::client::{FlowReporter, StateWatch};
use xds::identity::IdentityMap;

use super::metrics::Metrics;
use super::policy::DnsPolicies;

pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub flows: Arc<FlowReporter>,
    pub policies: StateWatch<DnsPolicies>,
    pub identities: StateWatch<IdentityMap>,
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
}
