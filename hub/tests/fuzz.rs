//! Random input never panics the hub, every answer is valid JSON, and the
//! hub keeps serving afterwards.

mod common;

use common::{hub_with, Raw};
use patchbay_hub::config::HubConfig;
use patchbay_hub::server::{Drain, Hub, LineBuffer, Outbox, Session};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{json, Value};

fn small_limits() -> HubConfig {
    HubConfig {
        max_frame_bytes: 512,
        max_bad_frames: 1_000_000,
        max_subscriptions: 8,
        ..HubConfig::default()
    }
}

/// Arbitrary JSON values, including the wrong types for every field.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-z0-9/+#]{0,12}".prop_map(Value::String),
        ".{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::hash_map("[a-z_]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Frames with a real `op` and random fields: reaches past the JSON parser.
fn frame_like() -> impl Strategy<Value = Vec<u8>> {
    let op = prop::sample::select(vec![
        "hello", "sub", "unsub", "pub", "claim", "req", "rep", "ping", "pong", "msg",
    ]);
    let field = prop::sample::select(vec![
        "id",
        "tag",
        "tags",
        "body",
        "retain",
        "snapshot",
        "prefix",
        "rid",
        "timeout_ms",
        "cid",
        "error",
        "name",
        "token",
    ]);
    (op, prop::collection::vec((field, any_json()), 0..6)).prop_map(|(op, fields)| {
        let mut obj = serde_json::Map::new();
        obj.insert("op".into(), json!(op));
        for (k, v) in fields {
            obj.insert(k.into(), v);
        }
        let mut line = serde_json::to_vec(&Value::Object(obj)).unwrap();
        line.push(b'\n');
        line
    })
}

fn input() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let chunk = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..700),
        frame_like(),
        frame_like(),
    ];
    prop::collection::vec(chunk, 1..12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn session_survives_random_input(chunks in input()) {
        let hub = Hub::new(small_limits());
        let outbox = Outbox::new(1 << 20);
        let mut session = Session::open(hub.clone(), "127.0.0.1:1".parse().unwrap(), outbox.clone(), patchbay_hub::server::Transport::Tcp).unwrap();
        let mut lines = LineBuffer::new(512);
        for chunk in &chunks {
            lines.spare().extend_from_slice(chunk);
            lines.feed(&mut session);
        }
        let mut out = Vec::new();
        while let Drain::Data { .. } = outbox.drain_into(&mut out, &hub) {}
        for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_slice(line).expect("hub output is JSON");
            prop_assert!(v["op"].is_string());
        }
        drop(session);
        prop_assert_eq!(hub.connection_count(), 0);
    }
}

#[tokio::test]
async fn random_bytes_over_tcp_leave_the_hub_serving() {
    let hub = hub_with(small_limits()).await;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..64 {
        let chunks = input().new_tree(&mut runner).unwrap().current();
        let mut c = Raw::connect(&hub).await;
        for chunk in chunks {
            c.send_raw(&chunk).await;
        }
    }
    let mut fresh = Raw::hello(&hub, "after", None).await;
    let pong = fresh.call(json!({"op":"ping"}), 1).await;
    assert_eq!(pong["op"], "pong");
    hub.stop().await;
}
