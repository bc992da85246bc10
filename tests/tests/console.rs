//! The operator console in a real headless Chromium (Debian's chromium and
//! chromium-driver, which `.ci/run` installs), against the demo hub.

use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use patchbay_client::{Body, RequestOptions};
use patchbay_tests::{bin, hub_with_config, Proc, WAIT};
use serde_json::{json, Value};
use tokio::process::Command;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn chromedriver() -> (tokio::process::Child, u16) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver not found: install Debian's chromium and chromium-driver (bash .ci/run does)");
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromedriver did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, port)
}

async fn browser(port: u16, profile: &std::path::Path) -> Client {
    let caps = json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1024,1400", format!("--user-data-dir={}", profile.display())]
        }
    });
    let caps = caps.as_object().unwrap().clone();
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("cannot start a browser session")
}

/// Waits until the element's text satisfies `ok`; returns the text.
async fn text_until(c: &Client, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = match c.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if ok(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; `{css}` shows {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn console_lists_controls_and_reports_devices() {
    let mut demo = Proc::start(
        "patchbay-agent",
        &[
            "demo",
            "--hub-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let console = demo.next_line_last_word().await;
    let hub = demo.next_line_last_word().await;
    let (_driver, port) = chromedriver().await;
    let profile = std::env::temp_dir().join(format!("patchbay-chromium-{}", std::process::id()));
    let c = browser(port, &profile).await;
    c.goto(&console).await.unwrap();

    // The page lists the simulated devices, grouped by location.
    for id in [
        "proj-1",
        "proj-2",
        "proj-3",
        "display-1",
        "wall-1",
        "matrix-1",
    ] {
        c.wait()
            .at_most(WAIT)
            .for_element(Locator::Css(&format!("article.card[data-id='{id}']")))
            .await
            .unwrap();
    }
    text_until(&c, "#conn", "the live indicator", |t| t == "live").await;
    let rooms: Vec<String> = {
        let mut out = Vec::new();
        for e in c
            .find_all(Locator::Css("section.location h2"))
            .await
            .unwrap()
        {
            out.push(e.text().await.unwrap());
        }
        out
    };
    assert_eq!(
        rooms,
        [
            "Auditorium",
            "Boardroom",
            "Classroom 2",
            "Control Room",
            "Lobby"
        ]
    );
    // Two device types from the profile library, shown from their schema
    // alone: a Samsung display (power buttons, an input list, a volume
    // number, a mute switch) and a Kramer matrix (an input number, a mute switch).
    for (css, what) in [
        (
            "article[data-id='wall-1'] button[data-setting='power'][data-value='on']",
            "wall-1 power buttons",
        ),
        (
            "article[data-id='wall-1'] select[data-setting='input'] option[value='hdmi2']",
            "wall-1 input list",
        ),
        (
            "article[data-id='wall-1'] input[type='number'][data-setting='volume'][max='100']",
            "wall-1 volume",
        ),
        (
            "article[data-id='wall-1'] input[type='checkbox'][data-setting='mute']",
            "wall-1 mute",
        ),
        (
            "article[data-id='matrix-1'] input[type='number'][data-setting='input'][max='64']",
            "matrix-1 input",
        ),
        (
            "article[data-id='matrix-1'] input[type='checkbox'][data-setting='mute']",
            "matrix-1 mute",
        ),
    ] {
        c.wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    // Power on from the card reaches the simulated display and comes back.
    let wall_on = "article[data-id='wall-1'] button[data-setting='power'][data-value='on']";
    c.find(Locator::Css(wall_on))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let pressed = c
            .find(Locator::Css(wall_on))
            .await
            .unwrap()
            .attr("aria-pressed")
            .await
            .unwrap();
        if pressed.as_deref() == Some("true") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "wall-1 never showed power on"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    text_until(
        &c,
        "article[data-id='proj-1'] .online-badge",
        "proj-1 online",
        |t| t == "online",
    )
    .await;

    // Clicking power on shows the warm-up, then on, as the API confirms.
    let on = "article[data-id='proj-1'] button[data-setting='power'][data-value='on']";
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css(on))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    text_until(
        &c,
        "article[data-id='proj-1'] .power-badge",
        "warming up",
        |t| t == "Warming up…",
    )
    .await;
    text_until(
        &c,
        "article[data-id='proj-1'] .power-badge",
        "power on",
        |t| t == "On",
    )
    .await;
    text_until(
        &c,
        "article[data-id='proj-1'] .outcome",
        "confirmation",
        |t| t.starts_with("Confirmed: power on"),
    )
    .await;
    let api: Value = reqwest::get(format!("{console}api/devices/proj-1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api["state"]["power"], "on");
    let input_before = api["state"]["input"].clone();

    // Stepping through a list with the arrow keys sends nothing; Enter sends the choice.
    let list = c
        .find(Locator::Css(
            "article[data-id='proj-1'] select[data-setting='input']",
        ))
        .await
        .unwrap();
    let commands_logged = || async {
        c.execute(
            "return [...document.querySelectorAll('#log li')].filter(li => li.textContent.includes('command: input')).length",
            vec![],
        )
        .await
        .unwrap()
    };
    list.send_keys("\u{E015}\u{E015}").await.unwrap();
    text_until(
        &c,
        "article[data-id='proj-1'] .outcome",
        "the hint to press Enter",
        |t| t.starts_with("Press Enter to switch Input to"),
    )
    .await;
    assert_eq!(
        commands_logged().await,
        json!(0),
        "arrow keys sent a command"
    );
    let chosen = c
        .execute(
            "return document.querySelector(\"article[data-id='proj-1'] select[data-setting='input']\").value",
            vec![],
        )
        .await
        .unwrap();
    assert_ne!(chosen, input_before);
    list.send_keys("\u{E007}").await.unwrap();
    text_until(
        &c,
        "article[data-id='proj-1'] .outcome",
        "the confirmed input",
        |t| t.starts_with("Confirmed: input"),
    )
    .await;
    assert_eq!(commands_logged().await, json!(1));
    let api: Value = reqwest::get(format!("{console}api/devices/proj-1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api["state"]["input"], chosen);

    // An action the device refuses shows the error in words.
    let input = "article[data-id='proj-2'] select[data-setting='input']";
    let select = c
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(input))
        .await
        .unwrap();
    select.select_by_value("digital2").await.unwrap();
    let outcome = text_until(
        &c,
        "article[data-id='proj-2'] .outcome",
        "the refusal",
        |t| t.starts_with("The device is busy"),
    )
    .await;
    assert!(outcome.contains("standby"), "{outcome}");

    // An offline device's controls are disabled, with the reason on hover.
    let ctl = patchbay_client::ClientBuilder::new(&hub)
        .name("test")
        .connect()
        .await
        .unwrap();
    let opts = RequestOptions {
        timeout: Some(WAIT),
        cid: None,
        on_behalf: None,
    };
    ctl.request_with("sim/proj-3/control", &Body::from(json!("unplug")), opts)
        .await
        .unwrap();
    text_until(
        &c,
        "article[data-id='proj-3'] .online-badge",
        "proj-3 offline",
        |t| t == "offline",
    )
    .await;
    // The reason is on the card, in words, not only on hover.
    let reason = text_until(
        &c,
        "article[data-id='proj-3'] .reason",
        "the offline reason on the card",
        |t| t.starts_with("Offline: "),
    )
    .await;
    assert!(reason.contains("serial port is gone"), "{reason}");
    let buttons = c
        .find_all(Locator::Css(
            "article[data-id='proj-3'] .controls [data-setting]:not(.control)",
        ))
        .await
        .unwrap();
    assert!(!buttons.is_empty());
    for b in buttons {
        assert!(
            !b.is_enabled().await.unwrap(),
            "controls of an offline device must be disabled"
        );
    }

    // The search box filters the grid.
    c.find(Locator::Css("#search"))
        .await
        .unwrap()
        .send_keys("lobby")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let hidden = c
            .execute(
                "return document.querySelector(\"article[data-id='proj-1']\").getClientRects().length === 0",
                vec![],
            )
            .await
            .unwrap();
        if hidden == json!(true) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "search did not filter"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.find(Locator::Css("#search"))
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
    c.execute(
        "document.getElementById('search').dispatchEvent(new Event('input'))",
        vec![],
    )
    .await
    .unwrap();

    // A room's "All on" reaches every device in it, and says what became of each.
    c.execute(
        "document.querySelector(\"section[data-location='Lobby'] [data-room-power='on']\").click();",
        vec![],
    )
    .await
    .unwrap();
    let lobby = text_until(
        &c,
        "section[data-location='Lobby'] .room-outcome",
        "the Lobby's outcome",
        |t| t.starts_with("Done") || t.starts_with("Partly") || t.starts_with("Not"),
    )
    .await;
    assert_eq!(lobby, "Done: 1 confirmed, 0 failed, 0 skipped", "{lobby}");
    // The unplugged projector's room: the failure, with the device's reason.
    c.execute(
        "document.querySelector(\"section[data-location='Classroom 2'] [data-room-power='on']\").click();",
        vec![],
    )
    .await
    .unwrap();
    let classroom = text_until(
        &c,
        "section[data-location='Classroom 2'] .room-outcome",
        "the classroom's outcome",
        |t| t.starts_with("Not done"),
    )
    .await;
    assert!(
        classroom.contains("proj-3") && classroom.contains("serial port"),
        "{classroom}"
    );

    // A projector reports a lamp error: an alert opens in the Alerts panel,
    // an operator acknowledges it, and it closes when the error clears.
    let control = |cmd: &'static str| {
        let ctl = &ctl;
        async move {
            let opts = RequestOptions {
                timeout: Some(WAIT),
                cid: None,
                on_behalf: None,
            };
            ctl.request_with("sim/proj-1/control", &Body::from(json!(cmd)), opts)
                .await
                .unwrap();
        }
    };
    control("lamp-error on").await;
    let alert = text_until(
        &c,
        "#alerts li[data-alert='device-errors/proj-1']",
        "the lamp alert",
        |t| t.contains("lamp"),
    )
    .await;
    assert!(alert.contains("Acknowledge"), "{alert}");
    c.execute(
        "document.querySelector(\"#alerts li[data-alert='device-errors/proj-1'] button\").click();",
        vec![],
    )
    .await
    .unwrap();
    text_until(
        &c,
        "#alerts li[data-alert='device-errors/proj-1']",
        "the acknowledgement",
        |t| t.contains("acknowledged by console"),
    )
    .await;
    control("lamp-error off").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while c
        .execute(
            "return document.querySelector('#alerts-panel').hidden",
            vec![],
        )
        .await
        .unwrap()
        != json!(true)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the alert never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A room's heading offers the scenes that act on it.
    let offered = text_until(
        &c,
        "section[data-location='Auditorium'] .room-scenes",
        "the Auditorium's scenes",
        |t| t.contains("Auditorium presentation"),
    )
    .await;
    assert!(!offered.contains("Classroom 2 lesson"), "{offered}");

    // The Scenes panel runs a scene and follows it to the end; the
    // schedules show their next run.
    let night = text_until(
        &c,
        "#schedules li[data-schedule='night']",
        "the night schedule",
        |t| t.contains("next"),
    )
    .await;
    assert!(
        night.contains("All off at night") && night.contains("scene all-off"),
        "{night}"
    );
    c.execute(
        "document.querySelector(\"#scenes li[data-scene='presentation'] button\").click();",
        vec![],
    )
    .await
    .unwrap();
    text_until(
        &c,
        "#scenes li[data-scene='presentation'] .scene-progress",
        "the scene running",
        |t| t.starts_with("Running") || t.starts_with("Done"),
    )
    .await;
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let t = c
            .find(Locator::Css(
                "#scenes li[data-scene='presentation'] .scene-progress",
            ))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if t.starts_with("Done") {
            break;
        }
        assert!(!t.starts_with("Failed"), "{t}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the scene never finished: {t}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A scene defined through the API appears in the panel at once; a run
    // under way can be cancelled from it.
    let put = reqwest::Client::new()
        .put(format!("{console}api/scenes/hold"))
        .json(&json!({"label": "Hold the room", "steps": [{"delay_ms": 600_000}]}))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    text_until(
        &c,
        "#scenes li[data-scene='hold']",
        "the scene defined through the API",
        |t| t.contains("Hold the room"),
    )
    .await;
    c.execute(
        "document.querySelector(\"#scenes li[data-scene='hold'] button\").click();",
        vec![],
    )
    .await
    .unwrap();
    text_until(
        &c,
        "#scenes li[data-scene='hold'] .scene-progress",
        "the long scene running",
        |t| t.starts_with("Running"),
    )
    .await;
    c.execute(
        "document.querySelector(\"#scenes li[data-scene='hold'] button.cancel\").click();",
        vec![],
    )
    .await
    .unwrap();
    let cancelled = text_until(
        &c,
        "#scenes li[data-scene='hold'] .scene-progress",
        "the run cancelled",
        |t| t.starts_with("Cancelled"),
    )
    .await;
    assert!(cancelled.contains("console"), "{cancelled}");

    // Details shows the device's memory from the hub's journal: the
    // command sent above with who sent it, the history, and the usage chart.
    c.execute(
        "document.querySelector('#detail')?.open && document.querySelector('#detail').close(); \
         document.querySelector(\"article[data-id='proj-1'] button.details\").click();",
        vec![],
    )
    .await
    .unwrap();
    let command = text_until(
        &c,
        "#detail-commands li",
        "the journaled command in Details",
        |t| t.contains("input"),
    )
    .await;
    assert!(command.contains("confirmed"), "{command}");
    assert!(
        command.contains("console") && command.contains("http"),
        "who sent it: {command}"
    );
    let history = text_until(
        &c,
        "#detail-history li",
        "the device's history in Details",
        |t| !t.is_empty(),
    )
    .await;
    assert!(!history.contains("Not available"), "{history}");
    let bars = c
        .execute(
            "return document.querySelectorAll('#detail-usage svg.usage-chart rect.bar').length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(bars, json!(30));

    // A screenshot for reviewers.
    let png = c.screenshot().await.unwrap();
    let target = bin("patchbay")
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    std::fs::write(target.join("console-screenshot.png"), png).unwrap();
    c.close().await.unwrap();
    let _ = std::fs::remove_dir_all(profile);
}

#[tokio::test]
async fn console_asks_for_a_token_when_the_hub_requires_one() {
    let cfg = patchbay_tests::temp_file(
        "hub-tokens.toml",
        "[[tokens]]\ntoken = \"viewer-secret\"\nrole = \"viewer\"\n",
    );
    let mut hub = hub_with_config(&cfg).await;
    let console = hub.next_line_last_word().await;
    let (_driver, port) = chromedriver().await;
    let profile =
        std::env::temp_dir().join(format!("patchbay-chromium-token-{}", std::process::id()));
    let c = browser(port, &profile).await;
    c.goto(&console).await.unwrap();
    let input = c
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#token-dialog[open] #token-input"))
        .await
        .unwrap();
    input.send_keys("viewer-secret").await.unwrap();
    c.find(Locator::Css("#token-form button[value='save']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    text_until(&c, "#conn", "the live indicator", |t| t == "live").await;
    let empty = c.find(Locator::Css("#empty")).await.unwrap();
    assert!(
        empty.is_displayed().await.unwrap(),
        "with no agent, the console says so"
    );
    c.close().await.unwrap();
    let _ = std::fs::remove_dir_all(profile);
}

#[tokio::test]
async fn console_shows_a_lost_hub_and_recovers_by_itself() {
    let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let (tcp, http) = (
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
    );
    let hub = Proc::start("patchbay-hub", &["--listen", &tcp, "--http-listen", &http]).await;
    let (_driver, port) = chromedriver().await;
    let profile = std::env::temp_dir().join(format!(
        "patchbay-chromium-reconnect-{}",
        std::process::id()
    ));
    let c = browser(port, &profile).await;
    publish_device(&tcp, "old-1", "Room A", 1).await;
    c.goto(&format!("http://{http}/")).await.unwrap();
    text_until(&c, "#conn", "the live indicator", |t| t == "live").await;
    text_until(
        &c,
        "article[data-id='old-1'] h3",
        "the first hub's device",
        |t| t == "Device old-1",
    )
    .await;
    hub.kill().await;
    text_until(&c, "#conn", "the lost connection shown", |t| {
        t == "reconnecting…"
    })
    .await;
    // The new hub has other devices, and has counted past the page's last seq.
    let _hub = Proc::start("patchbay-hub", &["--listen", &tcp, "--http-listen", &http]).await;
    publish_device(&tcp, "new-1", "Room B", 40).await;
    text_until(&c, "#conn", "recovery without a reload", |t| t == "live").await;
    text_until(
        &c,
        "article[data-id='new-1'] h3",
        "the new hub's device",
        |t| t == "Device new-1",
    )
    .await;
    let stale = c
        .execute(
            "return document.querySelectorAll(\"article[data-id='old-1']\").length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(stale, json!(0), "a device of the old hub is still shown");
    text_until(&c, "#log", "the restart in the log", |t| {
        t.contains("the hub restarted")
    })
    .await;
    c.close().await.unwrap();
    let _ = std::fs::remove_dir_all(profile);
}

/// A device's description as an agent publishes it.
fn meta(id: &str, location: &str, settings: Value) -> Value {
    json!({"id": id, "name": format!("Device {id}"), "location": location, "driver": "pjlink",
        "manufacturer": "Scripted", "model": "P-1", "info": {}, "transport": "tcp", "poll_ms": 2000,
        "settings": settings})
}

fn projector_settings() -> Value {
    json!([
        {"name": "power", "label": "Power", "type": "enum", "values": ["off", "on"], "transitional": ["warming", "cooling"], "writable": true},
        {"name": "input", "label": "Source", "type": "enum", "values": ["hdmi1", "hdmi2", "computer", "video"], "writable": true},
        {"name": "mute", "label": "Mute", "type": "bool", "writable": true}
    ])
}

async fn retain(c: &patchbay_client::Client, tag: &str, body: Value) {
    let opts = patchbay_client::PublishOptions {
        retain: true,
        cid: None,
    };
    c.publish_with(tag, &Body::from(body), opts).await.unwrap();
}

/// Publishes one device on the hub at `addr`, its state `states` times.
async fn publish_device(addr: &str, id: &str, location: &str, states: u32) {
    let c = patchbay_client::ClientBuilder::new(addr)
        .name("fake-agent")
        .no_reconnect()
        .connect()
        .await
        .unwrap();
    retain(
        &c,
        &format!("dev/{id}/meta"),
        meta(id, location, projector_settings()),
    )
    .await;
    for i in 0..states {
        retain(
            &c,
            &format!("dev/{id}/state"),
            json!({"power": "off", "n": i}),
        )
        .await;
    }
    retain(&c, &format!("dev/{id}/online"), json!({"online": true})).await;
    c.flush().await.unwrap();
}

#[tokio::test]
async fn console_at_venue_size_stays_correct_and_responsive() {
    const N: usize = 2000;
    let mut hub = Proc::start(
        "patchbay-hub",
        &["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
    )
    .await;
    let console = hub.next_line_last_word().await;
    let agent = patchbay_client::ClientBuilder::new(hub.addr())
        .name("fake-agent")
        .connect()
        .await
        .unwrap();
    let id = |i: usize| format!("d{i:04}");
    let room = |i: usize| format!("Room {:03}", i / 10);
    for i in 0..N {
        retain(
            &agent,
            &format!("dev/{}/meta", id(i)),
            meta(&id(i), &room(i), projector_settings()),
        )
        .await;
        retain(
            &agent,
            &format!("dev/{}/state", id(i)),
            json!({"power": "off", "input": "hdmi1", "mute": false}),
        )
        .await;
        retain(
            &agent,
            &format!("dev/{}/online", id(i)),
            json!({"online": true}),
        )
        .await;
    }
    agent.flush().await.unwrap();

    let (_driver, port) = chromedriver().await;
    let profile =
        std::env::temp_dir().join(format!("patchbay-chromium-venue-{}", std::process::id()));
    let c = browser(port, &profile).await;
    c.goto(&console).await.unwrap();
    let count = "return document.querySelectorAll('article.card').length";
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    while c.execute(count, vec![]).await.unwrap() != json!(N) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every device shown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    text_until(&c, "#conn", "the live indicator", |t| t == "live").await;
    // The page's own clock: when the snapshot arrived and when its last card was drawn,
    // and the longest the main thread was blocked meanwhile.
    let load = c
        .execute_async(
            "const done = arguments[arguments.length - 1]; \
             const m = n => (performance.getEntriesByName(n).pop() || {}).startTime; \
             const marks = [m('patchbay:snapshot-received'), m('patchbay:snapshot-drawn')]; \
             new PerformanceObserver((l, o) => { o.disconnect(); \
               done([...marks, Math.max(0, ...l.getEntries().map(e => e.duration))]); }) \
               .observe({type: 'longtask', buffered: true}); \
             setTimeout(() => done([...marks, 0]), 1000);",
            vec![],
        )
        .await
        .unwrap();

    // The snapshot is the current state, not news: the event log stays empty.
    let logged = c
        .execute("return document.querySelectorAll('#log li').length", vec![])
        .await
        .unwrap();
    assert_eq!(logged, json!(0), "the snapshot filled the event log");
    // On before off, and the same words on every device.
    let order = c
        .execute(
            "return [...document.querySelectorAll(\"article[data-id='d0000'] button[data-setting='power']\")].map(b => b.dataset.value)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(order, json!(["on", "off"]));
    let label = text_until(&c, "label[for='ctl-d0000-input']", "the input label", |t| {
        !t.is_empty()
    })
    .await;
    assert_eq!(label, "Input");

    // Search: one room out of 200.
    let search_ms = c
        .execute(
            "const t = performance.now(); document.querySelector('#search').value = 'room 017'; applySearch(); return performance.now() - t;",
            vec![],
        )
        .await
        .unwrap();
    let shown = c
        .execute(
            "return [...document.querySelectorAll('article.card')].filter(c => c.getClientRects().length > 0).length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(shown, json!(10));
    let sections = c
        .execute(
            "return [...document.querySelectorAll('section.location')].filter(s => s.getClientRects().length > 0).map(s => s.dataset.location)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(sections, json!(["Room 017"]));
    c.execute(
        "document.querySelector('#search').value = ''; applySearch();",
        vec![],
    )
    .await
    .unwrap();

    // A burst: every device powers on at once. Long tasks on the page's main thread are recorded.
    c.execute(
        "window.__long = []; new PerformanceObserver(l => window.__long.push(...l.getEntries().map(e => e.duration))).observe({entryTypes: ['longtask']});",
        vec![],
    )
    .await
    .unwrap();
    let burst = tokio::time::Instant::now();
    let before = patchbay_hub::server::now_ms();
    for i in 0..N {
        retain(
            &agent,
            &format!("dev/{}/state", id(i)),
            json!({"power": "on", "input": "hdmi2", "mute": false}),
        )
        .await;
    }
    agent.flush().await.unwrap();
    let on = "return [...document.querySelectorAll('.power-badge')].filter(b => b.textContent === 'On').length";
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    while c.execute(on, vec![]).await.unwrap() != json!(N) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every update shown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let burst_ms = burst.elapsed();
    let longest = c
        .execute("return Math.max(0, ...window.__long)", vec![])
        .await
        .unwrap();

    // A description changes (as when an agent restarts): one card, in its new room.
    retain(
        &agent,
        "dev/d0001/meta",
        meta("d0001", "Room 999", json!([])),
    )
    .await;
    retain(
        &agent,
        "dev/d0001/online",
        json!({"online": false, "reason": "the device cannot be reached"}),
    )
    .await;
    agent.flush().await.unwrap();
    text_until(
        &c,
        "article[data-id='d0001'] .reason",
        "the moved card",
        |t| t == "Offline: the device cannot be reached",
    )
    .await;
    let cards = c
        .execute(
            "return [...document.querySelectorAll(\"article[data-id='d0001']\")].map(c => c.closest('section').dataset.location)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        cards,
        json!(["Room 999"]),
        "a stale twin card was left behind"
    );
    // That live change is in the log, stamped with the hub's time.
    let stamp = c
        .execute(
            "const li = [...document.querySelectorAll('#log li')].find(li => li.textContent.includes('d0001')); return li ? Date.parse(li.querySelector('time').getAttribute('datetime')) : null",
            vec![],
        )
        .await
        .unwrap();
    let stamp = stamp.as_f64().expect("the offline change is logged") as u64;
    assert!(
        stamp >= before && stamp <= patchbay_hub::server::now_ms(),
        "{stamp}"
    );

    eprintln!(
        "console at {N} devices: snapshot received {:.0} ms and every card drawn {:.0} ms after navigation \
         (longest main-thread task meanwhile {:.0} ms); search over all cards {:.1} ms; \
         {N} live updates shown {:.0} ms after the burst began; longest main-thread task {} ms",
        load[0].as_f64().unwrap_or(f64::NAN),
        load[1].as_f64().unwrap_or(f64::NAN),
        load[2].as_f64().unwrap_or(f64::NAN),
        search_ms.as_f64().unwrap_or(f64::NAN),
        burst_ms.as_secs_f64() * 1000.0,
        longest
    );
    c.close().await.unwrap();
    let _ = std::fs::remove_dir_all(profile);
}
