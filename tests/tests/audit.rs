//! Recording and the tamper-evident audit log, through the real gateway:
//! the frames and audit records a session leaves, the evidence bundle and
//! its offline verification (and that tampering is caught), the audit store
//! running out of space (statements refused, then served again), and
//! `kill -9` under load (no acknowledged statement missing, the same tree
//! continuing after restart).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio_postgres::SimpleQueryMessage;
use tollgate::Gateway;
use tollgate::audit::verify::verify_dir;
use tollgate::config::Config;
use tollgate::evidence::{EvidenceRequest, Quiet, export};
use tollgate::recording::store::Frame;
use tollgate_e2e::{
    TestGateway, assert_no_pan_in_tree, audit_records, config_text, database, expect_sqlstate,
    tls_trusting,
};

const STARTER: &str = "[policy]\nstarter = true";

/// The raw test card numbers of the seed data.
const PANS: &[&str] = &[
    "4111111111111111",
    "5555555555554444",
    "4242424242424242",
    "378282246310005",
    "6011111111111117",
];

/// A direct connection to the upstream (the gateway's own role), to compute
/// what the gateway should have seen.
async fn direct() -> tokio_postgres::Client {
    let db = database();
    let tls = tls_trusting(&db.pg.ca_file);
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host=localhost port={} dbname=payments user=tollgate_gateway password={} sslmode=require",
            db.pg.port, db.gateway_password
        ),
        tokio_postgres_rustls::MakeRustlsConnect::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    client
}

/// The documented result digest: SHA-256 over every row as a 4-byte
/// big-endian length followed by the DataRow body (column count, then each
/// value's length and bytes), computed here from the values a direct
/// connection returns in text format.
/// The recording's digest of `sql`'s rows, run directly on the database
/// and keyed with the gateway's own digest key (what its operator can do).
async fn expected_digest(gw: &TestGateway, sql: &str) -> String {
    let key = tollgate::recording::digest::DigestKey::open(&gw.data_dir).expect("digest key");
    let rows = direct().await.simple_query(sql).await.unwrap();
    let mut bodies = Vec::new();
    for message in rows {
        if let SimpleQueryMessage::Row(row) = message {
            let mut body = (row.len() as i16).to_be_bytes().to_vec();
            for i in 0..row.len() {
                match row.get(i) {
                    None => body.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(v) => {
                        body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        body.extend_from_slice(v.as_bytes());
                    }
                }
            }
            bodies.push(body);
        }
    }
    key.of_rows(bodies.iter().map(Vec::as_slice))
}

async fn frames_of(gw: &TestGateway, subject: &str) -> (String, Vec<Frame>) {
    let store = &gw.running.as_ref().unwrap().recording().store;
    let mut found = None;
    for _ in 0..100 {
        store.flush().await;
        let sessions = store.sessions(0, i64::MAX).await.unwrap();
        if let Some(session) = sessions.iter().find(|s| s.subject == subject)
            && session.ended_at.is_some()
        {
            found = Some(session.id.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = found.expect("the session was recorded and ended");
    // Read back in pages of two, as a replay would.
    let mut frames = Vec::new();
    let mut after = -1;
    loop {
        let page = store.frames(&id, after, 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq as i64;
        frames.extend(page);
    }
    (id, frames)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_is_recorded_frame_by_frame_and_audited() {
    let gw = TestGateway::start_with(STARTER).await;
    let token = gw.token("ops", &["admins"]);
    let client = gw.tokio_postgres(&token).await.unwrap();
    let select = "SELECT id, pan FROM payments WHERE id <= 2 ORDER BY id";
    client.simple_query(select).await.unwrap();
    let refused = client
        .simple_query("DELETE FROM payments")
        .await
        .unwrap_err();
    expect_sqlstate(&refused, "42501");
    let failed = client.simple_query("SELECT 1/0").await.unwrap_err();
    expect_sqlstate(&failed, "22012");
    drop(client);

    let (id, frames) = frames_of(&gw, "ops").await;
    let kinds: Vec<&str> = frames.iter().map(|f| f.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "connect",
            "statement",
            "result",
            "statement",
            "statement",
            "error",
            "masking",
            "disconnect"
        ]
    );
    assert!(
        frames
            .windows(2)
            .all(|w| w[0].at_us <= w[1].at_us && w[0].seq + 1 == w[1].seq),
        "frames are ordered with monotonic timestamps"
    );
    let connect = &frames[0].body;
    assert_eq!(connect["identity"]["subject"], "ops");
    assert_eq!(connect["identity"]["groups"], serde_json::json!(["admins"]));
    assert_eq!(connect["tls"], true);

    let allowed = &frames[1].body;
    assert_eq!(allowed["decision"], "allowed");
    assert_eq!(
        allowed["text"], "SELECT id, pan FROM payments WHERE id <= $1 ORDER BY id",
        "literals never reach a recording"
    );
    assert_eq!(allowed["cardholder"], true);
    let result = &frames[2].body;
    assert_eq!(result["tag"], "SELECT 2");
    assert_eq!(result["rows"], 2);
    assert_eq!(result["columns"], serde_json::json!(["id", "pan"]));
    assert_eq!(
        result["preview"][0],
        serde_json::json!(["1", "411111******1111"]),
        "the preview is what the client saw: masked"
    );
    assert_eq!(
        result["hmac_sha256"],
        expected_digest(&gw, select).await,
        "the digest proves the unmasked rows returned"
    );

    let denied = &frames[3].body;
    assert_eq!(denied["decision"], "refused");
    assert_eq!(denied["sqlstate"], "42501");
    assert_eq!(denied["policy"], "no-delete-or-update-without-where");
    assert_eq!(frames[5].body["sqlstate"], "22012");
    assert!(
        frames[6].body["masked"]
            .to_string()
            .contains("public.payments.pan")
    );

    // The audit log: the same story with the PCI DSS 10.2.2 fields.
    let records = audit_records(&gw.data_dir);
    let login = records
        .iter()
        .find(|r| r["event"] == "login" && r["actor"]["subject"] == "ops")
        .expect("login audited");
    assert_eq!(login["outcome"], "success");
    assert!(login["origin"].as_str().unwrap().starts_with("127.0.0.1:"));
    let session: Vec<&Value> = records
        .iter()
        .filter(|r| r["session"] == id.as_str())
        .collect();
    let events: Vec<(&str, &str)> = session
        .iter()
        .map(|r| (r["event"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        events,
        [
            ("session.start", "success"),
            ("statement", "success"),
            ("statement", "refused"),
            ("statement", "success"),
            ("statement.error", "failure"),
            ("masking", "success"),
            ("session.end", "success"),
        ]
    );
    for record in &session {
        for field in ["actor", "event", "time", "outcome", "origin", "resource"] {
            assert!(!record[field].is_null(), "{field} missing in {record}");
        }
    }
    assert_eq!(session[1]["cardholder_data"], true);
    assert_eq!(
        session[1]["resource"]["objects"][0],
        "SELECT on public.payments"
    );
    assert_eq!(session[2]["policy"], "no-delete-or-update-without-where");
    assert_eq!(
        allowed["audit_seq"], session[1]["seq"],
        "the frame points at its audit record"
    );
    // A failed login is audited too, with what the caller claimed to be.
    gw.psql("not-a-token", &["-c", "SELECT 1"])
        .fails_with("authentication failed");
    // Recorded after the refusal is sent (the client is not kept waiting).
    tollgate_e2e::assert_eventually!(
        audit_records(&gw.data_dir)
            .iter()
            .any(|r| r["event"] == "login"
                && r["outcome"] == "failure"
                && r["actor"]["claimed_user"] == "alice"),
        "the failed login is in the audit log"
    );
}

fn evidence_request(gw: &TestGateway, out: PathBuf) -> EvidenceRequest {
    let text = config_text(&gw.data_dir, STARTER);
    EvidenceRequest {
        config: Config::parse(&text, "test.toml", &gw.data_dir).unwrap(),
        config_file: None,
        from: None,
        to: None,
        out,
        by: tollgate::evidence::Exporter::Operator("qsa-test".into()),
    }
}

fn edit_line(dir: &Path, f: impl FnOnce(&mut Vec<String>)) {
    let path = dir.join("audit/audit.jsonl");
    let mut lines: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    f(&mut lines);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn evidence_bundle_verifies_offline_and_tampering_is_caught() {
    let gw = TestGateway::start_with(STARTER).await;
    let token = gw.token("ops", &["admins"]);
    gw.psql(
        &token,
        &[
            "-c",
            "SELECT * FROM payments WHERE pan = '4111111111111111' AND id > 0",
        ],
    )
    .ok();
    gw.psql(&token, &["-c", "UPDATE payments SET amount = 1"])
        .fails_with("refused");

    // Exported while the gateway runs: the export goes through its inbox.
    let out = tempfile::tempdir().unwrap();
    let bundle = out.path().join("bundle");
    let summary = export(&evidence_request(&gw, bundle.clone()), &mut Quiet)
        .await
        .expect("export");
    assert!(summary.verified, "{}", summary.report);
    assert_eq!(summary.identities, 1);
    assert_eq!(summary.sessions, 2);
    let key = std::fs::read_to_string(bundle.join("audit/verifier-key.txt")).unwrap();
    let records = audit_records(&bundle);
    let export_record = records.last().unwrap();
    assert_eq!(
        export_record["event"], "evidence.export",
        "the export is audited"
    );
    assert_eq!(export_record["actor"]["subject"], "qsa-test");

    let report = verify_dir(&bundle.join("audit"), &key);
    assert!(report.ok(), "{report}");
    let index = std::fs::read_to_string(bundle.join("INDEX.md")).unwrap();
    for requirement in [
        "3.4.1", "7.2.5", "8.2.1", "8.4.2", "10.2.2", "10.3.4", "10.5.1",
    ] {
        assert!(index.contains(requirement), "INDEX.md maps {requirement}");
    }
    let access = std::fs::read_to_string(bundle.join("access/ops.csv")).unwrap();
    assert!(
        access.contains("no-delete-or-update-without-where"),
        "{access}"
    );
    assert!(access.contains("pan = $1"), "{access}");
    let casts: Vec<PathBuf> = std::fs::read_dir(bundle.join("sessions"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cast"))
        .collect();
    assert_eq!(casts.len(), 2);
    for cast in &casts {
        let text = std::fs::read_to_string(cast).unwrap();
        let mut lines = text.lines();
        let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(header["version"], 2);
        for line in lines {
            let event: Value = serde_json::from_str(line).unwrap();
            assert_eq!(event[1], "o");
        }
    }
    let all: String = casts
        .iter()
        .map(|c| std::fs::read_to_string(c).unwrap())
        .collect();
    assert!(
        all.contains("411111******1111"),
        "the transcript shows masked results"
    );
    assert!(
        assert_no_pan_in_tree(&bundle, PANS) > 10,
        "no raw PAN in any file of the bundle"
    );

    // One byte changed, a record deleted, a pair swapped: each is caught.
    let tampered = |name: &str, edit: &dyn Fn(&mut Vec<String>)| {
        let copy = out.path().join(name);
        copy_dir(&bundle, &copy);
        edit_line(&copy, |lines| edit(lines));
        let report = verify_dir(&copy.join("audit"), &key);
        assert!(!report.ok(), "{name} passed verification:\n{report}");
        report
    };
    let report = tampered("one-byte", &|lines| {
        let line = &mut lines[3];
        let at = line.find("\"outcome\":\"").unwrap() + 11;
        let mut bytes = line.clone().into_bytes();
        bytes[at] ^= 0x01;
        *line = String::from_utf8(bytes).unwrap();
    });
    assert!(report.to_string().contains("FAIL  tree"), "{report}");
    let report = tampered("deleted", &|lines| {
        lines.remove(2);
    });
    assert!(report.to_string().contains("FAIL  sequence"), "{report}");
    let report = tampered("reordered", &|lines| lines.swap(2, 3));
    assert!(report.to_string().contains("FAIL  tree"), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_audit_store_refuses_statements_until_it_has_room_again() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    std::fs::create_dir_all(&audit).unwrap();
    let mounted = Command::new("mount")
        // Room for the log's 4 MiB journal (written in full when the log
        // opens) and a little more.
        .args(["-t", "tmpfs", "-o", "size=5m", "tmpfs"])
        .arg(&audit)
        .status()
        .expect("run mount");
    assert!(
        mounted.success(),
        "this test mounts a small tmpfs as the audit directory: run it as root"
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            // Lazy: a writer thread may still be letting go of its files.
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(audit.clone());
    let text = config_text(dir.path(), STARTER);
    let config = Config::parse(&text, "test.toml", dir.path()).unwrap();
    let data_dir = dir.path().to_path_buf();
    let gw = TestGateway::start_config(config, dir).await;
    let token = gw.token("ops", &["admins"]);
    let client = gw.tokio_postgres(&token).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();

    // Fill the file system.
    let filler = audit.join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while file
            .write_all(&block)
            .and_then(|()| file.sync_all())
            .is_ok()
        {}
    }
    // The log's last page may still have room for a record or two.
    let mut ran = 0;
    let error = loop {
        match client.simple_query("SELECT count(*) FROM customers").await {
            Ok(_) if ran < 100 => ran += 1,
            Ok(_) => panic!("100 statements ran with the audit file system full"),
            Err(error) => break error,
        }
    };
    let message = expect_sqlstate(&error, "58030");
    assert!(message.contains("audit log cannot be written"), "{message}");
    assert!(message.contains("PCI DSS 10.7"), "{message}");
    // The session (and the gateway) keep serving once there is room again.
    std::fs::remove_file(&filler).unwrap();
    let rows = client
        .simple_query("SELECT count(*) FROM customers")
        .await
        .expect("served again once the disk has room");
    assert!(rows.iter().any(|m| matches!(m, SimpleQueryMessage::Row(_))));
    drop(client);
    let mut gw = gw;
    gw.running.take().unwrap().stop().await;
    let key = tollgate::audit::log::signer(&audit, "tollgate.local/audit")
        .unwrap()
        .verifier_key();
    let report = verify_dir(&audit, &key);
    assert!(
        report.ok(),
        "the log verifies after the failed writes:\n{report}"
    );
    let on_record = audit_records(&data_dir)
        .into_iter()
        .filter(|r| r["statement"] == "SELECT count(*) FROM customers")
        .count();
    assert_eq!(
        on_record,
        ran + 1,
        "the statements that ran are on record, the refused one is not"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_ends_live_sessions_after_the_grace_and_the_last_checkpoint_covers_them() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    let text = config_text(dir.path(), STARTER)
        .replace("[server]\n", "[server]\nshutdown_grace_secs = 1\n");
    let config = Config::parse(&text, "test.toml", dir.path()).unwrap();
    let mut gw = TestGateway::start_config(config, dir).await;
    let token = gw.token("ops", &["admins"]);
    let client = gw.tokio_postgres(&token).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    let stopping = std::time::Instant::now();
    gw.running.take().unwrap().stop().await;
    let took = stopping.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "the session had its grace: {took:?}"
    );
    let error = client
        .simple_query("SELECT 1")
        .await
        .expect_err("the session was ended");
    assert!(client.is_closed(), "{error}");
    // Every session's last record is covered by the final signed checkpoint.
    let audit = data_dir.join("audit");
    let key = tollgate::audit::log::signer(&audit, "tollgate.local/audit")
        .unwrap()
        .verifier_key();
    let report = verify_dir(&audit, &key);
    assert!(report.ok(), "{report}");
    let records = audit_records(&data_dir);
    let end = records
        .iter()
        .position(|r| r["event"] == "session.end")
        .expect("the ended session is on record");
    let stop = records
        .iter()
        .position(|r| r["event"] == "gateway.stop")
        .expect("the stop is on record");
    assert!(end < stop, "the session ended before the gateway stopped");
    assert_eq!(
        records[end]["reason"], "gateway shut down",
        "{}",
        records[end]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_prunes_old_records_and_recordings_and_what_remains_verifies() {
    let gw = TestGateway::start_with(STARTER).await;
    let token = gw.token("ops", &["admins"]);
    gw.psql(&token, &["-c", "SELECT count(*) FROM customers"])
        .ok();
    gw.settle().await;
    let recording = gw.running.as_ref().unwrap().recording().clone();
    recording.auditor.log().checkpoint().await.unwrap();
    recording.store.flush().await;
    assert_eq!(
        recording.store.sessions(0, i64::MAX).await.unwrap().len(),
        1
    );

    // 91 days later, with the minimum retention of 90 days.
    let later = std::time::SystemTime::now() + Duration::from_secs(91 * 86_400);
    let swept = tollgate::recording::retention::sweep(&recording, 90, later, u64::MAX)
        .await
        .expect("sweep");
    assert!(swept.audit_records >= 5, "{swept:?}");
    assert_eq!(swept.sessions, 1, "{swept:?}");
    assert!(
        recording
            .store
            .sessions(0, i64::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    let records = audit_records(&gw.data_dir);
    assert_eq!(records[0]["event"], "retention.prune", "{}", records[0]);
    assert_eq!(
        records[0]["through_seq"].as_u64(),
        Some(swept.audit_records - 1)
    );
    assert!(
        records
            .iter()
            .any(|r| r["event"] == "recordings.prune" && r["sessions"] == 1)
    );

    // The gateway serves on; the log and an evidence bundle still verify.
    gw.psql(&token, &["-c", "SELECT 1"]).ok();
    let out = tempfile::tempdir().unwrap();
    let bundle = out.path().join("bundle");
    let summary = export(&evidence_request(&gw, bundle.clone()), &mut Quiet)
        .await
        .expect("export");
    assert!(summary.verified, "{}", summary.report);
    assert!(
        summary.report.contains(&format!(
            "records 0 to {} were pruned by retention",
            swept.audit_records - 1
        )),
        "{}",
        summary.report
    );
    let retention = std::fs::read_to_string(bundle.join("config/retention.txt")).unwrap();
    assert!(
        retention.contains(&format!("pruned so far: {}", swept.audit_records)),
        "{retention}"
    );
    let mut gw = gw;
    let data_dir = gw.data_dir.clone();
    gw.running.take().unwrap().stop().await;
    let audit = data_dir.join("audit");
    let key = tollgate::audit::log::signer(&audit, "tollgate.local/audit")
        .unwrap()
        .verifier_key();
    let report = verify_dir(&audit, &key);
    assert!(report.ok(), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_opts_in_records_whole_masked_results_up_to_its_limit() {
    // The connection's own setting (its table is the last one in the text).
    let gw = TestGateway::start_with("record_results_bytes = 2000\n[policy]\nstarter = true").await;
    let token = gw.token("ops", &["admins"]);
    let client = gw.tokio_postgres(&token).await.unwrap();
    let payments = client
        .simple_query("SELECT brand, pan FROM payments ORDER BY id LIMIT 8")
        .await
        .unwrap();
    let payment_rows = payments
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
        .count();
    assert!(payment_rows > 3, "more rows than the default preview");
    client
        .simple_query("SELECT id, memo FROM ledger ORDER BY id LIMIT 500")
        .await
        .unwrap();
    drop(client);
    let (_, frames) = frames_of(&gw, "ops").await;
    let results: Vec<&Value> = frames
        .iter()
        .filter(|f| f.kind == "result")
        .map(|f| &f.body)
        .collect();
    let whole = results
        .iter()
        .find(|r| r["columns"][1] == "pan")
        .expect("the payments result");
    assert_eq!(whole["preview_complete"], true, "{whole}");
    let preview = whole["preview"].as_array().unwrap();
    assert_eq!(preview.len(), payment_rows);
    for row in preview {
        let pan = row[1].as_str().unwrap();
        assert!(
            pan.contains("*****") && !PANS.iter().any(|p| pan.contains(p)),
            "recorded masked: {pan}"
        );
    }
    let ledger = results
        .iter()
        .find(|r| r["rows"] == 500)
        .expect("the ledger result");
    assert_eq!(ledger["preview_complete"], false, "over the limit");
    let kept = ledger["preview"].as_array().unwrap();
    assert!(
        kept.len() > 3 && kept.len() < 500,
        "{} rows kept",
        kept.len()
    );
    assert_eq!(kept[0][1], "entry 1");
    assert_eq!(
        kept[kept.len() - 1][0],
        kept.len().to_string(),
        "rows in order"
    );
}

/// Run by `kill_9_under_load_loses_no_acknowledged_statement` in a child
/// process (the gateway must die, not the test). Ignored otherwise.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "child process of kill_9_under_load_loses_no_acknowledged_statement"]
async fn child_gateway() {
    let Ok(path) = std::env::var("TOLLGATE_CHILD_CONFIG") else {
        return;
    };
    let config = Config::load(Path::new(&path)).unwrap();
    let running = Gateway::new(config).start().await.unwrap();
    println!("READY {}", running.local_addr.port());
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_under_load_loses_no_acknowledged_statement() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    // A fixed port is avoided: the child reports the one it bound.
    let text = config_text(&data_dir, STARTER);
    let file = data_dir.join("gateway.toml");
    std::fs::write(&file, &text).unwrap();
    /// Kills the child gateway however the test ends.
    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_gateway",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TOLLGATE_CHILD_CONFIG", &file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map(Child)
        .unwrap();
    let port = {
        use std::io::BufRead;
        let stdout = child.0.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        loop {
            let line = lines.next().expect("child gateway output").unwrap();
            // libtest prints "test child_gateway ... " on the same line.
            if let Some((_, port)) = line.split_once("READY ") {
                break port.trim().parse::<u16>().unwrap();
            }
        }
    };
    let issuer =
        tollgate::identity::dev_issuer::DevIssuer::load_or_create(&data_dir, "tollgate").unwrap();
    let token = issuer
        .mint(&tollgate::identity::dev_issuer::TokenRequest {
            subject: "loader".into(),
            groups: vec!["admins".into()],
            mfa: true,
            agent: false,
            ttl_secs: 600,
        })
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let token = token.clone();
        let stop = stop.clone();
        let cert = data_dir.join("gateway-cert.pem");
        workers.push(tokio::spawn(async move {
            let tls = tls_trusting(&cert);
            let (client, connection) = tokio_postgres::connect(
                &format!("host=localhost port={port} dbname=payments user=loader password={token} sslmode=require"),
                tokio_postgres_rustls::MakeRustlsConnect::new(tls),
            )
            .await
            .unwrap();
            tokio::spawn(connection);
            let mut acknowledged = Vec::new();
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let alias = format!("w{worker}_{i}");
                match client.simple_query(&format!("SELECT 1 AS {alias}")).await {
                    Ok(_) => acknowledged.push(alias),
                    Err(_) => break,
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for worker in workers {
        acknowledged.extend(worker.await.unwrap());
    }
    assert!(
        acknowledged.len() > 20,
        "the load ran: {}",
        acknowledged.len()
    );

    let records = std::fs::read_to_string(data_dir.join("audit/audit.jsonl")).unwrap();
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|alias| !records.contains(&format!("\"SELECT $1 AS {alias}\"")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} statements the clients saw answered have no audit record: {:?}",
        missing.len(),
        acknowledged.len(),
        &missing[..missing.len().min(5)]
    );

    // Restart on the same directory: the same tree continues and verifies.
    let config = Config::load(&file).unwrap();
    let running = Gateway::new(config)
        .start()
        .await
        .expect("restart after kill -9");
    running.stop().await;
    let audit = data_dir.join("audit");
    let key = tollgate::audit::log::signer(&audit, "tollgate.local/audit")
        .unwrap()
        .verifier_key();
    let report = verify_dir(&audit, &key);
    assert!(report.ok(), "{report}");
    assert!(report.records as usize > acknowledged.len());
}
