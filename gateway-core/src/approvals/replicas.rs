//! Several gateway replicas share their approval requests through the
//! PostgreSQL store (`[audit] recordings = "postgres://..."`), with
//! LISTEN/NOTIFY on the channel `tollgate_approvals`.
//!
//! A request lives on the replica that holds its statement (its holder).
//! Every replica publishes what happens to its requests and grants; the
//! others mirror pending requests (for their consoles) and grants (so a
//! grant lets the requester through on any replica). A decision taken on
//! another replica is forwarded to the holder, which applies it (the rules,
//! the audit record, the release) and answers; the deciding replica has
//! already checked the approver's token and the policy's leave.
//!
//! NOTIFY payloads are at most 8000 bytes: request views are kept well
//! under that (statements shown to approvers are cut at 2000 characters).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::{mpsc, oneshot, watch};

use super::protocol::{GrantView, RequestView};
use super::{Approvals, DecideError, Verdict};
use crate::identity::{Identity, PrincipalKind};

/// The channel replicas talk on.
pub const CHANNEL: &str = "tollgate_approvals";

/// How long a forwarded decision waits for the holder's answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// One message between replicas.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Wire {
    /// The sending replica.
    pub from: String,
    #[serde(flatten)]
    pub body: Body,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum Body {
    /// Something happened to one of the sender's requests or grants.
    Request { request: RequestView },
    /// A grant was revoked.
    GrantRevoked { grant: GrantView },
    /// Decide `id` (held by `to`) as `approver`.
    Decide {
        to: String,
        call: u64,
        id: String,
        approver: Approver,
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
            kind: PrincipalKind::Person,
            expires_at: 0,
        }
    }
}

/// This replica's link to the others.
pub struct Link {
    /// This replica's id.
    pub id: String,
    outbox: mpsc::UnboundedSender<Wire>,
    calls: Mutex<HashMap<u64, oneshot::Sender<Result<RequestView, DecideError>>>>,
    next_call: std::sync::atomic::AtomicU64,
    /// Whether the listener is connected (decisions fail fast when not).
    pub connected: watch::Receiver<bool>,
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
            body,
        });
    }

    /// Forward a decision to `holder` and wait for its answer.
    pub(super) async fn forward(
        &self,
        holder: &str,
        id: &str,
        approver: &Identity,
        verdict: Verdict,
    ) -> Result<RequestView, DecideError> {
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
            approve: verdict.approve,
            reason: verdict.reason,
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
/// `url` (`target`: the same without its password, for messages).
pub async fn connect(
    approvals: &Arc<Approvals>,
    url: &str,
    target: &str,
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
        outbox,
        calls: Mutex::new(HashMap::new()),
        next_call: std::sync::atomic::AtomicU64::new(1),
        connected,
    });
    // Publisher: one message after the other, in order.
    let publishing = pool.clone();
    tokio::spawn(async move {
        while let Some(wire) = queue.recv().await {
            let Ok(payload) = serde_json::to_string(&wire) else {
                continue;
            };
            if payload.len() >= 8000 {
                tracing::error!(
                    bytes = payload.len(),
                    "approvals: a message is too large for NOTIFY; other replicas miss it"
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
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    let _ = up.send(true);
                    let Some(approvals) = weak.upgrade() else {
                        return;
                    };
                    match serde_json::from_str::<Wire>(notification.payload()) {
                        Ok(wire) if wire.from != me.id => receive(&approvals, &me, wire),
                        Ok(_) => {}
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
            approve,
            reason,
            window_secs,
        } if to == link.id => {
            let verdict = Verdict {
                approve,
                reason,
                window: window_secs.map(Duration::from_secs),
            };
            // The forwarding replica checked the token and the policy's leave.
            let result = approvals
                .decide(&approver.identity(), &|_| true, &id, verdict)
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
