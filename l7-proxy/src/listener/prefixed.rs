//! A TCP stream that first replays bytes read ahead of the application (past a PROXY
//! header).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A [`TcpStream`] whose reads first return `prefix`, then continue with the socket.
/// Writes go straight to the socket.
#[derive(Debug)]
pub struct PrefixedStream {
    prefix: Bytes,
    inner: TcpStream,
}

impl PrefixedStream {
    /// Wraps `inner`; reads return `prefix` before anything from the socket.
    pub fn new(inner: TcpStream, prefix: Bytes) -> Self {
        Self { prefix, inner }
    }

    /// The bytes still to be replayed before reads reach the socket.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The socket (for options such as `TCP_NODELAY`, or its addresses).
    pub fn get_ref(&self) -> &TcpStream {
        &self.inner
    }

    /// The socket, mutably. Reading from it directly skips the unreplayed prefix.
    pub fn get_mut(&mut self) -> &mut TcpStream {
        &mut self.inner
    }

    /// The socket and the bytes not yet replayed.
    pub fn into_parts(self) -> (TcpStream, Bytes) {
        (self.inner, self.prefix)
    }
}

impl From<TcpStream> for PrefixedStream {
    fn from(inner: TcpStream) -> Self {
        Self::new(inner, Bytes::new())
    }
}

impl AsyncRead for PrefixedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PrefixedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
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

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn replays_prefix_then_reads_socket() -> Result<(), Box<dyn std::error::Error>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let mut client = TcpStream::connect(listener.local_addr()?).await?;
        let (server, _) = listener.accept().await?;
        let mut stream = PrefixedStream::new(server, Bytes::from_static(b"hello "));
        client.write_all(b"world").await?;
        client.shutdown().await?;

        // A small buffer: the prefix is handed out in pieces.
        let mut small = [0u8; 4];
        let n = stream.read(&mut small).await?;
        assert_eq!(&small[..n], b"hell");
        assert_eq!(stream.prefix(), b"o ");
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await?;
        assert_eq!(rest, b"o world");

        stream.write_all(b"back").await?;
        stream.shutdown().await?;
        let mut echoed = Vec::new();
        client.read_to_end(&mut echoed).await?;
        assert_eq!(echoed, b"back");
        Ok(())
    }
}
