//! `Observe` and `Monitor`: the agent's flow records and live events, streamed to the CLI.
//!
//! Each call gets its own task and a small bounded queue to its client. Live events come
//! from the agent's broadcast channel: a client that reads too slowly falls behind there,
//! skips what it missed and is told how many events that was; the agent and the proxies
//! never wait for it.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::service::shutdown_signal;
use super::{EventReceiver, Shared};
use crate::proto;

/// Messages waiting to be written to one CLI client.
const OUTBOUND_QUEUE: usize = 256;

pub(super) type ObserveStream = ReceiverStream<Result<proto::ObserveResponse, Status>>;
pub(super) type MonitorStream = ReceiverStream<Result<proto::MonitorEvent, Status>>;

/// Whether `record` passes `filter`: every set field must match.
///
/// A pod filter is `NAMESPACE/NAME` (the name is a prefix, as in `hubble observe`, so that
/// `default/deathstar` matches `default/deathstar-6f8d`), `NAMESPACE/` for the whole
/// namespace, or a bare name in `default`.
pub fn flow_matches(filter: &proto::FlowFilter, record: &proto::FlowRecord) -> bool {
    let pod_matches = |wanted: &str, endpoint: Option<&proto::FlowEndpoint>| {
        if wanted.is_empty() {
            return true;
        }
        let Some(endpoint) = endpoint else {
            return false;
        };
        let (namespace, name) = wanted.split_once('/').unwrap_or(("default", wanted));
        endpoint.namespace == namespace
            && (name.is_empty() || endpoint.pod_name.starts_with(name))
            && !(name.is_empty() && endpoint.pod_name.is_empty())
    };
    pod_matches(&filter.source_pod, record.source.as_ref())
        && pod_matches(&filter.destination_pod, record.destination.as_ref())
        && (filter.verdicts.is_empty()
            || filter
                .verdicts
                .iter()
                .any(|v| v.eq_ignore_ascii_case(&record.verdict)))
}

fn wanted_types(request: &proto::MonitorRequest) -> Vec<proto::MonitorType> {
    let mut types: Vec<proto::MonitorType> = request
        .types
        .iter()
        .filter_map(|t| proto::MonitorType::try_from(*t).ok())
        .filter(|t| *t != proto::MonitorType::Unspecified)
        .collect();
    if types.is_empty() {
        types = vec![
            proto::MonitorType::Drop,
            proto::MonitorType::L7,
            proto::MonitorType::PolicyVerdict,
        ];
    }
    types
}

pub(super) fn observe(
    shared: &Arc<Shared>,
    request: proto::ObserveRequest,
    shutdown: Option<watch::Receiver<bool>>,
) -> Result<ObserveStream, Status> {
    let filter = request.filter.unwrap_or_default();
    let last = request
        .last
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let keep = |record: &proto::FlowRecord| flow_matches(&filter, record);
    let (history, live) = shared
        .hooks
        .flow_history(&keep, last, request.follow)
        .ok_or_else(|| Status::unimplemented("this agent holds no flow records"))?;
    let (out, responses) = mpsc::channel(OUTBOUND_QUEUE);
    tokio::spawn(async move {
        let mut shutdown = shutdown;
        let send = |out: &mpsc::Sender<_>, response| {
            let out = out.clone();
            async move {
                out.send(Ok(proto::ObserveResponse {
                    response: Some(response),
                }))
                .await
            }
        };
        for record in history {
            tokio::select! {
                _ = shutdown_signal(&mut shutdown) => return,
                sent = send(&out, proto::observe_response::Response::Flow(record)) => {
                    if sent.is_err() {
                        return;
                    }
                }
            }
        }
        let Some(mut live) = live else {
            return;
        };
        loop {
            let next = tokio::select! {
                _ = shutdown_signal(&mut shutdown) => return,
                () = out.closed() => return,
                next = live.recv() => next,
            };
            let response = match next {
                Ok(event) => match &event.flow {
                    Some(flow) if flow_matches(&filter, flow) => {
                        proto::observe_response::Response::Flow(flow.clone())
                    }
                    _ => continue,
                },
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::debug!(skipped, "observe client fell behind");
                    proto::observe_response::Response::Lost(skipped)
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            tokio::select! {
                _ = shutdown_signal(&mut shutdown) => return,
                sent = send(&out, response) => {
                    if sent.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(ReceiverStream::new(responses))
}

pub(super) fn monitor(
    shared: &Arc<Shared>,
    request: proto::MonitorRequest,
    shutdown: Option<watch::Receiver<bool>>,
) -> Result<MonitorStream, Status> {
    let types = wanted_types(&request);
    let live: EventReceiver = shared
        .hooks
        .events()
        .ok_or_else(|| Status::unimplemented("this agent publishes no events"))?;
    let (out, events) = mpsc::channel(OUTBOUND_QUEUE);
    tokio::spawn(async move {
        let mut shutdown = shutdown;
        let mut live = live;
        loop {
            let next = tokio::select! {
                _ = shutdown_signal(&mut shutdown) => return,
                () = out.closed() => return,
                next = live.recv() => next,
            };
            let event = match next {
                Ok(event) if types.contains(&event.r#type()) => (*event).clone(),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::debug!(skipped, "monitor client fell behind");
                    proto::MonitorEvent {
                        lost: skipped,
                        ..proto::MonitorEvent::default()
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            tokio::select! {
                _ = shutdown_signal(&mut shutdown) => return,
                sent = out.send(Ok(event)) => {
                    if sent.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(ReceiverStream::new(events))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(src: (&str, &str), dst: (&str, &str), verdict: &str) -> proto::FlowRecord {
        let endpoint = |(namespace, pod_name): (&str, &str)| proto::FlowEndpoint {
            namespace: namespace.into(),
            pod_name: pod_name.into(),
            ..proto::FlowEndpoint::default()
        };
        proto::FlowRecord {
            verdict: verdict.into(),
            source: Some(endpoint(src)),
            destination: Some(endpoint(dst)),
            ..proto::FlowRecord::default()
        }
    }

    #[test]
    fn filters_match_pods_by_namespace_and_name_prefix_and_verdicts() {
        let r = record(
            ("default", "tiefighter"),
            ("default", "deathstar-6f8d"),
            "DROPPED",
        );
        let filter = |src: &str, dst: &str, verdicts: &[&str]| proto::FlowFilter {
            source_pod: src.into(),
            destination_pod: dst.into(),
            verdicts: verdicts.iter().map(|v| (*v).to_owned()).collect(),
        };
        assert!(flow_matches(&filter("", "", &[]), &r));
        assert!(flow_matches(&filter("default/tiefighter", "", &[]), &r));
        assert!(flow_matches(&filter("tiefighter", "", &[]), &r));
        assert!(flow_matches(
            &filter("default/", "default/deathstar", &[]),
            &r
        ));
        assert!(flow_matches(&filter("", "", &["FORWARDED", "dropped"]), &r));
        assert!(!flow_matches(&filter("", "", &["FORWARDED"]), &r));
        assert!(!flow_matches(&filter("other/tiefighter", "", &[]), &r));
        assert!(!flow_matches(&filter("default/deathstar", "", &[]), &r));
        assert!(!flow_matches(&filter("", "default/tiefighter", &[]), &r));
        // A world peer (no pod) matches no pod filter, not even its namespace's.
        let world = record(("", ""), ("default", "deathstar"), "FORWARDED");
        assert!(!flow_matches(&filter("default/", "", &[]), &world));
        assert!(flow_matches(&filter("", "default/deathstar", &[]), &world));
    }

    #[test]
    fn no_monitor_types_means_every_type() {
        let all = wanted_types(&proto::MonitorRequest::default());
        assert_eq!(all.len(), 3);
        let drops = wanted_types(&proto::MonitorRequest {
            types: vec![proto::MonitorType::Drop as i32],
        });
        assert_eq!(drops, vec![proto::MonitorType::Drop]);
    }
}
