//! Wires the stages together: configuration in, a listening gateway out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::ApiContext;
use crate::approvals::{Approvals, Settings};
use crate::audit::event::{Auditor, Event, Outcome};
use crate::audit::log::{AuditLog, CheckpointEvery};
use crate::audit::siem::{self, Sink};
use crate::config::Config;
use crate::config::PolicyConfig;
use crate::identity::{AuthError, Authenticator};
use crate::listener::{self, tls::ServerTls};
use crate::pg::catalog::Catalog;
use crate::pg::guard::GuardShared;
use crate::pg::hooks::{HookFactory, LoggingHooks};
use crate::pg::mask::MaskShared;
use crate::pg::sql::ShapeCache;
use crate::pg::{PgContext, cancel::CancelRegistry, serve_connection};
use crate::policy::{PolicyEngine, PolicyHandle};
use crate::recording::store::Store;
use crate::recording::{Recording, retention};
use crate::upstream::Upstream;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] crate::listener::tls::TlsError),
    /// The identity stage could not be set up.
    #[error(transparent)]
    Identity(#[from] AuthError),
    /// An upstream's TLS could not be set up.
    #[error("connection \"{name}\": {source}")]
    Upstream {
        /// Connection name.
        name: String,
        /// The cause.
        source: crate::upstream::tls::UpstreamTlsError,
    },
    /// The policy files are not valid.
    #[error("policy:\n{0}")]
    Policy(#[from] crate::policy::PolicyError),
    /// The masking settings cannot be used.
    #[error("{0}")]
    Masking(String),
    /// The replica key cannot be read or is too short.
    #[error("approvals.replica_key: {0}")]
    ReplicaKey(String),
    /// The audit log cannot be opened or written.
    #[error("{0}; the gateway does not run without its audit log")]
    Audit(#[from] crate::audit::log::AuditError),
    /// A SIEM sink cannot be set up.
    #[error("{0}")]
    Siem(#[from] crate::audit::siem::SiemError),
    /// Approval requests cannot be shared with the other replicas.
    #[error("{0}")]
    Approvals(#[from] crate::approvals::replicas::LinkError),
    /// The recording store cannot be opened.
    #[error("{0}; the gateway does not run without its session recordings")]
    Recording(#[from] crate::recording::store::StoreError),
    /// An MCP server cannot be set up.
    #[error("{0}")]
    Mcp(#[from] crate::mcp::upstream::UpstreamError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// A configured gateway, not yet listening.
pub struct Gateway {
    config: Config,
    /// The file the configuration came from (copied into evidence bundles).
    config_file: Option<std::path::PathBuf>,
    hooks: Arc<dyn HookFactory>,
    masking: bool,
    /// Sessions are recorded and audited (off only in the relay baseline).
    recording: bool,
}

/// A listening gateway.
pub struct RunningGateway {
    /// The bound address (useful with port 0).
    pub local_addr: SocketAddr,
    /// The API's bound address, when `[api] listen` is set.
    pub api_addr: Option<SocketAddr>,
    /// The MCP listener's bound address, when `[mcp] listen` is set.
    pub mcp_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    ending: watch::Sender<bool>,
    grace: Duration,
    task: JoinHandle<()>,
    cancels: Arc<CancelRegistry>,
    recording: Arc<Recording>,
}

impl Gateway {
    /// A gateway with the default hooks (log and let through).
    pub fn new(config: Config) -> Self {
        Self {
            config,
            config_file: None,
            hooks: Arc::new(LoggingHooks),
            masking: true,
            recording: true,
        }
    }

    /// Name the file the configuration was read from (evidence bundles
    /// exported over the API carry a copy).
    pub fn with_config_file(mut self, path: std::path::PathBuf) -> Self {
        self.config_file = Some(path);
        self
    }

    /// A relay that does not look inside results: the baseline the masking
    /// benchmark measures against. Deliberately not reachable from the
    /// configuration file; no deployment should run without masking.
    pub fn without_masking_for_benchmarks(mut self) -> Self {
        self.masking = false;
        self
    }

    /// A relay with no stage but identity: no masking, and PostgreSQL
    /// sessions neither recorded nor audited per statement. The benchmarks'
    /// baseline for what the stages cost; like the one above, not reachable
    /// from the configuration file.
    pub fn bare_relay_for_benchmarks(mut self) -> Self {
        self.masking = false;
        self.recording = false;
        self
    }

    /// Replace the hook factory (policy, masking and recording plug in here).
    pub fn with_hooks(mut self, hooks: Arc<dyn HookFactory>) -> Self {
        self.hooks = hooks;
        self
    }

    /// Prepare every stage, then bind. Any failure here happens before
    /// anything listens.
    pub async fn start(self) -> Result<RunningGateway, StartError> {
        let server = &self.config.server;
        std::fs::create_dir_all(&server.data_dir).map_err(|source| StartError::DataDir {
            path: server.data_dir.display().to_string(),
            source,
        })?;
        let tls = ServerTls::from_config(&server.tls, &server.data_dir)?;
        let auth = Authenticator::new(&self.config.identity, &server.data_dir)?;
        let mut upstreams = HashMap::new();
        for connection in &self.config.connections {
            let connection = connection.get_ref();
            let upstream = Upstream::new(connection).map_err(|source| StartError::Upstream {
                name: connection.name.clone(),
                source,
            })?;
            upstreams.insert(connection.name.clone(), Arc::new(upstream));
        }
        let mut catalogs = HashMap::new();
        for connection in &self.config.connections {
            let connection = connection.get_ref();
            let upstream = upstreams[&connection.name].clone();
            catalogs.insert(
                connection.name.clone(),
                Arc::new(Catalog::new(
                    upstream,
                    connection.cardholder.clone(),
                    self.config.masking.discovery,
                )),
            );
        }
        let policy = load_policy(&self.config.policy)?;
        let audit = &self.config.audit;
        let log = AuditLog::open(
            &server.data_dir.join("audit"),
            &audit.origin,
            CheckpointEvery {
                records: audit.checkpoint_records,
                interval: Duration::from_secs(audit.checkpoint_secs),
            },
        )?;
        let auditor = Auditor::new(log);
        let mut sinks = Vec::new();
        for siem in &audit.siem {
            sinks.push(Sink::new(siem, &server.data_dir.join("audit")).await?);
        }
        let store = Store::open(&audit.recordings, &server.data_dir).await?;
        let recording = Arc::new(Recording {
            auditor: auditor.clone(),
            store,
            preview_rows: audit.preview_rows,
            digest_key: crate::recording::digest::DigestKey::open(&server.data_dir).map_err(
                |source| StartError::DataDir {
                    path: server
                        .data_dir
                        .join(crate::recording::digest::KEY_FILE)
                        .display()
                        .to_string(),
                    source,
                },
            )?,
            redact: crate::pg::sql::redact,
        });
        let token = match &self.config.masking.token_key {
            None => None,
            Some(source) => {
                let secret = crate::upstream::credential::read(source)
                    .await
                    .map_err(|e| StartError::Masking(format!("masking.token_key: {e}")))?;
                Some(
                    crate::masking::TokenKey::new(secret.expose().as_bytes())
                        .map_err(|e| StartError::Masking(format!("masking.token_key: {e}")))?,
                )
            }
        };
        let shapes = Arc::new(ShapeCache::new(10_000));
        let mask = self.masking.then(|| {
            Arc::new(MaskShared::new(
                &self.config.masking,
                token,
                policy.clone(),
                shapes.clone(),
            ))
        });
        let policy_digest = policy.as_ref().map(|p| p.current().digest().to_string());
        let approvals_config = &self.config.approvals;
        let approvals = Approvals::new(
            Settings {
                expire: Duration::from_secs(approvals_config.expire_secs),
                require_mfa: approvals_config.require_mfa,
                max_window: Duration::from_secs(approvals_config.max_window_secs),
            },
            auditor.clone(),
        );
        if audit.recordings.starts_with("postgres") {
            // Replicas sharing the store share their approval requests too.
            let key = match &approvals_config.replica_key {
                None => {
                    return Err(StartError::ReplicaKey(
                        "required with a postgres:// store".into(),
                    ));
                }
                Some(source) => {
                    let secret = crate::upstream::credential::read(source)
                        .await
                        .map_err(|e| StartError::ReplicaKey(e.to_string()))?;
                    crate::approvals::replicas::ReplicaKey::new(secret.expose().as_bytes())
                        .map_err(StartError::ReplicaKey)?
                }
            };
            let link = crate::approvals::replicas::connect(
                &approvals,
                &audit.recordings,
                recording.store.target(),
                key,
                policy.clone(),
            )
            .await?;
            approvals.link(link);
        }
        let api_policy = policy.clone();
        let mcp_policy = policy.clone();
        let guard = policy.map(|policy| {
            policy.watch(
                Duration::from_millis(self.config.policy.reload_check_ms.max(100)),
                Some(auditor.clone()),
            );
            Arc::new(GuardShared {
                policy,
                shapes,
                estimate_timeout: Duration::from_millis(self.config.policy.estimate_timeout_ms),
                // Held requests need somewhere approvers can decide them.
                approvals: self.config.api.listen.is_some().then(|| approvals.clone()),
                volume: Arc::default(),
            })
        });
        let cancels = Arc::new(CancelRegistry::default());
        let (ending, ending_rx) = watch::channel(false);
        let ctx = Arc::new(PgContext {
            tls: tls.clone(),
            allow_plaintext: server.allow_plaintext,
            auth: auth.clone(),
            upstreams,
            cancels: cancels.clone(),
            hooks: self.hooks.clone(),
            startup_timeout: Duration::from_secs(server.startup_timeout_secs),
            max_message_bytes: server.max_message_bytes,
            user_must_match_subject: self.config.identity.user_must_match_subject,
            guard,
            mask,
            catalogs,
            recording: self.recording.then(|| recording.clone()),
            ending: ending_rx,
        });
        let addr = *server.listen.get_ref();
        let listener = listener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        let (shutdown, mut stop) = watch::channel(false);
        let pins = match self.config.mcp.listen {
            None => None,
            Some(_) => Some(Arc::new(
                crate::mcp::pins::Pins::open(&server.data_dir, auditor.clone()).map_err(
                    |source| StartError::DataDir {
                        path: server
                            .data_dir
                            .join(crate::mcp::pins::FILE)
                            .display()
                            .to_string(),
                        source,
                    },
                )?,
            )),
        };
        let api_addr = match &self.config.api.listen {
            None => None,
            Some(api) => {
                let addr = *api.get_ref();
                let bound = listener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?;
                let bound_addr = bound
                    .local_addr()
                    .map_err(|source| StartError::Bind { addr, source })?;
                let api_ctx = Arc::new(ApiContext {
                    auth: auth.clone(),
                    recording: recording.clone(),
                    auditor_groups: self.config.api.auditor_groups.clone(),
                    analyst_groups: self.config.api.analyst_groups.clone(),
                    approvals: approvals.clone(),
                    policy: api_policy,
                    // Approvers decide held statements and held tool calls.
                    connections: {
                        let mut names: Vec<String> = self
                            .config
                            .connections
                            .iter()
                            .map(|c| c.get_ref().name.clone())
                            .chain(
                                self.config
                                    .mcp
                                    .servers
                                    .iter()
                                    .map(|s| s.get_ref().name.clone()),
                            )
                            .collect();
                        names.sort();
                        names.dedup();
                        names
                    },
                    pins: pins.clone(),
                    stopping: shutdown.subscribe(),
                    evidence: Some(Arc::new(crate::api::evidence::Exports::new(
                        self.config.clone(),
                        self.config_file.clone(),
                    ))),
                    issuers: self
                        .config
                        .identity
                        .issuers
                        .iter()
                        .map(|i| i.get_ref().clone())
                        .collect(),
                });
                write_api_file(&server.data_dir, bound_addr, tls.is_some());
                let stopping = shutdown.subscribe();
                let tls = tls.clone();
                tokio::spawn(async move {
                    if let Err(e) = crate::api::serve(bound, tls, api_ctx, stopping).await {
                        tracing::error!(error = %e, "the API stopped");
                    }
                });
                Some(bound_addr)
            }
        };
        let mcp_addr = match (&self.config.mcp.listen, pins) {
            (None, _) | (_, None) => None,
            (Some(listen), Some(pins)) => {
                let mcp = &self.config.mcp;
                let addr = *listen.get_ref();
                let mut servers = HashMap::new();
                for server in &mcp.servers {
                    let server = server.get_ref();
                    servers.insert(
                        server.name.clone(),
                        Arc::new(crate::mcp::upstream::Server::new(server).await?),
                    );
                }
                let bound = listener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?;
                let bound_addr = bound
                    .local_addr()
                    .map_err(|source| StartError::Bind { addr, source })?;
                let scheme = if tls.is_some() { "https" } else { "http" };
                let resource = mcp
                    .resource
                    .clone()
                    .unwrap_or_else(|| format!("{scheme}://{bound_addr}"));
                let mut issuers: Vec<String> = self
                    .config
                    .identity
                    .issuers
                    .iter()
                    .map(|i| i.get_ref().issuer.clone())
                    .collect();
                if self.config.identity.dev_issuer.enabled {
                    issuers.push(crate::identity::dev_issuer::ISSUER.to_string());
                }
                let mcp_ctx = Arc::new(crate::mcp::McpContext::new(
                    auth.clone(),
                    mcp.audience.clone(),
                    resource,
                    issuers,
                    servers,
                    mcp_policy,
                    self.config.api.listen.is_some().then(|| approvals.clone()),
                    recording.clone(),
                    pins,
                    mcp.max_body_bytes,
                    Duration::from_secs(mcp.call_timeout_secs),
                ));
                let stopping = shutdown.subscribe();
                let tls = tls.clone();
                tokio::spawn(async move {
                    if let Err(e) = crate::mcp::serve(bound, tls, mcp_ctx, stopping).await {
                        tracing::error!(error = %e, "the MCP listener stopped");
                    }
                });
                Some(bound_addr)
            }
        };
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, peer)) => {
                            listener::prepare(&tcp);
                            tokio::spawn(serve_connection(tcp, peer, ctx.clone()));
                        }
                        Err(e) => {
                            // Out of file descriptors and the like: back off, keep serving.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                    _ = stop.changed() => break,
                }
            }
        });
        let connections: Vec<&str> = self
            .config
            .connections
            .iter()
            .map(|c| c.get_ref().name.as_str())
            .collect();
        let started = Event::new("gateway.start", Outcome::Success)
            .resource(
                serde_json::json!({ "listen": local_addr.to_string(), "connections": connections }),
            )
            .with("policy_digest", policy_digest)
            .with("masking", self.masking)
            .with("version", env!("CARGO_PKG_VERSION"));
        if let Err(e) = auditor.record(started).await {
            let _ = shutdown.send(true);
            return Err(e.into());
        }
        tracing::info!(target: "tollgate::audit", event = "gateway.start", listen = %local_addr);
        let audit_dir = server.data_dir.join("audit");
        for sink in sinks {
            tokio::spawn(sink.run(
                audit_dir.clone(),
                auditor.clone(),
                self.config.audit.origin.clone(),
                shutdown.subscribe(),
            ));
        }
        let days = self.config.audit.retention_days;
        let siems = self.config.audit.siem.clone();
        let sweeping = recording.clone();
        let mut stopping = shutdown.subscribe();
        tokio::spawn(async move {
            loop {
                let keep_from = siem::undelivered_from(&audit_dir, &siems);
                if let Err(e) =
                    retention::sweep(&sweeping, days, SystemTime::now(), keep_from).await
                {
                    tracing::error!(target: "tollgate::audit", error = %e, "retention sweep failed; it is tried again within the hour");
                }
                tokio::select! {
                    () = tokio::time::sleep(retention::SWEEP_EVERY) => {}
                    _ = stopping.changed() => break,
                }
            }
        });
        Ok(RunningGateway {
            local_addr,
            api_addr,
            mcp_addr,
            shutdown,
            ending,
            grace: Duration::from_secs(server.shutdown_grace_secs),
            task,
            cancels,
            recording,
        })
    }
}

/// The policy the configuration asks for; `None` with `allow_all`.
pub fn load_policy(
    config: &PolicyConfig,
) -> Result<Option<PolicyHandle>, crate::policy::PolicyError> {
    if config.allow_all {
        tracing::warn!(
            target: "tollgate::audit",
            event = "policy.disabled",
            "policy.allow_all is set: every statement is allowed. Development only"
        );
        return Ok(None);
    }
    let engine = PolicyEngine::load(&config.files, config.starter)?;
    tracing::info!(
        target: "tollgate::audit",
        event = "policy.loaded",
        policies = engine.len(),
        digest = engine.digest(),
    );
    Ok(Some(PolicyHandle::new(
        engine,
        config.files.clone(),
        config.starter,
    )))
}

/// The file in the data directory that tells local tools (`tollgate
/// approvals`) where this gateway's API listens.
pub const API_FILE: &str = "api.json";

/// Tell local tools where the API listens, and which certificate to trust
/// when the gateway made its own.
fn write_api_file(data_dir: &std::path::Path, addr: SocketAddr, tls: bool) {
    let mut reach = addr;
    if addr.ip().is_unspecified() {
        reach.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    // SocketAddr's Display brackets an IPv6 address.
    let url = format!("{}://{reach}", if tls { "https" } else { "http" });
    let cert = data_dir.join(crate::listener::tls::SELF_SIGNED_CERT);
    let body = serde_json::json!({
        "url": url,
        "ca_file": cert.exists().then(|| cert.display().to_string()),
        "pid": std::process::id(),
    });
    if let Err(e) = std::fs::write(data_dir.join(API_FILE), body.to_string()) {
        tracing::warn!(error = %e, "could not write {API_FILE}; `tollgate approvals` will need --gateway");
    }
}

/// How long ended sessions get to write their last frames and records.
const ENDING_TIMEOUT: Duration = Duration::from_secs(5);

impl RunningGateway {
    /// Wait up to `limit` for every session to end; whether they did.
    async fn drained(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.cancels.is_empty() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Number of live sessions.
    pub fn sessions(&self) -> usize {
        self.cancels.len()
    }

    /// The audit log and recording store.
    pub fn recording(&self) -> &Arc<Recording> {
        &self.recording
    }

    /// Stop: accept no new connection, give live sessions the configured
    /// grace to finish, end the rest (FATAL 57P01), then record the stop and
    /// sign a checkpoint that covers every session's last record.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        let _ = (&mut self.task).await;
        self.drained(self.grace).await;
        // Also ends sessions still logging in: they stop as they reach the relay.
        let _ = self.ending.send(true);
        if !self.drained(ENDING_TIMEOUT).await {
            tracing::warn!(
                sessions = self.cancels.len(),
                "sessions did not end at shutdown"
            );
        }
        let stopped = Event::new("gateway.stop", Outcome::Success)
            .resource(serde_json::json!({ "listen": self.local_addr.to_string() }))
            .with("live_sessions", self.cancels.len());
        let _ = self.recording.auditor.record(stopped).await;
        self.recording.store.flush().await;
        // Signs the last checkpoint and lets go of the log.
        self.recording.auditor.log().close().await;
        tracing::info!(target: "tollgate::audit", event = "gateway.stop", listen = %self.local_addr);
    }
}
