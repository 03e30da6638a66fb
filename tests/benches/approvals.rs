//! Approval latency through the real gateway: an agent's statement that
//! needs approval is held; an approver's console (the real WebSocket) gets
//! the `requested` event and approves at once; the rows stream to the
//! waiting client. Reports, per statement:
//!
//! - arrival -> event: from sending the statement to the console receiving
//!   `requested` (target: p99 <= 50 ms);
//! - decision -> first row: from sending `approve` to the client's first
//!   row (target: p99 <= 50 ms);
//!
//! and, as the baseline in the same run, the same statement let through by
//! a window grant (no hold): send -> first row.
//!
//! Run: `cargo bench -p tollgate-e2e --bench approvals` (ROUNDS, default 300).

use std::time::{Duration, Instant};

use futures_util::{StreamExt, pin_mut};
use tokio_postgres::SimpleQueryMessage;
use tollgate::identity::dev_issuer::TokenRequest;
use tollgate_e2e::TestGateway;
use tollgate_e2e::console::Auth;

const CONFIG: &str = "[policy]\nstarter = true\n\n[api]\nlisten = \"127.0.0.1:0\"\n";
/// A read of a cardholder table without LIMIT or WHERE: held for approval.
const SQL: &str = "SELECT id, pan, amount FROM payments";

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Send `SQL` on the simple protocol; resolve with the instant the first row arrived.
async fn first_row(client: &tokio_postgres::Client) -> Instant {
    let stream = client
        .simple_query_raw(SQL)
        .await
        .expect("the statement runs");
    pin_mut!(stream);
    let mut first = None;
    while let Some(message) = stream.next().await {
        if let SimpleQueryMessage::Row(_) = message.expect("rows") {
            first.get_or_insert_with(Instant::now);
        }
    }
    first.expect("rows came")
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(300);
    let gw = TestGateway::start_with(CONFIG).await;
    let agent = gw.token_with(TokenRequest {
        subject: "agent-bench".into(),
        groups: vec!["agents".into()],
        mfa: false,
        agent: true,
        ttl_secs: 3600,
    });
    let client = std::sync::Arc::new(gw.tokio_postgres(&agent).await.unwrap());
    let mut console = gw
        .console(&gw.token("olga", &["approvers"]), Auth::Header)
        .await
        .expect("console");
    console.expect("hello").await;
    console.expect("snapshot").await;

    let (mut to_event, mut to_row) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let sent = Instant::now();
        let running = {
            let client = client.clone();
            tokio::spawn(async move { first_row(&client).await })
        };
        let requested = console.expect("requested").await;
        to_event.push(sent.elapsed());
        let id = requested["request"]["id"].as_str().unwrap().to_string();
        let decided = Instant::now();
        let ack = console.approve(&id, "benchmark", None).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let first = running.await.unwrap();
        to_row.push(first - decided);
    }

    // Baseline: the same statement through a window grant, not held.
    let running = {
        let client = client.clone();
        tokio::spawn(async move { first_row(&client).await })
    };
    let id = console.requested_id().await;
    console.approve(&id, "benchmark window", Some(3600)).await;
    running.await.unwrap();
    let mut direct = Vec::new();
    for _ in 0..rounds {
        let sent = Instant::now();
        let first = first_row(&client).await;
        direct.push(first - sent);
    }

    println!("approvals benchmark: {rounds} held statements, approved at once by a console");
    println!(
        "  arrival -> approver's event   p50 {}  p99 {}  (target p99 <= 50 ms)",
        ms(percentile(&mut to_event.clone(), 0.5)),
        ms(percentile(&mut to_event, 0.99))
    );
    println!(
        "  decision -> first row         p50 {}  p99 {}  (target p99 <= 50 ms)",
        ms(percentile(&mut to_row.clone(), 0.5)),
        ms(percentile(&mut to_row, 0.99))
    );
    println!(
        "  baseline, not held: send -> first row  p50 {}  p99 {}",
        ms(percentile(&mut direct.clone(), 0.5)),
        ms(percentile(&mut direct, 0.99))
    );
}
