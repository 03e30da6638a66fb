//! The first packets of a client connection: SSLRequest (TLS), GSSENCRequest
//! (declined), CancelRequest, and the StartupMessage with its protocol
//! version check.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::PgError;
use super::frame::Body;
use super::messages;
use crate::listener::conn::Conn;
use crate::listener::tls::ServerTls;

const SSL_REQUEST: i32 = 80877103;
const GSSENC_REQUEST: i32 = 80877104;
const CANCEL_REQUEST: i32 = 80877102;
const PROTOCOL_3_0: i32 = 3 << 16;
/// PostgreSQL's own limit on startup packets.
const MAX_STARTUP_PACKET: usize = 10_000;

/// What the client wants.
pub enum Opening {
    /// A session with these startup parameters.
    Session {
        /// The connection, TLS if negotiated.
        conn: Conn,
        /// Startup parameters in the order sent.
        parameters: Vec<(String, String)>,
    },
    /// Cancel the running statement of the session with this key.
    Cancel {
        /// Process id from BackendKeyData.
        pid: i32,
        /// Secret key from BackendKeyData.
        key: i32,
    },
}

/// A refusal during startup, with the connection to send it on (if still usable).
pub struct StartupFailure {
    /// Where to send the error, if anywhere.
    pub conn: Option<Conn>,
    /// The error.
    pub error: PgError,
}

impl StartupFailure {
    fn on(conn: Conn, error: PgError) -> Self {
        Self {
            conn: Some(conn),
            error,
        }
    }
}

/// Read packets until the client sends a StartupMessage or a CancelRequest.
pub async fn negotiate(
    tcp: TcpStream,
    tls: Option<&ServerTls>,
    allow_plaintext: bool,
) -> Result<Opening, StartupFailure> {
    let mut conn = Conn::Plain(tcp);
    loop {
        let packet = match read_packet(&mut conn).await {
            Ok(p) => p,
            Err(error) => return Err(StartupFailure::on(conn, error)),
        };
        let mut body = Body::new(&packet);
        let code = body.i32().unwrap_or(0);
        match code {
            SSL_REQUEST if conn.is_tls() => {
                return Err(StartupFailure::on(
                    conn,
                    PgError::fatal("08P01", "SSLRequest received twice"),
                ));
            }
            SSL_REQUEST => {
                let Conn::Plain(mut tcp) = conn else {
                    unreachable!("checked above")
                };
                let Some(tls) = tls else {
                    if tcp.write_all(b"N").await.is_err() {
                        return Err(StartupFailure {
                            conn: None,
                            error: closed(),
                        });
                    }
                    conn = Conn::Plain(tcp);
                    continue;
                };
                if tcp.write_all(b"S").await.is_err() {
                    return Err(StartupFailure {
                        conn: None,
                        error: closed(),
                    });
                }
                match tls.acceptor.accept(tcp).await {
                    Ok(stream) => {
                        conn = Conn::Tls(Box::new(tokio_rustls::TlsStream::Server(stream)))
                    }
                    Err(e) => {
                        return Err(StartupFailure {
                            conn: None,
                            error: PgError::fatal("08P01", format!("TLS handshake failed: {e}")),
                        });
                    }
                }
            }
            GSSENC_REQUEST => {
                // GSSAPI encryption is not offered; libpq then falls back to TLS or plain.
                if conn.write_all(b"N").await.is_err() {
                    return Err(StartupFailure {
                        conn: None,
                        error: closed(),
                    });
                }
            }
            CANCEL_REQUEST => {
                let (Some(pid), Some(key)) = (body.i32(), body.i32()) else {
                    return Err(StartupFailure::on(
                        conn,
                        PgError::fatal("08P01", "malformed CancelRequest"),
                    ));
                };
                return Ok(Opening::Cancel { pid, key });
            }
            version if version >> 16 == 3 => {
                let parameters = match parse_parameters(body.rest()) {
                    Ok(p) => p,
                    Err(error) => return Err(StartupFailure::on(conn, error)),
                };
                if version != PROTOCOL_3_0 {
                    // A newer 3.x minor: answer with the version we speak and the
                    // protocol options (`_pq_.*`) we do not know, as PostgreSQL does.
                    let unsupported: Vec<String> = parameters
                        .iter()
                        .filter(|(k, _)| k.starts_with("_pq_."))
                        .map(|(k, _)| k.clone())
                        .collect();
                    let frame = messages::negotiate_protocol_version(unsupported);
                    if conn.write_all(frame.raw()).await.is_err() {
                        return Err(StartupFailure {
                            conn: None,
                            error: closed(),
                        });
                    }
                }
                if !conn.is_tls() && !allow_plaintext {
                    return Err(StartupFailure::on(
                        conn,
                        PgError::fatal("28000", "this gateway requires TLS: the access token is sent as the password")
                            .with_hint("connect with sslmode=require (or verify-full with the gateway's certificate)"),
                    ));
                }
                let parameters = parameters
                    .into_iter()
                    .filter(|(k, _)| !k.starts_with("_pq_."))
                    .collect();
                return Ok(Opening::Session { conn, parameters });
            }
            other => {
                return Err(StartupFailure::on(
                    conn,
                    PgError::fatal(
                        "0A000",
                        format!(
                            "unsupported frontend protocol {}.{}: the gateway supports 3.0",
                            (other >> 16) as u16,
                            (other & 0xffff) as u16
                        ),
                    ),
                ));
            }
        }
    }
}

fn closed() -> PgError {
    PgError::fatal("08006", "client closed the connection during startup")
}

/// A length-prefixed startup-phase packet (no type byte), body only.
async fn read_packet(conn: &mut Conn) -> Result<BytesMut, PgError> {
    let len = conn.read_i32().await.map_err(|_| closed())?;
    if len < 8 || len as usize > MAX_STARTUP_PACKET {
        return Err(PgError::fatal(
            "08P01",
            format!("invalid length of startup packet: {len}"),
        ));
    }
    let mut body = BytesMut::zeroed(len as usize - 4);
    conn.read_exact(&mut body).await.map_err(|_| closed())?;
    Ok(body)
}

fn parse_parameters(bytes: &[u8]) -> Result<Vec<(String, String)>, PgError> {
    let invalid = || {
        PgError::fatal(
            "08P01",
            "invalid startup packet layout: expected a terminator as the last byte",
        )
    };
    let mut body = Body::new(bytes);
    let mut parameters = Vec::new();
    loop {
        let name = body.cstr().ok_or_else(invalid)?;
        if name.is_empty() {
            break;
        }
        let value = body.cstr().ok_or_else(invalid)?;
        let text = |b: &[u8]| {
            String::from_utf8(b.to_vec())
                .map_err(|_| PgError::fatal("08P01", "startup parameters must be valid UTF-8"))
        };
        parameters.push((text(name)?, text(value)?));
    }
    if !body.rest().is_empty() {
        return Err(invalid());
    }
    Ok(parameters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_parameters_and_refuses_garbage() {
        let p = parse_parameters(b"user\0alice\0database\0payments\0\0").unwrap();
        assert_eq!(
            p,
            vec![
                ("user".into(), "alice".into()),
                ("database".into(), "payments".into())
            ]
        );
        assert!(
            parse_parameters(b"user\0alice\0").is_err(),
            "missing terminator"
        );
        assert!(parse_parameters(b"user\0alice").is_err());
        assert!(parse_parameters(b"user\0alice\0\0extra").is_err());
    }
}
