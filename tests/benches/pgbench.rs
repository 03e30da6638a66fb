//! pgbench select-only through the gateway against a direct connection, in
//! one run with the arms interleaved, reporting the TPS ratio and the
//! gateway's CPU time per transaction.
//!
//! Run: `cargo bench -p tollgate-e2e --bench pgbench` (ROUNDS and SECONDS
//! environment variables change the length; defaults 3 rounds of 10 s).

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

fn pgbench(conninfo: &str, password: &str, mode: &str, seconds: u32) -> (f64, u64) {
    let bin = tollgate::devdb::find_bin_dir().unwrap().join("pgbench");
    let out = Command::new(bin)
        .args([
            "-n",
            "-S",
            "-M",
            mode,
            "-c",
            "8",
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            conninfo,
        ])
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
    (tps, transactions)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
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
    let gw = if client_sslmode == "disable" {
        TestGateway::start_edited(|t| {
            t.replace("[server.tls]", "allow_plaintext = true\n\n[server.tls]")
        })
        .await
    } else {
        TestGateway::start().await
    };
    let token = gw.token_with(tollgate::identity::dev_issuer::TokenRequest {
        subject: "bench".into(),
        groups: vec!["analysts".into()],
        mfa: true,
        agent: false,
        ttl_secs: 24 * 3600,
    });
    let direct = format!(
        "host=localhost port={} dbname=payments user=tollgate_gateway sslmode=require",
        db.pg.port
    );
    let through = format!(
        "host=localhost port={} dbname=payments user=bench sslmode={client_sslmode}",
        gw.addr.port()
    );

    println!("pgbench -S -c 8 -j 2, {rounds} rounds of {seconds} s per arm, arms interleaved");
    for mode in ["simple", "prepared"] {
        let (mut direct_tps, mut gateway_tps, mut cpu_us) = (vec![], vec![], vec![]);
        for round in 1..=rounds {
            let (d, _) = {
                let (c, p) = (direct.clone(), db.gateway_password.clone());
                tokio::task::spawn_blocking(move || pgbench(&c, &p, mode, seconds))
                    .await
                    .unwrap()
            };
            let cpu0 = cpu_seconds();
            let (g, n) = {
                let (c, p) = (through.clone(), token.clone());
                tokio::task::spawn_blocking(move || pgbench(&c, &p, mode, seconds))
                    .await
                    .unwrap()
            };
            let cpu = cpu_seconds() - cpu0;
            println!(
                "  {mode:8} round {round}: direct {d:9.0} tps   gateway {g:9.0} tps   ratio {:.2}",
                g / d
            );
            direct_tps.push(d);
            gateway_tps.push(g);
            cpu_us.push(cpu * 1e6 / n as f64);
        }
        let ratios: Vec<f64> = direct_tps
            .iter()
            .zip(&gateway_tps)
            .map(|(d, g)| g / d)
            .collect();
        println!(
            "{mode:8} median: direct {:.0} tps, gateway {:.0} tps, ratio {:.2} (target >= 0.70), gateway CPU {:.1} us/transaction",
            median(direct_tps),
            median(gateway_tps),
            median(ratios),
            median(cpu_us)
        );
    }
}
