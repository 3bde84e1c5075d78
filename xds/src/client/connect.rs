//! Making a tonic channel to an [`Endpoint`], and the reconnect backoff.

use std::hash::BuildHasher;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Uri};

use super::Endpoint;
use crate::XdsError;

/// How long establishing a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// HTTP/2 pings, and how long an answer may take.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Responses can hold the whole policy of a node: allow much more than tonic's 4 MiB.
pub(crate) const MAX_RESPONSE: usize = 256 * 1024 * 1024;

/// The authority of requests over a unix socket; any valid one would do.
const UNIX_AUTHORITY: &str = "http://localhost";

impl Endpoint {
    fn tonic_endpoint(&self) -> Result<tonic::transport::Endpoint, XdsError> {
        let url = match self {
            Endpoint::Unix(_) => UNIX_AUTHORITY.to_string(),
            Endpoint::Tcp(url) => url.clone(),
        };
        let endpoint = tonic::transport::Endpoint::from_shared(url).map_err(|source| {
            XdsError::InvalidEndpoint {
                endpoint: self.to_string(),
                source,
            }
        })?;
        Ok(endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            // An agent that vanished without closing (only possible over TCP) is noticed,
            // so the client reconnects instead of waiting forever.
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true))
    }

    /// Connects now; fails if the agent is not there.
    pub(crate) async fn connect(&self) -> Result<Channel, XdsError> {
        let endpoint = self.tonic_endpoint()?;
        let connected = match self {
            Endpoint::Unix(path) => {
                let path = path.clone();
                endpoint
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                        }
                    }))
                    .await
            }
            Endpoint::Tcp(_) => endpoint.connect().await,
        };
        connected.map_err(|source| XdsError::Connect {
            endpoint: self.to_string(),
            source,
        })
    }

    /// A channel that connects on first use and reconnects by itself. Needs a tokio runtime.
    pub(crate) fn connect_lazy(&self) -> Result<Channel, XdsError> {
        let endpoint = self.tonic_endpoint()?;
        Ok(match self {
            Endpoint::Unix(path) => {
                let path = path.clone();
                endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
            }
            Endpoint::Tcp(_) => endpoint.connect_lazy(),
        })
    }
}

/// Exponential reconnect backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    /// 100 ms, doubling up to 10 s.
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// From `min` doubling up to `max` (`max` is raised to `min` if below it).
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
        }
    }

    /// The delay before reconnect attempt `failures` (0 for the first retry): the
    /// exponential step, then a random point in its upper half, so that many clients
    /// that lost the agent at the same moment don't come back at the same moment.
    pub fn delay(&self, failures: u32) -> Duration {
        let step = self
            .min
            .saturating_mul(2u32.saturating_pow(failures.min(31)))
            .min(self.max);
        let random = std::collections::hash_map::RandomState::new().hash_one(failures);
        let fraction = (random % 1024) as f64 / 1024.0;
        step.mul_f64(0.5 + 0.5 * fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_maximum() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for (failures, step_ms) in [
            (0, 100),
            (1, 200),
            (2, 400),
            (3, 800),
            (4, 1000),
            (40, 1000),
        ] {
            let step = Duration::from_millis(step_ms);
            for _ in 0..50 {
                let delay = backoff.delay(failures);
                assert!(delay >= step / 2 && delay <= step, "{failures}: {delay:?}");
            }
        }
    }

    #[test]
    fn a_maximum_below_the_minimum_is_raised() {
        let backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(backoff.max, Duration::from_secs(2));
    }
}
