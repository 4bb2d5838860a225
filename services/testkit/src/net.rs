//! Free ports on 127.0.0.1, and waiting until a port accepts connections.
//!
//! Prefer [`free_listener`] (the socket stays bound, so nothing else can take the port) and hand the listener
//! to the server under test. [`free_port`] gives the port back for servers in other processes, whose port must
//! be written into their config before they start; such a server must fail loudly if its bind fails.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::wait::{eventually, eventually_async};

/// A listener bound to a free port on 127.0.0.1. Panics if none can be bound.
pub fn free_listener() -> TcpListener {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("cannot bind a free TCP port on 127.0.0.1: {e}"))
}

/// A free port on 127.0.0.1, for a server in another process (the port is free when this returns).
pub fn free_port() -> u16 {
    let l = free_listener();
    l.local_addr()
        .unwrap_or_else(|e| panic!("local address of a bound listener: {e}"))
        .port()
}

/// 127.0.0.1:`port`.
pub fn localhost(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

/// Blocks until `addr` accepts a TCP connection; panics after `timeout`.
#[track_caller]
pub fn wait_accepting(addr: SocketAddr, timeout: Duration) {
    eventually(timeout, &format!("{addr} to accept connections"), || {
        TcpStream::connect(addr)
    });
}

/// [`wait_accepting`] for async tests.
pub async fn wait_accepting_async(addr: SocketAddr, timeout: Duration) {
    eventually_async(
        timeout,
        &format!("{addr} to accept connections"),
        || async move { tokio::net::TcpStream::connect(addr).await },
    )
    .await;
}
