//! Upstream: the databases behind the gateway and the secrets to reach them.
//!
//! This stage is protocol-neutral: it resolves a named connection to an
//! address, a TLS client setup and a credential. The PostgreSQL handshake
//! itself lives in the adapter (`pg::upstream`).

pub mod credential;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{ConnectionConfig, UpstreamTlsMode};
pub use credential::{CredentialError, Secret};

/// A connection from the catalog, ready to dial.
pub struct Upstream {
    /// The catalog entry.
    pub config: ConnectionConfig,
    /// TLS client setup, `None` for `tls = "disable"`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Upstream {
    /// Prepare a catalog entry: load its CA and TLS settings.
    pub fn new(config: &ConnectionConfig) -> Result<Self, tls::UpstreamTlsError> {
        let tls = match config.tls {
            UpstreamTlsMode::Disable => None,
            mode => Some(tls::client_config(mode, config.ca_file.as_deref())?),
        };
        Ok(Self {
            config: config.clone(),
            tls,
        })
    }

    /// `host:port` of the upstream.
    pub fn address(&self) -> String {
        format!("{}:{}", self.config.host, self.config.port)
    }

    /// How long to wait for the upstream to accept and authenticate.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.config.connect_timeout_secs)
    }

    /// The password the gateway logs in with (read fresh each time, so a
    /// rotated secret takes effect without a restart).
    pub async fn password(&self) -> Result<Option<Secret>, CredentialError> {
        match &self.config.password {
            None => Ok(None),
            Some(source) => credential::read(source).await.map(Some),
        }
    }
}
