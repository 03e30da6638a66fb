//! Errors as PostgreSQL reports them: a severity, a SQLSTATE and a message
//! the client shows. Every layer's error converts into one of these.

use super::frame::Frame;
use super::messages;
use crate::stage::{Reason, Refusal};

/// The SQLSTATE a refusal of a statement carries.
pub fn sqlstate(reason: Reason) -> &'static str {
    match reason {
        // invalid_password: the token itself is bad.
        Reason::Unauthenticated => "28P01",
        // insufficient_privilege.
        Reason::Forbidden | Reason::ApprovalDenied | Reason::ApprovalExpired => "42501",
        // query_canceled.
        Reason::Withdrawn => "57014",
        // feature_not_supported.
        Reason::Unsupported => "0A000",
        // syntax_error.
        Reason::Malformed => "42601",
        // character_not_in_repertoire.
        Reason::BadEncoding => "22021",
        // program_limit_exceeded.
        Reason::TooLarge => "54000",
        // invalid_sql_statement_name: a prepared statement that does not exist.
        Reason::NotFound => "26000",
        // system_error.
        Reason::DependencyUnavailable => "58000",
        // io_error: the audit record could not be written.
        Reason::AuditUnavailable => "58030",
    }
}

/// ERROR keeps the session; FATAL ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends after this message.
    Fatal,
}

/// An error to send to a client as an ErrorResponse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct PgError {
    /// ERROR or FATAL.
    pub severity: Severity,
    /// Five-character SQLSTATE.
    pub code: &'static str,
    /// Primary message.
    pub message: String,
    /// Optional detail.
    pub detail: Option<String>,
    /// Optional hint: what to do next.
    pub hint: Option<String>,
}

impl PgError {
    /// A FATAL error: the connection closes after it.
    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Fatal,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// An ERROR: the statement fails, the session stays usable.
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// Add a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Add a detail.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The ErrorResponse frame.
    pub fn to_frame(&self) -> Frame {
        let severity = match self.severity {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        };
        let mut fields = vec![
            (b'S', severity.to_string()),
            (b'V', severity.to_string()),
            (b'C', self.code.to_string()),
            (b'M', self.message.clone()),
        ];
        if let Some(detail) = &self.detail {
            fields.push((b'D', detail.clone()));
        }
        if let Some(hint) = &self.hint {
            fields.push((b'H', hint.clone()));
        }
        messages::error_response(fields)
    }
}

impl From<Refusal> for PgError {
    fn from(refusal: Refusal) -> Self {
        PgError::error(sqlstate(refusal.reason), refusal.message)
    }
}

impl From<crate::identity::AuthError> for PgError {
    fn from(e: crate::identity::AuthError) -> Self {
        let hint = match &e {
            crate::identity::AuthError::Expired(_)
            | crate::identity::AuthError::MissingToken
            | crate::identity::AuthError::Malformed => Some(
                "get a fresh access token from your identity provider (or `tollgate token` in development) and use it as the password",
            ),
            _ => None,
        };
        // At login: 28P01 (invalid_password) when the token itself is bad,
        // 28000 (invalid_authorization_specification) otherwise.
        let code = match e.reason() {
            Reason::Unauthenticated => "28P01",
            _ => "28000",
        };
        let err = PgError::fatal(code, format!("authentication failed: {e}"));
        match hint {
            Some(h) => err.with_hint(h),
            None => err,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AuthError;

    #[test]
    fn auth_errors_map_to_28xxx() {
        assert_eq!(PgError::from(AuthError::Expired(5)).code, "28P01");
        assert_eq!(PgError::from(AuthError::BadSignature).code, "28P01");
        assert_eq!(
            PgError::from(AuthError::UserMismatch { user: "x".into() }).code,
            "28000"
        );
        assert_eq!(
            PgError::from(AuthError::KeysUnavailable("down".into())).code,
            "28000"
        );
        let e = PgError::from(AuthError::Expired(5));
        assert_eq!(e.severity, Severity::Fatal);
        assert!(e.message.contains("expired"));
    }

    #[test]
    fn refusals_carry_the_sqlstate_postgresql_would_send() {
        let table = [
            (Reason::Unauthenticated, "28P01"),
            (Reason::Forbidden, "42501"),
            (Reason::ApprovalDenied, "42501"),
            (Reason::ApprovalExpired, "42501"),
            (Reason::Withdrawn, "57014"),
            (Reason::Unsupported, "0A000"),
            (Reason::Malformed, "42601"),
            (Reason::BadEncoding, "22021"),
            (Reason::TooLarge, "54000"),
            (Reason::NotFound, "26000"),
            (Reason::DependencyUnavailable, "58000"),
            (Reason::AuditUnavailable, "58030"),
        ];
        assert_eq!(table.len(), Reason::ALL.len());
        for (reason, code) in table {
            let error = PgError::from(Refusal::new(reason, "why"));
            assert_eq!(
                (error.code, error.severity),
                (code, Severity::Error),
                "{reason}"
            );
            assert_eq!(error.message, "why");
        }
    }

    #[test]
    fn frame_carries_severity_code_message_and_hint() {
        let frame = PgError::error("42501", "denied")
            .with_hint("ask")
            .to_frame();
        let body = frame.body();
        assert_eq!(frame.tag(), b'E');
        for needle in [&b"SERROR\0"[..], b"C42501\0", b"Mdenied\0", b"Hask\0"] {
            assert!(body.windows(needle.len()).any(|w| w == needle));
        }
    }
}
