//! patchbay-client: talk to a patchbay hub.
//!
//! - [`protocol`]: the wire protocol's frames, encoders and parser;
//! - [`tag`] and [`trie`]: tags, patterns and matching;
//! - [`schema`] and [`device`]: the device vocabulary (descriptions, settings
//!   schemas, reachability, error codes);
//! - [`Client`]: the async client;
//! - [`backoff`]: exponential backoff with full jitter;
//! - [`tls`]: TLS to the hub (trust roots, client certificates).
//!
//! A subscriber:
//!
//! ```no_run
//! use patchbay_client::ClientBuilder;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), patchbay_client::Error> {
//!     let client = ClientBuilder::new("127.0.0.1:7400").name("watcher").connect().await?;
//!     let mut states = client.subscribe_with_snapshot(["dev/+/state"]).await?;
//!     for m in states.snapshot().await? {
//!         println!("now   {} {}", m.tag(), m.body_str());
//!     }
//!     while let Some(m) = states.next().await {
//!         println!("later {} {}", m.tag(), m.body_str());
//!     }
//!     Ok(())
//! }
//! ```
//!
//! A device agent answering commands for one device:
//!
//! ```no_run
//! use patchbay_client::{device::DeviceErrorCode, Body, ClientBuilder, PublishOptions};
//! use serde_json::{json, Value};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), patchbay_client::Error> {
//!     let client = ClientBuilder::new("127.0.0.1:7400").name("lamp-agent").connect().await?;
//!     client.claim("dev/lamp-1").await?;
//!     let retain = PublishOptions { retain: true, cid: None };
//!     let meta = json!({"id": "lamp-1", "name": "Desk lamp", "settings": [
//!         {"name": "power", "label": "Power", "type": "enum", "values": ["on", "off"], "writable": true}]});
//!     client.publish_acked("dev/lamp-1/meta", &Body::json(&meta)?, retain.clone()).await?;
//!     client.publish_acked("dev/lamp-1/online", &Body::json(&json!({"online": true}))?, retain.clone()).await?;
//!     let requests = client.requests();
//!     while let Some(req) = requests.next().await {
//!         match req.json::<Value>()?.get("power").and_then(Value::as_str) {
//!             Some(p @ ("on" | "off")) => {
//!                 let state = Body::json(&json!({"power": p}))?;
//!                 let opts = PublishOptions { retain: true, cid: req.cid() };
//!                 client.publish_with("dev/lamp-1/state", &state, opts).await?;
//!                 req.respond(&state).await?;
//!             }
//!             _ => req.respond_error(DeviceErrorCode::InvalidValue, "power takes on or off").await?,
//!         }
//!     }
//!     Ok(())
//! }
//! ```

pub mod backoff;
pub mod client;
pub mod device;
pub mod protocol;
pub mod report;
pub mod schema;
pub mod tag;
pub mod tls;
pub mod trie;

pub use client::{
    connect, Body, Client, ClientBuilder, ClientEvent, Error, Message, PublishOptions, Reconnect,
    Reply, Request, RequestOptions, Requests, Status, Subscription, Welcome,
};
