//! A fake agent (policy server with recording hooks), a tiny upstream DNS server, the proxy
//! in forward mode on 127.0.0.1, and DNS clients over UDP and TCP.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dns_proxy::app::{self, Config, Mode, Running};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use xds::proto;
use xds::{AgentHooks, Endpoint, PolicyServer, Snapshot, TypeSnapshot};

/// Every wait in these tests gives up after this long.
pub const WAIT: Duration = Duration::from_secs(10);

/// Where the fake DNS server listens (an address of its own, with its own identity).
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 53);
/// The local endpoint's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// An address no endpoint has.
pub const STRANGER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);

pub const CLIENT_IDENTITY: u32 = 300;
pub const DNS_IDENTITY: u32 = 400;
pub const ORIGIN: &str = "CiliumNetworkPolicy default/dns spec.egress[0].toPorts[0].rules.dns";

/// What the fake agent saw.
#[derive(Default)]
pub struct Hooks {
    pub flows: Mutex<Vec<proto::FlowRecord>>,
    pub observations: Mutex<Vec<proto::FqdnObservation>>,
    /// How long `ObserveFqdn` takes.
    pub fqdn_delay: Mutex<Duration>,
}

#[tonic::async_trait]
impl AgentHooks for Hooks {
    fn flows(&self, _client: &str, records: Vec<proto::FlowRecord>) -> u64 {
        self.flows.lock().expect("flows").extend(records);
        0
    }

    async fn observe_fqdn(
        &self,
        obs: proto::FqdnObservation,
    ) -> Result<proto::FqdnObservationResult, tonic::Status> {
        self.observations.lock().expect("observations").push(obs);
        let delay = *self.fqdn_delay.lock().expect("delay");
        tokio::time::sleep(delay).await;
        Ok(proto::FqdnObservationResult {
            allowed: true,
            detail: String::new(),
        })
    }
}

pub struct FakeAgent {
    pub hooks: Arc<Hooks>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), xds::XdsError>>,
    _snapshots: watch::Sender<Arc<Snapshot>>,
}

impl FakeAgent {
    /// Serves `snapshot` on `path`.
    pub fn start(path: &std::path::Path, snapshot: Snapshot) -> Self {
        let (snapshots, receiver) = watch::channel(Arc::new(snapshot));
        let hooks = Arc::new(Hooks::default());
        let server = PolicyServer::new(receiver, hooks.clone());
        let listener = xds::bind_unix(path).expect("bind the agent socket");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve_unix_listener(listener, async move {
            let _ = stopped.await;
        }));
        FakeAgent {
            hooks,
            stop,
            task,
            _snapshots: snapshots,
        }
    }

    pub async fn stop(self) {
        drop(self.stop);
        let _ = tokio::time::timeout(WAIT, self.task).await;
    }

    pub fn flows(&self) -> Vec<proto::FlowRecord> {
        self.hooks.flows.lock().expect("flows").clone()
    }

    pub fn observations(&self) -> Vec<proto::FqdnObservation> {
        self.hooks
            .observations
            .lock()
            .expect("observations")
            .clone()
    }
}

fn resource(name: &str, body: proto::resource::Body) -> Arc<proto::Resource> {
    Arc::new(proto::Resource {
        name: name.to_owned(),
        version: "1".to_owned(),
        body: Some(body),
    })
}

/// Identities of the client and the DNS server, and one NetworkPolicy for 127.0.0.1 whose
/// egress redirects DNS to the server's port with `matchName: allowed.example.com` and
/// `matchPattern: *.test`.
pub fn snapshot(dns_port: u16) -> Snapshot {
    let identities = [
        (
            CLIENT_IDENTITY,
            vec![
                "k8s:app=client".to_owned(),
                "k8s:io.kubernetes.pod.namespace=default".to_owned(),
            ],
            vec![format!("{CLIENT_IP}/32")],
        ),
        (
            DNS_IDENTITY,
            vec![
                "k8s:k8s-app=kube-dns".to_owned(),
                "k8s:io.kubernetes.pod.namespace=kube-system".to_owned(),
            ],
            vec![format!("{SERVER_IP}/32")],
        ),
    ];
    let identity_resources: BTreeMap<String, Arc<proto::Resource>> = identities
        .into_iter()
        .map(|(id, labels, prefixes)| {
            (
                id.to_string(),
                resource(
                    &id.to_string(),
                    proto::resource::Body::Identity(proto::Identity {
                        id,
                        labels,
                        prefixes,
                    }),
                ),
            )
        })
        .collect();
    let selectors = [
        proto::dns_selector::Selector::MatchName("allowed.example.com".to_owned()),
        proto::dns_selector::Selector::MatchPattern("*.test".to_owned()),
    ];
    let policy = proto::NetworkPolicy {
        namespace: "default".to_owned(),
        pod: "client".to_owned(),
        ips: vec![CLIENT_IP.to_string()],
        identity: CLIENT_IDENTITY,
        // The client has toFQDNs selectors: its answers are reported and held.
        egress_fqdn: true,
        ingress: None,
        egress: Some(proto::DirectionPolicy {
            enforced: true,
            default_deny: true,
            entries: vec![proto::PortPolicy {
                protocol: proto::Protocol::Any as i32,
                port: u32::from(dns_port),
                remote_identities: vec![DNS_IDENTITY],
                action: proto::Action::Redirect as i32,
                parser: proto::L7Parser::Dns as i32,
                dns_rule_sets: vec![proto::DnsRuleSet {
                    origin: ORIGIN.to_owned(),
                    selectors: selectors
                        .into_iter()
                        .map(|s| proto::DnsSelector { selector: Some(s) })
                        .collect(),
                }],
                peer: "k8s-app=kube-dns".to_owned(),
                ..Default::default()
            }],
        }),
    };
    let policies = BTreeMap::from([(
        "default/client".to_owned(),
        resource(
            "default/client",
            proto::resource::Body::NetworkPolicy(policy),
        ),
    )]);
    Snapshot {
        ready: true,
        types: BTreeMap::from([
            (
                xds::IDENTITY_TYPE.to_owned(),
                TypeSnapshot {
                    version: 1,
                    resources: identity_resources,
                    requires: None,
                    changes: None,
                },
            ),
            (
                xds::NETWORK_POLICY_TYPE.to_owned(),
                TypeSnapshot {
                    version: 1,
                    resources: policies,
                    requires: Some((xds::IDENTITY_TYPE.to_owned(), 1)),
                    changes: None,
                },
            ),
        ]),
    }
}

/// The tiny upstream DNS server. By the question's first label (lower-cased):
/// `slow`: answers after 300 ms; `drop`: never answers; `big`: 60 A records (over 512
/// bytes); `spoof`: first an answer with another ID and one with another question, then the
/// real one; `close` (TCP): the server closes the connection; anything else: A 192.0.2.1 and AAAA 2001:db8::1, TTL 300 and 60.
pub struct Upstream {
    pub addr: SocketAddr,
    /// (ID, question name as received) of every query.
    pub seen: Arc<Mutex<Vec<(u16, String)>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Upstream {
    pub async fn start() -> Self {
        let udp = UdpSocket::bind((SERVER_IP, 0)).await.expect("upstream UDP");
        let addr = udp.local_addr().expect("addr");
        let tcp = TcpListener::bind(addr).await.expect("upstream TCP");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let udp = Arc::new(udp);
        let udp_task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65535];
                loop {
                    let Ok((n, from)) = udp.recv_from(&mut buf).await else {
                        return;
                    };
                    let query = buf[..n].to_vec();
                    let (udp, seen) = (udp.clone(), seen.clone());
                    tokio::spawn(async move {
                        for answer in answers(&query, &seen).await {
                            let _ = udp.send_to(&answer, from).await;
                        }
                    });
                }
            })
        };
        let tcp_task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = tcp.accept().await {
                    tokio::spawn(serve_tcp(stream, seen.clone()));
                }
            })
        };
        Upstream {
            addr,
            seen,
            tasks: vec![udp_task, tcp_task],
        }
    }

    pub fn seen(&self) -> Vec<(u16, String)> {
        self.seen.lock().expect("seen").clone()
    }
}

async fn serve_tcp(stream: TcpStream, seen: Arc<Mutex<Vec<(u16, String)>>>) {
    let (mut reader, writer) = stream.into_split();
    let writer = Arc::new(tokio::sync::Mutex::new(writer));
    while let Ok(query) = read_frame(&mut reader).await {
        let closing = Message::from_vec(&query).is_ok_and(|m| {
            m.queries
                .first()
                .is_some_and(|q| q.name.to_ascii().to_ascii_lowercase().starts_with("close."))
        });
        if closing {
            let _ = writer.lock().await.shutdown().await;
            return;
        }
        let (writer, seen) = (writer.clone(), seen.clone());
        tokio::spawn(async move {
            for answer in answers(&query, &seen).await {
                let _ = writer.lock().await.write_all(&framed(&answer)).await;
            }
        });
    }
}

async fn answers(query: &[u8], seen: &Mutex<Vec<(u16, String)>>) -> Vec<Vec<u8>> {
    let Ok(msg) = Message::from_vec(query) else {
        return Vec::new();
    };
    let Some(question) = msg.queries.first().cloned() else {
        return Vec::new();
    };
    let name = question.name.to_ascii();
    seen.lock()
        .expect("seen")
        .push((msg.metadata.id, name.clone()));
    let first = name
        .split('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut answer = Message::response(msg.metadata.id, OpCode::Query);
    answer.metadata.recursion_desired = msg.metadata.recursion_desired;
    answer.metadata.recursion_available = true;
    answer.add_query(question.clone());
    match first.as_str() {
        "drop" => return Vec::new(),
        "slow" => tokio::time::sleep(Duration::from_millis(300)).await,
        "big" => {
            for i in 0..60u8 {
                answer.add_answer(Record::from_rdata(
                    question.name.clone(),
                    300,
                    RData::A(A(Ipv4Addr::new(198, 51, 100, i))),
                ));
            }
            return vec![answer.to_vec().expect("encode")];
        }
        _ => {}
    }
    answer.add_answer(Record::from_rdata(
        question.name.clone(),
        300,
        RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
    ));
    answer.add_answer(Record::from_rdata(
        question.name.clone(),
        60,
        RData::AAAA(AAAA("2001:db8::1".parse().expect("v6"))),
    ));
    let real = answer.to_vec().expect("encode");
    if first == "spoof" {
        let mut wrong_id = real.clone();
        wrong_id[0] ^= 0xff;
        let mut other = Message::response(msg.metadata.id, OpCode::Query);
        other.add_query(Query::query(
            Name::from_ascii("other.test.").expect("name"),
            RecordType::A,
        ));
        return vec![wrong_id, other.to_vec().expect("encode"), real];
    }
    vec![real]
}

pub struct Proxy {
    pub running: Running,
    pub agent: Option<FakeAgent>,
    pub upstream: Upstream,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Upstream, fake agent and proxy (forward mode), with `adjust` applied to the config;
    /// returns once the proxy has its policy.
    pub async fn start(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::try_start(adjust).await.expect("the proxy starts")
    }

    /// As [`Proxy::start`], but a proxy that cannot start is an error, not a panic.
    pub async fn try_start(adjust: impl FnOnce(&mut Config)) -> Result<Self, app::AppError> {
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("agent.sock");
        let agent = FakeAgent::start(&socket, snapshot(upstream.addr.port()));
        let mut config = Config::new(
            Endpoint::Unix(socket.clone()),
            Mode::Forward {
                listen: SocketAddr::from((CLIENT_IP, 0)),
                upstream: upstream.addr,
            },
        );
        config.admin = SocketAddr::from((CLIENT_IP, 0));
        config.upstream_timeout = Duration::from_millis(500);
        adjust(&mut config);
        let running = app::start(config).await?;
        let proxy = Proxy {
            running,
            agent: Some(agent),
            upstream,
            _dir: dir,
        };
        tokio::time::timeout(WAIT, async {
            while proxy.get("/ready").await.0 != 200 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the proxy becomes ready");
        Ok(proxy)
    }

    pub fn udp(&self) -> SocketAddr {
        self.running.udp[0]
    }

    pub fn tcp(&self) -> SocketAddr {
        self.running.tcp[0]
    }

    pub fn agent(&self) -> &FakeAgent {
        self.agent.as_ref().expect("the agent is running")
    }

    /// Status and body of an admin GET.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let Ok(mut stream) = TcpStream::connect(self.running.admin).await else {
            return (0, String::new());
        };
        let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        if stream.write_all(request.as_bytes()).await.is_err() {
            return (0, String::new());
        }
        let mut out = String::new();
        let _ = stream.read_to_string(&mut out).await;
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        (status, body)
    }

    /// The value of a metric line starting with `prefix` (0 if absent).
    pub async fn metric(&self, prefix: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

/// A query for `name`, type A, RD, with `id`.
pub fn query(id: u16, name: &str) -> Vec<u8> {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    msg.to_vec().expect("encode")
}

/// Sends `bytes` over UDP from `from` and returns the answer, if one comes within `wait`.
pub async fn udp_exchange(
    from: Ipv4Addr,
    to: SocketAddr,
    bytes: &[u8],
    wait: Duration,
) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind((IpAddr::V4(from), 0))
        .await
        .expect("client");
    socket.send_to(bytes, to).await.expect("send");
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(wait, socket.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf.truncate(n);
    Some(buf)
}

/// UDP from the endpoint's address; panics without an answer.
pub async fn ask(proxy: &Proxy, bytes: &[u8]) -> Message {
    let answer = udp_exchange(CLIENT_IP, proxy.udp(), bytes, WAIT)
        .await
        .expect("an answer");
    Message::from_vec(&answer).expect("the answer parses")
}

pub fn rcode(msg: &Message) -> ResponseCode {
    msg.metadata.response_code
}

pub async fn read_frame(reader: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    reader.read_exact(&mut len).await?;
    let mut frame = vec![0u8; usize::from(u16::from_be_bytes(len))];
    reader.read_exact(&mut frame).await?;
    Ok(frame)
}

pub fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(message.len())
        .expect("fits")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(message);
    out
}

/// Waits until `done` holds.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}
