//! Claims and request/reply over real TCP.

mod common;

use std::time::{Duration, Instant};

use common::{assert_err, hub, Raw};
use serde_json::json;

#[tokio::test]
async fn request_goes_to_the_owner_and_the_reply_comes_back() {
    let hub = hub().await;
    let mut agent = Raw::hello(&hub, "agent", None).await;
    assert_eq!(
        agent.call(json!({"op":"claim","prefix":"dev/p1"}), 1).await["op"],
        "ok"
    );
    // A plain subscriber to the same tag must not get the request.
    let mut bystander = Raw::hello(&hub, "bystander", None).await;
    bystander.sub(&["dev/#"]).await;
    let mut op = Raw::hello(&hub, "operator", None).await;
    op.send(json!({"op":"req","tag":"dev/p1/set","body":{"power":"on"},"rid":"r-1","cid":"c-9"}))
        .await;
    let req = agent.recv().await;
    assert_eq!(req["op"], "req");
    assert_eq!(req["tag"], "dev/p1/set");
    assert_eq!(req["body"], json!({"power":"on"}));
    assert_eq!(req["from"], "operator");
    assert_eq!(req["cid"], "c-9");
    let rid = req["rid"].as_u64().unwrap();
    agent
        .send(json!({"op":"rep","rid":rid,"body":{"power":"on"}}))
        .await;
    let rep = op.recv().await;
    assert_eq!(rep, json!({"op":"rep","rid":"r-1","body":{"power":"on"}}));
    // A second reply to the same request is refused.
    let e = agent.call(json!({"op":"rep","rid":rid,"body":{}}), 2).await;
    assert_err(&e, "unknown_request");
    // The bystander saw nothing: its next frame is a marker.
    op.send(json!({"op":"pub","tag":"dev/marker","body":1}))
        .await;
    assert_eq!(bystander.recv().await["tag"], "dev/marker");
    hub.stop().await;
}

#[tokio::test]
async fn responder_error_reaches_the_requester_with_its_rid() {
    let hub = hub().await;
    let mut agent = Raw::hello(&hub, "agent", None).await;
    agent.sub(&["svc/echo"]).await;
    let mut op = Raw::hello(&hub, "op", None).await;
    op.send(json!({"op":"req","tag":"svc/echo","body":1,"rid":7}))
        .await;
    let rid = agent.recv().await["rid"].as_u64().unwrap();
    agent
        .send(json!({"op":"rep","rid":rid,"error":{"code":"busy","message":"warming up"}}))
        .await;
    let e = op.recv().await;
    assert_eq!(
        e,
        json!({"op":"err","rid":7,"code":"busy","message":"warming up"})
    );
    hub.stop().await;
}

#[tokio::test]
async fn no_responder() {
    let hub = hub().await;
    let mut op = Raw::hello(&hub, "op", None).await;
    op.send(json!({"op":"req","tag":"dev/none/set","body":{},"rid":1}))
        .await;
    let e = op.recv().await;
    assert_err(&e, "no_responder");
    assert_eq!(e["rid"], 1);
    hub.stop().await;
}

#[tokio::test]
async fn timeout_when_the_responder_is_silent() {
    let hub = hub().await;
    let mut agent = Raw::hello(&hub, "silent", None).await;
    agent.call(json!({"op":"claim","prefix":"dev/p1"}), 1).await;
    let mut op = Raw::hello(&hub, "op", None).await;
    op.send(json!({"op":"req","tag":"dev/p1/set","body":{},"rid":"t","timeout_ms":100}))
        .await;
    let req = agent.recv().await;
    let e = op.recv().await;
    assert_err(&e, "timeout");
    assert_eq!(e["rid"], "t");
    assert!(e["message"].as_str().unwrap().contains("silent"), "{e}");
    // A late reply is refused, not delivered.
    let e = agent
        .call(json!({"op":"rep","rid":req["rid"],"body":{}}), 2)
        .await;
    assert_err(&e, "unknown_request");
    hub.stop().await;
}

#[tokio::test]
async fn responder_disconnect_fails_the_request_at_once_and_publishes_last_will() {
    let hub = hub().await;
    let mut agent = Raw::hello(&hub, "agent-1", None).await;
    agent.call(json!({"op":"claim","prefix":"dev/p1"}), 1).await;
    let mut watcher = Raw::hello(&hub, "watcher", None).await;
    watcher.sub(&["dev/+/online"]).await;
    let mut op = Raw::hello(&hub, "op", None).await;
    op.send(json!({"op":"req","tag":"dev/p1/set","body":{},"rid":3,"timeout_ms":60000}))
        .await;
    agent.recv().await;
    let started = Instant::now();
    drop(agent);
    let e = op.recv().await;
    assert_err(&e, "unavailable");
    assert_eq!(e["rid"], 3);
    // Well before the request's own 60 s timeout.
    assert!(started.elapsed() < Duration::from_secs(30));
    let will = watcher.recv().await;
    assert_eq!(will["tag"], "dev/p1/online");
    assert_eq!(will["from"], "hub");
    assert_eq!(will["retained"], true);
    assert_eq!(will["body"]["online"], false);
    assert!(
        will["body"]["reason"].as_str().unwrap().contains("agent-1"),
        "{will}"
    );
    hub.stop().await;
}
