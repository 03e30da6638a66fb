//! `tollgate evidence`: one directory with what a QSA asks for, an index
//! that maps each file to the PCI DSS requirements it answers, and the
//! verification report of the audit log it carries.
//!
//! The export is itself an audit event, appended before anything is read:
//! directly when no gateway holds the log, else through the log's inbox
//! (the running gateway appends it and signs a checkpoint that covers it).
//! The bundle carries the log up to its last signed checkpoint, so it
//! verifies offline with the verifier key alone.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::audit::event::{Event, Outcome};
use crate::audit::log::{
    AuditError, AuditLog, CheckpointEvery, checkpoints_path, leave_in_inbox, pruned_path,
    records_path,
};
use crate::audit::note::Verifier;
use crate::audit::tree::{inclusion_proof, leaf_hash, verify_inclusion};
use crate::audit::verify::verify_dir;
use crate::config::Config;
use crate::recording::asciicast;
use crate::recording::store::{Frame, Store};

/// What to export.
#[derive(Debug, Clone)]
pub struct EvidenceRequest {
    /// The gateway's configuration (data directory, policies, store).
    pub config: Config,
    /// The configuration file, copied into the bundle.
    pub config_file: Option<PathBuf>,
    /// Only events and sessions from this time on (Unix seconds).
    pub from: Option<i64>,
    /// Only events and sessions before this time (Unix seconds).
    pub to: Option<i64>,
    /// The bundle directory (created; must be empty if it exists).
    pub out: PathBuf,
    /// Who runs the export (recorded as the actor).
    pub by: Exporter,
}

/// Who exports, and how the export goes on record.
#[derive(Debug, Clone)]
pub enum Exporter {
    /// An operator at the gateway's host (`tollgate evidence`): the event is
    /// appended directly, or through the log's inbox when a gateway holds it.
    Operator(String),
    /// A signed-in auditor, through the running gateway's API.
    Api {
        /// The running gateway's audit log.
        auditor: crate::audit::event::Auditor,
        /// The caller's identity, as records carry it.
        actor: Value,
        /// Where the call came from.
        origin: String,
        /// The export's id (in its records, and the download's).
        id: String,
        /// The caller may read result rows (an analyst too): else the
        /// bundle's recordings carry none, as the API would show them.
        previews: bool,
    },
}

impl Exporter {
    /// The name shown in the bundle's index.
    fn name(&self) -> String {
        match self {
            Exporter::Operator(name) => name.clone(),
            Exporter::Api { actor, .. } => actor["subject"]
                .as_str()
                .unwrap_or("an API caller")
                .to_string(),
        }
    }

    /// Whether the bundle's recordings keep their result previews.
    fn previews(&self) -> bool {
        match self {
            Exporter::Operator(_) => true,
            Exporter::Api { previews, .. } => *previews,
        }
    }

    fn origin(&self) -> String {
        match self {
            Exporter::Operator(_) => format!("cli@{}", hostname()),
            Exporter::Api { origin, .. } => format!("api@{origin}"),
        }
    }
}

/// What was exported.
#[derive(Debug, Clone)]
pub struct EvidenceSummary {
    /// Records in the bundle's log.
    pub records: u64,
    /// Records in the time window.
    pub in_window: u64,
    /// Sessions exported.
    pub sessions: usize,
    /// Identities with an access log.
    pub identities: usize,
    /// The verification report passed.
    pub verified: bool,
    /// The report's text.
    pub report: String,
}

/// Stages of an export (each announced through [`Progress::stage`]).
pub const STAGES: u32 = 7;

/// Progress of a long export, for a progress bar.
pub trait Progress {
    /// Starting a stage of `total` steps.
    fn stage(&mut self, name: &str, total: u64);
    /// One more step done.
    fn step(&mut self);
}

/// No progress shown.
#[derive(Debug, Default)]
pub struct Quiet;

impl Progress for Quiet {
    fn stage(&mut self, _: &str, _: u64) {}
    fn step(&mut self) {}
}

/// Why the export failed.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// Writing the bundle or reading the gateway's files failed.
    #[error("{0}")]
    Io(String),
    /// The export could not be audited.
    #[error("the export could not be recorded in the audit log, so nothing was exported: {0}")]
    Audit(#[from] AuditError),
    /// The recordings could not be read.
    #[error(transparent)]
    Store(#[from] crate::recording::store::StoreError),
}

fn io(what: impl std::fmt::Display, e: impl std::fmt::Display) -> EvidenceError {
    EvidenceError::Io(format!("{what}: {e}"))
}

/// The PCI DSS requirements each part of the bundle answers.
const INDEX: &[(&str, &str, &[&str])] = &[
    (
        "INDEX.md",
        "this index: every file and the requirements it answers",
        &[],
    ),
    (
        "verification.txt",
        "offline verification of the audit log: tree, signatures, consistency, sequence, time order, card data",
        &["10.3.2", "10.3.4"],
    ),
    (
        "audit/audit.jsonl",
        "the audit log up to its last signed checkpoint: one canonical JSON record per line, each a Merkle tree leaf",
        &[
            "10.2.1", "10.2.1.1", "10.2.1.2", "10.2.1.3", "10.2.1.4", "10.2.1.5", "10.2.1.6",
            "10.2.1.7", "10.2.2", "10.3.1",
        ],
    ),
    (
        "audit/checkpoints.jsonl",
        "signed checkpoints (C2SP tlog-checkpoint in a C2SP signed note, Ed25519)",
        &["10.3.2", "10.3.4"],
    ),
    (
        "audit/verifier-key.txt",
        "the verifier key of the checkpoints (compare with the one the operator gave you out of band)",
        &["10.3.2"],
    ),
    (
        "audit/inclusion-proofs.jsonl",
        "inclusion proofs of the window's records in the last checkpoint",
        &["10.3.4"],
    ),
    (
        "access/",
        "per-identity access logs (CSV and JSON Lines): logins, sessions, statements with decision and deciding policy",
        &[
            "7.2.1", "7.2.2", "7.2.5", "8.2.1", "10.2.1.1", "10.2.1.2", "10.2.1.4", "10.2.2",
        ],
    ),
    (
        "access/identities.csv",
        "every identity seen, with its groups, MFA and person/agent kind",
        &["8.2.1", "8.2.2", "8.4.2"],
    ),
    (
        "config/",
        "the access-control configuration in force: gateway configuration, Cedar policies and schema, with their SHA-256 hashes",
        &["7.2.1", "7.2.2", "7.2.5", "7.3.1", "10.2.1.2"],
    ),
    (
        "config/retention.txt",
        "how long the audit log and recordings are kept, and what is at hand",
        &["10.5.1"],
    ),
    (
        "approvals/approvals.jsonl",
        "approval records of requests held for a person's sign-off",
        &["7.2.2", "10.2.1.2"],
    ),
    (
        "masking/masking-records.jsonl",
        "how many values were masked, per column or place and detector, per session",
        &["3.3.1", "3.4.1", "3.5.1"],
    ),
    (
        "sessions/",
        "each session's recording: frames (JSON Lines) and a transcript for `asciinema play` (asciicast v2)",
        &["10.2.1", "10.2.1.1", "10.2.2"],
    ),
    (
        "sessions/index.csv",
        "the sessions of the window: who, when, from where, to which connection",
        &["10.2.1.1", "10.2.2"],
    ),
];

/// Run the export.
pub async fn export(
    request: &EvidenceRequest,
    progress: &mut (dyn Progress + Send),
) -> Result<EvidenceSummary, EvidenceError> {
    let config = &request.config;
    let data_dir = &config.server.data_dir;
    let audit_dir = data_dir.join("audit");
    let out = &request.out;
    if out.exists()
        && std::fs::read_dir(out)
            .map_err(|e| io(out.display(), e))?
            .next()
            .is_some()
    {
        return Err(EvidenceError::Io(format!(
            "{} exists and is not empty: give a new directory for the bundle",
            out.display()
        )));
    }
    if !records_path(&audit_dir).exists() {
        return Err(EvidenceError::Io(format!(
            "no audit log in {}: is this the gateway's configuration (server.data_dir)?",
            audit_dir.display()
        )));
    }
    for dir in [
        "audit",
        "access",
        "config",
        "approvals",
        "masking",
        "sessions",
    ] {
        std::fs::create_dir_all(out.join(dir)).map_err(|e| io(out.join(dir).display(), e))?;
    }

    // 1. The export is an audit event before anything is read.
    progress.stage("recording the export in the audit log", 1);
    let window = json!({
        "from": request.from.map(secs_rfc3339),
        "to": request.to.map(secs_rfc3339),
    });
    let marker = match &request.by {
        Exporter::Api { id, .. } => id.clone(),
        Exporter::Operator(_) => crate::recording::session_id(),
    };
    let actor = match &request.by {
        Exporter::Operator(name) => json!({ "subject": name, "kind": "operator" }),
        Exporter::Api { actor, .. } => actor.clone(),
    };
    let event = Event::new("evidence.export", Outcome::Success)
        .with("actor", actor)
        .origin(request.by.origin())
        .resource(json!({ "audit_log": audit_dir.display().to_string(), "window": window }))
        .with("request", marker.clone());
    let every = CheckpointEvery {
        records: config.audit.checkpoint_records,
        interval: Duration::from_secs(config.audit.checkpoint_secs),
    };
    let key = if let Exporter::Api { auditor, .. } = &request.by {
        auditor.record(event).await?;
        auditor.log().checkpoint().await?;
        auditor.log().verifier_key().to_string()
    } else {
        let event = event.into_map();
        match AuditLog::open(&audit_dir, &config.audit.origin, every) {
            Ok(log) => {
                log.append(event).await?;
                log.checkpoint().await?;
                log.verifier_key().to_string()
            }
            Err(AuditError::Busy { .. }) => {
                leave_in_inbox(&audit_dir, &event)?;
                wait_signed(&audit_dir, &marker, every.interval).await?;
                crate::audit::log::signer(&audit_dir, &config.audit.origin)?.verifier_key()
            }
            Err(e) => return Err(e.into()),
        }
    };
    progress.step();

    // 2. The log up to its last signed checkpoint.
    progress.stage("copying the audit log", 1);
    let verifier = Verifier::parse(&key).map_err(|e| io("verifier key", e))?;
    let (size, checkpoint_lines) = last_signed(&audit_dir, &verifier)?;
    // Records first, then hashes: a prune running in between only adds
    // hashes of records read here too, which the filter below drops.
    let records_text = std::fs::read(records_path(&audit_dir))
        .map_err(|e| io(records_path(&audit_dir).display(), e))?;
    let pruned = std::fs::read(pruned_path(&audit_dir)).unwrap_or_default();
    let pruned = &pruned[..pruned.len() - pruned.len() % 32];
    let first_kept = (pruned.len() / 32) as u64;
    let lines: Vec<&[u8]> = records_text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter(|l| {
            // Records a running prune hashed but had not removed yet.
            serde_json::from_slice::<Value>(l)
                .ok()
                .and_then(|v| v["seq"].as_u64())
                .is_none_or(|seq| seq >= first_kept)
        })
        .take(size.saturating_sub(first_kept) as usize)
        .collect();
    let mut bundle_records = Vec::with_capacity(records_text.len());
    for line in &lines {
        bundle_records.extend_from_slice(line);
        bundle_records.push(b'\n');
    }
    let bundle_audit = out.join("audit");
    write(&records_path(&bundle_audit), &bundle_records)?;
    if !pruned.is_empty() {
        write(&pruned_path(&bundle_audit), pruned)?;
    }
    write(
        &checkpoints_path(&bundle_audit),
        checkpoint_lines.join("\n").as_bytes(),
    )?;
    write(
        &bundle_audit.join("verifier-key.txt"),
        format!("{key}\n").as_bytes(),
    )?;
    progress.step();

    // 3. Verify what the bundle carries.
    progress.stage("verifying the audit log", 1);
    let report = verify_dir(&bundle_audit, &key);
    let report_text = format!(
        "tollgate verify {} --key {key}\n\n{report}\n",
        bundle_audit.display()
    );
    write(&out.join("verification.txt"), report_text.as_bytes())?;
    progress.step();

    // 4. The window's records, by kind and identity.
    let from_text = request.from.map(secs_rfc3339);
    let to_text = request.to.map(secs_rfc3339);
    let records: Vec<Map<String, Value>> = lines
        .iter()
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    let in_window: Vec<&Map<String, Value>> = records
        .iter()
        .filter(|r| {
            let time = r.get("time").and_then(Value::as_str).unwrap_or_default();
            from_text.as_deref().is_none_or(|f| time >= f)
                && to_text.as_deref().is_none_or(|t| time < t)
        })
        .collect();
    progress.stage("writing access logs", in_window.len() as u64);
    let mut by_identity: BTreeMap<String, Vec<&Map<String, Value>>> = BTreeMap::new();
    let mut identities: BTreeMap<String, Value> = BTreeMap::new();
    let mut approvals = Vec::new();
    let mut masking = Vec::new();
    for record in &in_window {
        let event = record
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let actor = record.get("actor").cloned().unwrap_or(Value::Null);
        let subject = actor["subject"]
            .as_str()
            .map(str::to_string)
            .or_else(|| {
                actor["claimed_user"]
                    .as_str()
                    .map(|u| format!("unauthenticated-{u}"))
            })
            .unwrap_or_else(|| "unknown".into());
        if actor["issuer"].is_string() {
            identities.entry(subject.clone()).or_insert(actor.clone());
        }
        if event.starts_with("approval") {
            approvals.push(*record);
        }
        if event == "masking" {
            masking.push(*record);
        }
        if [
            "login",
            "session.start",
            "session.end",
            "statement",
            "statement.error",
            "cancel",
        ]
        .contains(&event)
        {
            by_identity.entry(subject).or_default().push(*record);
        }
        progress.step();
    }
    for (subject, records) in &by_identity {
        let name = file_name(subject);
        write(
            &out.join("access").join(format!("{name}.jsonl")),
            &jsonl(records),
        )?;
        write(
            &out.join("access").join(format!("{name}.csv")),
            access_csv(records).as_bytes(),
        )?;
    }
    let mut identities_csv = String::from("subject,kind,issuer,groups,mfa\n");
    for (subject, actor) in &identities {
        let _ = writeln!(
            identities_csv,
            "{},{},{},{},{}",
            csv(subject),
            csv(actor["kind"].as_str().unwrap_or_default()),
            csv(actor["issuer"].as_str().unwrap_or_default()),
            csv(&actor["groups"]
                .as_array()
                .map(|g| g
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" "))
                .unwrap_or_default()),
            actor["mfa"].as_bool().unwrap_or(false),
        );
    }
    write(
        &out.join("access/identities.csv"),
        identities_csv.as_bytes(),
    )?;
    write(&out.join("approvals/approvals.jsonl"), &jsonl(&approvals))?;
    write(&out.join("masking/masking-records.jsonl"), &jsonl(&masking))?;

    // 5. Inclusion proofs of the window's records in the last checkpoint.
    let leaves: Vec<_> = pruned
        .chunks_exact(32)
        .map(|c| <[u8; 32]>::try_from(c).unwrap_or_default())
        .chain(lines.iter().map(|l| leaf_hash(l)))
        .collect();
    let root = crate::audit::tree::root_of(&leaves);
    let proven: Vec<u64> = in_window
        .iter()
        .filter_map(|r| r.get("seq").and_then(Value::as_u64))
        .filter(|s| *s < size && (*s as usize) < leaves.len())
        .take(MAX_PROOFS)
        .collect();
    progress.stage("computing inclusion proofs", proven.len() as u64);
    let mut proofs = Vec::new();
    for seq in &proven {
        let index = *seq as usize;
        let proof = inclusion_proof(index, &leaves);
        debug_assert!(verify_inclusion(*seq, size, &leaves[index], &proof, &root));
        let line = json!({
            "seq": seq,
            "leaf_hash": B64.encode(leaves[index]),
            "tree_size": size,
            "root_hash": B64.encode(root),
            "proof": proof.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
        });
        proofs.extend_from_slice(line.to_string().as_bytes());
        proofs.push(b'\n');
        progress.step();
    }
    write(&out.join("audit/inclusion-proofs.jsonl"), &proofs)?;

    // 6. The access-control configuration in force.
    progress.stage("copying the access-control configuration", 1);
    let mut hashes = String::new();
    let mut original = None;
    let mut put_config = |name: &str, bytes: &[u8]| -> Result<(), EvidenceError> {
        write(&out.join("config").join(name), bytes)?;
        let _ = writeln!(
            hashes,
            "sha256-{}  {name}",
            B64.encode(Sha256::digest(bytes))
        );
        Ok(())
    };
    if let Some(file) = &request.config_file {
        // Inline secrets and URL passwords are replaced; the hash of the
        // file as it is on the host lets the operator show it unchanged.
        let bytes = std::fs::read(file).map_err(|e| io(file.display(), e))?;
        original = Some(format!(
            "sha256-{}  gateway.toml as on the gateway's host (the copy here has its secrets redacted)\n",
            B64.encode(Sha256::digest(&bytes))
        ));
        let redacted = redact_config(&String::from_utf8_lossy(&bytes));
        put_config("gateway.toml", redacted.as_bytes())?;
    }
    put_config("tollgate.cedarschema", crate::policy::SCHEMA.as_bytes())?;
    if config.policy.starter {
        put_config(
            "starter-pci.cedar",
            crate::policy::STARTER_POLICY.as_bytes(),
        )?;
        put_config(
            "starter-mcp.cedar",
            crate::policy::MCP_STARTER_POLICY.as_bytes(),
        )?;
    }
    for (n, file) in config.policy.files.iter().enumerate() {
        let bytes = std::fs::read(file).map_err(|e| io(file.display(), e))?;
        let base = file
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("policy-{n}.cedar"));
        put_config(&format!("{n:02}-{base}"), &bytes)?;
    }
    if config.policy.allow_all {
        put_config(
            "ALLOW-ALL.txt",
            b"policy.allow_all is set: every statement was allowed (development only)\n",
        )?;
    }
    if let Some(line) = original {
        hashes.push_str(&line);
    }
    write(&out.join("config/hashes.txt"), hashes.as_bytes())?;
    write(
        &out.join("config/retention.txt"),
        format!(
            "audit.retention_days = {days}\n\n\
             Every hour the gateway removes audit records and session recordings older than {days} days \
             (PCI DSS 10.5.1: 12 months kept, the last 3 months at hand; a value below 90 is refused). \
             Everything younger stays queryable.\n\
             Each prune is announced by a retention.prune record before anything is removed, and the leaf \
             hashes of removed audit records are kept (audit/pruned-leaves.bin), so every checkpoint still \
             verifies against the records that remain.\n\n\
             Audit records pruned so far: {pruned_so_far}.\n\
             Oldest record in this bundle: {oldest}.\n",
            days = config.audit.retention_days,
            pruned_so_far = match first_kept {
                0 => "none".to_string(),
                n => format!("{n} (records 0 to {})", n - 1),
            },
            oldest = records
                .first()
                .and_then(|r| r.get("time"))
                .and_then(Value::as_str)
                .unwrap_or("none"),
        )
        .as_bytes(),
    )?;
    progress.step();

    // 7. Session recordings.
    let store = Store::open(&config.audit.recordings, data_dir).await?;
    let sessions = store
        .sessions(
            request.from.map_or(i64::MIN, |s| s.saturating_mul(1000)),
            request.to.map_or(i64::MAX, |s| s.saturating_mul(1000)),
        )
        .await?;
    progress.stage("exporting session recordings", sessions.len() as u64);
    let mut index_csv =
        String::from("session,started_at,ended_at,subject,kind,connection,client,frames\n");
    for session in &sessions {
        let mut frames = Vec::new();
        let mut after = -1i64;
        loop {
            let page = store.frames(&session.id, after, 500).await?;
            let Some(last) = page.last() else { break };
            after = last.seq as i64;
            frames.extend(page);
        }
        if !request.by.previews() {
            frames = frames.into_iter().map(Frame::without_preview).collect();
        }
        let name = file_name(&session.id);
        let mut lines = Vec::new();
        for frame in &frames {
            lines.extend_from_slice(serde_json::to_string(frame).unwrap_or_default().as_bytes());
            lines.push(b'\n');
        }
        write(&out.join("sessions").join(format!("{name}.jsonl")), &lines)?;
        write(
            &out.join("sessions").join(format!("{name}.cast")),
            asciicast::render(session, &frames).as_bytes(),
        )?;
        let _ = writeln!(
            index_csv,
            "{},{},{},{},{},{},{},{}",
            csv(&session.id),
            csv(&session.started_at),
            csv(session.ended_at.as_deref().unwrap_or("")),
            csv(&session.subject),
            csv(&session.kind),
            csv(&session.connection),
            csv(&session.client),
            frames.len()
        );
        progress.step();
    }
    write(&out.join("sessions/index.csv"), index_csv.as_bytes())?;

    // 8. The index.
    let mut index = String::from("# Tollgate evidence bundle\n\n");
    let _ = writeln!(
        index,
        "Exported {} by {} from {}. Window: {} to {}.\n\n\
         Verify offline: `tollgate verify audit --key \"$(cat audit/verifier-key.txt)\"` \
         (better: with the key the operator gave you out of band).\n\n\
         Result of the verification at export: **{}**.\n",
        secs_rfc3339(now_secs()),
        request.by.name(),
        request.by.origin(),
        from_text.as_deref().unwrap_or("the beginning"),
        to_text.as_deref().unwrap_or("now"),
        if report.ok() {
            "verified"
        } else {
            "NOT VERIFIED"
        },
    );
    index.push_str("| file | what it holds | PCI DSS v4.0 |\n|---|---|---|\n");
    let mut mapping = Vec::new();
    for (file, what, requirements) in INDEX {
        let _ = writeln!(index, "| `{file}` | {what} | {} |", requirements.join(", "));
        mapping.push(json!({ "file": file, "holds": what, "requirements": requirements }));
    }
    write(&out.join("INDEX.md"), index.as_bytes())?;
    write(
        &out.join("index.json"),
        serde_json::to_string_pretty(&json!({ "files": mapping, "verified": report.ok() }))
            .unwrap_or_default()
            .as_bytes(),
    )?;

    Ok(EvidenceSummary {
        records: size,
        in_window: in_window.len() as u64,
        sessions: sessions.len(),
        identities: by_identity.len(),
        verified: report.ok(),
        report: report.to_string(),
    })
}

/// Most inclusion proofs in one bundle (each costs a pass over the tree).
const MAX_PROOFS: usize = 2000;

/// Wait until a signed checkpoint covers the record carrying `marker`.
async fn wait_signed(dir: &Path, marker: &str, interval: Duration) -> Result<(), EvidenceError> {
    let deadline = Instant::now() + interval * 2 + Duration::from_secs(10);
    let needle = format!("\"request\":\"{marker}\"");
    loop {
        let text = std::fs::read_to_string(records_path(dir)).unwrap_or_default();
        if let Some(position) = text.lines().position(|l| l.contains(&needle)) {
            let signed = std::fs::read_to_string(checkpoints_path(dir))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter_map(|v| v["size"].as_u64())
                .max()
                .unwrap_or(0);
            if signed > position as u64 {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(EvidenceError::Io(format!(
                "the running gateway did not append the export's audit record within {} s; \
                 is it healthy? (its log: {})",
                (interval * 2 + Duration::from_secs(10)).as_secs(),
                dir.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The size of the last checkpoint that verifies, and the checkpoint lines up to it.
fn last_signed(dir: &Path, verifier: &Verifier) -> Result<(u64, Vec<String>), EvidenceError> {
    let text = std::fs::read_to_string(checkpoints_path(dir))
        .map_err(|e| io(checkpoints_path(dir).display(), e))?;
    let mut size = 0;
    let mut kept = Vec::new();
    for line in text.lines() {
        let Some(note) = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v["note"].as_str().map(str::to_string))
        else {
            continue;
        };
        let Ok(body) = verifier.open(&note) else {
            continue;
        };
        let Ok(checkpoint) = crate::audit::note::Checkpoint::parse(body) else {
            continue;
        };
        if checkpoint.size >= size {
            size = checkpoint.size;
            kept.push(line.to_string());
        }
    }
    if kept.is_empty() {
        return Err(EvidenceError::Io(format!(
            "no signed checkpoint in {}: start the gateway once (it signs one at start and stop)",
            dir.display()
        )));
    }
    Ok((size, kept))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), EvidenceError> {
    std::fs::write(path, bytes).map_err(|e| io(path.display(), e))
}

fn jsonl(records: &[&Map<String, Value>]) -> Vec<u8> {
    let mut out = Vec::new();
    for record in records {
        out.extend_from_slice(serde_json::to_string(record).unwrap_or_default().as_bytes());
        out.push(b'\n');
    }
    out
}

fn access_csv(records: &[&Map<String, Value>]) -> String {
    let mut out = String::from(
        "seq,time,event,outcome,origin,connection,objects,actions,cardholder_data,policy,statement,reason,session\n",
    );
    for r in records {
        let text = |key: &str| match r.get(key) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        let resource = r.get("resource").cloned().unwrap_or(Value::Null);
        let objects = resource["objects"]
            .as_array()
            .map(|o| {
                o.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        let actions = r
            .get("actions")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{}",
            text("seq"),
            csv(&text("time")),
            csv(&text("event")),
            csv(&text("outcome")),
            csv(&text("origin")),
            csv(resource["connection"].as_str().unwrap_or_default()),
            csv(&objects),
            csv(&actions),
            text("cardholder_data"),
            csv(&text("policy")),
            csv(&text("statement")),
            csv(&text("reason")),
            csv(&text("session")),
        );
    }
    out
}

/// A CSV field, quoted when needed (RFC 4180). A leading `=`, `+`, `-` or
/// `@` is prefixed with `'` so a spreadsheet does not run it as a formula.
fn csv(field: &str) -> String {
    let field = if field.starts_with(['=', '+', '-', '@']) {
        format!("'{field}")
    } else {
        field.to_string()
    };
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field
    }
}

/// A safe file name for an identity or session id.
fn file_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    match cleaned.trim_start_matches('.') {
        "" => "_".into(),
        s => s.to_string(),
    }
}

use crate::clock::{now_secs, secs_rfc3339};

/// Keys whose values are secrets wherever they appear in the configuration.
const SECRET_KEYS: &[&str] = &["password", "token", "token_key", "replica_key", "secret"];

/// The configuration file with its secrets replaced by `<redacted>`: the
/// values of [`SECRET_KEYS`] (inline or not: an env or keyring name is
/// harmless, an inline value is not) and the password of any URL. A file
/// that does not parse is left out rather than copied.
pub fn redact_config(text: &str) -> String {
    fn walk(value: &mut toml::Value, secret: bool) {
        match value {
            toml::Value::String(s) => {
                if secret {
                    *s = "<redacted>".into();
                } else if let Ok(mut url) = url::Url::parse(s)
                    && url.password().is_some()
                {
                    let _ = url.set_password(Some("redacted"));
                    *s = url.to_string();
                }
            }
            toml::Value::Table(table) => {
                for (key, v) in table.iter_mut() {
                    walk(v, secret || SECRET_KEYS.contains(&key.as_str()));
                }
            }
            toml::Value::Array(items) => {
                for v in items {
                    walk(v, secret);
                }
            }
            _ => {}
        }
    }
    match text.parse::<toml::Table>() {
        Ok(table) => {
            let mut value = toml::Value::Table(table);
            walk(&mut value, false);
            format!(
                "# The gateway's configuration, secrets redacted by the evidence export.\n{}",
                toml::to_string(&value).unwrap_or_default()
            )
        }
        Err(_) => {
            "# The configuration did not parse; it is not copied (see INDEX.md for its hash).\n"
                .into()
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::redact_config;

    #[test]
    fn the_bundles_configuration_carries_no_secret() {
        let text = r#"
[audit]
recordings = "postgres://recorder:s3cret-pw@db.internal/rec"
[approvals]
replica_key = { inline = "replica-secret" }
[[connection]]
name = "payments"
[connection.upstream]
password = { inline = "upstream-secret" }
user = "gateway"
[[audit.siem]]
url = "https://siem.example.com/hook"
token = { env = "SIEM_TOKEN" }
"#;
        let out = redact_config(text);
        for secret in [
            "s3cret-pw",
            "replica-secret",
            "upstream-secret",
            "SIEM_TOKEN",
        ] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(
            out.contains("db.internal")
                && out.contains("gateway")
                && out.contains("siem.example.com"),
            "{out}"
        );
        assert!(redact_config("not = [toml").contains("did not parse"));
    }
}
