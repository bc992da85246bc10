//! The Panasonic NTCONTROL driver against scripted projectors written from
//! the protocol as PlaceOS implements and tests it
//! (github.com/PlaceOS/drivers, drivers/panasonic/projector/nt_control.cr
//! and nt_control_spec.cr): the greeting `NTCONTROL 1 09b075be`, user
//! `admin1`, password `panasonic`, the digest
//! `d4a58eaea919558fb54a33a2effa8b94` before `00Q$S`, the lamp hours reply
//! `001682`; one command per connection.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use patchbay_drivers::panasonic::{Panasonic, PanasonicOptions};
use patchbay_drivers::{DriverError, State, Transport};
use patchbay_tests::peer::{PeerOptions, ScriptedPeer};
use serde_json::json;

const DIGEST: &str = "d4a58eaea919558fb54a33a2effa8b94";

fn protected() -> PeerOptions {
    PeerOptions {
        greeting: Some("NTCONTROL 1 09b075be\r".into()),
        close_after_reply: true,
        ..PeerOptions::pjlink()
    }
}

fn opts(password: Option<&str>) -> PanasonicOptions {
    PanasonicOptions {
        password: password.map(str::to_owned),
        command_timeout: Duration::from_secs(2),
        transition_poll: Duration::from_millis(10),
        ..PanasonicOptions::default()
    }
}

/// A projector: `lamp` is the Q$S answer sequence (the last one repeats).
struct Projector {
    lamp: Vec<&'static str>,
    input: String,
    laser: bool,
}

impl Projector {
    fn answer(&mut self, line: &str) -> Option<String> {
        let Some(cmd) = line.strip_prefix(DIGEST).and_then(|l| l.strip_prefix("00")) else {
            return Some("ERRA\r".into());
        };
        let lamp = *self.lamp.first().unwrap();
        let on = lamp == "2";
        let r = match cmd {
            "Q$S" if self.laser => "ERR1".into(),
            "Q$S" => {
                if self.lamp.len() > 1 {
                    self.lamp.remove(0);
                }
                format!("00{lamp}")
            }
            "QPW" => format!("0000{}", u8::from(on || self.laser)),
            "QID" => "00PT-VMZ71".into(),
            "QIN" => format!("00{}", self.input),
            "QSH" | "QFZ" => "000".into(),
            "Q$L:1" => "001682".into(),
            c if c.starts_with("IIS:") && !on && !self.laser => "ERR3".into(),
            c if c.starts_with("IIS:") => {
                self.input = c[4..].to_owned();
                format!("00{c}")
            }
            "PON" => {
                self.lamp = vec!["1", "1", "2"];
                "00PON".into()
            }
            _ => "ERR1".into(),
        };
        Some(format!("{r}\r"))
    }
}

async fn projector(p: Projector) -> (ScriptedPeer, Arc<Mutex<Projector>>) {
    let shared = Arc::new(Mutex::new(p));
    let script = shared.clone();
    let peer = ScriptedPeer::start(protected(), move |l| script.lock().unwrap().answer(l)).await;
    (peer, shared)
}

fn set(v: serde_json::Value) -> State {
    v.as_object().unwrap().clone()
}

#[tokio::test]
async fn the_documented_exchange_byte_for_byte() {
    let (peer, _) = projector(Projector {
        lamp: vec!["2"],
        input: "HD1".into(),
        laser: false,
    })
    .await;
    let mut d = Panasonic::new(Transport::tcp(peer.addr()), opts(Some("panasonic")));
    assert_eq!(d.command("Q$S").await.unwrap(), "2");
    assert_eq!(d.command("Q$L:1").await.unwrap(), "1682");
    assert_eq!(
        peer.lines(),
        [format!("{DIGEST}00Q$S"), format!("{DIGEST}00Q$L:1")],
        "the digest of admin1:panasonic:09b075be before each command"
    );
    assert_eq!(peer.connections(), 2, "a connection per command");

    let desc = d.describe().await.unwrap();
    assert_eq!(desc.manufacturer, "Panasonic");
    assert_eq!(desc.model, "PT-VMZ71");
    let s = d.poll().await.unwrap();
    assert_eq!(s["power"], "on");
    assert_eq!(s["input"], "hdmi1");
    assert_eq!(s["shutter"], false);
    assert_eq!(s["lamp_hours"], 1682);
    let c = d
        .apply(&set(json!({"input": "digital-link"})))
        .await
        .unwrap();
    assert_eq!(c["input"], "digital-link");
    assert!(peer.lines().contains(&format!("{DIGEST}00IIS:DL1")));
}

#[tokio::test]
async fn passwords_missing_or_wrong_are_named() {
    let (peer, _) = projector(Projector {
        lamp: vec!["0"],
        input: "HD1".into(),
        laser: false,
    })
    .await;
    let mut d = Panasonic::new(Transport::tcp(peer.addr()), opts(None));
    let e = d.poll().await.unwrap_err();
    assert!(matches!(e, DriverError::PasswordRequired), "{e:?}");
    assert!(peer.lines().is_empty(), "nothing sent without a password");
    let mut d = Panasonic::new(Transport::tcp(peer.addr()), opts(Some("wrong")));
    let e = d.poll().await.unwrap_err();
    assert!(matches!(e, DriverError::WrongPassword), "{e:?}");
    assert_eq!(e.code().as_str(), "offline");
}

#[tokio::test]
async fn power_on_is_followed_through_the_lamp_warming_and_err3_waited_out() {
    let (peer, shared) = projector(Projector {
        lamp: vec!["0"],
        input: "HD1".into(),
        laser: false,
    })
    .await;
    let mut d = Panasonic::new(Transport::tcp(peer.addr()), opts(Some("panasonic")));
    assert_eq!(d.poll().await.unwrap()["power"], "off");
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    d.set_progress(Some(tx));
    let c = d.apply(&set(json!({"power": "on"}))).await.unwrap();
    assert_eq!(c["power"], "on");
    assert_eq!(
        rx.try_recv().unwrap().1,
        "warming",
        "the warm-up was reported"
    );
    // Standby again, then an input: ERR3, and the driver says why.
    shared.lock().unwrap().lamp = vec!["0"];
    let e = d.apply(&set(json!({"input": "hdmi2"}))).await.unwrap_err();
    assert!(e.to_string().contains("standby"), "{e}");
}

#[tokio::test]
async fn a_projector_without_lamp_status_is_read_by_qpw() {
    let (peer, _) = projector(Projector {
        lamp: vec!["0"],
        input: "RG1".into(),
        laser: true,
    })
    .await;
    let mut d = Panasonic::new(Transport::tcp(peer.addr()), opts(Some("panasonic")));
    let s = d.poll().await.unwrap();
    assert_eq!(s["power"], "on");
    assert_eq!(s["input"], "rgb1");
    d.poll().await.unwrap();
    let asked_lamp = peer.lines().iter().filter(|l| l.ends_with("Q$S")).count();
    assert_eq!(asked_lamp, 1, "Q$S refused once is not asked again");
}

#[tokio::test]
async fn an_unprotected_projector_gets_commands_without_a_digest() {
    let peer = ScriptedPeer::start(
        PeerOptions {
            greeting: Some("NTCONTROL 0\r".into()),
            close_after_reply: true,
            ..PeerOptions::pjlink()
        },
        |l| Some(if l == "00QPW" { "00000\r" } else { "ERR1\r" }.into()),
    )
    .await;
    let mut d = Panasonic::new(Transport::tcp(peer.addr()), opts(None));
    assert_eq!(d.poll().await.unwrap()["power"], "off");
    assert_eq!(peer.lines()[0], "00Q$S");
}

#[tokio::test]
async fn a_peer_that_is_not_a_panasonic_projector_is_named() {
    let peer = ScriptedPeer::start(PeerOptions::pjlink(), |_| None).await;
    let mut d = Panasonic::new(Transport::tcp(peer.addr()), opts(None));
    let e = d.poll().await.unwrap_err();
    assert!(e.to_string().contains("not an NTCONTROL greeting"), "{e}");
}
