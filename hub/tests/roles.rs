//! Who may do what with venue operations: viewers read, operators run
//! group commands and scenes and acknowledge alerts, admins define groups.

mod common;

use common::hub_with;
use patchbay_hub::config::HubConfig;
use reqwest::StatusCode;
use serde_json::json;

const CONFIG: &str = r#"
[[tokens]]
name = "wall"
token = "viewer-secret"
role = "viewer"
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
"#;

#[tokio::test]
async fn viewers_read_operators_run_admins_define() {
    let hub = hub_with(HubConfig::from_toml(CONFIG, "test").unwrap()).await;
    let base = format!("http://{}", hub.http_addr);
    let http = reqwest::Client::new();
    let status = |r: reqwest::Response| r.status();

    for token in ["viewer-secret", "operator-secret", "admin-secret"] {
        for path in [
            "/api/rooms",
            "/api/groups",
            "/api/scenes",
            "/api/schedules",
            "/api/alerts",
        ] {
            let r = http
                .get(format!("{base}{path}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{token} reads {path}");
        }
    }
    let r = http.get(format!("{base}/api/groups")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Group commands and scenes: operators and admins, not viewers.
    let patch = |token: &'static str| {
        http.patch(format!("{base}/api/groups/all"))
            .bearer_auth(token)
            .json(&json!({"power": "off"}))
            .send()
    };
    assert_eq!(
        status(patch("viewer-secret").await.unwrap()),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(patch("operator-secret").await.unwrap()),
        StatusCode::OK
    );
    let run = |token: &'static str| {
        http.post(format!("{base}/api/scenes/pause/run"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(
        status(run("viewer-secret").await.unwrap()),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(run("operator-secret").await.unwrap()),
        StatusCode::ACCEPTED
    );
    let ack = http
        .post(format!("{base}/api/alerts/r/d/ack"))
        .bearer_auth("viewer-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(ack.status(), StatusCode::FORBIDDEN);

    // Definitions: admins only.
    let put = |token: &'static str| {
        http.put(format!("{base}/api/groups/front"))
            .bearer_auth(token)
            .json(&json!({"ids": ["p1"]}))
            .send()
    };
    let r = put("operator-secret").await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`admin` role"),
        "{body}"
    );
    assert_eq!(
        status(put("viewer-secret").await.unwrap()),
        StatusCode::FORBIDDEN
    );
    assert_eq!(status(put("admin-secret").await.unwrap()), StatusCode::OK);
    let del = |token: &'static str| {
        http.delete(format!("{base}/api/groups/front"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(
        status(del("operator-secret").await.unwrap()),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(del("admin-secret").await.unwrap()),
        StatusCode::NO_CONTENT
    );
    hub.stop().await;
}

#[tokio::test]
async fn nobody_but_the_hub_publishes_definitions_runs_or_alerts() {
    let hub = hub_with(HubConfig::default()).await;
    let c = patchbay_client::ClientBuilder::new(hub.addr.to_string())
        .name("forger")
        .connect()
        .await
        .unwrap();
    for tag in [
        "hub/groups/all/spec",
        "hub/scene-runs/1",
        "alert/lamp/p1",
        "hub",
    ] {
        let opts = patchbay_client::PublishOptions {
            retain: true,
            cid: None,
        };
        let e = c
            .publish_acked(
                tag,
                &patchbay_client::Body::from(json!({"ids": ["x"]})),
                opts,
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("forbidden"), "{tag}: {e}");
        assert!(hub.hub.retained(tag).is_none(), "{tag}");
    }
    // Tags that merely start with the same letters are anyone's.
    let opts = patchbay_client::PublishOptions {
        retain: true,
        cid: None,
    };
    c.publish_acked("hubs/lobby", &patchbay_client::Body::from(json!(1)), opts)
        .await
        .unwrap();
    hub.stop().await;
}
