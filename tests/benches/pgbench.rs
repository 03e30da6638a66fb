//! pgbench select-only through the gateway against a direct connection, in
//! one run with the arms interleaved: a direct connection, the gateway as a
//! plain relay, and the gateway with the PCI starter policy. Reports TPS
//! ratios, the gateway's CPU time per transaction, and the median latency the
//! policy stage adds per statement.
//!
//! Run: `cargo bench -p tollgate-e2e --bench pgbench` (ROUNDS and SECONDS
//! environment variables change the length; defaults 3 rounds of 10 s).

use std::path::Path;
use std::process::Command;

use tollgate_e2e::{TestGateway, database};

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// This process's CPU time (user + system) in seconds: the in-process gateway.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// One pgbench run's figures.
struct Run {
    tps: f64,
    transactions: u64,
    /// Per-transaction latencies in microseconds, when the run logged them.
    latencies_us: Vec<f64>,
}

/// Run pgbench -S against `conninfo`. With `log_dir`, every transaction's
/// latency is logged there and returned.
fn pgbench(
    conninfo: &str,
    password: &str,
    mode: &str,
    clients: u32,
    seconds: u32,
    log_dir: Option<&Path>,
) -> Run {
    let bin = tollgate::devdb::find_bin_dir().unwrap().join("pgbench");
    let threads = clients.min(2);
    let mut command = Command::new(bin);
    command.args([
        "-n",
        "-S",
        "-M",
        mode,
        "-c",
        &clients.to_string(),
        "-j",
        &threads.to_string(),
        "-T",
        &seconds.to_string(),
    ]);
    if let Some(dir) = log_dir {
        for entry in std::fs::read_dir(dir).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
        command
            .arg("-l")
            .arg(format!("--log-prefix={}/tx", dir.display()));
    }
    let out = command
        .arg(conninfo)
        .env("PGPASSWORD", password)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let tps = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    let transactions = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    // Log lines: client_id transaction_no latency_us script_no epoch epoch_us
    let mut latencies_us = vec![];
    if let Some(dir) = log_dir {
        for entry in std::fs::read_dir(dir).unwrap() {
            let log = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            latencies_us.extend(
                log.lines()
                    .filter_map(|l| l.split_whitespace().nth(2)?.parse::<f64>().ok()),
            );
        }
        assert!(!latencies_us.is_empty(), "pgbench wrote no transaction log");
    }
    Run {
        tps,
        transactions,
        latencies_us,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Where one arm of the benchmark connects.
#[derive(Clone)]
struct Arm {
    name: &'static str,
    conninfo: String,
    password: String,
    /// Whether the arm runs in this process (its CPU time is the gateway's).
    gateway: bool,
}

impl Arm {
    async fn run(
        &self,
        mode: &'static str,
        clients: u32,
        seconds: u32,
        log: Option<&Path>,
    ) -> (Run, f64) {
        let (c, p, log) = (
            self.conninfo.clone(),
            self.password.clone(),
            log.map(Path::to_path_buf),
        );
        let cpu0 = cpu_seconds();
        let run = tokio::task::spawn_blocking(move || {
            pgbench(&c, &p, mode, clients, seconds, log.as_deref())
        })
        .await
        .unwrap();
        let cpu_us = (cpu_seconds() - cpu0) * 1e6 / run.transactions as f64;
        (run, cpu_us)
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rounds = env_or("ROUNDS", 3);
    let seconds = env_or("SECONDS", 10);
    let db = database();
    let bin = tollgate::devdb::find_bin_dir().unwrap().join("pgbench");
    let init = Command::new(bin)
        .args(["-i", "-q", "-s", "10"])
        .arg(format!(
            "host=localhost port={} dbname=payments user=postgres sslmode=require",
            db.pg.port
        ))
        .env("PGPASSWORD", &db.pg.superuser_password)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    db.pg
        .psql(
            "payments",
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO tollgate_gateway",
        )
        .unwrap();

    // CLIENT_SSLMODE=disable measures the client leg without TLS (loopback only).
    let client_sslmode = std::env::var("CLIENT_SSLMODE").unwrap_or_else(|_| "require".into());
    let plaintext = |t: String| {
        if client_sslmode == "disable" {
            t.replace("[server.tls]", "allow_plaintext = true\n\n[server.tls]")
        } else {
            t
        }
    };
    // Passthrough: no policy stage at all. Policy: the PCI starter policy.
    let passthrough = TestGateway::start_edited(plaintext).await;
    let with_policy =
        TestGateway::start_edited(|t| plaintext(t).replace("allow_all = true", "starter = true"))
            .await;
    let request = || tollgate::identity::dev_issuer::TokenRequest {
        subject: "bench".into(),
        groups: vec!["analysts".into()],
        mfa: true,
        agent: false,
        ttl_secs: 24 * 3600,
    };
    let through = |gw: &TestGateway| {
        format!(
            "host=localhost port={} dbname=payments user=bench sslmode={client_sslmode}",
            gw.addr.port()
        )
    };
    let direct = Arm {
        name: "direct",
        conninfo: format!(
            "host=localhost port={} dbname=payments user=tollgate_gateway sslmode=require",
            db.pg.port
        ),
        password: db.gateway_password.clone(),
        gateway: false,
    };
    let relay = Arm {
        name: "gateway",
        conninfo: through(&passthrough),
        password: passthrough.token_with(request()),
        gateway: true,
    };
    let policy = Arm {
        name: "gateway+policy",
        conninfo: through(&with_policy),
        password: with_policy.token_with(request()),
        gateway: true,
    };

    // The policy arm must really decide: a DELETE without WHERE is refused.
    let refused = with_policy.psql(&policy.password, &["-c", "DELETE FROM pgbench_history"]);
    refused.fails_with("refused");

    println!("pgbench -S -c 8 -j 2, {rounds} rounds of {seconds} s per arm, arms interleaved");
    for mode in ["simple", "prepared"] {
        let arms = [&direct, &relay, &policy];
        let mut tps: Vec<Vec<f64>> = vec![vec![]; arms.len()];
        let mut cpu: Vec<Vec<f64>> = vec![vec![]; arms.len()];
        for round in 1..=rounds {
            let mut line = format!("  {mode:8} round {round}:");
            for (i, arm) in arms.iter().enumerate() {
                let (run, cpu_us) = arm.run(mode, 8, seconds, None).await;
                line += &format!("  {} {:7.0} tps", arm.name, run.tps);
                tps[i].push(run.tps);
                cpu[i].push(cpu_us);
            }
            println!("{line}");
        }
        let ratio = |i: usize| median(tps[i].iter().zip(&tps[0]).map(|(g, d)| g / d).collect());
        println!("{mode:8} median: direct {:.0} tps", median(tps[0].clone()));
        for (i, arm) in arms.iter().enumerate().skip(1) {
            assert!(arm.gateway);
            println!(
                "{mode:8}   {:15} {:.0} tps, ratio to direct {:.2}, gateway CPU {:.1} us/transaction",
                arm.name,
                median(tps[i].clone()),
                ratio(i),
                median(cpu[i].clone())
            );
        }
        println!(
            "{mode:8}   policy stage CPU: {:+.1} us/transaction",
            median(cpu[2].clone()) - median(cpu[1].clone())
        );
    }

    // Latency added per statement: one client, simple protocol (a new literal
    // every statement), every transaction's latency logged.
    println!(
        "\npgbench -S -M simple -c 1, {rounds} rounds of {seconds} s per arm, arms interleaved"
    );
    let logs = tempfile::tempdir().unwrap();
    let (mut relay_latency, mut policy_latency) = (vec![], vec![]);
    for round in 1..=rounds {
        // Alternate which arm goes first, so drift does not favour one.
        let (a, b) = if round % 2 == 1 {
            let a = relay.run("simple", 1, seconds, Some(logs.path())).await.0;
            (
                a,
                policy.run("simple", 1, seconds, Some(logs.path())).await.0,
            )
        } else {
            let b = policy.run("simple", 1, seconds, Some(logs.path())).await.0;
            (
                relay.run("simple", 1, seconds, Some(logs.path())).await.0,
                b,
            )
        };
        let (ma, mb) = (
            median(a.latencies_us.clone()),
            median(b.latencies_us.clone()),
        );
        println!(
            "  round {round}: median latency gateway {ma:.1} us, gateway+policy {mb:.1} us, added {:+.1} us",
            mb - ma
        );
        relay_latency.extend(a.latencies_us);
        policy_latency.extend(b.latencies_us);
    }
    let (ma, mb) = (median(relay_latency), median(policy_latency));
    println!(
        "median latency per statement: gateway {ma:.1} us, gateway+policy {mb:.1} us: the policy stage adds {:+.1} us (target <= 50 us)",
        mb - ma
    );
}
