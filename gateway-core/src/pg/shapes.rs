//! Which columns the rows on the wire have, for stages that look inside
//! them (masking).
//!
//! A simple Query announces its columns with RowDescription before the rows.
//! The extended protocol does not: rows of an Execute follow a Bind whose
//! result formats (text or binary, per column) only the client's Bind says,
//! for a statement described earlier, if at all. So the relay keeps, per
//! session, the description of each prepared statement (from the upstream's
//! answers to Describe), each portal's statement and result formats (from
//! Bind), and a queue of the responses it expects, in order. When rows would
//! come for a portal whose columns it does not know, it asks the upstream
//! itself (a Describe the client never sees).

use std::collections::{HashMap, VecDeque};

use super::frame::Body;
use crate::pg::hooks::ResultColumn;

/// A response the relay is waiting for, in the order the upstream answers.
#[derive(Debug)]
enum Expect {
    /// Describe of a prepared statement: ParameterDescription, then RowDescription or NoData.
    DescribeStatement(Vec<u8>),
    /// Describe of a portal; `hidden` when the relay sent it itself.
    DescribePortal { portal: Vec<u8>, hidden: bool },
    /// Execute of a portal: rows, then CommandComplete/PortalSuspended/EmptyQuery.
    Execute(Vec<u8>),
    /// A simple Query (its number among those the hooks let through, 0
    /// for others) or a FunctionCall: everything up to ReadyForQuery.
    Query(u64),
    /// Sync: ReadyForQuery.
    Sync,
}

#[derive(Debug)]
struct Portal {
    statement: Vec<u8>,
    /// The statement's generation when it was bound.
    generation: u64,
    /// The batch (Query or Sync) it was bound in, counted from 1.
    batch: u64,
    /// Result format codes from Bind (0, 1 or one per column).
    formats: Vec<i16>,
    /// Learnt from a Describe of the portal itself.
    columns: Option<Vec<ResultColumn>>,
}

/// Which statement a COPY stream belongs to (see `hooks::CopyOrigin`).
#[derive(Debug, PartialEq, Eq)]
pub enum CopySource {
    /// The `index`-th COPY of the `message`-th simple Query let through.
    Query {
        /// Which message.
        message: u64,
        /// Which COPY within it.
        index: usize,
    },
    /// An Execute of a portal of this prepared statement.
    Prepared(String),
}

/// What the relay should do with an upstream RowDescription or NoData.
#[derive(Debug, PartialEq, Eq)]
pub enum Described {
    /// Rows with these columns follow: tell the hooks.
    Rows(Vec<ResultColumn>),
    /// A statement's description: nothing follows now.
    Statement,
    /// An answer to the relay's own Describe: do not forward it.
    Hidden,
}

/// Per-session result shapes.
#[derive(Debug, Default)]
pub struct Shapes {
    statements: HashMap<Vec<u8>, Vec<ResultColumn>>,
    /// Bumped by every Parse of a name: a portal bound to an older
    /// generation must not take a newer statement's columns.
    generations: HashMap<Vec<u8>, u64>,
    portals: HashMap<Vec<u8>, Portal>,
    pending: VecDeque<Expect>,
    /// The front Execute has told the hooks its columns.
    started: bool,
    /// COPY streams seen in the front Query so far.
    copies: usize,
    /// Messages sent that ReadyForQuery answers (Query, Sync, FunctionCall).
    sent: u64,
    /// ReadyForQuery messages received.
    answered: u64,
}

/// A Describe message for `portal`.
pub fn describe_portal(portal: &[u8]) -> Vec<u8> {
    let mut frame = vec![b'D'];
    frame.extend_from_slice(&((portal.len() + 6) as i32).to_be_bytes());
    frame.push(b'P');
    frame.extend_from_slice(portal);
    frame.push(0);
    frame
}

impl Shapes {
    /// A Parse was forwarded: the statement's old description is void.
    pub fn parse(&mut self, body: &[u8]) {
        if let Some(name) = Body::new(body).cstr() {
            self.statements.remove(name);
            *self.generations.entry(name.to_vec()).or_insert(0) += 1;
        }
    }

    /// A Bind was forwarded.
    pub fn bind(&mut self, body: &[u8]) {
        let mut b = Body::new(body);
        let (Some(portal), Some(statement)) = (b.cstr(), b.cstr()) else {
            return;
        };
        let (portal, statement) = (portal.to_vec(), statement.to_vec());
        let mut formats = Vec::new();
        let mut parse = |b: &mut Body<'_>| -> Option<()> {
            let n = b.i16()?;
            for _ in 0..n {
                b.i16()?;
            }
            let params = b.i16()?;
            for _ in 0..params {
                let len = b.i32()?;
                if len > 0 {
                    b.take(len as usize)?;
                }
            }
            let n = b.i16()?;
            for _ in 0..n {
                formats.push(b.i16()?);
            }
            Some(())
        };
        if parse(&mut b).is_none() {
            // Malformed: the upstream will refuse it; assume binary, the careful choice.
            formats = vec![1];
        }
        // The columns are those of the statement as bound now.
        let columns = self.statements.get(&statement).cloned();
        let generation = self.generations.get(&statement).copied().unwrap_or(0);
        self.portals.insert(
            portal,
            Portal {
                statement,
                generation,
                batch: self.sent + 1,
                formats,
                columns,
            },
        );
    }

    /// A Describe was forwarded.
    pub fn describe(&mut self, body: &[u8]) {
        let mut b = Body::new(body);
        let kind = b.take(1).map(|k| k[0]);
        let name = b.cstr().unwrap_or_default().to_vec();
        self.pending.push_back(match kind {
            Some(b'S') => Expect::DescribeStatement(name),
            _ => Expect::DescribePortal {
                portal: name,
                hidden: false,
            },
        });
    }

    /// An Execute is about to be forwarded. Returns a Describe to send
    /// before it when the portal's columns are unknown.
    pub fn execute(&mut self, body: &[u8]) -> Option<Vec<u8>> {
        let portal = Body::new(body).cstr().unwrap_or_default().to_vec();
        let known = self
            .portals
            .get(&portal)
            .is_some_and(|p| p.columns.is_some());
        let describe = (!known).then(|| {
            self.pending.push_back(Expect::DescribePortal {
                portal: portal.clone(),
                hidden: true,
            });
            describe_portal(&portal)
        });
        self.pending.push_back(Expect::Execute(portal));
        describe
    }

    /// SQL replaced or closed portals (DECLARE, CLOSE, DISCARD ALL): the
    /// columns of every portal are learnt again.
    pub fn forget_portals(&mut self) {
        self.portals.clear();
    }

    /// An error answers the batch being answered: the portals it bound may
    /// not be what was recorded (a failed Bind leaves a portal as it was).
    pub fn batch_failed(&mut self) {
        let batch = self.answered + 1;
        self.portals.retain(|_, p| p.batch != batch);
    }

    /// SQL dropped prepared statements (DEALLOCATE, DISCARD ALL).
    pub fn forget_statements(&mut self) {
        self.statements.clear();
        for generation in self.generations.values_mut() {
            *generation += 1;
        }
    }

    /// A Close was forwarded.
    pub fn close(&mut self, body: &[u8]) {
        let mut b = Body::new(body);
        let kind = b.take(1).map(|k| k[0]);
        let name = b.cstr().unwrap_or_default();
        match kind {
            Some(b'S') => self.statements.remove(name),
            _ => self.portals.remove(name).map(|_| Vec::new()),
        };
    }

    /// A Query (`message` as counted for the hooks, 0 for none) or a
    /// FunctionCall was forwarded.
    pub fn query(&mut self, message: u64) {
        self.sent += 1;
        self.pending.push_back(Expect::Query(message));
    }

    /// The upstream sent CopyOutResponse: which statement's rows follow.
    pub fn copy_out(&mut self) -> Option<CopySource> {
        match self.pending.front()? {
            Expect::Query(message) => {
                let index = self.copies;
                self.copies += 1;
                Some(CopySource::Query {
                    message: *message,
                    index,
                })
            }
            Expect::Execute(portal) => {
                let statement = &self.portals.get(portal)?.statement;
                Some(CopySource::Prepared(
                    String::from_utf8_lossy(statement).into_owned(),
                ))
            }
            _ => None,
        }
    }

    /// A Sync was forwarded.
    pub fn sync(&mut self) {
        self.sent += 1;
        self.pending.push_back(Expect::Sync);
    }

    /// The upstream entered copy-in mode and will not answer the `n` Syncs
    /// sent behind the COPY.
    pub fn drop_syncs(&mut self, n: usize) {
        for _ in 0..n {
            match self.pending.iter().position(|e| matches!(e, Expect::Sync)) {
                Some(i) => {
                    self.pending.remove(i);
                    self.sent -= 1;
                }
                None => return,
            }
        }
    }

    /// The upstream sent RowDescription.
    pub fn row_description(&mut self, body: &[u8]) -> Described {
        let columns = parse_row_description(body).unwrap_or_default();
        match self.pending.front() {
            Some(Expect::DescribeStatement(_)) => {
                if let Some(Expect::DescribeStatement(name)) = self.pending.pop_front() {
                    self.statements.insert(name, columns);
                }
                Described::Statement
            }
            Some(Expect::DescribePortal { .. }) => {
                let Some(Expect::DescribePortal { portal, hidden }) = self.pending.pop_front()
                else {
                    unreachable!("front was checked")
                };
                if !self.portals.contains_key(&portal) {
                    // A portal this relay did not see bound (a SQL cursor, or
                    // one forgotten after an error): the Describe says all,
                    // formats included.
                    self.portals.insert(
                        portal.clone(),
                        Portal {
                            statement: Vec::new(),
                            generation: 0,
                            batch: self.sent,
                            formats: columns.iter().map(|c| i16::from(c.binary)).collect(),
                            columns: None,
                        },
                    );
                }
                if let Some(p) = self.portals.get_mut(&portal) {
                    p.columns = Some(columns.clone());
                    // Still the statement it was bound to: later Binds of it
                    // need not ask again.
                    let current = self.generations.get(&p.statement).copied().unwrap_or(0);
                    if current == p.generation {
                        let mut described = columns.clone();
                        for c in &mut described {
                            c.binary = false;
                        }
                        self.statements.insert(p.statement.clone(), described);
                    }
                }
                if hidden {
                    Described::Hidden
                } else {
                    Described::Rows(columns)
                }
            }
            _ => Described::Rows(columns),
        }
    }

    /// The upstream sent NoData. Returns whether to forward it.
    pub fn no_data(&mut self) -> bool {
        match self.pending.front() {
            Some(Expect::DescribeStatement(_)) => {
                if let Some(Expect::DescribeStatement(name)) = self.pending.pop_front() {
                    self.statements.insert(name, Vec::new());
                }
                true
            }
            Some(Expect::DescribePortal { hidden, .. }) => {
                let hidden = *hidden;
                if let Some(Expect::DescribePortal { portal, .. }) = self.pending.pop_front() {
                    self.portals
                        .entry(portal)
                        .or_insert_with(|| Portal {
                            statement: Vec::new(),
                            generation: 0,
                            batch: 0,
                            formats: Vec::new(),
                            columns: None,
                        })
                        .columns = Some(Vec::new());
                }
                !hidden
            }
            _ => true,
        }
    }

    /// The upstream sent a DataRow. When it is the first row of an Execute,
    /// the portal's columns (None if unknown) for the hooks.
    pub fn data_row(&mut self) -> Option<Option<Vec<ResultColumn>>> {
        let Some(Expect::Execute(portal)) = self.pending.front() else {
            return None;
        };
        if self.started {
            return None;
        }
        self.started = true;
        // A portal this relay did not see bound: columns unknown.
        let Some(portal) = self.portals.get(portal) else {
            return Some(None);
        };
        let columns = portal.columns.clone();
        Some(columns.map(|mut columns| {
            for (i, c) in columns.iter_mut().enumerate() {
                c.binary = match portal.formats.as_slice() {
                    [] => false,
                    [one] => *one == 1,
                    many => many.get(i) == Some(&1),
                };
            }
            columns
        }))
    }

    /// CommandComplete, PortalSuspended or EmptyQueryResponse.
    pub fn execute_done(&mut self) {
        if matches!(self.pending.front(), Some(Expect::Execute(_))) {
            self.pending.pop_front();
            self.started = false;
        }
    }

    /// ErrorResponse: in the extended protocol the upstream skips to Sync.
    pub fn error(&mut self) {
        self.started = false;
        while let Some(front) = self.pending.front() {
            match front {
                Expect::Query(_) | Expect::Sync => break,
                _ => {
                    self.pending.pop_front();
                }
            }
        }
    }

    /// ReadyForQuery with transaction `status`. Outside a transaction no
    /// portal of the protocol survives (a SQL cursor of the same name that
    /// is declared later must be described afresh).
    pub fn ready(&mut self, status: u8) {
        self.started = false;
        self.copies = 0;
        self.answered += 1;
        if status == b'I' {
            let answered = self.answered;
            self.portals.retain(|_, p| p.batch > answered);
        }
        // Anything left before it was skipped by the upstream.
        while let Some(front) = self.pending.pop_front() {
            if matches!(front, Expect::Query(_) | Expect::Sync) {
                break;
            }
        }
    }
}

/// The columns of a RowDescription body.
pub fn parse_row_description(body: &[u8]) -> Option<Vec<ResultColumn>> {
    let mut b = Body::new(body);
    let n = b.i16()?;
    let mut columns = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let name = String::from_utf8_lossy(b.cstr()?).into_owned();
        let table = b.i32()? as u32;
        let attnum = b.i16()?;
        let type_id = b.i32()? as u32;
        let _size = b.i16()?;
        let _modifier = b.i32()?;
        let format = b.i16()?;
        columns.push(ResultColumn {
            name,
            source: (table != 0).then_some((table, attnum)),
            type_id,
            binary: format == 1,
        });
    }
    Some(columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row_description(cols: &[(&str, u32, i16, u32, i16)]) -> Vec<u8> {
        let mut body = (cols.len() as i16).to_be_bytes().to_vec();
        for (name, table, attnum, type_id, format) in cols {
            body.extend_from_slice(name.as_bytes());
            body.push(0);
            body.extend_from_slice(&table.to_be_bytes());
            body.extend_from_slice(&attnum.to_be_bytes());
            body.extend_from_slice(&type_id.to_be_bytes());
            body.extend_from_slice(&(-1i16).to_be_bytes());
            body.extend_from_slice(&(-1i32).to_be_bytes());
            body.extend_from_slice(&format.to_be_bytes());
        }
        body
    }

    fn bind(portal: &str, statement: &str, formats: &[i16]) -> Vec<u8> {
        let mut body = format!("{portal}\0{statement}\0").into_bytes();
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&(formats.len() as i16).to_be_bytes());
        for f in formats {
            body.extend_from_slice(&f.to_be_bytes());
        }
        body
    }

    #[test]
    fn execute_of_a_described_statement_gets_bind_formats() {
        let mut s = Shapes::default();
        s.parse(b"s1\0SELECT pan FROM payments\0\0\0");
        s.describe(b"Ss1\0");
        s.sync();
        let rd = row_description(&[("pan", 16400, 3, 25, 0), ("n", 0, 0, 20, 0)]);
        assert_eq!(s.row_description(&rd), Described::Statement);
        s.ready(b'I');
        s.bind(&bind("", "s1", &[1]));
        assert_eq!(s.execute(b"\0\0\0\0\0"), None, "columns known, no describe");
        s.sync();
        let columns = s.data_row().unwrap().unwrap();
        assert_eq!(columns[0].source, Some((16400, 3)));
        assert!(columns[0].binary && columns[1].binary);
        assert_eq!(s.data_row(), None, "told once per Execute");
        s.execute_done();
        s.ready(b'I');
        assert!(s.pending.is_empty());
    }

    #[test]
    fn unknown_portal_is_described_by_the_relay_and_hidden() {
        let mut s = Shapes::default();
        s.parse(b"\0SELECT 1\0\0\0");
        s.bind(&bind("", "", &[0, 1]));
        let describe = s.execute(b"\0\0\0\0\0").expect("a describe first");
        assert_eq!(describe, describe_portal(b""));
        s.sync();
        let rd = row_description(&[("a", 0, 0, 25, 0), ("b", 0, 0, 20, 1)]);
        assert_eq!(s.row_description(&rd), Described::Hidden);
        let columns = s.data_row().unwrap().unwrap();
        assert!(!columns[0].binary && columns[1].binary);
    }

    #[test]
    fn a_portal_keeps_the_columns_of_the_statement_it_was_bound_to() {
        let mut s = Shapes::default();
        s.parse(b"\0SELECT cvv FROM payments\0\0\0");
        s.describe(b"S\0");
        s.sync();
        let cvv = row_description(&[("cvv", 16400, 6, 25, 0)]);
        assert_eq!(s.row_description(&cvv), Described::Statement);
        s.ready(b'I');
        s.bind(&bind("p", "", &[0]));
        // The unnamed statement is replaced before the portal runs.
        s.parse(b"\0SELECT 1::int4\0\0\0");
        s.describe(b"S\0");
        assert_eq!(s.execute(b"p\0\0\0\0\0"), None);
        s.sync();
        let int4 = row_description(&[("int4", 0, 0, 23, 0)]);
        assert_eq!(s.row_description(&int4), Described::Statement);
        let columns = s.data_row().unwrap().unwrap();
        assert_eq!(columns[0].source, Some((16400, 6)), "still the cvv column");
    }

    #[test]
    fn portals_end_with_their_transaction_but_not_a_pipelined_batch() {
        let mut s = Shapes::default();
        s.parse(b"s1\0SELECT pan FROM payments\0\0\0");
        s.describe(b"Ss1\0");
        s.sync();
        let rd = row_description(&[("pan", 16400, 4, 25, 0)]);
        s.row_description(&rd);
        s.ready(b'I');
        s.bind(&bind("c", "s1", &[]));
        s.sync();
        // Pipelined: the next batch binds before the first one's answer.
        s.bind(&bind("d", "s1", &[]));
        assert_eq!(s.execute(b"d\0\0\0\0\0"), None);
        s.sync();
        s.ready(b'I');
        assert!(
            !s.portals.contains_key(&b"c"[..]),
            "batch 1's portal is gone"
        );
        assert!(s.portals.contains_key(&b"d"[..]), "batch 2's portal stays");
        // A portal of that name later (a SQL cursor) is described afresh.
        assert!(s.execute(b"c\0\0\0\0\0").is_some());
    }

    #[test]
    fn an_error_skips_to_sync() {
        let mut s = Shapes::default();
        s.describe(b"Sx\0");
        s.bind(&bind("", "x", &[]));
        s.execute(b"\0\0\0\0\0");
        s.sync();
        s.error();
        assert!(matches!(s.pending.front(), Some(Expect::Sync)));
        s.ready(b'I');
        assert!(s.pending.is_empty());
    }
}
