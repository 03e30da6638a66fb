//! Why a login was refused, in words the caller can act on.

use jsonwebtoken::errors::ErrorKind;

use super::Claims;
use crate::stage::Reason;

/// A refused token. The message never contains the token itself.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No password was sent.
    #[error("no access token: send your OIDC access token as the password")]
    MissingToken,
    /// Not a JWT.
    #[error("the password is not a JWT access token")]
    Malformed,
    /// `iss` names no trusted issuer.
    #[error("token issuer '{0}' is not trusted by this gateway")]
    UnknownIssuer(String),
    /// The header names an algorithm the issuer may not use.
    #[error("token algorithm {0} is not accepted for this issuer")]
    AlgorithmNotAllowed(String),
    /// No key with the token's `kid`, even after refreshing the JWKS.
    #[error("token signing key '{0}' is unknown to the issuer's JWKS")]
    UnknownKey(String),
    /// The issuer's keys could not be fetched.
    #[error("cannot fetch the issuer's signing keys: {0}")]
    KeysUnavailable(String),
    /// `exp` is in the past.
    #[error("token expired {0} s ago; get a new access token")]
    Expired(u64),
    /// `nbf` is in the future.
    #[error("token is not valid yet (nbf is {0} s in the future)")]
    NotYetValid(u64),
    /// `aud` does not name this gateway.
    #[error("token audience {found} does not include this gateway's audience '{expected}'")]
    WrongAudience {
        /// The audience in the token.
        found: String,
        /// The gateway's audience.
        expected: String,
    },
    /// The signature does not verify.
    #[error("token signature is not valid")]
    BadSignature,
    /// A required claim is missing or has the wrong type.
    #[error("token claim {0} is missing or malformed")]
    BadClaim(String),
    /// The PostgreSQL user name differs from the token's subject.
    #[error("user name '{user}' does not match the token subject")]
    UserMismatch {
        /// The user name sent in the startup message.
        user: String,
    },
    /// The identity configuration could not be set up.
    #[error("identity setup: {0}")]
    Setup(String),
}

impl AuthError {
    /// Why, in the stages' vocabulary: the credential itself is bad
    /// (unauthenticated), it names someone else (forbidden), or the
    /// gateway cannot check it now (a dependency is unavailable).
    pub fn reason(&self) -> Reason {
        match self {
            AuthError::UserMismatch { .. } => Reason::Forbidden,
            AuthError::Setup(_) | AuthError::KeysUnavailable(_) => Reason::DependencyUnavailable,
            _ => Reason::Unauthenticated,
        }
    }

    pub(super) fn from_jwt(
        e: jsonwebtoken::errors::Error,
        claims: &Claims,
        expected: &str,
    ) -> Self {
        let now = jsonwebtoken::get_current_timestamp();
        match e.kind() {
            ErrorKind::ExpiredSignature => {
                AuthError::Expired(now.saturating_sub(claims.exp.unwrap_or(now)))
            }
            ErrorKind::ImmatureSignature => {
                AuthError::NotYetValid(claims.nbf.unwrap_or(now).saturating_sub(now))
            }
            ErrorKind::InvalidAudience => AuthError::WrongAudience {
                found: claims
                    .aud
                    .as_ref()
                    .map_or_else(|| "(none)".into(), |a| a.to_string()),
                expected: expected.to_string(),
            },
            ErrorKind::MissingRequiredClaim(c) | ErrorKind::InvalidClaimFormat(c) => {
                AuthError::BadClaim(c.clone())
            }
            ErrorKind::InvalidIssuer => {
                AuthError::UnknownIssuer(claims.iss.clone().unwrap_or_default())
            }
            ErrorKind::InvalidAlgorithm => AuthError::AlgorithmNotAllowed("mismatch".into()),
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_) => AuthError::BadSignature,
            _ => AuthError::Malformed,
        }
    }
}
