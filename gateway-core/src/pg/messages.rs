//! Messages the gateway itself sends to clients, encoded with pgwire's codec.
//! Relayed messages are never re-encoded: they travel as raw [`Frame`]s.

use bytes::BytesMut;
use pgwire::messages::Message;
use pgwire::messages::response::{ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{
    Authentication, BackendKeyData, NegotiateProtocolVersion, SecretKey,
};

use super::frame::Frame;

fn encode<M: Message>(message: &M) -> Frame {
    let mut buf = BytesMut::new();
    // Only size limits can fail, and the gateway's own messages are small.
    if message.encode(&mut buf).is_err() {
        buf.clear();
        let fallback = ErrorResponse::new(vec![
            (b'S', "ERROR".into()),
            (b'V', "ERROR".into()),
            (b'C', "XX000".into()),
            (b'M', "gateway message too large to encode".into()),
        ]);
        let _ = fallback.encode(&mut buf);
    }
    Frame::from_raw(buf.freeze())
}

/// AuthenticationCleartextPassword: the client's token travels as the password (over TLS).
pub fn auth_cleartext() -> Frame {
    encode(&Authentication::CleartextPassword)
}

/// AuthenticationOk.
pub fn auth_ok() -> Frame {
    encode(&Authentication::Ok)
}

/// BackendKeyData with the gateway's own key (the upstream's is never shown).
pub fn backend_key_data(pid: i32, key: i32) -> Frame {
    encode(&BackendKeyData::new(pid, SecretKey::I32(key)))
}

/// ReadyForQuery with the given status byte ('I', 'T' or 'E').
pub fn ready_for_query(status: u8) -> Frame {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    encode(&ReadyForQuery::new(status))
}

/// NegotiateProtocolVersion: the gateway speaks 3.0 and no `_pq_` extensions.
pub fn negotiate_protocol_version(unsupported_options: Vec<String>) -> Frame {
    encode(&NegotiateProtocolVersion::new(0, unsupported_options))
}

/// ErrorResponse from (field type, value) pairs.
pub fn error_response(fields: Vec<(u8, String)>) -> Frame {
    encode(&ErrorResponse::new(fields))
}

/// NoticeResponse from (field type, value) pairs.
pub fn notice_response(fields: Vec<(u8, String)>) -> Frame {
    encode(&NoticeResponse::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwire::messages::{DecodeContext, PgWireBackendMessage, ProtocolVersion};

    fn decode(frame: &Frame) -> PgWireBackendMessage {
        let mut ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
        ctx.awaiting_frontend_ssl = false;
        ctx.awaiting_frontend_startup = false;
        let mut buf = BytesMut::from(&frame.raw()[..]);
        let message = PgWireBackendMessage::decode(&mut buf, &ctx)
            .unwrap()
            .unwrap();
        assert!(buf.is_empty(), "the whole frame is one message");
        message
    }

    #[test]
    fn authentication_round_trips() {
        assert!(matches!(
            decode(&auth_cleartext()),
            PgWireBackendMessage::Authentication(Authentication::CleartextPassword)
        ));
        assert!(matches!(
            decode(&auth_ok()),
            PgWireBackendMessage::Authentication(Authentication::Ok)
        ));
    }

    #[test]
    fn backend_key_data_round_trips() {
        match decode(&backend_key_data(4242, -7)) {
            PgWireBackendMessage::BackendKeyData(k) => {
                assert_eq!(k.pid, 4242);
                assert_eq!(k.secret_key.as_i32(), Some(-7));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn ready_for_query_round_trips() {
        for status in [b'I', b'T', b'E'] {
            let frame = ready_for_query(status);
            assert_eq!(frame.body(), &[status]);
            assert!(matches!(
                decode(&frame),
                PgWireBackendMessage::ReadyForQuery(_)
            ));
        }
    }

    #[test]
    fn error_and_notice_round_trip() {
        let fields = vec![
            (b'S', "FATAL".to_string()),
            (b'C', "28P01".into()),
            (b'M', "token expired".into()),
        ];
        match decode(&error_response(fields.clone())) {
            PgWireBackendMessage::ErrorResponse(e) => assert_eq!(e.fields, fields),
            other => panic!("unexpected {other:?}"),
        }
        match decode(&notice_response(fields.clone())) {
            PgWireBackendMessage::NoticeResponse(n) => assert_eq!(n.fields, fields),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn negotiate_protocol_version_names_unsupported_options() {
        let frame = negotiate_protocol_version(vec!["_pq_.test".into()]);
        assert_eq!(frame.tag(), b'v');
        assert_eq!(&frame.body()[..8], &[0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(&frame.body()[8..], b"_pq_.test\0");
    }
}
