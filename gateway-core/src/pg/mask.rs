//! Masking for PostgreSQL results: column rules from RowDescription's table
//! OID and attribute number, content detection for everything else, in the
//! text and the binary formats.
//!
//! Wraps the session's other hooks (like the guard). Per result it builds a
//! plan, one entry per column; per cell it applies the plan. Values keep a
//! form the client can decode: text types get `*`, numbers get `0` (and
//! binary `int8`/`numeric` are decoded, masked and encoded again), JSON stays
//! valid JSON. Sensitive authentication data is redacted unless the policy
//! lets the caller `reveal` the column; so is a PAN shown in full.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use super::catalog::{Catalog, ColumnInfo, ColumnKind, Current, Snapshot};
use super::sql::{CopyFormat, CopyOut, ShapeCache};
use crate::config::{ClientMask, MaskingConfig};
use crate::masking::{
    Counts, Detector, Fill, Keep, REDACTED, Strategy, TokenKey, mask_json, mask_text, mask_whole,
};
use crate::pg::hooks::{
    CopyOrigin, Decision, Reason, ResultColumn, SessionEvent, SessionHooks, Statement,
    StatementVia, ValueSource, Verdict,
};
use crate::policy::{PolicyHandle, Principal, RequestContext};

/// Masking settings shared by every session.
#[derive(Debug)]
pub struct MaskShared {
    keep: Keep,
    /// (connection or "", schema.table.column) -> strategy.
    rules: HashMap<(String, String), Strategy>,
    token: Option<TokenKey>,
    policy: Option<PolicyHandle>,
    /// Statement analyses (shared with the policy stage), for COPY.
    shapes: Arc<ShapeCache>,
}

impl MaskShared {
    /// Settings from the configuration; `token` is the resolved token key.
    pub fn new(
        config: &MaskingConfig,
        token: Option<TokenKey>,
        policy: Option<PolicyHandle>,
        shapes: Arc<ShapeCache>,
    ) -> MaskShared {
        MaskShared {
            keep: match config.client {
                ClientMask::PciDisplay => Keep::Display,
                ClientMask::LastFour => Keep::LastFour,
            },
            rules: config
                .rules
                .iter()
                .map(|r| {
                    (
                        (r.connection.clone().unwrap_or_default(), r.column.clone()),
                        r.strategy,
                    )
                })
                .collect(),
            token,
            policy,
            shapes,
        }
    }

    fn rule(&self, connection: &str, column: &str) -> Option<Strategy> {
        self.rules
            .get(&(connection.to_string(), column.to_string()))
            .or_else(|| self.rules.get(&(String::new(), column.to_string())))
            .copied()
    }
}

/// PostgreSQL type OIDs the masker treats specially.
mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const XML: u32 = 142;
    pub const FLOAT4: u32 = 700;
    pub const UNKNOWN: u32 = 705;
    pub const INT8_ARRAY: u32 = 1016;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const NUMERIC_ARRAY: u32 = 1231;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// How a column's values are encoded, for the masker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    /// Text in both formats (the binary form of text types is the text).
    Text,
    Json,
    Jsonb,
    Int8,
    Numeric,
    /// Smaller integers: too short for a PAN.
    SmallInt,
    /// Cannot hold a PAN as digits (dates, booleans, UUIDs, floats ...).
    Inert,
    /// Arrays of numbers: text format keeps digits, masked with `0`.
    NumberArray,
    /// Anything else: scanned as bytes.
    Other,
}

fn ty(type_id: u32) -> Ty {
    match type_id {
        oid::TEXT
        | oid::VARCHAR
        | oid::BPCHAR
        | oid::NAME
        | oid::UNKNOWN
        | oid::XML
        | oid::CHAR => Ty::Text,
        oid::JSON => Ty::Json,
        oid::JSONB => Ty::Jsonb,
        oid::INT8 => Ty::Int8,
        oid::NUMERIC => Ty::Numeric,
        oid::INT2 | oid::INT4 | oid::OID => Ty::SmallInt,
        oid::BOOL
        | oid::FLOAT4
        | oid::DATE
        | oid::TIME
        | oid::TIMESTAMP
        | oid::TIMESTAMPTZ
        | oid::INTERVAL
        | oid::UUID => Ty::Inert,
        oid::INT8_ARRAY | oid::NUMERIC_ARRAY => Ty::NumberArray,
        oid::BYTEA => Ty::Other,
        _ => Ty::Other,
    }
}

/// What to do with one column's values.
#[derive(Debug, Clone)]
struct Plan {
    ty: Ty,
    binary: bool,
    /// Where masking records count it.
    place: String,
    action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// The policy lets this caller see the column unmasked.
    Reveal,
    /// Content detection.
    Detect,
    /// A column rule: the whole value.
    Whole(Strategy),
}

/// The masking hooks of one session.
pub struct Masker {
    shared: Arc<MaskShared>,
    catalog: Arc<Catalog>,
    inner: Box<dyn SessionHooks>,
    principal: Principal,
    connection: String,
    client: IpAddr,
    plan: Option<Vec<Plan>>,
    reveal: HashMap<String, bool>,
    counts: Counts,
    /// A catalog refresh was just waited for (see `Catalog::current`).
    refreshed: bool,
    /// Simple Queries let through so far (numbers COPY origins).
    queries: u64,
    /// (query number, plan of each COPY TO STDOUT in it, in order).
    copy_queries: std::collections::VecDeque<(u64, Vec<Option<CopyPlan>>)>,
    /// Prepared statement name -> plan of its COPY TO STDOUT.
    copy_prepared: HashMap<String, CopyPlan>,
    /// The COPY stream in progress.
    copy: CopyMode,
}

/// How to mask the rows of one `COPY table TO STDOUT`.
#[derive(Debug, Clone)]
struct CopyPlan {
    /// One plan per field; `None` for `COPY (query)` (content detection).
    columns: Option<Vec<Plan>>,
    format: CopyFormat,
    delimiter: u8,
    null: Vec<u8>,
    quote: u8,
    escape: u8,
}

/// How the rows of the COPY stream in progress are masked.
#[derive(Debug, Clone)]
enum CopyMode {
    /// Field by field.
    Fields(CopyPlan),
    /// Content detection on the whole row.
    Detect,
    /// The stream does not match what the statement said: every digit hidden.
    Strict,
}

impl Masker {
    /// Masking around `inner` for a session of `principal` on `connection`.
    pub fn new(
        shared: Arc<MaskShared>,
        catalog: Arc<Catalog>,
        inner: Box<dyn SessionHooks>,
        principal: Principal,
        connection: String,
        client: IpAddr,
    ) -> Masker {
        Masker {
            shared,
            catalog,
            inner,
            principal,
            connection,
            client,
            plan: None,
            reveal: HashMap::new(),
            counts: Counts::default(),
            refreshed: false,
            queries: 0,
            copy_queries: std::collections::VecDeque::new(),
            copy_prepared: HashMap::new(),
            copy: CopyMode::Detect,
        }
    }

    /// The masking records so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    fn may_reveal(&mut self, snapshot: &Snapshot, info: &ColumnInfo) -> bool {
        if let Some(known) = self.reveal.get(&info.qualified) {
            return *known;
        }
        let Some(policy) = &self.shared.policy else {
            return false;
        };
        let table_cardholder = snapshot
            .table(&info.schema, &info.table)
            .is_some_and(|t| t.cardholder);
        let allowed = policy.current().may_reveal(
            &self.principal,
            (&info.schema, &info.table, &info.column),
            table_cardholder,
            &RequestContext {
                connection: &self.connection,
                command: "SELECT",
                row_estimate: 0,
                has_where: false,
                has_limit: false,
                cardholder_data: false,
                rows_returned: 0,
                arguments: "",
                args: &[],
                client: self.client,
                time: SystemTime::now(),
            },
        );
        self.reveal.insert(info.qualified.clone(), allowed);
        allowed
    }

    /// What to do with a catalog column (`None`: not a catalog column).
    fn action(&mut self, snapshot: Option<&Snapshot>, info: Option<&ColumnInfo>) -> Action {
        let Some(info) = info else {
            return Action::Detect;
        };
        let rule = self.shared.rule(&self.connection, &info.qualified);
        let client_keep = match self.shared.keep {
            Keep::Display => Strategy::PciDisplay,
            // The configuration never makes `Full` the client's mask (only a
            // policy's reveal does); were it to, the stricter one applies.
            Keep::LastFour | Keep::Full => Strategy::LastFour,
        };
        match info.kind {
            ColumnKind::Plain => rule.map_or(Action::Detect, Action::Whole),
            _ if snapshot.is_some_and(|s| self.may_reveal(s, info)) => Action::Reveal,
            ColumnKind::Sad => Action::Whole(rule.unwrap_or(Strategy::Redact)),
            ColumnKind::Contains => rule.map_or(Action::Detect, Action::Whole),
            ColumnKind::Pan | ColumnKind::Tagged => Action::Whole(rule.unwrap_or(client_keep)),
        }
    }

    /// The plan of a `COPY table TO STDOUT`: the table's columns as the
    /// catalog knows them. A name that several schemas hold gets, column by
    /// column, the strictest of their plans.
    fn copy_plan(&mut self, copy: &CopyOut) -> CopyPlan {
        let mut plan = CopyPlan {
            columns: None,
            format: copy.format,
            delimiter: copy.delimiter,
            null: copy.null.clone().into_bytes(),
            quote: copy.quote,
            escape: copy.escape,
        };
        if let Some(table) = &copy.table {
            // A table the catalog does not know gets no plan that fits: strict.
            plan.columns = Some(self.copy_columns(table, &copy.columns).unwrap_or_default());
        }
        plan
    }

    fn copy_columns(
        &mut self,
        table_name: &super::sql::ObjectName,
        listed: &[String],
    ) -> Option<Vec<Plan>> {
        let snapshot = self.catalog.last()?;
        let schemas: Vec<String> = match &table_name.schema {
            Some(schema) => vec![schema.clone()],
            None => snapshot
                .schemas_with(&table_name.name)
                .into_iter()
                .map(str::to_string)
                .collect(),
        };
        let mut merged: Option<Vec<Plan>> = None;
        for schema in schemas {
            let Some(table) = snapshot.table(&schema, &table_name.name) else {
                continue;
            };
            let names: Vec<String> = if listed.is_empty() {
                // Without a column list COPY leaves generated columns out.
                table
                    .columns
                    .iter()
                    .map(|(c, _)| c.clone())
                    .filter(|c| !table.generated.contains(c))
                    .collect()
            } else {
                listed.to_vec()
            };
            let plans: Vec<Plan> = names
                .iter()
                .map(|column| {
                    let info = snapshot.column(&schema, &table_name.name, column);
                    Plan {
                        ty: ty(info.map_or(0, |i| i.type_id)),
                        binary: false,
                        place: format!("{schema}.{}.{column}", table_name.name),
                        action: self.action(Some(&snapshot), info),
                    }
                })
                .collect();
            merged = Some(match merged {
                None => plans,
                Some(previous) => previous
                    .into_iter()
                    .zip(plans)
                    .map(|(a, b)| {
                        if strictness(&b) > strictness(&a) {
                            b
                        } else {
                            a
                        }
                    })
                    .collect(),
            });
        }
        merged
    }

    /// Mask one row of the COPY stream in progress; `None` when nothing changed.
    fn copy_value(&mut self, row: &[u8]) -> Option<Vec<u8>> {
        match std::mem::replace(&mut self.copy, CopyMode::Detect) {
            CopyMode::Fields(plan) => {
                let masked = self.copy_row(&plan, row);
                self.copy = CopyMode::Fields(plan);
                masked
            }
            CopyMode::Strict => {
                self.copy = CopyMode::Strict;
                let hidden: Vec<u8> = row
                    .iter()
                    .map(|&b| if b.is_ascii_digit() { b'*' } else { b })
                    .collect();
                (hidden != row).then(|| {
                    self.counts.add("copy", Detector::Column, 1);
                    hidden
                })
            }
            CopyMode::Detect => self.detect("copy", row, Fill::Star, false),
        }
    }

    /// Mask one COPY row field by field; `None` when nothing changed.
    fn copy_row(&mut self, plan: &CopyPlan, row: &[u8]) -> Option<Vec<u8>> {
        let body = row.strip_suffix(b"\n").unwrap_or(row);
        let fields = split_copy(body, plan);
        let columns = plan.columns.as_deref().unwrap_or_default();
        let mut out = Vec::with_capacity(row.len() + 16);
        let mut changed = false;
        for (i, (start, end)) in fields.iter().enumerate() {
            if i > 0 {
                out.push(plan.delimiter);
            }
            let field = &body[*start..*end];
            let quoted = plan.format == CopyFormat::Csv
                && field.len() >= 2
                && field[0] == plan.quote
                && field[field.len() - 1] == plan.quote;
            let (prefix, inner, suffix) = if quoted {
                (
                    &field[..1],
                    &field[1..field.len() - 1],
                    &field[field.len() - 1..],
                )
            } else {
                (&b""[..], field, &b""[..])
            };
            let is_null = !quoted && inner == plan.null.as_slice();
            let masked = match columns.get(i) {
                _ if is_null => Some(Cow::Borrowed(inner)),
                Some(column) => self.cell(column, inner),
                None => self
                    .detect("copy", inner, Fill::Star, false)
                    .map(Cow::Owned)
                    .or(Some(Cow::Borrowed(inner))),
            };
            match masked {
                Some(Cow::Borrowed(_)) => out.extend_from_slice(field),
                Some(Cow::Owned(value)) => {
                    changed = true;
                    out.extend_from_slice(prefix);
                    // A masked value never holds the delimiter or a line break.
                    out.extend(value.iter().map(|&b| match b {
                        b'\n' | b'\r' => b' ',
                        b if b == plan.delimiter => b' ',
                        b => b,
                    }));
                    out.extend_from_slice(suffix);
                }
                None => {
                    changed = true;
                    out.extend_from_slice(&plan.null);
                }
            }
        }
        if row.ends_with(b"\n") {
            out.push(b'\n');
        }
        changed.then_some(out)
    }

    fn plan_for(&mut self, columns: &[ResultColumn]) -> Vec<Plan> {
        let snapshot = self.catalog.last();
        columns
            .iter()
            .map(|c| {
                let info = snapshot
                    .as_ref()
                    .zip(c.source)
                    .and_then(|(s, key)| s.by_oid.get(&key));
                if c.source.is_some() && info.is_none() {
                    // A table newer than the snapshot: content detection now,
                    // its column rules from the next statement on.
                    self.catalog.invalidate();
                }
                let place = info.map_or_else(
                    || format!("result column \"{}\"", c.name),
                    |i| i.qualified.clone(),
                );
                Plan {
                    ty: ty(c.type_id),
                    binary: c.binary,
                    place,
                    action: self.action(snapshot.as_deref(), info),
                }
            })
            .collect()
    }

    /// Content detection on a text-like value; `None` when nothing was found.
    fn detect(&mut self, place: &str, value: &[u8], fill: Fill, json: bool) -> Option<Vec<u8>> {
        // Most values hold nothing: look before copying.
        if !json && !crate::masking::pan::contains(value) {
            return None;
        }
        let mut out = value.to_vec();
        let hits = if json {
            mask_json(&mut out, self.shared.keep)
        } else {
            mask_text(&mut out, self.shared.keep, fill)
        };
        if hits.is_empty() {
            return None;
        }
        for hit in hits {
            self.counts.add(place, hit, 1);
        }
        Some(out)
    }

    fn cell<'v>(&mut self, plan: &Plan, value: &'v [u8]) -> Option<Cow<'v, [u8]>> {
        let keep = |v: Option<Vec<u8>>| Some(v.map_or(Cow::Borrowed(value), Cow::Owned));
        match plan.action {
            Action::Reveal => Some(Cow::Borrowed(value)),
            Action::Detect => match (plan.ty, plan.binary) {
                (Ty::Inert | Ty::SmallInt, _) => Some(Cow::Borrowed(value)),
                (Ty::Json, _) => keep(self.detect(&plan.place, value, Fill::Star, true)),
                (Ty::Jsonb, false) => keep(self.detect(&plan.place, value, Fill::Star, true)),
                (Ty::Jsonb, true) => match value.split_first() {
                    Some((&version, doc)) => keep(
                        self.detect(&plan.place, doc, Fill::Star, true)
                            .map(|d| [&[version][..], &d].concat()),
                    ),
                    None => Some(Cow::Borrowed(value)),
                },
                (Ty::Int8 | Ty::Numeric | Ty::NumberArray, false) => {
                    keep(self.detect(&plan.place, value, Fill::Zero, false))
                }
                (Ty::Int8 | Ty::Numeric, true) => {
                    let Some(text) = decode_number(plan.ty, value) else {
                        return Some(Cow::Borrowed(value));
                    };
                    match self.detect(&plan.place, text.as_bytes(), Fill::Zero, false) {
                        Some(masked) => {
                            let masked = String::from_utf8_lossy(&masked).into_owned();
                            Some(Cow::Owned(
                                encode_number(plan.ty, &masked).unwrap_or_else(zero),
                            ))
                        }
                        None => Some(Cow::Borrowed(value)),
                    }
                }
                _ => keep(self.detect(&plan.place, value, Fill::Star, false)),
            },
            Action::Whole(strategy) => {
                self.counts.add(&plan.place, Detector::Column, 1);
                self.whole(plan, strategy, value)
            }
        }
    }

    /// A column rule on the whole value.
    fn whole<'v>(
        &mut self,
        plan: &Plan,
        strategy: Strategy,
        value: &'v [u8],
    ) -> Option<Cow<'v, [u8]>> {
        let number = matches!(plan.ty, Ty::Int8 | Ty::Numeric | Ty::SmallInt);
        let json = matches!(plan.ty, Ty::Json | Ty::Jsonb);
        match strategy {
            Strategy::Null => None,
            Strategy::PciDisplay | Strategy::LastFour => {
                let keep = if strategy == Strategy::PciDisplay {
                    Keep::Display
                } else {
                    Keep::LastFour
                };
                if json {
                    let mut out = value.to_vec();
                    let start = usize::from(plan.ty == Ty::Jsonb && plan.binary);
                    mask_json(&mut out[start.min(value.len())..], keep);
                    return Some(Cow::Owned(out));
                }
                if number && plan.binary {
                    let text = decode_number(plan.ty, value)?;
                    let mut digits = text.into_bytes();
                    mask_whole(&mut digits, keep, Fill::Zero);
                    let text = String::from_utf8_lossy(&digits).into_owned();
                    return Some(Cow::Owned(
                        encode_number(plan.ty, &text).unwrap_or_else(zero),
                    ));
                }
                if plan.binary && !matches!(plan.ty, Ty::Text) {
                    // A binary value of a type the masker cannot rewrite: hide it.
                    return None;
                }
                let mut out = value.to_vec();
                mask_whole(&mut out, keep, if number { Fill::Zero } else { Fill::Star });
                Some(Cow::Owned(out))
            }
            Strategy::Redact => Some(Cow::Owned(match (plan.ty, plan.binary) {
                (Ty::Text, _) => REDACTED.as_bytes().to_vec(),
                (Ty::Json, _) | (Ty::Jsonb, false) => format!("\"{REDACTED}\"").into_bytes(),
                (Ty::Jsonb, true) => [&[1u8][..], format!("\"{REDACTED}\"").as_bytes()].concat(),
                (Ty::Int8 | Ty::Numeric | Ty::SmallInt, false) => b"0".to_vec(),
                (Ty::Int8 | Ty::Numeric, true) => zero(),
                (Ty::SmallInt, true) => vec![0; value.len()],
                _ => return None,
            })),
            Strategy::Token => {
                let key = self.shared.token.as_ref()?;
                let source: Cow<'_, [u8]> = if number && plan.binary {
                    Cow::Owned(decode_number(plan.ty, value)?.into_bytes())
                } else {
                    Cow::Borrowed(value)
                };
                Some(Cow::Owned(match (plan.ty, plan.binary) {
                    (Ty::Text, _) => key.text(&source).into_bytes(),
                    (Ty::Json, _) | (Ty::Jsonb, false) => {
                        format!("\"{}\"", key.text(&source)).into_bytes()
                    }
                    (Ty::Jsonb, true) => {
                        [&[1u8][..], format!("\"{}\"", key.text(&source)).as_bytes()].concat()
                    }
                    (Ty::Int8 | Ty::Numeric, false) => key.number(&source).to_string().into_bytes(),
                    (Ty::Int8 | Ty::Numeric, true) => {
                        encode_number(plan.ty, &key.number(&source).to_string())?
                    }
                    _ => return None,
                }))
            }
        }
    }
}

/// Zero in the binary encoding of `int8` (eight zero bytes) and of
/// `numeric` (ndigits 0, weight 0, sign +, dscale 0: also eight zero bytes).
fn zero() -> Vec<u8> {
    vec![0; 8]
}

/// The decimal text of a binary int8 or numeric.
fn decode_number(ty: Ty, value: &[u8]) -> Option<String> {
    match ty {
        Ty::Int8 => Some(i64::from_be_bytes(value.try_into().ok()?).to_string()),
        Ty::Numeric => decode_numeric(value),
        _ => None,
    }
}

fn encode_number(ty: Ty, text: &str) -> Option<Vec<u8>> {
    match ty {
        Ty::Int8 => Some(text.trim().parse::<i64>().ok()?.to_be_bytes().to_vec()),
        Ty::Numeric => encode_numeric(text.trim()),
        _ => None,
    }
}

/// PostgreSQL's binary numeric: ndigits, weight, sign, dscale, then base-10000 digits.
fn decode_numeric(value: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<u16> {
        Some(u16::from_be_bytes(value.get(i..i + 2)?.try_into().ok()?))
    };
    let ndigits = word(0)? as usize;
    let weight = word(2)? as i16 as i32;
    let sign = word(4)?;
    let dscale = word(6)? as usize;
    if sign == 0xC000 || sign == 0xD000 || sign == 0xF000 {
        return None; // NaN and infinities hold no digits.
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|i| word(8 + 2 * i))
        .collect::<Option<_>>()?;
    let mut int = String::new();
    for w in 0..=weight.max(-1) {
        let d = digits.get(w as usize).copied().unwrap_or(0);
        if int.is_empty() {
            if d != 0 {
                int.push_str(&d.to_string());
            }
        } else {
            int.push_str(&format!("{d:04}"));
        }
    }
    if int.is_empty() {
        int.push('0');
    }
    let mut frac = String::new();
    let mut position = weight + 1;
    while frac.len() < dscale {
        let d = if position < 0 {
            0
        } else {
            digits.get(position as usize).copied().unwrap_or(0)
        };
        frac.push_str(&format!("{d:04}"));
        position += 1;
    }
    frac.truncate(dscale);
    let sign = if sign == 0x4000 { "-" } else { "" };
    Some(if dscale > 0 {
        format!("{sign}{int}.{frac}")
    } else {
        format!("{sign}{int}")
    })
}

fn encode_numeric(text: &str) -> Option<Vec<u8>> {
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) || int.is_empty() {
        return None;
    }
    let int = int.trim_start_matches('0');
    let pad_left = (4 - int.len() % 4) % 4;
    let pad_right = (4 - frac.len() % 4) % 4;
    let all = format!(
        "{}{int}{frac}{}",
        "0".repeat(pad_left),
        "0".repeat(pad_right)
    );
    let groups: Vec<u16> = all
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).ok()?.parse().ok())
        .collect::<Option<_>>()?;
    let int_groups = (pad_left + int.len()) / 4;
    let mut weight = int_groups as i32 - 1;
    let mut start = 0;
    while start < groups.len() && groups[start] == 0 {
        start += 1;
        weight -= 1;
    }
    let mut end = groups.len();
    while end > start && groups[end - 1] == 0 {
        end -= 1;
    }
    let digits = &groups[start..end];
    if digits.is_empty() {
        weight = 0;
    }
    let mut out = Vec::with_capacity(8 + 2 * digits.len());
    out.extend_from_slice(&(digits.len() as u16).to_be_bytes());
    out.extend_from_slice(&(weight as i16).to_be_bytes());
    out.extend_from_slice(
        &(if negative && !digits.is_empty() {
            0x4000u16
        } else {
            0
        })
        .to_be_bytes(),
    );
    out.extend_from_slice(&(frac.len() as u16).to_be_bytes());
    for d in digits {
        out.extend_from_slice(&d.to_be_bytes());
    }
    Some(out)
}

/// Whether `value` has 13 or more digits in a row.
fn long_digit_run(value: &[u8]) -> bool {
    let mut run = 0;
    value.iter().any(|b| {
        run = if b.is_ascii_digit() { run + 1 } else { 0 };
        run >= 13
    })
}

impl SessionHooks for Masker {
    fn statement(&mut self, statement: &Statement<'_>) -> Verdict {
        // Column rules need the catalog; read it first when it is stale.
        match self.catalog.current(&mut self.refreshed) {
            Current::Ready(..) => {}
            Current::Wait(wait) => return Verdict::Wait(wait),
            Current::Unreadable => {
                return Verdict::Decided(Decision::refuse(
                    Reason::DependencyUnavailable,
                    "the gateway cannot read the upstream's catalog, so it cannot mask card data: \
                              the statement was not run; check the connection's upstream and try again",
                ));
            }
        }
        let copies = match self.copy_plans(statement) {
            Ok(copies) => copies,
            Err(refusal) => return Verdict::Decided(refusal),
        };
        let verdict = self.inner.statement(statement);
        if matches!(verdict, Verdict::Decided(Decision::Forward)) {
            match statement.via {
                StatementVia::SimpleQuery => {
                    self.queries += 1;
                    if copies.iter().any(Option::is_some) {
                        self.copy_queries.push_back((self.queries, copies));
                    }
                }
                StatementVia::Parse { name } => match copies.into_iter().flatten().next() {
                    Some(plan) => {
                        self.copy_prepared.insert(name.to_string(), plan);
                    }
                    None => {
                        self.copy_prepared.remove(name);
                    }
                },
                // The statement's COPY plan is the one made at its Parse.
                StatementVia::Execute { .. } => {}
            }
        }
        verdict
    }

    fn copy_out(&mut self, origin: Option<CopyOrigin<'_>>, columns: usize, binary: bool) {
        let plan = match origin {
            Some(CopyOrigin::Query { message, index }) => {
                while self.copy_queries.front().is_some_and(|(m, _)| *m < message) {
                    self.copy_queries.pop_front();
                }
                self.copy_queries
                    .front()
                    .filter(|(m, _)| *m == message)
                    .and_then(|(_, plans)| plans.get(index).cloned().flatten())
            }
            Some(CopyOrigin::Prepared { statement }) => self.copy_prepared.get(statement).cloned(),
            None => None,
        };
        self.copy = match plan {
            // COPY (query): what masking can follow was checked by the policy stage.
            Some(plan) if plan.columns.is_none() => CopyMode::Detect,
            Some(plan) if plan.columns.as_ref().is_some_and(|c| c.len() == columns) => {
                let whole = plan
                    .columns
                    .iter()
                    .flatten()
                    .any(|c| matches!(c.action, Action::Whole(_)));
                match (binary, whole) {
                    (false, _) => CopyMode::Fields(plan),
                    (true, false) => CopyMode::Detect,
                    (true, true) => CopyMode::Strict,
                }
            }
            // No plan, or one that does not fit the stream: fail closed.
            _ => CopyMode::Strict,
        };
        self.inner.copy_out(origin, columns, binary);
    }

    fn ready(&mut self, status: u8) {
        self.inner.ready(status);
    }

    fn reading_may_change(&self) -> bool {
        self.inner.reading_may_change()
    }

    fn columns_allowed(&mut self, columns: &[ResultColumn]) -> Result<(), String> {
        self.inner.columns_allowed(columns)
    }

    fn result_columns(&mut self, columns: Option<&[ResultColumn]>) {
        self.plan = columns.map(|c| self.plan_for(c));
        self.inner.result_columns(columns);
    }

    fn result_value<'v>(&mut self, source: ValueSource, value: &'v [u8]) -> Option<Cow<'v, [u8]>> {
        let masked = match source {
            ValueSource::Cell { column } => {
                // The plan is taken out while a cell uses it (no copy per cell).
                let plans = self.plan.take();
                let plan = plans.as_ref().and_then(|p| p.get(column));
                let masked = match plan {
                    Some(plan) => self.cell(plan, value),
                    None => {
                        // Columns unknown: scan the bytes, whatever the format.
                        let place = "result column (unknown)";
                        Some(
                            self.detect(place, value, Fill::Star, false)
                                .map_or(Cow::Borrowed(value), Cow::Owned),
                        )
                    }
                };
                self.plan = plans;
                masked
            }
            ValueSource::CopyRow => self
                .copy_value(value)
                .map(Cow::Owned)
                .or(Some(Cow::Borrowed(value))),
            other => {
                let place = match other {
                    ValueSource::ErrorField => "error",
                    ValueSource::NoticeField => "notice",
                    ValueSource::Parameter => "parameter status",
                    _ => "notification",
                };
                let mut found = self.detect(place, value, Fill::Star, false);
                if matches!(other, ValueSource::ErrorField | ValueSource::NoticeField)
                    && long_digit_run(found.as_deref().unwrap_or(value))
                {
                    // Errors echo values built by the statement: a PAN padded
                    // with digits is masked there too.
                    let mut text = found.clone().unwrap_or_else(|| value.to_vec());
                    let runs = crate::masking::detect::mask_embedded(&mut text, Fill::Star);
                    if runs > 0 {
                        self.counts
                            .add(place, crate::masking::Detector::Pan, runs as u64);
                        found = Some(text);
                    }
                }
                Some(found.map_or(Cow::Borrowed(value), Cow::Owned))
            }
        };
        match masked {
            Some(Cow::Borrowed(v)) => self.inner.result_value(source, v),
            Some(Cow::Owned(v)) => self
                .inner
                .result_value(source, &v)
                .map(|c| Cow::Owned(c.into_owned())),
            None => None,
        }
    }

    fn inspects_values(&self) -> bool {
        true
    }

    fn event(&mut self, event: &SessionEvent<'_>) {
        self.inner.event(event);
    }

    fn data_row(&mut self, row: &[u8]) {
        self.inner.data_row(row);
    }

    fn complete(&mut self, tag: &str) {
        self.inner.complete(tag);
    }

    fn masking_counts(&self) -> Option<&crate::masking::Counts> {
        Some(&self.counts)
    }
}

impl Masker {
    /// The plans of the COPY TO STDOUT statements in `statement`, in order
    /// (`None` for other statements). A binary COPY of masked columns is
    /// refused: its values cannot be masked field by field.
    fn copy_plans(&mut self, statement: &Statement<'_>) -> Result<Vec<Option<CopyPlan>>, Decision> {
        // Cheap test first: most statements are not COPY.
        if !statement
            .sql
            .as_bytes()
            .windows(4)
            .any(|w| w.eq_ignore_ascii_case(b"copy"))
        {
            return Ok(Vec::new());
        }
        let Ok(analysis) = self.shared.shapes.analyze(statement.sql) else {
            return Ok(Vec::new());
        };
        let mut plans = Vec::new();
        for info in &analysis.statements {
            let Some(copy) = &info.copy_out else {
                continue;
            };
            if [copy.delimiter, copy.quote, copy.escape]
                .iter()
                .any(|b| b.is_ascii_digit() || *b == b'*')
            {
                return Err(Decision::refuse(
                    Reason::Unsupported,
                    "COPY with a digit or '*' as delimiter, quote or escape cannot be masked: \
                              use the default characters",
                ));
            }
            let plan = self.copy_plan(copy);
            if plan.format == CopyFormat::Binary
                && let Some(masked) = plan
                    .columns
                    .iter()
                    .flatten()
                    .find(|c| matches!(c.action, Action::Whole(_)))
            {
                return Err(Decision::refuse(
                    Reason::Unsupported,
                    format!(
                        "COPY in binary format cannot mask the column {}: use FORMAT text or csv",
                        masked.place
                    ),
                ));
            }
            plans.push(Some(plan));
        }
        Ok(plans)
    }
}

/// Order of protection, for merging plans: reveal < detect < whole value.
fn strictness(plan: &Plan) -> u8 {
    match plan.action {
        Action::Reveal => 0,
        Action::Detect => 1,
        Action::Whole(Strategy::PciDisplay) => 2,
        Action::Whole(Strategy::LastFour | Strategy::Token) => 3,
        Action::Whole(Strategy::Redact | Strategy::Null) => 4,
    }
}

/// Field boundaries of a COPY row (without its line end). Text fields
/// escape the delimiter with a backslash; CSV fields may be quoted, with the
/// quote doubled (or escaped) inside.
fn split_copy(row: &[u8], plan: &CopyPlan) -> Vec<(usize, usize)> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    let mut i = 0;
    while i < row.len() {
        let b = row[i];
        match plan.format {
            CopyFormat::Text if b == b'\\' => i += 1,
            CopyFormat::Csv if in_quotes && b == plan.escape && plan.escape != plan.quote => i += 1,
            CopyFormat::Csv if b == plan.quote => in_quotes = !in_quotes,
            _ if b == plan.delimiter && !in_quotes => {
                fields.push((start, i));
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    fields.push((start, row.len()));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_round_trips() {
        for text in [
            "0",
            "4111111111111111",
            "-12.5",
            "0.0001",
            "100000000",
            "4111110000001111",
            "12345678901234567890.123",
        ] {
            let encoded = encode_numeric(text).unwrap();
            assert_eq!(decode_numeric(&encoded).as_deref(), Some(text), "{text}");
        }
    }

    #[test]
    fn binary_int8_pan_is_masked_to_a_valid_int8() {
        let text = decode_number(Ty::Int8, &4111111111111111i64.to_be_bytes()).unwrap();
        let mut digits = text.into_bytes();
        let hits = mask_text(&mut digits, Keep::Display, Fill::Zero);
        assert_eq!(hits, [Detector::Pan]);
        let encoded = encode_number(Ty::Int8, std::str::from_utf8(&digits).unwrap()).unwrap();
        assert_eq!(
            i64::from_be_bytes(encoded.try_into().unwrap()),
            4111110000001111
        );
    }
}
