//! Upstream credentials: read from an environment variable, a file or the OS
//! keyring. The value is wrapped in [`Secret`] so it never prints.

use std::fmt;

use crate::config::CredentialSource;

/// A password that never appears in `Debug` or `Display` output.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wrap a value.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Why a credential could not be read. Names the source, never the value.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The environment variable is not set.
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    /// The file could not be read.
    #[error("cannot read password file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The keyring has no such entry or is unavailable.
    #[error("keyring entry {service}/{account}: {message}")]
    Keyring {
        /// Keyring service.
        service: String,
        /// Keyring account.
        account: String,
        /// What the keyring said.
        message: String,
    },
}

/// Read a credential from its source.
pub async fn read(source: &CredentialSource) -> Result<Secret, CredentialError> {
    match source {
        CredentialSource::Env(var) => std::env::var(var)
            .map(Secret)
            .map_err(|_| CredentialError::MissingEnv(var.clone())),
        CredentialSource::File(path) => {
            let text =
                tokio::fs::read_to_string(path)
                    .await
                    .map_err(|source| CredentialError::File {
                        path: path.display().to_string(),
                        source,
                    })?;
            Ok(Secret(text.lines().next().unwrap_or("").to_string()))
        }
        CredentialSource::Inline(value) => Ok(Secret(value.clone())),
        CredentialSource::Keyring { service, account } => keyring_read(service, account).await,
    }
}

async fn keyring_read(service: &str, account: &str) -> Result<Secret, CredentialError> {
    Err(CredentialError::Keyring {
        service: service.to_string(),
        account: account.to_string(),
        message: "this build has no OS keyring support".into(),
    })
}
