//! The gateway against PostgreSQL direct and PgBouncer, in one run with the
//! arms interleaved (every round runs each arm once, the first arm rotating).
//!
//! Arms: `direct` (TLS), `pgbouncer` (Debian's 1.18, session mode, TLS to
//! the client and to the server), `gateway` (as users run it: the PCI
//! starter policy, masking, recording and the durable audit log, the
//! `tollgate dev` defaults) and `relay` (the same gateway with no stage but
//! identity: what the stages cost is the difference).
//!
//! Workloads: pgbench `-S` in simple, extended and prepared mode at 1, 8 and
//! 32 clients; a cards workload (100 and 1000 rows with card numbers,
//! masked); a 1M-row `COPY ... TO STDOUT` (masked) against direct, with the
//! gateway's peak memory. Prints a table, and writes it with an SVG plot to
//! `BENCH_OUT` (default `target/bench-results`).
//!
//! Run: `scripts/bench.sh` (or `cargo bench -p tollgate-e2e --bench pgbench`).
//! Environment: ROUNDS (5), SECONDS (5 per arm and round), MODES
//! (`simple,extended,prepared`), CLIENTS (`1,8,32`), ONLY (`select`, `cards`,
//! `copy`: one part), BENCH_OUT.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tollgate_e2e::console::Auth;
use tollgate_e2e::pgbouncer::PgBouncer;
use tollgate_e2e::{TestGateway, database};

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// CPU time (user + system) of a process in seconds; `None`: this one (the
/// in-process gateways).
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let path = pid.map_or("/proc/self/stat".into(), |p| format!("/proc/{p}/stat"));
    let stat = std::fs::read_to_string(path).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Peak resident memory of this process since the last reset, in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

fn reset_peak_rss() {
    // "5" resets the peak resident set size (proc(5)).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// One pgbench run's figures.
struct Run {
    tps: f64,
    transactions: u64,
    /// Per-transaction latencies in microseconds, when the run logged them.
    latencies_us: Vec<f64>,
}

/// What pgbench runs.
#[derive(Clone, Copy)]
enum Script<'a> {
    /// The built-in select-only script.
    SelectOnly,
    /// A script file.
    File(&'a Path),
}

#[allow(clippy::too_many_arguments)]
fn pgbench(
    conninfo: &str,
    password: &str,
    script: Script<'_>,
    mode: &str,
    clients: u32,
    seconds: u32,
    log_dir: Option<&Path>,
) -> Run {
    let bin = tollgate::devdb::find_bin_dir().unwrap().join("pgbench");
    let threads = clients.min(2);
    // A run that has not ended well past its time is reported as stalled
    // (NaN in the table) rather than left to hang the benchmark.
    let mut command = Command::new("timeout");
    command.arg((seconds + 60).to_string()).arg(bin);
    command.args([
        "-n",
        "-M",
        mode,
        "-c",
        &clients.to_string(),
        "-j",
        &threads.to_string(),
        "-T",
        &seconds.to_string(),
    ]);
    match script {
        Script::SelectOnly => command.arg("-S"),
        Script::File(path) => command.arg("-f").arg(path),
    };
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
    if out.status.code() == Some(124) {
        println!("  pgbench stalled past its {seconds} s ({conninfo}): reported as NaN");
        return Run {
            tps: f64::NAN,
            transactions: 0,
            latencies_us: vec![],
        };
    }
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
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

/// Where one arm of the benchmark connects, and whose CPU it costs.
struct Arm {
    name: &'static str,
    conninfo: String,
    password: String,
    /// The proxy's CPU: `Some(None)` this process, `Some(Some(pid))` another.
    cpu: Option<Option<u32>>,
}

impl Arm {
    /// One pgbench run; with the proxy's CPU microseconds per transaction.
    async fn run(
        &self,
        script: Script<'static>,
        mode: &'static str,
        clients: u32,
        seconds: u32,
        log: Option<&Path>,
    ) -> (Run, Option<f64>) {
        let (c, p, log) = (
            self.conninfo.clone(),
            self.password.clone(),
            log.map(Path::to_path_buf),
        );
        let cpu0 = self.cpu.map(cpu_seconds);
        let run = tokio::task::spawn_blocking(move || {
            pgbench(&c, &p, script, mode, clients, seconds, log.as_deref())
        })
        .await
        .unwrap();
        let cpu_us = self
            .cpu
            .zip(cpu0)
            .map(|(pid, cpu0)| (cpu_seconds(pid) - cpu0) * 1e6 / run.transactions.max(1) as f64);
        (run, cpu_us)
    }
}

/// The figures of one workload, per arm, over the rounds.
struct Measured {
    label: String,
    tps: Vec<Vec<f64>>,
    cpu: Vec<Vec<f64>>,
    latency: Vec<Vec<f64>>,
}

/// What one measurement runs.
struct Workload {
    label: String,
    script: Script<'static>,
    mode: &'static str,
    clients: u32,
}

/// Run every arm `rounds` times, interleaved, the first arm rotating.
async fn measure(
    w: Workload,
    arms: &[&Arm],
    rounds: u32,
    seconds: u32,
    logs: Option<&Path>,
) -> Measured {
    let Workload {
        label,
        script,
        mode,
        clients,
    } = w;
    let mut m = Measured {
        label,
        tps: vec![vec![]; arms.len()],
        cpu: vec![vec![]; arms.len()],
        latency: vec![vec![]; arms.len()],
    };
    for round in 0..rounds as usize {
        let mut line = format!("  {:28} round {}:", m.label, round + 1);
        for k in 0..arms.len() {
            let i = (round + k) % arms.len();
            let (run, cpu) = arms[i].run(script, mode, clients, seconds, logs).await;
            m.tps[i].push(run.tps);
            if let Some(cpu) = cpu {
                m.cpu[i].push(cpu);
            }
            m.latency[i].extend(run.latencies_us);
        }
        for (i, arm) in arms.iter().enumerate() {
            line += &format!("  {} {:.0}", arm.name, m.tps[i][round]);
        }
        println!("{line} tps");
    }
    m
}

/// Median of the per-round ratios of arm `a` to arm `b`, with min and max.
fn ratio(m: &Measured, a: usize, b: usize) -> (f64, f64, f64) {
    let r: Vec<f64> = m.tps[a].iter().zip(&m.tps[b]).map(|(x, y)| x / y).collect();
    let (lo, hi) = min_max(&r);
    (median(r), lo, hi)
}

fn cpu(m: &Measured, i: usize) -> String {
    if m.cpu[i].is_empty() {
        "".into()
    } else {
        format!("{:.0}", median(m.cpu[i].clone()))
    }
}

/// Arm indices.
const DIRECT: usize = 0;
const BOUNCER: usize = 1;
const GATEWAY: usize = 2;
const RELAY: usize = 3;

/// A table row of a measured workload.
fn row(m: &Measured) -> String {
    let r = |a, b| {
        let (med, lo, hi) = ratio(m, a, b);
        format!("{med:.2} ({lo:.2}–{hi:.2})")
    };
    let latency = if m.latency[DIRECT].is_empty() {
        String::new()
    } else {
        let d = median(m.latency[DIRECT].clone());
        format!(
            "{:+.0} / {:+.0}",
            median(m.latency[GATEWAY].clone()) - d,
            median(m.latency[BOUNCER].clone()) - d
        )
    };
    format!(
        "| {} | {:.0} | {} | {} | {} | {} | {} / {} / {} | {} |",
        m.label,
        median(m.tps[DIRECT].clone()),
        r(GATEWAY, BOUNCER),
        r(GATEWAY, DIRECT),
        r(BOUNCER, DIRECT),
        r(RELAY, DIRECT),
        cpu(m, GATEWAY),
        cpu(m, RELAY),
        cpu(m, BOUNCER),
        latency,
    )
}

const HEADER: &str = "| workload | direct TPS | gateway / PgBouncer | gateway / direct | PgBouncer / direct | relay / direct | CPU µs per transaction: gateway / relay / PgBouncer | added median latency µs: gateway / PgBouncer |\n|---|---|---|---|---|---|---|---|";

/// A grouped bar chart of gateway / PgBouncer and relay / PgBouncer per
/// workload, with the 1.0 line (hand-written SVG: one chart does not need
/// a plotting library).
fn svg(measured: &[Measured]) -> String {
    let (w, h, left, bottom, top) = (900.0, 420.0, 60.0, 120.0, 40.0);
    let plot_h = h - bottom - top;
    let max = measured
        .iter()
        .flat_map(|m| [ratio(m, GATEWAY, BOUNCER).2, ratio(m, RELAY, BOUNCER).2])
        .fold(1.2f64, f64::max)
        .ceil();
    let y = |v: f64| top + plot_h * (1.0 - v / max);
    let group = (w - left - 20.0) / measured.len().max(1) as f64;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"22\" font-size=\"15\">Throughput relative to PgBouncer (median of rounds, bars: min–max)</text>\n"
    );
    let mut tick = 0.0;
    while tick <= max + 1e-9 {
        out += &format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{tick:.1}</text>\n",
            w - 20.0,
            left - 6.0,
            y(tick) + 4.0,
            y = y(tick)
        );
        tick += if max > 3.0 { 1.0 } else { 0.5 };
    }
    out += &format!(
        "<line x1=\"{left}\" x2=\"{}\" y1=\"{y1}\" y2=\"{y1}\" stroke=\"#c00\" stroke-dasharray=\"4 3\"/>\n",
        w - 20.0,
        y1 = y(1.0)
    );
    for (g, m) in measured.iter().enumerate() {
        let x0 = left + g as f64 * group + group * 0.15;
        let bar = group * 0.32;
        for (k, (arm, color)) in [(GATEWAY, "#2b6cb0"), (RELAY, "#9bb8d8")]
            .iter()
            .enumerate()
        {
            let (med, lo, hi) = ratio(m, *arm, BOUNCER);
            let x = x0 + k as f64 * bar;
            out += &format!(
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"/>\n\
                 <line x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#333\"/>\n",
                y(med),
                bar - 2.0,
                y(0.0) - y(med),
                y(hi),
                y(lo),
                cx = x + bar / 2.0 - 1.0
            );
        }
        out += &format!(
            "<text transform=\"translate({:.1},{:.1}) rotate(40)\">{}</text>\n",
            x0,
            y(0.0) + 14.0,
            m.label
        );
    }
    out += &format!(
        "<rect x=\"{left}\" y=\"{ly}\" width=\"12\" height=\"12\" fill=\"#2b6cb0\"/><text x=\"{}\" y=\"{}\">gateway as users run it</text>\n\
         <rect x=\"{}\" y=\"{ly}\" width=\"12\" height=\"12\" fill=\"#9bb8d8\"/><text x=\"{}\" y=\"{}\">bare relay</text>\n\
         <text x=\"{}\" y=\"{}\" fill=\"#c00\">PgBouncer = 1.0</text>\n</svg>\n",
        left + 16.0,
        h - 8.0,
        left + 200.0,
        left + 216.0,
        h - 8.0,
        left + 320.0,
        h - 8.0,
        ly = h - 19.0,
    );
    out
}

/// A pgbench script reading `rows` rows of the cards table.
fn cards_script(rows: u32) -> &'static Path {
    let path = std::env::temp_dir().join(format!("tollgate-bench-cards{rows}.sql"));
    std::fs::write(
        &path,
        format!("SELECT id, pan, expiry, amount, memo FROM bench_cards WHERE id <= {rows} LIMIT {rows};\n"),
    )
    .unwrap();
    Box::leak(path.into_boxed_path())
}

/// Run `sql` through psql (with `options` before it); its output.
fn psql(conninfo: &str, password: &str, options: &[&str], sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(options)
        .args(["-c", sql])
        .arg(conninfo)
        .env("PGPASSWORD", password)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a COPY through psql into /dev/null; seconds taken.
fn copy_out(conninfo: &str, password: &str, sql: &str) -> f64 {
    let start = Instant::now();
    psql(conninfo, password, &["-o", "/dev/null"], sql);
    start.elapsed().as_secs_f64()
}

/// A query's rows through psql, unaligned.
fn psql_output(conninfo: &str, password: &str, sql: &str) -> String {
    psql(conninfo, password, &["-A", "-t"], sql)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rounds = env_or("ROUNDS", 5);
    let seconds = env_or("SECONDS", 5);
    let modes = env_list("MODES", "simple,extended,prepared");
    let clients = env_list("CLIENTS", "1,8,32");
    let only = std::env::var("ONLY").unwrap_or_default();
    let part = |name: &str| only.is_empty() || only == name;
    let out_dir = PathBuf::from(std::env::var("BENCH_OUT").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench-results").into()
    }));
    std::fs::create_dir_all(&out_dir).unwrap();

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
    // Cards: public test card numbers (Luhn-valid), 1000 rows; the export
    // table: 1M rows of the same shape.
    let cards = "SELECT g AS id, (ARRAY['4111111111111111','5555555555554444','4242424242424242','378282246310005','6011111111111117'])[1 + g % 5] AS pan, \
                 lpad((g % 12 + 1)::text, 2, '0') || '/29' AS expiry, (g * 7 % 100000)::numeric(12,2) AS amount, 'order ' || g AS memo";
    db.pg
        .psql(
            "payments",
            &format!(
                "CREATE TABLE bench_cards AS {cards} FROM generate_series(1, 1000) g; \
                 CREATE TABLE bench_export AS {cards} FROM generate_series(1, 1000000) g; \
                 GRANT SELECT ON ALL TABLES IN SCHEMA public TO tollgate_gateway; \
                 ANALYZE bench_cards; ANALYZE bench_export"
            ),
        )
        .unwrap();

    // The starter policy, and the approvals API so that the benchmark can
    // sign off its own bulk reads (below).
    let gateway = TestGateway::start_edited(|t| {
        t.replace(
            "allow_all = true",
            "starter = true\n\n[api]\nlisten = \"127.0.0.1:0\"",
        )
    })
    .await;
    let relay = TestGateway::start_bare_relay().await;
    let bouncer = PgBouncer::start(db);
    let request = || tollgate::identity::dev_issuer::TokenRequest {
        subject: "bench".into(),
        groups: vec!["analysts".into()],
        mfa: true,
        agent: false,
        ttl_secs: 24 * 3600,
    };
    let through = |gw: &TestGateway| {
        format!(
            "host=localhost port={} dbname=payments user=bench sslmode=require",
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
        cpu: None,
    };
    let pgbouncer = Arm {
        name: "pgbouncer",
        conninfo: bouncer.conninfo(),
        password: bouncer.password.clone(),
        cpu: Some(Some(bouncer.pid())),
    };
    let users = Arm {
        name: "gateway",
        conninfo: through(&gateway),
        password: gateway.token_with(request()),
        cpu: Some(None),
    };
    let bare = Arm {
        name: "relay",
        conninfo: through(&relay),
        password: relay.token_with(request()),
        cpu: Some(None),
    };
    let arms = [&direct, &pgbouncer, &users, &bare];

    // The gateway arm must really decide and mask.
    let refused = gateway.psql(&users.password, &["-c", "DELETE FROM pgbench_history"]);
    refused.fails_with("refused");
    let masked = psql_output(
        &users.conninfo,
        &users.password,
        "SELECT pan FROM bench_cards LIMIT 5",
    );
    let raw = psql_output(
        &bare.conninfo,
        &bare.password,
        "SELECT pan FROM bench_cards LIMIT 5",
    );
    assert!(
        raw.contains("5555555555554444"),
        "the relay returns the real numbers"
    );
    assert!(
        !masked.contains("5555555555554444") && masked.contains('*'),
        "the gateway masks card numbers: {masked}"
    );

    // The starter policy holds a bulk read or any COPY of cardholder data
    // for an approver's sign-off: the benchmark's identity gets a window
    // grant for the cards and export workloads, as an approver would give
    // it from the console.
    if part("cards") || part("copy") {
        let approver = gateway.token("bench-approver", &["approvers"]);
        let mut console = gateway
            .console(&approver, Auth::Header)
            .await
            .expect("the approvals console connects");
        console.expect("snapshot").await;
        // The cards workload is, to the policy, an export in pieces: reads
        // are held once an identity has had 1000 rows of cardholder data in
        // 15 minutes, so the second read of 1000 rows is.
        let cards =
            "SELECT id, pan, expiry, amount, memo FROM bench_cards WHERE id <= 1000 LIMIT 1000";
        for sql in [cards, cards, "COPY bench_export TO STDOUT"] {
            let mut psql = Command::new("psql")
                .args(["-X", "-q", "-o", "/dev/null", "-c", sql])
                .arg(&users.conninfo)
                .env("PGPASSWORD", &users.password)
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let held = tokio::time::timeout(Duration::from_secs(5), console.requested_id()).await;
            if let Ok(id) = held {
                let ack = console.approve(&id, "benchmark run", Some(8 * 3600)).await;
                assert_eq!(ack["request"]["state"], "approved", "{ack}");
                println!(
                    "granted for 8 hours: {}",
                    ack["request"]["grant"]["accesses"]
                );
            }
            let status = tokio::task::spawn_blocking(move || psql.wait())
                .await
                .unwrap()
                .unwrap();
            assert!(status.success(), "{sql} runs once approved");
        }
    }

    // PROFILE=<arm> [MODES=<mode>] [CLIENTS=<n>]: run just that arm once,
    // for a profiler attached to this process.
    if let Ok(name) = std::env::var("PROFILE") {
        let arm = arms
            .iter()
            .find(|a| a.name == name)
            .expect("PROFILE: an arm's name");
        let mode: &'static str = Box::leak(modes[0].clone().into_boxed_str());
        let c: u32 = clients[0].parse().expect("CLIENTS: numbers");
        println!("profiling {name}: pid {}", std::process::id());
        let script = if only == "cards" {
            Script::File(cards_script(env_or("ROWS", 100)))
        } else {
            Script::SelectOnly
        };
        let (run, cpu) = arm.run(script, mode, c, seconds, None).await;
        println!(
            "{name} {only} {mode} -c {c}: {:.0} tps, {:.0} µs CPU per transaction",
            run.tps,
            cpu.unwrap_or(0.0)
        );
        return;
    }

    let mut measured = vec![];
    let logs = tempfile::tempdir().unwrap();
    if part("select") {
        println!("pgbench -S, {rounds} rounds of {seconds} s per arm, arms interleaved");
        for c in &clients {
            let c: u32 = c.parse().expect("CLIENTS: numbers");
            for mode in &modes {
                let mode: &'static str = match mode.as_str() {
                    "simple" => "simple",
                    "extended" => "extended",
                    "prepared" => "prepared",
                    other => panic!("MODES: unknown mode {other}"),
                };
                // One client: every transaction's latency is logged.
                let log = (c == 1).then(|| logs.path());
                let w = Workload {
                    label: format!("-S {mode} -c {c}"),
                    script: Script::SelectOnly,
                    mode,
                    clients: c,
                };
                let m = measure(w, &arms, rounds, seconds, log).await;
                println!("{HEADER}\n{}", row(&m));
                measured.push(m);
            }
        }
    }
    if part("cards") {
        println!("\ncards: rows with card numbers, masked by the gateway; -c 8 simple");
        for rows in [100u32, 1000] {
            let script = cards_script(rows);
            let w = Workload {
                label: format!("cards {rows} rows -c 8"),
                script: Script::File(script),
                mode: "simple",
                clients: 8,
            };
            let m = measure(w, &arms, rounds, seconds, None).await;
            println!("{HEADER}\n{}", row(&m));
            measured.push(m);
        }
    }
    let mut copy_line = String::new();
    if part("copy") {
        println!("\nCOPY 1M rows TO STDOUT through psql, masked by the gateway");
        let sql = "COPY bench_export TO STDOUT";
        let (mut d, mut g, mut peak) = (vec![], vec![], 0f64);
        for round in 0..rounds {
            let direct_first = round % 2 == 0;
            let mut run_direct = || d.push(copy_out(&direct.conninfo, &direct.password, sql));
            if direct_first {
                run_direct();
            }
            reset_peak_rss();
            let before = peak_rss_mib();
            g.push(copy_out(&users.conninfo, &users.password, sql));
            peak = peak.max(peak_rss_mib());
            if !direct_first {
                d.push(copy_out(&direct.conninfo, &direct.password, sql));
            }
            println!(
                "  round {}: direct {:.2} s, gateway {:.2} s, gateway process {:.0} MiB before, {:.0} MiB peak",
                round + 1,
                d[round as usize],
                g[round as usize],
                before,
                peak_rss_mib()
            );
        }
        let r: Vec<f64> = g.iter().zip(&d).map(|(g, d)| g / d).collect();
        let (lo, hi) = min_max(&r);
        copy_line = format!(
            "| COPY 1M rows, masked | direct {:.2} s | gateway {:.2} s | time gateway / direct {:.2} ({lo:.2}–{hi:.2}) | peak memory of the gateway's process {peak:.0} MiB |",
            median(d.clone()),
            median(g.clone()),
            median(r)
        );
        println!("{copy_line}");
    }

    let mut table = format!("{HEADER}\n");
    for m in &measured {
        table += &row(m);
        table.push('\n');
    }
    if !copy_line.is_empty() {
        table += &format!("\n{copy_line}\n");
    }
    println!("\n{table}");
    std::fs::write(out_dir.join("pgbench.md"), &table).unwrap();
    if !measured.is_empty() {
        std::fs::write(out_dir.join("pgbench.svg"), svg(&measured)).unwrap();
    }
    println!("written to {}", out_dir.display());
}
