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
    /// The sign-in to a team's gateway changed.
    Remote {
        /// Where it stands now.
        status: RemoteStatus,
    },
    /// An evidence export moved on.
    Export {
        /// Its progress.
        progress: ExportProgress,
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
    /// The demo's payments MCP server behind the MCP listener (its
    /// Streamable HTTP URL), when it runs.
    pub mcp: Option<String>,
    /// Why the payments MCP server does not run, and what to do.
    pub mcp_note: Option<String>,
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

    /// A QSA or compliance officer: an auditor (metadata, no result rows).
    pub fn auditor() -> Persona {
        Persona::person("quinn", "auditors")
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
    /// The MCP listener (default `127.0.0.1:6434`), in front of the demo's
    /// payments MCP server.
    #[serde(default)]
    #[ts(optional)]
    pub mcp_listen: Option<String>,
    /// Also trust a team's OpenID Provider (set from Rust, not the window).
    #[serde(skip)]
    #[ts(skip)]
    pub trust: Option<TrustIssuer>,
}

/// An OpenID Provider the local gateway trusts besides its dev issuer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrustIssuer {
    /// The issuer URL.
    pub issuer: String,
    /// The audience its tokens carry for this gateway.
    pub audience: String,
    /// The console's client id there.
    pub console_client_id: Option<String>,
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
    /// (HTTP, while the WebSocket is unavailable), `down`, or `refused` (the
    /// signed-in identity is not an approver there).
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

pub use tollgate::api::evidence::{ExportSummary, ExportView};
pub use tollgate::recording::store::{
    Frame, Marker, Match, SessionPage, SessionRow, SessionSummary,
};

/// Where the console stands with a team's gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RemoteStatus {
    /// Not signed in.
    SignedOut {
        /// The gateway signed in to last time, to offer again.
        gateway: Option<String>,
        /// Why the last sign-in ended, when it did not end by sign-out.
        reason: Option<String>,
    },
    /// Waiting for the browser, or for the provider.
    SigningIn {
        /// The gateway.
        gateway: String,
        /// What is happening.
        step: String,
    },
    /// Signed in.
    SignedIn {
        /// Who, where, and with what roles.
        session: Box<RemoteSession>,
    },
}

/// A signed-in session with a team's gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
pub struct RemoteSession {
    /// The gateway's API.
    pub gateway: String,
    /// The OpenID Provider.
    pub issuer: String,
    /// Who signed in.
    pub subject: String,
    /// Their groups, as the gateway read them from the token.
    pub groups: Vec<String>,
    /// Their roles at the gateway (`auditor`, `analyst`).
    pub roles: Vec<String>,
    /// When the access token expires (RFC 3339); it is refreshed before.
    pub expires_at: String,
    /// A refresh token is held (sign-in lasts without the browser).
    pub refreshable: bool,
    /// The tokens are in the OS keyring (else in memory, for this session only).
    pub in_keyring: bool,
}

/// How to sign in to a team's gateway.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, TS)]
pub struct SignInOptions {
    /// The gateway's API, `https://HOST:PORT`.
    pub gateway: String,
    /// A CA certificate (PEM file) to trust for the gateway and the provider.
    #[serde(default)]
    #[ts(optional)]
    pub ca_file: Option<String>,
    /// The OpenID Provider, when the gateway trusts several.
    #[serde(default)]
    #[ts(optional)]
    pub issuer: Option<String>,
    /// Keep the tokens in memory only (no OS keyring here).
    #[serde(default)]
    #[ts(optional)]
    pub session_only: Option<bool>,
}

/// Who the session browser, the player and evidence act as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
pub struct Viewer {
    /// `local` or `remote`.
    pub mode: String,
    /// The gateway's API.
    pub gateway: String,
    /// The identity.
    pub subject: String,
    /// Its roles at the gateway (`auditor`, `analyst`).
    pub roles: Vec<String>,
}

/// Which sessions to list (every field optional).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, TS)]
#[serde(default)]
pub struct SessionFilter {
    /// Started at or after (RFC 3339).
    #[ts(optional)]
    pub from: Option<String>,
    /// Started before (RFC 3339).
    #[ts(optional)]
    pub to: Option<String>,
    /// The identity contains this.
    #[ts(optional)]
    pub subject: Option<String>,
    /// The connection.
    #[ts(optional)]
    pub connection: Option<String>,
    /// `person` or `agent`.
    #[ts(optional)]
    pub kind: Option<String>,
    /// `refused`, `held`, `masked` or `error`.
    #[ts(optional)]
    pub outcome: Option<String>,
    /// Words a statement of the session has.
    #[ts(optional)]
    pub q: Option<String>,
    /// `newest` (default) or `oldest`.
    #[ts(optional)]
    pub order: Option<String>,
    /// The previous page's `next`.
    #[ts(optional)]
    pub after: Option<String>,
    /// Sessions per page.
    #[ts(optional)]
    pub limit: Option<u32>,
}

/// A session opened in the player.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct SessionDetail {
    /// Its header and counts.
    pub session: SessionSummary,
    /// Its last frame, if it has one.
    pub last_frame: Option<FrameRef>,
    /// This viewer gets result rows (else they are withheld by role).
    pub previews: bool,
}

/// A frame's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct FrameRef {
    /// Its sequence number.
    #[ts(type = "number")]
    pub seq: u64,
    /// Its time since the session started.
    #[ts(type = "number")]
    pub at_us: u64,
}

/// A page of frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
pub struct FramePage {
    /// The frames, in order.
    pub frames: Vec<Frame>,
    /// Pass as `after` for the next page; none on the last.
    #[ts(type = "number | null")]
    pub next_after: Option<u64>,
}

/// A session's markers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct MarkerList {
    /// Marked frames, in order.
    pub markers: Vec<Marker>,
    /// More than the gateway sends at once.
    pub truncated: bool,
}

/// Frames of a session that match a search.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct SearchResult {
    /// Their sequence numbers, in order.
    #[ts(type = "Array<number>")]
    pub matches: Vec<u64>,
    /// More than the gateway sends at once.
    pub truncated: bool,
}

/// The audit log's state, as the console checked it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
pub struct AuditState {
    /// The gateway.
    pub gateway: String,
    /// The log's name (the checkpoint's origin).
    pub origin: String,
    /// Records the checkpoint covers.
    #[ts(type = "number")]
    pub size: u64,
    /// Its Merkle root (base64).
    pub root: String,
    /// When the gateway signed it (RFC 3339).
    pub signed_at: String,
    /// The key that verifies it: hand it to the auditor out of band.
    pub verifier_key: String,
    /// The signature verified with that key.
    pub signature_ok: bool,
    /// When this console first saw the key (trust on first use).
    pub key_first_seen: String,
    /// The key differs from the one first seen for this gateway.
    pub key_changed: bool,
    /// The signed note itself.
    pub checkpoint: String,
}

/// Where and what to export.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, TS)]
pub struct ExportOptions {
    /// From (RFC 3339); none: the beginning.
    #[serde(default)]
    #[ts(optional)]
    pub from: Option<String>,
    /// To (RFC 3339, exclusive); none: now.
    #[serde(default)]
    #[ts(optional)]
    pub to: Option<String>,
    /// A new or empty directory for the bundle.
    pub dir: String,
}

/// An export's progress, for the progress bar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
pub struct ExportProgress {
    /// `exporting` (the gateway builds it), `downloading`, `verifying`, `done` or `failed`.
    pub phase: String,
    /// What the gateway is doing.
    pub stage: String,
    /// Overall, 0 to 1000.
    pub permille: u32,
    /// Bytes downloaded.
    #[ts(type = "number")]
    pub bytes: u64,
    /// When done or failed: the outcome.
    pub result: Option<ExportResult>,
    /// When failed: why.
    pub error: Option<ErrorView>,
}

/// A finished export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
pub struct ExportResult {
    /// Where the bundle is.
    pub dir: String,
    /// What the gateway counted.
    pub summary: ExportSummary,
    /// The console verified the bundle's audit log itself, with the pinned key.
    pub verified_here: bool,
    /// No key was pinned for this gateway yet: the bundle's own key verified
    /// it and is pinned now (compare it with the one the operator handed over).
    pub key_pinned_now: bool,
    /// The verification report (`verification.txt` as the console wrote it).
    pub report: String,
    /// The key it verified with.
    pub verifier_key: String,
    /// The archive's size.
    #[ts(type = "number")]
    pub bytes: u64,
}
