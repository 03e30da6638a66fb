//! The tree walk behind [`super::analyze`].
//!
//! The parse tree comes as JSON (`pg_query`'s protobuf types serialised with
//! serde), which lets the walk descend into *every* field of every node:
//! statements the walk knows get their meaning (`DELETE` is a delete of its
//! target, `COPY ... TO STDOUT` a copy_out ...); everything else is searched
//! generically, so a table or function reference anywhere in the tree is
//! found, including the bodies of `PREPARE`, `CREATE RULE` and `EXPLAIN`.
//! A statement kind the walk does not know is an `admin` action: unknown
//! means privileged, never harmless.

use serde_json::Value;

use super::{
    Access, Action, Analysis, ColumnRef, CopyFormat, CopyOut, Effect, ObjectName, PathChange,
    SqlError, StatementInfo, Target,
};

/// Deeper than this, the statement is refused rather than followed.
const MAX_DEPTH: usize = 2000;

/// Built-in functions that reach outside the tables a statement names:
/// server files and programs, other sessions, dynamic SQL, configuration.
const PRIVILEGED_FUNCTIONS: &[&str] = &[
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_tmpdir",
    "pg_ls_archive_statusdir",
    "lo_import",
    "lo_export",
    "lo_get",
    "lo_put",
    "lo_from_bytea",
    "loread",
    "lowrite",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_logical_slot_get_changes",
    "pg_logical_slot_peek_changes",
    "pg_logical_emit_message",
    "pg_replication_origin_create",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_stat_reset",
    "pg_stat_statements_reset",
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "ts_stat",
    "dblink",
    "dblink_exec",
    "dblink_connect",
    "dblink_open",
    "dblink_send_query",
    "setval",
    "pg_import_system_collations",
];

/// A built-in that reaches outside the tables a statement names.
pub(crate) fn privileged_function(name: &str) -> bool {
    PRIVILEGED_FUNCTIONS.contains(&name)
}

/// Aggregates that return one row of a number or one value, not a list.
const SCALAR_AGGREGATES: &[&str] = &[
    "count", "sum", "avg", "min", "max", "bool_and", "bool_or", "every", "stddev", "variance",
];

pub(super) fn analysis(tree: &Value) -> Result<Analysis, SqlError> {
    let mut analysis = Analysis {
        statements: Vec::new(),
        literal_sensitive: false,
        safe_literals: Vec::new(),
    };
    for raw in array(tree, "stmts") {
        let mut walker = Walker::default();
        let stmt = &raw["stmt"];
        let (kind, body) = node(stmt).unwrap_or(("", &Value::Null));
        let command = walker.statement(kind, body, Ctx::top())?;
        let estimable = match kind {
            "SelectStmt" => body.get("into_clause").is_none_or(Value::is_null),
            "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => true,
            _ => false,
        };
        analysis.literal_sensitive |= walker.literal_sensitive;
        if walker.locks {
            // Row locks stop everyone else's writes: each read also writes.
            let locked: Vec<Access> = walker
                .accesses
                .iter()
                .filter(|a| a.action == Action::Read && matches!(a.target, Target::Table(_)))
                .map(|a| Access {
                    action: Action::Write,
                    command: "SELECT FOR UPDATE",
                    columns: Vec::new(),
                    derived: Vec::new(),
                    has_where: true,
                    ..a.clone()
                })
                .collect();
            walker.accesses.extend(locked);
        }
        if walker.unattributed_derived {
            // Fail closed: any table read may be where the value came from.
            for access in &mut walker.accesses {
                if matches!(access.action, Action::Read | Action::CopyOut) {
                    access.derived.push(ColumnRef::All);
                }
            }
        }
        analysis.statements.push(StatementInfo {
            command,
            accesses: walker.accesses,
            effects: walker.effects,
            params: walker.params,
            estimable,
            copy_out: walker.copy_out,
            operators: walker.operators,
            unsupported: walker.unsupported,
            notation: walker.notation,
        });
    }
    Ok(analysis)
}

/// Byte offsets of the literals whose value cannot change the analysis:
/// a constant compared with something (`=`, `<`, `IN (...)`, `BETWEEN`,
/// `LIKE`), inserted or assigned (`VALUES`, `UPDATE ... SET c = 5`), a bare
/// constant in a select list, a LIMIT or OFFSET count. Every other literal
/// (an EXPLAIN or COPY option, a cast to a reg* type, a `UESCAPE` character,
/// a function's argument) is part of the shape a cached analysis is
/// reused for.
pub(super) fn safe_literals(tree: &Value) -> Vec<u32> {
    let mut out = Vec::new();
    collect_safe(tree, &mut out);
    out.sort_unstable();
    out.dedup();
    out
}

fn collect_safe(value: &Value, out: &mut Vec<u32>) {
    match value {
        Value::Object(map) => {
            if let Some((kind, body)) = node(value) {
                safe_in(kind, body, out);
            }
            for child in map.values() {
                collect_safe(child, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_safe(v, out)),
        _ => {}
    }
}

fn safe_in(kind: &str, body: &Value, out: &mut Vec<u32>) {
    use pg_query::protobuf::AExprKind as K;
    let mut constant = |v: &Value| {
        if let Some(("AConst", c)) = node(v)
            && !c.get("isnull").and_then(Value::as_bool).unwrap_or(false)
            && let Some(at) = c.get("location").and_then(Value::as_u64)
        {
            out.push(at as u32);
        }
    };
    match kind {
        "AExpr" => {
            let op = K::try_from(body.get("kind").and_then(Value::as_i64).unwrap_or(0) as i32)
                .unwrap_or(K::Undefined);
            let name = qualified(array(body, "name")).map(|n| n.name);
            let compares = match op {
                K::AexprOp => matches!(
                    name.as_deref(),
                    Some("=" | "<>" | "!=" | "<" | ">" | "<=" | ">=")
                ),
                K::AexprDistinct
                | K::AexprNotDistinct
                | K::AexprIn
                | K::AexprLike
                | K::AexprIlike
                | K::AexprBetween
                | K::AexprNotBetween
                | K::AexprBetweenSym
                | K::AexprNotBetweenSym => true,
                _ => false,
            };
            if compares {
                for side in ["lexpr", "rexpr"] {
                    let side = &body[side];
                    constant(side);
                    if let Some(("List", list)) = node(side) {
                        array(list, "items").iter().for_each(&mut constant);
                    }
                }
            }
        }
        "SelectStmt" => {
            for row in array(body, "values_lists") {
                if let Some(("List", list)) = node(row) {
                    array(list, "items").iter().for_each(&mut constant);
                }
            }
            for field in ["limit_count", "limit_offset"] {
                constant(&body[field]);
            }
            for target in array(body, "target_list") {
                if let Some(("ResTarget", t)) = node(target) {
                    constant(&t["val"]);
                }
            }
        }
        "UpdateStmt" => {
            for target in array(body, "target_list") {
                if let Some(("ResTarget", t)) = node(target) {
                    constant(&t["val"]);
                }
            }
        }
        _ => {}
    }
}

/// What the enclosing statement means for a table found inside it.
#[derive(Debug, Clone, Copy)]
struct Ctx {
    /// The action of a plain table reference (read, or copy_out inside COPY).
    read_as: Action,
    /// The command of the enclosing statement.
    command: &'static str,
    /// An enclosing query is bounded by LIMIT.
    has_limit: bool,
    /// An enclosing query filters with WHERE.
    has_where: bool,
    /// Inside plain EXPLAIN: nothing executes, no rows are returned.
    explain_only: bool,
    /// Inside a statement the walk does not know: every reference is this.
    unknown: Option<Action>,
    /// Column references here compute a value that leaves the database
    /// without the column's identity (an expression in a select list, a
    /// function in FROM, a value written elsewhere): masking cannot follow it.
    derived: bool,
    /// Even bare columns of this query's select list lose their identity
    /// (UNION arms, INSERT ... SELECT, CREATE TABLE AS, COPY (query), views).
    sink: bool,
}

impl Ctx {
    fn top() -> Ctx {
        Ctx {
            read_as: Action::Read,
            command: "SELECT",
            has_limit: false,
            has_where: false,
            explain_only: false,
            unknown: None,
            derived: false,
            sink: false,
        }
    }
}

/// A query level, for attributing column references to tables.
#[derive(Debug, Default)]
struct Level {
    /// (alias or name, index into `accesses`).
    tables: Vec<(String, usize)>,
    /// (qualifier, column, derived).
    columns: Vec<(Option<String>, ColumnRef, bool)>,
    /// Labels of row sources that are not tables (a subquery, a CTE, a
    /// join with an alias): a whole-row reference to one is a record
    /// value whose fields the masker cannot see.
    opaque: Vec<String>,
}

#[derive(Debug, Default)]
struct Walker {
    accesses: Vec<Access>,
    copy_out: Option<CopyOut>,
    /// Accesses whose columns an alias renamed.
    renamed: Vec<usize>,
    /// A derived column reference could not be tied to a table (it names
    /// a subquery's or CTE's output): every table read may be its source.
    unattributed_derived: bool,
    effects: Vec<Effect>,
    params: u32,
    literal_sensitive: bool,
    /// CTE names visible at this point.
    ctes: Vec<String>,
    levels: Vec<Level>,
    depth: usize,
    operators: Vec<ObjectName>,
    unsupported: Option<String>,
    /// Names used as `q.name` where `q` is a subquery, CTE or join.
    notation: Vec<String>,
    /// A SELECT ... FOR UPDATE/SHARE: its reads lock rows.
    locks: bool,
}

/// `{"node": {"Kind": {...}}}` -> ("Kind", {...}).
fn node(value: &Value) -> Option<(&str, &Value)> {
    let inner = value.get("node")?.as_object()?;
    let (kind, body) = inner.iter().next()?;
    Some((kind.as_str(), body))
}

fn array<'v>(value: &'v Value, field: &str) -> &'v [Value] {
    value
        .get(field)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn string<'v>(value: &'v Value, field: &str) -> &'v str {
    value.get(field).and_then(Value::as_str).unwrap_or("")
}

fn present(value: &Value, field: &str) -> bool {
    value.get(field).is_some_and(|v| !v.is_null())
}

/// The `sval` of a String node.
fn sval(value: &Value) -> Option<&str> {
    match node(value) {
        Some(("String", s)) => s.get("sval").and_then(Value::as_str),
        _ => None,
    }
}

/// COPY's options: (format, delimiter, NULL string, quote, escape, whether
/// any option is a literal the statement's shape does not show).
fn copy_options(n: &Value) -> (CopyFormat, u8, String, u8, u8, bool) {
    let (mut format, mut delimiter, mut null, mut quote, mut escape, mut literal) =
        (CopyFormat::Text, None, None, b'"', None, false);
    for option in array(n, "options") {
        let Some(("DefElem", def)) = node(option) else {
            continue;
        };
        let value = def.get("arg").and_then(sval).unwrap_or_default();
        match string(def, "defname") {
            "format" => {
                format = match value.to_ascii_lowercase().as_str() {
                    "csv" => CopyFormat::Csv,
                    "binary" => CopyFormat::Binary,
                    _ => CopyFormat::Text,
                }
            }
            "delimiter" => {
                literal = true;
                delimiter = value.bytes().next();
            }
            "null" => {
                literal = true;
                null = Some(value.to_string());
            }
            "quote" => {
                literal = true;
                quote = value.bytes().next().unwrap_or(b'"');
            }
            "escape" => {
                literal = true;
                escape = value.bytes().next();
            }
            _ => {}
        }
    }
    let csv = format == CopyFormat::Csv;
    (
        format,
        delimiter.unwrap_or(if csv { b',' } else { b'\t' }),
        null.unwrap_or_else(|| if csv { String::new() } else { "\\N".into() }),
        quote,
        escape.unwrap_or(quote),
        literal,
    )
}

/// A qualified name from a list of String nodes (`[schema, name]`).
fn qualified(names: &[Value]) -> Option<ObjectName> {
    let parts: Vec<&str> = names.iter().filter_map(sval).collect();
    match parts.as_slice() {
        [name] => Some(ObjectName {
            schema: None,
            name: (*name).to_string(),
        }),
        [.., schema, name] => Some(ObjectName {
            schema: Some((*schema).to_string()),
            name: (*name).to_string(),
        }),
        [] => None,
    }
}

/// A string constant (`'x'` or an identifier parsed as a string).
fn const_string(value: &Value) -> Option<&str> {
    match node(value)? {
        ("AConst", c) => c.get("val")?.get("Sval")?.get("sval")?.as_str(),
        ("String", s) => s.get("sval")?.as_str(),
        _ => None,
    }
}

fn const_bool(value: &Value) -> Option<bool> {
    let word = |s: &str| match s.to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Some(true),
        "false" | "off" | "no" | "0" => Some(false),
        _ => None,
    };
    match node(value)? {
        ("AConst", c) => {
            let val = c.get("val")?;
            if let Some(b) = val.get("Boolval") {
                Some(b.get("boolval").and_then(Value::as_bool).unwrap_or(false))
            } else if let Some(i) = val.get("Ival") {
                Some(i.get("ival").and_then(Value::as_i64).unwrap_or(0) != 0)
            } else {
                word(val.get("Sval")?.get("sval")?.as_str()?)
            }
        }
        ("String", s) => word(s.get("sval")?.as_str()?),
        _ => None,
    }
}

/// Whether an expression refers to a column anywhere (a WHERE that does
/// not, like `WHERE 1 = 1`, restricts nothing).
fn mentions_column(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.contains_key("ColumnRef") || map.values().any(mentions_column),
        Value::Array(items) => items.iter().any(mentions_column),
        _ => false,
    }
}

/// Whether a select-list entry is a bare column reference (its result
/// keeps the column's identity).
fn bare_column(target: &Value) -> bool {
    node(target)
        .and_then(|(_, rt)| rt.get("val"))
        .and_then(node)
        .is_some_and(|(kind, _)| kind == "ColumnRef")
}

/// A LIMIT that bounds the rows (not `LIMIT ALL` / `LIMIT NULL`).
fn bounded(limit: &Value) -> bool {
    match node(limit) {
        None => false,
        Some(("AConst", c)) => !c.get("isnull").and_then(Value::as_bool).unwrap_or(false),
        Some(_) => true,
    }
}

/// A SELECT whose only outputs are scalar aggregates without GROUP BY
/// returns exactly one row.
fn single_row(select: &Value) -> bool {
    let targets = array(select, "target_list");
    array(select, "group_clause").is_empty()
        && !targets.is_empty()
        && targets.iter().all(|t| {
            let Some(("ResTarget", target)) = node(t) else {
                return false;
            };
            match target.get("val").and_then(node) {
                Some(("FuncCall", call)) => {
                    qualified(array(call, "funcname"))
                        .is_some_and(|f| SCALAR_AGGREGATES.contains(&f.name.as_str()))
                        && !present(call, "over")
                }
                Some(("AConst", _)) => true,
                _ => false,
            }
        })
}

fn drop_command(remove_type: i64) -> (&'static str, bool) {
    use pg_query::protobuf::ObjectType as O;
    match O::try_from(remove_type as i32).unwrap_or(O::Undefined) {
        O::ObjectTable => ("DROP TABLE", true),
        O::ObjectView => ("DROP VIEW", true),
        O::ObjectMatview => ("DROP MATERIALIZED VIEW", true),
        O::ObjectForeignTable => ("DROP FOREIGN TABLE", true),
        O::ObjectSequence => ("DROP SEQUENCE", true),
        O::ObjectIndex => ("DROP INDEX", false),
        O::ObjectSchema => ("DROP SCHEMA", false),
        O::ObjectFunction | O::ObjectProcedure | O::ObjectRoutine => ("DROP FUNCTION", false),
        O::ObjectDatabase => ("DROP DATABASE", false),
        O::ObjectRole => ("DROP ROLE", false),
        _ => ("DROP", false),
    }
}

/// Statement kinds that change schema objects, with their command tag.
fn ddl_command(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "CreateStmt" => "CREATE TABLE",
        "AlterTableStmt" => "ALTER TABLE",
        "IndexStmt" => "CREATE INDEX",
        "CreateTrigStmt" => "CREATE TRIGGER",
        "RenameStmt" => "ALTER TABLE",
        "CommentStmt" => "COMMENT",
        "CreateFunctionStmt" => "CREATE FUNCTION",
        "AlterFunctionStmt" => "ALTER FUNCTION",
        "CreateSeqStmt" => "CREATE SEQUENCE",
        "AlterSeqStmt" => "ALTER SEQUENCE",
        "CreateDomainStmt" => "CREATE DOMAIN",
        "AlterDomainStmt" => "ALTER DOMAIN",
        "DefineStmt" => "CREATE",
        "CompositeTypeStmt" | "CreateEnumStmt" | "CreateRangeStmt" => "CREATE TYPE",
        "AlterEnumStmt" | "AlterTypeStmt" => "ALTER TYPE",
        "CreateStatsStmt" => "CREATE STATISTICS",
        "AlterStatsStmt" => "ALTER STATISTICS",
        "AlterObjectSchemaStmt" => "ALTER SCHEMA",
        "RefreshMatViewStmt" => "REFRESH MATERIALIZED VIEW",
        "VacuumStmt" => "VACUUM",
        "ClusterStmt" => "CLUSTER",
        "ReindexStmt" => "REINDEX",
        "CreateCastStmt" => "CREATE CAST",
        "CreateConversionStmt" => "CREATE CONVERSION",
        "CreateOpClassStmt" | "CreateOpFamilyStmt" | "AlterOpFamilyStmt" => "CREATE OPERATOR CLASS",
        "AlterCollationStmt" => "ALTER COLLATION",
        "AlterTSDictionaryStmt" | "AlterTSConfigurationStmt" => "ALTER TEXT SEARCH",
        _ => return None,
    })
}

/// Statement kinds that only control the session or transaction.
fn session_command(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "VariableShowStmt" => "SHOW",
        "DiscardStmt" => "DISCARD",
        "DeallocateStmt" => "DEALLOCATE",
        "FetchStmt" => "FETCH",
        "ClosePortalStmt" => "CLOSE",
        "ListenStmt" => "LISTEN",
        "UnlistenStmt" => "UNLISTEN",
        "NotifyStmt" => "NOTIFY",
        "ConstraintsSetStmt" => "SET CONSTRAINTS",
        _ => return None,
    })
}

impl Walker {
    fn push(&mut self, ctx: Ctx, mut access: Access) -> usize {
        if let Some(action) = ctx.unknown {
            access.action = action;
        }
        if ctx.explain_only {
            // The planner folds immutable functions while planning: a call
            // stays a call under plain EXPLAIN.
            if !matches!(access.action, Action::Call | Action::Admin) {
                access.action = Action::Read;
            }
            access.command = "EXPLAIN";
            access.has_limit = true;
            access.has_where = true;
        }
        self.accesses.push(access);
        self.accesses.len() - 1
    }

    fn access(ctx: Ctx, action: Action, target: Target, command: &'static str) -> Access {
        Access {
            action,
            target,
            command,
            columns: Vec::new(),
            has_where: ctx.has_where,
            has_limit: ctx.has_limit,
            only: false,
            derived: Vec::new(),
        }
    }

    fn effect(&mut self, ctx: Ctx, effect: Effect) {
        if !ctx.explain_only {
            self.effects.push(effect);
        }
    }

    /// A RangeVar (as a struct, not a node) -> its name, unless it names a CTE.
    /// `from_query`: a reference in a FROM list, where a CTE of the same
    /// name hides the table (a DML, COPY or DDL target is always a table).
    fn range_var(&self, rv: &Value, from_query: bool) -> Option<(ObjectName, bool, String)> {
        let name = string(rv, "relname");
        if name.is_empty() {
            return None;
        }
        let schema = string(rv, "schemaname");
        if from_query && schema.is_empty() && self.ctes.iter().any(|c| c == name) {
            return None;
        }
        let only = !rv.get("inh").and_then(Value::as_bool).unwrap_or(true);
        let label = rv
            .get("alias")
            .map(|a| string(a, "aliasname"))
            .filter(|a| !a.is_empty())
            .unwrap_or(name)
            .to_string();
        Some((
            ObjectName {
                schema: (!schema.is_empty()).then(|| schema.to_string()),
                name: name.to_string(),
            },
            only,
            label,
        ))
    }

    /// Register a relation with `action` and make it visible to the
    /// current level's column references.
    fn relation(
        &mut self,
        rv: &Value,
        ctx: Ctx,
        action: Action,
        command: &'static str,
    ) -> Option<usize> {
        self.relation_ref(rv, ctx, action, command, false)
    }

    /// Each RangeVar of the statement's `relations` list.
    fn relations(&mut self, n: &Value, ctx: Ctx, action: Action, command: &'static str) {
        for rel in array(n, "relations") {
            if let Some(("RangeVar", rv)) = node(rel) {
                self.relation(rv, ctx, action, command);
            }
        }
    }

    fn relation_ref(
        &mut self,
        rv: &Value,
        ctx: Ctx,
        action: Action,
        command: &'static str,
        from_query: bool,
    ) -> Option<usize> {
        let (name, only, label) = self.range_var(rv, from_query)?;
        let mut access = Self::access(ctx, action, Target::Table(name), command);
        access.only = only;
        let index = self.push(ctx, access);
        // `payments p(id, x)`: columns renamed by the alias no longer match
        // by name.
        if rv
            .get("alias")
            .is_some_and(|a| !array(a, "colnames").is_empty())
        {
            self.renamed.push(index);
        }
        if let Some(level) = self.levels.last_mut() {
            level.tables.push((label, index));
        }
        Some(index)
    }

    /// Walk a top-level or nested statement; returns its command tag.
    fn statement(&mut self, kind: &str, n: &Value, ctx: Ctx) -> Result<&'static str, SqlError> {
        self.enter()?;
        let command = self.statement_inner(kind, n, ctx)?;
        self.depth -= 1;
        Ok(command)
    }

    fn enter(&mut self) -> Result<(), SqlError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(SqlError::TooDeep(MAX_DEPTH));
        }
        Ok(())
    }

    fn statement_inner(
        &mut self,
        kind: &str,
        n: &Value,
        ctx: Ctx,
    ) -> Result<&'static str, SqlError> {
        let conn =
            |ctx: Ctx, action, command| Self::access(ctx, action, Target::Connection, command);
        match kind {
            "SelectStmt" => {
                self.select(n, ctx)?;
                Ok(if present(n, "into_clause") {
                    "SELECT INTO"
                } else {
                    "SELECT"
                })
            }
            "InsertStmt" => self.dml(n, ctx, Action::Write, "INSERT").map(|_| "INSERT"),
            "UpdateStmt" => self.dml(n, ctx, Action::Write, "UPDATE").map(|_| "UPDATE"),
            "DeleteStmt" => self.dml(n, ctx, Action::Delete, "DELETE").map(|_| "DELETE"),
            "MergeStmt" => self.dml(n, ctx, Action::Write, "MERGE").map(|_| "MERGE"),
            "CopyStmt" => self.copy(n, ctx).map(|_| "COPY"),
            "ExplainStmt" => {
                let analyze = array(n, "options").iter().any(|o| match node(o) {
                    Some(("DefElem", d)) => {
                        string(d, "defname") == "analyze"
                            && d.get("arg")
                                .filter(|a| !a.is_null())
                                .and_then(const_bool)
                                .unwrap_or(true)
                    }
                    _ => false,
                });
                let inner = if analyze {
                    ctx
                } else {
                    Ctx {
                        explain_only: true,
                        ..ctx
                    }
                };
                self.nested(&n["query"], inner)?;
                Ok("EXPLAIN")
            }
            "PrepareStmt" => {
                self.effect(ctx, Effect::Prepare(string(n, "name").to_string()));
                self.nested(&n["query"], ctx)?;
                Ok("PREPARE")
            }
            "ExecuteStmt" => {
                let access = conn(ctx, Action::Session, "EXECUTE");
                self.push(
                    ctx,
                    Access {
                        target: Target::Prepared(string(n, "name").to_string()),
                        ..access
                    },
                );
                self.any(&n["params"], ctx)?;
                Ok("EXECUTE")
            }
            "DeclareCursorStmt" => {
                self.nested(&n["query"], ctx)?;
                Ok("DECLARE CURSOR")
            }
            "CreateTableAsStmt" => {
                use pg_query::protobuf::ObjectType as O;
                let command = if n
                    .get("is_select_into")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                {
                    "SELECT INTO"
                } else if n.get("objtype").and_then(Value::as_i64) == Some(O::ObjectMatview as i64)
                {
                    "CREATE MATERIALIZED VIEW"
                } else {
                    "CREATE TABLE AS"
                };
                if let Some(rel) = n.get("into").and_then(|i| i.get("rel")) {
                    self.relation(rel, ctx, Action::Ddl, command);
                }
                self.nested(
                    &n["query"],
                    Ctx {
                        command,
                        sink: true,
                        ..ctx
                    },
                )?;
                Ok(command)
            }
            "ViewStmt" => {
                if let Some(view) = n.get("view") {
                    self.relation(view, ctx, Action::Ddl, "CREATE VIEW");
                }
                self.nested(
                    &n["query"],
                    Ctx {
                        command: "CREATE VIEW",
                        sink: true,
                        ..ctx
                    },
                )?;
                Ok("CREATE VIEW")
            }
            "DropStmt" => {
                let (command, tables) =
                    drop_command(n.get("remove_type").and_then(Value::as_i64).unwrap_or(0));
                for object in array(n, "objects") {
                    let name = match node(object) {
                        Some(("List", list)) => qualified(array(list, "items")),
                        _ => None,
                    };
                    let target = match name {
                        Some(name) if tables => Target::Table(name),
                        _ => Target::Connection,
                    };
                    self.push(ctx, Self::access(ctx, Action::Ddl, target, command));
                }
                if array(n, "objects").is_empty() {
                    self.push(ctx, conn(ctx, Action::Ddl, command));
                }
                Ok(command)
            }
            "TruncateStmt" => {
                self.relations(n, ctx, Action::Ddl, "TRUNCATE TABLE");
                Ok("TRUNCATE TABLE")
            }
            "RuleStmt" => {
                // A rule rewrites every later statement on its table: code.
                if let Some(rel) = n.get("relation") {
                    self.relation(rel, ctx, Action::Code, "CREATE RULE");
                }
                self.any(&n["where_clause"], ctx)?;
                for action in array(n, "actions") {
                    self.nested(action, ctx)?;
                }
                Ok("CREATE RULE")
            }
            "CreateSchemaStmt" => {
                self.push(ctx, conn(ctx, Action::Ddl, "CREATE SCHEMA"));
                for element in array(n, "schema_elts") {
                    self.nested(element, ctx)?;
                }
                Ok("CREATE SCHEMA")
            }
            "VariableSetStmt" => Ok(self.set(n, ctx)),
            "CallStmt" => {
                if let Some(call) = n.get("funccall").filter(|c| !c.is_null()) {
                    if let Some(name) = qualified(array(call, "funcname")) {
                        self.push(
                            ctx,
                            Self::access(ctx, Action::Code, Target::Function(name), "CALL"),
                        );
                    }
                    self.any(&call["args"], ctx)?;
                }
                self.effect(ctx, Effect::Opaque);
                Ok("CALL")
            }
            "DoStmt" => {
                self.push(ctx, conn(ctx, Action::Code, "DO"));
                self.effect(ctx, Effect::Opaque);
                Ok("DO")
            }
            "DeallocateStmt" => {
                let name = string(n, "name");
                self.effect(
                    ctx,
                    Effect::Deallocate((!name.is_empty()).then(|| name.to_string())),
                );
                self.push(ctx, conn(ctx, Action::Session, "DEALLOCATE"));
                Ok("DEALLOCATE")
            }
            "DiscardStmt" => {
                // DISCARD ALL drops prepared statements and resets every setting.
                if n.get("target").and_then(Value::as_i64).unwrap_or(0) <= 1 {
                    self.effect(ctx, Effect::DiscardAll);
                }
                self.push(ctx, conn(ctx, Action::Session, "DISCARD"));
                Ok("DISCARD")
            }
            "CreateFunctionStmt"
            | "AlterFunctionStmt"
            | "CreateTrigStmt"
            | "CreateEventTrigStmt" => self.code(kind, n, ctx),
            "LockStmt" => {
                // An exclusive lock stops everyone else's reads: a write-class
                // access on each table.
                self.relations(n, ctx, Action::Write, "LOCK TABLE");
                Ok("LOCK TABLE")
            }
            "TransactionStmt" => {
                use pg_query::protobuf::TransactionStmtKind as T;
                let kind = T::try_from(n.get("kind").and_then(Value::as_i64).unwrap_or(0) as i32)
                    .unwrap_or(T::Undefined);
                // Prepared transactions outlive the session and can be
                // finished by any session of the same role: administration.
                let (action, command) = match kind {
                    T::TransStmtPrepare => (Action::Admin, "PREPARE TRANSACTION"),
                    T::TransStmtCommitPrepared => (Action::Admin, "COMMIT PREPARED"),
                    T::TransStmtRollbackPrepared => (Action::Admin, "ROLLBACK PREPARED"),
                    T::TransStmtBegin => (Action::Session, "BEGIN"),
                    T::TransStmtStart => (Action::Session, "START TRANSACTION"),
                    T::TransStmtCommit => (Action::Session, "COMMIT"),
                    T::TransStmtRollback => (Action::Session, "ROLLBACK"),
                    T::TransStmtSavepoint => (Action::Session, "SAVEPOINT"),
                    T::TransStmtRelease => (Action::Session, "RELEASE"),
                    T::TransStmtRollbackTo => (Action::Session, "ROLLBACK TO"),
                    T::Undefined => (Action::Session, "TRANSACTION"),
                };
                self.push(ctx, conn(ctx, action, command));
                Ok(command)
            }
            _ => {
                if let Some(command) = session_command(kind) {
                    self.push(ctx, conn(ctx, Action::Session, command));
                    Ok(command)
                } else if let Some(command) = ddl_command(kind) {
                    self.ddl(n, ctx, command)?;
                    Ok(command)
                } else {
                    // Unknown or administrative: roles, grants, server settings, extensions ...
                    let command = admin_command(kind);
                    self.push(ctx, conn(ctx, Action::Admin, command));
                    self.any(
                        n,
                        Ctx {
                            unknown: Some(Action::Admin),
                            command,
                            ..ctx
                        },
                    )?;
                    Ok(command)
                }
            }
        }
    }

    /// A DDL statement: the relation it changes, and anything it names.
    fn ddl(&mut self, n: &Value, ctx: Ctx, command: &'static str) -> Result<(), SqlError> {
        let ctx = Ctx { command, ..ctx };
        let mut found = false;
        for field in ["relation", "table", "view"] {
            if let Some(rel) = n.get(field).filter(|r| r.get("relname").is_some()) {
                found |= self.relation(rel, ctx, Action::Ddl, command).is_some();
            }
        }
        if !found {
            self.push(
                ctx,
                Self::access(ctx, Action::Ddl, Target::Connection, command),
            );
        }
        // Other references (LIKE, INHERITS, REFERENCES ...) count as the same DDL.
        self.any_except(
            n,
            &["relation", "table", "view"],
            Ctx {
                unknown: Some(Action::Ddl),
                ..ctx
            },
        )
    }

    fn nested(&mut self, value: &Value, ctx: Ctx) -> Result<(), SqlError> {
        match node(value) {
            Some((kind, body)) => {
                self.statement(kind, body, ctx)?;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Statements that install code the gateway cannot read (a function
    /// body, a trigger, an event trigger): the `code` action on what they
    /// install, plus whatever else they name.
    fn code(&mut self, kind: &str, n: &Value, ctx: Ctx) -> Result<&'static str, SqlError> {
        let command = match kind {
            "CreateFunctionStmt"
                if n.get("is_procedure").and_then(Value::as_bool) == Some(true) =>
            {
                "CREATE PROCEDURE"
            }
            "CreateFunctionStmt" => "CREATE FUNCTION",
            "AlterFunctionStmt" => "ALTER FUNCTION",
            "CreateTrigStmt" => "CREATE TRIGGER",
            _ => "CREATE EVENT TRIGGER",
        };
        let ctx = Ctx { command, ..ctx };
        let target = match kind {
            "CreateFunctionStmt" => qualified(array(n, "funcname")).map(Target::Function),
            "AlterFunctionStmt" => n
                .get("func")
                .map(|f| array(f, "objname"))
                .and_then(qualified)
                .map(Target::Function),
            _ => None,
        };
        let mut found = false;
        if kind == "CreateTrigStmt"
            && let Some(rel) = n.get("relation").filter(|r| r.get("relname").is_some())
        {
            found = self.relation(rel, ctx, Action::Code, command).is_some();
        }
        if !found {
            let target = target.unwrap_or(Target::Connection);
            self.push(ctx, Self::access(ctx, Action::Code, target, command));
        }
        self.effect(ctx, Effect::Opaque);
        // Names in a trigger's WHEN or a function's defaults count as the same code.
        self.any_except(
            n,
            &["relation", "funcname", "func"],
            Ctx {
                unknown: Some(Action::Code),
                ..ctx
            },
        )?;
        Ok(command)
    }

    /// `SET`, `RESET`: settings on the allow-list are session control;
    /// `role` and `session_authorization` are administration; the settings
    /// that decide how the gateway reads SQL (`standard_conforming_strings`,
    /// `client_encoding`) may only be set to values it reads correctly;
    /// `search_path` may be changed only in the forms the guard follows
    /// exactly. Any other setting is administration, named in the command.
    fn set(&mut self, n: &Value, ctx: Ctx) -> &'static str {
        use pg_query::protobuf::VariableSetKind as K;
        self.literal_sensitive = true;
        let name = string(n, "name");
        let local = n.get("is_local").and_then(Value::as_bool).unwrap_or(false);
        let kind = K::try_from(n.get("kind").and_then(Value::as_i64).unwrap_or(0) as i32)
            .unwrap_or(K::Undefined);
        let command = match kind {
            K::VarReset | K::VarResetAll => "RESET",
            _ => "SET",
        };
        let value = || {
            array(n, "args")
                .iter()
                .filter_map(const_string)
                .collect::<Vec<_>>()
        };
        let reset = matches!(kind, K::VarSetDefault | K::VarReset);
        match name {
            "" if kind == K::VarResetAll => {
                self.effect(ctx, Effect::SearchPath(PathChange::Reset));
            }
            "search_path" if local => self.unsupported(
                "SET LOCAL search_path is not supported through the gateway, which follows each \
                 session's search_path exactly: qualify names with their schema, or run \
                 SET search_path as a statement of its own outside a transaction",
            ),
            "search_path" => {
                let change = match kind {
                    K::VarSetValue => {
                        let schemas = value();
                        if schemas.len() != array(n, "args").len() {
                            self.unsupported(
                                "SET search_path with a value the gateway cannot read is not supported",
                            );
                        }
                        // Each argument is one schema name, exactly: PostgreSQL
                        // quotes it (`SET search_path = 'a, b'` is one schema).
                        PathChange::Set(schemas.iter().map(|s| s.to_string()).collect())
                    }
                    _ if reset => PathChange::Reset,
                    _ => {
                        self.unsupported("SET search_path FROM CURRENT is not supported");
                        PathChange::Reset
                    }
                };
                self.effect(ctx, Effect::SearchPath(change));
            }
            "tollgate.reason" => {
                // The requester's reason for an approval request.
                let reason = match kind {
                    K::VarSetValue => value().first().map(|s| s.to_string()),
                    _ => None,
                };
                self.effect(ctx, Effect::Reason(reason));
            }
            "role" | "session_authorization" => {
                let access = Self::access(ctx, Action::Admin, Target::Connection, "SET ROLE");
                self.push(ctx, access);
                // `$user` in the search_path now names another schema.
                self.effect(ctx, Effect::Opaque);
                return "SET ROLE";
            }
            "standard_conforming_strings" | "client_encoding" => {
                let values = value();
                let readable = match (name, kind) {
                    (_, K::VarSetDefault | K::VarReset) => true,
                    ("standard_conforming_strings", K::VarSetValue) => {
                        values.len() == 1 && setting_on(values[0])
                    }
                    (_, K::VarSetValue) => {
                        values.len() == 1 && readable_encoding(values[0]).is_some()
                    }
                    _ => false,
                };
                if !readable {
                    self.unsupported(&format!(
                        "SET {name} to this value is not supported: the gateway reads SQL the way the \
                         server will, and can only do so with standard_conforming_strings on and \
                         client_encoding UTF8 or LATIN1"
                    ));
                }
            }
            _ if session_setting(name) => {}
            "TRANSACTION" | "SESSION CHARACTERISTICS" | "TRANSACTION SNAPSHOT"
                if kind == K::VarSetMulti => {}
            _ => {
                // A setting off the allow-list (session_replication_role,
                // a library's setting ...): administration.
                self.push(
                    ctx,
                    Self::access(ctx, Action::Admin, Target::Connection, "SET"),
                );
                return command;
            }
        }
        self.push(
            ctx,
            Self::access(ctx, Action::Session, Target::Connection, command),
        );
        command
    }

    /// `set_config(name, value, is_local)`: the same allow-list as SET, for
    /// a name the statement spells out. A computed name could be any
    /// setting; `search_path` and the settings that decide how SQL is read
    /// change only through SET, where the gateway can follow them.
    fn set_config(&mut self, args: &[Value], ctx: Ctx) {
        let command = "SELECT set_config";
        match args.first().and_then(const_string) {
            None => self.unsupported(
                "set_config() with a setting name computed at run time is not supported through the gateway: \
                 name the setting in the statement",
            ),
            Some("search_path" | "standard_conforming_strings" | "client_encoding") => self
                .unsupported(
                    "set_config() of search_path, standard_conforming_strings or client_encoding is not \
                     supported through the gateway: use SET search_path as a statement of its own",
                ),
            Some("role" | "session_authorization") => {
                let access = Self::access(ctx, Action::Admin, Target::Connection, "SET ROLE");
                self.push(ctx, access);
                self.effect(ctx, Effect::Opaque);
            }
            Some("tollgate.reason") => {}
            Some(name) if session_setting(name) => {}
            Some(_) => {
                let access = Self::access(ctx, Action::Admin, Target::Connection, command);
                self.push(ctx, access);
            }
        }
    }

    /// The statement is one the gateway cannot follow: refused as a whole.
    fn unsupported(&mut self, reason: &str) {
        self.unsupported.get_or_insert_with(|| reason.to_string());
    }

    fn with(&mut self, n: &Value, ctx: Ctx) -> Result<(), SqlError> {
        let Some(with) = n.get("with_clause").filter(|w| !w.is_null()) else {
            return Ok(());
        };
        let recursive = with
            .get("recursive")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let ctes: Vec<(&str, &Value)> = array(with, "ctes")
            .iter()
            .filter_map(|c| match node(c) {
                Some(("CommonTableExpr", cte)) => Some((string(cte, "ctename"), cte)),
                _ => None,
            })
            .collect();
        if recursive {
            self.ctes
                .extend(ctes.iter().map(|(name, _)| name.to_string()));
        }
        // A CTE body runs in full whatever bounds the outer query has.
        let body_ctx = Ctx {
            has_limit: false,
            has_where: false,
            ..ctx
        };
        for (name, cte) in ctes {
            self.nested(&cte["ctequery"], body_ctx)?;
            if !recursive {
                // Visible to the CTEs after it and to the main query.
                self.ctes.push(name.to_string());
            }
        }
        Ok(())
    }

    fn select(&mut self, n: &Value, ctx: Ctx) -> Result<(), SqlError> {
        if !array(n, "locking_clause").is_empty() {
            // FOR UPDATE / FOR SHARE hold row locks that stop writers.
            self.locks = true;
        }
        let cte_mark = self.ctes.len();
        self.with(n, ctx)?;
        let has_limit = ctx.has_limit || n.get("limit_count").is_some_and(bounded) || single_row(n);
        let has_where = ctx.has_where || n.get("where_clause").is_some_and(mentions_column);
        let inner = Ctx {
            has_limit,
            has_where,
            ..ctx
        };
        let mut inner = inner;
        if let Some(into) = n.get("into_clause").filter(|i| !i.is_null())
            && let Some(rel) = into.get("rel")
        {
            self.relation(rel, ctx, Action::Ddl, "SELECT INTO");
            inner.sink = true;
        }
        let op = n.get("op").and_then(Value::as_i64).unwrap_or(1);
        if op > 1 {
            // UNION / INTERSECT / EXCEPT: each arm is a query of its own.
            for arm in ["larg", "rarg"] {
                if let Some(arm) = n.get(arm).filter(|a| !a.is_null()) {
                    self.enter()?;
                    self.select(
                        arm,
                        Ctx {
                            sink: true,
                            ..inner
                        },
                    )?;
                    self.depth -= 1;
                }
            }
            self.any_fields(n, &["sort_clause", "limit_offset", "limit_count"], inner)?;
        } else {
            self.levels.push(Level::default());
            // FROM first, so column references can find their tables.
            self.any(&n["from_clause"], inner)?;
            // The select list: a bare column keeps its identity (the result
            // names its table and column); anything computed does not.
            for target in array(n, "target_list") {
                let derived = inner.derived || inner.sink || !bare_column(target);
                self.any(target, Ctx { derived, ..inner })?;
            }
            // VALUES lists produce rows without column identities.
            let values = Ctx {
                derived: true,
                ..inner
            };
            self.any(&n["values_lists"], values)?;
            self.any_except(
                n,
                &[
                    "from_clause",
                    "with_clause",
                    "into_clause",
                    "larg",
                    "rarg",
                    "target_list",
                    "values_lists",
                ],
                inner,
            )?;
            self.close_level();
        }
        self.ctes.truncate(cte_mark);
        Ok(())
    }

    /// INSERT, UPDATE, DELETE, MERGE.
    fn dml(
        &mut self,
        n: &Value,
        ctx: Ctx,
        action: Action,
        command: &'static str,
    ) -> Result<(), SqlError> {
        let cte_mark = self.ctes.len();
        self.with(n, Ctx { command, ..ctx })?;
        let ctx = Ctx {
            command,
            has_limit: false,
            has_where: false,
            ..ctx
        };
        let has_where = match command {
            "MERGE" => true,
            _ => n.get("where_clause").is_some_and(mentions_column),
        };
        self.levels.push(Level::default());
        let target = n
            .get("relation")
            .and_then(|rel| self.relation(rel, ctx, action, command));
        if let Some(index) = target {
            let access = &mut self.accesses[index];
            access.has_where = has_where;
            // Assigned columns: INSERT (cols), UPDATE (SET targets).
            for field in ["cols", "target_list"] {
                for t in array(n, field) {
                    if let Some(("ResTarget", rt)) = node(t) {
                        let name = string(rt, "name");
                        if !name.is_empty() {
                            access.columns.push(ColumnRef::Named(name.to_string()));
                        }
                    }
                }
            }
            if command == "MERGE" {
                self.merge_actions(n, index, ctx);
            }
            // RETURNING hands rows of the target to the client: a read.
            let returning = n
                .get("returning_clause")
                .map(|r| array(r, "exprs"))
                .unwrap_or(&[]);
            if !returning.is_empty() {
                let mut read = self.accesses[index].clone();
                read.action = ctx.read_as;
                read.columns.clear();
                read.has_limit = command == "INSERT";
                let read_index = self.push(ctx, read);
                let (label, _) = self
                    .levels
                    .last()
                    .and_then(|l| l.tables.first())
                    .cloned()
                    .unwrap_or_default();
                if let Some(level) = self.levels.last_mut() {
                    level.tables.push((label, read_index));
                }
            }
        }
        let read_ctx = Ctx { has_where, ..ctx };
        for field in ["using_clause", "from_clause", "source_relation"] {
            self.any(&n[field], read_ctx)?;
        }
        // Values written (SET, INSERT ... SELECT, MERGE actions) are stored
        // under another column's name.
        let written = Ctx {
            sink: true,
            derived: command == "UPDATE" || command == "MERGE" || ctx.derived,
            ..read_ctx
        };
        for field in ["select_stmt", "merge_when_clauses"] {
            self.any(&n[field], written)?;
        }
        if command == "UPDATE" {
            self.any(&n["target_list"], written)?;
        }
        self.any_except(
            n,
            &[
                "relation",
                "with_clause",
                "using_clause",
                "from_clause",
                "source_relation",
                "cols",
                "select_stmt",
                "merge_when_clauses",
                "returning_clause",
                if command == "UPDATE" {
                    "target_list"
                } else {
                    "cols"
                },
            ],
            read_ctx,
        )?;
        // RETURNING is a select list: bare columns keep their identity.
        if let Some(returning) = n.get("returning_clause") {
            for target in array(returning, "exprs") {
                let derived = read_ctx.derived || !bare_column(target);
                self.any(
                    target,
                    Ctx {
                        derived,
                        ..read_ctx
                    },
                )?;
            }
            self.any_except(returning, &["exprs"], read_ctx)?;
        }
        self.close_level();
        self.ctes.truncate(cte_mark);
        Ok(())
    }

    fn merge_actions(&mut self, n: &Value, index: usize, ctx: Ctx) {
        use pg_query::protobuf::CmdType as C;
        let mut deletes = false;
        let mut writes = false;
        for clause in array(n, "merge_when_clauses") {
            if let Some(("MergeWhenClause", w)) = node(clause) {
                match C::try_from(w.get("command_type").and_then(Value::as_i64).unwrap_or(0) as i32)
                {
                    Ok(C::CmdDelete) => deletes = true,
                    Ok(C::CmdNothing) => {}
                    _ => writes = true,
                }
            }
        }
        if deletes {
            let mut delete = self.accesses[index].clone();
            delete.action = Action::Delete;
            self.push(ctx, delete);
        }
        if !writes && deletes {
            self.accesses[index].action = Action::Delete;
        }
    }

    fn copy(&mut self, n: &Value, ctx: Ctx) -> Result<(), SqlError> {
        let from = n.get("is_from").and_then(Value::as_bool).unwrap_or(false);
        let program = n
            .get("is_program")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let file = !string(n, "filename").is_empty();
        let action = if from {
            Action::CopyIn
        } else {
            Action::CopyOut
        };
        let ctx = Ctx {
            command: "COPY",
            read_as: action,
            ..ctx
        };
        if program || file {
            let command = match (from, program) {
                (true, true) => "COPY FROM PROGRAM",
                (false, true) => "COPY TO PROGRAM",
                (true, false) => "COPY FROM FILE",
                (false, false) => "COPY TO FILE",
            };
            self.push(
                ctx,
                Self::access(ctx, Action::Admin, Target::Connection, command),
            );
        }
        if action == Action::CopyOut && !program && !file {
            // Rows to the client: masked field by field (see `CopyOut`).
            let (format, delimiter, null, quote, escape, literal) = copy_options(n);
            self.literal_sensitive |= literal;
            self.copy_out = Some(CopyOut {
                table: None,
                columns: Vec::new(),
                format,
                delimiter,
                null,
                quote,
                escape,
            });
        }
        self.levels.push(Level::default());
        if let Some(rel) = n.get("relation").filter(|r| !r.is_null())
            && let Some(index) = self.relation(rel, ctx, action, "COPY")
        {
            let columns: Vec<ColumnRef> = array(n, "attlist")
                .iter()
                .filter_map(sval)
                .map(|c| ColumnRef::Named(c.to_string()))
                .collect();
            let columns = if columns.is_empty() {
                vec![ColumnRef::All]
            } else {
                columns
            };
            if let Some(copy) = &mut self.copy_out {
                copy.table = match &self.accesses[index].target {
                    Target::Table(name) => Some(name.clone()),
                    _ => None,
                };
                copy.columns = columns
                    .iter()
                    .filter_map(|c| match c {
                        ColumnRef::Named(c) => Some(c.clone()),
                        _ => None,
                    })
                    .collect();
            }
            self.accesses[index].columns = columns;
        }
        self.nested(&n["query"], Ctx { sink: true, ..ctx })?;
        self.any(&n["where_clause"], ctx)?;
        self.close_level();
        Ok(())
    }

    fn function(&mut self, call: &Value, ctx: Ctx) {
        let Some(name) = qualified(array(call, "funcname")) else {
            return;
        };
        let builtin_schema = name.schema.as_deref().is_none_or(|s| s == "pg_catalog");
        if builtin_schema && name.name == "set_config" {
            self.literal_sensitive = true;
            self.set_config(array(call, "args"), ctx);
            return;
        }
        if builtin_schema && PRIVILEGED_FUNCTIONS.contains(&name.name.as_str()) {
            self.push(
                ctx,
                Self::access(ctx, Action::Admin, Target::Function(name), ctx.command),
            );
            return;
        }
        // Everything else is a call; the session drops the ones the catalog
        // knows as built-ins (pg_catalog).
        self.push(
            ctx,
            Self::access(ctx, Action::Call, Target::Function(name), ctx.command),
        );
    }

    /// Walk any value generically.
    fn any(&mut self, value: &Value, ctx: Ctx) -> Result<(), SqlError> {
        match value {
            Value::Object(map) => {
                if let Some((kind, body)) = node(value) {
                    return self.node_kind(kind, body, ctx);
                }
                // A RangeVar embedded as a struct (not a node) in a statement we do not know.
                if ctx.unknown.is_some() && map.contains_key("relname") && map.contains_key("inh") {
                    self.relation(value, ctx, ctx.read_as, ctx.command);
                    return Ok(());
                }
                self.enter()?;
                for v in map.values() {
                    self.any(v, ctx)?;
                }
                self.depth -= 1;
                Ok(())
            }
            Value::Array(items) => {
                for v in items {
                    self.any(v, ctx)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn any_except(&mut self, n: &Value, skip: &[&str], ctx: Ctx) -> Result<(), SqlError> {
        if let Value::Object(map) = n {
            for (k, v) in map {
                if !skip.contains(&k.as_str()) {
                    self.any(v, ctx)?;
                }
            }
        }
        Ok(())
    }

    fn any_fields(&mut self, n: &Value, fields: &[&str], ctx: Ctx) -> Result<(), SqlError> {
        for field in fields {
            if let Some(v) = n.get(*field) {
                self.any(v, ctx)?;
            }
        }
        Ok(())
    }

    fn node_kind(&mut self, kind: &str, body: &Value, ctx: Ctx) -> Result<(), SqlError> {
        self.enter()?;
        match kind {
            "RangeVar" => {
                let action = ctx.unknown.unwrap_or(ctx.read_as);
                if self
                    .relation_ref(body, ctx, action, ctx.command, true)
                    .is_none()
                {
                    // A CTE: its rows carry no table identity of their own.
                    let label = body
                        .get("alias")
                        .map(|a| string(a, "aliasname"))
                        .filter(|a| !a.is_empty())
                        .unwrap_or_else(|| string(body, "relname"));
                    self.opaque_source(label);
                }
            }
            "AExpr" => {
                if let Some(op) = qualified(array(body, "name"))
                    && !self.operators.contains(&op)
                {
                    self.operators.push(op);
                }
                self.any(body, ctx)?;
            }
            "ColumnRef" => self.column_ref(body, ctx.derived),
            "FuncCall" => {
                self.function(body, ctx);
                // A function's result may carry its arguments' values out
                // (in the result, an error, a setting); only count() cannot.
                let count = qualified(array(body, "funcname")).is_some_and(|f| f.name == "count");
                let derived = ctx.derived || !count;
                self.any(body, Ctx { derived, ..ctx })?;
            }
            "TypeCast"
            | "CoalesceExpr"
            | "CaseExpr"
            | "MinMaxExpr"
            | "RowExpr"
            | "AArrayExpr"
            | "AIndirection"
            | "CollateClause"
            | "RangeTableFunc"
            | "XmlExpr"
            | "XmlSerialize"
            | "JsonObjectConstructor"
            | "JsonArrayConstructor"
            | "JsonArrayQueryConstructor"
            | "JsonObjectAgg"
            | "JsonArrayAgg"
            | "JsonParseExpr"
            | "JsonScalarExpr"
            | "JsonSerializeExpr"
            | "JsonFuncExpr"
            | "JsonIsPredicate" => {
                // Casts can fail with the value in the error; the others
                // compute a new value from their inputs, and rows a function
                // in FROM makes carry no column identity.
                self.any(
                    body,
                    Ctx {
                        derived: true,
                        ..ctx
                    },
                )?;
            }
            "ParamRef" => {
                let number = body.get("number").and_then(Value::as_u64).unwrap_or(0);
                self.params = self.params.max(number as u32);
            }
            "SelectStmt" | "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => {
                // A subquery: bounded by its own LIMIT only.
                let sub = Ctx {
                    has_limit: ctx.has_limit && kind == "SelectStmt",
                    ..ctx
                };
                self.statement(kind, body, sub)?;
            }
            "RangeSubselect" | "JoinExpr" | "RangeFunction" => {
                if let Some(alias) = body.get("alias") {
                    self.opaque_source(string(alias, "aliasname"));
                }
                if kind == "RangeFunction" {
                    // Rows a function in FROM makes carry no column identity.
                    self.any(
                        body,
                        Ctx {
                            derived: true,
                            ..ctx
                        },
                    )?;
                } else {
                    self.any(body, ctx)?;
                }
            }
            "SubLink" | "RangeTableSample" => {
                self.any(body, ctx)?;
            }
            k if k.ends_with("Stmt") => {
                self.statement(k, body, ctx)?;
            }
            _ => self.any(body, ctx)?,
        }
        self.depth -= 1;
        Ok(())
    }

    fn opaque_source(&mut self, label: &str) {
        if !label.is_empty()
            && let Some(level) = self.levels.last_mut()
        {
            level.opaque.push(label.to_string());
        }
    }

    fn column_ref(&mut self, body: &Value, derived: bool) {
        let fields = array(body, "fields");
        let star = fields
            .last()
            .is_some_and(|f| matches!(node(f), Some(("AStar", _))));
        let names: Vec<&str> = fields.iter().filter_map(sval).collect();
        let (qualifier, column) = match (names.as_slice(), star) {
            ([], true) => (None, ColumnRef::All),
            ([.., q], true) => (Some(q.to_string()), ColumnRef::All),
            ([c], false) => (None, ColumnRef::Maybe(c.to_string())),
            ([.., q, c], false) => (Some(q.to_string()), ColumnRef::Named(c.to_string())),
            ([], false) => return,
        };
        if let Some(level) = self.levels.last_mut() {
            level.columns.push((qualifier, column, derived));
        }
    }

    /// Attribute the level's column references to its tables; pass the
    /// ones that belong to an outer query up.
    fn close_level(&mut self) {
        let Some(level) = self.levels.pop() else {
            return;
        };
        let mut outer = Vec::new();
        for (qualifier, column, derived) in level.columns {
            // `SELECT p FROM payments p`: a whole-row reference to a table
            // is a record value of all its columns.
            if qualifier.is_none()
                && let ColumnRef::Maybe(name) = &column
                && let Some((_, index)) = level.tables.iter().find(|(label, _)| label == name)
            {
                self.accesses[*index].derived.push(ColumnRef::All);
            }
            // `t.f` on a subquery, CTE or join: a column of it, or function
            // f called on the whole row (PostgreSQL's function-call notation).
            if let (Some(q), ColumnRef::Named(name)) = (&qualifier, &column)
                && level.opaque.iter().any(|label| label == q)
                && !self.notation.contains(name)
            {
                self.notation.push(name.clone());
            }
            // `SELECT t FROM (SELECT ...) t`: a record of a subquery's, CTE's
            // or join's columns, any of which may come from any table read.
            if qualifier.is_none()
                && let ColumnRef::Maybe(name) = &column
                && level.opaque.iter().any(|label| label == name)
            {
                self.unattributed_derived = true;
            }
            let attribute = |walker: &mut Walker, index: usize, column: &ColumnRef| {
                walker.accesses[index].columns.push(column.clone());
                if derived {
                    let column = if walker.renamed.contains(&index) {
                        ColumnRef::All
                    } else {
                        column.clone()
                    };
                    walker.accesses[index].derived.push(column);
                }
            };
            match &qualifier {
                Some(q) => match level.tables.iter().find(|(label, _)| label == q) {
                    Some((_, index)) => attribute(self, *index, &column),
                    None if self.levels.is_empty() => self.unattributed_derived |= derived,
                    None => outer.push((qualifier, column, derived)),
                },
                None if level.tables.is_empty() => {
                    if self.levels.is_empty() {
                        self.unattributed_derived |= derived;
                    } else {
                        outer.push((qualifier, column, derived));
                    }
                }
                None => {
                    for (_, index) in &level.tables {
                        attribute(self, *index, &column);
                    }
                    if matches!(column, ColumnRef::Maybe(_)) {
                        outer.push((qualifier, column, derived));
                    }
                }
            }
        }
        if let Some(parent) = self.levels.last_mut() {
            parent.columns.extend(outer);
        }
    }
}

fn admin_command(kind: &str) -> &'static str {
    match kind {
        "GrantStmt" => "GRANT",
        "GrantRoleStmt" => "GRANT ROLE",
        "CreateRoleStmt" => "CREATE ROLE",
        "AlterRoleStmt" | "AlterRoleSetStmt" => "ALTER ROLE",
        "DropRoleStmt" => "DROP ROLE",
        "AlterSystemStmt" => "ALTER SYSTEM",
        "CreateExtensionStmt" => "CREATE EXTENSION",
        "LoadStmt" => "LOAD",
        "CheckPointStmt" => "CHECKPOINT",
        "CreatedbStmt" => "CREATE DATABASE",
        "DropdbStmt" => "DROP DATABASE",
        "AlterOwnerStmt" => "ALTER OWNER",
        "CreatePolicyStmt" => "CREATE POLICY",
        "AlterPolicyStmt" => "ALTER POLICY",
        "AlterDefaultPrivilegesStmt" => "ALTER DEFAULT PRIVILEGES",
        "CreateEventTrigStmt" => "CREATE EVENT TRIGGER",
        _ => "ADMIN",
    }
}

/// Settings a statement may change as plain session control: how values
/// are formatted, time limits, planner choices. None of them changes what
/// a name refers to, who the session is, or how SQL is read.
const SESSION_SETTINGS: &[&str] = &[
    "application_name",
    "datestyle",
    "intervalstyle",
    "timezone",
    "extra_float_digits",
    "bytea_output",
    "client_min_messages",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "transaction_isolation",
    "transaction_read_only",
    "transaction_deferrable",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "default_transaction_deferrable",
    "work_mem",
    "maintenance_work_mem",
    "hash_mem_multiplier",
    "jit",
    "plan_cache_mode",
    "max_parallel_workers_per_gather",
    "random_page_cost",
    "seq_page_cost",
    "cpu_tuple_cost",
    "cpu_index_tuple_cost",
    "cpu_operator_cost",
    "effective_cache_size",
    "effective_io_concurrency",
    "join_collapse_limit",
    "from_collapse_limit",
    "geqo",
    "cursor_tuple_fraction",
    "default_statistics_target",
    "constraint_exclusion",
    "row_security",
    "xmlbinary",
    "xmloption",
    "default_text_search_config",
    "gin_fuzzy_search_limit",
    "synchronous_commit",
    "timezone_abbreviations",
];

/// A setting a statement may change, or a client give at startup, as plain
/// session control (`standard_conforming_strings`, `client_encoding` and
/// `search_path` are checked by value where they are read).
pub(crate) fn session_setting(name: &str) -> bool {
    SESSION_SETTINGS.contains(&name) || name.starts_with("enable_")
}

/// A boolean setting's value read as PostgreSQL reads it: on.
pub(crate) fn setting_on(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "on" | "true" | "yes" | "1" | "t" | "y"
    )
}

/// A client encoding the gateway reads exactly, by any of the names
/// PostgreSQL accepts for it (case and punctuation do not matter).
pub(crate) fn readable_encoding(name: &str) -> Option<super::Encoding> {
    let key: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    match key.as_str() {
        // SQL_ASCII converts nothing: the server checks the bytes against
        // its own encoding (the session checks that it is UTF8).
        "utf8" | "unicode" | "sqlascii" => Some(super::Encoding::Utf8),
        "latin1" | "iso88591" => Some(super::Encoding::Latin1),
        _ => None,
    }
}

/// Split a `search_path` value as PostgreSQL does: comma-separated,
/// double-quoted names keep case and commas.
pub(crate) fn split_path(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut item = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        item.push('"');
                    } else {
                        break;
                    }
                } else {
                    item.push(c);
                }
            }
            while chars.peek().is_some_and(|c| *c != ',') {
                chars.next();
            }
        } else {
            while let Some(c) = chars.peek().copied().filter(|c| *c != ',') {
                chars.next();
                item.push(c);
            }
            item = item.trim().to_lowercase();
        }
        if !item.is_empty() {
            out.push(item);
        }
        if chars.next().is_none() {
            break;
        }
    }
    out
}
