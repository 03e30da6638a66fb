//! What the gateway knows of an upstream database: its relations and
//! columns (to resolve names the way the session's `search_path` does), its
//! built-in functions, and which tables and columns hold cardholder data.
//!
//! Read over the gateway's own side connection, kept as an immutable
//! [`Snapshot`] that sessions share; marked stale after DDL through the
//! gateway (and after `max_age`), then re-read before the next decision.
//!
//! Cardholder tags come from the connection's configuration and from
//! column names (`pan`, `card_number`, `cvv`, `track2` ...). Card data
//! discovery by sampling values extends this (masking issue).

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
    /// Names of pg_catalog functions.
    pub builtins: HashSet<String>,
    /// The role's default `search_path`, as schemas (`$user` expanded).
    pub default_path: Vec<String>,
    /// The upstream role (what `$user` means).
    pub user: String,
    loaded: Option<Instant>,
}

impl Snapshot {
    /// The relation `schema.name`.
    pub fn table(&self, schema: &str, name: &str) -> Option<&TableInfo> {
        self.tables.get(&(schema.to_string(), name.to_string()))
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
    /// `schema.table.column`.
    pub qualified: String,
    /// What it holds.
    pub kind: ColumnKind,
}

/// The catalog of one connection.
pub struct Catalog {
    upstream: Arc<Upstream>,
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

const TABLES_SQL: &str = "SELECT n.nspname, c.relname, a.attname, c.oid, a.attnum \
     FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') \
       AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp_' \
     ORDER BY 1, 2, a.attnum";
const BUILTINS_SQL: &str = "SELECT DISTINCT proname FROM pg_catalog.pg_proc \
     WHERE pronamespace = 'pg_catalog'::regnamespace";
const SETTINGS_SQL: &str = "SELECT current_user, current_setting('search_path')";

impl Catalog {
    /// The catalog of `upstream`; `tagged` lists config cardholder tags.
    pub fn new(upstream: Arc<Upstream>, tagged: Vec<String>) -> Catalog {
        Catalog {
            upstream,
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
        for row in conn.query(TABLES_SQL).await? {
            let [Some(schema), Some(name), column, Some(oid), attnum] = row.as_slice() else {
                continue;
            };
            let entry = tables
                .entry((schema.clone(), name.clone()))
                .or_insert(TableInfo {
                    columns: Vec::new(),
                    cardholder: false,
                });
            if let Some(column) = column {
                let system = schema == "pg_catalog" || schema == "information_schema";
                let qualified = format!("{schema}.{name}.{column}");
                let kind = match column_kind(column) {
                    _ if system => ColumnKind::Plain,
                    ColumnKind::Plain if self.tagged.contains(&qualified) => ColumnKind::Tagged,
                    kind => kind,
                };
                entry
                    .columns
                    .push((column.clone(), kind != ColumnKind::Plain));
                if let (Ok(oid), Some(Ok(attnum))) =
                    (oid.parse::<u32>(), attnum.as_deref().map(str::parse::<i16>))
                {
                    by_oid.insert((oid, attnum), ColumnInfo { qualified, kind });
                }
            }
        }
        for ((schema, name), table) in &mut tables {
            table.cardholder = table.columns.iter().any(|(_, tag)| *tag)
                || self.tagged.contains(&format!("{schema}.{name}"));
        }
        let builtins = conn
            .query(BUILTINS_SQL)
            .await?
            .into_iter()
            .filter_map(|mut row| row.pop().flatten())
            .collect();
        let default_path = super::sql::split_path(&path)
            .into_iter()
            .map(|s| if s == "$user" { user.clone() } else { s })
            .collect();
        Ok(Snapshot {
            tables,
            by_oid,
            builtins,
            default_path,
            user,
            loaded: Some(Instant::now()),
        })
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
                    conn.query(&format!("EXPLAIN (FORMAT JSON) {sql}\n")).await
                } else {
                    // Planned generically: the parameter values are not known yet.
                    let nulls = vec!["NULL"; params as usize].join(", ");
                    match conn
                        .query(&format!("PREPARE tollgate_estimate AS {sql}\n"))
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
    fn explain_rows() {
        assert_eq!(
            plan_rows(r#"[{"Plan": {"Node Type": "Seq Scan", "Plan Rows": 10000}}]"#),
            Some(10000)
        );
        assert_eq!(plan_rows("[]"), None);
    }
}
