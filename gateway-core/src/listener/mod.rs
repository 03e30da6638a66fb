//! Listener: accept TCP connections and hold the client-facing TLS setup.
//!
//! The listener knows nothing of PostgreSQL or MCP: it hands each accepted
//! socket to the protocol adapter together with the [`tls::ServerTls`] it
//! may use when the client asks for encryption; [`http`] does the same for
//! the HTTP listeners (the API, MCP).

pub mod conn;
pub mod http;
pub mod tls;

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

/// Bind the configured address. Port 0 picks a free port; the result's
/// `local_addr` tells which.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Prepare an accepted socket: no Nagle delay, since the protocol is
/// request/response and every message is flushed deliberately.
pub fn prepare(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
}
