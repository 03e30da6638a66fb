//! One client connection from first byte to last: negotiate, authenticate,
//! connect upstream, hand over to the relay.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::cancel::{CancelRegistry, CancelTarget};
use super::catalog::Catalog;
use super::error::PgError;
use super::frame::{Body, Frame};
use super::guard::{Guard, GuardShared};
use super::mask::{MaskShared, Masker};
use super::record::Recorder;
use super::settings::ServerSettings;
use super::startup::{Opening, StartupFailure, negotiate};
use super::{messages, relay, upstream};
use crate::audit::event::{Event, Outcome};
use crate::identity::{AuthError, Authenticator, Identity};
use crate::listener::conn::Conn;
use crate::listener::tls::ServerTls;
use crate::pg::hooks::{HookFactory, SessionEvent};
use crate::policy::Principal;
use crate::recording::Recording;
use crate::upstream::Upstream;

/// A password message carrying a JWT: generous, but bounded.
const MAX_PASSWORD_MESSAGE: usize = 64 * 1024;

/// What every session of the PostgreSQL listener shares.
pub struct PgContext {
    /// Client-facing TLS, if configured.
    pub tls: Option<ServerTls>,
    /// Accept clients without TLS.
    pub allow_plaintext: bool,
    /// Token validation.
    pub auth: Arc<Authenticator>,
    /// Upstreams by connection name.
    pub upstreams: HashMap<String, Arc<Upstream>>,
    /// Live sessions' cancel keys.
    pub cancels: Arc<CancelRegistry>,
    /// Hooks for each session.
    pub hooks: Arc<dyn HookFactory>,
    /// Time allowed for TLS, startup and login.
    pub startup_timeout: Duration,
    /// Largest client message accepted.
    pub max_message_bytes: usize,
    /// Require the startup user name to equal the token subject.
    pub user_must_match_subject: bool,
    /// The policy check; `None` runs without policy (`allow_all`).
    pub guard: Option<Arc<GuardShared>>,
    /// Masking settings (`None` only in the benchmark's unmasked baseline).
    pub mask: Option<Arc<MaskShared>>,
    /// Catalogs by connection name.
    pub catalogs: HashMap<String, Arc<Catalog>>,
    /// Recording and audit (`None` only in unit tests of other stages).
    pub recording: Option<Arc<Recording>>,
    /// Becomes `true` when the gateway ends the sessions still live at shutdown.
    pub ending: tokio::sync::watch::Receiver<bool>,
}

/// Serve one accepted client connection to its end. Never panics on bad
/// input: every failure becomes an ErrorResponse (when the client can still
/// read one) and a log line.
pub async fn serve_connection(tcp: TcpStream, peer: SocketAddr, ctx: Arc<PgContext>) {
    let opened = tokio::time::timeout(ctx.startup_timeout, async {
        let opening = negotiate(tcp, ctx.tls.as_ref(), ctx.allow_plaintext).await?;
        match opening {
            Opening::Cancel { pid, key } => {
                forward_cancel(&ctx, pid, key, peer).await;
                Ok(None)
            }
            Opening::Session { conn, parameters } => {
                login(conn, parameters, peer, &ctx).await.map(Some)
            }
        }
    })
    .await;
    let established = match opened {
        Ok(Ok(Some(established))) => established,
        Ok(Ok(None)) => return,
        Ok(Err(StartupFailure { conn, error })) => {
            tracing::debug!(%peer, error = %error.message, "startup refused");
            if let Some(mut conn) = conn {
                let _ = conn.write_all(error.to_frame().raw()).await;
                let _ = conn.shutdown().await;
            }
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "startup timed out");
            return;
        }
    };
    run_session(established, peer, &ctx).await;
}

/// A logged-in client with its upstream session.
struct Established {
    client: Conn,
    upstream: upstream::UpstreamSession,
    target: Arc<Upstream>,
    identity: Identity,
    connection: String,
    application_name: Option<String>,
    /// The `search_path` the client set at startup (`None`: the role's default).
    search_path: Option<Vec<String>>,
    /// Client bytes read behind the password message.
    pending: BytesMut,
}

async fn login(
    mut client: Conn,
    parameters: Vec<(String, String)>,
    peer: SocketAddr,
    ctx: &PgContext,
) -> Result<Established, StartupFailure> {
    let param = |name: &str| {
        parameters
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    if param("replication").is_some_and(|v| v != "false" && v != "0" && v != "off") {
        return Err(fail(
            client,
            PgError::fatal(
                "0A000",
                "replication connections are not supported by the gateway",
            ),
        ));
    }
    let user = param("user").unwrap_or_default();
    let database = param("database").unwrap_or_else(|| user.clone());
    // Settings the client asks for are checked before anything else.
    let startup = match super::params::check(&parameters) {
        Ok(startup) => startup,
        Err(error) => {
            tracing::warn!(
                target: "tollgate::audit", event = "login", outcome = "refused", client = %peer,
                reason = %error.message
            );
            return Err(fail(client, error));
        }
    };

    // Ask for the access token as a cleartext password (the channel is TLS).
    if client
        .write_all(messages::auth_cleartext().raw())
        .await
        .is_err()
    {
        return Err(StartupFailure {
            conn: None,
            error: PgError::fatal("08006", "client went away"),
        });
    }
    let mut pending = BytesMut::with_capacity(2048);
    let token = match read_password(&mut client, &mut pending).await {
        Ok(token) => token,
        Err(error) => return Err(fail(client, error)),
    };
    let identity = match ctx.auth.authenticate(&token).await {
        Ok(identity) if ctx.user_must_match_subject && identity.subject != user => {
            Err(AuthError::UserMismatch { user: user.clone() })
        }
        other => other,
    };
    let identity = match identity {
        Ok(identity) => identity,
        Err(e) => {
            tracing::warn!(
                target: "tollgate::audit", event = "login", outcome = "failure", client = %peer,
                user = %crate::masking::for_record(&user), database = %database, reason = %e
            );
            if let Some(recording) = &ctx.recording {
                let event = Event::new("login", Outcome::Failure)
                    .claimed_actor(&user)
                    .origin(peer)
                    .resource(serde_json::json!({ "connection": database }))
                    .with("reason", e.to_string());
                recording.auditor.record_later(event);
            }
            return Err(fail(client, PgError::from(e)));
        }
    };
    if let Some(recording) = &ctx.recording {
        let event = Event::new("login", Outcome::Success)
            .actor(&identity)
            .origin(peer)
            .resource(serde_json::json!({ "connection": database }));
        recording.auditor.record_later(event);
    }
    tracing::info!(
        target: "tollgate::audit", event = "login", outcome = "success", client = %peer,
        subject = %identity.subject, issuer = %identity.issuer, groups = ?identity.groups,
        mfa = identity.mfa, kind = ?identity.kind, database = %database
    );

    let Some(target) = ctx.upstreams.get(&database).cloned() else {
        return Err(fail(
            client,
            PgError::fatal("3D000", format!("database \"{database}\" does not exist")).with_hint(
                "use the name of a connection configured on the gateway as the database name",
            ),
        ));
    };
    let upstream = match upstream::connect(&target, &startup.forwarded).await {
        Ok(session) => session,
        Err(e) => {
            tracing::warn!(connection = %database, error = %e, "upstream connect failed");
            return Err(fail(client, e.to_pg(&database)));
        }
    };
    Ok(Established {
        client,
        upstream,
        target,
        identity,
        connection: database,
        application_name: param("application_name"),
        search_path: startup.search_path,
        pending,
    })
}

fn fail(conn: Conn, error: PgError) -> StartupFailure {
    StartupFailure {
        conn: Some(conn),
        error,
    }
}

/// Read the password message; bytes the client sent behind it stay in `buf`.
async fn read_password(client: &mut Conn, buf: &mut BytesMut) -> Result<String, PgError> {
    let frame = loop {
        match Frame::read(buf, MAX_PASSWORD_MESSAGE) {
            Ok(Some(frame)) => break frame,
            Ok(None) => {}
            Err(e) => {
                return Err(PgError::fatal(
                    "08P01",
                    format!("invalid password message: {e}"),
                ));
            }
        }
        match client.read_buf(buf).await {
            Ok(0) | Err(_) => {
                return Err(PgError::fatal(
                    "08006",
                    "client went away during authentication",
                ));
            }
            Ok(_) => {}
        }
    };
    if frame.tag() != b'p' {
        return Err(PgError::fatal(
            "08P01",
            format!(
                "expected a password message, got '{}'",
                super::frame::printable(frame.tag())
            ),
        ));
    }
    let token = Body::new(frame.body()).cstr().unwrap_or_default();
    String::from_utf8(token.to_vec()).map_err(|_| {
        PgError::fatal(
            "28P01",
            "authentication failed: the password is not a JWT access token",
        )
    })
}

async fn run_session(established: Established, peer: SocketAddr, ctx: &PgContext) {
    let Established {
        mut client,
        upstream,
        target,
        identity,
        connection,
        application_name,
        search_path,
        pending,
    } = established;
    let upstream::UpstreamSession {
        conn: mut upstream_conn,
        parameters,
        notices,
        pid,
        key,
    } = upstream;
    // The settings the upstream session starts with, as the server reports them.
    let mut settings = ServerSettings::default();
    for frame in &parameters {
        let mut body = Body::new(frame.body());
        let reported = match (body.cstr(), body.cstr()) {
            (Some(name), Some(value)) => settings.report(name, value),
            _ => Ok(()),
        };
        if let Err(error) = reported {
            let error = PgError::fatal("0A000", error.0);
            let _ = client.write_all(error.to_frame().raw()).await;
            let _ = upstream_conn.write_all(&[b'X', 0, 0, 0, 4]).await;
            return;
        }
    }

    let mut hooks = ctx.hooks.for_session(&identity, &connection);
    let session_id = crate::recording::session_id();
    let mut hold = None;
    let principal = Principal::of(&identity);
    if let Some(catalog) = ctx.catalogs.get(&connection)
        && let Some(mask) = &ctx.mask
    {
        hooks = Box::new(Masker::new(
            mask.clone(),
            catalog.clone(),
            hooks,
            principal.clone(),
            connection.clone(),
            peer.ip(),
        ));
    }
    if let Some(guard) = &ctx.guard
        && let Some(catalog) = ctx.catalogs.get(&connection)
    {
        let mut guarded = Guard::new(
            guard.clone(),
            catalog.clone(),
            hooks,
            principal,
            connection.clone(),
            peer.ip(),
            search_path,
        );
        if ctx.recording.is_some() {
            guarded.set_session(&session_id);
        }
        hold = Some(guarded.hold_slot());
        hooks = Box::new(guarded);
    }
    let mut tap = None;
    if let Some(recording) = &ctx.recording {
        let recorder = Recorder::new(
            session_id,
            recording.clone(),
            hooks,
            &identity,
            peer,
            &connection,
            target.config.record_results_bytes,
        );
        tap = Some(recorder.tap());
        hooks = Box::new(recorder);
    }
    let registration = ctx.cancels.register(CancelTarget {
        upstream: target,
        pid,
        key,
        tap,
        hold,
    });

    // Finish the client's startup: AuthenticationOk, the upstream's
    // parameters and notices, our own cancel key, ReadyForQuery.
    let mut hello = BytesMut::new();
    hello.extend_from_slice(messages::auth_ok().raw());
    for frame in parameters.iter().chain(&notices) {
        hello.extend_from_slice(frame.raw());
    }
    hello.extend_from_slice(messages::backend_key_data(registration.pid, registration.key).raw());
    hello.extend_from_slice(messages::ready_for_query(b'I').raw());
    if client.write_all(&hello).await.is_err() {
        return;
    }
    hooks.event(&SessionEvent::Connected {
        identity: &identity,
        client: peer,
        connection: &connection,
        application_name: application_name.as_deref(),
        tls: client.is_tls(),
    });
    let result = relay::run(
        &mut client,
        &mut upstream_conn,
        hooks.as_mut(),
        ctx.max_message_bytes,
        pending,
        settings,
        ctx.ending.clone(),
    )
    .await;
    let reason = match &result {
        Ok(relay::RelayEnd::Terminated) => None,
        Ok(relay::RelayEnd::ClientClosed) => Some("client closed the connection".to_string()),
        Ok(relay::RelayEnd::UpstreamClosed) => {
            let error = PgError::fatal(
                "08006",
                format!("connection \"{connection}\": the upstream server closed the session"),
            );
            let _ = client.write_all(error.to_frame().raw()).await;
            Some("upstream closed the connection".to_string())
        }
        Ok(relay::RelayEnd::Shutdown) => {
            let error = PgError::fatal(
                "57P01",
                "terminating connection because the gateway is shutting down; reconnect to retry",
            );
            // A client that reads nothing does not hold up the shutdown.
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                client.write_all(error.to_frame().raw()),
            )
            .await;
            Some("gateway shut down".to_string())
        }
        Err(relay::RelayError::ClientProtocol(e)) => {
            let error = PgError::fatal("08P01", format!("protocol violation: {e}"));
            let _ = client.write_all(error.to_frame().raw()).await;
            Some(format!("protocol violation: {e}"))
        }
        Err(e @ relay::RelayError::UpstreamProtocol(_))
        | Err(e @ relay::RelayError::Upstream(_)) => {
            let error = PgError::fatal("08006", format!("connection \"{connection}\": {e}"));
            let _ = client.write_all(error.to_frame().raw()).await;
            Some(e.to_string())
        }
        Err(relay::RelayError::Unfollowable(e)) => {
            let error = PgError::fatal("0A000", e.0.clone());
            let _ = client.write_all(error.to_frame().raw()).await;
            Some(e.0.clone())
        }
        Err(e @ relay::RelayError::Client(_)) => Some(e.to_string()),
    };
    // The relay already told the upstream when the client terminated or vanished.
    if !matches!(
        result,
        Ok(relay::RelayEnd::ClientClosed | relay::RelayEnd::Terminated)
    ) {
        let _ = upstream_conn.write_all(&[b'X', 0, 0, 0, 4]).await;
    }
    let _ = client.shutdown().await;
    hooks.event(&SessionEvent::Disconnected {
        reason: reason.as_deref(),
    });
    drop(registration);
}

async fn forward_cancel(ctx: &PgContext, pid: i32, key: i32, peer: SocketAddr) {
    let Some(target) = ctx.cancels.lookup(pid, key) else {
        // As PostgreSQL does, say nothing to the sender about a wrong key.
        tracing::info!(target: "tollgate::audit", event = "cancel", outcome = "unknown key", client = %peer);
        return;
    };
    tracing::info!(target: "tollgate::audit", event = "cancel", outcome = "forwarded", client = %peer, connection = %target.upstream.config.name);
    if let Some(tap) = &target.tap {
        tap.frame("cancel", serde_json::json!({ "client": peer.to_string() }));
    }
    if let Some(recording) = &ctx.recording {
        let event = Event::new("cancel", Outcome::Success)
            .origin(peer)
            .resource(serde_json::json!({ "connection": target.upstream.config.name }))
            .with("session", target.tap.as_ref().map(|t| t.id.clone()));
        recording.auditor.record_later(event);
    }
    if let Some(id) = target.hold.as_ref().and_then(|h| h.cancel()) {
        // The held statement is the one running, as the client sees it, and
        // nothing of it is upstream: the cancel ends here. (Forwarded, it
        // would race the client's next statement and cancel that one.)
        tracing::info!(target: "tollgate::audit", event = "approval.withdrawn", request = %id, "cancel withdrew the held request");
        return;
    }
    if let Err(e) = upstream::send_cancel(&target.upstream, target.pid, target.key).await {
        tracing::warn!(error = %e, "forwarding cancel failed");
    }
}
