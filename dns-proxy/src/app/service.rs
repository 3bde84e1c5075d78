//! What happens to one query, whatever the transport: admission under `--max-in-flight`,
//! the policy decision (SEMANTICS 5.4, 5.5), and once the server answered (or did not),
//! the FQDN hold, the client's ID restored, flow records and metrics.
//!
//! The policy and identity map are read from the stream's watches at the moment of the
//! query: while the agent is away the last good state keeps being enforced, and nothing
//! here waits on the agent except the FQDN hold (bounded by `--fqdn-hold-ms`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use xds::client::{FlowReporter, StateWatch, Versioned};
use xds::identity::IdentityMap;

use super::exchange::ExchangeError;
use super::flows::{FlowParties, FlowQuestion};
use super::fqdn::FqdnHold;
use super::metrics::{Metrics, Outcome};
use super::policy::{DnsPolicies, EndpointDns, Transport, covering, match_name};
use crate::message::{
    CheckedQuery, DenyRcode, QueryVerdict, ResponseInfo, police_query_with, servfail, shed_answer,
    truncate_for_udp,
};

/// Where a query came from and where it was going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryContext {
    pub client: SocketAddr,
    /// The original destination: the DNS server the client addressed.
    pub server: SocketAddr,
    pub transport: Transport,
}

/// Shared by every listener task.
#[derive(Debug)]
pub struct Service {
    pub policies: StateWatch<DnsPolicies>,
    pub identities: StateWatch<IdentityMap>,
    pub deny: DenyRcode,
    pub metrics: Arc<Metrics>,
    pub flows: Arc<FlowReporter>,
    pub fqdn: FqdnHold,
    pub upstream_timeout: Duration,
    pub in_flight: Arc<Semaphore>,
}

/// A query being processed: holds its `--max-in-flight` permit.
#[derive(Debug)]
pub struct InFlight {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}

/// What to do with a query after the policy decision.
#[derive(Debug)]
pub enum Plan {
    /// Send these bytes to the client (denial, FORMERR, NOTIMP, ...).
    Reply(Vec<u8>),
    /// Send nothing (no usable header).
    Nothing,
    /// Forward to the server.
    Forward(Box<Forward>),
}

/// An allowed query on its way to the server.
#[derive(Debug)]
pub struct Forward {
    pub query: CheckedQuery,
    /// The re-encoded query (client's ID: replace it before sending).
    pub bytes: Vec<u8>,
    /// Answer by then, or SERVFAIL.
    pub deadline: Instant,
    origin: Arc<str>,
    endpoint: Arc<EndpointDns>,
    identities: Option<Arc<Versioned<IdentityMap>>>,
    peer: u32,
    question: FlowQuestion,
}

fn question(query: &CheckedQuery) -> FlowQuestion {
    FlowQuestion {
        name: query.name().to_string(),
        qtype: query.question().query_type.to_string(),
    }
}

fn parties<'a>(
    ctx: &QueryContext,
    endpoint: Option<&'a EndpointDns>,
    identities: Option<&'a IdentityMap>,
    peer: u32,
) -> FlowParties<'a> {
    FlowParties {
        client: ctx.client,
        server: ctx.server,
        transport: ctx.transport,
        endpoint,
        identities,
        peer,
    }
}

impl Service {
    /// A permit for one more query, or `None` when `--max-in-flight` are being processed.
    pub fn admit(&self) -> Option<InFlight> {
        let permit = self.in_flight.clone().try_acquire_owned().ok()?;
        self.metrics.in_flight.inc();
        Some(InFlight {
            _permit: permit,
            metrics: self.metrics.clone(),
        })
    }

    /// The answer to a query shed for overload (SERVFAIL), if one can be built; counted.
    pub fn shed(&self, bytes: &[u8], transport: Transport) -> Option<Vec<u8>> {
        self.metrics.shed.inc();
        self.metrics.query(Outcome::Shed, transport.name());
        shed_answer(bytes)
    }

    /// Polices the query against the current policy (SEMANTICS 5.4, 5.5). A denied query's
    /// flow record is sent here; an allowed one's request record too.
    pub fn plan(&self, bytes: &[u8], ctx: &QueryContext) -> Plan {
        let policies = self.policies.borrow().clone();
        let identities = self.identities.borrow().clone();
        let ids = identities.as_ref().map(|v| &v.state);
        let peer = ids.map_or(0, |ids| ids.lookup(ctx.server.ip()));
        let endpoint = policies
            .as_ref()
            .and_then(|p| p.state.endpoint(ctx.client.ip()))
            .cloned();
        let ready = policies.is_some() && ids.is_some();
        let entries = match &endpoint {
            Some(ep) if ready => covering(ep, ctx.transport, ctx.server.port(), peer),
            _ => Vec::new(),
        };
        // Built only for denials: allowed queries must not pay for the text.
        let why_not = || match &endpoint {
            _ if !ready => "no policy received from the agent yet".to_owned(),
            None => format!("no local endpoint has IP {}", ctx.client.ip()),
            Some(ep) if entries.is_empty() => format!(
                "no DNS rule of {} covers {}/{} to identity {peer}",
                ep.name,
                ctx.server.port(),
                ctx.transport.name()
            ),
            Some(ep) => format!("no DNS rule of {} matches the name", ep.name),
        };
        let mut origin = None;
        let verdict = police_query_with(bytes, self.deny, |labels| {
            origin = match_name(&entries, labels);
            origin.as_ref().map(|_| 0)
        });
        let transport = ctx.transport.name();
        let parties = |endpoint| parties(ctx, endpoint, ids, peer);
        match verdict {
            QueryVerdict::Allowed { query, forward, .. } => {
                let (Some(origin), Some(endpoint)) = (origin, endpoint) else {
                    // Cannot happen: the matcher allowed only with an origin and endpoint.
                    self.metrics.query(Outcome::UpstreamFailed, transport);
                    return Plan::Reply(servfail(&query));
                };
                let question = question(&query);
                self.flows.report(parties(Some(&endpoint)).request(
                    "FORWARDED",
                    &origin,
                    &question,
                    None,
                ));
                Plan::Forward(Box::new(Forward {
                    query,
                    bytes: forward,
                    deadline: Instant::now() + self.upstream_timeout,
                    origin,
                    endpoint,
                    identities,
                    peer,
                    question,
                }))
            }
            QueryVerdict::Denied { query, answer } => {
                self.metrics.query(Outcome::Denied, transport);
                let rcode = match self.deny {
                    DenyRcode::Refused => hickory_proto::op::ResponseCode::Refused,
                    DenyRcode::NxDomain => hickory_proto::op::ResponseCode::NXDomain,
                };
                let q = question(&query);
                let why_not = why_not();
                tracing::debug!(client = %ctx.client, server = %ctx.server, name = %q.name, reason = %why_not, "query denied");
                self.flows.report(parties(endpoint.as_deref()).request(
                    "DROPPED",
                    &why_not,
                    &q,
                    Some(rcode),
                ));
                Plan::Reply(answer)
            }
            QueryVerdict::Rejected { error, answer } => {
                self.metrics.query(Outcome::Rejected, transport);
                self.metrics.malformed(&error);
                tracing::debug!(client = %ctx.client, %error, "malformed query answered with an error");
                Plan::Reply(answer)
            }
            QueryVerdict::Dropped { error } => {
                self.metrics.query(Outcome::Dropped, transport);
                self.metrics.malformed(&error);
                tracing::debug!(client = %ctx.client, %error, "malformed query dropped");
                Plan::Nothing
            }
        }
    }

    /// The bytes for the client once the exchange ended: the server's answer under the
    /// client's ID (after the FQDN hold), or SERVFAIL. Sends the response record.
    pub async fn finish(
        &self,
        forward: Forward,
        ctx: &QueryContext,
        result: Result<(Vec<u8>, ResponseInfo), ExchangeError>,
    ) -> Vec<u8> {
        let parties = parties(
            ctx,
            Some(&forward.endpoint),
            forward.identities.as_ref().map(|v| &v.state),
            forward.peer,
        );
        let transport = ctx.transport.name();
        match result {
            Ok((mut answer, info)) => {
                // Only endpoints with toFQDNs selectors need their answers' IPs allowed;
                // reporting the others would cost the agent a call per answer for nothing.
                if forward.endpoint.reports_fqdn {
                    self.fqdn.hold(&forward.endpoint.name, &info).await;
                }
                if let Some(head) = answer.get_mut(..2) {
                    head.copy_from_slice(&forward.query.id().to_be_bytes());
                }
                self.metrics.query(Outcome::Forwarded, transport);
                self.flows.report(parties.response(
                    &forward.origin,
                    &forward.question,
                    Some(&info),
                ));
                if ctx.transport == Transport::Tcp {
                    return answer;
                }
                // Too big for the client: TC set, so it retries over TCP.
                match truncate_for_udp(&answer, forward.query.udp_limit()) {
                    Ok(None) => answer,
                    Ok(Some(cut)) => {
                        self.metrics.truncated.inc();
                        cut
                    }
                    Err(error) => {
                        tracing::debug!(%error, "truncating an answer failed; answering SERVFAIL");
                        servfail(&forward.query)
                    }
                }
            }
            Err(error) => {
                self.metrics.query(Outcome::UpstreamFailed, transport);
                self.metrics.upstream_error(error.kind());
                tracing::debug!(client = %ctx.client, server = %ctx.server, name = %forward.question.name, %error, "answering SERVFAIL");
                self.flows
                    .report(parties.response(&forward.origin, &forward.question, None));
                servfail(&forward.query)
            }
        }
    }
}
