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
