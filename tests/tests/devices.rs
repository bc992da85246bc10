//! What users are told about devices, end to end: a hub and an agent as
//! processes, scripted projectors that behave like real ones, commands over
//! the wire protocol and over HTTP.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use patchbay_client::{Body, Client, ClientBuilder, Error, RequestOptions};
use patchbay_tests::peer::{PeerOptions, PjlinkProjector, ScriptedPeer};
use patchbay_tests::{agent, body, offline, online, temp_file, Proc, Watcher, WAIT};
use serde_json::{json, Value};
use tokio::time::Instant;

/// A hub process and its HTTP base URL.
async fn hub_with(config: Option<&str>) -> (Proc, String) {
    let mut args = vec!["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"];
    let path;
    if let Some(text) = config {
        path = temp_file("hub.toml", text);
        args.extend(["--config", path.to_str().unwrap()]);
    }
    let mut hub = Proc::start("patchbay-hub", &args).await;
    let http = hub.next_line_last_word().await;
    (hub, http.trim_end_matches('/').to_owned())
}

/// An agent config file with `devices` (TOML `[[device]]` bodies).
fn agent_config(name: &str, hub: &str, extra: &str, devices: &[String]) -> std::path::PathBuf {
    let mut text = format!("hub = \"{hub}\"\nname = \"{name}\"\nreconnect_max_ms = 500\n{extra}");
    for d in devices {
        text.push_str(&format!("\n[[device]]\n{d}\n"));
    }
    temp_file(&format!("{name}.toml"), &text)
}

fn pjlink_device(id: &str, addr: &str, poll_ms: u64) -> String {
    format!("id = \"{id}\"\ndriver = \"pjlink\"\ntcp = \"{addr}\"\npoll_ms = {poll_ms}")
}

/// A scripted projector shared with the test.
async fn projector(
    p: PjlinkProjector,
    opts: PeerOptions,
) -> (ScriptedPeer, Arc<Mutex<PjlinkProjector>>) {
    let shared = Arc::new(Mutex::new(p));
    let script = shared.clone();
    let peer = ScriptedPeer::start(opts, move |l| script.lock().unwrap().answer(l)).await;
    (peer, shared)
}

async fn client(hub: &str) -> Client {
    ClientBuilder::new(hub)
        .name("e2e-controller")
        .no_reconnect()
        .connect()
        .await
        .unwrap()
}

/// `set` over the wire protocol; the answer's body or error.
async fn set(c: &Client, id: &str, desired: Value) -> Result<Value, Error> {
    let opts = RequestOptions {
        timeout: Some(Duration::from_secs(30)),
        cid: None,
        on_behalf: None,
    };
    let reply = c
        .request_with(&format!("dev/{id}/set"), &Body::from(desired), opts)
        .await?;
    Ok(reply.json().unwrap())
}

/// The enum values of a device's `input` setting, from its retained meta.
fn inputs(w: &Watcher, id: &str) -> Vec<String> {
    let meta = w.devices[id].meta.clone().unwrap_or_default();
    meta["settings"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == "input")
        .and_then(|s| s["values"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn commands_go_before_polls_and_read_back_only_what_changed() {
    let (hub, _) = hub_with(None).await;
    // A projector that takes 250 ms per reply: one poll takes about two
    // seconds, far longer than the poll period, so polls run back to back.
    let opts = PeerOptions {
        delay: Duration::from_millis(250),
        ..PeerOptions::pjlink()
    };
    let p = PjlinkProjector {
        power: 1,
        ..PjlinkProjector::default()
    };
    let (peer, shared) = projector(p, opts).await;
    let cfg = agent_config(
        "agent-sched",
        &hub.addr(),
        "",
        &[pjlink_device("proj-1", &peer.addr(), 200)],
    );
    let _agent = agent(&cfg);
    let mut w = Watcher::new(&hub.addr()).await;
    w.until("proj-1 online", |d| online(d, "proj-1")).await;
    let ids = inputs(&w, "proj-1");
    assert_eq!(ids.len(), 3, "{ids:?}");
    let c = client(&hub.addr()).await;
    for (round, id) in ids.iter().enumerate() {
        let asked = Instant::now();
        let confirmed = set(&c, "proj-1", json!({"input": id})).await.unwrap();
        let answered = Instant::now();
        assert_eq!(confirmed["input"], json!(id));
        let heard: Vec<String> = peer
            .heard()
            .into_iter()
            .filter(|h| h.at >= asked && h.at <= answered)
            .map(|h| h.line)
            .collect();
        let sent = heard
            .iter()
            .position(|l| l.contains("INPT ") && !l.ends_with('?'))
            .unwrap_or_else(|| panic!("round {round}: no INPT set in {heard:?}"));
        // Only the poll already under way may finish first; no new one starts.
        let polls_started = heard[..sent].iter().filter(|l| *l == "%1POWR ?").count();
        assert!(
            polls_started <= 1,
            "round {round}: the command waited behind {polls_started} polls: {heard:?}"
        );
        // After the command, only the input is read back: no lamps, no errors.
        let after = &heard[sent + 1..];
        assert!(
            after.iter().all(|l| l.contains("INPT ?")),
            "round {round}: read back more than the input: {after:?}"
        );
    }
    assert_eq!(shared.lock().unwrap().input, "32");
}

#[tokio::test]
async fn an_invalid_value_is_refused_at_once_during_a_warm_up() {
    let (hub, _) = hub_with(None).await;
    // Warms up until the test says otherwise.
    let p = PjlinkProjector {
        transition_polls: u32::MAX,
        ..PjlinkProjector::default()
    };
    let (_peer, shared) = projector(p, PeerOptions::pjlink()).await;
    let cfg = agent_config(
        "agent-invalid",
        &hub.addr(),
        "",
        &[pjlink_device("proj-1", &_peer.addr(), 300)],
    );
    let _agent = agent(&cfg);
    let mut w = Watcher::new(&hub.addr()).await;
    w.until("proj-1 online", |d| online(d, "proj-1")).await;
    let c = client(&hub.addr()).await;
    let warm = {
        let c = c.clone();
        tokio::spawn(async move { set(&c, "proj-1", json!({"power": "on"})).await })
    };
    w.until("warming", |d| d["proj-1"].state_text("power") == "warming")
        .await;
    let e = set(&c, "proj-1", json!({"power": "sideways"}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("invalid_value"), "{e}");
    assert!(e.to_string().contains("sideways"), "{e}");
    assert!(!warm.is_finished(), "answered only after the warm-up");
    // The warm-up ends and the first command completes.
    shared.lock().unwrap().transition_left = 1;
    let on = tokio::time::timeout(WAIT, warm)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(on["power"], "on");
}

#[tokio::test]
async fn a_command_that_fails_halfway_says_what_was_applied() {
    let (hub, http) = hub_with(None).await;
    let p = PjlinkProjector {
        transition_polls: 1,
        refuse_input: Some("ERR4"),
        ..PjlinkProjector::default()
    };
    let (peer, shared) = projector(p, PeerOptions::pjlink()).await;
    let cfg = agent_config(
        "agent-partial",
        &hub.addr(),
        "",
        &[pjlink_device("proj-1", &peer.addr(), 300)],
    );
    let _agent = agent(&cfg);
    let mut w = Watcher::new(&hub.addr()).await;
    w.until("proj-1 online", |d| online(d, "proj-1")).await;
    let http_client = reqwest::Client::new();
    let patch = |desired: Value| {
        http_client
            .patch(format!("{http}/api/devices/proj-1"))
            .json(&desired)
            .send()
    };
    // Power on goes first; the input then fails; the answer says both.
    let res = patch(json!({"input": "input31", "power": "on"}))
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    let b: Value = res.json().await.unwrap();
    let e = &b["error"];
    assert_eq!(e["code"], "device_error", "{b}");
    assert_eq!(e["outcome"]["applied"], json!({"power": "on"}), "{b}");
    assert_eq!(
        e["outcome"]["failed"]["input"]["code"], "device_error",
        "{b}"
    );
    assert_eq!(e["outcome"]["skipped"], json!([]), "{b}");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("power is on") && message.contains("`input` could not be set"),
        "{message}"
    );
    assert!(
        !message.contains("INPT"),
        "protocol words belong in detail: {message}"
    );
    assert!(e["detail"].as_str().unwrap().contains("INPT"), "{b}");
    // Power off goes last, so a failing input leaves the projector on.
    let res = patch(json!({"power": "off", "input": "input32"}))
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    let b: Value = res.json().await.unwrap();
    assert_eq!(b["error"]["outcome"]["applied"], json!({}), "{b}");
    assert_eq!(b["error"]["outcome"]["skipped"], json!(["power"]), "{b}");
    assert_eq!(shared.lock().unwrap().power, 1, "still on");
}

#[tokio::test]
async fn a_device_first_seen_in_standby_takes_power_and_input_together() {
    let (hub, _) = hub_with(None).await;
    let p = PjlinkProjector {
        err3_unless_on: true,
        transition_polls: 1,
        ..PjlinkProjector::default()
    };
    let (peer, shared) = projector(p, PeerOptions::pjlink()).await;
    let cfg = agent_config(
        "agent-standby",
        &hub.addr(),
        "",
        &[pjlink_device("proj-1", &peer.addr(), 300)],
    );
    let _agent = agent(&cfg);
    let mut w = Watcher::new(&hub.addr()).await;
    w.until("proj-1 online", |d| online(d, "proj-1")).await;
    assert!(
        inputs(&w, "proj-1").is_empty(),
        "no inputs are known in standby"
    );
    let c = client(&hub.addr()).await;
    let confirmed = set(&c, "proj-1", json!({"power": "on", "input": "input32"}))
        .await
        .unwrap();
    assert_eq!(
        (confirmed["power"].as_str(), confirmed["input"].as_str()),
        (Some("on"), Some("input32"))
    );
    assert_eq!(shared.lock().unwrap().input, "32");
    // The full description is published: class 2, every input.
    w.until("the full description", |d| {
        d["proj-1"]
            .meta
            .as_ref()
            .is_some_and(|m| m["info"]["class"] == 2)
    })
    .await;
    assert_eq!(inputs(&w, "proj-1"), ["input11", "input31", "input32"]);
    // An input it does not have is now refused with the list.
    let e = set(&c, "proj-1", json!({"input": "input99"}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("invalid_value"), "{e}");
    assert!(e.to_string().contains("input11, input31, input32"), "{e}");
}

#[tokio::test]
async fn a_device_never_described_answers_offline_with_its_reason() {
    let (hub, http) = hub_with(None).await;
    // The projector wants a password the configuration does not have.
    let opts = PeerOptions {
        greeting: Some("PJLINK 1 498e4a67\r".into()),
        ..PeerOptions::pjlink()
    };
    let (peer, _) = projector(PjlinkProjector::default(), opts).await;
    let cfg = agent_config(
        "agent-nopass",
        &hub.addr(),
        "",
        &[pjlink_device("proj-1", &peer.addr(), 300)],
    );
    let _agent = agent(&cfg);
    let mut w = Watcher::new(&hub.addr()).await;
    w.until("proj-1 offline", |d| offline(d, "proj-1")).await;
    let reason = w.devices["proj-1"].reason().unwrap_or_default().to_owned();
    assert!(reason.contains("password"), "{reason}");
    let res = reqwest::Client::new()
        .patch(format!("{http}/api/devices/proj-1"))
        .json(&json!({"power": "on"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let b: Value = res.json().await.unwrap();
    assert_eq!(b["error"]["code"], "offline");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("password"),
        "{b}"
    );
    // Over the wire protocol the agent itself answers the same way.
    let c = client(&hub.addr()).await;
    let e = set(&c, "proj-1", json!({"power": "on"})).await.unwrap_err();
    assert_eq!(e.code(), Some("offline"), "{e}");
    assert!(e.to_string().contains("password"), "{e}");
}

#[tokio::test]
async fn a_forbidden_claim_leaves_the_other_devices_working() {
    let (hub, _) = hub_with(Some(
        "[[tokens]]\nname = \"room-agent\"\ntoken = \"agent-secret-1\"\nrole = \"agent\"\nclaims = [\"dev/proj-1\"]\n\n[[tokens]]\ntoken = \"operator-secret\"\nrole = \"operator\"\n",
    ))
    .await;
    let (p1, _) = projector(
        PjlinkProjector {
            power: 1,
            ..PjlinkProjector::default()
        },
        PeerOptions::pjlink(),
    )
    .await;
    let (p9, _) = projector(PjlinkProjector::default(), PeerOptions::pjlink()).await;
    let cfg = agent_config(
        "agent-claims",
        &hub.addr(),
        "token = \"agent-secret-1\"\n",
        &[
            pjlink_device("proj-1", &p1.addr(), 300),
            pjlink_device("proj-9", &p9.addr(), 300),
        ],
    );
    let _agent = agent(&cfg);
    let c = ClientBuilder::new(hub.addr())
        .name("e2e-operator")
        .token("operator-secret")
        .no_reconnect()
        .connect()
        .await
        .unwrap();
    let mut sub = c
        .subscribe_with_snapshot(["dev/#", "agent/#"])
        .await
        .unwrap();
    let mut seen = sub.snapshot().await.unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        let proj1_online = seen
            .iter()
            .any(|m| m.tag() == "dev/proj-1/online" && body(m)["online"] == true);
        let status = seen
            .iter()
            .rev()
            .find(|m| m.tag() == "agent/agent-claims/status")
            .map(body);
        if let Some(s) = status.filter(|s| proj1_online && s["refused"].get("proj-9").is_some()) {
            break s;
        }
        let m = tokio::time::timeout_at(deadline, sub.next())
            .await
            .expect("proj-1 online and a status naming proj-9")
            .unwrap();
        seen.push(m);
    };
    assert_eq!(status["devices"], json!(["proj-1"]));
    let why = status["refused"]["proj-9"].as_str().unwrap();
    assert!(why.contains("dev/proj-9"), "{why}");
    assert!(
        !seen.iter().any(|m| m.tag().starts_with("dev/proj-9")),
        "nothing published for the refused device"
    );
    let confirmed = set(&c, "proj-1", json!({"mute": true})).await.unwrap();
    assert_eq!(confirmed["mute"], true);
}

#[tokio::test]
async fn an_unreachable_device_is_retried_with_backoff_and_reported_once() {
    let (hub, _) = hub_with(None).await;
    // A display that accepts and hangs up at once: every attempt is counted.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let attempts = Arc::new(Mutex::new(0u32));
    let counter = attempts.clone();
    let server = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            *counter.lock().unwrap() += 1;
            drop(s);
        }
    });
    let profile =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/lg-display.toml");
    let device = format!(
        "id = \"tv-1\"\ndriver = \"line\"\ntcp = \"{addr}\"\nprofile = \"{}\"\npoll_ms = 200",
        profile.display()
    );
    // The reconnect cap is 2 s: attempts may not come faster than the backoff allows.
    let cfg = temp_file(
        "agent-backoff.toml",
        &format!(
            "hub = \"{}\"\nname = \"agent-backoff\"\nreconnect_max_ms = 2000\n\n[[device]]\n{device}\n",
            hub.addr()
        ),
    );
    let _agent = agent(&cfg);
    let mut w = Watcher::new(&hub.addr()).await;
    w.until("tv-1 offline", |d| offline(d, "tv-1")).await;
    let window = Instant::now();
    let logged = w.log.len();
    let start_attempts = *attempts.lock().unwrap();
    // Watch the hub for a few seconds of retries.
    let _ = tokio::time::timeout(Duration::from_secs(4), w.until("never", |_| false)).await;
    let elapsed = window.elapsed().as_secs_f64();
    let tried = *attempts.lock().unwrap() - start_attempts;
    server.abort();
    assert!(tried >= 1, "it keeps trying");
    assert!(
        (tried as f64) < 4.0 * elapsed + 4.0,
        "{tried} attempts in {elapsed:.1} s: no backoff"
    );
    let published: Vec<&str> = w.log[logged..]
        .iter()
        .filter(|m| m.tag().starts_with("dev/tv-1/"))
        .map(|m| m.tag())
        .collect();
    let metas = published.iter().filter(|t| t.ends_with("/meta")).count();
    let onlines = published.iter().filter(|t| t.ends_with("/online")).count();
    assert!(
        metas == 0 && onlines == 0,
        "republished on every attempt: {published:?}"
    );
}
