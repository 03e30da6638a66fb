//! The gateway's own connection to an upstream: catalog reads and EXPLAIN
//! for row estimates, never on a client's session (a query there would
//! disturb the client's transaction and result stream).

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::frame::{Body, next_frame};
use super::upstream::{self, UpstreamError};
use crate::listener::conn::Conn;
use crate::upstream::Upstream;

/// Largest message read on the side connection (catalog rows are small).
const LIMIT: usize = 64 * 1024 * 1024;

/// One logged-in side connection.
pub struct SideConn {
    conn: Conn,
    buf: BytesMut,
}

/// Why a side query failed.
#[derive(Debug, thiserror::Error)]
pub enum SideError {
    /// Connecting or logging in failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The connection broke.
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered with an error.
    #[error("{code}: {message}")]
    Server {
        /// SQLSTATE.
        code: String,
        /// Message.
        message: String,
    },
    /// The server sent something that cannot be right.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// Rows of text values (`None` for NULL).
pub type Rows = Vec<Vec<Option<String>>>;

impl SideConn {
    /// Connect and log in with the connection's own credentials.
    pub async fn open(target: &Upstream) -> Result<SideConn, SideError> {
        let params = [("application_name".to_string(), "tollgate".to_string())];
        let session = upstream::connect(target, &params).await?;
        Ok(SideConn {
            conn: session.conn,
            buf: BytesMut::with_capacity(16 * 1024),
        })
    }

    /// Run the gateway's own `sql` with the simple protocol; the rows of
    /// every result, in order. The first error is returned after the server
    /// is ready again. Never for text that holds a client's SQL: see
    /// [`SideConn::query_one`].
    pub async fn query(&mut self, sql: &str) -> Result<Rows, SideError> {
        let mut message = BytesMut::new();
        message.extend_from_slice(b"Q");
        message.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
        message.extend_from_slice(sql.as_bytes());
        message.extend_from_slice(&[0]);
        self.exchange(&message).await
    }

    /// Run `sql`, which holds text from a client's statement, as exactly
    /// one statement: the extended protocol's Parse refuses a text with
    /// several (so `...; COMMIT; DELETE ...` cannot end the gateway's
    /// read-only transaction and run with the gateway's credentials).
    pub async fn query_one(&mut self, sql: &str) -> Result<Rows, SideError> {
        if sql.contains('\0') {
            return Err(SideError::Protocol(
                "statement text holds a NUL byte".into(),
            ));
        }
        let mut message = BytesMut::new();
        let mut put = |tag: u8, body: &[&[u8]]| {
            let len: usize = body.iter().map(|b| b.len()).sum::<usize>() + 4;
            message.extend_from_slice(&[tag]);
            message.extend_from_slice(&(len as i32).to_be_bytes());
            for part in body {
                message.extend_from_slice(part);
            }
        };
        // Parse (unnamed, no parameter types), Bind (no parameters, text
        // results), Execute (all rows), Sync.
        put(b'P', &[b"\0", sql.as_bytes(), b"\0", &[0, 0]]);
        put(b'B', &[b"\0\0", &[0, 0], &[0, 0], &[0, 0]]);
        put(b'E', &[b"\0", &[0, 0, 0, 0]]);
        put(b'S', &[]);
        self.exchange(&message).await
    }

    async fn exchange(&mut self, message: &[u8]) -> Result<Rows, SideError> {
        self.conn.write_all(message).await?;
        self.conn.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (tag, total) = loop {
                match next_frame(&self.buf, LIMIT)
                    .map_err(|e| SideError::Protocol(e.to_string()))?
                {
                    Some(frame) => break frame,
                    None => {
                        if self.conn.read_buf(&mut self.buf).await? == 0 {
                            return Err(SideError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                        }
                    }
                }
            };
            let body = &self.buf[5..total];
            match tag {
                b'D' => rows.push(
                    data_row(body)
                        .ok_or_else(|| SideError::Protocol("malformed DataRow".into()))?,
                ),
                b'E' => {
                    let (code, message) = upstream::error_fields(body);
                    error.get_or_insert(SideError::Server { code, message });
                }
                b'Z' => {
                    self.buf.advance(total);
                    return match error {
                        Some(error) => Err(error),
                        None => Ok(rows),
                    };
                }
                _ => {}
            }
            self.buf.advance(total);
        }
    }
}

fn data_row(body: &[u8]) -> Option<Vec<Option<String>>> {
    let mut reader = Body::new(body);
    let count = reader.i16()?.max(0) as usize;
    let mut rest = reader.rest();
    let mut row = Vec::with_capacity(count);
    for _ in 0..count {
        let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        rest = &rest[4..];
        if len < 0 {
            row.push(None);
        } else {
            let value = rest.get(..len as usize)?;
            row.push(Some(String::from_utf8_lossy(value).into_owned()));
            rest = &rest[len as usize..];
        }
    }
    Some(row)
}

/// Quote an identifier for SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
