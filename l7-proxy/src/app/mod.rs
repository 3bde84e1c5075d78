//! The `l7-proxy` process: a policy-stream client, one listener per direction, and an
//! admin listener. Each accepted connection is served on its own task; a failure on one
//! connection is logged and never affects the others.

mod admin;
mod authorizer;
mod flows;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;

use xds::client::Endpoint;

use crate::listener::{self, ListenerConfig, ListenerError, ListenerMode};
use crate::policy::PolicyHandler;
use crate::proxy::upstream::{Upstream, UpstreamConfig};
use crate::proxy::{
    ConnInfo, Direction, RequestAuthorizer, ServerLimits, Upstreams, serve_connection,
};
use authorizer::XdsAuthorizer;
use metrics::Metrics;

/// The proxy's settings, validated by the CLI.
#[derive(Debug, Clone)]
pub struct Config {
    pub agent: Endpoint,
    pub client_id: String,
    pub ingress: Option<SocketAddr>,
    pub egress: Option<SocketAddr>,
    pub mode: ListenerMode,
    /// Upstream settings; connections of the egress listener carry `upstream.mark`.
    pub upstream: UpstreamConfig,
    /// `SO_MARK` on upstream connections of the ingress listener (the datapath tells
    /// ingress-proxy from egress-proxy traffic by its mark).
    pub ingress_mark: Option<u32>,
    pub limits: ServerLimits,
    pub admin: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Listener(#[from] ListenerError),
    #[error("admin listener on {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Runs until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let metrics = Arc::new(Metrics::new());
    let xds::proxy::ProxyStream {
        client,
        policies,
        identities,
        flows,
    } = xds::proxy::connect(
        &config.agent,
        &config.client_id,
        "l7-proxy",
        PolicyHandler::new(),
    );
    let authorizer: Arc<dyn RequestAuthorizer> = Arc::new(XdsAuthorizer {
        policies: policies.clone(),
        identities: identities.clone(),
        metrics: metrics.clone(),
        flows: flows.clone(),
        updates: authorizer::spawn_update_ticker(policies.clone(), identities.clone()),
    });
    // One upstream (and pool) per listener: each direction has its own mark, and a pooled
    // connection carrying one mark must never carry the other direction's requests. The
    // egress listener also forwards with the ingress upstream the requests of a same-node
    // flow whose destination's ingress rules it enforced (`Via::Ingress`).
    let (ingress_upstreams, egress_upstreams) = listener_upstreams(&config);

    let mut tasks = tokio::task::JoinSet::new();
    for (direction, addr, upstreams) in [
        (Direction::Ingress, config.ingress, ingress_upstreams),
        (Direction::Egress, config.egress, egress_upstreams),
    ] {
        let Some(addr) = addr else { continue };
        let listener = listener::bind(&ListenerConfig {
            addr,
            mode: config.mode,
            proxy_header_timeout: config.limits.header_read_timeout,
        })
        .await?;
        tracing::info!(direction = direction.name(), addr = %listener.local_addr(), mode = ?config.mode, "listening");
        let authorizer = authorizer.clone();
        let limits = config.limits.clone();
        let metrics = metrics.clone();
        tasks.spawn(async move {
            listener
                .serve(move |accepted| {
                    let authorizer = authorizer.clone();
                    let upstreams = upstreams.clone();
                    let limits = limits.clone();
                    let metrics = metrics.clone();
                    async move {
                        let conn = ConnInfo {
                            direction,
                            original_src: accepted.original_src,
                            original_dst: accepted.original_dst,
                        };
                        metrics.connections.inc();
                        metrics.active_connections.inc();
                        if let Err(error) =
                            serve_connection(accepted.stream, conn, authorizer, upstreams, &limits)
                                .await
                        {
                            tracing::debug!(%error, "connection ended with an error");
                        }
                        metrics.active_connections.dec();
                    }
                })
                .await;
        });
    }
    let admin = tokio::net::TcpListener::bind(config.admin)
        .await
        .map_err(|source| AppError::Admin {
            addr: config.admin,
            source,
        })?;
    tracing::info!(addr = %config.admin, "admin listening (/metrics, /ready, /config)");
    tasks.spawn(xds::proxy::serve_admin(
        admin,
        Arc::new(admin::AdminState {
            metrics,
            flows,
            policies,
            identities,
            config: format!("{config:#?}"),
        }),
    ));
    shutdown.await;
    tracing::info!("shutting down");
    tasks.abort_all();
    client.shutdown().await;
    Ok(())
}

/// The upstreams of the ingress and the egress listener. The ingress listener forwards
/// with `--ingress-mark` only; the egress listener with `--mark`, and with the ingress
/// listener's upstream (same pool, same mark) the requests that passed the destination's
/// ingress rules too (`Via::Ingress`).
fn listener_upstreams(config: &Config) -> (Upstreams, Upstreams) {
    let egress = Upstream::new(&config.upstream);
    let ingress = Upstream::new(&UpstreamConfig {
        mark: config.ingress_mark,
        ..config.upstream.clone()
    });
    (
        ingress.clone().into(),
        Upstreams {
            listener: egress,
            ingress,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::Via;

    // The egress listener forwards with `--mark`, except requests whose destination's
    // ingress rules it enforced: those carry `--ingress-mark`, like the ingress listener's.
    #[tokio::test]
    async fn chained_requests_carry_the_ingress_mark() {
        let config = Config {
            agent: Endpoint::Unix("/nonexistent".into()),
            client_id: "test".into(),
            ingress: None,
            egress: None,
            mode: ListenerMode::Transparent,
            upstream: UpstreamConfig {
                mark: Some(0x300),
                ..UpstreamConfig::default()
            },
            ingress_mark: Some(0x400),
            limits: ServerLimits::default(),
            admin: "127.0.0.1:0".parse().expect("addr"),
        };
        let (ingress, egress) = listener_upstreams(&config);
        assert_eq!(ingress.get(Via::Listener).mark(), Some(0x400));
        assert_eq!(ingress.get(Via::Ingress).mark(), Some(0x400));
        assert_eq!(egress.get(Via::Listener).mark(), Some(0x300));
        assert_eq!(egress.get(Via::Ingress).mark(), Some(0x400));
    }
}
