//! What the agent does with what proxies and the datapath report: flow records go into a
//! bounded buffer (oldest dropped and counted, never blocking a proxy) and out to live
//! listeners (`monitor`, `observe --follow`) through a broadcast channel that never waits
//! for a slow one; FQDN observations and cache listings go to the event loop that owns
//! the compiler, and are answered from there.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, mpsc};

use tokio::sync::{broadcast, oneshot};
use xds::proto;
use xds::server::{AgentHooks, EventReceiver, FlowHistory};

use super::events::{self, Names};
use super::fqdn::{CacheRequest, FqdnRequest, LoopEvent};
use crate::compiler::Compiler;
use crate::datapath::abi::DpEvent;

/// Live events a listener may fall behind by before it skips (and is told how many).
const EVENT_BACKLOG: usize = 4096;

#[derive(Debug)]
pub struct Hooks {
    flows: Mutex<VecDeque<proto::FlowRecord>>,
    capacity: usize,
    received: AtomicU64,
    dropped: AtomicU64,
    /// Sent to while `flows` is locked, so that a reader taking the buffer and a receiver
    /// together sees every record exactly once.
    events: broadcast::Sender<Arc<proto::MonitorEvent>>,
    /// Replaced as a whole after every policy apply.
    names: RwLock<Arc<Names>>,
    /// The event loop, once it runs.
    loop_tx: Mutex<Option<mpsc::Sender<LoopEvent>>>,
    /// The FQDN cache's counters as of the loop's last pass.
    fqdn_metrics: Mutex<Option<proto::FqdnMetrics>>,
}

impl Hooks {
    pub fn new(capacity: usize) -> Self {
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        Self {
            flows: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
            capacity,
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            events,
            names: RwLock::new(Arc::new(Names::default())),
            loop_tx: Mutex::new(None),
            fqdn_metrics: Mutex::new(None),
        }
    }

    /// From now on FQDN calls go to this event loop.
    pub fn connect_loop(&self, tx: mpsc::Sender<LoopEvent>) {
        *self.loop_tx.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    /// The loop is stopping: FQDN calls are refused from now on.
    pub fn disconnect_loop(&self) {
        *self.loop_tx.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn set_fqdn_metrics(&self, metrics: proto::FqdnMetrics) {
        *self.fqdn_metrics.lock().unwrap_or_else(|p| p.into_inner()) = Some(metrics);
    }

    fn send_to_loop(&self, event: LoopEvent) -> bool {
        let tx = self
            .loop_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        tx.is_some_and(|tx| tx.send(event).is_ok())
    }

    pub fn counts(&self) -> (u64, u64) {
        (
            self.received.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }

    /// Refreshes the names given to flow ends (identity labels, pods by IP) from the
    /// compiler; called after every policy apply.
    pub fn update_names(&self, compiler: &Compiler) {
        let names = Arc::new(Names::from_compiler(compiler));
        *self.names.write().unwrap_or_else(|p| p.into_inner()) = names;
    }

    fn names(&self) -> Arc<Names> {
        self.names.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// One event of the datapath's ring buffer: a drop or the policy verdict of a new flow
    /// becomes a flow record (kept and published). Never blocks on a listener.
    pub fn datapath_event(&self, event: &DpEvent) {
        let names = self.names();
        match events::flow_record(event, &names) {
            Some((kind, record)) => {
                let dropped = self.keep(kind, std::iter::once(record));
                self.dropped.fetch_add(dropped, Ordering::Relaxed);
            }
            None => tracing::debug!(?event, "datapath event of an unknown type or family"),
        }
    }

    fn lock_flows(&self) -> MutexGuard<'_, VecDeque<proto::FlowRecord>> {
        // A poisoned lock only means another reporter panicked mid-push; the buffer itself
        // is still a valid queue.
        self.flows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Buffers and publishes records; returns how many old ones were dropped for them.
    fn keep(
        &self,
        kind: proto::MonitorType,
        records: impl IntoIterator<Item = proto::FlowRecord>,
    ) -> u64 {
        let mut dropped = 0u64;
        let mut flows = self.lock_flows();
        let listening = self.events.receiver_count() > 0;
        for record in records {
            if flows.len() >= self.capacity {
                flows.pop_front();
                dropped += 1;
            }
            if listening {
                // Fails only when nobody listens any more: nothing to do.
                let _ = self.events.send(Arc::new(proto::MonitorEvent {
                    r#type: kind as i32,
                    flow: Some(record.clone()),
                    lost: 0,
                }));
            }
            if self.capacity > 0 {
                flows.push_back(record);
            }
        }
        dropped
    }
}

#[tonic::async_trait]
impl AgentHooks for Hooks {
    fn flows(&self, client: &str, mut records: Vec<proto::FlowRecord>) -> u64 {
        let count = records.len() as u64;
        // Proxies know the pods of their own node only: name the other ends here.
        let names = self.names();
        for record in &mut records {
            for endpoint in [&mut record.source, &mut record.destination]
                .into_iter()
                .flatten()
            {
                names.fill(endpoint);
            }
        }
        let dropped = self.keep(proto::MonitorType::L7, records);
        self.received.fetch_add(count, Ordering::Relaxed);
        self.dropped.fetch_add(dropped, Ordering::Relaxed);
        tracing::debug!(client, count, dropped, "flow records received");
        dropped
    }

    fn flow_counts(&self) -> (u64, u64) {
        self.counts()
    }

    fn events(&self) -> Option<EventReceiver> {
        Some(self.events.subscribe())
    }

    fn flow_history(
        &self,
        keep: &(dyn Fn(&proto::FlowRecord) -> bool + Sync),
        last: Option<usize>,
        follow: bool,
    ) -> Option<FlowHistory> {
        let flows = self.lock_flows();
        let live = follow.then(|| self.events.subscribe());
        let mut history: Vec<proto::FlowRecord> = match last {
            Some(n) => flows
                .iter()
                .rev()
                .filter(|r| keep(r))
                .take(n)
                .cloned()
                .collect(),
            None => flows.iter().rev().filter(|r| keep(r)).cloned().collect(),
        };
        drop(flows);
        history.reverse();
        Some((history, live))
    }

    async fn observe_fqdn(
        &self,
        observation: proto::FqdnObservation,
    ) -> Result<proto::FqdnObservationResult, tonic::Status> {
        tracing::trace!(
            endpoint = observation.endpoint,
            name = observation.name,
            ips = ?observation.ips,
            ttl = observation.ttl_seconds,
            "FQDN observation"
        );
        let not_running = || proto::FqdnObservationResult {
            allowed: false,
            detail:
                "the agent is not running its event loop (starting or stopping): nothing programmed"
                    .into(),
        };
        let (reply, answer) = oneshot::channel();
        if !self.send_to_loop(LoopEvent::Observe(FqdnRequest { observation, reply })) {
            return Ok(not_running());
        }
        // A dropped reply means the loop stopped before answering.
        Ok(answer.await.unwrap_or_else(|_| not_running()))
    }

    async fn fqdn_cache(
        &self,
        request: proto::FqdnCacheRequest,
    ) -> Result<proto::FqdnCacheResponse, tonic::Status> {
        let unavailable = || tonic::Status::unavailable("the agent's event loop is not running");
        let (reply, answer) = oneshot::channel();
        if !self.send_to_loop(LoopEvent::ListCache(CacheRequest { request, reply })) {
            return Err(unavailable());
        }
        answer.await.map_err(|_| unavailable())?
    }

    fn fqdn_metrics(&self) -> Option<proto::FqdnMetrics> {
        *self.fqdn_metrics.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u32) -> proto::FlowRecord {
        proto::FlowRecord {
            verdict: if i.is_multiple_of(2) {
                "FORWARDED"
            } else {
                "DROPPED"
            }
            .into(),
            source: Some(proto::FlowEndpoint {
                port: i,
                ..proto::FlowEndpoint::default()
            }),
            ..proto::FlowRecord::default()
        }
    }

    fn port(record: &proto::FlowRecord) -> u32 {
        record.source.as_ref().map_or(0, |s| s.port)
    }

    #[test]
    fn history_is_the_newest_matching_records_oldest_first() {
        let hooks = Hooks::new(5);
        assert_eq!(hooks.flows("p", (0..8).map(record).collect()), 3);
        let dropped_only = |r: &proto::FlowRecord| r.verdict == "DROPPED";
        let (history, live) = hooks
            .flow_history(&dropped_only, Some(2), false)
            .expect("history");
        assert_eq!(history.iter().map(port).collect::<Vec<_>>(), vec![5, 7]);
        assert!(live.is_none());
        let (all, _) = hooks.flow_history(&|_| true, None, false).expect("history");
        assert_eq!(
            all.iter().map(port).collect::<Vec<_>>(),
            vec![3, 4, 5, 6, 7]
        );
        assert_eq!(hooks.counts(), (8, 3));
    }

    #[tokio::test]
    async fn a_slow_listener_skips_and_is_told_how_many() {
        let hooks = Hooks::new(10);
        let (_, live) = hooks
            .flow_history(&|_| true, Some(0), true)
            .expect("history");
        let mut live = live.expect("a receiver");
        let total = EVENT_BACKLOG as u32 + 10;
        for i in 0..total {
            // Never blocks, however far behind the listener is.
            hooks.flows("p", vec![record(i)]);
        }
        match live.recv().await {
            Err(broadcast::error::RecvError::Lagged(skipped)) => assert_eq!(skipped, 10),
            other => panic!("expected a lag, got {other:?}"),
        }
        let next = live.recv().await.expect("the oldest event still held");
        assert_eq!(next.r#type(), proto::MonitorType::L7);
        assert_eq!(next.flow.as_ref().map(port), Some(10));
    }
}
