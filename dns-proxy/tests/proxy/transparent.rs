//! Transparent mode's own plumbing, where this machine allows it (root: IP_TRANSPARENT):
//! the original destination of a UDP datagram comes from IP_RECVORIGDSTADDR, a TCP
//! connection's from its local address, and UDP answers leave from the address the client
//! asked. Without a redirect (no datapath here) the client asks the proxy's own address,
//! which no DNS rule covers: the answer is REFUSED either way.

use std::io::ErrorKind;
use std::net::SocketAddr;

use dns_proxy::app::{AppError, Mode};
use hickory_proto::op::{Message, ResponseCode};
use tokio::net::UdpSocket;

use crate::harness::{CLIENT_IP, Proxy, WAIT, query};

async fn transparent_proxy() -> Option<Proxy> {
    match Proxy::try_start(|c| c.mode = Mode::Transparent { port: 0 }).await {
        Ok(proxy) => Some(proxy),
        Err(AppError::Socket(e)) if e.kind() == ErrorKind::PermissionDenied => {
            eprintln!("skipped: transparent sockets need CAP_NET_ADMIN ({e})");
            None
        }
        Err(e) => panic!("transparent proxy: {e}"),
    }
}

#[tokio::test]
async fn udp_answers_come_from_the_original_destination() {
    let Some(proxy) = transparent_proxy().await else {
        return;
    };
    let port = proxy.running.udp[0].port();
    let asked = SocketAddr::from((CLIENT_IP, port));
    let client = UdpSocket::bind((CLIENT_IP, 0)).await.expect("client");
    client
        .send_to(&query(7, "www.test."), asked)
        .await
        .expect("send");
    let mut buf = vec![0u8; 4096];
    let (n, from) = tokio::time::timeout(WAIT, client.recv_from(&mut buf))
        .await
        .expect("an answer in time")
        .expect("recv");
    assert_eq!(from, asked, "the answer leaves from the address asked");
    let msg = Message::from_vec(&buf[..n]).expect("parses");
    assert_eq!(msg.metadata.id, 7);
    assert_eq!(msg.metadata.response_code, ResponseCode::Refused);
    assert_eq!(
        proxy
            .metric("dns_proxy_queries_total{outcome=\"denied\",transport=\"UDP\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn tcp_original_destination_is_the_local_address() {
    let Some(proxy) = transparent_proxy().await else {
        return;
    };
    let answers = crate::tcp::exchange(&proxy, &[query(8, "www.test.")]).await;
    let msg = Message::from_vec(&answers[0]).expect("parses");
    assert_eq!(msg.metadata.response_code, ResponseCode::Refused);
    assert_eq!(
        proxy
            .metric("dns_proxy_queries_total{outcome=\"denied\",transport=\"TCP\"}")
            .await,
        1.0
    );
}
