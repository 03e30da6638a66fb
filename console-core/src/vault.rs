//! Where a sign-in's tokens are kept: the OS keyring (Secret Service on
//! Linux, Keychain, Credential Manager), never a file. Where no keyring
//! runs, the user may choose a session-only sign-in: the tokens then live in
//! this process's memory and are gone when it exits.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::ConsoleError;
use crate::oidc::{Profile, Tokens};

/// What the keyring keeps: the tokens and where they are for. The profile
/// is kept with them so an edited `remote.json` cannot send the refresh
/// token to another provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kept {
    /// The tokens.
    pub tokens: Tokens,
    /// Where they were got, and for which gateway.
    pub profile: Profile,
}

/// The keyring service the console's entries are under.
pub const SERVICE: &str = "tollgate-console";

/// A place for one gateway's tokens.
#[derive(Debug)]
pub enum Vault {
    /// The OS keyring, under [`SERVICE`] and this account (the gateway's URL).
    Keyring(String),
    /// Memory only (no keyring, and the user chose so).
    Session(Mutex<Option<Kept>>),
}

fn keyring_error(e: &keyring::Error) -> String {
    match e {
        keyring::Error::NoDefaultStore => "no credential store is configured on this system".into(),
        keyring::Error::NoStorageAccess(inner) => {
            format!("the keyring is locked or refused access ({inner})")
        }
        keyring::Error::PlatformFailure(inner) => {
            format!("the keyring service is not running ({inner})")
        }
        other => other.to_string(),
    }
}

/// Whether the OS keyring can keep a secret now: a write, a read and a
/// delete of a probe entry (a locked or absent Secret Service fails here,
/// not later with the user's tokens).
pub async fn keyring_usable() -> Result<(), String> {
    tokio::task::spawn_blocking(|| {
        let entry = keyring::Entry::new(SERVICE, "probe").map_err(|e| keyring_error(&e))?;
        entry.set_password("probe").map_err(|e| keyring_error(&e))?;
        let back = entry.get_password().map_err(|e| keyring_error(&e))?;
        let _ = entry.delete_credential();
        if back != "probe" {
            return Err("the keyring gave back something else than was stored".into());
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?
}

impl Vault {
    /// The keyring entry for `gateway`.
    pub fn keyring(gateway: &str) -> Vault {
        Vault::Keyring(gateway.to_string())
    }

    /// A memory-only vault.
    pub fn session() -> Vault {
        Vault::Session(Mutex::new(None))
    }

    /// Whether it outlives the process.
    pub fn persistent(&self) -> bool {
        matches!(self, Vault::Keyring(_))
    }

    /// Keep `tokens`, got with `profile`.
    pub async fn save(&self, tokens: &Tokens, profile: &Profile) -> Result<(), ConsoleError> {
        let kept = Kept {
            tokens: tokens.clone(),
            profile: profile.clone(),
        };
        match self {
            Vault::Session(slot) => {
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(kept);
                Ok(())
            }
            Vault::Keyring(account) => {
                let account = account.clone();
                let secret = serde_json::to_string(&kept)
                    .map_err(|e| ConsoleError::NoKeyring(e.to_string()))?;
                tokio::task::spawn_blocking(move || {
                    keyring::Entry::new(SERVICE, &account)
                        .and_then(|entry| entry.set_password(&secret))
                        .map_err(|e| ConsoleError::NoKeyring(keyring_error(&e)))
                })
                .await
                .map_err(|e| ConsoleError::NoKeyring(e.to_string()))?
            }
        }
    }

    /// The tokens kept, if any.
    pub async fn load(&self) -> Result<Option<Kept>, ConsoleError> {
        match self {
            Vault::Session(slot) => Ok(slot.lock().unwrap_or_else(|e| e.into_inner()).clone()),
            Vault::Keyring(account) => {
                let account = account.clone();
                tokio::task::spawn_blocking(move || {
                    let entry = keyring::Entry::new(SERVICE, &account)
                        .map_err(|e| ConsoleError::NoKeyring(keyring_error(&e)))?;
                    match entry.get_password() {
                        Ok(secret) => Ok(serde_json::from_str(&secret).ok()),
                        Err(keyring::Error::NoEntry) => Ok(None),
                        Err(e) => Err(ConsoleError::NoKeyring(keyring_error(&e))),
                    }
                })
                .await
                .map_err(|e| ConsoleError::NoKeyring(e.to_string()))?
            }
        }
    }

    /// Forget the tokens (sign-out).
    pub async fn clear(&self) -> Result<(), ConsoleError> {
        match self {
            Vault::Session(slot) => {
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
                Ok(())
            }
            Vault::Keyring(account) => {
                let account = account.clone();
                tokio::task::spawn_blocking(move || {
                    let entry = keyring::Entry::new(SERVICE, &account)
                        .map_err(|e| ConsoleError::NoKeyring(keyring_error(&e)))?;
                    match entry.delete_credential() {
                        Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
                        Err(e) => Err(ConsoleError::NoKeyring(keyring_error(&e))),
                    }
                })
                .await
                .map_err(|e| ConsoleError::NoKeyring(e.to_string()))?
            }
        }
    }
}
