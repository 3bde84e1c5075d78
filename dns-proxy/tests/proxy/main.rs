//! The proxy end to end in forward mode: real sockets on 127.0.0.0/8, a fake agent serving
//! the policy stream, a tiny upstream DNS server. No root needed.

mod agent;
mod harness;
mod tcp;
mod transparent;
mod udp;
