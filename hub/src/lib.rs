//! patchbay hub: the tag router, retained store and request/reply broker that
//! agents, controllers and operators connect to, plus the wire protocol and
//! the async client they share.
//!
//! [`protocol`], [`tag`] and [`client`] have no server dependencies; agents
//! and the CLI use only those. [`server`] is the hub itself.

pub mod client;
pub mod config;
pub mod devices;
pub mod http;
pub mod protocol;
pub mod schema;
pub mod server;
pub mod tag;

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
