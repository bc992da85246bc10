//! patchbay hub: the tag router, retained store and request/reply broker that
//! agents, controllers and operators connect to, and its HTTP side.
//!
//! The wire protocol, tags, the device vocabulary and the client library live
//! in `patchbay-client`, which has no server dependencies; they are
//! re-exported here for the hub's own use.

pub mod access;
pub mod automation;
pub mod cluster;
pub mod config;
pub mod http;
pub mod journal;
pub mod mdns;
pub mod mqtt;
pub mod server;
pub mod service;
pub mod tls;

pub use patchbay_client::device as devices;
pub use patchbay_client::{protocol, schema, tag, trie};

/// Sets up structured logs on stderr for the binaries: level from `RUST_LOG`
/// (default `info`), colours only on a terminal.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}
