//! Everything Tollgate's desktop console does, with no Tauri in it: the
//! local gateway's lifecycle, the approvals client, demo traffic. The
//! desktop app (`src-tauri/`) only turns these calls into commands and the
//! [`Host`] events into window events; the tests drive the same calls with
//! a headless host against the real in-process gateway.
#![forbid(unsafe_code)]

pub mod api;
pub mod approvals;
pub mod console;
pub mod error;
pub mod host;
pub mod inbox;
pub mod local;
pub mod oidc;
pub mod remote;
pub mod tls;
pub mod traffic;
pub mod types;
pub mod vault;
mod viewing;

pub use console::Console;
pub use error::ConsoleError;
pub use host::{Host, Notice};
