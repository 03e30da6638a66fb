//! The gateway's configuration: one strict TOML file.
//!
//! Every table refuses unknown keys, every field is documented here (this is
//! the reference `docs/configuration.md` follows), and [`Config::load`]
//! validates what parsing cannot check, naming the file, line and key at fault.

mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

pub use validate::ConfigError;

/// The embedded default configuration (`fixtures/dev.toml`).
pub const DEV_CONFIG: &str = include_str!("../../../fixtures/dev.toml");

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the gateway listens and how it secures client connections.
    #[serde(default)]
    pub server: ServerConfig,
    /// Who may connect: trusted token issuers and how their claims are read.
    #[serde(default)]
    pub identity: IdentityConfig,
    /// The upstream databases, each reachable as `dbname=<name>`.
    #[serde(default, rename = "connection")]
    pub connections: Vec<Spanned<ConnectionConfig>>,
    /// Which Cedar policies decide every statement.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// How card data is masked in results, errors and copy streams.
    #[serde(default)]
    pub masking: MaskingConfig,
    /// The tamper-evident audit log and the session recordings.
    #[serde(default)]
    pub audit: AuditConfig,
    /// The HTTPS API: recordings and the audit log, by role.
    #[serde(default)]
    pub api: ApiConfig,
    /// Just-in-time approvals of the statements policies hold.
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    /// The MCP listener and the MCP servers behind it.
    #[serde(default)]
    pub mcp: McpConfig,
}

/// `[mcp]`: agents' tool calls, under the same identity, policy, approvals,
/// masking, recording and audit as SQL.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// Where the MCP listener takes Streamable HTTP (HTTPS with the
    /// server's certificate); absent for no MCP listener. Each server is at
    /// `/mcp/<name>`.
    #[serde(default)]
    pub listen: Option<Spanned<SocketAddr>>,
    /// The audience tokens for this listener must name: its own, so a token
    /// minted for the PostgreSQL listener is refused here, and the reverse.
    #[serde(default = "default_mcp_audience")]
    pub audience: String,
    /// The resource URL clients know the listener by (RFC 9728 `resource`);
    /// built from the listen address when absent.
    #[serde(default)]
    pub resource: Option<String>,
    /// The largest request body the listener reads, in bytes.
    #[serde(default = "default_mcp_max_body")]
    pub max_body_bytes: usize,
    /// How long a tool call's answer may take upstream, in seconds.
    #[serde(default = "default_mcp_call_timeout")]
    pub call_timeout_secs: u64,
    /// The MCP servers behind the listener.
    #[serde(default, rename = "server")]
    pub servers: Vec<Spanned<McpServerConfig>>,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            listen: None,
            audience: default_mcp_audience(),
            resource: None,
            max_body_bytes: default_mcp_max_body(),
            call_timeout_secs: default_mcp_call_timeout(),
            servers: Vec::new(),
        }
    }
}

fn default_mcp_audience() -> String {
    "tollgate-mcp".into()
}

fn default_mcp_max_body() -> usize {
    1024 * 1024
}

fn default_mcp_call_timeout() -> u64 {
    120
}

/// `[[mcp.server]]`: an MCP server the gateway runs as a child process and
/// speaks to over stdio (`command`), or reaches over Streamable HTTP
/// (`url`). Clients never reach it but through the gateway.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct McpServerConfig {
    /// The server's name: its path (`/mcp/<name>`), and `Server::"<name>"`
    /// to policies.
    pub name: String,
    /// The program and its arguments (a stdio server).
    #[serde(default)]
    pub command: Vec<String>,
    /// The server's Streamable HTTP endpoint (`https://`, or `http://` on
    /// a loopback address), instead of `command`.
    #[serde(default)]
    pub url: Option<String>,
    /// The gateway's own access token for a `url` server, sent as
    /// `Authorization: Bearer` (read when a session starts).
    #[serde(default)]
    pub bearer_token: Option<CredentialSource>,
    /// CA certificates (PEM) a `url` server's certificate must chain to,
    /// instead of the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// OAuth scopes a client's token must carry to use this server; a
    /// token without them gets 403 `insufficient_scope` (step-up).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Environment variables for it (nothing else of the gateway's
    /// environment but PATH and HOME is passed on).
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Environment variables whose values the gateway reads from a secret
    /// store (the server's own credential; never the client's token).
    #[serde(default)]
    pub secrets: std::collections::BTreeMap<String, CredentialSource>,
}

/// `[approvals]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// A held request nobody decides expires after this many seconds (the
    /// client gets SQLSTATE 42501).
    #[serde(default = "default_expire_secs")]
    pub expire_secs: u64,
    /// Approvers must have used multi-factor authentication (the token's
    /// `amr`/`acr`). Turn off only where the identity provider cannot say.
    #[serde(default = "default_true")]
    pub require_mfa: bool,
    /// The longest window an approval may grant, in seconds.
    #[serde(default = "default_max_window_secs")]
    pub max_window_secs: u64,
    /// The key (at least 16 bytes, the same on every replica) replicas
    /// sharing a PostgreSQL store sign their approval messages with.
    /// Required when `[audit] recordings` is a `postgres://` URL.
    #[serde(default)]
    pub replica_key: Option<CredentialSource>,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            expire_secs: default_expire_secs(),
            require_mfa: true,
            max_window_secs: default_max_window_secs(),
            replica_key: None,
        }
    }
}

fn default_expire_secs() -> u64 {
    15 * 60
}

fn default_max_window_secs() -> u64 {
    8 * 3600
}

/// `[api]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Where the API listens (HTTPS with the server's certificate); absent
    /// for no API.
    #[serde(default)]
    pub listen: Option<Spanned<SocketAddr>>,
    /// Groups whose members are auditors: session metadata and the audit
    /// log, never result previews.
    #[serde(default = "default_auditor_groups")]
    pub auditor_groups: Vec<String>,
    /// Groups whose members are analysts with replay: sessions' masked frames.
    #[serde(default = "default_analyst_groups")]
    pub analyst_groups: Vec<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: None,
            auditor_groups: default_auditor_groups(),
            analyst_groups: default_analyst_groups(),
        }
    }
}

fn default_auditor_groups() -> Vec<String> {
    vec!["auditors".into()]
}

fn default_analyst_groups() -> Vec<String> {
    vec!["analysts".into()]
}

/// `[audit]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The log's name in its signed checkpoints (the C2SP origin line), e.g.
    /// `gateway.example.com/audit`. Auditors check it against the verifier key.
    #[serde(default = "default_origin")]
    pub origin: String,
    /// Sign a checkpoint after this many new records.
    #[serde(default = "default_checkpoint_records")]
    pub checkpoint_records: u64,
    /// Or after this many seconds with new records.
    #[serde(default = "default_checkpoint_secs")]
    pub checkpoint_secs: u64,
    /// Where session recordings are stored: empty for SQLite in the data
    /// directory (`recordings.sqlite3`), or a `postgres://` URL so several
    /// gateway replicas share one store.
    #[serde(default)]
    pub recordings: String,
    /// Rows of each result kept, masked, as its preview in the recording.
    #[serde(default = "default_preview_rows")]
    pub preview_rows: usize,
    /// Days recordings and audit records are kept (PCI DSS 10.5.1 asks for 12 months).
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// SIEMs the audit log is streamed to.
    #[serde(default)]
    pub siem: Vec<SiemConfig>,
}

/// `[[audit.siem]]`: one SIEM the audit log is streamed to.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SiemConfig {
    /// A name for the sink (its cursor file is `audit/siem/<name>.cursor`).
    pub name: String,
    /// `syslog+tls://host:port` (RFC 5425), `syslog+tcp://host:port`
    /// (RFC 6587), or an `https://` URL for the JSON webhook.
    pub url: String,
    /// A CA (PEM) to trust for the SIEM's certificate, besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Webhook only: a bearer token sent as `Authorization`.
    #[serde(default)]
    pub token: Option<CredentialSource>,
    /// Records per delivery.
    #[serde(default = "default_siem_batch")]
    pub batch: usize,
}

fn default_siem_batch() -> usize {
    500
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            origin: default_origin(),
            checkpoint_records: default_checkpoint_records(),
            checkpoint_secs: default_checkpoint_secs(),
            recordings: String::new(),
            preview_rows: default_preview_rows(),
            retention_days: default_retention_days(),
            siem: Vec::new(),
        }
    }
}

fn default_origin() -> String {
    "tollgate.local/audit".into()
}
fn default_checkpoint_records() -> u64 {
    1000
}
fn default_checkpoint_secs() -> u64 {
    10
}
fn default_preview_rows() -> usize {
    3
}
fn default_retention_days() -> u32 {
    400
}

/// `[policy]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Cedar policy files (relative paths are relative to the config file).
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// Also use the built-in PCI DSS starter policy (`fixtures/policies/pci.cedar`).
    #[serde(default)]
    pub starter: bool,
    /// Run without any policy: every statement is allowed. Development only;
    /// the gateway logs a warning at start.
    #[serde(default)]
    pub allow_all: bool,
    /// Time allowed for an EXPLAIN row estimate, in milliseconds; past it the
    /// estimate counts as unbounded.
    #[serde(default = "default_estimate_timeout")]
    pub estimate_timeout_ms: u64,
    /// How often policy files are checked for changes, in milliseconds.
    #[serde(default = "default_reload_check")]
    pub reload_check_ms: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            files: Vec::new(),
            starter: false,
            allow_all: false,
            estimate_timeout_ms: default_estimate_timeout(),
            reload_check_ms: default_reload_check(),
        }
    }
}

fn default_estimate_timeout() -> u64 {
    500
}
fn default_reload_check() -> u64 {
    1000
}

/// `[masking]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MaskingConfig {
    /// What callers see of a PAN they may not reveal: `pci_display` (first
    /// six and last four, the default) or `last_four`.
    #[serde(default)]
    pub client: ClientMask,
    /// The key of the `token` strategy (HMAC-SHA-256), kept outside the
    /// gateway's store: `{ env = "..." }`, `{ file = "..." }` or `{ keyring = {...} }`.
    pub token_key: Option<CredentialSource>,
    /// Column rules.
    #[serde(default, rename = "rule")]
    pub rules: Vec<MaskRule>,
    /// Card data discovery: sample the columns of every table the first
    /// time the gateway sees it (default on).
    #[serde(default = "default_true")]
    pub discovery: bool,
}

impl Default for MaskingConfig {
    fn default() -> Self {
        MaskingConfig {
            client: ClientMask::default(),
            token_key: None,
            rules: Vec::new(),
            discovery: true,
        }
    }
}

fn default_true() -> bool {
    true
}

/// What callers see of a PAN.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientMask {
    /// First six and last four digits.
    #[default]
    PciDisplay,
    /// Last four digits.
    LastFour,
}

/// A column rule: this column gets this strategy.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MaskRule {
    /// The connection it applies to (all when absent).
    pub connection: Option<String>,
    /// `schema.table.column`.
    pub column: String,
    /// `pci_display`, `last_four`, `redact`, `token` or `null`.
    pub strategy: crate::masking::Strategy,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port of the PostgreSQL listener.
    #[serde(default = "default_listen")]
    pub listen: Spanned<SocketAddr>,
    /// Directory for the gateway's own state (self-signed certificate, dev
    /// issuer key). Relative paths are relative to the config file.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Accept clients that do not ask for TLS. Refused together with token
    /// authentication on a non-loopback address: tokens never cross a network
    /// in clear text.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Client-facing TLS.
    #[serde(default)]
    pub tls: ServerTlsConfig,
    /// Largest frontend message accepted, in bytes (PostgreSQL's own limit is 1 GiB).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Seconds a client has to finish TLS, startup and authentication.
    #[serde(default = "default_startup_timeout")]
    pub startup_timeout_secs: u64,
    /// Seconds live sessions get to finish when the gateway stops, before
    /// the gateway ends them (SQLSTATE 57P01).
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,
}

/// `[server.tls]`: either a certificate and key, or a self-signed certificate.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain presented to clients.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// Generate a self-signed certificate on first start and keep it in the
    /// data directory (development only).
    #[serde(default)]
    pub self_signed: bool,
}

/// `[identity]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// OIDC providers whose access tokens are accepted.
    #[serde(default, rename = "issuer")]
    pub issuers: Vec<Spanned<IssuerConfig>>,
    /// The development issuer built into the binary (`tollgate token`).
    #[serde(default)]
    pub dev_issuer: DevIssuerConfig,
    /// Claim holding the caller's groups (a list of strings, or one
    /// space- or comma-separated string).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Claim telling an agent from a person, and the values that mean "agent".
    #[serde(default)]
    pub agent: AgentRule,
    /// How multi-factor authentication is recognised (PCI DSS 8.4.2).
    #[serde(default)]
    pub mfa: MfaRule,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Require the PostgreSQL user name to equal the token's subject. When
    /// false the user name is informational.
    #[serde(default)]
    pub user_must_match_subject: bool,
    /// Minimum seconds between two JWKS fetches of one issuer when a token
    /// names an unknown key id.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_min_refresh_secs: u64,
}

/// `[[identity.issuer]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The issuer URL exactly as it appears in the `iss` claim; its OIDC
    /// discovery document is read from `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// The audience this gateway expects in `aud`.
    pub audience: String,
    /// Signature algorithms accepted from this issuer. Asymmetric only: HMAC
    /// and `none` are refused.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Override the JWKS URL instead of using discovery.
    pub jwks_uri: Option<String>,
    /// CA certificate (PEM) for the issuer's HTTPS endpoints, in addition to
    /// the system roots.
    pub ca_file: Option<PathBuf>,
    /// The OAuth client id of the desktop console at this issuer (a public
    /// client with PKCE and a loopback redirect). Published in the API's
    /// protected resource metadata, so a console needs only the gateway's URL.
    #[serde(default)]
    pub console_client_id: Option<String>,
}

/// `[identity.dev_issuer]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevIssuerConfig {
    /// Trust tokens minted by `tollgate token`. Never enable in production.
    #[serde(default)]
    pub enabled: bool,
    /// Audience of dev tokens.
    #[serde(default = "default_audience")]
    pub audience: String,
}

/// `[identity.agent]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRule {
    /// Claim naming the kind of principal.
    #[serde(default = "default_agent_claim")]
    pub claim: String,
    /// Values of `claim` that mark an agent; anything else is a person.
    #[serde(default = "default_agent_values")]
    pub values: Vec<String>,
}

/// `[identity.mfa]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MfaRule {
    /// `amr` values (RFC 8176) that show a second factor was used.
    #[serde(default = "default_amr")]
    pub amr_values: Vec<String>,
    /// `acr` values that imply multi-factor authentication.
    #[serde(default)]
    pub acr_values: Vec<String>,
}

/// `[[connection]]`: one upstream database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// Name clients use as their database name (`dbname=<name>`).
    pub name: String,
    /// Upstream host name or address.
    pub host: String,
    /// Upstream port.
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Database on the upstream server.
    pub database: String,
    /// Role the gateway logs in as.
    pub user: String,
    /// Where the gateway reads that role's password.
    pub password: Option<CredentialSource>,
    /// TLS towards the upstream.
    #[serde(default)]
    pub tls: UpstreamTlsMode,
    /// CA certificate (PEM) that signed the upstream's certificate; the
    /// system roots when absent.
    pub ca_file: Option<PathBuf>,
    /// Seconds to wait for the upstream to accept and authenticate.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Tables (`schema.table`) and columns (`schema.table.column`) that hold
    /// cardholder data, in addition to what the gateway recognises by column
    /// name. Policies see them as `resource.cardholder`.
    #[serde(default)]
    pub cardholder: Vec<String>,
    /// Record this connection's results in full (masked, as the client got
    /// them) up to this many bytes per result; 0 keeps only the preview.
    #[serde(default)]
    pub record_results_bytes: u64,
}

/// Where an upstream password comes from. The gateway holds it; clients never see it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CredentialSource {
    /// An environment variable of the gateway process.
    Env(String),
    /// A file whose first line is the password (trailing newline ignored).
    File(PathBuf),
    /// The OS keyring (Secret Service, Keychain, Credential Manager).
    Keyring {
        /// Keyring service name.
        service: String,
        /// Keyring account name.
        account: String,
    },
    /// The password inline. Only for throwaway development databases.
    Inline(String),
}

/// TLS towards an upstream, as libpq's `sslmode` names it.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTlsMode {
    /// Plain TCP. Only for a database on the same host.
    Disable,
    /// Encrypt, but do not verify the certificate.
    Require,
    /// Encrypt and verify the chain, not the host name.
    VerifyCa,
    /// Encrypt and verify the chain and the host name.
    #[default]
    VerifyFull,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            data_dir: default_data_dir(),
            allow_plaintext: false,
            tls: ServerTlsConfig::default(),
            max_message_bytes: default_max_message_bytes(),
            startup_timeout_secs: default_startup_timeout(),
            shutdown_grace_secs: default_shutdown_grace(),
        }
    }
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            issuers: Vec::new(),
            dev_issuer: DevIssuerConfig::default(),
            groups_claim: default_groups_claim(),
            agent: AgentRule::default(),
            mfa: MfaRule::default(),
            leeway_secs: default_leeway(),
            user_must_match_subject: false,
            jwks_min_refresh_secs: default_jwks_refresh(),
        }
    }
}

impl Default for DevIssuerConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            audience: default_audience(),
        }
    }
}

impl Default for AgentRule {
    fn default() -> Self {
        Self {
            claim: default_agent_claim(),
            values: default_agent_values(),
        }
    }
}

impl Default for MfaRule {
    fn default() -> Self {
        Self {
            amr_values: default_amr(),
            acr_values: Vec::new(),
        }
    }
}

fn default_listen() -> Spanned<SocketAddr> {
    Spanned::new(0..0, SocketAddr::from(([127, 0, 0, 1], 6432)))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from(".tollgate")
}
fn default_max_message_bytes() -> usize {
    (1 << 30) - 1
}
fn default_shutdown_grace() -> u64 {
    10
}

fn default_startup_timeout() -> u64 {
    15
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_leeway() -> u64 {
    30
}
fn default_jwks_refresh() -> u64 {
    30
}
fn default_algorithms() -> Vec<String> {
    ["RS256", "PS256", "ES256", "EdDSA"]
        .map(String::from)
        .to_vec()
}
fn default_audience() -> String {
    "tollgate".into()
}
fn default_agent_claim() -> String {
    "principal_type".into()
}
fn default_agent_values() -> Vec<String> {
    vec!["agent".into()]
}
fn default_amr() -> Vec<String> {
    [
        "mfa", "otp", "hwk", "swk", "sms", "fpt", "face", "iris", "sc",
    ]
    .map(String::from)
    .to_vec()
}
fn default_pg_port() -> u16 {
    5432
}
fn default_connect_timeout() -> u64 {
    10
}

impl Config {
    /// Read, parse and validate a configuration file. Relative paths in it
    /// are resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &path.display().to_string(), base)
    }

    /// Parse and validate configuration text; `file` names it in errors and
    /// `base` anchors its relative paths.
    pub fn parse(text: &str, file: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| ConfigError::parse(file, text, e))?;
        config.resolve_paths(base);
        validate::validate(&config, file, text)?;
        Ok(config)
    }

    /// The connection clients reach as `dbname=<name>`.
    pub fn connection(&self, name: &str) -> Option<&ConnectionConfig> {
        self.connections
            .iter()
            .map(|c| c.get_ref())
            .find(|c| c.name == name)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.server.data_dir);
        for p in &mut self.policy.files {
            fix(p);
        }
        for p in [&mut self.server.tls.cert, &mut self.server.tls.key]
            .into_iter()
            .flatten()
        {
            fix(p);
        }
        for c in &mut self.connections {
            let c = c.get_mut();
            if let Some(p) = &mut c.ca_file {
                fix(p);
            }
            if let Some(CredentialSource::File(p)) = &mut c.password {
                fix(p);
            }
        }
        if let Some(CredentialSource::File(p)) = &mut self.masking.token_key {
            fix(p);
        }
        for i in &mut self.identity.issuers {
            if let Some(p) = &mut i.get_mut().ca_file {
                fix(p);
            }
        }
    }
}

#[cfg(test)]
mod tests;
