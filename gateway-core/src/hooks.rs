//! Hook points where the shared stages attach to a session.
//!
//! A protocol adapter (today `pg`) owns the wire; at each point below it
//! asks the session's [`SessionHooks`]. The default implementation lets
//! everything through, which is the data path of the first release: the
//! policy, approval, masking and recording stages implement this trait.
//!
//! | point | called | may |
//! |---|---|---|
//! | [`SessionHooks::statement`] | per statement-bearing message (simple Query, Parse) before it goes upstream | allow, refuse with an error, wait (catalog, estimate) or hold for approval with a notice, and be asked again |
//! | [`SessionHooks::ready`] | per ReadyForQuery | follow the transaction status |
//! | [`SessionHooks::result_value`] | per result cell, error/notice field, copy row and notification payload | rewrite the bytes (masking) |
//! | [`SessionHooks::event`] | per session event (connect, statement, error, cancel, disconnect) | record |

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use crate::identity::Identity;

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

/// What to do with a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send it upstream.
    Forward,
    /// Do not send it; the client gets an error with this SQLSTATE and message.
    Refuse {
        /// SQLSTATE, e.g. 42501.
        sqlstate: &'static str,
        /// Why, in words the caller can act on.
        message: String,
    },
}

/// The answer of [`SessionHooks::statement`].
pub enum Verdict {
    /// Decided now.
    Decided(Decision),
    /// Not yet: the relay waits for this future (reading nothing more from
    /// the client, still relaying the upstream's answers to earlier
    /// messages), then asks again about the same statement. Used for work
    /// a decision needs first: a catalog read, a row estimate, an approval.
    Wait(Pin<Box<dyn Future<Output = ()> + Send>>),
    /// Not yet: ask again once the upstream has answered every earlier
    /// message (see [`InFlight::Answers`]). The relay reads nothing more
    /// from the client meanwhile.
    AfterAnswers,
    /// Held for a person's approval: the relay tells the client `notice`
    /// (a NoticeResponse), then waits like [`Verdict::Wait`] and asks again.
    Hold {
        /// What the client is told: the request id, who was notified, when it expires.
        notice: String,
        /// Resolves once the request is decided, expires or is withdrawn.
        until: Pin<Box<dyn Future<Output = ()> + Send>>,
    },
}

impl std::fmt::Debug for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Decided(d) => f.debug_tuple("Decided").field(d).finish(),
            Verdict::Wait(_) => f.write_str("Wait"),
            Verdict::AfterAnswers => f.write_str("AfterAnswers"),
            Verdict::Hold { notice, .. } => f.debug_struct("Hold").field("notice", notice).finish(),
        }
    }
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

/// What the policy stage made of the statement it just decided, for
/// recording and audit.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Ruling {
    /// Kinds of access, e.g. `read`, `write`, `ddl` (each once).
    pub actions: Vec<String>,
    /// What the statement touches, e.g. `SELECT on public.payments`.
    pub resources: Vec<String>,
    /// Those of `resources` that hold cardholder data.
    pub cardholder_resources: Vec<String>,
    /// It touches a table that holds cardholder data.
    pub cardholder: bool,
    /// The policy that refused it or holds it for approval.
    pub policy: Option<String>,
    /// The approval request that let it through, if one did.
    pub approval: Option<String>,
    /// The window grant that let it through, if one did.
    pub grant: Option<String>,
    /// How its approval request ended (`approved`, `denied`, `expired`,
    /// `withdrawn`), or `granted` when a window grant let it through.
    pub approval_state: Option<String>,
    /// Who approved it (or denied it).
    pub decided_by: Vec<String>,
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
