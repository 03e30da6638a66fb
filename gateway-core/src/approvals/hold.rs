//! A session's approval hold, the same for every adapter: at most one
//! request held at a time; the adapter asks again about the same request
//! until its approval is decided; a window grant in force lets a matching
//! request through without a new one; a cancel withdraws what is held.
//!
//! The adapter says what needs approval ([`Need`]) and maps the
//! [`HoldOutcome`] to its protocol (PostgreSQL: a NoticeResponse while held,
//! an ErrorResponse when refused; MCP: progress notifications, a JSON-RPC
//! error).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::{Approvals, Ask, HoldSlot, Scope, State, Ticket, Withdrawal};
use crate::stage::{Reason, Refusal, Ruling};

/// What needs approval, as the adapter describes it.
#[derive(Debug)]
pub struct Need<'a> {
    /// What identifies the request when the adapter asks again (the
    /// statement's text, the tool call): the same key with the same scope
    /// is the same request.
    pub key: &'a str,
    /// The held access that decided, described (`COPY on public.payments`).
    pub what: &'a str,
    /// What the caller calls the request: `statement`, `tool call`.
    pub noun: &'a str,
    /// The holding policy's id.
    pub policy: &'a str,
    /// The holding policy's reason.
    pub policy_reason: &'a str,
    /// Who, where, which held accesses, how many approvers.
    pub scope: Scope,
}

/// What becomes of a request that needs approval.
pub enum HoldOutcome {
    /// Approved, or a window grant covers it: send it upstream.
    Forward,
    /// Still pending, asked again early: wait for this, then ask again.
    Wait(Pin<Box<dyn Future<Output = ()> + Send>>),
    /// Newly held: tell the caller `notice`, wait for `until`, ask again.
    Hold {
        /// What the caller is told: the request id, who was notified, when it expires.
        notice: String,
        /// Resolves once the request is decided, expires or is withdrawn.
        until: Pin<Box<dyn Future<Output = ()> + Send>>,
    },
    /// Not to run: denied, expired, withdrawn or cancelled, or nothing can hold it.
    Refused(Refusal),
}

impl std::fmt::Debug for HoldOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HoldOutcome::Forward => f.write_str("Forward"),
            HoldOutcome::Wait(_) => f.write_str("Wait"),
            HoldOutcome::Hold { notice, .. } => {
                f.debug_struct("Hold").field("notice", notice).finish()
            }
            HoldOutcome::Refused(r) => f.debug_tuple("Refused").field(r).finish(),
        }
    }
}

struct Held {
    key: String,
    ticket: Ticket,
}

/// One session's hold.
pub struct Hold {
    service: Option<Arc<Approvals>>,
    held: Option<Held>,
    slot: Arc<HoldSlot>,
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold")
            .field("held", &self.held.as_ref().map(|h| h.ticket.id()))
            .finish()
    }
}

impl Hold {
    /// A session's hold on `service` (none: requests that need approval are refused).
    pub fn new(service: Option<Arc<Approvals>>) -> Hold {
        Hold {
            service,
            held: None,
            slot: Arc::new(HoldSlot::default()),
        }
    }

    /// The held request, for the cancel path.
    pub fn slot(&self) -> Arc<HoldSlot> {
        self.slot.clone()
    }

    /// Let go of the held request (withdrawn if still pending): the caller
    /// moved on to another request, or the session ended.
    pub fn release(&mut self) {
        if let Some(held) = self.held.take() {
            self.slot.clear();
            held.ticket.withdraw(Withdrawal::Disconnected);
        }
    }

    /// The request let through is on its way: a one-time approval is used up.
    pub fn used(&mut self) {
        self.held = None;
        self.slot.clear();
    }

    /// The request asked about was refused (by another stage, or by the
    /// adapter): a decided approval of it is used up; a pending one stays.
    pub fn refused(&mut self) {
        if self
            .held
            .as_ref()
            .is_some_and(|h| h.ticket.state() != State::Pending)
        {
            self.used();
        }
    }

    /// Decide a request that needs approval. `ruling` gets how its approval
    /// ended (request, state, approvers, grant); `ask` describes a new
    /// request when one is made.
    pub fn ask(
        &mut self,
        need: Need<'_>,
        ruling: Option<&mut Ruling>,
        ask: impl FnOnce(Scope) -> Ask,
    ) -> HoldOutcome {
        let Need {
            key,
            what,
            noun,
            policy,
            policy_reason,
            scope,
        } = need;
        let needed = format!(
            "{} approver{}",
            scope.approvals,
            if scope.approvals == 1 { "" } else { "s" }
        );
        let Some(service) = self.service.clone() else {
            return HoldOutcome::Refused(Refusal::new(
                Reason::Forbidden,
                format!(
                    "{what} needs approval: {policy_reason} (policy \"{policy}\", {needed} needed); this gateway \
                     holds requests for approval only when its API is on ([api] listen)"
                ),
            ));
        };
        // The held request asked again. The same key with other accesses
        // (a changed search_path) or a stricter rule is a new request.
        if let Some(held) = self.held.take_if(|h| {
            h.key == key
                && h.ticket.view().accesses == scope.accesses
                && h.ticket.view().approvals_needed >= scope.approvals
        }) {
            return self.asked_again(held, &service, what, noun, policy, ruling);
        }
        self.release();
        if let Some(grant) = service.use_grant(&scope) {
            if let Some(ruling) = ruling {
                ruling.approval = Some(grant.request.clone());
                ruling.grant = Some(grant.id.clone());
                ruling.approval_state = Some("granted".into());
                ruling.decided_by = grant.approved_by.clone();
            }
            return HoldOutcome::Forward;
        }
        let connection = scope.connection.clone();
        let ticket = service.request(ask(scope));
        let view = ticket.view();
        let watchers = service.watchers(&connection);
        let notified = match (watchers.len(), service.replicated()) {
            (0, false) => "no approver is connected to a console right now; the request waits for one".to_string(),
            (0, true) => "no approver is connected to this gateway's console; approvers on the other replicas see it".to_string(),
            (_, false) => format!("notified {}", watchers.join(", ")),
            (_, true) => format!("notified {} and the approvers on the other replicas", watchers.join(", ")),
        };
        let notice = format!(
            "{what} needs approval: {policy_reason} (policy \"{policy}\", {needed}). \
             Approval request {id} is waiting; {notified}. It expires at {expires} \
             ({minutes} min). Cancel the {noun} to withdraw it.",
            id = view.id,
            expires = view.expires_at,
            minutes = view.expires_in_secs.div_ceil(60),
        );
        self.slot.set(&service, ticket.id());
        let until = Box::pin(ticket.settled());
        self.held = Some(Held {
            key: key.to_string(),
            ticket,
        });
        HoldOutcome::Hold { notice, until }
    }

    /// The held request asked again: still waiting, or how it ended.
    fn asked_again(
        &mut self,
        held: Held,
        service: &Approvals,
        what: &str,
        noun: &str,
        policy: &str,
        ruling: Option<&mut Ruling>,
    ) -> HoldOutcome {
        let id = held.ticket.id().to_string();
        let state = held.ticket.state();
        if state == State::Pending {
            let until = Box::pin(held.ticket.settled());
            self.held = Some(held);
            return HoldOutcome::Wait(until);
        }
        let expires_at = held.ticket.view().expires_at.clone();
        if let Some(ruling) = ruling {
            ruling.approval = Some(id.clone());
            ruling.approval_state = Some(state.as_str().to_string());
            ruling.decided_by = match &state {
                State::Approved => service
                    .get(&id)
                    .map(|v| v.approvals.into_iter().map(|v| v.approver).collect())
                    .unwrap_or_default(),
                State::Denied { by, .. } => vec![by.clone()],
                _ => Vec::new(),
            };
        }
        if state == State::Approved && self.slot.cancelled() {
            // Cancelled after the approval, before it went upstream.
            self.slot.clear();
            return HoldOutcome::Refused(Refusal::new(
                Reason::Withdrawn,
                format!(
                    "canceling {noun} due to user request (approval request {id} was approved, but the {noun} had not run yet)"
                ),
            ));
        }
        if state == State::Approved {
            // Kept until the request is on its way (other stages may wait first).
            self.held = Some(held);
        } else {
            self.slot.clear();
        }
        match state {
            State::Pending | State::Approved => HoldOutcome::Forward,
            State::Denied { by, reason } => HoldOutcome::Refused(Refusal::new(
                Reason::ApprovalDenied,
                format!(
                    "{what} refused: approval request {id} was denied by {by}: {reason} (policy \"{policy}\")"
                ),
            )),
            State::Expired => HoldOutcome::Refused(Refusal::new(
                Reason::ApprovalExpired,
                format!(
                    "{what} needs approval and approval request {id} expired at {expires_at} without a decision \
                     (policy \"{policy}\"); run the {noun} again to ask again, and tell an approver"
                ),
            )),
            State::Withdrawn(_) => HoldOutcome::Refused(Refusal::new(
                Reason::Withdrawn,
                format!("canceling {noun} due to user request (approval request {id} withdrawn)"),
            )),
        }
    }
}
