//! Sees the HTTP/1 request heads hyper reads, for what hyper hides from the service
//! (SEMANTICS 4.12): hyper 1.x drops a Content-Length that comes with a Transfer-Encoding
//! before the request reaches us, so `framing::check` cannot refuse it.
//!
//! `HeadScanner` wraps the downstream stream. Every slice hyper reads is run through a
//! small state machine that follows the message framing exactly as hyper decides it
//! (Transfer-Encoding => chunked, else Content-Length, else no body) to find each head,
//! parses the head with `httparse`, and records in order whether it carried both
//! Content-Length and Transfer-Encoding. hyper handles HTTP/1 requests strictly in order
//! and has always read a head completely before the service sees it, so request N of the
//! connection takes verdict N (`Verdicts::take`), without waiting.
//!
//! Scanning stops for good (everything passes through, verdicts are "clean") on an HTTP/2
//! preface, on anything `httparse` cannot parse, on a head longer than the server's limit,
//! or on a malformed chunk: hyper rejects or handles those itself. Heads that ask for an
//! upgrade (CONNECT, `Upgrade`) are followed like any other: if hyper does switch
//! protocols the service is never called again on this connection, so whatever the
//! scanner records afterwards is never used, and if it does not, the next head is still
//! checked.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most request headers a head may have: hyper's default, Envoy's default, and the
/// ceiling of `ServerLimits::max_headers`, so that hyper never accepts a head this scanner
/// could not parse.
pub const MAX_HEADERS: usize = 100;

/// The per-request verdicts of one connection, shared between the scanner and the service.
#[derive(Debug, Default)]
pub struct Verdicts {
    queue: Mutex<VecDeque<bool>>,
}

impl Verdicts {
    /// Whether the next request (in connection order) carried both Content-Length and
    /// Transfer-Encoding. "No" when nothing was recorded for it (scanning stopped, HTTP/2).
    pub fn take(&self) -> bool {
        self.lock().pop_front().unwrap_or(false)
    }

    fn push(&self, both: bool) {
        self.lock().push_back(both);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<bool>> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a request head.
    Head,
    /// A fixed-length body: this many bytes still to skip.
    Fixed(u64),
    /// Chunk size digits.
    Size {
        size: u64,
        digits: bool,
    },
    /// Whitespace after the chunk size.
    SizeLws {
        size: u64,
    },
    /// A chunk extension (`;...`) up to CR.
    Extension {
        size: u64,
    },
    /// The LF ending a chunk-size line.
    SizeLf {
        size: u64,
    },
    /// Chunk data still to skip.
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: start of a trailer line or of the final empty line.
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
    /// Pass everything through.
    Stopped,
}

/// The scanning state machine, independent of any I/O.
#[derive(Debug)]
pub struct Scan {
    state: State,
    head: Vec<u8>,
    max_head: usize,
    verdicts: Arc<Verdicts>,
}

impl Scan {
    pub fn new(max_head: usize, verdicts: Arc<Verdicts>) -> Self {
        Self {
            state: State::Head,
            head: Vec::new(),
            max_head,
            verdicts,
        }
    }

    pub fn stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// Feeds the bytes just read from the client.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let used = match self.state {
                State::Stopped => return,
                State::Head => self.feed_head(data),
                State::Fixed(left) => {
                    let n = left.min(data.len() as u64);
                    self.state = if n == left {
                        State::Head
                    } else {
                        State::Fixed(left - n)
                    };
                    n as usize
                }
                State::Data(left) => {
                    let n = left.min(data.len() as u64);
                    self.state = if n == left {
                        State::DataCr
                    } else {
                        State::Data(left - n)
                    };
                    n as usize
                }
                _ => {
                    self.chunk_byte(data[0]);
                    1
                }
            };
            data = &data[used..];
        }
    }

    /// One byte of chunked framing outside chunk data (hyper's `ChunkedState`).
    fn chunk_byte(&mut self, b: u8) {
        self.state = match (self.state, b) {
            (State::Size { size, .. }, b) if b.is_ascii_hexdigit() => {
                let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                match size.checked_mul(16).and_then(|s| s.checked_add(digit)) {
                    Some(size) => State::Size { size, digits: true },
                    None => State::Stopped,
                }
            }
            (State::Size { digits: false, .. }, _) => State::Stopped,
            (State::Size { size, .. } | State::SizeLws { size }, b'\t' | b' ') => {
                State::SizeLws { size }
            }
            (State::Size { size, .. } | State::SizeLws { size }, b';') => State::Extension { size },
            (
                State::Size { size, .. } | State::SizeLws { size } | State::Extension { size },
                b'\r',
            ) => State::SizeLf { size },
            (State::Extension { .. }, b'\n') => State::Stopped,
            (State::Extension { size }, _) => State::Extension { size },
            (State::SizeLf { size: 0 }, b'\n') => State::EndCr,
            (State::SizeLf { size }, b'\n') => State::Data(size),
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::Size {
                size: 0,
                digits: false,
            },
            (State::EndCr, b'\r') => State::EndLf,
            (State::Trailer, b'\r') => State::TrailerLf,
            (State::EndCr | State::Trailer, _) => State::Trailer,
            (State::TrailerLf, b'\n') => State::EndCr,
            (State::EndLf, b'\n') => State::Head,
            _ => State::Stopped,
        };
    }

    /// Collects head bytes; returns how many of `data` belong to the head (all of them
    /// while it is incomplete).
    fn feed_head(&mut self, data: &[u8]) -> usize {
        if self.head.is_empty() && data.starts_with(b"PRI * HTTP/2.0") {
            self.stop();
            return data.len();
        }
        let take = data
            .len()
            .min(self.max_head.saturating_sub(self.head.len()));
        let before = self.head.len();
        self.head.extend_from_slice(&data[..take]);
        // A head can only have completed if a line ended in what just arrived.
        if !data[..take].contains(&b'\n') {
            if self.head.len() >= self.max_head {
                self.stop();
                return data.len();
            }
            return take;
        }
        if self.head.starts_with(b"PRI * HTTP/2.0") {
            self.stop();
            return data.len();
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&self.head) {
            Ok(httparse::Status::Complete(len)) => {
                let next = next_state(&request);
                let used = len - before;
                self.head.clear();
                match next {
                    Some((both, state)) => {
                        self.verdicts.push(both);
                        self.state = state;
                        used
                    }
                    None => {
                        self.stop();
                        data.len()
                    }
                }
            }
            Ok(httparse::Status::Partial) if self.head.len() < self.max_head => take,
            _ => {
                self.stop();
                data.len()
            }
        }
    }

    fn stop(&mut self) {
        self.state = State::Stopped;
        self.head = Vec::new();
    }
}

/// Whether the head carries both framing headers, and where its body ends as hyper sees
/// it; `None` when hyper would refuse the head (then scanning stops).
fn next_state(request: &httparse::Request<'_, '_>) -> Option<(bool, State)> {
    let mut length: Option<u64> = None;
    let mut cl = false;
    let mut te = false;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            te = true;
        } else if header.name.eq_ignore_ascii_case("content-length") {
            cl = true;
            let value = std::str::from_utf8(header.value).ok()?.trim();
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                // hyper refuses it unless a Transfer-Encoding decides the framing; keep
                // going only in that case.
                length = Some(u64::MAX);
                continue;
            }
            let value: u64 = value.parse().ok()?;
            match length {
                Some(prev) if prev != value && prev != u64::MAX => return None,
                _ => length = Some(value),
            }
        }
    }
    let state = if te {
        State::Size {
            size: 0,
            digits: false,
        }
    } else {
        match length {
            Some(u64::MAX) => return None,
            Some(0) | None => State::Head,
            Some(n) => State::Fixed(n),
        }
    };
    Some((cl && te, state))
}

/// The downstream stream, with every read run through a `Scan`. Writes pass through.
#[derive(Debug)]
pub struct HeadScanner<S> {
    inner: S,
    scan: Scan,
}

impl<S> HeadScanner<S> {
    pub fn new(inner: S, max_head: usize, verdicts: Arc<Verdicts>) -> Self {
        Self {
            inner,
            scan: Scan::new(max_head, verdicts),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadScanner<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result
            && !this.scan.stopped()
        {
            this.scan.feed(&buf.filled()[before..]);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadScanner<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(chunks: &[&[u8]]) -> (Vec<bool>, bool) {
        let verdicts = Arc::new(Verdicts::default());
        let mut scan = Scan::new(64 * 1024, verdicts.clone());
        for chunk in chunks {
            scan.feed(chunk);
        }
        let found = verdicts.lock().iter().copied().collect();
        (found, scan.stopped())
    }

    fn scan_whole(input: &[u8]) -> Vec<bool> {
        scan_all(&[input]).0
    }

    fn scan_bytewise(input: &[u8]) -> Vec<bool> {
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        scan_all(&chunks).0
    }

    const CL_TE: &[u8] =
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    const TE_CL: &[u8] =
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n";
    const CLEAN: &[u8] = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n";

    #[test]
    fn both_orders_are_flagged() {
        assert_eq!(scan_whole(CL_TE), [true]);
        assert_eq!(scan_whole(TE_CL), [true]);
        assert_eq!(scan_whole(CLEAN), [false]);
        let mut input = CL_TE.to_vec();
        input.extend_from_slice(CLEAN);
        assert_eq!(scan_whole(&input), [true, false]);
        let mut input = TE_CL.to_vec();
        input.extend_from_slice(CLEAN);
        assert_eq!(scan_bytewise(&input), [true, false]);
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers_then_next_head() {
        let input = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;name=value\r\nhello\r\n\
            1A ; x\r\nGET / HTTP/1.1\r\nXY: 12\r\n\r\n\r\n\
            0;last\r\nTrailer-One: a\r\nTrailer-Two: b\r\n\r\n\
            POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(scan_whole(input), [false, true]);
        assert_eq!(scan_bytewise(input), [false, true]);
    }

    #[test]
    fn fixed_length_body_that_looks_like_a_head_is_not_a_head() {
        let smuggled =
            "GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        let input = format!(
            "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{smuggled}GET /c HTTP/1.1\r\nHost: x\r\n\r\n",
            smuggled.len()
        );
        assert_eq!(scan_whole(input.as_bytes()), [false, false]);
        assert_eq!(scan_bytewise(input.as_bytes()), [false, false]);
    }

    #[test]
    fn pipelined_heads_in_one_read_and_split() {
        let mut input = Vec::new();
        for head in [CLEAN, CL_TE, CLEAN, TE_CL, CLEAN] {
            input.extend_from_slice(head);
        }
        let want = [false, true, false, true, false];
        assert_eq!(scan_whole(&input), want);
        assert_eq!(scan_bytewise(&input), want);
        let (mid_a, mid_b) = input.split_at(40);
        assert_eq!(scan_all(&[mid_a, mid_b]).0, want);
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let mut input = b"\r\n".to_vec();
        input.extend_from_slice(CL_TE);
        assert_eq!(scan_bytewise(&input), [true]);
    }

    #[test]
    fn http2_preface_stops_scanning() {
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend_from_slice(CL_TE);
        assert_eq!(scan_all(&[&input]), (vec![], true));
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(scan_all(&chunks), (vec![], true));
    }

    #[test]
    fn unparsable_or_oversized_heads_stop_scanning() {
        let (found, stopped) = scan_all(&[b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"]);
        assert!(found.is_empty() && stopped);
        let verdicts = Arc::new(Verdicts::default());
        let mut scan = Scan::new(32, verdicts.clone());
        scan.feed(b"GET / HTTP/1.1\r\nHost: a-rather-long-host-name\r\n\r\n");
        assert!(scan.stopped());
        assert!(!verdicts.take(), "nothing recorded means clean");
    }

    #[test]
    fn verdicts_are_taken_in_order() {
        let verdicts = Arc::new(Verdicts::default());
        let mut scan = Scan::new(1024, verdicts.clone());
        let mut input = CLEAN.to_vec();
        input.extend_from_slice(CL_TE);
        scan.feed(&input);
        assert!(!verdicts.take());
        assert!(verdicts.take());
        assert!(!verdicts.take());
    }
}
