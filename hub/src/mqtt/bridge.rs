//! The bridge's loop: hub messages out to the broker, broker commands in.
//!
//! Nothing here waits on the broker. What goes out is queued in
//! [`Outgoing`]: retained topics conflated to their latest payload (so the
//! queue holds at most a few topics per device, however long the broker is
//! away) and events in a bounded FIFO; the loop hands them to the MQTT
//! client as fast as it takes them. Every (re)connection to the broker
//! re-publishes everything retained from the bridge's own copy of the
//! devices, so a broker restarted without persistence is whole again.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use patchbay_client::{Body, Message, RequestOptions};
use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::Instrument;

use super::discovery::{self, Topics};
use super::{Broker, MqttConfig};
use crate::journal::Who;
use crate::schema::Setting;
use crate::server::{now_ms, Hub};

/// Events kept while the broker is away or slow; older ones are dropped.
const MAX_EVENTS: usize = 10_000;

/// Commands from MQTT under way at once; more get `too_many_requests`.
const MAX_COMMANDS: usize = 64;

/// Largest MQTT packet the bridge sends or takes; a bigger one from the
/// broker costs the connection (the MQTT client's rule), so it is generous.
const MAX_PACKET: usize = 16 * 1024 * 1024;

/// Largest command taken from MQTT; bigger ones get an error.
const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// Longest error text published, in bytes.
const MAX_ERROR_TEXT: usize = 512;

/// The id under the base topic that is the bridge's own (`<base>/bridge/state`).
const BRIDGE: &str = "bridge";

/// An error for `<base>/<id>/error`: texts cut short and a large `desired`
/// only described, so an error is never bigger than what caused it.
fn error_body(cid: &str, code: &str, message: &str, desired: Option<&Value>) -> String {
    let cut = |t: &str| {
        let mut end = t.len().min(MAX_ERROR_TEXT);
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        t[..end].to_owned()
    };
    let desired = desired.map(|d| {
        let text = d.to_string();
        if text.len() > MAX_ERROR_TEXT {
            json!(format!("({} bytes, not repeated)", text.len()))
        } else {
            d.clone()
        }
    });
    json!({"cid": cut(cid), "code": cut(code), "message": cut(message), "desired": desired})
        .to_string()
}

/// What the broker side tells the loop.
enum FromBroker {
    Connected,
    Lost(String),
    Publish(String, Bytes, bool),
}

/// What waits to be published: retained topics conflated, events in order.
#[derive(Default)]
struct Outgoing {
    order: VecDeque<String>,
    retained: HashMap<String, Vec<u8>>,
    events: VecDeque<(String, Vec<u8>)>,
    dropped_events: u64,
}

impl Outgoing {
    fn retain(&mut self, topic: String, payload: Vec<u8>) {
        if self.retained.insert(topic.clone(), payload).is_none() {
            self.order.push_back(topic);
        }
    }

    fn event(&mut self, topic: String, payload: Vec<u8>) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
            self.dropped_events += 1;
        }
        self.events.push_back((topic, payload));
    }

    fn is_empty(&self) -> bool {
        self.order.is_empty() && self.events.is_empty()
    }

    /// Hands queued messages to the MQTT client until it takes no more.
    fn drain(&mut self, mq: &AsyncClient) {
        while let Some(topic) = self.order.front() {
            let payload = self.retained.get(topic).cloned().unwrap_or_default();
            if mq
                .try_publish(topic.clone(), QoS::AtLeastOnce, true, payload)
                .is_err()
            {
                return;
            }
            let topic = self.order.pop_front().expect("front exists");
            self.retained.remove(&topic);
        }
        while let Some((topic, payload)) = self.events.front() {
            if mq
                .try_publish(topic.clone(), QoS::AtMostOnce, false, payload.clone())
                .is_err()
            {
                return;
            }
            self.events.pop_front();
        }
        if self.dropped_events > 0 {
            tracing::warn!(
                dropped = self.dropped_events,
                "device events dropped while the broker was away or slow"
            );
            self.dropped_events = 0;
        }
    }
}

/// What the bridge knows of one device.
#[derive(Default)]
struct Device {
    meta: Option<Value>,
    state: Option<Value>,
    online: Option<Value>,
    /// Discovery config topics published for it.
    configs: BTreeSet<String>,
}

impl Device {
    fn settings(&self) -> Vec<Setting> {
        self.meta
            .as_ref()
            .and_then(|m| m.get("settings"))
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .unwrap_or_default()
    }

    fn error_kinds(state: Option<&Value>) -> Vec<String> {
        state
            .and_then(|s| s.get("errors"))
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }
}

struct Bridge {
    topics: Topics,
    discovery: bool,
    mq: AsyncClient,
    hub: patchbay_client::Client,
    devices: BTreeMap<String, Device>,
    out: Outgoing,
    connected: bool,
    commands: Arc<Semaphore>,
    who: Who,
    cid_prefix: String,
    next_cid: u64,
    timeout: Duration,
    /// The warning about a device named `bridge` was logged.
    bridge_device_said: bool,
}

fn online_word(v: Option<&Value>) -> &'static str {
    match v.and_then(|v| v.get("online")) {
        Some(Value::Bool(true)) => "online",
        _ => "offline",
    }
}

/// What a stopping bridge takes off its broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Withdraw {
    /// The discovery configs.
    configs: bool,
    /// Every retained state and reachability, and the bridge's own state.
    retained: bool,
}

/// What the configuration `now` no longer publishes where `was` did.
fn withdrawn(was: &MqttConfig, now: Option<&MqttConfig>) -> Withdraw {
    match now {
        None => Withdraw {
            configs: was.discovery,
            retained: true,
        },
        Some(now) => {
            let elsewhere = now.url != was.url;
            Withdraw {
                configs: was.discovery
                    && (elsewhere
                        || !now.discovery
                        || now.discovery_prefix != was.discovery_prefix),
                retained: elsewhere || now.base_topic != was.base_topic,
            }
        }
    }
}

impl Bridge {
    /// The retained topics this bridge published that `what` takes away.
    fn topics_to_clear(&self, what: Withdraw) -> Vec<String> {
        let mut out = Vec::new();
        for (id, d) in &self.devices {
            if what.configs {
                out.extend(d.configs.iter().cloned());
            }
            if what.retained {
                out.push(self.topics.device(id, "state"));
                out.push(self.topics.device(id, "online"));
            }
        }
        if what.retained {
            out.push(self.topics.bridge_state());
        }
        out
    }

    /// Queues a device's discovery configs, removing the ones it no longer has.
    fn queue_configs(&mut self, id: &str) {
        let Some(d) = self.devices.get_mut(id) else {
            return;
        };
        let configs = match (&d.meta, self.discovery) {
            (Some(meta), true) => discovery::configs(&self.topics, id, meta, d.state.as_ref()),
            _ => Vec::new(),
        };
        let now: BTreeSet<String> = configs.iter().map(|(t, _)| t.clone()).collect();
        for gone in d.configs.difference(&now) {
            self.out.retain(gone.clone(), Vec::new());
        }
        for (topic, payload) in configs {
            self.out.retain(topic, payload.to_string().into_bytes());
        }
        d.configs = now;
    }

    /// Queues everything retained about one device.
    fn queue_device(&mut self, id: &str) {
        let Some(d) = self.devices.get(id) else {
            return;
        };
        if let Some(state) = &d.state {
            self.out.retain(
                self.topics.device(id, "state"),
                state.to_string().into_bytes(),
            );
        }
        let online = online_word(d.online.as_ref());
        self.out
            .retain(self.topics.device(id, "online"), online.as_bytes().to_vec());
        self.queue_configs(id);
    }

    /// Queues everything: after a (re)connection, or when Home Assistant starts.
    fn queue_all(&mut self) {
        let ids: Vec<String> = self.devices.keys().cloned().collect();
        for id in ids {
            self.queue_device(&id);
        }
    }

    fn on_hub(&mut self, m: &Message) {
        let Some((id, part)) = crate::devices::split_tag(m.tag()) else {
            return;
        };
        if id == BRIDGE {
            // Its topics would be the bridge's own state, which every
            // entity's availability reads.
            if part == "meta" && !self.bridge_device_said {
                self.bridge_device_said = true;
                tracing::warn!("a device with the id `bridge` is not bridged to MQTT: `{}/bridge/state` is the bridge's own; give the device another id", self.topics.base);
            }
            return;
        }
        let body: Value = m.json().unwrap_or(Value::Null);
        let id = id.to_owned();
        match part {
            "meta" if body.is_null() => {
                // The device is gone: take it off the broker.
                if let Some(d) = self.devices.remove(&id) {
                    for topic in d.configs {
                        self.out.retain(topic, Vec::new());
                    }
                    self.out
                        .retain(self.topics.device(&id, "state"), Vec::new());
                    self.out
                        .retain(self.topics.device(&id, "online"), Vec::new());
                }
            }
            "meta" => {
                self.devices.entry(id.clone()).or_default().meta = Some(body);
                self.queue_device(&id);
            }
            "state" => {
                let d = self.devices.entry(id.clone()).or_default();
                let kinds_changed =
                    Device::error_kinds(d.state.as_ref()) != Device::error_kinds(Some(&body));
                self.out.retain(
                    self.topics.device(&id, "state"),
                    body.to_string().into_bytes(),
                );
                d.state = (!body.is_null()).then_some(body);
                if kinds_changed {
                    self.queue_configs(&id);
                }
            }
            "online" => {
                let d = self.devices.entry(id.clone()).or_default();
                d.online = Some(body);
                let word = online_word(d.online.as_ref());
                self.out
                    .retain(self.topics.device(&id, "online"), word.as_bytes().to_vec());
            }
            "event" => {
                self.out.event(
                    self.topics.device(&id, "event"),
                    body.to_string().into_bytes(),
                );
            }
            _ => {}
        }
    }

    fn publish_error(
        &mut self,
        id: &str,
        cid: &str,
        code: &str,
        message: &str,
        desired: Option<&Value>,
    ) {
        tracing::debug!(device = id, cid, code, "MQTT command refused");
        let body = error_body(cid, code, message, desired);
        self.out
            .event(self.topics.device(id, "error"), body.into_bytes());
    }

    /// A discovery config the broker kept from before (sent when the
    /// bridge subscribes): one of patchbay's that no device here has any
    /// more (the device went while the bridge was away, or discovery was
    /// turned off) is cleared, as Zigbee2MQTT does.
    fn on_config(&mut self, topic: &str, payload: &[u8], retained: bool) {
        let ours = topic
            .split('/')
            .nth(2)
            .is_some_and(|node| node.starts_with("patchbay_"));
        if !retained || payload.is_empty() || !ours {
            return;
        }
        let wanted = self.discovery && self.devices.values().any(|d| d.configs.contains(topic));
        if !wanted {
            tracing::info!(%topic, "discovery config of a device no longer here cleared");
            self.out.retain(topic.to_owned(), Vec::new());
        }
    }

    /// A message from the broker: a command, or Home Assistant's status.
    fn on_broker(&mut self, topic: &str, payload: &[u8], retained: bool) {
        if topic == self.topics.ha_status() {
            if payload.trim_ascii().eq_ignore_ascii_case(b"online") {
                tracing::info!("Home Assistant (re)started: discovery published again");
                self.queue_all();
            }
            return;
        }
        if topic.starts_with(&format!("{}/", self.topics.prefix)) && topic.ends_with("/config") {
            return self.on_config(topic, payload, retained);
        }
        let Some(rest) = topic
            .strip_prefix(self.topics.base.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return;
        };
        let Some((id, what)) = rest.split_once('/') else {
            return;
        };
        if id == BRIDGE {
            return;
        }
        self.next_cid += 1;
        let cid = format!("{}-{}", self.cid_prefix, self.next_cid);
        let id = id.to_owned();
        let refuse =
            |b: &mut Self, message: &str| b.publish_error(&id, &cid, "bad_request", message, None);
        if retained {
            // It would run again at every reconnection, the broker's or the hub's.
            return refuse(self, "a retained command is not carried out: it would run again at every reconnection; publish commands without the retain flag");
        }
        if payload.len() > MAX_COMMAND_BYTES {
            let why = format!(
                "a command of {} bytes; at most {MAX_COMMAND_BYTES}",
                payload.len()
            );
            return refuse(self, &why);
        }
        let text = String::from_utf8_lossy(payload);
        let settings = self
            .devices
            .get(&id)
            .map(Device::settings)
            .unwrap_or_default();
        let desired = match what.strip_prefix("set") {
            Some("") => {
                match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    other => {
                        let why = match other {
                            Err(e) => format!(": {e}"),
                            Ok(_) => String::new(),
                        };
                        let why = format!("`set` takes a JSON object of settings, e.g. {{\"power\": \"on\"}}{why}");
                        return refuse(self, &why);
                    }
                }
            }
            Some(name) if name.len() > 1 && name.starts_with('/') && !name[1..].contains('/') => {
                let name = &name[1..];
                json!({ name: discovery::plain_value(&settings, name, &text) })
            }
            _ => return refuse(
                self,
                "commands go to `<id>/set` (a JSON object) or `<id>/set/<setting>` (a plain value)",
            ),
        };
        let Ok(permit) = self.commands.clone().try_acquire_owned() else {
            return self.publish_error(
                &id,
                &cid,
                "too_many_requests",
                &format!("{MAX_COMMANDS} MQTT commands are under way; try again"),
                Some(&desired),
            );
        };
        // Checked by the hub and the device's agent like any command, and
        // journaled with its outcome, refusals included.
        let (hub, mq, who, timeout) = (
            self.hub.clone(),
            self.mq.clone(),
            self.who.clone(),
            self.timeout,
        );
        let error_topic = self.topics.device(&id, "error");
        tokio::spawn(
            async move {
                let _permit = permit;
                let who = serde_json::value::RawValue::from_string(
                    serde_json::to_string(&who).expect("a Who serializes"),
                )
                .expect("valid JSON");
                let opts = RequestOptions {
                    timeout: Some(timeout),
                    cid: Some(&cid),
                    on_behalf: Some(&who),
                };
                let body = Body::from(&desired);
                let (code, message) = match hub
                    .request_with(&format!("dev/{id}/set"), &body, opts)
                    .await
                {
                    Ok(_) => return,
                    Err(patchbay_client::Error::Hub(e)) => (e.code, e.message),
                    Err(e) => ("unavailable".to_owned(), e.to_string()),
                };
                tracing::debug!(device = %id, cid, code = %code, "MQTT command failed");
                let body = error_body(&cid, &code, &message, Some(&desired));
                let _ = mq.publish(error_topic, QoS::AtMostOnce, false, body).await;
            }
            .in_current_span(),
        );
    }

    /// Subscribes to commands and Home Assistant's status, and queues everything.
    fn on_connected(&mut self) {
        self.connected = true;
        for topic in [
            format!("{}/+/set", self.topics.base),
            format!("{}/+/set/+", self.topics.base),
            self.topics.ha_status(),
            // Discovery configs on the broker, to clear those of devices gone.
            format!("{}/+/+/+/config", self.topics.prefix),
        ] {
            if let Err(e) = self.mq.try_subscribe(topic.clone(), QoS::AtLeastOnce) {
                tracing::warn!(%topic, "cannot subscribe: {e}");
            }
        }
        // The bridge's own state first, before whatever waited.
        if let Err(e) =
            self.mq
                .try_publish(self.topics.bridge_state(), QoS::AtLeastOnce, true, "online")
        {
            tracing::warn!("cannot publish the bridge's state: {e}");
        }
        self.queue_all();
    }
}

fn options(cfg: &MqttConfig, broker: &Broker, topics: &Topics) -> Result<MqttOptions, String> {
    let mut o = MqttOptions::new(cfg.client_id.clone(), broker.host.clone(), broker.port);
    if broker.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            cfg.tls()?,
        )));
    }
    o.set_keep_alive(Duration::from_secs(cfg.keep_alive_s));
    o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    o.set_clean_session(true);
    o.set_last_will(LastWill::new(
        topics.bridge_state(),
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(user) = &cfg.username {
        o.set_credentials(user.clone(), cfg.password.clone().unwrap_or_default());
    }
    Ok(o)
}

/// Runs the bridge until `shutdown` turns true.
pub async fn run(hub: Arc<Hub>, cfg: MqttConfig, mut shutdown: watch::Receiver<bool>) {
    let Ok(broker) = cfg.broker() else {
        return;
    };
    let peer = format!("{}:{}", broker.host, broker.port);
    let span = tracing::info_span!("mqtt", broker = %peer, tls = broker.tls);
    async move {
        let client = loop {
            match hub.automation_link().client("mqtt").await {
                Ok(c) => break c,
                Err(e) => tracing::warn!(
                    "the MQTT bridge cannot reach the hub, retrying: {}",
                    e.message
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        };
        let mut sub = match client
            .subscribe_with_snapshot(["dev/+/meta", "dev/+/state", "dev/+/online", "dev/+/event"])
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("the MQTT bridge cannot subscribe: {e}");
                return;
            }
        };
        let topics = Topics {
            base: cfg.base_topic.clone(),
            prefix: cfg.discovery_prefix.clone(),
        };
        let options = match options(&cfg, &broker, &topics) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!("the MQTT bridge cannot start: {e}");
                return;
            }
        };
        let (mq, mut eventloop) = AsyncClient::new(options, 1024);
        // Publish acknowledgements from the broker, counted for the goodbye.
        let acks = Arc::new((
            std::sync::atomic::AtomicU64::new(0),
            tokio::sync::Notify::new(),
        ));
        let broker_acks = acks.clone();
        let (tx, mut rx) = mpsc::channel(1024);
        let broker = tokio::spawn(
            async move {
                let mut backoff = Duration::from_millis(200);
                let mut said_goodbye = false;
                loop {
                    let sent = match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            backoff = Duration::from_millis(200);
                            tx.send(FromBroker::Connected).await
                        }
                        // During the goodbye nobody reads these (the broker echoes
                        // the clears back): keep polling until the DISCONNECT is out.
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let _ = tx
                                .send(FromBroker::Publish(p.topic, p.payload, p.retain))
                                .await;
                            Ok(())
                        }
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            broker_acks
                                .0
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            broker_acks.1.notify_waiters();
                            Ok(())
                        }
                        // The goodbye is out (rumqttc flushes a packet before
                        // reporting it); the broker closing the connection then
                        // says it took everything before it, so a bridge that
                        // replaces this one (same client id) cannot overtake it.
                        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                            said_goodbye = true;
                            Ok(())
                        }
                        Err(_) if said_goodbye => return,
                        Ok(_) => Ok(()),
                        Err(e) => {
                            let sent = tx.send(FromBroker::Lost(e.to_string())).await;
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                            sent
                        }
                    };
                    if sent.is_err() {
                        return;
                    }
                }
            }
            .in_current_span(),
        );
        let mut b = Bridge {
            topics,
            discovery: cfg.discovery,
            mq: mq.clone(),
            hub: client,
            devices: BTreeMap::new(),
            out: Outgoing::default(),
            connected: false,
            commands: Arc::new(Semaphore::new(MAX_COMMANDS)),
            who: Who {
                client: "mqtt".into(),
                transport: "mqtt".into(),
                peer: peer.clone(),
                ..Who::default()
            },
            cid_prefix: format!("mqtt-{:x}", now_ms()),
            next_cid: 0,
            timeout: Duration::from_millis(hub.config().request_timeout_ms),
            bridge_device_said: false,
        };
        // The hub's whole view first, before the broker's news is read, so
        // configs kept on the broker are judged against every device.
        match sub.snapshot().await {
            Ok(first) => first.iter().for_each(|m| b.on_hub(m)),
            Err(e) => tracing::warn!("the MQTT bridge's first view of the devices failed: {e}"),
        }
        let mut lost_said = false;
        let status = |connected: bool, error: Option<String>| {
            hub.set_mqtt_status(Some(super::MqttStatus {
                broker: peer.clone(),
                connected,
                since_ms: now_ms(),
                error,
            }));
        };
        status(false, Some("connecting".into()));
        loop {
            if b.connected {
                b.out.drain(&b.mq);
            }
            let waiting = b.connected && !b.out.is_empty();
            tokio::select! {
                m = sub.next() => match m {
                    Some(m) => b.on_hub(&m),
                    None => break,
                },
                e = rx.recv() => match e {
                    Some(FromBroker::Connected) => {
                        tracing::info!("connected to the broker");
                        status(true, None);
                        lost_said = false;
                        b.on_connected();
                    }
                    Some(FromBroker::Lost(why)) => {
                        if !lost_said {
                            tracing::warn!("lost the broker, reconnecting: {why}");
                            lost_said = true;
                            status(false, Some(why));
                        }
                        b.connected = false;
                    }
                    Some(FromBroker::Publish(topic, payload, retained)) => {
                        b.on_broker(&topic, &payload, retained)
                    }
                    None => break,
                },
                // The client's queue was full: try again shortly.
                _ = tokio::time::sleep(Duration::from_millis(10)), if waiting => {}
                _ = shutdown.changed() => break,
            }
        }
        hub.set_mqtt_status(None);
        // News the loop did not get to (a connection made just now) counts.
        while let Ok(e) = rx.try_recv() {
            match e {
                FromBroker::Connected => b.connected = true,
                FromBroker::Lost(_) => b.connected = false,
                FromBroker::Publish(..) => {}
            }
        }
        // Say goodbye properly: the will is for when this cannot happen.
        if b.connected {
            // A reload that removed the bridge, or moved what it published
            // (another broker, base topic or discovery prefix), takes that
            // off this broker; a hub that stops leaves it, marked offline.
            let left = withdrawn(&cfg, hub.config().mqtt.as_ref());
            let clear = b.topics_to_clear(left);
            tracing::debug!(topics = clear.len(), ?left, "saying goodbye to the broker");
            // Within the time a reload waits for the old bridge to stop.
            let goodbye = if clear.is_empty() { 1 } else { 4 };
            let _ = tokio::time::timeout(Duration::from_secs(goodbye), async {
                // Every clear acknowledged before the DISCONNECT, so none is lost with the connection.
                let want = acks.0.load(std::sync::atomic::Ordering::Relaxed) + clear.len() as u64;
                for topic in clear {
                    let _ = mq.publish(topic, QoS::AtLeastOnce, true, Vec::new()).await;
                }
                loop {
                    let acked = acks.1.notified();
                    if acks.0.load(std::sync::atomic::Ordering::Relaxed) >= want {
                        break;
                    }
                    acked.await;
                }
                if !left.retained {
                    let _ = mq
                        .publish(b.topics.bridge_state(), QoS::AtLeastOnce, true, "offline")
                        .await;
                }
                let _ = mq.disconnect().await;
            })
            .await;
            // Let the event loop send them; it ends once the DISCONNECT is out.
            drop(rx);
            let mut broker = broker;
            if tokio::time::timeout(Duration::from_secs(2), &mut broker)
                .await
                .is_err()
            {
                broker.abort();
            }
        } else {
            broker.abort();
        }
    }
    .instrument(span)
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_withdraws_what_the_new_configuration_no_longer_publishes() {
        let was = MqttConfig::default();
        let same = withdrawn(&was, Some(&was));
        assert_eq!(
            same,
            Withdraw::default(),
            "a stopping hub leaves everything"
        );
        let tuned = MqttConfig {
            keep_alive_s: 60,
            ..was.clone()
        };
        assert_eq!(withdrawn(&was, Some(&tuned)), Withdraw::default());
        let prefix = MqttConfig {
            discovery_prefix: "ha2".into(),
            ..was.clone()
        };
        assert_eq!(
            withdrawn(&was, Some(&prefix)),
            Withdraw {
                configs: true,
                retained: false
            }
        );
        let base = MqttConfig {
            base_topic: "av".into(),
            ..was.clone()
        };
        assert_eq!(
            withdrawn(&was, Some(&base)),
            Withdraw {
                configs: false,
                retained: true
            }
        );
        let elsewhere = MqttConfig {
            url: "mqtt://other:1883".into(),
            ..was.clone()
        };
        assert_eq!(
            withdrawn(&was, Some(&elsewhere)),
            Withdraw {
                configs: true,
                retained: true
            }
        );
        assert_eq!(
            withdrawn(&was, None),
            Withdraw {
                configs: true,
                retained: true
            }
        );
        let quiet = MqttConfig {
            discovery: false,
            ..was.clone()
        };
        assert!(!withdrawn(&quiet, None).configs);
    }
}
