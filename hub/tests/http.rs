//! The HTTP API over a real listener: every status code with its error body,
//! correlation ids, SSE resume with Last-Event-ID, WebSocket, OpenAPI,
//! metrics, auth and CORS.

mod common;

use std::time::Duration;

use common::hub_with;
use patchbay_client::{Body, Client, ClientBuilder, PublishOptions, Request, Requests};
use patchbay_hub::config::{HubConfig, Role, TokenConfig};
use patchbay_hub::protocol::ErrorBody;
use patchbay_hub::server::RunningHub;
use reqwest::StatusCode;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

fn url(hub: &RunningHub, path: &str) -> String {
    format!("http://{}{path}", hub.http_addr)
}

fn meta(id: &str) -> Value {
    json!({"id": id, "name": format!("Projector {id}"), "location": "Room 1", "driver": "pjlink",
    "manufacturer": "patchbay", "model": "SIM-1000",
    "settings": [
        {"name":"power","label":"Power","type":"enum","values":["on","off"],"transitional":["warming"],"writable":true},
        {"name":"input","label":"Input","type":"enum","values":["hdmi1","hdmi2"],"writable":true},
        {"name":"lamp_hours","label":"Lamp","type":"int","min":0,"max":99999,"writable":false}
    ]})
}

/// A fake agent owning `dev/<id>` for each id, online unless listed offline.
async fn agent(hub: &RunningHub, ids: &[&str], offline: &[&str]) -> (Client, Requests) {
    let c = ClientBuilder::new(hub.addr.to_string())
        .name("fake-agent")
        .no_reconnect()
        .connect()
        .await
        .unwrap();
    let retain = PublishOptions {
        retain: true,
        cid: None,
    };
    for id in ids {
        c.claim(&format!("dev/{id}")).await.unwrap();
        c.publish_acked(
            &format!("dev/{id}/meta"),
            &Body::from(meta(id)),
            retain.clone(),
        )
        .await
        .unwrap();
        let state = json!({"power":"off","input":"hdmi1"});
        c.publish_acked(
            &format!("dev/{id}/state"),
            &Body::from(state),
            retain.clone(),
        )
        .await
        .unwrap();
        let online = !offline.contains(id);
        let reason = if online {
            Value::Null
        } else {
            json!("cannot connect to 10.0.0.9:4352")
        };
        let body = Body::from(json!({"online": online, "reason": reason}));
        c.publish_acked(&format!("dev/{id}/online"), &body, retain.clone())
            .await
            .unwrap();
    }
    let requests = c.requests();
    (c, requests)
}

async fn next_request(requests: &Requests) -> Request {
    tokio::time::timeout(WAIT, requests.next())
        .await
        .unwrap()
        .unwrap()
}

/// Publishes a retained value as `client`, waiting for the hub.
async fn retain(client: &Client, tag: &str, body: Value) {
    let opts = PublishOptions {
        retain: true,
        cid: None,
    };
    client
        .publish_acked(tag, &Body::from(body), opts)
        .await
        .unwrap();
}

async fn error_of(res: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(res.status(), status);
    assert_eq!(res.headers()["content-type"], "application/json");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

#[tokio::test]
async fn discovery_filters_and_detail() {
    let hub = hub_with(HubConfig::default()).await;
    let (_a, _ev) = agent(&hub, &["p1", "p2"], &["p2"]).await;
    let list: Value = http()
        .get(url(&hub, "/api/devices"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["id"], "p1");
    assert_eq!(list[0]["online"], true);
    assert_eq!(list[1]["reason"], "cannot connect to 10.0.0.9:4352");
    assert!(list[0]["updated_ms"].as_u64().unwrap() > 0);
    for (query, ids) in [
        ("?online=true", vec!["p1"]),
        ("?online=false", vec!["p2"]),
        ("?driver=PJLINK", vec!["p1", "p2"]),
        ("?driver=escvp21", vec![]),
        ("?location=room%201", vec!["p1", "p2"]),
        ("?q=projector%20p2", vec!["p2"]),
    ] {
        let got: Vec<Value> = http()
            .get(url(&hub, &format!("/api/devices{query}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let got: Vec<&str> = got.iter().map(|d| d["id"].as_str().unwrap()).collect();
        assert_eq!(got, ids, "{query}");
    }
    let one: Value = http()
        .get(url(&hub, "/api/devices/p1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["meta"]["model"], "SIM-1000");
    assert_eq!(one["state"]["power"], "off");
    assert_eq!(one["online"]["online"], true);

    let res = http()
        .get(url(&hub, "/api/devices?online=maybe"))
        .send()
        .await
        .unwrap();
    error_of(res, StatusCode::BAD_REQUEST, "bad_request").await;
    let res = http()
        .get(url(&hub, "/api/devices/nope"))
        .send()
        .await
        .unwrap();
    let body = error_of(res, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(body["error"]["message"], "unknown device `nope`");
    let res = http()
        .get(url(&hub, "/no/such/route"))
        .send()
        .await
        .unwrap();
    error_of(res, StatusCode::NOT_FOUND, "not_found").await;
    let res = http()
        .delete(url(&hub, "/api/devices/p1"))
        .send()
        .await
        .unwrap();
    error_of(res, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;

    let agents: Value = http()
        .get(url(&hub, "/api/agents"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(agents[0]["name"], "fake-agent");
    assert_eq!(agents[0]["devices"], json!(["p1", "p2"]));
    assert!(agents[0]["address"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    hub.stop().await;
}

#[tokio::test]
async fn commands_and_every_status_code() {
    let hub = hub_with(HubConfig {
        http_body_limit: 1024,
        max_request_timeout_ms: 300,
        ..HubConfig::default()
    })
    .await;
    let (a, ev) = agent(&hub, &["p1", "p2"], &["p2"]).await;
    let patch = |id: &str, body: &str| {
        http()
            .patch(url(&hub, &format!("/api/devices/{id}")))
            .header("content-type", "application/json")
            .body(body.to_owned())
    };

    // 200 with the confirmed state; the correlation id travels to the agent and back.
    let pending = tokio::spawn(
        patch("p1", r#"{"power":"on"}"#)
            .header("x-correlation-id", "op-42")
            .send(),
    );
    let r = next_request(&ev).await;
    assert_eq!((r.tag(), r.cid()), ("dev/p1/set", Some("op-42")));
    assert_eq!(r.json::<Value>().unwrap(), json!({"power":"on"}));
    r.respond(&Body::from(json!({"power":"on","input":"hdmi1"})))
        .await
        .unwrap();
    let res = pending.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-correlation-id"], "op-42");
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"power":"on","input":"hdmi1"})
    );

    // Without a correlation id, one is generated and returned.
    let pending = tokio::spawn(patch("p1", r#"{"input":"hdmi2"}"#).send());
    let r = next_request(&ev).await;
    let sent_cid = r.cid().map(str::to_owned);
    r.respond(&Body::from(json!({"power":"on","input":"hdmi2"})))
        .await
        .unwrap();
    let res = pending.await.unwrap().unwrap();
    let cid = res.headers()["x-correlation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(Some(cid.as_str()), sent_cid.as_deref());
    assert!(cid.starts_with("http-"), "{cid}");

    // 409 busy, 502 device error, 504 device timeout: the agent's own codes.
    for (code, status) in [
        ("busy", StatusCode::CONFLICT),
        ("device_error", StatusCode::BAD_GATEWAY),
        ("device_timeout", StatusCode::GATEWAY_TIMEOUT),
    ] {
        let pending = tokio::spawn(patch("p1", r#"{"power":"off"}"#).send());
        let r = next_request(&ev).await;
        let e = ErrorBody::new(code, format!("the device said {code}"));
        r.respond_result(Err(&e)).await.unwrap();
        let body = error_of(pending.await.unwrap().unwrap(), status, code).await;
        assert_eq!(body["error"]["message"], format!("the device said {code}"));
    }

    // 504 when the agent does not answer in time (the hub's `max_request_timeout_ms`
    // caps the wait); the answer says the outcome is unknown and gives the cid.
    let res = http()
        .patch(url(&hub, "/api/devices/p1"))
        .header("x-correlation-id", "slow-1")
        .body(r#"{"power":"off"}"#)
        .send()
        .await
        .unwrap();
    drop(next_request(&ev).await);
    let body = error_of(res, StatusCode::GATEWAY_TIMEOUT, "timeout").await;
    assert_eq!(body["error"]["cid"], "slow-1");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("outcome is unknown"), "{message}");
    assert!(message.contains("slow-1"), "{message}");
    // A caller may ask for a short wait; out of range is refused.
    let res = http()
        .patch(url(&hub, "/api/devices/p1?timeout_ms=50"))
        .body(r#"{"power":"off"}"#)
        .send()
        .await
        .unwrap();
    drop(next_request(&ev).await);
    error_of(res, StatusCode::GATEWAY_TIMEOUT, "timeout").await;
    for bad in ["0", "301"] {
        let res = http()
            .patch(url(&hub, &format!("/api/devices/p1?timeout_ms={bad}")))
            .body(r#"{"power":"off"}"#)
            .send()
            .await
            .unwrap();
        let body = error_of(res, StatusCode::BAD_REQUEST, "bad_request").await;
        assert_eq!(
            body["error"]["message"],
            "`timeout_ms` must be from 1 to 300"
        );
    }

    // 422 before anything is sent: the offending setting and the allowed values.
    let body = error_of(
        patch("p1", r#"{"power":"standby"}"#).send().await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
    )
    .await;
    assert_eq!(body["error"]["setting"], "power");
    assert_eq!(body["error"]["allowed"], "on, off");
    let body = error_of(
        patch("p1", r#"{"lamp_hours":3}"#).send().await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
    )
    .await;
    assert_eq!(body["error"]["message"], "`lamp_hours` is read-only");
    error_of(
        patch("p1", r#"{"zoom":3}"#).send().await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
    )
    .await;
    error_of(
        patch("p1", "[1,2]").send().await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_value",
    )
    .await;
    // 400 for a body that is not JSON, 413 for one over the limit.
    error_of(
        patch("p1", "{power").send().await.unwrap(),
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    let big = format!(r#"{{"power":"{}"}}"#, "x".repeat(4096));
    error_of(
        patch("p1", &big).send().await.unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    // 404 unknown device, 503 offline device.
    error_of(
        patch("nope", r#"{"power":"on"}"#).send().await.unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let body = error_of(
        patch("p2", r#"{"power":"on"}"#).send().await.unwrap(),
        StatusCode::SERVICE_UNAVAILABLE,
        "offline",
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot connect to 10.0.0.9:4352"),
        "{body}"
    );

    // 503 when the agent disappears in the middle of a command.
    let pending = tokio::spawn(patch("p1", r#"{"power":"off"}"#).send());
    let r = next_request(&ev).await;
    drop((a, ev, r));
    error_of(
        pending.await.unwrap().unwrap(),
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    )
    .await;
    // And afterwards the hub's last will marks the device offline: 503 at once.
    error_of(
        patch("p1", r#"{"power":"off"}"#).send().await.unwrap(),
        StatusCode::SERVICE_UNAVAILABLE,
        "offline",
    )
    .await;
    hub.stop().await;
}

fn token(t: &str, role: Role) -> TokenConfig {
    TokenConfig {
        name: None,
        token: t.into(),
        role,
        claims: if role == Role::Agent {
            vec!["dev".into()]
        } else {
            vec![]
        },
        read: Vec::new(),
        write: Vec::new(),
        deny: Vec::new(),
    }
}

#[tokio::test]
async fn bearer_tokens_and_roles() {
    let hub = hub_with(HubConfig {
        tokens: vec![
            token("viewer-token", Role::Viewer),
            token("operator-token", Role::Operator),
        ],
        ..HubConfig::default()
    })
    .await;
    let res = http().get(url(&hub, "/api/devices")).send().await.unwrap();
    error_of(res, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let res = http()
        .get(url(&hub, "/api/devices"))
        .bearer_auth("wrong-token")
        .send()
        .await
        .unwrap();
    error_of(res, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let res = http()
        .get(url(&hub, "/api/devices"))
        .bearer_auth("viewer-token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = http()
        .get(url(&hub, "/api/devices?token=viewer-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = http()
        .patch(url(&hub, "/api/devices/p1"))
        .bearer_auth("viewer-token")
        .body("{}")
        .send()
        .await
        .unwrap();
    let body = error_of(res, StatusCode::FORBIDDEN, "forbidden").await;
    assert_eq!(
        body["error"]["message"],
        "the `viewer` role may not change devices"
    );
    let res = http()
        .patch(url(&hub, "/api/devices/p1"))
        .bearer_auth("operator-token")
        .body("{}")
        .send()
        .await
        .unwrap();
    error_of(res, StatusCode::NOT_FOUND, "not_found").await;
    // Health stays open for load balancers.
    assert_eq!(
        http()
            .get(url(&hub, "/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    hub.stop().await;
}

/// Reads SSE events from a response until `n` have arrived: (id, event, data).
async fn sse_events(
    res: &mut reqwest::Response,
    buf: &mut String,
    n: usize,
) -> Vec<(Option<u64>, String, Value)> {
    let mut out = Vec::new();
    while out.len() < n {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if !data.is_empty() {
                out.push((id, event, serde_json::from_str(&data).unwrap()));
            }
        }
        if out.len() >= n {
            break;
        }
        let chunk = tokio::time::timeout(WAIT, res.chunk())
            .await
            .expect("sse stalled")
            .unwrap()
            .expect("sse ended");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    out
}

#[tokio::test]
async fn sse_snapshot_live_and_resume_with_last_event_id() {
    let hub = hub_with(HubConfig::default()).await;
    let (a, _ev) = agent(&hub, &["p1", "p2", "p3"], &[]).await;
    let mut res = http()
        .get(url(&hub, "/api/events?tags=dev/%2B/state"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut buf = String::new();
    let first = sse_events(&mut res, &mut buf, 4).await;
    let tags: Vec<&str> = first[..3]
        .iter()
        .map(|(_, _, d)| d["tag"].as_str().unwrap())
        .collect();
    assert_eq!(tags, ["dev/p1/state", "dev/p2/state", "dev/p3/state"]);
    assert_eq!(first[3].1, "snapshot");
    // The end of the snapshot names the hub process, as /healthz does: a
    // page that sees it change knows the hub restarted.
    let instance = first[3].2["instance"].as_str().unwrap().to_owned();
    assert_eq!(instance.len(), 16, "{instance}");
    let health = |hub| async move {
        let body: Value = http()
            .get(url(hub, "/healthz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["instance"].as_str().unwrap().to_owned()
    };
    assert_eq!(health(&hub).await, instance);
    let other = hub_with(HubConfig::default()).await;
    assert_ne!(health(&other).await, instance);
    let before = patchbay_hub::server::now_ms();
    retain(&a, "dev/p1/state", json!({"power":"warming"})).await;
    let live = sse_events(&mut res, &mut buf, 1).await;
    assert_eq!(live[0].2["body"]["power"], "warming");
    // Live messages carry the hub's time.
    let time = live[0].2["time"].as_u64().unwrap();
    assert!(
        time >= before && time <= patchbay_hub::server::now_ms(),
        "{time}"
    );
    let last_id = live[0].0.unwrap();
    drop(res);

    // While disconnected: p2 changes twice, p3 once, p1 not at all.
    retain(&a, "dev/p2/state", json!({"power":"on"})).await;
    retain(&a, "dev/p2/state", json!({"power":"cooling"})).await;
    retain(&a, "dev/p3/state", json!({"power":"on"})).await;
    let mut res = http()
        .get(url(&hub, "/api/events?tags=dev/%2B/state"))
        .header("last-event-id", last_id.to_string())
        .send()
        .await
        .unwrap();
    let mut buf = String::new();
    let resumed = sse_events(&mut res, &mut buf, 3).await;
    let got: Vec<(String, Value)> = resumed[..2]
        .iter()
        .map(|(_, _, d)| {
            (
                d["tag"].as_str().unwrap().to_owned(),
                d["body"]["power"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("dev/p2/state".to_owned(), json!("cooling")),
            ("dev/p3/state".to_owned(), json!("on"))
        ],
        "exactly the state missed, latest values, nothing already seen"
    );
    assert!(resumed[..2].iter().all(|(id, _, _)| id.unwrap() > last_id));
    assert_eq!(resumed[2].1, "snapshot");

    let res = http()
        .get(url(&hub, "/api/events?tags=a//b"))
        .send()
        .await
        .unwrap();
    error_of(res, StatusCode::BAD_REQUEST, "bad_request").await;
    let res = http()
        .get(url(&hub, "/api/events"))
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    error_of(res, StatusCode::BAD_REQUEST, "bad_request").await;
    hub.stop().await;
}

#[tokio::test]
async fn websocket_speaks_the_wire_protocol() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let hub = hub_with(HubConfig::default()).await;
    let (a, _ev) = agent(&hub, &["p1"], &[]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", hub.http_addr))
        .await
        .unwrap();
    ws.send(Message::text(r#"{"op":"hello","name":"browser","id":1}"#))
        .await
        .unwrap();
    ws.send(Message::text(
        r#"{"op":"sub","tags":["dev/+/state"],"snapshot":true}"#,
    ))
    .await
    .unwrap();
    async fn next<S>(ws: &mut S) -> Value
    where
        S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
            + Unpin,
    {
        loop {
            if let Message::Text(t) = tokio::time::timeout(WAIT, ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
            {
                return serde_json::from_str::<Value>(&t).unwrap();
            }
        }
    }
    assert_eq!(next(&mut ws).await["op"], "welcome");
    assert_eq!(next(&mut ws).await["op"], "snapshot");
    let m = next(&mut ws).await;
    assert_eq!(
        (m["op"].as_str(), m["tag"].as_str()),
        (Some("msg"), Some("dev/p1/state"))
    );
    assert_eq!(next(&mut ws).await["op"], "ok");
    retain(&a, "dev/p1/state", json!({"power":"on"})).await;
    assert_eq!(next(&mut ws).await["body"]["power"], "on");
    ws.send(Message::text("garbage")).await.unwrap();
    assert_eq!(next(&mut ws).await["code"], "bad_frame");
    hub.stop().await;
}

#[tokio::test]
async fn openapi_lists_every_route_and_metrics_count() {
    let hub = hub_with(HubConfig::default()).await;
    let (_a, _ev) = agent(&hub, &["p1"], &[]).await;
    let doc: Value = http()
        .get(url(&hub, "/api/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (path, method) in [
        ("/api/devices", "get"),
        ("/api/devices/{id}", "get"),
        ("/api/devices/{id}", "patch"),
        ("/api/agents", "get"),
        ("/api/events", "get"),
        ("/ws", "get"),
        ("/healthz", "get"),
        ("/metrics", "get"),
        ("/api/openapi.json", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]["ErrorResponse"].is_object());

    let text = http()
        .get(url(&hub, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "patchbay_devices_online 1",
        "patchbay_connections 1",
        "patchbay_retained 3",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    assert!(text.contains("patchbay_requests_total{outcome=\"ok\"} 0"));
    assert!(text.contains("# TYPE patchbay_messages_routed_total counter"));
    hub.stop().await;
}

#[tokio::test]
async fn cors_is_configurable() {
    let hub = hub_with(HubConfig {
        cors_origins: vec!["http://console.example".into()],
        ..HubConfig::default()
    })
    .await;
    let res = http()
        .request(reqwest::Method::OPTIONS, url(&hub, "/api/devices"))
        .header("origin", "http://console.example")
        .header("access-control-request-method", "PATCH")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "http://console.example"
    );
    let res = http()
        .get(url(&hub, "/api/devices"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
    hub.stop().await;
}
