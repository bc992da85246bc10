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
    // Without an `errors` field, the device's own "back to normal" closes it.
    retain(&a, "dev/p1/state", json!({"lamp_hours": 12})).await;
    a.publish_acked(
        "dev/p1/event",
        &event("error", "lamp failure"),
        PublishOptions::default(),
    )
    .await
    .unwrap();
    alerts_until(&hub, "the lamp event alert again", |a| {
        a.as_array().unwrap().len() == 1
    })
    .await;
    a.publish_acked(
        "dev/p1/event",
        &event("info", "lamp back to normal"),
        PublishOptions::default(),
    )
    .await
    .unwrap();
    alerts_until(&hub, "the lamp event alert closed by the info event", |a| {
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

/// A webhook receiver: answers each POST with the next status of `statuses`
/// and hands the JSON bodies over.
async fn receiver(
    statuses: Vec<u16>,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<(u16, Value)>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/av", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        for status in statuses {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let body = loop {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    assert!(head.starts_with("POST /hooks/av HTTP/1.1"), "{head}");
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap();
                    if body.len() >= len {
                        break body.to_owned();
                    }
                }
                assert!(n > 0, "closed early");
            };
            let reply =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            s.write_all(reply.as_bytes()).await.unwrap();
            let _ = tx.send((status, serde_json::from_str(&body).unwrap()));
        }
    });
    (url, rx)
}

#[tokio::test]
async fn alerts_are_posted_to_the_webhook_with_retries() {
    let (url, mut got) = receiver(vec![500, 200, 200]).await;
    let config = HubConfig::from_toml(
        &format!(
            "[alerts.lamp-hours]\nfield = \"lamp_hours\"\nabove = 2000\nwebhook = \"{url}\"\n"
        ),
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
    retain(&a, "dev/p1/state", json!({"lamp_hours": 2500})).await;
    // Refused once, delivered on the retry.
    let (status, first) = next(&mut got).await;
    assert_eq!(status, 500);
    let (status, again) = next(&mut got).await;
    assert_eq!(status, 200);
    assert_eq!(first, again);
    assert_eq!(again["event"], "opened");
    assert_eq!(again["alert"]["rule"], "lamp-hours");
    assert_eq!(again["alert"]["device"], "p1");
    retain(&a, "dev/p1/state", json!({"lamp_hours": 10})).await;
    let (_, closed) = next(&mut got).await;
    assert_eq!(closed["event"], "closed");
    hub.stop().await;

    let e = HubConfig::from_toml(
        "[alerts.x]\noffline_minutes = 1\nwebhook = \"ftp://x\"\n",
        "hub.toml",
    )
    .unwrap_err();
    assert!(e.to_string().contains("alerts.x: `webhook`"), "{e}");
}

async fn next(got: &mut tokio::sync::mpsc::UnboundedReceiver<(u16, Value)>) -> (u16, Value) {
    tokio::time::timeout(WAIT, got.recv())
        .await
        .unwrap()
        .unwrap()
}
