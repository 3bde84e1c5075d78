//! The FQDN hold (SEMANTICS 6.2, 6.3): an allowed NOERROR answer with A/AAAA records is
//! reported to the agent, and released to the client only when the agent says the datapath
//! allows its IPs, or at the bound, whichever comes first (the observation still goes on
//! after the bound, so the agent learns the IPs late rather than never). Nothing else in
//! the proxy waits on the agent.
//!
//! The agent keeps, per endpoint, name and IP, the latest expiry any answer gave. An
//! answer whose IPs the agent already confirmed for this endpoint and name is released at
//! once (`dns_proxy_fqdn_known_total`) when that confirmation runs at least as long as the
//! answer, or for more than [`REFRESH_MARGIN`] still: the later expiry then reaches the
//! agent in the background, one call per name per [`REFRESH_DELAY`] at most, long before
//! the confirmation runs out. Holding and calling for every answer of a popular name would
//! cost a call per query. The agent could have dropped a confirmed entry since (its bounds,
//! or a restart without its state file): then the IP stays unallowed until the
//! confirmation runs out and the next answer is held and reported again.

use std::collections::HashMap;
use std::net::IpAddr;
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

/// Most (endpoint, name) confirmations remembered before the memory is cleared (clearing
/// only costs calls).
const CONFIRMED_NAMES: usize = 65_536;

/// A confirmation with at least this much left releases an answer at once, its later
/// expiry sent in the background.
const REFRESH_MARGIN: Duration = Duration::from_secs(1);

/// Answers of one name released during this period share one background call.
const REFRESH_DELAY: Duration = Duration::from_millis(100);

/// (endpoint "NAMESPACE/POD", name).
type NameKey = (String, String);

/// A background refresh waiting for its call: the latest expiry and the IPs.
type PendingRefresh = (Instant, Vec<IpAddr>);

/// What the agent confirmed for one endpoint and name.
#[derive(Debug)]
struct Confirmed {
    /// Sorted.
    ips: Vec<IpAddr>,
    /// The agent allows `ips` at least until then.
    until: Instant,
}

#[derive(Debug)]
pub struct FqdnHold {
    /// `None` when the agent endpoint could not be turned into a client (logged at start).
    agent: Option<AgentClient>,
    bound: Duration,
    metrics: Arc<Metrics>,
    last_logged: Mutex<HashMap<String, Instant>>,
    calls: Arc<Semaphore>,
    confirmed: Arc<Mutex<HashMap<(String, String), Confirmed>>>,
    /// Background refreshes waiting for their call: the latest expiry and the IPs.
    refreshes: Arc<Mutex<HashMap<NameKey, PendingRefresh>>>,
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
            confirmed: Arc::default(),
            refreshes: Arc::default(),
        }
    }

    /// How far the agent already allows every one of `ips` for (endpoint, name).
    fn known(&self, key: &(String, String), ips: &[IpAddr]) -> Option<Instant> {
        let confirmed = self
            .confirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        confirmed
            .get(key)
            .filter(|c| ips.iter().all(|ip| c.ips.binary_search(ip).is_ok()))
            .map(|c| c.until)
    }

    /// Sends the later expiry of a confirmed answer in the background, sharing one call
    /// with the other answers of the name in the next [`REFRESH_DELAY`].
    fn refresh(&self, key: (String, String), ips: Vec<IpAddr>, until: Instant) {
        let Some(agent) = self.agent.clone() else {
            return;
        };
        {
            let mut refreshes = self
                .refreshes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some((pending, pending_ips)) = refreshes.get_mut(&key) {
                *pending = (*pending).max(until);
                pending_ips.extend(ips);
                pending_ips.sort_unstable();
                pending_ips.dedup();
                return;
            }
            refreshes.insert(key.clone(), (until, ips));
        }
        let Ok(permit) = self.calls.clone().try_acquire_owned() else {
            // Too many calls already: the next answer of the name tries again.
            self.refreshes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
            return;
        };
        let refreshes = self.refreshes.clone();
        let confirmed = self.confirmed.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::time::sleep(REFRESH_DELAY).await;
            let Some((until, ips)) = refreshes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key)
            else {
                return;
            };
            let left = until.saturating_duration_since(Instant::now());
            let ttl_seconds = u32::try_from(left.as_secs() + u64::from(left.subsec_nanos() > 0))
                .unwrap_or(u32::MAX);
            let observation = proto::FqdnObservation {
                endpoint: key.0.clone(),
                name: key.1.clone(),
                ips: ips.iter().map(IpAddr::to_string).collect(),
                ttl_seconds,
            };
            match tokio::time::timeout(CALL_LIMIT, agent.observe_fqdn(observation)).await {
                Ok(Ok(result)) if result.allowed => remember(&confirmed, key, ips, until),
                _ => {
                    metrics.fqdn_errors.inc();
                }
            }
        });
    }
}

/// Records what the agent confirmed.
fn remember(
    confirmed: &Mutex<HashMap<(String, String), Confirmed>>,
    key: (String, String),
    ips: Vec<IpAddr>,
    until: Instant,
) {
    let mut confirmed = confirmed.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(c) = confirmed.get_mut(&key)
        && c.ips == ips
    {
        c.until = c.until.max(until);
        return;
    }
    if confirmed.len() >= CONFIRMED_NAMES {
        confirmed.clear();
    }
    confirmed.insert(key, Confirmed { ips, until });
}

impl FqdnHold {
    /// Reports the answer for `endpoint` ("NAMESPACE/POD") and returns when it may be
    /// released; a no-op for answers that do not feed the cache.
    pub async fn hold(&self, endpoint: &str, info: &ResponseInfo) -> Option<HoldOutcome> {
        if !info.feeds_fqdn_cache() {
            return None;
        }
        let started = Instant::now();
        let ttl_seconds = info.min_ttl.unwrap_or(0);
        let until = started + Duration::from_secs(u64::from(ttl_seconds));
        let name = info.name.to_string();
        let mut ips: Vec<IpAddr> = info.ips().collect();
        ips.sort_unstable();
        ips.dedup();
        let key = (endpoint.to_owned(), name);
        if let Some(confirmed) = self.known(&key, &ips) {
            if confirmed >= until {
                self.metrics.fqdn_known.inc();
                return Some(HoldOutcome::Allowed);
            }
            if confirmed > started + REFRESH_MARGIN {
                self.metrics.fqdn_known.inc();
                self.refresh(key, ips, until);
                return Some(HoldOutcome::Allowed);
            }
        }
        let observation = proto::FqdnObservation {
            endpoint: endpoint.to_owned(),
            name: key.1.clone(),
            ips: ips.iter().map(IpAddr::to_string).collect(),
            ttl_seconds,
        };
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
            // The agent computed its expiry when the call arrived, after `started`.
            HoldOutcome::Allowed => remember(&self.confirmed, key, ips, until),
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
