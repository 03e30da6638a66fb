//! The contract between a protocol adapter and the stages both adapters
//! share (policy, approvals, masking, recording, audit).
//!
//! An adapter (`pg`, `mcp`) turns what its client sent into a request (a
//! statement, a tool call), asks the stages, and gets a [`Verdict`] back:
//! forward it, refuse it with a typed [`Reason`], wait for work the decision
//! needs, or hold it for a person's approval with a notice. Nothing here
//! names a protocol: each adapter maps a [`Reason`] to its own codes (a
//! SQLSTATE in `pg::error`, a JSON-RPC error code and an HTTP status in
//! `mcp`), and the mappings are tested there against the table below.
//!
//! | reason | what happened | PostgreSQL | JSON-RPC | HTTP |
//! |---|---|---|---|---|
//! | [`Reason::Unauthenticated`] | no valid credential | 28P01 | -32001 | 401 |
//! | [`Reason::Forbidden`] | a policy refused it | 42501 | -32003 | 403 |
//! | [`Reason::ApprovalDenied`] | an approver said no | 42501 | -32003 | 403 |
//! | [`Reason::ApprovalExpired`] | nobody decided in time | 42501 | -32004 | 403 |
//! | [`Reason::Withdrawn`] | the hold was cancelled | 57014 | -32800 | 409 |
//! | [`Reason::Unsupported`] | the gateway does not understand it, so it fails closed | 0A000 | -32601 | 400 |
//! | [`Reason::Malformed`] | it is not a valid request | 42601 | -32600 | 400 |
//! | [`Reason::BadEncoding`] | its bytes do not decode (text, JSON) | 22021 | -32700 | 400 |
//! | [`Reason::TooLarge`] | it is bigger than the gateway takes | 54000 | -32600 | 413 |
//! | [`Reason::NotFound`] | it names something that does not exist | 26000 | -32602 | 404 |
//! | [`Reason::DependencyUnavailable`] | something the decision needs is unreachable | 58000 | -32002 | 503 |
//! | [`Reason::AuditUnavailable`] | its audit record could not be made durable | 58030 | -32002 | 503 |

use std::future::Future;
use std::pin::Pin;

/// Why a request was refused: one vocabulary for every adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The caller has no valid credential.
    Unauthenticated,
    /// A policy refused it.
    Forbidden,
    /// It was held for approval and an approver denied it.
    ApprovalDenied,
    /// It was held for approval and nobody decided before the request expired.
    ApprovalExpired,
    /// It was held and the hold ended without a decision (withdrawn,
    /// cancelled by the caller, or the approval service gave up on it).
    Withdrawn,
    /// The gateway does not understand it well enough to decide, so it
    /// fails closed (an allow-list, not a deny-list).
    Unsupported,
    /// It is not a valid request (a syntax error, a bad message).
    Malformed,
    /// Its bytes do not decode: not valid text in the encoding it claims,
    /// or not the JSON it says it is.
    BadEncoding,
    /// It is larger than the gateway accepts.
    TooLarge,
    /// It refers to something that does not exist (a prepared statement,
    /// a tool, a session).
    NotFound,
    /// Something the decision needs (a catalog read, the approval service)
    /// is unavailable, so it did not run.
    DependencyUnavailable,
    /// Its audit record could not be made durable, so it did not run.
    AuditUnavailable,
}

impl Reason {
    /// Every reason, for the mapping tables' tests.
    pub const ALL: [Reason; 12] = [
        Reason::Unauthenticated,
        Reason::Forbidden,
        Reason::ApprovalDenied,
        Reason::ApprovalExpired,
        Reason::Withdrawn,
        Reason::Unsupported,
        Reason::Malformed,
        Reason::BadEncoding,
        Reason::TooLarge,
        Reason::NotFound,
        Reason::DependencyUnavailable,
        Reason::AuditUnavailable,
    ];

    /// The reason's name in records (`forbidden`, `approval_denied`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unauthenticated => "unauthenticated",
            Reason::Forbidden => "forbidden",
            Reason::ApprovalDenied => "approval_denied",
            Reason::ApprovalExpired => "approval_expired",
            Reason::Withdrawn => "withdrawn",
            Reason::Unsupported => "unsupported",
            Reason::Malformed => "malformed",
            Reason::BadEncoding => "bad_encoding",
            Reason::TooLarge => "too_large",
            Reason::NotFound => "not_found",
            Reason::DependencyUnavailable => "dependency_unavailable",
            Reason::AuditUnavailable => "audit_unavailable",
        }
    }

    /// The HTTP status for a refusal answered at the transport level
    /// (before, or instead of, a protocol-level error).
    pub fn http_status(self) -> u16 {
        match self {
            Reason::Unauthenticated => 401,
            Reason::Forbidden | Reason::ApprovalDenied | Reason::ApprovalExpired => 403,
            Reason::Withdrawn => 409,
            Reason::Unsupported | Reason::Malformed | Reason::BadEncoding => 400,
            Reason::TooLarge => 413,
            Reason::NotFound => 404,
            Reason::DependencyUnavailable | Reason::AuditUnavailable => 503,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: why, in the typed vocabulary, and in words the caller can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why, for the adapter's error code and for records.
    pub reason: Reason,
    /// What the caller is told (names the policy when one refused it).
    pub message: String,
}

impl Refusal {
    /// A refusal for `reason` saying `message`.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send it upstream.
    Forward,
    /// Do not send it; the caller gets an error for this refusal.
    Refuse(Refusal),
}

impl Decision {
    /// A refusal for `reason` saying `message`.
    pub fn refuse(reason: Reason, message: impl Into<String>) -> Self {
        Decision::Refuse(Refusal::new(reason, message))
    }
}

/// The stages' answer about a request.
pub enum Verdict {
    /// Decided now.
    Decided(Decision),
    /// Not yet: the adapter waits for this future (reading nothing more
    /// from the caller on this stream, still relaying the upstream's
    /// answers to earlier requests), then asks again about the same
    /// request. Used for work a decision needs first: a catalog read, a
    /// row estimate, an approval.
    Wait(Pin<Box<dyn Future<Output = ()> + Send>>),
    /// Not yet: ask again once the upstream has answered every earlier
    /// request of the session (a decision that depends on state those
    /// requests may change). The adapter reads nothing more meanwhile.
    AfterAnswers,
    /// Held for a person's approval: the adapter tells the caller `notice`
    /// (PostgreSQL: a NoticeResponse; MCP: a progress notification), then
    /// waits like [`Verdict::Wait`] and asks again.
    Hold {
        /// What the caller is told: the request id, who was notified, when it expires.
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

/// What the policy stage made of the request it just decided, for
/// recording and audit.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Ruling {
    /// Kinds of access, e.g. `read`, `write`, `ddl`, `call` (each once).
    pub actions: Vec<String>,
    /// What the request touches, e.g. `SELECT on public.payments` or
    /// `call payments/export_cards`.
    pub resources: Vec<String>,
    /// Those of `resources` that hold cardholder data.
    pub cardholder_resources: Vec<String>,
    /// It touches something that holds cardholder data.
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

#[cfg(test)]
mod tests {
    use super::Reason;

    #[test]
    fn every_reason_has_a_distinct_name_and_a_client_or_server_error_status() {
        let mut names = std::collections::HashSet::new();
        for reason in Reason::ALL {
            assert!(names.insert(reason.as_str()), "{reason} named twice");
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                serde_json::Value::from(reason.as_str())
            );
            let status = reason.http_status();
            assert!((400..600).contains(&status), "{reason}: {status}");
        }
        assert_eq!(Reason::Unauthenticated.http_status(), 401);
        assert_eq!(Reason::Forbidden.http_status(), 403);
        assert_eq!(Reason::TooLarge.http_status(), 413);
        assert_eq!(Reason::AuditUnavailable.http_status(), 503);
    }
}
