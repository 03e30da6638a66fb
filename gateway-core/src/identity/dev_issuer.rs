//! The development issuer built into the binary: an Ed25519 key kept in the
//! data directory that mints access tokens for `tollgate token`. A gateway
//! trusts it only when `[identity.dev_issuer] enabled = true`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use rcgen::KeyPair;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::Claims;

/// The `iss` of dev tokens.
pub const ISSUER: &str = "urn:tollgate:dev-issuer";
const KEY_FILE: &str = "dev-issuer.key";

/// What a dev token says about its holder.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// Subject (`sub`).
    pub subject: String,
    /// Groups (the `groups` claim).
    pub groups: Vec<String>,
    /// Mark the login as multi-factor (`amr` includes `mfa`).
    pub mfa: bool,
    /// Mark the caller as an agent rather than a person.
    pub agent: bool,
    /// Lifetime in seconds; negative values mint an already expired token (tests).
    pub ttl_secs: i64,
}

/// The dev issuer's signing key.
pub struct DevIssuer {
    key: KeyPair,
    audience: String,
}

impl DevIssuer {
    /// Load the key from `data_dir`, creating it (mode 0600) on first use.
    pub fn load_or_create(data_dir: &Path, audience: &str) -> std::io::Result<Self> {
        let path = key_path(data_dir);
        let key = match fs::read_to_string(&path) {
            Ok(pem) => KeyPair::from_pem(&pem).map_err(std::io::Error::other)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key =
                    KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(std::io::Error::other)?;
                match write_private(&path, key.serialize_pem().as_bytes()) {
                    Ok(()) => key,
                    // Another process created it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        KeyPair::from_pem(&fs::read_to_string(&path)?)
                            .map_err(std::io::Error::other)?
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        Ok(Self {
            key,
            audience: audience.to_string(),
        })
    }

    /// Key id: the first 8 bytes of SHA-256 of the public key, in hex.
    pub fn kid(&self) -> String {
        let digest = Sha256::digest(self.key.public_key_raw());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The key that verifies this issuer's tokens.
    pub fn decoding_key(&self) -> DecodingKey {
        DecodingKey::from_ed_der(self.key.public_key_raw())
    }

    /// The public key as a JWK (for documentation and for other verifiers).
    pub fn jwk(&self) -> Value {
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.key.public_key_raw());
        serde_json::json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": self.kid(), "x": x})
    }

    /// Mint a signed access token for the issuer's audience (the
    /// PostgreSQL listener and the API).
    pub fn mint(&self, request: &TokenRequest) -> Result<String, jsonwebtoken::errors::Error> {
        self.mint_for(request, &self.audience)
    }

    /// Mint a signed access token for `audience` (the MCP listener's own).
    pub fn mint_for(
        &self,
        request: &TokenRequest,
        audience: &str,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        self.mint_scoped(request, audience, &[])
    }

    /// Mint a signed access token for `audience` with OAuth `scopes` (the
    /// `scope` claim).
    pub fn mint_scoped(
        &self,
        request: &TokenRequest,
        audience: &str,
        scopes: &[String],
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = crate::clock::now_secs();
        let exp = (now + request.ttl_secs).max(0) as u64;
        let iat = now.min(exp as i64).max(0) as u64;
        let mut other = Map::new();
        other.insert(
            "groups".into(),
            request
                .groups
                .iter()
                .map(|g| Value::from(g.as_str()))
                .collect(),
        );
        let kind = if request.agent { "agent" } else { "person" };
        other.insert("principal_type".into(), kind.into());
        if !scopes.is_empty() {
            other.insert("scope".into(), scopes.join(" ").into());
        }
        other.insert("jti".into(), crate::id::random::<16>("").into());
        let claims = Claims {
            iss: Some(ISSUER.into()),
            sub: Some(request.subject.clone()),
            aud: Some(audience.to_string().into()),
            exp: Some(exp),
            nbf: Some(iat),
            iat: Some(iat),
            amr: if request.mfa {
                vec!["pwd".into(), "mfa".into()]
            } else {
                vec!["pwd".into()]
            },
            acr: None,
            other,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid());
        header.typ = Some("at+jwt".into());
        jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_ed_der(&self.key.serialize_der()),
        )
    }
}

fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

/// Create a file readable only by its owner.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
