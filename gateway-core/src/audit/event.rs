//! Audit events: what a record holds and who writes it.
//!
//! Every record carries the fields PCI DSS 10.2.2 asks for:
//!
//! | field | 10.2.2 | holds |
//! |---|---|---|
//! | `actor` | user identification | subject, issuer, groups, MFA, person or agent; `gateway` for its own events |
//! | `event` | type of event | `login`, `session.start`, `statement`, `audit.read` ... |
//! | `time` | date and time | RFC 3339, UTC, set by the log's writer (non-decreasing) |
//! | `outcome` | success or failure | `success`, `failure` or `refused` |
//! | `origin` | origination | the client's address, or `gateway` |
//! | `resource` | affected data, component or resource | connection, tables, file |
//!
//! Values that could carry card data or secrets never reach a record in
//! clear: statement texts are normalised (every literal becomes `$n`) by the
//! protocol adapter, messages pass through the record mask.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value};

use super::log::{AuditError, AuditLog};
use crate::identity::Identity;

/// The outcome of an audited event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It happened.
    Success,
    /// It was tried and failed (bad token, upstream error ...).
    Failure,
    /// The gateway refused it (policy, masking, fail-closed).
    Refused,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Refused => "refused",
        }
    }
}

/// One audit record being built.
#[derive(Debug, Clone)]
pub struct Event(Map<String, Value>);

impl Event {
    /// An event of `kind` with its outcome.
    pub fn new(kind: &str, outcome: Outcome) -> Event {
        let mut map = Map::new();
        map.insert("event".into(), Value::from(kind));
        map.insert("outcome".into(), Value::from(outcome.as_str()));
        map.insert("actor".into(), serde_json::json!({ "subject": "gateway" }));
        map.insert("origin".into(), Value::from("gateway"));
        Event(map)
    }

    /// Who did it.
    pub fn actor(mut self, identity: &Identity) -> Event {
        self.0.insert("actor".into(), actor(identity));
        self
    }

    /// Who tried it, when the identity is not established (a failed login).
    pub fn claimed_actor(mut self, user: &str) -> Event {
        self.0.insert(
            "actor".into(),
            serde_json::json!({ "subject": null, "claimed_user": crate::masking::for_record(user) }),
        );
        self
    }

    /// Where it came from.
    pub fn origin(mut self, origin: impl std::fmt::Display) -> Event {
        self.0
            .insert("origin".into(), Value::from(origin.to_string()));
        self
    }

    /// What it touched.
    pub fn resource(mut self, resource: Value) -> Event {
        self.0.insert("resource".into(), resource);
        self
    }

    /// Any other field.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Event {
        self.0.insert(key.into(), value.into());
        self
    }

    /// The record as it will be written (without `seq` and `time`).
    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }
}

/// The `actor` object of an identity.
pub fn actor(identity: &Identity) -> Value {
    serde_json::json!({
        "subject": identity.subject,
        "issuer": identity.issuer,
        "groups": identity.groups,
        "mfa": identity.mfa,
        "kind": identity.kind,
    })
}

/// The gateway's handle on the audit log, shared by every stage.
///
/// Tracks the log's health so that a failed write makes the next statement
/// refuse at once (PCI DSS 10.7) rather than after another failed write.
#[derive(Debug, Clone)]
pub struct Auditor {
    log: AuditLog,
    healthy: Arc<AtomicBool>,
}

impl Auditor {
    /// Write through `log`.
    pub fn new(log: AuditLog) -> Auditor {
        Auditor {
            log,
            healthy: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The log underneath.
    pub fn log(&self) -> &AuditLog {
        &self.log
    }

    /// Append and wait until the record is durable; returns its sequence number.
    pub async fn record(&self, event: Event) -> Result<u64, AuditError> {
        self.submit(event).await
    }

    /// Queue a record now (records keep the order of the calls); the
    /// future resolves with its sequence number once it is durable.
    pub fn submit(
        &self,
        event: Event,
    ) -> impl std::future::Future<Output = Result<u64, AuditError>> + Send + 'static {
        let durable = self.log.submit(event.into_map());
        let healthy = self.healthy.clone();
        async move {
            let result = durable.await;
            healthy.store(result.is_ok(), Ordering::Relaxed);
            if let Err(error) = &result {
                tracing::error!(target: "tollgate::audit", %error, "audit record could not be written");
            }
            result
        }
    }

    /// Queue a record without waiting for it (events that gate nothing, such
    /// as a session's end). A failure is logged and marks the log unhealthy.
    pub fn record_later(&self, event: Event) {
        tokio::spawn(self.submit(event));
    }

    /// Whether the last write succeeded.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}
