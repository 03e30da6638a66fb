//! The HTTPS API for recordings and the audit log, through the real
//! gateway with real tokens: who may read what, that nobody sees a raw
//! card number, and that every read (and every refused or unauthenticated
//! attempt) is itself on record.

use reqwest::StatusCode;
use serde_json::Value;
use tollgate::config::Config;
use tollgate_e2e::{TestGateway, config_text};

const PANS: &[&str] = &["4111111111111111", "5555555555554444", "378282246310005"];

async fn gateway() -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        dir.path(),
        "[policy]\nstarter = true\n[api]\nlisten = \"127.0.0.1:0\"\n",
    );
    let config = Config::parse(&text, "test.toml", dir.path()).unwrap();
    TestGateway::start_config(config, dir).await
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(gw: &TestGateway) -> Api {
        let addr = gw
            .running
            .as_ref()
            .unwrap()
            .api_addr
            .expect("the API listens");
        Api {
            base: format!("https://localhost:{}", addr.port()),
            http: reqwest::Client::builder()
                .tls_backend_preconfigured(gw.client_tls())
                .build()
                .unwrap(),
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, String) {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status();
        (status, response.text().await.unwrap())
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, String) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("the API answers");
        let status = response.status();
        (status, response.text().await.unwrap())
    }

    async fn json(&self, path: &str, token: &str) -> Value {
        let (status, body) = self.get(path, Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

fn assert_no_pan(what: &str, text: &str) {
    for pan in PANS {
        assert!(
            !text.contains(pan),
            "{what} holds the raw PAN {pan}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn recordings_and_the_audit_log_by_role_and_every_read_on_record() {
    let gw = gateway().await;
    let api = Api::new(&gw);
    let ops = gw.token("ops", &["admins"]);
    let output = gw.psql(
        &ops,
        &["-c", "SELECT brand, pan FROM payments ORDER BY id LIMIT 2"],
    );
    let rows = output.ok();
    assert!(rows.contains("411111******1111"), "{rows}");
    gw.settle().await;

    let auditor = gw.token("qsa", &["auditors"]);
    let analyst = gw.token("ana", &["analysts"]);
    let nobody = gw.token("eve", &["developers"]);

    let me = api.json("/api/v1/whoami", &analyst).await;
    assert_eq!(me["roles"], serde_json::json!(["analyst"]));

    // The session list, for both roles.
    let list = api.json("/api/v1/sessions", &auditor).await;
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{list}");
    assert_eq!(sessions[0]["subject"], "ops");
    let id = sessions[0]["id"].as_str().unwrap().to_string();

    // The analyst replays the masked frames, page by page.
    let mut frames = Vec::new();
    let mut after = -1i64;
    loop {
        let page = api
            .json(
                &format!("/api/v1/sessions/{id}/frames?after={after}&limit=2"),
                &analyst,
            )
            .await;
        frames.extend(page["frames"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    let kinds: Vec<&str> = frames.iter().map(|f| f["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"connect"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"disconnect"), "{kinds:?}");
    let result = frames
        .iter()
        .find(|f| f["kind"] == "result" && f["body"]["rows"] == 2)
        .expect("the SELECT's result frame");
    let preview = result["body"]["preview"].to_string();
    assert!(
        preview.contains("411111******1111"),
        "masked preview: {preview}"
    );
    assert_no_pan(
        "the analyst's frames",
        &serde_json::to_string(&frames).unwrap(),
    );

    // The auditor sees the same frames without the result rows.
    let page = api
        .json(&format!("/api/v1/sessions/{id}/frames?limit=100"), &auditor)
        .await;
    let result = page["frames"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "result" && f["body"]["rows"] == 2)
        .unwrap();
    assert!(result["body"].get("preview").is_none(), "{result}");
    assert_eq!(result["body"]["withheld"], "result rows: analysts only");
    assert!(
        result["body"]["hmac_sha256"].is_string(),
        "the digest stays: {result}"
    );

    // Asciicast for the analyst; refused to the auditor.
    let (status, cast) = api
        .get(&format!("/api/v1/sessions/{id}/asciicast"), Some(&analyst))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(cast.starts_with("{\"version\":2"), "{cast}");
    assert_no_pan("the asciicast", &cast);
    let (status, body) = api
        .get(&format!("/api/v1/sessions/{id}/asciicast"), Some(&auditor))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body.contains("analysts"),
        "says which group grants it: {body}"
    );

    // The audit log: auditors only.
    let records = api.json("/api/v1/audit/records?limit=1000", &auditor).await;
    let records = records["records"].as_array().unwrap();
    assert!(records.iter().any(|r| r["event"] == "statement"));
    assert_no_pan(
        "the audit records",
        &serde_json::to_string(records).unwrap(),
    );
    let (status, body) = api.get("/api/v1/audit/records", Some(&analyst)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let checkpoint = api.json("/api/v1/audit/checkpoint", &auditor).await;
    assert!(
        checkpoint["checkpoint"]
            .as_str()
            .unwrap()
            .starts_with("tollgate.local/audit\n"),
        "{checkpoint}"
    );

    // Someone without a role, someone without a token, a forged token.
    let (status, body) = api.get("/api/v1/sessions", Some(&nobody)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = api.get("/api/v1/sessions", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("Authorization: Bearer"), "{body}");
    let forged = format!("{}x", &auditor[..auditor.len() - 1]);
    let (status, _) = api.get("/api/v1/sessions", Some(&forged)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = api
        .get("/api/v1/sessions/nope/frames", Some(&analyst))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = api
        .get(
            &format!("/api/v1/sessions/{id}/frames?limit=abc"),
            Some(&analyst),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let error: Value = serde_json::from_str(&body).expect("errors are JSON");
    assert_eq!(error["error"], "bad_request", "{body}");
    let (status, body) = api
        .get("/api/v1/sessions?from=yesterday", Some(&analyst))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("RFC 3339"), "{body}");

    // Every read and attempt is on record, with who, what and the outcome.
    let all = api.json("/api/v1/audit/records?limit=1000", &auditor).await;
    let reads: Vec<(String, String, String)> = all["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            let e = r["event"].as_str().unwrap();
            e.starts_with("recording.") || e.starts_with("audit.") || e == "api.login"
        })
        .map(|r| {
            (
                r["event"].as_str().unwrap().to_string(),
                r["actor"]["subject"].as_str().unwrap_or("-").to_string(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let has = |event: &str, who: &str, outcome: &str| {
        reads
            .iter()
            .any(|(e, s, o)| e == event && s == who && o == outcome)
    };
    assert!(has("recording.list", "qsa", "success"), "{reads:?}");
    assert!(has("recording.read", "ana", "success"), "{reads:?}");
    assert!(has("recording.read", "qsa", "refused"), "{reads:?}");
    assert!(has("audit.read", "qsa", "success"), "{reads:?}");
    assert!(has("audit.read", "ana", "refused"), "{reads:?}");
    assert!(has("recording.list", "eve", "refused"), "{reads:?}");
    assert!(has("recording.read", "ana", "failure"), "{reads:?}");
    assert_eq!(
        reads
            .iter()
            .filter(|(e, _, o)| e == "api.login" && o == "failure")
            .count(),
        2,
        "{reads:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn evidence_exports_over_the_api_by_role_and_bad_requests_answered() {
    use serde_json::json;
    let gw = gateway().await;
    let api = Api::new(&gw);
    let ops = gw.token("ops", &["admins"]);
    gw.psql(
        &ops,
        &["-c", "SELECT brand, pan FROM payments ORDER BY id LIMIT 2"],
    )
    .ok();
    gw.settle().await;
    let auditor = gw.token("qsa", &["auditors"]);
    let other = gw.token("qsa2", &["auditors"]);
    let analyst = gw.token("ana", &["analysts"]);

    // Public metadata for the console's sign-in: the API's own URL.
    let (status, body) = api.get("/.well-known/oauth-protected-resource", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let metadata: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(metadata["resource"], api.base.as_str(), "{metadata}");

    // Only auditors export; bad windows are answered with what to fix.
    let (status, body) = api.post("/api/v1/evidence", &analyst, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("auditors"), "{body}");
    for (window, says) in [
        (
            json!({ "from": "2026-12-02T00:00:00Z", "to": "2026-12-01T00:00:00Z" }),
            "empty",
        ),
        (json!({ "from": "yesterday" }), "RFC 3339"),
        (json!({ "window": 1 }), "unknown field"),
    ] {
        let (status, body) = api.post("/api/v1/evidence", &auditor, window).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.contains(says), "{says}: {body}");
    }

    // An auditor's export: followed to done, downloaded as one archive.
    let (status, body) = api
        .post("/api/v1/evidence", &auditor, json!({ "from": null }))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let started: Value = serde_json::from_str(&body).unwrap();
    let id = started["export"]["id"].as_str().unwrap().to_string();
    let done = loop {
        let view = api.json(&format!("/api/v1/evidence/{id}"), &auditor).await;
        match view["export"]["state"].as_str() {
            Some("done") => break view,
            Some("running") => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            _ => panic!("the export failed: {view}"),
        }
    };
    assert_eq!(done["export"]["summary"]["verified"], true, "{done}");
    // Another auditor does not see it.
    for path in [
        format!("/api/v1/evidence/{id}"),
        format!("/api/v1/evidence/{id}/bundle"),
    ] {
        let (status, body) = api.get(&path, Some(&other)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    let response = api
        .http
        .get(format!("{}/api/v1/evidence/{id}/bundle", api.base))
        .bearer_auth(&auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-tar");
    let bytes = response.bytes().await.unwrap();
    assert_eq!(
        Some(bytes.len() as u64),
        done["export"]["bundle_bytes"].as_u64()
    );
    let mut names = Vec::new();
    let mut archive = tar::Archive::new(&bytes[..]);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        let mut text = String::new();
        if entry.header().entry_type().is_file() {
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
        }
        assert!(name.starts_with("evidence"), "{name}");
        assert_no_pan(&name, &text);
        if name.starts_with("evidence/sessions/") && name.ends_with(".jsonl") {
            assert!(
                !text.contains("\"preview\""),
                "an auditor's bundle holds result rows: {text}"
            );
        }
        names.push(name);
    }
    assert!(names.iter().any(|n| n == "evidence/INDEX.md"), "{names:?}");

    // The export and the download are on record as the auditor, linked by the id.
    let all = api.json("/api/v1/audit/records?limit=1000", &auditor).await;
    let records = all["records"].as_array().unwrap();
    assert!(
        records.iter().any(|r| r["event"] == "evidence.export"
            && r["actor"]["subject"] == "qsa"
            && r["request"] == id.as_str()),
        "{all}"
    );
    assert!(
        records.iter().any(|r| r["event"] == "evidence.download"
            && r["actor"]["subject"] == "qsa"
            && r["resource"]["evidence"] == id.as_str()),
        "{all}"
    );

    // The session list answers malformed queries with what to fix.
    for (query, says) in [
        ("q=a+b+c+d+e+f+g+h+i", "at most 8 words"),
        ("after=nonsense", "next"),
        ("outcome=maybe", "refused, held"),
        ("sort=name", "unknown field"),
    ] {
        let (status, body) = api
            .get(&format!("/api/v1/sessions?{query}"), Some(&auditor))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body.contains(says), "{query}: {body}");
    }
}
