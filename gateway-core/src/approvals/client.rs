//! `tollgate approvals`: list and decide approval requests from a script,
//! over the gateway's HTTP API, with the approver's token.
//!
//! Without `--gateway URL` it talks to the local gateway: the one that
//! `tollgate dev`, `demo` or `serve` started with the same data directory
//! wrote its API address (and, for a self-signed certificate, the file to
//! trust) into `api.json` there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::gateway::API_FILE;

/// Why the command could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No gateway to talk to.
    #[error("{0}")]
    NoGateway(String),
    /// The HTTP request failed.
    #[error("cannot reach the gateway's API at {url}: {detail}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        detail: String,
    },
    /// The gateway refused.
    #[error("the gateway answered {status}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Its stable code (`self_approval`, `not_found` ...).
        code: String,
        /// Its message.
        message: String,
    },
}

/// Where the API is.
#[derive(Debug, Clone)]
pub struct Location {
    /// Base URL, e.g. `https://127.0.0.1:6433`.
    pub url: String,
    /// A certificate (PEM) to trust besides the system's.
    pub ca_file: Option<PathBuf>,
}

impl Location {
    /// `--gateway URL` if given, else the local gateway of `data_dir`.
    pub fn resolve(
        gateway: Option<&str>,
        ca_file: Option<&Path>,
        data_dir: &Path,
    ) -> Result<Location, ClientError> {
        if let Some(url) = gateway {
            return Ok(Location {
                url: url.trim_end_matches('/').to_string(),
                ca_file: ca_file.map(Path::to_path_buf),
            });
        }
        let path = data_dir.join(API_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            ClientError::NoGateway(format!(
                "no local gateway API found ({}: {e}); start one with `tollgate dev` or `tollgate serve` \
                 (with [api] listen set), or name it with --gateway https://HOST:PORT",
                path.display()
            ))
        })?;
        let file: Value = serde_json::from_str(&text)
            .map_err(|e| ClientError::NoGateway(format!("{}: {e}", path.display())))?;
        let url = file["url"]
            .as_str()
            .ok_or_else(|| ClientError::NoGateway(format!("{}: no url", path.display())))?;
        Ok(Location {
            url: url.to_string(),
            ca_file: ca_file
                .map(Path::to_path_buf)
                .or_else(|| file["ca_file"].as_str().map(PathBuf::from)),
        })
    }
}

/// A client of the approvals API.
pub struct Client {
    location: Location,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// A client with the approver's `token`.
    pub fn new(location: Location, token: String) -> Result<Client, ClientError> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &location.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| ClientError::NoGateway(format!("{}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| ClientError::NoGateway(format!("{}: {e}", ca.display())))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| ClientError::Unreachable {
            url: location.url.clone(),
            detail: e.to_string(),
        })?;
        Ok(Client {
            location,
            token,
            http,
        })
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let url = self.location.url.clone();
        let response = request.bearer_auth(&self.token).send().await.map_err(|e| {
            ClientError::Unreachable {
                url: url.clone(),
                detail: error_chain(&e),
            }
        })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        Err(ClientError::Refused {
            status: status.as_u16(),
            code: body["error"].as_str().unwrap_or("refused").to_string(),
            message: body["message"].as_str().unwrap_or("no message").to_string(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.location.url)
    }

    /// Pending requests, grants and recent decisions.
    pub async fn list(&self) -> Result<Value, ClientError> {
        self.call(self.http.get(self.url("/api/v1/approvals")))
            .await
    }

    /// Approve (`window`: for a while instead of once) or deny request `id`.
    pub async fn decide(
        &self,
        id: &str,
        approve: bool,
        reason: &str,
        window: Option<Duration>,
    ) -> Result<Value, ClientError> {
        let verb = if approve { "approve" } else { "deny" };
        let mut body = json!({ "reason": reason });
        if let Some(window) = window {
            body["window_secs"] = json!(window.as_secs());
        }
        let path = format!("/api/v1/approvals/{}/{verb}", urlencode(id));
        self.call(self.http.post(self.url(&path)).json(&body)).await
    }

    /// Revoke grant `id`.
    pub async fn revoke(&self, id: &str, reason: &str) -> Result<Value, ClientError> {
        let path = format!("/api/v1/grants/{}/revoke", urlencode(id));
        self.call(
            self.http
                .post(self.url(&path))
                .json(&json!({ "reason": reason })),
        )
        .await
    }
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A duration like `30m`, `2h`, `90s` or `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(format!("{text}: use a number with s, m, h or d, e.g. 30m")),
        };
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{text}: a unit needs a number before it, e.g. 30m"))?;
        total = total.saturating_add(n.saturating_mul(unit));
        number.clear();
    }
    if !number.is_empty() {
        return Err(format!("{text}: say the unit, e.g. {number}m or {number}s"));
    }
    if total == 0 {
        return Err(format!("{text}: the window must be longer than zero"));
    }
    Ok(Duration::from_secs(total))
}

/// A JSON array of strings as one comma-separated line.
fn joined(list: &Value) -> String {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// The list as a table for people.
pub fn render_list(list: &Value) -> String {
    let mut out = String::new();
    let requests = list["requests"].as_array().cloned().unwrap_or_default();
    let pending: Vec<&Value> = requests
        .iter()
        .filter(|r| r["state"] == "pending")
        .collect();
    if pending.is_empty() {
        out.push_str("No pending approval requests.\n");
    } else {
        out.push_str(&format!("{} pending approval request(s):\n", pending.len()));
    }
    for r in &pending {
        out.push_str(&format!(
            "\n{id}  {who} ({kind}) on {conn}, {left} s left, {got}/{need} approvals\n  {statement}\n  needs approval: {accesses} (policy {policy})\n",
            id = r["id"].as_str().unwrap_or(""),
            who = r["requester"]["subject"].as_str().unwrap_or(""),
            kind = r["requester"]["kind"].as_str().unwrap_or(""),
            conn = r["connection"].as_str().unwrap_or(""),
            left = r["expires_in_secs"],
            got = r["approvals"].as_array().map_or(0, Vec::len),
            need = r["approvals_needed"],
            statement = r["statement"].as_str().unwrap_or(""),
            accesses = joined(&r["accesses"]),
            policy = r["policy"].as_str().unwrap_or(""),
        ));
        if let Some(estimate) = r["row_estimate"].as_i64() {
            out.push_str(&format!("  estimated rows: {estimate}\n"));
        }
        if let Some(reason) = r["reason"].as_str() {
            out.push_str(&format!("  requester's reason: {reason}\n"));
        }
    }
    let grants = list["grants"].as_array().cloned().unwrap_or_default();
    if !grants.is_empty() {
        out.push_str(&format!("\n{} grant(s) in force:\n", grants.len()));
        for g in &grants {
            out.push_str(&format!(
                "  {id}  {who} on {conn} until {until}: {accesses}\n",
                id = g["id"].as_str().unwrap_or(""),
                who = g["requester"]["subject"].as_str().unwrap_or(""),
                conn = g["connection"].as_str().unwrap_or(""),
                until = g["until"].as_str().unwrap_or(""),
                accesses = joined(&g["accesses"]),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("30").unwrap_err().contains("30m"));
        assert!(parse_duration("0m").is_err());
        assert!(parse_duration("ten minutes").is_err());
    }
}
