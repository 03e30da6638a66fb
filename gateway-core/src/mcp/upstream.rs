//! The MCP servers behind the gateway: a [`Server`] is reached over stdio
//! ([`StdioServer`]: a child process the gateway runs, newline-delimited
//! JSON-RPC; spawned on first use, initialized as a client, supervised (a
//! server that exits is started again on the next request), killed with
//! the gateway) or over Streamable HTTP ([`HttpServer`]).
//!
//! The gateway forwards the JSON it checked rather than a typed model of
//! it: masking, the tool pinning and the records need the exact document,
//! and a field the model did not know would otherwise be dropped silently.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;

use crate::config::McpServerConfig;

/// The protocol version the gateway asks its upstreams for.
pub const UPSTREAM_VERSION: &str = "2025-06-18";

/// The longest line the gateway reads from a server (a message).
const MAX_LINE: usize = 16 * 1024 * 1024;

/// An upstream failed to answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// It could not be started or initialized.
    #[error("MCP server '{server}' could not be started: {message}")]
    Start {
        /// The server.
        server: String,
        /// Why.
        message: String,
    },
    /// It exited or closed its output before answering.
    #[error("MCP server '{0}' exited before it answered; it is started again on the next call")]
    Exited(String),
    /// It took too long.
    #[error("MCP server '{0}' did not answer in time")]
    Timeout(String),
    /// Its HTTP endpoint failed or answered something else than MCP.
    #[error("MCP server '{server}': {message}")]
    Http {
        /// The server.
        server: String,
        /// What happened.
        message: String,
    },
}

pub use super::http_upstream::HttpServer;

/// One configured MCP server, whichever way the gateway reaches it.
#[derive(Debug)]
pub struct Server {
    config: McpServerConfig,
    /// The server said its tools changed (`notifications/tools/list_changed`).
    tools_changed: Arc<AtomicBool>,
    transport: Transport,
}

#[derive(Debug)]
enum Transport {
    /// A child process over stdio.
    Stdio(StdioServer),
    /// A URL, over Streamable HTTP.
    Http(HttpServer),
}

impl Server {
    /// A server from its configuration (`url` or `command`); its secrets
    /// (a stdio server's) are read now.
    pub async fn new(config: &McpServerConfig) -> Result<Server, UpstreamError> {
        let tools_changed = Arc::new(AtomicBool::new(false));
        let transport = match config.url {
            Some(_) => Transport::Http(HttpServer::new(config, tools_changed.clone())?),
            None => Transport::Stdio(StdioServer::new(config, tools_changed.clone()).await?),
        };
        Ok(Server {
            config: config.clone(),
            tools_changed,
            transport,
        })
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The OAuth scopes a client's token must carry to use it.
    pub fn scopes(&self) -> &[String] {
        &self.config.scopes
    }

    /// Whether the server said its tools changed since this was last asked.
    pub fn take_tools_changed(&self) -> bool {
        self.tools_changed.swap(false, Ordering::Relaxed)
    }

    /// The server's answer to `initialize` (starting it if needed).
    pub async fn initialized(&self, timeout: Duration) -> Result<Value, UpstreamError> {
        match &self.transport {
            Transport::Stdio(s) => s.initialized(timeout).await,
            Transport::Http(s) => s.initialized(timeout).await,
        }
    }

    /// Send a request and wait for its response (the whole JSON-RPC
    /// message: `result` or `error`).
    pub async fn request(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, UpstreamError> {
        match &self.transport {
            Transport::Stdio(s) => s.request(method, params, timeout).await,
            Transport::Http(s) => s.request(method, params, timeout).await,
        }
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

type Stdin = Arc<tokio::sync::Mutex<ChildStdin>>;

struct Running {
    stdin: Stdin,
    pending: Pending,
    alive: Arc<AtomicBool>,
    /// The server's answer to `initialize`.
    initialized: Value,
    _child: Child,
}

/// One configured MCP server run as a child process.
pub struct StdioServer {
    config: McpServerConfig,
    /// Its secrets, read once at start (the server's own credential).
    secrets: Vec<(String, String)>,
    running: tokio::sync::Mutex<Option<Arc<Running>>>,
    next_id: AtomicU64,
    /// The server said its tools changed (`notifications/tools/list_changed`).
    tools_changed: Arc<AtomicBool>,
}

impl std::fmt::Debug for StdioServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdioServer")
            .field("name", &self.config.name)
            .finish()
    }
}

impl StdioServer {
    /// A server from its configuration; its secrets are read now. A tools
    /// change it announces is noted in `tools_changed`.
    pub async fn new(
        config: &McpServerConfig,
        tools_changed: Arc<AtomicBool>,
    ) -> Result<StdioServer, UpstreamError> {
        let mut secrets = Vec::new();
        for (name, source) in &config.secrets {
            let secret = crate::upstream::credential::read(source)
                .await
                .map_err(|e| UpstreamError::Start {
                    server: config.name.clone(),
                    message: format!("secret {name}: {e}"),
                })?;
            secrets.push((name.clone(), secret.expose().to_string()));
        }
        Ok(StdioServer {
            config: config.clone(),
            secrets,
            running: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
            tools_changed,
        })
    }

    /// The server's answer to `initialize` (starting it if needed).
    pub async fn initialized(&self, timeout: Duration) -> Result<Value, UpstreamError> {
        Ok(self.running(timeout).await?.initialized.clone())
    }

    /// Send a request and wait for its response (the whole JSON-RPC
    /// message: `result` or `error`).
    pub async fn request(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, UpstreamError> {
        let running = self.running(timeout).await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let message = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        self.exchange(&running, id, &message, timeout).await
    }

    async fn exchange(
        &self,
        running: &Running,
        id: u64,
        message: &Value,
        timeout: Duration,
    ) -> Result<Value, UpstreamError> {
        let (tx, rx) = oneshot::channel();
        running
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        // A server that stops reading its input must not hold calls forever.
        let sent = tokio::time::timeout(timeout, send(&running.stdin, message)).await;
        if !matches!(sent, Ok(Ok(()))) {
            running.alive.store(false, Ordering::Relaxed);
            running
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return Err(UpstreamError::Exited(self.config.name.clone()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(UpstreamError::Exited(self.config.name.clone())),
            Err(_) => {
                running
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                // Tell the server the request is abandoned.
                let _ = tokio::time::timeout(Duration::from_secs(1), send(
                    &running.stdin,
                    &json!({
                        "jsonrpc": "2.0",
                        "method": "notifications/cancelled",
                        "params": { "requestId": id, "reason": "the gateway's call timeout passed" },
                    }),
                ))
                .await;
                Err(UpstreamError::Timeout(self.config.name.clone()))
            }
        }
    }

    /// The running process, started (again) if it is not.
    async fn running(&self, timeout: Duration) -> Result<Arc<Running>, UpstreamError> {
        let mut slot = self.running.lock().await;
        if let Some(running) = slot.as_ref()
            && running.alive.load(Ordering::Relaxed)
        {
            return Ok(running.clone());
        }
        *slot = None;
        let running = Arc::new(self.start(timeout).await?);
        *slot = Some(running.clone());
        Ok(running)
    }

    async fn start(&self, timeout: Duration) -> Result<Running, UpstreamError> {
        let failed = |message: String| UpstreamError::Start {
            server: self.config.name.clone(),
            message,
        };
        let (program, args) = self
            .config
            .command
            .split_first()
            .ok_or_else(|| failed("no command".into()))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .env_clear()
            .envs(
                ["PATH", "HOME"]
                    .iter()
                    .filter_map(|k| Some((k, std::env::var(k).ok()?))),
            )
            .envs(&self.config.env)
            .envs(self.secrets.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| failed(format!("{program}: {e}")))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| failed("no stdin".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| failed("no stdout".into()))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| failed("no stderr".into()))?;
        let pending: Pending = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let stdin: Stdin = Arc::new(tokio::sync::Mutex::new(stdin));
        // Requests from the server are refused one by one; a flood beyond
        // this is dropped (the server waits on its own requests, not the gateway).
        let (server_requests, mut asks) = tokio::sync::mpsc::channel::<Value>(64);
        tokio::spawn(read_output(
            self.config.name.clone(),
            stdout,
            pending.clone(),
            alive.clone(),
            server_requests,
            self.tools_changed.clone(),
        ));
        let name = self.config.name.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                // At most 8 KiB a line; the rest of a longer one is read as more lines.
                match (&mut reader).take(8192).read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&line);
                tracing::debug!(server = %name, line = %crate::masking::for_record(text.trim_end()), "MCP server stderr");
            }
        });
        let mut running = Running {
            stdin,
            pending,
            alive,
            initialized: Value::Null,
            _child: child,
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
        let answer = self.exchange(&running, 0, &initialize, timeout).await?;
        let Some(result) = answer.get("result").cloned() else {
            return Err(failed(format!(
                "initialize failed: {}",
                crate::masking::for_record(&answer["error"].to_string())
            )));
        };
        send(
            &running.stdin,
            &json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
        )
        .await
        .map_err(|e| failed(e.to_string()))?;
        running.initialized = result;
        // Requests from the server (sampling, roots, elicitation) are not
        // passed to clients: each gets an error, so the server does not wait.
        let answering = running.stdin.clone();
        tokio::spawn(async move {
            while let Some(ask) = asks.recv().await {
                let reply = json!({
                    "jsonrpc": "2.0",
                    "id": ask["id"],
                    "error": {
                        "code": super::jsonrpc::METHOD_NOT_FOUND,
                        "message": "the gateway does not pass server-to-client requests",
                    },
                });
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), send(&answering, &reply)).await;
            }
        });
        Ok(running)
    }
}

async fn send(stdin: &Stdin, message: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut stdin = stdin.lock().await;
    stdin.write_all(&line).await?;
    stdin.flush().await
}

/// Route the server's output: responses to their waiting requests,
/// requests to the refuser; of the notifications, only a tools change is
/// noted (the next call lists the tools again), the rest are dropped.
async fn read_output(
    name: String,
    stdout: tokio::process::ChildStdout,
    pending: Pending,
    alive: Arc<AtomicBool>,
    server_requests: tokio::sync::mpsc::Sender<Value>,
    tools_changed: Arc<AtomicBool>,
) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await;
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) if line.len() > MAX_LINE => {
                tracing::warn!(server = %name, "MCP server sent a message over 16 MiB; it is stopped");
                break;
            }
            Ok(_) => {}
        }
        let Ok(message) = serde_json::from_slice::<Value>(&line) else {
            tracing::warn!(server = %name, "MCP server wrote a line that is not JSON; ignored");
            continue;
        };
        let is_response = message.get("method").is_none();
        if is_response {
            let Some(id) = message.get("id").and_then(Value::as_u64) else {
                continue;
            };
            let waiting = pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            if let Some(tx) = waiting {
                let _ = tx.send(message);
            }
        } else if message.get("id").is_some() {
            let _ = server_requests.try_send(message);
        } else if message["method"] == "notifications/tools/list_changed" {
            tools_changed.store(true, Ordering::Relaxed);
        }
    }
    alive.store(false, Ordering::Relaxed);
    // Dropping the senders fails every waiting request.
    pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
}
