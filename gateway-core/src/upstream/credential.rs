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
    let (service, account) = (service.to_string(), account.to_string());
    // The keyring API is blocking (and panics inside a runtime thread).
    let result = tokio::task::spawn_blocking({
        let (service, account) = (service.clone(), account.clone());
        move || keyring::Entry::new(&service, &account)?.get_password()
    })
    .await;
    match result {
        Ok(Ok(password)) => Ok(Secret(password)),
        Ok(Err(e)) => Err(CredentialError::Keyring {
            service,
            account,
            message: keyring_message(&e),
        }),
        Err(e) => Err(CredentialError::Keyring {
            service,
            account,
            message: e.to_string(),
        }),
    }
}

/// Store a secret in the OS keyring (for `tollgate keyring set`).
pub fn keyring_store(service: &str, account: &str, secret: &str) -> Result<(), CredentialError> {
    keyring::Entry::new(service, account)
        .and_then(|entry| entry.set_password(secret))
        .map_err(|e| CredentialError::Keyring {
            service: service.to_string(),
            account: account.to_string(),
            message: keyring_message(&e),
        })
}

fn keyring_message(e: &keyring::Error) -> String {
    match e {
        keyring::Error::NoEntry => "no such entry: store it with `tollgate keyring set`".into(),
        keyring::Error::NoDefaultStore => {
            "no OS keyring is available (on Linux: a Secret Service on the session bus)".into()
        }
        other => other.to_string(),
    }
}
