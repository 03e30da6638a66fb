//! Tollgate: an identity-aware Layer 7 gateway in front of PostgreSQL.
//!
//! The modules follow a session along the data path:
//! [`listener`] accepts and secures the connection, [`identity`] turns an
//! OIDC access token into an [`identity::Identity`], the protocol adapter
//! ([`pg`]) speaks the client's wire protocol and relays it through the
//! [`hooks`] that later stages (policy, approvals, masking, recording) attach
//! to, and [`upstream`] holds the connection catalog and the credentials that
//! only the gateway knows. [`recording`] keeps every session as frames and
//! every security event in the tamper-evident [`audit`] log; [`evidence`]
//! exports them for a QSA. [`devdb`] runs a throwaway PostgreSQL for demos
//! and tests; [`gateway`] wires the stages together.
#![forbid(unsafe_code)]

pub mod api;
pub mod approvals;
pub mod audit;
pub mod clock;
pub mod config;
pub mod dev;
pub mod devdb;
pub mod evidence;
pub mod gateway;
pub mod id;
pub mod identity;
pub mod listener;
pub mod masking;
pub mod mcp;
pub mod pg;
pub mod policy;
pub mod recent;
pub mod recording;
pub mod stage;
pub mod upstream;

pub use config::Config;
pub use gateway::{Gateway, RunningGateway};
