//! PgBouncer (Debian's package) in front of the shared database, as the
//! benchmarks' reference proxy: session pooling, TLS required on the
//! client leg with the same kind of certificate the gateway serves, TLS
//! (CA-verified) and SCRAM to the server as the gateway's login role.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Database, free_port};

/// A running PgBouncer; stopped when dropped.
pub struct PgBouncer {
    /// Where it listens (127.0.0.1).
    pub port: u16,
    /// The user clients log in as (the gateway's login role).
    pub user: String,
    /// Its password.
    pub password: String,
    child: Child,
    _dir: tempfile::TempDir,
}

/// Where Debian installs it.
fn binary() -> Option<PathBuf> {
    ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl PgBouncer {
    /// Start one in front of `db`'s `payments` database. Panics with what
    /// to do when PgBouncer is not installed.
    pub fn start(db: &Database) -> PgBouncer {
        let bin = binary().expect(
            "pgbouncer is not installed: run scripts/prerequisites.sh (Debian package pgbouncer)",
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let user = "tollgate_gateway".to_string();
        let password = db.gateway_password.clone();
        // The server's own certificate serves the client leg, as the
        // gateway's serves its own.
        let (cert, key) = (db.pg.dir.join("server.crt"), db.pg.dir.join("server.key"));
        let userlist = dir.path().join("userlist.txt");
        std::fs::write(&userlist, format!("\"{user}\" \"{password}\"\n")).unwrap();
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n\
                 payments = host=127.0.0.1 port={pg} dbname=payments\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = scram-sha-256\n\
                 auth_file = {userlist}\n\
                 pool_mode = session\n\
                 max_client_conn = 200\n\
                 default_pool_size = 64\n\
                 logfile = {log}\n\
                 client_tls_sslmode = require\n\
                 client_tls_cert_file = {cert}\n\
                 client_tls_key_file = {key}\n\
                 server_tls_sslmode = verify-ca\n\
                 server_tls_ca_file = {ca}\n\
                 log_connections = 0\n\
                 log_disconnections = 0\n",
                pg = db.pg.port,
                userlist = userlist.display(),
                log = dir.path().join("pgbouncer.log").display(),
                cert = cert.display(),
                key = key.display(),
                ca = db.pg.ca_file.display(),
            ),
        )
        .unwrap();
        let mut command = Command::new(bin);
        command
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // PgBouncer refuses to run as root; the server's key belongs to
        // `postgres` then.
        if is_root() {
            let uid = postgres_uid();
            chown_tree(dir.path(), "postgres");
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(uid_gid(uid));
        }
        let child = command.spawn().expect("start pgbouncer");
        let bouncer = PgBouncer {
            port,
            user,
            password,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not start listening: {}",
                std::fs::read_to_string(bouncer._dir.path().join("pgbouncer.log"))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        bouncer
    }

    /// Its process id (for its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A libpq connection string through it.
    pub fn conninfo(&self) -> String {
        format!(
            "host=localhost port={} dbname=payments user={} sslmode=require",
            self.port, self.user
        )
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

fn postgres_uid() -> u32 {
    let out = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn uid_gid(uid: u32) -> u32 {
    let out = Command::new("id")
        .args(["-g", &uid.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn chown_tree(path: &std::path::Path, owner: &str) {
    let status = Command::new("chown")
        .args(["-R", owner])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "chown {}", path.display());
}
