//! Sending flow records to the agent without ever blocking the proxy.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;

use super::{Backoff, Endpoint};
use crate::proto;
use crate::proto::policy_stream_client::PolicyStreamClient;
use crate::server::CLIENT_ID_METADATA;

/// Records handed to the open stream but not yet written. Small: the real buffer is the
/// reporter's queue, which survives reconnects.
const STREAM_QUEUE: usize = 64;

/// Most records in one stream message: whatever is queued when the stream can take more
/// goes together, up to this many.
const MAX_BATCH: usize = 64;

/// Under light load, how long the first record of a batch waits for others. Without it,
/// every request paid for a wake-up of this task, a stream message and a write to the
/// agent. Kept short, with `MAX_BATCH` small, because encoding a batch runs on the
/// proxy's event loop: 50 ms batches of 250 records showed up as 1-2 ms p99 stalls.
const LINGER: Duration = Duration::from_millis(5);

/// How long a reporter whose last handle is gone waits for the agent to take what is left.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// Reports flow records to the agent over `ReportFlows`.
///
/// Records wait in a bounded queue; when it is full (the agent is slow or away) new records
/// are dropped and counted, never waited for. A background task streams the queue to the
/// agent and reconnects with backoff. Records that were in the stream when a connection
/// broke are lost without being counted. Dropping the reporter stops the task after it
/// gave the agent up to 2 s to take what is queued.
#[derive(Debug)]
pub struct FlowReporter {
    records: mpsc::Sender<proto::FlowRecord>,
    counters: Arc<Counters>,
    /// Dropped with the reporter: stops the task while it is not connected.
    _stop: oneshot::Sender<()>,
}

#[derive(Debug, Default)]
struct Counters {
    dropped: AtomicU64,
    sent: AtomicU64,
}

impl FlowReporter {
    /// Starts reporting to `endpoint` as `client_id`, with room for `capacity` queued
    /// records (at least 1) and the default backoff. Needs a tokio runtime.
    pub fn start(endpoint: Endpoint, client_id: &str, capacity: usize) -> Self {
        Self::start_with_backoff(endpoint, client_id, capacity, Backoff::default())
    }

    /// [`FlowReporter::start`] with a chosen reconnect backoff.
    pub fn start_with_backoff(
        endpoint: Endpoint,
        client_id: &str,
        capacity: usize,
        backoff: Backoff,
    ) -> Self {
        let (records, queue) = mpsc::channel(capacity.max(1));
        let (stop, stopped) = oneshot::channel();
        let counters = Arc::new(Counters::default());
        let task = Task {
            endpoint,
            client_id: client_id.to_string(),
            backoff,
            counters: counters.clone(),
            queue,
            pending: None,
        };
        tokio::spawn(task.run(stopped));
        FlowReporter {
            records,
            counters,
            _stop: stop,
        }
    }

    /// Queues a record; `false` (and counted as dropped) if the queue is full. Never blocks.
    pub fn report(&self, record: proto::FlowRecord) -> bool {
        match self.records.try_send(record) {
            Ok(()) => true,
            Err(_) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Records handed to a stream to the agent.
    pub fn sent(&self) -> u64 {
        self.counters.sent.load(Ordering::Relaxed)
    }
}

struct Task {
    endpoint: Endpoint,
    client_id: String,
    backoff: Backoff,
    counters: Arc<Counters>,
    queue: mpsc::Receiver<proto::FlowRecord>,
    /// Records taken from the queue but not yet handed to a stream.
    pending: Option<Vec<proto::FlowRecord>>,
}

/// Why a connection ended.
enum Outcome {
    /// The reporter is gone and the queue is flushed (or given up on): stop.
    Finished,
    /// Reconnect; `healthy` when the connection had worked.
    Retry { healthy: bool },
}

impl Task {
    fn take_queued(&mut self, batch: &mut Vec<proto::FlowRecord>) {
        while batch.len() < MAX_BATCH {
            match self.queue.try_recv() {
                Ok(record) => batch.push(record),
                Err(_) => break,
            }
        }
    }

    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut failures: u32 = 0;
        loop {
            match self.connection(&mut stop).await {
                Outcome::Finished => return,
                Outcome::Retry { healthy } => {
                    failures = if healthy {
                        0
                    } else {
                        failures.saturating_add(1)
                    };
                }
            }
            let delay = self.backoff.delay(failures.saturating_sub(1));
            tokio::select! {
                _ = &mut stop => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One connection. While connecting, the reporter going away stops the task at once;
    /// once connected, the closed queue is drained into the stream first.
    async fn connection(&mut self, stop: &mut oneshot::Receiver<()>) -> Outcome {
        let connected = tokio::select! {
            _ = stop => return Outcome::Finished,
            connected = self.endpoint.connect() => connected,
        };
        let channel = match connected {
            Ok(channel) => channel,
            Err(e) => {
                tracing::debug!(error = %e, "flow reports: not connected");
                return Outcome::Retry { healthy: false };
            }
        };
        let (stream, records) = mpsc::channel(STREAM_QUEUE);
        let mut request = tonic::Request::new(ReceiverStream::new(records));
        if let Ok(id) = MetadataValue::try_from(self.client_id.as_str()) {
            request.metadata_mut().insert(CLIENT_ID_METADATA, id);
        }
        let mut client = PolicyStreamClient::new(channel);
        let call = client.report_flows(request);
        tokio::pin!(call);
        let mut healthy = false;
        loop {
            tokio::select! {
                result = &mut call => {
                    match result {
                        Ok(summary) => {
                            let summary = summary.into_inner();
                            tracing::debug!(received = summary.received, dropped = summary.dropped,
                                "flow report stream ended by the agent");
                        }
                        Err(status) => tracing::debug!(%status, "flow report stream broke"),
                    }
                    return Outcome::Retry { healthy };
                }
                permit = stream.reserve(), if self.pending.is_some() => {
                    let Ok(permit) = permit else {
                        return Outcome::Retry { healthy };
                    };
                    if let Some(records) = self.pending.take() {
                        let count = records.len() as u64;
                        permit.send(proto::FlowBatch { records });
                        self.counters.sent.fetch_add(count, Ordering::Relaxed);
                        healthy = true;
                    }
                }
                record = self.queue.recv(), if self.pending.is_none() => match record {
                    Some(record) => {
                        let mut batch = Vec::with_capacity(MAX_BATCH);
                        batch.push(record);
                        self.take_queued(&mut batch);
                        if batch.len() < MAX_BATCH && !self.queue.is_closed() {
                            // Sleeping rather than awaiting `recv` keeps the senders
                            // from waking this task once per record.
                            tokio::time::sleep(LINGER).await;
                            self.take_queued(&mut batch);
                        }
                        self.pending = Some(batch);
                    }
                    None => break,
                },
            }
        }
        // The reporter is gone and its queue is empty: end the stream so that the agent
        // takes what is in it and answers, then stop.
        drop(stream);
        let _ = tokio::time::timeout(FINAL_FLUSH, &mut call).await;
        Outcome::Finished
    }
}
