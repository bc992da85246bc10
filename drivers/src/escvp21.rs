//! The Epson ESC/VP21 driver: serial (9600 8N1) or TCP (ESC/VP.net).
//!
//! Every exchange waits for the `:` prompt before the next command; each
//! command has its own timeout, and `PWR ON`/`PWR OFF` a long one, since a
//! projector changing power state may stay silent for seconds.

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::driver::{Progress, Transition};
use crate::lineio::LineIo;
use crate::sim::escvp21::NET_HELLO;
use crate::transport::Transport;
use crate::DriverError;
use patchbay_client::schema::SchemaError;
use patchbay_client::schema::{Description, DeviceEvent, Kind, Level, Setting, State};

/// Tunables for the ESC/VP21 driver.
#[derive(Debug, Clone)]
pub struct Escvp21Options {
    /// Timeout for ordinary commands.
    pub command_timeout: Duration,
    /// Timeout for `PWR ON` / `PWR OFF`.
    pub power_timeout: Duration,
    /// Longest a warm-up or cool-down may take.
    pub transition_timeout: Duration,
    /// How often to check power while waiting.
    pub transition_poll: Duration,
}

impl Default for Escvp21Options {
    fn default() -> Self {
        Escvp21Options {
            command_timeout: Duration::from_secs(3),
            power_timeout: Duration::from_secs(40),
            transition_timeout: Duration::from_secs(120),
            transition_poll: Duration::from_millis(500),
        }
    }
}

/// (source id shown to users, ESC/VP21 source code).
const SOURCES: &[(&str, &str)] = &[
    ("hdmi1", "30"),
    ("hdmi2", "A0"),
    ("computer", "10"),
    ("video", "41"),
];

/// An Epson projector.
pub struct Escvp21 {
    transport: Transport,
    opts: Escvp21Options,
    io: Option<LineIo>,
    last_error: String,
    events: Vec<DeviceEvent>,
    progress: Option<Progress>,
}

impl Escvp21 {
    /// A driver for the projector at `transport`.
    pub fn new(transport: Transport, opts: Escvp21Options) -> Self {
        Escvp21 {
            transport,
            opts,
            io: None,
            last_error: "00".into(),
            events: Vec::new(),
            progress: None,
        }
    }

    /// Reports power transitions seen while applying settings.
    pub fn set_progress(&mut self, progress: Option<Progress>) {
        self.progress = progress;
    }

    /// Closes the port or connection.
    pub fn disconnect(&mut self) {
        self.io = None;
    }

    async fn open(&mut self) -> Result<(), DriverError> {
        self.io = None;
        let stream = self.transport.open().await?;
        let mut io = LineIo::new(stream, self.transport.serial_path().map(str::to_owned));
        let t = self.opts.command_timeout;
        if let Transport::Tcp { .. } = self.transport {
            io.send(&NET_HELLO).await?;
            let header = io.read_exact(16, t, "ESC/VP.net handshake").await?;
            if !header.starts_with(b"ESC/VP.net") || header.get(14) != Some(&0x20) {
                return Err(DriverError::Protocol(format!(
                    "ESC/VP.net handshake refused (status {:#04x})",
                    header.get(14).copied().unwrap_or(0)
                )));
            }
        }
        // An empty command answers just the prompt: proof the projector is listening.
        io.send(b"\r").await?;
        io.read_until(b":", t, "prompt").await?;
        self.io = Some(io);
        Ok(())
    }

    /// Sends one command and returns the reply lines before the prompt.
    pub async fn command(
        &mut self,
        command: &str,
        timeout: Duration,
    ) -> Result<Vec<String>, DriverError> {
        if self.io.is_none() {
            self.open().await?;
        }
        let io = self.io.as_mut().ok_or(DriverError::Closed)?;
        let result = async {
            io.send(format!("{command}\r").as_bytes()).await?;
            io.read_until(b":", timeout, command).await
        }
        .await;
        let reply = match result {
            Ok(r) => r,
            Err(e) => {
                // After a timeout a late answer may still arrive: start clean next time.
                self.io = None;
                return Err(e);
            }
        };
        let lines: Vec<String> = String::from_utf8_lossy(&reply)
            .split(['\r', '\n'])
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        if lines.iter().any(|l| l == "ERR") {
            return Err(DriverError::Busy(format!(
                "the projector refused `{command}` (ERR): it may be in standby or changing power state"
            )));
        }
        Ok(lines)
    }

    async fn query(&mut self, key: &str) -> Result<String, DriverError> {
        let lines = self
            .command(&format!("{key}?"), self.opts.command_timeout)
            .await?;
        let prefix = format!("{key}=");
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(str::to_owned)
            .ok_or_else(|| {
                DriverError::Protocol(format!(
                    "expected `{prefix}...` in reply to {key}?, got {lines:?}"
                ))
            })
    }

    /// A query that is refused (`ERR`) in standby: `None` then.
    async fn optional(&mut self, key: &str) -> Result<Option<String>, DriverError> {
        match self.query(key).await {
            Ok(v) => Ok(Some(v)),
            Err(DriverError::Busy(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The settings schema (ESC/VP21 has no identity queries common to all models).
    pub async fn describe(&mut self) -> Result<Description, DriverError> {
        // Talking to it proves the port and the projector are there.
        self.power().await?;
        Ok(Description {
            driver: "escvp21".into(),
            manufacturer: "Epson".into(),
            model: "ESC/VP21 projector".into(),
            info: Map::new(),
            settings: vec![
                Setting::projector_power(),
                Setting::new(
                    "input",
                    "Source",
                    Kind::Enum {
                        values: SOURCES.iter().map(|(id, _)| (*id).to_owned()).collect(),
                        transitional: Vec::new(),
                    },
                    true,
                ),
                Setting::new("mute", "A/V mute", Kind::Bool, true),
                Setting::hours("lamp_hours", "Lamp hours"),
                Setting::new("error", "Error code", Kind::Text, false),
            ],
        })
    }

    async fn power(&mut self) -> Result<String, DriverError> {
        let code = self.query("PWR").await?;
        Ok(match code.as_str() {
            "01" => "on",
            "02" => "warming",
            "03" => "cooling",
            "00" | "04" | "05" => "off",
            other => {
                return Err(DriverError::Protocol(format!(
                    "unknown power state {other:?}"
                )))
            }
        }
        .into())
    }

    /// Reads the whole current state.
    pub async fn poll(&mut self) -> Result<State, DriverError> {
        let mut state = State::new();
        let power = self.power().await?;
        let on = power == "on";
        state.insert("power".into(), json!(power));
        let source = if on {
            self.optional("SOURCE").await?
        } else {
            None
        };
        let input = source.map(|s| {
            SOURCES
                .iter()
                .find(|(_, code)| code.eq_ignore_ascii_case(&s))
                .map(|(id, _)| (*id).to_owned())
                .unwrap_or(s)
        });
        state.insert("input".into(), json!(input));
        let mute = if on {
            self.optional("MUTE").await?
        } else {
            None
        };
        state.insert("mute".into(), json!(mute.map(|m| m == "ON")));
        let lamp = self.optional("LAMP").await?;
        state.insert(
            "lamp_hours".into(),
            json!(lamp.and_then(|l| l.trim().parse::<u64>().ok())),
        );
        let error = self.optional("ERR").await?.unwrap_or_else(|| "00".into());
        if error != self.last_error {
            self.events.push(if error == "00" {
                DeviceEvent {
                    level: Level::Info,
                    code: "error".into(),
                    message: "error cleared".into(),
                }
            } else {
                DeviceEvent {
                    level: Level::Error,
                    code: format!("err_{error}"),
                    message: error_text(&error),
                }
            });
            self.last_error = error.clone();
        }
        state.insert("error".into(), json!(error));
        Ok(state)
    }

    /// Events noticed since the last call.
    pub fn take_events(&mut self) -> Vec<DeviceEvent> {
        std::mem::take(&mut self.events)
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
    async fn set(&mut self, command: &str, timeout: Duration) -> Result<(), DriverError> {
        match self.command(command, timeout).await {
            Ok(_) => Ok(()),
            Err(DriverError::Busy(_)) => {
                let power = self.settle().await?;
                if power == "off" && !command.starts_with("PWR") {
                    return Err(DriverError::Busy(format!(
                        "the projector is in standby; power it on first (it answered ERR to `{command}`)"
                    )));
                }
                self.command(command, timeout).await.map(drop)
            }
            Err(e) => Err(e),
        }
    }

    /// Applies desired settings (power first) and returns the confirmed state.
    pub async fn apply(&mut self, desired: &State) -> Result<State, DriverError> {
        if let Some(power) = desired.get("power").and_then(Value::as_str) {
            let cmd = if power == "on" { "PWR ON" } else { "PWR OFF" };
            self.set(cmd, self.opts.power_timeout).await?;
            let now = self.settle().await?;
            if now != power {
                return Err(DriverError::DeviceFailure(format!(
                    "{cmd} (projector reports {now})"
                )));
            }
        }
        if let Some(input) = desired.get("input").and_then(Value::as_str) {
            let code = SOURCES
                .iter()
                .find(|(id, _)| *id == input)
                .map(|(_, c)| *c)
                .ok_or_else(|| {
                    DriverError::Schema(SchemaError::InvalidValue {
                        setting: "input".into(),
                        value: format!("{input:?}"),
                        allowed: SOURCES
                            .iter()
                            .map(|(id, _)| *id)
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
                })?;
            self.set(&format!("SOURCE {code}"), self.opts.command_timeout)
                .await?;
        }
        if let Some(mute) = desired.get("mute").and_then(Value::as_bool) {
            self.set(
                if mute { "MUTE ON" } else { "MUTE OFF" },
                self.opts.command_timeout,
            )
            .await?;
        }
        self.poll().await
    }
}

fn error_text(code: &str) -> String {
    let what = match code {
        "01" => "fan error",
        "03" => "lamp failure at power on",
        "04" => "high internal temperature",
        "06" => "lamp error",
        "07" => "lamp cover open",
        "08" => "cinema filter error",
        "0C" => "low air flow",
        "0E" => "power supply error",
        _ => "projector error",
    };
    format!("{what} (ERR={code})")
}
