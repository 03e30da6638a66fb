//! Audit log throughput: appends per second with group commit (every
//! append fsynced before it returns), and the time `tollgate verify` takes
//! over the log (canonical form, sequence, time order, card-data scan of
//! every record, tree recomputation, signatures and consistency).
//!
//! Run: `cargo bench -p gateway-core --bench audit` (RECORDS, default 1000000).

use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tollgate::audit::log::{AuditLog, CheckpointEvery};
use tollgate::audit::verify::verify_dir;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let records: u64 = std::env::var("RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(
        dir.path(),
        "bench.example/audit",
        CheckpointEvery {
            records: 10_000,
            interval: Duration::from_secs(10),
        },
    )
    .unwrap();
    // 256 concurrent writers, like sessions each waiting for their event.
    let writers = 256u64;
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..records / writers {
                    let mut record = Map::new();
                    record.insert("event".into(), Value::from("statement"));
                    record.insert("subject".into(), Value::from(format!("user{w}")));
                    record.insert(
                        "sql".into(),
                        Value::from(format!("SELECT * FROM payments WHERE id = {i}")),
                    );
                    log.append(record).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let appended = records / writers * writers;
    println!(
        "{appended} appends from {writers} concurrent writers in {elapsed:.2} s: {:.0} durable appends/s (target >= 20000)",
        appended as f64 / elapsed
    );
    log.checkpoint().await.unwrap();
    let start = Instant::now();
    let report = verify_dir(dir.path(), log.verifier_key());
    let elapsed = start.elapsed().as_secs_f64();
    assert!(report.ok(), "{report}");
    println!(
        "verifying {} records with every check: {elapsed:.2} s ({:.1} s per million; target <= 10 s)",
        report.records,
        elapsed * 1e6 / report.records as f64
    );
}
