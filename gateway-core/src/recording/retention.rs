//! Retention (PCI DSS 10.5.1): audit records and session recordings older
//! than the configured number of days are removed, and the removal is
//! itself on record. The audit log keeps the leaf hashes of what it drops,
//! so every signed checkpoint still verifies against what remains.

use std::time::{Duration, SystemTime};

use serde_json::json;

use super::Recording;
use crate::audit::event::{Event, Outcome};
use crate::audit::log::AuditError;

/// What one sweep removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swept {
    /// The cutoff: everything older went (RFC 3339).
    pub before: String,
    /// Audit records removed.
    pub audit_records: u64,
    /// Sessions (with their frames) removed.
    pub sessions: u64,
}

/// How often the gateway sweeps.
pub const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Remove what is older than `days` at `now`, except audit records from
/// `keep_from` on (not yet delivered to a SIEM). The audit log announces
/// its own prune; the recordings' prune is recorded after it, as a success
/// or a failure.
pub async fn sweep(
    recording: &Recording,
    days: u32,
    now: SystemTime,
    keep_from: u64,
) -> Result<Swept, AuditError> {
    let cutoff = now
        .checked_sub(Duration::from_secs(u64::from(days) * 86_400))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let before = crate::clock::rfc3339(cutoff);
    let pruned = recording.auditor.log().prune(&before, keep_from).await?;
    let before_ms = crate::clock::unix_ms(cutoff);
    let store = recording.store.prune(before_ms).await;
    let event = Event::new(
        "recordings.prune",
        if store.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        },
    )
    .resource(json!({ "recordings": recording.store.target() }))
    .with("before", before.clone())
    .with("retention_days", days);
    let event = match &store {
        Ok(sessions) => event.with("sessions", *sessions),
        Err(e) => event.with("error", crate::masking::for_record(&e.to_string())),
    };
    // An empty sweep of the recordings is not worth a record every hour.
    if !matches!(store, Ok(0)) {
        recording.auditor.record(event).await?;
    }
    if pruned.records > 0 {
        tracing::info!(target: "tollgate::audit", event = "retention.prune", records = pruned.records, %before);
    }
    Ok(Swept {
        before,
        audit_records: pruned.records,
        sessions: store.unwrap_or(0),
    })
}
