use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::audit::log::{AuditLog, CheckpointEvery};

fn service(dir: &std::path::Path, expire: Duration) -> Arc<Approvals> {
    let log = AuditLog::open(
        &dir.join("audit"),
        "test/audit",
        CheckpointEvery {
            records: 1000,
            interval: Duration::from_secs(3600),
        },
    )
    .unwrap();
    Approvals::new(
        Settings {
            expire,
            require_mfa: true,
            max_window: Duration::from_secs(3600),
        },
        Auditor::new(log),
    )
}

fn person(subject: &str, mfa: bool) -> Identity {
    Identity {
        subject: subject.into(),
        issuer: "https://issuer.test".into(),
        groups: vec!["approvers".into()],
        mfa,
        kind: PrincipalKind::Person,
        expires_at: u64::MAX / 2,
        scopes: Vec::new(),
    }
}

fn scope(subject: &str, accesses: &[&str]) -> Scope {
    Scope {
        subject: subject.into(),
        issuer: "https://issuer.test".into(),
        connection: "payments".into(),
        accesses: accesses.iter().map(|a| a.to_string()).collect(),
        approvals: 1,
    }
}

fn ask(subject: &str, approvals: u32) -> Ask {
    Ask {
        requester: Requester {
            subject: subject.into(),
            issuer: "https://issuer.test".into(),
            groups: vec!["agents".into()],
            mfa: false,
            kind: PrincipalKind::Agent,
        },
        origin: "127.0.0.1".into(),
        session: None,
        scope: Scope {
            approvals,
            ..scope(subject, &["COPY on public.payments"])
        },
        statement: "COPY payments TO STDOUT".into(),
        actions: vec!["copy_out".into()],
        resources: vec!["COPY on public.payments".into()],
        cardholder_resources: vec!["COPY on public.payments".into()],
        cardholder: true,
        row_estimate: None,
        policy: "cardholder-bulk-export-needs-approval".into(),
        policy_reason: "bulk export".into(),
        approvals_needed: approvals,
        reason: Some("card 4111 1111 1111 1111 reconciliation".into()),
    }
}

fn approve(reason: &str) -> Verdict {
    Verdict {
        approve: true,
        reason: reason.into(),
        window: None,
    }
}

const ANY: &dyn Fn(&str) -> bool = &|_| true;

#[tokio::test]
async fn nobody_approves_their_own_request() {
    let dir = tempfile::tempdir().unwrap();
    let approvals = service(dir.path(), Duration::from_secs(60));
    let ticket = approvals.request(ask("alice", 1));
    let error = approvals
        .decide(&person("alice", true), ANY, ticket.id(), approve("mine"))
        .unwrap_err();
    assert_eq!(error.code(), "self_approval");
    assert_eq!(ticket.state(), State::Pending);
}

#[tokio::test]
async fn two_of_three_needs_two_distinct_approvers() {
    let dir = tempfile::tempdir().unwrap();
    let approvals = service(dir.path(), Duration::from_secs(60));
    let mut events = approvals.subscribe();
    let ticket = approvals.request(ask("agent-7", 2));
    assert!(matches!(
        events.recv().await.unwrap(),
        ApprovalEvent::Requested(_)
    ));
    let first = approvals
        .decide(&person("bob", true), ANY, ticket.id(), approve("ok"))
        .unwrap();
    assert_eq!(first.state, "pending");
    assert!(matches!(
        events.recv().await.unwrap(),
        ApprovalEvent::Voted(_)
    ));
    assert_eq!(ticket.state(), State::Pending);
    let again = approvals
        .decide(&person("bob", true), ANY, ticket.id(), approve("ok"))
        .unwrap_err();
    assert_eq!(again.code(), "already_voted");
    let second = approvals
        .decide(&person("carol", true), ANY, ticket.id(), approve("ok too"))
        .unwrap();
    assert_eq!(second.state, "approved");
    assert_eq!(second.approvals.len(), 2);
    assert!(matches!(
        events.recv().await.unwrap(),
        ApprovalEvent::Decided(_)
    ));
    tokio::time::timeout(Duration::from_secs(1), ticket.settled())
        .await
        .unwrap();
    assert_eq!(ticket.state(), State::Approved);
    let late = approvals
        .decide(&person("dave", true), ANY, ticket.id(), approve("late"))
        .unwrap_err();
    assert_eq!(late.code(), "not_pending");
}

#[tokio::test]
async fn a_denial_ends_the_request_with_the_approvers_reason() {
    let dir = tempfile::tempdir().unwrap();
    let approvals = service(dir.path(), Duration::from_secs(60));
    let ticket = approvals.request(ask("agent-7", 2));
    let verdict = Verdict {
        approve: false,
        reason: "no ticket for this export".into(),
        window: None,
    };
    approvals
        .decide(&person("bob", true), ANY, ticket.id(), verdict)
        .unwrap();
    assert_eq!(
        ticket.state(),
        State::Denied {
            by: "bob".into(),
            reason: "no ticket for this export".into()
        }
    );
}

#[tokio::test]
async fn decisions_need_mfa_a_reason_a_sane_window_and_the_policys_leave() {
    let dir = tempfile::tempdir().unwrap();
    let approvals = service(dir.path(), Duration::from_secs(60));
    let ticket = approvals.request(ask("agent-7", 1));
    let id = ticket.id();
    let code = |r: Result<RequestView, DecideError>| r.unwrap_err().code();
    assert_eq!(
        code(approvals.decide(&person("bob", false), ANY, id, approve("ok"))),
        "forbidden"
    );
    assert_eq!(
        code(approvals.decide(&person("bob", true), ANY, id, approve("  "))),
        "bad_request"
    );
    let long = Verdict {
        window: Some(Duration::from_secs(7200)),
        ..approve("ok")
    };
    assert_eq!(
        code(approvals.decide(&person("bob", true), ANY, id, long)),
        "bad_request"
    );
    let elsewhere = |c: &str| c != "payments";
    assert_eq!(
        code(approvals.decide(&person("bob", true), &elsewhere, id, approve("ok"))),
        "forbidden"
    );
    assert_eq!(
        code(approvals.decide(&person("bob", true), ANY, "ap_nope", approve("ok"))),
        "not_found"
    );
    assert_eq!(ticket.state(), State::Pending);
}

#[tokio::test]
async fn a_window_grant_covers_the_same_scope_until_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let approvals = service(dir.path(), Duration::from_secs(60));
    let ticket = approvals.request(ask("agent-7", 1));
    let verdict = Verdict {
        window: Some(Duration::from_secs(1800)),
        ..approve("month-end close")
    };
    let view = approvals
        .decide(&person("bob", true), ANY, ticket.id(), verdict)
        .unwrap();
    let grant = view.grant.expect("a window grant");
    assert!(grant.remaining_secs > 1790);
    assert!(
        approvals
            .use_grant(&scope("agent-7", &["COPY on public.payments"]))
            .is_some()
    );
    assert!(approvals.use_grant(&scope("agent-7", &[])).is_some());
    assert!(
        approvals
            .use_grant(&scope(
                "agent-7",
                &["COPY on public.payments", "COPY on public.cards"]
            ))
            .is_none(),
        "a wider request is not covered"
    );
    assert!(
        approvals
            .use_grant(&scope("agent-8", &["COPY on public.payments"]))
            .is_none()
    );
    let stricter = Scope {
        approvals: 2,
        ..scope("agent-7", &["COPY on public.payments"])
    };
    assert!(
        approvals.use_grant(&stricter).is_none(),
        "a one-approver grant never covers a request that needs two"
    );
    let error = approvals
        .revoke(&person("carol", true), ANY, &grant.id, " ")
        .unwrap_err();
    assert_eq!(error.code(), "bad_request");
    approvals
        .revoke(&person("carol", true), ANY, &grant.id, "incident closed")
        .unwrap();
    assert!(
        approvals
            .use_grant(&scope("agent-7", &["COPY on public.payments"]))
            .is_none()
    );
}

#[tokio::test]
async fn a_pending_request_expires() {
    let dir = tempfile::tempdir().unwrap();
    let approvals = service(dir.path(), Duration::from_millis(50));
    let ticket = approvals.request(ask("agent-7", 1));
    tokio::time::timeout(Duration::from_secs(2), ticket.settled())
        .await
        .expect("expired in time");
    assert_eq!(ticket.state(), State::Expired);
    assert_eq!(approvals.get(ticket.id()).unwrap().state, "expired");
}

#[tokio::test]
async fn dropping_a_pending_ticket_withdraws_it_and_cancel_reaches_the_held_one() {
    let dir = tempfile::tempdir().unwrap();
    let approvals = service(dir.path(), Duration::from_secs(60));
    let ticket = approvals.request(ask("agent-7", 1));
    let id = ticket.id().to_string();
    drop(ticket);
    assert_eq!(approvals.get(&id).unwrap().state, "withdrawn");

    let ticket = approvals.request(ask("agent-7", 1));
    let slot = HoldSlot::default();
    slot.set(&approvals, ticket.id());
    assert_eq!(slot.cancel().as_deref(), Some(ticket.id()));
    assert_eq!(ticket.state(), State::Withdrawn(Withdrawal::Cancelled));
    assert!(!slot.cancelled());

    // Decided but not yet gone upstream: the cancel keeps it from running.
    let ticket = approvals.request(ask("agent-7", 1));
    slot.set(&approvals, ticket.id());
    approvals
        .decide(&person("bob", true), ANY, ticket.id(), approve("ok"))
        .unwrap();
    assert_eq!(slot.cancel().as_deref(), Some(ticket.id()));
    assert!(slot.cancelled());
    slot.clear();
    assert_eq!(slot.cancel(), None, "nothing held");
}

#[tokio::test]
async fn what_approvers_see_is_masked() {
    let dir = tempfile::tempdir().unwrap();
    let approvals = service(dir.path(), Duration::from_secs(60));
    let ticket = approvals.request(ask("agent-7", 1));
    let reason = ticket.view().reason.clone().unwrap();
    assert!(!reason.contains("4111 1111 1111 1111"), "{reason}");
    let (requests, _) = approvals.snapshot();
    assert_eq!(requests[0].id, ticket.id());
}
