//! Content-detection throughput on digit-dense data (target: at least
//! 500 MB/s per core).
//!
//! Run: `cargo bench -p gateway-core --bench scanner`

use std::time::Instant;

use tollgate::masking::{Fill, Keep, mask_text};

/// Digit-dense rows: timestamps, IMEIs, amounts, order numbers, phone
/// numbers and, in one row of 16, a PAN.
fn corpus(bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 256);
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut row = 0u64;
    while out.len() < bytes {
        let ts = 1_764_000_000_000 + next() % 100_000_000;
        let imei = 350_000_000_000_000 + next() % 10_000_000_000_000;
        let amount = next() % 1_000_000;
        let order = 9_000_000_000_000_000u64 + next() % 1_000_000_000_000_000;
        let line = if row.is_multiple_of(16) {
            format!(
                "{ts},{imei},{}.{:02},{order},+1 415 555 {:04},4111111111111111\n",
                amount / 100,
                amount % 100,
                next() % 10_000
            )
        } else {
            format!(
                "{ts},{imei},{}.{:02},{order},+1 415 555 {:04},{}\n",
                amount / 100,
                amount % 100,
                next() % 10_000,
                next()
            )
        };
        out.extend_from_slice(line.as_bytes());
        row += 1;
    }
    out
}

fn main() {
    let data = corpus(64 << 20);
    let digits = data.iter().filter(|b| b.is_ascii_digit()).count();
    println!(
        "corpus: {} MiB, {:.0}% digits",
        data.len() >> 20,
        100.0 * digits as f64 / data.len() as f64
    );
    let mut best = f64::MAX;
    let mut masked = 0;
    for _ in 0..5 {
        let mut buf = data.clone();
        let start = Instant::now();
        // Row by row, as the relay sees cells.
        let mut hits = 0;
        for line in buf.split_mut(|b| *b == b'\n') {
            hits += mask_text(line, Keep::Display, Fill::Star).len();
        }
        best = best.min(start.elapsed().as_secs_f64());
        masked = hits;
    }
    let mb = data.len() as f64 / 1e6;
    println!(
        "content detection: {:.0} MB/s on one core, best of 5 ({masked} PANs masked; target >= 500 MB/s)",
        mb / best
    );
}
