//! Alert rules against a fake agent: a threshold, an error, an offline
//! device; open, acknowledge, close.

mod common;

use std::time::Duration;

use common::{hub_with, WAIT};
use patchbay_client::{Body, Client, ClientBuilder, PublishOptions};
use patchbay_hub::config::HubConfig;
use patchbay_hub::server::RunningHub;
use serde_json::{json, Value};

async fn retain(c: &Client, tag: &str, body: Value) {
    let opts = PublishOptions {
        retain: true,
        cid: None,
    };
    c.publish_acked(tag, &Body::from(body), opts).await.unwrap();
}

async fn alerts(hub: &RunningHub) -> Value {
    reqwest::get(format!("http://{}/api/alerts", hub.http_addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until the open alerts satisfy `ok`.
async fn alerts_until(hub: &RunningHub, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let a = alerts(hub).await;
        if ok(&a) {
            return a;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {a}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn alerts_open_are_acknowledged_and_close() {
    let config: HubConfig = HubConfig::from_toml(
        r#"
[alerts.lamp-hours]
field = "lamp_hours"
above = 2000
[alerts.errors]
errors = ["fan", "lamp"]
[alerts.offline]
offline_minutes = 0.01
"#,
        "test",
    )
    .unwrap();
    let hub = hub_with(config).await;
    let a = ClientBuilder::new(hub.addr.to_string())
        .name("rack")
        .connect()
        .await
        .unwrap();
    a.claim("dev/p1").await.unwrap();
    retain(&a, "dev/p1/meta", json!({"id": "p1", "settings": []})).await;
    retain(&a, "dev/p1/online", json!({"online": true})).await;
    retain(
        &a,
        "dev/p1/state",
        json!({"lamp_hours": 1999, "errors": {"fan": "ok", "lamp": "ok"}}),
    )
    .await;
    retain(
        &a,
        "dev/p1/state",
        json!({"lamp_hours": 2001, "errors": {"fan": "ok", "lamp": "ok"}}),
    )
    .await;
    let open = alerts_until(&hub, "the lamp alert", |a| a.as_array().unwrap().len() == 1).await;
    assert_eq!(open[0]["rule"], "lamp-hours");
    assert_eq!(open[0]["device"], "p1");
    assert_eq!(open[0]["state"], "open");
    assert!(
        open[0]["message"].as_str().unwrap().contains("2001"),
        "{open}"
    );
    // Retained, for every subscriber.
    assert!(hub.hub.retained("alert/lamp-hours/p1").is_some());

    // Acknowledged: still there until the condition clears.
    let res = reqwest::Client::new()
        .post(format!(
            "http://{}/api/alerts/lamp-hours/p1/ack",
            hub.http_addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let acked: Value = res.json().await.unwrap();
    assert_eq!(acked["state"], "acknowledged");
    assert!(acked["acknowledged_at"].as_u64().is_some());
    let res = reqwest::Client::new()
        .post(format!(
            "http://{}/api/alerts/lamp-hours/p2/ack",
            hub.http_addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    // An error from the device.
    retain(
        &a,
        "dev/p1/state",
        json!({"lamp_hours": 2002, "errors": {"fan": "error", "lamp": "ok"}}),
    )
    .await;
    let open = alerts_until(&hub, "the fan alert", |a| a.as_array().unwrap().len() == 2).await;
    let fan = open
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["rule"] == "errors")
        .unwrap();
    assert_eq!(fan["message"], "fan error");
    let lamp = open
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["rule"] == "lamp-hours")
        .unwrap();
    assert_eq!(
        lamp["state"], "acknowledged",
        "an acknowledgement survives updates: {open}"
    );

    // Both clear.
    retain(
        &a,
        "dev/p1/state",
        json!({"lamp_hours": 10, "errors": {"fan": "ok", "lamp": "ok"}}),
    )
    .await;
    alerts_until(&hub, "all cleared", |a| a.as_array().unwrap().is_empty()).await;
    assert!(hub.hub.retained("alert/lamp-hours/p1").is_none());

    // An error event opens one too (a device without an `errors` field);
    // an informational event does not.
    let event = |level: &str, message: &str| {
        Body::from(json!({"level": level, "code": "lamp", "message": message}))
    };
    a.publish_acked(
        "dev/p1/event",
        &event("info", "lamp back to normal"),
        PublishOptions::default(),
    )
    .await
    .unwrap();
    retain(&a, "dev/p1/state", json!({"lamp_hours": 11})).await;
    a.publish_acked(
        "dev/p1/event",
        &event("error", "lamp failure"),
        PublishOptions::default(),
    )
    .await
    .unwrap();
    let open = alerts_until(&hub, "the lamp event alert", |a| {
        a.as_array().unwrap().len() == 1
    })
    .await;
    assert_eq!(open[0]["message"], "lamp: lamp failure");
    retain(
        &a,
        "dev/p1/state",
        json!({"lamp_hours": 11, "errors": {"fan": "ok", "lamp": "ok"}}),
    )
    .await;
    alerts_until(&hub, "the lamp event alert cleared by the state", |a| {
        a.as_array().unwrap().is_empty()
    })
    .await;

    // Offline for longer than the rule's time (0.6 s here), then back.
    retain(
        &a,
        "dev/p1/online",
        json!({"online": false, "reason": "no reply to %1POWR ?"}),
    )
    .await;
    let open = alerts_until(&hub, "the offline alert", |a| {
        a.as_array().unwrap().len() == 1
    })
    .await;
    assert_eq!(open[0]["rule"], "offline");
    assert!(
        open[0]["message"].as_str().unwrap().contains("no reply"),
        "{open}"
    );
    retain(&a, "dev/p1/online", json!({"online": true})).await;
    alerts_until(&hub, "offline cleared", |a| {
        a.as_array().unwrap().is_empty()
    })
    .await;
    hub.stop().await;
}

#[test]
fn wrong_rules_are_refused_naming_the_rule() {
    let e =
        HubConfig::from_toml("[alerts.hot]\nfield = \"temperature\"\n", "hub.toml").unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("hub.toml") && text.contains("alerts.hot: `field` needs `above` or `below`"),
        "{text}"
    );
    let e = HubConfig::from_toml(
        "[alerts.x]\nerrors = [\"fan\"]\ngroup = \"nope\"\n",
        "hub.toml",
    )
    .unwrap_err();
    assert!(e.to_string().contains("alerts.x: no group `nope`"), "{e}");
}
