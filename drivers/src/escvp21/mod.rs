//! The Epson ESC/VP21 driver: serial (9600 8N1) or TCP (ESC/VP.net).
//!
//! Every exchange waits for the `:` prompt before the next command; each
//! command has its own timeout, and `PWR ON`/`PWR OFF` a long one: Epson
//! documents up to 40, 70 and 100 s for the first, second and third lamp
//! ignition, and the projector answers `PWR ON` only once the lamp is lit.
//! After a timeout a late answer may still come: before the next command
//! the driver discards what arrives until the line is quiet and checks that
//! a bare CR gets a bare prompt, so a late `:` is never taken for the next
//! command's answer.

pub mod codec;

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::driver::{input_code, Progress, Transition};
use crate::lineio::LineIo;
use crate::transport::Transport;
use crate::DriverError;
use codec::{NetStatus, PowerCode};
use patchbay_client::schema::{Description, DeviceEvent, Kind, Level, Setting, State};

/// Tunables for the ESC/VP21 driver.
#[derive(Debug, Clone)]
pub struct Escvp21Options {
    /// Timeout for ordinary commands.
    pub command_timeout: Duration,
    /// Timeout for `PWR ON` / `PWR OFF` (the third ignition attempt can take 100 s).
    pub power_timeout: Duration,
    /// Longest a warm-up or cool-down may take.
    pub transition_timeout: Duration,
    /// How often to check power while waiting.
    pub transition_poll: Duration,
    /// The ESC/VP.net password, when the projector has one.
    pub password: Option<String>,
    /// (id people see, source code) pairs; models differ (on some `A0` is DVI-D).
    pub sources: Vec<(String, String)>,
}

impl Default for Escvp21Options {
    fn default() -> Self {
        Escvp21Options {
            command_timeout: Duration::from_secs(3),
            power_timeout: Duration::from_secs(100),
            transition_timeout: Duration::from_secs(120),
            transition_poll: Duration::from_millis(500),
            password: None,
            sources: codec::DEFAULT_SOURCES
                .iter()
                .map(|(id, code)| ((*id).to_owned(), (*code).to_owned()))
                .collect(),
        }
    }
}

/// How long the line must stay quiet before the driver trusts it again after a timeout.
const QUIET: Duration = Duration::from_millis(150);

/// An Epson projector.
pub struct Escvp21 {
    transport: Transport,
    opts: Escvp21Options,
    io: Option<LineIo>,
    /// A command timed out: its answer may still arrive.
    resync: bool,
    last_error: String,
    /// The last power reading was abnormal standby (`PWR=05`).
    abnormal: bool,
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
            resync: false,
            last_error: "00".into(),
            abnormal: false,
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
            let password = self.opts.password.as_deref();
            io.send(&codec::connect_request(password)).await?;
            let header = io
                .read_exact(codec::HEADER_LEN, t, "ESC/VP.net handshake")
                .await?;
            let (status, extras) = codec::parse_header(&header)?;
            io.read_exact(
                usize::from(extras) * codec::EXTRA_LEN,
                t,
                "ESC/VP.net handshake",
            )
            .await?;
            match status {
                NetStatus::Ok => {}
                NetStatus::Unauthorized | NetStatus::Forbidden if password.is_some() => {
                    return Err(DriverError::WrongPassword)
                }
                NetStatus::Unauthorized | NetStatus::Forbidden => {
                    return Err(DriverError::PasswordRequired)
                }
                NetStatus::Busy => {
                    return Err(DriverError::busy(
                        "the projector is serving another network client",
                        Some("ESC/VP.net status 0x53".into()),
                    ))
                }
                NetStatus::Other(b) => {
                    return Err(DriverError::Protocol(format!(
                        "ESC/VP.net handshake refused (status {b:#04x})"
                    )))
                }
            }
        }
        self.io = Some(io);
        // An empty command answers just the prompt: proof the projector is listening.
        self.resynchronise().await
    }

    /// Discards whatever arrives until the line is quiet, checks that a
    /// bare CR is answered by a prompt, then discards again: the prompt read
    /// may have been the late answer's, with the CR's own still coming
    /// (a projector answers in order).
    async fn resynchronise(&mut self) -> Result<(), DriverError> {
        let t = self.opts.command_timeout;
        let io = self.io.as_mut().ok_or(DriverError::Closed)?;
        io.drain(QUIET).await?;
        io.send(b"\r").await?;
        io.read_until(b":", t, "prompt").await?;
        io.drain(QUIET).await?;
        self.resync = false;
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
        } else if self.resync {
            if let Err(e) = self.resynchronise().await {
                self.io = None;
                return Err(e);
            }
        }
        let io = self.io.as_mut().ok_or(DriverError::Closed)?;
        let result = async {
            io.send(format!("{command}\r").as_bytes()).await?;
            io.read_until(b":", timeout, command).await
        }
        .await;
        let reply = match result {
            Ok(r) => r,
            Err(e @ DriverError::Timeout { .. }) => {
                // A late answer may still come: resynchronise before the next command.
                self.resync = true;
                return Err(e);
            }
            Err(e) => {
                self.io = None;
                return Err(e);
            }
        };
        let lines = codec::reply_lines(&reply);
        if lines.iter().any(|l| l.eq_ignore_ascii_case("ERR")) {
            return Err(DriverError::busy(
                "the projector cannot do this now: it is in standby or changing power state",
                Some(format!("{command} answered ERR")),
            ));
        }
        Ok(lines)
    }

    async fn query(&mut self, key: &str) -> Result<String, DriverError> {
        let lines = self
            .command(&format!("{key}?"), self.opts.command_timeout)
            .await?;
        codec::value_of(&lines, key)
            .map(str::to_owned)
            .ok_or_else(|| {
                DriverError::Protocol(format!(
                    "expected `{key}=...` in reply to {key}?, got {lines:?}"
                ))
            })
    }

    /// A query that is refused (`ERR`) in standby: `None` then.
    async fn optional(&mut self, key: &str) -> Result<Option<String>, DriverError> {
        match self.query(key).await {
            Ok(v) => Ok(Some(v)),
            Err(DriverError::Busy { .. }) => Ok(None),
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
                    "Input",
                    Kind::Enum {
                        values: self.opts.sources.iter().map(|(id, _)| id.clone()).collect(),
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
        let power = codec::parse_power(&code)
            .ok_or_else(|| DriverError::Protocol(format!("unknown power state {code:?}")))?;
        let abnormal = power == PowerCode::AbnormalStandby;
        if abnormal && !self.abnormal {
            self.events.push(DeviceEvent {
                level: Level::Error,
                code: "abnormal_standby".into(),
                message: "the projector went to standby because of an error (PWR=05)".into(),
            });
        }
        self.abnormal = abnormal;
        Ok(match power {
            PowerCode::On => "on",
            PowerCode::Warming => "warming",
            PowerCode::Cooling => "cooling",
            PowerCode::Standby | PowerCode::AbnormalStandby => "off",
        }
        .into())
    }

    async fn read_source(&mut self) -> Result<Option<String>, DriverError> {
        let code = self.optional("SOURCE").await?;
        Ok(code.map(|c| codec::source_id(&self.opts.sources, &c)))
    }

    async fn read_mute(&mut self) -> Result<Option<bool>, DriverError> {
        Ok(self
            .optional("MUTE")
            .await?
            .map(|m| m.eq_ignore_ascii_case("ON")))
    }

    /// Reads the whole current state.
    pub async fn poll(&mut self) -> Result<State, DriverError> {
        let mut state = State::new();
        let power = self.power().await?;
        let on = power == "on";
        state.insert("power".into(), json!(power));
        let input = if on { self.read_source().await? } else { None };
        state.insert("input".into(), json!(input));
        let mute = if on { self.read_mute().await? } else { None };
        state.insert("mute".into(), json!(mute));
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
                    message: codec::error_text(&error),
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
            Err(DriverError::Busy { sent, .. }) => {
                let power = self.settle().await?;
                if power == "off" && !command.starts_with("PWR") {
                    return Err(DriverError::busy(
                        "the projector is in standby: power it on first",
                        sent,
                    ));
                }
                self.command(command, timeout).await.map(drop)
            }
            Err(e) => Err(e),
        }
    }

    /// Applies desired settings (power first) and returns the confirmed
    /// values: after a power change the whole state, otherwise only the
    /// settings it touched, read back from the projector.
    pub async fn apply(&mut self, desired: &State) -> Result<State, DriverError> {
        let mut confirmed = State::new();
        if let Some(power) = desired.get("power").and_then(Value::as_str) {
            let cmd = if power == "on" { "PWR ON" } else { "PWR OFF" };
            self.set(cmd, self.opts.power_timeout).await?;
            let now = self.settle().await?;
            if now != power {
                return Err(DriverError::DeviceFailure(format!(
                    "{cmd} (projector reports {now})"
                )));
            }
            confirmed = self.poll().await?;
        }
        if let Some(input) = desired.get("input").and_then(Value::as_str) {
            let sources = self.opts.sources.iter();
            let code = input_code(sources.map(|(id, c)| (id.as_str(), c.as_str())), input)?;
            self.set(&format!("SOURCE {code}"), self.opts.command_timeout)
                .await?;
            confirmed.insert("input".into(), json!(self.read_source().await?));
        }
        if let Some(mute) = desired.get("mute").and_then(Value::as_bool) {
            self.set(
                if mute { "MUTE ON" } else { "MUTE OFF" },
                self.opts.command_timeout,
            )
            .await?;
            confirmed.insert("mute".into(), json!(self.read_mute().await?));
        }
        Ok(confirmed)
    }
}
