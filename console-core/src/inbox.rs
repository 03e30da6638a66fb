//! The inbox's state: the gateway's messages applied in order, and what the
//! window shows of it (newest first, and why a request cannot be decided by
//! the signed-in approver). Pure, so it is tested message by message.

use std::collections::{HashMap, HashSet};

use tollgate::approvals::protocol::ServerMessage;

use crate::types::{GrantView, InboxItem, InboxView, Link, Me, RequestView};

/// Decided requests kept for the "recent decisions" list.
const RECENT: usize = 50;

/// The inbox.
#[derive(Debug, Default)]
pub struct Inbox {
    me: Option<Me>,
    link: Link,
    requests: HashMap<String, RequestView>,
    grants: Vec<GrantView>,
    /// When each request first arrived here (breaks ties in the order).
    arrived: HashMap<String, u64>,
    arrivals: u64,
    /// Requests the desktop was told of (each once).
    notified: HashSet<String>,
    /// Of those, the ones whose notification may still be on screen.
    shown: HashSet<String>,
}

/// What applying a message changed, for notifications.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The view changed.
    pub changed: bool,
    /// Requests that arrived just now and the signed-in approver can decide.
    pub to_notify: Vec<RequestView>,
    /// Requests notified earlier that are settled now: take their notifications down.
    pub to_close: Vec<String>,
}

impl Inbox {
    /// Apply one message from the gateway.
    pub fn apply(&mut self, message: ServerMessage) -> Applied {
        let mut applied = Applied {
            changed: true,
            ..Applied::default()
        };
        match message {
            ServerMessage::Hello {
                approver,
                issuer,
                connections,
                ..
            } => {
                self.me = Some(Me {
                    subject: approver,
                    issuer,
                    connections,
                });
            }
            ServerMessage::Snapshot {
                requests, grants, ..
            } => return self.replace(requests, grants),
            ServerMessage::Requested { request } => {
                self.upsert(*request);
            }
            ServerMessage::Voted { request }
            | ServerMessage::Decided { request }
            | ServerMessage::Expired { request }
            | ServerMessage::Withdrawn { request } => self.upsert(*request),
            ServerMessage::Ack { request, grant, .. } => {
                if let Some(request) = request {
                    self.upsert(*request);
                }
                if let Some(grant) = grant {
                    self.grants.retain(|g| g.id != grant.id);
                }
            }
            ServerMessage::GrantRevoked { grant } => self.grants.retain(|g| g.id != grant.id),
            ServerMessage::Pong { .. } | ServerMessage::Error { .. } => applied.changed = false,
        }
        applied.to_notify = self.take_new_notices();
        applied.to_close = self.take_settled_notices();
        applied
    }

    /// Shown notifications whose requests are no longer pending.
    fn take_settled_notices(&mut self) -> Vec<String> {
        let settled: Vec<String> = self
            .shown
            .iter()
            .filter(|id| self.requests.get(*id).is_none_or(|r| r.state != "pending"))
            .cloned()
            .collect();
        for id in &settled {
            self.shown.remove(id);
        }
        settled
    }

    /// Pending requests the approver can decide and the desktop was not
    /// told of yet, however they arrived (event, snapshot, poll).
    fn take_new_notices(&mut self) -> Vec<RequestView> {
        let mut fresh: Vec<RequestView> = self
            .requests
            .values()
            .filter(|r| !self.notified.contains(&r.id) && self.cannot_decide(r).is_none())
            .cloned()
            .collect();
        fresh.sort_by_key(|r| self.arrived.get(&r.id).copied());
        for request in &fresh {
            self.notified.insert(request.id.clone());
            self.shown.insert(request.id.clone());
        }
        fresh
    }

    /// Who the inbox is signed in as (from `hello`, or the HTTP API's answer).
    pub fn set_me(&mut self, me: Me) {
        self.me = Some(me);
    }

    /// Replace everything with a snapshot (after a reconnect or an HTTP poll).
    /// Requests the console knew and the snapshot no longer lists stay as
    /// recent decisions only if they were decided; a pending one that
    /// vanished was settled while the console was away, so it is dropped.
    pub fn replace(&mut self, requests: Vec<RequestView>, grants: Vec<GrantView>) -> Applied {
        let before = self.comparable();
        self.requests.retain(|_, r| r.state != "pending");
        for request in requests {
            self.arrive(&request.id);
            self.requests.insert(request.id.clone(), request);
        }
        self.grants = grants;
        self.trim();
        let applied = Applied {
            changed: self.comparable() != before,
            to_notify: self.take_new_notices(),
            to_close: self.take_settled_notices(),
        };
        // Pending requests the gateway no longer lists are gone for good.
        let known = &self.requests;
        self.arrived.retain(|id, _| known.contains_key(id));
        self.notified.retain(|id| known.contains_key(id));
        applied
    }

    /// The state without the seconds-left counters, which change on every
    /// snapshot: what decides whether the window needs redrawing.
    fn comparable(&self) -> (Vec<RequestView>, Vec<GrantView>) {
        let mut requests: Vec<RequestView> = self
            .requests
            .values()
            .map(|r| RequestView {
                expires_in_secs: 0,
                ..r.clone()
            })
            .collect();
        requests.sort_by(|a, b| a.id.cmp(&b.id));
        let grants = self
            .grants
            .iter()
            .map(|g| GrantView {
                remaining_secs: 0,
                ..g.clone()
            })
            .collect();
        (requests, grants)
    }

    fn arrive(&mut self, id: &str) {
        if !self.arrived.contains_key(id) {
            self.arrivals += 1;
            self.arrived.insert(id.to_string(), self.arrivals);
        }
    }

    /// Set the link state.
    pub fn set_link(&mut self, link: Link) -> bool {
        let changed = self.link != link;
        self.link = link;
        changed
    }

    /// The link state.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// Forget everything (the gateway went away).
    /// The requests whose notifications may still be on screen: the
    /// caller takes them down.
    pub fn clear(&mut self) -> Vec<String> {
        let shown = self.shown.drain().collect();
        *self = Inbox::default();
        shown
    }

    fn upsert(&mut self, request: RequestView) {
        self.arrive(&request.id);
        self.requests.insert(request.id.clone(), request);
        self.trim();
    }

    fn trim(&mut self) {
        let mut decided: Vec<(String, String)> = self
            .requests
            .values()
            .filter(|r| r.state != "pending")
            .map(|r| (settled_at(r).to_string(), r.id.clone()))
            .collect();
        if decided.len() <= RECENT {
            return;
        }
        decided.sort();
        for (_, id) in decided.iter().take(decided.len() - RECENT) {
            self.requests.remove(id);
            self.arrived.remove(id);
            self.notified.remove(id);
        }
    }

    /// Why the signed-in approver cannot decide `request`, if they cannot.
    pub fn cannot_decide(&self, request: &RequestView) -> Option<String> {
        if request.state != "pending" {
            return Some(format!("This request is {}.", request.state));
        }
        let Some(me) = &self.me else {
            return Some("The console is not signed in to the gateway yet.".into());
        };
        if request.requester.subject == me.subject && request.requester.issuer == me.issuer {
            return Some(format!(
                "You ({}) made this request: another approver has to decide it.",
                me.subject
            ));
        }
        // An empty list: a gateway before 0.2, which does not say; it lists
        // only the requests this approver may decide.
        if !me.connections.is_empty() && !me.connections.contains(&request.connection) {
            return Some(format!(
                "You are not an approver on connection \"{}\".",
                request.connection
            ));
        }
        if request
            .approvals
            .iter()
            .any(|v| v.approver == me.subject && v.issuer == me.issuer)
        {
            return Some(format!(
                "You approved it already; it needs {} more approver(s).",
                request.approvals_needed as usize
                    - request
                        .approvals
                        .len()
                        .min(request.approvals_needed as usize)
            ));
        }
        None
    }

    /// A request by id.
    pub fn get(&self, id: &str) -> Option<&RequestView> {
        self.requests.get(id)
    }

    /// What the window shows.
    pub fn view(&self) -> InboxView {
        let mut requests: Vec<&RequestView> = self.requests.values().collect();
        // Pending first, newest first; then decisions, the latest first.
        requests.sort_by(|a, b| {
            let pending = |r: &RequestView| r.state == "pending";
            pending(b)
                .cmp(&pending(a))
                .then_with(|| settled_at(b).cmp(settled_at(a)))
                .then_with(|| self.arrived.get(&b.id).cmp(&self.arrived.get(&a.id)))
        });
        InboxView {
            me: self.me.clone(),
            link: self.link.clone(),
            items: requests
                .into_iter()
                .map(|request| InboxItem {
                    cannot_decide: self.cannot_decide(request),
                    request: request.clone(),
                })
                .collect(),
            grants: self.grants.clone(),
        }
    }
}

/// When a request was asked (pending) or settled (decided, expired, withdrawn).
fn settled_at(request: &RequestView) -> &str {
    request
        .decided_at
        .as_deref()
        .unwrap_or(&request.requested_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate::approvals::Requester;
    use tollgate::approvals::protocol::Vote;
    use tollgate::identity::PrincipalKind;

    fn request(id: &str, subject: &str, at: &str) -> RequestView {
        RequestView {
            id: id.into(),
            state: "pending".into(),
            requester: Requester {
                subject: subject.into(),
                issuer: "https://dev".into(),
                groups: vec![],
                mfa: false,
                kind: PrincipalKind::Agent,
            },
            origin: "127.0.0.1".into(),
            session: None,
            connection: "payments".into(),
            statement: "COPY payments TO STDOUT".into(),
            actions: vec!["copy_out".into()],
            accesses: vec![],
            resources: vec![],
            cardholder_resources: vec![],
            cardholder: true,
            row_estimate: Some(12),
            policy: "p".into(),
            policy_reason: "r".into(),
            reason: None,
            requested_at: at.into(),
            notified: vec![],
            expires_at: "t".into(),
            expires_in_secs: 300,
            approvals_needed: 2,
            approvals: vec![],
            decided_by: None,
            decision_reason: None,
            decided_at: None,
            grant: None,
        }
    }

    fn signed_in(inbox: &mut Inbox) {
        inbox.apply(ServerMessage::Hello {
            version: 1,
            approver: "olga".into(),
            issuer: "https://dev".into(),
            connections: vec!["payments".into()],
            token_expires_at: "t".into(),
        });
    }

    #[test]
    fn pending_requests_come_first_newest_first_then_decisions_latest_first() {
        let mut inbox = Inbox::default();
        signed_in(&mut inbox);
        let mut old_decided = request("ap_1", "a", "2026-12-02T10:00:00Z");
        old_decided.state = "denied".into();
        old_decided.decided_at = Some("2026-12-02T10:01:00Z".into());
        let mut late_decided = request("ap_2", "a", "2026-12-02T10:00:30Z");
        late_decided.state = "approved".into();
        late_decided.decided_at = Some("2026-12-02T10:05:00Z".into());
        inbox.replace(
            vec![
                request("ap_3", "a", "2026-12-02T10:02:00Z"),
                old_decided,
                request("ap_4", "a", "2026-12-02T10:03:00Z"),
                late_decided,
            ],
            vec![],
        );
        let order: Vec<String> = inbox
            .view()
            .items
            .iter()
            .map(|i| i.request.id.clone())
            .collect();
        assert_eq!(order, ["ap_4", "ap_3", "ap_2", "ap_1"]);
    }

    #[test]
    fn a_new_request_notifies_only_when_the_approver_can_decide_it() {
        let mut inbox = Inbox::default();
        signed_in(&mut inbox);
        let theirs = inbox.apply(ServerMessage::Requested {
            request: Box::new(request("ap_1", "agent-7", "t1")),
        });
        assert_eq!(theirs.to_notify.len(), 1);
        let mine = inbox.apply(ServerMessage::Requested {
            request: Box::new(request("ap_2", "olga", "t2")),
        });
        assert!(mine.to_notify.is_empty());
        let why = inbox.cannot_decide(inbox.get("ap_2").unwrap()).unwrap();
        assert!(why.contains("made this request"), "{why}");
        let mut elsewhere = request("ap_3", "agent-7", "t3");
        elsewhere.connection = "hr".into();
        let elsewhere = inbox.apply(ServerMessage::Requested {
            request: Box::new(elsewhere),
        });
        assert!(elsewhere.to_notify.is_empty());
        assert!(
            inbox
                .cannot_decide(inbox.get("ap_3").unwrap())
                .unwrap()
                .contains("not an approver on connection \"hr\"")
        );
    }

    #[test]
    fn a_vote_of_ones_own_and_a_decision_by_someone_else_disable_deciding() {
        let mut inbox = Inbox::default();
        signed_in(&mut inbox);
        let mut voted = request("ap_1", "agent-7", "t1");
        voted.approvals.push(Vote {
            approver: "olga".into(),
            issuer: "https://dev".into(),
            reason: "ok".into(),
            at: "t".into(),
            window_secs: None,
        });
        inbox.apply(ServerMessage::Voted {
            request: Box::new(voted),
        });
        let why = inbox.cannot_decide(inbox.get("ap_1").unwrap()).unwrap();
        assert!(why.contains("1 more approver"), "{why}");
        let mut decided = request("ap_1", "agent-7", "t1");
        decided.state = "approved".into();
        decided.decided_by = Some("ravi".into());
        decided.decided_at = Some("t2".into());
        inbox.apply(ServerMessage::Decided {
            request: Box::new(decided),
        });
        let view = inbox.view();
        assert_eq!(view.items.len(), 1);
        assert_eq!(
            view.items[0].cannot_decide.as_deref(),
            Some("This request is approved.")
        );
    }

    #[test]
    fn a_snapshot_drops_pending_requests_settled_while_away_and_keeps_recent_decisions() {
        let mut inbox = Inbox::default();
        signed_in(&mut inbox);
        inbox.apply(ServerMessage::Requested {
            request: Box::new(request("ap_1", "agent-7", "t1")),
        });
        let mut decided = request("ap_2", "agent-7", "t0");
        decided.state = "denied".into();
        decided.decided_at = Some("t1".into());
        inbox.apply(ServerMessage::Decided {
            request: Box::new(decided),
        });
        inbox.replace(vec![request("ap_3", "agent-7", "t3")], vec![]);
        let ids: Vec<String> = inbox
            .view()
            .items
            .iter()
            .map(|i| i.request.id.clone())
            .collect();
        assert_eq!(ids, ["ap_3", "ap_2"]);
    }

    #[test]
    fn requests_first_seen_in_a_snapshot_notify_once() {
        let mut inbox = Inbox::default();
        signed_in(&mut inbox);
        let first = inbox.replace(vec![request("ap_1", "agent-7", "t1")], vec![]);
        assert!(first.changed);
        assert_eq!(first.to_notify.len(), 1);
        let again = inbox.replace(vec![request("ap_1", "agent-7", "t1")], vec![]);
        assert!(!again.changed, "an unchanged poll redraws nothing");
        assert!(again.to_notify.is_empty());
        let mut later = request("ap_1", "agent-7", "t1");
        later.expires_in_secs = 12;
        assert!(
            !inbox.replace(vec![later], vec![]).changed,
            "the countdown alone is no change"
        );
        let event = inbox.apply(ServerMessage::Requested {
            request: Box::new(request("ap_1", "agent-7", "t1")),
        });
        assert!(event.to_notify.is_empty(), "already notified");
        let mut decided = request("ap_1", "agent-7", "t1");
        decided.state = "approved".into();
        let settled = inbox.apply(ServerMessage::Decided {
            request: Box::new(decided),
        });
        assert_eq!(settled.to_close, ["ap_1"], "its notification comes down");
        assert!(inbox.replace(vec![], vec![]).to_close.is_empty(), "once");
    }

    #[test]
    fn notifications_still_up_come_down_when_the_inbox_is_cleared() {
        let mut inbox = Inbox::default();
        signed_in(&mut inbox);
        inbox.apply(ServerMessage::Requested {
            request: Box::new(request("ap_1", "agent-7", "t1")),
        });
        assert_eq!(inbox.clear(), ["ap_1"]);
        assert!(inbox.clear().is_empty());
    }

    #[test]
    fn requests_of_the_same_second_list_in_arrival_order() {
        let mut inbox = Inbox::default();
        signed_in(&mut inbox);
        for id in ["ap_z", "ap_a", "ap_m"] {
            inbox.apply(ServerMessage::Requested {
                request: Box::new(request(id, "agent-7", "2026-12-02T10:00:00Z")),
            });
        }
        let order: Vec<String> = inbox
            .view()
            .items
            .iter()
            .map(|i| i.request.id.clone())
            .collect();
        assert_eq!(order, ["ap_m", "ap_a", "ap_z"]);
    }

    #[test]
    fn only_the_most_recent_decisions_are_kept() {
        let mut inbox = Inbox::default();
        for n in 0..(RECENT + 10) {
            let mut decided = request(&format!("ap_{n:03}"), "a", "t");
            decided.state = "expired".into();
            decided.decided_at = Some(format!("2026-12-02T10:{:02}:{:02}Z", n / 60, n % 60));
            inbox.apply(ServerMessage::Expired {
                request: Box::new(decided),
            });
        }
        let view = inbox.view();
        assert_eq!(view.items.len(), RECENT);
        assert_eq!(view.items[0].request.id, format!("ap_{:03}", RECENT + 9));
        assert!(inbox.get("ap_000").is_none());
    }
}
