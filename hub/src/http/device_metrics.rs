//! Per-device metrics for Prometheus, named after the PJLink exporters'
//! (`pjlink_power_state`, `pjlink_lamp_hours`...) so their dashboards carry
//! over with a new prefix.

use std::fmt::Write;

use serde_json::Value;

use crate::server::Hub;

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// 0 off, 1 on, 2 cooling, 3 warming; other values have no number.
fn power_number(p: &str) -> Option<u8> {
    match p {
        "off" | "standby" => Some(0),
        "on" => Some(1),
        "cooling" => Some(2),
        "warming" => Some(3),
        _ => None,
    }
}

/// Writes the per-device families for every device the caller `sees`.
pub fn write(out: &mut String, hub: &Hub, sees: impl Fn(&str) -> bool) {
    let mut devices = crate::automation::groups::all_devices(hub);
    devices.retain(|d| sees(&d.id));
    let mut info = String::new();
    let mut online = String::new();
    let mut power = String::new();
    let mut lamps = String::new();
    let mut filters = String::new();
    for d in &devices {
        let id = label(&d.id);
        let _ = writeln!(
            info,
            "patchbay_device_info{{device=\"{id}\",driver=\"{}\",manufacturer=\"{}\",model=\"{}\",location=\"{}\"}} 1",
            label(d.meta_str("driver")),
            label(d.meta_str("manufacturer")),
            label(d.meta_str("model")),
            label(d.meta_str("location")),
        );
        let _ = writeln!(
            online,
            "patchbay_device_online{{device=\"{id}\"}} {}",
            u8::from(d.is_online())
        );
        let state = d.state.as_ref();
        let field = |k: &str| state.and_then(|s| s.get(k));
        if let Some(n) = field("power")
            .and_then(Value::as_str)
            .and_then(power_number)
        {
            let _ = writeln!(power, "patchbay_device_power_state{{device=\"{id}\"}} {n}");
        }
        match field("lamps").and_then(Value::as_array) {
            Some(list) if !list.is_empty() => {
                for (i, l) in list.iter().enumerate() {
                    if let Some(h) = l.get("hours").and_then(Value::as_u64) {
                        let _ = writeln!(
                            lamps,
                            "patchbay_device_lamp_hours{{device=\"{id}\",lamp=\"{}\"}} {h}",
                            i + 1
                        );
                    }
                }
            }
            _ => {
                if let Some(h) = field("lamp_hours").and_then(Value::as_u64) {
                    let _ = writeln!(
                        lamps,
                        "patchbay_device_lamp_hours{{device=\"{id}\",lamp=\"1\"}} {h}"
                    );
                }
            }
        }
        if let Some(h) = field("filter_hours").and_then(Value::as_u64) {
            let _ = writeln!(
                filters,
                "patchbay_device_filter_hours{{device=\"{id}\"}} {h}"
            );
        }
    }
    for (name, kind, help, samples) in [
        (
            "patchbay_device_info",
            "gauge",
            "One per described device, its description in labels.",
            info,
        ),
        (
            "patchbay_device_online",
            "gauge",
            "1 while the device's agent reports it reachable.",
            online,
        ),
        (
            "patchbay_device_power_state",
            "gauge",
            "Power: 0 off, 1 on, 2 cooling, 3 warming.",
            power,
        ),
        (
            "patchbay_device_lamp_hours",
            "gauge",
            "Hours on each lamp.",
            lamps,
        ),
        (
            "patchbay_device_filter_hours",
            "gauge",
            "Hours on the air filter.",
            filters,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        out.push_str(&samples);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("Hall \"2\"\\a\nb"), "Hall \\\"2\\\"\\\\a\\nb");
    }
}
