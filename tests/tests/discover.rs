//! `patchbay-agent discover`: the PJLink class 2 search (`%2SRCH` over UDP,
//! `%2ACKN` answers), then name, class and model read over TCP; against
//! simulator processes and a scripted answer on loopback only.

use std::time::Duration;

use patchbay_tests::{bin, pjlink_sim};
use serde_json::Value;

/// Runs `patchbay-agent discover ARGS`; returns (success, stdout, stderr).
async fn discover(args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(bin("patchbay-agent"))
            .arg("discover")
            .args(["--bind", "127.0.0.1:0"])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("discover hung")
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mac_of(addr: &str) -> String {
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    format!("02:00:00:00:{:02x}:{:02x}", port >> 8, port & 0xff)
}

#[tokio::test]
async fn a_class_2_projector_answers_the_search_and_is_named() {
    let sim = pjlink_sim(
        "127.0.0.1:0",
        &["--name", "Hall 2 left", "--model", "EB-L1100"],
    )
    .await;
    let addr = sim.addr();
    let (ok, out, err) = discover(&["--to", &addr, "--wait-ms", "20000", "--json"]).await;
    assert!(ok, "{err}");
    let found: Value = serde_json::from_str(&out).unwrap();
    let found = found.as_array().unwrap();
    assert_eq!(found.len(), 1, "{out}");
    let p = &found[0];
    assert_eq!(p["address"], addr.as_str());
    assert_eq!(p["mac"], mac_of(&addr).as_str());
    assert_eq!(p["name"], "Hall 2 left");
    assert_eq!(p["class"], 2);
    assert!(p["model"].as_str().unwrap().ends_with("EB-L1100"), "{p}");
    assert_eq!(p["note"], Value::Null);

    // The table says the same in columns.
    let (ok, out, _) = discover(&["--to", &addr, "--wait-ms", "20000"]).await;
    assert!(ok);
    let row = out.lines().nth(1).unwrap();
    assert!(
        row.starts_with(&addr) && row.contains("Hall 2 left"),
        "{out}"
    );
}

#[tokio::test]
async fn class_1_projectors_do_not_answer_searches() {
    let sim = pjlink_sim("127.0.0.1:0", &["--class", "1"]).await;
    let (ok, out, err) = discover(&["--to", &sim.addr(), "--wait-ms", "800", "--json"]).await;
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        Value::Array(vec![])
    );
    let (ok, out, _) = discover(&["--to", &sim.addr(), "--wait-ms", "300"]).await;
    assert!(ok);
    assert!(out.contains("class 1 projectors do not answer"), "{out}");
}

#[tokio::test]
async fn a_projector_with_a_password_is_listed_and_named_with_it() {
    let sim = pjlink_sim("127.0.0.1:0", &["--password", "JBMIAProjectorLink"]).await;
    let addr = sim.addr();
    let (ok, out, err) = discover(&["--to", &addr, "--wait-ms", "20000", "--json"]).await;
    assert!(ok, "{err}");
    let found: Value = serde_json::from_str(&out).unwrap();
    let p = &found[0];
    assert_eq!(p["mac"], mac_of(&addr).as_str(), "found by the search");
    assert_eq!(p["name"], Value::Null);
    assert!(
        p["note"].as_str().unwrap().contains("password"),
        "says why it has no name: {p}"
    );
    let (ok, out, err) = discover(&[
        "--to",
        &addr,
        "--wait-ms",
        "20000",
        "--json",
        "--password",
        "JBMIAProjectorLink",
    ])
    .await;
    assert!(ok, "{err}");
    let found: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(found[0]["name"], "Simulated Projector");
    assert_eq!(found[0]["class"], 2);
}

/// A projector's answer as some send it (lower case, CR LF), from a scripted
/// UDP peer that knows nothing of the simulator; nothing listens on its TCP
/// port, so it is listed by its MAC with the reason it has no name.
#[tokio::test]
async fn answers_in_lower_case_are_taken_and_an_unreachable_projector_is_explained() {
    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = peer.local_addr().unwrap();
    let answering = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        let (n, from) = peer.recv_from(&mut buf).await.unwrap();
        assert_eq!(
            &buf[..n],
            b"%2SRCH\r",
            "the search as the standard writes it"
        );
        // Not an answer, then the answer.
        peer.send_to(b"hello\r", from).await.unwrap();
        peer.send_to(b"%2ackn=00:1a:2b:3c:4d:5e\r\n", from)
            .await
            .unwrap();
    });
    let (ok, out, err) =
        discover(&["--to", &addr.to_string(), "--wait-ms", "20000", "--json"]).await;
    answering.await.unwrap();
    assert!(ok, "{err}");
    let found: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(found[0]["mac"], "00:1a:2b:3c:4d:5e");
    assert_eq!(found[0]["address"], addr.to_string().as_str());
    let note = found[0]["note"].as_str().unwrap();
    assert!(note.contains(&addr.to_string()), "{note}");
}

#[tokio::test]
async fn a_search_that_cannot_bind_says_why() {
    let holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().to_string();
    let out = tokio::process::Command::new(bin("patchbay-agent"))
        .args([
            "discover",
            "--bind",
            &taken,
            "--to",
            "127.0.0.1:9",
            "--wait-ms",
            "100",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot bind {taken}")), "{err}");
}
