//! Signing keys of an issuer: found by OIDC discovery, fetched as a JWKS,
//! cached, refreshed when a token names an unknown key id (at most once per
//! `jwks_min_refresh_secs`) and when the cache is an hour old.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::AuthError;
use crate::config::IssuerConfig;

const MAX_AGE: Duration = Duration::from_secs(3600);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub(super) struct Key {
    kid: Option<String>,
    family: AlgorithmFamily,
    key: DecodingKey,
}

/// Where an issuer's keys come from.
pub(super) enum KeySource {
    /// A key known at start (the dev issuer).
    Fixed(Key),
    /// Discovery and JWKS over HTTPS.
    Remote(Box<Remote>),
}

pub(super) struct Remote {
    issuer: String,
    jwks_uri: Option<String>,
    client: reqwest::Client,
    min_refresh: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    keys: Vec<Key>,
    fetched_at: Option<Instant>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

impl KeySource {
    pub(super) fn fixed(kid: String, key: DecodingKey) -> Self {
        KeySource::Fixed(Key {
            kid: Some(kid),
            family: AlgorithmFamily::Ed,
            key,
        })
    }

    pub(super) fn remote(config: &IssuerConfig, min_refresh: Duration) -> Result<Self, AuthError> {
        let mut builder = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(HTTP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| AuthError::Setup(format!("issuer CA file {}: {e}", ca.display())))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| AuthError::Setup(format!("issuer CA file {}: {e}", ca.display())))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| AuthError::Setup(format!("HTTP client: {e}")))?;
        Ok(KeySource::Remote(Box::new(Remote {
            issuer: config.issuer.trim_end_matches('/').to_string(),
            jwks_uri: config.jwks_uri.clone(),
            client,
            min_refresh,
            state: Mutex::new(State::default()),
        })))
    }

    /// The key that should have signed a token with this `kid` and algorithm.
    pub(super) async fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<DecodingKey, AuthError> {
        match self {
            KeySource::Fixed(key) => pick(std::slice::from_ref(key), kid, alg),
            KeySource::Remote(remote) => remote.key_for(kid, alg).await,
        }
    }
}

impl Remote {
    async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, AuthError> {
        let mut state = self.state.lock().await;
        let stale = state.fetched_at.is_none_or(|t| t.elapsed() > MAX_AGE);
        if stale {
            self.refresh(&mut state).await?;
        }
        match pick(&state.keys, kid, alg) {
            Err(AuthError::UnknownKey(_))
                if state
                    .fetched_at
                    .is_some_and(|t| t.elapsed() >= self.min_refresh) =>
            {
                self.refresh(&mut state).await?;
                pick(&state.keys, kid, alg)
            }
            other => other,
        }
    }

    async fn refresh(&self, state: &mut State) -> Result<(), AuthError> {
        match self.fetch().await {
            Ok(keys) => {
                state.keys = keys;
                state.fetched_at = Some(Instant::now());
                tracing::info!(issuer = %self.issuer, keys = state.keys.len(), "fetched JWKS");
                Ok(())
            }
            Err(e) if !state.keys.is_empty() => {
                // Keep serving the keys we have; try again after the refresh interval.
                state.fetched_at = Some(Instant::now());
                tracing::warn!(issuer = %self.issuer, error = %e, "JWKS refresh failed; keeping cached keys");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn fetch(&self) -> Result<Vec<Key>, AuthError> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            AuthError::KeysUnavailable(format!("{what} of issuer {}: {e}", self.issuer))
        };
        let jwks_uri = match &self.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let url = format!("{}/.well-known/openid-configuration", self.issuer);
                let doc: Discovery = self
                    .get_json(&url)
                    .await
                    .map_err(|e| unavailable("discovery", &e))?;
                if doc.issuer.trim_end_matches('/') != self.issuer {
                    return Err(AuthError::KeysUnavailable(format!(
                        "discovery document of {} names issuer {}",
                        self.issuer, doc.issuer
                    )));
                }
                doc.jwks_uri
            }
        };
        let raw: RawJwks = self
            .get_json(&jwks_uri)
            .await
            .map_err(|e| unavailable("JWKS", &e))?;
        Ok(raw.keys.into_iter().filter_map(parse_jwk).collect())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
    ) -> Result<T, reqwest::Error> {
        self.client
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }
}

/// A JWK usable for signature verification; symmetric and encryption keys are skipped.
fn parse_jwk(value: serde_json::Value) -> Option<Key> {
    let jwk: Jwk = serde_json::from_value(value).ok()?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
        AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
        AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
        // An HMAC key in a JWKS is never a valid way to verify a token.
        _ => return None,
    };
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id.clone(),
        family,
        key,
    })
}

fn pick(keys: &[Key], kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, AuthError> {
    let family = alg.family();
    let mut candidates = keys.iter().filter(|k| k.family == family);
    let found = match kid {
        Some(kid) => candidates.find(|k| k.kid.as_deref() == Some(kid)),
        // Without a kid, only an unambiguous key will do.
        None => match (candidates.next(), candidates.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        },
    };
    found
        .map(|k| k.key.clone())
        .ok_or_else(|| AuthError::UnknownKey(kid.unwrap_or("(no kid)").to_string()))
}
