//! The MCP protocol adapter: agents' tool calls under the same identity,
//! policy, approvals, masking, recording and audit as SQL.
//!
//! Clients reach each configured server at `/mcp/<name>` over Streamable
//! HTTP (protocol versions [`VERSIONS`]), with an OIDC access token minted
//! for the MCP listener's own audience (`Authorization: Bearer`). The
//! gateway is an OAuth 2.1 resource server: RFC 9728 metadata at
//! `/.well-known/oauth-protected-resource/mcp/<name>`, named in the
//! `WWW-Authenticate` of every 401. The client's token never goes upstream:
//! the gateway runs each server itself ([`upstream`]) with its own
//! credential.
//!
//! | method | what the gateway does |
//! |---|---|
//! | `initialize` | opens a session (`Mcp-Session-Id`), recorded with protocol `mcp` |
//! | `tools/list` | the upstream's tools the caller's policies let it call (allowed or held for approval) |
//! | `tools/call` | Cedar decides `call_tool` on `Tool::"<server>/<tool>"` in `Server::"<server>"`; refused with a JSON-RPC error naming the policy, or held for approval (the response streams progress while it waits), then forwarded; the result is masked |
//! | `resources/list`, `resources/templates/list`, `prompts/list` | the upstream's resources, templates and prompts the caller's policies do not deny (all pages in one) |
//! | `resources/read` | Cedar decides `read_resource` on `McpResource::"<server>/<uri>"`; the contents (text and base64 blobs) are masked |
//! | `prompts/get` | Cedar decides `get_prompt` on `Prompt::"<server>/<name>"` with the arguments in the context; the messages are masked |
//! | `ping` | answered by the gateway |
//! | anything else | refused with -32601: the gateway passes what it understands (an allow-list) |
//!
//! Every call, read and prompt is an audit record made durable before it
//! goes upstream, and a `statement` and a `result` frame in the session's recording (the same
//! store and format family as PostgreSQL sessions).

pub mod bridge;
mod http_upstream;
pub mod jsonrpc;
pub mod pins;
pub mod upstream;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hmac::Mac;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::approvals::hold::{Hold, HoldOutcome, Need};
use crate::approvals::{Approvals, Ask, Requester, Scope};
use crate::audit::event::{Event, Outcome as AuditOutcome};
use crate::identity::{AuthError, Authenticator, Identity};
use crate::listener::http::{Peer, bearer};
use crate::masking::{
    Counts, Detector, Fill, Keep, for_record, mask_embedded, mask_json, mask_text,
};
use crate::policy::{Outcome, PolicyHandle, Principal, RequestContext, Resource, Rule};
use crate::recording::{self, Recording};
use crate::stage::{Reason, Refusal, Ruling};
use jsonrpc::Message;
use upstream::Server;

/// The protocol versions clients may speak with a session (`initialize`;
/// newest last).
pub const VERSIONS: &[&str] = &["2025-06-18", "2025-11-25"];

/// The protocol versions without a session: each request carries its
/// version, client info and capabilities in `params._meta`, and
/// `server/discover` replaces `initialize`.
pub const STATELESS_VERSIONS: &[&str] = &["2026-07-28"];

/// `params._meta` keys of a stateless request's envelope.
const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";

/// How long a session nobody uses stays open.
const IDLE: Duration = Duration::from_secs(30 * 60);

/// How long a listing of a server's tools decides its calls: a server
/// that changes a definition without saying so (no `list_changed`) has it
/// checked against its pin within this time.
const TOOLS_FRESH: Duration = Duration::from_secs(10);

/// Characters of a call's masked arguments or result kept in a frame.
const PREVIEW_CHARS: usize = 4096;

/// A server's tools as last listed: when, and by name.
type Listing = (Instant, HashMap<String, Value>);

/// What every MCP request shares.
pub struct McpContext {
    /// Validates tokens (with [`McpContext::audience`]).
    pub auth: Arc<Authenticator>,
    /// The audience tokens for this listener must name.
    pub audience: String,
    /// The resource URL clients know the listener by (no trailing slash).
    pub resource: String,
    /// Issuers whose tokens are accepted (RFC 9728 `authorization_servers`).
    pub issuers: Vec<String>,
    /// The servers, by name.
    pub servers: HashMap<String, Arc<Server>>,
    /// The policy in force (none: `policy.allow_all`, development only).
    pub policy: Option<PolicyHandle>,
    /// Where calls that need approval are held (none: they are refused).
    pub approvals: Option<Arc<Approvals>>,
    /// Recordings and the audit log.
    pub recording: Arc<Recording>,
    /// The pinned tool definitions.
    pub pins: Arc<pins::Pins>,
    /// The largest request body read.
    pub max_body: usize,
    /// How long a call may take upstream.
    pub call_timeout: Duration,
    /// Open sessions, by id.
    sessions: Mutex<HashMap<String, Arc<McpSession>>>,
    /// Each server's tools as last listed.
    tools: Mutex<HashMap<String, Listing>>,
}

impl McpContext {
    /// A context with no sessions yet.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        auth: Arc<Authenticator>,
        audience: String,
        resource: String,
        issuers: Vec<String>,
        servers: HashMap<String, Arc<Server>>,
        policy: Option<PolicyHandle>,
        approvals: Option<Arc<Approvals>>,
        recording: Arc<Recording>,
        pins: Arc<pins::Pins>,
        max_body: usize,
        call_timeout: Duration,
    ) -> McpContext {
        McpContext {
            auth,
            audience,
            resource: resource.trim_end_matches('/').to_string(),
            issuers,
            servers,
            policy,
            approvals,
            recording,
            pins,
            max_body,
            call_timeout,
            sessions: Mutex::default(),
            tools: Mutex::default(),
        }
    }

    fn metadata_url(&self, server: &str) -> String {
        format!(
            "{}/.well-known/oauth-protected-resource/mcp/{server}",
            self.resource
        )
    }
}

impl std::fmt::Debug for McpContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpContext")
            .field("resource", &self.resource)
            .field("servers", &self.servers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Who made this request, from where: taken from each request's own token
/// and address, never from the session's first one (a session outlives
/// the claims it started with).
#[derive(Debug, Clone)]
struct Caller {
    principal: Principal,
    client: SocketAddr,
}

/// Held calls a session may have waiting at once.
const MAX_HELD: usize = 4;

/// One client session with one server.
struct McpSession {
    /// Its key among the gateway's sessions: the `Mcp-Session-Id`, or for
    /// stateless requests one made of the server and the identity.
    key: String,
    /// It serves stateless requests (2026-07-28): never found by an
    /// `Mcp-Session-Id`, never ended by `DELETE`.
    stateless: bool,
    server: String,
    subject: String,
    issuer: String,
    agent: bool,
    version: String,
    record: recording::Session,
    last_used: Mutex<Instant>,
    masked: Mutex<Counts>,
    /// Held calls by request id, for `notifications/cancelled`.
    held: Mutex<HashMap<String, Arc<crate::approvals::HoldSlot>>>,
}

impl McpSession {
    fn end(&self, reason: &str) {
        // Held calls of an ended session are withdrawn, not run.
        let held: Vec<_> = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, slot)| slot)
            .collect();
        for slot in held {
            slot.cancel();
        }
        let counts = self.masked.lock().unwrap_or_else(|e| e.into_inner());
        self.record.ended(Some(reason), Some(&counts));
    }
}

/// The listener's routes.
pub fn router(ctx: Arc<McpContext>) -> Router {
    Router::new()
        .route(
            "/mcp/{server}",
            post(post_message).get(no_stream).delete(end_session),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp/{server}",
            get(resource_metadata),
        )
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                axum::Json(json!({
                    "error": "not_found",
                    "message": "no such endpoint: MCP servers are at /mcp/<name>",
                })),
            )
        })
        .with_state(ctx)
}

/// Serve the MCP listener until `shutdown` turns true; open sessions end then.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<crate::listener::tls::ServerTls>,
    ctx: Arc<McpContext>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let sweeping = ctx.clone();
    let mut stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(60)) => sweep_idle(&sweeping),
                _ = stop.wait_for(|s| *s) => break,
            }
        }
    });
    let ending = ctx.clone();
    let served = crate::listener::http::serve(listener, tls, router(ctx), shutdown).await;
    let open: Vec<_> = ending
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .collect();
    for (_, session) in open {
        session.end("the gateway stopped");
    }
    served
}

fn sweep_idle(ctx: &McpContext) {
    let idle: Vec<Arc<McpSession>> = {
        let mut sessions = ctx.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let ids: Vec<String> = sessions
            .iter()
            .filter(|(_, s)| {
                s.last_used
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .elapsed()
                    > IDLE
            })
            .map(|(id, _)| id.clone())
            .collect();
        ids.iter().filter_map(|id| sessions.remove(id)).collect()
    };
    for session in idle {
        session.end("idle for 30 minutes");
    }
}

/// RFC 9728 protected resource metadata for one server.
async fn resource_metadata(
    State(ctx): State<Arc<McpContext>>,
    Path(server): Path<String>,
) -> Response {
    let Some(upstream) = ctx.servers.get(&server) else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "error": "not_found" })),
        )
            .into_response();
    };
    let mut metadata = json!({
        "resource": format!("{}/mcp/{server}", ctx.resource),
        "authorization_servers": ctx.issuers,
        "bearer_methods_supported": ["header"],
        "resource_name": format!("Tollgate MCP gateway: {server}"),
    });
    if !upstream.scopes().is_empty() {
        metadata["scopes_supported"] = json!(upstream.scopes());
    }
    axum::Json(metadata).into_response()
}

/// The gateway offers no server-initiated stream (GET): Streamable HTTP lets it say 405.
async fn no_stream() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "POST, DELETE")],
        "this gateway sends no server-initiated messages: POST requests to this endpoint",
    )
        .into_response()
}

/// A JSON-RPC answer with an HTTP status.
fn answer(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// A request refused before it reached the stages, at the transport level.
fn refused(refusal: &Refusal) -> Response {
    let status =
        StatusCode::from_u16(refusal.reason.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    answer(status, jsonrpc::refusal(&Value::Null, refusal))
}

/// Who is calling, or the 401/503 that says what to do.
#[allow(clippy::result_large_err)]
async fn authenticate(
    ctx: &McpContext,
    server: &str,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Identity, Response> {
    let token = bearer(headers);
    let error = match ctx
        .auth
        .authenticate_for(token.unwrap_or(""), Some(&ctx.audience))
        .await
    {
        Ok(identity) => return Ok(identity),
        Err(e) => e,
    };
    let message = match &error {
        AuthError::MissingToken => {
            "no access token: send `Authorization: Bearer <access token>` minted for this MCP listener's audience"
                .to_string()
        }
        e => e.to_string(),
    };
    let event = Event::new("mcp.login", AuditOutcome::Failure)
        .with("actor", json!({ "subject": null }))
        .origin(peer.ip())
        .resource(json!({ "server": server }))
        .with("reason", for_record(&message));
    ctx.recording.auditor.record_later(event);
    let reason = error.reason();
    let refusal = Refusal::new(reason, format!("authentication failed: {message}"));
    let mut response = refused(&refusal);
    if reason == Reason::Unauthenticated || reason == Reason::Forbidden {
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        let mut challenge = format!("Bearer resource_metadata=\"{}\"", ctx.metadata_url(server));
        if token.is_some() {
            let description = message.replace(['"', '\\'], "'");
            challenge.push_str(&format!(
                ", error=\"invalid_token\", error_description=\"{description}\""
            ));
        }
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
    }
    Err(response)
}

/// The token carries every scope the server requires, or the 403
/// `insufficient_scope` challenge that tells the client which to ask its
/// authorization server for (MCP's step-up authorization).
#[allow(clippy::result_large_err)]
fn scoped(
    ctx: &McpContext,
    server: &Server,
    identity: &Identity,
    peer: SocketAddr,
) -> Result<(), Response> {
    let missing: Vec<&str> = server
        .scopes()
        .iter()
        .filter(|s| !identity.scopes.contains(s))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let message = format!(
        "the token lacks the scope{} {} that MCP server '{}' requires: ask the authorization server for a \
         token with scope \"{}\"",
        if missing.len() == 1 { "" } else { "s" },
        missing.join(", "),
        server.name(),
        server.scopes().join(" "),
    );
    let event = Event::new("mcp.login", AuditOutcome::Failure)
        .actor(identity)
        .origin(peer.ip())
        .resource(json!({ "server": server.name() }))
        .with("reason", for_record(&message));
    ctx.recording.auditor.record_later(event);
    let refusal = Refusal::new(Reason::Forbidden, message);
    let mut response = refused(&refusal);
    *response.status_mut() = StatusCode::FORBIDDEN;
    // Scopes are checked printable ASCII without quotes (config validation).
    let challenge = format!(
        "Bearer error=\"insufficient_scope\", scope=\"{}\", resource_metadata=\"{}\", \
         error_description=\"the token lacks a required scope\"",
        server.scopes().join(" "),
        ctx.metadata_url(server.name())
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    Err(response)
}

/// The name a request is about (`Mcp-Name` must match it).
fn subject_name<'a>(method: &str, params: &'a Value) -> Option<&'a str> {
    match method {
        "tools/call" | "prompts/get" => params.get("name").and_then(Value::as_str),
        "resources/read" => params.get("uri").and_then(Value::as_str),
        _ => None,
    }
}

/// `Mcp-Method` and `Mcp-Name`, when sent, must say what the body says: a
/// proxy or policy that routes on headers must see the request that runs.
fn headers_match(headers: &HeaderMap, method: &str, params: &Value) -> Result<(), Refusal> {
    let header_text = |name: &str| -> Result<Option<String>, Refusal> {
        match headers.get(name) {
            None => Ok(None),
            Some(v) => v.to_str().map(|s| Some(s.to_string())).map_err(|_| {
                Refusal::new(Reason::Malformed, format!("the {name} header is not text"))
            }),
        }
    };
    if let Some(said) = header_text("mcp-method")?
        && said != method
    {
        return Err(Refusal::new(
            Reason::Malformed,
            format!(
                "the Mcp-Method header says '{said}' but the body's method is '{method}': the request was not run"
            ),
        ));
    }
    if let Some(said) = header_text("mcp-name")? {
        let body = subject_name(method, params);
        if body != Some(said.as_str()) {
            return Err(Refusal::new(
                Reason::Malformed,
                format!(
                    "the Mcp-Name header says '{said}' but the body names '{}': the request was not run",
                    body.unwrap_or("nothing")
                ),
            ));
        }
    }
    // A request with a stateless envelope is told its version is not
    // spoken with -32022 and the versions that are (see `stateless`).
    let envelope = params.pointer("/_meta").and_then(|m| m.get(META_VERSION));
    if let Some(version) = header_text("mcp-protocol-version")?
        && envelope.is_none()
        && !VERSIONS.contains(&version.as_str())
        && !STATELESS_VERSIONS.contains(&version.as_str())
    {
        return Err(Refusal::new(
            Reason::Unsupported,
            format!(
                "protocol version {version} is not supported by this gateway; it speaks {}, {}",
                VERSIONS.join(", "),
                STATELESS_VERSIONS.join(", ")
            ),
        ));
    }
    Ok(())
}

async fn post_message(
    State(ctx): State<Arc<McpContext>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(server_name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let peer = peer.0;
    let Some(server) = ctx.servers.get(&server_name).cloned() else {
        return answer(
            StatusCode::NOT_FOUND,
            jsonrpc::error(
                &Value::Null,
                jsonrpc::INVALID_PARAMS,
                format!("no MCP server '{server_name}' behind this gateway"),
            ),
        );
    };
    if let Err(refusal) = origin_allowed(&ctx, &headers) {
        return refused(&refusal);
    }
    let identity = match authenticate(&ctx, &server_name, &headers, peer).await {
        Ok(identity) => identity,
        Err(response) => return response,
    };
    if let Err(response) = scoped(&ctx, &server, &identity, peer) {
        return response;
    }
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !json_type {
        return answer(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            jsonrpc::error(
                &Value::Null,
                jsonrpc::INVALID_REQUEST,
                "send the JSON-RPC message with Content-Type: application/json",
            ),
        );
    }
    let body = match read_body(body, ctx.max_body).await {
        Ok(body) => body,
        Err(refusal) => return refused(&refusal),
    };
    let message = match Message::parse(&body) {
        Ok(message) => message,
        Err(refusal) => return refused(&refusal),
    };
    let (method, params) = match &message {
        Message::Request { method, params, .. } | Message::Notification { method, params } => {
            (method.clone(), params.clone())
        }
    };
    if let Err(refusal) = headers_match(&headers, &method, &params) {
        return refused(&refusal);
    }
    let session_id = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if session_id.is_none() && is_stateless(&headers, &params) {
        return stateless(ctx, server, identity, peer, &headers, message).await;
    }
    match message {
        Message::Request { id, method, params } if method == "initialize" => {
            initialize(&ctx, &server, identity, peer, id, params).await
        }
        Message::Request { id, method, params } => {
            let session = match find_session(&ctx, &server_name, session_id, &identity) {
                Ok(session) => session,
                Err(response) => return response,
            };
            if let Some(version) = headers
                .get("mcp-protocol-version")
                .and_then(|v| v.to_str().ok())
                && version != session.version
            {
                return refused(&Refusal::new(
                    Reason::Malformed,
                    format!(
                        "MCP-Protocol-Version {version} differs from the version this session negotiated ({})",
                        session.version
                    ),
                ));
            }
            request(
                ctx, server, session, &identity, peer, &headers, id, method, params,
            )
            .await
        }
        Message::Notification { method, params } => {
            if let Ok(session) = find_session(&ctx, &server_name, session_id, &identity)
                && method == "notifications/cancelled"
                && let Some(id) = params.get("requestId")
            {
                let slot = session
                    .held
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&id.to_string())
                    .cloned();
                if let Some(slot) = slot {
                    slot.cancel();
                }
            }
            // Notifications are answered with 202 and go no further.
            StatusCode::ACCEPTED.into_response()
        }
    }
}

/// A browser's request from a page of another origin is refused (MCP's
/// transport rules: DNS rebinding must not reach a local listener). Allowed:
/// no Origin (not a browser), the listener's own resource origin, and
/// loopback pages.
fn origin_allowed(ctx: &McpContext, headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    let host = url::Url::parse(origin).ok().and_then(|u| {
        u.host_str()
            .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
    });
    let own = url::Url::parse(&ctx.resource).ok().and_then(|u| {
        u.host_str()
            .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
    });
    match host {
        Some(h)
            if h == "localhost" || h == "127.0.0.1" || h == "::1" || Some(&h) == own.as_ref() =>
        {
            Ok(())
        }
        _ => Err(Refusal::new(
            Reason::Forbidden,
            format!(
                "requests from pages of {origin} are refused: the Origin is not this gateway's"
            ),
        )),
    }
}

/// How much of an oversized body is read (and dropped) so the client gets
/// its 413 rather than a reset connection; a larger one is cut off.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

/// The request body, at most `max` bytes kept in memory.
async fn read_body(body: Body, max: usize) -> Result<Vec<u8>, Refusal> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Refusal::new(
                Reason::Malformed,
                format!("the request body could not be read: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        if seen <= max {
            kept.extend_from_slice(&data);
        } else if seen > DRAIN_LIMIT {
            break;
        }
    }
    if seen > max {
        return Err(Refusal::new(
            Reason::TooLarge,
            format!(
                "the request body is over {max} bytes, the most this gateway reads ([mcp] max_body_bytes)"
            ),
        ));
    }
    Ok(kept)
}

/// The session a request names, if it is the caller's.
// The error is the response a handler returns as it is.
#[allow(clippy::result_large_err)]
fn find_session(
    ctx: &McpContext,
    server: &str,
    id: Option<String>,
    identity: &Identity,
) -> Result<Arc<McpSession>, Response> {
    let Some(id) = id else {
        return Err(answer(
            StatusCode::BAD_REQUEST,
            jsonrpc::error(
                &Value::Null,
                jsonrpc::INVALID_REQUEST,
                "the Mcp-Session-Id header is missing: send initialize first",
            ),
        ));
    };
    let session = ctx
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id)
        .cloned();
    match session {
        // Someone else's session is not found, as a session that never was;
        // nor is the one kept for stateless requests.
        Some(s)
            if !s.stateless
                && s.server == server
                && s.subject == identity.subject
                && s.issuer == identity.issuer
                && s.agent == Principal::of(identity).agent =>
        {
            *s.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            Ok(s)
        }
        _ => Err(answer(
            StatusCode::NOT_FOUND,
            jsonrpc::error(
                &Value::Null,
                jsonrpc::INVALID_REQUEST,
                "session not found (it ended or expired): initialize a new one",
            ),
        )),
    }
}

async fn end_session(
    State(ctx): State<Arc<McpContext>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(server): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !ctx.servers.contains_key(&server) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let identity = match authenticate(&ctx, &server, &headers, peer.0).await {
        Ok(identity) => identity,
        Err(response) => return response,
    };
    let id = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let session = match find_session(&ctx, &server, id.clone(), &identity) {
        Ok(session) => session,
        Err(response) => return response,
    };
    if let Some(id) = id {
        ctx.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
    session.end("the client ended the session");
    StatusCode::NO_CONTENT.into_response()
}

async fn initialize(
    ctx: &McpContext,
    server: &Server,
    identity: Identity,
    peer: SocketAddr,
    id: Value,
    params: Value,
) -> Response {
    let asked = params
        .get("protocolVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // The client's version when the gateway speaks it, else the newest it does.
    let version = if VERSIONS.contains(&asked) {
        asked
    } else {
        VERSIONS[VERSIONS.len() - 1]
    };
    let upstream = match server.initialized(ctx.call_timeout).await {
        Ok(upstream) => upstream,
        Err(e) => {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                jsonrpc::refusal(
                    &id,
                    &Refusal::new(Reason::DependencyUnavailable, e.to_string()),
                ),
            );
        }
    };
    let capabilities = advertised(&upstream);
    let session_id = crate::id::session();
    let client_info = params.get("clientInfo").cloned().unwrap_or(Value::Null);
    let session = open_session(
        ctx,
        server,
        &identity,
        peer,
        (&session_id, &session_id),
        version,
        &client_info,
        &upstream,
    );
    ctx.sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(session_id.clone(), session);
    let mut result = json!({
        "protocolVersion": version,
        "capabilities": capabilities,
        "serverInfo": {
            "name": format!("tollgate/{}", server.name()),
            "version": env!("CARGO_PKG_VERSION"),
        },
    });
    if let Some(instructions) = upstream.get("instructions").and_then(Value::as_str) {
        result["instructions"] = Value::from(for_record(instructions));
    }
    let mut response = answer(StatusCode::OK, jsonrpc::result(&id, result));
    if let Ok(value) = HeaderValue::from_str(&session_id) {
        response.headers_mut().insert("mcp-session-id", value);
    }
    response
}

/// Every version the gateway speaks, with sessions and without.
fn supported_versions() -> Vec<&'static str> {
    VERSIONS.iter().chain(STATELESS_VERSIONS).copied().collect()
}

/// Whether a request without a session speaks a stateless version: its
/// `MCP-Protocol-Version` header or its envelope says one.
fn is_stateless(headers: &HeaderMap, params: &Value) -> bool {
    let header = headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok());
    let envelope = params.pointer("/_meta").and_then(|m| m.get(META_VERSION));
    header.is_some_and(|v| STATELESS_VERSIONS.contains(&v)) || envelope.is_some()
}

/// A request of a stateless version (2026-07-28): checked against its
/// envelope and headers, `server/discover` answered, everything else
/// decided, held, forwarded, masked and recorded as in a session: the
/// gateway keeps one per identity and server (its recording, its held
/// calls), ended when idle like any other.
async fn stateless(
    ctx: Arc<McpContext>,
    server: Arc<Server>,
    identity: Identity,
    peer: SocketAddr,
    headers: &HeaderMap,
    message: Message,
) -> Response {
    let (id, method, params) = match message {
        // No notification is defined from client to server on this wire.
        Message::Notification { .. } => return StatusCode::ACCEPTED.into_response(),
        Message::Request { id, method, params } => (id, method, params),
    };
    let fail = |status: StatusCode, code: i64, message: String, data: Option<Value>| {
        let mut body = jsonrpc::error(&id, code, message);
        if let Some(data) = data {
            body["error"]["data"] = data;
        }
        answer(status, body)
    };
    let meta = params.get("_meta").filter(|m| m.is_object());
    let version = meta.and_then(|m| m.get(META_VERSION));
    let capabilities = meta.and_then(|m| m.get(META_CAPABILITIES));
    let (Some(version), Some(_)) = (version, capabilities) else {
        return fail(
            StatusCode::BAD_REQUEST,
            jsonrpc::INVALID_PARAMS,
            format!(
                "a request without a session carries params._meta with \"{META_VERSION}\" and \"{META_CAPABILITIES}\" \
                 (protocol 2026-07-28), or starts a session with initialize"
            ),
            None,
        );
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("mcp-protocol-version") != version.as_str() {
        return fail(
            StatusCode::BAD_REQUEST,
            jsonrpc::HEADER_MISMATCH,
            "the MCP-Protocol-Version header does not match params._meta's protocol version: the request was not run".into(),
            None,
        );
    }
    // Stateless requests must carry the routing headers (headers_match has
    // checked that those present agree with the body).
    let name_missing = subject_name(&method, &params).is_some() && header("mcp-name").is_none();
    if header("mcp-method").is_none() || name_missing {
        return fail(
            StatusCode::BAD_REQUEST,
            jsonrpc::HEADER_MISMATCH,
            "a request without a session sends the Mcp-Method header (and Mcp-Name for a named call): the request was not run"
                .into(),
            None,
        );
    }
    let version = version.as_str().unwrap_or_default();
    if !STATELESS_VERSIONS.contains(&version) {
        return fail(
            StatusCode::BAD_REQUEST,
            jsonrpc::UNSUPPORTED_PROTOCOL_VERSION,
            format!("protocol version {version} is not spoken without a session by this gateway"),
            Some(json!({ "supported": supported_versions(), "requested": version })),
        );
    }
    let upstream = match server.initialized(ctx.call_timeout).await {
        Ok(upstream) => upstream,
        Err(e) => {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                jsonrpc::refusal(
                    &id,
                    &Refusal::new(Reason::DependencyUnavailable, e.to_string()),
                ),
            );
        }
    };
    if method == "server/discover" {
        let mut result = json!({
            "supportedVersions": supported_versions(),
            "capabilities": advertised(&upstream),
            "resultType": "complete",
            "ttlMs": 0,
            "cacheScope": "private",
            "_meta": { "io.modelcontextprotocol/serverInfo": {
                "name": format!("tollgate/{}", server.name()),
                "version": env!("CARGO_PKG_VERSION"),
            } },
        });
        if let Some(instructions) = upstream.get("instructions").and_then(Value::as_str) {
            result["instructions"] = Value::from(for_record(instructions));
        }
        return answer(StatusCode::OK, jsonrpc::result(&id, result));
    }
    if method == "initialize" || method == "ping" {
        return fail(
            StatusCode::NOT_FOUND,
            jsonrpc::METHOD_NOT_FOUND,
            format!("{method} is not part of protocol {version}"),
            None,
        );
    }
    // One session per identity and server; its key cannot be sent as an
    // Mcp-Session-Id (those are the gateway's random ids), and a session
    // is only ever found for its own identity.
    let agent = Principal::of(&identity).agent;
    // JSON: no two identities make the same key, whatever their names hold.
    let key = json!([
        "stateless",
        server.name(),
        agent,
        identity.issuer,
        identity.subject
    ])
    .to_string();
    // Found or opened under one lock: two first requests open one session.
    let session = {
        let mut sessions = ctx.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match sessions.get(&key).filter(|s| {
            s.stateless
                && s.server == server.name()
                && s.subject == identity.subject
                && s.issuer == identity.issuer
                && s.agent == agent
        }) {
            Some(session) => {
                *session.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                session.clone()
            }
            None => {
                let client_info = meta
                    .and_then(|m| m.get(META_CLIENT_INFO))
                    .cloned()
                    .unwrap_or(Value::Null);
                let session = open_session(
                    &ctx,
                    &server,
                    &identity,
                    peer,
                    (&key, &crate::id::session()),
                    version,
                    &client_info,
                    &upstream,
                );
                sessions.insert(key, session.clone());
                session
            }
        }
    };
    request(
        ctx, server, session, &identity, peer, headers, id, method, params,
    )
    .await
}

/// What the gateway advertises of a server: only what it passes, when the
/// server has it (no subscriptions, no change notifications).
fn advertised(upstream: &Value) -> Value {
    let mut capabilities = serde_json::Map::new();
    for kind in ["tools", "resources", "prompts"] {
        if upstream["capabilities"].get(kind).is_some() {
            capabilities.insert(kind.into(), json!({ "listChanged": false }));
        }
    }
    Value::Object(capabilities)
}

/// A session's state and its recording, started.
#[allow(clippy::too_many_arguments)]
fn open_session(
    ctx: &McpContext,
    server: &Server,
    identity: &Identity,
    peer: SocketAddr,
    (key, session_id): (&str, &str),
    version: &str,
    client_info: &Value,
    upstream: &Value,
) -> Arc<McpSession> {
    let record = recording::Session::new(
        session_id.to_string(),
        ctx.recording.clone(),
        identity,
        peer,
        server.name(),
        "mcp",
    );
    let mut extra = serde_json::Map::new();
    extra.insert("protocol_version".into(), Value::from(version));
    extra.insert(
        "client_info".into(),
        Value::from(for_record(&client_info.to_string())),
    );
    extra.insert(
        "server_info".into(),
        Value::from(for_record(&upstream["serverInfo"].to_string())),
    );
    record.started(extra, true);
    Arc::new(McpSession {
        key: key.to_string(),
        stateless: STATELESS_VERSIONS.contains(&version),
        server: server.name().to_string(),
        subject: identity.subject.clone(),
        issuer: identity.issuer.clone(),
        agent: Principal::of(identity).agent,
        version: version.to_string(),
        record,
        last_used: Mutex::new(Instant::now()),
        masked: Mutex::default(),
        held: Mutex::default(),
    })
}

/// A request in a session (or the stateless one), by `identity` from
/// `peer`: dispatched on its method.
#[allow(clippy::too_many_arguments)]
async fn request(
    ctx: Arc<McpContext>,
    server: Arc<Server>,
    session: Arc<McpSession>,
    identity: &Identity,
    peer: SocketAddr,
    headers: &HeaderMap,
    id: Value,
    method: String,
    params: Value,
) -> Response {
    // A held call can only wait in an event stream.
    let accepts_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let caller = Caller {
        principal: Principal::of(identity),
        client: peer,
    };
    match method.as_str() {
        "ping" => answer(StatusCode::OK, jsonrpc::result(&id, json!({}))),
        "tools/list" | "resources/list" | "resources/templates/list" | "prompts/list" => {
            list(&ctx, &server, &session, &caller, &id, &method).await
        }
        "tools/call" | "resources/read" | "prompts/get" => {
            let kind = match method.as_str() {
                "tools/call" => &TOOL_CALL,
                "resources/read" => &RESOURCE_READ,
                _ => &PROMPT_GET,
            };
            call(
                ctx,
                server,
                session,
                caller,
                id,
                params,
                accepts_stream,
                kind,
            )
            .await
        }
        other => answer(
            StatusCode::OK,
            jsonrpc::refusal(
                &id,
                &Refusal::new(
                    Reason::Unsupported,
                    format!(
                        "method '{other}' is not passed by this gateway: it passes tools (tools/list, tools/call), \
                         resources (resources/list, resources/templates/list, resources/read), prompts \
                         (prompts/list, prompts/get) and ping"
                    ),
                ),
            ),
        ),
    }
}

/// Every item a listing `method` of the upstream returns under `key`
/// (all its pages, at most 100).
async fn upstream_list(
    ctx: &McpContext,
    server: &Server,
    method: &str,
    key: &str,
) -> Result<Vec<Value>, Refusal> {
    let mut items = Vec::new();
    let mut cursor: Option<Value> = None;
    for _ in 0..100 {
        let params = match &cursor {
            Some(c) => json!({ "cursor": c }),
            None => json!({}),
        };
        let response = server
            .request(method, params, ctx.call_timeout)
            .await
            .map_err(|e| Refusal::new(Reason::DependencyUnavailable, e.to_string()))?;
        let Some(result) = response.get("result") else {
            return Err(Refusal::new(
                Reason::DependencyUnavailable,
                format!(
                    "MCP server '{}' could not answer {method}: {}",
                    server.name(),
                    for_record(&response["error"].to_string())
                ),
            ));
        };
        items.extend(
            result
                .get(key)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        );
        cursor = result.get("nextCursor").filter(|c| !c.is_null()).cloned();
        if cursor.is_none() {
            break;
        }
    }
    Ok(items)
}

/// Every tool the upstream lists, and the cache for calls.
async fn upstream_tools(ctx: &McpContext, server: &Server) -> Result<Vec<Value>, Refusal> {
    let tools = upstream_list(ctx, server, "tools/list", "tools").await?;
    let by_name = tools
        .iter()
        .filter_map(|t| Some((t.get("name")?.as_str()?.to_string(), t.clone())))
        .collect();
    ctx.tools
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(server.name().to_string(), (Instant::now(), by_name));
    Ok(tools)
}

/// The tool's annotations as the policy sees them (MCP's defaults: not
/// read-only, and then destructive).
fn hints(tool: &Value) -> (bool, bool) {
    let annotations = &tool["annotations"];
    let read_only = annotations["readOnlyHint"].as_bool().unwrap_or(false);
    let destructive = !read_only && annotations["destructiveHint"].as_bool().unwrap_or(true);
    (read_only, destructive)
}

/// What Cedar decides on `kind`'s action on the item a listing names
/// (`item`: a tool, resource, template or prompt), with `arguments` (the
/// recorded, masked text; "" for listings) in the context.
fn decide(
    ctx: &McpContext,
    caller: &Caller,
    server: &str,
    kind: &Kind,
    item: &Value,
    arguments: &str,
    args: &[String],
) -> Outcome {
    let Some(policy) = &ctx.policy else {
        return Outcome::Allow;
    };
    decide_as(
        policy,
        caller,
        server,
        kind,
        kind.action,
        item,
        arguments,
        args,
    )
}

/// Whether the caller's policies let it see the card numbers in the
/// results of `item` unmasked (`reveal_results`; never without policies).
fn reveals(ctx: &McpContext, caller: &Caller, server: &str, kind: &Kind, item: &Value) -> bool {
    let Some(policy) = &ctx.policy else {
        return false;
    };
    decide_as(
        policy,
        caller,
        server,
        kind,
        "reveal_results",
        item,
        "",
        &[],
    ) == Outcome::Allow
}

/// [`decide`] on `action`.
#[allow(clippy::too_many_arguments)]
fn decide_as(
    policy: &PolicyHandle,
    caller: &Caller,
    server: &str,
    kind: &Kind,
    action: &str,
    item: &Value,
    arguments: &str,
    args: &[String],
) -> Outcome {
    let name = |key: &str| item[key].as_str().unwrap_or_default();
    let resource = match kind.action {
        "call_tool" => {
            let (read_only, destructive) = hints(item);
            Resource::Tool {
                server,
                name: name("name"),
                read_only,
                destructive,
            }
        }
        "read_resource" => Resource::McpResource {
            server,
            uri: item["uri"]
                .as_str()
                .or_else(|| item["uriTemplate"].as_str())
                .unwrap_or_default(),
        },
        _ => Resource::Prompt {
            server,
            name: name("name"),
        },
    };
    let context = RequestContext {
        connection: server,
        command: kind.method,
        row_estimate: 0,
        has_where: false,
        has_limit: false,
        cardholder_data: false,
        rows_returned: 0,
        arguments,
        args,
        client: caller.client.ip(),
        time: std::time::SystemTime::now(),
    };
    policy
        .current()
        .decide(&caller.principal, action, &resource, &context)
}

/// A listing (`tools/list`, `resources/list`, `resources/templates/list`,
/// `prompts/list`): every page of the upstream's, without what the
/// caller's policies deny (and tools whose definition changed since it was
/// pinned), masked, in one page.
async fn list(
    ctx: &McpContext,
    server: &Server,
    session: &McpSession,
    caller: &Caller,
    id: &Value,
    method: &str,
) -> Response {
    let (key, name, kind) = match method {
        "tools/list" => ("tools", "name", &TOOL_CALL),
        "resources/list" => ("resources", "uri", &RESOURCE_READ),
        "resources/templates/list" => ("resourceTemplates", "uriTemplate", &RESOURCE_READ),
        _ => ("prompts", "name", &PROMPT_GET),
    };
    let items = if kind.action == "call_tool" {
        upstream_tools(ctx, server).await.map(|tools| {
            // A changed definition is hidden until an approver accepts it.
            let checks = ctx.pins.check_all(server.name(), &tools);
            tools
                .into_iter()
                .zip(checks)
                .filter(|(_, check)| *check == pins::Check::Pinned)
                .map(|(tool, _)| tool)
                .collect::<Vec<_>>()
        })
    } else {
        upstream_list(ctx, server, method, key).await
    };
    let (items, total) = match items {
        Ok(items) => {
            let total = items.len();
            (items, total)
        }
        Err(refusal) => return answer(StatusCode::OK, jsonrpc::refusal(id, &refusal)),
    };
    let visible: Vec<Value> = items
        .into_iter()
        .filter(|item| {
            !matches!(
                decide(ctx, caller, server.name(), kind, item, "", &[]),
                Outcome::Deny(_)
            )
        })
        .collect();
    let mut message = jsonrpc::result(id, json!({ key: visible }));
    // Descriptions and names are the server's text: masked like results.
    let masked = {
        let mut counts = session.masked.lock().unwrap_or_else(|e| e.into_inner());
        let before = counts.total();
        if let Err(refusal) = mask_message(&mut message, method, &mut counts, Keep::LastFour) {
            return answer(StatusCode::OK, jsonrpc::refusal(id, &refusal));
        }
        counts.total() - before
    };
    let shown = message["result"][key]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<Vec<Value>> = shown
        .iter()
        .map(|item| {
            vec![Value::from(truncate(
                item[name].as_str().unwrap_or_default(),
                300,
            ))]
        })
        .collect();
    session.record.frame(
        "statement",
        json!({ "text": method, "method": method, "decision": "allowed", "approval": null }),
    );
    session.record.frame(
        "result",
        json!({
            "tag": method,
            "columns": [if key == "resourceTemplates" { "uri_template" } else { kind.field }],
            "rows": shown.len(),
            "hidden": total - shown.len(),
            "preview": names,
            "preview_complete": true,
            "masked": masked,
        }),
    );
    shape(session, method, &mut message);
    answer(StatusCode::OK, message)
}

/// A result as a stateless version's schema has it: `resultType`, and for
/// the results a client may cache (listings, reads, discovery) `ttlMs` 0
/// and `cacheScope` "private": what the gateway answers is decided per
/// identity and at the time of the request, never for a shared cache.
fn shape(session: &McpSession, method: &str, message: &mut Value) {
    if !session.stateless {
        return;
    }
    let Some(result) = message.get_mut("result").and_then(Value::as_object_mut) else {
        return;
    };
    result.insert("resultType".into(), Value::from("complete"));
    let cacheable = matches!(
        method,
        "tools/list"
            | "resources/list"
            | "resources/templates/list"
            | "prompts/list"
            | "resources/read"
    );
    if cacheable {
        result.insert("ttlMs".into(), Value::from(0));
        result.insert("cacheScope".into(), Value::from("private"));
    }
}

/// Keys whose values are credentials wherever they appear in arguments.
const SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "authorization",
    "credential",
    "credentials",
    "private_key",
    "privatekey",
    "access_key",
    "client_secret",
    "dsn",
];

fn redact_secrets(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                let key = key.to_ascii_lowercase().replace('-', "_");
                if SECRET_KEYS
                    .iter()
                    .any(|k| key == *k || key.ends_with(&format!("_{k}")))
                {
                    *value = Value::from("[redacted]");
                } else {
                    redact_secrets(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_secrets),
        _ => {}
    }
}

/// The top-level arguments as `name=<value as canonical JSON>`, what
/// `context.args` holds: a policy matches one argument's whole value
/// (`context.args.contains("format=\"csv\"")`), and a key nested deeper
/// cannot pass for it. Built from the arguments as sent; an argument
/// whose value masking would change (a card number, card security data, a
/// credential) is left out, so that no secret reaches the policy and no
/// masked value passes for another; so is a name holding `=` (it would make
/// the pairs ambiguous).
fn argument_pairs(arguments: &Value) -> Vec<String> {
    let Value::Object(map) = arguments else {
        return Vec::new();
    };
    map.iter()
        .filter(|(name, _)| !name.contains('='))
        .filter_map(|(name, value)| {
            let one = json!({ name: value });
            let raw = String::from_utf8_lossy(&crate::audit::log::canonical(&one)).into_owned();
            (masked_arguments(&one) == raw).then(|| {
                format!(
                    "{name}={}",
                    String::from_utf8_lossy(&crate::audit::log::canonical(value))
                )
            })
        })
        .collect()
}

/// The masked text of a call's arguments, as records and approvers see
/// it, whole: PANs cut to their last four, card security data and
/// credentials (by key) removed.
fn masked_arguments(arguments: &Value) -> String {
    let mut arguments = arguments.clone();
    redact_secrets(&mut arguments);
    let mut bytes = crate::audit::log::canonical(&arguments);
    mask_json(&mut bytes, Keep::LastFour);
    for_record(&String::from_utf8_lossy(&bytes))
}

fn truncate(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

/// Mask a tool result for the client: text content (JSON inside text as
/// JSON), embedded resources, structured content, then the whole message
/// (labelled card security data in any key, PANs anywhere). Counts what it
/// masked under `place`.
fn mask_message(
    message: &mut Value,
    place: &str,
    counts: &mut Counts,
    keep: Keep,
) -> Result<(), Refusal> {
    let mut count = |hits: Vec<Detector>| {
        for hit in hits {
            counts.add(place, hit, 1);
        }
    };
    let not_a_string = |field: &str| {
        Refusal::new(
            Reason::Unsupported,
            format!(
                "a content block's {field} is not a string, so it could not be checked for card data and was not passed on"
            ),
        )
    };
    let mask_text_value = |text: &mut Value, count: &mut dyn FnMut(Vec<Detector>)| {
        let Some(s) = text.as_str() else {
            return Err(not_a_string("text"));
        };
        let (bytes, hits) = mask_bytes(s.as_bytes(), keep);
        if !hits.is_empty() {
            *text = Value::from(String::from_utf8_lossy(&bytes).into_owned());
        }
        count(hits);
        Ok(())
    };
    // A blob's bytes are masked like text (JSON as JSON); a compressed or
    // encrypted blob is beyond what the gateway can read (docs/mcp.md).
    let mask_blob = |blob: &mut Value, count: &mut dyn FnMut(Vec<Detector>)| {
        use base64::Engine;
        let Some(s) = blob.as_str() else {
            return Err(not_a_string("blob"));
        };
        let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let engine = base64::engine::general_purpose::STANDARD;
        let raw = engine.decode(&compact).map_err(|_| {
            Refusal::new(
                Reason::Unsupported,
                "a blob in the result is not base64, so it could not be checked for card data and was not passed on",
            )
        })?;
        let (bytes, hits) = mask_bytes(&raw, keep);
        if !hits.is_empty() {
            *blob = Value::from(engine.encode(&bytes));
        }
        count(hits);
        Ok(())
    };
    for block in content_blocks(message) {
        for at in ["/text", "/resource/text"] {
            if let Some(text) = block.pointer_mut(at) {
                mask_text_value(text, &mut count)?;
            }
        }
        for at in ["/blob", "/resource/blob"] {
            if let Some(blob) = block.pointer_mut(at) {
                mask_blob(blob, &mut count)?;
            }
        }
    }
    if let Some(text) = message.pointer_mut("/error/message") {
        mask_text_value(text, &mut count)?;
    }
    let mut bytes = serde_json::to_vec(message).unwrap_or_default();
    let hits = mask_json(&mut bytes, keep);
    if !hits.is_empty() {
        // Never the unmasked message if the masked one does not parse.
        *message = serde_json::from_slice(&bytes).map_err(|_| {
            Refusal::new(
                Reason::Unsupported,
                "the tool's result could not be masked, so it was not passed on",
            )
        })?;
    }
    count(hits);
    Ok(())
}

/// Whether a resource URI is in the form a URL parser leaves it in, so
/// the URI a policy decides on is the one the server reads (both official
/// SDKs parse it: an upper-case scheme or host, or a `..` segment, would
/// otherwise name another resource than the policy saw).
fn normal_uri(uri: &str) -> Result<(), &'static str> {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Err("it has no scheme");
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if !scheme_ok {
        return Err("its scheme is not lower-case");
    }
    if uri
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        return Err("it has whitespace, a control character or a backslash");
    }
    let path = rest.split(['?', '#']).next().unwrap_or_default();
    if let Some(after) = path.strip_prefix("//") {
        let host = after.split('/').next().unwrap_or_default();
        if host.chars().any(|c| c.is_ascii_uppercase()) || host.contains('%') {
            return Err("its host is not lower-case");
        }
    }
    let dotted = path.split('/').any(|segment| {
        let segment = segment.to_ascii_lowercase().replace("%2e", ".");
        segment == "." || segment == ".."
    });
    if dotted {
        return Err("it has a . or .. path segment");
    }
    Ok(())
}

/// A resource URI as records, approvals and audit show it: a user name
/// or password in it removed, every query value and the fragment replaced
/// (the gateway cannot tell a signature or token there from a harmless
/// value), percent-escapes decoded so that an escaped card number is seen,
/// and card numbers masked. The URI itself is identified by a keyed
/// digest where it must be told apart (`Call::what`).
fn uri_for_record(uri: &str) -> String {
    let (rest, fragment) = match uri.split_once('#') {
        Some((rest, _)) => (rest, "#***"),
        None => (uri, ""),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => {
            let keys: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, value)) if !value.is_empty() => format!("{}=***", decoded(key)),
                    Some((key, _)) => format!("{}=", decoded(key)),
                    // A bare part may be a token itself (`?<JWT>`).
                    None if pair.is_empty() => String::new(),
                    None => "***".into(),
                })
                .collect();
            (rest, format!("?{}", keys.join("&")))
        }
        None => (rest, String::new()),
    };
    let rest = match rest.split_once("://") {
        Some((scheme, after)) => {
            let authority_end = after.find('/').unwrap_or(after.len());
            match after[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://***@{}", &after[at + 1..]),
                None => rest.to_string(),
            }
        }
        None => rest.to_string(),
    };
    for_record(&format!("{}{query}{fragment}", decoded(&rest)))
}

/// A keyed digest of the exact name: it tells apart two names that record
/// the same, and shows neither.
fn name_digest(
    key: &crate::recording::digest::DigestKey,
    kind: &Kind,
    server: &str,
    name: &str,
) -> String {
    use base64::Engine;
    use hmac::Mac;
    let mut mac = key.start();
    for part in [kind.verb, server, name] {
        mac.update(part.as_bytes());
        mac.update(&[0]);
    }
    let digest = mac.finalize().into_bytes();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..18])
}

/// Percent-escapes decoded (lossily, to UTF-8), but for characters that
/// would change how the text looks where it is shown (control and format
/// characters: line breaks, terminal escapes, bidirectional overrides),
/// which stay escaped.
fn decoded(text: &str) -> String {
    let plain = decoded_all(text);
    let mut out = String::with_capacity(plain.len());
    for c in plain.chars() {
        let invisible = c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}');
        if invisible {
            let mut bytes = [0; 4];
            for b in c.encode_utf8(&mut bytes).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn decoded_all(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Bytes masked for a client: JSON (an object or array) as the JSON it
/// decodes to (an escape such as \u0034 cannot hide a digit, labelled card
/// security data goes by key), other bytes as text; then card numbers with
/// a digit added on each side.
fn mask_bytes(raw: &[u8], keep: Keep) -> (Vec<u8>, Vec<Detector>) {
    let (mut bytes, json) = match serde_json::from_slice::<Value>(raw) {
        Ok(v) if v.is_object() || v.is_array() => {
            (serde_json::to_vec(&v).unwrap_or_default(), true)
        }
        _ => (raw.to_vec(), false),
    };
    let mut hits = if json {
        mask_json(&mut bytes, keep)
    } else {
        mask_text(&mut bytes, keep, Fill::Star)
    };
    if keep != Keep::Full {
        let embedded = mask_embedded(&mut bytes, Fill::Star);
        hits.extend(std::iter::repeat_n(Detector::Pan, embedded));
    }
    (bytes, hits)
}

/// The content blocks of a result: a tool's `content`, a resource read's
/// `contents`, each of a prompt's `messages`.
fn content_blocks(message: &mut Value) -> Vec<&mut Value> {
    let Some(result) = message.get_mut("result").and_then(Value::as_object_mut) else {
        return Vec::new();
    };
    let mut blocks = Vec::new();
    for (key, value) in result.iter_mut() {
        match (key.as_str(), value) {
            ("content" | "contents", Value::Array(items)) => blocks.extend(items.iter_mut()),
            ("messages", Value::Array(messages)) => blocks.extend(
                messages
                    .iter_mut()
                    .filter_map(|m| m.get_mut("content"))
                    .flat_map(|c| match c {
                        // One block (2025-06-18), or several.
                        Value::Array(items) => items.iter_mut().collect::<Vec<_>>(),
                        block => vec![block],
                    }),
            ),
            _ => {}
        }
    }
    blocks
}

/// What a call's `result` frame previews: each content block's (masked)
/// text, or its kind.
fn preview(message: &Value) -> Vec<Vec<Value>> {
    let mut message = message.clone();
    content_blocks(&mut message)
        .into_iter()
        .map(|block| {
            let text = match (block["text"].as_str(), block["type"].as_str()) {
                (Some(text), _) => text.to_string(),
                (None, Some(kind)) => format!("<{kind}>"),
                (None, None) if block.get("blob").is_some() => format!(
                    "<blob {}>",
                    block["mimeType"]
                        .as_str()
                        .unwrap_or("application/octet-stream")
                ),
                (None, None) => "<content>".into(),
            };
            vec![Value::from(truncate(&for_record(&text), PREVIEW_CHARS))]
        })
        .collect()
}

/// What a request that names one thing of a server does, as the stages
/// see it.
#[derive(Debug, PartialEq, Eq)]
struct Kind {
    /// The JSON-RPC method.
    method: &'static str,
    /// The Cedar action.
    action: &'static str,
    /// The audit event.
    event: &'static str,
    /// The field that names the thing, in records and audit resources.
    field: &'static str,
    /// `params` field that names the thing.
    param: &'static str,
    /// The access's verb (`call server/tool`).
    verb: &'static str,
    /// What a refusal calls it.
    noun: &'static str,
}

const TOOL_CALL: Kind = Kind {
    method: "tools/call",
    action: "call_tool",
    event: "tool.call",
    field: "tool",
    param: "name",
    verb: "call",
    noun: "tool call",
};

const RESOURCE_READ: Kind = Kind {
    method: "resources/read",
    action: "read_resource",
    event: "resource.read",
    field: "uri",
    param: "uri",
    verb: "read",
    noun: "resource read",
};

const PROMPT_GET: Kind = Kind {
    method: "prompts/get",
    action: "get_prompt",
    event: "prompt.get",
    field: "prompt",
    param: "name",
    verb: "get",
    noun: "prompt",
};

/// One tool call, resource read or prompt on its way through the stages.
struct Call {
    kind: &'static Kind,
    id: Value,
    name: String,
    params: Value,
    arguments: Value,
    /// `tools/call <name> <masked arguments>`: the recorded text.
    text: String,
    /// The masked arguments (as canonical JSON text), as records and policies see them.
    recorded: String,
    /// The top-level arguments policies match exactly (`context.args`).
    args: Vec<String>,
    /// `call <server>/<name>` (`read`, `get`): the access, as approvals,
    /// grants and audit records see it. Where the recorded name is not the
    /// name itself (masked, redacted) it ends in ` #<keyed digest of the
    /// name>`, so a grant for one never covers another that records the
    /// same, nor a name that is literally the recorded text.
    what: String,
    /// The name as records show it.
    shown: String,
    /// The caller's policies let it see the result's card numbers
    /// (`reveal_results`): the client gets them; records never do.
    reveal: bool,
    description: String,
    progress: Option<Value>,
    caller: Caller,
}

/// The longest recorded call text (the masked arguments) that is held
/// for approval: an approver sees the whole of what would run.
const MAX_SHOWN: usize = 1500;

impl Call {
    fn need<'a>(
        &'a self,
        session: &McpSession,
        rule: &'a Rule,
        approvals: u32,
        key: &'a str,
    ) -> Need<'a> {
        Need {
            key,
            what: &self.what,
            noun: self.kind.noun,
            policy: &rule.id,
            policy_reason: &rule.reason,
            scope: Scope {
                subject: session.subject.clone(),
                issuer: session.issuer.clone(),
                connection: session.server.clone(),
                accesses: vec![self.what.clone()],
                approvals,
            },
        }
    }

    fn ask(&self, session: &McpSession, rule: &Rule, approvals: u32, scope: Scope) -> Ask {
        Ask {
            requester: Requester::from(&self.caller.principal),
            origin: self.caller.client.ip().to_string(),
            session: Some(session.record.id().to_string()),
            scope,
            // The arguments whole; the description as room allows.
            statement: format!(
                "{}  -- {}",
                self.text,
                truncate(&for_record(&self.description), 300)
            ),
            actions: vec![self.kind.action.into()],
            resources: vec![self.what.clone()],
            cardholder_resources: Vec::new(),
            cardholder: false,
            row_estimate: None,
            policy: rule.id.clone(),
            policy_reason: rule.reason.clone(),
            approvals_needed: approvals,
            reason: self
                .params
                .pointer("/_meta/reason")
                .and_then(Value::as_str)
                .map(|r| truncate(&for_record(r), 500)),
        }
    }
}

/// A tool call, resource read or prompt (`kind`): decided by Cedar,
/// refused, held for approval or forwarded; its result masked.
#[allow(clippy::too_many_arguments)]
async fn call(
    ctx: Arc<McpContext>,
    server: Arc<Server>,
    session: Arc<McpSession>,
    caller: Caller,
    id: Value,
    params: Value,
    accepts_stream: bool,
    kind: &'static Kind,
) -> Response {
    let Some(name) = params
        .get(kind.param)
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return answer(
            StatusCode::OK,
            jsonrpc::error(
                &id,
                jsonrpc::INVALID_PARAMS,
                format!("{} needs params.{}", kind.method, kind.param),
            ),
        );
    };
    if kind == &RESOURCE_READ
        && let Err(why) = normal_uri(&name)
    {
        return answer(
            StatusCode::OK,
            jsonrpc::error(
                &id,
                jsonrpc::INVALID_PARAMS,
                format!(
                    "resources/read refused: the uri is not in its normal form ({why}), which policies decide on; \
                     send it as the server lists it"
                ),
            ),
        );
    }
    let arguments = params.get("arguments").cloned().unwrap_or(json!({}));
    if !arguments.is_object() {
        return answer(
            StatusCode::OK,
            jsonrpc::error(
                &id,
                jsonrpc::INVALID_PARAMS,
                format!(
                    "{} refused: params.arguments must be an object",
                    kind.method
                ),
            ),
        );
    }
    let tool = if kind == &TOOL_CALL {
        // A server that said its tools changed, or whose listing is older
        // than TOOLS_FRESH, is listed again first: the call is decided on
        // the definition the server gives now, checked against its pin.
        let known = if server.take_tools_changed() {
            None
        } else {
            ctx.tools
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(server.name())
                .filter(|(listed, _)| listed.elapsed() < TOOLS_FRESH)
                .and_then(|(_, tools)| tools.get(&name).cloned())
        };
        match known {
            Some(tool) => Some(tool),
            None => match upstream_tools(&ctx, &server).await {
                Ok(tools) => tools.into_iter().find(|t| t["name"] == name.as_str()),
                Err(refusal) => return answer(StatusCode::OK, jsonrpc::refusal(&id, &refusal)),
            },
        }
    } else {
        // A resource or prompt is decided on the name the client asks for.
        Some(json!({ kind.param: name }))
    };
    let recorded = masked_arguments(&arguments);
    let shown = if kind == &RESOURCE_READ {
        uri_for_record(&name)
    } else {
        for_record(&name)
    };
    let what = if shown == name {
        format!("{} {}/{shown}", kind.verb, server.name())
    } else {
        let digest = name_digest(&ctx.recording.digest_key, kind, server.name(), &name);
        format!("{} {}/{shown} #{digest}", kind.verb, server.name())
    };
    let mut call = Call {
        kind,
        text: if kind == &RESOURCE_READ {
            format!("{} {shown}", kind.method)
        } else {
            format!("{} {shown} {recorded}", kind.method)
        },
        what,
        shown,
        reveal: false,
        args: argument_pairs(&arguments),
        description: tool
            .as_ref()
            .and_then(|t| t["description"].as_str())
            .unwrap_or_default()
            .to_string(),
        progress: params.pointer("/_meta/progressToken").cloned(),
        recorded,
        caller,
        id,
        name,
        params,
        arguments,
    };
    let mut ruling = Ruling {
        actions: vec![kind.action.into()],
        resources: vec![call.what.clone()],
        ..Ruling::default()
    };
    let Some(tool) = tool else {
        let refusal = Refusal::new(
            Reason::NotFound,
            format!(
                "unknown tool '{}': it is not among {}'s tools",
                call.shown,
                server.name()
            ),
        );
        return respond(&ctx, &server, &session, &call, &ruling, Err(refusal)).await;
    };
    call.reveal = reveals(&ctx, &call.caller, server.name(), kind, &tool);
    if kind == &TOOL_CALL
        && let pins::Check::Changed { pinned, seen } = ctx.pins.check(server.name(), &tool)
    {
        ruling.policy = Some("mcp-tool-pinning".into());
        let refusal = Refusal::new(
            Reason::Forbidden,
            format!(
                "tool call {} refused: the tool's definition changed since it was pinned ({pinned} is now {seen}); \
                 its calls are refused until an approver accepts the new definition (policy \"mcp-tool-pinning\")",
                call.shown
            ),
        );
        return respond(&ctx, &server, &session, &call, &ruling, Err(refusal)).await;
    }
    let (rule, approvals) = match decide(
        &ctx,
        &call.caller,
        server.name(),
        kind,
        &tool,
        &call.recorded,
        &call.args,
    ) {
        Outcome::Allow => {
            return respond(&ctx, &server, &session, &call, &ruling, Ok(())).await;
        }
        Outcome::Deny(rule) => {
            ruling.policy = Some(rule.id.clone());
            let refusal = denied(&call, &rule);
            return respond(&ctx, &server, &session, &call, &ruling, Err(refusal)).await;
        }
        Outcome::NeedsApproval { rules, approvals } => (rules[0].clone(), approvals),
    };
    ruling.policy = Some(rule.id.clone());
    let limit = if call.text.len() > MAX_SHOWN {
        Some(format!(
            "{} needs approval (policy \"{}\"), but its arguments are too long to show an approver in full \
             ({} bytes recorded, at most {MAX_SHOWN}): the call was not held; send smaller arguments",
            call.what,
            rule.id,
            call.text.len()
        ))
    } else if session.held.lock().unwrap_or_else(|e| e.into_inner()).len() >= MAX_HELD {
        Some(format!(
            "{} needs approval, but this session already has {MAX_HELD} calls waiting for approvers: \
             wait for them, or cancel one",
            call.what
        ))
    } else {
        None
    };
    if let Some(message) = limit {
        let refusal = Refusal::new(Reason::TooLarge, message);
        return respond(&ctx, &server, &session, &call, &ruling, Err(refusal)).await;
    }
    let key = format!("{} {} {}", kind.method, call.name, call.arguments);
    if !accepts_stream {
        // A window grant lets it through; otherwise it cannot wait, and no
        // request is made (approvers are not asked about a call that cannot run).
        let scope = call.need(&session, &rule, approvals, &key).scope;
        if let Some(grant) = ctx.approvals.as_ref().and_then(|a| a.use_grant(&scope)) {
            ruling.approval = Some(grant.request.clone());
            ruling.grant = Some(grant.id.clone());
            ruling.approval_state = Some("granted".into());
            ruling.decided_by = grant.approved_by.clone();
            return respond(&ctx, &server, &session, &call, &ruling, Ok(())).await;
        }
        let refusal = Refusal::new(
            Reason::Withdrawn,
            format!(
                "{} needs approval (policy \"{}\"), but this client does not accept text/event-stream responses, \
                 so the call cannot wait for an approver and was not held. Send \
                 Accept: application/json, text/event-stream",
                call.what, rule.id
            ),
        );
        return respond(&ctx, &server, &session, &call, &ruling, Err(refusal)).await;
    }
    let mut hold = Hold::new(ctx.approvals.clone());
    let first = hold.ask(
        call.need(&session, &rule, approvals, &key),
        Some(&mut ruling),
        |scope| call.ask(&session, &rule, approvals, scope),
    );
    let (notice, until) = match first {
        HoldOutcome::Forward => {
            return respond(&ctx, &server, &session, &call, &ruling, Ok(())).await;
        }
        HoldOutcome::Refused(refusal) => {
            return respond(&ctx, &server, &session, &call, &ruling, Err(refusal)).await;
        }
        HoldOutcome::Wait(until) => (None, until),
        HoldOutcome::Hold { notice, until } => (Some(notice), until),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(16);
    // A session's held calls by request id (`notifications/cancelled` names
    // it); the stateless one serves many clients, whose ids may be the same
    // and who withdraw a call by going away: each gets its own key.
    let held_key = if session.stateless {
        crate::id::random::<12>("request-")
    } else {
        call.id.to_string()
    };
    let taken = {
        let mut held = session.held.lock().unwrap_or_else(|e| e.into_inner());
        let taken = held.contains_key(&held_key);
        if !taken {
            held.insert(held_key.clone(), hold.slot());
        }
        taken
    };
    if taken {
        drop(until);
        drop(hold);
        let refusal = Refusal::new(
            Reason::Malformed,
            format!(
                "a call with request id {} is already waiting: use a new id",
                call.id
            ),
        );
        return respond(&ctx, &server, &session, &call, &ruling, Err(refusal)).await;
    }
    tokio::spawn(async move {
        let mut progress = 0u64;
        let progress_event = |progress: u64, message: &str| -> Option<SseEvent> {
            let token = call.progress.as_ref()?;
            let note = json!({
                "jsonrpc": "2.0",
                "method": "notifications/progress",
                "params": { "progressToken": token, "progress": progress, "message": message },
            });
            Some(SseEvent::default().data(note.to_string()))
        };
        if let Some(notice) = notice
            && let Some(event) = progress_event(progress, &notice)
        {
            let _ = tx.send(Ok(event)).await;
        }
        let mut until = until;
        let answer = loop {
            tokio::select! {
                () = &mut until => {}
                // The client went away: the hold is dropped, its request withdrawn.
                () = tx.closed() => break None,
                () = tokio::time::sleep(Duration::from_secs(10)) => {
                    progress += 1;
                    if let Some(event) = progress_event(progress, "waiting for an approver") {
                        let _ = tx.send(Ok(event)).await;
                    }
                    continue;
                }
            }
            match hold.ask(
                call.need(&session, &rule, approvals, &key),
                Some(&mut ruling),
                |scope| call.ask(&session, &rule, approvals, scope),
            ) {
                HoldOutcome::Forward => {
                    // Decided again now: the session is still open, the
                    // definition still the pinned one, the policy (which
                    // may have been reloaded) still lets it through.
                    let open = ctx
                        .sessions
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&session.key)
                        .is_some_and(|s| Arc::ptr_eq(s, &session));
                    let recheck = if !open {
                        Err(Refusal::new(
                            Reason::Withdrawn,
                            "the session ended while the call waited for approval",
                        ))
                    } else if kind == &TOOL_CALL
                        && ctx.pins.check(server.name(), &tool) != pins::Check::Pinned
                    {
                        Err(Refusal::new(
                            Reason::Forbidden,
                            "the tool's definition changed while the call waited for approval (policy \"mcp-tool-pinning\")",
                        ))
                    } else if let Outcome::Deny(rule) = decide(
                        &ctx,
                        &call.caller,
                        server.name(),
                        kind,
                        &tool,
                        &call.recorded,
                        &call.args,
                    ) {
                        Err(denied(&call, &rule))
                    } else {
                        Ok(())
                    };
                    // Whether the result's card numbers are shown is decided
                    // again too, on the policy in force now.
                    call.reveal = reveals(&ctx, &call.caller, server.name(), kind, &tool);
                    break Some(conclude(&ctx, &server, &session, &call, &ruling, recheck).await);
                }
                HoldOutcome::Refused(refusal) => {
                    break Some(
                        conclude(&ctx, &server, &session, &call, &ruling, Err(refusal)).await,
                    );
                }
                HoldOutcome::Wait(next) | HoldOutcome::Hold { until: next, .. } => until = next,
            }
        };
        hold.used();
        session
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&held_key);
        if let Some(answer) = answer {
            let _ = tx
                .send(Ok(SseEvent::default().data(answer.to_string())))
                .await;
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The refusal of a call its policies deny.
fn denied(call: &Call, rule: &Rule) -> Refusal {
    Refusal::new(
        Reason::Forbidden,
        format!(
            "{} {} refused: {} (policy \"{}\")",
            call.kind.noun, call.shown, rule.reason, rule.id
        ),
    )
}

/// [`conclude`], answered as a plain JSON response.
async fn respond(
    ctx: &McpContext,
    server: &Server,
    session: &McpSession,
    call: &Call,
    ruling: &Ruling,
    decision: Result<(), Refusal>,
) -> Response {
    answer(
        StatusCode::OK,
        conclude(ctx, server, session, call, ruling, decision).await,
    )
}

/// Record the decision on a call and make its audit record durable; if
/// it may run, forward it and record the masked result. The JSON-RPC
/// message the client gets, in the shape of the session's version.
async fn conclude(
    ctx: &McpContext,
    server: &Server,
    session: &McpSession,
    call: &Call,
    ruling: &Ruling,
    decision: Result<(), Refusal>,
) -> Value {
    let mut message = forward(ctx, server, session, call, ruling, decision).await;
    shape(session, call.kind.method, &mut message);
    message
}

/// What [`conclude`] does before the message takes its version's shape.
async fn forward(
    ctx: &McpContext,
    server: &Server,
    session: &McpSession,
    call: &Call,
    ruling: &Ruling,
    decision: Result<(), Refusal>,
) -> Value {
    let decision = match decision {
        Ok(()) => session.record.unwritable().map_or(Ok(()), Err),
        refused => refused,
    };
    let mut frame = json!({
        "text": call.text,
        "method": call.kind.method,
        call.kind.field: call.shown.clone(),
        "decision": if decision.is_ok() { "allowed" } else { "refused" },
        "approval": null,
    });
    recording::ruling_fields(&mut frame, ruling);
    let message = decision
        .as_ref()
        .err()
        .map(|r| r.message.clone())
        .unwrap_or_default();
    let event = session
        .record
        .event(
            call.kind.event,
            if decision.is_ok() {
                AuditOutcome::Success
            } else {
                AuditOutcome::Refused
            },
        )
        .resource(json!({
            "connection": server.name(),
            "server": server.name(),
            call.kind.field: call.shown.clone(),
        }))
        .with("arguments", call.recorded.clone())
        // This request's own claims and address (a session, and above all
        // a stateless one, serves requests from more than one of them).
        .with(
            "actor",
            json!({
                "subject": call.caller.principal.subject,
                "issuer": call.caller.principal.issuer,
                "groups": call.caller.principal.groups,
                "mfa": call.caller.principal.mfa,
                "kind": if call.caller.principal.agent { "agent" } else { "person" },
            }),
        )
        .origin(call.caller.client.ip());
    let event = recording::with_ruling(event, Some(ruling), &message);
    let (durable, wait) = session.record.submit(event);
    wait.await;
    let decision = match (decision, durable.outcome()) {
        (Ok(()), Ok(seq)) => {
            frame["audit_seq"] = Value::from(seq);
            Ok(())
        }
        (Err(refusal), Ok(seq)) => {
            frame["audit_seq"] = Value::from(seq);
            Err(refusal)
        }
        (_, Err(refusal)) => Err(refusal),
    };
    if let Err(refusal) = &decision {
        recording::refusal_fields(
            &mut frame,
            refusal,
            "jsonrpc_code",
            Value::from(jsonrpc::code(refusal.reason)),
        );
    }
    session.record.frame("statement", frame);
    if let Err(refusal) = decision {
        return jsonrpc::refusal(&call.id, &refusal);
    }
    // Only what was decided and recorded goes upstream (an allow-list):
    // the client's `_meta` (progress tokens, its own ids) and any other
    // field stay here.
    let mut params = json!({ call.kind.param: call.name });
    if call.kind != &RESOURCE_READ {
        params["arguments"] = call.arguments.clone();
    }
    let started = Instant::now();
    let response = server
        .request(call.kind.method, params, ctx.call_timeout)
        .await;
    let duration = started.elapsed().as_micros() as u64;
    let mut response = match response {
        Ok(response) => response,
        Err(e) => {
            let refusal = Refusal::new(Reason::DependencyUnavailable, e.to_string());
            session.record.frame(
                "error",
                json!({ "message": for_record(&refusal.message), "jsonrpc_code": jsonrpc::code(refusal.reason) }),
            );
            return jsonrpc::refusal(&call.id, &refusal);
        }
    };
    let raw = serde_json::to_vec(&response).unwrap_or_default();
    let digest = {
        use base64::Engine;
        let mut mac = ctx.recording.digest_key.start();
        mac.update(&raw);
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    };
    // What the client gets when its policies reveal card numbers: the
    // result without card security or track data, PANs whole. The record
    // keeps the masked one below.
    let mut revealed = call.reveal.then(|| response.clone());
    let reveal_failed = match &mut revealed {
        Some(full) => mask_message(full, "", &mut Counts::default(), Keep::Full).err(),
        None => None,
    };
    let masked = {
        let mut counts = session.masked.lock().unwrap_or_else(|e| e.into_inner());
        let before = counts.total();
        let place = format!("{} {}", call.kind.method, call.shown);
        if let Err(refusal) = mask_message(&mut response, &place, &mut counts, Keep::LastFour) {
            drop(counts);
            session.record.frame(
                "error",
                json!({ "message": refusal.message, "jsonrpc_code": jsonrpc::code(refusal.reason) }),
            );
            return jsonrpc::refusal(&call.id, &refusal);
        }
        counts.total() - before
    };
    if let Some(error) = response.get("error") {
        session.record.frame(
            "error",
            json!({
                "message": truncate(&for_record(error["message"].as_str().unwrap_or_default()), PREVIEW_CHARS),
                "jsonrpc_code": error["code"],
            }),
        );
    } else {
        let rows = preview(&response);
        session.record.frame(
            "result",
            json!({
                "tag": format!("{} {}", call.kind.method, call.shown),
                "columns": ["content"],
                "rows": rows.len(),
                "bytes": raw.len(),
                "duration_us": duration,
                "hmac_sha256": digest,
                "masked": masked,
                // The client saw the card numbers whole (reveal_results); the record never does.
                "revealed": call.reveal,
                "is_error": response.pointer("/result/isError").and_then(Value::as_bool).unwrap_or(false),
                "preview_complete": true,
                "preview": rows,
            }),
        );
    }
    if let Some(refusal) = reveal_failed {
        session.record.frame(
            "error",
            json!({ "message": refusal.message, "jsonrpc_code": jsonrpc::code(refusal.reason) }),
        );
        return jsonrpc::refusal(&call.id, &refusal);
    }
    if let Some(full) = revealed {
        response = full;
    }
    // The upstream's id for the request is the gateway's; the client's goes back.
    response["id"] = call.id.clone();
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_arguments_keep_no_card_number_or_credential() {
        let shown = masked_arguments(&json!({
            "card": "4111 1111 1111 1111",
            "cvv": "123",
            "db": { "api_key": "sk-live-abc", "Password": "hunter2" },
            "note": "ok",
        }));
        for secret in ["4111 1111 1111 1111", "\"123\"", "sk-live-abc", "hunter2"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("1111") && shown.contains("\"note\":\"ok\""),
            "{shown}"
        );
    }

    #[test]
    fn results_are_masked_through_json_escapes_and_never_passed_unmasked() {
        let mut counts = Counts::default();
        // JSON inside a text block, its digits written as escapes.
        let mut message = json!({ "jsonrpc": "2.0", "id": 1, "result": { "content": [
            { "type": "text", "text": "{\"pan\": \"\\u00341111111111111111\", \"cvv\": \"123\"}" },
            { "type": "text", "text": "[{\"n\": \"\\u0034111111111111111\", \"cvv\": \"987\"}]" },
        ] } });
        mask_message(&mut message, "t", &mut counts, Keep::LastFour).unwrap();
        let text = message.to_string();
        for raw in ["4111111111111111", "\\u0034111", "123", "987"] {
            assert!(!text.contains(raw), "{raw} in {text}");
        }
        assert!(counts.total() >= 2);
    }

    #[test]
    fn a_revealed_result_keeps_card_numbers_but_never_security_codes_or_tracks() {
        let mut message = json!({ "jsonrpc": "2.0", "id": 1, "result": { "content": [
            { "type": "text", "text": "{\"pan\": \"4111111111111111\", \"cvv\": \"123\"}" },
            { "type": "text", "text": "swipe %B4111111111111111^DOE/JANE^2812101000000000000000?" },
        ], "structuredContent": { "card": "5555555555554444", "security_code": 987 } } });
        mask_message(&mut message, "t", &mut Counts::default(), Keep::Full).unwrap();
        let text = message.to_string();
        assert!(
            text.contains("4111111111111111") && text.contains("5555555555554444"),
            "{text}"
        );
        for gone in ["\\\"123\\\"", "987", "DOE/JANE", "^2812"] {
            assert!(!text.contains(gone), "{gone} in {text}");
        }
    }

    #[test]
    fn resource_contents_prompt_messages_and_blobs_are_masked() {
        use base64::Engine;
        let engine = base64::engine::general_purpose::STANDARD;
        let blob = engine.encode(b"id,pan\n1,5555555555554444\n");
        let mut message = json!({ "jsonrpc": "2.0", "id": 1, "result": {
            "contents": [
                { "uri": "t://a", "text": "card 4111 1111 1111 1111" },
                { "uri": "t://b", "blob": blob, "mimeType": "text/csv" },
            ],
            "messages": [
                { "role": "user", "content": { "type": "text", "text": "pay 378282246310005" } },
                { "role": "user", "content": { "type": "resource", "resource": { "uri": "t://c", "blob": blob } } },
            ],
        } });
        let mut counts = Counts::default();
        mask_message(&mut message, "t", &mut counts, Keep::LastFour).unwrap();
        let text = message.to_string();
        for raw in ["4111 1111 1111 1111", "378282246310005", blob.as_str()] {
            assert!(!text.contains(raw), "{raw} in {text}");
        }
        let masked = engine
            .decode(message["result"]["contents"][1]["blob"].as_str().unwrap())
            .unwrap();
        let masked = String::from_utf8(masked).unwrap();
        assert!(
            masked.starts_with("id,pan\n1,") && masked.ends_with("4444\n"),
            "{masked}"
        );
        assert_eq!(counts.total(), 4);
        assert_eq!(
            preview(&message),
            vec![
                vec![json!("card **** **** **** 1111")],
                vec![json!("<blob text/csv>")],
                vec![json!("pay ***********0005")],
                vec![json!("<resource>")],
            ]
        );

        // A blob the gateway cannot decode is not passed on.
        let mut message = json!({ "result": { "contents": [{ "uri": "t://d", "blob": "%%%" }] } });
        let refused =
            mask_message(&mut message, "t", &mut Counts::default(), Keep::LastFour).unwrap_err();
        assert!(
            refused.message.contains("not base64"),
            "{}",
            refused.message
        );
    }

    #[test]
    fn resource_uris_are_recorded_without_secrets_and_told_apart_by_a_keyed_digest() {
        assert_eq!(
            uri_for_record(
                "https://svc:hunter2@files.example/a%20b?token=abc&page=2&eyJhbGciOi#part"
            ),
            "https://***@files.example/a b?token=***&page=***&***#***"
        );
        // Escaped line breaks, terminal escapes and bidi overrides stay escaped.
        assert_eq!(
            uri_for_record("docs://a%0Aneeds%20approval:%1B[2J%E2%80%AEx"),
            "docs://a%0Aneeds approval:%1B[2J%E2%80%AEx"
        );
        // A card number hidden in escapes is decoded and masked.
        let escaped = uri_for_record("cards://vault/%34%31%31%311111%311111111");
        assert!(
            escaped.ends_with("1111") && !escaped.contains("4111111111111111"),
            "{escaped}"
        );
        assert_eq!(
            uri_for_record("payments://customer/42"),
            "payments://customer/42"
        );
        // Two URIs that differ inside a masked card number record the same,
        // but a grant for one is not a grant for the other.
        let (one, two) = ("cards://4111111111111111", "cards://4000000000061111");
        assert_eq!(uri_for_record(one), uri_for_record(two));
        let key = crate::recording::digest::DigestKey::from_bytes([7; 32]);
        let digest = |uri| name_digest(&key, &RESOURCE_READ, "files", uri);
        assert_ne!(digest(one), digest(two));
        assert_eq!(digest(one), digest(one));
        assert!(!digest(one).contains("4111"));
    }

    #[test]
    fn policies_match_top_level_arguments_that_masking_leaves_alone() {
        let pairs = argument_pairs(&json!({
            "format": "csv",
            "limit": 10,
            "q": { "format": "json" },
            "amount": 4000000000061111u64,
            "card": "4111 1111 1111 1111",
            "cvv": "123",
            "password": "hunter2",
            "a=b": 1,
        }));
        assert_eq!(
            pairs,
            vec![
                "format=\"csv\"".to_string(),
                "limit=10".to_string(),
                "q={\"format\":\"json\"}".to_string(),
            ],
            "a card number, card security data and a credential are left out, not masked into a match"
        );
        assert!(argument_pairs(&json!([1, 2])).is_empty());
    }

    #[test]
    fn only_normal_resource_uris_are_decided() {
        for good in [
            "demo://resource/dynamic/text/1",
            "file:///srv/docs/a.md",
            "https://example.com/a?b=c#d",
            "postgres://payments/public/cards",
        ] {
            assert_eq!(normal_uri(good), Ok(()), "{good}");
        }
        for bad in [
            "DEMO://resource/dynamic/blob/1",
            "demo://resource/dynamic/text/../blob/1",
            "demo://resource/dynamic/text/%2E%2e/blob/1",
            "demo://resource/./x",
            "demo://Resource/x",
            "demo://resource\\x",
            "demo://resource/x y",
            "no-scheme",
        ] {
            assert!(normal_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn blobs_holding_json_are_masked_as_json_and_odd_blocks_refused() {
        use base64::Engine;
        let engine = base64::engine::general_purpose::STANDARD;
        let blob = engine.encode(br#"{"cvv":"123","pan":"\u00341111111111111111"}"#);
        let mut message = json!({ "result": { "contents": [{ "uri": "t://a", "blob": blob }] } });
        mask_message(&mut message, "t", &mut Counts::default(), Keep::LastFour).unwrap();
        let inside = engine
            .decode(message["result"]["contents"][0]["blob"].as_str().unwrap())
            .unwrap();
        let inside = String::from_utf8(inside).unwrap();
        assert!(
            !inside.contains("123") && !inside.contains("41111111"),
            "{inside}"
        );
        let mut message =
            json!({ "result": { "contents": [{ "uri": "t://a", "blob": [52, 49] }] } });
        assert!(mask_message(&mut message, "t", &mut Counts::default(), Keep::LastFour).is_err());
        let mut message =
            json!({ "result": { "content": [{ "type": "text", "text": { "pan": 1 } }] } });
        assert!(mask_message(&mut message, "t", &mut Counts::default(), Keep::LastFour).is_err());
    }
}
