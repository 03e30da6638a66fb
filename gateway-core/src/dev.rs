//! `tollgate dev` and `tollgate demo`: a local gateway for engineers, in
//! front of an existing database or a throwaway one seeded with fake
//! cardholder data, with the dev issuer trusted and a ready psql line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml::Spanned;

use crate::config::{
    Config, ConnectionConfig, CredentialSource, DEV_CONFIG, IssuerConfig, McpServerConfig,
    UpstreamTlsMode,
};
use crate::devdb::ThrowawayPostgres;
use crate::identity::dev_issuer::{DevIssuer, TokenRequest};

/// The seed data of `tollgate demo`.
pub const SEED_SQL: &str = include_str!("../../fixtures/seed.sql");

/// The demo's payments MCP server (`fixtures/mcp/payments_server.py`),
/// written into the data directory so the binary needs no checkout.
pub const PAYMENTS_MCP_SERVER: &str = include_str!("../../fixtures/mcp/payments_server.py");

/// Where `tollgate demo` and the console's local mode take MCP tool calls.
pub const MCP_LISTEN: &str = "127.0.0.1:6434";

/// The packages of the payments MCP server, as `pip install` takes them.
pub const PAYMENTS_MCP_PACKAGES: &str = include_str!("../../fixtures/mcp/requirements.txt");

/// Why a dev setup could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// The upstream URL is not usable.
    #[error("--upstream: {0}")]
    Url(String),
    /// The embedded config did not load (a bug).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The throwaway database failed.
    #[error(transparent)]
    DevDb(#[from] crate::devdb::DevDbError),
}

/// Options shared by `dev` and `demo`.
#[derive(Debug, Clone, Default)]
pub struct DevOptions {
    /// Listen address (default 127.0.0.1:6432).
    pub listen: Option<SocketAddr>,
    /// The API's listen address (default 127.0.0.1:6433).
    pub api_listen: Option<SocketAddr>,
    /// Data directory (default `.tollgate`).
    pub data_dir: Option<PathBuf>,
    /// Also trust this OIDC issuer.
    pub issuer: Option<String>,
    /// Audience for `issuer`.
    pub audience: Option<String>,
    /// The console's OAuth client id at `issuer`.
    pub console_client_id: Option<String>,
    /// The MCP listener's address (the demo's default is [`MCP_LISTEN`]).
    pub mcp_listen: Option<SocketAddr>,
}

/// The embedded dev configuration with the options applied.
pub fn dev_config(options: &DevOptions) -> Result<Config, DevError> {
    let mut config = Config::parse(DEV_CONFIG, "fixtures/dev.toml (embedded)", Path::new("."))?;
    if let Some(listen) = options.listen {
        config.server.listen = Spanned::new(0..0, listen);
    }
    if let Some(listen) = options.api_listen {
        config.api.listen = Some(Spanned::new(0..0, listen));
    }
    if let Some(dir) = &options.data_dir {
        config.server.data_dir = dir.clone();
    }
    if let Some(listen) = options.mcp_listen {
        config.mcp.listen = Some(Spanned::new(0..0, listen));
    }
    if let Some(issuer) = &options.issuer {
        config.identity.issuers.push(Spanned::new(
            0..0,
            IssuerConfig {
                issuer: issuer.clone(),
                audience: options
                    .audience
                    .clone()
                    .unwrap_or_else(|| "tollgate".into()),
                algorithms: ["RS256", "PS256", "ES256", "EdDSA"]
                    .map(String::from)
                    .to_vec(),
                jwks_uri: None,
                ca_file: None,
                console_client_id: options.console_client_id.clone(),
            },
        ));
    }
    Ok(config)
}

/// A catalog entry from `postgres://USER:PASS@HOST:PORT/DB?sslmode=...&sslrootcert=...`.
pub fn connection_from_url(url: &str) -> Result<ConnectionConfig, DevError> {
    let parsed = url::Url::parse(url).map_err(|e| DevError::Url(format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(DevError::Url(
            "use postgres://USER:PASS@HOST:PORT/DB".into(),
        ));
    }
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    let host = parsed
        .host_str()
        .unwrap_or("localhost")
        .trim_matches(['[', ']'])
        .to_string();
    let user = decode(parsed.username())
        .filter(|u| !u.is_empty())
        .ok_or_else(|| DevError::Url("missing user name".into()))?;
    let password = parsed.password().and_then(decode);
    let database = parsed.path().trim_start_matches('/').to_string();
    let database = if database.is_empty() {
        user.clone()
    } else {
        database
    };
    let loopback = matches!(host.as_str(), "localhost" | "127.0.0.1" | "::1");
    let mut tls = if loopback {
        UpstreamTlsMode::Disable
    } else {
        UpstreamTlsMode::VerifyFull
    };
    let mut ca_file = None;
    for (key, value) in parsed.query_pairs() {
        match key.as_ref() {
            "sslmode" => {
                tls = match value.as_ref() {
                    "disable" => UpstreamTlsMode::Disable,
                    "require" | "prefer" | "allow" => UpstreamTlsMode::Require,
                    "verify-ca" => UpstreamTlsMode::VerifyCa,
                    "verify-full" => UpstreamTlsMode::VerifyFull,
                    other => return Err(DevError::Url(format!("unknown sslmode {other}"))),
                }
            }
            "sslrootcert" => ca_file = Some(PathBuf::from(value.as_ref())),
            other => return Err(DevError::Url(format!("unsupported parameter {other}"))),
        }
    }
    Ok(ConnectionConfig {
        name: database.clone(),
        host,
        port: parsed.port().unwrap_or(5432),
        database,
        user,
        password: password.map(CredentialSource::Inline),
        tls,
        ca_file,
        connect_timeout_secs: 10,
        cardholder: Vec::new(),
        record_results_bytes: 0,
    })
}

/// A seeded throwaway database and how the gateway logs in to it.
pub struct DemoDatabase {
    /// The server (stopped when dropped).
    pub pg: ThrowawayPostgres,
    /// The catalog entry for the gateway's own login role.
    pub connection: ConnectionConfig,
    /// That role's password (also inline in `connection`).
    pub gateway_password: String,
}

/// A throwaway PostgreSQL seeded with `fixtures/seed.sql` in database
/// `payments`, with a login role for the gateway.
pub fn demo_database() -> Result<DemoDatabase, DevError> {
    let pg = ThrowawayPostgres::start()?;
    pg.psql("postgres", "CREATE DATABASE payments")?;
    pg.psql("payments", SEED_SQL)?;
    let password = pg.create_role("tollgate_gateway", "")?;
    pg.psql(
        "payments",
        "GRANT USAGE ON SCHEMA public, hr TO tollgate_gateway; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO tollgate_gateway; \
         GRANT SELECT ON ALL TABLES IN SCHEMA hr TO tollgate_gateway",
    )?;
    let connection = pg.connection("payments", "payments", "tollgate_gateway", &password);
    Ok(DemoDatabase {
        pg,
        connection,
        gateway_password: password,
    })
}

/// A Python that can run the payments MCP server: `TOLLGATE_DEMO_PYTHON`,
/// else the venv `scripts/demo.sh` makes (`fixtures/mcp/.venv`), else
/// `python3`; each must import the server's packages.
pub fn demo_python() -> Result<PathBuf, String> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/mcp/.venv/bin/python");
    let candidates: Vec<PathBuf> = match std::env::var_os("TOLLGATE_DEMO_PYTHON") {
        Some(chosen) => vec![PathBuf::from(chosen)],
        None => vec![venv, PathBuf::from("python3")],
    };
    for python in &candidates {
        let imports = std::process::Command::new(python)
            .args(["-c", "import mcp.server.mcpserver, psycopg"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if imports.is_ok_and(|s| s.success()) {
            return Ok(python.clone());
        }
    }
    let packages: Vec<&str> = PAYMENTS_MCP_PACKAGES
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    Err(format!(
        "no Python with the payments MCP server's packages (tried {}): run scripts/demo.sh, \
         or `python3 -m venv fixtures/mcp/.venv && fixtures/mcp/.venv/bin/pip install {}`, \
         or point TOLLGATE_DEMO_PYTHON at a Python that has them",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        packages.join(" ")
    ))
}

/// Put the demo's payments MCP server behind the MCP listener: the gateway
/// runs it as a child process; it queries the demo database through the
/// PostgreSQL listener `pg` as its own agent identity, `payments-mcp`
/// (group `agents`), whose token the dev issuer mints for 24 hours. An
/// error says why it cannot run here (the demo goes on without it).
pub fn add_payments_mcp_server(
    config: &mut Config,
    pg: SocketAddr,
    python: &Path,
) -> Result<(), String> {
    if config.mcp.listen.is_none() {
        return Err("no MCP listener is configured".into());
    }
    let data_dir = config.server.data_dir.clone();
    let dir = data_dir.join("mcp");
    let script = dir.join("payments_server.py");
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&script, PAYMENTS_MCP_SERVER))
        .map_err(|e| format!("cannot write {}: {e}", script.display()))?;
    let issuer = DevIssuer::load_or_create(&data_dir, &config.identity.dev_issuer.audience)
        .map_err(|e| format!("cannot load the dev token issuer: {e}"))?;
    let token = issuer
        .mint(&TokenRequest {
            subject: "payments-mcp".into(),
            groups: vec!["agents".into()],
            mfa: false,
            agent: true,
            ttl_secs: 24 * 3600,
        })
        .map_err(|e| format!("cannot mint the payments MCP server's token: {e}"))?;
    let cert = data_dir.join(crate::listener::tls::SELF_SIGNED_CERT);
    let dsn = format!(
        "host=localhost port={} dbname=payments user=payments-mcp sslmode=verify-full sslrootcert='{}'",
        pg.port(),
        cert.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('\'', "\\'")
    );
    config.mcp.servers.push(Spanned::new(
        0..0,
        McpServerConfig {
            name: "payments".into(),
            command: vec![python.display().to_string(), script.display().to_string()],
            env: [("PAYMENTS_DSN".to_string(), dsn)].into(),
            secrets: [(
                "PAYMENTS_TOKEN".to_string(),
                CredentialSource::Inline(token),
            )]
            .into(),
            url: None,
            bearer_token: None,
            ca_file: None,
            scopes: Vec::new(),
        },
    ));
    Ok(())
}

/// The lines printed once a dev gateway listens: how to connect.
pub fn connect_instructions(
    config: &Config,
    listen: SocketAddr,
    api: Option<SocketAddr>,
    mcp: Option<SocketAddr>,
    connection: &str,
) -> String {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "tollgate".into());
    let data_dir = config.server.data_dir.display();
    let token = DevIssuer::load_or_create(
        &config.server.data_dir,
        &config.identity.dev_issuer.audience,
    )
    .ok()
    .and_then(|issuer| {
        issuer
            .mint(&TokenRequest {
                subject: "alice".into(),
                groups: vec!["analysts".into()],
                mfa: true,
                agent: false,
                ttl_secs: 3600,
            })
            .ok()
    })
    .unwrap_or_default();
    format!(
        "\nTollgate is listening on {listen} (TLS), in front of connection \"{connection}\".\n\n\
         Connect as alice (group analysts, MFA) with a dev token valid for one hour:\n\n  \
         PGPASSWORD='{token}' psql \"host={host} port={port} dbname={connection} user=alice sslmode=require\"\n\n\
         Mint other tokens with:\n\n  \
         {exe} token --data-dir {data_dir} --sub bob --groups agents --agent\n\n\
         {approvals}{mcp}\
         Press Ctrl-C to stop.\n",
        host = listen.ip(),
        port = listen.port(),
        approvals = match api {
            None => String::new(),
            Some(api) => format!(
                "Statements that need approval (COPY payments TO STDOUT) wait for an approver. \
                 The API (approvals WebSocket, recordings) is on https://{api}; decide from a shell with:\n\n  \
                 export TOLLGATE_TOKEN=$({exe} token --data-dir {data_dir} --sub olga --groups approvers --mfa)\n  \
                 {exe} approvals list --data-dir {data_dir}\n  \
                 {exe} approvals approve ap_... --reason \"why\" --data-dir {data_dir}\n\n"
            ),
        },
        mcp = match mcp {
            None => String::new(),
            Some(mcp) => {
                let servers: Vec<String> = config
                    .mcp
                    .servers
                    .iter()
                    .map(|s| format!("https://{mcp}/mcp/{}", s.get_ref().name))
                    .collect();
                format!(
                    "MCP servers for agents are at {servers} (Streamable HTTP, TLS; trust {data_dir}/{cert}). \
                     An agent's token for them (the MCP listener has its own audience):\n\n  \
                     {exe} token --mcp --data-dir {data_dir} --sub agent-7 --groups agents --agent\n\n\
                     A stdio-only client (a desktop assistant) runs the bridge as its MCP server:\n\n  \
                     TOLLGATE_MCP_TOKEN=... {exe} mcp-stdio --url {first} --ca-file {data_dir}/{cert}\n\n\
                     Its export_cards tool waits for an approver, like a bulk export in SQL.\n\n",
                    servers = servers.join(", "),
                    first = servers.first().map(String::as_str).unwrap_or_default(),
                    cert = crate::listener::tls::SELF_SIGNED_CERT,
                )
            }
        },
    )
}
