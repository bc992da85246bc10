//! The Panasonic projector driver (NTCONTROL over TCP 1024).
//!
//! Not a profile: every command needs a connection of its own, opened
//! afresh, and in protect mode an MD5 digest of the user, the password and
//! the random value of that connection's greeting.

pub mod codec;

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::driver::{input_code, Progress, Transition};
use crate::lineio::LineIo;
use crate::transport::Transport;
use crate::DriverError;
use codec::Greeting;
use patchbay_client::schema::{Description, DeviceEvent, Kind, Setting, State};

/// Tunables for the Panasonic driver.
#[derive(Debug, Clone)]
pub struct PanasonicOptions {
    /// User name for protect mode (Panasonic ships `admin1`).
    pub user: String,
    /// Password for protect mode.
    pub password: Option<String>,
    /// Reply timeout for one command (greeting included).
    pub command_timeout: Duration,
    /// Longest a warm-up or cool-down may take before `apply` gives up.
    pub transition_timeout: Duration,
    /// How often to check power while waiting for a transition.
    pub transition_poll: Duration,
}

impl Default for PanasonicOptions {
    fn default() -> Self {
        PanasonicOptions {
            user: codec::DEFAULT_USER.into(),
            password: None,
            command_timeout: Duration::from_secs(5),
            transition_timeout: Duration::from_secs(120),
            transition_poll: Duration::from_millis(1000),
        }
    }
}

/// A Panasonic projector.
pub struct Panasonic {
    transport: Transport,
    opts: PanasonicOptions,
    /// Whether it answers the lamp status query (`Q$S`); laser models may not.
    lamp_status: Option<bool>,
    progress: Option<Progress>,
    events: Vec<DeviceEvent>,
}

impl Panasonic {
    /// A driver for the projector at `transport`.
    pub fn new(transport: Transport, opts: PanasonicOptions) -> Self {
        Panasonic {
            transport,
            opts,
            lamp_status: None,
            progress: None,
            events: Vec::new(),
        }
    }

    /// Reports power transitions seen while applying settings.
    pub fn set_progress(&mut self, progress: Option<Progress>) {
        self.progress = progress;
    }

    /// Nothing stays open between commands.
    pub fn disconnect(&mut self) {}

    /// Events noticed since the last call.
    pub fn take_events(&mut self) -> Vec<DeviceEvent> {
        std::mem::take(&mut self.events)
    }

    /// Sends one command on a connection of its own and returns the reply's data.
    pub async fn command(&mut self, cmd: &str) -> Result<String, DriverError> {
        let t = self.opts.command_timeout;
        let stream = self.transport.open().await?;
        let mut io = LineIo::new(stream, None);
        let greeting = io.read_until(b"\r", t, "NTCONTROL greeting").await?;
        let greeting = codec::parse_greeting(&String::from_utf8_lossy(&greeting))?;
        let digest = match greeting {
            Greeting::Open => None,
            Greeting::Protected(random) => {
                let password = self
                    .opts
                    .password
                    .as_deref()
                    .ok_or(DriverError::PasswordRequired)?;
                Some(codec::digest(&self.opts.user, password, &random))
            }
        };
        io.send(codec::command(digest.as_deref(), cmd).as_bytes())
            .await?;
        let reply = io.read_until(b"\r", t, cmd).await?;
        codec::parse_reply(&String::from_utf8_lossy(&reply), cmd)
    }

    /// A query refused in standby (or unknown to the model): `None` then.
    async fn optional(&mut self, cmd: &str) -> Result<Option<String>, DriverError> {
        match self.command(cmd).await {
            Ok(v) => Ok(Some(v)),
            Err(DriverError::Busy { .. } | DriverError::Unsupported(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Power, with warm-up and cool-down where the lamp status says so.
    async fn power(&mut self) -> Result<String, DriverError> {
        if self.lamp_status != Some(false) {
            match self.command("Q$S").await {
                Ok(s) => {
                    if let Some(p) = codec::parse_lamp_status(&s) {
                        self.lamp_status = Some(true);
                        return Ok(p.into());
                    }
                }
                Err(DriverError::Unsupported(_)) => self.lamp_status = Some(false),
                Err(e @ DriverError::Busy { .. }) if self.lamp_status == Some(true) => {
                    return Err(e)
                }
                Err(DriverError::Busy { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let data = self.command("QPW").await?;
        codec::parse_qpw(&data)
            .map(str::to_owned)
            .ok_or_else(|| DriverError::Protocol(format!("unknown power state {data:?}")))
    }

    /// Identifies the projector and returns its settings schema.
    pub async fn describe(&mut self) -> Result<Description, DriverError> {
        // Talking to it proves the address, the password and the projector.
        self.power().await?;
        let model = self.optional("QID").await?;
        let mut info = Map::new();
        info.insert("protocol".into(), json!("NTCONTROL"));
        Ok(Description {
            driver: "panasonic".into(),
            manufacturer: "Panasonic".into(),
            model: model
                .filter(|m| !m.trim().is_empty())
                .unwrap_or_else(|| "projector".into()),
            info,
            settings: vec![
                Setting::projector_power(),
                Setting::new(
                    "input",
                    "Input",
                    Kind::Enum {
                        values: codec::INPUTS.iter().map(|(id, _)| (*id).into()).collect(),
                        transitional: Vec::new(),
                    },
                    true,
                ),
                Setting::new("shutter", "Shutter closed", Kind::Bool, true),
                Setting::new("freeze", "Freeze", Kind::Bool, true),
                Setting::hours("lamp_hours", "Lamp hours"),
            ],
        })
    }

    async fn flag(&mut self, cmd: &str) -> Result<Option<bool>, DriverError> {
        Ok(self
            .optional(cmd)
            .await?
            .and_then(|v| codec::parse_flag(&v)))
    }

    async fn input(&mut self) -> Result<Option<String>, DriverError> {
        Ok(self.optional("QIN").await?.map(|c| codec::input_id(&c)))
    }

    /// Reads the whole current state.
    pub async fn poll(&mut self) -> Result<State, DriverError> {
        let mut state = State::new();
        let power = self.power().await?;
        let on = power == "on";
        state.insert("power".into(), json!(power));
        let input = if on { self.input().await? } else { None };
        state.insert("input".into(), json!(input));
        let shutter = if on { self.flag("QSH").await? } else { None };
        state.insert("shutter".into(), json!(shutter));
        let freeze = if on { self.flag("QFZ").await? } else { None };
        state.insert("freeze".into(), json!(freeze));
        let hours = self.optional("Q$L:1").await?;
        state.insert(
            "lamp_hours".into(),
            json!(hours.and_then(|h| h.trim().parse::<u64>().ok())),
        );
        Ok(state)
    }

    async fn settle(&mut self) -> Result<String, DriverError> {
        let mut transition = Transition::new(self.opts.transition_timeout);
        loop {
            let power = self.power().await?;
            if let Some(settled) = transition.observe(power, self.progress.as_ref()) {
                return settled;
            }
            tokio::time::sleep(self.opts.transition_poll).await;
        }
    }

    /// A set command; refused mid-transition, it waits the transition out and retries once.
    async fn set(&mut self, cmd: &str) -> Result<(), DriverError> {
        match self.command(cmd).await {
            Ok(_) => Ok(()),
            Err(DriverError::Busy { sent, .. }) => {
                let power = self.settle().await?;
                if power == "off" && !cmd.starts_with('P') {
                    return Err(DriverError::busy(
                        "the projector is in standby: power it on first",
                        sent,
                    ));
                }
                self.command(cmd).await.map(drop)
            }
            Err(e) => Err(e),
        }
    }

    /// Applies desired settings (power first) and returns the confirmed
    /// values read back from the projector.
    pub async fn apply(&mut self, desired: &State) -> Result<State, DriverError> {
        let mut confirmed = State::new();
        if let Some(power) = desired.get("power").and_then(Value::as_str) {
            let cmd = if power == "on" { "PON" } else { "POF" };
            self.set(cmd).await?;
            let now = self.settle().await?;
            if now != power {
                return Err(DriverError::DeviceFailure(format!(
                    "{cmd} (projector reports {now})"
                )));
            }
            confirmed = self.poll().await?;
        }
        if let Some(input) = desired.get("input").and_then(Value::as_str) {
            let code = input_code(codec::INPUTS.iter().copied(), input)?;
            self.set(&format!("IIS:{code}")).await?;
            confirmed.insert("input".into(), json!(self.input().await?));
        }
        for (setting, set, query) in [("shutter", "OSH", "QSH"), ("freeze", "OFZ", "QFZ")] {
            if let Some(v) = desired.get(setting).and_then(Value::as_bool) {
                self.set(&format!("{set}:{}", u8::from(v))).await?;
                confirmed.insert(setting.into(), json!(self.flag(query).await?));
            }
        }
        Ok(confirmed)
    }
}
