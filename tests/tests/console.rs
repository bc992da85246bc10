//! The operator console in a real headless Chromium (Debian's chromium and
//! chromium-driver, which `.ci/run` installs), against the demo hub.

use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use patchbay_client::{Body, RequestOptions};
use patchbay_tests::{bin, Proc, WAIT};
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
    for id in ["proj-1", "proj-2", "proj-3", "display-1"] {
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
    assert_eq!(rooms, ["Auditorium", "Boardroom", "Classroom 2", "Lobby"]);
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
    let badge = c
        .find(Locator::Css("article[data-id='proj-3'] .online-badge"))
        .await
        .unwrap();
    let reason = badge.attr("title").await.unwrap().unwrap_or_default();
    assert!(reason.contains("gone"), "{reason}");
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
                "return document.querySelector(\"article[data-id='proj-1']\").hidden",
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
    let mut hub = Proc::start(
        "patchbay-hub",
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
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
    c.goto(&format!("http://{http}/")).await.unwrap();
    text_until(&c, "#conn", "the live indicator", |t| t == "live").await;
    hub.kill().await;
    text_until(&c, "#conn", "the lost connection shown", |t| {
        t == "reconnecting…"
    })
    .await;
    let _hub = Proc::start("patchbay-hub", &["--listen", &tcp, "--http-listen", &http]).await;
    text_until(&c, "#conn", "recovery without a reload", |t| t == "live").await;
    c.close().await.unwrap();
    let _ = std::fs::remove_dir_all(profile);
}
