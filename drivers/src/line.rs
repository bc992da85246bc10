//! The line-protocol driver: a device described entirely in TOML.
//!
//! For each setting the profile gives a query command, a set command template
//! (`{value}` is replaced by the wire value), and a reply pattern whose first
//! capture group is the wire value. Enum and bool settings may map values to
//! wire strings (`map = { on = "01", off = "00" }`). This is enough for most
//! RS-232/TCP matrix switchers and displays with a text protocol.

use std::collections::BTreeMap;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::lineio::LineIo;
use crate::transport::Transport;
use crate::DriverError;
use patchbay_client::schema::SchemaError;
use patchbay_client::schema::{Description, DeviceEvent, Kind, Setting, State};

/// One setting in a profile file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingProfile {
    /// Key in the state.
    pub name: String,
    /// Label for people (defaults to the name).
    pub label: Option<String>,
    /// `enum`, `bool`, `int` or `text`.
    #[serde(rename = "type")]
    pub kind: String,
    /// For `enum`: the allowed values, when they go on the wire as they are.
    #[serde(default)]
    pub values: Vec<String>,
    /// For `enum`/`bool`: value → wire string.
    #[serde(default)]
    pub map: BTreeMap<String, String>,
    /// For `int`: lowest value.
    pub min: Option<i64>,
    /// For `int`: highest value.
    pub max: Option<i64>,
    /// Command that asks for the current value.
    pub query: Option<String>,
    /// Command template that sets it (`{value}` is replaced).
    pub set: Option<String>,
    /// Regex matching the reply to `query` and `set`; group 1 is the wire value.
    pub reply: String,
}

/// A device profile: the whole TOML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineProfile {
    /// Manufacturer.
    pub manufacturer: String,
    /// Model.
    pub model: String,
    /// Appended to every command (default CR).
    #[serde(default = "default_terminator")]
    pub terminator: String,
    /// Ends every reply (default CR LF).
    #[serde(default = "default_reply_terminator")]
    pub reply_terminator: String,
    /// Text the device sends when ready for the next command, if it has a prompt.
    pub prompt: Option<String>,
    /// Regex for replies that mean the device refused a command.
    pub error_reply: Option<String>,
    /// Reply timeout in milliseconds (default 1000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The settings.
    #[serde(rename = "setting")]
    pub settings: Vec<SettingProfile>,
}

fn default_terminator() -> String {
    "\r".into()
}
fn default_reply_terminator() -> String {
    "\r\n".into()
}
fn default_timeout_ms() -> u64 {
    1000
}

struct Compiled {
    profile: SettingProfile,
    reply: Regex,
}

impl Compiled {
    fn encode(&self, value: &Value) -> String {
        let key = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        self.profile.map.get(&key).cloned().unwrap_or(key)
    }

    fn decode(&self, wire: &str) -> Value {
        let mapped = self
            .profile
            .map
            .iter()
            .find(|(_, w)| w.as_str() == wire)
            .map(|(v, _)| v.as_str());
        let text = mapped.unwrap_or(wire);
        match self.profile.kind.as_str() {
            "bool" => json!(text == "true"),
            "int" => text
                .trim()
                .parse::<i64>()
                .map(|n| json!(n))
                .unwrap_or(Value::Null),
            _ => json!(text),
        }
    }
}

/// A device driven by a [`LineProfile`].
pub struct LineDriver {
    transport: Transport,
    profile: LineProfile,
    settings: Vec<Compiled>,
    error_reply: Option<Regex>,
    io: Option<LineIo>,
}

impl LineDriver {
    /// Reads a profile file and checks it.
    pub fn load_profile(path: &std::path::Path) -> Result<LineProfile, DriverError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            DriverError::Config(format!("cannot read profile {}: {e}", path.display()))
        })?;
        toml::from_str(&text)
            .map_err(|e| DriverError::Config(format!("profile {}: {e}", path.display())))
    }

    /// A driver for `profile` at `transport`; fails on an unusable profile, naming the setting.
    pub fn new(transport: Transport, profile: LineProfile) -> Result<Self, DriverError> {
        let mut settings = Vec::new();
        for s in &profile.settings {
            let bad = |why: String| DriverError::Config(format!("setting `{}`: {why}", s.name));
            let reply = Regex::new(&s.reply)
                .map_err(|e| bad(format!("`reply` is not a valid regex: {e}")))?;
            if reply.captures_len() < 2 {
                return Err(bad("`reply` needs a capture group for the value".into()));
            }
            match s.kind.as_str() {
                "enum" if s.values.is_empty() && s.map.is_empty() => {
                    return Err(bad("an enum needs `values` or `map`".into()))
                }
                "int" if s.min.is_none() || s.max.is_none() => {
                    return Err(bad("an int needs `min` and `max`".into()))
                }
                "enum" | "bool" | "int" | "text" => {}
                other => {
                    return Err(bad(format!(
                        "`type` must be enum, bool, int or text, not {other:?}"
                    )))
                }
            }
            if s.query.is_none() && s.set.is_none() {
                return Err(bad("needs `query`, `set` or both".into()));
            }
            settings.push(Compiled {
                profile: s.clone(),
                reply,
            });
        }
        let error_reply = profile
            .error_reply
            .as_deref()
            .map(Regex::new)
            .transpose()
            .map_err(|e| DriverError::Config(format!("`error_reply` is not a valid regex: {e}")))?;
        Ok(LineDriver {
            transport,
            profile,
            settings,
            error_reply,
            io: None,
        })
    }

    /// Closes the connection.
    pub fn disconnect(&mut self) {
        self.io = None;
    }

    /// The settings schema from the profile.
    pub async fn describe(&mut self) -> Result<Description, DriverError> {
        let settings = self
            .settings
            .iter()
            .map(|c| {
                let s = &c.profile;
                let kind = match s.kind.as_str() {
                    "bool" => Kind::Bool,
                    "int" => Kind::Int {
                        min: s.min.unwrap_or(0),
                        max: s.max.unwrap_or(0),
                        unit: None,
                    },
                    "text" => Kind::Text,
                    _ => Kind::Enum {
                        values: if s.values.is_empty() {
                            s.map.keys().cloned().collect()
                        } else {
                            s.values.clone()
                        },
                        transitional: Vec::new(),
                    },
                };
                Setting::new(
                    &s.name,
                    s.label.as_deref().unwrap_or(&s.name),
                    kind,
                    s.set.is_some(),
                )
            })
            .collect();
        Ok(Description {
            driver: "line".into(),
            manufacturer: self.profile.manufacturer.clone(),
            model: self.profile.model.clone(),
            info: Map::new(),
            settings,
        })
    }

    async fn exchange(&mut self, command: &str, idx: usize) -> Result<Value, DriverError> {
        if self.io.is_none() {
            let stream = self.transport.open().await?;
            self.io = Some(LineIo::new(
                stream,
                self.transport.serial_path().map(str::to_owned),
            ));
        }
        let timeout = Duration::from_millis(self.profile.timeout_ms);
        let io = self.io.as_mut().ok_or(DriverError::Closed)?;
        let line = format!("{command}{}", self.profile.terminator);
        let result = async {
            io.send(line.as_bytes()).await?;
            // Devices may interleave unsolicited lines: look at a few before giving up.
            for _ in 0..4 {
                let raw = io
                    .read_until(self.profile.reply_terminator.as_bytes(), timeout, command)
                    .await?;
                let reply = String::from_utf8_lossy(&raw).trim().to_owned();
                if let Some(prompt) = &self.profile.prompt {
                    io.read_until(prompt.as_bytes(), timeout, command).await?;
                }
                if self
                    .error_reply
                    .as_ref()
                    .is_some_and(|r| r.is_match(&reply))
                {
                    return Err(DriverError::busy(
                        "the device refused the command",
                        Some(format!("{command} answered {reply}")),
                    ));
                }
                let setting = &self.settings[idx];
                if let Some(wire) = setting.reply.captures(&reply).and_then(|c| c.get(1)) {
                    return Ok(setting.decode(wire.as_str()));
                }
            }
            Err(DriverError::Protocol(format!(
                "no reply to `{command}` matched the profile"
            )))
        }
        .await;
        if result
            .as_ref()
            .err()
            .is_some_and(DriverError::is_connection_lost)
        {
            self.io = None;
        }
        result
    }

    /// Queries every setting that has a query.
    pub async fn poll(&mut self) -> Result<State, DriverError> {
        let mut state = State::new();
        for idx in 0..self.settings.len() {
            if let Some(q) = self.settings[idx].profile.query.clone() {
                let v = self.exchange(&q, idx).await?;
                state.insert(self.settings[idx].profile.name.clone(), v);
            }
        }
        Ok(state)
    }

    /// Sets each desired setting in the order the profile lists them (so a
    /// profile puts `power` first), then polls.
    pub async fn apply(&mut self, desired: &State) -> Result<State, DriverError> {
        if let Some(name) = desired
            .keys()
            .find(|k| !self.settings.iter().any(|c| &c.profile.name == *k))
        {
            return Err(DriverError::Schema(SchemaError::UnknownSetting {
                setting: name.clone(),
                known: self
                    .settings
                    .iter()
                    .map(|c| c.profile.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }));
        }
        for idx in 0..self.settings.len() {
            let name = &self.settings[idx].profile.name;
            let Some(value) = desired.get(name) else {
                continue;
            };
            let template = self.settings[idx]
                .profile
                .set
                .clone()
                .ok_or_else(|| DriverError::Schema(SchemaError::ReadOnly(name.clone())))?;
            let command = template.replace("{value}", &self.settings[idx].encode(value));
            let confirmed = self.exchange(&command, idx).await?;
            if &confirmed != value {
                return Err(DriverError::DeviceFailure(format!(
                    "{command} (device reports {confirmed})"
                )));
            }
        }
        self.poll().await
    }

    /// Line-protocol commands are quick: nothing to report while they run.
    pub fn set_progress(&mut self, _progress: Option<crate::driver::Progress>) {}

    /// Line-protocol devices report no events.
    pub fn take_events(&mut self) -> Vec<DeviceEvent> {
        Vec::new()
    }
}
