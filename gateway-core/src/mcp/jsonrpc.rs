//! JSON-RPC 2.0 as MCP uses it: the messages a client sends, the errors
//! the gateway answers with, and the mapping of the stages' refusal reasons
//! to JSON-RPC error codes.

use serde_json::{Value, json};

use crate::stage::{Reason, Refusal};

/// Invalid JSON.
pub const PARSE_ERROR: i64 = -32700;
/// Not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// A method the gateway does not pass.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Bad parameters (an unknown tool).
pub const INVALID_PARAMS: i64 = -32602;
/// The gateway failed.
pub const INTERNAL_ERROR: i64 = -32603;
/// A header disagrees with the body (protocol 2026-07-28).
pub const HEADER_MISMATCH: i64 = -32020;
/// A protocol version the gateway does not speak (protocol 2026-07-28;
/// `data.supported` lists those it does).
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

/// The JSON-RPC error code a refusal carries. The server-defined codes are
/// in JSON-RPC's reserved range (-32000 to -32099); a cancelled hold uses
/// -32800, as the Language Server Protocol does for a cancelled request.
pub fn code(reason: Reason) -> i64 {
    match reason {
        Reason::Unauthenticated => -32001,
        Reason::DependencyUnavailable | Reason::AuditUnavailable => -32002,
        Reason::Forbidden | Reason::ApprovalDenied => -32003,
        Reason::ApprovalExpired => -32004,
        Reason::Withdrawn => -32800,
        Reason::Unsupported => METHOD_NOT_FOUND,
        Reason::Malformed | Reason::TooLarge => INVALID_REQUEST,
        Reason::BadEncoding => PARSE_ERROR,
        Reason::NotFound => INVALID_PARAMS,
    }
}

/// A JSON-RPC error response to `id` for a refusal: the message says why
/// (and names the policy); `data.reason` is the stages' reason.
pub fn refusal(id: &Value, refusal: &Refusal) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {
            "code": code(refusal.reason),
            "message": refusal.message,
            "data": { "reason": refusal.reason.as_str() },
        },
    })
}

/// A JSON-RPC error response with a plain code.
pub fn error(id: &Value, code: i64, message: impl Into<String>) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": { "code": code, "message": message.into() },
    })
}

/// A JSON-RPC result response.
pub fn result(id: &Value, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

/// What a client sent, once it is known to be one JSON-RPC message.
#[derive(Debug)]
pub enum Message {
    /// A request: it gets an answer.
    Request {
        /// Its id (a string or a number).
        id: Value,
        /// The method.
        method: String,
        /// Its params (`null` when absent).
        params: Value,
    },
    /// A notification: no answer.
    Notification {
        /// The method.
        method: String,
        /// Its params (`null` when absent).
        params: Value,
    },
}

impl Message {
    /// Read one message, or the refusal of a body that is not one.
    pub fn parse(body: &[u8]) -> Result<Message, Refusal> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| Refusal::new(Reason::BadEncoding, format!("the body is not JSON: {e}")))?;
        let Value::Object(mut object) = value else {
            return Err(Refusal::new(
                Reason::Malformed,
                "send one JSON-RPC message per request: batches were removed from MCP in 2025-06-18",
            ));
        };
        if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(Refusal::new(
                Reason::Malformed,
                "not a JSON-RPC 2.0 message: \"jsonrpc\": \"2.0\" is missing",
            ));
        }
        let Some(method) = object
            .get("method")
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            return Err(Refusal::new(
                Reason::Malformed,
                "the gateway sends clients no requests, so it takes no responses: send a request with a \"method\"",
            ));
        };
        let params = object.remove("params").unwrap_or(Value::Null);
        if !(params.is_null() || params.is_object()) {
            return Err(Refusal::new(
                Reason::Malformed,
                "\"params\" must be an object",
            ));
        }
        match object.remove("id") {
            None => Ok(Message::Notification { method, params }),
            Some(id @ (Value::String(_) | Value::Number(_))) => {
                Ok(Message::Request { id, method, params })
            }
            Some(_) => Err(Refusal::new(
                Reason::Malformed,
                "a request id must be a string or a number",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_their_json_rpc_codes() {
        let table = [
            (Reason::Unauthenticated, -32001),
            (Reason::Forbidden, -32003),
            (Reason::ApprovalDenied, -32003),
            (Reason::ApprovalExpired, -32004),
            (Reason::Withdrawn, -32800),
            (Reason::Unsupported, -32601),
            (Reason::Malformed, -32600),
            (Reason::BadEncoding, -32700),
            (Reason::TooLarge, -32600),
            (Reason::NotFound, -32602),
            (Reason::DependencyUnavailable, -32002),
            (Reason::AuditUnavailable, -32002),
        ];
        assert_eq!(table.len(), Reason::ALL.len());
        for (reason, expected) in table {
            let answer = super::refusal(&json!(7), &Refusal::new(reason, "why"));
            assert_eq!(answer["error"]["code"], expected, "{reason}");
            assert_eq!(answer["error"]["data"]["reason"], reason.as_str());
            assert_eq!(answer["id"], 7);
        }
    }

    #[test]
    fn only_single_requests_and_notifications_are_messages() {
        let request = Message::parse(br#"{"jsonrpc":"2.0","id":"a","method":"tools/list"}"#);
        assert!(
            matches!(request, Ok(Message::Request { ref method, .. }) if method == "tools/list")
        );
        let note = Message::parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert!(matches!(note, Ok(Message::Notification { .. })));
        for (body, reason) in [
            (&b"{"[..], Reason::BadEncoding),
            (b"\xff\xfe", Reason::BadEncoding),
            (
                br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
                Reason::Malformed,
            ),
            (br#"{"id":1,"method":"ping"}"#, Reason::Malformed),
            (
                br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
                Reason::Malformed,
            ),
            (
                br#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#,
                Reason::Malformed,
            ),
            (
                br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}"#,
                Reason::Malformed,
            ),
        ] {
            let refused = Message::parse(body).expect_err("not a message");
            assert_eq!(refused.reason, reason, "{}", String::from_utf8_lossy(body));
        }
    }
}
