//! Audit log throughput: appends per second with group commit (every
//! append fsynced before it returns), and the time to recompute the tree
//! of the records on disk, as verification does.
//!
//! Run: `cargo bench -p gateway-core --bench audit` (RECORDS, default 200000).

use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tollgate::audit::log::{AuditLog, CheckpointEvery, root_on_disk};

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let records: u64 = std::env::var("RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
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
    let start = Instant::now();
    let (size, _) = root_on_disk(dir.path()).unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "recomputing the tree of {size} records from disk: {elapsed:.2} s ({:.1} s per million; target <= 10 s)",
        elapsed * 1e6 / size as f64
    );
}
