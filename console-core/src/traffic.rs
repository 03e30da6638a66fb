//! Demo traffic: an AI agent's identity issuing ordinary queries through the
//! local gateway every few seconds and, every minute or so, a bulk export
//! of card data that the starter policy holds for approval, so a newcomer
//! sees a pending request within a minute of opening the console. With the
//! payments MCP server running, the agent also calls its tools through the
//! MCP listener, and every other export is its `export_cards` tool call.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
use tokio::task::JoinHandle;

use crate::types::TrafficStatus;

/// How the generator reaches the gateway.
#[derive(Debug, Clone)]
pub struct Target {
    /// The gateway's PostgreSQL listener.
    pub addr: std::net::SocketAddr,
    /// The certificate that verifies it.
    pub ca_file: std::path::PathBuf,
    /// The connection (`dbname`).
    pub database: String,
    /// The agent's subject (the user name).
    pub user: String,
    /// The payments MCP server at the MCP listener, when it runs.
    pub mcp: Option<McpTarget>,
}

/// How the generator reaches an MCP server through the gateway.
#[derive(Clone)]
pub struct McpTarget {
    /// Its Streamable HTTP URL (`https://.../mcp/payments`).
    pub url: String,
    /// The agent's tokens for the MCP listener's audience.
    pub tokens: TokenSource,
}

impl std::fmt::Debug for McpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpTarget").field("url", &self.url).finish()
    }
}

/// Timing; the defaults are what the demo uses.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Between ordinary queries.
    pub query_every: Duration,
    /// Before the first export.
    pub first_export_after: Duration,
    /// Between exports.
    pub export_every: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            query_every: Duration::from_secs(4),
            first_export_after: Duration::from_secs(10),
            export_every: Duration::from_secs(60),
        }
    }
}

/// What an agent asks for every few seconds: lookups the policy allows.
const QUERIES: &[&str] = &[
    "SELECT id, brand, amount FROM payments WHERE id = 1",
    "SELECT count(*) FROM orders",
    "SELECT name, email FROM customers ORDER BY id LIMIT 3",
    "SELECT brand, sum(amount) FROM payments GROUP BY brand",
    "SELECT id, pan FROM payments WHERE customer_id = 2",
];

/// The export the starter policy holds (`cardholder-bulk-export-needs-approval`).
pub const EXPORT: &str = "/* reason: nightly settlement reconciliation */ \
                          COPY (SELECT id, brand, pan, amount FROM payments) TO STDOUT";

/// Why the agent's `export_cards` calls are made (the approver sees it).
pub const TOOL_EXPORT_REASON: &str = "settlement file for the acquirer";

/// A running generator.
pub struct Traffic {
    status: Arc<Mutex<TrafficStatus>>,
    task: JoinHandle<()>,
}

/// Fresh tokens for the agent.
pub type TokenSource = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

impl Traffic {
    /// Start; `on_change` hears every change of the counters.
    pub fn start(
        target: Target,
        tokens: TokenSource,
        pace: Pace,
        on_change: Arc<dyn Fn(TrafficStatus) + Send + Sync>,
    ) -> Traffic {
        let status = Arc::new(Mutex::new(TrafficStatus {
            running: true,
            agent: target.user.clone(),
            ..TrafficStatus::default()
        }));
        let shared = status.clone();
        let task = tokio::spawn(async move {
            let update = |change: &dyn Fn(&mut TrafficStatus)| {
                let now = {
                    let mut status = shared.lock().expect("traffic status");
                    change(&mut status);
                    status.clone()
                };
                on_change(now);
            };
            let mut queries = tokio::time::interval(pace.query_every);
            queries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let exports = tokio::time::sleep(pace.first_export_after);
            tokio::pin!(exports);
            // Aborted with this task, so a held export's connection closes
            // (and the gateway withdraws its request) when the traffic stops.
            let mut export: Option<AbortOnDrop> = None;
            let mut conn: Option<PgConnection> = None;
            let mut turn = 0usize;
            let mut exported = 0usize;
            loop {
                tokio::select! {
                    _ = queries.tick() => {
                        let sql = QUERIES[turn % QUERIES.len()];
                        turn += 1;
                        // Every sixth turn the agent asks the payments tool instead.
                        if turn.is_multiple_of(6) && let Some(mcp) = &target.mcp {
                            let result = call_tool(&target, mcp, "find_payments", serde_json::json!({ "customer_id": 2 }), None).await;
                            match result {
                                Ok(()) => update(&|s| { s.queries += 1; s.last_error = None; }),
                                Err(e) => update(&|s| s.last_error = Some(e.clone())),
                            }
                            continue;
                        }
                        let result = async {
                            if conn.is_none() {
                                conn = Some(connect(&target, &tokens).await?);
                            }
                            let c = conn.as_mut().expect("connected");
                            let mut rows = sqlx::raw_sql(sql).fetch(&mut *c);
                            while let Some(row) = rows.next().await {
                                row.map_err(|e| e.to_string())?;
                            }
                            Ok::<(), String>(())
                        }.await;
                        match result {
                            Ok(()) => update(&|s| { s.queries += 1; s.last_error = None; }),
                            Err(e) => {
                                conn = None;
                                update(&|s| s.last_error = Some(e.clone()));
                            }
                        }
                    }
                    () = &mut exports => {
                        exports.as_mut().reset(tokio::time::Instant::now() + pace.export_every);
                        if export.as_ref().is_some_and(|e| !e.0.is_finished()) {
                            continue;
                        }
                        update(&|s| { s.exports += 1; s.waiting = true; });
                        exported += 1;
                        let (target, tokens) = (target.clone(), tokens.clone());
                        // Every other export is the MCP tool's, when the server runs.
                        let tool = target.mcp.clone().filter(|_| exported.is_multiple_of(2));
                        export = Some(AbortOnDrop(tokio::spawn(async move {
                            match tool {
                                Some(mcp) => call_tool(&target, &mcp, "export_cards", serde_json::json!({}), Some(TOOL_EXPORT_REASON)).await,
                                None => run_export(&target, &tokens).await,
                            }
                        })));
                    }
                    finished = async { (&mut export.as_mut().expect("guarded").0).await }, if export.is_some() => {
                        export = None;
                        match finished {
                            Ok(Ok(())) => update(&|s| { s.released += 1; s.waiting = false; }),
                            Ok(Err(e)) => update(&|s| { s.refused += 1; s.waiting = false; s.last_error = Some(e.clone()); }),
                            Err(_) => update(&|s| s.waiting = false),
                        }
                    }
                }
            }
        });
        Traffic { status, task }
    }

    /// The counters now.
    pub fn status(&self) -> TrafficStatus {
        self.status.lock().expect("traffic status").clone()
    }

    /// Stop (a held export's connection closes, which withdraws its request).
    pub fn stop(self) -> TrafficStatus {
        self.task.abort();
        let mut status = self.status();
        status.running = false;
        status.waiting = false;
        status
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A task that is aborted when its handle goes.
struct AbortOnDrop(JoinHandle<Result<(), String>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn connect(target: &Target, tokens: &TokenSource) -> Result<PgConnection, String> {
    let token = tokens()?;
    let options = PgConnectOptions::new()
        .host(&target.addr.ip().to_string())
        .port(target.addr.port())
        .username(&target.user)
        .password(&token)
        .database(&target.database)
        .ssl_mode(PgSslMode::VerifyCa)
        .ssl_root_cert(&target.ca_file)
        .application_name("tollgate-demo-agent");
    PgConnection::connect_with(&options)
        .await
        .map_err(|e| format!("connecting as {}: {e}", target.user))
}

/// One held export on its own connection: the rows come once approved; a
/// denial or expiry is the error the gateway gave.
async fn run_export(target: &Target, tokens: &TokenSource) -> Result<(), String> {
    let mut conn = connect(target, tokens).await?;
    let mut stream = conn.copy_out_raw(EXPORT).await.map_err(|e| e.to_string())?;
    while let Some(chunk) = stream.next().await {
        chunk.map_err(|e| e.to_string())?;
    }
    drop(stream);
    let _ = conn.close().await;
    Ok(())
}

/// One tool call through the gateway's MCP listener, as an MCP client makes
/// it over Streamable HTTP: a session opened, the call (its answer a JSON
/// body, or an SSE stream while the gateway holds it for approval), the
/// session ended. A refusal is the error the gateway gave.
async fn call_tool(
    target: &Target,
    mcp: &McpTarget,
    tool: &str,
    arguments: serde_json::Value,
    reason: Option<&str>,
) -> Result<(), String> {
    use serde_json::{Value, json};
    // A held call waits for an approver up to the approval's expiry.
    let http = crate::api::http_client(Some(&target.ca_file), Duration::from_secs(30 * 60))
        .map_err(|e| e.to_string())?;
    let token = (mcp.tokens)()?;
    let post = |body: Value, session: Option<&str>| {
        let mut request = http
            .post(&mcp.url)
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(session) = session {
            request = request
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", MCP_VERSION);
        }
        request.send()
    };
    let opened = post(
        json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": MCP_VERSION,
            "capabilities": {},
            "clientInfo": { "name": "tollgate-demo-agent", "version": env!("CARGO_PKG_VERSION") },
        } }),
        None,
    )
    .await
    .map_err(|e| format!("MCP initialize: {e}"))?;
    let session = opened
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| format!("MCP initialize: {} without a session", opened.status()))?;
    drop(opened);
    post(
        json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
        Some(&session),
    )
    .await
    .map_err(|e| format!("MCP initialized: {e}"))?;
    let mut params =
        json!({ "name": tool, "arguments": arguments, "_meta": { "progressToken": 1 } });
    if let Some(reason) = reason {
        params["_meta"]["reason"] = Value::from(reason);
    }
    let called = post(
        json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params }),
        Some(&session),
    )
    .await;
    let answer = async {
        let response = called.map_err(|e| format!("MCP tools/call {tool}: {e}"))?;
        let stream = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let text = if stream {
            // Progress notifications while it is held, then the answer.
            let mut response = response;
            let mut buffer = String::new();
            let mut answer = None;
            while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                answer = buffer
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim)
                    .find(|d| d.contains("\"id\":2"))
                    .map(str::to_string);
                if answer.is_some() {
                    break;
                }
            }
            answer.ok_or_else(|| {
                format!("MCP tools/call {tool}: the stream ended without an answer")
            })?
        } else {
            response.text().await.map_err(|e| e.to_string())?
        };
        let message: Value = serde_json::from_str(&text)
            .map_err(|e| format!("MCP tools/call {tool}: not JSON-RPC ({e})"))?;
        match message.get("error") {
            Some(error) => Err(error["message"].as_str().unwrap_or("refused").to_string()),
            None => Ok(()),
        }
    }
    .await;
    let _ = http
        .delete(&mcp.url)
        .bearer_auth(&token)
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", MCP_VERSION)
        .send()
        .await;
    answer
}

/// The MCP protocol version the demo agent speaks.
const MCP_VERSION: &str = "2025-11-25";
