//! The journal with real processes: `kill -9` of the hub loses nothing that
//! was committed, and the CLI finds a timed-out command's late outcome.

use std::time::Duration;

use patchbay_client::{Body, ClientBuilder, PublishOptions};
use patchbay_tests::{cli, temp_dir, Proc, WAIT};
use serde_json::{json, Value};

async fn start_hub(data: &str) -> (Proc, String) {
    let mut hub = Proc::start(
        "patchbay-hub",
        &[
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
            data,
        ],
    )
    .await;
    let console = hub.next_line_last_word().await;
    (hub, console.trim_end_matches('/').to_owned())
}

async fn metric(http: &str, name: &str) -> u64 {
    let text = reqwest::get(format!("{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn kill_9_of_the_hub_loses_nothing_committed() {
    let data = temp_dir("kill9");
    let data = data.display().to_string();
    let (hub, http) = start_hub(&data).await;
    let agent = ClientBuilder::new(hub.addr())
        .name("rack")
        .no_reconnect()
        .connect()
        .await
        .unwrap();
    agent.claim("dev/k1").await.unwrap();
    let retain = || PublishOptions {
        retain: true,
        cid: None,
    };
    agent
        .publish_acked(
            "dev/k1/meta",
            &Body::from(json!({"id": "k1", "name": "K1", "settings": []})),
            retain(),
        )
        .await
        .unwrap();
    let mut last = 0;
    for i in 0..300 {
        last = agent
            .publish_acked(
                "dev/k1/state",
                &Body::from(json!({"power": "on", "n": i})),
                retain(),
            )
            .await
            .unwrap();
    }
    // The hub says when its journal has committed up to `last`: from then on it is on disk.
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&http, "patchbay_journal_committed_seq").await < last {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the journal never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // More changes right before the kill: these may or may not make it.
    for i in 300..400 {
        agent
            .publish_acked(
                "dev/k1/state",
                &Body::from(json!({"power": "on", "n": i})),
                retain(),
            )
            .await
            .unwrap();
    }
    hub.kill().await;

    let (_hub, http) = start_hub(&data).await;
    let page: Value = reqwest::get(format!(
        "{http}/api/devices/k1/history?kind=state&limit=1000"
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let ns: Vec<u64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["body"]["n"].as_u64().unwrap())
        .collect();
    assert!(ns.len() >= 300, "lost committed history: {} rows", ns.len());
    // What survived is a prefix: no hole, nothing out of order.
    let mut sorted = ns.clone();
    sorted.reverse();
    assert_eq!(sorted, (0..ns.len() as u64).collect::<Vec<_>>());
    let device: Value = reqwest::get(format!("{http}/api/devices/k1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        device["state"]["n"],
        json!(ns.len() - 1),
        "the retained value matches the history"
    );
    assert!(device["online"]["online"].is_null(), "{device}");
}

#[tokio::test]
async fn the_cli_follows_a_timed_out_command_to_its_late_outcome() {
    let data = temp_dir("cli-journal");
    let (hub, _http) = start_hub(&data.display().to_string()).await;
    let agent = ClientBuilder::new(hub.addr())
        .name("slow-agent")
        .no_reconnect()
        .connect()
        .await
        .unwrap();
    agent.claim("dev/s1").await.unwrap();
    let retain = || PublishOptions {
        retain: true,
        cid: None,
    };
    let settings = json!([{"name":"power","label":"Power","type":"enum","values":["on","off"],"writable":true}]);
    agent
        .publish_acked(
            "dev/s1/meta",
            &Body::from(json!({"id": "s1", "name": "S1", "settings": settings})),
            retain(),
        )
        .await
        .unwrap();
    agent
        .publish_acked(
            "dev/s1/state",
            &Body::from(json!({"power": "off"})),
            retain(),
        )
        .await
        .unwrap();
    agent
        .publish_acked(
            "dev/s1/online",
            &Body::from(json!({"online": true})),
            retain(),
        )
        .await
        .unwrap();
    let requests = agent.requests();

    let set = tokio::spawn({
        let addr = hub.addr();
        async move {
            cli(
                &addr,
                &[
                    "set",
                    "s1",
                    "power=on",
                    "--timeout-ms",
                    "300",
                    "--cid",
                    "late-1",
                ],
            )
            .await
        }
    });
    let req = tokio::time::timeout(WAIT, requests.next())
        .await
        .unwrap()
        .unwrap();
    let (ok, _out, err) = set.await.unwrap();
    assert!(!ok);
    assert!(err.contains("patchbay command late-1"), "{err}");

    let (ok, out, _) = cli(&hub.addr(), &["command", "late-1"]).await;
    assert!(ok);
    assert!(out.contains("outcome unknown"), "{out}");
    req.respond(&Body::from(json!({"power": "on"})))
        .await
        .unwrap();
    agent
        .publish_acked(
            "dev/s1/state",
            &Body::from(json!({"power": "on"})),
            retain(),
        )
        .await
        .unwrap();

    let deadline = tokio::time::Instant::now() + WAIT;
    let out = loop {
        let (ok, out, err) = cli(&hub.addr(), &["command", "late-1"]).await;
        assert!(ok, "{err}");
        if !out.contains("outcome unknown") {
            break out;
        }
        assert!(tokio::time::Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(out.contains("outcome:  confirmed"), "{out}");
    assert!(out.contains("after the requester's timeout"), "{out}");
    assert!(out.contains("patchbay-cli via tcp"), "{out}");

    let (ok, out, _) = cli(&hub.addr(), &["commands", "--device", "s1"]).await;
    assert!(ok);
    assert!(out.contains("late-1") && out.contains("confirmed"), "{out}");
    let (ok, out, _) = cli(&hub.addr(), &["history", "s1", "--kind", "state"]).await;
    assert!(ok);
    assert!(
        out.contains("power=on") && out.contains("power=off"),
        "{out}"
    );
    let (ok, _, err) = cli(&hub.addr(), &["history", "nope"]).await;
    assert!(!ok);
    assert!(err.contains("unknown device `nope`"), "{err}");
    let (ok, _, err) = cli(&hub.addr(), &["command", "never-sent"]).await;
    assert!(!ok);
    assert!(
        err.contains("no command with correlation id `never-sent`"),
        "{err}"
    );
    let (ok, _, err) = cli(&hub.addr(), &["commands", "--since", "soon"]).await;
    assert!(!ok);
    assert!(err.contains("`since`"), "{err}");
}
