//! Starting and stopping the servers under test, each on a free loopback
//! port, and reading their CPU time and memory from /proc.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use crate::wire::System;

/// A server process.
pub struct Server {
    /// Which system.
    pub sys: System,
    /// Its client address.
    pub addr: String,
    /// Its HTTP address (patchbay only).
    pub http: Option<String>,
    child: Child,
    _dir: Option<PathBuf>,
    /// The hub's journal folder, removed when the server stops unless kept.
    pub data: Option<PathBuf>,
    keep_dir: bool,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The hub binary next to this benchmark's executable, or the one named by
/// `PATCHBAY_BENCH_HUB` (to compare two builds in one run).
fn hub_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATCHBAY_BENCH_HUB") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("exe dir")?.join("patchbay-hub");
    if !path.exists() {
        bail!(
            "{} is missing: build the workspace binaries first",
            path.display()
        );
    }
    Ok(path)
}

impl Server {
    /// Starts `sys` and waits until it accepts connections.
    pub async fn start(sys: System) -> anyhow::Result<Server> {
        Self::start_with(sys, None).await
    }

    /// Starts `sys`; for the hub, with `hub_config` as its TOML configuration
    /// and its journal on (as users run it), in a temporary folder.
    pub async fn start_with(sys: System, hub_config: Option<&str>) -> anyhow::Result<Server> {
        Self::start_full(sys, hub_config, true).await
    }

    /// Starts the hub with its journal on or off (`--memory-only`).
    pub async fn start_hub(hub_config: Option<&str>, journal: bool) -> anyhow::Result<Server> {
        Self::start_full(System::Patchbay, hub_config, journal).await
    }

    /// Starts the hub on an existing journal folder.
    pub async fn start_hub_on(data: &std::path::Path) -> anyhow::Result<Server> {
        let mut s = Self::start_inner(System::Patchbay, None, Some(data)).await?;
        s.keep_dir = true;
        Ok(s)
    }

    async fn start_full(
        sys: System,
        hub_config: Option<&str>,
        journal: bool,
    ) -> anyhow::Result<Server> {
        let data = (sys == System::Patchbay && journal).then(|| {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::env::temp_dir().join(format!("patchbay-bench-data-{}-{n}", std::process::id()))
        });
        let mut s = Self::start_inner(sys, hub_config, data.as_deref()).await?;
        s.data = data;
        Ok(s)
    }

    async fn start_inner(
        sys: System,
        hub_config: Option<&str>,
        data: Option<&std::path::Path>,
    ) -> anyhow::Result<Server> {
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let mut http = None;
        let mut dir = None;
        let mut cmd = match sys {
            System::Patchbay => {
                let h = format!("127.0.0.1:{}", free_port()?);
                let mut c = Command::new(hub_binary()?);
                c.args(["--listen", &addr, "--http-listen", &h])
                    .env("RUST_LOG", "error");
                match data {
                    Some(d) => c.arg("--data-dir").arg(d),
                    None => c.arg("--memory-only"),
                };
                if let Some(cfg) = hub_config {
                    let d = std::env::temp_dir()
                        .join(format!("patchbay-bench-hub-{}-{port}", std::process::id()));
                    std::fs::create_dir_all(&d)?;
                    std::fs::write(d.join("hub.toml"), cfg)?;
                    c.arg("--config").arg(d.join("hub.toml"));
                    dir = Some(d);
                }
                http = Some(h);
                c
            }
            System::Nats => {
                let mut c = Command::new("nats-server");
                c.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
                c
            }
            System::Mqtt => {
                let d = std::env::temp_dir().join(format!(
                    "patchbay-bench-mosquitto-{}-{port}",
                    std::process::id()
                ));
                std::fs::create_dir_all(&d)?;
                let conf = d.join("mosquitto.conf");
                std::fs::write(
                    &conf,
                    format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n"),
                )?;
                let mut c = Command::new(mosquitto_binary());
                c.arg("-c").arg(&conf);
                dir = Some(d);
                c
            }
        };
        // PATCHBAY_BENCH_HUB_LOG=FILE keeps the hub's warnings for a look afterwards.
        let stderr = match (sys, std::env::var_os("PATCHBAY_BENCH_HUB_LOG")) {
            (System::Patchbay, Some(path)) => {
                cmd.env("RUST_LOG", "warn");
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                Stdio::from(log)
            }
            _ => Stdio::null(),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} (run bench/install first)", sys.name()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                bail!("{} did not start listening on {addr}", sys.name());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Server {
            sys,
            addr,
            http,
            child,
            _dir: dir,
            data: None,
            keep_dir: false,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// CPU time (user + system) used so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name (which may hold spaces): utime is 14th, stime 15th overall.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
            + fields
                .get(12)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
        ticks / 100.0
    }

    /// Resident memory in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// Stops the server.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        if let (Some(d), false) = (&self.data, self.keep_dir) {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn mosquitto_binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    }
}

/// Is this system's server installed?
pub fn available(sys: System) -> bool {
    match sys {
        System::Patchbay => hub_binary().is_ok(),
        System::Nats => std::process::Command::new("nats-server")
            .arg("--version")
            .output()
            .is_ok(),
        System::Mqtt => std::process::Command::new(mosquitto_binary())
            .arg("-h")
            .output()
            .is_ok(),
    }
}
