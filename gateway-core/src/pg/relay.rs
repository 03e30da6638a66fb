//! The relay: protocol 3.0 in both directions, message by message, streaming.
//!
//! One task per session reads whichever side has bytes, cuts them into
//! frames, asks the session's hooks at the hook points and writes what
//! results to the other side. Nothing is buffered beyond the frames of one
//! read, so memory stays flat however large a result is; a slow client
//! slows the upstream down (TCP back-pressure) instead of filling memory.
//!
//! Refusals are ordered like PostgreSQL's own errors. A refused simple Query
//! is replaced by a query that fails upstream (so an open transaction is
//! aborted, as PostgreSQL would abort it); that failure is swallowed and the
//! refusal delivered in its place. A refused Parse skips the rest of the
//! batch until the client's Sync, and the error is delivered just before
//! that Sync's ReadyForQuery, after every response to the messages before it.
//!
//! A hook may answer "wait" (a catalog read, a row estimate, an approval):
//! the relay then stops reading the client, keeps relaying the upstream's
//! answers to earlier messages, and asks again when the wait is over.

use std::borrow::Cow;
use std::collections::VecDeque;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::error::PgError;
use super::executions::{Executions, Next};
use super::frame::{Body, FrameError, next_frame};
use super::settings::{ServerSettings, Unfollowable};
use super::shapes::{CopySource, Described, Shapes};
use crate::listener::conn::Conn;
use crate::pg::hooks::{
    CopyOrigin, Decision, InFlight, Reason, SessionEvent, SessionHooks, Statement, StatementVia,
    ValueSource, Verdict,
};

const READ_CHUNK: usize = 64 * 1024;
/// Client bytes buffered while a hook waits (a held statement, a catalog read).
const WAITING_BUFFER: usize = 1024 * 1024;
/// Backend messages can be as large as PostgreSQL allows (1 GiB for a row).
const MAX_BACKEND_MESSAGE: usize = i32::MAX as usize;
const SYNC: &[u8] = &[b'S', 0, 0, 0, 4];
const TERMINATE: &[u8] = &[b'X', 0, 0, 0, 4];
/// Sent in place of a refused simple Query: it fails upstream without side
/// effects, aborting an open transaction as the refused statement's error
/// would have. The comment names the gateway in the server's log.
const REFUSED_QUERY: &[u8] = b"/* tollgate: statement refused by policy */ SELECT 1/0\0";

type Wait = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// What to do at the ReadyForQuery that answers a Query, Sync or FunctionCall.
#[derive(Debug)]
enum Ready {
    /// Relay it.
    Pass,
    /// Deliver this error just before it.
    Inject(PgError),
    /// Swallow the upstream's error for this query and deliver this one.
    Replace(PgError),
    /// The answer to a Sync the gateway sent itself: not relayed.
    Swallow,
}

/// What handling the client's frames came to.
enum Step {
    /// All complete frames handled.
    Done,
    /// The client sent Terminate.
    Terminated,
    /// A hook asked to wait; the frame it was asked about is still buffered.
    Wait(Wait),
}

/// Whether an Execute may go upstream.
enum Gate {
    Go,
    Refused(PgError),
    Wait(Step),
}

/// How a relay ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayEnd {
    /// The client sent Terminate.
    Terminated,
    /// The client closed the connection without Terminate.
    ClientClosed,
    /// The upstream closed the connection (its last message was relayed).
    UpstreamClosed,
    /// The gateway is shutting down and ended the session.
    Shutdown,
}

/// Why a relay failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The client sent a frame that cannot be right.
    #[error("client sent {0}")]
    ClientProtocol(FrameError),
    /// The upstream sent a frame that cannot be right.
    #[error("upstream sent {0}")]
    UpstreamProtocol(FrameError),
    /// Reading from or writing to the client failed.
    #[error("client connection: {0}")]
    Client(std::io::Error),
    /// Reading from or writing to the upstream failed.
    #[error("upstream connection: {0}")]
    Upstream(std::io::Error),
    /// The server reported a setting the gateway cannot read SQL under,
    /// or a change of who the session is.
    #[error(transparent)]
    Unfollowable(#[from] Unfollowable),
}

/// Relay state that outlives one read.
struct State<'h> {
    hooks: &'h mut dyn SessionHooks,
    /// One entry per Query, Sync or FunctionCall sent upstream, in order.
    awaiting_ready: VecDeque<Ready>,
    /// For each entry of `awaiting_ready`: it is for a Sync.
    ready_is_sync: VecDeque<bool>,
    /// The upstream is in copy-in mode and ignores the client's Syncs until
    /// the client's CopyDone or CopyFail.
    copy_in: bool,
    /// The upstream error of the front `Ready::Replace` entry was swallowed.
    replaced: bool,
    /// Extended-protocol messages were sent since the last Sync.
    unsynced: bool,
    /// A refused extended-protocol message: skip until Sync, then report.
    skipping: Option<PgError>,
    to_upstream: BytesMut,
    to_client: BytesMut,
    /// The hooks look inside results: track result shapes for them.
    inspect: bool,
    /// Simple Queries the hooks let through (numbers COPY origins).
    queries_forwarded: u64,
    shapes: Shapes,
    /// The settings the server reported.
    settings: ServerSettings,
    /// A hook asked to be asked again once every earlier message is answered.
    await_answers: bool,
    /// Prepared statements and portals, for deciding each execution.
    executions: Executions,
    /// The rows of the current result are withheld; it ends in this error.
    withheld: Option<PgError>,
    /// A statement forwarded since the client's last Sync may have changed
    /// how the server reads SQL.
    batch_may_change: bool,
}

/// Relay until either side ends the session. `pending` holds client bytes
/// already read during login (a client may send its first query right
/// behind the password); they are handled first, so nothing is lost.
pub async fn run(
    client: &mut Conn,
    upstream: &mut Conn,
    hooks: &mut dyn SessionHooks,
    max_client_message: usize,
    pending: BytesMut,
    settings: ServerSettings,
    mut shutdown: watch::Receiver<bool>,
) -> Result<RelayEnd, RelayError> {
    let mut from_client = pending;
    let mut from_upstream = BytesMut::with_capacity(READ_CHUNK);
    let mut state = State {
        hooks,
        awaiting_ready: VecDeque::new(),
        ready_is_sync: VecDeque::new(),
        copy_in: false,
        replaced: false,
        unsynced: false,
        skipping: None,
        to_upstream: BytesMut::with_capacity(READ_CHUNK),
        to_client: BytesMut::with_capacity(READ_CHUNK),
        inspect: false,
        queries_forwarded: 0,
        shapes: Shapes::default(),
        settings,
        await_answers: false,
        executions: Executions::default(),
        withheld: None,
        batch_may_change: false,
    };
    state.inspect = state.hooks.inspects_values();
    let mut waiting: Option<Wait> = None;
    let mut end = match state.client_frames(&mut from_client, max_client_message)? {
        Step::Done => None,
        Step::Terminated => Some(RelayEnd::Terminated),
        Step::Wait(wait) => {
            waiting = Some(wait);
            None
        }
    };
    loop {
        if !state.to_upstream.is_empty() {
            write(upstream, &mut state.to_upstream)
                .await
                .map_err(RelayError::Upstream)?;
        }
        if !state.to_client.is_empty() {
            write(client, &mut state.to_client)
                .await
                .map_err(RelayError::Client)?;
        }
        match end {
            None => {}
            Some(RelayEnd::ClientClosed) => {
                // Tell the upstream backend to end cleanly rather than wait for a timeout.
                let _ = upstream.write_all(TERMINATE).await;
                let _ = upstream.shutdown().await;
                return Ok(RelayEnd::ClientClosed);
            }
            Some(end) => return Ok(end),
        }
        if state.await_answers && state.awaiting_ready.is_empty() {
            // Every earlier message is answered: ask about the waiting one again.
            state.await_answers = false;
            waiting = None;
            match state.client_frames(&mut from_client, max_client_message)? {
                Step::Done => {}
                Step::Terminated => end = Some(RelayEnd::Terminated),
                Step::Wait(wait) => waiting = Some(wait),
            }
            continue;
        }
        reserve(&mut from_client);
        reserve(&mut from_upstream);
        let mut handle_client = false;
        // While a hook waits, the client's bytes are only buffered (up to a
        // bound), so that a client that goes away is noticed at once.
        let read_client = waiting.is_none() || from_client.len() < WAITING_BUFFER;
        tokio::select! {
            read = client.read_buf(&mut from_client), if read_client => {
                if read.map_err(RelayError::Client)? == 0 {
                    end = Some(RelayEnd::ClientClosed);
                } else {
                    handle_client = waiting.is_none();
                }
            }
            read = upstream.read_buf(&mut from_upstream) => {
                if read.map_err(RelayError::Upstream)? == 0 {
                    end = Some(RelayEnd::UpstreamClosed);
                } else {
                    state.upstream_frames(&mut from_upstream)?;
                }
            }
            () = wait(&mut waiting), if waiting.is_some() => {
                waiting = None;
                handle_client = true;
            }
            _ = shutdown.wait_for(|ending| *ending) => end = Some(RelayEnd::Shutdown),
        }
        if handle_client {
            match state.client_frames(&mut from_client, max_client_message)? {
                Step::Done => {}
                Step::Terminated => end = Some(RelayEnd::Terminated),
                Step::Wait(wait) => waiting = Some(wait),
            }
        }
    }
}

async fn wait(waiting: &mut Option<Wait>) {
    if let Some(wait) = waiting.as_mut() {
        wait.await;
    }
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

async fn write(conn: &mut Conn, buf: &mut BytesMut) -> std::io::Result<()> {
    conn.write_all(buf).await?;
    conn.flush().await?;
    buf.clear();
    Ok(())
}

impl State<'_> {
    /// Handle every complete client frame, until a hook asks to wait.
    fn client_frames(&mut self, buf: &mut BytesMut, limit: usize) -> Result<Step, RelayError> {
        while let Some((tag, total)) = next_frame(buf, limit).map_err(RelayError::ClientProtocol)? {
            let frame = &buf[..total];
            match tag {
                b'Q' => {
                    let bytes = Body::new(&frame[5..]).cstr().unwrap_or_default();
                    let (sql, verdict) = self.ask(bytes, StatementVia::SimpleQuery);
                    let decision = match self.decided(verdict) {
                        Ok(decision) => decision,
                        Err(step) => return Ok(step),
                    };
                    match decision {
                        Decision::Forward => {
                            if self.unsynced {
                                // After an error the server skips everything up to
                                // a Sync, this Query too, and nothing would answer
                                // it: a Sync of the gateway's own goes first (its
                                // ReadyForQuery is not the client's).
                                self.to_upstream.extend_from_slice(SYNC);
                                self.expect_ready(Ready::Swallow, true);
                                if self.inspect {
                                    self.shapes.sync();
                                }
                            }
                            self.to_upstream.extend_from_slice(frame);
                            self.expect_ready(Ready::Pass, false);
                            self.queries_forwarded += 1;
                            if self.inspect {
                                self.shapes.query(self.queries_forwarded);
                            }
                        }
                        Decision::Refuse(refusal) => {
                            self.hooks.event(&SessionEvent::Refused {
                                sql: &sql,
                                message: &refusal.message,
                            });
                            let error = PgError::from(refusal);
                            if self.unsynced {
                                // Behind unsynced extended messages a failing query
                                // could be skipped upstream; a Sync is always answered.
                                self.to_upstream.extend_from_slice(SYNC);
                                self.expect_ready(Ready::Inject(error), true);
                                if self.inspect {
                                    self.shapes.sync();
                                }
                            } else {
                                put_frame(&mut self.to_upstream, b'Q', &[REFUSED_QUERY]);
                                self.expect_ready(Ready::Replace(error), false);
                                if self.inspect {
                                    self.shapes.query(0);
                                }
                            }
                        }
                    }
                    self.unsynced = false;
                    self.batch_may_change = false;
                    self.executions.queried();
                }
                b'P' if self.skipping.is_none() => {
                    let mut body = Body::new(&frame[5..]);
                    let name =
                        String::from_utf8_lossy(body.cstr().unwrap_or_default()).into_owned();
                    let bytes = body.cstr().unwrap_or_default();
                    let (sql, verdict) = self.ask(bytes, StatementVia::Parse { name: &name });
                    let decision = match self.decided(verdict) {
                        Ok(decision) => decision,
                        Err(step) => return Ok(step),
                    };
                    match decision {
                        Decision::Forward => {
                            self.to_upstream.extend_from_slice(frame);
                            self.unsynced = true;
                            let may_change = self.hooks.reading_may_change();
                            self.executions.parsed(&name, &sql, may_change);
                            if self.inspect {
                                self.shapes.parse(&frame[5..]);
                            }
                        }
                        Decision::Refuse(refusal) => {
                            self.hooks.event(&SessionEvent::Refused {
                                sql: &sql,
                                message: &refusal.message,
                            });
                            self.skipping = Some(PgError::from(refusal));
                        }
                    }
                }
                b'S' if self.copy_in => {
                    // Ignored by the upstream in copy-in mode: nothing will answer it.
                    self.to_upstream.extend_from_slice(frame);
                }
                b'S' => {
                    self.to_upstream.extend_from_slice(frame);
                    self.batch_may_change = false;
                    let ready = self.skipping.take().map_or(Ready::Pass, Ready::Inject);
                    self.expect_ready(ready, true);
                    self.unsynced = false;
                    if self.inspect {
                        self.shapes.sync();
                    }
                }
                b'c' | b'f' => {
                    self.to_upstream.extend_from_slice(frame);
                    self.copy_in = false;
                }
                b'F' => {
                    // FunctionCall names a function by OID with raw arguments:
                    // no statement for the policy to check, a result in no
                    // result format. Refused; `SELECT f(...)` does the same job.
                    let error = PgError::error(
                        "0A000",
                        "the FunctionCall protocol message is not allowed through the gateway: \
                         call the function with SELECT instead",
                    );
                    self.hooks.event(&SessionEvent::Refused {
                        sql: "FunctionCall",
                        message: &error.message,
                    });
                    self.to_upstream.extend_from_slice(SYNC);
                    self.expect_ready(Ready::Inject(error), true);
                    if self.inspect {
                        self.shapes.sync();
                    }
                }
                b'X' => {
                    self.to_upstream.extend_from_slice(frame);
                    buf.advance(total);
                    return Ok(Step::Terminated);
                }
                // After a refusal PostgreSQL ignores extended-protocol messages until Sync.
                b'P' | b'B' | b'D' | b'E' | b'C' | b'H' if self.skipping.is_some() => {}
                b'B' | b'E' if self.query_outstanding() => {
                    // Bound and run once the names mean what the server says.
                    return Ok(self.after_answers());
                }
                b'B' | b'D' | b'E' | b'C' | b'H' => {
                    let body = &frame[5..];
                    match tag {
                        b'B' => self.executions.bound(body),
                        b'C' => self.executions.closed(body),
                        b'E' => match self.gate_execute(body) {
                            Gate::Go => {
                                // Statements run at their Execute.
                                self.batch_may_change |= self.executions.may_change_reading(body);
                                self.executions.executed(body);
                            }
                            Gate::Refused(error) => {
                                self.skipping = Some(error);
                                buf.advance(total);
                                continue;
                            }
                            Gate::Wait(step) => return Ok(step),
                        },
                        _ => {}
                    }
                    if self.inspect {
                        let body = &frame[5..];
                        match tag {
                            b'B' => self.shapes.bind(body),
                            b'D' => self.shapes.describe(body),
                            b'C' => self.shapes.close(body),
                            b'E' => {
                                if let Some(describe) = self.shapes.execute(body) {
                                    self.to_upstream.extend_from_slice(&describe);
                                }
                                self.hooks.event(&SessionEvent::Executing);
                            }
                            _ => {}
                        }
                    }
                    self.to_upstream.extend_from_slice(frame);
                    self.unsynced = true;
                }
                _ => self.to_upstream.extend_from_slice(frame),
            }
            buf.advance(total);
        }
        Ok(Step::Done)
    }

    fn upstream_frames(&mut self, buf: &mut BytesMut) -> Result<(), RelayError> {
        while let Some((tag, total)) =
            next_frame(buf, MAX_BACKEND_MESSAGE).map_err(RelayError::UpstreamProtocol)?
        {
            let frame = &buf[..total];
            match tag {
                b'G' => {
                    // Copy-in mode: the upstream ignores Syncs until the client's
                    // CopyDone/CopyFail, so the Syncs sent since the COPY's Execute
                    // (a pipelining driver sends them right behind it) go unanswered.
                    let first = usize::from(self.ready_is_sync.front() == Some(&false));
                    let mut dropped = 0;
                    while self.ready_is_sync.get(first) == Some(&true) {
                        self.ready_is_sync.remove(first);
                        self.awaiting_ready.remove(first);
                        dropped += 1;
                    }
                    if self.inspect {
                        self.shapes.drop_syncs(dropped);
                    }
                    self.executions.batches_dropped(dropped);
                    self.copy_in = true;
                    self.to_client.extend_from_slice(frame);
                }
                b'H' if self.inspect => {
                    // CopyOutResponse: format (0 text, 1 binary), column count.
                    let mut body = Body::new(&frame[5..]);
                    let binary = body.take(1).is_some_and(|f| f[0] == 1);
                    let columns = body.i16().unwrap_or(0).max(0) as usize;
                    let source = self.shapes.copy_out();
                    let origin = match &source {
                        Some(CopySource::Query { message, index }) => Some(CopyOrigin::Query {
                            message: *message,
                            index: *index,
                        }),
                        Some(CopySource::Prepared(statement)) => {
                            Some(CopyOrigin::Prepared { statement })
                        }
                        None => None,
                    };
                    self.hooks.copy_out(origin, columns, binary);
                    self.to_client.extend_from_slice(frame);
                }
                b'Z' => {
                    self.executions.ready();
                    self.ready_is_sync.pop_front();
                    let mut relay = true;
                    match self.awaiting_ready.pop_front() {
                        Some(Ready::Inject(error) | Ready::Replace(error)) => {
                            let error = error.to_frame();
                            self.put_fields(ValueSource::ErrorField, error.raw());
                        }
                        Some(Ready::Swallow) => relay = false,
                        Some(Ready::Pass) | None => {}
                    }
                    self.replaced = false;
                    if self.inspect {
                        self.shapes.ready(frame.get(5).copied().unwrap_or(b'I'));
                    }
                    if relay {
                        // (The answer to the gateway's own Sync is not the end
                        // of anything the stages wait for.)
                        if let Some(&status) = frame.get(5) {
                            self.hooks.ready(status);
                        }
                        self.to_client.extend_from_slice(frame);
                    }
                }
                b'E' if matches!(self.awaiting_ready.front(), Some(Ready::Replace(_)))
                    && !self.replaced =>
                {
                    // The stand-in query's own failure: the refusal replaces it.
                    self.replaced = true;
                }
                b'1' => {
                    // ParseComplete: that Parse is the server's now.
                    self.executions.parse_complete();
                    self.to_client.extend_from_slice(frame);
                }
                b'C' if !self.inspect => {
                    let command = Body::new(&frame[5..]).cstr().unwrap_or_default();
                    self.command_done(&String::from_utf8_lossy(command));
                    self.to_client.extend_from_slice(frame);
                }
                b'E' if !self.inspect => {
                    self.executions.batch_failed();
                    self.to_client.extend_from_slice(frame);
                }
                b'S' => {
                    // ParameterStatus: the server's own settings, which decide
                    // how SQL reads; set_config() can put any value here.
                    let mut body = Body::new(&frame[5..]);
                    match (body.cstr(), body.cstr()) {
                        (Some(name), Some(value)) => {
                            self.settings.report(name, value)?;
                            if self.inspect {
                                let value = self
                                    .hooks
                                    .result_value(ValueSource::Parameter, value)
                                    .unwrap_or_default();
                                put_frame(&mut self.to_client, b'S', &[name, b"\0", &value, b"\0"]);
                            } else {
                                self.to_client.extend_from_slice(frame);
                            }
                        }
                        _ => self.to_client.extend_from_slice(frame),
                    }
                }
                _ if !self.inspect => self.to_client.extend_from_slice(frame),
                b'T' => match self.shapes.row_description(&frame[5..]) {
                    Described::Rows(columns) => {
                        self.hooks.result_columns(Some(&columns));
                        if self.rows_allowed(&columns) {
                            self.to_client.extend_from_slice(frame);
                        }
                    }
                    Described::Statement => self.to_client.extend_from_slice(frame),
                    Described::Hidden => {
                        if let Some(columns) = super::shapes::parse_row_description(&frame[5..]) {
                            self.hooks.result_columns(Some(&columns));
                            self.rows_allowed(&columns);
                        }
                    }
                },
                b'n' => {
                    if self.shapes.no_data() {
                        self.to_client.extend_from_slice(frame);
                    }
                }
                b'D' => {
                    if let Some(columns) = self.shapes.data_row() {
                        self.hooks.result_columns(columns.as_deref());
                        if let Some(columns) = &columns {
                            self.rows_allowed(columns);
                        }
                    }
                    if self.withheld.is_none() {
                        self.hooks.data_row(&frame[5..]);
                        rewrite_data_row(self.hooks, frame, &mut self.to_client);
                    }
                }
                b'C' | b's' if self.withheld.is_some() => {
                    // The result whose rows were withheld ends in an error.
                    self.shapes.execute_done();
                    let error = self.withheld.take().expect("checked");
                    self.hooks.event(&SessionEvent::Failed {
                        sqlstate: error.code,
                        message: &error.message,
                    });
                    let frame = error.to_frame();
                    self.put_fields(ValueSource::ErrorField, frame.raw());
                }
                b'C' | b's' | b'I' => {
                    self.shapes.execute_done();
                    if tag == b'C' {
                        let command = Body::new(&frame[5..]).cstr().unwrap_or_default();
                        self.command_done(&String::from_utf8_lossy(command));
                    }
                    self.to_client.extend_from_slice(frame);
                }
                b'E' => {
                    self.withheld = None;
                    // A failed Bind leaves the portal as it was: what the
                    // relay recorded for it may be wrong.
                    self.executions.batch_failed();
                    self.shapes.batch_failed();
                    self.shapes.error();
                    let (sqlstate, message) = self.put_fields(ValueSource::ErrorField, frame);
                    self.hooks.event(&SessionEvent::Failed {
                        sqlstate: &sqlstate,
                        message: &message,
                    });
                }
                b'N' => {
                    self.put_fields(ValueSource::NoticeField, frame);
                }
                b'd' => {
                    let row = self
                        .hooks
                        .result_value(ValueSource::CopyRow, &frame[5..])
                        .unwrap_or_default();
                    put_frame(&mut self.to_client, b'd', &[&row]);
                }
                b'A' => {
                    // NotificationResponse: process id, channel, payload.
                    let mut body = Body::new(&frame[5..]);
                    match (body.take(4), body.cstr(), body.cstr()) {
                        (Some(pid), Some(channel), Some(payload)) => {
                            let payload = self
                                .hooks
                                .result_value(ValueSource::Notification, payload)
                                .unwrap_or_default();
                            put_frame(
                                &mut self.to_client,
                                b'A',
                                &[pid, channel, b"\0", &payload, b"\0"],
                            );
                        }
                        _ => self.to_client.extend_from_slice(frame),
                    }
                }
                _ => self.to_client.extend_from_slice(frame),
            }
            buf.advance(total);
        }
        Ok(())
    }

    /// Rows with these columns are about to come: may they reach the
    /// client? If not, they are withheld and the result ends in an error.
    fn rows_allowed(&mut self, columns: &[crate::pg::hooks::ResultColumn]) -> bool {
        match self.hooks.columns_allowed(columns) {
            Ok(()) => true,
            Err(reason) => {
                tracing::warn!(target: "tollgate::audit", event = "result.withheld", reason = %reason);
                self.withheld = Some(PgError::error("42501", reason));
                false
            }
        }
    }

    /// An Execute after the first of its statement is decided again.
    fn gate_execute(&mut self, body: &[u8]) -> Gate {
        let (statement, sql, execution) = match self.executions.next(body) {
            Next::Free => return Gate::Go,
            Next::Wait => return Gate::Wait(self.after_answers()),
            Next::Ask {
                statement,
                sql,
                execution,
            } => (statement, sql, execution),
        };
        let verdict = self.hooks.statement(&Statement {
            sql: &sql,
            via: StatementVia::Execute {
                statement: &statement,
                execution,
            },
            in_flight: self.in_flight(),
        });
        match self.decided(verdict) {
            Ok(Decision::Forward) => Gate::Go,
            Ok(Decision::Refuse(refusal)) => {
                self.hooks.event(&SessionEvent::Refused {
                    sql: &sql,
                    message: &refusal.message,
                });
                Gate::Refused(PgError::from(refusal))
            }
            Err(step) => Gate::Wait(step),
        }
    }

    /// The decision in a verdict, or the wait it asks for (a held statement
    /// tells the client first).
    fn decided(&mut self, verdict: Verdict) -> Result<Decision, Step> {
        match verdict {
            Verdict::Decided(decision) => Ok(decision),
            Verdict::Wait(wait) => Err(Step::Wait(wait)),
            Verdict::AfterAnswers => Err(self.after_answers()),
            Verdict::Hold { notice, until } => {
                self.notice(&notice);
                Err(Step::Wait(until))
            }
        }
    }

    /// What the upstream has not answered yet, for a statement arriving now.
    fn in_flight(&self) -> InFlight {
        if self.unsynced || self.copy_in {
            InFlight::Unsynced
        } else if self.awaiting_ready.is_empty() {
            InFlight::Nothing
        } else {
            InFlight::Answers
        }
    }

    /// A command completed. SQL's cursors and prepared statements share
    /// their names with the protocol's portals and statements: what the
    /// relay knew of those is void after one changes.
    fn command_done(&mut self, tag: &str) {
        if matches!(
            tag,
            "DECLARE CURSOR" | "CLOSE CURSOR" | "CLOSE CURSOR ALL" | "DISCARD ALL"
        ) {
            self.executions.forget_portals();
            self.shapes.forget_portals();
        }
        if matches!(tag, "DEALLOCATE" | "DEALLOCATE ALL" | "DISCARD ALL") {
            self.executions.forget_statements();
            self.shapes.forget_statements();
        }
        self.hooks.complete(tag);
    }

    /// A simple Query whose answer has not come yet could change which
    /// statement or portal a name means (`DEALLOCATE`, `DECLARE`, ...).
    fn query_outstanding(&self) -> bool {
        self.ready_is_sync.iter().any(|sync| !sync)
    }

    /// Read a statement's text in the session's encoding and ask the hooks
    /// about it (unless it cannot be read as the server will right now).
    fn ask<'b>(&mut self, bytes: &'b [u8], via: StatementVia<'_>) -> (Cow<'b, str>, Verdict) {
        let in_flight = self.in_flight();
        match self.settings.decode(bytes) {
            Some(sql) => {
                let verdict = match self.readable(&sql, in_flight) {
                    Some(verdict) => verdict,
                    None => self.hooks.statement(&Statement {
                        sql: &sql,
                        via,
                        in_flight,
                    }),
                };
                (sql, verdict)
            }
            None => (
                String::from_utf8_lossy(bytes),
                Verdict::Decided(self.undecodable()),
            ),
        }
    }

    /// A statement whose reading depends on standard_conforming_strings
    /// and the client encoding (a backslash, a non-ASCII byte) is read only
    /// once every earlier message is answered, so the settings the server
    /// reported before its ReadyForQuery are the ones it reads with; inside
    /// an unsynced batch (where earlier messages may change them unseen) it
    /// is refused. `None`: go on.
    fn readable(&self, sql: &str, in_flight: InFlight) -> Option<Verdict> {
        if !super::sql::setting_sensitive(sql) {
            return None;
        }
        match in_flight {
            InFlight::Nothing => None,
            InFlight::Answers => Some(Verdict::AfterAnswers),
            // Earlier messages of the batch that cannot have changed the
            // settings (a BEGIN, a plain INSERT): the reading holds.
            // Earlier requests (a SET in a Query) are answered first.
            InFlight::Unsynced if !self.awaiting_ready.is_empty() => Some(Verdict::AfterAnswers),
            InFlight::Unsynced if !self.batch_may_change => None,
            InFlight::Unsynced => Some(Verdict::Decided(Decision::refuse(
                Reason::Unsupported,
                "a statement with a backslash or a non-ASCII character cannot follow other \
                          extended-protocol messages before their Sync through the gateway (how the \
                          server reads it depends on settings those messages may change): send a Sync first",
            ))),
        }
    }

    /// Hold the statement until every earlier message is answered.
    fn after_answers(&mut self) -> Step {
        self.await_answers = true;
        Step::Wait(Box::pin(std::future::pending()))
    }

    /// A statement whose bytes are not text in the session's encoding.
    fn undecodable(&self) -> Decision {
        Decision::refuse(
            Reason::BadEncoding,
            format!(
                "invalid byte sequence for encoding \"{}\": the statement is not valid text in the \
                 session's client_encoding, so the gateway did not send it",
                self.settings.encoding.name()
            ),
        )
    }

    /// Tell the client something now (a NoticeResponse, as psql prints it).
    fn notice(&mut self, message: &str) {
        let frame = super::messages::notice_response(vec![
            (b'S', "NOTICE".into()),
            (b'V', "NOTICE".into()),
            (b'C', "00000".into()),
            (b'M', message.to_string()),
        ]);
        self.put_fields(ValueSource::NoticeField, frame.raw());
    }

    /// A ReadyForQuery will answer what was just sent upstream.
    fn expect_ready(&mut self, ready: Ready, sync: bool) {
        self.awaiting_ready.push_back(ready);
        self.ready_is_sync.push_back(sync);
        self.executions.batch_sent();
    }

    /// Pass each field of an ErrorResponse or NoticeResponse through the
    /// hooks (a unique violation's DETAIL echoes the value) and forward it.
    /// Returns the SQLSTATE and message as forwarded.
    fn put_fields(&mut self, source: ValueSource, frame: &[u8]) -> (String, String) {
        if !self.inspect {
            self.to_client.extend_from_slice(frame);
            return Default::default();
        }
        let (mut sqlstate, mut message) = (String::new(), String::new());
        let mut out = Vec::with_capacity(frame.len());
        let mut rest = &frame[5..];
        while let Some((&code, tail)) = rest.split_first() {
            if code == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            let value = self
                .hooks
                .result_value(source, &tail[..end])
                .unwrap_or_default();
            match code {
                b'C' => sqlstate = String::from_utf8_lossy(&value).into_owned(),
                b'M' => message = String::from_utf8_lossy(&value).into_owned(),
                _ => {}
            }
            out.push(code);
            // A rewritten field may not carry a NUL of its own.
            out.extend(value.iter().map(|&b| if b == 0 { b' ' } else { b }));
            out.push(0);
            rest = tail.get(end + 1..).unwrap_or_default();
        }
        out.push(0);
        put_frame(&mut self.to_client, frame[0], &[&out]);
        (sqlstate, message)
    }
}

/// Append a frame made of `parts` to `out`.
fn put_frame(out: &mut BytesMut, tag: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum::<usize>() + 4;
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&(len as i32).to_be_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// Pass each cell of a DataRow through the hooks; rebuild the row (with
/// correct lengths) only if a cell changed.
fn rewrite_data_row(hooks: &mut dyn SessionHooks, frame: &[u8], out: &mut BytesMut) {
    let body = &frame[5..];
    let mut cells: Vec<Option<Cow<'_, [u8]>>> = Vec::new();
    let mut changed = false;
    let mut reader = Body::new(body);
    let count = reader.i16().unwrap_or(0).max(0) as usize;
    let mut rest = reader.rest();
    for column in 0..count {
        if rest.len() < 4 {
            // Malformed row: forward untouched rather than guess.
            out.extend_from_slice(frame);
            return;
        }
        let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        rest = &rest[4..];
        if len < 0 {
            cells.push(None);
            continue;
        }
        let Some(value) = rest.get(..len as usize) else {
            out.extend_from_slice(frame);
            return;
        };
        rest = &rest[len as usize..];
        let new = hooks.result_value(ValueSource::Cell { column }, value);
        changed |= !matches!(new, Some(Cow::Borrowed(_)));
        cells.push(new);
    }
    if !changed {
        out.extend_from_slice(frame);
        return;
    }
    let len = 4
        + 2
        + cells
            .iter()
            .map(|c| 4 + c.as_ref().map_or(0, |v| v.len()))
            .sum::<usize>();
    out.extend_from_slice(b"D");
    out.extend_from_slice(&(len as i32).to_be_bytes());
    out.extend_from_slice(&(count as i16).to_be_bytes());
    for cell in cells {
        match cell {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(&v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::frame::Frame;

    struct Upper;
    impl SessionHooks for Upper {
        fn result_value<'v>(&mut self, _: ValueSource, v: &'v [u8]) -> Option<Cow<'v, [u8]>> {
            Some(if v.iter().any(u8::is_ascii_lowercase) {
                Cow::Owned(v.to_ascii_uppercase())
            } else {
                Cow::Borrowed(v)
            })
        }
        fn inspects_values(&self) -> bool {
            true
        }
    }

    fn data_row(cells: &[Option<&[u8]>]) -> Frame {
        let mut body = (cells.len() as i16).to_be_bytes().to_vec();
        for c in cells {
            match c {
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    body.extend_from_slice(v);
                }
            }
        }
        Frame::new(b'D', &body)
    }

    #[test]
    fn data_row_rewrite_fixes_lengths_and_keeps_nulls() {
        let mut out = BytesMut::new();
        rewrite_data_row(
            &mut Upper,
            data_row(&[Some(b"ab"), None, Some(b"12")]).raw(),
            &mut out,
        );
        assert_eq!(&out[..], data_row(&[Some(b"AB"), None, Some(b"12")]).raw());
    }

    #[test]
    fn unchanged_rows_are_forwarded_byte_for_byte() {
        let mut out = BytesMut::new();
        let row = data_row(&[Some(b"12"), None]);
        rewrite_data_row(&mut Upper, row.raw(), &mut out);
        assert_eq!(&out[..], row.raw());
    }

    struct RefuseDrop;
    impl SessionHooks for RefuseDrop {
        fn statement(&mut self, s: &Statement<'_>) -> Verdict {
            Verdict::Decided(if s.sql.contains("DROP") {
                Decision::refuse(Reason::Forbidden, "no")
            } else {
                Decision::Forward
            })
        }
    }

    fn state(hooks: &mut dyn SessionHooks) -> State<'_> {
        let hooks_inspect = hooks.inspects_values();
        State {
            hooks,
            awaiting_ready: VecDeque::new(),
            ready_is_sync: VecDeque::new(),
            copy_in: false,
            replaced: false,
            unsynced: false,
            skipping: None,
            to_upstream: BytesMut::new(),
            to_client: BytesMut::new(),
            inspect: hooks_inspect,
            queries_forwarded: 0,
            shapes: Shapes::default(),
            settings: ServerSettings::default(),
            await_answers: false,
            executions: Executions::default(),
            withheld: None,
            batch_may_change: false,
        }
    }

    #[test]
    fn refused_query_fails_upstream_and_its_error_is_replaced_in_order() {
        let mut hooks = RefuseDrop;
        let mut s = state(&mut hooks);
        let mut input = BytesMut::new();
        input.extend_from_slice(Frame::new(b'Q', b"SELECT 1\0").raw());
        input.extend_from_slice(Frame::new(b'Q', b"DROP TABLE t\0").raw());
        assert!(matches!(
            s.client_frames(&mut input, 1 << 20).unwrap(),
            Step::Done
        ));
        let mut expected = BytesMut::from(&Frame::new(b'Q', b"SELECT 1\0").raw()[..]);
        expected.extend_from_slice(Frame::new(b'Q', REFUSED_QUERY).raw());
        assert_eq!(s.to_upstream, expected);

        let mut replies = BytesMut::new();
        replies.extend_from_slice(Frame::new(b'C', b"SELECT 1\0").raw());
        replies.extend_from_slice(Frame::new(b'Z', b"T").raw());
        replies.extend_from_slice(PgError::error("22012", "division by zero").to_frame().raw());
        replies.extend_from_slice(Frame::new(b'Z', b"E").raw());
        s.upstream_frames(&mut replies).unwrap();
        let mut expected = BytesMut::new();
        expected.extend_from_slice(Frame::new(b'C', b"SELECT 1\0").raw());
        expected.extend_from_slice(Frame::new(b'Z', b"T").raw());
        expected.extend_from_slice(PgError::error("42501", "no").to_frame().raw());
        expected.extend_from_slice(Frame::new(b'Z', b"E").raw());
        assert_eq!(s.to_client, expected);
    }

    #[test]
    fn refused_query_behind_unsynced_extended_messages_uses_a_sync() {
        let mut hooks = RefuseDrop;
        let mut s = state(&mut hooks);
        let mut input = BytesMut::new();
        input.extend_from_slice(Frame::new(b'P', b"\0SELECT 1\0\0\0").raw());
        input.extend_from_slice(Frame::new(b'Q', b"DROP TABLE t\0").raw());
        s.client_frames(&mut input, 1 << 20).unwrap();
        assert!(s.to_upstream.ends_with(SYNC));
        assert!(matches!(s.awaiting_ready[0], Ready::Inject(_)));
    }

    #[test]
    fn refused_parse_skips_to_sync() {
        let mut hooks = RefuseDrop;
        let mut s = state(&mut hooks);
        let mut input = BytesMut::new();
        input.extend_from_slice(Frame::new(b'P', b"\0DROP TABLE t\0\0\0").raw());
        input.extend_from_slice(Frame::new(b'B', b"\0\0\0\0\0\0\0\0").raw());
        input.extend_from_slice(Frame::new(b'E', b"\0\0\0\0\0").raw());
        input.extend_from_slice(SYNC);
        s.client_frames(&mut input, 1 << 20).unwrap();
        assert_eq!(&s.to_upstream[..], SYNC);
        assert_eq!(s.awaiting_ready.len(), 1);
        assert!(matches!(s.awaiting_ready[0], Ready::Inject(_)));
    }

    /// Says whether the statement forwarded last may change how SQL reads.
    struct Reading(bool);
    impl SessionHooks for Reading {
        fn reading_may_change(&self) -> bool {
            self.0
        }
    }

    fn batch(second: &str) -> BytesMut {
        let mut input = BytesMut::new();
        input.extend_from_slice(Frame::new(b'P', b"\0BEGIN\0\0\0").raw());
        input.extend_from_slice(Frame::new(b'B', b"\0\0\0\0\0\0\0\0").raw());
        input.extend_from_slice(Frame::new(b'E', b"\0\0\0\0\0").raw());
        let mut parse = b"\0".to_vec();
        parse.extend_from_slice(second.as_bytes());
        parse.extend_from_slice(b"\0\0\0");
        input.extend_from_slice(Frame::new(b'P', &parse).raw());
        input
    }

    #[test]
    fn a_setting_sensitive_parse_in_a_batch_is_read_unless_the_batch_may_change_settings() {
        // A driver's BEGIN ahead of a statement with a non-ASCII literal.
        let mut hooks = Reading(false);
        let mut s = state(&mut hooks);
        s.client_frames(&mut batch("SELECT 'José'"), 1 << 20)
            .unwrap();
        assert!(
            s.skipping.is_none(),
            "read: BEGIN cannot change the settings"
        );
        // Behind a statement that may (a routine call), it is refused.
        let mut hooks = Reading(true);
        let mut s = state(&mut hooks);
        s.client_frames(&mut batch("SELECT 'José'"), 1 << 20)
            .unwrap();
        assert_eq!(s.skipping.as_ref().map(|e| e.code), Some("0A000"));
        // Plain ASCII reads the same whatever ran before it.
        let mut hooks = Reading(true);
        let mut s = state(&mut hooks);
        s.client_frames(&mut batch("SELECT 'Jose'"), 1 << 20)
            .unwrap();
        assert!(s.skipping.is_none());
    }

    #[test]
    fn oversized_client_message_is_a_protocol_error() {
        let mut hooks = crate::pg::hooks::Passthrough;
        let mut s = state(&mut hooks);
        let mut input = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            s.client_frames(&mut input, 1 << 30),
            Err(RelayError::ClientProtocol(_))
        ));
    }
}
