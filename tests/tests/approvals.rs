//! Just-in-time approvals end to end: statements held in psql and
//! tokio-postgres, approvers on the real WebSocket and HTTP API, the
//! `tollgate approvals` command, and the audit records of every step.

use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tollgate::identity::dev_issuer::TokenRequest;
use tollgate_e2e::console::{Auth, ConnectError, Console};
use tollgate_e2e::{TestGateway, expect_sqlstate};

/// Requests expire after a minute here, so that a test that goes wrong
/// fails instead of hanging.
const CONFIG: &str = "[policy]\nstarter = true\n\n[api]\nlisten = \"127.0.0.1:0\"\n\n[approvals]\nexpire_secs = 60\n";
const EXPORT: &str = "COPY payments TO STDOUT";
const POLICY: &str = "cardholder-bulk-export-needs-approval";

fn agent(gw: &TestGateway, subject: &str) -> String {
    gw.token_with(TokenRequest {
        subject: subject.into(),
        groups: vec!["agents".into()],
        mfa: false,
        agent: true,
        ttl_secs: 600,
    })
}

fn approver(gw: &TestGateway, subject: &str) -> String {
    gw.token(subject, &["approvers"])
}

/// Start psql running `sql` (it may be held); collect it with [`finish`].
fn spawn_psql(gw: &TestGateway, token: &str, sql: &str) -> Child {
    gw.psql_command(token, "payments", "verify-full")
        .args(["-c", sql])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start psql")
}

async fn finish(child: Child) -> Output {
    tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .expect("psql ran")
}

async fn console(gw: &TestGateway, token: &str) -> Console {
    let mut console = gw
        .console(token, Auth::Header)
        .await
        .expect("console connects");
    let hello = console.expect("hello").await;
    assert_eq!(hello["version"], 1);
    console.expect("snapshot").await;
    console
}

fn records(data_dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(data_dir.join("audit/audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every record is JSON"))
        .collect()
}

fn events_of(data_dir: &Path, request: &str) -> Vec<String> {
    records(data_dir)
        .into_iter()
        .filter(|r| r["request"] == request)
        .map(|r| r["event"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_waits_with_a_notice_until_an_approver_on_the_websocket_approves() {
    let gw = TestGateway::start_with(CONFIG).await;
    let mut olga = console(&gw, &approver(&gw, "olga")).await;
    let agent = agent(&gw, "agent-7");
    let psql = spawn_psql(
        &gw,
        &agent,
        "/* reason: month-end reconciliation FIN-118 */ COPY payments TO STDOUT",
    );

    let requested = olga.expect("requested").await;
    let request = &requested["request"];
    let id = request["id"].as_str().unwrap().to_string();
    assert_eq!(request["state"], "pending");
    assert_eq!(request["requester"]["subject"], "agent-7");
    assert_eq!(request["requester"]["kind"], "agent");
    assert_eq!(request["requester"]["groups"], json!(["agents"]));
    assert_eq!(request["connection"], "payments");
    assert!(
        request["statement"].as_str().unwrap().contains(EXPORT),
        "{request}"
    );
    assert_eq!(request["accesses"], json!(["COPY on public.payments"]));
    assert!(
        request["actions"]
            .as_array()
            .unwrap()
            .contains(&json!("copy_out"))
    );
    assert_eq!(request["cardholder"], true);
    assert_eq!(request["policy"], POLICY);
    assert!(
        request["policy_reason"]
            .as_str()
            .unwrap()
            .contains("bulk export")
    );
    assert_eq!(request["reason"], "month-end reconciliation FIN-118");
    assert_eq!(request["approvals_needed"], 1);
    let estimate = request["row_estimate"].as_i64();
    assert!(
        estimate.is_some_and(|rows| rows > 0),
        "the preview estimates the rows: {request}"
    );
    let left = request["expires_in_secs"].as_u64().unwrap();
    assert!((50..=60).contains(&left), "{left}");
    assert!(request["session"].is_string(), "links to the recording");

    let ack = olga.approve(&id, "FIN-118 approved by finance", None).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["ref"], "r1");
    assert_eq!(ack["request"]["state"], "approved");
    let decided = olga.expect("decided").await;
    assert_eq!(decided["request"]["decided_by"], "olga");

    let out = finish(psql).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "psql failed: {stderr}");
    assert_eq!(stdout.lines().count(), 12, "every row arrived: {stdout}");
    assert!(
        stdout.contains("411111******1111"),
        "masked for the agent: {stdout}"
    );
    assert!(!stdout.contains("4111111111111111"), "{stdout}");
    assert!(stderr.contains("NOTICE:"), "{stderr}");
    assert!(
        stderr.contains(&format!("Approval request {id} is waiting")),
        "{stderr}"
    );
    assert!(stderr.contains("notified olga"), "{stderr}");
    assert!(stderr.contains("It expires at"), "{stderr}");

    gw.settle().await;
    let events = events_of(&gw.data_dir, &id);
    assert_eq!(
        events,
        ["approval.requested", "approval.decided"],
        "{events:?}"
    );
    let all = records(&gw.data_dir);
    let decided = all
        .iter()
        .find(|r| r["event"] == "approval.decided")
        .unwrap();
    assert_eq!(decided["actor"]["subject"], "olga");
    assert_eq!(decided["reason"], "FIN-118 approved by finance");
    let statement = all
        .iter()
        .find(|r| r["event"] == "statement" && r["approval"] == id.as_str())
        .expect("the statement's record names its approval");
    assert_eq!(statement["outcome"], "success");
    assert!(
        statement["seq"].as_u64() > decided["seq"].as_u64(),
        "the decision is on record before the statement ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_refuses_with_the_approvers_reason_and_the_session_goes_on() {
    let gw = TestGateway::start_with(CONFIG).await;
    let mut olga = console(&gw, &approver(&gw, "olga")).await;
    let analyst = gw.token("alice", &["analysts"]);
    let client = gw.tokio_postgres(&analyst).await.unwrap();
    // Extended protocol: tokio-postgres prepares the COPY.
    let copy = tokio::spawn(async move {
        let result = client.copy_out(EXPORT).await.map(|_| ());
        (client, result)
    });
    let id = olga.requested_id().await;
    let ack = olga.deny(&id, "no change ticket for this export").await;
    assert_eq!(ack["request"]["state"], "denied", "{ack}");
    let (client, result) = copy.await.unwrap();
    let message = expect_sqlstate(&result.unwrap_err(), "42501");
    assert!(
        message.contains(&format!(
            "approval request {id} was denied by olga: no change ticket for this export"
        )),
        "{message}"
    );
    let rows = client.simple_query("SELECT count(*) FROM ledger").await;
    assert!(rows.is_ok(), "the session stays usable: {rows:?}");
    drop(client);
    gw.settle().await;
    assert_eq!(
        events_of(&gw.data_dir, &id),
        ["approval.requested", "approval.decided"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecided_request_expires_and_is_refused() {
    let gw = TestGateway::start_with(&CONFIG.replace("expire_secs = 60", "expire_secs = 1")).await;
    let mut olga = console(&gw, &approver(&gw, "olga")).await;
    let out = finish(spawn_psql(&gw, &agent(&gw, "agent-7"), EXPORT)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("expired at"), "{stderr}");
    assert!(stderr.contains("without a decision"), "{stderr}");
    let id = olga.expect("requested").await["request"]["id"].clone();
    let expired = olga.expect("expired").await;
    assert_eq!(expired["request"]["id"], id);
    assert_eq!(expired["request"]["state"], "expired");
    // Too late to approve.
    let late = olga
        .approve(id.as_str().unwrap(), "sorry, late", None)
        .await;
    assert_eq!(late["code"], "not_pending", "{late}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_or_disconnecting_withdraws_the_request() {
    let gw = TestGateway::start_with(CONFIG).await;
    let mut olga = console(&gw, &approver(&gw, "olga")).await;
    let analyst = gw.token("alice", &["analysts"]);
    let client = gw.tokio_postgres(&analyst).await.unwrap();
    let cancel = client.cancel_token();
    let copy = tokio::spawn(async move {
        let result = client.copy_out(EXPORT).await.map(|_| ());
        (client, result)
    });
    let id = olga.requested_id().await;
    cancel.cancel_query(gw.tokio_postgres_tls()).await.unwrap();
    let withdrawn = olga.expect("withdrawn").await;
    assert_eq!(withdrawn["request"]["id"], id.as_str());
    let (client, result) = copy.await.unwrap();
    let message = expect_sqlstate(&result.unwrap_err(), "57014");
    assert!(
        message.contains("canceling statement due to user request"),
        "{message}"
    );
    assert!(client.simple_query("SELECT 1").await.is_ok());
    drop(client);

    // psql killed while it waits: its request goes too.
    let mut psql = spawn_psql(&gw, &agent(&gw, "agent-7"), EXPORT);
    let second = olga.requested_id().await;
    psql.kill().unwrap();
    let _ = psql.wait();
    let withdrawn = olga.expect("withdrawn").await;
    assert_eq!(withdrawn["request"]["id"], second.as_str());

    gw.settle().await;
    let reasons: Vec<Value> = records(&gw.data_dir)
        .into_iter()
        .filter(|r| r["event"] == "approval.withdrawn")
        .map(|r| r["reason"].clone())
        .collect();
    assert_eq!(
        reasons,
        [
            json!("the client cancelled the statement"),
            json!("the client disconnected")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_approves_their_own_request() {
    let gw = TestGateway::start_with(CONFIG).await;
    // An approver who is also an analyst asks for an export.
    let olga_token = gw.token("olga", &["analysts", "approvers"]);
    let mut olga = console(&gw, &olga_token).await;
    let mut pete = console(&gw, &approver(&gw, "pete")).await;
    let psql = spawn_psql(&gw, &olga_token, EXPORT);
    let id = olga.requested_id().await;
    let refused = olga.approve(&id, "I need it", None).await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "self_approval", "{refused}");
    assert_eq!(refused["ref"], "r1");
    pete.expect("requested").await;
    let ack = pete.approve(&id, "checked with olga's manager", None).await;
    assert_eq!(ack["request"]["state"], "approved", "{ack}");
    assert!(finish(psql).await.status.success());
    gw.settle().await;
    let refusal = records(&gw.data_dir)
        .into_iter()
        .find(|r| r["event"] == "approval.refused")
        .expect("the refused self-approval is on record");
    assert_eq!(refusal["actor"]["subject"], "olga");
    assert_eq!(refusal["code"], "self_approval");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_approvers_release_a_payments_export() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("two.cedar");
    std::fs::write(
        &policy,
        r#"
@id("payments-export-needs-two")
@reason("exports of the payments table need two approvers")
@approvals("2")
forbid (principal, action == Action::"copy_out", resource is Table)
when { resource.name == "payments" }
unless { context.approved };
"#,
    )
    .unwrap();
    let gw = TestGateway::start_with(&CONFIG.replace(
        "starter = true",
        &format!("starter = true\nfiles = [\"{}\"]", policy.display()),
    ))
    .await;
    let mut a = console(&gw, &approver(&gw, "anna")).await;
    let mut b = console(&gw, &approver(&gw, "ben")).await;
    let mut c = console(&gw, &approver(&gw, "cleo")).await;
    let psql = spawn_psql(&gw, &agent(&gw, "agent-7"), EXPORT);
    let request = a.expect("requested").await["request"].clone();
    let id = request["id"].as_str().unwrap().to_string();
    assert_eq!(request["approvals_needed"], 2);
    b.expect("requested").await;
    c.expect("requested").await;

    let first = a.approve(&id, "looks right", None).await;
    assert_eq!(first["request"]["state"], "pending", "{first}");
    let voted = c.expect("voted").await;
    assert_eq!(voted["request"]["approvals"][0]["approver"], "anna");
    let again = a.approve(&id, "really", None).await;
    assert_eq!(again["code"], "already_voted", "{again}");

    let second = b.approve(&id, "agreed", None).await;
    assert_eq!(second["request"]["state"], "approved", "{second}");
    c.expect("decided").await;
    let out = finish(psql).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 12);
    gw.settle().await;
    assert_eq!(
        events_of(&gw.data_dir, &id),
        ["approval.requested", "approval.vote", "approval.decided"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_grant_lets_matching_statements_pass_until_it_ends_or_is_revoked() {
    let gw = TestGateway::start_with(CONFIG).await;
    let mut olga = console(&gw, &approver(&gw, "olga")).await;
    let agent = agent(&gw, "agent-7");
    let psql = spawn_psql(&gw, &agent, EXPORT);
    let id = olga.requested_id().await;
    let approved = std::time::Instant::now();
    let ack = olga.approve(&id, "incident INC-9 window", Some(6)).await;
    let grant = ack["request"]["grant"].clone();
    assert!(grant["id"].as_str().unwrap().starts_with("gr_"), "{ack}");
    assert_eq!(grant["accesses"], json!(["COPY on public.payments"]));
    assert!(finish(psql).await.status.success());

    // Within the window: no new request.
    let out = finish(spawn_psql(&gw, &agent, EXPORT)).await;
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("NOTICE"));
    // Another identity is not covered.
    let other = spawn_psql(&gw, &agent_token_for(&gw, "agent-8"), EXPORT);
    let held = olga.expect("requested").await;
    assert_eq!(held["request"]["requester"]["subject"], "agent-8");
    olga.deny(held["request"]["id"].as_str().unwrap(), "not in the window")
        .await;
    assert!(!finish(other).await.status.success());

    // After the window: held again.
    tokio::time::sleep(
        (approved + Duration::from_millis(6300))
            .saturating_duration_since(std::time::Instant::now()),
    )
    .await;
    let late = spawn_psql(&gw, &agent, EXPORT);
    let held = olga.expect("requested").await;
    assert_eq!(held["request"]["requester"]["subject"], "agent-7");
    olga.deny(held["request"]["id"].as_str().unwrap(), "window over")
        .await;
    assert!(!finish(late).await.status.success());

    // A revoked grant stops at once (revoked over HTTP).
    let psql = spawn_psql(&gw, &agent, EXPORT);
    let id = olga.requested_id().await;
    let ack = olga.approve(&id, "another window", Some(600)).await;
    let grant = ack["request"]["grant"]["id"].as_str().unwrap().to_string();
    assert!(finish(psql).await.status.success());
    let http = reqwest_client(&gw);
    let response = http
        .post(format!("{}/api/v1/grants/{grant}/revoke", gw.api_url()))
        .bearer_auth(approver(&gw, "pete"))
        .json(&json!({ "reason": "incident closed" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let revoked = olga.expect("grant_revoked").await;
    assert_eq!(revoked["grant"]["id"], grant.as_str());
    let after = spawn_psql(&gw, &agent, EXPORT);
    let held = olga.expect("requested").await;
    olga.deny(held["request"]["id"].as_str().unwrap(), "revoked")
        .await;
    assert!(!finish(after).await.status.success());

    gw.settle().await;
    let all = records(&gw.data_dir);
    let kinds: Vec<&str> = all.iter().filter_map(|r| r["event"].as_str()).collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "approval.grant_used")
            .count(),
        1
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "approval.grant_revoked")
            .count(),
        1
    );
    let revoked = all
        .iter()
        .find(|r| r["event"] == "approval.grant_revoked")
        .unwrap();
    assert_eq!(revoked["actor"]["subject"], "pete");
    assert_eq!(revoked["reason"], "incident closed");
}

fn agent_token_for(gw: &TestGateway, subject: &str) -> String {
    agent(gw, subject)
}

fn reqwest_client(gw: &TestGateway) -> reqwest::Client {
    let pem = std::fs::read(gw.data_dir.join("gateway-cert.pem")).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_socket_says_what_is_wrong_and_keeps_going() {
    let gw = TestGateway::start_with(CONFIG).await;
    // Not an approver: refused before the upgrade, on record.
    let analyst = gw.token("alice", &["analysts"]);
    match gw.console(&analyst, Auth::Header).await {
        Err(ConnectError::Http(403, body)) => assert!(body.contains("approve"), "{body}"),
        Err(e) => panic!("expected 403, got {e:?}"),
        Ok(_) => panic!("an analyst got a console"),
    }
    // An approver without MFA.
    let no_mfa = gw.token_with(TokenRequest {
        subject: "olga".into(),
        groups: vec!["approvers".into()],
        mfa: false,
        agent: false,
        ttl_secs: 600,
    });
    match gw.console(&no_mfa, Auth::Header).await {
        Err(ConnectError::Http(403, body)) => {
            assert!(body.contains("multi-factor"), "{body}")
        }
        Err(e) => panic!("expected 403, got {e:?}"),
        Ok(_) => panic!("an approver without MFA got a console"),
    }
    // A browser authenticates with its first message; a bad token closes with a reason.
    let mut console = gw.console("not-a-token", Auth::Message).await.unwrap();
    let error = console.next().await.unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "unauthenticated", "{error}");
    let closed = console.next().await.unwrap();
    assert_eq!(closed["type"], "closed");
    assert_eq!(closed["code"], 1008);

    let mut console = gw
        .console(&approver(&gw, "olga"), Auth::Message)
        .await
        .unwrap();
    console.expect("hello").await;
    console.expect("snapshot").await;
    console.send_text("{not json").await;
    let error = console.next().await.unwrap();
    assert_eq!(error["code"], "bad_message", "{error}");
    console
        .send(json!({ "type": "launch_missiles", "ref": "x9" }))
        .await;
    let error = console.next().await.unwrap();
    assert_eq!(error["code"], "bad_message", "{error}");
    assert_eq!(error["ref"], "x9");
    console
        .send(json!({ "type": "approve", "id": "ap_missing", "reason": "?" }))
        .await;
    assert_eq!(console.answer().await["code"], "not_found");
    console
        .send(json!({ "type": "approve", "id": "ap_missing" }))
        .await;
    assert_eq!(console.next().await.unwrap()["code"], "bad_message");
    // Still connected and answering.
    console.send(json!({ "type": "ping", "ref": "p" })).await;
    let pong = console.expect("pong").await;
    assert_eq!(pong["ref"], "p");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_lists_and_approves_on_the_local_gateway() {
    let gw = TestGateway::start_with(CONFIG).await;
    let psql = spawn_psql(
        &gw,
        &agent(&gw, "agent-7"),
        "/* reason: nightly settlement */ COPY payments TO STDOUT",
    );
    let token = approver(&gw, "olga");
    let cli = |args: &[&str]| {
        std::process::Command::new(tollgate_e2e::tollgate_binary())
            .arg("approvals")
            .args(args)
            .arg("--data-dir")
            .arg(&gw.data_dir)
            .env("TOLLGATE_TOKEN", &token)
            .output()
            .expect("run tollgate")
    };
    let mut listed = String::new();
    for _ in 0..100 {
        let out = cli(&["list"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        listed = String::from_utf8_lossy(&out.stdout).into_owned();
        if listed.contains("1 pending") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(listed.contains("agent-7 (agent) on payments"), "{listed}");
    assert!(
        listed.contains("requester's reason: nightly settlement"),
        "{listed}"
    );
    let id = listed
        .split_whitespace()
        .find(|w| w.starts_with("ap_"))
        .expect("a request id")
        .to_string();
    let out = cli(&["approve", &id, "--reason", "settlement run", "--for", "10m"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("approved {id}")), "{stdout}");
    assert!(stdout.contains("pass until"), "{stdout}");
    assert!(finish(psql).await.status.success());

    // Without a token it says what to do.
    let out = std::process::Command::new(tollgate_e2e::tollgate_binary())
        .args(["approvals", "list", "--data-dir"])
        .arg(&gw.data_dir)
        .env_remove("TOLLGATE_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TOLLGATE_TOKEN"));
    // A decided request cannot be decided again.
    let out = cli(&["deny", &id, "--reason", "too late"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("approved already"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_api_a_statement_that_needs_approval_is_refused_at_once() {
    let gw = TestGateway::start_with("[policy]\nstarter = true\n").await;
    let out = finish(spawn_psql(&gw, &agent(&gw, "agent-7"), EXPORT)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("needs approval"), "{stderr}");
    assert!(stderr.contains("[api] listen"), "{stderr}");
}
