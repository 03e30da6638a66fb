//! Masking through the real gateway: psql (text), tokio-postgres (binary),
//! COPY, errors, notices, notifications, JSON; reveal by policy; and no raw
//! PAN anywhere in the gateway's data directory afterwards.

use bytes::BytesMut;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use tollgate::identity::dev_issuer::TokenRequest;
use tollgate_e2e::{FIXTURE_PANS, TestGateway};

fn assert_no_raw_pan(what: &str, text: &str) {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    for pan in FIXTURE_PANS {
        assert!(
            !text.contains(pan) && !digits.contains(pan),
            "{what} holds the raw PAN {pan}:\n{text}"
        );
    }
}

fn agent_token(gw: &TestGateway) -> String {
    gw.token_with(TokenRequest {
        subject: "support-bot".into(),
        groups: vec!["agents".into()],
        mfa: false,
        agent: true,
        ttl_secs: 600,
    })
}

async fn starter() -> TestGateway {
    TestGateway::start_with("[policy]\nstarter = true").await
}

/// Raw bytes of any value, in whatever format it arrived.
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Send raw bytes back as a binary parameter of the given type.
#[derive(Debug)]
struct RawParam(Vec<u8>);

impl ToSql for RawParam {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&self.0);
        Ok(IsNull::No)
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    to_sql_checked!();
}

/// PostgreSQL's own reading of a binary numeric value, as text.
async fn numeric_text(client: &tokio_postgres::Client, binary: Vec<u8>) -> String {
    client
        .query_one("SELECT $1::numeric::text", &[&RawParam(binary)])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_sees_pci_display_pans_in_psql_and_redacted_cvv() {
    let gw = starter().await;
    let out = gw.psql(
        &agent_token(&gw),
        &[
            "-F",
            "|",
            "-c",
            "SELECT id, pan, cvv FROM payments WHERE id > 0 ORDER BY id",
        ],
    );
    let text = out.ok();
    assert_no_raw_pan("psql output", text);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 12, "{text}");
    assert_eq!(lines[0], "1|411111******1111|[REDACTED]");
    assert_eq!(lines[4], "5|378282*****0005|[REDACTED]");
    assert_eq!(
        lines[9], "10|**********1667|[REDACTED]",
        "14-digit Diners: last four only"
    );
    // Lookalikes stay as they are; the PAN in free text is masked in place.
    let orders = gw
        .psql(
            &agent_token(&gw),
            &["-F", "|", "-c", "SELECT order_no, placed_at_ms, device_imei, note FROM orders WHERE customer_id > 0 ORDER BY order_no"],
        )
        .ok()
        .to_string();
    assert!(
        orders.contains("ORD-7730019918273645|1764061234567|356938035643809|gift wrap"),
        "{orders}"
    );
    assert!(
        orders.contains("order placed via card 4111 11** **** 1111"),
        "{orders}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_results_are_masked_and_still_decode() {
    let gw = starter().await;
    let client = gw.tokio_postgres(&agent_token(&gw)).await.unwrap();
    // tokio-postgres asks for binary results.
    let row = client
        .query_one(
            "SELECT pan, cvv, amount::text FROM payments WHERE id = $1",
            &[&3i64],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "555555******4444");
    assert_eq!(row.get::<_, String>(1), "[REDACTED]");
    assert_eq!(row.get::<_, String>(2), "42.10");

    // Nobody labelled card_events: content detection finds the PANs in
    // binary int8, numeric, jsonb, json and text[] values.
    let row = client
        .query_one(
            "SELECT reference, ref_num, payload, raw, tags, memo FROM card_events WHERE id = $1",
            &[&1i64],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 4242420000004242);
    let as_text = numeric_text(&client, row.get::<_, Raw>(1).0).await;
    assert_eq!(
        as_text, "6011110000001117",
        "a masked numeric PostgreSQL itself decodes"
    );
    let jsonb = row.get::<_, Raw>(2).0;
    assert_eq!(jsonb[0], 1, "jsonb version byte kept");
    let payload: serde_json::Value = serde_json::from_slice(&jsonb[1..]).unwrap();
    assert_eq!(payload["card"]["number"], "411111******1111");
    assert_eq!(payload["card"]["cvv"], "***");
    assert_eq!(payload["ts"], 1764061234567u64, "a timestamp is not a PAN");
    let raw: serde_json::Value = serde_json::from_slice(&row.get::<_, Raw>(3).0).unwrap();
    assert_eq!(raw["pan"], 5555550000004444u64);
    assert_eq!(raw["cvc2"], 0);
    let tags: Vec<String> = row.get(4);
    assert_eq!(tags, ["visa 401288******1881", "plain"]);
    let memo: String = row.get(5);
    assert!(
        memo.starts_with("swiped ") && memo.ends_with(" at till 3"),
        "{memo}"
    );
    assert_no_raw_pan("track data", &memo);
    assert!(
        !memo.contains("3012101"),
        "nothing of the track survives: {memo}"
    );

    // Row 2 holds lookalikes only: returned unchanged.
    let row = client
        .query_one(
            "SELECT reference, ref_num, payload FROM card_events WHERE id = 2",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1764061300001);
    let as_text = numeric_text(&client, row.get::<_, Raw>(1).0).await;
    assert_eq!(as_text, "12345678901234567890");
    let payload = String::from_utf8_lossy(&row.get::<_, Raw>(2).0).into_owned();
    assert!(payload.contains("490154203237518"), "{payload}");
    // Discovery found card data in payload: a computation that could hide
    // it from detection is refused.
    let error = client
        .query_one(
            "SELECT reverse(payload::text) FROM card_events WHERE id = 1",
            &[],
        )
        .await
        .unwrap_err();
    tollgate_e2e::expect_sqlstate(&error, "42501");
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_key_error_does_not_echo_the_card_number() {
    let gw = starter().await;
    let admin = gw.token("ops", &["admins"]);
    let insert = "INSERT INTO payments (id, customer_id, brand, pan, expiry, amount) \
                  VALUES (99, 1, 'visa', '4111111111111111', '12/30', 1)";
    let out = gw.psql(&admin, &["-c", insert]);
    out.fails_with("duplicate key value violates unique constraint");
    assert!(
        out.stderr
            .contains("Key (pan)=(411111******1111) already exists"),
        "{}",
        out.stderr
    );
    assert_no_raw_pan("psql error", &out.stderr);

    let client = gw.tokio_postgres(&admin).await.unwrap();
    let error = client.execute(insert, &[]).await.unwrap_err();
    let db = error.as_db_error().unwrap();
    assert_eq!(db.code().code(), "23505");
    assert_eq!(
        db.detail(),
        Some("Key (pan)=(411111******1111) already exists.")
    );
    // The session goes on.
    assert_eq!(
        client
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_notices_and_notifications_are_masked() {
    // Masking does not depend on a policy: this gateway runs without one.
    let gw = TestGateway::start().await;
    let token = gw.token("dev", &["admins"]);
    // COPY of a table is masked field by field, by column rule.
    let copy = gw
        .psql(&token, &["-c", "COPY payments TO STDOUT"])
        .ok()
        .to_string();
    assert_eq!(copy.lines().count(), 12, "{copy}");
    let first: Vec<&str> = copy.lines().next().unwrap().split('\t').collect();
    assert_eq!(
        &first[..7],
        [
            "1",
            "1",
            "visa",
            "411111******1111",
            "12/30",
            "[REDACTED]",
            "19.99"
        ]
    );
    assert_no_raw_pan("COPY text", &copy);
    assert!(!copy.contains("\t123\t"), "no CVV in COPY output: {copy}");
    let csv = gw
        .psql(
            &token,
            &[
                "-c",
                "COPY payments (id, cvv, pan) TO STDOUT (FORMAT csv, FORCE_QUOTE (pan))",
            ],
        )
        .ok()
        .to_string();
    assert_eq!(
        csv.lines().next(),
        Some("1,[REDACTED],\"411111******1111\""),
        "{csv}"
    );
    let query = gw
        .psql(
            &token,
            &[
                "-c",
                "COPY (SELECT note FROM orders ORDER BY order_no) TO STDOUT",
            ],
        )
        .ok()
        .to_string();
    assert!(
        query.contains("order placed via card 4111 11** **** 1111"),
        "{query}"
    );
    // A delimiter that occurs in other fields (escaped by PostgreSQL).
    let dashed = gw
        .psql(
            &token,
            &[
                "-c",
                "COPY payments (created_at, id, expiry, pan) TO STDOUT (DELIMITER '-')",
            ],
        )
        .ok()
        .to_string();
    assert!(
        dashed
            .lines()
            .next()
            .unwrap()
            .ends_with("-411111******1111"),
        "{dashed}"
    );
    assert_no_raw_pan("COPY with '-'", &dashed);
    // Several COPYs in one message, a query form first.
    let two = gw
        .psql(
            &token,
            &[
                "-c",
                "COPY (SELECT 1) TO STDOUT; COPY payments (cvv) TO STDOUT",
            ],
        )
        .ok()
        .to_string();
    assert!(two.contains("[REDACTED]") && !two.contains("123"), "{two}");
    gw.psql(
        &token,
        &["-c", "COPY payments TO STDOUT (FORMAT csv, QUOTE '1')"],
    )
    .fails_with("cannot be masked");
    gw.psql(&token, &["-c", "COPY payments TO STDOUT (FORMAT binary)"])
        .fails_with("COPY in binary format cannot mask the column public.payments");
    // The extended protocol (a prepared COPY) too.
    let client = gw.tokio_postgres(&token).await.unwrap();
    let stream = client
        .copy_out("COPY payments (id, pan, cvv) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = futures_util::TryStreamExt::try_collect(stream)
        .await
        .unwrap();
    let text = String::from_utf8(chunks.concat()).unwrap();
    assert_eq!(text.lines().next(), Some("1\t411111******1111\t[REDACTED]"));
    assert_no_raw_pan("COPY via tokio-postgres", &text);

    let notice = gw.psql(
        &token,
        &[
            "-c",
            "DO $$ BEGIN RAISE NOTICE 'charging card %', '5555555555554444'; END $$",
        ],
    );
    notice.ok();
    assert!(
        notice.stderr.contains("charging card 555555******4444"),
        "{}",
        notice.stderr
    );

    let notified = gw.psql(
        &token,
        &[
            "-c",
            "LISTEN cards",
            "-c",
            "NOTIFY cards, 'card 6011111111111117 declined'",
            "-c",
            "SELECT 1",
        ],
    );
    let all = format!("{}\n{}", notified.ok(), notified.stderr);
    assert!(all.contains("card 601111******1117 declined"), "{all}");
    assert_no_raw_pan("notification", &all);
}

#[tokio::test(flavor = "multi_thread")]
async fn fraud_role_with_mfa_may_reveal_others_may_not() {
    let gw = starter().await;
    let query = ["-c", "SELECT pan FROM payments WHERE id = 1"];
    let fraud = gw.token_with(TokenRequest {
        subject: "investigator".into(),
        groups: vec!["fraud".into(), "analysts".into()],
        mfa: true,
        agent: false,
        ttl_secs: 600,
    });
    assert_eq!(gw.psql(&fraud, &query).ok(), "4111111111111111");
    let no_mfa = gw.token_with(TokenRequest {
        subject: "investigator".into(),
        groups: vec!["fraud".into(), "analysts".into()],
        mfa: false,
        agent: false,
        ttl_secs: 600,
    });
    assert_eq!(gw.psql(&no_mfa, &query).ok(), "411111******1111");
    let analyst = gw.token("ana", &["analysts"]);
    assert_eq!(gw.psql(&analyst, &query).ok(), "411111******1111");
    // An agent in the fraud group still never sees a full PAN.
    let agent = gw.token_with(TokenRequest {
        subject: "bot".into(),
        groups: vec!["fraud".into(), "agents".into()],
        mfa: true,
        agent: true,
        ttl_secs: 600,
    });
    assert_eq!(gw.psql(&agent, &query).ok(), "411111******1111");
}

#[tokio::test(flavor = "multi_thread")]
async fn column_rules_apply_strategies() {
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), "0123456789abcdef0123456789abcdef\n").unwrap();
    let gw = TestGateway::start_with(&format!(
        r#"[policy]
starter = true

[masking]
client = "last_four"
token_key = {{ file = "{}" }}

[[masking.rule]]
column = "public.payments.pan"
strategy = "token"

[[masking.rule]]
column = "public.customers.email"
strategy = "redact"

[[masking.rule]]
column = "public.customers.phone"
strategy = "null"
"#,
        key_file.path().display()
    ))
    .await;
    let token = gw.token("ana", &["analysts"]);
    let out = gw
        .psql(
            &token,
            &[
                "-F",
                "|",
                "-c",
                "\\pset null <null>",
                "-c",
                "SELECT p.pan, c.email, c.phone FROM payments p JOIN customers c ON c.id = p.customer_id \
                 WHERE p.id IN (1, 6) ORDER BY p.id",
            ],
        )
        .ok()
        .to_string();
    let rows: Vec<Vec<&str>> = out
        .lines()
        .filter(|l| l.contains('|'))
        .map(|l| l.split('|').collect())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows[0][0].starts_with("tok_") && rows[0][0].len() == 28,
        "{out}"
    );
    assert_ne!(rows[0][0], rows[1][0], "different PANs, different tokens");
    assert_eq!(rows[0][1], "[REDACTED]");
    assert_eq!(rows[0][2], "<null>");
    // Stable: the same PAN gives the same token in another session.
    let again = gw
        .psql(&token, &["-c", "SELECT pan FROM payments WHERE id = 1"])
        .ok()
        .to_string();
    assert_eq!(again, rows[0][0]);
    let phone = gw
        .psql(
            &token,
            &[
                "-c",
                "SELECT coalesce(phone, '<null>') FROM customers WHERE id = 1",
            ],
        )
        .ok()
        .to_string();
    assert_eq!(
        phone, "+44 20 7946 0018",
        "a computed column has no rule, and a phone number is not a PAN"
    );
    // The client default is last four for detected PANs.
    let note = gw
        .psql(
            &token,
            &[
                "-c",
                "SELECT note FROM orders WHERE order_no = 'ORD-1234567890123456'",
            ],
        )
        .ok()
        .to_string();
    assert_eq!(note, "order placed via card **** **** **** 1111");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_raw_pan_in_the_gateway_data_directory() {
    let gw = starter().await;
    let admin = gw.token("ops", &["admins"]);
    gw.psql(&admin, &["-c", "SELECT * FROM payments WHERE id > 0"])
        .ok();
    gw.psql(&admin, &["-c", "SELECT * FROM card_events WHERE id > 0"])
        .ok();
    let _ = gw.psql(
        &admin,
        &[
            "-c",
            "SELECT * FROM payments WHERE pan = '4111111111111111' AND id > 0",
        ],
    );
    let mut files = vec![gw.data_dir.clone()];
    let mut scanned = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            let bytes = std::fs::read(&path).unwrap();
            assert_no_raw_pan(
                &path.display().to_string(),
                &String::from_utf8_lossy(&bytes),
            );
            scanned += 1;
        }
    }
    assert!(scanned > 0, "the data directory has files");
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_tags_unlabelled_card_data_for_policy_and_masking() {
    let gw = starter().await;
    // A table whose names say nothing, created by a migration while the
    // gateway runs.
    tollgate_e2e::database()
        .pg
        .psql(
            "payments",
            "CREATE TABLE legacy_import AS SELECT * FROM (VALUES \
             (1, '4111111111111111', 'first'), (2, '5555555555554444', 'second'), \
             (3, '6011111111111117', 'third')) AS v(id, info, label); \
             GRANT SELECT ON legacy_import TO tollgate_gateway",
        )
        .unwrap();
    let agent = agent_token(&gw);
    let out = gw
        .psql(
            &agent,
            &["-c", "SELECT info FROM legacy_import WHERE id = 1"],
        )
        .ok()
        .to_string();
    assert_eq!(out, "411111******1111");
    // The sampled PANs make it a cardholder table: an export needs
    // approval, and a read of it (small, not a bulk export) comes back masked.
    gw.psql(&agent, &["-c", "COPY legacy_import TO STDOUT"])
        .fails_with("cardholder-bulk-export-needs-approval");
    gw.psql(
        &agent,
        &["-c", "COPY (SELECT memo FROM card_events) TO STDOUT"],
    )
    .fails_with("cardholder-bulk-export-needs-approval");
    let all = gw
        .psql(&agent, &["-c", "SELECT * FROM legacy_import ORDER BY id"])
        .ok()
        .to_string();
    assert!(
        all.contains("411111******1111") && !all.contains("4111111111111111"),
        "{all}"
    );
    // A table of lookalikes stays plain.
    gw.psql(&agent, &["-c", "SELECT * FROM customers"]).ok();

    // The inventory `tollgate discover` prints.
    let config = tollgate::Config::parse(
        &tollgate_e2e::config_text(&gw.data_dir, ""),
        "test.toml",
        &gw.data_dir,
    )
    .unwrap();
    let connection = config.connection("payments").unwrap();
    let catalog = tollgate::pg::catalog::Catalog::new(
        std::sync::Arc::new(tollgate::upstream::Upstream::new(connection).unwrap()),
        vec![],
        true,
    );
    let inventory = tollgate::pg::catalog::inventory(&catalog.refresh().await.unwrap());
    for line in [
        "public.payments.pan\tPAN",
        "public.payments.cvv\tsensitive authentication data",
        "public.legacy_import.info\tPAN",
        "public.card_events.payload\tholds card data in its values",
        "public.orders.note\tholds card data in its values",
    ] {
        assert!(
            inventory.contains(line),
            "{line} missing from:\n{inventory}"
        );
    }
    assert!(!inventory.contains("customers"), "{inventory}");
    assert!(!inventory.contains("order_no") && !inventory.contains("placed_at_ms"));
    assert_no_raw_pan("inventory", &inventory);
}

#[tokio::test(flavor = "multi_thread")]
async fn values_computed_from_masked_columns_are_refused() {
    let gw = starter().await;
    let analyst = gw.token("ana", &["analysts"]);
    for sql in [
        "SELECT cvv || '' FROM payments WHERE id = 1",
        "SELECT substr(pan, 1, 12) FROM payments WHERE id = 1",
        "SELECT p FROM payments p WHERE id = 1",
        "SELECT to_json(p.*) FROM payments p WHERE id = 1",
        "SELECT pan FROM payments WHERE id = 1 UNION SELECT 'x'",
        "SELECT x FROM unnest(ARRAY(SELECT cvv FROM payments WHERE id = 1)) AS u(x)",
        "SELECT (SELECT upper(cvv) FROM payments WHERE id = 1)",
        "SELECT s.cvv || '' FROM (SELECT cvv FROM payments WHERE id = 1) s",
        "WITH c AS (SELECT pan FROM payments WHERE id = 1) \
         SELECT translate(pan, '0123456789', 'abcdefghij') FROM c",
        "SELECT d::text FROM payments p(a, b, c, d) WHERE a = 1",
        "SELECT 1 FROM payments WHERE id = 1 \
         AND set_config('application_name', pan, false) IS NOT NULL",
        "SELECT 1 FROM payments WHERE id = 1 AND cvv::regclass IS NULL",
        "SELECT pan::text FROM payments WHERE id = 1",
        "SELECT coalesce(cvv, '') FROM payments WHERE id = 1",
    ] {
        gw.psql(&analyst, &["-c", sql])
            .fails_with("(policy \"tollgate-masking\")");
    }
    let out = gw.psql(
        &analyst,
        &["-c", "SELECT substr(pan, 1, 12) FROM payments WHERE id = 1"],
    );
    assert!(
        out.stderr
            .contains("computes on or copies the masked column public.payments.pan"),
        "{}",
        out.stderr
    );
    // What masking can follow runs: bare columns (also through subqueries),
    // filters, and computations on other columns.
    for (sql, expected) in [
        (
            "SELECT x FROM (SELECT cvv AS x FROM payments WHERE id = 1) s",
            "[REDACTED]",
        ),
        (
            "WITH c AS (SELECT pan FROM payments WHERE id = 1) SELECT pan FROM c",
            "411111******1111",
        ),
        (
            "SELECT count(*) FROM payments WHERE cvv = '123' AND id > 0",
            "1",
        ),
        ("SELECT upper(brand) FROM payments WHERE id = 1", "VISA"),
    ] {
        assert_eq!(gw.psql(&analyst, &["-c", sql]).ok(), expected, "{sql}");
    }
    // RETURNING is a select list too.
    let admin = gw.token("ops", &["admins"]);
    gw.psql(
        &admin,
        &[
            "-c",
            "UPDATE payments SET amount = amount WHERE id = 1 RETURNING cvv || ''",
        ],
    )
    .fails_with("(policy \"tollgate-masking\")");
    assert_eq!(
        gw.psql(
            &admin,
            &[
                "-c",
                "UPDATE payments SET amount = amount WHERE id = 1 RETURNING cvv"
            ],
        )
        .ok(),
        "[REDACTED]"
    );
    // A role that may reveal the column may compute on it.
    let fraud = gw.token("investigator", &["fraud", "analysts"]);
    assert_eq!(
        gw.psql(
            &fraud,
            &["-c", "SELECT substr(pan, 1, 8) FROM payments WHERE id = 1"]
        )
        .ok(),
        "41111111"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_select_star_is_masked_in_psql_and_a_binary_client() {
    // Masking holds whatever the policy (here none) lets through.
    let gw = TestGateway::start().await;
    let agent = agent_token(&gw);
    let text = gw
        .psql(
            &agent,
            &["-F", "|", "-c", "SELECT * FROM payments ORDER BY id"],
        )
        .ok()
        .to_string();
    assert_eq!(text.lines().count(), 12);
    assert!(
        text.lines().next().unwrap().contains("|411111******1111|"),
        "{text}"
    );
    assert_no_raw_pan("psql SELECT *", &text);
    let client = gw.tokio_postgres(&agent).await.unwrap();
    let rows = client
        .query("SELECT * FROM payments ORDER BY id", &[])
        .await
        .unwrap();
    let pans: Vec<String> = rows.iter().map(|r| r.get("pan")).collect();
    assert_eq!(pans[0], "411111******1111");
    assert_eq!(pans[8], "620550*********0004", "19-digit UnionPay");
    assert_no_raw_pan("binary SELECT *", &pans.join(" "));
    let cvvs: Vec<Option<String>> = rows.iter().map(|r| r.get("cvv")).collect();
    assert!(cvvs.iter().all(|c| c.as_deref() == Some("[REDACTED]")));
}
