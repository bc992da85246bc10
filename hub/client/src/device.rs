//! The device vocabulary on top of tags (`dev/<id>/meta`, `state`,
//! `online`, `event`, `set`): typed descriptions, reachability and error
//! codes, grouping retained messages into devices, and turning `key=value`
//! words into desired settings using a device's schema. Shared by agents,
//! drivers, the CLI and the hub's HTTP side.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::schema::Setting;

/// Why a device command failed: the `code` of the error an agent answers a
/// `dev/<id>/set` request with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceErrorCode {
    /// A setting or value the device's schema does not allow.
    InvalidValue,
    /// The device cannot do it now (warming up, cooling down, another command).
    Busy,
    /// The device is unreachable.
    Offline,
    /// The device did not answer in time; the command may still take effect.
    DeviceTimeout,
    /// The device does not support it.
    Unsupported,
    /// The device reported a failure or answered something unexpected.
    DeviceError,
}

impl DeviceErrorCode {
    /// Every code, in documentation order.
    pub const ALL: [DeviceErrorCode; 6] = [
        DeviceErrorCode::InvalidValue,
        DeviceErrorCode::Busy,
        DeviceErrorCode::Offline,
        DeviceErrorCode::DeviceTimeout,
        DeviceErrorCode::Unsupported,
        DeviceErrorCode::DeviceError,
    ];

    /// The snake_case wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceErrorCode::InvalidValue => "invalid_value",
            DeviceErrorCode::Busy => "busy",
            DeviceErrorCode::Offline => "offline",
            DeviceErrorCode::DeviceTimeout => "device_timeout",
            DeviceErrorCode::Unsupported => "unsupported",
            DeviceErrorCode::DeviceError => "device_error",
        }
    }

    /// The code with this wire spelling.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

impl std::fmt::Display for DeviceErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device's description, retained on `dev/<id>/meta` by its agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceMeta {
    /// Device id (the `<id>` in its tags).
    pub id: String,
    /// Name for people.
    #[serde(default)]
    pub name: String,
    /// Room or location.
    #[serde(default)]
    pub location: String,
    /// Driver name, e.g. `pjlink`.
    #[serde(default)]
    pub driver: String,
    /// Manufacturer, as the device reports it.
    #[serde(default)]
    pub manufacturer: String,
    /// Model, as the device reports it.
    #[serde(default)]
    pub model: String,
    /// Other facts the device reports (serial number, firmware, class...).
    #[serde(default)]
    pub info: Map<String, Value>,
    /// How the agent reaches it, e.g. `tcp 10.0.0.21:4352` or `serial /dev/ttyUSB0`.
    #[serde(default)]
    pub transport: String,
    /// How often the agent polls it, in milliseconds.
    #[serde(default)]
    pub poll_ms: u64,
    /// The settings schema.
    #[serde(default)]
    pub settings: Vec<Setting>,
}

/// A device's reachability, retained on `dev/<id>/online`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Online {
    /// Reachable now?
    #[serde(default)]
    pub online: bool,
    /// Why not, when offline.
    #[serde(default)]
    pub reason: Option<String>,
    /// Since when, in Unix milliseconds.
    #[serde(default)]
    pub since: u64,
}

/// Tag patterns that cover everything retained about devices.
pub const DEVICE_PATTERNS: [&str; 3] = ["dev/+/meta", "dev/+/state", "dev/+/online"];

/// One device's retained values.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeviceView {
    /// Device id.
    pub id: String,
    /// Description and settings schema (`dev/<id>/meta`).
    pub meta: Option<Value>,
    /// Current state (`dev/<id>/state`).
    pub state: Option<Value>,
    /// Reachability (`dev/<id>/online`).
    pub online: Option<Value>,
}

impl DeviceView {
    /// Is the device reachable (as last reported)?
    pub fn is_online(&self) -> bool {
        self.online
            .as_ref()
            .and_then(|o| o.get("online"))
            .and_then(Value::as_bool)
            == Some(true)
    }

    /// Why the device is unreachable, as last reported.
    pub fn reason(&self) -> Option<&str> {
        self.online.as_ref()?.get("reason")?.as_str()
    }

    /// A string field of the meta.
    pub fn meta_str(&self, key: &str) -> &str {
        self.meta
            .as_ref()
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// A state value as text (`-` when absent or null).
    pub fn state_text(&self, key: &str) -> String {
        match self.state.as_ref().and_then(|s| s.get(key)) {
            None | Some(Value::Null) => "-".into(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        }
    }
}

/// Splits `dev/<id>/<part>` into (id, part).
pub fn split_tag(tag: &str) -> Option<(&str, &str)> {
    let rest = tag.strip_prefix("dev/")?;
    let (id, part) = rest.split_once('/')?;
    (!part.contains('/')).then_some((id, part))
}

/// Groups (tag, body) pairs into devices, by id.
pub fn group<S: AsRef<str>>(
    items: impl IntoIterator<Item = (S, Value)>,
) -> BTreeMap<String, DeviceView> {
    let mut out: BTreeMap<String, DeviceView> = BTreeMap::new();
    for (tag, body) in items {
        let Some((id, part)) = split_tag(tag.as_ref()) else {
            continue;
        };
        let view = out.entry(id.to_owned()).or_insert_with(|| DeviceView {
            id: id.to_owned(),
            ..DeviceView::default()
        });
        match part {
            "meta" => view.meta = Some(body),
            "state" => view.state = Some(body),
            "online" => view.online = Some(body),
            _ => {}
        }
    }
    out
}

/// Turns `power=on input=hdmi1 volume=30` into a desired-settings object,
/// typing each value by the setting's schema in `meta`.
pub fn parse_assignments(meta: &Value, words: &[String]) -> Result<Map<String, Value>, String> {
    let settings = meta
        .get("settings")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = Map::new();
    for word in words {
        let (key, raw) = word
            .split_once('=')
            .ok_or_else(|| format!("`{word}` is not key=value (e.g. power=on)"))?;
        let setting = settings
            .iter()
            .find(|s| s.get("name").and_then(Value::as_str) == Some(key))
            .ok_or_else(|| {
                let known: Vec<&str> = settings
                    .iter()
                    .filter(|s| s.get("writable") == Some(&Value::Bool(true)))
                    .filter_map(|s| s.get("name").and_then(Value::as_str))
                    .collect();
                format!("unknown setting `{key}`; settable: {}", known.join(", "))
            })?;
        let value = match setting.get("type").and_then(Value::as_str) {
            Some("bool") => match raw {
                "true" | "on" | "yes" | "1" => Value::Bool(true),
                "false" | "off" | "no" | "0" => Value::Bool(false),
                _ => return Err(format!("`{key}` takes true or false, not `{raw}`")),
            },
            Some("int") => Value::from(
                raw.parse::<i64>()
                    .map_err(|_| format!("`{key}` takes an integer, not `{raw}`"))?,
            ),
            _ => Value::String(raw.to_owned()),
        };
        out.insert(key.to_owned(), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn assignments_are_typed_by_schema() {
        let meta = json!({"settings":[
            {"name":"power","type":"enum","values":["on","off"],"writable":true},
            {"name":"mute","type":"bool","writable":true},
            {"name":"volume","type":"int","min":0,"max":100,"writable":true},
        ]});
        let words: Vec<String> = ["power=on", "mute=yes", "volume=30"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            Value::Object(parse_assignments(&meta, &words).unwrap()),
            json!({"power":"on","mute":true,"volume":30})
        );
        assert_eq!(
            parse_assignments(&meta, &["bright=1".into()]).unwrap_err(),
            "unknown setting `bright`; settable: power, mute, volume"
        );
        assert_eq!(
            parse_assignments(&meta, &["power".into()]).unwrap_err(),
            "`power` is not key=value (e.g. power=on)"
        );
    }

    #[test]
    fn grouping() {
        let g = group([
            ("dev/a/meta", json!({"name":"A"})),
            ("dev/a/online", json!({"online":true})),
            ("dev/b/state", json!({"power":"on"})),
            ("other/x", json!(1)),
        ]);
        assert_eq!(g.len(), 2);
        assert!(g["a"].is_online());
        assert_eq!(g["b"].state_text("power"), "on");
        assert_eq!(g["b"].state_text("input"), "-");
    }
}
