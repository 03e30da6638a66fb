//! `tollgate mcp-stdio`: a stdio MCP server for clients that only start
//! local servers (desktop assistants), bridged to one server behind a
//! remote gateway's MCP listener. Each line on standard input is a
//! JSON-RPC message POSTed to the gateway with the agent's token; each
//! message the gateway answers (a JSON body, or the events of an SSE
//! stream: progress while a call waits for approval, then its result) is
//! a line on standard output. The session id the gateway gives is kept,
//! and the session is ended when standard input closes.

use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// The longest line read from the client.
const MAX_LINE: u64 = 4 * 1024 * 1024;

/// The bridge could not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BridgeError(String);

struct Bridge {
    http: reqwest::Client,
    url: String,
    token: String,
    session: Mutex<Option<String>>,
    version: Mutex<Option<String>>,
    out: tokio::sync::Mutex<tokio::io::Stdout>,
}

/// Bridge standard input and output to `url` (`https://host:port/mcp/<server>`).
pub async fn run(url: String, token: String, ca_file: Option<&Path>) -> Result<(), BridgeError> {
    let mut builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = ca_file {
        let pem = std::fs::read(ca).map_err(|e| BridgeError(format!("{}: {e}", ca.display())))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| BridgeError(format!("{}: {e}", ca.display())))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    let http = builder.build().map_err(|e| BridgeError(e.to_string()))?;
    let bridge = Arc::new(Bridge {
        http,
        url,
        token,
        session: Mutex::default(),
        version: Mutex::default(),
        out: tokio::sync::Mutex::new(tokio::io::stdout()),
    });
    let mut input = BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        line.clear();
        let read = (&mut input)
            .take(MAX_LINE + 1)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| BridgeError(format!("standard input: {e}")))?;
        if read == 0 {
            break;
        }
        if line.len() as u64 > MAX_LINE {
            bridge
                .write(&super::jsonrpc::error(
                    &Value::Null,
                    super::jsonrpc::INVALID_REQUEST,
                    "a message over 4 MiB: not sent",
                ))
                .await;
            continue;
        }
        let Ok(message) = serde_json::from_slice::<Value>(&line) else {
            bridge
                .write(&super::jsonrpc::error(
                    &Value::Null,
                    super::jsonrpc::PARSE_ERROR,
                    "not a JSON-RPC message: not sent",
                ))
                .await;
            continue;
        };
        if message["method"] == "initialize" {
            // Later messages need the session it opens: answered first.
            bridge.post(message).await;
        } else {
            let bridge = bridge.clone();
            tasks.spawn(async move { bridge.post(message).await });
        }
    }
    while tasks.join_next().await.is_some() {}
    let session = bridge
        .session
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(session) = session {
        let _ = bridge
            .http
            .delete(&bridge.url)
            .bearer_auth(&bridge.token)
            .header("Mcp-Session-Id", session)
            .send()
            .await;
    }
    Ok(())
}

impl Bridge {
    async fn write(&self, message: &Value) {
        let mut line = message.to_string().into_bytes();
        line.push(b'\n');
        let mut out = self.out.lock().await;
        let _ = out.write_all(&line).await;
        let _ = out.flush().await;
    }

    /// Send one message; write what comes back. Errors become JSON-RPC
    /// errors for the request's id, so the client can tell which failed.
    async fn post(&self, message: Value) {
        let id = message.get("id").cloned();
        let mut request = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("Accept", "application/json, text/event-stream")
            .json(&message);
        if let Some(session) = self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            request = request.header("Mcp-Session-Id", session);
        }
        if let Some(version) = self
            .version
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            request = request.header("MCP-Protocol-Version", version);
        }
        let failed = |message: String| {
            id.as_ref()
                .map(|id| super::jsonrpc::error(id, super::jsonrpc::INTERNAL_ERROR, message))
        };
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                if let Some(error) = failed(format!("the gateway cannot be reached: {e}")) {
                    self.write(&error).await;
                }
                return;
            }
        };
        if let Some(session) = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
        {
            *self.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(session.to_string());
        }
        let stream = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !stream {
            let status = response.status();
            let body = response.bytes().await.unwrap_or_default();
            if body.is_empty() {
                return;
            }
            match serde_json::from_slice::<Value>(&body) {
                Ok(mut answer) => {
                    // The gateway answers transport-level refusals with id null.
                    if answer["id"].is_null()
                        && let Some(id) = &id
                    {
                        answer["id"] = id.clone();
                    }
                    if let Some(version) = answer
                        .pointer("/result/protocolVersion")
                        .and_then(Value::as_str)
                        && message["method"] == "initialize"
                    {
                        *self.version.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(version.to_string());
                    }
                    self.write(&answer).await;
                }
                Err(_) => {
                    if let Some(error) = failed(format!("the gateway answered HTTP {status}")) {
                        self.write(&error).await;
                    }
                }
            }
            return;
        }
        // Server-sent events: each event's data is one message.
        let mut buffer = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => buffer.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => {
                    if let Some(error) = failed(format!("the gateway's stream broke off: {e}")) {
                        self.write(&error).await;
                    }
                    return;
                }
            }
            while let Some(end) = find_event_end(&buffer) {
                let event: Vec<u8> = buffer.drain(..end).collect();
                let data: Vec<&str> = std::str::from_utf8(&event)
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if data.is_empty() {
                    continue;
                }
                if let Ok(message) = serde_json::from_str::<Value>(&data.join("\n")) {
                    self.write(&message).await;
                }
            }
            if buffer.len() > MAX_LINE as usize {
                if let Some(error) = failed("the gateway sent an event over 4 MiB".into()) {
                    self.write(&error).await;
                }
                return;
            }
        }
    }
}

/// Where the first complete SSE event in `buffer` ends (after its blank line).
fn find_event_end(buffer: &[u8]) -> Option<usize> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn events_end_at_a_blank_line() {
        assert_eq!(super::find_event_end(b"data: {}\n\ndata: x"), Some(10));
        assert_eq!(super::find_event_end(b"data: {}\r\n\r\n"), Some(12));
        assert_eq!(super::find_event_end(b"data: {}\n"), None);
    }
}
