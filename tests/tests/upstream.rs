//! The gateway's side of the session: credentials it alone holds, TLS
//! towards the upstream, and clear errors when the upstream is not there.

use std::time::{Duration, Instant};

use tollgate_e2e::{TestGateway, database, expect_sqlstate};

/// A gateway whose only connection is described by `connection` (TOML body of a [[connection]]).
async fn gateway_with_connection(connection: &str) -> TestGateway {
    TestGateway::start_edited(|text| {
        let head = text
            .split("[[connection]]")
            .next()
            .unwrap_or_default()
            .to_string();
        format!("{head}[[connection]]\n{connection}\n")
    })
    .await
}

fn connection(name: &str, extra: &str) -> String {
    let db = database();
    format!(
        "name = \"{name}\"\nhost = \"localhost\"\nport = {}\ndatabase = \"payments\"\nconnect_timeout_secs = 3\nca_file = \"{}\"\n{extra}",
        db.pg.port,
        db.pg.ca_file.display()
    )
}

async fn login_to(
    gw: &TestGateway,
    dbname: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = format!(
        "host=localhost port={} dbname={dbname} user=alice",
        gw.addr.port()
    )
    .parse()
    .unwrap();
    config
        .password(gw.token("alice", &["analysts"]))
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let (client, conn) = config.connect(gw.tokio_postgres_tls()).await?;
    tokio::spawn(conn);
    Ok(client)
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_upstream_is_named_not_a_hang() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = gateway_with_connection(&format!(
        "name = \"ledger\"\nhost = \"127.0.0.1\"\nport = {port}\ndatabase = \"x\"\nuser = \"x\"\ntls = \"disable\"\nconnect_timeout_secs = 3"
    ))
    .await;
    let started = Instant::now();
    let err = login_to(&gw, "ledger").await.unwrap_err();
    let message = expect_sqlstate(&err, "08001");
    assert!(
        message.contains("connection \"ledger\" is unavailable"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_upstream_password_is_reported_without_the_secret() {
    let gw = gateway_with_connection(&connection(
        "payments",
        "user = \"tollgate_gateway\"\npassword = { inline = \"wrong-secret-value\" }",
    ))
    .await;
    let err = login_to(&gw, "payments").await.unwrap_err();
    let message = expect_sqlstate(&err, "08004");
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );
    assert!(!message.contains("wrong-secret-value"));
}

#[tokio::test(flavor = "multi_thread")]
async fn password_from_environment_and_from_file() {
    let db = database();
    // Cargo gives every test process CARGO_PKG_NAME; a role whose password is
    // that value lets the gateway read a real environment variable without
    // the test mutating its own environment.
    let env_password = std::env::var("CARGO_PKG_NAME").unwrap();
    db.pg
        .psql("postgres", &format!("DO $$ BEGIN CREATE ROLE env_cred LOGIN PASSWORD '{env_password}'; EXCEPTION WHEN duplicate_object THEN NULL; END $$"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, format!("{}\n", db.gateway_password)).unwrap();
    let gw = gateway_with_connection(&format!(
        "{}\n\n[[connection]]\n{}",
        connection(
            "via_env",
            "user = \"env_cred\"\npassword = { env = \"CARGO_PKG_NAME\" }"
        ),
        connection(
            "via_file",
            &format!(
                "user = \"tollgate_gateway\"\npassword = {{ file = \"{}\" }}",
                file.display()
            )
        ),
    ))
    .await;
    for (name, role) in [("via_env", "env_cred"), ("via_file", "tollgate_gateway")] {
        let client = login_to(&gw, name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let user: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(user, role);
    }
    // A missing variable is named, never guessed.
    let gw = gateway_with_connection(&connection(
        "no_env",
        "user = \"env_cred\"\npassword = { env = \"TOLLGATE_NO_SUCH_VARIABLE\" }",
    ))
    .await;
    let err = login_to(&gw, "no_env").await.unwrap_err();
    let message = expect_sqlstate(&err, "08004");
    assert!(
        message.contains("TOLLGATE_NO_SUCH_VARIABLE is not set"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn md5_upstream_login_for_old_servers() {
    let db = database();
    let gw = gateway_with_connection(&connection(
        "legacy",
        &format!(
            "user = \"legacy_md5\"\npassword = {{ inline = \"{}\" }}",
            db.md5_password
        ),
    ))
    .await;
    let client = login_to(&gw, "legacy").await.unwrap();
    let count: i64 = client
        .query_one("SELECT count(*) FROM payments", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 12);
}

#[tokio::test(flavor = "multi_thread")]
async fn cleartext_upstream_login_over_tls() {
    let gw = gateway_with_connection(&connection(
        "cleartext",
        "user = \"legacy_cleartext\"\npassword = { inline = \"plain-secret\" }",
    ))
    .await;
    let client = login_to(&gw, "cleartext").await.unwrap();
    let user: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, "legacy_cleartext");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_full_refuses_an_upstream_signed_by_another_ca() {
    let db = database();
    // The gateway's own self-signed certificate is a CA the upstream's cert does not chain to.
    let other = TestGateway::start().await;
    let other_ca = other.data_dir.join("gateway-cert.pem");
    let gw = gateway_with_connection(&format!(
        "name = \"payments\"\nhost = \"localhost\"\nport = {}\ndatabase = \"payments\"\nuser = \"tollgate_gateway\"\npassword = {{ inline = \"{}\" }}\nca_file = \"{}\"\nconnect_timeout_secs = 3",
        db.pg.port,
        db.gateway_password,
        other_ca.display()
    ))
    .await;
    let err = login_to(&gw, "payments").await.unwrap_err();
    let message = expect_sqlstate(&err, "08001");
    assert!(message.contains("TLS handshake"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    let db = database();
    // The throwaway server also listens on 127.0.0.2, a name its certificate lacks.
    let entry = |mode: &str| {
        format!(
            "name = \"{}\"\nhost = \"127.0.0.2\"\nport = {}\ndatabase = \"payments\"\nuser = \"tollgate_gateway\"\npassword = {{ inline = \"{}\" }}\nca_file = \"{}\"\ntls = \"{mode}\"\nconnect_timeout_secs = 3",
            mode.replace('-', "_"),
            db.pg.port,
            db.gateway_password,
            db.pg.ca_file.display()
        )
    };
    let gw = gateway_with_connection(&format!(
        "{}\n\n[[connection]]\n{}",
        entry("verify-full"),
        entry("verify-ca")
    ))
    .await;
    let err = login_to(&gw, "verify_full").await.unwrap_err();
    let message = expect_sqlstate(&err, "08001");
    assert!(
        message.contains("TLS handshake") && message.contains("127.0.0.2"),
        "{message}"
    );
    let client = login_to(&gw, "verify_ca")
        .await
        .expect("verify-ca accepts the chain without the name");
    client.query_one("SELECT 1", &[]).await.unwrap();
}
