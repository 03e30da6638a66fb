//! The gateway's HTTPS API: session recordings and the audit log, by role.
//!
//! Callers send their OIDC access token as `Authorization: Bearer`; the
//! same issuers the PostgreSQL listener trusts are trusted here. Roles come
//! from groups (`[api] auditor_groups`, `analyst_groups`):
//!
//! | role | sees |
//! |---|---|
//! | auditor | session list and metadata, frames without result previews, the audit log and its checkpoints |
//! | analyst | session list and metadata, the masked frames (replay), asciicast |
//!
//! Nobody gets unmasked values: the store never holds them. Every read,
//! and every refused or unauthenticated attempt, is an audit event, made
//! durable before any data leaves (PCI DSS 10.2.1.3); if it cannot be
//! written the read is refused (503).
//!
//! Errors are JSON `{"error": <code>, "message": <what to do>}` with the
//! matching HTTP status. See `docs/api.md`.

mod approvals;
pub mod evidence;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::audit::event::{Event, Outcome};
use crate::identity::{AuthError, Authenticator, Identity};
use crate::listener::http::{Peer, bearer};
use crate::recording::Recording;
use crate::recording::store::Frame;

/// What the API's handlers share.
pub struct ApiContext {
    /// Token validation (the gateway's issuers).
    pub auth: Arc<Authenticator>,
    /// Recordings and the audit log.
    pub recording: Arc<Recording>,
    /// Groups whose members are auditors.
    pub auditor_groups: Vec<String>,
    /// Groups whose members are analysts with replay.
    pub analyst_groups: Vec<String>,
    /// Held requests and grants.
    pub approvals: Arc<crate::approvals::Approvals>,
    /// The policy in force (who may approve where); `None` with `allow_all`.
    pub policy: Option<crate::policy::PolicyHandle>,
    /// Names of the configured connections and MCP servers.
    pub connections: Vec<String>,
    /// The MCP tool pins (none: no MCP listener).
    pub pins: Option<Arc<crate::mcp::pins::Pins>>,
    /// Turns true when the gateway stops (consoles are told and closed).
    pub stopping: watch::Receiver<bool>,
    /// Evidence exports (none: not over the API).
    pub evidence: Option<Arc<evidence::Exports>>,
    /// The issuers whose tokens the API takes, for the protected resource
    /// metadata (RFC 9728) a console signs in with.
    pub issuers: Vec<crate::config::IssuerConfig>,
}

/// Largest page of frames or records.
const MAX_PAGE: u32 = 1000;
/// Page size when none is asked for.
const DEFAULT_PAGE: u32 = 100;

/// The routes.
pub fn router(ctx: Arc<ApiContext>) -> Router {
    Router::new()
        .route(
            "/.well-known/oauth-protected-resource",
            get(resource_metadata),
        )
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/sessions", get(sessions))
        .route("/api/v1/sessions/{id}", get(session))
        .route("/api/v1/sessions/{id}/frames", get(frames))
        .route("/api/v1/sessions/{id}/markers", get(markers))
        .route("/api/v1/sessions/{id}/search", get(search))
        .route("/api/v1/sessions/{id}/asciicast", get(asciicast))
        .route("/api/v1/audit/records", get(audit_records))
        .route("/api/v1/audit/checkpoint", get(audit_checkpoint))
        .merge(approvals::routes())
        .merge(evidence::routes())
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not answer this method; see docs/api.md",
            )
        })
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see docs/api.md",
            )
        })
        .with_state(ctx)
}

/// Serve the API on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<crate::listener::tls::ServerTls>,
    ctx: Arc<ApiContext>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    crate::listener::http::serve(listener, tls, router(ctx), shutdown).await
}

/// An API failure, as the caller sees it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn audit_unavailable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the read could not be recorded in the audit log, so nothing is returned (PCI DSS 10.7); \
             check the gateway's data directory has space and is writable",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({ "error": self.code, "message": self.message })),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                self.message.replace('"', "'")
            );
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, value);
            }
        }
        response
    }
}

/// An authenticated caller and its roles.
struct Caller {
    identity: Identity,
    peer: SocketAddr,
    auditor: bool,
    analyst: bool,
}

impl Caller {
    fn roles(&self) -> Vec<&'static str> {
        let mut roles = Vec::new();
        if self.auditor {
            roles.push("auditor");
        }
        if self.analyst {
            roles.push("analyst");
        }
        roles
    }

    /// An audit event of this caller.
    fn event(&self, kind: &str, outcome: Outcome) -> Event {
        Event::new(kind, outcome)
            .actor(&self.identity)
            .origin(self.peer.ip())
            .with("roles", self.roles())
    }
}

impl ApiContext {
    /// Authenticate the request's bearer token; a failure is audited.
    async fn caller(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<Caller, ApiError> {
        self.caller_with(bearer(headers), peer).await
    }

    /// Authenticate `token`; a failure is audited.
    async fn caller_with(&self, token: Option<&str>, peer: SocketAddr) -> Result<Caller, ApiError> {
        let result = match token {
            None => Err(AuthError::MissingToken),
            Some(token) => self.auth.authenticate(token).await,
        };
        match result {
            Ok(identity) => {
                let member = |groups: &[String]| identity.groups.iter().any(|g| groups.contains(g));
                let auditor = member(&self.auditor_groups);
                let analyst = member(&self.analyst_groups);
                Ok(Caller {
                    identity,
                    peer,
                    auditor,
                    analyst,
                })
            }
            Err(AuthError::KeysUnavailable(detail)) => {
                tracing::error!(error = %detail, "API: the token issuer's keys cannot be fetched");
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "issuer_unavailable",
                    "the gateway cannot fetch the token issuer's signing keys right now; try again shortly",
                ))
            }
            Err(e) => {
                let message = match e {
                    AuthError::MissingToken => {
                        "no access token: send `Authorization: Bearer <OIDC access token>`"
                            .to_string()
                    }
                    AuthError::Malformed => {
                        "the bearer token is not a JWT access token".to_string()
                    }
                    e => e.to_string(),
                };
                let event = Event::new("api.login", Outcome::Failure)
                    .with("actor", json!({ "subject": null }))
                    .origin(peer.ip())
                    .with("reason", crate::masking::for_record(&message));
                self.record(event).await?;
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    message,
                ))
            }
        }
    }

    /// Make `event` durable, or refuse the request.
    async fn record(&self, event: Event) -> Result<u64, ApiError> {
        self.recording
            .auditor
            .record(event)
            .await
            .map_err(|_| ApiError::audit_unavailable())
    }

    /// Refuse (on record) a caller who is neither auditor nor analyst.
    async fn needs_reader(
        &self,
        caller: &Caller,
        kind: &str,
        resource: &Value,
    ) -> Result<(), ApiError> {
        if caller.auditor || caller.analyst {
            return Ok(());
        }
        Err(self
            .forbid(caller, kind, resource.clone(), "auditor or analyst")
            .await)
    }

    /// Refuse `caller` for lacking a role, on record.
    async fn forbid(&self, caller: &Caller, kind: &str, resource: Value, needs: &str) -> ApiError {
        let event = caller
            .event(kind, Outcome::Refused)
            .resource(resource)
            .with("reason", format!("needs the {needs} role"));
        if let Err(e) = self.record(event).await {
            return e;
        }
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} has no {needs} role: ask for membership of one of the groups {}",
                caller.identity.subject,
                match needs {
                    "auditor" => self.auditor_groups.join(", "),
                    "analyst" => self.analyst_groups.join(", "),
                    _ => format!(
                        "{} or {}",
                        self.auditor_groups.join(", "),
                        self.analyst_groups.join(", ")
                    ),
                }
            ),
        )
    }
}

/// The query string, or a JSON 400 that says what is wrong with it.
fn query<T>(parsed: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    parsed.map(|Query(q)| q).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{}; see docs/api.md for the parameters", e.body_text()),
        )
    })
}

fn store_error(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "recording store read failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the recording store cannot be read right now; try again, and check the gateway's log",
    )
}

/// RFC 9728 protected resource metadata: which issuers sign the tokens this
/// API takes, and (a Tollgate extension) the console's client id and the
/// audience at each. Public: it holds no secret.
async fn resource_metadata(State(ctx): State<Arc<ApiContext>>, headers: HeaderMap) -> Json<Value> {
    // RFC 9728 3.3: `resource` is this API's own URL, as the caller reached it.
    let resource = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(|host| format!("https://{host}"));
    let consoles: Vec<Value> = ctx
        .issuers
        .iter()
        .map(|i| {
            json!({
                "issuer": i.issuer,
                "audience": i.audience,
                "client_id": i.console_client_id,
            })
        })
        .collect();
    Json(json!({
        "resource": resource,
        "authorization_servers": ctx.issuers.iter().map(|i| i.issuer.clone()).collect::<Vec<_>>(),
        "bearer_methods_supported": ["header"],
        "resource_name": "Tollgate gateway API",
        "resource_documentation": "https://github.com/tollgate/tollgate/blob/main/docs/api.md",
        "tollgate_console": consoles,
    }))
}

async fn whoami(
    State(ctx): State<Arc<ApiContext>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = ctx.caller(&headers, peer).await?;
    Ok(Json(json!({
        "subject": caller.identity.subject,
        "issuer": caller.identity.issuer,
        "groups": caller.identity.groups,
        "kind": caller.identity.kind,
        "mfa": caller.identity.mfa,
        "roles": caller.roles(),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    from: Option<String>,
    to: Option<String>,
    subject: Option<String>,
    connection: Option<String>,
    kind: Option<String>,
    outcome: Option<String>,
    q: Option<String>,
    order: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

fn millis(text: Option<&str>, name: &str, default: i64) -> Result<i64, ApiError> {
    match text {
        None => Ok(default),
        Some(text) => crate::clock::parse_rfc3339(text)
            .map(|secs| secs.saturating_mul(1000))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("{name}={text} is not a time: use RFC 3339, e.g. 2026-11-25T10:00:00Z"),
                )
            }),
    }
}

fn bad(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// Most words in one text search.
const MAX_WORDS: usize = 8;

/// The words of a search, or a 400.
fn words(q: Option<&str>) -> Result<Vec<String>, ApiError> {
    let words: Vec<String> = q
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if words.len() > MAX_WORDS || words.iter().any(|w| w.len() > 200) {
        return Err(bad(format!(
            "q: search with at most {MAX_WORDS} words of up to 200 characters"
        )));
    }
    Ok(words)
}

impl ListQuery {
    fn parse(&self) -> Result<crate::recording::store::SessionQuery, ApiError> {
        use crate::recording::store::{Outcome, SessionQuery};
        let limit = match self.limit {
            None => DEFAULT_PAGE,
            Some(n) if (1..=MAX_PAGE).contains(&n) => n,
            Some(n) => return Err(bad(format!("limit={n}: ask for 1 to {MAX_PAGE} per page"))),
        };
        let outcome =
            match self.outcome.as_deref() {
                None | Some("") => None,
                Some(o) => Some(Outcome::parse(o).ok_or_else(|| {
                    bad(format!("outcome={o}: use refused, held, masked or error"))
                })?),
            };
        let newest_first = match self.order.as_deref() {
            None | Some("newest") => true,
            Some("oldest") => false,
            Some(o) => return Err(bad(format!("order={o}: use newest or oldest"))),
        };
        let kind = match self.kind.as_deref() {
            None | Some("") => None,
            Some(k @ ("person" | "agent")) => Some(k.to_string()),
            Some(k) => return Err(bad(format!("kind={k}: use person or agent"))),
        };
        let after = match self.after.as_deref() {
            None | Some("") => None,
            Some(cursor) => Some(
                cursor
                    .split_once('.')
                    .and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, id.to_string())))
                    .ok_or_else(|| {
                        bad("after: pass the `next` of the previous page unchanged".into())
                    })?,
            ),
        };
        let nonempty = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
        Ok(SessionQuery {
            from_ms: millis(self.from.as_deref(), "from", i64::MIN)?,
            to_ms: millis(self.to.as_deref(), "to", i64::MAX)?,
            subject: nonempty(&self.subject).map(|s| s.trim().to_string()),
            connection: nonempty(&self.connection),
            kind,
            outcome,
            words: words(self.q.as_deref())?,
            newest_first,
            after,
            limit,
        })
    }
}

async fn sessions(
    State(ctx): State<Arc<ApiContext>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    list: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = ctx.caller(&headers, peer).await?;
    let list = query(list)?;
    let resource = json!({ "sessions": {
        "from": list.from, "to": list.to, "subject": list.subject, "connection": list.connection,
        "kind": list.kind, "outcome": list.outcome, "search": list.q.as_deref().map(crate::masking::for_record),
    } });
    ctx.needs_reader(&caller, "recording.list", &resource)
        .await?;
    let q = list.parse()?;
    let page = ctx.recording.store.list(&q).await.map_err(store_error)?;
    ctx.record(
        caller
            .event("recording.list", Outcome::Success)
            .resource(resource)
            .with("count", page.sessions.len()),
    )
    .await?;
    Ok(Json(json!(page)))
}

async fn session(
    State(ctx): State<Arc<ApiContext>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = ctx.caller(&headers, peer).await?;
    let resource = json!({ "session": id });
    ctx.needs_reader(&caller, "recording.read", &resource)
        .await?;
    let summary = find_session(&ctx, &caller, &id, &resource).await?;
    let last = ctx
        .recording
        .store
        .last_frame(&id)
        .await
        .map_err(store_error)?;
    ctx.record(
        caller
            .event("recording.read", Outcome::Success)
            .resource(resource)
            .with("part", "metadata"),
    )
    .await?;
    Ok(Json(json!({
        "session": summary,
        "last_frame": last.map(|(seq, at_us)| json!({ "seq": seq, "at_us": at_us })),
        "previews": caller.analyst,
    })))
}

/// Most markers in one answer.
const MAX_MARKERS: u32 = 10_000;

async fn markers(
    State(ctx): State<Arc<ApiContext>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = ctx.caller(&headers, peer).await?;
    let resource = json!({ "session": id });
    ctx.needs_reader(&caller, "recording.read", &resource)
        .await?;
    find_session(&ctx, &caller, &id, &resource).await?;
    let mut markers = ctx
        .recording
        .store
        .markers(&id, MAX_MARKERS + 1)
        .await
        .map_err(store_error)?;
    let truncated = markers.len() > MAX_MARKERS as usize;
    markers.truncate(MAX_MARKERS as usize);
    ctx.record(
        caller
            .event("recording.read", Outcome::Success)
            .resource(resource)
            .with("part", "markers")
            .with("markers", markers.len()),
    )
    .await?;
    Ok(Json(json!({ "markers": markers, "truncated": truncated })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Search {
    q: Option<String>,
}

/// Most matches of a search within a session.
const MAX_MATCHES: u32 = 1000;

async fn search(
    State(ctx): State<Arc<ApiContext>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    search: Result<Query<Search>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = ctx.caller(&headers, peer).await?;
    let search = query(search)?;
    let resource =
        json!({ "session": id, "search": search.q.as_deref().map(crate::masking::for_record) });
    ctx.needs_reader(&caller, "recording.read", &resource)
        .await?;
    let words = words(search.q.as_deref())?;
    if words.is_empty() {
        return Err(bad("q: give the words to find".into()));
    }
    find_session(&ctx, &caller, &id, &resource).await?;
    let mut matches = ctx
        .recording
        .store
        .search(&id, &words, MAX_MATCHES + 1)
        .await
        .map_err(store_error)?;
    let truncated = matches.len() > MAX_MATCHES as usize;
    matches.truncate(MAX_MATCHES as usize);
    ctx.record(
        caller
            .event("recording.read", Outcome::Success)
            .resource(resource)
            .with("part", "search")
            .with("matches", matches.len()),
    )
    .await?;
    Ok(Json(json!({ "matches": matches, "truncated": truncated })))
}

/// The session `id`, or a (recorded) 404.
async fn find_session(
    ctx: &ApiContext,
    caller: &Caller,
    id: &str,
    resource: &Value,
) -> Result<crate::recording::store::SessionSummary, ApiError> {
    let row = ctx
        .recording
        .store
        .summary_by_id(id)
        .await
        .map_err(store_error)?;
    match row {
        Some(row) => Ok(row),
        None => {
            ctx.record(
                caller
                    .event("recording.read", Outcome::Failure)
                    .resource(resource.clone())
                    .with("reason", "no such session"),
            )
            .await?;
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no recorded session has this id (it may have been pruned by retention); \
                 list sessions with GET /api/v1/sessions",
            ))
        }
    }
}

#[derive(Debug, Deserialize)]
struct Page {
    after: Option<i64>,
    limit: Option<u32>,
}

impl Page {
    fn limit(&self) -> Result<u32, ApiError> {
        match self.limit {
            None => Ok(DEFAULT_PAGE),
            Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            Some(n) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("limit={n}: ask for 1 to {MAX_PAGE} per page"),
            )),
        }
    }
}

async fn frames(
    State(ctx): State<Arc<ApiContext>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    page: Result<Query<Page>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = ctx.caller(&headers, peer).await?;
    let page = query(page)?;
    let after = page.after.unwrap_or(-1);
    let resource = json!({ "session": id, "frames_after": after });
    ctx.needs_reader(&caller, "recording.read", &resource)
        .await?;
    let limit = page.limit()?;
    find_session(&ctx, &caller, &id, &resource).await?;
    let mut frames = ctx
        .recording
        .store
        .frames(&id, after, limit)
        .await
        .map_err(store_error)?;
    if !caller.analyst {
        frames = frames.into_iter().map(Frame::without_preview).collect();
    }
    let next = (frames.len() as u32 == limit)
        .then(|| frames.last().map(|f| f.seq))
        .flatten();
    ctx.record(
        caller
            .event("recording.read", Outcome::Success)
            .resource(resource)
            .with("part", "frames")
            .with("frames", frames.len())
            .with("previews", caller.analyst),
    )
    .await?;
    Ok(Json(json!({ "frames": frames, "next_after": next })))
}

async fn asciicast(
    State(ctx): State<Arc<ApiContext>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = ctx.caller(&headers, peer).await?;
    let resource = json!({ "session": id });
    if !caller.analyst {
        return Err(ctx
            .forbid(&caller, "recording.read", resource, "analyst")
            .await);
    }
    let row = find_session(&ctx, &caller, &id, &resource).await?.row;
    let mut frames = Vec::new();
    loop {
        let after = frames.last().map_or(-1, |f: &Frame| f.seq as i64);
        let page = ctx
            .recording
            .store
            .frames(&id, after, MAX_PAGE)
            .await
            .map_err(store_error)?;
        let done = page.len() < MAX_PAGE as usize;
        frames.extend(page);
        if done {
            break;
        }
    }
    ctx.record(
        caller
            .event("recording.read", Outcome::Success)
            .resource(resource)
            .with("part", "asciicast")
            .with("frames", frames.len()),
    )
    .await?;
    let cast = crate::recording::asciicast::render(&row, &frames);
    Ok(([(header::CONTENT_TYPE, "application/x-asciicast")], cast).into_response())
}

async fn audit_records(
    State(ctx): State<Arc<ApiContext>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    page: Result<Query<Page>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = ctx.caller(&headers, peer).await?;
    let page = query(page)?;
    let resource = json!({ "audit_log": "records", "after": page.after });
    if !caller.auditor {
        return Err(ctx.forbid(&caller, "audit.read", resource, "auditor").await);
    }
    let limit = page.limit()?;
    let log = ctx.recording.auditor.log().clone();
    let after = page.after.and_then(|a| u64::try_from(a).ok());
    let records = tokio::task::spawn_blocking(move || log.read(after, limit as usize))
        .await
        .map_err(store_error)?
        .map_err(store_error)?;
    let next = (records.len() as u32 == limit)
        .then(|| records.last().and_then(|r| r.get("seq")).cloned())
        .flatten();
    // Recorded after the read, so the page never holds its own record.
    ctx.record(
        caller
            .event("audit.read", Outcome::Success)
            .resource(resource)
            .with("records", records.len()),
    )
    .await?;
    Ok(Json(json!({ "records": records, "next_after": next })))
}

async fn audit_checkpoint(
    State(ctx): State<Arc<ApiContext>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = ctx.caller(&headers, peer).await?;
    let resource = json!({ "audit_log": "checkpoint" });
    if !caller.auditor {
        return Err(ctx.forbid(&caller, "audit.read", resource, "auditor").await);
    }
    ctx.record(
        caller
            .event("audit.read", Outcome::Success)
            .resource(resource),
    )
    .await?;
    // A fresh checkpoint: it covers everything so far, this read included.
    let log = ctx.recording.auditor.log();
    let note = log
        .checkpoint()
        .await
        .map_err(|_| ApiError::audit_unavailable())?;
    Ok(Json(json!({
        "checkpoint": note,
        "verifier_key": log.verifier_key(),
        "signed_at": crate::clock::now_rfc3339(),
    })))
}
