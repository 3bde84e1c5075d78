//! Every socket the proxy opens, with the options that make transparent mode work:
//!
//! - listeners (UDP and TCP) bound with `IP_TRANSPARENT`/`IPV6_TRANSPARENT`, so the kernel
//!   may hand them flows addressed elsewhere (`bpf_sk_assign`, TPROXY). A UDP listener also
//!   asks for the original destination of each datagram (`IP_RECVORIGDSTADDR`), read with
//!   `recvmsg` ([`recv_from_with_dst`]); a TCP connection's is its local address;
//! - upstream sockets, marked (`SO_MARK`) so the datapath does not redirect them back to
//!   us, and with `--upstream-source original` bound to the client's IP (port 0), so the
//!   server and its policy see the client;
//! - reply sockets (transparent UDP): bound to the server's address and port and never
//!   connected, so an answer reaches the client from the address it asked. The datapath
//!   steers only to connected UDP sockets, so these never steal the client's traffic.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

/// `listen(2)` backlog of TCP listeners.
const LISTEN_BACKLOG: i32 = 1024;

/// A socket option or call that failed, naming the socket's purpose and address.
#[derive(Debug, thiserror::Error)]
#[error("{purpose} socket {addr}: {what}: {source}")]
pub struct SocketError {
    pub purpose: &'static str,
    pub addr: SocketAddr,
    pub what: &'static str,
    #[source]
    pub source: io::Error,
}

impl SocketError {
    /// The underlying error kind (e.g. to tell "IPv6 unavailable" apart).
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}

struct Builder {
    purpose: &'static str,
    addr: SocketAddr,
}

impl Builder {
    fn fail(&self, what: &'static str) -> impl FnOnce(io::Error) -> SocketError + use<> {
        let (purpose, addr) = (self.purpose, self.addr);
        move |source| SocketError {
            purpose,
            addr,
            what,
            source,
        }
    }

    fn socket(&self, ty: Type, protocol: Protocol) -> Result<Socket, SocketError> {
        Socket::new(Domain::for_address(self.addr), ty, Some(protocol)).map_err(self.fail("socket"))
    }

    fn transparent(&self, socket: &Socket, family: SocketAddr) -> Result<(), SocketError> {
        match family {
            SocketAddr::V4(_) => socket
                .set_ip_transparent_v4(true)
                .map_err(self.fail("IP_TRANSPARENT")),
            SocketAddr::V6(_) => socket
                .set_ip_transparent_v6(true)
                .map_err(self.fail("IPV6_TRANSPARENT")),
        }
    }

    /// A listening socket before its kind's own options: IPv6-only for IPv6 (the IPv4
    /// listener is separate), address reuse, and `IP_TRANSPARENT` when asked.
    fn listener(
        &self,
        ty: Type,
        protocol: Protocol,
        transparent: bool,
    ) -> Result<Socket, SocketError> {
        let socket = self.socket(ty, protocol)?;
        if self.addr.is_ipv6() {
            socket.set_only_v6(true).map_err(self.fail("IPV6_V6ONLY"))?;
        }
        socket
            .set_reuse_address(true)
            .map_err(self.fail("SO_REUSEADDR"))?;
        if transparent {
            self.transparent(&socket, self.addr)?;
        }
        Ok(socket)
    }

    fn mark(&self, socket: &Socket, mark: Option<u32>) -> Result<(), SocketError> {
        match mark {
            Some(mark) if mark != 0 => socket.set_mark(mark).map_err(self.fail("SO_MARK")),
            _ => Ok(()),
        }
    }
}

/// Whether upstream sockets can carry `mark` (`SO_MARK` needs `CAP_NET_ADMIN`).
pub fn probe_mark(mark: u32) -> Result<(), SocketError> {
    let b = Builder {
        purpose: "mark probe",
        addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
    };
    let socket = b.socket(Type::DGRAM, Protocol::UDP)?;
    b.mark(&socket, Some(mark))
}

/// A UDP listener on `addr`; `transparent` adds `IP_TRANSPARENT` and the original
/// destination control messages. IPv6 listeners are IPv6-only (the IPv4 one is separate).
pub fn udp_listener(addr: SocketAddr, transparent: bool) -> Result<UdpSocket, SocketError> {
    let b = Builder {
        purpose: "UDP listener",
        addr,
    };
    let socket = b.listener(Type::DGRAM, Protocol::UDP, transparent)?;
    if transparent {
        let set = match addr {
            SocketAddr::V4(_) => setsockopt(&socket, sockopt::Ipv4OrigDstAddr, &true),
            SocketAddr::V6(_) => setsockopt(&socket, sockopt::Ipv6OrigDstAddr, &true),
        };
        set.map_err(io::Error::from)
            .map_err(b.fail("IP_RECVORIGDSTADDR"))?;
    }
    // Bursts of queries must not be dropped by the kernel before the loop reads them.
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.set_nonblocking(true).map_err(b.fail("O_NONBLOCK"))?;
    socket.bind(&addr.into()).map_err(b.fail("bind"))?;
    UdpSocket::from_std(socket.into()).map_err(b.fail("tokio registration"))
}

/// A TCP listener on `addr` (IPv6-only for IPv6), transparent when asked.
pub fn tcp_listener(addr: SocketAddr, transparent: bool) -> Result<TcpListener, SocketError> {
    let b = Builder {
        purpose: "TCP listener",
        addr,
    };
    let socket = b.listener(Type::STREAM, Protocol::TCP, transparent)?;
    socket.set_nonblocking(true).map_err(b.fail("O_NONBLOCK"))?;
    socket.bind(&addr.into()).map_err(b.fail("bind"))?;
    socket.listen(LISTEN_BACKLOG).map_err(b.fail("listen"))?;
    TcpListener::from_std(socket.into()).map_err(b.fail("tokio registration"))
}

/// Receives one datagram: its length, its source, and its original destination when the
/// kernel reported one (transparent listeners).
pub async fn recv_from_with_dst(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<SocketAddr>)> {
    loop {
        socket.readable().await?;
        match socket.try_io(Interest::READABLE, || recv_once(socket, buf)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

fn recv_once(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<SocketAddr>)> {
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(nix::libc::sockaddr_in6);
    let msg = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    let source = msg
        .address
        .as_ref()
        .and_then(storage_to_std)
        .ok_or_else(|| io::Error::other("datagram without a source address"))?;
    let mut original = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::Ipv4OrigDstAddr(sa) => {
                    original = Some(SocketAddr::V4(SocketAddrV4::new(
                        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
                        u16::from_be(sa.sin_port),
                    )));
                }
                ControlMessageOwned::Ipv6OrigDstAddr(sa) => {
                    original = Some(SocketAddr::V6(SocketAddrV6::new(
                        Ipv6Addr::from(sa.sin6_addr.s6_addr),
                        u16::from_be(sa.sin6_port),
                        sa.sin6_flowinfo,
                        sa.sin6_scope_id,
                    )));
                }
                _ => {}
            }
        }
    }
    Ok((msg.bytes, source, original))
}

fn storage_to_std(storage: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = storage.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    storage
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

/// A UDP socket towards `server`: marked, bound to `source`:0 with `IP_TRANSPARENT` when
/// given (else to the node's address), connected.
pub fn upstream_udp(
    source: Option<IpAddr>,
    server: SocketAddr,
    mark: Option<u32>,
) -> Result<UdpSocket, SocketError> {
    let b = Builder {
        purpose: "upstream UDP",
        addr: server,
    };
    let socket = b.socket(Type::DGRAM, Protocol::UDP)?;
    b.mark(&socket, mark)?;
    if let Some(source) = source {
        bind_transparent_source(&b, &socket, source, server)?;
    }
    socket.set_nonblocking(true).map_err(b.fail("O_NONBLOCK"))?;
    socket.connect(&server.into()).map_err(b.fail("connect"))?;
    UdpSocket::from_std(socket.into()).map_err(b.fail("tokio registration"))
}

/// A TCP connection to `server`, marked, from `source`:0 (transparent) when given.
pub async fn upstream_tcp(
    source: Option<IpAddr>,
    server: SocketAddr,
    mark: Option<u32>,
    timeout: Duration,
) -> Result<TcpStream, SocketError> {
    let b = Builder {
        purpose: "upstream TCP",
        addr: server,
    };
    let socket = b.socket(Type::STREAM, Protocol::TCP)?;
    b.mark(&socket, mark)?;
    if let Some(source) = source {
        bind_transparent_source(&b, &socket, source, server)?;
    }
    socket
        .set_tcp_nodelay(true)
        .map_err(b.fail("TCP_NODELAY"))?;
    socket.set_nonblocking(true).map_err(b.fail("O_NONBLOCK"))?;
    let socket = TcpSocket::from_std_stream(socket.into());
    match tokio::time::timeout(timeout, socket.connect(server)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(b.fail("connect")(e)),
        Err(_) => Err(b.fail("connect")(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no connection within {timeout:?}"),
        ))),
    }
}

fn bind_transparent_source(
    b: &Builder,
    socket: &Socket,
    source: IpAddr,
    server: SocketAddr,
) -> Result<(), SocketError> {
    let source = SocketAddr::new(source, 0);
    if source.is_ipv4() != server.is_ipv4() {
        return Err(b.fail("bind")(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("client address {source} is not in the server's address family"),
        )));
    }
    b.transparent(socket, server)?;
    socket.bind(&source.into()).map_err(b.fail("bind"))
}

/// An unconnected UDP socket bound to `server` (the address the client asked) with
/// `IP_TRANSPARENT` and `SO_REUSEADDR`, to send answers from it.
pub fn reply_socket(server: SocketAddr) -> Result<UdpSocket, SocketError> {
    let b = Builder {
        purpose: "UDP reply",
        addr: server,
    };
    let socket = b.socket(Type::DGRAM, Protocol::UDP)?;
    if server.is_ipv6() {
        socket.set_only_v6(true).map_err(b.fail("IPV6_V6ONLY"))?;
    }
    b.transparent(&socket, server)?;
    socket
        .set_reuse_address(true)
        .map_err(b.fail("SO_REUSEADDR"))?;
    // Nothing is read from it: keep what the kernel might queue small.
    let _ = socket.set_recv_buffer_size(4096);
    socket.set_nonblocking(true).map_err(b.fail("O_NONBLOCK"))?;
    socket.bind(&server.into()).map_err(b.fail("bind"))?;
    UdpSocket::from_std(socket.into()).map_err(b.fail("tokio registration"))
}
