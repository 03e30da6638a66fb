//! Streaming the audit log to SIEMs, with real receivers: rsyslog over TLS
//! (RFC 5425) and an HTTPS-style JSON webhook. Nothing is lost while a SIEM
//! is down, delivery resumes across a restart, and an outage is on record.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate::config::Config;
use tollgate_e2e::{TestGateway, config_text, free_port};

/// A CA and a certificate for localhost, as PEM files in `dir`.
fn certificates(dir: &Path) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "SIEM test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

/// rsyslogd in the foreground, receiving RFC 5425 (TLS, octet counting)
/// on `port` and writing each raw message as a line of `out.log`.
struct Rsyslog(Child);

impl Rsyslog {
    fn start(dir: &Path, port: u16) -> Rsyslog {
        let d = dir.display();
        let conf = format!(
            r#"global(workDirectory="{d}"
       DefaultNetstreamDriver="ossl"
       DefaultNetstreamDriverCAFile="{d}/ca.pem"
       DefaultNetstreamDriverCertFile="{d}/cert.pem"
       DefaultNetstreamDriverKeyFile="{d}/key.pem"
       maxMessageSize="64k")
module(load="imtcp" StreamDriver.Name="ossl" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="raw" type="string" string="%rawmsg%\n")
action(type="omfile" file="{d}/out.log" template="raw" flushOnTXEnd="on" asyncWriting="off")
"#
        );
        std::fs::write(dir.join("rsyslog.conf"), conf).unwrap();
        let child = Command::new("rsyslogd")
            .args(["-n", "-f"])
            .arg(dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(dir.join("rsyslog.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rsyslogd is installed (scripts/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "rsyslogd did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Rsyslog(child)
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn gateway_config(dir: &Path, siem: &str) -> Config {
    let extra = format!("[policy]\nstarter = true\n{siem}");
    let text = config_text(dir, &extra);
    Config::parse(&text, "test.toml", dir).expect("valid config")
}

/// Wait until `seen` holds every seq from 0 to the end of the log in `data_dir`.
async fn wait_for_all(
    data_dir: &Path,
    seen: impl Fn() -> BTreeMap<u64, Value>,
) -> BTreeMap<u64, Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let on_disk = std::fs::read_to_string(data_dir.join("audit/audit.jsonl"))
            .unwrap()
            .lines()
            .count() as u64;
        let got = seen();
        if (0..on_disk).all(|seq| got.contains_key(&seq)) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "the SIEM got {} of {on_disk} records: missing {:?}",
            got.len(),
            (0..on_disk)
                .filter(|s| !got.contains_key(s))
                .take(10)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_log_streams_to_rsyslog_over_tls() {
    let siem_dir = tempfile::tempdir().unwrap();
    certificates(siem_dir.path());
    let port = free_port();
    let _rsyslog = Rsyslog::start(siem_dir.path(), port);
    let dir = tempfile::tempdir().unwrap();
    let config = gateway_config(
        dir.path(),
        &format!(
            "[[audit.siem]]\nname = \"rsyslog\"\nurl = \"syslog+tls://localhost:{port}\"\nca_file = \"{}\"\nbatch = 3\n",
            siem_dir.path().join("ca.pem").display()
        ),
    );
    let gw = TestGateway::start_config(config, dir).await;
    let token = gw.token("ops", &["admins"]);
    gw.psql(
        &token,
        &[
            "-c",
            "SELECT count(*) FROM payments WHERE pan = '4111111111111111'",
        ],
    )
    .ok();
    gw.psql(&token, &["-c", "UPDATE payments SET amount = 1"])
        .fails_with("refused");
    let out = siem_dir.path().join("out.log");
    let got = wait_for_all(&gw.data_dir, || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                // <PRI>1 TIME HOST tollgate PROCID MSGID - BOM{json}
                let json = &line[line.find('{')?..];
                let record: Value = serde_json::from_str(json).ok()?;
                Some((record["seq"].as_u64()?, Value::from(line)))
            })
            .collect()
    })
    .await;
    let lines: Vec<&str> = got.values().filter_map(Value::as_str).collect();
    let statement = lines
        .iter()
        .find(|l| l.contains(" statement - ") && l.contains("UPDATE payments"))
        .expect("the refused UPDATE reached the SIEM");
    assert!(
        statement.starts_with("<108>1 "),
        "log audit, warning: {statement}"
    );
    assert!(statement.contains(" tollgate "), "{statement}");
    let select = lines
        .iter()
        .find(|l| l.contains("SELECT count(*) FROM payments"))
        .unwrap();
    assert!(
        select.starts_with("<110>1 "),
        "log audit, informational: {select}"
    );
    assert!(
        !std::fs::read_to_string(&out)
            .unwrap()
            .contains("4111111111111111"),
        "no PAN reaches the SIEM"
    );
}

type Received = Arc<Mutex<BTreeMap<u64, Value>>>;

/// A webhook receiver: answers 503 while `up` is false, then stores every
/// record it is posted. Bound at once, so no other test can take its port.
async fn webhook(up: Arc<AtomicBool>, received: Received) -> (u16, tokio::task::JoinHandle<()>) {
    use axum::{Json, Router, http::HeaderMap, http::StatusCode, routing::post};
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, Json(body): Json<Value>| {
            let received = received.clone();
            let up = up.clone();
            async move {
                if !up.load(Ordering::SeqCst) {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                if headers.get("authorization").and_then(|v| v.to_str().ok())
                    != Some("Bearer s3cret-token")
                {
                    return StatusCode::UNAUTHORIZED;
                }
                let mut received = received.lock().unwrap();
                for record in body["records"].as_array().into_iter().flatten() {
                    received.insert(record["seq"].as_u64().unwrap(), record.clone());
                }
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (port, server)
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_lost_while_the_webhook_is_down_and_delivery_resumes_after_a_restart() {
    let up = Arc::new(AtomicBool::new(false));
    let received: Received = Arc::default();
    let (port, server) = webhook(up.clone(), received.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    let siem = format!(
        "[[audit.siem]]\nname = \"hook\"\nurl = \"http://127.0.0.1:{port}/hook\"\ntoken = {{ inline = \"s3cret-token\" }}\n"
    );
    let gw = TestGateway::start_config(gateway_config(&data_dir, &siem), dir).await;
    let token = gw.token("ops", &["admins"]);
    // The SIEM is down while these happen.
    for _ in 0..3 {
        gw.psql(&token, &["-c", "SELECT count(*) FROM customers"])
            .ok();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(received.lock().unwrap().is_empty());
    up.store(true, Ordering::SeqCst);
    let got = wait_for_all(&data_dir, || received.lock().unwrap().clone()).await;
    let events: Vec<&str> = got.values().filter_map(|r| r["event"].as_str()).collect();
    assert_eq!(
        events.iter().filter(|e| **e == "statement").count(),
        3,
        "{events:?}"
    );
    assert!(
        events.contains(&"siem.down"),
        "the outage is on record: {events:?}"
    );
    assert!(
        got.values()
            .any(|r| r["event"] == "siem.down" && r["resource"]["siem"] == "hook"),
        "{got:?}"
    );
    // The delivered point survives a restart: only new records are sent.
    let mut gw = gw;
    gw.running.take().unwrap().stop().await;
    let delivered = got.len();
    let cursor: u64 = std::fs::read_to_string(data_dir.join("audit/siem/hook.cursor"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        cursor as usize >= delivered,
        "cursor {cursor}, delivered {delivered}"
    );
    received.lock().unwrap().clear();
    let config = gateway_config(&data_dir, &siem);
    let running = tollgate::Gateway::new(config).start().await.unwrap();
    let got = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = received.lock().unwrap().clone();
            if got.values().any(|r| r["event"] == "gateway.start") {
                break got;
            }
            assert!(Instant::now() < deadline, "the restart's records arrive");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert!(
        got.keys().all(|seq| *seq >= cursor),
        "nothing before the cursor is sent again: {:?}",
        got.keys().collect::<Vec<_>>()
    );
    running.stop().await;
    server.abort();
}
