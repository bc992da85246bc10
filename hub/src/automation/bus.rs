//! Automation's connection to the hub: the client library over the wire
//! protocol, like any controller's.
//!
//! Group and room commands, scene steps and waits, schedule state and alerts
//! all go through one [`Bus`]: a `patchbay_client` connection to the hub's
//! own wire port on loopback, made on first use and re-established by the
//! client library if it drops. It introduces itself with a token the hub
//! makes up at start and never shows (`automation`, admin role), which is
//! what lets it publish under the hub's own tags (`hub/`, `alert/`) and send
//! device commands `for` the operator who asked, so the journal records that
//! operator and not the automation connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use patchbay_client::{
    Body, Client, ClientBuilder, Error as ClientError, PublishOptions, RequestOptions, Subscription,
};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::journal::Who;
use crate::protocol::ErrorCode;
use crate::server::OpError;

/// The name automation's connection introduces itself with.
pub const NAME: &str = "automation";

/// How long automation waits to connect to its own hub.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where automation connects and with what token; holds the connection once made.
pub struct Link {
    token: String,
    addr: OnceLock<SocketAddr>,
    /// With `[tls]`: trusts exactly the hub's own certificate.
    tls: OnceLock<Arc<patchbay_client::tls::ClientConfig>>,
    bus: tokio::sync::Mutex<Option<Arc<Bus>>>,
    /// Rung when a schedule is defined or deleted through the API.
    schedules_changed: tokio::sync::Notify,
}

impl Default for Link {
    fn default() -> Self {
        Self::new()
    }
}

impl Link {
    /// A link with a fresh secret token (256 random bits).
    pub fn new() -> Self {
        let token = (0..4)
            .map(|_| crate::server::new_instance_id())
            .collect::<String>();
        Link {
            token,
            addr: OnceLock::new(),
            tls: OnceLock::new(),
            bus: tokio::sync::Mutex::new(None),
            schedules_changed: tokio::sync::Notify::new(),
        }
    }

    /// Tells the scheduler that schedules were defined or deleted.
    pub fn schedules_changed(&self) {
        self.schedules_changed.notify_one();
    }

    /// Waits until schedules are defined or deleted (a change made before
    /// the wait began is not lost).
    pub async fn schedule_change(&self) {
        self.schedules_changed.notified().await
    }

    /// Whether `token` is automation's own (compared in constant time).
    pub fn is_own_token(&self, token: &str) -> bool {
        let (a, b) = (self.token.as_bytes(), token.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
    }

    /// Tells the link where the hub's wire listener is (bound to `addr`).
    pub fn set_listener(&self, addr: SocketAddr) {
        let ip = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let _ = self.addr.set(SocketAddr::new(ip, addr.port()));
    }

    /// Connects over TLS with `config` (the hub's ports speak TLS).
    pub fn set_tls(&self, config: Arc<patchbay_client::tls::ClientConfig>) {
        let _ = self.tls.set(config);
    }

    /// The connection, made on first use.
    pub async fn bus(&self) -> Result<Arc<Bus>, OpError> {
        let mut bus = self.bus.lock().await;
        if let Some(b) = bus.as_ref() {
            return Ok(b.clone());
        }
        let client = self.client(NAME).await?;
        let b = Arc::new(Bus { client });
        *bus = Some(b.clone());
        Ok(b)
    }

    /// A new connection of the hub's own, named `name` (the MQTT bridge
    /// has its own, so its traffic does not queue behind automation's).
    pub async fn client(&self, name: &str) -> Result<Client, OpError> {
        self.client_with(name, |b| b).await
    }

    /// [`Link::client`] with the builder adjusted by `tune` (a bigger
    /// subscription queue for the cluster bridge).
    pub async fn client_with(
        &self,
        name: &str,
        tune: impl FnOnce(ClientBuilder) -> ClientBuilder,
    ) -> Result<Client, OpError> {
        let Some(addr) = self.addr.get() else {
            return Err(OpError::new(
                ErrorCode::Unavailable,
                "automation is not running: the hub serves no wire listener",
            ));
        };
        let mut builder = ClientBuilder::new(addr.to_string());
        if let Some(tls) = self.tls.get() {
            builder = builder.tls(tls.clone());
        }
        let client = tune(builder)
            .name(name)
            .token(self.token.clone())
            .connect_timeout(CONNECT_TIMEOUT)
            .reconnect(Duration::from_millis(50), Duration::from_secs(2))
            .connect()
            .await
            .map_err(|e| {
                OpError::new(
                    ErrorCode::Unavailable,
                    format!("{name} cannot reach its hub at {addr}: {e}"),
                )
            })?;
        tracing::info!(%addr, "{name} connected to the hub");
        Ok(client)
    }

    /// The connection for a long-running engine: retried every second until
    /// it is made, or `None` once `shutdown` turns true.
    pub async fn bus_until(
        &self,
        what: &str,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Option<Arc<Bus>> {
        loop {
            match self.bus().await {
                Ok(b) => return Some(b),
                Err(e) => tracing::warn!("{what} cannot reach the hub, retrying: {}", e.message),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return None,
            }
        }
    }

    /// Drops the connection (at shutdown); a later [`Link::bus`] makes a new one.
    pub async fn close(&self) {
        self.bus.lock().await.take();
    }
}

/// Automation's connected client.
pub struct Bus {
    client: Client,
}

/// Why a device command failed: the error object the hub or agent gave
/// (`code`, `message`, `detail`?, `outcome`?).
pub type CommandError = Value;

impl Bus {
    /// Sends `desired` to `dev/<device>/set` for `who` and waits for the
    /// confirmed state.
    pub async fn command(
        &self,
        device: &str,
        desired: &Value,
        timeout: Duration,
        cid: &str,
        who: &Who,
    ) -> Result<Value, CommandError> {
        let body = Body::json(desired).map_err(|e| error("invalid_value", e.to_string()))?;
        let who = serde_json::to_string(who).expect("a Who serializes");
        let who = RawValue::from_string(who).expect("valid JSON");
        let opts = RequestOptions {
            timeout: Some(timeout),
            cid: Some(cid),
            on_behalf: Some(&who),
        };
        match self
            .client
            .request_with(&format!("dev/{device}/set"), &body, opts)
            .await
        {
            Ok(reply) => Ok(reply.json().unwrap_or(Value::Null)),
            Err(ClientError::Hub(e)) => Err(serde_json::to_value(&e).unwrap_or(Value::Null)),
            Err(ClientError::Timeout(_)) => Err(error(
                "timeout",
                format!("no answer within {} ms", timeout.as_millis()),
            )),
            Err(e) => Err(error("unavailable", e.to_string())),
        }
    }

    /// Publishes `body` as the retained value of `tag` (`null` deletes it)
    /// and waits until the hub has it, so a reader right after sees it.
    pub async fn retain(&self, tag: &str, body: &Value) -> Result<(), ClientError> {
        let opts = PublishOptions {
            retain: true,
            cid: None,
        };
        self.client
            .publish_acked(tag, &Body::json(body)?, opts)
            .await
            .map(drop)
    }

    /// Subscribes to `patterns`, the retained values first.
    pub async fn watch(&self, patterns: &[&str]) -> Result<Subscription, ClientError> {
        self.client.subscribe_with_snapshot(patterns).await
    }
}

fn error(code: &str, message: String) -> Value {
    json!({"code": code, "message": message})
}
