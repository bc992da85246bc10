//! Routing over real TCP: the seed scenario, dedup, no self-echo, seq order.

mod common;

use common::{hub, Raw};
use serde_json::json;

#[tokio::test]
async fn seed_scenario() {
    let hub = hub().await;
    let mut c1 = Raw::hello(&hub, "C1", None).await;
    let mut c2 = Raw::hello(&hub, "C2", None).await;
    let mut c3 = Raw::hello(&hub, "C3", None).await;
    c1.sub(&["123"]).await;
    c2.sub(&["123", "456"]).await;
    c3.sub(&["123", "456", "789"]).await;

    // C1 publishes on 456: C2 and C3 get it.
    c1.send(json!({"op":"pub","tag":"456","body":"from C1"}))
        .await;
    for c in [&mut c2, &mut c3] {
        let m = c.recv().await;
        assert_eq!(
            (m["op"].as_str(), m["tag"].as_str(), m["from"].as_str()),
            (Some("msg"), Some("456"), Some("C1"))
        );
        assert_eq!(m["body"], "from C1");
    }

    // C2 publishes on 123: C1 and C3 get it, C2 does not.
    c2.send(json!({"op":"pub","tag":"123","body":"from C2"}))
        .await;
    for c in [&mut c1, &mut c3] {
        let m = c.recv().await;
        assert_eq!(
            (m["tag"].as_str(), m["from"].as_str()),
            (Some("123"), Some("C2"))
        );
    }

    // C3 publishes on 999: nobody gets anything. A marker published on 123 by
    // C1 afterwards must be the next frame C2 and C3 see, and a marker from C3
    // the next frame C1 sees; so neither the 999 message nor C2's own 123 came back.
    c3.send(json!({"op":"pub","tag":"999","body":"nobody"}))
        .await;
    c1.send(json!({"op":"pub","tag":"123","body":"marker-1"}))
        .await;
    for c in [&mut c2, &mut c3] {
        let m = c.recv().await;
        assert_eq!(m["body"], "marker-1", "unexpected frame {m}");
    }
    c3.send(json!({"op":"pub","tag":"123","body":"marker-3"}))
        .await;
    let m = c1.recv().await;
    assert_eq!(m["body"], "marker-3", "unexpected frame {m}");
    let m = c2.recv().await;
    assert_eq!(m["body"], "marker-3", "unexpected frame {m}");
    hub.stop().await;
}

#[tokio::test]
async fn overlapping_patterns_deliver_once_in_seq_order() {
    let hub = hub().await;
    let mut s = Raw::hello(&hub, "s", None).await;
    s.sub(&["dev/+/state", "dev/#", "#"]).await;
    let mut p = Raw::hello(&hub, "p", None).await;
    for i in 0..100 {
        p.send(json!({"op":"pub","tag":"dev/p1/state","body":i}))
            .await;
    }
    p.send(json!({"op":"pub","tag":"end","body":null})).await;
    let mut last_seq = 0;
    for i in 0..100 {
        let m = s.recv().await;
        assert_eq!(m["body"], i, "each message once, in order: {m}");
        let seq = m["seq"].as_u64().unwrap();
        assert!(seq > last_seq);
        last_seq = seq;
    }
    assert_eq!(s.recv().await["tag"], "end");
    hub.stop().await;
}

#[tokio::test]
async fn unsub_stops_delivery() {
    let hub = hub().await;
    let mut s = Raw::hello(&hub, "s", None).await;
    s.sub(&["a", "b"]).await;
    let ok = s.call(json!({"op":"unsub","tags":["a"]}), 5).await;
    assert_eq!(ok["op"], "ok");
    let mut p = Raw::hello(&hub, "p", None).await;
    p.send(json!({"op":"pub","tag":"a","body":1})).await;
    p.send(json!({"op":"pub","tag":"b","body":2})).await;
    assert_eq!(s.recv().await["tag"], "b");
    hub.stop().await;
}

#[tokio::test]
async fn ping_pong_and_pub_ack_carry_ids() {
    let hub = hub().await;
    let mut c = Raw::connect(&hub).await;
    let pong = c.call(json!({"op":"ping"}), 42).await;
    assert_eq!(pong["op"], "pong");
    let ok = c
        .call(json!({"op":"pub","tag":"x","body":{"a":[1,2]}}), 43)
        .await;
    assert_eq!(ok["op"], "ok");
    assert!(ok["seq"].as_u64().unwrap() >= 1);
    hub.stop().await;
}
