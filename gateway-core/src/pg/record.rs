//! The PostgreSQL session's recorder: the outermost hook of a session, so
//! it sees each statement's final decision (after policy, masking and
//! approvals) and each result value both as the upstream sent it (for the
//! result digest) and as the client gets it (for the masked preview). What
//! every session has (its header, `connect`, `masking`, `disconnect`, the
//! durable-audit gate) is written by [`recording::Session`].
//!
//! | frame | when | holds |
//! |---|---|---|
//! | `statement` | each Query or Parse decided, each later Execute | normalised text, decision, actions, resources, deciding policy, approval, audit sequence number; refused: reason, SQLSTATE, message |
//! | `result` | each command completed | tag, columns, rows, bytes, duration, keyed SHA-256 of the unmasked rows, masked preview |
//! | `error` | the upstream answered with an error | SQLSTATE, masked message |
//! | `cancel` | a cancel request for the session | |

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hmac::Mac;
use serde_json::{Value, json};
use sha2::Sha256;

use super::hooks::{
    CopyOrigin, Decision, ResultColumn, SessionEvent, SessionHooks, Statement, StatementVia,
    ValueSource, Verdict,
};
use crate::audit::event::{Event, Outcome};
use crate::identity::Identity;
use crate::masking::for_record;
use crate::recording::{self, Durable, Recording, SessionTap, digest};
use crate::stage::Ruling;

/// A statement whose audit record is being made durable.
struct Pending {
    decision: Decision,
    frame: Value,
    durable: Durable,
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
    session: recording::Session,
    inner: Box<dyn SessionHooks>,
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
    /// Record a session (`id`, from [`recording::session_id`]) of `identity`
    /// from `client` on `connection`, keeping whole results up to
    /// `full_results_bytes` each (0: only the configured preview rows).
    pub fn new(
        id: String,
        shared: Arc<Recording>,
        inner: Box<dyn SessionHooks>,
        identity: &Identity,
        client: SocketAddr,
        connection: &str,
        full_results_bytes: u64,
    ) -> Recorder {
        let keep = Keep {
            rows: shared.preview_rows,
            bytes: full_results_bytes,
        };
        Recorder {
            keep,
            session: recording::Session::new(id, shared, identity, client, connection, "postgres"),
            inner,
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
        self.session.tap()
    }

    /// Decide (through the inner hooks), then make the audit record durable.
    fn begin(&mut self, statement: &Statement<'_>) -> Verdict {
        if let Some(refusal) = self.session.unwritable() {
            let text = (self.session.shared().redact)(statement.sql);
            let event = self.statement_event(&text, Outcome::Refused, None, &refusal.message);
            self.session.record_later(event);
            self.refused_here = true;
            return Verdict::Decided(Decision::Refuse(refusal));
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
        let text = (self.session.shared().redact)(statement.sql);
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
            recording::ruling_fields(&mut frame, ruling);
        }
        if let Decision::Refuse(refusal) = &decision {
            refusal_frame(&mut frame, refusal);
        }
        let event = self.statement_event(&text, outcome, ruling.as_ref(), &message);
        let (durable, wait) = self.session.submit(event);
        self.pending = Some(Pending {
            decision,
            frame,
            durable,
        });
        Verdict::Wait(wait)
    }

    /// The audit record is durable (or failed): deliver the decision.
    fn finish(&mut self, pending: Pending) -> Verdict {
        let Pending {
            decision,
            mut frame,
            durable,
        } = pending;
        let decision = match durable.outcome() {
            Ok(seq) => {
                frame["audit_seq"] = Value::from(seq);
                decision
            }
            Err(refusal) => {
                refusal_frame(&mut frame, &refusal);
                Decision::Refuse(refusal)
            }
        };
        self.session.frame("statement", frame);
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
        ruling: Option<&Ruling>,
        message: &str,
    ) -> Event {
        let event = self
            .session
            .event("statement", outcome)
            .resource(json!({
                "connection": self.session.connection(),
                "objects": ruling.map(|r| r.resources.clone()).unwrap_or_default(),
            }))
            .with("statement", text);
        recording::with_ruling(event, ruling, message)
    }

    fn result(&mut self) -> &mut Result_ {
        let columns = &self.columns;
        let binary = &self.binary;
        let key = &self.session.shared().digest_key;
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
        self.session.frame(
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
            Some(pending) if pending.durable.settled() => self.finish(pending),
            Some(pending) => {
                // Woken before the write finished (cannot happen with the
                // relay's contract, but never forward unaudited).
                let until = pending.durable.until_settled();
                self.pending = Some(pending);
                Verdict::Wait(until)
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
                application_name,
                tls,
                ..
            } => {
                let mut extra = serde_json::Map::new();
                extra.insert(
                    "application_name".into(),
                    json!(application_name.map(for_record)),
                );
                extra.insert("tls".into(), Value::from(*tls));
                self.session.started(extra, *tls);
            }
            SessionEvent::Refused { sql, message } => {
                if self.refused_here {
                    self.refused_here = false;
                } else {
                    // Refused by the protocol adapter itself (e.g. FunctionCall).
                    let text = (self.session.shared().redact)(sql);
                    self.session.frame(
                        "statement",
                        json!({
                            "text": text,
                            "decision": "refused",
                            "message": for_record(message),
                        }),
                    );
                    let event = self.statement_event(&text, Outcome::Refused, None, message);
                    self.session.record_later(event);
                }
            }
            SessionEvent::CancelRequested => self.session.frame("cancel", json!({})),
            SessionEvent::Executing => self.running_since = Some(Instant::now()),
            SessionEvent::Failed { sqlstate, message } => {
                self.result = None;
                let message = for_record(message);
                self.session
                    .frame("error", json!({ "sqlstate": sqlstate, "message": message }));
                let event = self
                    .session
                    .event("statement.error", Outcome::Failure)
                    .resource(json!({ "connection": self.session.connection() }))
                    .with("sqlstate", *sqlstate)
                    .with("reason", message);
                self.session.record_later(event);
            }
            SessionEvent::Disconnected { reason } => {
                self.close_result(None);
                self.session.ended(*reason, self.inner.masking_counts());
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

/// A refused statement's frame fields, with its SQLSTATE.
fn refusal_frame(frame: &mut Value, refusal: &crate::stage::Refusal) {
    let code = super::error::sqlstate(refusal.reason);
    recording::refusal_fields(frame, refusal, "sqlstate", Value::from(code));
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("session", &self.session)
            .finish()
    }
}
