//! A chunked request body is only forwarded once its first chunk has been read: hyper
//! checks each chunk-size line as it reads it, and without this wait a request with a
//! malformed or oversized chunk size would already be on its way upstream when the error
//! shows (the upstream would see a head and a broken body). Clients send the first chunk
//! with the head or right after it, so the wait costs no round trip; a client that never
//! sends it is cut off after `ServerLimits::header_read_timeout`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::ProxyBody;

/// Why the first chunk could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FirstChunkError {
    #[error("malformed chunked body: {0}")]
    Malformed(hyper::Error),
    #[error("no body chunk within {0:?}")]
    Timeout(Duration),
}

/// Reads the body's first frame (or its end) and hands back a body that replays it.
pub async fn read_first_chunk(
    mut body: Incoming,
    within: Duration,
) -> Result<ProxyBody, FirstChunkError> {
    match tokio::time::timeout(within, body.frame()).await {
        Err(_) => Err(FirstChunkError::Timeout(within)),
        Ok(Some(Err(error))) => Err(FirstChunkError::Malformed(error)),
        Ok(first) => Ok(Replayed {
            first: first.and_then(Result::ok),
            rest: body,
        }
        .boxed()),
    }
}

struct Replayed {
    first: Option<Frame<Bytes>>,
    rest: Incoming,
}

impl Body for Replayed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(frame) = self.first.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.rest.size_hint();
        if let Some(data) = self.first.as_ref().and_then(Frame::data_ref) {
            let len = data.len() as u64;
            hint.set_lower(hint.lower().saturating_add(len));
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper.saturating_add(len));
            }
        }
        hint
    }
}
