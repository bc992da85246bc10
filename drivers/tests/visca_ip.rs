//! The Sony VISCA profile over VISCA over IP (UDP): a scripted camera that
//! checks each datagram byte for byte (the 8-byte header: payload type
//! 01 00 for commands, 01 10 for inquiries, 02 00 for the RESET control
//! command; the payload length; the sequence number) and answers with
//! 01 11 replies carrying the request's sequence number, as Sony's VISCA
//! over IP cameras do and as obs-ptz (github.com/glikely/obs-ptz,
//! src/ptz-visca-udp.cpp) speaks to them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use patchbay_drivers::line::LineDriver;
use patchbay_drivers::{State, Transport};
use serde_json::json;
use tokio::net::UdpSocket;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

/// A camera on a loopback UDP port; returns its address and what it heard.
async fn camera(power_on: bool) -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let log = heard.clone();
    tokio::spawn(async move {
        let mut on = power_on;
        let mut buf = [0u8; 256];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let d = buf[..n].to_vec();
            log.lock().unwrap().push(d.clone());
            let seq = &d[4..8];
            let payload = &d[8..];
            let reply = |p: &str| {
                let p = hex(p);
                let mut out = vec![0x01, 0x11, 0x00, p.len() as u8];
                out.extend_from_slice(seq);
                out.extend_from_slice(&p);
                out
            };
            let answers: Vec<Vec<u8>> = match &d[..2] {
                [0x02, 0x00] => vec![hex("02 01 00 01 00 00 00 00 01")],
                [0x01, 0x10] if payload == hex("81 09 04 00 FF") => {
                    // Noise first: a datagram that is not a reply.
                    vec![
                        hex("ff ff"),
                        reply(if on { "90 50 02 FF" } else { "90 50 03 FF" }),
                    ]
                }
                [0x01, 0x00] if payload == hex("81 01 04 00 02 FF") => {
                    on = true;
                    vec![reply("90 41 FF"), reply("90 51 FF")]
                }
                [0x01, 0x00] if payload == hex("81 01 04 3F 02 05 FF") => {
                    vec![reply("90 41 FF"), reply("90 61 41 FF")]
                }
                [0x01, 0x00] if payload.starts_with(&hex("81 01 04 3F 02")) => {
                    vec![reply("90 41 FF"), reply("90 51 FF")]
                }
                _ => vec![reply("90 60 02 FF")],
            };
            for a in answers {
                let _ = socket.send_to(&a, from).await;
            }
        }
    });
    (addr, heard)
}

fn driver(addr: &str) -> LineDriver {
    let profile = patchbay_drivers::library::get("sony-visca")
        .unwrap()
        .unwrap();
    LineDriver::new(Transport::ViscaIp { addr: addr.into() }, profile).unwrap()
}

fn set(v: serde_json::Value) -> State {
    v.as_object().unwrap().clone()
}

#[tokio::test]
async fn the_visca_profile_runs_over_ip_with_headers_and_sequence_numbers() {
    let (addr, heard) = camera(false).await;
    let mut d = driver(&addr);
    let limit = Duration::from_secs(20);
    let s = tokio::time::timeout(limit, d.poll())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s["power"], "off");
    let c = tokio::time::timeout(limit, d.apply(&set(json!({"power": "on"}))))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c["power"], "on");
    let c = tokio::time::timeout(limit, d.apply(&set(json!({"preset": 2}))))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c["preset"], 2);
    let heard = heard.lock().unwrap().clone();
    assert_eq!(heard[0], hex("02 00 00 01 00 00 00 00 01"), "RESET first");
    assert_eq!(heard[1], hex("01 10 00 05 00 00 00 01 81 09 04 00 FF"));
    assert_eq!(heard[2], hex("01 00 00 06 00 00 00 02 81 01 04 00 02 FF"));
    assert!(
        heard.contains(&hex("01 00 00 07 00 00 00 04 81 01 04 3F 02 02 FF")),
        "{heard:02x?}"
    );
}

#[tokio::test]
async fn a_camera_error_over_ip_is_named() {
    let (addr, _) = camera(true).await;
    let mut d = driver(&addr);
    let e = tokio::time::timeout(Duration::from_secs(20), d.apply(&set(json!({"preset": 5}))))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        e.to_string().contains("not executable now (code 41)"),
        "{e}"
    );
}

#[tokio::test]
async fn a_camera_that_is_not_there_is_reported() {
    // A port nobody listens on: the ICMP refusal or the timeout, with the address.
    let free = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let mut d = driver(&addr);
    let e = tokio::time::timeout(Duration::from_secs(30), d.poll())
        .await
        .unwrap()
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("refused") || text.contains("no reply") || text.contains(&addr),
        "{text}"
    );
}
