//! What the agent does with what proxies report: flow records go into a bounded buffer
//! (oldest dropped and counted, never blocking a proxy), FQDN observations are recorded.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use xds::proto;
use xds::server::AgentHooks;

#[derive(Debug)]
pub struct Hooks {
    flows: Mutex<VecDeque<proto::FlowRecord>>,
    capacity: usize,
    received: AtomicU64,
    dropped: AtomicU64,
}

impl Hooks {
    pub fn new(capacity: usize) -> Self {
        Self {
            flows: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
            capacity,
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    pub fn counts(&self) -> (u64, u64) {
        (
            self.received.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }
}

#[tonic::async_trait]
impl AgentHooks for Hooks {
    fn flows(&self, client: &str, records: Vec<proto::FlowRecord>) -> u64 {
        let mut dropped = 0u64;
        let count = records.len() as u64;
        {
            // A poisoned lock only means another reporter panicked mid-push; the buffer
            // itself is still a valid queue.
            let mut flows = self.flows.lock().unwrap_or_else(|p| p.into_inner());
            for record in records {
                if flows.len() >= self.capacity {
                    flows.pop_front();
                    dropped += 1;
                }
                flows.push_back(record);
            }
        }
        self.received.fetch_add(count, Ordering::Relaxed);
        self.dropped.fetch_add(dropped, Ordering::Relaxed);
        tracing::debug!(client, count, dropped, "flow records received");
        dropped
    }

    fn flow_counts(&self) -> (u64, u64) {
        self.counts()
    }

    async fn observe_fqdn(
        &self,
        observation: proto::FqdnObservation,
    ) -> Result<proto::FqdnObservationResult, tonic::Status> {
        tracing::info!(
            endpoint = observation.endpoint,
            name = observation.name,
            ips = ?observation.ips,
            ttl = observation.ttl_seconds,
            "FQDN observation"
        );
        // toFQDNs enforcement needs the datapath (its own issue): until then the agent
        // can only say that nothing was programmed.
        Ok(proto::FqdnObservationResult {
            allowed: false,
            detail: "this node runs no datapath yet: the IPs were not programmed".into(),
        })
    }
}
