//! The hub server: shared routing state, per-connection sessions, the TCP
//! listener and graceful shutdown.

mod connection;
mod hub;
mod listener;
mod metrics;
mod outbox;
mod router;
mod session;
mod store;

/// Identifies a connection: slot index in the low 32 bits, generation in the high.
pub type ConnId = u64;

pub use connection::{serve_tcp, LineBuffer};
pub use hub::{now_ms, Answer, ConnInfo, Hub, Identity, OpError};
pub use listener::{serve, start, RunningHub};
pub use metrics::Metrics;
pub use outbox::{Drain, Outbox, Push};
pub use session::{Flow, Session};
pub use store::Retained;
