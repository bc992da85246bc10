//! Utilization from history: hours on per day and lamp hours over time.
//!
//! A device counts as on while its last reported power is `on`, `warming`
//! or `cooling` (the lamp is lit) and it is not known to be unreachable;
//! while it is offline nobody knows, so those hours are not counted.

use serde_json::Value;

use super::query::UsageDay;

/// Milliseconds in a day.
pub const DAY_MS: u64 = 86_400_000;

/// One change that matters for usage.
#[derive(Debug, Clone)]
pub enum Change {
    /// A new `power` value.
    Power(Value),
    /// A new `online` value (`true`, `false`, or `null`: unknown).
    Online(Value),
    /// A new `lamp_hours` value.
    Lamp(Value),
}

/// Midnight (UTC) of the day holding `ms`.
pub fn day_start(ms: u64) -> u64 {
    ms - ms % DAY_MS
}

fn lit(power: &Value) -> bool {
    matches!(power.as_str(), Some("on" | "warming" | "cooling"))
}

fn offline(online: &Value) -> bool {
    matches!(online, Value::Bool(false)) || online.as_i64() == Some(0)
}

/// `YYYY-MM-DD` of a UTC day starting at `ms`.
pub fn date(ms: u64) -> String {
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = (ms / DAY_MS) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Per-day figures for `days` days from `start` (a UTC midnight) up to `now`,
/// from `changes` in time order (those at `start` being the state before it).
pub fn report(changes: &[(u64, Change)], start: u64, days: u32, now: u64) -> Vec<UsageDay> {
    let mut out = Vec::with_capacity(days as usize);
    let mut power = Value::Null;
    let mut online = Value::Null;
    let mut lamp: Option<f64> = None;
    let mut i = 0;
    for d in 0..u64::from(days) {
        let day = start + d * DAY_MS;
        let end = (day + DAY_MS).min(now.max(day));
        let mut on_ms = 0;
        let mut t = day;
        loop {
            // Apply every change up to `t`.
            while i < changes.len() && changes[i].0 <= t {
                match &changes[i].1 {
                    Change::Power(p) => power = p.clone(),
                    Change::Online(o) => online = o.clone(),
                    Change::Lamp(l) => lamp = l.as_f64().or(lamp),
                }
                i += 1;
            }
            let next = changes
                .get(i)
                .map(|c| c.0)
                .filter(|&c| c < end)
                .unwrap_or(end);
            if lit(&power) && !offline(&online) {
                on_ms += next.saturating_sub(t);
            }
            if next >= end {
                break;
            }
            t = next;
        }
        // Lamp hours reported later the same day count for the day.
        while i < changes.len() && changes[i].0 < day + DAY_MS {
            match &changes[i].1 {
                Change::Power(p) => power = p.clone(),
                Change::Online(o) => online = o.clone(),
                Change::Lamp(l) => lamp = l.as_f64().or(lamp),
            }
            i += 1;
        }
        out.push(UsageDay {
            date: date(day),
            hours_on: (on_ms as f64 / 3_600_000.0 * 100.0).round() / 100.0,
            lamp_hours: lamp,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const H: u64 = 3_600_000;

    #[test]
    fn dates_are_civil_utc_days() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(1_795_564_800_000), "2026-11-25");
        assert_eq!(date(951_782_400_000), "2000-02-29");
    }

    #[test]
    fn hours_on_split_across_days_and_pause_while_offline() {
        let start = 10 * DAY_MS;
        let changes = vec![
            (start, Change::Power(json!("off"))),
            (start + 20 * H, Change::Power(json!("warming"))),
            (start + 20 * H + 1, Change::Lamp(json!(100))),
            (start + 21 * H, Change::Power(json!("on"))),
            // Across midnight: 4 h on the first day, 2 h on the next.
            (start + DAY_MS + 2 * H, Change::Online(json!(false))),
            (start + DAY_MS + 3 * H, Change::Online(json!(true))),
            (start + DAY_MS + 4 * H, Change::Power(json!("off"))),
            (start + DAY_MS + 4 * H, Change::Lamp(json!(108))),
        ];
        let days = report(&changes, start, 3, start + 2 * DAY_MS + 5 * H);
        assert_eq!(days[0].hours_on, 4.0);
        assert_eq!(days[0].lamp_hours, Some(100.0));
        assert_eq!(days[1].hours_on, 3.0, "one hour offline is not counted");
        assert_eq!(days[1].lamp_hours, Some(108.0));
        assert_eq!(days[2].hours_on, 0.0);
        assert_eq!(days[2].lamp_hours, Some(108.0), "carried forward");
    }

    #[test]
    fn today_counts_only_up_to_now() {
        let start = 10 * DAY_MS;
        let changes = vec![(start, Change::Power(json!("on")))];
        let days = report(&changes, start, 1, start + 90 * 60_000);
        assert_eq!(days[0].hours_on, 1.5);
        assert_eq!(days[0].lamp_hours, None);
    }
}
