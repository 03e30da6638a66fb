//! The boundary against a hostile client: an adversarial table of attack
//! statements and session setups, by attack class (docs/threat-model.md),
//! each run through psql (simple protocol) and tokio-postgres (simple and
//! extended protocol) with an ordinary token under the PCI starter policy.
//! Every case must come out as its table says (refused with the right
//! SQLSTATE, or run), no output may carry a card number in any spelling,
//! and afterwards the upstream, checked directly, is unchanged.

use std::time::Duration;

use tollgate_e2e::{FIXTURE_PANS, TestGateway, database};

/// What a case must come to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    /// Runs (its output is still checked for card numbers).
    Runs,
    /// Refused with this SQLSTATE.
    Refused(&'static str),
    /// Held for approval (refused with 42501 "needs approval": the test
    /// gateway has no approvals API).
    Approval,
    /// The login is refused (FATAL 0A000) for its setup.
    Fatal,
}
use Want::*;

/// One attack: its class, the caller's groups, startup `options`, the
/// statements (each one Query in the same session; the ones before the
/// last are setup and must run) and what the last must come to.
struct Case {
    class: &'static str,
    groups: &'static str,
    options: &'static str,
    steps: &'static [&'static str],
    want: Want,
}

const fn case(class: &'static str, steps: &'static [&'static str], want: Want) -> Case {
    Case {
        class,
        groups: "analysts",
        options: "",
        steps,
        want,
    }
}

const fn as_group(
    class: &'static str,
    groups: &'static str,
    steps: &'static [&'static str],
    want: Want,
) -> Case {
    Case {
        class,
        groups,
        options: "",
        steps,
        want,
    }
}

const fn startup(options: &'static str, steps: &'static [&'static str], want: Want) -> Case {
    Case {
        class: "startup",
        groups: "analysts",
        options,
        steps,
        want,
    }
}

const ONE: &[&str] = &["SELECT 1"];
const DENIED: Want = Refused("42501");
const UNSUPPORTED: Want = Refused("0A000");

const CASES: &[Case] = &[
    // ---- startup parameters and options -----------------------------------
    startup("-c standard_conforming_strings=off", ONE, Fatal),
    startup("--standard-conforming-strings=off", ONE, Fatal),
    startup("-cstandard_conforming_strings=off", ONE, Fatal),
    startup("-c standard_conforming_strings=on", ONE, Runs),
    startup("-c client_encoding=SJIS", ONE, Fatal),
    startup("-c client_encoding=BIG5", ONE, Fatal),
    startup("-c client_encoding=GB18030", ONE, Fatal),
    startup("-c client_encoding=LATIN1", ONE, Runs),
    startup("-c role=postgres", ONE, Fatal),
    startup("-c session_authorization=postgres", ONE, Fatal),
    startup("-c\\ role=postgres", ONE, Fatal),
    startup("-c session_replication_role=replica", ONE, Fatal),
    startup("-c log_statement=none", ONE, Fatal),
    startup("-c backslash_quote=on", ONE, Fatal),
    startup("-c escape_string_warning=off", ONE, Fatal),
    startup("-c lc_messages=C", ONE, Fatal),
    startup("-c temp_tablespaces=pg_default", ONE, Fatal),
    startup("-c default_transaction_read_only=off", ONE, Runs),
    startup("-d 5", ONE, Fatal),
    startup(
        "-c application_name=x\u{b}-c\u{b}search_path=public",
        ONE,
        Fatal,
    ),
    startup("-c application_name=x\u{c}-c\u{c}role=postgres", ONE, Fatal),
    startup("-c jit=off -c application_name=a\\ b", ONE, Runs),
    startup("-c search_path=hr", &["SELECT name FROM employees"], DENIED),
    startup(
        "--search_path=information_schema",
        &["SELECT translate(pan, '0123456789', 'abcdefghij') FROM payments"],
        Refused("42P01"),
    ),
    startup(
        "-c search_path=pg_temp,public",
        &["SELECT count(*) FROM customers"],
        Runs,
    ),
    // ---- SQL read under other settings ------------------------------------
    case(
        "lexing",
        &["SELECT 'a\\', ' ; DELETE FROM orders; -- '"],
        Runs,
    ),
    case(
        "lexing",
        &["SELECT E'\\\\', ' ; DELETE FROM orders; -- '"],
        Runs,
    ),
    case(
        "lexing",
        &["SELECT U&'\\0027; DELETE FROM orders; --'"],
        Runs,
    ),
    case("lexing", &["SELECT $a$ $$ ' \\ $a$, 1"], Runs),
    case(
        "lexing",
        &["SET standard_conforming_strings = off"],
        UNSUPPORTED,
    ),
    case(
        "lexing",
        &["SET standard_conforming_strings TO 'off'"],
        UNSUPPORTED,
    ),
    case(
        "lexing",
        &["SET SESSION standard_conforming_strings = false"],
        UNSUPPORTED,
    ),
    case(
        "lexing",
        &["BEGIN; SET LOCAL standard_conforming_strings = off; COMMIT"],
        UNSUPPORTED,
    ),
    case(
        "lexing",
        &["SELECT set_config('standard_conforming_strings', 'off', false)"],
        UNSUPPORTED,
    ),
    case(
        "lexing",
        &["SELECT set_config('standard_conforming_strings', 'off', true)"],
        UNSUPPORTED,
    ),
    case(
        "lexing",
        &["SELECT set_config(lower('STANDARD_CONFORMING_STRINGS'), 'off', false)"],
        UNSUPPORTED,
    ),
    case(
        "lexing",
        &["SELECT * FROM set_config('standard_conforming_strings', 'off', false)"],
        UNSUPPORTED,
    ),
    case(
        "lexing",
        &["SELECT 1 WHERE set_config('standard_conforming_strings', 'off', false) IS NOT NULL"],
        UNSUPPORTED,
    ),
    case("lexing", &["SET client_encoding = 'SJIS'"], UNSUPPORTED),
    case("lexing", &["SET NAMES 'GBK'"], UNSUPPORTED),
    case("lexing", &["SET client_encoding TO 'BIG5'"], UNSUPPORTED),
    case(
        "lexing",
        &["SELECT set_config('client_encoding', 'SJIS', false)"],
        UNSUPPORTED,
    ),
    case("lexing", &["SET client_encoding TO DEFAULT"], Runs),
    case("lexing", &["SET client_encoding = 'UTF8'"], Runs),
    case("lexing", &["RESET standard_conforming_strings"], Runs),
    case("lexing", &["SET backslash_quote = on"], DENIED),
    case("lexing", &["SET escape_string_warning = off"], DENIED),
    case(
        "lexing",
        &["SELECT 'é' || pan FROM payments WHERE id = 1"],
        DENIED,
    ),
    // ---- name resolution ----------------------------------------------------
    case(
        "search_path",
        &["SET LOCAL search_path = information_schema"],
        UNSUPPORTED,
    ),
    case(
        "search_path",
        &[
            "SET LOCAL search_path = information_schema; SELECT translate(pan, '0123456789', 'abcdefghij') FROM payments",
        ],
        UNSUPPORTED,
    ),
    case(
        "search_path",
        &["BEGIN; SET LOCAL search_path = information_schema; SELECT 1; COMMIT"],
        UNSUPPORTED,
    ),
    case(
        "search_path",
        &["SELECT set_config('search_path', 'information_schema', false)"],
        UNSUPPORTED,
    ),
    case(
        "search_path",
        &["SELECT set_config('search_path', 'information_schema', true)"],
        UNSUPPORTED,
    ),
    case(
        "search_path",
        &["SELECT set_config('search_path', current_setting('search_path'), false)"],
        UNSUPPORTED,
    ),
    case(
        "search_path",
        &[
            "SET search_path = information_schema; SELECT translate(pan, '0123456789', 'abcdefghij') FROM payments",
        ],
        UNSUPPORTED,
    ),
    case(
        "search_path",
        &["SET search_path = hr; SELECT 1"],
        UNSUPPORTED,
    ),
    case(
        "search_path",
        &["SELECT 1; SET search_path = hr"],
        UNSUPPORTED,
    ),
    case(
        "search_path",
        &["BEGIN; SET search_path = hr; ROLLBACK"],
        UNSUPPORTED,
    ),
    case(
        "search_path",
        &["BEGIN", "SET search_path = hr"],
        UNSUPPORTED,
    ),
    case(
        "search_path",
        &["BEGIN", "SAVEPOINT s", "SET LOCAL search_path = hr"],
        UNSUPPORTED,
    ),
    case(
        "search_path",
        &[
            "SET search_path = information_schema",
            "SELECT translate(pan, '0123456789', 'abcdefghij') FROM public.payments WHERE id = 1",
        ],
        DENIED,
    ),
    case(
        "search_path",
        &[
            "SET search_path = information_schema",
            "SELECT translate(pan, '0123456789', 'abcdefghij') FROM payments",
        ],
        Refused("42P01"),
    ),
    case(
        "search_path",
        &["SET search_path = hr, public", "SELECT name FROM employees"],
        DENIED,
    ),
    case(
        "search_path",
        &["SET SCHEMA 'hr'", "SELECT name FROM employees"],
        DENIED,
    ),
    case(
        "search_path",
        &[
            "SET search_path = 'hr, public'",
            "SELECT name FROM employees",
        ],
        DENIED,
    ),
    case(
        "search_path",
        &[
            "SET search_path = hr, public",
            "RESET search_path",
            "SELECT name FROM employees",
        ],
        DENIED,
    ),
    case(
        "search_path",
        &[
            "SET search_path = hr",
            "DISCARD ALL",
            "SELECT count(*) FROM customers",
        ],
        Runs,
    ),
    case(
        "search_path",
        &[
            "SET search_path = hr",
            "RESET ALL",
            "SELECT count(*) FROM customers",
        ],
        Runs,
    ),
    case(
        "search_path",
        &[
            "SET search_path = hr",
            "BEGIN",
            "SAVEPOINT a",
            "ROLLBACK TO SAVEPOINT a",
            "SELECT name FROM employees",
        ],
        DENIED,
    ),
    case(
        "search_path",
        &[
            "SET search_path = hr",
            "SET search_path TO DEFAULT",
            "SELECT name FROM employees",
        ],
        DENIED,
    ),
    case(
        "search_path",
        &[
            "SET search_path = nosuchschema",
            "SELECT name FROM hr.employees",
        ],
        DENIED,
    ),
    case(
        "search_path",
        &[
            "SET search_path = hr",
            "PREPARE p AS SELECT name FROM employees",
        ],
        DENIED,
    ),
    case(
        "search_path",
        &[
            "PREPARE p AS SELECT count(*) FROM customers",
            "SET search_path = hr",
            "EXECUTE p",
        ],
        // PostgreSQL plans it again under hr (where there is no customers).
        DENIED,
    ),
    case(
        "search_path",
        &[
            "SET search_path = '$user', public",
            "SELECT count(*) FROM customers",
        ],
        Runs,
    ),
    case("search_path", &["SET search_path = pg_temp, public"], Runs),
    // ---- routines: an allow-list of built-ins -----------------------------
    case("routines", &["SELECT pg_read_file('/etc/passwd')"], DENIED),
    case(
        "routines",
        &["SELECT pg_read_binary_file('/etc/passwd')"],
        DENIED,
    ),
    case(
        "routines",
        &["SELECT * FROM pg_catalog.pg_read_file('/etc/passwd')"],
        DENIED,
    ),
    case("routines", &["SELECT pg_ls_dir('.')"], DENIED),
    case("routines", &["SELECT pg_stat_file('PG_VERSION')"], DENIED),
    case(
        "routines",
        &["SELECT query_to_xml('select pan from payments', true, true, '')"],
        DENIED,
    ),
    case(
        "routines",
        &["SELECT table_to_xml('payments', true, true, '')"],
        DENIED,
    ),
    case(
        "routines",
        &["SELECT database_to_xml(true, true, '')"],
        DENIED,
    ),
    case(
        "routines",
        &["SELECT ts_stat('select to_tsvector(pan) from payments')"],
        DENIED,
    ),
    case("routines", &["SELECT lo_import('/etc/passwd')"], DENIED),
    case("routines", &["SELECT pg_stat_get_activity(NULL)"], DENIED),
    case(
        "routines",
        &["SELECT dblink('host=127.0.0.1', 'select 1')"],
        DENIED,
    ),
    case(
        "routines",
        &["SELECT leak(pan) FROM payments WHERE id = 1"],
        DENIED,
    ),
    case("routines", &["SELECT public.leak('x')"], DENIED),
    case("routines", &["SELECT lower('X')"], DENIED),
    case("routines", &["SELECT pg_catalog.lower('X')"], Runs),
    case("routines", &["SELECT upper('x'), length('abc')"], Runs),
    case("routines", &["SELECT 'a' === 'b'"], DENIED),
    case(
        "routines",
        &["SELECT 1 WHERE 'a' OPERATOR(public.===) 'b'"],
        DENIED,
    ),
    case("routines", &["SELECT nextval('no_such_seq')"], DENIED),
    case("routines", &["SELECT setval('no_such_seq', 1)"], DENIED),
    case("routines", &["SELECT pg_terminate_backend(1)"], DENIED),
    case("routines", &["SELECT pg_cancel_backend(1)"], DENIED),
    case("routines", &["SELECT pg_reload_conf()"], DENIED),
    case("routines", &["SELECT pg_advisory_lock(1)"], DENIED),
    case("routines", &["SELECT pg_notify('c', 'x')"], DENIED),
    case("routines", &["SELECT txid_current() > 0"], Runs),
    case(
        "routines",
        &["SELECT random() < 2, now() > '2000-01-01'"],
        Runs,
    ),
    case(
        "routines",
        &["SELECT count(*) FROM generate_series(1, 3)"],
        Runs,
    ),
    case("routines", &["SELECT pg_sleep(0)"], Runs),
    case("routines", &["SELECT current_setting('search_path')"], Runs),
    case(
        "routines",
        &["SELECT set_config('application_name', 'report', false)"],
        Runs,
    ),
    case(
        "routines",
        &["SELECT set_config('session_replication_role', 'replica', false)"],
        DENIED,
    ),
    case(
        "routines",
        &["VALUES (pg_read_file('/etc/passwd'))"],
        DENIED,
    ),
    case(
        "routines",
        &["SELECT 1 WHERE pg_read_file('/etc/passwd') IS NOT NULL"],
        DENIED,
    ),
    case(
        "routines",
        &["SELECT (SELECT pg_ls_dir('.') LIMIT 1)"],
        DENIED,
    ),
    case(
        "routines",
        &["SELECT count(*) FROM customers ORDER BY pg_ls_dir('.')"],
        DENIED,
    ),
    // ---- code the gateway cannot read -------------------------------------
    case("code", &["DO $$ BEGIN DELETE FROM orders; END $$"], DENIED),
    case("code", &["CALL purge_orders()"], DENIED),
    case(
        "code",
        &["CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'"],
        DENIED,
    ),
    case(
        "code",
        &["CREATE PROCEDURE p() LANGUAGE sql AS 'DELETE FROM orders'"],
        DENIED,
    ),
    case(
        "code",
        &["CREATE TRIGGER t BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION leak_trigger()"],
        DENIED,
    ),
    case(
        "code",
        &["CREATE RULE r AS ON SELECT TO orders DO INSTEAD SELECT * FROM payments"],
        DENIED,
    ),
    case(
        "code",
        &["CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION leak_trigger()"],
        DENIED,
    ),
    case(
        "code",
        &["ALTER FUNCTION leak(text) SECURITY DEFINER"],
        DENIED,
    ),
    case("code", &["PREPARE p AS DELETE FROM orders"], DENIED),
    case("code", &["EXPLAIN ANALYZE DELETE FROM orders"], DENIED),
    as_group(
        "code",
        "admins",
        &["DO $$ BEGIN PERFORM 1; END $$"],
        Approval,
    ),
    as_group("code", "admins", &["CALL purge_orders()"], Approval),
    as_group(
        "code",
        "admins",
        &["CREATE FUNCTION f2() RETURNS int LANGUAGE sql AS 'SELECT 1'"],
        Approval,
    ),
    as_group("code", "admins", &["SELECT leak('x')"], DENIED),
    // ---- who the session is -----------------------------------------------
    case("roles", &["SET ROLE postgres"], DENIED),
    case("roles", &["SET SESSION AUTHORIZATION postgres"], DENIED),
    case(
        "roles",
        &["SELECT set_config('role', 'postgres', false)"],
        DENIED,
    ),
    case(
        "roles",
        &["SELECT set_config('session_authorization', 'postgres', false)"],
        DENIED,
    ),
    case("roles", &["BEGIN; SET LOCAL ROLE postgres; COMMIT"], DENIED),
    case("roles", &["RESET ROLE"], DENIED),
    as_group("roles", "admins", &["SET ROLE postgres"], DENIED),
    case("roles", &["ALTER ROLE tollgate_gateway SUPERUSER"], DENIED),
    case("roles", &["GRANT postgres TO tollgate_gateway"], DENIED),
    case("roles", &["SET session_replication_role = replica"], DENIED),
    case(
        "roles",
        &["BEGIN; LOCK TABLE payments IN ACCESS EXCLUSIVE MODE; COMMIT"],
        DENIED,
    ),
    case("roles", &["COMMIT PREPARED 'someone-elses'"], DENIED),
    case(
        "roles",
        &["BEGIN; SELECT id FROM payments WHERE id = 1 FOR UPDATE; COMMIT"],
        DENIED,
    ),
    case("routines", &["EXPLAIN SELECT public.leak('x')"], DENIED),
    case("roles", &["ROLLBACK PREPARED 'someone-elses'"], DENIED),
    // ---- values that carry a protected column ------------------------------
    case("values", &["SELECT pan FROM payments WHERE id = 1"], Runs),
    case("values", &["SELECT * FROM payments"], Runs),
    case(
        "values",
        &[
            "SELECT x.pan FROM customers c, LATERAL (SELECT pan FROM payments WHERE customer_id = c.id) x",
        ],
        Runs,
    ),
    case(
        "values",
        &["WITH c AS (SELECT pan FROM payments) SELECT pan FROM c LIMIT 3"],
        Runs,
    ),
    case(
        "values",
        &["SELECT t.pan FROM (SELECT * FROM payments) t"],
        Runs,
    ),
    case(
        "values",
        &["SELECT t FROM (SELECT * FROM payments) t"],
        DENIED,
    ),
    case(
        "values",
        &["WITH c AS (SELECT pan FROM payments) SELECT c FROM c"],
        DENIED,
    ),
    case("values", &["SELECT p FROM payments p WHERE id = 1"], DENIED),
    case(
        "values",
        &["SELECT (p).pan FROM payments p WHERE id = 1"],
        DENIED,
    ),
    case(
        "values",
        &[
            "SELECT translate(p.row_to_json::text, '0123456789', 'abcdefghij') FROM payments p LIMIT 5",
        ],
        DENIED,
    ),
    case(
        "values",
        &["SELECT p.row_to_json FROM payments p WHERE id = 1"],
        DENIED,
    ),
    case(
        "values",
        &["SELECT t.record_send FROM (SELECT pan, cvv FROM payments) t"],
        DENIED,
    ),
    case(
        "values",
        &["WITH c AS (SELECT pan, cvv FROM payments) SELECT c.record_send FROM c"],
        DENIED,
    ),
    case(
        "values",
        &["SELECT j.record_send FROM (payments JOIN customers ON true) j"],
        DENIED,
    ),
    case(
        "values",
        &["SELECT t.quote_literal FROM (SELECT cvv FROM payments WHERE id = 1) t"],
        DENIED,
    ),
    case(
        "values",
        &[
            "SELECT 1 FROM payments WHERE id = 1 AND xmlparse(document '0' || pan || '0x' || cvv) IS NULL",
        ],
        DENIED,
    ),
    case(
        "values",
        &["SELECT 1 FROM payments WHERE id = 1 AND xmlparse(document cvv) IS NULL"],
        DENIED,
    ),
    case(
        "routines",
        &["SELECT c.leak FROM customers c WHERE id = 1"],
        DENIED,
    ),
    case(
        "values",
        &["SELECT row_to_json(p) FROM payments p WHERE id = 1"],
        DENIED,
    ),
    case(
        "values",
        &["SELECT to_jsonb(p.*) FROM payments p WHERE id = 1"],
        DENIED,
    ),
    case(
        "values",
        &["SELECT ROW(pan, cvv) FROM payments WHERE id = 1"],
        DENIED,
    ),
    case(
        "values",
        &["SELECT ARRAY[pan] FROM payments WHERE id = 1"],
        DENIED,
    ),
    case("values", &["SELECT array_agg(p) FROM payments p"], DENIED),
    case("values", &["SELECT json_agg(pan) FROM payments"], DENIED),
    case(
        "values",
        &["SELECT string_agg(pan, ',') FROM payments"],
        DENIED,
    ),
    case(
        "values",
        &["SELECT json_build_object('p', pan) FROM payments WHERE id = 1"],
        DENIED,
    ),
    case(
        "values",
        &["SELECT (SELECT pan FROM payments LIMIT 1)"],
        DENIED,
    ),
    case(
        "values",
        &[
            "SELECT (SELECT pan FROM payments p WHERE p.customer_id = c.id LIMIT 1) FROM customers c",
        ],
        DENIED,
    ),
    case(
        "values",
        &["SELECT pan FROM payments UNION SELECT 'x'"],
        DENIED,
    ),
    case(
        "values",
        &["SELECT pan FROM payments WHERE id = 1 UNION ALL SELECT pan FROM payments WHERE id = 2"],
        DENIED,
    ),
    case(
        "values",
        &["SELECT translate(pan, '0123456789', 'abcdefghij') FROM payments WHERE id = 1"],
        DENIED,
    ),
    case(
        "values",
        &["SELECT reverse(pan) FROM payments WHERE id = 1"],
        DENIED,
    ),
    case(
        "values",
        &["SELECT pan::bytea FROM payments WHERE id = 1"],
        DENIED,
    ),
    case(
        "values",
        &["SELECT CAST(pan AS int8) FROM payments WHERE id = 1"],
        DENIED,
    ),
    case(
        "values",
        &["SELECT substr(pan, 1, 6) || substr(pan, 7) FROM payments WHERE id = 1"],
        DENIED,
    ),
    case("values", &["SELECT cvv FROM payments WHERE id = 1"], Runs),
    // An error echoes a value padded past content detection's whole runs.
    case(
        "values",
        &["SELECT ('0' || '4111111111111111' || '0x')::int"],
        Refused("22003"),
    ),
    // ---- catalog views that hold data -----------------------------------------
    case(
        "catalog",
        &["SELECT most_common_vals FROM pg_stats WHERE attname = 'pan'"],
        DENIED,
    ),
    case(
        "catalog",
        &["SELECT * FROM pg_stats WHERE tablename = 'payments'"],
        DENIED,
    ),
    case("catalog", &["SELECT query FROM pg_stat_activity"], DENIED),
    case(
        "catalog",
        &["SELECT * FROM pg_catalog.pg_statistic LIMIT 1"],
        DENIED,
    ),
    case(
        "catalog",
        &["SELECT stxdndistinct FROM pg_statistic_ext_data"],
        DENIED,
    ),
    case(
        "catalog",
        &["SELECT * FROM pg_stats_ext WHERE tablename = 'payments'"],
        DENIED,
    ),
    case(
        "catalog",
        &["SELECT statement FROM pg_prepared_statements"],
        DENIED,
    ),
    case("catalog", &["SELECT count(*) FROM pg_class"], Runs),
];

/// Objects an attacker would find in a real database: a user function, a
/// shadow of a built-in, a user operator, a trigger function, a procedure.
const SETUP: &str = "
CREATE OR REPLACE FUNCTION public.leak(text) RETURNS text LANGUAGE sql AS 'SELECT $1';
CREATE OR REPLACE FUNCTION public.lower(text) RETURNS text LANGUAGE sql AS 'SELECT $1';
CREATE OR REPLACE FUNCTION public.same(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT $1 = $2';
DO $$ BEGIN
  CREATE OPERATOR public.=== (LEFTARG = text, RIGHTARG = text, FUNCTION = public.same);
EXCEPTION WHEN duplicate_function THEN NULL; END $$;
CREATE OR REPLACE FUNCTION public.leak_trigger() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
CREATE OR REPLACE PROCEDURE public.purge_orders() LANGUAGE sql AS 'DELETE FROM orders';
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO tollgate_gateway;
";

/// What the upstream holds, read directly (as the superuser).
fn fingerprint() -> String {
    database()
        .pg
        .psql(
            "payments",
            "SELECT (SELECT md5(string_agg(o::text, ',' ORDER BY order_no)) FROM orders o) || \
                    (SELECT md5(string_agg(p::text, ',' ORDER BY id)) FROM payments p) || \
                    (SELECT md5(string_agg(c::text, ',' ORDER BY id)) FROM customers c) || \
                    (SELECT count(*) FROM pg_proc WHERE proname IN ('f', 'f2', 'p'))::text || \
                    (SELECT count(*) FROM pg_rewrite WHERE rulename <> '_RETURN')::text || \
                    (SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal)::text || \
                    (SELECT count(*) FROM pg_event_trigger)::text || \
                    (SELECT rolsuper::text FROM pg_roles WHERE rolname = 'tollgate_gateway')",
        )
        .expect("fingerprint the upstream")
}

/// The seed's card numbers, in the spellings an attacker would turn them
/// into: digits, reversed, and letter-encoded (`translate(pan, '0123456789',
/// 'abcdefghij')`).
fn leaked_pan(output: &str) -> Option<String> {
    let squeezed: String = output
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    for pan in FIXTURE_PANS {
        let letters: String = pan.bytes().map(|d| (b'a' + d - b'0') as char).collect();
        let reversed: String = pan.chars().rev().collect();
        for spelling in [pan.to_string(), letters, reversed] {
            if squeezed.contains(&spelling) {
                return Some(pan.to_string());
            }
        }
    }
    None
}

fn check(case: &Case, how: &str, outcome: Result<String, (String, String)>) -> Option<String> {
    let label = format!(
        "[{how}] ({}) {}{}",
        case.class,
        if case.options.is_empty() {
            String::new()
        } else {
            format!("options='{}' ", case.options)
        },
        case.steps.join(" ⏎ ")
    );
    let output = match &outcome {
        Ok(out) => out.clone(),
        Err((_, message)) => message.clone(),
    };
    if let Some(pan) = leaked_pan(&output) {
        return Some(format!(
            "{label}\n    LEAKED card number {pan} in: {output}"
        ));
    }
    match (case.want, outcome) {
        (Runs, Ok(_)) => None,
        (Refused(want), Err((code, _))) if code == want => None,
        (Approval, Err((code, message)))
            if code == "42501" && message.contains("needs approval") =>
        {
            None
        }
        (Fatal, Err((code, message)))
            if code == "0A000" || message.contains("not allowed through the gateway") =>
        {
            None
        }
        (want, Err((code, message))) => Some(format!(
            "{label}\n    expected {want:?}, got {code}: {message}"
        )),
        (want, Ok(out)) => Some(format!("{label}\n    expected {want:?}, but it ran: {out}")),
    }
}

/// psql: every step as its own `-c` (one simple Query each), verbose errors.
fn through_psql(gw: &TestGateway, token: &str, case: &Case) -> Result<String, (String, String)> {
    let mut command = gw.psql_command(token, "payments", "verify-full");
    command.args(["-v", "VERBOSITY=verbose"]);
    if !case.options.is_empty() {
        command.env("PGOPTIONS", case.options);
    }
    for step in case.steps {
        command.args(["-c", step]);
    }
    let out = command.output().expect("run psql");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    // "ERROR:  42501: ..." with VERBOSITY=verbose; FATALs at login have no code.
    let code = stderr
        .split_once("ERROR:  ")
        .and_then(|(_, rest)| rest.get(..5))
        .unwrap_or("")
        .to_string();
    Err((code, format!("{stdout}{stderr}")))
}

fn db_error(error: &tokio_postgres::Error) -> (String, String) {
    match error.as_db_error() {
        Some(db) => (db.code().code().to_string(), db.message().to_string()),
        None => (String::new(), error.to_string()),
    }
}

/// tokio-postgres: each step with the simple protocol, or (`extended`)
/// each with Parse/Bind/Execute.
async fn through_tokio_postgres(
    gw: &TestGateway,
    token: &str,
    case: &Case,
    extended: bool,
) -> Result<String, (String, String)> {
    let mut config: tokio_postgres::Config = format!(
        "host=localhost port={} dbname=payments user=alice",
        gw.addr.port()
    )
    .parse()
    .expect("config");
    config
        .password(token)
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    if !case.options.is_empty() {
        config.options(case.options);
    }
    let (client, connection) = config
        .connect(gw.tokio_postgres_tls())
        .await
        .map_err(|e| db_error(&e))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut output = String::new();
    for step in case.steps {
        // Path changes and SQL PREPARE go as simple queries (tokio-postgres's
        // batch_execute), the only way the gateway takes them.
        if extended && !simple_only(step) {
            let rows = client.query(*step, &[]).await.map_err(|e| db_error(&e))?;
            for row in rows {
                for i in 0..row.len() {
                    let value: Option<String> = row.try_get(i).ok().flatten();
                    output.push_str(value.as_deref().unwrap_or("?"));
                    output.push('|');
                }
                output.push('\n');
            }
        } else {
            let messages = client.simple_query(step).await.map_err(|e| db_error(&e))?;
            for message in messages {
                if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                    for i in 0..row.len() {
                        output.push_str(row.get(i).unwrap_or("NULL"));
                        output.push('|');
                    }
                    output.push('\n');
                }
            }
        }
    }
    Ok(output)
}

fn simple_only(sql: &str) -> bool {
    let upper = sql.to_ascii_uppercase();
    [
        "SET SEARCH_PATH",
        "SET SCHEMA",
        "RESET",
        "DISCARD",
        "PREPARE",
        "DEALLOCATE",
    ]
    .iter()
    .any(|p| upper.starts_with(p))
}

fn statements(sql: &str) -> usize {
    tollgate::pg::sql::analyze(sql).map_or(1, |a| a.statements.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adversarial_table_holds_through_every_protocol() {
    assert!(CASES.len() >= 150, "{} cases", CASES.len());
    database().pg.psql("payments", SETUP).expect("setup");
    let before = fingerprint();
    let gw = TestGateway::start_with("[policy]\nstarter = true\n").await;
    let mut failures = Vec::new();
    let mut runs = 0;
    for case in CASES {
        let token = gw.token("mallory", &case.groups.split(',').collect::<Vec<_>>());
        failures.extend(check(case, "psql", through_psql(&gw, &token, case)));
        failures.extend(check(
            case,
            "simple",
            through_tokio_postgres(&gw, &token, case, false).await,
        ));
        runs += 2;
        // The extended protocol takes one statement per Parse.
        if case.steps.iter().all(|s| statements(s) == 1) {
            failures.extend(check(
                case,
                "extended",
                through_tokio_postgres(&gw, &token, case, true).await,
            ));
            runs += 1;
        }
    }
    let after = fingerprint();
    let mut classes: Vec<(&str, usize)> = Vec::new();
    for case in CASES {
        match classes.iter_mut().find(|(c, _)| *c == case.class) {
            Some((_, n)) => *n += 1,
            None => classes.push((case.class, 1)),
        }
    }
    eprintln!("{} cases ({runs} runs) by class: {classes:?}", CASES.len());
    assert!(
        failures.is_empty(),
        "{} of {runs} runs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(before, after, "the upstream changed");
}

/// A statement pipelined right behind a search_path change is decided only
/// once the server has answered the change, under the path in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_behind_a_path_change_is_read_under_the_new_path() {
    let gw = TestGateway::start_with("[policy]\nstarter = true\n").await;
    let client = gw
        .tokio_postgres(&gw.token("mallory", &["analysts"]))
        .await
        .expect("connect");
    let first = client.simple_query("SET search_path = information_schema");
    let second = client.simple_query("SET search_path = public");
    let third = client.simple_query(
        "SELECT translate(pan, '0123456789', 'abcdefghij') FROM payments WHERE id = 1",
    );
    let (a, b, c) = tokio::join!(first, second, third);
    a.expect("first SET");
    b.expect("second SET");
    let error = c.expect_err("computed on a PAN under public: refused");
    let (code, message) = db_error(&error);
    assert_eq!(code, "42501", "{message}");
    assert!(message.contains("tollgate-masking"), "{message}");
}

/// A Parse that holds several statements is refused before anything is
/// sent anywhere (the row estimate would otherwise run it on the gateway's
/// own connection); the same text as a simple Query is decided as a whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_statements_in_one_parse_are_refused_before_they_go_anywhere() {
    let before = fingerprint();
    let gw = TestGateway::start_with("[policy]\nstarter = true\n").await;
    let token = gw.token("mallory", &["analysts"]);
    let client = gw.tokio_postgres(&token).await.expect("connect");
    for sql in [
        "SELECT * FROM payments; COMMIT; DELETE FROM orders",
        "SELECT count(*) FROM customers; DROP TABLE orders",
    ] {
        let error = client.query(sql, &[]).await.expect_err(sql);
        let (code, message) = db_error(&error);
        assert_eq!(code, "42601", "{sql}: {message}");
        assert!(message.contains("multiple commands"), "{message}");
    }
    assert!(
        client.simple_query("SELECT 1").await.is_ok(),
        "the session goes on"
    );
    // A path change, PREPARE or DEALLOCATE over the extended protocol is
    // refused: they take effect at some later Execute, where the gateway
    // could not follow them; as simple queries they are followed.
    for sql in [
        "SET search_path = hr",
        "PREPARE p AS SELECT 1",
        "DEALLOCATE ALL",
        "DISCARD ALL",
    ] {
        let error = client.query(sql, &[]).await.expect_err(sql);
        assert_eq!(db_error(&error).0, "0A000", "{sql}");
    }
    // Pipelined prepared statements (tokio-postgres sends both Parses
    // before either answer) both run.
    let (a, b) = tokio::try_join!(
        client.query("SELECT 1::int4", &[]),
        client.query("SELECT 2::int4", &[])
    )
    .expect("pipelined queries");
    assert_eq!((a[0].get::<_, i32>(0), b[0].get::<_, i32>(0)), (1, 2));
    assert_eq!(before, fingerprint(), "the upstream changed");
}

/// The server's own reports are the gateway's truth: code that turns
/// standard_conforming_strings off (here a routine a permissive policy
/// lets run) ends the session before another statement is read, even when
/// the attack statement was pipelined right behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_changed_behind_the_gateways_back_ends_the_session() {
    database()
        .pg
        .psql(
            "payments",
            "CREATE OR REPLACE FUNCTION public.flip() RETURNS int LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM set_config('standard_conforming_strings', 'off', false); RETURN 1; END $$; \
             CREATE OR REPLACE FUNCTION public.become(text) RETURNS int LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM set_config('client_encoding', $1, false); RETURN 1; END $$; \
             GRANT EXECUTE ON FUNCTION public.flip(), public.become(text) TO tollgate_gateway",
        )
        .expect("setup");
    let before = fingerprint();
    let gw = TestGateway::start().await; // allow_all: the routine may run
    let token = gw.token("mallory", &["analysts"]);

    let client = gw.tokio_postgres(&token).await.expect("connect");
    let flip = client.simple_query("SELECT flip()");
    let attack = client.simple_query("SELECT 'a\\', ' ; DELETE FROM orders; -- '");
    let (flipped, attacked) = tokio::join!(flip, attack);
    // The routine ran (its result may or may not arrive before the end).
    let _ = flipped;
    let error = attacked.expect_err("the pipelined statement must not run");
    assert!(
        error
            .as_db_error()
            .is_none_or(|db| db.code().code() == "0A000"),
        "{error:?}"
    );
    assert!(
        client.simple_query("SELECT 1").await.is_err(),
        "the session is over"
    );
    assert_eq!(before, fingerprint(), "the upstream changed");

    let client = gw.tokio_postgres(&token).await.expect("connect");
    let error = client
        .simple_query("SELECT become('SJIS')")
        .await
        .expect_err("the session ends");
    let message = error
        .as_db_error()
        .map(|db| db.message().to_string())
        .unwrap_or_else(|| error.to_string());
    assert!(
        message.contains("client_encoding") || client.is_closed(),
        "{message}"
    );
    // Everyone else is still served.
    let other = gw.tokio_postgres(&token).await.expect("connect");
    tokio::time::timeout(Duration::from_secs(5), other.simple_query("SELECT 1"))
        .await
        .expect("in time")
        .expect("still serving");
}

/// A bulk export by any route needs approval: a big read by its estimate,
/// and paging through a table by the rows actually returned to the
/// identity (the estimate of each page is small). A small table read
/// without WHERE is not a bulk export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_export_by_any_route_needs_approval() {
    database()
        .pg
        .psql(
            "payments",
            "CREATE TABLE IF NOT EXISTS big_cards AS \
               SELECT n AS id, '4242424242424242' AS pan FROM generate_series(1, 3000) n; \
             ANALYZE big_cards; GRANT SELECT ON big_cards TO tollgate_gateway",
        )
        .expect("setup");
    let gw = TestGateway::start_with("[policy]\nstarter = true\n").await;
    let token = gw.token("pager", &["analysts"]);
    let client = gw.tokio_postgres(&token).await.expect("connect");
    let needs_approval =
        |result: Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>| {
            let error = result.expect_err("needs approval");
            let (code, message) = db_error(&error);
            code == "42501" && message.contains("cardholder-bulk-export-needs-approval")
        };
    assert!(needs_approval(
        client.simple_query("SELECT * FROM big_cards").await
    ));
    client
        .simple_query("SELECT * FROM card_events")
        .await
        .expect("a small table is not a bulk export");
    // Paging: each page's estimate is 300 rows, but the rows add up.
    let mut pages = 0;
    loop {
        let page = format!(
            "SELECT id, pan FROM big_cards ORDER BY id LIMIT 300 OFFSET {}",
            pages * 300
        );
        match client.simple_query(&page).await {
            Ok(rows) => {
                let text = format!("{rows:?}");
                assert!(!text.contains("4242424242424242"), "masked");
                pages += 1;
                assert!(pages <= 4, "paging went on past 1000 rows");
            }
            Err(error) => {
                let (code, message) = db_error(&error);
                assert_eq!(code, "42501", "{message}");
                assert!(
                    message.contains("cardholder-bulk-export-needs-approval"),
                    "{message}"
                );
                break;
            }
        }
    }
    assert_eq!(
        pages, 4,
        "1200 rows returned, then the next page needs approval"
    );
    // A cursor could be fetched in pieces: declaring one over cardholder
    // data needs approval (its rows cannot be estimated).
    let token = gw.token("fetcher", &["analysts"]);
    let client = gw.tokio_postgres(&token).await.expect("connect");
    let error = client
        .batch_execute("BEGIN; DECLARE c CURSOR FOR SELECT pan FROM big_cards WHERE id > 0")
        .await
        .expect_err("needs approval");
    assert!(db_error(&error).1.contains("needs approval"), "{error:?}");
    // Someone else is not affected.
    let other = gw
        .tokio_postgres(&gw.token("other", &["analysts"]))
        .await
        .unwrap();
    other
        .simple_query("SELECT pan FROM big_cards WHERE id = 1")
        .await
        .expect("another identity reads");
}
