//! The claims of an access token that Tollgate reads.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Identity, PrincipalKind};
use crate::config::IdentityConfig;

/// Registered claims plus everything else (groups and the agent marker live
/// under configurable names).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Audience: one string or a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Value>,
    /// Expiry (seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Not before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Authentication methods references (RFC 8176).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// Authentication context class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    /// Every other claim.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl Claims {
    /// The identity these (already validated) claims describe.
    pub fn into_identity(self, config: &IdentityConfig) -> Identity {
        let groups = match self.other.get(&config.groups_claim) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            Some(Value::String(s)) => s
                .split([' ', ','])
                .filter(|g| !g.is_empty())
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        };
        let mfa = self.amr.iter().any(|m| config.mfa.amr_values.contains(m))
            || self
                .acr
                .as_ref()
                .is_some_and(|a| config.mfa.acr_values.contains(a));
        let kind = match self.other.get(&config.agent.claim) {
            Some(Value::String(v)) if config.agent.values.contains(v) => PrincipalKind::Agent,
            Some(Value::Bool(true)) => PrincipalKind::Agent,
            _ => PrincipalKind::Person,
        };
        let scopes = match self.other.get("scope").or_else(|| self.other.get("scp")) {
            Some(Value::String(s)) => s
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        };
        Identity {
            scopes,
            subject: self.sub.unwrap_or_default(),
            issuer: self.iss.unwrap_or_default(),
            groups,
            mfa,
            kind,
            expires_at: self.exp.unwrap_or(0),
        }
    }
}
