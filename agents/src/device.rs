//! One supervised task per device: connect, describe, poll, carry out
//! commands one at a time, and report everything to the hub link as updates.
//! A failing device only ever affects its own task.

use std::time::Duration;

use patchbay_drivers::{AnyDriver, Description, DeviceEvent, Driver, DriverError, State};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::config::DeviceConfig;

/// What a device task tells the hub link.
#[derive(Debug, Clone)]
pub enum Update {
    /// The device's description (retained as `dev/<id>/meta`).
    Meta(String, Value),
    /// Its state, with the correlation id of the command that caused it (retained as `dev/<id>/state`).
    State(String, Value, Option<String>),
    /// Reachable or not (retained as `dev/<id>/online`).
    Online(String, Value),
    /// An event from the device (`dev/<id>/event`).
    Event(String, Value),
}

/// A failed command: code and message, as sent in the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    /// `invalid_value`, `busy`, `offline`, `device_timeout`, `unsupported`, `device_error`.
    pub code: String,
    /// For people.
    pub message: String,
}

impl From<&DriverError> for CommandError {
    fn from(e: &DriverError) -> Self {
        CommandError {
            code: e.code().into(),
            message: e.to_string(),
        }
    }
}

/// A command for a device: desired settings and where to send the outcome.
pub struct Command {
    /// Desired settings.
    pub desired: Value,
    /// Correlation id.
    pub cid: Option<String>,
    /// Where the confirmed state or the error goes.
    pub reply: oneshot::Sender<Result<Value, CommandError>>,
}

/// Commands that may wait for one device; more are refused as busy.
pub const COMMAND_QUEUE: usize = 16;

fn online(is: bool, reason: Option<&str>) -> Value {
    json!({"online": is, "reason": reason, "since": patchbay_hub::server::now_ms()})
}

fn is_offline(e: &DriverError) -> bool {
    matches!(e.code(), "offline" | "device_timeout")
}

/// Runs one device until `shutdown` turns true.
pub async fn run(
    cfg: DeviceConfig,
    mut driver: AnyDriver,
    updates: mpsc::Sender<Update>,
    mut commands: mpsc::Receiver<Command>,
    reconnect_max: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let span = tracing::info_span!("device", id = %cfg.id);
    async move {
        let id = cfg.id.clone();
        let mut backoff = Backoff::new(Duration::from_millis(250), reconnect_max.max(cfg.poll));
        let mut reason: Option<String> = None;
        // Listed from the start, with what the configuration knows; the
        // device's own description replaces this once it answers.
        let configured = json!({
            "id": cfg.id, "name": cfg.name, "location": cfg.location, "driver": driver_name(&cfg),
            "manufacturer": "", "model": "", "info": {}, "transport": cfg.transport.target(),
            "poll_ms": cfg.poll.as_millis() as u64, "settings": [],
        });
        let _ = updates.send(Update::Meta(id.clone(), configured)).await;
        loop {
            // Connect phase: describe the device, or report why not and retry.
            let desc = match driver.describe().await {
                Ok(d) => d,
                Err(e) => {
                    let why = e.to_string();
                    if reason.as_deref() != Some(&why) {
                        tracing::warn!("device unreachable: {why}");
                        let _ = updates
                            .send(Update::Online(id.clone(), online(false, Some(&why))))
                            .await;
                    }
                    reason = Some(why.clone());
                    driver.disconnect();
                    let wait = backoff.next_delay();
                    let until = Instant::now() + wait;
                    // While offline, commands fail at once with the reason.
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep_until(until) => break,
                            _ = shutdown.changed() => return,
                            cmd = commands.recv() => match cmd {
                                Some(c) => {
                                    let _ = c.reply.send(Err(CommandError {
                                        code: "offline".into(),
                                        message: format!("device `{id}` is offline: {why}"),
                                    }));
                                }
                                None => return,
                            },
                        }
                    }
                    continue;
                }
            };
            backoff.reset();
            let _ = updates
                .send(Update::Meta(id.clone(), meta(&cfg, &desc)))
                .await;
            match serve(
                &cfg,
                &mut driver,
                &desc,
                &updates,
                &mut commands,
                &mut shutdown,
            )
            .await
            {
                Served::Shutdown => return,
                Served::Lost(why) => {
                    tracing::warn!("device lost: {why}");
                    let _ = updates
                        .send(Update::Online(id.clone(), online(false, Some(&why))))
                        .await;
                    reason = Some(why);
                    driver.disconnect();
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Applies settings, publishing the intermediate states the driver reports
/// (a projector warming up) with the command's correlation id.
async fn apply_reporting(
    driver: &mut AnyDriver,
    desired: &State,
    id: &str,
    cid: Option<&str>,
    last: &mut Option<State>,
    updates: &mpsc::Sender<Update>,
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
                    let mut state = last.clone().unwrap_or_default();
                    if state.get(&key) != Some(&value) {
                        state.insert(key, value);
                        let body = Value::Object(state.clone());
                        let _ = updates.send(Update::State(id.to_owned(), body, cid.map(str::to_owned))).await;
                        *last = Some(state);
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
    Lost(String),
}

fn driver_name(cfg: &DeviceConfig) -> &'static str {
    match cfg.driver {
        crate::config::DriverKind::Pjlink => "pjlink",
        crate::config::DriverKind::Escvp21 => "escvp21",
        crate::config::DriverKind::Line => "line",
    }
}

fn meta(cfg: &DeviceConfig, desc: &Description) -> Value {
    json!({
        "id": cfg.id, "name": cfg.name, "location": cfg.location, "driver": desc.driver,
        "manufacturer": desc.manufacturer, "model": desc.model, "info": desc.info,
        "transport": cfg.transport.target(), "poll_ms": cfg.poll.as_millis() as u64,
        "settings": desc.settings,
    })
}

async fn send_events(id: &str, events: Vec<DeviceEvent>, updates: &mpsc::Sender<Update>) {
    for e in events {
        let body = json!({"level": e.level, "code": e.code, "message": e.message, "time": patchbay_hub::server::now_ms()});
        let _ = updates.send(Update::Event(id.to_owned(), body)).await;
    }
}

/// The connected phase: poll on a timer, apply commands as they come.
async fn serve(
    cfg: &DeviceConfig,
    driver: &mut AnyDriver,
    desc: &Description,
    updates: &mpsc::Sender<Update>,
    commands: &mut mpsc::Receiver<Command>,
    shutdown: &mut watch::Receiver<bool>,
) -> Served {
    let id = &cfg.id;
    let mut last: Option<State> = None;
    let mut announced = false;
    let mut tick = tokio::time::interval(cfg.poll);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Served::Shutdown,
            _ = tick.tick() => {
                match driver.poll().await {
                    Ok(state) => {
                        if !announced {
                            tracing::info!("device online");
                            let _ = updates.send(Update::Online(id.clone(), online(true, None))).await;
                            announced = true;
                        }
                        if last.as_ref() != Some(&state) {
                            let _ = updates.send(Update::State(id.clone(), Value::Object(state.clone()), None)).await;
                            last = Some(state);
                        }
                    }
                    Err(e) if is_offline(&e) => return Served::Lost(e.to_string()),
                    Err(e) => tracing::warn!("poll failed: {e}"),
                }
                send_events(id, driver.take_events(), updates).await;
            }
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { return Served::Shutdown };
                let cid = cmd.cid.clone();
                tracing::info!(cid = cid.as_deref().unwrap_or(""), desired = %cmd.desired, "applying");
                let result = match desc.validate(&cmd.desired) {
                    Err(e) => Err(DriverError::from(e)),
                    Ok(()) => {
                        let desired = cmd.desired.as_object().cloned().unwrap_or_default();
                        apply_reporting(driver, &desired, id, cid.as_deref(), &mut last, updates).await
                    }
                };
                send_events(id, driver.take_events(), updates).await;
                match result {
                    Ok(state) => {
                        tracing::info!(cid = cid.as_deref().unwrap_or(""), "applied");
                        let body = Value::Object(state.clone());
                        let _ = updates.send(Update::State(id.clone(), body.clone(), cid)).await;
                        last = Some(state);
                        let _ = cmd.reply.send(Ok(body));
                    }
                    Err(e) => {
                        tracing::warn!(cid = cid.as_deref().unwrap_or(""), "command failed: {e}");
                        let _ = cmd.reply.send(Err(CommandError::from(&e)));
                        if is_offline(&e) {
                            return Served::Lost(e.to_string());
                        }
                    }
                }
            }
        }
    }
}
