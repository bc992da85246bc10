//! The MQTT bridge against a real mosquitto (Debian's `mosquitto` package,
//! started here) and the demo's simulated devices, watched and driven with
//! mosquitto's own command-line clients: the exact topics and discovery
//! payloads, commands from MQTT reaching a device, errors with their
//! correlation ids, Home Assistant's restart, and the broker's.

use std::process::Stdio;
use std::time::Duration;

use patchbay_tests::{hub_with_config, temp_file, Proc, WAIT};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// A free loopback port (mosquitto cannot be told to choose one).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A mosquitto on `port` without persistence: a restart forgets every retained message.
async fn broker(port: u16) -> Child {
    let conf = temp_file(
        &format!("mosquitto-{port}.conf"),
        &format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    );
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto is installed (.ci/run installs it)");
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "mosquitto never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

/// One message as `mosquitto_sub` saw it.
#[derive(Debug)]
struct Seen {
    retained: bool,
    topic: String,
    payload: String,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_str(&self.payload).unwrap_or(Value::Null)
    }
}

/// `mosquitto_sub` on `topics`, its messages on a channel.
struct Watch {
    _child: Child,
    rx: mpsc::UnboundedReceiver<Seen>,
    /// The latest message of each topic seen so far.
    latest: std::collections::HashMap<String, Seen>,
}

impl Watch {
    /// Returns once the subscription is in place: a retained probe
    /// published on a topic of its own has come back.
    async fn new(port: u16, topics: &[&str]) -> Watch {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let probe = format!("probe/{}-{n}", std::process::id());
        let mut cmd = Command::new("mosquitto_sub");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-F",
            "%r\t%t\t%p",
        ]);
        for t in topics.iter().copied().chain([probe.as_str()]) {
            cmd.args(["-t", t]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto_sub is installed (.ci/run installs mosquitto-clients)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut parts = line.splitn(3, '\t');
                let (Some(r), Some(t)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let _ = tx.send(Seen {
                    retained: r == "1",
                    topic: t.to_owned(),
                    payload: parts.next().unwrap_or_default().to_owned(),
                });
            }
        });
        mqtt_pub_retained(port, &probe, "ready").await;
        let mut w = Watch {
            _child: child,
            rx,
            latest: Default::default(),
        };
        w.until("the subscription in place", |m| m.topic == probe)
            .await;
        w
    }

    /// The latest message on `topic`, waiting for one if none came yet.
    async fn topic(&mut self, topic: &str) -> &Seen {
        self.topic_where(topic, |_| true).await
    }

    /// The latest message on `topic` once `ok` accepts it.
    async fn topic_where(&mut self, topic: &str, ok: impl Fn(&Seen) -> bool) -> &Seen {
        if !self.latest.get(topic).is_some_and(&ok) {
            self.until(topic, |m| m.topic == topic && ok(m)).await;
        }
        &self.latest[topic]
    }

    /// The first message from now on that `ok` accepts.
    async fn until(&mut self, what: &str, ok: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) => {
                    let hit = ok(&m);
                    let topic = m.topic.clone();
                    self.latest.insert(
                        topic.clone(),
                        Seen {
                            retained: m.retained,
                            topic: topic.clone(),
                            payload: m.payload.clone(),
                        },
                    );
                    if hit {
                        return m;
                    }
                }
                Ok(None) => panic!("mosquitto_sub ended while waiting for {what}"),
                Err(_) => panic!("no {what} within {WAIT:?}"),
            }
        }
    }
}

async fn mqtt_pub(port: u16, topic: &str, payload: &str) {
    mqtt_pub_with(port, topic, payload, false).await;
}

async fn mqtt_pub_retained(port: u16, topic: &str, payload: &str) {
    mqtt_pub_with(port, topic, payload, true).await;
}

async fn mqtt_pub_with(port: u16, topic: &str, payload: &str, retain: bool) {
    let port = port.to_string();
    let mut args = vec!["-h", "127.0.0.1", "-p", &port, "-t", topic, "-m", payload];
    if retain {
        args.push("-r");
    }
    let ok = Command::new("mosquitto_pub")
        .args(&args)
        .status()
        .await
        .unwrap()
        .success();
    assert!(ok, "mosquitto_pub {topic}");
}

/// The demo bridged to the broker on `port`, and its console URL.
async fn demo(port: u16) -> (Proc, String) {
    let url = format!("mqtt://127.0.0.1:{port}");
    let mut demo = Proc::start(
        "patchbay-agent",
        &[
            "demo",
            "--hub-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--mqtt",
            &url,
        ],
    )
    .await;
    let console = demo.next_line_last_word().await;
    (demo, console)
}

#[tokio::test]
async fn devices_appear_in_home_assistant_and_take_commands_over_mqtt() {
    let port = free_port();
    let _broker = broker(port).await;
    let mut all = Watch::new(port, &["patchbay/#", "homeassistant/#"]).await;
    // A retained command waiting on the broker is not carried out when the
    // bridge subscribes: it would run again at every reconnection.
    mqtt_pub_retained(port, "patchbay/proj-1/set/power", "on").await;
    let (_demo, console) = demo(port).await;
    let err = all
        .topic_where("patchbay/proj-1/error", |m| m.payload.contains("retain"))
        .await
        .json();
    assert_eq!(err["code"], "bad_request", "{err}");
    mqtt_pub_with(port, "patchbay/proj-1/set/power", "", true).await;

    assert_eq!(all.topic("patchbay/bridge/state").await.payload, "online");
    let power = all
        .topic("homeassistant/switch/patchbay_proj-1/power/config")
        .await
        .json();
    assert_eq!(
        power,
        json!({
            "name": "Power",
            "unique_id": "patchbay_proj-1.power",
            "default_entity_id": "switch.patchbay_proj_1_power",
            "state_topic": "patchbay/proj-1/state",
            "command_topic": "patchbay/proj-1/set/power",
            "payload_on": "on",
            "payload_off": "off",
            "state_on": "on",
            "state_off": "off",
            "value_template": "{{ 'on' if value_json[\"power\"] in ['on', 'warming'] else 'off' }}",
            "availability": [{"topic": "patchbay/bridge/state"}, {"topic": "patchbay/proj-1/online"}],
            "availability_mode": "all",
            "device": {
                "identifiers": ["patchbay_proj-1"],
                "name": "Auditorium projector",
                "manufacturer": "patchbay",
                "model": "SIM-1000",
                "suggested_area": "Auditorium"
            },
            "origin": {"name": "patchbay", "sw_version": env!("CARGO_PKG_VERSION")}
        })
    );
    let state = all
        .topic("homeassistant/sensor/patchbay_proj-1/power_state/config")
        .await
        .json();
    assert_eq!(state["device_class"], "enum");
    assert_eq!(state["options"], json!(["on", "off", "warming", "cooling"]));
    let lamp = all
        .topic("homeassistant/sensor/patchbay_proj-1/lamp_hours/config")
        .await
        .json();
    assert_eq!(lamp["unit_of_measurement"], "h");
    assert_eq!(lamp["state_class"], "total_increasing");
    let input = all
        .topic("homeassistant/select/patchbay_proj-1/input/config")
        .await
        .json();
    assert_eq!(input["command_topic"], "patchbay/proj-1/set/input");
    assert!(
        input["options"]
            .as_array()
            .unwrap()
            .contains(&json!("hdmi2")),
        "{input}"
    );
    let fan = all
        .topic("homeassistant/binary_sensor/patchbay_proj-1/errors_fan/config")
        .await
        .json();
    assert_eq!(fan["device_class"], "problem");
    assert_eq!(fan["unique_id"], "patchbay_proj-1.errors_fan");

    // A late subscriber gets the retained device topics.
    let mut late = Watch::new(port, &["patchbay/proj-1/+"]).await;
    let online = late.topic("patchbay/proj-1/online").await;
    assert!(online.retained);
    assert_eq!(online.payload, "online");
    let st = late.topic("patchbay/proj-1/state").await;
    assert!(st.retained);
    assert_eq!(st.json()["power"], "off");

    // A plain value on set/<setting> reaches the simulated projector.
    mqtt_pub(port, "patchbay/proj-1/set/power", "ON").await;
    late.until("proj-1 warming up", |m| {
        m.topic == "patchbay/proj-1/state" && m.json()["power"] != "off"
    })
    .await;
    // Errors come back on the error topic with the command's correlation id.
    mqtt_pub(port, "patchbay/proj-1/set/input", "vga9").await;
    let err = late
        .until("the invalid value's error", |m| {
            m.topic == "patchbay/proj-1/error"
        })
        .await
        .json();
    assert_eq!(err["code"], "invalid_value", "{err}");
    assert!(err["message"].as_str().unwrap().contains("vga9"), "{err}");
    let cid = err["cid"].as_str().unwrap().to_owned();
    assert!(cid.starts_with("mqtt-"), "{err}");
    // The refusal is in the journal like any command's, sent by `mqtt`.
    let entry: Value = reqwest::get(format!("{console}api/commands/{cid}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(entry["status"], "failed", "{entry}");
    assert_eq!(entry["who"]["client"], "mqtt", "{entry}");
    assert_eq!(entry["who"]["transport"], "mqtt", "{entry}");
    mqtt_pub(port, "patchbay/proj-1/set", "not json").await;
    let err = late
        .until("the bad payload's error", |m| {
            m.topic == "patchbay/proj-1/error"
        })
        .await
        .json();
    assert_eq!(err["code"], "bad_request", "{err}");
    let mut nine = Watch::new(port, &["patchbay/proj-9/error"]).await;
    mqtt_pub(port, "patchbay/proj-9/set", "{\"power\":\"on\"}").await;
    let err = nine
        .until("the unknown device's error", |_| true)
        .await
        .json();
    assert_eq!(err["code"], "no_responder", "{err}");
    // A JSON object on set reaches the device too: the display's input.
    mqtt_pub(port, "patchbay/display-1/set", "{\"power\": \"on\"}").await;
    let mut display = Watch::new(port, &["patchbay/display-1/state"]).await;
    display
        .topic_where("patchbay/display-1/state", |m| m.json()["power"] == "on")
        .await;

    // Home Assistant restarting gets the discovery configs again: after the
    // retained copy, a live one.
    let power = "homeassistant/switch/patchbay_proj-1/power/config";
    let mut ha = Watch::new(port, &[power]).await;
    assert!(ha.topic(power).await.retained);
    mqtt_pub(port, "homeassistant/status", "online").await;
    let again = ha.until("the configs published again", |_| true).await;
    assert_eq!(again.topic, power);
    assert!(!again.retained, "a live message, sent again");
    drop(all);
}

#[tokio::test]
async fn the_bridge_recovers_after_the_broker_restarts() {
    let port = free_port();
    let mut broker_proc = broker(port).await;
    let (_demo, console) = demo(port).await;
    let mut w = Watch::new(port, &["patchbay/bridge/state"]).await;
    w.topic_where("patchbay/bridge/state", |m| m.payload == "online")
        .await;
    drop(w);
    let health = |want: &'static str| {
        let url = format!("{console}healthz");
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let h: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
                if h["status"] == want {
                    return h;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "/healthz never said {want}: {h}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let h = health("ok").await;
    assert_eq!(h["mqtt"]["connected"], true, "{h}");
    assert_eq!(h["mqtt"]["broker"], format!("127.0.0.1:{port}"), "{h}");

    // Without persistence the new broker knows nothing: the bridge
    // reconnects and publishes everything retained again. While it is
    // away, /healthz says the hub is degraded and why.
    broker_proc.kill().await.unwrap();
    let h = health("degraded").await;
    assert_eq!(h["mqtt"]["connected"], false, "{h}");
    assert!(
        h["mqtt"]["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{h}"
    );
    let _broker = broker(port).await;
    let mut w = Watch::new(
        port,
        &[
            "patchbay/bridge/state",
            "patchbay/proj-1/state",
            "homeassistant/switch/patchbay_proj-1/power/config",
        ],
    )
    .await;
    for topic in [
        "patchbay/bridge/state",
        "patchbay/proj-1/state",
        "homeassistant/switch/patchbay_proj-1/power/config",
    ] {
        w.topic_where(topic, |m| !m.payload.is_empty()).await;
    }
    assert_eq!(health("ok").await["mqtt"]["connected"], true);
}

#[tokio::test]
async fn odd_ids_are_escaped_and_a_device_that_goes_away_leaves_the_broker() {
    let port = free_port();
    let _broker = broker(port).await;
    // Left on the broker from before: a config of a device that is gone,
    // and someone else's.
    let stale = "homeassistant/switch/patchbay_gone-1/power/config";
    let foreign = "homeassistant/switch/zigbee_lamp/power/config";
    mqtt_pub_retained(port, stale, "{\"name\":\"Power\"}").await;
    mqtt_pub_retained(port, foreign, "{\"name\":\"Lamp\"}").await;
    // Watching before the hub starts: the clearing may come at once.
    let mut w = Watch::new(port, &["patchbay/#", "homeassistant/#"]).await;
    let config = temp_file(
        &format!("mqtt-hub-{port}.toml"),
        &format!("[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"patchbay-{port}\"\n"),
    );
    let hub = hub_with_config(&config).await;
    // The bridge clears the config of the device that is gone, only that one.
    w.topic_where(stale, |m| m.payload.is_empty()).await;
    assert!(!w.topic(foreign).await.payload.is_empty());
    let agent = patchbay_client::ClientBuilder::new(hub.addr())
        .name("rack")
        .connect()
        .await
        .unwrap();
    let id = "Hall 2_x41 proj";
    agent.claim(&format!("dev/{id}")).await.unwrap();
    let retain = patchbay_client::PublishOptions {
        retain: true,
        cid: None,
    };
    let settings = json!([{"name": "power", "label": "Power", "type": "enum", "values": ["on", "off"], "writable": true}]);
    for (part, body) in [
        (
            "meta",
            json!({"id": id, "name": "Hall projector", "settings": settings}),
        ),
        ("state", json!({"power": "off"})),
        ("online", json!({"online": true})),
    ] {
        agent
            .publish_acked(
                &format!("dev/{id}/{part}"),
                &patchbay_client::Body::from(body),
                retain.clone(),
            )
            .await
            .unwrap();
    }
    // Space is not allowed in discovery ids, and `_x41` would read as an
    // escape: both are escaped, reversibly.
    let config_topic = "homeassistant/switch/patchbay_Hall_x202_x5fx41_x20proj/power/config";
    let c = w.topic(config_topic).await.json();
    assert_eq!(c["unique_id"], "patchbay_Hall_x202_x5fx41_x20proj.power");
    assert_eq!(c["command_topic"], format!("patchbay/{id}/set/power"));
    assert_eq!(c["device"]["name"], "Hall projector");
    w.topic_where(&format!("patchbay/{id}/online"), |m| m.payload == "online")
        .await;

    // The device is removed: its configs and retained topics are cleared.
    agent
        .publish_acked(
            &format!("dev/{id}/meta"),
            &patchbay_client::Body::from(Value::Null),
            retain,
        )
        .await
        .unwrap();
    w.until("the config removed", |m| {
        m.topic == config_topic && m.payload.is_empty()
    })
    .await;
    w.until("the state cleared", |m| {
        m.topic == format!("patchbay/{id}/state") && m.payload.is_empty()
    })
    .await;
    let mut late = Watch::new(port, &["homeassistant/#", "patchbay/Hall 2_x41 proj/#"]).await;
    let seen = tokio::time::timeout(Duration::from_millis(500), late.rx.recv()).await;
    assert!(
        seen.is_err(),
        "nothing retained about the device is left: {seen:?}"
    );

    // Killed outright, the hub leaves its last will: the bridge is offline.
    hub.kill().await;
    w.until("the bridge's last will", |m| {
        m.topic == "patchbay/bridge/state" && m.payload == "offline"
    })
    .await;
}

#[tokio::test]
async fn sighup_reloads_the_config_and_turns_the_bridge_on() {
    let port = free_port();
    let _broker = broker(port).await;
    let config = temp_file(
        &format!("reload-hub-{port}.toml"),
        "max_connections = 100\n",
    );
    let mut hub = hub_with_config(&config).await;
    let http = hub.next_line_last_word().await;
    let pid = hub.child.id().unwrap().to_string();
    let hup = || async {
        let ok = Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .await
            .unwrap()
            .success();
        assert!(ok, "kill -HUP");
    };
    let mut w = Watch::new(port, &["patchbay/bridge/state"]).await;

    // A broken file: the hub carries on with what it had.
    std::fs::write(&config, "max_connections = \"many\"\n").unwrap();
    hup().await;
    let audit = |kind: &'static str| {
        let url = format!("{http}api/audit?kind={kind}");
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let v: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
                if let Some(row) = v["items"].get(0) {
                    return row.clone();
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no {kind} in the audit trail"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let failed = audit("config_reload_failed").await;
    assert!(
        failed["detail"]
            .as_str()
            .unwrap()
            .contains("max_connections"),
        "{failed}"
    );
    assert_eq!(failed["who"]["client"], "SIGHUP");

    // The bridge turned on by a reload.
    std::fs::write(
        &config,
        format!("[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"reload-{port}\"\n"),
    )
    .unwrap();
    hup().await;
    w.until("the bridge online after the reload", |m| {
        m.payload == "online"
    })
    .await;
    let done = audit("config_reloaded").await;
    assert!(done["detail"].as_str().unwrap().contains("mqtt"), "{done}");

    // A device, and its discovery configs.
    let agent = patchbay_client::ClientBuilder::new(hub.addr())
        .name("reload-agent")
        .connect()
        .await
        .unwrap();
    agent.claim("dev/rl-1").await.unwrap();
    let retain = patchbay_client::PublishOptions {
        retain: true,
        cid: None,
    };
    for (tag, body) in [
        (
            "dev/rl-1/meta",
            json!({"id": "rl-1", "name": "Lamp", "settings": [
            {"name": "power", "label": "Power", "type": "enum", "values": ["on", "off"], "writable": true}]}),
        ),
        ("dev/rl-1/online", json!({"online": true})),
        ("dev/rl-1/state", json!({"power": "off"})),
    ] {
        agent
            .publish_acked(
                tag,
                &patchbay_client::Body::json(&body).unwrap(),
                retain.clone(),
            )
            .await
            .unwrap();
    }
    let old_config = "homeassistant/switch/patchbay_rl-1/power/config";
    let new_config = "ha2/switch/patchbay_rl-1/power/config";
    let mut w = Watch::new(port, &["homeassistant/#", "ha2/#", "patchbay/#"]).await;
    w.topic_where(old_config, |m| !m.payload.is_empty()).await;

    // A new discovery prefix: the configs move, the old ones are removed.
    std::fs::write(
        &config,
        format!("[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"reload-{port}\"\ndiscovery_prefix = \"ha2\"\n"),
    )
    .unwrap();
    hup().await;
    w.topic_where(old_config, |m| m.payload.is_empty()).await;
    w.topic_where(new_config, |m| !m.payload.is_empty()).await;
    assert!(!w.latest["patchbay/rl-1/state"].payload.is_empty());

    // The bridge removed: what it published leaves the broker with it.
    std::fs::write(&config, "max_connections = 100\n").unwrap();
    hup().await;
    for topic in [
        new_config,
        "patchbay/rl-1/state",
        "patchbay/rl-1/online",
        "patchbay/bridge/state",
    ] {
        w.topic_where(topic, |m| m.payload.is_empty()).await;
    }
    // Nothing of it is retained any more: a new subscriber gets none of it.
    let mut fresh = Watch::new(port, &["ha2/#", "patchbay/#"]).await;
    assert!(
        fresh.latest.keys().all(|t| t.starts_with("probe/")),
        "left retained: {:?}",
        fresh.latest.keys().collect::<Vec<_>>()
    );
    let _ = &mut fresh;
}

#[tokio::test]
async fn the_bridge_reaches_a_broker_over_tls_with_a_client_certificate() {
    use patchbay_client::{Body, ClientBuilder, PublishOptions};
    use patchbay_tests::pki::Ca;

    let dir = patchbay_tests::temp_dir("mqtt-tls");
    let ca = Ca::new(&dir, "broker");
    let broker_leaf = ca.leaf(&dir, "broker", &["localhost"]);
    let client_leaf = ca.leaf(&dir, "hub-client", &["patchbay-hub"]);
    // One broker, two listeners: TLS with client certificates for the
    // bridge, plain on loopback for the test's own mosquitto_sub/pub.
    let (plain, tls) = (free_port(), free_port());
    let conf = temp_file(
        &format!("mosquitto-tls-{tls}.conf"),
        &format!(
            "per_listener_settings false\nallow_anonymous true\npersistence false\n\
             listener {plain} 127.0.0.1\n\
             listener {tls} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            ca.cert.display(),
            broker_leaf.cert.display(),
            broker_leaf.key.display()
        ),
    );
    let _broker = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto is installed");
    for port in [plain, tls] {
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto never listened"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut w = Watch::new(plain, &["patchbay/bridge/state", "patchbay/tls-1/state"]).await;

    let hub = patchbay_hub::server::start(patchbay_hub::config::HubConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        mqtt: Some(patchbay_hub::mqtt::MqttConfig {
            url: format!("mqtts://localhost:{tls}"),
            ca: Some(ca.cert.clone()),
            client_cert: Some(client_leaf.cert.clone()),
            client_key: Some(client_leaf.key.clone()),
            client_id: format!("patchbay-tls-{tls}"),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    // A device, published the way an agent does.
    let agent = ClientBuilder::new(hub.addr.to_string())
        .name("tls-agent")
        .connect()
        .await
        .unwrap();
    agent.claim("dev/tls-1").await.unwrap();
    let retain = PublishOptions {
        retain: true,
        cid: None,
    };
    let meta = json!({"id": "tls-1", "name": "TLS lamp", "settings": [
        {"name": "power", "label": "Power", "type": "enum", "values": ["on", "off"], "writable": true}]});
    for (tag, body) in [
        ("dev/tls-1/meta", meta),
        ("dev/tls-1/online", json!({"online": true})),
        ("dev/tls-1/state", json!({"power": "off"})),
    ] {
        agent
            .publish_acked(tag, &Body::json(&body).unwrap(), retain.clone())
            .await
            .unwrap();
    }
    w.topic_where("patchbay/bridge/state", |m| m.payload == "online")
        .await;
    let state = w.topic("patchbay/tls-1/state").await;
    assert_eq!(state.json()["power"], "off");

    // A command from MQTT crosses the TLS link and reaches the device.
    let requests = agent.requests();
    mqtt_pub(plain, "patchbay/tls-1/set/power", "on").await;
    let req = tokio::time::timeout(WAIT, requests.next())
        .await
        .expect("the command never arrived")
        .unwrap();
    assert_eq!(req.tag(), "dev/tls-1/set");
    assert_eq!(req.json::<Value>().unwrap(), json!({"power": "on"}));
    req.respond(&Body::json(&json!({"power": "on"})).unwrap())
        .await
        .unwrap();
    hub.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_mqtts_section_with_unreadable_files_is_refused_naming_them() {
    let cfg = patchbay_hub::mqtt::MqttConfig {
        url: "mqtts://broker.example".into(),
        ca: Some("/nonexistent/broker-ca.pem".into()),
        ..Default::default()
    };
    let err = cfg.check().unwrap_err();
    assert!(err.contains("/nonexistent/broker-ca.pem"), "{err}");
    let cfg = patchbay_hub::mqtt::MqttConfig {
        url: "mqtt://broker.example".into(),
        ca: Some("/etc/ssl/ca.pem".into()),
        ..Default::default()
    };
    assert!(cfg.check().unwrap_err().contains("mqtts://"));
}
