//! Differential test: the gateway's reading of a statement against
//! PostgreSQL's own. For a generated corpus of statements (joins, CTEs,
//! subqueries, LATERAL, set operations, views, quoting and Unicode escapes,
//! colliding names across schemas, search_path changes), the relations the
//! gateway resolved (as its recording says, the record an auditor reads) are
//! compared with the relations the server's plan reads (EXPLAIN VERBOSE,
//! views expanded to their base tables) and with the tables the server says
//! the result columns come from (RowDescription). Any relation the gateway
//! missed fails the test.

use std::collections::{BTreeSet, HashMap};

use tollgate_e2e::{TestGateway, database};

/// Tables with colliding names, a case-sensitive twin, a schema that needs
/// quoting, and views over other schemas' tables.
const SETUP: &str = r#"
CREATE SCHEMA IF NOT EXISTS s1;
CREATE SCHEMA IF NOT EXISTS s2;
CREATE SCHEMA IF NOT EXISTS "Mixed Case";
CREATE TABLE IF NOT EXISTS public.t1 (id int, v text);
CREATE TABLE IF NOT EXISTS public.t2 (id int, v text);
CREATE TABLE IF NOT EXISTS s1.t1 (id int, v text);
CREATE TABLE IF NOT EXISTS s1.t2 (id int, v text);
CREATE TABLE IF NOT EXISTS s2.t1 (id int, v text);
CREATE TABLE IF NOT EXISTS s2."T1" (id int, v text);
CREATE TABLE IF NOT EXISTS "Mixed Case".t3 (id int, v text);
CREATE OR REPLACE VIEW public.v1 AS SELECT id, v FROM s1.t2;
CREATE OR REPLACE VIEW s2.v2 AS SELECT a.id, b.v FROM public.t1 a JOIN "Mixed Case".t3 b USING (id);
GRANT USAGE ON SCHEMA s1, s2, "Mixed Case" TO tollgate_gateway;
GRANT SELECT ON ALL TABLES IN SCHEMA public, s1, s2, "Mixed Case" TO tollgate_gateway;
"#;

/// Ways to name a relation, as a client would write them.
const NAMES: &[&str] = &[
    "t1",
    "t2",
    "T1",
    "\"T1\"",
    "s1.t1",
    "S1.T2",
    "\"s1\".\"t2\"",
    "s2.t1",
    "s2.\"T1\"",
    "public.t1",
    "public.t2",
    "\"Mixed Case\".t3",
    "U&\"t\\0031\"",
    "v1",
    "public.v1",
    "s2.v2",
    "v2",
    "t3",
];

/// search_path values.
const PATHS: &[&str] = &[
    "s1, public",
    "s2",
    "s2, s1",
    "\"Mixed Case\", s1",
    "pg_catalog, s2, public",
    "public, s1",
    "'s1', 's2'",
];

/// How a session changes (or seems to change) its search_path before the
/// statement: each step one simple Query, `{p}` the path. Run the same on
/// the server and through the gateway; a step the gateway refuses changes
/// nothing there either.
const SETUPS: &[&[&str]] = &[
    &[],
    &["SET search_path = {p}"],
    &["SET LOCAL search_path = {p}"],
    &["BEGIN; SET LOCAL search_path = {p}; COMMIT"],
    &["BEGIN", "SET search_path = {p}", "ROLLBACK"],
    &["BEGIN", "SET LOCAL search_path = {p}", "COMMIT"],
    &["SET search_path = {p}", "RESET search_path"],
    &["SET search_path = {p}", "DISCARD ALL"],
    &["SET search_path = {p}", "RESET ALL"],
    &["SELECT set_config('search_path', '{q}', false)"],
    &["SELECT set_config('search_path', '{q}', true)"],
    &[
        "BEGIN",
        "SAVEPOINT a",
        "SET search_path = {p}",
        "ROLLBACK TO SAVEPOINT a",
        "COMMIT",
    ],
    &["SET search_path = {p}; SELECT 1"],
];

fn steps(setup: &[&str], path: &str) -> Vec<String> {
    let quoted = path.replace('\'', "");
    setup
        .iter()
        .map(|step| {
            step.replace("{p}", path)
                .replace("{q}", &quoted.replace('\'', "''"))
        })
        .collect()
}

/// A small deterministic generator (no dependency, same corpus every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as usize
    }
    fn pick<'a>(&mut self, items: &'a [&'a str]) -> &'a str {
        items[self.next() % items.len()]
    }
}

fn statement(rng: &mut Lcg) -> String {
    let a = rng.pick(NAMES);
    let b = rng.pick(NAMES);
    let c = rng.pick(NAMES);
    match rng.next() % 10 {
        0 => format!("SELECT x.id FROM {a} x"),
        1 => format!("SELECT x.id, y.v FROM {a} x JOIN {b} y ON x.id = y.id"),
        2 => format!("SELECT q.id FROM (SELECT id FROM {a}) q, {b} r WHERE q.id = r.id"),
        3 => format!("WITH w AS (SELECT id, v FROM {a}) SELECT w.v FROM w JOIN {b} z USING (id)"),
        4 => format!("SELECT (SELECT max(id) FROM {a}) AS m, y.v FROM {b} y"),
        5 => format!("SELECT id FROM {a} x WHERE EXISTS (SELECT 1 FROM {b} y WHERE y.id = x.id)"),
        6 => format!("SELECT id FROM {a} UNION SELECT id FROM {b} EXCEPT SELECT id FROM {c}"),
        7 => format!(
            "SELECT x.id, l.v FROM {a} x, LATERAL (SELECT v FROM {b} y WHERE y.id = x.id) l"
        ),
        8 => {
            format!("SELECT x.v FROM {a} x LEFT JOIN ({b} y JOIN {c} z USING (id)) ON x.id = y.id")
        }
        _ => format!("SELECT id FROM {a} WHERE id IN (SELECT id FROM {b}) AND v = 'x'"),
    }
}

/// "schema.table" of every relation a plan scans.
fn plan_relations(plan: &serde_json::Value, out: &mut BTreeSet<String>) {
    match plan {
        serde_json::Value::Object(map) => {
            if let (Some(schema), Some(name)) = (
                map.get("Schema").and_then(|v| v.as_str()),
                map.get("Relation Name").and_then(|v| v.as_str()),
            ) {
                out.insert(format!("{schema}.{name}"));
            }
            map.values().for_each(|v| plan_relations(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| plan_relations(v, out)),
        _ => {}
    }
}

/// The relations the gateway recorded for a statement frame: from
/// resources like "SELECT on s1.t1" and "SELECT of column s1.t1.id".
fn recorded_relations(frame: &serde_json::Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for resource in frame["resources"].as_array().into_iter().flatten() {
        let text = resource.as_str().unwrap_or_default();
        if let Some((_, rest)) = text.split_once(" on ") {
            out.insert(rest.to_string());
        } else if let Some((_, rest)) = text.split_once(" of column ")
            && let Some((table, _column)) = rest.rsplit_once('.')
        {
            out.insert(table.to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_resolves_every_relation_the_server_reads() {
    const CORPUS: usize = 400;
    let db = database();
    db.pg.psql("payments", SETUP).expect("setup");
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("everything.cedar");
    std::fs::write(
        &policy,
        "@id(\"everything\")\n@reason(\"differential test\")\npermit (principal, action, resource);\n",
    )
    .unwrap();
    let gw =
        TestGateway::start_with(&format!("[policy]\nfiles = [\"{}\"]\n", policy.display())).await;

    // The server's side: the same statements as the gateway's own role.
    let mut direct_config: tokio_postgres::Config = format!(
        "host=localhost port={} dbname=payments user=tollgate_gateway",
        db.pg.port
    )
    .parse()
    .unwrap();
    direct_config
        .password(db.gateway_password.as_str())
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let tls =
        tokio_postgres_rustls::MakeRustlsConnect::new(tollgate_e2e::tls_trusting(&db.pg.ca_file));
    let (direct, connection) = direct_config.connect(tls).await.expect("direct");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    // Views expanded to the tables they read (one level is enough here:
    // these views read tables only).
    let mut view_bases: HashMap<String, BTreeSet<String>> = HashMap::new();
    for row in direct
        .query(
            "SELECT DISTINCT vn.nspname || '.' || v.relname, tn.nspname || '.' || t.relname \
             FROM pg_rewrite r JOIN pg_class v ON v.oid = r.ev_class JOIN pg_namespace vn ON vn.oid = v.relnamespace \
             JOIN pg_depend d ON d.objid = r.oid AND d.classid = 'pg_rewrite'::regclass \
             JOIN pg_class t ON t.oid = d.refobjid AND t.oid <> v.oid JOIN pg_namespace tn ON tn.oid = t.relnamespace \
             WHERE v.relkind = 'v' AND vn.nspname IN ('public', 's2')",
            &[],
        )
        .await
        .unwrap()
    {
        view_bases
            .entry(row.get(0))
            .or_default()
            .insert(row.get(1));
    }
    let names: HashMap<u32, String> = direct
        .query(
            "SELECT c.oid, n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.get::<_, u32>(0), row.get::<_, String>(1)))
        .collect();

    let mut rng = Lcg(20261201);
    let mut compared = 0;
    let mut missed = Vec::new();
    let mut server_errors = 0;
    let mut refused_setups = 0;
    for index in 0..CORPUS {
        let sql = statement(&mut rng);
        let path = PATHS[rng.next() % PATHS.len()];
        let setup = steps(SETUPS[rng.next() % SETUPS.len()], path);
        // The gateway's session: the steps (a refused one changes nothing
        // upstream), then the statement.
        let subject = format!("differ-{index}");
        let client = gw
            .tokio_postgres(&gw.token(&subject, &["analysts"]))
            .await
            .expect("connect");
        let mut upstream_ran = Vec::new();
        for step in &setup {
            match client.batch_execute(step).await {
                Ok(()) => upstream_ran.push(step.clone()),
                Err(error) if error.code().is_some_and(|c| c.code() == "0A000") => {
                    refused_setups += 1;
                }
                // Failed upstream (a SET inside an aborted transaction ...).
                Err(_) => upstream_ran.push(step.clone()),
            }
        }
        // The server's reading, after what reached it.
        direct.batch_execute("ROLLBACK; RESET ALL").await.unwrap();
        for step in &upstream_ran {
            let _ = direct.batch_execute(step).await;
        }
        let explain = direct
            .simple_query(&format!("EXPLAIN (VERBOSE, FORMAT JSON) {sql}"))
            .await;
        let explain = explain.ok().and_then(|messages| {
            messages.into_iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
                _ => None,
            })
        });
        let Some(explain) = explain else {
            // A name that does not resolve here (t3 without its schema...):
            // the server refuses it, nothing to compare.
            server_errors += 1;
            continue;
        };
        let plan: serde_json::Value = serde_json::from_str(&explain).expect("plan json");
        let mut server = BTreeSet::new();
        plan_relations(&plan, &mut server);
        let prepared = direct
            .prepare(&sql)
            .await
            .expect("prepares like it explains");
        let described: BTreeSet<String> = prepared
            .columns()
            .iter()
            .filter_map(|c| c.table_oid())
            .filter(|oid| *oid != 0)
            .filter_map(|oid| names.get(&oid).cloned())
            .collect();

        let marker = format!("/* differential {index} */ ");
        client
            .simple_query(&format!("{marker}{sql}"))
            .await
            .unwrap_or_else(|e| panic!("{sql} after {setup:?}: {e:?}"));
        drop(client);
        gw.settle().await;
        let store = &gw.running.as_ref().unwrap().recording().store;
        let sessions = store.sessions(0, i64::MAX).await.unwrap();
        let session = sessions
            .iter()
            .find(|s| s.subject == subject)
            .expect("the session was recorded");
        let frames = store.frames(&session.id, -1, 100).await.unwrap();
        let frame = frames
            .iter()
            .rfind(|f| f.kind == "statement")
            .expect("statement frame");
        let mut resolved = recorded_relations(&frame.body);
        for relation in resolved.clone() {
            if let Some(bases) = view_bases.get(&relation) {
                resolved.extend(bases.iter().cloned());
            }
        }
        compared += 1;
        for relation in server.iter().chain(&described) {
            if !resolved.contains(relation) {
                missed.push(format!(
                    "{sql}  after {setup:?}: server reads {relation}, gateway resolved {resolved:?}"
                ));
            }
        }
    }
    eprintln!(
        "differential: {CORPUS} statements, {compared} compared, {server_errors} refused by the server, \
         {refused_setups} path changes refused by the gateway, {} missed",
        missed.len()
    );
    assert!(
        compared >= CORPUS / 2,
        "too few comparable statements: {compared}"
    );
    assert!(
        missed.is_empty(),
        "{} relations missed:\n{}",
        missed.len(),
        missed.join("\n")
    );
}
