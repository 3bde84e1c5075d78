//! `Observe` and `Monitor`: unimplemented by hooks that hold nothing; filters, follow and
//! type selection; live streams end when the server shuts down (else its graceful shutdown
//! would wait for them forever). Lag is tested with the agent's hooks (node-agent).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, oneshot, watch};
use xds::server::{AgentHooks, EventReceiver, FlowHistory, PolicyServer, Snapshot};
use xds::{AgentClient, XdsError, proto};

use crate::harness::{IDENTITY, Socket, TestServer, WAIT, at, ready};

fn flow(verdict: &str) -> proto::FlowRecord {
    proto::FlowRecord {
        verdict: verdict.into(),
        ..proto::FlowRecord::default()
    }
}

/// Hooks with a held record list and a broadcast channel of events.
struct LiveHooks {
    held: Mutex<Vec<proto::FlowRecord>>,
    events: broadcast::Sender<Arc<proto::MonitorEvent>>,
}

impl LiveHooks {
    fn publish(&self, kind: proto::MonitorType, record: proto::FlowRecord) {
        let _ = self.events.send(Arc::new(proto::MonitorEvent {
            r#type: kind as i32,
            flow: Some(record),
            lost: 0,
        }));
    }
}

#[tonic::async_trait]
impl AgentHooks for LiveHooks {
    fn flows(&self, _client: &str, _records: Vec<proto::FlowRecord>) -> u64 {
        0
    }

    async fn observe_fqdn(
        &self,
        _obs: proto::FqdnObservation,
    ) -> Result<proto::FqdnObservationResult, tonic::Status> {
        Err(tonic::Status::unimplemented("no"))
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
        let held = self.held.lock().expect("held");
        let mut history: Vec<_> = held.iter().filter(|r| keep(r)).cloned().collect();
        if let Some(n) = last {
            history.drain(..history.len().saturating_sub(n));
        }
        Some((history, follow.then(|| self.events.subscribe())))
    }
}

#[tokio::test]
async fn hooks_without_records_answer_unimplemented() {
    let socket = Socket::new();
    let server = TestServer::start(&socket.path, ready(vec![(IDENTITY, at(1, &[]))]));
    let client = AgentClient::new(socket.endpoint()).expect("client");
    let code = |e: XdsError| match e {
        XdsError::Rpc { status, .. } => status.code(),
        other => panic!("unexpected error {other}"),
    };
    let observe = client
        .observe(proto::ObserveRequest::default())
        .await
        .expect_err("no records");
    assert_eq!(code(observe), tonic::Code::Unimplemented);
    let monitor = client
        .monitor(proto::MonitorRequest::default())
        .await
        .expect_err("no events");
    assert_eq!(code(monitor), tonic::Code::Unimplemented);
    server.stop().await;
}

#[tokio::test]
async fn observe_filters_and_follows_monitor_selects_types_both_end_at_shutdown() {
    let socket = Socket::new();
    let (events, _) = broadcast::channel(4);
    let hooks = Arc::new(LiveHooks {
        held: Mutex::new(vec![flow("FORWARDED"), flow("DROPPED"), flow("DROPPED")]),
        events,
    });
    let (_snapshots, receiver) = watch::channel(Arc::new(Snapshot::default()));
    let server = PolicyServer::new(receiver, hooks.clone());
    let listener = xds::bind_unix(&socket.path).expect("bind");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve_unix_listener(listener, async move {
        let _ = stopped.await;
    }));
    let client = AgentClient::new(socket.endpoint()).expect("client");

    let mut observe = client
        .observe(proto::ObserveRequest {
            follow: true,
            last: Some(1),
            filter: Some(proto::FlowFilter {
                verdicts: vec!["DROPPED".into()],
                ..proto::FlowFilter::default()
            }),
        })
        .await
        .expect("observe");
    let first = observe.message().await.expect("message").expect("a record");
    assert!(matches!(
        first.response,
        Some(proto::observe_response::Response::Flow(ref f)) if f.verdict == "DROPPED"
    ));

    // An L7 event and a drop: the observer (DROPPED only) and the monitor (drops only) get
    // the drop.
    let mut monitor = client
        .monitor(proto::MonitorRequest {
            types: vec![proto::MonitorType::Drop as i32],
        })
        .await
        .expect("monitor");
    // Each call's task subscribes when the call starts; give both a moment to be listening.
    tokio::time::sleep(Duration::from_millis(50)).await;
    hooks.publish(proto::MonitorType::L7, flow("FORWARDED"));
    hooks.publish(proto::MonitorType::Drop, flow("DROPPED"));
    let followed = tokio::time::timeout(WAIT, observe.message())
        .await
        .expect("in time")
        .expect("message")
        .expect("a record");
    assert!(matches!(
        followed.response,
        Some(proto::observe_response::Response::Flow(ref f)) if f.verdict == "DROPPED"
    ));
    let dropped = tokio::time::timeout(WAIT, monitor.message())
        .await
        .expect("in time")
        .expect("message")
        .expect("an event");
    assert_eq!(dropped.r#type(), proto::MonitorType::Drop);

    // Shutdown ends both streams, and the server stops.
    drop(stop);
    tokio::time::timeout(WAIT, async {
        while observe.message().await.ok().flatten().is_some() {}
        while monitor.message().await.ok().flatten().is_some() {}
    })
    .await
    .expect("the streams end at shutdown");
    tokio::time::timeout(WAIT, task)
        .await
        .expect("server stops in time")
        .expect("server task")
        .expect("server ends without error");
}
