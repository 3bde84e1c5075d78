//! The FQDN hold (SEMANTICS 6.2, 6.3): an allowed NOERROR answer with A/AAAA records is
//! reported to the agent, and released to the client only when the agent says the datapath
//! allows its IPs, or at the bound, whichever comes first (the observation still goes on
//! after the bound, so the agent learns the IPs late rather than never). Nothing else in
//! the proxy waits on the agent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use xds::AgentClient;
use xds::proto;

use super::metrics::Metrics;
use crate::message::ResponseInfo;

/// At most one log line per endpoint in this period about failed observations: with the
/// agent away every answer fails, and the log must stay readable.
const ERROR_LOG_PERIOD: Duration = Duration::from_secs(60);

/// How long an observation may keep trying after its answer was released.
const CALL_LIMIT: Duration = Duration::from_secs(10);

/// Observations in flight at most (a stalled agent must not pile up tasks without bound);
/// past it an answer is released at once and counted as an error.
const MAX_CALLS: usize = 4096;

/// Most endpoints remembered for log throttling before the memory is cleared.
const ERROR_LOG_ENDPOINTS: usize = 4096;

#[derive(Debug)]
pub struct FqdnHold {
    /// `None` when the agent endpoint could not be turned into a client (logged at start).
    agent: Option<AgentClient>,
    bound: Duration,
    metrics: Arc<Metrics>,
    last_logged: Mutex<HashMap<String, Instant>>,
    calls: Arc<Semaphore>,
}

/// How a hold ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldOutcome {
    /// The agent confirmed.
    Allowed,
    /// The bound passed first.
    TimedOut,
    /// The RPC failed, or the agent answered `allowed: false`.
    Failed(String),
}

impl FqdnHold {
    pub fn new(agent: Option<AgentClient>, bound: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            agent,
            bound,
            metrics,
            last_logged: Mutex::new(HashMap::new()),
            calls: Arc::new(Semaphore::new(MAX_CALLS)),
        }
    }

    /// Reports the answer for `endpoint` ("NAMESPACE/POD") and returns when it may be
    /// released; a no-op for answers that do not feed the cache.
    pub async fn hold(&self, endpoint: &str, info: &ResponseInfo) -> Option<HoldOutcome> {
        if !info.feeds_fqdn_cache() {
            return None;
        }
        let observation = proto::FqdnObservation {
            endpoint: endpoint.to_owned(),
            name: info.name.to_string(),
            ips: info.ips().map(|ip| ip.to_string()).collect(),
            ttl_seconds: info.min_ttl.unwrap_or(0),
        };
        let started = Instant::now();
        let outcome = match (&self.agent, self.calls.clone().try_acquire_owned()) {
            (None, _) => HoldOutcome::Failed("no agent client".to_owned()),
            (Some(_), Err(_)) => {
                HoldOutcome::Failed("too many FQDN observations waiting for the agent".to_owned())
            }
            (Some(agent), Ok(permit)) => {
                // The call runs on its own task: past the hold the answer is released, but
                // the agent still gets the observation (dropping the call would cancel it).
                let agent = agent.clone();
                let call = tokio::spawn(async move {
                    let _permit = permit;
                    tokio::time::timeout(CALL_LIMIT, agent.observe_fqdn(observation)).await
                });
                match tokio::time::timeout(self.bound, call).await {
                    Err(_) => HoldOutcome::TimedOut,
                    Ok(Err(e)) => HoldOutcome::Failed(e.to_string()),
                    Ok(Ok(Err(_))) => HoldOutcome::Failed(format!("no answer in {CALL_LIMIT:?}")),
                    Ok(Ok(Ok(Ok(result)))) if result.allowed => HoldOutcome::Allowed,
                    Ok(Ok(Ok(Ok(result)))) => {
                        HoldOutcome::Failed(format!("agent did not allow: {}", result.detail))
                    }
                    Ok(Ok(Ok(Err(e)))) => HoldOutcome::Failed(e.to_string()),
                }
            }
        };
        self.metrics
            .fqdn_hold_seconds
            .observe(started.elapsed().as_secs_f64());
        match &outcome {
            HoldOutcome::Allowed => {}
            HoldOutcome::TimedOut => {
                self.metrics.fqdn_hold_timeouts.inc();
                self.log(
                    endpoint,
                    info,
                    &format!("no answer within {:?}", self.bound),
                );
            }
            HoldOutcome::Failed(reason) => {
                self.metrics.fqdn_errors.inc();
                self.log(endpoint, info, reason);
            }
        }
        Some(outcome)
    }

    fn log(&self, endpoint: &str, info: &ResponseInfo, reason: &str) {
        let now = Instant::now();
        let mut last = self
            .last_logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last
            .get(endpoint)
            .is_some_and(|at| now.duration_since(*at) < ERROR_LOG_PERIOD)
        {
            return;
        }
        if last.len() >= ERROR_LOG_ENDPOINTS {
            last.clear();
        }
        last.insert(endpoint.to_owned(), now);
        tracing::warn!(
            endpoint,
            name = %info.name,
            reason,
            "FQDN observation not confirmed by the agent; answer released anyway (logged at most once a minute per endpoint)"
        );
    }
}
