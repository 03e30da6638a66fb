//! Evidence exports over the API, for an auditor's console.
//!
//! `POST /api/v1/evidence` starts the same export as `tollgate evidence`,
//! run by the gateway itself, on record as the signed-in auditor; the caller
//! follows its progress with `GET /api/v1/evidence/{id}` and, once done,
//! downloads the bundle as one tar archive (`.../bundle`). One export runs at
//! a time; a finished bundle is kept for an hour, then deleted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ApiContext, ApiError, Caller};
use crate::audit::event::{Outcome, actor};
use crate::config::Config;
use crate::evidence::{EvidenceRequest, Exporter, Progress};
use crate::listener::http::Peer;

/// How long a finished bundle stays for download.
const KEEP: Duration = Duration::from_secs(3600);

/// What exports need from the gateway, and the exports so far.
#[derive(Debug)]
pub struct Exports {
    config: Config,
    config_file: Option<PathBuf>,
    /// Where bundles are built (`<data_dir>/evidence-exports`).
    dir: PathBuf,
    jobs: Mutex<HashMap<String, Job>>,
}

#[derive(Debug)]
struct Job {
    /// Who started it (subject, issuer): only they see it.
    owner: (String, String),
    view: Arc<Mutex<ExportView>>,
    finished: Option<Instant>,
}

/// An export as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ts_rs::TS)]
pub struct ExportView {
    /// The export's id.
    pub id: String,
    /// `running`, `done` or `failed`.
    pub state: String,
    /// The stage it is in.
    pub stage: String,
    /// Which stage (from 1) of how many.
    pub stage_number: u32,
    /// Stages in all.
    pub stages: u32,
    /// Steps of this stage done.
    #[ts(type = "number")]
    pub done: u64,
    /// Steps in this stage.
    #[ts(type = "number")]
    pub total: u64,
    /// The window exported (RFC 3339; none: open).
    pub from: Option<String>,
    /// End of the window (exclusive).
    pub to: Option<String>,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When done: what it holds.
    pub summary: Option<ExportSummary>,
    /// When failed: why, and what to do.
    pub error: Option<String>,
    /// The archive's size, once done.
    #[ts(type = "number | null")]
    pub bundle_bytes: Option<u64>,
}

/// What a finished export holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ts_rs::TS)]
pub struct ExportSummary {
    /// Records in the bundle's audit log.
    #[ts(type = "number")]
    pub records: u64,
    /// Of which in the window.
    #[ts(type = "number")]
    pub in_window: u64,
    /// Sessions exported.
    pub sessions: u32,
    /// Identities with an access log.
    pub identities: u32,
    /// The gateway's verification of the bundle's log passed.
    pub verified: bool,
}

impl Exports {
    /// Exports of the gateway configured by `config`; leftovers of an
    /// earlier run are removed.
    pub fn new(config: Config, config_file: Option<PathBuf>) -> Exports {
        let dir = config.server.data_dir.join("evidence-exports");
        let _ = std::fs::remove_dir_all(&dir);
        Exports {
            config,
            config_file,
            dir,
            jobs: Mutex::new(HashMap::new()),
        }
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Job>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forget bundles kept longer than [`KEEP`] (their files go too).
    fn prune(&self) {
        let gone: Vec<String> = {
            let mut jobs = self.jobs();
            let old: Vec<String> = jobs
                .iter()
                .filter(|(_, job)| job.finished.is_some_and(|t| t.elapsed() >= KEEP))
                .map(|(id, _)| id.clone())
                .collect();
            for id in &old {
                jobs.remove(id);
            }
            old
        };
        for id in gone {
            let _ = std::fs::remove_dir_all(self.dir.join(id));
        }
    }
}

/// The export routes.
pub(super) fn routes() -> Router<Arc<ApiContext>> {
    Router::new()
        .route("/api/v1/evidence", post(start))
        .route("/api/v1/evidence/{id}", get(status))
        .route("/api/v1/evidence/{id}/bundle", get(bundle))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Window {
    from: Option<String>,
    to: Option<String>,
}

fn secs(text: Option<&str>, name: &str) -> Result<Option<i64>, ApiError> {
    text.map(|t| {
        crate::clock::parse_rfc3339(t).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("{name}={t} is not a time: use RFC 3339, e.g. 2026-11-25T00:00:00Z"),
            )
        })
    })
    .transpose()
}

/// Progress written where the status endpoint reads it.
struct Shared(Arc<Mutex<ExportView>>);

impl Progress for Shared {
    fn stage(&mut self, name: &str, total: u64) {
        let mut view = self.0.lock().unwrap_or_else(|e| e.into_inner());
        view.stage = name.to_string();
        view.stage_number += 1;
        view.done = 0;
        view.total = total;
    }

    fn step(&mut self) {
        let mut view = self.0.lock().unwrap_or_else(|e| e.into_inner());
        view.done = (view.done + 1).min(view.total);
    }
}

async fn auditor<'a>(
    ctx: &'a ApiContext,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<(Caller, &'a Exports), ApiError> {
    let caller = ctx.caller(headers, peer).await?;
    if !caller.auditor {
        return Err(ctx
            .forbid(
                &caller,
                "evidence.export",
                json!({ "evidence": "export" }),
                "auditor",
            )
            .await);
    }
    let Some(exports) = ctx.evidence.as_deref() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this gateway does not export evidence over its API; run `tollgate evidence` on its host",
        ));
    };
    Ok((caller, exports))
}

async fn start(
    State(ctx): State<Arc<ApiContext>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Result<Json<Window>, JsonRejection>,
) -> Result<Response, ApiError> {
    let (caller, exports) = auditor(&ctx, &headers, peer).await?;
    let Json(window) = body.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "{}; send {{\"from\": RFC 3339 or null, \"to\": ...}}",
                e.body_text()
            ),
        )
    })?;
    let from = secs(window.from.as_deref(), "from")?;
    let to = secs(window.to.as_deref(), "to")?;
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the window is empty: `from` must be before `to`",
        ));
    }
    exports.prune();
    let id = crate::recording::session_id();
    let view = Arc::new(Mutex::new(ExportView {
        id: id.clone(),
        state: "running".into(),
        stage: "starting".into(),
        stage_number: 0,
        stages: crate::evidence::STAGES,
        done: 0,
        total: 0,
        from: window.from.clone(),
        to: window.to.clone(),
        started_at: crate::clock::now_rfc3339(),
        summary: None,
        error: None,
        bundle_bytes: None,
    }));
    {
        let mut jobs = exports.jobs();
        if jobs.values().any(|j| j.finished.is_none()) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "export_running",
                "another evidence export is running on this gateway; try again when it is done",
            ));
        }
        jobs.insert(
            id.clone(),
            Job {
                owner: (
                    caller.identity.subject.clone(),
                    caller.identity.issuer.clone(),
                ),
                view: view.clone(),
                finished: None,
            },
        );
    }
    let request = EvidenceRequest {
        config: exports.config.clone(),
        config_file: exports.config_file.clone(),
        from,
        to,
        out: exports.dir.join(&id).join("bundle"),
        by: Exporter::Api {
            auditor: ctx.recording.auditor.clone(),
            actor: actor(&caller.identity),
            origin: caller.peer.ip().to_string(),
            id: id.clone(),
            previews: caller.analyst,
        },
    };
    let ctx2 = ctx.clone();
    let job_id = id.clone();
    let failed_event = caller.event("evidence.export", Outcome::Failure);
    // The export runs on a task of its own; this one marks the job done or
    // failed whatever happens to it (a panic too), so it never stays "running".
    tokio::spawn(async move {
        let out = request.out.clone();
        let work = tokio::spawn({
            let view = view.clone();
            async move {
                let mut progress = Shared(view);
                let summary = crate::evidence::export(&request, &mut progress)
                    .await
                    .map_err(|e| e.to_string())?;
                let dir = request.out.clone();
                let tar = dir.with_extension("tar");
                let packed = tokio::task::spawn_blocking(move || {
                    let bytes = pack(&dir, &tar)?;
                    // The archive is what is served: the folder goes.
                    std::fs::remove_dir_all(&dir)?;
                    Ok::<_, std::io::Error>(bytes)
                })
                .await;
                match packed {
                    Ok(Ok(bytes)) => Ok((summary, bytes)),
                    Ok(Err(e)) => Err(format!(
                        "the bundle was written but could not be archived: {e}"
                    )),
                    Err(e) => Err(format!("the bundle could not be archived: {e}")),
                }
            }
        });
        let archived = match work.await {
            Ok(result) => result,
            Err(e) => Err(format!(
                "the export stopped unexpectedly ({e}); see the gateway's log"
            )),
        };
        if archived.is_err()
            && let Some(job_dir) = out.parent()
        {
            let _ = std::fs::remove_dir_all(job_dir);
        }
        let mut view = view.lock().unwrap_or_else(|e| e.into_inner());
        match archived {
            Ok((summary, bytes)) => {
                view.state = "done".into();
                view.bundle_bytes = Some(bytes);
                view.summary = Some(ExportSummary {
                    records: summary.records,
                    in_window: summary.in_window,
                    sessions: u32::try_from(summary.sessions).unwrap_or(u32::MAX),
                    identities: u32::try_from(summary.identities).unwrap_or(u32::MAX),
                    verified: summary.verified,
                });
            }
            Err(message) => {
                tracing::error!(error = %message, "evidence export failed");
                view.state = "failed".into();
                view.error = Some(crate::masking::for_record(&message));
                let event = failed_event
                    .clone()
                    .resource(json!({ "evidence": job_id }))
                    .with("reason", crate::masking::for_record(&message));
                ctx2.recording.auditor.record_later(event);
            }
        }
        drop(view);
        if let Some(exports) = ctx2.evidence.as_deref()
            && let Some(job) = exports.jobs().get_mut(&job_id)
        {
            job.finished = Some(Instant::now());
        }
    });
    let view = exports
        .jobs()
        .get(&id)
        .map(|job| job.view.lock().unwrap_or_else(|e| e.into_inner()).clone());
    Ok((StatusCode::ACCEPTED, Json(json!({ "export": view }))).into_response())
}

/// Write `dir` as a tar archive at `tar`; its size.
fn pack(dir: &std::path::Path, tar: &std::path::Path) -> std::io::Result<u64> {
    let file = std::fs::File::create(tar)?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
    builder.follow_symlinks(false);
    builder.append_dir_all("evidence", dir)?;
    let mut out = builder.into_inner()?;
    std::io::Write::flush(&mut out)?;
    out.get_ref().sync_all()?;
    Ok(std::fs::metadata(tar)?.len())
}

/// The job `id` of `caller`, or a 404 (someone else's export is not shown).
fn job_of(exports: &Exports, caller: &Caller, id: &str) -> Result<(ExportView, PathBuf), ApiError> {
    let jobs = exports.jobs();
    let job = jobs
        .get(id)
        .filter(|j| j.owner.0 == caller.identity.subject && j.owner.1 == caller.identity.issuer)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no export of yours has this id (bundles are kept for an hour); start one with POST /api/v1/evidence",
            )
        })?;
    let view = job.view.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok((view, exports.dir.join(id).join("bundle.tar")))
}

async fn status(
    State(ctx): State<Arc<ApiContext>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (caller, exports) = auditor(&ctx, &headers, peer).await?;
    exports.prune();
    let (view, _) = job_of(exports, &caller, &id)?;
    Ok(Json(json!({ "export": view })))
}

async fn bundle(
    State(ctx): State<Arc<ApiContext>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (caller, exports) = auditor(&ctx, &headers, peer).await?;
    let (view, tar) = job_of(exports, &caller, &id)?;
    if view.state != "done" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_ready",
            format!(
                "the export is {}: download it once its state is done",
                view.state
            ),
        ));
    }
    let file = tokio::fs::File::open(&tar).await.map_err(|e| {
        tracing::error!(error = %e, path = %tar.display(), "evidence bundle unreadable");
        ApiError::new(
            StatusCode::GONE,
            "gone",
            "the bundle is no longer on the gateway; start a new export",
        )
    })?;
    ctx.record(
        caller
            .event("evidence.download", Outcome::Success)
            .resource(json!({ "evidence": id, "bytes": view.bundle_bytes })),
    )
    .await?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        "application/x-tar".parse().expect("static"),
    );
    if let Some(bytes) = view.bundle_bytes
        && let Ok(value) = bytes.to_string().parse()
    {
        headers.insert(header::CONTENT_LENGTH, value);
    }
    Ok(response)
}
