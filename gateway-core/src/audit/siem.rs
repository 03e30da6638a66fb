//! Streaming the audit log to SIEMs: RFC 5424 syslog over TCP or TLS
//! (RFC 6587 octet counting, as RFC 5425 frames it), or an HTTPS JSON
//! webhook.
//!
//! The audit log itself is the spool: each sink keeps the sequence number
//! of the next record to deliver in `audit/siem/<name>.cursor`, advanced
//! only after a batch was delivered (written and flushed to the syslog
//! server; a 2xx answer from the webhook). While a SIEM is down its records
//! wait in the log, retention does not prune them, and delivery resumes
//! where it stopped, across restarts. Delivery is at least once: a record
//! may be sent twice around a crash, and its `seq` tells the SIEM so.
//!
//! A sink going down and coming back are audit events (`siem.down`,
//! `siem.up`), so a gap in forwarding is itself on record (PCI DSS 10.7).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::event::{Auditor, Event, Outcome};
use super::log::{AuditError, canonical};
use crate::config::{SiemConfig, UpstreamTlsMode};

/// Why a sink cannot start.
#[derive(Debug, thiserror::Error)]
#[error("audit.siem \"{name}\": {message}")]
pub struct SiemError {
    name: String,
    message: String,
}

/// Where a sink delivers.
enum Target {
    Syslog {
        host: String,
        port: u16,
        tls: Option<Arc<rustls::ClientConfig>>,
    },
    Webhook {
        url: String,
        client: reqwest::Client,
        token: Option<String>,
    },
}

/// One configured SIEM.
pub struct Sink {
    name: String,
    target: Target,
    batch: usize,
    cursor: PathBuf,
}

/// The file holding a sink's cursor (the next `seq` to deliver).
pub fn cursor_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("siem").join(format!("{name}.cursor"))
}

/// The next record `name` has to deliver (0 when it never delivered).
pub fn cursor(dir: &Path, name: &str) -> u64 {
    std::fs::read_to_string(cursor_path(dir, name))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

fn save_cursor(path: &Path, next: u64) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    std::io::Write::write_all(&mut file, format!("{next}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl Sink {
    /// Prepare a sink from its configuration (reads its CA and token).
    pub async fn new(config: &SiemConfig, dir: &Path) -> Result<Sink, SiemError> {
        let error = |message: String| SiemError {
            name: config.name.clone(),
            message,
        };
        let url = url::Url::parse(&config.url).map_err(|e| error(format!("url: {e}")))?;
        let tls = || {
            crate::upstream::tls::client_config(
                UpstreamTlsMode::VerifyFull,
                config.ca_file.as_deref(),
            )
            .map_err(|e| error(e.to_string()))
        };
        let target = match url.scheme() {
            "syslog+tls" | "syslog+tcp" => Target::Syslog {
                host: url
                    .host_str()
                    .ok_or_else(|| error("url: no host".into()))?
                    .trim_matches(['[', ']'])
                    .to_string(),
                port: url.port().unwrap_or(if url.scheme() == "syslog+tls" {
                    6514
                } else {
                    601
                }),
                tls: if url.scheme() == "syslog+tls" {
                    Some(tls()?)
                } else {
                    None
                },
            },
            "https" | "http" => {
                let client = reqwest::Client::builder()
                    .tls_backend_preconfigured((*tls()?).clone())
                    .timeout(Duration::from_secs(15))
                    .build()
                    .map_err(|e| error(e.to_string()))?;
                let token = match &config.token {
                    None => None,
                    Some(source) => Some(
                        crate::upstream::credential::read(source)
                            .await
                            .map_err(|e| error(format!("token: {e}")))?
                            .expose()
                            .to_string(),
                    ),
                };
                Target::Webhook {
                    url: config.url.clone(),
                    client,
                    token,
                }
            }
            other => {
                return Err(error(format!(
                    "url scheme {other}: use syslog+tls://host:port, syslog+tcp://host:port or https://..."
                )));
            }
        };
        Ok(Sink {
            name: config.name.clone(),
            target,
            batch: config.batch.max(1),
            cursor: cursor_path(dir, &config.name),
        })
    }

    /// Deliver the log in `dir` until `stop` turns true.
    pub async fn run(
        self,
        dir: PathBuf,
        auditor: Auditor,
        origin: String,
        mut stop: watch::Receiver<bool>,
    ) {
        let host = hostname();
        let mut syslog: Option<Box<dyn AsyncWrite + Send + Unpin>> = None;
        let mut backoff = Duration::from_secs(1);
        let mut down_since: Option<(String, u64)> = None;
        loop {
            if *stop.borrow() {
                return;
            }
            let next = cursor(&dir, &self.name);
            let batch = self.batch;
            let log = auditor.log().clone();
            let records = tokio::task::spawn_blocking(move || log.read(next.checked_sub(1), batch))
                .await
                .unwrap_or(Err(AuditError::Stopped));
            let records = match records {
                Ok(records) if records.is_empty() => {
                    let _ = tokio::time::timeout(Duration::from_millis(500), stop.changed()).await;
                    continue;
                }
                Ok(records) => records,
                Err(e) => {
                    tracing::error!(sink = %self.name, error = %e, "cannot read the audit log to forward it");
                    let _ = tokio::time::timeout(backoff, stop.changed()).await;
                    continue;
                }
            };
            let last = records
                .last()
                .and_then(|r| r.get("seq"))
                .and_then(Value::as_u64)
                .unwrap_or(next);
            let sent = match &self.target {
                Target::Syslog { .. } => self.send_syslog(&mut syslog, &records, &host).await,
                Target::Webhook { url, client, token } => {
                    send_webhook(client, url, token.as_deref(), &origin, &records).await
                }
            };
            match sent {
                Ok(()) => {
                    if let Err(e) = save_cursor(&self.cursor, last + 1) {
                        tracing::error!(sink = %self.name, error = %e, "cannot save the SIEM cursor; records may be sent twice");
                    }
                    backoff = Duration::from_secs(1);
                    if let Some((reason, since)) = down_since.take() {
                        tracing::info!(sink = %self.name, "SIEM reachable again; the backlog is being delivered");
                        let event = Event::new("siem.up", Outcome::Success)
                            .resource(json!({ "siem": self.name }))
                            .with("was_down_from_seq", since)
                            .with("last_error", reason);
                        auditor.record_later(event);
                    }
                }
                Err(reason) => {
                    syslog = None;
                    if down_since.is_none() {
                        tracing::error!(sink = %self.name, error = %reason, "SIEM unreachable; records wait in the audit log and are retried");
                        let event = Event::new("siem.down", Outcome::Failure)
                            .resource(json!({ "siem": self.name }))
                            .with("from_seq", next)
                            .with("error", crate::masking::for_record(&reason));
                        auditor.record_later(event);
                        down_since = Some((crate::masking::for_record(&reason), next));
                    }
                    let _ = tokio::time::timeout(backoff, stop.changed()).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    async fn send_syslog(
        &self,
        conn: &mut Option<Box<dyn AsyncWrite + Send + Unpin>>,
        records: &[Map<String, Value>],
        host: &str,
    ) -> Result<(), String> {
        let Target::Syslog {
            host: server,
            port,
            tls,
        } = &self.target
        else {
            return Err("not a syslog sink".into());
        };
        if conn.is_none() {
            let tcp = tokio::time::timeout(
                Duration::from_secs(10),
                TcpStream::connect((server.as_str(), *port)),
            )
            .await
            .map_err(|_| format!("connect to {server}:{port} timed out"))?
            .map_err(|e| format!("connect to {server}:{port}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            *conn = Some(match tls {
                None => Box::new(tcp),
                Some(tls) => {
                    let name = rustls::pki_types::ServerName::try_from(server.clone())
                        .map_err(|e| format!("{server}: {e}"))?;
                    let stream = tokio_rustls::TlsConnector::from(tls.clone())
                        .connect(name, tcp)
                        .await
                        .map_err(|e| format!("TLS with {server}:{port}: {e}"))?;
                    Box::new(stream)
                }
            });
        }
        let mut bytes = Vec::with_capacity(records.len() * 512);
        for record in records {
            let message = syslog_message(record, host);
            bytes.extend_from_slice(format!("{} ", message.len()).as_bytes());
            bytes.extend_from_slice(&message);
        }
        let Some(stream) = conn.as_mut() else {
            return Err("no connection".into());
        };
        tokio::time::timeout(Duration::from_secs(30), async {
            stream.write_all(&bytes).await?;
            stream.flush().await
        })
        .await
        .map_err(|_| format!("writing to {server}:{port} timed out"))?
        .map_err(|e| format!("writing to {server}:{port}: {e}"))
    }
}

/// One record as an RFC 5424 message: facility 13 (log audit), severity
/// informational for successes and warning otherwise; MSGID the event; the
/// canonical JSON record as MSG (UTF-8, with the BOM RFC 5424 asks for).
pub fn syslog_message(record: &Map<String, Value>, host: &str) -> Vec<u8> {
    let severity = match record.get("outcome").and_then(Value::as_str) {
        Some("success") => 6,
        _ => 4,
    };
    let pri = 13 * 8 + severity;
    let time = record.get("time").and_then(Value::as_str).unwrap_or("-");
    let msgid: String = record
        .get("event")
        .and_then(Value::as_str)
        .unwrap_or("-")
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect();
    let mut out = format!(
        "<{pri}>1 {time} {host} tollgate {} {msgid} - \u{feff}",
        std::process::id()
    )
    .into_bytes();
    out.extend_from_slice(&canonical(&Value::Object(record.clone())));
    out
}

async fn send_webhook(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    origin: &str,
    records: &[Map<String, Value>],
) -> Result<(), String> {
    let body = json!({ "log": origin, "records": records });
    let mut request = client.post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    // Name the server only: a webhook URL may carry a secret in its path
    // or query, and these messages reach logs and audit records.
    let server = url::Url::parse(url)
        .ok()
        .and_then(|u| {
            Some(format!(
                "{}://{}:{}",
                u.scheme(),
                u.host_str()?,
                u.port_or_known_default()?
            ))
        })
        .unwrap_or_else(|| "the webhook".into());
    let response = request
        .send()
        .await
        .map_err(|e| format!("POST to {server}: {}", without_url(&e)))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("POST to {server}: HTTP {status}"))
    }
}

/// reqwest's error text without the URL (it may carry a query-string secret).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "<url>");
    }
    text
}

fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_graphic()) {
        "-".into()
    } else {
        name.chars().take(255).collect()
    }
}

/// The lowest cursor of the configured sinks: retention keeps every record
/// from there on (`u64::MAX` without sinks).
pub fn undelivered_from(dir: &Path, sinks: &[SiemConfig]) -> u64 {
    sinks
        .iter()
        .map(|s| cursor(dir, &s.name))
        .min()
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_becomes_an_rfc_5424_message() {
        let record: Map<String, Value> = serde_json::from_str(
            r#"{"event":"login","outcome":"failure","seq":7,"time":"2026-11-25T10:00:00.123Z"}"#,
        )
        .unwrap();
        let message = syslog_message(&record, "gw1");
        let text = String::from_utf8(message).unwrap();
        let pid = std::process::id();
        assert_eq!(
            text,
            format!(
                "<108>1 2026-11-25T10:00:00.123Z gw1 tollgate {pid} login - \u{feff}{{\"event\":\"login\",\"outcome\":\"failure\",\"seq\":7,\"time\":\"2026-11-25T10:00:00.123Z\"}}"
            )
        );
    }
}
