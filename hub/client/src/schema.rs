//! What a device is and what can be set on it: the description every driver
//! publishes in `dev/<id>/meta`, the state it reports, and validation of
//! desired settings against the schema. Shared by drivers (before applying)
//! and the hub's HTTP side (before sending anything to an agent).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

/// Desired settings that the schema does not allow.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SchemaError {
    /// A value is not allowed for its setting.
    #[error("invalid value {value} for `{setting}`: allowed: {allowed}")]
    InvalidValue {
        /// Setting name.
        setting: String,
        /// The refused value, as JSON.
        value: String,
        /// What is allowed.
        allowed: String,
    },
    /// The setting cannot be set.
    #[error("`{0}` is read-only")]
    ReadOnly(String),
    /// No such setting.
    #[error("unknown setting `{setting}`; settable: {known}")]
    UnknownSetting {
        /// The unknown name.
        setting: String,
        /// The settable names.
        known: String,
    },
    /// The request is not a settings object.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl SchemaError {
    /// The setting concerned, if one is.
    pub fn setting(&self) -> Option<&str> {
        match self {
            SchemaError::InvalidValue { setting, .. }
            | SchemaError::UnknownSetting { setting, .. } => Some(setting),
            SchemaError::ReadOnly(s) => Some(s),
            SchemaError::InvalidRequest(_) => None,
        }
    }

    /// What would have been allowed, if it can be said.
    pub fn allowed(&self) -> Option<&str> {
        match self {
            SchemaError::InvalidValue { allowed, .. } => Some(allowed),
            SchemaError::UnknownSetting { known, .. } => Some(known),
            _ => None,
        }
    }
}

/// A device's current state: setting name → value.
pub type State = Map<String, Value>;

/// The type and allowed values of one setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Kind {
    /// `true` / `false`.
    Bool,
    /// One of `values` when set; reads may also show one of `transitional` (e.g. `warming`).
    Enum {
        /// Values that may be set.
        values: Vec<String>,
        /// Values only ever read, never set.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        transitional: Vec<String>,
    },
    /// An integer in `min..=max`.
    Int {
        /// Lowest value.
        min: i64,
        /// Highest value.
        max: i64,
        /// Unit for display, e.g. `h`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unit: Option<String>,
    },
    /// Free text.
    Text,
    /// A structured read-only value (e.g. an error-status breakdown).
    Object,
}

/// One setting of a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    /// Key in the state object.
    pub name: String,
    /// Label for people (the name when a device gives none).
    #[serde(default)]
    pub label: String,
    /// Type and allowed values.
    #[serde(flatten)]
    pub kind: Kind,
    /// May it be set?
    pub writable: bool,
}

impl Setting {
    /// A setting with the given name, label, kind and writability.
    pub fn new(name: &str, label: &str, kind: Kind, writable: bool) -> Self {
        Setting {
            name: name.into(),
            label: label.into(),
            kind,
            writable,
        }
    }

    /// A projector's power: set `on` or `off`, read also `warming` or `cooling`.
    pub fn projector_power() -> Self {
        Setting::new(
            "power",
            "Power",
            Kind::Enum {
                values: vec!["on".into(), "off".into()],
                transitional: vec!["warming".into(), "cooling".into()],
            },
            true,
        )
    }

    /// A read-only running-hours counter (lamp, filter).
    pub fn hours(name: &str, label: &str) -> Self {
        Setting::new(
            name,
            label,
            Kind::Int {
                min: 0,
                max: 99_999,
                unit: Some("h".into()),
            },
            false,
        )
    }

    /// Checks a desired value against this setting.
    pub fn check(&self, value: &Value) -> Result<(), SchemaError> {
        let invalid = |allowed: String| SchemaError::InvalidValue {
            setting: self.name.clone(),
            value: value.to_string(),
            allowed,
        };
        if !self.writable {
            return Err(SchemaError::ReadOnly(self.name.clone()));
        }
        match &self.kind {
            Kind::Bool => value
                .as_bool()
                .map(drop)
                .ok_or_else(|| invalid("true or false".into())),
            Kind::Enum { values, .. } => match value.as_str() {
                Some(v) if values.iter().any(|a| a == v) => Ok(()),
                _ => Err(invalid(values.join(", "))),
            },
            Kind::Int { min, max, .. } => match value.as_i64() {
                Some(v) if (*min..=*max).contains(&v) => Ok(()),
                _ => Err(invalid(format!("an integer from {min} to {max}"))),
            },
            Kind::Text => value
                .as_str()
                .map(drop)
                .ok_or_else(|| invalid("text".into())),
            Kind::Object => Err(SchemaError::ReadOnly(self.name.clone())),
        }
    }
}

/// What a driver knows about its device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Description {
    /// Driver name, e.g. `pjlink`.
    pub driver: String,
    /// Manufacturer, as the device reports it.
    pub manufacturer: String,
    /// Model, as the device reports it.
    pub model: String,
    /// Other facts the device reports (serial number, firmware, class...).
    #[serde(default)]
    pub info: Map<String, Value>,
    /// The settings schema.
    pub settings: Vec<Setting>,
}

impl Description {
    /// The setting called `name`.
    pub fn setting(&self, name: &str) -> Option<&Setting> {
        self.settings.iter().find(|s| s.name == name)
    }

    /// Checks a whole desired-settings object; the first problem wins.
    pub fn validate(&self, desired: &Value) -> Result<(), SchemaError> {
        validate_settings(&self.settings, desired)
    }
}

/// Checks desired settings against a settings schema; the first problem wins.
pub fn validate_settings(settings: &[Setting], desired: &Value) -> Result<(), SchemaError> {
    let Some(obj) = desired.as_object() else {
        return Err(SchemaError::InvalidRequest(
            "desired settings must be a JSON object such as {\"power\":\"on\"}".into(),
        ));
    };
    if obj.is_empty() {
        return Err(SchemaError::InvalidRequest("no settings given".into()));
    }
    for (name, value) in obj {
        let setting = settings.iter().find(|s| &s.name == name).ok_or_else(|| {
            SchemaError::UnknownSetting {
                setting: name.clone(),
                known: settings
                    .iter()
                    .filter(|s| s.writable)
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        })?;
        setting.check(value)?;
    }
    Ok(())
}

/// How serious a device event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// For information.
    Info,
    /// Needs attention soon.
    Warning,
    /// Needs attention now.
    Error,
}

/// Something the device reported: an error, a warning, a notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceEvent {
    /// Severity.
    pub level: Level,
    /// Stable short code, e.g. `lamp`.
    pub code: String,
    /// What happened, in words.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_setting_without_a_label_is_still_settable() {
        let s: Setting = serde_json::from_value(
            json!({"name": "power", "type": "enum", "values": ["on", "off"], "writable": true}),
        )
        .unwrap();
        assert!(s.writable && s.label.is_empty());
        assert!(validate_settings(&[s], &json!({"power": "on"})).is_ok());
    }

    fn desc() -> Description {
        Description {
            driver: "t".into(),
            manufacturer: "m".into(),
            model: "x".into(),
            info: Map::new(),
            settings: vec![
                Setting::new(
                    "power",
                    "Power",
                    Kind::Enum {
                        values: vec!["on".into(), "off".into()],
                        transitional: vec!["warming".into()],
                    },
                    true,
                ),
                Setting::new("mute", "Mute", Kind::Bool, true),
                Setting::new(
                    "volume",
                    "Volume",
                    Kind::Int {
                        min: 0,
                        max: 100,
                        unit: None,
                    },
                    true,
                ),
                Setting::new(
                    "lamp_hours",
                    "Lamp hours",
                    Kind::Int {
                        min: 0,
                        max: 99999,
                        unit: Some("h".into()),
                    },
                    false,
                ),
            ],
        }
    }

    #[test]
    fn validation_names_setting_and_allowed_values() {
        let d = desc();
        assert!(d
            .validate(&json!({"power":"on","mute":true,"volume":40}))
            .is_ok());
        let e = d
            .validate(&json!({"power":"warming"}))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "invalid value \"warming\" for `power`: allowed: on, off");
        let e = d.validate(&json!({"volume":101})).unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid value 101 for `volume`: allowed: an integer from 0 to 100"
        );
        let e = d
            .validate(&json!({"lamp_hours":1}))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "`lamp_hours` is read-only");
        let e = d
            .validate(&json!({"brightness":1}))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "unknown setting `brightness`; settable: power, mute, volume"
        );
        assert!(d.validate(&json!("on")).is_err());
    }

    #[test]
    fn schema_serializes_flat() {
        let v = serde_json::to_value(&desc().settings[0]).unwrap();
        assert_eq!(
            v,
            json!({"name":"power","label":"Power","type":"enum","values":["on","off"],"transitional":["warming"],"writable":true})
        );
    }
}
