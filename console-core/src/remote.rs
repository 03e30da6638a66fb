//! Remote mode: the console signed in to a team's gateway. Sign-in goes
//! through the system browser ([`crate::oidc`]); the tokens live in the OS
//! keyring ([`crate::vault`]) and are refreshed before they expire; the
//! approvals inbox, the session browser, the player and evidence all use
//! the signed-in identity, with the roles the gateway gives it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::api::{Api, TokenSource};
use crate::error::ConsoleError;
use crate::oidc::{self, Profile, RefreshError, Tokens, now_secs};
use crate::vault::Vault;

/// The file (no secret in it) that remembers the gateway signed in to.
pub const PROFILE_FILE: &str = "remote.json";

/// Refresh this long before the access token expires (or at a fifth of its
/// lifetime left, whichever is earlier).
const REFRESH_AHEAD: i64 = 60;

/// What is remembered between runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Remembered {
    /// Where to sign in.
    pub profile: Profile,
    /// The tokens are in the keyring (a session-only sign-in is not restored).
    pub in_keyring: bool,
}

/// Read the remembered profile, if any.
pub fn remembered(data_dir: &Path) -> Option<Remembered> {
    let text = std::fs::read_to_string(data_dir.join(PROFILE_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Remember `profile` (written atomically).
pub fn remember(data_dir: &Path, remembered: &Remembered) -> Result<(), ConsoleError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| ConsoleError::Invalid(format!("{}: {e}", data_dir.display())))?;
    let path = data_dir.join(PROFILE_FILE);
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(remembered)
        .map_err(|e| ConsoleError::Invalid(e.to_string()))?;
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| ConsoleError::Invalid(format!("{}: {e}", path.display())))
}

/// Who the gateway says the token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhoAmI {
    /// Subject.
    pub subject: String,
    /// Issuer.
    pub issuer: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Roles at the gateway.
    pub roles: Vec<String>,
}

/// Ask the gateway who `api`'s token is.
pub async fn whoami(api: &Api) -> Result<WhoAmI, ConsoleError> {
    let me: Value = api.get_json("/api/v1/whoami", &[]).await?;
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(WhoAmI {
        subject: me["subject"].as_str().unwrap_or_default().to_string(),
        issuer: me["issuer"].as_str().unwrap_or_default().to_string(),
        groups: strings(&me["groups"]),
        roles: strings(&me["roles"]),
    })
}

/// A signed-in session with a team's gateway.
pub struct Remote {
    /// Where.
    pub profile: Profile,
    /// Who, as the gateway sees them.
    pub me: WhoAmI,
    vault: Arc<Vault>,
    tokens: Arc<Mutex<Tokens>>,
    refresher: Option<JoinHandle<()>>,
    /// Tells the refresher to stop at its next wait (never mid-refresh: a
    /// rotated refresh token must reach the keyring).
    stop: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("gateway", &self.profile.gateway)
            .field("subject", &self.me.subject)
            .finish_non_exhaustive()
    }
}

/// Called when the refresher gives up (the provider refused): why.
pub type OnSignedOut = Arc<dyn Fn(String) + Send + Sync>;
/// Called after each refresh.
pub type OnRefreshed = Arc<dyn Fn() + Send + Sync>;

impl Remote {
    /// A session with `tokens`, checked with the gateway; refreshed from now on.
    pub async fn open(
        profile: Profile,
        tokens: Tokens,
        vault: Arc<Vault>,
        on_signed_out: OnSignedOut,
        on_refreshed: OnRefreshed,
    ) -> Result<Remote, ConsoleError> {
        let tokens = Arc::new(Mutex::new(tokens));
        let api = Api::new(
            &profile.gateway,
            profile.ca_file.as_deref(),
            source(&tokens),
        )?;
        let me = whoami(&api).await?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let refresher = tokio::spawn(refresh_loop(
            profile.clone(),
            tokens.clone(),
            vault.clone(),
            stopped,
            on_signed_out,
            on_refreshed,
        ));
        Ok(Remote {
            profile,
            me,
            vault,
            tokens,
            refresher: Some(refresher),
            stop,
        })
    }

    /// Stop refreshing, letting a refresh under way finish and keep its
    /// tokens (the keyring keeps the sign-in for the next start).
    pub async fn close(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.refresher.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
    }

    /// The current access token, each call.
    pub fn token_source(&self) -> TokenSource {
        source(&self.tokens)
    }

    /// An API client as the signed-in identity.
    pub fn api(&self) -> Result<Api, ConsoleError> {
        Api::new(
            &self.profile.gateway,
            self.profile.ca_file.as_deref(),
            self.token_source(),
        )
    }

    /// The tokens now (for the status view; never sent to the window).
    pub fn tokens(&self) -> Tokens {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the tokens outlive the process.
    pub fn in_keyring(&self) -> bool {
        self.vault.persistent()
    }

    /// Sign out: stop refreshing and forget the tokens.
    pub async fn sign_out(mut self) -> Result<(), ConsoleError> {
        // A refresh under way finishes first, so its save cannot land after the clear.
        let _ = self.stop.send(true);
        if let Some(task) = self.refresher.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
        self.vault.clear().await
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        if let Some(task) = self.refresher.take() {
            task.abort();
        }
    }
}

fn source(tokens: &Arc<Mutex<Tokens>>) -> TokenSource {
    let tokens = tokens.clone();
    Arc::new(move || {
        let tokens = tokens.lock().unwrap_or_else(|e| e.into_inner());
        if tokens.expires_at <= now_secs() {
            return Err(
                "the access token expired and could not be refreshed; sign in again".into(),
            );
        }
        Ok(tokens.access_token.clone())
    })
}

/// When to refresh tokens that expire at `expires_at` and were got at `now`.
pub fn refresh_at(now: i64, expires_at: i64) -> i64 {
    let lifetime = (expires_at - now).max(0);
    let ahead = REFRESH_AHEAD.min(lifetime / 5).max(lifetime.min(5));
    expires_at - ahead
}

async fn refresh_loop(
    profile: Profile,
    tokens: Arc<Mutex<Tokens>>,
    vault: Arc<Vault>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    on_signed_out: OnSignedOut,
    on_refreshed: OnRefreshed,
) {
    let mut retry = Duration::from_secs(2);
    // Never two refreshes closer than this, whatever the provider says.
    const MIN_GAP: Duration = Duration::from_secs(5);
    let mut last_refresh: Option<tokio::time::Instant> = None;
    // Sleep, unless told to stop first (then: false).
    let mut sleep = async |d: Duration| -> bool {
        let woke = tokio::select! {
            () = tokio::time::sleep(d) => true,
            _ = stopped.wait_for(|s| *s) => false,
        };
        woke && !*stopped.borrow()
    };
    loop {
        let current = tokens.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(refresh_token) = current.refresh_token.clone() else {
            // Nothing to refresh with: the sign-in ends with the token.
            let wait = (current.expires_at - now_secs()).max(0) as u64;
            if sleep(Duration::from_secs(wait)).await {
                on_signed_out(
                    "the access token expired and the provider gave no refresh token".into(),
                );
            }
            return;
        };
        let at = refresh_at(now_secs(), current.expires_at);
        let mut wait = Duration::from_secs((at - now_secs()).max(0) as u64);
        if let Some(last) = last_refresh {
            wait = wait.max(MIN_GAP.saturating_sub(last.elapsed()));
        }
        if !sleep(wait).await {
            return;
        }
        last_refresh = Some(tokio::time::Instant::now());
        match oidc::refresh(&profile, &refresh_token, &current.subject).await {
            Ok(fresh) => {
                retry = Duration::from_secs(2);
                if let Err(e) = vault.save(&fresh, &profile).await {
                    tracing::warn!(error = %e, "refreshed tokens could not be kept in the keyring");
                }
                *tokens.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
                tracing::info!(gateway = %profile.gateway, "tokens refreshed");
                on_refreshed();
            }
            Err(RefreshError::Rejected(why)) => {
                let _ = vault.clear().await;
                on_signed_out(format!(
                    "the provider no longer accepts the sign-in ({why})"
                ));
                return;
            }
            Err(RefreshError::Unreachable(why)) => {
                if current.expires_at <= now_secs() {
                    on_signed_out(format!(
                        "the provider could not be reached to refresh the sign-in ({why})"
                    ));
                    return;
                }
                tracing::warn!(error = %why, "token refresh failed; trying again");
                if !sleep(retry).await {
                    return;
                }
                retry = (retry * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// The CA file option as a path.
pub fn ca_path(ca_file: Option<&str>) -> Option<PathBuf> {
    ca_file
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::refresh_at;

    #[test]
    fn refreshes_ahead_of_expiry_but_not_at_once() {
        // An hour: a minute ahead.
        assert_eq!(refresh_at(0, 3600), 3540);
        // Two minutes: a fifth ahead.
        assert_eq!(refresh_at(0, 120), 96);
        // Ten seconds: five ahead, never a busy loop.
        assert_eq!(refresh_at(0, 10), 5);
        // Already expired: now.
        assert_eq!(refresh_at(100, 50), 50);
    }
}
