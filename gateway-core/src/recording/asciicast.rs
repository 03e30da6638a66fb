//! A recorded session as an asciicast v2 file, so `asciinema play` shows
//! it as a transcript: the statements as typed at a `psql` prompt, masked
//! previews of their results, errors and refusals, at the recorded pace.
//!
//! Format: a header line (JSON object, `version` 2) then one event per
//! line, `[seconds, "o", text]`; line ends are `\r\n` as a terminal wants.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::store::{Frame, SessionRow};

/// Terminal width the transcript is laid out for.
const WIDTH: usize = 120;

/// Render `frames` of `session` (all of them, in order) as asciicast v2.
pub fn render(session: &SessionRow, frames: &[Frame]) -> String {
    let started = crate::clock::parse_rfc3339(&session.started_at).unwrap_or(0);
    let header = json!({
        "version": 2,
        "width": WIDTH,
        "height": 40,
        "timestamp": started,
        "title": format!("tollgate session {} ({} on {})", session.id, session.subject, session.connection),
        "env": { "TERM": "xterm-256color", "SHELL": "/bin/sh" },
    });
    let mut out = header.to_string();
    out.push('\n');
    let prompt = format!("{}=> ", session.connection);
    for frame in frames {
        let text = text_of(frame, &prompt);
        if text.is_empty() {
            continue;
        }
        let event = json!([frame.at_us as f64 / 1e6, "o", text.replace('\n', "\r\n")]);
        out.push_str(&event.to_string());
        out.push('\n');
    }
    out
}

fn str_of<'a>(body: &'a Value, key: &str) -> &'a str {
    body.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn text_of(frame: &Frame, prompt: &str) -> String {
    let body = &frame.body;
    let mut out = String::new();
    match frame.kind.as_str() {
        "connect" => {
            let identity = &body["identity"];
            let _ = writeln!(
                out,
                "-- {} ({}, groups {}, MFA {}) from {} to \"{}\", TLS {}",
                str_of(identity, "subject"),
                str_of(identity, "kind"),
                identity["groups"],
                if identity["mfa"] == Value::Bool(true) {
                    "yes"
                } else {
                    "no"
                },
                str_of(body, "client"),
                str_of(body, "connection"),
                if body["tls"] == Value::Bool(true) {
                    "on"
                } else {
                    "off"
                },
            );
        }
        "statement" => {
            let _ = writeln!(out, "{prompt}{}", str_of(body, "text"));
            if str_of(body, "decision") == "refused" {
                let _ = writeln!(
                    out,
                    "ERROR:  {}  (refused by the gateway, {})",
                    str_of(body, "message"),
                    str_of(body, "sqlstate")
                );
            }
        }
        "result" => table(&mut out, body),
        "error" => {
            let _ = writeln!(
                out,
                "ERROR:  {} ({})",
                str_of(body, "message"),
                str_of(body, "sqlstate")
            );
        }
        "cancel" => out.push_str("-- cancel requested\n"),
        "masking" => {
            for item in body["masked"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "-- masked {} value(s) in {} ({})",
                    item["count"],
                    str_of(item, "place"),
                    str_of(item, "detector")
                );
            }
        }
        "disconnect" => {
            let reason = body["reason"].as_str().unwrap_or("client terminated");
            let _ = writeln!(out, "-- disconnected: {reason}");
        }
        _ => {}
    }
    out
}

/// A psql-style table of the preview, then the row count and digest.
fn table(out: &mut String, body: &Value) {
    let columns: Vec<String> = body["columns"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c.as_str().unwrap_or_default().to_string())
        .collect();
    let rows = body["rows"].as_u64().unwrap_or(0);
    let preview: Vec<Vec<String>> = body["preview"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|row| {
            row.as_array()
                .into_iter()
                .flatten()
                .map(|v| match v {
                    Value::Null => String::new(),
                    Value::String(s) => s.replace(['\n', '\r'], " "),
                    other => other.to_string(),
                })
                .collect()
        })
        .collect();
    if !columns.is_empty() {
        let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
        for row in &preview {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count()).min(40);
            }
        }
        let line = |cells: &[String]| {
            cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| {
                    let c: String = c.chars().take(*w).collect();
                    format!(" {c:<w$} ")
                })
                .collect::<Vec<_>>()
                .join("|")
        };
        let _ = writeln!(out, "{}", line(&columns));
        let _ = writeln!(
            out,
            "{}",
            widths
                .iter()
                .map(|w| "-".repeat(w + 2))
                .collect::<Vec<_>>()
                .join("+")
        );
        for row in &preview {
            let _ = writeln!(out, "{}", line(row));
        }
        if rows > preview.len() as u64 {
            let _ = writeln!(
                out,
                " ... {} more row(s) not kept",
                rows - preview.len() as u64
            );
        }
    } else if body["copy"] == Value::Bool(true) {
        for row in &preview {
            let _ = writeln!(out, "{}", row.join(""));
        }
    }
    let tag = body["tag"].as_str().unwrap_or("(suspended)");
    let _ = writeln!(
        out,
        "{tag}   -- {rows} row(s), {} bytes, {} ms, digest {}",
        body["bytes"],
        body["duration_us"].as_u64().unwrap_or(0) / 1000,
        &str_of(body, "hmac_sha256").get(..16).unwrap_or_default()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_is_valid_asciicast_v2() {
        let session = SessionRow {
            id: "ab".into(),
            started_at: "2026-11-25T10:00:00Z".into(),
            ended_at: None,
            subject: "alice".into(),
            kind: "person".into(),
            connection: "payments".into(),
            client: "127.0.0.1:5000".into(),
            protocol: "postgres".into(),
        };
        let frames = vec![
            Frame {
                seq: 0,
                at_us: 0,
                kind: "statement".into(),
                body: json!({"text": "SELECT pan FROM cards WHERE id = $1", "decision": "allowed"}),
            },
            Frame {
                seq: 1,
                at_us: 1500,
                kind: "result".into(),
                body: json!({"tag": "SELECT 1", "columns": ["pan"], "rows": 1, "bytes": 20,
                    "duration_us": 1500, "hmac_sha256": "00ff", "preview": [["************1111"]]}),
            },
        ];
        let cast = render(&session, &frames);
        let mut lines = cast.lines();
        let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(header["version"], 2);
        assert_eq!(header["timestamp"], 1_795_600_800);
        let events: Vec<Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1][0], 0.0015);
        let text = events[1][2].as_str().unwrap();
        assert!(text.contains("************1111"), "{text}");
        assert!(text.contains("\r\n"), "terminal line ends");
    }
}
