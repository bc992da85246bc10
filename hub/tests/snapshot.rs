//! Retained values and the snapshot-then-live handover.

mod common;

use std::collections::HashMap;

use common::{hub, Raw};
use serde_json::json;

#[tokio::test]
async fn retained_value_reaches_late_joiner_and_null_deletes_it() {
    let hub = hub().await;
    let mut p = Raw::hello(&hub, "p", None).await;
    p.call(
        json!({"op":"pub","tag":"dev/a/state","body":{"power":"on"},"retain":true}),
        1,
    )
    .await;
    p.call(
        json!({"op":"pub","tag":"dev/b/state","body":{"power":"off"},"retain":true}),
        2,
    )
    .await;
    p.call(
        json!({"op":"pub","tag":"dev/b/state","body":null,"retain":true}),
        3,
    )
    .await;
    let mut s = Raw::hello(&hub, "s", None).await;
    s.send(json!({"op":"sub","tags":["dev/+/state"],"snapshot":true,"id":9}))
        .await;
    let opened = s.recv().await;
    assert_eq!(
        (opened["op"].as_str(), opened["id"].as_u64()),
        (Some("snapshot"), Some(9))
    );
    let m = s.recv().await;
    assert_eq!(
        (m["tag"].as_str(), m["retained"].as_bool()),
        (Some("dev/a/state"), Some(true))
    );
    assert_eq!(m["body"], json!({"power":"on"}));
    let ok = s.recv().await;
    assert_eq!(
        (ok["op"].as_str(), ok["id"].as_u64()),
        (Some("ok"), Some(9)),
        "{ok}"
    );
    assert!(ok["seq"].as_u64().unwrap() >= m["seq"].as_u64().unwrap());
    hub.stop().await;
}

/// A subscriber joins with a snapshot while a publisher streams 10,000
/// retained updates over 100 tags. The snapshot holds each tag at most once,
/// each with a seq no newer than the `ok` that ends it; live messages follow
/// in strictly increasing seq, all newer than the snapshot; no message comes
/// twice and every tag ends on its last value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_under_concurrent_publishing() {
    const TAGS: u64 = 100;
    const TOTAL: u64 = 10_000;
    let hub = hub().await;
    let mut publisher = Raw::hello(&hub, "publisher", None).await;
    let mut s = Raw::hello(&hub, "late", None).await;
    let (half_tx, half_rx) = tokio::sync::oneshot::channel::<()>();

    let stream = tokio::spawn(async move {
        let mut half = Some(half_tx);
        for i in 0..TOTAL {
            if i == TOTAL / 2 {
                // Once the first half is routed, let the subscriber join while the second half streams.
                publisher.call(json!({"op":"ping"}), 0).await;
                half.take().unwrap().send(()).unwrap();
            }
            let tag = format!("t/{}", i % TAGS);
            publisher
                .send(json!({"op":"pub","tag":tag,"body":i,"retain":true}))
                .await;
        }
        publisher
            .call(
                json!({"op":"pub","tag":"t/done","body":true,"retain":true}),
                1,
            )
            .await;
        publisher
    });
    half_rx.await.unwrap();
    s.send(json!({"op":"sub","tags":["t/#"],"snapshot":true}))
        .await;

    let mut snapshot: Vec<(String, u64, u64)> = Vec::new();
    let mut snapshot_seq = None;
    let mut last_seq = 0u64;
    let mut latest: HashMap<String, u64> = HashMap::new();
    let mut done = false;
    while !(done && snapshot_seq.is_some()) {
        let f = s.recv().await;
        if f["op"] == "snapshot" {
            assert!(snapshot.is_empty() && snapshot_seq.is_none(), "{f}");
            continue;
        }
        if f["op"] == "ok" {
            let end = f["seq"].as_u64().unwrap();
            for (tag, seq, _) in &snapshot {
                assert!(
                    *seq <= end,
                    "snapshot value {tag}@{seq} newer than its end {end}"
                );
            }
            snapshot_seq = Some(end);
            last_seq = end;
            continue;
        }
        assert_eq!(f["op"], "msg", "{f}");
        let seq = f["seq"].as_u64().unwrap();
        let tag = f["tag"].as_str().unwrap().to_owned();
        if snapshot_seq.is_none() {
            assert_eq!(f["retained"], true, "{f}");
            assert!(
                snapshot.iter().all(|(t, _, _)| *t != tag),
                "{tag} twice in the snapshot"
            );
        } else {
            assert!(
                seq > last_seq,
                "live seq {seq} after {last_seq}: gap-free order broken"
            );
            last_seq = seq;
        }
        if tag == "t/done" {
            done = true;
            continue;
        }
        let v = f["body"].as_u64().unwrap();
        if snapshot_seq.is_none() {
            snapshot.push((tag.clone(), seq, v));
        }
        if let Some(prev) = latest.insert(tag.clone(), v) {
            assert!(
                v > prev,
                "{tag}: value {v} after {prev} (duplicate or reordered)"
            );
        }
    }
    assert!(snapshot_seq.is_some(), "no ok ended the snapshot");
    assert!(
        !snapshot.is_empty(),
        "joined after half the stream, yet the snapshot was empty"
    );
    stream.await.unwrap();
    assert_eq!(latest.len() as u64, TAGS);
    for t in 0..TAGS {
        let want = TOTAL - TAGS + t;
        assert_eq!(
            latest[&format!("t/{t}")],
            want,
            "t/{t} did not end on its last value"
        );
    }
    hub.stop().await;
}
