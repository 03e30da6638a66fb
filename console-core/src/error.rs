//! The console's errors: each says what went wrong and what to do next, and
//! reaches the window as `{ code, message, hint }`.

use serde::Serialize;
use ts_rs::TS;

/// Why a console call failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// A listen address is taken.
    #[error("{addr} is already in use")]
    PortTaken {
        /// The address.
        addr: std::net::SocketAddr,
    },
    /// No PostgreSQL server binaries for the throwaway database.
    #[error("PostgreSQL's server programs (initdb, pg_ctl) are not installed")]
    NoPostgres,
    /// The throwaway database failed to start or seed.
    #[error("the throwaway database did not start: {0}")]
    DemoDatabase(String),
    /// The database URL is not usable.
    #[error("{0}")]
    BadUrl(String),
    /// A listen address is not an address.
    #[error("{0}")]
    BadAddress(String),
    /// The upstream database refused or could not be reached.
    #[error("the database did not accept the gateway: {0}")]
    Upstream(String),
    /// The gateway did not start.
    #[error("the gateway did not start: {0}")]
    Gateway(String),
    /// An action needs the local gateway, and it is not running.
    #[error("the local gateway is not running")]
    NotRunning,
    /// The local gateway is starting or stopping.
    #[error("the local gateway is busy {0}")]
    Busy(&'static str),
    /// The gateway refused a decision.
    #[error("{message}")]
    Refused {
        /// The gateway's stable code (`self_approval`, `not_found` ...).
        code: String,
        /// Its message.
        message: String,
    },
    /// The gateway could not be reached for a decision.
    #[error("the gateway could not be reached: {0}")]
    Unreachable(String),
    /// A reason is required.
    #[error("a reason is required")]
    NoReason,
    /// A dev token could not be minted.
    #[error("could not mint a dev token: {0}")]
    Token(String),
    /// No gateway to show recordings or evidence of.
    #[error("no gateway: the local gateway is not running and no team gateway is signed in")]
    NoGateway,
    /// The gateway no longer accepts the console's token.
    #[error("signed out: {0}")]
    SignedOut(String),
    /// Signing in did not complete.
    #[error("sign-in failed: {0}")]
    SignIn(String),
    /// No OS keyring to keep the tokens in.
    #[error("no OS keyring is available to keep the sign-in: {0}")]
    NoKeyring(String),
    /// The gateway's caller lacks a role.
    #[error("{0}")]
    Forbidden(String),
    /// An evidence export failed.
    #[error("the evidence export failed: {0}")]
    Export(String),
    /// A bad argument from the window.
    #[error("{0}")]
    Invalid(String),
}

/// A [`ConsoleError`] as the window gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
pub struct ErrorView {
    /// A stable code.
    pub code: String,
    /// What went wrong.
    pub message: String,
    /// What to do next.
    pub hint: String,
}

impl ConsoleError {
    /// A stable code for the window and the tests.
    pub fn code(&self) -> &str {
        match self {
            ConsoleError::PortTaken { .. } => "port_taken",
            ConsoleError::NoPostgres => "no_postgres",
            ConsoleError::DemoDatabase(_) => "demo_database",
            ConsoleError::BadUrl(_) => "bad_url",
            ConsoleError::BadAddress(_) => "bad_address",
            ConsoleError::Upstream(_) => "upstream",
            ConsoleError::Gateway(_) => "gateway",
            ConsoleError::NotRunning => "not_running",
            ConsoleError::Busy(_) => "busy",
            ConsoleError::Refused { code, .. } => code,
            ConsoleError::Unreachable(_) => "unreachable",
            ConsoleError::NoReason => "no_reason",
            ConsoleError::Token(_) => "token",
            ConsoleError::NoGateway => "no_gateway",
            ConsoleError::SignedOut(_) => "signed_out",
            ConsoleError::SignIn(_) => "sign_in",
            ConsoleError::NoKeyring(_) => "no_keyring",
            ConsoleError::Forbidden(_) => "forbidden",
            ConsoleError::Export(_) => "export",
            ConsoleError::Invalid(_) => "invalid",
        }
    }

    /// What to do next.
    pub fn hint(&self) -> String {
        match self {
            ConsoleError::PortTaken { addr } => format!(
                "Another program listens on {addr} (another Tollgate, `tollgate demo`, or a PostgreSQL or PgBouncer). \
                 Stop it, or start the local gateway on other ports."
            ),
            ConsoleError::NoPostgres => "Install them with `sudo apt-get install postgresql` (or set TOLLGATE_PG_BIN to \
                 the directory holding initdb), or connect the local gateway to an existing database instead."
                .into(),
            ConsoleError::DemoDatabase(_) => "Check that /tmp is writable and not full, then start again. \
                 Running the console from a terminal shows PostgreSQL's own log."
                .into(),
            ConsoleError::BadUrl(_) => {
                "Enter a URL like postgres://USER:PASSWORD@HOST:5432/DATABASE (add ?sslmode=verify-full for a remote server).".into()
            }
            ConsoleError::BadAddress(_) => {
                "Enter an IP address and port, like 127.0.0.1:6432 (port 0 picks a free one).".into()
            }
            ConsoleError::Upstream(_) => "Check the host, port, user and password, that the server accepts this \
                 user from this machine (pg_hba.conf), and its TLS setting (sslmode in the URL)."
                .into(),
            ConsoleError::Gateway(_) => {
                "Run the console from a terminal to see the gateway's log, then start again.".into()
            }
            ConsoleError::NotRunning => "Start the local gateway first.".into(),
            ConsoleError::Busy(_) => "Wait a moment and try again.".into(),
            ConsoleError::Refused { code, .. } => match code.as_str() {
                "self_approval" => "Another approver has to decide it.".into(),
                "already_voted" => "It needs another approver's vote.".into(),
                "not_found" | "not_pending" => "It was decided, expired or withdrawn meanwhile; the inbox shows how.".into(),
                "forbidden" => "Only approvers of this connection, signed in with MFA, decide it.".into(),
                _ => "The inbox shows the request as it stands now.".into(),
            },
            ConsoleError::Unreachable(_) => {
                "The console reconnects on its own; try again once the inbox says it is live.".into()
            }
            ConsoleError::NoReason => "Write why: it goes into the audit log and the requester is told.".into(),
            ConsoleError::Token(_) => "Restart the local gateway; its data directory may not be writable.".into(),
            ConsoleError::NoGateway => {
                "Start the local gateway, or sign in to your team's gateway on the Sign-in page.".into()
            }
            ConsoleError::SignedOut(_) => "Sign in again on the Sign-in page.".into(),
            ConsoleError::SignIn(_) => "Check the gateway URL and that your identity provider is reachable, then                  sign in again; the browser tab shows the provider's own error, if it gave one."
                .into(),
            ConsoleError::NoKeyring(_) => "Start your desktop's keyring (GNOME Keyring, KWallet), or sign in for                  this session only: the tokens then stay in memory and you sign in again next time."
                .into(),
            ConsoleError::Forbidden(_) => "Ask your gateway's administrator for the group named in the message.".into(),
            ConsoleError::Export(_) => "Check the destination folder is writable and empty, then export again.".into(),
            ConsoleError::Invalid(_) => "Correct the value and try again.".into(),
        }
    }

    /// As the window gets it.
    pub fn view(&self) -> ErrorView {
        ErrorView {
            code: self.code().to_string(),
            message: self.to_string(),
            hint: self.hint(),
        }
    }
}

impl Serialize for ConsoleError {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.view().serialize(serializer)
    }
}
