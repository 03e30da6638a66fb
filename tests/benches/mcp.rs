//! A small MCP tool call, direct vs through the gateway, at 1, 8 and 32
//! concurrent clients and 500 calls per second in all, the arms interleaved
//! (direct, gateway, direct, gateway ...) in one run.
//!
//! The upstream is a minimal MCP server over Streamable HTTP in this
//! benchmark (an `echo` tool answered in JSON, in microseconds), so that
//! what is measured is the gateway: the reference server-everything (Node)
//! takes about 2.6 ms a call itself and cannot hold 500 calls a second on
//! one session. The call is `echo` with a short message. The direct arm
//! posts to the server itself; the gateway arm posts to the
//! gateway's MCP listener (TLS, an agent's token, the starter policy,
//! masking, recording and the durable audit log, as users run it), which
//! reaches the same server over Streamable HTTP. Each client keeps its own
//! session and connection and sends on a fixed schedule (tokio's timer
//! wakes it up to a millisecond late, so a call's latency is measured from
//! when it is sent, not from when it was due). Every answer is checked.
//!
//! Run: `cargo bench -p tollgate-e2e --bench mcp` (ROUNDS=3, SECONDS=4,
//! RATE=500, CLIENTS=1,8,32 by default). Target: the gateway adds at most 1 ms at p99.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use serde_json::{Value, json};
use tollgate_e2e::TestGateway;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Where a client sends its calls.
#[derive(Clone)]
struct Target {
    url: String,
    token: Option<String>,
    /// The certificate to trust (the gateway's).
    ca: Option<reqwest::Certificate>,
    http: reqwest::Client,
}

impl Target {
    fn post(&self, session: Option<&str>, body: &Value) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .post(&self.url)
            .header("Accept", "application/json, text/event-stream")
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(body).unwrap());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(session) = session {
            request = request
                .header("Mcp-Session-Id", session)
                .header("MCP-Protocol-Version", "2025-06-18");
        }
        request
    }

    /// The JSON-RPC response in a JSON body or an event stream.
    async fn exchange(&self, session: Option<&str>, body: &Value) -> (Option<String>, Value) {
        let response = self
            .post(session, body)
            .send()
            .await
            .expect("the server answers");
        let session = response
            .headers()
            .get("mcp-session-id")
            .map(|v| v.to_str().unwrap().to_string());
        let text = response.text().await.unwrap();
        let json = text
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap_or(&text);
        let value = serde_json::from_str(json).unwrap_or_else(|_| panic!("not JSON: {text}"));
        (session, value)
    }

    async fn session(&self) -> String {
        let (session, answer) = self
            .exchange(
                None,
                &json!({
                    "jsonrpc": "2.0", "id": 0, "method": "initialize",
                    "params": { "protocolVersion": "2025-06-18", "capabilities": {},
                                "clientInfo": { "name": "bench", "version": "1" } },
                }),
            )
            .await;
        assert!(answer["result"].is_object(), "{answer}");
        let session = session.expect("a session id");
        let notification = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
        self.post(Some(&session), &notification)
            .send()
            .await
            .unwrap();
        session
    }
}

/// One arm: `clients` sessions, `rate` calls a second in all, `seconds` long.
async fn run(target: &Target, clients: usize, rate: f64, seconds: f64) -> Vec<Duration> {
    let mut sessions = Vec::new();
    for _ in 0..clients {
        // Each client its own connection, as separate agents would have.
        let target = Target {
            http: client(target.ca.as_ref()),
            ..target.clone()
        };
        let session = target.session().await;
        sessions.push((target, session));
    }
    let interval = Duration::from_secs_f64(clients as f64 / rate);
    let calls = ((rate * seconds) as usize / clients).max(1);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for (n, (target, session)) in sessions.into_iter().enumerate() {
        let offset = interval.mul_f64(n as f64 / clients as f64);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(calls);
            for k in 0..calls {
                let due = start + offset + interval * k as u32;
                tokio::time::sleep_until(due).await;
                let sent = tokio::time::Instant::now();
                let (_, answer) = target
                    .exchange(
                        Some(&session),
                        &json!({
                            "jsonrpc": "2.0", "id": k + 1, "method": "tools/call",
                            "params": { "name": "echo", "arguments": { "message": "hello" } },
                        }),
                    )
                    .await;
                latencies.push(sent.elapsed());
                assert_eq!(
                    answer["result"]["content"][0]["text"], "Echo: hello",
                    "{answer}"
                );
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// An HTTP client with one connection, trusting `ca` if given.
fn client(ca: Option<&reqwest::Certificate>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().pool_max_idle_per_host(1);
    if let Some(ca) = ca {
        builder = builder.add_root_certificate(ca.clone());
    }
    builder.build().unwrap()
}

/// The upstream: initialize, the initialized notification, tools/list and
/// tools/call of `echo`, each answered in JSON.
async fn echo_server(headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let id = message["id"].clone();
    let result = match message["method"].as_str().unwrap_or_default() {
        "initialize" => {
            let result = json!({
                "protocolVersion": "2025-06-18",
                "capabilities": { "tools": {} },
                "serverInfo": { "name": "bench-echo", "version": "1" },
            });
            let body = json!({ "jsonrpc": "2.0", "id": id, "result": result });
            return ([("mcp-session-id", "bench-session")], axum::Json(body)).into_response();
        }
        _ if id.is_null() => return StatusCode::ACCEPTED.into_response(),
        _ if headers.get("mcp-session-id").is_none() => {
            return StatusCode::BAD_REQUEST.into_response();
        }
        "tools/list" => json!({ "tools": [{
            "name": "echo",
            "description": "Echoes back the input",
            "inputSchema": { "type": "object", "properties": { "message": { "type": "string" } }, "required": ["message"] },
            "annotations": { "readOnlyHint": true },
        }] }),
        "tools/call" => {
            let text = format!(
                "Echo: {}",
                message["params"]["arguments"]["message"]
                    .as_str()
                    .unwrap_or_default()
            );
            json!({ "content": [{ "type": "text", "text": text }] })
        }
        _ => {
            let error = json!({ "code": -32601, "message": "method not found" });
            return axum::Json(json!({ "jsonrpc": "2.0", "id": id, "error": error }))
                .into_response();
        }
    };
    axum::Json(json!({ "jsonrpc": "2.0", "id": id, "result": result })).into_response()
}

fn main() {
    // The gateway runs on a runtime of its own, sized as the `tollgate`
    // binary sizes it (a worker per core), as it would in its own process;
    // the clients and the upstream share the other one. On one runtime the
    // load generator's tasks queue in front of the gateway's.
    let upstream = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    upstream.set_nonblocking(true).unwrap();
    let port = upstream.local_addr().unwrap().port();
    let gateway_runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("gateway")
        .enable_all()
        .build()
        .unwrap();
    let gw = gateway_runtime.block_on(TestGateway::start_with(&format!(
        "[policy]\nstarter = true\n\n[mcp]\nlisten = \"127.0.0.1:0\"\n\n[[mcp.server]]\nname = \"everything\"\nurl = \"http://127.0.0.1:{port}/mcp\"\n"
    )));
    let clients_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    clients_runtime.block_on(measure(&gw, upstream, port));
    drop(gw);
    gateway_runtime.shutdown_timeout(Duration::from_secs(5));
}

async fn measure(gw: &TestGateway, upstream: std::net::TcpListener, port: u16) {
    let rounds: usize = env_or("ROUNDS", 3);
    let seconds: f64 = env_or("SECONDS", 4.0);
    let rate: f64 = env_or("RATE", 500.0);
    let listener = tokio::net::TcpListener::from_std(upstream).unwrap();
    let app = axum::Router::new().route("/mcp", axum::routing::post(echo_server));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let direct = Target {
        url: format!("http://127.0.0.1:{port}/mcp"),
        token: None,
        ca: None,
        http: client(None),
    };
    let pem = std::fs::read(gw.data_dir.join("gateway-cert.pem")).unwrap();
    let ca = reqwest::Certificate::from_pem(&pem).unwrap();
    let gateway = Target {
        url: gw.mcp_url("everything"),
        token: Some(gw.mcp_token("agent-bench", &[], true)),
        http: client(Some(&ca)),
        ca: Some(ca),
    };
    // Warm both paths (connections, the gateway's tool listing).
    run(&direct, 1, 200.0, 0.5).await;
    run(&gateway, 1, 200.0, 0.5).await;

    println!(
        "MCP echo tool call, {rate} calls/s, {rounds} rounds of {seconds} s per arm, arms interleaved"
    );
    println!(
        "{:>7} | {:>10} {:>10} | {:>10} {:>10} | {:>24}",
        "clients", "direct p50", "p99", "gw p50", "p99", "added at p99 (min..max)"
    );
    let mut worst = 0.0f64;
    let counts: Vec<usize> = std::env::var("CLIENTS")
        .unwrap_or_else(|_| "1,8,32".into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("CLIENTS: numbers separated by commas")
        })
        .collect();
    for clients in counts {
        let (mut d50, mut d99, mut g50, mut g99, mut added) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let mut d = run(&direct, clients, rate, seconds).await;
            let mut g = run(&gateway, clients, rate, seconds).await;
            let (dp50, dp99) = (percentile(&mut d, 0.5), percentile(&mut d, 0.99));
            let (gp50, gp99) = (percentile(&mut g, 0.5), percentile(&mut g, 0.99));
            d50.push(ms(dp50));
            d99.push(ms(dp99));
            g50.push(ms(gp50));
            g99.push(ms(gp99));
            added.push(ms(gp99) - ms(dp99));
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let m = median(&mut added);
        worst = worst.max(m);
        println!(
            "{clients:>7} | {:>7.2} ms {:>7.2} ms | {:>7.2} ms {:>7.2} ms | {:>+7.2} ms ({:+.2}..{:+.2})",
            median(&mut d50),
            median(&mut d99),
            median(&mut g50),
            median(&mut g99),
            m,
            added[0],
            added[added.len() - 1],
        );
    }
    println!(
        "target: at most +1.00 ms at p99 -> {}",
        if worst <= 1.0 { "met" } else { "NOT met" }
    );
}
