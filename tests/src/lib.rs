//! Helpers for end-to-end tests: start the real binaries as processes, read
//! the addresses they print, and watch the hub the way a user would.
//!
//! The binaries come from the same target directory as the test; `.ci/run`
//! builds them first (`cargo build --workspace --bins`).

pub mod peer;
pub mod pki;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use patchbay_client::device::{group, DeviceView, DEVICE_PATTERNS};
use patchbay_client::{ClientBuilder, Message, Subscription};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Longest any expected event may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Path of a workspace binary next to this test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile> directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// A running binary whose stdout is read line by line.
pub struct Proc {
    /// The child process (killed when dropped).
    pub child: Child,
    /// Its stdout.
    pub stdout: Lines<BufReader<ChildStdout>>,
    /// The first line it printed.
    pub first_line: String,
    /// The journal folder made for it, removed when it is dropped.
    made_dir: Option<PathBuf>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(d) = &self.made_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl Proc {
    /// Starts `name` with `args` and waits for its first line of output.
    pub async fn start(name: &str, args: &[&str]) -> Proc {
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        // Every hub keeps a journal, as users run it, each in its own folder.
        let mut made_dir = None;
        if name == "patchbay-hub"
            && !args
                .iter()
                .any(|a| a == "--data-dir" || a == "--memory-only")
        {
            let dir = temp_dir("hub-data");
            args.push("--data-dir".into());
            args.push(dir.display().to_string());
            made_dir = Some(dir);
        }
        let mut child = Command::new(bin(name))
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env(
                "RUST_LOG",
                std::env::var("PATCHBAY_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let first_line = tokio::time::timeout(WAIT, stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("{name} printed nothing"))
            .unwrap()
            .unwrap_or_else(|| panic!("{name} exited before printing"));
        Proc {
            child,
            stdout,
            first_line,
            made_dir,
        }
    }

    /// The last word of the next line printed (an address or URL in a banner).
    pub async fn next_line_last_word(&mut self) -> String {
        let line = tokio::time::timeout(WAIT, self.stdout.next_line())
            .await
            .expect("no further line printed")
            .unwrap()
            .expect("exited before printing the line");
        line.split_whitespace()
            .last()
            .unwrap_or_default()
            .to_owned()
    }

    /// The address at the end of the first line (`... listening on ADDR`).
    pub fn addr(&self) -> String {
        self.first_line.rsplit(' ').next().unwrap().to_owned()
    }

    /// Sends a control line on stdin and returns the answer line.
    pub async fn control(&mut self, line: &str) -> String {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        tokio::time::timeout(WAIT, self.stdout.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    }

    /// Kills the process with SIGKILL and waits for it.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// A hub process on a free port.
pub async fn hub() -> Proc {
    Proc::start(
        "patchbay-hub",
        &["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
    )
    .await
}

/// A hub process started with the configuration file `config`, on free ports.
pub async fn hub_with_config(config: &std::path::Path) -> Proc {
    let config = config.to_str().expect("a UTF-8 path");
    Proc::start(
        "patchbay-hub",
        &[
            "--config",
            config,
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
    )
    .await
}

/// A PJLink simulator process; `addr` may be `127.0.0.1:0`.
pub async fn pjlink_sim(addr: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["pjlink", "--listen", addr];
    args.extend_from_slice(extra);
    Proc::start("patchbay-sim", &args).await
}

/// A fresh, empty folder under the system's temp folder.
pub fn temp_dir(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("patchbay-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `text` to a fresh temp file and returns its path.
pub fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("patchbay-e2e-{}-{}", std::process::id(), name));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// An agent process for `config`; it prints nothing, so do not wait for a line.
pub fn agent(config: &std::path::Path) -> Child {
    Command::new(bin("patchbay-agent"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Runs the `patchbay` CLI against `hub`; returns (success, stdout, stderr).
pub async fn cli(hub: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(bin("patchbay"))
            .arg("--hub")
            .arg(hub)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("patchbay CLI hung")
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Follows every device's retained values on a hub, as a console would.
pub struct Watcher {
    sub: Subscription,
    /// Latest view of each device.
    pub devices: BTreeMap<String, DeviceView>,
    /// Every message seen, in order.
    pub log: Vec<Message>,
}

impl Watcher {
    /// Connects and takes the snapshot.
    pub async fn new(hub: &str) -> Watcher {
        let client = ClientBuilder::new(hub)
            .name("e2e-watcher")
            .no_reconnect()
            .connect()
            .await
            .unwrap();
        let mut sub = client
            .subscribe_with_snapshot(DEVICE_PATTERNS)
            .await
            .unwrap();
        let snapshot = sub.snapshot().await.unwrap();
        let log = snapshot.clone();
        let devices = group(snapshot.iter().map(|m| (m.tag(), body(m))));
        Watcher { sub, devices, log }
    }

    /// Reads messages until `pred` holds for the devices; panics after [`WAIT`].
    pub async fn until(
        &mut self,
        what: &str,
        pred: impl Fn(&BTreeMap<String, DeviceView>) -> bool,
    ) {
        self.until_within(WAIT, what, pred).await
    }

    /// [`Watcher::until`] with its own limit (paths through other processes, such as a cluster).
    pub async fn until_within(
        &mut self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&BTreeMap<String, DeviceView>) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + limit;
        while !pred(&self.devices) {
            let m = tokio::time::timeout_at(deadline, self.sub.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "timed out waiting for: {what}; devices: {:#?}",
                        self.devices
                    )
                })
                .expect("hub connection closed");
            {
                self.log.push(m.clone());
                for (id, view) in group([(m.tag(), body(&m))]) {
                    let entry = self.devices.entry(id).or_insert(view.clone());
                    if view.meta.is_some() {
                        entry.meta = view.meta;
                    }
                    if view.state.is_some() {
                        entry.state = view.state;
                    }
                    if view.online.is_some() {
                        entry.online = view.online;
                    }
                }
            }
        }
    }
}

/// A message's body as a JSON value.
pub fn body(m: &Message) -> serde_json::Value {
    m.json().unwrap_or(serde_json::Value::Null)
}

/// Is device `id` known and online?
pub fn online(devices: &BTreeMap<String, DeviceView>, id: &str) -> bool {
    devices.get(id).is_some_and(DeviceView::is_online)
}

/// Is device `id` known and offline?
pub fn offline(devices: &BTreeMap<String, DeviceView>, id: &str) -> bool {
    devices
        .get(id)
        .is_some_and(|d| d.online.is_some() && !d.is_online())
}
