//! The console's own wire types: what its commands take and answer and the
//! events it sends the window. The TypeScript in `ui/src/generated/` is
//! generated from these and the approval protocol's types (see
//! `tests/typescript.rs`), never written by hand.

use serde::{Deserialize, Serialize};
use ts_rs::TS;

pub use tollgate::approvals::Requester;
pub use tollgate::approvals::protocol::{GrantView, RequestView, Vote};

use crate::error::ErrorView;

/// Something the window should know now.
#[derive(Debug, Clone, PartialEq, Serialize, TS)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ConsoleEvent {
    /// The local gateway's state changed.
    Local {
        /// Its state now.
        status: LocalStatus,
    },
    /// The inbox changed (a request came, was decided, expired, or the link changed).
    Inbox {
        /// The whole inbox as it stands.
        inbox: InboxView,
    },
    /// The demo traffic generator's counters changed.
    Traffic {
        /// Its state now.
        status: TrafficStatus,
    },
    /// A one-time message for the status bar.
    Notice {
        /// `info` or `warning`.
        level: String,
        /// What to tell the user.
        message: String,
    },
    /// Show this request (a notification was clicked).
    Focus {
        /// The request id.
        request: String,
    },
}

/// Where the local gateway stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LocalStatus {
    /// Not running.
    Stopped,
    /// Starting: what it is doing now.
    Starting {
        /// The current step, for the progress line.
        step: String,
    },
    /// Running.
    Running {
        /// Where and in front of what.
        info: Box<LocalInfo>,
    },
    /// Stopping.
    Stopping,
    /// The last start failed.
    Failed {
        /// What went wrong and what to do next.
        error: ErrorView,
    },
}

/// A running local gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
pub struct LocalInfo {
    /// `demo` (a throwaway, seeded database) or `upstream` (an existing one).
    pub mode: String,
    /// The PostgreSQL listener (TLS), e.g. `127.0.0.1:6432`.
    pub listen: String,
    /// The API (approvals WebSocket, recordings), e.g. `https://127.0.0.1:6433`.
    pub api: String,
    /// The connection name clients put in `dbname`.
    pub connection: String,
    /// What the gateway is in front of, without any password.
    pub upstream: String,
    /// Tables the gateway treats as holding cardholder data.
    pub cardholder_tables: Vec<String>,
    /// The gateway's data directory (audit log, recordings, dev issuer).
    pub data_dir: String,
    /// The certificate clients can verify the gateway with.
    pub ca_file: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Client sessions open now.
    pub sessions: u32,
    /// What is wrong, when the database stopped answering (checked every 5 s).
    pub health: Option<String>,
    /// Who the console's inbox is signed in as.
    pub approver: Persona,
}

/// A dev identity the local gateway's issuer mints tokens for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct Persona {
    /// Token subject.
    pub subject: String,
    /// Token groups.
    pub groups: Vec<String>,
    /// Signed in with MFA.
    pub mfa: bool,
    /// An agent rather than a person.
    pub agent: bool,
}

impl Persona {
    /// The engineer at the desk: an analyst with MFA.
    pub fn engineer() -> Persona {
        Persona::person("alice", "analysts")
    }

    /// The console's own identity in local mode: an approver with MFA.
    pub fn approver() -> Persona {
        Persona::person("olga", "approvers")
    }

    /// The demo traffic's AI agent.
    pub fn agent() -> Persona {
        Persona {
            subject: "agent-7".into(),
            groups: vec!["agents".into()],
            mfa: false,
            agent: true,
        }
    }

    fn person(subject: &str, group: &str) -> Persona {
        Persona {
            subject: subject.into(),
            groups: vec![group.into()],
            mfa: true,
            agent: false,
        }
    }
}

/// How to start the local gateway.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, TS)]
pub struct LocalOptions {
    /// An existing database (`postgres://USER:PASS@HOST:PORT/DB`); none: a
    /// throwaway one seeded with fake cardholder data.
    #[serde(default)]
    #[ts(optional)]
    pub upstream: Option<String>,
    /// The PostgreSQL listener (default `127.0.0.1:6432`).
    #[serde(default)]
    #[ts(optional)]
    pub listen: Option<String>,
    /// The API listener (default `127.0.0.1:6433`).
    #[serde(default)]
    #[ts(optional)]
    pub api_listen: Option<String>,
}

/// A token and a ready psql line for one persona.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
pub struct DevAccess {
    /// The persona.
    pub persona: Persona,
    /// Its access token (one hour).
    pub token: String,
    /// A psql command that connects through the local gateway with it.
    pub psql: String,
}

/// The approvals inbox as the window shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, TS)]
pub struct InboxView {
    /// Who the inbox is signed in as, once the gateway said hello.
    pub me: Option<Me>,
    /// The link to the gateway.
    pub link: Link,
    /// Pending requests newest first, then recent decisions newest first.
    pub items: Vec<InboxItem>,
    /// Window grants in force.
    pub grants: Vec<GrantView>,
}

/// The signed-in approver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
pub struct Me {
    /// Token subject.
    pub subject: String,
    /// Token issuer.
    pub issuer: String,
    /// Connections whose requests they see and decide.
    pub connections: Vec<String>,
}

/// One request in the inbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
pub struct InboxItem {
    /// The request as the gateway describes it.
    pub request: RequestView,
    /// Why the signed-in approver cannot decide it, if they cannot.
    pub cannot_decide: Option<String>,
}

/// The link to the gateway's approvals API.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, TS)]
pub struct Link {
    /// `off` (no gateway), `connecting`, `live` (WebSocket), `polling`
    /// (HTTP, while the WebSocket is unavailable) or `down`.
    pub state: String,
    /// Why it is not live, and what the console does about it.
    pub detail: Option<String>,
    /// The API's URL.
    pub url: Option<String>,
}

/// An approver's decision.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, TS)]
pub struct Decision {
    /// The request id.
    pub id: String,
    /// Approve (else deny).
    pub approve: bool,
    /// Why (required; the requester is told).
    pub reason: String,
    /// Approve for this many seconds instead of once.
    #[serde(default)]
    #[ts(type = "number | null", optional)]
    pub window_secs: Option<u64>,
}

/// The demo traffic generator.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, TS)]
pub struct TrafficStatus {
    /// Running.
    pub running: bool,
    /// The agent it runs as.
    pub agent: String,
    /// Ordinary queries run.
    pub queries: u32,
    /// Bulk exports asked for (the starter policy holds each).
    pub exports: u32,
    /// Exports released by an approver.
    pub released: u32,
    /// Exports refused (denied or expired).
    pub refused: u32,
    /// An export is waiting for approval now.
    pub waiting: bool,
    /// The last error, if the last query failed.
    pub last_error: Option<String>,
}
