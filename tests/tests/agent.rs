//! The agent end to end: hub, simulators and agent as separate processes,
//! driven with the `patchbay` CLI and watched over the wire protocol.

use patchbay_client::{Body, ClientBuilder, RequestOptions};
use patchbay_tests::{agent, cli, hub, offline, online, pjlink_sim, temp_file, Watcher, WAIT};
use serde_json::json;

fn config(name: &str, hub: &str, sims: &[(&str, &str)]) -> std::path::PathBuf {
    let mut text = format!("hub = \"{hub}\"\nname = \"{name}\"\nreconnect_max_ms = 300\n");
    for (id, addr) in sims {
        text.push_str(&format!(
            "\n[[device]]\nid = \"{id}\"\nname = \"Projector {id}\"\nlocation = \"Room 1\"\ndriver = \"pjlink\"\ntcp = \"{addr}\"\npoll_ms = 300\n"
        ));
    }
    temp_file(&format!("{name}.toml"), &text)
}

#[tokio::test]
async fn set_returns_after_warm_up_with_the_confirmed_state() {
    let hub = hub().await;
    let mut sim1 = pjlink_sim("127.0.0.1:0", &["--warmup-ms", "800"]).await;
    let sim2 = pjlink_sim("127.0.0.1:0", &[]).await;
    let cfg = config(
        "agent-set",
        &hub.addr(),
        &[("proj-1", &sim1.addr()), ("proj-2", &sim2.addr())],
    );
    let _agent = agent(&cfg);
    let mut w = Watcher::new(&hub.addr()).await;
    w.until("both online", |d| {
        online(d, "proj-1") && online(d, "proj-2")
    })
    .await;

    let (ok, out, err) = cli(&hub.addr(), &["devices"]).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID"), "{out}");
    for id in ["proj-1", "proj-2"] {
        let row = lines
            .iter()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} missing: {out}"));
        assert!(
            row.contains("Room 1") && row.contains("pjlink") && row.contains("yes"),
            "{row}"
        );
    }

    let (ok, out, err) = cli(
        &hub.addr(),
        &["set", "proj-1", "power=on", "input=hdmi2", "--cid", "e2e-1"],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.starts_with("proj-1: confirmed (cid e2e-1)"), "{out}");
    // While it ran, the warm-up was shown as it happened (stderr: not a terminal here).
    assert!(
        err.contains("proj-1: setting power=on input=hdmi2 (cid e2e-1)"),
        "{err}"
    );
    assert!(err.contains("proj-1: power warming"), "{err}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(["power", "on"])),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(["input", "hdmi2"])),
        "{out}"
    );
    // The device itself agrees, and the state message carries the correlation id.
    let state: serde_json::Value = serde_json::from_str(&sim1.control("state").await).unwrap();
    assert_eq!(
        (state["power"].as_str(), state["input"].as_str()),
        (Some("on"), Some("32"))
    );
    w.until("the confirmed state", |d| {
        d["proj-1"].state_text("input") == "hdmi2"
    })
    .await;
    assert!(
        w.log
            .iter()
            .any(|m| m.tag() == "dev/proj-1/state" && m.cid() == Some("e2e-1")),
        "the state message caused by the command carries its correlation id"
    );
    let (ok, json_out, _) = cli(&hub.addr(), &["get", "proj-1", "--json"]).await;
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(v["state"]["input"], "hdmi2");

    // A bad value is refused by the agent with the allowed values.
    let (ok, _, err) = cli(&hub.addr(), &["set", "proj-2", "input=sdi9"]).await;
    assert!(!ok);
    assert!(err.contains("invalid_value: invalid value \"sdi9\" for `input`: allowed: hdmi1, hdmi2, computer, video"), "{err}");
}

#[tokio::test]
async fn killing_the_agent_mid_command_and_restarting_it() {
    let hub = hub().await;
    let mut sim = pjlink_sim("127.0.0.1:0", &["--warmup-ms", "60000"]).await;
    let cfg = config("agent-kill", &hub.addr(), &[("proj-1", &sim.addr())]);
    let mut agent1 = agent(&cfg);
    let mut w = Watcher::new(&hub.addr()).await;
    w.until("online", |d| online(d, "proj-1")).await;

    let op = ClientBuilder::new(hub.addr())
        .name("op")
        .connect()
        .await
        .unwrap();
    let pending = tokio::spawn(async move {
        let opts = RequestOptions {
            timeout: Some(std::time::Duration::from_secs(120)),
            cid: Some("kill-1"),
            on_behalf: None,
        };
        op.request_with("dev/proj-1/set", &Body::from(json!({"power":"on"})), opts)
            .await
    });
    // Wait until the projector is warming: the agent is in the middle of the command.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s: serde_json::Value = serde_json::from_str(&sim.control("state").await).unwrap();
        if s["power"] == "warming" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "command never reached the projector"
        );
        tokio::task::yield_now().await;
    }
    agent1.kill().await.unwrap();
    let err = tokio::time::timeout(WAIT, pending)
        .await
        .expect("requester left waiting")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Some("unavailable"), "{err}");
    w.until("offline after the agent died", |d| offline(d, "proj-1"))
        .await;
    let reason = w.devices["proj-1"].online.as_ref().unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("agent-kill"), "{reason}");

    // Restart: the claim is free again, and the device comes back with fresh
    // state: the projector is still warming, which the dead agent never published.
    let _agent2 = agent(&cfg);
    w.until("online again with fresh state", |d| {
        online(d, "proj-1") && d["proj-1"].state_text("power") == "warming"
    })
    .await;
}

#[tokio::test]
async fn a_dead_simulator_goes_offline_alone_and_comes_back() {
    let hub = hub().await;
    let sim1 = pjlink_sim("127.0.0.1:0", &[]).await;
    let sim2 = pjlink_sim("127.0.0.1:0", &[]).await;
    let addr1 = sim1.addr();
    let cfg = config(
        "agent-sim",
        &hub.addr(),
        &[("proj-1", &addr1), ("proj-2", &sim2.addr())],
    );
    let _agent = agent(&cfg);
    let mut w = Watcher::new(&hub.addr()).await;
    w.until("both online", |d| {
        online(d, "proj-1") && online(d, "proj-2")
    })
    .await;

    sim1.kill().await;
    w.until("proj-1 offline", |d| offline(d, "proj-1")).await;
    // The reason in words for people, the detail for the record.
    let o = w.devices["proj-1"].online.clone().unwrap();
    let reason = o["reason"].as_str().unwrap().to_owned();
    let detail = o["detail"].as_str().unwrap().to_owned();
    assert!(
        reason == "the device cannot be reached" || reason == "the connection to the device failed",
        "{reason}"
    );
    assert!(
        detail.contains(&addr1) || detail.contains("closed"),
        "the detail should say what failed: {detail}"
    );
    assert!(
        online(&w.devices, "proj-2"),
        "the other device must stay online"
    );
    assert!(
        !w.log
            .iter()
            .any(|m| m.tag() == "dev/proj-2/online" && patchbay_tests::body(m)["online"] == false),
        "proj-2 never went offline"
    );

    let _sim1 = pjlink_sim(&addr1, &[]).await;
    w.until("proj-1 back online", |d| online(d, "proj-1")).await;
}

#[tokio::test]
async fn agent_reconnects_to_a_restarted_hub_and_republishes() {
    let hub1 = hub().await;
    let hub_addr = hub1.addr();
    let sim = pjlink_sim("127.0.0.1:0", &[]).await;
    let cfg = config("agent-rehub", &hub_addr, &[("proj-1", &sim.addr())]);
    let _agent = agent(&cfg);
    let mut w = Watcher::new(&hub_addr).await;
    w.until("online", |d| online(d, "proj-1")).await;
    hub1.kill().await;
    // A new hub on the same address starts empty; the agent must re-claim and re-publish.
    let _hub2 = patchbay_tests::Proc::start(
        "patchbay-hub",
        &["--listen", &hub_addr, "--http-listen", "127.0.0.1:0"],
    )
    .await;
    let mut w = Watcher::new(&hub_addr).await;
    w.until("re-published on the new hub", |d| {
        online(d, "proj-1") && d["proj-1"].meta.is_some() && d["proj-1"].state.is_some()
    })
    .await;
    let (ok, _, err) = cli(&hub_addr, &["set", "proj-1", "mute=false"]).await;
    assert!(!ok, "projector is in standby");
    assert!(
        err.contains("busy"),
        "the request reached the agent through the new hub: {err}"
    );
}

#[tokio::test]
async fn serial_port_vanishing_and_returning() {
    let hub = hub().await;
    let mut sim = patchbay_tests::Proc::start("patchbay-sim", &["escvp21", "--pty"]).await;
    let port = sim
        .first_line
        .strip_prefix("escvp21 simulator on serial port ")
        .unwrap()
        .to_owned();
    let cfg = temp_file(
        "agent-serial.toml",
        &format!(
            "hub = \"{}\"\nname = \"agent-serial\"\nreconnect_max_ms = 300\n[[device]]\nid = \"epson\"\ndriver = \"escvp21\"\nserial = \"{port}\"\npoll_ms = 300\n",
            hub.addr()
        ),
    );
    let _agent = agent(&cfg);
    let mut w = Watcher::new(&hub.addr()).await;
    w.until("online", |d| online(d, "epson")).await;
    assert_eq!(sim.control("unplug").await, "ok");
    w.until("offline", |d| offline(d, "epson")).await;
    let o = w.devices["epson"].online.clone().unwrap();
    assert_eq!(
        o["reason"],
        "the serial port is gone (is the adapter unplugged?)"
    );
    let detail = o["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(&format!("serial port {port} gone")),
        "{detail}"
    );
    assert_eq!(sim.control("plug").await, "ok");
    w.until("online again", |d| online(d, "epson")).await;
}

#[tokio::test]
async fn a_set_that_times_out_says_the_outcome_is_unknown_and_how_to_follow() {
    let hub = hub().await;
    let sim = pjlink_sim("127.0.0.1:0", &["--warmup-ms", "60000"]).await;
    let cfg = config("agent-cli-timeout", &hub.addr(), &[("proj-1", &sim.addr())]);
    let _agent = agent(&cfg);
    let mut w = Watcher::new(&hub.addr()).await;
    w.until("online", |d| online(d, "proj-1")).await;
    let (ok, _, err) = cli(
        &hub.addr(),
        &[
            "set",
            "proj-1",
            "power=on",
            "--timeout-ms",
            "500",
            "--cid",
            "slow-9",
        ],
    )
    .await;
    assert!(!ok);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "patchbay: proj-1: no answer within 0.5 s (cid slow-9); the outcome is unknown"
        ),
        "{err}"
    );
    assert!(last.contains("patchbay watch 'dev/proj-1/#'"), "{err}");
}

#[tokio::test]
async fn the_cli_names_what_is_wrong_once() {
    // A hub address without a port.
    let (ok, _, err) = cli("localhost", &["devices"]).await;
    assert!(!ok);
    assert_eq!(
        err.trim(),
        "patchbay: --hub localhost: the port is missing (give host:port, e.g. localhost:7400)"
    );
    // Nothing listening: the OS's words once, not twice.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let (ok, _, err) = cli(&addr, &["devices"]).await;
    assert!(!ok);
    let line = err.trim();
    assert!(
        line.starts_with(&format!("patchbay: cannot reach hub at {addr}: ")),
        "{line}"
    );
    let cause = line.rsplit(": ").next().unwrap();
    assert_eq!(line.matches(cause).count(), 1, "{line}");
    // Every binary's --version names the binary.
    for name in ["patchbay", "patchbay-hub", "patchbay-agent", "patchbay-sim"] {
        let out = std::process::Command::new(patchbay_tests::bin(name))
            .arg("--version")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with(&format!("{name} ")), "{name}: {text}");
    }
}
