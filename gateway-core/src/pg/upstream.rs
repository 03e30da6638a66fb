//! The gateway as a PostgreSQL client: dial an upstream, negotiate TLS, log
//! in with the credential only the gateway holds (SCRAM-SHA-256, with
//! channel binding over TLS when the server offers it; MD5 and cleartext for
//! old servers) and collect the session's parameters and backend key.

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::PgError;
use super::frame::{Body, Frame};
use crate::listener::conn::Conn;
use crate::upstream::{CredentialError, Upstream};

/// Why the gateway could not reach or log in to an upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed.
    #[error("cannot reach {addr}: {source}")]
    Unreachable {
        /// host:port
        addr: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("no answer from {0} within the connect timeout")]
    Timeout(String),
    /// The server refused TLS.
    #[error("{0} does not accept TLS (the connection's tls mode requires it)")]
    TlsRefused(String),
    /// The TLS handshake failed (e.g. certificate not trusted).
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        /// host:port
        addr: String,
        /// What rustls said.
        source: std::io::Error,
    },
    /// The credential could not be read.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// The server asked for a password and none is configured.
    #[error("the server asks for a password and the connection has none configured")]
    NoPassword,
    /// The server refused the login or the startup (its own message).
    #[error("upstream refused: {message} (SQLSTATE {code})")]
    Refused {
        /// Upstream SQLSTATE.
        code: String,
        /// Upstream message.
        message: String,
    },
    /// The server spoke something the gateway does not understand.
    #[error("protocol error from upstream: {0}")]
    Protocol(String),
    /// I/O failed mid-handshake.
    #[error("connection to upstream lost: {0}")]
    Io(#[from] std::io::Error),
}

impl UpstreamError {
    /// The error a client sees, naming the connection.
    pub fn to_pg(&self, connection: &str) -> PgError {
        let (code, hint) = match self {
            UpstreamError::Refused { code, .. }
                if code == "3D000" || code == "28000" || code == "28P01" =>
            {
                (
                    "08004",
                    "the gateway's upstream credential or catalog entry is wrong: tell the gateway's operator",
                )
            }
            UpstreamError::Refused { .. } => ("08004", "the upstream server refused the session"),
            UpstreamError::Credential(_) | UpstreamError::NoPassword => (
                "08004",
                "the gateway's upstream credential is missing: tell the gateway's operator",
            ),
            _ => (
                "08001",
                "check that the upstream database is running and reachable from the gateway",
            ),
        };
        PgError::fatal(
            code,
            format!("connection \"{connection}\" is unavailable: {self}"),
        )
        .with_hint(hint)
    }
}

/// A logged-in upstream session, ready for the relay.
pub struct UpstreamSession {
    /// The connection.
    pub conn: Conn,
    /// ParameterStatus frames sent during startup, to relay to the client.
    pub parameters: Vec<Frame>,
    /// NoticeResponse frames sent during startup.
    pub notices: Vec<Frame>,
    /// The upstream backend's process id.
    pub pid: i32,
    /// The upstream backend's secret key.
    pub key: i32,
}

const SSL_REQUEST_CODE: i32 = 80877103;
const HANDSHAKE_FRAME_LIMIT: usize = 1 << 20;

/// Dial the upstream and, unless TLS is disabled, negotiate TLS. Returns the
/// connection and the hash of the server certificate for channel binding.
pub async fn open(upstream: &Upstream) -> Result<(Conn, Option<Vec<u8>>), UpstreamError> {
    let addr = upstream.address();
    let tcp = TcpStream::connect((upstream.config.host.as_str(), upstream.config.port))
        .await
        .map_err(|source| UpstreamError::Unreachable {
            addr: addr.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &upstream.tls else {
        return Ok((Conn::Plain(tcp), None));
    };
    let mut tcp = tcp;
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    debug_assert_eq!(&request[4..8], &SSL_REQUEST_CODE.to_be_bytes());
    tcp.write_all(&request).await?;
    let answer = tcp.read_u8().await?;
    if answer != b'S' {
        return Err(UpstreamError::TlsRefused(addr));
    }
    let name = ServerName::try_from(upstream.config.host.clone())
        .map_err(|e| UpstreamError::Protocol(format!("host name {}: {e}", upstream.config.host)))?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|source| UpstreamError::Tls { addr, source })?;
    let cert_hash = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .filter(|cert| signed_with_sha256(cert))
        .map(|cert| Sha256::digest(cert.as_ref()).to_vec());
    Ok((
        Conn::Tls(Box::new(tokio_rustls::TlsStream::Client(stream))),
        cert_hash,
    ))
}

/// Open and log in. `parameters` are the client's startup parameters to
/// forward (never `user` or `database`: those come from the catalog).
pub async fn connect(
    upstream: &Upstream,
    parameters: &[(String, String)],
) -> Result<UpstreamSession, UpstreamError> {
    let work = async {
        let (conn, cert_hash) = open(upstream).await?;
        login(conn, cert_hash, upstream, parameters).await
    };
    tokio::time::timeout(upstream.connect_timeout(), work)
        .await
        .map_err(|_| UpstreamError::Timeout(upstream.address()))?
}

async fn login(
    mut conn: Conn,
    cert_hash: Option<Vec<u8>>,
    upstream: &Upstream,
    parameters: &[(String, String)],
) -> Result<UpstreamSession, UpstreamError> {
    let config = &upstream.config;
    let mut out = BytesMut::new();
    let mut startup: Vec<(&str, &str)> =
        vec![("user", &config.user), ("database", &config.database)];
    startup.extend(parameters.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    frontend::startup_message(startup, &mut out)?;
    conn.write_all(&out).await?;

    let mut buf = BytesMut::with_capacity(8192);
    let mut scram: Option<ScramSha256> = None;
    let mut session = UpstreamSession {
        conn,
        parameters: vec![],
        notices: vec![],
        pid: 0,
        key: 0,
    };
    loop {
        let frame = read_frame(&mut session.conn, &mut buf).await?;
        let mut body = Body::new(frame.body());
        out.clear();
        match frame.tag() {
            b'R' => match body.i32() {
                Some(0) => {}
                Some(3) => {
                    let password = password(upstream).await?;
                    frontend::password_message(password.expose().as_bytes(), &mut out)?;
                }
                Some(5) => {
                    let salt: [u8; 4] = body.rest().try_into().map_err(|_| bad("MD5 salt"))?;
                    let password = password(upstream).await?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        config.user.as_bytes(),
                        password.expose().as_bytes(),
                        salt,
                    );
                    frontend::password_message(hash.as_bytes(), &mut out)?;
                }
                Some(10) => {
                    let mut mechanisms = vec![];
                    while let Some(m) = body.cstr().filter(|m| !m.is_empty()) {
                        mechanisms.push(m.to_vec());
                    }
                    let password = password(upstream).await?;
                    let plus = mechanisms.iter().any(|m| m == b"SCRAM-SHA-256-PLUS");
                    let (mechanism, binding) = match (&cert_hash, plus) {
                        (Some(hash), true) => (
                            "SCRAM-SHA-256-PLUS",
                            ChannelBinding::tls_server_end_point(hash.clone()),
                        ),
                        _ if mechanisms.iter().any(|m| m == b"SCRAM-SHA-256") => {
                            // 'n': we do not bind, and the server may have offered PLUS:
                            // telling it so avoids a downgrade alarm.
                            ("SCRAM-SHA-256", ChannelBinding::unsupported())
                        }
                        _ => {
                            return Err(UpstreamError::Protocol(
                                "no supported SASL mechanism offered".into(),
                            ));
                        }
                    };
                    let state = ScramSha256::new(password.expose().as_bytes(), binding);
                    frontend::sasl_initial_response(mechanism, state.message(), &mut out)?;
                    scram = Some(state);
                }
                Some(11) => {
                    let state = scram
                        .as_mut()
                        .ok_or_else(|| bad("SASLContinue without SASL"))?;
                    state
                        .update(body.rest())
                        .map_err(|e| UpstreamError::Protocol(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(state.message(), &mut out)?;
                }
                Some(12) => {
                    let state = scram
                        .as_mut()
                        .ok_or_else(|| bad("SASLFinal without SASL"))?;
                    state.finish(body.rest()).map_err(|e| {
                        UpstreamError::Protocol(format!("SCRAM server signature: {e}"))
                    })?;
                }
                Some(other) => {
                    return Err(UpstreamError::Protocol(format!(
                        "unsupported authentication method {other}"
                    )));
                }
                None => return Err(bad("Authentication")),
            },
            b'S' => session.parameters.push(frame),
            b'N' => session.notices.push(frame),
            b'K' => {
                session.pid = body.i32().ok_or_else(|| bad("BackendKeyData"))?;
                session.key = body.i32().ok_or_else(|| bad("BackendKeyData"))?;
            }
            b'v' => {} // NegotiateProtocolVersion: we asked for 3.0, nothing to adjust.
            b'E' => {
                let (code, message) = error_fields(frame.body());
                return Err(UpstreamError::Refused { code, message });
            }
            b'Z' => return Ok(session),
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected message '{}' during startup",
                    super::frame::printable(other)
                )));
            }
        }
        if !out.is_empty() {
            session.conn.write_all(&out).await?;
        }
    }
}

/// Forward a cancel request to the upstream backend.
pub async fn send_cancel(upstream: &Upstream, pid: i32, key: i32) -> Result<(), UpstreamError> {
    let work = async {
        let (mut conn, _) = open(upstream).await?;
        let mut out = BytesMut::new();
        frontend::cancel_request(pid, key, &mut out);
        conn.write_all(&out).await?;
        conn.flush().await?;
        // The server closes the connection once it has read the request.
        let mut sink = [0u8; 64];
        let _ = conn.read(&mut sink).await;
        Ok(())
    };
    tokio::time::timeout(upstream.connect_timeout(), work)
        .await
        .map_err(|_| UpstreamError::Timeout(upstream.address()))?
}

async fn password(upstream: &Upstream) -> Result<crate::upstream::Secret, UpstreamError> {
    upstream.password().await?.ok_or(UpstreamError::NoPassword)
}

async fn read_frame(conn: &mut Conn, buf: &mut BytesMut) -> Result<Frame, UpstreamError> {
    loop {
        match Frame::read(buf, HANDSHAKE_FRAME_LIMIT) {
            Ok(Some(frame)) => return Ok(frame),
            Ok(None) => {}
            Err(e) => return Err(UpstreamError::Protocol(e.to_string())),
        }
        if conn.read_buf(buf).await? == 0 {
            return Err(UpstreamError::Protocol(
                "server closed the connection during startup".into(),
            ));
        }
    }
}

fn bad(what: &str) -> UpstreamError {
    UpstreamError::Protocol(format!("malformed {what} message"))
}

/// SQLSTATE and message of an ErrorResponse body.
pub fn error_fields(body: &[u8]) -> (String, String) {
    let mut code = String::new();
    let mut message = String::new();
    let mut body = Body::new(body);
    while let Some(field) = body.cstr() {
        let Some((&kind, value)) = field.split_first() else {
            break;
        };
        match kind {
            b'C' => code = String::from_utf8_lossy(value).into_owned(),
            b'M' => message = String::from_utf8_lossy(value).into_owned(),
            _ => {}
        }
    }
    (code, message)
}

/// tls-server-end-point (RFC 5929) hashes the certificate with its signature
/// hash; we bind only when that hash is SHA-256 (the common case), found by
/// the DER encoding of the signature algorithm OID at the end of the certificate.
fn signed_with_sha256(cert: &[u8]) -> bool {
    const SHA256_WITH_RSA: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b,
    ];
    const ECDSA_WITH_SHA256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    // The outer signatureAlgorithm sits just before the signature BIT STRING,
    // within the last few hundred bytes.
    let tail = &cert[cert.len().saturating_sub(600)..];
    [SHA256_WITH_RSA, ECDSA_WITH_SHA256]
        .iter()
        .any(|oid| tail.windows(oid.len()).any(|w| w == *oid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_binding_hash_is_used_for_sha256_signed_certificates() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(signed_with_sha256(cert.der()));
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(
            !signed_with_sha256(cert.der()),
            "SHA-384 certificates need a SHA-384 binding: do not bind"
        );
    }

    #[test]
    fn error_fields_reads_code_and_message() {
        let body = b"SFATAL\0C28P01\0Mpassword authentication failed for user \"x\"\0\0";
        assert_eq!(
            error_fields(body),
            (
                "28P01".to_string(),
                "password authentication failed for user \"x\"".to_string()
            )
        );
    }
}
