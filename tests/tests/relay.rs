//! The relay speaks all of protocol 3.0: simple and extended query,
//! pipelining, portals, COPY, notices, notifications, errors and cancel.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt, TryStreamExt};
use tollgate_e2e::{PsqlOutput, TestGateway, assert_eventually, expect_sqlstate};

#[tokio::test(flavor = "multi_thread")]
async fn simple_query_with_several_statements_and_notices() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice", &["analysts"]);
    let out = gw.psql(
        &token,
        &["-c", "SELECT 1; SELECT brand FROM payments WHERE id = 3; DO $$ BEGIN RAISE NOTICE 'hello from %', 'plpgsql'; END $$"],
    );
    assert_eq!(out.ok(), "1\nmastercard");
    assert!(
        out.stderr.contains("NOTICE:  hello from plpgsql"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_parameters_reach_the_upstream() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice", &["analysts"]);
    let out = gw
        .psql_command(&token, "payments", "require")
        .env("PGAPPNAME", "nightly-report")
        .env("PGCLIENTENCODING", "LATIN1")
        .env("PGOPTIONS", "-c search_path=pg_catalog,public -c statement_timeout=12345")
        .args(["-c", "SELECT current_setting('application_name'), current_setting('client_encoding'), current_setting('search_path'), current_setting('statement_timeout')"])
        .output()
        .unwrap();
    assert_eq!(
        PsqlOutput::from(out).ok(),
        "nightly-report|LATIN1|pg_catalog,public|12345ms"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn extended_protocol_with_parameters_and_binary_results() {
    let gw = TestGateway::start().await;
    let client = gw
        .tokio_postgres(&gw.token("alice", &["analysts"]))
        .await
        .unwrap();
    let statement = client.prepare("SELECT id, amount::float8, created_at IS NOT NULL FROM payments WHERE id = $1 OR brand = $2 ORDER BY id").await.unwrap();
    let rows = client.query(&statement, &[&5i64, &"jcb"]).await.unwrap();
    let got: Vec<(i64, f64, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(got, vec![(5, 1200.0, true), (7, 15.0, true)]);
    // The prepared statement stays usable.
    assert_eq!(
        client
            .query_one(&statement, &[&1i64, &""])
            .await
            .unwrap()
            .get::<_, i64>(0),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_queries_come_back_in_order() {
    let gw = TestGateway::start().await;
    let client = gw
        .tokio_postgres(&gw.token("alice", &["analysts"]))
        .await
        .unwrap();
    let queries = (1..=20i32).map(|i| {
        let client = &client;
        async move {
            client
                .query_one("SELECT $1::int4 * 10", &[&i])
                .await
                .map(|r| r.get::<_, i32>(0))
        }
    });
    let results: Vec<i32> = futures_util::future::try_join_all(queries).await.unwrap();
    assert_eq!(results, (1..=20).map(|i| i * 10).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn portal_suspension_fetches_in_pages() {
    let gw = TestGateway::start().await;
    let mut client = gw
        .tokio_postgres(&gw.token("alice", &["analysts"]))
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    let portal = tx
        .bind("SELECT id FROM ledger ORDER BY id", &[])
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let page = tx.query_portal(&portal, 4000).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 4000);
        seen.extend(page.iter().map(|r| r.get::<_, i32>(0)));
    }
    tx.commit().await.unwrap();
    assert_eq!(seen.len(), 10_000);
    assert_eq!(seen.first(), Some(&1));
    assert_eq!(seen.last(), Some(&10_000));
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_in_and_copy_out_stream_through() {
    let gw = TestGateway::start().await;
    let client = gw
        .tokio_postgres(&gw.token("alice", &["analysts"]))
        .await
        .unwrap();
    client
        .batch_execute("CREATE TEMP TABLE notes (id int, body text)")
        .await
        .unwrap();
    let sink = client.copy_in("COPY notes FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    for chunk in 0..50 {
        let mut data = String::new();
        for i in 0..200 {
            data.push_str(&format!("{}\tnote {}\n", chunk * 200 + i, chunk * 200 + i));
        }
        sink.send(bytes::Bytes::from(data)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 10_000);
    let stream = client
        .copy_out("COPY (SELECT id, body FROM notes ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    let text: Vec<u8> = chunks.concat();
    let text = String::from_utf8(text).unwrap();
    assert_eq!(text.lines().count(), 10_000);
    assert_eq!(text.lines().last(), Some("9999\tnote 9999"));
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_copy_from_stdin_and_failed_copy() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice", &["analysts"]);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("copy.sql");
    std::fs::write(
        &script,
        "CREATE TEMP TABLE t (a int);\nCOPY t FROM STDIN;\n1\n2\n3\n\\.\nSELECT sum(a) FROM t;\n",
    )
    .unwrap();
    assert_eq!(gw.psql(&token, &["-f", script.to_str().unwrap()]).ok(), "6");
    // Bad data: the upstream's error reaches psql and names the problem.
    std::fs::write(
        &script,
        "CREATE TEMP TABLE t (a int);\nCOPY t FROM STDIN;\nnot-a-number\n\\.\n",
    )
    .unwrap();
    gw.psql(&token, &["-f", script.to_str().unwrap()])
        .fails_with("invalid input syntax for type integer");
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_keep_the_session_usable() {
    let gw = TestGateway::start().await;
    let client = gw
        .tokio_postgres(&gw.token("alice", &["analysts"]))
        .await
        .unwrap();
    let err = client.query("SELECT 1/0", &[]).await.unwrap_err();
    expect_sqlstate(&err, "22012");
    let err = client
        .query("SELECT * FROM no_such_table", &[])
        .await
        .unwrap_err();
    expect_sqlstate(&err, "42P01");
    assert_eq!(
        client
            .query_one("SELECT 41 + 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        42
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_notify_reaches_the_listener() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice", &["analysts"]);
    let mut config: tokio_postgres::Config = format!(
        "host=localhost port={} dbname=payments user=alice",
        gw.addr.port()
    )
    .parse()
    .unwrap();
    config
        .password(&token)
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let (listener, mut connection) = config.connect(gw.tokio_postgres_tls()).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    listener.batch_execute("LISTEN settlements").await.unwrap();
    let sender = gw.tokio_postgres(&token).await.unwrap();
    sender
        .batch_execute("NOTIFY settlements, 'batch 42 closed'")
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("notification in time");
    assert_eq!(
        got,
        Some(("settlements".to_string(), "batch 42 closed".to_string()))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tokio_postgres_cancel_really_cancels() {
    let gw = TestGateway::start().await;
    let client = gw
        .tokio_postgres(&gw.token("alice", &["analysts"]))
        .await
        .unwrap();
    let cancel = client.cancel_token();
    let tls = gw.tokio_postgres_tls();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move { client.query("SELECT pg_sleep(30)", &[]).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cancel.cancel_query(tls).await.unwrap();
    let err = sleeper.await.unwrap().unwrap_err();
    expect_sqlstate(&err, "57014");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cancel took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_ctrl_c_cancels_the_running_statement() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice", &["analysts"]);
    let child = gw
        .psql_command(&token, "payments", "require")
        .args(["-c", "SELECT pg_sleep(30) /* psql ctrl-c */"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let started = Instant::now();
    // Wait until the statement runs upstream, then press Ctrl-C.
    let db = tollgate_e2e::database();
    assert_eventually!(
        db.pg.psql("payments", "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30) /* psql ctrl-c */' AND state = 'active'").unwrap() == "1",
        "the statement reached the upstream"
    );
    std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    let out = PsqlOutput::from(
        tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap(),
    );
    out.fails_with("canceling statement due to user request");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "cancel took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_cancel_key_cancels_nothing() {
    let gw = TestGateway::start().await;
    let client = gw
        .tokio_postgres(&gw.token("alice", &["analysts"]))
        .await
        .unwrap();
    // A CancelRequest with a made-up key: the gateway must not forward it.
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    let mut packet = vec![0, 0, 0, 16];
    packet.extend_from_slice(&80877102i32.to_be_bytes());
    packet.extend_from_slice(&1i32.to_be_bytes());
    packet.extend_from_slice(&2i32.to_be_bytes());
    tcp.write_all(&packet).await.unwrap();
    drop(tcp);
    let rows = client.query("SELECT pg_sleep(0.5), 1", &[]).await.unwrap();
    assert_eq!(rows.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlx_connects_over_verified_tls() {
    use sqlx::Connection;
    let gw = TestGateway::start().await;
    let options = sqlx::postgres::PgConnectOptions::new()
        .host("localhost")
        .port(gw.addr.port())
        .username("alice")
        .password(&gw.token("alice", &["analysts"]))
        .database("payments")
        .ssl_mode(sqlx::postgres::PgSslMode::VerifyFull)
        .ssl_root_cert(gw.data_dir.join("gateway-cert.pem"));
    let mut conn = sqlx::PgConnection::connect_with(&options).await.unwrap();
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM payments WHERE brand = $1")
        .bind("visa")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(count, 2);
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_end_on_terminate_and_on_disconnect() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice", &["analysts"]);
    let client = gw.tokio_postgres(&token).await.unwrap();
    // Other tests share the database: mark this session's upstream backend.
    client
        .batch_execute("SET application_name = 'terminate-check'")
        .await
        .unwrap();
    let db = tollgate_e2e::database();
    let marked = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'terminate-check'";
    assert_eq!(db.pg.psql("payments", marked).unwrap(), "1");
    assert_eq!(gw.sessions(), 1);
    drop(client); // tokio-postgres sends Terminate
    assert_eventually!(gw.sessions() == 0, "session ended after Terminate");
    gw.psql(&token, &["-c", "SELECT 1"]).ok();
    assert_eventually!(gw.sessions() == 0, "psql session ended");
    assert_eventually!(
        db.pg.psql("payments", marked).unwrap() == "0",
        "the upstream backend is gone too"
    );
}

/// Counts the TLS records a peer sends, by their headers, as the bytes
/// pass; the single-byte answer to PostgreSQL's SSLRequest comes first.
struct RecordTap {
    inner: tokio::net::TcpStream,
    /// Bytes still to skip before the next record header.
    skip: usize,
    header: Vec<u8>,
    lengths: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
}

impl tokio::io::AsyncRead for RecordTap {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let this = &mut *self;
        for &byte in &buf.filled()[before..] {
            if this.skip > 0 {
                this.skip -= 1;
                continue;
            }
            this.header.push(byte);
            if this.header.len() == 5 {
                let length = usize::from(u16::from_be_bytes([this.header[3], this.header[4]]));
                this.lengths.lock().unwrap().push(length);
                this.skip = length;
                this.header.clear();
            }
        }
        poll
    }
}

impl tokio::io::AsyncWrite for RecordTap {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// libpq's asynchronous reader (`PQconsumeInput`: pgbench and every event
/// loop built on libpq) takes at most 8 kB of plaintext per socket wake-up;
/// the rest of a larger TLS record waits in OpenSSL's buffer while the
/// socket stays quiet, and the client hangs with its result half read
/// (pgbench did, with two clients reading 1000 card rows). The gateway's
/// records carry at most 8 kB, like PostgreSQL's own.
#[tokio::test(flavor = "multi_thread")]
async fn tls_records_to_the_client_fit_libpq_async_reads() {
    use tokio_postgres::tls::MakeTlsConnect;

    let gw = TestGateway::start().await;
    let token = gw.token("alice", &["analysts"]);
    let lengths = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let tap = RecordTap {
        inner: tokio::net::TcpStream::connect(gw.addr).await.unwrap(),
        skip: 1,
        header: Vec::new(),
        lengths: lengths.clone(),
    };
    let mut config: tokio_postgres::Config = "dbname=payments user=alice".parse().unwrap();
    config
        .password(&token)
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let mut make = gw.tokio_postgres_tls();
    let tls = <_ as MakeTlsConnect<RecordTap>>::make_tls_connect(&mut make, "localhost").unwrap();
    let (client, connection) = config.connect_raw(tap, tls).await.unwrap();
    tokio::spawn(connection);
    // Large rows (one message spans many records) and many small ones.
    let messages = client
        .simple_query(
            "SELECT repeat('r', 100000) FROM generate_series(1, 4); \
             SELECT i, repeat('s', 100) FROM generate_series(1, 2000) AS i",
        )
        .await
        .unwrap();
    let rows = messages
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(rows, 2004);
    let lengths = lengths.lock().unwrap().clone();
    let total: usize = lengths.iter().sum();
    assert!(total > 600_000, "only {total} bytes of records seen");
    // The test client speaks TLS 1.3 (rustls's defaults): a record adds the
    // inner content type and a 16-byte tag to its plaintext.
    let largest = lengths.iter().max().unwrap() - 17;
    assert!(
        largest <= tollgate::listener::tls::MAX_RECORD - 5,
        "a TLS record carried {largest} bytes of plaintext (libpq's async reader takes 8192)"
    );
}
