//! Hook points where the stages attach to a PostgreSQL session.
//!
//! The relay owns the wire; at each point below it asks the session's
//! [`SessionHooks`]. The default implementation lets everything through.
//! The guard (policy and approvals), the masker and the recorder implement
//! this trait; they answer statements in the stage contract both adapters
//! share ([`crate::stage`]).
//!
//! | point | called | may |
//! |---|---|---|
//! | [`SessionHooks::statement`] | per statement-bearing message (simple Query, Parse) before it goes upstream | allow, refuse with an error, wait (catalog, estimate) or hold for approval with a notice, and be asked again |
//! | [`SessionHooks::ready`] | per ReadyForQuery | follow the transaction status |
//! | [`SessionHooks::result_value`] | per result cell, error/notice field, copy row and notification payload | rewrite the bytes (masking) |
//! | [`SessionHooks::event`] | per session event (connect, statement, error, cancel, disconnect) | record |

use std::borrow::Cow;
use std::net::SocketAddr;

use crate::identity::Identity;
pub use crate::stage::{Decision, Reason, Refusal, Ruling, Verdict};

/// A statement about to be sent upstream.
#[derive(Debug)]
pub struct Statement<'a> {
    /// The SQL text as the client sent it (all statements of a simple Query).
    pub sql: &'a str,
    /// How it arrived.
    pub via: StatementVia<'a>,
    /// What the session still waits for from the upstream when the
    /// statement arrives (a statement whose reading depends on session
    /// state is decided only once that state is known).
    pub in_flight: InFlight,
}

/// Earlier messages of the session that the upstream has not answered yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InFlight {
    /// None: the session state the upstream last reported is current.
    Nothing,
    /// Answers to earlier, complete requests are on their way.
    Answers,
    /// Earlier messages of this same extended-protocol batch (before its
    /// Sync): they will not be answered before this one is sent.
    Unsynced,
}

/// The protocol message a statement came in.
#[derive(Debug)]
pub enum StatementVia<'a> {
    /// A simple Query message (may hold several statements).
    SimpleQuery,
    /// A Parse message of the extended protocol, with the prepared statement name.
    Parse {
        /// Prepared statement name ("" for the unnamed one).
        name: &'a str,
    },
    /// An Execute of a prepared statement after its first: each execution
    /// is an access of its own (decided, and on record, again); the first
    /// is covered by the decision on its Parse. `sql` is the text parsed.
    Execute {
        /// Prepared statement name ("" for the unnamed one).
        statement: &'a str,
        /// Which execution since the statement was parsed (2, 3, ...).
        execution: u64,
    },
}

/// A column of a result, as the protocol describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultColumn {
    /// The column's name in the result.
    pub name: String,
    /// The table it comes from (PostgreSQL: table OID and attribute number), if any.
    pub source: Option<(u32, i16)>,
    /// The value's type (PostgreSQL: type OID).
    pub type_id: u32,
    /// Values arrive in the type's binary encoding rather than as text.
    pub binary: bool,
}

/// Which statement a COPY TO STDOUT stream belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyOrigin<'a> {
    /// The `index`-th COPY of the `message`-th simple Query the hooks let
    /// through (counting from 1).
    Query {
        /// Which message.
        message: u64,
        /// Which COPY within it (from 0).
        index: usize,
    },
    /// An Execute of a portal of this prepared statement.
    Prepared {
        /// The statement's name ("" for the unnamed one).
        statement: &'a str,
    },
}

/// Where a value in a server-to-client message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueSource {
    /// A result cell of the columns last given to [`SessionHooks::result_columns`].
    Cell {
        /// Column index in the row.
        column: usize,
    },
    /// A field of an ErrorResponse.
    ErrorField,
    /// A field of a NoticeResponse.
    NoticeField,
    /// A row of COPY TO STDOUT.
    CopyRow,
    /// A NOTIFY payload.
    Notification,
    /// The value of a ParameterStatus (a setting the server reports).
    Parameter,
}

/// A session-level event, for recording and audit.
#[derive(Debug)]
pub enum SessionEvent<'a> {
    /// The session is established upstream.
    Connected {
        /// Who.
        identity: &'a Identity,
        /// From where.
        client: SocketAddr,
        /// Which connection.
        connection: &'a str,
        /// application_name from the startup message.
        application_name: Option<&'a str>,
        /// Whether the client used TLS.
        tls: bool,
    },
    /// A statement was refused by the hooks.
    Refused {
        /// The statement.
        sql: &'a str,
        /// Why.
        message: &'a str,
    },
    /// The client asked to cancel the running statement.
    CancelRequested,
    /// An Execute went upstream (the results that follow are its).
    Executing,
    /// The upstream answered with an error (fields as the client got them,
    /// i.e. masked).
    Failed {
        /// SQLSTATE.
        sqlstate: &'a str,
        /// The primary message.
        message: &'a str,
    },
    /// The session ended.
    Disconnected {
        /// Why it ended, when not by the client's Terminate.
        reason: Option<&'a str>,
    },
}

/// The per-session hook set. Every method has a pass-through default.
pub trait SessionHooks: Send {
    /// Decide on a statement before it goes upstream.
    fn statement(&mut self, _statement: &Statement<'_>) -> Verdict {
        Verdict::Decided(Decision::Forward)
    }

    /// The upstream is ready for the next query; `status` is ReadyForQuery's
    /// transaction status (`I` idle, `T` in a transaction, `E` failed one).
    fn ready(&mut self, _status: u8) {}

    /// The columns of the rows that follow (until the next call). `None`
    /// when the relay could not learn them: values are then unknown.
    fn result_columns(&mut self, _columns: Option<&[ResultColumn]>) {}

    /// Asked right after a statement is forwarded: could it change how the
    /// server reads SQL (standard_conforming_strings, client_encoding)?
    /// Code, routine calls and settings changes could; `true` unless a
    /// stage that reads statements knows better.
    fn reading_may_change(&self) -> bool {
        true
    }

    /// Before the first row of a result reaches the client: may rows with
    /// these columns be delivered? `Err` says why not; the relay then drops
    /// the result's rows and ends it with that error instead (PostgreSQL:
    /// the tables the server says the columns come from must be among
    /// those the policy decided about).
    fn columns_allowed(&mut self, _columns: &[ResultColumn]) -> Result<(), String> {
        Ok(())
    }

    /// A COPY TO STDOUT stream starts: its rows (`CopyRow` values) follow.
    /// `origin` is `None` when the relay cannot tell which statement it is.
    fn copy_out(&mut self, _origin: Option<CopyOrigin<'_>>, _columns: usize, _binary: bool) {}

    /// Rewrite a value on its way to the client. Returning `Cow::Borrowed`
    /// keeps the frame untouched (no copy); `None` turns a cell into NULL
    /// (other values into an empty one).
    fn result_value<'v>(&mut self, _source: ValueSource, value: &'v [u8]) -> Option<Cow<'v, [u8]>> {
        Some(Cow::Borrowed(value))
    }

    /// Whether [`SessionHooks::result_value`] needs to see values at all;
    /// when false the relay forwards result frames without looking inside.
    fn inspects_values(&self) -> bool {
        false
    }

    /// Observe a session event.
    fn event(&mut self, _event: &SessionEvent<'_>) {}

    /// How the statement just decided was judged (the policy stage answers).
    fn ruling(&mut self) -> Option<Ruling> {
        None
    }

    /// A result row as the upstream sent it, before any value is rewritten
    /// (PostgreSQL: the DataRow body). Called only when
    /// [`SessionHooks::inspects_values`] is true.
    fn data_row(&mut self, _row: &[u8]) {}

    /// A statement finished with this command tag (e.g. `SELECT 3`).
    fn complete(&mut self, _tag: &str) {}

    /// What the masking stage masked in this session so far.
    fn masking_counts(&self) -> Option<&crate::masking::Counts> {
        None
    }
}

/// The pass-through hook set.
#[derive(Debug, Default)]
pub struct Passthrough;

impl SessionHooks for Passthrough {}

/// Makes the hooks for each new session.
pub trait HookFactory: Send + Sync {
    /// Hooks for a session of `identity` on `connection`.
    fn for_session(&self, identity: &Identity, connection: &str) -> Box<dyn SessionHooks>;
}

/// Logs session events and lets everything through.
#[derive(Debug, Default)]
pub struct LoggingHooks;

impl HookFactory for LoggingHooks {
    fn for_session(&self, identity: &Identity, connection: &str) -> Box<dyn SessionHooks> {
        Box::new(SessionLog {
            subject: identity.subject.clone(),
            connection: connection.to_string(),
        })
    }
}

struct SessionLog {
    subject: String,
    connection: String,
}

impl SessionHooks for SessionLog {
    fn event(&mut self, event: &SessionEvent<'_>) {
        match event {
            SessionEvent::Connected {
                identity,
                client,
                application_name,
                tls,
                ..
            } => tracing::info!(
                target: "tollgate::audit",
                event = "session.start",
                subject = %identity.subject,
                groups = ?identity.groups,
                mfa = identity.mfa,
                kind = ?identity.kind,
                %client,
                connection = %self.connection,
                application_name = application_name.unwrap_or(""),
                tls,
            ),
            SessionEvent::Refused { message, .. } => tracing::info!(
                target: "tollgate::audit", event = "statement.refused", subject = %self.subject, connection = %self.connection, %message
            ),
            SessionEvent::CancelRequested => tracing::info!(
                target: "tollgate::audit", event = "cancel", subject = %self.subject, connection = %self.connection
            ),
            SessionEvent::Executing | SessionEvent::Failed { .. } => {}
            SessionEvent::Disconnected { reason } => tracing::info!(
                target: "tollgate::audit", event = "session.end", subject = %self.subject, connection = %self.connection, reason = reason.unwrap_or("client terminated")
            ),
        }
    }
}
