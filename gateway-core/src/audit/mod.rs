//! The tamper-evident audit log: records appended as leaves of an RFC 6962
//! Merkle tree ([`tree`]), whose heads are published as C2SP checkpoints
//! signed with Ed25519 ([`note`]), so an auditor can verify an exported log
//! offline with nothing but the verifier key ([`verify`]).
//!
//! [`log`] is the durable, group-committed store; [`event`] says what a
//! record holds (the PCI DSS 10.2.2 fields) and gives every stage one
//! handle on the log; [`siem`] streams it to SIEMs. `tollgate evidence`
//! (crate::evidence) exports what a QSA asks for.

pub mod event;
pub mod log;
pub mod note;
pub mod siem;
pub mod tree;
pub mod verify;
pub mod wal;
