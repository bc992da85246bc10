//! The PJLink driver against scripted projectors that behave the way real
//! ones do: refusing identity queries in standby, video-only mutes,
//! class 2 inputs, several lamps, non-standard class replies, CR LF line
//! ends, slow replies, a close after every reply, no answer at all in
//! standby, class 1 projectors without input names and ERR3 while warming.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use patchbay_drivers::pjlink::{Pjlink, PjlinkOptions};
use patchbay_drivers::{Description, Kind, State, Transport};
use patchbay_tests::peer::{PeerOptions, PjlinkProjector, ScriptedPeer};
use serde_json::{json, Value};

fn opts() -> PjlinkOptions {
    PjlinkOptions {
        command_timeout: Duration::from_secs(2),
        transition_poll: Duration::from_millis(10),
        ..PjlinkOptions::default()
    }
}

/// A scripted projector; the handle shapes it while it runs.
async fn projector(
    p: PjlinkProjector,
    peer: PeerOptions,
) -> (ScriptedPeer, Arc<Mutex<PjlinkProjector>>, Pjlink) {
    let shared = Arc::new(Mutex::new(p));
    let script = shared.clone();
    let peer = ScriptedPeer::start(peer, move |l| script.lock().unwrap().answer(l)).await;
    let driver = Pjlink::new(Transport::tcp(peer.addr()), opts());
    (peer, shared, driver)
}

fn set(v: Value) -> State {
    v.as_object().unwrap().clone()
}

fn inputs(d: &Description) -> Vec<String> {
    let s = d.settings.iter().find(|s| s.name == "input").unwrap();
    match &s.kind {
        Kind::Enum { values, .. } => values.clone(),
        other => panic!("input is {other:?}"),
    }
}

#[tokio::test]
async fn a_projector_first_seen_in_standby_is_described_again_once_on() {
    let p = PjlinkProjector {
        err3_unless_on: true,
        ..PjlinkProjector::default()
    };
    let (_peer, _, mut d) = projector(p, PeerOptions::pjlink()).await;
    let first = d.describe().await.unwrap();
    // Nothing could be read, and nothing false is claimed about it.
    assert!(!d.needs_redescribe(), "still in standby");
    assert_eq!(d.poll().await.unwrap()["power"], "off");
    assert!(!d.needs_redescribe());
    // Its inputs are unknown: the input setting takes any name for now.
    let input = first.settings.iter().find(|s| s.name == "input").unwrap();
    assert_eq!(input.kind, Kind::Text);
    d.apply(&set(json!({"power": "on"}))).await.unwrap();
    assert!(
        d.needs_redescribe(),
        "on now: the description can be completed"
    );
    let full = d.describe().await.unwrap();
    assert!(!d.needs_redescribe());
    assert_eq!(full.info["class"], 2);
    assert_eq!(full.manufacturer, "SCRIPTED");
    assert_eq!(inputs(&full).len(), 3, "{:?}", inputs(&full));
    assert!(full.settings.iter().any(|s| s.name == "freeze"));
    let hdmi = inputs(&full)[2].clone();
    let confirmed = d.apply(&set(json!({"input": hdmi}))).await.unwrap();
    assert_eq!(confirmed["input"], json!(hdmi));
}

#[tokio::test]
async fn video_only_and_audio_only_mutes_are_reported() {
    let p = PjlinkProjector {
        power: 1,
        ..PjlinkProjector::default()
    };
    let (_peer, shared, mut d) = projector(p, PeerOptions::pjlink()).await;
    d.describe().await.unwrap();
    for (avmt, video, audio) in [
        ("11", true, false),
        ("21", false, true),
        ("31", true, true),
        ("30", false, false),
    ] {
        shared.lock().unwrap().mute = avmt.into();
        let s = d.poll().await.unwrap();
        assert_eq!(
            (&s["video_mute"], &s["audio_mute"], &s["mute"]),
            (&json!(video), &json!(audio), &json!(video && audio)),
            "AVMT={avmt}"
        );
    }
    // Setting one leaves the other as it was.
    shared.lock().unwrap().mute = "21".into();
    let c = d.apply(&set(json!({"video_mute": true}))).await.unwrap();
    assert_eq!(
        (&c["video_mute"], &c["audio_mute"]),
        (&json!(true), &json!(true))
    );
    assert_eq!(shared.lock().unwrap().mute, "31");
}

#[tokio::test]
async fn class_2_inputs_are_selected_with_the_class_2_prefix() {
    let p = PjlinkProjector {
        power: 1,
        inputs: "11 31 3A 61".into(),
        ..PjlinkProjector::default()
    };
    let (peer, shared, mut d) = projector(p, PeerOptions::pjlink()).await;
    let desc = d.describe().await.unwrap();
    let ids = inputs(&desc);
    assert_eq!(ids.len(), 4, "{ids:?}");
    for id in &ids {
        d.apply(&set(json!({"input": id}))).await.unwrap();
        let s = d.poll().await.unwrap();
        assert_eq!(&s["input"], &json!(id));
    }
    let sets: Vec<String> = peer
        .lines()
        .into_iter()
        .filter(|l| l.contains("INPT ") && !l.ends_with('?'))
        .collect();
    assert_eq!(sets, ["%1INPT 11", "%1INPT 31", "%2INPT 3A", "%2INPT 61"]);
    assert_eq!(shared.lock().unwrap().input, "61");
}

#[tokio::test]
async fn every_lamp_of_a_multi_lamp_projector_is_reported() {
    let p = PjlinkProjector {
        power: 1,
        lamps: "1200 1 340 0 7 1".into(),
        ..PjlinkProjector::default()
    };
    let (_peer, _, mut d) = projector(p, PeerOptions::pjlink()).await;
    d.describe().await.unwrap();
    let s = d.poll().await.unwrap();
    assert_eq!(
        s["lamps"],
        json!([{"hours": 1200, "on": true}, {"hours": 340, "on": false}, {"hours": 7, "on": true}])
    );
    assert_eq!(s["lamp_hours"], 1200);
}

#[tokio::test]
async fn a_non_standard_class_reply_and_crlf_line_ends_are_understood() {
    let p = PjlinkProjector {
        power: 1,
        class_reply: "Class 2".into(),
        crlf: true,
        ..PjlinkProjector::default()
    };
    let (_peer, _, mut d) = projector(p, PeerOptions::pjlink()).await;
    let desc = d.describe().await.unwrap();
    assert_eq!(desc.info["class"], 2);
    assert_eq!(inputs(&desc).len(), 3);
    let s = d.poll().await.unwrap();
    assert_eq!(s["power"], "on");
    assert_eq!(s["filter_hours"], 40);
    let id = inputs(&desc)[0].clone();
    let c = d.apply(&set(json!({"input": id}))).await.unwrap();
    assert_eq!(c["input"], json!(id));
}

#[tokio::test]
async fn slow_replies_and_a_close_after_every_reply() {
    let p = PjlinkProjector {
        power: 1,
        ..PjlinkProjector::default()
    };
    let peer_opts = PeerOptions {
        delay: Duration::from_millis(150),
        close_after_reply: true,
        ..PeerOptions::pjlink()
    };
    let (peer, shared, mut d) = projector(p, peer_opts).await;
    let desc = d.describe().await.unwrap();
    let s = d.poll().await.unwrap();
    assert_eq!(s["power"], "on");
    let id = inputs(&desc)[0].clone();
    d.apply(&set(json!({"input": id}))).await.unwrap();
    assert_eq!(shared.lock().unwrap().input, "11");
    // A connection per command, each re-opened without an error.
    assert!(
        peer.connections() as usize >= peer.lines().len() - 1,
        "{} connections",
        peer.connections()
    );
}

#[tokio::test]
async fn a_projector_silent_in_standby_times_out_and_shows_its_real_power_once_it_answers() {
    let p = PjlinkProjector {
        silent_in_standby: true,
        ..PjlinkProjector::default()
    };
    let (peer, shared, mut d) = projector(p, PeerOptions::pjlink()).await;
    let e = d.poll().await.unwrap_err();
    assert_eq!(e.code().as_str(), "device_timeout", "{e}");
    assert!(
        e.to_string().starts_with("no reply to `%1") && e.to_string().ends_with("within 2000 ms"),
        "{e}"
    );
    // Turned on with its remote: it answers again, and the power reported
    // is the projector's, not a value kept from before.
    shared.lock().unwrap().power = 1;
    let s = d.poll().await.unwrap();
    assert_eq!(s["power"], "on");
    let desc = d.describe().await.unwrap();
    assert_eq!(inputs(&desc).len(), 3);
    assert!(peer.lines().iter().any(|l| l.ends_with("POWR ?")));
}

#[tokio::test]
async fn a_class_1_projector_saying_class_1_gets_inputs_named_from_their_codes() {
    let p = PjlinkProjector {
        power: 1,
        class_reply: "Class 1".into(),
        inputs: "11 12 21 31 51".into(),
        input: "12".into(),
        ..PjlinkProjector::default()
    };
    let (peer, _, mut d) = projector(p, PeerOptions::pjlink()).await;
    let desc = d.describe().await.unwrap();
    assert_eq!(desc.info["class"], 1);
    assert_eq!(
        inputs(&desc),
        ["rgb1", "rgb2", "video1", "digital1", "network1"],
        "named from the input codes, since class 1 has no INNM, in the projector's order"
    );
    assert_eq!(d.poll().await.unwrap()["input"], "rgb2");
    let c = d.apply(&set(json!({"input": "network1"}))).await.unwrap();
    assert_eq!(c["input"], "network1");
    let class2: Vec<String> = peer
        .lines()
        .into_iter()
        .filter(|l| l.contains("%2"))
        .collect();
    assert!(class2.is_empty(), "class 2 commands sent: {class2:?}");
}

#[tokio::test]
async fn err3_while_warming_is_waited_out_not_reported() {
    let p = PjlinkProjector {
        transition_polls: 3,
        ..PjlinkProjector::default()
    };
    let (peer, shared, mut d) = projector(p, PeerOptions::pjlink()).await;
    let desc = d.describe().await.unwrap();
    // Power on, then an input while it warms up: the projector answers ERR3
    // to the input until it is on; the driver waits and then sets it.
    d.command(1, "POWR", "1").await.unwrap();
    assert_eq!(shared.lock().unwrap().power, 3, "warming");
    let hdmi = inputs(&desc)[2].clone();
    let c = d.apply(&set(json!({"input": hdmi}))).await.unwrap();
    assert_eq!(c["input"], json!(hdmi));
    assert_eq!(d.poll().await.unwrap()["power"], "on");
    assert!(
        peer.lines().iter().any(|l| l.contains("POWR ?")),
        "the warm-up was followed"
    );
}

// ESC/VP21 projectors.

use patchbay_drivers::escvp21::{Escvp21, Escvp21Options};
use patchbay_drivers::{DriverError, Level};
use patchbay_tests::peer::Escvp21Projector;

fn vp21_opts() -> Escvp21Options {
    Escvp21Options {
        command_timeout: Duration::from_millis(500),
        transition_poll: Duration::from_millis(10),
        ..Escvp21Options::default()
    }
}

async fn epson(
    p: Escvp21Projector,
    password: Option<&str>,
    opts: Escvp21Options,
) -> (ScriptedPeer, Arc<Mutex<Escvp21Projector>>, Escvp21) {
    let shared = Arc::new(Mutex::new(p));
    let script = shared.clone();
    let peer = ScriptedPeer::start_timed(PeerOptions::escvp_net(password), move |l| {
        script.lock().unwrap().answer(l)
    })
    .await;
    let driver = Escvp21::new(Transport::tcp(peer.addr()), opts);
    (peer, shared, driver)
}

#[tokio::test]
async fn standby_with_av_output_is_standby_and_powers_on() {
    let p = Escvp21Projector {
        power: "09".into(),
        ..Escvp21Projector::default()
    };
    let (_peer, shared, mut d) = epson(p, None, vp21_opts()).await;
    d.describe().await.unwrap();
    let s = d.poll().await.unwrap();
    assert_eq!(s["power"], "off");
    let c = d.apply(&set(json!({"power": "on"}))).await.unwrap();
    assert_eq!(c["power"], "on");
    assert_eq!(shared.lock().unwrap().power, "01");
}

#[tokio::test]
async fn abnormal_standby_is_off_with_an_error_and_its_reason() {
    let p = Escvp21Projector {
        power: "05".into(),
        error: "04".into(),
        ..Escvp21Projector::default()
    };
    let (_peer, _, mut d) = epson(p, None, vp21_opts()).await;
    d.describe().await.unwrap();
    let s = d.poll().await.unwrap();
    assert_eq!(s["power"], "off");
    assert_eq!(s["error"], "04");
    let events = d.take_events();
    let abnormal = events
        .iter()
        .find(|e| e.code == "abnormal_standby")
        .expect("an abnormal standby event");
    assert_eq!(abnormal.level, Level::Error);
    assert!(
        events.iter().any(|e| e.message.contains("temperature")),
        "the reason from ERR?: {events:?}"
    );
    // Reported once, not on every poll.
    d.poll().await.unwrap();
    assert!(d.take_events().is_empty());
}

#[tokio::test]
async fn a_late_prompt_after_power_on_does_not_shift_the_replies() {
    // The lamp takes longer to strike than the driver waits.
    let p = Escvp21Projector {
        power: "00".into(),
        transition_polls: 3,
        power_on_pause: Duration::from_millis(400),
        ..Escvp21Projector::default()
    };
    let opts = Escvp21Options {
        power_timeout: Duration::from_millis(200),
        ..vp21_opts()
    };
    let (_peer, shared, mut d) = epson(p, None, opts).await;
    d.describe().await.unwrap();
    let e = d.apply(&set(json!({"power": "on"}))).await.unwrap_err();
    assert!(matches!(e, DriverError::Timeout { .. }), "{e}");
    // Every later reply belongs to its own command.
    for _ in 0..6 {
        let s = d.poll().await.unwrap();
        assert!(
            ["warming", "on"].contains(&s["power"].as_str().unwrap()),
            "{s:?}"
        );
    }
    assert_eq!(d.poll().await.unwrap()["power"], "on");
    shared.lock().unwrap().source = "A0".into();
    assert_eq!(d.poll().await.unwrap()["input"], "hdmi2");
    let c = d.apply(&set(json!({"input": "hdmi1"}))).await.unwrap();
    assert_eq!(c["input"], "hdmi1");
}

#[tokio::test]
async fn sub_sources_and_a_configured_source_table() {
    let (_peer, shared, mut d) = epson(Escvp21Projector::default(), None, vp21_opts()).await;
    d.describe().await.unwrap();
    for (code, id) in [
        ("1F", "computer"),
        ("11", "computer"),
        ("14", "computer"),
        ("30", "hdmi1"),
        ("41", "video"),
    ] {
        shared.lock().unwrap().source = code.into();
        assert_eq!(d.poll().await.unwrap()["input"], id, "SOURCE={code}");
    }
    // A model where A0 is DVI-D.
    let opts = Escvp21Options {
        sources: vec![("hdmi".into(), "30".into()), ("dvi".into(), "A0".into())],
        ..vp21_opts()
    };
    let (peer, shared, mut d) = epson(Escvp21Projector::default(), None, opts).await;
    let desc = d.describe().await.unwrap();
    assert_eq!(inputs(&desc), ["hdmi", "dvi"]);
    let c = d.apply(&set(json!({"input": "dvi"}))).await.unwrap();
    assert_eq!(c["input"], "dvi");
    assert_eq!(shared.lock().unwrap().source, "A0");
    assert!(peer.lines().contains(&"SOURCE A0".to_owned()));
}

#[tokio::test]
async fn the_escvp_net_password_handshake() {
    let (_peer, _, mut d) = epson(
        Escvp21Projector::default(),
        Some("s3cret"),
        Escvp21Options {
            password: Some("s3cret".into()),
            ..vp21_opts()
        },
    )
    .await;
    assert_eq!(d.poll().await.unwrap()["power"], "on");

    let (_peer, _, mut d) = epson(
        Escvp21Projector::default(),
        Some("s3cret"),
        Escvp21Options {
            password: Some("guess".into()),
            ..vp21_opts()
        },
    )
    .await;
    let e = d.poll().await.unwrap_err();
    assert!(matches!(e, DriverError::WrongPassword), "{e}");

    let (_peer, _, mut d) = epson(Escvp21Projector::default(), Some("s3cret"), vp21_opts()).await;
    let e = d.poll().await.unwrap_err();
    assert!(matches!(e, DriverError::PasswordRequired), "{e}");
    assert!(e.to_string().contains("password"), "{e}");
}
