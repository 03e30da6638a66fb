//! Just-in-time approvals: a request the policy holds for a person's
//! sign-off waits here until approvers decide, it expires, or the requester
//! withdraws it.
//!
//! The stage knows nothing of SQL or of any wire protocol. An adapter
//! describes what is held ([`Ask`]) and waits on the [`Ticket`] it gets
//! back; consoles and scripts decide through [`Approvals::decide`] (the
//! API's WebSocket and HTTP endpoints, `tollgate approvals`). Rules:
//!
//! - nobody approves their own request;
//! - a request needs as many distinct approvers as its policy says
//!   (`@approvals("2")`); one denial ends it;
//! - an approval is one-time (the held statement runs once) or for a window,
//!   during which matching requests of the same identity, connection and
//!   scope pass without a new request; a window grant can be revoked;
//! - a pending request expires (`[approvals] expire_secs`).
//!
//! Every request, vote, decision, expiry, withdrawal, grant use and
//! revocation is an audit event (`approval.*`): the approval records a QSA
//! asks for. See `docs/approvals.md`.

pub mod client;
pub mod hold;
pub mod protocol;
pub mod replicas;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use serde_json::json;
use tokio::sync::{broadcast, watch};

use crate::audit::event::{Auditor, Event, Outcome};
use crate::clock::rfc3339;
use crate::identity::{Identity, PrincipalKind};
use crate::masking::for_record;
use crate::policy::Principal;
pub use protocol::{ApprovalEvent, GrantView, RequestView, Vote};

/// Decided requests kept for listing (the audit log keeps them all).
const RECENT: usize = 200;

/// How the approval stage is set up (`[approvals]`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// A pending request expires after this long.
    pub expire: Duration,
    /// Approvers must have used multi-factor authentication.
    pub require_mfa: bool,
    /// The longest window an approval may grant.
    pub max_window: Duration,
}

/// Who asks, as approvers see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, ts_rs::TS)]
pub struct Requester {
    /// Token subject.
    pub subject: String,
    /// Token issuer.
    pub issuer: String,
    /// Groups from the token.
    pub groups: Vec<String>,
    /// Multi-factor authentication.
    pub mfa: bool,
    /// `person` or `agent`.
    pub kind: PrincipalKind,
}

impl From<&Principal> for Requester {
    fn from(p: &Principal) -> Requester {
        Requester {
            subject: p.subject.clone(),
            issuer: p.issuer.clone(),
            groups: p.groups.clone(),
            mfa: p.mfa,
            kind: if p.agent {
                PrincipalKind::Agent
            } else {
                PrincipalKind::Person
            },
        }
    }
}

/// What an approval covers: who, where, and which held accesses. A window
/// grant lets a later request through when its held accesses are a subset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Scope {
    /// Requester subject.
    pub subject: String,
    /// Requester issuer.
    pub issuer: String,
    /// The connection (or MCP server).
    pub connection: String,
    /// The held accesses, e.g. `COPY on public.payments` (sorted, each once).
    pub accesses: Vec<String>,
    /// Approvers the holding rules ask for: a grant made with fewer never
    /// covers a request that needs more.
    pub approvals: u32,
}

impl Scope {
    fn covers(&self, other: &Scope) -> bool {
        self.subject == other.subject
            && self.issuer == other.issuer
            && self.connection == other.connection
            && self.approvals >= other.approvals
            && other.accesses.iter().all(|a| self.accesses.contains(a))
    }
}

/// A request for approval, as the adapter describes it. Every text here
/// must already be fit for a record (literals replaced, card data masked).
#[derive(Debug, Clone)]
pub struct Ask {
    /// Who asks.
    pub requester: Requester,
    /// From where (client address).
    pub origin: String,
    /// The session (recording id), if recorded.
    pub session: Option<String>,
    /// What is held, by whom and where.
    pub scope: Scope,
    /// The statement or tool call, literals masked.
    pub statement: String,
    /// Kinds of access (`read`, `copy_out` ...).
    pub actions: Vec<String>,
    /// Everything the statement touches.
    pub resources: Vec<String>,
    /// Those of `resources` that hold cardholder data.
    pub cardholder_resources: Vec<String>,
    /// It touches cardholder data.
    pub cardholder: bool,
    /// Rows the upstream estimates, when known.
    pub row_estimate: Option<i64>,
    /// The deciding policy's id.
    pub policy: String,
    /// The deciding policy's reason.
    pub policy_reason: String,
    /// Approvers needed.
    pub approvals_needed: u32,
    /// The requester's own reason (a `/* reason: ... */` comment or
    /// `SET tollgate.reason`).
    pub reason: Option<String>,
}

/// Where a request stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Waiting for approvers.
    Pending,
    /// Approved: the held request may run.
    Approved,
    /// Denied by an approver.
    Denied {
        /// The approver's subject.
        by: String,
        /// The approver's reason.
        reason: String,
    },
    /// Nobody decided in time.
    Expired,
    /// The requester withdrew it.
    Withdrawn(Withdrawal),
}

impl State {
    /// The state's name in the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied { .. } => "denied",
            State::Expired => "expired",
            State::Withdrawn(_) => "withdrawn",
        }
    }
}

/// Why a request was withdrawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawal {
    /// The client cancelled the statement (CancelRequest, Ctrl-C).
    Cancelled,
    /// The client went away.
    Disconnected,
}

impl Withdrawal {
    fn as_str(self) -> &'static str {
        match self {
            Withdrawal::Cancelled => "the client cancelled the statement",
            Withdrawal::Disconnected => "the client disconnected",
        }
    }
}

/// An approver's decision.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Approve (true) or deny.
    pub approve: bool,
    /// Why, in the approver's words (required).
    pub reason: String,
    /// Approve for a window rather than once.
    pub window: Option<Duration>,
}

/// Why a decision was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    /// No such request (or grant).
    #[error("no pending request or grant has the id {0}; list them with `tollgate approvals list`")]
    NotFound(String),
    /// It is no longer pending.
    #[error("request {id} is {state} already; nothing to decide")]
    NotPending {
        /// The request.
        id: String,
        /// Its state.
        state: String,
    },
    /// The replica holding the request cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// The replica holding the request refused the decision.
    #[error("{message}")]
    Remote {
        /// Its code.
        code: &'static str,
        /// Its message.
        message: String,
    },
    /// The approver asked for it.
    #[error("{0} made this request and cannot approve it; another approver has to")]
    SelfApproval(String),
    /// This approver voted already.
    #[error("{0} approved this request already; it needs another approver")]
    AlreadyVoted(String),
    /// The approver may not decide it.
    #[error("{0}")]
    Forbidden(String),
    /// The decision is malformed.
    #[error("{0}")]
    Invalid(String),
}

impl DecideError {
    /// A stable code for the API.
    pub fn code(&self) -> &'static str {
        match self {
            DecideError::NotFound(_) => "not_found",
            DecideError::NotPending { .. } => "not_pending",
            DecideError::SelfApproval(_) => "self_approval",
            DecideError::AlreadyVoted(_) => "already_voted",
            DecideError::Forbidden(_) => "forbidden",
            DecideError::Invalid(_) => "bad_request",
            DecideError::Unavailable(_) => "unavailable",
            DecideError::Remote { code, .. } => code,
        }
    }

    /// The static code for a code another replica sent.
    fn known(code: &str) -> &'static str {
        [
            "not_found",
            "not_pending",
            "self_approval",
            "already_voted",
            "forbidden",
            "bad_request",
        ]
        .into_iter()
        .find(|c| *c == code)
        .unwrap_or("unavailable")
    }
}

struct Entry {
    view: RequestView,
    scope: Scope,
    expires: Instant,
    state: watch::Sender<State>,
    /// Windows asked for by the approving votes (None: one-time).
    windows: Vec<Option<Duration>>,
}

struct Grant {
    view: GrantView,
    scope: Scope,
    until: Instant,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<String, Entry>,
    /// Pending requests held by other replicas: id -> (holder, view, expiry).
    remote: HashMap<String, (String, RequestView, Instant)>,
    /// Grants revoked (never mirrored back in).
    revoked: HashSet<String>,
    recent: VecDeque<RequestView>,
    grants: HashMap<String, Grant>,
    /// Approvers connected to a console: id -> (subject, connections they may approve).
    watching: HashMap<u64, (String, Vec<String>)>,
    next_watcher: u64,
}

/// The approval stage, shared by every session and the API.
pub struct Approvals {
    settings: Settings,
    auditor: Auditor,
    inner: Mutex<Inner>,
    events: broadcast::Sender<ApprovalEvent>,
    /// The other replicas, when requests are shared.
    link: OnceLock<Arc<replicas::Link>>,
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approvals")
            .field("settings", &self.settings)
            .finish()
    }
}

/// A short random id.
fn new_id(prefix: &str) -> String {
    crate::id::random::<9>(prefix)
}

fn at(instant: Instant) -> String {
    let now = Instant::now();
    let wall = if instant >= now {
        SystemTime::now() + (instant - now)
    } else {
        SystemTime::now() - (now - instant)
    };
    rfc3339(wall)
}

impl Approvals {
    /// The stage, recording to `auditor`.
    pub fn new(settings: Settings, auditor: Auditor) -> Arc<Approvals> {
        let (events, _) = broadcast::channel(1024);
        Arc::new(Approvals {
            settings,
            auditor,
            inner: Mutex::new(Inner::default()),
            events,
            link: OnceLock::new(),
        })
    }

    /// Share requests with other replicas through `link`.
    pub fn link(&self, link: Arc<replicas::Link>) {
        let _ = self.link.set(link);
    }

    /// Tell local consoles and the other replicas.
    fn emit(&self, event: ApprovalEvent) {
        if let Some(link) = self.link.get() {
            link.publish(match &event {
                ApprovalEvent::GrantRevoked(grant) => replicas::Body::GrantRevoked {
                    grant: grant.clone(),
                },
                ApprovalEvent::Requested(r)
                | ApprovalEvent::Voted(r)
                | ApprovalEvent::Decided(r)
                | ApprovalEvent::Expired(r)
                | ApprovalEvent::Withdrawn(r) => replicas::Body::Request { request: r.clone() },
            });
        }
        let _ = self.events.send(event);
    }

    /// Another replica's request changed: mirror it for local consoles, and
    /// its grant so that it holds here too.
    pub(crate) fn mirror(&self, holder: &str, view: RequestView) {
        let event = {
            let mut inner = self.lock();
            if view.state == "pending" && inner.recent.iter().any(|r| r.id == view.id) {
                // Ended already: a replayed announcement changes nothing.
                return;
            }
            if view.state == "pending" {
                let left = Duration::from_secs(view.expires_in_secs).min(self.settings.expire);
                let expires = Instant::now() + left;
                let first = !inner.remote.contains_key(&view.id);
                inner
                    .remote
                    .insert(view.id.clone(), (holder.to_string(), view.clone(), expires));
                if first && view.approvals.is_empty() {
                    ApprovalEvent::Requested(view)
                } else {
                    ApprovalEvent::Voted(view)
                }
            } else {
                // A grant only for a request this holder announced as pending.
                let announced = inner
                    .remote
                    .remove(&view.id)
                    .is_some_and(|(h, _, _)| h == holder);
                if let Some(grant) = &view.grant
                    && announced
                    && view.state == "approved"
                    && grant.request == view.id
                    && !inner.revoked.contains(&grant.id)
                {
                    // Until the grant's own end (an absolute time: a replay cannot stretch it).
                    let until = crate::clock::parse_rfc3339(&grant.until).unwrap_or(0);
                    let now = replicas::now_ms() / 1000;
                    let left = Duration::from_secs(until.saturating_sub(now).max(0) as u64)
                        .min(self.settings.max_window);
                    inner.grants.insert(
                        grant.id.clone(),
                        Grant {
                            scope: Scope {
                                subject: view.requester.subject.clone(),
                                issuer: view.requester.issuer.clone(),
                                connection: view.connection.clone(),
                                accesses: view.accesses.clone(),
                                approvals: view.approvals_needed,
                            },
                            until: Instant::now() + left,
                            view: grant.clone(),
                        },
                    );
                }
                remember(&mut inner, view.clone());
                match view.state.as_str() {
                    "expired" => ApprovalEvent::Expired(view),
                    "withdrawn" => ApprovalEvent::Withdrawn(view),
                    _ => ApprovalEvent::Decided(view),
                }
            }
        };
        let _ = self.events.send(event);
    }

    /// Another replica revoked a grant.
    pub(crate) fn mirror_revoked(&self, grant: GrantView) {
        let mut inner = self.lock();
        inner.grants.remove(&grant.id);
        remember_revoked(&mut inner, &grant.id);
        drop(inner);
        let _ = self.events.send(ApprovalEvent::GrantRevoked(grant));
    }

    /// Decide request `id` wherever it is held: here, or on the replica
    /// holding it (the decision is forwarded there and its answer awaited).
    pub async fn decide_anywhere(
        &self,
        approver: &Identity,
        origin: IpAddr,
        may_approve: &(dyn Fn(&str) -> bool + Sync),
        id: &str,
        verdict: Verdict,
    ) -> Result<RequestView, DecideError> {
        let remote = {
            let inner = self.lock();
            match inner.pending.contains_key(id) {
                true => None,
                false => inner
                    .remote
                    .get(id)
                    .map(|(h, v, _)| (h.clone(), v.connection.clone())),
            }
        };
        let (Some((holder, connection)), Some(link)) = (remote, self.link.get()) else {
            return self.decide(approver, may_approve, id, verdict);
        };
        if !may_approve(&connection) {
            return Err(not_an_approver_on(approver, &connection));
        }
        needs_reason(&verdict)?;
        link.forward(&holder, id, approver, origin, verdict).await
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Events for consoles, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ApprovalEvent> {
        self.events.subscribe()
    }

    /// An approver's console is connected; dropping the handle says it left.
    pub fn watch(self: &Arc<Self>, subject: &str, connections: &[String]) -> Watching {
        let mut inner = self.lock();
        inner.next_watcher += 1;
        let id = inner.next_watcher;
        inner
            .watching
            .insert(id, (subject.to_string(), connections.to_vec()));
        Watching {
            approvals: self.clone(),
            id,
        }
    }

    /// Subjects of the approvers connected to this gateway right now who
    /// may decide requests on `connection` (each once).
    pub fn watchers(&self, connection: &str) -> Vec<String> {
        let mut who: Vec<String> = self
            .lock()
            .watching
            .values()
            .filter(|(_, connections)| connections.iter().any(|c| c == connection))
            .map(|(subject, _)| subject.clone())
            .collect();
        who.sort();
        who.dedup();
        who
    }

    /// Whether other replicas share the requests (their approvers see them too).
    pub fn replicated(&self) -> bool {
        self.link.get().is_some()
    }

    /// Pending requests and grants in force, then recently decided requests.
    pub fn snapshot(&self) -> (Vec<RequestView>, Vec<GrantView>) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.grants.retain(|_, g| g.until > now);
        let mut requests: Vec<RequestView> = inner
            .pending
            .values()
            .map(|e| e.view.refreshed(e.expires))
            .collect();
        inner.remote.retain(|_, (_, _, expires)| *expires > now);
        requests.extend(inner.remote.values().map(|(_, view, expires)| {
            let mut view = view.clone();
            view.expires_in_secs = expires.saturating_duration_since(now).as_secs();
            view
        }));
        requests.sort_by(|a, b| a.requested_at.cmp(&b.requested_at));
        requests.extend(inner.recent.iter().rev().cloned());
        let mut grants: Vec<GrantView> = inner
            .grants
            .values()
            .map(|g| g.view.refreshed(g.until))
            .collect();
        grants.sort_by(|a, b| a.granted_at.cmp(&b.granted_at));
        (requests, grants)
    }

    /// One request, pending or recently decided.
    pub fn get(&self, id: &str) -> Option<RequestView> {
        let inner = self.lock();
        if let Some(e) = inner.pending.get(id) {
            return Some(e.view.refreshed(e.expires));
        }
        if let Some((_, view, expires)) = inner.remote.get(id) {
            return Some(view.refreshed(*expires));
        }
        inner.recent.iter().find(|v| v.id == id).cloned()
    }

    /// A grant in force that covers `scope`: using it is on record.
    pub fn use_grant(&self, scope: &Scope) -> Option<GrantView> {
        let now = Instant::now();
        let view = {
            let mut inner = self.lock();
            inner.grants.retain(|_, g| g.until > now);
            let grant = inner.grants.values().find(|g| g.scope.covers(scope))?;
            grant.view.refreshed(grant.until)
        };
        self.auditor.record_later(
            Event::new("approval.grant_used", Outcome::Success)
                .with(
                    "actor",
                    json!({ "subject": scope.subject, "issuer": scope.issuer }),
                )
                .resource(json!({ "connection": scope.connection, "accesses": scope.accesses }))
                .with("grant", view.id.clone())
                .with("request", view.request.clone()),
        );
        Some(view)
    }

    /// Hold a request for approval. The ticket follows its state; dropping
    /// a ticket that is still pending withdraws the request.
    pub fn request(self: &Arc<Self>, ask: Ask) -> Ticket {
        let id = new_id("ap_");
        let now = Instant::now();
        let expires = now + self.settings.expire;
        let view = RequestView {
            id: id.clone(),
            state: "pending".into(),
            requester: ask.requester.clone(),
            origin: ask.origin.clone(),
            session: ask.session.clone(),
            connection: ask.scope.connection.clone(),
            statement: shown(&for_record(&ask.statement)),
            actions: ask.actions.clone(),
            accesses: ask.scope.accesses.clone(),
            resources: ask.resources.clone(),
            cardholder_resources: ask.cardholder_resources.clone(),
            cardholder: ask.cardholder,
            row_estimate: ask.row_estimate,
            policy: ask.policy.clone(),
            policy_reason: ask.policy_reason.clone(),
            reason: ask.reason.as_deref().map(for_record),
            requested_at: crate::clock::now_rfc3339(),
            notified: self.watchers(&ask.scope.connection),
            expires_at: at(expires),
            expires_in_secs: self.settings.expire.as_secs(),
            approvals_needed: ask.approvals_needed.max(1),
            approvals: Vec::new(),
            decided_by: None,
            decision_reason: None,
            decided_at: None,
            grant: None,
        };
        let (state, watching) = watch::channel(State::Pending);
        self.lock().pending.insert(
            id.clone(),
            Entry {
                view: view.clone(),
                scope: ask.scope.clone(),
                expires,
                state,
                windows: Vec::new(),
            },
        );
        self.auditor.record_later(
            Event::new("approval.requested", Outcome::Success)
                .with("actor", json!(view.requester))
                .origin(&view.origin)
                .resource(json!({ "connection": view.connection, "accesses": view.accesses }))
                .with("request", id.clone())
                .with("session", view.session.clone())
                .with("statement", view.statement.clone())
                .with("policy", view.policy.clone())
                .with("approvals_needed", view.approvals_needed)
                .with("row_estimate", view.row_estimate)
                .with("reason", view.reason.clone())
                .with("notified", view.notified.clone()),
        );
        self.emit(ApprovalEvent::Requested(view.clone()));
        let approvals = self.clone();
        let expiring = id.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(expires.into()).await;
            approvals.expire(&expiring);
        });
        Ticket {
            approvals: self.clone(),
            view,
            state: watching,
        }
    }

    /// Decide request `id` as `approver`. `may_approve` is the policy's
    /// answer on whether this approver may decide requests of the request's
    /// connection (the `approve` action).
    pub fn decide(
        &self,
        approver: &Identity,
        may_approve: &dyn Fn(&str) -> bool,
        id: &str,
        verdict: Verdict,
    ) -> Result<RequestView, DecideError> {
        needs_reason(&verdict)?;
        let reason = reason_text(&verdict.reason);
        if let Some(window) = verdict.window
            && (window.is_zero() || window > self.settings.max_window)
        {
            return Err(DecideError::Invalid(format!(
                "a window must be between 1 second and {} seconds (approvals.max_window_secs)",
                self.settings.max_window.as_secs()
            )));
        }
        if self.settings.require_mfa && !approver.mfa {
            return Err(DecideError::Forbidden(
                "deciding approval requests needs multi-factor authentication: log in again with MFA".into(),
            ));
        }
        let mut inner = self.lock();
        let Some(entry) = inner.pending.get_mut(id) else {
            drop(inner);
            return Err(match self.get(id) {
                Some(view) if view.state != "pending" => DecideError::NotPending {
                    id: id.to_string(),
                    state: view.state,
                },
                Some(_) => DecideError::Unavailable(format!(
                    "request {id} is held by another gateway replica, which this one cannot reach"
                )),
                None => DecideError::NotFound(id.to_string()),
            });
        };
        if !may_approve(&entry.view.connection) {
            return Err(not_an_approver_on(approver, &entry.view.connection));
        }
        let requester = &entry.view.requester;
        if requester.subject == approver.subject && requester.issuer == approver.issuer {
            return Err(DecideError::SelfApproval(approver.subject.clone()));
        }
        if entry
            .view
            .approvals
            .iter()
            .any(|v| v.approver == approver.subject && v.issuer == approver.issuer)
        {
            return Err(DecideError::AlreadyVoted(approver.subject.clone()));
        }
        let now = crate::clock::now_rfc3339();
        let vote = Vote {
            approver: approver.subject.clone(),
            issuer: approver.issuer.clone(),
            reason: reason.clone(),
            at: now.clone(),
            window_secs: verdict.window.map(|w| w.as_secs()),
        };
        let audit = |kind: &str, view: &RequestView| {
            Event::new(kind, Outcome::Success)
                .actor(approver)
                .resource(json!({ "connection": view.connection, "accesses": view.accesses }))
                .with("request", view.id.clone())
                .with("requester", json!(view.requester))
                .with("decision", if verdict.approve { "approve" } else { "deny" })
                .with("reason", reason.clone())
                .with("window_secs", verdict.window.map(|w| w.as_secs()))
        };
        if verdict.approve {
            entry.view.approvals.push(vote);
            entry.windows.push(verdict.window);
            if (entry.view.approvals.len() as u32) < entry.view.approvals_needed {
                let view = entry.view.refreshed(entry.expires);
                self.auditor.record_later(
                    audit("approval.vote", &view)
                        .with("approvals", view.approvals.len())
                        .with("approvals_needed", view.approvals_needed),
                );
                self.emit(ApprovalEvent::Voted(view.clone()));
                return Ok(view);
            }
        }
        let mut entry = inner.pending.remove(id).expect("looked up above");
        entry.view.decided_by = Some(approver.subject.clone());
        entry.view.decision_reason = Some(reason.clone());
        entry.view.decided_at = Some(now.clone());
        entry.view.expires_in_secs = 0;
        let state = if verdict.approve {
            entry.view.state = "approved".into();
            // The narrowest window any approver gave; one-time if one asked for that.
            let window = entry
                .windows
                .iter()
                .copied()
                .collect::<Option<Vec<_>>>()
                .and_then(|w| w.into_iter().min());
            if let Some(window) = window {
                let grant_id = new_id("gr_");
                let until = Instant::now() + window;
                let view = GrantView {
                    id: grant_id.clone(),
                    request: id.to_string(),
                    requester: entry.view.requester.clone(),
                    connection: entry.scope.connection.clone(),
                    accesses: entry.scope.accesses.clone(),
                    approved_by: entry
                        .view
                        .approvals
                        .iter()
                        .map(|v| v.approver.clone())
                        .collect(),
                    approvals_needed: entry.view.approvals_needed,
                    granted_at: now.clone(),
                    until: at(until),
                    remaining_secs: window.as_secs(),
                };
                entry.view.grant = Some(view.clone());
                inner.grants.insert(
                    grant_id,
                    Grant {
                        view,
                        scope: entry.scope.clone(),
                        until,
                    },
                );
            }
            State::Approved
        } else {
            entry.view.state = "denied".into();
            State::Denied {
                by: approver.subject.clone(),
                reason: reason.clone(),
            }
        };
        let view = entry.view.clone();
        remember(&mut inner, view.clone());
        drop(inner);
        // On record before the held request is released.
        self.auditor.record_later(
            audit("approval.decided", &view)
                .with("approved_by", json!(view.approvals))
                .with("grant", view.grant.as_ref().map(|g| g.id.clone()))
                .with("grant_until", view.grant.as_ref().map(|g| g.until.clone())),
        );
        self.emit(ApprovalEvent::Decided(view.clone()));
        let _ = entry.state.send(state);
        Ok(view)
    }

    /// Revoke a window grant.
    pub fn revoke(
        &self,
        approver: &Identity,
        may_approve: &dyn Fn(&str) -> bool,
        grant: &str,
        reason: &str,
    ) -> Result<GrantView, DecideError> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(DecideError::Invalid(
                "revoking a grant needs a reason".into(),
            ));
        }
        let mut inner = self.lock();
        let Some(found) = inner.grants.get(grant) else {
            return Err(DecideError::NotFound(grant.to_string()));
        };
        if !may_approve(&found.view.connection) {
            return Err(DecideError::Forbidden(format!(
                "{} may not manage grants on connection \"{}\"",
                approver.subject, found.view.connection
            )));
        }
        let found = inner.grants.remove(grant).expect("looked up above");
        remember_revoked(&mut inner, grant);
        drop(inner);
        let view = found.view.refreshed(found.until);
        self.auditor.record_later(
            Event::new("approval.grant_revoked", Outcome::Success)
                .actor(approver)
                .resource(json!({ "connection": view.connection, "accesses": view.accesses }))
                .with("grant", view.id.clone())
                .with("request", view.request.clone())
                .with("requester", json!(view.requester))
                .with("reason", for_record(reason)),
        );
        self.emit(ApprovalEvent::GrantRevoked(view.clone()));
        Ok(view)
    }

    /// End a pending request without a decision; whether it was pending.
    fn close(&self, id: &str, state: State) -> bool {
        let Some(mut entry) = self.lock().pending.remove(id) else {
            return false;
        };
        entry.view.state = state.as_str().into();
        entry.view.expires_in_secs = 0;
        entry.view.decided_at = Some(crate::clock::now_rfc3339());
        let view = entry.view.clone();
        remember(&mut self.lock(), view.clone());
        let (kind, event) = match &state {
            State::Expired => ("approval.expired", ApprovalEvent::Expired(view.clone())),
            _ => ("approval.withdrawn", ApprovalEvent::Withdrawn(view.clone())),
        };
        let mut record = Event::new(kind, Outcome::Success)
            .with("actor", json!(view.requester))
            .origin(&view.origin)
            .resource(json!({ "connection": view.connection, "accesses": view.accesses }))
            .with("request", id.to_string())
            .with("approvals", view.approvals.len());
        if let State::Withdrawn(why) = &state {
            record = record.with("reason", why.as_str());
        } else {
            record = record
                .with("actor", json!({ "subject": "gateway" }))
                .with("requester", json!(view.requester))
                .origin("gateway");
        }
        self.auditor.record_later(record);
        self.emit(event);
        let _ = entry.state.send(state);
        true
    }

    /// The request ran out of time.
    fn expire(&self, id: &str) {
        self.close(id, State::Expired);
    }

    /// The requester withdrew request `id`; whether it was still pending.
    pub fn withdraw(&self, id: &str, why: Withdrawal) -> bool {
        self.close(id, State::Withdrawn(why))
    }
}

/// At most this much of a statement is shown (and sent to other replicas).
const SHOWN: usize = 2000;

fn shown(text: &str) -> String {
    if text.len() <= SHOWN {
        return text.to_string();
    }
    let mut end = SHOWN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} ... ({} more bytes)", &text[..end], text.len() - end)
}

/// A decision without a reason is refused.
fn needs_reason(verdict: &Verdict) -> Result<(), DecideError> {
    if verdict.reason.trim().is_empty() {
        return Err(DecideError::Invalid(
            "a decision needs a reason: say why (it goes to the requester and the audit log)"
                .into(),
        ));
    }
    Ok(())
}

/// The refusal of an approver the policy does not let decide on `connection`.
fn not_an_approver_on(approver: &Identity, connection: &str) -> DecideError {
    DecideError::Forbidden(format!(
        "{} may not decide approval requests on connection \"{connection}\" (no policy permits `approve` there)",
        approver.subject
    ))
}

/// A reason as records keep it: masked, at most 500 characters.
pub(crate) fn reason_text(reason: &str) -> String {
    for_record(reason.trim()).chars().take(500).collect()
}

fn remember_revoked(inner: &mut Inner, grant: &str) {
    if inner.revoked.len() > 10_000 {
        inner.revoked.clear();
    }
    inner.revoked.insert(grant.to_string());
}

fn remember(inner: &mut Inner, view: RequestView) {
    if inner.recent.len() >= RECENT {
        inner.recent.pop_front();
    }
    inner.recent.push_back(view);
}

/// An approver's console, connected.
pub struct Watching {
    approvals: Arc<Approvals>,
    id: u64,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.approvals.lock().watching.remove(&self.id);
    }
}

/// A held request, as its requester follows it.
pub struct Ticket {
    approvals: Arc<Approvals>,
    view: RequestView,
    state: watch::Receiver<State>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("id", &self.view.id).finish()
    }
}

impl Ticket {
    /// The request id.
    pub fn id(&self) -> &str {
        &self.view.id
    }

    /// The request as it was made.
    pub fn view(&self) -> &RequestView {
        &self.view
    }

    /// Where it stands now.
    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// Resolves once the request is no longer pending.
    pub fn settled(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut state = self.state.clone();
        async move {
            let _ = state.wait_for(|s| *s != State::Pending).await;
        }
    }

    /// Withdraw the request (if still pending).
    pub fn withdraw(&self, why: Withdrawal) {
        self.approvals.withdraw(&self.view.id, why);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if *self.state.borrow() == State::Pending {
            self.approvals
                .withdraw(&self.view.id, Withdrawal::Disconnected);
        }
    }
}

/// A session's held request, reachable from the cancel path.
#[derive(Debug, Default)]
pub struct HoldSlot(Mutex<Slot>);

#[derive(Debug, Default)]
struct Slot {
    held: Option<(Arc<Approvals>, String)>,
    /// A cancel came for the held statement after its request was decided
    /// but before it went upstream: it must not run.
    cancelled: bool,
}

impl HoldSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session now holds request `id`.
    pub fn set(&self, approvals: &Arc<Approvals>, id: &str) {
        *self.lock() = Slot {
            held: Some((approvals.clone(), id.to_string())),
            cancelled: false,
        };
    }

    /// The session holds nothing.
    pub fn clear(&self) {
        *self.lock() = Slot::default();
    }

    /// The client cancelled: withdraw the held request (or, if it was
    /// decided already, keep its statement from running). Returns the
    /// request's id, if a statement was held. One step under the slot's
    /// lock, so a concurrent `clear` comes wholly before or after it.
    pub fn cancel(&self) -> Option<String> {
        let mut slot = self.lock();
        let (approvals, id) = slot.held.clone()?;
        if !approvals.withdraw(&id, Withdrawal::Cancelled) {
            slot.cancelled = true;
        }
        Some(id)
    }

    /// Whether the held statement was cancelled after its request was decided.
    pub fn cancelled(&self) -> bool {
        self.lock().cancelled
    }
}

#[cfg(test)]
mod tests;
