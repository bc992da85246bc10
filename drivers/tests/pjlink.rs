//! The PJLink driver against the simulator over real TCP, and byte for byte
//! against a scripted peer.

use std::time::Duration;

use patchbay_drivers::pjlink::{Pjlink, PjlinkOptions};
use patchbay_drivers::sim::{pjlink, ProjectorConfig, Sim};
use patchbay_drivers::{DriverError, Level, State, Transport};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(10);

async fn start(cfg: ProjectorConfig) -> (Sim, String) {
    let sim = Sim::new(cfg);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(pjlink::serve(listener, sim.clone()));
    (sim, addr)
}

fn quick() -> ProjectorConfig {
    ProjectorConfig {
        warmup: Duration::from_millis(300),
        cooldown: Duration::from_millis(200),
        ..ProjectorConfig::default()
    }
}

fn opts(password: Option<&str>) -> PjlinkOptions {
    PjlinkOptions {
        password: password.map(str::to_owned),
        command_timeout: Duration::from_millis(500),
        transition_poll: Duration::from_millis(50),
        ..PjlinkOptions::default()
    }
}

fn desired(v: serde_json::Value) -> State {
    v.as_object().unwrap().clone()
}

async fn full_cycle(password: Option<&str>) {
    let (sim, addr) = start(ProjectorConfig {
        password: password.map(str::to_owned),
        ..quick()
    })
    .await;
    let mut d = Pjlink::new(Transport::tcp(&addr), opts(password));
    let desc = d.describe().await.unwrap();
    assert_eq!(
        (desc.manufacturer.as_str(), desc.model.as_str()),
        ("patchbay", "SIM-1000")
    );
    assert_eq!(desc.info["class"], 2);
    assert_eq!(desc.info["serial_number"], "SIM0001234");
    let inputs = serde_json::to_value(desc.setting("input").unwrap()).unwrap();
    assert_eq!(
        inputs["values"],
        json!(["hdmi1", "hdmi2", "computer", "video"])
    );
    assert!(desc.setting("freeze").is_some());

    let s = d.poll().await.unwrap();
    assert_eq!(s["power"], "off");
    assert_eq!(s["input"], json!(null), "no input while in standby");
    assert_eq!(s["lamp_hours"], 1234);
    assert_eq!(s["errors"]["lamp"], "ok");

    // Power on and an input in one request: power first, through the warm-up.
    let s = tokio::time::timeout(
        WAIT,
        d.apply(&desired(json!({"power":"on","input":"hdmi2"}))),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        (s["power"].as_str(), s["input"].as_str()),
        (Some("on"), Some("hdmi2"))
    );
    let s = d
        .apply(&desired(json!({"mute":true,"freeze":true})))
        .await
        .unwrap();
    assert_eq!(
        (s["mute"].as_bool(), s["freeze"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(sim.lock().input, "32");
    let s = d.apply(&desired(json!({"power":"off"}))).await.unwrap();
    assert_eq!(s["power"], "off");
    assert_eq!(
        sim.stats().max_open,
        1,
        "never two connections to one device"
    );
}

#[tokio::test]
async fn without_password() {
    full_cycle(None).await;
}

#[tokio::test]
async fn with_password() {
    full_cycle(Some("JBMIAProjectorLink")).await;
}

#[tokio::test]
async fn wrong_or_missing_password() {
    let (_sim, addr) = start(ProjectorConfig {
        password: Some("right".into()),
        ..quick()
    })
    .await;
    let mut d = Pjlink::new(Transport::tcp(&addr), opts(Some("wrong")));
    let e = d.poll().await.unwrap_err();
    assert!(matches!(e, DriverError::WrongPassword), "{e:?}");
    assert_eq!(
        e.to_string(),
        "wrong password: the device refused authentication (ERRA)"
    );
    let mut d = Pjlink::new(Transport::tcp(&addr), opts(None));
    let e = d.poll().await.unwrap_err();
    assert!(matches!(e, DriverError::PasswordRequired), "{e:?}");
}

#[tokio::test]
async fn every_error_code() {
    let (sim, addr) = start(quick()).await;
    let mut d = Pjlink::new(Transport::tcp(&addr), opts(None));
    // ERR1: undefined command.
    let e = d.command(1, "XYZW", "?").await.unwrap_err();
    assert_eq!(e.to_string(), "the device does not support `XYZW ?`");
    // ERR2: parameter out of range.
    let e = d.command(1, "INPT", "59").await.unwrap_err();
    assert!(matches!(e, DriverError::OutOfRange(_)), "{e:?}");
    // ERR3: unavailable while warming up; the raw command reports busy...
    d.command(1, "POWR", "1").await.unwrap();
    let e = d.command(1, "INPT", "32").await.unwrap_err();
    assert!(matches!(e, DriverError::Busy { .. }), "{e:?}");
    assert_eq!(e.code().as_str(), "busy");
    // ...while `apply` waits the warm-up out and succeeds.
    let s = tokio::time::timeout(WAIT, d.apply(&desired(json!({"input":"hdmi2"}))))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s["input"], "hdmi2");
    assert_eq!(d.poll().await.unwrap()["power"], "on");
    // ERR4: device failure.
    sim.set_faults(|f| f.failure = true);
    let e = d.apply(&desired(json!({"power":"off"}))).await.unwrap_err();
    assert!(matches!(e, DriverError::DeviceFailure(_)), "{e:?}");
    assert_eq!(e.code().as_str(), "device_error");
    sim.set_faults(|f| f.failure = false);
    // Setting an input in standby is refused with a reason.
    d.apply(&desired(json!({"power":"off"}))).await.unwrap();
    let e = d
        .apply(&desired(json!({"input":"hdmi1"})))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("standby"), "{e}");
}

#[tokio::test]
async fn class1_device_has_no_class2_features() {
    let (_sim, addr) = start(ProjectorConfig {
        class: 1,
        ..quick()
    })
    .await;
    let mut d = Pjlink::new(Transport::tcp(&addr), opts(None));
    let desc = d.describe().await.unwrap();
    assert_eq!(desc.info["class"], 1);
    assert!(desc.setting("freeze").is_none());
    assert!(desc.info.get("serial_number").is_none());
    let inputs = serde_json::to_value(desc.setting("input").unwrap()).unwrap();
    assert_eq!(
        inputs["values"],
        json!(["digital1", "digital2", "rgb1", "video1"])
    );
    let e = d.command(2, "SNUM", "?").await.unwrap_err();
    assert!(matches!(e, DriverError::Unsupported(_)), "{e:?}");
}

#[tokio::test]
async fn reconnects_after_the_device_closes_an_idle_connection() {
    let (sim, addr) = start(ProjectorConfig {
        idle_close: Duration::from_millis(100),
        ..quick()
    })
    .await;
    let mut d = Pjlink::new(Transport::tcp(&addr), opts(None));
    d.poll().await.unwrap();
    // Wait (bounded) for the projector to drop the idle connection.
    let deadline = tokio::time::Instant::now() + WAIT;
    while sim.stats().open > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "simulator never closed the idle connection"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = d.poll().await.unwrap();
    assert_eq!(s["power"], "off");
    assert_eq!(sim.stats().total, 2);
    assert_eq!(sim.stats().max_open, 1);
}

#[tokio::test]
async fn silent_device_times_out_and_recovers() {
    let (sim, addr) = start(quick()).await;
    let mut d = Pjlink::new(Transport::tcp(&addr), opts(None));
    d.poll().await.unwrap();
    sim.set_faults(|f| f.silent = true);
    let e = d.poll().await.unwrap_err();
    assert_eq!(e.to_string(), "no reply to `%1POWR ?` within 500 ms");
    assert_eq!(e.code().as_str(), "device_timeout");
    sim.set_faults(|f| f.silent = false);
    assert_eq!(d.poll().await.unwrap()["power"], "off");
}

#[tokio::test]
async fn lamp_error_becomes_state_and_event() {
    let (sim, addr) = start(quick()).await;
    let mut d = Pjlink::new(Transport::tcp(&addr), opts(None));
    d.poll().await.unwrap();
    assert!(d.take_events().is_empty());
    sim.set_faults(|f| f.lamp_error = true);
    let s = d.poll().await.unwrap();
    assert_eq!(s["errors"]["lamp"], "error");
    let events = d.take_events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].level, events[0].code.as_str()),
        (Level::Error, "lamp")
    );
}

#[tokio::test]
async fn refused_connection_names_the_address() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let mut d = Pjlink::new(Transport::tcp(&addr), opts(None));
    let e = d.poll().await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("cannot connect to {addr}:")),
        "{e}"
    );
    assert_eq!(e.code().as_str(), "offline");
}

/// Byte-level transcript against a scripted peer: the digest from the
/// specification's example and every command in the spec's format.
#[tokio::test]
async fn transcript_matches_the_specification_format() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let script: Vec<(&str, &str)> = vec![
        ("5d8409bc1c3fa39749434aa3a5c38682%1CLSS ?\r", "%1CLSS=1\r"),
        ("%1INF1 ?\r", "%1INF1=EPSON\r"),
        ("%1INF2 ?\r", "%1INF2=EB-L1000\r"),
        ("%1NAME ?\r", "%1NAME=Room 101\r"),
        ("%1INFO ?\r", "%1INFO=\r"),
        ("%1INST ?\r", "%1INST=11 31 32\r"),
        ("%1POWR ?\r", "%1POWR=1\r"),
        ("%1INPT ?\r", "%1INPT=31\r"),
        ("%1AVMT ?\r", "%1AVMT=30\r"),
        ("%1LAMP ?\r", "%1LAMP=1500 1\r"),
        ("%1ERST ?\r", "%1ERST=000000\r"),
        // After a change, only what it touched is read back.
        ("%1INPT 32\r", "%1INPT=OK\r"),
        ("%1INPT ?\r", "%1INPT=32\r"),
        ("%1AVMT 31\r", "%1AVMT=OK\r"),
        ("%1AVMT ?\r", "%1AVMT=31\r"),
    ];
    let expected: Vec<String> = script.iter().map(|(c, _)| c.to_string()).collect();
    let peer = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"PJLINK 1 498e4a67\r").await.unwrap();
        let mut got = Vec::new();
        let mut buf = Vec::new();
        for (_, reply) in script {
            buf.clear();
            loop {
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await.unwrap();
                buf.push(b[0]);
                if b[0] == b'\r' {
                    break;
                }
            }
            got.push(String::from_utf8(buf.clone()).unwrap());
            s.write_all(reply.as_bytes()).await.unwrap();
        }
        got
    });
    let mut d = Pjlink::new(Transport::tcp(&addr), opts(Some("JBMIAProjectorLink")));
    let desc = d.describe().await.unwrap();
    assert_eq!(desc.info["name"], "Room 101");
    let s = d.poll().await.unwrap();
    assert_eq!(
        (
            s["input"].as_str(),
            s["mute"].as_bool(),
            s["lamp_hours"].as_u64()
        ),
        (Some("digital1"), Some(false), Some(1500))
    );
    let s = d
        .apply(&desired(json!({"input":"digital2","mute":true})))
        .await
        .unwrap();
    assert_eq!(s["input"], "digital2");
    assert_eq!(s["mute"], true);
    assert_eq!(s.len(), 4, "only the touched settings: {s:?}");
    assert_eq!(peer.await.unwrap(), expected);
}
