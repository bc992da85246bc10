//! The PJLink driver (class 1, plus the class 2 queries a class 2 device has).
//!
//! One connection at most: the driver owns it and opens a new one only after
//! dropping the old. Projectors close idle connections (about 30 s), so a
//! connection idle longer than `idle_reconnect` is reopened before use, and a
//! command that finds its reused connection closed is retried once on a
//! fresh one. `ERR3` during warm-up or cool-down is "busy": `apply` waits for
//! the transition to finish and retries instead of failing.

pub mod codec;
pub mod search;

use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::driver::{input_code, Progress, Transition};
use crate::lineio::LineIo;
use crate::transport::Transport;
use crate::DriverError;
use codec::Greeting;
use patchbay_client::schema::{Description, DeviceEvent, Kind, Level, Setting, State};

/// Tunables for the PJLink driver.
#[derive(Debug, Clone)]
pub struct PjlinkOptions {
    /// Password, when the projector requires one.
    pub password: Option<String>,
    /// Reply timeout for one command.
    pub command_timeout: Duration,
    /// Reopen a connection idle for longer than this (projectors drop them at ~30 s).
    pub idle_reconnect: Duration,
    /// Longest a warm-up or cool-down may take before `apply` gives up.
    pub transition_timeout: Duration,
    /// How often to check power state while waiting for a transition.
    pub transition_poll: Duration,
}

impl Default for PjlinkOptions {
    fn default() -> Self {
        PjlinkOptions {
            password: None,
            command_timeout: Duration::from_secs(5),
            idle_reconnect: Duration::from_secs(20),
            transition_timeout: Duration::from_secs(120),
            transition_poll: Duration::from_millis(500),
        }
    }
}

struct Conn {
    io: LineIo,
    /// The digest to prefix to the first command, when authenticating.
    auth: Option<String>,
    last_used: Instant,
}

/// A PJLink projector or display.
pub struct Pjlink {
    transport: Transport,
    opts: PjlinkOptions,
    conn: Option<Conn>,
    class: u8,
    /// (PJLink input code, id shown to users) for each input.
    inputs: Vec<(String, String)>,
    errors: Map<String, Value>,
    events: Vec<DeviceEvent>,
    /// Connections opened so far (for logs and tests).
    opened: u64,
    progress: Option<Progress>,
    /// The last description lacked what the projector refused with `ERR3`.
    incomplete: bool,
    /// The last power reading was `on`.
    powered_on: bool,
}

impl Pjlink {
    /// A driver for the projector at `transport`; nothing is opened until first use.
    pub fn new(transport: Transport, opts: PjlinkOptions) -> Self {
        Pjlink {
            transport,
            opts,
            conn: None,
            class: 1,
            inputs: Vec::new(),
            errors: Map::new(),
            events: Vec::new(),
            opened: 0,
            progress: None,
            incomplete: false,
            powered_on: false,
        }
    }

    /// Was the last description taken while the projector could not give it
    /// (`ERR3` in standby or warming), and is it on now, so that describing
    /// again completes it?
    pub fn needs_redescribe(&self) -> bool {
        self.incomplete && self.powered_on
    }

    /// How many connections this driver has opened.
    pub fn connections_opened(&self) -> u64 {
        self.opened
    }

    /// Reports power transitions seen while applying settings.
    pub fn set_progress(&mut self, progress: Option<Progress>) {
        self.progress = progress;
    }

    /// Closes the connection, if any.
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    async fn open(&mut self) -> Result<(), DriverError> {
        self.conn = None;
        let stream = self.transport.open().await?;
        self.opened += 1;
        let mut io = LineIo::new(stream, self.transport.serial_path().map(str::to_owned));
        let greeting = io
            .read_until(b"\r", self.opts.command_timeout, "greeting")
            .await?;
        let greeting = String::from_utf8_lossy(&greeting).into_owned();
        let auth = match codec::parse_greeting(&greeting)? {
            Greeting::Open => None,
            Greeting::Auth(random) => {
                let password = self
                    .opts
                    .password
                    .as_deref()
                    .ok_or(DriverError::PasswordRequired)?;
                Some(codec::digest(&random, password))
            }
        };
        self.conn = Some(Conn {
            io,
            auth,
            last_used: Instant::now(),
        });
        Ok(())
    }

    /// Sends one command and returns its result, reconnecting as needed.
    pub async fn command(
        &mut self,
        class: u8,
        cmd: &str,
        param: &str,
    ) -> Result<String, DriverError> {
        let stale = self
            .conn
            .as_ref()
            .is_none_or(|c| c.last_used.elapsed() > self.opts.idle_reconnect);
        let fresh = stale;
        if stale {
            self.open().await?;
        }
        match self.exchange(class, cmd, param).await {
            Err(e) if !fresh && matches!(e, DriverError::Closed | DriverError::Io(_)) => {
                // The projector dropped an idle connection we still held: retry once on a new one.
                tracing::debug!("connection closed by the device; reconnecting");
                self.open().await?;
                self.exchange(class, cmd, param).await
            }
            other => other,
        }
    }

    async fn exchange(&mut self, class: u8, cmd: &str, param: &str) -> Result<String, DriverError> {
        let conn = self.conn.as_mut().ok_or(DriverError::Closed)?;
        let mut line = conn.auth.take().unwrap_or_default();
        line.push_str(&codec::command(class, cmd, param));
        let what = format!("%{class}{cmd} {param}");
        let result = async {
            conn.io.send(line.as_bytes()).await?;
            let reply = conn
                .io
                .read_until(b"\r", self.opts.command_timeout, &what)
                .await?;
            codec::parse_reply(&String::from_utf8_lossy(&reply), class, cmd, param)
        }
        .await;
        match &result {
            Err(e) if e.is_connection_lost() || matches!(e, DriverError::WrongPassword) => {
                self.conn = None
            }
            _ => conn.last_used = Instant::now(),
        }
        result
    }

    /// A query whose `ERR1` (unsupported) or `ERR3` (unavailable now) means "no value".
    async fn optional(
        &mut self,
        class: u8,
        cmd: &str,
        param: &str,
    ) -> Result<Option<String>, DriverError> {
        match self.command(class, cmd, param).await {
            Ok(v) => Ok(Some(v)),
            Err(DriverError::Unsupported(_) | DriverError::Busy { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A query that may be refused while the projector is unavailable:
    /// `ERR3` marks the description incomplete (to read again once it is
    /// on); `ERR1` just means "not supported".
    async fn describing(
        &mut self,
        class: u8,
        cmd: &str,
        param: &str,
    ) -> Result<Option<String>, DriverError> {
        match self.command(class, cmd, param).await {
            Ok(v) => Ok(Some(v)),
            Err(DriverError::Busy { .. }) => {
                self.incomplete = true;
                Ok(None)
            }
            Err(DriverError::Unsupported(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Queries identity, class and inputs, and builds the settings schema.
    /// Projectors may refuse any of it while in standby or warming up; the
    /// description is then marked incomplete and taken again once the
    /// projector is on ([`Pjlink::needs_redescribe`]).
    pub async fn describe(&mut self) -> Result<Description, DriverError> {
        self.incomplete = false;
        let class = self.describing(1, "CLSS", "?").await?;
        self.class = class.as_deref().map(codec::parse_class).unwrap_or(1);
        let manufacturer = self.describing(1, "INF1", "?").await?.unwrap_or_default();
        let model = self.describing(1, "INF2", "?").await?.unwrap_or_default();
        let mut info = Map::new();
        info.insert("class".into(), json!(self.class));
        for (key, class, cmd) in [
            ("name", 1, "NAME"),
            ("other", 1, "INFO"),
            ("serial_number", 2, "SNUM"),
            ("software_version", 2, "SVER"),
            ("lamp_model", 2, "RLMP"),
            ("filter_model", 2, "RFIL"),
        ] {
            if class > self.class {
                continue;
            }
            if let Some(v) = self.describing(class, cmd, "?").await? {
                info.insert(key.into(), json!(v));
            }
        }
        let list = self
            .describing(self.class, "INST", "?")
            .await?
            .unwrap_or_default();
        let mut names = Vec::new();
        for code in list.split_whitespace() {
            names.push(if self.class >= 2 {
                self.describing(2, "INNM", &format!("?{code}")).await?
            } else {
                None
            });
        }
        self.inputs = codec::input_ids(&list, &names);
        let input = if self.inputs.is_empty() && self.incomplete {
            // Refused in standby: any name is taken and checked once the projector is on.
            Setting::new("input", "Input (listed once on)", Kind::Text, true)
        } else {
            Setting::new(
                "input",
                "Input",
                Kind::Enum {
                    values: self.inputs.iter().map(|(_, id)| id.clone()).collect(),
                    transitional: Vec::new(),
                },
                true,
            )
        };
        let mut settings = vec![
            Setting::projector_power(),
            input,
            Setting::new("mute", "Picture and sound mute", Kind::Bool, true),
            Setting::new("video_mute", "Picture mute", Kind::Bool, true),
            Setting::new("audio_mute", "Sound mute", Kind::Bool, true),
        ];
        if self.class >= 2 {
            settings.push(Setting::new("freeze", "Freeze", Kind::Bool, true));
        }
        settings.push(Setting::hours("lamp_hours", "Lamp hours"));
        settings.push(Setting::new("lamps", "Lamps", Kind::Object, false));
        if self.class >= 2 {
            settings.push(Setting::hours("filter_hours", "Filter hours"));
        }
        settings.push(Setting::new("errors", "Error status", Kind::Object, false));
        Ok(Description {
            driver: "pjlink".into(),
            manufacturer,
            model,
            info,
            settings,
        })
    }

    async fn power(&mut self) -> Result<String, DriverError> {
        let code = self.command(1, "POWR", "?").await?;
        let power = codec::power_name(&code)
            .map(str::to_owned)
            .ok_or_else(|| DriverError::Protocol(format!("unknown power state {code:?}")))?;
        self.powered_on = power == "on";
        Ok(power)
    }

    /// The selected input's id, while the projector is on.
    async fn read_input(&mut self) -> Result<Option<String>, DriverError> {
        let code = self.optional(self.class, "INPT", "?").await?;
        Ok(code.map(|code| {
            self.inputs
                .iter()
                .find(|(c, _)| c.eq_ignore_ascii_case(&code))
                .map(|(_, id)| id.clone())
                .unwrap_or(code)
        }))
    }

    /// Mute as `mute` (both), `video_mute` and `audio_mute`, while the projector is on.
    async fn read_mute(&mut self, state: &mut State) -> Result<(), DriverError> {
        let mute = self.optional(1, "AVMT", "?").await?;
        let (video, audio) = match mute.as_deref().map(codec::parse_mute) {
            Some(Some((v, a))) => (Some(v), Some(a)),
            _ => (None, None),
        };
        state.insert("mute".into(), json!(video.zip(audio).map(|(v, a)| v && a)));
        state.insert("video_mute".into(), json!(video));
        state.insert("audio_mute".into(), json!(audio));
        Ok(())
    }

    /// Reads the whole current state.
    pub async fn poll(&mut self) -> Result<State, DriverError> {
        if self.inputs.is_empty() && !self.incomplete {
            self.describe().await?;
        }
        let mut state = State::new();
        let power = self.power().await?;
        let on = power == "on";
        state.insert("power".into(), json!(power));
        let input = if on { self.read_input().await? } else { None };
        state.insert("input".into(), json!(input));
        if on {
            self.read_mute(&mut state).await?;
        } else {
            for key in ["mute", "video_mute", "audio_mute"] {
                state.insert(key.into(), Value::Null);
            }
        }
        if self.class >= 2 {
            let freeze = if on {
                self.optional(2, "FREZ", "?").await?
            } else {
                None
            };
            state.insert("freeze".into(), json!(freeze.map(|f| f == "1")));
        }
        let lamps = self
            .optional(1, "LAMP", "?")
            .await?
            .map(|l| codec::parse_lamps(&l))
            .unwrap_or_default();
        state.insert("lamp_hours".into(), json!(lamps.first().map(|l| l.0)));
        state.insert(
            "lamps".into(),
            json!(lamps
                .iter()
                .map(|(hours, lit)| json!({"hours": hours, "on": lit}))
                .collect::<Vec<_>>()),
        );
        if self.class >= 2 {
            let filter = self.optional(2, "FILT", "?").await?;
            state.insert(
                "filter_hours".into(),
                json!(filter.and_then(|f| f.trim().parse::<u64>().ok())),
            );
        }
        if let Some(erst) = self.optional(1, "ERST", "?").await? {
            let errors = codec::parse_erst(&erst)?;
            self.note_error_changes(&errors);
            state.insert("errors".into(), Value::Object(errors));
        }
        Ok(state)
    }

    fn note_error_changes(&mut self, errors: &Map<String, Value>) {
        for (field, level) in errors {
            let before = self
                .errors
                .get(field)
                .and_then(Value::as_str)
                .unwrap_or("ok");
            let now = level.as_str().unwrap_or("ok");
            if now != before {
                let (level, message) = match now {
                    "error" => (Level::Error, format!("{field} error")),
                    "warning" => (Level::Warning, format!("{field} warning")),
                    _ => (Level::Info, format!("{field} back to normal")),
                };
                self.events.push(DeviceEvent {
                    level,
                    code: field.clone(),
                    message,
                });
            }
        }
        self.errors = errors.clone();
    }

    /// Events noticed since the last call.
    pub fn take_events(&mut self) -> Vec<DeviceEvent> {
        std::mem::take(&mut self.events)
    }

    /// Waits until the power state is no longer warming or cooling; returns it.
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

    /// Runs a set command, waiting out a warm-up or cool-down (`ERR3`) once.
    async fn set(&mut self, class: u8, cmd: &str, param: &str) -> Result<(), DriverError> {
        match self.command(class, cmd, param).await {
            Ok(_) => Ok(()),
            Err(DriverError::Busy { sent, .. }) => {
                let power = self.settle().await?;
                if power == "off" && cmd != "POWR" {
                    return Err(DriverError::busy(
                        "the projector is in standby: power it on first",
                        sent,
                    ));
                }
                self.command(class, cmd, param).await.map(drop)
            }
            Err(e) => Err(e),
        }
    }

    /// Applies desired settings (power first) and returns the confirmed
    /// values: after a power change the whole state, otherwise only the
    /// settings it touched, read back from the projector.
    pub async fn apply(&mut self, desired: &State) -> Result<State, DriverError> {
        if self.inputs.is_empty() && !self.incomplete {
            self.describe().await?;
        }
        let mut confirmed = State::new();
        if let Some(power) = desired.get("power").and_then(Value::as_str) {
            let param = if power == "on" { "1" } else { "0" };
            self.set(1, "POWR", param).await?;
            // Returns once the projector reports the requested state.
            let now = self.settle().await?;
            if now != power {
                return Err(DriverError::DeviceFailure(format!(
                    "POWR {param} (projector reports {now})"
                )));
            }
            // Everything else changes with power (unknown in standby, readable when on).
            confirmed = self.poll().await?;
        }
        if let Some(input) = desired.get("input").and_then(Value::as_str) {
            let inputs = self.inputs.iter();
            let code = input_code(inputs.map(|(c, id)| (id.as_str(), c.as_str())), input)?;
            self.set(codec::input_class(&code), "INPT", &code).await?;
            confirmed.insert("input".into(), json!(self.read_input().await?));
        }
        let mutes = [("mute", "3"), ("video_mute", "1"), ("audio_mute", "2")];
        for (key, kind) in mutes {
            if let Some(on) = desired.get(key).and_then(Value::as_bool) {
                let param = format!("{kind}{}", u8::from(on));
                self.set(1, "AVMT", &param).await?;
                self.read_mute(&mut confirmed).await?;
            }
        }
        if let Some(freeze) = desired.get("freeze").and_then(Value::as_bool) {
            self.set(2, "FREZ", if freeze { "1" } else { "0" }).await?;
            let now = self.optional(2, "FREZ", "?").await?;
            confirmed.insert("freeze".into(), json!(now.map(|f| f == "1")));
        }
        Ok(confirmed)
    }
}
