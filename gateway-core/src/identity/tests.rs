use base64::Engine;

use super::dev_issuer::TokenRequest;
use super::*;
use crate::config::{Config, IdentityConfig};

fn setup() -> (tempfile_dir::Dir, Arc<Authenticator>, DevIssuer) {
    let dir = tempfile_dir::Dir::new();
    let config = Config::parse(crate::config::DEV_CONFIG, "dev.toml", dir.path()).unwrap();
    let auth = Authenticator::new(&config.identity, dir.path()).unwrap();
    let issuer = DevIssuer::load_or_create(dir.path(), "tollgate").unwrap();
    (dir, auth, issuer)
}

fn request(groups: &[&str]) -> TokenRequest {
    TokenRequest {
        subject: "alice".into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        mfa: true,
        agent: false,
        ttl_secs: 300,
    }
}

/// A tiny temporary directory helper (the crate has no tempfile dependency).
mod tempfile_dir {
    pub struct Dir(std::path::PathBuf);
    impl Dir {
        pub fn new() -> Self {
            let p =
                std::env::temp_dir().join(format!("tollgate-test-{:016x}", rand::random::<u64>()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[tokio::test]
async fn dev_token_becomes_an_identity() {
    let (_dir, auth, issuer) = setup();
    let mut req = request(&["analysts", "approvers"]);
    req.agent = true;
    let identity = auth
        .authenticate(&issuer.mint(&req).unwrap())
        .await
        .unwrap();
    assert_eq!(identity.subject, "alice");
    assert_eq!(identity.issuer, dev_issuer::ISSUER);
    assert_eq!(identity.groups, vec!["analysts", "approvers"]);
    assert!(identity.mfa);
    assert_eq!(identity.kind, PrincipalKind::Agent);
}

#[tokio::test]
async fn mfa_is_false_without_a_second_factor() {
    let (_dir, auth, issuer) = setup();
    let mut req = request(&[]);
    req.mfa = false;
    let identity = auth
        .authenticate(&issuer.mint(&req).unwrap())
        .await
        .unwrap();
    assert!(!identity.mfa);
    assert_eq!(identity.kind, PrincipalKind::Person);
}

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_refused() {
    let (_dir, auth, issuer) = setup();
    let mut req = request(&[]);
    req.ttl_secs = -3600;
    assert!(
        matches!(auth.authenticate(&issuer.mint(&req).unwrap()).await, Err(AuthError::Expired(s)) if s >= 3600)
    );
    // Within the leeway an expiry is tolerated.
    req.ttl_secs = -5;
    auth.authenticate(&issuer.mint(&req).unwrap())
        .await
        .unwrap();
}

fn forge(header: &str, claims: &serde_json::Value, signature: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{}",
        b64.encode(header),
        b64.encode(claims.to_string()),
        b64.encode(signature)
    )
}

fn claims() -> serde_json::Value {
    let now = jsonwebtoken::get_current_timestamp();
    serde_json::json!({"iss": dev_issuer::ISSUER, "sub": "mallory", "aud": "tollgate", "exp": now + 300, "groups": ["admins"]})
}

#[tokio::test]
async fn alg_none_is_refused() {
    let (_dir, auth, _issuer) = setup();
    let token = forge(r#"{"alg":"none","typ":"JWT"}"#, &claims(), b"");
    assert!(auth.authenticate(&token).await.is_err());
}

#[tokio::test]
async fn hmac_keyed_with_the_public_key_is_refused() {
    use aws_lc_rs_hmac as hmac;
    let (_dir, auth, issuer) = setup();
    // The classic algorithm-confusion attack: sign with HS256 using the public key bytes.
    let public = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(issuer.jwk()["x"].as_str().unwrap())
        .unwrap();
    let header = format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{}"}}"#, issuer.kid());
    let unsigned = forge(&header, &claims(), b"");
    let signing_input = unsigned.rsplit_once('.').unwrap().0;
    let sig = hmac::sign(&public, signing_input.as_bytes());
    let token = forge(&header, &claims(), &sig);
    assert!(matches!(
        auth.authenticate(&token).await,
        Err(AuthError::AlgorithmNotAllowed(_))
    ));
}

/// HMAC-SHA-256 via jsonwebtoken itself (the attacker's tool of choice).
mod aws_lc_rs_hmac {
    pub fn sign(key: &[u8], data: &[u8]) -> Vec<u8> {
        let token = jsonwebtoken::crypto::sign(
            data,
            &jsonwebtoken::EncodingKey::from_secret(key),
            jsonwebtoken::Algorithm::HS256,
        )
        .unwrap();
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, token).unwrap()
    }
}

#[tokio::test]
async fn unknown_issuer_is_named() {
    let (_dir, auth, issuer) = setup();
    let token = issuer.mint(&request(&[])).unwrap();
    let mut config = IdentityConfig::default();
    config.dev_issuer.enabled = false;
    config.issuers.push(toml::Spanned::new(
        0..0,
        crate::config::IssuerConfig {
            issuer: "https://idp.example.com".into(),
            audience: "tollgate".into(),
            algorithms: vec!["RS256".into()],
            jwks_uri: None,
            ca_file: None,
            console_client_id: None,
        },
    ));
    let other = Authenticator::new(&config, Path::new("/nonexistent")).unwrap();
    let err = other.authenticate(&token).await.unwrap_err();
    assert!(err.to_string().contains("not trusted"), "{err}");
    drop(auth);
}

#[test]
fn groups_claim_may_be_a_string_and_agent_claim_is_configurable() {
    let mut config = IdentityConfig {
        groups_claim: "roles".into(),
        ..IdentityConfig::default()
    };
    config.agent.claim = "client_kind".into();
    config.agent.values = vec!["machine".into()];
    let claims: Claims = serde_json::from_value(serde_json::json!({
        "sub": "svc-1", "roles": "agents readers,extra", "client_kind": "machine", "acr": "loa3"
    }))
    .unwrap();
    config.mfa.acr_values = vec!["loa3".into()];
    let identity = claims.into_identity(&config);
    assert_eq!(identity.groups, vec!["agents", "readers", "extra"]);
    assert_eq!(identity.kind, PrincipalKind::Agent);
    assert!(identity.mfa, "acr loa3 counts as MFA here");
}

#[tokio::test]
async fn a_token_verified_once_still_expires() {
    let (_dir, auth, issuer) = setup();
    let mut req = request(&["analysts"]);
    // Expired 25 s ago: within the 30 s leeway for four or five more seconds.
    req.ttl_secs = -25;
    let token = issuer.mint(&req).unwrap();
    let first = auth.authenticate(&token).await.unwrap();
    assert_eq!(auth.authenticate(&token).await.unwrap(), first);
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(
        matches!(auth.authenticate(&token).await, Err(AuthError::Expired(s)) if s >= 30),
        "a kept token is refused once its expiry and the leeway have passed"
    );
}

#[tokio::test]
async fn a_token_verified_for_one_audience_is_refused_for_another() {
    let (_dir, auth, issuer) = setup();
    let token = issuer.mint_for(&request(&[]), "tollgate-mcp").unwrap();
    auth.authenticate_for(&token, Some("tollgate-mcp"))
        .await
        .unwrap();
    // Kept for the MCP audience, still refused for the PostgreSQL one and
    // for any other.
    assert!(auth.authenticate(&token).await.is_err());
    assert!(
        auth.authenticate_for(&token, Some("tollgate-mcpx"))
            .await
            .is_err()
    );
    // And a token verified for the PostgreSQL listener is refused at MCP.
    let pg = issuer.mint(&request(&[])).unwrap();
    auth.authenticate(&pg).await.unwrap();
    assert!(
        auth.authenticate_for(&pg, Some("tollgate-mcp"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_changed_token_is_verified_again() {
    let (_dir, auth, issuer) = setup();
    let token = issuer.mint(&request(&["analysts"])).unwrap();
    auth.authenticate(&token).await.unwrap();
    // The same token with a character in the middle of its signature
    // changed (not the last, whose low bits base64 does not use).
    let mut forged = token.into_bytes();
    let at = forged.len() - 20;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert!(matches!(
        auth.authenticate(&forged).await,
        Err(AuthError::BadSignature)
    ));
}
