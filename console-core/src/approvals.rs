//! The approvals client: the gateway's WebSocket (`tollgate.approvals.v1`)
//! kept open with reconnects and backoff, and the HTTP API as a fallback
//! while the WebSocket is unavailable (polled, and used for decisions).
//! Every message goes into the shared [`Inbox`]; `on_change` hears of it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tollgate::approvals::client::{Client, ClientError, Location};
use tollgate::approvals::protocol::{ClientMessage, SUBPROTOCOL, ServerMessage};

use crate::error::ConsoleError;
use crate::inbox::{Applied, Inbox};
use crate::types::{Decision, Link, Me, RequestView};

/// Where the gateway's API is.
#[derive(Debug, Clone)]
pub struct Target {
    /// `https://HOST:PORT`.
    pub url: String,
    /// A certificate to trust besides the system's (a local gateway's own).
    pub ca_file: Option<PathBuf>,
}

/// A fresh access token for each connection attempt.
pub type TokenSource = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Called after every change to the inbox.
pub type OnChange = Arc<dyn Fn(Applied) + Send + Sync>;

/// How long a decision may take before the console gives up waiting (a
/// little longer than the HTTP client's own 30 s).
const DECIDE_WITHIN: Duration = Duration::from_secs(35);
/// TCP, TLS and the WebSocket upgrade together.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// How often the HTTP fallback polls.
const POLL_EVERY: Duration = Duration::from_secs(3);
/// Keep-alive on a quiet WebSocket.
const PING_EVERY: Duration = Duration::from_secs(20);

/// A running client.
pub struct ApprovalsLink {
    commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
}

enum Command {
    Decide(Decision, oneshot::Sender<Result<RequestView, ConsoleError>>),
}

impl ApprovalsLink {
    /// Connect and keep connected until stopped.
    pub fn start(
        target: Target,
        tokens: TokenSource,
        inbox: Arc<Mutex<Inbox>>,
        on_change: OnChange,
    ) -> ApprovalsLink {
        let (commands, receiver) = mpsc::channel(16);
        let worker = Worker {
            target,
            tokens,
            inbox,
            on_change,
            commands: receiver,
            next_ref: 0,
        };
        ApprovalsLink {
            commands,
            task: tokio::spawn(worker.run()),
        }
    }

    /// A handle for decisions, usable after the caller lets go of the link.
    pub fn decider(&self) -> Decider {
        Decider {
            commands: self.commands.clone(),
        }
    }

    /// Disconnect.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Sends decisions through a link.
#[derive(Clone)]
pub struct Decider {
    commands: mpsc::Sender<Command>,
}

impl Decider {
    /// Approve or deny; the request as it now stands.
    pub async fn decide(&self, decision: Decision) -> Result<RequestView, ConsoleError> {
        if decision.reason.trim().is_empty() {
            return Err(ConsoleError::NoReason);
        }
        let (answer, answered) = oneshot::channel();
        self.commands
            .send(Command::Decide(decision, answer))
            .await
            .map_err(|_| ConsoleError::Unreachable("the approvals client stopped".into()))?;
        match tokio::time::timeout(DECIDE_WITHIN, answered).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ConsoleError::Unreachable(
                "the connection dropped before the gateway answered; the decision may have been recorded, \
                 the inbox shows the request as it stands once it reconnects"
                    .into(),
            )),
            Err(_) => Err(ConsoleError::Unreachable(format!(
                "no answer within {} s; the decision may have been recorded, the inbox shows the request as it stands",
                DECIDE_WITHIN.as_secs()
            ))),
        }
    }
}

impl Drop for ApprovalsLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Exponential backoff with jitter, 0.5 s doubling to 30 s.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Self::FIRST }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MOST: Duration = Duration::from_secs(30);

    /// The next wait (with up to 20% jitter), and double the one after.
    pub fn wait(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MOST);
        let jitter = rand::random_range(0.0..0.2);
        base.mul_f64(1.0 + jitter)
    }

    /// Connected: start again from the shortest wait.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

type Socket = WebSocketStream<TlsStream<TcpStream>>;

struct Worker {
    target: Target,
    tokens: TokenSource,
    inbox: Arc<Mutex<Inbox>>,
    on_change: OnChange,
    commands: mpsc::Receiver<Command>,
    next_ref: u64,
}

/// Why a connection attempt or session ended.
#[derive(Default)]
struct Ended {
    why: String,
    /// The gateway refused the token or the approver: no point hurrying back.
    refused: bool,
    /// The session was live (its snapshot arrived): reconnect from the shortest wait.
    was_live: bool,
    /// The token expired: reconnect now with a fresh one.
    token_expired: bool,
    /// The identity is not an approver here (403): the inbox says so and
    /// checks again now and then (group membership may change).
    forbidden: bool,
}

impl Worker {
    async fn run(mut self) {
        let mut backoff = Backoff::default();
        loop {
            self.link("connecting", None);
            let ended = match self.token() {
                Err(why) => Ended {
                    why,
                    refused: true,
                    ..Ended::default()
                },
                Ok(token) => match tokio::time::timeout(CONNECT_WITHIN, self.connect(&token)).await
                {
                    Err(_) => Ended {
                        why: format!(
                            "no answer from {} within {} s",
                            self.target.url,
                            CONNECT_WITHIN.as_secs()
                        ),
                        ..Ended::default()
                    },
                    Ok(Err(ended)) => ended,
                    Ok(Ok(socket)) => self.session(socket).await,
                },
            };
            if ended.was_live {
                backoff.reset();
            }
            if ended.token_expired {
                continue;
            }
            let mut wait = backoff.wait();
            if ended.refused {
                wait = wait.max(Duration::from_secs(10));
            }
            if ended.forbidden {
                wait = Duration::from_secs(300);
            }
            self.fallback(&ended, wait).await;
        }
    }

    fn token(&self) -> Result<String, String> {
        (self.tokens)()
    }

    fn link(&self, state: &str, detail: Option<String>) {
        let link = Link {
            state: state.into(),
            detail,
            url: Some(self.target.url.clone()),
        };
        let changed = self.inbox.lock().expect("inbox").set_link(link);
        if changed {
            (self.on_change)(Applied {
                changed: true,
                ..Applied::default()
            });
        }
    }

    fn apply(&self, message: ServerMessage) {
        let applied = self.inbox.lock().expect("inbox").apply(message);
        if applied.changed || !applied.to_notify.is_empty() || !applied.to_close.is_empty() {
            (self.on_change)(applied);
        }
    }

    async fn connect(&self, token: &str) -> Result<Socket, Ended> {
        let other = |why: String| Ended {
            why,
            ..Ended::default()
        };
        let url = url_of(&self.target.url).map_err(other)?;
        let (host, port) = (url.0, url.1);
        let tls = crate::tls::client_config(self.target.ca_file.as_deref()).map_err(other)?;
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| other(format!("cannot reach {}: {e}", self.target.url)))?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| other(format!("{host}: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| other(format!("TLS with {}: {e}", self.target.url)))?;
        let mut request = format!("wss://{host}:{port}/api/v1/approvals/ws")
            .into_client_request()
            .map_err(|e| other(e.to_string()))?;
        let headers = request.headers_mut();
        headers.insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        headers.insert(
            "Authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| other(e.to_string()))?,
        );
        match tokio_tungstenite::client_async(request, stream).await {
            Ok((socket, _)) => Ok(socket),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                let message = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_string))
                    .unwrap_or(body);
                Err(Ended {
                    why: if status == 403 {
                        message
                    } else {
                        format!("the gateway refused the console ({status}): {message}")
                    },
                    refused: matches!(status, 401 | 403),
                    forbidden: status == 403,
                    ..Ended::default()
                })
            }
            Err(e) => Err(other(format!("WebSocket: {e}"))),
        }
    }

    /// One WebSocket session, until it ends.
    async fn session(&mut self, mut socket: Socket) -> Ended {
        let mut pending: HashMap<String, oneshot::Sender<Result<RequestView, ConsoleError>>> =
            HashMap::new();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut live = false;
        // The gateway's last error without a `ref`: why it is about to close.
        let mut last_error: Option<String> = None;
        let mut last_heard = tokio::time::Instant::now();
        let ended = |why: String, live: bool, code: Option<&str>| Ended {
            refused: matches!(code, Some("unauthenticated" | "forbidden")),
            forbidden: code == Some("forbidden"),
            token_expired: code == Some("token_expired"),
            was_live: live,
            why,
        };
        loop {
            tokio::select! {
                message = socket.next() => {
                    last_heard = tokio::time::Instant::now();
                    let text = match message {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(frame))) => {
                            let why = frame.map(|f| f.reason.to_string()).filter(|r| !r.is_empty())
                                .unwrap_or_else(|| "the gateway closed the connection".into());
                            return ended(why, live, last_error.as_deref());
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return ended(format!("the connection broke: {e}"), live, None),
                        None => return ended("the gateway closed the connection".into(), live, last_error.as_deref()),
                    };
                    let Ok(message) = serde_json::from_str::<ServerMessage>(&text) else {
                        tracing::warn!("the gateway sent a message this console does not understand");
                        continue;
                    };
                    match &message {
                        ServerMessage::Ack { reference: Some(r), request, .. } => {
                            if let (Some(answer), Some(request)) = (pending.remove(r), request) {
                                let _ = answer.send(Ok((**request).clone()));
                            }
                        }
                        ServerMessage::Error { reference: Some(r), code, message } => {
                            if let Some(answer) = pending.remove(r) {
                                let _ = answer.send(Err(ConsoleError::Refused { code: code.clone(), message: message.clone() }));
                            }
                        }
                        ServerMessage::Error { reference: None, code, .. } => last_error = Some(code.clone()),
                        ServerMessage::Snapshot { .. } if !live => {
                            live = true;
                            self.link("live", None);
                        }
                        _ => {}
                    }
                    self.apply(message);
                }
                command = self.commands.recv() => {
                    let Some(Command::Decide(decision, answer)) = command else {
                        return ended("stopped".into(), live, None);
                    };
                    self.next_ref += 1;
                    let reference = format!("c{}", self.next_ref);
                    let message = if decision.approve {
                        ClientMessage::Approve { id: decision.id, reason: decision.reason, window_secs: decision.window_secs, reference: Some(reference.clone()) }
                    } else {
                        ClientMessage::Deny { id: decision.id, reason: decision.reason, reference: Some(reference.clone()) }
                    };
                    let text = serde_json::to_string(&message).expect("client messages encode");
                    if let Err(e) = socket.send(Message::Text(text.into())).await {
                        let _ = answer.send(Err(ConsoleError::Unreachable(e.to_string())));
                        return ended(format!("the connection broke: {e}"), live, None);
                    }
                    pending.insert(reference, answer);
                }
                _ = ping.tick() => {
                    // Every ping is answered: silence this long is a dead connection.
                    if last_heard.elapsed() > PING_EVERY * 2 + Duration::from_secs(5) {
                        return ended(format!("no answer from the gateway for {} s", last_heard.elapsed().as_secs()), live, None);
                    }
                    let text = serde_json::to_string(&ClientMessage::Ping { reference: None }).expect("encodes");
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return ended("the connection broke".into(), live, None);
                    }
                }
            }
        }
    }

    /// Until `wait` has passed: poll the HTTP API and decide over it, so the
    /// inbox keeps working while the WebSocket is unavailable.
    async fn fallback(&mut self, ended: &Ended, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        let client = self.token().ok().and_then(|token| {
            Client::new(
                Location {
                    url: self.target.url.clone(),
                    ca_file: self.target.ca_file.clone(),
                },
                token,
            )
            .ok()
        });
        let retry = |left: Duration| format!("reconnecting in {} s", left.as_secs().max(1));
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            let polled = match &client {
                Some(client) if !ended.refused => client.list().await.ok(),
                _ => None,
            };
            match polled.and_then(|list| {
                // A gateway before 0.2 does not say who is asking.
                let me = list["approver"].as_str().map(|subject| Me {
                    subject: subject.to_string(),
                    issuer: list["issuer"].as_str().unwrap_or_default().to_string(),
                    connections: serde_json::from_value(list["connections"].clone())
                        .unwrap_or_default(),
                });
                Some((
                    serde_json::from_value::<Vec<RequestView>>(list["requests"].clone()).ok()?,
                    serde_json::from_value(list["grants"].clone()).ok()?,
                    me,
                ))
            }) {
                Some((requests, grants, me)) => {
                    let applied = {
                        let mut inbox = self.inbox.lock().expect("inbox");
                        if let Some(me) = me {
                            inbox.set_me(me);
                        }
                        inbox.replace(requests, grants)
                    };
                    self.link(
                        "polling",
                        Some(format!(
                            "WebSocket unavailable ({}); polling over HTTPS",
                            ended.why
                        )),
                    );
                    if applied.changed
                        || !applied.to_notify.is_empty()
                        || !applied.to_close.is_empty()
                    {
                        (self.on_change)(applied);
                    }
                }
                None if ended.forbidden => self.link(
                    "refused",
                    Some(format!("Not an approver at this gateway: {}", ended.why)),
                ),
                None => self.link("down", Some(format!("{}; {}", ended.why, retry(left)))),
            }
            let sleep = tokio::time::sleep(left.min(POLL_EVERY));
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    command = self.commands.recv() => match command {
                        None => return,
                        Some(Command::Decide(decision, answer)) => {
                            let result = match &client {
                                None => Err(ConsoleError::Unreachable(ended.why.clone())),
                                Some(client) => decide_http(client, decision).await,
                            };
                            if let Ok(request) = &result {
                                self.apply(ServerMessage::Decided { request: Box::new(request.clone()) });
                            }
                            let _ = answer.send(result);
                        }
                    }
                }
            }
        }
    }
}

async fn decide_http(client: &Client, decision: Decision) -> Result<RequestView, ConsoleError> {
    let answer = client
        .decide(
            &decision.id,
            decision.approve,
            &decision.reason,
            decision.window_secs.map(Duration::from_secs),
        )
        .await
        .map_err(|e| match e {
            ClientError::Refused { code, message, .. } => ConsoleError::Refused { code, message },
            other => ConsoleError::Unreachable(other.to_string()),
        })?;
    serde_json::from_value(answer["request"].clone())
        .map_err(|e| ConsoleError::Unreachable(format!("the gateway's answer: {e}")))
}

/// Host and port of `https://HOST:PORT`.
fn url_of(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{url}: the approvals API is reached over https://"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (
            host,
            port.parse::<u16>()
                .map_err(|_| format!("{url}: bad port"))?,
        ),
        _ => (authority, 443),
    };
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_thirty_seconds_and_resets() {
        let mut backoff = Backoff::default();
        let waits: Vec<Duration> = (0..10).map(|_| backoff.wait()).collect();
        assert!(waits[0] >= Duration::from_millis(500) && waits[0] < Duration::from_millis(600));
        assert!(waits[1] >= Duration::from_secs(1) && waits[1] < Duration::from_millis(1200));
        assert!(waits[9] >= Duration::from_secs(30) && waits[9] <= Duration::from_secs(36));
        backoff.reset();
        assert!(backoff.wait() < Duration::from_millis(600));
    }

    #[test]
    fn api_urls_give_host_and_port() {
        assert_eq!(
            url_of("https://127.0.0.1:6433").unwrap(),
            ("127.0.0.1".into(), 6433)
        );
        assert_eq!(
            url_of("https://gw.example.com").unwrap(),
            ("gw.example.com".into(), 443)
        );
        assert_eq!(url_of("https://[::1]:7000/").unwrap(), ("::1".into(), 7000));
        assert!(url_of("http://127.0.0.1:6433").is_err());
    }
}
