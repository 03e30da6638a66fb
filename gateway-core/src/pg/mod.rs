//! The PostgreSQL protocol adapter: startup and TLS, token login, the
//! upstream handshake, cancel forwarding, the relay and its hook points. It
//! calls the shared stages (identity, policy, approvals, masking, recording,
//! upstream) through the contract in `stage`; none of them knows about it.
//! Design notes: `README.md` beside this file.

pub mod cancel;
pub mod catalog;
pub mod error;
mod executions;
pub mod frame;
pub mod guard;
pub mod hooks;
pub mod mask;
pub mod messages;
mod params;
pub mod record;
pub mod relay;
mod session;
pub mod settings;
pub mod shapes;
pub mod side;
pub mod sql;
pub mod startup;
pub mod upstream;

pub use error::PgError;
pub use session::{PgContext, serve_connection};
