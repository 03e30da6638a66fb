//! Checks that parsing alone cannot make, reported with file, line and key.

use std::ops::Range;

use super::Config;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema.
    #[error("{file}:{line}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// 1-based line of the fault (0 when unknown).
        line: usize,
        /// The parser's message, naming the key.
        message: String,
    },
    /// The file parsed but a value is not acceptable.
    #[error("{file}:{line}: {key}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// 1-based line of the fault (0 when unknown).
        line: usize,
        /// Dotted path of the key at fault.
        key: String,
        /// What is wrong and what to do.
        message: String,
    },
}

impl ConfigError {
    pub(super) fn parse(file: &str, text: &str, e: toml::de::Error) -> Self {
        let line = e.span().map(|s| line_of(text, &s)).unwrap_or(0);
        // The first line of toml's message is the summary; the rest repeats the
        // source excerpt, which the line number already points at.
        let message = e.message().trim().to_string();
        ConfigError::Parse {
            file: file.to_string(),
            line,
            message,
        }
    }
}

fn line_of(text: &str, span: &Range<usize>) -> usize {
    if *span == (0..0) {
        return 0;
    }
    text.get(..span.start)
        .map_or(0, |t| t.matches('\n').count() + 1)
}

/// Largest `record_results_bytes` (16 MiB per result).
const MAX_RECORD_RESULTS_BYTES: u64 = 16 * 1024 * 1024;

const ASYMMETRIC_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

pub(super) fn validate(config: &Config, file: &str, text: &str) -> Result<(), ConfigError> {
    let invalid = |span: &Range<usize>, key: String, message: String| ConfigError::Invalid {
        file: file.to_string(),
        line: line_of(text, span),
        key,
        message,
    };

    let server = &config.server;
    let listen = server.listen.get_ref();
    let tls = &server.tls;
    if server.allow_plaintext && !listen.ip().is_loopback() {
        return Err(invalid(
            &server.listen.span(),
            "server.allow_plaintext".into(),
            format!(
                "plaintext is refused on the non-loopback address {listen}: clients send their access \
                 token as the password, so it must travel over TLS. Listen on 127.0.0.1 or remove allow_plaintext"
            ),
        ));
    }
    match (&tls.cert, &tls.key, tls.self_signed) {
        (Some(_), None, _) | (None, Some(_), _) => {
            return Err(invalid(
                &(0..0),
                "server.tls".into(),
                "set both cert and key, or neither".into(),
            ));
        }
        (Some(_), Some(_), true) => {
            return Err(invalid(
                &(0..0),
                "server.tls.self_signed".into(),
                "choose either a configured cert and key or self_signed, not both".into(),
            ));
        }
        (None, None, false) if !server.allow_plaintext => {
            return Err(invalid(
                &(0..0),
                "server.tls".into(),
                "no TLS certificate: set [server.tls] cert and key, or self_signed = true for development".into(),
            ));
        }
        _ => {}
    }
    if let Some(api) = &config.api.listen {
        let no_tls = tls.cert.is_none() && !tls.self_signed;
        if no_tls && !api.get_ref().ip().is_loopback() {
            return Err(invalid(
                &api.span(),
                "api.listen".into(),
                format!(
                    "the API on the non-loopback address {} needs TLS (callers send their access token): \
                     configure [server.tls] or listen on 127.0.0.1",
                    api.get_ref()
                ),
            ));
        }
    }
    validate_mcp(config, &invalid)?;
    for connection in &config.connections {
        let c = connection.get_ref();
        if c.record_results_bytes > MAX_RECORD_RESULTS_BYTES {
            return Err(invalid(
                &connection.span(),
                format!("connection.{}.record_results_bytes", c.name),
                format!(
                    "{} bytes per result is more than a recording should hold (at most {MAX_RECORD_RESULTS_BYTES}); \
                     export large results from the database instead",
                    c.record_results_bytes
                ),
            ));
        }
    }
    let approvals = &config.approvals;
    if approvals.expire_secs == 0 || approvals.max_window_secs == 0 {
        return Err(invalid(
            &(0..0),
            "approvals.expire_secs".into(),
            "expire_secs and max_window_secs must both be at least 1 (seconds)".into(),
        ));
    }
    let audit = &config.audit;
    if audit.recordings.starts_with("postgres") && approvals.replica_key.is_none() {
        return Err(invalid(
            &(0..0),
            "approvals.replica_key".into(),
            "replicas sharing a PostgreSQL store share their approval requests through it, signed with a key \
             they all know: set replica_key = { file = \"/etc/tollgate/replica.key\" } (at least 16 bytes, \
             the same on every replica; `openssl rand -base64 32` makes one)"
                .into(),
        ));
    }
    if audit.origin.trim().is_empty() || audit.origin.contains(['\n', '+']) {
        return Err(invalid(
            &(0..0),
            "audit.origin".into(),
            "the origin names the log in its checkpoints: a non-empty line without '+', e.g. \"gateway.example.com/audit\"".into(),
        ));
    }
    if audit.checkpoint_records == 0 || audit.checkpoint_secs == 0 {
        return Err(invalid(
            &(0..0),
            "audit.checkpoint_records".into(),
            "checkpoint_records and checkpoint_secs must both be at least 1".into(),
        ));
    }
    if !(audit.recordings.is_empty()
        || audit.recordings.starts_with("postgres://")
        || audit.recordings.starts_with("postgresql://"))
    {
        return Err(invalid(
            &(0..0),
            "audit.recordings".into(),
            "leave empty for SQLite in the data directory, or give a postgres:// URL".into(),
        ));
    }
    let mut names = std::collections::HashSet::new();
    for siem in &audit.siem {
        let key = format!("audit.siem.{}", siem.name);
        if siem.name.is_empty()
            || !siem
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            || !names.insert(siem.name.as_str())
        {
            return Err(invalid(
                &(0..0),
                "audit.siem.name".into(),
                format!(
                    "\"{}\": each SIEM needs its own name of letters, digits, '-' and '_'",
                    siem.name
                ),
            ));
        }
        let url = url::Url::parse(&siem.url)
            .map_err(|e| invalid(&(0..0), key.clone(), format!("url {}: {e}", siem.url)))?;
        let loopback = url.host_str().is_some_and(|h| {
            h == "localhost"
                || h.trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        match url.scheme() {
            "syslog+tls" | "https" => {}
            "syslog+tcp" | "http" if loopback => {}
            "syslog+tcp" | "http" => {
                return Err(invalid(
                    &(0..0),
                    key,
                    "audit records leave the host in clear: use syslog+tls:// or https:// (plain only to a loopback address)".into(),
                ));
            }
            other => {
                return Err(invalid(
                    &(0..0),
                    key,
                    format!(
                        "url scheme {other}: use syslog+tls://host:port, syslog+tcp://host:port or https://..."
                    ),
                ));
            }
        }
        if siem.token.is_some() && url.scheme().starts_with("syslog") {
            return Err(invalid(
                &(0..0),
                key,
                "token is for the https webhook; syslog sinks authenticate the server by its certificate".into(),
            ));
        }
    }
    if audit.retention_days < 90 {
        return Err(invalid(
            &(0..0),
            "audit.retention_days".into(),
            format!(
                "{} days is too short: PCI DSS 10.5.1 wants at least 12 months kept and the last 3 months at hand",
                audit.retention_days
            ),
        ));
    }
    let policy = &config.policy;
    if policy.files.is_empty() && !policy.starter && !policy.allow_all {
        return Err(invalid(
            &(0..0),
            "policy".into(),
            "no policy: set [policy] files = [\"your.cedar\"] (or starter = true for the PCI DSS starter policy); \
             allow_all = true runs without policy, for development only"
                .into(),
        ));
    }
    if policy.allow_all && (!policy.files.is_empty() || policy.starter) {
        return Err(invalid(
            &(0..0),
            "policy.allow_all".into(),
            "allow_all cannot be combined with policy files or the starter policy".into(),
        ));
    }
    for (i, rule) in config.masking.rules.iter().enumerate() {
        if rule.column.split('.').count() != 3 || rule.column.split('.').any(str::is_empty) {
            return Err(invalid(
                &(0..0),
                format!("masking.rule[{i}].column"),
                format!("'{}' is not schema.table.column", rule.column),
            ));
        }
        if rule.strategy == crate::masking::Strategy::Token && config.masking.token_key.is_none() {
            return Err(invalid(
                &(0..0),
                format!("masking.rule[{i}].strategy"),
                "the token strategy needs [masking] token_key = { env = \"...\" } (or file, keyring): \
                 at least 16 random bytes kept outside the gateway's store"
                    .into(),
            ));
        }
        if let Some(name) = &rule.connection
            && config.connection(name).is_none()
        {
            return Err(invalid(
                &(0..0),
                format!("masking.rule[{i}].connection"),
                format!("no connection named '{name}'"),
            ));
        }
    }
    if server.max_message_bytes < 8192 {
        return Err(invalid(
            &(0..0),
            "server.max_message_bytes".into(),
            "must be at least 8192".into(),
        ));
    }

    let identity = &config.identity;
    if identity.issuers.is_empty() && !identity.dev_issuer.enabled {
        return Err(invalid(
            &(0..0),
            "identity".into(),
            "no one could log in: add an [[identity.issuer]] or enable [identity.dev_issuer]"
                .into(),
        ));
    }
    for (n, issuer) in identity.issuers.iter().enumerate() {
        let span = issuer.span();
        let issuer = issuer.get_ref();
        let key = |field: &str| format!("identity.issuer[{n}].{field}");
        let url = url::Url::parse(&issuer.issuer).map_err(|e| {
            invalid(
                &span,
                key("issuer"),
                format!("'{}' is not a URL: {e}", issuer.issuer),
            )
        })?;
        let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
        if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
            return Err(invalid(
                &span,
                key("issuer"),
                format!(
                    "'{}' must use https (http only on a loopback address)",
                    issuer.issuer
                ),
            ));
        }
        if issuer.audience.is_empty() {
            return Err(invalid(&span, key("audience"), "must not be empty".into()));
        }
        if issuer.algorithms.is_empty() {
            return Err(invalid(
                &span,
                key("algorithms"),
                "list at least one algorithm".into(),
            ));
        }
        for alg in &issuer.algorithms {
            if !ASYMMETRIC_ALGORITHMS.contains(&alg.as_str()) {
                return Err(invalid(
                    &span,
                    key("algorithms"),
                    format!(
                        "'{alg}' is not accepted; use asymmetric algorithms only ({})",
                        ASYMMETRIC_ALGORITHMS.join(", ")
                    ),
                ));
            }
        }
        let duplicate = identity.issuers[..n]
            .iter()
            .any(|i| i.get_ref().issuer == issuer.issuer);
        if duplicate {
            return Err(invalid(
                &span,
                key("issuer"),
                format!("'{}' is listed twice", issuer.issuer),
            ));
        }
    }

    for (n, conn) in config.connections.iter().enumerate() {
        let span = conn.span();
        let conn = conn.get_ref();
        let key = |field: &str| format!("connection[{n}].{field}");
        if conn.name.is_empty() || conn.name.len() > 63 {
            return Err(invalid(
                &span,
                key("name"),
                "must be 1 to 63 characters".into(),
            ));
        }
        if config.connections[..n]
            .iter()
            .any(|c| c.get_ref().name == conn.name)
        {
            return Err(invalid(
                &span,
                key("name"),
                format!("'{}' is used twice", conn.name),
            ));
        }
        if conn.host.is_empty() {
            return Err(invalid(&span, key("host"), "must not be empty".into()));
        }
        if conn.connect_timeout_secs == 0 {
            return Err(invalid(
                &span,
                key("connect_timeout_secs"),
                "must be at least 1".into(),
            ));
        }
    }
    Ok(())
}

/// A Streamable HTTP endpoint the gateway may send its credential to.
fn check_mcp_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("'{url}' is not a URL: {e}"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "must not carry a user name or password: put the credential in bearer_token".into(),
        );
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("must not have a query or fragment: a secret there would reach logs".into());
    }
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    match parsed.scheme() {
        "https" if parsed.host().is_some() => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!(
            "'{url}' is plain HTTP to another host: the gateway's credential and the calls' data would \
             travel unencrypted; use https://"
        )),
        _ => Err(format!(
            "'{url}' must be an https:// (or loopback http://) URL"
        )),
    }
}

fn validate_mcp(
    config: &Config,
    invalid: &dyn Fn(&Range<usize>, String, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let mcp = &config.mcp;
    if let Some(listen) = &mcp.listen {
        let tls = &config.server.tls;
        let no_tls = tls.cert.is_none() && !tls.self_signed;
        if no_tls && !listen.get_ref().ip().is_loopback() {
            return Err(invalid(
                &listen.span(),
                "mcp.listen".into(),
                format!(
                    "the MCP listener on the non-loopback address {} needs TLS (agents send their access \
                     token): configure [server.tls] or listen on 127.0.0.1",
                    listen.get_ref()
                ),
            ));
        }
    }
    let audiences = config
        .identity
        .issuers
        .iter()
        .map(|i| i.get_ref().audience.as_str())
        .chain(
            config
                .identity
                .dev_issuer
                .enabled
                .then_some(config.identity.dev_issuer.audience.as_str()),
        );
    for audience in audiences {
        if audience == mcp.audience {
            return Err(invalid(
                &(0..0),
                "mcp.audience".into(),
                format!(
                    "'{audience}' is also the PostgreSQL listener's audience: give the MCP listener its own, \
                     so a token minted for one listener is refused by the other"
                ),
            ));
        }
    }
    if mcp.max_body_bytes < 1024 {
        return Err(invalid(
            &(0..0),
            "mcp.max_body_bytes".into(),
            "must be at least 1024".into(),
        ));
    }
    if mcp.call_timeout_secs == 0 {
        return Err(invalid(
            &(0..0),
            "mcp.call_timeout_secs".into(),
            "must be at least 1".into(),
        ));
    }
    for (n, server) in mcp.servers.iter().enumerate() {
        let span = server.span();
        let server = server.get_ref();
        let key = |field: &str| format!("mcp.server[{n}].{field}");
        let name_ok = !server.name.is_empty()
            && server.name.len() <= 63
            && server
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(invalid(
                &span,
                key("name"),
                "must be 1 to 63 letters, digits, '-' or '_' (it is a URL path segment)".into(),
            ));
        }
        if mcp.servers[..n]
            .iter()
            .any(|s| s.get_ref().name == server.name)
        {
            return Err(invalid(
                &span,
                key("name"),
                format!("'{}' is used twice", server.name),
            ));
        }
        let scope_ok = |s: &String| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        };
        if !server.scopes.iter().all(scope_ok) {
            return Err(invalid(
                &span,
                key("scopes"),
                "each scope must be printable ASCII without spaces, quotes or backslashes (RFC 6749)".into(),
            ));
        }
        match &server.url {
            None => {
                if server.command.first().is_none_or(|c| c.is_empty()) {
                    return Err(invalid(
                        &span,
                        key("command"),
                        "must name the program to run, e.g. [\"npx\", \"@modelcontextprotocol/server-everything\"] \
                         (or give the server's url)"
                            .into(),
                    ));
                }
                if server.bearer_token.is_some() || server.ca_file.is_some() {
                    return Err(invalid(
                        &span,
                        key("bearer_token"),
                        "bearer_token and ca_file are for a server at a url; a stdio server gets its \
                         credential in `secrets`"
                            .into(),
                    ));
                }
            }
            Some(url) => {
                if !server.command.is_empty()
                    || !server.env.is_empty()
                    || !server.secrets.is_empty()
                {
                    return Err(invalid(
                        &span,
                        key("url"),
                        "a server has either a url or a command (with env and secrets), not both"
                            .into(),
                    ));
                }
                if let Err(why) = check_mcp_url(url) {
                    return Err(invalid(&span, key("url"), why));
                }
            }
        }
    }
    Ok(())
}
