//! The one-command demo: a hub, simulated devices and an agent in one process.

use patchbay_tests::{cli, online, Proc, Watcher};

#[tokio::test]
async fn demo_runs_every_device_and_takes_commands() {
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
    assert_eq!(demo.first_line, "patchbay demo is running");
    let console_line = demo.stdout.next_line().await.unwrap().unwrap();
    assert!(
        console_line
            .trim_start()
            .starts_with("console              http://127.0.0.1:"),
        "{console_line}"
    );
    let hub_line = demo.stdout.next_line().await.unwrap().unwrap();
    let hub = hub_line.split_whitespace().last().unwrap().to_owned();
    assert!(hub_line.contains("hub (wire protocol)"), "{hub_line}");

    let ids = [
        "proj-1",
        "proj-2",
        "proj-3",
        "display-1",
        "wall-1",
        "matrix-1",
    ];
    let mut w = Watcher::new(&hub).await;
    w.until("every demo device online", |d| {
        ids.iter().all(|id| online(d, id))
    })
    .await;
    let drivers: Vec<&str> = ids
        .iter()
        .map(|id| w.devices[*id].meta_str("driver"))
        .collect();
    assert_eq!(
        drivers,
        ["pjlink", "pjlink", "escvp21", "line", "line", "line"]
    );
    // The library's display and switcher, simulated from their profiles.
    let (ok, out, err) = cli(
        &hub,
        &["set", "wall-1", "power=on", "input=hdmi2", "volume=30"],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(["volume", "30"])),
        "{out}"
    );
    let (ok, out, err) = cli(&hub, &["set", "matrix-1", "input=3"]).await;
    assert!(ok, "{err}");
    assert!(
        out.lines().any(|l| l.split_whitespace().eq(["input", "3"])),
        "{out}"
    );

    let (ok, out, err) = cli(&hub, &["set", "display-1", "power=on", "input=hdmi2"]).await;
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(["input", "hdmi2"])),
        "{out}"
    );
    let (ok, out, err) = cli(&hub, &["set", "proj-3", "mute=true"]).await;
    assert!(!ok, "muting in standby must fail: {out}");
    assert!(err.contains("busy"), "{err}");
}

#[tokio::test]
async fn demo_refuses_an_open_listen_address_without_insecure() {
    let out = tokio::process::Command::new(patchbay_tests::bin("patchbay-agent"))
        .args([
            "demo",
            "--hub-listen",
            "0.0.0.0:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0 with no tokens configured"),
        "{err}"
    );
}
