//! The console's calls with a headless host, against the real in-process
//! gateway in front of a throwaway PostgreSQL: what the desktop app does,
//! minus the window.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use console_core::Console;
use console_core::traffic::Pace;
use console_core::types::{Decision, InboxItem, LocalOptions, LocalStatus, Persona};
use futures_util::StreamExt;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
use support::{Recorder, any_port, eventually};

async fn started(no_notifications: bool) -> Console<Recorder> {
    let console = Console::new(Recorder::new(no_notifications));
    console
        .start_local(any_port())
        .await
        .expect("local gateway starts");
    eventually("the inbox is live", || console.inbox().link.state == "live").await;
    console
}

fn pending(console: &Console<Recorder>) -> Vec<InboxItem> {
    console
        .inbox()
        .items
        .into_iter()
        .filter(|i| i.request.state == "pending")
        .collect()
}

/// A client of the local gateway as `persona`.
async fn client(console: &Console<Recorder>, persona: &Persona) -> PgConnection {
    let LocalStatus::Running { info } = console.local_status() else {
        panic!("not running");
    };
    let access = console.dev_access(persona.clone()).await.expect("token");
    connect(&info, &persona.subject, &access.token).await
}

/// psql's way in: TLS verified against the gateway's certificate, the token as the password.
async fn connect(info: &console_core::types::LocalInfo, user: &str, token: &str) -> PgConnection {
    let addr: std::net::SocketAddr = info.listen.parse().unwrap();
    let options = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(addr.port())
        .username(user)
        .password(token)
        .database(&info.connection)
        .ssl_mode(PgSslMode::VerifyCa)
        .ssl_root_cert(&info.ca_file);
    PgConnection::connect_with(&options)
        .await
        .expect("connects through the local gateway")
}

const EXPORT: &str = "/* reason: quarterly audit sample */ COPY payments TO STDOUT";

/// A held export on its own task: its rows, or the error it ended with.
fn export(conn: PgConnection) -> tokio::task::JoinHandle<Result<String, sqlx::Error>> {
    export_of(conn, EXPORT)
}

fn export_of(
    mut conn: PgConnection,
    sql: &'static str,
) -> tokio::task::JoinHandle<Result<String, sqlx::Error>> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        let mut stream = conn.copy_out_raw(sql).await?;
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_export_reaches_the_inbox_masked_and_an_approval_releases_it() {
    let console = started(false).await;
    let inbox = console.inbox();
    let me = inbox.me.expect("signed in");
    assert_eq!(me.subject, "olga");
    assert_eq!(me.connections, ["payments"]);

    let waiting = export(client(&console, &Persona::agent()).await);
    eventually("the request is in the inbox", || {
        pending(&console).len() == 1
    })
    .await;
    let item = pending(&console).remove(0);
    let request = &item.request;
    assert_eq!(item.cannot_decide, None);
    assert_eq!(request.requester.subject, "agent-7");
    assert_eq!(request.reason.as_deref(), Some("quarterly audit sample"));
    assert_eq!(request.policy, "cardholder-bulk-export-needs-approval");
    assert!(request.cardholder);
    assert!(
        request
            .cardholder_resources
            .iter()
            .any(|r| r.contains("public.payments")),
        "{:?}",
        request.cardholder_resources
    );
    assert!(
        request
            .cardholder_resources
            .iter()
            .any(|r| r.ends_with("public.payments.pan")),
        "the PAN column is marked: {:?}",
        request.cardholder_resources
    );
    assert!(
        !request
            .cardholder_resources
            .iter()
            .any(|r| r.ends_with("public.payments.amount")),
        "{:?}",
        request.cardholder_resources
    );
    assert_eq!(request.notified, ["olga"]);
    for pan in ["4242424242424242", "4111111111111111", "5555555555554444"] {
        assert!(
            !format!("{request:?}").contains(pan),
            "a PAN in the preview"
        );
    }
    // Notifications are shown by their own thread, after the inbox changed.
    eventually("the request is notified", || {
        !console.host().notices.lock().unwrap().is_empty()
    })
    .await;
    let notices = console.host().notices.lock().unwrap().clone();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0].request, request.id);
    assert!(
        notices[0].title.contains("public.payments"),
        "{}",
        notices[0].title
    );

    let no_reason = console
        .decide(Decision {
            id: request.id.clone(),
            approve: true,
            reason: "  ".into(),
            window_secs: None,
        })
        .await
        .unwrap_err();
    assert_eq!(no_reason.code(), "no_reason");
    let decided = console
        .decide(Decision {
            id: request.id.clone(),
            approve: true,
            reason: "audit sample agreed with the QSA".into(),
            window_secs: None,
        })
        .await
        .expect("approved");
    assert_eq!(decided.state, "approved");
    let rows = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the export finishes")
        .unwrap()
        .expect("rows");
    assert!(rows.lines().count() >= 5, "{rows}");
    assert!(
        !rows.contains("4242424242424242"),
        "agents see masked PANs: {rows}"
    );
    eventually("its notification is taken down", || {
        console.host().closed.lock().unwrap().contains(&request.id)
    })
    .await;
    eventually("the decision is listed", || {
        console.inbox().items.first().is_some_and(|i| {
            i.request.state == "approved" && i.request.decided_by.as_deref() == Some("olga")
        })
    })
    .await;
    console.shutdown().await;
    assert_eq!(console.local_status(), LocalStatus::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_reaches_the_client_and_ones_own_request_cannot_be_approved() {
    let console = started(true).await;
    // A literal card number in the statement: the preview has `$n` instead.
    let theirs = export_of(
        client(&console, &Persona::agent()).await,
        "COPY (SELECT id, brand FROM payments WHERE pan <> '4111111111111111') TO STDOUT",
    );
    // The console's own identity, here also an analyst who may export.
    let olga = Persona {
        groups: vec!["analysts".into(), "approvers".into()],
        ..Persona::approver()
    };
    let mine = export(client(&console, &olga).await);
    eventually("both requests are in the inbox", || {
        pending(&console).len() == 2
    })
    .await;
    let items = pending(&console);
    let own = items
        .iter()
        .find(|i| i.request.requester.subject == "olga")
        .unwrap();
    let why = own
        .cannot_decide
        .clone()
        .expect("own request is not decidable");
    assert!(why.contains("made this request"), "{why}");
    let refused = console
        .decide(Decision {
            id: own.request.id.clone(),
            approve: true,
            reason: "mine".into(),
            window_secs: None,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "self_approval", "{refused}");

    let agents = items
        .iter()
        .find(|i| i.request.requester.subject == "agent-7")
        .unwrap();
    let statement = &agents.request.statement;
    assert!(statement.contains("pan <> $1"), "{statement}");
    assert!(!format!("{:?}", agents.request).contains("4111111111111111"));
    console
        .decide(Decision {
            id: agents.request.id.clone(),
            approve: false,
            reason: "no ticket for this export".into(),
            window_secs: None,
        })
        .await
        .expect("denied");
    let error = tokio::time::timeout(Duration::from_secs(20), theirs)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    let db = error.as_database_error().expect("a database error");
    assert_eq!(db.code().as_deref(), Some("42501"));
    assert!(
        db.message().contains("no ticket for this export"),
        "{}",
        db.message()
    );

    // No notification service: the console says so once and carries on.
    let warnings = console.host().warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("notifications are unavailable"));
    mine.abort();
    console.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_traffic_asks_for_an_export_an_approver_can_release() {
    let console = started(false).await;
    console.set_pace(Pace {
        query_every: Duration::from_millis(300),
        first_export_after: Duration::from_millis(500),
        export_every: Duration::from_secs(2),
    });
    console.start_traffic().await.expect("traffic starts");
    eventually("the agent's export is held", || {
        pending(&console).len() == 1
    })
    .await;
    let request = pending(&console).remove(0).request;
    assert_eq!(request.requester.subject, "agent-7");
    assert_eq!(
        request.reason.as_deref(),
        Some("nightly settlement reconciliation")
    );
    console
        .decide(Decision {
            id: request.id,
            approve: true,
            reason: "reconciliation run".into(),
            window_secs: None,
        })
        .await
        .unwrap();
    eventually("the export is released", || console.traffic().released == 1).await;
    eventually("ordinary queries run", || console.traffic().queries >= 2).await;
    assert_eq!(console.traffic().last_error, None);

    // The next export is the payments MCP server's export_cards tool,
    // called through the MCP listener and held in the same inbox.
    let LocalStatus::Running { info } = console.local_status() else {
        panic!("not running");
    };
    assert_eq!(info.mcp_note, None);
    assert!(
        info.mcp
            .as_deref()
            .is_some_and(|u| u.ends_with("/mcp/payments")),
        "{:?}",
        info.mcp
    );
    let tool_call = || {
        pending(&console)
            .into_iter()
            .find(|i| i.request.resources == ["call payments/export_cards"])
    };
    eventually("the agent's tool call is held", || tool_call().is_some()).await;
    let request = tool_call().expect("held").request;
    assert_eq!(request.requester.subject, "agent-7");
    assert_eq!(request.resources, ["call payments/export_cards"]);
    assert_eq!(
        request.reason.as_deref(),
        Some(console_core::traffic::TOOL_EXPORT_REASON)
    );
    assert!(
        request.statement.starts_with("tools/call export_cards {}")
            && request.statement.contains("Export every card on file"),
        "the approver sees the tool and its description: {}",
        request.statement
    );
    assert_eq!(
        request.policy,
        "mcp-destructive-or-bulk-tools-need-approval"
    );
    console
        .decide(Decision {
            id: request.id,
            approve: true,
            reason: "settlement run".into(),
            window_secs: None,
        })
        .await
        .unwrap();
    eventually("the tool's export is released", || {
        console.traffic().released == 2
    })
    .await;
    assert_eq!(console.traffic().last_error, None);
    console.shutdown().await;
    assert!(!console.traffic().running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_failures_say_what_to_do_next() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let console = Console::new(Recorder::new(false));
    let error = console
        .start_local(LocalOptions {
            listen: Some(taken.local_addr().unwrap().to_string()),
            ..any_port()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), "port_taken");
    assert!(
        error
            .hint()
            .contains("Stop it, or start the local gateway on other ports")
    );
    let LocalStatus::Failed { error: shown } = console.local_status() else {
        panic!("{:?}", console.local_status());
    };
    assert_eq!(shown.code, "port_taken");

    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = nobody.local_addr().unwrap().port();
    drop(nobody);
    let error = console
        .start_local(LocalOptions {
            upstream: Some(format!("postgres://app:secret@127.0.0.1:{port}/shop")),
            ..any_port()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), "upstream", "{error}");
    assert!(!error.to_string().contains("secret"), "{error}");
    assert!(error.hint().contains("pg_hba.conf"));

    let error = console
        .start_local(LocalOptions {
            upstream: Some("mysql://x@y/z".into()),
            ..any_port()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), "bad_url");
    assert_eq!(console.inbox().link.state, "off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_reconnects_when_the_gateway_comes_back() {
    use console_core::approvals::{ApprovalsLink, Target};
    use console_core::inbox::Inbox;
    use console_core::local::LocalGateway;

    let dir = tempfile::tempdir().unwrap();
    let port = |_| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let options = LocalOptions {
        listen: Some(port(0)),
        api_listen: Some(port(1)),
        ..LocalOptions::default()
    };
    let first = LocalGateway::start(dir.path(), &options, |_| {})
        .await
        .unwrap();
    let inbox = Arc::new(Mutex::new(Inbox::default()));
    let link = ApprovalsLink::start(
        Target {
            url: first.info().api,
            ca_file: Some(first.ca_file()),
        },
        first.tokens(Persona::approver()),
        inbox.clone(),
        Arc::new(|_| {}),
    );
    let state = || inbox.lock().unwrap().link().state.clone();
    eventually("the link is live", || state() == "live").await;

    first.stop().await;
    eventually("the link notices", || state() != "live").await;
    let detail = inbox
        .lock()
        .unwrap()
        .link()
        .detail
        .clone()
        .unwrap_or_default();
    assert!(detail.contains("reconnecting in"), "{detail}");

    // The same gateway again (same data directory, so the same issuer and certificate).
    let second = LocalGateway::start(dir.path(), &options, |_| {})
        .await
        .unwrap();
    eventually("the link is live again", || state() == "live").await;
    let token = second.token(&Persona::agent()).unwrap();
    let conn = connect(&second.info(), "agent-7", &token).await;
    let waiting = export(conn);
    eventually("a request on the new gateway arrives", || {
        inbox
            .lock()
            .unwrap()
            .view()
            .items
            .iter()
            .any(|i| i.request.state == "pending")
    })
    .await;
    waiting.abort();
    link.stop();
    second.stop().await;
}

/// A TLS proxy in front of the gateway's API that refuses WebSocket
/// upgrades, as some corporate proxies do; everything else passes.
async fn websocket_blocking_proxy(
    gateway_dir: &std::path::Path,
    upstream: std::net::SocketAddr,
) -> std::net::SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let cert_file = gateway_dir.join("gateway-cert.pem");
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_file)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(gateway_dir.join("gateway-key.pem")).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let client = Arc::new(console_core::tls::client_config(Some(&cert_file)).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, client) = (acceptor.clone(), client.clone());
            tokio::spawn(async move {
                let Ok(mut downstream) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match downstream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if String::from_utf8_lossy(&head)
                    .to_ascii_lowercase()
                    .contains("upgrade: websocket")
                {
                    let _ = downstream
                        .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    return;
                }
                let Ok(tcp) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let Ok(mut up) = tokio_rustls::TlsConnector::from(client)
                    .connect(name, tcp)
                    .await
                else {
                    return;
                };
                if up.write_all(&head).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut downstream, &mut up).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_websocket_the_inbox_polls_and_decides_over_https() {
    use console_core::approvals::{ApprovalsLink, Target};
    use console_core::inbox::Inbox;
    use console_core::local::LocalGateway;

    let dir = tempfile::tempdir().unwrap();
    let local = LocalGateway::start(dir.path(), &any_port(), |_| {})
        .await
        .unwrap();
    let info = local.info();
    let api: std::net::SocketAddr = info.api.trim_start_matches("https://").parse().unwrap();
    let proxy = websocket_blocking_proxy(std::path::Path::new(&info.data_dir), api).await;
    let inbox = Arc::new(Mutex::new(Inbox::default()));
    let link = ApprovalsLink::start(
        Target {
            url: format!("https://localhost:{}", proxy.port()),
            ca_file: Some(local.ca_file()),
        },
        local.tokens(Persona::approver()),
        inbox.clone(),
        Arc::new(|_| {}),
    );
    eventually("the link falls back to polling", || {
        inbox.lock().unwrap().link().state == "polling"
    })
    .await;
    let detail = inbox.lock().unwrap().link().detail.clone().unwrap();
    assert!(detail.contains("502"), "{detail}");

    let token = local.token(&Persona::agent()).unwrap();
    let conn = connect(&info, "agent-7", &token).await;
    let waiting = export(conn);
    let pending_id = || {
        inbox
            .lock()
            .unwrap()
            .view()
            .items
            .iter()
            .find(|i| i.request.state == "pending")
            .map(|i| i.request.id.clone())
    };
    eventually("the poll brings the request", || pending_id().is_some()).await;
    let decided = link
        .decider()
        .decide(Decision {
            id: pending_id().unwrap(),
            approve: true,
            reason: "approved over HTTPS".into(),
            window_secs: None,
        })
        .await
        .expect("decided over HTTP");
    assert_eq!(decided.state, "approved");
    let rows = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(rows.lines().count() >= 5);
    link.stop();
    local.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_front_of_an_existing_database_it_says_when_the_database_goes_away() {
    let db = tokio::task::spawn_blocking(tollgate::dev::demo_database)
        .await
        .unwrap()
        .expect("a database to stand in front of");
    let url = format!(
        "postgres://tollgate_gateway:{}@127.0.0.1:{}/payments?sslmode=verify-full&sslrootcert={}",
        db.gateway_password,
        db.pg.port,
        db.pg.ca_file.display()
    );
    let console = Console::new(Recorder::new(false));
    let info = console
        .start_local(LocalOptions {
            upstream: Some(url),
            ..any_port()
        })
        .await
        .expect("starts in front of the database");
    assert_eq!(info.mode, "upstream");
    assert!(
        !info.upstream.contains(&db.gateway_password),
        "{}",
        info.upstream
    );
    assert!(
        info.cardholder_tables
            .contains(&"public.payments".to_string())
    );
    assert_eq!(info.health, None);

    tokio::task::spawn_blocking(move || drop(db)).await.unwrap();
    eventually(
        "the console notices",
        || matches!(console.local_status(), LocalStatus::Running { info } if info.health.is_some()),
    )
    .await;
    let LocalStatus::Running { info } = console.local_status() else {
        unreachable!()
    };
    assert!(info.health.unwrap().contains("is not reachable over TCP"));
    console.shutdown().await;
}
