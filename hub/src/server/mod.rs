//! The hub server: shared routing state, per-connection sessions, the TCP
//! listener and graceful shutdown.

pub(crate) mod claims;
mod connection;
mod hub;
mod listener;
pub mod metrics;
mod outbox;
pub mod reload;
mod session;
mod snapshot;
mod store;
mod writer;

/// Identifies a connection: slot index in the low 32 bits, generation in the high.
pub type ConnId = u64;

pub use connection::{serve_tcp, LineBuffer};
pub use hub::{
    new_instance_id, now_ms, Answer, ConnInfo, DeviceCounts, DeviceRecord, Hub, Identity, OpError,
    Origin, Transport, DEVICE_PAGE, HUB_PREFIXES,
};
pub use listener::{bind, check_descriptors, open_hub, serve, start, RunningHub, StartError};
pub use metrics::{Metrics, LOCK_BUCKETS_US};
pub use outbox::{Drain, Outbox, Push};
pub use session::{Flow, Session};
pub use snapshot::STEP_BUDGET;
pub use store::Retained;
pub use writer::{write_frames, Written};
