//! Approvals over the API: a WebSocket for consoles and HTTP JSON for
//! scripts (`tollgate approvals`). Both speak the messages of
//! [`crate::approvals::protocol`]; see `docs/approvals.md`.
//!
//! An approver is a person whom the policy permits the `approve` action on
//! at least one connection (the starter policy: the `approvers` group, with
//! MFA); `[approvals] require_mfa` also asks for MFA whatever the policy.
//! Each approver sees and decides only the requests of the connections the
//! policy lets them approve. Every refused decision is on record.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiContext, ApiError, Caller};
use crate::approvals::protocol::{ClientMessage, SUBPROTOCOL, ServerMessage, VERSION};
use crate::approvals::{DecideError, GrantView, RequestView, Verdict};
use crate::audit::event::Outcome;
use crate::listener::http::Peer;
use crate::listener::http::bearer;
use crate::masking::for_record;
use crate::policy::Principal;

/// How long a console that did not authenticate on upgrade has to send its
/// `auth` message.
const AUTH_WITHIN: Duration = Duration::from_secs(10);

/// The approval routes.
pub(super) fn routes() -> Router<Arc<ApiContext>> {
    Router::new()
        .route("/api/v1/approvals", get(list))
        .route("/api/v1/approvals/ws", get(console))
        .route("/api/v1/approvals/{id}", get(one))
        .route("/api/v1/approvals/{id}/approve", post(approve))
        .route("/api/v1/approvals/{id}/deny", post(deny))
        .route("/api/v1/grants/{id}/revoke", post(revoke))
        .route("/api/v1/mcp/pins", get(pins))
        .route("/api/v1/mcp/pins/{server}/{tool}/accept", post(accept_pin))
}

/// The MCP tool pins, with the changed definitions waiting for an approver.
async fn pins(
    State(ctx): State<Arc<ApiContext>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = ctx.caller(&headers, peer).await?;
    let approver = ctx.approver(caller).await?;
    let Some(pins) = &ctx.pins else {
        return Ok(Json(json!({ "servers": {} })));
    };
    let mut all = pins.list();
    if let Value::Object(servers) = &mut all {
        servers.retain(|server, _| approver.may(server));
    }
    Ok(Json(json!({ "servers": all })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceptBody {
    /// The changed definition's fingerprint, as the approver saw it.
    fingerprint: String,
    /// Why it may be used.
    reason: String,
}

/// An approver accepts a changed MCP tool definition: on record first.
async fn accept_pin(
    State(ctx): State<Arc<ApiContext>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path((server, tool)): Path<(String, String)>,
    accepted: Result<Json<AcceptBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = ctx.caller(&headers, peer).await?;
    let approver = ctx.approver(caller).await?;
    let accepted = body(accepted)?;
    let resource = json!({ "server": server, "tool": tool });
    let Some(pins) = ctx.pins.clone().filter(|_| approver.may(&server)) else {
        let event = approver
            .caller
            .event("mcp.tool.accept", Outcome::Refused)
            .resource(resource)
            .with("reason", "not an approver of this MCP server");
        ctx.record(event).await?;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} may not accept tool definitions of MCP server '{server}': no policy permits the `approve` action on it",
                approver.caller.identity.subject
            ),
        ));
    };
    if accepted.reason.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "say why the new definition may be used (reason)",
        ));
    }
    pins.acceptable(&server, &tool, &accepted.fingerprint)
        .map_err(|message| ApiError::new(StatusCode::CONFLICT, "conflict", message))?;
    let event = approver
        .caller
        .event("mcp.tool.accept", Outcome::Success)
        .resource(resource)
        .with("fingerprint", accepted.fingerprint.clone())
        .with("reason", for_record(&accepted.reason));
    ctx.record(event).await?;
    pins.accept(
        &server,
        &tool,
        &accepted.fingerprint,
        &approver.caller.identity.subject,
    )
    .map_err(|message| ApiError::new(StatusCode::CONFLICT, "conflict", message))?;
    Ok(Json(
        json!({ "server": server, "tool": tool, "fingerprint": accepted.fingerprint }),
    ))
}

/// An authenticated approver and the connections they may decide on.
struct Approver {
    caller: Caller,
    connections: Vec<String>,
}

impl Approver {
    fn may(&self, connection: &str) -> bool {
        self.connections.iter().any(|c| c == connection)
    }

    fn sees(
        &self,
        requests: Vec<RequestView>,
        grants: Vec<GrantView>,
    ) -> (Vec<RequestView>, Vec<GrantView>) {
        (
            requests
                .into_iter()
                .filter(|r| self.may(&r.connection))
                .collect(),
            grants
                .into_iter()
                .filter(|g| self.may(&g.connection))
                .collect(),
        )
    }
}

impl ApiContext {
    /// The caller as an approver, or a (recorded) refusal that says why not.
    async fn approver(&self, caller: Caller) -> Result<Approver, ApiError> {
        let refusal = if self.approvals.settings().require_mfa && !caller.identity.mfa {
            Some("deciding approval requests needs multi-factor authentication: log in again with MFA".to_string())
        } else {
            None
        };
        let connections: Vec<String> = match (&refusal, &self.policy) {
            (None, Some(policy)) => {
                let engine = policy.current();
                let principal = Principal::of(&caller.identity);
                self.connections
                    .iter()
                    .filter(|c| engine.may_approve(&principal, c, caller.peer.ip()))
                    .cloned()
                    .collect()
            }
            _ => Vec::new(),
        };
        if refusal.is_none() && !connections.is_empty() {
            return Ok(Approver {
                caller,
                connections,
            });
        }
        let message = refusal.unwrap_or_else(|| match self.policy {
            None => "no policy is in force on this gateway (policy.allow_all), so nothing is held for approval".into(),
            Some(_) => format!(
                "{} may not decide approval requests: no policy permits the `approve` action on any connection \
                 (the starter policy asks for membership of the `approvers` group and MFA)",
                caller.identity.subject
            ),
        });
        let event = caller
            .event("approval.console", Outcome::Refused)
            .with("reason", message.clone());
        self.record(event).await?;
        Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", message))
    }

    /// Apply `verdict` (or a revocation) for `approver`; refusals are on record.
    async fn decide(
        &self,
        approver: &Approver,
        id: &str,
        action: Action,
    ) -> Result<Decided, DecideError> {
        let may = |connection: &str| approver.may(connection);
        let identity = &approver.caller.identity;
        let origin = approver.caller.peer.ip();
        let result = match &action {
            Action::Decide(verdict) => self
                .approvals
                .decide_anywhere(identity, origin, &may, id, verdict.clone())
                .await
                .map(|r| Decided::Request(Box::new(r))),
            Action::Revoke(reason) => self
                .approvals
                .revoke(identity, &may, id, reason)
                .map(|g| Decided::Grant(Box::new(g))),
        };
        if let Err(error) = &result {
            let event = approver
                .caller
                .event("approval.refused", Outcome::Refused)
                .resource(json!({ "request": for_record(id) }))
                .with("attempt", action.name())
                .with("code", error.code())
                .with("reason", for_record(&error.to_string()));
            if self.record(event).await.is_err() {
                return Err(DecideError::Unavailable(
                    "the attempt could not be recorded in the audit log (PCI DSS 10.7); \
                     check the gateway's data directory"
                        .into(),
                ));
            }
        }
        result
    }
}

enum Action {
    Decide(Verdict),
    Revoke(String),
}

impl Action {
    fn name(&self) -> &'static str {
        match self {
            Action::Decide(v) if v.approve => "approve",
            Action::Decide(_) => "deny",
            Action::Revoke(_) => "revoke",
        }
    }
}

enum Decided {
    Request(Box<RequestView>),
    Grant(Box<GrantView>),
}

fn decide_error(error: DecideError) -> ApiError {
    let status = match &error {
        DecideError::NotFound(_) => StatusCode::NOT_FOUND,
        DecideError::NotPending { .. } | DecideError::AlreadyVoted(_) => StatusCode::CONFLICT,
        DecideError::SelfApproval(_) | DecideError::Forbidden(_) => StatusCode::FORBIDDEN,
        DecideError::Invalid(_) => StatusCode::BAD_REQUEST,
        DecideError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        DecideError::Remote { code, .. } => match *code {
            "not_found" => StatusCode::NOT_FOUND,
            "not_pending" | "already_voted" => StatusCode::CONFLICT,
            "bad_request" => StatusCode::BAD_REQUEST,
            "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::FORBIDDEN,
        },
    };
    ApiError::new(status, error.code(), for_record(&error.to_string()))
}

fn body<T>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    parsed.map(|Json(b)| b).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "{}; see docs/approvals.md for the request body",
                e.body_text()
            ),
        )
    })
}

async fn list(
    State(ctx): State<Arc<ApiContext>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = ctx.caller(&headers, peer).await?;
    let approver = ctx.approver(caller).await?;
    let (requests, grants) = ctx.approvals.snapshot();
    let (requests, grants) = approver.sees(requests, grants);
    let identity = &approver.caller.identity;
    Ok(Json(json!({
        "approver": identity.subject,
        "issuer": identity.issuer,
        "connections": approver.connections,
        "requests": requests,
        "grants": grants,
    })))
}

async fn one(
    State(ctx): State<Arc<ApiContext>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = ctx.caller(&headers, peer).await?;
    let approver = ctx.approver(caller).await?;
    match ctx
        .approvals
        .get(&id)
        .filter(|r| approver.may(&r.connection))
    {
        Some(request) => Ok(Json(json!({ "request": request }))),
        None => Err(decide_error(DecideError::NotFound(id))),
    }
}

/// The body of approve, deny and revoke.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    reason: String,
    #[serde(default)]
    window_secs: Option<u64>,
}

async fn approve(
    State(ctx): State<Arc<ApiContext>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    decision: Result<Json<DecisionBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    decide_http(ctx, peer, headers, id, decision, true).await
}

async fn deny(
    State(ctx): State<Arc<ApiContext>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    decision: Result<Json<DecisionBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    decide_http(ctx, peer, headers, id, decision, false).await
}

async fn decide_http(
    ctx: Arc<ApiContext>,
    peer: SocketAddr,
    headers: HeaderMap,
    id: String,
    decision: Result<Json<DecisionBody>, JsonRejection>,
    approve: bool,
) -> Result<Json<Value>, ApiError> {
    let caller = ctx.caller(&headers, peer).await?;
    let approver = ctx.approver(caller).await?;
    let decision = body(decision)?;
    if !approve && decision.window_secs.is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "window_secs applies to approvals only",
        ));
    }
    let verdict = Verdict {
        approve,
        reason: decision.reason,
        window: decision.window_secs.map(Duration::from_secs),
    };
    match ctx.decide(&approver, &id, Action::Decide(verdict)).await {
        Ok(Decided::Request(request)) => Ok(Json(json!({ "request": request }))),
        Ok(Decided::Grant(grant)) => Ok(Json(json!({ "grant": grant }))),
        Err(e) => Err(decide_error(e)),
    }
}

async fn revoke(
    State(ctx): State<Arc<ApiContext>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    decision: Result<Json<DecisionBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = ctx.caller(&headers, peer).await?;
    let approver = ctx.approver(caller).await?;
    let decision = body(decision)?;
    match ctx
        .decide(&approver, &id, Action::Revoke(decision.reason))
        .await
    {
        Ok(Decided::Grant(grant)) => Ok(Json(json!({ "grant": grant }))),
        Ok(Decided::Request(request)) => Ok(Json(json!({ "request": request }))),
        Err(e) => Err(decide_error(e)),
    }
}

/// `GET /api/v1/approvals/ws`: the console's WebSocket.
async fn console(
    State(ctx): State<Arc<ApiContext>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Response {
    let (mut parts, _) = request.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &ctx).await {
        Ok(upgrade) => upgrade,
        Err(_) => {
            return ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                "websocket_required",
                "this endpoint speaks WebSocket (subprotocol tollgate.approvals.v1); \
                 for HTTP use GET /api/v1/approvals",
            )
            .into_response();
        }
    };
    // With an Authorization header the approver is checked before the upgrade.
    let approver = match bearer(&headers) {
        None => None,
        Some(token) => {
            let caller = match ctx.caller_with(Some(token), peer).await {
                Ok(caller) => caller,
                Err(e) => return e.into_response(),
            };
            match ctx.approver(caller).await {
                Ok(approver) => Some(approver),
                Err(e) => return e.into_response(),
            }
        }
    };
    upgrade
        .protocols([SUBPROTOCOL])
        .on_upgrade(move |socket| async move {
            Console { ctx, socket }.run(approver, peer).await;
        })
}

struct Console {
    ctx: Arc<ApiContext>,
    socket: WebSocket,
}

impl Console {
    async fn send(&mut self, message: &ServerMessage) -> bool {
        self.socket
            .send(Message::Text(message.to_json().into()))
            .await
            .is_ok()
    }

    async fn error(&mut self, code: &str, message: &str, reference: Option<&str>) -> bool {
        self.send(&ServerMessage::Error {
            code: code.to_string(),
            message: message.to_string(),
            reference: reference.map(str::to_string),
        })
        .await
    }

    /// Say why, then close with a WebSocket close code.
    async fn close(mut self, code: u16, error: &str, message: &str) {
        let _ = self.error(error, message, None).await;
        let reason: String = message.chars().take(120).collect();
        let _ = self
            .socket
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
    }

    /// The first message must be `auth` when the upgrade carried no token.
    async fn authenticate(
        &mut self,
        peer: SocketAddr,
    ) -> Result<Approver, (u16, &'static str, String)> {
        let first = tokio::time::timeout(AUTH_WITHIN, self.socket.recv()).await;
        let text = match first {
            Err(_) => {
                return Err((
                    close_code::POLICY,
                    "unauthenticated",
                    "no auth message within 10 s: send {\"type\":\"auth\",\"token\":\"<access token>\"} first, \
                     or an Authorization header with the upgrade"
                        .into(),
                ));
            }
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(_) => {
                return Err((
                    close_code::POLICY,
                    "unauthenticated",
                    "the first message must be {\"type\":\"auth\",\"token\":\"<access token>\"}"
                        .into(),
                ));
            }
        };
        let token = match serde_json::from_str::<ClientMessage>(&text) {
            Ok(ClientMessage::Auth { token }) => token,
            _ => {
                return Err((
                    close_code::POLICY,
                    "unauthenticated",
                    "the first message must be {\"type\":\"auth\",\"token\":\"<access token>\"}"
                        .into(),
                ));
            }
        };
        let caller = self
            .ctx
            .caller_with(Some(&token), peer)
            .await
            .map_err(|e| (close_code::POLICY, "unauthenticated", e.message))?;
        self.ctx
            .approver(caller)
            .await
            .map_err(|e| (close_code::POLICY, e.code, e.message))
    }

    async fn snapshot(&mut self, approver: &Approver, reference: Option<&str>) -> bool {
        let (requests, grants) = self.ctx.approvals.snapshot();
        let (requests, grants) = approver.sees(requests, grants);
        self.send(&ServerMessage::Snapshot {
            requests,
            grants,
            reference: reference.map(str::to_string),
        })
        .await
    }

    async fn run(mut self, approver: Option<Approver>, peer: SocketAddr) {
        let approver = match approver {
            Some(approver) => approver,
            None => match self.authenticate(peer).await {
                Ok(approver) => approver,
                Err((code, error, message)) => return self.close(code, error, &message).await,
            },
        };
        let identity = approver.caller.identity.clone();
        let _watching = self
            .ctx
            .approvals
            .watch(&identity.subject, &approver.connections);
        // Subscribed before the snapshot, so nothing falls between the two.
        let mut events = self.ctx.approvals.subscribe();
        let expires_at = std::time::UNIX_EPOCH + Duration::from_secs(identity.expires_at);
        let hello = ServerMessage::Hello {
            version: VERSION,
            approver: identity.subject.clone(),
            issuer: identity.issuer.clone(),
            connections: approver.connections.clone(),
            token_expires_at: crate::clock::rfc3339(expires_at),
        };
        if !self.send(&hello).await || !self.snapshot(&approver, None).await {
            return;
        }
        let left = expires_at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        let token_expiry = tokio::time::sleep(left);
        tokio::pin!(token_expiry);
        let mut stopping = self.ctx.stopping.clone();
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) => {
                        if approver.may(event.connection()) && !self.send(&event.message()).await {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Too slow to follow every event: start again from a snapshot.
                        if !self.snapshot(&approver, None).await {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                message = self.socket.recv() => match message {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(Message::Text(text))) => {
                        if !self.handle(&approver, &text).await {
                            return;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        if !self.error("bad_message", "send JSON text messages; see docs/approvals.md", None).await {
                            return;
                        }
                    }
                    Some(Ok(_)) => {}
                },
                () = &mut token_expiry => {
                    return self.close(close_code::POLICY, "token_expired", "the access token expired: reconnect with a new one").await;
                }
                () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
                    return self.close(close_code::AWAY, "shutting_down", "the gateway is stopping; reconnect to another or later").await;
                }
            }
        }
    }

    /// Handle one client message; false when the connection is gone.
    async fn handle(&mut self, approver: &Approver, text: &str) -> bool {
        let message = match serde_json::from_str::<ClientMessage>(text) {
            Ok(message) => message,
            Err(e) => {
                let reference = serde_json::from_str::<Value>(text)
                    .ok()
                    .and_then(|v| v.get("ref").and_then(Value::as_str).map(str::to_string));
                let message = format!("{e}; see docs/approvals.md for the messages");
                return self
                    .error("bad_message", &message, reference.as_deref())
                    .await;
            }
        };
        let (id, action, reference) = match message {
            ClientMessage::Auth { .. } => {
                return self
                    .error("bad_message", "already authenticated", None)
                    .await;
            }
            ClientMessage::Ping { reference } => {
                return self.send(&ServerMessage::Pong { reference }).await;
            }
            ClientMessage::Snapshot { reference } => {
                return self.snapshot(approver, reference.as_deref()).await;
            }
            ClientMessage::Approve {
                id,
                reason,
                window_secs,
                reference,
            } => (
                id,
                Action::Decide(Verdict {
                    approve: true,
                    reason,
                    window: window_secs.map(Duration::from_secs),
                }),
                reference,
            ),
            ClientMessage::Deny {
                id,
                reason,
                reference,
            } => (
                id,
                Action::Decide(Verdict {
                    approve: false,
                    reason,
                    window: None,
                }),
                reference,
            ),
            ClientMessage::Revoke {
                grant,
                reason,
                reference,
            } => (grant, Action::Revoke(reason), reference),
        };
        let reference = reference.as_deref();
        match self.ctx.decide(approver, &id, action).await {
            Ok(Decided::Request(request)) => {
                self.send(&ServerMessage::Ack {
                    reference: reference.map(str::to_string),
                    request: Some(request),
                    grant: None,
                })
                .await
            }
            Ok(Decided::Grant(grant)) => {
                self.send(&ServerMessage::Ack {
                    reference: reference.map(str::to_string),
                    request: None,
                    grant: Some(grant),
                })
                .await
            }
            Err(e) => {
                self.error(e.code(), &for_record(&e.to_string()), reference)
                    .await
            }
        }
    }
}
