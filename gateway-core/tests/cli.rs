//! The `tollgate` binary as an engineer runs it: check, token, serve, dev, demo.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures"))
}

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tollgate-cli-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn check_accepts_the_example_config() {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(fixtures().join("gateway.example.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ok (2 connection(s), 2 issuer(s), 23 policies)"),
        "{stdout}"
    );
}

#[test]
fn bad_config_is_refused_with_file_line_and_key() {
    let dir = temp_dir();
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "[server.tls]\nself_signed = true\n\n[identity.dev_issuer]\nenabled = true\nauidence = \"x\"\n",
    )
    .unwrap();
    for command in ["check", "serve"] {
        let started = Instant::now();
        let out = Command::new(BIN)
            .args([command, "--config"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("bad.toml:6:") && stderr.contains("auidence"),
            "{command}: {stderr}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refused before anything listens"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn token_prints_a_signed_jwt_and_refuses_a_config_without_dev_issuer() {
    let dir = temp_dir();
    let out = Command::new(BIN)
        .args([
            "token",
            "--sub",
            "alice",
            "--groups",
            "analysts,approvers",
            "--mfa",
            "--data-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(token.trim().split('.').count(), 3);
    assert!(dir.join("dev-issuer.key").exists());
    let out = Command::new(BIN)
        .args(["token", "--sub", "alice", "--config"])
        .arg(fixtures().join("gateway.example.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not enable [identity.dev_issuer]"));
    let _ = std::fs::remove_dir_all(dir);
}

/// Start `tollgate <args> --listen 127.0.0.1:0 --data-dir <dir>/state` and wait
/// for the psql line it prints.
fn start_local_gateway(args: &[&str], dir: &Path) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.join("state"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = wait_for_psql_line(&mut child);
    (child, line)
}

/// Read the child's stderr until the "PGPASSWORD=... psql ..." line appears.
fn wait_for_psql_line(child: &mut Child) -> String {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.trim_start().starts_with("PGPASSWORD=") {
                let _ = tx.send(line.trim().to_string());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(90))
        .expect("the gateway printed a psql line")
}

/// Run the printed psql line with `sql` and assert it prints `expected`.
fn assert_printed_line_answers(line: &str, sql: &str, expected: &str) {
    let out = run_printed(line, sql);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        expected,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run the printed line through a shell, with extra psql arguments.
fn run_printed(line: &str, sql: &str) -> std::process::Output {
    let command = format!("{line} -X -A -t -c \"{sql}\"");
    Command::new("sh")
        .args(["-c", &command])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("the gateway did not stop on SIGTERM");
}

#[test]
fn demo_prints_a_psql_line_that_works() {
    let dir = temp_dir();
    let (child, line) = start_local_gateway(&["demo"], &dir);
    assert_printed_line_answers(
        &line,
        "SELECT count(*), min(brand) FROM payments",
        "12|amex",
    );
    stop(child);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn dev_fronts_an_existing_database() {
    let tollgate::dev::DemoDatabase {
        pg,
        gateway_password: password,
        ..
    } = tollgate::dev::demo_database().unwrap();
    let url = format!(
        "postgres://tollgate_gateway:{password}@localhost:{}/payments?sslmode=verify-full&sslrootcert={}",
        pg.port,
        pg.ca_file.display()
    );
    let dir = temp_dir();
    let (child, line) = start_local_gateway(&["dev", "--upstream", &url], &dir);
    assert!(
        !line.contains(&password),
        "the upstream password is never printed"
    );
    assert_printed_line_answers(&line, "SELECT current_user", "tollgate_gateway");
    stop(child);
    let _ = std::fs::remove_dir_all(dir);
}

/// The upstream password comes from the OS keyring (Secret Service on a
/// session bus, as on a Linux desktop), stored there with `tollgate keyring set`.
#[test]
fn keyring_credentials_reach_the_upstream() {
    let tollgate::dev::DemoDatabase {
        pg,
        gateway_password: password,
        ..
    } = tollgate::dev::demo_database().unwrap();
    let dir = temp_dir();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"state\"\n[server.tls]\nself_signed = true\n\
             [identity.dev_issuer]\nenabled = true\n[policy]\nstarter = true\n\
             [[connection]]\nname = \"payments\"\nhost = \"localhost\"\nport = {}\ndatabase = \"payments\"\n\
             user = \"tollgate_gateway\"\npassword = {{ keyring = {{ service = \"tollgate-test\", account = \"payments\" }} }}\n\
             ca_file = \"{}\"\n",
            pg.port,
            pg.ca_file.display()
        ),
    )
    .unwrap();
    let script = r#"
set -e
echo -n unlock | gnome-keyring-daemon --unlock --components=secrets >/dev/null
# Wait until that daemon owns the Secret Service name: a client that comes
# earlier makes the bus start a second daemon, which finds the first one's
# half-written keyring unreadable.
for _ in $(seq 50); do
  dbus-send --session --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
    org.freedesktop.DBus.NameHasOwner string:org.freedesktop.secrets 2>/dev/null | grep -q true && break
  sleep 0.1
done
# The daemon may still be setting up its collection: try again for a few seconds.
stored=
for _ in $(seq 25); do
  if printf '%s\n' "$UPSTREAM_PASSWORD" | "$BIN" keyring set --service tollgate-test --account payments; then
    stored=1; break
  fi
  sleep 0.2
done
[ -n "$stored" ]
"$BIN" serve --config "$CONFIG" 2>"$DIR/serve.log" &
serve=$!
trap 'kill $serve' EXIT
for _ in $(seq 100); do grep -q "listening on" "$DIR/serve.log" && break; sleep 0.1; done
port=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$DIR/serve.log" | head -1)
token=$("$BIN" token --config "$CONFIG" --sub alice --groups analysts)
PGPASSWORD=$token psql "host=127.0.0.1 port=$port dbname=payments user=alice sslmode=require" -XAtc "SELECT current_user"
"#;
    let out = Command::new("dbus-run-session")
        .args(["--", "sh", "-c", script])
        .env("BIN", BIN)
        .env("CONFIG", &config)
        .env("DIR", &dir)
        .env("UPSTREAM_PASSWORD", &password)
        // A fresh home: gnome-keyring creates a new login keyring unlocked with our password.
        .env("HOME", &dir)
        .env_remove("XDG_DATA_HOME")
        .stdin(Stdio::null())
        .output()
        .expect("dbus-run-session (scripts/test.sh installs dbus and gnome-keyring)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default();
    assert_eq!(
        stdout.trim().lines().last(),
        Some("tollgate_gateway"),
        "stderr: {}\nlog: {log}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !log.contains(&password),
        "the upstream password never reaches the log"
    );
    let _ = std::fs::remove_dir_all(dir);
}
