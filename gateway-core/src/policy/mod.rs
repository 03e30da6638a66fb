//! The policy stage: Cedar policies decide every access.
//!
//! Protocol adapters describe an access (principal, action, resource,
//! context) in the terms of the Cedar schema kept in
//! `gateway-core/policy/tollgate.cedarschema`; this stage knows nothing of
//! SQL or MCP. Policies are validated against the schema in strict mode when
//! loaded; the validator's warnings count as errors, and every error names
//! the file and line.
//!
//! Three outcomes ([`Outcome`]): a request that Cedar allows is allowed; one
//! it denies but would allow with `context.approved = true` needs approval;
//! anything else is denied with the `@reason` of the deciding policy.

mod reload;
pub mod volume;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, Policy, PolicyId, PolicySet, Request, ResourceConstraint, RestrictedExpression,
    Schema, ValidationMode, Validator,
};
use sha2::{Digest, Sha256};

pub use reload::PolicyHandle;

/// The Cedar schema policies are validated against.
pub const SCHEMA: &str = include_str!("../../policy/tollgate.cedarschema");

/// The PCI DSS starter policy (`fixtures/policies/pci.cedar`).
pub const STARTER_POLICY: &str = include_str!("../../../fixtures/policies/pci.cedar");

/// The starter policy for MCP tool calls (`fixtures/policies/mcp.cedar`).
pub const MCP_STARTER_POLICY: &str = include_str!("../../../fixtures/policies/mcp.cedar");

/// A policy file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Reading a file failed.
    #[error("{path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// Parse or validation problems, one line each (`file:line: message`).
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// What a policy says about itself: its `@id`, `@reason` and, for approval
/// rules, `@approvals`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Stable id (from `@id`).
    pub id: String,
    /// What the caller is told (from `@reason`).
    pub reason: String,
    /// Approvers needed (from `@approvals`, default 1).
    pub approvals: u32,
}

impl Rule {
    fn default_deny(action: &str) -> Rule {
        Rule {
            id: "default-deny".into(),
            reason: format!("no policy permits {action} here"),
            approvals: 0,
        }
    }
}

/// The decision on one access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Permitted.
    Allow,
    /// Permitted once approved; the rules that hold it back.
    NeedsApproval {
        /// The approval rules that apply.
        rules: Vec<Rule>,
        /// Approvers needed (the most any of the rules asks for).
        approvals: u32,
    },
    /// Denied, with the deciding rule.
    Deny(Rule),
}

impl Outcome {
    /// Order by severity: allow < needs approval < deny.
    pub fn severity(&self) -> u8 {
        match self {
            Outcome::Allow => 0,
            Outcome::NeedsApproval { .. } => 1,
            Outcome::Deny(_) => 2,
        }
    }
}

/// Who is asking.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Token subject.
    pub subject: String,
    /// Token issuer.
    pub issuer: String,
    /// Groups from the token.
    pub groups: Vec<String>,
    /// An agent (workload) rather than a person.
    pub agent: bool,
    /// Multi-factor authentication.
    pub mfa: bool,
}

impl Principal {
    /// The principal of an authenticated identity.
    pub fn of(identity: &crate::identity::Identity) -> Principal {
        Principal {
            subject: identity.subject.clone(),
            issuer: identity.issuer.clone(),
            groups: identity.groups.clone(),
            agent: identity.kind == crate::identity::PrincipalKind::Agent,
            mfa: identity.mfa,
        }
    }
}

/// What an access is on.
#[derive(Debug, Clone)]
pub enum Resource<'a> {
    /// A table of `connection`.
    Table {
        /// Schema name.
        schema: &'a str,
        /// Table name.
        name: &'a str,
        /// Holds cardholder data.
        cardholder: bool,
    },
    /// A column of a table.
    Column {
        /// Schema name.
        schema: &'a str,
        /// Table name.
        table: &'a str,
        /// Column name.
        name: &'a str,
        /// Holds cardholder data.
        cardholder: bool,
        /// The table holds cardholder data.
        table_cardholder: bool,
    },
    /// A function or procedure.
    Function {
        /// Schema name (may be empty when unresolved).
        schema: &'a str,
        /// Function name.
        name: &'a str,
    },
    /// The connection itself.
    Connection,
    /// An MCP tool, in its server.
    Tool {
        /// The MCP server's name.
        server: &'a str,
        /// The tool's name.
        name: &'a str,
        /// The server annotates it read-only (`readOnlyHint`).
        read_only: bool,
        /// The server annotates it destructive (`destructiveHint`).
        destructive: bool,
    },
    /// A resource of an MCP server, by URI (or URI template).
    McpResource {
        /// The MCP server's name.
        server: &'a str,
        /// The resource's URI.
        uri: &'a str,
    },
    /// A prompt of an MCP server.
    Prompt {
        /// The MCP server's name.
        server: &'a str,
        /// The prompt's name.
        name: &'a str,
    },
}

/// The request's context.
#[derive(Debug, Clone)]
pub struct RequestContext<'a> {
    /// The connection (upstream) name.
    pub connection: &'a str,
    /// The PostgreSQL command (or `tools/call`).
    pub command: &'a str,
    /// Rows EXPLAIN estimates (0 when not estimated).
    pub row_estimate: i64,
    /// DELETE/UPDATE restricted by WHERE.
    pub has_where: bool,
    /// Read bounded by LIMIT.
    pub has_limit: bool,
    /// The connection's database holds cardholder data (any table does).
    pub cardholder_data: bool,
    /// Rows of cardholder data returned to this identity on this
    /// connection within the last 15 minutes (see [`volume`]).
    pub rows_returned: i64,
    /// An MCP request's arguments as canonical JSON text (keys sorted),
    /// masked as records show them; empty for SQL.
    pub arguments: &'a str,
    /// The same request's top-level arguments that policies may match
    /// exactly, each `name=<value as canonical JSON>` (`context.args`);
    /// empty for SQL.
    pub args: &'a [String],
    /// The client's address.
    pub client: IpAddr,
    /// When.
    pub time: SystemTime,
}

/// A validated policy set.
pub struct PolicyEngine {
    policies: PolicySet,
    schema: Schema,
    rules: HashMap<PolicyId, Rule>,
    uses_row_estimate: bool,
    uses_rows_returned: bool,
    uses_time: bool,
    digest: String,
    sources: Vec<(PathBuf, String)>,
    authorizer: Authorizer,
    types: Types,
    /// What deciding rebuilds otherwise on every call (see [`Memo`]).
    memo: Memo,
}

/// What [`PolicyEngine::decide`] would otherwise rebuild on every call,
/// none of it depending on anything but its key: measured on the cards
/// workload, building entities and parsing the `ip` and `datetime`
/// extension names (Cedar parses them on every use) took half of the time
/// of a decision, and evaluating policies that cannot apply to the action
/// most of the rest.
#[derive(Default)]
struct Memo {
    /// The policies whose action scope can match each action.
    by_action: Mutex<HashMap<String, Arc<ForAction>>>,
    /// Entities, principal and resource ids by everything they are built
    /// from (principal, connection, resource).
    entities: Mutex<HashMap<[u8; 32], Arc<Built>>>,
    /// Outcomes by entities, action and the context attributes the
    /// action's policies may read.
    outcomes: Mutex<HashMap<[u8; 32], Outcome>>,
    /// `ip(...)` of each client address.
    ips: Mutex<HashMap<IpAddr, RestrictedExpression>>,
    /// Combinations of principal type, action and resource type whose
    /// requests validated against the schema.
    validated: Mutex<HashSet<String>>,
    /// `datetime(...)` of the current second.
    time: Mutex<Option<(String, RestrictedExpression)>>,
}

/// The policies that can apply to one action, and which context attributes
/// that cost an extension value (`ip`, `datetime`) they may read.
struct ForAction {
    policies: PolicySet,
    /// Some policy may read `context.client` (its text mentions `client`).
    client: bool,
    /// Some policy may read `context.time` (its text mentions `time`).
    time: bool,
    /// The context attributes some policy may read (its text mentions the
    /// name): a decision depends on those alone, so it is kept under them.
    reads: Vec<&'static str>,
}

/// The attributes of a request's context (but `approved`, which
/// [`PolicyEngine::decide`] sets itself).
const CONTEXT_ATTRIBUTES: &[&str] = &[
    "mfa",
    "row_estimate",
    "has_where",
    "has_limit",
    "cardholder_data",
    "rows_returned",
    "command",
    "arguments",
    "args",
    "connection",
    "client",
    "time",
];

/// A policy as Cedar's JSON form, where every attribute it reads is spelt
/// out (in its source text a string may escape letters: `context["m\u{66}a"]`
/// reads `mfa`). Should the form not be had, text that names every context
/// attribute: the policy counts as reading them all.
fn policy_text(policy: &Policy) -> String {
    match policy.to_json() {
        Ok(json) => json.to_string(),
        Err(_) => CONTEXT_ATTRIBUTES.join(" "),
    }
}

/// A fixed-size key for a cache, from text that may be long (MCP
/// arguments are part of some).
fn digest_key(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

impl ForAction {
    fn new(policies: PolicySet) -> ForAction {
        let texts: Vec<String> = policies.policies().map(policy_text).collect();
        let mentions = |word: &str| texts.iter().any(|t| t.contains(word));
        ForAction {
            client: mentions("client"),
            time: mentions("time"),
            reads: CONTEXT_ATTRIBUTES
                .iter()
                .copied()
                .filter(|a| mentions(a))
                .collect(),
            policies,
        }
    }

    /// What a decision under these policies depends on in `c`.
    fn context_key(&self, principal: &Principal, c: &RequestContext<'_>) -> String {
        use std::fmt::Write;
        let mut key = String::new();
        for attribute in &self.reads {
            let _ = match *attribute {
                "mfa" => write!(key, "{}", principal.mfa),
                "row_estimate" => write!(key, "{}", c.row_estimate),
                "has_where" => write!(key, "{}", c.has_where),
                "has_limit" => write!(key, "{}", c.has_limit),
                "cardholder_data" => write!(key, "{}", c.cardholder_data),
                "rows_returned" => write!(key, "{}", c.rows_returned),
                "command" => write!(key, "{:?}", c.command),
                "arguments" => write!(key, "{:?}", c.arguments),
                "args" => write!(key, "{:?}", c.args),
                "connection" => write!(key, "{:?}", c.connection),
                "client" => write!(key, "{}", c.client),
                _ => write!(key, "{}", crate::clock::rfc3339(c.time)),
            };
            key.push('\0');
        }
        key
    }
}

/// Entries each cache keeps before it starts afresh.
const MEMO_ENTRIES: usize = 4096;

type Built = (Entities, EntityUid, EntityUid);

/// Look `key` up in `cache`, or build and keep it.
fn memo<K: std::hash::Hash + Eq, V: Clone, E>(
    cache: &Mutex<HashMap<K, V>>,
    key: K,
    build: impl FnOnce() -> Result<V, E>,
) -> Result<V, E> {
    if let Some(v) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(v.clone());
    }
    let v = build()?;
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() >= MEMO_ENTRIES {
        cache.clear();
    }
    cache.insert(key, v.clone());
    Ok(v)
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("policies", &self.rules.len())
            .field("digest", &self.digest)
            .finish()
    }
}

struct Types {
    user: EntityTypeName,
    agent: EntityTypeName,
    group: EntityTypeName,
    connection: EntityTypeName,
    schema: EntityTypeName,
    table: EntityTypeName,
    column: EntityTypeName,
    function: EntityTypeName,
    tool: EntityTypeName,
    mcp_resource: EntityTypeName,
    prompt: EntityTypeName,
    server: EntityTypeName,
    action: EntityTypeName,
}

impl Types {
    fn new() -> Types {
        let t = |name: &str| EntityTypeName::from_str(name).expect("a valid Cedar type name");
        Types {
            user: t("User"),
            agent: t("Agent"),
            group: t("Group"),
            connection: t("Connection"),
            schema: t("Schema"),
            table: t("Table"),
            column: t("Column"),
            function: t("Function"),
            tool: t("Tool"),
            mcp_resource: t("McpResource"),
            prompt: t("Prompt"),
            server: t("Server"),
            action: t("Action"),
        }
    }
}

fn uid(kind: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(kind.clone(), EntityId::new(id))
}

fn string(value: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(value.to_string())
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The first labelled location of a diagnostic, as a line in `text`.
fn diagnostic_line(diagnostic: &dyn miette::Diagnostic, text: &str) -> Option<usize> {
    let label = diagnostic.labels()?.next()?;
    Some(line_of(text, label.offset()))
}

impl PolicyEngine {
    /// Load and validate the policy files, after the built-in starter
    /// policy when `starter`.
    pub fn load(paths: &[PathBuf], starter: bool) -> Result<PolicyEngine, PolicyError> {
        let mut sources = Vec::new();
        if starter {
            sources.push((
                PathBuf::from("fixtures/policies/pci.cedar (built in)"),
                STARTER_POLICY.to_string(),
            ));
            sources.push((
                PathBuf::from("fixtures/policies/mcp.cedar (built in)"),
                MCP_STARTER_POLICY.to_string(),
            ));
        }
        for path in paths {
            let text = std::fs::read_to_string(path).map_err(|error| PolicyError::Read {
                path: path.clone(),
                error,
            })?;
            sources.push((path.clone(), text));
        }
        PolicyEngine::from_sources(sources)
    }

    /// Validate policies given as (file name, text).
    pub fn from_sources(sources: Vec<(PathBuf, String)>) -> Result<PolicyEngine, PolicyError> {
        let schema = Schema::from_cedarschema_str(SCHEMA)
            .map(|(schema, _)| schema)
            .map_err(|e| PolicyError::Invalid(vec![format!("built-in Cedar schema: {e}")]))?;
        let mut problems = Vec::new();
        let mut policies = PolicySet::new();
        let mut rules = HashMap::new();
        // Which file each policy came from, for error lines.
        let mut origin: HashMap<PolicyId, usize> = HashMap::new();
        let mut digest = Sha256::new();
        digest.update(SCHEMA.as_bytes());
        for (index, (path, text)) in sources.iter().enumerate() {
            digest.update(text.as_bytes());
            let file = path.display();
            let parsed = match PolicySet::from_str(text) {
                Ok(parsed) => parsed,
                Err(errors) => {
                    for error in errors.iter() {
                        let line = diagnostic_line(error, text).unwrap_or(1);
                        problems.push(format!("{file}:{line}: {error}"));
                    }
                    continue;
                }
            };
            if parsed.templates().next().is_some() {
                problems.push(format!(
                    "{file}: policy templates are not supported; write each policy out"
                ));
            }
            let mut parsed: Vec<&Policy> = parsed.policies().collect();
            let position = |p: &Policy| text.find(&p.to_string()).unwrap_or(0);
            parsed.sort_by_key(|p| position(p));
            for policy in parsed {
                let line = line_of(text, position(policy));
                let Some(id) = policy.annotation("id") else {
                    problems.push(format!(
                        "{file}:{line}: the policy has no @id(\"...\"); every policy needs a stable id for the audit log"
                    ));
                    continue;
                };
                let Some(reason) = policy.annotation("reason") else {
                    problems.push(format!(
                        "{file}:{line}: policy \"{id}\" has no @reason(\"...\"); it is what a refused caller is told"
                    ));
                    continue;
                };
                let approvals = match policy.annotation("approvals") {
                    None => 1,
                    Some(n) => match n.parse::<u32>() {
                        Ok(n) if n >= 1 => n,
                        _ => {
                            problems.push(format!(
                                "{file}:{line}: policy \"{id}\": @approvals(\"{n}\") must be a whole number of at least 1"
                            ));
                            continue;
                        }
                    },
                };
                let policy_id = PolicyId::new(id);
                if let Some(previous) = origin.get(&policy_id) {
                    problems.push(format!(
                        "{file}:{line}: policy id \"{id}\" is already used in {}",
                        sources[*previous].0.display()
                    ));
                    continue;
                }
                origin.insert(policy_id.clone(), index);
                rules.insert(
                    policy_id.clone(),
                    Rule {
                        id: id.to_string(),
                        reason: reason.to_string(),
                        approvals,
                    },
                );
                if let Err(e) = policies.add(policy.new_id(policy_id)) {
                    problems.push(format!("{file}:{line}: {e}"));
                }
            }
        }
        if problems.is_empty() {
            let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
            let place = |id: &PolicyId, diagnostic: &dyn miette::Diagnostic| {
                let (path, text) = &sources[origin.get(id).copied().unwrap_or(0)];
                let line = diagnostic_line(diagnostic, text).unwrap_or(1);
                format!("{}:{line}: policy \"{id}\"", path.display())
            };
            for error in result.validation_errors() {
                problems.push(format!("{}: {error}", place(error.policy_id(), error)));
            }
            for warning in result.validation_warnings() {
                problems.push(format!(
                    "{}: {warning}",
                    place(warning.policy_id(), warning)
                ));
            }
        }
        if !problems.is_empty() {
            return Err(PolicyError::Invalid(problems));
        }
        let uses_row_estimate = policies
            .policies()
            .any(|p| policy_text(p).contains("row_estimate"));
        let uses_rows_returned = policies
            .policies()
            .any(|p| policy_text(p).contains("rows_returned"));
        let uses_time = policies.policies().any(|p| policy_text(p).contains("time"));
        Ok(PolicyEngine {
            policies,
            schema,
            rules,
            uses_row_estimate,
            uses_rows_returned,
            uses_time,
            digest: format!("sha256:{:x}", digest.finalize()),
            sources,
            authorizer: Authorizer::new(),
            types: Types::new(),
            memo: Memo::default(),
        })
    }

    /// SHA-256 over the schema and the policy texts, for the audit trail.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The policy files and their texts.
    pub fn sources(&self) -> &[(PathBuf, String)] {
        &self.sources
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when no policy is loaded (everything is denied).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether any policy looks at `context.row_estimate`; if none does, the
    /// gateway never needs to ask the upstream for an estimate.
    pub fn uses_row_estimate(&self) -> bool {
        self.uses_row_estimate
    }

    /// Whether any policy looks at `context.rows_returned`; if one does, a
    /// read of cardholder data is decided afresh each time.
    pub fn uses_rows_returned(&self) -> bool {
        self.uses_rows_returned
    }

    /// Whether any policy may look at `context.time`; if none does, a
    /// session may reuse a decision for a statement of the same shape.
    pub fn uses_time(&self) -> bool {
        self.uses_time
    }

    /// Whether `principal` may see the cardholder column
    /// `schema.table.column` unmasked (the `reveal` action).
    pub fn may_reveal(
        &self,
        principal: &Principal,
        (schema, table, column): (&str, &str, &str),
        table_cardholder: bool,
        context: &RequestContext<'_>,
    ) -> bool {
        let column = Resource::Column {
            schema,
            table,
            name: column,
            cardholder: true,
            table_cardholder,
        };
        self.decide(principal, "reveal", &column, context) == Outcome::Allow
    }

    /// Whether `principal` may decide approval requests on `connection`
    /// (the `approve` action), asking from `client` now.
    pub fn may_approve(&self, principal: &Principal, connection: &str, client: IpAddr) -> bool {
        if principal.agent {
            // The schema allows only people to approve.
            return false;
        }
        let context = RequestContext {
            connection,
            command: "approve",
            row_estimate: 0,
            has_where: false,
            has_limit: false,
            cardholder_data: false,
            rows_returned: 0,
            arguments: "",
            args: &[],
            client,
            time: SystemTime::now(),
        };
        self.decide(principal, "approve", &Resource::Connection, &context) == Outcome::Allow
    }

    /// Decide one access.
    pub fn decide(
        &self,
        principal: &Principal,
        action: &str,
        resource: &Resource<'_>,
        context: &RequestContext<'_>,
    ) -> Outcome {
        let key = format!(
            "{}\0{}\0{}\0{:?}\0{}\0{:?}",
            principal.subject,
            principal.issuer,
            principal.agent,
            principal.groups,
            context.connection,
            resource
        );
        let built = memo(&self.memo.entities, digest_key(&key), || {
            self.entities(principal, resource, context).map(Arc::new)
        });
        let (entities, principal_uid, resource_uid) = match built.as_deref() {
            Ok(built) => built,
            Err(reason) => return Outcome::Deny(Self::broken(reason.clone())),
        };
        let action_uid = uid(&self.types.action, action);
        let policies = self.policies_for(action, &action_uid, resource_uid.type_name());
        // A decision is a function of the policies, the entities, the
        // action and the context attributes the policies can read: kept
        // under those, it is evaluated once.
        let outcome_key = digest_key(&format!(
            "{key}\0{action}\0{}",
            policies.context_key(principal, context)
        ));
        if let Some(outcome) = self
            .memo
            .outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&outcome_key)
        {
            return outcome.clone();
        }
        let outcome = self.evaluate(
            (principal, &action_uid, action),
            context,
            &policies,
            (entities, principal_uid, resource_uid),
        );
        let mut outcomes = self.memo.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        if outcomes.len() >= MEMO_ENTRIES {
            outcomes.clear();
        }
        outcomes.insert(outcome_key, outcome.clone());
        outcome
    }

    /// Evaluate one access (what [`PolicyEngine::decide`] keeps).
    fn evaluate(
        &self,
        (principal, action_uid, action): (&Principal, &EntityUid, &str),
        context: &RequestContext<'_>,
        policies: &ForAction,
        (entities, principal_uid, resource_uid): (&Entities, &EntityUid, &EntityUid),
    ) -> Outcome {
        // The context always has the same attributes of the same types
        // (built by `context`), so a request validates against the schema
        // exactly when its combination of principal type, action and
        // resource type does: each combination is validated once, with
        // every attribute. Later requests leave out the attributes that no
        // policy for the action can read and that cost most to build.
        let shape = format!(
            "{}\0{action}\0{}",
            principal_uid.type_name(),
            resource_uid.type_name()
        );
        let validated = self
            .memo
            .validated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&shape);
        let ask = |approved: bool| -> Result<cedar_policy::Response, Rule> {
            let full = !validated;
            let ctx = self.context(
                principal,
                context,
                approved,
                (full || policies.client, full || policies.time),
            )?;
            let request = Request::new(
                principal_uid.clone(),
                action_uid.clone(),
                resource_uid.clone(),
                ctx,
                full.then_some(&self.schema),
            )
            .map_err(|e| Self::broken(e.to_string()))?;
            if full {
                let mut shapes = self
                    .memo
                    .validated
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if shapes.len() >= MEMO_ENTRIES {
                    shapes.clear();
                }
                shapes.insert(shape.clone());
            }
            let response = self
                .authorizer
                .is_authorized(&request, &policies.policies, entities);
            // A policy that fails to evaluate is skipped by Cedar; that could
            // skip a forbid, so an evaluation error denies (fail closed).
            if let Some(error) = response.diagnostics().errors().next() {
                return Err(Self::broken(error.to_string()));
            }
            Ok(response)
        };
        let first = match ask(false) {
            Ok(response) => response,
            Err(rule) => return Outcome::Deny(rule),
        };
        if first.decision() == Decision::Allow {
            return Outcome::Allow;
        }
        let held: Vec<Rule> = first
            .diagnostics()
            .reason()
            .filter_map(|id| self.rules.get(id).cloned())
            .collect();
        let second = match ask(true) {
            Ok(response) => response,
            Err(rule) => return Outcome::Deny(rule),
        };
        if second.decision() == Decision::Allow && !held.is_empty() {
            let approvals = held.iter().map(|r| r.approvals).max().unwrap_or(1);
            return Outcome::NeedsApproval {
                rules: held,
                approvals,
            };
        }
        let deciding = second
            .diagnostics()
            .reason()
            .filter_map(|id| self.rules.get(id).cloned())
            .min_by(|a, b| a.id.cmp(&b.id))
            .or_else(|| held.into_iter().next())
            .unwrap_or_else(|| Rule::default_deny(action));
        Outcome::Deny(deciding)
    }

    /// The policies that can apply to `action`: those whose action scope
    /// is open or names it. Leaving out a policy whose scope cannot match
    /// changes no decision (its scope is false before its conditions are
    /// looked at). With action groups in the schema, an action could match
    /// through a group it is a member of: then every policy is evaluated.
    fn policies_for(
        &self,
        action: &str,
        action_uid: &EntityUid,
        resource_type: &EntityTypeName,
    ) -> Arc<ForAction> {
        let all = || ForAction::new(self.policies.clone());
        let built = memo(
            &self.memo.by_action,
            format!("{action}\0{resource_type}"),
            || {
                if self.schema.action_groups().next().is_some() {
                    return Ok::<_, ()>(Arc::new(all()));
                }
                let applies = self.policies.policies().filter(|p| {
                    let action_may = match p.action_constraint() {
                        ActionConstraint::Any => true,
                        ActionConstraint::Eq(uid) => &uid == action_uid,
                        ActionConstraint::In(uids) => uids.contains(action_uid),
                    };
                    // `resource in E` may hold for a resource of any type.
                    let resource_may = match p.resource_constraint() {
                        ResourceConstraint::Any | ResourceConstraint::In(_) => true,
                        ResourceConstraint::Eq(uid) => uid.type_name() == resource_type,
                        ResourceConstraint::Is(t) | ResourceConstraint::IsIn(t, _) => {
                            &t == resource_type
                        }
                    };
                    action_may && resource_may
                });
                match PolicySet::from_policies(applies.cloned()) {
                    Ok(policies) => Ok(Arc::new(ForAction::new(policies))),
                    // Cannot happen (the ids are already unique): all of them.
                    Err(_) => Ok(Arc::new(all())),
                }
            },
        );
        built.unwrap_or_else(|()| Arc::new(all()))
    }

    fn broken(reason: String) -> Rule {
        Rule {
            id: "policy-error".into(),
            reason: format!(
                "the policy could not be evaluated, so the request is denied: {reason}"
            ),
            approvals: 0,
        }
    }

    /// The request's context; `client` and `time` only when `(client, time)`
    /// say a policy may read them (see [`ForAction`]).
    fn context(
        &self,
        principal: &Principal,
        c: &RequestContext<'_>,
        approved: bool,
        (client, time): (bool, bool),
    ) -> Result<Context, Rule> {
        let costly = [
            client.then(|| ("client".to_string(), self.ip(c.client))),
            time.then(|| {
                let text = crate::clock::rfc3339(c.time);
                ("time".to_string(), self.datetime(text))
            }),
        ];
        let pairs = [
            (
                "mfa".to_string(),
                RestrictedExpression::new_bool(principal.mfa),
            ),
            (
                "approved".to_string(),
                RestrictedExpression::new_bool(approved),
            ),
            (
                "row_estimate".to_string(),
                RestrictedExpression::new_long(c.row_estimate),
            ),
            (
                "has_where".to_string(),
                RestrictedExpression::new_bool(c.has_where),
            ),
            (
                "has_limit".to_string(),
                RestrictedExpression::new_bool(c.has_limit),
            ),
            (
                "cardholder_data".to_string(),
                RestrictedExpression::new_bool(c.cardholder_data),
            ),
            (
                "rows_returned".to_string(),
                RestrictedExpression::new_long(c.rows_returned),
            ),
            ("command".to_string(), string(c.command)),
            ("arguments".to_string(), string(c.arguments)),
            (
                "args".to_string(),
                RestrictedExpression::new_set(c.args.iter().map(|p| string(p))),
            ),
            ("connection".to_string(), string(c.connection)),
        ];
        Context::from_pairs(pairs.into_iter().chain(costly.into_iter().flatten()))
            .map_err(|e| Self::broken(e.to_string()))
    }

    fn ip(&self, client: IpAddr) -> RestrictedExpression {
        let built = memo(&self.memo.ips, client, || {
            Ok::<_, ()>(RestrictedExpression::new_ip(client.to_string()))
        });
        built.unwrap_or_else(|()| RestrictedExpression::new_ip(client.to_string()))
    }

    /// `time` is RFC 3339 to the second: one expression serves a second.
    fn datetime(&self, time: String) -> RestrictedExpression {
        let mut last = self.memo.time.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            Some((text, expr)) if *text == time => expr.clone(),
            _ => {
                let expr = RestrictedExpression::new_datetime(&time);
                *last = Some((time, expr.clone()));
                expr
            }
        }
    }

    fn entities(
        &self,
        principal: &Principal,
        resource: &Resource<'_>,
        c: &RequestContext<'_>,
    ) -> Result<(Entities, EntityUid, EntityUid), String> {
        let t = &self.types;
        let mut entities = Vec::with_capacity(8);
        let groups: HashSet<EntityUid> =
            principal.groups.iter().map(|g| uid(&t.group, g)).collect();
        for group in &groups {
            entities.push(Entity::new_no_attrs(group.clone(), HashSet::new()));
        }
        let kind = if principal.agent { &t.agent } else { &t.user };
        let principal_uid = uid(kind, &principal.subject);
        entities.push(
            Entity::new(
                principal_uid.clone(),
                HashMap::from([
                    ("subject".to_string(), string(&principal.subject)),
                    ("issuer".to_string(), string(&principal.issuer)),
                ]),
                groups,
            )
            .map_err(|e| e.to_string())?,
        );
        let connection = uid(&t.connection, c.connection);
        entities.push(
            Entity::new(
                connection.clone(),
                HashMap::from([("name".to_string(), string(c.connection))]),
                HashSet::new(),
            )
            .map_err(|e| e.to_string())?,
        );
        let schema_entity =
            |schema: &str, entities: &mut Vec<Entity>| -> Result<EntityUid, String> {
                let id = uid(&t.schema, schema);
                entities.push(
                    Entity::new(
                        id.clone(),
                        HashMap::from([("name".to_string(), string(schema))]),
                        HashSet::from([connection.clone()]),
                    )
                    .map_err(|e| e.to_string())?,
                );
                Ok(id)
            };
        let server_entity =
            |server: &str, entities: &mut Vec<Entity>| -> Result<EntityUid, String> {
                let id = uid(&t.server, server);
                entities.push(
                    Entity::new(
                        id.clone(),
                        HashMap::from([("name".to_string(), string(server))]),
                        HashSet::new(),
                    )
                    .map_err(|e| e.to_string())?,
                );
                Ok(id)
            };
        // A tool, resource or prompt: `<server>/<name>` in its `Server::`,
        // with its name (`name` or `uri`), `server` and `extra` attributes.
        let server_item = |kind: &EntityTypeName,
                           server: &str,
                           (key, name): (&str, &str),
                           extra: Vec<(&str, RestrictedExpression)>,
                           entities: &mut Vec<Entity>|
         -> Result<EntityUid, String> {
            let server_uid = server_entity(server, entities)?;
            let id = uid(kind, &format!("{server}/{name}"));
            let mut attrs = HashMap::from([
                (key.to_string(), string(name)),
                ("server".to_string(), string(server)),
            ]);
            attrs.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
            entities.push(
                Entity::new(id.clone(), attrs, HashSet::from([server_uid]))
                    .map_err(|e| e.to_string())?,
            );
            Ok(id)
        };
        let table_entity = |schema_uid: EntityUid, schema: &str, name: &str, cardholder: bool| {
            let id = uid(&t.table, &format!("{schema}.{name}"));
            let entity = Entity::new(
                id.clone(),
                HashMap::from([
                    ("name".to_string(), string(name)),
                    ("schema".to_string(), string(schema)),
                    ("connection".to_string(), string(c.connection)),
                    (
                        "cardholder".to_string(),
                        RestrictedExpression::new_bool(cardholder),
                    ),
                ]),
                HashSet::from([schema_uid]),
            )
            .map_err(|e| e.to_string());
            entity.map(|e| (id, e))
        };
        let resource_uid = match resource {
            Resource::Table {
                schema,
                name,
                cardholder,
            } => {
                let schema_uid = schema_entity(schema, &mut entities)?;
                let (id, entity) = table_entity(schema_uid, schema, name, *cardholder)?;
                entities.push(entity);
                id
            }
            Resource::Column {
                schema,
                table,
                name,
                cardholder,
                table_cardholder,
            } => {
                let schema_uid = schema_entity(schema, &mut entities)?;
                let (table_uid, entity) =
                    table_entity(schema_uid, schema, table, *table_cardholder)?;
                entities.push(entity);
                let id = uid(&t.column, &format!("{schema}.{table}.{name}"));
                entities.push(
                    Entity::new(
                        id.clone(),
                        HashMap::from([
                            ("name".to_string(), string(name)),
                            ("table".to_string(), string(&format!("{schema}.{table}"))),
                            (
                                "cardholder".to_string(),
                                RestrictedExpression::new_bool(*cardholder),
                            ),
                        ]),
                        HashSet::from([table_uid]),
                    )
                    .map_err(|e| e.to_string())?,
                );
                id
            }
            Resource::Function { schema, name } => {
                let schema_uid = schema_entity(schema, &mut entities)?;
                let id = uid(&t.function, &format!("{schema}.{name}"));
                entities.push(
                    Entity::new(
                        id.clone(),
                        HashMap::from([
                            ("name".to_string(), string(name)),
                            ("schema".to_string(), string(schema)),
                        ]),
                        HashSet::from([schema_uid]),
                    )
                    .map_err(|e| e.to_string())?,
                );
                id
            }
            Resource::Connection => connection.clone(),
            Resource::Tool {
                server,
                name,
                read_only,
                destructive,
            } => server_item(
                &t.tool,
                server,
                ("name", name),
                vec![
                    ("read_only", RestrictedExpression::new_bool(*read_only)),
                    ("destructive", RestrictedExpression::new_bool(*destructive)),
                ],
                &mut entities,
            )?,
            Resource::McpResource { server, uri } => server_item(
                &t.mcp_resource,
                server,
                ("uri", uri),
                Vec::new(),
                &mut entities,
            )?,
            Resource::Prompt { server, name } => {
                server_item(&t.prompt, server, ("name", name), Vec::new(), &mut entities)?
            }
        };
        let entities = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
        Ok((entities, principal_uid, resource_uid))
    }
}

#[cfg(test)]
mod tests;
