//! `patchbay-sim pjlink` against an independent PJLink client: the PyPI
//! package `pypjlink2`, installed by `.ci/run` in `target/pyenv`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(30);

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("PATCHBAY_PYTHON") {
        return p.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python");
    assert!(
        venv.exists(),
        "pypjlink2 is not installed: run `bash .ci/run`, or `python3 -m venv target/pyenv && target/pyenv/bin/pip install pypjlink2`"
    );
    venv
}

const SCRIPT: &str = r#"
import json, sys, time
from pypjlink import Projector
host, port, password = sys.argv[1], int(sys.argv[2]), (sys.argv[3] or None)
out = {}
with Projector.from_address(host, port) as p:
    p.authenticate(password)
    out["name"] = p.get_name()
    out["manufacturer"] = p.get_manufacturer()
    out["power_before"] = p.get_power()
    p.set_power("on")
    deadline = time.time() + 20
    while p.get_power() != "on":
        assert time.time() < deadline, "never warmed up"
        time.sleep(0.05)
    out["power_after"] = p.get_power()
    out["inputs"] = [list(i) for i in p.get_inputs()]
    p.set_input("DIGITAL", 2)
    out["input"] = list(p.get_input())
    out["errors"] = p.get_errors()
    out["lamps"] = [list(l) for l in p.get_lamps()]
print(json.dumps(out))
"#;

async fn interop(password: Option<&str>) {
    let mut sim = Command::new(env!("CARGO_BIN_EXE_patchbay-sim"))
        .args([
            "pjlink",
            "--listen",
            "127.0.0.1:0",
            "--warmup-ms",
            "300",
            "--class",
            "1",
            "--name",
            "Lobby",
        ])
        .args(password.map(|p| vec!["--password", p]).unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sim.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = first
        .strip_prefix("pjlink simulator listening on ")
        .unwrap()
        .to_owned();
    let (host, port) = addr.rsplit_once(':').unwrap();

    let out = tokio::time::timeout(
        WAIT,
        Command::new(python())
            .args(["-c", SCRIPT, host, port, password.unwrap_or("")])
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "pypjlink failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "Lobby");
    assert_eq!(v["manufacturer"], "patchbay");
    assert_eq!(v["power_before"], "off");
    assert_eq!(v["power_after"], "on");
    assert_eq!(
        v["inputs"],
        serde_json::json!([["DIGITAL", 1], ["DIGITAL", 2], ["RGB", 1], ["VIDEO", 1]])
    );
    assert_eq!(v["input"], serde_json::json!(["DIGITAL", 2]));
    assert_eq!(v["errors"]["lamp"], "ok");
    assert_eq!(v["lamps"], serde_json::json!([[1234, true]]));

    // The simulator's own view agrees.
    let mut stdin = sim.stdin.take().unwrap();
    stdin.write_all(b"state\n").await.unwrap();
    let state: serde_json::Value = serde_json::from_str(
        &tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (state["power"].as_str(), state["input"].as_str()),
        (Some("on"), Some("32"))
    );
}

#[tokio::test]
async fn pypjlink_controls_the_simulator() {
    interop(None).await;
}

#[tokio::test]
async fn pypjlink_authenticates_with_the_simulator() {
    interop(Some("secret123")).await;
}
