//! Hostile and broken clients: each gets a clear error or a clean close,
//! nothing panics, and the gateway keeps serving everyone else.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_e2e::TestGateway;

/// Read until the server closes; returns what it sent.
async fn read_to_close(tcp: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out))
        .await
        .expect("server closes in time");
    out
}

/// The fields of the first ErrorResponse in `bytes`: (SQLSTATE, message).
fn error_response(bytes: &[u8]) -> (String, String) {
    assert_eq!(
        bytes.first(),
        Some(&b'E'),
        "expected an ErrorResponse, got {bytes:?}"
    );
    let len = i32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    let body = &bytes[5..1 + len];
    let mut code = String::new();
    let mut message = String::new();
    for field in body.split(|b| *b == 0) {
        match field.first() {
            Some(b'C') => code = String::from_utf8_lossy(&field[1..]).into(),
            Some(b'M') => message = String::from_utf8_lossy(&field[1..]).into(),
            _ => {}
        }
    }
    (code, message)
}

/// SSLRequest and GSSENCRequest as clients send them.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];

/// Send a one-byte-answer request and return the answer ('S' or 'N').
async fn negotiation_answer(tcp: &mut TcpStream, request: &[u8]) -> u8 {
    tcp.write_all(request).await.unwrap();
    tcp.read_u8().await.unwrap()
}

/// A startup-phase packet: length, protocol version, body.
fn startup_packet(version: i32, body: &[u8]) -> Vec<u8> {
    let mut packet = (8 + body.len() as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&version.to_be_bytes());
    packet.extend_from_slice(body);
    packet
}

/// A regular message: type byte, length, body.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(4 + body.len() as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Send `bytes` on a fresh connection; expect a FATAL with `code` whose
/// message contains `needle`, a closed connection, and a gateway that still serves.
async fn expect_startup_refusal(gw: &TestGateway, bytes: &[u8], code: &str, needle: &str) {
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let (got, message) = error_response(&read_to_close(&mut tcp).await);
    assert_eq!(got, code, "{message}");
    assert!(message.contains(needle), "{message}");
    still_serves(gw).await;
}

async fn still_serves(gw: &TestGateway) {
    let client = gw
        .tokio_postgres(&gw.token("alice", &["analysts"]))
        .await
        .expect("gateway still serves");
    assert_eq!(
        client
            .query_one("SELECT 7", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        7
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_startup_packet_gets_08p01() {
    let gw = TestGateway::start().await;
    // Protocol 3.0, a parameter name with no value and no terminator.
    expect_startup_refusal(
        &gw,
        &startup_packet(196608, b"user\0"),
        "08P01",
        "invalid startup packet",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_length_of_two_gigabytes_is_refused_at_once() {
    let gw = TestGateway::start().await;
    let packet = [0x7fff_fff0i32.to_be_bytes(), 196608i32.to_be_bytes()].concat();
    expect_startup_refusal(&gw, &packet, "08P01", "invalid length of startup packet").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_protocol_version_is_named() {
    let gw = TestGateway::start().await;
    let packet = startup_packet(2 << 16, b"\0");
    expect_startup_refusal(&gw, &packet, "0A000", "unsupported frontend protocol 2.0").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn newer_minor_version_is_negotiated_down_to_3_0() {
    let gw = TestGateway::start().await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let packet = startup_packet((3 << 16) | 2, b"user\0alice\0_pq_.fancy\0on\0\0");
    tcp.write_all(&packet).await.unwrap();
    let bytes = read_to_close(&mut tcp).await;
    // NegotiateProtocolVersion naming the unknown option, then (no TLS) a refusal.
    assert_eq!(bytes[0], b'v');
    let len = i32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    assert!(bytes[5..1 + len].windows(11).any(|w| w == b"_pq_.fancy\0"));
    let (code, _) = error_response(&bytes[1 + len..]);
    assert_eq!(code, "28000");
}

#[tokio::test(flavor = "multi_thread")]
async fn gssapi_encryption_is_declined_and_tls_follows() {
    let gw = TestGateway::start().await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    // GSSENCRequest: the gateway answers 'N', then the client may ask for TLS.
    assert_eq!(negotiation_answer(&mut tcp, &GSSENC_REQUEST).await, b'N');
    assert_eq!(negotiation_answer(&mut tcp, &SSL_REQUEST).await, b'S');
    // libpq with gssencmode=prefer does the same dance.
    let token = gw.token("alice", &["analysts"]);
    let out = tollgate_e2e::PsqlOutput::from(
        gw.psql_command(&token, "payments", "require")
            .env("PGGSSENCMODE", "prefer")
            .args(["-c", "SELECT 'gss declined'"])
            .output()
            .unwrap(),
    );
    assert_eq!(out.ok(), "gss declined");
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_instead_of_startup_is_refused() {
    let gw = TestGateway::start().await;
    expect_startup_refusal(
        &gw,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "08P01",
        "invalid length",
    )
    .await;
}

/// A raw TLS connection that has logged in; returns it after ReadyForQuery.
/// Send `bytes` on a logged-in session and read until the gateway closes
/// it; the ErrorResponse it sent.
async fn send_after_login(gw: &TestGateway, bytes: &[u8]) -> (String, String) {
    let mut tls = logged_in_raw(gw).await;
    tls.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out))
        .await
        .unwrap()
        .ok();
    error_response(&out)
}

async fn logged_in_raw(gw: &TestGateway) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut tls = login_raw(gw, &[]).await;
    let (tag, _) = read_message_after_login(&mut tls).await;
    assert_eq!(tag, b'Z');
    tls
}

/// SSLRequest and the TLS handshake.
async fn tls_connect(gw: &TestGateway) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    assert_eq!(negotiation_answer(&mut tcp, &SSL_REQUEST).await, b'S');
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(gw.client_tls()));
    connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// TLS, startup, and the password message with `extra` bytes written right
/// behind it in the same write; returns the stream positioned after login's
/// BackendKeyData (the next message is the first ReadyForQuery).
async fn login_raw(gw: &TestGateway, extra: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut tls = tls_connect(gw).await;
    let packet = startup_packet(196608, b"user\0alice\0database\0payments\0\0");
    tls.write_all(&packet).await.unwrap();
    let mut buf = vec![0u8; 9];
    tls.read_exact(&mut buf).await.unwrap(); // AuthenticationCleartextPassword
    assert_eq!(buf[0], b'R');
    let token = gw.token("alice", &["analysts"]);
    let mut password = message(b'p', format!("{token}\0").as_bytes());
    password.extend_from_slice(extra);
    tls.write_all(&password).await.unwrap();
    // Skip AuthenticationOk, ParameterStatus and BackendKeyData.
    loop {
        let mut header = [0u8; 5];
        tls.read_exact(&mut header).await.unwrap();
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        tls.read_exact(&mut body).await.unwrap();
        assert_ne!(
            header[0],
            b'E',
            "login failed: {}",
            String::from_utf8_lossy(&body)
        );
        if header[0] == b'K' {
            return tls;
        }
    }
}

/// The next message: (type, body).
async fn read_message_after_login(
    tls: &mut tokio_rustls::client::TlsStream<TcpStream>,
) -> (u8, Vec<u8>) {
    let mut header = [0u8; 5];
    tls.read_exact(&mut header).await.unwrap();
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    tls.read_exact(&mut body).await.unwrap();
    (header[0], body)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_sent_right_behind_the_password_is_not_lost() {
    let gw = TestGateway::start().await;
    let mut tls = login_raw(&gw, &message(b'Q', b"SELECT 'kept'\0")).await;
    let mut tags = Vec::new();
    let mut row = None;
    while tags.iter().filter(|t| **t == b'Z').count() < 2 {
        let (tag, body) = read_message_after_login(&mut tls).await;
        if tag == b'D' {
            row = Some(String::from_utf8_lossy(&body[6..]).into_owned());
        }
        tags.push(tag);
    }
    assert_eq!(tags, vec![b'Z', b'T', b'D', b'C', b'Z']);
    assert_eq!(row.as_deref(), Some("kept"));
}

#[tokio::test(flavor = "multi_thread")]
async fn message_length_of_two_gigabytes_after_login_ends_only_that_session() {
    let gw = TestGateway::start().await;
    let (code, message) = send_after_login(&gw, &[b'Q', 0x7f, 0xff, 0xff, 0xff]).await;
    assert_eq!(code, "08P01");
    assert!(message.contains("invalid message length"), "{message}");
    still_serves(&gw).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_message_type_is_answered_by_the_upstream_and_session_ends_cleanly() {
    let gw = TestGateway::start().await;
    let (code, message) = send_after_login(&gw, &[b'!', 0, 0, 0, 4]).await;
    assert_eq!(code, "08P01");
    assert!(
        message.contains("invalid frontend message type"),
        "{message}"
    );
    still_serves(&gw).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn client_vanishing_mid_result_frees_the_upstream() {
    let gw = TestGateway::start().await;
    let mut tls = logged_in_raw(&gw).await;
    let sql = b"SELECT /* vanishing client */ repeat('x', 1000) FROM generate_series(1, 2000000)\0";
    tls.write_all(&message(b'Q', sql)).await.unwrap();
    let mut some = vec![0u8; 64 * 1024];
    tls.read_exact(&mut some).await.unwrap();
    drop(tls);
    assert_eventually_sessions_zero(&gw).await;
    let db = tollgate_e2e::database();
    tollgate_e2e::assert_eventually!(
        db.pg.psql("payments", "SELECT count(*) FROM pg_stat_activity WHERE usename = 'tollgate_gateway' AND query LIKE '%vanishing client%'").unwrap() == "0",
        "the upstream backend stopped: {}", db.pg.psql("payments", "SELECT state, wait_event_type, wait_event, backend_start, left(query, 30) FROM pg_stat_activity WHERE usename = 'tollgate_gateway'").unwrap()
    );
    still_serves(&gw).await;
}

async fn assert_eventually_sessions_zero(gw: &TestGateway) {
    tollgate_e2e::assert_eventually!(gw.sessions() == 0, "the session ended");
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_client_does_not_stall_others() {
    let gw = TestGateway::start().await;
    let mut slow = logged_in_raw(&gw).await;
    let sql = b"SELECT repeat('y', 1000) FROM generate_series(1, 200000)\0";
    slow.write_all(&message(b'Q', sql)).await.unwrap();
    // The slow client reads a little, then nothing for a while.
    let mut some = vec![0u8; 8192];
    slow.read_exact(&mut some).await.unwrap();
    for _ in 0..3 {
        still_serves(&gw).await;
    }
    // It can still read the rest afterwards: nothing was lost.
    let mut total = some.len();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), slow.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        total += n;
        if n == 0 || buf[..n].windows(6).any(|w| w == [b'Z', 0, 0, 0, 5, b'I']) {
            break;
        }
    }
    assert!(total > 200_000 * 1000, "received {total} bytes");
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_timeout_closes_idle_connections() {
    let gw = TestGateway::start_edited(|text| {
        text.replace("[server.tls]", "startup_timeout_secs = 1\n\n[server.tls]")
    })
    .await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "an idle connection is closed after the startup timeout"
    );
    still_serves(&gw).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn function_call_messages_are_refused_and_the_session_goes_on() {
    let gw = TestGateway::start().await;
    let mut tls = logged_in_raw(&gw).await;
    // FunctionCall: oid of int4abs (1397), no argument formats, one text
    // argument "-5", text result.
    let mut body = 1397i32.to_be_bytes().to_vec();
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&2i32.to_be_bytes());
    body.extend_from_slice(b"-5");
    body.extend_from_slice(&0i16.to_be_bytes());
    tls.write_all(&message(b'F', &body)).await.unwrap();
    let (tag, body) = read_message_after_login(&mut tls).await;
    assert_eq!(tag, b'E', "an error, not a function result");
    let (code, text) = error_response(&message(b'E', &body));
    assert_eq!(code, "0A000");
    assert!(text.contains("call the function with SELECT"), "{text}");
    let (tag, _) = read_message_after_login(&mut tls).await;
    assert_eq!(tag, b'Z');
    // The session still answers queries.
    tls.write_all(&message(b'Q', b"SELECT abs(-5)\0"))
        .await
        .unwrap();
    let mut row = None;
    loop {
        let (tag, body) = read_message_after_login(&mut tls).await;
        if tag == b'D' {
            row = Some(String::from_utf8_lossy(&body[6..]).into_owned());
        }
        if tag == b'Z' {
            break;
        }
    }
    assert_eq!(row.as_deref(), Some("5"));
}

/// A startup packet sent over TLS (as the gateway requires); what the
/// gateway answers before it closes.
async fn startup_over_tls(gw: &TestGateway, body: &[u8]) -> Vec<u8> {
    let mut tls = tls_connect(gw).await;
    tls.write_all(&startup_packet(196608, body)).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_parameters_off_the_allow_list_are_refused_by_name() {
    let gw = TestGateway::start().await;
    // Names in any case, as PostgreSQL reads them; refused before the
    // password is asked for.
    for (body, needle) in [
        (
            &b"user\0alice\0database\0payments\0Role\0postgres\0\0"[..],
            "\"role\"",
        ),
        (
            &b"user\0alice\0database\0payments\0options\0-c session_replication_role=replica\0\0"[..],
            "session_replication_role",
        ),
        (
            &b"user\0alice\0database\0payments\0STANDARD_CONFORMING_STRINGS\0off\0\0"[..],
            "standard_conforming_strings",
        ),
    ] {
        let (code, message) = error_response(&startup_over_tls(&gw, body).await);
        assert_eq!(code, "0A000", "{message}");
        assert!(message.contains(needle), "{message}");
    }
    still_serves(&gw).await;
}

/// A protocol Parse under a name SQL's PREPARE holds already fails on the
/// server; an Execute of that name then runs the SQL statement, and the
/// gateway decides and records it as that statement, not as the failed Parse.
#[tokio::test(flavor = "multi_thread")]
async fn an_execute_is_decided_as_the_statement_the_server_holds() {
    let gw = TestGateway::start_with("[policy]\nstarter = true\n").await;
    let mut tls = logged_in_raw(&gw).await;
    let mut batch = message(b'Q', b"PREPARE s AS SELECT count(*) FROM customers\0");
    batch.extend(message(b'P', b"s\0SELECT 1\0\0\0"));
    batch.extend(message(b'S', b""));
    batch.extend(message(b'B', b"\0s\0\0\0\0\0\0\0"));
    batch.extend(message(b'E', b"\0\0\0\0\0"));
    batch.extend(message(b'S', b""));
    tls.write_all(&batch).await.unwrap();
    let mut errors = Vec::new();
    let mut readies = 0;
    let mut rows = 0;
    while readies < 3 {
        let (tag, body) = read_message_after_login(&mut tls).await;
        match tag {
            b'Z' => readies += 1,
            b'D' => rows += 1,
            b'E' => errors.push(error_response(
                &[b"E", &((body.len() + 4) as i32).to_be_bytes()[..], &body].concat(),
            )),
            _ => {}
        }
    }
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].0, "42P05",
        "the Parse under a taken name fails: {errors:?}"
    );
    assert_eq!(rows, 1, "the Execute ran the SQL-prepared count");
    drop(tls);
    gw.settle().await;
    let store = &gw.running.as_ref().unwrap().recording().store;
    let sessions = store.sessions(0, i64::MAX).await.unwrap();
    let frames = store.frames(&sessions[0].id, -1, 100).await.unwrap();
    let last = frames
        .iter()
        .rfind(|f| f.kind == "statement")
        .expect("the Execute is on record");
    assert!(
        last.body["text"]
            .as_str()
            .unwrap_or_default()
            .starts_with("EXECUTE"),
        "{}",
        last.body
    );
    assert!(
        last.body["resources"]
            .to_string()
            .contains("public.customers"),
        "{}",
        last.body
    );
}

/// Sends `batch` and reads up to its `readies`-th ReadyForQuery; returns
/// the DataRows' bodies and the SQLSTATEs of the errors.
async fn exchange(
    tls: &mut tokio_rustls::client::TlsStream<TcpStream>,
    batch: &[u8],
    readies: usize,
) -> (Vec<Vec<u8>>, Vec<String>) {
    tls.write_all(batch).await.unwrap();
    let (mut rows, mut errors, mut seen) = (Vec::new(), Vec::new(), 0);
    while seen < readies {
        let (tag, body) = read_message_after_login(tls).await;
        match tag {
            b'Z' => seen += 1,
            b'D' => rows.push(body),
            b'E' => errors.push(
                error_response(
                    &[b"E", &((body.len() + 4) as i32).to_be_bytes()[..], &body].concat(),
                )
                .0,
            ),
            _ => {}
        }
    }
    (rows, errors)
}

/// A Bind the server refuses leaves the portal bound as before: the rows
/// of a later Execute of it are masked for what really runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_bind_does_not_leave_the_gateway_a_wrong_portal() {
    let gw = TestGateway::start_with("[policy]\nstarter = true\n").await;
    let mut tls = logged_in_raw(&gw).await;
    let sync = message(b'S', b"");
    exchange(&mut tls, &message(b'Q', b"BEGIN\0"), 1).await;
    let mut batch = message(
        b'P',
        b"s1\0SELECT pan, cvv FROM payments WHERE id = 1\0\0\0",
    );
    batch.extend(message(b'B', b"p\0s1\0\0\0\0\0\0\0"));
    batch.extend(&sync);
    exchange(&mut tls, &batch, 1).await;
    let mut batch = message(b'P', b"s2\0SELECT 1, 2\0\0\0");
    batch.extend(message(b'D', b"Ss2\0"));
    batch.extend(&sync);
    exchange(&mut tls, &batch, 1).await;
    exchange(&mut tls, &message(b'Q', b"SAVEPOINT a\0"), 1).await;
    let mut batch = message(b'B', b"p\0s2\0\0\0\0\0\0\0");
    batch.extend(&sync);
    let (_, errors) = exchange(&mut tls, &batch, 1).await;
    assert_eq!(errors, ["42P03"], "the portal exists already");
    exchange(&mut tls, &message(b'Q', b"ROLLBACK TO SAVEPOINT a\0"), 1).await;
    let mut batch = message(b'E', b"p\0\0\0\0\0");
    batch.extend(&sync);
    let (rows, errors) = exchange(&mut tls, &batch, 1).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(rows.len(), 1, "portal p runs s1");
    let row = String::from_utf8_lossy(&rows[0]);
    assert!(!row.contains("4111111111111111"), "PAN unmasked: {row}");
    assert!(!row.contains("123"), "CVV unmasked: {row}");
}
