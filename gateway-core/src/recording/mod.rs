//! Session recording: every session as ordered frames with monotonic
//! timestamps, and the session's security events in the audit log.
//!
//! [`Recorder`] is the outermost hook of a session, so it sees each
//! statement's final decision (after policy, masking and approvals) and
//! each result value both as the upstream sent it (for the result digest)
//! and as the client gets it (for the masked preview). A statement goes
//! upstream only once its audit record is durable; if the audit log or the
//! recording store cannot be written, it is refused (PCI DSS 10.7).
//!
//! | frame | when | holds |
//! |---|---|---|
//! | `connect` | session established | identity, client address, application_name, TLS |
//! | `statement` | each Query or Parse decided | normalised text, decision, actions, resources, deciding policy, audit sequence number |
//! | `result` | each command completed | tag, columns, rows, bytes, duration, SHA-256 of the unmasked rows, masked preview |
//! | `error` | the upstream answered with an error | SQLSTATE, masked message |
//! | `cancel` | a cancel request for the session | |
//! | `masking` | session end | values masked per column/place and detector |
//! | `disconnect` | session end | reason |

pub mod asciicast;
pub mod digest;
pub mod retention;
pub mod store;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use hmac::Mac;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::audit::event::{Auditor, Event, Outcome, actor};
use crate::audit::log::AuditError;
use crate::identity::{Identity, PrincipalKind};
use crate::masking::for_record;
use crate::pg::hooks::{
    CopyOrigin, Decision, Reason, ResultColumn, SessionEvent, SessionHooks, Statement,
    StatementVia, ValueSource, Verdict,
};
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

/// A statement whose audit record is being made durable.
struct Pending {
    decision: Decision,
    frame: Value,
    written: Arc<Mutex<Option<Result<u64, AuditError>>>>,
}

/// A result being summed up.
struct Result_ {
    columns: Vec<String>,
    binary: Vec<bool>,
    rows: u64,
    bytes: u64,
    digest: hmac::Hmac<Sha256>,
    preview: Vec<Vec<Value>>,
    /// Row bytes taken into the preview.
    preview_bytes: u64,
    /// The row being received is in the preview.
    previewing: bool,
    copy: bool,
}

/// How much of each result a session keeps (masked) in its frames.
#[derive(Debug, Clone, Copy)]
struct Keep {
    /// Always the first rows.
    rows: usize,
    /// Opted in: every row, up to this many bytes per result.
    bytes: u64,
}

impl Result_ {
    fn new(key: &digest::DigestKey, columns: Vec<String>, binary: Vec<bool>) -> Result_ {
        Result_ {
            columns,
            binary,
            rows: 0,
            bytes: 0,
            digest: key.start(),
            preview: Vec::new(),
            preview_bytes: 0,
            previewing: false,
            copy: false,
        }
    }

    /// Count a row (as the upstream sent it) into the digest and, while the
    /// preview has room, open a preview row for its (masked) values.
    fn row(&mut self, raw: &[u8], keep: Keep) {
        self.rows += 1;
        self.bytes += raw.len() as u64;
        self.digest.update(&(raw.len() as u32).to_be_bytes());
        self.digest.update(raw);
        let room = self.rows as usize <= keep.rows
            || (self.preview.len() as u64 + 1 == self.rows
                && self.preview_bytes + raw.len() as u64 <= keep.bytes);
        self.previewing = room;
        if room {
            self.preview_bytes += raw.len() as u64;
            // A COPY row has no columns: it is one value.
            let width = self.columns.len().max(1);
            self.preview.push(vec![Value::Null; width]);
        }
    }
}

/// The recording hook of one session; the other hooks run inside it.
pub struct Recorder {
    shared: Arc<Recording>,
    inner: Box<dyn SessionHooks>,
    tap: Arc<SessionTap>,
    actor: Value,
    subject: String,
    kind: PrincipalKind,
    connection: String,
    origin: String,
    pending: Option<Pending>,
    /// The last statement was refused here; the relay's Refused event for it
    /// is already recorded.
    refused_here: bool,
    /// When the running statement or Execute went upstream.
    running_since: Option<Instant>,
    columns: Vec<String>,
    binary: Vec<bool>,
    result: Option<Result_>,
    keep: Keep,
    /// Values masked in the session up to the last result frame.
    masked_before: u64,
}

impl Recorder {
    /// Record a session (`id`, from [`session_id`]) of `identity` from `client` on `connection`,
    /// keeping whole results up to `full_results_bytes` each (0: only the
    /// configured preview rows).
    pub fn new(
        id: String,
        shared: Arc<Recording>,
        inner: Box<dyn SessionHooks>,
        identity: &Identity,
        client: SocketAddr,
        connection: &str,
        full_results_bytes: u64,
    ) -> Recorder {
        let tap = Arc::new(SessionTap {
            id,
            store: shared.store.clone(),
            seq: AtomicU64::new(0),
            started: Instant::now(),
        });
        let keep = Keep {
            rows: shared.preview_rows,
            bytes: full_results_bytes,
        };
        Recorder {
            keep,
            shared,
            inner,
            tap,
            actor: actor(identity),
            subject: identity.subject.clone(),
            kind: identity.kind,
            connection: connection.to_string(),
            origin: client.to_string(),
            pending: None,
            refused_here: false,
            running_since: None,
            columns: Vec::new(),
            binary: Vec::new(),
            result: None,
            masked_before: 0,
        }
    }

    /// The session's tap (its id, and a way to add frames from elsewhere).
    pub fn tap(&self) -> Arc<SessionTap> {
        self.tap.clone()
    }

    fn audit_event(&self, kind: &str, outcome: Outcome) -> Event {
        Event::new(kind, outcome)
            .with("actor", self.actor.clone())
            .origin(&self.origin)
            .with("session", self.tap.id.clone())
    }

    /// Decide (through the inner hooks), then make the audit record durable.
    fn begin(&mut self, statement: &Statement<'_>) -> Verdict {
        if !self.shared.store.healthy() {
            let message = format!(
                "the gateway's session recording store ({}) cannot be written, so statements are refused until it \
                 can (PCI DSS 10.7); ask the gateway's operator to check it",
                self.shared.store.target()
            );
            let text = (self.shared.redact)(statement.sql);
            let event = self.statement_event(&text, Outcome::Refused, None, &message);
            self.shared.auditor.record_later(event);
            self.refused_here = true;
            return Verdict::Decided(Decision::refuse(Reason::AuditUnavailable, message));
        }
        let decision = match self.inner.statement(statement) {
            Verdict::Decided(decision) => decision,
            waiting => return waiting,
        };
        let ruling = self.inner.ruling();
        let (outcome, message) = match &decision {
            Decision::Forward => (Outcome::Success, String::new()),
            Decision::Refuse(refusal) => (Outcome::Refused, refusal.message.clone()),
        };
        let text = (self.shared.redact)(statement.sql);
        let mut frame = json!({
            "text": text,
            "decision": if outcome == Outcome::Success { "allowed" } else { "refused" },
            "approval": null,
        });
        match statement.via {
            StatementVia::Parse { name } => frame["prepared"] = Value::from(name),
            StatementVia::Execute {
                statement,
                execution,
            } => {
                frame["prepared"] = Value::from(statement);
                frame["execution"] = Value::from(execution);
            }
            StatementVia::SimpleQuery => {}
        }
        if let Some(ruling) = &ruling {
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
        if let Decision::Refuse(refusal) = &decision {
            frame["reason"] = Value::from(refusal.reason.as_str());
            frame["sqlstate"] = Value::from(crate::pg::error::sqlstate(refusal.reason));
            frame["message"] = Value::from(for_record(&message));
        }
        let event = self.statement_event(&text, outcome, ruling.as_ref(), &message);
        let written = Arc::new(Mutex::new(None));
        let slot = written.clone();
        let durable = self.shared.auditor.submit(event);
        self.pending = Some(Pending {
            decision,
            frame,
            written,
        });
        Verdict::Wait(Box::pin(async move {
            let result = durable.await;
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        }))
    }

    /// The audit record is durable (or failed): deliver the decision.
    fn finish(&mut self, pending: Pending) -> Verdict {
        let Pending {
            decision,
            mut frame,
            written,
        } = pending;
        let written = written.lock().unwrap_or_else(|e| e.into_inner()).take();
        let decision = match written {
            Some(Ok(seq)) => {
                frame["audit_seq"] = Value::from(seq);
                decision
            }
            Some(Err(error)) => {
                let message = format!(
                    "the gateway's audit log cannot be written ({error}), so statements are refused until it can \
                     (PCI DSS 10.7); ask the gateway's operator to check the audit directory"
                );
                let reason = Reason::AuditUnavailable;
                frame["decision"] = Value::from("refused");
                frame["reason"] = Value::from(reason.as_str());
                frame["sqlstate"] = Value::from(crate::pg::error::sqlstate(reason));
                frame["message"] = Value::from(for_record(&message));
                Decision::refuse(reason, message)
            }
            None => Decision::refuse(
                Reason::AuditUnavailable,
                "the gateway lost track of the statement's audit record; it was not run",
            ),
        };
        self.tap.frame("statement", frame);
        match decision {
            Decision::Forward => self.running_since = Some(Instant::now()),
            Decision::Refuse(_) => self.refused_here = true,
        }
        Verdict::Decided(decision)
    }

    /// The audit record of a statement whose recorded text is `text`.
    fn statement_event(
        &self,
        text: &str,
        outcome: Outcome,
        ruling: Option<&crate::pg::hooks::Ruling>,
        message: &str,
    ) -> Event {
        let mut event = self
            .audit_event("statement", outcome)
            .resource(json!({
                "connection": self.connection,
                "objects": ruling.map(|r| r.resources.clone()).unwrap_or_default(),
            }))
            .with("statement", text);
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

    fn result(&mut self) -> &mut Result_ {
        let columns = &self.columns;
        let binary = &self.binary;
        let key = &self.shared.digest_key;
        self.result
            .get_or_insert_with(|| Result_::new(key, columns.clone(), binary.clone()))
    }

    /// Write the open result's frame.
    fn close_result(&mut self, tag: Option<&str>) {
        let Some(result) = self.result.take() else {
            return;
        };
        let duration = self
            .running_since
            .map_or(0, |t| t.elapsed().as_micros() as u64);
        let digest = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(result.digest.finalize().into_bytes())
        };
        let masked_total = self.inner.masking_counts().map_or(0, |c| c.total());
        let masked = masked_total.saturating_sub(self.masked_before);
        self.masked_before = masked_total;
        self.tap.frame(
            "result",
            json!({
                "tag": tag,
                "columns": result.columns,
                "rows": result.rows,
                "bytes": result.bytes,
                "duration_us": duration,
                "hmac_sha256": digest,
                "copy": result.copy,
                "masked": masked,
                "preview_complete": result.preview.len() as u64 == result.rows,
                "preview": result.preview,
            }),
        );
    }

    fn preview_cell(&mut self, column: usize, value: Option<&[u8]>) {
        let Some(result) = self.result.as_mut() else {
            return;
        };
        if !result.previewing {
            return;
        }
        let binary = result.binary.get(column).copied().unwrap_or(false);
        if let Some(row) = result.preview.last_mut()
            && let Some(cell) = row.get_mut(column)
        {
            *cell = match value {
                None => Value::Null,
                Some(v) if binary => Value::from(format!("<binary, {} bytes>", v.len())),
                Some(v) => Value::from(for_record(&String::from_utf8_lossy(v))),
            };
        }
    }
}

impl SessionHooks for Recorder {
    fn statement(&mut self, statement: &Statement<'_>) -> Verdict {
        match self.pending.take() {
            // Asked again after the audit wait: the same statement.
            Some(pending) if pending.written.lock().map(|w| w.is_some()).unwrap_or(true) => {
                self.finish(pending)
            }
            Some(pending) => {
                // Woken before the write finished (cannot happen with the
                // relay's contract, but never forward unaudited).
                let written = pending.written.clone();
                self.pending = Some(pending);
                Verdict::Wait(Box::pin(async move {
                    while written.lock().map(|w| w.is_none()).unwrap_or(false) {
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                }))
            }
            None => self.begin(statement),
        }
    }

    fn ready(&mut self, status: u8) {
        // A portal suspended or an error ended the result without a tag.
        self.close_result(None);
        self.inner.ready(status);
    }

    fn reading_may_change(&self) -> bool {
        self.inner.reading_may_change()
    }

    fn columns_allowed(&mut self, columns: &[ResultColumn]) -> Result<(), String> {
        self.inner.columns_allowed(columns)
    }

    fn result_columns(&mut self, columns: Option<&[ResultColumn]>) {
        self.columns = columns
            .map(|c| c.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default();
        self.binary = columns
            .map(|c| c.iter().map(|c| c.binary).collect())
            .unwrap_or_default();
        if let Some(result) = self.result.as_mut()
            && result.rows == 0
        {
            result.columns = self.columns.clone();
            result.binary = self.binary.clone();
        }
        self.inner.result_columns(columns);
    }

    fn copy_out(&mut self, origin: Option<CopyOrigin<'_>>, columns: usize, binary: bool) {
        self.close_result(None);
        self.columns = Vec::new();
        self.binary = vec![binary];
        self.result().copy = true;
        self.inner.copy_out(origin, columns, binary);
    }

    fn data_row(&mut self, row: &[u8]) {
        let keep = self.keep;
        self.result().row(row, keep);
        self.inner.data_row(row);
    }

    fn result_value<'v>(&mut self, source: ValueSource, value: &'v [u8]) -> Option<Cow<'v, [u8]>> {
        if source == ValueSource::CopyRow {
            let keep = self.keep;
            self.result().row(value, keep);
        }
        let out = self.inner.result_value(source, value);
        match source {
            ValueSource::Cell { column } => self.preview_cell(column, out.as_deref()),
            ValueSource::CopyRow => self.preview_cell(0, out.as_deref()),
            _ => {}
        }
        out
    }

    fn inspects_values(&self) -> bool {
        true
    }

    fn event(&mut self, event: &SessionEvent<'_>) {
        match event {
            SessionEvent::Connected {
                identity,
                client,
                connection,
                application_name,
                tls,
            } => {
                let (started_at, started_ms) = now();
                self.shared.store.session(
                    SessionRow {
                        id: self.tap.id.clone(),
                        started_at,
                        ended_at: None,
                        subject: identity.subject.clone(),
                        kind: match identity.kind {
                            PrincipalKind::Person => "person".into(),
                            PrincipalKind::Agent => "agent".into(),
                        },
                        connection: connection.to_string(),
                        client: client.to_string(),
                    },
                    started_ms,
                );
                self.tap.frame(
                    "connect",
                    json!({
                        "identity": self.actor,
                        "client": client.to_string(),
                        "connection": connection,
                        "application_name": application_name.map(for_record),
                        "tls": tls,
                    }),
                );
                let event = self
                    .audit_event("session.start", Outcome::Success)
                    .resource(json!({ "connection": connection }))
                    .with("tls", *tls);
                self.shared.auditor.record_later(event);
            }
            SessionEvent::Refused { sql, message } => {
                if self.refused_here {
                    self.refused_here = false;
                } else {
                    // Refused by the protocol adapter itself (e.g. FunctionCall).
                    let text = (self.shared.redact)(sql);
                    self.tap.frame(
                        "statement",
                        json!({
                            "text": text,
                            "decision": "refused",
                            "message": for_record(message),
                        }),
                    );
                    let event = self.statement_event(&text, Outcome::Refused, None, message);
                    self.shared.auditor.record_later(event);
                }
            }
            SessionEvent::CancelRequested => self.tap.frame("cancel", json!({})),
            SessionEvent::Executing => self.running_since = Some(Instant::now()),
            SessionEvent::Failed { sqlstate, message } => {
                self.result = None;
                let message = for_record(message);
                self.tap
                    .frame("error", json!({ "sqlstate": sqlstate, "message": message }));
                let event = self
                    .audit_event("statement.error", Outcome::Failure)
                    .resource(json!({ "connection": self.connection }))
                    .with("sqlstate", *sqlstate)
                    .with("reason", message);
                self.shared.auditor.record_later(event);
            }
            SessionEvent::Disconnected { reason } => {
                self.close_result(None);
                if let Some(counts) = self.inner.masking_counts() {
                    let masked: Vec<Value> = counts
                        .iter()
                        .map(|(place, detector, count)| {
                            json!({ "place": place, "detector": detector.as_str(), "count": count })
                        })
                        .collect();
                    if !masked.is_empty() {
                        self.tap.frame("masking", json!({ "masked": masked }));
                        let event = self
                            .audit_event("masking", Outcome::Success)
                            .resource(json!({ "connection": self.connection }))
                            .with("masked", masked);
                        self.shared.auditor.record_later(event);
                    }
                }
                self.tap
                    .frame("disconnect", json!({ "reason": reason.map(for_record) }));
                self.shared.store.ended(&self.tap.id, now().0);
                let event = self
                    .audit_event("session.end", Outcome::Success)
                    .resource(json!({ "connection": self.connection }))
                    .with("reason", reason.map(for_record));
                self.shared.auditor.record_later(event);
            }
        }
        self.inner.event(event);
    }

    fn complete(&mut self, tag: &str) {
        // Every command gets a result frame, with rows or without.
        self.result();
        self.close_result(Some(tag));
        self.running_since = Some(Instant::now());
        self.inner.complete(tag);
    }

    fn masking_counts(&self) -> Option<&crate::masking::Counts> {
        self.inner.masking_counts()
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("session", &self.tap.id)
            .field("subject", &self.subject)
            .field("kind", &self.kind)
            .finish()
    }
}
