//! The agent's TOML configuration: the hub to report to and the devices to run.
//!
//! Every problem is reported with the file, the device and the field, and the
//! agent refuses to start on any of them: never half-configured.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use patchbay_drivers::escvp21::{Escvp21, Escvp21Options};
use patchbay_drivers::line::{LineDriver, LineProfile};
use patchbay_drivers::panasonic::{Panasonic, PanasonicOptions};
use patchbay_drivers::pjlink::{Pjlink, PjlinkOptions};
use patchbay_drivers::{AnyDriver, SerialSettings, Transport};
use patchbay_hub::config::toml_error_line;
use serde::Deserialize;
use thiserror::Error;

/// A configuration that cannot be used, with where and why.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why, as the OS said it.
        reason: std::io::Error,
    },
    /// Something in the file is wrong.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// Which part and why.
        message: String,
    },
}

/// Which driver runs a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// PJLink over TCP.
    Pjlink,
    /// Epson ESC/VP21 over serial or TCP.
    Escvp21,
    /// A line protocol described by a profile file.
    Line,
    /// Panasonic projectors over NTCONTROL (TCP 1024).
    Panasonic,
}

/// One device as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceFile {
    id: String,
    name: Option<String>,
    location: Option<String>,
    driver: DriverKind,
    tcp: Option<String>,
    serial: Option<String>,
    visca_ip: Option<String>,
    #[serde(default)]
    serial_settings: SerialSettings,
    #[serde(default = "default_poll_ms")]
    poll_ms: u64,
    password: Option<String>,
    user: Option<String>,
    profile: Option<PathBuf>,
    connect_timeout_ms: Option<u64>,
    sources: Option<std::collections::BTreeMap<String, String>>,
    vars: Option<std::collections::BTreeMap<String, String>>,
}

fn default_poll_ms() -> u64 {
    2000
}

/// The file's top level.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    #[serde(default = "default_hub")]
    hub: String,
    token: Option<String>,
    #[serde(default = "default_name")]
    name: String,
    #[serde(default = "default_reconnect_max_ms")]
    reconnect_max_ms: u64,
    #[serde(default)]
    tls: bool,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_server_name: Option<String>,
    #[serde(default, rename = "device")]
    devices: Vec<toml::Value>,
}

fn default_hub() -> String {
    format!("127.0.0.1:{}", patchbay_client::protocol::DEFAULT_PORT)
}
fn default_name() -> String {
    "agent".into()
}
fn default_reconnect_max_ms() -> u64 {
    10_000
}

/// A device ready to run.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Unique id; the device's tags live under `dev/<id>`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Room or location, for grouping.
    pub location: String,
    /// Driver.
    pub driver: DriverKind,
    /// How to reach it.
    pub transport: Transport,
    /// How often to poll.
    pub poll: Duration,
    /// PJLink, ESC/VP.net or NTCONTROL password.
    pub password: Option<String>,
    /// NTCONTROL user name (Panasonic's `admin1` when not given).
    pub user: Option<String>,
    /// ESC/VP21 source table (id people see, two-digit hex code); `None` for the driver's default.
    pub sources: Option<Vec<(String, String)>>,
    /// Line-protocol profile, loaded and checked with the configuration.
    pub profile: Option<LineProfile>,
    /// The profile's variables for this device (`id`, ...), over its defaults.
    pub vars: std::collections::BTreeMap<String, String>,
}

impl DeviceConfig {
    /// Builds the configured driver.
    /// The driver's name, as the description shows it.
    pub fn driver_name(&self) -> &'static str {
        match self.driver {
            DriverKind::Pjlink => "pjlink",
            DriverKind::Escvp21 => "escvp21",
            DriverKind::Line => "line",
            DriverKind::Panasonic => "panasonic",
        }
    }

    /// A new driver for this device.
    pub fn driver(&self) -> Result<AnyDriver, patchbay_drivers::DriverError> {
        Ok(match self.driver {
            DriverKind::Pjlink => AnyDriver::Pjlink(Pjlink::new(
                self.transport.clone(),
                PjlinkOptions {
                    password: self.password.clone(),
                    ..PjlinkOptions::default()
                },
            )),
            DriverKind::Escvp21 => {
                let mut opts = Escvp21Options {
                    password: self.password.clone(),
                    ..Escvp21Options::default()
                };
                if let Some(sources) = &self.sources {
                    opts.sources = sources.clone();
                }
                AnyDriver::Escvp21(Escvp21::new(self.transport.clone(), opts))
            }
            DriverKind::Panasonic => AnyDriver::Panasonic(Panasonic::new(
                self.transport.clone(),
                PanasonicOptions {
                    password: self.password.clone(),
                    user: self
                        .user
                        .clone()
                        .unwrap_or_else(|| PanasonicOptions::default().user),
                    ..PanasonicOptions::default()
                },
            )),
            DriverKind::Line => {
                let profile = self.profile.clone().ok_or_else(|| {
                    patchbay_drivers::DriverError::Config("the line driver needs a profile".into())
                })?;
                let mut vars = self.vars.clone();
                if let Some(p) = &self.password {
                    vars.entry("password".into()).or_insert_with(|| p.clone());
                }
                AnyDriver::Line(LineDriver::new(self.transport.clone(), profile)?.with_vars(&vars))
            }
        })
    }
}

/// The whole agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Hub address `host:port`.
    pub hub: String,
    /// Token, when the hub requires one.
    pub token: Option<String>,
    /// Agent name shown on the hub.
    pub name: String,
    /// Longest wait between reconnection attempts (hub and devices).
    pub reconnect_max: Duration,
    /// TLS to the hub (`tls = true`, `tls_ca`, `tls_cert`, `tls_key`), its files read at load.
    pub tls: Option<Arc<patchbay_client::tls::ClientConfig>>,
    /// The name the hub's certificate must hold, when not the host of `hub`.
    pub tls_server_name: Option<String>,
    /// Devices.
    pub devices: Vec<DeviceConfig>,
}

impl AgentConfig {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            patchbay_hub::config::read_config_file(path).map_err(|reason| ConfigError::Read {
                path: path.display().to_string(),
                reason,
            })?;
        Self::parse(&text, path)
    }

    /// Parses and checks TOML text; `path` names it in errors and anchors relative profile paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let file: AgentFile =
            toml::from_str(text).map_err(|e| invalid(toml_error_line(text, &e)))?;
        if file.hub != "auto"
            && file.hub.split(',').any(|a| {
                a.trim()
                    .rsplit_once(':')
                    .is_none_or(|(_, port)| port.parse::<u16>().is_err())
            })
        {
            return Err(invalid(format!(
                "`hub` must be host:port, several of them (\"a:7400,b:7400\", hubs of one cluster), or \"auto\" (found on the LAN), not {:?}",
                file.hub
            )));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut devices: Vec<DeviceConfig> = Vec::new();
        for (i, raw) in file.devices.into_iter().enumerate() {
            let label = raw
                .get("id")
                .and_then(toml::Value::as_str)
                .map(|id| format!("device `{id}`"))
                .unwrap_or_else(|| format!("device #{}", i + 1));
            let d: DeviceFile = raw.try_into().map_err(|e: toml::de::Error| {
                invalid(format!("{label}: {}", e.message().trim()))
            })?;
            let device = check_device(d, base).map_err(|m| invalid(format!("{label}: {m}")))?;
            if devices.iter().any(|o| o.id == device.id) {
                return Err(invalid(format!("{label}: `id` is used by another device")));
            }
            devices.push(device);
        }
        if devices.is_empty() {
            return Err(invalid("no devices: add at least one [[device]]".into()));
        }
        if file.tls_cert.is_some() != file.tls_key.is_some() {
            return Err(invalid(
                "`tls_cert` and `tls_key` go together: a client certificate needs its key".into(),
            ));
        }
        let tls = if file.tls
            || file.tls_ca.is_some()
            || file.tls_cert.is_some()
            || file.tls_server_name.is_some()
        {
            let options = patchbay_client::tls::TlsOptions {
                ca: file.tls_ca.map(|p| base.join(p)),
                cert: file.tls_cert.map(|p| base.join(p)),
                key: file.tls_key.map(|p| base.join(p)),
            };
            Some(
                options
                    .client_config()
                    .map_err(|e| invalid(format!("tls: {e}")))?,
            )
        } else {
            None
        };
        Ok(AgentConfig {
            hub: file.hub,
            token: file.token,
            name: file.name,
            reconnect_max: Duration::from_millis(file.reconnect_max_ms.max(100)),
            tls,
            tls_server_name: file.tls_server_name,
            devices,
        })
    }
}

/// A bare name (no folder, no `.toml`) names a profile in the built-in library.
fn is_library_name(p: &Path) -> bool {
    p.components().count() == 1 && p.extension().is_none()
}

fn check_device(d: DeviceFile, base: &Path) -> Result<DeviceConfig, String> {
    let id_ok = !d.id.is_empty()
        && d.id.len() <= 64
        && d.id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !id_ok {
        return Err("`id` must be 1-64 letters, digits, `-`, `_` or `.`".into());
    }
    if d.poll_ms < 100 {
        return Err(format!("`poll_ms` must be at least 100, not {}", d.poll_ms));
    }
    let connect_timeout = Duration::from_millis(d.connect_timeout_ms.unwrap_or(5000));
    if let Some(addr) = &d.visca_ip {
        if d.tcp.is_some() || d.serial.is_some() {
            return Err("give one of `tcp`, `serial` or `visca_ip`".into());
        }
        if d.driver != DriverKind::Line {
            return Err(
                "`visca_ip` carries a VISCA profile: use it with `driver = \"line\"`".into(),
            );
        }
        if addr
            .rsplit_once(':')
            .is_none_or(|(_, p)| p.parse::<u16>().is_err())
        {
            return Err(format!(
                "`visca_ip` must be host:port (port 52381), not {addr:?}"
            ));
        }
    }
    let transport = match (&d.tcp, &d.serial) {
        (Some(_), Some(_)) => return Err("give either `tcp` or `serial`, not both".into()),
        (None, None) if d.visca_ip.is_some() => Transport::ViscaIp {
            addr: d.visca_ip.clone().unwrap_or_default(),
        },
        (None, None) => {
            return Err("missing `tcp = \"host:port\"` or `serial = \"/dev/...\"`".into())
        }
        (Some(addr), None) => {
            if addr
                .rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            {
                return Err(format!("`tcp` must be host:port, not {addr:?}"));
            }
            Transport::Tcp {
                addr: addr.clone(),
                connect_timeout,
            }
        }
        (None, Some(path)) => {
            if d.driver == DriverKind::Pjlink {
                return Err("the pjlink driver needs `tcp`; PJLink has no serial transport".into());
            }
            if d.driver == DriverKind::Panasonic {
                return Err("the panasonic driver needs `tcp` (NTCONTROL, port 1024); for RS-232 write a profile".into());
            }
            d.serial_settings
                .check()
                .map_err(|m| format!("serial_settings: {m}"))?;
            Transport::Serial {
                path: path.clone(),
                settings: d.serial_settings.clone(),
            }
        }
    };
    if d.user.is_some() && d.driver != DriverKind::Panasonic {
        return Err("`user` applies to the panasonic driver only".into());
    }
    if let (DriverKind::Escvp21, Some(_), Some(_)) = (d.driver, &d.password, &d.serial) {
        return Err("`password` applies to ESC/VP.net over `tcp`; the serial port has none".into());
    }
    let sources = match (d.driver, d.sources) {
        (_, None) => None,
        (DriverKind::Escvp21, Some(table)) => Some(check_sources(table)?),
        (_, Some(_)) => return Err("`sources` applies to the escvp21 driver only".into()),
    };
    let profile = match (d.driver, d.profile) {
        (DriverKind::Line, None) => {
            return Err("the line driver needs `profile = \"path/to/profile.toml\"`".into())
        }
        (DriverKind::Line, Some(p)) if is_library_name(&p) => {
            let name = p.to_string_lossy();
            let profile = patchbay_drivers::library::get(&name)
                .ok_or_else(|| {
                    format!("`profile = \"{name}\"`: no such profile in the library (`patchbay-agent profiles` lists them; a file needs its .toml)")
                })?
                .map_err(|e| e.to_string())?;
            Some(profile)
        }
        (DriverKind::Line, Some(p)) => {
            let p = if p.is_absolute() { p } else { base.join(p) };
            // Errors name the file and line: `profile /path/x.toml:12: setting ...`.
            let profile = LineDriver::load_profile(&p).map_err(|e| match e {
                patchbay_drivers::DriverError::Config(m) => format!("profile {m}"),
                other => other.to_string(),
            })?;
            Some(profile)
        }
        (_, Some(_)) => return Err("`profile` applies to the line driver only".into()),
        (_, None) => None,
    };
    let vars = d.vars.unwrap_or_default();
    if let (Some(p), Some(_)) = (&profile, &d.password) {
        if !p.uses_var("password") {
            return Err(
                "`password`: the profile sends no `{password}` (in its login or commands)".into(),
            );
        }
    }
    if let Some(p) = &profile {
        if let Some(k) = vars.keys().find(|k| !p.vars.contains_key(*k)) {
            let known: Vec<&str> = p.vars.keys().map(String::as_str).collect();
            return Err(format!(
                "`vars.{k}`: the profile has no such variable (it has: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ));
        }
    } else if !vars.is_empty() {
        return Err("`vars` applies to the line driver only".into());
    }
    Ok(DeviceConfig {
        name: d.name.unwrap_or_else(|| d.id.clone()),
        location: d.location.unwrap_or_default(),
        id: d.id,
        driver: d.driver,
        transport,
        poll: Duration::from_millis(d.poll_ms),
        password: d.password,
        user: d.user,
        sources,
        profile,
        vars,
    })
}

/// Checks an ESC/VP21 source table: ids people can type, codes of two hex digits, no code twice.
fn check_sources(
    table: std::collections::BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, String> {
    if table.is_empty() {
        return Err("`sources` is empty; leave it out for the usual Epson table".into());
    }
    let mut out: Vec<(String, String)> = Vec::with_capacity(table.len());
    for (id, code) in table {
        let id_ok = !id.is_empty()
            && id.len() <= 32
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(format!(
                "sources: {id:?} must be 1-32 lowercase letters, digits, `-` or `_`"
            ));
        }
        let code = code.to_ascii_uppercase();
        if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "sources: `{id}` must be a two-digit hex source code such as \"30\", not {code:?}"
            ));
        }
        if let Some((other, _)) = out.iter().find(|(_, c)| *c == code) {
            return Err(format!(
                "sources: `{id}` and `{other}` both use code {code}"
            ));
        }
        out.push((id, code));
    }
    Ok(out)
}
