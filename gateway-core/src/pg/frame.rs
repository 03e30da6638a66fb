//! Raw protocol frames: a type byte, a big-endian length that counts itself,
//! and a body. The relay moves frames without decoding them; stages decode
//! only the messages they care about (see [`super::messages`]).

use bytes::{Buf, Bytes, BytesMut};

/// One complete message, header included, ready to forward byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    raw: Bytes,
}

/// A frame header that cannot be right.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length is below 4 or above the limit.
    #[error("invalid message length {len} for message type '{tag}' (limit {limit} bytes)")]
    BadLength {
        /// Type byte, printable.
        tag: char,
        /// Length as sent.
        len: i64,
        /// The limit in force.
        limit: usize,
    },
}

impl Frame {
    /// Type byte.
    pub fn tag(&self) -> u8 {
        self.raw[0]
    }

    /// The body, after type and length.
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }

    /// The whole frame as sent on the wire.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Build a frame from a type byte and a body.
    pub fn new(tag: u8, body: &[u8]) -> Self {
        let mut raw = BytesMut::with_capacity(5 + body.len());
        raw.extend_from_slice(&[tag]);
        raw.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        raw.extend_from_slice(body);
        Self { raw: raw.freeze() }
    }

    /// Wrap bytes that already hold a whole frame (e.g. encoded by pgwire).
    pub fn from_raw(raw: Bytes) -> Self {
        debug_assert!(raw.len() >= 5);
        Self { raw }
    }

    /// Split the next complete frame off `buf`; `Ok(None)` when more bytes are needed.
    pub fn read(buf: &mut BytesMut, limit: usize) -> Result<Option<Frame>, FrameError> {
        Ok(next_frame(buf, limit)?.map(|(_, total)| Frame {
            raw: buf.split_to(total).freeze(),
        }))
    }
}

/// Type byte and total length (header included) of the next complete frame
/// at the start of `buf`; `Ok(None)` when more bytes are needed. A length
/// below 4 or above `limit` is an error: the stream cannot be trusted after it.
pub fn next_frame(buf: &[u8], limit: usize) -> Result<Option<(u8, usize)>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 || len as usize > limit {
        return Err(FrameError::BadLength {
            tag: printable(buf[0]),
            len: len.into(),
            limit,
        });
    }
    let total = 1 + len as usize;
    Ok((buf.len() >= total).then_some((buf[0], total)))
}

/// A type byte as a character for messages ('?' when not printable).
pub fn printable(tag: u8) -> char {
    if tag.is_ascii_graphic() {
        tag as char
    } else {
        '?'
    }
}

/// A reader over a frame body for the few fields stages need.
pub struct Body<'a>(&'a [u8]);

impl<'a> Body<'a> {
    /// Start reading `body`.
    pub fn new(body: &'a [u8]) -> Self {
        Self(body)
    }

    /// A NUL-terminated string (bytes, without the NUL).
    pub fn cstr(&mut self) -> Option<&'a [u8]> {
        let end = self.0.iter().position(|&b| b == 0)?;
        let (s, rest) = self.0.split_at(end);
        self.0 = &rest[1..];
        Some(s)
    }

    /// A big-endian i32.
    pub fn i32(&mut self) -> Option<i32> {
        (self.0.len() >= 4).then(|| self.0.get_i32())
    }

    /// A big-endian i16.
    pub fn i16(&mut self) -> Option<i16> {
        (self.0.len() >= 2).then(|| self.0.get_i16())
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        (self.0.len() >= n).then(|| {
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            head
        })
    }

    /// What is left.
    pub fn rest(&self) -> &'a [u8] {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_frames_and_waits_for_more() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(Frame::new(b'Q', b"SELECT 1\0").raw());
        buf.extend_from_slice(&Frame::new(b'S', b"").raw()[..3]);
        let q = Frame::read(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(q.tag(), b'Q');
        assert_eq!(q.body(), b"SELECT 1\0");
        assert_eq!(Frame::read(&mut buf, 1 << 20).unwrap(), None);
        buf.extend_from_slice(&[0, 4]);
        assert_eq!(Frame::read(&mut buf, 1 << 20).unwrap().unwrap().tag(), b'S');
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_lengths_below_four_and_over_the_limit() {
        let mut buf = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
        let err = Frame::read(&mut buf, 1 << 30).unwrap_err();
        assert_eq!(
            err,
            FrameError::BadLength {
                tag: 'Q',
                len: i32::MAX as i64,
                limit: 1 << 30
            }
        );
        let mut buf = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
        assert!(Frame::read(&mut buf, 1 << 30).is_err());
        let mut buf = BytesMut::from(&[b'Q', 0x80, 0, 0, 0][..]);
        assert!(Frame::read(&mut buf, 1 << 30).is_err());
    }

    #[test]
    fn body_reader_reads_fields() {
        let mut b = Body::new(b"abc\0\0\0\0\x07\0\x02rest");
        assert_eq!(b.cstr(), Some(&b"abc"[..]));
        assert_eq!(b.i32(), Some(7));
        assert_eq!(b.i16(), Some(2));
        assert_eq!(b.rest(), b"rest");
        assert_eq!(b.cstr(), None);
    }
}
