//! The hub at venue size: snapshots larger than any queue, readers that stop
//! reading, a store too big to scan under the lock, the device list and its
//! gauges without scans, and what the delivery counter counts.

mod common;

use std::time::Duration;

use common::{eventually, hub_with, metric, Raw, WAIT};
use patchbay_hub::config::HubConfig;
use patchbay_hub::server::{Metrics, RunningHub};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;

/// Publishes `n` retained values of about `size` bytes on `dev/d<i>/meta`.
async fn fill(hub: &RunningHub, n: usize, size: usize) -> Raw {
    let mut p = Raw::hello(hub, "filler", None).await;
    let pad = "x".repeat(size);
    for i in 0..n {
        p.send(
            json!({"op":"pub","tag":format!("dev/d{i:05}/meta"),"body":{"pad":pad},"retain":true}),
        )
        .await;
    }
    let ok = p.call(json!({"op":"ping"}), 1).await;
    assert_eq!(ok["op"], "pong");
    p
}

/// A reader with a small receive buffer, subscribed (without snapshot) to
/// `patterns`, that then reads nothing. Returns the socket and its hub connection id.
async fn stalled_reader(hub: &RunningHub, patterns: &[&str]) -> (tokio::net::TcpStream, u64) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let s = sock.connect(hub.addr).await.unwrap();
    let (rd, mut wr) = s.into_split();
    let mut lines = BufReader::new(rd).lines();
    wr.write_all(
        format!(
            "{}\n{}\n",
            json!({"op":"hello","name":"stalled","id":1}),
            json!({"op":"sub","tags":patterns,"id":2})
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let welcome: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    let ok: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(ok["op"], "ok", "{ok}");
    let id = welcome["client"].as_u64().unwrap();
    let s = lines.into_inner().into_inner().reunite(wr).unwrap();
    (s, id)
}

#[tokio::test]
async fn a_snapshot_larger_than_the_outbox_reaches_a_reader_that_reads() {
    let hub = hub_with(HubConfig {
        outbound_queue_bytes: 64 * 1024,
        ..HubConfig::default()
    })
    .await;
    // 3 MB of retained values: 48 times the queue's bound.
    let mut p = fill(&hub, 300, 10_000).await;
    let mut s = Raw::hello(&hub, "console", None).await;
    s.send(json!({"op":"sub","tags":["dev/+/meta"],"snapshot":true,"id":7}))
        .await;
    let mut seen = std::collections::BTreeSet::new();
    let end = loop {
        let f = s.recv().await;
        match f["op"].as_str() {
            Some("snapshot") => assert_eq!(f["id"], 7),
            Some("msg") => assert!(seen.insert(f["tag"].as_str().unwrap().to_owned())),
            Some("ok") => break f,
            _ => panic!("unexpected {f}"),
        }
    };
    assert_eq!(end["id"], 7);
    assert_eq!(seen.len(), 300);
    // Live traffic follows the snapshot.
    p.send(json!({"op":"pub","tag":"dev/d00001/meta","body":{"pad":"new"},"retain":true}))
        .await;
    let live = s.recv().await;
    assert_eq!(live["body"]["pad"], "new", "{live}");
    assert!(live["seq"].as_u64() > end["seq"].as_u64());
    assert_eq!(Metrics::get(&hub.hub.metrics().slow_consumer_drops), 0);
    hub.stop().await;
}

#[tokio::test]
async fn an_event_stream_takes_a_snapshot_larger_than_the_outbox() {
    let hub = hub_with(HubConfig {
        outbound_queue_bytes: 64 * 1024,
        ..HubConfig::default()
    })
    .await;
    let _p = fill(&hub, 200, 10_000).await;
    let mut res = reqwest::get(format!(
        "http://{}/api/events?tags=dev/%2B/meta",
        hub.http_addr
    ))
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let mut text = String::new();
    while !text.contains("event: snapshot") {
        let chunk = tokio::time::timeout(WAIT, res.chunk())
            .await
            .expect("event stream stalled")
            .unwrap()
            .expect("event stream ended");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert_eq!(text.matches("event: msg").count(), 200);
    hub.stop().await;
}

#[tokio::test]
async fn a_stalled_reader_costs_bounded_queue_entries() {
    let hub = hub_with(HubConfig {
        outbound_queue_bytes: 16 * 1024,
        write_timeout_ms: 60_000,
        ..HubConfig::default()
    })
    .await;
    let (_s, id) = stalled_reader(&hub, &["t/+"]).await;
    let mut p = Raw::hello(&hub, "publisher", None).await;
    let mut batch = String::new();
    for i in 0..100_000u32 {
        batch.push_str(&format!(
            "{}\n",
            json!({"op":"pub","tag":format!("t/{}", i % 20),"body":i,"retain":true})
        ));
        if i % 1000 == 999 {
            p.send_raw(batch.as_bytes()).await;
            batch.clear();
        }
    }
    assert_eq!(p.call(json!({"op":"ping"}), 1).await["op"], "pong");
    let (entries, bytes) = hub
        .hub
        .outbox_usage(id)
        .expect("the stalled reader is connected");
    // 100,000 conflated updates on 20 tags: what fits the byte bound, the
    // latest per tag, and holes not yet compacted away.
    assert!(
        entries <= 2 * 256 + 20 + 16 * 1024 / 40,
        "{entries} entries ({bytes} bytes) queued for a stalled reader"
    );
    assert!(Metrics::get(&hub.hub.metrics().conflated) > 0);
    hub.stop().await;
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_dropped_at_the_write_deadline() {
    let hub = hub_with(HubConfig {
        outbound_queue_bytes: 256 * 1024 * 1024,
        write_timeout_ms: 300,
        ..HubConfig::default()
    })
    .await;
    let (_s, _) = stalled_reader(&hub, &["x"]).await;
    let mut p = Raw::hello(&hub, "publisher", None).await;
    let line = format!(
        "{}\n",
        json!({"op":"pub","tag":"x","body":"y".repeat(1000)})
    );
    let burst = line.repeat(100);
    let m = hub.hub.clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    // Far under the queue's bound: only the write deadline can drop it.
    while Metrics::get(&m.metrics().slow_consumer_drops) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never dropped");
        p.send_raw(burst.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually("the stalled reader is gone", || m.connection_count() == 1).await;
    assert_eq!(p.call(json!({"op":"ping"}), 2).await["op"], "pong");
    hub.stop().await;
}

#[tokio::test]
async fn a_stalled_event_stream_is_dropped_at_the_write_deadline() {
    let hub = hub_with(HubConfig {
        write_timeout_ms: 300,
        ..HubConfig::default()
    })
    .await;
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(hub.http_addr).await.unwrap();
    s.write_all(b"GET /api/events?tags=x HTTP/1.1\r\nhost: hub\r\n\r\n")
        .await
        .unwrap();
    let m = hub.hub.clone();
    eventually("the event stream is connected", || {
        m.connection_count() == 1
    })
    .await;
    let mut p = Raw::hello(&hub, "publisher", None).await;
    let burst = format!(
        "{}\n",
        json!({"op":"pub","tag":"x","body":"y".repeat(1000)})
    )
    .repeat(50);
    let deadline = tokio::time::Instant::now() + WAIT;
    while m.connection_count() > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled stream was never dropped"
        );
        p.send_raw(burst.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(Metrics::get(&m.metrics().slow_consumer_drops) >= 1);
    hub.stop().await;
}

#[tokio::test]
async fn an_idle_event_stream_gets_keepalive_comments() {
    let hub = hub_with(HubConfig {
        ping_interval_ms: 200,
        idle_timeout_ms: 1000,
        ..HubConfig::default()
    })
    .await;
    let s = tokio::net::TcpStream::connect(hub.http_addr).await.unwrap();
    let (rd, mut wr) = s.into_split();
    wr.write_all(b"GET /api/events?tags=quiet HTTP/1.1\r\nhost: hub\r\n\r\n")
        .await
        .unwrap();
    let mut lines = BufReader::new(rd).lines();
    loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("no keepalive arrived")
            .unwrap()
            .expect("stream ended");
        if line.starts_with(':') {
            break;
        }
    }
    hub.stop().await;
}

#[tokio::test]
async fn a_huge_snapshot_is_taken_in_steps_while_everyone_else_is_served() {
    let hub = hub_with(HubConfig {
        max_patterns_per_sub: 1024,
        ..HubConfig::default()
    })
    .await;
    let mut p = Raw::hello(&hub, "p", None).await;
    let mut batch = String::new();
    for i in 0..60_000u32 {
        batch.push_str(&format!(
            "{}\n",
            json!({"op":"pub","tag":format!("dev/d{i}/state"),"body":{"power":"on"},"retain":true})
        ));
        if i % 2000 == 1999 {
            p.send_raw(batch.as_bytes()).await;
            batch.clear();
        }
    }
    assert_eq!(p.call(json!({"op":"ping"}), 1).await["op"], "pong");
    let steps_before = Metrics::get(&hub.hub.metrics().snapshot_steps);
    // A viewer asks for 1,024 patterns' worth of snapshot and reads nothing yet.
    let mut patterns: Vec<String> = (0..1023).map(|i| format!("dev/d{i}/+")).collect();
    patterns.push("dev/+/state".into());
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let s = sock.connect(hub.addr).await.unwrap();
    let (rd, mut wr) = s.into_split();
    wr.write_all(
        format!(
            "{}\n",
            json!({"op":"sub","tags":patterns,"snapshot":true,"id":"big"})
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Everyone else is answered while that snapshot waits on its reader.
    for i in 0..20 {
        assert_eq!(p.call(json!({"op":"ping"}), 100 + i).await["op"], "pong");
    }
    // Now the viewer reads: every value once, then `ok`.
    let mut lines = BufReader::new(rd).lines();
    let mut count = 0;
    loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("snapshot stalled")
            .unwrap()
            .expect("closed");
        let f: Value = serde_json::from_str(&line).unwrap();
        if f["op"] == "ok" {
            assert_eq!(f["id"], "big");
            break;
        }
        if f["op"] == "snapshot" {
            assert_eq!(f["id"], "big");
            continue;
        }
        count += 1;
    }
    assert_eq!(count, 60_000);
    let steps = Metrics::get(&hub.hub.metrics().snapshot_steps) - steps_before;
    assert!(steps > 30, "the snapshot was taken in {steps} steps");
    hub.stop().await;
}

#[tokio::test]
async fn one_sub_may_list_at_most_max_patterns_per_sub() {
    let hub = hub_with(HubConfig::default()).await;
    let mut c = Raw::hello(&hub, "c", None).await;
    let patterns: Vec<String> = (0..257).map(|i| format!("a/{i}")).collect();
    let e = c.call(json!({"op":"sub","tags":patterns}), 1).await;
    common::assert_err(&e, "too_many_subscriptions");
    assert!(
        e["message"].as_str().unwrap().contains("at most 256"),
        "{e}"
    );
    hub.stop().await;
}

#[tokio::test]
async fn the_device_list_streams_from_the_index_and_gauges_need_no_scan() {
    let hub = hub_with(HubConfig::default()).await;
    let mut p = Raw::hello(&hub, "agent", None).await;
    let mut batch = String::new();
    for i in 0..3000u32 {
        let id = format!("d{i:04}");
        batch.push_str(&format!(
            "{}\n{}\n{}\n",
            json!({"op":"pub","tag":format!("dev/{id}/meta"),"body":{"name":format!("Device {i}"),"location":"Hall"},"retain":true}),
            json!({"op":"pub","tag":format!("dev/{id}/state"),"body":{"power":"on"},"retain":true}),
            json!({"op":"pub","tag":format!("dev/{id}/online"),"body":{"online": i % 3 != 0},"retain":true}),
        ));
    }
    // A state without a description is not a device.
    batch.push_str(&format!(
        "{}\n",
        json!({"op":"pub","tag":"dev/orphan/state","body":{},"retain":true})
    ));
    p.send_raw(batch.as_bytes()).await;
    assert_eq!(p.call(json!({"op":"ping"}), 1).await["op"], "pong");
    let res = reqwest::get(format!("http://{}/api/devices", hub.http_addr))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["transfer-encoding"], "chunked");
    let list: Vec<Value> = res.json().await.unwrap();
    assert_eq!(list.len(), 3000);
    assert!(list
        .windows(2)
        .all(|w| w[0]["id"].as_str() < w[1]["id"].as_str()));
    assert_eq!(list[1]["name"], "Device 1");
    let online: Vec<Value> =
        reqwest::get(format!("http://{}/api/devices?online=false", hub.http_addr))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(online.len(), 1000);
    let text = reqwest::get(format!("http://{}/metrics", hub.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(metric(&text, "patchbay_devices"), 3000.0);
    assert_eq!(metric(&text, "patchbay_devices_online"), 2000.0);
    // Going offline and being deleted move the gauges.
    p.send(json!({"op":"pub","tag":"dev/d0001/online","body":{"online":false},"retain":true}))
        .await;
    p.send(json!({"op":"pub","tag":"dev/d0002/meta","body":null,"retain":true}))
        .await;
    assert_eq!(p.call(json!({"op":"ping"}), 2).await["op"], "pong");
    let counts = hub.hub.device_counts();
    assert_eq!((counts.described, counts.online), (2999, 1999));
    assert!(metric(&text, "patchbay_lock_hold_seconds_count") > 0.0);
    hub.stop().await;
}

#[tokio::test]
async fn deliveries_count_what_was_written_not_what_was_queued() {
    let hub = hub_with(HubConfig {
        outbound_queue_bytes: 256 * 1024 * 1024,
        write_timeout_ms: 60_000,
        ..HubConfig::default()
    })
    .await;
    let (s, _) = stalled_reader(&hub, &["x"]).await;
    let mut p = Raw::hello(&hub, "publisher", None).await;
    let line = format!(
        "{}\n",
        json!({"op":"pub","tag":"x","body":"y".repeat(1000)})
    );
    p.send_raw(line.repeat(10_000).as_bytes()).await;
    assert_eq!(p.call(json!({"op":"ping"}), 1).await["op"], "pong");
    let m = hub.hub.clone();
    let written = Metrics::get(&m.metrics().deliveries);
    assert!(
        written < 10_000,
        "{written} deliveries counted though the reader has read nothing"
    );
    // Once it reads, every copy counts.
    let mut lines = BufReader::new(s).lines();
    for _ in 0..10_000 {
        tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    eventually("every copy is counted", || {
        Metrics::get(&m.metrics().deliveries) == 10_000
    })
    .await;
    hub.stop().await;
}

#[tokio::test]
async fn a_connection_storm_fits_the_listen_backlog() {
    patchbay_hub::server::check_descriptors(&HubConfig::default());
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    // The kernel caps any backlog at somaxconn; storm up to what it allows.
    let n = 1500.min(somaxconn.saturating_sub(8));
    let listener = patchbay_hub::server::bind(
        "127.0.0.1:0".parse().unwrap(),
        HubConfig::default().listen_backlog,
    )
    .unwrap();
    let addr = listener.local_addr().unwrap();
    // Nobody accepts yet: every handshake must complete into the backlog, none wait for a SYN retry.
    let connects: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(async move {
                tokio::time::timeout(
                    Duration::from_millis(700),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
            })
        })
        .collect();
    let mut held = Vec::new();
    for c in connects {
        let s = c
            .await
            .unwrap()
            .expect("a connection waited for a SYN retry")
            .unwrap();
        held.push(s);
    }
    assert_eq!(held.len(), n);
    assert!(HubConfig::default().max_connections >= 20_000);
}
