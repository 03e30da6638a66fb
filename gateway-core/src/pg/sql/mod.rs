//! What a SQL statement does, as PostgreSQL's own grammar sees it.
//!
//! `analyze` parses a message's SQL with `pg_query` (libpg_query: the
//! PostgreSQL 18 parser compiled into the gateway) and walks the *whole*
//! tree (`walk.rs`), so a `DELETE` inside a CTE, the body of a `PREPARE` or a
//! `CREATE RULE` action is seen like a top-level one. The result lists each
//! *access*: an action on a table, a function or the connection, with the
//! columns named, whether a `DELETE`/`UPDATE` is restricted by a `WHERE` and
//! whether a read is bounded by a `LIMIT`.
//!
//! Parsing costs tens of microseconds; the analysis of a statement does not
//! depend on its literal values (with the exceptions marked
//! [`Analysis::literal_sensitive`]), so [`ShapeCache`] keys it by the
//! statement's token stream with literals blanked out (`scan_tokens`, about
//! 1 µs): pgbench's `... WHERE aid = 4711` and `... WHERE aid = 815` share one
//! analysis.

mod walk;

pub(crate) use walk::{
    privileged_function, readable_encoding, session_setting, setting_on, split_path,
};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pg_query::protobuf::Token;

/// What an access does. The names are the Cedar action ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Reads rows (SELECT, RETURNING, the source of INSERT ... SELECT).
    Read,
    /// Inserts or updates rows.
    Write,
    /// Deletes rows.
    Delete,
    /// Creates, changes or removes schema objects (incl. TRUNCATE).
    Ddl,
    /// COPY ... TO STDOUT.
    CopyOut,
    /// COPY ... FROM STDIN.
    CopyIn,
    /// Calls a routine that is not on the gateway's allow-list of built-ins
    /// (a user-defined function or operator, a built-in with side effects).
    Call,
    /// Runs or installs code the gateway cannot read: DO blocks, CALL of a
    /// procedure, CREATE FUNCTION/PROCEDURE/TRIGGER/RULE/EVENT TRIGGER.
    Code,
    /// Administration: roles, grants, server files and programs, settings
    /// of the server, privilege changes of the session.
    Admin,
    /// Session and transaction control: BEGIN, SET, SHOW, PREPARE, FETCH ...
    Session,
}

impl Action {
    /// The Cedar action id.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Delete => "delete",
            Action::Ddl => "ddl",
            Action::CopyOut => "copy_out",
            Action::CopyIn => "copy_in",
            Action::Call => "call",
            Action::Code => "code",
            Action::Admin => "admin",
            Action::Session => "session",
        }
    }
}

/// A name as written in the statement: `schema.name` or just `name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectName {
    /// The schema when qualified.
    pub schema: Option<String>,
    /// The object's name (already case-folded by the parser).
    pub name: String,
}

impl std::fmt::Display for ObjectName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// What an access is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A table, view or other relation.
    Table(ObjectName),
    /// A function or procedure.
    Function(ObjectName),
    /// The connection as a whole (DO blocks, settings, transaction control).
    Connection,
    /// `EXECUTE name`: the accesses of the statement prepared under `name`.
    Prepared(String),
}

/// A column reference: `[qualifier.]name`, or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnRef {
    /// A named column, attributed to this access's table.
    Named(String),
    /// Every column (`*` or `t.*`).
    All,
    /// An unqualified name that may belong to this table (kept if the
    /// table has such a column).
    Maybe(String),
}

/// One thing a statement does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// What.
    pub action: Action,
    /// On what.
    pub target: Target,
    /// The PostgreSQL command it comes from, e.g. `DELETE`, `DROP TABLE`.
    pub command: &'static str,
    /// Columns referenced (reads) or assigned (writes) where known.
    pub columns: Vec<ColumnRef>,
    /// For DELETE/UPDATE: a WHERE clause that refers to a column.
    pub has_where: bool,
    /// For reads: bounded by LIMIT/FETCH FIRST (or the statement returns
    /// no rows, like plain EXPLAIN).
    pub has_limit: bool,
    /// `ONLY t`: inheritance children are not included.
    pub only: bool,
    /// Columns whose values leave in a computed or stored form (see
    /// `derived` in the walk): masking cannot recognise them there.
    pub derived: Vec<ColumnRef>,
}

/// A change of the session's `search_path` made by a statement. Only
/// the forms the gateway can follow exactly are analysed into one; every
/// other form (SET LOCAL, a computed `set_config`) is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathChange {
    /// Set to these schemas.
    Set(Vec<String>),
    /// Back to the session's default (RESET, SET ... TO DEFAULT, RESET ALL).
    Reset,
}

/// Session state a statement changes, which the gateway tracks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `SET search_path`, `RESET search_path`, `RESET ALL`: followed only
    /// when the statement runs alone in an idle session (see the guard).
    SearchPath(PathChange),
    /// `PREPARE name AS ...` (the statement's accesses are this statement's).
    Prepare(String),
    /// `DEALLOCATE name` (`None`: ALL).
    Deallocate(Option<String>),
    /// `DISCARD ALL` (also resets `search_path`, so it runs alone too).
    DiscardAll,
    /// Runs code the gateway cannot see into (a function, DO, CALL), which
    /// could change session settings.
    Opaque,
    /// `SET tollgate.reason = '...'` (`None`: RESET): the requester's reason
    /// shown on approval requests.
    Reason(Option<String>),
}

/// One statement of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementInfo {
    /// Its command tag, e.g. `SELECT`.
    pub command: &'static str,
    /// What it does.
    pub accesses: Vec<Access>,
    /// What session state it changes.
    pub effects: Vec<Effect>,
    /// Highest `$n` parameter used.
    pub params: u32,
    /// A plain read whose row count EXPLAIN can estimate.
    pub estimable: bool,
    /// `COPY ... TO STDOUT`: what the rows hold, for masking.
    pub copy_out: Option<CopyOut>,
    /// Operators the statement uses, as written (`+`, `pg_catalog.~~`):
    /// one the catalog knows as user-defined is a call.
    pub operators: Vec<ObjectName>,
    /// Why the gateway cannot follow this statement, if it cannot: it is
    /// refused before anything is sent (fail closed).
    pub unsupported: Option<String>,
    /// Names used as `q.name` on a subquery, CTE or join `q`: when a
    /// function of that name exists, PostgreSQL may read it as `name(q)`.
    pub notation: Vec<String>,
}

/// The rows of a `COPY ... TO STDOUT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOut {
    /// The table (`None` for `COPY (query)`).
    pub table: Option<ObjectName>,
    /// The columns in order; empty for all of them.
    pub columns: Vec<String>,
    /// Row format.
    pub format: CopyFormat,
    /// Field delimiter.
    pub delimiter: u8,
    /// How NULL is written.
    pub null: String,
    /// CSV quote character.
    pub quote: u8,
    /// CSV escape character (the quote unless set).
    pub escape: u8,
}

/// COPY's row format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    /// Tab-separated text with backslash escapes.
    Text,
    /// CSV.
    Csv,
    /// PostgreSQL's binary COPY format.
    Binary,
}

/// A client encoding the gateway reads exactly (see `pg::settings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// UTF-8 (`UTF8`, `UNICODE`).
    Utf8,
    /// ISO 8859-1 (`LATIN1`): each byte is the character of that number.
    Latin1,
}

impl Encoding {
    /// PostgreSQL's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Utf8 => "UTF8",
            Encoding::Latin1 => "LATIN1",
        }
    }

    /// Text from the client's bytes; `None` if they are not valid here.
    pub fn decode(self, bytes: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            Encoding::Utf8 => std::str::from_utf8(bytes).ok().map(Into::into),
            Encoding::Latin1 if bytes.is_ascii() => std::str::from_utf8(bytes).ok().map(Into::into),
            Encoding::Latin1 => Some(
                bytes
                    .iter()
                    .map(|&b| char::from(b))
                    .collect::<String>()
                    .into(),
            ),
        }
    }
}

/// Whether `sql` could read differently under another
/// `standard_conforming_strings` or client encoding: it has a byte outside
/// ASCII, or a backslash (which escapes a quote in `'...'` when standard
/// strings are off). Plain ASCII without a backslash reads the same in
/// every setting PostgreSQL allows, so only such statements may be read
/// while the session's settings are still being reported.
pub fn setting_sensitive(sql: &str) -> bool {
    sql.bytes().any(|b| b >= 0x80 || b == b'\\')
}

/// The analysis of one message's SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    /// Its statements, in order (empty for an empty query).
    pub statements: Vec<StatementInfo>,
    /// Depends on literal values (a SET or `set_config`), so not cached.
    pub literal_sensitive: bool,
    /// Byte offsets of the literals whose value cannot change this
    /// analysis; a cached analysis is reused only for a statement whose
    /// other literals are the same.
    pub safe_literals: Vec<u32>,
}

/// Why SQL could not be analysed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    /// The parser rejected it.
    #[error("the statement does not parse: {0}")]
    Syntax(String),
    /// The statement nests deeper than the gateway follows.
    #[error("the statement nests deeper than {0} levels")]
    TooDeep(usize),
}

/// Stack for one analysis. Parsing, decoding and walking a tree recurse
/// per level of nesting, deeper than a runtime worker's 2 MiB allow for
/// hostile statements; PostgreSQL's own depth check expects the parser to
/// run at the base of its thread. So a cache miss is analysed on a thread
/// of its own (tens of microseconds, next to the parse itself).
const ANALYSIS_STACK: usize = 64 * 1024 * 1024;

/// Parse and analyse `sql` (uncached).
pub fn analyze(sql: &str) -> Result<Analysis, SqlError> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("tollgate-sql".into())
            .stack_size(ANALYSIS_STACK)
            .spawn_scoped(scope, || analyze_here(sql))
            .map_err(|e| SqlError::Syntax(format!("no thread to analyse the statement: {e}")))?
            .join()
            .unwrap_or_else(|_| Err(SqlError::Syntax("the analysis failed".into())))
    })
}

fn analyze_here(sql: &str) -> Result<Analysis, SqlError> {
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::default())
        .map_err(|e| SqlError::Syntax(parse_error_text(e)))?;
    let tree = serde_json::to_value(&parsed.protobuf)
        .map_err(|e| SqlError::Syntax(format!("unreadable parse tree: {e}")))?;
    let mut analysis = walk::analysis(&tree)?;
    analysis.safe_literals = walk::safe_literals(&tree);
    Ok(analysis)
}

fn parse_error_text(error: pg_query::Error) -> String {
    let text = match error {
        pg_query::Error::Parse(message) => message,
        other => other.to_string(),
    };
    if text.contains("recursion limit") || text.len() > 300 {
        "the statement nests too deeply for the gateway to check".to_string()
    } else {
        text
    }
}

/// The statement as records keep it: PostgreSQL's own normaliser replaces
/// every literal with `$n` (so no value the caller typed, a card number in
/// a WHERE clause or a password in ALTER ROLE, is kept), then the record
/// mask covers what a comment could hold. A statement that does not parse
/// is not kept at all.
pub fn redact(sql: &str) -> String {
    match pg_query::normalize(sql) {
        Ok(text) => crate::masking::for_record(&text),
        Err(_) => format!("<statement that does not parse, {} bytes>", sql.len()),
    }
}

/// The statement's shape: its tokens with every literal blanked out and
/// comments dropped. `None` when it does not even scan.
pub fn shape(sql: &str) -> Option<String> {
    shape_and_literals(sql).map(|(key, _)| key)
}

/// The shape and the literals it blanked: (byte offset, text) each.
fn shape_and_literals(sql: &str) -> Option<(String, Vec<(u32, &str)>)> {
    let tokens = pg_query::scan_tokens(sql).ok()?;
    let mut key = String::with_capacity(sql.len());
    let mut literals = Vec::new();
    for token in tokens {
        let kind = Token::try_from(token.token).unwrap_or(Token::Nul);
        let text = sql.get(token.start as usize..token.end as usize)?;
        match kind {
            Token::SqlComment | Token::CComment => continue,
            Token::Sconst
            | Token::Usconst
            | Token::Iconst
            | Token::Fconst
            | Token::Bconst
            | Token::Xconst => {
                key.push('\u{1}');
                literals.push((token.start as u32, text));
            }
            _ => key.push_str(text),
        }
        key.push('\u{0}');
    }
    Some((key, literals))
}

/// A cached analysis and the literals a statement must repeat to reuse it
/// (`None`: a literal whose value cannot change the analysis).
#[derive(Debug)]
struct Entry {
    analysis: Arc<Analysis>,
    literals: Vec<Option<Box<str>>>,
}

impl Entry {
    fn new(analysis: Arc<Analysis>, literals: &[(u32, &str)]) -> Entry {
        let literals = literals
            .iter()
            .map(|(at, text)| {
                (analysis.safe_literals.binary_search(at).is_err()).then(|| Box::from(*text))
            })
            .collect();
        Entry { analysis, literals }
    }

    fn fits(&self, literals: &[(u32, &str)]) -> bool {
        self.literals.len() == literals.len()
            && self
                .literals
                .iter()
                .zip(literals)
                .all(|(want, (_, text))| want.as_deref().is_none_or(|want| want == *text))
    }
}

/// Analyses keyed by shape, bounded in size. A cached analysis is reused
/// only when the literals that differ are in positions proven not to
/// change it (see [`Analysis::safe_literals`]): `EXPLAIN (ANALYZE 0)` and
/// `EXPLAIN (ANALYZE 1)` share a shape, not an analysis.
#[derive(Debug)]
pub struct ShapeCache {
    entries: Mutex<HashMap<String, Entry>>,
    capacity: usize,
}

impl ShapeCache {
    /// A cache of at most `capacity` shapes.
    pub fn new(capacity: usize) -> Self {
        ShapeCache {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The analysis of `sql`, from the cache when a statement of the same
    /// shape was seen before.
    pub fn analyze(&self, sql: &str) -> Result<Arc<Analysis>, SqlError> {
        let shaped = shape_and_literals(sql);
        if let Some((key, literals)) = &shaped
            && let Some(hit) = self.lock().get(key)
            && hit.fits(literals)
        {
            return Ok(hit.analysis.clone());
        }
        let analysis = Arc::new(analyze(sql)?);
        if let Some((key, literals)) = shaped
            && !analysis.literal_sensitive
        {
            let mut entries = self.lock();
            if entries.len() >= self.capacity {
                // Simple and bounded: start over rather than track recency.
                entries.clear();
            }
            entries.insert(key, Entry::new(analysis.clone(), &literals));
        }
        Ok(analysis)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests;
