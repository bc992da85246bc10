//! Attacks from outside: idle and trickling sockets before authentication,
//! HTTP clients that never finish, floods of requests and retained values,
//! impersonating a device whose agent is away, readers that stall, and
//! look-alike tags. Each must get a precise error and leave everyone else
//! served.

mod common;

use std::time::Duration;

use common::{assert_err, eventually, http_raw, hub_with, Raw, WAIT};
use patchbay_hub::config::{HubConfig, Role, TokenConfig};
use patchbay_hub::server::Metrics;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

fn token(name: &str, secret: &str, role: Role, claims: &[&str]) -> TokenConfig {
    TokenConfig {
        name: Some(name.into()),
        token: secret.into(),
        role,
        claims: claims.iter().map(|c| c.to_string()).collect(),
        read: Vec::new(),
        write: Vec::new(),
        deny: Vec::new(),
    }
}

fn with_tokens(cfg: HubConfig) -> HubConfig {
    HubConfig {
        tokens: vec![
            token("rack-a", "agent-a-secret", Role::Agent, &["dev/p1"]),
            token("rack-b", "agent-b-secret", Role::Agent, &["dev/p9"]),
            token("desk", "operator-secret", Role::Operator, &[]),
        ],
        ..cfg
    }
}

/// Reads until the hub closes; returns every line, whole or not.
async fn lines_until_eof(s: TcpStream) -> Vec<String> {
    let mut raw = Vec::new();
    let mut s = s;
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("the hub did not close")
        .ok();
    String::from_utf8_lossy(&raw)
        .split_inclusive('\n')
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn blank_lines_do_not_keep_an_unauthenticated_socket_alive() {
    let hub = hub_with(with_tokens(HubConfig {
        hello_timeout_ms: 300,
        ..HubConfig::default()
    }))
    .await;
    let mut s = TcpStream::connect(hub.addr).await.unwrap();
    let trickle = tokio::spawn(async move {
        // Blank lines and a partial line: bytes, but never a frame.
        let _ = s.write_all(b"{\"op\":").await;
        loop {
            if s.write_all(b"\n").await.is_err() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut byte = [0u8; 512];
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_millis(1), s.read(&mut byte)).await
            {
                return s;
            }
        }
    });
    let m = hub.hub.clone();
    eventually("the trickling socket is dropped", || {
        Metrics::get(&m.metrics().unauthenticated_dropped) >= 1
    })
    .await;
    tokio::time::timeout(WAIT, trickle).await.unwrap().unwrap();
    hub.stop().await;
}

#[tokio::test]
async fn no_hello_in_time_gets_a_reason() {
    let hub = hub_with(with_tokens(HubConfig {
        hello_timeout_ms: 200,
        ..HubConfig::default()
    }))
    .await;
    let s = TcpStream::connect(hub.addr).await.unwrap();
    let lines = lines_until_eof(s).await;
    let last: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_err(&last, "unauthorized");
    assert!(
        last["message"].as_str().unwrap().contains("within 200 ms"),
        "{last}"
    );
    hub.stop().await;
}

#[tokio::test]
async fn a_long_partial_line_before_hello_is_refused() {
    let hub = hub_with(with_tokens(HubConfig::default())).await;
    let mut s = TcpStream::connect(hub.addr).await.unwrap();
    s.write_all(&vec![b'x'; 5000]).await.unwrap();
    let lines = lines_until_eof(s).await;
    let last: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_err(&last, "frame_too_large");
    assert!(last["message"].as_str().unwrap().contains("4096"), "{last}");
    hub.stop().await;
}

#[tokio::test]
async fn idle_sockets_cannot_keep_a_real_agent_out() {
    let hub = hub_with(with_tokens(HubConfig {
        max_connections: 60,
        max_unauthenticated: 20,
        ..HubConfig::default()
    }))
    .await;
    let mut idle = Vec::new();
    for _ in 0..70 {
        idle.push(TcpStream::connect(hub.addr).await.unwrap());
    }
    let m = hub.hub.clone();
    eventually("70 idle sockets are accepted", || {
        Metrics::get(&m.metrics().connections_total) >= 70
    })
    .await;
    assert!(hub.hub.unauthenticated_count() <= 20);
    let mut agent = Raw::connect(&hub).await;
    agent
        .send(json!({"op":"hello","name":"rack-a","token":"agent-a-secret","id":1}))
        .await;
    let w = agent.recv().await;
    assert_eq!(w["op"], "welcome", "{w}");
    assert_eq!(
        agent.call(json!({"op":"claim","prefix":"dev/p1"}), 2).await["op"],
        "ok"
    );
    hub.stop().await;
}

#[tokio::test]
async fn http_headers_must_arrive_in_time() {
    let hub = hub_with(HubConfig {
        http_header_timeout_ms: 300,
        ..HubConfig::default()
    })
    .await;
    let mut s = TcpStream::connect(hub.http_addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: hub\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("a half-sent request kept its connection")
        .ok();
    hub.stop().await;
}

#[tokio::test]
async fn http_connections_past_the_limit_get_503_and_the_wire_port_stays_open() {
    let hub = hub_with(HubConfig {
        max_http_connections: 5,
        ..HubConfig::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(hub.http_addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: hub\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    let (status, head, body) = http_raw(&hub, b"GET /healthz HTTP/1.1\r\nhost: hub\r\n\r\n").await;
    assert_eq!(status, 503, "{head}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "max_http_connections", "{v}");
    assert!(Metrics::get(&hub.hub.metrics().http_refused) >= 1);
    let mut agent = Raw::hello(&hub, "agent", None).await;
    assert_eq!(agent.call(json!({"op":"ping"}), 1).await["op"], "pong");
    drop(held);
    hub.stop().await;
}

#[tokio::test]
async fn unparsable_http_gets_json_errors() {
    let hub = hub_with(HubConfig::default()).await;
    let (status, _, body) = http_raw(&hub, b"NOT HTTP AT ALL\r\n\r\n").await;
    assert_eq!(status, 400);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "bad_request");
    let many: String = (0..120).map(|i| format!("x-h{i}: v\r\n")).collect();
    let huge = format!("GET /healthz HTTP/1.1\r\nhost: hub\r\n{many}\r\n");
    let (status, _, body) = http_raw(&hub, huge.as_bytes()).await;
    assert_eq!(status, 431);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "headers_too_large");
    let long = format!("GET /{} HTTP/1.1\r\nhost: hub\r\n\r\n", "u".repeat(70_000));
    let (status, _, body) = http_raw(&hub, long.as_bytes()).await;
    assert_eq!(status, 414);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "uri_too_long");
    hub.stop().await;
}

#[tokio::test]
async fn a_device_whose_agent_is_away_cannot_be_impersonated() {
    let hub = hub_with(with_tokens(HubConfig::default())).await;
    let mut a = Raw::hello(&hub, "rack-a", Some("agent-a-secret")).await;
    a.call(json!({"op":"claim","prefix":"dev/p1"}), 1).await;
    for (part, body) in [
        (
            "meta",
            json!({"name":"P1","settings":[{"name":"power","type":"enum","values":["on","off"],"writable":true}]}),
        ),
        ("state", json!({"power":"on"})),
        ("online", json!({"online":true})),
    ] {
        let ok = a
            .call(
                json!({"op":"pub","tag":format!("dev/p1/{part}"),"body":body,"retain":true}),
                2,
            )
            .await;
        assert_eq!(ok["op"], "ok", "{ok}");
    }
    drop(a);
    let mut op = Raw::hello(&hub, "desk", Some("operator-secret")).await;
    // Its last will arrives; the device is offline.
    op.send(json!({"op":"sub","tags":["dev/p1/online"],"snapshot":true}))
        .await;
    let will = loop {
        let f = op.recv().await;
        if f["op"] == "msg" && f["from"] == "hub" {
            break f;
        }
    };
    assert_eq!(will["body"]["online"], false);
    // Nobody else may speak for it...
    for (tag, body) in [
        ("dev/p1/online", json!({"online":true})),
        ("dev/p1/state", json!({"power":"off"})),
        ("dev/p1/meta", Value::Null),
    ] {
        let e = op
            .call(json!({"op":"pub","tag":tag,"body":body,"retain":true}), 3)
            .await;
        assert_err(&e, "forbidden");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("reserved for token `rack-a`"),
            "{e}"
        );
    }
    let mut b = Raw::hello(&hub, "rack-b", Some("agent-b-secret")).await;
    assert_err(
        &b.call(json!({"op":"claim","prefix":"dev/p1"}), 4).await,
        "forbidden",
    );
    // ...or receive its requests.
    op.call(json!({"op":"sub","tags":["dev/p1/set"]}), 5).await;
    op.send(json!({"op":"req","tag":"dev/p1/set","body":{"power":"off"},"rid":"r1"}))
        .await;
    let e = op.recv().await;
    assert_err(&e, "no_responder");
    assert_eq!(e["rid"], "r1");
    assert!(
        e["message"].as_str().unwrap().contains("not connected"),
        "{e}"
    );
    let res = reqwest::Client::new()
        .patch(format!("http://{}/api/devices/p1", hub.http_addr))
        .bearer_auth("operator-secret")
        .json(&json!({"power":"off"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], "offline", "{v}");
    // Its own token may come back.
    let mut a2 = Raw::hello(&hub, "rack-a", Some("agent-a-secret")).await;
    assert_eq!(
        a2.call(json!({"op":"claim","prefix":"dev/p1"}), 6).await["op"],
        "ok"
    );
    hub.stop().await;
}

#[tokio::test]
async fn reserved_names_are_refused_in_hello() {
    let hub = hub_with(HubConfig::default()).await;
    for name in ["hub", "HUB", " http "] {
        let mut c = Raw::connect(&hub).await;
        let e = c.call(json!({"op":"hello","name":name}), 1).await;
        assert_err(&e, "forbidden");
        assert!(e["message"].as_str().unwrap().contains("reserved"), "{e}");
    }
    hub.stop().await;
}

#[tokio::test]
async fn retained_values_are_limited_in_number() {
    let hub = hub_with(HubConfig {
        max_retained: 3,
        ..HubConfig::default()
    })
    .await;
    let mut c = Raw::hello(&hub, "c", None).await;
    for i in 0..3 {
        let ok = c
            .call(
                json!({"op":"pub","tag":format!("r/{i}"),"body":i,"retain":true}),
                i,
            )
            .await;
        assert_eq!(ok["op"], "ok", "{ok}");
    }
    let e = c
        .call(json!({"op":"pub","tag":"r/3","body":3,"retain":true}), 10)
        .await;
    assert_err(&e, "retained_limit");
    assert!(e["message"].as_str().unwrap().contains("limit of 3"), "{e}");
    // Updating, deleting, and what deleting makes room for, all still work.
    assert_eq!(
        c.call(json!({"op":"pub","tag":"r/0","body":9,"retain":true}), 11)
            .await["op"],
        "ok"
    );
    assert_eq!(
        c.call(
            json!({"op":"pub","tag":"r/1","body":null,"retain":true}),
            12
        )
        .await["op"],
        "ok"
    );
    assert_eq!(
        c.call(json!({"op":"pub","tag":"r/3","body":3,"retain":true}), 13)
            .await["op"],
        "ok"
    );
    assert_eq!(
        c.call(json!({"op":"pub","tag":"plain","body":1}), 14).await["op"],
        "ok"
    );
    hub.stop().await;
}

#[tokio::test]
async fn pending_requests_are_limited_and_a_departing_responder_answers_them_all() {
    const N: u64 = 5000;
    let hub = hub_with(HubConfig {
        max_pending_requests: N as usize,
        // Room for the responder to fall a little behind reading its requests,
        // still far less than the asker's 5,000 answers (about 500 KB).
        outbound_queue_bytes: 256 * 1024,
        ..HubConfig::default()
    })
    .await;
    let mut responder = Raw::hello(&hub, "responder", None).await;
    responder
        .call(json!({"op":"claim","prefix":"svc"}), 1)
        .await;
    // The responder reads every request and answers none.
    let (got_all_tx, got_all) = tokio::sync::oneshot::channel();
    let responder = tokio::spawn(async move {
        let mut got_all_tx = Some(got_all_tx);
        let mut n = 0;
        while let Some(f) = responder.try_recv().await {
            if f["op"] == "req" {
                n += 1;
                if n == N {
                    got_all_tx.take().unwrap().send(()).unwrap();
                    break;
                }
            }
        }
        responder
    });
    let mut asker = Raw::connect_small_buffer(&hub).await;
    asker.send(json!({"op":"hello","name":"asker"})).await;
    assert_eq!(asker.recv().await["op"], "welcome");
    let mut batch = String::new();
    for i in 0..=N {
        batch.push_str(&format!(
            "{}\n",
            json!({"op":"req","tag":"svc/x","body":{},"rid":i,"timeout_ms":60_000})
        ));
    }
    asker.send_raw(batch.as_bytes()).await;
    let e = asker.recv().await;
    assert_err(&e, "too_many_requests");
    assert_eq!(e["rid"], N);
    // The responder leaves: exactly one `unavailable` per request, and the
    // asker, which reads none of them for now, stays connected.
    tokio::time::timeout(WAIT, got_all).await.unwrap().unwrap();
    drop(responder.await.unwrap());
    eventually("the responder is gone", || hub.hub.connection_count() == 1).await;
    let mut answered = std::collections::BTreeSet::new();
    while answered.len() < N as usize {
        let f = asker.recv().await;
        assert_err(&f, "unavailable");
        assert!(answered.insert(f["rid"].as_u64().unwrap()), "{f}");
    }
    assert_eq!(asker.call(json!({"op":"ping"}), 3).await["op"], "pong");
    // With its answers in, it may ask again.
    let mut r2 = Raw::hello(&hub, "responder-2", None).await;
    r2.call(json!({"op":"sub","tags":["other"]}), 4).await;
    asker
        .send(json!({"op":"req","tag":"other","body":{},"rid":"again"}))
        .await;
    let req = r2.recv().await;
    assert_eq!(req["op"], "req", "{req}");
    hub.stop().await;
}

#[tokio::test]
async fn a_dropped_slow_consumer_reads_whole_frames_then_the_reason() {
    let hub = hub_with(HubConfig {
        outbound_queue_bytes: 64 * 1024,
        ..HubConfig::default()
    })
    .await;
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(hub.addr).await.unwrap();
    s.write_all(format!("{}\n", json!({"op":"sub","tags":["x"]})).as_bytes())
        .await
        .unwrap();
    let mut p = Raw::hello(&hub, "publisher", None).await;
    eventually("the subscription is in place", || {
        hub.hub.connection_count() == 2
    })
    .await;
    p.call(json!({"op":"ping"}), 0).await;
    let line = format!("{}\n", json!({"op":"pub","tag":"x","body":"y".repeat(777)}));
    let m = hub.hub.clone();
    while Metrics::get(&m.metrics().slow_consumer_drops) == 0 {
        p.send_raw(line.repeat(100).as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The client stalls for a while after the hub gave up on it, then reads.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let lines = lines_until_eof(s).await;
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(
            l.ends_with('\n'),
            "a truncated frame: {:?}",
            &l[..l.len().min(80)]
        );
        let _: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    }
    let last: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_err(&last, "slow_consumer");
    hub.stop().await;
}

#[tokio::test]
async fn look_alike_tags_are_refused() {
    let hub = hub_with(HubConfig::default()).await;
    let mut c = Raw::hello(&hub, "c", None).await;
    for tag in [
        "dev/p\u{7f}1/state",
        "dev/p\u{85}1/state",
        "dev/p\u{202e}1/state",
        "dev/p\u{200b}1/state",
        "dev/\u{feff}p1/state",
    ] {
        let e = c
            .call(json!({"op":"pub","tag":tag,"body":1,"retain":true}), 1)
            .await;
        assert_err(&e, "bad_tag");
    }
    hub.stop().await;
}

#[tokio::test]
async fn limits_on_the_event_stream_are_503_with_a_reason() {
    let hub = hub_with(HubConfig {
        max_connections: 1,
        ..HubConfig::default()
    })
    .await;
    let _c = Raw::hello(&hub, "c", None).await;
    let res = reqwest::get(format!("http://{}/api/events?tags=x", hub.http_addr))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], "max_connections", "{v}");
    hub.stop().await;
}

#[tokio::test]
async fn a_query_token_with_reserved_characters_opens_the_event_stream() {
    let hub = hub_with(HubConfig {
        tokens: vec![token("console", "abc+/=xyz12", Role::Viewer, &[])],
        ..HubConfig::default()
    })
    .await;
    let s = TcpStream::connect(hub.http_addr).await.unwrap();
    let (rd, mut wr) = s.into_split();
    wr.write_all(b"GET /api/events?tags=x&token=abc%2B%2F%3Dxyz12 HTTP/1.1\r\nhost: hub\r\n\r\n")
        .await
        .unwrap();
    let mut lines = BufReader::new(rd).lines();
    let status = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    hub.stop().await;
}
