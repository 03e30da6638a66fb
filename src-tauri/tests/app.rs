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
    let (port, api) = (free_port(), free_port());
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
