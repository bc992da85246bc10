//! One task per device: connect, describe, poll, carry out commands, and
//! report everything to the device's mailbox. A failing device only ever
//! affects its own task; a task that panics is restarted by its supervisor
//! (`runtime.rs`).
//!
//! Commands go first: the task picks a waiting command over a due poll, so a
//! command never waits behind polling. A command with several settings is
//! applied one setting at a time in a fixed order: when it turns power on,
//! power first (the rest needs the projector on); when it turns power off,
//! power last (the rest cannot be set in standby); other settings in the
//! order of the device's schema. The first failure stops it, and the answer
//! says what was applied, what failed and why, and what was skipped. After
//! a command only the settings it touched are read back.

use std::sync::Arc;
use std::time::Duration;

use patchbay_client::backoff::Backoff;
use patchbay_client::device::DeviceErrorCode;
use patchbay_client::protocol::ErrorBody;
use patchbay_drivers::{AnyDriver, Description, DeviceEvent, Driver, DriverError, State};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use crate::config::DeviceConfig;
use crate::mailbox::Mailbox;

/// A command for a device: desired settings and where to send the outcome.
pub struct Command {
    /// Desired settings, a JSON object.
    pub desired: Value,
    /// Correlation id.
    pub cid: Option<String>,
    /// Where the confirmed state or the error goes.
    pub reply: oneshot::Sender<Result<Value, ErrorBody>>,
}

/// A device's command queue, shared with its supervisor so that it
/// outlives a task that panics.
pub type Commands = Arc<Mutex<mpsc::Receiver<Command>>>;

/// Commands that may wait for one device; more are refused as busy.
pub const COMMAND_QUEUE: usize = 16;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A `dev/<id>/online` body: reachable or not, why in words, and the detail.
pub fn online(is: bool, reason: Option<&str>, detail: Option<&str>) -> Value {
    json!({"online": is, "reason": reason, "detail": detail, "since": now_ms()})
}

/// The error a command gets while its device is unreachable.
pub fn offline_error(id: &str, reason: &str) -> ErrorBody {
    ErrorBody::new(
        DeviceErrorCode::Offline.as_str(),
        format!("device `{id}` is offline: {reason}"),
    )
}

fn is_offline(e: &DriverError) -> bool {
    matches!(
        e.code(),
        DeviceErrorCode::Offline | DeviceErrorCode::DeviceTimeout
    )
}

/// Runs one device until `shutdown` turns true.
pub async fn run(
    cfg: DeviceConfig,
    mut driver: AnyDriver,
    mailbox: Mailbox,
    commands: Commands,
    reconnect_max: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let span = tracing::info_span!("device", id = %cfg.id);
    async move {
        let mut commands = commands.lock().await;
        let id = cfg.id.clone();
        let mut backoff = Backoff::new(Duration::from_millis(250), reconnect_max.max(cfg.poll));
        // Listed from the start, with what the configuration knows; the
        // device's own description replaces this once it answers.
        let configured = json!({
            "id": cfg.id, "name": cfg.name, "location": cfg.location, "driver": cfg.driver_name(),
            "manufacturer": "", "model": "", "info": {}, "transport": cfg.transport.target(),
            "poll_ms": cfg.poll.as_millis() as u64, "settings": [],
        });
        mailbox.meta(configured);
        loop {
            // Connect phase: describe the device, or report why not.
            let why = match driver.describe().await {
                Ok(desc) => {
                    mailbox.meta(meta(&cfg, &desc));
                    match serve(
                        &cfg,
                        &mut driver,
                        desc,
                        &mailbox,
                        &mut commands,
                        &mut shutdown,
                        &mut backoff,
                    )
                    .await
                    {
                        Served::Shutdown => return,
                        Served::Lost(e) => e,
                    }
                }
                Err(e) => e,
            };
            tracing::warn!("device unreachable: {why}");
            mailbox.online(online(false, Some(&why.summary()), Some(&why.to_string())));
            driver.disconnect();
            // While offline, commands fail at once with the reason.
            let until = Instant::now() + backoff.next_delay();
            let reason = why.summary();
            if wait_offline(&id, &reason, until, &mut commands, &mut shutdown).await {
                return;
            }
        }
    }
    .instrument(span)
    .await
}

/// Waits until `until`, answering commands with the offline `reason`; true on shutdown.
pub async fn wait_offline(
    id: &str,
    reason: &str,
    until: Instant,
    commands: &mut mpsc::Receiver<Command>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return false,
            _ = shutdown.changed() => return true,
            cmd = commands.recv() => match cmd {
                Some(c) => {
                    let _ = c.reply.send(Err(offline_error(id, reason)));
                }
                None => return true,
            },
        }
    }
}

/// Applies settings, publishing the intermediate states the driver reports
/// (a projector warming up) with the command's correlation id.
async fn apply_reporting(
    driver: &mut AnyDriver,
    desired: &State,
    cid: Option<&str>,
    last: &mut State,
    mailbox: &Mailbox,
) -> Result<State, DriverError> {
    let (tx, mut rx) = mpsc::channel(16);
    driver.set_progress(Some(tx));
    let result = {
        let apply = driver.apply(desired);
        tokio::pin!(apply);
        loop {
            tokio::select! {
                r = &mut apply => break r,
                Some((key, value)) = rx.recv() => {
                    if last.get(&key) != Some(&value) {
                        last.insert(key, value);
                        mailbox.state(Value::Object(last.clone()), cid.map(str::to_owned));
                    }
                }
            }
        }
    };
    driver.set_progress(None);
    result
}

enum Served {
    Shutdown,
    Lost(DriverError),
}

fn meta(cfg: &DeviceConfig, desc: &Description) -> Value {
    json!({
        "id": cfg.id, "name": cfg.name, "location": cfg.location, "driver": desc.driver,
        "manufacturer": desc.manufacturer, "model": desc.model, "info": desc.info,
        "transport": cfg.transport.target(), "poll_ms": cfg.poll.as_millis() as u64,
        "settings": desc.settings,
    })
}

fn send_events(events: Vec<DeviceEvent>, mailbox: &Mailbox) {
    for e in events {
        mailbox.event(
            json!({"level": e.level, "code": e.code, "message": e.message, "time": now_ms()}),
        );
    }
}

/// The order settings are applied in: turning power on goes first,
/// turning it off last, everything else in the schema's order.
pub fn apply_order(desired: &Map<String, Value>, desc: &Description) -> Vec<String> {
    let mut order: Vec<String> = desc
        .settings
        .iter()
        .map(|s| s.name.clone())
        .filter(|n| n != "power" && desired.contains_key(n))
        .collect();
    // Names the schema does not list (refused by validation before this) keep their own order.
    let unlisted: Vec<String> = desired
        .keys()
        .filter(|k| *k != "power" && !order.contains(k))
        .cloned()
        .collect();
    order.extend(unlisted);
    match desired.get("power").and_then(Value::as_str) {
        Some("on") => order.insert(0, "power".into()),
        Some(_) => order.push("power".into()),
        None => {}
    }
    order
}

/// The connected phase: commands first, polls when none waits.
async fn serve(
    cfg: &DeviceConfig,
    driver: &mut AnyDriver,
    mut desc: Description,
    mailbox: &Mailbox,
    commands: &mut mpsc::Receiver<Command>,
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> Served {
    let mut last: Option<State> = None;
    let mut announced = false;
    let mut tick = tokio::time::interval(cfg.poll);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => return Served::Shutdown,
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { return Served::Shutdown };
                let mut state = last.clone().unwrap_or_default();
                let lost = command(cfg, driver, &mut desc, mailbox, &mut state, cmd).await;
                last = Some(state);
                send_events(driver.take_events(), mailbox);
                if let Some(e) = lost {
                    return Served::Lost(e);
                }
                // The state was just read back: the next poll can wait a full period.
                tick.reset();
            }
            _ = tick.tick() => {
                match driver.poll().await {
                    Ok(state) => {
                        if !announced {
                            tracing::info!("device online");
                            mailbox.online(online(true, None, None));
                            announced = true;
                            backoff.reset();
                        }
                        if last.as_ref() != Some(&state) {
                            mailbox.state(Value::Object(state.clone()), None);
                            last = Some(state);
                        }
                        redescribe_if_needed(cfg, driver, &mut desc, mailbox).await;
                    }
                    Err(e) if is_offline(&e) => return Served::Lost(e),
                    Err(e) => tracing::warn!("poll failed: {e}"),
                }
                send_events(driver.take_events(), mailbox);
            }
        }
    }
}

/// A device first seen unavailable (standby, warming) could not say what
/// it is; once it can, describe it again and publish the description.
async fn redescribe_if_needed(
    cfg: &DeviceConfig,
    driver: &mut AnyDriver,
    desc: &mut Description,
    mailbox: &Mailbox,
) {
    if !driver.needs_redescribe() {
        return;
    }
    match driver.describe().await {
        Ok(d) => {
            tracing::info!("device described again now that it is available");
            mailbox.meta(meta(cfg, &d));
            *desc = d;
        }
        Err(e) => tracing::debug!("describing again failed: {e}"),
    }
}

/// Carries out one command; returns the error if it lost the device.
async fn command(
    cfg: &DeviceConfig,
    driver: &mut AnyDriver,
    desc: &mut Description,
    mailbox: &Mailbox,
    state: &mut State,
    cmd: Command,
) -> Option<DriverError> {
    let cid = cmd.cid.clone();
    let c = cid.as_deref().unwrap_or("");
    tracing::info!(cid = c, desired = %cmd.desired, "applying");
    if let Err(e) = desc.validate(&cmd.desired) {
        let e = DriverError::from(e);
        let _ = cmd
            .reply
            .send(Err(ErrorBody::new(e.code().as_str(), e.summary())));
        return None;
    }
    let desired = cmd.desired.as_object().cloned().unwrap_or_default();
    let order = apply_order(&desired, desc);
    let mut applied = Map::new();
    let mut failure = None;
    for (i, key) in order.iter().enumerate() {
        let mut one = State::new();
        one.insert(key.clone(), desired[key].clone());
        // Power just came on: the full description (the input list) is readable now.
        redescribe_if_needed(cfg, driver, desc, mailbox).await;
        let valid = desc
            .validate(&Value::Object(one.clone()))
            .map_err(DriverError::from);
        let result = match valid {
            Ok(()) => apply_reporting(driver, &one, cid.as_deref(), state, mailbox).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(confirmed) => {
                for (k, v) in confirmed {
                    state.insert(k, v);
                }
                applied.insert(key.clone(), state.get(key).cloned().unwrap_or(Value::Null));
            }
            Err(e) => {
                failure = Some((i, e));
                break;
            }
        }
    }
    if !applied.is_empty() {
        mailbox.state(Value::Object(state.clone()), cid.clone());
    }
    let Some((i, e)) = failure else {
        tracing::info!(cid = c, "applied");
        let _ = cmd.reply.send(Ok(Value::Object(state.clone())));
        return None;
    };
    let key = &order[i];
    let skipped: Vec<&String> = order[i + 1..].iter().collect();
    tracing::warn!(cid = c, setting = %key, "command failed: {e}");
    let mut message = String::new();
    if !applied.is_empty() {
        let done: Vec<String> = applied
            .iter()
            .map(|(k, v)| format!("{k} is {}", text(v)))
            .collect();
        message.push_str(&format!("{}; ", done.join(", ")));
    }
    message.push_str(&format!("`{key}` could not be set: {}", e.summary()));
    if !skipped.is_empty() {
        let names: Vec<&str> = skipped.iter().map(|s| s.as_str()).collect();
        message.push_str(&format!(" (not attempted: {})", names.join(", ")));
    }
    let error = ErrorBody {
        code: e.code().as_str().into(),
        message: format!("{}: {message}", cfg.id),
        detail: Some(e.to_string()),
        outcome: Some(json!({
            "applied": applied,
            "failed": {key: {"code": e.code(), "message": e.summary()}},
            "skipped": skipped,
        })),
    };
    let _ = cmd.reply.send(Err(error));
    is_offline(&e).then_some(e)
}

/// A state value as people read it.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchbay_drivers::{Kind, Setting};

    fn desc() -> Description {
        Description {
            driver: "t".into(),
            manufacturer: String::new(),
            model: String::new(),
            info: Map::new(),
            settings: vec![
                Setting::new("input", "Input", Kind::Text, true),
                Setting::projector_power(),
                Setting::new("mute", "Mute", Kind::Bool, true),
            ],
        }
    }

    #[test]
    fn power_on_goes_first_and_power_off_last() {
        let on = json!({"mute": true, "input": "hdmi1", "power": "on"});
        assert_eq!(
            apply_order(on.as_object().unwrap(), &desc()),
            ["power", "input", "mute"]
        );
        let off = json!({"power": "off", "input": "hdmi1"});
        assert_eq!(
            apply_order(off.as_object().unwrap(), &desc()),
            ["input", "power"]
        );
    }
}
