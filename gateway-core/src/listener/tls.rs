//! Client-facing TLS: a configured certificate and key, or in development a
//! self-signed certificate generated on first start and kept in the data directory.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::ServerTlsConfig;
use crate::identity::dev_issuer::write_private;

/// The self-signed certificate the gateway makes in its data directory.
pub const SELF_SIGNED_CERT: &str = "gateway-cert.pem";
const SELF_SIGNED_KEY: &str = "gateway-key.pem";

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the certificate and key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// Generating the self-signed certificate failed.
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
}

/// The acceptor used when a client asks for TLS.
#[derive(Clone)]
pub struct ServerTls {
    /// The rustls acceptor.
    pub acceptor: TlsAcceptor,
}

/// The largest TLS record the gateway sends, its 5-byte header included
/// (rustls's `max_fragment_size`): at most 8187 bytes of plaintext each.
///
/// libpq's asynchronous path (`PQconsumeInput`, used by pgbench and by
/// event loops built on libpq; PostgreSQL 15 here) can take 8 kB of
/// plaintext per socket wake-up: the rest of a 16 kB record then waits in
/// OpenSSL's buffer, the socket never becomes readable again and the client
/// hangs with its result half read. PostgreSQL's server writes through an
/// 8 kB send buffer, so libpq rarely meets such records there; the gateway
/// keeps to the same size.
pub const MAX_RECORD: usize = 8192;

/// The process-wide rustls crypto provider (aws-lc-rs).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl ServerTls {
    /// Build from configuration; `None` when no TLS is configured (plaintext-only development).
    pub fn from_config(
        config: &ServerTlsConfig,
        data_dir: &Path,
    ) -> Result<Option<Self>, TlsError> {
        let (certs, key) = match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => (read_certs(cert)?, read_key(key)?),
            _ if config.self_signed => self_signed(data_dir)?,
            _ => return Ok(None),
        };
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        server.max_fragment_size = Some(MAX_RECORD);
        Ok(Some(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
        }))
    }
}

fn file_error(path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Read a PEM certificate chain.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in file"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

/// Load the self-signed certificate from the data directory, creating it
/// (for localhost and 127.0.0.1) on first start.
fn self_signed(
    data_dir: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let cert_path = data_dir.join(SELF_SIGNED_CERT);
    let key_path = data_dir.join(SELF_SIGNED_KEY);
    if !cert_path.exists() {
        let names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
        let mut params =
            rcgen::CertificateParams::new(names).map_err(|e| TlsError::Generate(e.to_string()))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Tollgate development gateway");
        let cert = params
            .self_signed(&key)
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        write_private(&key_path, key.serialize_pem().as_bytes())
            .map_err(|e| file_error(&key_path, e))?;
        std::fs::write(&cert_path, cert.pem()).map_err(|e| file_error(&cert_path, e))?;
        tracing::info!(cert = %cert_path.display(), "generated a self-signed development certificate");
    }
    Ok((read_certs(&cert_path)?, read_key(&key_path)?))
}
