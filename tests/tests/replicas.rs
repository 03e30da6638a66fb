//! Two gateway processes (`tollgate serve`) sharing one PostgreSQL store:
//! a statement held on one is approved by an approver connected to the
//! other, and released at once.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tollgate::identity::dev_issuer::{DevIssuer, TokenRequest};
use tollgate_e2e::console::{Auth, connect_console};
use tollgate_e2e::{config_text, database, tollgate_binary};

/// A `tollgate serve` child process; killed when dropped.
struct Replica {
    child: Child,
    addr: SocketAddr,
    api: SocketAddr,
    dir: PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, store: &str) -> Replica {
    let extra = format!(
        "[policy]\nstarter = true\n\n[api]\nlisten = \"127.0.0.1:0\"\n\n[audit]\nrecordings = \"{store}\"\n\n[approvals]\nexpire_secs = 60\nreplica_key = {{ inline = \"replica-key-for-the-test-only\" }}\n"
    );
    let config = dir.join("gateway.toml");
    std::fs::write(&config, config_text(dir, &extra)).unwrap();
    let mut child = Command::new(tollgate_binary())
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tollgate serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listening on ").nth(1) {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    let addr: SocketAddr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the replica started")
        .parse()
        .unwrap();
    let api: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("api.json")).unwrap()).unwrap();
    let api: SocketAddr = api["url"]
        .as_str()
        .unwrap()
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    Replica {
        child,
        addr,
        api,
        dir: dir.to_path_buf(),
    }
}

/// The agent's `COPY payments TO STDOUT` through `replica`, in psql.
fn export(replica: &Replica, token: &str) -> Child {
    Command::new("psql")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .arg(format!(
            "host=localhost port={} dbname=payments user=agent-7 sslmode=verify-full sslrootcert={}",
            replica.addr.port(),
            replica.dir.join("gateway-cert.pem").display()
        ))
        .args(["-c", "COPY payments TO STDOUT"])
        .env("PGPASSWORD", token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn finish(child: Child) -> std::process::Output {
    tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_held_on_one_replica_is_approved_on_the_other() {
    let db = database();
    let store = format!(
        "postgres://postgres:{}@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        db.pg.superuser_password,
        db.pg.port,
        db.pg.ca_file.display()
    );
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // One token issuer for both, as one OIDC provider would be.
    let issuer = DevIssuer::load_or_create(a_dir.path(), "tollgate").unwrap();
    for entry in std::fs::read_dir(a_dir.path()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), b_dir.path().join(entry.file_name())).unwrap();
    }
    let a = start(a_dir.path(), &store);
    let b = start(b_dir.path(), &store);

    let approver = issuer
        .mint(&TokenRequest {
            subject: "olga".into(),
            groups: vec!["approvers".into()],
            mfa: true,
            agent: false,
            ttl_secs: 600,
        })
        .unwrap();
    let mut console = connect_console(
        b.api,
        &b.dir.join("gateway-cert.pem"),
        &approver,
        Auth::Header,
    )
    .await
    .expect("console on replica b");
    console.expect("hello").await;
    console.expect("snapshot").await;

    let agent = issuer
        .mint(&TokenRequest {
            subject: "agent-7".into(),
            groups: vec!["agents".into()],
            mfa: false,
            agent: true,
            ttl_secs: 600,
        })
        .unwrap();
    // Someone with a login on the store's database listens in.
    let eavesdrop = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-h",
            "localhost",
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .arg("-p")
        .arg(db.pg.port.to_string())
        .args([
            "-c",
            "LISTEN tollgate_approvals",
            "-c",
            "SELECT pg_sleep(4)",
        ])
        .env("PGPASSWORD", &db.pg.superuser_password)
        .env("PGSSLMODE", "require")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let psql = export(&a, &agent);

    let requested = console.expect("requested").await;
    let id = requested["request"]["id"].as_str().unwrap().to_string();
    assert_eq!(requested["request"]["requester"]["subject"], "agent-7");

    // A forged decision (not signed with the replica key) approves nothing.
    let heard = finish(eavesdrop).await;
    let heard = String::from_utf8_lossy(&heard.stdout).into_owned()
        + &String::from_utf8_lossy(&heard.stderr);
    let holder = heard
        .split("\"from\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("the eavesdropper heard the request: {heard}"))
        .to_string();
    let forged = serde_json::json!({
        "from": "gw_mallory", "at_ms": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64,
        "kind": "decide", "to": holder, "call": 1, "id": id,
        "approver": { "subject": "olga", "issuer": "x", "groups": ["approvers"], "mfa": true },
        "origin": "127.0.0.1", "approve": true, "reason": "forged", "window_secs": null
    });
    db.pg
        .psql(
            "postgres",
            &format!(
                "SELECT pg_notify('tollgate_approvals', '{}')",
                forged.to_string().replace('\'', "''")
            ),
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut probe = psql;
    assert!(
        probe.try_wait().unwrap().is_none(),
        "the forged decision released the statement"
    );
    let psql = probe;
    let ack = console
        .approve(&id, "approved from the other replica", None)
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["request"]["state"], "approved");
    let decided = console.expect("decided").await;
    assert_eq!(decided["request"]["id"], id.as_str());

    let out = finish(psql).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 12, "{stdout}");

    // A window grant made through b for a request held on a holds on b too.
    let psql = export(&a, &agent);
    let id2 = console.requested_id().await;
    let ack = console
        .approve(&id2, "window for the night run", Some(600))
        .await;
    assert!(ack["request"]["grant"]["id"].is_string(), "{ack}");
    assert!(finish(psql).await.status.success());
    let out = finish(export(&b, &agent)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("NOTICE"));

    // The holder's audit log has the decision, by the approver on the other replica.
    let records = std::fs::read_to_string(a.dir.join("audit/audit.jsonl")).unwrap();
    let decided = records
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["event"] == "approval.decided" && r["request"] == id.as_str())
        .expect("the decision is on the holder's record");
    assert_eq!(decided["actor"]["subject"], "olga");
}
