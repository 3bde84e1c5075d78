//! Loopback tests of the accept side. They bind `IP_TRANSPARENT` sockets and set
//! `SO_MARK`, which needs `CAP_NET_ADMIN` (the test environment runs as root).

use std::error::Error;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use ppp::v2::{Builder, Command, Protocol, Type, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::proxy_protocol::{ProxyHeader, read_header};
use super::*;

type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

const LONG: Duration = Duration::from_secs(10);
const SHORT: Duration = Duration::from_millis(200);
const PAYLOAD: &[u8] = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n";

fn sa(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad test address {s}: {e}"))
}

async fn pp_listener(timeout: Duration) -> TestResult<Listener> {
    Ok(bind(&ListenerConfig {
        addr: sa("127.0.0.1:0"),
        mode: ListenerMode::ProxyProtocol,
        proxy_header_timeout: timeout,
    })
    .await?)
}

fn v2_proxy(src: SocketAddr, dst: SocketAddr) -> TestResult<Vec<u8>> {
    Ok(
        Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (src, dst))
            .build()?,
    )
}

/// Connects to a PROXY protocol listener, sends `chunks` one write at a time with short
/// pauses, and returns the server's handshake result and the (still open) client.
async fn handshake_with(
    chunks: Vec<Vec<u8>>,
    timeout: Duration,
) -> TestResult<(Result<Accepted, ListenerError>, TcpStream)> {
    let listener = pp_listener(timeout).await?;
    let addr = listener.local_addr();
    let client = tokio::spawn(async move {
        let mut client = TcpStream::connect(addr).await?;
        client.set_nodelay(true)?;
        for chunk in chunks {
            client.write_all(&chunk).await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok::<_, std::io::Error>(client)
    });
    let (stream, peer) = listener.accept().await?;
    let result = listener.handshake(stream, peer).await;
    let client = client.await??;
    Ok((result, client))
}

/// Asserts the payload arrives intact after the header and that replies reach the client.
async fn assert_payload_intact(accepted: &mut Accepted, client: &mut TcpStream) -> TestResult {
    let mut got = vec![0u8; PAYLOAD.len()];
    accepted.stream.read_exact(&mut got).await?;
    assert_eq!(got, PAYLOAD);
    accepted
        .stream
        .write_all(b"HTTP/1.1 200 OK\r\n\r\n")
        .await?;
    let mut reply = [0u8; 19];
    client.read_exact(&mut reply).await?;
    assert_eq!(&reply, b"HTTP/1.1 200 OK\r\n\r\n");
    Ok(())
}

async fn expect_proxied(chunks: Vec<Vec<u8>>, src: SocketAddr, dst: SocketAddr) -> TestResult {
    let (result, mut client) = handshake_with(chunks, LONG).await?;
    let mut accepted = result?;
    assert_eq!(accepted.original_src, src);
    assert_eq!(accepted.original_dst, dst);
    assert_payload_intact(&mut accepted, &mut client).await
}

fn concat(a: &[u8], b: &[u8]) -> Vec<u8> {
    [a, b].concat()
}

#[tokio::test]
async fn v2_tcp4_same_write() -> TestResult {
    let (src, dst) = (sa("10.0.0.1:40000"), sa("10.96.0.10:8080"));
    let header = v2_proxy(src, dst)?;
    expect_proxied(vec![concat(&header, PAYLOAD)], src, dst).await
}

#[tokio::test]
async fn v2_tcp4_separate_writes() -> TestResult {
    let (src, dst) = (sa("10.0.0.1:40000"), sa("10.96.0.10:8080"));
    let header = v2_proxy(src, dst)?;
    let chunks = vec![
        header[..5].to_vec(),
        header[5..15].to_vec(),
        header[15..20].to_vec(),
        header[20..].to_vec(),
        PAYLOAD.to_vec(),
    ];
    expect_proxied(chunks, src, dst).await
}

#[tokio::test]
async fn v2_tcp6_same_write() -> TestResult {
    let (src, dst) = (sa("[fd00::1]:40000"), sa("[fd00:96::10]:443"));
    let header = v2_proxy(src, dst)?;
    expect_proxied(vec![concat(&header, PAYLOAD)], src, dst).await
}

#[tokio::test]
async fn v2_tcp6_separate_writes() -> TestResult {
    let (src, dst) = (sa("[fd00::1]:40000"), sa("[fd00:96::10]:443"));
    let header = v2_proxy(src, dst)?;
    let chunks = vec![
        header[..16].to_vec(),
        header[16..].to_vec(),
        PAYLOAD[..3].to_vec(),
        PAYLOAD[3..].to_vec(),
    ];
    expect_proxied(chunks, src, dst).await
}

#[tokio::test]
async fn v2_with_tlvs() -> TestResult {
    let (src, dst) = (sa("10.0.0.1:40000"), sa("10.96.0.10:8080"));
    let header =
        Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (src, dst))
            .write_tlv(Type::Authority, b"example.com")?
            .write_tlv(Type::NoOp, &[0; 100])?
            .build()?;
    expect_proxied(vec![concat(&header, PAYLOAD)], src, dst).await
}

#[tokio::test]
async fn v1_tcp4_same_write() -> TestResult {
    // The reads run past the v1 header; the payload must be replayed from the prefix.
    let header = b"PROXY TCP4 192.168.1.7 10.96.0.10 51234 80\r\n";
    expect_proxied(
        vec![concat(header, PAYLOAD)],
        sa("192.168.1.7:51234"),
        sa("10.96.0.10:80"),
    )
    .await
}

#[tokio::test]
async fn v1_tcp6_separate_writes() -> TestResult {
    let header = b"PROXY TCP6 fd00::7 fd00:96::10 51234 80\r\n";
    let chunks = vec![
        header[..4].to_vec(),
        header[4..20].to_vec(),
        header[20..header.len() - 1].to_vec(),
        header[header.len() - 1..].to_vec(),
        PAYLOAD.to_vec(),
    ];
    expect_proxied(chunks, sa("[fd00::7]:51234"), sa("[fd00:96::10]:80")).await
}

/// Hands out one byte per read, to drive every partial-header path.
struct OneByteAtATime<'a>(&'a [u8]);

impl AsyncRead for OneByteAtATime<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some((first, rest)) = self.0.split_first() {
            buf.put_slice(&[*first]);
            self.0 = rest;
        }
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn header_read_byte_by_byte_stops_at_header_end() -> TestResult {
    let peer = sa("127.0.0.1:1");
    let (src, dst) = (sa("10.0.0.1:40000"), sa("10.96.0.10:8080"));
    let v1 = b"PROXY TCP4 10.0.0.1 10.96.0.10 40000 8080\r\n".to_vec();
    for header in [v2_proxy(src, dst)?, v1] {
        let input = concat(&header, PAYLOAD);
        let mut reader = OneByteAtATime(&input);
        let (parsed, rest) = read_header(&mut reader, peer).await?;
        assert_eq!(parsed, ProxyHeader::Proxy { src, dst });
        assert!(rest.is_empty());
        assert_eq!(reader.0, PAYLOAD);
    }
    Ok(())
}

#[tokio::test]
async fn v2_local_uses_connection_addresses() -> TestResult {
    let header = Builder::with_addresses(
        Version::Two | Command::Local,
        Protocol::Unspecified,
        ppp::v2::Addresses::Unspecified,
    )
    .build()?;
    let (result, mut client) = handshake_with(vec![concat(&header, PAYLOAD)], LONG).await?;
    let mut accepted = result?;
    assert_eq!(accepted.original_src, client.local_addr()?);
    assert_eq!(accepted.original_dst, client.peer_addr()?);
    assert_payload_intact(&mut accepted, &mut client).await
}

async fn expect_error(chunks: Vec<Vec<u8>>, timeout: Duration) -> TestResult<ListenerError> {
    match handshake_with(chunks, timeout).await?.0 {
        Ok(accepted) => Err(format!("handshake unexpectedly succeeded: {accepted:?}").into()),
        Err(err) => Ok(err),
    }
}

#[tokio::test]
async fn garbage_is_malformed() -> TestResult {
    // Not a timeout: the first byte already rules out both signatures.
    let err = expect_error(vec![PAYLOAD.to_vec()], LONG).await?;
    assert!(
        matches!(err, ListenerError::ProxyHeaderMalformed { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("signature"), "{err}");
    Ok(())
}

#[tokio::test]
async fn v2_bad_version_is_malformed() -> TestResult {
    let mut header = v2_proxy(sa("10.0.0.1:1"), sa("10.0.0.2:2"))?;
    header[12] = 0x31;
    let err = expect_error(vec![header], LONG).await?;
    assert!(
        matches!(&err, ListenerError::ProxyHeaderMalformed { reason, .. } if reason.starts_with("v2")),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn v2_length_too_short_for_addresses_is_malformed() -> TestResult {
    let mut header = v2_proxy(sa("10.0.0.1:1"), sa("10.0.0.2:2"))?;
    header[15] = 4; // IPv4 needs 12 bytes of addresses.
    header.truncate(20);
    let err = expect_error(vec![header], LONG).await?;
    assert!(
        matches!(err, ListenerError::ProxyHeaderMalformed { .. }),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn v1_bad_address_is_malformed() -> TestResult {
    let err = expect_error(
        vec![b"PROXY TCP4 10.0.0.300 10.0.0.2 1 2\r\n".to_vec()],
        LONG,
    )
    .await?;
    assert!(
        matches!(&err, ListenerError::ProxyHeaderMalformed { reason, .. } if reason.starts_with("v1")),
        "{err:?}"
    );
    let err = expect_error(vec![b"PROXY TCP4 10.0.0.1\rX".to_vec()], LONG).await?;
    assert!(
        matches!(err, ListenerError::ProxyHeaderMalformed { .. }),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn unsupported_families_are_refused() -> TestResult {
    let unspec = Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        ppp::v2::Addresses::Unspecified,
    )
    .build()?;
    let unix = Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        ppp::v2::Unix::new([1; 108], [2; 108]),
    )
    .build()?;
    let udp = Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Datagram,
        (sa("10.0.0.1:53"), sa("10.0.0.2:53")),
    )
    .build()?;
    let v1_unknown = b"PROXY UNKNOWN\r\n".to_vec();
    for (header, family) in [
        (unspec, "v2 AF_UNSPEC"),
        (unix, "v2 AF_UNIX"),
        (udp, "v2 non-stream protocol"),
        (v1_unknown, "v1 UNKNOWN"),
    ] {
        let err = expect_error(vec![header], LONG).await?;
        assert!(
            matches!(&err, ListenerError::ProxyHeaderUnsupported { family: f, .. } if *f == family),
            "{family}: {err:?}"
        );
    }
    // A family nibble outside the specification is malformed, not unsupported.
    let mut bad_family = v2_proxy(sa("10.0.0.1:1"), sa("10.0.0.2:2"))?;
    bad_family[13] = 0x41;
    let err = expect_error(vec![bad_family], LONG).await?;
    assert!(
        matches!(err, ListenerError::ProxyHeaderMalformed { .. }),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn truncated_header_times_out() -> TestResult {
    let header = v2_proxy(sa("10.0.0.1:1"), sa("10.0.0.2:2"))?;
    for partial in [Vec::new(), header[..10].to_vec(), header[..20].to_vec()] {
        let err = expect_error(vec![partial], SHORT).await?;
        assert!(
            matches!(err, ListenerError::ProxyHeaderTimeout { timeout, .. } if timeout == SHORT),
            "{err:?}"
        );
    }
    let err = expect_error(vec![b"PROXY TCP4 10.0.0.1 ".to_vec()], SHORT).await?;
    assert!(
        matches!(err, ListenerError::ProxyHeaderTimeout { .. }),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn close_mid_header_is_reported() -> TestResult {
    let listener = pp_listener(LONG).await?;
    let mut client = TcpStream::connect(listener.local_addr()).await?;
    client.write_all(b"PROXY TCP4").await?;
    client.shutdown().await?;
    let (stream, peer) = listener.accept().await?;
    let err = match listener.handshake(stream, peer).await {
        Ok(accepted) => return Err(format!("unexpected success: {accepted:?}").into()),
        Err(err) => err,
    };
    assert!(
        matches!(err, ListenerError::ProxyHeaderClosed { received: 10, .. }),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn oversized_headers_are_refused() -> TestResult {
    // v2 announcing more than the cap: refused from the fixed part alone.
    let mut header = v2_proxy(sa("10.0.0.1:1"), sa("10.0.0.2:2"))?;
    header[14..16].copy_from_slice(&5000u16.to_be_bytes());
    header.truncate(16);
    let err = expect_error(vec![header], LONG).await?;
    assert!(
        matches!(
            err,
            ListenerError::ProxyHeaderTooLarge {
                version: "v2",
                len: 5016,
                max: MAX_V2_HEADER_LEN,
                ..
            }
        ),
        "{err:?}"
    );

    // Exactly at the cap is fine.
    let (src, dst) = (sa("10.0.0.1:40000"), sa("10.96.0.10:8080"));
    let base = v2_proxy(src, dst)?.len();
    let noop_len = MAX_V2_HEADER_LEN - base - 3;
    let header =
        Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (src, dst))
            .write_tlv(Type::NoOp, &vec![0; noop_len])?
            .build()?;
    assert_eq!(header.len(), MAX_V2_HEADER_LEN);
    expect_proxied(vec![concat(&header, PAYLOAD)], src, dst).await?;

    // v1 without CRLF within its 107 bytes.
    let long = concat(b"PROXY TCP4 ", &[b'1'; 200]);
    let err = expect_error(vec![long], LONG).await?;
    assert!(
        matches!(
            err,
            ListenerError::ProxyHeaderTooLarge {
                version: "v1",
                max: MAX_V1_HEADER_LEN,
                ..
            }
        ),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn slow_client_does_not_block_others() -> TestResult {
    const CLIENTS: u16 = 20;
    let listener = pp_listener(LONG).await?;
    let addr = listener.local_addr();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        listener
            .serve(move |mut accepted: Accepted| {
                let tx = tx.clone();
                async move {
                    let mut byte = [0u8; 1];
                    if accepted.stream.read_exact(&mut byte).await.is_ok() {
                        let _ = tx.send((accepted.original_src, byte[0]));
                    }
                }
            })
            .await;
    });

    // Connected first, never sends anything; a sequential handshake would wait LONG on it.
    let silent = TcpStream::connect(addr).await?;
    // A client that sends garbage is closed without affecting the others.
    let mut garbage = TcpStream::connect(addr).await?;
    garbage.write_all(b"garbage\r\n").await?;

    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 10_000 + i);
        let mut bytes = v2_proxy(src, sa("10.96.0.10:80"))?;
        bytes.push(u8::try_from(i)?);
        clients.push(tokio::spawn(async move {
            let mut client = TcpStream::connect(addr).await?;
            client.write_all(&bytes).await?;
            Ok::<_, std::io::Error>(client)
        }));
    }
    let mut open = Vec::new();
    for client in clients {
        open.push(client.await??);
    }
    let mut seen = Vec::new();
    for _ in 0..CLIENTS {
        let received = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await?;
        let (src, byte) = received.ok_or("server stopped")?;
        assert_eq!(src.port(), 10_000 + u16::from(byte));
        seen.push(byte);
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..CLIENTS)
            .map(u8::try_from)
            .collect::<Result<Vec<_>, _>>()?
    );

    // The garbage client was closed by the server.
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), garbage.read(&mut buf)).await?;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");

    server.abort();
    drop((silent, open));
    Ok(())
}

async fn transparent_roundtrip(bind_addr: SocketAddr) -> TestResult {
    let listener = bind(&ListenerConfig {
        addr: bind_addr,
        mode: ListenerMode::Transparent,
        proxy_header_timeout: SHORT,
    })
    .await?;
    assert_eq!(listener.mode(), ListenerMode::Transparent);
    let addr = listener.local_addr();
    let mut client = TcpStream::connect(addr).await?;
    // Data sent before the handshake is not consumed by it.
    client.write_all(PAYLOAD).await?;
    let (stream, peer) = listener.accept().await?;
    let mut accepted = listener.handshake(stream, peer).await?;
    assert_eq!(accepted.original_dst, addr);
    assert_eq!(accepted.original_src, client.local_addr()?);
    assert_payload_intact(&mut accepted, &mut client).await
}

#[tokio::test]
async fn transparent_bind_v4_reports_original_dst() -> TestResult {
    transparent_roundtrip(sa("127.0.0.1:0")).await
}

#[tokio::test]
async fn transparent_bind_v6_reports_original_dst() -> TestResult {
    // Skipped where the loopback has no IPv6 address.
    if std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_err() {
        return Ok(());
    }
    transparent_roundtrip(sa("[::1]:0")).await
}

#[tokio::test]
async fn bind_reports_address_and_step() -> TestResult {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?;
    let err = match bind(&ListenerConfig {
        addr,
        mode: ListenerMode::ProxyProtocol,
        proxy_header_timeout: SHORT,
    })
    .await
    {
        Ok(listener) => return Err(format!("bound twice: {listener:?}").into()),
        Err(err) => err,
    };
    assert!(
        matches!(err, ListenerError::ListenSocket { addr: a, option: "bind", .. } if a == addr),
        "{err:?}"
    );
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    Ok(())
}

#[tokio::test]
async fn connect_upstream_sets_mark() -> TestResult {
    let server = TcpListener::bind("127.0.0.1:0").await?;
    let dst = server.local_addr()?;
    let stream = connect_upstream(dst, Some(0x0a00), LONG).await?;
    assert_eq!(socket2::SockRef::from(&stream).mark()?, 0x0a00);
    assert_eq!(stream.peer_addr()?, dst);
    let (_accepted, peer) = server.accept().await?;
    assert_eq!(peer, stream.local_addr()?);
    Ok(())
}

// The mark is on the socket before it connects, so the SYN already carries it.
#[tokio::test]
async fn upstream_socket_is_marked_before_connecting() -> TestResult {
    for (dst, source) in [
        (sa("127.0.0.1:80"), Some(sa("127.0.0.3:0"))),
        (sa("[::1]:80"), None),
    ] {
        for mark in [0x300, 0x400] {
            let options = UpstreamOptions {
                mark: Some(mark),
                timeout: LONG,
                transparent_source: source,
            };
            let socket = upstream::upstream_socket(dst, &options)?;
            assert_eq!(socket2::SockRef::from(&socket).mark()?, mark, "{dst}");
            if let Some(source) = source {
                assert_eq!(socket.local_addr()?.ip(), source.ip());
            }
        }
    }
    let unmarked = upstream::upstream_socket(sa("127.0.0.1:80"), &UpstreamOptions::default())?;
    assert_eq!(socket2::SockRef::from(&unmarked).mark()?, 0);
    Ok(())
}

#[tokio::test]
async fn connect_upstream_refused_names_destination() -> TestResult {
    let dst = {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
        closed.local_addr()?
    };
    let err = match connect_upstream(dst, Some(1), LONG).await {
        Ok(stream) => return Err(format!("connected to closed port: {stream:?}").into()),
        Err(err) => err,
    };
    assert!(
        matches!(&err, ListenerError::Connect { dst: d, source }
            if *d == dst && source.kind() == std::io::ErrorKind::ConnectionRefused),
        "{err:?}"
    );
    assert!(err.to_string().contains(&dst.to_string()), "{err}");
    Ok(())
}

#[tokio::test]
async fn connect_upstream_from_transparent_source() -> TestResult {
    let server = TcpListener::bind("127.0.0.1:0").await?;
    let dst = server.local_addr()?;
    let source = sa("127.0.0.7:0");
    let options = UpstreamOptions {
        mark: Some(7),
        timeout: LONG,
        transparent_source: Some(source),
    };
    let stream = connect_upstream_with(dst, &options).await?;
    let (_accepted, peer) = server.accept().await?;
    assert_eq!(peer.ip(), source.ip());
    assert_eq!(peer, stream.local_addr()?);

    let mismatched = UpstreamOptions {
        transparent_source: Some(sa("[::1]:0")),
        ..options
    };
    let err = match connect_upstream_with(dst, &mismatched).await {
        Ok(stream) => return Err(format!("unexpected success: {stream:?}").into()),
        Err(err) => err,
    };
    assert!(
        matches!(err, ListenerError::UpstreamSocket { option: "bind", .. }),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn upstream_defaults_are_off() {
    let options = UpstreamOptions::default();
    assert_eq!(options.mark, None);
    assert_eq!(options.transparent_source, None);
}
