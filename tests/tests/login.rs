//! Logging in with an access token: what a user sees for good and bad tokens.

use tollgate::identity::dev_issuer::TokenRequest;
use tollgate_e2e::{TestGateway, expect_sqlstate};

fn request(sub: &str, ttl_secs: i64) -> TokenRequest {
    TokenRequest {
        subject: sub.into(),
        groups: vec!["analysts".into()],
        mfa: true,
        agent: false,
        ttl_secs,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_logs_in_with_a_dev_token_and_reaches_the_upstream() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice", &["analysts"]);
    let out = gw.psql(
        &token,
        &[
            "-c",
            "SELECT current_user, current_database(), count(*) FROM payments",
        ],
    );
    // The upstream session runs as the gateway's own role: the client never held that credential.
    assert_eq!(out.ok(), "tollgate_gateway|payments|12");
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_token_is_refused_with_28p01_and_says_so() {
    let gw = TestGateway::start().await;
    let token = gw.token_with(request("alice", -120));
    let err = gw
        .tokio_postgres(&token)
        .await
        .expect_err("expired token must be refused");
    let message = expect_sqlstate(&err, "28P01");
    assert!(message.contains("expired"), "{message}");
    gw.psql(&token, &["-c", "SELECT 1"])
        .fails_with("token expired");
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_password_is_refused_as_not_a_token() {
    let gw = TestGateway::start().await;
    gw.psql("hunter2", &["-c", "SELECT 1"])
        .fails_with("not a JWT access token");
    let err = gw.tokio_postgres("not.a.jwt").await.expect_err("not a JWT");
    let message = expect_sqlstate(&err, "28P01");
    assert!(message.contains("not a JWT"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_signed_by_another_key_is_a_bad_signature() {
    let gw = TestGateway::start().await;
    // A second gateway has its own dev issuer key: same issuer name, different key.
    let other = TestGateway::start().await;
    let forged = other.token("alice", &["admins"]);
    let err = gw.tokio_postgres(&forged).await.expect_err("foreign key");
    let message = expect_sqlstate(&err, "28P01");
    assert!(
        message.contains("signing key") || message.contains("signature"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_claims_break_the_signature() {
    use base64::Engine;
    let gw = TestGateway::start().await;
    let token = gw.token("alice", &["analysts"]);
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = String::from_utf8(b64.decode(&parts[1]).unwrap())
        .unwrap()
        .replace("analysts", "admins");
    parts[1] = b64.encode(claims);
    let err = gw
        .tokio_postgres(&parts.join("."))
        .await
        .expect_err("tampered");
    let message = expect_sqlstate(&err, "28P01");
    assert!(message.contains("signature"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_audience_is_named() {
    let gw = TestGateway::start().await;
    // Same key, other audience: only `aud` is wrong.
    let other = tollgate::identity::DevIssuer::load_or_create(&gw.data_dir, "reporting").unwrap();
    let token = other.mint(&request("alice", 300)).unwrap();
    let err = gw.tokio_postgres(&token).await.expect_err("wrong audience");
    let message = expect_sqlstate(&err, "28P01");
    assert!(
        message.contains("audience") && message.contains("reporting"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_tokens_are_refused_when_the_dev_issuer_is_not_enabled() {
    let minting = TestGateway::start().await;
    let gw = TestGateway::start_edited(|text| {
        text.replace(
            "[identity.dev_issuer]\nenabled = true",
            "[identity.dev_issuer]\nenabled = false",
        ) + "\n[[identity.issuer]]\nissuer = \"https://idp.example.com\"\naudience = \"tollgate\"\n"
    })
    .await;
    let err = gw
        .tokio_postgres(&minting.token("alice", &["admins"]))
        .await
        .expect_err("untrusted issuer");
    let message = expect_sqlstate(&err, "28P01");
    assert!(message.contains("not trusted"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_is_refused_before_the_token_is_sent() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice", &["analysts"]);
    let out = gw
        .psql_command(&token, "payments", "disable")
        .args(["-c", "SELECT 1"])
        .output()
        .unwrap();
    let out = tollgate_e2e::PsqlOutput::from(out);
    out.fails_with("requires TLS");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_database_names_the_problem() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice", &["analysts"]);
    let out = tollgate_e2e::PsqlOutput::from(
        gw.psql_command(&token, "nosuchdb", "require")
            .args(["-c", "SELECT 1"])
            .output()
            .unwrap(),
    );
    out.fails_with("database \"nosuchdb\" does not exist");
}

#[tokio::test(flavor = "multi_thread")]
async fn user_name_must_match_subject_when_configured() {
    let gw = TestGateway::start_edited(|text| {
        text.replace(
            "[identity.dev_issuer]",
            "[identity]\nuser_must_match_subject = true\n\n[identity.dev_issuer]",
        )
    })
    .await;
    // psql connects as user "alice".
    gw.psql(&gw.token("mallory", &["admins"]), &["-c", "SELECT 1"])
        .fails_with("does not match the token subject");
    assert_eq!(
        gw.psql(&gw.token("alice", &["analysts"]), &["-c", "SELECT 1"])
            .ok(),
        "1"
    );
}
