//! Where recordings live: SQLite in the data directory by default, or a
//! PostgreSQL database shared by several gateway replicas (through sqlx's
//! `Any` driver, so one set of queries serves both).
//!
//! Sessions get one row each; their frames are rows keyed by session and
//! sequence number, read back in pages for replay. Writes go through one
//! task that batches frames into transactions; if the store cannot be
//! written the batch is kept and retried, and [`Store::healthy`] turns
//! false so that new statements are refused until it recovers (fail closed).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use sqlx::AnyPool;
use sqlx::Row;
use sqlx::any::AnyPoolOptions;
use tokio::sync::mpsc;

/// Why the store cannot do its job.
#[derive(Debug, thiserror::Error)]
#[error("recording store {target}: {message}")]
pub struct StoreError {
    target: String,
    message: String,
}

/// A session's header row.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SessionRow {
    /// Random 128-bit id, base64url.
    pub id: String,
    /// Start, RFC 3339 UTC.
    pub started_at: String,
    /// End, RFC 3339 UTC (absent while live or after a crash).
    pub ended_at: Option<String>,
    /// Token subject.
    pub subject: String,
    /// `person` or `agent`.
    pub kind: String,
    /// Connection name.
    pub connection: String,
    /// Client address.
    pub client: String,
}

/// One recorded frame.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Frame {
    /// Order within the session, from 0.
    pub seq: u64,
    /// Microseconds since the session started (monotonic clock).
    pub at_us: u64,
    /// `connect`, `statement`, `result`, `error`, `masking`, `cancel`, `disconnect`.
    pub kind: String,
    /// The frame's fields (masked).
    pub body: Value,
}

enum Write {
    Session(SessionRow, i64),
    Ended(String, String),
    Frame(String, Frame),
}

/// A handle on the recording store (cheap to clone).
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    tx: mpsc::UnboundedSender<Write>,
    healthy: Arc<AtomicBool>,
    /// Writes sent and not yet committed.
    queued: Arc<AtomicUsize>,
    target: Arc<str>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("target", &self.target)
            .finish()
    }
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tollgate_sessions (
        id TEXT PRIMARY KEY,
        started_at TEXT NOT NULL,
        started_ms BIGINT NOT NULL,
        ended_at TEXT,
        subject TEXT NOT NULL,
        kind TEXT NOT NULL,
        connection TEXT NOT NULL,
        client TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS tollgate_sessions_started ON tollgate_sessions (started_ms)",
    "CREATE TABLE IF NOT EXISTS tollgate_frames (
        session_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        at_us BIGINT NOT NULL,
        kind TEXT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (session_id, seq)
    )",
];

/// Most frames written in one transaction.
const BATCH: usize = 1000;

/// Frames per INSERT statement (5 parameters each).
const FRAMES_PER_INSERT: usize = 100;

/// How long the writer lets writes gather before a transaction.
const LINGER: Duration = Duration::from_millis(10);

impl Store {
    /// Open the store: `url` empty for SQLite at `data_dir/recordings.sqlite3`,
    /// else a `postgres://` URL. Creates the tables if needed.
    pub async fn open(url: &str, data_dir: &Path) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (url, target) = if url.is_empty() {
            let path = data_dir.join("recordings.sqlite3");
            (
                format!("sqlite://{}?mode=rwc", path.display()),
                path.display().to_string(),
            )
        } else {
            // Never echo a password in an error.
            let shown = url::Url::parse(url)
                .map(|mut u| {
                    let _ = u.set_password(None);
                    u.to_string()
                })
                .unwrap_or_else(|_| "the configured postgres URL".into());
            (url.to_string(), shown)
        };
        let fail = |e: sqlx::Error| StoreError {
            target: target.clone(),
            message: e.to_string(),
        };
        let sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 2 } else { 4 })
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await
            .map_err(fail)?;
        if sqlite {
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&pool)
                .await
                .map_err(fail)?;
        }
        for statement in SCHEMA {
            sqlx::query(*statement).execute(&pool).await.map_err(fail)?;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let healthy = Arc::new(AtomicBool::new(true));
        let queued = Arc::new(AtomicUsize::new(0));
        let target: Arc<str> = target.into();
        tokio::spawn(writer(
            pool.clone(),
            rx,
            healthy.clone(),
            queued.clone(),
            target.clone(),
        ));
        Ok(Store {
            pool,
            tx,
            healthy,
            queued,
            target,
        })
    }

    /// Whether the last write went through.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Where the store is (a path, or the URL without its password).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Start a session.
    pub fn session(&self, row: SessionRow, started_ms: i64) {
        self.send(Write::Session(row, started_ms));
    }

    /// Mark a session ended.
    pub fn ended(&self, id: &str, at: String) {
        self.send(Write::Ended(id.to_string(), at));
    }

    /// Add a frame to a session.
    pub fn frame(&self, session: &str, frame: Frame) {
        self.send(Write::Frame(session.to_string(), frame));
    }

    fn send(&self, write: Write) {
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(write).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.healthy.store(false, Ordering::Relaxed);
        }
    }

    /// Wait until everything sent so far is written (or has failed).
    pub async fn flush(&self) {
        for _ in 0..500 {
            if self.tx.is_closed() || self.queued.load(Ordering::Relaxed) == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sessions that started in `[from_ms, to_ms)` (Unix milliseconds), oldest first.
    pub async fn sessions(&self, from_ms: i64, to_ms: i64) -> Result<Vec<SessionRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, started_at, ended_at, subject, kind, connection, client
             FROM tollgate_sessions WHERE started_ms >= $1 AND started_ms < $2
             ORDER BY started_ms, id",
        )
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        rows.iter()
            .map(session_row)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| self.error(e))
    }

    /// One session's header, if it is in the store.
    pub async fn session_by_id(&self, id: &str) -> Result<Option<SessionRow>, StoreError> {
        let row = sqlx::query(
            "SELECT id, started_at, ended_at, subject, kind, connection, client
             FROM tollgate_sessions WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        row.as_ref()
            .map(session_row)
            .transpose()
            .map_err(|e| self.error(e))
    }

    /// A page of a session's frames: up to `limit` frames with `seq > after`
    /// (`after = -1` for the first page).
    pub async fn frames(
        &self,
        session: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Frame>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at_us, kind, body FROM tollgate_frames
             WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(session)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        rows.iter()
            .map(|row| {
                let body: String = row.try_get(3)?;
                Ok(Frame {
                    seq: row.try_get::<i64, _>(0)? as u64,
                    at_us: row.try_get::<i64, _>(1)? as u64,
                    kind: row.try_get(2)?,
                    body: serde_json::from_str(&body).unwrap_or(Value::Null),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| self.error(e))
    }

    /// Delete sessions (and their frames) that started before `before_ms`;
    /// returns how many sessions went.
    pub async fn prune(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.error(e))?;
        sqlx::query(
            "DELETE FROM tollgate_frames WHERE session_id IN
             (SELECT id FROM tollgate_sessions WHERE started_ms < $1)",
        )
        .bind(before_ms)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.error(e))?;
        let done = sqlx::query("DELETE FROM tollgate_sessions WHERE started_ms < $1")
            .bind(before_ms)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.error(e))?;
        tx.commit().await.map_err(|e| self.error(e))?;
        Ok(done.rows_affected())
    }

    fn error(&self, e: sqlx::Error) -> StoreError {
        StoreError {
            target: self.target.to_string(),
            message: e.to_string(),
        }
    }
}

fn session_row(row: &sqlx::any::AnyRow) -> Result<SessionRow, sqlx::Error> {
    Ok(SessionRow {
        id: row.try_get(0)?,
        started_at: row.try_get(1)?,
        ended_at: row.try_get(2)?,
        subject: row.try_get(3)?,
        kind: row.try_get(4)?,
        connection: row.try_get(5)?,
        client: row.try_get(6)?,
    })
}

async fn writer(
    pool: AnyPool,
    mut rx: mpsc::UnboundedReceiver<Write>,
    healthy: Arc<AtomicBool>,
    queued: Arc<AtomicUsize>,
    target: Arc<str>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if batch.is_empty() {
            if rx.recv_many(&mut batch, BATCH).await == 0 {
                return;
            }
            // Let a busy gateway's frames share one transaction.
            tokio::time::sleep(LINGER).await;
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(write) => batch.push(write),
                    Err(_) => break,
                }
            }
        }
        match write_batch(&pool, &batch).await {
            Ok(()) => {
                healthy.store(true, Ordering::Relaxed);
                queued.fetch_sub(batch.len(), Ordering::Relaxed);
                batch.clear();
            }
            Err(e) => {
                // Keep the batch and try again: nothing recorded is dropped.
                if healthy.swap(false, Ordering::Relaxed) {
                    tracing::error!(target: "tollgate::audit", store = %target, error = %e,
                        "session recording store cannot be written; statements are refused until it recovers");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn write_batch(pool: &AnyPool, batch: &[Write]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for write in batch {
        match write {
            Write::Session(row, started_ms) => {
                sqlx::query(
                    "INSERT INTO tollgate_sessions (id, started_at, started_ms, subject, kind, connection, client)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&row.id)
                .bind(&row.started_at)
                .bind(*started_ms)
                .bind(&row.subject)
                .bind(&row.kind)
                .bind(&row.connection)
                .bind(&row.client)
                .execute(&mut *tx)
                .await?;
            }
            Write::Ended(id, at) => {
                sqlx::query("UPDATE tollgate_sessions SET ended_at = $1 WHERE id = $2")
                    .bind(at)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            Write::Frame(..) => {}
        }
    }
    // Frames in multi-row inserts: one round trip to the database per
    // FRAMES_PER_INSERT frames rather than per frame.
    let frames: Vec<(&String, &Frame)> = batch
        .iter()
        .filter_map(|w| match w {
            Write::Frame(session, frame) => Some((session, frame)),
            _ => None,
        })
        .collect();
    for chunk in frames.chunks(FRAMES_PER_INSERT) {
        let mut sql = String::from(
            "INSERT INTO tollgate_frames (session_id, seq, at_us, kind, body) VALUES ",
        );
        for n in 0..chunk.len() {
            let p = n * 5;
            if n > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${})",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5
            ));
        }
        // Only placeholders are built into the text; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (session, frame) in chunk {
            query = query
                .bind(*session)
                .bind(frame.seq as i64)
                .bind(frame.at_us as i64)
                .bind(&frame.kind)
                .bind(frame.body.to_string());
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await
}
