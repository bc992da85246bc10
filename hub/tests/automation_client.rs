//! Automation is a client of the hub: its commands arrive at agents over
//! the wire from the `automation` connection, the journal records the
//! operator who asked, and nobody else may speak on someone's behalf.

mod common;

use std::time::Duration;

use common::{assert_err, hub_with, Raw, WAIT};
use patchbay_client::{Body, ClientBuilder, PublishOptions};
use patchbay_hub::automation::alerts;
use patchbay_hub::config::HubConfig;
use patchbay_hub::server::Hub;
use serde_json::{json, Value};

const CONFIG: &str = r#"
[[tokens]]
name = "ops"
token = "operator-secret"
role = "operator"
[[tokens]]
name = "rack"
token = "agent-secret"
role = "agent"
claims = ["dev/p1"]

[groups.all]
pattern = "dev/+"
"#;

fn data_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("patchbay-automation-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test]
async fn group_commands_reach_agents_from_automation_and_are_journaled_for_the_operator() {
    let dir = data_dir();
    let mut config = HubConfig::from_toml(CONFIG, "test").unwrap();
    config.data_dir = Some(dir.clone());
    let hub = hub_with(config).await;
    let agent = ClientBuilder::new(hub.addr.to_string())
        .name("rack")
        .token("agent-secret")
        .connect()
        .await
        .unwrap();
    agent.claim("dev/p1").await.unwrap();
    let retain = PublishOptions {
        retain: true,
        cid: None,
    };
    let settings = json!([{"name": "power", "label": "Power", "type": "enum", "values": ["on", "off"], "writable": true}]);
    for (tag, body) in [
        ("dev/p1/meta", json!({"id": "p1", "settings": settings})),
        ("dev/p1/online", json!({"online": true})),
    ] {
        agent
            .publish_acked(tag, &Body::from(body), retain.clone())
            .await
            .unwrap();
    }
    let requests = agent.requests();
    let answered = tokio::spawn(async move {
        let r = tokio::time::timeout(WAIT, requests.next())
            .await
            .expect("a command within the wait")
            .expect("the connection stays");
        let from = r.from().to_owned();
        let cid = r.cid().map(str::to_owned);
        r.respond(&Body::from(json!({"power": "off"})))
            .await
            .unwrap();
        (from, cid)
    });

    let http = reqwest::Client::new();
    let base = format!("http://{}", hub.http_addr);
    let out: Value = http
        .patch(format!("{base}/api/groups/all"))
        .bearer_auth("operator-secret")
        .header("X-Client-Name", "front-desk")
        .json(&json!({"power": "off"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(out["status"], "all", "{out}");
    let (from, cid) = answered.await.unwrap();
    assert_eq!(
        from, "automation",
        "the command came over the wire from automation"
    );
    assert_eq!(cid.as_deref(), out["members"][0]["cid"].as_str());

    let page: Value = http
        .get(format!("{base}/api/commands?device=p1"))
        .bearer_auth("operator-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let who = &page["items"][0]["who"];
    assert_eq!(who["token"], "ops", "{page}");
    assert_eq!(who["client"], "front-desk", "{page}");
    assert_eq!(who["transport"], "http", "{page}");
    hub.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn nobody_else_may_act_for_someone_or_pass_as_automation() {
    let hub = hub_with(HubConfig::from_toml(CONFIG, "test").unwrap()).await;
    let mut c = Raw::hello(&hub, "rack", Some("agent-secret")).await;
    let err = c
        .call(
            json!({"op": "req", "tag": "dev/p1/set", "body": {"power": "on"}, "rid": 1,
                   "for": {"token": "boss", "role": "admin", "client": "x", "peer": "1.2.3.4:5", "transport": "http"}}),
            7,
        )
        .await;
    assert_err(&err, "forbidden");
    assert!(
        err["message"].as_str().unwrap().contains("automation"),
        "{err}"
    );

    let mut c = Raw::connect(&hub).await;
    c.send(json!({"op": "hello", "name": "automation", "token": "operator-secret", "id": 1}))
        .await;
    let err = c.recv().await;
    assert_err(&err, "forbidden");
    // With a wrong token the name does not matter: refused and closed.
    let mut c = Raw::connect(&hub).await;
    c.send(json!({"op": "hello", "name": "automation", "token": "guess-1234", "id": 1}))
        .await;
    let frames = c.until_closed().await;
    assert_err(&frames[0], "unauthorized");

    // A group command of the wrong shape is a bad frame; an unknown group
    // has nobody to answer for it.
    let mut c = Raw::hello(&hub, "desk", Some("operator-secret")).await;
    for (i, (body, code)) in [
        (json!({"group": "all", "settings": {}}), "bad_frame"),
        (
            json!({"group": "all", "room": "Hall", "settings": {"power": "on"}}),
            "bad_frame",
        ),
        (json!({"settings": {"power": "on"}}), "bad_frame"),
        (
            json!({"group": "nope", "settings": {"power": "on"}}),
            "no_responder",
        ),
        (
            json!({"room": "Nowhere", "settings": {"power": "on"}}),
            "no_responder",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let f = c
            .call(
                json!({"op": "req", "tag": "hub/venue/set", "body": body, "rid": i}),
                i as u64 + 20,
            )
            .await;
        assert_err(&f, code);
    }

    // Nobody may claim the hub's own tags, which would stop automation
    // from publishing runs, schedule state and alerts.
    let mut c = Raw::hello(&hub, "rack", Some("operator-secret")).await;
    for (i, prefix) in ["hub", "hub/scene-runs", "alert", "alert/lamp/p1"]
        .iter()
        .enumerate()
    {
        let f = c
            .call(json!({"op": "claim", "prefix": prefix}), i as u64 + 10)
            .await;
        assert_err(&f, "forbidden");
    }
}

/// Waits until `ok` holds for the hub.
async fn until(hub: &Hub, what: &str, ok: impl Fn(&Hub) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !ok(hub) {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn alerts_carry_on_after_a_restart_and_those_of_removed_rules_go() {
    let config = HubConfig::from_toml(
        r#"
[alerts.lamp]
field = "lamp_hours"
above = 2000
[alerts.offline]
offline_minutes = 1
"#,
        "test",
    )
    .unwrap();
    let hub = Hub::new(config);
    // What a previous run left: an acknowledged alert of a rule still
    // configured, and one of a rule that is gone.
    let alert = |rule: &str| {
        let a = json!({"rule": rule, "device": "p1", "state": "acknowledged", "message": "lamp_hours is 2500, above 2000",
                       "since": 1, "acknowledged_by": "ops", "acknowledged_at": 2});
        serde_json::value::RawValue::from_string(a.to_string()).unwrap()
    };
    hub.publish_as_hub("alert/lamp/p1", &alert("lamp"), true);
    hub.publish_as_hub("alert/gone/p1", &alert("gone"), true);
    hub.publish_as_hub("alert/offline/p1", &alert("offline"), true);
    // After a restart the device's reachability is unknown, not back.
    let unknown = serde_json::value::RawValue::from_string(
        json!({"online": null, "reason": "the hub restarted", "last": {"online": false}})
            .to_string(),
    )
    .unwrap();
    hub.publish_as_hub("dev/p1/online", &unknown, true);
    // Last in the snapshot's tag order: when its alert opens, everything
    // before it has been seen.
    let marker =
        serde_json::value::RawValue::from_string(json!({"lamp_hours": 5000}).to_string()).unwrap();
    hub.publish_as_hub("dev/zz/state", &marker, true);
    let addr = common::wire_only(&hub).await;
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(alerts::run(hub.clone(), stopped));

    until(&hub, "the removed rule's alert goes", |h: &Hub| {
        h.retained("alert/gone/p1").is_none()
    })
    .await;
    let kept: Value = serde_json::from_str(hub.retained("alert/lamp/p1").unwrap().body()).unwrap();
    assert_eq!(kept["acknowledged_by"], "ops");
    until(&hub, "the marker's alert", |h: &Hub| {
        h.retained("alert/lamp/zz").is_some()
    })
    .await;
    assert!(
        hub.retained("alert/offline/p1").is_some(),
        "unknown reachability does not close an offline alert"
    );

    // Requests are never routed to the hub's own connections, though
    // automation subscribes to device tags.
    let mut raw = Raw::connect_to(addr).await;
    let f = raw
        .call(
            json!({"op": "req", "tag": "dev/nobody/state", "body": {}, "rid": 1}),
            3,
        )
        .await;
    assert_err(&f, "no_responder");

    // A higher reading keeps the acknowledgement; a low one closes it.
    let agent = ClientBuilder::new(addr.to_string())
        .name("rack")
        .connect()
        .await
        .unwrap();
    let retain = PublishOptions {
        retain: true,
        cid: None,
    };
    agent
        .publish_acked(
            "dev/p1/state",
            &Body::from(json!({"lamp_hours": 2600})),
            retain.clone(),
        )
        .await
        .unwrap();
    until(&hub, "the words follow the reading", |h: &Hub| {
        h.retained("alert/lamp/p1")
            .is_some_and(|r| r.body().contains("2600"))
    })
    .await;
    let a: Value = serde_json::from_str(hub.retained("alert/lamp/p1").unwrap().body()).unwrap();
    assert_eq!(a["acknowledged_by"], "ops", "{a}");
    agent
        .publish_acked(
            "dev/p1/state",
            &Body::from(json!({"lamp_hours": 10})),
            retain,
        )
        .await
        .unwrap();
    until(&hub, "the alert closes", |h: &Hub| {
        h.retained("alert/lamp/p1").is_none()
    })
    .await;
    agent
        .publish_acked(
            "dev/p1/online",
            &Body::from(json!({"online": true})),
            PublishOptions {
                retain: true,
                cid: None,
            },
        )
        .await
        .unwrap();
    until(
        &hub,
        "the offline alert closes when the device is back",
        |h: &Hub| h.retained("alert/offline/p1").is_none(),
    )
    .await;
}

#[tokio::test]
async fn runs_a_stopped_hub_left_running_are_marked_interrupted() {
    let hub = Hub::new(HubConfig::default());
    let run = json!({"id": 7, "scene": "presentation", "status": "running", "who": {"client": "ops"},
        "started": 1, "finished": null, "steps": [
            {"what": "set proj-1 power=on", "status": "done", "started": 1, "finished": 2, "detail": null},
            {"what": "wait until proj-1 power=on", "status": "running", "started": 2, "finished": null, "detail": null},
            {"what": "set proj-1 input=hdmi2", "status": "pending", "started": null, "finished": null, "detail": null}]});
    let raw = serde_json::value::RawValue::from_string(run.to_string()).unwrap();
    hub.publish_as_hub("hub/scene-runs/7", &raw, true);
    common::wire_only(&hub).await;
    tokio::spawn(patchbay_hub::automation::scenes::tidy_after_restart(
        hub.clone(),
    ));
    until(&hub, "the run marked interrupted", |h: &Hub| {
        h.retained("hub/scene-runs/7")
            .is_some_and(|r| r.body().contains("interrupted"))
    })
    .await;
    let run: Value =
        serde_json::from_str(hub.retained("hub/scene-runs/7").unwrap().body()).unwrap();
    assert_eq!(run["status"], "interrupted");
    assert_eq!(run["steps"][0]["status"], "done");
    assert_eq!(run["steps"][1]["status"], "skipped");
    assert_eq!(run["steps"][2]["detail"], "the hub stopped during the run");
    assert!(run["finished"].as_u64().is_some());
}
