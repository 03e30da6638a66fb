//! A throwaway PostgreSQL for `tollgate demo` and the tests: initdb in a
//! temporary directory (as the `postgres` OS user when running as root),
//! SCRAM-SHA-256 and TLS required in pg_hba, a free port on loopback, and a
//! CA of its own so the gateway can verify it with `verify-full`. It is
//! stopped and removed when dropped, and by a watchdog if this process dies.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::config::{ConnectionConfig, CredentialSource, UpstreamTlsMode};

/// Why the throwaway server could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum DevDbError {
    /// The server binaries were not found.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin or on PATH; \
         install them (apt-get install postgresql) or set TOLLGATE_PG_BIN"
    )]
    NoBinaries,
    /// A step failed.
    #[error("{step}: {message}")]
    Step {
        /// What was being done.
        step: &'static str,
        /// What went wrong (the tool's own output).
        message: String,
    },
}

/// A running throwaway PostgreSQL server.
pub struct ThrowawayPostgres {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The temporary directory holding data, socket and certificates.
    pub dir: PathBuf,
    /// The superuser (`postgres`) password.
    pub superuser_password: String,
    /// The CA certificate that signed the server's certificate.
    pub ca_file: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
}

fn step(step: &'static str, message: impl ToString) -> DevDbError {
    DevDbError::Step {
        step,
        message: message.to_string(),
    }
}

fn random_token(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// The directory holding initdb, pg_ctl and postgres.
pub fn find_bin_dir() -> Result<PathBuf, DevDbError> {
    if let Ok(dir) = std::env::var("TOLLGATE_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("initdb").exists())
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Ok(dir);
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|p| p.join("initdb").exists()))
        .ok_or(DevDbError::NoBinaries)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn run(command: &mut Command, what: &'static str) -> Result<Output, DevDbError> {
    let output = command.output().map_err(|e| step(what, e))?;
    if !output.status.success() {
        let mut message = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if message.is_empty() {
            message = String::from_utf8_lossy(&output.stdout).trim().to_string();
        }
        return Err(step(what, message));
    }
    Ok(output)
}

impl ThrowawayPostgres {
    /// Create, configure and start a server. Takes a few seconds.
    pub fn start() -> Result<Self, DevDbError> {
        let bin = find_bin_dir()?;
        let as_postgres = is_root();
        // TOLLGATE_DEVDB_DIR puts it elsewhere (the benchmarks put it on
        // tmpfs, so that its writes do not compete with the gateway's).
        let parent = std::env::var_os("TOLLGATE_DEVDB_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = parent.join(format!("tollgate-pg-{}", random_token(6)));
        let data = dir.join("data");
        fs::create_dir_all(&dir).map_err(|e| step("create temp dir", e))?;
        let superuser_password = random_token(16);
        fs::write(dir.join("pwfile"), &superuser_password).map_err(|e| step("write pwfile", e))?;
        let ca_file = write_certificates(&dir)?;
        if as_postgres {
            run(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&dir),
                "chown to postgres",
            )?;
        }
        let mut pg = Self {
            port: 0,
            dir,
            superuser_password,
            ca_file,
            bin,
            as_postgres,
        };
        pg.spawn_watchdog();
        run(
            pg.tool("initdb")
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--locale=C",
                ])
                .arg(format!("--pwfile={}", pg.dir.join("pwfile").display())),
            "initdb",
        )?;
        pg.port = free_port()?;
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1,127.0.0.2'\nport = {port}\nunix_socket_directories = '{dir}'\n\
             ssl = on\nssl_cert_file = '{dir}/server.crt'\nssl_key_file = '{dir}/server.key'\n\
             password_encryption = 'scram-sha-256'\nfsync = off\nsynchronous_commit = off\n\
             full_page_writes = off\nmax_connections = 200\nshared_buffers = '64MB'\n",
            port = pg.port,
            dir = pg.dir.display()
        );
        append(&data.join("postgresql.conf"), &conf)?;
        // TLS and SCRAM are required for every TCP client; md5 only for the
        // `legacy_md5` and `legacy_cleartext` roles the tests use to exercise old servers.
        let hba = "local all all scram-sha-256\n\
                   hostssl all legacy_md5 127.0.0.1/32 md5\n\
                   hostssl all legacy_cleartext 127.0.0.1/32 password\n\
                   hostssl all all 127.0.0.1/32 scram-sha-256\n\
                   hostssl all all 127.0.0.2/32 scram-sha-256\n\
                   hostssl all all ::1/128 scram-sha-256\n";
        fs::write(data.join("pg_hba.conf"), hba).map_err(|e| step("write pg_hba.conf", e))?;
        run(
            pg.tool("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(pg.dir.join("server.log"))
                .args(["-w", "-t", "60", "start"])
                .stdout(Stdio::null()),
            "pg_ctl start",
        )
        .map_err(|e| step("start PostgreSQL", format!("{e}; log: {}", pg.log_tail())))?;
        Ok(pg)
    }

    /// Run SQL as the superuser over the server's Unix socket with psql.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, DevDbError> {
        let output = run(
            Command::new("psql")
                .args([
                    "-X",
                    "-q",
                    "-A",
                    "-t",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-U",
                    "postgres",
                ])
                .arg("-h")
                .arg(&self.dir)
                .arg("-p")
                .arg(self.port.to_string())
                .arg("-d")
                .arg(database)
                .arg("-c")
                .arg(sql)
                .env("PGPASSWORD", &self.superuser_password),
            "psql",
        )?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// Run a SQL file (e.g. `fixtures/seed.sql`) as the superuser.
    pub fn psql_file(&self, database: &str, file: &Path) -> Result<(), DevDbError> {
        let sql = fs::read_to_string(file)
            .map_err(|e| step("read SQL file", format!("{}: {e}", file.display())))?;
        self.psql(database, &sql).map(|_| ())
    }

    /// Create a login role with a random password; returns the password.
    pub fn create_role(&self, name: &str, extra: &str) -> Result<String, DevDbError> {
        let password = random_token(16);
        self.psql(
            "postgres",
            &format!("CREATE ROLE {name} LOGIN PASSWORD '{password}' {extra}"),
        )?;
        Ok(password)
    }

    /// A catalog entry for this server, verified with its CA (`verify-full`).
    pub fn connection(
        &self,
        name: &str,
        database: &str,
        user: &str,
        password: &str,
    ) -> ConnectionConfig {
        ConnectionConfig {
            name: name.to_string(),
            host: "localhost".to_string(),
            port: self.port,
            database: database.to_string(),
            user: user.to_string(),
            password: Some(CredentialSource::Inline(password.to_string())),
            tls: UpstreamTlsMode::VerifyFull,
            ca_file: Some(self.ca_file.clone()),
            connect_timeout_secs: 10,
            cardholder: Vec::new(),
            record_results_bytes: 0,
        }
    }

    /// The last lines of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().rev().take(10).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn tool(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// Stop the server and remove its files if this process dies without dropping us.
    fn spawn_watchdog(&self) {
        let stop = self.stop_script();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop}",
            pid = std::process::id()
        );
        let _ = Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    fn stop_script(&self) -> String {
        let prefix = if self.as_postgres {
            "runuser -u postgres -- "
        } else {
            ""
        };
        format!(
            "{prefix}{pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            pg_ctl = self.bin.join("pg_ctl").display(),
            data = self.dir.join("data").display(),
            dir = self.dir.display()
        )
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .args(["-c", &self.stop_script()])
            .status();
    }
}

fn append(path: &Path, text: &str) -> Result<(), DevDbError> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| step("edit postgresql.conf", e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| step("edit postgresql.conf", e))
}

fn free_port() -> Result<u16, DevDbError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| step("find a free port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| step("find a free port", e))
}

/// A CA and a server certificate for localhost/127.0.0.1 signed by it.
fn write_certificates(dir: &Path) -> Result<PathBuf, DevDbError> {
    let gen_err = |e: rcgen::Error| step("generate certificates", e);
    let ca_key = rcgen::KeyPair::generate().map_err(gen_err)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Tollgate throwaway CA");
    let ca_cert = ca_params.self_signed(&ca_key).map_err(gen_err)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let key = rcgen::KeyPair::generate().map_err(gen_err)?;
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(gen_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;

    let ca_file = dir.join("ca.crt");
    fs::write(&ca_file, ca_cert.pem()).map_err(|e| step("write CA", e))?;
    fs::write(dir.join("server.crt"), cert.pem()).map_err(|e| step("write server cert", e))?;
    crate::identity::dev_issuer::write_private(
        &dir.join("server.key"),
        key.serialize_pem().as_bytes(),
    )
    .map_err(|e| step("write server key", e))?;
    Ok(ca_file)
}
