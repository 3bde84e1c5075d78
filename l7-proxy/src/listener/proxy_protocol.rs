//! Reading a PROXY protocol header (v1 text or v2 binary) off the front of a stream.
//!
//! The header is read with bounded reads: a v2 header is read exactly (the 16-byte fixed
//! part, then the announced length), so nothing past it is consumed. A v1 header has no
//! length field, so the reads may run past its `\r\n`; those bytes are handed back to the
//! caller to be replayed. Either way no more than the cap is ever buffered.

use std::net::{IpAddr, SocketAddr};

use ppp::{v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::ListenerError;

/// The v2 signature (first 12 bytes).
const V2_SIGNATURE: &[u8] = v2::PROTOCOL_PREFIX;
/// The v2 fixed part: signature, version/command, family/protocol, 16-bit length.
const V2_FIXED_LEN: usize = 16;
/// The v1 header starts with `PROXY` and a space.
const V1_SIGNATURE: &[u8] = b"PROXY ";

/// Longest v1 header the specification allows, `\r\n` included.
pub const MAX_V1_HEADER_LEN: usize = 107;
/// Longest v2 header (fixed part, addresses and TLVs) we accept. The format allows
/// 16 + 65535 bytes; anything beyond a page is refused.
pub const MAX_V2_HEADER_LEN: usize = 4096;

/// What a valid header tells about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyHeader {
    /// v2 LOCAL: the sender speaks for itself; use the connection's own addresses.
    Local,
    /// The original source and destination of the proxied connection.
    Proxy { src: SocketAddr, dst: SocketAddr },
}

#[derive(Debug, Clone, Copy)]
enum Version {
    V1,
    V2,
}

/// Reads a header from `reader`. Returns it and any bytes read past it.
pub(crate) async fn read_header<R>(
    reader: &mut R,
    peer: SocketAddr,
) -> Result<(ProxyHeader, Vec<u8>), ListenerError>
where
    R: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(V2_FIXED_LEN);
    let version = loop {
        if let Some(version) = classify(&buf, peer)? {
            break version;
        }
        read_more(reader, &mut buf, V2_FIXED_LEN, peer).await?;
    };
    match version {
        Version::V2 => read_v2(reader, buf, peer).await,
        Version::V1 => read_v1(reader, buf, peer).await,
    }
}

/// Decides the version from the first bytes, `None` if there are too few to tell.
fn classify(buf: &[u8], peer: SocketAddr) -> Result<Option<Version>, ListenerError> {
    for (signature, version) in [(V2_SIGNATURE, Version::V2), (V1_SIGNATURE, Version::V1)] {
        let n = buf.len().min(signature.len());
        if buf[..n] == signature[..n] {
            return Ok((buf.len() >= signature.len()).then_some(version));
        }
    }
    Err(malformed(
        peer,
        "does not start with a PROXY v1 or v2 signature".to_owned(),
    ))
}

async fn read_v2<R>(
    reader: &mut R,
    mut buf: Vec<u8>,
    peer: SocketAddr,
) -> Result<(ProxyHeader, Vec<u8>), ListenerError>
where
    R: AsyncRead + Unpin,
{
    while buf.len() < V2_FIXED_LEN {
        read_more(reader, &mut buf, V2_FIXED_LEN, peer).await?;
    }
    let total = V2_FIXED_LEN + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if total > MAX_V2_HEADER_LEN {
        return Err(ListenerError::ProxyHeaderTooLarge {
            peer,
            version: "v2",
            len: total,
            max: MAX_V2_HEADER_LEN,
        });
    }
    while buf.len() < total {
        read_more(reader, &mut buf, total, peer).await?;
    }
    let header =
        v2::Header::try_from(&buf[..total]).map_err(|e| malformed(peer, format!("v2: {e}")))?;
    let parsed = match header.command {
        v2::Command::Local => ProxyHeader::Local,
        v2::Command::Proxy => {
            if header.protocol != v2::Protocol::Stream {
                return Err(unsupported(peer, "v2 non-stream protocol"));
            }
            match header.addresses {
                v2::Addresses::IPv4(a) => ProxyHeader::Proxy {
                    src: SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
                    dst: SocketAddr::new(IpAddr::V4(a.destination_address), a.destination_port),
                },
                v2::Addresses::IPv6(a) => ProxyHeader::Proxy {
                    src: SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
                    dst: SocketAddr::new(IpAddr::V6(a.destination_address), a.destination_port),
                },
                v2::Addresses::Unix(_) => return Err(unsupported(peer, "v2 AF_UNIX")),
                v2::Addresses::Unspecified => return Err(unsupported(peer, "v2 AF_UNSPEC")),
            }
        }
    };
    // Reads never went past `total`.
    Ok((parsed, Vec::new()))
}

async fn read_v1<R>(
    reader: &mut R,
    mut buf: Vec<u8>,
    peer: SocketAddr,
) -> Result<(ProxyHeader, Vec<u8>), ListenerError>
where
    R: AsyncRead + Unpin,
{
    let end = loop {
        if let Some(cr) = buf.iter().position(|&b| b == b'\r') {
            match buf.get(cr + 1) {
                Some(b'\n') => break cr + 2,
                Some(_) => {
                    return Err(malformed(
                        peer,
                        "v1: carriage return not followed by line feed".to_owned(),
                    ));
                }
                // The `\n` may still be on its way.
                None if cr + 2 <= MAX_V1_HEADER_LEN => {}
                None => return Err(v1_too_large(peer, cr + 2)),
            }
        } else if buf.len() >= MAX_V1_HEADER_LEN {
            return Err(v1_too_large(peer, buf.len() + 1));
        }
        read_more(reader, &mut buf, MAX_V1_HEADER_LEN, peer).await?;
    };
    let header =
        v1::Header::try_from(&buf[..end]).map_err(|e| malformed(peer, format!("v1: {e}")))?;
    let parsed = match header.addresses {
        v1::Addresses::Tcp4(a) => ProxyHeader::Proxy {
            src: SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
            dst: SocketAddr::new(IpAddr::V4(a.destination_address), a.destination_port),
        },
        v1::Addresses::Tcp6(a) => ProxyHeader::Proxy {
            src: SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
            dst: SocketAddr::new(IpAddr::V6(a.destination_address), a.destination_port),
        },
        v1::Addresses::Unknown => return Err(unsupported(peer, "v1 UNKNOWN")),
    };
    let rest = buf.split_off(end);
    Ok((parsed, rest))
}

/// Appends one read's worth of bytes to `buf`, never growing it beyond `limit`.
async fn read_more<R>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    limit: usize,
    peer: SocketAddr,
) -> Result<(), ListenerError>
where
    R: AsyncRead + Unpin,
{
    let start = buf.len();
    debug_assert!(start < limit);
    buf.resize(limit, 0);
    let result = reader.read(&mut buf[start..]).await;
    let n = *result.as_ref().unwrap_or(&0);
    buf.truncate(start + n);
    match result {
        Err(source) => Err(ListenerError::ProxyHeaderIo { peer, source }),
        Ok(0) => Err(ListenerError::ProxyHeaderClosed {
            peer,
            received: start,
        }),
        Ok(_) => Ok(()),
    }
}

fn malformed(peer: SocketAddr, reason: String) -> ListenerError {
    ListenerError::ProxyHeaderMalformed { peer, reason }
}

fn unsupported(peer: SocketAddr, family: &'static str) -> ListenerError {
    ListenerError::ProxyHeaderUnsupported { peer, family }
}

fn v1_too_large(peer: SocketAddr, len: usize) -> ListenerError {
    ListenerError::ProxyHeaderTooLarge {
        peer,
        version: "v1",
        len,
        max: MAX_V1_HEADER_LEN,
    }
}
