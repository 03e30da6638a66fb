use super::*;

use super::STARTER_POLICY as STARTER;

fn starter() -> PolicyEngine {
    PolicyEngine::from_sources(vec![("pci.cedar".into(), STARTER.into())])
        .unwrap_or_else(|e| panic!("{e}"))
}

fn person(groups: &[&str]) -> Principal {
    Principal {
        subject: "alice@example.com".into(),
        issuer: "urn:test".into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        agent: false,
        mfa: false,
    }
}

fn context(command: &str) -> RequestContext<'static> {
    RequestContext {
        connection: "payments-db",
        command: Box::leak(command.to_string().into_boxed_str()),
        row_estimate: 0,
        has_where: false,
        has_limit: false,
        cardholder_data: true,
        rows_returned: 0,
        arguments: "",
        args: &[],
        client: "127.0.0.1".parse().unwrap(),
        time: SystemTime::now(),
    }
}

const PAYMENTS: Resource<'static> = Resource::Table {
    schema: "public",
    name: "payments",
    cardholder: true,
};
const LEDGER: Resource<'static> = Resource::Table {
    schema: "public",
    name: "ledger",
    cardholder: false,
};

fn denied_by(outcome: Outcome) -> String {
    match outcome {
        Outcome::Deny(rule) => rule.id,
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn starter_policy_is_valid_and_decides_the_done_when_cases() {
    let engine = starter();
    let admin = person(&["admins"]);
    assert_eq!(
        denied_by(engine.decide(&admin, "ddl", &PAYMENTS, &context("DROP TABLE"))),
        "no-destructive-ddl-on-cardholder-tables"
    );
    assert_eq!(
        engine.decide(&admin, "ddl", &LEDGER, &context("DROP TABLE")),
        Outcome::Allow
    );
    assert_eq!(
        denied_by(engine.decide(&admin, "delete", &PAYMENTS, &context("DELETE"))),
        "no-delete-or-update-without-where"
    );
    let copy = engine.decide(
        &person(&["analysts"]),
        "copy_out",
        &PAYMENTS,
        &context("COPY"),
    );
    match copy {
        Outcome::NeedsApproval { rules, approvals } => {
            assert_eq!(rules[0].id, "cardholder-bulk-export-needs-approval");
            assert_eq!(approvals, 1);
        }
        other => panic!("{other:?}"),
    }
    let hr = Resource::Table {
        schema: "hr",
        name: "salaries",
        cardholder: false,
    };
    let outcome = engine.decide(&person(&["analysts"]), "read", &hr, &context("SELECT"));
    assert_eq!(denied_by(outcome), "default-deny");
}

#[test]
fn row_estimates_and_limits_decide_bulk_reads() {
    let engine = starter();
    let analyst = person(&["analysts"]);
    let mut ctx = context("SELECT");
    ctx.has_where = true;
    ctx.row_estimate = 3;
    assert_eq!(
        engine.decide(&analyst, "read", &PAYMENTS, &ctx),
        Outcome::Allow
    );
    ctx.row_estimate = 50_000;
    assert!(matches!(
        engine.decide(&analyst, "read", &PAYMENTS, &ctx),
        Outcome::NeedsApproval { .. }
    ));
    let mut ctx = context("SELECT");
    ctx.has_limit = true;
    assert_eq!(
        engine.decide(&analyst, "read", &PAYMENTS, &ctx),
        Outcome::Allow
    );
    assert!(engine.uses_row_estimate());
}

#[test]
fn only_the_documented_role_sees_full_pans_and_never_an_agent() {
    let engine = starter();
    let pan = Resource::Column {
        schema: "public",
        table: "payments",
        name: "pan",
        cardholder: true,
        table_cardholder: true,
    };
    let mut fraud = person(&["fraud"]);
    assert!(
        matches!(
            engine.decide(&fraud, "reveal", &pan, &context("SELECT")),
            Outcome::Deny(_)
        ),
        "no MFA"
    );
    fraud.mfa = true;
    assert_eq!(
        engine.decide(&fraud, "reveal", &pan, &context("SELECT")),
        Outcome::Allow
    );
    fraud.agent = true;
    assert_eq!(
        denied_by(engine.decide(&fraud, "reveal", &pan, &context("SELECT"))),
        "agents-never-see-full-pan"
    );
    assert!(matches!(
        engine.decide(&person(&["analysts"]), "reveal", &pan, &context("SELECT")),
        Outcome::Deny(_)
    ));
}

fn problems(text: &str) -> String {
    match PolicyEngine::from_sources(vec![("p.cedar".into(), text.into())]) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn mistakes_fail_with_file_and_line() {
    let typo = "@id(\"a\")\n@reason(\"r\")\npermit (principal, action == Action::\"read\", resource)\nwhen { context.has_wher };\n";
    let error = problems(typo);
    assert!(error.starts_with("p.cedar:4: policy \"a\""), "{error}");
    let unknown_action = "\n\n@id(\"b\")\n@reason(\"r\")\npermit (principal, action == Action::\"raed\", resource);\n";
    assert!(
        problems(unknown_action).starts_with("p.cedar:5:"),
        "{}",
        problems(unknown_action)
    );
    let syntax = "@id(\"c\")\n@reason(\"r\")\npermit (principal, action, resource) when { 1 + };\n";
    assert!(
        problems(syntax).starts_with("p.cedar:3:"),
        "{}",
        problems(syntax)
    );
    let no_id = "@reason(\"r\")\npermit (principal, action, resource);\n";
    assert!(
        problems(no_id).contains("p.cedar:1: the policy has no @id"),
        "{}",
        problems(no_id)
    );
    let no_reason = "@id(\"d\")\npermit (principal, action, resource);\n";
    assert!(problems(no_reason).contains("has no @reason"));
}

#[test]
fn an_impossible_policy_is_an_error_not_a_warning() {
    let impossible = "@id(\"e\")\n@reason(\"r\")\npermit (principal, action == Action::\"read\", resource is Table) when { resource is Column };\n";
    assert!(
        problems(impossible).contains("p.cedar:"),
        "{}",
        problems(impossible)
    );
}

#[test]
fn duplicate_ids_are_refused() {
    let twice = "@id(\"x\")\n@reason(\"r\")\npermit (principal, action, resource);\n@id(\"x\")\n@reason(\"r\")\nforbid (principal, action, resource);\n";
    assert!(
        problems(twice).contains("p.cedar:4: policy id \"x\" is already used"),
        "{}",
        problems(twice)
    );
}

#[test]
fn mcp_starter_lists_read_only_tools_and_holds_exports() {
    let engine = PolicyEngine::from_sources(vec![
        ("pci.cedar".into(), STARTER.into()),
        ("mcp.cedar".into(), MCP_STARTER_POLICY.into()),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let tool = |server: &'static str, name: &'static str, read_only, destructive| Resource::Tool {
        server,
        name,
        read_only,
        destructive,
    };
    let mut agent = person(&["agents"]);
    agent.agent = true;
    let nobody = person(&[]);
    let ctx = context("tools/call");
    let decide = |who: &Principal, r: &Resource<'_>| engine.decide(who, "call_tool", r, &ctx);
    assert_eq!(
        decide(&nobody, &tool("docs", "search", true, false)),
        Outcome::Allow
    );
    assert!(matches!(
        decide(&nobody, &tool("docs", "delete_page", false, false)),
        Outcome::Deny(rule) if rule.id == "default-deny"
    ));
    // `in Server::"payments"`: the tool's parent is its server.
    assert_eq!(
        decide(&agent, &tool("payments", "find_payments", false, false)),
        Outcome::Allow
    );
    assert!(matches!(
        decide(&agent, &tool("payments", "export_cards", false, false)),
        Outcome::NeedsApproval { ref rules, .. } if rules[0].id == "mcp-destructive-or-bulk-tools-need-approval"
    ));
    assert!(matches!(
        decide(&agent, &tool("other", "find_payments", false, false)),
        Outcome::Deny(_)
    ));
}

#[test]
fn mcp_policies_see_resources_prompts_and_a_calls_arguments() {
    let policy = r#"
@id("docs-reads")
@reason("anyone reads the docs server's resources and prompts")
permit (principal, action in [Action::"read_resource", Action::"get_prompt"], resource in Server::"docs");

@id("small-searches")
@reason("searches of at most ten results")
permit (principal, action == Action::"call_tool", resource)
when { resource.name == "search" && context.args.contains("limit=10") && context.command == "tools/call" };

@id("textual")
@reason("a textual match on the arguments")
permit (principal, action == Action::"call_tool", resource)
when { resource.name == "fetch" && context.arguments like "*\"format\":\"csv\"*" };
"#;
    let engine = PolicyEngine::from_sources(vec![("mcp.cedar".into(), policy.into())])
        .unwrap_or_else(|e| panic!("{e}"));
    let who = person(&[]);
    let ctx = context("resources/read");
    let read = |server| Resource::McpResource {
        server,
        uri: "docs://handbook",
    };
    assert_eq!(
        engine.decide(&who, "read_resource", &read("docs"), &ctx),
        Outcome::Allow
    );
    assert!(matches!(
        engine.decide(&who, "read_resource", &read("payments"), &ctx),
        Outcome::Deny(rule) if rule.id == "default-deny"
    ));
    let prompt = Resource::Prompt {
        server: "docs",
        name: "summarize",
    };
    assert_eq!(
        engine.decide(&who, "get_prompt", &prompt, &context("prompts/get")),
        Outcome::Allow
    );
    // The arguments are in the context (as the records show them).
    let search = Resource::Tool {
        server: "docs",
        name: "search",
        read_only: false,
        destructive: false,
    };
    // As the MCP adapter gives them: the text, and the top-level pairs.
    let with = |arguments: &'static str| {
        let pairs: Vec<String> = match serde_json::from_str(arguments) {
            Ok(serde_json::Value::Object(map)) => {
                map.iter().map(|(k, v)| format!("{k}={v}")).collect()
            }
            _ => Vec::new(),
        };
        RequestContext {
            arguments,
            args: Box::leak(pairs.into_boxed_slice()),
            ..context("tools/call")
        }
    };
    assert_eq!(
        engine.decide(&who, "call_tool", &search, &with(r#"{"limit":10,"q":"x"}"#)),
        Outcome::Allow
    );
    assert!(matches!(
        engine.decide(
            &who,
            "call_tool",
            &search,
            &with(r#"{"limit":5000,"q":"x"}"#)
        ),
        Outcome::Deny(_)
    ));
    // `args` holds the top-level arguments only: a nested key of the same
    // name does not pass for one, as it does in a textual match.
    assert!(matches!(
        engine.decide(
            &who,
            "call_tool",
            &search,
            &with(r#"{"limit":5000,"q":{"limit":10}}"#)
        ),
        Outcome::Deny(_)
    ));
    let fetch = Resource::Tool {
        server: "docs",
        name: "fetch",
        read_only: false,
        destructive: false,
    };
    assert_eq!(
        engine.decide(
            &who,
            "call_tool",
            &fetch,
            &with(r#"{"format":"json","x":{"format":"csv"}}"#)
        ),
        Outcome::Allow,
        "the textual match is spoofable, which is why docs/mcp.md points to args"
    );
}

#[test]
fn decisions_repeated_on_the_same_shape_still_see_client_and_time() {
    // After the first request of a shape is validated, later ones leave
    // out the attributes no policy for the action reads: a policy that
    // does read them must still see them, call after call.
    let engine = PolicyEngine::from_sources(vec![(
        "t.cedar".into(),
        r#"
@id("reads") @reason("r")
permit (principal, action == Action::"read", resource);
@id("no-reads-from-10") @reason("not from 10/8")
forbid (principal, action == Action::"read", resource)
when { context.client.isInRange(ip("10.0.0.0/8")) };
@id("no-writes-after-2000") @reason("too late")
forbid (principal, action == Action::"write", resource)
when { context.time > datetime("2000-01-01") };
@id("writes") @reason("w")
permit (principal, action == Action::"write", resource);
"#
        .into(),
    )])
    .unwrap_or_else(|e| panic!("{e}"));
    let alice = person(&["analysts"]);
    let from = |ip: &str| RequestContext {
        client: ip.parse().unwrap(),
        ..context("SELECT")
    };
    for _ in 0..3 {
        assert_eq!(
            engine.decide(&alice, "read", &LEDGER, &from("127.0.0.1")),
            Outcome::Allow
        );
        assert_eq!(
            denied_by(engine.decide(&alice, "read", &LEDGER, &from("10.1.2.3"))),
            "no-reads-from-10"
        );
        assert_eq!(
            denied_by(engine.decide(&alice, "write", &LEDGER, &context("UPDATE"))),
            "no-writes-after-2000"
        );
    }
}

#[test]
fn kept_decisions_follow_every_context_attribute_a_policy_reads() {
    // Decisions are kept under the attributes the action's policies read:
    // the bulk-read rule reads rows_returned, so each value is decided on
    // its own, however often and in whichever order it is asked.
    let engine = starter();
    let analyst = person(&["analysts"]);
    let after = |rows: i64| RequestContext {
        rows_returned: rows,
        has_limit: true,
        ..context("SELECT")
    };
    for _ in 0..3 {
        for (rows, held) in [(0, false), (5000, true), (999, false), (1001, true)] {
            let outcome = engine.decide(&analyst, "read", &PAYMENTS, &after(rows));
            assert_eq!(
                matches!(outcome, Outcome::NeedsApproval { .. }),
                held,
                "{rows} rows returned: {outcome:?}"
            );
        }
        let mut stranger = person(&["nobody"]);
        stranger.subject = "mallory@example.com".into();
        assert!(matches!(
            engine.decide(&stranger, "read", &PAYMENTS, &after(0)),
            Outcome::Deny(_)
        ));
    }
}

#[test]
fn an_attribute_read_through_an_escaped_name_is_still_part_of_the_kept_decision() {
    // `context["m\u{66}a"]` reads `mfa` without its name in the source
    // text: the kept decision must still tell MFA from no MFA.
    let engine = PolicyEngine::from_sources(vec![(
        "t.cedar".into(),
        r#"
@id("reads") @reason("r")
permit (principal, action == Action::"read", resource);
@id("mfa-only") @reason("needs MFA")
forbid (principal, action == Action::"read", resource)
unless { context["m\u{66}a"] };
@id("bulk") @reason("b")
forbid (principal, action == Action::"read", resource)
when { context has "rows_r\u{65}turned" && context.rows_returned > 10 };
"#
        .into(),
    )])
    .unwrap_or_else(|e| panic!("{e}"));
    let mut alice = person(&["analysts"]);
    let after = |rows: i64| RequestContext {
        rows_returned: rows,
        ..context("SELECT")
    };
    for _ in 0..2 {
        alice.mfa = true;
        assert_eq!(
            engine.decide(&alice, "read", &LEDGER, &after(0)),
            Outcome::Allow
        );
        assert_eq!(
            denied_by(engine.decide(&alice, "read", &LEDGER, &after(50))),
            "bulk"
        );
        alice.mfa = false;
        assert_eq!(
            denied_by(engine.decide(&alice, "read", &LEDGER, &after(0))),
            "mfa-only"
        );
    }
}
