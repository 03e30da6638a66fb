//! An approver's console as the tests drive it: the gateway's approval
//! WebSocket over verified TLS, with the approver's token, and helpers
//! that read like the protocol (`expect("requested")`, `approve(id, ...)`).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::TestGateway;

/// How the console authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer` on the upgrade request.
    Header,
    /// A first `auth` message (what a browser does).
    Message,
}

/// A connected console.
pub struct Console {
    socket: WebSocketStream<TlsStream<TcpStream>>,
}

/// Why a console did not connect.
#[derive(Debug)]
pub enum ConnectError {
    /// The upgrade was refused with this HTTP status and body.
    Http(u16, String),
    /// Anything else.
    Other(String),
}

impl TestGateway {
    /// The API's address (the test config must set `[api] listen`).
    pub fn api_addr(&self) -> std::net::SocketAddr {
        self.running
            .as_ref()
            .and_then(|r| r.api_addr)
            .expect("the gateway's API is on")
    }

    /// The API's base URL.
    pub fn api_url(&self) -> String {
        format!("https://localhost:{}", self.api_addr().port())
    }

    /// Connect an approver's console with `token`.
    pub async fn console(&self, token: &str, auth: Auth) -> Result<Console, ConnectError> {
        connect_console(
            self.api_addr(),
            &self.data_dir.join("gateway-cert.pem"),
            token,
            auth,
        )
        .await
    }
}

/// Connect a console to the API at `addr`, trusting the certificate in `ca`.
pub async fn connect_console(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    token: &str,
    auth: Auth,
) -> Result<Console, ConnectError> {
    {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| ConnectError::Other(e.to_string()))?;
        let connector =
            tokio_rustls::TlsConnector::from(std::sync::Arc::new(crate::tls_trusting(ca)));
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| ConnectError::Other(e.to_string()))?;
        let mut request = format!("wss://localhost:{}/api/v1/approvals/ws", addr.port())
            .into_client_request()
            .expect("request");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("tollgate.approvals.v1"),
        );
        if auth == Auth::Header {
            request.headers_mut().insert(
                "Authorization",
                HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
            );
        }
        let (socket, _) = tokio_tungstenite::client_async(request, tls)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(response) => ConnectError::Http(
                    response.status().as_u16(),
                    response
                        .body()
                        .as_ref()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_default(),
                ),
                e => ConnectError::Other(e.to_string()),
            })?;
        let mut console = Console { socket };
        if auth == Auth::Message {
            console
                .send(json!({ "type": "auth", "token": token }))
                .await;
        }
        Ok(console)
    }
}

impl Console {
    /// Send a message.
    pub async fn send(&mut self, message: Value) {
        self.socket
            .send(Message::Text(message.to_string().into()))
            .await
            .expect("send to the console socket");
    }

    /// Send raw text.
    pub async fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::Text(text.to_string().into()))
            .await
            .expect("send to the console socket");
    }

    /// The next message (JSON), or `None` once the socket is closed. Close
    /// frames come back as `{"type":"closed","code":..,"reason":..}`.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.socket.next())
                .await
                .expect("a console message within 10 s")?;
            match message {
                Ok(Message::Text(text)) => {
                    return Some(serde_json::from_str(&text).expect("JSON message"));
                }
                Ok(Message::Close(frame)) => {
                    return Some(json!({
                        "type": "closed",
                        "code": frame.as_ref().map(|f| u16::from(f.code)),
                        "reason": frame.as_ref().map(|f| f.reason.to_string()),
                    }));
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Skip to the next message of `kind` (failing on an `error` unless that is asked for).
    pub async fn expect(&mut self, kind: &str) -> Value {
        loop {
            let message = self
                .next()
                .await
                .unwrap_or_else(|| panic!("the console closed while waiting for {kind}"));
            if message["type"] == kind {
                return message;
            }
            assert_ne!(
                message["type"], "error",
                "an error while waiting for {kind}: {message}"
            );
        }
    }

    /// Wait for the next `requested` event; the request's id.
    pub async fn requested_id(&mut self) -> String {
        self.expect("requested").await["request"]["id"]
            .as_str()
            .expect("a request id")
            .to_string()
    }

    /// Approve request `id`, once or for `window_secs`; returns the answer (`ack` or `error`).
    pub async fn approve(&mut self, id: &str, reason: &str, window_secs: Option<u64>) -> Value {
        let mut message = json!({ "type": "approve", "id": id, "reason": reason, "ref": "r1" });
        if let Some(window) = window_secs {
            message["window_secs"] = json!(window);
        }
        self.send(message).await;
        self.answer().await
    }

    /// Deny request `id`; returns the answer.
    pub async fn deny(&mut self, id: &str, reason: &str) -> Value {
        self.send(json!({ "type": "deny", "id": id, "reason": reason, "ref": "r1" }))
            .await;
        self.answer().await
    }

    /// The next `ack` or `error`.
    pub async fn answer(&mut self) -> Value {
        loop {
            let message = self.next().await.expect("an answer");
            if message["type"] == "ack" || message["type"] == "error" {
                return message;
            }
        }
    }
}
