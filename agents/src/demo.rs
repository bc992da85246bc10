//! `patchbay-agent demo`: a hub, simulated devices and an agent driving them,
//! in one process, so a new user sees everything work with one command.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use patchbay_client::device::DeviceErrorCode;
use patchbay_client::{ClientBuilder, Requests};
use patchbay_drivers::line::LineProfile;
use patchbay_drivers::sim::escvp21::PtyDevice;
use patchbay_drivers::sim::{lg_display, pjlink, ProjectorConfig, Sim};
use patchbay_drivers::{SerialSettings, Transport};
use patchbay_hub::config::HubConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{AgentConfig, DeviceConfig, DriverKind};

/// The LG display profile shipped in `profiles/`, built in so the demo needs no files.
const LG_PROFILE: &str = include_str!("../../profiles/lg-display.toml");

/// Where the demo listens.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Hub wire-protocol address.
    pub hub_listen: SocketAddr,
    /// Hub HTTP address (API and console).
    pub http_listen: SocketAddr,
    /// Listen beyond loopback although the demo hub has no tokens.
    pub insecure: bool,
    /// Bridge the devices to this MQTT broker (`mqtt://host:port`), with
    /// Home Assistant discovery.
    pub mqtt: Option<String>,
}

async fn local_listener() -> anyhow::Result<(TcpListener, String)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?.to_string();
    Ok((l, addr))
}

fn projector(name: &str, model: &str, password: Option<&str>, class: u8) -> Sim {
    Sim::new(ProjectorConfig {
        name: name.into(),
        model: model.into(),
        password: password.map(str::to_owned),
        class,
        warmup: Duration::from_secs(4),
        cooldown: Duration::from_secs(3),
        ..ProjectorConfig::default()
    })
}

fn device(
    id: &str,
    name: &str,
    location: &str,
    driver: DriverKind,
    transport: Transport,
) -> DeviceConfig {
    DeviceConfig {
        id: id.into(),
        name: name.into(),
        location: location.into(),
        driver,
        transport,
        poll: Duration::from_secs(2),
        password: None,
        user: None,
        sources: None,
        profile: None,
        vars: Default::default(),
    }
}

/// The demo's simulators, controllable through the hub.
struct SimControls {
    sims: HashMap<String, Sim>,
    /// The device behind a pseudo-terminal, which can also be unplugged.
    pty: (String, Arc<Mutex<PtyDevice>>),
}

impl SimControls {
    fn apply(&self, id: &str, command: &str) -> Result<String, String> {
        let sim = self
            .sims
            .get(id)
            .ok_or_else(|| format!("no simulator `{id}`"))?;
        let (pty_id, pty) = &self.pty;
        let mut pty = pty.lock().unwrap_or_else(|e| e.into_inner());
        let answer = match command.trim() {
            "unplug" if id == pty_id => {
                pty.unplug();
                "ok".to_owned()
            }
            "plug" if id == pty_id => pty
                .plug()
                .map(|()| "ok".to_owned())
                .map_err(|e| e.to_string())?,
            other => sim.control(other),
        };
        match answer.strip_prefix("error: ") {
            Some(e) => Err(e.to_owned()),
            None => Ok(answer),
        }
    }
}

/// Answers `sim/<id>/control` requests (body: a command string) for fault injection.
async fn serve_controls(requests: Requests, controls: SimControls) {
    while let Some(r) = requests.next().await {
        let id = r
            .tag()
            .strip_prefix("sim/")
            .and_then(|t| t.strip_suffix("/control"))
            .unwrap_or("")
            .to_owned();
        let command: String = r.json().unwrap_or_default();
        let _ = match controls.apply(&id, &command) {
            Ok(answer) => {
                r.respond_json(&serde_json::json!({ "answer": answer }))
                    .await
            }
            Err(e) => r.respond_error(DeviceErrorCode::InvalidValue, e).await,
        };
    }
}

/// The demo's scenes, as they would be written in a hub config.
const DEMO_SCENES: &str = r#"
[presentation]
label = "Auditorium presentation"
[[presentation.steps]]
device = "proj-1"
set = { power = "on" }
[[presentation.steps]]
device = "proj-1"
wait = { power = "on" }
timeout_ms = 60000
[[presentation.steps]]
device = "proj-1"
set = { input = "hdmi2", mute = false }

[classroom]
label = "Classroom 2 lesson"
[[classroom.steps]]
device = "proj-3"
set = { power = "on" }
[[classroom.steps]]
device = "proj-3"
set = { input = "hdmi1" }

[all-off]
label = "Everything off"
on_error = "continue"
[[all-off.steps]]
group = "all"
set = { power = "off" }
"#;

/// The demo's alert rules (`lamp-error on` through a simulator's control raises one).
const DEMO_ALERTS: &str = r#"
[lamp-hours]
label = "Lamp due for replacement"
field = "lamp_hours"
above = 2000
[device-errors]
label = "Projector reports an error"
errors = ["fan", "lamp", "temperature", "cover", "filter", "other"]
[offline]
label = "Device offline"
offline_minutes = 2
"#;

/// The demo's groups: its projectors, and everything.
fn demo_groups() -> std::collections::BTreeMap<String, patchbay_hub::automation::groups::GroupSpec>
{
    use patchbay_hub::automation::groups::GroupSpec;
    let projectors = GroupSpec {
        ids: ["proj-1", "proj-2", "proj-3"].map(String::from).to_vec(),
        ..GroupSpec::default()
    };
    let all = GroupSpec {
        pattern: Some("dev/+".into()),
        ..GroupSpec::default()
    };
    [
        ("projectors".to_owned(), projectors),
        ("all".to_owned(), all),
    ]
    .into()
}

/// Removes a folder when dropped.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the demo until `shutdown` turns true.
pub async fn run(opts: DemoOptions, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    // The demo's journal lives in a temporary folder, removed at exit.
    let data = std::env::temp_dir().join(format!("patchbay-demo-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(data.clone());
    let config = HubConfig {
        listen: opts.hub_listen,
        http_listen: opts.http_listen,
        data_dir: Some(data),
        groups: demo_groups(),
        scenes: toml::from_str(DEMO_SCENES)?,
        alerts: toml::from_str(DEMO_ALERTS)?,
        schedules: toml::from_str(
            "[night]\nlabel = \"All off at night\"\ncron = \"0 23 * * *\"\ntimezone = \"UTC\"\nscene = \"all-off\"\n",
        )?,
        mqtt: opts.mqtt.map(|url| patchbay_hub::mqtt::MqttConfig {
            url,
            ..Default::default()
        }),
        ..HubConfig::default()
    };
    config.check().map_err(anyhow::Error::msg)?;
    config
        .check_exposure(opts.insecure)
        .map_err(anyhow::Error::msg)?;
    let hub = patchbay_hub::server::start(config).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot start the hub on {} and {}: {e}",
            opts.hub_listen,
            opts.http_listen
        )
    })?;

    let (l1, a1) = local_listener().await?;
    let sim1 = projector("Auditorium", "SIM-1000", None, 2);
    tokio::spawn(pjlink::serve(l1, sim1.clone()));
    let (l2, a2) = local_listener().await?;
    let sim2 = projector("Boardroom", "SIM-500", Some("demo-pass"), 1);
    tokio::spawn(pjlink::serve(l2, sim2.clone()));
    let pty_path =
        std::env::temp_dir().join(format!("patchbay-demo-escvp21-{}", std::process::id()));
    let sim3 = projector("Classroom", "EB-SIM", None, 1);
    let pty = Arc::new(Mutex::new(PtyDevice::start(sim3.clone(), &pty_path)?));
    let controls = SimControls {
        sims: HashMap::from([
            ("proj-1".to_owned(), sim1),
            ("proj-2".to_owned(), sim2),
            ("proj-3".to_owned(), sim3),
        ]),
        pty: ("proj-3".to_owned(), pty),
    };
    let control_client = ClientBuilder::new(hub.addr.to_string())
        .name("demo-simulators")
        .connect()
        .await?;
    control_client.claim("sim").await?;
    tokio::spawn(serve_controls(control_client.requests(), controls));
    let (l4, a4) = local_listener().await?;
    tokio::spawn(lg_display::serve(l4));
    // A display and a switcher from the profile library, simulated from their profiles.
    let mut library_devices = Vec::new();
    for (id, name, profile) in [
        ("wall-1", "Control room video wall", "samsung-mdc"),
        ("matrix-1", "Control room matrix", "kramer-p3000"),
    ] {
        let profile = patchbay_drivers::library::get(profile)
            .ok_or_else(|| anyhow::anyhow!("the library has no {profile}"))??;
        let sim = Arc::new(patchbay_drivers::line::sim::Simulator::new(
            &profile,
            &Default::default(),
        )?);
        let (l, a) = local_listener().await?;
        tokio::spawn(patchbay_drivers::line::sim::serve(l, sim));
        let mut d = device(
            id,
            name,
            "Control Room",
            DriverKind::Line,
            Transport::tcp(&a),
        );
        d.profile = Some(profile);
        library_devices.push((d, a));
    }

    let lg: LineProfile = toml::from_str(LG_PROFILE)?;
    let mut proj2 = device(
        "proj-2",
        "Boardroom projector",
        "Boardroom",
        DriverKind::Pjlink,
        Transport::tcp(&a2),
    );
    proj2.password = Some("demo-pass".into());
    let mut display = device(
        "display-1",
        "Lobby display",
        "Lobby",
        DriverKind::Line,
        Transport::tcp(&a4),
    );
    display.profile = Some(lg);
    let devices = vec![
        device(
            "proj-1",
            "Auditorium projector",
            "Auditorium",
            DriverKind::Pjlink,
            Transport::tcp(&a1),
        ),
        proj2,
        device(
            "proj-3",
            "Classroom projector",
            "Classroom 2",
            DriverKind::Escvp21,
            Transport::Serial {
                path: pty_path.display().to_string(),
                settings: SerialSettings::default(),
            },
        ),
        display,
    ];
    let library_line = library_devices
        .iter()
        .map(|(d, a)| format!("{} at {a}", d.id))
        .collect::<Vec<_>>()
        .join(", ");
    let devices: Vec<DeviceConfig> = devices
        .into_iter()
        .chain(library_devices.into_iter().map(|(d, _)| d))
        .collect();
    let cli = "cargo run -q --release -p patchbay-hub --bin patchbay --";
    println!("patchbay demo is running");
    println!("  console              http://{}/", hub.http_addr);
    println!("  hub (wire protocol)  {}", hub.addr);
    println!(
        "  HTTP API             http://{}/api/devices",
        hub.http_addr
    );
    println!("  devices              proj-1 PJLink at {a1}, proj-2 PJLink (password) at {a2},");
    println!(
        "                       proj-3 ESC/VP21 on serial port {}, display-1 LG display at {a4},",
        pty_path.display()
    );
    println!("                       from the profile library: {library_line}");
    println!("  fault injection      {cli} req sim/proj-1/control '\"silent on\"'   (drop, silent on|off, failure on|off, lamp-error on|off; proj-3 also unplug, plug)");
    println!("try, in another terminal:");
    println!("  {cli} devices");
    println!("  {cli} set proj-1 power=on input=hdmi2");
    println!("  {cli} watch");
    println!("Ctrl-C stops everything.");
    let agent = AgentConfig {
        hub: hub.addr.to_string(),
        token: None,
        name: "demo-agent".into(),
        reconnect_max: Duration::from_secs(5),
        tls: None,
        tls_server_name: None,
        devices,
    };
    crate::runtime::run(agent, shutdown).await?;
    hub.stop().await;
    Ok(())
}
