//! Reloading the configuration in place: tokens added and removed (their
//! connections closed), limits changed for the next operation, a broken
//! file refused with the reason while the running configuration stays, who
//! may reload, and the audit trail.

mod common;

use std::sync::{Arc, Mutex};

use common::{assert_err, hub_with, Raw};
use patchbay_hub::config::HubConfig;
use reqwest::StatusCode;
use serde_json::{json, Value};

const BEFORE: &str = r#"
[[tokens]]
name = "boss"
token = "admin-secret"
role = "admin"
[[tokens]]
name = "ops"
token = "operator-secret"
role = "operator"
[[tokens]]
name = "wall"
token = "viewer-secret"
role = "viewer"
"#;

const AFTER: &str = r#"
max_patterns_per_sub = 1
listen = "127.0.0.1:1"
[[tokens]]
name = "boss"
token = "admin-secret"
role = "admin"
[[tokens]]
name = "ops"
token = "operator-secret"
role = "operator"
[[tokens]]
name = "lectern"
token = "lectern-secret"
role = "operator"
"#;

async fn reload(hub: &patchbay_hub::server::RunningHub, token: &str) -> (StatusCode, Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{}/api/admin/reload", hub.http_addr))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_reload_changes_tokens_and_limits_in_place_and_refuses_a_broken_file() {
    let dir = std::env::temp_dir().join(format!("patchbay-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = HubConfig::from_toml(BEFORE, "hub.toml").unwrap();
    config.data_dir = Some(dir.clone());
    let hub = hub_with(config).await;
    let file = Arc::new(Mutex::new(BEFORE.to_owned()));
    let source = file.clone();
    let (http_listen, data_dir) = (hub.hub.config().http_listen, dir.clone());
    // As the binary does: the file, with the command line's overrides.
    hub.hub.set_config_source(Box::new(move || {
        let mut c =
            HubConfig::from_toml(&source.lock().unwrap(), "hub.toml").map_err(|e| e.to_string())?;
        c.http_listen = http_listen;
        c.data_dir = Some(data_dir.clone());
        Ok(c)
    }));
    let mut ops = Raw::hello(&hub, "desk", Some("operator-secret")).await;
    let mut wall = Raw::hello(&hub, "wall", Some("viewer-secret")).await;
    wall.call(json!({"op": "sub", "tags": ["dev/#"]}), 1).await;

    // Only an admin may reload.
    let (status, _) = reload(&hub, "operator-secret").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    *file.lock().unwrap() = AFTER.to_owned();
    let (status, report) = reload(&hub, "admin-secret").await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["changed"], json!(["max_patterns_per_sub", "tokens"]));
    assert_eq!(report["need_restart"], json!(["listen"]));
    assert_eq!(report["closed"], 1);

    // The removed token's connection is closed, saying why.
    let frames = wall.until_closed().await;
    let last = frames.last().expect("a frame before closing");
    assert_err(last, "unauthorized");
    assert!(
        last["message"].as_str().unwrap().contains("reloaded"),
        "{last}"
    );
    // Its token no longer opens a connection; the new one does.
    let mut c = Raw::connect(&hub).await;
    c.send(json!({"op": "hello", "token": "viewer-secret"}))
        .await;
    assert_err(&c.recv().await, "unauthorized");
    Raw::hello(&hub, "lectern", Some("lectern-secret")).await;
    // A kept token's connection carries on, under the new limits.
    let f = ops
        .call(json!({"op": "sub", "tags": ["dev/a", "dev/b"]}), 2)
        .await;
    assert_err(&f, "too_many_subscriptions");
    let f = ops.call(json!({"op": "sub", "tags": ["dev/a"]}), 3).await;
    assert_eq!(f["op"], "ok", "{f}");
    // The listen address stays what it is until a restart.
    assert!(tokio::net::TcpStream::connect(hub.addr).await.is_ok());

    // A broken file changes nothing and says what is wrong.
    *file.lock().unwrap() = "max_connections = \"many\"\n".to_owned();
    let (status, err) = reload(&hub, "admin-secret").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("hub.toml") && message.contains("max_connections"),
        "{message}"
    );
    assert!(message.contains("stays in force"), "{message}");
    Raw::hello(&hub, "lectern", Some("lectern-secret")).await;
    assert_eq!(ops.call(json!({"op": "ping"}), 4).await["op"], "pong");
    // Nor does one without tokens (an emptied or half-written file reads
    // that way): it would let anyone do anything.
    *file.lock().unwrap() = String::new();
    let (status, err) = reload(&hub, "admin-secret").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no tokens"),
        "{err}"
    );
    let (status, _) = reload(&hub, "").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "tokens are still required"
    );

    // Both are in the audit trail.
    let audit: Value = reqwest::Client::new()
        .get(format!(
            "http://{}/api/audit?kind=config_reloaded",
            hub.http_addr
        ))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let row = &audit["items"][0];
    assert_eq!(row["who"]["token"], "boss", "{audit}");
    assert!(
        row["detail"]
            .as_str()
            .unwrap()
            .contains("1 connection(s) closed"),
        "{audit}"
    );
    hub.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_hub_without_a_file_says_there_is_nothing_to_reload() {
    let hub = hub_with(HubConfig::default()).await;
    let (status, err) = reload(&hub, "").await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["error"]["code"], "not_reloadable");
}
