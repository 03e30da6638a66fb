//! Large results stream through: the gateway's memory stays flat.
//! (A test binary of its own so no other test shares the process.)

use tollgate_e2e::TestGateway;

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_result_streams_with_flat_memory() {
    let gw = TestGateway::start().await;
    let token = gw.token("alice", &["analysts"]);
    // Warm up: one small session so buffers and TLS state exist.
    gw.psql(&token, &["-c", "SELECT 1"]).ok();
    let before = peak_rss_kib();
    // About 400 MB of rows through the gateway, read by psql into a file sink.
    let out = gw.psql(
        &token,
        &[
            "-o",
            "/dev/null",
            "-c",
            "SELECT i, repeat('z', 1000) FROM generate_series(1, 400000) AS i",
        ],
    );
    out.ok();
    let copy = gw.psql(
        &token,
        &[
            "-o",
            "/dev/null",
            "-c",
            "COPY (SELECT i, repeat('c', 1000) FROM generate_series(1, 400000) AS i) TO STDOUT",
        ],
    );
    copy.ok();
    let grown_mib = (peak_rss_kib().saturating_sub(before)) / 1024;
    eprintln!("peak memory growth while streaming: {grown_mib} MiB");
    assert!(
        grown_mib < 64,
        "gateway peak memory grew by {grown_mib} MiB while streaming 800 MB"
    );
}
