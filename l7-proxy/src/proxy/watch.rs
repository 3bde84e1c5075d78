//! The connection's watchdogs: while hyper serves a connection (or a tunnel copies its
//! bytes), close it when it goes idle or when a policy change removes its L3/L4 access.
//! Policy changes arrive on a `watch` receiver from `RequestAuthorizer::policy_updates`;
//! each one re-asks `RequestAuthorizer::admit` for this connection.

use super::activity::{ConnState, IdleClock};
use super::{Admission, ConnInfo, PolicyClose, RequestAuthorizer, ServerLimits};

pub type ServeResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Drives hyper's connection while watching for idleness and for policy changes that
/// remove the connection's access. Either starts a graceful close (requests in flight
/// finish, HTTP/2 gets GOAWAY), bounded by `drain_timeout`.
pub async fn watch_connection<F>(
    mut served: std::pin::Pin<&mut F>,
    shutdown_gracefully: impl Fn(std::pin::Pin<&mut F>),
    conn: &ConnInfo,
    authorizer: &dyn RequestAuthorizer,
    state: &ConnState,
    limits: &ServerLimits,
) -> ServeResult
where
    F: Future<Output = ServeResult>,
{
    let mut updates = authorizer.policy_updates();
    let mut idle = IdleClock::new(limits.idle_timeout);
    let mut tick = tokio::time::interval(idle.tick_period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            result = served.as_mut() => return result,
            () = next_update(&mut updates), if drain_deadline.is_none() => {
                if let Admission::Refused { reason } = authorizer.admit(conn) {
                    tracing::info!(?conn, %reason, "closing a connection the policy no longer allows");
                    authorizer.closed_by_policy(conn, PolicyClose::Update, &reason);
                    shutdown_gracefully(served.as_mut());
                    drain_deadline = Some(tokio::time::Instant::now() + limits.drain_timeout);
                }
            }
            _ = tick.tick(), if drain_deadline.is_none() => {
                if idle.is_idle(state) {
                    tracing::debug!(?conn, "closing an idle connection");
                    shutdown_gracefully(served.as_mut());
                    drain_deadline = Some(tokio::time::Instant::now() + limits.drain_timeout);
                }
            }
            () = sleep_until_some(drain_deadline) => return Ok(()),
        }
    }
}

/// Waits for a tunnel's copy task while watching the same things as `watch_connection`;
/// a tunnel whose access was removed, or that stays idle, is cut.
pub async fn watch_tunnel(
    tunnel: tokio::task::JoinHandle<()>,
    conn: &ConnInfo,
    authorizer: &dyn RequestAuthorizer,
    state: &ConnState,
    limits: &ServerLimits,
) {
    let mut tunnel = std::pin::pin!(tunnel);
    let mut updates = authorizer.policy_updates();
    let mut idle = IdleClock::new(limits.tunnel_idle_timeout);
    let mut tick = tokio::time::interval(idle.tick_period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tunnel.as_mut() => return,
            () = next_update(&mut updates) => {
                if let Admission::Refused { reason } = authorizer.admit(conn) {
                    tracing::info!(?conn, %reason, "closing a tunnel the policy no longer allows");
                    authorizer.closed_by_policy(conn, PolicyClose::Update, &reason);
                    return;
                }
            }
            _ = tick.tick() => {
                if idle.is_idle(state) {
                    tracing::debug!(?conn, "closing an idle tunnel");
                    return;
                }
            }
        }
    }
}

/// Resolves on the next policy change; never, once there can be none.
async fn next_update(updates: &mut Option<tokio::sync::watch::Receiver<()>>) {
    match updates {
        Some(receiver) => {
            if receiver.changed().await.is_err() {
                *updates = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending::<()>().await,
    }
}
