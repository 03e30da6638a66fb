//! A real OIDC issuer flow: discovery document, JWKS over HTTP, key rotation
//! picked up on an unknown `kid`, refresh rate-limited.
//!
//! The issuer is a small HTTP server in this test that serves what every OpenID
//! Provider serves (`/.well-known/openid-configuration` and a JWKS) and signs
//! ES256 access tokens, so the gateway's discovery and key handling run for real.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate_e2e::{TestGateway, expect_sqlstate};

struct SigningKey {
    kid: String,
    pair: rcgen::KeyPair,
}

impl SigningKey {
    fn new(kid: &str) -> Self {
        Self {
            kid: kid.into(),
            pair: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        }
    }
    fn jwk(&self) -> serde_json::Value {
        let raw = self.pair.public_key_raw();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        serde_json::json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": b64.encode(&raw[1..33]), "y": b64.encode(&raw[33..65])})
    }
    fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_ec_der(&self.pair.serialize_der()),
        )
        .unwrap()
    }
}

struct Issuer {
    url: String,
    published: Arc<Mutex<Vec<serde_json::Value>>>,
    jwks_fetches: Arc<AtomicUsize>,
}

async fn start_issuer() -> Issuer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let published = Arc::new(Mutex::new(Vec::new()));
    let jwks_fetches = Arc::new(AtomicUsize::new(0));
    let (keys, fetches, base) = (published.clone(), jwks_fetches.clone(), url.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let (keys, fetches, base) = (keys.clone(), fetches.clone(), base.clone());
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&request);
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let (status, body) = match path.as_str() {
                    "/.well-known/openid-configuration" => (
                        "200 OK",
                        serde_json::json!({"issuer": base, "jwks_uri": format!("{base}/jwks"),
                            "id_token_signing_alg_values_supported": ["ES256"]})
                        .to_string(),
                    ),
                    "/jwks" => {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        (
                            "200 OK",
                            serde_json::json!({"keys": *keys.lock().unwrap()}).to_string(),
                        )
                    }
                    _ => ("404 Not Found", "{}".to_string()),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(response.as_bytes()).await;
            });
        }
    });
    Issuer {
        url,
        published,
        jwks_fetches,
    }
}

fn claims(issuer: &str, audience: &str) -> serde_json::Value {
    let now = jsonwebtoken::get_current_timestamp();
    serde_json::json!({"iss": issuer, "sub": "carol@example.com", "aud": [audience, "other-api"],
        "exp": now + 300, "iat": now, "groups": ["analysts"], "amr": ["pwd", "otp"]})
}

async fn gateway_trusting(issuer: &Issuer) -> TestGateway {
    let extra = format!(
        "\n[identity]\njwks_min_refresh_secs = 2\n\n[[identity.issuer]]\nissuer = \"{}\"\naudience = \"tollgate-test\"\nalgorithms = [\"ES256\"]\n",
        issuer.url
    );
    // The [identity] table must come before its sub-tables in the text.
    TestGateway::start_edited(|text| {
        text.replace(
            "[identity.dev_issuer]",
            &format!("{extra}\n[identity.dev_issuer]"),
        )
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_from_a_discovered_issuer_are_accepted_and_keys_rotate() {
    let issuer = start_issuer().await;
    let first = SigningKey::new("key-1");
    issuer.published.lock().unwrap().push(first.jwk());
    let gw = gateway_trusting(&issuer).await;

    let client = gw
        .tokio_postgres(&first.sign(&claims(&issuer.url, "tollgate-test")))
        .await
        .unwrap();
    client.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(issuer.jwks_fetches.load(Ordering::SeqCst), 1);

    // The provider rotates in a new key; a token signed with it triggers one refresh.
    let second = SigningKey::new("key-2");
    issuer.published.lock().unwrap().push(second.jwk());
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let client = gw
        .tokio_postgres(&second.sign(&claims(&issuer.url, "tollgate-test")))
        .await
        .unwrap();
    client.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(issuer.jwks_fetches.load(Ordering::SeqCst), 2);

    // Unknown key ids cannot make the gateway hammer the provider.
    let stranger = SigningKey::new("key-unknown");
    for _ in 0..5 {
        let err = gw
            .tokio_postgres(&stranger.sign(&claims(&issuer.url, "tollgate-test")))
            .await
            .unwrap_err();
        let message = expect_sqlstate(&err, "28P01");
        assert!(message.contains("key-unknown"), "{message}");
    }
    assert!(
        issuer.jwks_fetches.load(Ordering::SeqCst) <= 3,
        "refresh is rate-limited"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn audience_and_issuer_are_checked_for_real_issuers() {
    let issuer = start_issuer().await;
    let key = SigningKey::new("k");
    issuer.published.lock().unwrap().push(key.jwk());
    let gw = gateway_trusting(&issuer).await;

    let err = gw
        .tokio_postgres(&key.sign(&claims(&issuer.url, "someone-else")))
        .await
        .unwrap_err();
    let message = expect_sqlstate(&err, "28P01");
    assert!(
        message.contains("audience") && message.contains("tollgate-test"),
        "{message}"
    );

    let err = gw
        .tokio_postgres(&key.sign(&claims("https://evil.example.com", "tollgate-test")))
        .await
        .unwrap_err();
    let message = expect_sqlstate(&err, "28P01");
    assert!(
        message.contains("https://evil.example.com") && message.contains("not trusted"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_issuer_is_reported_not_hung() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let issuer = Issuer {
        url: format!("http://127.0.0.1:{port}"),
        published: Arc::default(),
        jwks_fetches: Arc::default(),
    };
    let gw = gateway_trusting(&issuer).await;
    let key = SigningKey::new("k");
    let started = std::time::Instant::now();
    let err = gw
        .tokio_postgres(&key.sign(&claims(&issuer.url, "tollgate-test")))
        .await
        .unwrap_err();
    let message = expect_sqlstate(&err, "28000");
    assert!(
        message.contains("cannot fetch the issuer's signing keys"),
        "{message}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
