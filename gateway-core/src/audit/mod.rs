//! The tamper-evident audit log: records appended as leaves of an RFC 6962
//! Merkle tree ([`tree`]), whose heads are published as C2SP checkpoints
//! signed with Ed25519 ([`note`]), so an auditor can verify an exported log
//! offline with nothing but the verifier key.
//!
//! Work in progress for the recording and audit issue: the tree, the signed
//! checkpoints and the durable group-committed store ([`log`]) are here;
//! recording, wiring into the relay and `tollgate verify` build on them.

pub mod log;
pub mod note;
pub mod tree;
