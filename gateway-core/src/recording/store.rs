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
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, ts_rs::TS)]
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
    /// The protocol the session spoke: `postgres` or `mcp`.
    pub protocol: String,
}

/// One recorded frame.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, ts_rs::TS)]
pub struct Frame {
    /// Order within the session, from 0.
    #[ts(type = "number")]
    pub seq: u64,
    /// Microseconds since the session started (monotonic clock).
    #[ts(type = "number")]
    pub at_us: u64,
    /// `connect`, `statement`, `result`, `error`, `masking`, `cancel`, `disconnect`.
    pub kind: String,
    /// The frame's fields (masked).
    #[ts(type = "Record<string, any>")]
    pub body: Value,
}

impl Frame {
    /// The frame as an auditor sees it: everything but the result rows
    /// (counts, columns and the digest stay).
    pub fn without_preview(mut self) -> Frame {
        if let Value::Object(body) = &mut self.body
            && body.remove("preview").is_some()
        {
            body.insert("withheld".into(), Value::from("result rows: analysts only"));
        }
        self
    }
}

enum Write {
    Session(SessionRow, i64),
    Ended(String, String),
    Frame(String, Frame),
}

/// A handle on the recording store (cheap to clone).
#[derive(Clone)]
pub struct Store {
    /// The writer's connections (and pruning).
    pool: AnyPool,
    /// Readers' own connections: a slow search never holds up the writer,
    /// whose failure would refuse every statement.
    read: AnyPool,
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

/// Columns added after the first release: a store written by an older
/// gateway gets them on open (each probed, then added).
const ADDED: &[(&str, &str, &str)] = &[
    (
        "tollgate_sessions",
        "statements",
        "BIGINT NOT NULL DEFAULT 0",
    ),
    ("tollgate_sessions", "refused", "BIGINT NOT NULL DEFAULT 0"),
    ("tollgate_sessions", "held", "BIGINT NOT NULL DEFAULT 0"),
    ("tollgate_sessions", "masked", "BIGINT NOT NULL DEFAULT 0"),
    ("tollgate_sessions", "errors", "BIGINT NOT NULL DEFAULT 0"),
    ("tollgate_sessions", "frames", "BIGINT NOT NULL DEFAULT 0"),
    ("tollgate_frames", "mark", "TEXT NOT NULL DEFAULT ''"),
    // Sessions before MCP were all PostgreSQL sessions.
    (
        "tollgate_sessions",
        "protocol",
        "TEXT NOT NULL DEFAULT 'postgres'",
    ),
    ("tollgate_frames", "search", "TEXT NOT NULL DEFAULT ''"),
];

/// Indexes over the added columns.
const INDEXES: &[&str] = &[
    // The player's markers: a session's marked frames without its bodies.
    "CREATE INDEX IF NOT EXISTS tollgate_frames_marks ON tollgate_frames (session_id, seq, at_us, mark) WHERE mark <> ''",
];

/// Most frames written in one transaction.
const BATCH: usize = 1000;

/// Frames per INSERT statement (7 parameters each), largest first: a batch
/// is cut greedily into these, so that a handful of statement texts (each
/// prepared once per connection and cached) serve every batch size.
const FRAMES_PER_INSERT: &[usize] = &[64, 16, 4, 1];

/// How long the writer lets writes gather before a transaction.
const LINGER: Duration = Duration::from_millis(50);

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
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // The writer commits at most every LINGER, off the
                        // statements' path. FULL syncs the WAL at each of
                        // those commits, so the recordings reach the disk
                        // a little at a time; NORMAL would leave them all
                        // to the checkpoint, whose one large fsync makes
                        // every other fsync on the device wait (the audit
                        // log's, which each statement waits for). Small
                        // checkpoints keep that step small too.
                        sqlx::query("PRAGMA synchronous = FULL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA wal_autocheckpoint = 128")
                            .execute(conn)
                            .await?;
                    }
                    Ok(())
                })
            })
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
        for (table, column, kind) in ADDED {
            // Only names from the constant above are built into the text.
            let probe = format!("SELECT {column} FROM {table} WHERE 1 = 0");
            if sqlx::query(sqlx::AssertSqlSafe(probe))
                .execute(&pool)
                .await
                .is_err()
            {
                let add = format!("ALTER TABLE {table} ADD COLUMN {column} {kind}");
                if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(add)).execute(&pool).await {
                    // Another replica may have added it meanwhile.
                    let probe = format!("SELECT {column} FROM {table} WHERE 1 = 0");
                    if sqlx::query(sqlx::AssertSqlSafe(probe))
                        .execute(&pool)
                        .await
                        .is_err()
                    {
                        return Err(fail(e));
                    }
                }
            }
        }
        for statement in INDEXES {
            sqlx::query(*statement).execute(&pool).await.map_err(fail)?;
        }
        let read = AnyPoolOptions::new()
            .max_connections(if sqlite { 2 } else { 4 })
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await
            .map_err(fail)?;
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
            sqlite,
        ));
        tokio::spawn(backfill(pool.clone(), target.clone()));
        Ok(Store {
            pool,
            read,
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
            "SELECT id, started_at, ended_at, subject, kind, connection, client, protocol
             FROM tollgate_sessions WHERE started_ms >= $1 AND started_ms < $2
             ORDER BY started_ms, id",
        )
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(&self.read)
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
            "SELECT id, started_at, ended_at, subject, kind, connection, client, protocol
             FROM tollgate_sessions WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.read)
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
        .fetch_all(&self.read)
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

    /// A page of sessions that match `q`, with their counts.
    pub async fn list(&self, q: &SessionQuery) -> Result<SessionPage, StoreError> {
        let mut sql = Sql::default();
        sql.text.push_str(
            "SELECT id, started_at, ended_at, subject, kind, connection, client, started_ms,
                statements, refused, held, masked, errors, frames, protocol FROM tollgate_sessions s WHERE ",
        );
        sql.filters(q);
        let mut page_sql = sql;
        if let Some((ms, id)) = &q.after {
            let (a, b) = (page_sql.int(*ms), page_sql.text(id));
            let op = if q.newest_first { '<' } else { '>' };
            page_sql.text.push_str(&format!(
                " AND (started_ms {op} {a} OR (started_ms = {a} AND id {op} {b}))"
            ));
        }
        let order = if q.newest_first { "DESC" } else { "ASC" };
        let limit = page_sql.int(i64::from(q.limit) + 1);
        page_sql.text.push_str(&format!(
            " ORDER BY started_ms {order}, id {order} LIMIT {limit}"
        ));
        let rows = page_sql
            .query()
            .fetch_all(&self.read)
            .await
            .map_err(|e| self.error(e))?;
        let mut sessions = rows
            .iter()
            .map(summary_row)
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(|e| self.error(e))?;
        let more = sessions.len() > q.limit as usize;
        sessions.truncate(q.limit as usize);
        let next = more
            .then(|| {
                sessions
                    .last()
                    .map(|s| format!("{}.{}", s.started_ms, s.row.id))
            })
            .flatten();
        if !q.words.is_empty() {
            for session in &mut sessions {
                session.matched = self.first_match(&session.row.id, &q.words).await?;
            }
        }
        // Counting is cheap without a text search; with one it would read
        // every statement, so it is left out.
        let total = if q.words.is_empty() {
            let mut count = Sql::default();
            count
                .text
                .push_str("SELECT COUNT(*) FROM tollgate_sessions s WHERE ");
            count.filters(q);
            let n: i64 = count
                .query()
                .fetch_one(&self.read)
                .await
                .and_then(|r| r.try_get(0))
                .map_err(|e| self.error(e))?;
            Some(n as u64)
        } else {
            None
        };
        Ok(SessionPage {
            sessions,
            next,
            total,
        })
    }

    /// The first statement of `session` that has every word, if one does.
    async fn first_match(
        &self,
        session: &str,
        words: &[String],
    ) -> Result<Option<Match>, StoreError> {
        let mut sql = Sql::default();
        let id = sql.text(session);
        sql.text.push_str(&format!(
            "SELECT seq, body FROM tollgate_frames f WHERE f.session_id = {id} AND f.kind = 'statement'"
        ));
        sql.words(words);
        sql.text.push_str(" ORDER BY seq LIMIT 1");
        let row = sql
            .query()
            .fetch_optional(&self.read)
            .await
            .map_err(|e| self.error(e))?;
        row.map(|row| {
            let body: String = row.try_get(1)?;
            let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            Ok(Match {
                seq: row.try_get::<i64, _>(0)? as u64,
                text: body["text"].as_str().unwrap_or_default().to_string(),
            })
        })
        .transpose()
        .map_err(|e: sqlx::Error| self.error(e))
    }

    /// One session's header and counts, if it is in the store.
    pub async fn summary_by_id(&self, id: &str) -> Result<Option<SessionSummary>, StoreError> {
        let row = sqlx::query(
            "SELECT id, started_at, ended_at, subject, kind, connection, client, started_ms,
                statements, refused, held, masked, errors, frames, protocol FROM tollgate_sessions WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.read)
        .await
        .map_err(|e| self.error(e))?;
        row.as_ref()
            .map(summary_row)
            .transpose()
            .map_err(|e| self.error(e))
    }

    /// The marked frames of a session, in order (at most `limit`).
    pub async fn markers(&self, session: &str, limit: u32) -> Result<Vec<Marker>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at_us, mark FROM tollgate_frames
             WHERE session_id = $1 AND mark <> '' ORDER BY seq LIMIT $2",
        )
        .bind(session)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await
        .map_err(|e| self.error(e))?;
        rows.iter()
            .map(|row| {
                Ok(Marker {
                    seq: row.try_get::<i64, _>(0)? as u64,
                    at_us: row.try_get::<i64, _>(1)? as u64,
                    mark: row.try_get(2)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| self.error(e))
    }

    /// The last frame's sequence number and time, if the session has frames.
    pub async fn last_frame(&self, session: &str) -> Result<Option<(u64, u64)>, StoreError> {
        let row = sqlx::query(
            "SELECT seq, at_us FROM tollgate_frames WHERE session_id = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(session)
        .fetch_optional(&self.read)
        .await
        .map_err(|e| self.error(e))?;
        row.map(|row| {
            Ok((
                row.try_get::<i64, _>(0)? as u64,
                row.try_get::<i64, _>(1)? as u64,
            ))
        })
        .transpose()
        .map_err(|e: sqlx::Error| self.error(e))
    }

    /// Frames of `session` whose text has every word, in order (at most `limit`).
    pub async fn search(
        &self,
        session: &str,
        words: &[String],
        limit: u32,
    ) -> Result<Vec<u64>, StoreError> {
        let mut sql = Sql::default();
        let id = sql.text(session);
        sql.text.push_str(&format!(
            "SELECT seq FROM tollgate_frames f WHERE f.session_id = {id}"
        ));
        sql.words(words);
        let limit = sql.int(i64::from(limit));
        sql.text.push_str(&format!(" ORDER BY seq LIMIT {limit}"));
        let rows = sql
            .query()
            .fetch_all(&self.read)
            .await
            .map_err(|e| self.error(e))?;
        rows.iter()
            .map(|row| Ok(row.try_get::<i64, _>(0)? as u64))
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

/// Which sessions to list.
#[derive(Debug, Clone)]
pub struct SessionQuery {
    /// Started at or after (Unix milliseconds).
    pub from_ms: i64,
    /// Started before (Unix milliseconds).
    pub to_ms: i64,
    /// The subject contains this (any case).
    pub subject: Option<String>,
    /// The connection is this.
    pub connection: Option<String>,
    /// `person` or `agent`.
    pub kind: Option<String>,
    /// Sessions with at least one of these.
    pub outcome: Option<Outcome>,
    /// Sessions with a statement that has every one of these words (any case).
    pub words: Vec<String>,
    /// Newest first (else oldest first).
    pub newest_first: bool,
    /// The page starts after this session (its start and id).
    pub after: Option<(i64, String)>,
    /// Sessions per page.
    pub limit: u32,
}

impl Default for SessionQuery {
    fn default() -> SessionQuery {
        SessionQuery {
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            subject: None,
            connection: None,
            kind: None,
            outcome: None,
            words: Vec::new(),
            newest_first: true,
            after: None,
            limit: 100,
        }
    }
}

/// What a session had, to filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A statement refused.
    Refused,
    /// A statement held for approval.
    Held,
    /// Values masked in a result.
    Masked,
    /// An error from the upstream.
    Error,
}

impl Outcome {
    /// Parse the API's name.
    pub fn parse(text: &str) -> Option<Outcome> {
        Some(match text {
            "refused" => Outcome::Refused,
            "held" => Outcome::Held,
            "masked" => Outcome::Masked,
            "error" => Outcome::Error,
            _ => return None,
        })
    }

    fn column(self) -> &'static str {
        match self {
            Outcome::Refused => "refused",
            Outcome::Held => "held",
            Outcome::Masked => "masked",
            Outcome::Error => "errors",
        }
    }
}

/// A listed session with its counts.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, ts_rs::TS)]
pub struct SessionSummary {
    /// The header.
    #[serde(flatten)]
    #[ts(flatten)]
    pub row: SessionRow,
    /// Start, Unix milliseconds.
    #[ts(type = "number")]
    pub started_ms: i64,
    /// Statements decided.
    #[ts(type = "number")]
    pub statements: u64,
    /// Of which refused.
    #[ts(type = "number")]
    pub refused: u64,
    /// Of which held for approval (or let through by an approval's grant).
    #[ts(type = "number")]
    pub held: u64,
    /// Values masked in its results.
    #[ts(type = "number")]
    pub masked: u64,
    /// Errors from the upstream.
    #[ts(type = "number")]
    pub errors: u64,
    /// Frames recorded.
    #[ts(type = "number")]
    pub frames: u64,
    /// With a text search: the first statement that matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[ts(optional)]
    pub matched: Option<Match>,
}

/// A statement that matched a search.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, ts_rs::TS)]
pub struct Match {
    /// Its frame.
    #[ts(type = "number")]
    pub seq: u64,
    /// Its recorded text.
    pub text: String,
}

/// A page of sessions.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, ts_rs::TS)]
pub struct SessionPage {
    /// The sessions.
    pub sessions: Vec<SessionSummary>,
    /// Pass as `after` for the next page; none on the last.
    pub next: Option<String>,
    /// Sessions that match in all (left out with a text search).
    #[ts(type = "number | null")]
    pub total: Option<u64>,
}

/// A marked frame.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, ts_rs::TS)]
pub struct Marker {
    /// The frame.
    #[ts(type = "number")]
    pub seq: u64,
    /// Its time.
    #[ts(type = "number")]
    pub at_us: u64,
    /// What happened (a [`Mark`] name).
    pub mark: String,
}

/// A query built with bound values only.
#[derive(Debug, Default, Clone)]
struct Sql {
    text: String,
    values: Vec<Bound>,
}

#[derive(Debug, Clone)]
enum Bound {
    Int(i64),
    Text(String),
}

impl Sql {
    fn int(&mut self, v: i64) -> String {
        self.values.push(Bound::Int(v));
        format!("${}", self.values.len())
    }

    fn text(&mut self, v: &str) -> String {
        self.values.push(Bound::Text(v.to_string()));
        format!("${}", self.values.len())
    }

    /// The session filters of `q` (everything but paging).
    fn filters(&mut self, q: &SessionQuery) {
        let (from, to) = (self.int(q.from_ms), self.int(q.to_ms));
        self.text
            .push_str(&format!("started_ms >= {from} AND started_ms < {to}"));
        if let Some(subject) = &q.subject {
            let p = self.text(&like(subject));
            self.text
                .push_str(&format!(" AND LOWER(subject) LIKE {p} ESCAPE '!'"));
        }
        if let Some(connection) = &q.connection {
            let p = self.text(connection);
            self.text.push_str(&format!(" AND connection = {p}"));
        }
        if let Some(kind) = &q.kind {
            let p = self.text(kind);
            self.text.push_str(&format!(" AND kind = {p}"));
        }
        if let Some(outcome) = q.outcome {
            self.text
                .push_str(&format!(" AND {} > 0", outcome.column()));
        }
        if !q.words.is_empty() {
            self.text.push_str(
                " AND EXISTS (SELECT 1 FROM tollgate_frames f WHERE f.session_id = s.id AND f.kind = 'statement'",
            );
            self.words(&q.words);
            self.text.push(')');
        }
    }

    /// `AND` every word is in the frame's searchable text (any case). Frames
    /// written before that column existed are searched in their body.
    fn words(&mut self, words: &[String]) {
        for word in words {
            let p = self.text(&like(word));
            self.text.push_str(&format!(
                " AND (f.search LIKE {p} ESCAPE '!' OR (f.search = '' AND f.kind IN ('statement', 'error') AND LOWER(f.body) LIKE {p} ESCAPE '!'))"
            ));
        }
    }

    fn query(&self) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments> {
        // Only placeholders are built into the text; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(self.text.clone()));
        for value in &self.values {
            query = match value {
                Bound::Int(v) => query.bind(*v),
                Bound::Text(v) => query.bind(v.clone()),
            };
        }
        query
    }
}

/// A LIKE pattern for text containing `word` (any case), its wildcards
/// escaped with `!` (a backslash means different things to PostgreSQL
/// depending on `standard_conforming_strings`).
fn like(word: &str) -> String {
    let mut pattern = String::from("%");
    for c in word.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '!') {
            pattern.push('!');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

fn summary_row(row: &sqlx::any::AnyRow) -> Result<SessionSummary, sqlx::Error> {
    let count =
        |i: usize| -> Result<u64, sqlx::Error> { Ok(row.try_get::<i64, _>(i)?.max(0) as u64) };
    Ok(SessionSummary {
        row: session_row(row)?,
        started_ms: row.try_get(7)?,
        statements: count(8)?,
        refused: count(9)?,
        held: count(10)?,
        masked: count(11)?,
        errors: count(12)?,
        frames: count(13)?,
        matched: None,
    })
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
        protocol: row.try_get("protocol")?,
    })
}

async fn writer(
    pool: AnyPool,
    mut rx: mpsc::UnboundedReceiver<Write>,
    healthy: Arc<AtomicBool>,
    queued: Arc<AtomicUsize>,
    target: Arc<str>,
    sqlite: bool,
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
        match write_batch(&pool, &batch, sqlite).await {
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

async fn write_batch(pool: &AnyPool, batch: &[Write], sqlite: bool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for write in batch {
        match write {
            Write::Session(row, started_ms) => {
                sqlx::query(
                    "INSERT INTO tollgate_sessions (id, started_at, started_ms, subject, kind, connection, client, protocol)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&row.id)
                .bind(&row.started_at)
                .bind(*started_ms)
                .bind(&row.subject)
                .bind(&row.kind)
                .bind(&row.connection)
                .bind(&row.client)
                .bind(&row.protocol)
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
    // chunk of up to 64 frames rather than per frame.
    let frames: Vec<(&String, &Frame)> = batch
        .iter()
        .filter_map(|w| match w {
            Write::Frame(session, frame) => Some((session, frame)),
            _ => None,
        })
        .collect();
    let mut tallies: Vec<(&str, Tally)> = Vec::new();
    let mut rest = &frames[..];
    while !rest.is_empty() {
        let size = FRAMES_PER_INSERT
            .iter()
            .copied()
            .find(|&n| n <= rest.len())
            .unwrap_or(1);
        let (chunk, after) = rest.split_at(size);
        rest = after;
        let mut sql = String::from(
            "INSERT INTO tollgate_frames (session_id, seq, at_us, kind, body, mark, search) VALUES ",
        );
        for n in 0..chunk.len() {
            let p = n * 7;
            if n > 0 {
                sql.push(',');
            }
            sql.push('(');
            for i in 1..=7 {
                if i > 1 {
                    sql.push_str(", ");
                }
                // SQLite looks a numbered parameter up by name for every
                // value bound (a linear search): plain `?` costs nothing.
                if sqlite {
                    sql.push('?');
                } else {
                    sql.push_str(&format!("${}", p + i));
                }
            }
            sql.push(')');
        }
        // Only placeholders are built into the text; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (session, frame) in chunk {
            let (mark, tally) = classify(frame);
            match tallies.iter_mut().find(|(s, _)| s == session) {
                Some((_, sum)) => sum.add(&tally),
                None => tallies.push((session.as_str(), tally)),
            }
            query = query
                .bind(*session)
                .bind(frame.seq as i64)
                .bind(frame.at_us as i64)
                .bind(&frame.kind)
                .bind(frame.body.to_string())
                .bind(mark.map_or("", Mark::as_str))
                .bind(searchable(frame));
        }
        query.execute(&mut *tx).await?;
    }
    for (session, t) in tallies {
        add_tally(&mut tx, session, &t).await?;
    }
    tx.commit().await
}

/// Frames per backfill transaction.
const BACKFILL_BATCH: i64 = 500;

/// Give frames written by an older gateway (or an older replica) their
/// mark and searchable text, and their sessions the counts they add, in
/// the background. A frame is counted only by the transaction that fills
/// its text, so two gateways backfilling one store never count it twice.
async fn backfill(pool: AnyPool, target: Arc<str>) {
    let mut after: (String, i64) = (String::new(), -1);
    let mut filled = 0u64;
    loop {
        let rows = sqlx::query(
            "SELECT session_id, seq, at_us, kind, body FROM tollgate_frames
             WHERE (session_id > $1 OR (session_id = $1 AND seq > $2)) AND search = ''
             ORDER BY session_id, seq LIMIT $3",
        )
        .bind(&after.0)
        .bind(after.1)
        .bind(BACKFILL_BATCH)
        .fetch_all(&pool)
        .await;
        let rows = match rows {
            Ok(rows) if rows.is_empty() => break,
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(store = %target, error = %e, "recording store backfill stopped; it runs again at the next start");
                return;
            }
        };
        let frames: Vec<(String, Frame)> = rows
            .iter()
            .filter_map(|row| {
                let body: String = row.try_get(4).ok()?;
                Some((
                    row.try_get(0).ok()?,
                    Frame {
                        seq: row.try_get::<i64, _>(1).ok()? as u64,
                        at_us: row.try_get::<i64, _>(2).ok()? as u64,
                        kind: row.try_get(3).ok()?,
                        body: serde_json::from_str(&body).unwrap_or(Value::Null),
                    },
                ))
            })
            .collect();
        let Some((last_session, last)) = frames.last() else {
            break;
        };
        after = (last_session.clone(), last.seq as i64);
        match fill(&pool, &frames).await {
            Ok(n) => filled += n,
            Err(e) => {
                tracing::warn!(store = %target, error = %e, "recording store backfill stopped; it runs again at the next start");
                return;
            }
        }
        // Leave room for the writer.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if filled > 0 {
        tracing::info!(store = %target, frames = filled, "frames of an older gateway given their marks, search text and counts");
    }
}

/// One backfill transaction: how many frames it filled.
async fn fill(pool: &AnyPool, frames: &[(String, Frame)]) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut tallies: Vec<(&str, Tally)> = Vec::new();
    let mut filled = 0;
    for (session, frame) in frames {
        let (mark, tally) = classify(frame);
        let done = sqlx::query(
            "UPDATE tollgate_frames SET mark = $1, search = $2
             WHERE session_id = $3 AND seq = $4 AND search = ''",
        )
        .bind(mark.map_or("", Mark::as_str))
        .bind(searchable(frame))
        .bind(session)
        .bind(frame.seq as i64)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 1 {
            filled += 1;
            match tallies.iter_mut().find(|(s, _)| s == session) {
                Some((_, sum)) => sum.add(&tally),
                None => tallies.push((session.as_str(), tally)),
            }
        }
    }
    for (session, t) in tallies {
        add_tally(&mut tx, session, &t).await?;
    }
    tx.commit().await?;
    Ok(filled)
}

/// Add `t` to the counts of `session`.
async fn add_tally(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    session: &str,
    t: &Tally,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tollgate_sessions SET statements = statements + $1, refused = refused + $2,
            held = held + $3, masked = masked + $4, errors = errors + $5, frames = frames + $6
         WHERE id = $7",
    )
    .bind(t.statements)
    .bind(t.refused)
    .bind(t.held)
    .bind(t.masked)
    .bind(t.errors)
    .bind(t.frames)
    .bind(session)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// What a frame adds to its session's counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    statements: i64,
    refused: i64,
    held: i64,
    masked: i64,
    errors: i64,
    frames: i64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.statements += other.statements;
        self.refused += other.refused;
        self.held += other.held;
        self.masked += other.masked;
        self.errors += other.errors;
        self.frames += other.frames;
    }
}

/// A frame the player marks on its timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mark {
    /// Refused by policy or by the gateway.
    Refused,
    /// Held for approval and approved.
    Approved,
    /// Held for approval and denied.
    Denied,
    /// Held for approval and never decided (expired or withdrawn).
    Unanswered,
    /// A result in which values were masked.
    Masked,
    /// The upstream answered with an error.
    Error,
    /// The client asked to cancel.
    Cancel,
}

impl Mark {
    /// The name in the store and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Mark::Refused => "refused",
            Mark::Approved => "approved",
            Mark::Denied => "denied",
            Mark::Unanswered => "unanswered",
            Mark::Masked => "masked",
            Mark::Error => "error",
            Mark::Cancel => "cancel",
        }
    }
}

/// What a search finds a frame by, lower case: its statement, resources,
/// policy and messages, a result's tag and columns. Never result rows: an
/// auditor, who may not read them, must not learn them by searching either.
fn searchable(frame: &Frame) -> String {
    let body = &frame.body;
    let mut text = String::new();
    let mut add = |v: &Value| match v {
        Value::String(s) => {
            text.push_str(s);
            text.push('\n');
        }
        Value::Array(items) => {
            for item in items.iter().filter_map(Value::as_str) {
                text.push_str(item);
                text.push('\n');
            }
        }
        _ => {}
    };
    let fields: &[&str] = match frame.kind.as_str() {
        "statement" => &[
            "text",
            "resources",
            "policy",
            "message",
            "approved_by",
            "approval",
        ],
        "result" => &["tag", "columns"],
        "error" => &["sqlstate", "message"],
        "connect" => &["application_name"],
        "disconnect" => &["reason"],
        _ => &[],
    };
    for field in fields {
        add(&body[*field]);
    }
    if frame.kind == "connect" {
        add(&body["identity"]["subject"]);
    }
    let mut text = text.to_lowercase();
    // Never empty: empty means "written before this column" to a search.
    if text.is_empty() {
        text.push('\n');
    }
    text
}

/// The frame's mark and what it adds to its session's counts.
fn classify(frame: &Frame) -> (Option<Mark>, Tally) {
    let mut tally = Tally {
        frames: 1,
        ..Tally::default()
    };
    let body = &frame.body;
    let mark = match frame.kind.as_str() {
        "statement" => {
            tally.statements = 1;
            let refused = body["decision"] == "refused";
            let held = !body["approval"].is_null();
            tally.refused = i64::from(refused);
            tally.held = i64::from(held);
            match body["approval_state"].as_str() {
                Some("approved" | "granted") if !refused => Some(Mark::Approved),
                Some("denied") => Some(Mark::Denied),
                Some("expired" | "withdrawn") => Some(Mark::Unanswered),
                _ if refused => Some(Mark::Refused),
                _ => None,
            }
        }
        "result" => {
            let masked = body["masked"].as_i64().unwrap_or(0);
            tally.masked = masked;
            (masked > 0).then_some(Mark::Masked)
        }
        "error" => {
            tally.errors = 1;
            Some(Mark::Error)
        }
        "cancel" => Some(Mark::Cancel),
        _ => None,
    };
    (mark, tally)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(id: &str, subject: &str, connection: &str) -> SessionRow {
        SessionRow {
            id: id.into(),
            started_at: "2026-12-01T10:00:00Z".into(),
            ended_at: None,
            subject: subject.into(),
            kind: "person".into(),
            connection: connection.into(),
            client: "127.0.0.1:5000".into(),
            protocol: "postgres".into(),
        }
    }

    fn frame(seq: u64, kind: &str, body: Value) -> Frame {
        Frame {
            seq,
            at_us: seq * 1000,
            kind: kind.into(),
            body,
        }
    }

    /// Three sessions: alice's refused DELETE, bob's approved export with a
    /// masked result, carol's error.
    async fn store(dir: &Path) -> Store {
        let store = Store::open("", dir).await.unwrap();
        store.session(row("a", "alice@corp", "payments"), 1000);
        store.frame(
            "a",
            frame(
                0,
                "connect",
                json!({ "identity": { "subject": "alice@corp" } }),
            ),
        );
        store.frame(
            "a",
            frame(1, "statement", json!({
                "text": "DELETE FROM payments WHERE id = $1", "decision": "refused", "approval": null,
                "resources": ["DELETE on public.payments"], "policy": "deny-delete",
            })),
        );
        store.session(row("b", "bob@corp", "payments"), 2000);
        store.frame(
            "b",
            frame(
                0,
                "statement",
                json!({
                    "text": "COPY (SELECT pan FROM payments) TO STDOUT", "decision": "allowed",
                    "approval": "ap_1", "approval_state": "approved", "approved_by": ["olga"],
                }),
            ),
        );
        store.frame(
            "b",
            frame(1, "result", json!({
                "tag": "COPY 2", "rows": 2, "masked": 2, "preview": [["smith 411111******1111"]],
            })),
        );
        store.session(row("c", "carol@corp", "ledger"), 3000);
        store.frame(
            "c",
            frame(
                0,
                "statement",
                json!({ "text": "SELECT 1/0", "decision": "allowed", "approval": null }),
            ),
        );
        store.frame(
            "c",
            frame(
                1,
                "error",
                json!({ "sqlstate": "22012", "message": "division by zero" }),
            ),
        );
        store.frame("c", frame(2, "cancel", json!({})));
        store.flush().await;
        store
    }

    fn ids(page: &SessionPage) -> Vec<&str> {
        page.sessions.iter().map(|s| s.row.id.as_str()).collect()
    }

    #[tokio::test]
    async fn lists_by_filter_and_search_with_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let all = store.list(&SessionQuery::default()).await.unwrap();
        assert_eq!(ids(&all), ["c", "b", "a"], "newest first");
        assert_eq!(all.total, Some(3));
        let b = &all.sessions[1];
        assert_eq!((b.statements, b.held, b.masked, b.frames), (2 - 1, 1, 2, 2));

        let by = |q: SessionQuery| {
            let store = store.clone();
            async move { store.list(&q).await.unwrap() }
        };
        let outcome = |o| SessionQuery {
            outcome: Some(o),
            ..SessionQuery::default()
        };
        assert_eq!(ids(&by(outcome(Outcome::Refused)).await), ["a"]);
        assert_eq!(ids(&by(outcome(Outcome::Held)).await), ["b"]);
        assert_eq!(ids(&by(outcome(Outcome::Masked)).await), ["b"]);
        assert_eq!(ids(&by(outcome(Outcome::Error)).await), ["c"]);
        let subject = SessionQuery {
            subject: Some("ALICE".into()),
            ..SessionQuery::default()
        };
        assert_eq!(ids(&by(subject).await), ["a"]);
        let connection = SessionQuery {
            connection: Some("ledger".into()),
            ..SessionQuery::default()
        };
        assert_eq!(ids(&by(connection).await), ["c"]);
        let window = SessionQuery {
            from_ms: 1500,
            to_ms: 3000,
            ..SessionQuery::default()
        };
        assert_eq!(ids(&by(window).await), ["b"]);

        // "Who ran DELETE on payments": words in any case, any order.
        let search = SessionQuery {
            words: vec!["payments".into(), "delete".into()],
            ..SessionQuery::default()
        };
        let found = by(search).await;
        assert_eq!(ids(&found), ["a"]);
        assert_eq!(found.total, None);
        let matched = found.sessions[0].matched.as_ref().unwrap();
        assert_eq!(matched.seq, 1);
        assert!(matched.text.starts_with("DELETE"), "{matched:?}");
        // Result rows are not searchable (an auditor must not learn them);
        // wildcards are literal.
        for hidden in ["smith", "%", "pay_ents"] {
            let search = SessionQuery {
                words: vec![hidden.into()],
                ..SessionQuery::default()
            };
            assert_eq!(ids(&by(search).await), Vec::<&str>::new(), "{hidden}");
        }
    }

    #[tokio::test]
    async fn pages_without_gaps_or_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open("", dir.path()).await.unwrap();
        // Several sessions share a start time: the id breaks the tie.
        for n in 0..25 {
            store.session(
                row(&format!("s{n:02}"), "alice", "payments"),
                1000 + (n / 4),
            );
        }
        store.flush().await;
        for newest_first in [true, false] {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let q = SessionQuery {
                    limit: 4,
                    after,
                    newest_first,
                    ..SessionQuery::default()
                };
                let page = store.list(&q).await.unwrap();
                assert_eq!(page.total, Some(25));
                seen.extend(page.sessions.iter().map(|s| s.row.id.clone()));
                let Some(next) = page.next else { break };
                let (ms, id) = next.split_once('.').unwrap();
                after = Some((ms.parse().unwrap(), id.to_string()));
            }
            let mut expected: Vec<String> = (0..25).map(|n| format!("s{n:02}")).collect();
            if newest_first {
                expected.reverse();
            }
            assert_eq!(seen, expected);
        }
    }

    #[tokio::test]
    async fn marks_and_searches_within_a_session() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let marks = |id: &'static str| {
            let store = store.clone();
            async move {
                store
                    .markers(id, 100)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|m| (m.seq, m.mark))
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(marks("a").await, [(1, "refused".to_string())]);
        assert_eq!(
            marks("b").await,
            [(0, "approved".to_string()), (1, "masked".to_string())]
        );
        assert_eq!(
            marks("c").await,
            [(1, "error".to_string()), (2, "cancel".to_string())]
        );
        assert_eq!(store.last_frame("c").await.unwrap(), Some((2, 2000)));
        assert_eq!(
            store.search("c", &["division".into()], 10).await.unwrap(),
            [1]
        );
        assert_eq!(store.search("b", &["olga".into()], 10).await.unwrap(), [0]);
        assert!(
            store
                .search("b", &["smith".into()], 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_store_of_an_older_gateway_gets_the_new_columns() {
        let dir = tempfile::tempdir().unwrap();
        {
            let url = format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("recordings.sqlite3").display()
            );
            sqlx::any::install_default_drivers();
            let pool = AnyPoolOptions::new().connect(&url).await.unwrap();
            for statement in SCHEMA {
                sqlx::query(*statement).execute(&pool).await.unwrap();
            }
            sqlx::query("INSERT INTO tollgate_sessions VALUES ('old', '2026-01-01T00:00:00Z', 5, NULL, 'dave', 'person', 'payments', 'x')")
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query(r#"INSERT INTO tollgate_frames VALUES ('old', 0, 0, 'statement', '{"text":"TRUNCATE payments","decision":"refused","approval":null}')"#)
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
        let store = Store::open("", dir.path()).await.unwrap();
        let found = store
            .list(&SessionQuery {
                words: vec!["truncate".into()],
                ..SessionQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(
            ids(&found),
            ["old"],
            "frames written before the search column are searched too"
        );
        // The background backfill gives the old frame its mark and its
        // session the counts, once: a second gateway opening the store
        // adds nothing.
        let counts = |s: SessionSummary| (s.statements, s.refused, s.errors, s.frames);
        let mut backfilled = false;
        for _ in 0..100 {
            if counts(store.summary_by_id("old").await.unwrap().unwrap()) == (1, 1, 0, 1) {
                backfilled = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(backfilled, "the old session got its counts");
        assert_eq!(store.markers("old", 10).await.unwrap()[0].mark, "refused");
        let again = Store::open("", dir.path()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(again);
        store.frame("old", frame(1, "error", json!({ "sqlstate": "42501" })));
        store.flush().await;
        let summary = store.summary_by_id("old").await.unwrap().unwrap();
        assert_eq!(counts(summary), (1, 1, 1, 2));
    }
}
