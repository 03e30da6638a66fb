//! What the gateway knows of an upstream database: its relations and
//! columns (to resolve names the way the session's `search_path` does), its
//! built-in functions, and which tables and columns hold cardholder data.
//!
//! Read over the gateway's own side connection, kept as an immutable
//! [`Snapshot`] that sessions share; marked stale after DDL through the
//! gateway (and after `max_age`), then re-read before the next decision.
//!
//! Cardholder tags come from the connection's configuration, from column
//! names (`pan`, `card_number`, `cvv`, `track2` ...) and from card data
//! discovery: the first time a table is seen, a sample of its text-like
//! and numeric columns is read and scanned for PANs and track data.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::side::{SideConn, SideError};
use crate::upstream::Upstream;

/// How long a snapshot is trusted when no DDL went through the gateway
/// (DDL can also come from elsewhere).
const MAX_AGE: Duration = Duration::from_secs(60);

/// A relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// Columns in attribute order, each with its cardholder tag.
    pub columns: Vec<(String, bool)>,
    /// Holds cardholder data.
    pub cardholder: bool,
    /// Columns whose values are masked as a whole (PANs, sensitive
    /// authentication data, configured): computing on them would let the
    /// value leave unrecognised.
    pub protected: Vec<String>,
    /// Generated columns (COPY leaves them out unless listed).
    pub generated: Vec<String>,
    /// The relation's OID.
    pub oid: u32,
}

impl TableInfo {
    /// The column's cardholder tag, if the table has that column.
    pub fn column(&self, name: &str) -> Option<bool> {
        self.columns
            .iter()
            .find(|(c, _)| c == name)
            .map(|(_, tag)| *tag)
    }
}

/// One reading of the catalog.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// (schema, name) -> relation.
    pub tables: HashMap<(String, String), TableInfo>,
    /// (table OID, attribute number) -> column.
    pub by_oid: HashMap<(u32, i16), ColumnInfo>,
    /// Names of built-in functions on the allow-list: created by initdb
    /// (OID below 16384) in `pg_catalog` or `information_schema`, and
    /// without side effects (every overload immutable or stable, and none
    /// that runs SQL text or reads beyond the tables a statement names), or
    /// one of the few volatile ones known to be harmless.
    pub builtins: HashSet<String>,
    /// Names of functions created after initdb, in any schema: an
    /// unqualified call of such a name may resolve to one of them.
    pub user_functions: HashSet<String>,
    /// Names of operators created after initdb.
    pub user_operators: HashSet<String>,
    /// Every function name, built-in or not (for function-call notation).
    pub functions: HashSet<String>,
    /// A table outside the system schemas holds cardholder data.
    pub cardholder_data: bool,
    /// Relation OID -> (schema, name), for checking what a result's
    /// columns come from.
    pub by_table_oid: HashMap<u32, (String, String)>,
    /// The role's default `search_path`, as schemas (`$user` expanded).
    pub default_path: Vec<String>,
    /// The upstream role (what `$user` means).
    pub user: String,
    loaded: Option<Instant>,
}

impl Snapshot {
    /// Relations holding cardholder data, as `schema.name`, sorted (system
    /// relations that hold values, such as `pg_catalog.pg_statistic`, included).
    pub fn cardholder_tables(&self) -> Vec<String> {
        let mut tables: Vec<String> = self
            .tables
            .iter()
            .filter(|(_, t)| t.cardholder)
            .map(|((schema, name), _)| format!("{schema}.{name}"))
            .collect();
        tables.sort();
        tables
    }

    /// The relation `schema.name`.
    pub fn table(&self, schema: &str, name: &str) -> Option<&TableInfo> {
        self.tables.get(&(schema.to_string(), name.to_string()))
    }

    /// How long ago it was read.
    pub fn age(&self) -> Duration {
        self.loaded.map_or(Duration::MAX, |t| t.elapsed())
    }

    /// The column `schema.table.column`.
    pub fn column(&self, schema: &str, table: &str, column: &str) -> Option<&ColumnInfo> {
        self.by_oid
            .values()
            .find(|c| c.schema == schema && c.table == table && c.column == column)
    }

    /// Schemas that hold a relation called `name`.
    pub fn schemas_with(&self, name: &str) -> Vec<&str> {
        let mut schemas: Vec<&str> = self
            .tables
            .keys()
            .filter(|(_, n)| n == name)
            .map(|(s, _)| s.as_str())
            .collect();
        schemas.sort_unstable();
        schemas
    }
}

/// Whether a column's name says it holds card data (a PAN or sensitive
/// authentication data).
pub fn cardholder_name(column: &str) -> bool {
    column_kind(column) != ColumnKind::Plain
}

/// What a column holds, as far as its name and the configuration say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// Named as a PAN (`pan`, `card_number` ...).
    Pan,
    /// Named as sensitive authentication data (`cvv`, `pin_block`, `track2` ...).
    Sad,
    /// Marked as cardholder data in the configuration, name unknown.
    Tagged,
    /// Discovery found card data inside its values (free text, JSON):
    /// cardholder data for the policy, masked by content detection.
    Contains,
    /// Nothing says it holds card data.
    Plain,
}

fn column_kind(name: &str) -> ColumnKind {
    if crate::masking::sad_label(name) {
        ColumnKind::Sad
    } else if crate::masking::pan_label(name) {
        ColumnKind::Pan
    } else {
        ColumnKind::Plain
    }
}

/// A column found by its table's OID and attribute number (how a result's
/// RowDescription names it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// Column name.
    pub column: String,
    /// `schema.table.column`, for messages and masking records.
    pub qualified: String,
    /// What it holds.
    pub kind: ColumnKind,
    /// Its type's OID.
    pub type_id: u32,
}

/// Types whose text can hold a PAN: text, varchar, bpchar, json, jsonb,
/// int8, numeric, xml and text/varchar arrays.
const SAMPLED_TYPES: &[u32] = &[25, 1043, 1042, 114, 3802, 20, 1700, 142, 1009, 1015];
/// A table to sample: (schema, table, [(attribute number, column)]).
type SampleTarget = (String, String, Vec<(i16, String)>);

/// Rows sampled per table by discovery.
const SAMPLE_ROWS: usize = 200;

/// What sampled values say a column holds: PANs (most values are one),
/// card data inside other text, or nothing.
pub fn classify(values: impl Iterator<Item = String>) -> Option<ColumnKind> {
    let (mut total, mut whole, mut containing) = (0usize, 0usize, 0usize);
    for value in values {
        total += 1;
        let mut bytes = value.clone().into_bytes();
        let hits = crate::masking::mask_text(
            &mut bytes,
            crate::masking::Keep::LastFour,
            crate::masking::Fill::Star,
        );
        if hits.is_empty() {
            continue;
        }
        containing += 1;
        let digits: Vec<u8> = value.bytes().filter(u8::is_ascii_digit).collect();
        let only_pan = value
            .trim()
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b' ' || b == b'-');
        if only_pan && crate::masking::pan::valid(&digits) {
            whole += 1;
        }
    }
    if total > 0 && whole * 5 >= total * 4 {
        Some(ColumnKind::Pan)
    } else if containing > 0 {
        Some(ColumnKind::Contains)
    } else {
        None
    }
}

/// The card data inventory of a snapshot: one line per cardholder column,
/// sorted, with what says so.
pub fn inventory(snapshot: &Snapshot) -> String {
    let mut lines: Vec<String> = snapshot
        .by_oid
        .values()
        .filter(|c| c.kind != ColumnKind::Plain)
        .map(|c| {
            let why = match c.kind {
                ColumnKind::Pan => "PAN",
                ColumnKind::Sad => "sensitive authentication data",
                ColumnKind::Tagged => "cardholder data (configuration)",
                ColumnKind::Contains => "holds card data in its values",
                ColumnKind::Plain => "",
            };
            format!("{}\t{why}\n", c.qualified)
        })
        .collect();
    lines.sort();
    let tables = snapshot.cardholder_tables();
    format!(
        "cardholder tables: {}\n{}",
        if tables.is_empty() {
            "none".to_string()
        } else {
            tables.join(", ")
        },
        lines.concat()
    )
}

/// What [`Catalog::current`] found.
pub enum Current {
    /// The snapshot, and whether the hook just waited for a refresh.
    Ready(Arc<Snapshot>, bool),
    /// Wait for this refresh, then ask again.
    Wait(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>),
    /// The catalog was never read and the refresh failed.
    Unreadable,
}

/// The catalog of one connection.
pub struct Catalog {
    upstream: Arc<Upstream>,
    /// Sample values to find card data nobody labelled.
    discovery: bool,
    /// Table OID -> (attribute number -> what sampling found); a table with
    /// rows is sampled once.
    discovered: std::sync::Mutex<HashMap<u32, HashMap<i16, ColumnKind>>>,
    /// `schema.table` or `schema.table.column` entries the config marks as cardholder data.
    tagged: Vec<String>,
    current: RwLock<Option<Arc<Snapshot>>>,
    stale: std::sync::atomic::AtomicBool,
    side: tokio::sync::Mutex<Option<SideConn>>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("upstream", &self.upstream.address())
            .finish()
    }
}

const TABLES_SQL: &str = "SELECT n.nspname, c.relname, a.attname, c.oid, a.attnum, c.relkind, a.atttypid, a.attgenerated \
     FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') \
       AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp_' \
     ORDER BY 1, 2, a.attnum";
const FUNCTIONS_SQL: &str = "SELECT p.proname, \
       bool_or(p.oid < 16384 AND n.nspname IN ('pg_catalog', 'information_schema')), \
       bool_and(p.provolatile <> 'v') FILTER (WHERE p.oid < 16384), \
       bool_or(p.oid >= 16384) \
     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     GROUP BY p.proname";
const OPERATORS_SQL: &str =
    "SELECT DISTINCT oprname FROM pg_catalog.pg_operator WHERE oid >= 16384";

/// Built-ins that are stable or immutable yet show other sessions'
/// statements or the server's settings files. Not on the allow-list (nor
/// is any of the analyser's privileged functions: server files, SQL text
/// run by a function, other sessions).
const UNSAFE_STABLE: &[&str] = &[
    "pg_stat_get_activity",
    "pg_stat_get_backend_activity",
    "pg_get_backend_memory_contexts",
    "pg_prepared_statement",
    "pg_cursor",
    "pg_settings_get_flags",
    "pg_show_all_settings",
    "pg_get_statisticsobjdef_expressions",
];

/// Volatile built-ins without side effects beyond the statement itself.
const SAFE_VOLATILE: &[&str] = &[
    "random",
    "random_normal",
    "clock_timestamp",
    "timeofday",
    "gen_random_uuid",
    "uuid_generate_v4",
    "txid_current",
    "txid_current_if_assigned",
    "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
    "pg_backend_pid",
    "pg_postmaster_start_time",
    "pg_conf_load_time",
    "inet_client_addr",
    "inet_client_port",
    "inet_server_addr",
    "inet_server_port",
    "pg_is_in_recovery",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
];

/// System relations whose rows hold data values or other sessions' SQL
/// with its literals: planner statistics and activity views. They are
/// treated as cardholder data (their columns masked by content detection).
const DATA_HOLDING_SYSTEM_RELATIONS: &[&str] = &[
    "pg_statistic",
    "pg_stats",
    "pg_statistic_ext",
    "pg_statistic_ext_data",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_stat_activity",
    "pg_stat_statements",
    "pg_stat_statements_info",
    "pg_prepared_statements",
    "pg_cursors",
    "pg_locks",
];
const SETTINGS_SQL: &str = "SELECT current_user, current_setting('search_path')";

impl Catalog {
    /// The catalog of `upstream`; `tagged` lists config cardholder tags.
    pub fn new(upstream: Arc<Upstream>, tagged: Vec<String>, discovery: bool) -> Catalog {
        Catalog {
            upstream,
            discovery,
            discovered: std::sync::Mutex::new(HashMap::new()),
            tagged,
            current: RwLock::new(None),
            stale: std::sync::atomic::AtomicBool::new(true),
            side: tokio::sync::Mutex::new(None),
        }
    }

    /// The snapshot in force, if one was read and is not stale.
    pub fn fresh(&self) -> Option<Arc<Snapshot>> {
        if self.stale.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let current = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let young = current.loaded.is_some_and(|t| t.elapsed() < MAX_AGE);
        young.then_some(current)
    }

    /// The snapshot a statement hook decides with. When the snapshot is
    /// stale, the first call returns a refresh to wait for (`waited`
    /// remembers it); the call after the wait takes the last snapshot even
    /// if the refresh failed, so a dead side connection never makes a
    /// session wait forever.
    pub fn current(self: &Arc<Self>, waited: &mut bool) -> Current {
        if let Some(snapshot) = self.fresh() {
            let after_wait = std::mem::take(waited);
            return Current::Ready(snapshot, after_wait);
        }
        if !*waited {
            *waited = true;
            let catalog = self.clone();
            return Current::Wait(Box::pin(async move {
                if let Err(error) = catalog.refresh().await {
                    tracing::warn!(
                        connection = %catalog.upstream.config.name,
                        %error,
                        "cannot read the upstream catalog"
                    );
                }
            }));
        }
        *waited = false;
        match self.last() {
            Some(stale) => Current::Ready(stale, true),
            None => Current::Unreadable,
        }
    }

    /// The last snapshot read, even if stale.
    pub fn last(&self) -> Option<Arc<Snapshot>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Mark the snapshot stale (after DDL).
    pub fn invalidate(&self) {
        self.stale.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Re-read the catalog unless another caller just did.
    pub async fn refresh(&self) -> Result<Arc<Snapshot>, SideError> {
        let mut side = self.side.lock().await;
        if let Some(fresh) = self.fresh() {
            return Ok(fresh);
        }
        let result = async {
            let conn = open_side(&mut side, &self.upstream).await?;
            self.stale
                .store(false, std::sync::atomic::Ordering::Release);
            let snapshot = self.read(conn).await?;
            Ok::<_, SideError>(snapshot)
        };
        match tokio::time::timeout(self.upstream.connect_timeout() * 2, result).await {
            Ok(Ok(snapshot)) => {
                let snapshot = Arc::new(snapshot);
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(snapshot.clone());
                Ok(snapshot)
            }
            Ok(Err(error)) => {
                *side = None;
                self.invalidate();
                Err(error)
            }
            Err(_) => {
                *side = None;
                self.invalidate();
                Err(SideError::Io(std::io::ErrorKind::TimedOut.into()))
            }
        }
    }

    async fn read(&self, conn: &mut SideConn) -> Result<Snapshot, SideError> {
        let settings = conn.query(SETTINGS_SQL).await?;
        let (user, path) = match settings.first().map(Vec::as_slice) {
            Some([Some(user), Some(path)]) => (user.clone(), path.clone()),
            _ => {
                return Err(SideError::Protocol(
                    "unexpected answer to the settings query".into(),
                ));
            }
        };
        let mut tables: HashMap<(String, String), TableInfo> = HashMap::new();
        let mut by_oid = HashMap::new();
        let mut to_sample: HashMap<u32, SampleTarget> = HashMap::new();
        for row in conn.query(TABLES_SQL).await? {
            let [
                Some(schema),
                Some(name),
                column,
                Some(oid),
                attnum,
                relkind,
                type_id,
                generated,
            ] = row.as_slice()
            else {
                continue;
            };
            let entry = tables
                .entry((schema.clone(), name.clone()))
                .or_insert(TableInfo {
                    columns: Vec::new(),
                    cardholder: false,
                    protected: Vec::new(),
                    generated: Vec::new(),
                    oid: oid.parse().unwrap_or(0),
                });
            if let Some(column) = column {
                let system = schema == "pg_catalog" || schema == "information_schema";
                let qualified = format!("{schema}.{name}.{column}");
                let holds_data = DATA_HOLDING_SYSTEM_RELATIONS.contains(&name.as_str())
                    && (system || name.starts_with("pg_stat_statements"));
                let kind = match column_kind(column) {
                    _ if holds_data => ColumnKind::Contains,
                    _ if system => ColumnKind::Plain,
                    ColumnKind::Plain if self.tagged.contains(&qualified) => ColumnKind::Tagged,
                    kind => kind,
                };
                entry
                    .columns
                    .push((column.clone(), kind != ColumnKind::Plain));
                if generated.as_deref().is_some_and(|g| !g.is_empty()) {
                    entry.generated.push(column.clone());
                }
                if let (Ok(oid), Some(Ok(attnum))) =
                    (oid.parse::<u32>(), attnum.as_deref().map(str::parse::<i16>))
                {
                    let sampled = !system
                        && matches!(relkind.as_deref(), Some("r" | "p" | "m"))
                        && type_id
                            .as_deref()
                            .and_then(|t| t.parse::<u32>().ok())
                            .is_some_and(|t| SAMPLED_TYPES.contains(&t));
                    if sampled {
                        to_sample
                            .entry(oid)
                            .or_insert_with(|| (schema.clone(), name.clone(), Vec::new()))
                            .2
                            .push((attnum, column.clone()));
                    }
                    let type_id = type_id.as_deref().and_then(|t| t.parse().ok()).unwrap_or(0);
                    by_oid.insert(
                        (oid, attnum),
                        ColumnInfo {
                            schema: schema.clone(),
                            table: name.clone(),
                            column: column.clone(),
                            qualified,
                            kind,
                            type_id,
                        },
                    );
                }
            }
        }
        if self.discovery {
            self.discover(conn, to_sample).await;
            let found = self.discovered.lock().unwrap_or_else(|e| e.into_inner());
            for ((oid, attnum), info) in &mut by_oid {
                if let Some(kind) = found.get(oid).and_then(|t| t.get(attnum))
                    && info.kind == ColumnKind::Plain
                {
                    info.kind = *kind;
                    if let Some(t) = tables.get_mut(&(info.schema.clone(), info.table.clone()))
                        && let Some(c) = t.columns.iter_mut().find(|(c, _)| *c == info.column)
                    {
                        c.1 = true;
                    }
                }
            }
        }
        for ((schema, name), table) in &mut tables {
            table.cardholder = table.columns.iter().any(|(_, tag)| *tag)
                || self.tagged.contains(&format!("{schema}.{name}"));
        }
        for info in by_oid.values() {
            if info.kind != ColumnKind::Plain
                && let Some(t) = tables.get_mut(&(info.schema.clone(), info.table.clone()))
            {
                t.protected.push(info.column.clone());
            }
        }
        let mut builtins = HashSet::new();
        let mut user_functions = HashSet::new();
        let mut functions = HashSet::new();
        for row in conn.query(FUNCTIONS_SQL).await? {
            let [Some(name), initdb, stable, user] = row.as_slice() else {
                continue;
            };
            functions.insert(name.clone());
            let yes = |v: &Option<String>| v.as_deref() == Some("t");
            if yes(user) {
                user_functions.insert(name.clone());
            }
            let safe = (yes(stable)
                && !UNSAFE_STABLE.contains(&name.as_str())
                && !super::sql::privileged_function(name))
                || SAFE_VOLATILE.contains(&name.as_str());
            if yes(initdb) && safe {
                builtins.insert(name.clone());
            }
        }
        let user_operators = conn
            .query(OPERATORS_SQL)
            .await?
            .into_iter()
            .filter_map(|mut row| row.pop().flatten())
            .collect();
        let default_path = super::sql::split_path(&path)
            .into_iter()
            .map(|s| if s == "$user" { user.clone() } else { s })
            .collect();
        let cardholder_data = tables.iter().any(|((schema, _), t)| {
            t.cardholder && schema != "pg_catalog" && schema != "information_schema"
        });
        let by_table_oid = tables
            .iter()
            .map(|((schema, name), t)| (t.oid, (schema.clone(), name.clone())))
            .collect();
        Ok(Snapshot {
            tables,
            by_oid,
            builtins,
            user_functions,
            user_operators,
            functions,
            cardholder_data,
            by_table_oid,
            default_path,
            user,
            loaded: Some(Instant::now()),
        })
    }

    /// Card data discovery: sample the text-like and numeric columns of
    /// every table not sampled before. A column whose values are PANs is
    /// tagged as a PAN column; one whose values hold card data (a PAN in
    /// free text or JSON, track data) as containing card data. A table that
    /// cannot be read is skipped (and tried again at the next refresh).
    async fn discover(&self, conn: &mut SideConn, to_sample: HashMap<u32, SampleTarget>) {
        let done: HashSet<u32> = self
            .discovered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        for (oid, (schema, table, columns)) in to_sample {
            if done.contains(&oid) || columns.is_empty() {
                continue;
            }
            let list = columns
                .iter()
                .map(|(_, c)| format!("{}::text", super::side::quote_ident(c)))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT {list} FROM {}.{} LIMIT {SAMPLE_ROWS}",
                super::side::quote_ident(&schema),
                super::side::quote_ident(&table)
            );
            let rows = match conn.query(&sql).await {
                Ok(rows) => rows,
                Err(error) => {
                    tracing::warn!(
                        table = %format!("{schema}.{table}"),
                        error = %crate::masking::for_record(&error.to_string()),
                        "card data discovery could not sample the table"
                    );
                    continue;
                }
            };
            let mut kinds = HashMap::new();
            for (i, (attnum, _)) in columns.iter().enumerate() {
                let values = rows.iter().filter_map(|r| r.get(i).cloned().flatten());
                if let Some(kind) = classify(values) {
                    kinds.insert(*attnum, kind);
                }
            }
            if !kinds.is_empty() {
                tracing::info!(
                    target: "tollgate::audit",
                    event = "discovery.found",
                    table = %format!("{schema}.{table}"),
                    columns = kinds.len(),
                );
            }
            // An empty table is sampled again at the next refresh.
            if !rows.is_empty() {
                self.discovered
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(oid, kinds);
            }
        }
    }

    /// `EXPLAIN (FORMAT JSON)` of `sql` with `search_path` set as given;
    /// the top plan node's row estimate. `params` placeholders are planned
    /// generically (their values are not known yet).
    pub async fn estimate(
        &self,
        sql: &str,
        path: &[String],
        params: u32,
        timeout: Duration,
    ) -> Result<i64, SideError> {
        let mut side = self.side.lock().await;
        let work = async {
            let conn = open_side(&mut side, &self.upstream).await?;
            let path = if path.is_empty() {
                "''".to_string()
            } else {
                path.iter()
                    .map(|s| super::side::quote_ident(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let begin = format!(
                "BEGIN READ ONLY; SET LOCAL search_path = {path}; SET LOCAL statement_timeout = {}",
                timeout.as_millis().max(1)
            );
            let mut rows = conn.query(&begin).await;
            let mut prepared = false;
            if rows.is_ok() {
                rows = if params == 0 {
                    conn.query_one(&format!("EXPLAIN (FORMAT JSON) {sql}\n"))
                        .await
                } else {
                    // Planned generically: the parameter values are not known yet.
                    let nulls = vec!["NULL"; params as usize].join(", ");
                    match conn
                        .query_one(&format!("PREPARE tollgate_estimate AS {sql}\n"))
                        .await
                    {
                        Ok(_) => {
                            prepared = true;
                            let explain = format!(
                                "SET LOCAL plan_cache_mode = force_generic_plan; \
                                 EXPLAIN (FORMAT JSON) EXECUTE tollgate_estimate({nulls})"
                            );
                            conn.query(&explain).await
                        }
                        Err(e) => Err(e),
                    }
                };
            }
            let _ = conn.query("ROLLBACK").await;
            if prepared {
                // Prepared statements outlive the transaction.
                let _ = conn.query("DEALLOCATE tollgate_estimate").await;
            }
            let rows = rows?;
            let plan = rows
                .first()
                .and_then(|r| r.first())
                .and_then(|v| v.as_deref())
                .ok_or_else(|| SideError::Protocol("EXPLAIN returned no plan".into()))?;
            plan_rows(plan)
                .ok_or_else(|| SideError::Protocol("EXPLAIN plan without a row estimate".into()))
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(error)) => {
                if matches!(
                    error,
                    SideError::Io(_) | SideError::Protocol(_) | SideError::Upstream(_)
                ) {
                    *side = None;
                }
                Err(error)
            }
            Err(_) => {
                // The connection is mid-query: drop it, open a new one next time.
                *side = None;
                Err(SideError::Io(std::io::ErrorKind::TimedOut.into()))
            }
        }
    }
}

/// The side connection, opened if there is none.
async fn open_side<'s>(
    side: &'s mut Option<SideConn>,
    upstream: &Upstream,
) -> Result<&'s mut SideConn, SideError> {
    if side.is_none() {
        *side = Some(SideConn::open(upstream).await?);
    }
    Ok(side.as_mut().expect("opened above"))
}

/// "Plan Rows" of the top node of an EXPLAIN (FORMAT JSON) answer.
fn plan_rows(json: &str) -> Option<i64> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let rows = value.get(0)?.get("Plan")?.get("Plan Rows")?;
    rows.as_i64()
        .or_else(|| rows.as_f64().map(|f| f.ceil() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_column_names() {
        for name in [
            "pan",
            "card_number",
            "CardNumber",
            "cc_num",
            "cvv",
            "cvv2",
            "track2",
            "pin_block",
            "primary_account_number",
        ] {
            assert!(cardholder_name(name), "{name}");
        }
        for name in [
            "company", "span", "expand", "order_no", "phone", "panel_id", "id", "cid",
        ] {
            assert!(!cardholder_name(name), "{name}");
        }
    }

    #[test]
    fn classify_sampled_values() {
        let values = |v: &[&str]| {
            v.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .into_iter()
        };
        assert_eq!(
            classify(values(&[
                "4111111111111111",
                "5555 5555 5555 4444",
                "378282246310005"
            ])),
            Some(ColumnKind::Pan)
        );
        assert_eq!(
            classify(values(&[
                "paid with 4111111111111111",
                "gift wrap",
                "call first"
            ])),
            Some(ColumnKind::Contains)
        );
        assert_eq!(
            classify(values(&[
                "1764061300001",
                "490154203237518",
                "ORD-9000000000000001"
            ])),
            None
        );
        assert_eq!(classify(values(&[])), None);
    }

    #[test]
    fn explain_rows() {
        assert_eq!(
            plan_rows(r#"[{"Plan": {"Node Type": "Seq Scan", "Plan Rows": 10000}}]"#),
            Some(10000)
        );
        assert_eq!(plan_rows("[]"), None);
    }
}
