//! Arbitrary bytes from devices: every reply parser, and every driver
//! talking to a peer that answers garbage. Nothing may panic or hang; a
//! driver answers with an error that says what was unexpected.

use std::time::Duration;

use patchbay_drivers::escvp21::{codec as vp21, Escvp21, Escvp21Options};
use patchbay_drivers::line::{LineDriver, LineProfile};
use patchbay_drivers::panasonic::{codec as nt, Panasonic, PanasonicOptions};
use patchbay_drivers::pjlink::{codec as pj, Pjlink, PjlinkOptions};
use patchbay_drivers::{DriverError, State, Transport};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Text with the characters devices get wrong: non-ASCII, controls, separators.
fn device_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[%=0-9A-Za-z ?\r\n\u{e9}\u{fffd}\u{1f4a9}]{0,40}",
        prop::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn ntcontrol_parsers_take_any_text(text in device_text()) {
        let _ = nt::parse_greeting(&text);
        let _ = nt::parse_reply(&text, "QPW");
        let _ = nt::parse_qpw(&text);
        let _ = nt::parse_lamp_status(&text);
        let _ = nt::parse_flag(&text);
        prop_assert!(!nt::input_id(&text).is_empty() || text.is_empty());
    }

    #[test]
    fn pjlink_parsers_take_any_text(text in device_text(), names in prop::collection::vec(prop::option::of(device_text()), 0..6)) {
        let _ = pj::parse_greeting(&text);
        for (class, cmd) in [(1u8, "POWR"), (2, "INPT"), (1, "AVMT")] {
            let _ = pj::parse_reply(&text, class, cmd, "?");
        }
        let _ = pj::parse_class(&text);
        let _ = pj::input_class(&text);
        let _ = pj::input_type(&text);
        let _ = pj::parse_mute(&text);
        let _ = pj::parse_lamps(&text);
        let _ = pj::parse_erst(&text);
        let _ = pj::power_name(&text);
        let ids = pj::input_ids(&text, &names);
        // Every input gets an id, and no two the same.
        let distinct: std::collections::HashSet<&String> = ids.iter().map(|(_, id)| id).collect();
        prop_assert_eq!(distinct.len(), ids.len());
    }

    #[test]
    fn escvp21_parsers_take_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..60), text in device_text()) {
        let _ = vp21::parse_header(&bytes);
        let _ = vp21::request_password(&bytes);
        let lines = vp21::reply_lines(&bytes);
        let _ = vp21::value_of(&lines, "PWR");
        let _ = vp21::parse_power(&text);
        let table = vec![("hdmi1".to_string(), "30".to_string()), ("computer".to_string(), "10".to_string())];
        let _ = vp21::source_id(&table, &text);
        let _ = vp21::error_text(&text);
    }

    #[test]
    fn visca_over_ip_headers_take_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
        if let Some((kind, seq, payload)) = patchbay_drivers::visca_ip::unwrap(&bytes) {
            // What parses is exactly what wrapping it again gives.
            prop_assert_eq!(patchbay_drivers::visca_ip::wrap(kind, seq, payload), bytes.clone());
        }
    }
}

/// A peer that answers each command (ended by `end`) with the next chunk
/// of `replies`, then goes quiet. ESC/VP.net peers first answer the handshake.
async fn garbage_peer(replies: Vec<Vec<u8>>, end: u8, handshake: Option<Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        if let Some(h) = handshake {
            let mut hello = [0u8; 16];
            if s.read_exact(&mut hello).await.is_err() {
                return;
            }
            let _ = s.write_all(&h).await;
        } else if let Some(first) = replies.first() {
            // PJLink and line peers speak first (a greeting, or nothing at all).
            let _ = s.write_all(first).await;
        }
        let mut buf = [0u8; 256];
        for reply in replies.iter().skip(1) {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) if buf[..n].contains(&end) => break,
                    Ok(_) => {}
                }
            }
            if s.write_all(reply).await.is_err() {
                return;
            }
        }
        let _ = s.read(&mut buf).await;
    });
    addr
}

fn replies() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let chunk = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..30),
        "(%1[A-Z]{4}=[^\r]{0,12}\r|PJLINK [01] ?[0-9a-f]{0,8}\r|[A-Z]{3,6}=[0-9A-F]{0,3}\r:|ERR\r:|:|NTCONTROL [01] ?[0-9a-f]{0,8}\r|00[0-9A-Z$:]{0,6}\r|ERR[1-5A]\r)"
            .prop_map(String::into_bytes),
        Just("%1POWR=\u{e9}x\r".as_bytes().to_vec()),
        Just("%1INST=\u{e9}1 31 \u{1f4a9}\r".as_bytes().to_vec()),
    ];
    prop::collection::vec(chunk, 1..25)
}

/// Runs `body` for many generated peers; a panic anywhere fails the test.
fn each_peer(cases: u32, body: impl Fn(Vec<Vec<u8>>) -> Result<(), TestCaseError>) {
    let mut runner = TestRunner::new(Config {
        cases,
        ..Config::default()
    });
    runner.run(&replies(), body).unwrap();
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Describe, poll and a command; each must end (with a value or an error) in time.
macro_rules! exercise {
    ($d:expr) => {{
        let limit = Duration::from_secs(5);
        let described = tokio::time::timeout(limit, $d.describe()).await;
        check(described.map(|r| r.map(|_| State::new())));
        check(tokio::time::timeout(limit, $d.poll()).await);
        check(tokio::time::timeout(limit, $d.apply(&on())).await);
    }};
}

fn check(r: Result<Result<State, DriverError>, tokio::time::error::Elapsed>) {
    match r.expect("a driver hung on device garbage") {
        Ok(_) => {}
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

fn on() -> State {
    serde_json::json!({"power": "on"})
        .as_object()
        .unwrap()
        .clone()
}

#[test]
fn the_pjlink_driver_survives_any_replies() {
    let rt = rt();
    each_peer(48, |replies| {
        rt.block_on(async {
            let addr = garbage_peer(replies, b'\r', None).await;
            let mut d = Pjlink::new(
                Transport::tcp(&addr),
                PjlinkOptions {
                    command_timeout: Duration::from_millis(100),
                    transition_timeout: Duration::from_millis(300),
                    transition_poll: Duration::from_millis(20),
                    password: Some("pw".into()),
                    ..PjlinkOptions::default()
                },
            );
            exercise!(d);
        });
        Ok(())
    });
}

/// A peer that takes a connection per command, as NTCONTROL projectors do:
/// each connection gets the next chunk as its greeting and the one after as
/// its reply; when they run out, connections are closed at once.
async fn connection_per_command_peer(replies: Vec<Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut chunks = replies.into_iter();
        while let Ok((mut s, _)) = listener.accept().await {
            let Some(greeting) = chunks.next() else {
                continue; // dropped: closed at once
            };
            let _ = s.write_all(&greeting).await;
            let mut buf = [0u8; 256];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) if buf[..n].contains(&b'\r') => {
                        if let Some(reply) = chunks.next() {
                            let _ = s.write_all(&reply).await;
                        }
                        break;
                    }
                    Ok(_) => {}
                }
            }
        }
    });
    addr
}

#[test]
fn the_panasonic_driver_survives_any_replies() {
    let rt = rt();
    each_peer(48, |replies| {
        rt.block_on(async {
            let addr = connection_per_command_peer(replies).await;
            let mut d = Panasonic::new(
                Transport::tcp(&addr),
                PanasonicOptions {
                    command_timeout: Duration::from_millis(100),
                    transition_timeout: Duration::from_millis(300),
                    transition_poll: Duration::from_millis(20),
                    password: Some("pw".into()),
                    ..PanasonicOptions::default()
                },
            );
            exercise!(d);
        });
        Ok(())
    });
}

#[test]
fn the_escvp21_driver_survives_any_replies() {
    let rt = rt();
    each_peer(48, |replies| {
        rt.block_on(async {
            let handshake = vp21::header(0x20, 0).to_vec();
            let addr = garbage_peer(replies, b'\r', Some(handshake)).await;
            let mut d = Escvp21::new(
                Transport::tcp(&addr),
                Escvp21Options {
                    command_timeout: Duration::from_millis(100),
                    power_timeout: Duration::from_millis(200),
                    transition_timeout: Duration::from_millis(300),
                    transition_poll: Duration::from_millis(20),
                    ..Escvp21Options::default()
                },
            );
            exercise!(d);
        });
        Ok(())
    });
}

#[test]
fn the_line_driver_survives_any_replies() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/lg-display.toml");
    let profile: LineProfile = LineDriver::load_profile(&path).unwrap();
    let rt = rt();
    each_peer(48, |replies| {
        rt.block_on(async {
            let mut replies = replies;
            // The display does not greet.
            replies.insert(0, Vec::new());
            let addr = garbage_peer(replies, b'\r', None).await;
            let mut profile = profile.clone();
            profile.timeout_ms = 100;
            let mut d = LineDriver::new(Transport::tcp(&addr), profile).unwrap();
            exercise!(d);
        });
        Ok(())
    });
}

/// A peer that answers every read from the driver with the next reply.
async fn chatty_peer(replies: Vec<Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let mut replies = replies.into_iter();
        // Some devices speak first (a greeting, Telnet options).
        if let Some(first) = replies.next() {
            let _ = s.write_all(&first).await;
        }
        let mut buf = [0u8; 256];
        for reply in replies {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if s.write_all(&reply).await.is_err() {
                return;
            }
        }
    });
    addr
}

#[test]
fn every_library_profile_survives_any_replies() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    let mut profiles = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "toml") {
            let mut p: LineProfile = LineDriver::load_profile(&path).unwrap();
            // Short waits, so garbage is judged quickly.
            p.timeout_ms = 100;
            p.delay_ms = 0;
            p.power_on = None;
            for s in &mut p.settings {
                s.timeout_ms = None;
            }
            profiles.push(p);
        }
    }
    assert!(profiles.len() >= 10);
    let rt = rt();
    each_peer(12, |replies| {
        rt.block_on(async {
            for profile in &profiles {
                let addr = chatty_peer(replies.clone()).await;
                let mut d = LineDriver::new(Transport::tcp(&addr), profile.clone()).unwrap();
                exercise!(d);
            }
        });
        Ok(())
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn templates_and_frames_take_any_input(
        source in "[0-9A-Fa-f {}:\"a-z]{0,40}",
        frame in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        use patchbay_drivers::line::checksum::Checksum;
        use patchbay_drivers::line::frame::Framing;
        use patchbay_drivers::line::template::{Rules, Template};
        let vars = std::collections::BTreeMap::from([("id".to_owned(), "01".to_owned())]);
        let rules = Rules { length_adjust: 0, checksum: Checksum::Sum8, checksum_from: 1 };
        if let Ok(t) = Template::parse(&source) {
            let _ = t.encode(Some("01"), &vars, &rules);
            let _ = t.matches(&frame, &vars, &rules, None);
            let _ = t.matches(&frame, &vars, &rules, Some(1));
        }
        for framing in [
            Framing::End(vec![0x0d]),
            Framing::Length { start: vec![0xaa], at: 3, add: 5, hex2: false },
            Framing::Length { start: vec![0x01], at: 5, add: 9, hex2: true },
            Framing::Length { start: vec![], at: 4, add: 6, hex2: false },
            Framing::Fixed { start: b"*S".to_vec(), len: 24 },
        ] {
            let mut buf = frame.clone();
            let before = buf.len();
            let _ = framing.cut(&mut buf);
            prop_assert!(buf.len() <= before);
        }
    }
}
