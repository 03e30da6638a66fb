//! The local gateway: the gateway core in this process, in front of a
//! throwaway PostgreSQL seeded from `fixtures/` (what `tollgate demo` does)
//! or of a database the engineer names (what `tollgate dev` does), with the
//! dev issuer trusted so the console can mint tokens for dev identities.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tollgate::config::{Config, ConnectionConfig};
use tollgate::dev::{self, DevOptions};
use tollgate::devdb::{DevDbError, ThrowawayPostgres};
use tollgate::gateway::{Gateway, RunningGateway, StartError};
use tollgate::identity::dev_issuer::{DevIssuer, TokenRequest};

use crate::error::ConsoleError;
use crate::types::{DevAccess, LocalInfo, LocalOptions, Persona};

/// Default PostgreSQL listener, as `tollgate demo`.
pub const LISTEN: &str = "127.0.0.1:6432";
/// Default API listener.
pub const API_LISTEN: &str = "127.0.0.1:6433";
/// Default MCP listener, as `tollgate demo`.
pub const MCP_LISTEN: &str = tollgate::dev::MCP_LISTEN;

/// A running local gateway and what it stands in front of.
pub struct LocalGateway {
    gateway: RunningGateway,
    /// Stopped when dropped, after the gateway.
    demo: Option<ThrowawayPostgres>,
    issuer: Arc<DevIssuer>,
    /// The MCP listener's audience.
    mcp_audience: String,
    info: LocalInfo,
    /// What the health probe found wrong, if anything.
    health: Arc<std::sync::Mutex<Option<String>>>,
    probe: Probe,
}

/// The health probe's task, stopped with the gateway.
struct Probe(tokio::task::JoinHandle<()>);

impl Drop for Probe {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn address(text: Option<&str>, default: &str, what: &str) -> Result<SocketAddr, ConsoleError> {
    let text = text
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .unwrap_or(default);
    text.parse().map_err(|_| {
        ConsoleError::BadAddress(format!(
            "{what} \"{text}\" is not an address like {default}"
        ))
    })
}

/// Fail early, before a database is started, if a port is taken.
fn free(addr: SocketAddr) -> Result<(), ConsoleError> {
    if addr.port() == 0 {
        return Ok(());
    }
    match TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            Err(ConsoleError::PortTaken { addr })
        }
        Err(e) => Err(ConsoleError::Gateway(format!(
            "cannot listen on {addr}: {e}"
        ))),
    }
}

fn demo_error(error: DevDbError) -> ConsoleError {
    match error {
        DevDbError::NoBinaries => ConsoleError::NoPostgres,
        other => ConsoleError::DemoDatabase(other.to_string()),
    }
}

fn start_error(error: StartError) -> ConsoleError {
    match error {
        StartError::Bind { addr, source } if source.kind() == std::io::ErrorKind::AddrInUse => {
            ConsoleError::PortTaken { addr }
        }
        other => ConsoleError::Gateway(other.to_string()),
    }
}

impl LocalGateway {
    /// Start one. `progress` hears each step.
    pub async fn start(
        data_dir: &Path,
        options: &LocalOptions,
        progress: impl Fn(&str),
    ) -> Result<LocalGateway, ConsoleError> {
        let listen = address(options.listen.as_deref(), LISTEN, "the PostgreSQL listener")?;
        let api_listen = address(
            options.api_listen.as_deref(),
            API_LISTEN,
            "the API listener",
        )?;
        let mcp_listen = address(
            options.mcp_listen.as_deref(),
            MCP_LISTEN,
            "the MCP listener",
        )?;
        free(listen)?;
        free(api_listen)?;
        let data_dir = data_dir.join("local-gateway");
        let mut config = dev::dev_config(&DevOptions {
            listen: Some(listen),
            api_listen: Some(api_listen),
            data_dir: Some(data_dir.clone()),
            issuer: options.trust.as_ref().map(|t| t.issuer.clone()),
            audience: options.trust.as_ref().map(|t| t.audience.clone()),
            console_client_id: options
                .trust
                .as_ref()
                .and_then(|t| t.console_client_id.clone()),
            mcp_listen: None,
        })
        .map_err(|e| ConsoleError::Gateway(e.to_string()))?;
        let (connection, demo, upstream) = match options.upstream.as_deref().map(str::trim) {
            Some(url) if !url.is_empty() => {
                let connection = dev::connection_from_url(url)
                    .map_err(|e| ConsoleError::BadUrl(e.to_string()))?;
                let described = format!(
                    "{}@{}:{}/{}",
                    connection.user, connection.host, connection.port, connection.database
                );
                (connection, None, described)
            }
            _ => {
                progress("Starting a throwaway PostgreSQL seeded with fake cardholder data");
                let db = tokio::task::spawn_blocking(dev::demo_database)
                    .await
                    .map_err(|e| ConsoleError::DemoDatabase(e.to_string()))?
                    .map_err(|e| match e {
                        dev::DevError::DevDb(e) => demo_error(e),
                        other => ConsoleError::DemoDatabase(other.to_string()),
                    })?;
                let described = format!(
                    "throwaway PostgreSQL on 127.0.0.1:{} (seeded from fixtures/seed.sql; removed when the gateway stops)",
                    db.pg.port
                );
                (db.connection, Some(db.pg), described)
            }
        };
        progress("Reading the database's catalog and finding card data");
        let cardholder_tables = cardholder_tables(&connection).await?;
        let name = connection.name.clone();
        let database = (connection.host.clone(), connection.port);
        config
            .connections
            .push(toml::Spanned::new(0..0, connection));
        // The payments MCP server goes with the demo's database, when this
        // machine can run it; the demo goes on without it otherwise.
        let mcp_note = if demo.is_some() {
            progress("Looking for the payments MCP server's Python");
            config.mcp.listen = Some(toml::Spanned::new(0..0, mcp_listen));
            let python = tokio::task::spawn_blocking(dev::demo_python)
                .await
                .map_err(|e| ConsoleError::Gateway(e.to_string()))?;
            // A taken MCP port leaves the PostgreSQL gateway running, and says so.
            let added = free(mcp_listen)
                .map_err(|e| format!("{e}"))
                .and(python)
                .and_then(|p| dev::add_payments_mcp_server(&mut config, listen, &p));
            if added.is_err() {
                config.mcp.listen = None;
            }
            added.err()
        } else {
            None
        };
        progress("Starting the gateway");
        let gateway = Gateway::new(config.clone())
            .start()
            .await
            .map_err(start_error)?;
        let issuer = DevIssuer::load_or_create(&data_dir, &config.identity.dev_issuer.audience)
            .map_err(|e| ConsoleError::Token(e.to_string()))?;
        let api = gateway
            .api_addr
            .map(|a| format!("https://{a}"))
            .unwrap_or_default();
        let info = LocalInfo {
            mode: if demo.is_some() { "demo" } else { "upstream" }.into(),
            listen: gateway.local_addr.to_string(),
            api,
            connection: name,
            upstream,
            cardholder_tables,
            mcp: gateway
                .mcp_addr
                .map(|a| format!("https://{a}/mcp/payments")),
            mcp_note: mcp_note.map(|why| format!("The payments MCP server is not running: {why}")),
            ca_file: data_dir
                .join(tollgate::listener::tls::SELF_SIGNED_CERT)
                .display()
                .to_string(),
            data_dir: data_dir.display().to_string(),
            started_at: now(),
            sessions: 0,
            health: None,
            approver: Persona::approver(),
        };
        let health = Arc::new(std::sync::Mutex::new(None));
        let probe = Probe(tokio::spawn(watch(database, health.clone())));
        Ok(LocalGateway {
            gateway,
            demo,
            issuer: Arc::new(issuer),
            mcp_audience: config.mcp.audience.clone(),
            info,
            health,
            probe,
        })
    }

    /// What the window shows of it.
    pub fn info(&self) -> LocalInfo {
        let mut info = self.info.clone();
        info.sessions = u32::try_from(self.gateway.sessions()).unwrap_or(u32::MAX);
        info.health = self.health.lock().expect("health").clone();
        info
    }

    /// Where its PostgreSQL listener is bound.
    pub fn listen_addr(&self) -> SocketAddr {
        self.gateway.local_addr
    }

    /// The certificate that verifies the gateway.
    pub fn ca_file(&self) -> PathBuf {
        PathBuf::from(&self.info.ca_file)
    }

    /// A one-hour token for `persona`.
    pub fn token(&self, persona: &Persona) -> Result<String, ConsoleError> {
        mint(&self.issuer, persona).map_err(ConsoleError::Token)
    }

    /// Fresh tokens for `persona` at the MCP listener (its own audience), one per call.
    pub fn mcp_tokens(
        &self,
        persona: Persona,
    ) -> Arc<dyn Fn() -> Result<String, String> + Send + Sync> {
        let issuer = self.issuer.clone();
        let audience = self.mcp_audience.clone();
        Arc::new(move || {
            issuer
                .mint_for(&request(&persona), &audience)
                .map_err(|e| e.to_string())
        })
    }

    /// Fresh tokens for `persona`, one per call.
    pub fn tokens(
        &self,
        persona: Persona,
    ) -> Arc<dyn Fn() -> Result<String, String> + Send + Sync> {
        let issuer = self.issuer.clone();
        Arc::new(move || mint(&issuer, &persona))
    }

    /// A token and a ready psql line for `persona`.
    pub fn access(&self, persona: &Persona) -> Result<DevAccess, ConsoleError> {
        let token = self.token(persona)?;
        let addr = self.listen_addr();
        let conninfo = format!(
            "host={} port={} dbname={} user={} sslmode=verify-ca",
            addr.ip(),
            addr.port(),
            conninfo_value(&self.info.connection),
            conninfo_value(&persona.subject),
        );
        let psql = format!(
            "PGPASSWORD={} PGSSLROOTCERT={} psql {}",
            shell_quote(&token),
            shell_quote(&self.info.ca_file),
            shell_quote(&conninfo),
        );
        Ok(DevAccess {
            persona: persona.clone(),
            token,
            psql,
        })
    }

    /// Stop: sessions get their grace period, then the database goes.
    pub async fn stop(self) {
        // The probe first: the database is about to go, on purpose.
        drop(self.probe);
        self.gateway.stop().await;
        if let Some(pg) = self.demo {
            let _ = tokio::task::spawn_blocking(move || drop(pg)).await;
        }
    }
}

/// Every 5 s, whether the database still accepts connections.
async fn watch(database: (String, u16), health: Arc<std::sync::Mutex<Option<String>>>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let (host, port) = (database.0.as_str(), database.1);
        let reached = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            tokio::net::TcpStream::connect((host, port)),
        )
        .await;
        let problem = match reached {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!(
                "the database at {host}:{port} is not reachable over TCP ({e}): clients get errors; \
                 stop and start the local gateway, or check the database"
            )),
            Err(_) => Some(format!(
                "the database at {host}:{port} does not answer: clients wait; check the database or its network"
            )),
        };
        *health.lock().expect("health") = problem;
    }
}

/// A word for a POSIX shell: single-quoted, any `'` closed and escaped.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// A libpq conninfo value: quoted when it holds spaces, quotes or backslashes.
fn conninfo_value(text: &str) -> String {
    if !text.is_empty() && !text.contains([' ', '\'', '\\']) {
        return text.to_string();
    }
    format!("'{}'", text.replace('\\', r"\\").replace('\'', r"\'"))
}

/// A one-hour token's claims for `persona`.
fn request(persona: &Persona) -> TokenRequest {
    TokenRequest {
        subject: persona.subject.clone(),
        groups: persona.groups.clone(),
        mfa: persona.mfa,
        agent: persona.agent,
        ttl_secs: 3600,
    }
}

fn mint(issuer: &DevIssuer, persona: &Persona) -> Result<String, String> {
    issuer.mint(&request(persona)).map_err(|e| e.to_string())
}

/// The tables outside the system schemas that hold card data, and a probe
/// that the database accepts the gateway's login.
async fn cardholder_tables(connection: &ConnectionConfig) -> Result<Vec<String>, ConsoleError> {
    let upstream = tollgate::upstream::Upstream::new(connection)
        .map_err(|e| ConsoleError::Upstream(e.to_string()))?;
    let catalog = tollgate::pg::catalog::Catalog::new(
        Arc::new(upstream),
        connection.cardholder.clone(),
        true,
    );
    let snapshot = catalog
        .refresh()
        .await
        .map_err(|e| ConsoleError::Upstream(e.to_string()))?;
    let mut tables = snapshot.cardholder_tables();
    tables.retain(|t| !t.starts_with("pg_catalog.") && !t.starts_with("information_schema."));
    Ok(tables)
}

/// Now, RFC 3339.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The default configuration's check: the embedded dev config loads.
pub fn dev_config_loads() -> bool {
    Config::parse(tollgate::config::DEV_CONFIG, "dev.toml", Path::new(".")).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_survive_quotes_and_spaces() {
        assert_eq!(shell_quote("/tmp/it's here"), r"'/tmp/it'\''s here'");
        assert_eq!(conninfo_value("payments"), "payments");
        assert_eq!(conninfo_value("my db"), "'my db'");
        assert_eq!(conninfo_value(r"o'k\"), r"'o\'k\\'");
    }
}
