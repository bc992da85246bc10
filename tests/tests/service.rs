//! Running as a systemd service: the readiness, watchdog and stop notices
//! the hub and agent send to `$NOTIFY_SOCKET` (played here by a datagram
//! socket), the units in `packaging/systemd`, and the example configs.

use std::process::Stdio;
use std::time::Duration;

use patchbay_tests::{bin, temp_dir, WAIT};
use tokio::net::UnixDatagram;
use tokio::process::Command;

/// The next notice on `sock`, as text.
async fn notice(sock: &UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, sock.recv(&mut buf))
        .await
        .expect("a notice within the wait")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Starts `name` with `args` under a fake service manager listening on a
/// datagram socket, with a 200 ms watchdog.
async fn under_systemd(name: &str, args: &[&str]) -> (tokio::process::Child, UnixDatagram) {
    let dir = temp_dir("notify");
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let child = Command::new(bin(name))
        .args(args)
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    (child, sock)
}

async fn terminate(child: &tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    let ok = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test]
async fn the_hub_says_it_is_ready_keeps_the_watchdog_fed_and_says_when_it_stops() {
    let (mut hub, sock) = under_systemd(
        "patchbay-hub",
        &[
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--memory-only",
        ],
    )
    .await;
    let ready = notice(&sock).await;
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(ready.contains("STATUS=listening on 127.0.0.1:"), "{ready}");
    // At half the interval: several pings within a second.
    let mut pings = 0;
    while pings < 3 {
        let n = notice(&sock).await;
        assert_eq!(n.trim(), "WATCHDOG=1", "{n}");
        pings += 1;
    }
    terminate(&hub).await;
    loop {
        let n = notice(&sock).await;
        if n.contains("STOPPING=1") {
            break;
        }
        assert_eq!(n.trim(), "WATCHDOG=1", "only pings until it stops: {n}");
    }
    let status = tokio::time::timeout(WAIT, hub.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_watchdog_meant_for_another_process_is_left_alone() {
    let dir = temp_dir("notify-other");
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let _hub = Command::new(bin("patchbay-hub"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--memory-only",
        ])
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "100000")
        .env("WATCHDOG_PID", "1")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    assert!(notice(&sock).await.contains("READY=1"));
    let mut buf = [0u8; 256];
    let more = tokio::time::timeout(Duration::from_millis(600), sock.recv(&mut buf)).await;
    assert!(more.is_err(), "no pings for a watchdog of pid 1");
}

#[tokio::test]
async fn the_agent_says_it_is_ready_and_when_it_stops() {
    let config = patchbay_tests::temp_file(
        "notify-agent.toml",
        "hub = \"127.0.0.1:9\"\n[[device]]\nid = \"p1\"\ndriver = \"pjlink\"\ntcp = \"127.0.0.1:9\"\n",
    );
    let (agent, sock) =
        under_systemd("patchbay-agent", &["--config", config.to_str().unwrap()]).await;
    let ready = notice(&sock).await;
    assert!(
        ready.contains("READY=1") && ready.contains("1 devices"),
        "{ready}"
    );
    terminate(&agent).await;
    loop {
        let n = notice(&sock).await;
        if n.contains("STOPPING=1") {
            break;
        }
    }
}

#[test]
fn the_example_configs_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let hub = patchbay_hub::config::HubConfig::load(&root.join("examples/hub.toml")).unwrap();
    assert!(
        hub.auth_required(),
        "a venue hub listens beyond loopback with tokens"
    );
    hub.check_exposure(false).unwrap();
    let out = std::process::Command::new(bin("patchbay-agent"))
        .args(["--config"])
        .arg(root.join("examples/agent.toml"))
        .arg("check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_systemd_units_verify_and_are_hardened() {
    let Ok(probe) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!(
            "skipped: systemd-analyze is not installed here, so the units cannot be verified"
        );
        return;
    };
    assert!(probe.status.success());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = temp_dir("units");
    for (unit, binary, config) in [
        ("patchbay-hub.service", "patchbay-hub", "examples/hub.toml"),
        (
            "patchbay-agent.service",
            "patchbay-agent",
            "examples/agent.toml",
        ),
    ] {
        // The unit as installed, pointed at this build and the example config.
        let text = std::fs::read_to_string(root.join("packaging/systemd").join(unit)).unwrap();
        let text = text
            .replace(&format!("/usr/bin/{binary}"), bin(binary).to_str().unwrap())
            .replace(
                &format!("/etc/patchbay/{}", config.trim_start_matches("examples/")),
                root.join(config).to_str().unwrap(),
            );
        let path = dir.join(unit);
        std::fs::write(&path, text).unwrap();
        let verify = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&verify.stderr);
        assert!(
            verify.status.success() && said.trim().is_empty(),
            "{unit}: {said}"
        );
        let security = std::process::Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--threshold=25"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            security.status.success(),
            "{unit} is exposed more than 2.5: {}",
            String::from_utf8_lossy(&security.stdout)
        );
    }
}
