//! Which prepared statement each Execute runs, and which execution of it
//! that is. Every execution is an access. The first, when nothing else was
//! queried, parsed or executed since its Parse, is covered by the decision
//! on the Parse (and its audit record): drivers that prepare and then
//! execute get one decision and one record. Every other execution is
//! decided and recorded again (the session may have changed since the
//! Parse, and PostgreSQL plans the statement again with the search_path in
//! force when it runs), so a one-time approval allows exactly one execution
//! and a statement run a million times is a million accesses on record
//! (PCI DSS 10.2.1.1).
//!
//! An Execute that continues a suspended portal (a row limit) is the same
//! execution. A statement the relay did not see parsed (a SQL-level
//! `PREPARE`, bound over the protocol) is decided as `EXECUTE name` every
//! time. A Parse counts from when it is sent (its Bind and Execute may
//! follow before any answer) until the server's answer: without a
//! ParseComplete by the batch's ReadyForQuery it failed (a name prepared
//! already keeps its first statement), and the record of it is undone.

use std::collections::HashMap;

use super::frame::Body;
use super::side::quote_ident;

/// What the relay knows of the session's prepared statements and portals.
#[derive(Debug, Default)]
pub struct Executions {
    statements: HashMap<String, Parsed>,
    portals: HashMap<String, Portal>,
    /// The statement parsed last, while nothing else has happened since:
    /// its Parse's decision covers its first execution.
    covered: Option<String>,
    /// Parses sent, oldest first, that no ParseComplete has answered yet.
    unconfirmed: std::collections::VecDeque<Unconfirmed>,
    /// Queries and Syncs sent (the batch being written is this plus one).
    sent: u64,
    /// ReadyForQuery messages received (or Syncs that will get none).
    answered: u64,
}

/// A portal bound over the protocol.
#[derive(Debug)]
struct Portal {
    statement: String,
    /// Executed once already (a later Execute continues it).
    executed: bool,
    /// The batch it was bound in.
    batch: u64,
}

#[derive(Debug, Clone)]
struct Parsed {
    sql: String,
    executions: u64,
    /// Running it could change how the server reads SQL (see the hooks).
    may_change_reading: bool,
}

/// A Parse sent and not answered yet, with what it replaced.
#[derive(Debug)]
struct Unconfirmed {
    name: String,
    replaced: Option<Parsed>,
    /// The batch (counted Query or Sync) whose ReadyForQuery ends it.
    batch: u64,
}

/// What an Execute needs before it goes upstream.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing: the first execution since the Parse, or a continuation.
    Free,
    /// Not yet: the statement's Parse was sent in an earlier batch and not
    /// answered; once it is (or is undone), ask again.
    Wait,
    /// A decision on `sql` as execution number `execution` of `statement`.
    Ask {
        /// The prepared statement's name.
        statement: String,
        /// The text to decide on.
        sql: String,
        /// Which execution this is (0 when the relay did not see the Parse).
        execution: u64,
    },
}

impl Executions {
    /// A Parse of `sql` under `name` went upstream.
    pub fn parsed(&mut self, name: &str, sql: &str, may_change_reading: bool) {
        let replaced = self.statements.insert(
            name.to_string(),
            Parsed {
                sql: sql.to_string(),
                executions: 0,
                may_change_reading,
            },
        );
        self.unconfirmed.push_back(Unconfirmed {
            name: name.to_string(),
            replaced,
            batch: self.sent + 1,
        });
        self.covered = Some(name.to_string());
    }

    /// The server answered the oldest unanswered Parse with ParseComplete.
    pub fn parse_complete(&mut self) {
        self.unconfirmed.pop_front();
    }

    /// A Query or Sync went upstream: a batch ends.
    pub fn batch_sent(&mut self) {
        self.sent += 1;
    }

    /// Syncs the server will not answer (sent during COPY FROM STDIN).
    pub fn batches_dropped(&mut self, n: usize) {
        self.answered += n as u64;
    }

    /// Every protocol portal may have been replaced or closed by SQL
    /// (DECLARE, CLOSE, DISCARD ALL).
    pub fn forget_portals(&mut self) {
        self.portals.clear();
    }

    /// An error answers the batch being answered: a Bind of it may have
    /// failed (the portal stays as it was) or been skipped, so what was
    /// recorded for the portals it bound is void.
    pub fn batch_failed(&mut self) {
        let batch = self.answered + 1;
        self.portals.retain(|_, p| p.batch != batch);
    }

    /// Every prepared statement may have been dropped by SQL (DEALLOCATE,
    /// DISCARD ALL).
    pub fn forget_statements(&mut self) {
        self.statements.clear();
        self.covered = None;
    }

    /// ReadyForQuery: the Parses of the batch it ends that got no
    /// ParseComplete failed (or were skipped after an error); the
    /// statements they replaced are back. Later batches' Parses wait.
    pub fn ready(&mut self) {
        self.answered += 1;
        let ended = self
            .unconfirmed
            .iter()
            .take_while(|u| u.batch <= self.answered)
            .count();
        let failed: Vec<Unconfirmed> = self.unconfirmed.drain(..ended).collect();
        for failed in failed.into_iter().rev() {
            match failed.replaced {
                Some(previous) => self.statements.insert(failed.name.clone(), previous),
                None => self.statements.remove(&failed.name),
            };
            if self.covered.as_ref() == Some(&failed.name) {
                self.covered = None;
            }
        }
    }

    /// A simple Query went upstream: no Parse's decision covers what follows.
    pub fn queried(&mut self) {
        self.covered = None;
    }

    /// A Bind (portal, statement, ...).
    pub fn bound(&mut self, body: &[u8]) {
        let mut body = Body::new(body);
        if let (Some(portal), Some(statement)) = (body.cstr(), body.cstr()) {
            self.portals.insert(
                String::from_utf8_lossy(portal).into_owned(),
                Portal {
                    statement: String::from_utf8_lossy(statement).into_owned(),
                    executed: false,
                    batch: self.sent + 1,
                },
            );
        }
    }

    /// A Close ('S' statement or 'P' portal, name).
    pub fn closed(&mut self, body: &[u8]) {
        let mut body = Body::new(body);
        let (Some(kind), Some(name)) = (body.take(1), body.cstr()) else {
            return;
        };
        let name = String::from_utf8_lossy(name);
        match kind[0] {
            b'S' => {
                self.statements.remove(name.as_ref());
            }
            b'P' => {
                self.portals.remove(name.as_ref());
            }
            _ => {}
        }
    }

    /// What the Execute with this body needs (nothing changes yet).
    pub fn next(&self, body: &[u8]) -> Next {
        let portal = Body::new(body).cstr().unwrap_or_default();
        let portal = String::from_utf8_lossy(portal);
        let Some(Portal {
            statement,
            executed,
            ..
        }) = self.portals.get(portal.as_ref())
        else {
            // Not bound over the protocol as far as the relay knows: a SQL
            // cursor (decided when declared), or none (the server refuses).
            return Next::Ask {
                statement: String::new(),
                sql: format!(
                    "FETCH ALL FROM {}",
                    quote_ident(if portal.is_empty() {
                        "<unnamed portal>"
                    } else {
                        &portal
                    })
                ),
                execution: 0,
            };
        };
        if *executed {
            return Next::Free;
        }
        // In its own batch a failed Parse makes the server skip the Execute
        // too; in a later one the Execute would run whatever the server holds.
        if self
            .unconfirmed
            .iter()
            .any(|u| u.name == *statement && u.batch <= self.sent)
        {
            return Next::Wait;
        }
        match self.statements.get(statement) {
            Some(Parsed { executions: 0, .. }) if self.covered.as_ref() == Some(statement) => {
                Next::Free
            }
            Some(Parsed {
                sql, executions, ..
            }) => Next::Ask {
                statement: statement.clone(),
                sql: sql.clone(),
                execution: executions + 1,
            },
            None => Next::Ask {
                statement: statement.clone(),
                sql: format!("EXECUTE {}", quote_ident(statement)),
                execution: 0,
            },
        }
    }

    /// Whether the statement the Execute with this body runs could change
    /// how the server reads SQL (one the relay did not see parsed could).
    pub fn may_change_reading(&self, body: &[u8]) -> bool {
        let portal = Body::new(body).cstr().unwrap_or_default();
        self.portals
            .get(String::from_utf8_lossy(portal).as_ref())
            .and_then(|p| self.statements.get(&p.statement))
            .is_none_or(|parsed| parsed.may_change_reading)
    }

    /// The Execute with this body went upstream.
    pub fn executed(&mut self, body: &[u8]) {
        let portal = Body::new(body).cstr().unwrap_or_default();
        if let Some(p) = self
            .portals
            .get_mut(String::from_utf8_lossy(portal).as_ref())
            && !p.executed
        {
            p.executed = true;
            if let Some(parsed) = self.statements.get_mut(p.statement.as_str()) {
                parsed.executions += 1;
            }
            self.covered = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(portal: &str, statement: &str) -> Vec<u8> {
        format!("{portal}\0{statement}\0\0\0\0\0\0\0").into_bytes()
    }

    fn execute(portal: &str) -> Vec<u8> {
        format!("{portal}\0\0\0\0\0").into_bytes()
    }

    #[test]
    fn every_execution_after_the_first_is_asked_about() {
        let mut e = Executions::default();
        e.parsed("s", "SELECT 1", false);
        for n in 1..=3u64 {
            e.bound(&bind("", "s"));
            let next = e.next(&execute(""));
            if n == 1 {
                assert_eq!(next, Next::Free);
            } else {
                assert_eq!(
                    next,
                    Next::Ask {
                        statement: "s".into(),
                        sql: "SELECT 1".into(),
                        execution: n
                    }
                );
            }
            e.executed(&execute(""));
            // Continuing a suspended portal is the same execution.
            assert_eq!(e.next(&execute("")), Next::Free);
        }
        // A new Parse starts the count again.
        e.parsed("", "SELECT 2", false);
        e.bound(&bind("p", ""));
        assert_eq!(e.next(&execute("p")), Next::Free);
    }

    #[test]
    fn a_ready_for_query_undoes_only_the_parses_of_its_own_batch() {
        let mut e = Executions::default();
        // P "" "SELECT 1" S, then P "" "<payments>" B E S, in one write.
        e.parsed("", "SELECT 1", false);
        e.batch_sent();
        e.parsed("", "SELECT pan FROM payments", false);
        e.batch_sent();
        e.parse_complete();
        e.ready(); // the first batch's answer
        e.parse_complete();
        e.ready();
        e.bound(&bind("", ""));
        e.executed(&execute(""));
        e.bound(&bind("", ""));
        assert!(
            matches!(e.next(&execute("")), Next::Ask { ref sql, .. } if sql == "SELECT pan FROM payments")
        );
    }

    #[test]
    fn an_execute_behind_an_unanswered_parse_of_an_earlier_batch_waits() {
        let mut e = Executions::default();
        e.parsed("s", "SELECT 1", false);
        e.batch_sent();
        e.bound(&bind("", "s"));
        assert_eq!(e.next(&execute("")), Next::Wait);
        e.ready(); // no ParseComplete: the Parse failed
        assert!(matches!(
            e.next(&execute("")),
            Next::Ask { execution: 0, .. }
        ));
    }

    #[test]
    fn a_portal_the_relay_did_not_see_bound_is_fetched_on_record() {
        let e = Executions::default();
        assert!(
            matches!(e.next(&execute("c")), Next::Ask { ref sql, .. } if sql == "FETCH ALL FROM \"c\"")
        );
    }

    #[test]
    fn a_first_execution_after_something_else_happened_is_asked_about() {
        let mut e = Executions::default();
        e.parsed("s", "SELECT 1", false);
        e.queried();
        e.bound(&bind("", "s"));
        assert!(matches!(
            e.next(&execute("")),
            Next::Ask { execution: 1, .. }
        ));
        e.parsed("a", "SELECT 1", false);
        e.parsed("b", "SELECT 2", false);
        e.bound(&bind("", "a"));
        assert!(matches!(e.next(&execute("")), Next::Ask { .. }));
        e.bound(&bind("", "b"));
        assert_eq!(e.next(&execute("")), Next::Free);
    }

    #[test]
    fn a_parse_the_server_refused_is_undone() {
        let mut e = Executions::default();
        e.bound(&bind("", "sqlprepared"));
        assert!(
            matches!(e.next(&execute("")), Next::Ask { execution: 0, ref sql, .. } if sql == "EXECUTE \"sqlprepared\"")
        );
        // `s` is taken (by SQL PREPARE, unseen here): the server refuses
        // the Parse, and an Execute of `s` is of the first statement.
        e.parsed("s", "SELECT 1", false);
        e.batch_sent();
        e.ready();
        e.bound(&bind("", "s"));
        assert!(matches!(
            e.next(&execute("")),
            Next::Ask { execution: 0, .. }
        ));
        // A Parse the server answered stays.
        e.parsed("t", "SELECT 2", false);
        e.parse_complete();
        e.batch_sent();
        e.ready();
        e.bound(&bind("", "t"));
        assert_eq!(e.next(&execute("")), Next::Free);
        // Parsed again under a name the server already holds: refused, and
        // the first text is what counts.
        e.executed(&execute(""));
        e.parsed("t", "SELECT pan FROM payments", false);
        e.batch_sent();
        e.ready();
        e.bound(&bind("", "t"));
        assert!(matches!(e.next(&execute("")), Next::Ask { ref sql, .. } if sql == "SELECT 2"));
        e.closed(b"St\0");
        e.bound(&bind("", "t"));
        assert!(matches!(
            e.next(&execute("")),
            Next::Ask { execution: 0, .. }
        ));
    }
}
