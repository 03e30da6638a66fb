//! The `tollgate` command: parses arguments and calls the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tollgate::Gateway;
use tollgate::config::Config;
use tollgate::dev::{self, DevOptions};
use tollgate::identity::dev_issuer::{DevIssuer, TokenRequest};

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "An identity-aware gateway in front of PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a configuration file.
    Serve {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and exit.
    Check {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Find card data in a connection's database: column names, configuration
    /// and sampled values (the inventory PCI DSS 12.5.2 asks for).
    Discover {
        /// The connection's name.
        connection: String,
        /// The configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a local gateway in front of an existing database, trusting the dev issuer.
    Dev {
        /// The upstream: postgres://USER:PASS@HOST:PORT/DB[?sslmode=...&sslrootcert=...]
        #[arg(long)]
        upstream: String,
        #[command(flatten)]
        options: DevArgs,
    },
    /// Run a local gateway in front of a throwaway PostgreSQL seeded with fake card data.
    Demo {
        #[command(flatten)]
        options: DevArgs,
    },
    /// Print the verifier key of the gateway's audit log (C2SP signed-note
    /// verifier key format); give it to auditors out of band.
    VerifierKey {
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Verify an audit log offline: a gateway's `audit` directory or an
    /// evidence bundle's. One line per check; exits non-zero on any failure.
    Verify {
        /// The directory holding audit.jsonl and checkpoints.jsonl.
        dir: PathBuf,
        /// The verifier key, or a file holding it.
        #[arg(long)]
        key: String,
    },
    /// Export an evidence bundle for a QSA: access logs per identity, the
    /// access-control configuration, approval and masking records, session
    /// recordings (asciicast), the audit log with proofs and its verification.
    Evidence {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// From this time (RFC 3339, or a date: 2026-11-01).
        #[arg(long)]
        from: Option<String>,
        /// Up to this time (RFC 3339, or a date).
        #[arg(long)]
        to: Option<String>,
        /// The bundle directory to create.
        #[arg(long)]
        out: PathBuf,
    },
    /// List and decide approval requests (as an approver, with the token in
    /// TOLLGATE_TOKEN or --token), on the local gateway or --gateway URL.
    Approvals {
        #[command(subcommand)]
        action: ApprovalsAction,
        #[command(flatten)]
        target: ApprovalsTarget,
    },
    /// Serve one MCP server behind a remote gateway to a stdio-only MCP
    /// client (a desktop assistant): the client starts this command as its
    /// server. The agent's token is read from TOLLGATE_MCP_TOKEN.
    McpStdio {
        /// The server's URL on the gateway's MCP listener, e.g.
        /// https://gateway.example.com:7443/mcp/payments.
        #[arg(long)]
        url: String,
        /// CA certificate (PEM) the gateway's certificate is checked
        /// against, in addition to the system's roots.
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
    /// Manage upstream credentials in the OS keyring.
    Keyring {
        #[command(subcommand)]
        action: KeyringAction,
    },
    /// Print a dev access token (trusted by gateways whose config enables the dev issuer).
    Token {
        /// Subject (user or agent name).
        #[arg(long)]
        sub: String,
        /// Groups, comma-separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Mark the login as multi-factor.
        #[arg(long)]
        mfa: bool,
        /// Mark the caller as an agent.
        #[arg(long)]
        agent: bool,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600, allow_negative_numbers = true)]
        ttl: i64,
        /// For the MCP listener: its own audience (`[mcp] audience`).
        #[arg(long)]
        mcp: bool,
        /// OAuth scopes the token carries (the `scope` claim), for an MCP
        /// server that requires them (`[[mcp.server]] scopes`).
        #[arg(long, value_delimiter = ',')]
        scope: Vec<String>,
        /// Read the data directory and audience from this config.
        #[arg(long, short, conflicts_with = "data_dir")]
        config: Option<PathBuf>,
        /// The gateway's data directory (default: .tollgate).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// Which gateway: its configuration file, or the data directory of a
/// `tollgate dev` / `tollgate demo` gateway.
#[derive(clap::Args)]
struct GatewayArgs {
    /// The gateway's configuration file.
    #[arg(long, short, conflicts_with = "data_dir")]
    config: Option<PathBuf>,
    /// The data directory of a dev or demo gateway (default: .tollgate).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl GatewayArgs {
    fn load(&self) -> anyhow::Result<(Config, Option<PathBuf>)> {
        match &self.config {
            Some(path) => Ok((Config::load(path)?, Some(path.clone()))),
            None => {
                let options = DevOptions {
                    data_dir: self.data_dir.clone(),
                    ..DevOptions::default()
                };
                Ok((dev::dev_config(&options)?, None))
            }
        }
    }
}

#[derive(Subcommand)]
enum ApprovalsAction {
    /// Pending requests and grants in force.
    List {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Approve a request (once, or --for a window).
    Approve {
        /// The request id (ap_...).
        id: String,
        /// Why (the audit log keeps it).
        #[arg(long)]
        reason: String,
        /// Approve matching statements of the requester for this long, e.g. 30m.
        #[arg(long = "for")]
        window: Option<String>,
    },
    /// Deny a request.
    Deny {
        /// The request id (ap_...).
        id: String,
        /// Why (the requester is told).
        #[arg(long)]
        reason: String,
    },
    /// Revoke a window grant.
    Revoke {
        /// The grant id (gr_...).
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
}

/// Which gateway and whose token.
#[derive(clap::Args)]
struct ApprovalsTarget {
    /// The approver's access token.
    #[arg(long, env = "TOLLGATE_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// The gateway's API, e.g. https://gateway.example.com:6433 (default: the local gateway).
    #[arg(long, global = true)]
    gateway: Option<String>,
    /// A CA certificate (PEM) to trust for the API's certificate.
    #[arg(long, global = true)]
    ca_file: Option<PathBuf>,
    /// The local gateway's data directory (default: .tollgate).
    #[arg(long, global = true, conflicts_with = "config")]
    data_dir: Option<PathBuf>,
    /// The local gateway's configuration file (its data directory is used).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum KeyringAction {
    /// Store a secret read from standard input (first line), e.g. an upstream password.
    Set {
        /// Keyring service name (as in `password = { keyring = { service = ... } }`).
        #[arg(long)]
        service: String,
        /// Keyring account name.
        #[arg(long)]
        account: String,
    },
}

#[derive(clap::Args)]
struct DevArgs {
    /// Listen address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The API's listen address (approvals, recordings; default 127.0.0.1:6433).
    #[arg(long)]
    api_listen: Option<SocketAddr>,
    /// Data directory (default: .tollgate).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Also trust this OIDC issuer (discovery and JWKS).
    #[arg(long, requires = "audience")]
    issuer: Option<String>,
    /// The audience tokens from --issuer must carry.
    #[arg(long)]
    audience: Option<String>,
    /// The desktop console's OAuth client id at --issuer (published for sign-in).
    #[arg(long, requires = "issuer")]
    console_client_id: Option<String>,
    /// `demo` only: the MCP listener's address (default 127.0.0.1:6434), in
    /// front of the payments MCP server.
    #[arg(long)]
    mcp_listen: Option<SocketAddr>,
}

impl From<DevArgs> for DevOptions {
    fn from(a: DevArgs) -> Self {
        DevOptions {
            listen: a.listen,
            api_listen: a.api_listen,
            data_dir: a.data_dir,
            issuer: a.issuer,
            audience: a.audience,
            console_client_id: a.console_client_id,
            mcp_listen: a.mcp_listen,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config } => {
            let config_path = config;
            let config = Config::load(&config_path)?;
            anyhow::ensure!(
                !config.connections.is_empty(),
                "the config has no [[connection]]: add at least one upstream database"
            );
            serve(config, Some(path_of(&config_path)), None).await
        }
        Command::Check { config: path } => {
            let config = Config::load(&path)?;
            let policy = tollgate::gateway::load_policy(&config.policy)
                .map_err(|e| anyhow::anyhow!("policy:\n{e}"))?;
            println!(
                "{}: ok ({} connection(s), {} issuer(s), {}{})",
                path.display(),
                config.connections.len(),
                config.identity.issuers.len(),
                match &policy {
                    Some(policy) => format!("{} policies", policy.current().len()),
                    None => "no policy (allow_all)".to_string(),
                },
                if config.identity.dev_issuer.enabled {
                    ", dev issuer enabled"
                } else {
                    ""
                }
            );
            Ok(())
        }
        Command::Discover {
            connection,
            config: path,
        } => {
            let config = Config::load(&path)?;
            let Some(connection) = config.connection(&connection) else {
                anyhow::bail!(
                    "no connection named '{connection}' in {}; it has: {}",
                    path.display(),
                    config
                        .connections
                        .iter()
                        .map(|c| c.get_ref().name.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            };
            let upstream = std::sync::Arc::new(tollgate::upstream::Upstream::new(connection)?);
            let catalog =
                tollgate::pg::catalog::Catalog::new(upstream, connection.cardholder.clone(), true);
            let snapshot = catalog.refresh().await.map_err(|e| {
                anyhow::anyhow!("cannot read the catalog of '{}': {e}", connection.name)
            })?;
            print!("{}", tollgate::pg::catalog::inventory(&snapshot));
            Ok(())
        }
        Command::Dev { upstream, options } => {
            anyhow::ensure!(
                options.mcp_listen.is_none(),
                "--mcp-listen is for `tollgate demo`: with `dev`, configure MCP servers in a config file ([mcp] in docs/configuration.md)"
            );
            let mut config = dev::dev_config(&options.into())?;
            let connection = dev::connection_from_url(&upstream)?;
            let name = connection.name.clone();
            config
                .connections
                .push(toml::Spanned::new(0..0, connection));
            serve(config, None, Some(name)).await
        }
        Command::Demo { options } => {
            let mut options: dev::DevOptions = options.into();
            options.mcp_listen = Some(match options.mcp_listen {
                Some(listen) => listen,
                None => dev::MCP_LISTEN.parse()?,
            });
            let mut config = dev::dev_config(&options)?;
            eprintln!("Starting a throwaway PostgreSQL seeded with fake cardholder data...");
            let dev::DemoDatabase { pg, connection, .. } =
                tokio::task::spawn_blocking(dev::demo_database).await??;
            config
                .connections
                .push(toml::Spanned::new(0..0, connection));
            let pg_listen = *config.server.listen.get_ref();
            let mcp = tokio::task::spawn_blocking(dev::demo_python)
                .await?
                .and_then(|python| dev::add_payments_mcp_server(&mut config, pg_listen, &python));
            if let Err(why) = mcp {
                config.mcp.listen = None;
                eprintln!("The payments MCP server is not started: {why}.");
            }
            let result = serve(config, None, Some("payments".into())).await;
            drop(pg);
            result
        }
        Command::Approvals { action, target } => approvals(action, target).await,
        Command::McpStdio { url, ca_file } => {
            let token = std::env::var("TOLLGATE_MCP_TOKEN").context(
                "set TOLLGATE_MCP_TOKEN to the agent's access token for the gateway's MCP listener \
                 (`tollgate token --mcp ...` in development)",
            )?;
            tollgate::mcp::bridge::run(url, token, ca_file.as_deref()).await?;
            Ok(())
        }
        Command::VerifierKey { gateway } => {
            let (config, _) = gateway.load()?;
            let dir = config.server.data_dir.join("audit");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let signer = tollgate::audit::log::signer(&dir, &config.audit.origin)?;
            println!("{}", signer.verifier_key());
            Ok(())
        }
        Command::Verify { dir, key } => {
            let key = match std::fs::read_to_string(&key) {
                Ok(text) => text.trim().to_string(),
                Err(_) => key,
            };
            // An evidence bundle's root holds the log in audit/.
            let dir = if dir.join("audit").join("audit.jsonl").exists() {
                dir.join("audit")
            } else {
                dir
            };
            let report = tollgate::audit::verify::verify_dir(&dir, &key);
            println!("{report}");
            anyhow::ensure!(report.ok(), "verification failed");
            Ok(())
        }
        Command::Evidence {
            gateway,
            from,
            to,
            out,
        } => {
            let (config, config_file) = gateway.load()?;
            let time = |text: &Option<String>, flag: &str| -> anyhow::Result<Option<i64>> {
                text.as_deref()
                    .map(|t| {
                        tollgate::clock::parse_rfc3339(t).ok_or_else(|| {
                            anyhow::anyhow!("--{flag} {t}: give an RFC 3339 time (2026-11-25T10:00:00Z) or a date (2026-11-25)")
                        })
                    })
                    .transpose()
            };
            let request = tollgate::evidence::EvidenceRequest {
                config,
                config_file,
                from: time(&from, "from")?,
                to: time(&to, "to")?,
                out: out.clone(),
                by: tollgate::evidence::Exporter::Operator(
                    std::env::var("USER")
                        .or_else(|_| std::env::var("LOGNAME"))
                        .unwrap_or_else(|_| "unknown operator".into()),
                ),
            };
            let mut progress = Bar::default();
            let summary = tollgate::evidence::export(&request, &mut progress).await?;
            progress.finish();
            eprintln!(
                "{}\n\nWrote {}: {} audit records ({} in the window), {} identities, {} sessions. See INDEX.md.",
                summary.report,
                out.display(),
                summary.records,
                summary.in_window,
                summary.identities,
                summary.sessions
            );
            anyhow::ensure!(
                summary.verified,
                "the exported audit log did not verify (see verification.txt)"
            );
            Ok(())
        }
        Command::Keyring {
            action: KeyringAction::Set { service, account },
        } => {
            let mut secret = String::new();
            std::io::stdin()
                .read_line(&mut secret)
                .context("reading the secret from standard input")?;
            let secret = secret.trim_end_matches(['\r', '\n']).to_string();
            anyhow::ensure!(!secret.is_empty(), "no secret on standard input");
            tokio::task::spawn_blocking(move || {
                tollgate::upstream::credential::keyring_store(&service, &account, &secret)
            })
            .await??;
            eprintln!("stored");
            Ok(())
        }
        Command::Token {
            sub,
            groups,
            mfa,
            agent,
            ttl,
            mcp,
            scope,
            config,
            data_dir,
        } => {
            let (data_dir, audience, mcp_audience) = match config {
                Some(path) => {
                    let config = Config::load(&path)?;
                    anyhow::ensure!(
                        config.identity.dev_issuer.enabled,
                        "{} does not enable [identity.dev_issuer]: its gateway would refuse dev tokens",
                        path.display()
                    );
                    (
                        config.server.data_dir,
                        config.identity.dev_issuer.audience,
                        config.mcp.audience,
                    )
                }
                None => (
                    data_dir.unwrap_or_else(|| PathBuf::from(".tollgate")),
                    "tollgate".to_string(),
                    tollgate::config::McpConfig::default().audience,
                ),
            };
            let issuer = DevIssuer::load_or_create(Path::new(&data_dir), &audience)
                .with_context(|| format!("dev issuer key in {}", data_dir.display()))?;
            let request = TokenRequest {
                subject: sub,
                groups,
                mfa,
                agent,
                ttl_secs: ttl,
            };
            let audience = if mcp { &mcp_audience } else { &audience };
            let token = issuer.mint_scoped(&request, audience, &scope)?;
            println!("{token}");
            Ok(())
        }
    }
}

/// A progress bar on standard error (hidden when it is not a terminal).
#[derive(Default)]
struct Bar(Option<indicatif::ProgressBar>);

impl tollgate::evidence::Progress for Bar {
    fn stage(&mut self, name: &str, total: u64) {
        if let Some(bar) = self.0.take() {
            bar.finish();
        }
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg:<42} [{bar:30}] {pos}/{len}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(name.to_string());
        self.0 = Some(bar);
    }

    fn step(&mut self) {
        if let Some(bar) = &self.0 {
            bar.inc(1);
        }
    }
}

impl Bar {
    fn finish(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.finish();
        }
    }
}

async fn approvals(action: ApprovalsAction, target: ApprovalsTarget) -> anyhow::Result<()> {
    use tollgate::approvals::client::{Client, Location, parse_duration, render_list};
    let Some(token) = target.token.filter(|t| !t.trim().is_empty()) else {
        anyhow::bail!(
            "no access token: set TOLLGATE_TOKEN (or pass --token) to an approver's OIDC access token"
        );
    };
    let data_dir = match (&target.config, target.data_dir) {
        (Some(path), _) => Config::load(path)?.server.data_dir,
        (None, Some(dir)) => dir,
        (None, None) => PathBuf::from(".tollgate"),
    };
    let location = Location::resolve(
        target.gateway.as_deref(),
        target.ca_file.as_deref(),
        &data_dir,
    )?;
    let client = Client::new(location, token.trim().to_string())?;
    match action {
        ApprovalsAction::List { json } => {
            let list = client.list().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", render_list(&list));
            }
        }
        ApprovalsAction::Approve { id, reason, window } => {
            let window = window
                .as_deref()
                .map(parse_duration)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--for {e}"))?;
            let answer = client.decide(&id, true, &reason, window).await?;
            let request = &answer["request"];
            match request["state"].as_str() {
                Some("approved") => match request["grant"]["until"].as_str() {
                    Some(until) => println!(
                        "approved {id}; matching statements of {} pass until {until} (grant {})",
                        request["requester"]["subject"]
                            .as_str()
                            .unwrap_or("the requester"),
                        request["grant"]["id"].as_str().unwrap_or("")
                    ),
                    None => println!("approved {id}; the held statement runs now"),
                },
                _ => println!(
                    "your approval of {id} is on record; it needs {} approvals and has {}",
                    request["approvals_needed"],
                    request["approvals"].as_array().map_or(0, Vec::len)
                ),
            }
        }
        ApprovalsAction::Deny { id, reason } => {
            client.decide(&id, false, &reason, None).await?;
            println!("denied {id}; the requester is told your reason");
        }
        ApprovalsAction::Revoke { id, reason } => {
            client.revoke(&id, &reason).await?;
            println!("revoked grant {id}");
        }
    }
    Ok(())
}

/// The configuration file's absolute path (the gateway may change directory later).
fn path_of(path: &std::path::Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

async fn serve(
    config: Config,
    config_file: Option<std::path::PathBuf>,
    dev_connection: Option<String>,
) -> anyhow::Result<()> {
    let mut gateway = Gateway::new(config.clone());
    if let Some(file) = config_file {
        gateway = gateway.with_config_file(file);
    }
    let gateway = gateway.start().await?;
    match &dev_connection {
        Some(name) => eprintln!(
            "{}",
            dev::connect_instructions(
                &config,
                gateway.local_addr,
                gateway.api_addr,
                gateway.mcp_addr,
                name
            )
        ),
        None => eprintln!("Tollgate is listening on {}", gateway.local_addr),
    }
    wait_for_shutdown().await;
    eprintln!("Stopping.");
    gateway.stop().await;
    Ok(())
}

async fn wait_for_shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = ctrl_c => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
