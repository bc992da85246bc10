//! Alerts: rules on device state and events. An alert opens when its
//! condition holds for a device, may be acknowledged by an operator, and
//! closes when the condition clears. Open alerts are retained messages,
//! `alert/<rule>/<device>`; openings, acknowledgements and closings are in
//! the audit trail.
//!
//! The engine is a client like any other (automation's connection, see
//! `bus.rs`), subscribed with a snapshot to `dev/+/meta`, `dev/+/state`,
//! `dev/+/online`, `dev/+/event` and the open alerts, so it sees what every
//! console sees, in the same order, and carries on after a restart with the
//! alerts that were open.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;

use patchbay_client::Message;

use super::bus::Bus;
use super::groups::GroupSpec;
use crate::devices::DeviceView;
use crate::journal::Who;
use crate::server::{now_ms, Hub};

/// Where open alerts are retained.
pub const ALERTS_PREFIX: &str = "alert";

/// How often offline durations are checked.
const TICK: Duration = Duration::from_millis(250);

/// A rule. Exactly one of: `field` with `above` and/or `below`; `errors`;
/// `offline_minutes`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Words for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Only devices in this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// A numeric state field, e.g. `lamp_hours`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Open while the field is above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// Open while the field is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// Error kinds (`fan`, `lamp`, `temperature`...): open while the device's
    /// `errors.<kind>` is not `ok`, or from an event with that code until then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Open once a device has been offline this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_minutes: Option<f64>,
    /// Where to POST each opening, acknowledgement and closing as JSON
    /// (`{"event": "opened", "alert": {...}}`), with a timeout and retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

impl Rule {
    /// Refuses a rule that does not say one thing; `groups` are the known groups.
    pub fn check(&self, groups: &dyn Fn(&str) -> bool) -> Result<(), String> {
        if self.field.is_none() && (self.above.is_some() || self.below.is_some()) {
            return Err("`above` and `below` need a `field`".into());
        }
        let kinds = [
            self.field.is_some(),
            !self.errors.is_empty(),
            self.offline_minutes.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err("a rule has exactly one of `field` (with `above` or `below`), `errors` or `offline_minutes`".into());
        }
        if self.field.is_some() && self.above.is_none() && self.below.is_none() {
            return Err("`field` needs `above` or `below`".into());
        }
        if self.offline_minutes.is_some_and(|m| m.is_nan() || m <= 0.0) {
            return Err("`offline_minutes` must be greater than 0".into());
        }
        if let Some(g) = &self.group {
            if !groups(g) {
                return Err(format!("no group `{g}`"));
            }
        }
        if let Some(url) = &self.webhook {
            super::webhook::parse_url(url).map_err(|e| format!("`webhook`: {e}"))?;
        }
        Ok(())
    }

    /// Does the state hold the condition? `None`: the state does not say.
    fn state_holds(&self, state: &Value) -> Option<(bool, String)> {
        if let Some(f) = &self.field {
            let v = state.get(f)?.as_f64()?;
            let over = self.above.is_some_and(|a| v > a);
            let under = self.below.is_some_and(|b| v < b);
            let bound = match (over, self.above, self.below) {
                (true, Some(a), _) => format!("above {a}"),
                (_, _, Some(b)) => format!("below {b}"),
                _ => String::new(),
            };
            return Some((over || under, format!("{f} is {v}, {bound}")));
        }
        if !self.errors.is_empty() {
            let errors = state.get("errors")?.as_object()?;
            let bad: Vec<String> = self
                .errors
                .iter()
                .filter_map(|k| {
                    let v = errors.get(k)?.as_str()?;
                    (v != "ok").then(|| format!("{k} {v}"))
                })
                .collect();
            return Some((!bad.is_empty(), bad.join(", ")));
        }
        None
    }
}

/// An alert as it is retained at `alert/<rule>/<device>`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Alert {
    /// The rule.
    pub rule: String,
    /// The device.
    pub device: String,
    /// `open` or `acknowledged`.
    pub state: String,
    /// What holds, in words.
    pub message: String,
    /// When it opened (Unix ms).
    pub since: u64,
    /// Who acknowledged it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<String>,
    /// When (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<u64>,
}

fn tag(rule: &str, device: &str) -> String {
    format!("{ALERTS_PREFIX}/{rule}/{device}")
}

fn engine_who() -> Who {
    Who {
        client: super::bus::NAME.into(),
        transport: "internal".into(),
        ..Who::default()
    }
}

/// The open alerts (from their retained messages).
pub fn open_alerts(hub: &Hub) -> Vec<Alert> {
    let mut out = Vec::new();
    for (_, devices) in hub.retained_children(ALERTS_PREFIX) {
        for (_, r) in devices {
            if let Ok(a) = serde_json::from_str::<Alert>(r.body()) {
                out.push(a);
            }
        }
    }
    out
}

/// Acknowledges an open alert; returns it, or `None` if it is not open.
///
/// The hub records the acknowledgement on the retained alert; the engine
/// sees it like any subscriber and keeps it while the alert stays open.
pub fn acknowledge(hub: &Hub, rule: &str, device: &str, who: Who) -> Option<Alert> {
    let r = hub.retained(&tag(rule, device))?;
    let mut a: Alert = serde_json::from_str(r.body()).ok()?;
    let name = who.token.clone().unwrap_or_else(|| who.client.clone());
    a.state = "acknowledged".into();
    a.acknowledged_by = Some(name);
    a.acknowledged_at = Some(now_ms());
    let text = serde_json::to_string(&a).expect("an alert serializes");
    let raw = serde_json::value::RawValue::from_string(text).expect("valid JSON");
    hub.publish_as_hub(&tag(rule, device), &raw, true);
    hub.audit(
        "alert_acknowledged",
        who,
        tag(rule, device),
        a.message.clone(),
    );
    if let Some(url) = hub
        .config()
        .alerts
        .get(rule)
        .and_then(|r| r.webhook.clone())
    {
        super::webhook::Webhooks::new(&hub.config())
            .send(url, json!({"event": "acknowledged", "alert": a}));
    }
    Some(a)
}

/// What the engine knows of one device.
#[derive(Default)]
struct Device {
    meta: Option<Value>,
    /// The last state, to judge events by.
    state: Value,
    offline_since: Option<tokio::time::Instant>,
    offline_reason: String,
}

struct Engine {
    hub: Arc<Hub>,
    bus: Arc<Bus>,
    webhooks: super::webhook::Webhooks,
    rules: BTreeMap<String, Rule>,
    devices: HashMap<String, Device>,
    /// The alerts open now, by rule and device, as last published.
    open: BTreeMap<(String, String), Alert>,
}

impl Engine {
    fn applies(&self, rule: &Rule, id: &str) -> bool {
        let Some(g) = &rule.group else { return true };
        let Some((_, spec)) = super::groups::find(&self.hub, g) else {
            return false;
        };
        let meta = self.devices.get(id).and_then(|d| d.meta.clone());
        spec_matches(&spec, id, meta)
    }

    async fn publish(&self, rule: &str, device: &str, a: Option<&Alert>) {
        let body = a.map_or(Value::Null, |a| {
            serde_json::to_value(a).expect("serializes")
        });
        if let Err(e) = self.bus.retain(&tag(rule, device), &body).await {
            tracing::warn!(rule, device, "the alert could not be published: {e}");
        }
    }

    async fn open(&mut self, rule: &str, device: &str, message: String) {
        let key = (rule.to_owned(), device.to_owned());
        if let Some(a) = self.open.get_mut(&key) {
            // Already open: keep its acknowledgement, refresh the words.
            if a.message != message {
                a.message = message;
                let a = a.clone();
                self.publish(rule, device, Some(&a)).await;
            }
            return;
        }
        let a = Alert {
            rule: rule.to_owned(),
            device: device.to_owned(),
            state: "open".into(),
            message: message.clone(),
            since: now_ms(),
            acknowledged_by: None,
            acknowledged_at: None,
        };
        tracing::warn!(rule, device, "alert: {message}");
        self.publish(rule, device, Some(&a)).await;
        self.hub
            .audit("alert_opened", engine_who(), tag(rule, device), message);
        self.notify(rule, "opened", &a);
        self.open.insert(key, a);
    }

    async fn close(&mut self, rule: &str, device: &str) {
        let Some(a) = self.open.remove(&(rule.to_owned(), device.to_owned())) else {
            return;
        };
        tracing::info!(rule, device, "alert cleared");
        self.publish(rule, device, None).await;
        self.notify(rule, "closed", &a);
        self.hub.audit(
            "alert_closed",
            engine_who(),
            tag(rule, device),
            "the condition cleared".into(),
        );
    }

    /// Posts the alert to the rule's webhook, if it has one.
    fn notify(&self, rule: &str, event: &str, a: &Alert) {
        if let Some(url) = self.rules.get(rule).and_then(|r| r.webhook.clone()) {
            self.webhooks.send(url, json!({"event": event, "alert": a}));
        }
    }

    /// An alert's retained value, from before a restart (in the snapshot) or
    /// an acknowledgement (live).
    async fn on_alert(&mut self, rule: &str, device: &str, m: &Message) {
        let key = (rule.to_owned(), device.to_owned());
        let alert = m.json::<Alert>().ok();
        match alert {
            None => {
                self.open.remove(&key);
            }
            Some(_) if !self.rules.contains_key(rule) => {
                // Its rule is no longer configured: nothing would ever close it.
                tracing::info!(rule, device, "alert of a rule no longer configured removed");
                self.publish(rule, device, None).await;
            }
            Some(a) if m.is_snapshot() || self.open.contains_key(&key) => {
                self.open.insert(key, a);
            }
            // Acknowledged after it closed: it stays closed.
            Some(_) => self.publish(rule, device, None).await,
        }
    }

    async fn on_message(&mut self, m: &Message) {
        let tag = m.tag();
        if let Some(rest) = tag
            .strip_prefix(ALERTS_PREFIX)
            .and_then(|r| r.strip_prefix('/'))
        {
            if let Some((rule, device)) = rest.split_once('/') {
                self.on_alert(rule, device, m).await;
            }
            return;
        }
        let Some((id, part)) = crate::devices::split_tag(tag) else {
            return;
        };
        let id = id.to_owned();
        let body: Value = m.json().unwrap_or(Value::Null);
        match part {
            "meta" => {
                self.devices.entry(id).or_default().meta = Some(body);
            }
            "state" => {
                self.devices.entry(id.clone()).or_default().state = body.clone();
                let rules: Vec<(String, Rule)> = self
                    .rules
                    .iter()
                    .map(|(n, r)| (n.clone(), r.clone()))
                    .collect();
                for (name, rule) in rules {
                    if !self.applies(&rule, &id) {
                        continue;
                    }
                    match rule.state_holds(&body) {
                        Some((true, why)) => self.open(&name, &id, why).await,
                        Some((false, _)) => self.close(&name, &id).await,
                        None => {}
                    }
                }
            }
            // Unknown (`null`, after a hub restart) changes nothing: the
            // device is not known to be back.
            "online" if !matches!(body.get("online"), Some(Value::Bool(_))) => {}
            "online" => {
                let d = self.devices.entry(id.clone()).or_default();
                if body.get("online") == Some(&Value::Bool(false)) {
                    if d.offline_since.is_none() {
                        d.offline_since = Some(tokio::time::Instant::now());
                    }
                    d.offline_reason = body
                        .get("reason")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given")
                        .to_owned();
                } else {
                    d.offline_since = None;
                    let names: Vec<String> = self
                        .rules
                        .iter()
                        .filter(|(_, r)| r.offline_minutes.is_some())
                        .map(|(n, _)| n.clone())
                        .collect();
                    for n in names {
                        self.close(&n, &id).await;
                    }
                }
            }
            "event" => self.on_event(&id, &body).await,
            _ => {}
        }
    }

    /// Warnings and errors open alerts, unless the device's state already
    /// says that part is fine; an `info` event with the same code ("lamp
    /// back to normal") closes them.
    async fn on_event(&mut self, id: &str, body: &Value) {
        let level = body
            .get("level")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let code = body
            .get("code")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if level == "info" {
            let names: Vec<String> = self
                .rules
                .iter()
                .filter(|(_, r)| r.errors.contains(&code))
                .map(|(n, _)| n.clone())
                .collect();
            for n in names {
                self.close(&n, id).await;
            }
            return;
        }
        if !matches!(level, "warning" | "error") {
            return;
        }
        let fine = self
            .devices
            .get(id)
            .and_then(|d| {
                d.state
                    .get("errors")?
                    .get(&code)?
                    .as_str()
                    .map(|v| v == "ok")
            })
            .unwrap_or(false);
        if fine {
            return;
        }
        let message = body
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or(&code)
            .to_owned();
        let rules: Vec<(String, Rule)> = self
            .rules
            .iter()
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect();
        for (name, rule) in rules {
            if rule.errors.contains(&code) && self.applies(&rule, id) {
                self.open(&name, id, format!("{code}: {message}")).await;
            }
        }
    }

    async fn tick(&mut self) {
        let now = tokio::time::Instant::now();
        let mut due = Vec::new();
        for (name, rule) in &self.rules {
            let Some(minutes) = rule.offline_minutes else {
                continue;
            };
            let limit = Duration::from_secs_f64(minutes * 60.0);
            for (id, d) in &self.devices {
                if let Some(since) = d.offline_since {
                    if now.duration_since(since) >= limit && self.applies(rule, id) {
                        let why =
                            format!("offline for more than {minutes} min: {}", d.offline_reason);
                        due.push((name.clone(), id.clone(), why));
                    }
                }
            }
        }
        for (name, id, why) in due {
            self.open(&name, &id, why).await;
        }
    }
}

fn spec_matches(spec: &GroupSpec, id: &str, meta: Option<Value>) -> bool {
    spec.matches(&DeviceView {
        id: id.to_owned(),
        meta,
        state: None,
        online: None,
    })
}

/// Runs the alert rules until `shutdown` turns true: a client of the hub
/// through automation's connection, subscribed (with a snapshot) to the
/// devices and to the open alerts.
pub async fn run(hub: Arc<Hub>, mut shutdown: watch::Receiver<bool>) {
    let rules = hub.config().alerts.clone();
    if rules.is_empty() && hub.retained_children(ALERTS_PREFIX).is_empty() {
        return;
    }
    let patterns = [
        "alert/+/+",
        "dev/+/meta",
        "dev/+/state",
        "dev/+/online",
        "dev/+/event",
    ];
    let Some(bus) = hub
        .automation_link()
        .bus_until("the alert engine", &mut shutdown)
        .await
    else {
        return;
    };
    let mut sub = match bus.watch(&patterns).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("the alert engine cannot subscribe: {e}");
            return;
        }
    };
    let mut engine = Engine {
        webhooks: super::webhook::Webhooks::new(&hub.config()),
        hub,
        bus,
        rules,
        devices: HashMap::new(),
        open: BTreeMap::new(),
    };
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            m = sub.next() => match m {
                Some(m) => engine.on_message(&m).await,
                None => break,
            },
            _ = tick.tick() => engine.tick().await,
            _ = shutdown.changed() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(t: &str) -> Rule {
        toml::from_str(t).unwrap()
    }

    #[test]
    fn rules_say_one_thing() {
        let known = |g: &str| g == "projectors";
        assert!(rule("field = 'lamp_hours'\nabove = 2000")
            .check(&known)
            .is_ok());
        assert!(rule("errors = ['fan', 'lamp']\ngroup = 'projectors'")
            .check(&known)
            .is_ok());
        assert!(rule("offline_minutes = 5").check(&known).is_ok());
        let err = |t: &str| rule(t).check(&known).unwrap_err();
        assert!(err("field = 'lamp_hours'").contains("`above` or `below`"));
        assert!(err("above = 3").contains("need a `field`"));
        assert!(err("offline_minutes = 5\nerrors = ['fan']").contains("exactly one"));
        assert!(err("offline_minutes = 0").contains("greater than 0"));
        assert!(err("offline_minutes = 1\ngroup = 'x'").contains("no group `x`"));
    }

    #[test]
    fn conditions_read_the_state() {
        let lamp = rule("field = 'lamp_hours'\nabove = 2000");
        assert!(lamp.state_holds(&json!({"lamp_hours": 2500})).unwrap().0);
        assert!(!lamp.state_holds(&json!({"lamp_hours": 1500})).unwrap().0);
        assert!(
            lamp.state_holds(&json!({"power": "on"})).is_none(),
            "silent when the state does not say"
        );
        let errors = rule("errors = ['fan', 'lamp']");
        let (holds, why) = errors
            .state_holds(&json!({"errors": {"fan": "ok", "lamp": "error"}}))
            .unwrap();
        assert!(holds);
        assert_eq!(why, "lamp error");
        assert!(
            !errors
                .state_holds(&json!({"errors": {"fan": "ok", "lamp": "ok"}}))
                .unwrap()
                .0
        );
    }
}
