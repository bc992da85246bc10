//! Schedules: firing under a controlled clock, missed runs after downtime
//! reported and not run late, and a real schedule sending commands.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{hub_with, WAIT};
use patchbay_client::{Body, ClientBuilder, PublishOptions};
use patchbay_hub::automation::schedules::{self, ScheduleState};
use patchbay_hub::config::HubConfig;
use patchbay_hub::server::Hub;
use serde_json::{json, Value};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn config(toml_text: &str) -> HubConfig {
    HubConfig::from_toml(toml_text, "test").unwrap()
}

async fn state_until(
    hub: &Hub,
    name: &str,
    what: &str,
    ok: impl Fn(&ScheduleState) -> bool,
) -> ScheduleState {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(s) = schedules::state_of(hub, name) {
            if ok(&s) {
                return s;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const NIGHTLY: &str = r#"
[groups.all]
pattern = "dev/+"
[schedules.nightly]
cron = "0 22 * * MON-FRI"
timezone = "Europe/Berlin"
group = "all"
set = { power = "off" }
"#;

#[tokio::test]
async fn a_schedule_fires_at_its_time_on_a_controlled_clock() {
    let hub = Hub::new(config(NIGHTLY));
    common::wire_only(&hub).await;
    // Wednesday 21:59:59.5 in Berlin (20:59:59.5 UTC).
    let clock = Arc::new(Mutex::new(at("2026-11-25T20:59:59.500Z")));
    let now = {
        let clock = clock.clone();
        move || *clock.lock().unwrap()
    };
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(schedules::run(hub.clone(), stopped, now));
    let first = state_until(&hub, "nightly", "the first look", |_| true).await;
    assert_eq!(first.last_run, None);
    assert_eq!(first.missed_total, 0);
    // 22:00:00.2 in Berlin: due, 200 ms late.
    *clock.lock().unwrap() = at("2026-11-25T21:00:00.200Z");
    let s = state_until(&hub, "nightly", "the run", |s| s.last_run.is_some()).await;
    assert_eq!(
        s.last_run,
        Some(at("2026-11-25T21:00:00Z").timestamp_millis() as u64)
    );
    assert!(
        s.last_outcome.unwrap().contains("0 confirmed"),
        "no devices yet"
    );
    assert_eq!(s.missed_total, 0);
}

#[tokio::test]
async fn runs_missed_while_the_hub_was_down_are_reported_not_run() {
    let hub = Hub::new(config(NIGHTLY));
    common::wire_only(&hub).await;
    // The state a previous run of the hub left: looked at up to Monday noon.
    let before = ScheduleState {
        checked_until: at("2026-11-23T12:00:00Z").timestamp_millis() as u64,
        ..ScheduleState::default()
    };
    let raw =
        serde_json::value::RawValue::from_string(serde_json::to_string(&before).unwrap()).unwrap();
    hub.publish_as_hub("hub/schedules/nightly/state", &raw, true);
    // Back on Thursday at 09:00 UTC: Monday, Tuesday and Wednesday 22:00 Berlin passed.
    let now = || at("2026-11-26T09:00:00Z");
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(schedules::run(hub.clone(), stopped, now));
    let s = state_until(&hub, "nightly", "the missed runs", |s| s.missed_total > 0).await;
    assert_eq!(s.missed_total, 3);
    assert_eq!(s.last_run, None, "nothing is run late");
    assert_eq!(
        s.missed,
        [
            "2026-11-23T21:00:00Z",
            "2026-11-24T21:00:00Z",
            "2026-11-25T21:00:00Z"
        ]
        .map(|t| at(t).timestamp_millis() as u64)
    );
}

#[tokio::test]
async fn a_schedule_sends_its_command_and_lists_its_next_runs() {
    let hub = hub_with(config(
        r#"
[groups.all]
pattern = "dev/+"
[schedules.tick]
cron = "* * * * * *"
group = "all"
set = { power = "on" }
"#,
    ))
    .await;
    let a = ClientBuilder::new(hub.addr.to_string())
        .name("rack")
        .connect()
        .await
        .unwrap();
    a.claim("dev/p1").await.unwrap();
    let retain = || PublishOptions {
        retain: true,
        cid: None,
    };
    let settings = json!([{"name": "power", "label": "Power", "type": "enum", "values": ["on", "off"], "writable": true}]);
    a.publish_acked(
        "dev/p1/meta",
        &Body::from(json!({"id": "p1", "settings": settings})),
        retain(),
    )
    .await
    .unwrap();
    a.publish_acked(
        "dev/p1/online",
        &Body::from(json!({"online": true})),
        retain(),
    )
    .await
    .unwrap();
    let requests = a.requests();
    let r = tokio::time::timeout(WAIT, requests.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        r.cid().unwrap().starts_with("schedule-tick-"),
        "{:?}",
        r.cid()
    );
    let body: Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(body, json!({"power": "on"}));
    r.respond(&Body::from(json!({"power": "on"})))
        .await
        .unwrap();

    let list: Value = reqwest::get(format!("http://{}/api/schedules", hub.http_addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tick = &list[0];
    assert_eq!(tick["name"], "tick");
    let next: Vec<u64> = tick["next_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(next.len(), 3);
    assert!(next.windows(2).all(|w| w[1] - w[0] == 1000), "{next:?}");
    hub.stop().await;
}

#[test]
fn wrong_schedules_are_refused_naming_the_schedule() {
    let e = HubConfig::from_toml(
        "[schedules.x]\ncron = \"0 22 * * FUNDAY\"\nroom = \"Hall\"\nset = { power = \"off\" }\n",
        "hub.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("hub.toml") && e.contains("schedules.x: `cron`"),
        "{e}"
    );
    let e = HubConfig::from_toml(
        "[schedules.x]\ncron = \"0 22 * * *\"\ntimezone = \"Europe/Atlantis\"\nscene = \"s\"\n",
        "hub.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("schedules.x: `timezone`: `Europe/Atlantis`"),
        "{e}"
    );
}

#[tokio::test]
async fn a_schedule_defined_while_the_scheduler_runs_fires_on_time() {
    let hub = Hub::new(config("[groups.all]\npattern = \"dev/+\"\n"));
    common::wire_only(&hub).await;
    let clock = Arc::new(Mutex::new(at("2026-11-25T21:59:59.500Z")));
    let now = {
        let clock = clock.clone();
        move || *clock.lock().unwrap()
    };
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(schedules::run(hub.clone(), stopped, now));
    // Defined as PUT /api/schedules/late does it, after the scheduler started.
    let spec = json!({"cron": "0 22 * * *", "group": "all", "set": {"power": "off"}});
    let raw = serde_json::value::RawValue::from_string(spec.to_string()).unwrap();
    hub.publish_as_hub("hub/schedules/late/spec", &raw, true);
    hub.automation_link().schedules_changed();
    let first = state_until(&hub, "late", "the scheduler takes it up", |_| true).await;
    assert_eq!(first.last_run, None);
    *clock.lock().unwrap() = at("2026-11-25T22:00:00.200Z");
    let s = state_until(&hub, "late", "the run", |s| s.last_run.is_some()).await;
    assert_eq!(
        s.last_run,
        Some(at("2026-11-25T22:00:00Z").timestamp_millis() as u64)
    );
    assert_eq!(s.missed_total, 0);
}

#[tokio::test]
async fn schedules_are_defined_and_deleted_through_the_api_by_admins() {
    let hub = hub_with(config(
        r#"
[[tokens]]
name = "ops"
token = "operator-secret"
role = "operator"
[[tokens]]
name = "boss"
token = "admin-secret"
role = "admin"
[groups.all]
pattern = "dev/+"
[scenes.pause]
[[scenes.pause.steps]]
delay_ms = 1
[schedules.nightly]
cron = "0 22 * * *"
scene = "pause"
"#,
    ))
    .await;
    let base = format!("http://{}/api/schedules", hub.http_addr);
    let http = reqwest::Client::new();
    let put = |name: &str, token: &str, body: Value| {
        http.put(format!("{base}/{name}"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let refused = |body: Value| async {
        let r = put("x", "admin-secret", body).await.unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::BAD_REQUEST);
        let e: Value = r.json().await.unwrap();
        e["error"]["message"].as_str().unwrap().to_owned()
    };
    let e = refused(json!({"cron": "0 25 * * *", "scene": "pause"})).await;
    assert!(e.contains("`cron`: `0 25 * * *` does not parse"), "{e}");
    let e =
        refused(json!({"cron": "0 22 * * *", "timezone": "Mars/Olympus", "scene": "pause"})).await;
    assert!(e.contains("`Mars/Olympus` is not an IANA time zone"), "{e}");
    let e = refused(json!({"cron": "0 22 * * *", "scene": "nope"})).await;
    assert!(e.contains("no scene `nope`"), "{e}");
    let e = refused(json!({"cron": "0 22 * * *", "group": "nope", "set": {"power": "off"}})).await;
    assert!(e.contains("no group `nope`"), "{e}");
    let e =
        refused(json!({"cron": "0 22 * * *", "room": "Nowhere", "set": {"power": "off"}})).await;
    assert!(e.contains("no room `Nowhere`"), "{e}");
    let e = refused(json!({"cron": "0 22 * * *", "scene": "pause", "colour": "red"})).await;
    assert!(e.contains("unknown field `colour`"), "{e}");

    let tick = json!({"cron": "* * * * * *", "scene": "pause", "label": "every second"});
    let r = put("tick", "operator-secret", tick.clone()).await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::FORBIDDEN);
    let r = put("nightly", "admin-secret", tick.clone()).await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::CONFLICT, "config wins");
    let r = put("tick", "admin-secret", tick.clone()).await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let made: Value = r.json().await.unwrap();
    assert_eq!(made["origin"], "api");
    assert_eq!(made["next_ms"].as_array().unwrap().len(), 3);

    // It runs, on the hub's own clock, and is listed beside the config's.
    let deadline = tokio::time::Instant::now() + WAIT;
    let listed = loop {
        let list: Value = http
            .get(&base)
            .bearer_auth("operator-secret")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let tick = list
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "tick")
            .cloned()
            .unwrap();
        if tick["state"]["last_run"].is_u64() {
            break list;
        }
        assert!(tokio::time::Instant::now() < deadline, "tick never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let names: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["origin"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("nightly", "config"), ("tick", "api")]);

    let del = |name: &str, token: &str| {
        http.delete(format!("{base}/{name}"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(
        del("tick", "operator-secret").await.unwrap().status(),
        reqwest::StatusCode::FORBIDDEN
    );
    assert_eq!(
        del("nightly", "admin-secret").await.unwrap().status(),
        reqwest::StatusCode::CONFLICT
    );
    assert_eq!(
        del("tick", "admin-secret").await.unwrap().status(),
        reqwest::StatusCode::NO_CONTENT
    );
    assert_eq!(
        del("tick", "admin-secret").await.unwrap().status(),
        reqwest::StatusCode::NOT_FOUND
    );
    assert!(schedules::find(&hub.hub, "tick").is_none());
    hub.stop().await;
}
