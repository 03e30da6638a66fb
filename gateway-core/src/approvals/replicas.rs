//! Several gateway replicas share their approval requests through the
//! PostgreSQL store (`[audit] recordings = "postgres://..."`), with
//! LISTEN/NOTIFY on the channel `tollgate_approvals`.
//!
//! A request lives on the replica that holds its statement (its holder).
//! Every replica publishes what happens to its requests and grants; the
//! others mirror pending requests (for their consoles) and grants (so a
//! grant lets the requester through on any replica). A decision taken on
//! another replica is forwarded to the holder, which applies it (the rules,
//! the audit record, the release) and answers.
//!
//! Anyone who can log in to the store's database can LISTEN and NOTIFY, so
//! every message is authenticated with HMAC-SHA-256 under a key the
//! replicas share (`[approvals] replica_key`) and carries its time: a
//! forged, altered, repeated or stale (older than 30 s) message is dropped.
//! The deciding replica checks the approver's token; the holder checks the
//! policy's `approve` permission again with its own policy, and the rules
//! (MFA, self-approval, N of M). A replica accepts a grant only for a
//! request the same holder announced as pending, caps it at its own
//! `max_window_secs`, and never brings back a revoked grant.
//!
//! NOTIFY payloads are at most 8000 bytes: request views are kept well
//! under that (statements shown to approvers are cut at 2000 characters,
//! reasons at 500); a larger message is not sent, and the log says so.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::{mpsc, oneshot, watch};

use super::protocol::{GrantView, RequestView};
use super::{Approvals, DecideError, Verdict};
use crate::identity::{Identity, PrincipalKind};
use crate::policy::{PolicyHandle, Principal};

/// The channel replicas talk on.
pub const CHANNEL: &str = "tollgate_approvals";

/// How long a forwarded decision waits for the holder's answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// Messages older than this are replays (or from a clock far off): dropped.
const FRESH_FOR_MS: i64 = 30_000;

/// The largest NOTIFY payload PostgreSQL takes (8000 bytes), with room.
const MAX_PAYLOAD: usize = 7900;

/// One message between replicas.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Wire {
    /// The sending replica.
    pub from: String,
    /// When it was sent (Unix milliseconds).
    pub at_ms: i64,
    #[serde(flatten)]
    pub body: Body,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum Body {
    /// Something happened to one of the sender's requests.
    Request { request: RequestView },
    /// A grant was revoked.
    GrantRevoked { grant: GrantView },
    /// Decide `id` (held by `to`) as `approver`.
    Decide {
        to: String,
        call: u64,
        id: String,
        approver: Approver,
        /// Where the approver connected from (for the holder's policy check).
        origin: IpAddr,
        approve: bool,
        reason: String,
        window_secs: Option<u64>,
    },
    /// The holder's answer to a forwarded decision.
    Answer {
        to: String,
        call: u64,
        result: Result<RequestView, (String, String)>,
    },
}

pub(super) use crate::clock::now_ms;

/// The parts of an approver's identity the holder needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Approver {
    subject: String,
    issuer: String,
    groups: Vec<String>,
    mfa: bool,
}

impl From<&Identity> for Approver {
    fn from(i: &Identity) -> Approver {
        Approver {
            subject: i.subject.clone(),
            issuer: i.issuer.clone(),
            groups: i.groups.clone(),
            mfa: i.mfa,
        }
    }
}

impl Approver {
    fn identity(&self) -> Identity {
        Identity {
            subject: self.subject.clone(),
            issuer: self.issuer.clone(),
            groups: self.groups.clone(),
            mfa: self.mfa,
            // Agents never get this far: the deciding replica refuses them.
            kind: PrincipalKind::Person,
            expires_at: 0,
            scopes: Vec::new(),
        }
    }
}

/// The key replicas authenticate their messages with.
#[derive(Clone)]
pub struct ReplicaKey(Vec<u8>);

impl std::fmt::Debug for ReplicaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplicaKey(..)")
    }
}

impl ReplicaKey {
    /// A key from its secret (at least 16 bytes).
    pub fn new(secret: &[u8]) -> Result<ReplicaKey, String> {
        if secret.len() < 16 {
            return Err(
                "the replica key must be at least 16 bytes; generate one with `openssl rand -base64 32`"
                    .into(),
            );
        }
        Ok(ReplicaKey(secret.to_vec()))
    }

    fn mac(&self, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(body);
        mac
    }

    /// `base64(tag).json`
    fn seal(&self, json: &str) -> String {
        let tag = self.mac(json.as_bytes()).finalize().into_bytes();
        format!(
            "{}.{json}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(tag)
        )
    }

    /// The JSON of a sealed payload, if its tag is right (compared in constant time).
    fn open<'p>(&self, payload: &'p str) -> Option<&'p str> {
        let (tag, json) = payload.split_once('.')?;
        let tag = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(tag)
            .ok()?;
        self.mac(json.as_bytes()).verify_slice(&tag).ok()?;
        Some(json)
    }
}

/// This replica's link to the others.
pub struct Link {
    /// This replica's id.
    pub id: String,
    key: ReplicaKey,
    policy: Option<PolicyHandle>,
    outbox: mpsc::UnboundedSender<Wire>,
    calls: Mutex<HashMap<u64, oneshot::Sender<Result<RequestView, DecideError>>>>,
    next_call: std::sync::atomic::AtomicU64,
    /// Whether the listener is connected (forwarded decisions fail fast when not).
    connected: watch::Receiver<bool>,
}

/// Why replication could not start.
#[derive(Debug, thiserror::Error)]
#[error("approvals: cannot share requests through {target}: {source}")]
pub struct LinkError {
    target: String,
    source: sqlx::Error,
}

impl Link {
    /// Publish a message (in order, by one task).
    pub(super) fn publish(&self, body: Body) {
        let _ = self.outbox.send(Wire {
            from: self.id.clone(),
            at_ms: now_ms(),
            body,
        });
    }

    /// Forward a decision to `holder` and wait for its answer.
    pub(super) async fn forward(
        &self,
        holder: &str,
        id: &str,
        approver: &Identity,
        origin: IpAddr,
        verdict: Verdict,
    ) -> Result<RequestView, DecideError> {
        if !*self.connected.borrow() {
            return Err(DecideError::Unavailable(format!(
                "request {id} is held by another gateway replica and this one has lost its link to the others; \
                 try again shortly"
            )));
        }
        let call = self
            .next_call
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(call, tx);
        self.publish(Body::Decide {
            to: holder.to_string(),
            call,
            id: id.to_string(),
            approver: Approver::from(approver),
            origin,
            approve: verdict.approve,
            reason: super::reason_text(&verdict.reason),
            window_secs: verdict.window.map(|w| w.as_secs()),
        });
        let answer = tokio::time::timeout(ANSWER_WITHIN, rx).await;
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&call);
        match answer {
            Ok(Ok(result)) => result,
            _ => Err(DecideError::Unavailable(format!(
                "the gateway replica holding request {id} did not answer within {} s; try again",
                ANSWER_WITHIN.as_secs()
            ))),
        }
    }

    fn answered(&self, call: u64, result: Result<RequestView, DecideError>) {
        if let Some(tx) = self
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&call)
        {
            let _ = tx.send(result);
        }
    }
}

/// Connect `approvals` to the other replicas through the PostgreSQL at
/// `url` (`target`: the same without its password, for messages). The
/// holder checks forwarded decisions against `policy`.
pub async fn connect(
    approvals: &Arc<Approvals>,
    url: &str,
    target: &str,
    key: ReplicaKey,
    policy: Option<PolicyHandle>,
) -> Result<Arc<Link>, LinkError> {
    let error = |source| LinkError {
        target: target.to_string(),
        source,
    };
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(error)?;
    let mut listener = PgListener::connect_with(&pool).await.map_err(error)?;
    listener.listen(CHANNEL).await.map_err(error)?;
    let (outbox, mut queue) = mpsc::unbounded_channel::<Wire>();
    let (up, connected) = watch::channel(true);
    let link = Arc::new(Link {
        id: super::new_id("gw_"),
        key,
        policy,
        outbox,
        calls: Mutex::new(HashMap::new()),
        next_call: std::sync::atomic::AtomicU64::new(1),
        connected,
    });
    // Publisher: one message after the other, in order.
    let publishing = pool.clone();
    let sealing = link.key.clone();
    tokio::spawn(async move {
        while let Some(wire) = queue.recv().await {
            let Ok(json) = serde_json::to_string(&wire) else {
                continue;
            };
            let payload = sealing.seal(&json);
            if payload.len() > MAX_PAYLOAD {
                tracing::error!(
                    bytes = payload.len(),
                    "approvals: a message is too large for NOTIFY; the other replicas miss it"
                );
                continue;
            }
            let sent = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(&payload)
                .execute(&publishing)
                .await;
            if let Err(e) = sent {
                tracing::error!(error = %e, "approvals: publishing to the other replicas failed");
            }
        }
    });
    // Listener: apply what the others publish.
    let weak: Weak<Approvals> = Arc::downgrade(approvals);
    let me = link.clone();
    tokio::spawn(async move {
        // Tags of the messages taken in the last FRESH_FOR_MS: a message seen
        // twice is a replay.
        let mut seen: HashMap<String, i64> = HashMap::new();
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    let _ = up.send(true);
                    let Some(approvals) = weak.upgrade() else {
                        return;
                    };
                    let Some(json) = me.key.open(notification.payload()) else {
                        tracing::warn!(
                            target: "tollgate::audit",
                            "approvals: dropped a message on {CHANNEL} that is not signed with the replica key"
                        );
                        continue;
                    };
                    let now = now_ms();
                    seen.retain(|_, at| now - *at <= 2 * FRESH_FOR_MS);
                    let tag = notification.payload().split('.').next().unwrap_or_default();
                    if seen.insert(tag.to_string(), now).is_some() {
                        tracing::warn!(
                            target: "tollgate::audit",
                            "approvals: dropped a replayed message from another replica"
                        );
                        continue;
                    }
                    match serde_json::from_str::<Wire>(json) {
                        Ok(wire) if wire.from == me.id => {}
                        Ok(wire) if (now_ms() - wire.at_ms).abs() > FRESH_FOR_MS => {
                            tracing::warn!(
                                target: "tollgate::audit",
                                from = %wire.from,
                                "approvals: dropped a stale (replayed?) message from another replica"
                            );
                        }
                        Ok(wire) => receive(&approvals, &me, wire),
                        Err(e) => {
                            tracing::warn!(error = %e, "approvals: unreadable message from another replica")
                        }
                    }
                }
                Ok(None) => {
                    // The connection dropped; sqlx reconnects on the next call.
                    let _ = up.send(false);
                    tracing::warn!("approvals: lost the link to the other replicas; reconnecting");
                }
                Err(e) => {
                    let _ = up.send(false);
                    tracing::warn!(error = %e, "approvals: listening for other replicas failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            if weak.strong_count() == 0 {
                return;
            }
        }
    });
    Ok(link)
}

fn receive(approvals: &Arc<Approvals>, link: &Link, wire: Wire) {
    match wire.body {
        Body::Request { request } => approvals.mirror(&wire.from, request),
        Body::GrantRevoked { grant } => approvals.mirror_revoked(grant),
        Body::Decide {
            to,
            call,
            id,
            approver,
            origin,
            approve,
            reason,
            window_secs,
        } if to == link.id => {
            let verdict = Verdict {
                approve,
                reason,
                window: window_secs.map(Duration::from_secs),
            };
            let identity = approver.identity();
            let principal = Principal::of(&identity);
            let may = |connection: &str| {
                link.policy
                    .as_ref()
                    .is_some_and(|p| p.current().may_approve(&principal, connection, origin))
            };
            let result = approvals
                .decide(&identity, &may, &id, verdict)
                .map_err(|e| (e.code().to_string(), e.to_string()));
            link.publish(Body::Answer {
                to: wire.from,
                call,
                result,
            });
        }
        Body::Answer { to, call, result } if to == link.id => {
            link.answered(
                call,
                result.map_err(|(code, message)| DecideError::Remote {
                    code: DecideError::known(&code),
                    message,
                }),
            );
        }
        Body::Decide { .. } | Body::Answer { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_messages_open_only_untouched_and_with_the_same_key() {
        let key = ReplicaKey::new(b"0123456789abcdef-shared").unwrap();
        let sealed = key.seal(r#"{"kind":"x"}"#);
        assert_eq!(key.open(&sealed), Some(r#"{"kind":"x"}"#));
        let forged = sealed.replace("\"x\"", "\"y\"");
        assert_eq!(key.open(&forged), None);
        let other = ReplicaKey::new(b"another key of 16+ bytes").unwrap();
        assert_eq!(other.open(&sealed), None);
        assert_eq!(key.open(r#"{"kind":"x"}"#), None, "unsigned");
        assert!(ReplicaKey::new(b"short").is_err());
    }
}
