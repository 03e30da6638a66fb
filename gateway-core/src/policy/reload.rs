//! Policy reload: a changed policy file is validated and swapped in; an
//! invalid one is refused and the policy in force stays.
//!
//! Sessions take the policy in force for each statement, so a reload
//! applies to the next statement of every open session without dropping it.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use super::{PolicyEngine, PolicyError};
use crate::audit::event::{Auditor, Event, Outcome};

/// The policy in force, shared by all sessions.
#[derive(Debug, Clone)]
pub struct PolicyHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    current: RwLock<Arc<PolicyEngine>>,
    files: Vec<PathBuf>,
    starter: bool,
}

impl PolicyHandle {
    /// Wrap an engine; a reload reads `files` (and the built-in starter
    /// policy when `starter`).
    pub fn new(engine: PolicyEngine, files: Vec<PathBuf>, starter: bool) -> PolicyHandle {
        PolicyHandle {
            inner: Arc::new(Inner {
                current: RwLock::new(Arc::new(engine)),
                files,
                starter,
            }),
        }
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<PolicyEngine> {
        self.inner
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-read the files; swap the new policy in if it is valid.
    pub fn reload(&self) -> Result<Arc<PolicyEngine>, PolicyError> {
        let engine = Arc::new(PolicyEngine::load(&self.inner.files, self.inner.starter)?);
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = engine.clone();
        Ok(engine)
    }

    /// Watch the files and reload when one changes (checked every `every`);
    /// each reload, applied or refused, is an audit event when `auditor` is given.
    /// Stops when the last handle is dropped.
    pub fn watch(&self, every: Duration, auditor: Option<Auditor>) {
        let weak = Arc::downgrade(&self.inner);
        let files = self.inner.files.clone();
        tokio::spawn(async move {
            let stamp = |files: &[PathBuf]| -> Vec<Option<(SystemTime, u64)>> {
                files
                    .iter()
                    .map(|f| {
                        std::fs::metadata(f)
                            .ok()
                            .and_then(|m| Some((m.modified().ok()?, m.len())))
                    })
                    .collect()
            };
            let mut seen = stamp(&files);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let now = stamp(&files);
                if now == seen {
                    continue;
                }
                seen = now;
                let handle = PolicyHandle { inner };
                let before = handle.current().digest().to_string();
                let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
                let event = match handle.reload() {
                    Ok(engine) if engine.digest() != before => {
                        tracing::info!(
                            target: "tollgate::audit",
                            event = "policy.reloaded",
                            policies = engine.len(),
                            digest = engine.digest(),
                            previous = %before,
                        );
                        Event::new("policy.reloaded", Outcome::Success)
                            .resource(serde_json::json!({ "policy_files": files }))
                            .with("digest", engine.digest())
                            .with("previous", before)
                            .with("policies", engine.len())
                    }
                    Ok(_) => continue,
                    Err(error) => {
                        tracing::error!(
                            target: "tollgate::audit",
                            event = "policy.reload_refused",
                            kept = %before,
                            "the changed policy is not valid, the policy in force stays:\n{error}"
                        );
                        Event::new("policy.reloaded", Outcome::Refused)
                            .resource(serde_json::json!({ "policy_files": files }))
                            .with("kept", before)
                            .with("reason", error.to_string())
                    }
                };
                if let Some(auditor) = &auditor {
                    auditor.record_later(event);
                }
            }
        });
    }
}
