//! The journal: commands with who sent them and how they ended, device
//! history, audit, usage, retained values across a restart, a full disk,
//! and bad queries; each against a real file in a temp folder.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{hub_with, WAIT};
use patchbay_client::{Body, Client, ClientBuilder, PublishOptions, RequestOptions, Requests};
use patchbay_hub::config::{HubConfig, Role, TokenConfig};
use patchbay_hub::server::RunningHub;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn data_dir(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "patchbay-journal-{name}-{}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(dir: &std::path::Path) -> HubConfig {
    HubConfig {
        data_dir: Some(dir.to_path_buf()),
        ..HubConfig::default()
    }
}

fn tokens() -> Vec<TokenConfig> {
    vec![
        TokenConfig {
            name: Some("ops".into()),
            token: "operator-secret".into(),
            role: Role::Operator,
            claims: vec![],
            read: Vec::new(),
            write: Vec::new(),
            deny: Vec::new(),
        },
        TokenConfig {
            name: Some("rack-1".into()),
            token: "agent-secret-1".into(),
            role: Role::Agent,
            claims: vec!["dev".into()],
            read: Vec::new(),
            write: Vec::new(),
            deny: Vec::new(),
        },
    ]
}

fn url(hub: &RunningHub, path: &str) -> String {
    format!("http://{}{path}", hub.http_addr)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

async fn get(hub: &RunningHub, path: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = http().get(url(hub, path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    assert_eq!(res.headers()["content-type"], "application/json", "{path}");
    (status, res.json().await.unwrap())
}

async fn retain(c: &Client, tag: &str, body: Value) -> u64 {
    let opts = PublishOptions {
        retain: true,
        cid: None,
    };
    c.publish_acked(tag, &Body::from(body), opts).await.unwrap()
}

/// A fake agent owning `dev/<id>` for each id, described and online.
async fn agent(hub: &RunningHub, token: Option<&str>, ids: &[&str]) -> (Client, Requests) {
    let mut b = ClientBuilder::new(hub.addr.to_string())
        .name("rack-agent")
        .no_reconnect();
    if let Some(t) = token {
        b = b.token(t);
    }
    let c = b.connect().await.unwrap();
    for id in ids {
        c.claim(&format!("dev/{id}")).await.unwrap();
        let settings = json!([{"name":"power","label":"Power","type":"enum","values":["on","off"],"writable":true},
            {"name":"input","label":"Input","type":"enum","values":["hdmi1","hdmi2"],"writable":true}]);
        retain(&c, &format!("dev/{id}/meta"), json!({"id": id, "name": id, "location": "Room 1", "driver": "pjlink", "settings": settings})).await;
        retain(
            &c,
            &format!("dev/{id}/state"),
            json!({"power": "off", "input": "hdmi1", "lamp_hours": 100}),
        )
        .await;
        retain(
            &c,
            &format!("dev/{id}/online"),
            json!({"online": true, "reason": null}),
        )
        .await;
    }
    let requests = c.requests();
    (c, requests)
}

async fn next_request(requests: &Requests) -> patchbay_client::Request {
    tokio::time::timeout(WAIT, requests.next())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn commands_are_journaled_with_who_sent_them_and_how_they_ended() {
    let dir = data_dir("commands");
    let hub = hub_with(HubConfig {
        tokens: tokens(),
        ..config(&dir)
    })
    .await;
    let (a, requests) = agent(&hub, Some("agent-secret-1"), &["p1"]).await;
    tokio::spawn(async move {
        while let Some(r) = requests.next().await {
            let desired: Value = serde_json::from_slice(r.body()).unwrap();
            if desired["input"] == "hdmi2" {
                let _ = r
                    .respond_error(
                        patchbay_client::device::DeviceErrorCode::DeviceError,
                        "the projector refused the input",
                    )
                    .await;
            } else {
                let _ = r
                    .respond(&Body::from(json!({"power": "on", "input": "hdmi1"})))
                    .await;
            }
        }
    });

    // Over HTTP, as the console sends it.
    let res = http()
        .patch(url(&hub, "/api/devices/p1"))
        .bearer_auth("operator-secret")
        .header("x-correlation-id", "op-1")
        .header("x-client-name", "console")
        .json(&json!({"power": "on"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // Over the wire, refused by the device.
    let ctl = ClientBuilder::new(hub.addr.to_string())
        .name("lectern-panel")
        .token("operator-secret")
        .no_reconnect()
        .connect()
        .await
        .unwrap();
    let opts = RequestOptions {
        timeout: Some(WAIT),
        cid: Some("panel-7"),
        on_behalf: None,
    };
    let err = ctl
        .request_with("dev/p1/set", &Body::from(json!({"input": "hdmi2"})), opts)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("device_error"));
    // Refused by the hub's own check before it was sent.
    let res = http()
        .patch(url(&hub, "/api/devices/p1"))
        .bearer_auth("operator-secret")
        .header("x-correlation-id", "op-bad")
        .json(&json!({"power": "sideways"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let (status, page) = get(&hub, "/api/commands?device=p1", Some("operator-secret")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{page}");
    // Newest first.
    let (bad, panel, console) = (&items[0], &items[1], &items[2]);
    assert_eq!(console["cid"], "op-1");
    assert_eq!(console["status"], "confirmed");
    assert_eq!(console["desired"], json!({"power": "on"}));
    assert_eq!(console["state"]["power"], "on");
    assert_eq!(console["who"]["token"], "ops");
    assert_eq!(console["who"]["role"], "operator");
    assert_eq!(console["who"]["client"], "console");
    assert_eq!(console["who"]["transport"], "http");
    assert!(console["who"]["peer"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(console["agent"], "rack-agent");
    let (received, forwarded, answered) = (
        console["received"].as_u64().unwrap(),
        console["forwarded"].as_u64().unwrap(),
        console["answered"].as_u64().unwrap(),
    );
    assert!(received <= forwarded && forwarded <= answered);

    assert_eq!(panel["cid"], "panel-7");
    assert_eq!(panel["status"], "failed");
    assert_eq!(panel["error"]["code"], "device_error");
    assert_eq!(panel["who"]["client"], "lectern-panel");
    assert_eq!(panel["who"]["transport"], "tcp");
    assert_eq!(panel["who"]["token"], "ops");

    assert_eq!(bad["cid"], "op-bad");
    assert_eq!(bad["status"], "failed");
    assert_eq!(bad["error"]["code"], "invalid_value");
    assert!(bad["forwarded"].is_null(), "never sent: {bad}");

    // Filters and paging.
    let (_, failed) = get(
        &hub,
        "/api/commands?outcome=failed",
        Some("operator-secret"),
    )
    .await;
    assert_eq!(failed["items"].as_array().unwrap().len(), 2);
    let (_, first) = get(&hub, "/api/commands?limit=2", Some("operator-secret")).await;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let next = first["next"].as_i64().expect("a next page");
    let (_, second) = get(
        &hub,
        &format!("/api/commands?limit=2&before={next}"),
        Some("operator-secret"),
    )
    .await;
    assert_eq!(second["items"][0]["cid"], "op-1");
    assert!(second["next"].is_null());
    let (_, by_who) = get(
        &hub,
        "/api/commands?who=lectern-panel",
        Some("operator-secret"),
    )
    .await;
    assert_eq!(by_who["items"].as_array().unwrap().len(), 1);

    // The same questions over the wire.
    let reply: Value = ctl
        .request(
            "hub/journal/command",
            &Body::from(json!({"cid": "panel-7"})),
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(reply["status"], "failed");
    let err = ctl
        .request("hub/journal/command", &Body::from(json!({"cid": "nope"})))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("not_found"));
    let err = ctl
        .request("hub/journal/commands", &Body::from(json!({"limit": 0})))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("invalid_value"), "{err}");
    drop(a);
    hub.stop().await;
}

#[tokio::test]
async fn a_timed_out_command_later_confirmed_is_found_by_its_cid() {
    let dir = data_dir("late");
    let hub = hub_with(config(&dir)).await;
    let (_a, requests) = agent(&hub, None, &["p1"]).await;
    let patch = tokio::spawn({
        let u = url(&hub, "/api/devices/p1?timeout_ms=200");
        async move {
            http()
                .patch(u)
                .header("x-correlation-id", "slow-1")
                .json(&json!({"power": "on"}))
                .send()
                .await
                .unwrap()
        }
    });
    let req = next_request(&requests).await;
    let res = patch.await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["cid"], "slow-1");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown"),
        "{body}"
    );

    let (_, c) = get(&hub, "/api/commands/slow-1", None).await;
    assert_eq!(c["status"], "unknown", "{c}");
    assert_eq!(c["timed_out"], true);

    // The device finishes after all.
    req.respond(&Body::from(json!({"power": "on", "input": "hdmi1"})))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let c = loop {
        let (_, c) = get(&hub, "/api/commands/slow-1", None).await;
        if c["status"] != "unknown" {
            break c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the late answer never reached the journal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(c["status"], "confirmed");
    assert_eq!(c["timed_out"], true);
    assert_eq!(c["state"]["power"], "on");
    assert!(c["late"].as_u64().unwrap() >= c["answered"].as_u64().unwrap());

    let (status, e) = get(&hub, "/api/commands/never-sent", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(e["error"]["code"], "not_found");
    hub.stop().await;
}

#[tokio::test]
async fn history_keeps_state_changes_reachability_and_events() {
    let dir = data_dir("history");
    let hub = hub_with(config(&dir)).await;
    let (a, _requests) = agent(&hub, None, &["p1", "p2"]).await;
    retain(
        &a,
        "dev/p1/state",
        json!({"power": "warming", "input": "hdmi1", "lamp_hours": 100}),
    )
    .await;
    // Unchanged state: nothing to record.
    retain(
        &a,
        "dev/p1/state",
        json!({"power": "warming", "input": "hdmi1", "lamp_hours": 100}),
    )
    .await;
    retain(
        &a,
        "dev/p1/online",
        json!({"online": false, "reason": "the projector stopped answering"}),
    )
    .await;
    a.publish_acked(
        "dev/p1/event",
        &Body::from(json!({"level": "error", "code": "lamp", "message": "lamp failure"})),
        PublishOptions::default(),
    )
    .await
    .unwrap();
    retain(
        &a,
        "dev/p2/state",
        json!({"power": "on", "input": "hdmi1", "lamp_hours": 100}),
    )
    .await;

    let (status, page) = get(&hub, "/api/devices/p1/history", None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let items = page["items"].as_array().unwrap();
    let kinds: Vec<&str> = items.iter().map(|h| h["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["event", "online", "state", "online", "state"],
        "{page}"
    );
    assert_eq!(items[0]["body"]["message"], "lamp failure");
    assert_eq!(
        items[1]["body"]["reason"],
        "the projector stopped answering"
    );
    assert_eq!(
        items[2]["body"],
        json!({"power": "warming"}),
        "only what changed"
    );
    assert_eq!(items[2]["from"], "rack-agent");
    let seqs: Vec<u64> = items.iter().map(|h| h["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "{seqs:?}");
    assert!(items.iter().all(|h| h["instance"] == items[0]["instance"]));

    let (_, events) = get(&hub, "/api/devices/p1/history?kind=event", None).await;
    assert_eq!(events["items"].as_array().unwrap().len(), 1);
    let (_, p2) = get(&hub, "/api/devices/p2/history?kind=state", None).await;
    assert_eq!(p2["items"][0]["body"], json!({"power": "on"}));

    // Usage: today's lamp hours as last reported.
    let (status, usage) = get(&hub, "/api/devices/p2/usage?days=7", None).await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    let days = usage["days"].as_array().unwrap();
    assert_eq!(days.len(), 7);
    assert_eq!(
        days[6]["date"],
        patchbay_hub::journal::utc_date(patchbay_hub::server::now_ms())
    );
    assert_eq!(days[6]["lamp_hours"], 100.0);
    assert!(days[..6].iter().all(|d| d["hours_on"] == 0.0));

    let (status, e) = get(&hub, "/api/devices/ghost/history", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(e["error"]["code"], "not_found", "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("ghost"),
        "{e}"
    );
    let (status, _) = get(&hub, "/api/devices/ghost/usage", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    hub.stop().await;
}

#[tokio::test]
async fn malformed_journal_queries_get_400_with_a_json_error() {
    let dir = data_dir("bad-queries");
    let hub = hub_with(config(&dir)).await;
    let (_a, _r) = agent(&hub, None, &["p1"]).await;
    for (path, word) in [
        ("/api/commands?since=yesterday", "since"),
        ("/api/commands?until=5x", "until"),
        ("/api/commands?limit=0", "limit"),
        ("/api/commands?limit=abc", "limit"),
        ("/api/commands?outcome=maybe", "outcome"),
        ("/api/commands?before=x", "before"),
        ("/api/devices/p1/history?kind=gossip", "kind"),
        ("/api/devices/p1/usage?days=0", "days"),
        ("/api/devices/p1/usage?days=400", "days"),
        ("/api/audit?kind=nope", "kind"),
    ] {
        let (status, body) = get(&hub, path, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{path}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(word),
            "{path}: {body}"
        );
    }
    // Spans before now work.
    let (status, _) = get(&hub, "/api/commands?since=2h&until=0s", None).await;
    assert_eq!(status, StatusCode::OK);
    hub.stop().await;
}

#[tokio::test]
async fn audit_records_denied_tokens_claims_and_releases() {
    let dir = data_dir("audit");
    let hub = hub_with(HubConfig {
        tokens: tokens(),
        ..config(&dir)
    })
    .await;
    // A wrong token over the wire and over HTTP.
    let mut raw = common::Raw::connect(&hub).await;
    raw.send(json!({"op": "hello", "name": "intruder", "token": "guess-guess"}))
        .await;
    let _ = raw.recv().await;
    let res = http()
        .get(url(&hub, "/api/devices"))
        .bearer_auth("wrong-token-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // A claim granted, a second one refused, and the release.
    let (a, r) = agent(&hub, Some("agent-secret-1"), &["p1"]).await;
    let twin = ClientBuilder::new(hub.addr.to_string())
        .name("sneaky")
        .token("agent-secret-1")
        .no_reconnect()
        .connect()
        .await
        .unwrap();
    assert!(twin.claim("dev/p1").await.is_err());
    drop((a, r));

    let deadline = tokio::time::Instant::now() + WAIT;
    let items = loop {
        let (status, page) = get(&hub, "/api/audit", Some("operator-secret")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["items"].as_array().unwrap().clone();
        if items.iter().any(|i| i["kind"] == "release") {
            break items;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no release in {page}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let of = |kind: &str| {
        items
            .iter()
            .filter(|i| i["kind"] == kind)
            .cloned()
            .collect::<Vec<_>>()
    };
    let denied = of("auth_failed");
    assert_eq!(denied.len(), 2, "{items:?}");
    assert!(denied
        .iter()
        .any(|d| d["who"]["transport"] == "tcp" && d["who"]["client"] == "intruder"));
    assert!(denied.iter().any(|d| d["who"]["transport"] == "http"
        && d["detail"].as_str().unwrap().contains("/api/devices")));
    assert!(denied
        .iter()
        .all(|d| d["who"]["peer"].as_str().unwrap().starts_with("127.0.0.1:")));
    assert!(of("claim")
        .iter()
        .any(|c| c["subject"] == "dev/p1" && c["who"]["token"] == "rack-1"));
    assert!(of("claim_refused")
        .iter()
        .any(|c| c["who"]["client"] == "sneaky"));
    assert!(of("release").iter().any(|c| c["subject"] == "dev/p1"));
    assert_eq!(of("hub_started").len(), 1);
    let (_, only) = get(&hub, "/api/audit?kind=auth_failed", Some("operator-secret")).await;
    assert_eq!(only["items"].as_array().unwrap().len(), 2);
    hub.stop().await;
}

#[tokio::test]
async fn retained_values_survive_a_restart_and_devices_wait_for_their_agent() {
    let dir = data_dir("restart");
    let hub = hub_with(config(&dir)).await;
    let (a, _r) = agent(&hub, None, &["p1"]).await;
    retain(
        &a,
        "dev/p1/state",
        json!({"power": "on", "input": "hdmi2", "lamp_hours": 120}),
    )
    .await;
    let ops = ClientBuilder::new(hub.addr.to_string())
        .name("ops")
        .connect()
        .await
        .unwrap();
    retain(
        &ops,
        "site/config/opening-hours",
        json!({"from": "07:00", "to": "22:00"}),
    )
    .await;
    retain(&ops, "site/config/gone", json!(1)).await;
    retain(&ops, "site/config/gone", json!(null)).await;
    let old_instance = hub.hub.instance().to_owned();
    drop((a, ops));
    hub.stop().await;

    let hub = hub_with(config(&dir)).await;
    assert_ne!(hub.hub.instance(), old_instance);
    let (status, d) = get(&hub, "/api/devices/p1", None).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(d["state"]["input"], "hdmi2");
    assert_eq!(d["state"]["lamp_hours"], 120);
    assert!(
        d["online"]["online"].is_null(),
        "unknown until the agent says: {d}"
    );
    assert!(d["online"]["reason"]
        .as_str()
        .unwrap()
        .contains("restarted"));
    // The last value before the restart: the hub's last will for the agent.
    assert_eq!(d["online"]["last"]["online"], false);
    assert!(
        d["online"]["last"]["reason"]
            .as_str()
            .unwrap()
            .contains("disconnected"),
        "{d}"
    );
    let r = hub.hub.retained("site/config/opening-hours").expect("kept");
    assert_eq!(r.body(), r#"{"from":"07:00","to":"22:00"}"#);
    assert!(
        hub.hub.retained("site/config/gone").is_none(),
        "a deletion is kept too"
    );
    // Not yet confirmed: commands are refused as offline, not sent anywhere.
    let res = http()
        .patch(url(&hub, "/api/devices/p1"))
        .json(&json!({"power": "off"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    // The agent comes back and says.
    let (_a, _r) = agent(&hub, None, &["p1"]).await;
    let (_, d) = get(&hub, "/api/devices/p1", None).await;
    assert_eq!(d["online"]["online"], true);
    hub.stop().await;
}

#[tokio::test]
async fn a_full_disk_is_reported_and_routing_goes_on() {
    let dir = data_dir("full");
    let hub = hub_with(HubConfig {
        journal_max_bytes: 160 * 1024,
        journal_flush_ms: 20,
        ..config(&dir)
    })
    .await;
    let (a, _r) = agent(&hub, None, &["p1"]).await;
    let watcher = ClientBuilder::new(hub.addr.to_string())
        .name("watcher")
        .connect()
        .await
        .unwrap();
    let mut sub = watcher.subscribe(["dev/p1/state"]).await.unwrap();
    let big = "x".repeat(8 * 1024);
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    let mut i = 0u64;
    loop {
        i += 1;
        retain(
            &a,
            "dev/p1/state",
            json!({"power": "on", "note": format!("{i}{big}")}),
        )
        .await;
        let m = tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .unwrap();
        assert!(m.body_str().contains(&format!("\"{i}x")), "routing goes on");
        let (_, health) = get(&hub, "/healthz", None).await;
        if health["status"] == "degraded" {
            let why = health["journal"]["degraded"].as_str().unwrap();
            assert!(why.contains("full"), "{why}");
            assert!(why.contains("patchbay.db"), "names the file: {why}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reported the full file: {health}"
        );
    }
    let metrics = http()
        .get(url(&hub, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let errors: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("patchbay_journal_write_errors_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(errors > 0);
    assert!(metrics.contains("patchbay_journal_degraded 1"));
    hub.stop().await;
}

#[tokio::test]
async fn an_unusable_journal_stops_the_hub_at_start_naming_the_file() {
    let dir = data_dir("corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("patchbay.db"), vec![0x5a; 8192]).unwrap();
    let err = patchbay_hub::server::open_hub(config(&dir))
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(text.contains("patchbay.db"), "{text}");
    assert!(text.contains("not a database"), "{text}");

    // A data folder that is a file.
    let file = data_dir("is-a-file");
    std::fs::write(&file, b"").unwrap();
    let err = patchbay_hub::server::open_hub(config(&file))
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn rows_older_than_history_days_are_pruned() {
    let dir = data_dir("prune");
    let hub = hub_with(HubConfig {
        history_days: 1,
        ..config(&dir)
    })
    .await;
    let (a, _r) = agent(&hub, None, &["p1"]).await;
    drop(a);
    hub.stop().await;
    // Rows from two days ago and from an hour ago, as an older run left them.
    let now = patchbay_hub::server::now_ms() as i64;
    {
        let db = rusqlite::Connection::open(dir.join("patchbay.db")).unwrap();
        for (cid, age) in [("old", 2 * 86_400_000), ("recent", 3_600_000)] {
            db.execute(
                "INSERT INTO commands (cid, device, desired, client, peer, transport, received, status) VALUES (?1, 'p1', '{}', 'x', 'y', 'tcp', ?2, 'confirmed')",
                rusqlite::params![cid, now - age],
            )
            .unwrap();
            db.execute(
                "INSERT INTO history (device, time, instance, seq, kind, body) VALUES ('p1', ?1, 'i', 1, 'event', ?2)",
                rusqlite::params![now - age, format!("{{\"message\":\"{cid}\"}}")],
            )
            .unwrap();
        }
    }
    let hub = hub_with(HubConfig {
        history_days: 1,
        ..config(&dir)
    })
    .await;
    let (_, old) = get(&hub, "/api/commands/old", None).await;
    assert_eq!(old["error"]["code"], "not_found", "{old}");
    let (_, recent) = get(&hub, "/api/commands/recent", None).await;
    assert_eq!(recent["status"], "confirmed", "{recent}");
    let (_, events) = get(&hub, "/api/devices/p1/history?kind=event", None).await;
    let messages: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["body"]["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["recent"]);
    let metrics = http()
        .get(url(&hub, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("patchbay_journal_file_bytes "),
        "the file size is reported"
    );
    hub.stop().await;
}

#[tokio::test]
async fn a_flood_of_bad_tokens_cannot_fill_the_audit_trail() {
    let dir = data_dir("auth-flood");
    let hub = hub_with(HubConfig {
        tokens: tokens(),
        ..config(&dir)
    })
    .await;
    let long = "a".repeat(60_000);
    for _ in 0..100 {
        let res = http()
            .get(url(&hub, &format!("/api/devices/{long}/history")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    // A failure in a later second brings the count of those left out.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let res = http().get(url(&hub, "/api/devices")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let (_, page) = get(
        &hub,
        "/api/audit?kind=auth_failed&limit=1000",
        Some("operator-secret"),
    )
    .await;
    let items = page["items"].as_array().unwrap();
    let mut per_second = std::collections::BTreeMap::new();
    for i in items.iter().filter(|i| i["who"]["transport"] == "http") {
        *per_second
            .entry(i["time"].as_u64().unwrap() / 1000)
            .or_insert(0) += 1;
    }
    assert!(
        per_second.values().all(|&n| n <= 20),
        "at most 20 rows a second: {per_second:?}"
    );
    assert!(
        items
            .iter()
            .all(|i| i["detail"].as_str().unwrap().len() <= 520),
        "details are cut"
    );
    let left_out: u64 = items
        .iter()
        .filter_map(|i| i["detail"].as_str()?.split(' ').next()?.parse::<u64>().ok())
        .sum();
    let one_by_one = items
        .iter()
        .filter(|i| i["who"]["transport"] == "http")
        .count() as u64;
    assert_eq!(
        left_out + one_by_one,
        101,
        "every failure is counted: {page}"
    );
    hub.stop().await;
}

#[tokio::test]
async fn a_command_whose_agent_leaves_has_an_unknown_outcome() {
    let dir = data_dir("agent-leaves");
    let hub = hub_with(config(&dir)).await;
    let (a, requests) = agent(&hub, None, &["p1"]).await;
    let patch = tokio::spawn({
        let u = url(&hub, "/api/devices/p1");
        async move {
            http()
                .patch(u)
                .header("x-correlation-id", "gone-1")
                .json(&json!({"power": "on"}))
                .send()
                .await
                .unwrap()
        }
    });
    let first = next_request(&requests).await;
    drop((a, requests, first));
    let res = patch.await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let (_, c) = get(&hub, "/api/commands/gone-1", None).await;
    assert_eq!(c["status"], "unknown", "it may have been carried out: {c}");
    assert_eq!(c["error"]["code"], "unavailable");

    // Request numbers never repeat across hub instances, so an answer to a
    // request from before a restart cannot match a new one.
    let (a, requests) = agent(&hub, None, &["p2"]).await;
    let ctl = ClientBuilder::new(hub.addr.to_string())
        .connect()
        .await
        .unwrap();
    let opts = RequestOptions {
        timeout: Some(Duration::from_millis(100)),
        cid: None,
        on_behalf: None,
    };
    let _ = ctl
        .request_with(
            "dev/p2/set",
            &Body::from(json!({"power": "on"})),
            opts.clone(),
        )
        .await;
    let before = next_request(&requests).await.rid();
    drop((a, requests, ctl));
    hub.stop().await;
    let hub = hub_with(config(&dir)).await;
    let (_a, requests) = agent(&hub, None, &["p2"]).await;
    let ctl = ClientBuilder::new(hub.addr.to_string())
        .connect()
        .await
        .unwrap();
    let _ = ctl
        .request_with("dev/p2/set", &Body::from(json!({"power": "on"})), opts)
        .await;
    let after = next_request(&requests).await.rid();
    assert!(after > before, "{after} after {before}");
    hub.stop().await;
}

#[tokio::test]
async fn times_past_the_largest_are_refused() {
    let dir = data_dir("big-times");
    let hub = hub_with(config(&dir)).await;
    for path in [
        "/api/commands?since=9223372036854775808",
        "/api/commands?until=18446744073709551615",
        "/api/audit?since=18446744073709551615",
    ] {
        let (status, body) = get(&hub, path, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("largest time"),
            "{body}"
        );
    }
    hub.stop().await;
}
