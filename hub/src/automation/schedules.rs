//! Schedules: cron times in a time zone, each running a scene or a group or
//! room command. A run whose time passed while the hub was down (or asleep
//! for longer than [`TOLERANCE`]) is reported as missed, never run late.
//!
//! Schedules come from the hub config or the API (retained at
//! `hub/schedules/<name>/spec`, see [`super::definitions`]); the scheduler
//! follows API changes as they happen.
//!
//! Each schedule's state (the time up to which it has been looked at, its
//! last run, the runs it missed) is a retained message,
//! `hub/schedules/<name>/state`, kept across restarts by the journal; that
//! is how missed runs are known after downtime.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::watch;

use super::bus::Bus;
use super::definitions::{self, Origin as Defined};
use super::groups::{self, GroupSpec};
use crate::journal::Who;
use crate::server::{Hub, Origin};

/// Where each schedule's state is retained.
pub const SCHEDULES_PREFIX: &str = "hub/schedules";

/// How late a run may still start; later, it is reported as missed.
pub const TOLERANCE: Duration = Duration::from_secs(60);

/// The longest the scheduler sleeps before it looks at the clock again.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// Most missed runs listed in a schedule's state (the count goes on).
const MISSED_LISTED: usize = 20;

/// A schedule: when, and what.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Words for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Cron times: `minute hour day-of-month month day-of-week`, e.g.
    /// `0 22 * * MON-FRI` (a leading seconds field is allowed).
    pub cron: String,
    /// IANA time zone the times are in, e.g. `Europe/Berlin` (default `UTC`).
    #[serde(default = "utc")]
    pub timezone: String,
    /// The scene to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scene: Option<String>,
    /// The group to send `set` to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The room to send `set` to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// The settings for the group or room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub set: Option<Map<String, Value>>,
}

fn utc() -> String {
    "UTC".into()
}

/// A schedule by name: the config's, else one defined through the API.
pub fn find(hub: &Hub, name: &str) -> Option<(Defined, Schedule)> {
    definitions::find(hub, &hub.config().schedules, SCHEDULES_PREFIX, name)
}

/// Every schedule, from the config and the API, in name order within each.
pub fn all(hub: &Hub) -> Vec<(String, Defined, Schedule)> {
    definitions::all(hub, &hub.config().schedules, SCHEDULES_PREFIX)
}

/// Refuses a schedule that does not parse or names a scene, group or room
/// the hub does not know now (for schedules defined through the API).
pub fn check_known(hub: &Hub, s: &Schedule) -> Result<(), String> {
    let known_scene = |n: &str| super::scenes::find(hub, n).is_some();
    let known_group = |n: &str| groups::find(hub, n).is_some();
    s.check(&known_scene, &known_group)?;
    if let Some(room) = &s.room {
        if !groups::all_devices(hub)
            .iter()
            .any(|d| d.meta_str("location") == room)
        {
            return Err(format!("no room `{room}`"));
        }
    }
    Ok(())
}

/// Parses a cron expression as schedules take it.
pub fn parse_cron(text: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(text)
        .map_err(|e| format!("`cron`: `{text}` does not parse: {e}"))
}

/// Parses an IANA time zone name.
pub fn parse_zone(name: &str) -> Result<chrono_tz::Tz, String> {
    name.parse::<chrono_tz::Tz>().map_err(|_| {
        format!("`timezone`: `{name}` is not an IANA time zone name (e.g. Europe/Berlin)")
    })
}

impl Schedule {
    /// Refuses a schedule whose times or action do not parse or name nothing known.
    pub fn check(
        &self,
        scenes: &dyn Fn(&str) -> bool,
        groups: &dyn Fn(&str) -> bool,
    ) -> Result<(), String> {
        parse_cron(&self.cron)?;
        parse_zone(&self.timezone)?;
        match (&self.scene, &self.group, &self.room, &self.set) {
            (Some(s), None, None, None) => {
                if !scenes(s) {
                    return Err(format!("no scene `{s}`"));
                }
            }
            (None, Some(g), None, Some(set)) if !set.is_empty() => {
                if !groups(g) {
                    return Err(format!("no group `{g}`"));
                }
            }
            (None, None, Some(_), Some(set)) if !set.is_empty() => {}
            _ => {
                return Err(
                    "a schedule runs a `scene`, or sends `set` to a `group` or a `room`".into(),
                )
            }
        }
        Ok(())
    }

    /// What it does, in words.
    pub fn action(&self) -> String {
        match (&self.scene, &self.group, &self.room) {
            (Some(s), _, _) => format!("scene {s}"),
            (_, Some(g), _) => format!(
                "group {g} {}",
                Value::Object(self.set.clone().unwrap_or_default())
            ),
            (_, _, Some(r)) => format!(
                "room {r} {}",
                Value::Object(self.set.clone().unwrap_or_default())
            ),
            _ => String::new(),
        }
    }
}

/// The fire times after `after`, up to and including `upto`, at most `max`.
pub fn due(
    cron: &Cron,
    zone: chrono_tz::Tz,
    after: DateTime<Utc>,
    upto: DateTime<Utc>,
    max: usize,
) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    // Whole seconds: the cron search starts at the next whole second and
    // excludes it, so a fraction would skip a time due right then.
    let after = DateTime::<Utc>::from_timestamp(after.timestamp(), 0).unwrap_or(after);
    let mut t = after.with_timezone(&zone);
    while out.len() < max {
        let Ok(next) = cron.find_next_occurrence(&t, false) else {
            break;
        };
        let next_utc = next.with_timezone(&Utc);
        if next_utc > upto {
            break;
        }
        out.push(next_utc);
        t = next;
    }
    out
}

/// The next `n` fire times after `now`.
pub fn upcoming(
    cron: &Cron,
    zone: chrono_tz::Tz,
    now: DateTime<Utc>,
    n: usize,
) -> Vec<DateTime<Utc>> {
    due(cron, zone, now, DateTime::<Utc>::MAX_UTC, n)
}

/// What to do at `now` with the fire times due since `after`: the ones to
/// run (late by at most [`TOLERANCE`]) and the ones missed.
pub fn plan(
    cron: &Cron,
    zone: chrono_tz::Tz,
    after: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Vec<DateTime<Utc>>, Vec<DateTime<Utc>>, usize) {
    let times = due(cron, zone, after, now, 10_000);
    let limit = chrono::Duration::from_std(TOLERANCE).expect("small");
    let (run, missed): (Vec<_>, Vec<_>) = times.into_iter().partition(|t| now - *t <= limit);
    // A schedule runs once even if several of its times fell in the window.
    let (run, extra) = match run.split_last() {
        Some((last, earlier)) => (vec![*last], earlier.to_vec()),
        None => (Vec::new(), Vec::new()),
    };
    let count = missed.len() + extra.len();
    let mut missed: Vec<_> = missed.into_iter().chain(extra).collect();
    missed.sort();
    (run, missed, count)
}

/// A schedule's state, as it is retained.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleState {
    /// Fire times up to here have been run or reported (Unix ms).
    pub checked_until: u64,
    /// The last run: when it was due (Unix ms).
    pub last_run: Option<u64>,
    /// What the last run did, in words.
    pub last_outcome: Option<String>,
    /// Times missed while the hub was down or too late (Unix ms, the most recent ones).
    pub missed: Vec<u64>,
    /// How many runs were missed in all.
    pub missed_total: u64,
}

fn state_tag(name: &str) -> String {
    format!("{SCHEDULES_PREFIX}/{name}/state")
}

/// A schedule's state from its retained message.
pub fn state_of(hub: &Hub, name: &str) -> Option<ScheduleState> {
    serde_json::from_str(hub.retained(&state_tag(name))?.body()).ok()
}

async fn save(bus: &Bus, name: &str, s: &ScheduleState) {
    let body = serde_json::to_value(s).expect("serializes");
    if let Err(e) = bus.retain(&state_tag(name), &body).await {
        tracing::warn!(schedule = %name, "the schedule's state could not be published: {e}");
    }
}

/// The schedules' states as retained, read once at start through a snapshot.
async fn saved_states(bus: &Bus) -> BTreeMap<String, ScheduleState> {
    let pattern = state_tag("+");
    let Ok(mut sub) = bus.watch(&[pattern.as_str()]).await else {
        return BTreeMap::new();
    };
    let snapshot = sub.snapshot().await.unwrap_or_default();
    snapshot
        .iter()
        .filter_map(|m| {
            let name = m.tag().strip_prefix(SCHEDULES_PREFIX)?.strip_prefix('/')?;
            let name = name.strip_suffix("/state")?;
            Some((name.to_owned(), m.json().ok()?))
        })
        .collect()
}

fn ms(t: DateTime<Utc>) -> u64 {
    t.timestamp_millis().max(0) as u64
}

fn scheduler() -> Who {
    Who {
        client: "scheduler".into(),
        transport: "internal".into(),
        ..Who::default()
    }
}

/// Runs what a schedule does; returns the outcome in words.
async fn fire(hub: &Arc<Hub>, name: &str, s: &Schedule, due_ms: u64) -> String {
    if let Some(scene) = &s.scene {
        return match hub.scenes().start(hub, scene, scheduler()).await {
            Ok(run) => format!("scene {scene} started (run {run})"),
            Err(e) => e.to_string(),
        };
    }
    let spec = match (&s.group, &s.room) {
        (Some(g), _) => match groups::find(hub, g) {
            Some((_, spec)) => spec,
            None => return format!("no group `{g}`"),
        },
        (_, Some(r)) => GroupSpec {
            location: Some(r.clone()),
            ..GroupSpec::default()
        },
        _ => return "nothing to do".into(),
    };
    let members = groups::all_devices(hub)
        .into_iter()
        .filter(|d| spec.matches(d))
        .collect();
    let origin = Origin {
        who: scheduler(),
        received_ms: crate::server::now_ms(),
        access: None,
    };
    let out = super::fanout::run(
        hub.clone(),
        members,
        s.set.clone().unwrap_or_default(),
        Duration::from_millis(hub.config().max_request_timeout_ms),
        format!("schedule-{name}-{due_ms}"),
        Some(origin),
        hub.config().group_concurrency,
    )
    .await;
    format!(
        "{}: {} confirmed, {} failed, {} skipped",
        out.status, out.confirmed, out.failed, out.skipped
    )
}

type Parsed = BTreeMap<String, (Schedule, Cron, chrono_tz::Tz)>;

/// The schedules as they are defined now, parsed (one that does not parse
/// was refused when it was defined; it is left out).
fn current(hub: &Hub) -> Parsed {
    all(hub)
        .into_iter()
        .filter_map(|(n, _, s)| {
            let cron = parse_cron(&s.cron).ok()?;
            let zone = parse_zone(&s.timezone).ok()?;
            Some((n, (s, cron, zone)))
        })
        .collect()
}

/// Runs the schedules until `shutdown` turns true; `now` is the clock.
/// Schedules defined or deleted through the API take effect at once.
pub async fn run(
    hub: Arc<Hub>,
    mut shutdown: watch::Receiver<bool>,
    now: impl Fn() -> DateTime<Utc> + Send + 'static,
) {
    // Nothing to run: no connection until a schedule is defined.
    while current(&hub).is_empty() {
        tokio::select! {
            _ = hub.automation_link().schedule_change() => {}
            _ = shutdown.changed() => return,
        }
    }
    let Some(bus) = hub
        .automation_link()
        .bus_until("the scheduler", &mut shutdown)
        .await
    else {
        return;
    };
    let mut saved = saved_states(&bus).await;
    let mut states: BTreeMap<String, ScheduleState> = BTreeMap::new();
    loop {
        let schedules = current(&hub);
        let t = now();
        // A schedule new to this run starts from its saved state, else from now.
        states.retain(|n, _| schedules.contains_key(n));
        for n in schedules.keys() {
            if !states.contains_key(n) {
                let s = saved.remove(n).unwrap_or(ScheduleState {
                    checked_until: ms(t),
                    ..ScheduleState::default()
                });
                states.insert(n.clone(), s);
            }
        }
        for (name, (s, cron, zone)) in &schedules {
            let state = states.get_mut(name).expect("one per schedule");
            let after = Utc
                .timestamp_millis_opt(state.checked_until as i64)
                .single()
                .unwrap_or(t);
            let (run, missed, count) = plan(cron, *zone, after, t);
            if count > 0 {
                let list: Vec<String> = missed.iter().map(|m| m.to_rfc3339()).collect();
                tracing::warn!(schedule = %name, missed = count, "schedule runs missed (the hub was down or late); not run late");
                hub.audit(
                    "schedule_missed",
                    scheduler(),
                    format!("schedule {name}"),
                    format!("{count} run(s) missed, not run late: {}", list.join(", ")),
                );
                state.missed.extend(missed.iter().map(|m| ms(*m)));
                let len = state.missed.len();
                state.missed.drain(..len.saturating_sub(MISSED_LISTED));
                state.missed_total += count as u64;
            }
            for due in run {
                let outcome = fire(&hub, name, s, ms(due)).await;
                tracing::info!(schedule = %name, due = %due, "schedule ran: {outcome}");
                hub.audit(
                    "schedule_run",
                    scheduler(),
                    format!("schedule {name}"),
                    format!("{}: {outcome}", s.action()),
                );
                state.last_run = Some(ms(due));
                state.last_outcome = Some(outcome);
            }
            state.checked_until = ms(t);
            save(&bus, name, state).await;
        }
        // Sleep until the next fire time, looking at the clock at least every MAX_SLEEP.
        let t = now();
        let next = schedules
            .values()
            .filter_map(|(_, cron, zone)| upcoming(cron, *zone, t, 1).into_iter().next())
            .min();
        let wait = next
            .and_then(|n| (n - t).to_std().ok())
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        tokio::select! {
            _ = tokio::time::sleep(wait + Duration::from_millis(5)) => {}
            _ = hub.automation_link().schedule_change() => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn weekday_evenings_in_berlin() {
        let cron = parse_cron("0 22 * * MON-FRI").unwrap();
        let zone = parse_zone("Europe/Berlin").unwrap();
        // Wednesday 2026-11-25, 12:00 UTC: next is 22:00 Berlin = 21:00 UTC (winter time).
        let next = upcoming(&cron, zone, at("2026-11-25T12:00:00Z"), 3);
        assert_eq!(next[0], at("2026-11-25T21:00:00Z"));
        assert_eq!(next[1], at("2026-11-26T21:00:00Z"));
        assert_eq!(
            next[2],
            at("2026-11-27T21:00:00Z"),
            "then Friday; not the weekend"
        );
        let after_friday = upcoming(&cron, zone, at("2026-11-27T22:00:00Z"), 1);
        assert_eq!(after_friday[0], at("2026-11-30T21:00:00Z"), "Monday");
        // In summer Berlin is UTC+2.
        let summer = upcoming(&cron, zone, at("2026-07-01T00:00:00Z"), 1);
        assert_eq!(summer[0], at("2026-07-01T20:00:00Z"));
    }

    #[test]
    fn runs_due_now_run_and_older_ones_are_missed() {
        let cron = parse_cron("0 22 * * *").unwrap();
        let zone = parse_zone("UTC").unwrap();
        // On time (30 s late): run.
        let (run, missed, n) = plan(
            &cron,
            zone,
            at("2026-11-25T21:59:00Z"),
            at("2026-11-25T22:00:30Z"),
        );
        assert_eq!(run, vec![at("2026-11-25T22:00:00Z")]);
        assert!(missed.is_empty() && n == 0);
        // Down for three days: three missed, none run late.
        let (run, missed, n) = plan(
            &cron,
            zone,
            at("2026-11-22T12:00:00Z"),
            at("2026-11-25T23:00:00Z"),
        );
        assert!(run.is_empty());
        assert_eq!(n, 4);
        assert_eq!(missed.first(), Some(&at("2026-11-22T22:00:00Z")));
        assert_eq!(missed.last(), Some(&at("2026-11-25T22:00:00Z")));
        // Nothing due.
        let (run, missed, _) = plan(
            &cron,
            zone,
            at("2026-11-25T22:00:00Z"),
            at("2026-11-25T23:00:00Z"),
        );
        assert!(run.is_empty() && missed.is_empty());
    }

    #[test]
    fn bad_times_and_actions_are_refused_with_the_reason() {
        let yes = |_: &str| true;
        let no = |_: &str| false;
        let s = |t: &str| toml::from_str::<Schedule>(t).unwrap();
        assert!(
            s("cron = '0 22 * * MON-FRI'\ntimezone = 'Europe/Berlin'\nscene = 'x'")
                .check(&yes, &yes)
                .is_ok()
        );
        let e = s("cron = '0 25 * * *'\nscene = 'x'")
            .check(&yes, &yes)
            .unwrap_err();
        assert!(e.contains("`0 25 * * *` does not parse"), "{e}");
        let e = s("cron = '0 22 * * *'\ntimezone = 'Mars/Olympus'\nscene = 'x'")
            .check(&yes, &yes)
            .unwrap_err();
        assert!(e.contains("Mars/Olympus"), "{e}");
        let e = s("cron = '0 22 * * *'\nscene = 'x'")
            .check(&no, &yes)
            .unwrap_err();
        assert!(e.contains("no scene `x`"), "{e}");
        let e = s("cron = '0 22 * * *'\ngroup = 'g'")
            .check(&yes, &yes)
            .unwrap_err();
        assert!(e.contains("runs a `scene`"), "{e}");
    }
}
