//! Offline verification of an audit log (a gateway's audit directory or an
//! evidence bundle's `audit/` directory) with nothing but the verifier key.
//!
//! Each check gives one line; the log passes only if every check does:
//!
//! 1. every record is one line of canonical JSON (keys sorted, compact);
//! 2. sequence numbers run 0, 1, 2 ... without a gap;
//! 3. record times never go backwards;
//! 4. every checkpoint is signed by the key and names the key's log;
//! 5. every checkpoint's root is the root recomputed from the records;
//! 6. consecutive checkpoints are consistent (RFC 9162 consistency proofs);
//! 7. the last checkpoint covers every record (nothing unsigned at the end);
//! 8. no record holds a PAN or track data;
//! 9. records pruned by retention (their leaf hashes kept in
//!    `pruned-leaves.bin`) were announced by a `retention.prune` record.

use std::fmt;
use std::path::Path;

use serde_json::Value;

use super::log::{checkpoints_path, pruned_leaves, pruned_path, records_path};
use super::note::{Checkpoint, Verifier};
use super::tree::{Hash, Tree, consistency_proof, leaf_hash, verify_consistency};

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Short name.
    pub name: &'static str,
    /// Passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
}

/// Every check's outcome.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// In the order run.
    pub checks: Vec<Check>,
    /// Records read.
    pub records: u64,
    /// Size and root of the last good checkpoint.
    pub signed: Option<(u64, Hash)>,
}

impl Report {
    /// Every check passed.
    pub fn ok(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    fn check(&mut self, name: &'static str, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            name,
            ok,
            detail: detail.into(),
        });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for check in &self.checks {
            writeln!(
                f,
                "{}  {:<12} {}",
                if check.ok { "ok  " } else { "FAIL" },
                check.name,
                check.detail
            )?;
        }
        write!(
            f,
            "{}",
            if self.ok() {
                "verified: the log is intact and signed"
            } else {
                "NOT VERIFIED: see the failed checks above"
            }
        )
    }
}

/// Shorten a list of record numbers for a report line.
fn some(list: &[u64]) -> String {
    let shown: Vec<String> = list.iter().take(5).map(u64::to_string).collect();
    if list.len() > 5 {
        format!("{} and {} more", shown.join(", "), list.len() - 5)
    } else {
        shown.join(", ")
    }
}

/// Verify the log in `dir` (holding `audit.jsonl` and `checkpoints.jsonl`)
/// against the verifier key `key`.
pub fn verify_dir(dir: &Path, key: &str) -> Report {
    let mut report = Report::default();
    let verifier = match Verifier::parse(key.trim()) {
        Ok(v) => v,
        Err(e) => {
            report.check("key", false, format!("the verifier key is not valid: {e}"));
            return report;
        }
    };
    // The journal first: what it holds then, a running gateway has
    // written to the records file already.
    let journal = super::wal::read(dir);
    let records = match std::fs::read(records_path(dir)) {
        Ok(bytes) => bytes,
        Err(e) => {
            report.check(
                "records",
                false,
                format!("cannot read {}: {e}", records_path(dir).display()),
            );
            return report;
        }
    };
    let checkpoints = std::fs::read_to_string(checkpoints_path(dir)).unwrap_or_default();
    let pruned = match pruned_leaves(dir) {
        Ok(pruned) => pruned,
        Err(e) => {
            report.check(
                "retention",
                false,
                format!("cannot read the pruned leaf hashes: {e}"),
            );
            return report;
        }
    };
    let first = pruned.len() as u64;
    let mut announced: Option<u64> = None;

    // 1-3, 8: one pass over the records.
    let mut leaves: Vec<Hash> = pruned;
    let mut malformed = Vec::new();
    let mut out_of_sequence = Vec::new();
    let mut backwards = Vec::new();
    let mut card_data = Vec::new();
    let mut last_time = String::new();
    let lines: Vec<&[u8]> = records
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(i, l)| !(l.is_empty() && *i > 0))
        .map(|(_, l)| l)
        .collect();
    let torn = !records.is_empty() && records.last() != Some(&b'\n');
    let mut index = first;
    for line in &lines {
        if line.is_empty() {
            continue;
        }
        let hash = leaf_hash(line);
        let value: Option<Value> = serde_json::from_slice(line).ok();
        // A prune interrupted after keeping the hashes leaves its records in
        // front; the gateway removes them at its next start.
        if index == first
            && let Some(seq) = value.as_ref().and_then(|v| v["seq"].as_u64())
            && seq < first
            && leaves[seq as usize] == hash
        {
            continue;
        }
        leaves.push(hash);
        let canonical = value
            .as_ref()
            .is_some_and(|v| super::log::canonical(v) == *line);
        if !canonical || !value.as_ref().is_some_and(Value::is_object) {
            malformed.push(index);
        }
        let seq = value
            .as_ref()
            .and_then(|v| v.get("seq"))
            .and_then(Value::as_u64);
        if seq != Some(index) {
            out_of_sequence.push(index);
        }
        if let Some(record) = &value
            && record["event"] == "retention.prune"
            && let Some(through) = record["through_seq"].as_u64()
        {
            announced = announced.max(Some(through));
        }
        if let Some(time) = value
            .as_ref()
            .and_then(|v| v.get("time"))
            .and_then(Value::as_str)
        {
            // RFC 3339 UTC with fixed width compares as text.
            if time < last_time.as_str() {
                backwards.push(index);
            }
            last_time = time.to_string();
        } else {
            backwards.push(index);
        }
        let mut scratch = line.to_vec();
        let hits = crate::masking::detect::mask_text(
            &mut scratch,
            crate::masking::Keep::LastFour,
            crate::masking::Fill::Star,
        );
        if !hits.is_empty() {
            card_data.push(index);
        }
        index += 1;
    }
    report.records = leaves.len() as u64 - first;
    report.check(
        "records",
        malformed.is_empty() && !torn,
        if malformed.is_empty() && !torn {
            format!(
                "{} records, each one line of canonical JSON",
                report.records
            )
        } else if torn {
            "the last line is incomplete (the file was cut or edited)".to_string()
        } else {
            format!(
                "{} record(s) are not canonical JSON objects (edited?): line(s) {}",
                malformed.len(),
                some(&malformed.iter().map(|i| i + 1).collect::<Vec<_>>())
            )
        },
    );
    let complete = index - u64::from(torn);
    match journal.and_then(|bytes| super::wal::pending_in(dir, &bytes, complete)) {
        Ok(pending) if pending.is_empty() => {}
        Ok(pending) => report.check(
            "journal",
            false,
            format!(
                "{} acknowledged record(s) from {complete} on are only in audit.wal (the machine stopped \
                 before they reached audit.jsonl): start the gateway once to restore them, then verify again",
                pending.len()
            ),
        ),
        Err(e) => report.check("journal", false, e.to_string()),
    }
    report.check(
        "sequence",
        out_of_sequence.is_empty(),
        if out_of_sequence.is_empty() {
            format!(
                "seq runs {first} to {} without a gap",
                leaves.len().saturating_sub(1)
            )
        } else {
            format!(
                "records out of sequence (deleted, inserted or reordered): position(s) {}",
                some(&out_of_sequence)
            )
        },
    );
    report.check(
        "time",
        backwards.is_empty(),
        if backwards.is_empty() {
            "record times never go backwards".to_string()
        } else {
            format!(
                "time missing or going backwards at record(s) {}",
                some(&backwards)
            )
        },
    );

    // 4-7: the checkpoints.
    let mut signed: Vec<Checkpoint> = Vec::new();
    let mut bad_signatures = Vec::new();
    for (n, line) in checkpoints.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let note = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v.get("note").and_then(Value::as_str).map(str::to_string));
        let opened = note.as_deref().map(|n| verifier.open(n));
        match opened {
            Some(Ok(text)) => match Checkpoint::parse(text) {
                Ok(c) if c.origin == verifier.name() => signed.push(c),
                Ok(c) => bad_signatures.push(format!(
                    "checkpoint {} names log \"{}\", the key is for \"{}\"",
                    n + 1,
                    c.origin,
                    verifier.name()
                )),
                Err(e) => bad_signatures.push(format!("checkpoint {}: {e}", n + 1)),
            },
            Some(Err(e)) => bad_signatures.push(format!("checkpoint {}: {e}", n + 1)),
            None => bad_signatures.push(format!(
                "checkpoint {}: not a {{\"note\": ...}} line",
                n + 1
            )),
        }
    }
    report.check(
        "signatures",
        bad_signatures.is_empty() && !signed.is_empty(),
        if !bad_signatures.is_empty() {
            bad_signatures.join("; ")
        } else if signed.is_empty() {
            "no signed checkpoint: nothing vouches for the records".to_string()
        } else {
            format!(
                "{} checkpoint(s) signed by {} ({})",
                signed.len(),
                verifier.name(),
                key.trim()
            )
        },
    );

    let mut tree = Tree::new();
    let mut roots: Vec<(u64, Hash)> = Vec::new();
    let mut mismatched = Vec::new();
    let mut sizes: Vec<u64> = signed.iter().map(|c| c.size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut next = sizes.iter().peekable();
    let mut at_size = std::collections::HashMap::new();
    if next.peek() == Some(&&0) {
        at_size.insert(0, tree.root());
        next.next();
    }
    for leaf in &leaves {
        tree.push(*leaf);
        if next.peek() == Some(&&tree.size()) {
            at_size.insert(tree.size(), tree.root());
            next.next();
        }
    }
    for c in &signed {
        match at_size.get(&c.size) {
            Some(root) if *root == c.root => roots.push((c.size, c.root)),
            Some(_) => mismatched.push(format!("size {}: root differs from the records", c.size)),
            None => mismatched.push(format!(
                "size {}: the log has only {} records",
                c.size,
                leaves.len()
            )),
        }
    }
    report.check(
        "tree",
        mismatched.is_empty() && !roots.is_empty(),
        if mismatched.is_empty() && !roots.is_empty() {
            format!(
                "every checkpoint's root matches the Merkle tree of the records ({} checked)",
                roots.len()
            )
        } else if mismatched.is_empty() {
            "no checkpoint to compare the records with".to_string()
        } else {
            format!(
                "records changed after they were signed: {}",
                mismatched.join("; ")
            )
        },
    );

    let mut inconsistent = Vec::new();
    let mut order = roots.clone();
    order.sort_by_key(|(size, _)| *size);
    for pair in order.windows(2) {
        let ((m, first), (n, second)) = (pair[0], pair[1]);
        let proof = consistency_proof(m as usize, &leaves[..n as usize]);
        if !verify_consistency(m, n, &first, &second, &proof) {
            inconsistent.push(format!("{m} -> {n}"));
        }
    }
    let in_file_order = signed.windows(2).all(|w| w[0].size <= w[1].size);
    report.check(
        "consistency",
        inconsistent.is_empty() && in_file_order,
        if !inconsistent.is_empty() {
            format!("checkpoints not consistent: {}", inconsistent.join(", "))
        } else if !in_file_order {
            "checkpoint sizes go backwards in the file: the log was rolled back".to_string()
        } else {
            format!(
                "{} consecutive checkpoint pair(s) proven consistent (append-only)",
                order.len().saturating_sub(1)
            )
        },
    );

    let covered = signed.iter().map(|c| c.size).max().unwrap_or(0);
    report.signed = order.last().copied();
    report.check(
        "coverage",
        covered == leaves.len() as u64 && covered > 0,
        if covered == leaves.len() as u64 && covered > 0 {
            format!("the last checkpoint covers all {covered} records")
        } else {
            format!(
                "records {covered} to {} are not covered by any checkpoint",
                leaves.len().saturating_sub(1)
            )
        },
    );

    report.check(
        "card data",
        card_data.is_empty(),
        if card_data.is_empty() {
            "no record holds a PAN or track data".to_string()
        } else {
            format!(
                "record(s) holding what looks like a PAN or track data: {}",
                some(&card_data)
            )
        },
    );

    if first > 0 {
        let ok = announced.is_some_and(|through| through + 1 >= first);
        report.check(
            "retention",
            ok,
            if ok {
                format!(
                    "records 0 to {} were pruned by retention, as a retention.prune record announced; their leaf hashes ({}) still prove every checkpoint",
                    first - 1,
                    pruned_path(dir).file_name().unwrap_or_default().to_string_lossy()
                )
            } else {
                format!(
                    "records 0 to {} are missing and no retention.prune record announces their removal",
                    first - 1
                )
            },
        );
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::log::{AuditLog, CheckpointEvery};
    use serde_json::Map;

    async fn log_with(records: usize) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let every = CheckpointEvery {
            records: 4,
            interval: std::time::Duration::from_secs(60),
        };
        let log = AuditLog::open(dir.path(), "test.example/audit", every).unwrap();
        for i in 0..records {
            let mut m = Map::new();
            m.insert("event".into(), Value::from(format!("e{i}")));
            log.append(m).await.unwrap();
        }
        log.checkpoint().await.unwrap();
        (dir, log.verifier_key().to_string())
    }

    fn edit(dir: &Path, f: impl FnOnce(&mut Vec<String>)) {
        let path = records_path(dir);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        f(&mut lines);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    }

    fn failed(report: &Report) -> Vec<&'static str> {
        report
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name)
            .collect()
    }

    #[tokio::test]
    async fn an_intact_log_verifies() {
        let (dir, key) = log_with(10).await;
        let report = verify_dir(dir.path(), &key);
        assert!(report.ok(), "{report}");
        assert_eq!(report.records, 10);
    }

    #[tokio::test]
    async fn a_one_byte_edit_is_caught() {
        let (dir, key) = log_with(10).await;
        edit(dir.path(), |lines| lines[3] = lines[3].replace("e3", "e4"));
        let report = verify_dir(dir.path(), &key);
        assert_eq!(failed(&report), ["tree"], "{report}");
    }

    #[tokio::test]
    async fn a_deleted_record_is_caught() {
        let (dir, key) = log_with(10).await;
        edit(dir.path(), |lines| {
            lines.remove(5);
        });
        let report = verify_dir(dir.path(), &key);
        assert!(failed(&report).contains(&"sequence"), "{report}");
        assert!(failed(&report).contains(&"tree"), "{report}");
    }

    #[tokio::test]
    async fn a_reordered_pair_is_caught() {
        let (dir, key) = log_with(10).await;
        edit(dir.path(), |lines| lines.swap(6, 7));
        let report = verify_dir(dir.path(), &key);
        assert!(failed(&report).contains(&"sequence"), "{report}");
        assert!(failed(&report).contains(&"tree"), "{report}");
    }

    #[tokio::test]
    async fn another_key_is_refused() {
        let (dir, _) = log_with(3).await;
        let (_, other) = log_with(1).await;
        let report = verify_dir(dir.path(), &other);
        assert!(failed(&report).contains(&"signatures"), "{report}");
    }

    #[tokio::test]
    async fn unsigned_records_at_the_end_and_card_numbers_fail() {
        let (dir, key) = log_with(4).await;
        edit(dir.path(), |lines| {
            lines.push(
                r#"{"event":"x","note":"card 4111111111111111","seq":4,"time":"2999-01-01T00:00:00.000Z"}"#
                    .into(),
            )
        });
        let report = verify_dir(dir.path(), &key);
        assert_eq!(failed(&report), ["coverage", "card data"], "{report}");
    }

    async fn open(dir: &Path) -> AuditLog {
        let every = CheckpointEvery {
            records: 4,
            interval: std::time::Duration::from_secs(60),
        };
        AuditLog::open(dir, "test.example/audit", every).unwrap()
    }

    #[tokio::test]
    async fn a_pruned_log_still_verifies_and_grows_after_a_restart() {
        let (dir, key) = log_with(10).await;
        let log = open(dir.path()).await;
        // Everything is older than a cutoff in the future, all of it signed.
        let pruned = log.prune("2999-01-01T00:00:00Z", u64::MAX).await.unwrap();
        assert_eq!(pruned.records, 10);
        assert_eq!(pruned.first_kept, 10);
        let report = verify_dir(dir.path(), &key);
        assert!(report.ok(), "{report}");
        assert_eq!(report.records, 1, "only the announcement is left");
        assert!(
            report.to_string().contains("records 0 to 9 were pruned"),
            "{report}"
        );
        // Nothing more to prune but the announcement (older than the cutoff).
        let again = log.prune("2999-01-01T00:00:00Z", u64::MAX).await.unwrap();
        assert_eq!((again.records, again.first_kept), (1, 11));
        drop(log);
        let log = open(dir.path()).await;
        let mut m = Map::new();
        m.insert("event".into(), Value::from("after"));
        assert_eq!(log.append(m).await.unwrap(), 12);
        log.checkpoint().await.unwrap();
        let report = verify_dir(dir.path(), &key);
        assert!(report.ok(), "{report}");
        assert_eq!(report.records, 2);
    }

    #[tokio::test]
    async fn a_prune_interrupted_before_removing_records_is_finished_on_open() {
        let (dir, key) = log_with(6).await;
        let before = std::fs::read(records_path(dir.path())).unwrap();
        let log = open(dir.path()).await;
        log.prune("2999-01-01T00:00:00Z", u64::MAX).await.unwrap();
        drop(log);
        // As if the process died after keeping the hashes, before removing:
        // the old records are still in front of the announcement.
        let after = std::fs::read(records_path(dir.path())).unwrap();
        std::fs::write(records_path(dir.path()), [before, after.clone()].concat()).unwrap();
        let report = verify_dir(dir.path(), &key);
        assert!(report.ok(), "the interrupted state verifies too:\n{report}");
        let log = open(dir.path()).await;
        log.checkpoint().await.unwrap();
        assert_eq!(std::fs::read(records_path(dir.path())).unwrap(), after);
        let report = verify_dir(dir.path(), &key);
        assert!(report.ok(), "{report}");
    }

    #[tokio::test]
    async fn records_removed_without_an_announced_prune_are_caught() {
        let (dir, key) = log_with(8).await;
        // Someone removes the first three records and keeps their hashes
        // to make it look like retention.
        let text = std::fs::read(records_path(dir.path())).unwrap();
        let lines: Vec<&[u8]> = text
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        let hashes: Vec<u8> = lines[..3].iter().flat_map(|l| leaf_hash(l)).collect();
        std::fs::write(pruned_path(dir.path()), hashes).unwrap();
        edit(dir.path(), |lines| {
            lines.drain(..3);
        });
        let report = verify_dir(dir.path(), &key);
        assert_eq!(failed(&report), ["retention"], "{report}");
    }
}
