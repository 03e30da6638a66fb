//! An MCP server the gateway reaches over Streamable HTTP, as a client:
//! it initializes a session (keeping the server's `Mcp-Session-Id` and
//! sending `MCP-Protocol-Version` after), posts each request and reads the
//! answer as JSON or from the server's event stream, and starts a new
//! session when the server forgets the old one (404, or 400 from some).
//!
//! The gateway authenticates with its own credential for the server
//! (`bearer_token`, read from env, file or keyring when a session starts,
//! so a rotated credential is picked up); the client's token never leaves
//! the gateway.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};

use super::upstream::{UPSTREAM_VERSION, UpstreamError};
use crate::config::McpServerConfig;
use crate::upstream::Secret;

/// The largest answer the gateway reads from a server (one response, or
/// all of one request's event stream).
const MAX_ANSWER: usize = 16 * 1024 * 1024;

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

/// One session with the server.
struct Session {
    /// The server's `Mcp-Session-Id` (a stateless server gives none).
    id: Option<String>,
    /// The version the server agreed to.
    version: String,
    /// The server's answer to `initialize`.
    initialized: Value,
    /// The gateway's credential, as read when the session started.
    token: Option<Secret>,
}

/// One configured server at a URL.
pub struct HttpServer {
    config: McpServerConfig,
    url: reqwest::Url,
    client: reqwest::Client,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    next_id: AtomicU64,
    tools_changed: Arc<AtomicBool>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("name", &self.config.name)
            .field("url", &self.url.as_str())
            .finish()
    }
}

/// Why one exchange failed.
enum Failure {
    /// The server no longer knows the session: start another.
    SessionGone,
    /// Anything else, as the caller is told.
    Error(UpstreamError),
}

impl From<UpstreamError> for Failure {
    fn from(e: UpstreamError) -> Self {
        Failure::Error(e)
    }
}

impl HttpServer {
    /// A server from its configuration (checked: `url` is set). A tools
    /// change it announces is noted in `tools_changed`.
    pub fn new(
        config: &McpServerConfig,
        tools_changed: Arc<AtomicBool>,
    ) -> Result<HttpServer, UpstreamError> {
        let failed = |message: String| UpstreamError::Start {
            server: config.name.clone(),
            message,
        };
        let url = config
            .url
            .as_deref()
            .ok_or_else(|| failed("no url".into()))?;
        let url = reqwest::Url::parse(url).map_err(|e| failed(format!("url: {e}")))?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // A redirect would carry the gateway's credential elsewhere,
            // and so would a proxy from the environment (in plain text, for
            // a loopback http:// server).
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .https_only(url.scheme() == "https");
        if let Some(ca) = &config.ca_file {
            let pem =
                std::fs::read(ca).map_err(|e| failed(format!("ca_file {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| failed(format!("ca_file {}: {e}", ca.display())))?;
            // Only these: a publicly trusted certificate for the host is not enough.
            builder = builder.tls_certs_only(certs);
        }
        let client = builder
            .build()
            .map_err(|e| failed(format!("HTTP client: {}", e.without_url())))?;
        Ok(HttpServer {
            config: config.clone(),
            url,
            client,
            session: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
            tools_changed,
        })
    }

    /// The server's answer to `initialize` (starting a session if needed).
    pub async fn initialized(&self, timeout: Duration) -> Result<Value, UpstreamError> {
        Ok(self.session(timeout).await?.initialized.clone())
    }

    /// Send a request and wait for its response (the whole JSON-RPC
    /// message: `result` or `error`).
    pub async fn request(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, UpstreamError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Once more with a new session when the server forgot the old one.
        for _ in 0..2 {
            let session = tokio::time::timeout_at(deadline, self.session(timeout))
                .await
                .map_err(|_| UpstreamError::Timeout(self.config.name.clone()))??;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let message = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
            match tokio::time::timeout_at(deadline, self.exchange(&session, &message)).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(Failure::SessionGone)) => self.forget(&session).await,
                Ok(Err(Failure::Error(e))) => return Err(e),
                Err(_) => {
                    // Tell the server the request is abandoned.
                    let cancel = json!({
                        "jsonrpc": "2.0",
                        "method": "notifications/cancelled",
                        "params": { "requestId": id, "reason": "the gateway's call timeout passed" },
                    });
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        self.exchange(&session, &cancel),
                    )
                    .await;
                    return Err(UpstreamError::Timeout(self.config.name.clone()));
                }
            }
        }
        Err(self.error("the server forgot two sessions in a row".into()))
    }

    fn error(&self, message: String) -> UpstreamError {
        UpstreamError::Http {
            server: self.config.name.clone(),
            message,
        }
    }

    async fn forget(&self, session: &Arc<Session>) {
        let mut slot = self.session.lock().await;
        if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, session)) {
            *slot = None;
        }
    }

    /// The current session, initialized (again) if there is none.
    async fn session(&self, timeout: Duration) -> Result<Arc<Session>, UpstreamError> {
        let mut slot = self.session.lock().await;
        if let Some(session) = slot.as_ref() {
            return Ok(session.clone());
        }
        let session = tokio::time::timeout(timeout, self.start())
            .await
            .map_err(|_| UpstreamError::Timeout(self.config.name.clone()))??;
        let session = Arc::new(session);
        *slot = Some(session.clone());
        Ok(session)
    }

    async fn start(&self) -> Result<Session, UpstreamError> {
        let failed = |message: String| UpstreamError::Start {
            server: self.config.name.clone(),
            message,
        };
        let token = match &self.config.bearer_token {
            Some(source) => Some(
                crate::upstream::credential::read(source)
                    .await
                    .map_err(|e| failed(format!("bearer_token: {e}")))?,
            ),
            None => None,
        };
        let initialize = json!({
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": UPSTREAM_VERSION,
                "capabilities": {},
                "clientInfo": { "name": "tollgate", "version": env!("CARGO_PKG_VERSION") },
            },
        });
        let mut session = Session {
            id: None,
            version: UPSTREAM_VERSION.into(),
            initialized: Value::Null,
            token,
        };
        let (answer, id) = match self.post(&session, &initialize, true).await {
            Ok(answered) => answered,
            Err(Failure::Error(e)) => return Err(failed(e.to_string())),
            Err(Failure::SessionGone) => return Err(failed("initialize answered 404".into())),
        };
        let Some(result) = answer.get("result").cloned() else {
            return Err(failed(format!(
                "initialize failed: {}",
                shorten(&crate::masking::for_record(&answer["error"].to_string()))
            )));
        };
        session.id = id;
        if let Some(version) = result["protocolVersion"].as_str() {
            // The version is sent back in a header: only a plain token.
            if version.is_empty()
                || version.len() > 32
                || !version
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(failed(
                    "initialize answered an unreadable protocolVersion".into(),
                ));
            }
            session.version = version.to_string();
        }
        session.initialized = result;
        let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
        match self.exchange(&session, &initialized).await {
            Ok(_) => {}
            Err(Failure::Error(e)) => return Err(failed(e.to_string())),
            Err(Failure::SessionGone) => return Err(failed("the new session was refused".into())),
        }
        Ok(session)
    }

    /// Post a message in a session; for a request, its response.
    async fn exchange(&self, session: &Session, message: &Value) -> Result<Value, Failure> {
        Ok(self.post(session, message, false).await?.0)
    }

    /// Post `message`; a request's response with the session id the server
    /// gave (read only when `initializing`), `Null` for a notification or
    /// response the server accepted.
    async fn post(
        &self,
        session: &Session,
        message: &Value,
        initializing: bool,
    ) -> Result<(Value, Option<String>), Failure> {
        let mut request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream")
            .body(serde_json::to_vec(message).map_err(|e| self.error(e.to_string()))?);
        if !initializing {
            request = request.header(VERSION_HEADER, &session.version);
            if let Some(id) = &session.id {
                request = request.header(SESSION_HEADER, id);
            }
        }
        if let Some(token) = &session.token {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                .map_err(|_| self.error("the bearer_token is not a valid header value".into()))?;
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| self.error(format!("could not reach the server: {}", e.without_url())))?;
        let status = response.status();
        // The specification says 404 for a session the server no longer
        // knows: the request was not handled, and is sent once more in a
        // new session. Some servers (the reference server-everything) say
        // 400 with an error about the session instead; any other 400 is
        // the request's own failure, and nothing is sent again.
        if status == StatusCode::NOT_FOUND && session.id.is_some() && !initializing {
            return Err(Failure::SessionGone);
        }
        if status == StatusCode::BAD_REQUEST && session.id.is_some() && !initializing {
            let body = self.read_all(&mut response).await.unwrap_or_default();
            let about_session = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| {
                    v.pointer("/error/message")?
                        .as_str()
                        .map(str::to_ascii_lowercase)
                })
                .is_some_and(|m| m.contains("session"));
            if about_session {
                return Err(Failure::SessionGone);
            }
            return Err(self
                .error("the server answered HTTP 400 Bad Request".into())
                .into());
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(self
                .error(format!(
                    "the server refused the gateway's credential ({status}): check [[mcp.server]] bearer_token"
                ))
                .into());
        }
        let request_id = message.get("method").and(message.get("id"));
        if status == StatusCode::ACCEPTED && request_id.is_none() {
            return Ok((Value::Null, None));
        }
        if !status.is_success() {
            return Err(self
                .error(format!("the server answered HTTP {status}"))
                .into());
        }
        let session_id = match response.headers().get(SESSION_HEADER) {
            Some(id) if initializing => Some(
                id.to_str()
                    .ok()
                    .filter(|id| !id.is_empty() && id.bytes().all(|b| (0x21..=0x7e).contains(&b)))
                    .ok_or_else(|| {
                        self.error("the server's Mcp-Session-Id is not visible ASCII".into())
                    })?
                    .to_string(),
            ),
            _ => None,
        };
        let Some(request_id) = request_id else {
            return Ok((Value::Null, session_id));
        };
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let answer = if content_type.starts_with("text/event-stream") {
            self.read_stream(session, &mut response, request_id).await?
        } else if content_type.starts_with("application/json") {
            let body = self.read_all(&mut response).await?;
            serde_json::from_slice::<Value>(&body)
                .map_err(|_| self.error("the server's answer is not JSON".into()))?
        } else {
            return Err(self
                .error(format!(
                    "the server answered with content type '{}'",
                    shorten(&content_type)
                ))
                .into());
        };
        if answer.get("id") != Some(request_id) || answer.get("method").is_some() {
            return Err(self
                .error("the server's answer is not the response to the request".into())
                .into());
        }
        Ok((answer, session_id))
    }

    async fn read_all(&self, response: &mut reqwest::Response) -> Result<Vec<u8>, UpstreamError> {
        let mut body = Vec::new();
        while let Some(chunk) = self.chunk(response).await? {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(self.error("the server sent an answer over 16 MiB".into()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    async fn chunk(
        &self,
        response: &mut reqwest::Response,
    ) -> Result<Option<bytes::Bytes>, UpstreamError> {
        response
            .chunk()
            .await
            .map_err(|e| self.error(format!("reading the answer: {}", e.without_url())))
    }

    /// Read the request's event stream until its response: notifications
    /// on the way are noted (a tools change) or dropped, requests from the
    /// server refused (the gateway does not pass them to clients).
    async fn read_stream(
        &self,
        session: &Session,
        response: &mut reqwest::Response,
        request_id: &Value,
    ) -> Result<Value, UpstreamError> {
        let mut events = EventStream::default();
        let mut read = 0usize;
        loop {
            while let Some(data) = events.next_event() {
                let Ok(message) = serde_json::from_str::<Value>(&data) else {
                    return Err(self
                        .error("the server's event stream carried data that is not JSON".into()));
                };
                match (message.get("method"), message.get("id")) {
                    (None, Some(id)) if id == request_id => return Ok(message),
                    (None, _) => {}
                    (Some(method), None) => {
                        if method == "notifications/tools/list_changed" {
                            self.tools_changed.store(true, Ordering::Relaxed);
                        }
                    }
                    (Some(method), Some(id)) => {
                        let reply = if method == "ping" {
                            json!({ "jsonrpc": "2.0", "id": id, "result": {} })
                        } else {
                            json!({
                                "jsonrpc": "2.0",
                                "id": id,
                                "error": {
                                    "code": super::jsonrpc::METHOD_NOT_FOUND,
                                    "message": "the gateway does not pass server-to-client requests",
                                },
                            })
                        };
                        // Boxed: the reply is posted from within a post.
                        let _ = Box::pin(self.post(session, &reply, false)).await;
                    }
                }
            }
            let Some(chunk) = self.chunk(response).await? else {
                return Err(UpstreamError::Exited(self.config.name.clone()));
            };
            read += chunk.len();
            if read > MAX_ANSWER {
                return Err(self.error("the server sent an event stream over 16 MiB".into()));
            }
            events.push(&chunk);
        }
    }
}

/// A `text/event-stream` parser: bytes in, each event's data out. Lines
/// end in LF or CRLF; a leading byte order mark is skipped. Each byte is
/// looked at once (a flood of empty lines costs no more than its length).
#[derive(Default)]
struct EventStream {
    buffer: Vec<u8>,
    /// Where the next line starts.
    start: usize,
    /// Up to where the buffer holds no line end.
    scanned: usize,
    data: Option<String>,
    started: bool,
}

impl EventStream {
    fn push(&mut self, bytes: &[u8]) {
        // Drop the lines already read once they are most of the buffer.
        if self.start > 0 && self.start * 2 >= self.buffer.len() {
            self.buffer.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
        if !self.started && self.buffer.len() >= 3 {
            self.started = true;
            if self.buffer.starts_with(b"\xEF\xBB\xBF") {
                self.start = 3;
                self.scanned = 3;
            }
        }
    }

    /// The data of the next complete event, if one has arrived.
    fn next_event(&mut self) -> Option<String> {
        loop {
            let Some(at) = self.buffer[self.scanned..].iter().position(|&b| b == b'\n') else {
                self.scanned = self.buffer.len();
                return None;
            };
            let end = self.scanned + at;
            let mut line = &self.buffer[self.start..end];
            self.start = end + 1;
            self.scanned = self.start;
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    return Some(data);
                }
                continue;
            }
            let line = String::from_utf8_lossy(line);
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (&*line, ""),
            };
            if field == "data" {
                match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.data = Some(value.to_string()),
                }
            }
            // `event`, `id`, `retry` and comments carry nothing the gateway uses.
        }
    }
}

/// Text from a server, cut to a length fit for an error message.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::EventStream;

    #[test]
    fn events_are_read_across_chunks_and_line_endings() {
        let mut events = EventStream::default();
        events.push(b": keep-alive\r\nevent: message\r\nid: 7\r\ndata: {\"a\":");
        assert_eq!(events.next_event(), None);
        events.push(b"1}\r\n\r\ndata: one\ndata: two\n\n\n");
        assert_eq!(events.next_event().as_deref(), Some("{\"a\":1}"));
        assert_eq!(events.next_event().as_deref(), Some("one\ntwo"));
        assert_eq!(events.next_event(), None);
    }

    #[test]
    fn a_flood_of_empty_lines_is_read_in_one_pass_and_a_bom_skipped() {
        let mut events = EventStream::default();
        events.push(b"\xEF\xBB\xBFdata: first\n\n");
        assert_eq!(events.next_event().as_deref(), Some("first"));
        // Four million empty lines: quadratic work here would take minutes.
        events.push(&vec![b'\n'; 4 << 20]);
        events.push(b"data: after\n\n");
        assert_eq!(events.next_event().as_deref(), Some("after"));
        assert!(events.buffer.len() < 5 << 20);
    }
}
