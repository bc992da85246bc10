//! A device from the profile library end to end: `patchbay-sim profile`
//! plays it, an agent names it by its library name with its variables, and
//! the CLI drives it through the hub.

use patchbay_tests::{agent, cli, hub, offline, online, temp_file, Proc, Watcher};

#[tokio::test]
async fn a_library_profile_device_runs_through_agent_hub_and_cli() {
    let hub = hub().await;
    let mut sim = Proc::start(
        "patchbay-sim",
        &[
            "profile",
            "samsung-mdc",
            "--listen",
            "127.0.0.1:0",
            "--var",
            "id=02",
        ],
    )
    .await;
    assert!(
        sim.first_line
            .starts_with("samsung-mdc simulator listening on"),
        "{}",
        sim.first_line
    );
    let cfg = temp_file(
        "library-agent.toml",
        &format!(
            "hub = \"{}\"\nname = \"library-agent\"\nreconnect_max_ms = 300\n\n[[device]]\nid = \"wall-2\"\nname = \"Wall\"\nlocation = \"Hall\"\ndriver = \"line\"\ntcp = \"{}\"\nprofile = \"samsung-mdc\"\nvars = {{ id = \"02\" }}\npoll_ms = 300\n",
            hub.addr(),
            sim.addr()
        ),
    );
    let _agent = agent(&cfg);
    let mut w = Watcher::new(&hub.addr()).await;
    w.until("wall-2 online", |d| online(d, "wall-2")).await;
    assert_eq!(w.devices["wall-2"].meta_str("manufacturer"), "Samsung");

    let (ok, out, err) = cli(&hub.addr(), &["set", "wall-2", "power=on", "input=hdmi2"]).await;
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(["input", "hdmi2"])),
        "{out}"
    );
    // The simulated display (ID 02) holds MDC's code for HDMI2.
    let state: serde_json::Value = serde_json::from_str(&sim.control("state").await).unwrap();
    assert_eq!(state["input"], "23", "{state}");
    assert_eq!(state["power"], "01", "{state}");

    // A value the display's schema does not have is refused before it is sent.
    let (ok, _, err) = cli(&hub.addr(), &["set", "wall-2", "input=scart"]).await;
    assert!(!ok);
    assert!(
        err.contains("invalid_value") || err.contains("scart"),
        "{err}"
    );
}

/// A Panasonic projector (NTCONTROL, protect mode) end to end: the
/// simulator process, an agent with `driver = "panasonic"` and the
/// projector's user and password, the CLI through the hub.
#[tokio::test]
async fn a_panasonic_projector_runs_through_agent_hub_and_cli() {
    let hub = hub().await;
    let mut sim = Proc::start(
        "patchbay-sim",
        &[
            "panasonic",
            "--listen",
            "127.0.0.1:0",
            "--password",
            "panasonic",
            "--model",
            "PT-VMZ71",
            "--warmup-ms",
            "600",
        ],
    )
    .await;
    let cfg = temp_file(
        "panasonic-agent.toml",
        &format!(
            "hub = \"{}\"\nname = \"panasonic-agent\"\nreconnect_max_ms = 300\n\n[[device]]\nid = \"proj-pana\"\nlocation = \"Hall\"\ndriver = \"panasonic\"\ntcp = \"{}\"\nuser = \"admin1\"\npassword = \"panasonic\"\npoll_ms = 300\n",
            hub.addr(),
            sim.addr()
        ),
    );
    let _agent = agent(&cfg);
    let mut w = Watcher::new(&hub.addr()).await;
    w.until("proj-pana online", |d| online(d, "proj-pana"))
        .await;
    assert_eq!(w.devices["proj-pana"].meta_str("model"), "PT-VMZ71");

    let (ok, out, err) = cli(
        &hub.addr(),
        &[
            "set",
            "proj-pana",
            "power=on",
            "input=digital-link",
            "shutter=true",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(["input", "digital-link"])),
        "{out}"
    );
    let state: serde_json::Value = serde_json::from_str(&sim.control("state").await).unwrap();
    assert_eq!(state["power"], "on", "{state}");
    assert_eq!(state["input"], "DL1", "{state}");
    assert_eq!(state["video_mute"], true, "the shutter: {state}");
}

/// A wrong NTCONTROL password keeps the device offline with the reason.
#[tokio::test]
async fn a_panasonic_projector_with_the_wrong_password_is_offline_saying_so() {
    let hub = hub().await;
    let sim = Proc::start(
        "patchbay-sim",
        &[
            "panasonic",
            "--listen",
            "127.0.0.1:0",
            "--password",
            "right",
        ],
    )
    .await;
    let cfg = temp_file(
        "panasonic-wrong.toml",
        &format!(
            "hub = \"{}\"\nname = \"panasonic-wrong\"\nreconnect_max_ms = 300\n\n[[device]]\nid = \"proj-locked\"\ndriver = \"panasonic\"\ntcp = \"{}\"\npassword = \"wrong\"\npoll_ms = 300\n",
            hub.addr(),
            sim.addr()
        ),
    );
    let _agent = agent(&cfg);
    let mut w = Watcher::new(&hub.addr()).await;
    w.until(
        "proj-locked reported offline with the password reason",
        |d| {
            offline(d, "proj-locked")
                && d["proj-locked"]
                    .reason()
                    .is_some_and(|r| r.contains("password"))
        },
    )
    .await;
}

/// A Sony camera over VISCA over IP (UDP) end to end: the library profile
/// served over UDP by the simulator, an agent with `visca_ip`, the CLI.
#[tokio::test]
async fn a_visca_camera_over_ip_runs_through_agent_hub_and_cli() {
    let hub = hub().await;
    let mut sim = Proc::start(
        "patchbay-sim",
        &[
            "profile",
            "sony-visca",
            "--listen",
            "127.0.0.1:0",
            "--visca-ip",
        ],
    )
    .await;
    assert!(
        sim.first_line.contains("(VISCA over IP)"),
        "{}",
        sim.first_line
    );
    let cfg = temp_file(
        "visca-agent.toml",
        &format!(
            "hub = \"{}\"\nname = \"visca-agent\"\nreconnect_max_ms = 300\n\n[[device]]\nid = \"cam-1\"\nlocation = \"Studio\"\ndriver = \"line\"\nvisca_ip = \"{}\"\nprofile = \"sony-visca\"\npoll_ms = 300\n",
            hub.addr(),
            sim.addr()
        ),
    );
    let _agent = agent(&cfg);
    let mut w = Watcher::new(&hub.addr()).await;
    w.until("cam-1 online", |d| online(d, "cam-1")).await;
    let (ok, out, err) = cli(&hub.addr(), &["set", "cam-1", "power=on", "preset=4"]).await;
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(["preset", "4"])),
        "{out}"
    );
    let state: serde_json::Value = serde_json::from_str(&sim.control("state").await).unwrap();
    assert_eq!(state["power"], "02", "{state}");
}
