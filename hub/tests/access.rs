//! Per-token read and write rules (deny wins) on every way in: the wire
//! protocol (deliveries, snapshots, publish, requests), WebSocket, SSE, and
//! the HTTP API (devices, commands, group commands, the journal).

mod common;

use common::{assert_err, hub_with, Raw, WAIT};
use futures_util::{SinkExt, StreamExt};
use patchbay_client::{Body, ClientBuilder, PublishOptions};
use patchbay_hub::config::HubConfig;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const CONFIG: &str = r#"
[[tokens]]
name = "lt"
token = "lecture-secret"
role = "operator"
read = ["dev/lt-*", "alert/#"]
write = ["dev/lt-*"]
deny = ["dev/lt-9"]
[[tokens]]
name = "rack"
token = "agent-secret"
role = "agent"
claims = ["dev"]
[[tokens]]
name = "boss"
token = "admin-secret"
role = "admin"

[groups.all]
pattern = "dev/+"
"#;

const DEVICES: [&str; 3] = ["lt-1", "lt-9", "hall-1"];

/// An agent for every device, answering commands with the desired state.
async fn agent(hub: &patchbay_hub::server::RunningHub) -> patchbay_client::Client {
    let a = ClientBuilder::new(hub.addr.to_string())
        .name("rack")
        .token("agent-secret")
        .connect()
        .await
        .unwrap();
    a.claim("dev").await.unwrap();
    let retain = PublishOptions {
        retain: true,
        cid: None,
    };
    let settings = json!([{"name": "power", "label": "Power", "type": "enum", "values": ["on", "off"], "writable": true}]);
    for id in DEVICES {
        for (part, body) in [
            (
                "meta",
                json!({"id": id, "settings": settings, "location": "Campus"}),
            ),
            ("state", json!({"power": "off"})),
            ("online", json!({"online": true})),
        ] {
            a.publish_acked(
                &format!("dev/{id}/{part}"),
                &Body::from(body),
                retain.clone(),
            )
            .await
            .unwrap();
        }
    }
    let requests = a.requests();
    tokio::spawn(async move {
        while let Some(r) = requests.next().await {
            let body: Value = r.json().unwrap_or_default();
            let _ = r.respond(&Body::from(body)).await;
        }
    });
    a
}

#[tokio::test]
async fn the_wire_and_websocket_deliver_only_what_a_token_may_read() {
    let hub = hub_with(HubConfig::from_toml(CONFIG, "test").unwrap()).await;
    let a = agent(&hub).await;
    let mut lt = Raw::hello(&hub, "lectern", Some("lecture-secret")).await;
    // Requests for tags it may not write never reach it, though it subscribes.
    lt.call(json!({"op": "sub", "tags": ["site/#"]}), 90).await;
    let mut ops = Raw::hello(&hub, "desk", Some("admin-secret")).await;
    let f = ops
        .call(
            json!({"op": "req", "tag": "site/secret/do", "body": {"password": "x"}, "rid": 1}),
            91,
        )
        .await;
    assert_err(&f, "no_responder");
    lt.send(json!({"op": "sub", "tags": ["dev/+/state"], "snapshot": true, "id": 1}))
        .await;
    let mut tags = Vec::new();
    loop {
        let f = lt.recv().await;
        if f["op"] == "ok" {
            break;
        }
        if f["op"] == "msg" {
            tags.push(f["tag"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(tags, ["dev/lt-1/state"], "the snapshot leaves out the rest");
    // Live: the hall's change does not arrive, the lecture theatre's does.
    for id in ["hall-1", "lt-9", "lt-1"] {
        a.publish_json(&format!("dev/{id}/state"), &json!({"power": "on"}))
            .await
            .unwrap();
    }
    let f = lt.recv().await;
    assert_eq!(f["tag"], "dev/lt-1/state", "{f}");

    // Writing outside the rules is refused, inside it works.
    let f = lt
        .call(json!({"op": "pub", "tag": "dev/hall-1/note", "body": 1}), 2)
        .await;
    assert_err(&f, "forbidden");
    let f = lt
        .call(
            json!({"op": "req", "tag": "dev/hall-1/set", "body": {"power": "on"}, "rid": 3}),
            3,
        )
        .await;
    assert_err(&f, "forbidden");
    let f = lt
        .call(
            json!({"op": "req", "tag": "dev/lt-9/set", "body": {"power": "on"}, "rid": 4}),
            4,
        )
        .await;
    assert_err(&f, "forbidden");
    lt.send(json!({"op": "req", "tag": "dev/lt-1/set", "body": {"power": "on"}, "rid": 5}))
        .await;
    let rep = loop {
        let f = lt.recv().await;
        if f["op"] == "rep" || f["op"] == "err" {
            break f;
        }
    };
    assert_eq!(rep["op"], "rep", "{rep}");
    // Journal questions: only about a device it may read.
    let f = lt
        .call(
            json!({"op": "req", "tag": "hub/journal/audit", "body": {}, "rid": 6}),
            6,
        )
        .await;
    assert_err(&f, "forbidden");

    // The same rules over WebSocket.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", hub.http_addr))
        .await
        .unwrap();
    for frame in [
        json!({"op": "hello", "name": "tablet", "token": "lecture-secret"}),
        json!({"op": "sub", "tags": ["dev/+/online"], "snapshot": true, "id": 1}),
    ] {
        ws.send(Message::text(frame.to_string())).await.unwrap();
    }
    let mut seen = Vec::new();
    loop {
        let Message::Text(t) = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        else {
            continue;
        };
        let f: Value = serde_json::from_str(&t).unwrap();
        if f["op"] == "ok" {
            break;
        }
        if f["op"] == "msg" {
            seen.push(f["tag"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(seen, ["dev/lt-1/online"]);
}

#[tokio::test]
async fn http_and_event_streams_follow_the_same_rules() {
    let hub = hub_with(HubConfig::from_toml(CONFIG, "test").unwrap()).await;
    let _a = agent(&hub).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", hub.http_addr);
    let get = |path: &str| {
        http.get(format!("{base}{path}"))
            .bearer_auth("lecture-secret")
            .send()
    };
    let list: Value = get("/api/devices").await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["lt-1"]);
    assert_eq!(
        get("/api/devices/hall-1").await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get("/api/devices/lt-1").await.unwrap().status(),
        StatusCode::OK
    );
    let patch = |id: &str| {
        http.patch(format!("{base}/api/devices/{id}"))
            .bearer_auth("lecture-secret")
            .json(&json!({"power": "on"}))
            .send()
    };
    assert_eq!(patch("lt-1").await.unwrap().status(), StatusCode::OK);
    // What a token may not read does not exist for it.
    assert_eq!(patch("lt-9").await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(
        patch("hall-1").await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    // A group command reaches only the members the token may command.
    let out: Value = http
        .patch(format!("{base}/api/groups/all"))
        .bearer_auth("lecture-secret")
        .json(&json!({"power": "off"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Members it may not read are not named at all.
    assert_eq!(out["status"], "all", "{out}");
    let members: Vec<&str> = out["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(members, ["lt-1"], "{out}");
    // Nor anywhere else: rooms, groups, agents, metrics.
    for path in ["/api/rooms", "/api/groups", "/api/agents", "/metrics"] {
        let text = get(path).await.unwrap().text().await.unwrap();
        // The agent claims all of `dev`, which the token may not read whole.
        assert!(
            path == "/api/agents" || text.contains("lt-1"),
            "{path}: {text}"
        );
        assert!(
            !text.contains("hall-1") && !text.contains("lt-9"),
            "{path} names a hidden device: {text}"
        );
    }

    // The event stream leaves out what the token may not read.
    let mut res = get("/api/events?tags=dev/%2B/meta").await.unwrap();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !text.contains("event: snapshot") {
        let chunk = tokio::time::timeout_at(deadline, res.chunk())
            .await
            .expect("the snapshot within the wait")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("dev/lt-1/meta"), "{text}");
    assert!(!text.contains("hall-1") && !text.contains("lt-9"), "{text}");
}

#[tokio::test]
async fn alerts_about_devices_a_token_may_not_read_are_hidden_from_it() {
    let config = format!("{CONFIG}\n[alerts.hot]\nfield = \"temp\"\nabove = 50\n");
    let hub = hub_with(HubConfig::from_toml(&config, "test").unwrap()).await;
    let a = agent(&hub).await;
    for id in DEVICES {
        a.publish_acked(
            &format!("dev/{id}/state"),
            &Body::from(json!({"power": "on", "temp": 80})),
            PublishOptions {
                retain: true,
                cid: None,
            },
        )
        .await
        .unwrap();
    }
    let http = reqwest::Client::new();
    let base = format!("http://{}", hub.http_addr);
    let alerts = |token: &'static str| {
        let http = http.clone();
        let url = format!("{base}/api/alerts");
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while alerts("admin-secret").await.as_array().unwrap().len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "three alerts open");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let seen = alerts("lecture-secret").await;
    let devices: Vec<&str> = seen
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["device"].as_str().unwrap())
        .collect();
    assert_eq!(devices, ["lt-1"], "{seen}");
    let ack = |device: &str| {
        http.post(format!("{base}/api/alerts/hot/{device}/ack"))
            .bearer_auth("lecture-secret")
            .send()
    };
    assert_eq!(ack("hall-1").await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(ack("lt-9").await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(ack("lt-1").await.unwrap().status(), StatusCode::OK);
}
