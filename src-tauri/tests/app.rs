//! The real console app, end to end, as an approver uses it: under Xvfb,
//! through tauri-driver and WebKitWebDriver. psql goes through the
//! console's local gateway; held exports appear in the inbox with their
//! masked preview; the approver's clicks release or refuse them.
//!
//! With `TOLLGATE_SCREENSHOTS=DIR` it also writes the screenshots the
//! README shows (`docs/screenshots`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::json;
use tollgate::identity::dev_issuer::{DevIssuer, TokenRequest};
use tollgate_e2e::oidc::{Provider, oidc_dir};
use tollgate_e2e::webdriver::{App, Display, Notifications};
use tollgate_e2e::{FIXTURE_PANS, free_port};

const WAIT: Duration = Duration::from_secs(60);

struct Local {
    gateway_dir: PathBuf,
    port: u16,
}

impl Local {
    fn token(&self, subject: &str, groups: &[&str], agent: bool) -> String {
        DevIssuer::load_or_create(&self.gateway_dir, "tollgate")
            .expect("the console's dev issuer")
            .mint(&TokenRequest {
                subject: subject.into(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                mfa: !agent,
                agent,
                ttl_secs: 600,
            })
            .unwrap()
    }

    /// psql through the console's gateway, verifying its certificate.
    fn psql(&self, subject: &str, groups: &[&str], agent: bool, sql: &str) -> Child {
        Command::new("psql")
            .args([
                &format!(
                    "host=127.0.0.1 port={} dbname=payments user={subject} sslmode=verify-ca",
                    self.port
                ),
                "-X",
                "-v",
                "VERBOSITY=verbose",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .env("PGPASSWORD", self.token(subject, groups, agent))
            .env("PGSSLROOTCERT", self.gateway_dir.join("gateway-cert.pem"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql runs")
    }
}

impl Local {
    /// An agent's tool call on the local payments MCP server, by the
    /// official Python SDK client (the MCP tests' client in the fixture's venv).
    fn mcp_call(&self, subject: &str, groups: &[&str], mcp_port: u16, tool: &str) -> Child {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let token = DevIssuer::load_or_create(&self.gateway_dir, "tollgate")
            .expect("the console's dev issuer")
            .mint_for(
                &TokenRequest {
                    subject: subject.into(),
                    groups: groups.iter().map(|g| g.to_string()).collect(),
                    mfa: false,
                    agent: true,
                    ttl_secs: 600,
                },
                "tollgate-mcp",
            )
            .unwrap();
        Command::new(root.join("fixtures/mcp/.venv/bin/python"))
            .arg(root.join("tests/mcp/client.py"))
            .arg(format!("https://localhost:{mcp_port}/mcp/payments"))
            .arg(self.gateway_dir.join("gateway-cert.pem"))
            .args(["call", tool, "{}"])
            .env("MCP_TOKEN", token)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the MCP client runs")
    }

    /// psql running `steps` one after another in one session, going on after errors.
    fn psql_steps(&self, subject: &str, groups: &[&str], agent: bool, steps: &[&str]) -> Child {
        let mut args = vec![
            format!(
                "host=127.0.0.1 port={} dbname=payments user={subject} sslmode=verify-ca",
                self.port
            ),
            "-X".into(),
            "-v".into(),
            "VERBOSITY=verbose".into(),
        ];
        for step in steps {
            args.push("-c".into());
            args.push((*step).into());
        }
        Command::new("psql")
            .args(&args)
            .env("PGPASSWORD", self.token(subject, groups, agent))
            .env("PGSSLROOTCERT", self.gateway_dir.join("gateway-cert.pem"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql runs")
    }
}

async fn finished(child: Child) -> Output {
    tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("psql finishes")
    .unwrap()
    .unwrap()
}

fn save(dir: &Option<PathBuf>, name: &str, png: &[u8]) {
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }
}

/// The row of the pending request from `subject`, once it is listed.
async fn pending_from(app: &App, subject: &str) -> tollgate_e2e::webdriver::Element {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        for row in app.all(".row.state-pending").await {
            if app.text(&row).await.contains(subject) {
                return row;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no pending request from {subject} in the inbox"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_releases_and_refuses_held_exports_from_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let (port, api, mcp) = (free_port(), free_port(), free_port());
    let shots = std::env::var_os("TOLLGATE_SCREENSHOTS").map(PathBuf::from);
    let display = Display::get();
    let notifications = Notifications::start(&display);
    let app = App::launch(
        display,
        Path::new(env!("CARGO_BIN_EXE_tollgate-console")),
        &[
            "--data-dir".into(),
            dir.path().display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--api-listen".into(),
            format!("127.0.0.1:{api}"),
            "--mcp-listen".into(),
            format!("127.0.0.1:{mcp}"),
        ],
        &[
            ("RUST_LOG", "warn"),
            ("DBUS_SESSION_BUS_ADDRESS", &notifications.bus),
        ],
    )
    .await;

    // First start: the local gateway starts on its own and the inbox goes live.
    app.wait_for_text("[data-test=link]", WAIT, |_| true).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let link = app.wait_for("[data-test=link]", WAIT).await;
        if app
            .attribute(&link, "class")
            .await
            .unwrap_or_default()
            .contains("link-live")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the inbox did not go live"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.wait_for_text("[data-test=me]", WAIT, |t| t == "olga")
        .await;
    let empty = app
        .wait_for_text("[data-test=inbox]", WAIT, |t| {
            t.contains("No approval requests")
        })
        .await;
    assert!(
        empty.contains("COPY payments TO STDOUT"),
        "the empty inbox says what to try: {empty}"
    );

    let local = Local {
        gateway_dir: dir.path().join("local-gateway"),
        port,
    };

    // A held export from an agent appears with its masked preview.
    let export = local.psql("agent-7", &["agents"], true, "COPY payments TO STDOUT");
    let row = pending_from(&app, "agent-7").await;
    app.click(&row).await;
    let statement = app
        .wait_for_text("[data-test=detail] [data-test=statement]", WAIT, |t| {
            !t.is_empty()
        })
        .await;
    assert_eq!(statement, "COPY payments TO STDOUT");
    let detail = app
        .text(&app.wait_for("[data-test=detail]", WAIT).await)
        .await;
    for needle in [
        "agent-7",
        "cardholder-bulk-export-needs-approval",
        "public.payments",
        "Card data",
        "0 of 1",
        "olga",
    ] {
        assert!(
            detail.contains(needle),
            "the detail pane lacks {needle}: {detail}"
        );
    }
    for pan in FIXTURE_PANS {
        assert!(!detail.contains(pan), "a PAN in the preview");
    }
    let badge = app
        .text(&app.wait_for("[data-test=badge]", WAIT).await)
        .await;
    assert_eq!(badge, "1");
    assert_eq!(
        notifications.displayed(),
        1,
        "one desktop notification for the request"
    );
    save(&shots, "inbox.png", &app.screenshot().await);

    // Approve with a reason: psql gets its rows, masked for an agent.
    let reason = app.wait_for("[data-test=reason]", WAIT).await;
    app.type_text(&reason, "audit sample agreed with the QSA")
        .await;
    app.click(&app.wait_for("[data-test=approve-once]", WAIT).await)
        .await;
    let output = finished(export).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.lines().count() >= 5, "{stdout}");
    for pan in FIXTURE_PANS {
        assert!(!stdout.contains(pan), "an agent got a full PAN: {stdout}");
    }
    app.wait_for_text(".row.state-approved", WAIT, |t| {
        t.contains("Approved by olga")
    })
    .await;
    // The settled request's notification comes down.
    let deadline = std::time::Instant::now() + WAIT;
    while notifications.displayed() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the notification of a decided request stayed up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A second one, denied: psql gets 42501 with the approver's reason.
    // Its notification, clicked while the window shows another page, brings
    // the inbox back on that request.
    let second = local.psql("agent-7", &["agents"], true, "COPY payments TO STDOUT");
    let row = pending_from(&app, "agent-7").await;
    let id = app
        .attribute(&row, "data-id")
        .await
        .expect("rows carry their request id");
    app.click(&app.wait_for("[data-test=nav-local]", WAIT).await)
        .await;
    app.wait_for("[data-test=listen]", WAIT).await;
    let deadline = std::time::Instant::now() + WAIT;
    while notifications.displayed() < 1 {
        if std::time::Instant::now() > deadline {
            let status = app
                .text(&app.wait_for("[data-test=status]", WAIT).await)
                .await;
            panic!(
                "no notification for the second request ({} on screen, {} shown in all); the status bar says {status:?}",
                notifications.displayed(),
                notifications.shown()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    notifications.click_first();
    app.wait_for(
        &format!("#page-inbox:not([hidden]) .row.selected[data-id=\"{id}\"]"),
        WAIT,
    )
    .await;
    let reason = app.wait_for("[data-test=reason]", WAIT).await;
    app.type_text(&reason, "no change ticket for a second export")
        .await;
    app.click(&app.wait_for("[data-test=deny]", WAIT).await)
        .await;
    let output = finished(second).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("42501"), "{stderr}");
    assert!(
        stderr.contains("no change ticket for a second export"),
        "{stderr}"
    );

    // An agent's bulk-export tool call on the payments MCP server waits in
    // the same inbox: the approver sees the server, the tool, its
    // description and the policy, and releases it; the agent gets masked cards.
    let tool_call = local.mcp_call("agent-7", &["agents"], mcp, "export_cards");
    let row = pending_from(&app, "agent-7").await;
    app.click(&row).await;
    let statement = app
        .wait_for_text("[data-test=detail] [data-test=statement]", WAIT, |t| {
            t.contains("export_cards")
        })
        .await;
    assert!(
        statement.starts_with("tools/call export_cards") && statement.contains("Export every card"),
        "{statement}"
    );
    let detail = app
        .text(&app.wait_for("[data-test=detail]", WAIT).await)
        .await;
    for needle in [
        "agent-7",
        "call payments/export_cards",
        "mcp-destructive-or-bulk-tools-need-approval",
    ] {
        assert!(
            detail.contains(needle),
            "the detail pane lacks {needle}: {detail}"
        );
    }
    save(&shots, "inbox-mcp.png", &app.screenshot().await);
    let reason = app.wait_for("[data-test=reason]", WAIT).await;
    app.type_text(&reason, "settlement run, ticket FIN-2211")
        .await;
    app.click(&app.wait_for("[data-test=approve-once]", WAIT).await)
        .await;
    let output = finished(tool_call).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("\"is_error\": false"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for pan in FIXTURE_PANS {
        assert!(!stdout.contains(pan), "an agent got a full PAN: {stdout}");
    }

    // A request of one's own says why it cannot be approved.
    // olga, the console's identity, is also an analyst who may export.
    let own = local.psql(
        "olga",
        &["analysts", "approvers"],
        false,
        "COPY payments TO STDOUT",
    );
    let row = pending_from(&app, "olga").await;
    app.click(&row).await;
    let blocked = app
        .wait_for_text("[data-test=blocked]", WAIT, |t| !t.is_empty())
        .await;
    assert!(blocked.contains("made this request"), "{blocked}");
    let approve = app.wait_for("[data-test=approve-once]", WAIT).await;
    assert!(
        !app.enabled(&approve).await,
        "one's own request has a disabled Approve"
    );
    let title = app.attribute(&approve, "title").await.unwrap_or_default();
    assert!(
        title.contains("another approver has to decide it"),
        "{title}"
    );

    // The local gateway page: where it listens and how to connect.
    app.click(&app.wait_for("[data-test=nav-local]", WAIT).await)
        .await;
    let listen = app
        .wait_for_text("[data-test=listen]", WAIT, |t| !t.is_empty())
        .await;
    assert_eq!(listen, format!("127.0.0.1:{port}"));
    let psql = app
        .wait_for_text("[data-test=psql]", WAIT, |t| t.contains("psql"))
        .await;
    assert!(
        psql.contains(&format!("port={port}")) && psql.contains("dbname=payments"),
        "{psql}"
    );
    let _ = app.script("window.scrollTo(0, 0)", json!([])).await;
    save(&shots, "local.png", &app.screenshot().await);

    let mut own = own;
    let _ = own.kill();
    let _ = own.wait();

    // Closing the console stops its gateway and removes the database.
    app.quit().await;
    let deadline = std::time::Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the local gateway outlived the window"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sign in to the team gateway from the console's Team gateway page as
/// `login` (the scripted browser signs in at the provider); no keyring on
/// this desktop, so the console offers a session-only sign-in.
async fn sign_in(app: &App, login: &str, login_file: &Path, gateway: &str, ca: &str) {
    std::fs::write(login_file, login).unwrap();
    app.click(&app.wait_for("[data-test=nav-remote]", WAIT).await)
        .await;
    let url = app.wait_for("[data-test=remote-url]", WAIT).await;
    app.clear(&url).await;
    app.type_text(&url, gateway).await;
    let ca_field = app.wait_for("[data-test=remote-ca]", WAIT).await;
    app.clear(&ca_field).await;
    app.type_text(&ca_field, ca).await;
    app.click(&app.wait_for("[data-test=signin]", WAIT).await)
        .await;
    let offer = app.wait_for("[data-test=signin-session-only]", WAIT).await;
    let error = app
        .text(&app.wait_for("[data-test=signin-error]", WAIT).await)
        .await;
    assert!(
        error.contains("keyring"),
        "no keyring here, and the console says so: {error}"
    );
    app.click(&offer).await;
    app.wait_for_text("[data-test=remote-subject]", WAIT, |t| t == login)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analyst_replays_a_session_and_an_auditor_exports_its_evidence() {
    use console_core::local::LocalGateway;
    use console_core::types::{LocalOptions, Persona, TrustIssuer};

    const AUDIENCE: &str = "https://tollgate.test/api";
    let provider = Provider::start(AUDIENCE, 3600);
    // The team's gateway: the gateway core with the team's provider trusted,
    // in front of a throwaway database.
    let team_dir = tempfile::tempdir().unwrap();
    let (port, api) = (free_port(), free_port());
    let team = LocalGateway::start(
        team_dir.path(),
        &LocalOptions {
            listen: Some(format!("127.0.0.1:{port}")),
            api_listen: Some(format!("127.0.0.1:{api}")),
            mcp_listen: Some("127.0.0.1:0".into()),
            trust: Some(TrustIssuer {
                issuer: provider.issuer.clone(),
                audience: AUDIENCE.into(),
                console_client_id: Some("tollgate-console".into()),
            }),
            ..LocalOptions::default()
        },
        |_| {},
    )
    .await
    .expect("the team gateway starts");
    let info = team.info();
    let local = Local {
        gateway_dir: team_dir.path().join("local-gateway"),
        port,
    };

    // An agent's session: a masked result, a refused DELETE, a held export
    // that olga approves over the API.
    let session = local.psql_steps(
        "agent-7",
        &["agents"],
        true,
        &[
            "SELECT id, pan FROM payments ORDER BY id LIMIT 3",
            "DELETE FROM payments",
            "/* reason: chargeback sample */ COPY (SELECT id, pan FROM payments) TO STDOUT",
        ],
    );
    let approver = tollgate::approvals::client::Client::new(
        tollgate::approvals::client::Location {
            url: info.api.clone(),
            ca_file: Some(team.ca_file()),
        },
        team.token(&Persona::approver()).unwrap(),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let id = loop {
        let list = approver.list().await.unwrap();
        let pending = list["requests"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["state"] == "pending"))
            .and_then(|r| r["id"].as_str());
        if let Some(id) = pending {
            break id.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the export was not held: {list}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    approver
        .decide(&id, true, "chargeback evidence for the card scheme", None)
        .await
        .unwrap();
    let output = finished(session).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("42501"), "the DELETE was refused: {stderr}");

    // The console, pointed at the team's gateway (no local gateway).
    let shots = std::env::var_os("TOLLGATE_SCREENSHOTS").map(PathBuf::from);
    let dir = tempfile::tempdir().unwrap();
    let display = Display::get();
    let notifications = Notifications::start(&display);
    let browser = oidc_dir().join("sign-in");
    let login_file = dir.path().join("browser-login");
    std::fs::write(&login_file, "alice").unwrap();
    let app = App::launch(
        display,
        Path::new(env!("CARGO_BIN_EXE_tollgate-console")),
        &[
            "--data-dir".into(),
            dir.path().display().to_string(),
            "--no-autostart".into(),
        ],
        &[
            ("RUST_LOG", "warn"),
            ("DBUS_SESSION_BUS_ADDRESS", &notifications.bus),
            ("BROWSER", &browser.display().to_string()),
            (
                "TOLLGATE_TEST_LOGIN_FILE",
                &login_file.display().to_string(),
            ),
        ],
    )
    .await;
    sign_in(&app, "alice", &login_file, &info.api, &info.ca_file).await;

    // The analyst finds the session by a statement it ran.
    app.click(&app.wait_for("[data-test=nav-sessions]", WAIT).await)
        .await;
    let search = app.wait_for("[data-test=filter-q]", WAIT).await;
    app.type_text(&search, "delete payments").await;
    app.click(&app.wait_for("[data-test=filter-apply]", WAIT).await)
        .await;
    let row = app
        .wait_for_text("[data-test=session-row]", WAIT, |t| {
            t.contains("agent-7") && t.contains("DELETE")
        })
        .await;
    assert!(
        row.contains("refused") && row.contains("held") && row.contains("masked"),
        "{row}"
    );
    save(&shots, "sessions.png", &app.screenshot().await);
    app.click_css("[data-test=session-row] td", WAIT).await;

    // The player opens at the matching statement: refused, with its policy.
    let sql = app
        .wait_for_text("[data-test=frame-sql]", WAIT, |t| t.contains("DELETE"))
        .await;
    assert_eq!(sql, "DELETE FROM payments");
    let detail = app
        .text(&app.wait_for("[data-test=frame-detail]", WAIT).await)
        .await;
    assert!(
        detail.contains("Refused") && detail.contains("no-delete-or-update-without-where"),
        "{detail}"
    );
    // Markers sit at the refusal and at the approval.
    let refused = app
        .wait_for("[data-test=marker][data-mark=refused]", WAIT)
        .await;
    let approved = app
        .wait_for("[data-test=marker][data-mark=approved]", WAIT)
        .await;
    let refused_at = app.attribute(&refused, "data-seq").await.unwrap();
    let approved_at: u64 = app
        .attribute(&approved, "data-seq")
        .await
        .unwrap()
        .parse()
        .unwrap();
    let position = app
        .text(&app.wait_for("[data-test=position]", WAIT).await)
        .await;
    assert!(
        position.starts_with(&format!("{} /", refused_at.parse::<u64>().unwrap() + 1)),
        "{position}"
    );
    // Step back to the masked result: the analyst sees masked rows.
    app.click(&app.wait_for("[data-test=step-back]", WAIT).await)
        .await;
    let grid = app
        .wait_for_text("[data-test=result-grid]", WAIT, |t| t.contains("******"))
        .await;
    for pan in FIXTURE_PANS {
        assert!(!grid.contains(pan), "a full PAN in the player: {grid}");
    }
    // Forward past the refusal to the next marker: the approval, and who gave it.
    app.click(&app.wait_for("[data-test=step-forward]", WAIT).await)
        .await;
    app.click(&app.wait_for("[data-test=next-marker]", WAIT).await)
        .await;
    let detail = app
        .wait_for_text("[data-test=frame-detail]", WAIT, |t| {
            t.contains("Approved by olga")
        })
        .await;
    assert!(detail.contains("COPY"), "{detail}");
    let position = app
        .text(&app.wait_for("[data-test=position]", WAIT).await)
        .await;
    assert!(
        position.starts_with(&format!("{} /", approved_at + 1)),
        "{position}"
    );
    save(&shots, "player.png", &app.screenshot().await);

    // An auditor's sign-in sees the same session without result rows.
    app.click(&app.wait_for("[data-test=nav-remote]", WAIT).await)
        .await;
    app.click(&app.wait_for("[data-test=signout]", WAIT).await)
        .await;
    sign_in(&app, "quinn", &login_file, &info.api, &info.ca_file).await;
    app.click(&app.wait_for("[data-test=nav-sessions]", WAIT).await)
        .await;
    let search = app.wait_for("[data-test=filter-q]", WAIT).await;
    app.clear(&search).await;
    app.type_text(&search, "delete payments").await;
    app.click(&app.wait_for("[data-test=filter-apply]", WAIT).await)
        .await;
    app.wait_for_text("[data-test=session-row]", WAIT, |t| t.contains("agent-7"))
        .await;
    app.click_css("[data-test=session-row] td", WAIT).await;
    app.wait_for_text("[data-test=frame-sql]", WAIT, |t| t.contains("DELETE"))
        .await;
    app.click(&app.wait_for("[data-test=step-back]", WAIT).await)
        .await;
    let withheld = app
        .wait_for_text("[data-test=withheld]", WAIT, |t| !t.is_empty())
        .await;
    assert!(withheld.contains("auditor"), "{withheld}");
    assert!(
        app.all("[data-test=result-grid]").await.is_empty(),
        "an auditor got result rows"
    );

    // The auditor exports the day's evidence, with progress, verified here.
    app.click(&app.wait_for("[data-test=nav-evidence]", WAIT).await)
        .await;
    app.wait_for_text("[data-test=audit-verified]", WAIT, |t| t == "Verified")
        .await;
    let out = dir.path().join("bundle");
    let folder = app.wait_for("[data-test=export-dir]", WAIT).await;
    app.clear(&folder).await;
    app.type_text(&folder, &out.display().to_string()).await;
    app.click(&app.wait_for("[data-test=export]", WAIT).await)
        .await;
    let done = app
        .wait_for_text("[data-test=export-summary]", WAIT, |t| {
            t.contains("verified")
        })
        .await;
    assert!(done.contains("Exported and verified"), "{done}");
    assert!(out.join("INDEX.md").exists() && out.join("verification.txt").exists());
    save(&shots, "evidence.png", &app.screenshot().await);

    app.quit().await;
    team.stop().await;
}
