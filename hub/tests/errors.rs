//! Every error code the hub sends, each triggered over real TCP, and the
//! connection (or the rest of the hub) carrying on afterwards.

mod common;

use std::time::Duration;

use common::{assert_err, hub, hub_with, Raw};
use patchbay_hub::config::{HubConfig, Role, TokenConfig};
use serde_json::json;

async fn still_alive(c: &mut Raw) {
    let pong = c.call(json!({"op":"ping"}), 777).await;
    assert_eq!(pong["op"], "pong", "connection should survive: {pong}");
}

#[tokio::test]
async fn bad_frame_is_answered_and_connection_survives() {
    let hub = hub().await;
    let mut c = Raw::connect(&hub).await;
    c.send_raw(b"this is not json\n").await;
    let e = c.recv().await;
    assert_err(&e, "bad_frame");
    assert!(
        e["message"].as_str().unwrap().starts_with("not valid JSON"),
        "{e}"
    );
    c.send(json!({"op":"pub","tag":"x","id":"a1"})).await;
    let e = c.recv().await;
    assert_err(&e, "bad_frame");
    assert_eq!(e["id"], "a1");
    assert_eq!(e["message"], "`pub` needs the field `body`");
    c.send(json!({"op":"teleport","id":2})).await;
    let e = c.recv().await;
    assert_err(&e, "bad_frame");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("unknown op `teleport`"),
        "{e}"
    );
    still_alive(&mut c).await;
    hub.stop().await;
}

#[tokio::test]
async fn frame_too_large_is_discarded_and_connection_survives() {
    let hub = hub_with(HubConfig {
        max_frame_bytes: 1024,
        ..HubConfig::default()
    })
    .await;
    let mut c = Raw::connect(&hub).await;
    let big = format!(
        "{{\"op\":\"pub\",\"tag\":\"x\",\"body\":\"{}\"}}\n",
        "y".repeat(5000)
    );
    // Sent in pieces, so the hub sees the limit pass before the newline arrives.
    for chunk in big.as_bytes().chunks(700) {
        c.send_raw(chunk).await;
    }
    let e = c.recv().await;
    assert_err(&e, "frame_too_large");
    assert!(e["message"].as_str().unwrap().contains("1024 bytes"), "{e}");
    still_alive(&mut c).await;
    hub.stop().await;
}

#[tokio::test]
async fn repeated_garbage_closes_with_too_many_errors() {
    let hub = hub_with(HubConfig {
        max_bad_frames: 3,
        ..HubConfig::default()
    })
    .await;
    let mut bystander = Raw::hello(&hub, "bystander", None).await;
    let mut c = Raw::connect(&hub).await;
    c.send_raw(b"x\ny\nz\nw\n").await;
    let frames = c.until_closed().await;
    assert_eq!(frames.len(), 4, "{frames:?}");
    for f in &frames[..3] {
        assert_err(f, "bad_frame");
    }
    assert_err(&frames[3], "too_many_errors");
    still_alive(&mut bystander).await;
    hub.stop().await;
}

#[tokio::test]
async fn bad_tags_and_patterns() {
    let hub = hub().await;
    let mut c = Raw::connect(&hub).await;
    let e = c.call(json!({"op":"pub","tag":"a//b","body":1}), 1).await;
    assert_err(&e, "bad_tag");
    assert_eq!(e["message"], "tag `a//b` has an empty segment");
    let e = c.call(json!({"op":"sub","tags":["ok/+","a/#/b"]}), 2).await;
    assert_err(&e, "bad_tag");
    let e = c
        .call(json!({"op":"pub","tag":"dev/+/x","body":1}), 3)
        .await;
    assert_err(&e, "bad_tag");
    still_alive(&mut c).await;
    hub.stop().await;
}

fn token(token: &str, role: Role, claims: &[&str]) -> TokenConfig {
    TokenConfig {
        name: None,
        token: token.into(),
        role,
        claims: claims.iter().map(|s| s.to_string()).collect(),
        read: Vec::new(),
        write: Vec::new(),
        deny: Vec::new(),
    }
}

fn secured() -> HubConfig {
    HubConfig {
        tokens: vec![
            token("agent-secret", Role::Agent, &["dev/p1"]),
            token("operator-secret", Role::Operator, &[]),
            token("viewer-secret", Role::Viewer, &[]),
        ],
        ..HubConfig::default()
    }
}

#[tokio::test]
async fn unauthorized_without_or_with_a_wrong_token() {
    let hub = hub_with(secured()).await;
    let mut c = Raw::connect(&hub).await;
    c.send(json!({"op":"sub","tags":["#"]})).await;
    let frames = c.until_closed().await;
    assert_eq!(frames.len(), 1);
    assert_err(&frames[0], "unauthorized");

    let mut c = Raw::connect(&hub).await;
    c.send(json!({"op":"hello","name":"mallory","token":"guess-guess"}))
        .await;
    let frames = c.until_closed().await;
    assert_err(&frames[0], "unauthorized");
    assert_eq!(frames[0]["message"], "unknown token");

    let c = Raw::hello(&hub, "op", Some("operator-secret")).await;
    drop(c);
    hub.stop().await;
}

#[tokio::test]
async fn forbidden_by_role_and_by_claim() {
    let hub = hub_with(secured()).await;
    let mut viewer = Raw::hello(&hub, "viewer", Some("viewer-secret")).await;
    let e = viewer.call(json!({"op":"pub","tag":"x","body":1}), 1).await;
    assert_err(&e, "forbidden");
    assert_eq!(e["message"], "the `viewer` role may not publish");
    viewer.sub(&["dev/#"]).await;

    let mut op = Raw::hello(&hub, "operator", Some("operator-secret")).await;
    let e = op.call(json!({"op":"claim","prefix":"dev/p1"}), 2).await;
    assert_err(&e, "forbidden");

    let mut agent = Raw::hello(&hub, "agent", Some("agent-secret")).await;
    let e = agent.call(json!({"op":"claim","prefix":"dev/p2"}), 3).await;
    assert_err(&e, "forbidden");
    assert!(
        e["message"].as_str().unwrap().contains("may claim: dev/p1"),
        "{e}"
    );
    let ok = agent.call(json!({"op":"claim","prefix":"dev/p1"}), 4).await;
    assert_eq!(ok["op"], "ok", "{ok}");

    // Publishing under someone else's claim.
    let e = op
        .call(json!({"op":"pub","tag":"dev/p1/state","body":{}}), 5)
        .await;
    assert_err(&e, "forbidden");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("claimed by `agent`"),
        "{e}"
    );
    // The owner may, and the viewer receives it.
    agent
        .call(
            json!({"op":"pub","tag":"dev/p1/state","body":{"power":"on"}}),
            6,
        )
        .await;
    let m = viewer.recv().await;
    assert_eq!(m["body"]["power"], "on");
    hub.stop().await;
}

#[tokio::test]
async fn owned_when_claims_overlap() {
    let hub = hub_with(HubConfig {
        claim_grace_ms: 300,
        ..HubConfig::default()
    })
    .await;
    let mut a = Raw::hello(&hub, "agent-a", None).await;
    let mut b = Raw::hello(&hub, "agent-b", None).await;
    assert_eq!(
        a.call(json!({"op":"claim","prefix":"dev/p1"}), 1).await["op"],
        "ok"
    );
    for prefix in ["dev/p1", "dev/p1/sub", "dev"] {
        let e = b.call(json!({"op":"claim","prefix":prefix}), 2).await;
        assert_err(&e, "owned");
        assert!(e["message"].as_str().unwrap().contains("agent-a"), "{e}");
    }
    // A sibling is free, and re-claiming one's own prefix is fine.
    assert_eq!(
        b.call(json!({"op":"claim","prefix":"dev/p10"}), 3).await["op"],
        "ok"
    );
    assert_eq!(
        a.call(json!({"op":"claim","prefix":"dev/p1"}), 4).await["op"],
        "ok"
    );
    // When the owner leaves, its last will is published and the prefix stays
    // reserved for it for `claim_grace_ms`, then is free.
    drop(a);
    let mut watcher = Raw::hello(&hub, "w", None).await;
    watcher
        .send(json!({"op":"sub","tags":["dev/p1/online"],"snapshot":true}))
        .await;
    assert_eq!(watcher.recv().await["op"], "snapshot");
    let will = watcher.recv().await;
    assert_eq!(will["body"]["online"], false, "{will}");
    let e = b.call(json!({"op":"claim","prefix":"dev/p1"}), 5).await;
    assert_err(&e, "owned");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("reserved for client `agent-a`"),
        "{e}"
    );
    let deadline = tokio::time::Instant::now() + common::WAIT;
    let mut id = 6;
    loop {
        let r = b.call(json!({"op":"claim","prefix":"dev/p1"}), id).await;
        if r["op"] == "ok" {
            break;
        }
        assert_err(&r, "owned");
        assert!(
            tokio::time::Instant::now() < deadline,
            "reservation never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        id += 1;
    }
    hub.stop().await;
}

#[tokio::test]
async fn too_many_subscriptions() {
    let hub = hub_with(HubConfig {
        max_subscriptions: 2,
        ..HubConfig::default()
    })
    .await;
    let mut c = Raw::connect(&hub).await;
    c.sub(&["a", "b"]).await;
    let e = c.call(json!({"op":"sub","tags":["c"]}), 1).await;
    assert_err(&e, "too_many_subscriptions");
    assert!(e["message"].as_str().unwrap().contains("limit of 2"), "{e}");
    // Re-subscribing to a held pattern is not a new one.
    c.sub(&["a"]).await;
    hub.stop().await;
}

#[tokio::test]
async fn max_connections_refuses_the_extra_client_only() {
    let hub = hub_with(HubConfig {
        max_connections: 2,
        ..HubConfig::default()
    })
    .await;
    let mut a = Raw::hello(&hub, "a", None).await;
    let _b = Raw::hello(&hub, "b", None).await;
    let mut c = Raw::connect(&hub).await;
    let frames = c.until_closed().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_err(&frames[0], "max_connections");
    still_alive(&mut a).await;
    hub.stop().await;
}

#[tokio::test]
async fn idle_client_is_pinged_then_dropped() {
    let hub = hub_with(HubConfig {
        ping_interval_ms: 50,
        idle_timeout_ms: 300,
        ..HubConfig::default()
    })
    .await;
    let mut c = Raw::connect(&hub).await;
    let frames = c.until_closed().await;
    assert_eq!(frames[0]["op"], "ping", "{frames:?}");
    assert_err(frames.last().unwrap(), "idle_timeout");
    hub.stop().await;
}

#[tokio::test]
async fn answering_pings_keeps_a_client() {
    let hub = hub_with(HubConfig {
        ping_interval_ms: 30,
        idle_timeout_ms: 200,
        ..HubConfig::default()
    })
    .await;
    let mut c = Raw::connect(&hub).await;
    for _ in 0..10 {
        let f = c.recv().await;
        assert_eq!(f["op"], "ping", "{f}");
        c.send(json!({"op":"pong"})).await;
    }
    hub.stop().await;
}

#[tokio::test]
async fn unknown_request_reply() {
    let hub = hub().await;
    let mut c = Raw::connect(&hub).await;
    let e = c.call(json!({"op":"rep","rid":12345,"body":{}}), 1).await;
    assert_err(&e, "unknown_request");
    hub.stop().await;
}

#[tokio::test]
async fn shutting_down_is_announced() {
    let hub = hub().await;
    let mut c = Raw::hello(&hub, "c", None).await;
    let stopping = tokio::spawn(hub.stop());
    let frames = c.until_closed().await;
    assert_err(frames.last().unwrap(), "shutting_down");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_dropped_and_nobody_else_is_affected() {
    let hub = hub_with(HubConfig {
        outbound_queue_bytes: 64 * 1024,
        ..HubConfig::default()
    })
    .await;
    let mut slow = Raw::connect_small_buffer(&hub).await;
    slow.sub(&["flood"]).await;
    let mut fast = Raw::hello(&hub, "fast", None).await;
    fast.sub(&["flood"]).await;
    let mut publisher = Raw::hello(&hub, "publisher", None).await;
    let body = "x".repeat(1000);
    let mut sent = 0u64;
    // Publish until the hub reports the drop (bounded: 200k messages at most).
    while patchbay_hub::server::Metrics::get(&hub.hub.metrics().slow_consumer_drops) == 0 {
        assert!(sent < 200_000, "slow consumer never dropped");
        // Batches well under the queue bound, so a subscriber that keeps up is never dropped.
        for _ in 0..20 {
            publisher
                .send(json!({"op":"pub","tag":"flood","body":body}))
                .await;
        }
        publisher.call(json!({"op":"ping"}), 0).await;
        sent += 20;
        for _ in 0..20 {
            let f = fast.recv().await;
            assert_eq!(f["tag"], "flood", "{f}");
        }
    }
    let frames = slow.until_closed().await;
    assert_err(frames.last().unwrap(), "slow_consumer");
    assert!(
        (frames.len() as u64) < sent,
        "the slow client cannot have received everything"
    );
    still_alive(&mut publisher).await;
    still_alive(&mut fast).await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_client_gets_latest_retained_state_instead_of_being_dropped() {
    let hub = hub_with(HubConfig {
        outbound_queue_bytes: 64 * 1024,
        ..HubConfig::default()
    })
    .await;
    let mut slow = Raw::connect_small_buffer(&hub).await;
    slow.sub(&["dev/+/state"]).await;
    let mut publisher = Raw::hello(&hub, "publisher", None).await;
    let pad = "x".repeat(1000);
    let mut i = 0u64;
    while patchbay_hub::server::Metrics::get(&hub.hub.metrics().conflated) == 0 {
        assert!(i < 200_000, "never conflated");
        for _ in 0..100 {
            let tag = format!("dev/{}/state", i % 10);
            publisher
                .send(json!({"op":"pub","tag":tag,"body":{"n":i,"pad":pad},"retain":true}))
                .await;
            i += 1;
        }
        publisher.call(json!({"op":"ping"}), 0).await;
    }
    publisher
        .call(
            json!({"op":"pub","tag":"dev/end/state","body":{"n":i},"retain":true}),
            1,
        )
        .await;
    let mut latest = std::collections::HashMap::new();
    let mut received = 0u64;
    let mut last_seq = 0;
    loop {
        let f = slow.recv().await;
        assert_eq!(f["op"], "msg", "{f}");
        let seq = f["seq"].as_u64().unwrap();
        assert!(seq > last_seq);
        last_seq = seq;
        received += 1;
        if f["tag"] == "dev/end/state" {
            break;
        }
        latest.insert(
            f["tag"].as_str().unwrap().to_owned(),
            f["body"]["n"].as_u64().unwrap(),
        );
    }
    // Every update arrived except those a newer one replaced while the client lagged.
    let conflated = patchbay_hub::server::Metrics::get(&hub.hub.metrics().conflated);
    assert_eq!(received, i + 1 - conflated);
    for d in 0..10u64 {
        let last = (0..i).rev().find(|n| n % 10 == d).unwrap();
        assert_eq!(
            latest[&format!("dev/{d}/state")],
            last,
            "dev/{d} must end on its latest state"
        );
    }
    hub.stop().await;
}
