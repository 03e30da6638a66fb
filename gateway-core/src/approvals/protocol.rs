//! The approval protocol's messages (version 1), shared by the WebSocket
//! and HTTP endpoints. `docs/approvals.md` describes them and
//! `docs/approvals-v1.schema.json` is their JSON Schema; a test checks the
//! two agree on every message type.

use serde::{Deserialize, Serialize};
use ts_rs::TS;

use super::Requester;

/// The protocol version this gateway speaks.
pub const VERSION: u32 = 1;

/// The WebSocket subprotocol name.
pub const SUBPROTOCOL: &str = "tollgate.approvals.v1";

/// A request as approvers see it. Texts are masked for the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct RequestView {
    /// The request id (`ap_...`).
    pub id: String,
    /// `pending`, `approved`, `denied`, `expired` or `withdrawn`.
    pub state: String,
    /// Who asks.
    pub requester: Requester,
    /// The requester's address.
    pub origin: String,
    /// The requester's session (its recording id).
    pub session: Option<String>,
    /// The connection.
    pub connection: String,
    /// The statement, literals replaced by `$n`.
    pub statement: String,
    /// Kinds of access (`read`, `copy_out` ...).
    pub actions: Vec<String>,
    /// The accesses that need approval (what a grant covers).
    pub accesses: Vec<String>,
    /// Every table and column the statement touches.
    pub resources: Vec<String>,
    /// Those of `resources` that hold cardholder data (absent before 0.2).
    #[serde(default)]
    pub cardholder_resources: Vec<String>,
    /// It touches cardholder data.
    pub cardholder: bool,
    /// Rows the database estimates the statement returns, when known.
    #[ts(type = "number | null")]
    pub row_estimate: Option<i64>,
    /// The policy that holds it.
    pub policy: String,
    /// That policy's reason.
    pub policy_reason: String,
    /// The requester's own reason.
    pub reason: Option<String>,
    /// When it was asked (RFC 3339).
    pub requested_at: String,
    /// The approvers whose consoles were sent it when it was asked (absent before 0.2).
    #[serde(default)]
    pub notified: Vec<String>,
    /// When it expires if nobody decides.
    pub expires_at: String,
    /// Seconds left (0 once decided).
    #[ts(type = "number")]
    pub expires_in_secs: u64,
    /// Distinct approvers needed.
    pub approvals_needed: u32,
    /// Approving votes so far.
    pub approvals: Vec<Vote>,
    /// Who decided (the last approver, or the one who denied).
    pub decided_by: Option<String>,
    /// Their reason.
    pub decision_reason: Option<String>,
    /// When it was decided, expired or withdrawn.
    pub decided_at: Option<String>,
    /// The window grant an approval made, if any.
    pub grant: Option<GrantView>,
}

impl RequestView {
    /// With the time left as of now.
    pub(super) fn refreshed(&self, expires: std::time::Instant) -> RequestView {
        let mut view = self.clone();
        if view.state == "pending" {
            view.expires_in_secs = expires
                .saturating_duration_since(std::time::Instant::now())
                .as_secs();
        }
        view
    }
}

/// One approver's approving vote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct Vote {
    /// The approver's subject.
    pub approver: String,
    /// The approver's issuer.
    pub issuer: String,
    /// Why.
    pub reason: String,
    /// When (RFC 3339).
    pub at: String,
    /// The window asked for, in seconds (none: one-time).
    #[ts(type = "number | null")]
    pub window_secs: Option<u64>,
}

/// A window grant in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
pub struct GrantView {
    /// The grant id (`gr_...`).
    pub id: String,
    /// The request that made it.
    pub request: String,
    /// Whom it lets through.
    pub requester: Requester,
    /// Where.
    pub connection: String,
    /// Which accesses.
    pub accesses: Vec<String>,
    /// Who approved it.
    pub approved_by: Vec<String>,
    /// Approvers the request needed (the grant covers requests that need at most this many).
    pub approvals_needed: u32,
    /// When (RFC 3339).
    pub granted_at: String,
    /// Until when.
    pub until: String,
    /// Seconds left.
    #[ts(type = "number")]
    pub remaining_secs: u64,
}

impl GrantView {
    pub(super) fn refreshed(&self, until: std::time::Instant) -> GrantView {
        let mut view = self.clone();
        view.remaining_secs = until
            .saturating_duration_since(std::time::Instant::now())
            .as_secs();
        view
    }
}

/// Something that happened to a request or grant.
#[derive(Debug, Clone)]
pub enum ApprovalEvent {
    /// A request is held.
    Requested(RequestView),
    /// An approver voted; more approvals are needed.
    Voted(RequestView),
    /// Approved or denied.
    Decided(RequestView),
    /// Nobody decided in time.
    Expired(RequestView),
    /// The requester withdrew it.
    Withdrawn(RequestView),
    /// A window grant was revoked.
    GrantRevoked(GrantView),
}

impl ApprovalEvent {
    /// The connection it concerns (consoles see only their connections).
    pub fn connection(&self) -> &str {
        match self {
            ApprovalEvent::Requested(v)
            | ApprovalEvent::Voted(v)
            | ApprovalEvent::Decided(v)
            | ApprovalEvent::Expired(v)
            | ApprovalEvent::Withdrawn(v) => &v.connection,
            ApprovalEvent::GrantRevoked(g) => &g.connection,
        }
    }

    /// As a server message.
    pub fn message(&self) -> ServerMessage {
        let request = |view: &RequestView| Box::new(view.clone());
        match self {
            ApprovalEvent::Requested(view) => ServerMessage::Requested {
                request: request(view),
            },
            ApprovalEvent::Voted(view) => ServerMessage::Voted {
                request: request(view),
            },
            ApprovalEvent::Decided(view) => ServerMessage::Decided {
                request: request(view),
            },
            ApprovalEvent::Expired(view) => ServerMessage::Expired {
                request: request(view),
            },
            ApprovalEvent::Withdrawn(view) => ServerMessage::Withdrawn {
                request: request(view),
            },
            ApprovalEvent::GrantRevoked(grant) => ServerMessage::GrantRevoked {
                grant: Box::new(grant.clone()),
            },
        }
    }
}

/// What a console sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// The approver's access token, when the upgrade request carried no
    /// `Authorization` header (browsers cannot set one). First message only.
    Auth {
        /// An OIDC access token.
        token: String,
    },
    /// Approve a request.
    Approve {
        /// The request id.
        id: String,
        /// Why.
        reason: String,
        /// Approve for this many seconds instead of once.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[ts(type = "number | null", optional)]
        window_secs: Option<u64>,
        /// Echoed in the answer.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        #[ts(optional)]
        reference: Option<String>,
    },
    /// Deny a request.
    Deny {
        /// The request id.
        id: String,
        /// Why (the requester is told).
        reason: String,
        /// Echoed in the answer.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        #[ts(optional)]
        reference: Option<String>,
    },
    /// Revoke a window grant.
    Revoke {
        /// The grant id.
        grant: String,
        /// Why.
        reason: String,
        /// Echoed in the answer.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        #[ts(optional)]
        reference: Option<String>,
    },
    /// Ask for a fresh snapshot.
    Snapshot {
        /// Echoed in the answer.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        #[ts(optional)]
        reference: Option<String>,
    },
    /// Keep-alive.
    Ping {
        /// Echoed in the answer.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        #[ts(optional)]
        reference: Option<String>,
    },
}

/// What the gateway sends a console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// First message after authentication.
    Hello {
        /// Protocol version.
        version: u32,
        /// Who is connected (the token's subject).
        approver: String,
        /// The token's issuer (absent before 0.2).
        #[serde(default)]
        issuer: String,
        /// The connections whose requests this approver sees and decides (absent before 0.2).
        #[serde(default)]
        connections: Vec<String>,
        /// When the approver's token expires (RFC 3339); the connection
        /// closes then.
        token_expires_at: String,
    },
    /// Pending requests, grants in force and recent decisions.
    Snapshot {
        /// Requests: pending first (oldest first), then recently decided.
        requests: Vec<RequestView>,
        /// Grants in force.
        grants: Vec<GrantView>,
        /// Echo of the client's `ref`.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        #[ts(optional)]
        reference: Option<String>,
    },
    /// A request is held.
    Requested {
        /// It.
        request: Box<RequestView>,
    },
    /// An approver voted; more approvals are needed.
    Voted {
        /// It.
        request: Box<RequestView>,
    },
    /// Approved or denied.
    Decided {
        /// It.
        request: Box<RequestView>,
    },
    /// Nobody decided in time.
    Expired {
        /// It.
        request: Box<RequestView>,
    },
    /// The requester withdrew it.
    Withdrawn {
        /// It.
        request: Box<RequestView>,
    },
    /// A window grant was revoked.
    GrantRevoked {
        /// It.
        grant: Box<GrantView>,
    },
    /// The client's decision or revocation was taken.
    Ack {
        /// Echo of the client's `ref`.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        #[ts(optional)]
        reference: Option<String>,
        /// The request as it now stands (after approve/deny).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[ts(optional)]
        request: Option<Box<RequestView>>,
        /// The grant (after revoke).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[ts(optional)]
        grant: Option<Box<GrantView>>,
    },
    /// Answer to a ping.
    Pong {
        /// Echo of the client's `ref`.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        #[ts(optional)]
        reference: Option<String>,
    },
    /// Something the client sent could not be done.
    Error {
        /// A stable code (`bad_message`, `not_found`, `self_approval` ...).
        code: String,
        /// What is wrong and what to do.
        message: String,
        /// Echo of the client's `ref`, when it could be read.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        #[ts(optional)]
        reference: Option<String>,
    },
}

impl ServerMessage {
    /// As JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"the gateway could not encode a message"}"#
                .into()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::{Value, json};

    use super::*;
    use crate::identity::PrincipalKind;

    const SCHEMA: &str = include_str!("../../../docs/approvals-v1.schema.json");

    fn schema() -> Value {
        serde_json::from_str(SCHEMA).expect("the schema is JSON")
    }

    fn types_of(variants: &Value) -> Vec<(String, Value)> {
        variants
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                let kind = v["properties"]["type"]["const"]
                    .as_str()
                    .expect("every message has a const type")
                    .to_string();
                (kind, v.clone())
            })
            .collect()
    }

    fn request() -> RequestView {
        RequestView {
            id: "ap_x".into(),
            state: "pending".into(),
            requester: Requester {
                subject: "agent-7".into(),
                issuer: "https://issuer".into(),
                groups: vec!["agents".into()],
                mfa: false,
                kind: PrincipalKind::Agent,
            },
            origin: "127.0.0.1".into(),
            session: None,
            connection: "payments".into(),
            statement: "COPY payments TO STDOUT".into(),
            actions: vec![],
            accesses: vec![],
            resources: vec![],
            cardholder_resources: vec![],
            cardholder: true,
            row_estimate: None,
            policy: "p".into(),
            policy_reason: "r".into(),
            reason: None,
            requested_at: "t".into(),
            notified: vec![],
            expires_at: "t".into(),
            expires_in_secs: 1,
            approvals_needed: 1,
            approvals: vec![],
            decided_by: None,
            decision_reason: None,
            decided_at: None,
            grant: None,
        }
    }

    fn grant() -> GrantView {
        GrantView {
            id: "gr_x".into(),
            request: "ap_x".into(),
            requester: request().requester,
            connection: "payments".into(),
            accesses: vec![],
            approved_by: vec![],
            approvals_needed: 1,
            granted_at: "t".into(),
            until: "t".into(),
            remaining_secs: 1,
        }
    }

    fn keys(value: &Value) -> BTreeSet<String> {
        value.as_object().unwrap().keys().cloned().collect()
    }

    fn required(schema: &Value, def: &str) -> BTreeSet<String> {
        schema["$defs"][def]["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn every_client_message_in_the_schema_is_understood_and_extra_fields_are_refused() {
        let schema = schema();
        let variants = types_of(&schema["$defs"]["ClientMessage"]["oneOf"]);
        assert_eq!(variants.len(), 6);
        for (kind, variant) in variants {
            let mut sample = serde_json::Map::new();
            for field in variant["required"].as_array().unwrap() {
                let field = field.as_str().unwrap();
                let value = if field == "type" {
                    json!(kind)
                } else {
                    json!("ap_x")
                };
                sample.insert(field.into(), value);
            }
            let sample = Value::Object(sample);
            serde_json::from_value::<ClientMessage>(sample.clone())
                .unwrap_or_else(|e| panic!("{kind}: {e}"));
            let mut extra = sample;
            extra["surprise"] = json!(1);
            assert!(
                serde_json::from_value::<ClientMessage>(extra).is_err(),
                "{kind}"
            );
        }
    }

    #[test]
    fn every_server_message_has_its_place_in_the_schema() {
        let schema = schema();
        let listed: BTreeSet<String> = types_of(&schema["$defs"]["ServerMessage"]["oneOf"])
            .into_iter()
            .map(|(kind, _)| kind)
            .collect();
        let (request, grant) = (request(), grant());
        let boxed = || Box::new(request.clone());
        let messages = [
            ServerMessage::Hello {
                version: VERSION,
                approver: "olga".into(),
                issuer: "https://issuer".into(),
                connections: vec!["payments".into()],
                token_expires_at: "t".into(),
            },
            ServerMessage::Snapshot {
                requests: vec![],
                grants: vec![],
                reference: None,
            },
            ServerMessage::Requested { request: boxed() },
            ServerMessage::Voted { request: boxed() },
            ServerMessage::Decided { request: boxed() },
            ServerMessage::Expired { request: boxed() },
            ServerMessage::Withdrawn { request: boxed() },
            ServerMessage::GrantRevoked {
                grant: Box::new(grant.clone()),
            },
            ServerMessage::Ack {
                reference: None,
                request: None,
                grant: None,
            },
            ServerMessage::Pong { reference: None },
            ServerMessage::Error {
                code: "bad_message".into(),
                message: "m".into(),
                reference: None,
            },
        ];
        for message in &messages {
            let again: ServerMessage = serde_json::from_str(&message.to_json()).unwrap();
            assert_eq!(&again, message, "every server message reads back as sent");
        }
        let sent: BTreeSet<String> = messages
            .iter()
            .map(|m| {
                let value: Value = serde_json::from_str(&m.to_json()).unwrap();
                value["type"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(sent, listed);
        assert_eq!(keys(&json!(request)), required(&schema, "Request"));
        assert_eq!(keys(&json!(grant)), required(&schema, "Grant"));
    }
}
