//! Accepted HTTP connections (the API, MCP), TLS-terminated, for axum's server loop.
//!
//! Handshakes run in their own tasks with a time limit, so a client that
//! opens a socket and says nothing holds up no one else.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::http::{HeaderMap, header};
use axum::serve::{IncomingStream, Listener};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::listener::conn::Conn;
use crate::listener::tls::ServerTls;

/// Serve `router` on `listener` (TLS with `tls`) until `shutdown` turns
/// true; handlers see the client's address as [`Peer`].
pub async fn serve(
    listener: TcpListener,
    tls: Option<ServerTls>,
    router: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let incoming = Incoming::new(listener, tls)?;
    axum::serve(
        incoming,
        router.into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    })
    .await
}

/// The bearer token of a request, if it has one (the scheme in any case,
/// as RFC 7235 has it).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Time a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections ready for HTTP.
pub struct Incoming {
    ready: mpsc::Receiver<(Conn, SocketAddr)>,
    local: SocketAddr,
}

/// The client's address, as handlers see it.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, Incoming>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Incoming>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl Incoming {
    /// Accept on `listener`; with `tls`, only connections whose handshake
    /// completes are handed on.
    pub fn new(listener: TcpListener, tls: Option<ServerTls>) -> std::io::Result<Incoming> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    // The server stopped: let go of the port.
                    () = tx.closed() => return,
                };
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "API accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                crate::listener::prepare(&tcp);
                let tx = tx.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let conn = match tls {
                        None => Conn::Plain(tcp),
                        Some(tls) => {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(tcp))
                                .await
                            {
                                Ok(Ok(stream)) => Conn::Tls(Box::new(stream.into())),
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "API TLS handshake failed");
                                    return;
                                }
                                Err(_) => return,
                            }
                        }
                    };
                    let _ = tx.send((conn, peer)).await;
                });
            }
        });
        Ok(Incoming { ready, local })
    }
}

impl Listener for Incoming {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
