//! The policy check of a PostgreSQL session: every statement of every
//! Query and Parse is analysed (`sql`), its names resolved against the
//! catalog the way the session's `search_path` would resolve them, and each
//! access decided by the policy stage before anything goes upstream.
//!
//! A message is decided as a whole: if one access of one statement is
//! denied, nothing of it runs (fail closed). A statement that does not
//! parse, a catalog that cannot be read or a row estimate that is needed
//! but cannot be had also refuse the statement.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::catalog::{Catalog, Current, Snapshot};
use super::sql::{
    Access, Action, Analysis, ColumnRef, Effect, ObjectName, PathChange, ShapeCache, Target,
};
use crate::approvals::hold::{Hold, HoldOutcome, Need};
use crate::approvals::{Approvals, Ask, HoldSlot, Requester, Scope};
use crate::pg::hooks::{
    Decision, InFlight, Reason, Ruling, SessionEvent, SessionHooks, Statement, StatementVia,
    ValueSource, Verdict,
};
use crate::policy::{
    Outcome, PolicyEngine, PolicyHandle, Principal, RequestContext, Resource, Rule,
};

/// What all guarded sessions share.
#[derive(Debug)]
pub struct GuardShared {
    /// The policy in force.
    pub policy: PolicyHandle,
    /// Statement analyses by shape (shared with masking).
    pub shapes: Arc<ShapeCache>,
    /// Upper bound for an EXPLAIN row estimate.
    pub estimate_timeout: Duration,
    /// Where statements that need approval are held (none: they are refused).
    pub approvals: Option<Arc<Approvals>>,
    /// Rows of cardholder data returned per identity, for `context.rows_returned`.
    pub volume: Arc<crate::policy::volume::ReadVolume>,
}

/// How old a snapshot must be before a table it does not know makes the
/// guard read the catalog again.
const UNKNOWN_TABLE_RECHECK: Duration = Duration::from_secs(1);
/// How long a table's estimate for approvers is reused (see `Guard::previews`).
const PREVIEW_ESTIMATE_FOR: Duration = Duration::from_secs(60);

/// A policy-checked session; other hooks run inside it.
pub struct Guard {
    shared: Arc<GuardShared>,
    catalog: Arc<Catalog>,
    inner: Box<dyn SessionHooks>,
    principal: Principal,
    connection: String,
    client: IpAddr,
    /// The session's search path (one; a list only to resolve a name in
    /// each schema a path could hold).
    paths: Vec<Vec<String>>,
    /// The path is unknown (code ran that may have changed it, or the
    /// role changed what `$user` means): resolve unqualified names in
    /// every schema, so each table of that name is decided.
    any_schema: bool,
    /// The path the session started with (`None`: the role's default);
    /// RESET, RESET ALL and DISCARD ALL return to it.
    startup_path: Option<Vec<String>>,
    /// A path change forwarded alone in an idle session: in force once
    /// its CommandComplete arrives (a failed SET changes nothing).
    pending_path: Option<PathChange>,
    status: u8,
    path_generation: u64,
    prepared_generation: u64,
    /// SQL-level prepared statements: name -> their accesses (resolved
    /// with the path in force at each EXECUTE, as PostgreSQL plans them).
    prepared: HashMap<String, Vec<Access>>,
    /// PREPAREs forwarded whose CommandComplete has not come yet, in order.
    pending_prepares: std::collections::VecDeque<(String, Vec<Access>)>,
    /// Row estimates fetched for statements waiting on them.
    estimates: Arc<Mutex<HashMap<String, Result<i64, String>>>>,
    /// Estimates of whole tables shown to approvers with a held request,
    /// kept for [`PREVIEW_ESTIMATE_FOR`]: a figure for a person to read,
    /// not an input of the decision, so a minute-old one serves (a session
    /// whose reads a window grant lets through would otherwise plan a scan
    /// of the table before each of them).
    previews: crate::recent::Recent<String, i64>,
    /// A catalog refresh was waited for and still gave nothing fresh.
    refreshed: bool,
    ddl_forwarded: bool,
    decided: HashMap<usize, Cached>,
    /// How the last statement was judged, until the recorder takes it.
    ruling: Option<Ruling>,
    /// The statement held for approval and its request.
    hold: Hold,
    /// The recording's session id, shown to approvers.
    session: Option<String>,
    /// Tables (OIDs) that statements decided since the session was last
    /// idle were resolved to: their results may be arriving.
    in_flight_oids: std::collections::HashSet<u32>,
    /// Tables that protocol-level prepared statements were resolved to.
    prepared_oids: std::collections::HashSet<u32>,
    /// The current result carries cardholder columns: its rows count.
    counting: bool,
    /// The statement forwarded last runs code or changes settings: how the
    /// server reads SQL may change with it.
    reading_may_change: bool,
    /// Rows counted and not yet added to the shared volume.
    rows_counted: u64,
    /// Estimated cardholder rows of forwarded reads not answered yet.
    rows_in_flight: u64,
    /// `SET tollgate.reason`: the requester's reason for approval requests.
    reason: Option<String>,
}

/// What the policy made of a message.
#[derive(Debug, Clone)]
enum Judged {
    /// Forward or refuse now.
    Decided(Decision),
    /// Needs a person's approval first.
    Approval(Arc<Needs>),
}

/// Why a message needs approval.
#[derive(Debug)]
struct Needs {
    /// The held access that decided, described (`COPY on public.payments`).
    what: String,
    rule: Rule,
    approvals: u32,
    /// Every access that needs approval (what a grant must cover).
    accesses: Vec<String>,
    row_estimate: Option<i64>,
}

/// What a decision found out besides its outcome.
#[derive(Default)]
struct Notes {
    /// The decision may be reused for a statement of the same analysis.
    cacheable: bool,
    ruling: Ruling,
    /// OIDs of the tables the statement was resolved to.
    oids: Vec<u32>,
    /// Estimated cardholder rows of allowed reads not answered yet, this
    /// statement's included.
    rows_in_flight: u64,
}

struct Cached {
    analysis: Arc<Analysis>,
    engine: Arc<PolicyEngine>,
    snapshot: Arc<Snapshot>,
    path_generation: u64,
    /// SQL-level PREPARE/DEALLOCATE change what `EXECUTE name` means.
    prepared_generation: u64,
    judged: Judged,
    ruling: Ruling,
    /// OIDs of the tables the statement was resolved to.
    oids: Vec<u32>,
}

/// A refusal before anything ran.
fn refuse(reason: Reason, message: String) -> Decision {
    Decision::refuse(reason, message)
}

impl Guard {
    /// Guard a session of `principal` on `connection`.
    pub fn new(
        shared: Arc<GuardShared>,
        catalog: Arc<Catalog>,
        inner: Box<dyn SessionHooks>,
        principal: Principal,
        connection: String,
        client: IpAddr,
        startup_path: Option<Vec<String>>,
    ) -> Guard {
        let approvals = shared.approvals.clone();
        Guard {
            shared,
            catalog,
            inner,
            principal,
            connection,
            client,
            paths: startup_path.iter().cloned().collect(),
            any_schema: false,
            startup_path,
            pending_path: None,
            status: b'I',
            path_generation: 0,
            prepared_generation: 0,
            prepared: HashMap::new(),
            pending_prepares: Default::default(),
            estimates: Arc::new(Mutex::new(HashMap::new())),
            previews: crate::recent::Recent::new(PREVIEW_ESTIMATE_FOR, 256),
            refreshed: false,
            ddl_forwarded: false,
            decided: HashMap::new(),
            ruling: None,
            hold: Hold::new(approvals),
            session: None,
            in_flight_oids: Default::default(),
            prepared_oids: Default::default(),
            counting: false,
            rows_counted: 0,
            rows_in_flight: 0,
            reading_may_change: false,
            reason: None,
        }
    }

    /// The session's recording id (shown to approvers).
    pub fn set_session(&mut self, id: &str) {
        self.session = Some(id.to_string());
    }

    /// The held request of this session, for the cancel path.
    pub fn hold_slot(&self) -> Arc<HoldSlot> {
        self.hold.slot()
    }

    /// A statement that changes the search path (SET/RESET search_path,
    /// RESET ALL, DISCARD ALL) is followed exactly only when it runs alone,
    /// outside a transaction, with nothing else in flight: then it either
    /// takes effect at its CommandComplete or fails and changes nothing.
    fn path_change_allowed(
        &self,
        statement: &Statement<'_>,
        analysis: &Analysis,
    ) -> Option<Verdict> {
        let changes = analysis.statements.iter().any(|info| {
            info.effects
                .iter()
                .any(|e| matches!(e, Effect::SearchPath(_) | Effect::DiscardAll))
        });
        if !changes {
            return None;
        }
        let refusal = |why: &str| {
            Some(Verdict::Decided(refuse(
                Reason::Unsupported,
                format!(
                    "the gateway follows each session's search_path exactly, so SET search_path, RESET, \
                     RESET ALL and DISCARD ALL must {why}"
                ),
            )))
        };
        if analysis.statements.len() != 1 || !matches!(statement.via, StatementVia::SimpleQuery) {
            return refusal("be sent alone, as a simple query of their own");
        }
        match statement.in_flight {
            InFlight::Nothing if self.status == b'I' => None,
            InFlight::Nothing => refusal("run outside a transaction block"),
            InFlight::Answers => Some(Verdict::AfterAnswers),
            InFlight::Unsynced => {
                refusal("not follow extended-protocol messages before their Sync")
            }
        }
    }

    fn verdict(&mut self, statement: &Statement<'_>) -> Verdict {
        if self.pending_path.is_some() {
            // A path change is on its way: the names of what follows are
            // resolved once the server has answered it.
            match statement.in_flight {
                InFlight::Nothing => {}
                InFlight::Answers => return Verdict::AfterAnswers,
                InFlight::Unsynced => {
                    return Verdict::Decided(refuse(
                        Reason::Unsupported,
                        "a statement cannot follow a search_path change before its answer through the gateway"
                            .into(),
                    ));
                }
            }
        }
        let (snapshot, after_wait) = match self.catalog.current(&mut self.refreshed) {
            Current::Ready(snapshot, after_wait) => (snapshot, after_wait),
            Current::Wait(wait) => return Verdict::Wait(wait),
            Current::Unreadable => {
                return Verdict::Decided(refuse(
                    Reason::DependencyUnavailable,
                    format!(
                        "the gateway could not read the catalog of connection \"{}\", so it cannot check the statement; \
                         it was not run. Try again, or ask the gateway's operator to check the upstream",
                        self.connection
                    ),
                ));
            }
        };
        if self.paths.is_empty() {
            self.paths.push(snapshot.default_path.clone());
        }
        let analysis = match self.shared.shapes.analyze(statement.sql) {
            Ok(analysis) => analysis,
            Err(error) => {
                return Verdict::Decided(refuse(
                    Reason::Malformed,
                    format!(
                        "the gateway refused a statement it could not analyse, before it reached the database: {error}"
                    ),
                ));
            }
        };
        if !matches!(statement.via, StatementVia::SimpleQuery) && analysis.statements.len() > 1 {
            // PostgreSQL refuses it too; refused here before anything
            // (a row estimate) could send it anywhere.
            return Verdict::Decided(refuse(
                Reason::Malformed,
                "cannot insert multiple commands into a prepared statement".into(),
            ));
        }
        if let Some(reason) = analysis
            .statements
            .iter()
            .find_map(|info| info.unsupported.as_ref())
        {
            return Verdict::Decided(refuse(Reason::Unsupported, reason.clone()));
        }
        if let Some(verdict) = self.path_change_allowed(statement, &analysis) {
            return verdict;
        }
        // A table the snapshot does not know may have been created since it
        // was read (by a migration, outside the gateway): read it again once.
        if !after_wait && snapshot.age() > UNKNOWN_TABLE_RECHECK {
            let unknown = analysis
                .statements
                .iter()
                .flat_map(|i| &i.accesses)
                .any(|a| {
                    matches!(&a.target, Target::Table(name)
                    if a.action != Action::Ddl && snapshot.schemas_with(&name.name).is_empty())
                });
            if unknown {
                self.catalog.invalidate();
                if let Current::Wait(wait) = self.catalog.current(&mut self.refreshed) {
                    return Verdict::Wait(wait);
                }
            }
        }
        let engine = self.shared.policy.current();
        let key = Arc::as_ptr(&analysis) as usize;
        if let Some(cached) = self.decided.get(&key)
            && Arc::ptr_eq(&cached.analysis, &analysis)
            && Arc::ptr_eq(&cached.engine, &engine)
            && Arc::ptr_eq(&cached.snapshot, &snapshot)
            && cached.path_generation == self.path_generation
            && cached.prepared_generation == self.prepared_generation
        {
            let judged = cached.judged.clone();
            let oids = cached.oids.clone();
            self.ruling = Some(cached.ruling.clone());
            // A cached decision reads no cardholder table by rows returned.
            let rows = self.rows_on_the_way(statement);
            return self.conclude(statement, judged, &analysis, &snapshot, &oids, rows);
        }
        let mut notes = Notes {
            cacheable: !engine.uses_time(),
            ..Notes::default()
        };
        let judged = match self.decide(statement, &analysis, &engine, &snapshot, &mut notes) {
            Ok(judged) => judged,
            Err(wait) => return Verdict::Wait(wait),
        };
        let Notes {
            cacheable,
            ruling,
            oids,
            rows_in_flight,
        } = notes;
        // Every estimate the decision needed was had: the next one asks afresh.
        self.estimates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.ruling = Some(ruling.clone());
        if cacheable && !analysis.literal_sensitive {
            if self.decided.len() > 4096 {
                self.decided.clear();
            }
            self.decided.insert(
                key,
                Cached {
                    analysis: analysis.clone(),
                    engine,
                    snapshot: snapshot.clone(),
                    path_generation: self.path_generation,
                    prepared_generation: self.prepared_generation,
                    judged: judged.clone(),
                    ruling,
                    oids: oids.clone(),
                },
            );
        }
        self.conclude(
            statement,
            judged,
            &analysis,
            &snapshot,
            &oids,
            rows_in_flight,
        )
    }

    /// Estimated cardholder rows of allowed reads whose answers have not
    /// come yet (none once nothing is in flight).
    fn rows_on_the_way(&self, statement: &Statement<'_>) -> u64 {
        match statement.in_flight {
            InFlight::Nothing => 0,
            _ => self.rows_in_flight,
        }
    }

    /// Turn what the policy made of a message into the relay's verdict:
    /// forward, refuse, or hold it for approval.
    fn conclude(
        &mut self,
        statement: &Statement<'_>,
        judged: Judged,
        analysis: &Analysis,
        snapshot: &Snapshot,
        oids: &[u32],
        rows_in_flight: u64,
    ) -> Verdict {
        let decision = match judged {
            Judged::Decided(decision) => {
                // Whatever was held is not this statement's any more.
                self.release();
                decision
            }
            Judged::Approval(needs) => match self.approval(statement, &needs) {
                Ok(decision) => decision,
                Err(verdict) => return verdict,
            },
        };
        if decision == Decision::Forward && names_change_later(statement, analysis) {
            // They change what names mean when they run, which over the
            // extended protocol is some Execute later: simple queries only.
            return Verdict::Decided(refuse(
                Reason::Unsupported,
                "PREPARE, DEALLOCATE and DISCARD go through the gateway as simple queries only \
                 (use the protocol's own Parse and Close for prepared statements)"
                    .into(),
            ));
        }
        if decision == Decision::Forward {
            self.forwarded(analysis, snapshot);
            // Results of statements answered before this one are complete.
            if statement.in_flight == InFlight::Nothing {
                self.in_flight_oids.clear();
            }
            self.rows_in_flight = rows_in_flight;
            self.in_flight_oids.extend(oids);
            let cursor = analysis
                .statements
                .iter()
                .any(|info| info.command == "DECLARE CURSOR");
            if cursor || !matches!(statement.via, StatementVia::SimpleQuery) {
                // A prepared statement's or a cursor's rows may come at any later Execute or FETCH.
                self.prepared_oids.extend(oids);
            }
        }
        Verdict::Decided(decision)
    }

    /// The tables the server says a result's columns come from must be
    /// among those the statements in flight were resolved to (a table the
    /// catalog does not know, such as this session's temporary table, is
    /// not checked).
    fn check_columns(&self, columns: &[crate::pg::hooks::ResultColumn]) -> Result<(), String> {
        let Some(snapshot) = self.catalog.last() else {
            return Ok(());
        };
        for column in columns {
            let Some((oid, _)) = column.source else {
                continue;
            };
            if oid == 0 || self.in_flight_oids.contains(&oid) || self.prepared_oids.contains(&oid) {
                continue;
            }
            if let Some((schema, name)) = snapshot.by_table_oid.get(&oid) {
                return Err(format!(
                    "the result's column \"{}\" comes from {schema}.{name}, a table the gateway did not resolve \
                     the statement to (the gateway and the server read its names differently): its rows were \
                     withheld; qualify table names with their schema",
                    column.name
                ));
            }
        }
        Ok(())
    }

    /// Let go of the held request (withdrawn if still pending).
    fn release(&mut self) {
        self.hold.release();
    }

    /// A statement that needs approval: a grant in force lets it through,
    /// a decided request ends its hold, otherwise it is held (the relay
    /// waits on the verdict in `Err`).
    fn approval(&mut self, statement: &Statement<'_>, needs: &Needs) -> Result<Decision, Verdict> {
        let rule = &needs.rule;
        let need = Need {
            key: statement.sql,
            what: &needs.what,
            noun: "statement",
            policy: &rule.id,
            policy_reason: &rule.reason,
            scope: Scope {
                subject: self.principal.subject.clone(),
                issuer: self.principal.issuer.clone(),
                connection: self.connection.clone(),
                accesses: needs.accesses.clone(),
                approvals: needs.approvals,
            },
        };
        let ruling = self.ruling.clone().unwrap_or_default();
        let ask = |scope| Ask {
            requester: Requester::from(&self.principal),
            origin: self.client.to_string(),
            session: self.session.clone(),
            scope,
            statement: super::sql::redact(statement.sql),
            actions: ruling.actions,
            resources: ruling.resources,
            cardholder_resources: ruling.cardholder_resources,
            cardholder: ruling.cardholder,
            row_estimate: needs.row_estimate,
            policy: rule.id.clone(),
            policy_reason: rule.reason.clone(),
            approvals_needed: needs.approvals,
            reason: comment_reason(statement.sql).or_else(|| self.reason.clone()),
        };
        match self.hold.ask(need, self.ruling.as_mut(), ask) {
            HoldOutcome::Forward => Ok(Decision::Forward),
            HoldOutcome::Refused(refusal) => Ok(Decision::Refuse(refusal)),
            HoldOutcome::Wait(until) => Err(Verdict::Wait(until)),
            HoldOutcome::Hold { notice, until } => Err(Verdict::Hold { notice, until }),
        }
    }

    /// Decide every access of every statement; the most severe outcome wins.
    fn decide(
        &mut self,
        statement: &Statement<'_>,
        analysis: &Analysis,
        engine: &PolicyEngine,
        snapshot: &Snapshot,
        notes: &mut Notes,
    ) -> Result<Judged, Wait> {
        let Notes {
            cacheable,
            ruling,
            oids,
            rows_in_flight,
        } = notes;
        // A row estimate runs the statement's planner on the gateway's own
        // connection: fetched only once every other access is decided and
        // none of them refuses the statement anyway.
        let mut fetch: Option<(String, String, u32)> = None;
        let mut worst_fixed: Option<(Outcome, String)> = None;
        let paths = self.paths.clone();
        let mut any_schema = self.any_schema;
        let mut worst: Option<(Outcome, String)> = None;
        let mut held: Vec<String> = Vec::new();
        let mut row_estimate: Option<i64> = None;
        let mut preview_estimated = false;
        let texts = || match statement.via {
            StatementVia::SimpleQuery => pg_query::split_with_parser(statement.sql)
                .map(|parts| parts.into_iter().map(str::to_string).collect())
                .unwrap_or_default(),
            StatementVia::Parse { .. } | StatementVia::Execute { .. } => {
                vec![statement.sql.to_string()]
            }
        };
        let mut statement_texts: Option<Vec<String>> = None;
        let now = SystemTime::now();
        let rows_returned = if engine.uses_rows_returned() {
            let shared = self.shared.volume.recent(
                &self.principal.issuer,
                &self.principal.subject,
                &self.connection,
            );
            shared + self.rows_counted
        } else {
            0
        };
        // Rows that allowed reads of cardholder data will return and whose
        // answers have not come yet count too (estimated): statements sent
        // together are decided before any of their rows are counted.
        let mut rows_on_the_way = self.rows_on_the_way(statement);
        // Statements prepared earlier in this same message.
        let mut prepared_here: HashMap<&str, &[Access]> = HashMap::new();
        for (index, info) in analysis.statements.iter().enumerate() {
            let mut accesses = Vec::new();
            let mut resolved = Vec::new();
            for access in &info.accesses {
                match &access.target {
                    Target::Prepared(name) => match prepared_here.get(name.as_str()).copied() {
                        Some(inner) => accesses.extend(inner.iter().cloned()),
                        // PostgreSQL plans a prepared statement again with the
                        // path in force when it runs: resolved like this statement.
                        None if self.prepared.contains_key(name) => {
                            accesses.extend(self.prepared[name].iter().cloned());
                        }
                        None => {
                            return Ok(Judged::Decided(refuse(
                                Reason::NotFound,
                                format!(
                                    "prepared statement \"{name}\" does not exist (the gateway did not see it prepared)"
                                ),
                            )));
                        }
                    },
                    _ => accesses.push(access.clone()),
                }
            }
            accesses.extend(user_operators(&info.operators, snapshot));
            notation_calls(&info.notation, snapshot, &mut accesses);
            resolved.extend(resolve(&accesses, snapshot, &paths, any_schema));
            for item in &resolved {
                ruling.note(item);
                if let Object::Table { schema, name, .. } = &item.object
                    && let Some(table) = snapshot.table(schema, name)
                    && !oids.contains(&table.oid)
                {
                    oids.push(table.oid);
                }
                let mut context = RequestContext {
                    connection: &self.connection,
                    command: item.command,
                    row_estimate: 0,
                    has_where: item.has_where,
                    has_limit: item.has_limit,
                    cardholder_data: snapshot.cardholder_data,
                    rows_returned: i64::try_from(rows_returned + rows_on_the_way)
                        .unwrap_or(i64::MAX),
                    arguments: "",
                    args: &[],
                    client: self.client,
                    time: now,
                };
                let resource = item.resource();
                if engine.uses_rows_returned()
                    && matches!(
                        item.object,
                        Object::Table {
                            cardholder: true,
                            ..
                        }
                    )
                {
                    // Decided on how much was returned lately: not reused.
                    *cacheable = false;
                }
                let mut outcome =
                    engine.decide(&self.principal, item.action.as_str(), &resource, &context);
                if outcome != Outcome::Allow {
                    // Decided by policy already.
                } else if let Some(column) = self.masked_derived(item, engine, &context) {
                    outcome = Outcome::Deny(Rule {
                        id: "tollgate-masking".into(),
                        reason: format!(
                            "its result computes on or copies the masked column {column}, which masking could not \
                             follow; select the column itself (it comes back masked), or ask for the `reveal` permission"
                        ),
                        approvals: 1,
                    });
                }
                let mut pending = false;
                let reads =
                    matches!(item.action, Action::Read | Action::CopyOut) && item.column.is_none();
                if outcome == Outcome::Allow && reads && engine.uses_row_estimate() {
                    context.row_estimate = i64::MAX;
                    let at_most =
                        engine.decide(&self.principal, item.action.as_str(), &resource, &context);
                    if at_most != Outcome::Allow {
                        // The estimate decides: fetch it (or assume the worst when
                        // the statement cannot be estimated).
                        *cacheable = false;
                        outcome = if info.estimable {
                            let texts = statement_texts.get_or_insert_with(texts);
                            let text = texts
                                .get(index)
                                .cloned()
                                .unwrap_or_else(|| statement.sql.to_string());
                            let key = self.estimate_key(&paths, any_schema, &text);
                            let known = self.known_estimate(&key);
                            match known {
                                Some(Ok(rows)) => {
                                    context.row_estimate = rows;
                                    row_estimate = Some(row_estimate.unwrap_or(0).max(rows));
                                    let outcome = engine.decide(
                                        &self.principal,
                                        item.action.as_str(),
                                        &resource,
                                        &context,
                                    );
                                    if outcome == Outcome::Allow
                                        && matches!(
                                            item.object,
                                            Object::Table {
                                                cardholder: true,
                                                ..
                                            }
                                        )
                                    {
                                        rows_on_the_way += rows.max(0) as u64;
                                    }
                                    outcome
                                }
                                Some(Err(error)) => {
                                    tracing::warn!(
                                        connection = %self.connection,
                                        error = %crate::masking::for_record(&error.to_string()),
                                        "row estimate failed; assuming the worst"
                                    );
                                    at_most
                                }
                                None => {
                                    fetch.get_or_insert((key, text, info.params));
                                    pending = true;
                                    at_most
                                }
                            }
                        } else {
                            at_most
                        };
                    }
                }
                if matches!(outcome, Outcome::NeedsApproval { .. }) {
                    let what = item.describe();
                    if !held.contains(&what) {
                        held.push(what);
                    }
                    // Approvers see how many rows the table holds (a COPY
                    // cannot be EXPLAINed; the table's scan can).
                    if let (true, None, false, Object::Table { schema, name, .. }, None) = (
                        self.shared.approvals.is_some(),
                        row_estimate,
                        preview_estimated,
                        &item.object,
                        &item.column,
                    ) {
                        let text = format!(
                            "SELECT * FROM {}.{}",
                            super::side::quote_ident(schema),
                            super::side::quote_ident(name)
                        );
                        let key = self.estimate_key(&paths, any_schema, &text);
                        let known = self.known_estimate(&key);
                        if let Some(Ok(rows)) = known {
                            self.previews.keep(key.clone(), rows);
                        }
                        match known.or_else(|| self.previews.get(&key).map(Ok)) {
                            Some(Ok(rows)) => row_estimate = Some(rows),
                            // A preview without the figure rather than no request.
                            Some(Err(_)) => preview_estimated = true,
                            None => {
                                *cacheable = false;
                                fetch.get_or_insert((key, text, 0));
                            }
                        }
                    }
                }
                if !pending
                    && worst_fixed
                        .as_ref()
                        .is_none_or(|(w, _)| outcome.severity() > w.severity())
                {
                    worst_fixed = Some((outcome.clone(), item.describe()));
                }
                if worst
                    .as_ref()
                    .is_none_or(|(w, _)| outcome.severity() > w.severity())
                {
                    worst = Some((outcome, item.describe()));
                }
            }
            // Later statements of the message see this one's changes (a
            // path change always runs alone; code may change the path).
            for effect in &info.effects {
                match effect {
                    Effect::Prepare(name) => {
                        prepared_here.insert(name, &info.accesses);
                    }
                    Effect::Opaque => any_schema = true,
                    _ => {}
                }
            }
        }
        if let Some((key, text, params)) = fetch {
            match worst_fixed {
                // Refused whatever the estimate: nothing is planned anywhere.
                Some((Outcome::Deny(_), _)) => worst = worst_fixed,
                _ => return Err(self.fetch_estimate(key, text, &paths, params)),
            }
        }
        *rows_in_flight = rows_on_the_way;
        ruling.policy = match &worst {
            Some((Outcome::Deny(rule), _)) => Some(rule.id.clone()),
            Some((Outcome::NeedsApproval { rules, .. }, _)) => rules.first().map(|r| r.id.clone()),
            _ => None,
        };
        Ok(match worst {
            None | Some((Outcome::Allow, _)) => Judged::Decided(Decision::Forward),
            Some((Outcome::Deny(rule), what)) => Judged::Decided(refuse(
                Reason::Forbidden,
                format!("{what} refused: {} (policy \"{}\")", rule.reason, rule.id),
            )),
            Some((
                Outcome::NeedsApproval {
                    mut rules,
                    approvals,
                },
                what,
            )) => {
                held.sort();
                Judged::Approval(Arc::new(Needs {
                    what,
                    rule: rules.swap_remove(0),
                    approvals,
                    accesses: held,
                    row_estimate,
                }))
            }
        })
    }

    /// Estimates are per statement text and the search path it is
    /// estimated with (a SET earlier in the same message changes it).
    fn estimate_key(&self, paths: &[Vec<String>], any_schema: bool, text: &str) -> String {
        format!(
            "{}\u{0}{:?}\u{0}{any_schema}\u{0}{text}",
            self.path_generation,
            paths.first()
        )
    }

    /// An estimate fetched for this decision, if it is in.
    fn known_estimate(&self, key: &str) -> Option<Result<i64, String>> {
        self.estimates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    fn fetch_estimate(
        &self,
        key: String,
        text: String,
        paths: &[Vec<String>],
        params: u32,
    ) -> Wait {
        let catalog = self.catalog.clone();
        let estimates = self.estimates.clone();
        let path = paths.first().cloned().unwrap_or_default();
        let timeout = self.shared.estimate_timeout;
        Box::pin(async move {
            let result = catalog
                .estimate(&text, &path, params, timeout)
                .await
                .map_err(|e| e.to_string());
            estimates
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, result);
        })
    }

    /// The statement goes upstream: follow what it changes in the session.
    fn forwarded(&mut self, analysis: &Analysis, snapshot: &Snapshot) {
        self.reading_may_change = false;
        for info in &analysis.statements {
            for effect in &info.effects {
                match effect {
                    Effect::Prepare(name) => {
                        // In force once the server says PREPARE (a name taken
                        // already keeps the statement prepared first); only
                        // simple queries prepare (see `verdict`).
                        self.pending_prepares
                            .push_back((name.clone(), info.accesses.clone()));
                    }
                    Effect::Deallocate(Some(name)) => {
                        self.prepared.remove(name);
                        self.prepared_generation += 1;
                    }
                    Effect::Deallocate(None) => {
                        self.prepared.clear();
                        self.prepared_generation += 1;
                    }
                    Effect::DiscardAll => self.pending_path = Some(PathChange::Reset),
                    Effect::SearchPath(change) => self.pending_path = Some(change.clone()),
                    Effect::Reason(reason) => self.reason = reason.clone(),
                    Effect::Opaque => {
                        self.any_schema = true;
                        self.path_generation += 1;
                    }
                }
            }
            let opaque_call = info
                .accesses
                .iter()
                .any(|a| a.action == Action::Call && !is_builtin(a, snapshot));
            if opaque_call && !self.any_schema {
                // A function can change the search_path behind the gateway's back.
                self.any_schema = true;
                self.path_generation += 1;
            }
            if info.accesses.iter().any(|a| a.action == Action::Ddl) {
                self.ddl_forwarded = true;
            }
            let changes_reading = info.command == "SET"
                || info.command == "RESET"
                // Ending a transaction or rolling back to a savepoint
                // undoes SETs made in it.
                || matches!(info.command, "COMMIT" | "ROLLBACK" | "ROLLBACK TO" | "RELEASE")
                || info.effects.iter().any(|e| matches!(e, Effect::Opaque))
                || info.accesses.iter().any(|a| {
                    matches!(a.action, Action::Code | Action::Admin)
                        || (a.action == Action::Call && !is_builtin(a, snapshot))
                });
            self.reading_may_change |= changes_reading;
        }
    }

    /// The forwarded path change completed: it is in force.
    fn path_changed(&mut self, tag: &str) {
        let Some(change) = self.pending_path.take() else {
            return;
        };
        if tag == "DISCARD ALL" {
            self.prepared.clear();
            self.prepared_generation += 1;
        }
        let Some(snapshot) = self.catalog.last() else {
            // No catalog to expand `$user` with: resolve in every schema.
            self.any_schema = true;
            self.path_generation += 1;
            return;
        };
        let change = match change {
            PathChange::Reset => match &self.startup_path {
                Some(path) => PathChange::Set(path.clone()),
                None => PathChange::Reset,
            },
            set => set,
        };
        apply_path(&change, &mut self.paths, &snapshot);
        self.path_generation += 1;
    }
}

type Wait = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A PREPARE, DEALLOCATE or DISCARD not sent as a simple query.
fn names_change_later(statement: &Statement<'_>, analysis: &Analysis) -> bool {
    !matches!(statement.via, StatementVia::SimpleQuery)
        && analysis.statements.iter().any(|info| {
            info.effects.iter().any(|e| {
                matches!(
                    e,
                    Effect::Prepare(_) | Effect::Deallocate(_) | Effect::DiscardAll
                )
            })
        })
}

/// A call of a built-in on the allow-list (privileged built-ins are
/// `admin` accesses, never dropped). An unqualified name that a function
/// created after initdb also has may resolve to that one: not a built-in.
fn is_builtin(access: &Access, snapshot: &Snapshot) -> bool {
    match &access.target {
        Target::Function(name) if access.action == Action::Call => {
            let builtin = snapshot.builtins.contains(&name.name);
            match name.schema.as_deref() {
                None => builtin && !snapshot.user_functions.contains(&name.name),
                Some("pg_catalog" | "information_schema") => builtin,
                Some(_) => false,
            }
        }
        _ => false,
    }
}

/// A call of the routine `schema.name` (as written) within `command`.
fn call_access(schema: Option<String>, name: String, command: &'static str) -> Access {
    Access {
        action: Action::Call,
        target: Target::Function(ObjectName { schema, name }),
        command,
        columns: Vec::new(),
        has_where: true,
        has_limit: true,
        only: false,
        derived: Vec::new(),
    }
}

/// Operators created after initdb that the statement may use: each is a
/// call of the function behind it.
fn user_operators(operators: &[ObjectName], snapshot: &Snapshot) -> Vec<Access> {
    operators
        .iter()
        .filter(|op| {
            op.schema.as_deref() != Some("pg_catalog") && snapshot.user_operators.contains(&op.name)
        })
        .map(|op| {
            call_access(
                op.schema.clone(),
                format!("operator({})", op.name),
                "OPERATOR",
            )
        })
        .collect()
}

/// `q.f` on a subquery, CTE or join where a function `f` exists may be
/// `f(q)`: the whole row of `q` goes into `f`. Fail closed: every read
/// of the statement is a derived value, and `f` a call unless a built-in.
fn notation_calls(names: &[String], snapshot: &Snapshot, accesses: &mut Vec<Access>) {
    let functions: Vec<&String> = names
        .iter()
        .filter(|name| snapshot.functions.contains(*name))
        .collect();
    if functions.is_empty() {
        return;
    }
    for access in accesses.iter_mut() {
        if matches!(access.action, Action::Read | Action::CopyOut) {
            access.derived.push(ColumnRef::All);
        }
    }
    let command = accesses.first().map_or("SELECT", |a| a.command);
    for name in functions {
        accesses.push(call_access(None, name.clone(), command));
    }
}

/// Apply a search_path change that is in force.
fn apply_path(change: &PathChange, paths: &mut Vec<Vec<String>>, snapshot: &Snapshot) {
    match change {
        PathChange::Set(schemas) => {
            let expanded = schemas
                .iter()
                .map(|s| {
                    if s == "$user" {
                        snapshot.user.clone()
                    } else {
                        s.clone()
                    }
                })
                .collect();
            *paths = vec![expanded];
        }
        PathChange::Reset => *paths = vec![snapshot.default_path.clone()],
    }
}

/// An access with its names resolved.
#[derive(Debug)]
struct Resolved {
    action: Action,
    command: &'static str,
    has_where: bool,
    has_limit: bool,
    object: Object,
    /// For a column access: (name, cardholder).
    column: Option<(String, bool)>,
    /// Protected columns of this table whose values the statement computes
    /// on or stores elsewhere.
    derived: Vec<String>,
}

#[derive(Debug, Clone)]
enum Object {
    Table {
        schema: String,
        name: String,
        cardholder: bool,
    },
    Function {
        schema: String,
        name: String,
    },
    Connection,
}

impl Resolved {
    fn resource(&self) -> Resource<'_> {
        match (&self.object, &self.column) {
            (
                Object::Table {
                    schema,
                    name,
                    cardholder,
                },
                Some((column, tagged)),
            ) => Resource::Column {
                schema,
                table: name,
                name: column,
                cardholder: *tagged,
                table_cardholder: *cardholder,
            },
            (
                Object::Table {
                    schema,
                    name,
                    cardholder,
                },
                None,
            ) => Resource::Table {
                schema,
                name,
                cardholder: *cardholder,
            },
            (Object::Function { schema, name }, _) => Resource::Function { schema, name },
            (Object::Connection, _) => Resource::Connection,
        }
    }

    fn describe(&self) -> String {
        match (&self.object, &self.column) {
            (Object::Table { schema, name, .. }, Some((column, _))) => {
                format!("{} of column {schema}.{name}.{column}", self.command)
            }
            (Object::Table { schema, name, .. }, None) => {
                format!("{} on {schema}.{name}", self.command)
            }
            (Object::Function { schema, name }, _) if schema.is_empty() => {
                format!("{} calling {name}()", self.command)
            }
            (Object::Function { schema, name }, _) => {
                format!("{} calling {schema}.{name}()", self.command)
            }
            (Object::Connection, _) => self.command.to_string(),
        }
    }
}

impl Ruling {
    /// Count one resolved access in.
    fn note(&mut self, item: &Resolved) {
        /// Enough to say what a statement touched without copying a huge one.
        const MOST: usize = 32;
        let action = item.action.as_str();
        if !self.actions.iter().any(|a| a == action) {
            self.actions.push(action.to_string());
        }
        let what = item.describe();
        let holds_card_data = match (&item.object, &item.column) {
            (Object::Table { .. }, Some((_, tagged))) => *tagged,
            (Object::Table { cardholder, .. }, None) => *cardholder,
            _ => false,
        };
        if let Object::Table { cardholder, .. } = &item.object {
            self.cardholder |= *cardholder;
        }
        if self.resources.len() < MOST && !self.resources.contains(&what) {
            if holds_card_data {
                self.cardholder_resources.push(what.clone());
            }
            self.resources.push(what);
        }
    }
}

/// Resolve table names as PostgreSQL would with these search paths:
/// `pg_catalog` first unless the path places it, then the path in order.
fn resolve(
    accesses: &[Access],
    snapshot: &Snapshot,
    paths: &[Vec<String>],
    any_schema: bool,
) -> Vec<Resolved> {
    let mut out = Vec::new();
    for access in accesses {
        let base = |object: Object| Resolved {
            action: access.action,
            command: access.command,
            has_where: access.has_where,
            has_limit: access.has_limit,
            object,
            column: None,
            derived: Vec::new(),
        };
        match &access.target {
            Target::Connection | Target::Prepared(_) => out.push(base(Object::Connection)),
            Target::Function(name) => {
                if is_builtin(access, snapshot) {
                    continue;
                }
                let schema = name.schema.clone().unwrap_or_default();
                out.push(base(Object::Function {
                    schema,
                    name: name.name.clone(),
                }));
            }
            Target::Table(name) => {
                let mut schemas: Vec<String> = Vec::new();
                match &name.schema {
                    Some(schema) => schemas.push(schema.clone()),
                    None if any_schema => {
                        schemas.extend(
                            snapshot
                                .schemas_with(&name.name)
                                .into_iter()
                                .map(str::to_string),
                        );
                    }
                    None => {
                        for path in paths {
                            let mut order: Vec<&str> = Vec::new();
                            if !path.iter().any(|s| s == "pg_catalog") {
                                order.push("pg_catalog");
                            }
                            order.extend(path.iter().map(String::as_str));
                            if let Some(found) = order
                                .iter()
                                .find(|s| snapshot.table(s, &name.name).is_some())
                            {
                                schemas.push(found.to_string());
                            }
                        }
                    }
                }
                if schemas.is_empty() {
                    // Not in the catalog (yet): named as PostgreSQL would create it.
                    let first = paths
                        .first()
                        .and_then(|p| p.iter().find(|s| *s != "pg_catalog"))
                        .cloned()
                        .unwrap_or_else(|| "public".into());
                    schemas.push(first);
                }
                schemas.sort();
                schemas.dedup();
                for schema in schemas {
                    let info = snapshot.table(&schema, &name.name);
                    let object = Object::Table {
                        schema: schema.clone(),
                        name: name.name.clone(),
                        cardholder: info.is_some_and(|t| t.cardholder),
                    };
                    let Some(info) = info else {
                        out.push(base(object.clone()));
                        continue;
                    };
                    // `t.f` where the table has no column f is PostgreSQL's
                    // function-call notation, f(t): the whole row goes into f.
                    let notation: Vec<&String> = access
                        .columns
                        .iter()
                        .filter_map(|c| match c {
                            ColumnRef::Named(c) if info.column(c).is_none() => Some(c),
                            _ => None,
                        })
                        .collect();
                    let mut derived: Vec<String> = info
                        .protected
                        .iter()
                        .filter(|p| {
                            !notation.is_empty()
                                || access.derived.iter().any(|d| match d {
                                    ColumnRef::All => true,
                                    ColumnRef::Named(c) | ColumnRef::Maybe(c) => c == *p,
                                })
                        })
                        .cloned()
                        .collect();
                    derived.dedup();
                    for function in notation {
                        let call = call_access(None, function.clone(), access.command);
                        if !is_builtin(&call, snapshot) {
                            out.push(Resolved {
                                action: Action::Call,
                                ..base(Object::Function {
                                    schema: String::new(),
                                    name: function.clone(),
                                })
                            });
                        }
                    }
                    out.push(Resolved {
                        derived,
                        ..base(object.clone())
                    });
                    let mut columns: Vec<(String, bool)> = Vec::new();
                    for column in &access.columns {
                        match column {
                            ColumnRef::All => columns.extend(info.columns.iter().cloned()),
                            ColumnRef::Named(c) | ColumnRef::Maybe(c) => {
                                if let Some(tag) = info.column(c) {
                                    columns.push((c.clone(), tag));
                                }
                            }
                        }
                    }
                    columns.sort();
                    columns.dedup();
                    for column in columns {
                        out.push(Resolved {
                            column: Some(column),
                            ..base(object.clone())
                        });
                    }
                }
            }
        }
    }
    out
}

impl Guard {
    /// The first protected column `item` derives values from that this
    /// caller may not see unmasked.
    fn masked_derived(
        &self,
        item: &Resolved,
        engine: &PolicyEngine,
        context: &RequestContext<'_>,
    ) -> Option<String> {
        let Object::Table {
            schema,
            name,
            cardholder,
        } = &item.object
        else {
            return None;
        };
        item.derived.iter().find_map(|column| {
            let reveal = engine.may_reveal(
                &self.principal,
                (schema, name, column),
                *cardholder,
                context,
            );
            (!reveal).then(|| format!("{schema}.{name}.{column}"))
        })
    }
}

impl SessionHooks for Guard {
    fn statement(&mut self, statement: &Statement<'_>) -> Verdict {
        match self.verdict(statement) {
            Verdict::Decided(Decision::Forward) => {
                let verdict = self.inner.statement(statement);
                if matches!(verdict, Verdict::Decided(_)) {
                    // A one-time approval is used up once its statement is decided.
                    self.hold.used();
                }
                verdict
            }
            other => other,
        }
    }

    fn ready(&mut self, status: u8) {
        if self.rows_counted > 0 {
            self.shared.volume.add(
                &self.principal.issuer,
                &self.principal.subject,
                &self.connection,
                std::mem::take(&mut self.rows_counted),
            );
        }
        self.counting = false;
        if status == b'I' && self.ddl_forwarded {
            self.ddl_forwarded = false;
            self.catalog.invalidate();
        }
        // A path change or PREPARE that did not complete failed: nothing changed.
        self.pending_path = None;
        self.pending_prepares.clear();
        self.status = status;
        self.inner.ready(status);
    }

    fn result_value<'v>(
        &mut self,
        source: ValueSource,
        value: &'v [u8],
    ) -> Option<std::borrow::Cow<'v, [u8]>> {
        self.inner.result_value(source, value)
    }

    fn result_columns(&mut self, columns: Option<&[crate::pg::hooks::ResultColumn]>) {
        self.counting = match (columns, self.catalog.last()) {
            (Some(columns), Some(snapshot)) => columns.iter().any(|c| {
                c.source.is_some_and(|key| {
                    snapshot
                        .by_oid
                        .get(&key)
                        .is_some_and(|info| info.kind != super::catalog::ColumnKind::Plain)
                })
            }),
            // Columns unknown: count, fail closed.
            _ => true,
        };
        self.inner.result_columns(columns);
    }

    fn reading_may_change(&self) -> bool {
        self.reading_may_change
    }

    fn columns_allowed(
        &mut self,
        columns: &[crate::pg::hooks::ResultColumn],
    ) -> Result<(), String> {
        self.check_columns(columns)?;
        self.inner.columns_allowed(columns)
    }

    fn copy_out(
        &mut self,
        origin: Option<crate::pg::hooks::CopyOrigin<'_>>,
        columns: usize,
        binary: bool,
    ) {
        self.inner.copy_out(origin, columns, binary);
    }

    fn inspects_values(&self) -> bool {
        self.inner.inspects_values()
    }

    fn event(&mut self, event: &SessionEvent<'_>) {
        if let SessionEvent::Refused { .. } = event {
            // The statement asked about was refused (here or by an outer
            // hook): an approval of it is used up.
            self.hold.refused();
        }
        self.inner.event(event);
    }

    fn ruling(&mut self) -> Option<Ruling> {
        self.ruling.take()
    }

    fn data_row(&mut self, row: &[u8]) {
        if self.counting {
            self.rows_counted += 1;
        }
        self.inner.data_row(row);
    }

    fn complete(&mut self, tag: &str) {
        if matches!(tag, "SET" | "RESET" | "DISCARD ALL") {
            self.path_changed(tag);
        }
        if tag == "PREPARE"
            && let Some((name, accesses)) = self.pending_prepares.pop_front()
        {
            self.prepared.insert(name, accesses);
            self.prepared_generation += 1;
        }
        self.inner.complete(tag);
    }

    fn masking_counts(&self) -> Option<&crate::masking::Counts> {
        self.inner.masking_counts()
    }
}

/// The requester's reason from a `/* reason: ... */` comment.
fn comment_reason(sql: &str) -> Option<String> {
    let mut rest = sql;
    while let Some(start) = rest.find("/*") {
        let body = &rest[start + 2..];
        let end = body.find("*/").unwrap_or(body.len());
        let text = body[..end].trim();
        if let Some(label) = text.get(..7)
            && label.eq_ignore_ascii_case("reason:")
        {
            let reason: String = text[7..].trim().chars().take(500).collect();
            if !reason.is_empty() {
                return Some(reason);
            }
        }
        rest = &body[end.min(body.len())..];
    }
    None
}

#[cfg(test)]
mod reason_tests {
    use super::comment_reason;

    #[test]
    fn the_reason_comes_from_a_reason_comment() {
        assert_eq!(
            comment_reason("/* reason: quarterly reconciliation INC-42 */ COPY payments TO STDOUT")
                .as_deref(),
            Some("quarterly reconciliation INC-42")
        );
        assert_eq!(
            comment_reason("SELECT 1 /* note */ /* Reason: fraud case */").as_deref(),
            Some("fraud case")
        );
        assert_eq!(comment_reason("SELECT '/* reason */'"), None);
        assert_eq!(comment_reason("SELECT 1 /* reason: "), None);
        assert_eq!(
            comment_reason("/* aaaaaa\u{e9} */ SELECT 1"),
            None,
            "no panic on UTF-8"
        );
    }
}
