//! The simulated projector both protocol simulators drive: power with
//! warm-up and cool-down, inputs, A/V mute, freeze, lamp and filter hours,
//! error status, and the faults a test can inject.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

/// How a simulated projector is set up.
#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    /// Projector name (`NAME ?`).
    pub name: String,
    /// Manufacturer (`INF1 ?`).
    pub manufacturer: String,
    /// Model (`INF2 ?`).
    pub model: String,
    /// PJLink class, 1 or 2.
    pub class: u8,
    /// Warm-up time.
    pub warmup: Duration,
    /// Cool-down time.
    pub cooldown: Duration,
    /// (PJLink input code, name) pairs; the first is selected at start.
    pub inputs: Vec<(String, String)>,
    /// Lamp hours at start.
    pub lamp_hours: u64,
    /// PJLink password; `None` for no authentication.
    pub password: Option<String>,
    /// Close a connection idle this long (PJLink projectors use ~30 s).
    pub idle_close: Duration,
    /// Quirks of real devices to imitate.
    pub quirks: Quirks,
}

/// Ways real projectors deviate from the standards, for tests to switch on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quirks {
    /// PJLink: answer `ERR3` to everything but `POWR` unless on (some
    /// projectors refuse even `CLSS ?` and `INST ?` in standby and while warming).
    pub unavailable_unless_on: bool,
    /// PJLink: the `CLSS ?` answer, when not the standard digit (e.g. `Class 2`).
    pub class_reply: Option<String>,
    /// PJLink: end replies with CR LF instead of CR.
    pub crlf: bool,
    /// ESC/VP21: the `PWR?` code for standby (`00`, `04` network on, `09` A/V output).
    pub standby_code: Option<String>,
    /// ESC/VP21: report computer inputs as the sub-source `1F`.
    pub sub_source: bool,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        ProjectorConfig {
            name: "Simulated Projector".into(),
            manufacturer: "patchbay".into(),
            model: "SIM-1000".into(),
            class: 2,
            warmup: Duration::from_secs(3),
            cooldown: Duration::from_secs(2),
            inputs: vec![
                ("31".into(), "HDMI 1".into()),
                ("32".into(), "HDMI 2".into()),
                ("11".into(), "Computer".into()),
                ("21".into(), "Video".into()),
            ],
            lamp_hours: 1234,
            password: None,
            idle_close: Duration::from_secs(30),
            quirks: Quirks::default(),
        }
    }
}

/// Power state of the simulated projector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// Standby.
    Off,
    /// Lamp on.
    On,
    /// Warming up until the instant.
    Warming(Instant),
    /// Cooling down until the instant.
    Cooling(Instant),
}

/// Faults a test or an operator can switch on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Read commands but never answer.
    pub silent: bool,
    /// Answer every set with a device failure (PJLink `ERR4`).
    pub failure: bool,
    /// Report a lamp error.
    pub lamp_error: bool,
    /// In standby because of an error (ESC/VP21 `PWR=05`).
    pub abnormal: bool,
}

/// The projector's mutable state.
#[derive(Debug)]
pub struct Projector {
    /// Its configuration.
    pub cfg: ProjectorConfig,
    /// Power state.
    pub power: Power,
    /// Selected input code.
    pub input: String,
    /// Video muted.
    pub video_mute: bool,
    /// Audio muted.
    pub audio_mute: bool,
    /// Picture frozen.
    pub freeze: bool,
    /// Lamp hours.
    pub lamp_hours: u64,
    /// Filter hours.
    pub filter_hours: u64,
    /// Injected faults.
    pub faults: Faults,
}

/// Why a set was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not possible now (PJLink ERR3).
    Unavailable,
    /// Bad parameter (PJLink ERR2).
    OutOfRange,
    /// Device failure (PJLink ERR4).
    Failure,
}

impl Projector {
    fn new(cfg: ProjectorConfig) -> Self {
        Projector {
            input: cfg
                .inputs
                .first()
                .map(|(c, _)| c.clone())
                .unwrap_or_else(|| "31".into()),
            lamp_hours: cfg.lamp_hours,
            filter_hours: cfg.lamp_hours / 2,
            cfg,
            power: Power::Off,
            video_mute: false,
            audio_mute: false,
            freeze: false,
            faults: Faults::default(),
        }
    }

    /// Finishes transitions whose time has come.
    pub fn tick(&mut self) {
        let now = Instant::now();
        self.power = match self.power {
            Power::Warming(t) if now >= t => Power::On,
            Power::Cooling(t) if now >= t => Power::Off,
            p => p,
        };
    }

    /// Is the lamp on and the projector ready for picture commands?
    pub fn is_on(&self) -> bool {
        self.power == Power::On
    }

    /// Switches power on or off.
    pub fn set_power(&mut self, on: bool) -> Result<(), Refusal> {
        if self.faults.failure {
            return Err(Refusal::Failure);
        }
        let now = Instant::now();
        self.power = match (self.power, on) {
            (Power::Off, true) => Power::Warming(now + self.cfg.warmup),
            (Power::On, false) => Power::Cooling(now + self.cfg.cooldown),
            (Power::Cooling(_), true) | (Power::Warming(_), false) => {
                return Err(Refusal::Unavailable)
            }
            (p, _) => p,
        };
        self.tick();
        Ok(())
    }

    /// Selects an input by code.
    pub fn set_input(&mut self, code: &str) -> Result<(), Refusal> {
        if self.faults.failure {
            return Err(Refusal::Failure);
        }
        if !self
            .cfg
            .inputs
            .iter()
            .any(|(c, _)| c.eq_ignore_ascii_case(code))
        {
            return Err(Refusal::OutOfRange);
        }
        if !self.is_on() {
            return Err(Refusal::Unavailable);
        }
        self.input = code.to_ascii_uppercase();
        Ok(())
    }

    /// A PJLink-style error status: six digits, 0 ok, 1 warning, 2 error.
    pub fn erst(&self) -> String {
        let lamp = if self.faults.lamp_error { '2' } else { '0' };
        format!("0{lamp}0000")
    }

    /// The state as JSON, for the simulator's `state` command.
    pub fn to_json(&self) -> Value {
        let power = match self.power {
            Power::Off => "off",
            Power::On => "on",
            Power::Warming(_) => "warming",
            Power::Cooling(_) => "cooling",
        };
        json!({
            "power": power, "input": self.input, "video_mute": self.video_mute,
            "audio_mute": self.audio_mute, "freeze": self.freeze, "lamp_hours": self.lamp_hours,
            "faults": {"silent": self.faults.silent, "failure": self.faults.failure, "lamp_error": self.faults.lamp_error, "abnormal": self.faults.abnormal},
        })
    }
}

/// Connection counters, to check that a driver never holds two connections.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted.
    pub total: u64,
    /// Connections open now.
    pub open: u64,
    /// Most connections open at once.
    pub max_open: u64,
}

/// A simulated projector shared by its connections and its controller.
#[derive(Clone)]
pub struct Sim {
    state: Arc<Mutex<Projector>>,
    stats: Arc<Mutex<Stats>>,
    drops: Arc<watch::Sender<u64>>,
}

impl Sim {
    /// A projector in standby.
    pub fn new(cfg: ProjectorConfig) -> Self {
        Sim {
            state: Arc::new(Mutex::new(Projector::new(cfg))),
            stats: Arc::new(Mutex::new(Stats::default())),
            drops: Arc::new(watch::channel(0).0),
        }
    }

    /// Locks the projector state (transitions brought up to date).
    pub fn lock(&self) -> MutexGuard<'_, Projector> {
        let mut p = self.state.lock().unwrap_or_else(|e| e.into_inner());
        p.tick();
        p
    }

    /// Closes every open connection now.
    pub fn drop_connections(&self) {
        self.drops.send_modify(|n| *n += 1);
    }

    /// Resolves when [`Sim::drop_connections`] is called after `rx` was taken.
    pub fn drop_signal(&self) -> watch::Receiver<u64> {
        self.drops.subscribe()
    }

    /// Changes the injected faults.
    pub fn set_faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.lock().faults);
    }

    /// Connection counters.
    pub fn stats(&self) -> Stats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a connection for as long as the guard lives.
    pub fn connection(&self) -> ConnectionGuard {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.total += 1;
        s.open += 1;
        s.max_open = s.max_open.max(s.open);
        ConnectionGuard { sim: self.clone() }
    }

    /// Applies a text control command (`drop`, `silent on|off`, `failure on|off`,
    /// `lamp-error on|off`, `state`); returns the answer line.
    pub fn control(&self, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        let flag = |w: Option<&&str>| match w.copied() {
            Some("on") => Some(true),
            Some("off") => Some(false),
            _ => None,
        };
        match words.as_slice() {
            ["drop"] => {
                self.drop_connections();
                "ok".into()
            }
            ["state"] => self.lock().to_json().to_string(),
            [name, rest @ ..] if ["silent", "failure", "lamp-error", "abnormal"].contains(name) => {
                match flag(rest.first()) {
                    Some(on) => {
                        self.set_faults(|f| match *name {
                            "silent" => f.silent = on,
                            "failure" => f.failure = on,
                            "abnormal" => f.abnormal = on,
                            _ => f.lamp_error = on,
                        });
                        "ok".into()
                    }
                    None => format!("error: `{name}` takes on or off"),
                }
            }
            _ => {
                "error: commands are drop, state, silent on|off, failure on|off, lamp-error on|off, abnormal on|off"
                    .into()
            }
        }
    }
}

/// Decrements the open-connection count when dropped.
pub struct ConnectionGuard {
    sim: Sim,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.sim
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open -= 1;
    }
}
