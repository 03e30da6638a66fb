//! The console's calls for a team's gateway and for what analysts and
//! auditors look at: sign-in and sign-out, the session browser, the
//! player's pages, the audit log's state and evidence exports. Each works
//! against the local gateway (as a dev persona) or the signed-in gateway.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use tollgate::audit::note::{Checkpoint, Verifier};

use crate::api::Api;
use crate::console::{Console, Reset};
use crate::error::ConsoleError;
use crate::host::Host;
use crate::oidc;
use crate::remote::{self, Remembered, Remote};
use crate::types::{
    AuditState, ConsoleEvent, ExportOptions, ExportProgress, ExportResult, ExportView, FramePage,
    MarkerList, Persona, RemoteSession, RemoteStatus, SearchResult, SessionDetail, SessionFilter,
    SessionPage, SignInOptions, Viewer,
};
use crate::vault::{self, Vault};

/// Verifier keys seen per gateway (trust on first use; no secret).
const PINS_FILE: &str = "verifier-keys.json";

/// How often an export's progress is asked for.
const POLL_EXPORT: Duration = Duration::from_millis(250);

/// Who acts, against which API.
struct Acting {
    api: Api,
    viewer: Viewer,
}

impl<H: Host> Console<H> {
    fn set_remote_status(&self, status: RemoteStatus) {
        *self.inner.remote_status.lock().expect("remote status") = status.clone();
        self.inner.host.emit(ConsoleEvent::Remote { status });
    }

    /// Where the console stands with a team's gateway.
    pub fn remote_status(&self) -> RemoteStatus {
        self.inner
            .remote_status
            .lock()
            .expect("remote status")
            .clone()
    }

    fn signed_in_status(&self, remote: &Remote) -> RemoteStatus {
        let tokens = remote.tokens();
        RemoteStatus::SignedIn {
            session: Box::new(RemoteSession {
                gateway: remote.profile.gateway.clone(),
                issuer: remote.profile.issuer.clone(),
                subject: remote.me.subject.clone(),
                groups: remote.me.groups.clone(),
                roles: remote.me.roles.clone(),
                expires_at: rfc3339(tokens.expires_at),
                refreshable: tokens.refresh_token.is_some(),
                in_keyring: remote.in_keyring(),
            }),
        }
    }

    /// Sign in to a team's gateway in the system browser. Without an OS
    /// keyring this fails with `no_keyring` unless `session_only` is set.
    /// [`Console::cancel_sign_in`] gives up waiting for the browser.
    pub async fn sign_in(&self, options: SignInOptions) -> Result<RemoteStatus, ConsoleError> {
        if self.inner.signing_in.swap(true, Ordering::SeqCst) {
            return Err(ConsoleError::Busy("signing in"));
        }
        let _signing = Reset(&self.inner.signing_in);
        let gateway = options.gateway.trim().to_string();
        let before = self.remote_status();
        let cancelled = self.inner.cancel_sign_in.notified();
        let attempt = async {
            self.set_remote_status(RemoteStatus::SigningIn {
                gateway: gateway.clone(),
                step: "Reading the gateway's sign-in settings".into(),
            });
            let profile = oidc::discover(
                &gateway,
                remote::ca_path(options.ca_file.as_deref()),
                options.issuer.as_deref().filter(|i| !i.trim().is_empty()),
            )
            .await?;
            let vault = if options.session_only.unwrap_or(false) {
                Vault::session()
            } else {
                vault::keyring_usable()
                    .await
                    .map_err(ConsoleError::NoKeyring)?;
                Vault::keyring(&profile.gateway)
            };
            self.set_remote_status(RemoteStatus::SigningIn {
                gateway: gateway.clone(),
                step: format!(
                    "Waiting for you to sign in at {} (for {}) in your browser",
                    profile.issuer, profile.audience
                ),
            });
            let tokens = oidc::sign_in(&profile, |url| self.inner.host.open_url(url)).await?;
            self.set_remote_status(RemoteStatus::SigningIn {
                gateway: gateway.clone(),
                step: "Checking the sign-in with the gateway".into(),
            });
            // Kept before the refresher starts: a rotated refresh token is
            // never overwritten by the first one.
            let vault = Arc::new(vault);
            vault.save(&tokens, &profile).await?;
            let remote = match self
                .open_remote(profile.clone(), tokens, vault.clone())
                .await
            {
                Ok(remote) => remote,
                Err(e) => {
                    let _ = vault.clear().await;
                    return Err(e);
                }
            };
            remote::remember(
                &self.inner.host.data_dir(),
                &Remembered {
                    profile,
                    in_keyring: vault.persistent(),
                },
            )?;
            Ok::<_, ConsoleError>(remote)
        };
        let result = tokio::select! {
            result = attempt => result,
            () = cancelled => Err(ConsoleError::SignIn("cancelled".into())),
        };
        match result {
            Ok(remote) => {
                let status = self.signed_in_status(&remote);
                self.connect_inbox(
                    crate::approvals::Target {
                        url: remote.profile.gateway.clone(),
                        ca_file: remote.profile.ca_file.clone(),
                    },
                    remote.token_source(),
                );
                let old = self.inner.remote.lock().await.replace(remote);
                if let Some(old) = old {
                    old.close().await;
                }
                self.set_remote_status(status.clone());
                Ok(status)
            }
            Err(e) => {
                self.set_remote_status(match before {
                    RemoteStatus::SigningIn { .. } => RemoteStatus::SignedOut {
                        gateway: Some(gateway),
                        reason: None,
                    },
                    other => other,
                });
                Err(e)
            }
        }
    }

    /// Stop waiting for the browser (the sign-in fails with `cancelled`).
    pub fn cancel_sign_in(&self) {
        if self.inner.signing_in.load(Ordering::SeqCst) {
            self.inner.cancel_sign_in.notify_waiters();
        }
    }

    async fn open_remote(
        &self,
        profile: oidc::Profile,
        tokens: oidc::Tokens,
        vault: Arc<Vault>,
    ) -> Result<Remote, ConsoleError> {
        let weak = Arc::downgrade(&self.inner);
        let gateway = profile.gateway.clone();
        let on_signed_out = Arc::new(move |why: String| {
            if let Some(inner) = weak.upgrade() {
                let console = Console { inner };
                let gateway = gateway.clone();
                tokio::spawn(async move { console.signed_out(gateway, Some(why)).await });
            }
        });
        let weak = Arc::downgrade(&self.inner);
        let on_refreshed = Arc::new(move || {
            if let Some(inner) = weak.upgrade() {
                let console = Console { inner };
                tokio::spawn(async move {
                    let remote = console.inner.remote.lock().await;
                    if let Some(remote) = remote.as_ref() {
                        let status = console.signed_in_status(remote);
                        console.set_remote_status(status);
                    }
                });
            }
        });
        Remote::open(profile, tokens, vault, on_signed_out, on_refreshed).await
    }

    /// The sign-in ended (refused refresh): back to local.
    async fn signed_out(&self, gateway: String, reason: Option<String>) {
        let remote = self.inner.remote.lock().await.take();
        drop(remote);
        self.set_remote_status(RemoteStatus::SignedOut {
            gateway: Some(gateway),
            reason,
        });
        self.disconnect_inbox();
        self.inbox_to_local().await;
    }

    /// Sign out: the tokens leave the keyring; the inbox goes back to the
    /// local gateway if it runs.
    pub async fn sign_out(&self) -> Result<RemoteStatus, ConsoleError> {
        let remote = self.inner.remote.lock().await.take();
        let gateway = remote.as_ref().map(|r| r.profile.gateway.clone());
        let cleared = match remote {
            Some(remote) => remote.sign_out().await,
            None => Ok(()),
        };
        let status = RemoteStatus::SignedOut {
            gateway,
            reason: None,
        };
        self.set_remote_status(status.clone());
        self.disconnect_inbox();
        self.inbox_to_local().await;
        cleared.map(|()| status)
    }

    /// Leave the team's gateway without signing out: the keyring keeps the
    /// sign-in for the next start (the window closes).
    pub async fn leave_remote(&self) {
        let remote = self.inner.remote.lock().await.take();
        if let Some(remote) = remote {
            let gateway = remote.profile.gateway.clone();
            remote.close().await;
            self.set_remote_status(RemoteStatus::SignedOut {
                gateway: Some(gateway),
                reason: None,
            });
            self.disconnect_inbox();
            self.inbox_to_local().await;
        }
    }

    /// At start: sign in again with the tokens the keyring kept, if any
    /// (refreshing them if they expired). The profile kept with them in the
    /// keyring is the one used: `remote.json` only names the gateway.
    pub async fn restore_remote(&self) -> RemoteStatus {
        let Some(remembered) = remote::remembered(&self.inner.host.data_dir()) else {
            return self.remote_status();
        };
        let gateway = remembered.profile.gateway.clone();
        let signed_out = |reason: Option<String>| RemoteStatus::SignedOut {
            gateway: Some(gateway.clone()),
            reason,
        };
        let status = match self.restore(remembered).await {
            Ok(Some(remote)) => {
                let status = self.signed_in_status(&remote);
                self.connect_inbox(
                    crate::approvals::Target {
                        url: remote.profile.gateway.clone(),
                        ca_file: remote.profile.ca_file.clone(),
                    },
                    remote.token_source(),
                );
                *self.inner.remote.lock().await = Some(remote);
                status
            }
            Ok(None) => signed_out(None),
            Err(e) => signed_out(Some(e.to_string())),
        };
        self.set_remote_status(status.clone());
        status
    }

    async fn restore(&self, remembered: Remembered) -> Result<Option<Remote>, ConsoleError> {
        if !remembered.in_keyring {
            return Ok(None);
        }
        let vault = Arc::new(Vault::keyring(&remembered.profile.gateway));
        let Some(kept) = vault.load().await? else {
            return Ok(None);
        };
        if kept.profile.gateway != remembered.profile.gateway {
            return Err(ConsoleError::SignIn(
                "the keyring's sign-in is for another gateway; sign in again".into(),
            ));
        }
        let (profile, mut tokens) = (kept.profile, kept.tokens);
        if tokens.expires_at <= oidc::now_secs() + 5 {
            let Some(refresh) = tokens.refresh_token.clone() else {
                return Err(ConsoleError::SignIn("the sign-in expired".into()));
            };
            tokens = oidc::refresh(&profile, &refresh, &tokens.subject)
                .await
                .map_err(|e| {
                    ConsoleError::SignIn(format!("the sign-in could not be renewed ({e})"))
                })?;
            vault.save(&tokens, &profile).await?;
        }
        self.open_remote(profile, tokens, vault).await.map(Some)
    }

    /// View the local gateway's recordings as this persona (an analyst
    /// sees result rows, an auditor does not).
    pub fn set_local_viewer(&self, persona: Persona) {
        *self.inner.local_viewer.lock().expect("viewer") = persona;
    }

    /// The API and identity the browser, player and evidence use: the
    /// signed-in gateway, else the local one as `persona` (else the chosen viewer).
    async fn acting(&self, persona: Option<Persona>) -> Result<Acting, ConsoleError> {
        if let Some(remote) = self.inner.remote.lock().await.as_ref() {
            return Ok(Acting {
                api: remote.api()?,
                viewer: Viewer {
                    mode: "remote".into(),
                    gateway: remote.profile.gateway.clone(),
                    subject: remote.me.subject.clone(),
                    roles: remote.me.roles.clone(),
                },
            });
        }
        let local = self.inner.local.lock().await;
        let Some(running) = local.as_ref() else {
            return Err(ConsoleError::NoGateway);
        };
        let persona =
            persona.unwrap_or_else(|| self.inner.local_viewer.lock().expect("viewer").clone());
        let info = running.info();
        let roles = persona
            .groups
            .iter()
            .filter_map(|g| match g.as_str() {
                "auditors" => Some("auditor".to_string()),
                "analysts" => Some("analyst".to_string()),
                _ => None,
            })
            .collect();
        Ok(Acting {
            api: Api::new(
                &info.api,
                Some(&running.ca_file()),
                running.tokens(persona.clone()),
            )?,
            viewer: Viewer {
                mode: "local".into(),
                gateway: info.api.clone(),
                subject: persona.subject.clone(),
                roles,
            },
        })
    }

    /// Who the browser and the player act as.
    pub async fn viewer(&self) -> Result<Viewer, ConsoleError> {
        Ok(self.acting(None).await?.viewer)
    }

    /// A page of sessions.
    pub async fn sessions(&self, filter: SessionFilter) -> Result<SessionPage, ConsoleError> {
        let mut query = Vec::new();
        let mut put = |name: &'static str, value: &Option<String>| {
            if let Some(v) = value.as_ref().map(|v| v.trim()).filter(|v| !v.is_empty()) {
                query.push((name, v.to_string()));
            }
        };
        put("from", &filter.from);
        put("to", &filter.to);
        put("subject", &filter.subject);
        put("connection", &filter.connection);
        put("kind", &filter.kind);
        put("outcome", &filter.outcome);
        put("q", &filter.q);
        put("order", &filter.order);
        put("after", &filter.after);
        if let Some(limit) = filter.limit {
            query.push(("limit", limit.to_string()));
        }
        self.view("/api/v1/sessions", &query).await
    }

    /// `GET path` of the gateway's API as the browser's viewer.
    async fn view<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ConsoleError> {
        self.acting(None).await?.api.get_json(path, query).await
    }

    /// One session's header, counts and last frame.
    pub async fn session(&self, id: String) -> Result<SessionDetail, ConsoleError> {
        self.view(&format!("/api/v1/sessions/{}", segment(&id)?), &[])
            .await
    }

    /// Up to `limit` frames after `after` (-1: from the start).
    pub async fn frames(
        &self,
        id: String,
        after: i64,
        limit: u32,
    ) -> Result<FramePage, ConsoleError> {
        self.view(
            &format!("/api/v1/sessions/{}/frames", segment(&id)?),
            &[
                ("after", after.to_string()),
                ("limit", limit.clamp(1, 1000).to_string()),
            ],
        )
        .await
    }

    /// The session's markers.
    pub async fn markers(&self, id: String) -> Result<MarkerList, ConsoleError> {
        self.view(&format!("/api/v1/sessions/{}/markers", segment(&id)?), &[])
            .await
    }

    /// Frames of the session that match `q`.
    pub async fn search_session(
        &self,
        id: String,
        q: String,
    ) -> Result<SearchResult, ConsoleError> {
        self.view(
            &format!("/api/v1/sessions/{}/search", segment(&id)?),
            &[("q", q)],
        )
        .await
    }

    fn pins_path(&self) -> PathBuf {
        self.inner.host.data_dir().join(PINS_FILE)
    }

    /// Every pinned key; an unreadable pin file fails (closed) rather than
    /// being taken as empty and rewritten.
    fn pins(&self) -> Result<BTreeMap<String, Value>, ConsoleError> {
        let path = self.pins_path();
        match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(ConsoleError::Invalid(format!("{}: {e}", path.display()))),
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                ConsoleError::Invalid(format!(
                    "{} is damaged ({e}): restore it from a backup, or remove it to trust the gateways' keys anew",
                    path.display()
                ))
            }),
        }
    }

    /// The verifier key pinned for `gateway` and when it was first seen.
    fn pinned(&self, gateway: &str) -> Result<Option<(String, String)>, ConsoleError> {
        Ok(self.pins()?.get(gateway).and_then(|pin| {
            Some((
                pin["key"].as_str()?.to_string(),
                pin["first_seen"].as_str()?.to_string(),
            ))
        }))
    }

    /// Pin `key` for `gateway` (only once it verified something); when.
    fn pin(&self, gateway: &str, key: &str) -> Result<String, ConsoleError> {
        let mut pins = self.pins()?;
        let at = crate::local::now();
        pins.insert(gateway.to_string(), json!({ "key": key, "first_seen": at }));
        let path = self.pins_path();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&pins).unwrap_or_default();
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| ConsoleError::Invalid(format!("{}: {e}", path.display())))?;
        Ok(at)
    }

    /// The audit log's state: a checkpoint signed now, verified here with
    /// the gateway's key, and that key compared with the one first seen for
    /// the gateway (pinned the first time it verifies a checkpoint).
    pub async fn audit_state(&self) -> Result<AuditState, ConsoleError> {
        let acting = self.acting(Some(Persona::auditor())).await?;
        let answer: Value = acting.api.get_json("/api/v1/audit/checkpoint", &[]).await?;
        let note = answer["checkpoint"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = answer["verifier_key"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let opened = Verifier::parse(&key)
            .ok()
            .and_then(|v| v.open(&note).ok().map(str::to_string));
        let checkpoint = opened.as_deref().and_then(|t| Checkpoint::parse(t).ok());
        let gateway = acting.viewer.gateway.clone();
        let (key_changed, first_seen) = match self.pinned(&gateway)? {
            Some((pinned, at)) => (pinned != key, at),
            None if checkpoint.is_some() => (false, self.pin(&gateway, &key)?),
            None => (false, String::new()),
        };
        use base64::Engine;
        Ok(AuditState {
            gateway,
            origin: checkpoint
                .as_ref()
                .map(|c| c.origin.clone())
                .unwrap_or_default(),
            size: checkpoint.as_ref().map_or(0, |c| c.size),
            root: checkpoint
                .as_ref()
                .map(|c| base64::engine::general_purpose::STANDARD.encode(c.root))
                .unwrap_or_default(),
            signed_at: answer["signed_at"].as_str().unwrap_or_default().to_string(),
            signature_ok: checkpoint.is_some(),
            key_changed,
            verifier_key: key,
            key_first_seen: first_seen,
            checkpoint: note,
        })
    }

    fn export_progress(&self, progress: ExportProgress) {
        self.inner.host.emit(ConsoleEvent::Export { progress });
    }

    /// Export the evidence bundle for a window into `options.dir`: the
    /// gateway builds it (progress as events), the console downloads and
    /// unpacks it, then verifies its audit log itself with the key pinned
    /// for this gateway.
    pub async fn export_evidence(
        &self,
        options: ExportOptions,
    ) -> Result<ExportResult, ConsoleError> {
        if self.inner.exporting.swap(true, Ordering::SeqCst) {
            return Err(ConsoleError::Busy("exporting evidence"));
        }
        let _exporting = Reset(&self.inner.exporting);
        let result = self.export(options).await;
        match &result {
            Ok(done) => self.export_progress(ExportProgress {
                phase: "done".into(),
                stage: if done.verified_here {
                    "Exported and verified".into()
                } else {
                    "Exported; verification FAILED".into()
                },
                permille: 1000,
                bytes: done.bytes,
                result: Some(done.clone()),
                error: None,
            }),
            Err(e) => self.export_progress(ExportProgress {
                phase: "failed".into(),
                stage: "Export failed".into(),
                permille: 0,
                bytes: 0,
                result: None,
                error: Some(e.view()),
            }),
        }
        result
    }

    async fn export(&self, options: ExportOptions) -> Result<ExportResult, ConsoleError> {
        if options.dir.trim().is_empty() {
            return Err(ConsoleError::Invalid(
                "choose a folder for the bundle".into(),
            ));
        }
        let dir = PathBuf::from(options.dir.trim());
        let fail = |what: &Path, e: std::io::Error| {
            ConsoleError::Export(format!("{}: {e}", what.display()))
        };
        // The folder is new, or an empty real folder (not a link to one).
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {
                if std::fs::read_dir(&dir)
                    .map_err(|e| fail(&dir, e))?
                    .next()
                    .is_some()
                {
                    return Err(ConsoleError::Export(format!(
                        "{} is not empty: choose a new or empty folder",
                        dir.display()
                    )));
                }
            }
            Ok(_) => {
                return Err(ConsoleError::Export(format!(
                    "{} is not a folder: choose a new or empty folder",
                    dir.display()
                )));
            }
            Err(_) => {
                if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|e| fail(parent, e))?;
                }
                std::fs::create_dir(&dir).map_err(|e| fail(&dir, e))?;
            }
        }
        let acting = self.acting(Some(Persona::auditor())).await?;
        let body = json!({ "from": blank(&options.from), "to": blank(&options.to) });
        let started: Value = acting.api.post_json("/api/v1/evidence", &body).await?;
        let mut view: ExportView = serde_json::from_value(started["export"].clone())
            .map_err(|e| ConsoleError::Export(format!("the gateway's answer: {e}")))?;
        let id = view.id.clone();
        let deadline = tokio::time::Instant::now() + EXPORT_WITHIN;
        loop {
            let share = if view.stages == 0 {
                0.0
            } else {
                let within = if view.total == 0 {
                    0.0
                } else {
                    view.done as f64 / view.total as f64
                };
                (f64::from(view.stage_number.saturating_sub(1)) + within) / f64::from(view.stages)
            };
            self.export_progress(ExportProgress {
                phase: "exporting".into(),
                stage: format!("The gateway is {}", view.stage),
                // The gateway's part is the first 80 %.
                permille: (share.clamp(0.0, 1.0) * 800.0) as u32,
                bytes: 0,
                result: None,
                error: None,
            });
            match view.state.as_str() {
                "done" => break,
                "failed" => {
                    return Err(ConsoleError::Export(
                        view.error
                            .clone()
                            .unwrap_or_else(|| "the gateway gave no reason".into()),
                    ));
                }
                _ => {}
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ConsoleError::Export(format!(
                    "the gateway did not finish within {} minutes",
                    EXPORT_WITHIN.as_secs() / 60
                )));
            }
            tokio::time::sleep(POLL_EXPORT).await;
            let answer: Value = acting
                .api
                .get_json(&format!("/api/v1/evidence/{}", segment(&id)?), &[])
                .await?;
            view = serde_json::from_value(answer["export"].clone())
                .map_err(|e| ConsoleError::Export(format!("the gateway's answer: {e}")))?;
        }
        let summary = view
            .summary
            .clone()
            .ok_or_else(|| ConsoleError::Export("the gateway sent no summary".into()))?;
        let total = view.bundle_bytes.unwrap_or(0);
        if total > MAX_BUNDLE {
            return Err(ConsoleError::Export(format!(
                "the bundle is larger than {}",
                size(MAX_BUNDLE)
            )));
        }

        // Downloaded into the console's own folder (not the destination,
        // which the archive's entries fill), then unpacked.
        let downloads = self.inner.host.data_dir().join("downloads");
        std::fs::create_dir_all(&downloads).map_err(|e| fail(&downloads, e))?;
        let archive = downloads.join(format!("{}.tar", segment(&id)?));
        let _ = std::fs::remove_file(&archive);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&archive)
            .map_err(|e| fail(&archive, e))?;
        let mut bytes = 0u64;
        let mut last_shown = 0u64;
        let limit = if total > 0 { total } else { MAX_BUNDLE };
        let downloaded = acting
            .api
            .download(
                &format!("/api/v1/evidence/{}/bundle", segment(&id)?),
                |chunk| {
                    bytes += chunk.len() as u64;
                    if bytes > limit {
                        return Err(ConsoleError::Export(format!(
                            "the gateway sent more than the {} it announced",
                            size(limit)
                        )));
                    }
                    file.write_all(chunk).map_err(|e| fail(&archive, e))?;
                    if bytes - last_shown >= 256 * 1024 || bytes == total {
                        last_shown = bytes;
                        let share = if total == 0 {
                            1.0
                        } else {
                            bytes as f64 / total as f64
                        };
                        self.export_progress(ExportProgress {
                            phase: "downloading".into(),
                            stage: format!(
                                "Downloading the bundle ({} of {})",
                                size(bytes),
                                size(total)
                            ),
                            permille: 800 + (share.min(1.0) * 150.0) as u32,
                            bytes,
                            result: None,
                            error: None,
                        });
                    }
                    Ok(())
                },
            )
            .await;
        let synced = file.sync_all();
        drop(file);
        let cleanup = |r: Result<(), ConsoleError>| {
            if r.is_err() {
                let _ = std::fs::remove_file(&archive);
            }
            r
        };
        cleanup(downloaded)?;
        cleanup(synced.map_err(|e| fail(&archive, e)))?;
        if total != 0 && bytes != total {
            cleanup(Err(ConsoleError::Export(format!(
                "the download stopped at {} of {}",
                size(bytes),
                size(total)
            ))))?;
        }
        self.export_progress(ExportProgress {
            phase: "verifying".into(),
            stage: "Unpacking and verifying the audit log".into(),
            permille: 960,
            bytes,
            result: None,
            error: None,
        });
        let gateway = acting.viewer.gateway.clone();
        let (unpack_dir, archive2) = (dir.clone(), archive.clone());
        let unpacked = tokio::task::spawn_blocking(move || unpack(&archive2, &unpack_dir))
            .await
            .map_err(|e| ConsoleError::Export(e.to_string()));
        let _ = std::fs::remove_file(&archive);
        unpacked??;
        let bundle_key = std::fs::read_to_string(dir.join("audit/verifier-key.txt"))
            .map(|k| k.trim().to_string())
            .map_err(|e| ConsoleError::Export(format!("the bundle has no verifier key: {e}")))?;
        let pinned = self.pinned(&gateway)?;
        let key = pinned
            .as_ref()
            .map_or(bundle_key.clone(), |(k, _)| k.clone());
        let audit = dir.join("audit");
        let with = key.clone();
        let report =
            tokio::task::spawn_blocking(move || tollgate::audit::verify::verify_dir(&audit, &with))
                .await
                .map_err(|e| ConsoleError::Export(e.to_string()))?;
        let mut report_text = report.to_string();
        let key_pinned_now = pinned.is_none() && report.ok();
        match &pinned {
            Some((pinned, at)) if *pinned != bundle_key => {
                report_text = format!(
                    "The bundle's verifier key differs from the one this console first saw for {gateway} \
                     ({at}); it was verified with that one.\n\n{report_text}"
                );
            }
            None if key_pinned_now => {
                self.pin(&gateway, &bundle_key)?;
                report_text = format!(
                    "Verified with the bundle's own key, first seen now for {gateway} and pinned: compare it \
                     with the key the gateway's operator handed over.\n\n{report_text}"
                );
            }
            _ => {}
        }
        let _ = std::fs::write(dir.join("verification-console.txt"), &report_text);
        Ok(ExportResult {
            dir: dir.display().to_string(),
            summary,
            verified_here: report.ok() && key == bundle_key,
            key_pinned_now,
            report: report_text,
            verifier_key: key,
            bytes,
        })
    }
}

/// Largest bundle the console downloads.
const MAX_BUNDLE: u64 = 16 << 30;

/// How long the gateway may take to build a bundle.
const EXPORT_WITHIN: Duration = Duration::from_secs(2 * 3600);

/// Make the folder `dir/rel` and those above it under `dir`, each a real
/// folder: an existing link or file on the way fails.
fn ensure_dir(dir: &Path, rel: &Path) -> std::io::Result<()> {
    let mut at = dir.to_path_buf();
    for part in rel.components() {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(std::io::Error::other(format!(
                    "{} is in the way (not a folder)",
                    at.display()
                )));
            }
            Err(_) => std::fs::create_dir(&at)?,
        }
    }
    Ok(())
}

/// Unpack the bundle archive into `dir`: regular files and folders only,
/// every path inside `dir`, no file written twice or through a link
/// (anything else in the archive fails it).
fn unpack(archive: &Path, dir: &Path) -> Result<(), ConsoleError> {
    let fail = |e: std::io::Error| ConsoleError::Export(format!("the bundle archive: {e}"));
    std::fs::create_dir_all(dir).map_err(fail)?;
    let file = std::fs::File::open(archive).map_err(fail)?;
    let mut tar = tar::Archive::new(std::io::BufReader::new(file));
    for entry in tar.entries().map_err(fail)? {
        let mut entry = entry.map_err(fail)?;
        let path = entry.path().map_err(fail)?.into_owned();
        let Ok(inside) = path.strip_prefix("evidence") else {
            return Err(ConsoleError::Export(format!(
                "unexpected path in the bundle: {}",
                path.display()
            )));
        };
        if inside
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(ConsoleError::Export(format!(
                "unsafe path in the bundle: {}",
                path.display()
            )));
        }
        match entry.header().entry_type() {
            tar::EntryType::Directory => ensure_dir(dir, inside).map_err(fail)?,
            tar::EntryType::Regular => {
                if let Some(parent) = inside.parent() {
                    ensure_dir(dir, parent).map_err(fail)?;
                }
                let target = dir.join(inside);
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .map_err(|e| ConsoleError::Export(format!("{}: {e}", target.display())))?;
                std::io::copy(&mut entry, &mut out).map_err(fail)?;
            }
            other => {
                return Err(ConsoleError::Export(format!(
                    "the bundle holds a {other:?} entry ({}); only files and folders are accepted",
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

/// An id as one URL path segment (ids are base64url; anything else is refused).
fn segment(id: &str) -> Result<&str, ConsoleError> {
    if !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(id)
    } else {
        Err(ConsoleError::Invalid(format!(
            "{id:?} is not a session or export id"
        )))
    }
}

fn blank(v: &Option<String>) -> Value {
    match v.as_deref().map(str::trim) {
        None | Some("") => Value::Null,
        Some(v) => Value::from(v),
    }
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MB", bytes as f64 / f64::from(1 << 20))
    } else {
        format!("{} kB", bytes.div_ceil(1024))
    }
}

fn rfc3339(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    tollgate::clock::rfc3339(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_one_path_segment() {
        assert!(segment("aB3-_x").is_ok());
        for bad in ["", "../audit", "a/b", "a?b", "a%2Fb"] {
            assert!(segment(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unpacks_files_and_refuses_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        let made = std::cell::Cell::new(0);
        let make = |entries: &[(&str, tar::EntryType)]| {
            made.set(made.get() + 1);
            let path = dir.path().join(format!("{}.tar", made.get()));
            let mut builder = tar::Builder::new(std::fs::File::create(&path).unwrap());
            for (name, kind) in entries {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(*kind);
                header.set_size(if *kind == tar::EntryType::Regular {
                    2
                } else {
                    0
                });
                if *kind == tar::EntryType::Symlink {
                    header.set_link_name("/etc/passwd").unwrap();
                }
                header.set_mode(0o644);
                // Names written raw, as a hostile archive would.
                let bytes = name.as_bytes();
                header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
                header.set_cksum();
                builder
                    .append(
                        &header,
                        &b"ok"[..if *kind == tar::EntryType::Regular {
                            2
                        } else {
                            0
                        }],
                    )
                    .unwrap();
            }
            builder.finish().unwrap();
            path
        };
        let good = make(&[
            ("evidence/audit", tar::EntryType::Directory),
            ("evidence/audit/a.txt", tar::EntryType::Regular),
        ]);
        let out = dir.path().join("out");
        unpack(&good, &out).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("audit/a.txt")).unwrap(),
            "ok"
        );
        for hostile in [
            make(&[("evidence/../escape.txt", tar::EntryType::Regular)]),
            make(&[
                ("other/a.txt", tar::EntryType::Regular),
                ("x", tar::EntryType::Regular),
            ]),
            make(&[
                ("evidence/link", tar::EntryType::Symlink),
                ("a", tar::EntryType::Regular),
                ("b", tar::EntryType::Regular),
            ]),
        ] {
            let out = dir.path().join("hostile");
            assert!(unpack(&hostile, &out).is_err(), "{}", hostile.display());
        }
        assert!(!dir.path().join("escape.txt").exists());
        // A file twice: the second would overwrite the first.
        let twice = make(&[
            ("evidence/a.txt", tar::EntryType::Regular),
            ("evidence/a.txt", tar::EntryType::Regular),
            ("evidence/b.txt", tar::EntryType::Regular),
            ("evidence/c.txt", tar::EntryType::Regular),
        ]);
        assert!(unpack(&twice, &dir.path().join("twice")).is_err());
        // A link planted in the destination is not followed.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let planted = dir.path().join("planted");
        std::fs::create_dir(&planted).unwrap();
        std::os::unix::fs::symlink(&elsewhere, planted.join("audit")).unwrap();
        assert!(unpack(&good, &planted).is_err());
        assert!(
            std::fs::read_dir(&elsewhere).unwrap().next().is_none(),
            "written through a link"
        );
    }

    #[test]
    fn a_gateway_is_named_by_its_https_origin_and_sign_in_pages_are_web_pages() {
        assert_eq!(
            crate::oidc::origin("https://Gw.Example.com:6433/").unwrap(),
            "https://gw.example.com:6433"
        );
        for bad in [
            "http://gw:6433",
            "https://u:p@gw",
            "https://gw/api",
            "https://gw/?x=1",
            "gw:6433",
        ] {
            assert!(crate::oidc::origin(bad).is_err(), "{bad}");
        }
        let ok = |u: &str| crate::oidc::safe_url(&url::Url::parse(u).unwrap());
        assert!(
            ok("https://idp.example.com/auth")
                && ok("http://127.0.0.1:9000/auth")
                && ok("http://localhost/x")
        );
        for bad in [
            "http://idp.example.com/auth",
            "file:///etc/passwd",
            "smb://host/share",
            "javascript:alert(1)",
        ] {
            assert!(!ok(bad), "{bad}");
        }
    }
}
