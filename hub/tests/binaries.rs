//! The `patchbay-hub` and `patchbay` binaries as a user runs them.

mod common;

use std::process::Stdio;

use common::{assert_err, WAIT};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

struct HubProcess {
    child: Child,
    addr: String,
}

async fn start_hub(extra: &[&str]) -> HubProcess {
    let memory = (!extra.contains(&"--data-dir")).then_some("--memory-only");
    let mut child = Command::new(env!("CARGO_BIN_EXE_patchbay-hub"))
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(extra)
        .args(memory)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, out.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = line
        .strip_prefix("patchbay-hub listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    HubProcess { child, addr }
}

async fn cli(hub: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        WAIT,
        Command::new(env!("CARGO_BIN_EXE_patchbay"))
            .arg("--hub")
            .arg(hub)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn hub_stops_cleanly_on_ctrl_c() {
    let mut hub = start_hub(&[]).await;
    let stream = TcpStream::connect(&hub.addr).await.unwrap();
    let (rd, mut wr) = stream.into_split();
    wr.write_all(b"{\"op\":\"ping\",\"id\":1}\n").await.unwrap();
    let mut lines = BufReader::new(rd).lines();
    let pong = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(pong.contains("pong"), "{pong}");

    let pid = hub.child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let last = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_err(&serde_json::from_str(&last).unwrap(), "shutting_down");
    let status = tokio::time::timeout(WAIT, hub.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "hub exited with {status}");
}

#[tokio::test]
async fn hub_refuses_open_listen_without_tokens() {
    let out = Command::new(env!("CARGO_BIN_EXE_patchbay-hub"))
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0 with no tokens configured"),
        "{err}"
    );
    assert!(err.contains("--insecure"), "{err}");
}

#[tokio::test]
async fn hub_names_the_bad_config_field() {
    let dir = std::env::temp_dir().join(format!("patchbay-hub-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hub.toml");
    std::fs::write(&path, "max_frame_bytes = \"big\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_patchbay-hub"))
        .arg("--config")
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("hub.toml") && err.contains("max_frame_bytes"),
        "{err}"
    );
    // Said once, on one line: no `Error:` then `Caused by:` repeating it.
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("patchbay-hub: "), "{err}");
    assert_eq!(err.matches("max_frame_bytes").count(), 1, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn cli_pub_sub_req() {
    let hub = start_hub(&[]).await;
    let (ok, out, err) = cli(&hub.addr, &["pub", "--retain", "room/1/temp", "{\"c\":21}"]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("published room/1/temp (seq "), "{out}");

    let mut sub = Command::new(env!("CARGO_BIN_EXE_patchbay"))
        .args([
            "--hub",
            &hub.addr,
            "sub",
            "--snapshot",
            "--json",
            "--count",
            "2",
            "room/+/temp",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(
        &tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["body"], json!({"c":21}));
    assert_eq!(first["retained"], true);
    // The snapshot arrived, so the subscription is live: publish again.
    assert!(cli(&hub.addr, &["pub", "room/2/temp", "19"]).await.0);
    let second: serde_json::Value = serde_json::from_str(
        &tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (second["tag"].as_str(), second["body"].as_i64()),
        (Some("room/2/temp"), Some(19))
    );
    let status = tokio::time::timeout(WAIT, sub.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());

    let (ok, _, err) = cli(&hub.addr, &["req", "dev/nobody/set", "{}"]).await;
    assert!(!ok);
    assert!(
        err.contains("no_responder: nobody owns or subscribes to `dev/nobody/set`"),
        "{err}"
    );

    let (ok, _, err) = cli("127.0.0.1:1", &["pub", "x", "1"]).await;
    assert!(!ok);
    assert!(err.contains("cannot reach hub at 127.0.0.1:1"), "{err}");
}

/// Runs the hub under `sh` with `setup` first; returns its stderr after `act` and a Ctrl-C.
async fn hub_stderr(
    setup: &str,
    config: &str,
    act: impl std::future::Future<Output = ()> + Send,
    http: &str,
) -> String {
    let dir = std::env::temp_dir().join(format!(
        "patchbay-hub-log-{}-{}",
        std::process::id(),
        http.replace([':', '.'], "-")
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hub.toml");
    std::fs::write(&path, config).unwrap();
    let script = format!(
        "{setup}; exec {} --config {} --listen 127.0.0.1:0 --http-listen {http}",
        env!("CARGO_BIN_EXE_patchbay-hub"),
        path.display()
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(WAIT, out.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    act.await;
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let mut err = String::new();
    let mut stderr = child.stderr.take().unwrap();
    tokio::time::timeout(
        WAIT,
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut err),
    )
    .await
    .unwrap()
    .unwrap();
    let _ = child.wait().await;
    std::fs::remove_dir_all(&dir).unwrap();
    err
}

/// A free loopback port for a child process to listen on.
fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[tokio::test]
async fn hub_warns_when_the_open_file_limit_is_too_low() {
    let err = hub_stderr("ulimit -n 512", "", async {}, &free_port()).await;
    assert!(
        err.contains("the open-file limit is below what max_connections"),
        "{err}"
    );
}

#[tokio::test]
async fn query_tokens_never_reach_the_logs() {
    let http = free_port();
    let config = "[[tokens]]\ntoken = \"very-secret-console-token\"\nrole = \"viewer\"\n";
    let url = format!("http://{http}/api/devices?token=very-secret-console-token");
    let err = hub_stderr(
        "true",
        config,
        async {
            let res = reqwest::get(&url).await.unwrap();
            assert_eq!(res.status(), 200);
        },
        &http,
    )
    .await;
    assert!(err.contains("token=REDACTED"), "{err}");
    assert!(!err.contains("very-secret-console-token"), "{err}");
}
