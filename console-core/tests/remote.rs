//! Remote mode and what analysts and auditors see, headless, against real
//! parts: the console's local gateway made to trust a real OpenID Provider
//! (npm oidc-provider), a scripted user at that provider's login form, the
//! OS keyring (GNOME Keyring on a session bus of the test's own), and the
//! recordings API over a store with 100k sessions and a 100k-frame session.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use console_core::Console;
use console_core::types::{
    ExportOptions, LocalInfo, LocalOptions, LocalStatus, Persona, RemoteStatus, SessionFilter,
    SignInOptions, TrustIssuer,
};
use sqlx::Connection;
use support::{Provider, Recorder, any_port};

const AUDIENCE: &str = "https://tollgate.test/api";

fn info(console: &Console<Recorder>) -> LocalInfo {
    match console.local_status() {
        LocalStatus::Running { info } => *info,
        other => panic!("not running: {other:?}"),
    }
}

/// A local gateway that also trusts `provider`, with the console's client id.
async fn gateway_trusting(provider: &Provider) -> Console<Recorder> {
    let console = Console::new(Recorder::new(true));
    console
        .start_local(LocalOptions {
            trust: Some(TrustIssuer {
                issuer: provider.issuer.clone(),
                audience: AUDIENCE.into(),
                console_client_id: Some("tollgate-console".into()),
            }),
            ..any_port()
        })
        .await
        .expect("local gateway starts");
    console
}

fn sign_in_options(info: &LocalInfo, session_only: bool) -> SignInOptions {
    SignInOptions {
        gateway: info.api.clone(),
        ca_file: Some(info.ca_file.clone()),
        issuer: None,
        session_only: Some(session_only),
    }
}

fn signed_in(status: &RemoteStatus) -> &console_core::types::RemoteSession {
    match status {
        RemoteStatus::SignedIn { session } => session,
        other => panic!("not signed in: {other:?}"),
    }
}

/// Every file under `dir`, read as bytes.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

/// A session bus of the test's own with GNOME Keyring's Secret Service on
/// it, unlocked; stopped on drop.
struct KeyringSession {
    keyring: Child,
    /// Stopped after the keyring daemon (fields drop after `drop`).
    bus: tollgate_e2e::webdriver::SessionBus,
    _home: tempfile::TempDir,
}

impl KeyringSession {
    fn start() -> KeyringSession {
        use std::io::Write;
        let bus = tollgate_e2e::webdriver::SessionBus::start();
        let home = tempfile::tempdir().unwrap();
        let mut keyring = Command::new("gnome-keyring-daemon")
            .args(["--foreground", "--unlock", "--components=secrets"])
            .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
            .env("HOME", home.path())
            .env("XDG_DATA_HOME", home.path())
            .env("XDG_RUNTIME_DIR", home.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gnome-keyring-daemon starts (apt-get install gnome-keyring)");
        // The login keyring's password, then end of input.
        drop(
            keyring
                .stdin
                .take()
                .map(|mut s| s.write_all(b"tollgate-test")),
        );
        // Ready once it has made the login keyring: a client asking before
        // would make a default collection of its own, locked, and fail.
        let login = home.path().join("keyrings/login.keyring");
        let deadline = Instant::now() + Duration::from_secs(15);
        while !login.exists() {
            assert!(
                Instant::now() < deadline,
                "gnome-keyring-daemon made no login keyring"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        KeyringSession {
            keyring,
            bus,
            _home: home,
        }
    }
}

impl Drop for KeyringSession {
    fn drop(&mut self) {
        let _ = self.keyring.kill();
        let _ = self.keyring.wait();
    }
}

/// The keyring test runs in a child process of this test binary with the
/// session bus in its environment (the keyring library reads the bus from
/// the environment, which a test must not change under its neighbours).
#[test]
fn sign_in_keeps_tokens_in_the_os_keyring_refreshes_and_signs_out() {
    let session = KeyringSession::start();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "keyring_sign_in_on_the_tests_own_bus",
            "--include-ignored",
            "--nocapture",
        ])
        .env("DBUS_SESSION_BUS_ADDRESS", &session.bus.address)
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "the inner test ran: {text}");
}

#[tokio::test]
#[ignore = "run by sign_in_keeps_tokens_in_the_os_keyring_refreshes_and_signs_out, on its own session bus"]
async fn keyring_sign_in_on_the_tests_own_bus() {
    // The keyring daemon may take a moment to claim its name on the bus.
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Err(e) = console_core::vault::keyring_usable().await {
        assert!(
            Instant::now() < deadline,
            "the test's keyring never came up: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Access tokens live 8 s: the console refreshes them within the test.
    let provider = Provider::start(AUDIENCE, 8);
    let console = gateway_trusting(&provider).await;
    let local = info(&console);
    *console.host().login.lock().unwrap() = "ana".into();

    let status = console
        .sign_in(sign_in_options(&local, false))
        .await
        .expect("signs in");
    let session = signed_in(&status).clone();
    assert_eq!(session.subject, "ana");
    assert_eq!(session.roles, ["auditor", "analyst"]);
    assert!(session.in_keyring && session.refreshable, "{session:?}");
    let opened = console.host().opened.lock().unwrap().clone();
    assert_eq!(opened.len(), 1);
    assert!(
        opened[0].contains("code_challenge_method=S256")
            && opened[0].contains("redirect_uri=http%3A%2F%2F127.0.0.1%3A"),
        "PKCE and a loopback redirect: {}",
        opened[0]
    );

    // The tokens are in the keyring, nowhere on disk, never in an event.
    let entry = keyring::Entry::new(console_core::vault::SERVICE, &local.api).unwrap();
    let kept: serde_json::Value = serde_json::from_str(&entry.get_password().unwrap()).unwrap();
    // The profile is kept with the tokens: an edited remote.json cannot
    // send the refresh token elsewhere.
    assert_eq!(kept["profile"]["issuer"], provider.issuer.as_str());
    let access = kept["tokens"]["access_token"].as_str().unwrap().to_string();
    let refresh = kept["tokens"]["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    for (path, bytes) in files_under(console.host().dir.path()) {
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&access) && !text.contains(&refresh),
            "a token is on disk in {}",
            path.display()
        );
    }
    let events = format!("{:?}", console.host().events.lock().unwrap());
    assert!(
        !events.contains(&access) && !events.contains(&refresh),
        "a token reached the window"
    );

    // The gateway takes the token: the browser lists sessions as ana.
    let viewer = console.viewer().await.unwrap();
    assert_eq!(
        (viewer.mode.as_str(), viewer.subject.as_str()),
        ("remote", "ana")
    );
    console
        .sessions(SessionFilter::default())
        .await
        .expect("lists sessions as ana");

    // Silent refresh before expiry: a new access token, kept in the keyring,
    // and the API still answers after the first token's lifetime.
    let started = Instant::now();
    loop {
        let now: serde_json::Value = serde_json::from_str(&entry.get_password().unwrap()).unwrap();
        if now["tokens"]["access_token"] != kept["tokens"]["access_token"] {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the tokens were not refreshed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(9).saturating_sub(started.elapsed())).await;
    console
        .sessions(SessionFilter::default())
        .await
        .expect("still signed in after the first token expired");
    assert_eq!(
        console.host().opened.lock().unwrap().len(),
        1,
        "no browser for a refresh"
    );

    // A restarted console signs in from the keyring, without the browser
    // (the refresh token rotates, so only one console uses it at a time).
    console.leave_remote().await;
    let again = Console::new(console.host().clone());
    let status = again.restore_remote().await;
    assert_eq!(signed_in(&status).subject, "ana");
    assert_eq!(console.host().opened.lock().unwrap().len(), 1);
    again
        .sessions(SessionFilter::default())
        .await
        .expect("the restored sign-in is accepted");

    // Sign-out clears the keyring.
    let status = again.sign_out().await.unwrap();
    assert!(
        matches!(status, RemoteStatus::SignedOut { .. }),
        "{status:?}"
    );
    assert!(matches!(entry.get_password(), Err(keyring::Error::NoEntry)));
    let viewer = console.viewer().await.unwrap();
    assert_eq!(viewer.mode, "local", "back to the local gateway");
    console.stop_local().await;
}

#[tokio::test]
async fn roles_decide_what_a_sign_in_sees_and_refused_tokens_say_why() {
    let provider = Provider::start(AUDIENCE, 600);
    let console = gateway_trusting(&provider).await;
    let local = info(&console);

    // Some traffic to look at: a masked SELECT through the gateway.
    let persona = Persona::engineer();
    let access = console.dev_access(persona.clone()).await.unwrap();
    let addr: std::net::SocketAddr = local.listen.parse().unwrap();
    let options = sqlx::postgres::PgConnectOptions::new()
        .host("127.0.0.1")
        .port(addr.port())
        .username(&persona.subject)
        .password(&access.token)
        .database(&local.connection)
        .ssl_mode(sqlx::postgres::PgSslMode::VerifyCa)
        .ssl_root_cert(&local.ca_file);
    let mut conn = sqlx::postgres::PgConnection::connect_with(&options)
        .await
        .unwrap();
    sqlx::raw_sql("SELECT id, pan FROM payments ORDER BY id LIMIT 3")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    // An auditor signs in for this session only (as where no keyring runs).
    *console.host().login.lock().unwrap() = "quinn".into();
    let status = console
        .sign_in(sign_in_options(&local, true))
        .await
        .expect("signs in");
    let session = signed_in(&status);
    assert_eq!(session.roles, ["auditor"]);
    assert!(!session.in_keyring);

    let mut found = None;
    for _ in 0..50 {
        let page = console
            .sessions(SessionFilter {
                subject: Some("alice".into()),
                outcome: Some("masked".into()),
                ..SessionFilter::default()
            })
            .await
            .unwrap();
        if let Some(s) = page.sessions.first() {
            found = Some(s.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let found = found.expect("alice's masked session is listed");
    let detail = console.session(found.row.id.clone()).await.unwrap();
    assert!(!detail.previews, "an auditor gets no result rows");
    let frames = console.frames(found.row.id.clone(), -1, 100).await.unwrap();
    let result = frames
        .frames
        .iter()
        .find(|f| f.kind == "result" && f.body["rows"] == 3)
        .expect("the SELECT's result frame");
    assert!(result.body.get("preview").is_none(), "{result:?}");
    assert_eq!(result.body["withheld"], "result rows: analysts only");
    let markers = console.markers(found.row.id.clone()).await.unwrap();
    assert!(
        markers
            .markers
            .iter()
            .any(|m| m.mark == "masked" && m.seq == result.seq),
        "{markers:?}"
    );

    // The audit log's state: signed now, verified here, key pinned.
    let state = console.audit_state().await.unwrap();
    assert!(state.signature_ok && !state.key_changed, "{state:?}");
    assert!(state.size > 0);

    // Evidence for the window, with progress, verified by the console itself.
    let out = console.host().dir.path().join("evidence");
    let result = console
        .export_evidence(ExportOptions {
            from: None,
            to: None,
            dir: out.display().to_string(),
        })
        .await
        .expect("exports");
    assert!(result.verified_here, "{}", result.report);
    assert!(
        result.summary.sessions >= 1 && result.summary.identities >= 1,
        "{:?}",
        result.summary
    );
    assert!(out.join("INDEX.md").exists() && out.join("audit/audit.jsonl").exists());
    // An auditor's bundle carries the recordings without their result rows,
    // as the API shows them to an auditor.
    let recordings = files_under(&out.join("sessions"));
    assert!(!recordings.is_empty());
    for (path, bytes) in recordings {
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("\"preview\"") && !text.contains("******"),
            "result rows in {}",
            path.display()
        );
    }
    let phases: Vec<String> = console
        .host()
        .events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            console_core::types::ConsoleEvent::Export { progress } => Some(progress.phase.clone()),
            _ => None,
        })
        .collect();
    for phase in ["exporting", "downloading", "verifying", "done"] {
        assert!(phases.iter().any(|p| p == phase), "{phase} in {phases:?}");
    }
    // A second export into the same folder is refused before anything runs.
    let again = console
        .export_evidence(ExportOptions {
            from: None,
            to: None,
            dir: out.display().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), "export");

    // An analyst sees the same frames with masked rows.
    console.sign_out().await.unwrap();
    *console.host().login.lock().unwrap() = "alice".into();
    console
        .sign_in(sign_in_options(&local, true))
        .await
        .unwrap();
    let frames = console.frames(found.row.id.clone(), -1, 100).await.unwrap();
    let result = frames
        .frames
        .iter()
        .find(|f| f.kind == "result" && f.body["rows"] == 3)
        .unwrap();
    let preview = result.body["preview"].to_string();
    assert!(preview.contains("******"), "masked preview: {preview}");
    // ... but no evidence: that takes the auditor role.
    let refused = console.audit_state().await.unwrap_err();
    assert_eq!(refused.code(), "forbidden", "{refused}");
    assert!(refused.to_string().contains("auditor"), "{refused}");
    console.sign_out().await.unwrap();

    // A person without either role is told which group to ask for.
    *console.host().login.lock().unwrap() = "olga".into();
    console
        .sign_in(sign_in_options(&local, true))
        .await
        .unwrap();
    let refused = console
        .sessions(SessionFilter::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "forbidden");
    assert!(refused.to_string().contains("analysts"), "{refused}");

    // ... but olga is an approver there: the inbox works as in local mode,
    // as the signed-in identity. An agent's held export is released from it.
    support::eventually("the remote inbox is live as olga", || {
        let inbox = console.inbox();
        inbox.link.state == "live" && inbox.me.is_some_and(|me| me.subject == "olga")
    })
    .await;
    let agent = Persona::agent();
    let access = console.dev_access(agent.clone()).await.unwrap();
    let options = sqlx::postgres::PgConnectOptions::new()
        .host("127.0.0.1")
        .port(addr.port())
        .username(&agent.subject)
        .password(&access.token)
        .database(&local.connection)
        .ssl_mode(sqlx::postgres::PgSslMode::VerifyCa)
        .ssl_root_cert(&local.ca_file);
    let mut conn = sqlx::postgres::PgConnection::connect_with(&options)
        .await
        .unwrap();
    let export = tokio::spawn(async move {
        let mut out = conn
            .copy_out_raw("/* reason: chargeback sample */ COPY payments TO STDOUT")
            .await?;
        let mut rows = Vec::new();
        while let Some(chunk) = futures_util::StreamExt::next(&mut out).await {
            rows.extend_from_slice(&chunk?);
        }
        Ok::<_, sqlx::Error>(String::from_utf8_lossy(&rows).into_owned())
    });
    support::eventually("the held export reaches the remote inbox", || {
        console
            .inbox()
            .items
            .iter()
            .any(|i| i.request.state == "pending")
    })
    .await;
    let held = console
        .inbox()
        .items
        .into_iter()
        .find(|i| i.request.state == "pending")
        .unwrap();
    console
        .decide(console_core::types::Decision {
            id: held.request.id.clone(),
            approve: true,
            reason: "decided from a remote sign-in".into(),
            window_secs: None,
        })
        .await
        .expect("olga approves through the team gateway");
    let rows = export.await.unwrap().expect("the export is released");
    assert!(
        rows.lines().count() >= 5 && rows.contains("******"),
        "{rows}"
    );
    console.sign_out().await.unwrap();
    console.stop_local().await;
}

#[tokio::test]
async fn a_gateway_without_a_console_client_id_says_what_its_administrator_sets() {
    let console = Console::new(Recorder::new(true));
    console.start_local(any_port()).await.unwrap();
    let local = info(&console);
    let err = console
        .sign_in(sign_in_options(&local, true))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "sign_in");
    assert!(err.to_string().contains("console_client_id"), "{err}");
    assert!(matches!(
        console.remote_status(),
        RemoteStatus::SignedOut { .. }
    ));
    let err = console
        .sign_in(SignInOptions {
            gateway: "http://127.0.0.1:1".into(),
            ca_file: None,
            issuer: None,
            session_only: Some(true),
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("https"), "{err}");
    console.stop_local().await;
}

/// 100k sessions and a 100k-frame session written to the local gateway's
/// own recording store; the browser pages and searches them, the player
/// opens the long one and seeks in it.
#[tokio::test]
async fn a_hundred_thousand_sessions_page_and_a_hundred_thousand_frames_open_within_a_second() {
    use tollgate::recording::store::{Frame, SessionRow, Store};
    let console = Console::new(Recorder::new(true));
    console.start_local(any_port()).await.unwrap();
    let local = info(&console);
    let store = Store::open("", std::path::Path::new(&local.data_dir))
        .await
        .unwrap();
    const SESSIONS: usize = 100_000;
    const FRAMES: u64 = 100_000;
    for n in 0..SESSIONS {
        store.session(
            SessionRow {
                id: format!("bulk{n:06}"),
                started_at: "2026-12-01T10:00:00Z".into(),
                ended_at: None,
                subject: if n % 1000 == 0 {
                    "mallory".into()
                } else {
                    format!("user{}", n % 97)
                },
                kind: "person".into(),
                connection: "payments".into(),
                client: "127.0.0.1:5000".into(),
                protocol: "postgres".into(),
            },
            1_700_000_000_000 + n as i64,
        );
        if n % 1000 == 0 {
            store.frame(
                &format!("bulk{n:06}"),
                Frame {
                    seq: 0,
                    at_us: 0,
                    kind: "statement".into(),
                    body: serde_json::json!({
                        "text": "DELETE FROM payments WHERE id = $1", "decision": "refused", "approval": null,
                    }),
                },
            );
        }
    }
    store.session(
        SessionRow {
            id: "long".into(),
            started_at: "2026-12-01T11:00:00Z".into(),
            ended_at: None,
            subject: "agent-7".into(),
            kind: "agent".into(),
            connection: "payments".into(),
            client: "127.0.0.1:5001".into(),
            protocol: "postgres".into(),
        },
        1_800_000_000_000,
    );
    for seq in 0..FRAMES {
        let (kind, body) = match seq % 4 {
            0 => (
                "statement",
                serde_json::json!({
                    "text": format!("SELECT amount FROM payments WHERE id = $1 /* {seq} */"),
                    "decision": if seq % 10_000 == 0 { "refused" } else { "allowed" }, "approval": null,
                }),
            ),
            1 => (
                "result",
                serde_json::json!({ "tag": "SELECT 1", "rows": 1, "masked": 0, "preview": [["12.00"]] }),
            ),
            2 => (
                "statement",
                serde_json::json!({ "text": "SELECT 1", "decision": "allowed", "approval": null }),
            ),
            _ => (
                "result",
                serde_json::json!({ "tag": "SELECT 1", "rows": 1, "masked": 0, "preview": [["1"]] }),
            ),
        };
        store.frame(
            "long",
            Frame {
                seq,
                at_us: seq * 50,
                kind: kind.into(),
                body,
            },
        );
    }
    // The store's writer takes its time with 200k writes.
    let deadline = Instant::now() + Duration::from_secs(120);
    while store
        .summary_by_id("long")
        .await
        .unwrap()
        .is_none_or(|s| s.frames < FRAMES)
    {
        assert!(
            Instant::now() < deadline,
            "the store did not take the frames"
        );
        store.flush().await;
    }

    // The browser: the newest page, a filter, a search, paging on.
    let t = Instant::now();
    let first = console
        .sessions(SessionFilter {
            limit: Some(50),
            ..SessionFilter::default()
        })
        .await
        .unwrap();
    let first_page = t.elapsed();
    assert_eq!(first.sessions.len(), 50);
    assert_eq!(first.total, Some(SESSIONS as u64 + 1));
    assert_eq!(first.sessions[0].row.id, "long");
    let next = console
        .sessions(SessionFilter {
            limit: Some(50),
            after: first.next.clone(),
            ..SessionFilter::default()
        })
        .await
        .unwrap();
    // The first page held "long" and the 49 newest others.
    assert_eq!(next.sessions[0].row.id, format!("bulk{:06}", SESSIONS - 50));
    let t = Instant::now();
    let who = console
        .sessions(SessionFilter {
            q: Some("delete payments".into()),
            subject: Some("mallory".into()),
            ..SessionFilter::default()
        })
        .await
        .unwrap();
    let search = t.elapsed();
    assert_eq!(
        who.sessions.len(),
        100,
        "every 1000th session ran the DELETE"
    );
    assert!(
        who.sessions[0]
            .matched
            .as_ref()
            .unwrap()
            .text
            .starts_with("DELETE")
    );
    let refused = console
        .sessions(SessionFilter {
            outcome: Some("refused".into()),
            limit: Some(1000),
            ..SessionFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(refused.total, Some(100 + 1));

    // The player: header, first page and markers, then a seek to the middle.
    let t = Instant::now();
    let detail = console.session("long".into()).await.unwrap();
    let page = console.frames("long".into(), -1, 200).await.unwrap();
    let markers = console.markers("long".into()).await.unwrap();
    let open = t.elapsed();
    assert_eq!(detail.session.frames, FRAMES);
    assert_eq!(detail.last_frame.unwrap().seq, FRAMES - 1);
    assert_eq!(page.frames.len(), 200);
    assert_eq!(markers.markers.len(), 10, "{markers:?}");
    let t = Instant::now();
    let middle = console.frames("long".into(), 49_999, 200).await.unwrap();
    let seek = t.elapsed();
    assert_eq!(middle.frames[0].seq, 50_000);
    let t = Instant::now();
    let hits = console
        .search_session("long".into(), "/* 77776 */".into())
        .await
        .unwrap();
    let find = t.elapsed();
    assert_eq!(hits.matches, [77_776]);
    eprintln!(
        "100k sessions: first page {first_page:?}, search {search:?}; 100k frames: open {open:?}, seek {seek:?}, find {find:?}"
    );
    assert!(
        open < Duration::from_secs(1),
        "a 100k-frame session opened in {open:?}"
    );
    assert!(seek < Duration::from_secs(1), "a seek took {seek:?}");
    assert!(
        first_page < Duration::from_secs(1),
        "the first page of 100k sessions took {first_page:?}"
    );
    console.stop_local().await;
}
