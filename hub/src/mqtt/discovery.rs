//! Home Assistant MQTT discovery: the entity configs a device's settings
//! schema implies, the way Zigbee2MQTT announces its devices.
//!
//! Each entity's config is retained at
//! `<discovery_prefix>/<component>/patchbay_<device>/<key>/config`, where
//! `<device>` and `<key>` are escaped ([`escape`]) to the characters
//! discovery ids allow. Every entity reads the device's retained state topic,
//! is available only while both the bridge and the device are online, and
//! names the device (manufacturer, model, area from its location).

use serde_json::{json, Map, Value};

use crate::schema::{Kind, Setting};

/// Topics the bridge uses for one device and for itself.
#[derive(Debug, Clone)]
pub struct Topics {
    /// The base topic (`patchbay`).
    pub base: String,
    /// The discovery prefix (`homeassistant`).
    pub prefix: String,
}

impl Topics {
    /// `<base>/<id>/<what>`.
    pub fn device(&self, id: &str, what: &str) -> String {
        format!("{}/{id}/{what}", self.base)
    }

    /// `<base>/bridge/state`: `online`, or `offline` (also the last will).
    pub fn bridge_state(&self) -> String {
        format!("{}/bridge/state", self.base)
    }

    /// Where Home Assistant says it (re)started: `<prefix>/status`.
    pub fn ha_status(&self) -> String {
        format!("{}/status", self.prefix)
    }

    fn config(&self, component: &str, id: &str, key: &str) -> String {
        format!(
            "{}/{component}/patchbay_{}/{}/config",
            self.prefix,
            escape(id),
            escape(key)
        )
    }
}

/// Whether `b` starts with `x` and two lowercase hex digits: what follows
/// the `_` of an escape.
fn looks_escaped(b: &[u8]) -> bool {
    b.len() >= 3
        && b[0] == b'x'
        && b[1..3]
            .iter()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// Escapes text to what discovery ids allow (`[A-Za-z0-9_-]`): those stay
/// as they are, every other byte becomes `_x` and two lowercase hex digits
/// (`Hall 2` is `Hall_x202`), and so does a `_` that would otherwise read as
/// the start of one, so the mapping is reversible ([`unescape`]) and leaves
/// ordinary ids (`proj-1`, `lamp_hours`) alone.
pub fn escape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    for (i, &b) in bytes.iter().enumerate() {
        let plain = b.is_ascii_alphanumeric()
            || b == b'-'
            || (b == b'_' && !looks_escaped(&bytes[i + 1..]));
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("_x{b:02x}"));
        }
    }
    out
}

/// The text [`escape`] made `escaped` from, or `None` if it is not one.
pub fn unescape(escaped: &str) -> Option<String> {
    let b = escaped.as_bytes();
    let mut bytes = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'_' && looks_escaped(&b[i + 1..]) {
            let hex = std::str::from_utf8(&b[i + 2..i + 4]).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            i += 4;
        } else if b[i].is_ascii_alphanumeric() || b[i] == b'-' || b[i] == b'_' {
            bytes.push(b[i]);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(bytes).ok()
}

/// A Jinja expression reading state field `name`.
fn field(name: &str) -> String {
    format!(
        "value_json[{}]",
        serde_json::to_string(name).expect("a string")
    )
}

/// Whether an enum is a power switch: `on` and `off` can be set.
fn is_switch(values: &[String]) -> bool {
    values.iter().any(|v| v == "on") && values.iter().any(|v| v == "off")
}

/// The discovery configs for one device: `(topic, payload)` pairs. `state`
/// gives the keys of its `errors` object, one problem sensor each.
pub fn configs(t: &Topics, id: &str, meta: &Value, state: Option<&Value>) -> Vec<(String, Value)> {
    let settings: Vec<Setting> = meta
        .get("settings")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .unwrap_or_default();
    let text = |k: &str| {
        meta.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let mut device = Map::new();
    device.insert(
        "identifiers".into(),
        json!([format!("patchbay_{}", escape(id))]),
    );
    device.insert("name".into(), json!(text("name").unwrap_or(id)));
    for (from, to) in [
        ("manufacturer", "manufacturer"),
        ("model", "model"),
        ("location", "suggested_area"),
    ] {
        if let Some(v) = text(from) {
            device.insert(to.into(), json!(v));
        }
    }
    let entity = |component: &str, key: &str, name: &str| {
        // `.` never comes out of `escape`, so no two devices' ids run together.
        let unique = format!("patchbay_{}.{}", escape(id), escape(key));
        let slug: String = unique
            .chars()
            .map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9') => c,
                _ => '_',
            })
            .collect();
        let mut c = Map::new();
        c.insert("name".into(), json!(name));
        c.insert("unique_id".into(), json!(unique));
        c.insert(
            "default_entity_id".into(),
            json!(format!("{component}.{slug}")),
        );
        c.insert("state_topic".into(), json!(t.device(id, "state")));
        c.insert(
            "availability".into(),
            json!([{"topic": t.bridge_state()}, {"topic": t.device(id, "online")}]),
        );
        c.insert("availability_mode".into(), json!("all"));
        c.insert("device".into(), Value::Object(device.clone()));
        c.insert(
            "origin".into(),
            json!({"name": "patchbay", "sw_version": env!("CARGO_PKG_VERSION")}),
        );
        (t.config(component, id, key), c)
    };
    let command = |c: &mut Map<String, Value>, name: &str| {
        c.insert(
            "command_topic".into(),
            json!(t.device(id, &format!("set/{name}"))),
        );
    };
    let mut out = Vec::new();
    for s in &settings {
        let label = if s.label.is_empty() {
            &s.name
        } else {
            &s.label
        };
        let f = field(&s.name);
        match (&s.kind, s.writable) {
            (
                Kind::Enum {
                    values,
                    transitional,
                },
                true,
            ) if is_switch(values) => {
                let (topic, mut c) = entity("switch", &s.name, label);
                command(&mut c, &s.name);
                c.insert("payload_on".into(), json!("on"));
                c.insert("payload_off".into(), json!("off"));
                c.insert("state_on".into(), json!("on"));
                c.insert("state_off".into(), json!("off"));
                c.insert(
                    "value_template".into(),
                    json!(format!(
                        "{{{{ 'on' if {f} in ['on', 'warming'] else 'off' }}}}"
                    )),
                );
                out.push((topic, Value::Object(c)));
                // A sensor for the power state too, unless a setting has its name.
                let key = format!("{}_state", s.name);
                if settings.iter().any(|o| o.name == key) {
                    continue;
                }
                let (topic, mut c) = entity("sensor", &key, &format!("{label} state"));
                let options: Vec<&String> = values.iter().chain(transitional).collect();
                c.insert("device_class".into(), json!("enum"));
                c.insert("options".into(), json!(options));
                c.insert("value_template".into(), json!(format!("{{{{ {f} }}}}")));
                out.push((topic, Value::Object(c)));
            }
            (Kind::Enum { values, .. }, true) => {
                let (topic, mut c) = entity("select", &s.name, label);
                command(&mut c, &s.name);
                c.insert("options".into(), json!(values));
                c.insert("value_template".into(), json!(format!("{{{{ {f} }}}}")));
                out.push((topic, Value::Object(c)));
            }
            (
                Kind::Enum {
                    values,
                    transitional,
                },
                false,
            ) => {
                let (topic, mut c) = entity("sensor", &s.name, label);
                let options: Vec<&String> = values.iter().chain(transitional).collect();
                c.insert("device_class".into(), json!("enum"));
                c.insert("options".into(), json!(options));
                c.insert("value_template".into(), json!(format!("{{{{ {f} }}}}")));
                out.push((topic, Value::Object(c)));
            }
            (Kind::Bool, writable) => {
                let component = if writable { "switch" } else { "binary_sensor" };
                let (topic, mut c) = entity(component, &s.name, label);
                if writable {
                    command(&mut c, &s.name);
                    c.insert("state_on".into(), json!("true"));
                    c.insert("state_off".into(), json!("false"));
                }
                c.insert("payload_on".into(), json!("true"));
                c.insert("payload_off".into(), json!("false"));
                c.insert(
                    "value_template".into(),
                    json!(format!(
                        "{{% if {f} is none %}}None{{% elif {f} %}}true{{% else %}}false{{% endif %}}"
                    )),
                );
                out.push((topic, Value::Object(c)));
            }
            (Kind::Int { min, max, unit }, true) => {
                let (topic, mut c) = entity("number", &s.name, label);
                command(&mut c, &s.name);
                c.insert("min".into(), json!(min));
                c.insert("max".into(), json!(max));
                c.insert("step".into(), json!(1));
                if let Some(u) = unit {
                    c.insert("unit_of_measurement".into(), json!(u));
                }
                c.insert("value_template".into(), json!(format!("{{{{ {f} }}}}")));
                out.push((topic, Value::Object(c)));
            }
            (Kind::Int { unit, .. }, false) => {
                let (topic, mut c) = entity("sensor", &s.name, label);
                let hours = unit.as_deref() == Some("h") || s.name.ends_with("_hours");
                if hours {
                    c.insert("unit_of_measurement".into(), json!("h"));
                    c.insert("device_class".into(), json!("duration"));
                    c.insert("state_class".into(), json!("total_increasing"));
                } else if let Some(u) = unit {
                    c.insert("unit_of_measurement".into(), json!(u));
                    c.insert("state_class".into(), json!("measurement"));
                }
                c.insert("value_template".into(), json!(format!("{{{{ {f} }}}}")));
                out.push((topic, Value::Object(c)));
            }
            (Kind::Text, writable) => {
                let component = if writable { "text" } else { "sensor" };
                let (topic, mut c) = entity(component, &s.name, label);
                if writable {
                    command(&mut c, &s.name);
                }
                c.insert("value_template".into(), json!(format!("{{{{ {f} }}}}")));
                out.push((topic, Value::Object(c)));
            }
            (Kind::Object, _) if s.name == "errors" => {
                let kinds = state
                    .and_then(|st| st.get("errors"))
                    .and_then(Value::as_object)
                    .map(|m| m.keys().cloned().collect::<Vec<_>>())
                    .unwrap_or_default();
                for kind in kinds {
                    let key = format!("errors_{kind}");
                    let (topic, mut c) = entity("binary_sensor", &key, &format!("{kind} problem"));
                    let k = serde_json::to_string(&kind).expect("a string");
                    c.insert("device_class".into(), json!("problem"));
                    c.insert("entity_category".into(), json!("diagnostic"));
                    c.insert(
                        "value_template".into(),
                        json!(format!(
                            "{{{{ 'ON' if (value_json.get('errors') or {{}}).get({k}, 'ok') != 'ok' else 'OFF' }}}}"
                        )),
                    );
                    out.push((topic, Value::Object(c)));
                }
            }
            (Kind::Object, _) => {}
        }
    }
    out
}

/// A plain MQTT payload (`on`, `42`, `true`) as the value setting `name`
/// takes: a number for an integer, a boolean for a switch, else the text.
pub fn plain_value(settings: &[Setting], name: &str, payload: &str) -> Value {
    let text = payload.trim();
    match settings.iter().find(|s| s.name == name).map(|s| &s.kind) {
        Some(Kind::Bool) => match text.to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" | "1" => Value::Bool(true),
            "false" | "off" | "no" | "0" => Value::Bool(false),
            _ => json!(text),
        },
        Some(Kind::Int { .. }) => text
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| json!(text)),
        Some(Kind::Enum { values, .. }) => values
            .iter()
            .find(|v| v.eq_ignore_ascii_case(text))
            .map_or_else(|| json!(text), |v| json!(v)),
        _ => json!(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_is_reversible_and_leaves_plain_ids_alone() {
        for id in [
            "proj-1",
            "Hall_2 proj",
            "ä/b+c#",
            "_",
            "",
            "a_x41",
            "a_x4",
            "_x_x00",
        ] {
            let e = escape(id);
            assert!(
                e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{e}"
            );
            assert_eq!(unescape(&e).as_deref(), Some(id), "{e}");
        }
        assert_eq!(escape("proj-1"), "proj-1");
        assert_eq!(escape("lamp_hours"), "lamp_hours");
        assert_eq!(escape("Hall_2 proj"), "Hall_2_x20proj");
        assert_eq!(escape("a_x41"), "a_x5fx41");
        assert_eq!(unescape("a b"), None);
    }

    #[test]
    fn plain_values_take_the_setting_type() {
        let settings = vec![
            Setting::projector_power(),
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
        ];
        assert_eq!(plain_value(&settings, "power", "ON"), json!("on"));
        assert_eq!(plain_value(&settings, "mute", "OFF"), json!(false));
        assert_eq!(plain_value(&settings, "volume", " 42 "), json!(42));
        assert_eq!(plain_value(&settings, "volume", "loud"), json!("loud"));
        assert_eq!(plain_value(&settings, "other", "x"), json!("x"));
    }
}
