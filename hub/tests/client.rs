//! The client library against a real hub (and, for framing faults, against
//! a scripted peer): per-subscription streams, snapshots that hold only
//! their own values, readers that never stall replies, flush, acknowledged
//! publishes, raw and typed bodies, handles that keep the connection, and
//! reconnecting.

mod common;

use std::time::Duration;

use common::{hub, hub_with, WAIT};
use patchbay_client::{
    Body, Client, ClientBuilder, ClientEvent, Error, PublishOptions, RequestOptions, Status,
};
use patchbay_hub::config::HubConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const RETAIN: PublishOptions<'static> = PublishOptions {
    retain: true,
    cid: None,
};

async fn client(addr: impl ToString, name: &str) -> Client {
    ClientBuilder::new(addr.to_string())
        .name(name)
        .connect()
        .await
        .unwrap()
}

async fn next(sub: &mut patchbay_client::Subscription) -> patchbay_client::Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("no message in time")
        .expect("subscription ended")
}

#[tokio::test]
async fn requests_replies_and_correlation_ids() {
    let hub = hub().await;
    let agent = client(hub.addr, "agent").await;
    // The welcome names the hub process; every connection sees the same id.
    let instance = agent.welcome().instance;
    assert_eq!(instance.len(), 16, "{instance:?}");
    assert_eq!(client(hub.addr, "other").await.welcome().instance, instance);
    agent.claim("dev/p1").await.unwrap();
    let requests = agent.requests();
    let responder = {
        let agent = agent.clone();
        tokio::spawn(async move {
            while let Some(r) = requests.next().await {
                let body: Value = r.json().unwrap();
                let state = json!({"power": body["power"], "cid": r.cid()});
                let opts = PublishOptions {
                    retain: true,
                    cid: r.cid(),
                };
                agent
                    .publish_with("dev/p1/state", &Body::from(&state), opts)
                    .await
                    .unwrap();
                r.respond_json(&state).await.unwrap();
            }
        })
    };
    let op = client(hub.addr, "op").await;
    let mut states = op.subscribe_with_snapshot(["dev/p1/state"]).await.unwrap();
    assert!(states.snapshot().await.unwrap().is_empty());
    let opts = RequestOptions {
        timeout: Some(Duration::from_secs(5)),
        cid: Some("cid-1"),
        on_behalf: None,
    };
    let reply = op
        .request_with("dev/p1/set", &Body::from(json!({"power":"on"})), opts)
        .await
        .unwrap();
    assert_eq!(
        reply.json::<Value>().unwrap(),
        json!({"power":"on","cid":"cid-1"})
    );
    let m = next(&mut states).await;
    assert_eq!(
        (m.tag(), m.cid(), m.is_retained()),
        ("dev/p1/state", Some("cid-1"), true)
    );
    assert!(!m.is_snapshot());
    let err = op
        .request("dev/nobody/set", &Body::from(json!({})))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("no_responder"));
    let typed: Value = op
        .request_json("dev/p1/set", &json!({"power":"off"}))
        .await
        .unwrap();
    assert_eq!(typed["power"], "off");
    responder.abort();
    hub.stop().await;
}

#[tokio::test]
async fn each_subscription_gets_its_own_stream() {
    let hub = hub().await;
    let c = client(hub.addr, "c").await;
    let mut states = c.subscribe(["dev/+/state"]).await.unwrap();
    let mut p1 = c.subscribe(["dev/p1/#"]).await.unwrap();
    let p = client(hub.addr, "p").await;
    p.publish_json("dev/p2/state", &1).await.unwrap();
    p.publish_json("dev/p1/state", &2).await.unwrap();
    p.publish_json("dev/p1/event", &3).await.unwrap();
    p.flush().await.unwrap();
    assert_eq!(next(&mut states).await.tag(), "dev/p2/state");
    assert_eq!(next(&mut states).await.tag(), "dev/p1/state");
    assert_eq!(next(&mut p1).await.tag(), "dev/p1/state");
    assert_eq!(next(&mut p1).await.tag(), "dev/p1/event");
    // Dropping one leaves the other working, and the hub stops sending what nobody wants.
    drop(states);
    p.publish_json("dev/p1/state", &4).await.unwrap();
    assert_eq!(next(&mut p1).await.json::<i32>().unwrap(), 4);
    hub.stop().await;
}

#[tokio::test]
async fn a_snapshot_holds_only_its_own_values() {
    let hub = hub().await;
    let p = client(hub.addr, "p").await;
    for i in 0..50 {
        p.publish_acked(&format!("t/{i}"), &Body::json(&i).unwrap(), RETAIN)
            .await
            .unwrap();
    }
    let c = client(hub.addr, "c").await;
    let mut live = c.subscribe(["t/#"]).await.unwrap();
    // While another subscription's snapshot streams, live traffic keeps flowing to `live`.
    let pumping = {
        let p = p.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                p.publish_json("t/live", &i).await.unwrap();
            }
            p.flush().await.unwrap();
        })
    };
    let mut snap = c.subscribe_with_snapshot(["t/+"]).await.unwrap();
    let values = snap.snapshot().await.unwrap();
    let end = snap.snapshot_seq().unwrap();
    assert!(values
        .iter()
        .all(|m| m.is_snapshot() && m.is_retained() && m.seq() <= end));
    assert_eq!(values.iter().filter(|m| m.tag() != "t/live").count(), 50);
    pumping.await.unwrap();
    // `live` saw the 200 live messages and none of the snapshot's values.
    let mut got = 0;
    while got < 200 {
        let m = next(&mut live).await;
        assert!(!m.is_snapshot(), "{m:?}");
        assert_eq!(m.tag(), "t/live");
        got += 1;
    }
    hub.stop().await;
}

#[tokio::test]
async fn an_unread_subscription_stalls_neither_replies_nor_other_subscriptions() {
    let hub = hub().await;
    let c = ClientBuilder::new(hub.addr.to_string())
        .name("c")
        .subscription_capacity(100)
        .connect()
        .await
        .unwrap();
    let mut events = c.events();
    let unread = c.subscribe(["flood"]).await.unwrap();
    let mut states = c.subscribe(["state/+"]).await.unwrap();
    let p = client(hub.addr, "p").await;
    for i in 0..6000 {
        p.publish_json("flood", &i).await.unwrap();
    }
    for i in 0..300 {
        p.publish_with("state/a", &Body::json(&i).unwrap(), RETAIN)
            .await
            .unwrap();
    }
    p.flush().await.unwrap();
    // Replies come at once...
    tokio::time::timeout(Duration::from_secs(2), c.ping())
        .await
        .expect("ping stalled behind unread messages")
        .unwrap();
    // ...another subscription still gets everything (its own 100, then the latest, conflated)...
    let mut last = -1;
    while last != 299 {
        last = next(&mut states).await.json::<i64>().unwrap();
    }
    // ...and the unread one dropped what did not fit, and says so.
    assert!(unread.dropped() >= 5900, "{}", unread.dropped());
    let slow = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(ClientEvent::SlowConsumer { dropped, .. }) = events.recv().await {
                return dropped;
            }
        }
    })
    .await
    .unwrap();
    assert!(slow > 0);
    hub.stop().await;
}

#[tokio::test]
async fn a_subscription_keeps_the_connection_after_every_client_handle_is_dropped() {
    let hub = hub().await;
    let c = client(hub.addr, "c").await;
    let mut sub = c.subscribe(["x"]).await.unwrap();
    let requests = c.requests();
    drop(c);
    let p = client(hub.addr, "p").await;
    p.publish_json("x", &"still here").await.unwrap();
    assert_eq!(next(&mut sub).await.json::<String>().unwrap(), "still here");
    // The last handle gone, the hub sees the client leave.
    drop((sub, requests));
    common::eventually("the connection closes", || hub.hub.connection_count() == 1).await;
    hub.stop().await;
}

#[tokio::test]
async fn flush_waits_until_the_hub_has_everything() {
    let hub = hub().await;
    let p = client(hub.addr, "p").await;
    let body = Body::from_json_bytes(&b"{\"n\":1}"[..]).unwrap();
    for i in 0..1000 {
        p.publish_with(&format!("f/{i}"), &body, RETAIN)
            .await
            .unwrap();
    }
    p.flush().await.unwrap();
    assert_eq!(hub.hub.retained_count(), 1000);
    hub.stop().await;
}

#[tokio::test]
async fn an_acknowledged_publish_returns_the_hubs_error_for_that_call() {
    let hub = hub().await;
    let owner = client(hub.addr, "owner").await;
    owner.claim("dev/p1").await.unwrap();
    let other = client(hub.addr, "other").await;
    let mut events = other.events();
    let err = other
        .publish_acked("dev/p1/state", &Body::json(&1).unwrap(), RETAIN)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("forbidden"), "{err}");
    let seq = other
        .publish_acked("free/tag", &Body::json(&1).unwrap(), RETAIN)
        .await
        .unwrap();
    assert!(seq > 0);
    // Fire and forget: the same refusal arrives as an event.
    other
        .publish("dev/p1/state", &Body::json(&2).unwrap())
        .await
        .unwrap();
    let e = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(ClientEvent::HubError(e)) = events.recv().await {
                return e;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(e.code, "forbidden");
    hub.stop().await;
}

#[tokio::test]
async fn bodies_are_raw_json_with_typed_helpers() {
    let hub = hub().await;
    let c = client(hub.addr, "c").await;
    let mut sub = c.subscribe(["b"]).await.unwrap();
    let p = client(hub.addr, "p").await;
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Reading {
        celsius: f64,
        room: String,
    }
    let r = Reading {
        celsius: 21.5,
        room: "Hall 2".into(),
    };
    p.publish_json("b", &r).await.unwrap();
    let m = next(&mut sub).await;
    assert_eq!(m.body_str(), r#"{"celsius":21.5,"room":"Hall 2"}"#);
    assert_eq!(m.json::<Reading>().unwrap(), r);
    assert!(matches!(
        Body::from_json_bytes(&b"{not json"[..]),
        Err(Error::InvalidBody(_))
    ));
    hub.stop().await;
}

#[tokio::test]
async fn the_hub_refuses_bodies_its_clients_could_not_read() {
    let hub = hub().await;
    let p = client(hub.addr, "p").await;
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    for body in [deep.as_str(), "1e400", r#"{"x":[-2E999]}"#] {
        let err = p
            .publish_acked(
                "x",
                &Body::from_json_bytes(body.to_owned()).unwrap(),
                RETAIN,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("bad_frame"), "{body}: {err}");
    }
    hub.stop().await;
}

/// A scripted hub: welcomes, then sends `lines` (each followed by a newline).
async fn scripted_hub(lines: Vec<Vec<u8>>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let (rd, mut wr) = s.into_split();
        let mut rd = BufReader::new(rd).lines();
        let _hello = rd.next_line().await;
        wr.write_all(b"{\"op\":\"welcome\",\"id\":0,\"client\":1,\"name\":\"t\",\"role\":\"agent\",\"version\":\"x\"}\n")
            .await
            .unwrap();
        // Acknowledge the subscription, then the script.
        let sub: Value = serde_json::from_str(&rd.next_line().await.unwrap().unwrap()).unwrap();
        wr.write_all(format!("{{\"op\":\"ok\",\"id\":{}}}\n", sub["id"]).as_bytes())
            .await
            .unwrap();
        for mut l in lines {
            l.push(b'\n');
            wr.write_all(&l).await.unwrap();
        }
        while let Ok(Some(_)) = rd.next_line().await {}
    });
    addr
}

#[tokio::test]
async fn unreadable_and_over_long_frames_are_skipped_with_an_event() {
    let msg = |n: u32| {
        format!(r#"{{"op":"msg","tag":"x","body":{n},"from":"hub","seq":{n}}}"#).into_bytes()
    };
    let mut long = br#"{"op":"msg","tag":"x","body":""#.to_vec();
    long.extend(std::iter::repeat_n(b'a', 10_000));
    long.extend_from_slice(br#"","from":"hub","seq":2}"#);
    let addr = scripted_hub(vec![
        msg(1),
        long,
        vec![b'{', 0xff, 0xfe, b'}'],
        b"{\"op\":\"msg\",\"tag\":".to_vec(),
        msg(3),
    ])
    .await;
    let c = ClientBuilder::new(addr.to_string())
        .max_frame_bytes(4096)
        .no_reconnect()
        .connect()
        .await
        .unwrap();
    let mut events = c.events();
    let mut sub = c.subscribe(["x"]).await.unwrap();
    assert_eq!(next(&mut sub).await.seq(), 1);
    assert_eq!(next(&mut sub).await.seq(), 3);
    let mut bad = 0;
    while let Ok(Ok(e)) = tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
        if matches!(e, ClientEvent::BadFrame(_)) {
            bad += 1;
        }
    }
    assert_eq!(bad, 3, "over-long, not UTF-8, truncated");
}

#[tokio::test]
async fn a_full_request_queue_is_answered_busy() {
    let hub = hub().await;
    let agent = ClientBuilder::new(hub.addr.to_string())
        .name("agent")
        .request_capacity(1)
        .connect()
        .await
        .unwrap();
    agent.claim("svc").await.unwrap();
    let requests = agent.requests();
    let op = client(hub.addr, "op").await;
    let (one, two) = (Body::json(&1).unwrap(), Body::json(&2).unwrap());
    let first = op.request("svc/a", &one);
    let second = op.request("svc/b", &two);
    tokio::pin!(first, second);
    // Polled in order, both frames go out in order: the first fills the queue.
    let err = tokio::select! {
        biased;
        _ = &mut first => panic!("nobody has answered the first request yet"),
        r = &mut second => r.unwrap_err(),
    };
    assert_eq!(err.code(), Some("busy"), "{err}");
    let r = requests.next().await.unwrap();
    assert_eq!(r.tag(), "svc/a");
    r.respond_json(&"done").await.unwrap();
    assert_eq!(first.await.unwrap().json::<String>().unwrap(), "done");
    hub.stop().await;
}

#[tokio::test]
async fn the_client_reconnects_and_resubscribes() {
    let hub = hub_with(HubConfig::default()).await;
    let addr = hub.addr;
    let c = ClientBuilder::new(addr.to_string())
        .name("c")
        .reconnect(Duration::from_millis(20), Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    let mut events = c.events();
    let mut sub = c.subscribe(["r"]).await.unwrap();
    hub.stop().await;
    let mut status = c.status_changes();
    tokio::time::timeout(WAIT, status.wait_for(|s| *s == Status::Reconnecting))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        c.publish_json("r", &0).await,
        Err(Error::Disconnected)
    ));
    // A new hub on the same address.
    let hub = common::hub_at(addr, HubConfig::default()).await;
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(ClientEvent::Reconnected(_)) = events.recv().await {
                return;
            }
        }
    })
    .await
    .unwrap();
    let p = client(hub.addr, "p").await;
    p.publish_json("r", &"after").await.unwrap();
    assert_eq!(next(&mut sub).await.json::<String>().unwrap(), "after");
    hub.stop().await;
}
