//! Session recording: every session, whatever its protocol, as ordered
//! frames with monotonic timestamps in one store, and its security events
//! in the audit log.
//!
//! This module is the protocol-neutral half: the store, a session's place
//! in it ([`SessionTap`]), and [`Session`], which writes what every session
//! has (its header row with its `protocol`, the `connect`, `masking` and
//! `disconnect` frames, the session's audit events) and gates each request
//! on its audit record being durable: a request goes upstream only once its
//! record is, and if the audit log or the store cannot be written it is
//! refused ([`Reason::AuditUnavailable`], PCI DSS 10.7). Each adapter's
//! recorder (`pg::record`) adds its own frames (statements and results).
//!
//! | frame | when | holds |
//! |---|---|---|
//! | `connect` | session established | identity, client address, connection, protocol, the adapter's extras (PostgreSQL: application_name, TLS) |
//! | `masking` | session end | values masked per column/place and detector |
//! | `disconnect` | session end | reason |

pub mod asciicast;
pub mod digest;
pub mod retention;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use serde_json::{Value, json};

use crate::audit::event::{Auditor, Event, Outcome, actor};
use crate::audit::log::AuditError;
use crate::identity::{Identity, PrincipalKind};
use crate::masking::for_record;
use crate::stage::{Reason, Refusal, Ruling};
use store::{Frame, SessionRow, Store};

/// What every recorded session shares.
#[derive(Debug)]
pub struct Recording {
    /// The audit log.
    pub auditor: Auditor,
    /// The recording store.
    pub store: Store,
    /// Rows kept (masked) as each result's preview.
    pub preview_rows: usize,
    /// The key of the result digests (never in a record or the evidence).
    pub digest_key: digest::DigestKey,
    /// The statement text as records keep it: the protocol adapter replaces
    /// every literal by a placeholder, so no value of the caller's (a card
    /// number in a WHERE clause, a password in ALTER ROLE) is recorded.
    pub redact: fn(&str) -> String,
}

/// One session's place in the store: its id and frame counter, shared by
/// the recorder and whoever else adds a frame (the cancel path).
#[derive(Debug)]
pub struct SessionTap {
    /// The session id (random 128 bits, base64url).
    pub id: String,
    store: Store,
    seq: AtomicU64,
    started: Instant,
}

impl SessionTap {
    /// Add a frame now.
    pub fn frame(&self, kind: &str, body: Value) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.store.frame(
            &self.id,
            Frame {
                seq,
                at_us: self.started.elapsed().as_micros() as u64,
                kind: kind.to_string(),
                body,
            },
        );
    }
}

pub use crate::id::session as session_id;

/// The current time as RFC 3339 UTC, and as Unix milliseconds.
fn now() -> (String, i64) {
    let t = SystemTime::now();
    (crate::clock::rfc3339(t), crate::clock::unix_ms(t))
}

/// One recorded session of any protocol: who, from where, on which
/// connection; its frames and audit events.
pub struct Session {
    shared: Arc<Recording>,
    tap: Arc<SessionTap>,
    actor: Value,
    subject: String,
    kind: PrincipalKind,
    origin: String,
    connection: String,
    protocol: &'static str,
}

impl Session {
    /// A session (`id`, from [`session_id`]) of `identity` from `client` on
    /// `connection`, speaking `protocol` (`postgres`, `mcp`).
    pub fn new(
        id: String,
        shared: Arc<Recording>,
        identity: &Identity,
        client: SocketAddr,
        connection: &str,
        protocol: &'static str,
    ) -> Session {
        let tap = Arc::new(SessionTap {
            id,
            store: shared.store.clone(),
            seq: AtomicU64::new(0),
            started: Instant::now(),
        });
        Session {
            shared,
            tap,
            actor: actor(identity),
            subject: identity.subject.clone(),
            kind: identity.kind,
            origin: client.to_string(),
            connection: connection.to_string(),
            protocol,
        }
    }

    /// What every recorded session shares.
    pub fn shared(&self) -> &Recording {
        &self.shared
    }

    /// The session's tap (its id, and a way to add frames from elsewhere).
    pub fn tap(&self) -> Arc<SessionTap> {
        self.tap.clone()
    }

    /// The session id.
    pub fn id(&self) -> &str {
        &self.tap.id
    }

    /// The connection name.
    pub fn connection(&self) -> &str {
        &self.connection
    }

    /// Add a frame now.
    pub fn frame(&self, kind: &str, body: Value) {
        self.tap.frame(kind, body);
    }

    /// An audit event of this session: its actor, origin, session id and protocol.
    pub fn event(&self, kind: &str, outcome: Outcome) -> Event {
        Event::new(kind, outcome)
            .with("actor", self.actor.clone())
            .origin(&self.origin)
            .with("session", self.tap.id.clone())
            .with("protocol", self.protocol)
    }

    /// Put an audit event in the log without waiting for it.
    pub fn record_later(&self, event: Event) {
        self.shared.auditor.record_later(event);
    }

    /// The session is established upstream: its header row, its `connect`
    /// frame (with the adapter's `extra` fields) and `session.start`.
    pub fn started(&self, extra: serde_json::Map<String, Value>, tls: bool) {
        let (started_at, started_ms) = now();
        self.shared.store.session(
            SessionRow {
                id: self.tap.id.clone(),
                started_at,
                ended_at: None,
                subject: self.subject.clone(),
                kind: match self.kind {
                    PrincipalKind::Person => "person".into(),
                    PrincipalKind::Agent => "agent".into(),
                },
                connection: self.connection.clone(),
                client: self.origin.clone(),
                protocol: self.protocol.to_string(),
            },
            started_ms,
        );
        let mut frame = serde_json::Map::new();
        frame.insert("identity".into(), self.actor.clone());
        frame.insert("client".into(), Value::from(self.origin.clone()));
        frame.insert("connection".into(), Value::from(self.connection.clone()));
        frame.insert("protocol".into(), Value::from(self.protocol));
        frame.extend(extra);
        self.tap.frame("connect", Value::Object(frame));
        let event = self
            .event("session.start", Outcome::Success)
            .resource(json!({ "connection": self.connection }))
            .with("tls", tls);
        self.record_later(event);
    }

    /// The session ended: what was masked in it, its `disconnect` frame and `session.end`.
    pub fn ended(&self, reason: Option<&str>, masked: Option<&crate::masking::Counts>) {
        if let Some(counts) = masked {
            let masked: Vec<Value> = counts
                .iter()
                .map(|(place, detector, count)| {
                    json!({ "place": place, "detector": detector.as_str(), "count": count })
                })
                .collect();
            if !masked.is_empty() {
                self.tap.frame("masking", json!({ "masked": masked }));
                let event = self
                    .event("masking", Outcome::Success)
                    .resource(json!({ "connection": self.connection }))
                    .with("masked", masked);
                self.record_later(event);
            }
        }
        self.tap
            .frame("disconnect", json!({ "reason": reason.map(for_record) }));
        self.shared.store.ended(&self.tap.id, now().0);
        let event = self
            .event("session.end", Outcome::Success)
            .resource(json!({ "connection": self.connection }))
            .with("reason", reason.map(for_record));
        self.record_later(event);
    }

    /// Refuse every request while the recording store cannot be written.
    pub fn unwritable(&self) -> Option<Refusal> {
        if self.shared.store.healthy() {
            return None;
        }
        Some(Refusal::new(
            Reason::AuditUnavailable,
            format!(
                "the gateway's session recording store ({}) cannot be written, so requests are refused until it \
                 can (PCI DSS 10.7); ask the gateway's operator to check it",
                self.shared.store.target()
            ),
        ))
    }

    /// Make a request's audit record durable; the request may go upstream
    /// once [`Durable::outcome`] says so.
    pub fn submit(&self, event: Event) -> (Durable, Pin<Box<dyn Future<Output = ()> + Send>>) {
        let written = Arc::new(Mutex::new(None));
        let slot = written.clone();
        let durable = self.shared.auditor.submit(event);
        let wait = Box::pin(async move {
            let result = durable.await;
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        });
        (Durable { written }, wait)
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.tap.id)
            .field("subject", &self.subject)
            .field("kind", &self.kind)
            .field("protocol", &self.protocol)
            .finish()
    }
}

/// A request's audit record on its way to the log.
#[derive(Debug)]
pub struct Durable {
    written: Arc<Mutex<Option<Result<u64, AuditError>>>>,
}

impl Durable {
    /// The write has finished (durably or not).
    pub fn settled(&self) -> bool {
        self.written.lock().map(|w| w.is_some()).unwrap_or(true)
    }

    /// Resolves once the write has finished (for a wake before it did).
    pub fn until_settled(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let written = self.written.clone();
        Box::pin(async move {
            while written.lock().map(|w| w.is_none()).unwrap_or(false) {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        })
    }

    /// The record's sequence number in the log, or the refusal of a
    /// request whose record is not durable (it must not run).
    pub fn outcome(&self) -> Result<u64, Refusal> {
        match self
            .written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            Some(Ok(seq)) => Ok(seq),
            Some(Err(error)) => Err(Refusal::new(
                Reason::AuditUnavailable,
                format!(
                    "the gateway's audit log cannot be written ({error}), so requests are refused until it can \
                     (PCI DSS 10.7); ask the gateway's operator to check the audit directory"
                ),
            )),
            None => Err(Refusal::new(
                Reason::AuditUnavailable,
                "the gateway lost track of the request's audit record; it was not run",
            )),
        }
    }
}

/// A request's audit event with what the policy stage made of it (its
/// actions, whether it touched cardholder data, the deciding policy, the
/// approval or grant that let it through) and, when refused, why.
pub fn with_ruling(mut event: Event, ruling: Option<&Ruling>, message: &str) -> Event {
    if let Some(ruling) = ruling {
        event = event
            .with("actions", json!(ruling.actions))
            .with("cardholder_data", ruling.cardholder)
            .with("policy", json!(ruling.policy));
        if ruling.approval.is_some() {
            event = event.with("approval", json!(ruling.approval));
        }
        if ruling.grant.is_some() {
            event = event.with("grant", json!(ruling.grant));
        }
    }
    if !message.is_empty() {
        event = event.with("reason", for_record(message));
    }
    event
}

/// A request's frame fields for what the policy stage made of it.
pub fn ruling_fields(frame: &mut Value, ruling: &Ruling) {
    frame["actions"] = json!(ruling.actions);
    frame["resources"] = json!(ruling.resources);
    frame["cardholder"] = Value::from(ruling.cardholder);
    frame["policy"] = json!(ruling.policy);
    frame["approval"] = json!(ruling.approval);
    if let Some(grant) = &ruling.grant {
        frame["grant"] = json!(grant);
    }
    if let Some(state) = &ruling.approval_state {
        frame["approval_state"] = json!(state);
        frame["approved_by"] = json!(ruling.decided_by);
    }
}

/// A refused request's frame fields: its reason, the adapter's code for it
/// (`code_field`, e.g. `sqlstate`) and the message the caller got.
pub fn refusal_fields(frame: &mut Value, refusal: &Refusal, code_field: &str, code: Value) {
    frame["decision"] = Value::from("refused");
    frame["reason"] = Value::from(refusal.reason.as_str());
    frame[code_field] = code;
    frame["message"] = Value::from(for_record(&refusal.message));
}
