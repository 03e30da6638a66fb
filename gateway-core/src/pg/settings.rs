//! The upstream session's settings as the server itself reports them
//! (ParameterStatus), never as the gateway guesses them from the client's
//! statements.
//!
//! Two settings decide how SQL text reads: `standard_conforming_strings`
//! (whether a backslash escapes a quote in `'...'`) and `client_encoding`
//! (which bytes make up a character). The gateway reads SQL correctly with
//! standard strings on and UTF8 or LATIN1; with any other value it would
//! read a different statement than the server, so the session ends before
//! another statement is forwarded. Two more say who the session is
//! (`session_authorization`, `is_superuser`): a change the gateway did not
//! see allowed ends the session too.

use std::borrow::Cow;

use super::sql::Encoding;

/// What the server reported so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// How the client's bytes are read.
    pub encoding: Encoding,
    session_authorization: Option<String>,
    superuser: Option<bool>,
    /// The client's encoding is SQL_ASCII (bytes as they are).
    sql_ascii: bool,
    /// The database's encoding, once reported.
    server_encoding: Option<String>,
}

/// A report the gateway cannot go on with: the session ends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unfollowable(pub String);

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            encoding: Encoding::Utf8,
            session_authorization: None,
            superuser: None,
            sql_ascii: false,
            server_encoding: None,
        }
    }
}

impl ServerSettings {
    /// Follow one ParameterStatus report.
    pub fn report(&mut self, name: &[u8], value: &[u8]) -> Result<(), Unfollowable> {
        let value = String::from_utf8_lossy(value);
        match name {
            b"standard_conforming_strings" if !super::sql::setting_on(&value) => {
                return Err(Unfollowable(format!(
                    "the server reports standard_conforming_strings = {value}; the gateway reads SQL \
                     only with standard_conforming_strings on, so it ends the session rather than \
                     read statements differently from the server"
                )));
            }
            b"server_encoding" => self.server_encoding = Some(value.to_ascii_uppercase()),
            b"client_encoding" => match super::sql::readable_encoding(&value) {
                Some(encoding) => {
                    self.encoding = encoding;
                    self.sql_ascii = value.eq_ignore_ascii_case("SQL_ASCII");
                }
                None => {
                    return Err(Unfollowable(format!(
                        "the server reports client_encoding = {value}; the gateway reads SQL only in \
                         UTF8 or LATIN1, so it ends the session; connect with client_encoding=UTF8"
                    )));
                }
            },
            b"session_authorization" => {
                if let Some(before) = &self.session_authorization
                    && *before != value
                {
                    return Err(Unfollowable(format!(
                        "the upstream session's authorization changed from \"{before}\" to \"{value}\"; \
                         the gateway ends the session"
                    )));
                }
                self.session_authorization = Some(value.into_owned());
            }
            b"is_superuser" => {
                let now = super::sql::setting_on(&value);
                if now && self.superuser == Some(false) {
                    return Err(Unfollowable(
                        "the upstream session became a superuser; the gateway ends the session"
                            .into(),
                    ));
                }
                self.superuser = Some(now);
            }
            _ => {}
        }
        // SQL_ASCII bytes are read by the server in its own encoding: the
        // gateway reads them as UTF-8, so only a UTF8 database will do.
        if self.sql_ascii
            && let Some(server) = &self.server_encoding
            && server != "UTF8"
        {
            return Err(Unfollowable(format!(
                "the session's client_encoding is SQL_ASCII on a {server} database, which the gateway \
                 does not read: connect with client_encoding=UTF8"
            )));
        }
        Ok(())
    }

    /// The client's statement text as the server will read it; `None` when
    /// the bytes are not valid in the session's encoding (the server would
    /// refuse them too).
    pub fn decode<'b>(&self, bytes: &'b [u8]) -> Option<Cow<'b, str>> {
        self.encoding.decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_settings_are_followed_and_others_end_the_session() {
        let mut s = ServerSettings::default();
        s.report(b"standard_conforming_strings", b"on").unwrap();
        assert!(s.report(b"standard_conforming_strings", b"off").is_err());
        s.report(b"client_encoding", b"LATIN1").unwrap();
        assert_eq!(s.encoding, Encoding::Latin1);
        s.report(b"client_encoding", b"UTF8").unwrap();
        assert!(s.report(b"client_encoding", b"SJIS").is_err());
        assert!(s.report(b"client_encoding", b"BIG5").is_err());
        // A C locale's psql sends SQL_ASCII: the bytes are UTF-8 on a UTF8 database.
        s.report(b"client_encoding", b"SQL_ASCII").unwrap();
        s.report(b"server_encoding", b"UTF8").unwrap();
        assert_eq!(s.encoding, Encoding::Utf8);
        let mut latin = ServerSettings::default();
        latin.report(b"server_encoding", b"LATIN1").unwrap();
        assert!(latin.report(b"client_encoding", b"SQL_ASCII").is_err());
    }

    #[test]
    fn who_the_session_is_may_not_change() {
        let mut s = ServerSettings::default();
        s.report(b"session_authorization", b"app").unwrap();
        s.report(b"is_superuser", b"off").unwrap();
        s.report(b"session_authorization", b"app").unwrap();
        assert!(s.report(b"session_authorization", b"postgres").is_err());
        assert!(s.report(b"is_superuser", b"on").is_err());
    }

    #[test]
    fn latin1_is_read_byte_for_character() {
        let s = ServerSettings {
            encoding: Encoding::Latin1,
            ..ServerSettings::default()
        };
        assert_eq!(s.decode(b"SELECT '\xe9'").unwrap(), "SELECT 'é'");
        let utf8 = ServerSettings::default();
        assert_eq!(utf8.decode(b"SELECT '\xc3\xa9'").unwrap(), "SELECT 'é'");
        assert!(utf8.decode(b"SELECT '\xe9'").is_none());
    }
}
