//! Streaming a 1M-row, 4-column result with a PAN column through the gateway
//! with masking, against the same gateway as a relay that does not look
//! inside results, in one run with the arms interleaved. Reports the time
//! ratio (target <= 1.3x) and the process's resident memory, which must stay
//! flat however many rows pass.
//!
//! Run: `cargo bench -p tollgate-e2e --bench masking` (ROUNDS, default 3).

use std::time::Instant;

use futures_util::{StreamExt, pin_mut};
use tollgate_e2e::{TestGateway, database};

const ROWS: i64 = 1_000_000;

/// Resident set size of this process (client and gateway), in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

/// Stream every row (binary results, as tokio-postgres asks for them);
/// returns seconds, rows, the first PAN seen and the highest RSS sampled.
async fn stream(gw: &TestGateway) -> (f64, i64, String, f64) {
    let client = gw
        .tokio_postgres(&gw.token("bench", &["analysts"]))
        .await
        .unwrap();
    let start = Instant::now();
    let rows = client
        .query_raw(
            "SELECT id, pan, amount::text, memo FROM stream_1m",
            std::iter::empty::<i32>(),
        )
        .await
        .unwrap();
    pin_mut!(rows);
    let (mut count, mut first, mut peak) = (0i64, String::new(), 0f64);
    while let Some(row) = rows.next().await {
        let row = row.unwrap();
        if count == 0 {
            first = row.get::<_, String>(1);
        }
        count += 1;
        if count % 100_000 == 0 {
            peak = peak.max(rss_mib());
        }
    }
    (start.elapsed().as_secs_f64(), count, first, peak)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rounds: u32 = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let db = database();
    db.pg
        .psql(
            "payments",
            &format!(
                "DROP TABLE IF EXISTS stream_1m; \
                 CREATE TABLE stream_1m AS SELECT g AS id, \
                   (ARRAY['4111111111111111','5555555555554444','378282246310005', \
                          '6011111111111117','3530111333300000'])[1 + g % 5] AS pan, \
                   (g % 100000) / 100.0 AS amount, 'payment memo ' || g AS memo \
                 FROM generate_series(1, {ROWS}) AS g; \
                 GRANT SELECT ON stream_1m TO tollgate_gateway"
            ),
        )
        .unwrap();
    let masked = TestGateway::start().await;
    let unmasked = TestGateway::start_unmasked().await;
    println!("{ROWS} rows x 4 columns (id, pan, amount, memo), {rounds} rounds, arms interleaved");
    let baseline_rss = rss_mib();
    let (mut ratios, mut peak) = (vec![], 0f64);
    for round in 1..=rounds {
        let (plain, n1, raw, p1) = stream(&unmasked).await;
        let (with_mask, n2, shown, p2) = stream(&masked).await;
        assert_eq!((n1, n2), (ROWS, ROWS));
        assert!(
            tollgate::masking::pan::valid(raw.as_bytes()),
            "baseline returns the real value"
        );
        assert!(shown.contains("******"), "masked arm shows {shown}");
        peak = peak.max(p1).max(p2);
        ratios.push(with_mask / plain);
        println!(
            "  round {round}: unmasked relay {plain:.2} s ({:.0} rows/s), masked {with_mask:.2} s, ratio {:.2}",
            ROWS as f64 / plain,
            with_mask / plain
        );
    }
    ratios.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "median ratio masked/unmasked {:.2} (target <= 1.30); resident memory {baseline_rss:.0} MiB before, peak {peak:.0} MiB while streaming",
        ratios[ratios.len() / 2]
    );
}
