//! The ESC/VP21 driver against the simulator over a real pseudo-terminal
//! (opened by path, as a USB serial adapter would be) and over ESC/VP.net.

use std::path::PathBuf;
use std::time::Duration;

use patchbay_drivers::escvp21::{Escvp21, Escvp21Options};
use patchbay_drivers::sim::escvp21::{serve_net, PtyDevice};
use patchbay_drivers::sim::{ProjectorConfig, Sim};
use patchbay_drivers::{DriverError, State, Transport};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

fn quick() -> ProjectorConfig {
    ProjectorConfig {
        warmup: Duration::from_millis(600),
        cooldown: Duration::from_millis(300),
        ..ProjectorConfig::default()
    }
}

fn opts() -> Escvp21Options {
    Escvp21Options {
        command_timeout: Duration::from_millis(500),
        power_timeout: Duration::from_secs(5),
        transition_poll: Duration::from_millis(50),
        ..Escvp21Options::default()
    }
}

fn link(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("patchbay-test-{name}-{}", std::process::id()))
}

fn desired(v: serde_json::Value) -> State {
    v.as_object().unwrap().clone()
}

#[tokio::test]
async fn drives_the_projector_over_a_serial_port() {
    let sim = Sim::new(quick());
    let path = link("escvp21-serial");
    let _dev = PtyDevice::start(sim.clone(), &path).unwrap();
    let mut d = Escvp21::new(Transport::serial(path.to_str().unwrap()), opts());
    let desc = d.describe().await.unwrap();
    assert_eq!(desc.driver, "escvp21");
    let s = d.poll().await.unwrap();
    assert_eq!(
        (
            s["power"].as_str(),
            s["lamp_hours"].as_u64(),
            s["error"].as_str()
        ),
        (Some("off"), Some(1234), Some("00"))
    );
    assert_eq!(s["input"], json!(null));
    // PWR ON: the projector stays silent for a while, then warms up; apply returns once it is on.
    let s = tokio::time::timeout(
        WAIT,
        d.apply(&desired(json!({"power":"on","input":"hdmi2","mute":true}))),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        (
            s["power"].as_str(),
            s["input"].as_str(),
            s["mute"].as_bool()
        ),
        (Some("on"), Some("hdmi2"), Some(true))
    );
    sim.set_faults(|f| f.lamp_error = true);
    let s = d.poll().await.unwrap();
    assert_eq!(s["error"], "06");
    let events = d.take_events();
    assert_eq!(events[0].message, "lamp error (ERR=06)");
}

#[tokio::test]
async fn unplugged_port_is_reported_and_recovers_when_plugged_back() {
    let sim = Sim::new(quick());
    let path = link("escvp21-unplug");
    let mut dev = PtyDevice::start(sim.clone(), &path).unwrap();
    let mut d = Escvp21::new(Transport::serial(path.to_str().unwrap()), opts());
    assert_eq!(d.poll().await.unwrap()["power"], "off");

    dev.unplug();
    let e = d.poll().await.unwrap_err();
    assert!(matches!(e, DriverError::SerialGone { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("serial port {} gone", path.display())),
        "{text}"
    );
    assert_eq!(e.code().as_str(), "offline");
    // Still unplugged: opening fails the same clear way.
    let e = d.poll().await.unwrap_err();
    assert!(matches!(e, DriverError::SerialGone { .. }), "{e:?}");

    dev.plug().unwrap();
    assert_eq!(d.poll().await.unwrap()["power"], "off");
}

#[tokio::test]
async fn silent_projector_times_out() {
    let sim = Sim::new(quick());
    let path = link("escvp21-silent");
    let _dev = PtyDevice::start(sim.clone(), &path).unwrap();
    let mut d = Escvp21::new(Transport::serial(path.to_str().unwrap()), opts());
    d.poll().await.unwrap();
    sim.set_faults(|f| f.silent = true);
    let e = d.poll().await.unwrap_err();
    assert_eq!(e.to_string(), "no reply to `PWR?` within 500 ms");
    sim.set_faults(|f| f.silent = false);
    assert_eq!(d.poll().await.unwrap()["power"], "off");
}

#[tokio::test]
async fn refused_command_is_a_clear_error() {
    let sim = Sim::new(quick());
    let path = link("escvp21-refused");
    let _dev = PtyDevice::start(sim.clone(), &path).unwrap();
    let mut d = Escvp21::new(Transport::serial(path.to_str().unwrap()), opts());
    let e = d
        .apply(&desired(json!({"input":"hdmi1"})))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("standby"), "{e}");
    let e = d
        .command("FOO?", Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("FOO? answered ERR"), "{e}");
    assert!(!e.summary().contains("FOO"), "{}", e.summary());
}

#[tokio::test]
async fn escvp_net_over_tcp() {
    let sim = Sim::new(quick());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(serve_net(listener, sim.clone()));
    let mut d = Escvp21::new(Transport::tcp(&addr), opts());
    let s = tokio::time::timeout(WAIT, d.apply(&desired(json!({"power":"on"}))))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s["power"], "on");
    assert_eq!(s["input"], "hdmi1");
}
