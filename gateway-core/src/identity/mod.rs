//! Identity: who is on the other end of a session.
//!
//! Callers authenticate with an OIDC access token (a JWT). [`Authenticator`]
//! checks it against the trusted issuers (keys from OIDC discovery and JWKS,
//! or the built-in dev issuer) and turns its claims into an [`Identity`]:
//! subject, groups, whether MFA was used, and whether it is a person or an agent.

mod claims;
pub mod dev_issuer;
mod error;
mod jwks;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, Validation};
use serde::Serialize;

use crate::config::IdentityConfig;
pub use claims::Claims;
pub use dev_issuer::DevIssuer;
pub use error::AuthError;
use jwks::KeySource;

/// A person or an agent (an AI agent or another non-human caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, ts_rs::TS)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A human with an interactive login.
    Person,
    /// A program acting on its own credentials.
    Agent,
}

/// An authenticated caller, as every later stage sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// The token's `sub`.
    pub subject: String,
    /// The token's `iss`.
    pub issuer: String,
    /// Groups from the configured groups claim (the basis of roles).
    pub groups: Vec<String>,
    /// Whether the token shows multi-factor authentication (`amr`/`acr`).
    pub mfa: bool,
    /// Person or agent.
    pub kind: PrincipalKind,
    /// Token expiry, seconds since the Unix epoch.
    pub expires_at: u64,
    /// The token's OAuth scopes (`scope`, space-separated, or `scp`).
    pub scopes: Vec<String>,
}

/// One trusted issuer: how its tokens are checked.
struct Issuer {
    audience: String,
    algorithms: Vec<Algorithm>,
    keys: KeySource,
}

/// How long a token, once verified, is taken without checking its
/// signature again (its expiry is checked every time). A key its issuer
/// withdraws from the JWKS is noticed at the next key refresh; a token that
/// key signed is taken at most this much longer.
const VERIFIED_FOR: Duration = Duration::from_secs(30);

/// Most verified tokens kept at once.
const VERIFIED_MAX: usize = 4096;

/// Validates access tokens against every trusted issuer.
pub struct Authenticator {
    issuers: HashMap<String, Issuer>,
    config: IdentityConfig,
    /// Tokens verified lately, under a digest of the audience and the
    /// token (never the token itself): an MCP client sends its token with
    /// every request, and the signature check was the largest single cost
    /// of a small tool call after the audit flush.
    verified: crate::recent::Recent<[u8; 32], Identity>,
}

impl Authenticator {
    /// Build from configuration. The dev issuer's key is loaded from (or
    /// created in) `data_dir` when the dev issuer is enabled.
    pub fn new(config: &IdentityConfig, data_dir: &Path) -> Result<Arc<Self>, AuthError> {
        let mut issuers = HashMap::new();
        let refresh = Duration::from_secs(config.jwks_min_refresh_secs);
        for issuer in &config.issuers {
            let issuer = issuer.get_ref();
            let algorithms = issuer
                .algorithms
                .iter()
                .map(|a| {
                    a.parse::<Algorithm>()
                        .map_err(|_| AuthError::Setup(format!("unknown algorithm {a}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let keys = KeySource::remote(issuer, refresh)?;
            issuers.insert(
                issuer.issuer.clone(),
                Issuer {
                    audience: issuer.audience.clone(),
                    algorithms,
                    keys,
                },
            );
        }
        if config.dev_issuer.enabled {
            let dev =
                DevIssuer::load_or_create(data_dir, &config.dev_issuer.audience).map_err(|e| {
                    AuthError::Setup(format!("dev issuer key in {}: {e}", data_dir.display()))
                })?;
            issuers.insert(
                dev_issuer::ISSUER.to_string(),
                Issuer {
                    audience: config.dev_issuer.audience.clone(),
                    algorithms: vec![Algorithm::EdDSA],
                    keys: KeySource::fixed(dev.kid(), dev.decoding_key()),
                },
            );
        }
        Ok(Arc::new(Self {
            issuers,
            config: config.clone(),
            verified: crate::recent::Recent::new(VERIFIED_FOR, VERIFIED_MAX),
        }))
    }

    /// Validate `token` for the PostgreSQL listener and the API (each
    /// issuer's configured audience) and return who it names.
    pub async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        self.authenticate_for(token, None).await
    }

    /// Validate `token` for a listener with its own `audience` (MCP: a
    /// token minted for the PostgreSQL listener is refused there, and the
    /// reverse), or for each issuer's audience when `None`.
    pub async fn authenticate_for(
        &self,
        token: &str,
        audience: Option<&str>,
    ) -> Result<Identity, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        let key = verified_key(audience, token);
        if let Some(identity) = self.recently_verified(&key)? {
            return Ok(identity);
        }
        let identity = self.verify(token, audience).await?;
        self.verified.keep(key, identity.clone());
        Ok(identity)
    }

    /// A token verified less than [`VERIFIED_FOR`] ago for the same
    /// audience, unless it has expired since (with the configured leeway,
    /// as the signature check allows).
    fn recently_verified(&self, key: &[u8; 32]) -> Result<Option<Identity>, AuthError> {
        let Some(identity) = self.verified.get(key) else {
            return Ok(None);
        };
        let now = crate::clock::now_secs().max(0) as u64;
        let until = identity.expires_at.saturating_add(self.config.leeway_secs);
        if now > until {
            return Err(AuthError::Expired(now - identity.expires_at));
        }
        Ok(Some(identity))
    }

    /// Check the token's signature and claims.
    async fn verify(&self, token: &str, audience: Option<&str>) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let unverified: Claims = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| AuthError::Malformed)?;
        let iss = unverified.iss.clone().unwrap_or_default();
        let issuer = self
            .issuers
            .get(&iss)
            .ok_or_else(|| AuthError::UnknownIssuer(iss.clone()))?;
        if !issuer.algorithms.contains(&header.alg) {
            return Err(AuthError::AlgorithmNotAllowed(format!("{:?}", header.alg)));
        }
        let key = issuer
            .keys
            .key_for(header.kid.as_deref(), header.alg)
            .await?;

        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.config.leeway_secs;
        validation.validate_nbf = true;
        validation.set_issuer(&[&iss]);
        let audience = audience.unwrap_or(&issuer.audience);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| AuthError::from_jwt(e, &unverified, audience))?
            .claims;
        Ok(claims.into_identity(&self.config))
    }
}

/// The key a verified token is kept under: a digest of the audience it was
/// verified for and the token.
fn verified_key(audience: Option<&str>, token: &str) -> [u8; 32] {
    use sha2::Digest;
    let mut digest = sha2::Sha256::new();
    match audience {
        Some(audience) => {
            digest.update([1]);
            digest.update((audience.len() as u64).to_be_bytes());
            digest.update(audience.as_bytes());
        }
        None => digest.update([0]),
    }
    digest.update(token.as_bytes());
    digest.finalize().into()
}

#[cfg(test)]
mod tests;
