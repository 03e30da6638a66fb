//! End-to-end test harness: a throwaway PostgreSQL (one per test binary,
//! seeded from `fixtures/seed.sql`), a real gateway listening on a free
//! port, dev tokens, and the real clients users run: psql, tokio-postgres
//! and sqlx. Helpers are named in the protocol's terms.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tollgate::config::Config;
use tollgate::devdb::ThrowawayPostgres;
use tollgate::identity::dev_issuer::{DevIssuer, TokenRequest};
use tollgate::{Gateway, RunningGateway};

pub use tollgate;

pub mod console;
pub mod oidc;
pub mod pgbouncer;
pub mod webdriver;

/// A port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The `tollgate` binary of this build (built by `cargo test --workspace`).
pub fn tollgate_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let bin = dir.join("tollgate");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p gateway-core` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// Every card number the fixtures hold (`fixtures/seed.sql`): public test
/// numbers, for checking that none leaves unmasked.
pub const FIXTURE_PANS: &[&str] = &[
    "4111111111111111",
    "4242424242424242",
    "5555555555554444",
    "2223003122003222",
    "378282246310005",
    "6011111111111117",
    "3530111333300000",
    "6200000000000005",
    "6205500000000000004",
    "36227206271667",
    "3056930009020004",
    "6759649826438453",
    "4012888888881881",
    "4000056655665556",
];

/// The shared throwaway database of this test binary.
pub struct Database {
    /// The server.
    pub pg: ThrowawayPostgres,
    /// The gateway's login role password (role `tollgate_gateway`).
    pub gateway_password: String,
    /// Password of `legacy_md5`, a role stored with MD5 (old-server path).
    pub md5_password: String,
}

/// Start (once per test binary) and return the shared database.
pub fn database() -> &'static Database {
    static DB: OnceLock<Database> = OnceLock::new();
    DB.get_or_init(|| {
        let tollgate::dev::DemoDatabase {
            pg,
            gateway_password,
            ..
        } = tollgate::dev::demo_database().expect("start throwaway PostgreSQL");
        pg.psql(
            "postgres",
            "SET password_encryption = 'md5'; CREATE ROLE legacy_md5 LOGIN PASSWORD 'md5-secret'",
        )
        .expect("create md5 role");
        pg.psql(
            "postgres",
            "CREATE ROLE legacy_cleartext LOGIN PASSWORD 'plain-secret'",
        )
        .expect("create cleartext role");
        pg.psql(
            "payments",
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO legacy_md5, legacy_cleartext",
        )
        .expect("grant");
        Database {
            pg,
            gateway_password,
            md5_password: "md5-secret".into(),
        }
    })
}

/// A gateway started for one test, with its own data directory.
pub struct TestGateway {
    /// The running gateway.
    pub running: Option<RunningGateway>,
    /// Its address.
    pub addr: std::net::SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    _dir: tempfile::TempDir,
    issuer: DevIssuer,
}

/// Configuration text of a gateway in front of the shared database;
/// `extra` is appended (more TOML tables).
pub fn config_text(data_dir: &Path, extra: &str) -> String {
    let db = database();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{data_dir}"

[server.tls]
self_signed = true

[identity.dev_issuer]
enabled = true
audience = "tollgate"

[[connection]]
name = "payments"
host = "localhost"
port = {port}
database = "payments"
user = "tollgate_gateway"
password = {{ inline = "{password}" }}
tls = "verify-full"
ca_file = "{ca}"
connect_timeout_secs = 5
{policy}
{extra}
"#,
        policy = if extra.contains("[policy]") {
            ""
        } else {
            "[policy]\nallow_all = true"
        },
        data_dir = data_dir.display(),
        port = db.pg.port,
        password = db.gateway_password,
        ca = db.pg.ca_file.display(),
    )
}

impl TestGateway {
    /// A gateway with the standard test configuration.
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    /// A gateway with extra TOML appended to the standard configuration.
    pub async fn start_with(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().to_path_buf();
        let text = config_text(&data_dir, extra);
        let config = Config::parse(&text, "test.toml", &data_dir).expect("test config is valid");
        Self::start_config(config, dir).await
    }

    /// A gateway whose standard configuration text is first passed through `edit`.
    pub async fn start_edited(edit: impl FnOnce(String) -> String) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut text = edit(config_text(dir.path(), ""));
        if !text.contains("[policy]") {
            text.push_str("\n[policy]\nallow_all = true\n");
        }
        let config = Config::parse(&text, "test.toml", dir.path()).expect("test config is valid");
        Self::start_config(config, dir).await
    }

    /// A gateway with a configuration the test built itself.
    pub async fn start_config(config: Config, dir: tempfile::TempDir) -> Self {
        Self::start_prepared(config, dir, |g| g).await
    }

    /// The standard test gateway as a relay that does not mask: the
    /// baseline of the masking benchmark.
    pub async fn start_unmasked() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = config_text(dir.path(), "");
        let config = Config::parse(&text, "test.toml", dir.path()).expect("test config is valid");
        Self::start_prepared(config, dir, Gateway::without_masking_for_benchmarks).await
    }

    /// The standard test gateway as a bare relay: identity only, no
    /// masking, no recording or per-statement audit. The baseline that
    /// shows what the stages cost.
    pub async fn start_bare_relay() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = config_text(dir.path(), "");
        let config = Config::parse(&text, "test.toml", dir.path()).expect("test config is valid");
        Self::start_prepared(config, dir, Gateway::bare_relay_for_benchmarks).await
    }

    async fn start_prepared(
        config: Config,
        dir: tempfile::TempDir,
        prepare: impl FnOnce(Gateway) -> Gateway,
    ) -> Self {
        let data_dir = config.server.data_dir.clone();
        let running = prepare(Gateway::new(config.clone()))
            .start()
            .await
            .expect("gateway starts");
        let issuer = DevIssuer::load_or_create(&data_dir, &config.identity.dev_issuer.audience)
            .expect("dev issuer");
        Self {
            addr: running.local_addr,
            running: Some(running),
            data_dir,
            _dir: dir,
            issuer,
        }
    }

    /// A dev token for `sub` in `groups`.
    pub fn token(&self, sub: &str, groups: &[&str]) -> String {
        self.token_with(TokenRequest {
            subject: sub.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            mfa: true,
            agent: false,
            ttl_secs: 600,
        })
    }

    /// A dev token from a full request.
    pub fn token_with(&self, request: TokenRequest) -> String {
        self.issuer.mint(&request).expect("mint")
    }

    /// A dev token for the MCP listener's own audience (`tollgate-mcp`).
    pub fn mcp_token(&self, sub: &str, groups: &[&str], agent: bool) -> String {
        let request = TokenRequest {
            subject: sub.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            mfa: true,
            agent,
            ttl_secs: 600,
        };
        self.issuer
            .mint_for(&request, "tollgate-mcp")
            .expect("mint")
    }

    /// An agent's MCP token carrying OAuth `scopes`.
    pub fn mcp_token_scoped(&self, sub: &str, scopes: &[&str]) -> String {
        let request = TokenRequest {
            subject: sub.into(),
            groups: Vec::new(),
            mfa: false,
            agent: true,
            ttl_secs: 600,
        };
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        self.issuer
            .mint_scoped(&request, "tollgate-mcp", &scopes)
            .expect("mint")
    }

    /// The MCP listener's base URL (`[mcp] listen` must be set).
    pub fn mcp_url(&self, server: &str) -> String {
        let addr = self
            .running
            .as_ref()
            .and_then(|r| r.mcp_addr)
            .expect("the gateway has an MCP listener");
        format!("https://localhost:{}/mcp/{server}", addr.port())
    }

    /// An HTTPS client that trusts this gateway's certificate.
    pub fn https(&self) -> reqwest::Client {
        let pem = std::fs::read(self.data_dir.join("gateway-cert.pem")).expect("gateway cert");
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
            .build()
            .expect("client")
    }

    /// libpq connection string for this gateway.
    pub fn conninfo(&self, dbname: &str, user: &str, sslmode: &str) -> String {
        format!(
            "host=localhost port={} dbname={dbname} user={user} sslmode={sslmode} sslrootcert={}",
            self.addr.port(),
            self.data_dir.join("gateway-cert.pem").display()
        )
    }

    /// Run psql against the gateway (simple protocol) with `token` as the password.
    pub fn psql(&self, token: &str, args: &[&str]) -> PsqlOutput {
        let output = self
            .psql_command(token, "payments", "verify-full")
            .args(args)
            .output()
            .expect("run psql");
        PsqlOutput::from(output)
    }

    /// A psql command ready to run (for tests that need to drive the process).
    pub fn psql_command(&self, token: &str, dbname: &str, sslmode: &str) -> Command {
        let mut command = Command::new("psql");
        command
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg(self.conninfo(dbname, "alice", sslmode))
            .env("PGPASSWORD", token)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null());
        command
    }

    /// rustls client setup trusting the gateway's self-signed certificate.
    pub fn client_tls(&self) -> rustls::ClientConfig {
        tls_trusting(&self.data_dir.join("gateway-cert.pem"))
    }

    /// Connect with tokio-postgres (extended protocol) over verified TLS.
    pub async fn tokio_postgres(
        &self,
        token: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut config: tokio_postgres::Config = format!(
            "host=localhost port={} dbname=payments user=alice",
            self.addr.port()
        )
        .parse()
        .expect("config");
        config
            .password(token)
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(self.client_tls());
        let (client, connection) = config.connect(tls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// The TLS connector tokio-postgres uses for this gateway (for cancel).
    pub fn tokio_postgres_tls(&self) -> tokio_postgres_rustls::MakeRustlsConnect {
        tokio_postgres_rustls::MakeRustlsConnect::new(self.client_tls())
    }

    /// Number of live sessions.
    pub fn sessions(&self) -> usize {
        self.running.as_ref().map_or(0, |r| r.sessions())
    }

    /// Wait until no session is live and every frame is in the store (a
    /// client process may exit before the gateway has seen it go).
    pub async fn settle(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.sessions() > 0 {
            assert!(std::time::Instant::now() < deadline, "sessions did not end");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if let Some(running) = &self.running {
            running.recording().store.flush().await;
        }
    }
}

/// rustls client setup trusting the certificates in the PEM file `ca`.
pub fn tls_trusting(ca: &Path) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap_or_else(|e| panic!("{}: {e}", ca.display()));
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.expect("pem")).expect("add root");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("tls versions")
    .with_root_certificates(roots)
    .with_no_client_auth()
}

/// What psql printed and how it exited.
#[derive(Debug)]
pub struct PsqlOutput {
    /// Standard output, trimmed.
    pub stdout: String,
    /// Standard error, trimmed.
    pub stderr: String,
    /// Exit code.
    pub code: Option<i32>,
}

impl From<Output> for PsqlOutput {
    fn from(o: Output) -> Self {
        Self {
            stdout: String::from_utf8_lossy(&o.stdout).trim().to_string(),
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
            code: o.status.code(),
        }
    }
}

impl PsqlOutput {
    /// Assert success and return stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "psql failed: {}", self.stderr);
        &self.stdout
    }

    /// Assert failure and that stderr contains `needle`.
    pub fn fails_with(&self, needle: &str) {
        assert_ne!(
            self.code,
            Some(0),
            "psql unexpectedly succeeded: {}",
            self.stdout
        );
        assert!(
            self.stderr.contains(needle),
            "expected {needle:?} in psql's error, got: {}",
            self.stderr
        );
    }
}

/// Assert that a tokio-postgres error carries this SQLSTATE; returns its message.
pub fn expect_sqlstate(error: &tokio_postgres::Error, sqlstate: &str) -> String {
    let db = error
        .as_db_error()
        .unwrap_or_else(|| panic!("expected a server error {sqlstate}, got: {error:?}"));
    assert_eq!(
        db.code().code(),
        sqlstate,
        "unexpected SQLSTATE; message: {}",
        db.message()
    );
    db.message().to_string()
}

/// Poll `check` until it holds or `timeout` passes.
pub async fn eventually<F: FnMut() -> bool>(timeout: Duration, mut check: F) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// Assert that `cond` becomes true within five seconds.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $($msg:tt)+) => {
        assert!($crate::eventually(std::time::Duration::from_secs(5), || $cond).await, $($msg)+)
    };
}

/// The records of a gateway's audit log, in order.
pub fn audit_records(data_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(data_dir.join("audit/audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every record is JSON"))
        .collect()
}

/// Assert that no file under `root` holds any of `pans`; how many files were read.
pub fn assert_no_pan_in_tree(root: &Path, pans: &[&str]) -> usize {
    let mut files = vec![root.to_path_buf()];
    let mut scanned = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = std::fs::read(&path).unwrap_or_default();
        for pan in pans {
            assert!(
                !bytes.windows(pan.len()).any(|w| w == pan.as_bytes()),
                "{} holds the raw PAN {pan}",
                path.display()
            );
        }
        scanned += 1;
    }
    scanned
}
